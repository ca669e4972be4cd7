//! The names PostgreSQL gives to files in `pg_wal` and hands to
//! `archive_command` / `restore_command`: WAL segments, `.partial` segments,
//! `.backup` history files and timeline `.history` files ([`WalFileName`]).
//!
//! This module owns recognising and printing those names exactly as
//! PostgreSQL does (`XLogFileName`, `XLogFromFileName`, `IsXLogFileName`,
//! `IsPartialXLogFileName`, `IsBackupHistoryFileName`, `IsTLHistoryFileName`,
//! `BackupHistoryFileName`, `TLHistoryFileName` in
//! `src/include/access/xlog_internal.h`). It must not do any I/O, accept
//! paths, or know how or where files are stored.

use std::fmt;

use thiserror::Error;

use super::lsn::{is_upper_hex, Lsn, SegmentNo, TimelineId, WalSegmentSize};

/// What a valid name looks like, appended to the "not a WAL file name" errors.
const VALID_NAMES: &str = "valid names are 24 uppercase hex digits (timeline, log, segment, \
     like \"000000010000000000000001\"), optionally followed by \".partial\" or \
     \".XXXXXXXX.backup\", or 8 uppercase hex digits followed by \".history\"";

/// Length of a segment file name (`XLOG_FNAME_LEN`).
const SEGMENT_NAME_LEN: usize = 24;
/// Length of a timeline ID in hex.
const TIMELINE_HEX_LEN: usize = 8;

const PARTIAL_SUFFIX: &str = ".partial";
const HISTORY_SUFFIX: &str = ".history";
const BACKUP_SUFFIX: &str = ".backup";

/// Why a string is not one of the WAL file names PostgreSQL produces.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// Contains a directory separator: callers must pass the bare file name.
    #[error("\"{name}\" is a path, not a WAL file name; {VALID_NAMES}")]
    Path { name: String },
    /// The part after the first `.` is none of the known suffixes.
    #[error("\"{name}\" has an unknown suffix \"{suffix}\"; {VALID_NAMES}")]
    UnknownSuffix { name: String, suffix: String },
    /// The hex part before the suffix has the wrong number of characters.
    #[error("\"{name}\" is not a WAL file name: expected {expected} hex digits before the suffix; {VALID_NAMES}")]
    WrongLength { name: String, expected: usize },
    /// Hex digits in lowercase; PostgreSQL always writes uppercase.
    #[error("\"{name}\" is not a WAL file name: PostgreSQL writes hex digits in uppercase; {VALID_NAMES}")]
    Lowercase { name: String },
    /// Characters other than hex digits where hex digits belong.
    #[error("\"{name}\" is not a WAL file name: it has characters that are not hex digits; {VALID_NAMES}")]
    NotHex { name: String },
    /// A `.backup` name whose offset is not 8 uppercase hex digits.
    #[error("\"{name}\" is not a backup history file name: expected 24 uppercase hex digits, \".\", 8 uppercase hex digits and \".backup\"")]
    InvalidBackupOffset { name: String },
    /// A `.backup` name whose offset does not fit inside one segment.
    #[error("\"{name}\" is not a valid backup history file name for {size} segments: offset {offset:08X} is past the end of the segment")]
    BackupOffsetOutOfRange {
        name: String,
        offset: u32,
        size: WalSegmentSize,
    },
    /// Timeline 0, which PostgreSQL never uses.
    #[error("\"{name}\" names timeline 0, which does not exist (timelines start at 1)")]
    ZeroTimeline { name: String },
    /// The last 8 hex digits are not below `segments_per_xlog_id` for the
    /// segment size, so the name cannot come from a cluster of that size.
    #[error("\"{name}\" is not a valid WAL file name for {size} segments: the last 8 hex digits must be below {:08X}, found {seg:08X}", .size.segments_per_xlog_id())]
    SegmentOutOfRange {
        name: String,
        seg: u32,
        size: WalSegmentSize,
    },
    /// Not the 8-uppercase-hex-digit form of a timeline ID.
    #[error("\"{input}\" is not a timeline ID in file-name form: expected 8 uppercase hex digits, like \"00000002\"")]
    InvalidTimelineHex { input: String },
}

