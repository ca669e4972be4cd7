//! The storage conformance suite: the guarantees of [`ObjectStore`], checked
//! the same way for every backend. Unit tests run it on the local and memory
//! backends; the integration tests run it on S3 against a real
//! S3-compatible server.
//!
//! Each check panics with a message naming the guarantee it found broken.
//! All keys live under `base`, so the suite can share a bucket.

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::{Key, ObjectStore, PutMode, StorageError};

/// Runs every check under `base/`.
pub async fn run_all(store: &dyn ObjectStore, base: &str) {
    put_get_round_trip(store, base).await;
    empty_object(store, base).await;
    large_streamed_object(store, base).await;
    missing_is_not_found(store, base).await;
    create_only_never_overwrites(store, base).await;
    overwrite_replaces(store, base).await;
    uncommitted_is_invisible(store, base).await;
    list_is_sorted_and_filtered(store, base).await;
    list_dirs_names_one_level(store, base).await;
    batched_creates_are_create_only(store, base).await;
    delete_is_idempotent(store, base).await;
    ranges(store, base).await;
}

fn key(base: &str, rest: &str) -> Key {
    Key::new(format!("{base}/{rest}")).expect("conformance keys are valid")
}

async fn read_all(store: &dyn ObjectStore, key: &Key) -> Vec<u8> {
    let mut reader = store.get(key).await.expect("get an object that was put");
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .await
        .expect("read a stored object");
    out
}

/// Deterministic, incompressible-ish bytes.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn put_chunks(
    store: &dyn ObjectStore,
    key: &Key,
    data: &[u8],
    chunk: usize,
    mode: PutMode,
) -> Result<(), StorageError> {
    let mut writer = store.put(key, mode).await?;
    for part in data.chunks(chunk.max(1)) {
        writer.write(Bytes::copy_from_slice(part)).await?;
    }
    writer.commit().await
}

pub async fn put_get_round_trip(store: &dyn ObjectStore, base: &str) {
    let k = key(base, "round/trip");
    let data = pattern(100_000, 1);
    put_chunks(store, &k, &data, 7_000, PutMode::Create)
        .await
        .expect("put a new object");
    assert_eq!(read_all(store, &k).await, data, "get returns the bytes put");
    let meta = store.head(&k).await.expect("head an object that was put");
    assert_eq!(
        meta.size_bytes,
        data.len() as u64,
        "head reports the size put"
    );
    assert_eq!(meta.key, k);
    assert!(
        meta.modified_unix_secs > 1_600_000_000,
        "head reports a modification time"
    );
    assert_eq!(
        store.get_bytes(&k).await.expect("get_bytes").as_ref(),
        &data[..]
    );
}

pub async fn empty_object(store: &dyn ObjectStore, base: &str) {
    let k = key(base, "empty");
    store
        .put_bytes(&k, Bytes::new(), PutMode::Create)
        .await
        .expect("put an empty object");
    assert!(
        read_all(store, &k).await.is_empty(),
        "an empty object reads back empty"
    );
    assert_eq!(store.head(&k).await.expect("head").size_bytes, 0);
}

/// Larger than one S3 part (8 MiB), written in 1 MiB chunks.
pub async fn large_streamed_object(store: &dyn ObjectStore, base: &str) {
    let k = key(base, "large");
    let data = pattern(19 << 20, 2);
    put_chunks(store, &k, &data, 1 << 20, PutMode::Create)
        .await
        .expect("put a large object");
    let back = read_all(store, &k).await;
    assert!(back == data, "a large streamed object reads back identical");
    assert_eq!(
        store.head(&k).await.expect("head").size_bytes,
        data.len() as u64
    );
}

pub async fn missing_is_not_found(store: &dyn ObjectStore, base: &str) {
    let k = key(base, "missing/object");
    assert!(
        matches!(store.get(&k).await, Err(StorageError::NotFound { .. })),
        "get of a missing key is NotFound"
    );
    assert!(
        matches!(store.head(&k).await, Err(StorageError::NotFound { .. })),
        "head of a missing key is NotFound"
    );
    assert!(
        matches!(
            store.get_range(&k, 0, 10).await,
            Err(StorageError::NotFound { .. })
        ),
        "get_range of a missing key is NotFound"
    );
}

