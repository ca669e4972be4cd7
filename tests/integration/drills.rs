//! Restore drills against a real PostgreSQL 15: `verify --restore` to a
//! given or a random moment, with `--check-sql` statements and their
//! expected values; the result lands in the status record.

use std::path::Path;
use std::time::Duration;

use crate::harness::{give_to_postgres, run, Ran};
use crate::pitr::{server_now, Backend, Setup};

fn drill(setup: &Setup, args: &[&str]) -> Ran {
    // The test's own copy of the binaries: the restore_command the drill
    // writes must be reachable by the postgres user.
    let mut cmd = std::process::Command::new(setup.dir.path().join("bin/walvault"));
    cmd.args(&setup.repo_args)
        .args(["verify", "--restore", "--work-dir"])
        .arg(setup.dir.path())
        .args(args);
    run(&mut cmd)
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    give_to_postgres(path);
    path.display().to_string()
}

fn last_drill(setup: &Setup) -> serde_json::Value {
    let out = setup.walvault(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    json["last_verify_restore"].clone()
}

#[test]
fn a_drill_recovers_to_a_moment_and_checks_what_it_finds() {
    let setup = Setup::new("drill", Backend::Local);
    let p = &setup.primary;
    p.sql("CREATE TABLE documents(id int primary key)");
    p.sql("INSERT INTO documents SELECT generate_series(1, 100)");
    setup.backup(p);
    // One backup: --random-target has nothing to choose between and
    // drills to the end of that backup.
    let out = drill(&setup, &["--random-target"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("drill target: the end of backup"),
        "{}",
        out.stdout
    );
    assert_eq!(last_drill(&setup)["target"], "immediate");
    p.sql("INSERT INTO documents SELECT generate_series(101, 150)");
    std::thread::sleep(Duration::from_millis(1100));
    let target = server_now(p);
    std::thread::sleep(Duration::from_millis(1100));
    // The bad DELETE, then another backup and more commits.
    p.sql("DELETE FROM documents WHERE id > 120");
    setup.backup(p);
    p.sql("INSERT INTO documents VALUES (1000)");
    p.switch_and_wait_archived(120);

    let checks = write(
        &setup.dir.path().join("checks.sql"),
        "-- rows at the target\n-- expect: 150\nSELECT count(*) FROM documents;\n\n-- expect: 150\nSELECT max(id)\n  FROM documents;\nSELECT 1;\n",
    );
    let metrics = setup.dir.path().join("drill.prom");
    let out = drill(
        &setup,
        &[
            "--target-time",
            &target,
            "--check-sql",
            &checks,
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("3 check(s) passed"), "{}", out.stdout);
    let prom = std::fs::read_to_string(&metrics).unwrap();
    let asked_secs = walvault::restore::target::parse_target_time(&target)
        .unwrap()
        .as_second();
    for line in [
        "walvault_drill_checks_passed 3".to_string(),
        format!("walvault_drill_target_timestamp_seconds {asked_secs}"),
        "backup_restore_verify_success 1".to_string(),
    ] {
        assert!(prom.lines().any(|l| l == line), "{line} in {prom}");
    }
    assert!(
        prom.lines()
            .any(|l| l.starts_with("walvault_drill_wal_replayed_bytes ") && !l.ends_with(" 0")),
        "{prom}"
    );
    let record = last_drill(&setup);
    assert_eq!(record["success"], true, "{record}");
    assert_eq!(record["checks_passed"], 3, "{record}");
    assert!(
        record["wal_replayed_bytes"].as_u64().unwrap() > 0,
        "{record}"
    );
    let when: jiff::Timestamp = record["target"].as_str().unwrap().parse().unwrap();
    let asked = walvault::restore::target::parse_target_time(&target).unwrap();
    assert_eq!(when, asked);

    // A value that does not match, and a statement that fails: the drill
    // fails (exit 6), names both, and the record says so.
    let failing = write(
        &setup.dir.path().join("failing.sql"),
        "-- expect: 121\nSELECT count(*) FROM documents;\nSELECT * FROM no_such_table;\n",
    );
    let out = drill(&setup, &["--target-time", &target, "--check-sql", &failing]);
    assert_eq!(out.code, 6, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("check at line 2")
            && out.stdout.contains("expected \"121\", got \"150\""),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("no_such_table"), "{}", out.stdout);
    let record = last_drill(&setup);
    assert_eq!(record["success"], false, "{record}");
    assert_eq!(record["problems"].as_array().unwrap().len(), 2, "{record}");

    // A random moment between the two backups: logged, inside the window,
    // and the rows there are those of some moment of it.
    let sane = write(
        &setup.dir.path().join("sane.sql"),
        "-- expect: t\nSELECT count(*) BETWEEN 100 AND 150 FROM documents;\n",
    );
    let out = drill(&setup, &["--random-target", "--check-sql", &sane]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("drill target: "), "{}", out.stdout);
    let record = last_drill(&setup);
    assert_eq!(record["success"], true, "{record}");

    // A check file that cannot be read is refused before anything runs.
    let bad = write(&setup.dir.path().join("bad.sql"), "SELECT 1");
    let out = drill(&setup, &["--check-sql", &bad]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("does not end with"), "{}", out.stderr);
}
