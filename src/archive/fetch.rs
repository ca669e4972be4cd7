//! `walvault-fetch %f %p`: PostgreSQL's restore_command.
//!
//! The contract (PostgreSQL docs, "Recovering Using a Continuous Archive
//! Backup" and restore_command): exit 0 only when `%p` holds the whole,
//! correct file; a file not in the archive exits non-zero (we use 1,
//! quietly: PostgreSQL asks for `.history` files that do not exist all the
//! time). PostgreSQL reads every status from 1 to 125 as "not in the
//! archive", and at the end of the archive it finishes recovery and
//! promotes. So a repository that fails, or returns a corrupt object, must
//! never look like "missing": we retry for a bounded time, then, outside
//! standby mode, exit above 125, which makes PostgreSQL stop recovery
//! instead of finishing it at the wrong point. A standby (standby.signal)
//! just asks again later, so there an ordinary failure status is right.
//!
//! `%p` is written atomically: the object is streamed into a temporary file
//! in the same directory, checked (size and checksum from the trailer), and
//! only then renamed to `%p`. A failed fetch never leaves a partial `%p`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::repo::{layout, ObjectError, ObjectInfo, RepoError, Repository};
use crate::storage::StorageError;

#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// How long to keep retrying a failing repository.
    pub retry_for: Duration,
}

#[derive(Debug)]
pub enum FetchOutcome {
    Restored(ObjectInfo),
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("\"{name}\" is not a WAL file name: {reason}")]
    BadName { name: String, reason: String },
    #[error("fetch \"{name}\" from {repo} failed after {attempts} attempt(s) in {elapsed_secs:.1}s: {source}")]
    Repository {
        name: String,
        repo: String,
        attempts: u32,
        elapsed_secs: f64,
        #[source]
        source: ObjectError,
    },
    #[error("fetch \"{name}\": {source}")]
    NoRepository {
        name: String,
        #[source]
        source: RepoError,
    },
    /// Neither repository could give the file, and at least one failed (a
    /// failure is never "missing").
    #[error("{first_label}: {first}; {second_label}: {second}")]
    Each {
        first_label: String,
        first: Box<FetchError>,
        second_label: String,
        second: Box<FetchError>,
    },
    #[error("write \"{path}\": {source}")]
    Destination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether the data directory is in standby mode.
pub fn is_standby(data_dir: &Path) -> bool {
    data_dir.join("standby.signal").exists()
}

