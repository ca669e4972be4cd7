//! Asynchronous archiving (`archive_async`): a real cluster archiving
//! through the spool and its worker, errors of the worker reaching
//! PostgreSQL with the synchronous exit codes, an outage failing within
//! the configured time, `kill -9` of worker and foreground losing nothing,
//! and the fallback to synchronous pushing when the spool is gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use walvault::wal::WalSegmentSize;

use crate::harness::wal::write_segment;
use crate::harness::{
    fake_pgdata, give_to_postgres, init_repo, run, run_ok, walvault, PgCluster, Ran, S3Server,
    TestDir,
};

const SYSID: u64 = 7_355_555_555_555_555_555;

fn seg16() -> WalSegmentSize {
    WalSegmentSize::new(16 << 20).unwrap()
}

/// A data directory with `count` synthetic segments marked ready, as
/// PostgreSQL leaves them for archive_command.
fn ready_segments(dir: &Path, count: u64) -> (PathBuf, Vec<PathBuf>) {
    let data = fake_pgdata(dir, SYSID, 16 << 20);
    let wal = data.join("pg_wal");
    std::fs::create_dir_all(wal.join("archive_status")).unwrap();
    let segs = (1..=count)
        .map(|i| {
            let seg = write_segment(&wal, SYSID, 1, i, seg16(), i as u8);
            let name = seg.file_name().unwrap().to_str().unwrap().to_string();
            std::fs::write(wal.join("archive_status").join(format!("{name}.ready")), "").unwrap();
            seg
        })
        .collect();
    (data, segs)
}

fn config(dir: &Path, repo_line: &str, extra: &str) -> PathBuf {
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    give_to_postgres(&spool);
    let path = dir.join("async.toml");
    std::fs::write(
        &path,
        format!(
            "{repo_line}\narchive_async = true\nspool_path = \"{}\"\narchive_jobs = 4\n{extra}",
            spool.display()
        ),
    )
    .unwrap();
    give_to_postgres(&path);
    path
}

/// A local repository bound to a data directory with `count` segments
/// marked ready, and an async config for it: (dir, repo, config, data
/// directory, segments).
fn local_async(name: &str, count: u64) -> (TestDir, PathBuf, PathBuf, PathBuf, Vec<PathBuf>) {
    let dir = TestDir::new(name);
    let repo = dir.path().join("repo");
    let cfg = config(dir.path(), &format!("repo = \"{}\"", repo.display()), "");
    let (data, segs) = ready_segments(dir.path(), count);
    init_repo(&["--repo".to_string(), repo.display().to_string()], &data);
    (dir, repo, cfg, data, segs)
}

fn push(config: &Path, data: &Path, seg: &Path) -> Ran {
    run(walvault("walvault-push")
        .arg("--config")
        .arg(config)
        .arg(seg.strip_prefix(data).unwrap())
        .current_dir(data))
}

fn fetch_identical(config: &Path, dir: &Path, seg: &Path) -> bool {
    let name = seg.file_name().unwrap().to_str().unwrap();
    let dest = dir.join("fetched");
    let out = run(walvault("walvault-fetch")
        .arg("--config")
        .arg(config)
        .args([name, dest.to_str().unwrap()])
        .current_dir(dir));
    out.code == 0 && std::fs::read(&dest).unwrap() == std::fs::read(seg).unwrap()
}

/// Processes whose command line mentions `needle` (our own workers).
fn pids_mentioning(needle: &str) -> Vec<i32> {
    pids_mentioning_all(&[needle])
}

