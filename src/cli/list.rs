//! `walvault list` and `walvault list --json`: the backups, the archived
//! WAL per timeline, and the recoverable time window.
//!
//! The JSON schema (documented in docs/FORMAT.md, "list --json") is stable:
//! fields are only ever added.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::GlobalArgs;
use crate::exit::Exit;
use crate::repo::{BackupListing, Repository, WalObject};
use crate::wal::{TimelineId, WalFileName};

use super::human_bytes;
use super::logging::report_error;

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct ListReport {
    /// 1 for repo1, 2 for repo2.
    pub repo_index: usize,
    pub repository: String,
    pub system_identifier: Option<String>,
    pub backups: Vec<BackupRow>,
    pub wal: Vec<TimelineRow>,
    pub recovery_window: Option<Window>,
    /// With two repositories configured and no --repo-index: repo2's own
    /// report (the top level is repo1's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub more_repositories: Vec<ListReport>,
}

#[derive(Debug, Serialize)]
pub struct BackupRow {
    pub label: String,
    /// "complete" or "incomplete" (no manifest: interrupted or running).
    pub status: &'static str,
    pub timeline: Option<u32>,
    pub start_time: Option<String>,
    pub stop_time: Option<String>,
    pub start_lsn: Option<String>,
    pub stop_lsn: Option<String>,
    pub pg_version_num: Option<u32>,
    pub files: Option<usize>,
    pub data_size_bytes: Option<u64>,
    /// What this backup's own objects occupy: the size it added.
    pub stored_size_bytes: u64,
    /// "full", "diff" or "incr"; `null` for an incomplete backup.
    pub backup_type: Option<&'static str>,
    /// The backup a diff or incr was compared with.
    pub reference: Option<String>,
    /// Every backup whose objects it needs (it cannot be restored, and is
    /// never expired, without them).
    pub depends_on: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TimelineRow {
    pub timeline: u32,
    /// The timeline this one branched from, and where (from its history
    /// file); `null` for a timeline without one.
    pub parent: Option<u32>,
    pub branch_point: Option<String>,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub segments: usize,
    pub other_files: usize,
    pub stored_size_bytes: u64,
    pub newest_archived_at: Option<String>,
    /// Runs of missing segments between the first and the last.
    pub gaps: Vec<Gap>,
}

#[derive(Debug, Serialize)]
pub struct Gap {
    pub first_missing: String,
    pub missing_segments: u64,
}

#[derive(Debug, Serialize)]
pub struct Window {
    /// The end of the oldest complete backup.
    pub from: String,
    /// The archive time of the newest WAL file.
    pub to: String,
}

fn ts(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Builds the report (also used by `status`).
pub fn build_report(
    repo: &Repository,
    header_sysid: Option<String>,
    backups: &[BackupListing],
    wal: &[WalObject],
    histories: &BTreeMap<TimelineId, crate::wal::TimelineHistory>,
) -> ListReport {
    let rows = backups
        .iter()
        .map(|b| {
            let m = b.manifest.as_ref();
            BackupRow {
                label: b.label.clone(),
                status: if m.is_some() {
                    "complete"
                } else {
                    "incomplete"
                },
                timeline: m.map(|m| m.timeline.0),
                start_time: m.map(|m| m.start_time.clone()),
                stop_time: m.map(|m| m.stop_time.clone()),
                start_lsn: m.map(|m| m.start_lsn.to_string()),
                stop_lsn: m.map(|m| m.stop_lsn.to_string()),
                pg_version_num: m.map(|m| m.pg_version_num),
                files: m.map(|_| b.file_count),
                data_size_bytes: m.map(|m| m.data_size_bytes),
                stored_size_bytes: b.stored_bytes,
                backup_type: m.map(|m| m.backup_type.as_str()),
                reference: m.and_then(|m| m.reference.clone()),
                depends_on: m.map(|m| m.depends_on.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let mut by_tli: BTreeMap<TimelineId, Vec<&WalObject>> = BTreeMap::new();
    for w in wal {
        by_tli.entry(w.name.timeline()).or_default().push(w);
    }
    let mut timelines = Vec::new();
    for (tli, objects) in by_tli {
        let mut segments: Vec<(u64, WalFileName)> = objects
            .iter()
            .filter(|w| matches!(w.name, WalFileName::Segment { .. }))
            .filter_map(|w| w.name.segment().map(|s| (s.0, w.name)))
            .collect();
        segments.sort_by_key(|s| s.0);
        let mut gaps = Vec::new();
        for pair in segments.windows(2) {
            let ((a, name), (b, _)) = (pair[0], pair[1]);
            if let (true, Some(size)) = (b > a + 1, name.size()) {
                gaps.push(Gap {
                    first_missing: WalFileName::segment_file_name(
                        tli,
                        crate::wal::SegmentNo(a + 1),
                        size,
                    ),
                    missing_segments: b - a - 1,
                });
            }
        }
        let branch = histories.get(&tli).and_then(|h| h.entries.last());
        timelines.push(TimelineRow {
            timeline: tli.0,
            parent: branch.map(|e| e.parent.0),
            branch_point: branch.map(|e| e.switch_point.to_string()),
            first_segment: segments.first().map(|s| s.1.to_string()),
            last_segment: segments.last().map(|s| s.1.to_string()),
            segments: segments.len(),
            other_files: objects.len() - segments.len(),
            stored_size_bytes: objects.iter().map(|w| w.stored_bytes).sum(),
            newest_archived_at: objects.iter().map(|w| w.archived_unix_secs).max().map(ts),
            gaps,
        });
    }
    let oldest_stop = backups
        .iter()
        .filter_map(|b| b.manifest.as_ref())
        .map(|m| m.stop_time.clone())
        .next();
    let newest_wal = wal.iter().map(|w| w.archived_unix_secs).max();
    let recovery_window = match (oldest_stop, newest_wal) {
        (Some(from), Some(to)) => Some(Window { from, to: ts(to) }),
        _ => None,
    };
    ListReport {
        repo_index: 1,
        more_repositories: Vec::new(),
        repository: repo.describe(),
        system_identifier: header_sysid,
        backups: rows,
        wal: timelines,
        recovery_window,
    }
}

pub async fn run(program: &str, global: &GlobalArgs, args: &ListArgs) -> Exit {
    let settings = match super::settings(program, global) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Every repository unless --repo-index names one.
    let indexes: Vec<usize> = match global.repo_index {
        Some(i) => vec![i],
        None => settings.repos.iter().map(|r| r.index).collect(),
    };
    let mut reports = Vec::new();
    let mut exit = Exit::Ok;
    for index in indexes {
        let one = settings.select(index).expect("a configured index");
        let repo = match one.open_repository() {
            Ok(r) => r,
            Err(e) => {
                report_error(program, &e);
                return Exit::Usage;
            }
        };
        match load_report(&repo).await {
            Ok(mut report) => {
                report.repo_index = index;
                reports.push(report);
            }
            Err(e) => {
                report_error(program, &format!("repo{index}: {e}"));
                if exit == Exit::Ok {
                    exit = super::wal::repo_exit(&e);
                }
            }
        }
    }
    if args.json {
        if !reports.is_empty() {
            let mut first = reports.remove(0);
            first.more_repositories = reports;
            println!(
                "{}",
                serde_json::to_string_pretty(&first).expect("report serializes")
            );
        }
    } else {
        let many = settings.has_repo2() && global.repo_index.is_none();
        for (i, report) in reports.iter().enumerate() {
            if i > 0 {
                println!();
            }
            if many {
                println!("== repo{} ==", report.repo_index);
            }
            print_human(report);
        }
    }
    exit
}

async fn load_report(repo: &Repository) -> Result<ListReport, crate::repo::RepoError> {
    let header = repo.read_header().await?;
    let backups = repo.list_backups().await?;
    let wal = repo.list_wal().await?;
    let histories = repo.read_histories(&wal).await?;
    Ok(build_report(
        repo,
        header.map(|h| h.system_identifier),
        &backups,
        &wal,
        &histories,
    ))
}

fn print_human(r: &ListReport) {
    println!("repository: {}", r.repository);
    if let Some(id) = &r.system_identifier {
        println!("cluster: system identifier {id}");
    }
    println!();
    if r.backups.is_empty() {
        println!("no backups");
    } else {
        println!(
            "{:<20} {:<10} {:<4} {:<20} {:>3}  {:<27} {:<27} {:<12} {:<12} {:>10} {:>10}",
            "LABEL",
            "STATUS",
            "TYPE",
            "ON",
            "TLI",
            "START",
            "STOP",
            "START LSN",
            "STOP LSN",
            "DB SIZE",
            "ADDED"
        );
        for b in &r.backups {
            println!(
                "{:<20} {:<10} {:<4} {:<20} {:>3}  {:<27} {:<27} {:<12} {:<12} {:>10} {:>10}",
                b.label,
                b.status,
                b.backup_type.unwrap_or("-"),
                b.reference.as_deref().unwrap_or("-"),
                b.timeline
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                b.start_time.as_deref().unwrap_or("-"),
                b.stop_time.as_deref().unwrap_or("-"),
                b.start_lsn.as_deref().unwrap_or("-"),
                b.stop_lsn.as_deref().unwrap_or("-"),
                b.data_size_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into()),
                human_bytes(b.stored_size_bytes),
            );
        }
    }
    println!();
    if r.wal.is_empty() {
        println!("no archived WAL");
    } else {
        println!(
            "{:>3}  {:<18} {:<24} {:<24} {:>8} {:>10}  {:<27} GAPS",
            "TLI", "BRANCHED FROM", "FIRST", "LAST", "FILES", "STORED", "NEWEST ARCHIVED"
        );
        for t in &r.wal {
            let gaps = if t.gaps.is_empty() {
                "none".to_string()
            } else {
                t.gaps
                    .iter()
                    .map(|g| format!("{} (+{})", g.first_missing, g.missing_segments))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let branched = match (t.parent, &t.branch_point) {
                (Some(parent), Some(at)) => format!("{parent} at {at}"),
                _ => "-".to_string(),
            };
            println!(
                "{:>3}  {:<18} {:<24} {:<24} {:>8} {:>10}  {:<27} {}",
                t.timeline,
                branched,
                t.first_segment.as_deref().unwrap_or("-"),
                t.last_segment.as_deref().unwrap_or("-"),
                t.segments + t.other_files,
                human_bytes(t.stored_size_bytes),
                t.newest_archived_at.as_deref().unwrap_or("-"),
                gaps
            );
        }
    }
    println!();
    match &r.recovery_window {
        Some(w) => println!("recoverable: from {} to {}", w.from, w.to),
        None => println!("recoverable: nothing yet (needs a complete backup and archived WAL)"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::{layout, CompressSettings};
    use crate::storage::memory::MemoryStore;
    use crate::wal::{SegmentNo, WalSegmentSize};

    fn wal(name: WalFileName) -> WalObject {
        WalObject {
            key: layout::wal_key(&name),
            name,
            stored_bytes: 10,
            archived_unix_secs: 1_795_000_000,
        }
    }

    #[test]
    fn gaps_are_named_with_the_segments_own_size() {
        let repo = Repository::new(Arc::new(MemoryStore::new()), CompressSettings::default());
        let size = WalSegmentSize::new(1 << 20).unwrap();
        let tli = TimelineId(2);
        let seg = |n| {
            wal(WalFileName::Segment {
                timeline: tli,
                segment: SegmentNo(n),
                size,
            })
        };
        // Sorted by key, the history file comes first on its timeline.
        let objects = vec![
            wal(WalFileName::History { timeline: tli }),
            seg(0x0FFE),
            seg(0x1002),
        ];
        let report = build_report(&repo, None, &[], &objects, &BTreeMap::new());
        let row = &report.wal[0];
        assert_eq!((row.segments, row.other_files), (2, 1));
        assert_eq!(row.gaps.len(), 1);
        // 1 MiB segments: 4096 per xlog id, so 0xFFF is 00000FFF in the name.
        assert_eq!(row.gaps[0].first_missing, "000000020000000000000FFF");
        assert_eq!(row.gaps[0].missing_segments, 3);
        assert_eq!(
            row.last_segment.as_deref(),
            Some("000000020000000100000002")
        );
        assert!(report.recovery_window.is_none(), "no complete backup yet");
    }
}
