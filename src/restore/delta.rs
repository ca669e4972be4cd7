//! Delta restore (`walvault restore --delta`): bring an existing, stopped
//! data directory to a backup's state, rewriting only the files that
//! differ.
//!
//! It runs in two streamed passes, so memory never holds the file list
//! (a million files restore in the same few MiB as a thousand):
//!
//! 1. [`LocalWalk`] lists the data directory (and each tablespace's
//!    planned location) depth first in [`path_cmp`] order, the order of a
//!    backup's file list; [`Removals`] merges the two and names what the
//!    backup does not have, or has as something else, to remove.
//! 2. Each file of the list is looked at on its own ([`plan_file`]):
//!    kept unread, compared (by block against its block map, or by
//!    checksum), or written.
//!
//! Both decisions are pure; `restore::apply` carries them out, in the same
//! order as a fresh restore: `global/pg_control` is removed first and
//! written last, so an interrupted delta restore is never started as a
//! cluster and can simply be run again.
//!
//! A file is unchanged when its size equals the manifest's and its
//! modification time is exactly the one restore gives every file it
//! writes (the manifest's, whole seconds); any other file of the right
//! size is compared by checksum, and `--delta-force-checksum` compares
//! every file by checksum.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::repo::manifest::{path_cmp, BackupManifest, FileEntry, TablespaceEntry};

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

impl LocalKind {
    pub fn of(meta: &fs::Metadata) -> LocalKind {
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    /// Relative to the data directory, `/`-separated; tablespace contents
    /// under `pg_tblspc/<oid>/`. Names that are not UTF-8 are converted
    /// lossily, so they never match the manifest (and are removed).
    pub rel: String,
    /// Where it is (the real name, for removing it).
    pub abs: PathBuf,
    pub kind: LocalKind,
}

/// What the second pass does with one file of the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    /// Size and time match: kept without reading.
    Keep,
    /// Compared: by block against its block map (and patched), or,
    /// without a map, by checksum (kept if equal, written if not).
    Check,
    /// Written; `clear`: something else is at its path and goes first.
    Write { clear: bool },
}

/// The newest file time a delta restore trusts: one in the second the
/// backup started (or later) can hide a change made in that same second.
pub fn trust_before(manifest: &BackupManifest) -> Option<i64> {
    manifest.start_time_ts().map(|t| t.as_second() - 1)
}

/// Decides what happens to `file`, given what its path holds now (after
/// the first pass), `None` for nothing.
pub fn plan_file(
    file: &FileEntry,
    local: Option<&LocalKind>,
    force_checksum: bool,
    trust_before: Option<i64>,
) -> FileAction {
    match local {
        None => FileAction::Write { clear: false },
        // pg_control is always written, and last.
        Some(_) if file.path == "global/pg_control" => FileAction::Write { clear: true },
        // A file with a block map is patched block by block, so it is
        // checked even when its size differs.
        Some(LocalKind::File {
            size,
            mtime,
            mtime_nsec,
            links,
        }) if *links <= 1 && (*size == file.size || file.map.is_some()) => {
            let trusted = trust_before.is_some_and(|t| file.mtime < t);
            if *size == file.size
                && !force_checksum
                && trusted
                && *mtime == file.mtime
                && *mtime_nsec == 0
            {
                FileAction::Keep
            } else {
                FileAction::Check
            }
        }
        Some(_) => FileAction::Write { clear: true },
    }
}

/// The first pass: merges a [`LocalWalk`] with the paths of the backup's
/// files (both in [`path_cmp`] order) and yields what to remove, topmost
/// only: whatever the backup does not have, a directory where it has a
/// file, and a non-directory where it has a directory. What it has as a
/// file stays for the second pass ([`plan_file`]).
pub struct Removals<L, F> {
    local: L,
    files: F,
    /// The smallest backup file path not yet passed.
    next_file: Option<String>,
    dirs: BTreeSet<String>,
    links: BTreeSet<String>,
    /// The last directory removed whole: what follows inside it is skipped.
    removed_dir: Option<String>,
}

