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

/// What a whole walk found (tests and small tools; a backup walks with
/// [`Walk`] and never holds every file).
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

/// Walks the whole data directory into memory.
pub fn scan_data_dir(data_dir: &Path, pg_major: u32) -> io::Result<Scan> {
    let mut walk = Walk::new(data_dir, pg_major)?;
    let files = walk.by_ref().collect::<io::Result<Vec<_>>>()?;
    let (directories, tablespaces, skipped) = walk.finish();
    Ok(Scan {
        files,
        directories,
        tablespaces,
        skipped,
    })
}

/// A depth-first walk of the data directory that yields the files to copy
/// one at a time, in [`crate::repo::manifest::path_cmp`] order (each
/// directory's entries sorted by name), so memory holds one directory
/// listing per level, not the whole tree. Directories, tablespaces and
/// skipped names are collected as it goes ([`Walk::finish`]). Files and
/// directories that vanish during the walk are skipped (a backup runs
/// while the server writes).
pub struct Walk {
    pg_major: u32,
    stack: Vec<Frame>,
    directories: Vec<DirectoryEntry>,
    tablespaces: Vec<TablespaceEntry>,
    skipped: Vec<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    /// The data directory itself.
    Top,
    /// Any directory below it, or below a tablespace's version directory.
    Inner,
    /// `pg_tblspc`: links named by tablespace oid.
    Tablespaces,
    /// A tablespace's location: only this major's `PG_<major>_*`.
    Location,
}

struct Frame {
    rel: String,
    /// For `pg_tblspc`, where relative link targets start.
    abs: PathBuf,
    level: Level,
    entries: std::vec::IntoIter<(String, PathBuf)>,
}

impl Walk {
    pub fn new(data_dir: &Path, pg_major: u32) -> io::Result<Walk> {
        let mut walk = Walk {
            pg_major,
            stack: Vec::new(),
            directories: Vec::new(),
            tablespaces: Vec::new(),
            skipped: Vec::new(),
        };
        walk.enter(String::new(), data_dir.to_path_buf(), Level::Top)?;
        Ok(walk)
    }

    /// The directories (sorted by path), tablespaces (by oid) and skipped
    /// names the walk met.
    pub fn finish(mut self) -> (Vec<DirectoryEntry>, Vec<TablespaceEntry>, Vec<PathBuf>) {
        self.directories.sort_by(|a, b| a.path.cmp(&b.path));
        self.tablespaces.sort_by_key(|t| t.oid);
        (self.directories, self.tablespaces, self.skipped)
    }

    fn enter(&mut self, rel: String, abs: PathBuf, level: Level) -> io::Result<()> {
        let reader = match fs::read_dir(&abs) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound && level != Level::Location => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        for entry in reader {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match entry.file_name().to_str() {
                Some(name) if excluded_anywhere(name) => {}
                Some(name) => entries.push((name.to_string(), entry.path())),
                None => self.skipped.push(entry.path()),
            }
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.stack.push(Frame {
            rel,
            abs,
            level,
            entries: entries.into_iter(),
        });
        Ok(())
    }

    fn push_dir(&mut self, rel: &str, abs: &Path) {
        let mode = fs::metadata(abs)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o700);
        self.directories.push(DirectoryEntry {
            path: rel.to_string(),
            mode,
        });
    }

    /// One entry of the innermost directory: `Some` for a file to copy.
    fn visit(
        &mut self,
        rel: &str,
        parent: &Path,
        level: Level,
        name: String,
        abs: PathBuf,
    ) -> io::Result<Option<ScannedFile>> {
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        match level {
            Level::Tablespaces => {
                let Ok(oid) = name.parse::<u32>() else {
                    return Ok(None);
                };
                let Ok(target) = fs::read_link(&abs) else {
                    return Ok(None);
                };
                let location = if target.is_absolute() {
                    target
                } else {
                    parent.join(&target)
                };
                self.tablespaces.push(TablespaceEntry {
                    oid,
                    location: location.display().to_string(),
                });
                self.push_dir(&child_rel, &location);
                self.enter(child_rel, location, Level::Location)?;
                return Ok(None);
            }
            Level::Location => {
                let version_prefix = format!("PG_{}_", self.pg_major);
                if name.starts_with(&version_prefix) && fs::metadata(&abs)?.is_dir() {
                    self.push_dir(&child_rel, &abs);
                    self.enter(child_rel, abs, Level::Inner)?;
                }
                return Ok(None);
            }
            Level::Top if name == "pg_tblspc" => {
                // Its links are followed into their version directory only.
                self.push_dir(&child_rel, &abs);
                self.enter(child_rel, abs, Level::Tablespaces)?;
                return Ok(None);
            }
            Level::Top | Level::Inner => {}
        }
        let top = level == Level::Top;
        // Follow links (pg_wal may be one).
        let meta = match fs::metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            self.push_dir(&child_rel, &abs);
            if top && EXCLUDED_CONTENTS.contains(&name.as_str()) {
                if name == "pg_wal" {
                    self.directories.push(DirectoryEntry {
                        path: "pg_wal/archive_status".to_string(),
                        mode: meta.permissions().mode() & 0o7777,
                    });
                }
                return Ok(None);
            }
            self.enter(child_rel, abs, Level::Inner)?;
            Ok(None)
        } else if meta.is_file() {
            if top && EXCLUDED_TOP_FILES.contains(&name.as_str()) {
                return Ok(None);
            }
            Ok(Some(ScannedFile {
                rel: child_rel,
                abs,
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
                mtime: meta.mtime(),
            }))
        } else {
            Ok(None)
        }
    }
}

impl Iterator for Walk {
    type Item = io::Result<ScannedFile>;

    fn next(&mut self) -> Option<io::Result<ScannedFile>> {
        loop {
            let frame = self.stack.last_mut()?;
            let Some((name, abs)) = frame.entries.next() else {
                self.stack.pop();
                continue;
            };
            let (rel, parent, level) = (frame.rel.clone(), frame.abs.clone(), frame.level);
            match self.visit(&rel, &parent, level, name, abs) {
                Ok(Some(file)) => return Some(Ok(file)),
                Ok(None) => {}
                Err(e) => {
                    self.stack.clear();
                    return Some(Err(e));
                }
            }
        }
    }
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
        let files: Vec<&str> = scan.files.iter().map(|f| f.rel.as_str()).collect();
        // In path order as walked: no sorting needed.
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
