//! Storage faults and kills, between real parts: an HTTP fault injector
//! between walvault and a real S3 server, and `kill -9` of walvault-push,
//! walvault-fetch and `walvault backup` at random moments, against a local
//! and an S3 repository.
//!
//! What must hold: a file acknowledged with exit 0 fetches byte-identical;
//! no partial object is ever visible as complete (an object either fetches
//! whole and verified, or is absent); every failure exits non-zero, and a
//! fetch never answers "missing" (1) for a stored file; a retry after any
//! fault or kill succeeds; leftovers of killed writers are cleaned up. Each
//! test prints its figures. All of it is bounded in time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use walvault::wal::WalSegmentSize;

use crate::harness::proxy::FaultProxy;
use crate::harness::wal::write_segment;
use crate::harness::{fake_pgdata, init_repo, run, walvault, S3Server, TestDir};
use crate::pitr::{Backend, Setup};

const SYSID: u64 = 7_333_333_333_333_333_333;

/// Prints a line of figures to stderr, and appends it to the file
/// `WALVAULT_TEST_FIGURES` names (scripts/test prints that file at the
/// end, since the test runner hides the output of passing tests).
macro_rules! figures {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        eprintln!("{line}");
        if let Ok(path) = std::env::var("WALVAULT_TEST_FIGURES") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{line}");
            }
        }
    }};
}

fn seg16() -> WalSegmentSize {
    WalSegmentSize::new(16 << 20).unwrap()
}

/// A small seeded generator: the same seed gives the same kill moments.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("WALVAULT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        figures!("seed {seed} (WALVAULT_TEST_SEED={seed} repeats this run)");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn kill9(child: &mut Child) {
    // SAFETY: kill on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Files whose name marks a temporary file of walvault, under `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                out.push(e.path());
            }
        }
    }
    out
}

/// Makes files look an hour old, as if time had passed since the kills.
fn age(files: &[PathBuf]) {
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for f in files {
        if let Ok(file) = std::fs::File::options().write(true).open(f) {
            let _ = file.set_modified(old);
        }
    }
}

/// How walvault reaches a repository: arguments, and the local root.
struct Repo {
    args: Vec<String>,
    local: Option<PathBuf>,
    _server: Option<S3Server>,
}

fn repo(dir: &TestDir, backend: Backend) -> Repo {
    match backend {
        Backend::Local => {
            let root = dir.path().join("repo");
            Repo {
                args: vec!["--repo".into(), root.display().to_string()],
                local: Some(root),
                _server: None,
            }
        }
        Backend::S3 => {
            let server = S3Server::start(dir.path(), "bucket");
            let config = dir.path().join("walvault.toml");
            std::fs::write(&config, server.config_toml("s3://bucket/kills")).unwrap();
            Repo {
                args: vec!["--config".into(), config.display().to_string()],
                local: None,
                _server: Some(server),
            }
        }
    }
}

fn push_cmd(args: &[String], path: &Path) -> Command {
    let mut cmd = walvault("walvault-push");
    cmd.args(args).arg(path);
    cmd
}

fn fetch_cmd(args: &[String], pgdata: &Path, name: &str) -> Command {
    let mut cmd = walvault("walvault-fetch");
    cmd.args(args)
        .args(["--fetch-retry-secs", "5", name, "pg_wal/RECOVERYXLOG"])
        .current_dir(pgdata);
    cmd
}

