//! Repository health for `walvault status`: GOOD, WARNING or CRITICAL, with
//! the reasons, from what the repository holds ([`plan_health`]), and the
//! verification records that `walvault verify` leaves behind
//! ([`VerifyRecord`], [`write_verify_record`], [`read_verify_record`]).
//!
//! This module owns the health rules and the `status/` keys of the
//! repository (`status/verify.json`, `status/verify-restore.json`: plain
//! JSON, overwritten by each run, not part of any backup). [`plan_health`]
//! is pure: it reads no clock (the caller passes `now`), lists nothing and
//! prints nothing. It must not decide exit codes other than through
//! [`Level::exit_code`], nor format output for a terminal or for Prometheus;
//! the command does that with the [`Health`] it gets back.
//!
//! The checks, each producing [`Reason`]s (one GOOD reason saying what is
//! fine when it finds nothing):
//! - `backup_age`: the newest complete backup, by its stop time.
//! - `wal_age`: the newest archived WAL segment, by the time it was archived:
//!   the recovery point actually achieved if the server died now.
//! - `wal_gap`: every complete backup can replay its timeline, without a
//!   hole, from its first WAL segment to the newest segment archived on that
//!   timeline (or to its own last segment, if that is later). Only the
//!   backup's own timeline is checked: WAL on later timelines (after a
//!   promotion) is not, which keeps the rule simple and never raises a false
//!   alarm; `walvault restore --dry-run` checks the full path.
//! - `verify`: the last `walvault verify` / `walvault verify --restore`
//!   results. Skipped entirely when [`Thresholds::verify_stale`] is zero.
//!
//! Incomplete backups (no manifest) are counted, never a problem by
//! themselves. Reason messages are one line each (advice after `; `), so the
//! first one reads well as a Nagios status line; reasons come worst first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::repo::manifest::BackupManifest;
use crate::repo::{BackupListing, ObjectError, RepoError, Repository, WalObject};
use crate::storage::{Key, PutMode, StorageError};
use crate::wal::{Lsn, SegmentNo, TimelineId, WalFileName, WalSegmentSize};

/// The kind of record `walvault verify` writes.
pub const KIND_VERIFY: &str = "verify";
/// The kind of record `walvault verify --restore` writes.
pub const KIND_VERIFY_RESTORE: &str = "verify-restore";

/// The result of the last verification of one kind, kept in the repository
/// so that `status` on any machine sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VerifyRecord {
    /// [`KIND_VERIFY`] or [`KIND_VERIFY_RESTORE`].
    pub kind: String,
    /// RFC 3339, e.g. `2026-11-21T04:12:09Z`.
    pub finished_at: String,
    pub success: bool,
    pub duration_secs: f64,
    /// What failed, one line each; empty on success.
    pub problems: Vec<String>,
    /// The backup that was verified, when there was one.
    pub backup_label: Option<String>,
    /// A drill's recovery target (`immediate`: the end of the backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// WAL the drill replayed, from the backup's start to where recovery
    /// stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_replayed_bytes: Option<u64>,
    /// `--check-sql` statements that passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_passed: Option<usize>,
}

impl VerifyRecord {
    pub fn finished_at_ts(&self) -> Option<Timestamp> {
        self.finished_at.parse().ok()
    }
}

/// Where the record of a verification kind lives: `status/<kind>.json`.
/// `kind` is one of the `KIND_*` constants.
pub fn verify_record_key(kind: &str) -> Key {
    Key::new(format!("status/{kind}.json")).expect("verification kinds make valid keys")
}

/// Stores `rec` as the latest record of its kind, replacing the previous
/// one. A non-finite duration is stored as 0 (JSON has no NaN).
pub async fn write_verify_record(repo: &Repository, rec: &VerifyRecord) -> Result<(), RepoError> {
    let mut rec = rec.clone();
    if !rec.duration_secs.is_finite() {
        rec.duration_secs = 0.0;
    }
    let mut json = serde_json::to_vec_pretty(&rec).expect("verification records serialize");
    json.push(b'\n');
    repo.store()
        .put_bytes(
            &verify_record_key(&rec.kind),
            Bytes::from(json),
            PutMode::Overwrite,
        )
        .await?;
    Ok(())
}

/// The latest record of `kind`, or `None` when that kind never ran. A record
/// that is not valid JSON, or of another kind, is an integrity error.
pub async fn read_verify_record(
    repo: &Repository,
    kind: &str,
) -> Result<Option<VerifyRecord>, RepoError> {
    let key = verify_record_key(kind);
    let bytes = match repo.store().get_bytes(&key).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let corrupt = |reason: String| {
        RepoError::Object(ObjectError::Integrity {
            key: key.clone(),
            reason,
        })
    };
    let rec: VerifyRecord = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(format!("not a verification record: {e}")))?;
    if rec.kind != kind {
        return Err(corrupt(format!(
            "holds a \"{}\" record where a \"{kind}\" record belongs",
            rec.kind
        )));
    }
    Ok(Some(rec))
}

/// When an age becomes a WARNING or CRITICAL finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub backup_warn: Duration,
    pub backup_crit: Duration,
    pub wal_warn: Duration,
    pub wal_crit: Duration,
    /// A successful verification older than this is a WARNING; zero turns
    /// the verification checks off.
    pub verify_stale: Duration,
}

const HOUR: u64 = 3600;

impl Default for Thresholds {
    /// Backups older than 25h / 50h, WAL older than 1h / 6h, verification
    /// older than 8 days.
    fn default() -> Self {
        Thresholds {
            backup_warn: Duration::from_secs(25 * HOUR),
            backup_crit: Duration::from_secs(50 * HOUR),
            wal_warn: Duration::from_secs(HOUR),
            wal_crit: Duration::from_secs(6 * HOUR),
            verify_stale: Duration::from_secs(8 * 24 * HOUR),
        }
    }
}

/// A health level; the worst one wins (`Good < Warning < Critical`).
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Good,
    Warning,
    Critical,
}

