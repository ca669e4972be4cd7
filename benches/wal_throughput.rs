//! WAL archiving throughput: `cargo bench --bench wal_throughput`.
//!
//! PostgreSQL runs archive_command and restore_command once per WAL file, as
//! a fresh process each time. This benchmark does the same: it archives every
//! segment of a WAL set with one `walvault-push` process per segment, then
//! restores every segment with one `walvault-fetch` process per segment, and
//! reports throughput, per-call latency, the peak resident memory of any one
//! call (from `wait4`'s `ru_maxrss`) and how much the repository stores.
//! Hand-written archive commands (`cp`, `zstd`, `gzip`) and pgBackRest, when
//! installed, are measured the same way as a baseline, and walvault also
//! pushes into and fetches from encrypted repositories (a key file, a
//! passphrase) to show what encryption costs. Every configuration
//! runs once per round, taking turns, so a disturbance on this shared
//! machine spreads over all of them; the tables give the median round.
//! The asynchronous rows' background processes (walvault's worker,
//! pgBackRest's async and local processes) are sampled for memory in one
//! more round after the timed ones, untimed: reading `/proc` while the
//! calls run takes CPU from them.
//!
//! The WAL comes from a throwaway PostgreSQL 15 cluster running pgbench
//! (archive_command = cp into a directory); without PostgreSQL it falls back
//! to synthetic segments and says so.
//!
//! Progress goes to stderr; the results, as Markdown, go to stdout.
//! docs/BENCHMARKS.md describes the method and reads the results.
//!
//! Environment:
//! - `WALVAULT_BENCH_SEGMENTS`: how many 16 MiB segments to use (default 40)
//! - `WALVAULT_BENCH_ROUNDS`: how many rounds (default 3)
//! - `WALVAULT_BENCH_SYNTHETIC=1`: use synthetic WAL even if PostgreSQL is there
//! - `WALVAULT_BENCH_PG_BIN`: PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
//! - `WALVAULT_BENCH_KEEP=1`: keep the temporary directory (WAL, repositories)
//! - `WALVAULT_BENCH_ONLY=sustained`: only the sustained-load run
//!   (`support/sustained.rs`): synchronous against asynchronous archiving
//!   into S3 behind added latency, the backlog over time

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[path = "support/certs.rs"]
mod certs;
#[path = "support/s3.rs"]
mod s3;
#[path = "support/sustained.rs"]
mod sustained;

const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
const DEFAULT_SEGMENTS: usize = 40;
const DEFAULT_ROUNDS: usize = 3;
const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Environment variables that would point walvault at another repository or
/// change its settings; the benchmark passes everything on the command line.
const WALVAULT_ENV: [&str; 12] = [
    "WALVAULT_ENCRYPTION_PASSPHRASE",
    "WALVAULT_ENCRYPTION_KEY_FILE",
    "WALVAULT_ENCRYPTION_KEY_COMMAND",
    "WALVAULT_CONFIG",
    "WALVAULT_REPO",
    "WALVAULT_S3_ENDPOINT",
    "WALVAULT_S3_REGION",
    "WALVAULT_S3_PATH_STYLE",
    "WALVAULT_COMPRESS_LEVEL",
    "WALVAULT_COMPRESS_THREADS",
    "WALVAULT_FETCH_RETRY_SECS",
    "WALVAULT_LOG",
];

