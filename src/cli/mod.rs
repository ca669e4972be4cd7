//! The command line: clap types, one module per subcommand, and the
//! mapping of results to exit codes ([`crate::exit::Exit`]). The binaries in
//! `bin/` call [`walvault_main`], [`push_main`] and [`fetch_main`] and
//! nothing else.

use std::process::ExitCode;

use clap::Parser;

use crate::config::{GlobalArgs, Settings};
use crate::exit::Exit;

pub mod backup;
pub mod check;
pub mod copy;
pub mod expire;
pub mod extract;
pub mod init;
pub mod key;
pub mod list;
pub mod logging;
pub mod ops;
pub mod restore;
pub mod status;
pub mod verify;
pub mod wal;

/// walvault: PostgreSQL WAL archiving and point-in-time recovery.
#[derive(Debug, Parser)]
#[command(name = "walvault", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the repository and bind it to a cluster (once, before archiving)
    Init(init::InitArgs),
    /// Archive one WAL file (what walvault-push does; for archive_command)
    WalPush(wal::PushArgs),
    /// Restore one WAL file (what walvault-fetch does; for restore_command)
    WalFetch(wal::FetchArgs),
    /// Take an online base backup into the repository
    Backup(backup::BackupArgs),
    /// List backups, archived WAL and the recoverable time window
    List(list::ListArgs),
    /// Restore a backup and configure point-in-time recovery
    Restore(restore::RestoreArgs),
    /// Remove backups and WAL no longer needed by the retention policy
    Expire(expire::ExpireArgs),
    /// Health: GOOD, WARNING or CRITICAL (exit 0, 1, 2)
    Status(status::StatusArgs),
    /// Re-read and check everything stored; --restore also restores and starts a cluster
    Verify(verify::VerifyArgs),
    /// Check that the cluster archives into this repository
    Check(check::CheckArgs),
    /// Encryption keys: `key rotate` wraps the data key with a new secret
    Key(key::KeyArgs),
    /// Copy backups and the WAL they need to the other repository (repo1 <-> repo2)
    Copy(copy::CopyArgs),
    /// Bring one database or some tables back from a moment in the past into a running cluster
    Extract(extract::ExtractArgs),
}

/// walvault-push: PostgreSQL's archive_command.
#[derive(Debug, Parser)]
#[command(
    name = "walvault-push",
    version,
    about = "Archive one WAL file: archive_command = 'walvault-push %p'"
)]
struct PushCli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(flatten)]
    args: wal::PushArgs,
}

/// walvault-fetch: PostgreSQL's restore_command.
#[derive(Debug, Parser)]
#[command(
    name = "walvault-fetch",
    version,
    about = "Restore one WAL file: restore_command = 'walvault-fetch %f %p'"
)]
struct FetchCli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(flatten)]
    args: wal::FetchArgs,
}

/// A single-threaded runtime: push and fetch handle one file, and a
/// thread pool would only cost start-up time.
fn small_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The background workers' runtime (asynchronous push, prefetching
/// fetch): threads for moving several files at once, at most two
/// malloc arenas, and large buffers returned to the system when freed. glibc gives each thread that
/// allocates its own arena (up to eight per core), and freed compression
/// and upload buffers stay in them: the worker's peak memory then grows
/// with the threads the blocking pool has started, not with the jobs.
fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // SAFETY: mallopt only changes allocator tuning; no allocation is in
    // flight on another thread yet (the runtime is not built).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // Buffers of 1 MiB and more (compressed chunks, S3 parts) are
        // mapped on their own and unmapped when freed. glibc's default
        // raises this threshold after the first such free, and from then
        // on keeps freed buffers in the heap: after a run of large uploads
        // the worker's memory would stay at its peak.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Parses the command line; help and version exit 0, errors exit 2.
fn parse_or_exit<P: Parser>() -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| {
        let _ = e.print();
        use clap::error::ErrorKind;
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
            _ => Exit::Usage.into(),
        }
    })
}

pub fn push_main() -> ExitCode {
    const PROGRAM: &str = "walvault-push";
    let cli: PushCli = match parse_or_exit() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    logging::init(PROGRAM, cli.global.verbose);
    // The asynchronous worker pushes several files at once: it needs
    // threads; a single push does not.
    let runtime = if cli.args.async_worker {
        worker_runtime()
    } else {
        small_runtime()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            logging::report_error(PROGRAM, &format!("start runtime: {e}"));
            return Exit::Failed.into();
        }
    };
    runtime
        .block_on(wal::run_push(PROGRAM, &cli.global, &cli.args))
        .into()
}

pub fn fetch_main() -> ExitCode {
    const PROGRAM: &str = "walvault-fetch";
    let cli: FetchCli = match parse_or_exit() {
        Ok(cli) => cli,
        // A mangled restore_command must not read as "file missing".
        Err(code) => {
            return if code == ExitCode::SUCCESS {
                code
            } else {
                Exit::RecoveryMustStop.into()
            }
        }
    };
    logging::init(PROGRAM, cli.global.verbose);
    // The prefetch worker fetches several files at once: it needs threads.
    let runtime = if cli.args.prefetch_worker {
        worker_runtime()
    } else {
        small_runtime()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            logging::report_error(PROGRAM, &format!("start runtime: {e}"));
            return Exit::RecoveryMustStop.into();
        }
    };
    runtime
        .block_on(wal::run_fetch(PROGRAM, &cli.global, &cli.args))
        .into()
}

