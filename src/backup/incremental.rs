//! Differential and incremental backups: which backup to compare with
//! ([`plan_reference`], pure) and copying one file against it
//! ([`copy_file`]).
//!
//! A file is compared with the reference's entry for the same path:
//! - a file of at least [`MIN_MAP_BLOCKS`] blocks whose reference has a
//!   block map is read once, block by block; blocks whose hash differs
//!   from the map, or that lie beyond it, go into a block delta, and the
//!   entry is the reference's layers plus that delta;
//! - any other file is hashed first and, when its size and checksum equal
//!   the reference's, refers to the reference's object; otherwise it is
//!   copied whole (with a new block map when it is large enough).
//!
//! So an unchanged file is read but never stored, and a changed one costs
//! only its changed blocks. Sizes and times are never trusted alone.
//!
//! When the WAL since the reference's start names the changed blocks
//! ([`super::wal_changes`]), a relation's main-fork file is not read
//! whole: an unchanged one (no block named, same size) is not read at
//! all, and a changed one only at the blocks WAL names and those past the
//! reference's end ([`copy_from_wal`]). Its checksum is merged from the
//! block maps' chaining values (layout 3). Every other file, and any file
//! WAL marks whole (created or truncated), is compared as above.

use std::collections::BTreeSet;

use crate::repo::blocks::{self, BlockMap, BlockReader, MIN_MAP_BLOCKS};
use crate::repo::manifest::{BackupManifest, BackupType, FileEntry, ObjectRef};
use crate::repo::object::{read_object, write_object, write_object_unless, ObjectInfo};
use crate::repo::{layout, CompressSettings, ObjectError, Repository};
use crate::storage::{Key, PutMode};
use crate::stream::Hasher;
use crate::wal::records::{ChangedBlocks, FileChange};

use super::scan::ScannedFile;

/// What a backup is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferencePlan {
    /// The type the backup is taken as (full when there is nothing to
    /// compare with).
    pub backup_type: BackupType,
    /// The label of the backup compared with.
    pub reference: Option<String>,
    /// Why a requested diff or incr became full.
    pub note: Option<String>,
}

/// Chooses what a backup of `requested` type compares with, among the
/// complete backups (`complete`, in creation order, oldest first):
/// `diff` the newest full backup, `incr` the newest backup of any type.
/// A backup whose own dependencies are not all complete is never chosen.
/// With no full backup, the backup is full.
pub fn plan_reference(requested: BackupType, complete: &[&BackupManifest]) -> ReferencePlan {
    let labels: BTreeSet<&str> = complete.iter().map(|m| m.label.as_str()).collect();
    let usable = |m: &&&BackupManifest| m.depends_on.iter().all(|d| labels.contains(d.as_str()));
    let full = ReferencePlan {
        backup_type: BackupType::Full,
        reference: None,
        note: None,
    };
    if requested == BackupType::Full {
        return full;
    }
    let newest_full = complete
        .iter()
        .filter(usable)
        .rfind(|m| m.backup_type == BackupType::Full);
    let Some(newest_full) = newest_full else {
        return ReferencePlan {
            note: Some(format!(
                "no full backup exists yet, so this {requested} backup is taken as full"
            )),
            ..full
        };
    };
    let reference = match requested {
        BackupType::Diff => newest_full,
        // The newest usable backup; the newest full is one, so this finds
        // one at least as new.
        _ => complete.iter().rfind(usable).unwrap_or(newest_full),
    };
    ReferencePlan {
        backup_type: requested,
        reference: Some(reference.label.clone()),
        note: None,
    }
}

/// Every other backup whose objects `files` use.
pub fn plan_depends_on(own_label: &str, files: &[FileEntry]) -> Vec<String> {
    let mut labels = BTreeSet::new();
    for f in files {
        add_depends_on(own_label, f, &mut labels);
    }
    labels.into_iter().collect()
}

/// Adds the other backups whose objects `file` uses to `labels`.
pub fn add_depends_on(own_label: &str, file: &FileEntry, labels: &mut BTreeSet<String>) {
    for key in file.objects() {
        if let Some(label) = layout::label_of_backup_key(key) {
            if label != own_label && !labels.contains(label) {
                labels.insert(label.to_string());
            }
        }
    }
}

/// Whether a file is large enough for a block map.
pub fn wants_map(size: u64, block_size: u32) -> bool {
    size >= MIN_MAP_BLOCKS * u64::from(block_size)
}

