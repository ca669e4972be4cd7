//! Reading a cluster's identity from its data directory without a
//! connection: `global/pg_control` starts with the system identifier (a u64,
//! in the same place in every PostgreSQL version), and every WAL segment in
//! `pg_wal` starts with a long page header that also records the segment
//! size and, through its magic number, the PostgreSQL major version.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::repo::ClusterIdentity;
use crate::wal::{
    pg_major_for_wal_magic, LongPageHeader, WalFileName, WalSegmentSize, LONG_HEADER_LEN,
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("read \"{path}\": {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("\"{path}\" is not a PostgreSQL data directory: {reason}")]
    NotDataDir { path: PathBuf, reason: String },
}

/// The system identifier from `global/pg_control`.
pub fn read_system_identifier(data_dir: &Path) -> Result<u64, ControlError> {
    let path = data_dir.join("global/pg_control");
    let mut buf = [0u8; 8];
    File::open(&path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|source| ControlError::Io { path, source })?;
    Ok(u64::from_le_bytes(buf))
}

/// The cluster identity, from the newest WAL segment in `pg_wal` whose
/// system identifier matches `global/pg_control`.
pub fn identity_from_data_dir(data_dir: &Path) -> Result<ClusterIdentity, ControlError> {
    let system_identifier = read_system_identifier(data_dir)?;
    let wal_dir = data_dir.join("pg_wal");
    let entries = std::fs::read_dir(&wal_dir).map_err(|source| ControlError::Io {
        path: wal_dir.clone(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            matches!(
                crate::repo::layout::parse_any_size(n),
                Ok(WalFileName::Segment { .. })
            )
        })
        .collect();
    names.sort();
    for name in names.iter().rev() {
        let mut head = [0u8; LONG_HEADER_LEN];
        let read = File::open(wal_dir.join(name)).and_then(|mut f| f.read_exact(&mut head));
        if read.is_err() {
            continue;
        }
        let Ok(header) = LongPageHeader::parse(&head) else {
            continue;
        };
        let (Ok(size), Some(pg_major)) = (
            WalSegmentSize::new(header.segment_size as u64),
            pg_major_for_wal_magic(header.magic),
        ) else {
            continue;
        };
        if header.system_identifier == system_identifier {
            return Ok(ClusterIdentity {
                system_identifier,
                wal_segment_size: size,
                pg_major,
            });
        }
    }
    Err(ControlError::NotDataDir {
        path: data_dir.to_path_buf(),
        reason: "no readable WAL segment of this cluster in pg_wal".to_string(),
    })
}