pub fn walvault_main() -> ExitCode {
    const PROGRAM: &str = "walvault";
    let cli: Cli = match parse_or_exit() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    logging::init(PROGRAM, cli.global.verbose);
    match cli.command {
        Command::WalPush(args) => match if args.async_worker {
            worker_runtime()
        } else {
            small_runtime()
        } {
            Ok(rt) => rt
                .block_on(wal::run_push(PROGRAM, &cli.global, &args))
                .into(),
            Err(_) => Exit::Failed.into(),
        },
        Command::WalFetch(args) => match if args.prefetch_worker {
            worker_runtime()
        } else {
            small_runtime()
        } {
            Ok(rt) => rt
                .block_on(wal::run_fetch(PROGRAM, &cli.global, &args))
                .into(),
            Err(_) => Exit::RecoveryMustStop.into(),
        },
        command => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    logging::report_error(PROGRAM, &format!("start runtime: {e}"));
                    return Exit::Failed.into();
                }
            };
            runtime
                .block_on(run_command(PROGRAM, &cli.global, command))
                .into()
        }
    }
}

async fn run_command(program: &str, global: &GlobalArgs, command: Command) -> Exit {
    let notified = match &command {
        Command::Backup(_) => Some("backup"),
        Command::Expire(_) => Some("expire"),
        Command::Verify(_) => Some("verify"),
        Command::Copy(_) => Some("copy"),
        _ => None,
    };
    let notify = notified
        .and_then(|_| Settings::resolve(global).ok())
        .filter(|s| s.notify.wanted());
    let Some(settings) = notify else {
        return run_one(program, global, command).await;
    };
    let name = notified.expect("a notified command");
    crate::notify::send_start(&settings.notify).await;
    let started = std::time::Instant::now();
    let exit = run_one(program, global, command).await;
    let repository = settings
        .open_repository()
        .map(|r| r.describe())
        .unwrap_or_else(|_| "(repository not opened)".to_string());
    let event = crate::notify::plan_event(
        name,
        exit == Exit::Ok,
        started.elapsed(),
        &repository,
        &crate::repo::lock::host_name(),
        jiff::Timestamp::now(),
    );
    crate::notify::send_event(&settings.notify, &event).await;
    exit
}

async fn run_one(program: &str, global: &GlobalArgs, command: Command) -> Exit {
    match command {
        Command::WalPush(args) => wal::run_push(program, global, &args).await,
        Command::WalFetch(args) => wal::run_fetch(program, global, &args).await,
        Command::Init(args) => init::run(program, global, &args).await,
        Command::Backup(args) => backup::run(program, global, &args).await,
        Command::List(args) => list::run(program, global, &args).await,
        Command::Restore(args) => restore::run(program, global, &args).await,
        Command::Check(args) => check::run(program, global, &args).await,
        Command::Expire(args) => expire::run(program, global, &args).await,
        Command::Status(args) => status::run(program, global, &args).await,
        Command::Verify(args) => verify::run(program, global, &args).await,
        Command::Key(args) => key::run(program, global, &args).await,
        Command::Copy(args) => copy::run(program, global, &args).await,
        Command::Extract(args) => extract::run(program, global, &args).await,
    }
}

/// Resolves settings and opens the repository they name, reporting a
/// failure as a usage error.
pub(crate) fn settings_and_repository(
    program: &str,
    global: &GlobalArgs,
) -> Result<(Settings, crate::repo::Repository), Exit> {
    let settings = settings(program, global)?;
    let repo = settings.open_repository().map_err(|e| {
        logging::report_error(program, &e);
        Exit::Usage
    })?;
    Ok((settings, repo))
}

/// Every configured repository, for push and fetch: repo1, then repo2.
pub(crate) fn archive_repos(
    settings: &Settings,
) -> Result<crate::archive::Repos, crate::config::ConfigError> {
    if !settings.has_repo2() {
        let first = settings.select(1).expect("repo1");
        return Ok(crate::archive::Repos::single(first.open_repository()?));
    }
    Ok(crate::archive::Repos::new(
        settings
            .open_all()?
            .into_iter()
            .map(|(r, repo)| crate::archive::Member {
                label: format!("repo{}", r.index),
                repo,
                required: r.required,
            })
            .collect(),
    ))
}

/// Opens the configured repository, reporting failures as usage errors.
pub(crate) fn open_repository(
    program: &str,
    global: &GlobalArgs,
) -> Result<crate::repo::Repository, Exit> {
    settings_and_repository(program, global).map(|(_, repo)| repo)
}

/// Takes the repository lock for `command` (backup, expire, copy),
/// reporting a refusal (held by another process) as a failure.
pub(crate) async fn take_lock(
    program: &str,
    repo: &crate::repo::Repository,
    command: &str,
    lease_secs: u64,
) -> Result<crate::repo::lock::RepoLock, Exit> {
    crate::repo::lock::RepoLock::acquire(
        repo,
        command,
        std::time::Duration::from_secs(lease_secs),
        expire::now_secs,
    )
    .await
    .map_err(|e| {
        logging::report_error(program, &e);
        Exit::Failed
    })
}

/// Sizes for people: `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Resolves settings, reporting a failure as a usage error.
pub(crate) fn settings(program: &str, global: &GlobalArgs) -> Result<Settings, Exit> {
    Settings::resolve(global).map_err(|e| {
        logging::report_error(program, &e);
        Exit::Usage
    })
}
