//! TLS in front of s3s-fs for the benchmarks and the integration tests: a
//! CA made for the run, a certificate for `localhost` it signs (openssl),
//! and stunnel's configuration. Both include this file (`#[path]`); it
//! needs nothing but std.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CA and the server's certificate and key, as PEM files.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes a CA named `ca_name` and a certificate for `localhost` and
/// 127.0.0.1 under `dir` (created). Panics with openssl's words if it
/// fails.
pub fn make(dir: &Path, ca_name: &str) -> Certs {
    std::fs::create_dir_all(dir).expect("create the certificates' directory");
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    let subject = format!("/CN={ca_name}");
    let steps: [&[&str]; 3] = [
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-subj", &subject, "-days", "2",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// stunnel's name on this machine (Debian's is `stunnel4`).
pub fn stunnel() -> Option<&'static str> {
    ["stunnel4", "stunnel"].into_iter().find(|p| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file()))
    })
}

/// A stunnel configuration in `dir` that accepts TLS on `port` and passes
/// it on to `upstream`, both on loopback, with `certs`.
pub fn stunnel_conf(dir: &Path, port: u16, upstream: u16, certs: &Certs) -> PathBuf {
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{upstream}\ncert = {}\nkey = {}\n",
            certs.cert.display(),
            certs.key.display()
        ),
    )
    .expect("write stunnel.conf");
    conf
}
