//! `walvault copy`: backups and the WAL they need, from one repository to
//! another (repo1 to an offsite repo2, or back).
//!
//! - [`plan_copy`] (pure) picks the complete backups the destination lacks,
//!   with every backup they are built on, oldest first, and the WAL from the
//!   oldest start position any backup of the destination will need.
//! - [`apply_copy`] copies each object create-only, checking its envelope
//!   (header, size, checksum) as it streams past ([`copy_object`]): a copy
//!   is visible only when it passed. Each side's store layers apply, so the
//!   two repositories may use different backends and different keys.
//! - Nothing is overwritten: an object already in the destination is
//!   compared with the source (size and checksum from both trailers) and
//!   skipped when equal; a different one stops the copy.
//! - Resumable: a backup's writer object goes first and its manifest last
//!   (after every other object is durable), as a backup writes them, so a
//!   copy killed midway leaves an incomplete backup that the next copy
//!   completes (the objects already there are skipped) and that `expire`
//!   treats like any interrupted backup.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::lock::RepoLock;
use super::manifest::BackupManifest;
use super::object::{copy_object, read_info, read_object};
use super::{layout, BackupListing, ObjectError, RepoError, Repository, WalObject};
use crate::storage::{Key, PutMode, StorageError};
use crate::wal::Lsn;

/// What a copy will do.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    /// Backups to copy, oldest first (a backup after those it is built on).
    pub backups: Vec<String>,
    /// WAL objects the destination lacks, from `wal_from` on.
    pub wal: Vec<WalObject>,
    /// The oldest position a backup of the destination (after the copy)
    /// starts at; `None` when it will hold no backup (then all WAL goes).
    pub wal_from: Option<Lsn>,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("backup {label} is not a complete backup in {repo}\nHINT: walvault list --repo-index N shows the backups of each repository")]
    NoSuchBackup { label: String, repo: String },
    #[error("{key} differs between {from} and {to} (size {from_size} / {to_size}, checksum {from_sum} / {to_sum}); nothing was overwritten\nHINT: the two repositories hold different data under one name: check that both belong to this cluster")]
    Conflict {
        key: String,
        from: String,
        to: String,
        from_size: u64,
        to_size: u64,
        from_sum: String,
        to_sum: String,
    },
    #[error("backup {label} is built on {missing}, which neither {from} nor the destination holds complete\nHINT: it cannot be restored anywhere without it; copy a backup that is complete with what it needs")]
    MissingDependency {
        label: String,
        missing: String,
        from: String,
    },
    #[error("the destination's repository lock was lost before backup {label} was published; its manifest was not written\nHINT: another backup, expire or copy took the lock over; what was copied is checked and stays, so run walvault copy again")]
    LockLost { label: String },
    #[error("{key} disappeared from {from} during the copy (expired meanwhile?)\nHINT: run walvault copy again: what was copied stays and is skipped")]
    Vanished { key: String, from: String },
    #[error("copy {key}: {source}")]
    Object {
        key: String,
        #[source]
        source: ObjectError,
    },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("temporary key list: {0}")]
    Spool(#[from] std::io::Error),
}

