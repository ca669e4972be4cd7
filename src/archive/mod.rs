//! Push and fetch: the logic behind archive_command and restore_command.
//! Both work file by file against a [`Repository`](crate::repo::Repository);
//! exit-status policy lives in `cli`, which maps these results to codes.

pub mod fetch;
pub mod prefetch;
pub mod push;
pub mod spool;

pub use fetch::{fetch, fetch_any, FetchError, FetchOptions, FetchOutcome};
pub use push::{push, push_all, PushError, PushOutcome};

use crate::repo::Repository;

/// Removes a file when dropped, unless disarmed: a fetch's temporary file
/// until it is renamed into place, the prefetch spool's markers.
pub(crate) struct RemoveOnDrop(Option<std::path::PathBuf>);

impl RemoveOnDrop {
    pub(crate) fn new(path: std::path::PathBuf) -> RemoveOnDrop {
        RemoveOnDrop(Some(path))
    }

    /// Keeps the file.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One repository that push and fetch work with.
#[derive(Debug, Clone)]
pub struct Member {
    /// `repo1` or `repo2`, for messages.
    pub label: String,
    pub repo: Repository,
    /// A push succeeds only once the file is durable here.
    pub required: bool,
}

/// The repositories a push writes to and a fetch reads from, in order:
/// repo1, then repo2 when one is configured.
#[derive(Debug, Clone)]
pub struct Repos(Vec<Member>);

impl Repos {
    /// One repository: what every command but push and fetch works with.
    pub fn single(repo: Repository) -> Repos {
        Repos(vec![Member {
            label: "repo1".to_string(),
            repo,
            required: true,
        }])
    }

    /// At least one member, and the first is required.
    pub fn new(members: Vec<Member>) -> Repos {
        assert!(
            members.first().is_some_and(|m| m.required),
            "repo1 is always required"
        );
        Repos(members)
    }

    pub fn members(&self) -> &[Member] {
        &self.0
    }

    /// Names every member: what the async and prefetch spools are keyed
    /// by, so a spool of another set of repositories is never trusted.
    pub fn describe(&self) -> String {
        match self.0.as_slice() {
            [one] => one.repo.describe(),
            many => many
                .iter()
                .map(|m| {
                    format!(
                        "{}{}",
                        m.repo.describe(),
                        if m.required { "" } else { " (optional)" }
                    )
                })
                .collect::<Vec<_>>()
                .join(" + "),
        }
    }
}

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