impl Level {
    /// The Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL.
    pub fn exit_code(self) -> u8 {
        match self {
            Level::Good => 0,
            Level::Warning => 1,
            Level::Critical => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Good => "GOOD",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding of one check.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Reason {
    pub level: Level,
    /// `backup_age`, `wal_age`, `wal_gap` or `verify`.
    pub check: &'static str,
    pub message: String,
}

pub const CHECK_BACKUP_AGE: &str = "backup_age";
pub const CHECK_WAL_AGE: &str = "wal_age";
pub const CHECK_WAL_GAP: &str = "wal_gap";
pub const CHECK_VERIFY: &str = "verify";
pub const CHECK_ARCHIVE_BACKLOG: &str = "archive_backlog";
pub const CHECK_OFFSITE_LAG: &str = "offsite_lag";

/// How far the second repository lags behind the first.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct OffsiteLag {
    pub repo_index: usize,
    /// How long the oldest thing repo1 holds and repo2 lacks has waited:
    /// a complete backup newer than repo2's newest, or a WAL file after
    /// repo2's oldest that it lacks. 0 when repo2 is up to date.
    pub lag_secs: i64,
    pub missing_backups: Vec<String>,
    pub missing_wal_files: usize,
}

/// Compares the second repository with the first, as of `now`. Backups
/// repo2 expired earlier (older than its newest) are not lag: each
/// repository keeps its own retention.
pub fn plan_offsite(
    repo_index: usize,
    first_backups: &[BackupListing],
    first_wal: &[WalObject],
    second_backups: &[BackupListing],
    second_wal: &[WalObject],
    now: Timestamp,
) -> OffsiteLag {
    let stops = |backups: &[BackupListing]| -> Vec<(String, i64)> {
        backups
            .iter()
            .filter_map(|b| {
                let m = b.manifest.as_ref()?;
                Some((b.label.clone(), m.stop_time_ts()?.as_second()))
            })
            .collect()
    };
    let (first, second) = (stops(first_backups), stops(second_backups));
    let second_newest = second.iter().map(|(_, t)| *t).max();
    let have: BTreeSet<&str> = second.iter().map(|(l, _)| l.as_str()).collect();
    let missing: Vec<&(String, i64)> = first
        .iter()
        .filter(|(l, t)| !have.contains(l.as_str()) && second_newest.is_none_or(|n| *t > n))
        .collect();
    let mut oldest_missing = missing.iter().map(|(_, t)| *t).min();
    // WAL repo2 lacks from its oldest on (older WAL it expired is not
    // lag): after its newest, and holes left by failed optional pushes.
    let second_keys: BTreeSet<&str> = second_wal.iter().map(|w| w.key.as_str()).collect();
    let second_first = second_keys.iter().next().copied();
    let wal_missing: Vec<&WalObject> = first_wal
        .iter()
        .filter(|w| {
            let key = w.key.as_str();
            !second_keys.contains(key) && second_first.is_none_or(|first| key > first)
        })
        .collect();
    if let Some(t) = wal_missing.iter().map(|w| w.archived_unix_secs).min() {
        oldest_missing = Some(oldest_missing.map_or(t, |b| b.min(t)));
    }
    OffsiteLag {
        repo_index,
        lag_secs: oldest_missing.map_or(0, |t| age_secs(t, now)),
        missing_backups: missing.iter().map(|(l, _)| l.clone()).collect(),
        missing_wal_files: wal_missing.len(),
    }
}

/// Limits of the archive backlog (files PostgreSQL finished but walvault
/// has not stored yet): WAL piles up in pg_wal meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct BacklogThresholds {
    pub warn_segments: usize,
    pub crit_segments: usize,
    pub warn_age: Duration,
    pub crit_age: Duration,
}

/// The backlog's finding, if it is beyond a limit.
pub fn plan_backlog(
    backlog: &crate::archive::spool::Backlog,
    t: &BacklogThresholds,
) -> Option<Reason> {
    let facts = format!(
        "{} WAL files ({:.1} MiB) wait to be archived, the oldest for {}s",
        backlog.segments,
        backlog.bytes as f64 / (1u64 << 20) as f64,
        backlog.oldest_age_secs
    );
    let age = backlog.oldest_age_secs;
    let level = if backlog.segments >= t.crit_segments || exceeds(age, t.crit_age) {
        Level::Critical
    } else if backlog.segments >= t.warn_segments || exceeds(age, t.warn_age) {
        Level::Warning
    } else {
        return None;
    };
    Some(reason(
        level,
        CHECK_ARCHIVE_BACKLOG,
        format!(
            "{facts} (limits: {} / {} files, {} / {}); pg_wal grows until the repository catches up",
            t.warn_segments,
            t.crit_segments,
            human_limit(t.warn_age),
            human_limit(t.crit_age)
        ),
    ))
}

/// The health of a repository and the facts behind it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Health {
    /// The worst level among `reasons`.
    pub level: Level,
    /// Worst first.
    pub reasons: Vec<Reason>,
    pub newest_backup: Option<String>,
    /// Never negative: a stop time in the future (clock skew) counts as 0.
    pub newest_backup_age_secs: Option<i64>,
    pub newest_wal: Option<String>,
    pub newest_wal_age_secs: Option<i64>,
    pub complete_backups: usize,
    pub incomplete_backups: usize,
    /// Every archived WAL object (segments, partial, backup and history
    /// files) and their stored size.
    pub wal_files: usize,
    pub wal_bytes: u64,
    pub last_verify: Option<VerifyRecord>,
    pub last_verify_restore: Option<VerifyRecord>,
    /// With `status --pgdata`: WAL waiting to be archived.
    pub archive_backlog: Option<crate::archive::spool::Backlog>,
    /// With a second repository: how far it lags behind the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsite: Option<OffsiteLag>,
    /// With a second repository and no --repo-index: its own health (its
    /// findings are also among `reasons`, prefixed `repo2:`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub more_repositories: Vec<Health>,
}

impl Health {
    /// Adds the backlog finding (if any) and its facts, keeping reasons
    /// worst first and the level the worst.
    pub fn with_backlog(
        mut self,
        backlog: crate::archive::spool::Backlog,
        t: &BacklogThresholds,
    ) -> Health {
        if let Some(r) = plan_backlog(&backlog, t) {
            self.level = self.level.max(r.level);
            self.reasons.push(r);
            self.reasons.sort_by(|a, b| b.level.cmp(&a.level));
        }
        self.archive_backlog = Some(backlog);
        self
    }

    fn add(&mut self, r: Reason) {
        self.level = self.level.max(r.level);
        self.reasons.push(r);
        self.reasons.sort_by(|a, b| b.level.cmp(&a.level));
    }

    /// Adds another repository's health: its findings, prefixed with its
    /// name, count toward this level.
    pub fn with_repository(mut self, index: usize, other: Health) -> Health {
        for r in &other.reasons {
            self.add(Reason {
                message: format!("repo{index}: {}", r.message),
                ..r.clone()
            });
        }
        self.more_repositories.push(other);
        self
    }

    /// A repository that could not be read at all: CRITICAL.
    pub fn with_unreadable(mut self, index: usize, error: &str) -> Health {
        self.add(reason(
            Level::Critical,
            CHECK_OFFSITE_LAG,
            format!("repo{index} cannot be read: {error}"),
        ));
        self
    }

    /// Adds the offsite lag finding, if beyond a limit.
    pub fn with_offsite(mut self, lag: OffsiteLag, warn: Duration, crit: Duration) -> Health {
        if let Some((level, limit)) = grade(lag.lag_secs, warn, crit) {
            let mut what = Vec::new();
            if !lag.missing_backups.is_empty() {
                what.push(format!(
                    "backup(s) {} not copied",
                    lag.missing_backups.join(", ")
                ));
            }
            if lag.missing_wal_files > 0 {
                what.push(format!("{} WAL file(s) not stored", lag.missing_wal_files));
            }
            self.add(reason(
                level,
                CHECK_OFFSITE_LAG,
                format!(
                    "repo{} lags repo1 by {} ({}): {}; run walvault copy --to repo{}",
                    lag.repo_index,
                    human_duration(lag.lag_secs),
                    limit,
                    what.join(", "),
                    lag.repo_index
                ),
            ));
        }
        self.offsite = Some(lag);
        self
    }
}

/// Decides the health of a repository from its backups, its archived WAL
/// and the last verification records, as of `now`.
pub fn plan_health(
    backups: &[BackupListing],
    wal: &[WalObject],
    verify: Option<&VerifyRecord>,
    verify_restore: Option<&VerifyRecord>,
    thresholds: &Thresholds,
    now: Timestamp,
) -> Health {
    let complete: Vec<&BackupManifest> =
        backups.iter().filter_map(|b| b.manifest.as_ref()).collect();
    let incomplete = backups.len() - complete.len();
    let mut reasons = Vec::new();

    let (newest_backup, newest_backup_age_secs) =
        check_backup_age(&complete, incomplete, thresholds, now, &mut reasons);
    let (newest_wal, newest_wal_age_secs) = check_wal_age(wal, thresholds, now, &mut reasons);
    check_wal_gaps(&complete, wal, &mut reasons);
    if !thresholds.verify_stale.is_zero() {
        check_verify(
            &[verify, verify_restore],
            thresholds.verify_stale,
            now,
            &mut reasons,
        );
    }
    // Stable: within a level, the order of the checks.
    reasons.sort_by_key(|r| std::cmp::Reverse(r.level));

    Health {
        level: reasons.iter().map(|r| r.level).max().unwrap_or(Level::Good),
        reasons,
        newest_backup,
        newest_backup_age_secs,
        newest_wal,
        newest_wal_age_secs,
        complete_backups: complete.len(),
        incomplete_backups: incomplete,
        wal_files: wal.len(),
        wal_bytes: wal.iter().map(|w| w.stored_bytes).sum(),
        last_verify: verify.cloned(),
        last_verify_restore: verify_restore.cloned(),
        archive_backlog: None,
        offsite: None,
        more_repositories: Vec::new(),
    }
}

