//! Notifications when a scheduled command ends: a JSON event to a webhook
//! (its `text` field makes it a Slack incoming-webhook message as it is;
//! a generic webhook reads the other fields), and healthchecks.io-style
//! pings (`<url>/start` when the command starts, `<url>` on success,
//! `<url>/fail` on failure).
//!
//! Sending is bounded in time and never changes the command's exit
//! status; a notification that cannot be sent is a warning in the log.
//! Commands add what they know to the event as they run
//! ([`record_size`]; the first error they report is taken from the log,
//! [`record_error`]).

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Where notifications go.
#[derive(Debug, Clone, Default)]
pub struct NotifySettings {
    /// A JSON event is POSTed here.
    pub webhook: Option<String>,
    /// healthchecks.io-style pings.
    pub ping: Option<String>,
    /// The longest a notification may take.
    pub timeout: Duration,
}

impl NotifySettings {
    pub fn wanted(&self) -> bool {
        self.webhook.is_some() || self.ping.is_some()
    }
}

/// What one event says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// One line for people (Slack shows it).
    pub text: String,
    pub command: String,
    /// `success` or `failure`; for `status`, the new level.
    pub result: String,
    pub duration_secs: f64,
    /// What the command stored or checked, when it says.
    pub size_bytes: Option<u64>,
    pub repository: String,
    pub host: String,
    /// The first error the command reported, on failure; for `status`,
    /// its findings.
    pub message: Option<String>,
    /// RFC 3339.
    pub at: String,
}

#[derive(Default)]
struct Noted {
    size: Option<u64>,
    error: Option<String>,
}

static NOTED: Mutex<Option<Noted>> = Mutex::new(None);

