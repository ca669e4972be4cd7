//! A backup's file list as its own object (manifest version 3), so that
//! no writer or reader holds a whole list in memory, whatever the number
//! of files.
//!
//! The object `backup/<label>/filelist` holds one JSON [`FileEntry`] per
//! line, in [`path_cmp`] order (the order a depth-first walk of the data
//! directory meets the files), inside the usual object envelope. The
//! manifest names it with its size and checksum and records the number of
//! entries.
//!
//! Writers append entries to a local temporary file and store it whole at
//! the end. Readers spool the object to a local temporary file first, so
//! its checksum is checked before any entry is used, and then read it as
//! often as they need, one entry at a time. Version-1 and version-2
//! manifests carry their list inline; [`FileList`] reads both the same way.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::sync::Arc;

use super::manifest::{path_cmp, BackupManifest, FileEntry, ObjectRef, PathCheck};
use super::object::{self, CompressSettings};
use super::{RepoError, Repository};
use crate::storage::{Key, PutMode};

/// The file list object of a backup.
pub fn file_list_key(label: &str) -> Key {
    Key::new(format!("backup/{label}/filelist")).expect("labels make valid keys")
}

/// Collects a new backup's entries in [`path_cmp`] order.
pub struct FileListWriter {
    out: BufWriter<tempfile::NamedTempFile>,
    count: u64,
    previous: Option<String>,
}

impl FileListWriter {
    pub fn new() -> io::Result<FileListWriter> {
        Ok(FileListWriter {
            out: BufWriter::new(tempfile::NamedTempFile::new()?),
            count: 0,
            previous: None,
        })
    }

