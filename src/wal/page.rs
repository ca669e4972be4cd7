//! The long page header at the start of every WAL segment
//! ([`LongPageHeader`], PostgreSQL's `XLogLongPageHeaderData` in
//! `src/include/access/xlog_internal.h`) and the mapping from its
//! `XLOG_PAGE_MAGIC` to a PostgreSQL major version.
//!
//! This module owns decoding those 40 bytes from a caller-supplied buffer and
//! checking them against the segment's file name. It must not do any I/O,
//! decode WAL records, or know where the bytes came from.

use thiserror::Error;

use super::lsn::{Lsn, SegmentNo, TimelineId, WalSegmentSize};

/// Size of `XLogLongPageHeaderData` on the 64-bit little-endian platforms
/// walvault supports (x86_64, aarch64): `SizeOfXLogLongPHD`.
pub const LONG_HEADER_LEN: usize = 40;

/// `XLP_LONG_HEADER`: set in `xlp_info` when the page has a long header,
/// which is true of (only) the first page of each segment.
pub const XLP_LONG_HEADER: u16 = 0x0002;

/// `XLP_ALL_FLAGS`: every `xlp_info` bit PostgreSQL defines
/// (`XLP_FIRST_IS_CONTRECORD`, `XLP_LONG_HEADER`, `XLP_BKP_REMOVABLE`,
/// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`).
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// Smallest WAL block size (`XLOG_BLCKSZ`) accepted, in bytes.
pub const MIN_WAL_BLOCK_SIZE: u32 = 1024;
/// Largest WAL block size (`XLOG_BLCKSZ`) accepted, in bytes.
pub const MAX_WAL_BLOCK_SIZE: u32 = 64 * 1024;

/// `XLOG_PAGE_MAGIC` of each supported PostgreSQL major version. The value
/// changes whenever the WAL format does, so it identifies the server.
pub const WAL_PAGE_MAGICS: [(u16, u32); 7] = [
    (0xD101, 12),
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// The PostgreSQL major version that writes WAL pages with `magic`, or
/// `None` for a magic walvault does not know.
pub fn pg_major_for_wal_magic(magic: u16) -> Option<u32> {
    WAL_PAGE_MAGICS
        .iter()
        .find(|(known, _)| *known == magic)
        .map(|(_, major)| *major)
}

/// Why bytes are not a usable long page header, or do not belong to the
/// segment they were found in.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PageHeaderError {
    /// Fewer bytes than a long page header.
    #[error("first WAL page has only {len} bytes, a long page header needs {LONG_HEADER_LEN}")]
    TooShort { len: usize },
    /// `xlp_magic` is not one of [`WAL_PAGE_MAGICS`].
    #[error("unknown WAL page magic 0x{magic:04X}")]
    UnknownMagic { magic: u16 },
    /// `xlp_magic` is a PostgreSQL WAL magic of a major walvault does not
    /// support (PostgreSQL 11 or older, or newer than the newest known).
    #[error("is WAL of PostgreSQL {which} (page magic 0x{magic:04X}); walvault supports PostgreSQL 12 to 18")]
    UnsupportedMajor { magic: u16, which: &'static str },
    /// `xlp_info` has bits PostgreSQL does not define.
    #[error("invalid WAL page info bits 0x{info:04X}: only 0x{XLP_ALL_FLAGS:04X} may be set")]
    InvalidInfoBits { info: u16 },
    /// `xlp_info` lacks `XLP_LONG_HEADER`.
    #[error("WAL page info 0x{info:04X} lacks the long header flag 0x{XLP_LONG_HEADER:04X}: not the first page of a segment")]
    NotLongHeader { info: u16 },
    /// `xlp_seg_size` differs from the segment size in use.
    #[error("WAL page header says segments are {found} bytes, expected {expected} ({} bytes)", .expected.bytes())]
    SegmentSizeMismatch {
        expected: WalSegmentSize,
        found: u32,
    },
    /// `xlp_pageaddr` is not the start of the named segment.
    #[error("WAL page address {found} does not match the segment start {expected}")]
    PageAddressMismatch { expected: Lsn, found: Lsn },
    /// `xlp_tli` is later than the timeline in the file name.
    #[error(
        "WAL page timeline {header_timeline} is ahead of the file name's timeline {name_timeline}"
    )]
    TimelineAhead {
        name_timeline: TimelineId,
        header_timeline: TimelineId,
    },
    /// `xlp_xlog_blcksz` is not a power of two in the accepted range.
    #[error("invalid WAL block size {block_size} bytes: must be a power of two from {MIN_WAL_BLOCK_SIZE} to {MAX_WAL_BLOCK_SIZE}")]
    InvalidBlockSize { block_size: u32 },
}

