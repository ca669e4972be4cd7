//! Applying a restore plan: the side effects of `walvault restore`.
//!
//! Order matters, so that an interrupted restore can never be started as a
//! cluster: directories and tablespace links, then every file but
//! `global/pg_control` (in parallel, each checked against the manifest's
//! checksum), then backup_label, tablespace_map, the recovery settings and
//! the signal file, a filesystem sync, and `global/pg_control` last. Without
//! pg_control PostgreSQL refuses to start.
//!
//! An existing, non-empty data directory is never written into: `--force`
//! moves it aside whole (renamed, never deleted), and a directory whose
//! postmaster.pid names a live process is refused even then.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::repo::manifest::{BackupManifest, FileEntry};
use crate::repo::object::read_object;
use crate::repo::{ObjectError, RepoError, Repository};
use crate::storage::Key;
use crate::wal::{TimelineHistory, WalFileName};

use super::plan::{plan_restore, BackupChoice, PlanError, PlanInput, RestorePlan};
use super::recovery_conf::{
    plan_recovery_lines, rewrite_auto_conf, RecoverySettings, TargetAction,
};
use super::target::RecoveryTarget;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub pgdata: PathBuf,
    pub backup: BackupChoice,
    pub target: RecoveryTarget,
    pub target_timeline: Option<crate::wal::TimelineId>,
    pub target_action: Option<TargetAction>,
    pub inclusive: bool,
    pub standby: bool,
    pub force: bool,
    pub jobs: usize,
    /// The restore_command to write (walvault-fetch with this repository's
    /// settings), already shell-quoted.
    pub restore_command: String,
    /// Tablespaces restored somewhere else than where they were: oid → directory.
    pub tablespace_map: BTreeMap<u32, PathBuf>,
    /// Write `archive_mode = 'off'`: the restored server never archives.
    pub archive_off: bool,
    /// Restore into an existing, stopped data directory, rewriting only
    /// what differs (with `force`: even one of another cluster).
    pub delta: bool,
    /// With `delta`: compare every file by checksum, never by size and
    /// time alone.
    pub delta_force_checksum: bool,
}

/// What a delta restore found.
#[derive(Debug, Clone, Default)]
pub struct DeltaSummary {
    /// Kept because size and time matched.
    pub kept: usize,
    /// Read and found equal.
    pub checked_equal: usize,
    /// Written.
    pub rewritten: usize,
    /// Removed because the backup does not have them.
    pub removed: usize,
    /// Patched block by block against their block maps, and the blocks
    /// written into them.
    pub patched: usize,
    pub blocks_written: usize,
}

/// Where each tablespace of a manifest goes: its recorded location unless
/// remapped. Remapping an oid the backup does not have is an error.
pub fn plan_tablespace_locations(
    manifest: &BackupManifest,
    remap: &BTreeMap<u32, PathBuf>,
) -> Result<Vec<crate::repo::manifest::TablespaceEntry>, RestoreError> {
    for oid in remap.keys() {
        if !manifest.tablespaces.iter().any(|t| t.oid == *oid) {
            let known: Vec<String> = manifest
                .tablespaces
                .iter()
                .map(|t| format!("{} ({})", t.oid, t.location))
                .collect();
            return Err(RestoreError::Target {
                path: remap[oid].clone(),
                reason: format!(
                    "is mapped for tablespace {oid}, which backup {} does not have\nHINT: its tablespaces are: {}",
                    manifest.label,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            });
        }
    }
    Ok(manifest
        .tablespaces
        .iter()
        .map(|t| crate::repo::manifest::TablespaceEntry {
            oid: t.oid,
            location: remap
                .get(&t.oid)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| t.location.clone()),
        })
        .collect())
}