fn reason(level: Level, check: &'static str, message: String) -> Reason {
    Reason {
        level,
        check,
        message,
    }
}

/// Seconds from `then` to `now`, 0 if `then` is in the future.
fn age_secs(then_unix_secs: i64, now: Timestamp) -> i64 {
    now.as_second().saturating_sub(then_unix_secs).max(0)
}

fn exceeds(age_secs: i64, limit: Duration) -> bool {
    Duration::from_secs(age_secs.max(0) as u64) > limit
}

/// A duration for people: `45s`, `12m`, `3h 2m`, `26h 5m`, `3d 2h`. Hours
/// are counted up to 72, so that ages read against the default thresholds
/// (25h, 50h) in the same unit.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    let with = |big: String, small: i64, unit: &str| {
        if small == 0 {
            big
        } else {
            format!("{big} {small}{unit}")
        }
    };
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{m}m")
    } else if secs < 72 * 3600 {
        with(format!("{h}h"), m % 60, "m")
    } else {
        with(format!("{d}d"), h % 24, "h")
    }
}

fn human_limit(limit: Duration) -> String {
    human_duration(i64::try_from(limit.as_secs()).unwrap_or(i64::MAX))
}

/// Which of a warning and a critical threshold an age passes, with the
/// threshold's words for the message.
fn grade(age: i64, warn: Duration, crit: Duration) -> Option<(Level, String)> {
    if exceeds(age, crit) {
        Some((
            Level::Critical,
            format!("critical above {}", human_limit(crit)),
        ))
    } else if exceeds(age, warn) {
        Some((
            Level::Warning,
            format!("warning above {}", human_limit(warn)),
        ))
    } else {
        None
    }
}

fn check_backup_age(
    complete: &[&BackupManifest],
    incomplete: usize,
    thresholds: &Thresholds,
    now: Timestamp,
    reasons: &mut Vec<Reason>,
) -> (Option<String>, Option<i64>) {
    let check = CHECK_BACKUP_AGE;
    // A backup whose stop time cannot be read sorts before every other.
    let newest = complete
        .iter()
        .map(|m| (m.stop_time_ts(), m))
        .max_by(|a, b| (a.0, &a.1.label).cmp(&(b.0, &b.1.label)));
    let Some((stop, manifest)) = newest else {
        let also = match incomplete {
            0 => String::new(),
            n => format!(" ({n} incomplete)"),
        };
        reasons.push(reason(
            Level::Critical,
            check,
            format!("no complete backup in the repository{also}; take one with walvault backup"),
        ));
        return (None, None);
    };
    let label = manifest.label.clone();
    let Some(stop) = stop else {
        reasons.push(reason(
            Level::Warning,
            check,
            format!(
                "cannot tell the age of backup {label}: its stop time \"{}\" is not a timestamp",
                manifest.stop_time
            ),
        ));
        return (Some(label), None);
    };
    let age = age_secs(stop.as_second(), now);
    let old = format!(
        "newest complete backup {label} is {} old",
        human_duration(age)
    );
    reasons.push(
        match grade(age, thresholds.backup_warn, thresholds.backup_crit) {
            Some((level, limit)) => reason(
                level,
                check,
                format!("{old} ({limit}); check the schedule and the log of walvault backup"),
            ),
            None => reason(Level::Good, check, old),
        },
    );
    (Some(label), Some(age))
}

fn check_wal_age(
    wal: &[WalObject],
    thresholds: &Thresholds,
    now: Timestamp,
    reasons: &mut Vec<Reason>,
) -> (Option<String>, Option<i64>) {
    let check = CHECK_WAL_AGE;
    let newest = wal
        .iter()
        .filter(|w| matches!(w.name, WalFileName::Segment { .. }))
        .max_by_key(|w| (w.archived_unix_secs, w.name));
    let Some(newest) = newest else {
        reasons.push(reason(
            Level::Critical,
            check,
            "no WAL segment archived in the repository; check archive_mode, \
             archive_command (walvault-push %p) and pg_stat_archiver"
                .to_string(),
        ));
        return (None, None);
    };
    let name = newest.name.to_string();
    let age = age_secs(newest.archived_unix_secs, now);
    let old = format!(
        "newest WAL segment {name} was archived {} ago",
        human_duration(age)
    );
    reasons.push(match grade(age, thresholds.wal_warn, thresholds.wal_crit) {
        Some((level, limit)) => reason(
            level,
            check,
            format!(
                "{old} ({limit}); check archive_command and pg_stat_archiver \
                 (failed_count, last_failed_wal), and set archive_timeout on quiet servers"
            ),
        ),
        None => reason(Level::Good, check, old),
    });
    (Some(name), Some(age))
}

/// A backup's first and last WAL segment: from the manifest's names, or its
/// LSNs when those are not segment names.
fn backup_wal_range(m: &BackupManifest, size: WalSegmentSize) -> (SegmentNo, SegmentNo) {
    let segment_of = |name: &str| match WalFileName::parse(name, size) {
        Ok(WalFileName::Segment { segment, .. }) => Some(segment),
        _ => None,
    };
    let first = segment_of(&m.start_wal).unwrap_or_else(|| m.start_lsn.segment_no(size));
    let last = segment_of(&m.stop_wal)
        .unwrap_or_else(|| Lsn(m.stop_lsn.0.saturating_sub(1)).segment_no(size));
    (first, last.max(first))
}

/// One hole in the archive and the backups it hurts.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GapKey {
    timeline: TimelineId,
    first_missing: SegmentNo,
    /// The last segment the backups need: the newest archived on the
    /// timeline, or their own last segment when later.
    end: SegmentNo,
    /// Whether the hole is inside the backups' own WAL range, so that they
    /// cannot be restored at all.
    unrestorable: bool,
    size: WalSegmentSize,
}

/// `a, b, c and 2 more`.
fn some_labels(labels: &[&str]) -> String {
    const SHOWN: usize = 3;
    let mut text = labels
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if labels.len() > SHOWN {
        text.push_str(&format!(" and {} more", labels.len() - SHOWN));
    }
    text
}

