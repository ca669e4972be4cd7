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

    /// Files the asynchronous worker pushes at once [default: 4]
    #[arg(long, env = "WALVAULT_ARCHIVE_JOBS", global = true, value_name = "N")]
    pub archive_jobs: Option<usize>,

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
    pub s3_timeout_secs: Option<u64>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub compress_level: Option<i32>,
    pub compress_threads: Option<u32>,
    pub fetch_retry_secs: Option<u64>,
    pub archive_async: Option<bool>,
    pub spool_path: Option<PathBuf>,
    pub archive_jobs: Option<usize>,
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

/// Everything resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub repo: RepoLocation,
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
    /// Where the encryption secret comes from, if one is configured.
    pub encryption: Option<crate::repo::keys::SecretSource>,
}

/// Asynchronous archiving's settings.
#[derive(Debug, Clone)]
pub struct AsyncArchive {
    pub spool_path: PathBuf,
    pub jobs: usize,
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
    if file.encryption_passphrase.is_some() {
        crate::repo::keys::check_private(&path).map_err(|message| ConfigError::Parse {
            path: path.clone(),
            message,
        })?;
    }
    Ok(file)
}

/// The encryption secret's source: the environment first, then the file.
/// Never a command-line flag (those show in process listings).
fn encryption_source(
    file: &FileConfig,
) -> Result<Option<crate::repo::keys::SecretSource>, ConfigError> {
    use crate::repo::keys::SecretSource;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let passphrase = env("WALVAULT_ENCRYPTION_PASSPHRASE").or(file.encryption_passphrase.clone());
    let key_file = env("WALVAULT_ENCRYPTION_KEY_FILE")
        .map(PathBuf::from)
        .or(file.encryption_key_file.clone());
    let command = env("WALVAULT_ENCRYPTION_KEY_COMMAND").or(file.encryption_key_command.clone());
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
        let encryption = encryption_source(&file)?;
        let repo_text = args.repo.clone().or(file.repo).ok_or(ConfigError::NoRepo)?;
        let mut repo = parse_repo(&repo_text)?;
        if let RepoLocation::S3(s3) = &mut repo {
            s3.endpoint = args
                .s3_endpoint
                .clone()
                .or(file.s3_endpoint)
                .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                .filter(|e| !e.is_empty());
            s3.region = args.s3_region.clone().or(file.s3_region);
            s3.path_style = args.s3_path_style.or(file.s3_path_style).unwrap_or(false);
            if let (Some(id), Some(secret)) = (file.s3_access_key_id, file.s3_secret_access_key) {
                s3.static_credentials = Some((id, secret));
            }
            if let Some(secs) = file.s3_timeout_secs {
                if secs == 0 {
                    return Err(ConfigError::Invalid {
                        name: "s3_timeout_secs",
                        value: secs.to_string(),
                        reason: "must be at least 1".to_string(),
                    });
                }
                s3.request_timeout = Duration::from_secs(secs);
            }
            if let Some(mib) = file.s3_part_size_mib {
                s3.part_size_bytes = mib << 20;
            }
        }
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
            let jobs = args.archive_jobs.or(file.archive_jobs).unwrap_or(4);
            if jobs == 0 || jobs > 64 {
                return Err(ConfigError::Invalid {
                    name: "archive_jobs",
                    value: jobs.to_string(),
                    reason: "must be between 1 and 64".to_string(),
                });
            }
            Some(AsyncArchive {
                spool_path,
                jobs,
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
        Ok(Settings {
            encryption,
            backup_type,
            restore_prefetch: args.restore_prefetch.or(file.restore_prefetch).unwrap_or(0),
            restore_prefetch_bytes: args
                .restore_prefetch_bytes
                .or(file.restore_prefetch_bytes)
                .unwrap_or(1 << 30),
            archive_async,
            repo,
            compress: CompressSettings { level, workers },
            fetch_retry: Duration::from_secs(fetch_retry_secs),
            verbose: args.verbose,
            read_only: args.read_only.unwrap_or(false),
        })
    }

    /// Opens the object store the settings name. No network traffic: an
    /// encrypted repository is unlocked at the first use.
    pub fn open_store(&self) -> Result<Arc<dyn ObjectStore>, ConfigError> {
        let plain = self.open_plain_store()?;
        let keys = crate::repo::keys::RepoKeys {
            source: self.encryption.clone(),
            repo: plain.describe(),
        };
        Ok(Arc::new(crate::storage::crypt::CryptStore::new(
            plain,
            Arc::new(keys),
        )))
    }

    fn open_plain_store(&self) -> Result<Arc<dyn ObjectStore>, ConfigError> {
        use crate::storage::readonly::ReadOnlyStore;
        Ok(match (&self.repo, self.read_only) {
            (RepoLocation::Local(path), false) => Arc::new(LocalStore::new(path.clone())?),
            (RepoLocation::Local(path), true) => {
                Arc::new(ReadOnlyStore::new(LocalStore::new(path.clone())?))
            }
            (RepoLocation::S3(s3), false) => Arc::new(S3Store::new(s3.clone())?),
            (RepoLocation::S3(s3), true) => Arc::new(ReadOnlyStore::new(S3Store::new(s3.clone())?)),
        })
    }

    pub fn open_repository(&self) -> Result<Repository, ConfigError> {
        Ok(Repository::new(self.open_store()?, self.compress))
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
        assert_eq!((a.jobs, a.timeout.as_secs()), (4, 60));
        assert_eq!(s.restore_prefetch, 8);
        assert!(resolve("repo = \"/r\"\n").unwrap().archive_async.is_none());
    }
}
