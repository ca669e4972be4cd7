//! Backup manifests (repository format v1): what a base backup holds.
//!
//! A manifest is written last, create-only, at `backup/<label>/manifest`, as
//! JSON inside the object envelope (so it is checksummed and compressed like
//! every object). A backup without a manifest is incomplete: restore, list's
//! backup table and retention never count it as a backup.
//!
//! File contents live in numbered objects (`backup/<label>/files/<n>`), named
//! by the manifest rather than by path, so any file name PostgreSQL or a
//! user leaves in the data directory is stored safely, and a later
//! incremental backup can point at an object of an earlier backup.

use serde::{Deserialize, Serialize};

use crate::stream::Checksum;
use crate::wal::{Lsn, TimelineId};

/// The newest manifest format this walvault reads, and the one it writes.
/// Version 1: full backups, files inline. Version 2: differential and
/// incremental layers, files inline. Version 3: the file list is its own
/// object (JSON lines, in [`path_cmp`] order), so no reader or writer
/// holds a whole list in memory.
pub const MANIFEST_VERSION: u32 = 3;
/// The first version whose file list is its own object.
pub const MANIFEST_VERSION_FILE_LIST: u32 = 3;

/// The order of paths in a file list: part by part, as a depth-first walk
/// of the data directory meets them (`a/b` before `a.b`, which plain
/// string order would put first).
pub fn path_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

/// What a backup holds: everything (full), or what changed since the last
/// full backup (diff), or since the last backup of any type (incr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    #[default]
    Full,
    Diff,
    Incr,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        }
    }
}

impl std::str::FromStr for BackupType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(BackupType::Full),
            "diff" => Ok(BackupType::Diff),
            "incr" => Ok(BackupType::Incr),
            other => Err(format!(
                "unknown backup type \"{other}\"; use full, diff or incr"
            )),
        }
    }
}

impl std::fmt::Display for BackupType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object of the repository with the raw size and checksum its
/// trailer must show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub object: String,
    pub raw_size: u64,
    pub checksum: Checksum,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub manifest_version: u32,
    pub label: String,
    /// Decimal string, like the repository header.
    pub system_identifier: String,
    /// `server_version_num`, e.g. 150004.
    pub pg_version_num: u32,
    pub pg_major: u32,
    pub wal_segment_size: u64,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    /// The WAL files that must be replayed for the backup to be consistent:
    /// from `start_wal` to `stop_wal`, both included, on `timeline`.
    pub start_wal: String,
    pub stop_wal: String,
    /// Server clock, RFC 3339 with offset.
    pub start_time: String,
    pub stop_time: String,
    /// Contents returned by pg_backup_stop, written into the restored data
    /// directory.
    pub backup_label: String,
    pub tablespace_map: Option<String>,
    pub tablespaces: Vec<TablespaceEntry>,
    pub directories: Vec<DirectoryEntry>,
    /// Versions 1 and 2: the file list, inline. Version 3: empty; the list
    /// is the object `file_list` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
    /// Version 3: the file list object, `backup/<label>/filelist`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_list: Option<ObjectRef>,
    /// Version 3: how many entries the file list holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_count: Option<u64>,
    /// Sum of the files' sizes.
    pub data_size_bytes: u64,
    /// Sum of the stored objects' sizes.
    pub stored_size_bytes: u64,
    pub duration_secs: f64,
    pub created_by: String,
    /// Version 2 fields; a version-1 manifest has none of them and is a
    /// full backup.
    #[serde(default)]
    pub backup_type: BackupType,
    /// The backup this one was compared with (diff and incr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Every other backup whose objects this one's files are made of: it
    /// cannot be restored without them, so expire keeps them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The cluster's block size (from pg_control), the unit of block maps
    /// and deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// pg_control's `data_checksum_version` when the backup started (0:
    /// checksums off). An incremental trusts WAL for changed blocks only
    /// when this is the same as its own: `pg_checksums --enable` rewrites
    /// every block without WAL. Absent in backups of earlier walvault
    /// versions, whose successors then compare file contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_checksum_version: Option<u32>,
}

