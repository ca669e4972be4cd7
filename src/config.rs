//! Resolved settings: command-line flags, then `WALVAULT_*` environment
//! variables, then the TOML config file (`--config`, `WALVAULT_CONFIG`, or
//! `/etc/walvault.toml` when it exists), then built-in defaults.
//!
//! clap reads flags and their environment variables ([`GlobalArgs`]); this
//! module fills what is still unset from the file and validates the result.
//! It opens the repository the settings name, building an S3 client only
//! for an S3 repository, so local pushes start in milliseconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use serde::Deserialize;

use crate::repo::{CompressSettings, Repository};
use crate::storage::local::LocalStore;
use crate::storage::s3::{S3Settings, S3Store};
use crate::storage::ObjectStore;

/// The config file read when neither `--config` nor `WALVAULT_CONFIG` names
/// one, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/walvault.toml";

/// Options every walvault program takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GlobalArgs {
    /// Config file (TOML)
    #[arg(long, env = "WALVAULT_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Repository: a local directory (/path or file:///path) or s3://bucket/prefix
    #[arg(long, env = "WALVAULT_REPO", global = true, value_name = "REPO")]
    pub repo: Option<String>,

    /// S3 endpoint URL (default: AWS, or AWS_ENDPOINT_URL)
    #[arg(long, env = "WALVAULT_S3_ENDPOINT", global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region (default: AWS_REGION, AWS_DEFAULT_REGION, or us-east-1)
    #[arg(long, env = "WALVAULT_S3_REGION", global = true, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Path-style S3 URLs (http://host/bucket/key), for S3-compatible servers
    #[arg(long, env = "WALVAULT_S3_PATH_STYLE", global = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub s3_path_style: Option<bool>,

    /// zstd compression level (1-19, negative for faster; 0 stores uncompressed) [default: 3]
    #[arg(
        long,
        env = "WALVAULT_COMPRESS_LEVEL",
        global = true,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub compress_level: Option<i32>,

    /// Extra zstd threads per file [default: 0]
    #[arg(
        long,
        env = "WALVAULT_COMPRESS_THREADS",
        global = true,
        value_name = "N"
    )]
    pub compress_threads: Option<u32>,

    /// How long walvault-fetch retries a failing repository before giving up [default: 60]
    #[arg(
        long,
        env = "WALVAULT_FETCH_RETRY_SECS",
        global = true,
        value_name = "SECS"
    )]
    pub fetch_retry_secs: Option<u64>,

    /// Asynchronous archiving: walvault-push hands files to a background worker that pushes ahead in parallel [default: false]
    #[arg(long, env = "WALVAULT_ARCHIVE_ASYNC", global = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub archive_async: Option<bool>,

    /// Spool directory of asynchronous archiving (required with --archive-async)
    #[arg(long, env = "WALVAULT_SPOOL_PATH", global = true, value_name = "DIR")]
    pub spool_path: Option<PathBuf>,

    /// Files the asynchronous worker compresses at once (as many more may be finishing their upload or fsync) [default: 2]
    #[arg(long, env = "WALVAULT_ARCHIVE_JOBS", global = true, value_name = "N")]
    pub archive_jobs: Option<usize>,

    /// Memory the asynchronous worker's files in flight share, in MiB (on S3 each file compressing reserves about 24 MiB of it) [default: 48]
    #[arg(
        long,
        env = "WALVAULT_ARCHIVE_MEMORY_MIB",
        global = true,
        value_name = "MIB"
    )]
    pub archive_memory_mib: Option<usize>,

    /// How long walvault-push waits for its file to be stored before failing (PostgreSQL then retries) [default: 60]
    #[arg(
        long,
        env = "WALVAULT_ARCHIVE_TIMEOUT_SECS",
        global = true,
        value_name = "SECS"
    )]
    pub archive_timeout_secs: Option<u64>,

    /// Prefetching restore: segments walvault-fetch keeps fetched ahead of recovery (0: off) [default: 0]
    #[arg(
        long,
        env = "WALVAULT_RESTORE_PREFETCH",
        global = true,
        value_name = "N"
    )]
    pub restore_prefetch: Option<u64>,

    /// Most bytes the prefetch spool holds [default: 1073741824]
    #[arg(
        long,
        env = "WALVAULT_RESTORE_PREFETCH_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub restore_prefetch_bytes: Option<u64>,

    /// Refuse every write to the repository (what the scratch server of verify --restore fetches with)
    #[arg(long, env = "WALVAULT_READ_ONLY", global = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub read_only: Option<bool>,

    /// The second repository (repo2): a local directory or s3://bucket/prefix
    #[arg(long, env = "WALVAULT_REPO2", global = true, value_name = "REPO")]
    pub repo2: Option<String>,

    /// repo2's S3 endpoint URL
    #[arg(
        long,
        env = "WALVAULT_REPO2_S3_ENDPOINT",
        global = true,
        value_name = "URL"
    )]
    pub repo2_s3_endpoint: Option<String>,

    /// repo2's S3 region
    #[arg(
        long,
        env = "WALVAULT_REPO2_S3_REGION",
        global = true,
        value_name = "REGION"
    )]
    pub repo2_s3_region: Option<String>,

    /// Path-style S3 URLs for repo2
    #[arg(long, env = "WALVAULT_REPO2_S3_PATH_STYLE", global = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub repo2_s3_path_style: Option<bool>,

    /// Which repository a backup, restore, expire, list, status, verify or
    /// key command works on: 1 (repo) or 2 (repo2) [default: 1; list and
    /// status show every repository]
    #[arg(long, env = "WALVAULT_REPO_INDEX", global = true, value_name = "N")]
    pub repo_index: Option<usize>,

    /// Backup, expire, verify and copy POST a JSON event here when they end (a Slack incoming webhook, or any webhook); status when its level changes
    #[arg(long, env = "WALVAULT_NOTIFY_URL", global = true, value_name = "URL")]
    pub notify_url: Option<String>,

    /// healthchecks.io-style pings: URL/start when backup, expire, verify or copy starts, URL on success, URL/fail on failure
    #[arg(
        long,
        env = "WALVAULT_NOTIFY_PING_URL",
        global = true,
        value_name = "URL"
    )]
    pub notify_ping_url: Option<String>,

    /// More output: -v for progress lines, -vv for debugging
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// The config file's keys; every one is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub repo: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_part_size_mib: Option<usize>,
    pub s3_single_put_max_mib: Option<usize>,
    pub s3_timeout_secs: Option<u64>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub compress_level: Option<i32>,
    pub compress_threads: Option<u32>,
    pub fetch_retry_secs: Option<u64>,
    pub archive_async: Option<bool>,
    pub spool_path: Option<PathBuf>,
    pub archive_jobs: Option<usize>,
    pub archive_memory_mib: Option<usize>,
    pub archive_timeout_secs: Option<u64>,
    pub restore_prefetch: Option<u64>,
    pub restore_prefetch_bytes: Option<u64>,
    /// What `walvault backup` takes without `--type` once a full backup
    /// exists: full, diff or incr.
    pub backup_type: Option<String>,
    /// Encryption secret: a passphrase (the file must be mode 600)...
    pub encryption_passphrase: Option<String>,
    /// ... or a file holding a random key of at least 32 bytes ...
    pub encryption_key_file: Option<PathBuf>,
    /// ... or a command that prints one (a secret manager).
    pub encryption_key_command: Option<String>,
    /// The second repository: the same repository keys, in a `[repo2]`
    /// table.
    pub repo2: Option<Repo2File>,
    pub notify_url: Option<String>,
    pub notify_ping_url: Option<String>,
    /// The longest a notification may take (default 10).
    pub notify_timeout_secs: Option<u64>,
}

