//! The contents of the two small text files PostgreSQL archives beside WAL
//! segments: timeline history files (`00000002.history`, [`TimelineHistory`])
//! and backup history files (`...00000028.backup`, [`BackupHistory`]).
//!
//! This module owns parsing their text as PostgreSQL writes and reads it
//! (`writeTimeLineHistory` / `readTimeLineHistory` / `tliOfPointInHistory`
//! in `src/backend/access/transam/timeline.c`, `build_backup_content` in
//! `xlogbackup.c`). It must not do any I/O or decide which files to fetch;
//! callers hand it text they already have.

use std::fmt;

use thiserror::Error;

use super::lsn::{Lsn, LsnParseError, TimelineId, TimelineParseError};

/// Why a timeline or backup history file's text cannot be used. Line numbers
/// start at 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HistoryError {
    /// The first field of a history line is not a timeline ID.
    #[error(
        "line {line}: expected a parent timeline ID (a decimal number from 1), found \"{found}\""
    )]
    BadTimeline {
        line: usize,
        found: String,
        #[source]
        source: TimelineParseError,
    },
    /// A history line has a timeline ID but nothing after it.
    #[error("line {line}: \"{text}\" has no switch point, expected \"parentTLI<TAB>switchpoint<TAB>reason\"")]
    MissingSwitchPoint { line: usize, text: String },
    /// The second field of a history line is not an LSN.
    #[error("line {line}: expected a switch point LSN like \"0/3000000\", found \"{found}\"")]
    BadSwitchPoint {
        line: usize,
        found: String,
        #[source]
        source: LsnParseError,
    },
    /// Parent timelines do not strictly increase down the file.
    #[error("line {line}: timeline {parent} does not follow timeline {previous}, timeline IDs must increase")]
    TimelineNotIncreasing {
        line: usize,
        parent: TimelineId,
        previous: TimelineId,
    },
    /// A parent timeline is not below the timeline the history belongs to.
    #[error("line {line}: parent timeline {parent} is not below timeline {timeline} whose history this is")]
    ParentNotBelowTimeline {
        line: usize,
        parent: TimelineId,
        timeline: TimelineId,
    },
    /// A backup history file without its `START WAL LOCATION` line.
    #[error("backup history has no \"START WAL LOCATION\" line")]
    MissingStartLocation,
    /// A `START`/`STOP WAL LOCATION` line whose value is not an LSN.
    #[error(
        "line {line}: \"{field}\" should start with an LSN like \"0/2000028\", found \"{found}\""
    )]
    BadBackupLocation {
        line: usize,
        field: &'static str,
        found: String,
        #[source]
        source: LsnParseError,
    },
    /// A backup history field given twice.
    #[error("line {line}: \"{field}\" appears more than once")]
    DuplicateField { line: usize, field: &'static str },
}

/// One line of a timeline history file: `parent` ran until `switch_point`,
/// where the next timeline (the next entry's parent, or the file's own
/// timeline for the last entry) branched off.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: TimelineId,
    /// The first LSN that is no longer on `parent` (`TimeLineHistoryEntry.end`).
    pub switch_point: Lsn,
    /// Free text PostgreSQL wrote, e.g. "no recovery target specified".
    pub reason: String,
}

/// A parsed `TTTTTTTT.history` file: the ancestry of `timeline`, oldest
/// first. Displays in the format PostgreSQL writes.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TimelineHistory {
    /// The timeline whose history this is (from the file name).
    pub timeline: TimelineId,
    /// Its ancestors, oldest first.
    pub entries: Vec<HistoryEntry>,
}

/// Splits off the first whitespace-separated token, returning it and the
/// rest with leading whitespace removed.
fn next_token(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.split_once(char::is_whitespace) {
        Some((token, rest)) => (token, rest.trim_start()),
        None => (text, ""),
    }
}

