//! The local-directory backend, the embedded default.
//!
//! A put writes a temporary file (`.<name>.<pid>.<n>.tmp`) beside its final
//! name, fsyncs it, then renames it into place (or hard-links it for a
//! create-only put, which fails atomically when the name exists), and fsyncs
//! the directory: a crash never leaves a partial object under its final
//! name. Keys map to paths one to one; names starting with `.` are never keys,
//! so temporary files never show in listings.
//!
//! File I/O here is plain blocking I/O: a single write of a 1 MiB chunk to
//! the page cache costs less than handing it to another thread. Callers that
//! want parallelism run their pipelines on blocking threads.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Key, ObjectMeta, ObjectReader, ObjectStore, ObjectWriter, PutMode, Result, StorageError,
};

/// Files and directories are created readable by the owner only: WAL and
/// data files are as sensitive as the database.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Objects up to this size are read whole when opened.
const SMALL_OBJECT_BYTES: u64 = 256 << 10;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// When running as root: the owner of the repository directory, who
    /// gets every file and directory created (PostgreSQL's archive_command
    /// runs as that user and must read what `walvault backup` run as root
    /// wrote).
    owner: Option<(u32, u32)>,
    /// Directories this store has swept for abandoned temporary files:
    /// each once per process, so a backup writing thousands of objects
    /// into one directory does not read it thousands of times.
    swept: Arc<Mutex<HashSet<PathBuf>>>,
}

impl LocalStore {
    /// Whether a directory holds at least one object (a file whose name is
    /// not a temporary one), at any depth.
    fn holds_objects(dir: &Path) -> bool {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                match entry.file_type() {
                    Ok(t) if t.is_dir() => stack.push(entry.path()),
                    Ok(t) if t.is_file() && !hidden => return true,
                    _ => {}
                }
            }
        }
        false
    }

    /// A store rooted at `root`. Nothing is created: a missing root is an
    /// error at the first put or list (an unmounted mount point must never
    /// quietly become a new repository); only [`ObjectStore::create_root`],
    /// called by `walvault init`, creates it.
    pub fn new(root: impl Into<PathBuf>) -> Result<LocalStore> {
        let root = root.into();
        if !root.is_absolute() {
            return Err(StorageError::Config(format!(
                "local repository path \"{}\" is not absolute\nHINT: name the repository with an absolute path, e.g. /var/lib/walvault",
                root.display()
            )));
        }
        // SAFETY: geteuid has no preconditions.
        let owner = if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&root)
                .ok()
                .map(|m| (m.uid(), m.gid()))
                .filter(|(uid, _)| *uid != 0)
        } else {
            None
        };
        Ok(LocalStore {
            root,
            owner,
            swept: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// Fails unless the root directory exists.
    fn check_root(&self) -> Result<()> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(StorageError::Config(format!(
                "local repository \"{}\" is not a directory",
                self.root.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::Config(format!(
                "local repository directory \"{}\" does not exist\nHINT: mount the file system that holds it, or create the repository with walvault init",
                self.root.display()
            ))),
            Err(source) => Err(StorageError::Io {
                op: "stat repository directory",
                key: self.root.display().to_string(),
                source,
            }),
        }
    }

    /// Creates the directories of `dir` below the root, never the root.
    fn create_dirs_below_root(&self, dir: &Path, key: &Key) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        self.check_root()?;
        create_dirs_durably(dir, self.owner).map_err(|e| io_err("create directory for", key, e))
    }
}

fn io_err(op: &'static str, key: &Key, source: io::Error) -> StorageError {
    if source.kind() == io::ErrorKind::NotFound && matches!(op, "open" | "stat" | "read") {
        return StorageError::NotFound { key: key.clone() };
    }
    StorageError::Io {
        op,
        key: key.to_string(),
        source,
    }
}

