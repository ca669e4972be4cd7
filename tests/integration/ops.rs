//! Operating walvault against a real cluster and repository: check,
//! verify (and verify --restore), status levels, expire and its lock,
//! metrics files.

use std::path::{Path, PathBuf};

use crate::harness::{run, run_ok, PgCluster, Ran};
use crate::pitr::{Backend, Setup};

fn flip_byte(path: &Path) -> Vec<u8> {
    let original = std::fs::read(path).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    std::fs::write(path, &bad).unwrap();
    original
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn segments_in(repo: &Path) -> Vec<PathBuf> {
    files_under(&repo.join("wal"))
        .into_iter()
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect()
}

#[test]
fn check_names_each_misconfiguration_and_passes_when_right() {
    let setup = Setup::new("check", Backend::Local);
    let repo = setup.local_repo.clone().unwrap();
    let mut p = PgCluster::init(setup.dir.path(), "misconfigured", &[]);
    p.append_conf("wal_level = minimal\narchive_mode = off\nmax_wal_senders = 0\n");
    p.start();
    let conninfo = Setup::conninfo(&p);
    let check = |p: &PgCluster| -> Ran {
        let _ = p;
        setup.walvault(&["check", "--dbname", &conninfo, "--timeout-secs", "30"])
    };
    let out = check(&p);
    assert_eq!(out.code, 8, "{}", out.stderr);
    for expected in [
        "wal_level is minimal",
        "archive_mode is off",
        "archive_command does not run walvault-push",
        "HINT: set wal_level = replica",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing {expected:?} in:\n{}",
            out.stderr
        );
    }

    p.stop();
    let bin = setup.dir.path().join("bin");
    p.append_conf(&format!(
        "wal_level = replica\narchive_mode = on\nmax_wal_senders = 10\narchive_command = '{}/walvault-push --repo /somewhere/else %p'\n",
        bin.display()
    ));
    p.start();
    let out = check(&p);
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert!(
        out.stderr.contains("pushes to repository /somewhere/else"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("wal_level"),
        "only what is wrong: {}",
        out.stderr
    );

    // The primary of the setup archives into this repository.
    let out = setup.walvault(&["check", "--dbname", &Setup::conninfo(&setup.primary)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("OK") && out.stdout.contains("reached"),
        "{}",
        out.stdout
    );
    let segment = out
        .stdout
        .split_whitespace()
        .find(|w| w.len() == 24 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap()
        .to_string();
    assert!(
        segments_in(&repo)
            .iter()
            .any(|s| s.file_name().unwrap() == segment.as_str()),
        "{segment} is in the repository"
    );
}

#[test]
fn verify_detects_flipped_bytes_and_missing_wal() {
    let setup = Setup::new("verify", Backend::Local);
    let repo = setup.local_repo.clone().unwrap();
    let p = &setup.primary;
    p.sql("CREATE TABLE t(id int primary key, note text)");
    let label = setup.backup(p);
    for i in 0..4 {
        p.sql(&format!(
            "INSERT INTO t SELECT g, 'x' FROM generate_series({}, {}) g",
            i * 100 + 1,
            i * 100 + 100
        ));
        p.switch_and_wait_archived(120);
    }
    let out = setup.walvault(&["verify"]);
    assert_eq!(
        out.code, 0,
        "a healthy repository verifies: {}{}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.contains("0 problem(s)"), "{}", out.stdout);

    // A flipped byte in a WAL object.
    let segments = segments_in(&repo);
    let wal_object = segments.last().unwrap().clone();
    let original = flip_byte(&wal_object);
    let out = setup.walvault(&["verify"]);
    assert_eq!(out.code, 6, "{}", out.stdout);
    let name = wal_object.file_name().unwrap().to_str().unwrap();
    assert!(
        out.stdout.contains("BROKEN object") && out.stdout.contains(name),
        "{}",
        out.stdout
    );
    std::fs::write(&wal_object, original).unwrap();

    // A flipped byte in a backup file.
    let files = files_under(&repo.join("backup").join(&label).join("files"));
    let biggest = files
        .iter()
        .max_by_key(|f| std::fs::metadata(f).unwrap().len())
        .unwrap()
        .clone();
    let original = flip_byte(&biggest);
    let out = setup.walvault(&["verify"]);
    assert_eq!(out.code, 6, "{}", out.stdout);
    let key = format!(
        "backup/{label}/files/{}",
        biggest.file_name().unwrap().to_str().unwrap()
    );
    assert!(out.stdout.contains(&key), "names {key}: {}", out.stdout);
    assert!(
        out.stdout.contains("backup_file"),
        "and the backup it breaks: {}",
        out.stdout
    );
    std::fs::write(&biggest, original).unwrap();

    // A missing segment in the middle of what the backup needs.
    let middle = segments[segments.len() - 2].clone();
    let missing = middle.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(&middle).unwrap();
    let out = setup.walvault(&["verify"]);
    assert_eq!(out.code, 6, "{}", out.stdout);
    assert!(
        out.stdout.contains("wal_continuity") && out.stdout.contains(&missing),
        "{}",
        out.stdout
    );
}

#[test]
fn verify_restore_status_and_metrics_end_to_end() {
    let setup = Setup::new("verify-restore", Backend::Local);
    let p = &setup.primary;
    run_ok(
        p.client("pgbench")
            .args(["-i", "-s", "1", "-q", "postgres"]),
    );

    // An empty history first: CRITICAL, no backup.
    let out = setup.walvault(&["status"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stdout.starts_with("CRITICAL") && out.stdout.contains("no complete backup"),
        "{}",
        out.stdout
    );

    // Archiving set with ALTER SYSTEM lives in postgresql.auto.conf, which
    // PostgreSQL reads last: the scratch server must still never archive.
    let archive_command = p.sql("SHOW archive_command");
    p.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        archive_command.replace('\'', "''")
    ));
    p.sql("ALTER SYSTEM SET archive_mode = 'on'");
    p.sql("SELECT pg_reload_conf()");
    setup.backup(p);
    p.switch_and_wait_archived(120);
    let repo = setup.local_repo.clone().unwrap();
    let objects = || {
        let mut files: Vec<PathBuf> = files_under(&repo)
            .into_iter()
            .filter(|f| !f.starts_with(repo.join("status")))
            .collect();
        files.sort();
        files
    };
    let objects_before = objects();

    // verify --restore, run from the test's own copy of the binaries so the
    // restore_command it writes is reachable by the postgres user.
    let metrics = setup.dir.path().join("verify.prom");
    let mut cmd = std::process::Command::new(setup.dir.path().join("bin/walvault"));
    cmd.args(&setup.repo_args)
        .args(["verify", "--restore", "--work-dir"])
        .arg(setup.dir.path())
        .arg("--metrics-file")
        .arg(&metrics);
    let out = run(&mut cmd);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("btree indexes passed amcheck"),
        "{}",
        out.stdout
    );
    let indexes: u64 = out
        .stdout
        .split("databases, ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        indexes >= 3,
        "the pgbench indexes and the catalogs were checked: {indexes}"
    );
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("\nbackup_restore_verify_success 1\n"),
        "{prom}"
    );
    assert!(
        prom.contains("backup_restore_verify_last_timestamp ")
            && prom.contains("backup_restore_verify_duration_seconds "),
        "{prom}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("walvault-verify-")
        })
        .collect();
    assert!(leftovers.is_empty(), "the scratch cluster was removed");
    assert_eq!(
        objects_before,
        objects(),
        "verify --restore wrote nothing into the repository but its status record"
    );

    // Now GOOD: a fresh backup, fresh WAL, a fresh successful verification.
    let out = setup.walvault(&["status"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.starts_with("GOOD"), "{}", out.stdout);
    // The same repository against a stricter backup threshold: WARNING.
    let out = setup.walvault(&["status", "--backup-warn-hours", "0", "--json"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["level"], "WARNING");
    assert_eq!(json["last_verify_restore"]["success"], true);
    // A metrics file from status.
    let status_prom = setup.dir.path().join("status.prom");
    let out = setup.walvault(&["status", "--metrics-file", status_prom.to_str().unwrap()]);
    assert_eq!(out.code, 0);
    let prom = std::fs::read_to_string(&status_prom).unwrap();
    for name in [
        "walvault_status_level 0",
        "walvault_backup_last_success_timestamp_seconds ",
        "walvault_wal_files ",
        "walvault_wal_newest_archived_timestamp_seconds ",
    ] {
        assert!(prom.contains(name), "{name} in {prom}");
    }
}

#[test]
fn expire_keeps_what_retained_backups_need_and_respects_the_lock() {
    let setup = Setup::new("expire", Backend::Local);
    let repo = setup.local_repo.clone().unwrap();
    let p = &setup.primary;
    p.sql("CREATE TABLE t(id int primary key, note text)");
    let mut labels = Vec::new();
    for i in 0..3 {
        p.sql(&format!(
            "INSERT INTO t SELECT g, 'x' FROM generate_series({}, {}) g",
            i * 10 + 1,
            i * 10 + 10
        ));
        p.switch_and_wait_archived(120);
        labels.push(setup.backup(p));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    p.switch_and_wait_archived(120);
    let before = segments_in(&repo).len();

    let out = setup.walvault(&["expire", "--keep-full", "1", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("would remove backup {}", labels[0]))
            && out
                .stdout
                .contains(&format!("would remove backup {}", labels[1])),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("freed"), "{}", out.stdout);
    assert_eq!(
        segments_in(&repo).len(),
        before,
        "a dry run removes nothing"
    );

    // A live lock held by someone else: expire refuses and says who.
    let lock = repo.join("lock/repository.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let held = serde_json::json!({"owner_id": "other", "command": "backup", "host": "db1", "pid": 4242, "acquired_at": now, "lease_until": now + 3600});
    std::fs::write(&lock, held.to_string()).unwrap();
    let out = setup.walvault(&["expire", "--keep-full", "1"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("backup") && out.stderr.contains("db1") && out.stderr.contains("4242"),
        "{}",
        out.stderr
    );
    assert_eq!(segments_in(&repo).len(), before);

    // A stale lock (its lease ended) is taken over, with a warning.
    let stale = serde_json::json!({"owner_id": "crashed", "command": "backup", "host": "db1", "pid": 4242, "acquired_at": now - 7200, "lease_until": now - 3600});
    std::fs::write(&lock, stale.to_string()).unwrap();
    let out = setup.walvault(&["expire", "--keep-full", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("WARN") && out.stderr.contains("crashed"),
        "the takeover is not silent: {}",
        out.stderr
    );
    assert!(!lock.exists(), "the lock is released");

    let remaining: Vec<String> = std::fs::read_dir(repo.join("backup"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        remaining,
        vec![labels[2].clone()],
        "the newest backup is kept"
    );
    let after = segments_in(&repo).len();
    assert!(
        after < before,
        "WAL before the kept backup was removed ({before} -> {after})"
    );
    // What is left still restores: verify proves the WAL the kept backup needs is all there.
    let out = setup.walvault(&["verify"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let r = setup.restore_and_start("after-expire", &[]);
    assert_eq!(r.sql("SELECT count(*) FROM t"), "30");
    drop(r);

    // A backup whose lock is taken over while it runs never writes its
    // manifest.
    let mut backup = setup.command(&[
        "backup",
        "--pgdata",
        p.data.to_str().unwrap(),
        "--dbname",
        &Setup::conninfo(p),
        "--no-progress",
    ]);
    let child = backup
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::harness::wait_for("the backup's lock", 60, || lock.exists());
    let now = jiff::Timestamp::now().as_second();
    let taken = serde_json::json!({"owner_id": "taker", "command": "expire", "host": "db2", "pid": 1, "acquired_at": now - 7200, "lease_until": now - 3600});
    std::fs::write(&lock, taken.to_string()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("lost the repository lock before writing its manifest"),
        "{stderr}"
    );
    let out = setup.walvault(&["list", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let statuses: Vec<&str> = json["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["complete", "incomplete"], "{}", out.stdout);
    // Its writer ran on this host and has exited: expire removes it now,
    // with whatever temporary files it left.
    let out = setup.walvault(&["expire", "--keep-full", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("incomplete (no manifest)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read_dir(repo.join("backup")).unwrap().count(),
        1,
        "only the complete backup is left"
    );
}