/// The decoded `XLogLongPageHeaderData` of a segment's first page.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LongPageHeader {
    /// `xlp_magic`: WAL format version, see [`pg_major_for_wal_magic`].
    pub magic: u16,
    /// `xlp_info`: flag bits.
    pub info: u16,
    /// `xlp_tli`: timeline of the first record on the page.
    pub timeline: TimelineId,
    /// `xlp_pageaddr`: LSN of the start of this page.
    pub page_address: Lsn,
    /// `xlp_rem_len`: bytes of a record continued from the previous page.
    pub rem_len: u32,
    /// `xlp_sysid`: the cluster's system identifier (`pg_control`).
    pub system_identifier: u64,
    /// `xlp_seg_size`: the cluster's WAL segment size in bytes.
    pub segment_size: u32,
    /// `xlp_xlog_blcksz`: the WAL page size (`XLOG_BLCKSZ`) in bytes.
    pub block_size: u32,
}

// Field offsets within XLogLongPageHeaderData (see the struct in
// xlog_internal.h; 4 bytes of alignment padding follow xlp_rem_len).
const AT_MAGIC: usize = 0;
const AT_INFO: usize = 2;
const AT_TLI: usize = 4;
const AT_PAGEADDR: usize = 8;
const AT_REM_LEN: usize = 16;
const AT_SYSID: usize = 24;
const AT_SEG_SIZE: usize = 32;
const AT_BLCKSZ: usize = 36;

type HeaderBytes = [u8; LONG_HEADER_LEN];

fn read_u16<const AT: usize>(h: &HeaderBytes) -> u16 {
    u16::from_le_bytes([h[AT], h[AT + 1]])
}

fn read_u32<const AT: usize>(h: &HeaderBytes) -> u32 {
    u32::from_le_bytes([h[AT], h[AT + 1], h[AT + 2], h[AT + 3]])
}

fn read_u64<const AT: usize>(h: &HeaderBytes) -> u64 {
    u64::from_le_bytes([
        h[AT],
        h[AT + 1],
        h[AT + 2],
        h[AT + 3],
        h[AT + 4],
        h[AT + 5],
        h[AT + 6],
        h[AT + 7],
    ])
}

fn write_at<const N: usize>(h: &mut HeaderBytes, at: usize, bytes: [u8; N]) {
    h[at..at + N].copy_from_slice(&bytes);
}

