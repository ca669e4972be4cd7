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

/// The manifest format this walvault writes and the newest it reads.
pub const MANIFEST_VERSION: u32 = 1;

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
    pub files: Vec<FileEntry>,
    /// Sum of the files' sizes.
    pub data_size_bytes: u64,
    /// Sum of the stored objects' sizes.
    pub stored_size_bytes: u64,
    pub duration_secs: f64,
    pub created_by: String,
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
    /// The object holding the contents (a key in the repository).
    pub object: String,
    pub stored_size: u64,
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
    pub fn check_paths(&self) -> Result<(), String> {
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
        let check = |path: &str, dir: bool| -> Result<(), String> {
            if !is_clean_relative_path(path) {
                return Err(format!(
                    "path {path:?} is not relative and normalised (no leading /, no . or .. parts)"
                ));
            }
            if let Some(rest) = path.strip_prefix("pg_tblspc/") {
                let oid = rest.split('/').next().and_then(|o| o.parse::<u32>().ok());
                let listed = oid.is_some_and(|o| oids.contains(&o));
                // `pg_tblspc/<oid>` itself is the link restore makes; only
                // directories may name it, files lie below it.
                if !listed || (!dir && !rest.contains('/')) {
                    return Err(format!(
                        "path {path:?} is under pg_tblspc but not below a tablespace the manifest lists"
                    ));
                }
            }
            Ok(())
        };
        let mut seen = std::collections::BTreeSet::new();
        for d in &self.directories {
            check(&d.path, true)?;
            if !seen.insert(d.path.as_str()) {
                return Err(format!("path {:?} appears twice", d.path));
            }
        }
        for f in &self.files {
            check(&f.path, false)?;
            if !seen.insert(f.path.as_str()) {
                return Err(format!("path {:?} appears twice", f.path));
            }
        }
        Ok(())
    }

    pub fn start_time_ts(&self) -> Option<jiff::Timestamp> {
        self.start_time.parse().ok()
    }

    pub fn stop_time_ts(&self) -> Option<jiff::Timestamp> {
        self.stop_time.parse().ok()
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
        manifest_version: MANIFEST_VERSION,
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
        data_size_bytes: 1000,
        stored_size_bytes: 500,
        duration_secs: 1.0,
        created_by: "test".to_owned(),
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
                object: "backup/x/files/000001".to_string(),
                stored_size: 0,
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
