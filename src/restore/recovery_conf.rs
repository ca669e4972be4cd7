//! The recovery settings a restore writes into the restored data directory's
//! `postgresql.auto.conf`: which settings and values ([`plan_recovery_lines`]),
//! how values are quoted ([`quote`]), and how an existing file is rewritten
//! so that earlier recovery settings no longer apply ([`rewrite_auto_conf`]).
//!
//! This module owns those pure text decisions. It does no I/O: callers read
//! the file, pass its text, and write the result (and `recovery.signal`).
//! Setting names are recognised like PostgreSQL's configuration lexer
//! (`guc-file.l`), loosely: optional leading whitespace, a name of letters,
//! digits, underscores and dots, compared case-insensitively.

use super::target::{format_for_postgres, RecoveryTarget};
use crate::wal::TimelineId;

/// Prefix put before every line [`rewrite_auto_conf`] comments out.
pub const REPLACED_PREFIX: &str = "# walvault: replaced: ";

/// Settings [`rewrite_auto_conf`] always comments out, besides any
/// `recovery_target_*` setting.
const REPLACED_SETTINGS: [&str; 3] = ["restore_command", "recovery_target", "recovery_end_command"];

/// What PostgreSQL does when it reaches the recovery target
/// (`recovery_target_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum TargetAction {
    /// Stop replay and wait for `pg_wal_replay_resume()`.
    Pause,
    /// End recovery and start accepting writes on a new timeline.
    Promote,
    /// Stop the server, which can then be restarted with another target.
    Shutdown,
}

impl TargetAction {
    /// The value PostgreSQL expects.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// Everything written into the configuration for a restore.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoverySettings {
    pub restore_command: String,
    pub target: RecoveryTarget,
    pub target_timeline: TimelineId,
    /// `None`: PostgreSQL's default (`pause`).
    pub target_action: Option<TargetAction>,
    /// `false` stops just before the target (`--target-exclusive`); only
    /// time, LSN and transaction targets have an exclusive form.
    pub inclusive: bool,
}

/// A PostgreSQL configuration string literal: `value` in single quotes, with
/// `'` and `\` doubled (as `ALTER SYSTEM` writes them). Newlines, carriage
/// returns and tabs become `\n`, `\r` and `\t`, which the configuration
/// lexer turns back into the characters, so the setting stays on one line.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The `(name, quoted value)` settings for `s`, in the order they are
/// written: `restore_command`, the target setting (none for the end of the
/// archive), `recovery_target_inclusive = 'false'` when exclusive and the
/// target kind has that form, `recovery_target_timeline`, and
/// `recovery_target_action` when there is a target and an action.
pub fn plan_recovery_lines(s: &RecoverySettings) -> Vec<(String, String)> {
    let mut lines = vec![("restore_command".to_owned(), quote(&s.restore_command))];
    let (target, has_exclusive_form) = match &s.target {
        RecoveryTarget::EndOfArchive => (None, false),
        RecoveryTarget::Immediate => (Some(("recovery_target", "immediate".to_owned())), false),
        RecoveryTarget::Time(ts) => (
            Some(("recovery_target_time", format_for_postgres(*ts))),
            true,
        ),
        RecoveryTarget::Lsn(lsn) => (Some(("recovery_target_lsn", lsn.to_string())), true),
        RecoveryTarget::Xid(xid) => (Some(("recovery_target_xid", xid.clone())), true),
        RecoveryTarget::Name(name) => (Some(("recovery_target_name", name.clone())), false),
    };
    let has_target = target.is_some();
    if let Some((name, value)) = target {
        lines.push((name.to_owned(), quote(&value)));
    }
    if !s.inclusive && has_exclusive_form {
        lines.push(("recovery_target_inclusive".to_owned(), quote("false")));
    }
    lines.push((
        "recovery_target_timeline".to_owned(),
        quote(&s.target_timeline.to_string()),
    ));
    if let Some(action) = s.target_action.filter(|_| has_target) {
        lines.push(("recovery_target_action".to_owned(), quote(action.as_str())));
    }
    lines
}