/// How one file is copied.
pub struct CopyContext<'a> {
    pub repo: &'a Repository,
    pub label: &'a str,
    pub index: usize,
    pub compress: CompressSettings,
    /// The cluster's block size.
    pub block_size: u32,
    /// The reference's entry for this path, and the reference's block size.
    pub reference: Option<(&'a FileEntry, Option<u32>)>,
    /// `--trust-mtime`: a file whose size and modification time equal the
    /// reference's, and whose time is before this one (the reference's
    /// start, less a second), is taken as unchanged without being read.
    pub trust_mtime_before: Option<i64>,
    /// The blocks WAL says changed since the reference started, when it
    /// can say.
    pub wal: Option<&'a WalView>,
}

/// The changed blocks from WAL, and how to find a file's among them.
#[derive(Debug)]
pub struct WalView {
    pub changes: ChangedBlocks,
    /// Blocks per relation segment file (pg_control's `relseg_size`).
    pub relseg_blocks: u32,
}

impl WalView {
    /// What WAL says of the file at `path`; `None` when it says nothing
    /// (not a main-fork relation file).
    pub fn for_path(&self, path: &str) -> Option<FileChange> {
        let (rel, segment) = crate::wal::records::main_fork_file(path)?;
        let first = segment.checked_mul(self.relseg_blocks)?;
        Some(self.changes.for_file(rel, first, self.relseg_blocks))
    }
}

fn as_ref(key: &Key, info: &ObjectInfo) -> ObjectRef {
    ObjectRef {
        object: key.to_string(),
        raw_size: info.raw_size,
        checksum: info.checksum,
    }
}

/// Reads a block map object and checks it against its reference.
pub async fn read_map(repo: &Repository, map: &ObjectRef) -> Result<BlockMap, ObjectError> {
    let key = Key::new(map.object.clone())?;
    let (bytes, info) = crate::repo::object::read_to_vec(repo.store(), &key).await?;
    if info.checksum != map.checksum {
        return Err(ObjectError::Integrity {
            key,
            reason: "the block map does not match the checksum its manifest records".into(),
        });
    }
    BlockMap::decode(&bytes).map_err(|e| ObjectError::Format {
        key,
        reason: e.to_string(),
    })
}

/// The block hashes of the file an entry restores to: its base's map,
/// overlaid with every delta's block hashes (oldest first), cut at the
/// entry's size. `None` when the entry has no map or its map is of
/// another block size. Reads the deltas (small), never the base.
pub async fn effective_map(
    repo: &Repository,
    entry: &FileEntry,
    block_size: u32,
) -> Result<Option<BlockMap>, ObjectError> {
    let Some(map_ref) = &entry.map else {
        return Ok(None);
    };
    let mut map = read_map(repo, map_ref).await?;
    if map.block_size != block_size {
        return Ok(None);
    }
    for delta in &entry.deltas {
        let key = Key::new(delta.object.clone())?;
        let mut parser = blocks::DeltaParser::new(block_size);
        let mut gap = false;
        let info = read_object(repo.store(), &key, &mut |piece: &[u8]| {
            parser.feed(piece, &mut |b| {
                gap |= !map.overlay(b.number, b.hash, b.cv);
                Ok(())
            })
        })
        .await?;
        let integrity = |reason: String| ObjectError::Integrity {
            key: key.clone(),
            reason,
        };
        if info.checksum != delta.checksum || info.raw_size != delta.raw_size {
            return Err(integrity(
                "the block delta does not match the checksum its manifest records".into(),
            ));
        }
        parser.finish().map_err(|e| integrity(e.to_string()))?;
        // A delta hashing otherwise than the map (never written so) cannot
        // be overlaid: compare whole.
        if gap || parser.kind() != Some(map.kind) {
            return Ok(None);
        }
    }
    map.cut(entry.size);
    Ok(Some(map))
}

async fn open(file: &ScannedFile) -> Result<Option<tokio::fs::File>, ObjectError> {
    match tokio::fs::File::open(&file.abs).await {
        Ok(f) => Ok(Some(f)),
        // Dropped or truncated away by the server during the backup: WAL
        // replay recreates what is needed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ObjectError::Source(e)),
    }
}