fn noted() -> std::sync::MutexGuard<'static, Option<Noted>> {
    NOTED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The size the event reports (a backup's size, say).
pub fn record_size(bytes: u64) {
    noted().get_or_insert_with(Noted::default).size = Some(bytes);
}

/// An error the command reported; the first one goes into the event.
pub fn record_error(message: &str) {
    let mut guard = noted();
    let n = guard.get_or_insert_with(Noted::default);
    if n.error.is_none() {
        n.error = Some(message.lines().next().unwrap_or_default().to_string());
    }
}

/// The event of a command that ended, from what it recorded.
pub fn plan_event(
    command: &str,
    success: bool,
    duration: Duration,
    repository: &str,
    host: &str,
    at: jiff::Timestamp,
) -> Event {
    let n = noted().take().unwrap_or_default();
    let result = if success { "success" } else { "failure" };
    let size = n
        .size
        .map(|b| format!(", {}", crate::cli::human_bytes(b)))
        .unwrap_or_default();
    let text = if success {
        format!(
            "walvault {command} succeeded on {host} ({repository}) in {:.1}s{size}",
            duration.as_secs_f64()
        )
    } else {
        format!(
            "walvault {command} FAILED on {host} ({repository}) after {:.1}s: {}",
            duration.as_secs_f64(),
            n.error.as_deref().unwrap_or("see its log")
        )
    };
    Event {
        text,
        command: command.to_string(),
        result: result.to_string(),
        duration_secs: duration.as_secs_f64(),
        size_bytes: n.size,
        repository: repository.to_string(),
        host: host.to_string(),
        message: if success { None } else { n.error },
        at: at.round(jiff::Unit::Second).unwrap_or(at).to_string(),
    }
}

/// The ping URL for a moment of the command: start, success or failure.
pub fn ping_url(base: &str, phase: Phase) -> String {
    let base = base.trim_end_matches('/');
    match phase {
        Phase::Start => format!("{base}/start"),
        Phase::Success => base.to_string(),
        Phase::Failure => format!("{base}/fail"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Start,
    Success,
    Failure,
}

/// Pings `<url>/start`; failures are logged.
pub async fn send_start(settings: &NotifySettings) {
    if let Some(ping) = &settings.ping {
        send(settings, &ping_url(ping, Phase::Start), None).await;
    }
}

/// Sends the event to the webhook and the ping; failures are logged.
pub async fn send_event(settings: &NotifySettings, event: &Event) {
    let body = serde_json::to_vec(event).expect("events serialize");
    // A failed command, or a status that is no longer GOOD, pings /fail.
    let failed = matches!(event.result.as_str(), "failure" | "WARNING" | "CRITICAL");
    let ping = settings.ping.as_ref().map(|p| {
        ping_url(
            p,
            if failed {
                Phase::Failure
            } else {
                Phase::Success
            },
        )
    });
    let webhook = async {
        if let Some(url) = &settings.webhook {
            send(settings, url, Some(("application/json", body.clone()))).await;
        }
    };
    let pinged = async {
        if let Some(url) = &ping {
            send(
                settings,
                url,
                Some(("text/plain; charset=utf-8", event.text.clone().into_bytes())),
            )
            .await;
        }
    };
    tokio::join!(webhook, pinged);
}

/// One POST, within the timeout; never an error for the caller.
async fn send(settings: &NotifySettings, url: &str, body: Option<(&'static str, Vec<u8>)>) {
    // Credentials in a URL (a webhook's secret path) stay out of logs.
    let shown = redact(url);
    let client = match crate::http::client(settings.timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(url = %shown, error = %e, "notification not sent; the command's result is unchanged");
            return;
        }
    };
    let mut request = client.post(url);
    if let Some((content_type, body)) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => {
            tracing::debug!(url = %shown, "notification sent")
        }
        Ok(r) => tracing::warn!(
            url = %shown,
            status = %crate::http::status_line(&r),
            "notification refused; the command's result is unchanged"
        ),
        Err(e) => tracing::warn!(
            url = %shown,
            error = %crate::http::describe(&e.without_url()),
            "notification not sent; the command's result is unchanged"
        ),
    }
}

/// `scheme://host[:port]/…`: a URL without its path, which for Slack and
/// healthchecks.io is the secret.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(an invalid URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_say_what_ended_and_how() {
        record_size(3 << 30);
        let at: jiff::Timestamp = "2026-12-01T03:00:00.4Z".parse().unwrap();
        let e = plan_event(
            "backup",
            true,
            Duration::from_millis(35_100),
            "local \"/r\"",
            "db1",
            at,
        );
        assert_eq!(e.result, "success");
        assert_eq!(e.size_bytes, Some(3 << 30));
        assert_eq!(
            e.text,
            "walvault backup succeeded on db1 (local \"/r\") in 35.1s, 3.0 GiB"
        );
        assert_eq!(e.at, "2026-12-01T03:00:00Z");
        // What was recorded goes with one event only.
        record_error("repository local \"/r\" has no header\nHINT: run walvault init");
        record_error("a later error");
        let e = plan_event(
            "expire",
            false,
            Duration::from_secs(1),
            "local \"/r\"",
            "db1",
            at,
        );
        assert_eq!(e.result, "failure");
        assert_eq!(e.size_bytes, None);
        assert_eq!(
            e.message.as_deref(),
            Some("repository local \"/r\" has no header")
        );
        assert!(
            e.text.contains("FAILED") && e.text.ends_with("has no header"),
            "{}",
            e.text
        );
        let json = serde_json::to_value(&e).unwrap();
        for field in [
            "text",
            "command",
            "result",
            "duration_secs",
            "size_bytes",
            "repository",
            "host",
            "at",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn pings_and_redaction() {
        assert_eq!(
            ping_url("https://hc-ping.com/abc/", Phase::Start),
            "https://hc-ping.com/abc/start"
        );
        assert_eq!(
            ping_url("https://hc-ping.com/abc", Phase::Success),
            "https://hc-ping.com/abc"
        );
        assert_eq!(
            ping_url("https://hc-ping.com/abc", Phase::Failure),
            "https://hc-ping.com/abc/fail"
        );
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(redact("http://127.0.0.1:8080/x"), "http://127.0.0.1:8080/…");
    }
}
