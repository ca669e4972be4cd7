//! `walvault verify` and `walvault verify --restore`.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::GlobalArgs;
use crate::exit::Exit;
use crate::metrics::Metrics;
use crate::status::{write_verify_record, VerifyRecord};
use crate::verify::restore::{run_restore_verify, RestoreVerifyOptions};
use crate::verify::run_verify;

use super::human_bytes;
use super::logging::report_error;
use super::ops::{emit, MetricsArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Also restore the newest backup into a scratch directory, start PostgreSQL on it and run amcheck
    #[arg(long)]
    pub restore: bool,

    /// Objects read at once [default: the number of cores]
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,

    #[command(flatten)]
    pub scratch: ScratchArgs,

    /// With --restore: a drill of point-in-time recovery to this time (default: the end of the newest backup)
    #[arg(
        long,
        value_name = "TIME",
        requires = "restore",
        conflicts_with = "random_target"
    )]
    pub target_time: Option<String>,

    /// With --restore: a drill to a random moment between the ends of the oldest and the newest complete backup (logged)
    #[arg(long, requires = "restore")]
    pub random_target: bool,

    /// With --restore: run each statement of FILE on the recovered server; one that fails, or returns other than the `-- expect: VALUE` above it, fails the drill
    #[arg(long, value_name = "FILE", requires = "restore")]
    pub check_sql: Option<PathBuf>,

    /// The database --check-sql runs in
    #[arg(long, default_value = "postgres", value_name = "NAME")]
    pub check_db: String,

    /// Machine-readable output
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// The scratch server of `verify --restore` and `extract`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScratchArgs {
    /// Where the scratch restore goes (with verify: only with --restore) [default: the temp dir]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// PostgreSQL's bin directory for the scratch server (and extract's pg_dump and pg_restore) [default: /usr/lib/postgresql/<major>/bin]
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,

    /// When run as root: the user the scratch server runs as
    #[arg(long, default_value = "postgres", value_name = "USER")]
    pub run_as: String,

    /// How long the scratch server's recovery may take
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub timeout_secs: u64,
}

impl ScratchArgs {
    /// The scratch server's options: a read-only restore_command of
    /// every configured repository, recovering to `target`.
    pub fn options(
        &self,
        global: &GlobalArgs,
        settings: &crate::config::Settings,
        jobs: usize,
        target: crate::restore::target::RecoveryTarget,
    ) -> RestoreVerifyOptions {
        RestoreVerifyOptions {
            work_dir: self.work_dir.clone(),
            pg_bin: self.pg_bin.clone(),
            run_as: self.run_as.clone(),
            restore_command: super::restore::restore_command(global, settings, true),
            jobs,
            timeout: Duration::from_secs(self.timeout_secs),
            target,
            checks: Vec::new(),
            check_db: "postgres".to_string(),
        }
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or(jiff::Timestamp::now())
        .to_string()
}

pub async fn run(program: &str, global: &GlobalArgs, args: &VerifyArgs) -> Exit {
    let (settings, repo) = match super::settings_and_repository(program, global) {
        Ok(x) => x,
        Err(code) => return code,
    };
    // A drill's target and checks are read before anything runs.
    let checks = match &args.check_sql {
        None => Vec::new(),
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| crate::verify::drill::plan_checks(&text))
        {
            Ok(c) => c,
            Err(e) => {
                report_error(program, &format!("--check-sql \"{}\": {e}", path.display()));
                return Exit::Usage;
            }
        },
    };
    let mut target = crate::restore::target::RecoveryTarget::Immediate;
    if let Some(t) = &args.target_time {
        match crate::restore::target::parse_target_time(t) {
            Ok(ts) => target = crate::restore::target::RecoveryTarget::Time(ts),
            Err(e) => {
                report_error(program, &e);
                return Exit::Usage;
            }
        }
    }
    if args.random_target {
        let stops: Vec<jiff::Timestamp> = match repo.list_backups().await {
            Ok(b) => b
                .iter()
                .filter_map(|b| b.manifest.as_ref()?.stop_time_ts())
                .collect(),
            Err(e) => {
                report_error(program, &e);
                return super::wal::repo_exit(&e);
            }
        };
        let (Some(from), Some(to)) = (stops.iter().min(), stops.iter().max()) else {
            report_error(
                program,
                &"--random-target needs a complete backup\nHINT: take one with walvault backup",
            );
            return Exit::Failed;
        };
        // Recovery to a time needs a backup that stopped strictly before
        // it: from a second after the oldest backup's end.
        let from = from
            .checked_add(jiff::SignedDuration::from_secs(1))
            .unwrap_or(*from);
        if from >= *to {
            println!("drill target: the end of backup (one backup: nothing to choose between)");
        } else {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
                ^ u64::from(std::process::id()).rotate_left(32);
            let at = crate::verify::drill::plan_random_target(from, *to, seed);
            tracing::info!(target_time = %at, from = %from, to = %to, "restore drill to a random moment");
            println!("drill target: {at} (random between {from} and {to})");
            target = crate::restore::target::RecoveryTarget::Time(at);
        }
    }
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let started = std::time::Instant::now();
    let mut metrics = Metrics::new();
    let mut failed = false;