/// Copies one file against its reference entry (if any). `None` when the
/// file vanished.
pub async fn copy_file(
    ctx: &CopyContext<'_>,
    file: &ScannedFile,
) -> Result<Option<FileEntry>, ObjectError> {
    let key = layout::backup_file_key(ctx.label, ctx.index);
    let entry = |size, checksum, object: String, stored_size| FileEntry {
        path: file.rel.clone(),
        size,
        checksum,
        mode: file.mode,
        mtime: file.mtime,
        object,
        stored_size,
        base: None,
        deltas: Vec::new(),
        map: None,
    };
    if let Some((reference, ref_block_size)) = ctx.reference {
        if let Some(before) = ctx.trust_mtime_before {
            if file.size == reference.size && file.mtime == reference.mtime && file.mtime < before {
                return Ok(Some(FileEntry {
                    mode: file.mode,
                    stored_size: 0,
                    ..reference.clone()
                }));
            }
        }
        let mappable = wants_map(file.size, ctx.block_size);
        let same_blocks = ref_block_size == Some(ctx.block_size);
        match ctx.wal.and_then(|w| w.for_path(&file.rel)) {
            Some(FileChange::Unchanged) if same_blocks && file.size == reference.size => {
                // A relation file WAL never touched: not read.
                return Ok(Some(unchanged(reference, file)));
            }
            Some(change @ (FileChange::Unchanged | FileChange::Blocks(_))) if same_blocks => {
                if let Some(map_ref) = &reference.map {
                    let blocks = match change {
                        FileChange::Blocks(b) => b,
                        _ => Vec::new(),
                    };
                    if let Some(entry) =
                        copy_from_wal(ctx, file, reference, map_ref, &blocks).await?
                    {
                        return Ok(entry);
                    }
                }
            }
            _ => {}
        }
        if let (true, Some(map_ref), Some(bs)) = (mappable, &reference.map, ref_block_size) {
            if bs == ctx.block_size {
                return copy_against_map(ctx, file, reference, map_ref).await;
            }
        }
        if reference.map.is_none() && reference.deltas.is_empty() && !mappable {
            // Small file: hash it, and refer to the reference's object when
            // it is the same. Read in one blocking task: most files of a
            // data directory are small, and a hand-off per read would cost
            // more than the read.
            let path = file.abs.clone();
            let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Hasher>> {
                use std::io::Read;
                let mut src = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                let mut hasher = Hasher::new();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = src.read(&mut buf)?;
                    if n == 0 {
                        return Ok(Some(hasher));
                    }
                    hasher.update(&buf[..n]);
                }
            })
            .await
            .map_err(|e| ObjectError::Source(std::io::Error::other(e)))?
            .map_err(ObjectError::Source)?;
            // Dropped by the server during the backup: WAL replay
            // recreates what is needed.
            let Some(hasher) = hashed else {
                return Ok(None);
            };
            if hasher.len() == reference.size && hasher.finish() == reference.checksum {
                return Ok(Some(entry(
                    reference.size,
                    reference.checksum,
                    reference.object.clone(),
                    0,
                )));
            }
        }
    }
    // A whole copy, with a block map when the file is large enough.
    let Some(src) = open(file).await? else {
        return Ok(None);
    };
    if !wants_map(file.size, ctx.block_size) {
        let mut src = src;
        let info = write_object(
            ctx.repo.store(),
            &key,
            PutMode::CreateBatched,
            &mut src,
            ctx.compress,
        )
        .await?;
        return Ok(Some(entry(
            info.raw_size,
            info.checksum,
            key.to_string(),
            info.stored_size,
        )));
    }
    let (info, scan) = put_blocks(ctx, &key, src, None).await?;
    let info = info.expect("a whole copy is always written");
    let map = write_map(ctx, &scan).await?;
    let mut e = entry(
        info.raw_size,
        info.checksum,
        key.to_string(),
        info.stored_size + map.1,
    );
    e.map = Some(map.0);
    Ok(Some(e))
}

/// Stores a file through a [`BlockReader`]: whole (`reference: None`) or
/// as a block delta against `reference`. Returns the object and what the
/// reader saw.
async fn put_blocks(
    ctx: &CopyContext<'_>,
    key: &Key,
    src: tokio::fs::File,
    reference: Option<&BlockMap>,
) -> Result<(Option<ObjectInfo>, blocks::BlockScan), ObjectError> {
    // The block reader reads a MiB at a time itself.
    let mut reader = BlockReader::new(src, ctx.block_size, reference);
    let stored = reader.stored_count();
    // A delta with no block is never written (a whole copy always is).
    let is_delta = reference.is_some();
    let empty = move || is_delta && stored.load(std::sync::atomic::Ordering::Relaxed) == 0;
    let info = write_object_unless(
        ctx.repo.store(),
        key,
        PutMode::CreateBatched,
        &mut reader,
        ctx.compress,
        &empty,
    )
    .await?;
    Ok((info, reader.into_scan()))
}

