//! `walvault backup`: arguments and the summary it prints.

use std::path::PathBuf;
use std::time::Duration;

use crate::backup::{run_backup, BackupOptions};
use crate::config::GlobalArgs;
use crate::exit::Exit;

use super::logging::report_error;
use super::{human_bytes, open_repository};

#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The data directory of the cluster to back up
    #[arg(long, short = 'D', env = "PGDATA", value_name = "DIR")]
    pub pgdata: PathBuf,

    /// Connection string or URL (default: the PG* environment variables)
    #[arg(long, short = 'd', value_name = "CONNINFO")]
    pub dbname: Option<String>,

    /// Files copied at once [default: the number of cores]
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,

    /// Seconds to wait for the backup's WAL to reach the repository
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub wal_wait_secs: u64,

    /// Never show a progress bar
    #[arg(long)]
    pub no_progress: bool,
}

pub async fn run(program: &str, global: &GlobalArgs, args: &BackupArgs) -> Exit {
    let repo = match open_repository(program, global) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let opts = BackupOptions {
        pgdata: args.pgdata.clone(),
        dbname: args.dbname.clone(),
        jobs,
        wal_wait: Duration::from_secs(args.wal_wait_secs),
        progress_bar: !args.no_progress,
    };
    match run_backup(&repo, &opts).await {
        Ok(s) => {
            let secs = s.duration.as_secs_f64().max(0.001);
            println!(
                "backup {} complete: {} files, {} of data stored as {} ({:.1}x) in {:.1}s ({}/s); WAL {} to {}",
                s.label,
                s.files,
                human_bytes(s.data_bytes),
                human_bytes(s.stored_bytes),
                s.data_bytes as f64 / s.stored_bytes.max(1) as f64,
                secs,
                human_bytes((s.data_bytes as f64 / secs) as u64),
                s.start_lsn,
                s.stop_lsn
            );
            Exit::Ok
        }
        Err(e) => {
            report_error(program, &e);
            Exit::Failed
        }
    }
}
