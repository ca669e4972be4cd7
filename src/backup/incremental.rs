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

use std::collections::BTreeSet;

use tokio::io::AsyncReadExt;

use crate::repo::blocks::{self, BlockMap, BlockReader, MIN_MAP_BLOCKS};
use crate::repo::manifest::{BackupManifest, BackupType, FileEntry, ObjectRef};
use crate::repo::object::{read_object, write_object, write_object_unless, ObjectInfo};
use crate::repo::{layout, CompressSettings, ObjectError, Repository};
use crate::storage::{Key, PutMode};
use crate::stream::Hasher;

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
        if let (true, Some(map_ref), Some(bs)) = (mappable, &reference.map, ref_block_size) {
            if bs == ctx.block_size {
                return copy_against_map(ctx, file, reference, map_ref).await;
            }
        }
        if reference.map.is_none() && reference.deltas.is_empty() && !mappable {
            // Small file: hash it, and refer to the reference's object when
            // it is the same.
            let Some(mut src) = open(file).await? else {
                return Ok(None);
            };
            let mut hasher = Hasher::new();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = src.read(&mut buf).await.map_err(ObjectError::Source)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
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
    // The reference's layers: its base (or whole object) and deltas.
    let base = reference.base.clone().unwrap_or_else(|| ObjectRef {
        object: reference.object.clone(),
        raw_size: reference.size,
        checksum: reference.checksum,
    });
    let mut deltas = reference.deltas.clone();
    let mut stored = 0;
    match info {
        None => {
            // Nothing to add (and nothing was written): the size alone
            // says where the file now ends.
            if scan.file_size == reference.size && scan.checksum == reference.checksum {
                return Ok(Some(FileEntry {
                    mode: file.mode,
                    mtime: file.mtime,
                    stored_size: 0,
                    ..reference.clone()
                }));
            }
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
        Some(info) => {
            deltas.push(as_ref(&key, &info));
            stored += info.stored_size;
        }
    }
    // The map stays the base's: the deltas carry their blocks' hashes.
    // The base alone is the file only if nothing changed it.
    let layered =
        !deltas.is_empty() || base.raw_size != scan.file_size || base.checksum != scan.checksum;
    Ok(Some(FileEntry {
        path: file.rel.clone(),
        size: scan.file_size,
        checksum: scan.checksum,
        mode: file.mode,
        mtime: file.mtime,
        object: base.object.clone(),
        stored_size: stored,
        base: layered.then_some(base),
        deltas,
        map: Some(map_ref.clone()),
    }))
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