/// The `[repo2]` table: the second repository's own location, S3 settings
/// and encryption.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repo2File {
    pub repo: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_part_size_mib: Option<usize>,
    pub s3_single_put_max_mib: Option<usize>,
    pub s3_timeout_secs: Option<u64>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub encryption_passphrase: Option<String>,
    pub encryption_key_file: Option<PathBuf>,
    pub encryption_key_command: Option<String>,
    /// walvault-push succeeds only once the file is stored in repo2 too
    /// (default true). With false, a push that fails there is a warning
    /// and `walvault copy --to repo2` fills the gap.
    pub required: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file \"{path}\": {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file \"{path}\": {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no repository configured\nHINT: pass --repo, set WALVAULT_REPO, or set repo = \"...\" in {DEFAULT_CONFIG_PATH}")]
    NoRepo,
    #[error("invalid setting {name} = {value}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

/// Where the repository is.
#[derive(Debug, Clone)]
pub enum RepoLocation {
    Local(PathBuf),
    S3(S3Settings),
}

/// One configured repository.
#[derive(Debug, Clone)]
pub struct RepoSettings {
    /// 1 for `repo`, 2 for `repo2`.
    pub index: usize,
    pub location: RepoLocation,
    /// Where its encryption secret comes from, if one is configured.
    pub encryption: Option<crate::repo::keys::SecretSource>,
    /// walvault-push succeeds only once a file is durable here.
    pub required: bool,
}

