//! Which relation blocks changed since the reference backup started, read
//! from WAL ([`collect`]): the WAL from the reference's start LSN to this
//! backup's, taken from the cluster's `pg_wal` where it still is and from
//! the repository's archive otherwise, decoded by
//! [`crate::wal::records`].
//!
//! With that list an incremental reads only the changed blocks of each
//! relation file (PostgreSQL 17's incremental backup works the same way,
//! from its WAL summaries) instead of every byte. Every block that
//! changed between the two start LSNs has a WAL record naming it there;
//! changes after this backup's start are replayed from WAL at restore, as
//! for any backup; hint bits set without WAL are hints, which PostgreSQL
//! accepts losing (a full backup can miss them too).
//!
//! When WAL cannot vouch for the changes the backup compares file
//! contents instead, and says why ([`plan_wal_changes`] for what the
//! manifests tell, [`collect`] for what the WAL tells):
//! - another timeline, or another PostgreSQL major, than the reference;
//! - data checksums turned on or off since (`pg_checksums` rewrites every
//!   block without WAL), or a reference that does not record them;
//! - a database or tablespace created, copied or dropped (`CREATE
//!   DATABASE … STRATEGY FILE_COPY` copies files without WAL), or
//!   `wal_level=minimal`;
//! - WAL missing, damaged or from elsewhere.

use std::io::Read;
use std::path::Path;

use crate::repo::manifest::BackupManifest;
use crate::repo::{layout, Repository};
use crate::wal::records::{ChangedBlocks, WalDecoder};
use crate::wal::{Lsn, TimelineId, WalFileName, WalSegmentSize};

/// The facts of this backup that decide whether WAL can be used.
#[derive(Debug, Clone, Copy)]
pub struct ThisBackup {
    pub pg_major: u32,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub data_checksum_version: u32,
}

/// Whether the WAL from `reference`'s start to this backup's can tell
/// the changed blocks, by the manifests alone: `Err` says why not.
pub fn plan_wal_changes(reference: &BackupManifest, this: &ThisBackup) -> Result<(), String> {
    if reference.pg_major != this.pg_major {
        return Err(format!(
            "the reference backup {} is of PostgreSQL {}, this cluster is {}",
            reference.label, reference.pg_major, this.pg_major
        ));
    }
    if reference.timeline != this.timeline {
        return Err(format!(
            "the reference backup {} is on timeline {}, this backup on {}",
            reference.label, reference.timeline, this.timeline
        ));
    }
    if reference.start_lsn >= this.start_lsn {
        return Err(format!(
            "the reference backup {} starts at {}, not before this backup's {}",
            reference.label, reference.start_lsn, this.start_lsn
        ));
    }
    // Reading more WAL than the data it describes is slower than reading
    // the data (a differential long after its full backup).
    let wal_bytes = this.start_lsn.0 - reference.start_lsn.0;
    if wal_bytes > reference.data_size_bytes.max(1 << 30) {
        return Err(format!(
            "the WAL since the reference backup {} ({} MiB) is larger than its data ({} MiB): reading the data is quicker",
            reference.label,
            wal_bytes >> 20,
            reference.data_size_bytes >> 20
        ));
    }
    match reference.data_checksum_version {
        None => Err(format!(
            "the reference backup {} does not record whether data checksums were on",
            reference.label
        )),
        Some(v) if v != this.data_checksum_version => Err(format!(
            "data checksums were turned {} since the reference backup {} (every block was rewritten without WAL)",
            if this.data_checksum_version == 0 { "off" } else { "on" },
            reference.label
        )),
        Some(_) => Ok(()),
    }
}

/// How much of a segment is read at once.
const READ_BYTES: usize = 1 << 20;

