//! Asynchronous archiving: a spool directory and one background worker
//! per cluster and repository.
//!
//! PostgreSQL calls archive_command for one file at a time. With
//! `archive_async`, walvault-push for file N makes sure a worker runs,
//! and the worker pushes every file PostgreSQL has marked ready
//! (`pg_wal/archive_status/*.ready`), `.history` files first, then oldest
//! first, compressing `archive_jobs` at a time. The foreground call waits until its
//! own file has a *done record* and exits 0, or reports the worker's error
//! for that file with the exit code synchronous pushing would give.
//!
//! Guarantees:
//! - **Nothing is reported archived before it is stored.** A done record
//!   is written (atomically: temporary file, rename) only after the put
//!   returned, which is after the object is durable. It names the file's
//!   identity (device, inode, size, modification time); a record for
//!   another file of the same name does not count.
//! - **Nothing is dropped.** There is no queue limit: WAL stays in
//!   `pg_wal` until it is stored, and `walvault status --pgdata` reports the
//!   backlog.
//! - **Crash safety.** A killed worker or foreground leaves at worst a
//!   temporary record (never read) or a file pushed without its done
//!   record, which the next attempt finds already archived.
//! - **One worker.** It holds an exclusive `flock` on `worker.lock` for its
//!   life; a second one started in a race finds it taken and exits.
//! - **Fallback.** If the spool directory is missing or cannot be written,
//!   the foreground pushes synchronously, with a warning.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::push::{push_all, PushError};
use crate::repo::object::Pacing;

/// Which file a done record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileIdentity {
    pub fn of(path: &Path) -> io::Result<FileIdentity> {
        let m = fs::metadata(path)?;
        Ok(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        })
    }
}

/// A failure of the worker for one file, as the foreground reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub code: u8,
    pub message: String,
    /// When the worker failed (Unix milliseconds): the foreground reports
    /// only failures from during its own call, and the worker retries a
    /// file a second after it failed.
    #[serde(default)]
    pub at_unix_ms: u64,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long the worker leaves a failed file alone before trying again.
const RETRY_AFTER_MS: u64 = 1000;

/// The spool of one cluster and repository:
/// `<spool_path>/<id>/{done,error}/<wal name>`, `worker.lock`, `worker.log`.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// The spool of the cluster in `data_dir` pushing into `repo` (its
    /// description), without touching the disk beyond resolving the path:
    /// enough for the fast answer to a call whose file is already done.
    pub fn locate(spool_path: &Path, repo: &str, data_dir: &Path) -> io::Result<Spool> {
        let data_dir = fs::canonicalize(data_dir)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(repo.as_bytes());
        hasher.update(b"\0");
        hasher.update(data_dir.as_os_str().as_encoded_bytes());
        let id = hasher.finalize().to_hex();
        Ok(Spool {
            dir: spool_path.join(&id.as_str()[..16]),
        })
    }

    /// Creates what is missing below `spool_path` (never `spool_path`
    /// itself) and proves the spool can be written: a spool that is full,
    /// read-only or someone else's must not stall archiving, so the caller
    /// falls back to pushing synchronously when this fails.
    pub fn prepare(&self) -> io::Result<()> {
        let spool_path = self.dir.parent().unwrap_or(Path::new("/"));
        if !spool_path.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "spool directory \"{}\" does not exist",
                    spool_path.display()
                ),
            ));
        }
        for sub in ["done", "error"] {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(self.dir.join(sub))?;
        }
        let probe = self.dir.join("done").join(".probe");
        write_atomically(&probe, b"probe")?;
        let _ = fs::remove_file(probe);
        Ok(())
    }

    /// [`Spool::locate`] and [`Spool::prepare`].
    pub fn open(spool_path: &Path, repo: &str, data_dir: &Path) -> io::Result<Spool> {
        let spool = Spool::locate(spool_path, repo, data_dir)?;
        spool.prepare()?;
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("worker.log")
    }

    fn done_path(&self, name: &str) -> PathBuf {
        self.dir.join("done").join(name)
    }

    fn error_path(&self, name: &str) -> PathBuf {
        self.dir.join("error").join(name)
    }

    /// Whether `name` is recorded as stored, for this very file.
    pub fn is_done(&self, name: &str, identity: &FileIdentity) -> bool {
        fs::read(self.done_path(name))
            .ok()
            .and_then(|b| serde_json::from_slice::<FileIdentity>(&b).ok())
            .is_some_and(|recorded| recorded == *identity)
    }

    /// Records `name` as stored. Call only after the put returned.
    pub fn mark_done(&self, name: &str, identity: &FileIdentity) -> io::Result<()> {
        write_atomically(
            &self.done_path(name),
            &serde_json::to_vec(identity).expect("identity serializes"),
        )
    }

    pub fn mark_error(&self, name: &str, record: &ErrorRecord) -> io::Result<()> {
        write_atomically(
            &self.error_path(name),
            &serde_json::to_vec(record).expect("record serializes"),
        )
    }

    fn read_error(&self, name: &str) -> Option<ErrorRecord> {
        fs::read(self.error_path(name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Whether the worker should leave `name` alone for now: it failed
    /// less than a second ago.
    pub fn recently_failed(&self, name: &str) -> bool {
        self.read_error(name).is_some_and(|e| {
            unix_ms(std::time::SystemTime::now()).saturating_sub(e.at_unix_ms) < RETRY_AFTER_MS
        })
    }

    /// The worker's error for `name` if it happened at or after `since`
    /// (the start of the asking call), removed so that the next call tries
    /// again. An older one is about an earlier attempt: it is left for the
    /// worker, which tries again.
    pub fn take_error(&self, name: &str, since: std::time::SystemTime) -> Option<ErrorRecord> {
        let record = self.read_error(name)?;
        if record.at_unix_ms < unix_ms(since) {
            return None;
        }
        let _ = fs::remove_file(self.error_path(name));
        Some(record)
    }

    /// Removes records of files PostgreSQL no longer marks ready.
    pub fn prune(&self, ready: &HashSet<String>) {
        for sub in ["done", "error"] {
            if let Ok(entries) = fs::read_dir(self.dir.join(sub)) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // Dot-files are records being written.
                    if !name.starts_with('.') && !ready.contains(&name) {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("worker.lock")
    }

    /// Takes the worker lock; `None` when a worker holds it.
    pub fn lock_worker(&self) -> io::Result<Option<File>> {
        super::try_lock(&self.lock_path())
    }

    pub fn worker_running(&self) -> bool {
        matches!(self.lock_worker(), Ok(None))
    }
}

/// Temporary file, then rename: a record is never read half-written.
fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record"),
        std::process::id()
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
    }
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// The files PostgreSQL has marked ready to archive, in the order to push
/// them: `.history` files first, then by name (oldest first).
pub fn plan_ready(data_dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(data_dir.join("pg_wal/archive_status"))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".ready"))
                .map(str::to_string)
        })
        .collect();
    names.sort_by(|a, b| {
        (!a.ends_with(".history"), a.as_str()).cmp(&(!b.ends_with(".history"), b.as_str()))
    });
    Ok(names)
}