impl TimelineHistory {
    /// Parses the text of `timeline`'s history file like
    /// `readTimeLineHistory`: blank lines and lines starting with `#` are
    /// skipped; each other line is `parentTLI switchpoint [reason]`
    /// separated by whitespace (PostgreSQL writes tabs).
    pub fn parse(timeline: TimelineId, text: &str) -> Result<TimelineHistory, HistoryError> {
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (tli_text, rest) = next_token(trimmed);
            let parent: TimelineId =
                tli_text
                    .parse()
                    .map_err(|source| HistoryError::BadTimeline {
                        line,
                        found: tli_text.to_owned(),
                        source,
                    })?;
            let (lsn_text, reason) = next_token(rest);
            if lsn_text.is_empty() {
                return Err(HistoryError::MissingSwitchPoint {
                    line,
                    text: raw.to_owned(),
                });
            }
            let switch_point: Lsn =
                lsn_text
                    .parse()
                    .map_err(|source| HistoryError::BadSwitchPoint {
                        line,
                        found: lsn_text.to_owned(),
                        source,
                    })?;
            if let Some(previous) = entries.last() {
                if parent <= previous.parent {
                    return Err(HistoryError::TimelineNotIncreasing {
                        line,
                        parent,
                        previous: previous.parent,
                    });
                }
                // No check that switch points increase: PostgreSQL's own
                // reader does not make one, and it writes a switch point
                // below its parent's when a recovery target on an older
                // timeline lies physically inside a later timeline's
                // segment.
            }
            if parent >= timeline {
                return Err(HistoryError::ParentNotBelowTimeline {
                    line,
                    parent,
                    timeline,
                });
            }
            entries.push(HistoryEntry {
                parent,
                switch_point,
                reason: reason.trim_end().to_owned(),
            });
        }
        Ok(TimelineHistory { timeline, entries })
    }

    /// The timeline that owns `lsn` in this history (`tliOfPointInHistory`):
    /// an entry's parent owns everything before its switch point, and
    /// `self.timeline` owns everything from the last switch point on.
    ///
    /// Exactly as PostgreSQL does it, also for switch points that do not
    /// increase: timelines are tried newest first, each owning
    /// `[previous switch point, its switch point)`, and the newest owns
    /// everything from the last switch point on.
    pub fn timeline_at(&self, lsn: Lsn) -> TimelineId {
        let Some(last) = self.entries.last() else {
            return self.timeline;
        };
        if lsn >= last.switch_point {
            return self.timeline;
        }
        for i in (0..self.entries.len()).rev() {
            let begin = if i == 0 {
                Lsn(0)
            } else {
                self.entries[i - 1].switch_point
            };
            if begin <= lsn && lsn < self.entries[i].switch_point {
                return self.entries[i].parent;
            }
        }
        // Not in any range (PostgreSQL reports an error here): the oldest.
        self.entries[0].parent
    }

    /// Where ancestor `tli` ended (`tliSwitchPoint`); `None` for
    /// `self.timeline`, which has not ended, and for timelines not in this
    /// history.
    pub fn switch_point_of(&self, tli: TimelineId) -> Option<Lsn> {
        self.entries
            .iter()
            .find(|entry| entry.parent == tli)
            .map(|entry| entry.switch_point)
    }

    /// Whether `tli` is `self.timeline` or one of its ancestors.
    pub fn contains(&self, tli: TimelineId) -> bool {
        tli == self.timeline || self.entries.iter().any(|entry| entry.parent == tli)
    }

    /// The timeline `self.timeline` branched from, if it has a history.
    pub fn parent(&self) -> Option<TimelineId> {
        self.entries.last().map(|entry| entry.parent)
    }
}

impl fmt::Display for TimelineHistory {
    /// The file text as `writeTimeLineHistory` lays it out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for entry in &self.entries {
            write!(f, "{}\t{}", entry.parent, entry.switch_point)?;
            if !entry.reason.is_empty() {
                write!(f, "\t{}", entry.reason)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// What walvault needs from a backup history file.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct BackupHistory {
    /// `START WAL LOCATION`: where the backup's WAL begins.
    pub start_lsn: Lsn,
    /// `STOP WAL LOCATION`: where the backup became consistent.
    pub stop_lsn: Option<Lsn>,
    /// `LABEL`: the label given to `pg_backup_start`.
    pub label: Option<String>,
}

const START_FIELD: &str = "START WAL LOCATION";
const STOP_FIELD: &str = "STOP WAL LOCATION";
const LABEL_FIELD: &str = "LABEL";

/// The value after `FIELD:` on `line`, without the single space PostgreSQL
/// writes after the colon.
fn field_value<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let value = line.strip_prefix(field)?.strip_prefix(':')?;
    Some(value.strip_prefix(' ').unwrap_or(value))
}

/// Parses the LSN at the start of a `... WAL LOCATION:` value, ignoring the
/// `(file ...)` that follows it.
fn location(line: usize, field: &'static str, value: &str) -> Result<Lsn, HistoryError> {
    let (token, _) = next_token(value);
    token
        .parse()
        .map_err(|source| HistoryError::BadBackupLocation {
            line,
            field,
            found: value.trim().to_owned(),
            source,
        })
}

