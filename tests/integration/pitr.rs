//! Base backups and point-in-time recovery against a real PostgreSQL 15,
//! for the local and the S3 repository: `walvault backup`, changes, then
//! `walvault restore` to a time, an LSN, a restore point, the end of the
//! backup, or the end of the archive, and the restored cluster holds
//! exactly the rows of that moment.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use walvault::repo::{CompressSettings, Repository};
use walvault::storage::local::LocalStore;
use walvault::stream::Checksum;

use crate::harness::{give_to_postgres, run, walvault, PgCluster, Ran, S3Server, TestDir};

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Local,
    S3,
}

/// A primary archiving into a repository, and the walvault arguments
/// that reach the same repository.
pub struct Setup {
    pub dir: TestDir,
    pub repo_args: Vec<String>,
    pub local_repo: Option<PathBuf>,
    pub primary: PgCluster,
    _server: Option<S3Server>,
}

impl Setup {
    pub fn new(name: &str, backend: Backend) -> Setup {
        Setup::with_config(name, backend, None)
    }

    /// With `extra` config lines (an encryption secret, say), every
    /// command reads a config file (mode 600, owned by postgres).
    pub fn with_config(name: &str, backend: Backend, extra: Option<&str>) -> Setup {
        let dir = TestDir::new(name);
        let bin = dir.install_binaries();
        let write_config = |text: String| {
            let config = dir.path().join("walvault.toml");
            std::fs::write(&config, text).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
            give_to_postgres(&config);
            vec!["--config".to_string(), config.display().to_string()]
        };
        let (repo_args, local_repo, server) = match backend {
            Backend::Local if extra.is_some() => {
                let root = dir.subdir("repo");
                let text = format!("repo = \"{}\"\n{}\n", root.display(), extra.unwrap_or(""));
                (write_config(text), Some(root), None)
            }
            Backend::S3 if extra.is_some() => {
                let server = S3Server::start(dir.path(), "bucket");
                let text = format!(
                    "{}{}\n",
                    server.config_toml("s3://bucket/pitr"),
                    extra.unwrap_or("")
                );
                (write_config(text), None, Some(server))
            }
            Backend::Local => {
                let root = dir.subdir("repo");
                (
                    vec!["--repo".to_string(), root.display().to_string()],
                    Some(root),
                    None,
                )
            }
            Backend::S3 => {
                let server = S3Server::start(dir.path(), "bucket");
                let config = dir.path().join("walvault.toml");
                std::fs::write(&config, server.config_toml("s3://bucket/pitr")).unwrap();
                give_to_postgres(&config);
                (
                    vec!["--config".to_string(), config.display().to_string()],
                    None,
                    Some(server),
                )
            }
        };
        let mut primary = PgCluster::init(dir.path(), "primary", &[]);
        crate::harness::init_repo(&repo_args, &primary.data);
        primary.append_conf(&format!(
            "wal_level = replica\narchive_mode = on\narchive_command = '{}/walvault-push {} %p'\n",
            bin.display(),
            repo_args.join(" ")
        ));
        primary.start();
        Setup {
            dir,
            repo_args,
            local_repo,
            primary,
            _server: server,
        }
    }

