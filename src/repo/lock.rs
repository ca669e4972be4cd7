//! The repository lock: one lock object, `lock/repository.lock`, held by a
//! running `walvault backup` or `walvault expire`, so that expire never
//! removes a backup being written and two backups never race.
//!
//! This module owns the lock object's format and its protocol: acquiring
//! (create-only put), taking over a stale lock, renewing the lease, and
//! releasing. It must not decide what a command does while holding the
//! lock, and it never reads the wall clock for decisions: the caller passes
//! a clock (`now`, Unix seconds), so tests move time by hand.
//!
//! Guarantees and limits:
//! - **One holder.** Acquiring is a create-only put ([`PutMode::Create`]),
//!   so of any number of processes starting at once on a free repository,
//!   exactly one gets the lock.
//! - **Leases.** The holder rewrites the lock every lease/3 with a new
//!   `lease_until`; a lock whose lease has ended (its holder crashed or hung)
//!   is stale and the next acquirer takes it over, logging a warning that
//!   names the stale holder.
//! - **Clock skew.** Leases are compared with [`MAX_CLOCK_SKEW_SECS`] of
//!   slack, as the holder's clock wrote them and the reader's judges them.
//! - **Takeover is not atomic.** Object stores have no conditional delete,
//!   so a takeover re-reads the stale lock, checks it still has the same
//!   owner, deletes it, and creates its own create-only. Two processes
//!   taking over the same stale lock at the same moment can, in a narrow
//!   interleaving (one deleting the other's fresh lock between its re-read
//!   and its delete), both believe they hold it. The renewal task notices
//!   the loser at its next renewal, logs an error and stops renewing
//!   ([`RepoLock::is_lost`] turns true).
//! - **Release deletes only our own lock**, never one someone else holds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Repository;
use crate::storage::{Key, PutMode, StorageError};

/// Where the lock lives, outside `wal/` and `backup/`.
pub const LOCK_KEY: &str = "lock/repository.lock";

/// A lease for commands to use unless told otherwise: renewed every 100 s,
/// so slow storage gets two more tries before it ends, and a crashed
/// holder blocks the next backup or expire for at most five minutes.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// How far apart the clocks of two hosts sharing a repository may be. A
/// lease is written with the holder's clock and judged with the reader's,
/// so a lock is stale only once its lease ended this long ago by the
/// reader's clock: a holder whose clock runs behind ours by up to this
/// much never loses a live lock. Keep hosts on NTP; a skew beyond this
/// could let a live lock be taken over.
pub const MAX_CLOCK_SKEW_SECS: i64 = 120;

/// How many times acquiring starts over when the lock changes under it
/// (released or taken over between two reads) before giving up.
const MAX_ROUNDS: usize = 5;

pub fn lock_key() -> Key {
    Key::new(LOCK_KEY).expect("constant key is valid")
}

/// The wall clock in Unix seconds: the clock commands pass to
/// [`RepoLock::acquire`].
pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The lock object's contents (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Unique per acquisition: who holds the lock.
    pub owner_id: String,
    /// The walvault command holding it, e.g. "backup".
    pub command: String,
    pub host: String,
    pub pid: u32,
    /// Unix seconds.
    pub acquired_at: i64,
    /// Unix seconds; at or after this moment the lock is stale.
    pub lease_until: i64,
    /// The holder's start time (Linux `/proc/<pid>/stat`): on the
    /// holder's own host, a lock whose process is gone is taken over at
    /// once, and a reused pid is not taken for the holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proc_start: Option<u64>,
}

