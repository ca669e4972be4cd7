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
//! - One GET per file, as a rule: while the worker fetches a file it holds
//!   an exclusive `flock` on `.{name}.inflight`. Every call for a segment
//!   says it waits (`.{name}.waiting`) before it moves the position, and a
//!   call whose file is not in the spool but in flight waits for the lock
//!   to go, up to a limit, instead of fetching the file a second time
//!   beside the worker. The worker keeps a file that recovery has reached
//!   only while a call waits for it. The kernel drops the lock of a killed
//!   worker, so a marker left behind never makes a call wait.
//! - A miss, an outage or a corrupt object is not the worker's to report:
//!   the call that needs the file fetches it itself, with the exit codes
//!   and standby rules of fetch.
//! - The worker exits when recovery has ended (no `recovery.signal` or
//!   `standby.signal`) or after an idle time, and removes the spool.

use super::RemoveOnDrop;
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

/// How long a call waits for a file the worker is fetching before it
/// fetches the file itself: in all, and while the file does not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitLimit {
    pub total: Duration,
    /// A worker whose request has stalled (a repository that stopped
    /// answering) does not hold the call for all of `total`.
    pub without_progress: Duration,
}

/// The limits of [`WaitLimit`]: a normal fetch takes well under a
/// second, so a call waits up to 60 s, or 5 s without the file growing;
/// briefly (2 s) in standby mode, where the startup process must get back
/// to streaming.
pub fn wait_limit(standby: bool) -> WaitLimit {
    if standby {
        WaitLimit {
            total: Duration::from_secs(2),
            without_progress: Duration::from_secs(2),
        }
    } else {
        WaitLimit {
            total: Duration::from_secs(60),
            without_progress: Duration::from_secs(5),
        }
    }
}

/// How often a waiting call looks at how far the worker's file has come.
const PROGRESS_CHECK: Duration = Duration::from_millis(100);

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

    fn in_flight_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!(".{name}.inflight"))
    }

    fn waiting_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!(".{name}.waiting"))
    }

    /// Where the worker fetches `name` to (the fetch itself writes a
    /// temporary file beside it first, whose name starts with this one's
    /// and a dot).
    fn partial_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!(".{name}.prefetch"))
    }

    /// The bytes the worker has written of `name` so far: how a waiting
    /// call sees progress.
    fn fetched_bytes(&self, name: &str) -> u64 {
        let partial = format!(".{name}.prefetch");
        let temporary = format!(".{partial}");
        fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n == partial.as_str() || n.starts_with(&temporary)
            })
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// For the worker: marks `name` as being fetched until the returned
    /// guard is dropped. The marker is locked before it gets its name, so
    /// whoever sees the name sees it locked.
    fn mark_in_flight(&self, name: &str) -> io::Result<InFlight> {
        let tmp = self
            .dir
            .join(format!(".{name}.inflight.{}.tmp", std::process::id()));
        let file = fs::File::create(&tmp)?;
        crate::storage::local::lock_exclusive(&file)?;
        let path = self.in_flight_path(name);
        fs::rename(&tmp, &path)?;
        Ok(InFlight {
            _marker: RemoveOnDrop::new(path),
            _file: file,
        })
    }

    /// Whether a live worker is fetching `name` now.
    fn in_flight(&self, name: &str) -> bool {
        let Ok(file) = fs::File::open(self.in_flight_path(name)) else {
            return false;
        };
        matches!(
            crate::storage::local::lock_exclusive(&file),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK)
        )
        // A lock taken here is dropped with `file`.
    }

    /// Markers a killed worker left (the worker calls this once it holds
    /// the worker lock, so no live worker owns them).
    fn remove_stale_markers(&self) {
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && (name.ends_with(".inflight") || name.contains(".inflight."))
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Starts a call for `name`: for a segment, says that a call waits for
    /// it and then moves the worker on to it. In that order: the worker
    /// decides whether to keep a file while its marker is locked, and a
    /// file recovery has reached is kept only for a waiting call, so a
    /// file in flight is either kept for this call or this call sees its
    /// marker gone and fetches the file itself.
    pub fn call(&self, name: &str) -> io::Result<Call<'_>> {
        if !is_segment_name(name) {
            return Ok(Call {
                spool: self,
                name: name.to_string(),
                waiting: None,
            });
        }
        let waiting = self.waiting_path(name);
        fs::write(&waiting, b"")?;
        let waiting = RemoveOnDrop::new(waiting);
        self.want(&Want {
            name: name.to_string(),
        })?;
        Ok(Call {
            spool: self,
            name: name.to_string(),
            waiting: Some(waiting),
        })
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

/// A file the worker is fetching: its locked marker, removed and then
/// unlocked when dropped (after the keep-or-discard decision).
struct InFlight {
    // Fields drop in this order: the marker goes, then the lock.
    _marker: RemoveOnDrop,
    _file: fs::File,
}

/// A call for one file, from [`Prefetch::call`].
pub struct Call<'a> {
    spool: &'a Prefetch,
    name: String,
    /// Set for a segment: a call that says it waits, and moves the
    /// worker's position.
    waiting: Option<RemoveOnDrop>,
}

