//! The repository's object store: one small trait and its backends.
//!
//! This module owns moving opaque bytes to and from a place (a local
//! directory, an S3 bucket, memory). It knows nothing of WAL, PostgreSQL,
//! compression or the repository layout: `repo` builds the [`Key`]s and adds
//! the stream layers, backends only store what they are given.
//!
//! Guarantees every backend gives, checked by [`conformance`]:
//! - **Atomic put.** No reader ever sees a partial object: an object appears
//!   under its key whole, at [`ObjectWriter::commit`], or not at all. A writer
//!   that is dropped or aborted leaves nothing visible.
//! - **Create-only put.** [`PutMode::Create`] fails with
//!   [`StorageError::AlreadyExists`] when the key exists and leaves the
//!   existing object untouched.
//! - **Missing means [`StorageError::NotFound`]**, never a generic error, for
//!   `get`, `get_range` and `head`.
//! - **Listing** returns every object under a prefix, sorted by key.
//! - **Delete** is idempotent: deleting a missing key succeeds.

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

pub mod conformance;
pub mod crypt;
pub mod faulty;
pub mod local;
pub mod memory;
pub mod readonly;
pub mod s3;
pub mod selftest;

/// A key in the object store: `/`-separated segments of `[A-Za-z0-9._-]`,
/// never empty, never starting with `.` (temporary files of the local
/// backend start with `.`), never `..`.
///
/// Keys are built by `repo`, never from raw user strings, so an invalid key
/// is a programming error reported as [`StorageError::InvalidKey`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Validates and wraps a key.
    pub fn new(key: impl Into<String>) -> Result<Key, StorageError> {
        let key = key.into();
        let valid = !key.is_empty()
            && key.split('/').all(|part| {
                !part.is_empty()
                    && !part.starts_with('.')
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            });
        if valid {
            Ok(Key(key))
        } else {
            Err(StorageError::InvalidKey { key })
        }
    }

    /// Joins a further path segment (or several, `/`-separated).
    pub fn join(&self, rest: &str) -> Result<Key, StorageError> {
        Key::new(format!("{}/{}", self.0, rest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last path segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

/// How a put treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace any existing object atomically.
    Overwrite,
    /// Fail with [`StorageError::AlreadyExists`] if the key exists; the
    /// existing object is never touched.
    Create,
    /// As [`PutMode::Create`], but durable only once
    /// [`ObjectStore::sync_batched`] returns: for the many objects of one
    /// backup, made durable together before its manifest is written. A
    /// crash before that may lose them, never leave part of one visible.
    CreateBatched,
}

impl PutMode {
    /// Whether an existing object makes the put fail.
    pub fn is_create(self) -> bool {
        matches!(self, PutMode::Create | PutMode::CreateBatched)
    }
}

/// How a backend keeps [`PutMode::Create`] from overwriting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOnly {
    /// Atomically: a hard link locally, `If-None-Match: *` honoured by
    /// the S3 server.
    Atomic,
    /// The fallback for S3 servers that answer `If-None-Match: *` with 501
    /// or ignore it: a HEAD before the write refuses an existing object,
    /// and a HEAD after it checks that the object is the one just written.
    /// Two writers of one key within the same moment can still both
    /// succeed, the later replacing the earlier (docs/ARCHITECTURE.md).
    HeadCheck,
}

impl CreateOnly {
    pub fn as_str(self) -> &'static str {
        match self {
            CreateOnly::Atomic => "atomic",
            CreateOnly::HeadCheck => "head-check",
        }
    }

    pub fn parse(s: &str) -> Option<CreateOnly> {
        match s {
            "atomic" => Some(CreateOnly::Atomic),
            "head-check" => Some(CreateOnly::HeadCheck),
            _ => None,
        }
    }
}

