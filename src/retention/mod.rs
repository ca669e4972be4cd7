//! Retention: what `walvault expire` removes ([`plan_expire`]) and removing
//! it ([`apply_expire`]).
//!
//! This module owns the retention rules and nothing else. [`plan_expire`] is
//! pure: it decides from listings the caller already read and from the
//! injected `now`, and never reads the clock or the repository.
//! [`apply_expire`] only carries out a plan and decides nothing. Neither
//! takes the repository lock: the `expire` command holds
//! [`crate::repo::lock::RepoLock`] around listing, planning and applying, so
//! no backup runs meanwhile and a backup without a manifest is the leftover
//! of a crash, never one in progress.
//!
//! The rules:
//! - Complete backups (those with a manifest) are ordered by stop time, then
//!   label. `keep_full N` keeps the newest N. `keep_days D` is a recovery
//!   window: it keeps every backup needed to reach any moment of the last D
//!   days, i.e. every backup that stopped within the window and the newest
//!   one that stopped before it (replay from it reaches the window's start).
//!   With both, a backup is kept if either keeps it. The newest complete
//!   backup is always kept.
//! - Incomplete backups are always removed.
//! - WAL is removed only when it lies entirely before the start LSN of the
//!   oldest kept backup; `.history` files are never removed, and nothing is
//!   removed from the archive while no complete backup exists.

use jiff::{SignedDuration, Timestamp};
use thiserror::Error;

use crate::repo::manifest::{BackupManifest, BackupType};
use crate::repo::{layout, BackupListing, RepoError, Repository, WalObject};
use crate::storage::StorageError;
use crate::wal::{Lsn, WalFileName};

/// Which backups to keep. At least one of the two must be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Keep the newest N complete backups (N >= 1).
    pub keep_full: Option<usize>,
    /// Keep what is needed to recover to any moment of the last D days.
    pub keep_days: Option<u32>,
    /// An incomplete backup that wrote an object less than this long ago
    /// may still be running (a backup that lost its lock but not its
    /// process): it is kept until it has been quiet this long.
    pub incomplete_grace_secs: i64,
}

/// Why an incomplete backup is kept for now.
pub const INCOMPLETE_RECENT_REASON: &str =
    "incomplete but wrote an object recently: it may still be running";

/// A backup the plan removes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedBackup {
    pub label: String,
    /// False for a backup without a manifest.
    pub complete: bool,
    /// What its objects occupy in the repository.
    pub stored_bytes: u64,
    /// Why it goes, for the user.
    pub reason: String,
}

/// What an expire will remove.
#[derive(Debug, Clone)]
pub struct ExpirePlan {
    /// Labels of the complete backups kept, oldest first.
    pub keep_backups: Vec<String>,
    /// Complete backups removed (oldest first), then incomplete ones (in
    /// listing order).
    pub remove_backups: Vec<RemovedBackup>,
    /// WAL objects to delete, in listing order.
    pub remove_wal: Vec<WalObject>,
    /// The oldest LSN a kept backup needs (the smallest start LSN among
    /// them); `None` when no complete backup exists.
    pub wal_kept_from: Option<Lsn>,
    /// Stored bytes of the removed backups and WAL objects.
    pub freed_bytes: u64,
    /// Incomplete backups kept because they wrote recently
    /// ([`RetentionPolicy::incomplete_grace_secs`]).
    pub kept_incomplete: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RetentionError {
    #[error("no retention policy given, so expire cannot tell which backups to keep\nHINT: pass --keep-full N and/or --keep-days D")]
    NoPolicy,
    #[error("keep-full 0 would keep no backup at all\nHINT: pass --keep-full 1 or more; the newest complete backup is always kept")]
    KeepFullZero,
}

/// The reason given for every backup without a manifest.
pub const INCOMPLETE_REASON: &str = "incomplete (no manifest): left by an interrupted backup";

/// Decides which backups and WAL objects an expire removes. Pure: `now` is
/// the only notion of time it uses.
///
/// `backups` and `wal` are the repository's listings in any order; WAL
/// objects are judged by the segment size in their own names.
pub fn plan_expire(
    policy: &RetentionPolicy,
    backups: &[BackupListing],
    wal: &[WalObject],
    now: Timestamp,
) -> Result<ExpirePlan, RetentionError> {
    if policy.keep_full.is_none() && policy.keep_days.is_none() {
        return Err(RetentionError::NoPolicy);
    }
    if policy.keep_full == Some(0) {
        return Err(RetentionError::KeepFullZero);
    }

    let mut complete: Vec<Complete<'_>> = backups
        .iter()
        .filter_map(|listing| {
            let manifest = listing.manifest.as_ref()?;
            Some(Complete {
                listing,
                manifest,
                time: backup_time(&listing.label, manifest),
            })
        })
        .collect();
    // `None` (no readable time) sorts first, as the oldest.
    complete.sort_by(|a, b| {
        a.time.cmp(&b.time).then_with(|| {
            crate::repo::layout::label_order(&a.listing.label)
                .cmp(&crate::repo::layout::label_order(&b.listing.label))
        })
    });

    let window = policy.keep_days.map(|days| Window {
        days,
        start: window_start(now, days),
    });
    // The newest backup that stopped before the window: replay from it
    // reaches the window's start.
    let bridge = window.as_ref().and_then(|w| {
        complete
            .iter()
            .rposition(|c| matches!(c.time, Some(t) if t < w.start))
    });

    // keep-full counts full backups; a differential or incremental backup
    // goes with the full it is built on.
    let is_full = |c: &Complete<'_>| c.manifest.backup_type == BackupType::Full;
    let fulls: Vec<&str> = complete
        .iter()
        .filter(|c| is_full(c))
        .map(|c| c.listing.label.as_str())
        .collect();
    let kept_fulls: &[&str] = match policy.keep_full {
        Some(keep) => &fulls[fulls.len().saturating_sub(keep)..],
        None => &[],
    };
    // The full backup a backup is built on: followed through `reference`
    // (a backup whose every file changed names no object of its full, but
    // still belongs to it), else the full whose objects it uses.
    let by_label: std::collections::HashMap<&str, &Complete<'_>> = complete
        .iter()
        .map(|c| (c.listing.label.as_str(), c))
        .collect();
    let root_full = |c: &Complete<'_>| -> Option<String> {
        let mut at = c;
        for _ in 0..=complete.len() {
            if is_full(at) {
                return Some(at.listing.label.clone());
            }
            match at
                .manifest
                .reference
                .as_deref()
                .and_then(|r| by_label.get(r))
            {
                Some(next) => at = next,
                None => break,
            }
        }
        c.manifest
            .depends_on
            .iter()
            .rev()
            .find(|d| fulls.contains(&d.as_str()))
            .cloned()
    };