/// The kind of a [`WalFileName`], without its numbers.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum WalFileKind {
    /// A complete WAL segment.
    Segment,
    /// A segment cut short at a timeline switch (`.partial`).
    Partial,
    /// A backup history file (`.backup`).
    Backup,
    /// A timeline history file (`.history`).
    History,
}

impl fmt::Display for WalFileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WalFileKind::Segment => "WAL segment",
            WalFileKind::Partial => "partial WAL segment",
            WalFileKind::Backup => "backup history file",
            WalFileKind::History => "timeline history file",
        })
    }
}

/// A parsed WAL file name.
///
/// Names that encode a segment number keep the segment size they were parsed
/// (or built) with, because the file name splits the segment number into
/// `segment / segments_per_xlog_id` and `segment % segments_per_xlog_id`;
/// `Display` needs it to give the exact name back.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum WalFileName {
    /// `TTTTTTTTLLLLLLLLSSSSSSSS` (`XLogFileName`).
    Segment {
        timeline: TimelineId,
        segment: SegmentNo,
        size: WalSegmentSize,
    },
    /// `TTTTTTTTLLLLLLLLSSSSSSSS.partial`.
    Partial {
        timeline: TimelineId,
        segment: SegmentNo,
        size: WalSegmentSize,
    },
    /// `TTTTTTTTLLLLLLLLSSSSSSSS.OOOOOOOO.backup` (`BackupHistoryFileName`),
    /// where `offset` is the backup start LSN's offset in `segment`.
    Backup {
        timeline: TimelineId,
        segment: SegmentNo,
        offset: u32,
        size: WalSegmentSize,
    },
    /// `TTTTTTTT.history` (`TLHistoryFileName`).
    History { timeline: TimelineId },
}

/// Writes `TTTTTTTTLLLLLLLLSSSSSSSS` like `XLogFileName`. Segment numbers
/// beyond what a name can hold print with more digits rather than truncating.
fn write_segment_stem(
    f: &mut impl fmt::Write,
    timeline: TimelineId,
    segment: SegmentNo,
    size: WalSegmentSize,
) -> fmt::Result {
    let per_id = size.segments_per_xlog_id();
    write!(
        f,
        "{:08X}{:08X}{:08X}",
        timeline.0,
        segment.0 / per_id,
        segment.0 % per_id
    )
}

/// Checks that `part` of `name` is exactly `expected` uppercase hex digits.
fn check_hex(name: &str, part: &str, expected: usize) -> Result<(), NameError> {
    if part.len() != expected {
        return Err(NameError::WrongLength {
            name: name.to_owned(),
            expected,
        });
    }
    if is_upper_hex(part) {
        Ok(())
    } else if part.bytes().all(|b| b.is_ascii_hexdigit()) {
        Err(NameError::Lowercase {
            name: name.to_owned(),
        })
    } else {
        Err(NameError::NotHex {
            name: name.to_owned(),
        })
    }
}

/// Reads the 8 hex digits at `at` of an already checked hex string.
fn hex_word(name: &str, part: &str, at: usize) -> Result<u32, NameError> {
    part.get(at..at + 8)
        .and_then(|digits| u32::from_str_radix(digits, 16).ok())
        .ok_or_else(|| NameError::NotHex {
            name: name.to_owned(),
        })
}

fn nonzero_timeline(name: &str, tli: u32) -> Result<TimelineId, NameError> {
    if tli == 0 {
        Err(NameError::ZeroTimeline {
            name: name.to_owned(),
        })
    } else {
        Ok(TimelineId(tli))
    }
}

