//! A wrapper that refuses every write: for fetches made by a scratch
//! server (`verify --restore`), which must never change the repository
//! whatever its configuration says.

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Key, ObjectMeta, ObjectReader, ObjectStore, ObjectWriter, PutMode, Result, StorageError,
};

#[derive(Debug)]
pub struct ReadOnlyStore<S> {
    inner: S,
}

impl<S> ReadOnlyStore<S> {
    pub fn new(inner: S) -> ReadOnlyStore<S> {
        ReadOnlyStore { inner }
    }
}

fn refused(op: &str, key: &str) -> StorageError {
    StorageError::Config(format!(
        "{op} \"{key}\" refused: the repository was opened read-only (--read-only)"
    ))
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for ReadOnlyStore<S> {
    async fn get(&self, key: &Key) -> Result<ObjectReader> {
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.get_range(key, offset, len).await
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        self.inner.head(key).await
    }

    async fn put(&self, key: &Key, _mode: PutMode) -> Result<Box<dyn ObjectWriter>> {
        Err(refused("write", key.as_str()))
    }

    async fn list(&self, prefix: Option<&str>) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }

    async fn list_each(
        &self,
        prefix: &str,
        each: &mut (dyn FnMut(ObjectMeta) + Send),
    ) -> Result<()> {
        self.inner.list_each(prefix, each).await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_dirs(prefix).await
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        Err(refused("delete", key.as_str()))
    }

    fn describe(&self) -> String {
        format!("{} (read-only)", self.inner.describe())
    }

    async fn create_root(&self) -> Result<()> {
        Err(refused("create", "repository"))
    }

    async fn probe_features(&self) -> Vec<super::selftest::Finding> {
        self.inner.probe_features().await
    }

    fn use_create_only(&self, mode: super::CreateOnly) {
        self.inner.use_create_only(mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[tokio::test]
    async fn reads_pass_and_writes_are_refused() {
        let inner = MemoryStore::new();
        let key = Key::new("a/b").unwrap();
        inner
            .put_bytes(&key, Bytes::from_static(b"x"), PutMode::Create)
            .await
            .unwrap();
        let store = ReadOnlyStore::new(inner);
        assert_eq!(&store.get_bytes(&key).await.unwrap()[..], b"x");
        let new = Key::new("a/c").unwrap();
        let err = store
            .put_bytes(&new, Bytes::from_static(b"y"), PutMode::Create)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        assert!(store.delete(&key).await.is_err());
        assert!(store.get_bytes(&key).await.is_ok(), "nothing was deleted");
        assert!(store.head(&new).await.is_err(), "nothing was written");
    }
}
