//! Encrypted repositories against a real PostgreSQL 15, locally and on a
//! real S3 server: WAL, a backup and a point-in-time restore round trip;
//! no 64-byte run of any archived WAL segment or data file is stored; a
//! flipped byte is found; a wrong or missing key is its own error, never
//! shown with the secret.

use std::collections::HashSet;
use std::path::Path;

use crate::harness::{give_to_postgres, run, walvault};
use crate::ops::files_under as files_below;
use crate::pitr::{Backend, Setup};

const PASSPHRASE: &str = "zq7-correct-horse-battery-staple";

/// Hashes of the 64-byte runs of `plain` worth looking for (not one byte
/// repeated, which any file may hold by chance), every `step` bytes.
fn runs_of(plain: &[u8], step: usize, into: &mut HashSet<[u8; 32]>) {
    let mut i = 0;
    while i + 64 <= plain.len() {
        let w = &plain[i..i + 64];
        if w.iter().any(|b| *b != w[0]) {
            into.insert(*blake3::hash(w).as_bytes());
        }
        i += step;
    }
}

/// Whether any stored file under `root` holds one of the runs.
fn stored_runs(root: &Path, runs: &HashSet<[u8; 32]>) -> Vec<String> {
    let mut found = Vec::new();
    for path in files_below(root) {
        let bytes = std::fs::read(&path).unwrap();
        if bytes
            .windows(64)
            .any(|w| runs.contains(blake3::hash(w).as_bytes()))
        {
            found.push(path.display().to_string());
        }
    }
    found
}

fn rows(setup: &Setup) -> String {
    setup
        .primary
        .sql("SELECT count(*) || ':' || sum(id) FROM t")
}

