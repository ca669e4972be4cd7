//! Decoding WAL records just far enough to learn which relation blocks
//! they change ([`WalDecoder`], [`ChangedBlocks`]): what lets an
//! incremental backup read only the blocks that changed since its
//! reference started, the way PostgreSQL 17's WAL summaries do, on every
//! PostgreSQL from 12 to 18.
//!
//! The decoder takes the bytes of whole segments in order, checks every
//! page header (its address, flags and magic), reassembles each record
//! across pages, checks its CRC-32C and its link to the record before it,
//! and reads the block references of its header
//! (`src/include/access/xlogrecord.h`). Main-fork block references are
//! collected; a relation created or truncated (`XLOG_SMGR_CREATE`,
//! `XLOG_SMGR_TRUNCATE`) is marked whole, and so is every relation a
//! commit or abort drops: its relfilenode may be used again after this
//! backup's start, by a file whose blocks written without WAL (bulk
//! extension) are not the reference's (PostgreSQL 17's WAL summarizer
//! does the same). Anything that changes relation
//! files in a way block references do not describe makes the whole set
//! *unsure* ([`ChangedBlocks::unsure`]), and the caller then compares file
//! contents instead:
//! - a record flagged `XLR_SPECIAL_REL_UPDATE` other than the two above
//!   (database and tablespace creation, copy and removal: `CREATE
//!   DATABASE … STRATEGY FILE_COPY` copies files without WAL);
//! - `wal_level` lowered to `minimal`, under which relations can be
//!   written without WAL.
//!
//! What block references never cover, and the caller must not trust them
//! for: forks other than main (free-space maps are not WAL-logged, and
//! visibility-map bits are cleared without a reference to the map page),
//! unlogged and temporary relations, and every non-relation file.
//!
//! Pure: no I/O; the caller hands in bytes.

use std::collections::HashMap;

use thiserror::Error;

/// `DEFAULTTABLESPACE_OID`: `base/`.
pub const DEFAULT_TABLESPACE: u32 = 1663;
/// `GLOBALTABLESPACE_OID`: `global/`.
pub const GLOBAL_TABLESPACE: u32 = 1664;

const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const RECORD_HEADER: usize = 24;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_ALL_FLAGS: u16 = 0x000F;
const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
const XLR_MAX_BLOCK_ID: u8 = 32;
const BLOCK_ID_DATA_SHORT: u8 = 255;
const BLOCK_ID_DATA_LONG: u8 = 254;
const BLOCK_ID_ORIGIN: u8 = 253;
const BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
const RM_XLOG: u8 = 0;
const RM_XACT: u8 = 1;
/// `XLOG_XACT_OPMASK` and the operations whose records may drop
/// relations: commit, abort and their prepared forms.
const XLOG_XACT_OPMASK: u8 = 0x70;
const XACT_DROPS: [u8; 4] = [0x00, 0x20, 0x30, 0x40];
/// `XLOG_XACT_HAS_INFO`: an `xl_xact_xinfo` follows the timestamp.
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
const RM_SMGR: u8 = 2;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_PARAMETER_CHANGE: u8 = 0x60;
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
/// A record longer than this is damage (PostgreSQL's own limit is 1 GiB).
const MAX_RECORD: usize = 1 << 30;
/// A relation with more changed blocks than this is read whole.
const MAX_BLOCKS_PER_RELATION: usize = 1 << 20;
/// Past this many block numbers held in all, the set gives up (unsure):
/// memory stays bounded (64 MiB) whatever the WAL volume.
const MAX_BLOCKS_HELD: usize = 16 << 20;

/// One relation: tablespace, database and relfilenode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFile {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
}

/// What WAL says of one relation's main fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelChange {
    /// Created or truncated, or too many blocks: read it whole.
    Whole,
    /// These blocks changed (sorted and unique after [`ChangedBlocks::finish`]).
    Blocks(Vec<u32>),
}

/// What one file (a segment of a relation's main fork) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChange {
    /// No block of it changed.
    Unchanged,
    /// Read it whole.
    Whole,
    /// These blocks of it changed, numbered within the file, sorted.
    Blocks(Vec<u32>),
}

/// The main-fork blocks WAL changed, by relation.
#[derive(Debug, Default)]
pub struct ChangedBlocks {
    rels: HashMap<RelFile, (RelChange, usize)>,
    held: usize,
    /// The block added last: records often name the same block again.
    last: Option<(RelFile, u32)>,
    /// Why the set cannot be trusted, when it cannot.
    pub unsure: Option<String>,
    /// Records decoded.
    pub records: u64,
}

impl ChangedBlocks {
    fn add(&mut self, rel: RelFile, block: u32) {
        if self.unsure.is_some() || self.last == Some((rel, block)) {
            return;
        }
        self.last = Some((rel, block));
        let (change, compacted) = self
            .rels
            .entry(rel)
            .or_insert_with(|| (RelChange::Blocks(Vec::new()), 0));
        let RelChange::Blocks(blocks) = change else {
            return;
        };
        if blocks.last() == Some(&block) {
            return;
        }
        blocks.push(block);
        self.held += 1;
        // Compact when the list doubled since it last was.
        if blocks.len() >= 1024 && blocks.len() >= 2 * *compacted {
            let before = blocks.len();
            blocks.sort_unstable();
            blocks.dedup();
            self.held -= before - blocks.len();
            *compacted = blocks.len();
            if blocks.len() > MAX_BLOCKS_PER_RELATION {
                self.held -= blocks.len();
                *change = RelChange::Whole;
            }
        }
        if self.held > MAX_BLOCKS_HELD {
            self.unsure = Some(format!(
                "WAL changed more than {MAX_BLOCKS_HELD} blocks since the reference started"
            ));
            self.rels.clear();
        }
    }

