//! Base backups from a streaming standby: a primary archiving through
//! walvault-push, a standby made with pg_basebackup (replication slot,
//! primary_conninfo), pgbench writing on the primary while
//! `walvault backup` runs against the standby, and a point-in-time restore
//! from that backup to a moment after it, with exact rows.

use std::time::Duration;

use crate::harness::{give_to_postgres, run, run_ok, PgCluster};
use crate::pitr::{Backend, Setup};

fn ids(c: &PgCluster) -> String {
    c.sql("SELECT count(*) || ':' || coalesce(min(id), 0) || '-' || coalesce(max(id), 0) FROM t")
}

#[test]
fn backup_from_a_standby_restores_to_a_later_point() {
    let setup = Setup::new("standby", Backend::Local);
    let p = &setup.primary;
    p.append_conf("max_wal_senders = 10\n");
    p.sql("SELECT pg_reload_conf()");
    run_ok(
        p.client("pgbench")
            .args(["-i", "-s", "2", "-q", "postgres"]),
    );
    p.sql("CREATE TABLE t(id int primary key, note text)");
    p.sql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 10) g");

    // A streaming standby with a slot.
    let standby_dir = setup.dir.path().join("standby");
    run_ok(p.client("pg_basebackup").arg("-D").arg(&standby_dir).args([
        "-R",
        "-X",
        "stream",
        "-C",
        "-S",
        "standby_slot",
        "--no-sync",
        "--checkpoint=fast",
    ]));
    give_to_postgres(&standby_dir);
    let mut standby = PgCluster::existing(setup.dir.path(), "standby", standby_dir);
    standby.start();
    assert_eq!(standby.sql("SELECT pg_is_in_recovery()"), "t");

    // pgbench writes on the primary while the standby is backed up.
    let mut load = p.client("pgbench");
    load.args(["-n", "-c", "2", "-T", "6", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut load = load.spawn().expect("pgbench");
    let out = setup.walvault(&[
        "backup",
        "--pgdata",
        standby.data.to_str().unwrap(),
        "--dbname",
        &Setup::conninfo(&standby),
        "--primary-dbname",
        &Setup::conninfo(p),
        "--no-progress",
    ]);
    assert_eq!(
        out.code, 0,
        "backup from the standby: {}\n{}",
        out.stdout, out.stderr
    );
    let _ = load.wait();

    // After the backup: rows before and after a moment T on the primary.
    p.sql("INSERT INTO t SELECT g, 'after backup' FROM generate_series(11, 20) g");
    std::thread::sleep(Duration::from_millis(1100));
    let target = p.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(1100));
    p.sql("INSERT INTO t SELECT g, 'too late' FROM generate_series(21, 30) g");
    p.switch_and_wait_archived(120);

    let out = setup.walvault(&["list", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["backups"][0]["status"], "complete", "{}", out.stdout);

    let r = setup.restore_and_start("restored", &["--target-time", &target]);
    assert_eq!(ids(&r), "20:1-20", "exactly the rows committed before T");
    assert_eq!(r.sql("SELECT pg_is_in_recovery()"), "f");
    let out = run(r
        .psql_cmd()
        .arg("-c")
        .arg("SELECT count(*) FROM pgbench_accounts"));
    assert_eq!(out.stdout.trim(), "200000", "{}", out.stderr);
    drop(standby);
}
