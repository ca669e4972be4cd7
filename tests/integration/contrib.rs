//! The shipped schedules (contrib/systemd and contrib/cron) run walvault
//! commands that this walvault accepts: every flag exists and every value
//! parses.

use clap::Parser;
use walvault::cli::Cli;

/// The walvault command words of one shipped line, from the binary on.
fn walvault_words(line: &str) -> Option<Vec<String>> {
    let at = line.find("/usr/local/bin/walvault ")?;
    let words: Vec<String> = line[at..]
        .split_whitespace()
        .take_while(|w| !w.starts_with('>') && !w.starts_with('|'))
        .map(str::to_string)
        .collect();
    Some(words)
}

#[test]
fn every_shipped_schedule_runs_a_command_walvault_accepts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("systemd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    files.push(root.join("cron/walvault"));
    let mut commands = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let Some(words) = walvault_words(line) else {
                continue;
            };
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!("{}: {line}\n{e}", file.display());
            }
            commands += 1;
        }
    }
    // Every .service runs one, and the cron file runs each of them.
    assert!(commands >= 12, "found {commands} commands");
}

/// Every metric name a text uses (`walvault_…`, `backup_restore_…`).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for prefix in ["walvault_", "backup_restore_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let before = rest[..at].chars().last();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                names.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    names
}

/// The alert rules pass `promtool check rules` and their unit tests
/// (`promtool test rules`), and they and the Grafana dashboard use only
/// metrics walvault writes.
#[test]
fn alert_rules_pass_promtool_and_use_only_metrics_walvault_writes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = root.join("contrib/prometheus/walvault-rules.yml");
    let tests = root.join("contrib/prometheus/walvault-rules.test.yml");
    let promtool = std::env::var("WALVAULT_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    for args in [vec!["check", "rules"], vec!["test", "rules"]] {
        let file = if args[0] == "check" { &rules } else { &tests };
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .arg(file)
            .output()
            .unwrap_or_else(|e| {
                panic!("{promtool}: {e}; scripts/test installs it (Debian package prometheus)")
            });
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // What walvault writes: every metric name in its source.
    let mut written = std::collections::BTreeSet::new();
    for file in crate::ops::files_under(&root.join("src")) {
        written.extend(metric_names(&std::fs::read_to_string(file).unwrap()));
    }
    let dashboard =
        std::fs::read_to_string(root.join("contrib/grafana/walvault-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let used: std::collections::BTreeSet<String> =
        metric_names(&std::fs::read_to_string(&rules).unwrap())
            .into_iter()
            .chain(exprs.iter().flat_map(|e| metric_names(e)))
            .collect();
    assert!(used.len() >= 10, "{used:?}");
    let unknown: Vec<&String> = used.iter().filter(|m| !written.contains(*m)).collect();
    assert!(unknown.is_empty(), "metrics nothing writes: {unknown:?}");
}
