//! Authenticated encryption of every object of a repository, as a layer
//! over any [`ObjectStore`].
//!
//! An encrypted object is the plain object (the envelope of
//! [`crate::repo::object`], whatever it holds) cut into chunks of 64 KiB,
//! each sealed with XChaCha20-Poly1305 in the STREAM construction
//! (RustCrypto's `aead::stream::StreamBE32`: a 19-byte random nonce prefix
//! per object, a 32-bit chunk counter and a last-chunk flag in the nonce):
//!
//! ```text
//! header  32 bytes  "WVEN", layout version (1), cipher (1 = XChaCha20-Poly1305
//!                   STREAM, 64 KiB chunks), 2 zero bytes, nonce prefix (19),
//!                   5 zero bytes
//! chunks  every chunk 64 KiB of plaintext + 16-byte tag, the last one
//!         0 to 64 KiB + tag, sealed with the last-chunk flag
//! ```
//!
//! Every chunk's associated data is the header and the object's key, so a
//! changed byte, a reordered, dropped or repeated chunk, a truncated
//! object (its last chunk would lack the flag) and an object moved or
//! copied to another key all fail authentication. Memory is a chunk or
//! two. Sizes stay computable both ways ([`plain_size`]), so `head`,
//! `list` and ranged reads work without reading whole objects: a ranged
//! read decrypts only the chunks it covers (the trailer check of a
//! duplicate push reads one or two chunks).
//!
//! The repository header (`repository.json`) is never encrypted: it says
//! whether the repository is, and holds the data key wrapped by the user's
//! secret ([`KeyProvider`]). Objects written before a repository has a
//! header (the create-only probe) stay plain too.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use tokio::io::{AsyncRead, ReadBuf};

use super::{
    CreateOnly, CreateOnlyProbe, Key, ObjectMeta, ObjectReader, ObjectStore, ObjectWriter, PutMode,
    Result, StorageError,
};

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
pub const HEADER: usize = 32;
const MAGIC: &[u8; 4] = b"WVEN";
const LAYOUT_VERSION: u8 = 1;
const CIPHER_XCHACHA20POLY1305_STREAM_64K: u8 = 1;
const NONCE_PREFIX: usize = 19;
/// The key never encrypted.
pub const HEADER_KEY: &str = "repository.json";

/// Why a chunk of an encrypted object was refused (inside the
/// `io::Error` a reader returns, so callers can tell damage from an
/// unreachable store).
#[derive(Debug)]
pub struct CorruptChunk(pub String);

impl fmt::Display for CorruptChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CorruptChunk {}

/// A repository's data key.
#[derive(Clone)]
pub struct DataKey(pub [u8; 32]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.0.zeroize();
    }
}

/// Finds the data key of a repository from its header, with the secret
/// the user configured.
#[async_trait]
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// `header` is the repository header's bytes, or `None` when there is
    /// none yet. `Ok(None)`: the repository is not encrypted. A secret
    /// that is missing or wrong is a [`StorageError::Key`].
    async fn data_key(&self, header: Option<&[u8]>) -> Result<Option<DataKey>>;
}

/// The plaintext size of an encrypted object of `stored` bytes (`None`
/// when no encrypted object has that size).
pub fn plain_size(stored: u64) -> Option<u64> {
    let body = stored.checked_sub(HEADER as u64)?;
    let unit = (CHUNK + TAG) as u64;
    let chunks = body.div_ceil(unit).max(1);
    let plain = body.checked_sub(chunks * TAG as u64)?;
    // Only sizes an encrypted object can have (a last chunk of 1 to 15
    // bytes past a full one cannot hold a tag).
    (stored_size(plain) == stored).then_some(plain)
}

/// The stored size of an object of `plain` bytes.
pub fn stored_size(plain: u64) -> u64 {
    let chunks = plain.div_ceil(CHUNK as u64).max(1);
    HEADER as u64 + plain + chunks * TAG as u64
}

struct Sealer {
    stream: StreamBE32<XChaCha20Poly1305>,
    /// Header bytes followed by the object key: every chunk's associated data.
    aad: Vec<u8>,
}

impl Sealer {
    fn new(key: &DataKey, header: &[u8; HEADER], object_key: &Key) -> Sealer {
        let aead = XChaCha20Poly1305::new((&key.0).into());
        let prefix = &header[8..8 + NONCE_PREFIX];
        let stream = StreamBE32::from_aead(aead, prefix.into());
        let mut aad = header.to_vec();
        aad.extend_from_slice(object_key.as_str().as_bytes());
        Sealer { stream, aad }
    }

