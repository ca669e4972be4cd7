//! `walvault check`: is this cluster really archiving into this repository?
//!
//! Connects and confirms wal_level (replica or logical), archive_mode (on
//! or always) and that archive_command runs walvault-push against the same
//! repository; then forces a WAL switch and waits until that segment is in
//! the repository: the end-to-end proof. Every misconfiguration found is
//! reported with its own fix, not only the first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{parse_repo, GlobalArgs, RepoLocation, Settings};
use crate::pg::conn::{self, ConnError};
use crate::repo::{layout, RepoError, Repository};
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Connect(#[from] ConnError),
    #[error("{what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{}", .0.join("\n"))]
    Misconfigured(Vec<String>),
    #[error("WAL segment \"{segment}\" did not reach {repo} within {secs}s after a forced switch\nHINT: look for archive_command failures in pg_stat_archiver and the server log")]
    NotArchived {
        segment: String,
        repo: String,
        secs: u64,
    },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

#[derive(Debug)]
pub struct CheckReport {
    pub wal_level: String,
    pub archive_command: String,
    pub segment: String,
    pub waited: Duration,
}

/// What `archive_command` says about the repository it pushes to.
#[derive(Debug, PartialEq)]
pub enum ArchiveTarget {
    NotWalvault,
    Repo(String),
    Config(PathBuf),
    /// walvault-push with neither --repo nor --config: the default config
    /// file or the server's environment decides.
    Default,
}

/// Reads an archive_command (pure).
pub fn plan_archive_target(archive_command: &str) -> ArchiveTarget {
    let words: Vec<&str> = archive_command
        .split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == '|')
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_matches(|c| c == '\'' || c == '"'))
        .collect();
    let Some(start) = words
        .iter()
        .position(|w| w.ends_with("walvault-push"))
        .or_else(|| {
            words
                .windows(2)
                .position(|p| p[0].ends_with("walvault") && p[1] == "wal-push")
        })
    else {
        return ArchiveTarget::NotWalvault;
    };
    let rest = &words[start..];
    let unquote = |v: &str| v.trim_matches(|c| c == '\'' || c == '"').to_string();
    for (i, w) in rest.iter().enumerate() {
        if let Some(v) = w.strip_prefix("--repo=") {
            return ArchiveTarget::Repo(unquote(v));
        }
        if *w == "--repo" {
            if let Some(v) = rest.get(i + 1) {
                return ArchiveTarget::Repo(v.to_string());
            }
        }
        if let Some(v) = w.strip_prefix("--config=") {
            return ArchiveTarget::Config(PathBuf::from(unquote(v)));
        }
        if *w == "--config" {
            if let Some(v) = rest.get(i + 1) {
                return ArchiveTarget::Config(PathBuf::from(v));
            }
        }
    }
    ArchiveTarget::Default
}

fn same_location(a: &RepoLocation, b: &RepoLocation) -> bool {
    match (a, b) {
        (RepoLocation::Local(x), RepoLocation::Local(y)) => {
            let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            canon(x) == canon(y)
        }
        (RepoLocation::S3(x), RepoLocation::S3(y)) => x.bucket == y.bucket && x.prefix == y.prefix,
        _ => false,
    }
}

fn describe_location(l: &RepoLocation) -> String {
    match l {
        RepoLocation::Local(p) => p.display().to_string(),
        RepoLocation::S3(s) => format!("s3://{}/{}", s.bucket, s.prefix),
    }
}