fn main() {
    // `cargo bench` passes `--bench` (and any filter); there is nothing to filter.
    let segments_wanted = positive_env("WALVAULT_BENCH_SEGMENTS").unwrap_or(DEFAULT_SEGMENTS);
    let rounds = positive_env("WALVAULT_BENCH_ROUNDS").unwrap_or(DEFAULT_ROUNDS);
    let force_synthetic = std::env::var("WALVAULT_BENCH_SYNTHETIC").is_ok_and(|v| v == "1");
    let pg_bin = PathBuf::from(
        std::env::var("WALVAULT_BENCH_PG_BIN").unwrap_or_else(|_| DEFAULT_PG_BIN.to_string()),
    );

    let push_bin = walvault_binary("walvault-push", option_env!("CARGO_BIN_EXE_walvault-push"));
    let fetch_bin = walvault_binary(
        "walvault-fetch",
        option_env!("CARGO_BIN_EXE_walvault-fetch"),
    );
    eprintln!("walvault-push:  {}", push_bin.display());
    eprintln!("walvault-fetch: {}", fetch_bin.display());

    // Dropped last: everything below lives inside it.
    let tmp = tempfile::Builder::new()
        .prefix("walvault-bench-")
        .tempdir()
        .expect("create temporary directory");
    let root = tmp.path().to_path_buf();
    if std::env::var("WALVAULT_BENCH_ONLY").is_ok_and(|v| v == "sustained") {
        let walvault_bin = walvault_binary("walvault", option_env!("CARGO_BIN_EXE_walvault"));
        print!(
            "{}",
            sustained::run(&root, &pg_bin, &push_bin, &walvault_bin)
        );
        return;
    }
    let wal_dir = root.join("wal");
    fs::create_dir(&wal_dir).expect("create wal directory");
    // `WALVAULT_BENCH_ONLY=s3`: the push and fetch rows with a repository
    // on S3 (over TLS, beside pgBackRest) instead of the local rows.
    let s3 = std::env::var("WALVAULT_BENCH_ONLY")
        .is_ok_and(|v| v == "s3")
        .then(|| s3::S3Tls::start(&root).unwrap_or_else(|e| panic!("WALVAULT_BENCH_ONLY=s3: {e}")));

    let use_pg = !force_synthetic && pg_bin.join("postgres").is_file();
    let pgbackrest = if use_pg && on_path("pgbackrest") {
        Some(PgBackRest::new(&root))
    } else {
        None
    };
    // Declared after `tmp`, so dropped (server stopped) before the directory goes.
    let mut cluster = None;
    let source = if use_pg {
        let c = cluster.insert(Cluster::new(&pg_bin, &root));
        generate_real_wal(
            c,
            &wal_dir,
            segments_wanted,
            pgbackrest.as_ref(),
            s3.as_ref(),
        );
        c.stop();
        if random_corpus() {
            "real WAL from a PostgreSQL 15 cluster inserting rows of random text (WALVAULT_BENCH_CORPUS=random; archive_command = cp)".to_string()
        } else {
            "real WAL from a PostgreSQL 15 cluster running pgbench (archive_command = cp)"
                .to_string()
        }
    } else {
        let why = if force_synthetic {
            "WALVAULT_BENCH_SYNTHETIC=1"
        } else {
            "PostgreSQL not found"
        };
        eprintln!("{why}: writing {segments_wanted} synthetic segments");
        write_synthetic_wal(&wal_dir, segments_wanted);
        format!(
            "SYNTHETIC segments ({why}): a valid long page header followed by \
             repetitive text; compression ratios say nothing about real WAL"
        )
    };

    let segments = list_segments(&wal_dir, segments_wanted);
    assert!(
        !segments.is_empty(),
        "no WAL segments in {}",
        wal_dir.display()
    );
    if segments.len() < segments_wanted {
        eprintln!(
            "warning: wanted {segments_wanted} segments, have {}",
            segments.len()
        );
    }
    let raw_bytes: u64 = segments.iter().map(|s| s.bytes).sum();
    // `walvault init` once, from the cluster's data directory (or one made
    // for the synthetic WAL); every walvault row starts from a copy.
    let pgdata = match &cluster {
        Some(c) => c.data.clone(),
        None => fake_pgdata(&root, SYNTHETIC_SYSTEM_ID),
    };
    let walvault_template = root.join("repo-template");
    let walvault_bin = walvault_binary("walvault", option_env!("CARGO_BIN_EXE_walvault"));
    run_ok(
        walvault_command(&walvault_bin)
            .arg("--repo")
            .arg(&walvault_template)
            .args(["init", "--pgdata"])
            .arg(&pgdata),
    );
    // Encrypted repositories: one opened with a key file, one with a
    // passphrase (Argon2id in every process).
    let key_file = root.join("bench.key");
    fs::write(&key_file, "q9RHk3b1r5WcV8y0+Jm2nA7tUeZ4sLpXoD6fGiKwCQE=\n").expect("write key file");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).expect("chmod key file");
    }
    let encryption = Encryption {
        key_file: key_file.clone(),
        passphrase: "bench passphrase, not a secret".to_string(),
        key_template: root.join("repo-template-key"),
        passphrase_template: root.join("repo-template-passphrase"),
    };
    run_ok(
        walvault_command(&walvault_bin)
            .env("WALVAULT_ENCRYPTION_KEY_FILE", &key_file)
            .arg("--repo")
            .arg(&encryption.key_template)
            .args(["init", "--pgdata"])
            .arg(&pgdata),
    );
    run_ok(
        walvault_command(&walvault_bin)
            .env("WALVAULT_ENCRYPTION_PASSPHRASE", &encryption.passphrase)
            .arg("--repo")
            .arg(&encryption.passphrase_template)
            .args(["init", "--pgdata"])
            .arg(&pgdata),
    );
    // The asynchronous rows push from a real data directory: the stopped
    // cluster's, its pg_wal holding the input segments (hard links).
    let async_pgdata = cluster.as_ref().map(|c| {
        let pg_wal = c.data.join("pg_wal");
        for entry in fs::read_dir(&pg_wal).expect("read pg_wal").flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                fs::remove_file(entry.path()).expect("empty pg_wal");
            }
        }
        for seg in &segments {
            fs::hard_link(&seg.path, pg_wal.join(&seg.name)).expect("link segment into pg_wal");
        }
        c.data.clone()
    });
    let bench = Bench {
        root: root.clone(),
        wal_dir: wal_dir.clone(),
        segments,
        walvault_template,
        async_pgdata,
        encryption,
    };

    let configs = match &s3 {
        Some(s3) => s3::configurations(
            &bench,
            s3,
            (&walvault_bin, &push_bin, &fetch_bin),
            &pgdata,
            pgbackrest.as_ref(),
        ),
        None => configurations(&bench, &push_bin, &fetch_bin, pgbackrest.as_ref()),
    };
    let mut results: Vec<Results> = configs.iter().map(|_| Results::default()).collect();
    let load_before = load_average();
    let cpu_before = cpu_times();
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}");
        for (config, result) in configs.iter().zip(&mut results) {
            bench.run_config(config, result);
        }
    }
    let busy = cpu_busy_share(cpu_before, cpu_times());
    // The background processes' memory is sampled in one more round of the
    // asynchronous push rows, untimed: sampling /proc while the calls run
    // takes CPU from them, and more from the tool that keeps both cores
    // busy.
    SAMPLE_PSS.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("memory round (untimed)");
    let mut sampled_notes = Vec::new();
    for config in configs
        .iter()
        .filter(|c| c.kind == Kind::Push && c.label.contains("async") && c.setup.is_some())
    {
        let mut scratch = Results::default();
        bench.run_config(config, &mut scratch);
        if let Some(note) = scratch.notes.pop() {
            sampled_notes.push(format!("- {}: {note}", config.label));
        }
    }

    // Instructions of one synchronous push per tool, where valgrind is
    // installed (WALVAULT_BENCH_INSTRUCTIONS=0 skips them): a measure of
    // the work per byte that the machine's speed of the minute and the
    // host's stolen time do not move.
    let counted: Vec<(&str, u64)> = if on_path("valgrind")
        && !std::env::var("WALVAULT_BENCH_INSTRUCTIONS").is_ok_and(|v| v == "0")
    {
        eprintln!("instruction counts (untimed, callgrind)");
        configs
            .iter()
            .filter(|c| c.kind == Kind::Push && c.setup.is_none())
            .filter(|c| {
                [
                    "walvault-push (zstd 3",
                    "pgbackrest archive-push (zst 3)",
                    "zstd -3 (CLI",
                ]
                .iter()
                .any(|p| c.label.starts_with(p))
            })
            .filter_map(|c| bench.instructions(c).map(|n| (c.label, n)))
            .collect()
    } else {
        Vec::new()
    };

    // Results.
    let mut out = String::new();
    out.push_str(&format!(
        "WAL set: {} segments of 16 MiB ({:.0} MiB); {source}.\n",
        bench.segments.len(),
        mib(raw_bytes)
    ));
    if s3.is_some() {
        out.push_str(
            "Repository: S3, s3s-fs 0.14.1 on this machine behind stunnel (TLS with a \
             certificate from a CA made for the run, verified by both tools), path-style \
             URLs; each row has its own prefix, reset before each round.\n",
        );
    }
    out.push_str(&format!("Machine: {}.\n", machine_summary()));
    out.push_str(&format!(
        "Load average (1, 5, 15 min) before the timed rounds: {load_before}; after: {}. \
         Both cores were {:.0}% busy during the timed rounds (any process, this benchmark included).\n",
        load_average(),
        busy * 100.0
    ));
    out.push_str(&format!(
        "{rounds} rounds; in each, every configuration runs once over all segments, \
         taking turns. Each call is one process for one segment, one after another, \
         as PostgreSQL runs archive_command and restore_command. \
         MiB/s = MiB (2^20 bytes) of raw WAL / total wall time of a round's calls \
         (spawn to exit): the median round, and the slowest-fastest range. \
         Per-call times are over all rounds. The restore rows check and remove \
         each restored file between calls, untimed. CPU ms/segment (push rows) = \
         CPU time of the whole machine (every process, background workers \
         included; time stolen by the host left out) from the first call's spawn \
         to the last call's exit, median round, per segment. Peak RSS = largest ru_maxrss \
         of any one call. stored/raw = bytes in the repository / bytes of WAL.\n\n"
    ));
    for (kind, title) in [
        (Kind::Push, "### Push (archive_command)"),
        (
            Kind::Fetch,
            "### Fetch (restore_command), every restored file compared with the original",
        ),
    ] {
        let rows: Vec<(&Config, &Results)> = configs
            .iter()
            .zip(&results)
            .filter(|(c, _)| {
                c.kind == kind
                    || (kind == Kind::Push && c.kind == Kind::Startup)
                    || (kind == Kind::Fetch && c.kind == Kind::Miss)
            })
            .collect();
        out.push_str(title);
        out.push_str("\n\n");
        out.push_str(&table(&rows, raw_bytes));
        out.push('\n');
    }
    let notes: Vec<String> = configs
        .iter()
        .zip(&results)
        .filter(|(_, r)| !r.notes.is_empty())
        .map(|(c, r)| format!("- {}: {} (one per round)", c.label, r.notes.join("; ")))
        .collect();
    if !notes.is_empty() {
        out.push_str("### Background processes (not in the per-call peak RSS above)\n\n");
        out.push_str(&notes.join("\n"));
        out.push_str("\n\n");
    }
    if !sampled_notes.is_empty() {
        out.push_str(
            "Sampled every 10 ms in an extra, untimed round (Pss summed over each tool's \
             background processes):\n\n",
        );
        out.push_str(&sampled_notes.join("\n"));
        out.push_str("\n\n");
    }
    if let Some(first) = bench.segments.first().filter(|_| !counted.is_empty()) {
        out.push_str(&format!(
            "### Instructions for one segment (valgrind's callgrind, untimed)\n\n\
             The first segment ({} bytes), one call, in a fresh copy of the row's \
             repository; every instruction of the process counted, start-up included.\n\n\
             | configuration | instructions (millions) | per raw byte |\n|---|---:|---:|\n",
            first.bytes
        ));
        for (label, n) in &counted {
            out.push_str(&format!(
                "| {label} | {:.0} | {:.1} |\n",
                *n as f64 / 1e6,
                *n as f64 / first.bytes as f64
            ));
        }
        out.push('\n');
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes()).expect("write results");
    stdout.flush().expect("flush results");

    drop(cluster);
    if std::env::var("WALVAULT_BENCH_KEEP").is_ok_and(|v| v == "1") {
        eprintln!("kept {}", tmp.keep().display());
    }
}

/// The release build of a walvault binary: cargo's `CARGO_BIN_EXE_<name>`
/// when it was set for this bench, else next to the bench's own target
/// directory (`<target>/release/deps/wal_throughput-…` → `<target>/release/<name>`).
fn walvault_binary(name: &str, from_cargo: Option<&str>) -> PathBuf {
    if let Some(path) = from_cargo.map(PathBuf::from).filter(|p| p.is_file()) {
        return path;
    }
    let exe = std::env::current_exe().expect("find the bench executable");
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile_dir| profile_dir.join(name));
    match candidate {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "cannot find {name} (looked at CARGO_BIN_EXE_{name} and next to {}); \
             build it with `cargo build --release --bins`",
            exe.display()
        ),
    }
}