    fn whole(&mut self, rel: RelFile) {
        self.last = None;
        if let Some((RelChange::Blocks(b), _)) = self.rels.get(&rel) {
            self.held -= b.len();
        }
        self.rels.insert(rel, (RelChange::Whole, 0));
    }

    fn set_unsure(&mut self, why: String) {
        if self.unsure.is_none() {
            self.unsure = Some(why);
            self.rels.clear();
            self.held = 0;
        }
    }

    /// Sorts and deduplicates every list; call once decoding is done.
    pub fn finish(&mut self) {
        for (change, _) in self.rels.values_mut() {
            if let RelChange::Blocks(b) = change {
                b.sort_unstable();
                b.dedup();
            }
        }
    }

    /// Relations with any change.
    pub fn relations(&self) -> usize {
        self.rels.len()
    }

    /// Distinct blocks named (after [`ChangedBlocks::finish`]).
    pub fn blocks(&self) -> usize {
        self.rels
            .values()
            .map(|(c, _)| match c {
                RelChange::Blocks(b) => b.len(),
                RelChange::Whole => 0,
            })
            .sum()
    }

    /// What the file holding blocks `first..first + count` of `rel`'s main
    /// fork needs.
    pub fn for_file(&self, rel: RelFile, first: u32, count: u32) -> FileChange {
        match self.rels.get(&rel) {
            None => FileChange::Unchanged,
            Some((RelChange::Whole, _)) => FileChange::Whole,
            Some((RelChange::Blocks(b), _)) => {
                let end = first.saturating_add(count);
                let lo = b.partition_point(|&x| x < first);
                let hi = b.partition_point(|&x| x < end);
                if lo == hi {
                    FileChange::Unchanged
                } else {
                    FileChange::Blocks(b[lo..hi].iter().map(|x| x - first).collect())
                }
            }
        }
    }
}

/// A main-fork relation file's relation and segment number, from its path
/// in the data directory: `base/<db>/<rel>[.<n>]`, `global/<rel>[.<n>]`
/// or `pg_tblspc/<spc>/<version dir>/<db>/<rel>[.<n>]`. `None` for any
/// other file (other forks, temporary relations, non-relation files).
pub fn main_fork_file(path: &str) -> Option<(RelFile, u32)> {
    let parts: Vec<&str> = path.split('/').collect();
    let (spc, db, file) = match parts.as_slice() {
        ["base", db, file] => (DEFAULT_TABLESPACE, number(db)?, *file),
        ["global", file] => (GLOBAL_TABLESPACE, 0, *file),
        ["pg_tblspc", spc, _version, db, file] => (number(spc)?, number(db)?, *file),
        _ => return None,
    };
    let (rel, segment) = match file.split_once('.') {
        Some((rel, seg)) => (number(rel)?, number(seg)?),
        None => (number(file)?, 0),
    };
    Some((RelFile { spc, db, rel }, segment))
}

/// A decimal number as PostgreSQL names files: digits only, no leading
/// zero.
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WalDecodeError {
    #[error("WAL page at {at} {reason}")]
    Page { at: String, reason: String },
    #[error("WAL record at {at} {reason}")]
    Record { at: String, reason: String },
    #[error("WAL ends at {at}, before {end}")]
    Ended { at: String, end: String },
}

