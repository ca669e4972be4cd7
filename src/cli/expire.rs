//! `walvault expire`: retention, under the repository lock.

use std::time::Duration;

use crate::config::GlobalArgs;
use crate::exit::Exit;
use crate::metrics::Metrics;
use crate::retention::{apply_expire, plan_expire, RetentionPolicy};

use super::human_bytes;
use super::logging::report_error;
use super::ops::{emit, repository_metrics, MetricsArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct ExpireArgs {
    /// Keep this many newest complete backups
    #[arg(long, value_name = "N")]
    pub keep_full: Option<usize>,

    /// Keep what is needed to recover to any moment of the last D days
    #[arg(long, value_name = "D")]
    pub keep_days: Option<u32>,

    /// List what would be removed and how much space it frees; remove nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Lease of the repository lock; a lock left by a crashed process is taken over after it
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub lock_lease_secs: u64,

    #[command(flatten)]
    pub metrics: MetricsArgs,
}

pub fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

pub async fn run(program: &str, global: &GlobalArgs, args: &ExpireArgs) -> Exit {
    let repo = match super::open_repository(program, global) {
        Ok(r) => r,
        Err(code) => return code,
    };
    // A backup that lost its lock may still be writing: it renews nothing
    // for a whole lease before its lock counts as stale, so its objects
    // are left alone until they have been quiet for two leases plus the
    // clock skew walvault tolerates between hosts.
    let policy = RetentionPolicy {
        keep_full: args.keep_full,
        keep_days: args.keep_days,
        incomplete_grace_secs: 2 * args.lock_lease_secs as i64
            + crate::repo::lock::MAX_CLOCK_SKEW_SECS,
    };
    // The header first: an uninitialized repository is refused, and the
    // store learns how create-only writes (the lock's) are kept safe.
    if let Err(e) = repo.require_header().await {
        report_error(program, &e);
        return super::wal::repo_exit(&e);
    }
    let lock = if args.dry_run {
        None
    } else {
        match super::take_lock(program, &repo, "expire", args.lock_lease_secs).await {
            Ok(l) => Some(l),
            Err(code) => return code,
        }
    };
    let started = std::time::Instant::now();
    let outcome = async {
        let backups = repo.list_backups().await.map_err(|e| e.to_string())?;
        let wal = repo.list_wal().await.map_err(|e| e.to_string())?;
        let plan = plan_expire(&policy, &backups, &wal, jiff::Timestamp::now())
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(plan)
    }
    .await;
    let plan = match outcome {
        Ok(p) => p,
        Err(e) => {
            report_error(program, &e);
            if let Some(l) = lock {
                let _ = l.release().await;
            }
            return Exit::Failed;
        }
    };
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removing"
    };
    for b in &plan.remove_backups {
        println!(
            "{verb} backup {} ({}): {}",
            b.label,
            human_bytes(b.stored_bytes),
            b.reason
        );
    }
    if let (Some(first), Some(last)) = (plan.remove_wal.first(), plan.remove_wal.last()) {
        println!(
            "{verb} {} WAL files ({}), {} .. {}",
            plan.remove_wal.len(),
            human_bytes(plan.remove_wal.iter().map(|w| w.stored_bytes).sum()),
            first.name,
            last.name
        );
    }
    for label in &plan.kept_incomplete {
        println!(
            "keeping incomplete backup {label}: {}",
            crate::retention::INCOMPLETE_RECENT_REASON
        );
    }
    println!(
        "{}: keeping {} backup(s) ({}); {} freed",
        if args.dry_run { "dry run" } else { "expire" },
        plan.keep_backups.len(),
        plan.keep_backups.join(", "),
        human_bytes(plan.freed_bytes)
    );
    let mut code = Exit::Ok;
    if let Some(l) = &lock {
        // Never delete without the lock: it may have been taken over (its
        // lease ran out while planning, or a concurrent takeover won).
        match l.confirm().await {
            Ok(true) => {
                if let Err(e) = apply_expire(&repo, &plan).await {
                    report_error(program, &e);
                    code = Exit::Storage;
                }
                // What killed pushes, fetches and backups left behind:
                // temporary files whose writer is gone, and multipart
                // uploads older than the incomplete-backup grace.
                let grace = Duration::from_secs(policy.incomplete_grace_secs.max(0) as u64);
                let own = crate::repo::layout::OWN_PREFIXES;
                match repo.store().remove_abandoned(grace, &own).await {
                    Ok(0) => {}
                    Ok(n) => println!("removed {n} leftover(s) of interrupted writes"),
                    Err(e) => report_error(
                        program,
                        &format!("remove leftovers of interrupted writes: {e}"),
                    ),
                }
            }
            Ok(false) => {
                report_error(program, &"the repository lock was lost before anything was removed; nothing was removed\nHINT: another backup or expire took it over; run expire again when it has finished");
                code = Exit::Failed;
            }
            Err(e) => {
                report_error(program, &e);
                code = Exit::Storage;
            }
        }
    }
    if let Some(l) = lock {
        if let Err(e) = l.release().await {
            report_error(program, &e);
        }
    }
    if args.metrics.wanted() {
        let mut m = Metrics::new();
        m.gauge(
            "walvault_expire_last_run_timestamp_seconds",
            "When expire last ran.",
            now_secs() as f64,
        )
        .gauge(
            "walvault_expire_last_run_success",
            "1 if the last expire succeeded.",
            if code == Exit::Ok { 1.0 } else { 0.0 },
        )
        .gauge(
            "walvault_expire_duration_seconds",
            "Duration of the last expire.",
            started.elapsed().as_secs_f64(),
        )
        .gauge(
            "walvault_expire_removed_backups",
            "Backups the last expire removed.",
            plan.remove_backups.len() as f64,
        )
        .gauge(
            "walvault_expire_removed_wal_files",
            "WAL files the last expire removed.",
            plan.remove_wal.len() as f64,
        )
        .gauge(
            "walvault_expire_freed_bytes",
            "Bytes the last expire freed.",
            plan.freed_bytes as f64,
        );
        repository_metrics(&repo, &mut m).await;
        emit(program, &args.metrics, "walvault_expire", &m).await;
    }
    code
}
