//! `walvault-push %p`: PostgreSQL's archive_command.
//!
//! The contract (PostgreSQL docs, "Setting Up WAL Archiving"): exit 0 only
//! once the file is safely stored; any failure exits non-zero and PostgreSQL
//! tries again later; an archived file must never be overwritten, but the
//! same file archived again (after a crash between storing and PostgreSQL
//! noting it) succeeds. So: validate, stream into a create-only put, and on
//! "already exists" compare checksums: identical is success with a warning,
//! different is an error that leaves the stored object untouched.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;

use crate::pg::control::identity_of_data_dir;
use crate::repo::object::{read_info, write_file_object, Pacing};
use crate::repo::{
    layout, ClusterIdentity, ObjectError, ObjectInfo, RepoError, RepoHeader, Repository,
};
use crate::storage::{PutMode, StorageError};
use crate::stream::{Checksum, Hasher};
use crate::wal::{
    parse_backup_history, pg_major_for_wal_magic, LongPageHeader, PageHeaderError, TimelineHistory,
    WalFileName, WalSegmentSize, LONG_HEADER_LEN,
};

/// History and backup-history files are a few lines of text.
const MAX_TEXT_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("WAL file \"{path}\": {reason}{hint}")]
    BadInput {
        path: PathBuf,
        reason: String,
        hint: String,
    },
    #[error("WAL file \"{name}\" is already archived with different contents (stored checksum {stored}, size {stored_size}; this file {local}, size {local_size}); the archived copy was left untouched\nHINT: two clusters may be archiving into one repository, or this file is damaged; check archive_command and the repository")]
    Conflict {
        name: String,
        stored: Checksum,
        stored_size: u64,
        local: Checksum,
        local_size: u64,
    },
    #[error("archive \"{name}\" into {repo}: {source}")]
    Repo {
        name: String,
        repo: String,
        #[source]
        source: RepoError,
    },
}

/// What a successful push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    Stored(ObjectInfo),
    /// The repository already held this exact file.
    AlreadyArchived,
}

fn bad(path: &Path, reason: impl Into<String>) -> PushError {
    PushError::BadInput {
        path: path.to_path_buf(),
        reason: reason.into(),
        hint: String::new(),
    }
}

/// Archives the file at `path` (relative paths are relative to the current
/// directory, the data directory when PostgreSQL runs the command).
/// The repository must be initialized (`walvault init`): a push never
/// creates a repository, so a file pushed into an unmounted directory or a
/// wrong bucket fails instead of starting a new repository. `data_dir` is
/// read to check a `.history` or `.backup` file's cluster. With `pacing`
/// (the asynchronous worker's bounds on compression and memory), it waits
/// for its share before it compresses.
pub async fn push(
    repo: &Repository,
    path: &Path,
    data_dir: &Path,
    pacing: Option<&Pacing>,
) -> Result<PushOutcome, PushError> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad(path, "the path names no file"))?;
    let shape = layout::parse_any_size(file_name).map_err(|e| PushError::BadInput {
        path: path.to_path_buf(),
        reason: e.to_string(),
        hint: "\nHINT: archive_command must pass %p, the path of a finished WAL file".to_string(),
    })?;
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => bad(path, "does not exist"),
        _ => bad(path, format!("cannot be read: {e}")),
    })?;
    if !meta.is_file() {
        return Err(bad(path, "is not a regular file"));
    }
    // Opened once (a regular file, so this cannot block): read for its
    // header, then stored.
    let file =
        std::fs::File::open(path).map_err(|e| bad(path, format!("cannot be opened: {e}")))?;
    let repo_err = |source: RepoError| PushError::Repo {
        name: file_name.to_string(),
        repo: repo.describe(),
        source,
    };
    let what = format!("WAL file \"{file_name}\"");

    let name = if shape.is_segment_sized() {
        let (name, identity) = check_segment(path, &file, file_name, meta.len())?;
        repo.check_bound(&identity, &what).await.map_err(repo_err)?;
        name
    } else {
        let header = header_for_text_file(repo, data_dir, &what)
            .await
            .map_err(repo_err)?;
        let size = WalSegmentSize::new(header.wal_segment_size).unwrap_or(WalSegmentSize::DEFAULT);
        let name = WalFileName::parse(file_name, size).map_err(|e| bad(path, e.to_string()))?;
        check_text_file(path, &name, meta.len())?;
        name
    };

    let key = layout::wal_key(&name);
    match write_file_object(
        repo.store(),
        &key,
        PutMode::Create,
        file,
        repo.compress(),
        pacing,
    )
    .await
    {
        Ok(info) => Ok(PushOutcome::Stored(info)),
        Err(ObjectError::Storage(StorageError::AlreadyExists { .. })) => {
            compare_with_stored(repo, path, file_name, &key).await
        }
        Err(ObjectError::Source(e)) => Err(bad(path, format!("read failed: {e}"))),
        Err(e) => Err(repo_err(e.into())),
    }
}

