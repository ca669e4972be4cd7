//! Delta restore (`walvault restore --delta`): bring an existing, stopped
//! data directory to a backup's state, rewriting only the files that
//! differ.
//!
//! [`plan_delta`] is pure: from the manifest and a listing of what the
//! directory holds it decides what to keep, what to check by checksum,
//! what to rewrite and what to remove. [`list_local`] makes the listing.
//! `restore::apply` carries the plan out, in the same order as a fresh
//! restore: `global/pg_control` is removed first and written last, so an
//! interrupted delta restore is never started as a cluster and can simply
//! be run again.
//!
//! A file is unchanged when its size equals the manifest's and its
//! modification time is exactly the one restore gives every file it
//! writes (the manifest's, whole seconds); any other file of the right
//! size is compared by checksum, and `--delta-force-checksum` compares
//! every file by checksum.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::repo::manifest::{BackupManifest, FileEntry, TablespaceEntry};

/// What a path in the data directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalKind {
    File {
        size: u64,
        mtime: i64,
        mtime_nsec: i64,
        /// Hard links to it: a file with others lies partly outside the
        /// data directory and is never changed in place.
        links: u64,
    },
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    /// Relative to the data directory, `/`-separated; tablespace contents
    /// under `pg_tblspc/<oid>/`.
    pub rel: String,
    pub kind: LocalKind,
}

/// What a delta restore does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeltaPlan {
    /// Paths to remove (a directory with everything in it), topmost only.
    pub remove: Vec<String>,
    /// Files whose size and time match: kept without reading.
    pub keep: Vec<String>,
    /// Files to compare: by block against their block map (and patched),
    /// or, without a map, of the right size by checksum (kept if equal).
    pub check: Vec<FileEntry>,
    /// Files to write (after removing whatever is at their path).
    pub rewrite: Vec<FileEntry>,
}

/// Decides what a delta restore of `manifest` does to a directory holding
/// `local`.
pub fn plan_delta(
    manifest: &BackupManifest,
    local: &[LocalEntry],
    force_checksum: bool,
) -> DeltaPlan {
    let files: BTreeMap<&str, &FileEntry> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    let dirs: BTreeSet<&str> = manifest
        .directories
        .iter()
        .map(|d| d.path.as_str())
        .collect();
    let links: BTreeSet<String> = manifest
        .tablespaces
        .iter()
        .map(|t| format!("pg_tblspc/{}", t.oid))
        .collect();
    let trust_before = manifest.start_time_ts().map(|t| t.as_second() - 1);
    let mut plan = DeltaPlan::default();
    let mut present: BTreeSet<&str> = BTreeSet::new();
    let mut removed_dirs: Vec<String> = Vec::new();
    let mut local: Vec<&LocalEntry> = local.iter().collect();
    local.sort_by(|a, b| a.rel.cmp(&b.rel));
    for entry in local {
        // Inside a directory already removed whole.
        if removed_dirs.iter().any(|d| {
            entry.rel.starts_with(d.as_str()) && entry.rel.as_bytes().get(d.len()) == Some(&b'/')
        }) {
            continue;
        }
        let rel = entry.rel.as_str();
        if let Some(file) = files.get(rel) {
            present.insert(file.path.as_str());
            match &entry.kind {
                // pg_control is always written, and last.
                _ if rel == "global/pg_control" => {
                    plan.remove.push(entry.rel.clone());
                    plan.rewrite.push((*file).clone());
                }
                // A file with a block map is patched block by block, so it
                // is checked even when its size differs.
                LocalKind::File {
                    size,
                    mtime,
                    mtime_nsec,
                    links,
                } if *links <= 1 && (*size == file.size || file.map.is_some()) => {
                    // A time in the second the backup started (or later)
                    // can hide a change made in that same second.
                    let trusted = trust_before.is_some_and(|t| file.mtime < t);
                    if *size == file.size
                        && !force_checksum
                        && trusted
                        && *mtime == file.mtime
                        && *mtime_nsec == 0
                    {
                        plan.keep.push(entry.rel.clone());
                    } else {
                        plan.check.push((*file).clone());
                    }
                }
                LocalKind::Dir => {
                    plan.remove.push(entry.rel.clone());
                    removed_dirs.push(entry.rel.clone());
                    plan.rewrite.push((*file).clone());
                }
                _ => {
                    plan.remove.push(entry.rel.clone());
                    plan.rewrite.push((*file).clone());
                }
            }
        } else if dirs.contains(rel) && !links.contains(rel) {
            if entry.kind != LocalKind::Dir {
                plan.remove.push(entry.rel.clone());
            }
        } else if links.contains(rel) {
            // Made again by apply, pointing where the plan says.
            if entry.kind != LocalKind::Symlink && entry.kind != LocalKind::Dir {
                plan.remove.push(entry.rel.clone());
            }
        } else {
            if entry.kind == LocalKind::Dir {
                removed_dirs.push(entry.rel.clone());
            }
            plan.remove.push(entry.rel.clone());
        }
    }
    for file in &manifest.files {
        if !present.contains(file.path.as_str()) {
            plan.rewrite.push(file.clone());
        }
    }
    plan
}