    let count = complete.len();
    let mut kept = vec![false; count];
    for (index, backup) in complete.iter().enumerate() {
        let newest = index + 1 == count;
        let by_full = root_full(backup).is_some_and(|root| kept_fulls.contains(&root.as_str()));
        let by_days = window.as_ref().is_some_and(|w| match backup.time {
            // An unknown age cannot be shown to lie outside the window.
            None => true,
            Some(t) => t >= w.start || bridge == Some(index),
        });
        kept[index] = newest || by_full || by_days;
    }
    // A kept backup keeps every backup it is built on.
    let index_of: std::collections::HashMap<&str, usize> = complete
        .iter()
        .enumerate()
        .map(|(i, c)| (c.listing.label.as_str(), i))
        .collect();
    let mut needed_by: Vec<Option<String>> = vec![None; count];
    let mut stack: Vec<usize> = (0..count).filter(|&i| kept[i]).collect();
    while let Some(i) = stack.pop() {
        for dependency in &complete[i].manifest.depends_on {
            if let Some(&j) = index_of.get(dependency.as_str()) {
                if !kept[j] {
                    kept[j] = true;
                    needed_by[j] = Some(complete[i].listing.label.clone());
                    stack.push(j);
                }
            }
        }
    }
    let mut keep_backups = Vec::new();
    let mut remove_backups = Vec::new();
    let mut wal_kept_from: Option<Lsn> = None;
    for (index, backup) in complete.iter().enumerate() {
        if kept[index] {
            keep_backups.push(backup.listing.label.clone());
            if let Some(dependent) = &needed_by[index] {
                tracing::debug!(label = %backup.listing.label, dependent = %dependent, "kept: a kept backup is built on it");
            }
            let start = backup.manifest.start_lsn;
            wal_kept_from = Some(wal_kept_from.map_or(start, |l| l.min(start)));
        } else {
            let bridge_label = bridge.map(|b| complete[b].listing.label.as_str());
            let mut reason = removal_reason(policy, backup, window.as_ref(), bridge_label);
            if !is_full(backup) {
                match root_full(backup) {
                    Some(root) => {
                        reason.push_str(&format!("; built on full backup {root}, which goes too"))
                    }
                    None => reason.push_str("; the full backup it is built on is gone"),
                }
            }
            remove_backups.push(RemovedBackup {
                label: backup.listing.label.clone(),
                complete: true,
                stored_bytes: backup.listing.stored_bytes,
                reason,
            });
        }
    }
    let now_secs = now.as_second();
    let (quiet, recent): (Vec<&BackupListing>, Vec<&BackupListing>) = backups
        .iter()
        .filter(|b| b.manifest.is_none())
        .partition(|b| match b.writer_alive {
            // Its writer ran on this host: known dead or alive.
            Some(alive) => !alive,
            None => {
                policy.incomplete_grace_secs <= 0
                    || now_secs.saturating_sub(b.newest_object_unix_secs)
                        >= policy.incomplete_grace_secs
            }
        });
    let kept_incomplete: Vec<String> = recent.iter().map(|b| b.label.clone()).collect();
    remove_backups.extend(quiet.into_iter().map(|b| RemovedBackup {
        label: b.label.clone(),
        complete: false,
        stored_bytes: b.stored_bytes,
        reason: INCOMPLETE_REASON.to_string(),
    }));

    let remove_wal: Vec<WalObject> = match wal_kept_from {
        Some(keep_from) => wal
            .iter()
            .filter(|object| wal_is_expired(&object.name, keep_from))
            .cloned()
            .collect(),
        None => Vec::new(),
    };

    let freed_bytes = remove_backups
        .iter()
        .map(|b| b.stored_bytes)
        .chain(remove_wal.iter().map(|w| w.stored_bytes))
        .fold(0u64, u64::saturating_add);

    Ok(ExpirePlan {
        keep_backups,
        remove_backups,
        remove_wal,
        wal_kept_from,
        freed_bytes,
        kept_incomplete,
    })
}

/// A complete backup with the time it is ordered and judged by.
struct Complete<'a> {
    listing: &'a BackupListing,
    manifest: &'a BackupManifest,
    time: Option<Timestamp>,
}

/// The recovery window of `keep_days`.
struct Window {
    days: u32,
    start: Timestamp,
}

/// When a backup ended: its stop time, or, when the manifest's is
/// unreadable, the time in its label (the backup's start, in UTC).
fn backup_time(label: &str, manifest: &BackupManifest) -> Option<Timestamp> {
    manifest.stop_time_ts().or_else(|| label_time(label))
}

/// The `YYYYMMDDTHHMMSSZ` part of a label as a timestamp.
fn label_time(label: &str) -> Option<Timestamp> {
    let stamp = label.split_once('-').map_or(label, |(stamp, _)| stamp);
    let civil = stamp.strip_suffix('Z')?;
    let datetime = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%S", civil).ok()?;
    datetime
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|zoned| zoned.timestamp())
}

/// `now` minus `days` days of 24 hours; a window reaching before the
/// earliest representable time starts there (and so keeps everything).
fn window_start(now: Timestamp, days: u32) -> Timestamp {
    let window = SignedDuration::from_secs(i64::from(days) * 86_400);
    now.checked_sub(window).unwrap_or(Timestamp::MIN)
}

fn removal_reason(
    policy: &RetentionPolicy,
    backup: &Complete<'_>,
    window: Option<&Window>,
    bridge_label: Option<&str>,
) -> String {
    let mut parts = Vec::new();
    if let Some(keep) = policy.keep_full {
        parts.push(format!(
            "not among the {keep} newest complete backups (keep-full {keep})"
        ));
    }
    // A backup the window does not keep stopped at a known time before it,
    // and the bridge (the newest such backup) is newer, so all three exist.
    if let (Some(w), Some(stopped), Some(bridge)) = (window, backup.time, bridge_label) {
        parts.push(format!(
            "stopped at {stopped}, before the {days}-day recovery window starting at {start}, whose start the newer backup \"{bridge}\" already reaches (keep-days {days})",
            days = w.days,
            start = w.start,
        ));
    }
    parts.join("; ")
}

/// Whether a WAL object lies entirely before `keep_from`, the oldest LSN a
/// kept backup needs. History files are never expired: they are tiny and
/// every later timeline switch needs its ancestors' histories.
pub(crate) fn wal_is_expired(name: &WalFileName, keep_from: Lsn) -> bool {
    match *name {
        WalFileName::Segment { segment, size, .. } | WalFileName::Partial { segment, size, .. } => {
            segment.end_lsn(size) <= keep_from
        }
        // A backup history file names the segment its backup started in;
        // the one of the oldest kept backup sits in `keep_from`'s segment.
        WalFileName::Backup { segment, size, .. } => segment < keep_from.segment_no(size),
        WalFileName::History { .. } => false,
    }
}

