//! Restore planning: from what the repository holds (complete backups,
//! archived WAL, timeline histories) and what the user asked for (a recovery
//! target, a backup, a timeline), decide which backup to restore, which
//! timelines replay walks, which WAL it will read, and whether the target
//! can be reached at all ([`plan_restore`]).
//!
//! This module owns those decisions and nothing else: it is pure, does no
//! I/O, and never fetches or writes anything. Callers list the repository,
//! parse the history files, and then act on the [`RestorePlan`].
//!
//! The model follows PostgreSQL's recovery (`xlogrecovery.c`):
//! - The target timeline's history must contain the backup's timeline, and
//!   that timeline must end (the switch point) at or after the backup's stop
//!   LSN, or the server refuses with "requested timeline is not a child of
//!   this server's history".
//! - Replay reads segments contiguously from the backup's start segment. On
//!   each timeline of the path it needs the segments holding that
//!   timeline's WAL; the segment holding a switch point exists on both the
//!   parent and the child timeline, and replay prefers the child's copy
//!   (`XLogFileReadAnyTLI`). The parent's copy only holds WAL up to the
//!   switch point, so when only the parent's copy is archived, the usable
//!   archive ends at the switch point.
//! - `.partial` segments are never requested by `restore_command`, so they
//!   never count.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use thiserror::Error;

use super::target::{format_for_postgres, RecoveryTarget};
use crate::repo::manifest::BackupManifest;
use crate::repo::WalObject;
use crate::wal::{Lsn, SegmentNo, TimelineHistory, TimelineId, WalFileName, WalSegmentSize};

/// Which backup to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupChoice {
    /// The newest backup that can reach the target.
    Latest,
    /// The backup with this label.
    Label(String),
}

/// Everything [`plan_restore`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// Complete backups only (those with a manifest), in any order.
    pub backups: &'a [BackupManifest],
    /// Every archived WAL object.
    pub wal: &'a [WalObject],
    /// The parsed `.history` files found in the repository.
    pub histories: &'a BTreeMap<TimelineId, TimelineHistory>,
    pub target: &'a RecoveryTarget,
    pub backup: &'a BackupChoice,
    /// `None`: the latest timeline (see [`plan_latest_timeline`]).
    pub target_timeline: Option<TimelineId>,
    pub wal_segment_size: WalSegmentSize,
}

/// One timeline replay walks: the timeline, where replay enters it (the
/// backup's start LSN, or the switch point from its parent), and where it
/// leaves it (its switch point; `None` for the target timeline).
pub type TimelineStep = (TimelineId, Lsn, Option<Lsn>);

/// What a restore will do.
#[derive(Debug, Clone, PartialEq)]
pub struct RestorePlan {
    /// The chosen backup.
    pub backup: BackupManifest,
    /// The timeline recovery follows, always explicit (never "latest").
    pub target_timeline: TimelineId,
    /// The timelines replay walks, from the backup's to the target's.
    pub timeline_path: Vec<TimelineStep>,
    /// The first and last archived WAL files replay will read: from the
    /// backup's start segment to the newest contiguously archived segment on
    /// the path (to the backup's stop segment for an immediate target).
    pub first_wal: String,
    pub last_wal: String,
    /// How many archived segments that range holds, and their stored size.
    pub wal_files: usize,
    pub wal_bytes: u64,
    /// When the most recently archived of those segments was archived.
    pub newest_archive_time: Option<Timestamp>,
}

/// Why a restore cannot go ahead as asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("the repository holds no complete backup\nHINT: take a base backup first; backups without a manifest were interrupted and cannot be restored")]
    NoBackups,

    #[error("backup \"{label}\" is not a complete backup in this repository\nHINT: complete backups are: {available}")]
    UnknownBackup { label: String, available: String },

    #[error("timeline {timeline} has no history file in the repository, so replay cannot follow it from backup \"{label}\" on timeline {backup_timeline}\nHINT: archive {:08X}.history, or choose timeline {backup_timeline} or one whose history is archived as the target timeline", .timeline.0)]
    TimelineHistoryMissing {
        timeline: TimelineId,
        label: String,
        backup_timeline: TimelineId,
    },

    #[error("timeline {timeline} does not descend from timeline {backup_timeline} of backup \"{label}\"\nHINT: restore a backup taken on timeline {timeline} or one of its ancestors, or choose a target timeline that descends from timeline {backup_timeline}")]
    TimelineNotDescendant {
        timeline: TimelineId,
        label: String,
        backup_timeline: TimelineId,
    },

    #[error("timeline {timeline} forked from timeline {backup_timeline} at {switch_point}, before backup \"{label}\" ended at {stop_lsn}\nHINT: restore a backup that ended at or before {switch_point}, or choose timeline {backup_timeline} as the target timeline")]
    TimelineForkedBeforeBackup {
        timeline: TimelineId,
        backup_timeline: TimelineId,
        switch_point: Lsn,
        label: String,
        stop_lsn: Lsn,
    },

    #[error("no backup ended before {}; the oldest backup, \"{oldest_label}\", ended at {}\nHINT: choose a later target time; a restore can only reach points after its backup ended", format_for_postgres(*.target), format_for_postgres(*.oldest_stop_time))]
    NoBackupBeforeTime {
        target: Timestamp,
        oldest_label: String,
        oldest_stop_time: Timestamp,
    },

    #[error("no backup ended at or before LSN {target}; the oldest backup, \"{oldest_label}\", ended at {oldest_stop_lsn}\nHINT: choose a later target LSN; a restore can only reach points after its backup ended")]
    NoBackupBeforeLsn {
        target: Lsn,
        oldest_label: String,
        oldest_stop_lsn: Lsn,
    },

    #[error("backup \"{label}\" has an unreadable stop time \"{stop_time}\", so it cannot be compared with target time {}\nHINT: choose the backup by label, or give an LSN target instead of a time", format_for_postgres(*.target))]
    BackupStopTimeUnreadable {
        label: String,
        stop_time: String,
        target: Timestamp,
    },

    #[error("target time {} is before the end of backup \"{label}\" (ended at {}); the earliest reachable point is just after {}\nHINT: choose a later target time, or an older backup", format_for_postgres(*.target), format_for_postgres(*.stop_time), format_for_postgres(*.stop_time))]
    TimeBeforeBackupEnd {
        target: Timestamp,
        label: String,
        stop_time: Timestamp,
    },

    #[error("target LSN {target} is before the end of backup \"{label}\" (ended at {stop_lsn}); the earliest reachable point is {stop_lsn}\nHINT: choose a later target LSN, or an older backup")]
    LsnBeforeBackupEnd {
        target: Lsn,
        label: String,
        stop_lsn: Lsn,
    },

    #[error("backup \"{label}\" needs WAL files {start_wal} to {stop_wal} on timeline {timeline}, but {missing} of {total} are not archived; the first missing is {first_missing}\nHINT: the restored cluster cannot become consistent without them; restore another backup, and check that archive_command succeeds")]
    BackupWalMissing {
        label: String,
        timeline: TimelineId,
        start_wal: String,
        stop_wal: String,
        missing: u64,
        total: u64,
        first_missing: String,
    },

    #[error("WAL file {first_missing} is missing from the archive, but later WAL on the restore path is archived (next: {next_archived})\nHINT: replay would end at {archive_end}, before the gap, and the WAL after it would be lost; archive the missing file again from the server's pg_wal if it is still there, or choose a target before {archive_end}")]
    WalGap {
        first_missing: String,
        next_archived: String,
        archive_end: Lsn,
    },

    #[error("recovery target {target} is ambiguous: more than one timeline passed it after they diverged ({candidates})\nHINT: say which history you want with --target-timeline N, e.g. --target-timeline {example}; walvault list shows each timeline's parent and branch point")]
    AmbiguousTimeline {
        target: String,
        candidates: String,
        example: TimelineId,
    },

    #[error("target LSN {target} is past the end of the archived WAL on the restore path ({archive_end}, in {last_wal})\nHINT: wait until the WAL holding it is archived (pg_switch_wal() on the server forces the current file out), or choose an earlier target")]
    LsnBeyondArchive {
        target: Lsn,
        archive_end: Lsn,
        last_wal: String,
    },

    #[error("target time {} is after the newest archived WAL on the restore path ({last_wal}, archived at {})\nHINT: WAL archived at that time cannot hold later commits, so PostgreSQL would stop with \"recovery ended before configured recovery target was reached\"; wait until more WAL is archived (pg_switch_wal() forces it), or choose an earlier target", format_for_postgres(*.target), format_for_postgres(*.newest_archive_time))]
    TimeBeyondArchive {
        target: Timestamp,
        newest_archive_time: Timestamp,
        last_wal: String,
    },
}

/// Decides the whole restore; see the module documentation for the model.
///
/// Without an explicit target timeline, a time, LSN or transaction target
/// is planned on every timeline the repository knows. Timelines that reach
/// the target and agree on what it holds are fine (the newest is
/// followed); two that both pass it after they diverged make the target
/// ambiguous, which is refused with [`PlanError::AmbiguousTimeline`]
/// rather than resolved silently. Other targets follow the latest
/// timeline, as `recovery_target_timeline = 'latest'` would.
pub fn plan_restore(input: &PlanInput) -> Result<RestorePlan, PlanError> {
    if input.backups.is_empty() {
        return Err(PlanError::NoBackups);
    }
    if let Some(timeline) = input.target_timeline {
        return plan_on_timeline(input, timeline);
    }
    let latest = plan_latest_timeline(input.backups, input.wal, input.histories);
    if !matches!(
        input.target,
        RecoveryTarget::Time(_) | RecoveryTarget::Lsn(_) | RecoveryTarget::Xid(_)
    ) {
        return plan_on_timeline(input, latest);
    }
    let reachers: Vec<RestorePlan> = known_timelines(input)
        .into_iter()
        .rev()
        .filter_map(|timeline| plan_on_timeline(input, timeline).ok())
        .collect();
    if reachers.is_empty() {
        // No timeline reaches it: the latest one says why.
        return plan_on_timeline(input, latest);
    }
    if let Some(error) = plan_ambiguity(input, &reachers) {
        return Err(error);
    }
    Ok(reachers.into_iter().next().expect("not empty"))
}

