//! Restore drills (`verify --restore` with a target and checks): the pure
//! parts. Which moment a random drill recovers to, and the statements of a
//! `--check-sql` file with the values they must return.

use jiff::Timestamp;

/// One statement of a check file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The line the statement starts on, for messages.
    pub line: usize,
    pub sql: String,
    /// From a `-- expect: VALUE` comment before it: the first column of
    /// the first row it returns, as text (`NULL` for a null, empty for no
    /// row). Without one, the statement only has to succeed.
    pub expect: Option<String>,
}

/// Parses a check file: statements end with `;` at the end of a line;
/// `-- expect: VALUE` applies to the next statement; other comments and
/// blank lines are skipped.
pub fn plan_checks(text: &str) -> Result<Vec<Check>, String> {
    let mut checks = Vec::new();
    let mut sql = String::new();
    let mut start = 0;
    let mut expect: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        if sql.is_empty() {
            if let Some(rest) = trimmed.strip_prefix("--") {
                if let Some(value) = rest.trim().strip_prefix("expect:") {
                    if expect.is_some() {
                        return Err(format!(
                            "line {n}: a second \"-- expect:\" before any statement"
                        ));
                    }
                    expect = Some(value.trim().to_string());
                }
                continue;
            }
            if trimmed.is_empty() {
                continue;
            }
            start = n;
        }
        if !sql.is_empty() {
            sql.push('\n');
        }
        sql.push_str(line);
        if trimmed.ends_with(';') {
            checks.push(Check {
                line: start,
                sql: std::mem::take(&mut sql),
                expect: expect.take(),
            });
        }
    }
    if !sql.trim().is_empty() {
        return Err(format!(
            "line {start}: the last statement does not end with \";\""
        ));
    }
    if expect.is_some() {
        return Err("an \"-- expect:\" comment at the end has no statement".to_string());
    }
    if checks.is_empty() {
        return Err("no statement in the file".to_string());
    }
    Ok(checks)
}

/// The outcome of one check, as a problem line, or `None` when it passed.
/// `got` is the first column of the first row (`None`: no row; `Some(None)`:
/// NULL) or the error.
pub fn judge_check(check: &Check, got: Result<Option<Option<String>>, String>) -> Option<String> {
    let first = check.sql.lines().next().unwrap_or_default().trim();
    match (got, &check.expect) {
        (Err(e), _) => Some(format!("check at line {} ({first}): {e}", check.line)),
        (Ok(_), None) => None,
        (Ok(value), Some(want)) => {
            let shown = match value {
                None => String::new(),
                Some(None) => "NULL".to_string(),
                Some(Some(v)) => v,
            };
            (shown != *want).then(|| {
                format!(
                    "check at line {} ({first}): expected {want:?}, got {shown:?}",
                    check.line
                )
            })
        }
    }
}

/// A moment in `[from, to]` from `seed` (uniform to the microsecond).
pub fn plan_random_target(from: Timestamp, to: Timestamp, seed: u64) -> Timestamp {
    let (a, b) = (from.as_microsecond(), to.as_microsecond());
    if b <= a {
        return from;
    }
    let span = (b - a) as u64;
    // splitmix64: spreads any seed over the span.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Timestamp::from_microsecond(a + (z % (span + 1)) as i64).unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_files_pair_statements_with_their_expectations() {
        let text = "-- counts at the target\n\n-- expect: 100\nSELECT count(*)\n  FROM t;\nSELECT 1;\n-- expect: NULL\nSELECT NULL::int;\n";
        let checks = plan_checks(text).unwrap();
        assert_eq!(checks.len(), 3);
        assert_eq!(checks[0].line, 4);
        assert_eq!(checks[0].sql, "SELECT count(*)\n  FROM t;");
        assert_eq!(checks[0].expect.as_deref(), Some("100"));
        assert_eq!(checks[1].expect, None);
        assert_eq!(checks[2].expect.as_deref(), Some("NULL"));
        assert!(plan_checks("SELECT 1")
            .unwrap_err()
            .contains("does not end"));
        assert!(plan_checks("SELECT 1;\n-- expect: 3\n")
            .unwrap_err()
            .contains("no statement"));
        assert!(plan_checks("-- nothing\n")
            .unwrap_err()
            .contains("no statement"));
        assert!(plan_checks("-- expect: 1\n-- expect: 2\nSELECT 1;")
            .unwrap_err()
            .contains("second"));
    }

    #[test]
    fn checks_pass_fail_and_name_their_line() {
        let c = &plan_checks("-- expect: 100\nSELECT count(*) FROM t;\n").unwrap()[0];
        assert_eq!(judge_check(c, Ok(Some(Some("100".into())))), None);
        let bad = judge_check(c, Ok(Some(Some("99".into())))).unwrap();
        assert!(
            bad.contains("line 2") && bad.contains("expected \"100\", got \"99\""),
            "{bad}"
        );
        let err = judge_check(c, Err("relation \"t\" does not exist".into())).unwrap();
        assert!(err.contains("does not exist"), "{err}");
        assert!(judge_check(c, Ok(None)).unwrap().contains("got \"\""));
        let plain = &plan_checks("SELECT 1;").unwrap()[0];
        assert_eq!(judge_check(plain, Ok(None)), None);
    }

    #[test]
    fn random_targets_stay_in_the_window_and_spread() {
        let from: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let to: Timestamp = "2026-12-01T06:00:00Z".parse().unwrap();
        let picks: Vec<Timestamp> = (0..200).map(|s| plan_random_target(from, to, s)).collect();
        assert!(picks.iter().all(|t| *t >= from && *t <= to));
        let early = picks
            .iter()
            .filter(|t| t.as_second() < from.as_second() + 3 * 3600)
            .count();
        assert!(
            (60..140).contains(&early),
            "{early} of 200 in the first half"
        );
        assert_eq!(plan_random_target(to, from, 7), to);
    }
}