fn lsn(x: u64) -> String {
    format!("{:X}/{:X}", x >> 32, x as u32)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn align8(x: usize) -> usize {
    (x + 7) & !7
}

/// Decodes the records that start in `[start, end)` from whole segments
/// fed in order ([`WalDecoder::begin_segment`], [`WalDecoder::feed`]),
/// collecting the blocks they change. `start` must be a record's start
/// (a backup's start LSN is: the redo point of its checkpoint).
pub struct WalDecoder {
    major: u32,
    seg_size: u64,
    /// The cluster's system identifier and timeline: long page headers
    /// must name the one, page headers no later timeline than the other.
    system_identifier: u64,
    timeline: u32,
    end: u64,
    /// The next LSN wanted: pages wholly before it are skipped.
    next: u64,
    page_size: usize,
    /// The page being filled, and its address.
    page: Vec<u8>,
    page_addr: u64,
    magic: Option<u16>,
    /// The record being reassembled, its start and total length (0: none).
    rec: Vec<u8>,
    rec_start: u64,
    rec_len: usize,
    prev: Option<u64>,
    done: bool,
    changes: ChangedBlocks,
}

impl WalDecoder {
    /// A decoder for WAL of PostgreSQL `major` with segments of `seg_size`
    /// bytes, of the cluster `system_identifier` on `timeline`, for the
    /// records starting in `[start, end)`.
    pub fn new(
        major: u32,
        seg_size: u64,
        system_identifier: u64,
        timeline: u32,
        start: u64,
        end: u64,
    ) -> WalDecoder {
        WalDecoder {
            major,
            seg_size,
            system_identifier,
            timeline,
            end,
            next: start,
            page_size: 0,
            page: Vec::new(),
            page_addr: 0,
            magic: None,
            rec: Vec::new(),
            rec_start: 0,
            rec_len: 0,
            prev: None,
            done: start >= end,
            changes: ChangedBlocks::default(),
        }
    }

    /// Whether every record before `end` was decoded.
    pub fn done(&self) -> bool {
        self.done
    }

    /// The first LSN still wanted (the caller may skip segments before it).
    pub fn wants(&self) -> u64 {
        self.next
    }

    /// Starts the segment that begins at `seg_start`.
    pub fn begin_segment(&mut self, seg_start: u64) {
        self.page.clear();
        self.page_addr = seg_start;
    }

    /// Feeds the next bytes of the current segment.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), WalDecodeError> {
        while !bytes.is_empty() && !self.done {
            if self.page_size == 0 {
                // The long header of the first page gives the page size.
                let take = (LONG_HEADER - self.page.len()).min(bytes.len());
                self.page.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.page.len() < LONG_HEADER {
                    return Ok(());
                }
                let size = u32_at(&self.page, 36) as usize;
                if !size.is_power_of_two() || !(1024..=65536).contains(&size) {
                    return Err(self.page_err(format!("gives WAL page size {size}")));
                }
                self.page_size = size;
                continue;
            }
            if self.page.is_empty() && bytes.len() >= self.page_size {
                // Whole pages straight from the input, not copied.
                let (page, rest) = bytes.split_at(self.page_size);
                bytes = rest;
                let result = self.page_done(page);
                self.page_addr += self.page_size as u64;
                result?;
                continue;
            }
            let take = (self.page_size - self.page.len()).min(bytes.len());
            self.page.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.page.len() == self.page_size {
                let page = std::mem::take(&mut self.page);
                let result = self.page_done(&page);
                self.page = page;
                self.page.clear();
                self.page_addr += self.page_size as u64;
                result?;
            }
        }
        Ok(())
    }

    /// After the last segment: the changes, or why WAL ended too soon.
    pub fn finish(mut self) -> Result<ChangedBlocks, WalDecodeError> {
        if !self.done {
            return Err(WalDecodeError::Ended {
                at: lsn(self.next),
                end: lsn(self.end),
            });
        }
        self.changes.finish();
        Ok(self.changes)
    }

    fn page_err(&self, reason: String) -> WalDecodeError {
        WalDecodeError::Page {
            at: lsn(self.page_addr),
            reason,
        }
    }

    fn page_done(&mut self, page: &[u8]) -> Result<(), WalDecodeError> {
        let addr = self.page_addr;
        let size = self.page_size as u64;
        if self.done || addr + size <= self.next {
            return Ok(());
        }
        let magic = u16_at(page, 0);
        let info = u16_at(page, 2);
        let page_addr = u64_at(page, 8);
        let rem_len = u32_at(page, 16) as usize;
        if page_addr != addr {
            return Err(self.page_err(format!(
                "has address {}: not this segment's WAL (recycled, or another timeline's)",
                lsn(page_addr)
            )));
        }
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(self.page_err(format!("has unknown flags 0x{info:04X}")));
        }
        if super::page::pg_major_for_wal_magic(magic) != Some(self.major) {
            return Err(self.page_err(format!(
                "has magic 0x{magic:04X}, not PostgreSQL {}'s",
                self.major
            )));
        }
        let tli = u32_at(page, 4);
        if tli == 0 || tli > self.timeline {
            return Err(self.page_err(format!(
                "is of timeline {tli}, past this backup's {}",
                self.timeline
            )));
        }
        match self.magic {
            None => self.magic = Some(magic),
            Some(m) if m != magic => {
                return Err(
                    self.page_err(format!("has magic 0x{magic:04X}, earlier pages 0x{m:04X}"))
                )
            }
            Some(_) => {}
        }
        let long = info & XLP_LONG_HEADER != 0;
        if long != (addr % self.seg_size == 0) {
            return Err(self.page_err("has the wrong header kind".into()));
        }
        if long && u32_at(page, 36) as usize != self.page_size {
            return Err(self.page_err("changes the WAL page size".into()));
        }
        if long && u64_at(page, 24) != self.system_identifier {
            return Err(self.page_err(format!(
                "is of the cluster {}, not this one ({})",
                u64_at(page, 24),
                self.system_identifier
            )));
        }
        if long && u64::from(u32_at(page, 32)) != self.seg_size {
            return Err(self.page_err("gives another segment size".into()));
        }
        let header = if long { LONG_HEADER } else { SHORT_HEADER };
        let contrecord = info & XLP_FIRST_IS_CONTRECORD != 0;
        let mut off;
        if self.rec_len > 0 {
            if !contrecord {
                // The record was never finished (a crash cut it, and
                // PostgreSQL wrote over its tail): it never happened.
                self.rec.clear();
                self.rec_len = 0;
                off = header;
            } else {
                let want = self.rec_len - self.rec.len();
                if rem_len != want {
                    return Err(self.page_err(format!(
                        "continues a record with {rem_len} bytes, {want} are missing"
                    )));
                }
                let take = want.min(page.len() - header);
                self.rec.extend_from_slice(&page[header..header + take]);
                off = header + take;
                if self.rec.len() < self.rec_len {
                    self.next = addr + size;
                    return Ok(());
                }
                self.record_done(addr)?;
                if self.done || self.next >= addr + size {
                    return Ok(());
                }
                off = align8(off);
            }
        } else if self.next > addr + header as u64 {
            off = (self.next - addr) as usize;
        } else if contrecord {
            if self.prev.is_some() {
                return Err(self.page_err("continues a record that never began".into()));
            }
            // Decoding starts here, inside a record begun before `start`.
            off = header + align8(rem_len);
            if off >= page.len() {
                self.next = addr + size;
                return Ok(());
            }
        } else {
            off = header;
        }
        while off + 4 <= page.len() {
            let start = addr + off as u64;
            if start >= self.end {
                self.done = true;
                return Ok(());
            }
            let total = u32_at(page, off) as usize;
            if total == 0 {
                return Err(WalDecodeError::Ended {
                    at: lsn(start),
                    end: lsn(self.end),
                });
            }
            if !(RECORD_HEADER..=MAX_RECORD).contains(&total) {
                return Err(WalDecodeError::Record {
                    at: lsn(start),
                    reason: format!("claims {total} bytes"),
                });
            }
            self.rec_start = start;
            if off + total <= page.len() {
                // Whole on this page: decoded where it lies.
                self.finish_record(&page[off..off + total], addr)?;
                off += total;
            } else {
                self.rec.clear();
                self.rec_len = total;
                self.rec.extend_from_slice(&page[off..]);
                break;
            }
            if self.done || self.next >= addr + size {
                return Ok(());
            }
            off = align8(off);
        }
        self.next = addr + size;
        Ok(())
    }

    /// A whole record is in `rec`; `page_addr` is the page it ends on.
    fn record_done(&mut self, page_addr: u64) -> Result<(), WalDecodeError> {
        let rec = std::mem::take(&mut self.rec);
        self.rec_len = 0;
        let result = self.finish_record(&rec, page_addr);
        self.rec = rec;
        self.rec.clear();
        result
    }

    /// Decodes the whole record `r` (which began at `rec_start`).
    fn finish_record(&mut self, r: &[u8], page_addr: u64) -> Result<(), WalDecodeError> {
        self.decode(r, page_addr)?;
        self.prev = Some(self.rec_start);
        self.changes.records += 1;
        Ok(())
    }

    fn decode(&mut self, r: &[u8], page_addr: u64) -> Result<(), WalDecodeError> {
        let at = self.rec_start;
        let err = |reason: String| WalDecodeError::Record {
            at: lsn(at),
            reason,
        };
        if r.len() < RECORD_HEADER {
            return Err(err("is shorter than its header".into()));
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&r[RECORD_HEADER..]), &r[..20]);
        if crc != u32_at(r, 20) {
            return Err(err("fails its CRC".into()));
        }
        let prev = u64_at(r, 8);
        if let Some(p) = self.prev {
            if prev != p {
                return Err(err(format!(
                    "links to {}, not to the record before it at {}",
                    lsn(prev),
                    lsn(p)
                )));
            }
        }
        let info = r[16];
        let rmid = r[17];
        let main = self.block_refs(r).map_err(err)?;
        let kind = info & 0xF0;
        match (rmid, kind) {
            (RM_SMGR, XLOG_SMGR_CREATE) if main.len() >= 12 => {
                self.changes.whole(rel_at(main, 0));
            }
            (RM_SMGR, XLOG_SMGR_TRUNCATE) if main.len() >= 16 => {
                self.changes.whole(rel_at(main, 4));
            }
            // A commit or abort that drops relations.
            (RM_XACT, _) if XACT_DROPS.contains(&(info & XLOG_XACT_OPMASK)) => {
                match dropped_relations(info, main) {
                    Some(rels) => {
                        for rel in rels {
                            self.changes.whole(rel);
                        }
                    }
                    None => self.changes.set_unsure(format!(
                        "the transaction record at {} cannot be read for the relations it drops",
                        lsn(at)
                    )),
                }
            }
            _ if info & XLR_SPECIAL_REL_UPDATE != 0 => {
                self.changes.set_unsure(format!(
                    "the WAL record at {} (resource manager {rmid}, info 0x{info:02X}) changes relation files without block references (a database or tablespace created, copied or dropped)",
                    lsn(at)
                ));
            }
            (RM_XLOG, XLOG_PARAMETER_CHANGE) if main.len() >= 24 => {
                if u32_at(main, 20) == 0 {
                    self.changes.set_unsure(format!(
                        "wal_level was set to minimal at {}, which writes some relations without WAL",
                        lsn(at)
                    ));
                }
            }
            (RM_XLOG, XLOG_SWITCH) => {
                // The rest of the segment is unused.
                self.next = (page_addr / self.seg_size + 1) * self.seg_size;
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads the block references of record `r`, collecting main-fork
    /// blocks; returns the record's main data.
    fn block_refs<'r>(&mut self, r: &'r [u8]) -> Result<&'r [u8], String> {
        let total = r.len();
        let mut p = RECORD_HEADER;
        let mut data_total = 0usize;
        let mut main_len = 0usize;
        let mut last: Option<RelFile> = None;
        let short = || "has block headers longer than the record".to_string();
        let need = |p: usize, n: usize| if p + n <= total { Ok(()) } else { Err(short()) };
        while total - p > data_total {
            need(p, 1)?;
            let id = r[p];
            p += 1;
            match id {
                BLOCK_ID_DATA_SHORT => {
                    need(p, 1)?;
                    main_len = r[p] as usize;
                    p += 1;
                    data_total += main_len;
                    break;
                }
                BLOCK_ID_DATA_LONG => {
                    need(p, 4)?;
                    main_len = u32_at(r, p) as usize;
                    p += 4;
                    data_total += main_len;
                    break;
                }
                BLOCK_ID_ORIGIN => {
                    need(p, 2)?;
                    p += 2;
                }
                BLOCK_ID_TOPLEVEL_XID => {
                    need(p, 4)?;
                    p += 4;
                }
                0..=XLR_MAX_BLOCK_ID => {
                    need(p, 3)?;
                    let flags = r[p];
                    data_total += u16_at(r, p + 1) as usize;
                    p += 3;
                    if flags & BKPBLOCK_HAS_IMAGE != 0 {
                        need(p, 5)?;
                        let image_len = u16_at(r, p) as usize;
                        let bimg_info = r[p + 4];
                        p += 5;
                        // The compression bits moved in PostgreSQL 15.
                        let compressed = if self.major >= 15 {
                            bimg_info & 0x1C != 0
                        } else {
                            bimg_info & 0x02 != 0
                        };
                        if bimg_info & BKPIMAGE_HAS_HOLE != 0 && compressed {
                            need(p, 2)?;
                            p += 2;
                        }
                        data_total += image_len;
                    }
                    let rel = if flags & BKPBLOCK_SAME_REL != 0 {
                        last.ok_or("refers to the previous block's relation, with none before")?
                    } else {
                        need(p, 12)?;
                        let rel = rel_at(r, p);
                        p += 12;
                        rel
                    };
                    last = Some(rel);
                    need(p, 4)?;
                    let block = u32_at(r, p);
                    p += 4;
                    if flags & BKPBLOCK_FORK_MASK == 0 {
                        self.changes.add(rel, block);
                    }
                }
                other => return Err(format!("has an unknown block id {other}")),
            }
        }
        if p + data_total != total {
            return Err(format!(
                "holds {} bytes of headers and {data_total} of data, but is {total} bytes long",
                p
            ));
        }
        Ok(&r[total - main_len..])
    }
}