/// Decodes `TTTTTTTTLLLLLLLLSSSSSSSS` like `XLogFromFileName`, additionally
/// insisting that the segment part is below `XLogSegmentsPerXLogId`.
fn parse_segment_stem(
    name: &str,
    stem: &str,
    size: WalSegmentSize,
) -> Result<(TimelineId, SegmentNo), NameError> {
    check_hex(name, stem, SEGMENT_NAME_LEN)?;
    let timeline = nonzero_timeline(name, hex_word(name, stem, 0)?)?;
    let log = hex_word(name, stem, 8)?;
    let seg = hex_word(name, stem, 16)?;
    let per_id = size.segments_per_xlog_id();
    if u64::from(seg) >= per_id {
        return Err(NameError::SegmentOutOfRange {
            name: name.to_owned(),
            seg,
            size,
        });
    }
    // log < 2^32 and per_id <= 2^12, so this cannot overflow.
    Ok((
        timeline,
        SegmentNo(u64::from(log) * per_id + u64::from(seg)),
    ))
}

impl WalFileName {
    /// Recognises a bare file name (no directory) as PostgreSQL would, for a
    /// cluster whose segments are `size` bytes.
    pub fn parse(name: &str, size: WalSegmentSize) -> Result<WalFileName, NameError> {
        if name.contains(['/', '\\']) {
            return Err(NameError::Path {
                name: name.to_owned(),
            });
        }
        let (stem, suffix) = name.split_at(name.find('.').unwrap_or(name.len()));
        match suffix {
            "" => {
                let (timeline, segment) = parse_segment_stem(name, stem, size)?;
                Ok(WalFileName::Segment {
                    timeline,
                    segment,
                    size,
                })
            }
            PARTIAL_SUFFIX => {
                let (timeline, segment) = parse_segment_stem(name, stem, size)?;
                Ok(WalFileName::Partial {
                    timeline,
                    segment,
                    size,
                })
            }
            HISTORY_SUFFIX => {
                check_hex(name, stem, TIMELINE_HEX_LEN)?;
                let timeline = nonzero_timeline(name, hex_word(name, stem, 0)?)?;
                Ok(WalFileName::History { timeline })
            }
            _ => match suffix.strip_suffix(BACKUP_SUFFIX) {
                Some(middle) => Self::parse_backup(name, stem, middle, size),
                None => Err(NameError::UnknownSuffix {
                    name: name.to_owned(),
                    suffix: suffix.to_owned(),
                }),
            },
        }
    }

    /// The rest of [`WalFileName::parse`] for names ending in `.backup`;
    /// `middle` is what lies between the segment name and `.backup`.
    fn parse_backup(
        name: &str,
        stem: &str,
        middle: &str,
        size: WalSegmentSize,
    ) -> Result<WalFileName, NameError> {
        let (timeline, segment) = parse_segment_stem(name, stem, size)?;
        let offset = middle
            .strip_prefix('.')
            .filter(|digits| digits.len() == 8 && is_upper_hex(digits))
            .and_then(|digits| u32::from_str_radix(digits, 16).ok())
            .ok_or_else(|| NameError::InvalidBackupOffset {
                name: name.to_owned(),
            })?;
        if u64::from(offset) >= size.bytes() {
            return Err(NameError::BackupOffsetOutOfRange {
                name: name.to_owned(),
                offset,
                size,
            });
        }
        Ok(WalFileName::Backup {
            timeline,
            segment,
            offset,
            size,
        })
    }

    /// The name of segment `segment` on `timeline` (`XLogFileName`).
    pub fn segment_file_name(
        timeline: TimelineId,
        segment: SegmentNo,
        size: WalSegmentSize,
    ) -> String {
        let mut out = String::with_capacity(SEGMENT_NAME_LEN);
        // Writing to a String cannot fail.
        let _ = write_segment_stem(&mut out, timeline, segment, size);
        out
    }

    /// The timeline in the name.
    pub fn timeline(&self) -> TimelineId {
        match *self {
            WalFileName::Segment { timeline, .. }
            | WalFileName::Partial { timeline, .. }
            | WalFileName::Backup { timeline, .. }
            | WalFileName::History { timeline } => timeline,
        }
    }

    /// The segment number in the name; `None` for history files.
    pub fn segment(&self) -> Option<SegmentNo> {
        match *self {
            WalFileName::Segment { segment, .. }
            | WalFileName::Partial { segment, .. }
            | WalFileName::Backup { segment, .. } => Some(segment),
            WalFileName::History { .. } => None,
        }
    }