fn kill_push_and_fetch(backend: Backend, rounds: u64) {
    let dir = TestDir::new("kills");
    let repo = repo(&dir, backend);
    let data = fake_pgdata(dir.path(), SYSID, 16 << 20);
    init_repo(&repo.args, &data);
    let wal = dir.subdir("wal");
    let pgdata = dir.subdir("pgdata");
    std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
    let dest = pgdata.join("pg_wal/RECOVERYXLOG");
    let mut rng = Rng::new();
    let started = Instant::now();
    let (mut kills, mut acked, mut lost, mut corrupt, mut partial_seen) = (0, 0, 0, 0, 0);
    for i in 0..rounds {
        let seg = write_segment(&wal, SYSID, 1, i + 1, seg16(), i as u8);
        let name = seg.file_name().unwrap().to_str().unwrap().to_string();
        let original = std::fs::read(&seg).unwrap();
        // Every other file is stored uncompressed: 16 MiB objects, which
        // go to S3 as multipart uploads.
        let level = if i % 2 == 0 { "3" } else { "0" };
        let mut child = push_cmd(&repo.args, &seg)
            .args(["--compress-level", level])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(60)));
        kills += 1;
        kill9(&mut child);
        // Whatever the kill left, the name holds the whole file or nothing.
        let out = run(&mut fetch_cmd(&repo.args, &pgdata, &name));
        match out.code {
            0 => {
                if std::fs::read(&dest).unwrap() != original {
                    corrupt += 1;
                }
            }
            1 => {}
            _ => {
                partial_seen += 1;
                eprintln!("after a killed push, fetch of {name}: {}", out.stderr);
            }
        }
        // The retry PostgreSQL makes succeeds.
        let out = run(push_cmd(&repo.args, &seg).args(["--compress-level", level]));
        assert_eq!(out.code, 0, "retry of {name}: {}", out.stderr);
        acked += 1;
        // A killed fetch never leaves a partial %p.
        let _ = std::fs::remove_file(&dest);
        let mut child = fetch_cmd(&repo.args, &pgdata, &name).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        kills += 1;
        kill9(&mut child);
        if dest.exists() && std::fs::read(&dest).unwrap() != original {
            corrupt += 1;
        }
        let out = run(&mut fetch_cmd(&repo.args, &pgdata, &name));
        if out.code != 0 {
            lost += 1;
            eprintln!("fetch of acknowledged {name}: {} {}", out.code, out.stderr);
        } else if std::fs::read(&dest).unwrap() != original {
            corrupt += 1;
        }
    }
    // Leftovers of the kills go: in the repository on the next put into
    // the same directory, in pg_wal on the next fetch, once their writer is
    // gone and they are old enough to judge.
    let mut leftovers = (0, 0);
    if let Some(root) = &repo.local {
        let temps = temp_files(root);
        leftovers.0 = temps.len();
        age(&temps);
        let seg = write_segment(&wal, SYSID, 1, rounds + 1, seg16(), 0);
        assert_eq!(run(&mut push_cmd(&repo.args, &seg)).code, 0);
        leftovers.1 = temp_files(root).len();
        assert_eq!(leftovers.1, 0, "{:?}", temp_files(root));
    }
    let fetch_temps = temp_files(&pgdata);
    age(&fetch_temps);
    let out = run(&mut fetch_cmd(
        &repo.args,
        &pgdata,
        "000000010000000000000001",
    ));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(temp_files(&pgdata).is_empty(), "{:?}", temp_files(&pgdata));
    let out = run(walvault("walvault").args(&repo.args).arg("verify"));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    figures!(
        "kills ({backend:?}): {kills} kills, {acked} acknowledged, {lost} lost, {corrupt} corrupt, {partial_seen} partial objects seen, {} repository and {} pg_wal temporary files left by kills then swept, {:.1}s",
        leftovers.0,
        fetch_temps.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((lost, corrupt, partial_seen), (0, 0, 0));
}

#[test]
fn kill_9_of_push_and_fetch_local() {
    kill_push_and_fetch(Backend::Local, 30);
}

#[test]
fn kill_9_of_push_and_fetch_s3() {
    kill_push_and_fetch(Backend::S3, 16);
}

/// How many backup file objects the local repository holds.
fn stored_files(repo: &std::path::Path) -> usize {
    let backups = repo.join("backup");
    if !backups.exists() {
        return 0;
    }
    crate::ops::files_under(&backups)
        .iter()
        .filter(|f| f.parent().is_some_and(|d| d.ends_with("files")))
        .count()
}