/// tablespace_map with remapped locations (PostgreSQL recreates the
/// pg_tblspc links from this file during recovery, so it must agree).
pub fn plan_tablespace_map_file(tablespaces: &[crate::repo::manifest::TablespaceEntry]) -> String {
    tablespaces
        .iter()
        .map(|t| format!("{} {}\n", t.oid, t.location))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("backup {label} was removed by expire while it was being restored; the data directory is incomplete\nHINT: restore again (with --force to move this attempt aside); another backup will be chosen")]
    BackupExpired { label: String },
    #[error("backup {label} has a manifest restore cannot trust: {reason}\nHINT: the manifest was not written by walvault or is damaged; restore another backup (--backup LABEL)")]
    BadManifest { label: String, reason: String },
    #[error("backup {label} is built on backup {missing}, which is not complete in the repository (removed or damaged)\nHINT: restore another backup (--backup LABEL); walvault list shows what each backup depends on")]
    MissingDependency { label: String, missing: String },
    #[error("history file \"{name}\" in the repository is damaged: {reason}")]
    BadHistory { name: String, reason: String },
    #[error("data directory \"{path}\" {reason}")]
    Target { path: PathBuf, reason: String },
    #[error("{op} \"{path}\": {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("restore \"{path}\" from {object}: {source}")]
    Object {
        path: String,
        object: String,
        #[source]
        source: ObjectError,
    },
    #[error("restored \"{path}\" does not match the manifest: {reason}\nHINT: run walvault verify; the backup may be damaged")]
    Mismatch { path: String, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RestoreError + 'a {
    move |source| RestoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What the restore did (or, for a dry run, would do).
#[derive(Debug)]
pub struct RestoreReport {
    pub plan: RestorePlan,
    pub moved_aside: Option<PathBuf>,
    /// For `--delta`: what was kept, checked, rewritten and removed.
    pub delta: Option<DeltaSummary>,
    pub recovery_lines: Vec<(String, String)>,
    /// Whether, and where, the restored server archives once started.
    pub archiving: String,
}

/// Loads what planning needs and plans. Writes nothing.
pub async fn plan(repo: &Repository, opts: &RestoreOptions) -> Result<RestorePlan, RestoreError> {
    let header = repo.read_header().await?;
    let backups: Vec<BackupManifest> = repo
        .list_backups()
        .await?
        .into_iter()
        .filter_map(|b| b.manifest)
        .collect();
    // A backup built on one that is gone cannot be restored: plan without
    // it (naming it with --backup still explains why).
    let labels: std::collections::BTreeSet<String> =
        backups.iter().map(|m| m.label.clone()).collect();
    let backups: Vec<BackupManifest> = backups
        .into_iter()
        .filter(|m| {
            let missing = m.depends_on.iter().find(|d| !labels.contains(*d));
            if let Some(missing) = missing {
                tracing::warn!(label = %m.label, missing = %missing, "backup skipped: it is built on a backup that is not complete in the repository");
                if opts.backup == BackupChoice::Label(m.label.clone()) {
                    return true;
                }
            }
            missing.is_none()
        })
        .collect();
    let wal = repo.list_wal().await?;
    let mut histories = BTreeMap::new();
    for w in &wal {
        if let WalFileName::History { timeline } = w.name {
            let mut text = Vec::new();
            read_object(repo.store(), &w.key, &mut |p: &[u8]| {
                text.extend_from_slice(p);
                Ok(())
            })
            .await
            .map_err(RepoError::from)?;
            let text = String::from_utf8_lossy(&text);
            let history =
                TimelineHistory::parse(timeline, &text).map_err(|e| RestoreError::BadHistory {
                    name: w.name.to_string(),
                    reason: e.to_string(),
                })?;
            histories.insert(timeline, history);
        }
    }
    let size = header
        .and_then(|h| crate::wal::WalSegmentSize::new(h.wal_segment_size).ok())
        .unwrap_or(crate::wal::WalSegmentSize::DEFAULT);
    let input = PlanInput {
        backups: &backups,
        wal: &wal,
        histories: &histories,
        target: &opts.target,
        backup: &opts.backup,
        target_timeline: opts.target_timeline,
        wal_segment_size: size,
    };
    let mut planned = plan_restore(&input)?;
    // Listings carry no file lists: the chosen backup's whole manifest.
    planned.backup = repo.read_manifest(&planned.backup.label).await?;
    Ok(planned)
}

/// The recovery settings a plan leads to.
pub fn recovery_lines(plan: &RestorePlan, opts: &RestoreOptions) -> Vec<(String, String)> {
    let action = match (&opts.target, opts.target_action) {
        (RecoveryTarget::EndOfArchive, _) => None,
        (_, Some(action)) => Some(action),
        // A DBA restoring to a point wants a running cluster at that point.
        (_, None) if !opts.standby => Some(TargetAction::Promote),
        (_, None) => None,
    };
    let mut lines = plan_recovery_lines(&RecoverySettings {
        restore_command: opts.restore_command.clone(),
        target: opts.target.clone(),
        target_timeline: plan.target_timeline,
        target_action: action,
        inclusive: opts.inclusive,
    });
    if opts.archive_off {
        lines.push(("archive_mode".to_owned(), "'off'".to_owned()));
    }
    lines
}

/// What the restored server will do about archiving once started, read
/// from its postgresql.conf and then postgresql.auto.conf (the later
/// setting wins, as in PostgreSQL). Include directives are not followed;
/// the text says so when the files use them.
pub fn plan_archiving_summary(conf: &str, auto_conf: &str) -> String {
    let mut mode = "off".to_string();
    let mut command = String::new();
    let mut library = String::new();
    let mut includes = false;
    for line in conf.lines().chain(auto_conf.lines()) {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=').or_else(|| line.split_once(' ')) else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.split(" #").next().unwrap_or("").trim();
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .map(|v| v.replace("''", "'"))
            .unwrap_or_else(|| value.to_string());
        match name.as_str() {
            "archive_mode" => mode = value.to_ascii_lowercase(),
            "archive_command" => command = value,
            "archive_library" => library = value,
            n if n.starts_with("include") => includes = true,
            _ => {}
        }
    }
    let caveat = if includes {
        " (the configuration includes other files, which may change this)"
    } else {
        ""
    };
    if !matches!(mode.as_str(), "on" | "always" | "true" | "yes" | "1") {
        return format!("off: archive_mode = '{mode}'{caveat}");
    }
    if !library.is_empty() {
        return format!("ON: archive_library '{library}'{caveat}; pass --archive-mode off for a copy that must not archive");
    }
    format!("ON: archive_command '{command}' once started{caveat}; pass --archive-mode off for a copy that must not archive")
}

/// Whether the process in a postmaster.pid file is alive.
fn live_postmaster(pgdata: &Path) -> Option<i32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM };
    alive.then_some(pid)
}

/// Makes `pgdata` an empty directory, moving old contents aside with
/// `force`.
fn prepare_target(pgdata: &Path, force: bool) -> Result<Option<PathBuf>, RestoreError> {
    let target = |reason: String| RestoreError::Target {
        path: pgdata.to_path_buf(),
        reason,
    };
    if let Some(pid) = live_postmaster(pgdata) {
        return Err(target(format!(
            "belongs to a running PostgreSQL server (postmaster.pid names live process {pid})\nHINT: stop the server first; walvault never restores over a running cluster"
        )));
    }
    let mut moved = None;
    match fs::read_dir(pgdata) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                if !force {
                    return Err(target(
                        "is not empty\nHINT: restore into an empty or new directory, or pass --force to move the current contents aside (they are renamed, never deleted)".to_string(),
                    ));
                }
                let stamp = jiff::Timestamp::now()
                    .strftime("%Y%m%dT%H%M%SZ")
                    .to_string();
                let name = pgdata
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("pgdata");
                let aside = pgdata.with_file_name(format!("{name}.walvault-moved-{stamp}"));
                fs::rename(pgdata, &aside).map_err(io_err("move aside", pgdata))?;
                moved = Some(aside);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read", pgdata)(e)),
    }
    if !pgdata.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(pgdata)
            .map_err(io_err("create", pgdata))?;
    }
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))
        .map_err(io_err("chmod", pgdata))?;
    Ok(moved)
}

/// PostgreSQL's modes: owner-only, or group-readable where the cluster
/// allowed group access (initdb -g).
fn dir_mode(recorded: u32) -> u32 {
    if recorded & 0o050 == 0o050 {
        0o750
    } else {
        0o700
    }
}

fn file_mode(recorded: u32) -> u32 {
    if recorded & 0o040 != 0 {
        0o640
    } else {
        0o600
    }
}