impl<L, F, E> Removals<L, F>
where
    L: Iterator<Item = Result<LocalEntry, E>>,
    F: Iterator<Item = Result<String, E>>,
{
    pub fn new(manifest: &BackupManifest, local: L, files: F) -> Removals<L, F> {
        Removals {
            local,
            files,
            next_file: None,
            dirs: manifest
                .directories
                .iter()
                .map(|d| d.path.clone())
                .collect(),
            links: manifest
                .tablespaces
                .iter()
                .map(|t| format!("pg_tblspc/{}", t.oid))
                .collect(),
            removed_dir: None,
        }
    }

    /// Whether the backup has a file at `rel`: passes the smaller paths.
    fn has_file(&mut self, rel: &str) -> Result<bool, E> {
        loop {
            match &self.next_file {
                Some(f) => match path_cmp(f, rel) {
                    std::cmp::Ordering::Less => self.next_file = None,
                    std::cmp::Ordering::Equal => return Ok(true),
                    std::cmp::Ordering::Greater => return Ok(false),
                },
                None => match self.files.next() {
                    Some(f) => self.next_file = Some(f?),
                    None => return Ok(false),
                },
            }
        }
    }
}

impl<L, F, E> Iterator for Removals<L, F>
where
    L: Iterator<Item = Result<LocalEntry, E>>,
    F: Iterator<Item = Result<String, E>>,
{
    type Item = Result<LocalEntry, E>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let entry = match self.local.next()? {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            if let Some(dir) = &self.removed_dir {
                if entry.rel.starts_with(dir.as_str())
                    && entry.rel.as_bytes().get(dir.len()) == Some(&b'/')
                {
                    continue;
                }
            }
            let rel = entry.rel.as_str();
            let is_file = match self.has_file(rel) {
                Ok(b) => b,
                Err(e) => return Some(Err(e)),
            };
            let remove = if is_file {
                entry.kind == LocalKind::Dir
            } else if self.links.contains(rel) {
                // Made again by apply, pointing where the plan says.
                entry.kind != LocalKind::Symlink && entry.kind != LocalKind::Dir
            } else if self.dirs.contains(rel) {
                entry.kind != LocalKind::Dir
            } else {
                true
            };
            if remove {
                if entry.kind == LocalKind::Dir {
                    self.removed_dir = Some(entry.rel.clone());
                }
                return Some(Ok(entry));
            }
        }
    }
}

/// Lists the data directory depth first in [`path_cmp`] order, never
/// following links, and each planned tablespace's `PG_<major>_*`
/// directories at their planned location, as `pg_tblspc/<oid>/…` (a
/// tablespace directory may hold other clusters' directories: those are
/// never listed, so never touched). Memory holds one directory listing
/// per level. Entries that vanish while it walks are skipped.
pub struct LocalWalk {
    version_prefix: String,
    tablespaces: Vec<TablespaceEntry>,
    stack: Vec<Frame>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Inner,
    /// `pg_tblspc`: planned links are not followed; their planned
    /// locations are listed instead.
    Tablespaces,
    /// A planned location: only this major's `PG_<major>_*`.
    Location,
}

struct Frame {
    rel: String,
    level: Level,
    /// Names with where they are; `None` for a name listed although it is
    /// not there (`pg_tblspc`, or a planned link, whose location is listed
    /// all the same).
    entries: std::vec::IntoIter<(String, Option<PathBuf>)>,
}

impl LocalWalk {
    pub fn new(
        pgdata: &Path,
        tablespaces: &[TablespaceEntry],
        pg_major: u32,
    ) -> io::Result<LocalWalk> {
        let mut walk = LocalWalk {
            version_prefix: format!("PG_{pg_major}_"),
            tablespaces: tablespaces.to_vec(),
            stack: Vec::new(),
        };
        walk.enter(String::new(), Some(pgdata), Level::Top)?;
        Ok(walk)
    }

