//! `walvault verify`: proves what the repository holds can be restored.
//!
//! - Every object under `wal/` and `backup/` is read back in full, in
//!   parallel and streaming, and checked against the size and checksum in
//!   its trailer.
//! - Every complete backup's manifest is read, and every file it lists must
//!   be an object whose trailer matches the manifest's size and checksum.
//! - For every complete backup, the WAL from its start to the newest WAL of
//!   its timeline history must be continuous (the restore planner's own
//!   checks, so verify and restore never disagree).
//!
//! [`restore`] restores the newest backup into a scratch directory and runs
//! PostgreSQL on it (`verify --restore`).
//!
//! Verify reports every problem it finds, not only the first. It runs
//! beside `expire` without a lock and without reporting false damage: an
//! object gone between listing and reading is counted, not reported, and
//! a backup whose manifest is gone by the time its WAL is checked was
//! expired, not damaged.

pub mod restore;

use std::collections::{BTreeMap, HashMap};

use crate::repo::object::read_object;
use crate::repo::{layout, ObjectInfo, RepoError, Repository};
use crate::restore::plan::{plan_restore, BackupChoice, PlanInput};
use crate::restore::target::RecoveryTarget;
use crate::storage::Key;
use crate::wal::{TimelineHistory, WalFileName, WalSegmentSize};

/// One thing found broken.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// "object", "manifest", "backup_file", "wal_continuity", "history".
    pub kind: &'static str,
    /// The key, backup label or WAL name concerned.
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub bytes_checked: u64,
    pub backups_checked: usize,
    /// Objects listed that were gone when read: removed by an expire
    /// running at the same time. Not a problem by itself; a complete
    /// backup that still needs one is reported under "backup_file".
    pub objects_vanished: usize,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads every object back and checks backups and WAL continuity.
pub async fn run_verify(repo: &Repository, jobs: usize) -> Result<VerifyReport, RepoError> {
    let mut report = VerifyReport::default();
    let header = repo.require_header().await?;
    let size = WalSegmentSize::new(header.wal_segment_size).unwrap_or(WalSegmentSize::DEFAULT);

    // 1. Every object, in parallel.
    let mut keys: Vec<Key> = Vec::new();
    for prefix in [layout::WAL_PREFIX, layout::BACKUP_PREFIX] {
        keys.extend(
            repo.store()
                .list(Some(prefix))
                .await?
                .into_iter()
                .map(|m| m.key),
        );
    }
    let infos = check_objects(repo, keys, jobs, &mut report).await;

    // 2. Backups against their manifests.
    let listings = match repo.list_backups().await {
        Ok(l) => l,
        Err(e) => {
            report.problems.push(Problem {
                kind: "manifest",
                subject: "backup/".to_string(),
                message: e.to_string(),
            });
            Vec::new()
        }
    };
    let mut manifests = Vec::new();
    for listing in listings {
        let Some(manifest) = listing.manifest else {
            continue;
        };
        report.backups_checked += 1;
        for file in &manifest.files {
            let problem = match infos.get(&file.object) {
                None => Some(format!("object {} for \"{}\" is missing", file.object, file.path)),
                Some(None) => Some(format!("object {} for \"{}\" is unreadable (see above)", file.object, file.path)),
                Some(Some(info)) if info.checksum != file.checksum || info.raw_size != file.size => Some(format!(
                    "object {} holds {} bytes with checksum {}, the manifest says \"{}\" is {} bytes with {}",
                    file.object, info.raw_size, info.checksum, file.path, file.size, file.checksum
                )),
                Some(Some(_)) => None,
            };
            if let Some(message) = problem {
                report.problems.push(Problem {
                    kind: "backup_file",
                    subject: manifest.label.clone(),
                    message,
                });
            }
        }
        manifests.push(manifest);
    }

    // 3. WAL continuity for every backup, with the restore planner.
    let wal = repo.list_wal().await?;
    let mut histories = BTreeMap::new();
    for w in &wal {
        if let WalFileName::History { timeline } = w.name {
            let mut text = Vec::new();
            let read = read_object(repo.store(), &w.key, &mut |p: &[u8]| {
                text.extend_from_slice(p);
                Ok(())
            })
            .await;
            match read.map(|_| TimelineHistory::parse(timeline, &String::from_utf8_lossy(&text))) {
                Ok(Ok(h)) => {
                    histories.insert(timeline, h);
                }
                Ok(Err(e)) => report.problems.push(Problem {
                    kind: "history",
                    subject: w.name.to_string(),
                    message: e.to_string(),
                }),
                // Already reported as an unreadable object.
                Err(_) => {}
            }
        }
    }
    for manifest in &manifests {
        let choice = BackupChoice::Label(manifest.label.clone());
        let input = PlanInput {
            backups: &manifests,
            wal: &wal,
            histories: &histories,
            target: &RecoveryTarget::EndOfArchive,
            backup: &choice,
            target_timeline: None,
            wal_segment_size: size,
        };
        if let Err(e) = plan_restore(&input) {
            // Expired while we looked (its manifest goes first): no damage.
            if let Err(crate::storage::StorageError::NotFound { .. }) = repo
                .store()
                .head(&layout::manifest_key(&manifest.label))
                .await
            {
                continue;
            }
            report.problems.push(Problem {
                kind: "wal_continuity",
                subject: manifest.label.clone(),
                message: e.to_string().lines().next().unwrap_or_default().to_string(),
            });
        }
    }
    Ok(report)
}

/// Reads objects with `jobs` workers; returns what each trailer says
/// (`None` for an unreadable or corrupt object, which is also reported).
async fn check_objects(
    repo: &Repository,
    keys: Vec<Key>,
    jobs: usize,
    report: &mut VerifyReport,
) -> HashMap<String, Option<ObjectInfo>> {
    let repo = repo.clone();
    let read = crate::pool::run_bounded(keys, jobs, move |key| {
        let repo = repo.clone();
        async move {
            let result = read_object(repo.store(), &key, &mut |_: &[u8]| Ok(())).await;
            Ok::<_, std::convert::Infallible>(Some((key, result)))
        }
    })
    .await;
    let results = match read {
        Ok(results) => results,
        Err(never) => match never {},
    };
    let mut infos = HashMap::new();
    for (key, result) in results {
        report.objects_checked += 1;
        match result {
            Ok(info) => {
                report.bytes_checked += info.raw_size;
                infos.insert(key.to_string(), Some(info));
            }
            Err(crate::repo::ObjectError::Storage(crate::storage::StorageError::NotFound {
                ..
            })) => {
                report.objects_vanished += 1;
            }
            Err(e) => {
                report.problems.push(Problem {
                    kind: "object",
                    subject: key.to_string(),
                    message: e.to_string(),
                });
                infos.insert(key.to_string(), None);
            }
        }
    }
    report.problems.sort_by(|a, b| a.subject.cmp(&b.subject));
    infos
}
