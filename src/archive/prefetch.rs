//! Prefetching restore: while PostgreSQL replays segment N, a background
//! worker fetches N+1 … N+k into a spool beside `%p` (`pg_wal/walvault_prefetch/`,
//! on pg_wal's own file system, which base backups leave out), so the
//! next restore_command calls are a rename. The spool names the repository
//! it was filled from; a spool of another repository is emptied.
//!
//! - Keys follow from names, so no listing is needed.
//! - Every file is fully fetched and verified (size and checksum against
//!   the object's trailer, by [`super::fetch`]) into a temporary name and
//!   only then renamed to its WAL name in the spool: a file under a WAL name
//!   in the spool is whole.
//! - Never stale: on every call, spool files of another timeline or of a
//!   segment before the one asked for are removed; `.history`, `.partial`
//!   and `.backup` files are never prefetched or served from the spool.
//! - Bounded: at most `restore_prefetch` files and `restore_prefetch_bytes`
//!   bytes in the spool, [`PREFETCH_JOBS`] fetched at once.
//! - A miss, an outage or a corrupt object is not the worker's to report:
//!   the call that needs the file fetches it itself, with the exit codes
//!   and standby rules of fetch.
//! - The worker exits when recovery has ended (no `recovery.signal` or
//!   `standby.signal`) or after an idle time, and removes the spool.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::fetch::{fetch_any, FetchOptions, FetchOutcome};
use crate::wal::{SegmentNo, WalFileName};

/// The spool directory, inside the data directory.
pub const SPOOL_DIR: &str = "walvault_prefetch";

/// Files the worker fetches at once.
pub const PREFETCH_JOBS: usize = 4;

/// What the last call asked for (a segment name): the worker fetches the
/// segments after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    pub name: String,
}

/// Whether `name` is a plain segment name (24 hex digits).
fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

pub struct Prefetch {
    dir: PathBuf,
}

impl Prefetch {
    /// Opens the spool `dir` for files of repository `source` (its
    /// description); files left from another repository are removed.
    pub fn open(dir: &Path, source: &str) -> io::Result<Prefetch> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let spool = Prefetch {
            dir: dir.to_path_buf(),
        };
        let stamp = dir.join("source");
        if fs::read_to_string(&stamp).ok().as_deref() != Some(source) {
            spool.clear();
            fs::write(&stamp, source)?;
        }
        Ok(spool)
    }

    /// Removes every prefetched file.
    fn clear(&self) {
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_segment_name(&name) || name.ends_with(".prefetch") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// For a call asking for `name`: drops whatever no longer matches (other
    /// timelines, earlier segments) and serves `name` into `dest` by a
    /// rename if it is there. Returns whether it served it.
    pub fn serve(&self, name: &str, dest: &Path) -> bool {
        if !is_segment_name(name) {
            return false;
        }
        let mut served = false;
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !is_segment_name(&file) {
                continue;
            }
            // Same timeline (the first 8 digits); on one timeline, names
            // order as positions do.
            if file[..8] != name[..8] || file.as_str() < name {
                let _ = fs::remove_file(entry.path());
            } else if file == name && !served {
                served = fs::rename(entry.path(), dest).is_ok();
            }
        }
        served
    }

    /// Tells the worker where to go on from.
    pub fn want(&self, want: &Want) -> io::Result<()> {
        let tmp = self.dir.join(format!(".want.{}.tmp", std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(want).expect("want serializes"))?;
        drop(f);
        fs::rename(tmp, self.dir.join("want"))
    }

    fn read_want(&self) -> Option<Want> {
        serde_json::from_slice(&fs::read(self.dir.join("want")).ok()?).ok()
    }

    pub fn lock_worker(&self) -> io::Result<Option<fs::File>> {
        super::try_lock(&self.dir.join("worker.lock"))
    }

    pub fn worker_running(&self) -> bool {
        matches!(self.lock_worker(), Ok(None))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("worker.log")
    }

    /// WAL files in the spool and their bytes.
    fn held(&self) -> (Vec<String>, u64) {
        let mut names = Vec::new();
        let mut bytes = 0;
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_segment_name(&name) {
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                names.push(name);
            }
        }
        (names, bytes)
    }
}

/// Whether the cluster is still in recovery (a signal file is there).
fn in_recovery(data_dir: &Path) -> bool {
    data_dir.join("recovery.signal").exists() || data_dir.join("standby.signal").exists()
}

/// The worker: keeps up to `count` files (and `max_bytes`) ahead of the
/// last call, until recovery ends or nothing was asked for `idle`. Removes
/// the spool when it exits. Returns at once if another worker runs.
pub async fn run_worker(
    repos: super::Repos,
    data_dir: PathBuf,
    spool_dir: PathBuf,
    count: u64,
    max_bytes: u64,
    idle: Duration,
) -> io::Result<()> {
    let spool = Prefetch::open(&spool_dir, &repos.describe())?;
    let Some(lock) = super::take_worker_lock(&spool.dir().join("worker.lock")).await? else {
        return Ok(());
    };
    let result = prefetch_loop(&repos, &spool, &data_dir, count.min(1024), max_bytes, idle).await;
    // Emptied and removed while the lock is held, so no new worker works
    // in a spool being removed.
    spool.clear();
    let _ = fs::remove_dir_all(spool.dir());
    drop(lock);
    result
}

