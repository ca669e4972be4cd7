//! walvault-push and walvault-fetch on bad input and failing repositories:
//! every case exits with its documented status, says what happened in a
//! clear line, and leaves the repository and `%p` as they were.

use std::path::Path;
use std::time::{Duration, Instant};

use walvault::wal::WalSegmentSize;

use crate::harness::wal::{object_path, write_segment};
use crate::harness::{init_local_repo, run, walvault, Ran, TestDir};

const SYSID_A: u64 = 7_311_111_111_111_111_111;
const SYSID_B: u64 = 7_322_222_222_222_222_222;

fn mib(n: u64) -> WalSegmentSize {
    WalSegmentSize::new(n << 20).unwrap()
}

fn push(repo: &Path, cwd: &Path, path: &Path) -> Ran {
    run(walvault("walvault-push")
        .arg("--repo")
        .arg(repo)
        .arg(path)
        .current_dir(cwd))
}

fn fetch(repo: &Path, cwd: &Path, name: &str, dest: &Path) -> Ran {
    run(walvault("walvault-fetch")
        .arg("--repo")
        .arg(repo)
        .arg(name)
        .arg(dest)
        .current_dir(cwd))
}

#[test]
fn push_then_fetch_is_quiet_and_byte_identical() {
    let dir = TestDir::new("roundtrip");
    let repo = dir.path().join("repo");
    let wal = dir.subdir("wal");
    for (size, seg) in [(16, 1u64), (16, 0x1FF), (1, 5)] {
        // One repository per segment size: a repository belongs to one cluster.
        let repo = repo.join(format!("{size}"));
        init_local_repo(&repo, SYSID_A, size << 20);
        let seg_path = write_segment(&wal, SYSID_A, 1, seg, mib(size), 1);
        let name = seg_path.file_name().unwrap().to_str().unwrap().to_string();
        let out = push(&repo, dir.path(), &seg_path);
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (0, "", ""),
            "push is quiet on success"
        );
        let dest = dir.path().join(format!("restored-{name}"));
        let out = fetch(&repo, dir.path(), &name, &dest);
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (0, "", ""),
            "fetch is quiet on success"
        );
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(&seg_path).unwrap(),
            "fetched bytes are identical"
        );
        let stored = std::fs::metadata(object_path(&repo, &name)).unwrap().len();
        assert!(
            stored < mib(size).bytes() / 2,
            "the object is compressed ({stored} bytes)"
        );
    }
}

#[test]
fn history_and_backup_files_round_trip() {
    let dir = TestDir::new("history");
    let repo = dir.path().join("repo");
    init_local_repo(&repo, SYSID_A, 16 << 20);
    let wal = dir.subdir("wal");
    let seg = write_segment(&wal, SYSID_A, 1, 3, mib(16), 1);
    assert_eq!(push(&repo, dir.path(), &seg).code, 0);
    let history = wal.join("00000002.history");
    std::fs::write(&history, "1\t0/3000A28\tno recovery target specified\n").unwrap();
    let backup = wal.join("000000010000000000000003.00000028.backup");
    std::fs::write(
        &backup,
        "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nSTOP WAL LOCATION: 0/3000100 (file 000000010000000000000003)\nLABEL: test\n",
    )
    .unwrap();
    for path in [&history, &backup] {
        let out = push(&repo, dir.path(), path);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let name = path.file_name().unwrap().to_str().unwrap();
        let dest = dir.path().join("RECOVERYHISTORY");
        assert_eq!(fetch(&repo, dir.path(), name, &dest).code, 0);
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(path).unwrap());
    }
    // A history file that is not one is refused.
    let bogus = wal.join("00000003.history");
    std::fs::write(&bogus, "this is not a history file\n").unwrap();
    let out = push(&repo, dir.path(), &bogus);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("is not a timeline history file"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let dir = TestDir::new("badinput");
    let repo = dir.path().join("repo");
    init_local_repo(&repo, SYSID_A, 16 << 20);
    let wal = dir.subdir("wal");

    // A missing file.
    let out = push(&repo, dir.path(), &wal.join("000000010000000000000001"));
    assert_eq!(out.code, 3);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);

    // A name that is not a WAL file name.
    let odd = wal.join("notes.txt");
    std::fs::write(&odd, "hello").unwrap();
    let out = push(&repo, dir.path(), &odd);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("notes.txt") && out.stderr.contains("HINT"),
        "{}",
        out.stderr
    );

    // A file with a segment's name and size that is not WAL.
    let zeros = wal.join("000000010000000000000002");
    std::fs::write(&zeros, vec![0u8; 16 << 20]).unwrap();
    let out = push(&repo, dir.path(), &zeros);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("is not a WAL segment"),
        "{}",
        out.stderr
    );

    // A truncated segment.
    let seg = write_segment(&wal, SYSID_A, 1, 4, mib(16), 1);
    let data = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &data[..3 << 20]).unwrap();
    let out = push(&repo, dir.path(), &seg);
    assert_eq!(out.code, 3);
    assert!(out.stderr.contains("truncated"), "{}", out.stderr);

    // A segment renamed to another segment's name.
    let seg = write_segment(&wal, SYSID_A, 1, 5, mib(16), 1);
    let renamed = wal.join("000000010000000000000009");
    std::fs::rename(&seg, &renamed).unwrap();
    let out = push(&repo, dir.path(), &renamed);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("does not match its name"),
        "{}",
        out.stderr
    );

    // Nothing of the above reached the repository.
    assert!(!repo.join("wal").exists(), "no WAL object was stored");
}

