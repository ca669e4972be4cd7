//! `walvault copy --to repo2`: backups and their WAL from one configured
//! repository to the other, under the destination's repository lock.

use crate::config::GlobalArgs;
use crate::exit::Exit;
use crate::repo::copy::{apply_copy, plan_copy, CopyError};
use crate::repo::{ClusterIdentity, ObjectError, RepoError};
use crate::storage::StorageError;

use super::human_bytes;
use super::logging::report_error;

#[derive(Debug, Clone, clap::Args)]
pub struct CopyArgs {
    /// The repository to copy into: repo2 (or 2), or repo1 (or 1) to copy back
    #[arg(long, value_name = "REPO", value_parser = parse_repo_name)]
    pub to: usize,

    /// Copy only this backup (with the backups it is built on) [default: every complete backup the destination lacks]
    #[arg(long, value_name = "LABEL")]
    pub set: Option<String>,

    /// Objects copied at once
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,

    /// Show what would be copied; copy nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Lease of the destination's repository lock
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub lock_lease_secs: u64,
}

fn parse_repo_name(text: &str) -> Result<usize, String> {
    match text.strip_prefix("repo").unwrap_or(text) {
        "1" => Ok(1),
        "2" => Ok(2),
        _ => Err("must be repo1 or repo2".to_string()),
    }
}

fn copy_exit(e: &CopyError) -> Exit {
    match e {
        CopyError::NoSuchBackup { .. } | CopyError::MissingDependency { .. } => Exit::Usage,
        CopyError::LockLost { .. } => Exit::Failed,
        CopyError::Conflict { .. } => Exit::Conflict,
        CopyError::Vanished { .. } | CopyError::Spool(_) => Exit::Failed,
        CopyError::Repo(r) => super::wal::repo_exit(r),
        CopyError::Object { source, .. } => match source {
            ObjectError::Storage(StorageError::Key(_)) => Exit::Key,
            s if s.is_corruption() => Exit::Corrupt,
            ObjectError::Storage(StorageError::Corrupt { .. }) => Exit::Corrupt,
            _ => Exit::Storage,
        },
    }
}

pub async fn run(program: &str, global: &GlobalArgs, args: &CopyArgs) -> Exit {
    let settings = match super::settings(program, global) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !settings.has_repo2() {
        report_error(program, &"walvault copy needs a second repository\nHINT: configure it with repo2 = \"...\" (--repo2) or a [repo2] table, and run walvault init");
        return Exit::Usage;
    }
    let from_index = if args.to == 1 { 2 } else { 1 };
    let open = |index: usize| {
        settings
            .select(index)
            .expect("both configured")
            .open_repository()
    };
    let (from, to) = match (open(from_index), open(args.to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => {
            report_error(program, &e);
            return Exit::Usage;
        }
    };
    let (from_name, to_name) = (format!("repo{from_index}"), format!("repo{}", args.to));
    // Both headers: each repository must exist and belong to one cluster.
    let headers = async {
        let h1 = from.require_header().await?;
        let h2 = to.require_header().await?;
        let identity = ClusterIdentity {
            system_identifier: h1.system_identifier().unwrap_or_default(),
            wal_segment_size: crate::wal::WalSegmentSize::new(h1.wal_segment_size)
                .unwrap_or(crate::wal::WalSegmentSize::DEFAULT),
            pg_major: h1.pg_major,
        };
        to.check_identity(
            &h2,
            &identity,
            &format!("{from_name} ({})", from.describe()),
        )?;
        Ok::<_, RepoError>(())
    }
    .await;
    if let Err(e) = headers {
        report_error(program, &e);
        return super::wal::repo_exit(&e);
    }
    let lock = if args.dry_run {
        None
    } else {
        match super::take_lock(program, &to, "copy", args.lock_lease_secs).await {
            Ok(l) => Some(l),
            Err(code) => return code,
        }
    };
    let started = std::time::Instant::now();
    let result = async {
        let from_backups = from.list_backups().await?;
        let from_wal = from.list_wal().await?;
        let to_backups = to.list_backups().await?;
        let to_wal = to.list_wal().await?;
        let plan = plan_copy(
            &from_backups,
            &from_wal,
            &to_backups,
            &to_wal,
            args.set.as_deref(),
            &from_name,
        )?;
        let verb = if args.dry_run {
            "would copy"
        } else {
            "copying"
        };
        println!(
            "{verb} {} backup(s) ({}) and {} WAL file(s) from {from_name} ({}) to {to_name} ({})",
            plan.backups.len(),
            if plan.backups.is_empty() {
                "none".to_string()
            } else {
                plan.backups.join(", ")
            },
            plan.wal.len(),
            from.describe(),
            to.describe()
        );
        if args.dry_run {
            return Ok(None);
        }
        let progress = |line: &str| println!("{line}");
        apply_copy(
            &from,
            &to,
            &plan,
            args.jobs.max(1),
            lock.as_ref(),
            &progress,
        )
        .await
        .map(Some)
    }
    .await;
    let code = match result {
        Ok(Some(report)) => {
            println!(
                "copied {} backup(s) and {} WAL file(s) to {to_name}: {} object(s), {} in {:.1}s; {} object(s) were already there",
                report.backups.len(),
                report.wal_files,
                report.copied_objects,
                human_bytes(report.copied_bytes),
                started.elapsed().as_secs_f64(),
                report.skipped_objects
            );
            Exit::Ok
        }
        Ok(None) => Exit::Ok,
        Err(e) => {
            report_error(program, &e);
            copy_exit(&e)
        }
    };
    if let Some(l) = lock {
        if l.is_lost() {
            report_error(program, &"the destination's repository lock was lost during the copy\nHINT: what was copied is checked and stays; run walvault copy again");
        }
        if let Err(e) = l.release().await {
            report_error(program, &e);
        }
    }
    code
}
