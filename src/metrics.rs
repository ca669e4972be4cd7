//! Prometheus metrics for the scheduled commands: gauges collected in a
//! [`Metrics`] set, rendered in the text exposition format 0.0.4, and
//! delivered either as a file for node_exporter's textfile collector
//! ([`write_textfile`]) or to a Pushgateway ([`push_gateway`]).
//!
//! This module owns the format and the delivery. It must not choose metric
//! names or values (the commands do) or read the repository. The
//! Pushgateway is reached with walvault's HTTP client ([`crate::http`]:
//! reqwest, with TLS for `https://`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// How long a push may take, connection included.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

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
    #[error("invalid pushgateway url \"{url}\": {reason}\nHINT: expected http[s]://host[:port][/path], e.g. http://localhost:9091")]
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

/// Checks a Pushgateway URL: `http[s]://host[:port][/prefix]`, without a
/// query, fragment or user information. Returns it without a trailing `/`.
fn parse_url(url: &str) -> Result<String, MetricsError> {
    let invalid = |reason: &str| MetricsError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("only http:// and https:// are supported"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("a query or fragment is not allowed"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("user information is not supported"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(url.trim_end_matches('/').to_string())
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
    let target = format!("{}/metrics/{}", parse_url(url)?, job_path(job)?);
    let client = crate::http::client(timeout).map_err(|reason| MetricsError::Io {
        url: url.to_string(),
        source: std::io::Error::other(reason),
    })?;
    let sent = client
        .put(&target)
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(metrics.render())
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Err(MetricsError::Timeout {
                url: url.to_string(),
                timeout,
            })
        }
        Err(e) if e.is_connect() => {
            return Err(MetricsError::Io {
                url: url.to_string(),
                source: std::io::Error::other(crate::http::describe(&e)),
            })
        }
        Err(e) => {
            return Err(MetricsError::BadResponse {
                url: url.to_string(),
                reason: crate::http::describe(&e),
            })
        }
    };
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(MetricsError::Status {
            url: url.to_string(),
            status_line: crate::http::status_line(&response),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        assert_eq!(ok("http://localhost:9091"), "http://localhost:9091");
        assert_eq!(
            ok("HTTP://gw.example/prefix/path/"),
            "HTTP://gw.example/prefix/path"
        );
        assert_eq!(ok("http://[::1]:9091/"), "http://[::1]:9091");
        assert_eq!(ok("https://gw.example:9091/"), "https://gw.example:9091");
        for (url, reason) in [
            (
                "ftp://gw.example",
                "only http:// and https:// are supported",
            ),
            ("http://gw/x?y=1", "a query or fragment is not allowed"),
            ("http://user:pw@gw", "user information is not supported"),
        ] {
            match parse_url(url) {
                Err(MetricsError::InvalidUrl { reason: r, .. }) => assert_eq!(r, reason, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        for url in [
            "gw.example:9091",
            "http://",
            "http://[::1",
            "http://gw:http",
        ] {
            assert!(
                matches!(parse_url(url), Err(MetricsError::InvalidUrl { .. })),
                "{url}"
            );
        }
        let err = parse_url("http://").unwrap_err().to_string();
        assert!(
            err.contains("\nHINT: expected http[s]://host[:port][/path]"),
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
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_string)
                        })
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
        let headers: Vec<String> = lines.map(|l| l.to_ascii_lowercase()).collect();
        let has = |h: String| headers.contains(&h);
        assert!(
            has("content-type: text/plain; version=0.0.4".into()),
            "{headers:?}"
        );
        assert!(
            has(format!("host: {}", &url["http://".len()..])),
            "{headers:?}"
        );
        assert!(
            has(format!("content-length: {}", body.len())),
            "{headers:?}"
        );
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
        for garbage in ["SSH-2.0-OpenSSH\r\n", "", "HTTP/1.1 200"] {
            let (url, server) = serve_once(garbage).await;
            let err = push_gateway(&url, "walvault", &sample()).await.unwrap_err();
            server.await.unwrap();
            assert!(
                matches!(err, MetricsError::BadResponse { .. })
                    && err
                        .to_string()
                        .starts_with(&format!("pushgateway {url} sent an invalid response: ")),
                "{garbage:?}: {err}"
            );
        }

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

        let err = push_gateway("http://gw", "", &sample()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid pushgateway job name \"\": it is empty"
        );
    }
}
