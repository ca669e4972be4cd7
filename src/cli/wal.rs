//! `wal-push` and `wal-fetch` (also the walvault-push and walvault-fetch
//! binaries): arguments, and the exit status each outcome gets.

use std::path::PathBuf;
use std::time::Instant;

use crate::archive::{self, FetchError, FetchOptions, FetchOutcome, PushError, PushOutcome};
use crate::config::GlobalArgs;
use crate::exit::Exit;
use crate::repo::{ObjectError, RepoError};
use crate::storage::StorageError;

use super::logging::report_error;

#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// The WAL file to archive (%p), relative to the data directory
    #[arg(value_name = "WAL_PATH")]
    pub path: PathBuf,

    /// The data directory (default: the current directory, as archive_command runs)
    #[arg(long, short = 'D', value_name = "DIR")]
    pub pgdata: Option<PathBuf>,

    /// Internal: run as the asynchronous archive worker (walvault-push
    /// starts it; never part of archive_command)
    #[arg(long = "internal-async-worker", hide = true)]
    pub async_worker: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FetchArgs {
    /// The WAL file to restore (%f)
    #[arg(value_name = "WAL_NAME")]
    pub name: String,

    /// Where to write it (%p), relative to the data directory
    #[arg(value_name = "DEST_PATH")]
    pub dest: PathBuf,

    /// The data directory, to detect standby mode (default: the current directory)
    #[arg(long, short = 'D', value_name = "DIR")]
    pub pgdata: Option<PathBuf>,

    /// Internal: run as the prefetch worker (walvault-fetch starts it;
    /// never part of restore_command)
    #[arg(long = "internal-prefetch-worker", hide = true)]
    pub prefetch_worker: bool,
}

pub(crate) fn repo_exit(e: &RepoError) -> Exit {
    match e {
        RepoError::Storage(StorageError::Key(_))
        | RepoError::Object(ObjectError::Storage(StorageError::Key(_))) => Exit::Key,
        RepoError::Storage(StorageError::Corrupt { .. })
        | RepoError::Object(ObjectError::Storage(StorageError::Corrupt { .. })) => Exit::Corrupt,
        RepoError::Storage(_) | RepoError::Object(ObjectError::Storage(_)) => Exit::Storage,
        RepoError::Object(o) if o.is_corruption() => Exit::Corrupt,
        RepoError::Object(_) => Exit::Failed,
        RepoError::HeaderCorrupt { .. }
        | RepoError::FormatTooNew { .. }
        | RepoError::ClusterMismatch { .. }
        | RepoError::SegmentSizeMismatch { .. }
        | RepoError::VersionMismatch { .. } => Exit::WrongRepository,
        RepoError::NotInitialized { .. } => Exit::NotInitialized,
    }
}

/// The exit code of a push failure, in synchronous and asynchronous mode.
pub(crate) fn push_exit(e: &PushError) -> Exit {
    match e {
        PushError::BadInput { .. } => Exit::BadInput,
        PushError::Conflict { .. } => Exit::Conflict,
        PushError::Repo { source, .. } => repo_exit(source),
    }
}

/// The hidden flag that makes walvault-push the asynchronous worker.
pub const ASYNC_WORKER_FLAG: &str = "--internal-async-worker";

/// How long an idle asynchronous worker waits for more work.
const ASYNC_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run_push(program: &str, global: &GlobalArgs, args: &PushArgs) -> Exit {
    let started = Instant::now();
    let settings = match super::settings(program, global) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let repos = match super::archive_repos(&settings) {
        Ok(r) => r,
        Err(e) => {
            report_error(program, &e);
            return Exit::Usage;
        }
    };
    let data_dir = args.pgdata.clone().unwrap_or_else(|| PathBuf::from("."));
    let path = if args.path.is_relative() {
        data_dir.join(&args.path)
    } else {
        args.path.clone()
    };
    if args.async_worker {
        return run_async_worker(program, &settings, repos, &data_dir).await;
    }
    if let Some(cfg) = &settings.archive_async {
        if let Some(exit) = push_async(program, cfg, &repos, &path, &data_dir).await {
            return exit;
        }
    }
    match archive::push_all(&repos, &path, &data_dir, None).await {
        Ok(PushOutcome::Stored(info)) => {
            tracing::info!(
                wal = %args.path.display(),
                raw_bytes = info.raw_size,
                stored_bytes = info.stored_size,
                ms = started.elapsed().as_millis() as u64,
                "archived"
            );
            Exit::Ok
        }
        Ok(PushOutcome::AlreadyArchived) => Exit::Ok,
        Err(e) => {
            report_error(program, &e);
            push_exit(&e)
        }
    }
}

