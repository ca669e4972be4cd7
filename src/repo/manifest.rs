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
