//! "Never overwrites" on S3-compatible servers that differ: one that
//! honours `If-None-Match: *` (s3s-fs), one that ignores it and one that
//! answers 501, played by a proxy in front of s3s-fs. `init` probes the
//! server and records what it found; on the two that do not honour the
//! header, a different file under an archived name is still refused, for
//! a single PUT, a multipart upload and the repository lock.

use std::path::Path;

use walvault::wal::WalSegmentSize;

use crate::harness::proxy::{Conditional, FaultProxy};
use crate::harness::wal::write_segment;
use crate::harness::{fake_pgdata, run, walvault, S3Server, TestDir};

const SYSID: u64 = 7_344_444_444_444_444_444;

fn object_file(s3_root: &Path, name: &str) -> std::path::PathBuf {
    s3_root
        .join("bucket/co/wal")
        .join(&name[..8])
        .join(&name[..16])
        .join(name)
}

/// s3s-fs behind a proxy playing `mode`, and a repository `s3://bucket/co`
/// initialized through it: the server, the proxy and the walvault
/// arguments that reach it.
fn proxied_repository(dir: &TestDir, mode: Conditional) -> (S3Server, FaultProxy, [String; 2]) {
    // The proxy changes signed headers only in the other modes.
    let server = if mode == Conditional::Forward {
        S3Server::start(dir.path(), "bucket")
    } else {
        S3Server::start_without_auth(dir.path(), "bucket")
    };
    let proxy = FaultProxy::start(server.endpoint.trim_start_matches("http://"), 1, 0);
    proxy.set_conditional(mode);
    let config = dir.path().join("walvault.toml");
    std::fs::write(
        &config,
        format!(
            "{}s3_part_size_mib = 5\ns3_single_put_max_mib = 5\n",
            server
                .config_toml("s3://bucket/co")
                .replace(&server.endpoint, &proxy.endpoint)
        ),
    )
    .unwrap();
    let args = ["--config".to_string(), config.display().to_string()];
    let data = fake_pgdata(dir.path(), SYSID, 16 << 20);
    let out = run(walvault("walvault")
        .args(&args)
        .args(["init", "--pgdata"])
        .arg(&data));
    assert_eq!(out.code, 0, "{}", out.stderr);
    (server, proxy, args)
}