/// Processes whose command line mentions every one of `needles`.
fn pids_mentioning_all(needles: &[&str]) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    needles.iter().all(|n| c.contains(n))
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_cluster_archives_through_the_spool() {
    let dir = TestDir::new("async-cluster");
    let bin = dir.install_binaries();
    let repo = dir.subdir("repo");
    let originals = dir.subdir("originals");
    let cfg = config(dir.path(), &format!("repo = \"{}\"", repo.display()), "");
    let mut p = PgCluster::init(dir.path(), "primary", &["--wal-segsize=1"]);
    init_repo(
        &["--config".to_string(), cfg.display().to_string()],
        &p.data,
    );
    p.append_conf(&format!(
        "wal_level = replica\narchive_mode = on\narchive_command = '{}/walvault-push --config {} %p && cp %p {}/%f'\n",
        bin.display(),
        cfg.display(),
        originals.display()
    ));
    p.start();
    run_ok(
        p.client("pgbench")
            .args(["-i", "-s", "2", "-q", "postgres"]),
    );
    run_ok(
        p.client("pgbench")
            .args(["-n", "-c", "2", "-t", "300", "postgres"]),
    );
    p.switch_and_wait_archived(120);
    let archived: Vec<PathBuf> = std::fs::read_dir(&originals)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(archived.len() > 10, "{} files", archived.len());
    for f in &archived {
        assert!(
            fetch_identical(&cfg, dir.path(), f),
            "{} byte-identical",
            f.display()
        );
    }
    let logs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path().join("worker.log"))
        .filter(|l| l.exists())
        .collect();
    assert_eq!(logs.len(), 1, "one spool, with its worker's log");
    let failed = p.sql("SELECT failed_count FROM pg_stat_archiver");
    assert_eq!(
        failed,
        "0",
        "no archive_command failure:\n{}",
        p.server_log()
    );

    // A backup, more WAL, and a restore that replays it all through the
    // prefetching restore_command (the config file turns it on).
    let args = ["--config".to_string(), cfg.display().to_string()];
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        p.socket_dir.display(),
        p.port
    );
    let out = run(walvault("walvault").args(&args).args([
        "backup",
        "--pgdata",
        p.data.to_str().unwrap(),
        "--dbname",
        &conninfo,
        "--no-progress",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    run_ok(
        p.client("pgbench")
            .args(["-n", "-c", "2", "-t", "300", "postgres"]),
    );
    let expected = p.sql("SELECT sum(abalance) FROM pgbench_accounts");
    p.switch_and_wait_archived(120);
    let target = dir.path().join("restored");
    let out = run(std::process::Command::new(bin.join("walvault"))
        .args(&args)
        .args(["restore", "--archive-mode", "off", "--pgdata"])
        .arg(&target));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut r = PgCluster::existing(dir.path(), "restored", target);
    r.start();
    r.wait_promoted(180);
    assert_eq!(
        r.sql("SELECT sum(abalance) FROM pgbench_accounts"),
        expected
    );
    // Recovery has ended: the prefetch worker removes its spool.
    crate::harness::wait_for("the prefetch spool removed", 60, || {
        !r.data.join("pg_wal/walvault_prefetch").exists()
    });
}

#[test]
fn worker_errors_reach_postgresql_with_the_synchronous_codes() {
    let (dir, repo, cfg, data, segs) = local_async("async-errors", 2);
    // A different file is already archived under the first name.
    let other = dir.subdir("other");
    let different = write_segment(&other, SYSID, 1, 1, seg16(), 99);
    let out = run(walvault("walvault-push")
        .args(["--repo", repo.to_str().unwrap()])
        .arg(&different));
    assert_eq!(out.code, 0);
    let out = push(&cfg, &data, &segs[0]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("different contents"), "{}", out.stderr);
    // The other file goes through, and is then done at once.
    assert_eq!(push(&cfg, &data, &segs[1]).code, 0);
    assert_eq!(push(&cfg, &data, &segs[1]).code, 0);
    assert!(fetch_identical(&cfg, dir.path(), &segs[1]));
}

#[test]
fn an_outage_fails_within_the_configured_time() {
    let dir = TestDir::new("async-outage");
    let server = S3Server::start(dir.path(), "bucket");
    let s3 = server.config_toml("s3://bucket/async");
    let cfg = config(
        dir.path(),
        &s3,
        "archive_timeout_secs = 5\ns3_timeout_secs = 1\n",
    );
    let (data, segs) = ready_segments(dir.path(), 1);
    init_repo(&["--config".to_string(), cfg.display().to_string()], &data);
    drop(server);
    let started = std::time::Instant::now();
    let out = push(&cfg, &data, &segs[0]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn kill_9_of_worker_and_foreground_loses_nothing() {
    let (dir, repo, cfg, data, segs) = local_async("async-kills", 16);
    let needle = cfg.display().to_string();
    let mut kills = 0;
    for (i, seg) in segs.iter().enumerate() {
        let mut child = walvault("walvault-push")
            .arg("--config")
            .arg(&cfg)
            .arg(seg.strip_prefix(&data).unwrap())
            .current_dir(&data)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + (i as u64 * 7) % 40));
        // SAFETY: kill of processes this test started.
        for pid in pids_mentioning(&needle) {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            kills += 1;
        }
        let _ = child.wait();
    }
    // PostgreSQL calls again for each: every one succeeds.
    for seg in &segs {
        let out = push(&cfg, &data, seg);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    for seg in &segs {
        assert!(fetch_identical(&cfg, dir.path(), seg), "{}", seg.display());
    }
    let out = run(walvault("walvault").args(["--repo", repo.to_str().unwrap(), "verify"]));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    eprintln!(
        "async kills: {kills} processes killed, {} files, 0 lost",
        segs.len()
    );
    for pid in pids_mentioning(&needle) {
        // SAFETY: as above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

#[test]
fn a_deleted_spool_falls_back_to_synchronous_pushing() {
    let (dir, _repo, cfg, data, segs) = local_async("async-nospool", 1);
    std::fs::remove_dir_all(dir.path().join("spool")).unwrap();
    let out = push(&cfg, &data, &segs[0]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("pushing synchronously"),
        "{}",
        out.stderr
    );
    assert!(fetch_identical(&cfg, dir.path(), &segs[0]));
}

/// A spool on a file system with no space left: the push falls back to
/// pushing synchronously, with the warning, and the file is stored. The
/// spool is a 64 KiB tmpfs filled to the last byte (mounting needs root,
/// as the whole suite does).
#[test]
fn a_full_spool_falls_back_to_synchronous_pushing() {
    let (dir, _repo, cfg, data, segs) = local_async("async-fullspool", 1);
    let spool = dir.path().join("spool");
    run_ok(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0777", "tmpfs"])
            .arg(&spool),
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(spool.clone());
    // Fill it: writes go on until the file system refuses one.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(spool.join("filler")).unwrap();
        let block = [0u8; 4096];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.sync_all();
    }
    let out = push(&cfg, &data, &segs[0]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("pushing synchronously") && out.stderr.contains("No space left"),
        "{}",
        out.stderr
    );
    assert!(fetch_identical(&cfg, dir.path(), &segs[0]));
}

/// WAL that waits to be archived shows in `status --pgdata` and its
/// metric, and turns the level to WARNING, then CRITICAL.
#[test]
fn status_reports_the_archive_backlog() {
    let dir = TestDir::new("backlog");
    let repo = dir.path().join("repo");
    let (data, _segs) = ready_segments(dir.path(), 3);
    init_repo(&["--repo".to_string(), repo.display().to_string()], &data);
    let metrics = dir.path().join("status.prom");
    let status = |extra: &[&str]| {
        run(walvault("walvault")
            .args([
                "--repo",
                repo.to_str().unwrap(),
                "status",
                "--json",
                "--pgdata",
            ])
            .arg(&data)
            .arg("--metrics-file")
            .arg(&metrics)
            .args(extra))
    };
    let backlog_level = |out: &Ran| -> Option<String> {
        let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(json["archive_backlog"]["segments"], 3, "{}", out.stdout);
        assert_eq!(
            json["archive_backlog"]["bytes"],
            3 * (16 << 20),
            "{}",
            out.stdout
        );
        json["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["check"] == "archive_backlog")
            .map(|r| r["level"].as_str().unwrap().to_string())
    };
    assert_eq!(
        backlog_level(&status(&[])),
        None,
        "3 files is within the defaults"
    );
    let out = status(&["--backlog-warn-segments", "2"]);
    assert_eq!(backlog_level(&out).as_deref(), Some("WARNING"));
    let out = status(&[
        "--backlog-warn-segments",
        "2",
        "--backlog-crit-segments",
        "3",
    ]);
    assert_eq!(backlog_level(&out).as_deref(), Some("CRITICAL"));
    assert_eq!(out.code, 2);
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("\nwalvault_archive_backlog_segments 3\n"),
        "{prom}"
    );
}

/// Prefetching restore: after a fetch of segment N, the next ones are
/// fetched ahead into the spool and served from it, byte-identical; the
/// spool never serves another timeline's or an earlier file, and goes
/// away when recovery ends.
#[test]
fn prefetch_serves_the_next_segments_and_never_stale_ones() {
    let dir = TestDir::new("prefetch");
    let repo = dir.path().join("repo");
    let size = WalSegmentSize::new(1 << 20).unwrap();
    let data = fake_pgdata(dir.path(), SYSID, 1 << 20);
    init_repo(&["--repo".to_string(), repo.display().to_string()], &data);
    let wal = dir.subdir("wal");
    let mut segs = Vec::new();
    for (t, n) in (1..=8).map(|n| (1u32, n)).chain([(2, 9), (2, 10)]) {
        let seg = write_segment(&wal, SYSID, t, n, size, n as u8);
        let out = run(walvault("walvault-push")
            .args(["--repo", repo.to_str().unwrap()])
            .arg(&seg));
        assert_eq!(out.code, 0, "{}", out.stderr);
        segs.push(seg);
    }
    std::fs::create_dir_all(data.join("pg_wal")).unwrap();
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    let spool = data.join("pg_wal/walvault_prefetch");
    let fetch = |seg: &Path| {
        let name = seg.file_name().unwrap().to_str().unwrap();
        let out = run(walvault("walvault-fetch")
            .args(["--repo", repo.to_str().unwrap(), "--restore-prefetch", "3"])
            .args([name, "pg_wal/RECOVERYXLOG"])
            .current_dir(&data));
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        assert!(
            std::fs::read(data.join("pg_wal/RECOVERYXLOG")).unwrap() == std::fs::read(seg).unwrap(),
            "{name} byte-identical"
        );
    };
    let in_spool = |seg: &Path| spool.join(seg.file_name().unwrap()).exists();
    fetch(&segs[0]);
    crate::harness::wait_for("segments 2 to 4 prefetched", 30, || {
        segs[1..4].iter().all(|s| in_spool(s))
    });
    assert!(!in_spool(&segs[4]), "no more than restore_prefetch ahead");
    fetch(&segs[1]);
    assert!(!in_spool(&segs[1]), "served by a rename");
    crate::harness::wait_for("segment 5 prefetched", 30, || in_spool(&segs[4]));
    // Skipping ahead drops what lies before; another timeline drops all.
    fetch(&segs[3]);
    assert!(!in_spool(&segs[2]), "an earlier file is never served later");
    // Timeline 2: nothing of timeline 1 is served, and a file of it that
    // the worker had in flight is dropped by the next call at the latest.
    fetch(&segs[8]);
    fetch(&segs[9]);
    assert!(
        segs[..8].iter().all(|s| !in_spool(s)),
        "timeline 1's files are gone once timeline 2 is asked for"
    );
    // Recovery ends: the worker exits and removes the spool.
    std::fs::remove_file(data.join("recovery.signal")).unwrap();
    crate::harness::wait_for("the spool removed", 30, || !spool.exists());
}

/// Prefetching keeps fetch's exit codes: a corrupt object is never put in
/// the spool, and the call for it stops recovery (128) outside standby
/// mode and is an ordinary failure (6) in it, as without prefetching; a
/// missing file is exit 1 and quiet. `kill -9` of the worker while it
/// works loses nothing: the next calls are byte-identical all the same.
#[test]
fn prefetch_keeps_fetchs_exit_codes_and_survives_kill_9() {
    let dir = TestDir::new("prefetch-codes");
    let repo = dir.path().join("repo");
    let size = WalSegmentSize::new(1 << 20).unwrap();
    let data = fake_pgdata(dir.path(), SYSID, 1 << 20);
    init_repo(&["--repo".to_string(), repo.display().to_string()], &data);
    let wal = dir.subdir("wal");
    let segs: Vec<PathBuf> = (1..=7)
        .map(|n| write_segment(&wal, SYSID, 1, n, size, n as u8))
        .collect();
    // The seventh is never archived: the end of the archive.
    for seg in &segs[..6] {
        let out = run(walvault("walvault-push")
            .args(["--repo", repo.to_str().unwrap()])
            .arg(seg));
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let name_of = |seg: &Path| seg.file_name().unwrap().to_str().unwrap().to_string();
    let corrupt = name_of(&segs[3]);
    let object = crate::harness::wal::object_path(&repo, &corrupt);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&object, &bytes).unwrap();

    std::fs::create_dir_all(data.join("pg_wal")).unwrap();
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    let spool = data.join("pg_wal/walvault_prefetch");
    let dest = data.join("pg_wal/RECOVERYXLOG");
    let fetch = |seg: &Path| {
        let out = run(walvault("walvault-fetch")
            .args(["--repo", repo.to_str().unwrap(), "--restore-prefetch", "3"])
            .args([name_of(seg).as_str(), "pg_wal/RECOVERYXLOG"])
            .current_dir(&data));
        let restored = std::fs::read(&dest).ok();
        // PostgreSQL moves %p away after each call.
        let _ = std::fs::remove_file(&dest);
        (out, restored)
    };
    let fetch_ok = |seg: &Path| {
        let (out, restored) = fetch(seg);
        assert_eq!(out.code, 0, "{}: {}", name_of(seg), out.stderr);
        assert!(
            restored == Some(std::fs::read(seg).unwrap()),
            "{} byte-identical",
            name_of(seg)
        );
    };
    let in_spool = |seg: &Path| spool.join(name_of(seg)).exists();
    let workers = || pids_mentioning_all(&[repo.to_str().unwrap(), "--internal-prefetch-worker"]);

    fetch_ok(&segs[0]);
    crate::harness::wait_for("segments 2 and 3 prefetched", 30, || {
        in_spool(&segs[1]) && in_spool(&segs[2])
    });
    assert!(
        !in_spool(&segs[3]),
        "a corrupt object never enters the spool"
    );
    let killed = workers();
    assert!(!killed.is_empty(), "a prefetch worker runs");
    for pid in &killed {
        // SAFETY: kill of a process this test started.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    fetch_ok(&segs[1]);
    fetch_ok(&segs[2]);
    assert!(
        !in_spool(&segs[3]),
        "a corrupt object never enters the spool"
    );

    // The corrupt one: as without prefetching, and no %p is left.
    let (out, restored) = fetch(&segs[3]);
    assert_eq!(out.code, 128, "stops recovery: {}", out.stderr);
    assert!(
        out.stderr.contains("corrupt") && out.stderr.contains(&corrupt),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("stops recovery"), "{}", out.stderr);
    assert_eq!(restored, None, "no %p for a corrupt object");
    // Prefetching goes on past it.
    fetch_ok(&segs[4]);
    fetch_ok(&segs[5]);
    // The end of the archive: exit 1, quietly.
    let (out, restored) = fetch(&segs[6]);
    assert_eq!((out.code, out.stderr.as_str()), (1, ""));
    assert_eq!(restored, None);

    // Standby mode: the corrupt object is an ordinary failure (6), the
    // missing one still 1.
    std::fs::remove_file(data.join("recovery.signal")).unwrap();
    std::fs::write(data.join("standby.signal"), "").unwrap();
    let (out, restored) = fetch(&segs[3]);
    assert_eq!(
        out.code, 6,
        "in standby mode an ordinary failure: {}",
        out.stderr
    );
    assert!(out.stderr.contains("standby mode"), "{}", out.stderr);
    assert_eq!(restored, None);
    let (out, _) = fetch(&segs[6]);
    assert_eq!((out.code, out.stderr.as_str()), (1, ""));
    assert!(
        std::fs::read_dir(&spool)
            .map(|d| d
                .flatten()
                .all(|e| e.file_name().to_string_lossy() != corrupt))
            .unwrap_or(true),
        "a corrupt object never enters the spool"
    );

    std::fs::remove_file(data.join("standby.signal")).unwrap();
    crate::harness::wait_for("the spool removed", 30, || !spool.exists());
    crate::harness::wait_for("the worker gone", 30, || workers().is_empty());
}