/// Every timeline the repository shows: histories, segments, backups.
fn known_timelines(input: &PlanInput) -> BTreeSet<TimelineId> {
    let mut set = BTreeSet::new();
    for (tli, history) in input.histories {
        set.insert(*tli);
        set.extend(history.entries.iter().map(|entry| entry.parent));
    }
    for object in input.wal {
        if let WalFileName::Segment { timeline, .. } = object.name {
            set.insert(timeline);
        }
    }
    set.extend(input.backups.iter().map(|backup| backup.timeline));
    set
}

/// The timeline whose WAL holds `lsn` on a path: the step containing it
/// (the first step also owns everything before it).
fn owner_on_path(path: &[TimelineStep], lsn: Lsn) -> TimelineId {
    path.iter()
        .rev()
        .find(|(_, begin, _)| *begin <= lsn)
        .or(path.first())
        .map(|(tli, _, _)| *tli)
        .unwrap_or(TimelineId::FIRST)
}

/// The first LSN at which two timelines hold different WAL: where their
/// histories, as PostgreSQL reads them (`timeline_at`), first name
/// different owners. Computed from the timelines' whole histories, not
/// from restore paths (which start at whatever backup each plan chose).
fn divergence(input: &PlanInput, a: TimelineId, b: TimelineId) -> Option<Lsn> {
    let owner = |tli: TimelineId, lsn: Lsn| match input.histories.get(&tli) {
        Some(history) => history.timeline_at(lsn),
        None => tli,
    };
    let mut points: Vec<Lsn> = [a, b]
        .iter()
        .filter_map(|tli| input.histories.get(tli))
        .flat_map(|h| h.entries.iter().map(|e| e.switch_point))
        .collect();
    points.push(Lsn(0));
    points.sort();
    points.dedup();
    points
        .into_iter()
        .find(|lsn| owner(a, *lsn) != owner(b, *lsn))
}

/// The time PostgreSQL recorded as the recovery target where a timeline
/// branched at `at` ("before 2026-…" or "after 2026-…" in a history file),
/// if it was a time target, and whether it stopped before it.
fn branch_target_time(input: &PlanInput, at: Lsn) -> Option<(Timestamp, bool)> {
    input
        .histories
        .values()
        .flat_map(|history| history.entries.iter())
        .filter(|entry| entry.switch_point == at)
        .find_map(|entry| {
            let reason = entry.reason.trim();
            let (time, before) = match reason.strip_prefix("before ") {
                Some(t) => (t, true),
                None => (reason.strip_prefix("after ")?, false),
            };
            Some((super::target::parse_target_time(time).ok()?, before))
        })
}

/// Whether `plan`'s path holds archived WAL of its own from `from` on
/// (archived at or after `since`, when given): a segment whose timeline
/// owns, on this path, the part of it at or after `from`.
fn has_own_wal_after(
    plan: &RestorePlan,
    input: &PlanInput,
    from: Lsn,
    since: Option<Timestamp>,
) -> bool {
    let size = input.wal_segment_size;
    input.wal.iter().any(|object| match object.name {
        WalFileName::Segment {
            timeline, segment, ..
        } => {
            segment >= from.segment_no(size)
                && owner_on_path(&plan.timeline_path, segment.start_lsn(size).max(from)) == timeline
                && since.is_none_or(|t| {
                    Timestamp::from_second(object.archived_unix_secs).is_ok_and(|a| a >= t)
                })
        }
        _ => false,
    })
}

/// The refusal when two timelines that reach the target passed it after
/// they diverged, so they hold different states for it.
fn plan_ambiguity(input: &PlanInput, reachers: &[RestorePlan]) -> Option<PlanError> {
    let mut involved: BTreeMap<TimelineId, &RestorePlan> = BTreeMap::new();
    for (i, a) in reachers.iter().enumerate() {
        for b in &reachers[i + 1..] {
            let Some(d) = divergence(input, a.target_timeline, b.target_timeline) else {
                continue;
            };
            let both_passed = match input.target {
                RecoveryTarget::Lsn(lsn) => *lsn >= d,
                // Stopped "before T": the parent's next commit was at T or
                // later, so a target at T may already include it. Stopped
                // "after T": everything up to T is on both.
                RecoveryTarget::Time(time) => match branch_target_time(input, d) {
                    Some((branched_at, true)) => *time >= branched_at,
                    Some((branched_at, false)) => *time > branched_at,
                    None => {
                        has_own_wal_after(a, input, d, Some(*time))
                            && has_own_wal_after(b, input, d, Some(*time))
                    }
                },
                RecoveryTarget::Xid(_) => {
                    has_own_wal_after(a, input, d, None) && has_own_wal_after(b, input, d, None)
                }
                _ => false,
            };
            if both_passed {
                involved.insert(a.target_timeline, a);
                involved.insert(b.target_timeline, b);
            }
        }
    }
    if involved.is_empty() {
        return None;
    }
    let candidates: Vec<String> = involved
        .values()
        .map(|plan| {
            let branch = match plan.timeline_path.len() {
                0 | 1 => String::new(),
                n => {
                    let (parent, _, end) = plan.timeline_path[n - 2];
                    format!(
                        ", branched from timeline {parent} at {}",
                        end.unwrap_or(Lsn(0))
                    )
                }
            };
            format!(
                "timeline {}{branch}, archived to {}",
                plan.target_timeline, plan.last_wal
            )
        })
        .collect();
    Some(PlanError::AmbiguousTimeline {
        target: input.target.to_string(),
        candidates: candidates.join("; "),
        example: *involved.keys().next().expect("not empty"),
    })
}

/// Plans the restore along one timeline.
fn plan_on_timeline(
    input: &PlanInput,
    target_timeline: TimelineId,
) -> Result<RestorePlan, PlanError> {
    let (backup, timeline_path) = match input.backup {
        BackupChoice::Label(label) => {
            let backup = find_backup(input.backups, label)?;
            check_target_after_backup(input.target, backup)?;
            let path = plan_timeline_path(backup, target_timeline, input.histories)?;
            (backup, path)
        }
        BackupChoice::Latest => plan_latest_backup(
            input.backups,
            input.target,
            target_timeline,
            input.histories,
        )?,
    };
    let size = input.wal_segment_size;
    let steps = segment_steps(backup, &timeline_path, size);
    let archived = archived_segments(input.wal);
    check_backup_wal(backup, &steps, &archived, size)?;

    let stop_segment = backup_segments(backup, size).1;
    let limit = match input.target {
        RecoveryTarget::Immediate => Some(stop_segment),
        _ => None,
    };
    let walk = walk_segments(&steps, &archived, limit, size);
    let (first, last) = match (walk.chosen.first(), walk.chosen.last()) {
        (Some(first), Some(last)) => (first.name.to_string(), last.name.to_string()),
        // The backup's range is complete, so the walk found at least its
        // first segment; stay total anyway.
        _ => {
            let name = backup_wal_name(backup, backup_segments(backup, size).0, size);
            (name.clone(), name)
        }
    };
    let newest_archive_time = walk
        .chosen
        .iter()
        .filter_map(|object| Timestamp::from_second(object.archived_unix_secs).ok())
        .max();
    // A stop followed by more archived WAL on the path is a gap; a stop
    // with nothing after it is just the end of the archive.
    let gap = walk.stop.as_ref().and_then(|stop| {
        later_archived(&steps, &archived, stop.segment).map(|next| PlanError::WalGap {
            first_missing: stop.missing.clone(),
            next_archived: next.name.to_string(),
            archive_end: walk.end,
        })
    });

    match input.target {
        RecoveryTarget::Immediate => {}
        RecoveryTarget::Lsn(lsn) => {
            if *lsn >= walk.end {
                return Err(gap.unwrap_or_else(|| PlanError::LsnBeyondArchive {
                    target: *lsn,
                    archive_end: walk.end,
                    last_wal: last.clone(),
                }));
            }
        }
        RecoveryTarget::Time(time) => {
            if let Some(newest) = newest_archive_time.filter(|newest| time > newest) {
                return Err(gap.unwrap_or_else(|| PlanError::TimeBeyondArchive {
                    target: *time,
                    newest_archive_time: newest,
                    last_wal: last.clone(),
                }));
            }
        }
        RecoveryTarget::EndOfArchive | RecoveryTarget::Xid(_) | RecoveryTarget::Name(_) => {
            if let Some(gap) = gap {
                return Err(gap);
            }
        }
    }

    Ok(RestorePlan {
        backup: backup.clone(),
        target_timeline,
        timeline_path,
        first_wal: first,
        last_wal: last,
        wal_files: walk.chosen.len(),
        wal_bytes: walk
            .chosen
            .iter()
            .fold(0u64, |sum, object| sum.saturating_add(object.stored_bytes)),
        newest_archive_time,
    })
}