/// Decodes the WAL from `from` to `to` on `timeline`: each segment from
/// `pg_wal` when it is there and whole, else from the repository. `Err`
/// says why the changes cannot be told.
pub async fn collect(
    repo: &Repository,
    pgdata: &Path,
    pg_major: u32,
    seg_size: WalSegmentSize,
    system_identifier: u64,
    timeline: TimelineId,
    from: Lsn,
    to: Lsn,
) -> Result<ChangedBlocks, String> {
    let mut decoder = WalDecoder::new(
        pg_major,
        seg_size.bytes(),
        system_identifier,
        timeline.0,
        from.0,
        to.0,
    );
    let mut segment = from.segment_no(seg_size);
    while !decoder.done() {
        let seg_start = segment.start_lsn(seg_size).0;
        if seg_start > to.0 {
            break;
        }
        let name = WalFileName::segment_file_name(timeline, segment, seg_size);
        let local = pgdata.join("pg_wal").join(&name);
        decoder.begin_segment(seg_start);
        let from_local = match std::fs::File::open(&local) {
            Ok(file) if file.metadata().is_ok_and(|m| m.len() == seg_size.bytes()) => {
                // Whole and named for this segment: PostgreSQL renames
                // only old segments to future names, and the page
                // addresses are checked anyway.
                let (d, result) = tokio::task::spawn_blocking(move || {
                    let r = read_local(file, &mut decoder);
                    (decoder, r)
                })
                .await
                .map_err(|e| format!("WAL reading task failed: {e}"))?;
                decoder = d;
                Some(result)
            }
            _ => None,
        };
        match from_local {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("{name} in pg_wal: {e}")),
            None => {
                let parsed = WalFileName::parse(&name, seg_size)
                    .map_err(|e| format!("WAL file name {name}: {e}"))?;
                let key = layout::wal_key(&parsed);
                let mut failure: Option<String> = None;
                let read = crate::repo::object::read_object(repo.store(), &key, &mut |piece| {
                    if failure.is_none() {
                        if let Err(e) = decoder.feed(piece) {
                            failure = Some(e.to_string());
                        }
                    }
                    Ok(())
                })
                .await;
                if let Err(e) = read {
                    return Err(format!(
                        "{name} is neither in pg_wal nor readable in the repository: {e}"
                    ));
                }
                if let Some(e) = failure {
                    return Err(format!("{name} in the repository: {e}"));
                }
            }
        }
        segment = match segment.next() {
            Some(s) => s,
            None => break,
        };
        // After a WAL switch, segments before the one wanted are skipped.
        while segment.end_lsn(seg_size).0 <= decoder.wants() && !decoder.done() {
            segment = match segment.next() {
                Some(s) => s,
                None => break,
            };
        }
    }
    decoder.finish().map_err(|e| e.to_string())
}

fn read_local(mut file: std::fs::File, decoder: &mut WalDecoder) -> Result<(), String> {
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        if decoder.done() {
            return Ok(());
        }
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        decoder.feed(&buf[..n]).map_err(|e| e.to_string())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::test_manifest;

    #[test]
    fn wal_is_trusted_only_on_the_same_history_major_and_checksums() {
        let mut r = test_manifest(
            "20260101T000000Z",
            TimelineId(1),
            Lsn(0x1000000),
            Lsn(0x2000000),
            WalSegmentSize::DEFAULT,
            "2026-01-01T00:00:00Z",
        );
        r.data_checksum_version = Some(0);
        let this = ThisBackup {
            pg_major: r.pg_major,
            timeline: TimelineId(1),
            start_lsn: Lsn(0x5000000),
            data_checksum_version: 0,
        };
        assert_eq!(plan_wal_changes(&r, &this), Ok(()));
        let why = |t: ThisBackup, m: &BackupManifest| plan_wal_changes(m, &t).unwrap_err();
        assert!(why(
            ThisBackup {
                timeline: TimelineId(2),
                ..this
            },
            &r
        )
        .contains("timeline 1, this backup on 2"));
        assert!(why(
            ThisBackup {
                pg_major: r.pg_major + 1,
                ..this
            },
            &r
        )
        .contains("PostgreSQL"));
        assert!(why(
            ThisBackup {
                start_lsn: Lsn(0x1000000),
                ..this
            },
            &r
        )
        .contains("not before"));
        // More WAL than data (and than 1 GiB): the data is read instead.
        let mut big = r.clone();
        big.data_size_bytes = 2 << 30;
        let far = Lsn(big.start_lsn.0 + (2 << 30) + 1);
        assert!(why(
            ThisBackup {
                start_lsn: far,
                ..this
            },
            &big
        )
        .contains("larger than its data"));
        let near = ThisBackup {
            start_lsn: Lsn(big.start_lsn.0 + (2 << 30)),
            ..this
        };
        assert_eq!(plan_wal_changes(&big, &near), Ok(()));
        assert!(why(
            ThisBackup {
                data_checksum_version: 1,
                ..this
            },
            &r
        )
        .contains("turned on"));
        let mut old = r.clone();
        old.data_checksum_version = None;
        assert!(why(this, &old).contains("does not record"));
    }
}