/// Fsyncs a directory so that entries created or renamed in it survive a
/// crash.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents with mode 0700 (owned by `owner`
/// when given), fsyncing each parent whose entries changed.
pub(crate) fn create_dirs_durably(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs_durably(parent, owner)?;
    }
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Atomically replaces or creates `dest` with `tmp` (already fsynced when
/// `sync`). With `create_only`, an existing `dest` is left alone and
/// `ErrorKind::AlreadyExists` is returned (a hard link fails atomically
/// when the name is taken). With `sync`, the directory is fsynced
/// afterwards; without, a later `syncfs` makes the name durable.
fn place(tmp: &Path, dest: &Path, create_only: bool, sync: bool) -> io::Result<()> {
    if create_only {
        let linked = fs::hard_link(tmp, dest);
        let _ = fs::remove_file(tmp);
        linked?;
    } else if let Err(e) = fs::rename(tmp, dest) {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    if sync {
        if let Some(dir) = dest.parent() {
            fsync_dir(dir)?;
        }
    }
    Ok(())
}

/// A temporary file left this long by a writer whose lock is gone is
/// abandoned. The age guards the moment between creating a temporary file
/// and locking it.
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Takes an exclusive `flock` on an open file, without waiting. The kernel
/// drops it when the process dies, however it dies (`kill -9` included),
/// which is what tells a live writer's temporary file from a leftover.
pub(crate) fn lock_exclusive(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a valid descriptor owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether a directory entry is one of walvault's temporary files: the
/// store's `.<name>.<pid>.<n>.tmp` or fetch's `.<name>.walvault-<pid>.tmp`.
fn is_temp_name(name: &str) -> bool {
    let Some(stem) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    if let Some((_, pid)) = stem.rsplit_once(".walvault-") {
        return !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    }
    let mut parts = stem.rsplitn(3, '.');
    let numeric =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    numeric(parts.next()) && numeric(parts.next()) && parts.next().is_some_and(|n| !n.is_empty())
}

/// Removes walvault temporary files in `dir` whose writer is gone (no lock
/// held on them) and that are older than `min_age`. Never touches a file
/// a live writer holds. Returns how many it removed; errors are ignored
/// (a leftover is retried on a later call).
pub fn sweep_abandoned_temps(dir: &Path, min_age: std::time::Duration) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_temp_name(name) {
            continue;
        }
        let path = entry.path();
        let old_enough = fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if !old_enough {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if lock_exclusive(&file).is_ok() && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Walks `root` and sweeps every directory ([`sweep_abandoned_temps`]),
/// then removes directories under `backup/` left empty (a backup killed
/// before its first object was complete). Returns the files removed.
fn sweep_tree(root: &Path, min_age: std::time::Duration) -> usize {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(dir) = stack.pop() {
        removed += sweep_abandoned_temps(&dir, min_age);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                    dirs.push(entry.path());
                }
            }
        }
    }
    // Deepest first; rmdir refuses a directory that is not empty.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    let backup = root.join("backup");
    for dir in dirs {
        if dir.starts_with(&backup) && dir != backup {
            let _ = fs::remove_dir(&dir);
        }
    }
    removed
}

/// A temporary name beside `dest`, starting with `.` so it is never a key.
pub(crate) fn temp_path_for(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    #[test]
    fn only_walvault_temporary_names_are_swept() {
        for name in [
            ".000000010000000000000001.4242.0.tmp",
            ".manifest.1.17.tmp",
            ".RECOVERYXLOG.walvault-4242.tmp",
        ] {
            assert!(is_temp_name(name), "{name}");
        }
        for name in [
            "000000010000000000000001",
            ".hidden",
            ".x.tmp",
            ".a.b.tmp",
            ".1.2.tmp",
            "xlogtemp.123",
            ".other-tool.tmp",
        ] {
            assert!(!is_temp_name(name), "{name}");
        }
    }

    /// A backup deletes an empty delta while it writes other objects into
    /// the same directory: the delete may remove the directory, even one
    /// a put has just made; the put makes it again.
    /// A commit whose future is dropped before its blocking work runs
    /// places nothing and leaves no temporary file: a given-up overwrite
    /// never lands after a later one. The runtime's one blocking thread is
    /// kept busy until the commit future is gone, so the order is certain.
    #[test]
    fn a_commit_given_up_places_nothing() {
        use crate::storage::ObjectStore;
        use futures_util::FutureExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        runtime.block_on(async {
            let store = LocalStore::new(dir.path().to_path_buf()).unwrap();
            let key = Key::new("wal/x").unwrap();
            store
                .put_bytes(
                    &key,
                    bytes::Bytes::from_static(b"first"),
                    PutMode::Overwrite,
                )
                .await
                .unwrap();
            let mut writer = store.put(&key, PutMode::Overwrite).await.unwrap();
            writer
                .write(bytes::Bytes::from_static(b"given up"))
                .await
                .unwrap();
            let (release, wait) = std::sync::mpsc::channel::<()>();
            let blocker = tokio::task::spawn_blocking(move || wait.recv());
            // One poll starts the commit's blocking work (queued behind the
            // blocker); dropping the future gives the commit up.
            assert!(writer.commit().now_or_never().is_none());
            release.send(()).unwrap();
            blocker.await.unwrap().unwrap();
            // Let the queued work run, then look.
            tokio::task::spawn_blocking(|| ()).await.unwrap();
            assert_eq!(std::fs::read(dir.path().join("wal/x")).unwrap(), b"first");
            let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("wal"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n != "x")
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn puts_survive_deletes_emptying_their_directory() {
        use crate::storage::ObjectStore;
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::new(dir.path().to_path_buf()).unwrap());
        let churn = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..400 {
                    let k = Key::new(format!("b/files/gone{i}")).unwrap();
                    store
                        .put_bytes(
                            &k,
                            bytes::Bytes::from_static(b"x"),
                            crate::storage::PutMode::Create,
                        )
                        .await
                        .unwrap();
                    store.delete(&k).await.unwrap();
                }
            })
        };
        for i in 0..400 {
            let k = Key::new(format!("b/files/kept{i}")).unwrap();
            store
                .put_bytes(
                    &k,
                    bytes::Bytes::from_static(b"y"),
                    crate::storage::PutMode::Create,
                )
                .await
                .unwrap_or_else(|e| panic!("put {i} failed beside deletes: {e}"));
            store.delete(&k).await.unwrap();
        }
        churn.await.unwrap();
    }

    #[test]
    fn a_locked_temporary_file_is_never_swept_and_an_abandoned_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join(".a.1.1.tmp");
        let dead = dir.path().join(".a.2.1.tmp");
        let young = dir.path().join(".a.3.1.tmp");
        let held = File::create(&live).unwrap();
        lock_exclusive(&held).unwrap();
        drop(File::create(&dead).unwrap());
        drop(File::create(&young).unwrap());
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in [&live, &dead] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert_eq!(sweep_abandoned_temps(dir.path(), ABANDONED_AFTER), 1);
        assert!(live.exists(), "a live writer's file stays");
        assert!(!dead.exists(), "an abandoned file goes");
        assert!(young.exists(), "a file too young to judge stays");
        drop(held);
        assert_eq!(sweep_abandoned_temps(dir.path(), ABANDONED_AFTER), 1);
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn get(&self, key: &Key) -> Result<ObjectReader> {
        // Opened here: an open (or a miss, the common answer for `.history`
        // files) costs less than handing it to the blocking pool, whose
        // first use starts a thread.
        let mut file = File::open(self.path(key)).map_err(|e| io_err("open", key, e))?;
        let len = file.metadata().map_err(|e| io_err("stat", key, e))?.len();
        if len <= SMALL_OBJECT_BYTES {
            // A small object (the repository header, a history file, a
            // summary) is read whole at once, not in a series of growing
            // reads each on the blocking pool.
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf)
                .map_err(|e| io_err("read", key, e))?;
            return Ok(Box::pin(std::io::Cursor::new(buf)));
        }
        Ok(Box::pin(tokio::fs::File::from_std(file)))
    }

    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        let mut file = File::open(self.path(key)).map_err(|e| io_err("open", key, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err("read", key, e))?;
        let mut buf = Vec::with_capacity(len.min(16 << 20) as usize);
        file.take(len)
            .read_to_end(&mut buf)
            .map_err(|e| io_err("read", key, e))?;
        Ok(Bytes::from(buf))
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        let meta = fs::metadata(self.path(key)).map_err(|e| io_err("stat", key, e))?;
        if !meta.is_file() {
            return Err(StorageError::NotFound { key: key.clone() });
        }
        Ok(object_meta(key.clone(), &meta))
    }

    async fn put(&self, key: &Key, mode: PutMode) -> Result<Box<dyn ObjectWriter>> {
        let dest = self.path(key);
        let mut tmp = temp_path_for(&dest);
        use std::os::unix::fs::OpenOptionsExt;
        let open = |tmp: &Path| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(tmp)
        };
        // A killed writer whose pid this process now has may have left
        // this very name: take the next one.
        let mut tries = 0;
        while tmp.exists() && tries < 16 {
            tmp = temp_path_for(&dest);
            tries += 1;
        }
        // A concurrent delete removes a directory as it empties, even one
        // just made (a backup deletes a delta it replaces while other
        // files are written): make it again, a few times at most.
        let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
        let mut attempts = 0;
        let file = loop {
            attempts += 1;
            if let Some(dir) = dest.parent() {
                match self.create_dirs_below_root(dir, key) {
                    Err(StorageError::Io { source, .. }) if gone(&source) && attempts < 16 => {
                        continue
                    }
                    other => other?,
                }
            }
            match open(&tmp) {
                Err(e) if gone(&e) && attempts < 16 => continue,
                other => break other,
            }
        }
        .map_err(|e| io_err("create", key, e))?;
        // Held until the writer is gone: a temporary file nobody holds a
        // lock on belongs to a writer that died, and a later call removes it.
        lock_exclusive(&file).map_err(|e| io_err("lock", key, e))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| io_err("chown", key, e))?;
        }
        if let Some(dir) = dest.parent() {
            let first = self
                .swept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(dir.to_path_buf());
            if first {
                sweep_abandoned_temps(dir, ABANDONED_AFTER);
            }
        }
        Ok(Box::new(LocalWriter {
            key: key.clone(),
            file: Some(file),
            tmp,
            dest,
            mode,
            written: 0,
            writeback_from: 0,
        }))
    }

    async fn list(&self, prefix: Option<&str>) -> Result<Vec<ObjectMeta>> {
        super::list_sorted(self, prefix).await
    }

    async fn list_each(
        &self,
        prefix: &str,
        each: &mut (dyn FnMut(ObjectMeta) + Send),
    ) -> Result<()> {
        self.check_root()?;
        // Walk only below the deepest directory the prefix names.
        let start_rel = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = self.root.join(start_rel);
        walk(&start, start_rel, prefix, each).map_err(|source| StorageError::Io {
            op: "list",
            key: prefix.to_string(),
            source,
        })
    }

    async fn sync_batched(&self) -> Result<()> {
        self.check_root()?;
        let dir = File::open(&self.root).map_err(|e| io_err("sync", &Key(String::new()), e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs on a valid, open descriptor.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io_err(
                "sync",
                &Key(String::new()),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.check_root()?;
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &Key(prefix.to_string()), e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &Key(prefix.to_string()), e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Only what could be a key segment; temporary files start with `.`.
            if name.starts_with('.') || Key::new(format!("{prefix}{name}")).is_err() {
                continue;
            }
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && Self::holds_objects(&entry.path()) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("delete", key, e)),
        }
        // Directories left empty go too (rmdir refuses a non-empty one), so
        // an expired backup leaves nothing behind.
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("local \"{}\"", self.root.display())
    }

    /// Locally the lock on each temporary file tells a dead writer from a
    /// live one, so `min_age` is not needed beyond [`ABANDONED_AFTER`].
    async fn remove_abandoned(
        &self,
        _min_age: std::time::Duration,
        _key_prefixes: &[&str],
    ) -> Result<usize> {
        self.check_root()?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sweep_tree(&root, ABANDONED_AFTER))
            .await
            .map_err(|e| StorageError::Io {
                op: "sweep temporary files",
                key: self.root.display().to_string(),
                source: io::Error::other(e),
            })
    }

    async fn create_root(&self) -> Result<()> {
        create_dirs_durably(&self.root, None).map_err(|source| StorageError::Io {
            op: "create repository directory",
            key: self.root.display().to_string(),
            source,
        })
    }
}

