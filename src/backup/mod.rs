//! `walvault backup`: an online base backup through PostgreSQL's
//! non-exclusive backup API.
//!
//! 1. Connect, check the server (data directory, archiving) and that the
//!    cluster is the one the repository belongs to. The server may be a
//!    standby: the backup then runs and copies there, WAL file names are
//!    computed from timeline and LSN (`pg_walfile_name()` fails during
//!    recovery), and its WAL comes from the primary's archive: with
//!    `--primary-dbname` the primary switches WAL once after the stop so
//!    the last segment is archived at once.
//! 2. `pg_backup_start` (PostgreSQL 15+) or `pg_start_backup` (12-14), on a
//!    session that stays open until the stop.
//! 3. Copy the data directory's files (see [`scan`]) with `--jobs` workers,
//!    each file streamed through checksum and zstd into its own object;
//!    memory stays at a few MiB per worker whatever the file sizes. Files
//!    that vanish during the copy are skipped; files that change are fine
//!    (WAL replay from the start LSN repairs them).
//! 4. `pg_backup_stop`: PostgreSQL switches to a new WAL segment; walvault
//!    then waits, for a bounded time, until every segment the backup needs
//!    is in this repository (PostgreSQL's own wait_for_archive would wait
//!    forever if archiving fails, and only knows that archive_command
//!    succeeded, not where it put the file).
//! 5. The manifest is written last. Without it the backup is incomplete and
//!    nothing ever restores from it.

pub mod incremental;
pub mod scan;
pub mod wal_changes;

use std::collections::{BTreeSet, VecDeque};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::pg::conn::{self, ConnError};
use crate::repo::filelist::FileListWriter;
use crate::repo::manifest::{path_cmp, BackupManifest, BackupType, FileEntry, MANIFEST_VERSION};
use crate::repo::{layout, ClusterIdentity, CompressSettings, ObjectError, RepoError, Repository};
use crate::storage::StorageError;
use crate::wal::{Lsn, TimelineId, WalFileName, WalSegmentSize};

/// The changed blocks from WAL, decoded in a task of its own and awaited
/// by every copy that needs them; `Err` says why contents are compared.
type SharedWal = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<Arc<incremental::WalView>, String>>,
>;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub pgdata: PathBuf,
    pub dbname: Option<String>,
    /// A standby's primary: one WAL switch there after the backup stops.
    pub primary_dbname: Option<String>,
    pub jobs: usize,
    /// How long to wait for the backup's WAL to reach the repository.
    pub wal_wait: Duration,
    pub progress_bar: bool,
    /// `--type`; `None` takes `default_type`.
    pub requested_type: Option<BackupType>,
    /// The configured type (`backup_type`).
    pub default_type: BackupType,
    /// Take a file whose size and modification time match the reference's
    /// as unchanged without reading it (faster; trusts the file system's
    /// times).
    pub trust_mtime: bool,
    /// `--compare-contents`: never take changed blocks from WAL (for
    /// clusters where something writes relation files without WAL).
    pub compare_contents: bool,
}

#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub label: String,
    pub files: usize,
    pub data_bytes: u64,
    pub stored_bytes: u64,
    pub duration: Duration,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub backup_type: BackupType,
    pub reference: Option<String>,
    /// How changed files were found (diff and incr): from WAL, or by
    /// comparing contents and why.
    pub changes: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Connect(#[from] ConnError),
    #[error("{what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Precondition(String),
    #[error("backup {label} lost the repository lock before writing its manifest; the backup stays incomplete and the next expire removes it\nHINT: another backup or expire took the lock over (its lease ended: is this host's clock or storage very slow?); run the backup again")]
    LockLost { label: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("scan data directory \"{path}\": {source}")]
    Scan {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("copy \"{path}\": {source}")]
    Copy {
        path: String,
        #[source]
        source: ObjectError,
    },
    #[error("WAL file \"{name}\" needed by backup {label} did not reach {repo} within {secs}s\nHINT: check that archive_command runs walvault-push against this repository (walvault check), and the server log for archive failures; for a backup from a standby, pass --primary-dbname so the primary finishes that segment, or set archive_timeout on the primary")]
    WalMissing {
        name: String,
        label: String,
        repo: String,
        secs: u64,
    },
}

fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> BackupError {
    move |source| BackupError::Query { what, source }
}

/// What the server says about itself.
struct ServerFacts {
    version_num: u32,
    /// A standby: the backup runs there, its WAL comes from the primary.
    in_recovery: bool,
    data_directory: String,
    wal_segment_size: WalSegmentSize,
    system_identifier: u64,
}

async fn server_facts(client: &Client) -> Result<ServerFacts, BackupError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num'), current_setting('data_directory'), \
             (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), \
             current_setting('archive_mode'), (SELECT system_identifier FROM pg_control_system())::text, \
             pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(query("read server settings"))?;
    let version_num: u32 = row.get::<_, String>(0).parse().unwrap_or(0);
    let archive_mode: String = row.get(3);
    let in_recovery: bool = row.get(5);
    let supported = crate::pg::control::SUPPORTED_MAJORS;
    if !supported.contains(&(version_num / 10000)) {
        return Err(BackupError::Precondition(format!(
            "PostgreSQL {} is not supported\nHINT: walvault supports PostgreSQL {} to {}",
            version_num / 10000,
            supported.start(),
            supported.end()
        )));
    }
    if archive_mode == "off" {
        return Err(BackupError::Precondition(
            "archive_mode is off, so the WAL this backup needs would never be archived\nHINT: set archive_mode = on and archive_command = 'walvault-push %p' and restart PostgreSQL".to_string(),
        ));
    }
    let seg: u64 = row.get::<_, String>(2).parse().unwrap_or(0);
    let wal_segment_size = WalSegmentSize::new(seg).map_err(|e| {
        BackupError::Precondition(format!(
            "the server reports an invalid wal_segment_size: {e}"
        ))
    })?;
    let system_identifier = row.get::<_, String>(4).parse().map_err(|_| {
        BackupError::Precondition("the server reports no system identifier".to_string())
    })?;
    Ok(ServerFacts {
        version_num,
        in_recovery,
        data_directory: row.get(1),
        wal_segment_size,
        system_identifier,
    })
}

/// A label from the current UTC time, unique in the repository.
/// A new label, claimed by writing the backup's writer object
/// create-only, so two backups starting in the same second never share
/// one: the second gets `-2`, and so on.
async fn new_label(repo: &Repository) -> Result<String, BackupError> {
    let base = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let mut label = base.clone();
    for n in 2.. {
        let taken = !repo
            .store()
            .list(Some(&layout::backup_prefix(&label)))
            .await
            .map_err(RepoError::from)?
            .is_empty();
        if !taken && repo.claim_label(&label).await? {
            break;
        }
        label = format!("{base}-{n}");
    }
    Ok(label)
}