#[test]
fn wal_of_another_cluster_is_refused() {
    let dir = TestDir::new("othercluster");
    let repo = dir.path().join("repo");
    init_local_repo(&repo, SYSID_A, 16 << 20);
    let a = dir.subdir("a");
    let b = dir.subdir("b");
    let seg_a = write_segment(&a, SYSID_A, 1, 1, mib(16), 1);
    assert_eq!(push(&repo, dir.path(), &seg_a).code, 0);
    let seg_b = write_segment(&b, SYSID_B, 1, 2, mib(16), 2);
    let out = push(&repo, dir.path(), &seg_b);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(
        out.stderr.contains(&SYSID_A.to_string()) && out.stderr.contains(&SYSID_B.to_string()),
        "the error names both system identifiers: {}",
        out.stderr
    );
    assert!(!object_path(&repo, "000000010000000000000002").exists());
    // A different segment size is refused too.
    let seg_c = write_segment(&b, SYSID_A, 1, 40, mib(1), 3);
    let out = push(&repo, dir.path(), &seg_c);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(out.stderr.contains("segment size"), "{}", out.stderr);
}

#[test]
fn duplicates_identical_succeed_and_different_fail_untouched() {
    let dir = TestDir::new("duplicates");
    let repo = dir.path().join("repo");
    init_local_repo(&repo, SYSID_A, 16 << 20);
    let wal = dir.subdir("wal");
    let seg = write_segment(&wal, SYSID_A, 1, 7, mib(16), 1);
    let name = "000000010000000000000007";
    assert_eq!(push(&repo, dir.path(), &seg).code, 0);
    let stored_before = std::fs::read(object_path(&repo, name)).unwrap();

    let out = push(&repo, dir.path(), &seg);
    assert_eq!(
        out.code, 0,
        "an identical duplicate succeeds: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("WARN") && out.stderr.contains("identical"),
        "with a warning: {}",
        out.stderr
    );

    let other = dir.subdir("other");
    let different = write_segment(&other, SYSID_A, 1, 7, mib(16), 9);
    let out = push(&repo, dir.path(), &different);
    assert_eq!(out.code, 4, "a different duplicate fails: {}", out.stderr);
    assert!(
        out.stderr.contains("different contents") && out.stderr.contains("untouched"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read(object_path(&repo, name)).unwrap(),
        stored_before,
        "the stored object is untouched"
    );
    let dest = dir.path().join("back");
    assert_eq!(fetch(&repo, dir.path(), name, &dest).code, 0);
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&seg).unwrap());
}

#[test]
fn fetch_of_a_missing_file_exits_1_quietly() {
    let dir = TestDir::new("missing");
    let repo = dir.path().join("repo");
    init_local_repo(&repo, SYSID_A, 16 << 20);
    let dest = dir.path().join("RECOVERYXLOG");
    for name in ["00000002.history", "000000010000000000000042"] {
        let out = fetch(&repo, dir.path(), name, &dest);
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (1, "", "")
        );
        assert!(!dest.exists());
        // The object is looked up before any temporary file is made, so a
        // miss is a miss even where the destination could not be written.
        let unwritable = dir.path().join("no-such-dir").join("RECOVERYHISTORY");
        let out = fetch(&repo, dir.path(), name, &unwritable);
        assert_eq!((out.code, out.stderr.as_str()), (1, ""));
    }
}

