//! The repository format: key layout, format version, cluster identity and
//! the stored object envelope. Everything that decides what bytes sit under
//! which key lives here; commands (archive, backup, ...) call this module and
//! never build keys themselves.
//!
//! The format is a promise to users (docs/FORMAT.md): a change bumps
//! [`FORMAT_VERSION`] and keeps a reader for every older version.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::{CreateOnly, CreateOnlyProbe, ObjectStore, PutMode, StorageError};
use crate::wal::WalSegmentSize;

pub mod blocks;
pub mod copy;
pub mod filelist;
pub mod keys;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod object;

pub use object::{CompressSettings, ObjectError, ObjectInfo};

/// The repository format this walvault writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;
/// The version of a repository that is not encrypted (every older
/// walvault reads it).
pub const FORMAT_VERSION_PLAIN: u32 = 1;

/// The identity of the PostgreSQL cluster a repository belongs to, as read
/// from a WAL segment's long page header or the control file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub system_identifier: u64,
    pub wal_segment_size: WalSegmentSize,
    pub pg_major: u32,
}

/// What a backup's objects occupy.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    count: usize,
    bytes: u64,
    newest: i64,
}

/// `repository.json`: written once, create-only, by `walvault init`.
/// Unknown fields are ignored, so a later walvault can add optional ones
/// without breaking this one (a change this one must not ignore bumps
/// `format_version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoHeader {
    /// Always "walvault".
    pub format: String,
    pub format_version: u32,
    /// Decimal string: a u64 does not fit a JSON number everywhere.
    pub system_identifier: String,
    pub pg_major: u32,
    pub wal_segment_size: u64,
    pub created_at: String,
    pub created_by: String,
    /// How create-only puts are kept from overwriting on this storage
    /// ("atomic" or "head-check", see [`CreateOnly`]), as probed by `init`
    /// or `check --storage`. Absent in headers written before the probe
    /// existed: S3 then uses "head-check" until `check --storage` records
    /// what the server does; local storage is atomic regardless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_only: Option<String>,
    /// What the probe found, in words, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_only_probe: Option<String>,
    /// Format version 2: every object but this header is encrypted with a
    /// data key, wrapped here by the user's secret ([`keys`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<keys::EncryptionHeader>,
}

impl RepoHeader {
    pub fn system_identifier(&self) -> Option<u64> {
        self.system_identifier.parse().ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("repository header \"{key}\" in {repo} is unreadable: {reason}\nHINT: this path holds something other than a walvault repository, or the header was damaged")]
    HeaderCorrupt {
        key: String,
        repo: String,
        reason: String,
    },
    #[error("repository {repo} has format version {found}, newer than this walvault reads ({FORMAT_VERSION})\nHINT: upgrade walvault")]
    FormatTooNew { repo: String, found: u32 },
    #[error("{what} belongs to PostgreSQL cluster {found}, but repository {repo} belongs to cluster {expected}\nHINT: point this cluster at its own repository (--repo); a repository holds the WAL of one cluster")]
    ClusterMismatch {
        what: String,
        repo: String,
        expected: u64,
        found: u64,
    },
    #[error("{what} has WAL segment size {found}, but repository {repo} was created for {expected}\nHINT: point this cluster at its own repository (--repo)")]
    SegmentSizeMismatch {
        what: String,
        repo: String,
        expected: WalSegmentSize,
        found: WalSegmentSize,
    },
    #[error("{what} is from PostgreSQL {found}, but repository {repo} holds PostgreSQL {expected}\nHINT: a major upgrade (pg_upgrade) makes a new cluster with its own WAL history: create a new repository for it (walvault --repo NEW init --pgdata DIR) and point archive_command at it; this one stays restorable for the old cluster")]
    VersionMismatch {
        what: String,
        repo: String,
        expected: u32,
        found: u32,
    },
    #[error("repository {repo} is not initialized yet\nHINT: {hint}")]
    NotInitialized { repo: String, hint: String },
}

/// A repository: an object store plus the format rules.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    compress: CompressSettings,
}

impl Repository {
    pub fn new(store: Arc<dyn ObjectStore>, compress: CompressSettings) -> Repository {
        Repository { store, compress }
    }