/// Everything resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The repository this command works on (`--repo-index`, default 1).
    pub repo: RepoLocation,
    /// Every configured repository, repo1 first.
    pub repos: Vec<RepoSettings>,
    /// `repo`'s index in `repos` plus one.
    pub repo_index: usize,
    pub compress: CompressSettings,
    pub fetch_retry: Duration,
    pub verbose: u8,
    /// Every write to the repository is refused.
    pub read_only: bool,
    /// Asynchronous archiving, when on: its spool directory.
    pub archive_async: Option<AsyncArchive>,
    /// Prefetching restore: segments kept ahead (0: off) and a byte bound.
    pub restore_prefetch: u64,
    pub restore_prefetch_bytes: u64,
    /// `backup_type` from the config file: what `walvault backup` takes
    /// without `--type` (once a full backup exists). Default full.
    pub backup_type: crate::repo::manifest::BackupType,
    /// Where `repo`'s encryption secret comes from, if one is configured.
    pub encryption: Option<crate::repo::keys::SecretSource>,
    /// Where notifications go, if anywhere.
    pub notify: crate::notify::NotifySettings,
}

/// Asynchronous archiving's settings.
#[derive(Debug, Clone)]
pub struct AsyncArchive {
    pub spool_path: PathBuf,
    pub jobs: usize,
    /// The worker's memory budget for its files in flight
    /// (`repo::object::Pacing`).
    pub memory_bytes: usize,
    pub timeout: Duration,
}

fn load_file(args: &GlobalArgs) -> Result<FileConfig, ConfigError> {
    let (path, required) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileConfig::default())
        }
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.clone(),
        message: e.message().to_string(),
    })?;
    // A file that holds a secret must be its owner's alone.
    let repo2_secret = file
        .repo2
        .as_ref()
        .is_some_and(|r| r.encryption_passphrase.is_some() || r.s3_secret_access_key.is_some());
    if file.encryption_passphrase.is_some() || repo2_secret {
        crate::repo::keys::check_private(&path).map_err(|message| ConfigError::Parse {
            path: path.clone(),
            message,
        })?;
    }
    Ok(file)
}

