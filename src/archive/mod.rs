//! Push and fetch: the logic behind archive_command and restore_command.
//! Both work file by file against a [`Repository`](crate::repo::Repository);
//! exit-status policy lives in `cli`, which maps these results to codes.

pub mod fetch;
pub mod prefetch;
pub mod push;
pub mod spool;

pub use fetch::{fetch, FetchError, FetchOptions, FetchOutcome};
pub use push::{push, PushError, PushOutcome};

/// Takes an exclusive `flock` on `path` (created if missing) without
/// waiting: `None` when another process holds it. The lock lives as long
/// as the returned file; the kernel drops it when the process dies.
pub(crate) fn try_lock(path: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match crate::storage::local::lock_exclusive(&file) {
        Ok(()) => Ok(Some(file)),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A worker's lock: a caller checking whether a worker runs holds it for
/// an instant, so try a few times before concluding another worker runs.
pub(crate) async fn take_worker_lock(
    path: &std::path::Path,
) -> std::io::Result<Option<std::fs::File>> {
    for _ in 0..10 {
        if let Some(file) = try_lock(path)? {
            return Ok(Some(file));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(None)
}