/// What `recovery_target_timeline = 'latest'` means for this repository:
/// the highest timeline that has a history file or archived (full or
/// partial) segments, or that a backup was taken on.
pub fn plan_latest_timeline(
    backups: &[BackupManifest],
    wal: &[WalObject],
    histories: &BTreeMap<TimelineId, TimelineHistory>,
) -> TimelineId {
    let from_histories = histories
        .iter()
        .flat_map(|(tli, history)| [*tli, history.timeline]);
    let from_wal = wal.iter().filter_map(|object| match object.name {
        WalFileName::Segment { timeline, .. } | WalFileName::Partial { timeline, .. } => {
            Some(timeline)
        }
        WalFileName::Backup { .. } | WalFileName::History { .. } => None,
    });
    let from_backups = backups.iter().map(|backup| backup.timeline);
    from_histories
        .chain(from_wal)
        .chain(from_backups)
        .max()
        .unwrap_or(TimelineId::FIRST)
}

/// The timelines replay walks from `backup` to `target`, checking that
/// `target` descends from the backup's timeline after the backup ended.
pub fn plan_timeline_path(
    backup: &BackupManifest,
    target: TimelineId,
    histories: &BTreeMap<TimelineId, TimelineHistory>,
) -> Result<Vec<TimelineStep>, PlanError> {
    let not_descendant = || PlanError::TimelineNotDescendant {
        timeline: target,
        label: backup.label.clone(),
        backup_timeline: backup.timeline,
    };
    if backup.timeline == target {
        return Ok(vec![(target, backup.start_lsn, None)]);
    }
    if backup.timeline > target {
        return Err(not_descendant());
    }
    let history = histories
        .get(&target)
        .ok_or_else(|| PlanError::TimelineHistoryMissing {
            timeline: target,
            label: backup.label.clone(),
            backup_timeline: backup.timeline,
        })?;
    let fork = history
        .entries
        .iter()
        .position(|entry| entry.parent == backup.timeline)
        .ok_or_else(not_descendant)?;
    let entries = &history.entries[fork..];
    // PostgreSQL looks a position up newest timeline first, so a timeline
    // ends at the lowest switch point at or after its own: a later branch
    // made from an earlier point cuts it short. Timelines cut to nothing
    // are skipped. (Switch points normally increase; PostgreSQL writes one
    // that goes back when a recovery target on an older timeline lies
    // inside a later timeline's segment.)
    let mut ends: Vec<Lsn> = entries.iter().map(|entry| entry.switch_point).collect();
    for i in (0..ends.len().saturating_sub(1)).rev() {
        ends[i] = ends[i].min(ends[i + 1]);
    }
    let mut path = Vec::with_capacity(entries.len() + 1);
    let mut start = backup.start_lsn;
    for (index, (entry, end)) in entries.iter().zip(ends).enumerate() {
        if index == 0 && end < backup.stop_lsn {
            return Err(PlanError::TimelineForkedBeforeBackup {
                timeline: target,
                backup_timeline: backup.timeline,
                switch_point: end,
                label: backup.label.clone(),
                stop_lsn: backup.stop_lsn,
            });
        }
        if index > 0 && end <= start {
            continue;
        }
        path.push((entry.parent, start, Some(end)));
        start = end;
    }
    path.push((target, start, None));
    Ok(path)
}

/// Picks the newest backup that can reach `target` on `timeline`, with the
/// timeline path from it.
pub fn plan_latest_backup<'b>(
    backups: &'b [BackupManifest],
    target: &RecoveryTarget,
    timeline: TimelineId,
    histories: &BTreeMap<TimelineId, TimelineHistory>,
) -> Result<(&'b BackupManifest, Vec<TimelineStep>), PlanError> {
    let mut compatible = Vec::new();
    let mut first_refusal = None;
    // Newest first, so the refusal reported is the newest backup's.
    let mut by_lsn: Vec<&BackupManifest> = backups.iter().collect();
    by_lsn.sort_by(|a, b| newest_first(a, b));
    for backup in by_lsn {
        match plan_timeline_path(backup, timeline, histories) {
            Ok(path) => compatible.push((backup, path)),
            Err(refusal) => {
                first_refusal.get_or_insert(refusal);
            }
        }
    }
    if compatible.is_empty() {
        return Err(first_refusal.unwrap_or(PlanError::NoBackups));
    }
    match target {
        RecoveryTarget::Time(time) => pick_by_time(compatible, *time),
        RecoveryTarget::Lsn(lsn) => {
            let oldest = compatible.last().map(|(backup, _)| *backup);
            match compatible
                .into_iter()
                .find(|(backup, _)| backup.stop_lsn <= *lsn)
            {
                Some(found) => Ok(found),
                None => Err(match oldest {
                    Some(oldest) => PlanError::NoBackupBeforeLsn {
                        target: *lsn,
                        oldest_label: oldest.label.clone(),
                        oldest_stop_lsn: oldest.stop_lsn,
                    },
                    None => PlanError::NoBackups,
                }),
            }
        }
        RecoveryTarget::EndOfArchive
        | RecoveryTarget::Immediate
        | RecoveryTarget::Xid(_)
        | RecoveryTarget::Name(_) => compatible.into_iter().next().ok_or(PlanError::NoBackups),
    }
}

/// Orders backups newest first: by stop LSN, then stop time, then label.
fn newest_first(a: &BackupManifest, b: &BackupManifest) -> std::cmp::Ordering {
    use crate::repo::layout::label_order;
    (b.stop_lsn, b.stop_time_ts(), label_order(&b.label)).cmp(&(
        a.stop_lsn,
        a.stop_time_ts(),
        label_order(&a.label),
    ))
}

/// The newest of `compatible` (sorted newest first) that ended strictly
/// before `time`. Backups whose stop time cannot be read are skipped.
fn pick_by_time(
    compatible: Vec<(&BackupManifest, Vec<TimelineStep>)>,
    time: Timestamp,
) -> Result<(&BackupManifest, Vec<TimelineStep>), PlanError> {
    let unreadable = compatible
        .iter()
        .find(|(backup, _)| backup.stop_time_ts().is_none())
        .map(|(backup, _)| PlanError::BackupStopTimeUnreadable {
            label: backup.label.clone(),
            stop_time: backup.stop_time.clone(),
            target: time,
        });
    let mut readable: Vec<(Timestamp, &BackupManifest, Vec<TimelineStep>)> = compatible
        .into_iter()
        .filter_map(|(backup, path)| backup.stop_time_ts().map(|ts| (ts, backup, path)))
        .collect();
    // Stable sort: backups with equal stop times keep the LSN order.
    readable.sort_by_key(|(stop_time, _, _)| std::cmp::Reverse(*stop_time));
    let oldest = readable
        .last()
        .map(|(ts, backup, _)| (*ts, backup.label.clone()));
    match readable.into_iter().find(|(ts, _, _)| *ts < time) {
        Some((_, backup, path)) => Ok((backup, path)),
        None => Err(match (oldest, unreadable) {
            (Some((oldest_stop_time, oldest_label)), _) => PlanError::NoBackupBeforeTime {
                target: time,
                oldest_label,
                oldest_stop_time,
            },
            (None, Some(unreadable)) => unreadable,
            (None, None) => PlanError::NoBackups,
        }),
    }
}

fn find_backup<'b>(
    backups: &'b [BackupManifest],
    label: &str,
) -> Result<&'b BackupManifest, PlanError> {
    backups
        .iter()
        .find(|backup| backup.label == label)
        .ok_or_else(|| {
            let mut sorted: Vec<&BackupManifest> = backups.iter().collect();
            sorted.sort_by(|a, b| newest_first(b, a));
            let labels: Vec<&str> = sorted.iter().map(|backup| backup.label.as_str()).collect();
            PlanError::UnknownBackup {
                label: label.to_owned(),
                available: labels.join(", "),
            }
        })
}

/// A named backup cannot reach a time or LSN from before it ended.
fn check_target_after_backup(
    target: &RecoveryTarget,
    backup: &BackupManifest,
) -> Result<(), PlanError> {
    match target {
        RecoveryTarget::Time(time) => match backup.stop_time_ts() {
            None => Err(PlanError::BackupStopTimeUnreadable {
                label: backup.label.clone(),
                stop_time: backup.stop_time.clone(),
                target: *time,
            }),
            Some(stop_time) if *time <= stop_time => Err(PlanError::TimeBeforeBackupEnd {
                target: *time,
                label: backup.label.clone(),
                stop_time,
            }),
            Some(_) => Ok(()),
        },
        RecoveryTarget::Lsn(lsn) if *lsn < backup.stop_lsn => Err(PlanError::LsnBeforeBackupEnd {
            target: *lsn,
            label: backup.label.clone(),
            stop_lsn: backup.stop_lsn,
        }),
        _ => Ok(()),
    }
}

/// The first and last segment of the backup's own WAL range: from the
/// manifest's `start_wal` and `stop_wal`, or, if those are not segment names,
/// from its start LSN and the segment holding the byte before its stop LSN.
fn backup_segments(backup: &BackupManifest, size: WalSegmentSize) -> (SegmentNo, SegmentNo) {
    let named = |name: &str| match WalFileName::parse(name, size) {
        Ok(WalFileName::Segment { segment, .. }) => Some(segment),
        _ => None,
    };
    let start = named(&backup.start_wal).unwrap_or_else(|| backup.start_lsn.segment_no(size));
    let stop = named(&backup.stop_wal)
        .unwrap_or_else(|| Lsn(backup.stop_lsn.0.saturating_sub(1)).segment_no(size));
    (start, stop.max(start))
}