async fn write_map(
    ctx: &CopyContext<'_>,
    scan: &blocks::BlockScan,
) -> Result<(ObjectRef, u64), ObjectError> {
    let key = layout::backup_map_key(ctx.label, ctx.index);
    let bytes = BlockMap {
        kind: scan.kind,
        block_size: ctx.block_size,
        file_size: scan.file_size,
        hashes: scan.hashes.clone(),
        cvs: scan.cvs.clone(),
    }
    .encode();
    let mut src: &[u8] = &bytes;
    let info = write_object(
        ctx.repo.store(),
        &key,
        PutMode::CreateBatched,
        &mut src,
        ctx.compress,
    )
    .await?;
    Ok((as_ref(&key, &info), info.stored_size))
}

/// A large file whose reference has a block map: store only the blocks
/// that differ.
async fn copy_against_map(
    ctx: &CopyContext<'_>,
    file: &ScannedFile,
    reference: &FileEntry,
    map_ref: &ObjectRef,
) -> Result<Option<FileEntry>, ObjectError> {
    let Some(map) = effective_map(ctx.repo, reference, ctx.block_size).await? else {
        // Not comparable block by block: a whole copy.
        let whole = CopyContext {
            reference: None,
            trust_mtime_before: None,
            ..*ctx
        };
        return Box::pin(copy_file(&whole, file)).await;
    };
    let Some(src) = open(file).await? else {
        return Ok(None);
    };
    let key = layout::backup_file_key(ctx.label, ctx.index);
    let (info, scan) = put_blocks(ctx, &key, src, Some(&map)).await?;
    let blocks_now = scan.hashes.len() as u64;
    let delta = match info {
        None => {
            // Nothing to add (and nothing was written): the size alone
            // says where the file now ends.
            if scan.file_size == reference.size && scan.checksum == reference.checksum {
                return Ok(Some(unchanged(reference, file)));
            }
            None
        }
        Some(_) if scan.stored_blocks * 2 > blocks_now => {
            // Most of the file changed: a whole copy is smaller to restore.
            ctx.repo.store().delete(&key).await?;
            let whole = CopyContext {
                reference: None,
                trust_mtime_before: None,
                ..*ctx
            };
            return Box::pin(copy_file(&whole, file)).await;
        }
        Some(info) => Some((as_ref(&key, &info), info.stored_size)),
    };
    Ok(Some(layered_entry(
        file,
        reference,
        map_ref,
        (scan.file_size, scan.checksum),
        delta,
    )))
}

/// A file as the reference has it (not read, or read and found equal),
/// with its own mode and time.
fn unchanged(reference: &FileEntry, file: &ScannedFile) -> FileEntry {
    FileEntry {
        mode: file.mode,
        mtime: file.mtime,
        stored_size: 0,
        ..reference.clone()
    }
}

/// A block-mapped file of `size` bytes with `checksum`: the reference's
/// layers (its base, or whole object, and deltas), plus `delta` when this
/// backup stored one. The map stays the base's: the deltas carry their
/// blocks' hashes. The base alone is the file only if nothing changed it.
fn layered_entry(
    file: &ScannedFile,
    reference: &FileEntry,
    map_ref: &ObjectRef,
    (size, checksum): (u64, crate::stream::Checksum),
    delta: Option<(ObjectRef, u64)>,
) -> FileEntry {
    let base = reference.base.clone().unwrap_or_else(|| ObjectRef {
        object: reference.object.clone(),
        raw_size: reference.size,
        checksum: reference.checksum,
    });
    let mut deltas = reference.deltas.clone();
    let mut stored_size = 0;
    if let Some((delta, stored)) = delta {
        // The delta's stored size is what this backup adds.
        stored_size = stored;
        deltas.push(delta);
    }
    let layered = !deltas.is_empty() || base.raw_size != size || base.checksum != checksum;
    FileEntry {
        path: file.rel.clone(),
        size,
        checksum,
        mode: file.mode,
        mtime: file.mtime,
        object: base.object.clone(),
        stored_size,
        base: layered.then_some(base),
        deltas,
        map: Some(map_ref.clone()),
    }
}

