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