impl LongPageHeader {
    /// Decodes the long page header from the start of a segment's first
    /// page; `bytes` may be the whole page or segment. Checks what
    /// `XLogReaderValidatePageHeader` checks without context: the magic, the
    /// defined info bits and `XLP_LONG_HEADER`.
    pub fn parse(bytes: &[u8]) -> Result<LongPageHeader, PageHeaderError> {
        let h: &HeaderBytes = bytes
            .first_chunk()
            .ok_or(PageHeaderError::TooShort { len: bytes.len() })?;
        let header = LongPageHeader {
            magic: read_u16::<AT_MAGIC>(h),
            info: read_u16::<AT_INFO>(h),
            timeline: TimelineId(read_u32::<AT_TLI>(h)),
            page_address: Lsn(read_u64::<AT_PAGEADDR>(h)),
            rem_len: read_u32::<AT_REM_LEN>(h),
            system_identifier: read_u64::<AT_SYSID>(h),
            segment_size: read_u32::<AT_SEG_SIZE>(h),
            block_size: read_u32::<AT_BLCKSZ>(h),
        };
        if pg_major_for_wal_magic(header.magic).is_none() {
            // PostgreSQL's magics have counted up from 0xD000 (9.0 era):
            // one below 12's is an older server, one a little above 18's a
            // newer one.
            let (oldest, newest) = (
                WAL_PAGE_MAGICS[0].0,
                WAL_PAGE_MAGICS[WAL_PAGE_MAGICS.len() - 1].0,
            );
            return Err(match header.magic {
                m if (0xD000..oldest).contains(&m) => PageHeaderError::UnsupportedMajor {
                    magic: m,
                    which: "11 or older",
                },
                m if m > newest && m <= newest + 0x20 => PageHeaderError::UnsupportedMajor {
                    magic: m,
                    which: "19 or newer",
                },
                m => PageHeaderError::UnknownMagic { magic: m },
            });
        }
        if header.info & !XLP_ALL_FLAGS != 0 {
            return Err(PageHeaderError::InvalidInfoBits { info: header.info });
        }
        if header.info & XLP_LONG_HEADER == 0 {
            return Err(PageHeaderError::NotLongHeader { info: header.info });
        }
        Ok(header)
    }

    /// The header's 40 bytes in on-disk layout (padding zeroed); the inverse
    /// of [`LongPageHeader::parse`], useful to build test segments.
    pub fn to_bytes(&self) -> [u8; LONG_HEADER_LEN] {
        let mut h = [0u8; LONG_HEADER_LEN];
        write_at(&mut h, AT_MAGIC, self.magic.to_le_bytes());
        write_at(&mut h, AT_INFO, self.info.to_le_bytes());
        write_at(&mut h, AT_TLI, self.timeline.0.to_le_bytes());
        write_at(&mut h, AT_PAGEADDR, self.page_address.0.to_le_bytes());
        write_at(&mut h, AT_REM_LEN, self.rem_len.to_le_bytes());
        write_at(&mut h, AT_SYSID, self.system_identifier.to_le_bytes());
        write_at(&mut h, AT_SEG_SIZE, self.segment_size.to_le_bytes());
        write_at(&mut h, AT_BLCKSZ, self.block_size.to_le_bytes());
        h
    }

    /// The PostgreSQL major version that wrote this page, if known.
    pub fn pg_major(&self) -> Option<u32> {
        pg_major_for_wal_magic(self.magic)
    }

