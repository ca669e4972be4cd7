//! `walvault restore`: arguments, the restore_command it writes, the plan it
//! prints with `--dry-run`, and the summary.

use std::path::PathBuf;

use crate::config::{GlobalArgs, RepoLocation, Settings};
use crate::exit::Exit;
use crate::restore::apply::{apply, plan, RestoreError, RestoreOptions};
use crate::restore::plan::{BackupChoice, RestorePlan};
use crate::restore::recovery_conf::TargetAction;
use crate::restore::target::{self, RecoveryTarget};
use crate::wal::TimelineId;

use super::human_bytes;
use super::logging::report_error;

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("target_kind").args(["target_time", "target_lsn", "target_xid", "target_name", "target_immediate"])))]
pub struct RestoreArgs {
    /// The data directory to restore into (empty or missing; with --delta, an existing stopped cluster)
    #[arg(long, short = 'D', value_name = "DIR")]
    pub pgdata: PathBuf,

    /// The backup to restore: a label or "latest" [default: the newest that can reach the target]
    #[arg(long, value_name = "LABEL")]
    pub backup: Option<String>,

    /// Recover to this moment; needs an explicit zone, e.g. '2026-11-21 10:29:59+00'
    #[arg(long, value_name = "TIMESTAMP")]
    pub target_time: Option<String>,

    /// Recover to this WAL location, e.g. 0/3000060
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,

    /// Recover to this transaction id
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<String>,

    /// Recover to this restore point (pg_create_restore_point)
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,

    /// Recover only to the end of the backup (the earliest consistent point)
    #[arg(long)]
    pub target_immediate: bool,

    /// What the server does at the target [default: promote; pause with --standby]
    #[arg(long, value_enum, value_name = "ACTION")]
    pub target_action: Option<TargetAction>,

    /// The timeline to recover along [default: the newest the archive holds]
    #[arg(long, value_name = "TLI")]
    pub target_timeline: Option<String>,

    /// Stop just before the target instead of just after it
    #[arg(long)]
    pub target_exclusive: bool,

    /// Restore as a standby (standby.signal) instead of a recovering primary
    #[arg(long)]
    pub standby: bool,

    /// Move a non-empty data directory aside (renamed, never deleted); with --delta, overwrite a data directory of another cluster
    #[arg(long)]
    pub force: bool,

    /// Restore into the existing, stopped data directory, rewriting only files that differ from the backup and removing files it does not have
    #[arg(long)]
    pub delta: bool,

    /// With --delta: compare every file by checksum, even when its size and modification time match
    #[arg(long, requires = "delta")]
    pub delta_force_checksum: bool,

    /// Print the plan and write nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Restore tablespace OID into DIR instead of its original place (repeatable)
    #[arg(long, value_name = "OID=DIR")]
    pub tablespace_map: Vec<String>,

    /// Whether the restored server archives once started: "preserve" keeps
    /// the backed-up archive settings (a restored primary goes on archiving
    /// into its repository); "off" writes archive_mode = off (for copies)
    #[arg(long, value_enum, default_value_t = ArchiveMode::Preserve, value_name = "MODE")]
    pub archive_mode: ArchiveMode,

    /// Files restored at once [default: the number of cores]
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
}

/// Quotes one shell word for restore_command (run through /bin/sh).
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=,@+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `--archive-mode`: as pgBackRest's option of that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchiveMode {
    /// Keep the archive settings of the backed-up configuration.
    Preserve,
    /// Write archive_mode = 'off' so the restored server never archives.
    Off,
}