fn walvault_command(binary: &Path) -> Command {
    let mut cmd = Command::new(binary);
    for var in WALVAULT_ENV {
        cmd.env_remove(var);
    }
    cmd
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of the `postgres` user.
fn postgres_ids() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .map(|f| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
        .expect("running as root needs a postgres user to run PostgreSQL as")
}

/// Hands `path` to the postgres user when running as root (PostgreSQL
/// refuses to run as root).
fn give_to_postgres(path: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Runs a command that must succeed, returning its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// Timing one process per segment

/// One WAL segment of the input set.
struct Segment {
    name: String,
    path: PathBuf,
    bytes: u64,
}

struct Bench {
    root: PathBuf,
    wal_dir: PathBuf,
    segments: Vec<Segment>,
    /// An empty walvault repository, initialized for the WAL's cluster:
    /// each walvault row starts from a copy.
    walvault_template: PathBuf,
    /// The stopped cluster's data directory with the input segments in its
    /// pg_wal, for the asynchronous rows (which read archive_status);
    /// `None` for synthetic WAL.
    async_pgdata: Option<PathBuf>,
    encryption: Encryption,
}

/// The secrets and empty repositories of the encrypted rows.
struct Encryption {
    key_file: PathBuf,
    passphrase: String,
    key_template: PathBuf,
    passphrase_template: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Starts a process and moves no WAL: the fixed cost of a call.
    Startup,
    /// Archives each segment into `dir`.
    Push,
    /// Restores each segment into `dir`.
    Fetch,
    /// A call that must answer "not in the archive" (exit 1) and moves no
    /// WAL: a no-op fetch.
    Miss,
}

/// One row of the tables: a way of archiving or restoring a segment.
struct Config<'a> {
    label: &'static str,
    kind: Kind,
    /// Push: the repository, emptied before each round and measured after.
    /// Fetch: where restores go; each is checked and removed after its call.
    dir: Option<PathBuf>,
    /// A repository to copy into `dir` before each round instead of
    /// starting empty (pgBackRest's needs its stanza, made while the
    /// server ran).
    template: Option<PathBuf>,
    /// Runs before the row's calls, after `dir` is reset (untimed).
    setup: Option<Box<dyn Fn() + 'a>>,
    /// Runs after each successful call (untimed): what PostgreSQL does
    /// between calls, such as marking a segment `.done`.
    after: Option<Box<dyn Fn(&Segment) + 'a>>,
    /// Runs after the row's calls (untimed); may say something measured.
    teardown: Option<Box<dyn Fn() -> Option<String> + 'a>>,
    make: Box<dyn Fn(&Segment) -> Command + 'a>,
}

/// What the rounds measured for one configuration.
#[derive(Default)]
struct Results {
    /// Sum of the call times, per round.
    rounds: Vec<Duration>,
    /// CPU time the whole machine spent from the first call's spawn to the
    /// last call's exit (every process, steal left out), per round: with
    /// a background worker, the foreground's own rusage misses its work.
    cpu: Vec<Duration>,
    /// Every call's wall time, spawn to exit.
    calls: Vec<Duration>,
    peak_rss_kib: u64,
    stored_bytes: Option<u64>,
    /// What teardowns measured, one per round.
    notes: Vec<String>,
}

/// The rows, in the order they run within a round. Restores come after the
/// pushes that fill the repositories they read.
fn configurations<'a>(
    bench: &'a Bench,
    push_bin: &'a Path,
    fetch_bin: &'a Path,
    pgbackrest: Option<&'a PgBackRest>,
) -> Vec<Config<'a>> {
    let root = &bench.root;
    let mut configs = vec![
        Config {
            label: "true (process start floor)",
            kind: Kind::Startup,
            dir: None,
            template: None,
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(|_| Command::new("true")),
        },
        Config {
            label: "walvault-push --version (process start only)",
            kind: Kind::Startup,
            dir: None,
            template: None,
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(move |_| {
                let mut cmd = Command::new(push_bin);
                cmd.arg("--version");
                cmd
            }),
        },
    ];

    let walvault_push = |label, dir: &str, extra: &'static [&'static str]| {
        let repo = root.join(dir);
        Config {
            label,
            kind: Kind::Push,
            dir: Some(repo.clone()),
            template: Some(bench.walvault_template.clone()),
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(move |seg: &Segment| {
                let mut cmd = walvault_command(push_bin);
                cmd.arg("--repo").arg(&repo).args(extra).arg(&seg.path);
                cmd.current_dir(&bench.wal_dir);
                cmd
            }),
        }
    };
    configs.push(walvault_push(
        "walvault-push (zstd 3, default)",
        "repo",
        &[],
    ));
    configs.push(walvault_push(
        "walvault-push --compress-level 1",
        "repo-level1",
        &["--compress-level", "1"],
    ));
    configs.push(walvault_push(
        "walvault-push --compress-threads 2",
        "repo-threads2",
        &["--compress-threads", "2"],
    ));
    // Encrypted: the same default push into an encrypted repository.
    let encrypted_push =
        |label, dir: &str, template: &PathBuf, env: (&'static str, std::ffi::OsString)| {
            let repo = root.join(dir);
            Config {
                label,
                kind: Kind::Push,
                dir: Some(repo.clone()),
                template: Some(template.clone()),
                setup: None,
                after: None,
                teardown: None,
                make: Box::new(move |seg: &Segment| {
                    let mut cmd = walvault_command(push_bin);
                    cmd.env(env.0, &env.1)
                        .arg("--repo")
                        .arg(&repo)
                        .arg(&seg.path);
                    cmd.current_dir(&bench.wal_dir);
                    cmd
                }),
            }
        };
    configs.push(encrypted_push(
        "walvault-push, encrypted (key file)",
        "repo-key",
        &bench.encryption.key_template,
        (
            "WALVAULT_ENCRYPTION_KEY_FILE",
            bench.encryption.key_file.clone().into(),
        ),
    ));
    configs.push(encrypted_push(
        "walvault-push, encrypted (passphrase, Argon2id per call)",
        "repo-passphrase",
        &bench.encryption.passphrase_template,
        (
            "WALVAULT_ENCRYPTION_PASSPHRASE",
            bench.encryption.passphrase.clone().into(),
        ),
    ));

    // Hand-written archive commands.
    let cp_dir = root.join("cp");
    configs.push(Config {
        label: "cp (no compression, no fsync)",
        kind: Kind::Push,
        dir: Some(cp_dir.clone()),
        template: None,
        setup: None,
        after: None,
        teardown: None,
        make: Box::new(move |seg| {
            let mut cmd = Command::new("cp");
            cmd.arg(&seg.path).arg(cp_dir.join(&seg.name));
            cmd
        }),
    });
    let have_zstd = on_path("zstd");
    if have_zstd {
        let dir = root.join("zstd");
        configs.push(Config {
            label: "zstd -3 (CLI, no fsync)",
            kind: Kind::Push,
            dir: Some(dir.clone()),
            template: None,
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(move |seg| {
                let mut cmd = Command::new("zstd");
                cmd.args(["-q", "-3", "-o"])
                    .arg(dir.join(format!("{}.zst", seg.name)))
                    .arg(&seg.path);
                cmd
            }),
        });
        let dir = root.join("zstd-sync");
        configs.push(Config {
            label: "zstd -3 && sync FILE (CLI, fsync)",
            kind: Kind::Push,
            dir: Some(dir.clone()),
            template: None,
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(move |seg| {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(r#"zstd -q -3 -o "$2" "$1" && sync "$2""#)
                    .arg("sh")
                    .arg(&seg.path)
                    .arg(dir.join(format!("{}.zst", seg.name)));
                cmd
            }),
        });
    } else {
        eprintln!("zstd not found: no zstd baseline (apt-get install zstd)");
    }
    if on_path("gzip") {
        let dir = root.join("gzip");
        configs.push(Config {
            label: "gzip -6 (sh -c, no fsync)",
            kind: Kind::Push,
            dir: Some(dir.clone()),
            template: None,
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(move |seg| {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(r#"gzip -6 -c "$1" > "$2""#)
                    .arg("sh")
                    .arg(&seg.path)
                    .arg(dir.join(format!("{}.gz", seg.name)));
                cmd
            }),
        });
    }
    if let Some(pgbr) = pgbackrest {
        for (label, dir, args) in [
            (
                "pgbackrest archive-push (zst 3)",
                PgBackRest::ZST_REPO,
                &PgBackRest::ZST3[..],
            ),
            (
                "pgbackrest archive-push (gz 6, its default)",
                PgBackRest::GZ_REPO,
                &[][..],
            ),
        ] {
            let repo = root.join(dir);
            configs.push(Config {
                label,
                kind: Kind::Push,
                dir: Some(repo.clone()),
                template: Some(pgbr.template(dir)),
                setup: None,
                after: None,
                teardown: None,
                make: Box::new(move |seg| {
                    let mut cmd = pgbr.command(&repo);
                    cmd.args(args).arg("archive-push").arg(&seg.path);
                    cmd
                }),
            });
        }
    }

    // Asynchronous archiving: each call is still one process per segment,
    // as PostgreSQL makes it, with every segment marked ready in
    // archive_status beforehand (as on a primary whose archiver fell
    // behind) and marked done after each call, as PostgreSQL does.
    if let Some(pgdata) = &bench.async_pgdata {
        let passphrase = (
            "WALVAULT_ENCRYPTION_PASSPHRASE",
            std::ffi::OsString::from(&bench.encryption.passphrase),
        );
        for (label, dir, jobs, template, env) in [
            (
                "walvault-push async, 2 jobs",
                "repo-async2",
                "2",
                &bench.walvault_template,
                None,
            ),
            (
                "walvault-push async, 4 jobs",
                "repo-async4",
                "4",
                &bench.walvault_template,
                None,
            ),
            // One Argon2id per worker, none in the foreground calls.
            (
                "walvault-push async, 2 jobs, encrypted (passphrase)",
                "repo-async2-passphrase",
                "2",
                &bench.encryption.passphrase_template,
                Some(passphrase.clone()),
            ),
        ] {
            let repo = root.join(dir);
            configs.push(walvault_async_row(
                bench,
                label,
                (repo.clone(), template.clone()),
                root.join(format!("{dir}-spool")),
                jobs,
                pgdata,
                move || {
                    let mut cmd = walvault_command(push_bin);
                    if let Some((name, value)) = &env {
                        cmd.env(name, value);
                    }
                    cmd.arg("--repo").arg(&repo);
                    cmd
                },
            ));
        }
        if let Some(pgbr) = pgbackrest {
            let repo = root.join("pgbr-async");
            configs.push(pgbackrest_async_row(
                bench,
                "pgbackrest archive-push async (zst 3, process-max 2)",
                (repo.clone(), pgbr.template(PgBackRest::ZST_REPO)),
                root.join("pgbr-async-spool"),
                pgdata,
                move || pgbr.command(&repo),
            ));
        }
    }

    // No-op calls: a push of a file the asynchronous worker has already
    // stored (its done record is in the spool, as when PostgreSQL calls
    // for a file the worker pushed ahead), and a fetch of a timeline
    // history file the archive does not have (what recovery asks first).
    if let Some(pgdata) = &bench.async_pgdata {
        let repo = root.join("repo-noop");
        let base_repo = repo.clone();
        configs.push(walvault_noop_push_row(
            bench,
            "walvault-push async, file already done (no-op)",
            (repo, bench.walvault_template.clone()),
            root.join("repo-noop-spool"),
            pgdata,
            move || {
                let mut cmd = walvault_command(push_bin);
                cmd.arg("--repo").arg(&base_repo);
                cmd
            },
        ));
    }
    {
        let repo = root.join("repo");
        let to = root.join("restore");
        configs.push(Config {
            label: "walvault-fetch of a missing .history file (no-op, exit 1)",
            kind: Kind::Miss,
            dir: Some(to.clone()),
            template: None,
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(move |_| {
                let mut cmd = walvault_command(fetch_bin);
                cmd.arg("--repo")
                    .arg(&repo)
                    .arg("00000009.history")
                    .arg(to.join("00000009.history"));
                cmd
            }),
        });
    }

    // Restores, each checked byte for byte against the original.
    let restore = root.join("restore");
    let fetch_row = |label, dir: &str, env: Option<(&'static str, PathBuf)>| {
        let repo = root.join(dir);
        let to = restore.clone();
        Config {
            label,
            kind: Kind::Fetch,
            dir: Some(restore.clone()),
            template: None,
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(move |seg: &Segment| {
                let mut cmd = walvault_command(fetch_bin);
                if let Some((name, value)) = &env {
                    cmd.env(name, value);
                }
                cmd.arg("--repo")
                    .arg(&repo)
                    .arg(&seg.name)
                    .arg(to.join(&seg.name));
                cmd.current_dir(&to);
                cmd
            }),
        }
    };
    configs.push(fetch_row("walvault-fetch", "repo", None));
    configs.push(fetch_row(
        "walvault-fetch, encrypted (key file)",
        "repo-key",
        Some((
            "WALVAULT_ENCRYPTION_KEY_FILE",
            bench.encryption.key_file.clone(),
        )),
    ));
    // Prefetching restore: recovery is on (recovery.signal in the working
    // directory, as the data directory is for restore_command).
    {
        let repo = root.join("repo");
        let to = restore.clone();
        let signal = restore.join("recovery.signal");
        let signal_off = signal.clone();
        let spool = restore.join("walvault_prefetch");
        configs.push(Config {
            label: "walvault-fetch, restore_prefetch 8",
            kind: Kind::Fetch,
            dir: Some(restore.clone()),
            template: None,
            setup: Some(Box::new(move || {
                fs::write(&signal, "").expect("write recovery.signal");
            })),
            after: None,
            teardown: Some(Box::new(move || {
                // Recovery ends: the worker exits and removes its spool.
                let _ = fs::remove_file(&signal_off);
                let kib = stop_workers(&["--internal-prefetch-worker"]);
                let _ = fs::remove_dir_all(&spool);
                Some(format!(
                    "prefetch worker peak RSS {:.1} MiB",
                    kib as f64 / 1024.0
                ))
            })),
            make: Box::new(move |seg| {
                let mut cmd = walvault_command(fetch_bin);
                cmd.arg("--repo")
                    .arg(&repo)
                    .args(["--restore-prefetch", "8"])
                    .arg(&seg.name)
                    .arg(to.join(&seg.name));
                cmd.current_dir(&to);
                cmd
            }),
        });
    }
    if have_zstd {
        let from = root.join("zstd");
        let to = restore.clone();
        configs.push(Config {
            label: "zstd -d (CLI, no fsync)",
            kind: Kind::Fetch,
            dir: Some(restore.clone()),
            template: None,
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(move |seg| {
                let mut cmd = Command::new("zstd");
                cmd.args(["-q", "-d", "-o"])
                    .arg(to.join(&seg.name))
                    .arg(from.join(format!("{}.zst", seg.name)));
                cmd
            }),
        });
    }
    if let Some(pgbr) = pgbackrest {
        let repo = root.join(PgBackRest::ZST_REPO);
        let to = restore.clone();
        configs.push(Config {
            label: "pgbackrest archive-get (zst 3)",
            kind: Kind::Fetch,
            dir: Some(restore.clone()),
            template: None,
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(move |seg| {
                let mut cmd = pgbr.command(&repo);
                cmd.arg("archive-get")
                    .arg(&seg.name)
                    .arg(to.join(&seg.name));
                cmd
            }),
        });
        let repo = root.join(PgBackRest::ZST_REPO);
        let to = restore.clone();
        let spool = root.join("pgbr-get-spool");
        let spool_for_setup = spool.clone();
        configs.push(Config {
            label: "pgbackrest archive-get async (zst 3, queue 1 GiB)",
            kind: Kind::Fetch,
            dir: Some(root.join("restore")),
            template: None,
            setup: Some(Box::new(move || {
                let _ = fs::remove_dir_all(&spool_for_setup);
                fs::create_dir_all(&spool_for_setup).expect("create spool");
            })),
            after: None,
            teardown: Some(Box::new(|| {
                stop_workers(&["archive-get:async"]);
                None
            })),
            make: Box::new(move |seg| {
                let mut cmd = pgbr.command(&repo);
                cmd.args(["--archive-async", "--archive-get-queue-max=1GiB"])
                    .arg(format!("--spool-path={}", spool.display()))
                    .arg("archive-get")
                    .arg(&seg.name)
                    .arg(to.join(&seg.name));
                cmd
            }),
        });
    }
    configs
}

/// An asynchronous walvault-push row: the spool emptied and every segment
/// marked ready before the calls (a primary whose archiver fell behind),
/// each marked done after its call (as PostgreSQL does), the worker
/// stopped and its peak RSS read after the row. `base` is walvault-push
/// with its repository; `dir` and `template` as in [`Config`].
fn walvault_async_row<'a>(
    bench: &'a Bench,
    label: &'static str,
    (dir, template): (PathBuf, PathBuf),
    spool: PathBuf,
    jobs: &'static str,
    pgdata: &'a Path,
    base: impl Fn() -> Command + 'a,
) -> Config<'a> {
    let (spool_setup, spool_teardown) = (spool.clone(), spool.clone());
    let sampler = std::rc::Rc::new(std::cell::RefCell::new(None::<RssSampler>));
    let sampler_stop = sampler.clone();
    let needle = spool.display().to_string();
    Config {
        label,
        kind: Kind::Push,
        dir: Some(dir),
        template: Some(template),
        setup: Some(Box::new(move || {
            bench.start_async_row(&spool_setup);
            let needle = needle.clone();
            if SAMPLE_PSS.load(std::sync::atomic::Ordering::Relaxed) {
                *sampler.borrow_mut() = Some(RssSampler::start(move |cmdline| {
                    cmdline.contains("--internal-async-worker") && cmdline.contains(&needle)
                }));
            }
        })),
        after: Some(Box::new(move |seg| bench.mark_done(seg))),
        teardown: Some(Box::new(move || {
            let sampled = sampler_stop.borrow_mut().take().map(RssSampler::finish);
            let needle = spool_teardown.display().to_string();
            let kib = stop_workers(&["--internal-async-worker", &needle]);
            Some(match sampled {
                Some(pss) => format!(
                    "worker peak RSS {:.1} MiB, peak Pss {:.1}",
                    kib as f64 / 1024.0,
                    pss as f64 / 1024.0
                ),
                None => format!("worker peak RSS {:.1} MiB", kib as f64 / 1024.0),
            })
        })),
        make: Box::new(move |seg: &Segment| {
            let mut cmd = base();
            cmd.arg("--archive-async")
                .arg("--spool-path")
                .arg(&spool)
                .args(["--archive-jobs", jobs])
                .arg(format!("pg_wal/{}", seg.name))
                .current_dir(pgdata);
            cmd
        }),
    }
}