fn object_meta(key: Key, meta: &fs::Metadata) -> ObjectMeta {
    let modified_unix_secs = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    ObjectMeta {
        key,
        size_bytes: meta.len(),
        modified_unix_secs,
    }
}

fn walk(
    dir: &Path,
    rel: &str,
    prefix: &str,
    out: &mut (dyn FnMut(ObjectMeta) + Send),
) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let child_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            // Descend only where the prefix can still match.
            if child_rel.starts_with(prefix) || prefix.starts_with(&format!("{child_rel}/")) {
                walk(&entry.path(), &child_rel, prefix, out)?;
            }
        } else if file_type.is_file() && child_rel.starts_with(prefix) {
            if let Ok(key) = Key::new(child_rel) {
                match entry.metadata() {
                    Ok(meta) => out(object_meta(key, &meta)),
                    // Deleted between readdir and stat: it is gone, skip it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Raises a flag when dropped before `disarm`: a future dropped while it
/// waits leaves word for the blocking work it started.
struct CancelOnDrop(Option<std::sync::Arc<std::sync::atomic::AtomicBool>>);

impl CancelOnDrop {
    fn new() -> CancelOnDrop {
        CancelOnDrop(Some(Default::default()))
    }

    fn flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.0.clone().expect("armed")
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

struct LocalWriter {
    key: Key,
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    mode: PutMode,
    /// Bytes written, and how many of them the disk was asked to start
    /// writing back (see [`WRITEBACK_EVERY`]).
    written: u64,
    writeback_from: u64,
}

/// A writer asks the kernel to start writing back every this many bytes
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, as PostgreSQL's
/// `*_flush_after` settings do), so the fsync at commit finds most of the
/// object on disk already instead of all of it in the page cache. A hint
/// only: durability is still the fsync's.
const WRITEBACK_EVERY: u64 = 1 << 20;

/// Starts writeback of `len` bytes at `offset` without waiting for it.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range on a valid descriptor owned by `file`;
        // it reads no memory of ours.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let key = &self.key;
        let file = self.file.as_mut().ok_or_else(|| StorageError::Io {
            op: "write",
            key: key.to_string(),
            source: io::Error::other("writer already finished"),
        })?;
        file.write_all(&chunk)
            .map_err(|e| io_err("write", key, e))?;
        self.written += chunk.len() as u64;
        if self.written - self.writeback_from >= WRITEBACK_EVERY {
            start_writeback(
                file,
                self.writeback_from,
                self.written - self.writeback_from,
            );
            self.writeback_from = self.written;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Err(io_err(
                "commit",
                &self.key,
                io::Error::other("writer already finished"),
            ));
        };
        // A batched put is made durable by the store's sync_batched (one
        // syncfs for all of them) instead of two fsyncs each.
        let sync = self.mode != PutMode::CreateBatched;
        let create_only = self.mode.is_create();
        let (tmp, dest) = (self.tmp.clone(), self.dest.clone());
        // The fsyncs wait on the disk: on the blocking pool, so that the
        // runtime's threads go on compressing other objects meanwhile.
        // A commit given up (its future dropped) before the file is placed
        // does not place it: an overwrite must not land after a later one.
        let cancelled = CancelOnDrop::new();
        let given_up = cancelled.flag();
        let placed = tokio::task::spawn_blocking(move || {
            if sync {
                file.sync_all().map_err(|e| ("fsync", e))?;
            }
            if given_up.load(std::sync::atomic::Ordering::SeqCst) {
                drop(file);
                let _ = fs::remove_file(&tmp);
                return Err(("commit", io::Error::other("the commit was cancelled")));
            }
            // The file (and its lock) stays open until it is in place, so
            // no sweep takes it for a leftover meanwhile.
            let renamed = place(&tmp, &dest, create_only, sync);
            drop(file);
            renamed.map_err(|e| ("rename into place", e))
        })
        .await
        .unwrap_or_else(|e| Err(("commit", io::Error::other(e))));
        cancelled.disarm();
        match placed {
            Ok(()) => Ok(()),
            Err((_, e)) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StorageError::AlreadyExists {
                    key: self.key.clone(),
                })
            }
            Err((op, e)) => {
                // A failed fsync leaves the temporary file, as before.
                Err(io_err(op, &self.key, e))
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