/// WAL PostgreSQL has finished but not yet archived: the `.ready` files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    pub segments: usize,
    pub bytes: u64,
    /// How long the oldest ready file has waited (its status file's age).
    pub oldest_age_secs: i64,
}

/// Measures the archive backlog of the cluster in `data_dir`.
pub fn measure_backlog(data_dir: &Path) -> io::Result<Backlog> {
    let mut backlog = Backlog::default();
    let status = data_dir.join("pg_wal/archive_status");
    for name in plan_ready(data_dir)? {
        backlog.segments += 1;
        backlog.bytes += fs::metadata(data_dir.join("pg_wal").join(&name))
            .map(|m| m.len())
            .unwrap_or(0);
        let age = fs::metadata(status.join(format!("{name}.ready")))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_secs() as i64);
        backlog.oldest_age_secs = backlog.oldest_age_secs.max(age);
    }
    Ok(backlog)
}

/// The default memory the worker's files in flight may hold
/// (`archive_memory_mib`): their compression (zstd's context and window
/// and the step buffers, about 7 MiB each at level 3) and, on S3, their
/// compressed bodies until each is sent in one PUT (up to 16 MiB for a
/// 16 MiB segment that does not compress). A put waits for its worst case
/// before it compresses, gives back what the body turns out not to need
/// as it goes, and keeps only what its upload holds once compression is
/// done (README: "Asynchronous archiving"; the bench measures the
/// worker's peak).
pub const WORKER_MEMORY_BUDGET: usize = 48 << 20;

/// How many files the worker has in flight with `jobs` compressing at
/// once: as many more may be finishing their put (README and
/// docs/ARCHITECTURE.md say so). An upload to S3 can take as long as a
/// compression, so with fewer a core would wait for one; each file in
/// flight to S3 holds its compressed bytes, which the memory budget
/// bounds.
fn in_flight_limit(jobs: usize) -> usize {
    2 * jobs
}

/// How the worker classifies a push failure for the foreground (the cli's
/// exit-code policy).
pub type Classify = fn(&PushError) -> u8;