fn check_wal_gaps(complete: &[&BackupManifest], wal: &[WalObject], reasons: &mut Vec<Reason>) {
    let check = CHECK_WAL_GAP;
    let mut archived: BTreeMap<TimelineId, BTreeSet<SegmentNo>> = BTreeMap::new();
    for w in wal {
        if let WalFileName::Segment {
            timeline, segment, ..
        } = w.name
        {
            archived.entry(timeline).or_default().insert(segment);
        }
    }
    let empty = BTreeSet::new();
    let mut gaps: BTreeMap<GapKey, Vec<&BackupManifest>> = BTreeMap::new();
    for m in complete {
        let size = WalSegmentSize::new(m.wal_segment_size).unwrap_or_default();
        let (first, last) = backup_wal_range(m, size);
        let segments = archived.get(&m.timeline).unwrap_or(&empty);
        let end = segments.last().copied().unwrap_or(last).max(last);
        let mut expected = first;
        for &segment in segments.range(first..=end) {
            if segment != expected {
                break;
            }
            expected = SegmentNo(expected.0.saturating_add(1));
        }
        if expected <= end {
            let key = GapKey {
                timeline: m.timeline,
                first_missing: expected,
                end,
                unrestorable: expected <= last,
                size,
            };
            gaps.entry(key).or_default().push(m);
        }
    }
    if complete.is_empty() {
        reasons.push(reason(
            Level::Good,
            check,
            "no complete backup to check for WAL gaps".to_string(),
        ));
        return;
    }
    if gaps.is_empty() {
        reasons.push(reason(
            Level::Good,
            check,
            format!(
                "no WAL gaps: every complete backup ({}) has all segments of its timeline \
                 up to the newest archived one",
                complete.len()
            ),
        ));
        return;
    }
    for (gap, mut hurt) in gaps {
        hurt.sort_by(|a, b| {
            crate::repo::layout::label_order(&b.label)
                .cmp(&crate::repo::layout::label_order(&a.label))
        });
        let labels: Vec<&str> = hurt.iter().map(|m| m.label.as_str()).collect();
        let name = |s: SegmentNo| WalFileName::segment_file_name(gap.timeline, s, gap.size);
        let segments = archived.get(&gap.timeline).unwrap_or(&empty);
        let present = segments.range(gap.first_missing..=gap.end).count() as u64;
        let missing = (gap.end.0 - gap.first_missing.0 + 1).saturating_sub(present);
        let plural = if labels.len() == 1 { "" } else { "s" };
        let effect = if gap.unrestorable {
            format!("backup{plural} {} cannot be restored", some_labels(&labels))
        } else {
            format!(
                "recovery from backup{plural} {} stops before it",
                some_labels(&labels)
            )
        };
        reasons.push(reason(
            Level::Critical,
            check,
            format!(
                "WAL segment {} is missing from the archive: {effect} ({missing} of the segments \
                 from it to {} on timeline {} missing); check archive_command and \
                 pg_stat_archiver, then take a new backup",
                name(gap.first_missing),
                name(gap.end),
                gap.timeline,
            ),
        ));
    }
}

fn describe_record(rec: &VerifyRecord) -> String {
    match &rec.backup_label {
        Some(label) => format!("{} of backup {label}", rec.kind),
        None => rec.kind.clone(),
    }
}

fn check_verify(
    records: &[Option<&VerifyRecord>],
    stale: Duration,
    now: Timestamp,
    reasons: &mut Vec<Reason>,
) {
    let check = CHECK_VERIFY;
    let present: Vec<&VerifyRecord> = records.iter().flatten().copied().collect();
    if present.is_empty() {
        reasons.push(reason(
            Level::Warning,
            check,
            "never verified; run walvault verify --restore".to_string(),
        ));
        return;
    }
    let before = reasons.len();
    let mut newest_success: Option<(Timestamp, &VerifyRecord)> = None;
    for rec in &present {
        let Some(finished) = rec.finished_at_ts() else {
            reasons.push(reason(
                Level::Warning,
                check,
                format!(
                    "the {} record has an unreadable finish time \"{}\"; run walvault verify --restore",
                    rec.kind, rec.finished_at
                ),
            ));
            continue;
        };
        if !rec.success {
            const SHOWN: usize = 3;
            let mut problems = rec
                .problems
                .iter()
                .take(SHOWN)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("; ");
            if problems.is_empty() {
                problems = "no problem recorded".to_string();
            }
            if rec.problems.len() > SHOWN {
                problems.push_str(&format!(" (and {} more)", rec.problems.len() - SHOWN));
            }
            reasons.push(reason(
                Level::Critical,
                check,
                format!(
                    "{} failed {} ago: {problems}",
                    describe_record(rec),
                    human_duration(age_secs(finished.as_second(), now))
                ),
            ));
        } else if newest_success.is_none_or(|(t, _)| finished > t) {
            newest_success = Some((finished, rec));
        }
    }
    if let Some((finished, rec)) = newest_success {
        let age = age_secs(finished.as_second(), now);
        if exceeds(age, stale) {
            reasons.push(reason(
                Level::Warning,
                check,
                format!(
                    "last verification ({}) succeeded {} ago (warning above {}); \
                     run walvault verify --restore",
                    describe_record(rec),
                    human_duration(age),
                    human_limit(stale)
                ),
            ));
        } else if reasons.len() == before {
            reasons.push(reason(
                Level::Good,
                check,
                format!(
                    "last verification ({}) succeeded {} ago",
                    describe_record(rec),
                    human_duration(age)
                ),
            ));
        }
    }
}

#[cfg(test)]
mod backlog_tests {
    use super::*;
    use crate::archive::spool::Backlog;