/// The row of no-op asynchronous pushes: every call is for a file the
/// worker has already stored (its done record is in the spool, as when
/// PostgreSQL calls for a file the worker pushed ahead). `base` is
/// walvault-push with its repository.
fn walvault_noop_push_row<'a>(
    bench: &'a Bench,
    label: &'static str,
    (dir, template): (PathBuf, PathBuf),
    spool: PathBuf,
    pgdata: &'a Path,
    base: impl Fn() -> Command + 'a,
) -> Config<'a> {
    let base = std::rc::Rc::new(base);
    let base_setup = base.clone();
    let (spool_setup, spool_teardown) = (spool.clone(), spool.clone());
    let last = bench
        .segments
        .last()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    Config {
        label,
        kind: Kind::Startup,
        dir: Some(dir),
        template: Some(template),
        setup: Some(Box::new(move || {
            // Untimed: every segment ready, one call for the last one (the
            // worker pushes them all, it returns when its own is done),
            // then the worker stopped: every done record stays.
            let _ = fs::remove_dir_all(&spool_setup);
            fs::create_dir_all(&spool_setup).expect("create spool");
            bench.mark_all_ready();
            run_ok(
                base_setup()
                    .arg("--archive-async")
                    .arg("--spool-path")
                    .arg(&spool_setup)
                    .arg(format!("pg_wal/{last}"))
                    .current_dir(pgdata),
            );
            stop_workers(&[
                "--internal-async-worker",
                &spool_setup.display().to_string(),
            ]);
        })),
        after: None,
        teardown: Some(Box::new(move || {
            stop_workers(&[
                "--internal-async-worker",
                &spool_teardown.display().to_string(),
            ]);
            None
        })),
        make: Box::new(move |seg: &Segment| {
            let mut cmd = base();
            cmd.arg("--archive-async")
                .arg("--spool-path")
                .arg(&spool)
                .arg(format!("pg_wal/{}", seg.name))
                .current_dir(pgdata);
            cmd
        }),
    }
}