/// What probing a server's conditional create found, for a single PUT
/// and for a multipart completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOnlyProbe {
    /// "refused the second create (honoured)", "answered 501 (not
    /// implemented)" or "overwrote the object (ignored)".
    pub put: String,
    pub multipart: String,
    /// What walvault uses for this repository as a result.
    pub mode: CreateOnly,
}

/// What `head` and `list` report of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: Key,
    pub size_bytes: u64,
    /// Last modification, seconds since the Unix epoch.
    pub modified_unix_secs: i64,
}

/// A stream of an object's bytes.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// Errors of the object store. Variants carry the key and the backend's own
/// words; `repo` and the commands add what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object \"{key}\" not found")]
    NotFound { key: Key },
    #[error("object \"{key}\" already exists")]
    AlreadyExists { key: Key },
    #[error("invalid object key \"{key}\"")]
    InvalidKey { key: String },
    #[error("{op} \"{key}\": {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// A remote store failed; `transient` says whether trying again may help
    /// (throttling, 5xx, timeouts, connection failures).
    #[error("{op} \"{key}\": {message}")]
    Remote {
        op: &'static str,
        key: String,
        message: String,
        transient: bool,
    },
    #[error("storage configuration: {0}")]
    Config(String),
    /// An encrypted object failed authentication (or is not one).
    #[error("object \"{key}\" is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// The encryption key is missing or wrong: one line and a fix, never
    /// the secret itself.
    #[error("{0}")]
    Key(String),
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// Whether repeating the operation may succeed (used by fetch's bounded
    /// retry loop; the S3 client already retries within one call).
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Remote { transient, .. } => *transient,
            StorageError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The object store. Implementations must give the guarantees listed in the
