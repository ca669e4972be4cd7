//! Recovery targets: where a restore asks PostgreSQL's replay to stop
//! ([`RecoveryTarget`]), and reading and writing their text forms.
//!
//! This module owns the pure decisions about a target's text: which target
//! times are unambiguous (an explicit UTC offset or IANA zone is required,
//! because PostgreSQL would otherwise read the time in the server's
//! `timezone`), how a time is printed for `recovery_target_time`, and what
//! PostgreSQL accepts as a transaction ID or restore point name. It does no
//! I/O; the only outside state it consults is the system time zone database,
//! and only for inputs naming a zone such as `[Europe/Paris]`.

use std::fmt;

use jiff::fmt::temporal::Pieces;
use jiff::Timestamp;
use thiserror::Error;

use crate::wal::{Lsn, LsnParseError};

/// Longest restore point name PostgreSQL accepts (`MAXFNAMELEN - 1`).
pub const MAX_TARGET_NAME_BYTES: usize = 63;

/// Examples shown in hints for target times.
const TIME_EXAMPLES: &str =
    "2026-11-21 10:29:59+00, 2026-11-21T10:29:59Z or 2026-11-21 10:29:59[Europe/Paris]";

/// Where replay stops.
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryTarget {
    /// Replay every archived WAL file (no `recovery_target*` setting).
    EndOfArchive,
    /// Stop as soon as the backup is consistent (`recovery_target = 'immediate'`).
    Immediate,
    /// `recovery_target_time`.
    Time(Timestamp),
    /// `recovery_target_lsn`.
    Lsn(Lsn),
    /// `recovery_target_xid`, a decimal transaction ID as checked by [`parse_xid`].
    Xid(String),
    /// `recovery_target_name`, a restore point as checked by [`parse_target_name`].
    Name(String),
}

impl fmt::Display for RecoveryTarget {
    /// A short description for messages, e.g. `time 2026-11-21 10:29:59+00:00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::EndOfArchive => f.write_str("the end of the archive"),
            RecoveryTarget::Immediate => f.write_str("the end of the backup (immediate)"),
            RecoveryTarget::Time(ts) => write!(f, "time {}", format_for_postgres(*ts)),
            RecoveryTarget::Lsn(lsn) => write!(f, "LSN {lsn}"),
            RecoveryTarget::Xid(xid) => write!(f, "transaction {xid}"),
            RecoveryTarget::Name(name) => write!(f, "restore point \"{name}\""),
        }
    }
}

/// Why a target given on the command line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    /// Not a date and time at all.
    #[error("target time \"{input}\" is not a date and time: {reason}\nHINT: write it like {TIME_EXAMPLES}")]
    TimeUnreadable { input: String, reason: String },
    /// A date without a time of day.
    #[error("target time \"{input}\" has a date but no time of day\nHINT: add a time and a time zone, e.g. \"{input} 00:00:00+00\"")]
    TimeWithoutTimeOfDay { input: String },
    /// A civil time with neither an offset nor a zone name.
    #[error("target time \"{input}\" has no time zone\nHINT: add an offset or zone, e.g. \"{input}+00\" or \"{input}Z\" for UTC; PostgreSQL would read a time without one in the server's time zone setting, which may not be what you mean")]
    TimeWithoutZone { input: String },
    /// A zone name that is unknown, or that disagrees with the offset given.
    #[error("target time \"{input}\" cannot be placed in its time zone: {reason}\nHINT: use an IANA zone name such as [Europe/Paris] whose rules agree with any offset given, or give only an offset like +01:00")]
    TimeZoneUnresolved { input: String, reason: String },
    /// Not an LSN.
    #[error("target LSN \"{input}\" is not an LSN: {source}\nHINT: write it as PostgreSQL prints it, e.g. 0/3000028")]
    LsnUnreadable {
        input: String,
        #[source]
        source: LsnParseError,
    },
    /// Something other than decimal digits.
    #[error("target transaction ID \"{input}\" is not a decimal number\nHINT: give the transaction ID in decimal digits only, e.g. 1234")]
    XidNotDecimal { input: String },
    /// Zero, which is never a normal transaction ID.
    #[error("target transaction ID \"{input}\" is zero, which is never a committed transaction\nHINT: give the ID of the transaction to stop at, e.g. from txid_current()")]
    XidZero { input: String },
    /// Larger than 64 bits.
    #[error("target transaction ID \"{input}\" does not fit in 64 bits\nHINT: give the ID of the transaction to stop at, e.g. from txid_current()")]
    XidTooLarge { input: String },
    /// An empty restore point name.
    #[error("target restore point name is empty\nHINT: give the name passed to pg_create_restore_point()")]
    NameEmpty,
    /// Longer than PostgreSQL allows.
    #[error("target restore point name \"{input}\" is {len} bytes long, more than PostgreSQL's maximum of {MAX_TARGET_NAME_BYTES}\nHINT: give the name passed to pg_create_restore_point(), which cannot be longer")]
    NameTooLong { input: String, len: usize },
}