#[test]
fn corrupt_object_fails_fetch_without_creating_the_destination() {
    let dir = TestDir::new("corrupt");
    let repo = dir.path().join("repo");
    init_local_repo(&repo, SYSID_A, 16 << 20);
    let wal = dir.subdir("wal");
    let seg = write_segment(&wal, SYSID_A, 1, 8, mib(16), 1);
    assert_eq!(push(&repo, dir.path(), &seg).code, 0);
    let name = "000000010000000000000008";
    let object = object_path(&repo, name);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&object, &bytes).unwrap();

    let pgdata = dir.subdir("pgdata");
    std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
    let dest = Path::new("pg_wal/RECOVERYXLOG");
    let out = fetch(&repo, &pgdata, name, dest);
    assert_eq!(
        out.code, 128,
        "outside standby mode a corrupt object stops recovery: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("corrupt") && out.stderr.contains(name),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("stops recovery"),
        "says which case it was: {}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_dir(pgdata.join("pg_wal")).unwrap().count(),
        0,
        "no %p and no temporary file"
    );

    std::fs::write(pgdata.join("standby.signal"), "").unwrap();
    let out = fetch(&repo, &pgdata, name, dest);
    assert_eq!(
        out.code, 6,
        "in standby mode an ordinary failure: {}",
        out.stderr
    );
    assert!(out.stderr.contains("standby mode"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(pgdata.join("pg_wal")).unwrap().count(), 0);
}

/// `program` pointed at an S3 repository on `endpoint`, with credentials.
fn s3_command(program: &str, endpoint: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = walvault(program);
    cmd.args([
        "--repo",
        "s3://bucket/prefix",
        "--s3-endpoint",
        endpoint,
        "--s3-path-style",
    ])
    .args(extra)
    .env("AWS_ACCESS_KEY_ID", "x")
    .env("AWS_SECRET_ACCESS_KEY", "y");
    cmd
}

#[test]
fn unreachable_s3_fails_within_seconds() {
    let dir = TestDir::new("unreachable");
    let wal = dir.subdir("wal");
    let seg = write_segment(&wal, SYSID_A, 1, 1, mib(1), 1);
    // A port nothing listens on.
    let port = crate::harness::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = run(s3_command("walvault-push", &endpoint, &[])
        .arg(&seg)
        .current_dir(dir.path()));
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        out.stderr.contains("ERROR") && out.stderr.contains("s3://bucket/prefix")
            || out.stderr.contains("repository.json"),
        "{}",
        out.stderr
    );

    let started = Instant::now();
    let out = run(
        s3_command("walvault-fetch", &endpoint, &["--fetch-retry-secs", "2"])
            .args(["000000010000000000000001", "RECOVERYXLOG"])
            .current_dir(dir.path()),
    );
    assert_eq!(
        out.code, 128,
        "a storage failure never looks like a missing file: {}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(out.stderr.contains("failed after"), "{}", out.stderr);
    assert!(!dir.path().join("RECOVERYXLOG").exists());

    // In standby mode no waiting retry, however long --fetch-retry-secs:
    // the startup process should go back to streaming at once.
    let standby = dir.subdir("standby");
    std::fs::write(standby.join("standby.signal"), "").unwrap();
    let started = Instant::now();
    let out = run(
        s3_command("walvault-fetch", &endpoint, &["--fetch-retry-secs", "60"])
            .args(["000000010000000000000001", "RECOVERYXLOG"])
            .current_dir(&standby),
    );
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "standby fetch took {:?}",
        started.elapsed()
    );
}

#[test]
fn missing_configuration_is_a_usage_error() {
    let dir = TestDir::new("noconfig");
    let out = run(walvault("walvault-push")
        .arg("000000010000000000000001")
        .current_dir(dir.path()));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no repository configured") && out.stderr.contains("HINT"),
        "{}",
        out.stderr
    );
    let out = run(walvault("walvault-fetch")
        .args(["000000010000000000000001", "x"])
        .current_dir(dir.path()));
    assert_eq!(
        out.code, 128,
        "fetch must not read as 'missing': {}",
        out.stderr
    );
}