impl LockInfo {
    /// Whether the holder ran on this host and is gone for certain.
    fn holder_is_gone(&self) -> bool {
        super::WriterInfo {
            host: self.host.clone(),
            pid: self.pid,
            started_at: String::new(),
            proc_start: self.proc_start,
        }
        .alive()
            == Some(false)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "repository {repo} is locked by \"{command}\" on host \"{host}\" (pid {pid}), acquired at {acquired}, lease until {lease}\nHINT: another walvault backup, expire or copy is running; if that process is gone, the lock is taken over automatically: at once on its own host, from another host after its lease ends at {lease}",
        command = .info.command,
        host = .info.host,
        pid = .info.pid,
        acquired = unix_time(.info.acquired_at),
        lease = unix_time(.info.lease_until),
    )]
    Held { info: LockInfo, repo: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("lock \"{key}\" in {repo} is unreadable: {reason}\nHINT: if no walvault backup or expire is running against this repository, delete that object")]
    Corrupt {
        key: String,
        repo: String,
        reason: String,
    },
    #[error("a lock lease of {lease_ms} ms is shorter than one second\nHINT: use a lease of at least one second; leases count whole seconds")]
    LeaseTooShort { lease_ms: u128 },
    #[error("the lock of repository {repo} changed {rounds} times while being acquired\nHINT: other walvault processes keep taking and releasing it; try again")]
    Contended { repo: String, rounds: usize },
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A held repository lock. Its lease is renewed in the background until
/// [`RepoLock::release`], or until it is dropped (which releases it on a
/// best-effort basis).
#[derive(Debug)]
pub struct RepoLock {
    info: LockInfo,
    repo: Repository,
    /// `None` once released.
    renewal: Option<Renewal>,
    lost: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Renewal {
    /// Sending, or dropping, stops the renewal loop at its next wait.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RepoLock {
    /// Callers read the repository header first ([`Repository::require_header`]):
    /// it refuses an uninitialized repository and tells the store how to
    /// keep this create-only put from overwriting on its server.
    ///
    /// Takes the repository lock for `command`, or fails with
    /// [`LockError::Held`] naming the holder. A stale lock (lease ended
    /// according to `now`) is taken over, with a warning. `lease` counts
    /// whole seconds and must be at least one.
    ///
    /// Must be called within a tokio runtime: the lease is renewed by a
    /// spawned task.
    pub async fn acquire(
        repo: &Repository,
        command: &str,
        lease: Duration,
        now: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> Result<RepoLock, LockError> {
        if lease.as_secs() == 0 {
            return Err(LockError::LeaseTooShort {
                lease_ms: lease.as_millis(),
            });
        }
        let lease_secs = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX);
        let clock: Clock = Arc::new(now);
        let owner_id = new_owner_id();
        let host = host_name();
        let fresh = |clock: &Clock| {
            let t = clock();
            LockInfo {
                owner_id: owner_id.clone(),
                command: command.to_string(),
                host: host.clone(),
                pid: std::process::id(),
                acquired_at: t,
                lease_until: t.saturating_add(lease_secs),
                proc_start: super::proc_start_time(std::process::id()),
            }
        };

        for _ in 0..MAX_ROUNDS {
            let info = fresh(&clock);
            if put_lock(repo, &info, PutMode::Create).await? {
                return Ok(RepoLock::start(repo, info, clock, lease, lease_secs));
            }
            let Some(current) = read_lock(repo).await? else {
                // Released between our put and our read.
                continue;
            };
            let gone = current.holder_is_gone();
            if !gone && current.lease_until.saturating_add(MAX_CLOCK_SKEW_SECS) > clock() {
                return Err(LockError::Held {
                    info: current,
                    repo: repo.describe(),
                });
            }
            if gone {
                tracing::warn!(
                    repo = %repo.describe(),
                    stale_command = %current.command,
                    stale_pid = current.pid,
                    "taking over the repository lock of a process on this host that is gone"
                );
            } else {
                tracing::warn!(
                repo = %repo.describe(),
                stale_owner = %current.owner_id,
                stale_command = %current.command,
                stale_host = %current.host,
                stale_pid = current.pid,
                lease_ended = %unix_time(current.lease_until),
                "taking over a stale repository lock: its holder's lease has ended"
                );
            }
            // Still the same stale lock? Someone may have taken it over or
            // released it since we read it.
            match read_lock(repo).await? {
                Some(again) if again.owner_id == current.owner_id => {}
                _ => continue,
            }
            repo.store().delete(&lock_key()).await?;
            let info = fresh(&clock);
            if put_lock(repo, &info, PutMode::Create).await? {
                return Ok(RepoLock::start(repo, info, clock, lease, lease_secs));
            }
            // Someone else took it over first: the next round reads the
            // winner's live lock and reports it as held.
        }
        Err(LockError::Contended {
            repo: repo.describe(),
            rounds: MAX_ROUNDS,
        })
    }

    fn start(
        repo: &Repository,
        info: LockInfo,
        clock: Clock,
        lease: Duration,
        lease_secs: i64,
    ) -> RepoLock {
        tracing::info!(
            repo = %repo.describe(),
            owner = %info.owner_id,
            command = %info.command,
            lease_until = %unix_time(info.lease_until),
            "repository lock acquired"
        );
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(renew_loop(
            repo.clone(),
            info.clone(),
            clock,
            lease_secs,
            lease / 3,
            stopped,
            lost.clone(),
        ));
        RepoLock {
            info,
            repo: repo.clone(),
            renewal: Some(Renewal { stop, task }),
            lost,
        }
    }

    /// The lock as acquired (later renewals move only `lease_until` in the
    /// stored object).
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Whether renewal found the lock held by someone else (or gone): this
    /// process must assume it no longer holds it.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Re-reads the stored lock: `Ok(true)` only if it is still ours. A
    /// destructive step (expire's deletes) calls this right before it
    /// starts, instead of trusting the last renewal.
    pub async fn confirm(&self) -> Result<bool, LockError> {
        if self.is_lost() {
            return Ok(false);
        }
        Ok(read_lock(&self.repo)
            .await?
            .is_some_and(|stored| stored.owner_id == self.info.owner_id))
    }

    /// Stops renewing and deletes the lock if it is still ours. A lock
    /// someone else holds by now is left alone (with a warning).
    pub async fn release(mut self) -> Result<(), LockError> {
        if let Some(renewal) = self.renewal.take() {
            let _ = renewal.stop.send(());
            // Let a renewal in flight finish, so it cannot recreate the lock
            // after the delete below.
            let _ = renewal.task.await;
        }
        delete_if_ours(&self.repo, &self.info.owner_id).await
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        let Some(Renewal { stop, task }) = self.renewal.take() else {
            return;
        };
        drop(stop);
        let repo = self.repo.clone();
        let owner_id = self.info.owner_id.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = task.await;
                    if let Err(e) = delete_if_ours(&repo, &owner_id).await {
                        tracing::warn!(repo = %repo.describe(), error = %e, "could not release the repository lock; it is taken over once its lease ends");
                    }
                });
            }
            Err(_) => tracing::warn!(
                repo = %repo.describe(),
                lease_until = %unix_time(self.info.lease_until),
                "repository lock dropped outside a runtime; it is taken over once its lease ends"
            ),
        }
    }
}

