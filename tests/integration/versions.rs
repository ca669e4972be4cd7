//! One end-to-end scenario per PostgreSQL major, 12 to 18, each against
//! that major's own server binaries (scripts/install-pg-majors):
//! - archiving through walvault-push while pgbench writes, every archived
//!   file fetched back byte-identical;
//! - `walvault backup` under write load, and an incremental one whose
//!   changed blocks come from that major's WAL (compressed full-page
//!   images included), which the PITR restores below start from;
//! - PITR to a time and to an LSN, with exact rows;
//! - a promotion to timeline 2, a restore that follows it, an
//!   incremental on timeline 2 (whose reference is on timeline 1, so it
//!   compares contents) restored exactly, and `verify --restore`.
//!
//! Small on purpose (1 MiB WAL segments, a small pgbench scale) so the
//! seven run side by side within the suite's time.

use std::time::Duration;

use crate::harness::{init_repo, pg_server_bin, run, run_ok, walvault, PgCluster, TestDir};

fn conninfo(c: &PgCluster) -> String {
    format!(
        "host={} port={} user=postgres dbname=postgres",
        c.socket_dir.display(),
        c.port
    )
}

fn server_now(c: &PgCluster) -> String {
    c.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
}

fn ids(c: &PgCluster) -> String {
    c.sql("SELECT count(*) || ':' || coalesce(min(id), 0) || '-' || coalesce(max(id), 0) FROM t")
}

