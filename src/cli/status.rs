//! `walvault status` and `status --json`: one screen of health, with exit
//! codes 0, 1 and 2 for GOOD, WARNING and CRITICAL (Nagios-style).

use std::time::Duration;

use crate::config::GlobalArgs;
use crate::exit::Exit;
use crate::metrics::Metrics;
use crate::status::{plan_health, read_verify_record, Level, Thresholds};

use super::logging::report_error;
use super::ops::{emit, repository_metrics, MetricsArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,

    /// WARNING when the newest complete backup is older than this
    #[arg(long, default_value_t = 25, value_name = "HOURS")]
    pub backup_warn_hours: u64,

    /// CRITICAL when the newest complete backup is older than this
    #[arg(long, default_value_t = 50, value_name = "HOURS")]
    pub backup_crit_hours: u64,

    /// WARNING when the newest archived WAL is older than this
    #[arg(long, default_value_t = 60, value_name = "MINUTES")]
    pub wal_warn_minutes: u64,

    /// CRITICAL when the newest archived WAL is older than this
    #[arg(long, default_value_t = 360, value_name = "MINUTES")]
    pub wal_crit_minutes: u64,

    /// WARNING when the last verification is older than this (0: do not check verification)
    #[arg(long, default_value_t = 8, value_name = "DAYS")]
    pub verify_stale_days: u64,

    /// The cluster's data directory: also report its archive backlog (WAL
    /// finished but not yet archived, waiting in pg_wal)
    #[arg(long, short = 'D', value_name = "DIR")]
    pub pgdata: Option<std::path::PathBuf>,

    /// Backlog files for WARNING
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub backlog_warn_segments: usize,

    /// Backlog files for CRITICAL
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub backlog_crit_segments: usize,

    /// Age of the oldest unarchived file for WARNING
    #[arg(long, default_value_t = 15, value_name = "MINUTES")]
    pub backlog_warn_minutes: u64,

    /// Age of the oldest unarchived file for CRITICAL
    #[arg(long, default_value_t = 60, value_name = "MINUTES")]
    pub backlog_crit_minutes: u64,

    /// WARNING when the second repository lags the first by more than this
    #[arg(long, default_value_t = 25, value_name = "HOURS")]
    pub offsite_warn_hours: u64,

    /// CRITICAL when the second repository lags the first by more than this
    #[arg(long, default_value_t = 50, value_name = "HOURS")]
    pub offsite_crit_hours: u64,

    #[command(flatten)]
    pub metrics: MetricsArgs,
}

type Loaded = (
    Vec<crate::repo::BackupListing>,
    Vec<crate::repo::WalObject>,
    Option<crate::status::VerifyRecord>,
    Option<crate::status::VerifyRecord>,
);

async fn load(repo: &crate::repo::Repository) -> Result<Loaded, crate::repo::RepoError> {
    let backups = repo.list_backups().await?;
    let wal = repo.list_wal().await?;
    let verify = read_verify_record(repo, "verify").await?;
    let verify_restore = read_verify_record(repo, "verify-restore").await?;
    Ok((backups, wal, verify, verify_restore))
}