    fn enter(&mut self, rel: String, abs: Option<&Path>, level: Level) -> io::Result<()> {
        let mut entries: Vec<(String, Option<PathBuf>)> = Vec::new();
        if let Some(abs) = abs {
            match fs::read_dir(abs) {
                Ok(reader) => {
                    for entry in reader {
                        let entry = match entry {
                            Ok(e) => e,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(e),
                        };
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if level == Level::Location && !name.starts_with(&self.version_prefix) {
                            continue;
                        }
                        entries.push((name, Some(entry.path())));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let mut listed = |name: String| {
            if !entries.iter().any(|(n, _)| *n == name) {
                entries.push((name, None));
            }
        };
        match level {
            Level::Top if !self.tablespaces.is_empty() => listed("pg_tblspc".to_string()),
            Level::Tablespaces => {
                for ts in &self.tablespaces {
                    listed(ts.oid.to_string());
                }
            }
            _ => {}
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.stack.push(Frame {
            rel,
            level,
            entries: entries.into_iter(),
        });
        Ok(())
    }
}

impl Iterator for LocalWalk {
    type Item = io::Result<LocalEntry>;

    fn next(&mut self) -> Option<io::Result<LocalEntry>> {
        loop {
            let frame = self.stack.last_mut()?;
            let Some((name, abs)) = frame.entries.next() else {
                self.stack.pop();
                continue;
            };
            let level = frame.level;
            let rel = if frame.rel.is_empty() {
                name.clone()
            } else {
                format!("{}/{name}", frame.rel)
            };
            let planned = (level == Level::Tablespaces)
                .then(|| {
                    self.tablespaces
                        .iter()
                        .find(|t| t.oid.to_string() == name)
                        .map(|t| PathBuf::from(&t.location))
                })
                .flatten();
            let kind = match &abs {
                None => None,
                Some(abs) => match fs::symlink_metadata(abs) {
                    Ok(m) => Some(LocalKind::of(&m)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Some(Err(e)),
                },
            };
            // What is listed inside it comes after it.
            let inside = if let Some(location) = &planned {
                Some((Some(location.clone()), Level::Location))
            } else if level == Level::Top && name == "pg_tblspc" {
                // Listed even when missing or not a directory: the
                // planned locations may hold what must go.
                let dir = abs.clone().filter(|_| kind == Some(LocalKind::Dir));
                Some((dir, Level::Tablespaces))
            } else if kind == Some(LocalKind::Dir) {
                Some((abs.clone(), Level::Inner))
            } else {
                None
            };
            if let Some((dir, inner_level)) = inside {
                if let Err(e) = self.enter(rel.clone(), dir.as_deref(), inner_level) {
                    return Some(Err(e));
                }
            }
            if let (Some(kind), Some(abs)) = (kind, abs) {
                return Some(Ok(LocalEntry { rel, abs, kind }));
            }
        }
    }
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
            ("PG_VERSION", 3),
            ("base/1/100", 8192),
            ("base/1/200", 8192),
            ("base/1/300", 100),
            ("base/1/400", 10),
            ("global/pg_control", 8192),
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
            abs: PathBuf::from("/x").join(rel),
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
            abs: PathBuf::from("/x").join(rel),
            kind: LocalKind::Dir,
        }
    }

    /// Both passes over a directory held in memory: what the first
    /// removes, then each file's action against what is left.
    fn plan(
        m: &BackupManifest,
        local: &[LocalEntry],
        force: bool,
    ) -> (Vec<String>, Vec<(String, FileAction)>) {
        let mut sorted: Vec<LocalEntry> = local.to_vec();
        sorted.sort_by(|a, b| path_cmp(&a.rel, &b.rel));
        let mut files: Vec<&FileEntry> = m.files.iter().collect();
        files.sort_by(|a, b| path_cmp(&a.path, &b.path));
        let removed: Vec<String> = Removals::new(
            m,
            sorted.iter().cloned().map(Ok::<_, ()>),
            files.iter().map(|f| Ok(f.path.clone())),
        )
        .map(|e| e.unwrap().rel)
        .collect();
        let gone = |rel: &str| {
            removed.iter().any(|r| {
                rel == r || (rel.starts_with(r.as_str()) && rel.as_bytes()[r.len()] == b'/')
            })
        };
        let actions = files
            .iter()
            .map(|f| {
                let here = sorted
                    .iter()
                    .find(|l| l.rel == f.path && !gone(&l.rel))
                    .map(|l| &l.kind);
                (f.path.clone(), plan_file(f, here, force, trust_before(m)))
            })
            .collect();
        (removed, actions)
    }

    fn with(actions: &[(String, FileAction)], want: FileAction) -> Vec<&str> {
        actions
            .iter()
            .filter(|(_, a)| *a == want)
            .map(|(p, _)| p.as_str())
            .collect()
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
            file("pg_tblspc", 1, 1, 0), // a file where a directory goes
        ];
        let (removed, actions) = plan(&manifest(), &local, false);
        assert_eq!(
            removed,
            [
                "base/1/400",
                "base/1/999",
                "base/5",
                "pg_tblspc",
                "pg_wal/000000010000000000000005",
                "postmaster.pid",
                "recovery.signal"
            ]
        );
        assert_eq!(with(&actions, FileAction::Keep), ["base/1/100"]);
        assert_eq!(with(&actions, FileAction::Check), ["base/1/200"]);
        assert_eq!(
            with(&actions, FileAction::Write { clear: true }),
            ["base/1/300", "global/pg_control"]
        );
        assert_eq!(
            with(&actions, FileAction::Write { clear: false }),
            ["PG_VERSION", "base/1/400"]
        );
        // A file with a block map is compared block by block even when
        // its size differs.
        let mut m = manifest();
        m.files[3].map = Some(crate::repo::manifest::ObjectRef {
            object: "backup/20260101T000000Z/files/3.map".into(),
            raw_size: 0,
            checksum: Default::default(),
        });
        let (_, actions) = plan(&m, &local, false);
        assert_eq!(
            with(&actions, FileAction::Check),
            ["base/1/200", "base/1/300"]
        );
        // Forced checksums: nothing is kept unread.
        let (_, actions) = plan(&manifest(), &local, true);
        assert!(with(&actions, FileAction::Keep).is_empty());
        assert_eq!(
            with(&actions, FileAction::Check),
            ["base/1/100", "base/1/200"]
        );
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
                abs: "/x/base/1/200".into(),
                kind: LocalKind::File {
                    size: 8192,
                    mtime: 1000,
                    mtime_nsec: 0,
                    links: 2,
                },
            },
        ];
        let (removed, actions) = plan(&m, &local, false);
        assert!(removed.is_empty(), "{removed:?}");
        assert_eq!(with(&actions, FileAction::Check), ["base/1/100"]);
        assert!(with(&actions, FileAction::Write { clear: true }).contains(&"base/1/200"));
    }

    #[test]
    fn an_empty_directory_gets_everything() {
        let (removed, actions) = plan(&manifest(), &[], false);
        assert!(removed.is_empty());
        assert_eq!(with(&actions, FileAction::Write { clear: false }).len(), 6);
    }

    /// The walk's order is the file list's, so the merge meets every
    /// path: names that sort differently as strings and as paths
    /// (`a.b` and `a/b`), tablespaces at their planned location (another
    /// cluster's directory there never listed), and a planned tablespace
    /// whose link is missing.
    #[test]
    fn the_walk_lists_in_path_order_and_tablespaces_where_planned() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        for d in ["a", "a/b", "a.b", "pg_tblspc", "z"] {
            fs::create_dir_all(pgdata.join(d)).unwrap();
        }
        for f in ["a/b/1", "a/c", "a.b/2", "a-", "z/9"] {
            fs::write(pgdata.join(f), b"x").unwrap();
        }
        // Link 1 points elsewhere: the planned location is listed instead.
        let old = tmp.path().join("old");
        fs::create_dir_all(old.join("PG_15_1/5")).unwrap();
        std::os::unix::fs::symlink(&old, pgdata.join("pg_tblspc/1")).unwrap();
        let ts1 = tmp.path().join("ts1");
        fs::create_dir_all(ts1.join("PG_15_1/7")).unwrap();
        fs::write(ts1.join("PG_15_1/7/70"), b"x").unwrap();
        fs::create_dir_all(ts1.join("PG_14_1/7")).unwrap();
        // Tablespace 2 has no link yet.
        let ts2 = tmp.path().join("ts2");
        fs::create_dir_all(ts2.join("PG_15_1")).unwrap();
        fs::write(ts2.join("PG_15_1/stale"), b"x").unwrap();
        let tablespaces = [
            TablespaceEntry {
                oid: 1,
                location: ts1.display().to_string(),
            },
            TablespaceEntry {
                oid: 2,
                location: ts2.display().to_string(),
            },
        ];
        let walked: Vec<(String, bool)> = LocalWalk::new(&pgdata, &tablespaces, 15)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.rel, e.kind == LocalKind::Dir)
            })
            .collect();
        let rels: Vec<&str> = walked.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            rels,
            [
                "a",
                "a/b",
                "a/b/1",
                "a/c",
                "a-",
                "a.b",
                "a.b/2",
                "pg_tblspc",
                "pg_tblspc/1",
                "pg_tblspc/1/PG_15_1",
                "pg_tblspc/1/PG_15_1/7",
                "pg_tblspc/1/PG_15_1/7/70",
                "pg_tblspc/2/PG_15_1",
                "pg_tblspc/2/PG_15_1/stale",
                "z",
                "z/9"
            ]
        );
        let mut sorted = rels.clone();
        sorted.sort_by(|a, b| path_cmp(a, b));
        assert_eq!(rels, sorted);
    }
}
