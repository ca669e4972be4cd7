//! Where each thing lives in the repository (format v1; docs/FORMAT.md):
//!
//! ```text
//! repository.json                        the header: format version, cluster identity
//! wal/<TLI>/<TLI><LOG>/<segment>         WAL segments, .partial and .backup files
//! wal/<TLI>/<TLI>.history                timeline history files
//! backup/<label>/files/<n>               a base backup's file contents (n: 6+ digits)
//! backup/<label>/manifest                its manifest, written last
//! ```
//!
//! `<TLI>` is the 8-hex-digit timeline and `<LOG>` the next 8 hex digits of
//! a segment name (one directory per 4 GiB of WAL), so listing a timeline or
//! a stretch of WAL reads few entries. Keys are derived from the WAL file
//! name alone: fetch needs no other object to find a file.

use crate::storage::Key;
use crate::wal::{WalFileName, WalSegmentSize};

pub const HEADER_KEY: &str = "repository.json";
pub const WAL_PREFIX: &str = "wal/";
pub const BACKUP_PREFIX: &str = "backup/";

/// Every key prefix walvault writes under (besides the header).
pub const OWN_PREFIXES: [&str; 5] = ["wal/", "backup/", "lock/", "probe/", "status/"];

/// Whether a string is a backup label walvault writes: `YYYYMMDDTHHMMSSZ`,
/// optionally followed by `-N` when two backups start in the same second.
pub fn is_backup_label(label: &str) -> bool {
    let (stamp, suffix) = label.split_once('-').unwrap_or((label, ""));
    let b = stamp.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
        && suffix.bytes().all(|c| c.is_ascii_digit())
}

/// The order backups were created in: the time stamp, then the number of
/// the same-second suffix (none is 1). Sorting labels as strings would put
/// `…Z-10` before `…Z-2`, and keys put `…Z-2/` before `…Z/`.
pub fn label_order(label: &str) -> (&str, u64) {
    match label.split_once('-') {
        Some((stamp, n)) => (stamp, n.parse().unwrap_or(u64::MAX)),
        None => (label, 1),
    }
}

pub fn backup_prefix(label: &str) -> String {
    format!("backup/{label}/")
}

pub fn manifest_key(label: &str) -> Key {
    Key::new(format!("backup/{label}/manifest")).expect("labels make valid keys")
}

/// A complete backup's summary: its manifest without the file list, and
/// what its objects occupy. Written after the manifest; rebuilt from it
/// when missing.
pub fn summary_key(label: &str) -> Key {
    Key::new(format!("backup/{label}/summary")).expect("labels make valid keys")
}

/// Who is writing a backup: written first, create-only, so it also claims
/// the label. Lets expire tell a dead writer on this host from a live one.
pub fn writer_key(label: &str) -> Key {
    Key::new(format!("backup/{label}/writer")).expect("labels make valid keys")
}

pub fn backup_file_key(label: &str, index: usize) -> Key {
    Key::new(format!("backup/{label}/files/{index:06}")).expect("labels make valid keys")
}

/// The block map of a backup file (see [`crate::repo::blocks`]).
pub fn backup_map_key(label: &str, index: usize) -> Key {
    Key::new(format!("backup/{label}/files/{index:06}.map")).expect("labels make valid keys")
}

/// The label part of a key under `backup/`.
pub fn label_of_backup_key(key: &str) -> Option<&str> {
    key.strip_prefix(BACKUP_PREFIX)?.split('/').next()
}

/// A WAL file name from a key under `wal/` (the last path segment), read
/// with the repository's segment size.
pub fn wal_name_of_key(key: &str, size: WalSegmentSize) -> Option<WalFileName> {
    let rest = key.strip_prefix(WAL_PREFIX)?;
    WalFileName::parse(rest.rsplit('/').next()?, size).ok()
}

pub fn header_key() -> Key {
    Key::new(HEADER_KEY).expect("constant key is valid")
}

/// Checks that `name` is a WAL file name PostgreSQL can archive (segment,
/// `.partial`, `.backup` or `.history`) without knowing the segment size:
/// the smallest segment size (1 MiB) accepts every valid segment number
/// part, so a name valid for any size parses here.
pub fn parse_any_size(name: &str) -> Result<WalFileName, crate::wal::NameError> {
    let smallest = WalSegmentSize::new(1 << 20).expect("1 MiB is a valid segment size");
    WalFileName::parse(name, smallest)
}

/// The key of a WAL file, from its (already validated) name.
pub fn wal_key(name: &WalFileName) -> Key {
    let text = name.to_string();
    let tli = name.timeline().to_hex();
    let key = match name {
        WalFileName::History { .. } => format!("wal/{tli}/{text}"),
        _ => format!("wal/{tli}/{}/{text}", &text[..16]),
    };
    Key::new(key).expect("WAL file names make valid keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_made_in_one_second_sort_in_creation_order() {
        let mut labels = vec![
            "20260101T000000Z-10",
            "20260101T000001Z",
            "20260101T000000Z-2",
            "20260101T000000Z",
        ];
        labels.sort_by_key(|l| label_order(l));
        assert_eq!(
            labels,
            [
                "20260101T000000Z",
                "20260101T000000Z-2",
                "20260101T000000Z-10",
                "20260101T000001Z"
            ]
        );
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let cases = [
            (
                "000000010000000A000000FE",
                "wal/00000001/000000010000000A/000000010000000A000000FE",
            ),
            ("00000002.history", "wal/00000002/00000002.history"),
            (
                "000000020000000000000003.partial",
                "wal/00000002/0000000200000000/000000020000000000000003.partial",
            ),
            (
                "000000010000000000000002.00000028.backup",
                "wal/00000001/0000000100000000/000000010000000000000002.00000028.backup",
            ),
        ];
        for (name, key) in cases {
            let parsed = parse_any_size(name).expect("valid name");
            assert_eq!(wal_key(&parsed).as_str(), key);
        }
        assert!(parse_any_size("RECOVERYXLOG").is_err());
        assert!(is_backup_label("20261121T102959Z"));
        assert!(is_backup_label("20261121T102959Z-2"));
        assert!(!is_backup_label("20261121T1029Z"));
        assert!(!is_backup_label("latest"));
        assert_eq!(
            backup_file_key("20261121T102959Z", 7).as_str(),
            "backup/20261121T102959Z/files/000007"
        );
        assert_eq!(
            label_of_backup_key("backup/20261121T102959Z/manifest"),
            Some("20261121T102959Z")
        );
        let size = WalSegmentSize::DEFAULT;
        let name = wal_name_of_key(
            "wal/00000001/0000000100000000/000000010000000000000003",
            size,
        )
        .unwrap();
        assert_eq!(name.to_string(), "000000010000000000000003");
        assert!(parse_any_size("../000000010000000000000001").is_err());
    }
}
