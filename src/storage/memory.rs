//! An in-memory backend for unit tests and as the base of failure-injection
//! tests. It gives the same guarantees as the real backends and runs the same
//! conformance suite; it is never used for a real repository.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{
    Key, ObjectMeta, ObjectReader, ObjectStore, ObjectWriter, PutMode, Result, StorageError,
};

#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    objects: Arc<Mutex<BTreeMap<Key, (Bytes, i64)>>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, (Bytes, i64)>> {
        // A panic while holding the lock cannot leave a half-written map
        // entry (inserts are single operations), so poisoning is harmless.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces an object's bytes directly, bypassing the put protocol: for
    /// tests that corrupt a stored object.
    pub fn overwrite_raw(&self, key: &Key, data: Bytes) {
        self.lock().insert(key.clone(), (data, now()));
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn get(&self, key: &Key) -> Result<ObjectReader> {
        let data = self.get_bytes(key).await?;
        Ok(Box::pin(std::io::Cursor::new(data)))
    }

    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        let data = self.get_bytes(key).await?;
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(len as usize).min(data.len());
        Ok(data.slice(start..end))
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        let objects = self.lock();
        let (data, modified) = objects
            .get(key)
            .ok_or_else(|| StorageError::NotFound { key: key.clone() })?;
        Ok(ObjectMeta {
            key: key.clone(),
            size_bytes: data.len() as u64,
            modified_unix_secs: *modified,
        })
    }

    async fn put(&self, key: &Key, mode: PutMode) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            key: key.clone(),
            mode,
            buf: BytesMut::new(),
        }))
    }

    async fn list(&self, prefix: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let prefix = prefix.unwrap_or("");
        Ok(self
            .lock()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with(prefix))
            .map(|(k, (data, modified))| ObjectMeta {
                key: k.clone(),
                size_bytes: data.len() as u64,
                modified_unix_secs: *modified,
            })
            .collect())
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        self.lock().remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }

    async fn get_bytes(&self, key: &Key) -> Result<Bytes> {
        self.lock()
            .get(key)
            .map(|(data, _)| data.clone())
            .ok_or_else(|| StorageError::NotFound { key: key.clone() })
    }
}

struct MemoryWriter {
    store: MemoryStore,
    key: Key,
    mode: PutMode,
    buf: BytesMut,
}

#[async_trait]
impl ObjectWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let mut objects = self.store.lock();
        if self.mode.is_create() && objects.contains_key(&self.key) {
            return Err(StorageError::AlreadyExists { key: self.key });
        }
        objects.insert(self.key, (self.buf.freeze(), now()));
        Ok(())
    }

    async fn abort(self: Box<Self>) {}

    fn held_bytes(&self) -> Option<usize> {
        Some(self.buf.len())
    }
}