fn create_only_holds(mode: Conditional) {
    let dir = TestDir::new("create-only");
    let (_server, _proxy, args) = proxied_repository(&dir, mode);
    let s3_root = dir.path().join("s3");
    let header = std::fs::read_to_string(s3_root.join("bucket/co/repository.json")).unwrap();
    let out = run(walvault("walvault")
        .args(&args)
        .args(["check", "--storage"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The rest of the self-test: everything walvault relies on holds
    // here, whatever the server does with conditional creates.
    for check in [
        "write and read back",
        "ranged reads",
        "clock skew",
        "multipart upload",
        "abort",
        "listing",
        "delete",
        "range requests",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(check) && l.contains(" PASS ")),
            "{check} passes:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains("\"Resource\": \"arn:aws:s3:::bucket/co/*\"")
            && out.stdout.contains("\"s3:prefix\": [\"co/*\"]"),
        "the IAM policy names the bucket and prefix: {}",
        out.stdout
    );
    if mode == Conditional::Forward {
        assert!(header.contains("\"create_only\": \"atomic\""), "{header}");
        assert!(out.stdout.contains("(honoured)"), "{}", out.stdout);
        return;
    }
    assert!(
        header.contains("\"create_only\": \"head-check\""),
        "{header}"
    );
    let expected = if mode == Conditional::Ignore {
        "overwrote the object (ignored)"
    } else {
        "answered 501 (not implemented)"
    };
    assert!(
        out.stdout.contains(expected) && out.stdout.contains("head-check (unchanged)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("two writers"),
        "the race window is stated: {}",
        out.stderr
    );

    let wal = dir.subdir("wal");
    let other = dir.subdir("other");
    let size = WalSegmentSize::new(16 << 20).unwrap();
    // Compressed (one PUT) and stored uncompressed (16 MiB: multipart).
    for (segment, level) in [(1u64, "3"), (2, "0")] {
        let first = write_segment(&wal, SYSID, 1, segment, size, 1);
        let name = first.file_name().unwrap().to_str().unwrap().to_string();
        let push = |path: &Path| {
            run(walvault("walvault-push")
                .args(&args)
                .args(["--compress-level", level])
                .arg(path))
        };
        assert_eq!(push(&first).code, 0);
        let stored = std::fs::read(object_file(&s3_root, &name)).unwrap();
        let different = write_segment(&other, SYSID, 1, segment, size, 2);
        let out = push(&different);
        assert_eq!(out.code, 4, "{mode:?} level {level}: {}", out.stderr);
        assert_eq!(
            std::fs::read(object_file(&s3_root, &name)).unwrap(),
            stored,
            "{mode:?}: the archived object is untouched"
        );
        assert_eq!(push(&first).code, 0, "the same file again succeeds");
    }
    // The repository lock: a live lock is never overwritten.
    let lock = s3_root.join("bucket/co/lock/repository.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let held = serde_json::json!({"owner_id": "other", "command": "backup", "host": "db9", "pid": 99, "acquired_at": now, "lease_until": now + 3600}).to_string();
    std::fs::write(&lock, &held).unwrap();
    let out = run(walvault("walvault")
        .args(&args)
        .args(["expire", "--keep-full", "1"]));
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("db9"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), held);
}

#[test]
fn a_server_that_honours_conditional_writes_is_atomic() {
    create_only_holds(Conditional::Forward);
}

#[test]
fn a_server_that_ignores_conditional_writes_never_overwrites() {
    create_only_holds(Conditional::Ignore);
}

#[test]
fn a_server_that_answers_501_never_overwrites() {
    create_only_holds(Conditional::NotImplemented);
}

/// A server that ignores `Range` (played by the proxy): the self-test says
/// so as a warning, and ranged reads through walvault still return the
/// right bytes (it cuts the whole object itself).
#[test]
fn a_server_ignoring_ranges_is_named_by_the_storage_self_test() {
    let dir = TestDir::new("selftest-range");
    let (_server, _proxy, args) = proxied_repository(&dir, Conditional::IgnoreRange);
    let out = run(walvault("walvault")
        .args(&args)
        .args(["check", "--storage"]));
    assert_eq!(
        out.code, 0,
        "a warning, not a failure: {}{}",
        out.stdout, out.stderr
    );
    let line = |check: &str| {
        out.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(check))
            .unwrap_or_else(|| panic!("no {check} row: {}", out.stdout))
            .to_string()
    };
    let range = line("range requests");
    assert!(
        range.contains(" WARN ") && range.contains("ignored a range of 100 bytes"),
        "{range}"
    );
    assert!(line("ranged reads").contains(" PASS "), "{}", out.stdout);
}

/// The self-test of a local repository: everything passes, nothing stays.
#[test]
fn a_local_repository_passes_the_storage_self_test() {
    let dir = TestDir::new("selftest-local");
    let repo = dir.path().join("repo");
    crate::harness::init_local_repo(&repo, SYSID, 16 << 20);
    let out = run(walvault("walvault")
        .arg("--repo")
        .arg(&repo)
        .args(["check", "--storage"]));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains(" PASS ") || l.contains(" FAIL ") || l.contains(" WARN "))
        .collect();
    assert_eq!(rows.len(), 7, "{}", out.stdout);
    assert!(rows.iter().all(|l| l.contains(" PASS ")), "{}", out.stdout);
    let left: Vec<_> = crate::ops::files_under(&repo)
        .into_iter()
        .filter(|f| {
            f.strip_prefix(&repo)
                .unwrap()
                .to_string_lossy()
                .contains("selftest")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A server whose listings stop after the first page (played by the
/// proxy) breaks what expire and verify rely on: the self-test fails that
/// row and exits 8.
#[test]
fn a_server_with_broken_pagination_fails_the_storage_self_test() {
    let dir = TestDir::new("selftest-pages");
    let (_server, _proxy, args) = proxied_repository(&dir, Conditional::OnePageListings);
    let out = run(walvault("walvault")
        .args(&args)
        .args(["check", "--storage"]));
    assert_eq!(out.code, 8, "{}{}", out.stdout, out.stderr);
    let listing = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("listing"))
        .unwrap_or_else(|| panic!("no listing row: {}", out.stdout));
    assert!(
        listing.contains(" FAIL ") && listing.contains("listed 1000 keys"),
        "{listing}"
    );
    assert!(
        out.stdout.contains("breaks a walvault guarantee"),
        "{}",
        out.stdout
    );
}