    fn seal(&self, position: u32, last: bool, buf: &mut Vec<u8>) {
        self.stream
            .encrypt_in_place(position, last, &self.aad, buf)
            .expect("sealing a chunk of at most 64 KiB cannot fail");
    }

    fn open(&self, position: u32, last: bool, buf: &mut Vec<u8>) -> bool {
        self.stream
            .decrypt_in_place(position, last, &self.aad, buf)
            .is_ok()
    }
}

fn new_header() -> Result<[u8; HEADER]> {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(MAGIC);
    h[4] = LAYOUT_VERSION;
    h[5] = CIPHER_XCHACHA20POLY1305_STREAM_64K;
    getrandom::getrandom(&mut h[8..8 + NONCE_PREFIX])
        .map_err(|e| StorageError::Config(format!("no random numbers for a nonce: {e}")))?;
    Ok(h)
}

fn corrupt(key: &Key, reason: &str) -> StorageError {
    StorageError::Corrupt {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn check_header(key: &Key, h: &[u8]) -> Result<[u8; HEADER]> {
    if h.len() < HEADER || &h[..4] != MAGIC {
        return Err(corrupt(
            key,
            "not an encrypted walvault object (no encryption header)",
        ));
    }
    if h[4] != LAYOUT_VERSION || h[5] != CIPHER_XCHACHA20POLY1305_STREAM_64K {
        return Err(corrupt(
            key,
            "unknown encryption layout or cipher (written by a newer walvault, or damaged)",
        ));
    }
    if h[6..8]
        .iter()
        .chain(&h[8 + NONCE_PREFIX..HEADER])
        .any(|&b| b != 0)
    {
        return Err(corrupt(key, "reserved encryption header bytes are set"));
    }
    let mut out = [0u8; HEADER];
    out.copy_from_slice(&h[..HEADER]);
    Ok(out)
}

/// Encrypts every object of `inner` but the repository header, once the
/// header says the repository is encrypted.
pub struct CryptStore {
    inner: Arc<dyn ObjectStore>,
    keys: Arc<dyn KeyProvider>,
    state: std::sync::OnceLock<Option<DataKey>>,
    unlocking: tokio::sync::Mutex<()>,
    /// The header's bytes, handed from one reader to the next once: the
    /// repository's read and the key derivation of a short process share
    /// one GET (on S3, one request less for every push and fetch), while a
    /// long-running worker's later header checks (is the repository still
    /// mounted, still the same?) read storage again.
    header: std::sync::Mutex<Option<Bytes>>,
}

impl fmt::Debug for CryptStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl CryptStore {
    pub fn new(inner: Arc<dyn ObjectStore>, keys: Arc<dyn KeyProvider>) -> CryptStore {
        CryptStore {
            inner,
            keys,
            state: std::sync::OnceLock::new(),
            unlocking: tokio::sync::Mutex::new(()),
            header: std::sync::Mutex::new(None),
        }
    }

    /// The header's bytes: those the previous reader left, taken, or read
    /// from storage and left for the next reader (a missing header is not
    /// left).
    async fn header_bytes(&self) -> Result<Bytes> {
        if let Some(bytes) = self.header.lock().expect("header lock").take() {
            return Ok(bytes);
        }
        let bytes = self.inner.get_bytes(&Key::new(HEADER_KEY)?).await?;
        *self.header.lock().expect("header lock") = Some(bytes.clone());
        Ok(bytes)
    }

    fn forget_header(&self, key: &Key) {
        if key.as_str() == HEADER_KEY {
            *self.header.lock().expect("header lock") = None;
        }
    }

    /// The data key, `None` for a plain repository. Read from the header
    /// once: concurrent first calls wait for one derivation. A failure is
    /// not cached, and neither is a missing header (the provider refuses
    /// that when a key is configured).
    async fn key(&self, for_key: &Key) -> Result<Option<DataKey>> {
        if for_key.as_str() == HEADER_KEY {
            return Ok(None);
        }
        if let Some(state) = self.state.get() {
            return Ok(state.clone());
        }
        let _unlocking = self.unlocking.lock().await;
        if let Some(state) = self.state.get() {
            return Ok(state.clone());
        }
        let header = match self.header_bytes().await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => return self.keys.data_key(None).await,
            Err(e) => return Err(e),
        };
        let key = self.keys.data_key(Some(&header)).await?;
        let _ = self.state.set(key.clone());
        Ok(key)
    }

    fn meta(&self, encrypted: bool, mut meta: ObjectMeta) -> ObjectMeta {
        if encrypted && meta.key.as_str() != HEADER_KEY {
            // A size no encrypted object has shows as 0: reading it fails
            // with the reason.
            meta.size_bytes = plain_size(meta.size_bytes).unwrap_or(0);
        }
        meta
    }
}

#[async_trait]
impl ObjectStore for CryptStore {
    async fn get(&self, key: &Key) -> Result<ObjectReader> {
        let Some(data_key) = self.key(key).await? else {
            return self.inner.get(key).await;
        };
        let inner = self.inner.get(key).await?;
        Ok(Box::pin(DecryptingReader {
            key: key.clone(),
            data_key,
            inner,
            sealer: None,
            incoming: BytesMut::with_capacity(2 * (CHUNK + TAG)),
            eof: false,
            position: 0,
            out: Bytes::new(),
            done: false,
            scratch: vec![0u8; CHUNK + TAG],
        }))
    }

    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        let Some(data_key) = self.key(key).await? else {
            return self.inner.get_range(key, offset, len).await;
        };
        let stored = self.inner.head(key).await?.size_bytes;
        let plain = plain_size(stored)
            .ok_or_else(|| corrupt(key, "the stored size fits no encrypted object"))?;
        let end = offset.saturating_add(len).min(plain);
        if offset >= end {
            // Still check the header's format, as any read does.
            let h = self.inner.get_range(key, 0, HEADER as u64).await?;
            check_header(key, &h)?;
            return Ok(Bytes::new());
        }
        let last_chunk = (plain.max(1) - 1) / CHUNK as u64;
        let first = offset / CHUNK as u64;
        let last = (end - 1) / CHUNK as u64;
        let h = self.inner.get_range(key, 0, HEADER as u64).await?;
        let header = check_header(key, &h)?;
        let sealer = Sealer::new(&data_key, &header, key);
        let unit = (CHUNK + TAG) as u64;
        let raw = self
            .inner
            .get_range(key, HEADER as u64 + first * unit, (last - first + 1) * unit)
            .await?;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (i, sealed) in raw.chunks(unit as usize).enumerate() {
            let n = first + i as u64;
            let mut buf = sealed.to_vec();
            let position = u32::try_from(n).map_err(|_| corrupt(key, "too many chunks"))?;
            if !sealer.open(position, n == last_chunk, &mut buf) {
                return Err(corrupt(
                    key,
                    "a chunk failed authentication (damaged, truncated, or moved from another key)",
                ));
            }
            let chunk_start = n * CHUNK as u64;
            let from = offset.saturating_sub(chunk_start) as usize;
            let to = ((end - chunk_start) as usize).min(buf.len());
            if from < to {
                out.extend_from_slice(&buf[from..to]);
            }
        }
        if out.len() as u64 != end - offset {
            return Err(corrupt(key, "shorter than its size says"));
        }
        Ok(out.freeze())
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        let encrypted = self.key(key).await?.is_some();
        Ok(self.meta(encrypted, self.inner.head(key).await?))
    }

    async fn put(&self, key: &Key, mode: PutMode) -> Result<Box<dyn ObjectWriter>> {
        self.forget_header(key);
        let Some(data_key) = self.key(key).await? else {
            return self.inner.put(key, mode).await;
        };
        let header = new_header()?;
        let sealer = Sealer::new(&data_key, &header, key);
        let mut inner = self.inner.put(key, mode).await?;
        if let Err(e) = inner.write(Bytes::copy_from_slice(&header)).await {
            inner.abort().await;
            return Err(e);
        }
        Ok(Box::new(EncryptingWriter {
            inner,
            sealer,
            pending: Vec::with_capacity(CHUNK + TAG),
            position: 0,
        }))
    }

    async fn get_bytes(&self, key: &Key) -> Result<Bytes> {
        use tokio::io::AsyncReadExt;
        if key.as_str() == HEADER_KEY {
            return self.header_bytes().await;
        }
        let mut reader = self.get(key).await?;
        let mut buf = Vec::new();
        reader.read_to_end(&mut buf).await.map_err(|source| {
            match source
                .get_ref()
                .and_then(|e| e.downcast_ref::<CorruptChunk>())
            {
                Some(c) => corrupt(key, &c.0),
                None => StorageError::Io {
                    op: "read",
                    key: key.to_string(),
                    source,
                },
            }
        })?;
        Ok(Bytes::from(buf))
    }

    async fn list(&self, prefix: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let listed = self.inner.list(prefix).await?;
        let probe = Key::new("wal")?;
        let encrypted = self.key(&probe).await?.is_some();
        Ok(listed
            .into_iter()
            .map(|m| self.meta(encrypted, m))
            .collect())
    }

    async fn list_each(
        &self,
        prefix: &str,
        each: &mut (dyn FnMut(ObjectMeta) + Send),
    ) -> Result<()> {
        let probe = Key::new("wal")?;
        let encrypted = self.key(&probe).await?.is_some();
        self.inner
            .list_each(prefix, &mut |m| each(self.meta(encrypted, m)))
            .await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_dirs(prefix).await
    }

    async fn sync_batched(&self) -> Result<()> {
        self.inner.sync_batched().await
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        self.forget_header(key);
        self.inner.delete(key).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn remove_abandoned(
        &self,
        min_age: std::time::Duration,
        key_prefixes: &[&str],
    ) -> Result<usize> {
        self.inner.remove_abandoned(min_age, key_prefixes).await
    }

    async fn probe_create_only(&self) -> Result<CreateOnlyProbe> {
        self.inner.probe_create_only().await
    }

    fn use_create_only(&self, mode: CreateOnly) {
        self.inner.use_create_only(mode)
    }

    async fn create_root(&self) -> Result<()> {
        self.inner.create_root().await
    }

    async fn probe_features(&self) -> Vec<super::selftest::Finding> {
        self.inner.probe_features().await
    }
}

struct EncryptingWriter {
    inner: Box<dyn ObjectWriter>,
    sealer: Sealer,
    pending: Vec<u8>,
    position: u32,
}

impl EncryptingWriter {
    fn next_position(&mut self) -> Result<u32> {
        let p = self.position;
        self.position = p.checked_add(1).ok_or_else(|| {
            StorageError::Config("an encrypted object may hold at most 256 TiB".to_string())
        })?;
        Ok(p)
    }
}

#[async_trait]
impl ObjectWriter for EncryptingWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let mut rest: &[u8] = &chunk;
        let mut sealed = BytesMut::new();
        while !rest.is_empty() {
            // A full chunk is sealed only once more data follows: the last
            // chunk, full or not, carries the flag.
            if self.pending.len() == CHUNK {
                let mut buf = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK + TAG));
                let position = self.next_position()?;
                self.sealer.seal(position, false, &mut buf);
                sealed.extend_from_slice(&buf);
            }
            let take = (CHUNK - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        if sealed.is_empty() {
            return Ok(());
        }
        self.inner.write(sealed.freeze()).await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let mut buf = std::mem::take(&mut self.pending);
        let position = self.next_position()?;
        self.sealer.seal(position, true, &mut buf);
        let EncryptingWriter { mut inner, .. } = *self;
        if let Err(e) = inner.write(Bytes::from(buf)).await {
            inner.abort().await;
            return Err(e);
        }
        inner.commit().await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }

    fn held_bytes(&self) -> Option<usize> {
        self.inner.held_bytes().map(|n| n + self.pending.len())
    }
}