    /// The segment size the name was parsed or built with; `None` for
    /// history files, whose names do not depend on it.
    pub fn size(&self) -> Option<WalSegmentSize> {
        match *self {
            WalFileName::Segment { size, .. }
            | WalFileName::Partial { size, .. }
            | WalFileName::Backup { size, .. } => Some(size),
            WalFileName::History { .. } => None,
        }
    }

    /// The first LSN the name refers to: the segment start, or for a backup
    /// history file the backup's start LSN; `None` for history files.
    pub fn start_lsn(&self) -> Option<Lsn> {
        match *self {
            WalFileName::Segment { segment, size, .. }
            | WalFileName::Partial { segment, size, .. } => Some(segment.start_lsn(size)),
            WalFileName::Backup {
                segment,
                offset,
                size,
                ..
            } => segment.start_lsn(size).checked_add(u64::from(offset)),
            WalFileName::History { .. } => None,
        }
    }

    /// Which kind of file this is.
    pub fn kind(&self) -> WalFileKind {
        match self {
            WalFileName::Segment { .. } => WalFileKind::Segment,
            WalFileName::Partial { .. } => WalFileKind::Partial,
            WalFileName::Backup { .. } => WalFileKind::Backup,
            WalFileName::History { .. } => WalFileKind::History,
        }
    }

