//! Metrics options shared by backup, expire, verify and status, and the
//! step that writes or pushes them.

use std::path::PathBuf;

use crate::metrics::{push_gateway, write_textfile, Metrics};
use crate::repo::Repository;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// Write Prometheus metrics to this file, atomically (node_exporter textfile collector)
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// Push the metrics to this Prometheus Pushgateway (http://host:9091)
    #[arg(long, value_name = "URL")]
    pub pushgateway: Option<String>,
}

impl MetricsArgs {
    pub fn wanted(&self) -> bool {
        self.metrics_file.is_some() || self.pushgateway.is_some()
    }
}

/// Writes and/or pushes metrics; a failure here is reported but does not
/// change the command's own outcome (the metrics file going stale is what
/// alerting notices).
pub async fn emit(program: &str, args: &MetricsArgs, job: &str, metrics: &Metrics) -> bool {
    let mut ok = true;
    if let Some(path) = &args.metrics_file {
        if let Err(e) = write_textfile(path, metrics) {
            super::logging::report_error(program, &e);
            ok = false;
        }
    }
    if let Some(url) = &args.pushgateway {
        if let Err(e) = push_gateway(url, job, metrics).await {
            super::logging::report_error(program, &e);
            ok = false;
        }
    }
    ok
}

/// Facts about the repository every metrics file carries: the newest
/// complete backup and the newest archived WAL.
pub async fn repository_metrics(repo: &Repository, m: &mut Metrics) {
    if let Ok(backups) = repo.list_backups().await {
        let complete: Vec<_> = backups.iter().filter_map(|b| b.manifest.as_ref()).collect();
        m.gauge(
            "walvault_backups_complete",
            "Complete backups in the repository.",
            complete.len() as f64,
        );
        m.gauge(
            "walvault_backups_incomplete",
            "Incomplete backups (no manifest) in the repository.",
            (backups.len() - complete.len()) as f64,
        );
        if let Some(newest) = complete.last() {
            if let Some(t) = newest.stop_time_ts() {
                m.gauge(
                    "walvault_backup_last_success_timestamp_seconds",
                    "End time of the newest complete backup.",
                    t.as_second() as f64,
                );
            }
            m.gauge(
                "walvault_backup_last_duration_seconds",
                "Duration of the newest complete backup.",
                newest.duration_secs,
            );
            m.gauge(
                "walvault_backup_last_size_bytes",
                "Database size of the newest complete backup.",
                newest.data_size_bytes as f64,
            );
            m.gauge(
                "walvault_backup_last_stored_bytes",
                "Stored size of the newest complete backup.",
                newest.stored_size_bytes as f64,
            );
        }
    }
    if let Ok(wal) = repo.list_wal().await {
        m.gauge(
            "walvault_wal_files",
            "WAL files in the repository.",
            wal.len() as f64,
        );
        m.gauge(
            "walvault_wal_bytes",
            "Stored bytes of WAL in the repository.",
            wal.iter().map(|w| w.stored_bytes).sum::<u64>() as f64,
        );
        if let Some(newest) = wal.iter().map(|w| w.archived_unix_secs).max() {
            m.gauge(
                "walvault_wal_newest_archived_timestamp_seconds",
                "When the newest WAL file was archived (the RPO achieved).",
                newest as f64,
            );
        }
    }
}