/// A tablespace: `pg_tblspc/<oid>` is a link to `location`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceEntry {
    pub oid: u32,
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// Relative to the data directory; tablespace contents sit under
    /// `pg_tblspc/<oid>/`.
    pub path: String,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the data directory, `/`-separated.
    pub path: String,
    /// Bytes copied (the file may have changed during the copy; WAL replay
    /// repairs that).
    pub size: u64,
    pub checksum: Checksum,
    pub mode: u32,
    /// Modification time, seconds since the epoch, at the copy.
    pub mtime: i64,
    /// The object holding the contents (a key in the repository, possibly
    /// of an earlier backup); with `deltas`, the base they apply to.
    pub object: String,
    /// Bytes this backup stored for the file (0 when it only refers to
    /// objects of earlier backups).
    pub stored_size: u64,
    /// Raw size and checksum of `object` when it is a base that `deltas`
    /// change (so not the file itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<ObjectRef>,
    /// Block deltas applied over `object`, oldest first (version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<ObjectRef>,
    /// The file's block map, for the next backup to compare with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<ObjectRef>,
}

impl FileEntry {
    /// Every object the entry is made of: the base or whole object, the
    /// deltas and the map.
    pub fn objects(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.object.as_str())
            .chain(self.deltas.iter().map(|d| d.object.as_str()))
            .chain(self.map.iter().map(|m| m.object.as_str()))
    }
}

/// Whether `path` is relative and normalised: `/`-separated parts, none
/// empty, `.` or `..`, and no NUL byte.
pub fn is_clean_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Whether `path` is absolute and normalised.
pub fn is_clean_absolute_path(path: &str) -> bool {
    match path.strip_prefix('/') {
        Some("") => false,
        Some(rest) => is_clean_relative_path(rest),
        None => false,
    }
}

impl BackupManifest {
    /// Checks what restore will trust: every directory and file path is
    /// relative and normalised, anything under `pg_tblspc/` lies below a
    /// tablespace the manifest lists, tablespace locations are absolute and
    /// normalised, and no path appears twice. A manifest that fails was not
    /// written by walvault, so restore refuses it before writing anything.
    /// This checks an inline file list; a version-3 list is checked entry
    /// by entry as it is read ([`PathCheck`]).
    pub fn check_paths(&self) -> Result<(), String> {
        let mut check = self.check_header()?;
        let mut files: Vec<&FileEntry> = self.files.iter().collect();
        files.sort_by(|a, b| path_cmp(&a.path, &b.path));
        for f in files {
            check.check_file(self, f)?;
        }
        Ok(())
    }

    /// Checks the tablespaces and directories, and returns what checks the
    /// files, which must then come in [`path_cmp`] order.
    pub fn check_header(&self) -> Result<PathCheck, String> {
        let mut oids = std::collections::BTreeSet::new();
        for ts in &self.tablespaces {
            if ts.oid == 0 || !oids.insert(ts.oid) {
                return Err(format!("tablespace oid {} is invalid or repeated", ts.oid));
            }
            if !is_clean_absolute_path(&ts.location) {
                return Err(format!(
                    "tablespace {} has location {:?}, which is not an absolute, normalised path",
                    ts.oid, ts.location
                ));
            }
        }
        if let Some(bad) = self
            .depends_on
            .iter()
            .find(|d| !crate::repo::layout::is_backup_label(d) || **d == self.label)
        {
            return Err(format!(
                "depends_on names {bad:?}, which is not another backup's label"
            ));
        }
        match (
            self.manifest_version >= MANIFEST_VERSION_FILE_LIST,
            &self.file_list,
        ) {
            (true, None) => {
                return Err(format!(
                    "a version-{} manifest must name its file list object",
                    self.manifest_version
                ))
            }
            (false, Some(_)) => {
                return Err(format!(
                    "a version-{} manifest holds its files inline but names a file list object",
                    self.manifest_version
                ))
            }
            _ => {}
        }
        if self.file_list.is_some() && !self.files.is_empty() {
            return Err("the manifest has both inline files and a file list object".into());
        }
        let mut check = PathCheck {
            oids,
            directories: std::collections::BTreeSet::new(),
            previous: None,
        };
        for d in &self.directories {
            check.check_path(&d.path, true)?;
            if !check.directories.insert(d.path.clone()) {
                return Err(format!("path {:?} appears twice", d.path));
            }
        }
        Ok(check)
    }