/// Runs a backup.
/// `lock`, the repository lock the caller holds, is confirmed to be still
/// ours right before the manifest is written; a backup that lost it
/// stays incomplete.
pub async fn run_backup(
    repo: &Repository,
    opts: &BackupOptions,
    lock: Option<&crate::repo::lock::RepoLock>,
) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    let client = conn::connect(opts.dbname.as_deref()).await?;
    let facts = server_facts(&client).await?;
    let given = std::fs::canonicalize(&opts.pgdata).map_err(|e| {
        BackupError::Precondition(format!("data directory \"{}\": {e}", opts.pgdata.display()))
    })?;
    let served = std::fs::canonicalize(&facts.data_directory)
        .unwrap_or_else(|_| PathBuf::from(&facts.data_directory));
    if given != served {
        return Err(BackupError::Precondition(format!(
            "--pgdata is \"{}\" but the server runs on \"{}\"\nHINT: name the data directory of the server --dbname connects to",
            given.display(),
            served.display()
        )));
    }
    let pg_major = facts.version_num / 10000;
    let identity = ClusterIdentity {
        system_identifier: facts.system_identifier,
        wal_segment_size: facts.wal_segment_size,
        pg_major,
    };
    repo.check_bound(
        &identity,
        &format!("the cluster at \"{}\"", given.display()),
    )
    .await?;
    let control = crate::pg::control::read_control(&given)
        .map_err(|e| BackupError::Precondition(e.to_string()))?;
    let block_size = control.block_size;
    // What to compare with: read before the label is claimed, under the
    // repository lock, so no expire removes it meanwhile.
    let listings = repo.list_backups().await?;
    let complete: Vec<&BackupManifest> = listings
        .iter()
        .filter_map(|l| l.manifest.as_ref())
        .collect();
    let requested = opts.requested_type.unwrap_or(opts.default_type);
    let reference_plan = incremental::plan_reference(requested, &complete);
    if let Some(note) = &reference_plan.note {
        tracing::warn!("{note}");
    }
    drop(listings);
    // The reference's whole manifest (listings carry no file lists).
    let reference: Option<BackupManifest> = match &reference_plan.reference {
        Some(label) => Some(repo.read_manifest(label).await?),
        None => None,
    };
    let label = new_label(repo).await?;

    // Start. The session must stay open until the stop: closing it aborts
    // the backup on the server, which is what any error below does.
    // WAL file names are computed here from timeline and LSN:
    // pg_walfile_name() fails during recovery, on a standby.
    let start_sql = if pg_major >= 15 {
        "SELECT lsn::text, to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
         (SELECT timeline_id FROM pg_control_checkpoint())::int FROM pg_backup_start($1, true) AS lsn"
    } else {
        "SELECT lsn::text, to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
         (SELECT timeline_id FROM pg_control_checkpoint())::int FROM pg_start_backup($1, true, false) AS lsn"
    };
    let label_text = format!("walvault backup {label}");
    // On a standby the backup starts at a restartpoint, which can only be
    // made at a checkpoint record from the primary: without one the start
    // waits up to checkpoint_timeout. Ask the primary for one when given.
    let primary = match (facts.in_recovery, opts.primary_dbname.as_deref()) {
        (true, Some(primary)) => Some(conn::connect(Some(primary)).await?),
        _ => None,
    };
    if let Some(primary) = &primary {
        if let Err(e) = primary.batch_execute("CHECKPOINT").await {
            tracing::warn!(error = %e, "CHECKPOINT on the primary failed (it needs superuser or pg_checkpoint); the backup starts at the primary's next checkpoint");
        }
    }
    let row = client
        .query_one(start_sql, &[&label_text])
        .await
        .map_err(query("start backup"))?;
    let start_lsn: Lsn = parse_lsn(&row.get::<_, String>(0))?;
    let start_time: String = row.get(1);
    let mut timeline = TimelineId(row.get::<_, i32>(2) as u32);
    if facts.in_recovery {
        tracing::info!(label = %label, "backing up a standby: its WAL comes from the primary's archive");
    }
    tracing::info!(label = %label, start_lsn = %start_lsn, "backup started");

    // Which blocks changed since the reference started, when WAL can say:
    // decoded in a task of its own while the copy starts on the files that
    // do not need it (only main-fork relation files wait for it).
    let wal_timeline = timeline;
    let wal: Option<(SharedWal, tokio::task::AbortHandle)> = reference.as_ref().map(|r| {
        let this = wal_changes::ThisBackup {
            pg_major,
            timeline,
            start_lsn,
            data_checksum_version: control.data_checksum_version,
        };
        let planned = if opts.compare_contents {
            Err("--compare-contents was given".to_string())
        } else {
            wal_changes::plan_wal_changes(r, &this)
        };
        let (repo, dir, from) = (repo.clone(), given.clone(), r.start_lsn);
        let task = tokio::spawn(async move {
            planned?;
            let mut c = wal_changes::collect(
                &repo,
                &dir,
                pg_major,
                control.wal_segment_size,
                control.system_identifier,
                timeline,
                from,
                start_lsn,
            )
            .await?;
            if let Some(why) = c.unsure.take() {
                return Err(why);
            }
            Ok(Arc::new(incremental::WalView {
                changes: c,
                relseg_blocks: control.relseg_size,
            }))
        });
        let abort = task.abort_handle();
        let shared = futures_util::FutureExt::shared(futures_util::FutureExt::boxed(async move {
            task.await.unwrap_or_else(|e| {
                if e.is_panic() {
                    tracing::warn!(error = %e, "the WAL reading task panicked; comparing contents");
                }
                Err(format!("the WAL reading task failed: {e}"))
            })
        }));
        (shared, abort)
    });

    let copied = copy_files(
        repo,
        &label,
        given.clone(),
        pg_major,
        opts,
        block_size,
        reference.clone(),
        wal.clone(),
    )
    .await;
    let copied = match copied {
        Ok(c) => c,
        Err(e) => {
            if let Some((_, abort)) = &wal {
                abort.abort();
            }
            return Err(e);
        }
    };
    let (wal_view, changes) = match (&reference, wal) {
        (Some(r), Some((wal, _))) => match wal.await {
            Ok(view) => {
                let c = &view.changes;
                let said = format!(
                    "changed blocks from WAL {} to {}: {} blocks in {} relations ({} records)",
                    r.start_lsn,
                    start_lsn,
                    c.blocks(),
                    c.relations(),
                    c.records
                );
                tracing::info!("{said}");
                (Some(view), Some(said))
            }
            Err(why) => {
                let said = format!("changed files found by comparing contents: {why}");
                tracing::info!("{said}");
                (None, Some(said))
            }
        },
        _ => (None, None),
    };
    for skipped in &copied.skipped {
        tracing::warn!(path = %skipped.display(), "skipped a file whose name is not UTF-8");
    }

    let stop_sql = if pg_major >= 15 {
        "SELECT lsn::text, labelfile, spcmapfile, to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile, to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM pg_stop_backup(false, false)"
    };
    let row = client
        .query_one(stop_sql, &[])
        .await
        .map_err(query("stop backup"))?;
    let stop_lsn = parse_lsn(&row.get::<_, String>(0))?;
    let backup_label: String = row.get(1);
    let tablespace_map: Option<String> = row.get::<_, Option<String>>(2).filter(|m| !m.is_empty());
    let stop_time: String = row.get(3);
    // The label PostgreSQL wrote is authoritative for the start timeline.
    if let Some(tli) = label_start_timeline(&backup_label) {
        timeline = tli;
    }
    if wal_view.is_some() && timeline != wal_timeline {
        return Err(BackupError::Precondition(format!(
            "the backup started on timeline {timeline}, not {wal_timeline} whose WAL told the changed blocks (promoted during the backup?)\nHINT: run the backup again"
        )));
    }
    let size = facts.wal_segment_size;
    let start_wal = WalFileName::segment_file_name(timeline, start_lsn.segment_no(size), size);
    // As pg_walfile_name(stop_lsn): the segment holding the byte before it.
    let stop_wal = WalFileName::segment_file_name(
        timeline,
        Lsn(stop_lsn.0.saturating_sub(1).max(start_lsn.0)).segment_no(size),
        size,
    );
    if let Some(primary) = &primary {
        // The standby's last segment is archived by the primary once it is
        // finished: finish it now.
        primary
            .query_one("SELECT pg_switch_wal()::text", &[])
            .await
            .map_err(query("switch WAL on the primary"))?;
    }
    tracing::info!(label = %label, stop_lsn = %stop_lsn, "backup stopped; confirming its WAL is archived");

    wait_for_wal(
        repo,
        &label,
        timeline,
        &start_wal,
        &stop_wal,
        facts.wal_segment_size,
        opts.wal_wait,
    )
    .await?;

    let data_size_bytes = copied.data_size;
    let stored_files = copied.stored_size;
    let depends_on: Vec<String> = copied.depends_on.into_iter().collect();
    let (file_list, file_count, list_stored) =
        copied.list.store(repo, &label, repo.compress()).await?;
    let manifest = BackupManifest {
        manifest_version: MANIFEST_VERSION,
        label: label.clone(),
        system_identifier: facts.system_identifier.to_string(),
        pg_version_num: facts.version_num,
        pg_major,
        wal_segment_size: facts.wal_segment_size.bytes(),
        timeline,
        start_lsn,
        stop_lsn,
        start_wal,
        stop_wal,
        start_time,
        stop_time,
        backup_label,
        tablespace_map,
        tablespaces: copied.tablespaces,
        directories: copied.directories,
        files: Vec::new(),
        file_list: Some(file_list),
        file_count: Some(file_count),
        data_size_bytes,
        stored_size_bytes: stored_files,
        duration_secs: started.elapsed().as_secs_f64(),
        created_by: format!("walvault {}", env!("CARGO_PKG_VERSION")),
        backup_type: reference_plan.backup_type,
        reference: reference_plan.reference.clone(),
        depends_on,
        block_size: Some(block_size),
        data_checksum_version: Some(control.data_checksum_version),
    };
    // Every file object is durable before the manifest names them.
    repo.store()
        .sync_batched()
        .await
        .map_err(|e| BackupError::Repo(RepoError::from(e)))?;
    if let Some(lock) = lock {
        let ours = lock
            .confirm()
            .await
            .map_err(|e| BackupError::Precondition(format!("confirm the repository lock: {e}")))?;
        if !ours {
            return Err(BackupError::LockLost {
                label: manifest.label.clone(),
            });
        }
    }
    let info = repo.write_manifest(&manifest).await?;
    // The summary lets listings skip the manifest; rebuilt if missing.
    if let Err(e) = repo.write_summary(&manifest).await {
        tracing::warn!(label = %manifest.label, error = %e, "backup summary not written; the next listing writes it");
    }
    Ok(BackupSummary {
        label,
        files: file_count as usize,
        data_bytes: data_size_bytes,
        stored_bytes: stored_files + list_stored + info.stored_size,
        duration: started.elapsed(),
        start_lsn,
        stop_lsn,
        backup_type: reference_plan.backup_type,
        reference: reference_plan.reference,
        changes,
    })
}