/// walvault-fetch with this repository's settings. Credentials are never
/// written: they come from the environment or the config file, as now.
/// With `read_only`, the command refuses every write to the repository.
pub fn restore_command(global: &GlobalArgs, settings: &Settings, read_only: bool) -> String {
    let fetch = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("walvault-fetch"))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "walvault-fetch".to_string());
    let mut words = vec![fetch];
    if read_only {
        words.push("--read-only".into());
    }
    if let Some(config) = &global.config {
        let abs = std::fs::canonicalize(config).unwrap_or_else(|_| config.clone());
        words.push("--config".into());
        words.push(abs.display().to_string());
    }
    // Every configured repository, so recovery falls back to repo2 when
    // repo1 fails, whichever one the backup came from.
    for r in &settings.repos {
        let flag = |name: &str| {
            if r.index == 1 {
                format!("--{name}")
            } else {
                format!("--repo{}-{name}", r.index)
            }
        };
        let repo_flag = if r.index == 1 {
            "--repo".to_string()
        } else {
            format!("--repo{}", r.index)
        };
        match &r.location {
            RepoLocation::Local(path) => {
                words.push(repo_flag);
                words.push(path.display().to_string());
            }
            RepoLocation::S3(s3) => {
                words.push(repo_flag);
                words.push(format!("s3://{}/{}", s3.bucket, s3.prefix));
                if let Some(e) = &s3.endpoint {
                    words.push(flag("s3-endpoint"));
                    words.push(e.clone());
                }
                if let Some(reg) = &s3.region {
                    words.push(flag("s3-region"));
                    words.push(reg.clone());
                }
                if s3.path_style {
                    words.push(flag("s3-path-style"));
                }
            }
        }
    }
    plan_command_line(&words)
}

/// Joins command words for restore_command: each is shell-quoted, and
/// every literal `%` is doubled, because PostgreSQL replaces `%f`, `%p`
/// and `%r` and from version 16 refuses any other `%` sequence. Then
/// `%f %p` is appended.
pub fn plan_command_line(words: &[String]) -> String {
    let mut cmd: Vec<String> = words
        .iter()
        .map(|w| shell_word(w).replace('%', "%%"))
        .collect();
    cmd.push("%f".into());
    cmd.push("%p".into());
    cmd.join(" ")
}

#[cfg(test)]
mod command_tests {
    use super::*;

    #[test]
    fn literal_percent_signs_are_doubled() {
        let words = vec![
            "/opt/wal%vault/walvault-fetch".to_string(),
            "--repo".to_string(),
            "/srv/100%/repo dir".to_string(),
        ];
        assert_eq!(
            plan_command_line(&words),
            "'/opt/wal%%vault/walvault-fetch' --repo '/srv/100%%/repo dir' %f %p"
        );
        assert_eq!(
            plan_command_line(&["walvault-fetch".to_string()]),
            "walvault-fetch %f %p"
        );
    }
}

fn parse_target(args: &RestoreArgs) -> Result<RecoveryTarget, target::TargetError> {
    Ok(if let Some(t) = &args.target_time {
        RecoveryTarget::Time(target::parse_target_time(t)?)
    } else if let Some(l) = &args.target_lsn {
        RecoveryTarget::Lsn(target::parse_target_lsn(l)?)
    } else if let Some(x) = &args.target_xid {
        RecoveryTarget::Xid(target::parse_xid(x)?)
    } else if let Some(n) = &args.target_name {
        RecoveryTarget::Name(target::parse_target_name(n)?)
    } else if args.target_immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::EndOfArchive
    })
}

fn print_plan(plan: &RestorePlan, lines: &[(String, String)], pgdata: &std::path::Path) {
    let b = &plan.backup;
    println!("restore plan for \"{}\":", pgdata.display());
    println!(
        "  backup     {} (timeline {}, {} to {}, {} of data, {} stored)",
        b.label,
        b.timeline,
        b.start_time,
        b.stop_time,
        human_bytes(b.data_size_bytes),
        human_bytes(b.stored_size_bytes)
    );
    println!(
        "  WAL        {} to {} ({} files, {} stored) on timeline {}",
        plan.first_wal,
        plan.last_wal,
        plan.wal_files,
        human_bytes(plan.wal_bytes),
        plan.target_timeline
    );
    if let Some(t) = plan.newest_archive_time {
        println!("  archive    newest WAL archived at {t}");
    }
    for ts in &b.tablespaces {
        println!("  tablespace {} at {}", ts.oid, ts.location);
    }
    println!("  settings   (postgresql.auto.conf)");
    for (name, value) in lines {
        println!("             {name} = {value}");
    }
}