/// Reads a target time. An explicit offset (`+00`, `+05:30`, `-0800`, `Z`)
/// or an IANA zone in brackets (`[Europe/Paris]`, checked against the offset
/// when both are given) is required. Surrounding whitespace is ignored; a
/// space or `T` may separate date and time.
///
/// Zone names are looked up in the time zone database jiff finds at run
/// time (`/usr/share/zoneinfo` on Unix); without one they fail with
/// [`TargetError::TimeZoneUnresolved`].
pub fn parse_target_time(s: &str) -> Result<Timestamp, TargetError> {
    let input = s.trim();
    let pieces = Pieces::parse(input).map_err(|e| TargetError::TimeUnreadable {
        input: input.to_owned(),
        reason: e.to_string(),
    })?;
    if pieces.time().is_none() {
        return Err(TargetError::TimeWithoutTimeOfDay {
            input: input.to_owned(),
        });
    }
    if pieces.time_zone_annotation().is_some() {
        // Zoned parsing resolves the zone and rejects an offset the zone
        // does not have at that time; a bare timestamp would ignore the zone.
        return input
            .parse::<jiff::Zoned>()
            .map(|zoned| zoned.timestamp())
            .map_err(|e| TargetError::TimeZoneUnresolved {
                input: input.to_owned(),
                reason: e.to_string(),
            });
    }
    if pieces.offset().is_none() {
        return Err(TargetError::TimeWithoutZone {
            input: input.to_owned(),
        });
    }
    input
        .parse::<Timestamp>()
        .map_err(|e| TargetError::TimeUnreadable {
            input: input.to_owned(),
            reason: e.to_string(),
        })
}

/// Prints a time for `recovery_target_time`: UTC with an explicit offset,
/// e.g. `2026-11-21 10:29:59+00:00`, with microseconds only when they are
/// not zero (`2026-11-21 10:29:59.123456+00:00`). Nanoseconds are truncated
/// to PostgreSQL's microsecond resolution, so the target never moves later
/// than asked. Years before 1 print with PostgreSQL's ` BC` suffix.
pub fn format_for_postgres(ts: Timestamp) -> String {
    let dt = jiff::tz::Offset::UTC.to_datetime(ts);
    let year = i32::from(dt.year());
    let (shown_year, era) = if year <= 0 {
        (1 - year, " BC")
    } else {
        (year, "")
    };
    let mut out = format!(
        "{shown_year:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let micros = dt.subsec_nanosecond() / 1000;
    if micros != 0 {
        out.push_str(&format!(".{micros:06}"));
    }
    out.push_str("+00:00");
    out.push_str(era);
    out
}

/// Reads a target LSN as PostgreSQL prints it (`0/3000028`), ignoring
/// surrounding whitespace.
pub fn parse_target_lsn(s: &str) -> Result<Lsn, TargetError> {
    let input = s.trim();
    input
        .parse::<Lsn>()
        .map_err(|source| TargetError::LsnUnreadable {
            input: input.to_owned(),
            source,
        })
}

/// Checks a target transaction ID: decimal digits only (surrounding
/// whitespace ignored), not zero, at most 64 bits. Returns it without
/// leading zeros.
pub fn parse_xid(s: &str) -> Result<String, TargetError> {
    let input = s.trim();
    if input.is_empty() || !input.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::XidNotDecimal {
            input: input.to_owned(),
        });
    }
    match input.parse::<u64>() {
        Ok(0) => Err(TargetError::XidZero {
            input: input.to_owned(),
        }),
        Ok(xid) => Ok(xid.to_string()),
        // Only digits remain, so the only failure is overflow.
        Err(_) => Err(TargetError::XidTooLarge {
            input: input.to_owned(),
        }),
    }
}

