//! `walvault verify --restore`: the proof that a backup restores.
//!
//! Restores the newest backup (to its own end, `--target-immediate`, then
//! promote) into a scratch directory, starts PostgreSQL there on a private
//! Unix socket with archiving off (a verification run must never archive
//! into the production repository) and its own trust-only pg_hba, waits
//! for recovery to reach consistency, runs amcheck's `bt_index_check` on
//! every btree index of every database where the extension is available,
//! stops the server and removes the scratch directory, whatever happened.
//!
//! PostgreSQL refuses to run as root: run as root, walvault runs the server
//! as `--run-as` (default `postgres`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::repo::{RepoError, Repository};
use crate::restore::apply::{apply, plan, RestoreError, RestoreOptions};
use crate::restore::plan::BackupChoice;
use crate::restore::recovery_conf::TargetAction;
use crate::restore::target::RecoveryTarget;

#[derive(Debug, Clone)]
pub struct RestoreVerifyOptions {
    /// Where the scratch directory goes (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
    /// PostgreSQL's bin directory (default: /usr/lib/postgresql/<major>/bin,
    /// then `pg_config --bindir`).
    pub pg_bin: Option<PathBuf>,
    /// The OS user to run PostgreSQL as when walvault runs as root.
    pub run_as: String,
    pub restore_command: String,
    pub jobs: usize,
    /// How long recovery may take.
    pub timeout: Duration,
    /// Where recovery stops: `Immediate` (the end of the backup) or a
    /// drill's target time.
    pub target: RecoveryTarget,
    /// A drill's `--check-sql` statements, run in `check_db`.
    pub checks: Vec<super::drill::Check>,
    pub check_db: String,
}

#[derive(Debug, serde::Serialize)]
pub struct RestoreVerifyReport {
    pub backup_label: String,
    pub duration_secs: f64,
    pub databases_checked: usize,
    pub indexes_checked: u64,
    /// Databases where amcheck is not available.
    pub amcheck_unavailable: Vec<String>,
    pub problems: Vec<String>,
    /// Where recovery was asked to stop.
    pub target: String,
    /// WAL replayed, from the backup's start to where recovery stopped.
    pub wal_replayed_bytes: u64,
    pub checks_passed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreVerifyError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("restore for verification: {0}")]
    Restore(#[from] RestoreError),
    #[error("{0}")]
    Setup(String),
    #[error(
        "the restored cluster did not start or recover: {reason}\nserver log (last lines):\n{log}"
    )]
    Server { reason: String, log: String },
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> RestoreVerifyError + '_ {
    move |e| RestoreVerifyError::Setup(format!("{what}: {e}"))
}

/// uid and gid of a user, from the password database.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns null or a pointer to a static record that we
    // read immediately; walvault does not call it from several threads.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command for a PostgreSQL program, as `run_as` when we are root.
fn pg_command(bin: &Path, program: &str, run_as: &str) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", run_as, "--"]).arg(bin.join(program));
        cmd
    } else {
        Command::new(bin.join(program))
    }
}

fn find_pg_bin(given: Option<&PathBuf>, major: u32) -> Result<PathBuf, RestoreVerifyError> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if debian.join("pg_ctl").is_file() {
        return Ok(debian);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("pg_ctl").is_file() {
            return Ok(dir);
        }
    }
    Err(RestoreVerifyError::Setup(format!(
        "PostgreSQL {major} binaries not found\nHINT: install PostgreSQL {major} or pass --pg-bin DIR"
    )))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A backup restored into a scratch directory and running there on a
/// private socket, archiving off; stopped and removed when dropped.
pub struct Scratch {
    // Dropped in this order: the server stops before its directory goes.
    _server: Server,
    dir: tempfile::TempDir,
    pub socket_dir: PathBuf,
    pub bin: PathBuf,
    pub run_as: String,
    pub label: String,
    pub start_lsn: crate::wal::Lsn,
    pub log: PathBuf,
    pgdata: PathBuf,
}

impl Scratch {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command for a PostgreSQL program of the backup's major, run as
    /// the server's user when walvault is root.
    pub fn pg_command(&self, program: &str) -> Command {
        pg_command(&self.bin, program, &self.run_as)
    }

