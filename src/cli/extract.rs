//! `walvault extract --db NAME [--table T ...] --target-time T --into CONNINFO`.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::GlobalArgs;
use crate::exit::Exit;
use crate::extract::{run_extract, ExtractError, ExtractOptions};
use crate::verify::restore::RestoreVerifyOptions;

use super::logging::report_error;

#[derive(Debug, Clone, clap::Args)]
pub struct ExtractArgs {
    /// The database to bring back
    #[arg(long, value_name = "NAME")]
    pub db: String,

    /// Only this table (pg_dump -t pattern); repeat for more [default: the whole database]
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,

    /// The moment to bring it back from
    #[arg(long, value_name = "TIME")]
    pub target_time: String,

    /// The running cluster to load it into (a libpq connection string or URI)
    #[arg(long, value_name = "CONNINFO")]
    pub into: String,

    /// The new database's name on the target [default: NAME_at_<target time>]
    #[arg(long = "as", value_name = "NAME", conflicts_with = "replace")]
    pub new_name: Option<String>,

    /// Load into NAME itself on the target, replacing what the dump holds (tables of the same name are dropped first)
    #[arg(long)]
    pub replace: bool,

    /// Where the scratch restore goes [default: the temp dir]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// PostgreSQL's bin directory for the scratch server, pg_dump and pg_restore [default: /usr/lib/postgresql/<major>/bin]
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,

    /// When run as root: the user the scratch server runs as
    #[arg(long, default_value = "postgres", value_name = "USER")]
    pub run_as: String,

    /// How long recovery may take
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub timeout_secs: u64,
}

pub async fn run(program: &str, global: &GlobalArgs, args: &ExtractArgs) -> Exit {
    let (settings, repo) = match super::settings_and_repository(program, global) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let at = match crate::restore::target::parse_target_time(&args.target_time) {
        Ok(t) => t,
        Err(e) => {
            report_error(program, &e);
            return Exit::Usage;
        }
    };
    let opts = ExtractOptions {
        db: args.db.clone(),
        tables: args.tables.clone(),
        into: args.into.clone(),
        new_name: args.new_name.clone(),
        replace: args.replace,
        scratch: RestoreVerifyOptions {
            work_dir: args.work_dir.clone(),
            pg_bin: args.pg_bin.clone(),
            run_as: args.run_as.clone(),
            restore_command: super::restore::restore_command(global, &settings, true),
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            timeout: Duration::from_secs(args.timeout_secs),
            target: crate::restore::target::RecoveryTarget::Time(at),
            checks: Vec::new(),
            check_db: args.db.clone(),
        },
    };
    let steps = std::sync::atomic::AtomicUsize::new(0);
    let progress = |step: &str| {
        let n = steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        println!("[{n}] {step}");
    };
    match run_extract(&repo, &opts, &progress).await {
        Ok(r) => {
            println!(
                "extracted {} from backup {} as of {at} into database \"{}\" on the target in {:.1}s",
                if args.tables.is_empty() {
                    format!("database \"{}\"", args.db)
                } else {
                    format!("{} of \"{}\"", args.tables.join(", "), args.db)
                },
                r.backup_label,
                r.database,
                r.duration_secs
            );
            Exit::Ok
        }
        Err(e) => {
            report_error(program, &e);
            match e {
                ExtractError::Exists { .. } | ExtractError::NoTarget(_) => Exit::Usage,
                ExtractError::Target { .. } => Exit::Usage,
                ExtractError::Scratch(crate::verify::restore::RestoreVerifyError::Repo(r)) => {
                    super::wal::repo_exit(&r)
                }
                _ => Exit::Failed,
            }
        }
    }
}