/// pgBackRest's asynchronous archive-push row (zst 3, process-max 2), as
/// [`walvault_async_row`]; `base` is pgbackrest with its repository.
fn pgbackrest_async_row<'a>(
    bench: &'a Bench,
    label: &'static str,
    (dir, template): (PathBuf, PathBuf),
    spool: PathBuf,
    pgdata: &'a Path,
    base: impl Fn() -> Command + 'a,
) -> Config<'a> {
    let spool_setup = spool.clone();
    let sampler = std::rc::Rc::new(std::cell::RefCell::new(None::<RssSampler>));
    let sampler_stop = sampler.clone();
    Config {
        label,
        kind: Kind::Push,
        dir: Some(dir),
        template: Some(template),
        setup: Some(Box::new(move || {
            bench.start_async_row(&spool_setup);
            // Its background: the async process and its local processes
            // (process-max of them), which exit when the queue is empty.
            if SAMPLE_PSS.load(std::sync::atomic::Ordering::Relaxed) {
                *sampler.borrow_mut() = Some(RssSampler::start(|cmdline| {
                    cmdline.contains("pgbackrest")
                        && (cmdline.contains("archive-push:async")
                            || cmdline.contains("archive-push:local"))
                }));
            }
        })),
        after: Some(Box::new(move |seg| bench.mark_done(seg))),
        teardown: Some(Box::new(move || {
            let sampled = sampler_stop.borrow_mut().take().map(RssSampler::finish);
            stop_workers(&["archive-push:async"]);
            sampled.map(|pss| {
                format!(
                    "async and local processes together: peak Pss {:.1} MiB",
                    pss as f64 / 1024.0
                )
            })
        })),
        make: Box::new(move |seg: &Segment| {
            let mut cmd = base();
            cmd.args(PgBackRest::ZST3)
                .args(["--archive-async", "--process-max=2"])
                .arg(format!("--spool-path={}", spool.display()))
                .arg("archive-push")
                .arg(pgdata.join("pg_wal").join(&seg.name));
            cmd
        }),
    }
}

impl Bench {
    /// Before an asynchronous row: its spool empty, every segment ready.
    fn start_async_row(&self, spool: &Path) {
        let _ = fs::remove_dir_all(spool);
        fs::create_dir_all(spool).expect("create spool");
        self.mark_all_ready();
    }

    /// Before an asynchronous row: every segment marked ready in
    /// archive_status (as on a primary whose archiver fell behind).
    fn mark_all_ready(&self) {
        let Some(pgdata) = &self.async_pgdata else {
            return;
        };
        let status = pgdata.join("pg_wal").join("archive_status");
        let _ = fs::remove_dir_all(&status);
        fs::create_dir_all(&status).expect("create archive_status");
        for seg in &self.segments {
            fs::write(status.join(format!("{}.ready", seg.name)), "").expect("mark ready");
        }
    }

    /// After each call of an asynchronous row: the segment marked done,
    /// as PostgreSQL does.
    fn mark_done(&self, seg: &Segment) {
        if let Some(pgdata) = &self.async_pgdata {
            let status = pgdata.join("pg_wal").join("archive_status");
            let _ = fs::rename(
                status.join(format!("{}.ready", seg.name)),
                status.join(format!("{}.done", seg.name)),
            );
        }
    }

    /// A row's repository (or restore directory) as each round starts:
    /// a copy of its template, or empty.
    fn reset(&self, config: &Config) {
        if let Some(dir) = &config.dir {
            if dir.exists() {
                fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
            }
            match &config.template {
                Some(template) => run_ok(Command::new("cp").arg("-a").arg(template).arg(dir)),
                None => fs::create_dir(dir).map_or_else(
                    |e| panic!("create {}: {e}", dir.display()),
                    |_| String::new(),
                ),
            };
        }
    }