pub async fn run(program: &str, global: &GlobalArgs, args: &StatusArgs) -> Exit {
    let started = std::time::Instant::now();
    let (settings, repo) = match super::settings_and_repository(program, global) {
        Ok(x) => x,
        Err(_) => return Exit::Usage,
    };
    let loaded = load(&repo).await;
    let (backups, wal, verify, verify_restore) = match loaded {
        Ok(x) => x,
        Err(e) => {
            report_error(program, &e);
            println!("CRITICAL: repository {} cannot be read", repo.describe());
            // No level can be read back from a repository that cannot be
            // read: told on every run while it lasts.
            if settings.notify.wanted() {
                let host = crate::repo::lock::host_name();
                let message = e.to_string().lines().next().unwrap_or_default().to_string();
                let event = crate::notify::Event {
                    text: format!(
                        "walvault status on {host} ({}): CRITICAL: the repository cannot be read: {message}",
                        repo.describe()
                    ),
                    command: "status".to_string(),
                    result: "CRITICAL".to_string(),
                    duration_secs: started.elapsed().as_secs_f64(),
                    size_bytes: None,
                    repository: repo.describe(),
                    host,
                    message: Some(message),
                    at: jiff::Timestamp::now().to_string(),
                };
                crate::notify::send_event(&settings.notify, &event).await;
            }
            return Exit::Usage;
        }
    };
    let thresholds = Thresholds {
        backup_warn: Duration::from_secs(args.backup_warn_hours * 3600),
        backup_crit: Duration::from_secs(args.backup_crit_hours * 3600),
        wal_warn: Duration::from_secs(args.wal_warn_minutes * 60),
        wal_crit: Duration::from_secs(args.wal_crit_minutes * 60),
        verify_stale: Duration::from_secs(args.verify_stale_days * 86400),
    };
    let mut health = plan_health(
        &backups,
        &wal,
        verify.as_ref(),
        verify_restore.as_ref(),
        &thresholds,
        jiff::Timestamp::now(),
    );
    // Without --repo-index, the second repository too: its own findings,
    // and how far it lags behind the first.
    let mut offsite_lag = None;
    if settings.has_repo2() && global.repo_index.is_none() {
        let second = settings
            .select(2)
            .expect("repo2")
            .open_repository()
            .map_err(|e| e.to_string());
        let loaded = match second {
            Ok(r) => load(&r).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match loaded {
            Ok((b2, w2, v2, vr2)) => {
                let h2 = plan_health(
                    &b2,
                    &w2,
                    v2.as_ref(),
                    vr2.as_ref(),
                    &thresholds,
                    jiff::Timestamp::now(),
                );
                let lag = crate::status::plan_offsite(
                    2,
                    &backups,
                    &wal,
                    &b2,
                    &w2,
                    jiff::Timestamp::now(),
                );
                offsite_lag = Some(lag.lag_secs);
                health = health.with_repository(2, h2).with_offsite(
                    lag,
                    Duration::from_secs(args.offsite_warn_hours * 3600),
                    Duration::from_secs(args.offsite_crit_hours * 3600),
                );
            }
            Err(e) => {
                report_error(program, &format!("repo2: {e}"));
                health = health.with_unreadable(2, &e);
            }
        }
    }
    if let Some(pgdata) = &args.pgdata {
        match crate::archive::spool::measure_backlog(pgdata) {
            Ok(backlog) => {
                health = health.with_backlog(
                    backlog,
                    &crate::status::BacklogThresholds {
                        warn_segments: args.backlog_warn_segments,
                        crit_segments: args.backlog_crit_segments,
                        warn_age: Duration::from_secs(args.backlog_warn_minutes * 60),
                        crit_age: Duration::from_secs(args.backlog_crit_minutes * 60),
                    },
                )
            }
            Err(e) => {
                report_error(
                    program,
                    &format!("read the archive backlog in \"{}\": {e}", pgdata.display()),
                );
                println!(
                    "CRITICAL: the archive backlog of {} cannot be read",
                    pgdata.display()
                );
                return Exit::Usage;
            }
        }
    }
    if settings.notify.wanted() {
        notify_level_change(&repo, &settings.notify, &health, started).await;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&health).expect("health serializes")
        );
    } else {
        println!("{}: {}", health.level, repo.describe());
        if let Some(lag) = &health.offsite {
            println!(
                "  repo2: {} behind repo1",
                crate::status::human_duration(lag.lag_secs)
            );
        }
        for r in &health.reasons {
            println!("  {:<8} {:<11} {}", r.level.as_str(), r.check, r.message);
        }
    }
    if args.metrics.wanted() {
        let mut m = Metrics::new();
        m.gauge(
            "walvault_status_level",
            "Health: 0 GOOD, 1 WARNING, 2 CRITICAL.",
            health.level.exit_code() as f64,
        );
        repository_metrics(&repo, &mut m).await;
        if let Some(lag) = offsite_lag {
            m.gauge(
                "walvault_offsite_lag_seconds",
                "How long the oldest backup or WAL file that repo1 holds and repo2 lacks has waited (0: up to date).",
                lag as f64,
            );
        }
        if let Some(b) = &health.archive_backlog {
            m.gauge(
                "walvault_archive_backlog_segments",
                "WAL files finished but not yet archived (waiting in pg_wal).",
                b.segments as f64,
            )
            .gauge(
                "walvault_archive_backlog_bytes",
                "Bytes of WAL finished but not yet archived.",
                b.bytes as f64,
            )
            .gauge(
                "walvault_archive_backlog_oldest_seconds",
                "How long the oldest unarchived WAL file has waited.",
                b.oldest_age_secs as f64,
            );
        }
        if let Some(v) = &verify_restore {
            if let Ok(t) = v.finished_at.parse::<jiff::Timestamp>() {
                m.gauge(
                    "backup_restore_verify_last_timestamp",
                    "When the last restore verification finished.",
                    t.as_second() as f64,
                );
            }
            m.gauge(
                "backup_restore_verify_success",
                "1 if the last restore verification succeeded.",
                if v.success { 1.0 } else { 0.0 },
            )
            .gauge(
                "backup_restore_verify_duration_seconds",
                "Duration of the last restore verification.",
                v.duration_secs,
            );
        }
        emit(program, &args.metrics, "walvault_status", &m).await;
    }
    match health.level {
        Level::Good => Exit::Ok,
        Level::Warning => Exit::NotFound,
        Level::Critical => Exit::Usage,
    }
}

