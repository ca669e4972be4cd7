//! Reading a cluster's identity from its data directory without a
//! connection, whether the cluster runs or not.
//!
//! `global/pg_control` starts with the system identifier (a u64, in the
//! same place in every PostgreSQL version) and the control-file version.
//! Further in, the compatibility block has kept one order since long
//! before PostgreSQL 12: `maxAlign`, the 8-byte float `floatFormat`
//! (always 1234567.0, found 8-aligned), then `blcksz`, `relseg_size`,
//! `xlog_blcksz` and `xlog_seg_size`. The fields before it change between
//! versions, so [`read_control`] finds `floatFormat` instead of trusting an
//! offset. `PG_VERSION` names the major version; it is cross-checked
//! against the control-file version.

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
    #[error("PostgreSQL {major} is not supported\nHINT: walvault supports PostgreSQL {} to {}", SUPPORTED_MAJORS.start(), SUPPORTED_MAJORS.end())]
    UnsupportedMajor { major: u32 },
}

/// What `global/pg_control` and `PG_VERSION` say about a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFacts {
    pub system_identifier: u64,
    pub pg_control_version: u32,
    pub pg_major: u32,
    pub wal_segment_size: WalSegmentSize,
    /// The relation block size (`BLCKSZ`).
    pub block_size: u32,
    /// Blocks per relation segment file (`RELSEG_SIZE`).
    pub relseg_size: u32,
    /// `data_checksum_version`: 0 when data checksums are off.
    pub data_checksum_version: u32,
}

impl ControlFacts {
    pub fn identity(&self) -> ClusterIdentity {
        ClusterIdentity {
            system_identifier: self.system_identifier,
            wal_segment_size: self.wal_segment_size,
            pg_major: self.pg_major,
        }
    }
}

/// The oldest and newest PostgreSQL major versions walvault supports.
pub const SUPPORTED_MAJORS: std::ops::RangeInclusive<u32> = 12..=18;

/// `PG_CONTROL_VERSION` of each supported major (catalog/pg_control.h).
pub fn control_version_for_major(major: u32) -> Option<u32> {
    match major {
        12 => Some(1201),
        13..=16 => Some(1300),
        17 => Some(1700),
        18 => Some(1800),
        _ => None,
    }
}

/// `FLOATFORMAT_VALUE` in catalog/pg_control.h.
const FLOAT_FORMAT: f64 = 1234567.0;

/// Reads the cluster's facts from `global/pg_control` and `PG_VERSION`.
/// A major version outside [`SUPPORTED_MAJORS`] is refused by name.
pub fn read_control(data_dir: &Path) -> Result<ControlFacts, ControlError> {
    let not_data_dir = |reason: String| ControlError::NotDataDir {
        path: data_dir.to_path_buf(),
        reason,
    };
    let version_path = data_dir.join("PG_VERSION");
    let version_text =
        std::fs::read_to_string(&version_path).map_err(|source| ControlError::Io {
            path: version_path.clone(),
            source,
        })?;
    let pg_major: u32 = version_text
        .trim()
        .split('.')
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| not_data_dir(format!("PG_VERSION holds {:?}", version_text.trim())))?;
    if !SUPPORTED_MAJORS.contains(&pg_major) {
        return Err(ControlError::UnsupportedMajor { major: pg_major });
    }
    let path = data_dir.join("global/pg_control");
    let mut bytes = Vec::with_capacity(8192);
    File::open(&path)
        .and_then(|f| f.take(8192).read_to_end(&mut bytes))
        .map_err(|source| ControlError::Io {
            path: path.clone(),
            source,
        })?;
    parse_control(&bytes, pg_major).map_err(not_data_dir)
}