/// The encryption secret's source: the environment first, then the file.
/// Never a command-line flag (those show in process listings).
/// `env_prefix` is `WALVAULT_` for repo1 and `WALVAULT_REPO2_` for repo2.
fn encryption_source(
    env_prefix: &str,
    passphrase: Option<&String>,
    key_file: Option<&PathBuf>,
    command: Option<&String>,
) -> Result<Option<crate::repo::keys::SecretSource>, ConfigError> {
    use crate::repo::keys::SecretSource;
    let env = |name: &str| {
        std::env::var(format!("{env_prefix}{name}"))
            .ok()
            .filter(|v| !v.is_empty())
    };
    let passphrase = env("ENCRYPTION_PASSPHRASE").or(passphrase.cloned());
    let key_file = env("ENCRYPTION_KEY_FILE")
        .map(PathBuf::from)
        .or(key_file.cloned());
    let command = env("ENCRYPTION_KEY_COMMAND").or(command.cloned());
    let sources = [passphrase.is_some(), key_file.is_some(), command.is_some()];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err(ConfigError::Invalid {
            name: "encryption",
            value: "(several)".to_string(),
            reason:
                "set one of encryption_passphrase, encryption_key_file and encryption_key_command"
                    .to_string(),
        });
    }
    Ok(if let Some(p) = passphrase {
        Some(SecretSource::Passphrase(zeroize::Zeroizing::new(p)))
    } else if let Some(f) = key_file {
        if !f.is_absolute() {
            return Err(ConfigError::Invalid {
                name: "encryption_key_file",
                value: f.display().to_string(),
                reason: "must be an absolute path".to_string(),
            });
        }
        Some(SecretSource::KeyFile(f))
    } else {
        command.map(SecretSource::Command)
    })
}

/// A repository's S3 settings as flags, environment and file give them.
struct S3File {
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    part_size_mib: Option<usize>,
    single_put_max_mib: Option<usize>,
    timeout_secs: Option<u64>,
    credentials: Option<(String, String)>,
}

/// A repository's location with its S3 settings filled in.
fn locate(name: &'static str, text: &str, s3f: S3File) -> Result<RepoLocation, ConfigError> {
    let mut repo = parse_repo(text).map_err(|e| match e {
        ConfigError::Invalid { value, reason, .. } => ConfigError::Invalid {
            name,
            value,
            reason,
        },
        other => other,
    })?;
    if let RepoLocation::S3(s3) = &mut repo {
        s3.endpoint = s3f.endpoint.filter(|e| !e.is_empty());
        s3.region = s3f.region;
        s3.path_style = s3f.path_style.unwrap_or(false);
        s3.static_credentials = s3f.credentials;
        if let Some(secs) = s3f.timeout_secs {
            if secs == 0 {
                return Err(ConfigError::Invalid {
                    name: "s3_timeout_secs",
                    value: secs.to_string(),
                    reason: "must be at least 1".to_string(),
                });
            }
            s3.request_timeout = Duration::from_secs(secs);
        }
        if let Some(mib) = s3f.part_size_mib {
            s3.part_size_bytes = mib << 20;
        }
        if let Some(mib) = s3f.single_put_max_mib {
            // The whole object is held in memory until it is sent.
            if mib > 256 {
                return Err(ConfigError::Invalid {
                    name: "s3_single_put_max_mib",
                    value: mib.to_string(),
                    reason: "must be at most 256 (an object that size is held in memory until it is sent)".to_string(),
                });
            }
            s3.single_put_max_bytes = mib << 20;
        }
    }
    Ok(repo)
}

/// Parses a repository string: `s3://…`, `file:///…` or an absolute path.
pub fn parse_repo(repo: &str) -> Result<RepoLocation, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        name: "repo",
        value: repo.to_string(),
        reason: reason.to_string(),
    };
    if repo.starts_with("s3://") {
        return Ok(RepoLocation::S3(S3Settings::from_url(repo)?));
    }
    let path = match repo.strip_prefix("file://") {
        Some(rest) => rest,
        None if repo.contains("://") => {
            return Err(invalid(
                "unknown scheme\nHINT: use a local path, file:///path or s3://bucket/prefix",
            ))
        }
        None => repo,
    };
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(invalid("a local repository needs an absolute path\nHINT: PostgreSQL runs archive_command in the data directory, so a relative path would land there"));
    }
    Ok(RepoLocation::Local(path.to_path_buf()))
}