/// `START TIMELINE: N` from a backup label (PostgreSQL 11 and later).
fn label_start_timeline(label: &str) -> Option<TimelineId> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(TimelineId)
}

fn parse_lsn(text: &str) -> Result<Lsn, BackupError> {
    text.parse().map_err(|e| {
        BackupError::Precondition(format!(
            "the server returned an invalid LSN \"{text}\": {e}"
        ))
    })
}

/// What the copy of the data directory made.
struct Copied {
    list: FileListWriter,
    directories: Vec<crate::repo::manifest::DirectoryEntry>,
    tablespaces: Vec<crate::repo::manifest::TablespaceEntry>,
    skipped: Vec<PathBuf>,
    data_size: u64,
    stored_size: u64,
    depends_on: BTreeSet<String>,
}

/// How many files may be between the oldest unfinished copy and the
/// newest started one: the copies run `--jobs` at a time, in any order,
/// but their entries join the file list in walk order.
const COPY_WINDOW: usize = 512;

/// Walks the data directory and copies its files with `--jobs` workers.
/// Memory stays bounded whatever the number of files: the walk holds one
/// directory listing per level, the reference's file list is read in step
/// with the walk (both in path order), and finished entries go to a
/// temporary file list as soon as every earlier one is done.
async fn copy_files(
    repo: &Repository,
    label: &str,
    data_dir: PathBuf,
    pg_major: u32,
    opts: &BackupOptions,
    block_size: u32,
    reference: Option<BackupManifest>,
    wal: Option<(SharedWal, tokio::task::AbortHandle)>,
) -> Result<Copied, BackupError> {
    let (wal, wal_abort) = match wal {
        Some((shared, abort)) => (Some(shared), Some(abort)),
        None => (None, None),
    };
    let scan_error = |path: &PathBuf| {
        let path = path.clone();
        move |source| BackupError::Scan { path, source }
    };
    // A bar needs a total: one quick walk more, only on a terminal.
    let total_bytes = if opts.progress_bar && std::io::stderr().is_terminal() {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            scan::Walk::new(&dir, pg_major)?.try_fold(0u64, |sum, f| f.map(|f| sum + f.size))
        })
        .await
        .map_err(|e| BackupError::Precondition(format!("scan task failed: {e}")))?
        .map_err(scan_error(&data_dir))?
    } else {
        0
    };
    let done_bytes = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(total_bytes, done_bytes.clone(), opts.progress_bar);
    // Parallelism comes from the workers; one zstd thread each.
    let compress = CompressSettings {
        workers: 0,
        ..repo.compress()
    };
    let ref_block_size = reference.as_ref().and_then(|m| m.block_size);
    // A file changed within the second the reference started may keep its
    // time: only times before that second are trusted.
    let trust_mtime_before = reference
        .as_ref()
        .filter(|_| opts.trust_mtime)
        .and_then(|m| m.start_time_ts())
        .map(|t| t.as_second() - 1);
    let reference_list = match &reference {
        Some(m) => Some((m.label.clone(), repo.file_list(m).await?)),
        None => None,
    };

    // The walk, merged with the reference's list, in a blocking thread.
    type Item = (scan::ScannedFile, Option<FileEntry>);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(COPY_WINDOW);
    let walk_dir = data_dir.clone();
    let walker = tokio::task::spawn_blocking(move || -> Result<_, BackupError> {
        let mut walk = scan::Walk::new(&walk_dir, pg_major).map_err(scan_error(&walk_dir))?;
        let mut refs = reference_list
            .as_ref()
            .map(|(label, list)| (label, list.iter()));
        let mut next_ref: Option<FileEntry> = None;
        for file in walk.by_ref() {
            let file = file.map_err(scan_error(&walk_dir))?;
            let mut matched = None;
            if let Some((ref_label, entries)) = refs.as_mut() {
                loop {
                    if next_ref.is_none() {
                        next_ref = match entries.next() {
                            None => break,
                            Some(Ok(e)) => Some(e),
                            Some(Err(e)) => {
                                return Err(BackupError::Precondition(format!(
                                    "the file list of backup {ref_label}, which this backup is compared with, is damaged: {e}\nHINT: run walvault verify; take a full backup (--type full)"
                                )))
                            }
                        };
                    }
                    let Some(candidate) = &next_ref else { break };
                    match path_cmp(&candidate.path, &file.rel) {
                        std::cmp::Ordering::Less => next_ref = None,
                        std::cmp::Ordering::Equal => {
                            matched = next_ref.take();
                            break;
                        }
                        std::cmp::Ordering::Greater => break,
                    }
                }
            }
            if tx.blocking_send((file, matched)).is_err() {
                // The copy failed and stopped listening.
                break;
            }
        }
        Ok(walk.finish())
    });

    let jobs = Arc::new(tokio::sync::Semaphore::new(opts.jobs.max(1)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut window: VecDeque<tokio::task::JoinHandle<Result<Option<FileEntry>, BackupError>>> =
        VecDeque::new();
    let mut list = FileListWriter::new().map_err(|e| {
        BackupError::Precondition(format!(
            "create a temporary file for the file list: {e}\nHINT: check TMPDIR has space"
        ))
    })?;
    let (mut data_size, mut stored_size) = (0u64, 0u64);
    let mut depends_on = BTreeSet::new();
    let mut index = 0usize;
    let mut walked_all = false;
    let result: Result<(), BackupError> = async {
        loop {
            while !walked_all && window.len() < COPY_WINDOW {
                let Some((file, reference)) = rx.recv().await else {
                    walked_all = true;
                    break;
                };
                let (repo, label, done_bytes, jobs, stop, wal) = (
                    repo.clone(),
                    label.to_string(),
                    done_bytes.clone(),
                    jobs.clone(),
                    stop.clone(),
                    wal.clone(),
                );
                let file_index = index;
                index += 1;
                window.push_back(tokio::spawn(async move {
                    // A main-fork relation file waits for the WAL's word
                    // before it takes a job, so other files go on being
                    // copied meanwhile. A failed copy aborts the WAL task,
                    // which ends this wait.
                    let view = match (&wal, &reference) {
                        (Some(wal), Some(_))
                            if crate::wal::records::main_fork_file(&file.rel).is_some() =>
                        {
                            wal.clone().await.ok()
                        }
                        _ => None,
                    };
                    let _permit = jobs.acquire_owned().await.expect("never closed");
                    if stop.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    let ctx = incremental::CopyContext {
                        repo: &repo,
                        label: &label,
                        index: file_index,
                        compress,
                        block_size,
                        reference: reference.as_ref().map(|e| (e, ref_block_size)),
                        trust_mtime_before,
                        wal: view.as_deref(),
                    };
                    let entry = incremental::copy_file(&ctx, &file)
                        .await
                        .map_err(|source| BackupError::Copy {
                            path: file.rel.clone(),
                            source,
                        })?;
                    done_bytes.fetch_add(file.size, Ordering::Relaxed);
                    Ok(entry)
                }));
            }
            let Some(oldest) = window.pop_front() else {
                return Ok(());
            };
            let entry = match oldest.await {
                Ok(result) => result?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(BackupError::Precondition(format!("copy task failed: {e}"))),
            };
            // None: the file vanished during the backup.
            if let Some(entry) = entry {
                data_size += entry.size;
                stored_size += entry.stored_size;
                incremental::add_depends_on(label, &entry, &mut depends_on);
                list.push(&entry).map_err(|e| {
                    BackupError::Precondition(format!(
                        "write the temporary file list: {e}\nHINT: check TMPDIR has space"
                    ))
                })?;
            }
        }
    }
    .await;
    if result.is_err() {
        // Copies already running finish; none starts, and none waits on
        // the WAL.
        stop.store(true, Ordering::Relaxed);
        if let Some(abort) = &wal_abort {
            abort.abort();
        }
        for task in window.drain(..) {
            let _ = task.await;
        }
    }
    drop(rx);
    let walked = walker
        .await
        .map_err(|e| BackupError::Precondition(format!("scan task failed: {e}")))?;
    progress.finish();
    result?;
    let (directories, tablespaces, skipped) = walked?;
    Ok(Copied {
        list,
        directories,
        tablespaces,
        skipped,
        data_size,
        stored_size,
        depends_on,
    })
}

/// Waits until every WAL segment from `start_wal` to `stop_wal` is in the
/// repository.
async fn wait_for_wal(
    repo: &Repository,
    label: &str,
    timeline: TimelineId,
    start_wal: &str,
    stop_wal: &str,
    size: WalSegmentSize,
    wait: Duration,
) -> Result<(), BackupError> {
    let parse = |name: &str| {
        WalFileName::parse(name, size)
            .ok()
            .and_then(|n| n.segment())
            .ok_or_else(|| {
                BackupError::Precondition(format!(
                    "the server returned an invalid WAL file name \"{name}\""
                ))
            })
    };
    let (first, last) = (parse(start_wal)?, parse(stop_wal)?);
    let deadline = Instant::now() + wait;
    // Usually archived within milliseconds: poll every 5 ms for the first
    // fifth of a second (a local head is a stat, an S3 one a small
    // request), then back off.
    let mut pause = Duration::from_millis(5);
    let mut quick_polls = 40;
    let mut segment = first;
    while segment <= last {
        let name = WalFileName::Segment {
            timeline,
            segment,
            size,
        };
        let key = layout::wal_key(&name);
        match repo.store().head(&key).await {
            Ok(_) => {
                segment = match segment.next() {
                    Some(s) => s,
                    None => break,
                };
            }
            Err(StorageError::NotFound { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                if quick_polls > 0 {
                    quick_polls -= 1;
                } else {
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
            }
            Err(StorageError::NotFound { .. }) => {
                return Err(BackupError::WalMissing {
                    name: name.to_string(),
                    label: label.to_string(),
                    repo: repo.describe(),
                    secs: wait.as_secs(),
                })
            }
            Err(e) => return Err(RepoError::from(e).into()),
        }
    }
    Ok(())
}

/// Progress: a bar on a terminal, a log line every 10 s otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(total: u64, done: Arc<AtomicU64>, want_bar: bool) -> Progress {
        if want_bar && std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let b = bar.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    b.set_position(done.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            Progress {
                bar: Some(bar),
                ticker: Some(ticker),
            }
        } else {
            let ticker = tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let d = done.load(Ordering::Relaxed);
                    tracing::info!(
                        copied_mib = d >> 20,
                        total_mib = total >> 20,
                        mib_per_sec =
                            (d as f64 / 1048576.0 / started.elapsed().as_secs_f64()) as u64,
                        "backup in progress"
                    );
                }
            });
            Progress {
                bar: None,
                ticker: Some(ticker),
            }
        }
    }

    fn finish(self) {
        if let Some(t) = &self.ticker {
            t.abort();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
