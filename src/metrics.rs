//! Prometheus metrics for the scheduled commands: gauges collected in a
//! [`Metrics`] set, rendered in the text exposition format 0.0.4, and
//! delivered either as a file for node_exporter's textfile collector
//! ([`write_textfile`]) or to a Pushgateway ([`push_gateway`]).
//!
//! This module owns the format and the delivery. It must not choose metric
//! names or values (the commands do), read the repository, or pull in an
//! HTTP or TLS library: the Pushgateway client is a minimal HTTP/1.1 PUT
//! over a plain TCP connection, for `http://` URLs only.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// How long a push may take, connection included.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest response head read from a Pushgateway.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Mode of the textfile: node_exporter usually runs as another user.
const TEXTFILE_MODE: u32 = 0o644;

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("cannot write metrics file {}: {source}\nHINT: the directory must exist and be writable by this user (node_exporter's --collector.textfile.directory)", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pushgateway url \"{url}\" uses https, which walvault cannot push to\nHINT: TLS to the Pushgateway is not supported yet; use a local http:// Pushgateway or --metrics-file")]
    HttpsUnsupported { url: String },
    #[error("invalid pushgateway url \"{url}\": {reason}\nHINT: expected http://host[:port][/path], e.g. http://localhost:9091")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid pushgateway job name \"{job}\": {reason}")]
    InvalidJob { job: String, reason: String },
    #[error("cannot push metrics to pushgateway {url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pushgateway {url} did not answer within {} s", .timeout.as_secs_f64())]
    Timeout { url: String, timeout: Duration },
    #[error("pushgateway {url} refused the metrics: \"{status_line}\"")]
    Status { url: String, status_line: String },
    #[error("pushgateway {url} sent an invalid response: {reason}")]
    BadResponse { url: String, reason: String },
}

/// One metric name: its help text and samples, in the order added.
#[derive(Debug, Clone, PartialEq)]
struct Family {
    name: String,
    help: String,
    samples: Vec<(Vec<(String, String)>, f64)>,
}

/// A set of gauges to expose. Families render in the order their first
/// sample was added; adding a sample with the name and labels of an existing
/// one replaces its value (Prometheus rejects duplicates).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    families: Vec<Family>,
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Adds (or replaces) a gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.gauge_with(name, help, &[], value)
    }

    /// Adds (or replaces) a gauge sample with labels. The help text of the
    /// first sample of a name is kept. An invalid metric or label name is a
    /// programming error: it panics in debug builds and is skipped in
    /// release builds.
    pub fn gauge_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Self {
        let valid = is_metric_name(name) && labels.iter().all(|(l, _)| is_label_name(l));
        debug_assert!(valid, "invalid metric {name:?} or label names {labels:?}");
        if !valid {
            return self;
        }
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(l, v)| (l.to_string(), v.to_string()))
            .collect();
        let family = match self.families.iter().position(|f| f.name == name) {
            Some(i) => &mut self.families[i],
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    samples: Vec::new(),
                });
                let last = self.families.len() - 1;
                &mut self.families[last]
            }
        };
        match family.samples.iter_mut().find(|(l, _)| *l == labels) {
            Some(sample) => sample.1 = value,
            None => family.samples.push((labels, value)),
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    /// The text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for family in &self.families {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {} gauge", family.name);
            for (labels, value) in &family.samples {
                out.push_str(&family.name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (label, text)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{label}=\"{}\"", escape_label_value(text));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(*value));
            }
        }
        out
    }
}

/// HELP text: backslash and line feed escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values: backslash, double quote and line feed escaped.
fn escape_label_value(text: &str) -> String {
    escape_help(text).replace('"', "\\\"")
}

/// Go's ParseFloat reads Rust's `Display` of finite floats (never an
/// exponent); the others have the format's own spellings.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        value.to_string()
    }
}

