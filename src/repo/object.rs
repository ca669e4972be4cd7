//! The stored object envelope (repository format v1, see docs/FORMAT.md):
//!
//! ```text
//! header   16 bytes  "WVLT", envelope version (1), compression (0 none,
//!                    1 zstd), encryption (0 none), flags (0), 8 reserved
//! body     the raw bytes, compressed as the header says
//! trailer  56 bytes  "WVTR", 4 reserved, raw size u64 LE, body size u64 LE,
//!                    BLAKE3 of the raw bytes (32)
//! ```
//!
//! Writing streams a source through checksum and compression into a storage
//! writer; reading streams an object back through decompression and checks
//! size and checksum against the trailer before reporting success. Because
//! the trailer sits at a fixed distance from the end, the checksum of a
//! stored object can be read with one ranged read, without the body.
//!
//! The encryption byte is the room left for authenticated encryption: a
//! reader of this version refuses any value but 0 with a clear error, and a
//! later version adds the encrypted body format behind a new value.

use std::io;
use std::os::unix::fs::MetadataExt;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::storage::{Key, ObjectStore, ObjectWriter, PutMode, StorageError};
use crate::stream::compress::context_bytes;
use crate::stream::{Checksum, Compressor, Decompressor, Hasher, InPlaceCompressor, StreamError};

pub const HEADER_LEN: usize = 16;
pub const TRAILER_LEN: usize = 56;
const HEADER_MAGIC: &[u8; 4] = b"WVLT";
const TRAILER_MAGIC: &[u8; 4] = b"WVTR";
pub const ENVELOPE_VERSION: u8 = 1;
const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;
const ENCRYPTION_NONE: u8 = 0;

/// How bytes are read and written in one step: large enough to amortise
/// per-call costs, small enough that memory stays bounded.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Compression settings for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressSettings {
    /// zstd level; 0 stores uncompressed.
    pub level: i32,
    /// Extra zstd threads for one object (0: compress on the caller's thread).
    pub workers: u32,
}

impl Default for CompressSettings {
    fn default() -> Self {
        CompressSettings {
            level: 3,
            workers: 0,
        }
    }
}

/// What the trailer records of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    pub raw_size: u64,
    pub checksum: Checksum,
    /// Size of the stored object, envelope included.
    pub stored_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    Storage(StorageError),
    #[error("read source: {0}")]
    Source(#[source] io::Error),
    #[error("object \"{key}\": {source}")]
    Stream {
        key: Key,
        #[source]
        source: StreamError,
    },
    #[error("object \"{key}\" is not a valid walvault object: {reason}")]
    Format { key: Key, reason: String },
    #[error("object \"{key}\" is corrupt: {reason}")]
    Integrity { key: Key, reason: String },
    #[error("write output: {0}")]
    Sink(#[source] io::Error),
}

impl From<StorageError> for ObjectError {
    /// An encrypted object that fails authentication is as corrupt as one
    /// whose checksum fails.
    fn from(e: StorageError) -> ObjectError {
        match e {
            StorageError::Corrupt { key, reason } => ObjectError::Integrity {
                key: Key::new(key.clone())
                    .unwrap_or_else(|_| Key::new("invalid-key").expect("valid")),
                reason,
            },
            other => ObjectError::Storage(other),
        }
    }
}

impl ObjectError {
    /// A stored object that cannot be trusted (as opposed to one that could
    /// not be reached).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            ObjectError::Format { .. } | ObjectError::Integrity { .. } | ObjectError::Stream { .. }
        )
    }
}

fn header(compressed: bool) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(HEADER_MAGIC);
    h[4] = ENVELOPE_VERSION;
    h[5] = if compressed {
        COMPRESSION_ZSTD
    } else {
        COMPRESSION_NONE
    };
    h[6] = ENCRYPTION_NONE;
    h
}

/// Parses a header, returning whether the body is compressed.
fn parse_header(key: &Key, h: &[u8]) -> Result<bool, ObjectError> {
    let format = |reason: String| ObjectError::Format {
        key: key.clone(),
        reason,
    };
    if h.len() < HEADER_LEN || &h[..4] != HEADER_MAGIC {
        return Err(format("no walvault header".to_string()));
    }
    if h[4] != ENVELOPE_VERSION {
        return Err(format(format!(
            "envelope version {} is newer than this walvault understands (1)\nHINT: upgrade walvault to read this repository",
            h[4]
        )));
    }
    if h[6] != ENCRYPTION_NONE {
        return Err(format(format!(
            "encryption method {} is not supported by this walvault\nHINT: upgrade walvault to read this repository",
            h[6]
        )));
    }
    // Flags and reserved bytes are zero in version 1. A later version
    // that gives them a meaning bumps what a reader must understand, so a
    // version-1 reader refuses them rather than misread the body.
    if h[7] != 0 {
        return Err(format(format!(
            "envelope flags {:#04x} are not understood by this walvault\nHINT: upgrade walvault to read this repository",
            h[7]
        )));
    }
    if h[8..HEADER_LEN].iter().any(|&b| b != 0) {
        return Err(format(
            "reserved envelope header bytes are set (written by a newer walvault, or damaged)\nHINT: upgrade walvault to read this repository".to_string(),
        ));
    }
    match h[5] {
        COMPRESSION_NONE => Ok(false),
        COMPRESSION_ZSTD => Ok(true),
        other => Err(format(format!("unknown compression method {other}"))),
    }
}

fn trailer(raw_size: u64, body_size: u64, checksum: &Checksum) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..4].copy_from_slice(TRAILER_MAGIC);
    t[8..16].copy_from_slice(&raw_size.to_le_bytes());
    t[16..24].copy_from_slice(&body_size.to_le_bytes());
    t[24..56].copy_from_slice(&checksum.0);
    t
}

struct Trailer {
    raw_size: u64,
    body_size: u64,
    checksum: Checksum,
}