/// A repository that is not there is never an empty archive: push and
/// fetch neither create it nor read its absence as "missing".
#[test]
fn a_repository_that_is_not_there_is_never_an_empty_archive() {
    let dir = TestDir::new("notthere");
    let wal = dir.subdir("wal");
    let seg = write_segment(&wal, SYSID_A, 1, 3, mib(16), 1);
    let history = wal.join("00000002.history");
    std::fs::write(&history, "1\t0/3000A28\tno recovery target specified\n").unwrap();
    let unmounted = dir.path().join("mnt/backup");
    let empty = dir.subdir("empty");
    for repo in [&unmounted, &empty] {
        for file in [&seg, &history] {
            let out = push(repo, dir.path(), file);
            assert_eq!(out.code, 9, "{}", out.stderr);
            assert!(
                out.stderr.contains("not initialized") && out.stderr.contains("walvault init"),
                "{}",
                out.stderr
            );
            assert_eq!(
                out.stderr.lines().count(),
                2,
                "ERROR and HINT: {}",
                out.stderr
            );
        }
        let pgdata = dir.subdir("pgdata");
        std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
        for name in ["000000010000000000000003", "00000002.history"] {
            let out = fetch(repo, &pgdata, name, Path::new("pg_wal/RECOVERYXLOG"));
            assert_eq!(out.code, 128, "never 'missing': {}", out.stderr);
            assert!(out.stderr.contains("walvault init"), "{}", out.stderr);
            std::fs::write(pgdata.join("standby.signal"), "").unwrap();
            let out = fetch(repo, &pgdata, name, Path::new("pg_wal/RECOVERYXLOG"));
            assert_eq!(out.code, 9, "standby: an ordinary failure: {}", out.stderr);
            std::fs::remove_file(pgdata.join("standby.signal")).unwrap();
        }
    }
    assert!(
        !unmounted.exists(),
        "no command created the unmounted mount point"
    );
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "nothing written"
    );
}

/// `init` binds the repository to the cluster the data directory names,
/// is idempotent, and refuses another cluster; a damaged segment pushed
/// first can no longer bind the repository to the wrong cluster.
#[test]
fn init_binds_once_and_a_damaged_first_segment_cannot() {
    let dir = TestDir::new("init");
    let repo = dir.path().join("repo");
    let wal = dir.subdir("wal");
    // A segment whose system identifier has one flipped byte.
    let flipped = write_segment(&wal, SYSID_A ^ 0x0100, 1, 1, mib(16), 1);
    let out = push(&repo, dir.path(), &flipped);
    assert_eq!(out.code, 9, "{}", out.stderr);
    init_local_repo(&repo, SYSID_A, 16 << 20);
    init_local_repo(&repo, SYSID_A, 16 << 20);
    let header = std::fs::read_to_string(repo.join("repository.json")).unwrap();
    assert!(header.contains(&SYSID_A.to_string()), "{header}");
    let out = push(&repo, dir.path(), &flipped);
    assert_eq!(out.code, 7, "{}", out.stderr);
    let good = write_segment(&wal, SYSID_A, 1, 2, mib(16), 1);
    assert_eq!(push(&repo, dir.path(), &good).code, 0);
    // Another cluster's init is refused and changes nothing.
    let other = tempfile::tempdir().unwrap();
    let data = crate::harness::fake_pgdata(other.path(), SYSID_B, 16 << 20);
    let out = run(walvault("walvault")
        .args(["--repo", repo.to_str().unwrap(), "init", "--pgdata"])
        .arg(&data));
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(repo.join("repository.json")).unwrap(),
        header
    );
    // Not a data directory, and an unsupported major, are named.
    let out = run(walvault("walvault")
        .args(["--repo", repo.to_str().unwrap(), "init", "--pgdata"])
        .arg(dir.path()));
    assert_eq!(out.code, 3, "{}", out.stderr);
    std::fs::write(data.join("PG_VERSION"), "11\n").unwrap();
    let out = run(walvault("walvault")
        .args([
            "--repo",
            other.path().join("r").to_str().unwrap(),
            "init",
            "--pgdata",
        ])
        .arg(&data));
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("PostgreSQL 11 is not supported"),
        "{}",
        out.stderr
    );
    assert!(!other.path().join("r").exists());
}

