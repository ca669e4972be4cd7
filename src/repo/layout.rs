//! Where each thing lives in the repository (format v1; docs/FORMAT.md):
//!
//! ```text
//! repository.json                        the header: format version, cluster identity
//! wal/<TLI>/<TLI><LOG>/<segment>         WAL segments, .partial and .backup files
//! wal/<TLI>/<TLI>.history                timeline history files
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

/// The prefix under which all WAL of a timeline lives.
pub fn timeline_prefix(timeline: crate::wal::TimelineId) -> String {
    format!("wal/{}/", timeline.to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(parse_any_size("../000000010000000000000001").is_err());
    }
}