/// The setting name a configuration line starts with, lower-cased, or
/// `None` for blank lines, comments and anything not starting with a name.
fn setting_name(line: &str) -> Option<String> {
    let rest = line.trim_start_matches([' ', '\t', '\x0c', '\r']);
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(rest.len());
    let name = &rest[..end];
    if name.is_empty() {
        None
    } else {
        Some(name.to_ascii_lowercase())
    }
}

/// Whether a line setting `name` (lower case) must be commented out: it is a
/// recovery setting walvault replaces, or one of `lines`.
fn is_replaced(name: &str, lines: &[(String, String)]) -> bool {
    REPLACED_SETTINGS.contains(&name)
        || name.starts_with("recovery_target_")
        || lines
            .iter()
            .any(|(setting, _)| setting.eq_ignore_ascii_case(name))
}

/// Rewrites `postgresql.auto.conf`: every line setting `restore_command`,
/// `recovery_target`, any `recovery_target_*`, `recovery_end_command` or
/// any name in `lines` is commented out with [`REPLACED_PREFIX`]; every
/// other line (comments included) is kept byte for byte. Then a block is
/// appended: a blank line (unless the file was empty), `# <comment>` (one
/// such line per line of `comment`), and `name = value` for each of `lines`,
/// whose values must already be quoted (see [`plan_recovery_lines`]).
///
/// Applied again, the new block replaces the previous one, whose settings
/// are then commented out like any others.
pub fn rewrite_auto_conf(existing: &str, lines: &[(String, String)], comment: &str) -> String {
    let mut out = String::with_capacity(existing.len() + 64 * (lines.len() + 2));
    for line in existing.split_inclusive('\n') {
        let content = line.strip_suffix('\n').unwrap_or(line);
        match setting_name(content) {
            Some(name) if is_replaced(&name, lines) => {
                out.push_str(REPLACED_PREFIX);
                out.push_str(line);
            }
            _ => out.push_str(line),
        }
    }
    if !out.is_empty() {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    let mut comment_lines = comment.lines().peekable();
    if comment_lines.peek().is_none() {
        out.push_str("#\n");
    }
    for text in comment_lines {
        out.push_str(format!("# {text}").trim_end());
        out.push('\n');
    }
    for (name, value) in lines {
        out.push_str(name);
        out.push_str(" = ");
        out.push_str(value);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Lsn;

    fn settings(target: RecoveryTarget) -> RecoverySettings {
        RecoverySettings {
            restore_command: "walvault-fetch %f %p".to_owned(),
            target,
            target_timeline: TimelineId(2),
            target_action: Some(TargetAction::Promote),
            inclusive: true,
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn ts(text: &str) -> jiff::Timestamp {
        match text.parse() {
            Ok(t) => t,
            Err(e) => panic!("test timestamp {text}: {e}"),
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote(r"C:\wal\%f"), r"'C:\\wal\\%f'");
        assert_eq!(quote("''"), "''''''");
        assert_eq!(quote("a\nb\r\tc"), r"'a\nb\r\tc'");
        assert_eq!(quote("héllo #1 = x"), "'héllo #1 = x'");
    }

    #[test]
    fn end_of_archive_has_no_target_and_no_action() {
        let mut s = settings(RecoveryTarget::EndOfArchive);
        s.inclusive = false;
        assert_eq!(
            plan_recovery_lines(&s),
            pairs(&[
                ("restore_command", "'walvault-fetch %f %p'"),
                ("recovery_target_timeline", "'2'"),
            ])
        );
    }

    #[test]
    fn immediate() {
        let mut s = settings(RecoveryTarget::Immediate);
        s.inclusive = false; // no exclusive form
        assert_eq!(
            plan_recovery_lines(&s),
            pairs(&[
                ("restore_command", "'walvault-fetch %f %p'"),
                ("recovery_target", "'immediate'"),
                ("recovery_target_timeline", "'2'"),
                ("recovery_target_action", "'promote'"),
            ])
        );
    }

    #[test]
    fn time_inclusive_and_exclusive() {
        let mut s = settings(RecoveryTarget::Time(ts("2026-11-21T10:29:59.5Z")));
        let inclusive = pairs(&[
            ("restore_command", "'walvault-fetch %f %p'"),
            ("recovery_target_time", "'2026-11-21 10:29:59.500000+00:00'"),
            ("recovery_target_timeline", "'2'"),
            ("recovery_target_action", "'promote'"),
        ]);
        assert_eq!(plan_recovery_lines(&s), inclusive);
        s.inclusive = false;
        let mut exclusive = inclusive.clone();
        exclusive.insert(2, ("recovery_target_inclusive".into(), "'false'".into()));
        assert_eq!(plan_recovery_lines(&s), exclusive);
    }

    #[test]
    fn lsn_and_xid_have_exclusive_forms() {
        for (target, name, value) in [
            (
                RecoveryTarget::Lsn(Lsn(0x300_0028)),
                "recovery_target_lsn",
                "'0/3000028'",
            ),
            (
                RecoveryTarget::Xid("1234".into()),
                "recovery_target_xid",
                "'1234'",
            ),
        ] {
            let mut s = settings(target);
            s.inclusive = false;
            s.target_action = Some(TargetAction::Shutdown);
            assert_eq!(
                plan_recovery_lines(&s),
                pairs(&[
                    ("restore_command", "'walvault-fetch %f %p'"),
                    (name, value),
                    ("recovery_target_inclusive", "'false'"),
                    ("recovery_target_timeline", "'2'"),
                    ("recovery_target_action", "'shutdown'"),
                ])
            );
        }
    }

    #[test]
    fn name_has_no_exclusive_form_and_is_quoted() {
        let mut s = settings(RecoveryTarget::Name("it's ready".into()));
        s.inclusive = false;
        s.target_action = None;
        assert_eq!(
            plan_recovery_lines(&s),
            pairs(&[
                ("restore_command", "'walvault-fetch %f %p'"),
                ("recovery_target_name", "'it''s ready'"),
                ("recovery_target_timeline", "'2'"),
            ])
        );
    }

    #[test]
    fn target_actions() {
        for (action, value) in [
            (TargetAction::Pause, "'pause'"),
            (TargetAction::Promote, "'promote'"),
            (TargetAction::Shutdown, "'shutdown'"),
        ] {
            let mut s = settings(RecoveryTarget::Lsn(Lsn(1)));
            s.target_action = Some(action);
            let lines = plan_recovery_lines(&s);
            assert_eq!(
                lines.last(),
                Some(&("recovery_target_action".to_owned(), value.to_owned()))
            );
        }
    }

    #[test]
    fn target_action_value_enum_names() {
        use clap::ValueEnum;
        for action in TargetAction::value_variants() {
            let shown = action.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(shown.as_deref(), Some(action.as_str()));
        }
    }

    #[test]
    fn setting_names() {
        assert_eq!(
            setting_name("restore_command = 'x'"),
            Some("restore_command".into())
        );
        assert_eq!(
            setting_name("  \tRecovery_Target_Time='x'"),
            Some("recovery_target_time".into())
        );
        assert_eq!(
            setting_name("recovery_target 'immediate'"),
            Some("recovery_target".into())
        );
        assert_eq!(setting_name("ext.setting = 1"), Some("ext.setting".into()));
        assert_eq!(setting_name("# restore_command = 'x'"), None);
        assert_eq!(setting_name("   "), None);
        assert_eq!(setting_name(""), None);
        assert_eq!(setting_name("= 'x'"), None);
    }

    #[test]
    fn rewrite_comments_out_earlier_recovery_settings() {
        let existing = "\
# Do not edit this file manually!
# It will be overwritten by the ALTER SYSTEM command.
shared_buffers = '1GB'
restore_command = 'cp /old/%f %p'
Recovery_Target_Time='2020-01-01 00:00:00+00'
    recovery_target_lsn = '0/1'
\trecovery_target 'immediate'
recovery_target_action=pause
recovery_end_command = 'echo done'
recovery_target_timeline
# restore_command = 'commented already'
primary_conninfo = 'host=x'
recovery_targets_are_not_a_setting = 1
archive_cleanup_command = 'x'
";
        let lines = pairs(&[
            ("restore_command", "'walvault-fetch %f %p'"),
            ("recovery_target_timeline", "'2'"),
        ]);
        let got = rewrite_auto_conf(existing, &lines, "added by walvault restore");
        let want = "\
# Do not edit this file manually!
# It will be overwritten by the ALTER SYSTEM command.
shared_buffers = '1GB'
# walvault: replaced: restore_command = 'cp /old/%f %p'
# walvault: replaced: Recovery_Target_Time='2020-01-01 00:00:00+00'
# walvault: replaced:     recovery_target_lsn = '0/1'
# walvault: replaced: \trecovery_target 'immediate'
# walvault: replaced: recovery_target_action=pause
# walvault: replaced: recovery_end_command = 'echo done'
# walvault: replaced: recovery_target_timeline
# restore_command = 'commented already'
primary_conninfo = 'host=x'
recovery_targets_are_not_a_setting = 1
archive_cleanup_command = 'x'

# added by walvault restore
restore_command = 'walvault-fetch %f %p'
recovery_target_timeline = '2'
";
        assert_eq!(got, want);
    }

    #[test]
    fn rewrite_also_replaces_any_setting_it_writes() {
        let lines = pairs(&[("Some.Setting", "'1'")]);
        let got = rewrite_auto_conf("some.setting = 0\n", &lines, "c");
        assert_eq!(
            got,
            "# walvault: replaced: some.setting = 0\n\n# c\nSome.Setting = '1'\n"
        );
    }

    #[test]
    fn rewrite_twice_replaces_the_first_block() {
        let first = pairs(&[
            ("restore_command", "'a'"),
            ("recovery_target_time", "'2026-11-21 10:29:59+00:00'"),
            ("recovery_target_timeline", "'2'"),
        ]);
        let second = pairs(&[
            ("restore_command", "'b'"),
            ("recovery_target_lsn", "'0/3000028'"),
            ("recovery_target_timeline", "'3'"),
        ]);
        let once = rewrite_auto_conf("# Do not edit this file manually!\n", &first, "restore 1");
        let twice = rewrite_auto_conf(&once, &second, "restore 2");
        assert_eq!(
            twice,
            "\
# Do not edit this file manually!

# restore 1
# walvault: replaced: restore_command = 'a'
# walvault: replaced: recovery_target_time = '2026-11-21 10:29:59+00:00'
# walvault: replaced: recovery_target_timeline = '2'

# restore 2
restore_command = 'b'
recovery_target_lsn = '0/3000028'
recovery_target_timeline = '3'
"
        );
        // Applying the same block again only moves it.
        let again = rewrite_auto_conf(&twice, &second, "restore 2");
        assert_eq!(again.matches("# restore 2\n").count(), 2);
        let active: Vec<&str> = again
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .collect();
        assert_eq!(
            active,
            [
                "restore_command = 'b'",
                "recovery_target_lsn = '0/3000028'",
                "recovery_target_timeline = '3'"
            ]
        );
    }

    #[test]
    fn rewrite_edges() {
        let lines = pairs(&[("restore_command", "'x'")]);
        // Empty file: no leading blank line.
        assert_eq!(
            rewrite_auto_conf("", &lines, "c"),
            "# c\nrestore_command = 'x'\n"
        );
        // No final newline, CRLF line endings kept.
        assert_eq!(
            rewrite_auto_conf("a = 1\r\nrestore_command = 'y'", &lines, "c"),
            "a = 1\r\n# walvault: replaced: restore_command = 'y'\n\n# c\nrestore_command = 'x'\n"
        );
        // Multi-line and empty comments stay comments.
        assert_eq!(
            rewrite_auto_conf("", &lines, "one\n\ntwo"),
            "# one\n#\n# two\nrestore_command = 'x'\n"
        );
        assert_eq!(
            rewrite_auto_conf("", &lines, ""),
            "#\nrestore_command = 'x'\n"
        );
        assert_eq!(rewrite_auto_conf("", &[], "c"), "# c\n");
    }

    #[test]
    fn rewritten_plan_lines() {
        let s = settings(RecoveryTarget::Xid("7".into()));
        let text = rewrite_auto_conf(
            "recovery_target_name = 'old'\n",
            &plan_recovery_lines(&s),
            "walvault restore",
        );
        assert_eq!(
            text,
            "\
# walvault: replaced: recovery_target_name = 'old'

# walvault restore
restore_command = 'walvault-fetch %f %p'
recovery_target_xid = '7'
recovery_target_timeline = '2'
recovery_target_action = 'promote'
"
        );
    }
}
