//! Which files of a data directory a base backup copies.
//!
//! Following PostgreSQL's documentation ("Making a Base Backup Using the Low
//! Level API") and what pg_basebackup leaves out: the contents of pg_wal,
//! pg_replslot, pg_dynshmem, pg_notify, pg_serial, pg_snapshots,
//! pg_stat_tmp and pg_subtrans (the directories themselves are kept, empty);
//! postmaster.pid and postmaster.opts; pg_internal.init files; temporary
//! files and directories (`pgsql_tmp*`); an old backup_label,
//! tablespace_map or backup_manifest; recovery and standby signal files.
//! Tablespaces (`pg_tblspc/<oid>` links) are followed into their
//! `PG_<major>_*` directory.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::repo::manifest::{DirectoryEntry, TablespaceEntry};

/// Directories whose contents are never copied.
pub const EXCLUDED_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files (at the top of the data directory) never copied.
pub const EXCLUDED_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "recovery.signal",
    "standby.signal",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

/// A file to copy.
#[derive(Debug, Clone)]
pub struct ScannedFile {
    /// Relative to the data directory, `/`-separated.
    pub rel: String,
    pub abs: PathBuf,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
}

#[derive(Debug, Default)]
pub struct Scan {
    pub files: Vec<ScannedFile>,
    pub directories: Vec<DirectoryEntry>,
    pub tablespaces: Vec<TablespaceEntry>,
    /// Names skipped because they are not UTF-8.
    pub skipped: Vec<PathBuf>,
}

/// Whether a file or directory name is excluded wherever it appears.
fn excluded_anywhere(name: &str) -> bool {
    name == "pg_internal.init" || name.starts_with("pgsql_tmp")
}

/// Walks the data directory. Files and directories that vanish during the
/// walk are skipped (a backup runs while the server writes).
pub fn scan_data_dir(data_dir: &Path, pg_major: u32) -> io::Result<Scan> {
    let mut scan = Scan::default();
    walk(data_dir, "", &mut scan, true)?;
    // Tablespaces: pg_tblspc/<oid> links.
    let tblspc = data_dir.join("pg_tblspc");
    if let Ok(entries) = fs::read_dir(&tblspc) {
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(oid) = name.parse::<u32>() else {
                continue;
            };
            let link = entry.path();
            let Ok(target) = fs::read_link(&link) else {
                continue;
            };
            let location = if target.is_absolute() {
                target.clone()
            } else {
                tblspc.join(&target)
            };
            scan.tablespaces.push(TablespaceEntry {
                oid,
                location: location.display().to_string(),
            });
            let prefix = format!("pg_tblspc/{oid}");
            push_dir(&mut scan, &prefix, &location);
            let version_prefix = format!("PG_{pg_major}_");
            for sub in fs::read_dir(&location)? {
                let sub = sub?;
                let Some(sub_name) = sub.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if sub_name.starts_with(&version_prefix) && sub.file_type()?.is_dir() {
                    let rel = format!("{prefix}/{sub_name}");
                    push_dir(&mut scan, &rel, &sub.path());
                    walk(&sub.path(), &rel, &mut scan, false)?;
                }
            }
        }
    }
    scan.tablespaces.sort_by_key(|t| t.oid);
    scan.directories.sort_by(|a, b| a.path.cmp(&b.path));
    // Largest first: the long copies start early and the jobs finish together.
    scan.files
        .sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.rel.cmp(&b.rel)));
    Ok(scan)
}

fn push_dir(scan: &mut Scan, rel: &str, abs: &Path) {
    let mode = fs::metadata(abs)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o700);
    scan.directories.push(DirectoryEntry {
        path: rel.to_string(),
        mode,
    });
}

fn walk(dir: &Path, rel: &str, scan: &mut Scan, top: bool) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            scan.skipped.push(entry.path());
            continue;
        };
        if excluded_anywhere(&name) {
            continue;
        }
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        // Follow links (pg_wal may be one) except the tablespace links,
        // which are handled separately.
        if top && name == "pg_tblspc" {
            push_dir(scan, &child_rel, &entry.path());
            continue;
        }
        let meta = match fs::metadata(entry.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            push_dir(scan, &child_rel, &entry.path());
            if top && EXCLUDED_CONTENTS.contains(&name.as_str()) {
                if name == "pg_wal" {
                    scan.directories.push(DirectoryEntry {
                        path: "pg_wal/archive_status".to_string(),
                        mode: meta.permissions().mode() & 0o7777,
                    });
                }
                continue;
            }
            walk(&entry.path(), &child_rel, scan, false)?;
        } else if meta.is_file() {
            if top && EXCLUDED_TOP_FILES.contains(&name.as_str()) {
                continue;
            }
            scan.files.push(ScannedFile {
                rel: child_rel,
                abs: entry.path(),
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
                mtime: meta.mtime(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_follow_the_documentation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "base/1",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot/slot",
            "base/pgsql_tmp",
            "pg_tblspc",
        ] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "base/1/1259",
            "base/1/pg_internal.init",
            "base/pgsql_tmp/pgsql_tmp123.0",
            "global/pg_control",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/global.stat",
            "pg_replslot/slot/state",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label.old",
            "standby.signal",
            "postgresql.auto.conf",
        ] {
            fs::write(d.join(f), b"x").unwrap();
        }
        let space = tempfile::tempdir().unwrap();
        fs::create_dir_all(space.path().join("PG_15_202209061/16384")).unwrap();
        fs::create_dir_all(space.path().join("PG_14_202107181")).unwrap();
        fs::write(space.path().join("PG_15_202209061/16384/16390"), b"y").unwrap();
        fs::write(space.path().join("PG_14_202107181/other"), b"z").unwrap();
        std::os::unix::fs::symlink(space.path(), d.join("pg_tblspc/16389")).unwrap();

        let scan = scan_data_dir(d, 15).unwrap();
        let mut files: Vec<&str> = scan.files.iter().map(|f| f.rel.as_str()).collect();
        files.sort();
        assert_eq!(
            files,
            [
                "PG_VERSION",
                "base/1/1259",
                "global/pg_control",
                "pg_tblspc/16389/PG_15_202209061/16384/16390",
                "postgresql.auto.conf"
            ]
        );
        let dirs: Vec<&str> = scan.directories.iter().map(|d| d.path.as_str()).collect();
        for kept in [
            "pg_wal",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot",
            "pg_tblspc",
            "pg_tblspc/16389",
            "base/1",
        ] {
            assert!(dirs.contains(&kept), "{kept} kept in {dirs:?}");
        }
        assert!(
            !dirs.contains(&"pg_replslot/slot") && !dirs.contains(&"base/pgsql_tmp"),
            "{dirs:?}"
        );
        assert_eq!(scan.tablespaces.len(), 1);
        assert_eq!(scan.tablespaces[0].oid, 16389);
        assert_eq!(
            scan.tablespaces[0].location,
            space.path().display().to_string()
        );
    }
}