/// Rewrites the lock every `period` with a fresh lease, while it is ours.
async fn renew_loop(
    repo: Repository,
    mut info: LockInfo,
    clock: Clock,
    lease_secs: i64,
    period: Duration,
    mut stopped: oneshot::Receiver<()>,
    lost: Arc<AtomicBool>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(period) => {}
        }
        match renew_once(&repo, &mut info, &clock, lease_secs).await {
            Ok(()) => {}
            Err(Renew::Lost(current)) => {
                lost.store(true, Ordering::SeqCst);
                tracing::error!(
                    repo = %repo.describe(),
                    owner = %info.owner_id,
                    now_held_by = %current.as_ref().map_or("nobody", |c| c.owner_id.as_str()),
                    now_held_by_command = %current.as_ref().map_or("", |c| c.command.as_str()),
                    now_held_by_host = %current.as_ref().map_or("", |c| c.host.as_str()),
                    "the repository lock is no longer ours; stopped renewing it"
                );
                return;
            }
            Err(Renew::Failed(e)) => tracing::warn!(
                repo = %repo.describe(),
                error = %e,
                lease_until = %unix_time(info.lease_until),
                "could not renew the repository lock; trying again"
            ),
        }
    }
}

enum Renew {
    /// The stored lock is someone else's, or gone (`None`), or unreadable.
    Lost(Option<LockInfo>),
    Failed(LockError),
}

async fn renew_once(
    repo: &Repository,
    info: &mut LockInfo,
    clock: &Clock,
    lease_secs: i64,
) -> Result<(), Renew> {
    match read_lock(repo).await {
        Ok(Some(current)) if current.owner_id == info.owner_id => {}
        Ok(other) => return Err(Renew::Lost(other)),
        Err(LockError::Corrupt { .. }) => return Err(Renew::Lost(None)),
        Err(e) => return Err(Renew::Failed(e)),
    }
    info.lease_until = clock().saturating_add(lease_secs);
    put_lock(repo, info, PutMode::Overwrite)
        .await
        .map(|_| ())
        .map_err(Renew::Failed)
}