/// The foreground of an asynchronous push: `None` means "push
/// synchronously" (the spool is unusable, or PostgreSQL did not mark this
/// file ready, so no worker would pick it up).
async fn push_async(
    program: &str,
    cfg: &crate::config::AsyncArchive,
    repos: &crate::archive::Repos,
    path: &std::path::Path,
    data_dir: &std::path::Path,
) -> Option<Exit> {
    use crate::archive::spool::{FileIdentity, Spool};
    let name = path.file_name()?.to_str()?;
    let ready = data_dir
        .join("pg_wal/archive_status")
        .join(format!("{name}.ready"));
    if !ready.exists() {
        return None;
    }
    let identity = FileIdentity::of(path).ok()?;
    // The common call (the worker pushed the file ahead) reads one record
    // and writes nothing.
    let spool = Spool::locate(&cfg.spool_path, &repos.describe(), data_dir).ok()?;
    if spool.is_done(name, &identity) {
        return Some(Exit::Ok);
    }
    if let Err(e) = spool.prepare() {
        tracing::warn!(spool = %cfg.spool_path.display(), error = %e, "spool unusable; pushing synchronously");
        return None;
    }
    let call_started = std::time::SystemTime::now();
    let deadline = Instant::now() + cfg.timeout;
    let mut worker: Option<std::process::Child> = None;
    loop {
        if spool.is_done(name, &identity) {
            return Some(Exit::Ok);
        }
        // An error the worker recorded before this call began is about an
        // earlier attempt: the worker tries again.
        if let Some(err) = spool.take_error(name, call_started) {
            report_error(program, &err.message);
            return Some(Exit::from_code(err.code));
        }
        // Start a worker at most once at a time per call: one we started
        // and that still runs is left to start up and take its lock.
        let ours_running = worker
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !ours_running && !spool.worker_running() {
            match start_worker(&spool) {
                Ok(child) => worker = Some(child),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the async worker; pushing synchronously");
                    return None;
                }
            }
        }
        if Instant::now() >= deadline {
            report_error(
                program,
                &format!(
                    "WAL file \"{name}\" was not stored within {}s; the asynchronous worker is still trying (its log: {})\nHINT: PostgreSQL calls again; check the repository (walvault status) and the worker log",
                    cfg.timeout.as_secs(),
                    spool.log_path().display()
                ),
            );
            return Some(Exit::Storage);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Starts the asynchronous worker.
fn start_worker(spool: &crate::archive::spool::Spool) -> std::io::Result<std::process::Child> {
    start_detached(ASYNC_WORKER_FLAG, &spool.log_path())
}

/// This program again, detached from PostgreSQL's process group, with the
/// same arguments, environment and directory plus the hidden `flag`; its
/// output goes to `log`.
fn start_detached(flag: &str, log: &std::path::Path) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1))
        .arg(flag)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: setsid in the child before exec has no preconditions.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
}

async fn run_async_worker(
    program: &str,
    settings: &crate::config::Settings,
    repos: crate::archive::Repos,
    data_dir: &std::path::Path,
) -> Exit {
    let Some(cfg) = &settings.archive_async else {
        report_error(
            program,
            &"the async worker needs archive_async and spool_path",
        );
        return Exit::Usage;
    };
    let spool =
        match crate::archive::spool::Spool::open(&cfg.spool_path, &repos.describe(), data_dir) {
            Ok(s) => s,
            Err(e) => {
                report_error(program, &format!("open spool: {e}"));
                return Exit::Failed;
            }
        };
    let classify: crate::archive::spool::Classify = |e| push_exit(e).code();
    match crate::archive::spool::run_worker(
        repos,
        spool,
        data_dir.to_path_buf(),
        cfg.jobs,
        cfg.memory_bytes,
        ASYNC_IDLE,
        classify,
    )
    .await
    {
        Ok(()) => Exit::Ok,
        Err(e) => {
            report_error(program, &format!("async worker: {e}"));
            Exit::Failed
        }
    }
}

/// The hidden flag that makes walvault-fetch the prefetch worker.
pub const PREFETCH_WORKER_FLAG: &str = "--internal-prefetch-worker";

/// How long a prefetch worker waits for recovery to ask for more.
const PREFETCH_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The prefetch spool: beside `%p` (in pg_wal), so serving is a rename on
/// one file system even when pg_wal is elsewhere.
fn prefetch_dir(dest: &std::path::Path) -> PathBuf {
    dest.parent()
        .unwrap_or_else(|| std::path::Path::new("."))
        .join(crate::archive::prefetch::SPOOL_DIR)
}

/// Starts a prefetch worker if none runs. Failures only cost speed, so
/// they are logged.
fn ensure_prefetch_worker(p: &crate::archive::prefetch::Prefetch) {
    if !p.worker_running() {
        if let Err(e) = start_detached(PREFETCH_WORKER_FLAG, &p.log_path()).map(drop) {
            tracing::warn!(error = %e, "cannot start the prefetch worker");
        }
    }
}