    /// Every object a file entry names is a file object of this backup or
    /// of one it lists in `depends_on`, and deltas come with their base.
    fn check_objects(&self, f: &FileEntry) -> Result<(), String> {
        for key in f.objects() {
            let label = key
                .strip_prefix("backup/")
                .and_then(|rest| rest.split_once("/files/"))
                .map(|(label, _)| label);
            let known =
                label.is_some_and(|l| l == self.label || self.depends_on.iter().any(|d| d == l));
            if !known {
                return Err(format!(
                    "file {:?} names object {key:?}, which is not a file object of this backup or of one it depends on",
                    f.path
                ));
            }
        }
        if !f.deltas.is_empty() && f.base.is_none() {
            return Err(format!("file {:?} has block deltas but no base", f.path));
        }
        if f.base.as_ref().is_some_and(|b| b.object != f.object) {
            return Err(format!("file {:?} names two different bases", f.path));
        }
        if self.manifest_version < 2 && (f.base.is_some() || !self.depends_on.is_empty()) {
            return Err(format!(
                "file {:?} uses version-2 layers in a version-{} manifest",
                f.path, self.manifest_version
            ));
        }
        Ok(())
    }

    /// How many files the backup holds.
    pub fn file_count(&self) -> u64 {
        self.file_count.unwrap_or(self.files.len() as u64)
    }

    pub fn start_time_ts(&self) -> Option<jiff::Timestamp> {
        self.start_time.parse().ok()
    }

    pub fn stop_time_ts(&self) -> Option<jiff::Timestamp> {
        self.stop_time.parse().ok()
    }
}

/// Checks file entries one at a time, in [`path_cmp`] order: the path
/// rules of [`BackupManifest::check_paths`], with "no path twice" kept by
/// the strict order instead of a set of every path.
#[derive(Debug)]
pub struct PathCheck {
    oids: std::collections::BTreeSet<u32>,
    directories: std::collections::BTreeSet<String>,
    previous: Option<String>,
}

impl PathCheck {
    fn check_path(&self, path: &str, dir: bool) -> Result<(), String> {
        if !is_clean_relative_path(path) {
            return Err(format!(
                "path {path:?} is not relative and normalised (no leading /, no . or .. parts)"
            ));
        }
        if let Some(rest) = path.strip_prefix("pg_tblspc/") {
            let oid = rest.split('/').next().and_then(|o| o.parse::<u32>().ok());
            let listed = oid.is_some_and(|o| self.oids.contains(&o));
            // `pg_tblspc/<oid>` itself is the link restore makes; only
            // directories may name it, files lie below it.
            if !listed || (!dir && !rest.contains('/')) {
                return Err(format!(
                    "path {path:?} is under pg_tblspc but not below a tablespace the manifest lists"
                ));
            }
        }
        Ok(())
    }

    /// Checks the next file entry of `manifest`.
    pub fn check_file(&mut self, manifest: &BackupManifest, f: &FileEntry) -> Result<(), String> {
        self.check_path(&f.path, false)?;
        if self.directories.contains(&f.path) {
            return Err(format!("path {:?} appears twice", f.path));
        }
        if let Some(previous) = &self.previous {
            match path_cmp(previous, &f.path) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    return Err(format!("path {:?} appears twice", f.path))
                }
                std::cmp::Ordering::Greater => {
                    return Err(format!(
                        "path {:?} comes after {previous:?}: the file list is out of order",
                        f.path
                    ))
                }
            }
        }
        manifest.check_objects(f)?;
        self.previous = Some(f.path.clone());
        Ok(())
    }
}