/// The relations a commit or abort record (`xl_xact_commit`,
/// `xl_xact_abort`, and their prepared forms) drops: after the timestamp,
/// the optional `xinfo`, database info, subtransactions, then the
/// relfilenodes (`ParseCommitRecord`, `ParseAbortRecord`; the same order
/// in PostgreSQL 12 to 18). `None` when the lengths do not fit.
fn dropped_relations(info: u8, main: &[u8]) -> Option<Vec<RelFile>> {
    let mut p = 8usize;
    let take = |p: &mut usize, n: usize| -> Option<usize> {
        let at = *p;
        *p = p.checked_add(n).filter(|&e| e <= main.len())?;
        Some(at)
    };
    if main.len() < 8 {
        return None;
    }
    if info & XLOG_XACT_HAS_INFO == 0 {
        return Some(Vec::new());
    }
    let xinfo = u32_at(main, take(&mut p, 4)?);
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        take(&mut p, 8)?;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = u32_at(main, take(&mut p, 4)?) as usize;
        take(&mut p, n.checked_mul(4)?)?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILENODES == 0 {
        return Some(Vec::new());
    }
    let n = u32_at(main, take(&mut p, 4)?) as usize;
    let at = take(&mut p, n.checked_mul(12)?)?;
    Some((0..n).map(|i| rel_at(main, at + 12 * i)).collect())
}

