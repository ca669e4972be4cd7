//! Synthetic WAL segments for tests of input validation: a valid long page
//! header (as PostgreSQL 15 writes it) followed by compressible filler.
//! Tests of real archiving use a real cluster's WAL instead.

use std::path::{Path, PathBuf};

use walvault::wal::{
    LongPageHeader, SegmentNo, TimelineId, WalFileName, WalSegmentSize, XLP_LONG_HEADER,
};

pub const PG15_MAGIC: u16 = 0xD110;

pub fn segment_bytes(
    system_identifier: u64,
    timeline: u32,
    segment: u64,
    size: WalSegmentSize,
    seed: u8,
) -> Vec<u8> {
    let header = LongPageHeader {
        magic: PG15_MAGIC,
        info: XLP_LONG_HEADER,
        timeline: TimelineId(timeline),
        page_address: SegmentNo(segment).start_lsn(size),
        rem_len: 0,
        system_identifier,
        segment_size: size.bytes() as u32,
        block_size: 8192,
    };
    let mut data = Vec::with_capacity(size.bytes() as usize);
    data.extend_from_slice(&header.to_bytes());
    let mut i: u64 = seed as u64;
    while data.len() < size.bytes() as usize {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let line = format!(
            "INSERT INTO t VALUES ({}, 'row {}');",
            i >> 40,
            (i >> 20) % 1000
        );
        data.extend_from_slice(line.as_bytes());
    }
    data.truncate(size.bytes() as usize);
    data
}

/// Writes a synthetic segment named for (timeline, segment) into `dir`.
pub fn write_segment(
    dir: &Path,
    system_identifier: u64,
    timeline: u32,
    segment: u64,
    size: WalSegmentSize,
    seed: u8,
) -> PathBuf {
    let name = WalFileName::segment_file_name(TimelineId(timeline), SegmentNo(segment), size);
    let path = dir.join(name);
    std::fs::write(
        &path,
        segment_bytes(system_identifier, timeline, segment, size, seed),
    )
    .expect("write segment");
    path
}

/// Where a local repository stores the WAL file `name` (its key under
/// `wal/`, as FORMAT.md gives it).
pub fn object_path(repo: &Path, name: &str) -> PathBuf {
    repo.join("wal")
        .join(&name[..8])
        .join(&name[..16])
        .join(name)
}
