//! The test harness: real PostgreSQL clusters and a real S3-compatible
//! server (s3s-fs), each in the test's own temporary directory with its own
//! socket or port, so tests run in parallel.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! harness runs PostgreSQL (and everything PostgreSQL runs, such as
//! archive_command) as the `postgres` user, and hands it the directories.
//! The walvault binaries are linked into the test directory, because the
//! build directory may sit where `postgres` cannot reach.

#![allow(dead_code)]

pub mod pg;
pub mod proxy;
pub mod s3;
pub mod tls;
pub mod wal;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use pg::PgCluster;
pub use s3::S3Server;

/// Where the PostgreSQL 15 binaries live (Debian's postgresql-15).
pub fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var("WALVAULT_TEST_PG_BIN")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
    Path::new(&dir).join(name)
}

/// Where the server programs of PostgreSQL `major` are: the npm builds
/// scripts/install-pg-majors caches (WALVAULT_PG_CACHE), or Debian's for 15.
pub fn pg_server_bin(major: u32) -> PathBuf {
    let cache =
        std::env::var("WALVAULT_PG_CACHE").unwrap_or_else(|_| "/var/cache/walvault/pg".to_string());
    let cached = Path::new(&cache).join(major.to_string()).join("bin");
    if cached.join("postgres").is_file() {
        return cached;
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if debian.join("postgres").is_file() {
        return debian;
    }
    panic!(
        "no PostgreSQL {major} server binaries in {} or {}: run scripts/install-pg-majors (scripts/test does)",
        cached.display(),
        debian.display()
    );
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of the `postgres` user, from /etc/passwd.
pub fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == "postgres" {
            return (
                fields[2].parse().expect("uid"),
                fields[3].parse().expect("gid"),
            );
        }
    }
    panic!("no postgres user: install postgresql-15 (the test setup script does)");
}

/// Hands a path (recursively) to the postgres user when running as root.
pub fn give_to_postgres(path: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = postgres_ids();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        if p.is_dir() && !p.is_symlink() {
            for entry in std::fs::read_dir(&p).expect("read dir") {
                stack.push(entry.expect("entry").path());
            }
        }
    }
}

/// A command run as the postgres user when the tests run as root.
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A test's own directory, readable by the postgres user, removed on drop.
pub struct TestDir {
    tmp: tempfile::TempDir,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("walvault-{name}-"))
            .tempdir()
            .expect("create temp dir");
        give_to_postgres(tmp.path());
        TestDir { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Creates a subdirectory owned by postgres.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).expect("create subdir");
        give_to_postgres(&p);
        p
    }

    /// Links (or copies) the walvault binaries into `<dir>/bin` and returns
    /// that directory.
    pub fn install_binaries(&self) -> PathBuf {
        let bin = self.subdir("bin");
        for (name, src) in binaries() {
            let dest = bin.join(name);
            if std::fs::hard_link(src, &dest).is_err() {
                std::fs::copy(src, &dest).expect("copy binary");
            }
        }
        bin
    }
}

pub fn binaries() -> [(&'static str, &'static str); 3] {
    [
        ("walvault", env!("CARGO_BIN_EXE_walvault")),
        ("walvault-push", env!("CARGO_BIN_EXE_walvault-push")),
        ("walvault-fetch", env!("CARGO_BIN_EXE_walvault-fetch")),
    ]
}

/// A free TCP port on the loopback interface, never the same one twice in
/// this process (tests running at once must not share a port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("find a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits for `cond`, polling, up to `secs`.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

/// A walvault binary invocation (as the current user).
pub fn walvault(name: &str) -> Command {
    let path = binaries()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .expect("known binary");
    let mut cmd = Command::new(path);
    // Keep tests independent of the machine's config and AWS setup.
    for var in [
        "WALVAULT_CONFIG",
        "WALVAULT_REPO",
        "WALVAULT_S3_ENDPOINT",
        "WALVAULT_LOG",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The outcome of a command: exit code, stdout, stderr.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Ran {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `walvault init` of the repository `repo_args` names, for the cluster
/// in `pgdata`, as the DBA runs it once before archiving starts.
pub fn init_repo(repo_args: &[String], pgdata: &Path) {
    let out = run(walvault("walvault")
        .args(repo_args)
        .arg("init")
        .arg("--pgdata")
        .arg(pgdata));
    assert_eq!(
        out.code, 0,
        "walvault init failed\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
}

/// A minimal data directory for tests of synthetic WAL: `PG_VERSION` and a
/// `global/pg_control` with the fields walvault reads, laid out as
/// PostgreSQL 15 writes them.
pub fn fake_pgdata(dir: &Path, system_identifier: u64, segment_size: u64) -> PathBuf {
    let data = dir.join("fake-pgdata");
    std::fs::create_dir_all(data.join("global")).expect("create fake pgdata");
    std::fs::write(data.join("PG_VERSION"), "15\n").expect("write PG_VERSION");
    let mut control = vec![0u8; 8192];
    control[0..8].copy_from_slice(&system_identifier.to_le_bytes());
    control[8..12].copy_from_slice(&1300u32.to_le_bytes());
    // floatFormat, blcksz, relseg_size, xlog_blcksz, xlog_seg_size.
    let at = 240;
    control[at..at + 8].copy_from_slice(&1234567.0f64.to_le_bytes());
    control[at + 8..at + 12].copy_from_slice(&8192u32.to_le_bytes());
    control[at + 12..at + 16].copy_from_slice(&131072u32.to_le_bytes());
    control[at + 16..at + 20].copy_from_slice(&8192u32.to_le_bytes());
    control[at + 20..at + 24].copy_from_slice(&(segment_size as u32).to_le_bytes());
    std::fs::write(data.join("global/pg_control"), control).expect("write pg_control");
    data
}

/// `walvault init` of a local repository for a synthetic cluster.
pub fn init_local_repo(repo: &Path, system_identifier: u64, segment_size: u64) {
    let scratch = tempfile::tempdir().expect("temp dir");
    let data = fake_pgdata(scratch.path(), system_identifier, segment_size);
    init_repo(&["--repo".to_string(), repo.display().to_string()], &data);
}