pub async fn create_only_never_overwrites(store: &dyn ObjectStore, base: &str) {
    let k = key(base, "create/only");
    store
        .put_bytes(&k, Bytes::from_static(b"first"), PutMode::Create)
        .await
        .expect("first create");
    let second = store
        .put_bytes(&k, Bytes::from_static(b"second, longer"), PutMode::Create)
        .await;
    assert!(
        matches!(second, Err(StorageError::AlreadyExists { .. })),
        "a second create-only put fails with AlreadyExists, got {second:?}"
    );
    assert_eq!(
        read_all(store, &k).await,
        b"first",
        "a refused create leaves the object untouched"
    );
    // The same through a multi-part writer.
    let big = pattern(9 << 20, 3);
    let third = put_chunks(store, &k, &big, 1 << 20, PutMode::Create).await;
    assert!(
        matches!(third, Err(StorageError::AlreadyExists { .. })),
        "a large create-only put over an existing key fails, got {third:?}"
    );
    assert_eq!(
        read_all(store, &k).await,
        b"first",
        "a refused large create leaves the object untouched"
    );
}

pub async fn overwrite_replaces(store: &dyn ObjectStore, base: &str) {
    let k = key(base, "overwrite");
    store
        .put_bytes(&k, Bytes::from_static(b"old contents"), PutMode::Overwrite)
        .await
        .expect("put");
    store
        .put_bytes(&k, Bytes::from_static(b"new"), PutMode::Overwrite)
        .await
        .expect("overwrite");
    assert_eq!(
        read_all(store, &k).await,
        b"new",
        "an overwrite replaces the whole object"
    );
}

pub async fn uncommitted_is_invisible(store: &dyn ObjectStore, base: &str) {
    let k = key(base, "uncommitted");
    let mut writer = store.put(&k, PutMode::Create).await.expect("start put");
    writer
        .write(Bytes::from(pattern(9 << 20, 4)))
        .await
        .expect("write");
    assert!(
        store.head(&k).await.is_err(),
        "an object is invisible before commit"
    );
    writer.abort().await;
    assert!(
        matches!(store.head(&k).await, Err(StorageError::NotFound { .. })),
        "an aborted put leaves nothing"
    );
    let mut writer = store.put(&k, PutMode::Create).await.expect("start put");
    writer
        .write(Bytes::from_static(b"partial"))
        .await
        .expect("write");
    drop(writer);
    assert!(
        matches!(store.head(&k).await, Err(StorageError::NotFound { .. })),
        "a dropped put leaves nothing"
    );
    let listed = store
        .list(Some(&format!("{base}/uncommitted")))
        .await
        .expect("list");
    assert!(listed.is_empty(), "no partial object is listed: {listed:?}");
    // And the key is still free for a create-only put.
    store
        .put_bytes(&k, Bytes::from_static(b"whole"), PutMode::Create)
        .await
        .expect("create after abort");
}

pub async fn batched_creates_are_create_only(store: &dyn ObjectStore, base: &str) {
    let k = key(base, "batched/one");
    store
        .put_bytes(&k, Bytes::from_static(b"first"), PutMode::CreateBatched)
        .await
        .expect("batched create");
    let err = store
        .put_bytes(&k, Bytes::from_static(b"second"), PutMode::CreateBatched)
        .await
        .expect_err("a batched create never overwrites");
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    store.sync_batched().await.expect("sync batched puts");
    assert_eq!(read_all(store, &k).await, b"first");
}

pub async fn list_dirs_names_one_level(store: &dyn ObjectStore, base: &str) {
    for name in [
        "dirs/b/x/1",
        "dirs/a/1",
        "dirs/a/2",
        "dirs/c",
        "dirs-other/z/1",
    ] {
        store
            .put_bytes(
                &key(base, name),
                Bytes::from_static(b"d"),
                PutMode::Overwrite,
            )
            .await
            .expect("put for list_dirs");
    }
    let dirs = store
        .list_dirs(&format!("{base}/dirs/"))
        .await
        .expect("list_dirs");
    assert_eq!(
        dirs,
        ["a", "b"],
        "list_dirs names the directories one level down, sorted, without plain objects"
    );
    store.delete(&key(base, "dirs/a/1")).await.expect("delete");
    store.delete(&key(base, "dirs/a/2")).await.expect("delete");
    let dirs = store
        .list_dirs(&format!("{base}/dirs/"))
        .await
        .expect("list_dirs");
    assert_eq!(dirs, ["b"], "a directory without objects is not named");
    assert!(store
        .list_dirs(&format!("{base}/nothing-here/"))
        .await
        .expect("list_dirs of nothing")
        .is_empty());
}