/// Decides what to copy. `only` limits the copy to one backup (with those
/// it is built on); otherwise every complete backup of the source that the
/// destination lacks goes.
pub fn plan_copy(
    from_backups: &[BackupListing],
    from_wal: &[WalObject],
    to_backups: &[BackupListing],
    to_wal: &[WalObject],
    only: Option<&str>,
    from_name: &str,
) -> Result<CopyPlan, CopyError> {
    let complete: HashMap<&str, &BackupManifest> = from_backups
        .iter()
        .filter_map(|b| Some((b.label.as_str(), b.manifest.as_ref()?)))
        .collect();
    let in_dest: HashMap<&str, &BackupManifest> = to_backups
        .iter()
        .filter_map(|b| Some((b.label.as_str(), b.manifest.as_ref()?)))
        .collect();
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    match only {
        Some(label) => {
            let manifest = complete.get(label).ok_or_else(|| CopyError::NoSuchBackup {
                label: label.to_string(),
                repo: from_name.to_string(),
            })?;
            wanted.insert(label);
            for d in &manifest.depends_on {
                if complete.contains_key(d.as_str()) {
                    wanted.insert(d.as_str());
                } else if !in_dest.contains_key(d.as_str()) {
                    return Err(CopyError::MissingDependency {
                        label: label.to_string(),
                        missing: d.clone(),
                        from: from_name.to_string(),
                    });
                }
            }
        }
        None => wanted.extend(complete.keys().copied()),
    }
    let mut backups: Vec<String> = wanted
        .into_iter()
        .filter(|l| !in_dest.contains_key(l))
        .map(str::to_string)
        .collect();
    backups.sort_by(|a, b| layout::label_order(a).cmp(&layout::label_order(b)));
    let wal_from = backups
        .iter()
        .filter_map(|l| complete.get(l.as_str()))
        .chain(in_dest.values())
        .map(|m| m.start_lsn)
        .min();
    let have: BTreeSet<&str> = to_wal.iter().map(|w| w.key.as_str()).collect();
    let wal = from_wal
        .iter()
        .filter(|w| !have.contains(w.key.as_str()))
        .filter(|w| wal_from.is_none_or(|from| !crate::retention::wal_is_expired(&w.name, from)))
        .cloned()
        .collect();
    Ok(CopyPlan {
        backups,
        wal,
        wal_from,
    })
}

/// What a copy did.
#[derive(Debug, Default, Clone)]
pub struct CopyReport {
    pub backups: Vec<String>,
    pub wal_files: u64,
    /// Objects copied, and objects the destination already held (equal).
    pub copied_objects: u64,
    pub skipped_objects: u64,
    /// Bytes of envelope copied (compressed, before each side's
    /// encryption).
    pub copied_bytes: u64,
}

#[derive(Default)]
struct Counters {
    copied: AtomicU64,
    skipped: AtomicU64,
    bytes: AtomicU64,
}

/// Copies one object, create-only. One already in the destination is read
/// whole and checked, then compared with the source's trailer: equal is
/// skipped, different stops the copy; it is never overwritten.
async fn copy_one(
    from: &Repository,
    to: &Repository,
    key: &Key,
    mode: PutMode,
    counters: &Counters,
) -> Result<(), CopyError> {
    let object_error = |source: ObjectError| CopyError::Object {
        key: key.to_string(),
        source,
    };
    // A resumed copy finds most objects there: no transfer for them.
    match to.store().head(key).await {
        Ok(_) => return check_existing(from, to, key, counters).await,
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(object_error(ObjectError::Storage(e))),
    }
    match copy_object(from.store(), to.store(), key, mode).await {
        Ok(info) => {
            counters.copied.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add(info.stored_size, Ordering::Relaxed);
            Ok(())
        }
        // Created meanwhile (by a copy running elsewhere).
        Err(ObjectError::Storage(StorageError::AlreadyExists { .. })) => {
            check_existing(from, to, key, counters).await
        }
        Err(ObjectError::Storage(e)) if e.is_not_found() => Err(CopyError::Vanished {
            key: key.to_string(),
            from: from.describe(),
        }),
        Err(e) => Err(object_error(e)),
    }
}

async fn check_existing(
    from: &Repository,
    to: &Repository,
    key: &Key,
    counters: &Counters,
) -> Result<(), CopyError> {
    let object_error = |source: ObjectError| CopyError::Object {
        key: key.to_string(),
        source,
    };
    let theirs = match read_info(from.store(), key).await {
        Ok(info) => info,
        Err(ObjectError::Storage(e)) if e.is_not_found() => {
            return Err(CopyError::Vanished {
                key: key.to_string(),
                from: from.describe(),
            })
        }
        Err(e) => return Err(object_error(e)),
    };
    let ours = read_object(to.store(), key, &mut |_: &[u8]| Ok(()))
        .await
        .map_err(object_error)?;
    if theirs.raw_size == ours.raw_size && theirs.checksum == ours.checksum {
        counters.skipped.fetch_add(1, Ordering::Relaxed);
        Ok(())
    } else {
        Err(CopyError::Conflict {
            key: key.to_string(),
            from: from.describe(),
            to: to.describe(),
            from_size: theirs.raw_size,
            to_size: ours.raw_size,
            from_sum: theirs.checksum.to_string(),
            to_sum: ours.checksum.to_string(),
        })
    }
}

