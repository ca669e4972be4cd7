//! Block maps and block deltas (manifest version 2, see docs/FORMAT.md):
//! what lets an incremental backup store only the blocks of a file that
//! changed, and restore put them back.
//!
//! - A **block map** (`…/files/<n>.map`) lists a hash of every block of a
//!   file as it was copied, 16 bytes, one per block of the cluster's block
//!   size (the last block may be short): XXH3-128 in layouts 2 and 3,
//!   BLAKE3 truncated to 16 bytes in layout 1 (read, and continued by the
//!   deltas of a chain that started with it). Layout 3 adds each block's
//!   BLAKE3 chaining value (the block hashed as the subtree of the file's
//!   BLAKE3 tree it is, [`block_cv`]), so the whole file's BLAKE3 checksum
//!   is merged from the blocks' values ([`merged_checksum`]): an
//!   incremental that knows from WAL which blocks changed reads only those
//!   and still records the reassembled file's checksum. The whole file's
//!   checksum stays BLAKE3 in every layout. The next
//!   backup reads the reference's map and compares each block it reads
//!   with it, so unchanged blocks are read but never stored.
//! - A **block delta** (`…/files/<n>`, for a file whose manifest entry has
//!   a base) holds only the blocks that differ from the reference, each with
//!   its number, length and hash. Restore writes the newest delta's blocks
//!   first, then each older layer's blocks that are still missing, and the
//!   base last, so every block is written once and memory stays at one
//!   bitmap and one block whatever the chain length.
//!
//! Changed blocks are found from WAL where it can vouch for them
//! (`backup::wal_changes`), and otherwise by content, never by page LSN
//! alone: a page whose LSN is old can still differ from the reference
//! (hint bits set without WAL when data checksums are off, a relation
//! truncated and extended again with zero pages, files copied by `CREATE
//! DATABASE … STRATEGY FILE_COPY` into a path a dropped database used),
//! and content comparison catches every one of them.
//!
//! Both layouts sit inside the ordinary object envelope, so they are
//! compressed and checksummed like every object; these are the raw bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Bytes of one block hash in a map or delta.
pub const HASH_LEN: usize = 16;
/// Bytes of one block's BLAKE3 chaining value (layout 3).
pub const CV_LEN: usize = 32;
const MAP_MAGIC: &[u8; 4] = b"WVBM";
const DELTA_MAGIC: &[u8; 4] = b"WVBD";
/// Map header: magic, layout version, 3 reserved, block size u32, 4
/// reserved, file size u64.
pub const MAP_HEADER_LEN: usize = 24;
/// Delta header: magic, layout version, 3 reserved, block size u32, 4
/// reserved.
pub const DELTA_HEADER_LEN: usize = 16;
/// A delta record's head in layouts 1 and 2: block number u32, length
/// u32, hash; layout 3 adds the block's chaining value.
pub const RECORD_HEAD_LEN: usize = 8 + HASH_LEN;
/// The block number of the end record, whose "hash" holds the file size
/// and the record count.
const END_BLOCK: u32 = u32::MAX;
/// How much of a file a [`BlockReader`] reads at once.
const READ_BYTES: usize = 1 << 20;

/// Files at least this many blocks long get a block map and can be stored
/// as deltas; smaller files are compared and stored whole.
pub const MIN_MAP_BLOCKS: u64 = 16;

pub type BlockHash = [u8; HASH_LEN];
/// A block's BLAKE3 chaining value.
pub type Cv = [u8; CV_LEN];

/// The BLAKE3 chaining value of the block at byte `offset` of a file (a
/// multiple of its block size): `data` hashed as the non-root subtree of
/// the file's BLAKE3 tree that starts there. Blocks of a power-of-two
/// size of at least 1 KiB are always whole subtrees of that tree, so a
/// file of two blocks or more has its checksum merged from these values.
pub fn block_cv(data: &[u8], offset: u64) -> Cv {
    use blake3::hazmat::HasherExt;
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(data);
    h.finalize_non_root()
}

/// BLAKE3 of a file of `file_size` bytes whose blocks of `block_size`
/// have the chaining values `cvs`, merged along BLAKE3's tree without
/// reading the file. `None` when the values do not cover the file or the
/// file is a single block (whose root is not a merge).
pub fn merged_checksum(
    cvs: &[Cv],
    block_size: u32,
    file_size: u64,
) -> Option<crate::stream::Checksum> {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, Mode};
    let bs = u64::from(block_size);
    if !valid_block_size(block_size)
        || block_count(file_size, block_size) != cvs.len() as u64
        || cvs.len() < 2
    {
        return None;
    }
    // The chaining value of the subtree of `len` bytes starting at block
    // `first`; `len` spans more than one block here.
    fn subtree(cvs: &[Cv], first: usize, len: u64, bs: u64) -> Cv {
        if len <= bs {
            return cvs[first];
        }
        let left = left_subtree_len(len);
        let l = subtree(cvs, first, left, bs);
        let r = subtree(cvs, first + (left / bs) as usize, len - left, bs);
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
    let left = left_subtree_len(file_size);
    let l = subtree(cvs, 0, left, bs);
    let r = subtree(cvs, (left / bs) as usize, file_size - left, bs);
    Some(crate::stream::Checksum(
        *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes(),
    ))
}