/// Decrypts an object chunk by chunk. A chunk is opened once the next one
/// has begun (so it is not the last) or the object has ended (so it is).
struct DecryptingReader {
    key: Key,
    data_key: DataKey,
    inner: ObjectReader,
    sealer: Option<Sealer>,
    incoming: BytesMut,
    eof: bool,
    position: u32,
    out: Bytes,
    done: bool,
    scratch: Vec<u8>,
}

impl DecryptingReader {
    fn fail(&self, reason: &str) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            CorruptChunk(reason.to_string()),
        )
    }

    /// Opens the next chunk if enough has arrived.
    fn advance(&mut self) -> std::io::Result<bool> {
        if self.sealer.is_none() {
            if self.incoming.len() < HEADER && !self.eof {
                return Ok(false);
            }
            let header = check_header(&self.key, &self.incoming).map_err(|e| match e {
                StorageError::Corrupt { reason, .. } => self.fail(&reason),
                other => std::io::Error::other(other.to_string()),
            })?;
            let _ = self.incoming.split_to(HEADER);
            self.sealer = Some(Sealer::new(&self.data_key, &header, &self.key));
        }
        let unit = CHUNK + TAG;
        let last = if self.incoming.len() > unit {
            false
        } else if self.eof {
            true
        } else {
            return Ok(false);
        };
        if last && self.incoming.len() < TAG {
            return Err(self.fail("truncated (no last chunk)"));
        }
        let take = self.incoming.len().min(unit);
        let sealed = self.incoming.split_to(take);
        let mut buf = sealed.to_vec();
        let sealer = self.sealer.as_ref().expect("set above");
        if !sealer.open(self.position, last, &mut buf) {
            return Err(self.fail(
                "a chunk failed authentication (damaged, truncated, reordered, or moved from another key)",
            ));
        }
        self.position = self
            .position
            .checked_add(1)
            .ok_or_else(|| self.fail("too many chunks"))?;
        self.out = Bytes::from(buf);
        self.done = last;
        Ok(true)
    }
}