    /// Appends the next entry; refuses one out of order.
    pub fn push(&mut self, entry: &FileEntry) -> io::Result<()> {
        if let Some(previous) = &self.previous {
            if path_cmp(previous, &entry.path) != std::cmp::Ordering::Less {
                return Err(io::Error::other(format!(
                    "file list entry {:?} does not come after {previous:?}",
                    entry.path
                )));
            }
        }
        serde_json::to_writer(&mut self.out, entry).map_err(io::Error::other)?;
        self.out.write_all(b"\n")?;
        self.count += 1;
        self.previous = Some(entry.path.clone());
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores the list as `backup/<label>/filelist` (create-only, made
    /// durable with the backup's other objects by `sync_batched`).
    pub async fn store(
        self,
        repo: &Repository,
        label: &str,
        compress: CompressSettings,
    ) -> Result<(ObjectRef, u64, u64), RepoError> {
        let count = self.count;
        let spool = self
            .out
            .into_inner()
            .map_err(|e| spool_error(e.into_error()))?;
        let key = file_list_key(label);
        let mut src = tokio::fs::File::open(spool.path())
            .await
            .map_err(spool_error)?;
        let info = object::write_object(
            repo.store(),
            &key,
            PutMode::CreateBatched,
            &mut src,
            compress,
        )
        .await?;
        Ok((
            ObjectRef {
                object: key.to_string(),
                raw_size: info.raw_size,
                checksum: info.checksum,
            },
            count,
            info.stored_size,
        ))
    }
}

fn spool_error(e: io::Error) -> RepoError {
    RepoError::Object(super::ObjectError::Source(io::Error::new(
        e.kind(),
        format!("local temporary file list: {e}"),
    )))
}

/// A backup's file list, ready to be read (more than once).
#[derive(Debug)]
pub struct FileList {
    header: Arc<BackupManifest>,
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// Versions 1 and 2, sorted into [`path_cmp`] order.
    Inline(Arc<Vec<FileEntry>>),
    /// Version 3: the checked object, decompressed into a temporary file.
    Spooled(tempfile::TempPath),
}

impl Repository {
    /// The file list of a backup whose whole manifest is `manifest`. A
    /// version-3 list is read and checked against the manifest's size and
    /// checksum before this returns.
    pub async fn file_list(&self, manifest: &BackupManifest) -> Result<FileList, RepoError> {
        let mut header = manifest.clone();
        let source = match &manifest.file_list {
            None => {
                let mut files = std::mem::take(&mut header.files);
                files.sort_by(|a, b| path_cmp(&a.path, &b.path));
                Source::Inline(Arc::new(files))
            }
            Some(list) => {
                let corrupt = |reason: String| RepoError::HeaderCorrupt {
                    key: list.object.clone(),
                    repo: self.describe(),
                    reason,
                };
                let key = Key::new(list.object.clone()).map_err(|e| corrupt(e.to_string()))?;
                if key != file_list_key(&manifest.label) {
                    return Err(corrupt(format!(
                        "the manifest of {} names {:?} as its file list",
                        manifest.label, list.object
                    )));
                }
                let spool = tempfile::NamedTempFile::new().map_err(spool_error)?;
                let (file, path) = spool.into_parts();
                let mut out = BufWriter::new(file);
                let info = object::read_object(self.store(), &key, &mut |piece: &[u8]| {
                    out.write_all(piece)
                })
                .await?;
                out.flush().map_err(spool_error)?;
                if info.raw_size != list.raw_size || info.checksum != list.checksum {
                    return Err(corrupt(format!(
                        "the object holds {} bytes with checksum {}, the manifest says {} bytes with {}",
                        info.raw_size, info.checksum, list.raw_size, list.checksum
                    )));
                }
                Source::Spooled(path)
            }
        };
        Ok(FileList {
            header: Arc::new(header),
            source,
        })
    }
}

impl FileList {
    /// A list held in memory (tests and version-1/2 manifests).
    pub fn inline(manifest: &BackupManifest) -> FileList {
        let mut header = manifest.clone();
        let mut files = std::mem::take(&mut header.files);
        files.sort_by(|a, b| path_cmp(&a.path, &b.path));
        FileList {
            header: Arc::new(header),
            source: Source::Inline(Arc::new(files)),
        }
    }

    /// How many entries the manifest says the list has.
    pub fn len(&self) -> u64 {
        match &self.source {
            Source::Inline(files) => files.len() as u64,
            Source::Spooled(_) => self.header.file_count.unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries in [`path_cmp`] order, each checked as
    /// [`BackupManifest::check_paths`] checks them; an error ends the
    /// iteration. The header's own checks come first.
    pub fn iter(&self) -> FileIter {
        let check = self.header.check_header();
        let inner = match (&self.source, &check) {
            (_, Err(_)) => Inner::Done,
            (Source::Inline(files), _) => Inner::Inline(files.clone(), 0),
            (Source::Spooled(path), _) => match std::fs::File::open(path) {
                Ok(f) => Inner::Spooled(BufReader::new(f), String::new()),
                Err(e) => Inner::Failed(format!("read the local copy of the file list: {e}")),
            },
        };
        let (check, failed) = match check {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e)),
        };
        FileIter {
            header: self.header.clone(),
            check,
            inner: match failed {
                Some(e) => Inner::Failed(e),
                None => inner,
            },
            seen: 0,
        }
    }
}

enum Inner {
    Inline(Arc<Vec<FileEntry>>, usize),
    Spooled(BufReader<std::fs::File>, String),
    Failed(String),
    Done,
}

/// Entries of a [`FileList`], one at a time.
pub struct FileIter {
    header: Arc<BackupManifest>,
    check: Option<PathCheck>,
    inner: Inner,
    seen: u64,
}

impl FileIter {
    fn next_raw(&mut self) -> Option<Result<FileEntry, String>> {
        match &mut self.inner {
            Inner::Done => None,
            Inner::Failed(e) => {
                let e = std::mem::take(e);
                self.inner = Inner::Done;
                Some(Err(e))
            }
            Inner::Inline(files, i) => {
                let entry = files.get(*i).cloned();
                *i += 1;
                entry.map(Ok)
            }
            Inner::Spooled(reader, line) => {
                line.clear();
                match reader.read_line(line) {
                    Ok(0) => {
                        let expected = self.header.file_count.unwrap_or(0);
                        if self.seen != expected {
                            return Some(Err(format!(
                                "the file list has {} entries, the manifest says {expected}",
                                self.seen
                            )));
                        }
                        None
                    }
                    Ok(_) => Some(serde_json::from_str(line).map_err(|e| {
                        format!("file list entry {} is not valid: {e}", self.seen + 1)
                    })),
                    Err(e) => Some(Err(format!("read the local copy of the file list: {e}"))),
                }
            }
        }
    }
}

impl Iterator for FileIter {
    type Item = Result<FileEntry, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_raw()?;
        let checked = item.and_then(|entry| {
            self.seen += 1;
            match &mut self.check {
                Some(check) => check.check_file(&self.header, &entry).map(|()| entry),
                None => Ok(entry),
            }
        });
        if checked.is_err() {
            self.inner = Inner::Done;
        }
        Some(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::{test_manifest, MANIFEST_VERSION};
    use crate::storage::memory::MemoryStore;
    use crate::stream::Checksum;
    use crate::wal::{Lsn, TimelineId, WalSegmentSize};

    const LABEL: &str = "20260101T000000Z";

    fn entry(path: &str, n: usize) -> FileEntry {
        FileEntry {
            path: path.to_string(),
            size: n as u64,
            checksum: Checksum([n as u8; 32]),
            mode: 0o600,
            mtime: 0,
            object: format!("backup/{LABEL}/files/{n:06}"),
            stored_size: 0,
            base: None,
            deltas: Vec::new(),
            map: None,
        }
    }

    fn manifest() -> BackupManifest {
        test_manifest(
            LABEL,
            TimelineId(1),
            Lsn(0x1000000),
            Lsn(0x2000000),
            WalSegmentSize::DEFAULT,
            "2026-01-01T00:00:00Z",
        )
    }

    fn repo() -> Repository {
        Repository::new(Arc::new(MemoryStore::new()), CompressSettings::default())
    }

    #[test]
    fn path_order_is_depth_first() {
        let mut paths = vec!["a.b", "a/b", "a", "a/b/c", "ab", "a-b/x"];
        paths.sort_by(|a, b| path_cmp(a, b));
        assert_eq!(paths, ["a", "a/b", "a/b/c", "a-b/x", "a.b", "ab"]);
    }

    #[tokio::test]
    async fn a_stored_list_reads_back_entry_by_entry() {
        let repo = repo();
        let paths = [
            "PG_VERSION",
            "base/1/1259",
            "base/1/1259_fsm",
            "base/1.x",
            "global/pg_control",
        ];
        let mut writer = FileListWriter::new().unwrap();
        for (n, p) in paths.iter().enumerate() {
            writer.push(&entry(p, n)).unwrap();
        }
        let (list_ref, count, _) = writer
            .store(&repo, LABEL, CompressSettings::default())
            .await
            .unwrap();
        assert_eq!(count, 5);
        let mut m = manifest();
        m.manifest_version = MANIFEST_VERSION;
        m.file_list = Some(list_ref);
        m.file_count = Some(count);
        let list = repo.file_list(&m).await.unwrap();
        assert_eq!(list.len(), 5);
        for _ in 0..2 {
            let read: Vec<FileEntry> = list.iter().collect::<Result<_, _>>().unwrap();
            let expected: Vec<FileEntry> =
                paths.iter().enumerate().map(|(n, p)| entry(p, n)).collect();
            assert_eq!(read, expected, "read as often as needed");
        }
        // A count that disagrees is an error at the end.
        m.file_count = Some(6);
        let list = repo.file_list(&m).await.unwrap();
        let err = list.iter().collect::<Result<Vec<_>, _>>().unwrap_err();
        assert_eq!(err, "the file list has 5 entries, the manifest says 6");
        // A checksum that disagrees is refused before any entry is read.
        let mut other = m.clone();
        other.file_list.as_mut().unwrap().checksum = Checksum([7; 32]);
        let err = repo.file_list(&other).await.unwrap_err().to_string();
        assert!(err.contains("the manifest says"), "{err}");
    }

    #[test]
    fn the_writer_refuses_disorder_and_repeats() {
        let mut writer = FileListWriter::new().unwrap();
        writer.push(&entry("a/b", 0)).unwrap();
        assert!(writer.push(&entry("a.b", 1)).is_ok());
        assert!(writer.push(&entry("a.b", 2)).is_err(), "a path twice");
        assert!(writer.push(&entry("a/c", 3)).is_err(), "out of order");
        assert_eq!(writer.len(), 2);
    }

    #[tokio::test]
    async fn hostile_entries_stop_the_iteration() {
        let repo = repo();
        let mut m = manifest();
        // Written by hand: the writer itself refuses disorder.
        let lines = [entry("base/2", 1), entry("base/1", 0), entry("base/3", 2)]
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect::<String>();
        let key = file_list_key(LABEL);
        let info = object::write_object(
            repo.store(),
            &key,
            PutMode::Create,
            &mut lines.as_bytes(),
            CompressSettings::default(),
        )
        .await
        .unwrap();
        m.file_list = Some(ObjectRef {
            object: key.to_string(),
            raw_size: info.raw_size,
            checksum: info.checksum,
        });
        m.file_count = Some(3);
        m.manifest_version = MANIFEST_VERSION;
        let list = repo.file_list(&m).await.unwrap();
        let read: Vec<_> = list.iter().collect();
        assert_eq!(read.len(), 2, "nothing after the error");
        assert!(read[1].as_ref().unwrap_err().contains("out of order"));
        // Inline lists are sorted first; a traversal is still refused.
        let mut m = manifest();
        m.files = vec![entry("base/1", 0), entry("../etc/passwd", 1)];
        let errors: Vec<_> = FileList::inline(&m)
            .iter()
            .filter_map(Result::err)
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