/// How a map or delta hashes its blocks, named by its layout version.
/// A delta always hashes as the map it was compared with, so a chain
/// never mixes the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashKind {
    /// Layout 1: BLAKE3, truncated to 16 bytes.
    Blake3,
    /// Layout 2: XXH3-128, little-endian; about seven times faster, so a
    /// changed file costs one cryptographic pass (its BLAKE3 checksum),
    /// not two.
    Xxh3,
    /// Layout 3: XXH3-128 as layout 2, and each block's BLAKE3 chaining
    /// value beside it, from which the file's checksum is merged.
    #[default]
    Xxh3Cv,
}

impl HashKind {
    /// What new maps (and the deltas compared with them) use.
    pub const CURRENT: HashKind = HashKind::Xxh3Cv;

    fn from_layout(version: u8) -> Option<HashKind> {
        match version {
            1 => Some(HashKind::Blake3),
            2 => Some(HashKind::Xxh3),
            3 => Some(HashKind::Xxh3Cv),
            _ => None,
        }
    }

    fn layout(self) -> u8 {
        match self {
            HashKind::Blake3 => 1,
            HashKind::Xxh3 => 2,
            HashKind::Xxh3Cv => 3,
        }
    }

    /// Whether maps and deltas of this kind carry chaining values.
    pub fn has_cv(self) -> bool {
        self == HashKind::Xxh3Cv
    }

    /// Bytes per block in a map of this kind.
    fn map_entry_len(self) -> usize {
        HASH_LEN + if self.has_cv() { CV_LEN } else { 0 }
    }

    /// Bytes of a delta record's head in this kind.
    pub fn record_head_len(self) -> usize {
        RECORD_HEAD_LEN + if self.has_cv() { CV_LEN } else { 0 }
    }

    pub fn hash(self, data: &[u8]) -> BlockHash {
        match self {
            HashKind::Blake3 => {
                let full = blake3::hash(data);
                let mut h = [0u8; HASH_LEN];
                h.copy_from_slice(&full.as_bytes()[..HASH_LEN]);
                h
            }
            HashKind::Xxh3 | HashKind::Xxh3Cv => xxhash_rust::xxh3::xxh3_128(data).to_le_bytes(),
        }
    }
}

/// A block's hash as new maps record it.
pub fn block_hash(data: &[u8]) -> BlockHash {
    HashKind::CURRENT.hash(data)
}

/// How many blocks a file of `size` bytes has.
pub fn block_count(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size))
}

/// Whether a block size is one PostgreSQL can have.
pub fn valid_block_size(block_size: u32) -> bool {
    block_size.is_power_of_two() && (1024..=32768).contains(&block_size)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockFormatError {
    #[error("{0}")]
    Bad(String),
}

fn bad(reason: impl Into<String>) -> BlockFormatError {
    BlockFormatError::Bad(reason.into())
}

/// A parsed block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    pub kind: HashKind,
    pub block_size: u32,
    pub file_size: u64,
    pub hashes: Vec<BlockHash>,
    /// Each block's chaining value (layout 3); empty in layouts 1 and 2.
    pub cvs: Vec<Cv>,
}