/// Copies a list of keys `jobs` at a time, create-only and batched (the
/// caller makes them durable with `sync_batched`).
async fn copy_keys<I>(
    from: &Repository,
    to: &Repository,
    keys: I,
    jobs: usize,
    counters: &Arc<Counters>,
) -> Result<(), CopyError>
where
    I: IntoIterator<Item = Result<Key, CopyError>>,
    I::IntoIter: Send + 'static,
{
    let (from, to, counters) = (from.clone(), to.clone(), counters.clone());
    crate::pool::run_bounded(keys, jobs, move |key| {
        let (from, to, counters) = (from.clone(), to.clone(), counters.clone());
        async move {
            let key = key?;
            copy_one(&from, &to, &key, PutMode::CreateBatched, &counters).await?;
            Ok::<Option<()>, CopyError>(None)
        }
    })
    .await?;
    Ok(())
}

/// The keys of a backup's objects, written to a temporary file as they
/// are listed (a backup may have millions), read back one at a time.
async fn spool_keys(
    repo: &Repository,
    label: &str,
    skip: &[Key],
) -> Result<impl Iterator<Item = Result<Key, CopyError>> + Send + 'static, CopyError> {
    let file = tempfile::tempfile()?;
    let mut out = std::io::BufWriter::new(file);
    let mut failed: Option<std::io::Error> = None;
    repo.store()
        .list_each(&layout::backup_prefix(label), &mut |meta| {
            if failed.is_none() && !skip.contains(&meta.key) {
                if let Err(e) = writeln!(out, "{}", meta.key.as_str()) {
                    failed = Some(e);
                }
            }
        })
        .await
        .map_err(RepoError::Storage)?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    std::io::Seek::rewind(&mut file)?;
    Ok(std::io::BufReader::new(file).lines().map(|line| {
        let line = line?;
        Key::new(line).map_err(|e| CopyError::Repo(RepoError::Storage(e)))
    }))
}

