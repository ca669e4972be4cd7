//! Two repositories: a push is acknowledged only when every required
//! repository holds the file; fetch falls back from repo1 to repo2 and
//! says "missing" only when that is shown; `walvault copy` moves backups
//! and WAL between a local, passphrase-encrypted repo1 and an S3 repo2
//! with its own key file, checked, resumable and never overwriting; list
//! and status show both; and a recovery whose repo1 dies midway completes
//! from repo2.

use std::path::{Path, PathBuf};
use std::time::Duration;

use walvault::wal::WalSegmentSize;

use crate::harness::s3::{ACCESS_KEY, SECRET_KEY};
use crate::harness::wal::write_segment;
use crate::harness::{
    fake_pgdata, give_to_postgres, run, wait_for, walvault, PgCluster, S3Server, TestDir,
};
use crate::ops::files_under;
use crate::pitr::{Backend, Setup};

const SYSID: u64 = 7_312_345_678_901_234_567;
const PASSPHRASE: &str = "repo1-correct-horse-battery";

fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    give_to_postgres(path);
}

/// Synthetic WAL into two local repositories through walvault-push.
struct TwoLocal {
    dir: TestDir,
    config: PathBuf,
    pgdata: PathBuf,
    repo1: PathBuf,
    repo2: PathBuf,
}

impl TwoLocal {
    fn new(name: &str, repo2_required: bool) -> TwoLocal {
        let dir = TestDir::new(name);
        let repo1 = dir.path().join("repo1");
        let repo2 = dir.path().join("repo2");
        let config = dir.path().join("walvault.toml");
        std::fs::write(
            &config,
            format!(
                "repo = \"{}\"\n[repo2]\nrepo = \"{}\"\nrequired = {repo2_required}\n",
                repo1.display(),
                repo2.display()
            ),
        )
        .unwrap();
        let pgdata = fake_pgdata(dir.path(), SYSID, WalSegmentSize::DEFAULT.bytes());
        let t = TwoLocal {
            dir,
            config,
            pgdata,
            repo1,
            repo2,
        };
        let out = t.walvault(&["init", "--pgdata", t.pgdata.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(
            t.repo1.join("repository.json").is_file() && t.repo2.join("repository.json").is_file()
        );
        t
    }

    fn walvault(&self, args: &[&str]) -> crate::harness::Ran {
        run(walvault("walvault")
            .arg("--config")
            .arg(&self.config)
            .args(args))
    }

    fn segment(&self, n: u64) -> PathBuf {
        let wal = self.dir.subdir("pg_wal");
        write_segment(&wal, SYSID, 1, n, WalSegmentSize::DEFAULT, n as u8)
    }

    fn push(&self, path: &Path) -> crate::harness::Ran {
        run(walvault("walvault-push")
            .arg("--config")
            .arg(&self.config)
            .arg("--pgdata")
            .arg(&self.pgdata)
            .arg(path))
    }

    fn fetch(&self, name: &str) -> (crate::harness::Ran, PathBuf) {
        self.fetch_with(&[], name)
    }

    fn fetch_with(&self, extra: &[&str], name: &str) -> (crate::harness::Ran, PathBuf) {
        let dest = self.dir.path().join("fetched");
        let _ = std::fs::remove_file(&dest);
        let out = run(walvault("walvault-fetch")
            .arg("--config")
            .arg(&self.config)
            .args(extra)
            .arg("--fetch-retry-secs")
            .arg("0")
            .arg("--pgdata")
            .arg(&self.pgdata)
            .arg(name)
            .arg(&dest));
        (out, dest)
    }

    fn stored(&self, repo: &Path, name: &str) -> bool {
        files_under(&repo.join("wal"))
            .iter()
            .any(|p| p.ends_with(name))
    }
}

fn name_of(path: &Path) -> String {
    path.file_name().unwrap().to_str().unwrap().to_string()
}

#[test]
fn a_push_is_acknowledged_only_when_every_required_repository_holds_it() {
    let t = TwoLocal::new("two-push-required", true);
    let first = t.segment(1);
    let out = t.push(&first);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(t.stored(&t.repo1, &name_of(&first)) && t.stored(&t.repo2, &name_of(&first)));

    // repo2 gone (unmounted): the push fails, PostgreSQL keeps the file
    // and calls again; repo1 already holds it, which changes nothing.
    let away = t.dir.path().join("repo2-away");
    std::fs::rename(&t.repo2, &away).unwrap();
    let second = t.segment(2);
    let out = t.push(&second);
    assert_eq!(out.code, 9, "not initialized: {}", out.stderr);
    assert!(
        out.stderr.contains(&format!("\"{}\"", t.repo2.display())),
        "names repo2: {}",
        out.stderr
    );
    assert!(t.stored(&t.repo1, &name_of(&second)));
    std::fs::rename(&away, &t.repo2).unwrap();
    let out = t.push(&second);
    assert_eq!(out.code, 0, "the retry stores it in repo2: {}", out.stderr);
    assert!(t.stored(&t.repo2, &name_of(&second)));

    // Fetch: from repo1; with repo1 gone, from repo2, the same bytes.
    let want = std::fs::read(&second).unwrap();
    let (out, dest) = t.fetch(&name_of(&second));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&dest).unwrap(), want);
    let dead = t.dir.path().join("repo1-dead");
    std::fs::rename(&t.repo1, &dead).unwrap();
    let (out, dest) = t.fetch(&name_of(&second));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&dest).unwrap(), want);
    // A file repo2 lacks while repo1 fails may be in repo1 alone: a
    // failure, which stops recovery (exit 128 outside standby mode), never
    // "missing", even for the segment right after repo2's newest.
    for name in ["000000010000000000000003", "000000010000000000000009"] {
        let (out, dest) = t.fetch(name);
        assert_eq!(out.code, 128, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("\"{}\"", t.repo1.display())),
            "names repo1: {}",
            out.stderr
        );
        assert!(!dest.exists());
    }
    // With repo1 known lost, --repo-index 2 reads repo2 alone, and its
    // miss is final.
    let (out, _) = t.fetch_with(&["--repo-index", "2"], "000000010000000000000003");
    assert_eq!(out.code, 1, "{}", out.stderr);
    let (out, dest) = t.fetch_with(&["--repo-index", "2"], &name_of(&second));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&dest).unwrap(), want);
    std::fs::rename(&dead, &t.repo1).unwrap();
    // Both healthy and neither holds it: missing.
    let (out, _) = t.fetch("000000010000000000000009");
    assert_eq!(out.code, 1, "{}", out.stderr);
}