/// Restores a planned backup into `opts.pgdata`.
pub async fn apply(
    repo: &Repository,
    plan: RestorePlan,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let pgdata = opts.pgdata.clone();
    let manifest = &plan.backup;
    let bad_manifest = |reason: String| RestoreError::BadManifest {
        label: manifest.label.clone(),
        reason,
    };
    // The file list (its own object since manifest version 3), read to a
    // local temporary file and checked whole before anything is written:
    // one pass, one entry in memory at a time.
    let file_list = repo.file_list(manifest).await?;
    let mut control_entry = None;
    for entry in file_list.iter() {
        let entry = entry.map_err(bad_manifest)?;
        if entry.path == "global/pg_control" {
            control_entry = Some(entry);
        }
    }
    // A differential or incremental backup needs every backup it is built
    // on; check before anything is written.
    for dependency in &manifest.depends_on {
        match repo
            .store()
            .head(&crate::repo::layout::manifest_key(dependency))
            .await
        {
            Ok(_) => {}
            Err(crate::storage::StorageError::NotFound { .. }) => {
                return Err(RestoreError::MissingDependency {
                    label: manifest.label.clone(),
                    missing: dependency.clone(),
                })
            }
            Err(e) => return Err(RepoError::from(e).into()),
        }
    }
    let tablespaces = plan_tablespace_locations(manifest, &opts.tablespace_map)?;
    // No location inside the data directory or inside another one: a
    // manifest must not steer restore into places it should not write.
    let pgdata_abs = std::path::absolute(&pgdata).unwrap_or_else(|_| pgdata.clone());
    for (i, ts) in tablespaces.iter().enumerate() {
        let here = Path::new(&ts.location);
        let clash = here.starts_with(&pgdata_abs)
            || pgdata_abs.starts_with(here)
            || tablespaces.iter().enumerate().any(|(j, other)| {
                j != i
                    && (here.starts_with(&other.location)
                        || Path::new(&other.location).starts_with(here))
            });
        if clash {
            return Err(RestoreError::Target {
                path: here.to_path_buf(),
                reason: format!(
                    "(tablespace {}) overlaps the data directory or another tablespace\nHINT: give each tablespace its own directory outside the data directory with --tablespace-map {}=DIR",
                    ts.oid, ts.oid
                ),
            });
        }
    }
    for ts in &tablespaces {
        if !crate::repo::manifest::is_clean_absolute_path(&ts.location) {
            return Err(RestoreError::Target {
                path: PathBuf::from(&ts.location),
                reason: format!(
                    "(tablespace {}) is not an absolute, normalised path\nHINT: give --tablespace-map {}=/absolute/dir",
                    ts.oid, ts.oid
                ),
            });
        }
    }

    // Nothing is written until every target directory is known to be free
    // (a delta restore reuses what is there instead).
    for ts in tablespaces.iter().filter(|_| !opts.delta) {
        let location = PathBuf::from(&ts.location);
        if location.exists()
            && fs::read_dir(&location)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            return Err(RestoreError::Target {
                path: location,
                reason: format!(
                    "(tablespace {}) is not empty\nHINT: restore it elsewhere with --tablespace-map {}=DIR, or empty the directory first",
                    ts.oid, ts.oid
                ),
            });
        }
    }
    let (moved_aside, delta_removed) = if opts.delta {
        let removed = prepare_delta(&pgdata, manifest, &file_list, &tablespaces, opts)?;
        (None, Some(removed))
    } else {
        (prepare_target(&pgdata, opts.force)?, None)
    };

    // Tablespace links first, so their directories are created through them.
    let mut links = Vec::new();
    for ts in &tablespaces {
        let location = PathBuf::from(&ts.location);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&location)
            .map_err(io_err("create tablespace directory", &location))?;
        links.push(format!("pg_tblspc/{}", ts.oid));
    }
    for dir in &manifest.directories {
        if links.contains(&dir.path) {
            continue;
        }
        let path = pgdata.join(&dir.path);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode(dir.mode))
            .create(&path)
            .map_err(io_err("create directory", &path))?;
        if dir.path == "pg_tblspc" {
            for ts in &tablespaces {
                let link = pgdata.join(format!("pg_tblspc/{}", ts.oid));
                if opts.delta && fs::symlink_metadata(&link).is_ok() {
                    // Made again, pointing where this restore puts it.
                    fs::remove_file(&link)
                        .or_else(|_| fs::remove_dir_all(&link))
                        .map_err(io_err("remove", &link))?;
                }
                std::os::unix::fs::symlink(&ts.location, &link)
                    .map_err(io_err("link tablespace", &link))?;
            }
        }
    }

    if opts.delta {
        // Directories kept get the modes a fresh restore gives (those made
        // above got them when created).
        for dir in &manifest.directories {
            let path = local_path(&pgdata, &tablespaces, &dir.path);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                fs::set_permissions(&path, fs::Permissions::from_mode(dir_mode(dir.mode)))
                    .map_err(io_err("chmod", &path))?;
            }
        }
    }
    let label = manifest.label.clone();
    let files = file_list
        .iter()
        .map(move |f| {
            f.map_err(|reason| RestoreError::BadManifest {
                label: label.clone(),
                reason,
            })
        })
        .filter(|f| !matches!(f, Ok(f) if f.path == "global/pg_control"));
    let block_size = manifest.block_size;
    let written = match delta_removed {
        Some(removed) => {
            let counts = DeltaCounts::default();
            counts.removed.store(removed, Ordering::Relaxed);
            let counts = Arc::new(counts);
            let check = DeltaCheck {
                force_checksum: opts.delta_force_checksum,
                trust_before: super::delta::trust_before(manifest),
                block_size,
            };
            delta_files(repo, &pgdata, files, opts.jobs, check, counts.clone())
                .await
                .map(|()| Some(counts.summary()))
        }
        None => restore_files(repo, &pgdata, files, opts.jobs, block_size, false)
            .await
            .map(|()| None),
    };
    let delta_summary = match written {
        Ok(summary) => summary,
        Err(e) => return Err(explain_vanished(repo, &manifest.label, e).await),
    };

    write_small(
        &pgdata.join("backup_label"),
        manifest.backup_label.as_bytes(),
    )?;
    if manifest.tablespace_map.is_some() || !tablespaces.is_empty() {
        write_small(
            &pgdata.join("tablespace_map"),
            plan_tablespace_map_file(&tablespaces).as_bytes(),
        )?;
    }
    let lines = recovery_lines(&plan, opts);
    let auto_conf = pgdata.join("postgresql.auto.conf");
    let existing = fs::read_to_string(&auto_conf).unwrap_or_default();
    let comment = format!(
        "recovery settings written by walvault restore at {} from backup {}",
        jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or(jiff::Timestamp::now()),
        manifest.label
    );
    write_small(
        &auto_conf,
        rewrite_auto_conf(&existing, &lines, &comment).as_bytes(),
    )?;
    let signal = if opts.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    write_small(&pgdata.join(signal), b"")?;

    // Everything is on disk before pg_control appears, on every file
    // system written to: tablespaces may live on others.
    for dir in plan_sync_targets(&pgdata, &tablespaces) {
        sync_filesystem(&dir)?;
    }
    restore_files(
        repo,
        &pgdata,
        control_entry.into_iter().map(Ok),
        1,
        block_size,
        opts.delta,
    )
    .await?;
    sync_filesystem(&pgdata)?;
    if let Some(parent) = pgdata.parent() {
        give_to_parent_owner(&pgdata, parent, &tablespaces)?;
    }
    let archiving = plan_archiving_summary(
        &fs::read_to_string(pgdata.join("postgresql.conf")).unwrap_or_default(),
        &fs::read_to_string(&auto_conf).unwrap_or_default(),
    );
    Ok(RestoreReport {
        plan,
        moved_aside,
        delta: delta_summary,
        recovery_lines: lines,
        archiving,
    })
}