    /// The server's log, its last lines.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 20)
    }

    /// Gives a file in the scratch directory to the server's user.
    pub fn give(&self, path: &Path) {
        if is_root() {
            if let Some((uid, gid)) = user_ids(&self.run_as) {
                let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
            }
        }
    }
}

/// Restores the backup `opts.target` needs into a scratch directory and
/// starts PostgreSQL there, private and never archiving. `check` sees the
/// plan and the scratch directory before anything is written (room for
/// it, say).
pub async fn start_scratch(
    repo: &Repository,
    opts: &RestoreVerifyOptions,
    check: impl FnOnce(&crate::restore::plan::RestorePlan, &Path) -> Result<(), RestoreVerifyError>,
) -> Result<Scratch, RestoreVerifyError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("walvault-verify-");
    let scratch = match &opts.work_dir {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .map_err(setup("create scratch directory"))?;
    let owner = if is_root() {
        let ids = user_ids(&opts.run_as).ok_or_else(|| {
            RestoreVerifyError::Setup(format!(
                "user \"{}\" does not exist\nHINT: PostgreSQL cannot run as root; pass --run-as USER",
                opts.run_as
            ))
        })?;
        std::os::unix::fs::chown(scratch.path(), Some(ids.0), Some(ids.1))
            .map_err(setup("chown scratch directory"))?;
        Some(ids)
    } else {
        None
    };
    let pgdata = scratch.path().join("data");
    let mut restore_opts = RestoreOptions {
        pgdata: pgdata.clone(),
        backup: BackupChoice::Latest,
        target: opts.target.clone(),
        target_timeline: None,
        target_action: Some(TargetAction::Promote),
        inclusive: true,
        standby: false,
        force: false,
        jobs: opts.jobs,
        restore_command: opts.restore_command.clone(),
        tablespace_map: Default::default(),
        archive_off: true,
        delta: false,
        delta_force_checksum: false,
    };
    let planned = plan(repo, &restore_opts).await?;
    check(&planned, scratch.path())?;
    // Tablespaces go inside the scratch directory too, never over the
    // production cluster's tablespace directories.
    restore_opts.tablespace_map = planned
        .backup
        .tablespaces
        .iter()
        .map(|t| (t.oid, scratch.path().join(format!("tablespace-{}", t.oid))))
        .collect();
    let label = planned.backup.label.clone();
    let start_lsn = planned.backup.start_lsn;
    let major = planned.backup.pg_major;
    let bin = find_pg_bin(opts.pg_bin.as_ref(), major)?;
    apply(repo, planned, &restore_opts).await?;

    // A private, non-archiving server. These settings go on the server's
    // command line, which beats postgresql.conf and postgresql.auto.conf
    // (where ALTER SYSTEM puts archive_mode and archive_command): the
    // scratch server must never archive its new timeline into the
    // repository. Its restore_command opens the repository read-only.
    let socket_dir = scratch.path().to_path_buf();
    let hba = scratch.path().join("pg_hba_verify.conf");
    std::fs::write(&hba, "local all all trust\n").map_err(setup("write pg_hba"))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&hba, Some(uid), Some(gid)).map_err(setup("chown"))?;
    }
    let server_options = plan_scratch_server_options(&socket_dir, &hba);
    let log = scratch.path().join("server.log");
    let server = Server {
        bin: bin.clone(),
        pgdata: pgdata.clone(),
        run_as: opts.run_as.clone(),
    };
    let out = pg_command(&bin, "pg_ctl", &opts.run_as)
        .arg("-D")
        .arg(&pgdata)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(&server_options)
        .args([
            "-w",
            "-t",
            &opts.timeout.as_secs().max(10).to_string(),
            "start",
        ])
        .output()
        .map_err(setup("run pg_ctl"))?;
    if !out.status.success() {
        return Err(RestoreVerifyError::Server {
            reason: format!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            log: tail(&log, 20),
        });
    }
    Ok(Scratch {
        _server: server,
        dir: scratch,
        socket_dir,
        bin,
        run_as: opts.run_as.clone(),
        label,
        start_lsn,
        log,
        pgdata,
    })
}