    #[test]
    fn a_backlog_turns_warning_then_critical() {
        let t = BacklogThresholds {
            warn_segments: 10,
            crit_segments: 100,
            warn_age: Duration::from_secs(600),
            crit_age: Duration::from_secs(3600),
        };
        let b = |segments, oldest_age_secs| Backlog {
            segments,
            bytes: segments as u64 * (16 << 20),
            oldest_age_secs,
        };
        assert_eq!(plan_backlog(&b(3, 5), &t), None);
        assert_eq!(plan_backlog(&b(10, 5), &t).unwrap().level, Level::Warning);
        assert_eq!(plan_backlog(&b(3, 700), &t).unwrap().level, Level::Warning);
        let crit = plan_backlog(&b(100, 5), &t).unwrap();
        assert_eq!(crit.level, Level::Critical);
        assert!(
            crit.message.contains("100 WAL files (1600.0 MiB)"),
            "{}",
            crit.message
        );
        assert_eq!(
            plan_backlog(&b(1, 4000), &t).unwrap().level,
            Level::Critical
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::layout::wal_key;
    use crate::repo::CompressSettings;
    use crate::storage::faulty::{FaultyStore, Op};
    use crate::storage::memory::MemoryStore;
    use crate::storage::ObjectStore;

    const SIZE: WalSegmentSize = WalSegmentSize::DEFAULT;
    const NOW: &str = "2026-11-21T13:32:00Z";
    const LABEL: &str = "20261121T102959Z";

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("test timestamp")
    }

    fn now() -> Timestamp {
        ts(NOW)
    }

    fn seg_name(tli: u32, segment: u64) -> String {
        WalFileName::segment_file_name(TimelineId(tli), SegmentNo(segment), SIZE)
    }

    /// A manifest on timeline `tli` needing segments `first..=last`.
    fn manifest(label: &str, tli: u32, first: u64, last: u64, stop_time: &str) -> BackupManifest {
        let start_lsn = Lsn(first * SIZE.bytes() + 0x28);
        let stop_lsn = Lsn(last * SIZE.bytes() + 0x100);
        BackupManifest {
            start_time: "2026-11-21T10:00:00Z".to_owned(),
            ..crate::repo::manifest::test_manifest(
                label,
                TimelineId(tli),
                start_lsn,
                stop_lsn,
                SIZE,
                stop_time,
            )
        }
    }

    fn complete(label: &str, tli: u32, first: u64, last: u64, stop_time: &str) -> BackupListing {
        BackupListing {
            label: label.to_owned(),
            manifest: Some(manifest(label, tli, first, last, stop_time)),
            file_count: 0,
            object_count: 3,
            stored_bytes: 600,
            newest_object_unix_secs: 0,
            writer_alive: None,
        }
    }

    fn incomplete(label: &str) -> BackupListing {
        BackupListing {
            label: label.to_owned(),
            manifest: None,
            file_count: 0,
            object_count: 2,
            stored_bytes: 100,
            newest_object_unix_secs: 0,
            writer_alive: None,
        }
    }

    fn object(name: WalFileName, archived_at: &str) -> WalObject {
        WalObject {
            key: wal_key(&name),
            name,
            stored_bytes: 1000,
            archived_unix_secs: ts(archived_at).as_second(),
        }
    }

    fn seg(tli: u32, segment: u64, archived_at: &str) -> WalObject {
        object(
            WalFileName::Segment {
                timeline: TimelineId(tli),
                segment: SegmentNo(segment),
                size: SIZE,
            },
            archived_at,
        )
    }

    /// Segments `first..=last` of `tli`, the last archived at `newest_at`,
    /// the others a minute earlier each.
    fn segs(tli: u32, first: u64, last: u64, newest_at: &str) -> Vec<WalObject> {
        let newest = ts(newest_at).as_second();
        (first..=last)
            .map(|n| {
                let mut o = seg(tli, n, newest_at);
                o.archived_unix_secs = newest - 60 * (last - n) as i64;
                o
            })
            .collect()
    }

    #[test]
    fn the_offsite_copy_lags_by_the_oldest_thing_it_lacks() {
        let day1 = complete("20261120T100000Z", 1, 2, 3, "2026-11-20T10:30:00Z");
        let day2 = complete("20261121T100000Z", 1, 8, 9, "2026-11-21T10:30:00Z");
        let wal1 = segs(1, 2, 12, "2026-11-21T13:00:00Z");
        // Up to date: the same backups and WAL.
        let lag = plan_offsite(
            2,
            &[day1.clone(), day2.clone()],
            &wal1,
            &[day1.clone(), day2.clone()],
            &wal1,
            now(),
        );
        assert_eq!((lag.lag_secs, lag.missing_wal_files), (0, 0));
        assert!(lag.missing_backups.is_empty());
        // repo2 expired day1 already: not lag.
        let lag = plan_offsite(
            2,
            &[day1.clone(), day2.clone()],
            &wal1,
            &[day2.clone()],
            &wal1[6..],
            now(),
        );
        assert_eq!(lag.lag_secs, 0, "{lag:?}");
        // repo2 lacks day2 and the WAL after segment 7: the backup stopped
        // at 10:30, three hours before now, segment 8 was archived at 12:56.
        let lag = plan_offsite(
            2,
            &[day1.clone(), day2.clone()],
            &wal1,
            &[day1.clone()],
            &wal1[..6],
            now(),
        );
        assert_eq!(lag.missing_backups, ["20261121T100000Z"]);
        assert_eq!(lag.missing_wal_files, 5);
        assert_eq!(lag.lag_secs, 3 * 3600 + 2 * 60);
        let h = plan_health(
            &[day2.clone()],
            &wal1,
            None,
            None,
            &Thresholds::default(),
            now(),
        );
        let warned = h.clone().with_offsite(
            lag.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(86400),
        );
        let r = warned
            .reasons
            .iter()
            .find(|r| r.check == CHECK_OFFSITE_LAG)
            .unwrap();
        assert_eq!(r.level, Level::Warning);
        assert!(
            r.message.contains("repo2 lags repo1 by 3h 2m")
                && r.message.contains("walvault copy --to repo2"),
            "{}",
            r.message
        );
        let fine = h.with_offsite(
            lag,
            Duration::from_secs(4 * 3600),
            Duration::from_secs(86400),
        );
        assert!(fine.reasons.iter().all(|r| r.check != CHECK_OFFSITE_LAG));
        // A hole in repo2's WAL counts too.
        let mut holed = wal1.clone();
        holed.remove(5);
        let lag = plan_offsite(2, &[day2.clone()], &wal1, &[day2.clone()], &holed, now());
        assert_eq!(lag.missing_wal_files, 1);
        assert!(lag.lag_secs > 0);
        // An empty repo2 lags by the age of everything.
        let lag = plan_offsite(2, &[day2.clone()], &wal1, &[], &[], now());
        assert_eq!(lag.missing_wal_files, 11);
    }

    fn rec(kind: &str, finished_at: &str, success: bool, problems: &[&str]) -> VerifyRecord {
        VerifyRecord {
            kind: kind.to_owned(),
            finished_at: finished_at.to_owned(),
            success,
            duration_secs: 42.5,
            problems: problems.iter().map(|p| p.to_string()).collect(),
            backup_label: None,
            target: None,
            wal_replayed_bytes: None,
            checks_passed: None,
        }
    }

    /// A healthy repository: one fresh backup, WAL up to a few minutes ago,
    /// a recent successful verify-restore.
    struct Case {
        backups: Vec<BackupListing>,
        wal: Vec<WalObject>,
        verify: Option<VerifyRecord>,
        verify_restore: Option<VerifyRecord>,
        thresholds: Thresholds,
    }

    impl Case {
        fn healthy() -> Case {
            Case {
                backups: vec![complete(LABEL, 1, 3, 4, "2026-11-21T10:30:00Z")],
                wal: segs(1, 3, 9, "2026-11-21T13:28:00Z"),
                verify: None,
                verify_restore: Some(rec(KIND_VERIFY_RESTORE, "2026-11-18T12:00:00Z", true, &[])),
                thresholds: Thresholds::default(),
            }
        }

        fn run(&self) -> Health {
            plan_health(
                &self.backups,
                &self.wal,
                self.verify.as_ref(),
                self.verify_restore.as_ref(),
                &self.thresholds,
                now(),
            )
        }
    }

    fn of_check<'h>(health: &'h Health, check: &str) -> Vec<&'h Reason> {
        health.reasons.iter().filter(|r| r.check == check).collect()
    }

    /// The one reason of `check`, checking its level.
    fn only(health: &Health, check: &str, level: Level) -> String {
        let found = of_check(health, check);
        assert_eq!(found.len(), 1, "{check}: {:#?}", health.reasons);
        assert_eq!(found[0].level, level, "{check}: {}", found[0].message);
        found[0].message.clone()
    }

    #[test]
    fn a_healthy_repository_is_good_with_one_reason_per_check() {
        let mut case = Case::healthy();
        case.backups.push(incomplete("20261121T120000Z"));
        let health = case.run();
        assert_eq!(health.level, Level::Good);
        assert_eq!(
            only(&health, CHECK_BACKUP_AGE, Level::Good),
            "newest complete backup 20261121T102959Z is 3h 2m old"
        );
        assert_eq!(
            only(&health, CHECK_WAL_AGE, Level::Good),
            "newest WAL segment 000000010000000000000009 was archived 4m ago"
        );
        assert!(only(&health, CHECK_WAL_GAP, Level::Good).starts_with("no WAL gaps"));
        assert_eq!(
            only(&health, CHECK_VERIFY, Level::Good),
            "last verification (verify-restore) succeeded 3d 1h ago"
        );
        assert_eq!(health.reasons.len(), 4);
        assert_eq!(health.newest_backup.as_deref(), Some(LABEL));
        assert_eq!(health.newest_backup_age_secs, Some(3 * 3600 + 2 * 60));
        assert_eq!(
            health.newest_wal.as_deref(),
            Some("000000010000000000000009")
        );
        assert_eq!(health.newest_wal_age_secs, Some(240));
        assert_eq!(health.complete_backups, 1);
        assert_eq!(health.incomplete_backups, 1);
        assert_eq!(health.wal_files, 7);
        assert_eq!(health.wal_bytes, 7000);
        assert_eq!(health.last_verify, None);
        assert_eq!(health.last_verify_restore, case.verify_restore);
    }

    #[test]
    fn backup_age_levels() {
        let mut case = Case::healthy();
        case.backups = vec![
            complete("20261119T080000Z", 1, 1, 1, "2026-11-19T08:10:00Z"),
            complete(LABEL, 1, 3, 4, "2026-11-20T11:27:00Z"),
        ];
        case.wal = segs(1, 1, 9, "2026-11-21T13:28:00Z");
        let health = case.run();
        assert_eq!(health.level, Level::Warning);
        assert_eq!(
            only(&health, CHECK_BACKUP_AGE, Level::Warning),
            "newest complete backup 20261121T102959Z is 26h 5m old (warning above 25h); \
             check the schedule and the log of walvault backup"
        );

        case.backups = vec![complete(LABEL, 1, 3, 4, "2026-11-18T11:32:00Z")];
        let health = case.run();
        assert_eq!(health.level, Level::Critical);
        let message = only(&health, CHECK_BACKUP_AGE, Level::Critical);
        assert!(
            message.starts_with(
                "newest complete backup 20261121T102959Z is 3d 2h old (critical above 50h);"
            ),
            "{message}"
        );
        assert_eq!(health.newest_backup_age_secs, Some(3 * 86400 + 2 * 3600));

        // Exactly at the threshold is still fine.
        case.backups = vec![complete(LABEL, 1, 3, 4, "2026-11-20T12:32:00Z")];
        only(&case.run(), CHECK_BACKUP_AGE, Level::Good);
    }

    #[test]
    fn newest_backup_is_chosen_by_stop_time_not_by_order() {
        let mut case = Case::healthy();
        case.backups = vec![
            complete(LABEL, 1, 3, 4, "2026-11-21T10:30:00Z"),
            complete("20261120T000000Z", 1, 1, 1, "2026-11-20T00:10:00Z"),
        ];
        case.wal = segs(1, 1, 9, "2026-11-21T13:28:00Z");
        let health = case.run();
        assert_eq!(health.newest_backup.as_deref(), Some(LABEL));
        only(&health, CHECK_BACKUP_AGE, Level::Good);
    }

    #[test]
    fn no_complete_backup_is_critical() {
        let mut case = Case::healthy();
        case.backups = Vec::new();
        let health = case.run();
        assert_eq!(health.level, Level::Critical);
        assert_eq!(
            only(&health, CHECK_BACKUP_AGE, Level::Critical),
            "no complete backup in the repository; take one with walvault backup"
        );
        assert_eq!(
            only(&health, CHECK_WAL_GAP, Level::Good),
            "no complete backup to check for WAL gaps"
        );
        assert_eq!(health.newest_backup, None);
        assert_eq!(health.newest_backup_age_secs, None);

        // Incomplete backups are counted, and are no backup.
        case.backups = vec![incomplete(LABEL), incomplete("20261121T120000Z")];
        let health = case.run();
        assert_eq!(
            only(&health, CHECK_BACKUP_AGE, Level::Critical),
            "no complete backup in the repository (2 incomplete); take one with walvault backup"
        );
        assert_eq!(health.complete_backups, 0);
        assert_eq!(health.incomplete_backups, 2);
    }

    #[test]
    fn an_unreadable_stop_time_is_a_warning() {
        let mut case = Case::healthy();
        case.backups = vec![complete(LABEL, 1, 3, 4, "yesterday")];
        let health = case.run();
        assert_eq!(
            only(&health, CHECK_BACKUP_AGE, Level::Warning),
            "cannot tell the age of backup 20261121T102959Z: its stop time \"yesterday\" \
             is not a timestamp"
        );
        assert_eq!(health.newest_backup.as_deref(), Some(LABEL));
        assert_eq!(health.newest_backup_age_secs, None);

        // A readable one elsewhere wins over it.
        case.backups.push(complete(
            "20261121T090000Z",
            1,
            3,
            3,
            "2026-11-21T09:10:00Z",
        ));
        let health = case.run();
        assert_eq!(health.newest_backup.as_deref(), Some("20261121T090000Z"));
        only(&health, CHECK_BACKUP_AGE, Level::Good);
    }

    #[test]
    fn wal_age_levels() {
        let mut case = Case::healthy();
        case.wal = segs(1, 3, 9, "2026-11-21T11:30:00Z");
        let health = case.run();
        assert_eq!(health.level, Level::Warning);
        assert_eq!(
            only(&health, CHECK_WAL_AGE, Level::Warning),
            "newest WAL segment 000000010000000000000009 was archived 2h 2m ago \
             (warning above 1h); check archive_command and pg_stat_archiver \
             (failed_count, last_failed_wal), and set archive_timeout on quiet servers"
        );

        case.wal = segs(1, 3, 9, "2026-11-21T07:00:00Z");
        let health = case.run();
        assert_eq!(health.level, Level::Critical);
        let message = only(&health, CHECK_WAL_AGE, Level::Critical);
        assert!(
            message.starts_with(
                "newest WAL segment 000000010000000000000009 was archived 6h 32m ago \
                 (critical above 6h); check archive_command"
            ),
            "{message}"
        );
        assert_eq!(health.newest_wal_age_secs, Some(6 * 3600 + 32 * 60));
    }

    #[test]
    fn wal_age_counts_segments_only_by_archive_time() {
        let mut case = Case::healthy();
        case.wal = segs(1, 3, 9, "2026-11-21T13:00:00Z");
        // Archived later, but not segments: they say nothing of the RPO.
        case.wal.push(object(
            WalFileName::History {
                timeline: TimelineId(2),
            },
            "2026-11-21T13:31:00Z",
        ));
        case.wal.push(object(
            WalFileName::Partial {
                timeline: TimelineId(1),
                segment: SegmentNo(10),
                size: SIZE,
            },
            "2026-11-21T13:31:00Z",
        ));
        // A lower segment archived later (a late retry) is the newest.
        case.wal.push(seg(2, 2, "2026-11-21T13:20:00Z"));
        let health = case.run();
        assert_eq!(
            health.newest_wal.as_deref(),
            Some("000000020000000000000002")
        );
        assert_eq!(health.newest_wal_age_secs, Some(12 * 60));
        assert_eq!(health.wal_files, 10);
    }

    #[test]
    fn no_wal_segment_is_critical() {
        let mut case = Case::healthy();
        case.wal = vec![object(
            WalFileName::History {
                timeline: TimelineId(2),
            },
            "2026-11-21T13:31:00Z",
        )];
        let health = case.run();
        assert_eq!(health.level, Level::Critical);
        assert!(only(&health, CHECK_WAL_AGE, Level::Critical)
            .starts_with("no WAL segment archived in the repository; check archive_mode"));
        assert_eq!(health.newest_wal, None);
        assert_eq!(health.newest_wal_age_secs, None);
    }

    #[test]
    fn a_missing_segment_after_a_backup_is_critical() {
        let mut case = Case::healthy();
        case.wal.retain(|w| w.name.segment() != Some(SegmentNo(6)));
        case.wal.retain(|w| w.name.segment() != Some(SegmentNo(7)));
        let health = case.run();
        assert_eq!(health.level, Level::Critical);
        assert_eq!(
            only(&health, CHECK_WAL_GAP, Level::Critical),
            "WAL segment 000000010000000000000006 is missing from the archive: recovery from \
             backup 20261121T102959Z stops before it (2 of the segments from it to \
             000000010000000000000009 on timeline 1 missing); check archive_command and \
             pg_stat_archiver, then take a new backup"
        );
    }

    #[test]
    fn a_missing_segment_inside_a_backup_makes_it_unrestorable() {
        let mut case = Case::healthy();
        case.wal.retain(|w| w.name.segment() != Some(SegmentNo(4)));
        let message = only(&case.run(), CHECK_WAL_GAP, Level::Critical);
        assert!(
            message.starts_with(
                "WAL segment 000000010000000000000004 is missing from the archive: backup \
                 20261121T102959Z cannot be restored (1 of the segments"
            ),
            "{message}"
        );

        // Nothing at all on the backup's timeline: its own WAL is missing.
        case.wal = segs(2, 3, 9, "2026-11-21T13:28:00Z");
        let message = only(&case.run(), CHECK_WAL_GAP, Level::Critical);
        assert!(
            message.starts_with(
                "WAL segment 000000010000000000000003 is missing from the archive: backup \
                 20261121T102959Z cannot be restored (2 of the segments from it to \
                 000000010000000000000004 on timeline 1 missing)"
            ),
            "{message}"
        );
    }

    #[test]
    fn backups_hurt_by_one_gap_share_one_reason() {
        let mut case = Case::healthy();
        case.backups = ["20261101T000000Z", "20261102T000000Z", "20261103T000000Z"]
            .iter()
            .chain(&["20261104T000000Z", LABEL])
            .map(|label| complete(label, 1, 1, 1, "2026-11-21T10:30:00Z"))
            .collect();
        case.wal = segs(1, 1, 9, "2026-11-21T13:28:00Z");
        case.wal.retain(|w| w.name.segment() != Some(SegmentNo(5)));
        let health = case.run();
        let message = only(&health, CHECK_WAL_GAP, Level::Critical);
        assert!(
            message.contains(
                "recovery from backups 20261121T102959Z, 20261104T000000Z, 20261103T000000Z \
                 and 2 more stops before it"
            ),
            "{message}"
        );
    }

    #[test]
    fn gaps_are_checked_on_the_backups_own_timeline_only() {
        let mut case = Case::healthy();
        // The backup's timeline ends at segment 5 (a promotion); timeline 2
        // continues from there, with a hole at 7 that concerns no backup of
        // timeline 1.
        case.wal = segs(1, 3, 5, "2026-11-21T13:00:00Z");
        case.wal.extend(segs(2, 5, 9, "2026-11-21T13:28:00Z"));
        case.wal.retain(|w| w.name.to_string() != seg_name(2, 7));
        only(&case.run(), CHECK_WAL_GAP, Level::Good);

        // A backup on timeline 2 after the hole is fine, one before is not.
        case.backups.push(complete(
            "20261121T130000Z",
            2,
            8,
            8,
            "2026-11-21T13:10:00Z",
        ));
        only(&case.run(), CHECK_WAL_GAP, Level::Good);
        case.backups.push(complete(
            "20261121T120000Z",
            2,
            6,
            6,
            "2026-11-21T12:10:00Z",
        ));
        let message = only(&case.run(), CHECK_WAL_GAP, Level::Critical);
        assert!(
            message.starts_with(
                "WAL segment 000000020000000000000007 is missing from the archive: recovery \
                 from backup 20261121T120000Z stops before it"
            ),
            "{message}"
        );
    }

    #[test]
    fn two_different_gaps_give_two_reasons() {
        let mut case = Case::healthy();
        case.backups.push(complete(
            "20261121T130000Z",
            1,
            8,
            8,
            "2026-11-21T13:10:00Z",
        ));
        case.wal.retain(|w| w.name.segment() != Some(SegmentNo(5)));
        case.wal.retain(|w| w.name.segment() != Some(SegmentNo(8)));
        let health = case.run();
        let gaps = of_check(&health, CHECK_WAL_GAP);
        assert_eq!(gaps.len(), 2, "{gaps:#?}");
        assert!(gaps[0].message.contains("000000010000000000000005"));
        assert!(gaps[0]
            .message
            .contains("recovery from backup 20261121T102959Z"));
        assert!(gaps[1].message.contains("000000010000000000000008"));
        assert!(gaps[1]
            .message
            .contains("backup 20261121T130000Z cannot be restored"));
    }

    #[test]
    fn manifest_wal_names_that_are_not_segments_fall_back_to_lsns() {
        let mut m = manifest(LABEL, 1, 3, 4, "2026-11-21T10:30:00Z");
        m.start_wal = "?".to_owned();
        m.stop_wal = String::new();
        assert_eq!(backup_wal_range(&m, SIZE), (SegmentNo(3), SegmentNo(4)));
        // A stop LSN at a segment boundary ends in the segment before.
        m.stop_lsn = Lsn(5 * SIZE.bytes());
        assert_eq!(backup_wal_range(&m, SIZE), (SegmentNo(3), SegmentNo(4)));
        m.stop_lsn = Lsn(0);
        assert_eq!(backup_wal_range(&m, SIZE), (SegmentNo(3), SegmentNo(3)));
    }

    #[test]
    fn verify_checks_are_off_when_the_threshold_is_zero() {
        let mut case = Case::healthy();
        case.verify_restore = Some(rec(KIND_VERIFY_RESTORE, NOW, false, &["bad"]));
        case.thresholds.verify_stale = Duration::ZERO;
        let health = case.run();
        assert_eq!(health.level, Level::Good);
        assert!(of_check(&health, CHECK_VERIFY).is_empty());
        assert_eq!(health.last_verify_restore, case.verify_restore);
    }

    #[test]
    fn never_verified_is_a_warning() {
        let mut case = Case::healthy();
        case.verify_restore = None;
        let health = case.run();
        assert_eq!(health.level, Level::Warning);
        assert_eq!(
            only(&health, CHECK_VERIFY, Level::Warning),
            "never verified; run walvault verify --restore"
        );
    }

    #[test]
    fn a_failed_verification_is_critical_with_its_first_problems() {
        let mut case = Case::healthy();
        let mut failed = rec(
            KIND_VERIFY_RESTORE,
            "2026-11-21T04:32:00Z",
            false,
            &["p1", "p2", "p3", "p4", "p5"],
        );
        failed.backup_label = Some(LABEL.to_owned());
        case.verify_restore = Some(failed);
        let health = case.run();
        assert_eq!(health.level, Level::Critical);
        assert_eq!(
            only(&health, CHECK_VERIFY, Level::Critical),
            "verify-restore of backup 20261121T102959Z failed 9h ago: p1; p2; p3 (and 2 more)"
        );

        case.verify_restore = Some(rec(KIND_VERIFY_RESTORE, NOW, false, &[]));
        assert_eq!(
            only(&case.run(), CHECK_VERIFY, Level::Critical),
            "verify-restore failed 0s ago: no problem recorded"
        );
    }

    #[test]
    fn a_failure_of_one_kind_is_not_hidden_by_a_success_of_the_other() {
        let mut case = Case::healthy();
        case.verify = Some(rec(KIND_VERIFY, "2026-11-18T13:32:00Z", false, &["p1"]));
        let health = case.run();
        assert_eq!(health.level, Level::Critical);
        assert_eq!(
            only(&health, CHECK_VERIFY, Level::Critical),
            "verify failed 3d ago: p1"
        );
    }

    #[test]
    fn a_stale_verification_is_a_warning() {
        let mut case = Case::healthy();
        case.verify_restore = Some(rec(KIND_VERIFY_RESTORE, "2026-11-12T11:32:00Z", true, &[]));
        let health = case.run();
        assert_eq!(health.level, Level::Warning);
        assert_eq!(
            only(&health, CHECK_VERIFY, Level::Warning),
            "last verification (verify-restore) succeeded 9d 2h ago (warning above 8d); \
             run walvault verify --restore"
        );

        // The newer of the two kinds counts.
        case.verify = Some(rec(KIND_VERIFY, "2026-11-21T01:00:00Z", true, &[]));
        assert_eq!(
            only(&case.run(), CHECK_VERIFY, Level::Good),
            "last verification (verify) succeeded 12h 32m ago"
        );
        // Both stale: the newer is named.
        case.verify = Some(rec(KIND_VERIFY, "2026-11-10T13:32:00Z", true, &[]));
        assert!(only(&case.run(), CHECK_VERIFY, Level::Warning)
            .starts_with("last verification (verify-restore) succeeded 9d 2h ago"));
    }

    #[test]
    fn a_stale_success_beside_a_failure_gives_both_reasons() {
        let mut case = Case::healthy();
        case.verify_restore = Some(rec(KIND_VERIFY_RESTORE, "2026-11-01T00:00:00Z", true, &[]));
        case.verify = Some(rec(KIND_VERIFY, "2026-11-21T01:00:00Z", false, &["p"]));
        let health = case.run();
        let levels: Vec<Level> = of_check(&health, CHECK_VERIFY)
            .iter()
            .map(|r| r.level)
            .collect();
        assert_eq!(levels, [Level::Critical, Level::Warning]);
        assert_eq!(health.level, Level::Critical);
    }

    #[test]
    fn an_unreadable_finish_time_is_a_warning() {
        let mut case = Case::healthy();
        case.verify_restore = Some(rec(KIND_VERIFY_RESTORE, "last week", true, &[]));
        assert_eq!(
            only(&case.run(), CHECK_VERIFY, Level::Warning),
            "the verify-restore record has an unreadable finish time \"last week\"; \
             run walvault verify --restore"
        );
        // A good record of the other kind does not make it GOOD again.
        case.verify = Some(rec(KIND_VERIFY, "2026-11-21T01:00:00Z", true, &[]));
        let health = case.run();
        assert_eq!(health.level, Level::Warning);
        assert_eq!(of_check(&health, CHECK_VERIFY).len(), 1);
    }

    #[test]
    fn the_overall_level_is_the_worst_and_reasons_come_worst_first() {
        let mut case = Case::healthy();
        case.verify_restore = None; // WARNING
        case.wal = segs(1, 3, 9, "2026-11-21T06:00:00Z"); // CRITICAL
        let health = case.run();
        assert_eq!(health.level, Level::Critical);
        let levels: Vec<Level> = health.reasons.iter().map(|r| r.level).collect();
        assert_eq!(
            levels,
            [Level::Critical, Level::Warning, Level::Good, Level::Good]
        );
        let checks: Vec<&str> = health.reasons.iter().map(|r| r.check).collect();
        assert_eq!(
            checks,
            [CHECK_WAL_AGE, CHECK_VERIFY, CHECK_BACKUP_AGE, CHECK_WAL_GAP]
        );
    }

    #[test]
    fn times_in_the_future_count_as_age_zero() {
        let mut case = Case::healthy();
        case.backups = vec![complete(LABEL, 1, 3, 4, "2026-11-21T14:00:00Z")];
        case.wal = segs(1, 3, 9, "2026-11-21T14:00:00Z");
        let health = case.run();
        assert_eq!(health.level, Level::Good);
        assert_eq!(health.newest_backup_age_secs, Some(0));
        assert_eq!(health.newest_wal_age_secs, Some(0));
    }

    #[test]
    fn levels_order_print_and_map_to_exit_codes() {
        assert!(Level::Good < Level::Warning && Level::Warning < Level::Critical);
        assert_eq!(
            [Level::Good, Level::Warning, Level::Critical].map(Level::exit_code),
            [0, 1, 2]
        );
        assert_eq!(
            [Level::Good, Level::Warning, Level::Critical].map(|l| l.to_string()),
            ["GOOD", "WARNING", "CRITICAL"]
        );
        assert_eq!(
            serde_json::to_string(&Level::Critical).unwrap(),
            "\"CRITICAL\""
        );
        let health = Case::healthy().run();
        let json = serde_json::to_value(&health).unwrap();
        assert_eq!(json["level"], "GOOD");
        assert_eq!(json["reasons"][0]["check"], CHECK_BACKUP_AGE);
        assert_eq!(json["last_verify"], serde_json::Value::Null);
    }

    #[test]
    fn human_durations() {
        let cases = [
            (-5, "0s"),
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (3600, "1h"),
            (3 * 3600 + 2 * 60 + 7, "3h 2m"),
            (26 * 3600 + 5 * 60, "26h 5m"),
            (50 * 3600, "50h"),
            (72 * 3600 - 1, "71h 59m"),
            (72 * 3600, "3d"),
            (3 * 86400 + 2 * 3600 + 59, "3d 2h"),
        ];
        for (secs, text) in cases {
            assert_eq!(human_duration(secs), text, "{secs}");
        }
        assert!(human_limit(Duration::from_secs(u64::MAX)).starts_with("106751991167300d"));
    }

    #[test]
    fn thresholds_default_to_the_documented_values() {
        let t = Thresholds::default();
        assert_eq!(t.backup_warn, Duration::from_secs(25 * 3600));
        assert_eq!(t.backup_crit, Duration::from_secs(50 * 3600));
        assert_eq!(t.wal_warn, Duration::from_secs(3600));
        assert_eq!(t.wal_crit, Duration::from_secs(6 * 3600));
        assert_eq!(t.verify_stale, Duration::from_secs(8 * 86400));
    }

    fn memory_repo() -> (Repository, MemoryStore) {
        let store = MemoryStore::new();
        let repo = Repository::new(Arc::new(store.clone()), CompressSettings::default());
        (repo, store)
    }

    #[test]
    fn record_keys() {
        assert_eq!(
            verify_record_key(KIND_VERIFY).as_str(),
            "status/verify.json"
        );
        assert_eq!(
            verify_record_key(KIND_VERIFY_RESTORE).as_str(),
            "status/verify-restore.json"
        );
    }

    #[tokio::test]
    async fn records_round_trip_and_replace_the_previous_one() {
        let (repo, store) = memory_repo();
        assert_eq!(read_verify_record(&repo, KIND_VERIFY).await.unwrap(), None);

        let first = rec(KIND_VERIFY, "2026-11-20T04:00:00Z", false, &["p1"]);
        write_verify_record(&repo, &first).await.unwrap();
        let mut second = rec(KIND_VERIFY, "2026-11-21T04:00:00Z", true, &[]);
        second.backup_label = Some(LABEL.to_owned());
        write_verify_record(&repo, &second).await.unwrap();
        assert_eq!(
            read_verify_record(&repo, KIND_VERIFY).await.unwrap(),
            Some(second)
        );
        assert_eq!(
            read_verify_record(&repo, KIND_VERIFY_RESTORE)
                .await
                .unwrap(),
            None
        );

        // Plain JSON, readable with jq.
        let raw = store
            .get_bytes(&verify_record_key(KIND_VERIFY))
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(json["kind"], "verify");
        assert_eq!(json["backup_label"], LABEL);
    }

    #[tokio::test]
    async fn a_non_finite_duration_is_stored_as_zero() {
        let (repo, _) = memory_repo();
        let mut r = rec(KIND_VERIFY_RESTORE, NOW, true, &[]);
        r.duration_secs = f64::NAN;
        write_verify_record(&repo, &r).await.unwrap();
        let back = read_verify_record(&repo, KIND_VERIFY_RESTORE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back.duration_secs, 0.0);
    }

    #[tokio::test]
    async fn a_damaged_record_is_an_integrity_error() {
        let (repo, store) = memory_repo();
        let key = verify_record_key(KIND_VERIFY);
        store.overwrite_raw(&key, Bytes::from_static(b"{not json"));
        let err = read_verify_record(&repo, KIND_VERIFY).await.unwrap_err();
        assert!(
            matches!(&err, RepoError::Object(ObjectError::Integrity { key: k, .. }) if *k == key),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("object \"status/verify.json\" is corrupt: not a verification record"));

        // A record of the other kind under this key.
        let other = serde_json::to_vec(&rec(KIND_VERIFY_RESTORE, NOW, true, &[])).unwrap();
        store.overwrite_raw(&key, Bytes::from(other));
        let err = read_verify_record(&repo, KIND_VERIFY).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "object \"status/verify.json\" is corrupt: holds a \"verify-restore\" record \
             where a \"verify\" record belongs"
        );
    }

    #[tokio::test]
    async fn storage_failures_are_reported() {
        let store = FaultyStore::new(MemoryStore::new());
        let repo = Repository::new(Arc::new(store.clone()), CompressSettings::default());
        store.fail_next(Op::Get, 1, false);
        let err = read_verify_record(&repo, KIND_VERIFY).await.unwrap_err();
        assert!(matches!(err, RepoError::Storage(_)), "{err:?}");
        store.fail_next(Op::Put, 1, false);
        let err = write_verify_record(&repo, &rec(KIND_VERIFY, NOW, true, &[]))
            .await
            .unwrap_err();
        assert!(matches!(err, RepoError::Storage(_)), "{err:?}");
    }
}