/// A backup file that vanished mid-restore because `expire` removed the
/// backup (its manifest goes first) is said so, not reported as damage.
async fn explain_vanished(repo: &Repository, label: &str, e: RestoreError) -> RestoreError {
    let vanished = matches!(
        &e,
        RestoreError::Object {
            source: ObjectError::Storage(crate::storage::StorageError::NotFound { .. }),
            ..
        }
    );
    if vanished
        && matches!(
            repo.store()
                .head(&crate::repo::layout::manifest_key(label))
                .await,
            Err(crate::storage::StorageError::NotFound { .. })
        )
    {
        return RestoreError::BackupExpired {
            label: label.to_string(),
        };
    }
    e
}

/// Every directory whose file system restore wrote to and must sync before
/// `global/pg_control`: the data directory and each tablespace location
/// (tablespaces may live on other file systems).
pub fn plan_sync_targets(
    pgdata: &Path,
    tablespaces: &[crate::repo::manifest::TablespaceEntry],
) -> Vec<PathBuf> {
    std::iter::once(pgdata.to_path_buf())
        .chain(tablespaces.iter().map(|t| PathBuf::from(&t.location)))
        .collect()
}

fn write_small(path: &Path, data: &[u8]) -> Result<(), RestoreError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(data).map_err(io_err("write", path))?;
    Ok(())
}

fn sync_filesystem(path: &Path) -> Result<(), RestoreError> {
    let dir = fs::File::open(path).map_err(io_err("open", path))?;
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs on a valid, open descriptor.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io_err("sync", path)(io::Error::last_os_error()));
    }
    Ok(())
}

/// When run as root, PostgreSQL (which refuses root) must own the restored
/// files: they go to the owner of the data directory's parent.
fn give_to_parent_owner(
    pgdata: &Path,
    parent: &Path,
    tablespaces: &[crate::repo::manifest::TablespaceEntry],
) -> Result<(), RestoreError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(parent).map_err(io_err("stat", parent))?;
    if meta.uid() == 0 {
        return Ok(());
    }
    let (uid, gid) = (meta.uid(), meta.gid());
    let mut stack: Vec<PathBuf> = vec![pgdata.to_path_buf()];
    stack.extend(tablespaces.iter().map(|t| PathBuf::from(&t.location)));
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).map_err(io_err("chown", &p))?;
        let m = fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
        if m.is_dir() {
            for e in fs::read_dir(&p).map_err(io_err("read", &p))? {
                stack.push(e.map_err(io_err("read", &p))?.path());
            }
        }
    }
    Ok(())
}

async fn restore_files<I>(
    repo: &Repository,
    pgdata: &Path,
    files: I,
    jobs: usize,
    block_size: Option<u32>,
    replace: bool,
) -> Result<(), RestoreError>
where
    I: IntoIterator<Item = Result<FileEntry, RestoreError>>,
    I::IntoIter: Send + 'static,
{
    let (repo, pgdata) = (repo.clone(), pgdata.to_path_buf());
    crate::pool::run_bounded(files, jobs, move |entry| {
        let (repo, pgdata) = (repo.clone(), pgdata.clone());
        async move {
            let entry = entry?;
            if replace {
                // A delta restore rewrites a file that differs: whatever is
                // at its path goes first (never followed if a link).
                remove_any(&pgdata.join(&entry.path))?;
            }
            restore_one(&repo, &pgdata, &entry, block_size)
                .await
                .map(|()| None::<()>)
        }
    })
    .await
    .map(|_| ())
}

async fn restore_one(
    repo: &Repository,
    pgdata: &Path,
    entry: &FileEntry,
    block_size: Option<u32>,
) -> Result<(), RestoreError> {
    let path = pgdata.join(&entry.path);
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err("create directory", parent))?;
        }
    }
    // The data directory started empty and walvault made every directory
    // and link in it; O_NOFOLLOW and create_new make sure no file is
    // written through a symlink someone else placed.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(file_mode(entry.mode))
        .open(&path)
        .map_err(io_err("create", &path))?;
    if entry.base.is_some() {
        assemble(repo, &path, &file, entry, block_size).await?;
        set_mtime(&file, entry.mtime, &path)?;
        if entry.path == "global/pg_control" {
            file.sync_all().map_err(io_err("fsync", &path))?;
        }
        return Ok(());
    }
    let key = Key::new(entry.object.clone()).map_err(|e| RestoreError::Object {
        path: entry.path.clone(),
        object: entry.object.clone(),
        source: ObjectError::Storage(e),
    })?;
    let info = read_object(repo.store(), &key, &mut |piece: &[u8]| {
        file.write_all(piece)
    })
    .await
    .map_err(|source| RestoreError::Object {
        path: entry.path.clone(),
        object: entry.object.clone(),
        source,
    })?;
    if info.checksum != entry.checksum || info.raw_size != entry.size {
        return Err(RestoreError::Mismatch {
            path: entry.path.clone(),
            reason: format!(
                "object holds {} bytes with checksum {}, the manifest says {} bytes with {}",
                info.raw_size, info.checksum, entry.size, entry.checksum
            ),
        });
    }
    set_mtime(&file, entry.mtime, &path)?;
    if entry.path == "global/pg_control" {
        file.sync_all().map_err(io_err("fsync", &path))?;
    }
    Ok(())
}