pub async fn run(program: &str, global: &GlobalArgs, args: &RestoreArgs) -> Exit {
    let target = match parse_target(args) {
        Ok(t) => t,
        Err(e) => {
            report_error(program, &e);
            return Exit::Usage;
        }
    };
    let target_timeline = match args.target_timeline.as_deref() {
        None | Some("latest") => None,
        Some(t) => match t.parse::<TimelineId>() {
            Ok(t) => Some(t),
            Err(e) => {
                report_error(program, &format!("invalid --target-timeline \"{t}\": {e}"));
                return Exit::Usage;
            }
        },
    };
    let (settings, repo) = match super::settings_and_repository(program, global) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let pgdata = if args.pgdata.is_absolute() {
        args.pgdata.clone()
    } else {
        std::env::current_dir()
            .map(|d| d.join(&args.pgdata))
            .unwrap_or_else(|_| args.pgdata.clone())
    };
    let mut tablespace_map = std::collections::BTreeMap::new();
    for entry in &args.tablespace_map {
        match entry
            .split_once('=')
            .map(|(o, d)| (o.trim().parse::<u32>(), PathBuf::from(d)))
        {
            Some((Ok(oid), dir)) if dir.is_absolute() => {
                tablespace_map.insert(oid, dir);
            }
            _ => {
                report_error(
                    program,
                    &format!("invalid --tablespace-map \"{entry}\"\nHINT: use OID=/absolute/dir, with the oid from walvault restore --dry-run or pg_tablespace"),
                );
                return Exit::Usage;
            }
        }
    }
    let opts = RestoreOptions {
        tablespace_map,
        pgdata: pgdata.clone(),
        backup: match args.backup.as_deref() {
            None | Some("latest") => BackupChoice::Latest,
            Some(label) => BackupChoice::Label(label.to_string()),
        },
        target,
        target_timeline,
        target_action: args.target_action,
        inclusive: !args.target_exclusive,
        standby: args.standby,
        force: args.force,
        jobs: args.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        restore_command: restore_command(global, &settings, false),
        archive_off: args.archive_mode == ArchiveMode::Off,
        delta: args.delta,
        delta_force_checksum: args.delta_force_checksum,
    };
    let fail = |e: &RestoreError| {
        report_error(program, e);
        match e {
            RestoreError::Repo(r) => super::wal::repo_exit(r),
            RestoreError::BadManifest { .. } | RestoreError::MissingDependency { .. } => {
                Exit::Corrupt
            }
            _ => Exit::Failed,
        }
    };
    let planned = match plan(&repo, &opts).await {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if args.dry_run {
        let lines = crate::restore::apply::recovery_lines(&planned, &opts);
        print_plan(&planned, &lines, &pgdata);
        if opts.archive_off {
            println!("  archiving  off: archive_mode = 'off' is written (--archive-mode off)");
        } else {
            println!("  archiving  preserved: the restored server archives as the backed-up postgresql.conf and postgresql.auto.conf say (the real restore prints the command); pass --archive-mode off for a copy that must not archive");
        }
        println!("dry run: nothing was written");
        return Exit::Ok;
    }
    match apply(&repo, planned, &opts).await {
        Ok(report) => {
            if let Some(aside) = &report.moved_aside {
                println!(
                    "moved the previous contents of \"{}\" to \"{}\"",
                    pgdata.display(),
                    aside.display()
                );
            }
            if let Some(d) = &report.delta {
                println!(
                    "delta: {} files kept (size and time match), {} equal by checksum, {} patched ({} blocks), {} written, {} removed",
                    d.kept, d.checked_equal, d.patched, d.blocks_written, d.rewritten, d.removed
                );
            }
            print_plan(&report.plan, &report.recovery_lines, &pgdata);
            println!("  archiving  {}", report.archiving);
            println!(
                "restored backup {} into \"{}\"; start PostgreSQL to recover{}",
                report.plan.backup.label,
                pgdata.display(),
                if args.standby { " as a standby" } else { "" }
            );
            Exit::Ok
        }
        Err(e) => fail(&e),
    }
}
