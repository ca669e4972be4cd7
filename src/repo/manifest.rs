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

impl BackupManifest {
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
