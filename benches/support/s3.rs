//! S3 for the benchmarks: s3s-fs serving a directory, and, for the rows
//! beside pgBackRest (whose S3 client speaks only HTTPS), stunnel in
//! front of it with a certificate from a CA made for the run, which both
//! tools verify (walvault through `SSL_CERT_FILE`, pgBackRest through
//! `repo1-storage-ca-file`). The relay of [`start_delay_relay`] adds
//! latency for the sustained-load run.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::certs;
use super::*;

pub const ACCESS_KEY: &str = "walvaultbench";
pub const SECRET_KEY: &str = "walvaultbenchsecret";
pub const BUCKET: &str = "bench";

/// A child process stopped when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// s3s-fs serving `<root>/s3` over plain HTTP.
pub struct S3 {
    _child: Child,
    pub port: u16,
    /// The served directory: objects are files under `<dir>/<bucket>/`.
    pub dir: PathBuf,
}

impl S3 {
    /// Where the objects under `prefix` lie on disk.
    pub fn prefix_dir(&self, prefix: &str) -> PathBuf {
        self.dir.join(BUCKET).join(prefix)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// Starts a server (its stderr into `log`) and waits until it answers on
/// `port`.
fn serve(cmd: &mut Command, log: &Path, port: u16) -> Child {
    let what = format!("{:?}", cmd.get_program());
    let child = cmd
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("create server log"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let child = Child(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start (see {})",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn s3s_fs() -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([Path::new(&home).join(".cargo/bin")])
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

pub fn start_s3(root: &Path) -> S3 {
    let binary =
        s3s_fs().expect("s3s-fs not found: run scripts/test once (it installs s3s-fs 0.14.1)");
    let dir = root.join("s3");
    fs::create_dir_all(dir.join(BUCKET)).expect("create bucket directory");
    let port = free_port();
    let child = serve(
        Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&dir),
        &root.join("s3s-fs.log"),
        port,
    );
    S3 {
        _child: child,
        port,
        dir,
    }
}

/// s3s-fs behind stunnel: `https://localhost:<port>`.
pub struct S3Tls {
    pub s3: S3,
    _stunnel: Child,
    pub port: u16,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
}

impl S3Tls {
    /// Starts s3s-fs and stunnel, or says what is missing.
    pub fn start(root: &Path) -> Result<S3Tls, String> {
        let stunnel =
            certs::stunnel().ok_or("stunnel is not installed (apt-get install stunnel4)")?;
        if !on_path("openssl") {
            return Err("openssl is not installed".into());
        }
        if s3s_fs().is_none() {
            return Err("s3s-fs is not installed (scripts/test installs it)".into());
        }
        let s3 = start_s3(root);
        let tls = root.join("tls");
        let made = certs::make(&tls, "walvault-bench-ca");
        let ca = made.ca.clone();
        {
            use std::os::unix::fs::PermissionsExt;
            // pgBackRest runs as postgres and reads the CA.
            fs::set_permissions(&ca, fs::Permissions::from_mode(0o644)).expect("chmod ca");
            fs::set_permissions(&tls, fs::Permissions::from_mode(0o755)).expect("chmod tls");
        }
        let port = free_port();
        let conf = certs::stunnel_conf(&tls, port, s3.port, &made);
        let child = serve(
            Command::new(stunnel).arg(&conf),
            &tls.join("stunnel.log"),
            port,
        );
        Ok(S3Tls {
            s3,
            _stunnel: child,
            port,
            ca,
        })
    }

    /// Points a walvault process at this server (the repository itself is
    /// given with `--repo s3://bench/<prefix>`).
    pub fn walvault_env(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env(
                "WALVAULT_S3_ENDPOINT",
                format!("https://localhost:{}", self.port),
            )
            .env("WALVAULT_S3_PATH_STYLE", "true")
            .env("SSL_CERT_FILE", &self.ca);
    }

    /// pgBackRest's options for a repository at `prefix` on this server
    /// (the secrets go in its environment: [`Self::pgbackrest_env`]).
    pub fn pgbackrest_args(&self, prefix: &str) -> Vec<String> {
        vec![
            "--repo1-type=s3".into(),
            format!("--repo1-s3-bucket={BUCKET}"),
            "--repo1-s3-endpoint=localhost".into(),
            format!("--repo1-storage-port={}", self.port),
            "--repo1-s3-uri-style=path".into(),
            "--repo1-s3-region=us-east-1".into(),
            format!("--repo1-storage-ca-file={}", self.ca.display()),
            format!("--repo1-path=/{prefix}"),
        ]
    }

    pub fn pgbackrest_env(&self, cmd: &mut Command) {
        cmd.env("PGBACKREST_REPO1_S3_KEY", ACCESS_KEY)
            .env("PGBACKREST_REPO1_S3_KEY_SECRET", SECRET_KEY);
    }
}

/// A TCP relay to `upstream` that holds each request back `delay` before
/// passing it on (once per request and response exchange, not per
/// packet): what a distant S3 endpoint adds. Returns its port.
pub fn start_delay_relay(upstream: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let port = listener.local_addr().expect("relay address").port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || relay(client, upstream, delay));
        }
    });
    port
}