/// The worker: pushes ready files `jobs` at a time until nothing has been
/// ready for `idle`. Returns at once if another worker runs.
pub async fn run_worker(
    repos: super::Repos,
    spool: Spool,
    data_dir: PathBuf,
    jobs: usize,
    memory_bytes: usize,
    idle: Duration,
    classify: Classify,
) -> io::Result<()> {
    let Some(_lock) = super::take_worker_lock(&spool.lock_path()).await? else {
        return Ok(());
    };
    tracing::info!(spool = %spool.dir().display(), jobs, "async archive worker started");
    // `jobs` files are compressed at once, and as many more may be
    // finishing (their fsync or last upload request) meanwhile, so the
    // cores do not wait on the disk or the network; all of them within
    // the worker's memory budget.
    let pacing = std::sync::Arc::new(Pacing::new(jobs, memory_bytes));
    let in_flight_max = in_flight_limit(jobs);
    let mut idle_since = Instant::now();
    let mut running: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    loop {
        while let Ok(name) = done_rx.try_recv() {
            in_flight.remove(&name);
        }
        while running.try_join_next().is_some() {}
        let ready = plan_ready(&data_dir)?;
        let ready_set: HashSet<String> = ready.iter().cloned().collect();
        spool.prune(&ready_set);
        let mut started = false;
        for name in ready {
            if running.len() >= in_flight_max {
                break;
            }
            if in_flight.contains(&name) || spool.recently_failed(&name) {
                continue;
            }
            let path = data_dir.join("pg_wal").join(&name);
            let Ok(identity) = FileIdentity::of(&path) else {
                continue;
            };
            if spool.is_done(&name, &identity) {
                continue;
            }
            in_flight.insert(name.clone());
            started = true;
            let (repos, spool, data_dir, tx, pacing) = (
                repos.clone(),
                spool.clone(),
                data_dir.clone(),
                done_tx.clone(),
                pacing.clone(),
            );
            running.spawn(async move {
                let result = push_all(&repos, &path, &data_dir, Some(&pacing)).await;
                let outcome = match result {
                    Ok(_) => match FileIdentity::of(&path) {
                        // The file pushed is the file recorded.
                        Ok(after) if after == identity => spool.mark_done(&name, &identity),
                        _ => Ok(()),
                    },
                    Err(e) => {
                        tracing::warn!(wal = %name, error = %e, "async push failed");
                        spool.mark_error(
                            &name,
                            &ErrorRecord {
                                code: classify(&e),
                                message: e.to_string(),
                                at_unix_ms: unix_ms(std::time::SystemTime::now()),
                            },
                        )
                    }
                };
                if let Err(e) = outcome {
                    tracing::error!(wal = %name, error = %e, "cannot write to the spool");
                }
                let _ = tx.send(name);
            });
        }
        if started || !running.is_empty() {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= idle {
            tracing::info!("async archive worker idle; exiting");
            return Ok(());
        }
        // Wake on a finished push, or look for new ready files soon.
        tokio::select! {
            Some(name) = done_rx.recv() => { in_flight.remove(&name); }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_first_then_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("pg_wal/archive_status");
        fs::create_dir_all(&status).unwrap();
        for n in [
            "000000020000000000000005",
            "00000002.history",
            "000000010000000000000004.partial",
            "000000010000000000000003",
        ] {
            fs::write(status.join(format!("{n}.ready")), "").unwrap();
        }
        fs::write(status.join("000000010000000000000001.done"), "").unwrap();
        assert_eq!(
            plan_ready(dir.path()).unwrap(),
            [
                "00000002.history",
                "000000010000000000000003",
                "000000010000000000000004.partial",
                "000000020000000000000005"
            ]
        );
    }

    #[test]
    fn as_many_more_files_finish_as_compress() {
        assert_eq!([1, 2, 3, 4, 64].map(in_flight_limit), [2, 4, 6, 8, 128]);
    }

    /// README: on S3 the default budget lets two 16 MiB segments start
    /// compressing at once (a third waits), about 24 MiB each.
    #[test]
    fn the_default_budget_starts_two_segments_on_s3() {
        use crate::repo::object::{worst_case_bytes, CompressSettings};
        let each = worst_case_bytes(16 << 20, CompressSettings::default(), true);
        assert!(each < 24 << 20, "{each}");
        assert!(2 * each <= WORKER_MEMORY_BUDGET);
        assert!(3 * each > WORKER_MEMORY_BUDGET);
    }

    #[test]
    fn records_are_for_one_file_and_errors_are_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(&data).unwrap();
        let spool = Spool::open(dir.path(), "local \"/r\"", &data).unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "one").unwrap();
        let id = FileIdentity::of(&file).unwrap();
        assert!(!spool.is_done("f", &id));
        spool.mark_done("f", &id).unwrap();
        assert!(spool.is_done("f", &id));
        // Another file under that name is not done.
        fs::remove_file(&file).unwrap();
        fs::write(&file, "other contents").unwrap();
        assert!(!spool.is_done("f", &FileIdentity::of(&file).unwrap()));
        let before = std::time::SystemTime::now() - Duration::from_secs(5);
        let record = ErrorRecord {
            code: 4,
            message: "conflict".to_string(),
            at_unix_ms: unix_ms(std::time::SystemTime::now()),
        };
        spool.mark_error("g", &record).unwrap();
        assert!(spool.recently_failed("g"));
        // An error from before the call is not the call's to report.
        assert_eq!(
            spool.take_error("g", std::time::SystemTime::now() + Duration::from_secs(5)),
            None
        );
        assert_eq!(spool.take_error("g", before), Some(record));
        assert_eq!(spool.take_error("g", before), None);
        spool.prune(&HashSet::new());
        assert!(!spool.is_done("f", &id));
        // One worker at a time.
        let held = spool.lock_worker().unwrap().expect("free");
        assert!(spool.worker_running());
        assert!(spool.lock_worker().unwrap().is_none());
        drop(held);
        assert!(!spool.worker_running());
        // A spool directory that is not there is an error (the caller
        // falls back to synchronous pushing).
        assert!(Spool::open(&dir.path().join("gone"), "r", &data).is_err());
    }
}