    let report = match run_verify(&repo, jobs).await {
        Ok(r) => r,
        Err(e) => {
            report_error(program, &e);
            return match super::wal::repo_exit(&e) {
                Exit::Key => Exit::Key,
                _ => Exit::Storage,
            };
        }
    };
    let duration = started.elapsed().as_secs_f64();
    let problems: Vec<String> = report
        .problems
        .iter()
        .map(|p| format!("{} {}: {}", p.kind, p.subject, p.message))
        .collect();
    let record = VerifyRecord {
        kind: "verify".to_string(),
        finished_at: now_rfc3339(),
        success: report.ok(),
        duration_secs: duration,
        problems: problems.clone(),
        backup_label: None,
        target: None,
        wal_replayed_bytes: None,
        checks_passed: None,
    };
    if let Err(e) = write_verify_record(&repo, &record).await {
        report_error(program, &e);
    }
    let now = jiff::Timestamp::now().as_second() as f64;
    metrics
        .gauge(
            "walvault_verify_last_timestamp_seconds",
            "When the last verify finished.",
            now,
        )
        .gauge(
            "walvault_verify_success",
            "1 if the last verify found nothing broken.",
            if report.ok() { 1.0 } else { 0.0 },
        )
        .gauge(
            "walvault_verify_duration_seconds",
            "Duration of the last verify.",
            duration,
        )
        .gauge(
            "walvault_verify_problems",
            "Problems the last verify found.",
            report.problems.len() as f64,
        );
    if args.json && !args.restore {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        println!(
            "verify: {} objects ({}) read back, {} backups checked, {} problem(s) in {:.1}s",
            report.objects_checked,
            human_bytes(report.bytes_checked),
            report.backups_checked,
            report.problems.len(),
            duration
        );
        for p in &problems {
            println!("  BROKEN {p}");
        }
    }
    failed |= !report.ok();
    if let Some(first) = problems.first() {
        crate::notify::record_error(&format!("verify: {first}"));
    }

    if args.restore {
        let opts = RestoreVerifyOptions {
            checks: checks.clone(),
            check_db: args.check_db.clone(),
            ..args
                .scratch
                .options(global, &settings, jobs, target.clone())
        };
        let started = std::time::Instant::now();
        let result = run_restore_verify(&repo, &opts).await;
        let duration = started.elapsed().as_secs_f64();
        let (success, problems, label) = match &result {
            Ok(r) => (
                r.problems.is_empty(),
                r.problems.clone(),
                Some(r.backup_label.clone()),
            ),
            Err(e) => (
                false,
                vec![e.to_string().lines().next().unwrap_or_default().to_string()],
                None,
            ),
        };
        let record = VerifyRecord {
            kind: "verify-restore".to_string(),
            finished_at: now_rfc3339(),
            success,
            duration_secs: duration,
            problems: problems.clone(),
            backup_label: label,
            target: Some(crate::verify::restore::describe_target(&target)),
            wal_replayed_bytes: result.as_ref().ok().map(|r| r.wal_replayed_bytes),
            checks_passed: result.as_ref().ok().map(|r| r.checks_passed),
        };
        if let Err(e) = write_verify_record(&repo, &record).await {
            report_error(program, &e);
        }
        let now = jiff::Timestamp::now().as_second() as f64;
        metrics
            .gauge(
                "backup_restore_verify_last_timestamp",
                "When the last restore verification finished.",
                now,
            )
            .gauge(
                "backup_restore_verify_success",
                "1 if the last restore verification succeeded.",
                if success { 1.0 } else { 0.0 },
            )
            .gauge(
                "backup_restore_verify_duration_seconds",
                "Duration of the last restore verification.",
                duration,
            );
        match &result {
            Ok(r) => {
                metrics
                    .gauge(
                        "walvault_verify_restore_indexes_checked",
                        "btree indexes amcheck verified.",
                        r.indexes_checked as f64,
                    )
                    .gauge(
                        "walvault_drill_wal_replayed_bytes",
                        "WAL the last restore drill replayed.",
                        r.wal_replayed_bytes as f64,
                    )
                    .gauge(
                        "walvault_drill_checks_passed",
                        "--check-sql statements the last restore drill passed.",
                        r.checks_passed as f64,
                    );
                if let crate::restore::target::RecoveryTarget::Time(t) = &target {
                    metrics.gauge(
                        "walvault_drill_target_timestamp_seconds",
                        "The moment the last restore drill recovered to.",
                        t.as_second() as f64,
                    );
                }
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(r).expect("report serializes")
                    );
                } else {
                    println!(
                        "verify --restore: backup {} restored, recovered to {} ({} of WAL replayed) and checked in {:.1}s: {} check(s) passed, {} databases, {} btree indexes passed amcheck{}",
                        r.backup_label,
                        r.target,
                        human_bytes(r.wal_replayed_bytes),
                        r.duration_secs,
                        r.checks_passed,
                        r.databases_checked,
                        r.indexes_checked,
                        if r.amcheck_unavailable.is_empty() {
                            String::new()
                        } else {
                            format!(" (amcheck unavailable in: {})", r.amcheck_unavailable.join(", "))
                        }
                    );
                    for p in &r.problems {
                        println!("  BROKEN {p}");
                    }
                }
            }
            Err(e) => report_error(program, e),
        }
        failed |= !success;
        if let Some(first) = problems.first() {
            crate::notify::record_error(&format!("verify --restore: {first}"));
        }
    }
    emit(program, &args.metrics, "walvault_verify", &metrics).await;
    if failed {
        Exit::Corrupt
    } else {
        Exit::Ok
    }
}