/// A relation file whose changed blocks WAL names: reads only those and
/// the blocks past the reference's end, stores the ones that differ from
/// the reference as a delta, and merges the file's checksum from the
/// block map's chaining values. `Ok(None)` when this cannot be done (no
/// layout-3 map, a size that is not whole blocks, a file shorter than
/// the reference, most of it changed): the caller compares contents.
/// `Ok(Some(None))` when the file vanished.
pub async fn copy_from_wal(
    ctx: &CopyContext<'_>,
    file: &ScannedFile,
    reference: &FileEntry,
    map_ref: &ObjectRef,
    changed: &[u32],
) -> Result<Option<Option<FileEntry>>, ObjectError> {
    use std::os::unix::fs::FileExt;
    let bs = u64::from(ctx.block_size);
    if reference.size % bs != 0 {
        return Ok(None);
    }
    let Some(mut map) = effective_map(ctx.repo, reference, ctx.block_size).await? else {
        return Ok(None);
    };
    if !map.kind.has_cv() || map.hashes.len() as u64 * bs != reference.size {
        return Ok(None);
    }
    let src = match std::fs::File::open(&file.abs) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(None)),
        Err(e) => return Err(ObjectError::Source(e)),
    };
    let size = src.metadata().map_err(ObjectError::Source)?.len();
    if size % bs != 0 || size < reference.size || size < 2 * bs {
        return Ok(None);
    }
    let ref_blocks = map.hashes.len() as u32;
    let now_blocks = u32::try_from(size / bs).map_err(|_| {
        ObjectError::Source(std::io::Error::other(
            "file has too many blocks for a delta",
        ))
    })?;
    // The blocks to read: those WAL names within the reference's length,
    // then every block past it.
    let wanted: Vec<u32> = changed
        .iter()
        .copied()
        .filter(|&b| b < ref_blocks)
        .chain(ref_blocks..now_blocks)
        .collect();
    if wanted.is_empty() {
        return Ok(Some(Some(unchanged(reference, file))));
    }
    if wanted.len() as u64 * 2 > u64::from(now_blocks) {
        // Most of the file: a whole copy is smaller to restore.
        return Ok(None);
    }
    let kind = map.kind;
    let key = layout::backup_file_key(ctx.label, ctx.index);
    let (mut tx, mut rx) = tokio::io::duplex(1 << 20);
    let stored = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stored_seen = stored.clone();
    let src = std::sync::Arc::new(src);
    // Produces the delta: runs of consecutive wanted blocks, a MiB at most
    // per read.
    let produce = async {
        use tokio::io::AsyncWriteExt;
        let mut out = blocks::delta_header_bytes(ctx.block_size, kind).to_vec();
        let max_run = ((1usize << 20) / bs as usize).max(1);
        let mut i = 0;
        let mut end_size = size;
        let mut records = 0u64;
        'runs: while i < wanted.len() {
            let first = wanted[i];
            let mut n = 1;
            while i + n < wanted.len() && n < max_run && wanted[i + n] == first + n as u32 {
                n += 1;
            }
            i += n;
            let offset = u64::from(first) * bs;
            let len = n * bs as usize;
            let file = src.clone();
            let data = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    match file.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(got - got % bs as usize);
                Ok(buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            for (k, block) in data.chunks(bs as usize).enumerate() {
                let number = first + k as u32;
                let hash = kind.hash(block);
                let cv = blocks::block_cv(block, u64::from(number) * bs);
                if map.hashes.get(number as usize) == Some(&hash) {
                    // Named by WAL, yet as the reference has it.
                    map.overlay(number, hash, Some(cv));
                    continue;
                }
                if !map.overlay(number, hash, Some(cv)) {
                    return Err(std::io::Error::other(
                        "blocks past the reference's end out of order",
                    ));
                }
                blocks::push_record_head(
                    &mut out,
                    kind,
                    blocks::max_delta_block(u64::from(number))?,
                    bs as u32,
                    &hash,
                    Some(&cv),
                );
                out.extend_from_slice(block);
                records += 1;
                stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if data.len() < len {
                // Truncated while read: the file ends here (WAL replay
                // from this backup's start truncates it the same way).
                end_size = offset + data.len() as u64;
                tx.write_all(&out).await?;
                out.clear();
                break 'runs;
            }
            if out.len() >= 1 << 20 {
                tx.write_all(&out).await?;
                out.clear();
            }
        }
        blocks::push_end_record(&mut out, kind, end_size, records);
        tx.write_all(&out).await?;
        tx.shutdown().await?;
        drop(tx);
        Ok::<_, std::io::Error>((end_size, records))
    };
    let empty = move || stored_seen.load(std::sync::atomic::Ordering::Relaxed) == 0;
    let consume = write_object_unless(
        ctx.repo.store(),
        &key,
        PutMode::CreateBatched,
        &mut rx,
        ctx.compress,
        &empty,
    );
    let (produced, info) = tokio::join!(produce, consume);
    let info = info?;
    let (end_size, records) = match produced {
        Ok(r) => r,
        Err(e) => {
            if info.is_some() {
                let _ = ctx.repo.store().delete(&key).await;
            }
            return Err(ObjectError::Source(e));
        }
    };
    map.cut(end_size);
    if end_size < 2 * bs {
        if info.is_some() {
            ctx.repo.store().delete(&key).await?;
        }
        return Ok(None);
    }
    let checksum = map
        .merged_checksum()
        .expect("a chaining value for every block of two or more");
    let delta = match info {
        Some(info) if records > 0 => Some((as_ref(&key, &info), info.stored_size)),
        Some(_) => {
            ctx.repo.store().delete(&key).await?;
            None
        }
        None => None,
    };
    Ok(Some(Some(layered_entry(
        file,
        reference,
        map_ref,
        (end_size, checksum),
        delta,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::test_manifest;
    use crate::wal::{Lsn, TimelineId, WalSegmentSize};

    fn m(label: &str, t: BackupType, depends: &[&str]) -> BackupManifest {
        let mut m = test_manifest(
            label,
            TimelineId(1),
            Lsn(0x1000000),
            Lsn(0x2000000),
            WalSegmentSize::DEFAULT,
            "2026-01-01T00:00:00Z",
        );
        m.backup_type = t;
        m.depends_on = depends.iter().map(|d| d.to_string()).collect();
        m
    }

    #[test]
    fn references_follow_the_type() {
        use BackupType::*;
        let f1 = m("20260101T000000Z", Full, &[]);
        let i1 = m("20260101T010000Z", Incr, &["20260101T000000Z"]);
        let d1 = m("20260101T020000Z", Diff, &["20260101T000000Z"]);
        let all = [&f1, &i1, &d1];
        let r = |t, list: &[&BackupManifest]| plan_reference(t, list);
        assert_eq!(r(Full, &all).reference, None);
        assert_eq!(r(Diff, &all).reference.as_deref(), Some("20260101T000000Z"));
        assert_eq!(r(Incr, &all).reference.as_deref(), Some("20260101T020000Z"));
        // No full backup: full, with a note.
        let p = r(Incr, &[]);
        assert_eq!((p.backup_type, p.reference), (Full, None));
        assert!(p.note.unwrap().contains("no full backup"));
        // An incremental whose full is gone is never a reference.
        let orphan = m("20260101T030000Z", Incr, &["20251231T000000Z"]);
        let p = r(Incr, &[&f1, &orphan]);
        assert_eq!(p.reference.as_deref(), Some("20260101T000000Z"));
        let p = r(Diff, &[&orphan]);
        assert_eq!(p.backup_type, Full);
    }

    #[test]
    fn dependencies_come_from_object_keys() {
        let e = |object: &str, deltas: &[&str]| FileEntry {
            path: "base/1/1".into(),
            size: 1,
            checksum: Default::default(),
            mode: 0o600,
            mtime: 0,
            object: object.into(),
            stored_size: 0,
            base: None,
            deltas: deltas
                .iter()
                .map(|d| ObjectRef {
                    object: d.to_string(),
                    raw_size: 0,
                    checksum: Default::default(),
                })
                .collect(),
            map: None,
        };
        let files = [
            e(
                "backup/20260101T000000Z/files/000001",
                &[
                    "backup/20260101T010000Z/files/000002",
                    "backup/20260101T020000Z/files/000001",
                ],
            ),
            e("backup/20260101T020000Z/files/000003", &[]),
        ];
        assert_eq!(
            plan_depends_on("20260101T020000Z", &files),
            ["20260101T000000Z", "20260101T010000Z"]
        );
    }
}