/// `walvault backup` killed at random moments: an interrupted backup is
/// never restored from, and expire removes it with its temporary files.
#[test]
fn kill_9_of_backup() {
    let setup = Setup::new("kill-backup", Backend::Local);
    let p = &setup.primary;
    crate::harness::run_ok(
        p.client("pgbench")
            .args(["-i", "-s", "3", "-q", "postgres"]),
    );
    let repo = setup.local_repo.clone().unwrap();
    let mut rng = Rng::new();
    let kills = 3;
    for _ in 0..kills {
        let before = stored_files(&repo);
        let mut child = setup
            .command(&[
                "backup",
                "--pgdata",
                p.data.to_str().unwrap(),
                "--dbname",
                &Setup::conninfo(p),
                "--no-progress",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Killed while it copies files: after a random number of them (a
        // random sleep alone may outlast a backup this small).
        let at = before + 1 + rng.below(200) as usize;
        crate::harness::wait_for("the backup to store files", 60, || {
            stored_files(&repo) >= at
        });
        kill9(&mut child);
        // The killed backup's lock stays; the next backup, on the same
        // host, sees its holder is gone and takes it over at once.
        assert!(repo.join("lock/repository.lock").exists());
    }
    // PostgreSQL ends a backup whose session died; nothing is restorable yet.
    let (out, _) = setup.restore("nothing", &[]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("no complete backup"),
        "a killed backup is never restored from: {}",
        out.stderr
    );
    let label = setup.backup(p);
    p.sql("CREATE TABLE after_backup(i int)");
    p.switch_and_wait_archived(120);
    let out = setup.walvault(&["list", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let incomplete = json["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "incomplete")
        .count();
    let temps_before = temp_files(&repo).len();
    age(&temp_files(&repo));
    let (out, _) = setup.restore("dry", &["--dry-run"]);
    assert!(out.stdout.contains(&label), "{}", out.stdout);
    let out = setup.walvault(&["expire", "--keep-full", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dirs: Vec<String> = std::fs::read_dir(repo.join("backup"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(dirs, vec![label.clone()], "{}", out.stdout);
    assert!(temp_files(&repo).is_empty(), "{:?}", temp_files(&repo));
    let r = setup.restore_and_start("restored", &[]);
    assert_eq!(r.sql("SELECT count(*) FROM pgbench_branches"), "3");
    figures!(
        "backup kills: {kills} kills, {incomplete} incomplete backups listed, {temps_before} temporary files, all removed by expire; the complete backup {label} restored"
    );
}

/// Storage faults on every kind of request: nothing acknowledged is lost,
/// every failure is non-zero, and fetch never calls a stored file missing.
#[test]
fn s3_faults_lose_nothing_acknowledged() {
    let dir = TestDir::new("faults");
    let server = S3Server::start(dir.path(), "bucket");
    let upstream = server.endpoint.trim_start_matches("http://").to_string();
    let mut rng = Rng::new();
    let proxy = FaultProxy::start(&upstream, rng.below(u64::MAX), 0);
    let direct = dir.path().join("direct.toml");
    std::fs::write(&direct, server.config_toml("s3://bucket/faults")).unwrap();
    let faulty = dir.path().join("faulty.toml");
    std::fs::write(
        &faulty,
        format!(
            "{}s3_timeout_secs = 2\ns3_part_size_mib = 5\ns3_single_put_max_mib = 5\n",
            server
                .config_toml("s3://bucket/faults")
                .replace(&server.endpoint, &proxy.endpoint)
        ),
    )
    .unwrap();
    let direct_args = vec!["--config".to_string(), direct.display().to_string()];
    let faulty_args = vec!["--config".to_string(), faulty.display().to_string()];
    let data = fake_pgdata(dir.path(), SYSID, 16 << 20);
    init_repo(&direct_args, &data);
    let wal = dir.subdir("wal");
    let pgdata = dir.subdir("pgdata");
    std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
    let dest = pgdata.join("pg_wal/RECOVERYXLOG");
    proxy.set_fault_percent(50);
    let started = Instant::now();
    let files = 16u64;
    let (mut pushes, mut push_failures, mut fetches, mut fetch_failures) = (0, 0, 0, 0);
    let (mut lost, mut corrupt, mut said_missing) = (0, 0, 0);
    let mut originals = Vec::new();
    for i in 0..files {
        let seg = write_segment(&wal, SYSID, 1, i + 1, seg16(), i as u8);
        let level = if i % 2 == 0 { "3" } else { "0" };
        let mut acked = false;
        for _ in 0..12 {
            pushes += 1;
            let out = run(push_cmd(&faulty_args, &seg).args(["--compress-level", level]));
            match out.code {
                0 => {
                    acked = true;
                    break;
                }
                5 => push_failures += 1,
                other => panic!("push failed with {other}: {}", out.stderr),
            }
        }
        assert!(acked, "push of segment {i} never succeeded");
        originals.push((
            seg.file_name().unwrap().to_str().unwrap().to_string(),
            std::fs::read(&seg).unwrap(),
        ));
    }
    for (name, original) in &originals {
        let mut ok = false;
        for _ in 0..12 {
            fetches += 1;
            let _ = std::fs::remove_file(&dest);
            let out = run(&mut fetch_cmd(&faulty_args, &pgdata, name));
            match out.code {
                0 => {
                    if std::fs::read(&dest).unwrap() != *original {
                        corrupt += 1;
                    }
                    ok = true;
                    break;
                }
                1 => {
                    said_missing += 1;
                    break;
                }
                128 => fetch_failures += 1,
                other => panic!("fetch failed with {other}: {}", out.stderr),
            }
        }
        if !ok {
            lost += 1;
        }
    }
    // Without faults, everything acknowledged is there, whole.
    proxy.set_fault_percent(0);
    for (name, original) in &originals {
        let out = run(&mut fetch_cmd(&direct_args, &pgdata, name));
        if out.code != 0 {
            lost += 1;
        } else if std::fs::read(&dest).unwrap() != *original {
            corrupt += 1;
        }
    }
    let out = run(walvault("walvault").args(&direct_args).arg("verify"));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    figures!(
        "faults: {pushes} pushes ({push_failures} failed, retried), {} acknowledged, {fetches} fetches ({fetch_failures} failed with 128, retried), {lost} lost, {corrupt} corrupt, {said_missing} stored files called missing; injected per connection: {:?}; {:.1}s",
        originals.len(),
        proxy.counts(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((lost, corrupt, said_missing), (0, 0, 0));
}