fn round_trip(name: &str, backend: Backend, secret: &str) -> Setup {
    let setup = Setup::with_config(name, backend, Some(secret));
    let p = &setup.primary;
    p.sql("CREATE TABLE t(id int primary key, note text)");
    p.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    setup.backup(p);
    p.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(20001, 30000) g");
    let want = rows(&setup);
    p.switch_and_wait_archived(120);
    let mut r = setup.restore_and_start("restored", &["--archive-mode", "off"]);
    assert_eq!(r.sql("SELECT count(*) || ':' || sum(id) FROM t"), want);
    r.stop();
    let verify = setup.walvault(&["verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    setup
}

#[test]
fn an_encrypted_local_repository_round_trips_and_stores_no_plaintext() {
    let setup = round_trip(
        "enc-local",
        Backend::Local,
        &format!("encryption_passphrase = \"{PASSPHRASE}\""),
    );
    let root = setup.local_repo.clone().unwrap();
    let header = std::fs::read_to_string(root.join("repository.json")).unwrap();
    assert!(header.contains("\"encryption\""), "{header}");
    assert!(header.contains("\"format_version\": 2"), "{header}");
    assert!(!header.contains(PASSPHRASE));

    // No 64-byte run of any archived WAL segment or of the table's file.
    let p = &setup.primary;
    let mut runs = HashSet::new();
    let pg_wal = p.data.join("pg_wal");
    let mut segments = 0;
    for e in std::fs::read_dir(&pg_wal).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.len() == 24
            && p.data
                .join("pg_wal/archive_status")
                .join(format!("{name}.done"))
                .exists()
        {
            runs_of(&std::fs::read(&path).unwrap(), 509, &mut runs);
            segments += 1;
        }
    }
    p.sql("CHECKPOINT");
    let table = p.sql("SELECT pg_relation_filepath('t')");
    runs_of(&std::fs::read(p.data.join(table)).unwrap(), 131, &mut runs);
    assert!(
        segments > 0 && runs.len() > 1000,
        "{segments} segments, {} runs",
        runs.len()
    );
    let found = stored_runs(&root, &runs);
    assert!(found.is_empty(), "plaintext runs stored in {found:?}");
    // Nor the BLAKE3 of any archived segment (a plain checksum would let
    // anyone confirm a guessed content).
    let sums: Vec<[u8; 32]> = std::fs::read_dir(&pg_wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().len() == 24 && p.is_file())
        .map(|p| *blake3::hash(&std::fs::read(p).unwrap()).as_bytes())
        .collect();
    let heads: HashSet<[u8; 8]> = sums.iter().map(|s| s[..8].try_into().unwrap()).collect();
    for path in files_below(&root) {
        let bytes = std::fs::read(&path).unwrap();
        for (i, w) in bytes.windows(8).enumerate() {
            let head: [u8; 8] = w.try_into().unwrap();
            if heads.contains(&head) {
                assert!(
                    !sums.iter().any(|s| bytes.get(i..i + 32) == Some(&s[..])),
                    "{} holds a segment's plain checksum",
                    path.display()
                );
            }
        }
    }

    // A flipped byte in an encrypted WAL object is damage (exit 6).
    let wal_object = files_below(&root.join("wal"))
        .into_iter()
        .find(|f| f.file_name().unwrap().len() == 24)
        .unwrap();
    let mut bytes = std::fs::read(&wal_object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&wal_object, bytes).unwrap();
    let verify = setup.walvault(&["verify"]);
    assert_eq!(verify.code, 6, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("authentication"),
        "{}",
        verify.stdout
    );
}

#[test]
fn wrong_and_missing_keys_are_their_own_error() {
    let setup = Setup::with_config(
        "enc-keys",
        Backend::Local,
        Some(&format!("encryption_passphrase = \"{PASSPHRASE}\"")),
    );
    setup.backup(&setup.primary);
    let root = setup.local_repo.clone().unwrap();
    let config = |name: &str, text: String| {
        let path = setup.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        give_to_postgres(&path);
        path
    };
    let repo_line = format!("repo = \"{}\"\n", root.display());
    let wrong = config(
        "wrong.toml",
        format!("{repo_line}encryption_passphrase = \"zq-something-else\"\n"),
    );
    let missing = config("missing.toml", repo_line.clone());
    for (cfg, needle) in [
        (&wrong, "wrong passphrase or key"),
        (&missing, "no key is configured"),
    ] {
        for args in [
            &["list"][..],
            &["verify"],
            &["restore", "--pgdata", "/nonexistent/x"],
        ] {
            let out = run(walvault("walvault").arg("--config").arg(cfg).args(args));
            assert_eq!(out.code, 10, "{args:?}: {}{}", out.stdout, out.stderr);
            assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
            assert!(!out.stderr.contains(PASSPHRASE) && !out.stderr.contains("zq-something"));
        }
        // walvault-fetch outside standby mode stops recovery (never
        // "missing"); the reason is the key.
        let dest = setup.dir.path().join("fetched");
        let out = run(walvault("walvault-fetch")
            .arg("--config")
            .arg(cfg)
            .arg("000000010000000000000001")
            .arg(&dest)
            .arg("--pgdata")
            .arg(&setup.primary.data));
        assert_eq!(out.code, 128, "{}", out.stderr);
        assert!(out.stderr.contains(needle), "{}", out.stderr);
    }
    // A deleted header never turns the repository into a plain one.
    let header = root.join("repository.json");
    let saved = std::fs::read(&header).unwrap();
    std::fs::remove_file(&header).unwrap();
    let out = setup.walvault(&["list"]);
    assert_eq!(out.code, 10, "{}", out.stderr);
    assert!(out.stderr.contains("has no header"), "{}", out.stderr);
    std::fs::write(&header, saved).unwrap();
    // A key for a repository that is not encrypted is refused too.
    let plain_root = setup.dir.subdir("plain");
    let init = run(walvault("walvault")
        .args(["--repo", plain_root.to_str().unwrap(), "init", "--pgdata"])
        .arg(&setup.primary.data));
    assert_eq!(init.code, 0, "{}", init.stderr);
    let keyed = config(
        "keyed.toml",
        format!(
            "repo = \"{}\"\nencryption_passphrase = \"{PASSPHRASE}\"\n",
            plain_root.display()
        ),
    );
    let out = run(walvault("walvault").arg("--config").arg(&keyed).arg("list"));
    assert_eq!(out.code, 10, "{}", out.stderr);
    assert!(out.stderr.contains("is not encrypted"), "{}", out.stderr);
    // Rotation: the data key is wrapped anew; the old passphrase no longer
    // opens the repository, the new one does, and the backup restores.
    let config_path = setup.repo_args[1].clone();
    let out = run(walvault("walvault")
        .args(["--config", &config_path, "key", "rotate"])
        .env(
            "WALVAULT_NEW_ENCRYPTION_PASSPHRASE",
            "zq-rotated-passphrase-2027",
        ));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("zq-rotated") && !out.stderr.contains("zq-rotated"));
    let out = run(walvault("walvault").args(["--config", &config_path, "list"]));
    assert_eq!(
        out.code, 10,
        "the old passphrase after rotation: {}",
        out.stderr
    );
    let rotated = config(
        "rotated.toml",
        format!("{repo_line}encryption_passphrase = \"zq-rotated-passphrase-2027\"\n"),
    );
    let out = run(walvault("walvault")
        .arg("--config")
        .arg(&rotated)
        .arg("list"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let target = setup.dir.path().join("after-rotation");
    let out = run(walvault("walvault")
        .arg("--config")
        .arg(&rotated)
        .args(["restore", "--target-immediate", "--pgdata"])
        .arg(&target));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(target.join("global/pg_control").exists());
    // A config file holding a passphrase that others may read is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(walvault("walvault").arg("--config").arg(&wrong).arg("list"));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
}

#[test]
fn an_encrypted_s3_repository_round_trips_with_a_key_file() {
    // The key file must exist (mode 600, readable by postgres) first.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("walvault.key");
    std::fs::write(&key, "q9RHk3b1r5WcV8y0+Jm2nA7tUeZ4sLpXoD6fGiKwCQE=\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    give_to_postgres(&key);
    let setup = round_trip(
        "enc-s3",
        Backend::S3,
        &format!("encryption_key_file = \"{}\"", key.display()),
    );
    // What the S3 server stored is encrypted: every object but the header
    // starts with the encryption header.
    let stored = setup.dir.path().join("s3");
    let mut checked = 0;
    for f in files_below(&stored) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name == "repository.json"
            || name.starts_with('.')
            || f.to_string_lossy().contains("/probe/")
        {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        if bytes.len() >= 4 && (&bytes[..4] == b"WVLT" || &bytes[..4] == b"WVEN") {
            assert_eq!(&bytes[..4], b"WVEN", "{} is not encrypted", f.display());
            checked += 1;
        }
    }
    assert!(checked > 10, "{checked} objects checked");
}