    /// Instructions one call executes for the first segment, counted by
    /// valgrind's callgrind (untimed, in a row's fresh repository): unlike
    /// time, the same from run to run whatever else the machine is doing.
    /// `None` where valgrind cannot run the call.
    fn instructions(&self, config: &Config) -> Option<u64> {
        let seg = self.segments.first()?;
        self.reset(config);
        let plain = (config.make)(seg);
        let out_file = self.root.join("callgrind.out");
        let _ = fs::remove_file(&out_file);
        let mut cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(plain.get_program())
            .args(plain.get_args());
        for (key, value) in plain.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        if let Some(dir) = plain.get_current_dir() {
            cmd.current_dir(dir);
        }
        let out = cmd.stdin(Stdio::null()).output().ok()?;
        if !out.status.success() {
            eprintln!(
                "{}: under callgrind: {}\n{}",
                config.label,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        fs::read_to_string(&out_file)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("summary: "))?
            .trim()
            .parse()
            .ok()
    }

    /// Runs one configuration over every segment, one process at a time,
    /// timing each call from spawn to exit and reaping it with `wait4` for
    /// its peak RSS. Any failed call, or any restore that differs from the
    /// original, fails the benchmark.
    fn run_config(&self, config: &Config, results: &mut Results) {
        let label = config.label;
        eprintln!("running: {label}");
        self.reset(config);
        if let Some(setup) = &config.setup {
            setup();
        }
        // Start with no dirty pages left by PostgreSQL or by the row
        // before, so background writeback does not slow this one. The input
        // segments stay in the page cache, as recently written WAL is when
        // the archiver reads it.
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        let stderr_log = self.root.join("call.stderr");
        let mut total = Duration::ZERO;
        let cpu_before = cpu_used();
        for seg in &self.segments {
            let mut cmd = (config.make)(seg);
            let (elapsed, status, rss_kib) = run_measured(&mut cmd, &stderr_log);
            let expected = match config.kind {
                Kind::Miss => status.code() == Some(1),
                _ => status.success(),
            };
            if !expected {
                let stderr = fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("{label}: {cmd:?} failed ({status})\nstderr:\n{stderr}");
            }
            total += elapsed;
            results.calls.push(elapsed);
            results.peak_rss_kib = results.peak_rss_kib.max(rss_kib);
            if let Some(after) = &config.after {
                after(seg);
            }
            if let (Kind::Fetch, Some(dir)) = (config.kind, &config.dir) {
                // Untimed. PostgreSQL also restores one file at a time (to
                // pg_wal/RECOVERYXLOG, each replacing the last).
                let restored = dir.join(&seg.name);
                let same = same_contents(&restored, &seg.path)
                    .unwrap_or_else(|e| panic!("{label}: compare {}: {e}", restored.display()));
                assert!(
                    same,
                    "{label}: restored {} differs from the original",
                    seg.name
                );
                fs::remove_file(&restored).expect("remove restored file");
            }
        }
        results.rounds.push(total);
        if let (Some(before), Some(after)) = (cpu_before, cpu_used()) {
            results.cpu.push(after.saturating_sub(before));
        }
        if let Some(note) = config.teardown.as_ref().and_then(|t| t()) {
            eprintln!("{label}: {note}");
            results.notes.push(note);
        }
        match (config.kind, &config.dir) {
            (Kind::Push, Some(dir)) => results.stored_bytes = Some(tree_bytes(dir)),
            (Kind::Fetch, _) => eprintln!(
                "verified: {label}: {} segments byte-identical",
                self.segments.len()
            ),
            _ => {}
        }
    }
}

/// Spawns `cmd`, waits for it with `wait4`, and returns the wall time from
/// spawn to exit, the exit status and the child's peak RSS in KiB (Linux
/// reports `ru_maxrss` in KiB; it covers the child and any children it waited for).
fn run_measured(cmd: &mut Command, stderr_log: &Path) -> (Duration, ExitStatus, u64) {
    let log = File::create(stderr_log).expect("create stderr log");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    // Force fork + exec. std would otherwise use posix_spawn, whose child
    // shares this process's memory until exec, and Linux then carries this
    // process's peak RSS into the child's ru_maxrss. A forked child starts
    // from this process's current RSS instead, which is why this process
    // never holds a whole segment: the `true` row shows the floor (~1 MiB).
    // SAFETY: the hook does nothing, so it is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| Ok(()));
    }
    let started = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain integers; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std's Child only
        // reaps in wait/try_wait, which are never called); both pointers
        // are valid for writes for the duration of the call.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            panic!("wait4({pid}): {err}");
        }
    }
    let elapsed = started.elapsed();
    drop(child);
    (
        elapsed,
        ExitStatus::from_raw(status),
        u64::try_from(usage.ru_maxrss).unwrap_or(0),
    )
}

/// Samples, every 10 ms until finished, the memory of the processes whose
/// command line `matches`, summed at each instant: the peak of that sum,
/// in KiB. Each process counts its proportional set size (Pss: pages
/// shared between them, such as the program's text, are split rather than
/// counted once per process), so for a background made of several
/// processes (pgBackRest's async process and its local workers) it is the
/// memory they held at once. A process is known by its pid and start
/// time, so a reused pid is not taken for it. Sampling can only miss a
/// peak between two samples.
/// Whether the asynchronous rows sample their background processes'
/// memory ([`RssSampler`]): only in the untimed memory round.
static SAMPLE_PSS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(matches: impl Fn(&str) -> bool + Send + 'static) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            // Every 100 ms, /proc is scanned for processes that match (one
            // that does not is looked at again at the next scan: a child
            // between fork and exec still shows its parent's command
            // line); every 10 ms the Pss of those that match is summed.
            // The calls measured share these cores, so this reads as little
            // as it can: reading every process's files every 5 ms slowed
            // walvault's worker on incompressible WAL by up to a fifth.
            let mut tracked: Vec<(i32, u64)> = Vec::new();
            let mut last_scan: Option<Instant> = None;
            let mut peak = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if last_scan.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
                    for pid in pids() {
                        if tracked.iter().any(|&(p, _)| p == pid) {
                            continue;
                        }
                        if cmdline_of(pid).is_some_and(|c| matches(&c)) {
                            if let Some(started) = start_time(pid) {
                                tracked.push((pid, started));
                            }
                        }
                    }
                    last_scan = Some(Instant::now());
                }
                // A pid is one process only with its start time.
                tracked.retain(|&(pid, started)| start_time(pid) == Some(started));
                let sum: u64 = tracked.iter().map(|&(pid, _)| pss_kib(pid)).sum();
                peak = peak.max(sum);
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        RssSampler { stop, handle }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

/// When a process started (field 22 of `/proc/<pid>/stat`, in clock
/// ticks since boot): with the pid, it names one process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A process's proportional set size in kB (0 when it is gone).
fn pss_kib(pid: i32) -> u64 {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// A `/proc/<pid>/status` field in kB (0 when the process is gone).
fn status_kib(pid: i32, field: &str) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), field)
}

/// The value of the line starting with `field` in a `/proc` file of
/// "name: value kB" lines (0 when it cannot be read).
fn kib_field(path: &str, field: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// The processes running now.
fn pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
}