impl BlockMap {
    /// The map of `data` as a full copy of `kind` records it.
    pub fn of(kind: HashKind, block_size: u32, data: &[u8]) -> BlockMap {
        let bs = block_size as usize;
        BlockMap {
            kind,
            block_size,
            file_size: data.len() as u64,
            hashes: data.chunks(bs).map(|b| kind.hash(b)).collect(),
            cvs: if kind.has_cv() {
                data.chunks(bs)
                    .enumerate()
                    .map(|(i, b)| block_cv(b, (i * bs) as u64))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Overlays one block's hash (and, in layout 3, chaining value) from a
    /// delta (blocks come in increasing order; a block just past the end
    /// extends the map). `false` when the block leaves a gap, or lacks a
    /// chaining value the map needs, which a delta walvault wrote never
    /// does.
    pub fn overlay(&mut self, number: u32, hash: BlockHash, cv: Option<Cv>) -> bool {
        let n = number as usize;
        if self.kind.has_cv() != cv.is_some() {
            return false;
        }
        match n.cmp(&self.hashes.len()) {
            std::cmp::Ordering::Less => self.hashes[n] = hash,
            std::cmp::Ordering::Equal => self.hashes.push(hash),
            std::cmp::Ordering::Greater => return false,
        }
        if let Some(cv) = cv {
            if n < self.cvs.len() {
                self.cvs[n] = cv;
            } else {
                self.cvs.push(cv);
            }
        }
        true
    }

    /// Cuts the map at a file size: blocks past it go, and so does a last
    /// block the size leaves short (which layer's hash it has is not
    /// known), so the next comparison stores it.
    pub fn cut(&mut self, file_size: u64) {
        let whole = (file_size / u64::from(self.block_size)) as usize;
        self.hashes.truncate(whole);
        self.cvs.truncate(whole);
        self.file_size = file_size;
    }

    /// The file's BLAKE3 checksum merged from the chaining values, when
    /// the map has them for every block of a file of two blocks or more.
    pub fn merged_checksum(&self) -> Option<crate::stream::Checksum> {
        if !self.kind.has_cv() || self.cvs.len() != self.hashes.len() {
            return None;
        }
        merged_checksum(&self.cvs, self.block_size, self.file_size)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(MAP_HEADER_LEN + self.hashes.len() * self.kind.map_entry_len());
        out.extend_from_slice(MAP_MAGIC);
        out.push(self.kind.layout());
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.file_size.to_le_bytes());
        for (i, h) in self.hashes.iter().enumerate() {
            out.extend_from_slice(h);
            if self.kind.has_cv() {
                out.extend_from_slice(&self.cvs[i]);
            }
        }
        out
    }

    /// Parses a map, refusing any layout this version does not know.
    pub fn decode(bytes: &[u8]) -> Result<BlockMap, BlockFormatError> {
        if bytes.len() < MAP_HEADER_LEN || &bytes[..4] != MAP_MAGIC {
            return Err(bad("not a walvault block map"));
        }
        let kind = HashKind::from_layout(bytes[4]);
        let Some(kind) = kind.filter(|_| bytes[5..8] == [0; 3] && bytes[12..16] == [0; 4]) else {
            return Err(bad(
                "block map layout is newer than this walvault understands\nHINT: upgrade walvault",
            ));
        };
        let block_size = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if !valid_block_size(block_size) {
            return Err(bad(format!("block map has block size {block_size}")));
        }
        let file_size = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        let body = &bytes[MAP_HEADER_LEN..];
        let count = block_count(file_size, block_size);
        let entry = kind.map_entry_len();
        if body.len() as u64 != count * entry as u64 {
            return Err(bad(format!(
                "block map of a {file_size}-byte file holds {} bytes of hashes, not {}",
                body.len(),
                count * entry as u64
            )));
        }
        let hashes = body
            .chunks_exact(entry)
            .map(|c| c[..HASH_LEN].try_into().expect("HASH_LEN bytes"))
            .collect();
        let cvs = if kind.has_cv() {
            body.chunks_exact(entry)
                .map(|c| c[HASH_LEN..].try_into().expect("CV_LEN bytes"))
                .collect()
        } else {
            Vec::new()
        };
        Ok(BlockMap {
            kind,
            block_size,
            file_size,
            hashes,
            cvs,
        })
    }
}

fn delta_header(block_size: u32, kind: HashKind) -> [u8; DELTA_HEADER_LEN] {
    let mut h = [0u8; DELTA_HEADER_LEN];
    h[..4].copy_from_slice(DELTA_MAGIC);
    h[4] = kind.layout();
    h[8..12].copy_from_slice(&block_size.to_le_bytes());
    h
}

/// Appends a delta record's head to `out`: the chaining value only when
/// the delta's kind has them (zeros in the end record).
pub fn push_record_head(
    out: &mut Vec<u8>,
    kind: HashKind,
    block: u32,
    len: u32,
    hash: &BlockHash,
    cv: Option<&Cv>,
) {
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(hash);
    if kind.has_cv() {
        out.extend_from_slice(cv.unwrap_or(&[0; CV_LEN]));
    }
}

/// The header of a delta of `kind`.
pub fn delta_header_bytes(block_size: u32, kind: HashKind) -> [u8; DELTA_HEADER_LEN] {
    delta_header(block_size, kind)
}

/// Appends a delta's end record: the file size and the record count.
pub fn push_end_record(out: &mut Vec<u8>, kind: HashKind, file_size: u64, records: u64) {
    let mut tail = [0u8; HASH_LEN];
    tail[..8].copy_from_slice(&file_size.to_le_bytes());
    tail[8..].copy_from_slice(&records.to_le_bytes());
    push_record_head(out, kind, END_BLOCK, 0, &tail, None);
}

/// The largest block number a delta record can carry.
pub fn max_delta_block(number: u64) -> io::Result<u32> {
    u32::try_from(number)
        .ok()
        .filter(|&b| b != END_BLOCK)
        .ok_or_else(|| io::Error::other("file has too many blocks for a delta"))
}

/// What reading a file block by block found.
#[derive(Debug, Clone, Default)]
pub struct BlockScan {
    /// How `hashes` were made.
    pub kind: HashKind,
    pub file_size: u64,
    /// The hash of every block read: the file's new block map.
    pub hashes: Vec<BlockHash>,
    /// Every block's chaining value, when `kind` has them.
    pub cvs: Vec<Cv>,
    /// Blocks put into the delta (those that differ from the reference).
    pub stored_blocks: u64,
    /// BLAKE3 of the whole file as read. Unchanged blocks are identical to
    /// the reference's, so this is also the checksum of the file restore
    /// reassembles. With chaining values it is merged from them (one
    /// BLAKE3 pass, not two).
    pub checksum: crate::stream::Checksum,
}

/// An [`AsyncRead`] over a file that hashes each block as it passes.
/// With `reference: None` it passes the file through unchanged (a full
/// copy, whose map is [`BlockScan::hashes`]); with a reference map it
/// yields a block delta holding only the blocks whose hash differs from
/// the reference, or that lie beyond it. It reads a MiB at a time and
/// feeds the whole-file checksum as it reads (large updates are BLAKE3's
/// fast path); memory is that buffer and, for a delta, the changed blocks
/// of one buffer.
pub struct BlockReader<'a, R> {
    inner: R,
    block_size: usize,
    kind: HashKind,
    reference: Option<&'a BlockMap>,
    buf: Vec<u8>,
    /// Blocks before this are hashed.
    pos: usize,
    /// Bytes read up to here.
    end: usize,
    /// A full copy has passed on the bytes before this.
    emitted: usize,
    /// Delta records waiting to be read.
    out: Vec<u8>,
    out_pos: usize,
    started: bool,
    finished: bool,
    scan: BlockScan,
    whole: crate::stream::Hasher,
    /// BLAKE3 of the first block alone: the checksum of a file of one
    /// block, which chaining values cannot give.
    first_block: Option<crate::stream::Checksum>,
    /// Blocks put into the delta so far, readable while the reader is
    /// lent out ([`BlockReader::stored_count`]).
    stored: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<'a, R: AsyncRead + Unpin> BlockReader<'a, R> {
    /// A handle on the number of blocks put into the delta so far.
    pub fn stored_count(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.stored.clone()
    }

    pub fn new(inner: R, block_size: u32, reference: Option<&'a BlockMap>) -> Self {
        let bs = block_size as usize;
        let kind = reference.map_or(HashKind::CURRENT, |m| m.kind);
        BlockReader {
            inner,
            block_size: bs,
            kind,
            reference,
            buf: vec![0; (READ_BYTES / bs).max(1) * bs],
            pos: 0,
            end: 0,
            emitted: 0,
            out: Vec::new(),
            out_pos: 0,
            started: false,
            finished: false,
            scan: BlockScan {
                kind,
                ..BlockScan::default()
            },
            whole: crate::stream::Hasher::new(),
            first_block: None,
            stored: Default::default(),
        }
    }

    pub fn into_scan(mut self) -> BlockScan {
        self.scan.checksum = if self.kind.has_cv() {
            match self.scan.hashes.len() {
                0 => crate::stream::Checksum::of(&[]),
                1 => self.first_block.expect("set with the first block"),
                _ => merged_checksum(&self.scan.cvs, self.block_size as u32, self.scan.file_size)
                    .expect("a value for every block"),
            }
        } else {
            self.whole.finish()
        };
        self.scan
    }

    /// Hashes the block at `buf[pos..pos + len]` and, for a delta, queues
    /// it when it differs from the reference.
    fn take_block(&mut self, len: usize) -> io::Result<()> {
        let data = &self.buf[self.pos..self.pos + len];
        let hash = self.kind.hash(data);
        let number = self.scan.hashes.len();
        let cv = if self.kind.has_cv() {
            if number == 0 {
                self.first_block = Some(crate::stream::Checksum::of(data));
            }
            Some(block_cv(data, self.scan.file_size))
        } else {
            None
        };
        if let Some(cv) = cv {
            self.scan.cvs.push(cv);
        }
        self.scan.hashes.push(hash);
        self.scan.file_size += len as u64;
        if let Some(reference) = self.reference {
            if reference.hashes.get(number) != Some(&hash) {
                let block = max_delta_block(number as u64)?;
                push_record_head(
                    &mut self.out,
                    self.kind,
                    block,
                    len as u32,
                    &hash,
                    cv.as_ref(),
                );
                self.out.extend_from_slice(data);
                self.scan.stored_blocks += 1;
                self.stored
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.pos += len;
        if self.reference.is_some() {
            self.emitted = self.pos;
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for BlockReader<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let bs = this.block_size;
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.emitted < this.pos {
                let n = (this.pos - this.emitted).min(buf.remaining());
                buf.put_slice(&this.buf[this.emitted..this.emitted + n]);
                this.emitted += n;
                return Poll::Ready(Ok(()));
            }
            if this.finished {
                return Poll::Ready(Ok(()));
            }
            this.out.clear();
            this.out_pos = 0;
            if !this.started {
                this.started = true;
                if this.reference.is_some() {
                    this.out
                        .extend_from_slice(&delta_header(bs as u32, this.kind));
                    continue;
                }
            }
            if this.end - this.pos >= bs {
                while this.end - this.pos >= bs {
                    this.take_block(bs)?;
                }
                continue;
            }
            // Keep the partial block, read more behind it.
            if this.pos > 0 {
                this.buf.copy_within(this.pos..this.end, 0);
                this.end -= this.pos;
                this.pos = 0;
                this.emitted = 0;
            }
            let mut rb = ReadBuf::new(&mut this.buf[this.end..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        if this.end > this.pos {
                            this.take_block(this.end - this.pos)?;
                        }
                        if this.reference.is_some() {
                            push_end_record(
                                &mut this.out,
                                this.kind,
                                this.scan.file_size,
                                this.scan.stored_blocks,
                            );
                        }
                        this.finished = true;
                        continue;
                    }
                    if !this.kind.has_cv() {
                        this.whole.update(&this.buf[this.end..this.end + n]);
                    }
                    this.end += n;
                }
            }
        }
    }
}

/// One block of a delta, as [`DeltaParser`] hands it out.
pub struct DeltaBlock<'a> {
    pub number: u32,
    pub data: &'a [u8],
    /// The block's hash, checked against `data`.
    pub hash: BlockHash,
    /// The block's chaining value (layout 3), as recorded. It is not
    /// recomputed here: the object's checksum covers it, and a wrong one
    /// would give a file checksum that restore's check of the reassembled
    /// file refuses.
    pub cv: Option<Cv>,
}

/// Parses a block delta fed in arbitrary pieces, checking each block's
/// hash, the block size and the end record. Holds at most one block.
pub struct DeltaParser {
    block_size: u32,
    /// From the header.
    kind: Option<HashKind>,
    state: ParseState,
    buf: Vec<u8>,
    records: u64,
    end: Option<(u64, u64)>,
    /// The previous record's block number: records come in increasing order.
    last: Option<u32>,
}

enum ParseState {
    Header,
    Head,
    Data {
        number: u32,
        len: usize,
        hash: BlockHash,
        cv: Option<Cv>,
    },
    Done,
}

impl DeltaParser {
    pub fn new(block_size: u32) -> DeltaParser {
        DeltaParser {
            block_size,
            kind: None,
            state: ParseState::Header,
            buf: Vec::with_capacity(block_size as usize + RECORD_HEAD_LEN),
            records: 0,
            end: None,
            last: None,
        }
    }

    /// Feeds `piece`, calling `on_block` for every complete, checked block.
    pub fn feed(
        &mut self,
        mut piece: &[u8],
        on_block: &mut dyn FnMut(DeltaBlock<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let corrupt = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
        while !piece.is_empty() {
            let want = match &self.state {
                ParseState::Header => DELTA_HEADER_LEN,
                ParseState::Head => self.kind.unwrap_or_default().record_head_len(),
                ParseState::Data { len, .. } => *len,
                ParseState::Done => {
                    return Err(corrupt("bytes after the end of a block delta".into()))
                }
            };
            let take = (want - self.buf.len()).min(piece.len());
            self.buf.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            if self.buf.len() < want {
                break;
            }
            match std::mem::replace(&mut self.state, ParseState::Done) {
                ParseState::Header => {
                    if &self.buf[..4] != DELTA_MAGIC {
                        return Err(corrupt("not a walvault block delta".into()));
                    }
                    self.kind = HashKind::from_layout(self.buf[4])
                        .filter(|_| self.buf[5..8] == [0; 3] && self.buf[12..16] == [0; 4]);
                    if self.kind.is_none() {
                        return Err(corrupt(
                            "block delta layout is newer than this walvault understands\nHINT: upgrade walvault".into(),
                        ));
                    }
                    let bs = u32::from_le_bytes(self.buf[8..12].try_into().expect("4"));
                    if bs != self.block_size {
                        return Err(corrupt(format!(
                            "block delta has block size {bs}, the manifest says {}",
                            self.block_size
                        )));
                    }
                    self.state = ParseState::Head;
                }
                ParseState::Head => {
                    let number = u32::from_le_bytes(self.buf[..4].try_into().expect("4"));
                    let len = u32::from_le_bytes(self.buf[4..8].try_into().expect("4")) as usize;
                    let hash: BlockHash = self.buf[8..8 + HASH_LEN].try_into().expect("HASH_LEN");
                    let cv: Option<Cv> = self
                        .kind
                        .filter(|k| k.has_cv())
                        .map(|_| self.buf[RECORD_HEAD_LEN..].try_into().expect("CV_LEN"));
                    if number == END_BLOCK {
                        let size = u64::from_le_bytes(hash[..8].try_into().expect("8"));
                        let count = u64::from_le_bytes(hash[8..].try_into().expect("8"));
                        if len != 0 || count != self.records {
                            return Err(corrupt(format!(
                                "block delta ends claiming {count} blocks but holds {}",
                                self.records
                            )));
                        }
                        self.end = Some((size, count));
                        self.state = ParseState::Done;
                    } else {
                        if len == 0 || len > self.block_size as usize {
                            return Err(corrupt(format!(
                                "block {number} of a delta has length {len}"
                            )));
                        }
                        if self.last.is_some_and(|last| number <= last) {
                            return Err(corrupt(format!(
                                "block {number} of a delta comes after block {}",
                                self.last.unwrap_or(0)
                            )));
                        }
                        self.last = Some(number);
                        self.state = ParseState::Data {
                            number,
                            len,
                            hash,
                            cv,
                        };
                    }
                }
                ParseState::Data {
                    number,
                    len,
                    hash,
                    cv,
                } => {
                    let kind = self.kind.unwrap_or_default();
                    if kind.hash(&self.buf[..len]) != hash {
                        return Err(corrupt(format!(
                            "block {number} of a delta does not match its hash"
                        )));
                    }
                    self.records += 1;
                    on_block(DeltaBlock {
                        number,
                        data: &self.buf[..len],
                        hash,
                        cv,
                    })?;
                    self.state = ParseState::Head;
                }
                ParseState::Done => unreachable!("handled above"),
            }
            self.buf.clear();
        }
        Ok(())
    }

    /// How the delta hashes its blocks (known once its header is read).
    pub fn kind(&self) -> Option<HashKind> {
        self.kind
    }

    /// After the last piece: the file size the delta was taken at and its
    /// block count, or an error if the delta was cut short.
    pub fn finish(&self) -> io::Result<(u64, u64)> {
        self.end.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "block delta ends before its end record (truncated?)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn file(blocks: usize, bs: usize, tail: usize, seed: u8) -> Vec<u8> {
        (0..blocks * bs + tail)
            .map(|i| (i / bs) as u8 ^ seed ^ (i as u8).wrapping_mul(7))
            .collect()
    }

    async fn read_all<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
        let mut out = Vec::new();
        // Small reads exercise the adapter's buffering.
        let mut buf = [0u8; 1000];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn apply(base: &[u8], delta: &[u8], bs: u32, size: u64) -> Vec<u8> {
        let mut out = base.to_vec();
        out.resize(size as usize, 0);
        let mut p = DeltaParser::new(bs);
        for piece in delta.chunks(777) {
            p.feed(piece, &mut |b| {
                let off = b.number as usize * bs as usize;
                let end = (off + b.data.len()).min(out.len());
                out[off..end].copy_from_slice(&b.data[..end - off]);
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(p.finish().unwrap().0, size);
        out
    }

    #[tokio::test]
    async fn full_pass_through_hashes_every_block() {
        let data = file(20, 1024, 300, 1);
        let mut r = BlockReader::new(&data[..], 1024, None);
        assert_eq!(read_all(&mut r).await, data);
        let scan = r.into_scan();
        assert_eq!(scan.hashes.len(), 21);
        assert_eq!(scan.file_size, data.len() as u64);
        assert_eq!(scan.hashes[20], block_hash(&data[20 * 1024..]));
    }

    #[tokio::test]
    async fn deltas_hold_changed_grown_and_short_blocks_only() {
        let bs = 1024u32;
        let old = file(20, 1024, 0, 1);
        let map = BlockMap::of(HashKind::CURRENT, bs, &old);
        // Block 3 changed, the file grew by two blocks and a short tail.
        let mut new = old.clone();
        new[3 * 1024 + 5] ^= 0xff;
        new.extend(file(2, 1024, 100, 9));
        let mut r = BlockReader::new(&new[..], bs, Some(&map));
        let delta = read_all(&mut r).await;
        let scan = r.into_scan();
        assert_eq!(scan.stored_blocks, 4);
        assert_eq!(apply(&old, &delta, bs, new.len() as u64), new);
        // Unchanged: an empty delta.
        let mut r = BlockReader::new(&old[..], bs, Some(&map));
        let delta = read_all(&mut r).await;
        assert_eq!(r.into_scan().stored_blocks, 0);
        assert_eq!(apply(&old, &delta, bs, old.len() as u64), old);
        // Truncated: nothing stored, the size says where the file ends.
        let short = &old[..5 * 1024];
        let mut r = BlockReader::new(short, bs, Some(&map));
        let delta = read_all(&mut r).await;
        assert_eq!(r.into_scan().stored_blocks, 0);
        assert_eq!(apply(&old, &delta, bs, short.len() as u64), short);
    }

    #[tokio::test]
    async fn damaged_deltas_are_refused() {
        let bs = 1024u32;
        let old = file(16, 1024, 0, 1);
        let map = BlockMap::of(HashKind::CURRENT, bs, &old);
        let mut new = old.clone();
        new[0] ^= 1;
        let mut r = BlockReader::new(&new[..], bs, Some(&map));
        let delta = read_all(&mut r).await;
        let run = |d: &[u8], bs: u32| {
            let mut p = DeltaParser::new(bs);
            p.feed(d, &mut |_| Ok(()))
                .and_then(|()| p.finish().map(|_| ()))
        };
        run(&delta, bs).unwrap();
        let mut flipped = delta.clone();
        flipped[DELTA_HEADER_LEN + HashKind::CURRENT.record_head_len() + 10] ^= 1;
        assert!(run(&flipped, bs).unwrap_err().to_string().contains("hash"));
        assert!(run(&delta[..delta.len() - 3], bs).is_err());
        assert!(run(&delta, 2048)
            .unwrap_err()
            .to_string()
            .contains("block size"));
        let mut newer = delta.clone();
        newer[4] = 4;
        assert!(run(&newer, bs).unwrap_err().to_string().contains("upgrade"));
    }

    #[tokio::test]
    async fn a_base_map_and_its_deltas_give_the_files_block_hashes() {
        let bs = 1024u32;
        let v1 = file(20, 1024, 0, 1);
        let map_of = |d: &[u8]| BlockMap::of(HashKind::CURRENT, bs, d);
        let base = map_of(&v1);
        // v2: block 2 changed, two blocks more; v3: block 21 changed.
        let mut v2 = v1.clone();
        v2[2 * 1024] ^= 1;
        v2.extend(file(2, 1024, 0, 5));
        let mut v3 = v2.clone();
        v3[21 * 1024 + 7] ^= 1;
        let mut effective = base.clone();
        let mut reference = base.clone();
        for next in [&v2, &v3] {
            let mut r = BlockReader::new(&next[..], bs, Some(&reference));
            let delta = read_all(&mut r).await;
            let mut p = DeltaParser::new(bs);
            let mut ok = true;
            p.feed(&delta, &mut |b| {
                ok &= effective.overlay(b.number, b.hash, b.cv);
                Ok(())
            })
            .unwrap();
            assert!(ok);
            effective.cut(next.len() as u64);
            assert_eq!(effective.hashes, map_of(next).hashes);
            assert_eq!(effective.cvs, map_of(next).cvs);
            assert_eq!(
                effective.merged_checksum(),
                Some(crate::stream::Checksum::of(next))
            );
            reference = effective.clone();
        }
        // Cut short mid-block: the short block is not vouched for.
        let mut cut = effective.clone();
        cut.cut(10 * 1024 + 5);
        assert_eq!(cut.hashes.len(), 10);
        // A gap is refused.
        let mut gap = base.clone();
        assert!(!gap.overlay(25, [0; 16], Some([0; 32])));
        // A layout-3 map takes no block without its chaining value.
        assert!(!gap.overlay(1, [0; 16], None));
    }

    #[test]
    fn maps_round_trip_and_refuse_what_they_do_not_know() {
        let m = BlockMap {
            kind: HashKind::CURRENT,
            block_size: 8192,
            file_size: 8192 * 2 + 1,
            hashes: vec![[1; 16], [2; 16], [3; 16]],
            cvs: vec![[4; 32], [5; 32], [6; 32]],
        };
        let bytes = m.encode();
        assert_eq!(bytes.len(), MAP_HEADER_LEN + 3 * 48);
        assert_eq!(BlockMap::decode(&bytes).unwrap(), m);
        let mut newer = bytes.clone();
        newer[4] = 4;
        assert!(BlockMap::decode(&newer).is_err());
        assert!(BlockMap::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut flags = bytes.clone();
        flags[13] = 1;
        assert!(BlockMap::decode(&flags).is_err());
    }

    /// Layout 1 (BLAKE3 block hashes) stays readable, and a delta taken
    /// against a layout-1 map hashes as that map does, so the chain it
    /// continues stays one kind; reading a large file in small and large
    /// pieces gives the same delta and checksum.
    #[tokio::test]
    async fn layout_one_maps_are_read_and_continued_in_their_own_kind() {
        let bs = 1024u32;
        let old = file(3000, 1024, 0, 3);
        let v1 = BlockMap::of(HashKind::Blake3, bs, &old);
        let mut bytes = v1.encode();
        assert_eq!(bytes[4], 1);
        assert_eq!(BlockMap::decode(&bytes).unwrap(), v1);
        let mut new = old.clone();
        new[2500 * 1024 + 1] ^= 1;
        new[7] ^= 1;
        let mut r = BlockReader::new(&new[..], bs, Some(&v1));
        let delta = read_all(&mut r).await;
        let scan = r.into_scan();
        assert_eq!(scan.kind, HashKind::Blake3);
        assert_eq!(scan.stored_blocks, 2);
        assert_eq!(scan.checksum, crate::stream::Checksum::of(&new));
        assert_eq!(delta[4], 1, "a layout-1 delta");
        let mut p = DeltaParser::new(bs);
        p.feed(&delta, &mut |_| Ok(())).unwrap();
        assert_eq!(p.kind(), Some(HashKind::Blake3));
        assert_eq!(apply(&old, &delta, bs, new.len() as u64), new);
        // A new map is layout 3, with XXH3 block hashes and chaining
        // values.
        let mut r = BlockReader::new(&new[..], bs, None);
        assert_eq!(read_all(&mut r).await, new);
        let scan = r.into_scan();
        assert_eq!(scan.kind, HashKind::Xxh3Cv);
        assert_eq!(scan.checksum, crate::stream::Checksum::of(&new));
        assert_eq!(
            scan.hashes[7],
            xxhash_rust::xxh3::xxh3_128(&new[7 * 1024..8 * 1024]).to_le_bytes()
        );
        // A layout-1 map whose hashes are checked as layout 2 would match
        // nothing: the kind is in the header, not guessed.
        bytes[4] = 2;
        assert_eq!(BlockMap::decode(&bytes).unwrap().kind, HashKind::Xxh3);
    }

    /// The checksum merged from chaining values is BLAKE3 of the file,
    /// for files of any length (short last blocks too) and every block
    /// size; a single block or values that do not cover the file give
    /// none.
    #[tokio::test]
    async fn chaining_values_merge_into_the_files_blake3() {
        for bs in [1024u32, 8192, 32768] {
            let b = bs as usize;
            for len in [
                2 * b,
                2 * b + 1,
                3 * b,
                7 * b - 5,
                16 * b,
                17 * b + 100,
                1000 * b / 8,
            ] {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8).collect();
                let map = BlockMap::of(HashKind::Xxh3Cv, bs, &data);
                let want = crate::stream::Checksum::of(&data);
                assert_eq!(map.merged_checksum(), Some(want), "bs {bs} len {len}");
                let mut r = BlockReader::new(&data[..], bs, None);
                read_all(&mut r).await;
                assert_eq!(r.into_scan().checksum, want, "bs {bs} len {len}");
            }
            let one: Vec<u8> = vec![9; b];
            assert_eq!(
                BlockMap::of(HashKind::Xxh3Cv, bs, &one).merged_checksum(),
                None
            );
            let mut r = BlockReader::new(&one[..], bs, None);
            read_all(&mut r).await;
            assert_eq!(r.into_scan().checksum, crate::stream::Checksum::of(&one));
        }
        let data = vec![1u8; 40 * 8192];
        let map = BlockMap::of(HashKind::Xxh3Cv, 8192, &data);
        assert_eq!(
            merged_checksum(&map.cvs[..39], 8192, data.len() as u64),
            None
        );
        // Layout 2 maps have no values to merge.
        assert_eq!(
            BlockMap::of(HashKind::Xxh3, 8192, &data).merged_checksum(),
            None
        );
    }

    /// A layout-2 map is read, and a delta taken against it is layout 2
    /// with no chaining values.
    #[tokio::test]
    async fn layout_two_maps_are_continued_in_their_own_kind() {
        let bs = 1024u32;
        let old = file(40, 1024, 0, 5);
        let v2 = BlockMap::of(HashKind::Xxh3, bs, &old);
        let bytes = v2.encode();
        assert_eq!((bytes[4], bytes.len()), (2, MAP_HEADER_LEN + 40 * HASH_LEN));
        assert_eq!(BlockMap::decode(&bytes).unwrap(), v2);
        let mut new = old.clone();
        new[30 * 1024] ^= 1;
        let mut r = BlockReader::new(&new[..], bs, Some(&v2));
        let delta = read_all(&mut r).await;
        let scan = r.into_scan();
        assert_eq!((scan.kind, scan.stored_blocks), (HashKind::Xxh3, 1));
        assert!(scan.cvs.is_empty());
        assert_eq!(scan.checksum, crate::stream::Checksum::of(&new));
        assert_eq!(delta[4], 2);
        assert_eq!(delta.len(), DELTA_HEADER_LEN + 2 * RECORD_HEAD_LEN + 1024);
        assert_eq!(apply(&old, &delta, bs, new.len() as u64), new);
    }
}