/// module documentation; [`conformance::run_all`] checks them.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Streams an object. Missing: [`StorageError::NotFound`].
    async fn get(&self, key: &Key) -> Result<ObjectReader>;

    /// Reads `len` bytes at `offset`; fewer only when the object ends first.
    /// Missing: [`StorageError::NotFound`].
    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes>;

    /// Size and time of an object. Missing: [`StorageError::NotFound`].
    async fn head(&self, key: &Key) -> Result<ObjectMeta>;

    /// Starts an atomic, streaming put. Nothing is visible until
    /// [`ObjectWriter::commit`] returns `Ok`.
    async fn put(&self, key: &Key, mode: PutMode) -> Result<Box<dyn ObjectWriter>>;

    /// Every object whose key starts with `prefix` (a key prefix, not only a
    /// directory), sorted by key. `None` lists everything.
    async fn list(&self, prefix: Option<&str>) -> Result<Vec<ObjectMeta>>;

    /// Every object whose key starts with `prefix`, handed to `each` one at
    /// a time in no particular order, so a caller that only counts or sums
    /// never holds the listing (a backup of a million files has a million
    /// objects). The default lists first; local and S3 stream.
    async fn list_each(
        &self,
        prefix: &str,
        each: &mut (dyn FnMut(ObjectMeta) + Send),
    ) -> Result<()> {
        for meta in self.list(Some(prefix)).await? {
            each(meta);
        }
        Ok(())
    }

    /// The names one level below `prefix` (which ends with `/`) that hold
    /// objects, sorted: `list_dirs("backup/")` gives the backup labels
    /// without listing a single backup's objects. S3 lists with a
    /// delimiter; the default lists everything below and is for stores
    /// where that is cheap.
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = Vec::new();
        for meta in self.list(Some(prefix)).await? {
            let Some(rest) = meta.key.as_str().strip_prefix(prefix) else {
                continue;
            };
            if let Some((name, _)) = rest.split_once('/') {
                if names.last().map(String::as_str) != Some(name) {
                    names.push(name.to_string());
                }
            }
        }
        names.dedup();
        Ok(names)
    }

    /// Makes every object put with [`PutMode::CreateBatched`] so far
    /// durable. Stores whose puts are durable when they return (S3) have
    /// nothing to do.
    async fn sync_batched(&self) -> Result<()> {
        Ok(())
    }

    /// Removes an object; a missing key is not an error.
    async fn delete(&self, key: &Key) -> Result<()>;

    /// A short description for messages, e.g. `local "/var/lib/walvault"`.
    fn describe(&self) -> String;

    /// Removes what writers that died (killed, crashed) left behind and no
    /// reader can see: temporary files of the local backend whose writer's
    /// lock is gone, multipart uploads of S3 under one of `key_prefixes`
    /// started more than `min_age` ago. Never touches what a live writer
    /// holds. Returns how many leftovers it removed.
    async fn remove_abandoned(
        &self,
        _min_age: std::time::Duration,
        _key_prefixes: &[&str],
    ) -> Result<usize> {
        Ok(0)
    }

    /// Probes whether the server keeps create-only puts from overwriting,
    /// by creating a probe object twice (with a single PUT and with a
    /// multipart upload) and removing it. Local and memory stores are
    /// atomic by construction.
    async fn probe_create_only(&self) -> Result<CreateOnlyProbe> {
        Ok(CreateOnlyProbe {
            put: "atomic by construction".to_string(),
            multipart: "atomic by construction".to_string(),
            mode: CreateOnly::Atomic,
        })
    }

    /// Tells the backend which create-only method the repository header
    /// recorded for it.
    fn use_create_only(&self, _mode: CreateOnly) {}

    /// Prepares the store's root for `walvault init`, the only caller: a
    /// local directory is created; a bucket must already exist. No other
    /// operation ever creates the root.
    async fn create_root(&self) -> Result<()> {
        Ok(())
    }

    /// What `check --storage` reports of the server beyond the
    /// [`ObjectStore`] API (S3: versioning, object lock, the URL style,
    /// whether ranged reads are honoured). Wrappers forward it.
    async fn probe_features(&self) -> Vec<selftest::Finding> {
        Vec::new()
    }

    /// Reads a whole object into memory. Only for small objects (headers,
    /// manifests).
    async fn get_bytes(&self, key: &Key) -> Result<Bytes> {
        use tokio::io::AsyncReadExt;
        let mut reader = self.get(key).await?;
        let mut buf = Vec::new();
        reader
            .read_to_end(&mut buf)
            .await
            .map_err(|source| StorageError::Io {
                op: "read",
                key: key.to_string(),
                source,
            })?;
        Ok(Bytes::from(buf))
    }

    /// Stores a small object from memory.
    async fn put_bytes(&self, key: &Key, data: Bytes, mode: PutMode) -> Result<()> {
        let mut writer = self.put(key, mode).await?;
        if let Err(e) = writer.write(data).await {
            writer.abort().await;
            return Err(e);
        }
        writer.commit().await
    }
}

/// A sorted listing gathered from [`ObjectStore::list_each`], for stores
/// whose listing streams.
pub(crate) async fn list_sorted(
    store: &(dyn ObjectStore + '_),
    prefix: Option<&str>,
) -> Result<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    store
        .list_each(prefix.unwrap_or(""), &mut |m| out.push(m))
        .await?;
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// An object being written. Chunks are written in order; the object becomes
/// visible, whole, at `commit`. Dropping a writer without committing leaves
/// nothing visible (backends clean up what they can, `abort` does it now).
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends a chunk. Backends may buffer up to their part size.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Makes the object durable and visible under its key. With
    /// [`PutMode::Create`] and an existing key: [`StorageError::AlreadyExists`]
    /// and the existing object is untouched.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Discards what was written.
    async fn abort(self: Box<Self>);

    /// How many bytes of the object this writer holds in memory now:
    /// `None` for a writer that passes its chunks on as they come (a
    /// local file), `Some` for one that keeps the body until it can send
    /// it (an S3 upload). A process that writes many objects at once
    /// counts this against its memory budget (`repo::object::Pacing`).
    fn held_bytes(&self) -> Option<usize> {
        None
    }
}
