//! The command line: clap types, one module per subcommand, and the
//! mapping of results to exit codes ([`crate::exit::Exit`]). The binaries in
//! `bin/` call [`walvault_main`], [`push_main`] and [`fetch_main`] and
//! nothing else.

use std::process::ExitCode;

use clap::Parser;

use crate::config::{GlobalArgs, Settings};
use crate::exit::Exit;

pub mod logging;
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
    /// Archive one WAL file (what walvault-push does; for archive_command)
    WalPush(wal::PushArgs),
    /// Restore one WAL file (what walvault-fetch does; for restore_command)
    WalFetch(wal::FetchArgs),
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

fn parse_or_exit<P: Parser>(program: &str) -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| {
        let _ = e.print();
        use clap::error::ErrorKind;
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
            _ => {
                let _ = program;
                Exit::Usage.into()
            }
        }
    })
}

pub fn push_main() -> ExitCode {
    const PROGRAM: &str = "walvault-push";
    let cli: PushCli = match parse_or_exit(PROGRAM) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    logging::init(PROGRAM, cli.global.verbose);
    let runtime = match small_runtime() {
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
    let cli: FetchCli = match parse_or_exit(PROGRAM) {
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
    let runtime = match small_runtime() {
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
    let cli: Cli = match parse_or_exit(PROGRAM) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    logging::init(PROGRAM, cli.global.verbose);
    match cli.command {
        Command::WalPush(args) => match small_runtime() {
            Ok(rt) => rt
                .block_on(wal::run_push(PROGRAM, &cli.global, &args))
                .into(),
            Err(_) => Exit::Failed.into(),
        },
        Command::WalFetch(args) => match small_runtime() {
            Ok(rt) => rt
                .block_on(wal::run_fetch(PROGRAM, &cli.global, &args))
                .into(),
            Err(_) => Exit::RecoveryMustStop.into(),
        },
    }
}

/// Resolves settings, reporting a failure as a usage error.
pub(crate) fn settings(program: &str, global: &GlobalArgs) -> Result<Settings, Exit> {
    Settings::resolve(global).map_err(|e| {
        logging::report_error(program, &e);
        Exit::Usage
    })
}