/// Stores `value` in `slot`, refusing a second occurrence of `field`.
fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    line: usize,
    field: &'static str,
) -> Result<(), HistoryError> {
    if slot.is_some() {
        return Err(HistoryError::DuplicateField { line, field });
    }
    *slot = Some(value);
    Ok(())
}

/// Parses a backup history file (`build_backup_content` output). Only
/// `START WAL LOCATION` is required; other lines are ignored.
pub fn parse_backup_history(text: &str) -> Result<BackupHistory, HistoryError> {
    let mut start = None;
    let mut stop = None;
    let mut label = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if let Some(value) = field_value(raw, START_FIELD) {
            let lsn = location(line, START_FIELD, value)?;
            set_once(&mut start, lsn, line, START_FIELD)?;
        } else if let Some(value) = field_value(raw, STOP_FIELD) {
            let lsn = location(line, STOP_FIELD, value)?;
            set_once(&mut stop, lsn, line, STOP_FIELD)?;
        } else if let Some(value) = field_value(raw, LABEL_FIELD) {
            set_once(&mut label, value.to_owned(), line, LABEL_FIELD)?;
        }
    }
    Ok(BackupHistory {
        start_lsn: start.ok_or(HistoryError::MissingStartLocation)?,
        stop_lsn: stop,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(text: &str) -> Lsn {
        match text.parse() {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        }
    }

    fn history(timeline: u32, text: &str) -> TimelineHistory {
        match TimelineHistory::parse(TimelineId(timeline), text) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        }
    }

    fn history_err(timeline: u32, text: &str) -> HistoryError {
        match TimelineHistory::parse(TimelineId(timeline), text) {
            Ok(h) => panic!("parsed {h:?}"),
            Err(e) => e,
        }
    }

    const TL4: &str = "# written by hand\n\
        1\t0/3000000\tno recovery target specified\n\
        \n\
        \t# indented comment\n\
        2\t0/5000A28\tbefore 2024-01-01 00:00:00+00\n\
        3   1/0   at restore point \"nightly\"  \r\n";

    #[test]
    fn parses_with_comments_and_blanks() {
        let h = history(4, TL4);
        assert_eq!(h.timeline, TimelineId(4));
        assert_eq!(
            h.entries,
            vec![
                HistoryEntry {
                    parent: TimelineId(1),
                    switch_point: lsn("0/3000000"),
                    reason: "no recovery target specified".into()
                },
                HistoryEntry {
                    parent: TimelineId(2),
                    switch_point: lsn("0/5000A28"),
                    reason: "before 2024-01-01 00:00:00+00".into()
                },
                HistoryEntry {
                    parent: TimelineId(3),
                    switch_point: lsn("1/0"),
                    reason: "at restore point \"nightly\"".into()
                },
            ]
        );
        assert_eq!(h.parent(), Some(TimelineId(3)));
    }

    #[test]
    fn empty_history() {
        let h = history(1, "");
        assert!(h.entries.is_empty());
        assert_eq!(h.timeline_at(lsn("FFFFFFFF/FFFFFFFF")), TimelineId(1));
        assert_eq!(h.parent(), None);
        assert!(h.contains(TimelineId(1)));
        assert!(!h.contains(TimelineId(2)));
        assert_eq!(h.to_string(), "");
        assert!(history(2, "# nothing\n\n   \n").entries.is_empty());
    }

    #[test]
    fn line_without_reason() {
        let h = history(2, "1 0/3000000");
        assert_eq!(h.entries[0].reason, "");
        assert_eq!(h.to_string(), "1\t0/3000000\n");
    }

    #[test]
    fn timeline_at_switch_points() {
        let h = history(4, TL4);
        let cases = [
            ("0/0", 1),
            ("0/2FFFFFF", 1),
            ("0/3000000", 2),
            ("0/3000001", 2),
            ("0/5000A27", 2),
            ("0/5000A28", 3),
            ("0/FFFFFFFF", 3),
            ("1/0", 4),
            ("FFFFFFFF/FFFFFFFF", 4),
        ];
        for (at, tli) in cases {
            assert_eq!(h.timeline_at(lsn(at)), TimelineId(tli), "{at}");
        }
    }

    #[test]
    fn equal_switch_points() {
        // Timeline 2 existed for zero bytes: promoted and promoted again.
        let h = history(3, "1\t0/3000000\ta\n2\t0/3000000\tb\n");
        assert_eq!(h.timeline_at(lsn("0/2FFFFFF")), TimelineId(1));
        assert_eq!(h.timeline_at(lsn("0/3000000")), TimelineId(3));
    }

    #[test]
    fn switch_points_and_contains() {
        let h = history(4, TL4);
        assert_eq!(h.switch_point_of(TimelineId(1)), Some(lsn("0/3000000")));
        assert_eq!(h.switch_point_of(TimelineId(3)), Some(lsn("1/0")));
        assert_eq!(h.switch_point_of(TimelineId(4)), None);
        assert_eq!(h.switch_point_of(TimelineId(9)), None);
        for tli in 1..=4 {
            assert!(h.contains(TimelineId(tli)), "{tli}");
        }
        assert!(!h.contains(TimelineId(5)));
        // Ancestry can skip timelines (timeline 2 belongs to another branch).
        let h = history(3, "1\t0/3000000\n");
        assert!(!h.contains(TimelineId(2)));
    }

    #[test]
    fn display_round_trip() {
        let h = history(4, TL4);
        let text = h.to_string();
        assert!(text.starts_with("1\t0/3000000\tno recovery target specified\n2\t0/5000A28\t"));
        assert_eq!(history(4, &text), h);
    }

    #[test]
    fn bad_timeline_field() {
        let e = history_err(3, "1\t0/3000000\tx\nabc\t0/4000000\n");
        assert!(matches!(
            &e,
            HistoryError::BadTimeline { line: 2, found, source: TimelineParseError::NotDecimal { .. } } if found == "abc"
        ));
        assert_eq!(
            e.to_string(),
            "line 2: expected a parent timeline ID (a decimal number from 1), found \"abc\""
        );
        assert!(std::error::Error::source(&e).is_some());
        assert!(matches!(
            history_err(3, "0\t0/3000000\n"),
            HistoryError::BadTimeline {
                line: 1,
                source: TimelineParseError::Zero { .. },
                ..
            }
        ));
    }

    #[test]
    fn missing_switch_point() {
        let e = history_err(3, "\n1   \n");
        assert_eq!(
            e,
            HistoryError::MissingSwitchPoint {
                line: 2,
                text: "1   ".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "line 2: \"1   \" has no switch point, expected \"parentTLI<TAB>switchpoint<TAB>reason\""
        );
    }

    #[test]
    fn bad_switch_point() {
        let e = history_err(3, "1\t3000000\treason\n");
        assert!(matches!(
            &e,
            HistoryError::BadSwitchPoint { line: 1, found, source: LsnParseError::MissingSeparator { .. } } if found == "3000000"
        ));
        assert_eq!(
            e.to_string(),
            "line 1: expected a switch point LSN like \"0/3000000\", found \"3000000\""
        );
    }

    #[test]
    fn timelines_must_increase() {
        let e = history_err(5, "2\t0/3000000\n2\t0/4000000\n");
        assert_eq!(
            e,
            HistoryError::TimelineNotIncreasing {
                line: 2,
                parent: TimelineId(2),
                previous: TimelineId(2)
            }
        );
        assert_eq!(
            e.to_string(),
            "line 2: timeline 2 does not follow timeline 2, timeline IDs must increase"
        );
        assert!(matches!(
            history_err(5, "3\t0/3000000\n# c\n1\t0/4000000\n"),
            HistoryError::TimelineNotIncreasing { line: 3, .. }
        ));
    }

    /// PostgreSQL writes such a file when a recovery target on timeline 2
    /// lies inside a segment that timeline 1 already continued past; its
    /// reader accepts it, and so must walvault, with the same owners.
    #[test]
    fn switch_points_may_go_back_as_postgresql_allows() {
        let h = TimelineHistory::parse(
            TimelineId(3),
            "1\t0/5000000\tno recovery target specified\n2\t0/4800000\tafter LSN\n",
        )
        .expect("PostgreSQL reads this file, so walvault does");
        assert_eq!(h.timeline_at(lsn("0/4900000")), TimelineId(3));
        assert_eq!(h.timeline_at(lsn("0/4800000")), TimelineId(3));
        assert_eq!(h.timeline_at(lsn("0/47FFFFF")), TimelineId(1));
        assert_eq!(h.timeline_at(lsn("0/1000000")), TimelineId(1));
        assert_eq!(h.timeline_at(lsn("1/0")), TimelineId(3));
    }

    #[test]
    fn parents_must_be_below_timeline() {
        let e = history_err(2, "1\t0/3000000\n2\t0/4000000\n");
        assert_eq!(
            e,
            HistoryError::ParentNotBelowTimeline {
                line: 2,
                parent: TimelineId(2),
                timeline: TimelineId(2)
            }
        );
        assert_eq!(
            e.to_string(),
            "line 2: parent timeline 2 is not below timeline 2 whose history this is"
        );
        assert!(matches!(
            history_err(2, "7\t0/3000000\n"),
            HistoryError::ParentNotBelowTimeline { line: 1, .. }
        ));
    }

    const BACKUP: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\n\
        BACKUP METHOD: streamed\n\
        BACKUP FROM: primary\n\
        START TIME: 2024-05-01 10:00:00 UTC\n\
        LABEL: nightly base backup\n\
        START TIMELINE: 1\n\
        STOP TIME: 2024-05-01 10:00:05 UTC\n\
        STOP TIMELINE: 1\n";

    fn backup(text: &str) -> BackupHistory {
        match parse_backup_history(text) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn parses_backup_history() {
        assert_eq!(
            backup(BACKUP),
            BackupHistory {
                start_lsn: lsn("0/2000028"),
                stop_lsn: Some(lsn("0/2000100")),
                label: Some("nightly base backup".into()),
            }
        );
    }

    #[test]
    fn backup_history_minimal() {
        assert_eq!(
            backup("START WAL LOCATION: 16/B374D848\r\n"),
            BackupHistory {
                start_lsn: lsn("16/B374D848"),
                stop_lsn: None,
                label: None,
            }
        );
        // Empty label and a label without the space after the colon.
        assert_eq!(
            backup("START WAL LOCATION: 0/1\nLABEL: \n")
                .label
                .as_deref(),
            Some("")
        );
        assert_eq!(
            backup("START WAL LOCATION:0/1\nLABEL:x\n").label.as_deref(),
            Some("x")
        );
    }

    #[test]
    fn backup_history_requires_start() {
        let e =
            parse_backup_history("STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n");
        assert_eq!(e, Err(HistoryError::MissingStartLocation));
        assert_eq!(
            parse_backup_history("").map_err(|e| e.to_string()),
            Err("backup history has no \"START WAL LOCATION\" line".into())
        );
        // Near misses are not the field.
        assert_eq!(
            parse_backup_history("START WAL LOCATIONS: 0/1\nstart wal location: 0/1\n"),
            Err(HistoryError::MissingStartLocation)
        );
    }

    #[test]
    fn backup_history_bad_locations() {
        let e = parse_backup_history("LABEL: x\nSTART WAL LOCATION: nowhere (file 1)\n");
        assert!(matches!(
            &e,
            Err(HistoryError::BadBackupLocation { line: 2, field: "START WAL LOCATION", found, .. }) if found == "nowhere (file 1)"
        ));
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("line 2: \"START WAL LOCATION\" should start with an LSN like \"0/2000028\", found \"nowhere (file 1)\"".into())
        );
        assert!(matches!(
            parse_backup_history("START WAL LOCATION: 0/1\nSTOP WAL LOCATION:\n"),
            Err(HistoryError::BadBackupLocation {
                line: 2,
                field: "STOP WAL LOCATION",
                ..
            })
        ));
    }

    #[test]
    fn backup_history_duplicates() {
        for (text, field) in [
            (
                "START WAL LOCATION: 0/1\nSTART WAL LOCATION: 0/2\n",
                START_FIELD,
            ),
            (
                "START WAL LOCATION: 0/1\nSTOP WAL LOCATION: 0/2\nSTOP WAL LOCATION: 0/3\n",
                STOP_FIELD,
            ),
            ("LABEL: a\nSTART WAL LOCATION: 0/1\nLABEL: b\n", LABEL_FIELD),
        ] {
            let e = parse_backup_history(text);
            assert!(
                matches!(e, Err(HistoryError::DuplicateField { field: f, .. }) if f == field),
                "{text}"
            );
        }
        assert_eq!(
            parse_backup_history("LABEL: a\nLABEL: b\n").map_err(|e| e.to_string()),
            Err("line 2: \"LABEL\" appears more than once".into())
        );
    }
}