fn parse_trailer(key: &Key, t: &[u8]) -> Result<Trailer, ObjectError> {
    if t.len() != TRAILER_LEN || &t[..4] != TRAILER_MAGIC {
        return Err(ObjectError::Integrity {
            key: key.clone(),
            reason: "the trailer is missing or damaged (truncated object?)".to_string(),
        });
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&t[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if t[4..8].iter().any(|&b| b != 0) {
        return Err(ObjectError::Format {
            key: key.clone(),
            reason: "reserved envelope trailer bytes are set (written by a newer walvault, or damaged)\nHINT: upgrade walvault to read this repository".to_string(),
        });
    }
    let mut sum = [0u8; 32];
    sum.copy_from_slice(&t[24..56]);
    Ok(Trailer {
        raw_size: u64_at(8),
        body_size: u64_at(16),
        checksum: Checksum(sum),
    })
}

/// Reads from `src` until `buf` is full or the source ends; returns the
/// number of bytes read.
async fn fill<R: AsyncRead + Unpin + ?Sized>(src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = src.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Streams `src` into a new object at `key`: checksum, compress, store.
/// Memory stays at a few chunks whatever the size. The object is visible
/// only if this returns `Ok`; with [`PutMode::Create`] an existing object
/// gives [`StorageError::AlreadyExists`] (wrapped) and stays untouched.
pub async fn write_object<R: AsyncRead + Unpin + ?Sized>(
    store: &dyn ObjectStore,
    key: &Key,
    mode: PutMode,
    src: &mut R,
    compress: CompressSettings,
) -> Result<ObjectInfo, ObjectError> {
    write_object_unless(store, key, mode, src, compress, &|| false)
        .await
        .map(|kept| kept.expect("never discarded"))
}

/// Bounds the work of a process that writes many objects at once (the
/// asynchronous archive worker): how many are compressed at once, and how
/// much memory their compression and their buffered bodies hold.
///
/// An object's put first waits for its worst case of memory (zstd's
/// context and window, the step buffers and, for a writer that keeps the
/// body until it sends it, the bound of the whole compressed body), then
/// for a compression slot. As it compresses, the reservation shrinks to
/// what the writer holds plus the bound of the input left; when
/// compression ends it gives back the slot and all but what its writer
/// still holds, the rest once the put is done.
/// A put never waits for memory while it holds some, and one that holds
/// a slot waits for nothing but its own progress, so puts cannot wait on
/// each other in a ring. A worst case above the whole budget takes all of
/// it.
pub struct Pacing {
    cpu: tokio::sync::Semaphore,
    memory: tokio::sync::Semaphore,
    memory_kib: u32,
}

impl Pacing {
    /// `compressions` at once, within `memory_bytes`.
    pub fn new(compressions: usize, memory_bytes: usize) -> Pacing {
        let memory_kib = u32::try_from(memory_bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        Pacing {
            cpu: tokio::sync::Semaphore::new(compressions.max(1)),
            memory: tokio::sync::Semaphore::new(memory_kib as usize),
            memory_kib,
        }
    }

    /// Waits for `bytes` of memory (at most the whole budget), then for a
    /// compression slot.
    pub async fn start(&self, bytes: usize) -> Ticket<'_> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.memory_kib);
        self.memory
            .acquire_many(kib)
            .await
            .expect("the semaphore is never closed")
            .forget();
        let mut ticket = Ticket {
            pacing: self,
            cpu: None,
            kib,
        };
        ticket.cpu = Some(
            self.cpu
                .acquire()
                .await
                .expect("the semaphore is never closed"),
        );
        ticket
    }

    /// Compression slots free now.
    pub fn free_compressions(&self) -> usize {
        self.cpu.available_permits()
    }

    /// Memory free now, in bytes.
    pub fn free_bytes(&self) -> usize {
        self.memory.available_permits() * 1024
    }
}

/// One put's share of a [`Pacing`]: given back when dropped.
pub struct Ticket<'a> {
    pacing: &'a Pacing,
    cpu: Option<tokio::sync::SemaphorePermit<'a>>,
    kib: u32,
}

impl Ticket<'_> {
    /// Gives back what is reserved beyond `bytes` (never takes more): a
    /// put whose worst case has shrunk as it went.
    fn shrink_to(&mut self, bytes: usize) {
        let keep = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.kib);
        self.pacing.memory.add_permits((self.kib - keep) as usize);
        self.kib = keep;
    }

    /// Compression is over: gives back the slot and the memory beyond
    /// `held` bytes (what the writer still keeps).
    fn compressed(&mut self, held: Option<usize>) {
        self.cpu = None;
        self.shrink_to(held.unwrap_or(0));
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.pacing.memory.add_permits(self.kib as usize);
    }
}

/// What compressing takes while a put runs, beyond a body its writer
/// keeps: zstd's context with its window ([`context_bytes`]: about 3.6
/// MiB at level 3, 80 MiB at level 19) and the step buffers. With zstd's
/// own threads (`compress_threads`), each holding buffers of several
/// windows, there is no bound here: such a put takes the whole budget.
pub fn working_bytes(compress: CompressSettings) -> usize {
    if compress.level == 0 {
        2 * CHUNK_BYTES
    } else if compress.workers > 0 {
        usize::MAX
    } else {
        context_bytes(compress.level) + 3 * CHUNK_BYTES
    }
}

/// The largest body `len` raw bytes make: zstd never makes its output
/// more than 1/256 larger than the input, encryption adds 16 bytes in
/// 64 KiB, and the header and trailer are fixed.
fn body_bound(len: u64) -> usize {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    len.saturating_add(len / 128)
        .saturating_add(HEADER_LEN + TRAILER_LEN + (64 << 10))
}

/// The most memory a put of `len` raw bytes holds while it compresses
/// (the [`Pacing`] reservation): [`working_bytes`] and, for a writer that
/// keeps the body until it sends it (`holds_body`), the whole body.
pub fn worst_case_bytes(len: u64, compress: CompressSettings, holds_body: bool) -> usize {
    let body = if holds_body { body_bound(len) } else { 0 };
    working_bytes(compress).saturating_add(body)
}

/// The most one step of at most [`CHUNK_BYTES`] of input adds to the
/// compressed output, with a margin: zstd's bound for the step (1/128
/// over), a block it may still hold from the step before (128 KiB), and
/// the room `Compressor` makes before each call to zstd (128 KiB).
const STEP_ROOM: usize = CHUNK_BYTES + CHUNK_BYTES / 2;

/// The capacity of a chunk of compressed output. A chunk is handed over
/// once another step might not fit ([`Body::flush_full`]), so it does
/// not grow: what it touches stays under [`STEP_ROOM`] plus half a MiB.
/// With zstd's threads (`compress_threads`) it can: zstd hands over
/// whole jobs of several MiB at once, and the spares refuse the grown
/// buffer.
const CHUNK_CAPACITY: usize = 2 * CHUNK_BYTES;

/// How many spare chunks are kept for reuse, at most.
const SPARE_CHUNKS_MAX: usize = 4;

/// Chunks of compressed output that writers are done with, kept for the
/// next body instead of freed. The allocator hands large freed blocks
/// back to the kernel, so an async worker pushing file after file got
/// every chunk as fresh pages: on less compressible WAL a page fault for
/// each 4 KiB it stored. At most [`SPARE_CHUNKS_MAX`] wait here, each of
/// [`CHUNK_CAPACITY`] (2 MiB), so an idle process keeps 8 MiB at most.
static SPARE_CHUNKS: Spares = Spares::new(SPARE_CHUNKS_MAX);

/// A bounded stack of empty output buffers.
struct Spares {
    buffers: std::sync::Mutex<Vec<Vec<u8>>>,
    max: usize,
}