#[test]
fn an_optional_repository_never_fails_a_push_and_copy_fills_its_gap() {
    let t = TwoLocal::new("two-push-optional", false);
    let away = t.dir.path().join("repo2-away");
    std::fs::rename(&t.repo2, &away).unwrap();
    let segments: Vec<PathBuf> = (1..=3).map(|n| t.segment(n)).collect();
    for s in &segments {
        let out = t.push(s);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(
            out.stderr.contains("walvault copy --to repo2"),
            "{}",
            out.stderr
        );
    }
    std::fs::rename(&away, &t.repo2).unwrap();
    // status shows the gap (lag counted in whole seconds).
    std::thread::sleep(Duration::from_millis(1100));
    let out = t.walvault(&[
        "status",
        "--verify-stale-days",
        "0",
        "--offsite-warn-hours",
        "0",
        "--json",
    ]);
    assert!(
        out.stdout.contains("\"missing_wal_files\": 3"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("walvault copy --to repo2"),
        "{}",
        out.stdout
    );

    let out = t.walvault(&["copy", "--to", "repo2"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("and 3 WAL file(s)"), "{}", out.stdout);
    for s in &segments {
        assert!(t.stored(&t.repo2, &name_of(s)));
    }
    let out = t.walvault(&["status", "--verify-stale-days", "0", "--json"]);
    assert!(
        out.stdout.contains("\"missing_wal_files\": 0"),
        "{}",
        out.stdout
    );
    // An optional repo2 cannot vouch for "missing" when repo1 is gone.
    std::fs::rename(&t.repo1, t.dir.path().join("repo1-dead")).unwrap();
    let (out, dest) = t.fetch(&name_of(&segments[2]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read(dest).unwrap(),
        std::fs::read(&segments[2]).unwrap()
    );
    let (out, _) = t.fetch("000000010000000000000004");
    assert_eq!(out.code, 128, "{}", out.stderr);
}

/// The `[repo2]` table of an S3 repo2 with its own key file.
fn repo2_table(server_endpoint: &str, key_file: &Path) -> String {
    format!(
        "[repo2]\nrepo = \"s3://bucket/offsite\"\ns3_endpoint = \"{server_endpoint}\"\ns3_path_style = true\ns3_region = \"us-east-1\"\ns3_access_key_id = \"{ACCESS_KEY}\"\ns3_secret_access_key = \"{SECRET_KEY}\"\nencryption_key_file = \"{}\"\n",
        key_file.display()
    )
}

/// Runs `work` on repo2 as walvault opens it (its own key), in-process.
fn with_repo2<F, Fut, T>(setup: &Setup, work: F) -> T
where
    F: FnOnce(walvault::repo::Repository) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let config = setup.repo_args[1].clone();
    let global = walvault::config::GlobalArgs {
        config: Some(PathBuf::from(config)),
        repo_index: Some(2),
        ..Default::default()
    };
    let repo = walvault::config::Settings::resolve(&global)
        .unwrap()
        .open_repository()
        .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work(repo))
}

fn rows(c: &PgCluster) -> String {
    c.sql("SELECT count(*) || ':' || sum(id) FROM t")
}

/// Every file s3s-fs stores for repo2's backup `label`.
fn s3_backup_files(s3_root: &Path, label: &str) -> Vec<PathBuf> {
    let dir = s3_root.join("bucket/offsite/backup").join(label);
    if dir.exists() {
        files_under(&dir)
    } else {
        Vec::new()
    }
}

#[test]
fn copy_to_an_offsite_s3_repository_and_recover_from_it_when_repo1_dies() {
    let s3dir = TestDir::new("two-repos-s3");
    let server = S3Server::start(s3dir.path(), "bucket");
    let key_file = s3dir.path().join("repo2.key");
    write_private(
        &key_file,
        &(0..64u8)
            .map(|i| i.wrapping_mul(37) ^ 0x5a)
            .collect::<Vec<u8>>(),
    );
    give_to_postgres(s3dir.path());
    let extra = format!(
        "encryption_passphrase = \"{PASSPHRASE}\"\n{}",
        repo2_table(&server.endpoint, &key_file)
    );
    let setup = Setup::with_config("two-repos", Backend::Local, Some(&extra));
    let repo1 = setup.local_repo.clone().unwrap();
    let p = &setup.primary;
    p.sql("CREATE TABLE t(id int primary key, pad text)");
    p.sql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g");
    let first = setup.backup(p);

    // Copy: the backup and its WAL; a second copy finds nothing to do.
    let out = setup.walvault(&["copy", "--to", "repo2"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("copying 1 backup(s) ({first})")),
        "{}",
        out.stdout
    );
    let out = setup.walvault(&["copy", "--to", "repo2"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("copying 0 backup(s) (none) and 0 WAL file(s)"),
        "{}",
        out.stdout
    );

    // Resumable: take away repo2's manifest, summary and half of the
    // backup's files, as a copy killed midway leaves it; the next copy
    // completes it and skips what is there.
    let files = s3_backup_files(&server.root, &first);
    assert!(files.len() > 6, "{files:?}");
    let mut removed = 0;
    for (i, f) in files.iter().enumerate() {
        let name = f.file_name().unwrap().to_str().unwrap();
        if name == "manifest" || name == "summary" || (i % 2 == 0 && name != "writer") {
            std::fs::remove_file(f).unwrap();
            removed += 1;
        }
    }
    let out = setup.walvault(&["list", "--repo-index", "2"]);
    assert!(out.stdout.contains("incomplete"), "{}", out.stdout);
    let out = setup.walvault(&["copy", "--to", "repo2"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("copying 1 backup(s) ({first})")),
        "{}",
        out.stdout
    );
    let already: u64 = out
        .stdout
        .split("; ")
        .last()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(already as usize, files.len() - removed, "{}", out.stdout);

    // Never overwritten: a different object under a name repo2 holds
    // stops the copy with exit 4, and repo2 keeps its own.
    let second = setup.backup(p);
    let out = setup.walvault(&["copy", "--to", "repo2", "--set", &second, "--dry-run"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("would copy 1 backup(s) ({second})")),
        "{}",
        out.stdout
    );
    // status warns that repo2 lacks the newest backup.
    std::thread::sleep(Duration::from_millis(1100));
    let out = setup.walvault(&[
        "status",
        "--verify-stale-days",
        "0",
        "--offsite-warn-hours",
        "0",
    ]);
    assert_eq!(out.code, 1, "WARNING: {}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("offsite_lag") && out.stdout.contains(&second),
        "{}",
        out.stdout
    );
    // A copy killed (-9) midway: an incomplete backup in repo2, which
    // the next copy completes without copying its objects again.
    let mut copying = setup
        .command(&["copy", "--to", "repo2", "--set", &second, "--jobs", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the copy to store ten objects", 60, || {
        s3_backup_files(&server.root, &second).len() >= 10
    });
    copying.kill().unwrap();
    copying.wait().unwrap();
    let out = setup.walvault(&["list", "--repo-index", "2"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&second) && l.contains("incomplete")),
        "{}",
        out.stdout
    );
    let there = s3_backup_files(&server.root, &second).len();
    let out = setup.walvault(&["copy", "--to", "repo2", "--set", &second]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("{there} object(s) were already there")),
        "{there} objects were there: {}",
        out.stdout
    );
    let out = setup.walvault(&[
        "status",
        "--verify-stale-days",
        "0",
        "--offsite-warn-hours",
        "0",
    ]);
    assert!(!out.stdout.contains("offsite_lag"), "{}", out.stdout);
    let stored = s3_backup_files(&server.root, &second);
    let (a, b) = (
        stored.iter().find(|f| f.ends_with("files/000000")).unwrap(),
        stored.iter().find(|f| f.ends_with("files/000001")).unwrap(),
    );
    for f in stored
        .iter()
        .filter(|f| f.ends_with("manifest") || f.ends_with("summary"))
    {
        std::fs::remove_file(f).unwrap();
    }
    // A damaged object there (another object's bytes, which its key's
    // authentication refuses): corruption, exit 6, left as it is.
    std::fs::copy(b, a).unwrap();
    let damaged = std::fs::read(a).unwrap();
    let out = setup.walvault(&["copy", "--to", "repo2"]);
    assert_eq!(out.code, 6, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("files/000000"), "{}", out.stderr);
    assert_eq!(std::fs::read(a).unwrap(), damaged);
    // A sound object with other contents: a conflict, exit 4, left as
    // it is.
    let key = format!("backup/{second}/files/000000");
    let other = b"other contents under the same name".to_vec();
    with_repo2(&setup, |repo| async move {
        let mut src: &[u8] = b"other contents under the same name";
        walvault::repo::object::write_object(
            repo.store(),
            &walvault::storage::Key::new(key).unwrap(),
            walvault::storage::PutMode::Overwrite,
            &mut src,
            repo.compress(),
        )
        .await
        .unwrap();
    });
    let out = setup.walvault(&["copy", "--to", "repo2"]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("files/000000") && out.stderr.contains("nothing was overwritten"),
        "{}",
        out.stderr
    );
    let key = format!("backup/{second}/files/000000");
    let kept = with_repo2(&setup, |repo| async move {
        walvault::repo::object::read_to_vec(
            repo.store(),
            &walvault::storage::Key::new(key).unwrap(),
        )
        .await
        .unwrap()
        .0
    });
    assert_eq!(kept, other);
    // Mend it (a copy of repo1's backup into repo2 again, from scratch).
    for f in s3_backup_files(&server.root, &second) {
        std::fs::remove_file(f).unwrap();
    }
    let out = setup.walvault(&["copy", "--to", "repo2"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    // Both repositories listed, with the same backups and WAL.
    let out = setup.walvault(&["list", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let labels = |r: &serde_json::Value| -> Vec<String> {
        r["backups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["status"] == "complete")
            .map(|b| b["label"].as_str().unwrap().to_string())
            .collect()
    };
    let r2 = &json["more_repositories"][0];
    assert_eq!(
        (json["repo_index"].as_u64(), r2["repo_index"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(labels(&json), [first.clone(), second.clone()]);
    assert_eq!(labels(r2), labels(&json));
    assert!(
        r2["repository"].as_str().unwrap().contains("offsite"),
        "{r2}"
    );

    // Retention per repository: repo2 keeps one full backup, repo1 both.
    let out = setup.walvault(&["expire", "--repo-index", "2", "--keep-full", "1"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("removing backup {first}")),
        "{}",
        out.stdout
    );
    let out = setup.walvault(&["list", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(labels(&json), [first.clone(), second.clone()]);
    assert_eq!(labels(&json["more_repositories"][0]), [second.clone()]);

    // More WAL, pushed into both repositories as it is archived.
    for round in 0..6 {
        p.sql(&format!(
            "INSERT INTO t SELECT g, repeat('y', 200) FROM generate_series({}, {}) g",
            20001 + round * 10000,
            30000 + round * 10000
        ));
        p.switch_and_wait_archived(120);
    }
    let want = rows(p);
    let out = setup.walvault(&["list", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        json["wal"][0]["last_segment"], json["more_repositories"][0]["wal"][0]["last_segment"],
        "{json}"
    );

    // A restore from repo1 whose repo1 dies midway through recovery: each
    // fetch is slowed a little, so recovery is still running when the
    // repository directory disappears. WAL keeps coming from repo2; at
    // the end of the archive, a file repo2 lacks may be in repo1 alone,
    // so recovery stops there instead of ending at a point it cannot
    // vouch for.
    let (out, pgdata) = setup.restore("restored", &["--archive-mode", "off"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let auto = pgdata.join("postgresql.auto.conf");
    let conf = std::fs::read_to_string(&auto).unwrap();
    assert!(conf.contains("--repo2"), "{conf}");
    std::fs::write(
        &auto,
        conf.replace("restore_command = '", "restore_command = 'sleep 0.4; "),
    )
    .unwrap();
    let mut restored = PgCluster::existing(setup.dir.path(), "restored", pgdata.clone());
    restored.start();
    wait_for("recovery to fetch three files", 120, || {
        restored.server_log().matches("restored log file").count() >= 3
    });
    std::fs::rename(&repo1, repo1.with_extension("dead")).unwrap();
    wait_for("recovery to stop", 240, || {
        restored.server_log().contains("exited with exit code 128")
    });
    let log = restored.server_log();
    assert!(
        log.contains("restored from repo2 because repo1 failed"),
        "WAL came from repo2 after repo1 died:\n{log}"
    );
    assert!(!log.contains("archive recovery complete"), "{log}");
    wait_for("the server to stop", 60, || {
        !pgdata.join("postmaster.pid").exists()
    });
    // The DBA, knowing repo1 is gone, reads repo2 alone and starts again:
    // recovery goes on from its last restartpoint and completes.
    let conf = std::fs::read_to_string(&auto).unwrap();
    std::fs::write(
        &auto,
        conf.replace("walvault-fetch' ", "walvault-fetch' '--repo-index' '2' ")
            .replace("walvault-fetch ", "walvault-fetch --repo-index 2 "),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&auto)
        .unwrap()
        .contains("--repo-index"));
    restored.start();
    restored.wait_promoted(240);
    assert_eq!(rows(&restored), want, "every row recovered");
    restored.stop();
}