pub async fn run_check(
    repo: &Repository,
    settings: &Settings,
    dbname: Option<&str>,
    wait: Duration,
) -> Result<CheckReport, CheckError> {
    let client = conn::connect(dbname).await?;
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('archive_mode'), current_setting('archive_command'), pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(|source| CheckError::Query {
            what: "read settings",
            source,
        })?;
    let (wal_level, archive_mode, archive_command, in_recovery): (String, String, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut problems = Vec::new();
    if wal_level == "minimal" {
        problems.push("wal_level is minimal, which cannot be archived for recovery\nHINT: set wal_level = replica in postgresql.conf and restart PostgreSQL".to_string());
    }
    match archive_mode.as_str() {
        "on" | "always" => {}
        _ => problems.push("archive_mode is off, so no WAL is archived\nHINT: set archive_mode = on in postgresql.conf and restart PostgreSQL".to_string()),
    }
    let ours = describe_location(&settings.repo);
    match plan_archive_target(&archive_command) {
        ArchiveTarget::NotWalvault => problems.push(format!(
            "archive_command does not run walvault-push: '{archive_command}'\nHINT: set archive_command = 'walvault-push --repo {ours} %p' and reload PostgreSQL"
        )),
        ArchiveTarget::Repo(theirs) => match parse_repo(&theirs) {
            Ok(loc) if same_location(&loc, &settings.repo) => {}
            _ => problems.push(format!(
                "archive_command pushes to repository {theirs}, but this check is for {ours}\nHINT: point archive_command and walvault at the same repository"
            )),
        },
        ArchiveTarget::Config(path) => {
            let args = GlobalArgs {
                config: Some(path.clone()),
                ..GlobalArgs::default()
            };
            match Settings::resolve(&args) {
                Ok(theirs) if same_location(&theirs.repo, &settings.repo) => {}
                Ok(theirs) => problems.push(format!(
                    "archive_command uses config file \"{}\", which names repository {}, but this check is for {ours}\nHINT: point archive_command and walvault at the same repository",
                    path.display(),
                    describe_location(&theirs.repo)
                )),
                Err(e) => tracing::warn!(config = %path.display(), error = %e, "cannot read archive_command's config file; relying on the WAL switch test"),
            }
        }
        ArchiveTarget::Default => {}
    }
    if !problems.is_empty() {
        return Err(CheckError::Misconfigured(problems));
    }
    if in_recovery {
        return Ok(CheckReport {
            wal_level,
            archive_command,
            segment: String::new(),
            waited: Duration::ZERO,
        });
    }
    // Make sure there is WAL to switch away from, then switch.
    let _ = client
        .query("SELECT pg_create_restore_point('walvault check')", &[])
        .await;
    let row = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(|source| CheckError::Query {
            what: "switch WAL",
            source,
        })?;
    let segment: String = row.get(0);
    let key = layout::wal_key(&layout::parse_any_size(&segment).map_err(|e| {
        CheckError::Misconfigured(vec![format!(
            "the server returned an invalid WAL file name \"{segment}\": {e}"
        )])
    })?);
    let started = Instant::now();
    loop {
        match repo.store().head(&key).await {
            Ok(_) => break,
            Err(StorageError::NotFound { .. }) if started.elapsed() < wait => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(StorageError::NotFound { .. }) => {
                return Err(CheckError::NotArchived {
                    segment,
                    repo: repo.describe(),
                    secs: wait.as_secs(),
                })
            }
            Err(e) => return Err(RepoError::from(e).into()),
        }
    }
    Ok(CheckReport {
        wal_level,
        archive_command,
        segment,
        waited: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_commands_are_read() {
        assert_eq!(
            plan_archive_target("cp %p /mnt/archive/%f"),
            ArchiveTarget::NotWalvault
        );
        assert_eq!(
            plan_archive_target("walvault-push %p"),
            ArchiveTarget::Default
        );
        assert_eq!(
            plan_archive_target("/usr/bin/walvault-push --repo /srv/wal %p"),
            ArchiveTarget::Repo("/srv/wal".into())
        );
        assert_eq!(
            plan_archive_target("walvault-push --repo='s3://b/p' %p && cp %p /x/%f"),
            ArchiveTarget::Repo("s3://b/p".into())
        );
        assert_eq!(
            plan_archive_target("/opt/walvault wal-push --config /etc/w.toml %p"),
            ArchiveTarget::Config("/etc/w.toml".into())
        );
        assert_eq!(
            plan_archive_target("test ! -f /x/%f && cp %p /x/%f"),
            ArchiveTarget::NotWalvault
        );
    }
}
