//! A real S3-compatible server for tests: s3s-fs serving a directory on a
//! free loopback port, path-style. Drop kills it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub const ACCESS_KEY: &str = "walvault-test";
pub const SECRET_KEY: &str = "walvault-test-secret";

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub root: PathBuf,
}

/// The s3s-fs binary: `WALVAULT_TEST_S3S_FS`, then PATH, then ~/.cargo/bin.
pub fn s3s_fs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("WALVAULT_TEST_S3S_FS") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("s3s-fs");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_string());
    let candidate = Path::new(&home).join(".cargo/bin/s3s-fs");
    assert!(
        candidate.is_file(),
        "s3s-fs not found: run scripts/test (it installs s3s-fs 0.14.1), or set WALVAULT_TEST_S3S_FS"
    );
    candidate
}

impl S3Server {
    /// Starts a server storing under `<base>/s3` with one bucket, `bucket`.
    pub fn start(base: &Path, bucket: &str) -> S3Server {
        S3Server::start_with(base, bucket, true)
    }

    /// A server that checks no signature, so a proxy may change signed
    /// headers (to play a server that ignores a header).
    pub fn start_without_auth(base: &Path, bucket: &str) -> S3Server {
        S3Server::start_with(base, bucket, false)
    }

    fn start_with(base: &Path, bucket: &str, auth: bool) -> S3Server {
        let root = base.join("s3");
        std::fs::create_dir_all(root.join(bucket)).expect("create bucket dir");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log =
                std::fs::File::create(base.join(format!("s3s-fs-{port}.log"))).expect("s3 log");
            let mut cmd = Command::new(s3s_fs_binary());
            cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
            if auth {
                cmd.args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]);
            }
            let mut child = cmd
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn s3s-fs");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!("s3s-fs exited with {status}");
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // Something answers; make sure it is our server and not
                    // another process's that took the port first (ours then
                    // exits at once with "address in use").
                    std::thread::sleep(Duration::from_millis(200));
                    if let Ok(Some(status)) = child.try_wait() {
                        last_err = format!("s3s-fs exited with {status} (port {port} taken?)");
                        break;
                    }
                    return S3Server {
                        child,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        root,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        panic!("could not start s3s-fs: {last_err}");
    }

    /// Environment for walvault processes talking to this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("WALVAULT_S3_ENDPOINT", self.endpoint.clone()),
            ("WALVAULT_S3_PATH_STYLE", "true".to_string()),
        ]
    }

    /// A walvault config file for this server and `repo`, for clusters whose
    /// archive_command cannot easily carry environment variables.
    pub fn config_toml(&self, repo: &str) -> String {
        format!(
            "repo = \"{repo}\"\ns3_endpoint = \"{}\"\ns3_path_style = true\ns3_region = \"us-east-1\"\ns3_access_key_id = \"{ACCESS_KEY}\"\ns3_secret_access_key = \"{SECRET_KEY}\"\n",
            self.endpoint
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