/// Waits until the scratch server has recovered and been promoted, and
/// returns a connection to `dbname`.
pub async fn wait_recovered(
    scratch: &Scratch,
    dbname: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Client, RestoreVerifyError> {
    let users = ["postgres", scratch.run_as.as_str()];
    let deadline = Instant::now() + timeout;
    loop {
        // A server that stopped (recovery failed: a target past the end of
        // the archived WAL, say) is not waited for.
        if !scratch.pgdata.join("postmaster.pid").exists() {
            return Err(RestoreVerifyError::Server {
                reason: "the server stopped during recovery".to_string(),
                log: scratch.log_tail(),
            });
        }
        match connect(&scratch.socket_dir, dbname, &users).await {
            Ok(c) => match c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                Ok(row) if !row.get::<_, bool>(0) => return Ok(c),
                _ => {}
            },
            Err(e) if Instant::now() > deadline => {
                return Err(RestoreVerifyError::Server {
                    reason: format!("no connection within {}s: {e}", timeout.as_secs()),
                    log: scratch.log_tail(),
                })
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return Err(RestoreVerifyError::Server {
                reason: format!("recovery did not finish within {}s", timeout.as_secs()),
                log: scratch.log_tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Restores the newest backup (or the one a drill's target needs) into a
/// scratch directory, starts it, checks it, and removes it.
pub async fn run_restore_verify(
    repo: &Repository,
    opts: &RestoreVerifyOptions,
) -> Result<RestoreVerifyReport, RestoreVerifyError> {
    let started = Instant::now();
    let scratch = start_scratch(repo, opts, |_, _| Ok(())).await?;
    let result = check_cluster(&scratch, opts.timeout).await;
    let drill = match &result {
        Ok(_) => Some(run_checks(&scratch.socket_dir, &opts.run_as, opts, scratch.start_lsn).await),
        Err(_) => None,
    };
    let label = scratch.label.clone();
    drop(scratch);
    let (databases_checked, indexes_checked, amcheck_unavailable, mut problems) = result?;
    let (wal_replayed_bytes, checks_passed, failed_checks) = drill.unwrap_or_default();
    problems.extend(failed_checks);
    Ok(RestoreVerifyReport {
        backup_label: label,
        duration_secs: started.elapsed().as_secs_f64(),
        databases_checked,
        indexes_checked,
        amcheck_unavailable,
        problems,
        target: describe_target(&opts.target),
        wal_replayed_bytes,
        checks_passed,
    })
}

/// A recovery target in words, for records and messages.
pub fn describe_target(target: &RecoveryTarget) -> String {
    match target {
        RecoveryTarget::Immediate => "immediate".to_string(),
        RecoveryTarget::EndOfArchive => "end of archive".to_string(),
        RecoveryTarget::Time(t) => t.to_string(),
        RecoveryTarget::Lsn(l) => l.to_string(),
        RecoveryTarget::Xid(x) => format!("xid {x}"),
        RecoveryTarget::Name(n) => format!("restore point {n}"),
    }
}

/// After recovery: how much WAL was replayed, and the drill's checks
/// (passed, and a problem line for each that failed).
async fn run_checks(
    socket_dir: &Path,
    run_as: &str,
    opts: &RestoreVerifyOptions,
    start_lsn: crate::wal::Lsn,
) -> (u64, usize, Vec<String>) {
    let users = ["postgres", run_as];
    let mut problems = Vec::new();
    let mut replayed = 0;
    if let Ok(c) = connect(socket_dir, "postgres", &users).await {
        if let Ok(row) = c
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await
        {
            let text: Option<String> = row.get(0);
            if let Some(lsn) = text.and_then(|t| t.parse::<crate::wal::Lsn>().ok()) {
                replayed = lsn.0.saturating_sub(start_lsn.0);
            }
        }
    }
    if opts.checks.is_empty() {
        return (replayed, 0, problems);
    }
    let client = match connect(socket_dir, &opts.check_db, &users).await {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!(
                "checks: cannot connect to database \"{}\": {e}",
                opts.check_db
            ));
            return (replayed, 0, problems);
        }
    };
    let mut passed = 0;
    for check in &opts.checks {
        let got = client
            .simple_query(&check.sql)
            .await
            .map(|messages| {
                messages.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => {
                        Some(row.get(0).map(str::to_string))
                    }
                    _ => None,
                })
            })
            .map_err(|e| match e.as_db_error() {
                Some(db) => db.message().to_string(),
                None => e.to_string(),
            });
        match super::drill::judge_check(check, got) {
            None => passed += 1,
            Some(problem) => problems.push(problem),
        }
    }
    (replayed, passed, problems)
}

/// The scratch server's settings, as `postgres` options for `pg_ctl -o`
/// (pg_ctl hands them to a shell, so values are shell-quoted).
pub fn plan_scratch_server_options(socket_dir: &Path, hba: &Path) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
    [
        ("listen_addresses", String::new()),
        ("unix_socket_directories", socket_dir.display().to_string()),
        ("port", "5432".to_string()),
        ("hba_file", hba.display().to_string()),
        ("archive_mode", "off".to_string()),
        // Beside production: small, and no huge pages to take from it.
        ("shared_buffers", "128MB".to_string()),
        ("huge_pages", "off".to_string()),
        ("archive_command", String::new()),
        ("shared_preload_libraries", String::new()),
        ("ssl", "off".to_string()),
        ("logging_collector", "off".to_string()),
        ("primary_conninfo", String::new()),
        // Nothing reaches out from the scratch server: no subscription
        // applies (it would connect to production publishers), no
        // commands of the backed-up configuration run.
        ("max_logical_replication_workers", "0".to_string()),
        ("recovery_end_command", String::new()),
        ("archive_cleanup_command", String::new()),
    ]
    .iter()
    .map(|(name, value)| format!("-c {}", quote(&format!("{name}={value}"))))
    .collect::<Vec<_>>()
    .join(" ")
}

/// Stops the scratch server on every path out.
struct Server {
    bin: PathBuf,
    pgdata: PathBuf,
    run_as: String,
}

impl Server {
    fn stop(&self) {
        let _ = pg_command(&self.bin, "pg_ctl", &self.run_as)
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.pgdata.join("postmaster.pid").exists() {
            self.stop();
        }
    }
}

type Checked = (usize, u64, Vec<String>, Vec<String>);

async fn connect(
    socket_dir: &Path,
    dbname: &str,
    users: &[&str],
) -> Result<tokio_postgres::Client, String> {
    let mut last = String::new();
    for user in users {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(socket_dir)
            .port(5432)
            .user(*user)
            .dbname(dbname)
            .application_name("walvault verify");
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Ok(client);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

async fn check_cluster(
    scratch: &Scratch,
    timeout: Duration,
) -> Result<Checked, RestoreVerifyError> {
    let socket_dir = scratch.socket_dir.as_path();
    let users = ["postgres", scratch.run_as.as_str()];
    let log = scratch.log.as_path();
    // Recovery to the target, then promotion.
    let client = wait_recovered(scratch, "postgres", timeout).await?;
    let databases: Vec<String> = client
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .await
        .map_err(|e| RestoreVerifyError::Server {
            reason: format!("list databases: {e}"),
            log: tail(log, 20),
        })?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut indexes = 0u64;
    let mut unavailable = Vec::new();
    let mut problems = Vec::new();
    for db in &databases {
        let c = match connect(socket_dir, db, &users).await {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("database \"{db}\": cannot connect: {e}"));
                continue;
            }
        };
        let available = c
            .query_opt(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'",
                &[],
            )
            .await
            .map(|r| r.is_some())
            .unwrap_or(false);
        if !available {
            unavailable.push(db.clone());
            continue;
        }
        if let Err(e) = c
            .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            .await
        {
            problems.push(format!("database \"{db}\": create extension amcheck: {e}"));
            continue;
        }
        let rows = c
            .query(
                "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_am am ON am.oid = c.relam WHERE am.amname = 'btree' AND c.relpersistence <> 't' \
                 AND i.indisvalid AND i.indisready ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| RestoreVerifyError::Server {
                reason: format!("list indexes of \"{db}\": {e}"),
                log: tail(log, 20),
            })?;
        for row in rows {
            let index: String = row.get(0);
            match c
                .execute("SELECT bt_index_check($1::text::regclass)", &[&index])
                .await
            {
                Ok(_) => indexes += 1,
                Err(e) => problems.push(format!("database \"{db}\", index {index}: {e}")),
            }
        }
    }
    Ok((databases.len(), indexes, unavailable, problems))
}