/// Carries out a plan. `progress` hears of each backup and of the WAL as
/// they finish. With `lock` (the destination's), each manifest is written
/// only after confirming the lock is still held: an expire that took it
/// over may have removed the incomplete copy's objects meanwhile.
pub async fn apply_copy(
    from: &Repository,
    to: &Repository,
    plan: &CopyPlan,
    jobs: usize,
    lock: Option<&RepoLock>,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<CopyReport, CopyError> {
    let counters = Arc::new(Counters::default());
    let mut report = CopyReport::default();
    for label in &plan.backups {
        let writer = layout::writer_key(label);
        let manifest_key = layout::manifest_key(label);
        let summary_key = layout::summary_key(label);
        // The writer first, as a backup claims its label: one of another
        // backup under this label in the destination stops the copy here.
        if from.store().head(&writer).await.is_ok() {
            copy_one(from, to, &writer, PutMode::Create, &counters).await?;
        }
        let skip = [writer, manifest_key.clone(), summary_key];
        let keys = spool_keys(from, label, &skip).await?;
        copy_keys(from, to, keys, jobs, &counters).await?;
        to.store()
            .sync_batched()
            .await
            .map_err(RepoError::Storage)?;
        // The manifest last: it makes the copy a complete backup.
        if let Some(lock) = lock {
            if !matches!(lock.confirm().await, Ok(true)) {
                return Err(CopyError::LockLost {
                    label: label.clone(),
                });
            }
        }
        copy_one(from, to, &manifest_key, PutMode::Create, &counters).await?;
        let manifest = to.read_manifest(label).await?;
        to.write_summary(&manifest).await?;
        report.backups.push(label.clone());
        progress(&format!(
            "backup {label}: copied ({} objects so far, {} already there)",
            counters.copied.load(Ordering::Relaxed),
            counters.skipped.load(Ordering::Relaxed)
        ));
    }
    let wal_keys: Vec<Result<Key, CopyError>> =
        plan.wal.iter().map(|w| Ok(w.key.clone())).collect();
    report.wal_files = wal_keys.len() as u64;
    copy_keys(from, to, wal_keys, jobs, &counters).await?;
    to.store()
        .sync_batched()
        .await
        .map_err(RepoError::Storage)?;
    if report.wal_files > 0 {
        progress(&format!("WAL: {} file(s) copied", report.wal_files));
    }
    report.copied_objects = counters.copied.load(Ordering::Relaxed);
    report.skipped_objects = counters.skipped.load(Ordering::Relaxed);
    report.copied_bytes = counters.bytes.load(Ordering::Relaxed);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::test_manifest;
    use crate::wal::{SegmentNo, TimelineId, WalFileName, WalSegmentSize};

    const SIZE: WalSegmentSize = WalSegmentSize::DEFAULT;

    fn backup(label: &str, first_segment: u64, depends_on: &[&str]) -> BackupListing {
        let mut m = test_manifest(
            label,
            TimelineId(1),
            Lsn(first_segment * SIZE.bytes() + 0x28),
            Lsn((first_segment + 1) * SIZE.bytes() + 0x100),
            SIZE,
            "2026-11-21T10:00:00Z",
        );
        m.depends_on = depends_on.iter().map(|d| d.to_string()).collect();
        BackupListing {
            label: label.to_string(),
            manifest: Some(m),
            file_count: 0,
            object_count: 3,
            stored_bytes: 600,
            newest_object_unix_secs: 0,
            writer_alive: None,
        }
    }

    fn seg(n: u64) -> WalObject {
        let name = WalFileName::Segment {
            timeline: TimelineId(1),
            segment: SegmentNo(n),
            size: SIZE,
        };
        WalObject {
            key: layout::wal_key(&name),
            name,
            stored_bytes: 10,
            archived_unix_secs: 0,
        }
    }

    #[test]
    fn copies_what_the_destination_lacks_with_what_it_is_built_on() {
        let full = backup("20261120T100000Z", 2, &[]);
        let incr = backup("20261121T100000Z", 8, &["20261120T100000Z"]);
        let later = backup("20261122T100000Z", 12, &[]);
        let mut incomplete = backup("20261123T100000Z", 14, &[]);
        incomplete.manifest = None;
        let from = [later.clone(), incr.clone(), full.clone(), incomplete];
        let wal: Vec<WalObject> = (1..=15).map(seg).collect();

        // Everything into an empty repository: oldest first, WAL from the
        // oldest backup's start segment on.
        let plan = plan_copy(&from, &wal, &[], &[], None, "repo1").unwrap();
        assert_eq!(
            plan.backups,
            ["20261120T100000Z", "20261121T100000Z", "20261122T100000Z"]
        );
        assert_eq!(
            plan.wal.first().map(|w| w.name.to_string()),
            Some(seg(2).name.to_string())
        );
        assert_eq!(plan.wal.len(), 14);

        // One incremental brings its full; WAL already there stays.
        let plan = plan_copy(
            &from,
            &wal,
            &[],
            &wal[..5],
            Some("20261121T100000Z"),
            "repo1",
        )
        .unwrap();
        assert_eq!(plan.backups, ["20261120T100000Z", "20261121T100000Z"]);
        assert_eq!(plan.wal.len(), 10);

        // The destination has the full and an older WAL floor from it.
        let plan = plan_copy(&from, &wal, &[full.clone()], &wal[1..9], None, "repo1").unwrap();
        assert_eq!(plan.backups, ["20261121T100000Z", "20261122T100000Z"]);
        assert_eq!(plan.wal_from, full.manifest.as_ref().map(|m| m.start_lsn));
        assert_eq!(plan.wal.len(), 6);

        // Up to date: nothing.
        let plan = plan_copy(
            &from,
            &wal,
            &[full.clone(), incr.clone(), later],
            &wal,
            None,
            "repo1",
        )
        .unwrap();
        assert!(plan.backups.is_empty() && plan.wal.is_empty());

        let err = plan_copy(&from, &wal, &[], &[], Some("20261123T100000Z"), "repo1").unwrap_err();
        assert!(
            err.to_string().contains("not a complete backup in repo1"),
            "{err}"
        );
    }
}
