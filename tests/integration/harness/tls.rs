//! A TLS front for the test S3 server: stunnel with a certificate for
//! `localhost` signed by a CA made for the test, so tests reach s3s-fs over
//! HTTPS. The certificates and stunnel's configuration come from the
//! benchmarks' module. Drop stops it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

#[path = "../../../benches/support/certs.rs"]
mod certs;

pub struct TlsFront {
    child: Child,
    pub port: u16,
    /// The CA (PEM) that signed the server's certificate: not in the
    /// system's store.
    pub ca: PathBuf,
}

impl TlsFront {
    /// Serves `https://localhost:<port>` in front of `upstream` (a
    /// loopback port), with its files under `<base>/tls`.
    pub fn start(base: &Path, upstream: u16) -> TlsFront {
        let dir = base.join("tls");
        let made = certs::make(&dir, "walvault-test-ca");
        let stunnel =
            certs::stunnel().expect("stunnel not found: run scripts/test (it installs stunnel4)");
        let port = free_port();
        let conf = certs::stunnel_conf(&dir, port, upstream, &made);
        let log = std::fs::File::create(dir.join("stunnel.log")).expect("stunnel log");
        let mut child = Command::new(stunnel)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn stunnel");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "stunnel exited with {status} (see {})",
                    dir.join("stunnel.log").display()
                );
            }
            assert!(Instant::now() < deadline, "stunnel did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsFront {
            child,
            port,
            ca: made.ca,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