    pub fn conninfo(cluster: &PgCluster) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            cluster.socket_dir.display(),
            cluster.port
        )
    }

    /// `walvault <args>` against this repository.
    pub fn walvault(&self, args: &[&str]) -> Ran {
        run(&mut self.command(args))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = walvault("walvault");
        cmd.args(&self.repo_args).args(args);
        cmd
    }

    pub fn backup(&self, cluster: &PgCluster) -> String {
        self.backup_as(cluster, &Self::conninfo(cluster))
    }

    pub fn backup_as(&self, cluster: &PgCluster, conninfo: &str) -> String {
        let out = self.walvault(&[
            "backup",
            "--pgdata",
            cluster.data.to_str().unwrap(),
            "--dbname",
            conninfo,
            "--no-progress",
        ]);
        assert_eq!(
            out.code,
            0,
            "backup failed: {}\n{}",
            out.stderr,
            cluster.server_log()
        );
        let label = out
            .stdout
            .split_whitespace()
            .nth(1)
            .expect("label in summary")
            .to_string();
        assert!(out.stdout.contains("complete"), "{}", out.stdout);
        label
    }

    /// Restores into `<dir>/<name>` with extra arguments; returns the
    /// outcome and the data directory.
    pub fn restore(&self, name: &str, args: &[&str]) -> (Ran, PathBuf) {
        let pgdata = self.dir.path().join(name);
        let mut all = vec!["restore", "--pgdata", pgdata.to_str().unwrap()];
        all.extend_from_slice(args);
        (self.walvault(&all), pgdata)
    }

    /// Restores and starts the result, waiting for recovery to finish.
    pub fn restore_and_start(&self, name: &str, args: &[&str]) -> PgCluster {
        let (out, pgdata) = self.restore(name, args);
        assert_eq!(out.code, 0, "restore {args:?} failed: {}", out.stderr);
        let mut cluster = PgCluster::existing(self.dir.path(), name, pgdata);
        cluster.start();
        cluster.wait_promoted(180);
        cluster
    }
}

/// The server's clock, as a timestamp with an explicit offset.
pub fn server_now(cluster: &PgCluster) -> String {
    cluster.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
}

fn ids(cluster: &PgCluster) -> String {
    cluster
        .sql("SELECT count(*) || ':' || coalesce(min(id), 0) || '-' || coalesce(max(id), 0) FROM t")
}