/// Validates a segment or `.partial` file (size, long page header, name)
/// and returns its parsed name and the cluster identity its header gives.
fn check_segment(
    path: &Path,
    file: &std::fs::File,
    file_name: &str,
    len: u64,
) -> Result<(WalFileName, ClusterIdentity), PushError> {
    let mut head = [0u8; LONG_HEADER_LEN];
    // At offset 0 without moving the file's position: the store reads the
    // file from its start.
    std::os::unix::fs::FileExt::read_exact_at(file, &mut head, 0).map_err(|_| {
        bad(
            path,
            format!("is {len} bytes, too short to be a WAL segment (truncated?)"),
        )
    })?;
    let header = LongPageHeader::parse(&head).map_err(|e| match e {
        PageHeaderError::UnsupportedMajor { .. } => PushError::BadInput {
            path: path.to_path_buf(),
            reason: e.to_string(),
            hint:
                "\nHINT: archive this cluster with a tool that supports its version, or upgrade it"
                    .to_string(),
        },
        _ => PushError::BadInput {
            path: path.to_path_buf(),
            reason: format!("is not a WAL segment: {e}"),
            hint: "\nHINT: only files from pg_wal can be archived".to_string(),
        },
    })?;
    let size = WalSegmentSize::new(header.segment_size as u64).map_err(|e| {
        bad(
            path,
            format!("is not a WAL segment: its header gives an invalid segment size: {e}"),
        )
    })?;
    let name = WalFileName::parse(file_name, size).map_err(|e| bad(path, e.to_string()))?;
    if len != size.bytes() {
        return Err(bad(
            path,
            format!("is {len} bytes but a WAL segment of this cluster is {} bytes (truncated or damaged)", size.bytes()),
        ));
    }
    let segment = name
        .segment()
        .ok_or_else(|| bad(path, "is not a segment"))?;
    header
        .check_segment(name.timeline(), segment, size)
        .map_err(|e| bad(path, format!("does not match its name: {e}")))?;
    let pg_major = pg_major_for_wal_magic(header.magic).ok_or_else(|| {
        bad(
            path,
            format!("unknown WAL page magic {:#06X}", header.magic),
        )
    })?;
    let identity = ClusterIdentity {
        system_identifier: header.system_identifier,
        wal_segment_size: size,
        pg_major,
    };
    Ok((name, identity))
}

/// `.history` and `.backup` files carry no system identifier: they go into
/// an initialized repository, checked against the data directory's
/// identity when it can be read.
async fn header_for_text_file(
    repo: &Repository,
    data_dir: &Path,
    what: &str,
) -> Result<RepoHeader, RepoError> {
    let header = repo.require_header().await?;
    if let Ok(identity) = identity_of_data_dir(data_dir) {
        repo.check_identity(&header, &identity, what)?;
    }
    Ok(header)
}

fn check_text_file(path: &Path, name: &WalFileName, len: u64) -> Result<(), PushError> {
    if len > MAX_TEXT_FILE_BYTES {
        return Err(bad(
            path,
            format!("is {len} bytes, too large for a {} file", name.kind()),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(path, format!("is not a readable text file: {e}")))?;
    match name {
        WalFileName::History { timeline } => {
            TimelineHistory::parse(*timeline, &text)
                .map_err(|e| bad(path, format!("is not a timeline history file: {e}")))?;
        }
        WalFileName::Backup { .. } => {
            parse_backup_history(&text)
                .map_err(|e| bad(path, format!("is not a backup history file: {e}")))?;
        }
        _ => {}
    }
    Ok(())
}

async fn compare_with_stored(
    repo: &Repository,
    path: &Path,
    file_name: &str,
    key: &crate::storage::Key,
) -> Result<PushOutcome, PushError> {
    let stored = read_info(repo.store(), key)
        .await
        .map_err(|e| PushError::Repo {
            name: file_name.to_string(),
            repo: repo.describe(),
            source: e.into(),
        })?;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| bad(path, format!("cannot be opened: {e}")))?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| bad(path, format!("read failed: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let local = hasher.finish();
    if local == stored.checksum && hasher.len() == stored.raw_size {
        tracing::warn!(
            wal = file_name,
            "already archived with identical contents; nothing to do"
        );
        Ok(PushOutcome::AlreadyArchived)
    } else {
        Err(PushError::Conflict {
            name: file_name.to_string(),
            stored: stored.checksum,
            stored_size: stored.raw_size,
            local,
            local_size: hasher.len(),
        })
    }
}

/// Archives the file into every repository of `repos` at once. Succeeds
/// only when the file is durable in every required repository; a failure
/// in an optional one is logged (with the fix) and does not fail the push.
/// A required repository's failure is returned, the first one in order.
pub async fn push_all(
    repos: &super::Repos,
    path: &Path,
    data_dir: &Path,
    pacing: Option<&Pacing>,
) -> Result<PushOutcome, PushError> {
    let members = repos.members();
    if let [only] = members {
        return push(&only.repo, path, data_dir, pacing).await;
    }
    let results = futures_util::future::join_all(
        members
            .iter()
            .map(|m| push(&m.repo, path, data_dir, pacing)),
    )
    .await;
    let mut outcome = None;
    let mut first_error = None;
    for (member, result) in members.iter().zip(results) {
        match result {
            Ok(o) => {
                if outcome.is_none() {
                    outcome = Some(o);
                }
            }
            Err(e) if member.required => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
            Err(e) => {
                tracing::warn!(
                    repo = member.label.as_str(),
                    error = %e,
                    "not archived into the optional repository; `walvault copy --to {}` fills the gap",
                    member.label
                );
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(outcome.expect("repo1 is required, so it succeeded")),
    }
}