pub async fn list_is_sorted_and_filtered(store: &dyn ObjectStore, base: &str) {
    let names = [
        "list/b/2",
        "list/a/1",
        "list/b/10",
        "list/c",
        "listing-other",
    ];
    for (i, name) in names.iter().enumerate() {
        store
            .put_bytes(
                &key(base, name),
                Bytes::from(vec![b'x'; i + 1]),
                PutMode::Overwrite,
            )
            .await
            .expect("put for list");
    }
    let listed = store
        .list(Some(&format!("{base}/list/")))
        .await
        .expect("list a prefix");
    let got: Vec<String> = listed.iter().map(|m| m.key.to_string()).collect();
    let want: Vec<String> = ["list/a/1", "list/b/10", "list/b/2", "list/c"]
        .iter()
        .map(|n| format!("{base}/{n}"))
        .collect();
    assert_eq!(
        got, want,
        "list returns exactly the keys under the prefix, sorted"
    );
    assert_eq!(listed[0].size_bytes, 2, "list reports sizes");
    let mut each = Vec::new();
    store
        .list_each(&format!("{base}/list/"), &mut |m| each.push(m))
        .await
        .expect("list_each a prefix");
    each.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(each, listed, "list_each hands over what list returns");
    let partial = store
        .list(Some(&format!("{base}/list")))
        .await
        .expect("list a partial-name prefix");
    assert_eq!(
        partial.len(),
        5,
        "a prefix is a key prefix, not only a directory"
    );
    let all = store.list(None).await.expect("list everything");
    assert!(
        all.windows(2).all(|w| w[0].key < w[1].key),
        "a full listing is sorted"
    );
    assert!(all
        .iter()
        .any(|m| m.key.to_string() == format!("{base}/list/c")));
}

pub async fn delete_is_idempotent(store: &dyn ObjectStore, base: &str) {
    let k = key(base, "delete/me");
    store
        .put_bytes(&k, Bytes::from_static(b"x"), PutMode::Create)
        .await
        .expect("put");
    store.delete(&k).await.expect("delete");
    assert!(
        matches!(store.head(&k).await, Err(StorageError::NotFound { .. })),
        "a deleted object is gone"
    );
    store
        .delete(&k)
        .await
        .expect("deleting a missing key succeeds");
}

pub async fn ranges(store: &dyn ObjectStore, base: &str) {
    let k = key(base, "range");
    let data = pattern(1000, 5);
    store
        .put_bytes(&k, Bytes::from(data.clone()), PutMode::Create)
        .await
        .expect("put");
    assert_eq!(
        store.get_range(&k, 10, 20).await.expect("range").as_ref(),
        &data[10..30]
    );
    assert_eq!(
        store
            .get_range(&k, 990, 100)
            .await
            .expect("tail range")
            .as_ref(),
        &data[990..],
        "a range past the end is cut short"
    );
    assert!(
        store
            .get_range(&k, 2000, 10)
            .await
            .expect("range past end")
            .is_empty(),
        "a range starting past the end is empty"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStore;
    use crate::storage::memory::MemoryStore;

    #[tokio::test]
    async fn local_store_conforms() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LocalStore::new(dir.path().join("repo")).expect("local store");
        store.create_root().await.expect("create root");
        run_all(&store, "conformance").await;
        // No temporary file is left behind by any of the checks.
        let mut leftovers = Vec::new();
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read dir") {
                let entry = entry.expect("entry");
                if entry.file_type().expect("type").is_dir() {
                    stack.push(entry.path());
                } else if entry.file_name().to_string_lossy().starts_with('.') {
                    leftovers.push(entry.path());
                }
            }
        }
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[tokio::test]
    async fn memory_store_conforms() {
        run_all(&MemoryStore::new(), "conformance").await;
    }

    #[test]
    fn keys_are_validated() {
        assert!(Key::new("wal/00000001/000000010000000000000001").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "a/.hidden", "sp ace", "a/"] {
            assert!(Key::new(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    /// An unmounted or mistyped repository directory is never created by a
    /// put: the root appears only through `create_root` (`walvault init`).
    #[tokio::test]
    async fn missing_local_root_is_never_created() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("not-mounted");
        let store = LocalStore::new(&root).expect("local store");
        let key = Key::new("wal/x").unwrap();
        let err = store
            .put_bytes(&key, Bytes::from_static(b"x"), PutMode::Create)
            .await
            .expect_err("put into a missing root");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(
            store.list(None).await.is_err(),
            "listing a missing root fails"
        );
        assert!(matches!(
            store.get_bytes(&key).await,
            Err(StorageError::NotFound { .. })
        ));
        assert!(!root.exists(), "nothing was created");
        store.create_root().await.expect("create root");
        store
            .put_bytes(&key, Bytes::from_static(b"x"), PutMode::Create)
            .await
            .expect("put after create_root");
    }

    #[test]
    fn relative_local_root_is_refused() {
        let err = LocalStore::new("relative/path").expect_err("relative root");
        assert!(err.to_string().contains("not absolute"), "{err}");
    }
}