impl Spares {
    const fn new(max: usize) -> Spares {
        Spares {
            buffers: std::sync::Mutex::new(Vec::new()),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // Nothing panics while the lock is held.
        self.buffers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An empty buffer for compressed output: a spare one if there is one.
    fn take(&self) -> Vec<u8> {
        let spare = self.lock().pop();
        spare.unwrap_or_else(|| Vec::with_capacity(CHUNK_CAPACITY))
    }

    /// Keeps `buf`, emptied, unless there are enough spares or it grew
    /// past a chunk's capacity.
    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() > CHUNK_CAPACITY {
            return;
        }
        buf.clear();
        let mut buffers = self.lock();
        if buffers.len() < self.max {
            buffers.push(buf);
        }
    }
}

/// An empty buffer for compressed output: a spare one if there is one.
fn spare_chunk() -> Vec<u8> {
    SPARE_CHUNKS.take()
}

/// A chunk handed to a writer as `Bytes`; once the writer and every
/// clone or slice of it are done, its buffer goes back to its spares.
struct SpareChunk {
    buf: Vec<u8>,
    spares: &'static Spares,
}

impl SpareChunk {
    fn bytes(buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(SpareChunk {
            buf,
            spares: &SPARE_CHUNKS,
        })
    }
}

impl AsRef<[u8]> for SpareChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for SpareChunk {
    fn drop(&mut self) {
        self.spares.give(std::mem::take(&mut self.buf));
    }
}

/// The body of an object on its way to a writer: compressed output is
/// handed over in chunks of ½ to 2 MiB, and the trailer ends it.
struct Body {
    out: Vec<u8>,
    size: u64,
}

impl Body {
    fn new() -> Body {
        Body {
            out: spare_chunk(),
            size: 0,
        }
    }