    pub fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    /// The store, shared.
    pub fn store_arc(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub fn compress(&self) -> CompressSettings {
        self.compress
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// The header, or `None` for a repository nothing was pushed to yet.
    pub async fn read_header(&self) -> Result<Option<RepoHeader>, RepoError> {
        let key = layout::header_key();
        let bytes = match self.store.get_bytes(&key).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let corrupt = |reason: String| RepoError::HeaderCorrupt {
            key: key.to_string(),
            repo: self.describe(),
            reason,
        };
        // Read the version first, so that a newer header with new fields
        // gets "upgrade walvault", not a parse error.
        let probe: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let version = probe.get("format_version").and_then(|v| v.as_u64());
        match version {
            Some(v) if v > FORMAT_VERSION as u64 => {
                return Err(RepoError::FormatTooNew {
                    repo: self.describe(),
                    found: v as u32,
                })
            }
            Some(_) => {}
            None => return Err(corrupt("no format_version".to_string())),
        }
        let header: RepoHeader =
            serde_json::from_value(probe).map_err(|e| corrupt(e.to_string()))?;
        if header.format != "walvault" || header.system_identifier().is_none() {
            return Err(corrupt("not a walvault header".to_string()));
        }
        match header.create_only.as_deref().map(CreateOnly::parse) {
            // Written before the probe existed: nothing is known of this
            // server, so the safe method until `check --storage` records one
            // (local storage ignores it; it is atomic by construction).
            None => self.store.use_create_only(CreateOnly::HeadCheck),
            Some(Some(mode)) => self.store.use_create_only(mode),
            Some(None) => {
                return Err(corrupt(format!(
                    "unknown create_only method {:?}",
                    header.create_only
                )))
            }
        }
        Ok(Some(header))
    }

    /// The header; a repository without one is [`RepoError::NotInitialized`]
    /// (never an empty repository: it may be an unmounted file system or
    /// a wrong bucket or prefix).
    pub async fn require_header(&self) -> Result<RepoHeader, RepoError> {
        self.read_header()
            .await?
            .ok_or_else(|| RepoError::NotInitialized {
                repo: self.describe(),
                hint: "run \"walvault init --pgdata DIR\" once to bind the repository to its cluster; if it exists already, check that its file system is mounted and that --repo names the right directory, bucket and prefix".to_string(),
            })
    }

    /// Checks that `identity` (described by `what`, e.g. `WAL file "…"`)
    /// belongs to this initialized repository.
    pub async fn check_bound(
        &self,
        identity: &ClusterIdentity,
        what: &str,
    ) -> Result<RepoHeader, RepoError> {
        let header = self.require_header().await?;
        self.check_identity(&header, identity, what)?;
        Ok(header)
    }

    /// `walvault init`: creates the repository root if the backend has one
    /// to create, and writes the header, create-only, binding the
    /// repository to `identity`. Idempotent for the same cluster; another
    /// cluster's repository is refused. Returns the header and whether this
    /// call created it. Concurrent inits race on the create-only put: one
    /// wins, the others read its header and compare.
    ///
    /// A new repository's storage is probed first
    /// ([`ObjectStore::probe_create_only`]) and the result recorded in the
    /// header; every later command reads it with the header.
    pub async fn init(
        &self,
        identity: &ClusterIdentity,
        what: &str,
        encryption: Option<keys::EncryptionHeader>,
    ) -> Result<(RepoHeader, bool), RepoError> {
        if let Some(header) = self.read_header().await? {
            self.check_identity(&header, identity, what)?;
            return Ok((header, false));
        }
        self.store.create_root().await?;
        let probe = self.store.probe_create_only().await?;
        self.store.use_create_only(probe.mode);
        let header = RepoHeader {
            format: "walvault".to_string(),
            // Older walvault versions ignore unknown header fields: an
            // encrypted repository must be one they refuse.
            format_version: if encryption.is_some() {
                FORMAT_VERSION
            } else {
                FORMAT_VERSION_PLAIN
            },
            system_identifier: identity.system_identifier.to_string(),
            pg_major: identity.pg_major,
            wal_segment_size: identity.wal_segment_size.bytes(),
            created_at: jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or(jiff::Timestamp::now())
                .to_string(),
            created_by: format!("walvault {}", env!("CARGO_PKG_VERSION")),
            create_only: Some(probe.mode.as_str().to_string()),
            create_only_probe: Some(describe_probe(&probe)),
            encryption,
        };
        let mut json = serde_json::to_vec_pretty(&header).expect("header serializes");
        json.push(b'\n');
        match self
            .store
            .put_bytes(&layout::header_key(), Bytes::from(json), PutMode::Create)
            .await
        {
            Ok(()) => {
                tracing::info!(repo = %self.describe(), system_identifier = identity.system_identifier, "repository initialized");
                Ok((header, true))
            }
            Err(StorageError::AlreadyExists { .. }) => {
                let header = self.require_header().await?;
                self.check_identity(&header, identity, what)?;
                Ok((header, false))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `walvault check --storage`: probes the storage again and, when the
    /// result differs from the header's, records the new one (the header
    /// is the one object walvault ever rewrites, and only here).
    pub async fn reprobe(&self) -> Result<(CreateOnlyProbe, Option<String>), RepoError> {
        let mut header = self.require_header().await?;
        let probe = self.store.probe_create_only().await?;
        let before = header.create_only.clone();
        let now = Some(probe.mode.as_str().to_string());
        if before.as_deref().unwrap_or("atomic") != probe.mode.as_str() || before.is_none() {
            header.create_only = now;
            header.create_only_probe = Some(describe_probe(&probe));
            let mut json = serde_json::to_vec_pretty(&header).expect("header serializes");
            json.push(b'\n');
            self.store
                .put_bytes(&layout::header_key(), Bytes::from(json), PutMode::Overwrite)
                .await?;
            self.store.use_create_only(probe.mode);
        }
        Ok((probe, before))
    }

    /// Compares an identity with a header, naming both sides on mismatch.
    pub fn check_identity(
        &self,
        header: &RepoHeader,
        identity: &ClusterIdentity,
        what: &str,
    ) -> Result<(), RepoError> {
        // A different major first: after pg_upgrade the system identifier
        // differs too, and the upgrade is what the user needs to hear of.
        if header.pg_major != identity.pg_major {
            return Err(RepoError::VersionMismatch {
                what: what.to_string(),
                repo: self.describe(),
                expected: header.pg_major,
                found: identity.pg_major,
            });
        }
        let expected = header.system_identifier().unwrap_or_default();
        if expected != identity.system_identifier {
            return Err(RepoError::ClusterMismatch {
                what: what.to_string(),
                repo: self.describe(),
                expected,
                found: identity.system_identifier,
            });
        }
        if header.wal_segment_size != identity.wal_segment_size.bytes() {
            return Err(RepoError::SegmentSizeMismatch {
                what: what.to_string(),
                repo: self.describe(),
                expected: WalSegmentSize::new(header.wal_segment_size)
                    .unwrap_or(WalSegmentSize::DEFAULT),
                found: identity.wal_segment_size,
            });
        }
        Ok(())
    }
}

/// The probe's findings in one line, for the header.
pub fn describe_probe(probe: &CreateOnlyProbe) -> String {
    format!(
        "single PUT: {}; multipart: {}; probed {}",
        probe.put,
        probe.multipart,
        jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or(jiff::Timestamp::now())
    )
}

/// A backup as found in the repository.
#[derive(Debug, Clone)]
pub struct BackupListing {
    pub label: String,
    /// `None`: no manifest, an incomplete (interrupted or in-progress)
    /// backup. Its `files` and `directories` are empty: a listing reads
    /// summaries, not whole manifests ([`Repository::read_manifest`] reads
    /// one).
    pub manifest: Option<manifest::BackupManifest>,
    /// How many files the manifest lists.
    pub file_count: usize,
    pub object_count: usize,
    pub stored_bytes: u64,
    /// The modification time of its newest object (Unix seconds): how
    /// recently an incomplete backup wrote anything.
    pub newest_object_unix_secs: i64,
    /// For an incomplete backup: whether its writer process still runs,
    /// when that can be known (it ran on this host); `None` otherwise.
    pub writer_alive: Option<bool>,
}

/// `backup/<label>/summary` (JSON in the envelope).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryObject {
    pub summary_version: u32,
    /// Objects of the backup and what they occupy, the summary excluded.
    pub object_count: usize,
    pub stored_bytes: u64,
    pub newest_object_unix_secs: i64,
    pub file_count: usize,
    /// The manifest with empty `files` and `directories`.
    pub manifest: manifest::BackupManifest,
}

/// `backup/<label>/writer`: the process writing a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterInfo {
    pub host: String,
    pub pid: u32,
    pub started_at: String,
    /// The process's start time in clock ticks since boot (Linux
    /// `/proc/<pid>/stat`), so a reused pid is not taken for the writer.
    #[serde(default)]
    pub proc_start: Option<u64>,
}

/// Field 22 of `/proc/<pid>/stat`: when the process started.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

impl WriterInfo {
    /// This process.
    pub fn current() -> WriterInfo {
        WriterInfo {
            host: lock::host_name(),
            pid: std::process::id(),
            started_at: jiff::Timestamp::now().to_string(),
            proc_start: proc_start_time(std::process::id()),
        }
    }

    /// Whether the writer still runs: known only on its own host (a pid
    /// in use by a process that started at another time is not it).
    pub fn alive(&self) -> Option<bool> {
        if self.host != lock::host_name() {
            return None;
        }
        let pid = i32::try_from(self.pid).ok()?;
        // SAFETY: kill with signal 0 only checks that the process exists.
        let exists = unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM };
        if !exists {
            return Some(false);
        }
        // The pid is taken; by the writer only if it started then.
        match (self.proc_start, proc_start_time(self.pid)) {
            (Some(recorded), Some(now)) => Some(recorded == now),
            _ => Some(true),
        }
    }
}

/// An archived WAL object.
#[derive(Debug, Clone)]
pub struct WalObject {
    pub name: crate::wal::WalFileName,
    pub key: crate::storage::Key,
    pub stored_bytes: u64,
    /// When it was archived (the object's modification time).
    pub archived_unix_secs: i64,
}

impl Repository {
    /// Stores a manifest, create-only: a backup label is never reused.
    pub async fn write_manifest(
        &self,
        manifest: &manifest::BackupManifest,
    ) -> Result<ObjectInfo, RepoError> {
        let json = serde_json::to_vec_pretty(manifest).expect("manifests serialize");
        let mut src: &[u8] = &json;
        Ok(object::write_object(
            self.store(),
            &layout::manifest_key(&manifest.label),
            PutMode::Create,
            &mut src,
            self.compress,
        )
        .await?)
    }

    /// Claims `label` for a new backup by writing its writer object,
    /// create-only: `Ok(false)` when the label is taken.
    pub async fn claim_label(&self, label: &str) -> Result<bool, RepoError> {
        let json = serde_json::to_vec(&WriterInfo::current()).expect("writer info serializes");
        let mut src: &[u8] = &json;
        match object::write_object(
            self.store(),
            &layout::writer_key(label),
            PutMode::Create,
            &mut src,
            self.compress,
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(ObjectError::Storage(StorageError::AlreadyExists { .. })) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A backup's writer object, if it has a readable one.
    pub async fn read_writer(&self, label: &str) -> Option<WriterInfo> {
        let (json, _) = object::read_to_vec(self.store(), &layout::writer_key(label))
            .await
            .ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// Reads and checks a backup's manifest.
    pub async fn read_manifest(&self, label: &str) -> Result<manifest::BackupManifest, RepoError> {
        let key = layout::manifest_key(label);
        let (json, _) = object::read_to_vec(self.store(), &key).await?;
        let corrupt = |reason: String| RepoError::HeaderCorrupt {
            key: key.to_string(),
            repo: self.describe(),
            reason,
        };
        // The version first (a newer manifest may not parse as this one),
        // without building a tree of the whole file list.
        #[derive(serde::Deserialize)]
        struct Version {
            manifest_version: Option<u64>,
        }
        let version: Version = serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
        if let Some(v) = version.manifest_version {
            if v > manifest::MANIFEST_VERSION as u64 {
                return Err(RepoError::FormatTooNew {
                    repo: self.describe(),
                    found: v as u32,
                });
            }
        }
        let manifest = serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()));
        drop(json);
        manifest
    }

    /// What a backup's objects (its summary aside) occupy, counted as
    /// they are listed, never held: a backup may have millions.
    async fn usage(&self, label: &str) -> Result<Usage, RepoError> {
        let summary_key = layout::summary_key(label);
        let mut usage = Usage::default();
        self.store
            .list_each(&layout::backup_prefix(label), &mut |m| {
                if m.key != summary_key {
                    usage.count += 1;
                    usage.bytes += m.size_bytes;
                    usage.newest = usage.newest.max(m.modified_unix_secs);
                }
            })
            .await?;
        Ok(usage)
    }

    /// A complete backup's summary, from its manifest and its objects.
    async fn summarize(
        &self,
        manifest: &manifest::BackupManifest,
    ) -> Result<SummaryObject, RepoError> {
        let usage = self.usage(&manifest.label).await?;
        let mut header = manifest.clone();
        header.files = Vec::new();
        header.directories = Vec::new();
        Ok(SummaryObject {
            summary_version: 1,
            object_count: usage.count,
            stored_bytes: usage.bytes,
            newest_object_unix_secs: usage.newest,
            file_count: manifest.file_count() as usize,
            manifest: header,
        })
    }

    /// Writes a complete backup's summary (create-only; one already there
    /// stays). Lists only that backup's objects.
    pub async fn write_summary(
        &self,
        manifest: &manifest::BackupManifest,
    ) -> Result<SummaryObject, RepoError> {
        let summary = self.summarize(manifest).await?;
        let json = serde_json::to_vec(&summary).expect("summaries serialize");
        let mut src: &[u8] = &json;
        match object::write_object(
            self.store(),
            &layout::summary_key(&manifest.label),
            PutMode::Create,
            &mut src,
            self.compress,
        )
        .await
        {
            Ok(_) | Err(ObjectError::Storage(StorageError::AlreadyExists { .. })) => Ok(summary),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_summary(&self, label: &str) -> Result<SummaryObject, RepoError> {
        let key = layout::summary_key(label);
        let (json, _) = object::read_to_vec(self.store(), &key).await?;
        let corrupt = |reason: String| RepoError::HeaderCorrupt {
            key: key.to_string(),
            repo: self.describe(),
            reason,
        };
        let probe: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
        let too_new = |field: &str, known: u64| {
            probe
                .pointer(field)
                .and_then(|v| v.as_u64())
                .is_some_and(|v| v > known)
        };
        if too_new("/summary_version", 1)
            || too_new(
                "/manifest/manifest_version",
                manifest::MANIFEST_VERSION as u64,
            )
        {
            return Err(RepoError::FormatTooNew {
                repo: self.describe(),
                found: probe
                    .pointer("/manifest/manifest_version")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0) as u32,
            });
        }
        serde_json::from_value(probe).map_err(|e| corrupt(e.to_string()))
    }

    /// Every backup, complete or not, oldest first (in creation order, see
    /// [`layout::label_order`]). Names the backups with one delimited
    /// listing and reads each complete backup's small summary: no
    /// backup's objects are listed and no manifest is read, except to
    /// rebuild a missing summary (written then, unless the store refuses
    /// writes) and for incomplete backups.
    pub async fn list_backups(&self) -> Result<Vec<BackupListing>, RepoError> {
        let labels = self.store.list_dirs(layout::BACKUP_PREFIX).await?;
        let mut listings: Vec<BackupListing> = Vec::new();
        for label in labels.into_iter().filter(|l| layout::is_backup_label(l)) {
            let summary = match self.read_summary(&label).await {
                Ok(s) if s.manifest.label == label => Some(s),
                Ok(_) => None,
                Err(RepoError::FormatTooNew { repo, found }) => {
                    return Err(RepoError::FormatTooNew { repo, found })
                }
                Err(RepoError::Object(ObjectError::Storage(StorageError::NotFound { .. }))) => None,
                Err(e) => {
                    tracing::warn!(label = %label, error = %e, "unreadable backup summary: reading the manifest instead");
                    None
                }
            };
            let summary = match summary {
                Some(s) => Some(s),
                None => match self.store.head(&layout::manifest_key(&label)).await {
                    Ok(_) => {
                        let manifest = match self.read_manifest(&label).await {
                            Ok(m) => m,
                            // Removed by an expire since the head: gone.
                            Err(RepoError::Object(ObjectError::Storage(
                                StorageError::NotFound { .. },
                            ))) => continue,
                            Err(e) => return Err(e),
                        };
                        match self.write_summary(&manifest).await {
                            Ok(s) => {
                                // An expire may have removed the backup
                                // meanwhile: a summary must never outlive
                                // its manifest.
                                if let Err(StorageError::NotFound { .. }) =
                                    self.store.head(&layout::manifest_key(&label)).await
                                {
                                    let _ = self.store.delete(&layout::summary_key(&label)).await;
                                    continue;
                                }
                                Some(s)
                            }
                            Err(e) => {
                                tracing::debug!(label = %label, error = %e, "backup summary not written");
                                Some(self.summarize(&manifest).await?)
                            }
                        }
                    }
                    Err(StorageError::NotFound { .. }) => None,
                    Err(e) => return Err(e.into()),
                },
            };
            match summary {
                Some(s) => listings.push(BackupListing {
                    label,
                    manifest: Some(s.manifest),
                    file_count: s.file_count,
                    object_count: s.object_count,
                    stored_bytes: s.stored_bytes,
                    newest_object_unix_secs: s.newest_object_unix_secs,
                    writer_alive: None,
                }),
                None => {
                    let usage = self.usage(&label).await?;
                    if usage.count == 0 {
                        continue;
                    }
                    let writer_alive = self.read_writer(&label).await.and_then(|w| w.alive());
                    listings.push(BackupListing {
                        label,
                        manifest: None,
                        file_count: 0,
                        object_count: usage.count,
                        stored_bytes: usage.bytes,
                        newest_object_unix_secs: usage.newest,
                        writer_alive,
                    });
                }
            }
        }
        // Key order puts "…Z-2/" before "…Z/": order by creation instead.
        listings.sort_by(|a, b| layout::label_order(&a.label).cmp(&layout::label_order(&b.label)));
        Ok(listings)
    }

    /// The parsed history file of every timeline that has one in `wal`.
    /// A history file that does not parse is skipped with a warning.
    pub async fn read_histories(
        &self,
        wal: &[WalObject],
    ) -> Result<
        std::collections::BTreeMap<crate::wal::TimelineId, crate::wal::TimelineHistory>,
        RepoError,
    > {
        let mut out = std::collections::BTreeMap::new();
        for w in wal {
            if let crate::wal::WalFileName::History { timeline } = w.name {
                let mut text = Vec::new();
                object::read_object(self.store(), &w.key, &mut |p: &[u8]| {
                    text.extend_from_slice(p);
                    Ok(())
                })
                .await?;
                let text = String::from_utf8_lossy(&text);
                // Push refuses such files, so this is damage: verify
                // reports it; a listing goes on without it.
                match crate::wal::TimelineHistory::parse(timeline, &text) {
                    Ok(history) => {
                        out.insert(timeline, history);
                    }
                    Err(e) => {
                        tracing::warn!(key = %w.key, error = %e, "unreadable timeline history file skipped")
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every archived WAL object, sorted by key (so by timeline, then
    /// position). Needs the header for the segment size; a repository
    /// without one is [`RepoError::NotInitialized`].
    pub async fn list_wal(&self) -> Result<Vec<WalObject>, RepoError> {
        let header = self.require_header().await?;
        let size = WalSegmentSize::new(header.wal_segment_size).unwrap_or(WalSegmentSize::DEFAULT);
        let objects = self.store.list(Some(layout::WAL_PREFIX)).await?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                let name = layout::wal_name_of_key(meta.key.as_str(), size)?;
                Some(WalObject {
                    name,
                    key: meta.key,
                    stored_bytes: meta.size_bytes,
                    archived_unix_secs: meta.modified_unix_secs,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod writer_tests {
    use super::WriterInfo;

    #[test]
    fn a_writer_is_alive_only_while_its_own_process_runs() {
        let me = WriterInfo::current();
        assert!(me.proc_start.is_some());
        assert_eq!(me.alive(), Some(true));
        let reused = WriterInfo {
            proc_start: me.proc_start.map(|t| t + 1),
            ..me.clone()
        };
        assert_eq!(
            reused.alive(),
            Some(false),
            "a reused pid is not the writer"
        );
        let gone = WriterInfo {
            pid: 4_000_000,
            ..me.clone()
        };
        assert_eq!(gone.alive(), Some(false));
        let elsewhere = WriterInfo {
            host: "another-host.invalid".to_string(),
            ..me
        };
        assert_eq!(elsewhere.alive(), None, "unknowable on another host");
    }
}

#[cfg(test)]
mod listing_tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::manifest::{test_manifest, FileEntry};
    use crate::storage::memory::MemoryStore;
    use crate::storage::readonly::ReadOnlyStore;
    use crate::wal::{Lsn, TimelineId};

    fn manifest(label: &str, files: usize) -> manifest::BackupManifest {
        let mut m = test_manifest(
            label,
            TimelineId(1),
            Lsn(0x1000000),
            Lsn(0x2000000),
            WalSegmentSize::DEFAULT,
            "2026-01-01T00:00:00Z",
        );
        for i in 0..files {
            m.files.push(FileEntry {
                path: format!("base/1/{i}"),
                size: 1,
                checksum: Default::default(),
                mode: 0o600,
                mtime: 0,
                object: format!("backup/{label}/files/{i:06}"),
                stored_size: 1,
                base: None,
                deltas: Vec::new(),
                map: None,
            });
        }
        m
    }

    async fn put(repo: &Repository, key: &crate::storage::Key, mut bytes: &[u8]) {
        object::write_object(
            repo.store(),
            key,
            PutMode::Create,
            &mut bytes,
            CompressSettings::default(),
        )
        .await
        .unwrap();
    }

    /// Listings read summaries; a missing one is rebuilt from the manifest
    /// (and written, unless the store refuses writes); a backup without a
    /// manifest is incomplete, and its summary never outlives it.
    #[tokio::test]
    async fn listings_read_summaries_and_rebuild_missing_ones() {
        let store = MemoryStore::new();
        let repo = Repository::new(Arc::new(store.clone()), CompressSettings::default());
        let full = manifest("20260101T000000Z", 3);
        repo.write_manifest(&full).await.unwrap();
        put(
            &repo,
            &layout::backup_file_key("20260101T000000Z", 0),
            b"content",
        )
        .await;
        put(
            &repo,
            &layout::backup_file_key("20260102T000000Z", 0),
            b"partial",
        )
        .await;

        // Read-only: rebuilt in memory, nothing written.
        let ro = Repository::new(
            Arc::new(ReadOnlyStore::new(store.clone())),
            CompressSettings::default(),
        );
        let listed = ro.list_backups().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].file_count, 3);
        assert!(listed[0].manifest.as_ref().unwrap().files.is_empty());
        assert!(listed[1].manifest.is_none());
        let summary = layout::summary_key("20260101T000000Z");
        assert!(store.head(&summary).await.is_err());

        // Writable: the summary is written, and read next time.
        let listed = repo.list_backups().await.unwrap();
        assert!(store.head(&summary).await.is_ok());
        let again = repo.list_backups().await.unwrap();
        assert_eq!(again[0].stored_bytes, listed[0].stored_bytes);
        assert_eq!(again[0].object_count, 2, "manifest and one file");
        assert_eq!(again[0].manifest, listed[0].manifest);
        // Whole manifests come from read_manifest.
        assert_eq!(
            repo.read_manifest("20260101T000000Z")
                .await
                .unwrap()
                .files
                .len(),
            3
        );
        // A summary naming another label is not trusted.
        let mut other = full.clone();
        other.label = "20260103T000000Z".into();
        let json = serde_json::to_vec(&SummaryObject {
            summary_version: 1,
            object_count: 1,
            stored_bytes: 1,
            newest_object_unix_secs: 0,
            file_count: 3,
            manifest: other,
        })
        .unwrap();
        put(&repo, &layout::summary_key("20260102T000000Z"), &json).await;
        let listed = repo.list_backups().await.unwrap();
        assert!(listed[1].manifest.is_none(), "still incomplete");
    }
}
