//! `walvault backup`: arguments and the summary it prints.

use std::path::PathBuf;
use std::time::Duration;

use crate::backup::{run_backup, BackupOptions};
use crate::config::GlobalArgs;
use crate::exit::Exit;

use super::human_bytes;
use super::logging::report_error;
use super::ops::{emit, repository_metrics, MetricsArgs};
use crate::metrics::Metrics;

#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The data directory of the cluster to back up
    #[arg(long, short = 'D', env = "PGDATA", value_name = "DIR")]
    pub pgdata: PathBuf,

    /// Connection string or URL (default: the PG* environment variables)
    #[arg(long, short = 'd', value_name = "CONNINFO")]
    pub dbname: Option<String>,

    /// For a backup from a standby: the primary, asked for one WAL switch
    /// after the backup stops so its last WAL segment gets archived now
    #[arg(long, value_name = "CONNINFO")]
    pub primary_dbname: Option<String>,

    /// Files copied at once [default: the number of cores]
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,

    /// Seconds to wait for the backup's WAL to reach the repository
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub wal_wait_secs: u64,

    /// Never show a progress bar
    #[arg(long)]
    pub no_progress: bool,

    /// Lease of the repository lock; a lock left by a crashed process is taken over after it
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub lock_lease_secs: u64,

    /// full copies everything; diff stores what changed since the last full backup, incr what changed since the last backup of any type [default: the config file's backup_type, or full; always full while no full backup exists]
    #[arg(long = "type", env = "WALVAULT_BACKUP_TYPE", value_name = "TYPE")]
    pub backup_type: Option<crate::repo::manifest::BackupType>,

    /// diff and incr: take a file whose size and modification time match the reference's as unchanged without reading it (faster; trusts that nothing changes a file without changing its time)
    #[arg(long)]
    pub trust_mtime: bool,

    /// diff and incr: compare every file's contents with the reference instead of reading only the blocks WAL names (for clusters where an extension writes relation files without WAL)
    #[arg(long)]
    pub compare_contents: bool,

    #[command(flatten)]
    pub metrics: MetricsArgs,
}

pub async fn run(program: &str, global: &GlobalArgs, args: &BackupArgs) -> Exit {
    let (settings, repo) = match super::settings_and_repository(program, global) {
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
        primary_dbname: args.primary_dbname.clone(),
        jobs,
        wal_wait: Duration::from_secs(args.wal_wait_secs),
        progress_bar: !args.no_progress,
        requested_type: args.backup_type,
        default_type: settings.backup_type,
        trust_mtime: args.trust_mtime,
        compare_contents: args.compare_contents,
    };
    // The header first: an uninitialized repository is refused, and the
    // store learns how create-only writes (the lock's) are kept safe.
    if let Err(e) = repo.require_header().await {
        report_error(program, &e);
        return super::wal::repo_exit(&e);
    }
    // One backup or expire at a time per repository.
    let lock = match super::take_lock(program, &repo, "backup", args.lock_lease_secs).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let started = std::time::Instant::now();
    let result = run_backup(&repo, &opts, Some(&lock)).await;
    if let Err(e) = lock.release().await {
        report_error(program, &e);
    }
    if args.metrics.wanted() {
        let mut m = Metrics::new();
        m.gauge(
            "walvault_backup_last_run_timestamp_seconds",
            "When the last backup run ended.",
            super::expire::now_secs() as f64,
        )
        .gauge(
            "walvault_backup_last_run_success",
            "1 if the last backup run succeeded.",
            if result.is_ok() { 1.0 } else { 0.0 },
        )
        .gauge(
            "walvault_backup_last_run_duration_seconds",
            "Duration of the last backup run.",
            started.elapsed().as_secs_f64(),
        );
        repository_metrics(&repo, &mut m).await;
        emit(program, &args.metrics, "walvault_backup", &m).await;
    }
    match result {
        Ok(s) => {
            let secs = s.duration.as_secs_f64().max(0.001);
            let kind = match &s.reference {
                Some(r) => format!("{} on {r}", s.backup_type),
                None => s.backup_type.to_string(),
            };
            crate::notify::record_size(s.stored_bytes);
            println!(
                "backup {} complete ({kind}): {} files, {} of data stored as {} ({:.1}x) in {:.1}s ({}/s); WAL {} to {}",
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
            if let Some(changes) = &s.changes {
                println!("{changes}");
            }
            Exit::Ok
        }
        Err(e) => {
            report_error(program, &e);
            Exit::Failed
        }
    }
}