fn rel_at(b: &[u8], off: usize) -> RelFile {
    RelFile {
        spc: u32_at(b, off),
        db: u32_at(b, off + 4),
        rel: u32_at(b, off + 8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_000_000_000_000_000_001;
    const PAGE: usize = 8192;

    /// Builds WAL segments page by page from records, as PostgreSQL lays
    /// them out.
    struct Builder {
        magic: u16,
        bytes: Vec<u8>,
        /// Position of the next byte to write (an LSN; segments start at 0).
        pos: u64,
        prev: u64,
        starts: Vec<u64>,
    }

    impl Builder {
        fn new(major: u32) -> Builder {
            let magic = crate::wal::page::WAL_PAGE_MAGICS
                .iter()
                .find(|(_, m)| *m == major)
                .expect("a known major")
                .0;
            let mut b = Builder {
                magic,
                bytes: Vec::new(),
                pos: 0,
                prev: 0,
                starts: Vec::new(),
            };
            b.page_header(0);
            b
        }

        fn page_header(&mut self, rem: u32) {
            let long = self.pos % SEG == 0;
            let mut h = vec![0u8; if long { LONG_HEADER } else { SHORT_HEADER }];
            h[0..2].copy_from_slice(&self.magic.to_le_bytes());
            let mut info = if long { XLP_LONG_HEADER } else { 0 };
            if rem > 0 {
                info |= XLP_FIRST_IS_CONTRECORD;
            }
            h[2..4].copy_from_slice(&info.to_le_bytes());
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h[8..16].copy_from_slice(&self.pos.to_le_bytes());
            h[16..20].copy_from_slice(&rem.to_le_bytes());
            if long {
                h[24..32].copy_from_slice(&SYSID.to_le_bytes());
                h[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
                h[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
            }
            self.put_raw(&h);
        }

        fn put_raw(&mut self, b: &[u8]) {
            self.bytes.extend_from_slice(b);
            self.pos += b.len() as u64;
        }

        /// Writes `body` (everything after the 24-byte header) as a record.
        fn record(&mut self, rmid: u8, info: u8, body: &[u8]) -> u64 {
            let total = RECORD_HEADER + body.len();
            let mut r = vec![0u8; RECORD_HEADER];
            r[0..4].copy_from_slice(&(total as u32).to_le_bytes());
            r[8..16].copy_from_slice(&self.prev.to_le_bytes());
            r[16] = info;
            r[17] = rmid;
            r.extend_from_slice(body);
            let crc = crc32c::crc32c_append(crc32c::crc32c(&r[RECORD_HEADER..]), &r[..20]);
            r[20..24].copy_from_slice(&crc.to_le_bytes());
            let start = self.pos;
            self.starts.push(start);
            self.prev = start;
            let mut left: &[u8] = &r;
            loop {
                let room = PAGE - (self.pos as usize % PAGE);
                let take = room.min(left.len());
                self.put_raw(&left[..take]);
                left = &left[take..];
                if left.is_empty() {
                    break;
                }
                self.page_header(left.len() as u32);
            }
            self.align();
            start
        }

        fn align(&mut self) {
            let pad = (8 - self.pos as usize % 8) % 8;
            self.put_raw(&vec![0; pad]);
            if self.pos as usize % PAGE == 0 {
                self.page_header(0);
            }
        }

        /// Zero-fills to the end of the segment, pages keeping their
        /// headers.
        fn fill_segment(&mut self) {
            while self.pos % SEG != 0 {
                let room = PAGE - self.pos as usize % PAGE;
                self.put_raw(&vec![0; room]);
                if self.pos % SEG != 0 {
                    self.page_header(0);
                }
            }
        }

        /// After a switch: the rest of the segment unused, the next one
        /// begun.
        fn next_segment(&mut self) {
            self.fill_segment();
            self.page_header(0);
        }

        fn finish(mut self) -> Vec<u8> {
            self.fill_segment();
            self.bytes
        }
    }

    fn rel(r: u32) -> RelFile {
        RelFile {
            spc: DEFAULT_TABLESPACE,
            db: 5,
            rel: r,
        }
    }

    /// A record body with block references `(rel, fork, block, image)`
    /// and `main` data.
    fn body(major: u32, blocks: &[(RelFile, u8, u32, bool)], main: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        let mut data = Vec::new();
        let mut last = None;
        for (i, (r, fork, block, image)) in blocks.iter().enumerate() {
            h.push(i as u8);
            let mut flags = *fork;
            if *image {
                flags |= BKPBLOCK_HAS_IMAGE;
            }
            if last == Some(*r) {
                flags |= BKPBLOCK_SAME_REL;
            }
            h.push(flags);
            h.extend_from_slice(&3u16.to_le_bytes());
            data.extend_from_slice(&[1, 2, 3]);
            if *image {
                // A compressed image with a hole: the hole length follows.
                let compressed = if major >= 15 { 0x08 } else { 0x02 };
                h.extend_from_slice(&100u16.to_le_bytes());
                h.extend_from_slice(&40u16.to_le_bytes());
                h.push(BKPIMAGE_HAS_HOLE | compressed);
                h.extend_from_slice(&4000u16.to_le_bytes());
                data.extend_from_slice(&[7; 100]);
            }
            if last != Some(*r) {
                h.extend_from_slice(&r.spc.to_le_bytes());
                h.extend_from_slice(&r.db.to_le_bytes());
                h.extend_from_slice(&r.rel.to_le_bytes());
            }
            last = Some(*r);
            h.extend_from_slice(&block.to_le_bytes());
        }
        h.push(BLOCK_ID_TOPLEVEL_XID);
        h.extend_from_slice(&9u32.to_le_bytes());
        if main.len() < 256 {
            h.push(BLOCK_ID_DATA_SHORT);
            h.push(main.len() as u8);
        } else {
            h.push(BLOCK_ID_DATA_LONG);
            h.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
        h.extend_from_slice(&data);
        h.extend_from_slice(main);
        h
    }

    fn decode(
        major: u32,
        wal: &[u8],
        start: u64,
        end: u64,
        piece: usize,
    ) -> Result<ChangedBlocks, WalDecodeError> {
        let mut d = WalDecoder::new(major, SEG, SYSID, 1, start, end);
        for (i, seg) in wal.chunks(SEG as usize).enumerate() {
            let seg_start = i as u64 * SEG;
            if seg_start + SEG <= d.wants() {
                continue;
            }
            d.begin_segment(seg_start);
            for p in seg.chunks(piece) {
                d.feed(p)?;
            }
            if d.done() {
                break;
            }
        }
        d.finish()
    }

    #[test]
    fn block_references_across_pages_and_segments_are_collected() {
        for major in [14, 15] {
            let mut b = Builder::new(major);
            b.record(
                10,
                0,
                &body(major, &[(rel(1), 0, 3, true), (rel(1), 0, 9, false)], b"x"),
            );
            let start = b.record(10, 0, &body(major, &[(rel(2), 0, 5, false)], &[0; 10]));
            // A big record spanning pages, with a long main data part.
            b.record(
                11,
                0,
                &body(
                    major,
                    &[(rel(2), 0, 6, true), (rel(3), 1, 1, false)],
                    &vec![5; 20000],
                ),
            );
            // Many small ones, to reach the next segment.
            for i in 0..20000u32 {
                b.record(10, 0, &body(major, &[(rel(4), 0, i % 50, false)], b"abc"));
            }
            let end = b.record(10, 0, &body(major, &[(rel(5), 0, 1, false)], b""));
            b.record(10, 0, &body(major, &[(rel(6), 0, 1, false)], b""));
            let wal = b.finish();
            assert!(wal.len() as u64 > SEG, "spans two segments");
            for piece in [1 << 20, 777, 8192] {
                let c = decode(major, &wal, start, end, piece).unwrap();
                assert_eq!(c.unsure, None);
                assert_eq!(c.records, 20002);
                // Before start, at or after end, and other forks: absent.
                assert_eq!(c.for_file(rel(1), 0, 100), FileChange::Unchanged);
                assert_eq!(c.for_file(rel(5), 0, 100), FileChange::Unchanged);
                assert_eq!(c.for_file(rel(3), 0, 100), FileChange::Unchanged);
                assert_eq!(c.for_file(rel(2), 0, 100), FileChange::Blocks(vec![5, 6]));
                assert_eq!(c.for_file(rel(2), 6, 100), FileChange::Blocks(vec![0]));
                assert_eq!(
                    c.for_file(rel(4), 0, 100),
                    FileChange::Blocks((0..50).collect())
                );
                assert_eq!(c.blocks(), 52);
            }
        }
    }

    #[test]
    fn creation_truncation_and_database_copies_are_told() {
        let major = 16;
        let mut b = Builder::new(major);
        let start = b.record(10, 0, &body(major, &[(rel(1), 0, 3, false)], b""));
        let mut create = Vec::new();
        for x in [DEFAULT_TABLESPACE, 5, 7, 0] {
            create.extend_from_slice(&x.to_le_bytes());
        }
        b.record(
            RM_SMGR,
            XLOG_SMGR_CREATE | XLR_SPECIAL_REL_UPDATE,
            &body(major, &[], &create),
        );
        let mut truncate = 40u32.to_le_bytes().to_vec();
        for x in [DEFAULT_TABLESPACE, 5, 1, 7] {
            truncate.extend_from_slice(&x.to_le_bytes());
        }
        b.record(
            RM_SMGR,
            XLOG_SMGR_TRUNCATE | XLR_SPECIAL_REL_UPDATE,
            &body(major, &[], &truncate),
        );
        // A commit that drops relation 9, with two subtransactions, and
        // an abort that drops nothing.
        let mut commit = vec![0u8; 8];
        let xinfo = XACT_XINFO_HAS_SUBXACTS | XACT_XINFO_HAS_RELFILENODES;
        commit.extend_from_slice(&xinfo.to_le_bytes());
        commit.extend_from_slice(&2u32.to_le_bytes());
        commit.extend_from_slice(&[7; 8]);
        commit.extend_from_slice(&1u32.to_le_bytes());
        for x in [DEFAULT_TABLESPACE, 5, 9] {
            commit.extend_from_slice(&x.to_le_bytes());
        }
        b.record(10, 0, &body(major, &[(rel(9), 0, 3, false)], b""));
        b.record(
            RM_XACT,
            XLOG_XACT_HAS_INFO | XLR_SPECIAL_REL_UPDATE,
            &body(major, &[], &commit),
        );
        b.record(RM_XACT, 0x20, &body(major, &[], &[0; 8]));
        let mid = b.record(10, 0, &body(major, &[(rel(8), 0, 3, false)], b""));
        // CREATE DATABASE … FILE_COPY: the database resource manager.
        b.record(4, XLR_SPECIAL_REL_UPDATE, &body(major, &[], &[0; 16]));
        let end = b.record(10, 0, &body(major, &[], b""));
        let wal = b.finish();
        let c = decode(major, &wal, start, mid, 8192).unwrap();
        assert_eq!(c.unsure, None);
        assert_eq!(c.for_file(rel(7), 0, 10), FileChange::Whole);
        assert_eq!(c.for_file(rel(1), 0, 10), FileChange::Whole);
        assert_eq!(c.for_file(rel(9), 0, 10), FileChange::Whole);
        // The record at `end` itself is not this backup's to read.
        assert_eq!(c.for_file(rel(8), 0, 10), FileChange::Unchanged);
        let c = decode(major, &wal, start, end, 8192).unwrap();
        assert!(c.unsure.unwrap().contains("database or tablespace"));
        // wal_level minimal.
        let mut b = Builder::new(major);
        let start = b.record(10, 0, &body(major, &[], b""));
        let mut param = vec![0u8; 28];
        param[20..24].copy_from_slice(&0u32.to_le_bytes());
        b.record(RM_XLOG, XLOG_PARAMETER_CHANGE, &body(major, &[], &param));
        let end = b.record(10, 0, &body(major, &[], b""));
        let wal = b.finish();
        assert!(decode(major, &wal, start, end, 8192)
            .unwrap()
            .unsure
            .unwrap()
            .contains("minimal"));
    }

    #[test]
    fn a_switch_skips_to_the_next_segment() {
        let major = 15;
        let mut b = Builder::new(major);
        let start = b.record(10, 0, &body(major, &[(rel(1), 0, 1, false)], b""));
        b.record(RM_XLOG, XLOG_SWITCH, &body(major, &[], b""));
        b.next_segment();
        b.record(10, 0, &body(major, &[(rel(1), 0, 2, false)], b""));
        let end = b.record(10, 0, &body(major, &[], b""));
        let wal = b.finish();
        let c = decode(major, &wal, start, end, 8192).unwrap();
        assert_eq!(c.for_file(rel(1), 0, 10), FileChange::Blocks(vec![1, 2]));
    }

    #[test]
    fn damage_and_short_wal_are_errors() {
        let major = 15;
        let mut b = Builder::new(major);
        let start = b.record(10, 0, &body(major, &[(rel(1), 0, 1, false)], b""));
        let second = b.record(10, 0, &body(major, &[(rel(1), 0, 2, false)], b"hello"));
        let end = b.record(10, 0, &body(major, &[], b""));
        let wal = b.finish();
        decode(major, &wal, start, end, 8192).unwrap();
        let mut bad = wal.clone();
        bad[second as usize + 30] ^= 1;
        let e = decode(major, &bad, start, end, 8192).unwrap_err();
        assert!(e.to_string().contains("fails its CRC"), "{e}");
        // A page from elsewhere (a recycled segment).
        let mut bad = wal.clone();
        bad[8..16].copy_from_slice(&(7 * SEG).to_le_bytes());
        assert!(decode(major, &bad, start, end, 8192)
            .unwrap_err()
            .to_string()
            .contains("recycled"));
        // Another cluster's, another major's, or a later timeline's WAL.
        let mut bad = wal.clone();
        bad[24] ^= 1;
        let e = decode(major, &bad, start, end, 8192).unwrap_err();
        assert!(e.to_string().contains("not this one"), "{e}");
        let e = decode(16, &wal, start, end, 8192).unwrap_err();
        assert!(e.to_string().contains("not PostgreSQL 16's"), "{e}");
        let mut bad = wal.clone();
        bad[4] = 2;
        let e = decode(major, &bad, start, end, 8192).unwrap_err();
        assert!(e.to_string().contains("timeline 2"), "{e}");
        // A commit whose relation list runs past its end.
        let mut b = Builder::new(major);
        let start = b.record(10, 0, &body(major, &[], b""));
        let mut commit = vec![0u8; 8];
        commit.extend_from_slice(&XACT_XINFO_HAS_RELFILENODES.to_le_bytes());
        commit.extend_from_slice(&3u32.to_le_bytes());
        commit.extend_from_slice(&[1; 12]);
        b.record(RM_XACT, XLOG_XACT_HAS_INFO, &body(major, &[], &commit));
        let end = b.record(10, 0, &body(major, &[], b""));
        let bad_commit = b.finish();
        let c = decode(major, &bad_commit, start, end, 8192).unwrap();
        assert!(c.unsure.unwrap().contains("transaction record"));
        // WAL that stops before `end`.
        let e = decode(major, &wal, start, end + 4 * SEG, 8192).unwrap_err();
        assert!(matches!(e, WalDecodeError::Ended { .. }), "{e}");
    }

    #[test]
    fn relation_files_are_told_from_other_files() {
        let base = |rel| RelFile {
            spc: DEFAULT_TABLESPACE,
            db: 5,
            rel,
        };
        assert_eq!(main_fork_file("base/5/16384"), Some((base(16384), 0)));
        assert_eq!(main_fork_file("base/5/16384.3"), Some((base(16384), 3)));
        assert_eq!(
            main_fork_file("global/1262"),
            Some((
                RelFile {
                    spc: GLOBAL_TABLESPACE,
                    db: 0,
                    rel: 1262
                },
                0
            ))
        );
        assert_eq!(
            main_fork_file("pg_tblspc/16400/PG_15_202209061/5/16401.1"),
            Some((
                RelFile {
                    spc: 16400,
                    db: 5,
                    rel: 16401
                },
                1
            ))
        );
        for other in [
            "base/5/16384_fsm",
            "base/5/16384_vm.1",
            "base/5/16384_init",
            "base/5/t3_16384",
            "base/5/pg_filenode.map",
            "base/5/PG_VERSION",
            "global/pg_control",
            "pg_xact/0000",
            "base/5/016384",
            "base/x/16384",
        ] {
            assert_eq!(main_fork_file(other), None, "{other}");
        }
    }
}