/// Carries out a plan: deletes each removed backup, then the removed WAL.
///
/// A backup's manifest goes first, so a backup interrupted half-way through
/// its removal is seen as incomplete (and removed by the next expire), never
/// as a complete backup with missing files. WAL goes last, so a failure
/// never leaves a kept-looking backup without its WAL. Deletes are
/// idempotent: after a failure, running expire again finishes the job.
pub async fn apply_expire(repo: &Repository, plan: &ExpirePlan) -> Result<(), RepoError> {
    let store = repo.store();
    // Complete backups newest first: a backup goes before any backup it
    // is built on, so an interrupted expire never leaves a complete backup
    // without its base. Then the incomplete ones.
    let (complete, incomplete): (Vec<&RemovedBackup>, Vec<&RemovedBackup>) =
        plan.remove_backups.iter().partition(|b| b.complete);
    for backup in complete.into_iter().rev().chain(incomplete) {
        // Labels come from listings; one that is not a walvault label would
        // not make the keys below (and was not found by listing).
        if !layout::is_backup_label(&backup.label) {
            return Err(StorageError::InvalidKey {
                key: layout::backup_prefix(&backup.label),
            }
            .into());
        }
        // The summary, then the manifest: a listing never sees a summary
        // of a backup whose manifest is gone.
        store.delete(&layout::summary_key(&backup.label)).await?;
        store.delete(&layout::manifest_key(&backup.label)).await?;
        let objects = store
            .list(Some(&layout::backup_prefix(&backup.label)))
            .await?;
        for object in &objects {
            store.delete(&object.key).await?;
        }
        tracing::info!(
            label = %backup.label,
            complete = backup.complete,
            stored_bytes = backup.stored_bytes,
            objects = objects.len(),
            reason = %backup.reason,
            "backup expired"
        );
    }
    for object in &plan.remove_wal {
        store.delete(&object.key).await?;
        tracing::debug!(key = %object.key, "WAL expired");
    }
    if !plan.remove_wal.is_empty() {
        tracing::info!(
            count = plan.remove_wal.len(),
            kept_from = ?plan.wal_kept_from.map(|l| l.to_string()),
            "WAL expired"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::{ClusterIdentity, CompressSettings};
    use crate::storage::faulty::{FaultyStore, Op};
    use crate::storage::memory::MemoryStore;
    use crate::storage::{Key, PutMode};
    use crate::wal::{SegmentNo, TimelineId, WalSegmentSize};

    const SIZE: WalSegmentSize = WalSegmentSize::DEFAULT;
    /// Where a backup starts inside its first segment.
    const START_OFFSET: u64 = 0x28;

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("test timestamp")
    }

    fn manifest(label: &str, timeline: u32, start_segment: u64, stop_time: &str) -> BackupManifest {
        let start_lsn = Lsn(start_segment * SIZE.bytes() + START_OFFSET);
        let stop_lsn = Lsn((start_segment + 1) * SIZE.bytes() + 0x100);
        crate::repo::manifest::test_manifest(
            label,
            TimelineId(timeline),
            start_lsn,
            stop_lsn,
            SIZE,
            stop_time,
        )
    }

    /// A complete backup on timeline 1 starting in `start_segment`.
    fn complete(label: &str, start_segment: u64, stop_time: &str) -> BackupListing {
        complete_on(label, 1, start_segment, stop_time)
    }

    fn complete_on(
        label: &str,
        timeline: u32,
        start_segment: u64,
        stop_time: &str,
    ) -> BackupListing {
        BackupListing {
            label: label.to_string(),
            manifest: Some(manifest(label, timeline, start_segment, stop_time)),
            file_count: 0,
            object_count: 3,
            stored_bytes: 1000,
            newest_object_unix_secs: 0,
            writer_alive: None,
        }
    }

    /// A differential or incremental backup built on `depends` (labels).
    fn chained(
        label: &str,
        kind: BackupType,
        depends: &[&str],
        start_segment: u64,
        stop_time: &str,
    ) -> BackupListing {
        let mut b = complete(label, start_segment, stop_time);
        let m = b.manifest.as_mut().unwrap();
        m.backup_type = kind;
        m.depends_on = depends.iter().map(|d| d.to_string()).collect();
        m.reference = depends.last().map(|d| d.to_string());
        b
    }

    fn kept_and_removed(plan: &ExpirePlan) -> (Vec<&str>, Vec<&str>) {
        (
            plan.keep_backups.iter().map(String::as_str).collect(),
            plan.remove_backups
                .iter()
                .map(|b| b.label.as_str())
                .collect(),
        )
    }

    /// Two fulls, each with a differential and incrementals.
    fn chains() -> Vec<BackupListing> {
        use BackupType::*;
        vec![
            complete("20260101T000000Z", 10, "2026-01-01T00:10:00Z"),
            chained(
                "20260101T060000Z",
                Incr,
                &["20260101T000000Z"],
                12,
                "2026-01-01T06:10:00Z",
            ),
            chained(
                "20260101T120000Z",
                Incr,
                &["20260101T000000Z", "20260101T060000Z"],
                14,
                "2026-01-01T12:10:00Z",
            ),
            chained(
                "20260101T180000Z",
                Diff,
                &["20260101T000000Z"],
                16,
                "2026-01-01T18:10:00Z",
            ),
            complete("20260102T000000Z", 20, "2026-01-02T00:10:00Z"),
            chained(
                "20260102T060000Z",
                Incr,
                &["20260102T000000Z"],
                22,
                "2026-01-02T06:10:00Z",
            ),
        ]
    }

    #[test]
    fn keep_full_counts_fulls_and_keeps_their_dependents() {
        let policy = |n| RetentionPolicy {
            keep_full: Some(n),
            ..Default::default()
        };
        let plan = plan_expire(&policy(1), &chains(), &[], ts("2026-01-03T00:00:00Z")).unwrap();
        let (kept, removed) = kept_and_removed(&plan);
        assert_eq!(kept, ["20260102T000000Z", "20260102T060000Z"]);
        assert_eq!(
            removed,
            [
                "20260101T000000Z",
                "20260101T060000Z",
                "20260101T120000Z",
                "20260101T180000Z"
            ]
        );
        assert!(plan.remove_backups[1]
            .reason
            .contains("built on full backup 20260101T000000Z"));
        // Two fulls: everything stays, though six backups exist.
        let plan = plan_expire(&policy(2), &chains(), &[], ts("2026-01-03T00:00:00Z")).unwrap();
        assert!(plan.remove_backups.is_empty());
        assert_eq!(plan.keep_backups.len(), 6);
    }

    #[test]
    fn a_kept_backup_keeps_everything_it_is_built_on() {
        // keep-days keeps only what stopped in the last hour of 2 Jan 12:00:
        // the newest incr, which needs its full; the bridge is the newest
        // backup before the window (that same incr's full is older).
        let plan = plan_expire(
            &RetentionPolicy {
                keep_days: Some(0),
                ..Default::default()
            },
            &chains(),
            &[],
            ts("2026-01-02T12:00:00Z"),
        )
        .unwrap();
        let (kept, _) = kept_and_removed(&plan);
        assert_eq!(kept, ["20260102T000000Z", "20260102T060000Z"]);
        // The newest backup is an incremental of an old full: the full
        // stays, whatever keep-full says.
        use BackupType::*;
        let backups = vec![
            complete("20260101T000000Z", 10, "2026-01-01T00:10:00Z"),
            complete("20260102T000000Z", 20, "2026-01-02T00:10:00Z"),
            chained(
                "20260103T000000Z",
                Diff,
                &["20260101T000000Z"],
                30,
                "2026-01-03T00:10:00Z",
            ),
        ];
        let plan = plan_expire(
            &RetentionPolicy {
                keep_full: Some(1),
                ..Default::default()
            },
            &backups,
            &[seg(1, 10), seg(1, 11), seg(1, 20), seg(1, 30)],
            ts("2026-01-04T00:00:00Z"),
        )
        .unwrap();
        let (kept, removed) = kept_and_removed(&plan);
        assert_eq!(
            kept,
            ["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"]
        );
        assert!(removed.is_empty());
        // WAL from the oldest kept backup on stays.
        assert!(plan.remove_wal.is_empty());
        // An incremental whose full is already gone is removed with a reason.
        let orphan = vec![
            chained(
                "20260101T060000Z",
                Incr,
                &["20251231T000000Z"],
                12,
                "2026-01-01T06:10:00Z",
            ),
            complete("20260102T000000Z", 20, "2026-01-02T00:10:00Z"),
        ];
        let plan = plan_expire(
            &RetentionPolicy {
                keep_full: Some(1),
                ..Default::default()
            },
            &orphan,
            &[],
            ts("2026-01-04T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(plan.remove_backups[0].label, "20260101T060000Z");
        assert!(plan.remove_backups[0].reason.contains("is gone"));
    }

    #[test]
    fn no_kept_backup_ever_loses_a_dependency() {
        // Random chains and policies: every dependency of a kept backup is
        // kept, and the newest backup with its chain always stays.
        let mut rng = Lcg(7);
        for _ in 0..500 {
            let mut backups = Vec::new();
            let mut fulls: Vec<String> = Vec::new();
            let mut last: Vec<String> = Vec::new();
            for i in 0..(1 + rng.below(12)) {
                let label = format!("202601{:02}T000000Z", i + 1);
                let stop = format!("2026-01-{:02}T00:10:00Z", i + 1);
                let kind = if fulls.is_empty() { 0 } else { rng.below(3) };
                let b = match kind {
                    0 => {
                        fulls.push(label.clone());
                        last = vec![label.clone()];
                        complete(&label, 10 + i * 2, &stop)
                    }
                    1 => {
                        let full = fulls.last().unwrap().clone();
                        last = vec![full.clone(), label.clone()];
                        chained(&label, BackupType::Diff, &[&full], 10 + i * 2, &stop)
                    }
                    _ => {
                        let deps: Vec<&str> = last.iter().map(String::as_str).collect();
                        let b = chained(&label, BackupType::Incr, &deps, 10 + i * 2, &stop);
                        last.push(label.clone());
                        b
                    }
                };
                backups.push(b);
            }
            let policy = RetentionPolicy {
                keep_full: (rng.below(2) == 0).then(|| 1 + rng.below(3) as usize),
                keep_days: Some(rng.below(8) as u32),
                ..Default::default()
            };
            let plan = plan_expire(&policy, &backups, &[], ts("2026-01-14T00:00:00Z")).unwrap();
            for b in &backups {
                let m = b.manifest.as_ref().unwrap();
                if plan.keep_backups.contains(&b.label) {
                    for d in &m.depends_on {
                        assert!(
                            plan.keep_backups.contains(d),
                            "{} kept without {d}",
                            b.label
                        );
                    }
                }
            }
            assert!(plan.keep_backups.contains(&backups.last().unwrap().label));
        }
    }

    fn incomplete(label: &str) -> BackupListing {
        BackupListing {
            label: label.to_string(),
            manifest: None,
            file_count: 0,
            object_count: 2,
            stored_bytes: 300,
            newest_object_unix_secs: 0,
            writer_alive: None,
        }
    }

    fn wal_object(name: WalFileName) -> WalObject {
        WalObject {
            name,
            key: layout::wal_key(&name),
            stored_bytes: 10,
            archived_unix_secs: 0,
        }
    }

    fn seg(timeline: u32, segment: u64) -> WalObject {
        wal_object(WalFileName::Segment {
            timeline: TimelineId(timeline),
            segment: SegmentNo(segment),
            size: SIZE,
        })
    }

    fn partial(timeline: u32, segment: u64) -> WalObject {
        wal_object(WalFileName::Partial {
            timeline: TimelineId(timeline),
            segment: SegmentNo(segment),
            size: SIZE,
        })
    }

    fn backup_file(timeline: u32, segment: u64) -> WalObject {
        wal_object(WalFileName::Backup {
            timeline: TimelineId(timeline),
            segment: SegmentNo(segment),
            offset: START_OFFSET as u32,
            size: SIZE,
        })
    }

    fn history(timeline: u32) -> WalObject {
        wal_object(WalFileName::History {
            timeline: TimelineId(timeline),
        })
    }

    fn full(n: usize) -> RetentionPolicy {
        RetentionPolicy {
            incomplete_grace_secs: 0,
            keep_full: Some(n),
            keep_days: None,
        }
    }

    fn days(d: u32) -> RetentionPolicy {
        RetentionPolicy {
            incomplete_grace_secs: 0,
            keep_full: None,
            keep_days: Some(d),
        }
    }

    fn removed_labels(plan: &ExpirePlan) -> Vec<&str> {
        plan.remove_backups
            .iter()
            .map(|b| b.label.as_str())
            .collect()
    }

    fn removed_wal(plan: &ExpirePlan) -> Vec<String> {
        plan.remove_wal.iter().map(|w| w.name.to_string()).collect()
    }

    const NOW: &str = "2026-03-10T00:00:00Z";

    /// Four backups, three days apart, starting in segments 10, 20, 30, 40.
    fn four_backups() -> Vec<BackupListing> {
        vec![
            complete("20260301T000000Z", 10, "2026-03-01T01:00:00Z"),
            complete("20260304T000000Z", 20, "2026-03-04T01:00:00Z"),
            complete("20260307T000000Z", 30, "2026-03-07T01:00:00Z"),
            complete("20260309T000000Z", 40, "2026-03-09T01:00:00Z"),
        ]
    }

    #[test]
    fn a_policy_must_say_something_and_keep_at_least_one() {
        let backups = four_backups();
        let err = plan_expire(&RetentionPolicy::default(), &backups, &[], ts(NOW)).unwrap_err();
        assert_eq!(err, RetentionError::NoPolicy);
        assert!(err
            .to_string()
            .contains("\nHINT: pass --keep-full N and/or --keep-days D"));
        let err = plan_expire(&full(0), &backups, &[], ts(NOW)).unwrap_err();
        assert_eq!(err, RetentionError::KeepFullZero);
        assert!(err.to_string().contains("keep-full 0"));
        assert!(err.to_string().contains("\nHINT: "));
        // keep-full 0 is refused even beside a valid keep-days.
        let both = RetentionPolicy {
            incomplete_grace_secs: 0,
            keep_full: Some(0),
            keep_days: Some(3),
        };
        assert_eq!(
            plan_expire(&both, &backups, &[], ts(NOW)).unwrap_err(),
            RetentionError::KeepFullZero
        );
    }

    #[test]
    fn keep_full_keeps_the_newest_n() {
        let backups = &four_backups()[1..];
        let cases: [(usize, &[&str], &[&str]); 4] = [
            (
                1,
                &["20260309T000000Z"],
                &["20260304T000000Z", "20260307T000000Z"],
            ),
            (
                2,
                &["20260307T000000Z", "20260309T000000Z"],
                &["20260304T000000Z"],
            ),
            (
                3,
                &["20260304T000000Z", "20260307T000000Z", "20260309T000000Z"],
                &[],
            ),
            (
                9,
                &["20260304T000000Z", "20260307T000000Z", "20260309T000000Z"],
                &[],
            ),
        ];
        for (n, kept, removed) in cases {
            let plan = plan_expire(&full(n), backups, &[], ts(NOW)).expect("plan");
            assert_eq!(plan.keep_backups, kept, "keep-full {n}");
            assert_eq!(removed_labels(&plan), removed, "keep-full {n}");
            assert_eq!(plan.freed_bytes, 1000 * removed.len() as u64);
            for r in &plan.remove_backups {
                assert!(r.complete);
                assert_eq!(r.stored_bytes, 1000);
                assert_eq!(
                    r.reason,
                    format!("not among the {n} newest complete backups (keep-full {n})")
                );
            }
        }
    }

    #[test]
    fn backups_are_ordered_by_stop_time_not_label() {
        // Labels in the opposite order of the stop times.
        let backups = vec![
            complete("20260309T000000Z", 40, "2026-03-01T01:00:00Z"),
            complete("20260301T000000Z", 10, "2026-03-09T01:00:00Z"),
        ];
        let plan = plan_expire(&full(1), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(plan.keep_backups, ["20260301T000000Z"]);
        assert_eq!(removed_labels(&plan), ["20260309T000000Z"]);
    }

    #[test]
    fn unreadable_stop_times_fall_back_to_the_label() {
        let mut backups = vec![
            complete("20260308T000000Z", 30, "garbage"),
            complete("20260305T000000Z", 20, "2026-03-05T01:00:00Z"),
            complete("20260301T000000Z-2", 10, "2026-03-01T01:00:00Z"),
        ];
        let plan = plan_expire(&full(2), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(plan.keep_backups, ["20260305T000000Z", "20260308T000000Z"]);
        // The window starts 2026-03-06: the label time puts the backup in it.
        let plan = plan_expire(&days(4), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(plan.keep_backups, ["20260305T000000Z", "20260308T000000Z"]);
        assert_eq!(removed_labels(&plan), ["20260301T000000Z-2"]);

        // Neither time nor label readable: ordered first, and kept by a
        // window (its age is unknown), but not by keep-full.
        backups.push(complete("odd-label", 5, "garbage"));
        let plan = plan_expire(&full(2), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(removed_labels(&plan), ["odd-label", "20260301T000000Z-2"]);
        let plan = plan_expire(&days(4), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(
            plan.keep_backups,
            ["odd-label", "20260305T000000Z", "20260308T000000Z"]
        );
        assert_eq!(
            plan.wal_kept_from,
            Some(Lsn(5 * SIZE.bytes() + START_OFFSET))
        );
        assert_eq!(label_time("odd-label"), None);
        assert_eq!(label_time("20261399T000000Z"), None);
        assert_eq!(label_time("20260301T000000"), None);
        assert_eq!(
            label_time("20260301T102030Z-3"),
            Some(ts("2026-03-01T10:20:30Z"))
        );
    }

    #[test]
    fn keep_days_keeps_the_window_and_the_backup_reaching_its_start() {
        let backups = four_backups();
        // Window starts 2026-03-06: backups 3 and 4 stopped in it, backup 2
        // is needed to reach its start, backup 1 is not.
        let plan = plan_expire(&days(4), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(
            plan.keep_backups,
            ["20260304T000000Z", "20260307T000000Z", "20260309T000000Z"]
        );
        assert_eq!(removed_labels(&plan), ["20260301T000000Z"]);
        let reason = &plan.remove_backups[0].reason;
        assert!(reason.contains("at 2026-03-01T01:00:00Z"), "{reason}");
        assert!(
            reason.contains("4-day recovery window starting at 2026-03-06T00:00:00Z"),
            "{reason}"
        );
        assert!(reason.contains("\"20260304T000000Z\""), "{reason}");
        assert!(!reason.contains("keep-full"), "{reason}");
        assert_eq!(
            plan.wal_kept_from,
            Some(Lsn(20 * SIZE.bytes() + START_OFFSET))
        );

        // A stop time exactly at the window's start is inside the window.
        let now = ts("2026-03-10T01:00:00Z");
        let plan = plan_expire(&days(3), &backups, &[], now).expect("plan");
        assert_eq!(
            plan.keep_backups,
            ["20260304T000000Z", "20260307T000000Z", "20260309T000000Z"]
        );

        // A window covering everything keeps everything, even one reaching
        // before the earliest representable time.
        for d in [30, u32::MAX] {
            let plan = plan_expire(&days(d), &backups, &[], ts(NOW)).expect("plan");
            assert_eq!(plan.keep_backups.len(), 4, "keep-days {d}");
            assert!(plan.remove_backups.is_empty());
        }
    }

    #[test]
    fn keep_days_with_every_backup_older_than_the_window_keeps_the_newest() {
        let backups = four_backups();
        let plan = plan_expire(&days(3), &backups, &[], ts("2026-03-20T00:00:00Z")).expect("plan");
        assert_eq!(plan.keep_backups, ["20260309T000000Z"]);
        assert_eq!(removed_labels(&plan).len(), 3);
        // keep-days 0: the window is empty, the newest backup reaches now.
        let plan = plan_expire(&days(0), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(plan.keep_backups, ["20260309T000000Z"]);
    }

    #[test]
    fn the_newest_backup_is_kept_even_when_it_stopped_in_the_future() {
        // A server clock ahead of ours: the backup "stopped" after now, and
        // no backup stopped before the window.
        let backups = vec![
            complete("20260301T000000Z", 10, "2026-03-01T01:00:00Z"),
            complete("20260311T000000Z", 20, "2026-03-11T01:00:00Z"),
        ];
        let plan = plan_expire(&days(1), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(plan.keep_backups, ["20260301T000000Z", "20260311T000000Z"]);
        let plan = plan_expire(&full(1), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(plan.keep_backups, ["20260311T000000Z"]);
    }

    #[test]
    fn both_options_keep_the_union() {
        let backups = four_backups();
        // keep-full 1 keeps {4}; keep-days 4 keeps {2, 3, 4}.
        let policy = RetentionPolicy {
            incomplete_grace_secs: 0,
            keep_full: Some(1),
            keep_days: Some(4),
        };
        let plan = plan_expire(&policy, &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(
            plan.keep_backups,
            ["20260304T000000Z", "20260307T000000Z", "20260309T000000Z"]
        );
        let reason = &plan.remove_backups[0].reason;
        assert!(reason.contains("keep-full 1"), "{reason}");
        assert!(reason.contains("keep-days 4"), "{reason}");

        // keep-full 3 keeps {2, 3, 4}; keep-days 1 keeps {3, 4}.
        let policy = RetentionPolicy {
            incomplete_grace_secs: 0,
            keep_full: Some(3),
            keep_days: Some(1),
        };
        let plan = plan_expire(&policy, &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(
            plan.keep_backups,
            ["20260304T000000Z", "20260307T000000Z", "20260309T000000Z"]
        );
        assert_eq!(removed_labels(&plan), ["20260301T000000Z"]);

        // keep-full 4 keeps all; keep-days 1 would keep {3, 4}.
        let policy = RetentionPolicy {
            incomplete_grace_secs: 0,
            keep_full: Some(4),
            keep_days: Some(1),
        };
        let plan = plan_expire(&policy, &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(plan.keep_backups.len(), 4);
    }

    #[test]
    fn incomplete_backups_are_always_removed() {
        let mut backups = four_backups();
        backups.insert(1, incomplete("20260302T000000Z"));
        // Newer than every complete backup: still a crash leftover.
        backups.push(incomplete("20260309T120000Z"));
        let plan = plan_expire(&full(4), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(plan.keep_backups.len(), 4);
        assert_eq!(
            removed_labels(&plan),
            ["20260302T000000Z", "20260309T120000Z"]
        );
        for r in &plan.remove_backups {
            assert!(!r.complete);
            assert_eq!(r.stored_bytes, 300);
            assert_eq!(
                r.reason,
                "incomplete (no manifest): left by an interrupted backup"
            );
        }
        assert_eq!(plan.freed_bytes, 600);

        // Complete removals come first, oldest first.
        let plan = plan_expire(&full(2), &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(
            removed_labels(&plan),
            [
                "20260301T000000Z",
                "20260304T000000Z",
                "20260302T000000Z",
                "20260309T120000Z"
            ]
        );
        assert_eq!(plan.freed_bytes, 2 * 1000 + 2 * 300);
    }

    #[test]
    fn a_recently_written_incomplete_backup_is_kept() {
        let mut backups = four_backups();
        let mut running = incomplete("20260309T120000Z");
        running.newest_object_unix_secs = ts(NOW).as_second() - 100;
        backups.push(running.clone());
        let mut policy = full(4);
        policy.incomplete_grace_secs = 720;
        let plan = plan_expire(&policy, &backups, &[], ts(NOW)).expect("plan");
        assert!(plan.remove_backups.is_empty(), "{:?}", plan.remove_backups);
        assert_eq!(plan.kept_incomplete, ["20260309T120000Z"]);
        policy.incomplete_grace_secs = 100;
        let plan = plan_expire(&policy, &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(removed_labels(&plan), ["20260309T120000Z"]);
        // A writer known to run on this host is kept, a dead one removed,
        // whatever the times say.
        backups.pop();
        running.writer_alive = Some(true);
        backups.push(running.clone());
        let plan = plan_expire(&policy, &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(plan.kept_incomplete, ["20260309T120000Z"]);
        backups.pop();
        running.writer_alive = Some(false);
        running.newest_object_unix_secs = ts(NOW).as_second();
        backups.push(running);
        policy.incomplete_grace_secs = 720;
        let plan = plan_expire(&policy, &backups, &[], ts(NOW)).expect("plan");
        assert_eq!(removed_labels(&plan), ["20260309T120000Z"]);
    }

    #[test]
    fn without_a_complete_backup_no_wal_is_removed() {
        let backups = vec![incomplete("20260302T000000Z")];
        let wal: Vec<WalObject> = (1..5).map(|s| seg(1, s)).collect();
        let plan = plan_expire(&full(1), &backups, &wal, ts(NOW)).expect("plan");
        assert!(plan.keep_backups.is_empty());
        assert_eq!(removed_labels(&plan), ["20260302T000000Z"]);
        assert!(plan.remove_wal.is_empty());
        assert_eq!(plan.wal_kept_from, None);
        assert_eq!(plan.freed_bytes, 300);

        let plan = plan_expire(&days(1), &[], &wal, ts(NOW)).expect("plan");
        assert!(plan.remove_backups.is_empty() && plan.remove_wal.is_empty());
        assert_eq!(plan.freed_bytes, 0);
    }

    #[test]
    fn wal_before_the_oldest_kept_backup_goes_and_the_rest_stays() {
        // Kept: the backups starting in segments 10 (timeline 1) and 14
        // (timeline 2); removed: the one starting in segment 5.
        let backups = vec![
            complete("20260301T000000Z", 5, "2026-03-01T01:00:00Z"),
            complete("20260304T000000Z", 10, "2026-03-04T01:00:00Z"),
            complete_on("20260307T000000Z", 2, 14, "2026-03-07T01:00:00Z"),
        ];
        let mut wal: Vec<WalObject> = (3..=12).map(|s| seg(1, s)).collect();
        wal.extend([
            partial(1, 9),
            partial(1, 12),
            backup_file(1, 5),
            backup_file(1, 10),
            history(2),
            history(3),
            seg(2, 12),
            seg(2, 13),
            seg(2, 14),
            partial(2, 15),
            backup_file(2, 14),
        ]);
        let plan = plan_expire(&full(2), &backups, &wal, ts(NOW)).expect("plan");
        assert_eq!(plan.keep_backups, ["20260304T000000Z", "20260307T000000Z"]);
        let keep_from = Lsn(10 * SIZE.bytes() + START_OFFSET);
        assert_eq!(plan.wal_kept_from, Some(keep_from));
        let expected: Vec<String> = (3..=9)
            .map(|s| WalFileName::segment_file_name(TimelineId(1), SegmentNo(s), SIZE))
            .chain([
                "000000010000000000000009.partial".to_string(),
                "000000010000000000000005.00000028.backup".to_string(),
            ])
            .collect();
        assert_eq!(removed_wal(&plan), expected);
        let removed = removed_wal(&plan);
        // The kept backup's own start segment and .backup file stay, as does
        // everything on timeline 2 after it, and every history file.
        for kept in [
            "00000001000000000000000A",
            "000000010000000000000010.00000028.backup",
            "00000002000000000000000E",
            "00000002.history",
            "00000003.history",
        ] {
            assert!(!removed.contains(&kept.to_string()), "{kept} removed");
        }
        assert_eq!(
            plan.freed_bytes,
            1000 + 10 * expected.len() as u64,
            "one backup and the WAL objects"
        );

        // A backup starting exactly at a segment boundary: the segment
        // before ends at its start and goes; its own start segment stays.
        let mut at_boundary = complete("20260310T000000Z", 0, "2026-03-09T23:00:00Z");
        if let Some(m) = at_boundary.manifest.as_mut() {
            m.start_lsn = SegmentNo(8).start_lsn(SIZE);
        }
        let plan = plan_expire(&full(1), &[at_boundary], &wal, ts(NOW)).expect("plan");
        let removed = removed_wal(&plan);
        assert!(removed.contains(&"000000010000000000000007".to_string()));
        assert!(!removed.contains(&"000000010000000000000008".to_string()));
        assert!(removed.contains(&"000000010000000000000005.00000028.backup".to_string()));
        assert!(!removed.iter().any(|n| n.ends_with(".history")));
    }

    /// A small deterministic generator, so the scenarios are the same on
    /// every run.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn removed_wal_always_ends_before_every_kept_backup_starts() {
        let mut rng = Lcg(42);
        let base = ts("2026-01-01T00:00:00Z");
        for scenario in 0..200 {
            let count = 1 + rng.below(6);
            let mut backups = Vec::new();
            let mut segment = rng.below(4);
            let mut day = 0i64;
            for i in 0..count {
                segment += 1 + rng.below(5);
                day += 1 + rng.below(4) as i64;
                let stop = base + SignedDuration::from_hours(24 * day);
                let label = format!("202601{:02}T0000{:02}Z", 1 + i, i);
                let timeline = 1 + rng.below(2) as u32;
                let mut listing = complete_on(&label, timeline, segment, &stop.to_string());
                if let Some(m) = listing.manifest.as_mut() {
                    // Sometimes exactly at a segment boundary.
                    if rng.below(3) == 0 {
                        m.start_lsn = SegmentNo(segment).start_lsn(SIZE);
                    }
                }
                if rng.below(5) == 0 {
                    listing.manifest = None;
                }
                backups.push(listing);
            }
            let mut wal = Vec::new();
            for s in 0..segment + 3 {
                for tli in 1..=2 {
                    wal.push(seg(tli, s));
                    match rng.below(6) {
                        0 => wal.push(partial(tli, s)),
                        1 => wal.push(backup_file(tli, s)),
                        _ => {}
                    }
                }
            }
            wal.push(history(2));
            let policy = RetentionPolicy {
                incomplete_grace_secs: 0,
                keep_full: (rng.below(2) == 0).then(|| 1 + rng.below(4) as usize),
                keep_days: match rng.below(3) {
                    0 => None,
                    _ => Some(rng.below(20) as u32),
                },
            };
            let policy = if policy.keep_full.is_none() && policy.keep_days.is_none() {
                full(2)
            } else {
                policy
            };
            let now = base + SignedDuration::from_hours(24 * (day + rng.below(10) as i64));
            let plan = plan_expire(&policy, &backups, &wal, now).expect("plan");

            let kept: Vec<&BackupManifest> = backups
                .iter()
                .filter(|b| plan.keep_backups.contains(&b.label))
                .filter_map(|b| b.manifest.as_ref())
                .collect();
            let complete_count = backups.iter().filter(|b| b.manifest.is_some()).count();
            assert_eq!(kept.len(), plan.keep_backups.len(), "scenario {scenario}");
            assert_eq!(
                kept.len() + plan.remove_backups.iter().filter(|r| r.complete).count(),
                complete_count,
                "scenario {scenario}"
            );
            if complete_count == 0 {
                assert!(plan.remove_wal.is_empty(), "scenario {scenario}");
                continue;
            }
            // The newest complete backup is kept.
            let newest = backups
                .iter()
                .filter_map(|b| b.manifest.as_ref())
                .max_by_key(|m| m.stop_time_ts())
                .map(|m| m.label.clone());
            assert!(
                newest.is_some_and(|l| plan.keep_backups.contains(&l)),
                "scenario {scenario}"
            );
            let oldest_start = kept.iter().map(|m| m.start_lsn).min();
            assert_eq!(plan.wal_kept_from, oldest_start, "scenario {scenario}");
            for object in &plan.remove_wal {
                let (Some(segment), Some(size)) = (object.name.segment(), object.name.size())
                else {
                    panic!("scenario {scenario}: removed {}", object.name);
                };
                for m in &kept {
                    assert!(
                        segment.end_lsn(size) <= m.start_lsn,
                        "scenario {scenario}: {} ends after backup {} starts at {}",
                        object.name,
                        m.label,
                        m.start_lsn
                    );
                }
            }
            // And nothing entirely before the oldest kept start survives.
            let keep_from = oldest_start.unwrap_or_default();
            for object in &wal {
                let gone = plan.remove_wal.iter().any(|r| r.key == object.key);
                if object.name.is_segment_sized() {
                    let end = object.name.segment().map(|s| s.end_lsn(SIZE));
                    assert_eq!(gone, end <= Some(keep_from), "scenario {scenario}");
                }
            }
            let freed: u64 = plan
                .remove_backups
                .iter()
                .map(|b| b.stored_bytes)
                .sum::<u64>()
                + plan.remove_wal.iter().map(|w| w.stored_bytes).sum::<u64>();
            assert_eq!(plan.freed_bytes, freed, "scenario {scenario}");
        }
    }

    /// A repository holding `backups` (objects and manifests) and `wal`.
    async fn repository_with(
        store: Arc<dyn crate::storage::ObjectStore>,
        backups: &[BackupListing],
        wal: &[WalObject],
    ) -> Repository {
        let repo = Repository::new(store, CompressSettings::default());
        repo.init(
            &ClusterIdentity {
                system_identifier: 7,
                wal_segment_size: SIZE,
                pg_major: 16,
            },
            "test",
            None,
        )
        .await
        .expect("bind");
        for b in backups {
            for i in 0..2 {
                repo.store()
                    .put_bytes(
                        &layout::backup_file_key(&b.label, i),
                        bytes::Bytes::from_static(b"data"),
                        PutMode::Create,
                    )
                    .await
                    .expect("put file");
            }
            if let Some(m) = &b.manifest {
                repo.write_manifest(m).await.expect("manifest");
            }
        }
        for w in wal {
            repo.store()
                .put_bytes(&w.key, bytes::Bytes::from_static(b"wal"), PutMode::Create)
                .await
                .expect("put wal");
        }
        repo
    }

    async fn keys(repo: &Repository, prefix: &str) -> Vec<String> {
        repo.store()
            .list(Some(prefix))
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.key.to_string())
            .collect()
    }

    #[tokio::test]
    async fn apply_removes_what_the_plan_says_and_nothing_else() {
        let mut backups = four_backups();
        backups.push(incomplete("20260309T120000Z"));
        // A label sharing a prefix with a removed one must survive.
        backups.push(complete("20260301T000000Z-2", 12, "2026-03-08T01:00:00Z"));
        let wal: Vec<WalObject> = (8..=42)
            .map(|s| seg(1, s))
            .chain([history(2), backup_file(1, 10)])
            .collect();
        let repo = repository_with(Arc::new(MemoryStore::new()), &backups, &wal).await;

        let listed = repo.list_backups().await.expect("list backups");
        let listed_wal = repo.list_wal().await.expect("list wal");
        let plan = plan_expire(&full(2), &listed, &listed_wal, ts(NOW)).expect("plan");
        assert_eq!(
            plan.keep_backups,
            ["20260301T000000Z-2", "20260309T000000Z"]
        );
        apply_expire(&repo, &plan).await.expect("apply");

        let after = repo.list_backups().await.expect("list backups");
        let labels: Vec<&str> = after.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["20260301T000000Z-2", "20260309T000000Z"]);
        assert!(after
            .iter()
            .all(|b| b.manifest.is_some() && b.object_count == 3));
        let wal_after = keys(&repo, layout::WAL_PREFIX).await;
        assert!(wal_after.contains(&"wal/00000002/00000002.history".to_string()));
        assert!(wal_after
            .contains(&"wal/00000001/0000000100000000/00000001000000000000000C".to_string()));
        assert!(!wal_after
            .contains(&"wal/00000001/0000000100000000/00000001000000000000000B".to_string()));
        assert!(!wal_after.iter().any(|k| k.ends_with(".backup")));
        assert_eq!(wal_after.len(), wal.len() - plan.remove_wal.len());
        assert!(repo.read_header().await.expect("header").is_some());

        // Applying again is harmless, and a fresh plan removes nothing.
        apply_expire(&repo, &plan).await.expect("apply again");
        let listed = repo.list_backups().await.expect("list backups");
        let listed_wal = repo.list_wal().await.expect("list wal");
        let again = plan_expire(&full(2), &listed, &listed_wal, ts(NOW)).expect("plan");
        assert!(again.remove_backups.is_empty() && again.remove_wal.is_empty());
        apply_expire(&repo, &again)
            .await
            .expect("apply an empty plan");
        assert_eq!(repo.list_backups().await.expect("list").len(), 2);
    }

    #[tokio::test]
    async fn a_half_expired_backup_is_seen_as_incomplete() {
        let backups = four_backups();
        let wal: Vec<WalObject> = (8..=42).map(|s| seg(1, s)).collect();
        let store = FaultyStore::new(MemoryStore::new());
        let repo = repository_with(Arc::new(store.clone()), &backups, &wal).await;
        let listed = repo.list_backups().await.expect("list backups");
        let listed_wal = repo.list_wal().await.expect("list wal");
        let plan = plan_expire(&full(3), &listed, &listed_wal, ts(NOW)).expect("plan");
        assert_eq!(removed_labels(&plan), ["20260301T000000Z"]);

        // Listing the backup's objects fails after its manifest is gone.
        store.fail_next(Op::List, 1, false);
        let err = apply_expire(&repo, &plan).await.unwrap_err();
        assert!(matches!(err, RepoError::Storage(_)), "{err}");
        let after = repo.list_backups().await.expect("list backups");
        assert_eq!(after[0].label, "20260301T000000Z");
        assert!(after[0].manifest.is_none(), "seen as incomplete");
        assert_eq!(after[0].object_count, 2, "its files are still there");
        // The WAL is untouched until the backups are gone.
        assert_eq!(keys(&repo, layout::WAL_PREFIX).await.len(), wal.len());

        // The next expire finishes the job.
        let listed = repo.list_backups().await.expect("list backups");
        let listed_wal = repo.list_wal().await.expect("list wal");
        let plan = plan_expire(&full(3), &listed, &listed_wal, ts(NOW)).expect("plan");
        assert_eq!(plan.remove_backups[0].reason, INCOMPLETE_REASON);
        apply_expire(&repo, &plan).await.expect("apply");
        assert!(keys(&repo, "backup/20260301T000000Z/").await.is_empty());
        assert_eq!(
            keys(&repo, layout::WAL_PREFIX).await.len(),
            wal.len() - plan.remove_wal.len()
        );
    }

    #[tokio::test]
    async fn apply_refuses_a_label_walvault_does_not_write() {
        let repo = Repository::new(Arc::new(MemoryStore::new()), CompressSettings::default());
        let key = Key::new("backup/20260301T000000Z/manifest").expect("key");
        repo.store()
            .put_bytes(&key, bytes::Bytes::from_static(b"x"), PutMode::Create)
            .await
            .expect("put");
        let plan = ExpirePlan {
            keep_backups: Vec::new(),
            remove_backups: vec![RemovedBackup {
                label: "../etc".to_string(),
                complete: false,
                stored_bytes: 0,
                reason: INCOMPLETE_REASON.to_string(),
            }],
            remove_wal: Vec::new(),
            wal_kept_from: None,
            freed_bytes: 0,
            kept_incomplete: Vec::new(),
        };
        let err = apply_expire(&repo, &plan).await.unwrap_err();
        assert!(err.to_string().contains("backup/../etc/"), "{err}");
        assert_eq!(keys(&repo, "backup/").await.len(), 1);
    }
}