/// A process's command line, its arguments joined by spaces.
fn cmdline_of(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Stops the background processes whose command line holds every one of
/// `needles` (an asynchronous worker of the row just run), returning the
/// largest peak RSS (VmHWM, KiB) among them, read just before.
fn stop_workers(needles: &[&str]) -> u64 {
    let mut peak = 0;
    for pid in pids() {
        let Some(cmdline) = cmdline_of(pid) else {
            continue;
        };
        if !needles.iter().all(|n| cmdline.contains(n)) {
            continue;
        }
        peak = peak.max(status_kib(pid, "VmHWM:"));
        // SAFETY: signalling a process this benchmark started.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    peak
}

/// Whether two files hold the same bytes. Reads through small buffers:
/// see [`run_measured`] for why this process must stay small.
fn same_contents(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let mut buf_a = vec![0u8; 64 * 1024];
    let mut buf_b = vec![0u8; 64 * 1024];
    loop {
        let n = read_up_to(&mut fa, &mut buf_a)?;
        let m = read_up_to(&mut fb, &mut buf_b)?;
        if buf_a[..n] != buf_b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Fills `buf` from `r` unless the end comes first; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Total size of the files under `dir` (what a repository stores).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let entry = entry.expect("directory entry");
            let meta = entry.metadata().expect("file metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn table(rows: &[(&Config, &Results)], raw_bytes: u64) -> String {
    let mut s = String::from(
        "| configuration | MiB/s (median round) | MiB/s range | mean ms/segment | p50 ms | p95 ms | CPU ms/segment | peak RSS MiB | stored/raw |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (config, results) in rows {
        let mut sorted = results.calls.clone();
        sorted.sort();
        let mean = results.calls.iter().sum::<Duration>() / results.calls.len() as u32;
        let (throughput, range) = if matches!(config.kind, Kind::Startup | Kind::Miss) {
            ("—".to_string(), "—".to_string())
        } else {
            let mut speeds: Vec<f64> = results
                .rounds
                .iter()
                .map(|t| mib(raw_bytes) / t.as_secs_f64())
                .collect();
            speeds.sort_by(f64::total_cmp);
            let n = speeds.len();
            let median = if n % 2 == 1 {
                speeds[n / 2]
            } else {
                (speeds[n / 2 - 1] + speeds[n / 2]) / 2.0
            };
            (
                format!("{median:.0}"),
                format!("{:.0}–{:.0}", speeds[0], speeds[n - 1]),
            )
        };
        let ratio = match results.stored_bytes {
            Some(stored) => format!("{:.3}", stored as f64 / raw_bytes as f64),
            None => "—".to_string(),
        };
        // Push rows only: a restore row's background worker also works
        // while its files are compared, outside the calls.
        let cpu = if config.kind == Kind::Push && !results.cpu.is_empty() {
            let mut per_round = results.cpu.clone();
            per_round.sort();
            let calls_per_round = (results.calls.len() / results.rounds.len()).max(1) as u32;
            format!(
                "{:.1}",
                ms(per_round[per_round.len() / 2] / calls_per_round)
            )
        } else {
            "—".to_string()
        };
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} |\n",
            config.label,
            throughput,
            range,
            ms(mean),
            ms(percentile(&sorted, 50.0)),
            ms(percentile(&sorted, 95.0)),
            cpu,
            results.peak_rss_kib as f64 / 1024.0,
            ratio
        ));
    }
    s
}

/// A positive number from the environment, if the variable is set.
fn positive_env(name: &str) -> Option<usize> {
    let value = std::env::var(name).ok()?;
    let n = value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| panic!("{name}={value:?}: expected a positive number"));
    Some(n)
}

/// The jiffies of all CPUs together, field by field, from /proc/stat's
/// first line (user, nice, system, idle, iowait, irq, softirq, steal, …).
fn cpu_jiffies() -> Option<Vec<u64>> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    Some(
        stat.lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect(),
    )
}

/// (busy, total) jiffies of all CPUs, from /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let fields = cpu_jiffies()?;
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait are fields 4 and 5.
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// CPU time all CPUs spent running anything (user, nice, system, irq,
/// softirq of /proc/stat; not idle, iowait or the time the host stole).
fn cpu_used() -> Option<Duration> {
    let fields = cpu_jiffies()?;
    let jiffies: u64 = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| fields.get(i).copied())
        .sum::<Option<u64>>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&hz| hz > 0)?;
    Some(Duration::from_micros(jiffies * 1_000_000 / hz))
}

fn cpu_busy_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    }
}

fn machine_summary() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown OS".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {os}")
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews
/// the timings.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_string())
}

/// The first `limit` full-size segments in `dir`, by name.
fn list_segments(dir: &Path, limit: usize) -> Vec<Segment> {
    let mut segments: Vec<Segment> = fs::read_dir(dir)
        .expect("read wal directory")
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let bytes = e.metadata().ok()?.len();
            let is_segment = name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
            (is_segment && bytes == SEGMENT_BYTES).then(|| Segment {
                path: e.path(),
                name,
                bytes,
            })
        })
        .collect();
    segments.sort_by(|a, b| a.name.cmp(&b.name));
    segments.truncate(limit);
    segments
}

// ---------------------------------------------------------------------------
// Real WAL from PostgreSQL 15

/// A throwaway cluster in `<root>/data`, listening only on a socket in
/// `<root>`; stopped when dropped.
struct Cluster {
    pg_bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    running: bool,
}

impl Cluster {
    fn new(pg_bin: &Path, root: &Path) -> Cluster {
        give_to_postgres(root);
        Cluster {
            pg_bin: pg_bin.to_path_buf(),
            root: root.to_path_buf(),
            data: root.join("data"),
            running: false,
        }
    }