/// Gives a restored file the modification time the manifest records
/// (whole seconds), so a later delta restore can tell it is unchanged.
fn set_mtime(file: &fs::File, mtime: i64, path: &Path) -> Result<(), RestoreError> {
    let Ok(secs) = u64::try_from(mtime) else {
        return Ok(());
    };
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .map_err(io_err("set the modification time of", path))
}

/// Where a manifest path lies: under the data directory, or for
/// `pg_tblspc/<oid>/…` at the tablespace's planned location.
fn local_path(
    pgdata: &Path,
    tablespaces: &[crate::repo::manifest::TablespaceEntry],
    rel: &str,
) -> PathBuf {
    if let Some(rest) = rel.strip_prefix("pg_tblspc/") {
        if let Some((oid, below)) = rest.split_once('/') {
            if let Some(ts) = tablespaces.iter().find(|t| t.oid.to_string() == oid) {
                return Path::new(&ts.location).join(below);
            }
        }
    }
    pgdata.join(rel)
}

/// A delta restore's first pass: refuse a running server and (unless
/// forced) another cluster's directory, remove `global/pg_control` first,
/// then remove what the backup does not have ([`super::delta::Removals`],
/// streamed). Returns how many paths it removed.
fn prepare_delta(
    pgdata: &Path,
    manifest: &BackupManifest,
    file_list: &crate::repo::filelist::FileList,
    tablespaces: &[crate::repo::manifest::TablespaceEntry],
    opts: &RestoreOptions,
) -> Result<usize, RestoreError> {
    let target = |reason: String| RestoreError::Target {
        path: pgdata.to_path_buf(),
        reason,
    };
    if let Some(pid) = live_postmaster(pgdata) {
        return Err(target(format!(
            "belongs to a running PostgreSQL server (postmaster.pid names live process {pid})\nHINT: stop the server first; walvault never restores over a running cluster"
        )));
    }
    if !pgdata.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(pgdata)
            .map_err(io_err("create", pgdata))?;
    }
    // A directory without pg_control is one an interrupted delta restore
    // left (it removes pg_control first), or empty: both are fine.
    if let Ok(found) = crate::pg::control::read_system_identifier(pgdata) {
        if found.to_string() != manifest.system_identifier && !opts.force {
            return Err(target(format!(
                "holds another cluster (system identifier {found}; backup {} is of {})\nHINT: check --pgdata; pass --force to overwrite that cluster with this backup",
                manifest.label, manifest.system_identifier
            )));
        }
    }
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))
        .map_err(io_err("chmod", pgdata))?;
    let control = pgdata.join("global/pg_control");
    match fs::remove_file(&control) {
        Ok(()) => sync_dir(&pgdata.join("global"))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &control)(e)),
    }
    let walk = super::delta::LocalWalk::new(pgdata, tablespaces, manifest.pg_major)
        .map_err(io_err("list", pgdata))?
        .map(|e| e.map_err(io_err("list", pgdata)));
    let label = &manifest.label;
    let paths = file_list.iter().map(|f| {
        f.map(|f| f.path)
            .map_err(|reason| RestoreError::BadManifest {
                label: label.clone(),
                reason,
            })
    });
    let mut removed = 0;
    for entry in super::delta::Removals::new(manifest, walk, paths) {
        let entry = entry?;
        remove_any(&entry.abs)?;
        removed += 1;
    }
    Ok(removed)
}

/// Removes whatever is at `path` (a directory with all it holds; a link,
/// never followed); nothing there is fine.
fn remove_any(path: &Path) -> Result<bool, RestoreError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => Err(e),
    };
    result.map(|()| true).map_err(io_err("remove", path))
}

/// What a delta restore's second pass found, counted as files finish.
#[derive(Default)]
struct DeltaCounts {
    kept: AtomicUsize,
    equal: AtomicUsize,
    written: AtomicUsize,
    removed: AtomicUsize,
    patched: AtomicUsize,
    blocks: AtomicUsize,
}

impl DeltaCounts {
    fn summary(&self) -> DeltaSummary {
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        DeltaSummary {
            kept: get(&self.kept),
            checked_equal: get(&self.equal),
            rewritten: get(&self.written),
            removed: get(&self.removed),
            patched: get(&self.patched),
            blocks_written: get(&self.blocks),
        }
    }
}

/// How a delta restore compares files.
#[derive(Clone, Copy)]
struct DeltaCheck {
    force_checksum: bool,
    trust_before: Option<i64>,
    block_size: Option<u32>,
}

