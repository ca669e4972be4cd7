//! `walvault extract --db NAME [--table T ...] --target-time T --into CONNINFO`.

use crate::config::GlobalArgs;
use crate::exit::Exit;
use crate::extract::{run_extract, ExtractError, ExtractOptions};

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

    #[command(flatten)]
    pub scratch: super::verify::ScratchArgs,
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
        scratch: args.scratch.options(
            global,
            &settings,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            crate::restore::target::RecoveryTarget::Time(at),
        ),
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
