//! `WALVAULT_BENCH_ONLY=sustained`: a sustained write load on a real
//! PostgreSQL 15 cluster archiving into a repository on S3 (s3s-fs) behind
//! a link that adds latency to every request, once with synchronous
//! `walvault-push` and once with asynchronous archiving. Every second it
//! records the archive backlog (segments marked `.ready` in
//! `pg_wal/archive_status`), the size of `pg_wal` and the WAL written; the
//! result is a table and a text plot of the backlog over time.
//!
//! Environment:
//! - `WALVAULT_BENCH_SUSTAINED_SECS`: how long the load runs (default 60)
//! - `WALVAULT_BENCH_SUSTAINED_TPS`: pgbench transactions per second, each
//!   inserting 1,000 rows of 64 characters (default 250, about 30 MiB of
//!   WAL a second)
//! - `WALVAULT_BENCH_S3_DELAY_MS`: latency added to every S3 request
//!   (default 150: an S3 region on another continent)
//! - `WALVAULT_BENCH_ASYNC_JOBS`: `archive_jobs` of the asynchronous run
//!   (default 4)

use super::s3::{start_delay_relay, start_s3, ACCESS_KEY, BUCKET, SECRET_KEY};
use super::*;

/// One second's observation.
struct Sample {
    secs: f64,
    /// Segments marked `.ready` (waiting to be archived).
    ready: usize,
    pg_wal_bytes: u64,
    /// WAL written since the load started.
    written: u64,
}

struct ModeResult {
    name: String,
    samples: Vec<Sample>,
    /// When the load stopped, from its start.
    load_secs: f64,
    /// From the end of the load until nothing was left to archive.
    drain_secs: f64,
    failures: u64,
    /// pgbench transactions done.
    transactions: u64,
}

fn ready_count(data: &Path) -> usize {
    fs::read_dir(data.join("pg_wal/archive_status"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                .count()
        })
        .unwrap_or(0)
}