fn scenario(major: u32) {
    let server_bin = pg_server_bin(major);
    let dir = TestDir::new(&format!("pg{major}"));
    let bin = dir.install_binaries();
    let repo = dir.subdir("repo");
    let originals = dir.subdir("originals");
    let args = vec!["--repo".to_string(), repo.display().to_string()];
    let walvault_in = |a: &[&str]| {
        let mut cmd = walvault("walvault");
        cmd.args(&args).args(a);
        run(&mut cmd)
    };
    // `walvault backup` of cluster `c` with `extra` arguments.
    let backup_of = |c: &PgCluster, extra: &[&str]| {
        let (data, conn) = (c.data.display().to_string(), conninfo(c));
        let mut a = vec![
            "backup",
            "--pgdata",
            &data,
            "--dbname",
            &conn,
            "--no-progress",
        ];
        a.extend_from_slice(extra);
        walvault_in(&a)
    };
    // Two pgbench clients writing for `secs` seconds, in the background.
    let pgbench_load = |c: &PgCluster, secs: &str| {
        let mut load = c.client("pgbench");
        load.args(["-n", "-c", "2", "-T", secs, "postgres"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        load.spawn().expect("pgbench")
    };

    let mut p = PgCluster::init_with(dir.path(), "primary", &server_bin, &["--wal-segsize=1"]);
    init_repo(&args, &p.data);
    p.append_conf(&format!(
        "wal_level = replica\nwal_compression = on\narchive_mode = on\narchive_command = '{}/walvault-push --repo {} %p && cp %p {}/%f'\n",
        bin.display(),
        repo.display(),
        originals.display()
    ));
    p.start();
    assert_eq!(
        p.sql("SELECT current_setting('server_version_num')::int / 10000"),
        major.to_string()
    );
    run_ok(
        p.client("pgbench")
            .args(["-i", "-s", "1", "-q", "postgres"]),
    );
    p.sql("CREATE TABLE t(id int primary key, note text)");

    // A backup while pgbench writes.
    let mut load = pgbench_load(&p, "4");
    let out = backup_of(&p, &[]);
    assert_eq!(out.code, 0, "PostgreSQL {major} backup: {}", out.stderr);
    let _ = load.wait();

    // An incremental under load: its changed blocks come from WAL.
    let mut load = pgbench_load(&p, "3");
    std::thread::sleep(Duration::from_millis(1000));
    let out = backup_of(&p, &["--type", "incr"]);
    assert_eq!(out.code, 0, "PostgreSQL {major} incr: {}", out.stderr);
    assert!(
        out.stdout.contains("(incr on") && out.stdout.contains("changed blocks from WAL"),
        "PostgreSQL {major} incr: {}",
        out.stdout
    );
    let _ = load.wait();

    p.sql("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g");
    let lsn_a = p.sql("SELECT pg_current_wal_insert_lsn()");
    p.sql("INSERT INTO t SELECT g, 'b' FROM generate_series(11, 20) g");
    std::thread::sleep(Duration::from_millis(1100));
    let time_b = server_now(&p);
    std::thread::sleep(Duration::from_millis(1100));
    p.sql("INSERT INTO t SELECT g, 'c' FROM generate_series(21, 30) g");
    p.switch_and_wait_archived(120);

    // Every archived file fetches back byte-identical.
    let pgdata = dir.subdir("fetch");
    std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
    let mut fetched = 0;
    for entry in std::fs::read_dir(&originals).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let out = run(walvault("walvault-fetch")
            .args(&args)
            .args([name.as_str(), "pg_wal/RECOVERYXLOG"])
            .current_dir(&pgdata));
        assert_eq!(
            out.code, 0,
            "PostgreSQL {major}: fetch {name}: {}",
            out.stderr
        );
        assert!(
            std::fs::read(pgdata.join("pg_wal/RECOVERYXLOG")).unwrap()
                == std::fs::read(entry.path()).unwrap(),
            "PostgreSQL {major}: {name} is byte-identical"
        );
        fetched += 1;
    }
    assert!(fetched >= 3, "PostgreSQL {major}: {fetched} files archived");

    let restore = |name: &str, extra: &[&str]| -> PgCluster {
        let target = dir.path().join(name);
        let mut a = vec!["restore", "--pgdata", target.to_str().unwrap()];
        a.extend_from_slice(extra);
        // The restore_command must be reachable by postgres: run the
        // test's own copy of walvault.
        let out = run(std::process::Command::new(bin.join("walvault"))
            .args(&args)
            .args(&a));
        assert_eq!(
            out.code, 0,
            "PostgreSQL {major} restore {extra:?}: {}",
            out.stderr
        );
        let mut c = PgCluster::existing_with(dir.path(), name, target, &server_bin);
        c.start();
        c.wait_promoted(180);
        c
    };
    let r = restore(
        "by-time",
        &["--target-time", &time_b, "--archive-mode", "off"],
    );
    assert_eq!(ids(&r), "20:1-20", "PostgreSQL {major}: PITR to a time");
    drop(r);
    let r = restore("by-lsn", &["--target-lsn", &lsn_a, "--archive-mode", "off"]);
    assert_eq!(ids(&r), "10:1-10", "PostgreSQL {major}: PITR to an LSN");
    drop(r);

    // Promotion to timeline 2: the old primary stops, a restore to the end
    // of the archive takes over and archives its new timeline.
    p.stop();
    let failover = restore("failover", &[]);
    assert_eq!(
        failover.sql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2",
        "PostgreSQL {major}"
    );
    failover.sql("INSERT INTO t SELECT g, 'tl2' FROM generate_series(31, 40) g");
    failover.switch_and_wait_archived(120);
    let r = restore("follows-tl2", &["--archive-mode", "off"]);
    assert_eq!(
        ids(&r),
        "40:1-40",
        "PostgreSQL {major}: restore along timeline 2"
    );
    let conf = std::fs::read_to_string(r.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains("recovery_target_timeline = '2'"),
        "PostgreSQL {major}: {conf}"
    );
    drop(r);

    // An incremental on timeline 2 against one on timeline 1: WAL of
    // another history cannot tell its changes, so contents are compared.
    let out = backup_of(&failover, &["--type", "incr"]);
    assert_eq!(
        out.code, 0,
        "PostgreSQL {major} incr on tl2: {}",
        out.stderr
    );
    assert!(
        out.stdout
            .contains("comparing contents: the reference backup")
            && out.stdout.contains("is on timeline 1, this backup on 2"),
        "PostgreSQL {major} incr on tl2: {}",
        out.stdout
    );
    let r = restore("tl2-incr", &["--target-immediate", "--archive-mode", "off"]);
    assert_eq!(
        ids(&r),
        "40:1-40",
        "PostgreSQL {major}: the timeline-2 incremental"
    );
    drop(r);
    drop(failover);

    // verify --restore with this major's server.
    let out = run(std::process::Command::new(bin.join("walvault"))
        .args(&args)
        .args(["verify", "--restore", "--work-dir"])
        .arg(dir.path())
        .arg("--pg-bin")
        .arg(&server_bin));
    assert_eq!(
        out.code, 0,
        "PostgreSQL {major} verify --restore: {}\n{}",
        out.stdout, out.stderr
    );
}

#[test]
fn postgresql_12() {
    scenario(12);
}

#[test]
fn postgresql_13() {
    scenario(13);
}

#[test]
fn postgresql_14() {
    scenario(14);
}

#[test]
fn postgresql_15() {
    scenario(15);
}

#[test]
fn postgresql_16() {
    scenario(16);
}

#[test]
fn postgresql_17() {
    scenario(17);
}

#[test]
fn postgresql_18() {
    scenario(18);
}