/// A bucket that does not exist is a failure, never "missing".
#[test]
fn a_missing_bucket_is_a_failure_not_missing() {
    let dir = TestDir::new("nobucket");
    let server = crate::harness::S3Server::start(dir.path(), "bucket");
    let config = dir.path().join("walvault.toml");
    std::fs::write(&config, server.config_toml("s3://no-such-bucket/p")).unwrap();
    let pgdata = dir.subdir("pgdata");
    std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
    let out = run(walvault("walvault-fetch")
        .arg("--config")
        .arg(&config)
        .args(["000000010000000000000001", "pg_wal/RECOVERYXLOG"])
        .current_dir(&pgdata));
    assert_eq!(out.code, 128, "{}", out.stderr);
    // An existing bucket with nothing under the prefix: not initialized.
    std::fs::write(&config, server.config_toml("s3://bucket/never-initialized")).unwrap();
    let out = run(walvault("walvault-fetch")
        .arg("--config")
        .arg(&config)
        .args(["000000010000000000000001", "pg_wal/RECOVERYXLOG"])
        .current_dir(&pgdata));
    assert_eq!(out.code, 128, "{}", out.stderr);
    assert!(out.stderr.contains("not initialized"), "{}", out.stderr);
}

/// Every file under `dir` with its bytes, to show nothing changed.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The shape every refusal has: an ERROR line, at most a HINT after it,
/// and never a panic.
fn assert_one_error(what: &str, out: &Ran, code: i32, words: &str) {
    assert_eq!(out.code, code, "{what}: {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        !lines.is_empty()
            && lines[0].contains(": ERROR: ")
            && lines.len() <= 3
            && lines[1..]
                .iter()
                .all(|l| l.contains(": HINT: ") || l.contains(": DETAIL: ")),
        "{what}: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
    assert!(
        out.stderr.to_lowercase().contains(&words.to_lowercase()),
        "{what}: expected {words:?} in {}",
        out.stderr
    );
}

/// Bad input, exhaustively: each case gets its documented exit code and
/// one error (with its hint), leaves the repository unchanged, and never
/// panics.
#[test]
fn bad_input_exhaustively() {
    let dir = TestDir::new("badinput-all");
    let repo = dir.path().join("repo");
    init_local_repo(&repo, SYSID_A, 16 << 20);
    let wal = dir.subdir("wal");
    let good = write_segment(&wal, SYSID_A, 1, 1, mib(16), 1);
    assert_eq!(push(&repo, dir.path(), &good).code, 0);
    let before = snapshot(&repo);
    let good_bytes = std::fs::read(&good).unwrap();
    let name = |n: u64| format!("0000000100000000000000{n:02X}");

    let mut cases: Vec<(&str, std::path::PathBuf, &str)> = Vec::new();
    let empty = wal.join(name(2));
    std::fs::write(&empty, b"").unwrap();
    cases.push(("empty file", empty, "too short"));
    let truncated = wal.join(name(3));
    std::fs::write(&truncated, &good_bytes[..20]).unwrap();
    cases.push(("truncated in the header", truncated, "too short"));
    let mut flipped = write_segment(&wal, SYSID_A, 1, 4, mib(16), 1);
    let mut bytes = std::fs::read(&flipped).unwrap();
    bytes[0] ^= 0x40; // the page magic
    std::fs::write(&flipped, &bytes).unwrap();
    cases.push((
        "flipped byte in the page magic",
        flipped.clone(),
        "not a WAL segment",
    ));
    flipped = write_segment(&wal, SYSID_A, 1, 5, mib(16), 1);
    let mut bytes = std::fs::read(&flipped).unwrap();
    bytes[8] ^= 0x01; // the page address
    std::fs::write(&flipped, &bytes).unwrap();
    cases.push((
        "flipped byte in the page address",
        flipped,
        "does not match its name",
    ));
    let random = wal.join(name(6));
    let mut x: u64 = 0x1234_5678;
    let noise: Vec<u8> = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&random, &noise).unwrap();
    cases.push(("random bytes", random, "not a WAL segment"));
    let directory = wal.join(name(7));
    std::fs::create_dir(&directory).unwrap();
    cases.push(("a directory", directory, "not a regular file"));
    let traversal = wal.join("../../etc/passwd");
    cases.push(("path traversal", traversal, "not a WAL file name"));
    let long = wal.join("0".repeat(255));
    std::fs::write(&long, b"x").unwrap();
    cases.push(("over-long name", long, "not a WAL file name"));
    let garbage_history = wal.join("00000005.history");
    std::fs::write(&garbage_history, &noise[..4096]).unwrap();
    cases.push(("binary .history", garbage_history, "not a"));
    let bad_history = wal.join("00000006.history");
    std::fs::write(&bad_history, "7\t0/3000000\tparent above the child\n").unwrap();
    cases.push((
        "impossible .history",
        bad_history,
        "not a timeline history file",
    ));
    let bad_backup = wal.join("000000010000000000000001.00000028.backup");
    std::fs::write(&bad_backup, "LABEL: no locations\n").unwrap();
    cases.push(("garbage .backup", bad_backup, "not a backup history file"));
    for (what, path, words) in &cases {
        let out = push(&repo, dir.path(), path);
        assert_one_error(what, &out, 3, words);
    }

    // An unreadable file, as PostgreSQL's user (root reads everything).
    if crate::harness::is_root() {
        let bin = dir.install_binaries();
        let locked = wal.join(name(8));
        std::fs::copy(&good, &locked).unwrap();
        std::os::unix::fs::chown(&locked, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        crate::harness::give_to_postgres(&repo);
        let out = run(crate::harness::as_postgres(bin.join("walvault-push"))
            .arg("--repo")
            .arg(&repo)
            .arg(&locked)
            .current_dir(dir.path()));
        assert_one_error("unreadable file", &out, 3, "permission denied");
    }

    // Fetch: names that are not WAL names never reach the repository.
    let pgdata = dir.subdir("pgdata");
    std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
    for bad in [
        "../000000010000000000000001",
        "000000010000000000000001/../../x",
        &"0".repeat(300),
        "",
    ] {
        let out = fetch(&repo, &pgdata, bad, Path::new("pg_wal/RECOVERYXLOG"));
        assert_eq!(out.code, 128, "{bad:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    assert_eq!(snapshot(&repo), before, "no refusal changed the repository");

    // A corrupt header, and one of a newer format: push refuses (7), and
    // fetch never calls a file missing.
    let header = repo.join("repository.json");
    let original = std::fs::read(&header).unwrap();
    let next = write_segment(&wal, SYSID_A, 1, 9, mib(16), 1);
    for (what, text, words) in [
        (
            "corrupt repository.json",
            "{ this is not json".to_string(),
            "unreadable",
        ),
        (
            "newer repository format",
            String::from_utf8_lossy(&original)
                .replace("\"format_version\": 1", "\"format_version\": 99"),
            "upgrade walvault",
        ),
    ] {
        std::fs::write(&header, &text).unwrap();
        let before = snapshot(&repo);
        let out = push(&repo, dir.path(), &next);
        assert_one_error(what, &out, 7, words);
        let out = fetch(&repo, &pgdata, &name(9), Path::new("pg_wal/RECOVERYXLOG"));
        assert_eq!(out.code, 128, "{what}: {}", out.stderr);
        assert_eq!(snapshot(&repo), before, "{what}: nothing changed");
    }
    std::fs::write(&header, &original).unwrap();
    assert_eq!(push(&repo, dir.path(), &next).code, 0);
}

/// After a major upgrade, the new cluster's WAL is refused by the old
/// repository with the fix named: one repository per cluster, so retention
/// and restore never mix the two.
#[test]
fn wal_after_a_major_upgrade_is_refused_with_the_fix() {
    let dir = TestDir::new("upgrade");
    let repo = dir.path().join("repo");
    let scratch = dir.subdir("old");
    let old = crate::harness::fake_pgdata(&scratch, SYSID_A, 16 << 20);
    std::fs::write(old.join("PG_VERSION"), "14\n").unwrap();
    crate::harness::init_repo(&["--repo".to_string(), repo.display().to_string()], &old);
    // The upgraded cluster: PostgreSQL 15 WAL, a new system identifier.
    let wal = dir.subdir("wal");
    let seg = write_segment(&wal, SYSID_B, 1, 1, mib(16), 1);
    let before = snapshot(&repo);
    let out = push(&repo, dir.path(), &seg);
    assert_one_error("upgraded cluster", &out, 7, "major upgrade");
    assert!(
        out.stderr.contains("walvault --repo NEW init"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot(&repo), before);
}