impl AsyncRead for DecryptingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            if this.advance()? {
                continue;
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            match this.inner.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        this.eof = true;
                    } else {
                        this.incoming.extend_from_slice(got);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[derive(Debug)]
    struct Fixed(Option<[u8; 32]>);

    #[async_trait]
    impl KeyProvider for Fixed {
        async fn data_key(&self, header: Option<&[u8]>) -> Result<Option<DataKey>> {
            Ok(header.and(self.0).map(DataKey))
        }
    }

    async fn store_with(key: [u8; 32]) -> (Arc<MemoryStore>, CryptStore) {
        let inner = Arc::new(MemoryStore::new());
        inner
            .put_bytes(
                &Key::new(HEADER_KEY).unwrap(),
                Bytes::from_static(b"{}"),
                PutMode::Create,
            )
            .await
            .unwrap();
        let store = CryptStore::new(inner.clone(), Arc::new(Fixed(Some(key))));
        (inner, store)
    }

    /// The header is handed once from one reader to the next: the
    /// repository's read and the key derivation share one GET, and a third
    /// read goes to storage again (a worker that runs for hours must see a
    /// repository that went away). A put or delete of the header through
    /// this store forgets what was left.
    #[tokio::test]
    async fn the_header_is_shared_by_two_reads_then_read_again() {
        let (inner, store) = store_with([7; 32]).await;
        let header = Key::new(HEADER_KEY).unwrap();
        assert_eq!(&store.get_bytes(&header).await.unwrap()[..], b"{}");
        // Gone underneath: the key derivation still gets the bytes read
        // above, without a second read.
        inner.delete(&header).await.unwrap();
        let k = Key::new("a/b").unwrap();
        store
            .put_bytes(&k, Bytes::from_static(b"secret"), PutMode::Create)
            .await
            .unwrap();
        // The next read of the header is a real one.
        assert!(matches!(
            store.get_bytes(&header).await,
            Err(StorageError::NotFound { .. })
        ));
        // Left by a read, then replaced through the store: the new one.
        inner
            .put_bytes(&header, Bytes::from_static(b"{}"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(&store.get_bytes(&header).await.unwrap()[..], b"{}");
        store.delete(&header).await.unwrap();
        store
            .put_bytes(&header, Bytes::from_static(b"{\"v\":2}"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(&store.get_bytes(&header).await.unwrap()[..], b"{\"v\":2}");
        assert_eq!(&store.get_bytes(&k).await.unwrap()[..], b"secret");
    }

    #[test]
    fn sizes_map_both_ways() {
        for plain in [
            0u64,
            1,
            100,
            CHUNK as u64 - 1,
            CHUNK as u64,
            CHUNK as u64 + 1,
            3 * CHUNK as u64,
            10_000_000,
        ] {
            assert_eq!(plain_size(stored_size(plain)), Some(plain), "{plain}");
        }
        assert_eq!(plain_size(10), None);
        assert_eq!(
            plain_size(stored_size(CHUNK as u64) + 5),
            None,
            "no room for a tag"
        );
    }

    #[tokio::test]
    async fn the_conformance_suite_passes_over_encryption() {
        let (_, store) = store_with([7; 32]).await;
        crate::storage::conformance::run_all(&store, "conformance").await;
    }

    #[tokio::test]
    async fn objects_round_trip_and_reveal_no_plaintext() {
        let (inner, store) = store_with([1; 32]).await;
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for len in [0, 5, CHUNK, CHUNK + 1, 2 * CHUNK, data.len()] {
            let key = Key::new(format!("wal/x/{len}")).unwrap();
            store
                .put_bytes(&key, Bytes::copy_from_slice(&data[..len]), PutMode::Create)
                .await
                .unwrap();
            assert_eq!(&store.get_bytes(&key).await.unwrap()[..], &data[..len]);
            assert_eq!(store.head(&key).await.unwrap().size_bytes, len as u64);
            let raw = inner.get_bytes(&key).await.unwrap();
            assert_eq!(raw.len() as u64, stored_size(len as u64));
            if len >= 64 {
                let stored: std::collections::HashSet<[u8; 32]> = raw
                    .windows(64)
                    .map(|w| *blake3::hash(w).as_bytes())
                    .collect();
                assert!(
                    !data[..len]
                        .windows(64)
                        .take(5000)
                        .any(|p| stored.contains(blake3::hash(p).as_bytes())),
                    "no 64-byte run of the plaintext is stored"
                );
            }
            for (off, n) in [
                (0, 3),
                (len as u64 / 2, 100_000),
                (len.saturating_sub(56) as u64, 56),
            ] {
                let got = store.get_range(&key, off, n).await.unwrap();
                let from = (off as usize).min(len);
                let to = (off as usize + n as usize).min(len);
                assert_eq!(&got[..], &data[from..to], "range {off}+{n} of {len}");
            }
        }
    }

    #[tokio::test]
    async fn any_flipped_byte_swap_or_truncation_is_detected() {
        let (inner, store) = store_with([2; 32]).await;
        let a = Key::new("wal/a").unwrap();
        let b = Key::new("wal/b").unwrap();
        let body = vec![9u8; CHUNK + 1000];
        store
            .put_bytes(&a, Bytes::from(body.clone()), PutMode::Create)
            .await
            .unwrap();
        store
            .put_bytes(&b, Bytes::from(vec![8u8; CHUNK + 1000]), PutMode::Create)
            .await
            .unwrap();
        let raw = inner.get_bytes(&a).await.unwrap().to_vec();
        let store = &store;
        let reject = |what: String| async move {
            let err = store.get_bytes(&Key::new("wal/t").unwrap()).await;
            assert!(err.is_err(), "{what} was not detected");
        };
        for i in (0..raw.len()).step_by(97).chain([raw.len() - 1, 4, 40]) {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            inner.delete(&Key::new("wal/t").unwrap()).await.unwrap();
            inner
                .put_bytes(
                    &Key::new("wal/t").unwrap(),
                    Bytes::from(bad),
                    PutMode::Create,
                )
                .await
                .unwrap();
            reject(format!("a flipped byte at {i}")).await;
        }
        // Truncated at the chunk boundary: the first chunk lacks the flag.
        inner.delete(&Key::new("wal/t").unwrap()).await.unwrap();
        inner
            .put_bytes(
                &Key::new("wal/t").unwrap(),
                Bytes::from(raw[..HEADER + CHUNK + TAG].to_vec()),
                PutMode::Create,
            )
            .await
            .unwrap();
        reject("truncation at a chunk boundary".into()).await;
        // The same bytes under another key.
        inner.delete(&Key::new("wal/t").unwrap()).await.unwrap();
        inner
            .put_bytes(
                &Key::new("wal/t").unwrap(),
                Bytes::from(raw.clone()),
                PutMode::Create,
            )
            .await
            .unwrap();
        reject("an object moved to another key".into()).await;
        // Swapped objects of the same size.
        let raw_b = inner.get_bytes(&b).await.unwrap();
        inner.delete(&a).await.unwrap();
        inner.put_bytes(&a, raw_b, PutMode::Create).await.unwrap();
        assert!(
            store.get_bytes(&a).await.is_err(),
            "a swap was not detected"
        );
        assert!(
            store.get_range(&a, 0, 10).await.is_err(),
            "a swap was not detected by a ranged read"
        );
    }

    #[tokio::test]
    async fn a_wrong_key_reads_nothing() {
        let (inner, store) = store_with([3; 32]).await;
        let k = Key::new("wal/k").unwrap();
        store
            .put_bytes(&k, Bytes::from_static(b"secret"), PutMode::Create)
            .await
            .unwrap();
        let other = CryptStore::new(inner, Arc::new(Fixed(Some([4; 32]))));
        assert!(other.get_bytes(&k).await.is_err());
    }
}