/// Writes the lock; `Ok(false)` when a create-only put found one there.
async fn put_lock(repo: &Repository, info: &LockInfo, mode: PutMode) -> Result<bool, LockError> {
    let mut json = serde_json::to_vec_pretty(info).expect("lock info serializes");
    json.push(b'\n');
    match repo
        .store()
        .put_bytes(&lock_key(), Bytes::from(json), mode)
        .await
    {
        Ok(()) => Ok(true),
        Err(StorageError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The stored lock, or `None` when there is none.
async fn read_lock(repo: &Repository) -> Result<Option<LockInfo>, LockError> {
    let key = lock_key();
    let bytes = match repo.store().get_bytes(&key).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| LockError::Corrupt {
            key: key.to_string(),
            repo: repo.describe(),
            reason: e.to_string(),
        })
}

/// Deletes the lock if it still holds `owner_id`.
async fn delete_if_ours(repo: &Repository, owner_id: &str) -> Result<(), LockError> {
    match read_lock(repo).await? {
        Some(current) if current.owner_id == owner_id => {
            repo.store().delete(&lock_key()).await?;
            tracing::info!(repo = %repo.describe(), owner = %owner_id, "repository lock released");
        }
        Some(current) => tracing::warn!(
            repo = %repo.describe(),
            owner = %owner_id,
            now_held_by = %current.owner_id,
            now_held_by_command = %current.command,
            now_held_by_host = %current.host,
            "the repository lock was taken over; leaving the new holder's lock in place"
        ),
        None => tracing::warn!(
            repo = %repo.describe(),
            owner = %owner_id,
            "the repository lock was already gone at release"
        ),
    }
    Ok(())
}

/// A string no other acquisition produces: process id, wall-clock
/// nanoseconds (for uniqueness only, never for decisions) and a counter, in
/// hex.
fn new_owner_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{:x}", std::process::id(), nanos, n)
}

/// This machine's host name, for messages naming the holder.
pub(crate) fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and
    // gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Unix seconds as an RFC 3339 time for messages.
fn unix_time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map_or_else(|_| format!("unix time {secs}"), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;

    use async_trait::async_trait;

    use super::*;
    use crate::repo::CompressSettings;
    use crate::storage::faulty::{FaultyStore, Op};
    use crate::storage::memory::MemoryStore;
    use crate::storage::{ObjectMeta, ObjectReader, ObjectStore, ObjectWriter};

    const T0: i64 = 1_770_000_000;

    fn clock(start: i64) -> (Arc<AtomicI64>, impl Fn() -> i64 + Send + Sync + 'static) {
        let time = Arc::new(AtomicI64::new(start));
        let read = time.clone();
        (time, move || read.load(Ordering::SeqCst))
    }

    fn memory_repo() -> Repository {
        Repository::new(Arc::new(MemoryStore::new()), CompressSettings::default())
    }

    async fn stored(repo: &Repository) -> Option<LockInfo> {
        read_lock(repo).await.expect("read lock")
    }

    /// Polls `cond` for up to five seconds of real time.
    async fn eventually<F: std::future::Future<Output = bool>>(mut cond: impl FnMut() -> F) {
        for _ in 0..100 {
            if cond().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition not reached within five seconds");
    }

    #[tokio::test]
    async fn a_held_lock_refuses_a_second_holder_until_released() {
        let repo = memory_repo();
        let (_time, now) = clock(T0);
        let first = RepoLock::acquire(&repo, "backup", Duration::from_secs(60), now)
            .await
            .expect("first acquire");
        assert_eq!(first.info().command, "backup");
        assert_eq!(first.info().pid, std::process::id());
        assert_eq!(first.info().acquired_at, T0);
        assert_eq!(first.info().lease_until, T0 + 60);
        assert_eq!(stored(&repo).await.as_ref(), Some(first.info()));

        let (_time, now) = clock(T0 + 10);
        let err = RepoLock::acquire(&repo, "expire", Duration::from_secs(60), now)
            .await
            .unwrap_err();
        let LockError::Held { info, repo: name } = &err else {
            panic!("expected Held, got {err}");
        };
        assert_eq!(info, first.info());
        assert_eq!(name, "memory");
        let message = err.to_string();
        assert!(
            message.starts_with("repository memory is locked by \"backup\" on host \""),
            "{message}"
        );
        assert!(
            message.contains(&format!("(pid {})", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains(&format!("host \"{}\"", first.info().host)),
            "{message}"
        );
        assert!(
            message.contains(&format!("acquired at {}", unix_time(T0))),
            "{message}"
        );
        assert!(
            message.contains("acquired at 2026-02-02T02:40:00Z"),
            "{message}"
        );
        assert!(
            message.contains(&format!("lease until {}", unix_time(T0 + 60))),
            "{message}"
        );
        assert!(
            message.contains("\nHINT: another walvault backup, expire or copy is running; if that process is gone, the lock is taken over automatically: at once on its own host, from another host after its lease ends at 2026-02-02T02:41:00Z"),
            "{message}"
        );

        first.release().await.expect("release");
        assert_eq!(stored(&repo).await, None);
        let (_time, now) = clock(T0 + 20);
        let second = RepoLock::acquire(&repo, "expire", Duration::from_secs(60), now)
            .await
            .expect("acquire after release");
        assert_ne!(second.info().owner_id, info.owner_id);
        second.release().await.expect("release");
    }

    #[tokio::test]
    async fn a_stale_lock_is_taken_over_and_its_old_holder_leaves_it_alone() {
        let repo = memory_repo();
        let (time, now) = clock(T0);
        let old = RepoLock::acquire(&repo, "backup", Duration::from_secs(60), now)
            .await
            .expect("acquire");
        // Its holder hangs: the clock passes the end of its lease, which is
        // the first stale moment.
        time.store(T0 + 60 + MAX_CLOCK_SKEW_SECS, Ordering::SeqCst);
        let now = {
            let time = time.clone();
            move || time.load(Ordering::SeqCst)
        };
        let new = RepoLock::acquire(&repo, "expire", Duration::from_secs(60), now)
            .await
            .expect("takeover");
        assert_ne!(new.info().owner_id, old.info().owner_id);
        assert_eq!(new.info().acquired_at, T0 + 60 + MAX_CLOCK_SKEW_SECS);
        let held = stored(&repo).await.expect("a lock");
        assert_eq!(held.owner_id, new.info().owner_id);
        assert_eq!(held.command, "expire");

        // The old holder's release must not delete the new holder's lock.
        old.release().await.expect("release old");
        assert_eq!(
            stored(&repo).await.map(|l| l.owner_id),
            Some(new.info().owner_id.clone())
        );
        new.release().await.expect("release new");
        assert_eq!(stored(&repo).await, None);
    }

    #[tokio::test]
    async fn one_second_before_its_lease_ends_a_lock_is_still_held() {
        let repo = memory_repo();
        let (_time, now) = clock(T0);
        let lock = RepoLock::acquire(&repo, "backup", Duration::from_secs(60), now)
            .await
            .expect("acquire");
        let (_time, now) = clock(T0 + 59);
        let err = RepoLock::acquire(&repo, "expire", Duration::from_secs(60), now)
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        lock.release().await.expect("release");
    }

    #[tokio::test]
    async fn confirm_sees_a_lock_taken_by_someone_else() {
        let repo = memory_repo();
        let (_time, now) = clock(T0);
        let lock = RepoLock::acquire(&repo, "expire", Duration::from_secs(60), now)
            .await
            .unwrap();
        assert!(lock.confirm().await.unwrap());
        repo.store().delete(&lock_key()).await.unwrap();
        assert!(!lock.confirm().await.unwrap(), "a deleted lock is not ours");
        lock.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_renewed_lock_is_not_stale() {
        let repo = memory_repo();
        let (time, now) = clock(T0);
        // Renewed every second of real time.
        let lock = RepoLock::acquire(&repo, "backup", Duration::from_secs(3), now)
            .await
            .expect("acquire");
        assert_eq!(lock.info().lease_until, T0 + 3);
        time.store(T0 + 2, Ordering::SeqCst);
        eventually(|| async { stored(&repo).await.map(|l| l.lease_until) == Some(T0 + 5) }).await;

        // Past the original lease, within the renewed one.
        let (_other_time, now) = clock(T0 + 4);
        let err = RepoLock::acquire(&repo, "expire", Duration::from_secs(3), now)
            .await
            .unwrap_err();
        let LockError::Held { info, .. } = err else {
            panic!("expected Held, got {err}");
        };
        assert_eq!(info.owner_id, lock.info().owner_id);
        assert_eq!(info.acquired_at, T0);
        assert!(!lock.is_lost());
        lock.release().await.expect("release");
    }

    /// A lock whose holder ran on this host and is gone (killed -9) is
    /// taken over at once, whatever its lease; one whose holder runs, or
    /// ran elsewhere, is held.
    #[tokio::test]
    async fn a_lock_of_a_dead_process_on_this_host_is_taken_over_at_once() {
        let repo = memory_repo();
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead_pid = child.id();
        child.wait().expect("wait");
        let held_by = |host: String, pid: u32, proc_start: Option<u64>| LockInfo {
            owner_id: format!("{host}-{pid}"),
            command: "copy".to_string(),
            host,
            pid,
            acquired_at: T0,
            lease_until: T0 + 600,
            proc_start,
        };
        let me = std::process::id();
        for (holder, taken) in [
            (held_by(host_name(), dead_pid, Some(1)), true),
            (
                held_by(host_name(), me, crate::repo::proc_start_time(me)),
                false,
            ),
            // The pid is in use, by a process that started at another time.
            (held_by(host_name(), me, Some(1)), true),
            (held_by("elsewhere".to_string(), dead_pid, None), false),
        ] {
            let _ = repo.store().delete(&lock_key()).await;
            assert!(put_lock(&repo, &holder, PutMode::Create)
                .await
                .expect("put"));
            let (_time, now) = clock(T0);
            let got = RepoLock::acquire(&repo, "backup", Duration::from_secs(60), now).await;
            assert_eq!(got.is_ok(), taken, "{holder:?}");
            if let Ok(lock) = got {
                lock.release().await.expect("release");
            }
        }
    }

    #[tokio::test]
    async fn renewal_stops_when_someone_else_holds_the_lock() {
        let repo = memory_repo();
        let (_time, now) = clock(T0);
        let lock = RepoLock::acquire(&repo, "backup", Duration::from_secs(3), now)
            .await
            .expect("acquire");
        let intruder = LockInfo {
            owner_id: "intruder".to_string(),
            command: "expire".to_string(),
            host: "elsewhere".to_string(),
            pid: 1,
            acquired_at: T0,
            lease_until: T0 + 1000,
            proc_start: None,
        };
        assert!(put_lock(&repo, &intruder, PutMode::Overwrite)
            .await
            .expect("put"));
        eventually(|| async { lock.is_lost() }).await;
        // Renewal did not overwrite it, and release leaves it alone.
        assert_eq!(stored(&repo).await.as_ref(), Some(&intruder));
        lock.release().await.expect("release");
        assert_eq!(stored(&repo).await.as_ref(), Some(&intruder));
    }

    #[tokio::test]
    async fn renewal_stops_when_the_lock_is_gone_or_unreadable() {
        for replacement in [None, Some(Bytes::from_static(b"garbage"))] {
            let repo = memory_repo();
            let (_time, now) = clock(T0);
            let lock = RepoLock::acquire(&repo, "backup", Duration::from_secs(3), now)
                .await
                .expect("acquire");
            match &replacement {
                None => repo.store().delete(&lock_key()).await.expect("delete"),
                Some(bytes) => repo
                    .store()
                    .put_bytes(&lock_key(), bytes.clone(), PutMode::Overwrite)
                    .await
                    .expect("put"),
            }
            eventually(|| async { lock.is_lost() }).await;
            // Nothing recreated it.
            let bytes = repo.store().get_bytes(&lock_key()).await.ok();
            assert_eq!(bytes, replacement);
            // Release of a gone lock succeeds; of an unreadable one reports it.
            let released = lock.release().await;
            assert_eq!(released.is_ok(), replacement.is_none());
        }
    }

    #[tokio::test]
    async fn renewal_survives_a_storage_failure() {
        let store = FaultyStore::new(MemoryStore::new());
        let repo = Repository::new(Arc::new(store.clone()), CompressSettings::default());
        let (time, now) = clock(T0);
        let lock = RepoLock::acquire(&repo, "backup", Duration::from_secs(3), now)
            .await
            .expect("acquire");
        store.fail_next(Op::Get, 1, true);
        time.store(T0 + 1, Ordering::SeqCst);
        eventually(|| async {
            store
                .inner()
                .get_bytes(&lock_key())
                .await
                .ok()
                .and_then(|b| {
                    serde_json::from_slice::<LockInfo>(&b)
                        .ok()
                        .map(|l| l.lease_until)
                })
                == Some(T0 + 4)
        })
        .await;
        assert!(!lock.is_lost());
        lock.release().await.expect("release");
    }

    #[tokio::test]
    async fn concurrent_acquires_have_exactly_one_winner() {
        // A store that yields before every operation, so the two acquires
        // interleave step by step.
        let repo = Repository::new(
            Arc::new(TestStore::new(Mode::Yielding)),
            CompressSettings::default(),
        );
        let (time, now_a) = clock(T0);
        let now_b = {
            let time = time.clone();
            move || time.load(Ordering::SeqCst)
        };
        let (a, b) = tokio::join!(
            RepoLock::acquire(&repo, "backup", Duration::from_secs(60), now_a),
            RepoLock::acquire(&repo, "expire", Duration::from_secs(60), now_b),
        );
        let (winner, loser) = match (a, b) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (a, b) => panic!("expected one winner: {:?} / {:?}", a.is_ok(), b.is_ok()),
        };
        let LockError::Held { info, .. } = loser else {
            panic!("expected Held, got {loser}");
        };
        assert_eq!(&info, winner.info());

        // The same when both find a stale lock (its holder crashed) and race
        // to take it over.
        winner.release().await.expect("release");
        let crashed = LockInfo {
            owner_id: "crashed".to_string(),
            command: "backup".to_string(),
            host: "gone".to_string(),
            pid: 1,
            acquired_at: T0,
            lease_until: T0 + 60,
            proc_start: None,
        };
        assert!(put_lock(&repo, &crashed, PutMode::Create)
            .await
            .expect("put"));
        time.store(T0 + 61 + MAX_CLOCK_SKEW_SECS, Ordering::SeqCst);
        let now_a = {
            let time = time.clone();
            move || time.load(Ordering::SeqCst)
        };
        let now_b = {
            let time = time.clone();
            move || time.load(Ordering::SeqCst)
        };
        let (a, b) = tokio::join!(
            RepoLock::acquire(&repo, "backup", Duration::from_secs(60), now_a),
            RepoLock::acquire(&repo, "expire", Duration::from_secs(60), now_b),
        );
        let (winner, loser) = match (a, b) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (a, b) => panic!("expected one winner: {:?} / {:?}", a.is_ok(), b.is_ok()),
        };
        assert!(matches!(loser, LockError::Held { .. }), "{loser}");
        assert_eq!(
            stored(&repo).await.map(|l| l.owner_id),
            Some(winner.info().owner_id.clone())
        );
        winner.release().await.expect("release");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_a_lock_releases_it() {
        let repo = memory_repo();
        let (_time, now) = clock(T0);
        let lock = RepoLock::acquire(&repo, "backup", Duration::from_secs(60), now)
            .await
            .expect("acquire");
        drop(lock);
        eventually(|| async { stored(&repo).await.is_none() }).await;
    }

    #[test]
    fn a_lock_dropped_outside_a_runtime_stays_until_its_lease_ends() {
        let repo = memory_repo();
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        };
        let (time, now) = clock(T0);
        let rt = runtime();
        let lock = rt
            .block_on(RepoLock::acquire(
                &repo,
                "backup",
                Duration::from_secs(60),
                now,
            ))
            .expect("acquire");
        let owner_id = lock.info().owner_id.clone();
        drop(rt);
        drop(lock);
        let rt = runtime();
        let left = rt.block_on(stored(&repo)).map(|l| l.owner_id);
        assert_eq!(left, Some(owner_id));
        time.store(T0 + 60 + MAX_CLOCK_SKEW_SECS, Ordering::SeqCst);
        let now = move || time.load(Ordering::SeqCst);
        let next = rt
            .block_on(RepoLock::acquire(
                &repo,
                "backup",
                Duration::from_secs(60),
                now,
            ))
            .expect("takeover");
        rt.block_on(next.release()).expect("release");
    }

    #[tokio::test]
    async fn bad_leases_stores_and_locks_are_reported() {
        let repo = memory_repo();
        let (_time, now) = clock(T0);
        let err = RepoLock::acquire(&repo, "backup", Duration::from_millis(999), now)
            .await
            .unwrap_err();
        assert!(
            matches!(err, LockError::LeaseTooShort { lease_ms: 999 }),
            "{err}"
        );
        assert!(err.to_string().contains("999 ms"));
        assert!(err.to_string().contains("\nHINT: "));

        repo.store()
            .put_bytes(
                &lock_key(),
                Bytes::from_static(b"{\"owner_id\":"),
                PutMode::Create,
            )
            .await
            .expect("put");
        let (_time, now) = clock(T0);
        let err = RepoLock::acquire(&repo, "backup", Duration::from_secs(60), now)
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::Corrupt { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with("lock \"lock/repository.lock\" in memory is unreadable: "),
            "{message}"
        );
        assert!(message.contains("\nHINT: "), "{message}");

        let store = FaultyStore::new(MemoryStore::new());
        let faulty = Repository::new(Arc::new(store.clone()), CompressSettings::default());
        store.fail_next(Op::Commit, 1, false);
        let (_time, now) = clock(T0);
        let err = RepoLock::acquire(&faulty, "backup", Duration::from_secs(60), now)
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::Storage(_)), "{err}");

        // A lock that vanishes every time it is looked at.
        let phantom = Repository::new(
            Arc::new(TestStore::new(Mode::Phantom)),
            CompressSettings::default(),
        );
        let (_time, now) = clock(T0);
        let err = RepoLock::acquire(&phantom, "backup", Duration::from_secs(60), now)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LockError::Contended {
                    rounds: MAX_ROUNDS,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("\nHINT: "));
    }

    #[tokio::test]
    async fn a_takeover_starts_over_when_the_stale_lock_changes() {
        // The stale lock is replaced between the first read and the re-read
        // (Mode::Swap replaces it at the second read): the acquire starts
        // over and finds a live lock.
        let store = TestStore::new(Mode::Swap);
        let repo = Repository::new(Arc::new(store.clone()), CompressSettings::default());
        let stale = LockInfo {
            owner_id: "stale".to_string(),
            command: "backup".to_string(),
            host: "gone".to_string(),
            pid: 1,
            acquired_at: T0 - 100,
            lease_until: T0 - 40 - MAX_CLOCK_SKEW_SECS,
            proc_start: None,
        };
        assert!(put_lock(&repo, &stale, PutMode::Create).await.expect("put"));
        let (_time, now) = clock(T0);
        let err = RepoLock::acquire(&repo, "expire", Duration::from_secs(60), now)
            .await
            .unwrap_err();
        let LockError::Held { info, .. } = err else {
            panic!("expected Held, got {err}");
        };
        assert_eq!(info.owner_id, "fresh");
    }

    #[test]
    fn owner_ids_are_unique_and_times_print() {
        let a = new_owner_id();
        let b = new_owner_id();
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{:x}-", std::process::id())));
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-'));
        assert!(!host_name().is_empty());
        assert_eq!(unix_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(unix_time(i64::MAX), format!("unix time {}", i64::MAX));
        assert_eq!(lock_key().as_str(), "lock/repository.lock");
        assert!(unix_now() > T0);
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// Yield to the scheduler before each operation.
        Yielding,
        /// Create-only puts of the lock always find one; reads never do.
        Phantom,
        /// The second read of the lock finds it replaced by a live one.
        Swap,
    }

    #[derive(Debug, Clone)]
    struct TestStore {
        inner: MemoryStore,
        mode: Mode,
        reads: Arc<AtomicU64>,
    }

    impl TestStore {
        fn new(mode: Mode) -> TestStore {
            TestStore {
                inner: MemoryStore::new(),
                mode,
                reads: Arc::default(),
            }
        }

        async fn before(&self) {
            if self.mode == Mode::Yielding {
                tokio::task::yield_now().await;
            }
        }
    }

    #[async_trait]
    impl ObjectStore for TestStore {
        async fn get(&self, key: &Key) -> crate::storage::Result<ObjectReader> {
            self.before().await;
            match self.mode {
                Mode::Phantom => return Err(StorageError::NotFound { key: key.clone() }),
                Mode::Swap if self.reads.fetch_add(1, Ordering::SeqCst) == 1 => {
                    let fresh = LockInfo {
                        owner_id: "fresh".to_string(),
                        command: "backup".to_string(),
                        host: "here".to_string(),
                        pid: 2,
                        acquired_at: T0,
                        lease_until: T0 + 60,
                        proc_start: None,
                    };
                    let json = serde_json::to_vec(&fresh).expect("serializes");
                    self.inner.overwrite_raw(key, Bytes::from(json));
                }
                _ => {}
            }
            self.inner.get(key).await
        }

        async fn get_range(
            &self,
            key: &Key,
            offset: u64,
            len: u64,
        ) -> crate::storage::Result<Bytes> {
            self.before().await;
            self.inner.get_range(key, offset, len).await
        }

        async fn head(&self, key: &Key) -> crate::storage::Result<ObjectMeta> {
            self.before().await;
            self.inner.head(key).await
        }

        async fn put(
            &self,
            key: &Key,
            mode: PutMode,
        ) -> crate::storage::Result<Box<dyn ObjectWriter>> {
            self.before().await;
            if self.mode == Mode::Phantom && mode == PutMode::Create {
                return Err(StorageError::AlreadyExists { key: key.clone() });
            }
            self.inner.put(key, mode).await
        }

        async fn list(&self, prefix: Option<&str>) -> crate::storage::Result<Vec<ObjectMeta>> {
            self.before().await;
            self.inner.list(prefix).await
        }

        async fn delete(&self, key: &Key) -> crate::storage::Result<()> {
            self.before().await;
            self.inner.delete(key).await
        }

        fn describe(&self) -> String {
            "test".to_string()
        }
    }

    /// A lease written by a host whose clock runs behind ours: ended by our
    /// clock, but less than the allowed skew ago. The lock is still held.
    #[tokio::test]
    async fn a_lease_within_the_clock_skew_is_still_held() {
        let repo = memory_repo();
        let (time, now) = clock(T0);
        let held = RepoLock::acquire(&repo, "backup", Duration::from_secs(60), now)
            .await
            .expect("acquire");
        time.store(T0 + 60 + MAX_CLOCK_SKEW_SECS - 1, Ordering::SeqCst);
        let later = {
            let time = time.clone();
            move || time.load(Ordering::SeqCst)
        };
        let err = RepoLock::acquire(&repo, "expire", Duration::from_secs(60), later)
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        held.release().await.expect("release");
    }
}