    /// A PostgreSQL program, run as postgres when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.pg_bin.join(program);
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn connect_args<'a>(&'a self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.arg("-h").arg(&self.root).args(["-U", "postgres"])
    }

    fn psql(&self, sql: &str) -> String {
        let mut cmd = self.command("psql");
        self.connect_args(&mut cmd).args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-c",
            sql,
        ]);
        run_ok(&mut cmd).trim().to_string()
    }

    fn pgbench(&self, args: &[&str]) {
        let mut cmd = self.command("pgbench");
        self.connect_args(&mut cmd).args(args).arg("postgres");
        run_ok(&mut cmd);
    }

    fn init_and_start(&mut self, wal_dir: &Path) {
        self.init_and_start_with(&format!(
            "archive_command = 'cp %p {wal}/%f'\n",
            wal = wal_dir.display()
        ));
    }

    /// initdb and start, with `settings` (archive_command among them)
    /// added to postgresql.conf.
    fn init_and_start_with(&mut self, settings: &str) {
        run_ok(
            self.command("initdb")
                .args(["--no-sync", "-A", "trust", "-U", "postgres", "-D"])
                .arg(&self.data),
        );
        let conf = format!(
            "\n# walvault benchmark\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{root}'\n\
             wal_level = replica\n\
             archive_mode = on\n\
             fsync = off\n\
             {settings}",
            root = self.root.display(),
        );
        fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("configure postgresql.conf");
        self.running = true;
        run_ok(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.root.join("server.log"))
                .args(["-w", "start"]),
        );
    }

    fn stop(&mut self) {
        if self.running {
            run_ok(
                self.command("pg_ctl")
                    .arg("-D")
                    .arg(&self.data)
                    .args(["-m", "fast", "-w", "stop"]),
            );
            self.running = false;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `WALVAULT_BENCH_CORPUS=random`: WAL of rows of random text instead of
/// pgbench's.
fn random_corpus() -> bool {
    std::env::var("WALVAULT_BENCH_CORPUS").is_ok_and(|v| v == "random")
}

/// Runs pgbench until at least `target` segments are written, switches to a
/// new segment and waits until the archiver has copied everything into `wal_dir`.
fn generate_real_wal(
    cluster: &mut Cluster,
    wal_dir: &Path,
    target: usize,
    pgbackrest: Option<&PgBackRest>,
    s3: Option<&s3::S3Tls>,
) {
    give_to_postgres(wal_dir);
    eprintln!("starting PostgreSQL in {}", cluster.data.display());
    cluster.init_and_start(wal_dir);
    if let Some(pgbr) = pgbackrest {
        // stanza-create needs the running server; the pushes later do not.
        pgbr.create_stanzas();
        if let Some(s3) = s3 {
            pgbr.create_s3_stanza(s3);
        }
    }

    let scale = if target >= 40 {
        20
    } else {
        (target / 2).max(1)
    };
    if !random_corpus() {
        eprintln!("pgbench -i -s {scale}");
        cluster.pgbench(&["-i", "-q", "-s", &scale.to_string()]);
    }
    // A margin of two segments: the one being written and the one switched out.
    let want_bytes = (target as u64 + 2) * SEGMENT_BYTES;
    for round in 1..=40 {
        let written: u64 = cluster
            .psql("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
            .parse()
            .expect("WAL position");
        eprintln!("  {:.0} MiB of WAL written", mib(written));
        if written >= want_bytes {
            break;
        }
        if random_corpus() {
            // Less compressible WAL: rows of random text (base64 of
            // SHA-256 digests of random numbers, 6 bits of entropy per
            // byte), as tables of hashes, tokens or encrypted columns give.
            eprintln!("INSERT rows of random text (round {round})");
            cluster.psql(
                "CREATE TABLE IF NOT EXISTS noise(id bigserial, t text); \
                 INSERT INTO noise(t) SELECT string_agg(encode(sha256(random()::text::bytea), 'base64'), '') \
                 FROM generate_series(1, 200000) g GROUP BY g % 20000",
            );
            continue;
        }
        // A checkpoint first, as a busy server has every few minutes: the
        // first change to each page after it is logged as a full-page
        // image, which is most of the volume of production WAL.
        cluster.psql("CHECKPOINT");
        eprintln!("CHECKPOINT; pgbench -n -c 4 -j 2 -t 3000 (round {round})");
        cluster.pgbench(&["-n", "-c", "4", "-j", "2", "-t", "3000"]);
    }

    let last = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
    eprintln!("waiting until the archiver has copied {last}");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let state = cluster.psql(
            "SELECT coalesce(last_archived_wal, '') || '|' || failed_count FROM pg_stat_archiver",
        );
        let (archived, failed) = state.split_once('|').unwrap_or((&state, "0"));
        if archived.len() == 24 && archived >= last.as_str() {
            break;
        }
        assert!(
            failed == "0",
            "archive_command failed {failed} times; see {}",
            cluster.root.join("server.log").display()
        );
        assert!(
            Instant::now() < deadline,
            "archiver did not reach {last} in 600 s (at {archived:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// pgBackRest, as a baseline

struct PgBackRest {
    root: PathBuf,
    config: PathBuf,
}

impl PgBackRest {
    const STANZA: &'static str = "bench";
    /// walvault's default compression, for a like-for-like row.
    const ZST3: [&'static str; 2] = ["--compress-type=zst", "--compress-level=3"];
    const ZST_REPO: &'static str = "pgbr-zst";
    const GZ_REPO: &'static str = "pgbr-gz";

    /// Writes a config naming the cluster in `<root>/data` and keeping
    /// locks and logs inside `root`.
    fn new(root: &Path) -> PgBackRest {
        let config = root.join("pgbackrest.conf");
        let text = format!(
            "[global]\n\
             lock-path={root}/pgbr-lock\n\
             log-path={root}/pgbr-log\n\
             log-level-console=warn\n\
             log-level-stderr=warn\n\
             log-level-file=off\n\
             \n\
             [{stanza}]\n\
             pg1-path={root}/data\n\
             pg1-socket-path={root}\n\
             pg1-user=postgres\n",
            root = root.display(),
            stanza = Self::STANZA,
        );
        fs::write(&config, text).expect("write pgbackrest.conf");
        PgBackRest {
            root: root.to_path_buf(),
            config,
        }
    }

    /// The S3 prefix of the empty repository, with its stanza, that the S3
    /// rows start from.
    const S3_TEMPLATE: &'static str = "pgbr.template";

    /// pgbackrest with this config and stanza, no repository yet.
    fn command_base(&self) -> Command {
        let mut cmd = Command::new("pgbackrest");
        cmd.arg(format!("--config={}", self.config.display()))
            .arg(format!("--stanza={}", Self::STANZA));
        cmd
    }

    fn command(&self, repo: &Path) -> Command {
        let mut cmd = self.command_base();
        cmd.arg(format!("--repo1-path={}", repo.display()));
        cmd
    }

    /// The stanza on S3 ([`Self::S3_TEMPLATE`]), while the server runs.
    fn create_s3_stanza(&self, s3: &s3::S3Tls) {
        let mut cmd = self.command_base();
        s3.pgbackrest_env(&mut cmd);
        run_ok(
            cmd.args(s3.pgbackrest_args(Self::S3_TEMPLATE))
                .arg("stanza-create"),
        );
    }

    /// Makes an empty repository with the stanza created for each of
    /// [`Self::ZST_REPO`] and [`Self::GZ_REPO`]: see [`Self::template`].
    fn create_stanzas(&self) {
        for dir in [Self::ZST_REPO, Self::GZ_REPO] {
            let repo = self.template(dir);
            fs::create_dir_all(&repo).expect("create pgbackrest repository");
            run_ok(self.command(&repo).arg("stanza-create"));
        }
    }

    /// The empty repository, with its stanza, that `<root>/<dir>` starts
    /// from in each round.
    fn template(&self, dir: &str) -> PathBuf {
        self.root.join(format!("{dir}.template"))
    }
}

// ---------------------------------------------------------------------------
// Synthetic WAL, when there is no PostgreSQL

const SYNTHETIC_SYSTEM_ID: u64 = 7_300_000_000_000_000_042;

/// Writes `count` segments on timeline 1, starting at segment 1.
/// A data directory with just what `walvault init` reads (PG_VERSION and
/// the fields of global/pg_control it uses), for the synthetic WAL.
fn fake_pgdata(root: &Path, system_identifier: u64) -> PathBuf {
    let data = root.join("synthetic-pgdata");
    fs::create_dir_all(data.join("global")).expect("create fake data directory");
    fs::write(data.join("PG_VERSION"), "15\n").expect("write PG_VERSION");
    let mut control = vec![0u8; 8192];
    control[0..8].copy_from_slice(&system_identifier.to_le_bytes());
    control[8..12].copy_from_slice(&1300u32.to_le_bytes());
    let at = 240;
    control[at..at + 8].copy_from_slice(&1234567.0f64.to_le_bytes());
    control[at + 8..at + 12].copy_from_slice(&8192u32.to_le_bytes());
    control[at + 12..at + 16].copy_from_slice(&131072u32.to_le_bytes());
    control[at + 16..at + 20].copy_from_slice(&8192u32.to_le_bytes());
    control[at + 20..at + 24].copy_from_slice(&(SEGMENT_BYTES as u32).to_le_bytes());
    fs::write(data.join("global/pg_control"), control).expect("write pg_control");
    data
}

fn write_synthetic_wal(dir: &Path, count: usize) {
    for i in 0..count as u64 {
        let segno = i + 1;
        let name = format!("{:08X}{:08X}{:08X}", 1, segno >> 8, segno & 0xFF);
        write_synthetic_segment(&dir.join(name), 1, segno).expect("write synthetic segment");
    }
}

/// A 16 MiB segment: PostgreSQL 15's long page header (XLogLongPageHeaderData),
/// then pseudo-random words from a small vocabulary. Written through a small
/// buffer, so this process never holds a whole segment (see [`run_measured`]).
fn write_synthetic_segment(path: &Path, timeline: u32, segno: u64) -> std::io::Result<()> {
    const WORDS: [&str; 24] = [
        "INSERT",
        "UPDATE",
        "pgbench_accounts",
        "pgbench_tellers",
        "pgbench_branches",
        "aid",
        "bid",
        "tid",
        "abalance",
        "delta",
        "heap",
        "btree",
        "commit",
        "xid",
        "lsn",
        "page",
        "tuple",
        "index",
        "vacuum",
        "checkpoint",
        "fpw",
        "block",
        "relfilenode",
        "0000000000",
    ];
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, File::create(path)?);
    let mut header = Vec::with_capacity(40);
    header.extend_from_slice(&0xD110u16.to_le_bytes()); // xlp_magic (PostgreSQL 15)
    header.extend_from_slice(&0x0002u16.to_le_bytes()); // xlp_info: XLP_LONG_HEADER
    header.extend_from_slice(&timeline.to_le_bytes()); // xlp_tli
    header.extend_from_slice(&(segno * SEGMENT_BYTES).to_le_bytes()); // xlp_pageaddr
    header.extend_from_slice(&0u32.to_le_bytes()); // xlp_rem_len
    header.extend_from_slice(&[0u8; 4]); // padding
    header.extend_from_slice(&SYNTHETIC_SYSTEM_ID.to_le_bytes()); // xlp_sysid
    header.extend_from_slice(&(SEGMENT_BYTES as u32).to_le_bytes()); // xlp_seg_size
    header.extend_from_slice(&8192u32.to_le_bytes()); // xlp_xlog_blcksz
    out.write_all(&header)?;
    let mut written = header.len() as u64;
    let mut state = segno.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut word = Vec::with_capacity(64);
    while written < SEGMENT_BYTES {
        // xorshift64: cheap, deterministic, good enough to pick words.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.clear();
        word.extend_from_slice(WORDS[(state % WORDS.len() as u64) as usize].as_bytes());
        write!(word, " {} ", state % 100_000)?;
        let take = word.len().min((SEGMENT_BYTES - written) as usize);
        out.write_all(&word[..take])?;
        written += take as u64;
    }
    out.flush()
}