/// Writes `metrics` to `path` atomically, for node_exporter's textfile
/// collector: a temporary file beside it (named with a leading `.`, which
/// the collector's `*.prom` glob skips), synced, then renamed over `path`,
/// mode 0644. A reader sees the old file or the new one, never a part.
pub fn write_textfile(path: &Path, metrics: &Metrics) -> Result<(), MetricsError> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let failed = |source: std::io::Error| MetricsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let Some(file_name) = path.file_name() else {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        )));
    };
    let dir = textfile_dir(path);
    let temp = dir.join(format!(
        ".{}.{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(TEXTFILE_MODE)
            .open(&temp)?;
        // The umask may have narrowed the mode.
        file.set_permissions(std::fs::Permissions::from_mode(TEXTFILE_MODE))?;
        file.write_all(metrics.render().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&temp);
        return Err(failed(e));
    }
    // Make the rename durable; the metrics are rewritten on the next run
    // anyway, so a directory that cannot be synced is not an error.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The directory of the textfile, where its temporary file goes: `.` for
/// a bare file name.
fn textfile_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Where to send a push: from `http://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// Without brackets for IPv6, for connecting.
    host: String,
    port: u16,
    /// `host[:port]` as written, for the Host header.
    authority: String,
    /// Empty or `/...` without a trailing slash.
    prefix: String,
}

fn parse_url(url: &str) -> Result<Endpoint, MetricsError> {
    let invalid = |reason: &str| MetricsError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let scheme_end = url
        .find("://")
        .ok_or_else(|| invalid("no http:// scheme"))?;
    let scheme = &url[..scheme_end];
    if scheme.eq_ignore_ascii_case("https") {
        return Err(MetricsError::HttpsUnsupported {
            url: url.to_string(),
        });
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(invalid("only http:// is supported"));
    }
    let rest = &url[scheme_end + 3..];
    if rest.contains(['?', '#']) {
        return Err(invalid("a query or fragment is not allowed"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(invalid("user information is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| invalid("unclosed '[' in the host"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| invalid("unexpected text after ']'"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let port = match port {
        None => 80,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))?,
    };
    Ok(Endpoint {
        host: host.to_string(),
        port,
        authority: authority.to_string(),
        prefix: path.trim_end_matches('/').to_string(),
    })
}

/// Unpadded base64url (RFC 4648 section 5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// The path segment(s) naming the job: percent-encoded, or
/// `job@base64/<base64url>` when it holds a `/` (which the Pushgateway
/// would take for a separator even when encoded).
fn job_path(job: &str) -> Result<String, MetricsError> {
    if job.is_empty() {
        return Err(MetricsError::InvalidJob {
            job: job.to_string(),
            reason: "it is empty".to_string(),
        });
    }
    if job.contains('/') {
        return Ok(format!("job@base64/{}", base64url(job.as_bytes())));
    }
    let mut out = String::from("job/");
    for b in job.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Ok(out)
}

/// Replaces the metrics of `job` on the Pushgateway at `url` (HTTP PUT to
/// `<url>/metrics/job/<job>`), within [`PUSH_TIMEOUT`].
pub async fn push_gateway(url: &str, job: &str, metrics: &Metrics) -> Result<(), MetricsError> {
    push_gateway_within(url, job, metrics, PUSH_TIMEOUT).await
}

async fn push_gateway_within(
    url: &str,
    job: &str,
    metrics: &Metrics,
    timeout: Duration,
) -> Result<(), MetricsError> {
    let endpoint = parse_url(url)?;
    let path = format!("{}/metrics/{}", endpoint.prefix, job_path(job)?);
    let body = metrics.render();
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: walvault/{}\r\n\
         Content-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        endpoint.authority,
        env!("CARGO_PKG_VERSION"),
        body.len(),
    );
    let exchange = async {
        let mut stream =
            tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_RESPONSE_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<Vec<u8>, std::io::Error>(head)
    };
    let head = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => {
            return Err(MetricsError::Timeout {
                url: url.to_string(),
                timeout,
            })
        }
        Ok(Err(source)) => {
            return Err(MetricsError::Io {
                url: url.to_string(),
                source,
            })
        }
        Ok(Ok(head)) => head,
    };
    check_status_line(url, &head)
}

/// Accepts a `HTTP/1.x 2xx ...` status line.
fn check_status_line(url: &str, head: &[u8]) -> Result<(), MetricsError> {
    let bad = |reason: String| MetricsError::BadResponse {
        url: url.to_string(),
        reason,
    };
    let text = String::from_utf8_lossy(head);
    let Some((line, _)) = text.split_once("\r\n") else {
        return Err(bad(if head.is_empty() {
            "the connection closed without a response".to_string()
        } else {
            "no complete status line".to_string()
        }));
    };
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 || code.parse::<u16>().is_err() {
        return Err(bad(format!("\"{line}\" is not an HTTP status line")));
    }
    if code.starts_with('2') {
        Ok(())
    } else {
        Err(MetricsError::Status {
            url: url.to_string(),
            status_line: line.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn renders_the_verify_metrics_of_the_runbooks_exactly() {
        let mut m = Metrics::new();
        m.gauge(
            "backup_restore_verify_last_timestamp",
            "Unix time the last restore verification finished.",
            1763721129.0,
        )
        .gauge(
            "backup_restore_verify_success",
            "1 if the last restore verification succeeded, 0 if not.",
            1.0,
        )
        .gauge(
            "backup_restore_verify_duration_seconds",
            "How long the last restore verification took.",
            312.25,
        );
        assert_eq!(
            m.render(),
            "# HELP backup_restore_verify_last_timestamp Unix time the last restore \
             verification finished.\n\
             # TYPE backup_restore_verify_last_timestamp gauge\n\
             backup_restore_verify_last_timestamp 1763721129\n\
             # HELP backup_restore_verify_success 1 if the last restore verification \
             succeeded, 0 if not.\n\
             # TYPE backup_restore_verify_success gauge\n\
             backup_restore_verify_success 1\n\
             # HELP backup_restore_verify_duration_seconds How long the last restore \
             verification took.\n\
             # TYPE backup_restore_verify_duration_seconds gauge\n\
             backup_restore_verify_duration_seconds 312.25\n"
        );
    }

    #[test]
    fn labels_are_escaped_and_samples_group_under_one_header() {
        let mut m = Metrics::new();
        m.gauge_with(
            "walvault_backup_size_bytes",
            "Size of a backup.\nIn bytes, \\ stored.",
            &[("label", "a\"b\\c\nd"), ("kind", "full")],
            1.5,
        );
        m.gauge("walvault_status", "Other.", -2.0);
        m.gauge_with(
            "walvault_backup_size_bytes",
            "ignored help",
            &[("label", "x")],
            3.0,
        );
        // Same name and labels: replaced, not duplicated.
        m.gauge("walvault_status", "Other.", 0.0);
        assert_eq!(
            m.render(),
            "# HELP walvault_backup_size_bytes Size of a backup.\\nIn bytes, \\\\ stored.\n\
             # TYPE walvault_backup_size_bytes gauge\n\
             walvault_backup_size_bytes{label=\"a\\\"b\\\\c\\nd\",kind=\"full\"} 1.5\n\
             walvault_backup_size_bytes{label=\"x\"} 3\n\
             # HELP walvault_status Other.\n\
             # TYPE walvault_status gauge\n\
             walvault_status 0\n"
        );
        assert!(!m.is_empty());
        assert!(Metrics::new().is_empty());
        assert_eq!(Metrics::new().render(), "");
    }

    #[test]
    fn special_values_use_the_format_spellings() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(-0.125), "-0.125");
    }

    #[test]
    fn names_are_validated() {
        for good in ["a", "_a", ":a", "a:b_c9", "Z"] {
            assert!(is_metric_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a b", "é"] {
            assert!(!is_metric_name(bad), "{bad}");
        }
        for good in ["a", "_a", "a_9"] {
            assert!(is_label_name(good), "{good}");
        }
        for bad in ["", "9a", "a:b", "__name__", "a-b"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_invalid_name_is_a_programming_error() {
        for (name, label) in [("bad name", "ok"), ("good", "bad-label")] {
            let outcome = std::panic::catch_unwind(|| {
                let mut m = Metrics::new();
                m.gauge_with(name, "help", &[(label, "v")], 1.0);
                m.render()
            });
            if cfg!(debug_assertions) {
                assert!(outcome.is_err(), "{name} {label}");
            } else {
                assert_eq!(outcome.ok().as_deref(), Some(""));
            }
        }
    }

    fn sample() -> Metrics {
        let mut m = Metrics::new();
        m.gauge("walvault_up", "Whether it worked.", 1.0);
        m
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_textfile_is_written_atomically_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walvault.prom");
        write_textfile(&path, &sample()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), sample().render());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);

        let mut second = Metrics::new();
        second.gauge("walvault_up", "Whether it worked.", 0.0);
        write_textfile(&path, &second).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# HELP walvault_up Whether it worked.\n# TYPE walvault_up gauge\nwalvault_up 0\n"
        );
        assert_eq!(entries(dir.path()), ["walvault.prom"]);
    }

    #[test]
    fn the_temporary_file_goes_beside_the_textfile() {
        assert_eq!(textfile_dir(Path::new("walvault.prom")), Path::new("."));
        assert_eq!(textfile_dir(Path::new("a/walvault.prom")), Path::new("a"));
        assert_eq!(textfile_dir(Path::new("/walvault.prom")), Path::new("/"));
    }

    #[test]
    fn textfile_failures_name_the_path_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("walvault.prom");
        let err = write_textfile(&missing, &sample()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot write metrics file {}: ",
                missing.display()
            )),
            "{text}"
        );
        assert!(text.contains("\nHINT: the directory must exist"), "{text}");

        // The target is a directory: the rename fails after the temp file
        // was written, and the temp file is removed.
        let target = dir.path().join("taken.prom");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("x"), b"x").unwrap();
        assert!(write_textfile(&target, &sample()).is_err());
        assert_eq!(entries(dir.path()), ["taken.prom"]);

        let err = write_textfile(Path::new("/"), &sample()).unwrap_err();
        assert!(err.to_string().contains("not a file name"), "{err}");
    }

    #[test]
    fn urls_are_parsed() {
        let ok = |url: &str| parse_url(url).unwrap();
        let e = ok("http://localhost:9091");
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.authority.as_str(),
                e.prefix.as_str()
            ),
            ("localhost", 9091, "localhost:9091", "")
        );
        let e = ok("HTTP://gw.example/prefix/path/");
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("gw.example", 80, "/prefix/path")
        );
        let e = ok("http://[::1]:9091/");
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.authority.as_str(),
                e.prefix.as_str()
            ),
            ("::1", 9091, "[::1]:9091", "")
        );
        assert_eq!(ok("http://[::1]").port, 80);

        let err = parse_url("https://gw.example:9091").unwrap_err();
        assert!(matches!(err, MetricsError::HttpsUnsupported { .. }));
        assert_eq!(
            err.to_string(),
            "pushgateway url \"https://gw.example:9091\" uses https, which walvault cannot \
             push to\nHINT: TLS to the Pushgateway is not supported yet; use a local \
             http:// Pushgateway or --metrics-file"
        );
        for (url, reason) in [
            ("gw.example:9091", "no http:// scheme"),
            ("ftp://gw.example", "only http:// is supported"),
            ("http://gw/x?y=1", "a query or fragment is not allowed"),
            ("http://user:pw@gw", "user information is not supported"),
            ("http://[::1", "unclosed '[' in the host"),
            ("http://[::1]x", "unexpected text after ']'"),
            ("http://:9091", "no host"),
            ("http://", "no host"),
            ("http://gw:0", "the port is not a number from 1 to 65535"),
            ("http://gw:http", "the port is not a number from 1 to 65535"),
        ] {
            match parse_url(url) {
                Err(MetricsError::InvalidUrl { reason: r, .. }) => assert_eq!(r, reason, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let err = parse_url("http://").unwrap_err().to_string();
        assert!(
            err.contains("\nHINT: expected http://host[:port][/path]"),
            "{err}"
        );
    }

    #[test]
    fn job_names_are_encoded_for_the_path() {
        assert_eq!(job_path("walvault_backup").unwrap(), "job/walvault_backup");
        assert_eq!(job_path("a b:c").unwrap(), "job/a%20b%3Ac");
        assert_eq!(job_path("a/b").unwrap(), "job@base64/YS9i");
        assert!(matches!(job_path(""), Err(MetricsError::InvalidJob { .. })));
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    /// A one-shot HTTP server: reads one request (head and body by
    /// Content-Length), answers `response`, returns the request.
    async fn serve_once(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= len {
                        break;
                    }
                }
            }
            // The client may hang up first (an endless response head).
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
            String::from_utf8(request).unwrap()
        });
        (url, handle)
    }

    #[tokio::test]
    async fn pushes_with_put_to_the_job_path() {
        let (url, server) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let metrics = sample();
        push_gateway(&format!("{url}/gw/"), "walvault_verify", &metrics)
            .await
            .unwrap();
        let request = server.await.unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        assert_eq!(
            lines.next(),
            Some("PUT /gw/metrics/job/walvault_verify HTTP/1.1")
        );
        let headers: Vec<&str> = lines.collect();
        assert!(headers.contains(&"Content-Type: text/plain; version=0.0.4"));
        assert!(headers.contains(&format!("Host: {}", &url["http://".len()..]).as_str()));
        assert!(headers.contains(&format!("Content-Length: {}", body.len()).as_str()));
        assert_eq!(body, metrics.render());
    }

    #[tokio::test]
    async fn a_refusal_names_the_status_line() {
        let (url, server) =
            serve_once("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops\n")
                .await;
        let err = push_gateway(&url, "walvault", &sample()).await.unwrap_err();
        server.await.unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "pushgateway {url} refused the metrics: \"HTTP/1.1 500 Internal Server Error\""
            )
        );
        // An older Pushgateway answers 202 Accepted.
        let (url, server) = serve_once("HTTP/1.0 202 Accepted\r\n\r\n").await;
        push_gateway(&url, "walvault", &sample()).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_and_silence_are_errors() {
        let (url, server) = serve_once("SSH-2.0-OpenSSH\r\n").await;
        let err = push_gateway(&url, "walvault", &sample()).await.unwrap_err();
        server.await.unwrap();
        assert!(
            err.to_string().ends_with(
                "sent an invalid response: \"SSH-2.0-OpenSSH\" is not an HTTP status line"
            ),
            "{err}"
        );

        let (url, server) = serve_once("").await;
        let err = push_gateway(&url, "walvault", &sample()).await.unwrap_err();
        server.await.unwrap();
        assert!(
            err.to_string()
                .ends_with("the connection closed without a response"),
            "{err}"
        );

        let (url, server) = serve_once("HTTP/1.1 200").await;
        let err = push_gateway(&url, "walvault", &sample()).await.unwrap_err();
        server.await.unwrap();
        assert!(
            err.to_string().ends_with("no complete status line"),
            "{err}"
        );

        // A response head without an end is not read forever.
        let endless: &'static str = Box::leak("x".repeat(MAX_RESPONSE_HEAD + 1).into_boxed_str());
        let (url, server) = serve_once(endless).await;
        let err = push_gateway(&url, "walvault", &sample()).await.unwrap_err();
        server.await.unwrap();
        assert!(
            err.to_string().ends_with("no complete status line"),
            "{err}"
        );

        // Accepts, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let err = push_gateway_within(&url, "walvault", &sample(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("pushgateway {url} did not answer within 0.2 s")
        );
        drop(listener);
    }

    #[tokio::test]
    async fn an_unreachable_gateway_and_bad_arguments_are_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = push_gateway(&url, "walvault", &sample()).await.unwrap_err();
        assert!(matches!(err, MetricsError::Io { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot push metrics to pushgateway {url}: ")),
            "{err}"
        );

        let err = push_gateway("https://gw", "walvault", &sample())
            .await
            .unwrap_err();
        assert!(matches!(err, MetricsError::HttpsUnsupported { .. }));
        let err = push_gateway("http://gw", "", &sample()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid pushgateway job name \"\": it is empty"
        );
    }
}