/// Checks a restore point name: not empty and at most
/// [`MAX_TARGET_NAME_BYTES`] bytes, as PostgreSQL's `recovery_target_name`
/// requires. The name is kept exactly as given (PostgreSQL matches it
/// exactly); quoting for the configuration file happens in `recovery_conf`.
pub fn parse_target_name(s: &str) -> Result<String, TargetError> {
    if s.is_empty() {
        return Err(TargetError::NameEmpty);
    }
    if s.len() > MAX_TARGET_NAME_BYTES {
        return Err(TargetError::NameTooLong {
            input: s.to_owned(),
            len: s.len(),
        });
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(rfc3339: &str) -> Timestamp {
        match rfc3339.parse() {
            Ok(t) => t,
            Err(e) => panic!("test timestamp {rfc3339}: {e}"),
        }
    }

    fn time_ok(input: &str) -> Timestamp {
        match parse_target_time(input) {
            Ok(t) => t,
            Err(e) => panic!("{input}: {e}"),
        }
    }

    #[test]
    fn time_with_offsets() {
        let utc = ts("2026-11-21T10:29:59Z");
        assert_eq!(time_ok("2026-11-21 10:29:59+00"), utc);
        assert_eq!(time_ok("2026-11-21 10:29:59+00:00"), utc);
        assert_eq!(time_ok("2026-11-21T10:29:59Z"), utc);
        assert_eq!(time_ok("2026-11-21 10:29:59z"), utc);
        assert_eq!(time_ok("  2026-11-21 10:29:59+00 \n"), utc);
        assert_eq!(
            time_ok("2026-11-21 10:29:59.123456+05:30"),
            ts("2026-11-21T04:59:59.123456Z")
        );
        assert_eq!(
            time_ok("2026-11-21 10:29:59+0530"),
            ts("2026-11-21T04:59:59Z")
        );
        assert_eq!(
            time_ok("2026-11-21 10:29:59-08"),
            ts("2026-11-21T18:29:59Z")
        );
    }

    #[test]
    fn time_with_zone_names() {
        // Zone names need the system time zone database
        // (/usr/share/zoneinfo); without one they are a clear error.
        if jiff::tz::TimeZone::get("Europe/Paris").is_err() {
            assert!(matches!(
                parse_target_time("2026-11-21 10:29:59[Europe/Paris]"),
                Err(TargetError::TimeZoneUnresolved { .. })
            ));
            return;
        }
        let paris = ts("2026-11-21T09:29:59Z");
        assert_eq!(time_ok("2026-11-21 10:29:59[Europe/Paris]"), paris);
        assert_eq!(time_ok("2026-11-21T10:29:59+01:00[Europe/Paris]"), paris);
        // Summer time is +02 in Paris.
        assert_eq!(
            time_ok("2026-07-01 12:00:00[Europe/Paris]"),
            ts("2026-07-01T10:00:00Z")
        );
        assert_eq!(
            time_ok("2026-11-21 10:29:59[UTC]"),
            ts("2026-11-21T10:29:59Z")
        );
    }

    #[test]
    fn time_zone_errors() {
        for input in [
            "2026-11-21T10:29:59+02:00[Europe/Paris]",
            "2026-11-21 10:29:59[Nowhere/Atlantis]",
        ] {
            match parse_target_time(input) {
                Err(TargetError::TimeZoneUnresolved { input: got, reason }) => {
                    assert_eq!(got, input);
                    assert!(!reason.is_empty());
                }
                other => panic!("{input}: {other:?}"),
            }
        }
        let msg = match parse_target_time("2026-11-21 10:29:59[Nowhere/Atlantis]") {
            Err(e) => e.to_string(),
            Ok(t) => panic!("accepted {t}"),
        };
        assert!(msg.contains("Nowhere/Atlantis"), "{msg}");
        assert!(msg.contains("\nHINT: "), "{msg}");
    }

    #[test]
    fn time_without_zone_is_refused() {
        let err = parse_target_time("2026-11-21 10:29:59");
        assert_eq!(
            err,
            Err(TargetError::TimeWithoutZone {
                input: "2026-11-21 10:29:59".into()
            })
        );
        let msg = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(msg.starts_with("target time \"2026-11-21 10:29:59\" has no time zone\nHINT: "));
        assert!(msg.contains("+00"), "{msg}");
        assert!(msg.contains("Z\""), "{msg}");
        assert!(msg.contains("server's time zone"), "{msg}");
    }

    #[test]
    fn date_without_time_is_refused() {
        assert_eq!(
            parse_target_time("2026-11-21"),
            Err(TargetError::TimeWithoutTimeOfDay {
                input: "2026-11-21".into()
            })
        );
    }

    #[test]
    fn garbage_time_is_refused() {
        for input in [
            "garbage",
            "",
            "2026-13-01 00:00:00+00",
            "2026-11-21 10:29:59 UTC",
        ] {
            match parse_target_time(input) {
                Err(TargetError::TimeUnreadable { input: got, .. }) => {
                    assert_eq!(got, input.trim())
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
        let msg = parse_target_time("yesterday")
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(msg.starts_with("target time \"yesterday\" is not a date and time: "));
        assert!(msg.contains("\nHINT: write it like 2026-11-21 10:29:59+00"));
    }

    #[test]
    fn format_whole_seconds_and_micros() {
        assert_eq!(
            format_for_postgres(ts("2026-11-21T10:29:59Z")),
            "2026-11-21 10:29:59+00:00"
        );
        assert_eq!(
            format_for_postgres(ts("2026-11-21T10:29:59.123456Z")),
            "2026-11-21 10:29:59.123456+00:00"
        );
        assert_eq!(
            format_for_postgres(ts("2026-11-21T10:29:59.000001Z")),
            "2026-11-21 10:29:59.000001+00:00"
        );
        // Converted to UTC.
        assert_eq!(
            format_for_postgres(time_ok("2026-11-21 10:29:59-08")),
            "2026-11-21 18:29:59+00:00"
        );
    }

    #[test]
    fn format_truncates_nanoseconds() {
        assert_eq!(
            format_for_postgres(ts("2026-11-21T10:29:59.1234569Z")),
            "2026-11-21 10:29:59.123456+00:00"
        );
        assert_eq!(
            format_for_postgres(ts("2026-11-21T10:29:59.000000999Z")),
            "2026-11-21 10:29:59+00:00"
        );
    }

    #[test]
    fn format_before_epoch_and_bc() {
        assert_eq!(
            format_for_postgres(ts("1969-12-31T23:59:59.5Z")),
            "1969-12-31 23:59:59.500000+00:00"
        );
        assert_eq!(
            format_for_postgres(ts("-000001-03-04T05:06:07Z")),
            "0002-03-04 05:06:07+00:00 BC"
        );
        assert_eq!(
            format_for_postgres(ts("0000-01-01T00:00:00Z")),
            "0001-01-01 00:00:00+00:00 BC"
        );
    }

    #[test]
    fn format_round_trips() {
        for input in [
            "2026-11-21 10:29:59+00",
            "2026-11-21 10:29:59.123456+05:30",
            "1999-12-31 23:59:59.999999-12",
        ] {
            let t = time_ok(input);
            assert_eq!(time_ok(&format_for_postgres(t)), t, "{input}");
        }
    }

    #[test]
    fn lsn_targets() {
        assert_eq!(parse_target_lsn(" 0/3000028 "), Ok(Lsn(0x300_0028)));
        match parse_target_lsn("3000028") {
            Err(e @ TargetError::LsnUnreadable { .. }) => {
                let msg = e.to_string();
                assert!(msg.starts_with("target LSN \"3000028\" is not an LSN: "));
                assert!(msg.contains("\nHINT: "));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn xids() {
        assert_eq!(parse_xid("1234"), Ok("1234".into()));
        assert_eq!(parse_xid(" 007\n"), Ok("7".into()));
        assert_eq!(
            parse_xid("18446744073709551615"),
            Ok("18446744073709551615".into())
        );
        assert_eq!(
            parse_xid("18446744073709551616"),
            Err(TargetError::XidTooLarge {
                input: "18446744073709551616".into()
            })
        );
        assert_eq!(
            parse_xid("0"),
            Err(TargetError::XidZero { input: "0".into() })
        );
        assert_eq!(
            parse_xid("000"),
            Err(TargetError::XidZero {
                input: "000".into()
            })
        );
        for bad in ["", "+5", "-5", "12a", "0x10", "1 2", "١٢"] {
            assert_eq!(
                parse_xid(bad),
                Err(TargetError::XidNotDecimal {
                    input: bad.trim().into()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_target_name("before-upgrade"),
            Ok("before-upgrade".into())
        );
        assert_eq!(parse_target_name(" it's "), Ok(" it's ".into()));
        assert_eq!(parse_target_name(""), Err(TargetError::NameEmpty));
        let longest = "n".repeat(MAX_TARGET_NAME_BYTES);
        assert_eq!(parse_target_name(&longest), Ok(longest.clone()));
        let too_long = format!("{longest}x");
        assert_eq!(
            parse_target_name(&too_long),
            Err(TargetError::NameTooLong {
                input: too_long.clone(),
                len: 64
            })
        );
    }

    #[test]
    fn error_messages_follow_the_style() {
        let errors = [
            parse_target_time("x").err(),
            parse_target_time("2026-11-21").err(),
            parse_target_time("2026-11-21 10:00:00").err(),
            parse_target_time("2026-11-21 10:00:00[No/Where]").err(),
            parse_target_lsn("x").err(),
            parse_xid("x").err(),
            parse_xid("0").err(),
            parse_xid("99999999999999999999").err(),
            parse_target_name("").err(),
            parse_target_name(&"n".repeat(64)).err(),
        ];
        for err in errors {
            let msg = match err {
                Some(e) => e.to_string(),
                None => panic!("an input was accepted"),
            };
            let (first, hint) = match msg.split_once("\nHINT: ") {
                Some(parts) => parts,
                None => panic!("no hint: {msg}"),
            };
            assert!(first.starts_with(|c: char| c.is_lowercase()), "{msg}");
            assert!(!first.ends_with('.') && !hint.ends_with('.'), "{msg}");
        }
    }

    #[test]
    fn target_display() {
        let cases = [
            (RecoveryTarget::EndOfArchive, "the end of the archive"),
            (
                RecoveryTarget::Immediate,
                "the end of the backup (immediate)",
            ),
            (
                RecoveryTarget::Time(ts("2026-11-21T10:29:59Z")),
                "time 2026-11-21 10:29:59+00:00",
            ),
            (RecoveryTarget::Lsn(Lsn(0x300_0028)), "LSN 0/3000028"),
            (RecoveryTarget::Xid("42".into()), "transaction 42"),
            (RecoveryTarget::Name("x".into()), "restore point \"x\""),
        ];
        for (target, shown) in cases {
            assert_eq!(target.to_string(), shown);
        }
    }
}
