//! Base backup and restore throughput: `cargo bench --bench backup_throughput`.
//!
//! Builds a throwaway PostgreSQL 15 cluster of about 1 GiB (`pgbench -i -s 70`)
//! that archives its WAL with `walvault-push`, then, on that same database
//! and in the same run, measures
//!
//! - `walvault backup` with the default `--jobs` (the number of cores), with
//!   `--jobs 1`, and with `--compress-level 1`,
//! - `walvault restore` of that backup into a new directory, with the
//!   default `--jobs` and with `--jobs 1`,
//! - `pg_basebackup` in tar format with gzip (`-z`), with client-side and
//!   server-side zstd level 3, with client-side zstd using 2 worker threads,
//!   and in plain format as an uncompressed reference, all with `-X none`
//!   (WAL is left to the archive, as walvault does) and `-c fast` (walvault
//!   asks for a fast checkpoint too),
//! - unpacking the gzip and zstd tarballs with `tar` as the matching restore.
//!
//! Each configuration runs `WALVAULT_BENCH_ROUNDS` times (default 3), round
//! robin, and the tables show the median. For each: wall time, MiB/s of
//! database (`pg_database_size`), the size of what it wrote, peak resident
//! memory, CPU time, and how busy the whole machine was (other work on it
//! skews the timings). walvault, tar and the
//! helper commands run as children of this process and are reaped with
//! `wait4`, whose `ru_maxrss` covers the child and every descendant it
//! waited for. PostgreSQL's own programs must not run as root: when the
//! benchmark is root they run as `runuser -u postgres -- /usr/bin/time -f %M
//! …`, so the peak RSS reported is GNU time's `wait4` figure for
//! pg_basebackup itself, not runuser's; without /usr/bin/time it is the
//! `wait4` figure of the whole runuser tree, marked with "≤".
//!
//! Progress goes to stderr; the results, as Markdown, go to stdout.
//!
//! Environment:
//! - `WALVAULT_BENCH_SCALE`: pgbench scale factor (default 70, about 1.05 GiB)
//! - `WALVAULT_BENCH_ROUNDS`: how many times each configuration runs
//!   (default 3; the tables show the median and the range)
//! - `WALVAULT_BENCH_PG_BIN`: PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
//! - `WALVAULT_BENCH_KEEP=1`: keep the temporary directory (cluster, repository)
//! - `WALVAULT_BENCH_ONLY=incremental`: only the incremental phase (below)
//! - `WALVAULT_BENCH_NO_PGBACKREST=1`: leave pgBackRest out
//! - `WALVAULT_BENCH_ONLY=encryption`: only full backups and restores into
//!   and from a plain and an encrypted (key file) repository, the cluster
//!   archiving into both (walvault only)
//! - `WALVAULT_BENCH_ONLY=many-files`: only the many-files phase: another
//!   `WALVAULT_BENCH_FILES` (default 100000) files of 100 bytes in the data
//!   directory, full and incremental backups (1% of the files changed),
//!   a restore and a listing, beside pgBackRest
//!
//! The incremental phase, after the rounds above, in each round: a full
//! backup with walvault and with pgBackRest (zst 3, `process-max` = cores,
//! into its own repository), then 1% of pgbench_accounts' rows updated
//! (a contiguous range, a different one each round) and an incremental
//! backup with each; then each full backup restored into a directory and
//! that directory brought to the incremental with a delta restore
//! (walvault `--delta`, pgBackRest `--delta` with checksums and with
//! `--force`, which trusts size and time).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_SCALE: u32 = 70;
const DEFAULT_ROUNDS: usize = 3;
const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The cluster listens only on a Unix socket in the temporary directory;
/// an unusual port keeps the socket's name apart from a system server's.
const PORT: u16 = 54_329;
const GNU_TIME: &str = "/usr/bin/time";
const BINARIES: [&str; 3] = ["walvault", "walvault-push", "walvault-fetch"];
/// Settings from the environment that would point walvault elsewhere or
/// change how it compresses; the benchmark passes everything explicitly.
const CLEARED_ENV: [&str; 11] = [
    "WALVAULT_CONFIG",
    "WALVAULT_REPO",
    "WALVAULT_S3_ENDPOINT",
    "WALVAULT_S3_REGION",
    "WALVAULT_S3_PATH_STYLE",
    "WALVAULT_COMPRESS_LEVEL",
    "WALVAULT_COMPRESS_THREADS",
    "WALVAULT_FETCH_RETRY_SECS",
    "WALVAULT_LOG",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
];

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let scale = match std::env::var("WALVAULT_BENCH_SCALE") {
        Ok(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("WALVAULT_BENCH_SCALE={v:?}: expected a positive number")),
        Err(_) => DEFAULT_SCALE,
    };
    let rounds = match std::env::var("WALVAULT_BENCH_ROUNDS") {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("WALVAULT_BENCH_ROUNDS={v:?}: expected a positive number")),
        Err(_) => DEFAULT_ROUNDS,
    };
    let pg_bin = PathBuf::from(
        std::env::var("WALVAULT_BENCH_PG_BIN").unwrap_or_else(|_| DEFAULT_PG_BIN.to_string()),
    );
    assert!(
        pg_bin.join("postgres").is_file() && pg_bin.join("pg_basebackup").is_file(),
        "this benchmark needs PostgreSQL 15 in {} (apt-get install postgresql-15), \
         or WALVAULT_BENCH_PG_BIN pointing at its binaries",
        pg_bin.display()
    );
    let sources = [
        locate_binary("walvault", option_env!("CARGO_BIN_EXE_walvault")),
        locate_binary("walvault-push", option_env!("CARGO_BIN_EXE_walvault-push")),
        locate_binary(
            "walvault-fetch",
            option_env!("CARGO_BIN_EXE_walvault-fetch"),
        ),
    ];

    // Dropped last: everything below lives in it.
    let tmp = tempfile::Builder::new()
        .prefix("walvault-backup-bench-")
        .tempdir()
        .expect("create temporary directory");
    let root = tmp.path().to_path_buf();
    let runner = Runner::new(&root, &pg_bin);
    runner.give_to_postgres(&root);

    // The binaries, where the postgres user can run them.
    let bin_dir = root.join("bin");
    fs::create_dir(&bin_dir).expect("create bin directory");
    for (name, src) in BINARIES.iter().zip(&sources) {
        let dest = bin_dir.join(name);
        fs::copy(src, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).expect("chmod binary");
        eprintln!("{name}: {} (copied to {})", src.display(), dest.display());
    }
    runner.give_to_postgres(&bin_dir);
    let walvault = bin_dir.join("walvault");
    let repo = root.join("repo");
    fs::create_dir(&repo).expect("create repository directory");
    runner.give_to_postgres(&repo);

    // Declared after `tmp`, so dropped (server stopped) before the directory goes.
    let mut cluster = Cluster::new(&runner);
    cluster.init_and_start(&bin_dir.join("walvault-push"), &repo);

    eprintln!("pgbench -i -q -s {scale} (about {} MiB)", scale * 15);
    let started = Instant::now();
    cluster.pgbench_init(scale);
    eprintln!("  {:.0} s", started.elapsed().as_secs_f64());
    cluster.psql("CHECKPOINT");
    cluster.psql("SELECT pg_switch_wal()");
    cluster.wait_for_archiver();

    let db_bytes: u64 = cluster
        .psql("SELECT pg_database_size('postgres')")
        .parse()
        .expect("database size");
    let data_size = tree_size(&cluster.data);
    let wal_size = tree_size(&cluster.data.join("pg_wal"));
    let base_bytes = data_size.bytes - wal_size.bytes;
    let pg_version = run_ok(Command::new(pg_bin.join("postgres")).arg("--version"))
        .trim()
        .to_string();
    eprintln!(
        "database {:.0} MiB; data directory {:.0} MiB, of which pg_wal {:.0} MiB",
        mib(db_bytes),
        mib(data_size.bytes),
        mib(wal_size.bytes)
    );
    // Every row reads the data directory from the page cache, as a backup
    // of a busy, recently written database of this size would.
    eprintln!("reading the data directory once into the page cache");
    read_tree(&cluster.data);

    let bench = Bench {
        runner: &runner,
        cluster: &cluster,
    };
    let floor_direct = bench.measure("true", &mut Command::new("true"), None);
    let floor_runuser = runner.time_available().then(|| {
        let (mut cmd, rss_file) = runner.as_postgres(Path::new("/bin/true"));
        bench.measure("true as postgres", &mut cmd, rss_file.as_deref())
    });

    let load_before = load_average();
    let mut results = Results::default();
    let conninfo = format!(
        "host={} port={PORT} user=postgres dbname=postgres",
        root.display()
    );
    // walvault backup: global options (before the subcommand), then backup
    // options. Returns the new backup's label.
    let walvault_backup_as = |results: &mut Results,
                              kind: Kind,
                              label: &str,
                              global: &[&str],
                              extra: &[&str]|
     -> String {
        let before = backup_labels(&repo);
        let mut cmd = walvault_command(&walvault);
        cmd.arg("--repo")
            .arg(&repo)
            .args(global)
            .arg("backup")
            .arg("--pgdata")
            .arg(&cluster.data)
            .arg("--dbname")
            .arg(&conninfo)
            .arg("--no-progress")
            .args(extra);
        let run = bench.measure(label, &mut cmd, None);
        let new: Vec<String> = backup_labels(&repo)
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect();
        assert_eq!(
            new.len(),
            1,
            "{label}: expected one new backup, found {new:?}"
        );
        let size = tree_size(&repo.join("backup").join(&new[0]));
        results.record(kind, label, run, size);
        new[0].clone()
    };
    let walvault_backup = |results: &mut Results, label: &str, global: &[&str], extra: &[&str]| {
        walvault_backup_as(results, Kind::Backup, label, global, extra)
    };

    // pg_basebackup, tar format, with each compression, then unpacking the
    // tarball with tar as the matching restore; plain format as a reference.
    struct Variant {
        label: &'static str,
        args: &'static [&'static str],
        /// Restore row label, file name and tar options to unpack base.tar*.
        unpack: Option<(&'static str, &'static str, &'static [&'static str])>,
    }
    let variants = [
        Variant {
            label: "pg_basebackup -Ft -z (client gzip, default level 6)",
            args: &["-Ft", "-z"],
            unpack: Some(("tar -xzf base.tar.gz", "base.tar.gz", &["-z"])),
        },
        Variant {
            label: "pg_basebackup -Ft --compress=client-zstd:level=3",
            args: &["-Ft", "--compress=client-zstd:level=3"],
            unpack: Some((
                "tar -I zstd -xf base.tar.zst",
                "base.tar.zst",
                &["-I", "zstd"],
            )),
        },
        Variant {
            label: "pg_basebackup -Ft --compress=client-zstd:level=3,workers=2",
            args: &["-Ft", "--compress=client-zstd:level=3,workers=2"],
            unpack: None,
        },
        Variant {
            label: "pg_basebackup -Ft --compress=server-zstd:level=3",
            args: &["-Ft", "--compress=server-zstd:level=3"],
            unpack: None,
        },
        Variant {
            label: "pg_basebackup -Fp (plain, uncompressed reference)",
            args: &["-Fp"],
            unpack: None,
        },
    ];
    let mut failed: Vec<(&str, String)> = Vec::new();
    let only = std::env::var("WALVAULT_BENCH_ONLY").unwrap_or_default();
    let only_one_phase = !only.is_empty();

    // Every configuration once per round, rounds one after another, so that
    // changing load from elsewhere on the machine spreads over all of them.
    let mut restore_label: Option<String> = None;
    for round in (1..=rounds).filter(|_| !only_one_phase) {
        eprintln!("--- round {round} of {rounds}");
        let label = walvault_backup(
            &mut results,
            "walvault backup (zstd 3, --jobs 2 = cores)",
            &[],
            &[],
        );
        let restore_from = restore_label.get_or_insert(label).clone();
        walvault_backup(
            &mut results,
            "walvault backup --jobs 1",
            &[],
            &["--jobs", "1"],
        );
        walvault_backup(
            &mut results,
            "walvault --compress-level 1 backup (--jobs 2)",
            &["--compress-level", "1"],
            &[],
        );

        // walvault restore, always of the first default backup.
        for (label, extra) in [
            ("walvault restore (--jobs 2 = cores)", &[][..]),
            ("walvault restore --jobs 1", &["--jobs", "1"][..]),
        ] {
            let target = root.join("restore-walvault");
            let mut cmd = walvault_restore(&walvault, &repo, &target, &restore_from, extra);
            let run = bench.measure(label, &mut cmd, None);
            let size = tree_size(&target);
            check_restored(label, &target, base_bytes);
            results.record(Kind::Restore, label, run, size);
            remove_tree(&target);
        }

        for v in &variants {
            if failed.iter().any(|(l, _)| *l == v.label) {
                continue;
            }
            let out = root.join("pg_basebackup");
            let (mut cmd, rss_file) = runner.as_postgres(&pg_bin.join("pg_basebackup"));
            cmd.arg("-h")
                .arg(&root)
                .arg("-p")
                .arg(PORT.to_string())
                .args(["-U", "postgres", "-D"])
                .arg(&out)
                .args(["-X", "none", "-c", "fast"])
                .args(v.args);
            match bench.try_measure(v.label, &mut cmd, rss_file.as_deref()) {
                Ok(run) => results.record(Kind::Backup, v.label, run, tree_size(&out)),
                Err(why) => {
                    eprintln!("{}: failed, left out: {why}", v.label);
                    failed.push((v.label, why));
                    if out.exists() {
                        remove_tree(&out);
                    }
                    continue;
                }
            }
            if let Some((label, file, tar_args)) = v.unpack {
                let target = root.join("restore-tar");
                fs::create_dir(&target).expect("create restore directory");
                // tar, then syncfs on the target, as walvault restore ends with one.
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(r#"dir="$1"; shift; tar -C "$dir" "$@" && sync -f "$dir""#)
                    .arg("sh")
                    .arg(&target)
                    .args(tar_args)
                    .arg("-xf")
                    .arg(out.join(file));
                let label = format!("{label} (+ sync -f)");
                let run = bench.measure(&label, &mut cmd, None);
                let size = tree_size(&target);
                check_restored(&label, &target, base_bytes);
                results.record(Kind::Restore, &label, run, size);
                remove_tree(&target);
            }
            remove_tree(&out);
        }
    }

    // The incremental phase.
    // WALVAULT_BENCH_NO_PGBACKREST=1 leaves pgBackRest out (a long
    // walvault-only run, such as a million files).
    let without_pgbr = std::env::var_os("WALVAULT_BENCH_NO_PGBACKREST").is_some();
    let pgbr = (on_path("pgbackrest") && !without_pgbr).then(|| {
        let pgbr = PgBackRest::new(&root, &cluster.data);
        pgbr.stanza_create();
        pgbr
    });
    if pgbr.is_none() {
        eprintln!(
            "pgbackrest is not installed or WALVAULT_BENCH_NO_PGBACKREST is set: its rows are left out"
        );
    }
    // A timed pgBackRest backup of `kind`, recorded as `label` with the size
    // of the set it wrote; nothing without pgBackRest.
    let pgbr_backup = |results: &mut Results, row: Kind, label: &str, kind: &str| {
        if let Some(pgbr) = &pgbr {
            let run = bench.measure(
                label,
                pgbr.command().args(["backup", &format!("--type={kind}")]),
                None,
            );
            results.record(row, label, run, pgbr.newest_set_size());
        }
    };
    let accounts: u64 = cluster
        .psql("SELECT count(*) FROM pgbench_accounts")
        .parse()
        .expect("row count");
    for round in (1..=rounds).filter(|_| only.is_empty() || only == "incremental") {
        eprintln!("--- incremental round {round} of {rounds}");
        let full = walvault_backup_as(
            &mut results,
            Kind::Incremental,
            "walvault backup --type full",
            &[],
            &["--type", "full"],
        );
        pgbr_backup(
            &mut results,
            Kind::Incremental,
            "pgbackrest backup --type=full (zst 3)",
            "full",
        );
        let pgbr_full = pgbr.as_ref().map(|p| p.newest_set());
        // 1% of the rows, a different contiguous range each round.
        let step = (accounts / 100).max(1);
        let first = 1 + (round as u64 - 1) * step * 3;
        cluster.psql(&format!(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {first} AND {}",
            first + step - 1
        ));
        cluster.psql("CHECKPOINT");
        let incr = walvault_backup_as(
            &mut results,
            Kind::Incremental,
            "walvault backup --type incr (after 1% of rows updated)",
            &[],
            &["--type", "incr"],
        );
        pgbr_backup(
            &mut results,
            Kind::Incremental,
            "pgbackrest backup --type=incr (after 1% of rows updated)",
            "incr",
        );
        let pgbr_incr = pgbr.as_ref().map(|p| p.newest_set());

        // walvault: the full restored, then brought to the incremental.
        let target = root.join("restore-delta-walvault");
        let restore = |label: &str, backup: &str, extra: &[&str]| {
            let mut cmd = walvault_restore(&walvault, &repo, &target, backup, extra);
            bench.measure(label, &mut cmd, None)
        };
        // The first restore of a round makes room in the page cache for
        // what the backups left there; it is not timed, so every timed
        // restore (walvault's and pgBackRest's) starts the same way.
        restore("walvault restore (untimed, makes room)", &full, &[]);
        remove_tree(&target);
        let run = restore(
            "walvault restore (full backup, empty directory)",
            &full,
            &[],
        );
        results.record(
            Kind::Delta,
            "walvault restore (full backup, empty directory)",
            run,
            tree_size(&target),
        );
        let run = restore(
            "walvault restore --delta (to the incremental)",
            &incr,
            &["--delta"],
        );
        check_restored("walvault restore --delta", &target, base_bytes);
        results.record(
            Kind::Delta,
            "walvault restore --delta (to the incremental)",
            run,
            tree_size(&target),
        );
        remove_tree(&target);
        restore(
            "walvault restore (full backup, empty directory)",
            &full,
            &[],
        );
        let run = restore(
            "walvault restore --delta --delta-force-checksum (to the incremental)",
            &incr,
            &["--delta", "--delta-force-checksum"],
        );
        results.record(
            Kind::Delta,
            "walvault restore --delta --delta-force-checksum (to the incremental)",
            run,
            tree_size(&target),
        );
        remove_tree(&target);

        if let (Some(pgbr), Some(pfull), Some(pincr)) = (&pgbr, &pgbr_full, &pgbr_incr) {
            let target = root.join("restore-delta-pgbackrest");
            for (label, extra) in [
                (
                    "pgbackrest restore --delta (to the incremental, checksums)",
                    &["--delta"][..],
                ),
                (
                    "pgbackrest restore --delta --force (to the incremental, size and time)",
                    &["--delta", "--force"][..],
                ),
            ] {
                fs::create_dir_all(&target).expect("create restore directory");
                let mut cmd = pgbr.command();
                cmd.args(["restore", "--type=immediate"])
                    .arg(format!("--set={pfull}"))
                    .arg(format!("--pg1-path={}", target.display()));
                let run = bench.measure(
                    "pgbackrest restore (full backup, empty directory)",
                    &mut cmd,
                    None,
                );
                results.record(
                    Kind::Delta,
                    "pgbackrest restore (full backup, empty directory)",
                    run,
                    tree_size(&target),
                );
                let mut cmd = pgbr.command();
                cmd.args(["restore", "--type=immediate"])
                    .arg(format!("--set={pincr}"))
                    .arg(format!("--pg1-path={}", target.display()))
                    .args(extra);
                let run = bench.measure(label, &mut cmd, None);
                check_restored(label, &target, base_bytes);
                results.record(Kind::Delta, label, run, tree_size(&target));
                remove_tree(&target);
            }
        }

        // Another 1%, then incrementals that trust size and time, as
        // pgBackRest's do by default.
        let first = first + step;
        cluster.psql(&format!(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {first} AND {}",
            first + step - 1
        ));
        cluster.psql("CHECKPOINT");
        walvault_backup_as(
            &mut results,
            Kind::Incremental,
            "walvault backup --type incr --trust-mtime (after another 1%)",
            &[],
            &["--type", "incr", "--trust-mtime"],
        );
        pgbr_backup(
            &mut results,
            Kind::Incremental,
            "pgbackrest backup --type=incr (after another 1%, size and time as always)",
            "incr",
        );
    }

    // Many small files: `WALVAULT_BENCH_ONLY=many-files`.
    let many: usize = std::env::var("WALVAULT_BENCH_FILES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(100_000);
    // Encryption: `WALVAULT_BENCH_ONLY=encryption`. The cluster archives
    // into the plain repository and an encrypted second one (a key file)
    // at once; full backups into each, and restores from each, in turn.
    if only == "encryption" {
        let enc_repo = root.join("repo-encrypted");
        let key = root.join("repo2.key");
        let mut random = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .expect("random key");
        fs::write(&key, hex_of(&random)).expect("write key file");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod key");
        runner.give_to_postgres(&key);
        let config = root.join("walvault.toml");
        fs::write(
            &config,
            format!(
                "repo = \"{}\"\n[repo2]\nrepo = \"{}\"\nencryption_key_file = \"{}\"\n",
                repo.display(),
                enc_repo.display(),
                key.display()
            ),
        )
        .expect("write config");
        runner.give_to_postgres(&config);
        run_ok(
            walvault_command(&walvault)
                .arg("--config")
                .arg(&config)
                .args(["--repo-index", "2", "init", "--pgdata"])
                .arg(&cluster.data),
        );
        runner.give_to_postgres(&enc_repo);
        cluster.psql(&format!(
            "ALTER SYSTEM SET archive_command = '{} --config {} %p'",
            bin_dir.join("walvault-push").display(),
            config.display()
        ));
        cluster.psql("SELECT pg_reload_conf()");
        let by_index = |index: &str| -> Command {
            let mut cmd = walvault_command(&walvault);
            cmd.arg("--config")
                .arg(&config)
                .args(["--repo-index", index]);
            cmd
        };
        for round in 1..=rounds {
            eprintln!("--- encryption round {round} of {rounds}");
            for (index, dir, label, restore_label) in [
                (
                    "1",
                    &repo,
                    "walvault backup (plain)",
                    "walvault restore (plain)",
                ),
                (
                    "2",
                    &enc_repo,
                    "walvault backup, encrypted (key file)",
                    "walvault restore, encrypted (key file)",
                ),
            ] {
                let before = backup_labels(dir);
                let mut cmd = by_index(index);
                cmd.arg("backup")
                    .arg("--pgdata")
                    .arg(&cluster.data)
                    .arg("--dbname")
                    .arg(&conninfo)
                    .args(["--no-progress", "--type", "full"]);
                let run = bench.measure(label, &mut cmd, None);
                let new: Vec<String> = backup_labels(dir)
                    .into_iter()
                    .filter(|l| !before.contains(l))
                    .collect();
                assert_eq!(
                    new.len(),
                    1,
                    "{label}: expected one new backup, found {new:?}"
                );
                results.record(
                    Kind::Encryption,
                    label,
                    run,
                    tree_size(&dir.join("backup").join(&new[0])),
                );
                let target = root.join("restore-encryption");
                let mut cmd = by_index(index);
                cmd.arg("restore")
                    .arg("--pgdata")
                    .arg(&target)
                    .arg("--backup")
                    .arg(&new[0]);
                let run = bench.measure(restore_label, &mut cmd, None);
                check_restored(restore_label, &target, base_bytes);
                results.record(Kind::Encryption, restore_label, run, tree_size(&target));
                remove_tree(&target);
            }
        }
    }

    if only == "many-files" {
        eprintln!("writing {many} files of 100 bytes into the data directory");
        let dir = cluster.data.join("walvault_bench_many");
        for i in 0..many {
            let sub = dir.join(format!("{}", i / 1000));
            if i % 1000 == 0 {
                fs::create_dir_all(&sub).expect("create directory");
            }
            fs::write(sub.join(format!("{i}")), [b'x'; 100]).expect("write file");
        }
        runner.give_to_postgres(&dir);
        for round in 1..=rounds {
            eprintln!("--- many-files round {round} of {rounds}");
            let full = walvault_backup_as(
                &mut results,
                Kind::Many,
                "walvault backup --type full",
                &[],
                &["--type", "full"],
            );
            pgbr_backup(
                &mut results,
                Kind::Many,
                "pgbackrest backup --type=full (zst 3)",
                "full",
            );
            // 1% of the files change.
            for i in (0..many).step_by(100) {
                fs::write(dir.join(format!("{}/{i}", i / 1000)), [b'y'; 100]).expect("write file");
            }
            walvault_backup_as(
                &mut results,
                Kind::Many,
                "walvault backup --type incr (1% of the files changed)",
                &[],
                &["--type", "incr"],
            );
            pgbr_backup(
                &mut results,
                Kind::Many,
                "pgbackrest backup --type=incr (1% of the files changed)",
                "incr",
            );
            let target = root.join("restore-many");
            let mut cmd = walvault_restore(&walvault, &repo, &target, &full, &[]);
            let label = "walvault restore (the full backup)";
            let run = bench.measure(label, &mut cmd, None);
            results.record(Kind::Many, label, run, tree_size(&target));
            remove_tree(&target);
            if let Some(pgbr) = &pgbr {
                fs::create_dir_all(&target).expect("create restore directory");
                let label = "pgbackrest restore (the full backup)";
                let mut cmd = pgbr.command();
                cmd.args(["restore", "--type=immediate"])
                    .arg(format!(
                        "--set={}",
                        pgbr.sets()
                            .into_iter()
                            .rfind(|s| s.ends_with('F'))
                            .expect("a full set")
                    ))
                    .arg(format!("--pg1-path={}", target.display()));
                let run = bench.measure(label, &mut cmd, None);
                results.record(Kind::Many, label, run, tree_size(&target));
                remove_tree(&target);
            }
            let mut cmd = walvault_command(&walvault);
            cmd.arg("--repo")
                .arg(&repo)
                .args(["list"])
                .stdout(Stdio::null());
            let label = "walvault list";
            let run = bench.measure(label, &mut cmd, None);
            results.record(Kind::Many, label, run, Size::default());
        }
    }

    // Results.
    let mut md = String::new();
    md.push_str(&format!(
        "Database: pgbench scale {scale}; pg_database_size('postgres') = {:.0} MiB; \
         data directory {:.0} MiB, {:.0} MiB of it outside pg_wal (what a base backup copies). \
         {pg_version}; server with fsync = off, archive_command = walvault-push.\n",
        mib(db_bytes),
        mib(data_size.bytes),
        mib(base_bytes),
    ));
    md.push_str(&format!("Machine: {}.\n", machine_summary()));
    md.push_str(&format!(
        "Load average (1, 5, 15 min) before the timed runs: {load_before}; after: {}.\n",
        load_average()
    ));
    md.push_str(&format!(
        "Peak RSS floor: `true` as a direct child {:.1} MiB{}.\n",
        kib_to_mib(floor_direct.rss_kib),
        match &floor_runuser {
            Some(r) => format!(
                ", `/bin/true` under runuser + GNU time {:.1} MiB",
                kib_to_mib(r.rss_kib)
            ),
            None => String::new(),
        }
    ));
    md.push_str(&format!(
        "Each configuration ran {rounds} times, in turn (round robin). seconds = median \
         wall time, range = fastest–slowest; MiB/s = pg_database_size / median; CPU and \
         machine busy are those of the median run; peak RSS is the largest of any run. \
         ratio = output / pg_database_size; \
         on disk = allocated blocks; CPU = user + system time of the client process \
         tree (server-side compression runs in the server and is not counted); \
         machine busy = share of all cores' time spent busy during the row (from \
         /proc/stat: the command, the server working for it, and any other work on \
         the machine). Peak RSS: {}.\n\n",
        runner.rss_method()
    ));
    md.push_str("### Backup\n\n");
    md.push_str(&results.table(Kind::Backup, db_bytes));
    md.push_str("\n### Restore\n\n");
    md.push_str(&results.table(Kind::Restore, db_bytes));
    md.push_str("\n### Full and incremental backups, 1% of rows updated in between\n\n");
    md.push_str(&results.table(Kind::Incremental, db_bytes));
    md.push_str("\n### Full and delta restores, to the incremental\n\n");
    md.push_str(&results.table(Kind::Delta, db_bytes));
    md.push_str(&format!(
        "\n### A data directory with {many} more files of 100 bytes (`WALVAULT_BENCH_ONLY=many-files`)\n\n"
    ));
    md.push_str(&results.table(Kind::Many, db_bytes));
    md.push_str(
        "\n### Full backups and restores, plain and encrypted (`WALVAULT_BENCH_ONLY=encryption`)\n\n",
    );
    md.push_str(&results.table(Kind::Encryption, db_bytes));
    for (label, why) in &failed {
        md.push_str(&format!("\nLeft out, failed: {label}: {why}\n"));
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(md.as_bytes()).expect("write results");
    stdout.flush().expect("flush results");

    cluster.stop();
    drop(cluster);
    if std::env::var("WALVAULT_BENCH_KEEP").is_ok_and(|v| v == "1") {
        eprintln!("kept {}", tmp.keep().display());
    }
}

// ---------------------------------------------------------------------------
// Processes

/// Where cargo put a walvault binary: `CARGO_BIN_EXE_<name>` when cargo set
/// it for this bench, else beside the bench's profile directory
/// (`<target>/release/deps/backup_throughput-…` → `<target>/release/<name>`).
fn locate_binary(name: &str, from_cargo: Option<&str>) -> PathBuf {
    if let Some(p) = from_cargo.map(PathBuf::from).filter(|p| p.is_file()) {
        return p;
    }
    let exe = std::env::current_exe().expect("path of the bench executable");
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found beside {}; build it with `cargo build --release --bins`",
                exe.display()
            )
        })
}

