//! `walvault check`.

use std::time::Duration;

use crate::check::{run_check, CheckError};
use crate::config::GlobalArgs;
use crate::exit::Exit;

use super::logging::report_error;

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Connection string or URL (default: the PG* environment variables)
    #[arg(long, short = 'd', value_name = "CONNINFO")]
    pub dbname: Option<String>,

    /// How long to wait for the switched segment to reach the repository
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout_secs: u64,

    /// Test the repository's storage instead: conditional create (recorded
    /// in the repository header), ranged reads, multipart upload and abort,
    /// listing, deletes, clock skew, and (S3) versioning, object lock and
    /// the IAM policy walvault needs. Exit 8 if anything breaks a guarantee
    #[arg(long)]
    pub storage: bool,
}

pub async fn run(program: &str, global: &GlobalArgs, args: &CheckArgs) -> Exit {
    let (settings, repo) = match super::settings_and_repository(program, global) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if args.storage {
        return match repo.reprobe().await {
            Ok((probe, before)) => {
                println!("storage: {}", repo.describe());
                println!("  conditional create, single PUT:  {}", probe.put);
                println!("  conditional create, multipart:   {}", probe.multipart);
                let now = probe.mode.as_str();
                match before.as_deref() {
                    Some(b) if b == now => println!("  recorded in the header: {now} (unchanged)"),
                    b => println!(
                        "  recorded in the header: {now} (was {})",
                        b.unwrap_or("not recorded")
                    ),
                }
                super::init::print_create_only(&Some(now.to_string()), &None);
                storage_self_test(&settings, &repo).await
            }
            Err(e) => {
                report_error(program, &e);
                super::wal::repo_exit(&e)
            }
        };
    }
    match run_check(
        &repo,
        &settings,
        args.dbname.as_deref(),
        Duration::from_secs(args.timeout_secs),
    )
    .await
    {
        Ok(r) if r.segment.is_empty() => {
            println!("check: configuration is right (wal_level {}); the server is in recovery, so no WAL switch was forced", r.wal_level);
            Exit::Ok
        }
        Ok(r) => {
            println!(
                "check: OK: wal_level {}, archive_command '{}'; forced a switch and {} reached {} in {:.1}s",
                r.wal_level,
                r.archive_command,
                r.segment,
                repo.describe(),
                r.waited.as_secs_f64()
            );
            Exit::Ok
        }
        Err(CheckError::Misconfigured(problems)) => {
            for p in &problems {
                report_error(program, p);
            }
            Exit::Failed
        }
        Err(e) => {
            report_error(program, &e);
            match e {
                CheckError::Repo(_) => Exit::Storage,
                _ => Exit::Failed,
            }
        }
    }
}

/// The rest of `check --storage`: a table of what the store does, and
/// for S3 the IAM policy walvault needs.
async fn storage_self_test(
    settings: &crate::config::Settings,
    repo: &crate::repo::Repository,
) -> Exit {
    use crate::storage::selftest::{run_self_test, Verdict};
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let base = format!("probe/selftest-{}-{n}", std::process::id());
    let multipart = match &settings.repo {
        crate::config::RepoLocation::S3(s3) => {
            s3.single_put_max_bytes.max(s3.part_size_bytes) + s3.part_size_bytes + (1 << 20)
        }
        crate::config::RepoLocation::Local(_) => 17 << 20,
    };
    let findings = run_self_test(repo.store_arc(), &base, multipart).await;
    println!();
    println!("  {:<20} {:<6} DETAIL", "CHECK", "RESULT");
    for f in &findings {
        println!("  {:<20} {:<6} {}", f.check, f.verdict.as_str(), f.detail);
    }
    if let crate::config::RepoLocation::S3(s3) = &settings.repo {
        println!();
        println!("The least IAM policy walvault needs on this repository:");
        println!("{}", crate::storage::s3::plan_iam_policy(s3));
    }
    if findings.iter().any(|f| f.verdict == Verdict::Fail) {
        println!();
        println!("FAIL: this storage breaks a walvault guarantee (see the rows marked FAIL)");
        Exit::Failed
    } else {
        Exit::Ok
    }
}