impl Settings {
    /// Flags and environment (already in `args`), then the file, then defaults.
    pub fn resolve(args: &GlobalArgs) -> Result<Settings, ConfigError> {
        let file = load_file(args)?;
        let env_endpoint = || {
            std::env::var("AWS_ENDPOINT_URL_S3")
                .ok()
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        };
        let repo_text = args
            .repo
            .clone()
            .or(file.repo.clone())
            .ok_or(ConfigError::NoRepo)?;
        let repo1 = RepoSettings {
            index: 1,
            location: locate(
                "repo",
                &repo_text,
                S3File {
                    endpoint: args
                        .s3_endpoint
                        .clone()
                        .or(file.s3_endpoint.clone())
                        .or_else(env_endpoint),
                    region: args.s3_region.clone().or(file.s3_region.clone()),
                    path_style: args.s3_path_style.or(file.s3_path_style),
                    part_size_mib: file.s3_part_size_mib,
                    single_put_max_mib: file.s3_single_put_max_mib,
                    timeout_secs: file.s3_timeout_secs,
                    credentials: file
                        .s3_access_key_id
                        .clone()
                        .zip(file.s3_secret_access_key.clone()),
                },
            )?,
            encryption: encryption_source(
                "WALVAULT_",
                file.encryption_passphrase.as_ref(),
                file.encryption_key_file.as_ref(),
                file.encryption_key_command.as_ref(),
            )?,
            required: true,
        };
        let mut repos = vec![repo1];
        let table = file.repo2.as_ref();
        let repo2_text = args
            .repo2
            .clone()
            .or_else(|| table.and_then(|t| t.repo.clone()));
        match (repo2_text, table) {
            (Some(text), _) => {
                let t = table.cloned().unwrap_or_default();
                repos.push(RepoSettings {
                    index: 2,
                    location: locate(
                        "repo2",
                        &text,
                        S3File {
                            endpoint: args
                                .repo2_s3_endpoint
                                .clone()
                                .or(t.s3_endpoint.clone())
                                .or_else(env_endpoint),
                            region: args.repo2_s3_region.clone().or(t.s3_region.clone()),
                            path_style: args.repo2_s3_path_style.or(t.s3_path_style),
                            part_size_mib: t.s3_part_size_mib,
                            single_put_max_mib: t.s3_single_put_max_mib,
                            timeout_secs: t.s3_timeout_secs,
                            credentials: t
                                .s3_access_key_id
                                .clone()
                                .zip(t.s3_secret_access_key.clone()),
                        },
                    )?,
                    encryption: encryption_source(
                        "WALVAULT_REPO2_",
                        t.encryption_passphrase.as_ref(),
                        t.encryption_key_file.as_ref(),
                        t.encryption_key_command.as_ref(),
                    )?,
                    required: t.required.unwrap_or(true),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    name: "repo2",
                    value: "(a table without repo)".to_string(),
                    reason: "names no repository\nHINT: set repo = \"s3://bucket/prefix\" (or a local path) inside [repo2]".to_string(),
                })
            }
            (None, None) => {}
        }
        let repo_index = args.repo_index.unwrap_or(1);
        if repo_index == 0 || repo_index > repos.len() {
            return Err(ConfigError::Invalid {
                name: "repo_index",
                value: repo_index.to_string(),
                reason: if repos.len() == 1 {
                    "only repo 1 is configured\nHINT: configure the second repository with repo2 = \"...\" (--repo2) or a [repo2] table".to_string()
                } else {
                    "must be 1 or 2".to_string()
                },
            });
        }
        let chosen = repos[repo_index - 1].clone();
        let level = args.compress_level.or(file.compress_level).unwrap_or(3);
        if !(-7..=19).contains(&level) {
            return Err(ConfigError::Invalid {
                name: "compress_level",
                value: level.to_string(),
                reason: "must be between -7 and 19 (0 stores uncompressed)".to_string(),
            });
        }
        let workers = args.compress_threads.or(file.compress_threads).unwrap_or(0);
        let fetch_retry_secs = args
            .fetch_retry_secs
            .or(file.fetch_retry_secs)
            .unwrap_or(60);
        let archive_async = if args.archive_async.or(file.archive_async).unwrap_or(false) {
            let spool_path = args.spool_path.clone().or(file.spool_path).ok_or_else(|| {
                ConfigError::Invalid {
                    name: "archive_async",
                    value: "true".to_string(),
                    reason: "needs a spool directory\nHINT: set spool_path = \"/var/spool/walvault\" (a directory PostgreSQL's user can write, on the same machine)".to_string(),
                }
            })?;
            if !spool_path.is_absolute() {
                return Err(ConfigError::Invalid {
                    name: "spool_path",
                    value: spool_path.display().to_string(),
                    reason: "must be an absolute path".to_string(),
                });
            }
            let jobs = args.archive_jobs.or(file.archive_jobs).unwrap_or(2);
            if jobs == 0 || jobs > 64 {
                return Err(ConfigError::Invalid {
                    name: "archive_jobs",
                    value: jobs.to_string(),
                    reason: "must be between 1 and 64".to_string(),
                });
            }
            let memory_mib = args
                .archive_memory_mib
                .or(file.archive_memory_mib)
                .unwrap_or(crate::archive::spool::WORKER_MEMORY_BUDGET >> 20);
            if !(8..=65536).contains(&memory_mib) {
                return Err(ConfigError::Invalid {
                    name: "archive_memory_mib",
                    value: memory_mib.to_string(),
                    reason: "must be between 8 and 65536".to_string(),
                });
            }
            Some(AsyncArchive {
                spool_path,
                jobs,
                memory_bytes: memory_mib << 20,
                timeout: Duration::from_secs(
                    args.archive_timeout_secs
                        .or(file.archive_timeout_secs)
                        .unwrap_or(60)
                        .max(1),
                ),
            })
        } else {
            None
        };
        let backup_type = match &file.backup_type {
            None => crate::repo::manifest::BackupType::Full,
            Some(t) => t.parse().map_err(|reason| ConfigError::Invalid {
                name: "backup_type",
                value: t.clone(),
                reason,
            })?,
        };
        let notify = crate::notify::NotifySettings {
            webhook: args.notify_url.clone().or(file.notify_url.clone()),
            ping: args
                .notify_ping_url
                .clone()
                .or(file.notify_ping_url.clone()),
            timeout: Duration::from_secs(file.notify_timeout_secs.unwrap_or(10).clamp(1, 300)),
        };
        for (name, url) in [
            ("notify_url", &notify.webhook),
            ("notify_ping_url", &notify.ping),
        ] {
            if let Some(url) = url {
                if !matches!(
                    reqwest::Url::parse(url)
                        .map(|u| u.scheme().to_string())
                        .as_deref(),
                    Ok("http" | "https")
                ) {
                    return Err(ConfigError::Invalid {
                        name,
                        value: crate::notify::redact(url),
                        reason: "must be an http:// or https:// URL".to_string(),
                    });
                }
            }
        }
        Ok(Settings {
            notify,
            repo: chosen.location,
            encryption: chosen.encryption,
            repos,
            repo_index,
            backup_type,
            restore_prefetch: args.restore_prefetch.or(file.restore_prefetch).unwrap_or(0),
            restore_prefetch_bytes: args
                .restore_prefetch_bytes
                .or(file.restore_prefetch_bytes)
                .unwrap_or(1 << 30),
            archive_async,
            compress: CompressSettings { level, workers },
            fetch_retry: Duration::from_secs(fetch_retry_secs),
            verbose: args.verbose,
            read_only: args.read_only.unwrap_or(false),
        })
    }