impl Call<'_> {
    /// Whether this call is for a segment (the only files prefetched).
    pub fn is_segment(&self) -> bool {
        self.waiting.is_some()
    }

    /// Serves the file from the spool; when it is not there but the worker
    /// is fetching it, waits for the worker to finish (within `limit`) and
    /// serves it then. False when the caller must fetch it itself.
    pub async fn serve_or_wait(self, dest: &Path, limit: WaitLimit) -> bool {
        let (spool, name) = (self.spool, self.name.as_str());
        if spool.serve(name, dest) {
            return true;
        }
        if self.waiting.is_none() || limit.total.is_zero() {
            return false;
        }
        let started = Instant::now();
        let (mut bytes, mut grew, mut checked) = (spool.fetched_bytes(name), started, started);
        while spool.in_flight(name) {
            let now = Instant::now();
            if now >= started + limit.total {
                tracing::warn!(
                    wal = name,
                    "the prefetch worker is still fetching this file after {:?}; fetching it here",
                    limit.total
                );
                return false;
            }
            if now >= checked + PROGRESS_CHECK {
                checked = now;
                let fetched = spool.fetched_bytes(name);
                if fetched != bytes {
                    (bytes, grew) = (fetched, now);
                } else if now >= grew + limit.without_progress {
                    tracing::warn!(wal = name, "the prefetch worker's fetch of this file has not moved for {:?}; fetching it here", limit.without_progress);
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        spool.serve(name, dest)
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
    spool.remove_stale_markers();
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
    // Fetches under way, by name; each task returns its file's outcome.
    let mut tasks = tokio::task::JoinSet::new();
    let mut in_flight: Vec<String> = Vec::new();
    // After a miss (the end of the archive for now) or a failure, nothing
    // new starts until then; the call that needs the file fetches it
    // itself, with fetch's exit codes and retries.
    let mut pause_until = Instant::now();
    loop {
        if !in_recovery(data_dir) || last_change.elapsed() >= idle {
            // Nothing of a fetch outlives the worker: the spool is removed
            // next.
            tasks.shutdown().await;
            return Ok(());
        }
        // The spool is read before the position: a file a call takes in
        // between is then seen behind the new position, never as missing
        // ahead of the old one (which would fetch it again).
        let can_start = tasks.len() < PREFETCH_JOBS && Instant::now() >= pause_until;
        let held_now = can_start.then(|| spool.held());
        let want = spool.read_want();
        if want != last_want {
            last_want.clone_from(&want);
            last_change = Instant::now();
        }
        let asked = want.as_ref().and_then(position);
        // Start the files after the one asked for that the spool lacks, as
        // many as the jobs, the count and the byte bound leave room for.
        if let (Some((timeline, asked)), Some((held, bytes))) = (asked, held_now) {
            let taken = bytes + in_flight.len() as u64 * size.bytes();
            let mut room = max_bytes.saturating_sub(taken) / size.bytes();
            for i in 1..=count {
                if tasks.len() >= PREFETCH_JOBS || room == 0 {
                    break;
                }
                let segment = SegmentNo(asked.0 + i);
                let name = WalFileName::segment_file_name(timeline, segment, size);
                if held.contains(&name) || in_flight.contains(&name) {
                    continue;
                }
                room -= 1;
                let repos = repos.clone();
                let tmp = spool.partial_path(&name);
                // Without a marker calls cannot wait for the file: slower,
                // never wrong.
                let marker = spool.mark_in_flight(&name).ok();
                in_flight.push(name.clone());
                tasks.spawn(async move {
                    // No waiting retries: the call that needs the file retries.
                    let opts = FetchOptions {
                        retry_for: Duration::ZERO,
                    };
                    let outcome = fetch_any(&repos, &name, &tmp, opts).await;
                    (timeline, segment, name, tmp, outcome, marker)
                });
            }
        }
        // Wait for a fetch to end, or look at the position again soon:
        // recovery takes files from the spool, which makes room.
        let joined = match tokio::time::timeout(Duration::from_millis(20), tasks.join_next()).await
        {
            Ok(Some(joined)) => joined,
            Ok(None) | Err(_) => {
                if tasks.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
        };
        let (timeline, segment, name, tmp, outcome, marker) = match joined {
            Ok(done) => done,
            Err(e) => {
                tasks.shutdown().await;
                return Err(io::Error::other(e));
            }
        };
        in_flight.retain(|n| *n != name);
        match outcome {
            Ok(FetchOutcome::Restored(_)) => {
                // Recovery may have moved past it, or to another timeline,
                // meanwhile; a file recovery has reached is kept only for a
                // call that waits for it.
                let still_wanted =
                    spool
                        .read_want()
                        .as_ref()
                        .and_then(position)
                        .is_some_and(|(t, s)| {
                            t == timeline
                                && (segment > s
                                    || (segment == s && spool.waiting_path(&name).exists()))
                        });
                if !still_wanted {
                    let _ = fs::remove_file(&tmp);
                } else if fs::rename(&tmp, spool.dir().join(&name)).is_err() {
                    let _ = fs::remove_file(&tmp);
                    pause_until = Instant::now() + Duration::from_millis(200);
                }
            }
            Ok(FetchOutcome::NotFound) | Err(_) => {
                let _ = fs::remove_file(&tmp);
                pause_until = Instant::now() + Duration::from_millis(200);
            }
        }
        // Unlocked only now: a call waiting for the file finds it served
        // or knows to fetch it itself.
        drop(marker);
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

#[cfg(test)]
mod flight_tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::layout;
    use crate::storage::faulty::FaultyStore;
    use crate::storage::memory::MemoryStore;
    use crate::wal::{TimelineId, WalSegmentSize};

    fn name(s: u64) -> String {
        WalFileName::segment_file_name(TimelineId(1), SegmentNo(s), WalSegmentSize::DEFAULT)
    }

    fn body(s: u64) -> Vec<u8> {
        format!("segment {s} ").repeat(20_000).into_bytes()
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The real worker loop against a store whose reads can be held: a
    /// call whose file the worker is fetching waits for it instead of
    /// reading it again, and every file is read from the repository once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_in_flight_is_waited_for_and_read_once() {
        let store = FaultyStore::new(MemoryStore::new());
        let repo = super::super::fetch::testing::initialized(Arc::new(store.clone())).await;
        for s in 1..=6 {
            super::super::fetch::testing::store_wal(&repo, &name(s), &body(s)).await;
        }
        let gets = |s: u64| {
            let key = layout::wal_key(&layout::parse_any_size(&name(s)).unwrap());
            store.gets_of(key.as_str())
        };
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        store.gate_gets(layout::WAL_PREFIX, gate.clone());

        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let pg_wal = data_dir.join("pg_wal");
        fs::create_dir_all(&pg_wal).unwrap();
        fs::write(data_dir.join("recovery.signal"), "").unwrap();
        let spool_dir = pg_wal.join(SPOOL_DIR);
        let repos = super::super::Repos::single(repo);
        let spool = Arc::new(Prefetch::open(&spool_dir, &repos.describe()).unwrap());
        // A marker a killed worker left: unlocked, so no call waits on it.
        fs::write(spool.in_flight_path(&name(2)), "").unwrap();
        assert!(!spool.in_flight(&name(2)));

        // Recovery is at segment 1: the worker reads 2, 3 and 4, and the
        // store holds the reads.
        spool.want(&Want { name: name(1) }).unwrap();
        let worker = tokio::spawn(run_worker(
            repos,
            data_dir.clone(),
            spool_dir.clone(),
            3,
            1 << 30,
            Duration::from_secs(60),
        ));
        wait_until("2, 3 and 4 in flight", || {
            (2..=4).all(|s| spool.in_flight(&name(s)))
        })
        .await;

        // The call for 2 finds it in flight and waits.
        let dest = pg_wal.join("RECOVERYXLOG");
        let call = {
            let (spool, dest) = (spool.clone(), dest.clone());
            tokio::spawn(async move {
                let call = spool.call(&name(2)).unwrap();
                call.serve_or_wait(&dest, wait_limit(false)).await
            })
        };
        wait_until("the call to say it waits", || {
            spool.waiting_path(&name(2)).exists()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!call.is_finished(), "the call waits for the worker");
        gate.add_permits(1_000);
        assert!(call.await.unwrap(), "served from the spool");
        assert_eq!(fs::read(&dest).unwrap(), body(2));
        assert!(!spool.waiting_path(&name(2)).exists());

        // The rest come from the spool, in flight or already there (replay
        // slower than the worker: each call comes once the worker has
        // reached its file).
        for s in 3..=6 {
            wait_until("the worker to reach the file", || {
                spool.held().0.contains(&name(s)) || spool.in_flight(&name(s))
            })
            .await;
            assert!(
                spool
                    .call(&name(s))
                    .unwrap()
                    .serve_or_wait(&dest, wait_limit(false))
                    .await,
                "segment {s} served"
            );
            assert_eq!(fs::read(&dest).unwrap(), body(s));
        }
        assert_eq!(
            (1..=6).map(gets).collect::<Vec<_>>(),
            [0, 1, 1, 1, 1, 1],
            "each file read once, by the worker"
        );

        // Recovery ends: the worker exits and removes the spool.
        fs::remove_file(data_dir.join("recovery.signal")).unwrap();
        tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("the worker exits")
            .unwrap()
            .unwrap();
        assert!(!spool_dir.exists());
    }

    /// The limits README.md gives.
    #[test]
    fn waits_are_what_readme_says() {
        assert_eq!(
            wait_limit(false),
            WaitLimit {
                total: Duration::from_secs(60),
                without_progress: Duration::from_secs(5)
            }
        );
        assert_eq!(wait_limit(true).total, Duration::from_secs(2));
        assert!(wait_limit(true).without_progress <= wait_limit(true).total);
    }

    fn limit(total: Duration, without_progress: Duration) -> WaitLimit {
        WaitLimit {
            total,
            without_progress,
        }
    }

    /// A call for segment `n` gives up (the caller fetches the file
    /// itself) after at least `at_least`, and well before 5 s.
    async fn gives_up_after(
        spool: &Prefetch,
        n: u64,
        dest: &Path,
        limit: WaitLimit,
        at_least: Duration,
    ) {
        let started = Instant::now();
        assert!(
            !spool
                .call(&name(n))
                .unwrap()
                .serve_or_wait(dest, limit)
                .await,
            "gave up"
        );
        let waited = started.elapsed();
        assert!(
            waited >= at_least && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }

    /// A call gives up on a worker whose fetch has not moved for
    /// `without_progress`, keeps waiting for one whose file grows, and
    /// stops waiting when the worker dies.
    #[tokio::test]
    async fn a_call_waits_while_the_worker_makes_progress() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Prefetch::open(&dir.path().join(SPOOL_DIR), "local \"/r\"").unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let short = limit(Duration::from_secs(60), Duration::from_millis(300));

        // Stalled: nothing written at all (a request with no answer).
        let marker = spool.mark_in_flight(&name(4)).unwrap();
        gives_up_after(&spool, 4, &dest, short, Duration::from_millis(300)).await;
        // Stalled part way: the fetch's temporary file stops growing.
        // Named as the fetch names it (this process's id stands in for
        // the worker's).
        let temporary = crate::archive::fetch::temp_path(&spool.partial_path(&name(4)));
        fs::write(&temporary, b"first bytes").unwrap();
        assert_eq!(spool.fetched_bytes(&name(4)), 11);
        gives_up_after(&spool, 4, &dest, short, Duration::from_millis(300)).await;

        // Moving: the file grows every 50 ms for 1.5 s, longer than
        // `without_progress`; then the fetch renames it to the worker's
        // name, and the worker keeps it under its own and lets go.
        let (partial, kept) = (spool.partial_path(&name(4)), spool.dir().join(name(4)));
        let worker = std::thread::spawn(move || {
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(50));
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(&temporary)
                    .unwrap();
                std::io::Write::write_all(&mut f, b"more").unwrap();
            }
            fs::rename(&temporary, &partial).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            fs::rename(&partial, &kept).unwrap();
            drop(marker);
        });
        let started = Instant::now();
        let moving = limit(Duration::from_secs(60), Duration::from_secs(1));
        assert!(
            spool
                .call(&name(4))
                .unwrap()
                .serve_or_wait(&dest, moving)
                .await
        );
        assert!(started.elapsed() >= Duration::from_millis(1400));
        assert_eq!(fs::read(&dest).unwrap().len(), 11 + 30 * 4);
        worker.join().unwrap();

        // A worker killed while a call waits: its lock goes with it, the
        // marker stays, and the call stops waiting at once.
        let marker = spool.in_flight_path(&name(5));
        let held = fs::File::create(&marker).unwrap();
        crate::storage::local::lock_exclusive(&held).unwrap();
        let killed = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        gives_up_after(
            &spool,
            5,
            &dest,
            wait_limit(false),
            Duration::from_millis(250),
        )
        .await;
        assert!(marker.exists());
        killed.join().unwrap();
    }

    /// A call waits only while the worker holds the file, and at most its
    /// limit; a marker nobody holds locked makes no call wait.
    #[tokio::test]
    async fn a_call_waits_at_most_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Prefetch::open(&dir.path().join(SPOOL_DIR), "local \"/r\"").unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        // Nothing in flight: no wait.
        let started = Instant::now();
        assert!(
            !spool
                .call(&name(3))
                .unwrap()
                .serve_or_wait(&dest, wait_limit(false))
                .await
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // In flight for longer than the limit: the call gives up, and no
        // longer says it waits.
        let marker = spool.mark_in_flight(&name(3)).unwrap();
        assert!(spool.in_flight(&name(3)));
        let started = Instant::now();
        assert!(
            !spool
                .call(&name(3))
                .unwrap()
                .serve_or_wait(
                    &dest,
                    limit(Duration::from_millis(200), Duration::from_secs(60))
                )
                .await
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(!spool.waiting_path(&name(3)).exists());
        // Dropped: marker removed, so nothing is in flight.
        drop(marker);
        assert!(!spool.in_flight(&name(3)));
        assert!(!spool.in_flight_path(&name(3)).exists());
        // History files never wait.
        assert!(
            !spool
                .call("00000002.history")
                .unwrap()
                .serve_or_wait(&dest, wait_limit(false))
                .await
        );
    }
}