    /// Checks that this header belongs at the start of `segment` on
    /// `name_timeline` in a cluster with `size` segments, as
    /// `XLogReaderValidatePageHeader` does when reading it back.
    ///
    /// The header's timeline may be lower than the name's: after a
    /// promotion, the first segment of the new timeline begins with pages
    /// copied from the parent timeline.
    pub fn check_segment(
        &self,
        name_timeline: TimelineId,
        segment: SegmentNo,
        size: WalSegmentSize,
    ) -> Result<(), PageHeaderError> {
        if u64::from(self.segment_size) != size.bytes() {
            return Err(PageHeaderError::SegmentSizeMismatch {
                expected: size,
                found: self.segment_size,
            });
        }
        let expected = segment.start_lsn(size);
        if self.page_address != expected {
            return Err(PageHeaderError::PageAddressMismatch {
                expected,
                found: self.page_address,
            });
        }
        if self.timeline > name_timeline {
            return Err(PageHeaderError::TimelineAhead {
                name_timeline,
                header_timeline: self.timeline,
            });
        }
        let block = self.block_size;
        if !block.is_power_of_two() || !(MIN_WAL_BLOCK_SIZE..=MAX_WAL_BLOCK_SIZE).contains(&block) {
            return Err(PageHeaderError::InvalidBlockSize { block_size: block });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S16: WalSegmentSize = WalSegmentSize::DEFAULT;
    const SYSID: u64 = 7_301_234_567_890_123_456;

    /// An 8 KiB first page for segment 0x16B3 on timeline 2, written field by
    /// field (independently of `to_bytes`) with junk in the padding and body.
    fn page() -> Vec<u8> {
        let mut page = vec![0xA5u8; 8192];
        page[0..2].copy_from_slice(&0xD116u16.to_le_bytes());
        page[2..4].copy_from_slice(&(XLP_LONG_HEADER | 0x0001).to_le_bytes());
        page[4..8].copy_from_slice(&2u32.to_le_bytes());
        page[8..16].copy_from_slice(&0x16_B300_0000u64.to_le_bytes());
        page[16..20].copy_from_slice(&0x30u32.to_le_bytes());
        page[24..32].copy_from_slice(&SYSID.to_le_bytes());
        page[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        page
    }

    fn header() -> LongPageHeader {
        match LongPageHeader::parse(&page()) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn parses_constructed_page() {
        let h = header();
        assert_eq!(
            h,
            LongPageHeader {
                magic: 0xD116,
                info: 0x0003,
                timeline: TimelineId(2),
                page_address: Lsn(0x16_B300_0000),
                rem_len: 0x30,
                system_identifier: SYSID,
                segment_size: 16 << 20,
                block_size: 8192,
            }
        );
        assert_eq!(h.pg_major(), Some(17));
        assert_eq!(
            h.check_segment(TimelineId(2), SegmentNo(0x16B3), S16),
            Ok(())
        );
        // Exactly 40 bytes are enough.
        assert_eq!(LongPageHeader::parse(&page()[..LONG_HEADER_LEN]), Ok(h));
    }

    #[test]
    fn to_bytes_round_trip() {
        let h = header();
        let bytes = h.to_bytes();
        assert_eq!(LongPageHeader::parse(&bytes), Ok(h));
        let original = page();
        assert_eq!(bytes[..20], original[..20]);
        assert_eq!(bytes[20..24], [0, 0, 0, 0]);
        assert_eq!(bytes[24..], original[24..LONG_HEADER_LEN]);
    }

    #[test]
    fn magics() {
        for (magic, major) in [
            (0xD101, 12),
            (0xD106, 13),
            (0xD10D, 14),
            (0xD110, 15),
            (0xD113, 16),
            (0xD116, 17),
            (0xD118, 18),
        ] {
            assert_eq!(pg_major_for_wal_magic(magic), Some(major));
            let mut p = page();
            p[0..2].copy_from_slice(&magic.to_le_bytes());
            assert_eq!(
                LongPageHeader::parse(&p).map(|h| h.pg_major()),
                Ok(Some(major))
            );
        }
        assert_eq!(pg_major_for_wal_magic(0xABCD), None);
        assert_eq!(pg_major_for_wal_magic(0xD100), None);
    }

    #[test]
    fn unknown_magic() {
        let mut p = page();
        p[0..2].copy_from_slice(&0xABCDu16.to_le_bytes());
        let e = LongPageHeader::parse(&p);
        assert_eq!(e, Err(PageHeaderError::UnknownMagic { magic: 0xABCD }));
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("unknown WAL page magic 0xABCD".into())
        );
        // A big-endian reading of a valid magic is not accepted.
        let mut p = page();
        p[0..2].copy_from_slice(&0xD116u16.to_be_bytes());
        assert_eq!(
            LongPageHeader::parse(&p),
            Err(PageHeaderError::UnknownMagic { magic: 0x16D1 })
        );
    }

    #[test]
    fn unsupported_majors_are_named() {
        for (magic, which) in [(0xD098u16, "11 or older"), (0xD11A, "19 or newer")] {
            let mut p = page();
            p[0..2].copy_from_slice(&magic.to_le_bytes());
            let e = LongPageHeader::parse(&p).unwrap_err();
            assert_eq!(e, PageHeaderError::UnsupportedMajor { magic, which });
            assert!(e
                .to_string()
                .contains("walvault supports PostgreSQL 12 to 18"));
        }
    }

    #[test]
    fn too_short() {
        for len in [0, 1, 39] {
            let e = LongPageHeader::parse(&page()[..len]);
            assert_eq!(e, Err(PageHeaderError::TooShort { len }));
        }
        assert_eq!(
            LongPageHeader::parse(&[]).map_err(|e| e.to_string()),
            Err("first WAL page has only 0 bytes, a long page header needs 40".into())
        );
    }

    #[test]
    fn long_header_flag_missing() {
        let mut p = page();
        p[2..4].copy_from_slice(&0x0001u16.to_le_bytes());
        let e = LongPageHeader::parse(&p);
        assert_eq!(e, Err(PageHeaderError::NotLongHeader { info: 0x0001 }));
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("WAL page info 0x0001 lacks the long header flag 0x0002: not the first page of a segment".into())
        );
    }

    #[test]
    fn undefined_info_bits() {
        let mut p = page();
        p[2..4].copy_from_slice(&0x0012u16.to_le_bytes());
        let e = LongPageHeader::parse(&p);
        assert_eq!(e, Err(PageHeaderError::InvalidInfoBits { info: 0x0012 }));
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("invalid WAL page info bits 0x0012: only 0x000F may be set".into())
        );
    }

    #[test]
    fn check_segment_size_mismatch() {
        let s64 = match WalSegmentSize::new(64 << 20) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let e = header().check_segment(TimelineId(2), SegmentNo(0x16B3 / 4), s64);
        assert_eq!(
            e,
            Err(PageHeaderError::SegmentSizeMismatch {
                expected: s64,
                found: 16 << 20
            })
        );
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("WAL page header says segments are 16777216 bytes, expected 64 MiB (67108864 bytes)".into())
        );
    }