/// A manifest for tests of the pure planners (restore, retention, status):
/// a backup on `timeline` from `start_lsn` to `stop_lsn`, with its WAL
/// range derived from them, ending at `stop_time`.
#[cfg(test)]
pub fn test_manifest(
    label: &str,
    timeline: TimelineId,
    start_lsn: Lsn,
    stop_lsn: Lsn,
    size: crate::wal::WalSegmentSize,
    stop_time: &str,
) -> BackupManifest {
    use crate::wal::WalFileName;
    // The stop segment is the one holding the last byte before stop_lsn.
    let stop_segment = Lsn(stop_lsn.0.saturating_sub(1).max(start_lsn.0)).segment_no(size);
    BackupManifest {
        // Files inline, as the planners' tests build them.
        manifest_version: 2,
        label: label.to_owned(),
        system_identifier: "7000000000000000001".to_owned(),
        pg_version_num: 150004,
        pg_major: 15,
        wal_segment_size: size.bytes(),
        timeline,
        start_lsn,
        stop_lsn,
        start_wal: WalFileName::segment_file_name(timeline, start_lsn.segment_no(size), size),
        stop_wal: WalFileName::segment_file_name(timeline, stop_segment, size),
        start_time: stop_time.to_owned(),
        stop_time: stop_time.to_owned(),
        backup_label: String::new(),
        tablespace_map: None,
        tablespaces: Vec::new(),
        directories: Vec::new(),
        files: Vec::new(),
        file_list: None,
        file_count: None,
        data_size_bytes: 1000,
        stored_size_bytes: 500,
        duration_secs: 1.0,
        created_by: "test".to_owned(),
        backup_type: BackupType::Full,
        reference: None,
        depends_on: Vec::new(),
        block_size: None,
        data_checksum_version: None,
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;
    use crate::wal::WalSegmentSize;

    fn manifest_with(dirs: &[&str], files: &[&str], ts: &[(u32, &str)]) -> BackupManifest {
        let mut m = test_manifest(
            "20260101T000000Z",
            TimelineId(1),
            Lsn(0x1000000),
            Lsn(0x2000000),
            WalSegmentSize::DEFAULT,
            "2026-01-01T00:00:00Z",
        );
        m.directories = dirs
            .iter()
            .map(|p| DirectoryEntry {
                path: p.to_string(),
                mode: 0o700,
            })
            .collect();
        m.files = files
            .iter()
            .map(|p| FileEntry {
                path: p.to_string(),
                size: 0,
                checksum: Checksum([0; 32]),
                mode: 0o600,
                mtime: 0,
                object: "backup/20260101T000000Z/files/000001".to_string(),
                stored_size: 0,
                base: None,
                deltas: Vec::new(),
                map: None,
            })
            .collect();
        m.tablespaces = ts
            .iter()
            .map(|(oid, loc)| TablespaceEntry {
                oid: *oid,
                location: loc.to_string(),
            })
            .collect();
        m
    }

    #[test]
    fn clean_manifests_pass() {
        let m = manifest_with(
            &[
                "base",
                "base/1",
                "pg_tblspc",
                "pg_tblspc/16384",
                "pg_tblspc/16384/PG_15_1",
            ],
            &[
                "base/1/1259",
                "global/pg_control",
                "pg_tblspc/16384/PG_15_1/5/16385",
            ],
            &[(16384, "/srv/ts1")],
        );
        m.check_paths().expect("a manifest walvault writes");
    }

    #[test]
    fn hostile_paths_are_refused() {
        for (dirs, files, ts) in [
            (vec![], vec!["../etc/passwd"], vec![]),
            (vec![], vec!["/etc/passwd"], vec![]),
            (vec![], vec!["base/./1"], vec![]),
            (vec![], vec!["base//1"], vec![]),
            (vec![], vec!["base/1/"], vec![]),
            (vec!["base/.."], vec![], vec![]),
            (vec![], vec!["a\0b"], vec![]),
            (vec![], vec!["base/1", "base/1"], vec![]),
            (vec![], vec!["pg_tblspc/99/x"], vec![(16384, "/srv/ts1")]),
            (vec![], vec!["pg_tblspc/16384"], vec![(16384, "/srv/ts1")]),
            (vec![], vec![], vec![(16384, "relative/ts")]),
            (vec![], vec![], vec![(16384, "/srv/../etc")]),
            (vec![], vec![], vec![(16384, "/a"), (16384, "/b")]),
        ] {
            let m = manifest_with(&dirs, &files, &ts);
            assert!(
                m.check_paths().is_err(),
                "{dirs:?} {files:?} {ts:?} must be refused"
            );
        }
    }
}
