//! Log output: one line per event on stderr, `program: LEVEL: message
//! key=value ...`, no colour and no timestamp (PostgreSQL's server log, which
//! collects archive_command's stderr, adds its own). Quiet on success: only
//! warnings and errors unless `-v` (info) or `-vv` (debug); `WALVAULT_LOG`
//! takes a full tracing filter.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

struct LineFormat {
    program: &'static str,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{}: {}: ", self.program, event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

pub fn init(program: &'static str, verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = std::env::var("WALVAULT_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::new(format!("{default},aws=warn,hyper=warn,h2=warn,rustls=warn"))
        });
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .event_format(LineFormat { program })
        .try_init();
}

/// Prints a final error: its first line as ERROR, `HINT:` lines as HINT,
/// and any other lines (a server log excerpt, say) as DETAIL, so one
/// error reads as one error in a log.
pub fn report_error(program: &str, error: &dyn fmt::Display) {
    let text = error.to_string();
    crate::notify::record_error(&text);
    for line in error_lines(program, &text) {
        eprintln!("{line}");
    }
}

fn error_lines(program: &str, text: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .map(|(i, line)| match (i, line.strip_prefix("HINT: ")) {
            (_, Some(hint)) => format!("{program}: HINT: {hint}"),
            (0, None) => format!("{program}: ERROR: {line}"),
            (_, None) => format!("{program}: DETAIL: {line}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_error_one_error_line() {
        let lines = super::error_lines(
            "walvault",
            "restore failed\nHINT: stop the server\nlog line 1\nlog line 2",
        );
        assert_eq!(
            lines,
            [
                "walvault: ERROR: restore failed",
                "walvault: HINT: stop the server",
                "walvault: DETAIL: log line 1",
                "walvault: DETAIL: log line 2"
            ]
        );
    }
}