/// Fetches WAL file `name` into `dest`.
pub async fn fetch(
    repo: &Repository,
    name: &str,
    dest: &Path,
    opts: FetchOptions,
) -> Result<FetchOutcome, FetchError> {
    let parsed = layout::parse_any_size(name).map_err(|e| FetchError::BadName {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    let key = layout::wal_key(&parsed);
    let started = Instant::now();
    let mut attempts = 0u32;
    let mut corrupt_reads = 0u32;
    let mut backoff = Duration::from_millis(200);
    loop {
        attempts += 1;
        let error = match fetch_once(repo, &key, dest).await {
            Ok(info) => return Ok(FetchOutcome::Restored(info)),
            Err(Attempt::Destination(path, source)) => {
                return Err(FetchError::Destination { path, source })
            }
            // "Missing" makes PostgreSQL end recovery, so it is said only
            // of a repository that provably exists: one more read, on a
            // miss only, confirms the header. An unmounted directory, a
            // missing bucket or a wrong prefix is a failure instead.
            Err(Attempt::Object(ObjectError::Storage(StorageError::NotFound { .. }))) => {
                match repo.require_header().await {
                    Ok(_) => return Ok(FetchOutcome::NotFound),
                    Err(RepoError::Storage(e)) => ObjectError::Storage(e),
                    Err(source) => {
                        return Err(FetchError::NoRepository {
                            name: name.to_string(),
                            source,
                        })
                    }
                }
            }
            Err(Attempt::Object(e)) => e,
        };
        // A corrupt read may be damage in transit: read once more. Twice
        // corrupt is corrupt at rest, and waiting will not mend it.
        let retry = if error.is_corruption() {
            corrupt_reads += 1;
            corrupt_reads < 2
        } else {
            match &error {
                ObjectError::Storage(e) => e.is_transient(),
                _ => false,
            }
        };
        let elapsed = started.elapsed();
        if !retry || elapsed + backoff > opts.retry_for {
            return Err(FetchError::Repository {
                name: name.to_string(),
                repo: repo.describe(),
                attempts,
                elapsed_secs: elapsed.as_secs_f64(),
                source: error,
            });
        }
        tracing::warn!(wal = name, attempt = attempts, error = %error, "fetch failed; retrying in {:?}", backoff);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl FetchError {
    /// Whether trying again later may help: a transient storage failure
    /// or a read that came back corrupt (damage in transit).
    fn may_pass(&self) -> bool {
        match self {
            FetchError::Repository { source, .. } => {
                source.is_corruption()
                    || matches!(source, ObjectError::Storage(e) if e.is_transient())
            }
            FetchError::NoRepository {
                source: RepoError::Storage(e),
                ..
            } => e.is_transient(),
            FetchError::Each { first, second, .. } => first.may_pass() || second.may_pass(),
            _ => false,
        }
    }

    /// The error that decides the exit status: of two failures, the one
    /// of the repository tried first (a miss in the other never hides a
    /// failure).
    pub fn primary(&self) -> &FetchError {
        match self {
            FetchError::Each { first, .. } => first.primary(),
            other => other,
        }
    }
}

/// Fetches WAL file `name` from the first repository of `repos` that has
/// it: repo1, then repo2. "Missing" only when every repository answered
/// that it does not hold the file (or it is `00000001.history`, which
/// never exists): a repository that failed makes a miss elsewhere a
/// failure, since the file may be in the one that failed. Failing
/// repositories are tried again, in rounds, until `opts.retry_for` has
/// passed.
pub async fn fetch_any(
    repos: &super::Repos,
    name: &str,
    dest: &Path,
    opts: FetchOptions,
) -> Result<FetchOutcome, FetchError> {
    let members = repos.members();
    if let [only] = members {
        return fetch(&only.repo, name, dest, opts).await;
    }
    let once = FetchOptions {
        retry_for: Duration::ZERO,
    };
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut failed: Option<(String, FetchError)> = None;
        let mut all_missing = true;
        for member in members {
            match fetch(&member.repo, name, dest, once).await {
                Ok(FetchOutcome::Restored(info)) => {
                    if let Some((label, e)) = &failed {
                        tracing::warn!(wal = name, failed = label.as_str(), error = %e, from = member.label.as_str(), "restored from {} because {} failed", member.label, label);
                    }
                    return Ok(FetchOutcome::Restored(info));
                }
                Ok(FetchOutcome::NotFound) => {}
                Err(e @ (FetchError::BadName { .. } | FetchError::Destination { .. })) => {
                    return Err(e)
                }
                Err(e) => {
                    all_missing = false;
                    failed = Some(match failed {
                        None => (member.label.clone(), e),
                        Some((label, first)) => (
                            label.clone(),
                            FetchError::Each {
                                first_label: label,
                                first: Box::new(first),
                                second_label: member.label.clone(),
                                second: Box::new(e),
                            },
                        ),
                    });
                }
            }
        }
        if all_missing {
            return Ok(FetchOutcome::NotFound);
        }
        let (_, error) = failed.expect("a failure when not all missing");
        // Timeline 1 has no history file: PostgreSQL asks for it when it
        // branches off timeline 1, and no repository can hold it.
        if matches!(
            layout::parse_any_size(name),
            Ok(crate::wal::WalFileName::History { timeline }) if timeline.0 == 1
        ) {
            return Ok(FetchOutcome::NotFound);
        }
        if !error.may_pass() || started.elapsed() + backoff > opts.retry_for {
            return Err(error);
        }
        tracing::warn!(wal = name, error = %error, "fetch failed in every repository that could hold it; retrying in {:?}", backoff);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum Attempt {
    Object(ObjectError),
    Destination(PathBuf, io::Error),
}

async fn fetch_once(
    repo: &Repository,
    key: &crate::storage::Key,
    dest: &Path,
) -> Result<ObjectInfo, Attempt> {
    // Opened first: a file the archive lacks (the common answer for
    // `.history` files) costs no temporary file and no sweep.
    let src = repo
        .store()
        .get(key)
        .await
        .map_err(|e| Attempt::Object(e.into()))?;
    let tmp = temp_path(dest);
    let mut file = create_temp(&tmp).map_err(|e| Attempt::Destination(tmp.clone(), e))?;
    let guard = super::RemoveOnDrop::new(tmp.clone());
    // Locked while this process lives; fetches killed with -9 leave
    // unlocked temporary files, which the next fetch removes.
    crate::storage::local::lock_exclusive(&file)
        .map_err(|e| Attempt::Destination(tmp.clone(), e))?;
    if let Some(dir) = dest.parent() {
        crate::storage::local::sweep_abandoned_temps(dir, crate::storage::local::ABANDONED_AFTER);
    }
    let mut sink = |piece: &[u8]| file.write_all(piece);
    let info = match crate::repo::object::read_opened(src, key, &mut sink).await {
        Ok(info) => info,
        Err(ObjectError::Sink(e)) => return Err(Attempt::Destination(tmp.clone(), e)),
        Err(e) => return Err(Attempt::Object(e)),
    };
    drop(file);
    std::fs::rename(&tmp, dest).map_err(|e| Attempt::Destination(dest.to_path_buf(), e))?;
    guard.disarm();
    Ok(info)
}

/// Where a fetch into `dest` writes before it renames (the prefetch
/// worker's calls watch it grow).
pub(crate) fn temp_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
    dest.with_file_name(format!(".{name}.walvault-{}.tmp", std::process::id()))
}

fn create_temp(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Repositories for the tests of push, fetch and prefetch.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use crate::repo::object::write_object;
    use crate::repo::{layout, CompressSettings, Repository};
    use crate::storage::{ObjectStore, PutMode};

    /// A repository over `store`, initialized for a cluster with 16 MiB
    /// segments.
    pub(crate) async fn initialized(store: Arc<dyn ObjectStore>) -> Repository {
        let repo = Repository::new(store, CompressSettings::default());
        repo.init(
            &crate::repo::ClusterIdentity {
                system_identifier: 7,
                wal_segment_size: crate::wal::WalSegmentSize::DEFAULT,
                pg_major: 15,
            },
            "test",
            None,
        )
        .await
        .unwrap();
        repo
    }

    /// Stores `body` as WAL file `name`.
    pub(crate) async fn store_wal(repo: &Repository, name: &str, body: &[u8]) {
        let key = layout::wal_key(&layout::parse_any_size(name).unwrap());
        let mut src: &[u8] = body;
        write_object(
            repo.store(),
            &key,
            PutMode::Create,
            &mut src,
            CompressSettings::default(),
        )
        .await
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::CompressSettings;
    use crate::storage::faulty::{FaultyStore, Op};
    use crate::storage::memory::MemoryStore;

    const NAME: &str = "000000010000000000000007";

    async fn repo_with_segment() -> (FaultyStore<MemoryStore>, Repository, Vec<u8>) {
        let store = FaultyStore::new(MemoryStore::new());
        let repo = testing::initialized(Arc::new(store.clone())).await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        testing::store_wal(&repo, NAME, &data).await;
        (store, repo, data)
    }

    fn opts(secs: u64) -> FetchOptions {
        FetchOptions {
            retry_for: Duration::from_secs(secs),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let (store, repo, data) = repo_with_segment().await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        store.fail_next(Op::Get, 2, true);
        let outcome = fetch(&repo, NAME, &dest, opts(30)).await.unwrap();
        assert!(matches!(outcome, FetchOutcome::Restored(_)));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }

    #[tokio::test]
    async fn a_persistent_failure_gives_up_at_the_deadline_and_never_looks_missing() {
        let (store, repo, _) = repo_with_segment().await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        store.fail_next(Op::Get, u32::MAX, true);
        let started = std::time::Instant::now();
        let err = fetch(&repo, NAME, &dest, opts(1)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        match &err {
            FetchError::Repository { attempts, .. } => assert!(*attempts >= 2, "retried: {err}"),
            other => panic!("{other}"),
        }
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temporary file left"
        );
    }

    #[tokio::test]
    async fn a_permanent_failure_is_not_retried_and_missing_is_quick() {
        let (store, repo, _) = repo_with_segment().await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        store.fail_next(Op::Get, u32::MAX, false);
        let started = std::time::Instant::now();
        let err = fetch(&repo, NAME, &dest, opts(60)).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no waiting on a permanent error"
        );
        assert!(
            matches!(err, FetchError::Repository { attempts: 1, .. }),
            "{err}"
        );
        store.fail_next(Op::Get, 0, false);
        let outcome = fetch(&repo, "000000010000000000000099", &dest, opts(60))
            .await
            .unwrap();
        assert!(matches!(outcome, FetchOutcome::NotFound));
    }

    /// A repository without its header (an unmounted directory, a wrong
    /// bucket or prefix) never answers "missing".
    #[tokio::test]
    async fn a_miss_without_a_header_is_a_failure_not_missing() {
        let repo = Repository::new(Arc::new(MemoryStore::new()), CompressSettings::default());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let err = fetch(&repo, NAME, &dest, opts(60)).await.unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::NoRepository {
                    source: RepoError::NotInitialized { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("walvault init"), "{err}");
        // The header read fails transiently: retried, then a failure.
        let (store, repo, _) = repo_with_segment().await;
        store.fail_next(Op::Get, u32::MAX, true);
        let err = fetch(&repo, "000000010000000000000099", &dest, opts(0))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Repository { .. }), "{err}");
    }

    fn two(first: &Repository, second: &Repository) -> crate::archive::Repos {
        crate::archive::Repos::new(vec![
            crate::archive::Member {
                label: "repo1".into(),
                repo: first.clone(),
                required: true,
            },
            crate::archive::Member {
                label: "repo2".into(),
                repo: second.clone(),
                required: true,
            },
        ])
    }

    /// repo1 then repo2; "missing" only when both answer that they lack
    /// the file; a failure in one and a miss in the other is a failure.
    #[tokio::test]
    async fn two_repositories_fall_back_and_never_call_a_failure_missing() {
        let (store1, repo1, data) = repo_with_segment().await;
        let (store2, repo2, _) = repo_with_segment().await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let repos = two(&repo1, &repo2);
        // repo1 fails for good: restored from repo2.
        store1.fail_next(Op::Get, u32::MAX, false);
        let outcome = fetch_any(&repos, NAME, &dest, opts(0)).await.unwrap();
        assert!(matches!(outcome, FetchOutcome::Restored(_)));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        // A file repo2 lacks while repo1 fails: a failure, from repo1.
        let err = fetch_any(&repos, "000000010000000000000099", &dest, opts(0))
            .await
            .unwrap_err();
        assert!(
            matches!(err.primary(), FetchError::Repository { .. }),
            "{err}"
        );
        // Even the segment right after repo2's newest: it may be in repo1
        // alone (a push that died between the two puts). Timeline 1's
        // history never exists anywhere.
        let err = fetch_any(&repos, "000000010000000000000008", &dest, opts(0))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Repository { .. }), "{err}");
        let outcome = fetch_any(&repos, "00000001.history", &dest, opts(0))
            .await
            .unwrap();
        assert!(matches!(outcome, FetchOutcome::NotFound));
        // Both healthy, neither holds it: missing.
        store1.fail_next(Op::Get, 0, false);
        let outcome = fetch_any(&repos, "000000010000000000000099", &dest, opts(0))
            .await
            .unwrap();
        assert!(matches!(outcome, FetchOutcome::NotFound));
        // repo1 lacks it, repo2 fails: a failure, not missing.
        store2.fail_next(Op::Get, u32::MAX, false);
        let err = fetch_any(&repos, "000000010000000000000099", &dest, opts(0))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Repository { .. }), "{err}");
        // Both fail: both named, repo1's decides.
        store1.fail_next(Op::Get, u32::MAX, false);
        let err = fetch_any(&repos, NAME, &dest, opts(0)).await.unwrap_err();
        assert!(matches!(err, FetchError::Each { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("repo1: ") && text.contains("; repo2: "),
            "{text}"
        );
        // A transient failure of both is retried in rounds until one answers.
        store1.fail_next(Op::Get, 0, false);
        store2.fail_next(Op::Get, 0, false);
        store1.fail_next(Op::Get, u32::MAX, true);
        store2.fail_next(Op::Get, 2, true);
        std::fs::remove_file(&dest).unwrap();
        let outcome = fetch_any(&repos, NAME, &dest, opts(30)).await.unwrap();
        assert!(matches!(outcome, FetchOutcome::Restored(_)));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }
}