fn backup_wal_name(backup: &BackupManifest, segment: SegmentNo, size: WalSegmentSize) -> String {
    WalFileName::segment_file_name(backup.timeline, segment, size)
}

/// A timeline of the path as a range of segment numbers: the segments that
/// hold its WAL. `last` is `None` for the target timeline; `end` is its
/// switch point.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SegmentStep {
    timeline: TimelineId,
    first: SegmentNo,
    last: Option<SegmentNo>,
    end: Option<Lsn>,
}

fn segment_steps(
    backup: &BackupManifest,
    path: &[TimelineStep],
    size: WalSegmentSize,
) -> Vec<SegmentStep> {
    let backup_start = backup_segments(backup, size).0;
    path.iter()
        .enumerate()
        .map(|(index, &(timeline, start, end))| SegmentStep {
            timeline,
            first: if index == 0 {
                backup_start
            } else {
                start.segment_no(size)
            },
            // The segment holding the last byte before the switch point.
            last: end.map(|end| Lsn(end.0.saturating_sub(1)).segment_no(size)),
            end,
        })
        .collect()
}

/// The steps whose timeline may supply `segment`, newest timeline first.
fn covering(steps: &[SegmentStep], segment: SegmentNo) -> impl Iterator<Item = &SegmentStep> {
    steps
        .iter()
        .rev()
        .filter(move |step| step.first <= segment && step.last.is_none_or(|last| segment <= last))
}

type Archived<'w> = HashMap<(TimelineId, SegmentNo), &'w WalObject>;

/// Full segments by timeline and number (`.partial` files never count).
fn archived_segments(wal: &[WalObject]) -> Archived<'_> {
    let mut map = HashMap::new();
    for object in wal {
        if let WalFileName::Segment {
            timeline, segment, ..
        } = object.name
        {
            map.entry((timeline, segment)).or_insert(object);
        }
    }
    map
}

/// Every segment of the backup's own range must be archived.
fn check_backup_wal(
    backup: &BackupManifest,
    steps: &[SegmentStep],
    archived: &Archived<'_>,
    size: WalSegmentSize,
) -> Result<(), PlanError> {
    let (start, stop) = backup_segments(backup, size);
    let present: BTreeSet<SegmentNo> = archived
        .keys()
        .filter(|(timeline, segment)| {
            (start..=stop).contains(segment)
                && covering(steps, *segment).any(|step| step.timeline == *timeline)
        })
        .map(|(_, segment)| *segment)
        .collect();
    let total = (stop.0 - start.0).saturating_add(1);
    let present_count = u64::try_from(present.len()).unwrap_or(u64::MAX);
    if present_count >= total {
        return Ok(());
    }
    // At most present.len() + 1 steps: the first number not in the set.
    let mut first_missing = start;
    for segment in &present {
        if *segment != first_missing {
            break;
        }
        first_missing = SegmentNo(first_missing.0.saturating_add(1));
    }
    Err(PlanError::BackupWalMissing {
        label: backup.label.clone(),
        timeline: backup.timeline,
        start_wal: backup_wal_name(backup, start, size),
        stop_wal: backup_wal_name(backup, stop, size),
        missing: total - present_count,
        total,
        first_missing: backup_wal_name(backup, first_missing, size),
    })
}

/// Where a contiguous walk of the archive stopped.
#[derive(Debug, Clone, PartialEq)]
struct WalkStop {
    /// The segment number replay could not fully read.
    segment: SegmentNo,
    /// The name of the file replay would need there.
    missing: String,
}

#[derive(Debug)]
struct Walk<'w> {
    /// One archived file per segment, in order.
    chosen: Vec<&'w WalObject>,
    /// The first LSN the chosen files do not cover.
    end: Lsn,
    /// `None` when the walk reached its limit.
    stop: Option<WalkStop>,
}

/// Reads the archive as replay would, from the backup's start segment until
/// a segment is missing (or `limit`, included, is reached).
fn walk_segments<'w>(
    steps: &[SegmentStep],
    archived: &Archived<'w>,
    limit: Option<SegmentNo>,
    size: WalSegmentSize,
) -> Walk<'w> {
    let mut chosen = Vec::new();
    let Some(mut segment) = steps.first().map(|step| step.first) else {
        return Walk {
            chosen,
            end: Lsn::INVALID,
            stop: None,
        };
    };
    let mut end = segment.start_lsn(size);
    loop {
        if limit.is_some_and(|limit| segment > limit) {
            return Walk {
                chosen,
                end,
                stop: None,
            };
        }
        let candidates: Vec<&SegmentStep> = covering(steps, segment).collect();
        let Some(newest) = candidates.first() else {
            return Walk {
                chosen,
                end,
                stop: None,
            };
        };
        let missing = WalFileName::segment_file_name(newest.timeline, segment, size);
        let found = candidates.iter().find_map(|step| {
            archived
                .get(&(step.timeline, segment))
                .map(|object| (*step, *object))
        });
        let Some((step, object)) = found else {
            return Walk {
                chosen,
                end,
                stop: Some(WalkStop { segment, missing }),
            };
        };
        chosen.push(object);
        if step.timeline != newest.timeline {
            // An ancestor's copy of a switch segment: it holds WAL only up to
            // the switch point; the rest is in the missing newer copy.
            end = step.end.unwrap_or_else(|| segment.end_lsn(size));
            return Walk {
                chosen,
                end,
                stop: Some(WalkStop { segment, missing }),
            };
        }
        end = segment.end_lsn(size);
        match segment.next() {
            Some(next) => segment = next,
            None => {
                return Walk {
                    chosen,
                    end,
                    stop: None,
                }
            }
        }
    }
}