    /// True for files that are a whole segment in size (full and partial
    /// segments), false for the small text files.
    pub fn is_segment_sized(&self) -> bool {
        matches!(
            self,
            WalFileName::Segment { .. } | WalFileName::Partial { .. }
        )
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WalFileName::Segment {
                timeline,
                segment,
                size,
            } => write_segment_stem(f, timeline, segment, size),
            WalFileName::Partial {
                timeline,
                segment,
                size,
            } => {
                write_segment_stem(f, timeline, segment, size)?;
                f.write_str(PARTIAL_SUFFIX)
            }
            WalFileName::Backup {
                timeline,
                segment,
                offset,
                size,
            } => {
                write_segment_stem(f, timeline, segment, size)?;
                write!(f, ".{offset:08X}{BACKUP_SUFFIX}")
            }
            WalFileName::History { timeline } => {
                write!(f, "{:08X}{HISTORY_SUFFIX}", timeline.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(bytes: u64) -> WalSegmentSize {
        match WalSegmentSize::new(bytes) {
            Ok(s) => s,
            Err(e) => panic!("test size {bytes}: {e}"),
        }
    }

    const S16: WalSegmentSize = WalSegmentSize::DEFAULT;

    fn parse(name: &str, size: WalSegmentSize) -> WalFileName {
        match WalFileName::parse(name, size) {
            Ok(parsed) => parsed,
            Err(e) => panic!("{e}"),
        }
    }

    fn err(name: &str, size: WalSegmentSize) -> NameError {
        match WalFileName::parse(name, size) {
            Ok(parsed) => panic!("{name} parsed as {parsed:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn segment_round_trip() {
        let name = "000000010000000000000001";
        let parsed = parse(name, S16);
        assert_eq!(
            parsed,
            WalFileName::Segment {
                timeline: TimelineId(1),
                segment: SegmentNo(1),
                size: S16
            }
        );
        assert_eq!(parsed.to_string(), name);
        let parsed = parse("0000000A00000016000000B3", S16);
        assert_eq!(parsed.timeline(), TimelineId(10));
        assert_eq!(parsed.segment(), Some(SegmentNo(0x16B3)));
        assert_eq!(parsed.size(), Some(S16));
        assert_eq!(
            parsed.start_lsn().map(|l| l.to_string()).as_deref(),
            Some("16/B3000000")
        );
        assert_eq!(parsed.kind(), WalFileKind::Segment);
        assert!(parsed.is_segment_sized());
        assert_eq!(parsed.to_string(), "0000000A00000016000000B3");
        let last = parse("FFFFFFFFFFFFFFFF000000FF", S16);
        assert_eq!(last.segment(), Some(SegmentNo((1 << 40) - 1)));
        assert_eq!(last.to_string(), "FFFFFFFFFFFFFFFF000000FF");
    }

    #[test]
    fn partial_round_trip() {
        let name = "000000020000000300000004.partial";
        let parsed = parse(name, S16);
        assert_eq!(
            parsed,
            WalFileName::Partial {
                timeline: TimelineId(2),
                segment: SegmentNo(3 * 256 + 4),
                size: S16
            }
        );
        assert_eq!(parsed.kind(), WalFileKind::Partial);
        assert!(parsed.is_segment_sized());
        assert_eq!(parsed.start_lsn(), Some(Lsn(0x3_0400_0000)));
        assert_eq!(parsed.to_string(), name);
    }

    #[test]
    fn backup_round_trip() {
        let name = "000000010000000000000002.00000028.backup";
        let parsed = parse(name, S16);
        assert_eq!(
            parsed,
            WalFileName::Backup {
                timeline: TimelineId(1),
                segment: SegmentNo(2),
                offset: 0x28,
                size: S16
            }
        );
        assert_eq!(parsed.kind(), WalFileKind::Backup);
        assert!(!parsed.is_segment_sized());
        assert_eq!(parsed.segment(), Some(SegmentNo(2)));
        assert_eq!(
            parsed.start_lsn().map(|l| l.to_string()).as_deref(),
            Some("0/2000028")
        );
        assert_eq!(parsed.to_string(), name);
        let last = parse("000000010000000000000002.00FFFFFF.backup", S16);
        assert_eq!(last.to_string(), "000000010000000000000002.00FFFFFF.backup");
    }

    #[test]
    fn history_round_trip() {
        let name = "0000000B.history";
        let parsed = parse(name, S16);
        assert_eq!(
            parsed,
            WalFileName::History {
                timeline: TimelineId(11)
            }
        );
        assert_eq!(parsed.timeline(), TimelineId(11));
        assert_eq!(parsed.segment(), None);
        assert_eq!(parsed.size(), None);
        assert_eq!(parsed.start_lsn(), None);
        assert_eq!(parsed.kind(), WalFileKind::History);
        assert!(!parsed.is_segment_sized());
        assert_eq!(parsed.to_string(), name);
        // History names do not depend on the segment size.
        assert_eq!(parse(name, size(1 << 30)), parsed);
    }

    #[test]
    fn xlog_id_boundary_16mib() {
        let before = parse("0000000100000000000000FF", S16);
        let seg = before.segment().and_then(SegmentNo::next);
        assert_eq!(seg, Some(SegmentNo(0x100)));
        let after = seg.map(|s| WalFileName::segment_file_name(TimelineId(1), s, S16));
        assert_eq!(after.as_deref(), Some("000000010000000100000000"));
        let back = parse("000000010000000100000000", S16)
            .segment()
            .and_then(SegmentNo::prev)
            .map(|s| WalFileName::segment_file_name(TimelineId(1), s, S16));
        assert_eq!(back.as_deref(), Some("0000000100000000000000FF"));
    }

    #[test]
    fn xlog_id_boundary_1gib() {
        let s1g = size(1 << 30);
        let names: Vec<String> = (0..6)
            .map(|n| WalFileName::segment_file_name(TimelineId(1), SegmentNo(n), s1g))
            .collect();
        assert_eq!(
            names,
            [
                "000000010000000000000000",
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000100000000",
                "000000010000000100000001",
            ]
        );
        for (n, name) in names.iter().enumerate() {
            assert_eq!(parse(name, s1g).segment(), Some(SegmentNo(n as u64)));
        }
        assert_eq!(
            err("000000010000000000000004", s1g),
            NameError::SegmentOutOfRange {
                name: "000000010000000000000004".into(),
                seg: 4,
                size: s1g
            }
        );
    }

    #[test]
    fn other_sizes() {
        let s1m = size(1 << 20);
        assert_eq!(
            parse("000000010000000100000FFF", s1m).segment(),
            Some(SegmentNo(4096 + 4095))
        );
        assert!(matches!(
            err("000000010000000000001000", s1m),
            NameError::SegmentOutOfRange { seg: 0x1000, .. }
        ));
        let s64m = size(64 << 20);
        let name = "00000001000000020000003F";
        let parsed = parse(name, s64m);
        assert_eq!(parsed.segment(), Some(SegmentNo(2 * 64 + 63)));
        assert_eq!(parsed.to_string(), name);
        assert_eq!(
            parsed
                .segment()
                .and_then(SegmentNo::next)
                .map(|s| WalFileName::segment_file_name(TimelineId(1), s, s64m))
                .as_deref(),
            Some("000000010000000300000000")
        );
        // The same text names a different segment under another size.
        assert_ne!(parse(name, S16), parsed);
    }

    #[test]
    fn segment_out_of_range_message() {
        let e = err("000000010000000000000100", S16);
        assert_eq!(
            e.to_string(),
            "\"000000010000000000000100\" is not a valid WAL file name for 16 MiB segments: \
             the last 8 hex digits must be below 00000100, found 00000100"
        );
        assert!(matches!(
            err("000000010000000000000100.partial", S16),
            NameError::SegmentOutOfRange { .. }
        ));
        assert!(matches!(
            err("000000010000000000000100.00000000.backup", S16),
            NameError::SegmentOutOfRange { .. }
        ));
    }

    #[test]
    fn lowercase_rejected() {
        for name in [
            "0000000a0000000000000001",
            "00000001000000000000000a.partial",
            "0000000a.history",
            "00000001000000000000000a.00000028.backup",
        ] {
            assert_eq!(
                err(name, S16),
                NameError::Lowercase { name: name.into() },
                "{name}"
            );
        }
        let e = err("0000000a0000000000000001", S16).to_string();
        assert!(e.starts_with("\"0000000a0000000000000001\" is not a WAL file name: PostgreSQL writes hex digits in uppercase; valid names are 24 uppercase hex digits"), "{e}");
        assert_eq!(
            err("000000010000000000000002.0000002a.backup", S16),
            NameError::InvalidBackupOffset {
                name: "000000010000000000000002.0000002a.backup".into()
            }
        );
    }

    #[test]
    fn wrong_length_rejected() {
        for (name, expected) in [
            ("00000001000000000000001", 24),
            ("0000000100000000000000001", 24),
            ("", 24),
            ("00000001000000000000001.partial", 24),
            ("000000010000000000000001.history", 8),
            ("0000001.history", 8),
            (".history", 8),
            ("0000000100000000000001.00000028.backup", 24),
        ] {
            assert_eq!(
                err(name, S16),
                NameError::WrongLength {
                    name: name.into(),
                    expected
                },
                "{name}"
            );
        }
        let e = err("00000001000000000000001", S16).to_string();
        assert!(
            e.contains("expected 24 hex digits before the suffix"),
            "{e}"
        );
        assert!(e.contains("\".history\""), "{e}");
    }

    #[test]
    fn non_hex_rejected() {
        for name in [
            "00000001000000000000000G",
            "0000000100000000000000é",
            "+0000001.history",
            " 00000010000000000000001",
        ] {
            assert_eq!(
                err(name, S16),
                NameError::NotHex { name: name.into() },
                "{name}"
            );
        }
    }

    #[test]
    fn zero_timeline_rejected() {
        for name in [
            "000000000000000000000001",
            "000000000000000000000001.partial",
            "00000000.history",
            "000000000000000000000001.00000028.backup",
        ] {
            assert_eq!(
                err(name, S16),
                NameError::ZeroTimeline { name: name.into() },
                "{name}"
            );
        }
        assert_eq!(
            err("00000000.history", S16).to_string(),
            "\"00000000.history\" names timeline 0, which does not exist (timelines start at 1)"
        );
    }

    #[test]
    fn unknown_suffix_rejected() {
        for (name, suffix) in [
            ("000000010000000000000001.gz", ".gz"),
            ("000000010000000000000001.partial.zst", ".partial.zst"),
            ("000000010000000000000001.PARTIAL", ".PARTIAL"),
            ("00000002.history.tmp", ".history.tmp"),
            ("000000010000000000000001.", "."),
            ("000000010000000000000002.00000028backup", ".00000028backup"),
        ] {
            assert_eq!(
                err(name, S16),
                NameError::UnknownSuffix {
                    name: name.into(),
                    suffix: suffix.into()
                },
                "{name}"
            );
        }
        let e = err("000000010000000000000001.gz", S16).to_string();
        assert!(
            e.starts_with(
                "\"000000010000000000000001.gz\" has an unknown suffix \".gz\"; valid names are"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_backup_offsets_rejected() {
        for name in [
            "000000010000000000000002.backup",
            "000000010000000000000002..backup",
            "000000010000000000000002.0000028.backup",
            "000000010000000000000002.000000028.backup",
            "000000010000000000000002.0000002G.backup",
        ] {
            assert_eq!(
                err(name, S16),
                NameError::InvalidBackupOffset { name: name.into() },
                "{name}"
            );
        }
        let name = "000000010000000000000002.01000000.backup";
        assert_eq!(
            err(name, S16),
            NameError::BackupOffsetOutOfRange {
                name: name.into(),
                offset: 0x0100_0000,
                size: S16
            }
        );
        assert_eq!(
            err(name, S16).to_string(),
            "\"000000010000000000000002.01000000.backup\" is not a valid backup history file name for 16 MiB segments: offset 01000000 is past the end of the segment"
        );
        // Fine with bigger segments.
        assert!(WalFileName::parse(name, size(64 << 20)).is_ok());
        let e = err("000000010000000000000002.backup", S16).to_string();
        assert!(e.contains("8 uppercase hex digits and \".backup\""), "{e}");
    }

    #[test]
    fn paths_rejected() {
        for name in [
            "pg_wal/000000010000000000000001",
            "/000000010000000000000001",
            "000000010000000000000001/",
            "..\\000000010000000000000001",
        ] {
            assert_eq!(
                err(name, S16),
                NameError::Path { name: name.into() },
                "{name}"
            );
        }
        let e = err("pg_wal/000000010000000000000001", S16).to_string();
        assert!(e.starts_with("\"pg_wal/000000010000000000000001\" is a path, not a WAL file name; valid names are"), "{e}");
    }

    #[test]
    fn segment_file_name_helper() {
        assert_eq!(
            WalFileName::segment_file_name(TimelineId(3), SegmentNo(0x16B3), S16),
            "0000000300000016000000B3"
        );
        let built = WalFileName::Segment {
            timeline: TimelineId(3),
            segment: SegmentNo(0x16B3),
            size: S16,
        };
        assert_eq!(built.to_string(), "0000000300000016000000B3");
    }

    #[test]
    fn ordering_and_kinds() {
        let seg = parse("000000010000000000000001", S16);
        let seg2 = parse("000000010000000000000002", S16);
        let tl2 = parse("000000020000000000000001", S16);
        assert!(seg < seg2 && seg2 < tl2);
        assert_eq!(WalFileKind::Segment.to_string(), "WAL segment");
        assert_eq!(WalFileKind::Partial.to_string(), "partial WAL segment");
        assert_eq!(WalFileKind::Backup.to_string(), "backup history file");
        assert_eq!(WalFileKind::History.to_string(), "timeline history file");
    }

    #[test]
    fn backup_start_lsn_saturates_safely() {
        // A hand-built value past the address space must not panic.
        let odd = WalFileName::Backup {
            timeline: TimelineId(1),
            segment: SegmentNo(u64::MAX),
            offset: 1,
            size: S16,
        };
        assert_eq!(odd.start_lsn(), None);
    }

    #[test]
    fn timeline_hex_error_message() {
        assert_eq!(
            NameError::InvalidTimelineHex { input: "2".into() }.to_string(),
            "\"2\" is not a timeline ID in file-name form: expected 8 uppercase hex digits, like \"00000002\""
        );
    }
}
