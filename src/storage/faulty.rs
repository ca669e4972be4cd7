//! A failure-injecting wrapper around any store, for tests of what the
//! commands do when storage misbehaves (retry, exit codes, nothing visible
//! after a failed put). Never used for a real repository.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Key, ObjectMeta, ObjectReader, ObjectStore, ObjectWriter, PutMode, Result, StorageError,
};

/// The operations a fault can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Head,
    Put,
    Commit,
    List,
    Delete,
}

/// A key prefix and the semaphore its reads wait on.
type PrefixGate = (String, Arc<tokio::sync::Semaphore>);

#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    /// Remaining failures per operation: (count, transient).
    faults: Arc<Mutex<HashMap<Op, (u32, bool)>>>,
    /// When set, each commit first waits for (and uses up) one permit.
    commit_gate: Arc<Mutex<Option<Arc<tokio::sync::Semaphore>>>>,
    /// When set, each `get` of a key under the prefix first waits for (and
    /// uses up) one permit.
    get_gate: Arc<Mutex<Option<PrefixGate>>>,
    /// How many times `get` was called, per key.
    gets: Arc<Mutex<HashMap<String, u32>>>,
}

impl<S: ObjectStore + Clone + 'static> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            faults: Arc::default(),
            commit_gate: Arc::default(),
            get_gate: Arc::default(),
            gets: Arc::default(),
        }
    }

    /// Makes every later `get` of a key under `prefix` wait for a permit
    /// of `gate` (a slow read).
    pub fn gate_gets(&self, prefix: &str, gate: Arc<tokio::sync::Semaphore>) {
        *self.get_gate.lock().unwrap_or_else(|e| e.into_inner()) = Some((prefix.to_string(), gate));
    }

    /// How many times `get` was called for `key`, held or not.
    pub fn gets_of(&self, key: &str) -> u32 {
        let gets = self.gets.lock().unwrap_or_else(|e| e.into_inner());
        gets.get(key).copied().unwrap_or(0)
    }

    /// Makes every later commit wait for a permit of `gate` (a put whose
    /// commit is slow: an fsync, an upload's last request).
    pub fn gate_commits(&self, gate: Arc<tokio::sync::Semaphore>) {
        *self.commit_gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate);
    }

    /// Makes the next `count` calls of `op` fail with a remote error that is
    /// `transient` or not. `u32::MAX` fails forever.
    pub fn fail_next(&self, op: Op, count: u32, transient: bool) {
        self.lock().insert(op, (count, transient));
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Op, (u32, bool)>> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, op: Op, key: &str) -> Result<()> {
        let mut faults = self.lock();
        if let Some((count, transient)) = faults.get_mut(&op) {
            if *count > 0 {
                if *count != u32::MAX {
                    *count -= 1;
                }
                return Err(StorageError::Remote {
                    op: "injected fault",
                    key: key.to_string(),
                    message: format!("injected {op:?} failure"),
                    transient: *transient,
                });
            }
        }
        Ok(())
    }
}

#[async_trait]
impl<S: ObjectStore + Clone + 'static> ObjectStore for FaultyStore<S> {
    async fn get(&self, key: &Key) -> Result<ObjectReader> {
        *self
            .gets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.as_str().to_string())
            .or_default() += 1;
        let gate = self
            .get_gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(prefix, _)| key.as_str().starts_with(prefix.as_str()))
            .map(|(_, gate)| gate);
        if let Some(gate) = gate {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        self.check(Op::Get, key.as_str())?;
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        self.check(Op::Get, key.as_str())?;
        self.inner.get_range(key, offset, len).await
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        self.check(Op::Head, key.as_str())?;
        self.inner.head(key).await
    }

    async fn put(&self, key: &Key, mode: PutMode) -> Result<Box<dyn ObjectWriter>> {
        self.check(Op::Put, key.as_str())?;
        let inner = self.inner.put(key, mode).await?;
        Ok(Box::new(FaultyWriter {
            store: self.clone(),
            key: key.clone(),
            inner,
        }))
    }

    async fn list(&self, prefix: Option<&str>) -> Result<Vec<ObjectMeta>> {
        self.check(Op::List, prefix.unwrap_or(""))?;
        self.inner.list(prefix).await
    }

    async fn list_each(
        &self,
        prefix: &str,
        each: &mut (dyn FnMut(ObjectMeta) + Send),
    ) -> Result<()> {
        self.check(Op::List, prefix)?;
        self.inner.list_each(prefix, each).await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.check(Op::List, prefix)?;
        self.inner.list_dirs(prefix).await
    }

    async fn sync_batched(&self) -> Result<()> {
        self.inner.sync_batched().await
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        self.check(Op::Delete, key.as_str())?;
        self.inner.delete(key).await
    }

    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }

    async fn create_root(&self) -> Result<()> {
        self.inner.create_root().await
    }

    async fn remove_abandoned(
        &self,
        min_age: std::time::Duration,
        key_prefixes: &[&str],
    ) -> Result<usize> {
        self.inner.remove_abandoned(min_age, key_prefixes).await
    }

    async fn probe_create_only(&self) -> Result<super::CreateOnlyProbe> {
        self.inner.probe_create_only().await
    }

    fn use_create_only(&self, mode: super::CreateOnly) {
        self.inner.use_create_only(mode)
    }
}

struct FaultyWriter<S> {
    store: FaultyStore<S>,
    key: Key,
    inner: Box<dyn ObjectWriter>,
}

#[async_trait]
impl<S: ObjectStore + Clone + 'static> ObjectWriter for FaultyWriter<S> {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.inner.write(chunk).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let gate = self
            .store
            .commit_gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(gate) = gate {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        if let Err(e) = self.store.check(Op::Commit, self.key.as_str()) {
            self.inner.abort().await;
            return Err(e);
        }
        self.inner.commit().await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }

    fn held_bytes(&self) -> Option<usize> {
        self.inner.held_bytes()
    }
}
