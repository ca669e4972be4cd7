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

pub mod drill;
pub mod restore;

use std::collections::{BTreeMap, HashMap};

use crate::repo::object::read_object;
use crate::repo::{layout, ObjectInfo, RepoError, Repository};
use crate::restore::plan::{plan_restore, BackupChoice, PlanInput};
use crate::restore::target::RecoveryTarget;
use crate::storage::Key;
use crate::stream::Checksum;
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
    let complete_labels: std::collections::BTreeSet<String> = listings
        .iter()
        .filter(|l| l.manifest.is_some())
        .map(|l| l.label.clone())
        .collect();
    let mut manifests = Vec::new();
    for listing in listings {
        if listing.manifest.is_none() {
            continue;
        }
        // The whole manifest: listings carry no file lists.
        let manifest = match repo.read_manifest(&listing.label).await {
            Ok(m) => m,
            // Expired since the listing (its manifest goes first): no damage.
            Err(RepoError::Object(crate::repo::ObjectError::Storage(
                crate::storage::StorageError::NotFound { .. },
            ))) if matches!(
                repo.store()
                    .head(&layout::summary_key(&listing.label))
                    .await,
                Err(crate::storage::StorageError::NotFound { .. })
            ) =>
            {
                report.objects_vanished += 1;
                continue;
            }
            Err(e) => {
                report.problems.push(Problem {
                    kind: "manifest",
                    subject: listing.label.clone(),
                    message: e.to_string(),
                });
                continue;
            }
        };
        report.backups_checked += 1;
        for dependency in &manifest.depends_on {
            if !complete_labels.contains(dependency.as_str()) {
                report.problems.push(Problem {
                    kind: "backup_chain",
                    subject: manifest.label.clone(),
                    message: format!(
                        "backup {} is built on backup {dependency}, which is not a complete backup in the repository",
                        manifest.label
                    ),
                });
            }
        }
        // The file list, one entry at a time (its own object since
        // manifest version 3; its checksum is checked on the way in).
        let file_list = match repo.file_list(&manifest).await {
            Ok(list) => list,
            Err(e) => {
                report.problems.push(Problem {
                    kind: "manifest",
                    subject: manifest.label.clone(),
                    message: format!("file list: {e}"),
                });
                manifests.push(manifest);
                continue;
            }
        };
        for file in file_list.iter() {
            let file = match file {
                Ok(f) => f,
                Err(message) => {
                    report.problems.push(Problem {
                        kind: "manifest",
                        subject: manifest.label.clone(),
                        message: format!("file list: {message}"),
                    });
                    break;
                }
            };
            // What each object of the file must hold: the whole file, or a
            // base, block deltas and a block map with their own sizes and
            // checksums.
            let mut expected: Vec<(&str, u64, Checksum)> = Vec::new();
            match &file.base {
                None => expected.push((&file.object, file.size, file.checksum)),
                Some(base) => expected.push((&base.object, base.raw_size, base.checksum)),
            }
            for part in file.deltas.iter().chain(file.map.iter()) {
                expected.push((&part.object, part.raw_size, part.checksum));
            }
            for (object, size, checksum) in expected {
                // Not in the listing of step 1: a backup that completed
                // while verify ran wrote it later. Read it now before
                // calling it missing.
                let late: Option<Option<ObjectInfo>> = if infos.contains_key(object) {
                    None
                } else {
                    let read = match Key::new(object.to_string()) {
                        Ok(key) => read_object(repo.store(), &key, &mut |_: &[u8]| Ok(()))
                            .await
                            .ok(),
                        Err(_) => None,
                    };
                    report.objects_checked += usize::from(read.is_some());
                    read.map(Some)
                };
                let problem = match infos.get(object).or(late.as_ref()) {
                    None => Some(format!("object {object} for \"{}\" is missing", file.path)),
                    Some(None) => Some(format!("object {object} for \"{}\" is unreadable (see above)", file.path)),
                    Some(Some(info)) if info.checksum != checksum || info.raw_size != size => Some(format!(
                        "object {object} holds {} bytes with checksum {}, the manifest of \"{}\" says {size} bytes with {checksum}",
                        info.raw_size, info.checksum, file.path
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::repo::manifest::{test_manifest, FileEntry};
    use crate::repo::object::write_object;
    use crate::repo::{ClusterIdentity, CompressSettings};
    use crate::storage::memory::MemoryStore;
    use crate::storage::{
        ObjectMeta, ObjectReader, ObjectStore, ObjectWriter, PutMode, StorageError,
    };
    use crate::wal::{Lsn, SegmentNo, TimelineId};

    const SEG: u64 = 16 << 20;

    /// Plays an expire that runs while verify reads: the first read of an
    /// object of backup `label` removes that backup, manifest first, and
    /// finds the object gone.
    #[derive(Debug)]
    struct ExpireRacing {
        inner: MemoryStore,
        label: String,
        fired: AtomicBool,
    }

    #[async_trait]
    impl ObjectStore for ExpireRacing {
        async fn get(&self, key: &Key) -> crate::storage::Result<ObjectReader> {
            let prefix = layout::backup_prefix(&self.label);
            if key.as_str().starts_with(&prefix) && !self.fired.swap(true, Ordering::SeqCst) {
                self.inner
                    .delete(&layout::manifest_key(&self.label))
                    .await?;
                for meta in self.inner.list(Some(&prefix)).await? {
                    self.inner.delete(&meta.key).await?;
                }
                return Err(StorageError::NotFound { key: key.clone() });
            }
            self.inner.get(key).await
        }
        async fn get_range(&self, key: &Key, o: u64, l: u64) -> crate::storage::Result<Bytes> {
            self.inner.get_range(key, o, l).await
        }
        async fn head(&self, key: &Key) -> crate::storage::Result<ObjectMeta> {
            self.inner.head(key).await
        }
        async fn put(
            &self,
            key: &Key,
            mode: PutMode,
        ) -> crate::storage::Result<Box<dyn ObjectWriter>> {
            self.inner.put(key, mode).await
        }
        async fn list(&self, prefix: Option<&str>) -> crate::storage::Result<Vec<ObjectMeta>> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &Key) -> crate::storage::Result<()> {
            self.inner.delete(key).await
        }
        fn describe(&self) -> String {
            "racing".to_string()
        }
    }

    async fn put(repo: &Repository, key: &Key, data: &[u8]) {
        let mut src = data;
        write_object(
            repo.store(),
            key,
            PutMode::Create,
            &mut src,
            CompressSettings::default(),
        )
        .await
        .expect("write");
    }

    #[tokio::test]
    async fn an_expire_running_beside_verify_is_not_damage() {
        let store = Arc::new(ExpireRacing {
            inner: MemoryStore::new(),
            label: "20260101T000000Z".to_string(),
            fired: AtomicBool::new(false),
        });
        let repo = Repository::new(store.clone(), CompressSettings::default());
        let size = WalSegmentSize::DEFAULT;
        repo.init(
            &ClusterIdentity {
                system_identifier: 7_000_000_000_000_000_001,
                wal_segment_size: size,
                pg_major: 15,
            },
            "test",
            None,
        )
        .await
        .unwrap();
        for (label, segment) in [("20260101T000000Z", 2u64), ("20260102T000000Z", 4)] {
            let mut m = test_manifest(
                label,
                TimelineId(1),
                Lsn(segment * SEG + 0x28),
                Lsn(segment * SEG + 0x100),
                size,
                "2026-01-01T00:00:00Z",
            );
            let object = layout::backup_file_key(label, 0);
            put(&repo, &object, b"file contents").await;
            m.files.push(FileEntry {
                path: "base/1/1".to_string(),
                size: 13,
                checksum: crate::stream::Checksum::of(b"file contents"),
                mode: 0o600,
                mtime: 0,
                object: object.to_string(),
                stored_size: 0,
                base: None,
                deltas: Vec::new(),
                map: None,
            });
            repo.write_manifest(&m).await.unwrap();
        }
        for segment in 2..=5 {
            let name = WalFileName::Segment {
                timeline: TimelineId(1),
                segment: SegmentNo(segment),
                size,
            };
            put(&repo, &layout::wal_key(&name), b"wal").await;
        }
        let report = run_verify(&repo, 2).await.unwrap();
        assert!(store.fired.load(Ordering::SeqCst), "the race happened");
        assert!(report.ok(), "{:?}", report.problems);
        assert!(report.objects_vanished >= 1, "{}", report.objects_vanished);
        assert_eq!(
            report.backups_checked, 1,
            "the expired backup is not judged"
        );
    }
}