/// The first archived segment on the path after `after`, if any.
fn later_archived<'w>(
    steps: &[SegmentStep],
    archived: &Archived<'w>,
    after: SegmentNo,
) -> Option<&'w WalObject> {
    archived
        .iter()
        .filter(|((timeline, segment), _)| {
            *segment > after && covering(steps, *segment).any(|step| step.timeline == *timeline)
        })
        .min_by_key(|((timeline, segment), _)| (*segment, std::cmp::Reverse(*timeline)))
        .map(|(_, object)| *object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::layout::wal_key;

    const SIZE: WalSegmentSize = WalSegmentSize::DEFAULT;
    const SEG: u64 = 0x100_0000;

    fn tli(n: u32) -> TimelineId {
        TimelineId(n)
    }

    fn ts(text: &str) -> Timestamp {
        match text.parse() {
            Ok(t) => t,
            Err(e) => panic!("test timestamp {text}: {e}"),
        }
    }

    fn seg_name(timeline: u32, segment: u64) -> String {
        WalFileName::segment_file_name(tli(timeline), SegmentNo(segment), SIZE)
    }

    /// A backup on `timeline` from `start` to `stop`, stopped at `stop_time`.
    fn backup(
        label: &str,
        timeline: u32,
        start: u64,
        stop: u64,
        stop_time: &str,
    ) -> BackupManifest {
        BackupManifest {
            start_time: "2026-11-21T09:00:00Z".to_owned(),
            ..crate::repo::manifest::test_manifest(
                label,
                tli(timeline),
                Lsn(start),
                Lsn(stop),
                SIZE,
                stop_time,
            )
        }
    }

    fn object(name: WalFileName, archived_at: &str) -> WalObject {
        WalObject {
            key: wal_key(&name),
            name,
            stored_bytes: 100,
            archived_unix_secs: ts(archived_at).as_second(),
        }
    }

    fn segment(timeline: u32, segment: u64, archived_at: &str) -> WalObject {
        object(
            WalFileName::Segment {
                timeline: tli(timeline),
                segment: SegmentNo(segment),
                size: SIZE,
            },
            archived_at,
        )
    }

    fn partial(timeline: u32, segment: u64, archived_at: &str) -> WalObject {
        object(
            WalFileName::Partial {
                timeline: tli(timeline),
                segment: SegmentNo(segment),
                size: SIZE,
            },
            archived_at,
        )
    }

    /// Segments `from..=to` on `timeline`, archived one minute apart from
    /// 10:00 on (segment n at 10:n).
    fn segments(timeline: u32, from: u64, to: u64) -> Vec<WalObject> {
        (from..=to)
            .map(|n| segment(timeline, n, &format!("2026-11-21T10:{n:02}:00Z")))
            .collect()
    }

    fn history(timeline: u32, text: &str) -> (TimelineId, TimelineHistory) {
        match TimelineHistory::parse(tli(timeline), text) {
            Ok(h) => (tli(timeline), h),
            Err(e) => panic!("test history: {e}"),
        }
    }

    struct Case {
        backups: Vec<BackupManifest>,
        wal: Vec<WalObject>,
        histories: BTreeMap<TimelineId, TimelineHistory>,
        target: RecoveryTarget,
        backup: BackupChoice,
        target_timeline: Option<TimelineId>,
    }

    impl Case {
        fn new(backups: Vec<BackupManifest>, wal: Vec<WalObject>) -> Case {
            Case {
                backups,
                wal,
                histories: BTreeMap::new(),
                target: RecoveryTarget::EndOfArchive,
                backup: BackupChoice::Latest,
                target_timeline: None,
            }
        }

        fn target(mut self, target: RecoveryTarget) -> Case {
            self.target = target;
            self
        }

        fn label(mut self, label: &str) -> Case {
            self.backup = BackupChoice::Label(label.to_owned());
            self
        }

        fn timeline(mut self, timeline: u32) -> Case {
            self.target_timeline = Some(tli(timeline));
            self
        }

        fn history(mut self, timeline: u32, text: &str) -> Case {
            let (key, parsed) = history(timeline, text);
            self.histories.insert(key, parsed);
            self
        }

        fn plan(&self) -> Result<RestorePlan, PlanError> {
            plan_restore(&PlanInput {
                backups: &self.backups,
                wal: &self.wal,
                histories: &self.histories,
                target: &self.target,
                backup: &self.backup,
                target_timeline: self.target_timeline,
                wal_segment_size: SIZE,
            })
        }

        fn ok(&self) -> RestorePlan {
            match self.plan() {
                Ok(plan) => plan,
                Err(e) => panic!("expected a plan, got: {e}"),
            }
        }

        fn err(&self) -> PlanError {
            match self.plan() {
                Ok(plan) => panic!("expected an error, got {plan:?}"),
                Err(e) => e,
            }
        }
    }

    /// Three backups on timeline 1: a (segments 2..=3), b (5), c (8..=9).
    fn three_backups() -> Vec<BackupManifest> {
        vec![
            backup(
                "b",
                1,
                5 * SEG + 0x28,
                5 * SEG + 0x100,
                "2026-11-21T10:05:30Z",
            ),
            backup(
                "a",
                1,
                2 * SEG + 0x28,
                3 * SEG + 0x100,
                "2026-11-21T10:03:30Z",
            ),
            backup(
                "c",
                1,
                8 * SEG + 0x28,
                9 * SEG + 0x100,
                "2026-11-21T10:09:30Z",
            ),
        ]
    }

    fn time(text: &str) -> RecoveryTarget {
        RecoveryTarget::Time(ts(text))
    }

    // --- backup choice ---

    #[test]
    fn no_backups() {
        let case = Case::new(Vec::new(), segments(1, 1, 3));
        assert_eq!(case.err(), PlanError::NoBackups);
    }

    #[test]
    fn end_of_archive_takes_the_newest_backup() {
        let plan = Case::new(three_backups(), segments(1, 1, 12)).ok();
        assert_eq!(plan.backup.label, "c");
        assert_eq!(plan.target_timeline, tli(1));
        assert_eq!(
            plan.timeline_path,
            vec![(tli(1), Lsn(8 * SEG + 0x28), None)]
        );
        assert_eq!(plan.first_wal, seg_name(1, 8));
        assert_eq!(plan.last_wal, seg_name(1, 12));
        assert_eq!(plan.wal_files, 5);
        assert_eq!(plan.wal_bytes, 500);
        assert_eq!(plan.newest_archive_time, Some(ts("2026-11-21T10:12:00Z")));
    }

    #[test]
    fn xid_and_name_take_the_newest_backup() {
        for target in [
            RecoveryTarget::Xid("1234".into()),
            RecoveryTarget::Name("before".into()),
        ] {
            let plan = Case::new(three_backups(), segments(1, 1, 12))
                .target(target)
                .ok();
            assert_eq!(plan.backup.label, "c");
        }
    }

    #[test]
    fn picks_by_time() {
        let wal = segments(1, 1, 12);
        let pick = |t: &str| Case::new(three_backups(), wal.clone()).target(time(t)).ok();
        assert_eq!(pick("2026-11-21T10:07:00Z").backup.label, "b");
        assert_eq!(pick("2026-11-21T10:05:31Z").backup.label, "b");
        // Ended exactly at the target: not before it.
        assert_eq!(pick("2026-11-21T10:05:30Z").backup.label, "a");
        assert_eq!(pick("2026-11-21T10:11:00Z").backup.label, "c");
        // The plan still covers the whole archive from the backup's start.
        let plan = pick("2026-11-21T10:07:00Z");
        assert_eq!(plan.first_wal, seg_name(1, 5));
        assert_eq!(plan.last_wal, seg_name(1, 12));
        assert_eq!(plan.wal_files, 8);
    }

    #[test]
    fn no_backup_before_time() {
        let err = Case::new(three_backups(), segments(1, 1, 12))
            .target(time("2026-11-21T10:03:30Z"))
            .err();
        assert_eq!(
            err,
            PlanError::NoBackupBeforeTime {
                target: ts("2026-11-21T10:03:30Z"),
                oldest_label: "a".into(),
                oldest_stop_time: ts("2026-11-21T10:03:30Z"),
            }
        );
        assert!(err.to_string().starts_with(
            "no backup ended before 2026-11-21 10:03:30+00:00; the oldest backup, \"a\", ended at 2026-11-21 10:03:30+00:00\nHINT: "
        ));
    }

    #[test]
    fn unreadable_stop_times_are_skipped_when_picking_by_time() {
        let mut backups = three_backups();
        backups[2].stop_time = "garbage".into(); // c
        let plan = Case::new(backups.clone(), segments(1, 1, 12))
            .target(time("2026-11-21T10:11:00Z"))
            .ok();
        assert_eq!(plan.backup.label, "b");

        for backup in &mut backups {
            backup.stop_time = "garbage".into();
        }
        let err = Case::new(backups, segments(1, 1, 12))
            .target(time("2026-11-21T10:11:00Z"))
            .err();
        // The newest unreadable one is named.
        assert_eq!(
            err,
            PlanError::BackupStopTimeUnreadable {
                label: "c".into(),
                stop_time: "garbage".into(),
                target: ts("2026-11-21T10:11:00Z"),
            }
        );
    }

    #[test]
    fn pick_by_lsn() {
        let wal = segments(1, 1, 12);
        let pick = |lsn: u64| {
            Case::new(three_backups(), wal.clone())
                .target(RecoveryTarget::Lsn(Lsn(lsn)))
                .ok()
                .backup
                .label
        };
        assert_eq!(pick(5 * SEG + 0x100), "b"); // stop_lsn <= target
        assert_eq!(pick(5 * SEG + 0xFF), "a");
        assert_eq!(pick(12 * SEG), "c");
    }

    #[test]
    fn no_backup_before_lsn() {
        let err = Case::new(three_backups(), segments(1, 1, 12))
            .target(RecoveryTarget::Lsn(Lsn(3 * SEG)))
            .err();
        assert_eq!(
            err,
            PlanError::NoBackupBeforeLsn {
                target: Lsn(3 * SEG),
                oldest_label: "a".into(),
                oldest_stop_lsn: Lsn(3 * SEG + 0x100),
            }
        );
        assert!(err.to_string().contains("0/3000100"));
    }

    #[test]
    fn label_given() {
        let plan = Case::new(three_backups(), segments(1, 1, 12))
            .label("a")
            .target(time("2026-11-21T10:11:00Z"))
            .ok();
        assert_eq!(plan.backup.label, "a");
        assert_eq!(plan.first_wal, seg_name(1, 2));
        assert_eq!(plan.wal_files, 11);
    }

    #[test]
    fn unknown_label_lists_the_available_ones() {
        let err = Case::new(three_backups(), segments(1, 1, 12))
            .label("zzz")
            .err();
        assert_eq!(
            err,
            PlanError::UnknownBackup {
                label: "zzz".into(),
                available: "a, b, c".into()
            }
        );
        assert!(err
            .to_string()
            .contains("\nHINT: complete backups are: a, b, c"));
    }

    #[test]
    fn target_time_before_a_named_backup() {
        let case = Case::new(three_backups(), segments(1, 1, 12)).label("b");
        for t in ["2026-11-21T10:05:30Z", "2026-11-21T10:00:00Z"] {
            let err = case.clone_with(time(t)).err();
            assert_eq!(
                err,
                PlanError::TimeBeforeBackupEnd {
                    target: ts(t),
                    label: "b".into(),
                    stop_time: ts("2026-11-21T10:05:30Z"),
                }
            );
        }
        let msg = case
            .clone_with(time("2026-11-21T10:00:00Z"))
            .err()
            .to_string();
        assert!(msg.starts_with("target time 2026-11-21 10:00:00+00:00 is before the end of backup \"b\" (ended at 2026-11-21 10:05:30+00:00); the earliest reachable point is just after 2026-11-21 10:05:30+00:00\nHINT: "), "{msg}");
        assert_eq!(
            case.clone_with(time("2026-11-21T10:05:31Z"))
                .ok()
                .backup
                .label,
            "b"
        );
    }

    #[test]
    fn unreadable_stop_time_of_a_named_backup() {
        let mut backups = three_backups();
        backups[0].stop_time = "yesterday".into(); // b
        let err = Case::new(backups, segments(1, 1, 12))
            .label("b")
            .target(time("2026-11-21T10:11:00Z"))
            .err();
        assert!(
            matches!(err, PlanError::BackupStopTimeUnreadable { ref label, .. } if label == "b")
        );
    }

    #[test]
    fn target_lsn_before_a_named_backup() {
        let case = Case::new(three_backups(), segments(1, 1, 12)).label("b");
        let err = case
            .clone_with(RecoveryTarget::Lsn(Lsn(5 * SEG + 0xFF)))
            .err();
        assert_eq!(
            err,
            PlanError::LsnBeforeBackupEnd {
                target: Lsn(5 * SEG + 0xFF),
                label: "b".into(),
                stop_lsn: Lsn(5 * SEG + 0x100),
            }
        );
        assert!(err
            .to_string()
            .contains("the earliest reachable point is 0/5000100"));
        // Exactly the stop LSN is reachable.
        let plan = case
            .clone_with(RecoveryTarget::Lsn(Lsn(5 * SEG + 0x100)))
            .ok();
        assert_eq!(plan.backup.label, "b");
    }

    impl Case {
        fn clone_with(&self, target: RecoveryTarget) -> Case {
            Case {
                backups: self.backups.clone(),
                wal: self.wal.clone(),
                histories: self.histories.clone(),
                target,
                backup: self.backup.clone(),
                target_timeline: self.target_timeline,
            }
        }
    }

    // --- WAL coverage ---

    #[test]
    fn immediate_needs_only_the_backup_range() {
        // Segment 11 missing after the backup: irrelevant for immediate.
        let mut wal = segments(1, 2, 10);
        wal.extend(segments(1, 12, 13));
        let plan = Case::new(three_backups(), wal.clone())
            .target(RecoveryTarget::Immediate)
            .ok();
        assert_eq!(plan.backup.label, "c");
        assert_eq!(plan.first_wal, seg_name(1, 8));
        assert_eq!(plan.last_wal, seg_name(1, 9));
        assert_eq!(plan.wal_files, 2);
        assert_eq!(plan.newest_archive_time, Some(ts("2026-11-21T10:09:00Z")));
        // Other targets refuse the gap.
        let err = Case::new(three_backups(), wal).err();
        assert_eq!(
            err,
            PlanError::WalGap {
                first_missing: seg_name(1, 11),
                next_archived: seg_name(1, 12),
                archive_end: Lsn(11 * SEG),
            }
        );
    }

    #[test]
    fn missing_backup_range() {
        // Backup a needs 2..=3; only 3 is archived, and 2 only as .partial.
        let mut wal = segments(1, 3, 12);
        wal.push(partial(1, 2, "2026-11-21T10:02:00Z"));
        let err = Case::new(three_backups(), wal).label("a").err();
        assert_eq!(
            err,
            PlanError::BackupWalMissing {
                label: "a".into(),
                timeline: tli(1),
                start_wal: seg_name(1, 2),
                stop_wal: seg_name(1, 3),
                missing: 1,
                total: 2,
                first_missing: seg_name(1, 2),
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains(
                "1 of 2 are not archived; the first missing is 000000010000000000000002\nHINT: "
            ),
            "{msg}"
        );
    }

    #[test]
    fn missing_backup_range_counts_every_missing_segment() {
        let wide = backup("w", 1, 2 * SEG, 7 * SEG + 1, "2026-11-21T10:07:30Z");
        let mut wal = segments(1, 2, 3);
        wal.extend(segments(1, 5, 5));
        let err = Case::new(vec![wide], wal).err();
        assert!(matches!(
            err,
            PlanError::BackupWalMissing { missing: 3, total: 6, ref first_missing, .. }
                if *first_missing == seg_name(1, 4)
        ));
    }

    #[test]
    fn nothing_archived_at_all() {
        let err = Case::new(three_backups(), Vec::new()).err();
        assert!(matches!(
            err,
            PlanError::BackupWalMissing { missing: 2, total: 2, ref first_missing, .. }
                if *first_missing == seg_name(1, 8)
        ));
    }

    #[test]
    fn gap_detection() {
        let mut wal = segments(1, 1, 10);
        wal.extend(segments(1, 13, 14));
        let err = Case::new(three_backups(), wal).label("b").err();
        assert_eq!(
            err,
            PlanError::WalGap {
                first_missing: seg_name(1, 11),
                next_archived: seg_name(1, 13),
                archive_end: Lsn(11 * SEG),
            }
        );
        let msg = err.to_string();
        assert!(msg.starts_with("WAL file 00000001000000000000000B is missing from the archive, but later WAL on the restore path is archived (next: 00000001000000000000000D)\nHINT: replay would end at 0/B000000"), "{msg}");
    }

    #[test]
    fn targets_before_a_gap_are_reachable() {
        let mut wal = segments(1, 1, 10);
        wal.extend(segments(1, 13, 14));
        let case = Case::new(three_backups(), wal).label("b");
        let plan = case.clone_with(RecoveryTarget::Lsn(Lsn(10 * SEG + 5))).ok();
        assert_eq!(plan.last_wal, seg_name(1, 10));
        assert_eq!(plan.wal_files, 6);
        let plan = case.clone_with(time("2026-11-21T10:09:00Z")).ok();
        assert_eq!(plan.newest_archive_time, Some(ts("2026-11-21T10:10:00Z")));
        // Past the gap: the gap is the reason.
        for target in [
            RecoveryTarget::Lsn(Lsn(11 * SEG)),
            time("2026-11-21T10:13:30Z"),
            RecoveryTarget::Xid("9".into()),
            RecoveryTarget::Name("n".into()),
        ] {
            assert!(
                matches!(
                    case.clone_with(target.clone()).err(),
                    PlanError::WalGap { .. }
                ),
                "{target:?}"
            );
        }
    }

    #[test]
    fn lsn_beyond_the_archive() {
        let case = Case::new(three_backups(), segments(1, 1, 12));
        let err = case.clone_with(RecoveryTarget::Lsn(Lsn(13 * SEG))).err();
        assert_eq!(
            err,
            PlanError::LsnBeyondArchive {
                target: Lsn(13 * SEG),
                archive_end: Lsn(13 * SEG),
                last_wal: seg_name(1, 12),
            }
        );
        assert!(err.to_string().starts_with(
            "target LSN 0/D000000 is past the end of the archived WAL on the restore path (0/D000000, in 00000001000000000000000C)\nHINT: "
        ));
        // The last byte of the last segment is reachable.
        let plan = case.clone_with(RecoveryTarget::Lsn(Lsn(13 * SEG - 1))).ok();
        assert_eq!(plan.backup.label, "c");
    }

    #[test]
    fn time_beyond_the_archive() {
        let case = Case::new(three_backups(), segments(1, 1, 12));
        let err = case.clone_with(time("2026-11-21T10:12:01Z")).err();
        assert_eq!(
            err,
            PlanError::TimeBeyondArchive {
                target: ts("2026-11-21T10:12:01Z"),
                newest_archive_time: ts("2026-11-21T10:12:00Z"),
                last_wal: seg_name(1, 12),
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("archived at 2026-11-21 10:12:00+00:00)\nHINT: "),
            "{msg}"
        );
        assert!(msg.contains("\"recovery ended before configured recovery target was reached\""));
        // Exactly the newest archive time is accepted.
        assert_eq!(
            case.clone_with(time("2026-11-21T10:12:00Z"))
                .ok()
                .backup
                .label,
            "c"
        );
    }

    #[test]
    fn archive_times_out_of_range_are_ignored() {
        let mut wal = segments(1, 8, 9);
        for object in &mut wal {
            object.archived_unix_secs = i64::MAX;
        }
        let plan = Case::new(three_backups(), wal)
            .target(time("2030-01-01T00:00:00Z"))
            .ok();
        assert_eq!(plan.newest_archive_time, None);
    }

    #[test]
    fn other_kinds_of_wal_objects_are_ignored() {
        let mut wal = segments(1, 8, 9);
        wal.push(object(
            WalFileName::Backup {
                timeline: tli(1),
                segment: SegmentNo(10),
                offset: 0x28,
                size: SIZE,
            },
            "2026-11-21T11:00:00Z",
        ));
        wal.push(object(
            WalFileName::History { timeline: tli(1) },
            "2026-11-21T11:00:00Z",
        ));
        wal.push(partial(1, 10, "2026-11-21T11:00:00Z"));
        let plan = Case::new(three_backups(), wal).ok();
        assert_eq!(plan.last_wal, seg_name(1, 9));
        assert_eq!(plan.wal_files, 2);
        assert_eq!(plan.newest_archive_time, Some(ts("2026-11-21T10:09:00Z")));
    }

    // --- timelines ---

    const PROMOTED_AT_5: &str = "1\t0/5000000\tno recovery target specified\n";

    /// Timeline 1 up to segment 4 (plus its own copy of 5), then a promotion
    /// at 0/5000000 (a segment boundary): timeline 2 from segment 5 on.
    fn promoted_wal() -> Vec<WalObject> {
        let mut wal = segments(1, 1, 5);
        wal.extend(segments(2, 5, 9));
        wal
    }

    #[test]
    fn latest_timeline_after_a_promotion() {
        let plan = Case::new(
            vec![backup(
                "a",
                1,
                2 * SEG + 0x28,
                3 * SEG + 0x100,
                "2026-11-21T10:03:30Z",
            )],
            promoted_wal(),
        )
        .history(2, PROMOTED_AT_5)
        .ok();
        assert_eq!(plan.target_timeline, tli(2));
        assert_eq!(
            plan.timeline_path,
            vec![
                (tli(1), Lsn(2 * SEG + 0x28), Some(Lsn(5 * SEG))),
                (tli(2), Lsn(5 * SEG), None),
            ]
        );
        assert_eq!(plan.first_wal, seg_name(1, 2));
        assert_eq!(plan.last_wal, seg_name(2, 9));
        // 2, 3, 4 on timeline 1; 5..=9 on timeline 2.
        assert_eq!(plan.wal_files, 8);
    }

    #[test]
    fn latest_timeline_from_wal_names_and_histories() {
        let backups = vec![backup("a", 1, 2 * SEG, 3 * SEG, "2026-11-21T10:03:30Z")];
        let mut histories = BTreeMap::new();
        assert_eq!(plan_latest_timeline(&backups, &[], &histories), tli(1));
        assert_eq!(plan_latest_timeline(&[], &[], &histories), tli(1));
        assert_eq!(
            plan_latest_timeline(
                &backups,
                &[partial(3, 7, "2026-11-21T10:00:00Z")],
                &histories
            ),
            tli(3)
        );
        // History and backup history names do not count.
        let others = [
            object(
                WalFileName::History { timeline: tli(9) },
                "2026-11-21T10:00:00Z",
            ),
            object(
                WalFileName::Backup {
                    timeline: tli(8),
                    segment: SegmentNo(2),
                    offset: 0,
                    size: SIZE,
                },
                "2026-11-21T10:00:00Z",
            ),
        ];
        assert_eq!(plan_latest_timeline(&backups, &others, &histories), tli(1));
        let (key, parsed) = history(4, "1\t0/5000000\n");
        histories.insert(key, parsed);
        assert_eq!(
            plan_latest_timeline(&backups, &promoted_wal(), &histories),
            tli(4)
        );
    }

    #[test]
    fn explicit_backup_timeline_ignores_later_timelines() {
        let plan = Case::new(
            vec![backup(
                "a",
                1,
                2 * SEG + 0x28,
                3 * SEG + 0x100,
                "2026-11-21T10:03:30Z",
            )],
            promoted_wal(),
        )
        .history(2, PROMOTED_AT_5)
        .timeline(1)
        .ok();
        assert_eq!(plan.target_timeline, tli(1));
        assert_eq!(plan.last_wal, seg_name(1, 5));
        assert_eq!(plan.wal_files, 4);
    }

    #[test]
    fn timeline_forked_before_the_backup() {
        // Backup b on timeline 1 ends at 0/5000100, after timeline 2 forked
        // at 0/5000000.
        let case = Case::new(three_backups(), promoted_wal())
            .history(2, PROMOTED_AT_5)
            .label("b");
        let err = case.err();
        assert_eq!(
            err,
            PlanError::TimelineForkedBeforeBackup {
                timeline: tli(2),
                backup_timeline: tli(1),
                switch_point: Lsn(5 * SEG),
                label: "b".into(),
                stop_lsn: Lsn(5 * SEG + 0x100),
            }
        );
        assert!(err.to_string().starts_with(
            "timeline 2 forked from timeline 1 at 0/5000000, before backup \"b\" ended at 0/5000100\nHINT: "
        ));
    }

    #[test]
    fn latest_backup_skips_backups_from_before_the_fork() {
        // b and c ended after the fork; a is the newest usable one.
        let plan = Case::new(three_backups(), promoted_wal())
            .history(2, PROMOTED_AT_5)
            .ok();
        assert_eq!(plan.backup.label, "a");
        assert_eq!(plan.target_timeline, tli(2));
    }

    #[test]
    fn no_backup_fits_the_timeline() {
        let backups = vec![backup("c", 1, 8 * SEG, 9 * SEG, "2026-11-21T10:09:30Z")];
        let err = Case::new(backups, promoted_wal())
            .history(2, PROMOTED_AT_5)
            .err();
        assert!(
            matches!(err, PlanError::TimelineForkedBeforeBackup { ref label, .. } if label == "c")
        );
    }

    #[test]
    fn switch_point_exactly_at_the_backup_end_is_fine() {
        let b = backup("a", 1, 2 * SEG, 5 * SEG, "2026-11-21T10:04:30Z");
        let plan = Case::new(vec![b], promoted_wal())
            .history(2, PROMOTED_AT_5)
            .ok();
        assert_eq!(plan.backup.label, "a");
        assert_eq!(plan.first_wal, seg_name(1, 2));
        assert_eq!(plan.last_wal, seg_name(2, 9));
    }

    #[test]
    fn target_timeline_without_history() {
        let err = Case::new(three_backups(), promoted_wal()).label("a").err();
        assert_eq!(
            err,
            PlanError::TimelineHistoryMissing {
                timeline: tli(2),
                label: "a".into(),
                backup_timeline: tli(1),
            }
        );
        assert!(err
            .to_string()
            .contains("\nHINT: archive 00000002.history,"));
    }

    #[test]
    fn target_timeline_not_descending_from_the_backup() {
        // Timeline 3 forked from 2; a backup on 4 cannot go back to 3, and
        // a backup on 1 is not in 3's history.
        let backups = vec![
            backup("on4", 4, 2 * SEG, 3 * SEG, "2026-11-21T10:03:30Z"),
            backup("on1", 1, 2 * SEG, 3 * SEG, "2026-11-21T10:03:30Z"),
        ];
        let case = Case::new(backups, segments(3, 1, 9))
            .history(3, "2\t0/5000000\n")
            .timeline(3);
        for label in ["on4", "on1"] {
            let mut case = case.clone_with(RecoveryTarget::EndOfArchive);
            case.backup = BackupChoice::Label(label.into());
            assert!(matches!(
                case.err(),
                PlanError::TimelineNotDescendant { timeline: TimelineId(3), label: ref l, .. } if l == label
            ));
        }
    }

    #[test]
    fn switch_segment_copies() {
        // Fork in the middle of segment 5: timeline 1 holds 5 up to the
        // switch point, timeline 2 all of it.
        let mid = "1\t0/5000100\tno recovery target specified\n";
        let a = || {
            backup(
                "a",
                1,
                2 * SEG + 0x28,
                3 * SEG + 0x100,
                "2026-11-21T10:03:30Z",
            )
        };

        // Both copies archived: the child's is used.
        let mut wal = segments(1, 1, 5);
        wal.extend(segments(2, 5, 7));
        let plan = Case::new(vec![a()], wal).history(2, mid).ok();
        assert_eq!(plan.wal_files, 6); // 2, 3, 4 on 1; 5, 6, 7 on 2
        assert_eq!(plan.last_wal, seg_name(2, 7));

        // Only the child's copy (the parent left a .partial).
        let mut wal = segments(1, 1, 4);
        wal.push(partial(1, 5, "2026-11-21T10:05:00Z"));
        wal.extend(segments(2, 5, 7));
        let plan = Case::new(vec![a()], wal).history(2, mid).ok();
        assert_eq!(plan.wal_files, 6);

        // Only the parent's copy and nothing later: the archive ends at the
        // switch point.
        let case = Case::new(vec![a()], segments(1, 1, 5)).history(2, mid);
        let plan = case.ok();
        assert_eq!(plan.target_timeline, tli(2));
        assert_eq!(plan.last_wal, seg_name(1, 5));
        assert_eq!(plan.wal_files, 4);
        // Past the switch point only timeline 1 (whose full copy of 5
        // holds WAL beyond it) reaches the LSN, so it is followed...
        let past = case.clone_with(RecoveryTarget::Lsn(Lsn(5 * SEG + 0x100)));
        assert_eq!(past.ok().target_timeline, tli(1));
        // ...while timeline 2, when asked for, ends at the switch point.
        assert_eq!(
            past.timeline(2).err(),
            PlanError::LsnBeyondArchive {
                target: Lsn(5 * SEG + 0x100),
                archive_end: Lsn(5 * SEG + 0x100),
                last_wal: seg_name(1, 5),
            }
        );
        assert_eq!(
            case.clone_with(RecoveryTarget::Lsn(Lsn(5 * SEG + 0xFF)))
                .ok()
                .last_wal,
            seg_name(1, 5)
        );

        // Only the parent's copy but later child segments: a gap.
        let mut wal = segments(1, 1, 5);
        wal.extend(segments(2, 6, 7));
        let err = Case::new(vec![a()], wal).history(2, mid).err();
        assert_eq!(
            err,
            PlanError::WalGap {
                first_missing: seg_name(2, 5),
                next_archived: seg_name(2, 6),
                archive_end: Lsn(5 * SEG + 0x100),
            }
        );
    }

    #[test]
    fn parent_segments_after_the_fork_do_not_count() {
        // Timeline 1 carried on after timeline 2 forked at 0/5000000; its
        // segments 6.. are another history and must not fill timeline 2's gap.
        let mut wal = segments(1, 1, 8);
        wal.extend(segments(2, 5, 5));
        wal.extend(segments(2, 7, 8));
        let err = Case::new(
            vec![backup("a", 1, 2 * SEG, 3 * SEG, "2026-11-21T10:03:30Z")],
            wal,
        )
        .history(2, PROMOTED_AT_5)
        .err();
        assert_eq!(
            err,
            PlanError::WalGap {
                first_missing: seg_name(2, 6),
                next_archived: seg_name(2, 7),
                archive_end: Lsn(6 * SEG),
            }
        );
    }

    #[test]
    fn three_timelines() {
        // 1 -> 2 at 0/5000000, 2 -> 3 at 0/7000080.
        let mut wal = segments(1, 2, 4);
        wal.extend(segments(2, 5, 7));
        wal.extend(segments(3, 7, 9));
        // A sibling timeline 4 forked from 1 elsewhere: ignored.
        wal.extend(segments(4, 6, 20));
        let case = Case::new(
            vec![backup(
                "a",
                1,
                2 * SEG + 0x28,
                3 * SEG,
                "2026-11-21T10:03:30Z",
            )],
            wal,
        )
        .history(2, PROMOTED_AT_5)
        .history(3, "1\t0/5000000\n2\t0/7000080\n")
        .history(4, "1\t0/6000000\n")
        .timeline(3);
        let plan = case.ok();
        assert_eq!(
            plan.timeline_path,
            vec![
                (tli(1), Lsn(2 * SEG + 0x28), Some(Lsn(5 * SEG))),
                (tli(2), Lsn(5 * SEG), Some(Lsn(7 * SEG + 0x80))),
                (tli(3), Lsn(7 * SEG + 0x80), None),
            ]
        );
        assert_eq!(plan.wal_files, 8); // 2,3,4 / 5,6 / 7,8,9
        assert_eq!(plan.first_wal, seg_name(1, 2));
        assert_eq!(plan.last_wal, seg_name(3, 9));

        // Latest is timeline 4, whose fork at 0/6000000 is after backup a
        // ended: usable too, but its history is another branch.
        let plan = case.clone_with(RecoveryTarget::EndOfArchive);
        let plan = Case {
            target_timeline: None,
            ..plan
        }
        .err();
        // Timeline 4 forked from 1 at 0/6000000, but timeline 1 has no
        // segment 5, so replay stops at a gap before timeline 4's WAL.
        assert_eq!(
            plan,
            PlanError::WalGap {
                first_missing: seg_name(1, 5),
                next_archived: seg_name(4, 6),
                archive_end: Lsn(5 * SEG),
            }
        );
    }

    #[test]
    fn backup_on_a_later_timeline() {
        let b = backup(
            "two",
            2,
            6 * SEG + 0x28,
            6 * SEG + 0x100,
            "2026-11-21T10:06:30Z",
        );
        let plan = Case::new(vec![b], promoted_wal())
            .history(2, PROMOTED_AT_5)
            .ok();
        assert_eq!(
            plan.timeline_path,
            vec![(tli(2), Lsn(6 * SEG + 0x28), None)]
        );
        assert_eq!(plan.first_wal, seg_name(2, 6));
        assert_eq!(plan.wal_files, 4);
    }

    #[test]
    fn manifest_wal_names_that_are_not_segments_fall_back_to_lsns() {
        let mut b = backup("a", 1, 2 * SEG + 0x28, 4 * SEG, "2026-11-21T10:03:30Z");
        b.start_wal = "?".into();
        b.stop_wal = String::new();
        assert_eq!(backup_segments(&b, SIZE), (SegmentNo(2), SegmentNo(3)));
        let err = Case::new(vec![b], segments(1, 3, 5)).err();
        assert!(matches!(
            err,
            PlanError::BackupWalMissing { total: 2, missing: 1, ref first_missing, .. }
                if *first_missing == seg_name(1, 2)
        ));
    }

    #[test]
    fn error_messages_follow_the_style() {
        let t = ts("2026-11-21T10:00:00Z");
        let errors = [
            PlanError::NoBackups,
            PlanError::UnknownBackup {
                label: "x".into(),
                available: "a".into(),
            },
            PlanError::TimelineHistoryMissing {
                timeline: tli(2),
                label: "a".into(),
                backup_timeline: tli(1),
            },
            PlanError::TimelineNotDescendant {
                timeline: tli(2),
                label: "a".into(),
                backup_timeline: tli(1),
            },
            PlanError::TimelineForkedBeforeBackup {
                timeline: tli(2),
                backup_timeline: tli(1),
                switch_point: Lsn(1),
                label: "a".into(),
                stop_lsn: Lsn(2),
            },
            PlanError::NoBackupBeforeTime {
                target: t,
                oldest_label: "a".into(),
                oldest_stop_time: t,
            },
            PlanError::NoBackupBeforeLsn {
                target: Lsn(1),
                oldest_label: "a".into(),
                oldest_stop_lsn: Lsn(2),
            },
            PlanError::BackupStopTimeUnreadable {
                label: "a".into(),
                stop_time: "x".into(),
                target: t,
            },
            PlanError::TimeBeforeBackupEnd {
                target: t,
                label: "a".into(),
                stop_time: t,
            },
            PlanError::LsnBeforeBackupEnd {
                target: Lsn(1),
                label: "a".into(),
                stop_lsn: Lsn(2),
            },
            PlanError::BackupWalMissing {
                label: "a".into(),
                timeline: tli(1),
                start_wal: "s".into(),
                stop_wal: "e".into(),
                missing: 1,
                total: 2,
                first_missing: "s".into(),
            },
            PlanError::WalGap {
                first_missing: "m".into(),
                next_archived: "n".into(),
                archive_end: Lsn(1),
            },
            PlanError::LsnBeyondArchive {
                target: Lsn(2),
                archive_end: Lsn(1),
                last_wal: "l".into(),
            },
            PlanError::TimeBeyondArchive {
                target: t,
                newest_archive_time: t,
                last_wal: "l".into(),
            },
        ];
        for err in errors {
            let msg = err.to_string();
            let Some((first, hint)) = msg.split_once("\nHINT: ") else {
                panic!("no hint: {msg}");
            };
            // WAL file names and "WAL" itself are upper case by nature.
            assert!(
                first.starts_with(|c: char| c.is_lowercase()) || first.starts_with("WAL "),
                "{msg}"
            );
            assert!(!first.ends_with('.') && !hint.ends_with('.'), "{msg}");
            assert!(!hint.contains('\n'), "{msg}");
        }
    }

    /// Timeline 2 branched from timeline 1 in segment 5, and both went on:
    /// a target both passed after the branch is refused, one before it or
    /// reached by one timeline only is followed.
    fn branched(reason: &str) -> Case {
        let a = backup(
            "a",
            1,
            2 * SEG + 0x28,
            3 * SEG + 0x100,
            "2026-11-21T10:03:30Z",
        );
        let mut wal = segments(1, 1, 8);
        wal.extend((5..=7).map(|n| segment(2, n, &format!("2026-11-21T10:2{n}:00Z"))));
        Case::new(vec![a], wal).history(2, &format!("1\t0/5000100\t{reason}\n"))
    }

    #[test]
    fn ambiguous_lsn_targets_are_refused() {
        let case = branched("after LSN 0/5000100");
        let err = case.clone_with(RecoveryTarget::Lsn(Lsn(6 * SEG))).err();
        assert!(matches!(err, PlanError::AmbiguousTimeline { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("timeline 1, archived to 000000010000000000000008"),
            "{msg}"
        );
        assert!(
            msg.contains("timeline 2, branched from timeline 1 at 0/5000100"),
            "{msg}"
        );
        assert!(msg.contains("--target-timeline"), "{msg}");
        // Before the branch both hold the same WAL: the newest is followed.
        let before = case.clone_with(RecoveryTarget::Lsn(Lsn(4 * SEG))).ok();
        assert_eq!(before.target_timeline, tli(2));
        // Only timeline 1 reaches this far.
        let far = case
            .clone_with(RecoveryTarget::Lsn(Lsn(8 * SEG + 0x800000)))
            .ok();
        assert_eq!(far.target_timeline, tli(1));
        // Said explicitly, either timeline is planned.
        for t in [1, 2] {
            let plan = case
                .clone_with(RecoveryTarget::Lsn(Lsn(6 * SEG)))
                .timeline(t)
                .ok();
            assert_eq!(plan.target_timeline, tli(t));
        }
    }

    #[test]
    fn ambiguous_time_targets_are_refused() {
        // The branch's time is known from its history: targets up to it
        // are the same on both timelines.
        let case = branched("before 2026-11-21 10:05:30+00");
        assert_eq!(
            case.clone_with(time("2026-11-21T10:05:00Z"))
                .ok()
                .target_timeline,
            tli(2)
        );
        let err = case.clone_with(time("2026-11-21T10:07:30Z")).err();
        assert!(matches!(err, PlanError::AmbiguousTimeline { .. }), "{err}");
        // Unknown branch time: both archived WAL past the branch after the
        // target, so it may lie on either.
        let case = branched("after LSN 0/5000100");
        let err = case.clone_with(time("2026-11-21T10:07:30Z")).err();
        assert!(matches!(err, PlanError::AmbiguousTimeline { .. }), "{err}");
        // Past everything timeline 1 archived: only timeline 2 reaches it.
        assert_eq!(
            case.clone_with(time("2026-11-21T10:20:00Z"))
                .ok()
                .target_timeline,
            tli(2)
        );
    }

    #[test]
    fn ambiguous_xid_targets_are_refused_unless_one_side_stopped() {
        let case = branched("after LSN 0/5000100");
        let err = case.clone_with(RecoveryTarget::Xid("1234".into())).err();
        assert!(matches!(err, PlanError::AmbiguousTimeline { .. }), "{err}");
        // A failover: timeline 1 stopped at the branch (its last segment
        // only as .partial), so only timeline 2 goes on.
        let a = backup(
            "a",
            1,
            2 * SEG + 0x28,
            3 * SEG + 0x100,
            "2026-11-21T10:03:30Z",
        );
        let mut wal = segments(1, 1, 4);
        wal.push(partial(1, 5, "2026-11-21T10:05:00Z"));
        wal.extend(segments(2, 5, 7));
        let b = backup(
            "b",
            2,
            6 * SEG + 0x28,
            6 * SEG + 0x100,
            "2026-11-21T10:06:30Z",
        );
        let case = Case::new(vec![a.clone()], wal.clone())
            .history(2, "1\t0/5000100\tno recovery target specified\n")
            .target(RecoveryTarget::Xid("1234".into()));
        assert_eq!(case.ok().target_timeline, tli(2));
        // Also with a backup taken on the new timeline after the failover.
        let case = Case::new(vec![a, b], wal)
            .history(2, "1\t0/5000100\tno recovery target specified\n")
            .target(RecoveryTarget::Xid("1234".into()));
        assert_eq!(case.ok().target_timeline, tli(2));
        assert_eq!(
            case.clone_with(time("2026-11-21T10:06:45Z"))
                .ok()
                .target_timeline,
            tli(2)
        );
    }
}