/// A delta restore's second pass: each file of the list, `jobs` at a
/// time, kept, compared (and patched), or written
/// ([`super::delta::plan_file`]). One entry per job in memory.
async fn delta_files<I>(
    repo: &Repository,
    pgdata: &Path,
    files: I,
    jobs: usize,
    how: DeltaCheck,
    counts: Arc<DeltaCounts>,
) -> Result<(), RestoreError>
where
    I: IntoIterator<Item = Result<FileEntry, RestoreError>>,
    I::IntoIter: Send + 'static,
{
    use super::delta::{plan_file, FileAction, LocalKind};
    let (repo, pgdata) = (repo.clone(), pgdata.to_path_buf());
    crate::pool::run_bounded(files, jobs, move |entry| {
        let (repo, pgdata, counts) = (repo.clone(), pgdata.clone(), counts.clone());
        async move {
            let entry = entry?;
            let path = pgdata.join(&entry.path);
            let here = match fs::symlink_metadata(&path) {
                Ok(m) => Some(LocalKind::of(&m)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("stat", &path)(e)),
            };
            let keep_mode = |counter: &AtomicUsize| {
                counter.fetch_add(1, Ordering::Relaxed);
                fs::set_permissions(&path, fs::Permissions::from_mode(file_mode(entry.mode)))
                    .map_err(io_err("chmod", &path))
            };
            match plan_file(&entry, here.as_ref(), how.force_checksum, how.trust_before) {
                FileAction::Keep => keep_mode(&counts.kept)?,
                FileAction::Check => match compare(&repo, &path, &entry, how.block_size).await? {
                    Checked::Equal => keep_mode(&counts.equal)?,
                    Checked::Patched(n) => {
                        counts.blocks.fetch_add(n, Ordering::Relaxed);
                        keep_mode(&counts.patched)?
                    }
                    Checked::Differs => {
                        remove_any(&path)?;
                        restore_one(&repo, &pgdata, &entry, how.block_size).await?;
                        counts.written.fetch_add(1, Ordering::Relaxed);
                    }
                },
                FileAction::Write { clear } => {
                    if clear && remove_any(&path)? {
                        counts.removed.fetch_add(1, Ordering::Relaxed);
                    }
                    restore_one(&repo, &pgdata, &entry, how.block_size).await?;
                    counts.written.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(None::<()>)
        }
    })
    .await
    .map(|_| ())
}

/// Compares an existing file with the backup's: block by block against
/// its map (patching the blocks that differ), or without a map by
/// checksum.
async fn compare(
    repo: &Repository,
    path: &Path,
    entry: &FileEntry,
    block_size: Option<u32>,
) -> Result<Checked, RestoreError> {
    if let Some(map) = &entry.map {
        return Ok(match patch(repo, path, entry, map, block_size).await? {
            Patched::Equal => Checked::Equal,
            Patched::Blocks(n) => Checked::Patched(n),
            Patched::Unpatchable => Checked::Differs,
        });
    }
    let same = tokio::task::spawn_blocking({
        let path = path.to_path_buf();
        let (size, checksum, mtime) = (entry.size, entry.checksum, entry.mtime);
        move || -> io::Result<bool> {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            let mut hasher = crate::stream::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = io::Read::read(&mut f, &mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let same = hasher.len() == size && hasher.finish() == checksum;
            if same {
                // Equal: give it the recorded time, so the next delta
                // restore keeps it without reading.
                if let Ok(secs) = u64::try_from(mtime) {
                    let _ = f
                        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
                }
            }
            Ok(same)
        }
    })
    .await
    .map_err(|e| io_err("compare", path)(io::Error::other(e)))?
    .map_err(io_err("compare", path))?;
    Ok(if same {
        Checked::Equal
    } else {
        Checked::Differs
    })
}

fn sync_dir(path: &Path) -> Result<(), RestoreError> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", path))
}

/// Writes the blocks of a file not yet marked in `done` from its layers:
/// the newest delta's blocks first, then each older delta's, the base
/// (`entry.object`, or `entry.base`) last and only if a block is still
/// missing, so every block is written once; memory is one bitmap and one
/// block whatever the chain length. Every delta block's hash is checked
/// as it is read; with `map`, every block written is checked against it.
async fn write_layers(
    repo: &Repository,
    path: &Path,
    file: &fs::File,
    entry: &FileEntry,
    bs: u32,
    done: &mut [bool],
    map: Option<&crate::repo::blocks::BlockMap>,
) -> Result<(), RestoreError> {
    use std::os::unix::fs::FileExt;
    let bad = |reason: String| RestoreError::Mismatch {
        path: entry.path.clone(),
        reason,
    };
    let size = entry.size;
    let base = entry
        .base
        .clone()
        .unwrap_or_else(|| crate::repo::manifest::ObjectRef {
            object: entry.object.clone(),
            raw_size: entry.size,
            checksum: entry.checksum,
        });
    let layer_err = |object: &str, source: ObjectError| RestoreError::Object {
        path: entry.path.clone(),
        object: object.to_string(),
        source,
    };
    let key_of = |object: &str| {
        Key::new(object.to_string()).map_err(|e| layer_err(object, ObjectError::Storage(e)))
    };
    let check = |object: &crate::repo::manifest::ObjectRef,
                 info: crate::repo::object::ObjectInfo|
     -> Result<(), RestoreError> {
        if info.raw_size != object.raw_size || info.checksum != object.checksum {
            return Err(bad(format!(
                "object {} holds {} bytes with checksum {}, the manifest says {} bytes with {}",
                object.object, info.raw_size, info.checksum, object.raw_size, object.checksum
            )));
        }
        Ok(())
    };
    let write_block = |done: &mut [bool], number: usize, data: &[u8]| -> io::Result<()> {
        if number >= done.len() || done[number] {
            return Ok(());
        }
        let offset = number as u64 * u64::from(bs);
        let len = (size - offset).min(data.len() as u64) as usize;
        if let Some(map) = map {
            if map.hashes.get(number) != Some(&map.kind.hash(&data[..len])) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("block {number} does not match the block map"),
                ));
            }
        }
        file.write_all_at(&data[..len], offset)?;
        done[number] = true;
        Ok(())
    };
    for delta in entry.deltas.iter().rev() {
        if done.iter().all(|d| *d) {
            break;
        }
        let key = key_of(&delta.object)?;
        let mut parser = crate::repo::blocks::DeltaParser::new(bs);
        let info = read_object(repo.store(), &key, &mut |piece: &[u8]| {
            parser.feed(piece, &mut |b| write_block(done, b.number as usize, b.data))
        })
        .await
        .map_err(|e| layer_err(&delta.object, e))?;
        check(delta, info)?;
        parser
            .finish()
            .map_err(|e| layer_err(&delta.object, ObjectError::Sink(e)))?;
    }
    if done.iter().all(|d| *d) {
        return Ok(());
    }
    let key = key_of(&base.object)?;
    let mut offset = 0u64;
    let mut partial: Vec<u8> = Vec::with_capacity(bs as usize);
    let info = read_object(repo.store(), &key, &mut |mut piece: &[u8]| {
        // Cut the stream into blocks; a block split across pieces is
        // gathered first.
        while !piece.is_empty() {
            let in_block = (offset % u64::from(bs)) as usize;
            let take = (bs as usize - in_block).min(piece.len());
            let number = (offset / u64::from(bs)) as usize;
            if in_block == 0 && take == bs as usize {
                write_block(done, number, &piece[..take])?;
            } else {
                partial.extend_from_slice(&piece[..take]);
                if partial.len() == bs as usize {
                    write_block(done, number, &partial)?;
                    partial.clear();
                }
            }
            offset += take as u64;
            piece = &piece[take..];
        }
        Ok(())
    })
    .await
    .map_err(|e| layer_err(&base.object, e))?;
    if !partial.is_empty() {
        let number = (offset / u64::from(bs)) as usize;
        write_block(done, number, &partial).map_err(io_err("write", path))?;
    }
    check(&base, info)?;
    if let Some(missing) = done.iter().position(|d| !d) {
        return Err(bad(format!(
            "block {missing} is in neither the base nor any delta"
        )));
    }
    Ok(())
}

