//! A real PostgreSQL 15 cluster archiving through walvault-push, for the
//! local and the S3 repository: pgbench writes, every archived file is
//! byte-identical to the original (kept by a second step in
//! archive_command), and a base backup taken without WAL recovers from the
//! archive alone, through walvault-fetch, to the primary's data.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::harness::{give_to_postgres, run, run_ok, walvault, PgCluster, S3Server, TestDir};

enum Backend {
    Local,
    S3,
}

/// How walvault is pointed at the repository: extra arguments for the
/// binaries, and the server kept alive for the test's duration.
struct RepoAccess {
    args: Vec<String>,
    _server: Option<S3Server>,
    local_root: Option<PathBuf>,
}

fn repo_access(dir: &TestDir, backend: Backend) -> RepoAccess {
    match backend {
        Backend::Local => {
            let root = dir.subdir("repo");
            RepoAccess {
                args: vec!["--repo".into(), root.display().to_string()],
                _server: None,
                local_root: Some(root),
            }
        }
        Backend::S3 => {
            let server = S3Server::start(dir.path(), "bucket");
            let config = dir.path().join("walvault.toml");
            std::fs::write(&config, server.config_toml("s3://bucket/cluster-a")).unwrap();
            give_to_postgres(&config);
            RepoAccess {
                args: vec!["--config".into(), config.display().to_string()],
                _server: Some(server),
                local_root: None,
            }
        }
    }
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn archive_and_recover(backend: Backend, initdb_args: &[&str]) {
    let dir = TestDir::new("cluster");
    let bin = dir.install_binaries();
    let originals = dir.subdir("originals");
    let access = repo_access(&dir, backend);
    let args = access.args.join(" ");

    let mut primary = PgCluster::init(dir.path(), "primary", initdb_args);
    crate::harness::init_repo(&access.args, &primary.data);
    primary.append_conf(&format!(
        "wal_level = replica\narchive_mode = on\narchive_command = '{}/walvault-push {args} %p && cp %p {}/%f'\n",
        bin.display(),
        originals.display()
    ));
    primary.start();
    // init again, on the running cluster: idempotent, nothing changes.
    let again = run(walvault("walvault")
        .args(&access.args)
        .args(["init", "--pgdata"])
        .arg(&primary.data));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("already initialized"),
        "{}",
        again.stdout
    );
    run_ok(
        primary
            .client("pgbench")
            .args(["-i", "-s", "2", "-q", "postgres"]),
    );

    // A base backup with no WAL in it: recovery must come from the archive.
    let base = dir.path().join("restored");
    run_ok(
        primary
            .client("pg_basebackup")
            .arg("-D")
            .arg(&base)
            .args(["-X", "none", "-c", "fast"]),
    );

    primary.sql("CREATE TABLE after_backup(x int primary key, note text)");
    primary.sql("INSERT INTO after_backup SELECT g, 'row ' || g FROM generate_series(1, 5000) g");
    run_ok(
        primary
            .client("pgbench")
            .args(["-t", "300", "-c", "2", "-n", "postgres"]),
    );
    let fingerprint_sql =
        "SELECT (SELECT count(*) || ':' || sum(abalance) FROM pgbench_accounts) || '/' || \
        (SELECT md5(string_agg(x || note, ',' ORDER BY x)) FROM after_backup) || '/' || \
        (SELECT count(*) FROM pgbench_history)";
    let expected = primary.sql(fingerprint_sql);
    let last = primary.switch_and_wait_archived(120);
    assert_eq!(
        primary.sql("SELECT failed_count FROM pg_stat_archiver"),
        "0",
        "no archive_command failure:\n{}",
        primary.server_log()
    );
    primary.stop();

    // Every archived file is byte-identical to the original.
    let archived = names_in(&originals);
    assert!(
        archived.len() >= 3,
        "several WAL files were archived: {archived:?}"
    );
    assert!(archived.contains(&last));
    assert!(
        archived.iter().any(|n| n.ends_with(".backup")),
        "the backup history file was archived: {archived:?}"
    );
    let check = dir.subdir("check");
    for name in &archived {
        let dest = check.join(name);
        let out = run(walvault("walvault-fetch")
            .args(&access.args)
            .arg(name)
            .arg(&dest));
        assert_eq!(out.code, 0, "fetch {name}: {}", out.stderr);
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(originals.join(name)).unwrap(),
            "{name} is byte-identical"
        );
        std::fs::remove_file(&dest).unwrap();
    }
    if let Some(root) = &access.local_root {
        // The repository holds exactly the archived files, nothing partial.
        let mut stored = BTreeSet::new();
        let mut stack = vec![root.join("wal")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    stored.insert(e.file_name().into_string().unwrap());
                }
            }
        }
        assert_eq!(
            stored, archived,
            "the repository holds exactly the archived files"
        );
    }

    // Recovery from the archive alone.
    let mut restored = PgCluster::existing(dir.path(), "restored", base);
    std::fs::write(restored.data.join("recovery.signal"), "").unwrap();
    restored.append_conf(&format!(
        "archive_mode = off\nrestore_command = '{}/walvault-fetch {args} %f %p'\n",
        bin.display()
    ));
    restored.start();
    restored.wait_promoted(180);
    assert_eq!(
        restored.sql(fingerprint_sql),
        expected,
        "the recovered cluster holds the primary's data"
    );
    let log = restored.server_log();
    assert!(
        log.contains(&format!("restored log file \"{last}\" from archive")),
        "replayed through walvault-fetch:\n{log}"
    );
    assert!(!log.contains("walvault-fetch: ERROR"), "{log}");
}

#[test]
fn local_repository_archives_byte_identical_and_recovers() {
    // 1 MiB segments: a non-default size, and many files.
    archive_and_recover(Backend::Local, &["--wal-segsize=1"]);
}

#[test]
fn s3_repository_archives_byte_identical_and_recovers() {
    archive_and_recover(Backend::S3, &[]);
}