    /// Opens the object store the settings name. No network traffic: an
    /// encrypted repository is unlocked at the first use.
    pub fn open_store(&self) -> Result<Arc<dyn ObjectStore>, ConfigError> {
        let plain = open_plain_store(&self.repo, self.read_only)?;
        let keys = crate::repo::keys::RepoKeys {
            source: self.encryption.clone(),
            repo: plain.describe(),
        };
        Ok(Arc::new(crate::storage::crypt::CryptStore::new(
            plain,
            Arc::new(keys),
        )))
    }

    /// These settings with repository `index` (1 or 2) chosen.
    pub fn select(&self, index: usize) -> Option<Settings> {
        let chosen = self.repos.get(index.checked_sub(1)?)?;
        let mut s = self.clone();
        s.repo = chosen.location.clone();
        s.encryption = chosen.encryption.clone();
        s.repo_index = index;
        Some(s)
    }

    /// Whether a second repository is configured.
    pub fn has_repo2(&self) -> bool {
        self.repos.len() > 1
    }

    /// Every configured repository, opened, repo1 first.
    pub fn open_all(&self) -> Result<Vec<(RepoSettings, Repository)>, ConfigError> {
        self.repos
            .iter()
            .map(|r| {
                let s = self.select(r.index).expect("a configured index");
                Ok((r.clone(), s.open_repository()?))
            })
            .collect()
    }