fn relay(client: TcpStream, upstream: u16, delay: Duration) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Set when the server has answered: the client's next bytes are a new
    // request.
    let answered = Arc::new(AtomicBool::new(true));
    let (Ok(mut back_from), Ok(mut back_to)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    let flag = answered.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = back_from.read(&mut buf) {
            if n == 0 {
                break;
            }
            flag.store(true, Ordering::SeqCst);
            if back_to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = back_to.shutdown(std::net::Shutdown::Write);
    });
    let (mut from, mut to) = (client, server);
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if answered.swap(false, Ordering::SeqCst) {
            std::thread::sleep(delay);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The rows of `WALVAULT_BENCH_ONLY=s3`: push and fetch with a repository
/// on S3 over TLS, walvault beside pgBackRest, each row with its own
/// prefix (reset from a template before each round, as the local rows).
/// `walvault_bin` initializes walvault's template once, here.
pub fn configurations<'a>(
    bench: &'a Bench,
    s3: &'a S3Tls,
    bins: (&'a Path, &'a Path, &'a Path),
    pgdata: &Path,
    pgbackrest: Option<&'a PgBackRest>,
) -> Vec<Config<'a>> {
    let (walvault_bin, push_bin, fetch_bin) = bins;
    let mut init = walvault_command(walvault_bin);
    s3.walvault_env(&mut init);
    run_ok(
        init.args(["--repo", &format!("s3://{BUCKET}/wv.template")])
            .args(["init", "--pgdata"])
            .arg(pgdata),
    );
    let walvault = move |prefix: &str| {
        let mut cmd = walvault_command(push_bin);
        s3.walvault_env(&mut cmd);
        cmd.args(["--repo", &format!("s3://{BUCKET}/{prefix}")]);
        cmd
    };
    let pgbr_s3 = move |pgbr: &PgBackRest, prefix: &str| {
        let mut cmd = pgbr.command_base();
        s3.pgbackrest_env(&mut cmd);
        cmd.args(s3.pgbackrest_args(prefix));
        cmd
    };
    let wal = |seg: &Segment| seg.path.clone();
    let mut configs = vec![Config {
        label: "walvault-push (zstd 3), S3",
        kind: Kind::Push,
        dir: Some(s3.s3.prefix_dir("wv")),
        template: Some(s3.s3.prefix_dir("wv.template")),
        setup: None,
        after: None,
        teardown: None,
        make: Box::new(move |seg| {
            let mut cmd = walvault("wv");
            cmd.arg(wal(seg));
            cmd
        }),
    }];
    if let Some(pgbr) = pgbackrest {
        configs.push(Config {
            label: "pgbackrest archive-push (zst 3), S3",
            kind: Kind::Push,
            dir: Some(s3.s3.prefix_dir("pgbr")),
            template: Some(s3.s3.prefix_dir(PgBackRest::S3_TEMPLATE)),
            setup: None,
            after: None,
            teardown: None,
            make: Box::new(move |seg| {
                let mut cmd = pgbr_s3(pgbr, "pgbr");
                cmd.args(PgBackRest::ZST3).arg("archive-push").arg(wal(seg));
                cmd
            }),
        });
    }
    if let Some(async_pgdata) = &bench.async_pgdata {
        for (label, prefix, jobs) in [
            ("walvault-push async, 2 jobs, S3", "wv-async2", "2"),
            ("walvault-push async, 4 jobs, S3", "wv-async4", "4"),
        ] {
            configs.push(walvault_async_row(
                bench,
                label,
                (s3.s3.prefix_dir(prefix), s3.s3.prefix_dir("wv.template")),
                bench.root.join(format!("{prefix}-spool")),
                jobs,
                async_pgdata,
                move || walvault(prefix),
            ));
        }
        // No-op calls on S3: the foreground reads its done record and
        // never reaches S3 (nor builds an S3 client).
        configs.push(walvault_noop_push_row(
            bench,
            "walvault-push async, file already done (no-op), S3",
            (s3.s3.prefix_dir("wv-noop"), s3.s3.prefix_dir("wv.template")),
            bench.root.join("wv-noop-spool"),
            async_pgdata,
            move || walvault("wv-noop"),
        ));
        if let Some(pgbr) = pgbackrest {
            configs.push(pgbackrest_async_row(
                bench,
                "pgbackrest archive-push async (zst 3, process-max 2), S3",
                (
                    s3.s3.prefix_dir("pgbr-async"),
                    s3.s3.prefix_dir(PgBackRest::S3_TEMPLATE),
                ),
                bench.root.join("pgbr-s3-async-spool"),
                async_pgdata,
                move || pgbr_s3(pgbr, "pgbr-async"),
            ));
        }
    }

    // Restores from the first two rows' repositories, each checked byte for
    // byte against the original.
    let restore = bench.root.join("restore");
    let fetch = move |prefix: &str| {
        let mut cmd = walvault_command(fetch_bin);
        s3.walvault_env(&mut cmd);
        cmd.args(["--repo", &format!("s3://{BUCKET}/{prefix}")]);
        cmd
    };
    for (label, prefetch) in [
        ("walvault-fetch, S3", None),
        ("walvault-fetch, restore_prefetch 8, S3", Some("8")),
    ] {
        let to = restore.clone();
        let signal = restore.join("recovery.signal");
        let signal_off = signal.clone();
        let spool = restore.join("walvault_prefetch");
        configs.push(Config {
            label,
            kind: Kind::Fetch,
            dir: Some(restore.clone()),
            template: None,
            setup: Some(Box::new(move || {
                if prefetch.is_some() {
                    fs::write(&signal, "").expect("write recovery.signal");
                }
            })),
            after: None,
            teardown: Some(Box::new(move || {
                prefetch?;
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
                let mut cmd = fetch("wv");
                if let Some(n) = prefetch {
                    cmd.args(["--restore-prefetch", n]);
                }
                cmd.arg(&seg.name).arg(to.join(&seg.name)).current_dir(&to);
                cmd
            }),
        });
    }
    if let Some(pgbr) = pgbackrest {
        for (label, queue) in [
            ("pgbackrest archive-get (zst 3), S3", false),
            (
                "pgbackrest archive-get async (zst 3, queue 1 GiB), S3",
                true,
            ),
        ] {
            let to = restore.clone();
            let spool = bench.root.join("pgbr-s3-get-spool");
            let spool_setup = spool.clone();
            configs.push(Config {
                label,
                kind: Kind::Fetch,
                dir: Some(restore.clone()),
                template: None,
                setup: Some(Box::new(move || {
                    let _ = fs::remove_dir_all(&spool_setup);
                    fs::create_dir_all(&spool_setup).expect("create spool");
                })),
                after: None,
                teardown: Some(Box::new(move || {
                    if queue {
                        stop_workers(&["archive-get:async"]);
                    }
                    None
                })),
                make: Box::new(move |seg| {
                    let mut cmd = pgbr_s3(pgbr, "pgbr");
                    if queue {
                        cmd.args(["--archive-async", "--archive-get-queue-max=1GiB"])
                            .arg(format!("--spool-path={}", spool.display()));
                    }
                    cmd.arg("archive-get")
                        .arg(&seg.name)
                        .arg(to.join(&seg.name));
                    cmd
                }),
            });
        }
    }
    configs
}