fn kind_of(meta: &fs::Metadata) -> LocalKind {
    let ft = meta.file_type();
    if ft.is_symlink() {
        LocalKind::Symlink
    } else if ft.is_dir() {
        LocalKind::Dir
    } else if ft.is_file() {
        LocalKind::File {
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            links: meta.nlink(),
        }
    } else {
        LocalKind::Other
    }
}

/// Lists the data directory, never following links, and each tablespace's
/// `PG_<major>_*` directories at their planned location under
/// `pg_tblspc/<oid>/` (a tablespace directory may hold other clusters'
/// directories: those are never touched). Names that are not UTF-8 are
/// listed lossily, so they never match the manifest and are removed.
pub fn list_local(
    pgdata: &Path,
    tablespaces: &[TablespaceEntry],
    pg_major: u32,
) -> io::Result<Vec<LocalEntry>> {
    let mut out = Vec::new();
    let links: BTreeSet<String> = tablespaces
        .iter()
        .map(|t| format!("pg_tblspc/{}", t.oid))
        .collect();
    let mut stack: Vec<(PathBuf, String)> = vec![(pgdata.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = match fs::symlink_metadata(entry.path()) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let kind = kind_of(&meta);
            // A real directory where a tablespace link belongs is replaced
            // by the link whole; what is in it is never listed as the
            // tablespace's (that lives at the tablespace's location).
            if kind == LocalKind::Dir && !links.contains(&rel) {
                stack.push((entry.path(), rel.clone()));
            }
            out.push(LocalEntry { rel, kind });
        }
    }
    // Tablespaces: what lies at each planned location.
    let version_prefix = format!("PG_{pg_major}_");
    for ts in tablespaces {
        let prefix = format!("pg_tblspc/{}", ts.oid);
        let location = Path::new(&ts.location);
        let entries = match fs::read_dir(location) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&version_prefix) {
                continue;
            }
            let rel = format!("{prefix}/{name}");
            let meta = fs::symlink_metadata(entry.path())?;
            let kind = kind_of(&meta);
            if kind == LocalKind::Dir {
                let mut sub = list_local(&entry.path(), &[], pg_major)?;
                for s in &mut sub {
                    s.rel = format!("{rel}/{}", s.rel);
                }
                out.extend(sub);
            }
            out.push(LocalEntry { rel, kind });
        }
    }
    // Links inside the data directory are never followed; the link (or a
    // directory in its place) is listed itself.
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::{test_manifest, DirectoryEntry};
    use crate::wal::{Lsn, TimelineId, WalSegmentSize};

    fn manifest() -> BackupManifest {
        let mut m = test_manifest(
            "20260101T000000Z",
            TimelineId(1),
            Lsn(0x1000000),
            Lsn(0x2000000),
            WalSegmentSize::DEFAULT,
            "2026-01-01T00:00:00Z",
        );
        for d in ["base", "base/1", "global", "pg_wal", "pg_tblspc"] {
            m.directories.push(DirectoryEntry {
                path: d.into(),
                mode: 0o700,
            });
        }
        for (path, size) in [
            ("base/1/100", 8192),
            ("base/1/200", 8192),
            ("base/1/300", 100),
            ("base/1/400", 10),
            ("global/pg_control", 8192),
            ("PG_VERSION", 3),
        ] {
            m.files.push(FileEntry {
                path: path.into(),
                size,
                checksum: Default::default(),
                mode: 0o600,
                mtime: 1000,
                object: format!("backup/20260101T000000Z/files/{}", m.files.len()),
                stored_size: 0,
                base: None,
                deltas: Vec::new(),
                map: None,
            });
        }
        m
    }

    fn file(rel: &str, size: u64, mtime: i64, nsec: i64) -> LocalEntry {
        LocalEntry {
            rel: rel.into(),
            kind: LocalKind::File {
                size,
                mtime,
                mtime_nsec: nsec,
                links: 1,
            },
        }
    }

    fn dir(rel: &str) -> LocalEntry {
        LocalEntry {
            rel: rel.into(),
            kind: LocalKind::Dir,
        }
    }

    #[test]
    fn only_what_differs_is_written_and_what_the_backup_lacks_goes() {
        let local = vec![
            dir("base"),
            dir("base/1"),
            dir("global"),
            dir("pg_wal"),
            file("pg_wal/000000010000000000000005", 16 << 20, 5, 0),
            file("base/1/100", 8192, 1000, 0), // same size and time: kept
            file("base/1/200", 8192, 1000, 5), // same size, other time: checked
            file("base/1/300", 99, 1000, 0),   // other size: rewritten
            dir("base/1/400"),                 // a directory where a file goes
            file("base/1/400/x", 1, 1, 0),
            file("base/1/999", 1, 1, 0), // not in the backup
            dir("base/5"),               // a whole database not in the backup
            file("base/5/1", 1, 1, 0),
            file("global/pg_control", 8192, 1000, 0), // always written, last
            file("postmaster.pid", 10, 1, 0),
            file("recovery.signal", 0, 1, 0),
        ];
        let plan = plan_delta(&manifest(), &local, false);
        assert_eq!(plan.keep, ["base/1/100"]);
        assert_eq!(
            plan.check
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>(),
            ["base/1/200"]
        );
        let mut rewrite: Vec<&str> = plan.rewrite.iter().map(|f| f.path.as_str()).collect();
        rewrite.sort();
        assert_eq!(
            rewrite,
            [
                "PG_VERSION",
                "base/1/300",
                "base/1/400",
                "global/pg_control"
            ]
        );
        assert_eq!(
            plan.remove,
            [
                "base/1/300",
                "base/1/400",
                "base/1/999",
                "base/5",
                "global/pg_control",
                "pg_wal/000000010000000000000005",
                "postmaster.pid",
                "recovery.signal"
            ]
        );
        // A file with a block map is compared block by block even when
        // its size differs.
        let mut m = manifest();
        m.files[2].map = Some(crate::repo::manifest::ObjectRef {
            object: "backup/20260101T000000Z/files/2.map".into(),
            raw_size: 0,
            checksum: Default::default(),
        });
        let plan_with_map = plan_delta(&m, &local, false);
        assert!(plan_with_map.check.iter().any(|f| f.path == "base/1/300"));
        assert!(!plan_with_map.remove.contains(&"base/1/300".to_string()));
        // Forced checksums: nothing is kept unread.
        let plan = plan_delta(&manifest(), &local, true);
        assert!(plan.keep.is_empty());
        assert_eq!(plan.check.len(), 2);
    }

    #[test]
    fn recent_times_and_hard_links_are_never_trusted() {
        let mut m = manifest();
        // The backup started at 1000 (its manifest's time), so a file time
        // in that second could hide a change.
        m.start_time = "1970-01-01T00:16:40Z".into();
        let local = vec![
            dir("base"),
            dir("base/1"),
            file("base/1/100", 8192, 1000, 0),
            LocalEntry {
                rel: "base/1/200".into(),
                kind: LocalKind::File {
                    size: 8192,
                    mtime: 1000,
                    mtime_nsec: 0,
                    links: 2,
                },
            },
        ];
        let plan = plan_delta(&m, &local, false);
        assert!(plan.keep.is_empty(), "{plan:?}");
        assert_eq!(plan.check.len(), 1);
        assert!(plan.remove.contains(&"base/1/200".to_string()));
        assert!(plan.rewrite.iter().any(|f| f.path == "base/1/200"));
    }

    #[test]
    fn an_empty_directory_gets_everything() {
        let plan = plan_delta(&manifest(), &[], false);
        assert_eq!(plan.rewrite.len(), 6);
        assert!(plan.remove.is_empty() && plan.keep.is_empty() && plan.check.is_empty());
    }
}