pub async fn run_fetch(program: &str, global: &GlobalArgs, args: &FetchArgs) -> Exit {
    let data_dir = args.pgdata.clone().unwrap_or_else(|| PathBuf::from("."));
    let standby = archive::fetch::is_standby(&data_dir);
    // Outside standby mode every failure must stop recovery: PostgreSQL
    // reads 1..=125 as "not in the archive" and would end recovery early.
    let fail = |ordinary: Exit, what: &dyn std::fmt::Display| {
        report_error(program, what);
        if standby {
            eprintln!("{program}: DETAIL: standby mode: exiting with status {}; PostgreSQL will ask again", ordinary.code());
            ordinary
        } else {
            eprintln!(
                "{program}: DETAIL: exiting with status {} so that PostgreSQL stops recovery instead of taking the file as missing and ending recovery early",
                Exit::RecoveryMustStop.code()
            );
            Exit::RecoveryMustStop
        }
    };
    let settings = match crate::config::Settings::resolve(global) {
        Ok(s) => s,
        Err(e) => return fail(Exit::Usage, &e),
    };
    // An explicit --repo-index reads that repository alone: how a
    // recovery whose repo1 is gone goes on (README, "Two repositories").
    let repos = match global.repo_index {
        Some(_) => settings
            .open_repository()
            .map(crate::archive::Repos::single),
        None => super::archive_repos(&settings),
    };
    let repos = match repos {
        Ok(r) => r,
        Err(e) => return fail(Exit::Usage, &e),
    };
    let dest = if args.dest.is_relative() {
        data_dir.join(&args.dest)
    } else {
        args.dest.clone()
    };
    // A standby's startup process falls back to streaming replication
    // between restore_command calls, so a failing repository must not hold
    // it: no waiting retries there (the S3 client's own quick retries
    // remain), only outside standby mode, where recovery depends on us.
    let opts = FetchOptions {
        retry_for: if standby {
            std::time::Duration::ZERO
        } else {
            settings.fetch_retry
        },
    };
    let started = Instant::now();
    if args.prefetch_worker {
        let result = crate::archive::prefetch::run_worker(
            repos,
            data_dir.clone(),
            prefetch_dir(&dest),
            settings.restore_prefetch,
            settings.restore_prefetch_bytes,
            PREFETCH_IDLE,
        )
        .await;
        return match result {
            Ok(()) => Exit::Ok,
            Err(e) => {
                report_error(program, &format!("prefetch worker: {e}"));
                Exit::Failed
            }
        };
    }
    let prefetch = (settings.restore_prefetch > 0)
        .then(|| {
            crate::archive::prefetch::Prefetch::open(&prefetch_dir(&dest), &repos.describe()).ok()
        })
        .flatten();
    if let Some(p) = &prefetch {
        // The worker learns of the new position first, so a file it has in
        // flight for an old one is dropped rather than stored.
        match p.call(&args.name) {
            Ok(call) => {
                if call.is_segment() {
                    ensure_prefetch_worker(p);
                }
                // A file the worker is fetching is waited for, not fetched
                // twice.
                let wait = crate::archive::prefetch::wait_limit(standby);
                if call.serve_or_wait(&dest, wait).await {
                    tracing::info!(wal = %args.name, ms = started.elapsed().as_millis() as u64, "restored from the prefetch spool");
                    return Exit::Ok;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot update the prefetch spool"),
        }
    }
    match archive::fetch_any(&repos, &args.name, &dest, opts).await {
        Ok(FetchOutcome::Restored(info)) => {
            tracing::info!(wal = %args.name, raw_bytes = info.raw_size, ms = started.elapsed().as_millis() as u64, "restored");
            Exit::Ok
        }
        Ok(FetchOutcome::NotFound) => {
            tracing::debug!(wal = %args.name, "not in the repository");
            Exit::NotFound
        }
        Err(e) => {
            let ordinary = match e.primary() {
                FetchError::BadName { .. } => Exit::BadInput,
                FetchError::Repository {
                    source: ObjectError::Storage(StorageError::Key(_)),
                    ..
                } => Exit::Key,
                FetchError::Repository { source, .. } if source.is_corruption() => Exit::Corrupt,
                FetchError::Repository {
                    source: ObjectError::Storage(StorageError::Config(_)),
                    ..
                } => Exit::Usage,
                FetchError::Repository { .. } => Exit::Storage,
                FetchError::NoRepository { source, .. } => repo_exit(source),
                FetchError::Destination { .. } | FetchError::Each { .. } => Exit::Failed,
            };
            fail(ordinary, &e)
        }
    }
}