/// The level the last status run saw, kept in the repository so that a
/// change is told once, whichever machine runs status.
#[derive(serde::Serialize, serde::Deserialize)]
struct LevelRecord {
    level: String,
    at: String,
}

/// Sends an event when the level differs from the one the last run saw
/// (the first run only records it).
async fn notify_level_change(
    repo: &crate::repo::Repository,
    notify: &crate::notify::NotifySettings,
    health: &crate::status::Health,
    started: std::time::Instant,
) {
    let key = crate::status::verify_record_key("level");
    let before: Option<LevelRecord> = match repo.store().get_bytes(&key).await {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(_) => None,
    };
    let now = health.level.as_str();
    if before.as_ref().is_some_and(|b| b.level == now) {
        return;
    }
    let record = LevelRecord {
        level: now.to_string(),
        at: jiff::Timestamp::now().to_string(),
    };
    let json = serde_json::to_vec_pretty(&record).expect("level records serialize");
    if let Err(e) = repo
        .store()
        .put_bytes(
            &key,
            bytes::Bytes::from(json),
            crate::storage::PutMode::Overwrite,
        )
        .await
    {
        tracing::warn!(error = %e, "cannot record the status level; a change may be told again");
    }
    let Some(before) = before else { return };
    let host = crate::repo::lock::host_name();
    let findings: Vec<String> = health
        .reasons
        .iter()
        .filter(|r| r.level != crate::status::Level::Good)
        .map(|r| r.message.clone())
        .collect();
    let event = crate::notify::Event {
        text: format!(
            "walvault status on {host} ({}): {} -> {now}{}",
            repo.describe(),
            before.level,
            if findings.is_empty() {
                String::new()
            } else {
                format!(": {}", findings.join("; "))
            }
        ),
        command: "status".to_string(),
        result: now.to_string(),
        duration_secs: started.elapsed().as_secs_f64(),
        size_bytes: None,
        repository: repo.describe(),
        host,
        message: (!findings.is_empty()).then(|| findings.join("; ")),
        at: record.at.clone(),
    };
    crate::notify::send_event(notify, &event).await;
}