fn valid_bs(entry: &FileEntry, block_size: Option<u32>) -> Result<u32, RestoreError> {
    block_size
        .filter(|&b| crate::repo::blocks::valid_block_size(b))
        .ok_or_else(|| RestoreError::Mismatch {
            path: entry.path.clone(),
            reason: "the manifest gives no valid block size for its block deltas".into(),
        })
}

/// Builds a new file from its base and block deltas ([`write_layers`]),
/// then reads it back and checks it against the manifest's size and
/// checksum.
async fn assemble(
    repo: &Repository,
    path: &Path,
    file: &fs::File,
    entry: &FileEntry,
    block_size: Option<u32>,
) -> Result<(), RestoreError> {
    use std::os::unix::fs::FileExt;
    let bs = valid_bs(entry, block_size)?;
    let size = entry.size;
    let mut done = vec![false; crate::repo::blocks::block_count(size, bs) as usize];
    write_layers(repo, path, file, entry, bs, &mut done, None).await?;
    file.set_len(size).map_err(io_err("truncate", path))?;
    // The assembled file, read back, must be the file that was backed up.
    let mut hasher = crate::stream::Hasher::new();
    let mut buf = vec![0u8; crate::repo::object::CHUNK_BYTES];
    let mut at = 0u64;
    loop {
        let n = file
            .read_at(&mut buf, at)
            .map_err(io_err("read back", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    if hasher.len() != size || hasher.finish() != entry.checksum {
        return Err(RestoreError::Mismatch {
            path: entry.path.clone(),
            reason: format!(
                "the file assembled from its base and {} block delta(s) is {} bytes with checksum {}, the manifest says {} bytes with {}",
                entry.deltas.len(),
                hasher.len(),
                hasher.finish(),
                size,
                entry.checksum
            ),
        });
    }
    Ok(())
}

/// What comparing one file of a delta restore found.
enum Checked {
    Equal,
    /// Patched block by block: this many blocks written.
    Patched(usize),
    /// Differs (and has no map, or one that cannot vouch for it): written
    /// whole.
    Differs,
}

/// What [`patch`] did to an existing file.
enum Patched {
    /// Every block already matched the map.
    Equal,
    /// This many blocks were written.
    Blocks(usize),
    /// Its map cannot vouch for every block: write it whole.
    Unpatchable,
}

/// Delta restore of a file with a block map: hashes the existing file's
/// blocks, and writes only those that differ from the map, from the
/// newest layer that has them (the base is read only when a differing
/// block is in no delta). Every block of the result matches the map, whose
/// own checksum the manifest records.
async fn patch(
    repo: &Repository,
    path: &Path,
    entry: &FileEntry,
    map_ref: &crate::repo::manifest::ObjectRef,
    block_size: Option<u32>,
) -> Result<Patched, RestoreError> {
    use std::os::unix::fs::FileExt;
    let bs = valid_bs(entry, block_size)?;
    let map = crate::backup::incremental::effective_map(repo, entry, bs)
        .await
        .map_err(|source| RestoreError::Object {
            path: entry.path.clone(),
            object: map_ref.object.clone(),
            source,
        })?;
    // A map that does not cover every block (a file cut short mid-block)
    // cannot vouch for the result: such a file is written whole.
    let Some(map) =
        map.filter(|m| m.hashes.len() as u64 == crate::repo::blocks::block_count(entry.size, bs))
    else {
        return Ok(Patched::Unpatchable);
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("stat", path))?;
    // Another name for the same inode (pg_upgrade --link, cp -al, rsync
    // --link-dest) lies outside this data directory: never written through.
    if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        return Ok(Patched::Unpatchable);
    }
    let local_len = meta.len();
    let blocks = map.hashes.len();
    let mut done = vec![false; blocks];
    // A MiB of blocks per read; blocks the local file does not reach stay
    // to be written.
    let bs_bytes = bs as usize;
    let mut buf = vec![0u8; (1usize << 20).div_ceil(bs_bytes) * bs_bytes];
    let mut first = 0usize;
    'read: while first < blocks {
        let offset = first as u64 * u64::from(bs);
        let end = (offset + buf.len() as u64).min(entry.size).min(local_len);
        if end <= offset {
            break;
        }
        let have = (end - offset) as usize;
        file.read_exact_at(&mut buf[..have], offset)
            .map_err(io_err("read", path))?;
        for (i, chunk) in buf[..have].chunks(bs_bytes).enumerate() {
            let number = first + i;
            let expected = (entry.size - number as u64 * u64::from(bs)).min(u64::from(bs)) as usize;
            if chunk.len() < expected {
                break 'read;
            }
            done[number] = map.kind.hash(chunk) == map.hashes[number];
        }
        first += buf.len() / bs_bytes;
    }
    let differing = done.iter().filter(|d| !**d).count();
    if differing > 0 {
        write_layers(repo, path, &file, entry, bs, &mut done, Some(&map)).await?;
    }
    if local_len != entry.size {
        file.set_len(entry.size).map_err(io_err("truncate", path))?;
    }
    set_mtime(&file, entry.mtime, path)?;
    Ok(if differing == 0 && local_len == entry.size {
        Patched::Equal
    } else {
        Patched::Blocks(differing)
    })
}

#[cfg(test)]
mod archiving_tests {
    use super::plan_archiving_summary;

    #[test]
    fn every_tablespace_file_system_is_synced() {
        use crate::repo::manifest::TablespaceEntry;
        let ts = |oid, location: &str| TablespaceEntry {
            oid,
            location: location.to_string(),
        };
        let targets = super::plan_sync_targets(
            std::path::Path::new("/srv/data"),
            &[ts(16384, "/mnt/fast/ts1"), ts(16385, "/mnt/slow/ts2")],
        );
        assert_eq!(
            targets,
            ["/srv/data", "/mnt/fast/ts1", "/mnt/slow/ts2"].map(std::path::PathBuf::from)
        );
    }

    #[test]
    fn later_settings_win_and_off_is_plain() {
        let conf = "archive_mode = on\narchive_command = 'walvault-push --repo /a %p'\n";
        let s = plan_archiving_summary(conf, "");
        assert!(
            s.contains("ON: archive_command 'walvault-push --repo /a %p'"),
            "{s}"
        );
        let auto = "archive_command = 'walvault-push --repo /b %p'\n";
        assert!(plan_archiving_summary(conf, auto).contains("/b %p"));
        let off = "archive_mode = 'off'\n";
        assert!(plan_archiving_summary(conf, off).starts_with("off"));
        assert!(plan_archiving_summary("", "").starts_with("off"));
        assert!(
            plan_archiving_summary("include 'x.conf'\narchive_mode = on\n", "")
                .contains("includes other files")
        );
    }
}

#[cfg(test)]
mod symlink_tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::object::write_object;
    use crate::repo::CompressSettings;
    use crate::storage::memory::MemoryStore;
    use crate::storage::PutMode;

    /// A file is never written through a symlink restore did not create:
    /// one planted where a file goes makes the restore fail, and the
    /// symlink's target is untouched.
    #[tokio::test]
    async fn a_planted_symlink_is_never_followed() {
        let repo = Repository::new(Arc::new(MemoryStore::new()), CompressSettings::default());
        let key = Key::new("backup/x/files/000000").unwrap();
        let mut src: &[u8] = b"restored bytes";
        write_object(
            repo.store(),
            &key,
            PutMode::Create,
            &mut src,
            CompressSettings::default(),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("data");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::fs::create_dir_all(pgdata.join("base/1")).unwrap();
        std::os::unix::fs::symlink(&victim, pgdata.join("base/1/1259")).unwrap();
        let entry = FileEntry {
            path: "base/1/1259".to_string(),
            size: 14,
            checksum: crate::stream::Checksum::of(b"restored bytes"),
            mode: 0o600,
            mtime: 0,
            object: key.to_string(),
            stored_size: 0,
            base: None,
            deltas: Vec::new(),
            map: None,
        };
        let err = restore_one(&repo, &pgdata, &entry, None).await.unwrap_err();
        assert!(matches!(err, RestoreError::Io { .. }), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }
}

#[cfg(test)]
mod chain_tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::blocks::{BlockMap, BlockReader};
    use crate::repo::manifest::ObjectRef;
    use crate::repo::object::write_object;
    use crate::repo::CompressSettings;
    use crate::storage::memory::MemoryStore;
    use crate::storage::PutMode;
    use tokio::io::AsyncReadExt;

    const BS: u32 = 1024;

    async fn put(repo: &Repository, key: &str, mut bytes: &[u8]) -> ObjectRef {
        let key = Key::new(key).unwrap();
        let info = write_object(
            repo.store(),
            &key,
            PutMode::Create,
            &mut bytes,
            CompressSettings::default(),
        )
        .await
        .unwrap();
        ObjectRef {
            object: key.to_string(),
            raw_size: info.raw_size,
            checksum: info.checksum,
        }
    }

    /// A chain of 41 deltas, with the file growing, shrinking (mid-block
    /// too) and changing: restore assembles every version exactly, and a
    /// delta restore patches the first version into the last.
    #[tokio::test]
    async fn long_chains_restore_and_patch_exactly() {
        let repo = Repository::new(Arc::new(MemoryStore::new()), CompressSettings::default());
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        let mut content: Vec<u8> = (0..40 * BS as usize).map(|i| (i % 251) as u8).collect();
        let first = content.clone();
        let base = put(&repo, "backup/20260101T000000Z/files/000000", &content).await;
        let map_bytes = BlockMap::of(crate::repo::blocks::HashKind::CURRENT, BS, &content).encode();
        let map = put(
            &repo,
            "backup/20260101T000000Z/files/000000.map",
            &map_bytes,
        )
        .await;
        let mut entry = FileEntry {
            path: "base/1/100".into(),
            size: content.len() as u64,
            checksum: crate::stream::Checksum::of(&content),
            mode: 0o600,
            mtime: 0,
            object: base.object.clone(),
            stored_size: 0,
            base: None,
            deltas: Vec::new(),
            map: Some(map),
        };
        let dir = tempfile::tempdir().unwrap();
        for step in 1..=41 {
            // The last version ends on a block boundary, so the patch
            // below can vouch for every block.
            if step == 41 {
                let whole = content.len().div_ceil(BS as usize) * BS as usize;
                content.resize(whole, 9);
                content[0] ^= 1;
            }
            // Change some blocks, and sometimes the length.
            for _ in (0..1 + next(4)).filter(|_| step < 41) {
                let at = next(content.len() as u64) as usize;
                content[at] ^= 0x5a;
            }
            match if step < 41 { next(5) } else { 9 } {
                0 => content.extend((0..BS as usize * 2 + 17).map(|i| (i * step) as u8)),
                1 => content.truncate(content.len() - next(BS as u64 * 3) as usize),
                _ => {}
            }
            let reference = crate::backup::incremental::effective_map(&repo, &entry, BS)
                .await
                .unwrap()
                .unwrap();
            let mut reader = BlockReader::new(&content[..], BS, Some(&reference));
            let mut delta = Vec::new();
            reader.read_to_end(&mut delta).await.unwrap();
            let delta_ref = put(
                &repo,
                &format!("backup/20260102T0000{step:02}Z/files/000000"),
                &delta,
            )
            .await;
            entry.base.get_or_insert(base.clone());
            entry.deltas.push(delta_ref);
            entry.size = content.len() as u64;
            entry.checksum = crate::stream::Checksum::of(&content);

            let pgdata = dir.path().join(format!("restore-{step}"));
            restore_one(&repo, &pgdata, &entry, Some(BS)).await.unwrap();
            assert_eq!(
                std::fs::read(pgdata.join("base/1/100")).unwrap(),
                content,
                "version {step}"
            );
        }
        // The first version, patched block by block into the last.
        let path = dir.path().join("patched");
        std::fs::write(&path, &first).unwrap();
        let map = entry.map.clone().unwrap();
        match patch(&repo, &path, &entry, &map, Some(BS)).await.unwrap() {
            Patched::Blocks(n) => {
                assert!(n > 0);
                assert_eq!(std::fs::read(&path).unwrap(), content);
            }
            // A last block cut short is not vouched for: written whole.
            Patched::Unpatchable => assert_ne!(content.len() % BS as usize, 0),
            Patched::Equal => panic!("the first and last versions differ"),
        }
    }
}
