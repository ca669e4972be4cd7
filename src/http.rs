//! walvault's HTTP client for what it sends outside the repository:
//! metrics to a Pushgateway and notifications. reqwest with rustls (the
//! system's root certificates), so `https://` works; built only by the
//! commands that send something, never by push or fetch.

use std::time::Duration;

/// A client whose every request, connection included, ends within
/// `timeout`; an error when one cannot be built (no TLS roots, say).
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("walvault/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| describe(&e.without_url()))
}

/// An error with its causes, on one line (reqwest's own message is only
/// "error sending request").
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `HTTP/1.1 500 Internal Server Error`, from a response.
pub fn status_line(response: &reqwest::Response) -> String {
    let status = response.status();
    format!(
        "{:?} {} {}",
        response.version(),
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_string()
}