async fn prefetch_loop(
    repos: &super::Repos,
    spool: &Prefetch,
    data_dir: &Path,
    count: u64,
    max_bytes: u64,
    idle: Duration,
) -> io::Result<()> {
    // The segment size from the first repository that answers.
    let mut header = Err(io::Error::other("no repository"));
    for m in repos.members() {
        header = m
            .repo
            .require_header()
            .await
            .map_err(|e| io::Error::other(e.to_string()));
        if header.is_ok() {
            break;
        }
    }
    let size = crate::wal::WalSegmentSize::new(header?.wal_segment_size)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let position = |want: &Want| match WalFileName::parse(&want.name, size) {
        Ok(WalFileName::Segment {
            timeline, segment, ..
        }) => Some((timeline, segment)),
        _ => None,
    };
    let mut last_want = None;
    let mut last_change = Instant::now();
    loop {
        if !in_recovery(data_dir) || last_change.elapsed() >= idle {
            return Ok(());
        }
        let want = spool.read_want();
        if want != last_want {
            last_want.clone_from(&want);
            last_change = Instant::now();
        }
        let Some((timeline, asked)) = want.as_ref().and_then(position) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // The files after the one asked for that the spool lacks, as many
        // as the byte bound leaves room for.
        let (held, bytes) = spool.held();
        let mut room = max_bytes.saturating_sub(bytes) / size.bytes();
        let mut wanted = Vec::new();
        for i in 1..=count {
            let segment = SegmentNo(asked.0 + i);
            let name = WalFileName::segment_file_name(timeline, segment, size);
            if held.contains(&name) {
                continue;
            }
            if room == 0 {
                break;
            }
            room -= 1;
            wanted.push((segment, name));
        }
        // Fetched PREFETCH_JOBS at a time (on S3 each is mostly waiting),
        // each into its temporary name, renamed when whole and verified.
        let mut queue = wanted.into_iter();
        let mut tasks = tokio::task::JoinSet::new();
        let mut fetched_any = false;
        let mut stop = false;
        loop {
            while !stop && tasks.len() < PREFETCH_JOBS {
                let Some((segment, name)) = queue.next() else {
                    break;
                };
                let repos = repos.clone();
                let tmp = spool.dir().join(format!(".{name}.prefetch"));
                tasks.spawn(async move {
                    // No waiting retries: the call that needs the file retries.
                    let opts = FetchOptions {
                        retry_for: Duration::ZERO,
                    };
                    let outcome = fetch_any(&repos, &name, &tmp, opts).await;
                    (segment, name, tmp, outcome)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (segment, name, tmp, outcome) = joined.map_err(io::Error::other)?;
            match outcome {
                Ok(FetchOutcome::Restored(_)) => {
                    // Recovery may have moved past it, or to another
                    // timeline, meanwhile.
                    let still_wanted = spool
                        .read_want()
                        .as_ref()
                        .and_then(position)
                        .is_some_and(|(t, s)| t == timeline && segment > s);
                    if still_wanted && fs::rename(&tmp, spool.dir().join(&name)).is_ok() {
                        fetched_any = true;
                    } else {
                        let _ = fs::remove_file(&tmp);
                        stop = true;
                    }
                }
                // The end of the archive for now, or a failure: no more
                // started (those under way finish).
                Ok(FetchOutcome::NotFound) | Err(_) => {
                    let _ = fs::remove_file(&tmp);
                    stop = true;
                }
            }
        }
        if !fetched_any {
            // Nothing new: the archive's end, or the spool is full.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{TimelineId, WalSegmentSize};

    #[test]
    fn serving_renames_and_drops_what_no_longer_matches() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Prefetch::open(&dir.path().join(SPOOL_DIR), "local \"/r\"").unwrap();
        let size = WalSegmentSize::DEFAULT;
        let name =
            |t: u32, s: u64| WalFileName::segment_file_name(TimelineId(t), SegmentNo(s), size);
        for (t, s) in [(1, 3), (1, 4), (1, 5), (2, 5)] {
            fs::write(spool.dir().join(name(t, s)), format!("{t}/{s}")).unwrap();
        }
        let dest = dir.path().join("RECOVERYXLOG");
        assert!(spool.serve(&name(1, 4), &dest));
        assert_eq!(fs::read_to_string(&dest).unwrap(), "1/4");
        // 3 was skipped (earlier than asked) and 2/5 is another timeline.
        assert_eq!(spool.held().0, [name(1, 5)]);
        // History files are never served from the spool.
        fs::write(spool.dir().join("00000002.history"), "x").unwrap();
        assert!(!spool.serve("00000002.history", &dest));
        // Asking on timeline 2 drops timeline 1.
        assert!(!spool.serve(&name(2, 6), &dest));
        assert!(spool.held().0.is_empty());
        // A spool filled from another repository is emptied on opening.
        fs::write(spool.dir().join(name(2, 7)), "x").unwrap();
        let other = Prefetch::open(spool.dir(), "local \"/elsewhere\"").unwrap();
        assert!(other.held().0.is_empty());
    }
}