/// `walvault --repo REPO restore --pgdata TARGET --backup LABEL EXTRA…`.
fn walvault_restore(
    binary: &Path,
    repo: &Path,
    target: &Path,
    label: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = walvault_command(binary);
    cmd.arg("--repo")
        .arg(repo)
        .arg("restore")
        .arg("--pgdata")
        .arg(target)
        .arg("--backup")
        .arg(label)
        .args(extra);
    cmd
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn walvault_command(binary: &Path) -> Command {
    let mut cmd = Command::new(binary);
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// How to run PostgreSQL's programs: as postgres (via runuser) when root.
struct Runner {
    root: PathBuf,
    pg_bin: PathBuf,
    /// uid and gid of postgres when this process is root.
    postgres: Option<(u32, u32)>,
    gnu_time: bool,
}

impl Runner {
    fn new(root: &Path, pg_bin: &Path) -> Runner {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
        let postgres = is_root.then(|| {
            let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
            passwd
                .lines()
                .find_map(|line| {
                    let f: Vec<&str> = line.split(':').collect();
                    (f.len() > 3 && f[0] == "postgres")
                        .then(|| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
                })
                .expect("running as root needs a postgres user to run PostgreSQL as")
        });
        let gnu_time = Path::new(GNU_TIME).is_file();
        if postgres.is_some() && !gnu_time {
            eprintln!(
                "{GNU_TIME} not found (apt-get install time): peak RSS of PostgreSQL's \
                 programs will be that of the whole runuser tree"
            );
        }
        Runner {
            root: root.to_path_buf(),
            pg_bin: pg_bin.to_path_buf(),
            postgres,
            gnu_time,
        }
    }

    /// Whether peak RSS of commands run as postgres comes from GNU time.
    fn time_available(&self) -> bool {
        self.postgres.is_some() && self.gnu_time
    }

    fn rss_method(&self) -> &'static str {
        match (self.postgres.is_some(), self.gnu_time) {
            (false, _) => "ru_maxrss from wait4 on each command (the largest process of its tree)",
            (true, true) => {
                "ru_maxrss from wait4 on walvault and tar (the largest process of the tree); \
                 pg_basebackup runs as postgres under runuser and its figure is GNU time's %M \
                 for pg_basebackup itself"
            }
            (true, false) => {
                "ru_maxrss from wait4; pg_basebackup runs under runuser and its figure (≤) \
                 is the largest process of the runuser tree"
            }
        }
    }

    fn give_to_postgres(&self, path: &Path) {
        if let Some((uid, gid)) = self.postgres {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    /// A PostgreSQL program, not measured.
    fn pg(&self, program: &str) -> Command {
        let path = self.pg_bin.join(program);
        if self.postgres.is_some() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    /// `program` as postgres, wrapped in GNU time when root so that its own
    /// peak RSS can be read from the returned file afterwards.
    fn as_postgres(&self, program: &Path) -> (Command, Option<PathBuf>) {
        if self.postgres.is_none() {
            return (Command::new(program), None);
        }
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]);
        if self.gnu_time {
            let file = self.root.join("time.out");
            let _ = fs::remove_file(&file);
            cmd.arg(GNU_TIME).arg("-o").arg(&file).args(["-f", "%M"]);
            cmd.arg(program);
            (cmd, Some(file))
        } else {
            cmd.arg(program);
            (cmd, None)
        }
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

/// One measured command.
struct Run {
    wall: Duration,
    /// User + system time of the child and the descendants it waited for.
    cpu: Duration,
    rss_kib: u64,
    /// Whether `rss_kib` is the whole tree's (an upper bound for the program).
    rss_tree_bound: bool,
    /// How busy all cores were during the run, 0 to 1: this command, the
    /// server working for it, and anything else on the machine.
    machine_busy: Option<f64>,
}

/// Spawns `cmd` (stdout and stderr to `log`), reaps it with `wait4` and
/// returns the wall time from spawn to exit, its status and its rusage.
fn spawn_and_reap(cmd: &mut Command, log: &Path) -> (Duration, ExitStatus, libc::rusage) {
    let out = File::create(log).expect("create command log");
    let err = out.try_clone().expect("clone command log");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // A pre_exec hook makes std fork + exec instead of posix_spawn (whose
    // child shares this process's memory until exec and inherits its peak
    // RSS in ru_maxrss). A forked child starts from this process's current
    // RSS, which stays small: nothing here holds a file in memory.
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
        // SAFETY: `pid` is our child and not yet reaped (std's Child reaps
        // only in wait/try_wait, never called here); the pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            panic!("wait4({pid}): {e}");
        }
    }
    let wall = started.elapsed();
    drop(child);
    (wall, ExitStatus::from_raw(status), usage)
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

// ---------------------------------------------------------------------------
// The cluster

/// A throwaway cluster in `<root>/data`, on a socket in `<root>`; stopped
/// (immediately) when dropped if still running.
struct Cluster<'a> {
    runner: &'a Runner,
    data: PathBuf,
    running: bool,
}

impl<'a> Cluster<'a> {
    fn new(runner: &'a Runner) -> Cluster<'a> {
        Cluster {
            runner,
            data: runner.root.join("data"),
            running: false,
        }
    }

    fn client(&self, program: &str) -> Command {
        let mut cmd = self.runner.pg(program);
        cmd.arg("-h")
            .arg(&self.runner.root)
            .arg("-p")
            .arg(PORT.to_string())
            .args(["-U", "postgres"]);
        cmd
    }

    fn psql(&self, sql: &str) -> String {
        let mut cmd = self.client("psql");
        cmd.args([
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

    fn pgbench_init(&self, scale: u32) {
        let mut cmd = self.client("pgbench");
        cmd.args(["-i", "-q", "-s", &scale.to_string(), "postgres"]);
        run_ok(&mut cmd);
    }

    fn init_and_start(&mut self, push: &Path, repo: &Path) {
        eprintln!("initdb {}", self.data.display());
        run_ok(
            self.runner
                .pg("initdb")
                .args(["--no-sync", "-A", "trust", "-U", "postgres", "-D"])
                .arg(&self.data),
        );
        let conf = format!(
            "\n# walvault backup benchmark\n\
             listen_addresses = ''\n\
             port = {PORT}\n\
             unix_socket_directories = '{root}'\n\
             wal_level = replica\n\
             archive_mode = on\n\
             archive_command = '{push} --repo {repo} %p'\n\
             fsync = off\n",
            root = self.runner.root.display(),
            push = push.display(),
            repo = repo.display(),
        );
        fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("configure postgresql.conf");
        // The repository is created once, bound to this cluster.
        run_ok(
            Command::new(push.with_file_name("walvault"))
                .arg("--repo")
                .arg(repo)
                .args(["init", "--pgdata"])
                .arg(&self.data),
        );
        self.running = true;
        run_ok(
            self.runner
                .pg("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.runner.root.join("server.log"))
                .args(["-w", "start"]),
        );
    }

    /// Waits until the archiver has nothing left to archive, so that no row
    /// shares the machine with a backlog of walvault-push calls.
    fn wait_for_archiver(&self) {
        let status_dir = self.data.join("pg_wal").join("archive_status");
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut said = false;
        loop {
            let ready = fs::read_dir(&status_dir)
                .expect("read archive_status")
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                .count();
            if ready == 0 {
                return;
            }
            if !said {
                eprintln!("waiting for the archiver ({ready} files to go)");
                said = true;
            }
            let failed = self.psql("SELECT failed_count FROM pg_stat_archiver");
            assert!(
                failed == "0",
                "archive_command failed {failed} times; see {}",
                self.runner.root.join("server.log").display()
            );
            assert!(
                Instant::now() < deadline,
                "the archiver still has {ready} files after 900 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn stop(&mut self) {
        if self.running {
            run_ok(
                self.runner
                    .pg("pg_ctl")
                    .arg("-D")
                    .arg(&self.data)
                    .args(["-m", "fast", "-w", "stop"]),
            );
            self.running = false;
        }
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .runner
                .pg("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------
// Measuring

struct Bench<'a> {
    runner: &'a Runner,
    cluster: &'a Cluster<'a>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Backup,
    Restore,
    /// Full and incremental backups after 1% of rows changed.
    Incremental,
    /// Full and delta restores after 1% of rows changed.
    Delta,
    /// A data directory with many small files.
    Many,
    /// Plain and encrypted full backups and restores.
    Encryption,
}

/// Every run of one configuration.
struct Samples {
    kind: Kind,
    label: String,
    runs: Vec<Run>,
    /// What the last run wrote.
    output: Size,
}

/// All configurations, in the order they first ran.
#[derive(Default)]
struct Results {
    all: Vec<Samples>,
}

impl Results {
    fn record(&mut self, kind: Kind, label: &str, run: Run, output: Size) {
        match self.all.iter_mut().find(|s| s.label == label) {
            Some(s) => {
                s.runs.push(run);
                s.output = output;
            }
            None => self.all.push(Samples {
                kind,
                label: label.to_string(),
                runs: vec![run],
                output,
            }),
        }
    }

    /// Median wall time (and its run's CPU and machine load), the range of
    /// wall times, and the largest peak RSS of any run.
    fn table(&self, kind: Kind, db_bytes: u64) -> String {
        let mut s = String::from(
            "| tool / configuration | seconds (median) | range | MiB/s of database | output MiB | output / database | on disk MiB | peak RSS MiB | CPU s | machine busy |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for sample in self.all.iter().filter(|s| s.kind == kind) {
            let mut order: Vec<&Run> = sample.runs.iter().collect();
            order.sort_by_key(|r| r.wall);
            let median = order[(order.len() - 1) / 2];
            let (fastest, slowest) = (order[0].wall, order[order.len() - 1].wall);
            let peak = sample.runs.iter().map(|r| r.rss_kib).max().unwrap_or(0);
            let bound = sample.runs.iter().any(|r| r.rss_tree_bound);
            let secs = median.wall.as_secs_f64();
            s.push_str(&format!(
                "| {} | {:.1} | {:.1}–{:.1} | {:.0} | {:.0} | {:.3} | {:.0} | {}{:.1} | {:.1} | {} |\n",
                sample.label,
                secs,
                fastest.as_secs_f64(),
                slowest.as_secs_f64(),
                mib(db_bytes) / secs,
                mib(sample.output.bytes),
                sample.output.bytes as f64 / db_bytes as f64,
                mib(sample.output.disk_bytes),
                if bound { "≤ " } else { "" },
                kib_to_mib(peak),
                median.cpu.as_secs_f64(),
                median
                    .machine_busy
                    .map_or_else(|| "—".to_string(), |b| format!("{:.0}%", b * 100.0)),
            ));
        }
        s
    }
}

impl Bench<'_> {
    fn measure(&self, label: &str, cmd: &mut Command, rss_file: Option<&Path>) -> Run {
        self.try_measure(label, cmd, rss_file)
            .unwrap_or_else(|why| panic!("{label}: {why}"))
    }

    /// Runs one measured command: first flushes dirty pages (so one row's
    /// writeback does not slow the next) and lets the archiver catch up.
    fn try_measure(
        &self,
        label: &str,
        cmd: &mut Command,
        rss_file: Option<&Path>,
    ) -> Result<Run, String> {
        self.cluster.wait_for_archiver();
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        eprintln!("running: {label}");
        let log = self.runner.root.join("command.log");
        let busy_before = cpu_jiffies();
        let (wall, status, usage) = spawn_and_reap(cmd, &log);
        let machine_busy = busy_fraction(busy_before, cpu_jiffies(), wall);
        let output = fs::read_to_string(&log).unwrap_or_default();
        if !status.success() {
            return Err(format!("{cmd:?} failed ({status}):\n{}", output.trim_end()));
        }
        for line in output.lines().filter(|l| !l.trim().is_empty()) {
            eprintln!("  | {line}");
        }
        let tree_kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
        let (rss_kib, rss_tree_bound) = match rss_file {
            Some(file) => {
                let text = fs::read_to_string(file)
                    .map_err(|e| format!("read {}: {e}", file.display()))?;
                let own = text
                    .lines()
                    .rev()
                    .find_map(|l| l.trim().parse::<u64>().ok())
                    .ok_or_else(|| format!("no %M in {}: {text:?}", file.display()))?;
                (own, false)
            }
            None => (tree_kib, self.runner.postgres.is_some() && is_runuser(cmd)),
        };
        let run = Run {
            wall,
            cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
            rss_kib,
            rss_tree_bound,
            machine_busy,
        };
        eprintln!(
            "  {:.2} s, CPU {:.2} s (user {:.2}, system {:.2}), machine busy {}, \
             peak RSS {:.1} MiB (wait4 tree {:.1} MiB)",
            wall.as_secs_f64(),
            run.cpu.as_secs_f64(),
            timeval(usage.ru_utime).as_secs_f64(),
            timeval(usage.ru_stime).as_secs_f64(),
            run.machine_busy
                .map_or_else(|| "?".to_string(), |b| format!("{:.0}%", b * 100.0)),
            kib_to_mib(rss_kib),
            kib_to_mib(tree_kib)
        );
        Ok(run)
    }
}

fn is_runuser(cmd: &Command) -> bool {
    cmd.get_program() == "runuser"
}

// ---------------------------------------------------------------------------
// pgBackRest, the peer

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// pgBackRest with its own repository, config, locks and logs under
/// `<root>/pgbr-*`, backing up the benchmark's cluster at the same zstd
/// level as walvault and with as many processes as cores.
struct PgBackRest {
    config: PathBuf,
    repo: PathBuf,
}

impl PgBackRest {
    const STANZA: &'static str = "bench";

    fn new(root: &Path, data: &Path) -> PgBackRest {
        let config = root.join("pgbackrest.conf");
        let repo = root.join("pgbr-repo");
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let text = format!(
            "[global]\n\
             repo1-path={repo}\n\
             repo1-retention-full=99\n\
             lock-path={root}/pgbr-lock\n\
             log-path={root}/pgbr-log\n\
             log-level-console=warn\n\
             log-level-stderr=warn\n\
             log-level-file=off\n\
             compress-type=zst\n\
             compress-level=3\n\
             process-max={cores}\n\
             archive-check=n\n\
             start-fast=y\n\
             \n\
             [{stanza}]\n\
             pg1-path={data}\n\
             pg1-socket-path={root}\n\
             pg1-port={PORT}\n\
             pg1-user=postgres\n",
            repo = repo.display(),
            root = root.display(),
            data = data.display(),
            stanza = Self::STANZA,
        );
        fs::write(&config, text).expect("write pgbackrest.conf");
        fs::create_dir_all(&repo).expect("create pgbackrest repository");
        PgBackRest { config, repo }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("pgbackrest");
        cmd.arg(format!("--config={}", self.config.display()))
            .arg(format!("--stanza={}", Self::STANZA))
            .stdout(Stdio::null());
        cmd
    }

    fn stanza_create(&self) {
        run_ok(self.command().arg("stanza-create"));
    }

    fn sets(&self) -> Vec<String> {
        let dir = self.repo.join("backup").join(Self::STANZA);
        let mut sets: Vec<String> = fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.len() >= 16 && n.as_bytes()[8] == b'-')
                    .collect()
            })
            .unwrap_or_default();
        sets.sort();
        sets
    }

    /// The label of the newest backup set (`YYYYMMDD-HHMMSSF`, with
    /// `_YYYYMMDD-HHMMSSI` for an incremental: sorted by their start).
    fn newest_set(&self) -> String {
        let mut sets = self.sets();
        sets.sort_by(|a, b| a.rsplit('_').next().cmp(&b.rsplit('_').next()));
        sets.pop().expect("a pgbackrest backup set")
    }

    fn newest_set_size(&self) -> Size {
        tree_size(
            &self
                .repo
                .join("backup")
                .join(Self::STANZA)
                .join(self.newest_set()),
        )
    }
}

// ---------------------------------------------------------------------------
// Files

#[derive(Clone, Copy, Default)]
struct Size {
    /// Sum of file lengths.
    bytes: u64,
    /// Allocated blocks.
    disk_bytes: u64,
}

/// Sizes of the files under `dir`, not following symbolic links.
fn tree_size(dir: &Path) -> Size {
    let mut size = Size::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display()));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue; // gone meanwhile (a temporary file of the server)
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                size.bytes += meta.len();
                size.disk_bytes += meta.blocks() * 512;
            }
        }
    }
    size
}

/// Reads every file under `dir` through a small buffer.
fn read_tree(dir: &Path) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                if let Ok(mut f) = File::open(&path) {
                    while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
        }
    }
}

fn remove_tree(dir: &Path) {
    fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
}

/// The labels of the backups in a local repository.
fn backup_labels(repo: &Path) -> Vec<String> {
    match fs::read_dir(repo.join("backup")) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A sanity check of a restored data directory: it has a control file and
/// about as many bytes as the data directory outside pg_wal.
fn check_restored(label: &str, dir: &Path, base_bytes: u64) {
    assert!(
        dir.join("global").join("pg_control").is_file(),
        "{label}: no global/pg_control in {}",
        dir.display()
    );
    let restored = tree_size(dir).bytes;
    let ratio = restored as f64 / base_bytes as f64;
    assert!(
        (0.9..1.1).contains(&ratio),
        "{label}: restored {restored} bytes, the source has {base_bytes} outside pg_wal"
    );
    eprintln!(
        "  restored {:.0} MiB ({:.3} of the source outside pg_wal)",
        mib(restored),
        ratio
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
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
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(String::new, |kib| {
            format!(", {:.0} GiB RAM", kib as f64 / (1024.0 * 1024.0))
        });
    format!("{cores} cores ({cpu}){mem}, {os}")
}

/// Busy and total clock ticks of all cores so far (the `cpu` line of /proc/stat).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user and nice).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn busy_fraction(
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
    wall: Duration,
) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    // Runs shorter than a few ticks say nothing.
    (wall >= Duration::from_millis(200) && t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews
/// the timings.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_string())
}