    /// Where compressed output goes.
    fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Hands the chunk to the writer if the next step (at most
    /// [`CHUNK_BYTES`] of input) might not fit in it.
    async fn flush_full(&mut self, writer: &mut dyn ObjectWriter) -> Result<(), ObjectError> {
        if self.out.len() > CHUNK_CAPACITY - STEP_ROOM {
            self.size += self.out.len() as u64;
            let chunk = std::mem::replace(&mut self.out, spare_chunk());
            writer.write(SpareChunk::bytes(chunk)).await?;
        }
        Ok(())
    }

    /// Writes the rest and the trailer for the raw bytes `hasher` saw.
    async fn end(
        mut self,
        writer: &mut dyn ObjectWriter,
        hasher: Hasher,
    ) -> Result<ObjectInfo, ObjectError> {
        self.size += self.out.len() as u64;
        let checksum = hasher.finish();
        self.out
            .extend_from_slice(&trailer(hasher.len(), self.size, &checksum));
        writer.write(SpareChunk::bytes(self.out)).await?;
        Ok(ObjectInfo {
            raw_size: hasher.len(),
            checksum,
            stored_size: HEADER_LEN as u64 + self.size + TRAILER_LEN as u64,
        })
    }
}

/// Commits a put whose body was written (`Ok`), unless `discard()` says
/// otherwise; aborts it on any error.
async fn settle(
    writer: Box<dyn ObjectWriter>,
    written: Result<ObjectInfo, ObjectError>,
    discard: &(dyn Fn() -> bool + Sync),
) -> Result<Option<ObjectInfo>, ObjectError> {
    match written {
        Ok(_) if discard() => {
            writer.abort().await;
            Ok(None)
        }
        Ok(info) => {
            writer.commit().await?;
            Ok(Some(info))
        }
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

/// [`write_object`], except that when `discard()` answers yes once the
/// source is read to its end, the put is aborted (the object never
/// appears) and `None` is returned: a block delta that turned out empty
/// costs no object to create and delete.
pub async fn write_object_unless<R: AsyncRead + Unpin + ?Sized>(
    store: &dyn ObjectStore,
    key: &Key,
    mode: PutMode,
    src: &mut R,
    compress: CompressSettings,
    discard: &(dyn Fn() -> bool + Sync),
) -> Result<Option<ObjectInfo>, ObjectError> {
    let mut writer = store.put(key, mode).await?;
    let written = stream_body(key, writer.as_mut(), src, compress).await;
    settle(writer, written, discard).await
}

/// Streams `src` through the compressor into `writer` (not committed).
async fn stream_body<R: AsyncRead + Unpin + ?Sized>(
    key: &Key,
    writer: &mut dyn ObjectWriter,
    src: &mut R,
    compress: CompressSettings,
) -> Result<ObjectInfo, ObjectError> {
    let stream_err = |source| ObjectError::Stream {
        key: key.clone(),
        source,
    };
    let mut compressor = Compressor::new(compress.level, compress.workers).map_err(stream_err)?;
    let head = header(compressor.is_compressing());
    writer.write(Bytes::copy_from_slice(&head)).await?;
    let mut hasher = Hasher::new();
    let mut input = vec![0u8; CHUNK_BYTES];
    let mut body = Body::new();
    loop {
        let n = fill(src, &mut input).await.map_err(ObjectError::Source)?;
        if n == 0 {
            break;
        }
        hasher.update(&input[..n]);
        compressor
            .compress(&input[..n], body.out())
            .map_err(stream_err)?;
        body.flush_full(writer).await?;
    }
    compressor.finish(body.out()).map_err(stream_err)?;
    drop((compressor, input));
    body.end(writer, hasher).await
}

/// [`write_object`] for a whole regular file (a WAL segment), read through
/// a read-only mapping and compressed in place ([`InPlaceCompressor`]):
/// no copy into a read buffer or into zstd's window, and zstd's faster
/// path for a window in one piece. Memory stays bounded as with
/// streaming: pages behind zstd's window are released as it goes.
///
/// This assumes the file does not change while it is read, which holds
/// for a WAL segment PostgreSQL has finished: it never rewrites or
/// truncates one it has marked ready. A write that breaks the assumption
/// is caught (size, modification and change times are compared after
/// reading) and the put fails; a truncation would end the process with
/// SIGBUS. Either way nothing is acknowledged. Where a mapping is not
/// possible (an empty file, a file
/// system that refuses it), the level is 0 or zstd runs on extra threads,
/// the file is streamed instead. With `pacing`, the put waits for its
/// share of it before it compresses (see [`Pacing`]).
pub async fn write_file_object(
    store: &dyn ObjectStore,
    key: &Key,
    mode: PutMode,
    file: std::fs::File,
    compress: CompressSettings,
    pacing: Option<&Pacing>,
) -> Result<ObjectInfo, ObjectError> {
    let before = file.metadata().map_err(ObjectError::Source)?;
    let len = before.len();
    let map = if len == 0 || compress.level == 0 || compress.workers > 0 {
        None
    } else {
        // SAFETY: a read-only mapping, dropped before this returns. The
        // file is assumed not to change meanwhile (see above), and a
        // change is detected after reading.
        unsafe { memmap2::MmapOptions::new().len(len as usize).map(&file) }.ok()
    };
    let mut writer = store.put(key, mode).await?;
    // Only a paced put (the async worker) needs its working size.
    let working = pacing.map_or(0, |_| working_bytes(compress));
    let mut ticket = match pacing {
        Some(p) => {
            let worst = worst_case_bytes(len, compress, writer.held_bytes().is_some());
            Some(p.start(worst).await)
        }
        None => None,
    };
    let Some(map) = map else {
        let mut src = tokio::fs::File::from_std(file);
        let written = stream_body(key, writer.as_mut(), &mut src, compress).await;
        // Compression is over, whether it worked or not.
        if let Some(ticket) = ticket.as_mut() {
            ticket.compressed(writer.held_bytes());
        }
        let settled = settle(writer, written, &|| false).await;
        drop(ticket);
        return settled.map(|kept| kept.expect("never discarded"));
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    let data: &[u8] = &map;
    let stream_err = |source| ObjectError::Stream {
        key: key.clone(),
        source,
    };
    let written = async {
        let mut compressor = InPlaceCompressor::new(compress.level, data).map_err(stream_err)?;
        writer.write(Bytes::copy_from_slice(&header(true))).await?;
        let mut hasher = Hasher::new();
        let mut body = Body::new();
        let mut released = 0usize;
        let mut end = 0;
        while end < data.len() {
            let start = end;
            end = (end + CHUNK_BYTES).min(data.len());
            hasher.update(&data[start..end]);
            compressor
                .compress_to(end, body.out())
                .map_err(stream_err)?;
            // Pages behind zstd's window are released (with 1 MiB of
            // slack for its current block). Were zstd to read one again,
            // it would come back from the page cache: this bounds memory,
            // not correctness.
            let keep = compressor.window_bytes() + CHUNK_BYTES;
            let behind = compressor.position().saturating_sub(keep) & !0xFFFF;
            if behind > released {
                // SAFETY: the mapping is shared and read-only: released
                // pages read back as the file's bytes, unchanged.
                unsafe {
                    let _ = map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        released,
                        behind - released,
                    );
                }
                released = behind;
            }
            body.flush_full(writer.as_mut()).await?;
            // The worst case shrinks as the body takes shape: what is held
            // plus the bound of what is left to compress.
            if let (Some(ticket), Some(held)) = (ticket.as_mut(), writer.held_bytes()) {
                let rest = body_bound((data.len() - end) as u64);
                ticket.shrink_to(working.saturating_add(held).saturating_add(rest));
            }
            // A local write returns at once: let the runtime's other
            // tasks (uploads, timers) run between steps.
            tokio::task::yield_now().await;
        }
        compressor.finish(body.out()).map_err(stream_err)?;
        // A file written to while it was read (not a finished segment) is
        // not stored: what was read may mix old and new bytes.
        let after = file.metadata().map_err(ObjectError::Source)?;
        if after.len() != len
            || after.modified().ok() != before.modified().ok()
            || (after.ctime(), after.ctime_nsec()) != (before.ctime(), before.ctime_nsec())
        {
            return Err(ObjectError::Source(io::Error::other(
                "the file changed while it was read, so it was not stored (PostgreSQL never writes a finished WAL file: check that nothing else writes to it; the next attempt reads it again)",
            )));
        }
        body.end(writer.as_mut(), hasher).await
    }
    .await;
    // Nothing of the file is needed while the put is made durable, and
    // compression is over.
    drop(map);
    if let Some(ticket) = ticket.as_mut() {
        ticket.compressed(writer.held_bytes());
    }
    let settled = settle(writer, written, &|| false).await;
    drop(ticket);
    settled.map(|kept| kept.expect("never discarded"))
}

/// A read failure: a chunk of an encrypted object that fails
/// authentication is corruption, anything else a storage failure.
fn read_error(key: &Key, e: io::Error) -> ObjectError {
    if let Some(c) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<crate::storage::crypt::CorruptChunk>())
    {
        return ObjectError::Integrity {
            key: key.clone(),
            reason: c.0.clone(),
        };
    }
    ObjectError::Storage(StorageError::Io {
        op: "read",
        key: key.to_string(),
        source: e,
    })
}

/// Reads a small object (a manifest, a summary, a block map) whole into
/// memory, checked as [`read_object`] checks it.
pub async fn read_to_vec(
    store: &dyn ObjectStore,
    key: &Key,
) -> Result<(Vec<u8>, ObjectInfo), ObjectError> {
    let mut out = Vec::new();
    let info = read_object(store, key, &mut |piece: &[u8]| {
        out.extend_from_slice(piece);
        Ok(())
    })
    .await?;
    Ok((out, info))
}

/// Streams the object at `key` to `sink`, decompressed, and checks its size
/// and checksum against the trailer. `sink` may have received bytes even
/// when this fails: write to a temporary place and publish only on `Ok`.
pub async fn read_object(
    store: &dyn ObjectStore,
    key: &Key,
    sink: &mut (dyn FnMut(&[u8]) -> io::Result<()> + Send),
) -> Result<ObjectInfo, ObjectError> {
    let src = store.get(key).await?;
    read_opened(src, key, sink).await
}

/// [`read_object`] of an object already opened with `ObjectStore::get`
/// (so a caller can learn that it is missing before preparing a sink).
pub async fn read_opened(
    mut src: crate::storage::ObjectReader,
    key: &Key,
    sink: &mut (dyn FnMut(&[u8]) -> io::Result<()> + Send),
) -> Result<ObjectInfo, ObjectError> {
    let read_err = |e: io::Error| read_error(key, e);
    let mut check = EnvelopeCheck::new(key);
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = src.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            break;
        }
        check.feed(&buf[..n], sink)?;
    }
    check.finish()
}

/// Checks an envelope fed in pieces, as it streams past: header, body
/// (decompressed into a sink and hashed) and trailer (size and checksum).
/// Memory stays at one trailer's length plus the decompressor's window.
struct EnvelopeCheck<'k> {
    key: &'k Key,
    head: Vec<u8>,
    decompressor: Option<Decompressor>,
    hasher: Hasher,
    /// The last TRAILER_LEN bytes seen are held back: they may be the
    /// trailer.
    tail: Vec<u8>,
    body_size: u64,
}