fn pg_wal_bytes(data: &Path) -> u64 {
    fs::read_dir(data.join("pg_wal"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn wal_position(cluster: &Cluster) -> u64 {
    cluster
        .psql("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .parse()
        .expect("WAL position")
}

#[allow(clippy::too_many_arguments)]
fn run_mode(
    name: &str,
    dir: &Path,
    pg_bin: &Path,
    bin_dir: &Path,
    endpoint: &str,
    extra: &str,
    secs: u64,
    tps: u64,
) -> ModeResult {
    fs::create_dir_all(dir).expect("create mode directory");
    let mut cluster = Cluster::new(pg_bin, dir);
    let prefix = dir.file_name().unwrap().to_string_lossy().into_owned();
    let config = dir.join("walvault.toml");
    fs::write(
        &config,
        format!(
            "repo = \"s3://{BUCKET}/{prefix}\"\n\
             s3_endpoint = \"{endpoint}\"\n\
             s3_path_style = true\n\
             s3_region = \"us-east-1\"\n\
             s3_access_key_id = \"{ACCESS_KEY}\"\n\
             s3_secret_access_key = \"{SECRET_KEY}\"\n\
             {extra}"
        ),
    )
    .expect("write walvault.toml");
    give_to_postgres(&config);
    let spool = dir.join("spool");
    fs::create_dir_all(&spool).expect("create spool");
    give_to_postgres(&spool);
    let push = bin_dir.join("walvault-push");
    cluster.init_and_start_with(&format!(
        "archive_command = '{} --config {} %p'\n\
         max_wal_size = 1GB\n\
         checkpoint_timeout = 30s\n",
        push.display(),
        config.display()
    ));
    run_ok(
        walvault_command(&bin_dir.join("walvault"))
            .arg("--config")
            .arg(&config)
            .args(["init", "--pgdata"])
            .arg(&cluster.data),
    );
    cluster.psql("CREATE TABLE load(id bigserial, t text)");
    let script = dir.join("insert.sql");
    fs::write(
        &script,
        "INSERT INTO load(t) SELECT md5(random()::text) || md5(random()::text) FROM generate_series(1, 1000);\n",
    )
    .expect("write pgbench script");
    give_to_postgres(&script);
    let start_pos = wal_position(&cluster);
    eprintln!("{name}: pgbench -R {tps} -T {secs}");
    let mut pgbench = cluster.command("pgbench");
    cluster.connect_args(&mut pgbench);
    let mut load = pgbench
        .args(["-n", "-c", "2", "-j", "2", "-R", &tps.to_string()])
        .args(["-T", &secs.to_string(), "-f"])
        .arg(&script)
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbench");
    let started = Instant::now();
    let mut samples = Vec::new();
    let sample = |cluster: &Cluster, samples: &mut Vec<Sample>| {
        samples.push(Sample {
            secs: started.elapsed().as_secs_f64(),
            ready: ready_count(&cluster.data),
            pg_wal_bytes: pg_wal_bytes(&cluster.data),
            written: wal_position(cluster).saturating_sub(start_pos),
        });
    };
    let mut next = started;
    loop {
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        sample(&cluster, &mut samples);
        if load.try_wait().expect("poll pgbench").is_some() {
            break;
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    // Everything written so far is archived before the drain ends.
    let last = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        sample(&cluster, &mut samples);
        let archived = cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if archived.len() == 24 && archived >= last && ready_count(&cluster.data) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: archiving did not catch up in 900 s"
        );
    }
    let drain_secs = started.elapsed().as_secs_f64() - load_secs;
    let failures = cluster
        .psql("SELECT failed_count FROM pg_stat_archiver")
        .parse()
        .unwrap_or(0);
    let transactions = cluster
        .psql("SELECT count(*) / 1000 FROM load")
        .parse()
        .unwrap_or(0);
    cluster.stop();
    ModeResult {
        transactions,
        name: name.to_string(),
        samples,
        load_secs,
        drain_secs,
        failures,
    }
}

/// Runs both modes and returns the Markdown section.
pub fn run(root: &Path, pg_bin: &Path, push_bin: &Path, walvault_bin: &Path) -> String {
    let secs = positive_env("WALVAULT_BENCH_SUSTAINED_SECS").unwrap_or(60) as u64;
    let tps = positive_env("WALVAULT_BENCH_SUSTAINED_TPS").unwrap_or(250) as u64;
    let delay_ms = std::env::var("WALVAULT_BENCH_S3_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(150);
    let jobs = positive_env("WALVAULT_BENCH_ASYNC_JOBS").unwrap_or(4);
    give_to_postgres(root);
    // The binaries where the postgres user can run them.
    let bin_dir = root.join("bin");
    fs::create_dir_all(&bin_dir).expect("create bin directory");
    for (bin, name) in [(push_bin, "walvault-push"), (walvault_bin, "walvault")] {
        fs::copy(bin, bin_dir.join(name)).expect("copy binary");
    }
    give_to_postgres(&bin_dir);
    let s3 = start_s3(root);
    let relay = start_delay_relay(s3.port, Duration::from_millis(delay_ms));
    let endpoint = format!("http://127.0.0.1:{relay}");
    let load_before = load_average();
    let modes = [
        ("synchronous walvault-push".to_string(), String::new()),
        (
            format!("asynchronous, {jobs} jobs"),
            format!(
                "archive_async = true\narchive_jobs = {jobs}\nspool_path = \"{}\"\n",
                root.join("mode-1/spool").display()
            ),
        ),
    ];
    let results: Vec<ModeResult> = modes
        .iter()
        .enumerate()
        .map(|(i, (name, extra))| {
            run_mode(
                name,
                &root.join(format!("mode-{i}")),
                pg_bin,
                &bin_dir,
                &endpoint,
                extra,
                secs,
                tps,
            )
        })
        .collect();
    let load_after = load_average();
    drop(s3);
    report(&results, secs, tps, delay_ms, &load_before, &load_after)
}

fn report(
    results: &[ModeResult],
    secs: u64,
    tps: u64,
    delay_ms: u64,
    load_before: &str,
    load_after: &str,
) -> String {
    let mut out = format!(
        "\n### Sustained write load, S3 with {delay_ms} ms added to every request (`WALVAULT_BENCH_ONLY=sustained`)\n\n\
         pgbench -c 2 -R {tps} -T {secs}, each transaction inserting 1,000 rows of 64 \
         characters; PostgreSQL 15, archive_command = walvault-push into s3s-fs \
         behind a relay adding {delay_ms} ms to each request. Backlog = segments \
         marked `.ready` in `pg_wal/archive_status`, sampled every second.\n\
         {}\nLoad average (1, 5, 15 min) before: {load_before}; after: {load_after}.\n\n\
         | archiving | transactions/s | WAL written MiB | MiB/s written | peak backlog (segments) | backlog when the load stopped | peak pg_wal MiB | archived all after the load (s) | archive_command failures |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        machine_summary()
    );
    for r in results {
        let during: Vec<&Sample> = r
            .samples
            .iter()
            .filter(|s| s.secs <= r.load_secs + 0.5)
            .collect();
        let written = during.last().map_or(0, |s| s.written);
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.1} | {} | {} | {:.0} | {:.1} | {} |\n",
            r.name,
            r.transactions as f64 / r.load_secs,
            mib(written),
            mib(written) / r.load_secs,
            r.samples.iter().map(|s| s.ready).max().unwrap_or(0),
            during.last().map_or(0, |s| s.ready),
            mib(r.samples.iter().map(|s| s.pg_wal_bytes).max().unwrap_or(0)),
            r.drain_secs,
            r.failures
        ));
    }
    out.push_str(&plot(results));
    out
}

/// The backlog of each mode over time, side by side, one line per few
/// seconds, as text.
fn plot(results: &[ModeResult]) -> String {
    const WIDTH: usize = 30;
    let peak = results
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.ready))
        .max()
        .unwrap_or(0)
        .max(1);
    let longest = results.iter().map(|r| r.samples.len()).max().unwrap_or(0);
    let step = longest.div_ceil(40).max(1);
    let mut out = format!(
        "\nBacklog over time (segments waiting; one `#` = {:.1} segments; `|` marks the end of the load):\n\n```\n  time  ",
        peak as f64 / WIDTH as f64
    );
    for r in results {
        out.push_str(&format!("{:<w$}", r.name, w = WIDTH + 6));
    }
    out.push('\n');
    for i in (0..longest).step_by(step) {
        let secs = results
            .iter()
            .find_map(|r| r.samples.get(i))
            .map_or(0.0, |s| s.secs);
        out.push_str(&format!("{secs:5.0}s  "));
        for r in results {
            let cell = match r.samples.get(i) {
                Some(s) => {
                    let bar = (s.ready * WIDTH).div_ceil(peak);
                    let end = if s.secs <= r.load_secs + 0.5
                        && s.secs + step as f64 > r.load_secs + 0.5
                    {
                        "|"
                    } else {
                        ""
                    };
                    format!("{}{end} {}", "#".repeat(bar), s.ready)
                }
                None => "(done)".to_string(),
            };
            out.push_str(&format!("{cell:<w$}", w = WIDTH + 6));
        }
        out.push('\n');
    }
    out.push_str("```\n");
    out
}