    pub fn open_repository(&self) -> Result<Repository, ConfigError> {
        Ok(Repository::new(self.open_store()?, self.compress))
    }
}

fn open_plain_store(
    repo: &RepoLocation,
    read_only: bool,
) -> Result<Arc<dyn ObjectStore>, ConfigError> {
    {
        use crate::storage::readonly::ReadOnlyStore;
        Ok(match (repo, read_only) {
            (RepoLocation::Local(path), false) => Arc::new(LocalStore::new(path.clone())?),
            (RepoLocation::Local(path), true) => {
                Arc::new(ReadOnlyStore::new(LocalStore::new(path.clone())?))
            }
            (RepoLocation::S3(s3), false) => Arc::new(S3Store::new(s3.clone())?),
            (RepoLocation::S3(s3), true) => Arc::new(ReadOnlyStore::new(S3Store::new(s3.clone())?)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> GlobalArgs {
        GlobalArgs::default()
    }

    #[test]
    fn repo_strings() {
        assert!(
            matches!(parse_repo("/var/lib/walvault"), Ok(RepoLocation::Local(p)) if p == Path::new("/var/lib/walvault"))
        );
        assert!(
            matches!(parse_repo("file:///srv/r"), Ok(RepoLocation::Local(p)) if p == Path::new("/srv/r"))
        );
        match parse_repo("s3://bucket/some/prefix/") {
            Ok(RepoLocation::S3(s)) => {
                assert_eq!(s.bucket, "bucket");
                assert_eq!(s.prefix, "some/prefix");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_repo("relative/dir")
            .unwrap_err()
            .to_string()
            .contains("absolute path"));
        assert!(parse_repo("gs://x")
            .unwrap_err()
            .to_string()
            .contains("unknown scheme"));
        assert!(parse_repo("s3://").is_err());
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            "repo = \"s3://b/p\"\ns3_endpoint = \"http://127.0.0.1:1\"\ns3_path_style = true\ncompress_level = 9\nfetch_retry_secs = 5\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        let s = Settings::resolve(&a).unwrap();
        match &s.repo {
            RepoLocation::S3(s3) => {
                assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:1"));
                assert!(s3.path_style);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.compress.level, 9);
        assert_eq!(s.fetch_retry, Duration::from_secs(5));
        a.repo = Some("/tmp/x".into());
        a.compress_level = Some(1);
        let s = Settings::resolve(&a).unwrap();
        assert!(matches!(s.repo, RepoLocation::Local(_)));
        assert_eq!(s.compress.level, 1);
    }

    #[test]
    fn bad_files_and_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "repo = \"/r\"\nrepository = \"typo\"\n").unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        let err = Settings::resolve(&a).unwrap_err().to_string();
        assert!(
            err.contains("w.toml") && err.contains("repository"),
            "{err}"
        );
        a.config = Some(dir.path().join("missing.toml"));
        assert!(Settings::resolve(&a)
            .unwrap_err()
            .to_string()
            .contains("missing.toml"));
        let mut a = args();
        a.repo = Some("/r".into());
        a.compress_level = Some(42);
        assert!(Settings::resolve(&a)
            .unwrap_err()
            .to_string()
            .contains("compress_level"));
    }

    #[test]
    fn asynchronous_archiving_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        let resolve = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let mut a = args();
            a.config = Some(path.clone());
            Settings::resolve(&a)
        };
        let err = resolve("repo = \"/r\"\narchive_async = true\n").unwrap_err();
        assert!(err.to_string().contains("needs a spool directory"), "{err}");
        let err =
            resolve("repo = \"/r\"\narchive_async = true\nspool_path = \"rel\"\n").unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err =
            resolve("repo = \"/r\"\narchive_async = true\nspool_path = \"/s\"\narchive_jobs = 0\n")
                .unwrap_err();
        assert!(err.to_string().contains("archive_jobs"), "{err}");
        let s = resolve(
            "repo = \"/r\"\narchive_async = true\nspool_path = \"/s\"\nrestore_prefetch = 8\n",
        )
        .unwrap();
        let a = s.archive_async.expect("on");
        assert_eq!((a.jobs, a.timeout.as_secs()), (2, 60));
        assert_eq!(a.memory_bytes, 48 << 20);
        assert_eq!(s.restore_prefetch, 8);
        let err = resolve(
            "repo = \"/r\"\narchive_async = true\nspool_path = \"/s\"\narchive_memory_mib = 4\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("archive_memory_mib"), "{err}");
        let a = resolve(
            "repo = \"/r\"\narchive_async = true\nspool_path = \"/s\"\narchive_memory_mib = 96\n",
        )
        .unwrap()
        .archive_async
        .unwrap();
        assert_eq!(a.memory_bytes, 96 << 20);
        let err = resolve("repo = \"s3://b/p\"\ns3_single_put_max_mib = 300\n").unwrap_err();
        assert!(err.to_string().contains("s3_single_put_max_mib"), "{err}");
        assert!(resolve("repo = \"/r\"\n").unwrap().archive_async.is_none());
    }

    #[test]
    fn a_second_repository_has_its_own_settings_and_is_chosen_by_index() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        let resolve = |text: &str, index: Option<usize>| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let mut a = args();
            a.config = Some(path.clone());
            a.repo_index = index;
            Settings::resolve(&a)
        };
        let text = "repo = \"/r1\"\ns3_endpoint = \"http://one\"\n[repo2]\nrepo = \"s3://b/p\"\ns3_endpoint = \"http://two\"\ns3_path_style = true\nencryption_passphrase = \"pw-pw-pw\"\nrequired = false\n";
        let s = resolve(text, None).unwrap();
        assert_eq!(s.repos.len(), 2);
        assert!(matches!(s.repo, RepoLocation::Local(_)) && s.encryption.is_none());
        assert!(!s.repos[1].required && s.repos[0].required);
        match &s.repos[1].location {
            RepoLocation::S3(s3) => {
                assert_eq!(s3.endpoint.as_deref(), Some("http://two"));
                assert!(s3.path_style);
            }
            other => panic!("{other:?}"),
        }
        let s2 = resolve(text, Some(2)).unwrap();
        assert!(matches!(s2.repo, RepoLocation::S3(_)) && s2.encryption.is_some());
        assert_eq!(s2.repo_index, 2);
        let err = resolve("repo = \"/r1\"\n", Some(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("only repo 1 is configured"), "{err}");
        let err = resolve("repo = \"/r1\"\n[repo2]\nrequired = true\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inside [repo2]"), "{err}");
        let err = resolve("repo = \"/r1\"\n[repo2]\nrepo = \"rel\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("repo2") && err.contains("absolute"), "{err}");
        // A secret in [repo2] makes the file private.
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        let err = Settings::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("600"), "{err}");
    }
}