impl<'k> EnvelopeCheck<'k> {
    fn new(key: &'k Key) -> EnvelopeCheck<'k> {
        EnvelopeCheck {
            key,
            head: Vec::with_capacity(HEADER_LEN),
            decompressor: None,
            hasher: Hasher::new(),
            tail: Vec::with_capacity(2 * TRAILER_LEN),
            body_size: 0,
        }
    }

    fn feed(
        &mut self,
        mut data: &[u8],
        sink: &mut (dyn FnMut(&[u8]) -> io::Result<()> + Send),
    ) -> Result<(), ObjectError> {
        if self.decompressor.is_none() {
            let take = (HEADER_LEN - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.head.len() < HEADER_LEN {
                return Ok(());
            }
            let compressed = parse_header(self.key, &self.head)?;
            self.decompressor =
                Some(
                    Decompressor::new(compressed).map_err(|source| ObjectError::Stream {
                        key: self.key.clone(),
                        source,
                    })?,
                );
        }
        if data.is_empty() {
            return Ok(());
        }
        if data.len() >= TRAILER_LEN {
            let tail = std::mem::take(&mut self.tail);
            self.body(&tail, sink)?;
            self.body(&data[..data.len() - TRAILER_LEN], sink)?;
            self.tail
                .extend_from_slice(&data[data.len() - TRAILER_LEN..]);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > TRAILER_LEN {
                let feed = self.tail.len() - TRAILER_LEN;
                let front: Vec<u8> = self.tail.drain(..feed).collect();
                self.body(&front, sink)?;
            }
        }
        Ok(())
    }

    fn body(
        &mut self,
        piece: &[u8],
        sink: &mut (dyn FnMut(&[u8]) -> io::Result<()> + Send),
    ) -> Result<(), ObjectError> {
        if piece.is_empty() {
            return Ok(());
        }
        self.body_size += piece.len() as u64;
        let hasher = &mut self.hasher;
        self.decompressor
            .as_mut()
            .expect("header parsed")
            .decompress(piece, |out| {
                hasher.update(out);
                sink(out)
            })
            .map_err(|source| match source {
                StreamError::Sink(e) => ObjectError::Sink(e),
                source => ObjectError::Stream {
                    key: self.key.clone(),
                    source,
                },
            })
    }

    fn finish(self) -> Result<ObjectInfo, ObjectError> {
        let key = self.key;
        let Some(decompressor) = &self.decompressor else {
            // Too short for a header: parsing says what is wrong.
            parse_header(key, &self.head)?;
            unreachable!("a short header never parses");
        };
        let trailer = parse_trailer(key, &self.tail)?;
        let integrity = |reason: String| ObjectError::Integrity {
            key: key.clone(),
            reason,
        };
        if trailer.body_size != self.body_size {
            return Err(integrity(format!(
                "stored body is {} bytes, the trailer says {}",
                self.body_size, trailer.body_size
            )));
        }
        decompressor
            .finish()
            .map_err(|source| ObjectError::Stream {
                key: key.clone(),
                source,
            })?;
        if self.hasher.len() != trailer.raw_size {
            return Err(integrity(format!(
                "content is {} bytes, the trailer says {}",
                self.hasher.len(),
                trailer.raw_size
            )));
        }
        let actual = self.hasher.finish();
        if actual != trailer.checksum {
            return Err(integrity(format!(
                "checksum mismatch: stored {}, computed {}",
                trailer.checksum, actual
            )));
        }
        Ok(ObjectInfo {
            raw_size: trailer.raw_size,
            checksum: trailer.checksum,
            stored_size: HEADER_LEN as u64 + self.body_size + TRAILER_LEN as u64,
        })
    }
}

/// Copies the object at `key` from `from` to `to`, create-only, checking
/// the whole envelope as it streams past (header, body and checksum); the
/// copy becomes visible only when every check passed. The envelope is
/// copied as stored (no recompression); each store's own layers (such as
/// encryption with its own key) apply on each side. An object already at
/// `key` in `to` gives [`StorageError::AlreadyExists`] and stays untouched.
pub async fn copy_object(
    from: &dyn ObjectStore,
    to: &dyn ObjectStore,
    key: &Key,
    mode: PutMode,
) -> Result<ObjectInfo, ObjectError> {
    let mut src = from.get(key).await?;
    let mut writer = to.put(key, mode).await?;
    let result = async {
        let mut check = EnvelopeCheck::new(key);
        let mut discard = |_: &[u8]| Ok(());
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = src.read(&mut buf).await.map_err(|e| read_error(key, e))?;
            if n == 0 {
                break;
            }
            check.feed(&buf[..n], &mut discard)?;
            writer.write(Bytes::copy_from_slice(&buf[..n])).await?;
        }
        check.finish()
    }
    .await;
    match result {
        Ok(info) => {
            writer.commit().await?;
            Ok(info)
        }
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

/// Reads what an object's trailer records, without reading its body (a
/// `head` and one ranged read).
pub async fn read_info(store: &dyn ObjectStore, key: &Key) -> Result<ObjectInfo, ObjectError> {
    let meta = store.head(key).await?;
    if meta.size_bytes < (HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(ObjectError::Integrity {
            key: key.clone(),
            reason: format!("object is only {} bytes", meta.size_bytes),
        });
    }
    let head = store.get_range(key, 0, HEADER_LEN as u64).await?;
    parse_header(key, &head)?;
    let tail = store
        .get_range(
            key,
            meta.size_bytes - TRAILER_LEN as u64,
            TRAILER_LEN as u64,
        )
        .await?;
    let trailer = parse_trailer(key, &tail)?;
    if HEADER_LEN as u64 + trailer.body_size + TRAILER_LEN as u64 != meta.size_bytes {
        return Err(ObjectError::Integrity {
            key: key.clone(),
            reason: format!(
                "object is {} bytes, the trailer implies {}",
                meta.size_bytes,
                HEADER_LEN as u64 + trailer.body_size + TRAILER_LEN as u64
            ),
        });
    }
    Ok(ObjectInfo {
        raw_size: trailer.raw_size,
        checksum: trailer.checksum,
        stored_size: meta.size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    async fn store_bytes(store: &MemoryStore, key: &Key, data: &[u8], level: i32) -> ObjectInfo {
        let mut src = data;
        write_object(
            store,
            key,
            PutMode::Create,
            &mut src,
            CompressSettings { level, workers: 0 },
        )
        .await
        .expect("write object")
    }

    async fn load(store: &MemoryStore, key: &Key) -> Result<(Vec<u8>, ObjectInfo), ObjectError> {
        read_to_vec(store, key).await
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 31) ^ (i >> 9)) as u8).collect()
    }

    /// A put discarded once its source is read never appears; one kept
    /// reads back whole.
    #[tokio::test]
    async fn a_discarded_put_leaves_no_object() {
        let store = MemoryStore::new();
        let data = sample(300_000);
        for (name, discard) in [("gone", true), ("kept", false)] {
            let key = Key::new(format!("obj/{name}")).unwrap();
            let mut src = &data[..];
            let info = write_object_unless(
                &store,
                &key,
                PutMode::CreateBatched,
                &mut src,
                CompressSettings::default(),
                &|| discard,
            )
            .await
            .unwrap();
            assert_eq!(info.is_none(), discard);
            match store.head(&key).await {
                Err(StorageError::NotFound { .. }) => assert!(discard),
                Ok(_) => assert_eq!(load(&store, &key).await.unwrap().0, data),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// A file written through its mapping reads back byte for byte, with
    /// the checksum streaming gives; empty files, level 0 and zstd threads
    /// take the streaming path. Compression holds a CPU permit and gives
    /// it back before the put is committed.
    #[tokio::test]
    async fn a_mapped_file_round_trips_as_streaming_would_store_it() {
        let store = MemoryStore::new();
        let dir = tempfile::tempdir().unwrap();
        let pacing = Pacing::new(1, 64 << 20);
        for (i, (level, workers, len)) in [
            (3, 0, 16 << 20),
            (3, 0, 5_000_001),
            (1, 0, CHUNK_BYTES),
            (19, 0, 70_000),
            (0, 0, 300_000),
            (3, 2, 3_000_000),
            (3, 0, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let data = sample(len);
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, &data).unwrap();
            let settings = CompressSettings { level, workers };
            let key = Key::new(format!("mapped/{i}")).unwrap();
            let info = write_file_object(
                &store,
                &key,
                PutMode::Create,
                std::fs::File::open(&path).unwrap(),
                settings,
                Some(&pacing),
            )
            .await
            .unwrap();
            assert_eq!(pacing.free_compressions(), 1, "slot given back");
            assert_eq!(pacing.free_bytes(), 64 << 20, "memory given back");
            let (back, read_info) = load(&store, &key).await.unwrap();
            assert!(back == data, "case {i}: bytes differ");
            assert_eq!(info, read_info);
            assert_eq!(info.checksum, Checksum::of(&data));
            let streamed = Key::new(format!("streamed/{i}")).unwrap();
            let streamed_info = store_bytes(&store, &streamed, &data, level).await;
            assert_eq!(info.raw_size, streamed_info.raw_size);
            assert_eq!(info.checksum, streamed_info.checksum);
            // Create-only, as streaming: the object is never replaced.
            let again = write_file_object(
                &store,
                &key,
                PutMode::Create,
                std::fs::File::open(&path).unwrap(),
                settings,
                None,
            )
            .await;
            assert!(
                matches!(
                    again,
                    Err(ObjectError::Storage(StorageError::AlreadyExists { .. }))
                ),
                "case {i}: {again:?}"
            );
        }
    }

    /// A put of the file at `path` (opened now) under `key`, paced by
    /// `pacing`, in a task of its own.
    fn spawn_paced_put<S: ObjectStore + 'static>(
        store: std::sync::Arc<S>,
        pacing: std::sync::Arc<Pacing>,
        path: &std::path::Path,
        key: Key,
    ) -> tokio::task::JoinHandle<Result<ObjectInfo, ObjectError>> {
        let file = std::fs::File::open(path).unwrap();
        tokio::spawn(async move {
            write_file_object(
                store.as_ref(),
                &key,
                PutMode::Create,
                file,
                CompressSettings::default(),
                Some(&pacing),
            )
            .await
        })
    }

    /// A file written to while it is read is refused and leaves no
    /// object: the write lands while the put waits for its CPU permit,
    /// after the file was looked at and mapped.
    #[tokio::test]
    async fn a_file_that_changes_while_read_is_not_stored() {
        use std::os::unix::fs::FileExt;
        let store = std::sync::Arc::new(MemoryStore::new());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        std::fs::write(&path, sample(3 << 20)).unwrap();
        let pacing = std::sync::Arc::new(Pacing::new(1, 64 << 20));
        let held = pacing.start(0).await;
        let key = Key::new("changed/segment").unwrap();
        let put = spawn_paced_put(store.clone(), pacing.clone(), &path, key.clone());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"rewritten", 1 << 20)
            .unwrap();
        drop(held);
        let err = put.await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("changed while it was read"),
            "{err}"
        );
        assert!(matches!(
            read_info(store.as_ref(), &key).await,
            Err(ObjectError::Storage(StorageError::NotFound { .. }))
        ));
    }

    /// Whether a future has yet to finish (polled once).
    fn waits<F: std::future::Future + Unpin>(f: &mut F) -> bool {
        futures_util::FutureExt::now_or_never(f).is_none()
    }

    /// Output that hardly compresses (random bytes, which zstd stores
    /// raw, and bytes of 128 values, stored at 7/8, so that two steps'
    /// output stay in one chunk) never takes a chunk past its capacity,
    /// streamed, stored (level 0) or compressed in place, up to the end
    /// of the frame.
    #[tokio::test]
    async fn chunks_of_incompressible_output_never_grow() {
        let store = MemoryStore::new();
        let key = Key::new("obj/noise").unwrap();
        fn check(body: &Body) {
            assert!(body.out.capacity() <= CHUNK_CAPACITY);
        }
        /// One step of compression, checked, then the chunk handed over
        /// if the next step might not fit.
        async fn step_and_flush(
            body: &mut Body,
            writer: &mut dyn ObjectWriter,
            compress: impl FnOnce(&mut Vec<u8>),
        ) {
            compress(body.out());
            check(body);
            body.flush_full(writer).await.unwrap();
        }
        for values in [256u64, 128] {
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let data: Vec<u8> = (0..5 * CHUNK_BYTES + 12_345)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % values) as u8
                })
                .collect();
            for level in [0, 3] {
                let mut writer = store.put(&key, PutMode::Overwrite).await.unwrap();
                let mut compressor = Compressor::new(level, 0).unwrap();
                let mut body = Body::new();
                for step in data.chunks(CHUNK_BYTES) {
                    let compress = |out: &mut Vec<u8>| compressor.compress(step, out).unwrap();
                    step_and_flush(&mut body, writer.as_mut(), compress).await;
                }
                compressor.finish(body.out()).unwrap();
                check(&body);
                writer.abort().await;
            }
            let mut writer = store.put(&key, PutMode::Overwrite).await.unwrap();
            let mut compressor = InPlaceCompressor::new(3, &data).unwrap();
            let mut body = Body::new();
            let mut end = 0;
            while end < data.len() {
                end = (end + CHUNK_BYTES).min(data.len());
                let compress = |out: &mut Vec<u8>| compressor.compress_to(end, out).unwrap();
                step_and_flush(&mut body, writer.as_mut(), compress).await;
            }
            compressor.finish(body.out()).unwrap();
            check(&body);
            writer.abort().await;
        }
    }

    /// A chunk's buffer comes back empty for the next body once every
    /// `Bytes` of it is gone, never sooner; the spares stay within their
    /// bound and refuse a buffer that grew large. (A pool of the test's
    /// own: the process-wide one is shared with the tests running beside.)
    #[test]
    fn spare_chunks_come_back_empty_only_when_done_and_stay_bounded() {
        let spares: &'static Spares = Box::leak(Box::new(Spares::new(2)));
        let chunk = |buf: Vec<u8>| Bytes::from_owner(SpareChunk { buf, spares });

        let mut buf = spares.take();
        buf.extend_from_slice(b"compressed bytes");
        let ptr = buf.as_ptr();
        let whole = chunk(buf);
        let tail = whole.slice(11..);
        drop(whole);
        // A slice still holds the buffer: it is not a spare yet.
        assert!(spares.lock().is_empty());
        let mut other = spares.take();
        assert_ne!(other.as_ptr(), ptr);
        other.extend_from_slice(b"other bytes");
        assert_eq!(&tail[..], b"bytes");
        drop(tail);
        let again = spares.take();
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());

        for _ in 0..5 {
            drop(chunk(Vec::with_capacity(CHUNK_CAPACITY)));
        }
        assert_eq!(spares.lock().len(), 2);
        spares.lock().clear();
        drop(chunk(Vec::with_capacity(CHUNK_CAPACITY + 1)));
        assert!(spares.lock().is_empty());
        drop(chunk(again));
        assert_eq!(spares.lock().len(), 1);
        // What README says the worker's spares hold at most.
        assert!(SPARE_CHUNKS.max * CHUNK_CAPACITY <= 8 << 20);
    }

    /// A put waits for its worst case of memory, then for a slot; after
    /// compression it keeps only what its writer holds, and a worst case
    /// over the whole budget takes all of it.
    /// What README says a put reserves: about 7 MiB at level 3, the whole
    /// budget with zstd's threads, and the body's bound on top when the
    /// writer keeps it.
    #[test]
    fn worst_cases_are_what_readme_says() {
        let level3 = CompressSettings::default();
        let working = working_bytes(level3);
        assert!((6 << 20..8 << 20).contains(&working), "{working}");
        let threads = CompressSettings {
            level: 3,
            workers: 2,
        };
        assert_eq!(worst_case_bytes(16 << 20, threads, false), usize::MAX);
        let s3 = worst_case_bytes(16 << 20, level3, true);
        assert!((s3 - working) > 16 << 20 && s3 - working < 17 << 20, "{s3}");
        assert!(
            working_bytes(CompressSettings {
                level: 19,
                workers: 0
            }) > 32 << 20
        );
    }

    #[tokio::test]
    async fn pacing_bounds_memory_and_compressions() {
        use std::time::Duration;
        let pacing = Pacing::new(2, 10 << 20);
        let mut first = pacing.start(6 << 20).await;
        assert_eq!(pacing.free_bytes(), 4 << 20);
        let mut second = Box::pin(pacing.start(6 << 20));
        assert!(waits(&mut second), "6 + 6 MiB is over 10");
        first.compressed(Some(3 << 20));
        assert_eq!(pacing.free_compressions(), 2, "the slot is back");
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("3 + 6 MiB fit");
        assert_eq!(pacing.free_bytes(), 1 << 20);
        let mut whole = Box::pin(pacing.start(1 << 40));
        assert!(waits(&mut whole));
        drop(first);
        assert!(waits(&mut whole), "the whole budget, not just what is free");
        drop(second);
        let mut whole = tokio::time::timeout(Duration::from_secs(5), whole)
            .await
            .expect("the whole budget is free");
        assert_eq!(pacing.free_bytes(), 0);
        // A writer that holds nothing (a local file) keeps nothing.
        whole.compressed(None);
        assert_eq!(pacing.free_bytes(), 10 << 20);
        drop(whole);
        assert_eq!(pacing.free_bytes(), 10 << 20);

        // Slots: with one, a second put waits for the first's compression.
        let pacing = Pacing::new(1, 10 << 20);
        let mut first = pacing.start(1 << 20).await;
        let mut second = Box::pin(pacing.start(1 << 20));
        assert!(waits(&mut second));
        first.compressed(Some(1 << 20));
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the slot was given back");
        drop((first, second));
        assert_eq!(
            (pacing.free_compressions(), pacing.free_bytes()),
            (1, 10 << 20)
        );
    }

    /// While a put's commit waits (an fsync, an upload's request), its
    /// compression slot is free and it keeps only what its writer holds:
    /// another put can compress meanwhile.
    #[tokio::test]
    async fn a_put_waiting_on_its_commit_holds_only_its_body() {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let store =
            std::sync::Arc::new(crate::storage::faulty::FaultyStore::new(MemoryStore::new()));
        store.gate_commits(gate.clone());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        std::fs::write(&path, sample(4 << 20)).unwrap();
        let budget = 64 << 20;
        let pacing = std::sync::Arc::new(Pacing::new(1, budget));
        let key = Key::new("gated/segment").unwrap();
        let put = spawn_paced_put(store.clone(), pacing.clone(), &path, key);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while pacing.free_compressions() == 0 || pacing.free_bytes() < budget / 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "compression never ended"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!put.is_finished(), "the commit waits for the gate");
        assert_eq!(pacing.free_compressions(), 1);
        let held = budget - pacing.free_bytes();
        assert!(
            held > 0 && held < 1 << 20,
            "holds its compressed body only: {held}"
        );
        gate.add_permits(1);
        let info = put.await.unwrap().unwrap();
        assert!(
            held as u64 >= info.stored_size,
            "{held} < {}",
            info.stored_size
        );
        assert_eq!(pacing.free_bytes(), budget);
    }

    /// Many puts at once through a writer that holds its body, with room
    /// for barely one worst case: all of them finish (no put waits on
    /// another in a ring), one at a time, and give everything back.
    #[tokio::test]
    async fn paced_puts_over_a_small_budget_all_finish() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let dir = tempfile::tempdir().unwrap();
        let len = 3 << 20;
        let settings = CompressSettings::default();
        let budget = worst_case_bytes(len as u64, settings, true) * 3 / 2;
        let pacing = std::sync::Arc::new(Pacing::new(4, budget));
        // Half of them do not compress: their bodies are the largest a
        // put can hold.
        let mut noise = vec![0u8; len];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let mut puts = Vec::new();
        for i in 0..8 {
            let path = dir.path().join(format!("f{i}"));
            let data = if i % 2 == 0 {
                sample(len)
            } else {
                noise.clone()
            };
            std::fs::write(&path, data).unwrap();
            let key = Key::new(format!("paced/{i}")).unwrap();
            let put = spawn_paced_put(store.clone(), pacing.clone(), &path, key.clone());
            puts.push((key, put));
        }
        let done = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            let mut done = Vec::new();
            for (key, put) in puts {
                done.push((key, put.await.unwrap().unwrap()));
            }
            done
        })
        .await
        .expect("every put finished");
        assert_eq!(done.len(), 8);
        let body_allowance = worst_case_bytes(len as u64, settings, true)
            - worst_case_bytes(len as u64, settings, false);
        for (key, info) in done {
            assert_eq!(load(store.as_ref(), &key).await.unwrap().0.len(), len);
            assert!(
                info.stored_size as usize <= body_allowance,
                "a body of {} bytes is over the {body_allowance} reserved for it",
                info.stored_size
            );
        }
        assert_eq!(pacing.free_bytes(), budget.div_ceil(1024) * 1024);
        assert_eq!(pacing.free_compressions(), 4);
    }

    #[tokio::test]
    async fn round_trip_compressed_and_plain() {
        let store = MemoryStore::new();
        for (level, len) in [
            (3, 3_500_000),
            (0, 100_000),
            (1, 0),
            (3, CHUNK_BYTES),
            (3, 17),
        ] {
            let key = Key::new(format!("obj/{level}-{len}")).unwrap();
            let data = sample(len);
            let info = store_bytes(&store, &key, &data, level).await;
            assert_eq!(info.raw_size, len as u64);
            assert_eq!(info.checksum, Checksum::of(&data));
            assert_eq!(store.head(&key).await.unwrap().size_bytes, info.stored_size);
            let (back, read) = load(&store, &key).await.unwrap();
            assert!(back == data);
            assert_eq!(read, info);
            assert_eq!(read_info(&store, &key).await.unwrap(), info);
        }
    }

    #[tokio::test]
    async fn every_flipped_byte_is_detected() {
        let store = MemoryStore::new();
        let key = Key::new("obj/flip").unwrap();
        let data = sample(300_000);
        store_bytes(&store, &key, &data, 3).await;
        let stored = store.get_bytes(&key).await.unwrap();
        // Flip a byte in the header, the body, and the trailer.
        for pos in [
            2,
            5,
            6,
            HEADER_LEN + 10,
            stored.len() / 2,
            stored.len() - 40,
            stored.len() - 1,
        ] {
            let mut bad = stored.to_vec();
            bad[pos] ^= 0x40;
            store.overwrite_raw(&key, Bytes::from(bad));
            let err = load(&store, &key)
                .await
                .expect_err("corruption must be detected");
            assert!(err.is_corruption(), "flip at {pos} gave {err}");
        }
    }

    #[tokio::test]
    async fn truncation_is_detected() {
        let store = MemoryStore::new();
        let key = Key::new("obj/trunc").unwrap();
        store_bytes(&store, &key, &sample(200_000), 3).await;
        let stored = store.get_bytes(&key).await.unwrap();
        for len in [0, 10, HEADER_LEN, stored.len() / 2, stored.len() - 1] {
            store.overwrite_raw(&key, stored.slice(..len));
            let err = load(&store, &key)
                .await
                .expect_err("truncation must be detected");
            assert!(err.is_corruption(), "truncated to {len}: {err}");
        }
    }

    #[tokio::test]
    async fn unknown_encryption_is_refused_clearly() {
        let store = MemoryStore::new();
        let key = Key::new("obj/enc").unwrap();
        store_bytes(&store, &key, b"secret", 3).await;
        let mut bytes = store.get_bytes(&key).await.unwrap().to_vec();
        bytes[6] = 1;
        store.overwrite_raw(&key, Bytes::from(bytes));
        let err = load(&store, &key).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("encryption method 1 is not supported"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn flags_and_reserved_bytes_are_refused() {
        let store = MemoryStore::new();
        let key = Key::new("obj/flags").unwrap();
        store_bytes(&store, &key, b"payload", 3).await;
        let good = store.get_bytes(&key).await.unwrap().to_vec();
        let trailer_reserved = good.len() - TRAILER_LEN + 5;
        for (at, expect) in [
            (7, "envelope flags 0x01"),
            (8, "reserved envelope header bytes"),
            (15, "reserved envelope header bytes"),
            (trailer_reserved, "reserved envelope trailer bytes"),
        ] {
            let mut bytes = good.clone();
            bytes[at] = 1;
            store.overwrite_raw(&key, Bytes::from(bytes));
            let err = load(&store, &key).await.unwrap_err();
            assert!(err.to_string().contains(expect), "byte {at}: {err}");
            assert!(err.is_corruption(), "byte {at}: {err}");
        }
    }

    #[tokio::test]
    async fn refused_create_keeps_the_original() {
        let store = MemoryStore::new();
        let key = Key::new("obj/dup").unwrap();
        store_bytes(&store, &key, b"first", 3).await;
        let mut src: &[u8] = b"second";
        let err = write_object(
            &store,
            &key,
            PutMode::Create,
            &mut src,
            CompressSettings::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            ObjectError::Storage(StorageError::AlreadyExists { .. })
        ));
        assert_eq!(load(&store, &key).await.unwrap().0, b"first");
    }

    /// A copy checks the envelope as it streams: a damaged source never
    /// becomes a visible copy, an existing destination object is refused,
    /// and a good copy reads back identical.
    #[tokio::test]
    async fn copies_are_checked_and_create_only() {
        let from = MemoryStore::new();
        let to = MemoryStore::new();
        let key = Key::new("wal/x").unwrap();
        let data = sample(300_000);
        let info = store_bytes(&from, &key, &data, 3).await;
        let copied = copy_object(&from, &to, &key, PutMode::Create)
            .await
            .unwrap();
        assert_eq!(copied, info);
        assert_eq!(load(&to, &key).await.unwrap().0, data);
        let again = copy_object(&from, &to, &key, PutMode::Create)
            .await
            .unwrap_err();
        assert!(
            matches!(
                again,
                ObjectError::Storage(StorageError::AlreadyExists { .. })
            ),
            "{again}"
        );
        // Every damaged byte (header, body, trailer) stops the copy.
        let stored = from.get_bytes(&key).await.unwrap();
        for at in [
            0,
            9,
            HEADER_LEN + 10,
            stored.len() / 2,
            stored.len() - 40,
            stored.len() - 1,
        ] {
            let mut bad = stored.to_vec();
            bad[at] ^= 0x01;
            let bad_key = Key::new(format!("wal/bad{at}")).unwrap();
            from.put_bytes(&bad_key, Bytes::from(bad), PutMode::Create)
                .await
                .unwrap();
            let err = copy_object(&from, &to, &bad_key, PutMode::Create)
                .await
                .unwrap_err();
            assert!(err.is_corruption(), "byte {at}: {err}");
            assert!(
                to.head(&bad_key).await.is_err(),
                "byte {at}: no copy visible"
            );
        }
        // A truncated source too.
        let cut = Key::new("wal/cut").unwrap();
        from.put_bytes(&cut, stored.slice(..stored.len() - 7), PutMode::Create)
            .await
            .unwrap();
        assert!(copy_object(&from, &to, &cut, PutMode::Create)
            .await
            .unwrap_err()
            .is_corruption());
        assert!(to.head(&cut).await.is_err());
    }
}