    #[test]
    fn check_segment_page_address_mismatch() {
        let e = header().check_segment(TimelineId(2), SegmentNo(0x16B4), S16);
        assert_eq!(
            e,
            Err(PageHeaderError::PageAddressMismatch {
                expected: Lsn(0x16_B400_0000),
                found: Lsn(0x16_B300_0000)
            })
        );
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("WAL page address 16/B3000000 does not match the segment start 16/B4000000".into())
        );
    }

    #[test]
    fn check_segment_timeline() {
        let h = header();
        // Pages copied from the parent timeline after a promotion are fine.
        assert_eq!(
            h.check_segment(TimelineId(3), SegmentNo(0x16B3), S16),
            Ok(())
        );
        let e = h.check_segment(TimelineId(1), SegmentNo(0x16B3), S16);
        assert_eq!(
            e,
            Err(PageHeaderError::TimelineAhead {
                name_timeline: TimelineId(1),
                header_timeline: TimelineId(2)
            })
        );
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("WAL page timeline 2 is ahead of the file name's timeline 1".into())
        );
    }

    #[test]
    fn check_segment_block_size() {
        for good in [1024, 2048, 4096, 8192, 16384, 32768, 65536] {
            let h = LongPageHeader {
                block_size: good,
                ..header()
            };
            assert_eq!(
                h.check_segment(TimelineId(2), SegmentNo(0x16B3), S16),
                Ok(())
            );
        }
        for bad in [0, 512, 3000, 131072, 8193] {
            let h = LongPageHeader {
                block_size: bad,
                ..header()
            };
            assert_eq!(
                h.check_segment(TimelineId(2), SegmentNo(0x16B3), S16),
                Err(PageHeaderError::InvalidBlockSize { block_size: bad }),
                "{bad}"
            );
        }
        let h = LongPageHeader {
            block_size: 3000,
            ..header()
        };
        assert_eq!(
            h.check_segment(TimelineId(2), SegmentNo(0x16B3), S16)
                .map_err(|e| e.to_string()),
            Err(
                "invalid WAL block size 3000 bytes: must be a power of two from 1024 to 65536"
                    .into()
            )
        );
    }

    #[test]
    fn pg_major_of_hand_built_header() {
        let h = LongPageHeader {
            magic: 0x1234,
            ..header()
        };
        assert_eq!(h.pg_major(), None);
    }
}