/// Parses the bytes of `global/pg_control` for a cluster of `pg_major`.
pub fn parse_control(bytes: &[u8], pg_major: u32) -> Result<ControlFacts, String> {
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            bytes.get(off..off + 4)?.try_into().ok()?,
        ))
    };
    if bytes.len() < 16 {
        return Err(format!(
            "global/pg_control is {} bytes, too short",
            bytes.len()
        ));
    }
    let system_identifier = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
    let pg_control_version = u32_at(8).expect("checked length");
    let expected = control_version_for_major(pg_major).unwrap_or(0);
    if pg_control_version != expected {
        return Err(format!(
            "global/pg_control has version {pg_control_version}, but PostgreSQL {pg_major} writes {expected} (damaged, or PG_VERSION is wrong)"
        ));
    }
    let float_at = (16..bytes.len().saturating_sub(32))
        .step_by(8)
        .find(|&off| bytes[off..off + 8] == FLOAT_FORMAT.to_le_bytes())
        .ok_or_else(|| "global/pg_control has no compatibility block (damaged?)".to_string())?;
    let block_size = u32_at(float_at + 8).unwrap_or(0);
    let seg_bytes = u32_at(float_at + 20).unwrap_or(0);
    if !block_size.is_power_of_two() || !(1024..=32768).contains(&block_size) {
        return Err(format!(
            "global/pg_control gives block size {block_size} (damaged?)"
        ));
    }
    let wal_segment_size = WalSegmentSize::new(seg_bytes as u64)
        .map_err(|e| format!("global/pg_control gives an invalid WAL segment size: {e}"))?;
    // relseg_size follows blcksz; data_checksum_version follows the
    // by-value booleans, at the same aligned offset on 12 to 18.
    let relseg_size = u32_at(float_at + 12).unwrap_or(0);
    if relseg_size == 0 {
        return Err("global/pg_control gives relation segments of 0 blocks (damaged?)".into());
    }
    let data_checksum_version = u32_at(float_at + 44).unwrap_or(0);
    Ok(ControlFacts {
        system_identifier,
        pg_control_version,
        pg_major,
        wal_segment_size,
        block_size,
        relseg_size,
        data_checksum_version,
    })
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

/// The cluster identity: from the control file, or for a data directory
/// whose control file cannot be parsed, from its newest WAL segment.
pub fn identity_of_data_dir(data_dir: &Path) -> Result<ClusterIdentity, ControlError> {
    match read_control(data_dir) {
        Ok(facts) => Ok(facts.identity()),
        Err(e @ ControlError::UnsupportedMajor { .. }) => Err(e),
        Err(_) => identity_from_data_dir(data_dir),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A control file laid out as PostgreSQL 15 writes it (only the fields
    /// walvault reads are filled in).
    pub(crate) fn control_bytes(sysid: u64, version: u32, seg: u32, float_at: usize) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..8].copy_from_slice(&sysid.to_le_bytes());
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[float_at..float_at + 8].copy_from_slice(&FLOAT_FORMAT.to_le_bytes());
        b[float_at + 8..float_at + 12].copy_from_slice(&8192u32.to_le_bytes());
        b[float_at + 12..float_at + 16].copy_from_slice(&131072u32.to_le_bytes());
        b[float_at + 16..float_at + 20].copy_from_slice(&8192u32.to_le_bytes());
        b[float_at + 20..float_at + 24].copy_from_slice(&seg.to_le_bytes());
        b
    }

    #[test]
    fn control_file_facts() {
        let b = control_bytes(7, 1300, 1 << 20, 232);
        let f = parse_control(&b, 15).unwrap();
        assert_eq!(f.system_identifier, 7);
        assert_eq!(f.wal_segment_size.bytes(), 1 << 20);
        assert_eq!(f.block_size, 8192);
        assert_eq!(f.relseg_size, 131072);
        // The block moves between versions; it is found wherever it is.
        let f = parse_control(&control_bytes(9, 1700, 16 << 20, 256), 17).unwrap();
        assert_eq!(f.wal_segment_size.bytes(), 16 << 20);
    }

    #[test]
    fn damaged_control_files_are_named() {
        let b = control_bytes(7, 1300, 1 << 20, 232);
        assert!(parse_control(&b, 17).unwrap_err().contains("version 1300"));
        assert!(parse_control(&b[..10], 15)
            .unwrap_err()
            .contains("too short"));
        let mut no_block = b.clone();
        no_block[232..240].fill(0);
        assert!(parse_control(&no_block, 15)
            .unwrap_err()
            .contains("compatibility block"));
        let bad_seg = control_bytes(7, 1300, 3 << 20, 232);
        assert!(parse_control(&bad_seg, 15)
            .unwrap_err()
            .contains("segment size"));
    }

    #[test]
    fn unsupported_majors_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), "11\n").unwrap();
        let e = read_control(dir.path()).unwrap_err().to_string();
        assert!(e.contains("PostgreSQL 11 is not supported"), "{e}");
        assert!(e.contains("12 to 18"), "{e}");
    }
}