fn full_cycle_to_time(backend: Backend) {
    let setup = Setup::new("pitr-time", backend);
    let p = &setup.primary;
    p.sql("CREATE TABLE t(id int primary key, note text)");
    setup.backup(p);
    p.sql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g");
    std::thread::sleep(Duration::from_millis(1100));
    let target = server_now(p);
    std::thread::sleep(Duration::from_millis(1100));
    p.sql("INSERT INTO t SELECT g, 'after' FROM generate_series(101, 200) g");
    p.sql("DROP TABLE t");
    p.switch_and_wait_archived(120);

    // A copy that must not archive into the production repository.
    let (out, _) = setup.restore(
        "restored",
        &["--target-time", &target, "--archive-mode", "off"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("archiving  off: archive_mode = 'off'"),
        "the plan says the copy will not archive: {}",
        out.stdout
    );
    let mut restored = PgCluster::existing(
        setup.dir.path(),
        "restored",
        setup.dir.path().join("restored"),
    );
    restored.start();
    restored.wait_promoted(180);
    assert_eq!(restored.sql("SHOW archive_mode"), "off");
    assert_eq!(
        ids(&restored),
        "100:1-100",
        "exactly the rows committed before the target time"
    );
    assert_eq!(
        restored.sql("SELECT pg_is_in_recovery()"),
        "f",
        "the server has promoted"
    );
    let conf = std::fs::read_to_string(restored.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains("recovery_target_time = '") && conf.contains("+00:00'"),
        "explicit offset: {conf}"
    );
    assert!(
        conf.contains("recovery_target_timeline = '1'"),
        "explicit timeline: {conf}"
    );
}

#[test]
fn pitr_to_a_time_local() {
    full_cycle_to_time(Backend::Local);
}

#[test]
fn pitr_to_a_time_s3() {
    full_cycle_to_time(Backend::S3);
}

fn other_targets(backend: Backend) {
    let setup = Setup::new("pitr-targets", backend);
    let p = &setup.primary;
    p.sql("CREATE TABLE t(id int primary key, note text)");
    setup.backup(p);
    p.sql("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g");
    let lsn_a = p.sql("SELECT pg_current_wal_insert_lsn()");
    p.sql("INSERT INTO t SELECT g, 'b' FROM generate_series(11, 20) g");
    p.sql("SELECT pg_create_restore_point('before_c')");
    p.sql("INSERT INTO t SELECT g, 'c' FROM generate_series(21, 30) g");
    p.switch_and_wait_archived(120);

    // Each restore promotes to a new timeline and archives its history
    // file asynchronously; the next restore must see it, or PostgreSQL
    // would pick the same timeline number again.
    let probe = setup.dir.path().join("history-probe");
    let history_archived = |tli: u32| {
        let name = format!("{tli:08X}.history");
        crate::harness::wait_for(&format!("{name} archived"), 60, || {
            setup
                .walvault(&["wal-fetch", &name, probe.to_str().unwrap()])
                .code
                == 0
        });
    };
    let r = setup.restore_and_start("by-lsn", &["--target-lsn", &lsn_a]);
    assert_eq!(ids(&r), "10:1-10", "--target-lsn");
    history_archived(2);
    drop(r);
    let r = setup.restore_and_start("by-name", &["--target-name", "before_c"]);
    assert_eq!(ids(&r), "20:1-20", "--target-name");
    history_archived(3);
    drop(r);
    let r = setup.restore_and_start("immediate", &["--target-immediate"]);
    assert_eq!(
        ids(&r),
        "0:0-0",
        "--target-immediate: the backup's own moment"
    );
    history_archived(4);
    drop(r);
    // The restore to the backup's end branched timeline 4 from timeline 3
    // at a point before timeline 3's own branch point: PostgreSQL wrote a
    // history file whose switch points go back, and walvault-push took it.
    let out = setup.walvault(&["list", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let tl4 = json["wal"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["timeline"] == 4)
        .unwrap_or_else(|| panic!("timeline 4's history was archived: {}", out.stdout));
    assert_eq!(tl4["parent"], 3, "{tl4}");
    // The end of the archive follows the newest timeline, 4, as
    // recovery_target_timeline = 'latest' would, and the plan says so;
    // timeline 4 holds nothing after the backup's end.
    let (out, _) = setup.restore("end-latest", &["--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("on timeline 4"), "{}", out.stdout);
    let r = setup.restore_and_start("end", &["--target-timeline", "1"]);
    assert_eq!(
        ids(&r),
        "30:1-30",
        "no target: the end of the archive on timeline 1"
    );
}

#[test]
fn pitr_other_targets_local() {
    other_targets(Backend::Local);
}

#[test]
fn pitr_other_targets_s3() {
    other_targets(Backend::S3);
}

/// Hashes every file of a restored data directory against its manifest.
fn assert_matches_manifest(repo_root: &Path, label: &str, pgdata: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let repo = Repository::new(
        std::sync::Arc::new(LocalStore::new(repo_root).unwrap()),
        CompressSettings::default(),
    );
    let manifest = rt.block_on(repo.read_manifest(label)).expect("manifest");
    assert!(
        manifest.files.is_empty(),
        "version 3: the list is its own object"
    );
    let list = rt.block_on(repo.file_list(&manifest)).expect("file list");
    let files: Vec<_> = list
        .iter()
        .collect::<Result<_, _>>()
        .expect("a clean file list");
    assert_eq!(files.len() as u64, manifest.file_count());
    assert!(
        files.len() > 500,
        "a real data directory: {} files",
        files.len()
    );
    for f in &files {
        // The one file restore changes on purpose: it adds the recovery settings.
        if f.path == "postgresql.auto.conf" {
            continue;
        }
        let data =
            std::fs::read(pgdata.join(&f.path)).unwrap_or_else(|e| panic!("{}: {e}", f.path));
        assert_eq!(data.len() as u64, f.size, "{}", f.path);
        assert_eq!(
            Checksum::of(&data),
            f.checksum,
            "{} matches the manifest checksum",
            f.path
        );
    }
}

#[test]
fn backup_under_load_restores_consistent() {
    let setup = Setup::new("pitr-load", Backend::Local);
    let p = &setup.primary;
    crate::harness::run_ok(
        p.client("pgbench")
            .args(["-i", "-s", "5", "-q", "postgres"]),
    );
    let mut load = p.client("pgbench");
    load.args(["-n", "-c", "2", "-T", "8", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut load = load.spawn().expect("start pgbench");
    std::thread::sleep(Duration::from_millis(500));
    let label = setup.backup(p);
    let status = load.wait().expect("pgbench");
    assert!(status.success());
    p.switch_and_wait_archived(120);
    let expected = p.sql("SELECT sum(abalance) || ':' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts");

    let (out, pgdata) = setup.restore("restored", &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_matches_manifest(setup.local_repo.as_ref().unwrap(), &label, &pgdata);
    let mut r = PgCluster::existing(setup.dir.path(), "restored", pgdata);
    r.start();
    r.wait_promoted(180);
    assert_eq!(r.sql("SELECT sum(abalance) || ':' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts"), expected);
    r.sql("CREATE EXTENSION amcheck");
    let checked = r.sql(
        "SELECT count(bt_index_check(c.oid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_am am ON am.oid = c.relam WHERE am.amname = 'btree' AND c.relname LIKE 'pgbench%'",
    );
    assert_eq!(checked, "3", "bt_index_check passed on the pgbench indexes");
}

#[test]
fn restore_refuses_what_it_cannot_do_safely() {
    let setup = Setup::new("pitr-refuse", Backend::Local);
    let p = &setup.primary;
    let before_any_backup = server_now(p);
    std::thread::sleep(Duration::from_millis(1100));
    p.sql("CREATE TABLE t(id int primary key, note text)");
    // The backup runs as the least-privilege role of sql/walvault_role.sql.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/walvault_role.sql");
    std::fs::copy(script, setup.dir.path().join("role.sql")).unwrap();
    give_to_postgres(&setup.dir.path().join("role.sql"));
    crate::harness::run_ok(
        p.psql_cmd()
            .arg("-f")
            .arg(setup.dir.path().join("role.sql")),
    );
    assert_eq!(
        p.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'walvault'"),
        "f"
    );
    let as_role = format!(
        "host={} port={} user=walvault dbname=postgres",
        p.socket_dir.display(),
        p.port
    );
    setup.backup_as(p, &as_role);
    p.switch_and_wait_archived(120);

    // A time before any backup.
    let (out, pgdata) = setup.restore("early", &["--target-time", &before_any_backup]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("no backup ended before"),
        "{}",
        out.stderr
    );
    assert!(!pgdata.exists(), "nothing was written");

    // A time without a zone.
    let (out, _) = setup.restore("nozone", &["--target-time", "2026-11-21 10:29:59"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("time zone"), "{}", out.stderr);

    // Beyond the archive.
    let (out, _) = setup.restore("future", &["--target-time", "2999-01-01 00:00:00+00"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.to_lowercase().contains("archive"),
        "{}",
        out.stderr
    );

    // A non-empty directory is refused; --force moves it aside.
    let busy = setup.dir.subdir("busy");
    std::fs::write(busy.join("precious.txt"), "keep me").unwrap();
    let (out, _) = setup.restore("busy", &[]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("not empty") && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(busy.join("precious.txt")).unwrap(),
        "keep me"
    );
    let (out, _) = setup.restore("busy", &["--force"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let moved: Vec<_> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("busy.walvault-moved-")
        })
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        std::fs::read_to_string(moved[0].join("precious.txt")).unwrap(),
        "keep me",
        "old contents kept aside"
    );
    assert!(
        busy.join("global/pg_control").is_file(),
        "restored into the emptied directory"
    );

    // --dry-run writes nothing and shows the plan.
    let (out, pgdata) = setup.restore("dry", &["--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("backup") && out.stdout.contains("WAL"),
        "{}",
        out.stdout
    );
    assert!(!pgdata.exists());
}

#[test]
fn second_restore_after_promotion_and_pitr_on_timeline_2() {
    let setup = Setup::new("pitr-timeline", Backend::Local);
    let p = &setup.primary;
    p.sql("CREATE TABLE t(id int primary key, note text)");
    setup.backup(p);
    p.sql("INSERT INTO t SELECT g, 'tl1' FROM generate_series(1, 10) g");
    p.switch_and_wait_archived(120);
    drop(setup.primary.sql("SELECT 1"));

    // Failover: a restore promotes to timeline 2 and keeps archiving into
    // the same repository (its postgresql.conf came with the backup).
    let r1 = setup.restore_and_start("failover", &[]);
    assert_eq!(
        r1.sql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    r1.sql("INSERT INTO t SELECT g, 'tl2' FROM generate_series(11, 20) g");
    std::thread::sleep(Duration::from_millis(1100));
    let target = server_now(&r1);
    std::thread::sleep(Duration::from_millis(1100));
    r1.sql("INSERT INTO t SELECT g, 'tl2-late' FROM generate_series(21, 30) g");
    r1.switch_and_wait_archived(120);

    // A second restore from the same backup, along timeline 2 to a time on it.
    let r2 = setup.restore_and_start("second", &["--target-time", &target]);
    assert_eq!(ids(&r2), "20:1-20", "PITR along timeline 2");
    let conf = std::fs::read_to_string(r2.data.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("recovery_target_timeline = '2'"), "{conf}");

    // Timeline 1 explicitly: only what happened there.
    let r3 = setup.restore_and_start("tl1", &["--target-timeline", "1"]);
    assert_eq!(ids(&r3), "10:1-10");
}

#[test]
fn tablespaces_restore_to_a_new_place_and_list_describes_the_repository() {
    let setup = Setup::new("pitr-tablespace", Backend::Local);
    let p = &setup.primary;
    let ts_dir = setup.dir.subdir("ts1");
    p.sql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        ts_dir.display()
    ));
    p.sql("CREATE TABLE big(id int primary key, note text) TABLESPACE ts1");
    p.sql("INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g");
    let label = setup.backup(p);
    p.sql("INSERT INTO big SELECT g, 'late' FROM generate_series(20001, 20100) g");
    p.switch_and_wait_archived(120);
    let oid = p.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");

    // The original location holds the primary's tablespace: refused, nothing written.
    let (out, pgdata) = setup.restore("same-place", &[]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("not empty") && out.stderr.contains("--tablespace-map"),
        "{}",
        out.stderr
    );
    assert!(!pgdata.exists(), "nothing was written");

    let new_location = setup.dir.path().join("ts1-restored");
    let r = setup.restore_and_start(
        "ts-restored",
        &[
            "--tablespace-map",
            &format!("{oid}={}", new_location.display()),
        ],
    );
    assert_eq!(
        r.sql("SELECT count(*) FROM big"),
        "20100",
        "the table in the tablespace is whole"
    );
    assert_eq!(
        r.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'"),
        new_location.display().to_string()
    );
    assert!(new_location
        .join(format!(
            "PG_15_{}",
            r.sql("SELECT catalog_version_no FROM pg_control_system()")
        ))
        .is_dir());

    // list --json: the documented schema.
    let out = setup.walvault(&["list", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let backups = json["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0]["label"], label.as_str());
    assert_eq!(backups[0]["status"], "complete");
    assert_eq!(backups[0]["timeline"], 1);
    assert!(backups[0]["data_size_bytes"].as_u64().unwrap() > 2_000_000);
    let tl1 = json["wal"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["timeline"] == 1)
        .unwrap();
    assert!(tl1["segments"].as_u64().unwrap() >= 2);
    assert_eq!(tl1["gaps"].as_array().unwrap().len(), 0);
    assert!(
        json["recovery_window"]["from"].is_string() && json["recovery_window"]["to"].is_string()
    );
    let human = setup.walvault(&["list"]);
    assert!(
        human.stdout.contains(&label) && human.stdout.contains("recoverable: from"),
        "{}",
        human.stdout
    );
}

/// After a PITR promoted timeline 2 while timeline 1 had gone on, a target
/// both timelines passed after they diverged is refused, naming both and
/// `--target-timeline`; `list` shows where timeline 2 branched.
#[test]
fn ambiguous_targets_after_a_branch_are_refused() {
    let setup = Setup::new("pitr-ambiguous", Backend::Local);
    let p = &setup.primary;
    p.sql("CREATE TABLE t(id int primary key, note text)");
    setup.backup(p);
    p.sql("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g");
    let lsn_a = p.sql("SELECT pg_current_wal_insert_lsn()");
    p.sql("INSERT INTO t SELECT g, 'b' FROM generate_series(11, 20) g");
    let lsn_b = p.sql("SELECT pg_current_wal_insert_lsn()");
    std::thread::sleep(Duration::from_millis(1100));
    let time_b = server_now(p);
    std::thread::sleep(Duration::from_millis(1100));
    p.sql("INSERT INTO t SELECT g, 'c' FROM generate_series(21, 30) g");
    p.switch_and_wait_archived(120);

    // Branch at lsn_a: timeline 2 writes rows of its own and archives them.
    let r = setup.restore_and_start("branch", &["--target-lsn", &lsn_a]);
    assert_eq!(ids(&r), "10:1-10");
    r.sql("INSERT INTO t SELECT g, 'tl2' FROM generate_series(101, 110) g");
    r.switch_and_wait_archived(120);
    drop(r);

    for target in [
        ["--target-lsn", lsn_b.as_str()],
        ["--target-time", time_b.as_str()],
    ] {
        let (out, pgdata) = setup.restore("ambiguous", &target);
        assert_eq!(out.code, 8, "{target:?}: {}\n{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains("is ambiguous")
                && out.stderr.contains("timeline 1,")
                && out
                    .stderr
                    .contains("timeline 2, branched from timeline 1 at")
                && out.stderr.contains("--target-timeline"),
            "{target:?}: {}",
            out.stderr
        );
        assert!(!pgdata.exists(), "nothing was written");
    }
    let r1 = setup.restore_and_start("tl1", &["--target-lsn", &lsn_b, "--target-timeline", "1"]);
    assert_eq!(ids(&r1), "20:1-20", "timeline 1 at lsn_b");
    drop(r1);
    let r2 = setup.restore_and_start("tl2", &["--target-time", &time_b, "--target-timeline", "2"]);
    assert_eq!(
        ids(&r2),
        "10:1-10",
        "timeline 2 had not written its rows by time_b"
    );
    drop(r2);
    // Before the branch both timelines agree: no --target-timeline needed.
    let out = setup.walvault(&["list", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let tl2 = json["wal"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["timeline"] == 2)
        .expect("timeline 2 listed");
    assert_eq!(tl2["parent"], 1, "{tl2}");
    assert!(tl2["branch_point"].as_str().unwrap().contains('/'), "{tl2}");
}

/// A segment removed from the archive after a backup (a `find -delete`, a
/// lifecycle rule): restoring to the end of the archive is refused before
/// anything is written, naming the missing file and the next archived one
/// (replay would stop there and lose what follows); a target before the
/// gap is still planned; `status` is CRITICAL (exit 2) and names the
/// segment.
#[test]
fn a_gap_in_the_archive_is_refused_and_reported() {
    let setup = Setup::new("pitr-gap", Backend::Local);
    let p = &setup.primary;
    p.sql("CREATE TABLE t(id int)");
    let label = setup.backup(p);
    p.sql("INSERT INTO t VALUES (1)");
    let before_gap = p.sql("SELECT pg_current_wal_lsn()");
    p.switch_and_wait_archived(120);
    p.sql("INSERT INTO t VALUES (2)");
    let lost = p.switch_and_wait_archived(120);
    p.sql("INSERT INTO t VALUES (3)");
    let next = p.switch_and_wait_archived(120);
    let repo = setup.local_repo.as_ref().unwrap();
    std::fs::remove_file(crate::harness::wal::object_path(repo, &lost)).unwrap();

    let (out, pgdata) = setup.restore("gap", &[]);
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "WAL file {lost} is missing from the archive, but later WAL on the restore path is archived"
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("HINT: "), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("(next: {next})")),
        "{}",
        out.stderr
    );
    assert!(!pgdata.exists(), "nothing was written");

    let (out, pgdata) = setup.restore("before-gap", &["--target-lsn", &before_gap, "--dry-run"]);
    assert_eq!(out.code, 0, "a target before the gap: {}", out.stderr);
    assert!(!pgdata.exists());

    let out = setup.walvault(&["status"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains(&format!(
            "WAL segment {lost} is missing from the archive: recovery from backup {label} stops before it"
        )),
        "{text}"
    );
}
