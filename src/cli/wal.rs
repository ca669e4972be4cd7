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
}

pub(crate) fn repo_exit(e: &RepoError) -> Exit {
    match e {
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

pub async fn run_push(program: &str, global: &GlobalArgs, args: &PushArgs) -> Exit {
    let started = Instant::now();
    let repo = match super::open_repository(program, global) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let data_dir = args.pgdata.clone().unwrap_or_else(|| PathBuf::from("."));
    let path = if args.path.is_relative() {
        data_dir.join(&args.path)
    } else {
        args.path.clone()
    };
    match archive::push(&repo, &path, &data_dir).await {
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
            match &e {
                PushError::BadInput { .. } => Exit::BadInput,
                PushError::Conflict { .. } => Exit::Conflict,
                PushError::Repo { source, .. } => repo_exit(source),
            }
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
    let repo = match settings.open_repository() {
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
    match archive::fetch(&repo, &args.name, &dest, opts).await {
        Ok(FetchOutcome::Restored(info)) => {
            tracing::info!(wal = %args.name, raw_bytes = info.raw_size, ms = started.elapsed().as_millis() as u64, "restored");
            Exit::Ok
        }
        Ok(FetchOutcome::NotFound) => {
            tracing::debug!(wal = %args.name, "not in the repository");
            Exit::NotFound
        }
        Err(e) => {
            let ordinary = match &e {
                FetchError::BadName { .. } => Exit::BadInput,
                FetchError::Repository { source, .. } if source.is_corruption() => Exit::Corrupt,
                FetchError::Repository {
                    source: ObjectError::Storage(StorageError::Config(_)),
                    ..
                } => Exit::Usage,
                FetchError::Repository { .. } => Exit::Storage,
                FetchError::NoRepository { source, .. } => repo_exit(source),
                FetchError::Destination { .. } => Exit::Failed,
            };
            fail(ordinary, &e)
        }
    }
}
