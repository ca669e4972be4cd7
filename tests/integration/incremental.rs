//! Differential and incremental backups against a real PostgreSQL 15:
//! a full backup, then changes that the page LSN alone cannot tell
//! (hint bits set without WAL, a relation truncated and extended again,
//! a database copied file by file), an incremental, a differential and
//! another incremental. Each backup restores to exactly the rows it saw,
//! stores far less than the full, and verify, list and expire know the
//! chains.

use crate::harness::{run_ok, PgCluster};
use crate::pitr::{Backend, Setup};

/// A fingerprint of every user table of `db`: rows, in order, hashed.
fn fingerprint(cluster: &PgCluster, db: &str) -> String {
    let tables = sql_in(
        cluster,
        db,
        "SELECT string_agg(quote_ident(relname), ',' ORDER BY relname) FROM pg_class \
         WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace AND relname <> 'harness_switch'",
    );
    let mut parts = Vec::new();
    for table in tables.split(',').filter(|t| !t.is_empty()) {
        parts.push(format!(
            "{table}={}",
            sql_in(
                cluster,
                db,
                &format!("SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} t")
            )
        ));
    }
    parts.join(" ")
}

/// `pgbench -i` at `scale` in the postgres database.
fn pgbench_init(cluster: &PgCluster, scale: u32) {
    run_ok(
        cluster
            .client("pgbench")
            .args(["-i", "-s", &scale.to_string(), "-q", "postgres"]),
    );
}

fn sql_in(cluster: &PgCluster, db: &str, sql: &str) -> String {
    let out = run_ok(cluster.psql_cmd().args(["-d", db, "-c", sql]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn backup_typed(setup: &Setup, cluster: &PgCluster, kind: &str) -> (String, String) {
    backup_with(setup, cluster, &["--type", kind])
}

/// `walvault backup` with `extra` arguments; the new label and the summary.
fn backup_with(setup: &Setup, cluster: &PgCluster, extra: &[&str]) -> (String, String) {
    let pgdata = cluster.data.to_str().unwrap();
    let conninfo = Setup::conninfo(cluster);
    let mut args = vec![
        "backup",
        "--pgdata",
        pgdata,
        "--dbname",
        &conninfo,
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    let out = setup.walvault(&args);
    assert_eq!(out.code, 0, "backup {extra:?}: {}", out.stderr);
    let label = out.stdout.split_whitespace().nth(1).unwrap().to_string();
    (label, out.stdout)
}

fn list_json(setup: &Setup) -> serde_json::Value {
    let out = setup.walvault(&["list", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn row<'a>(list: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == label)
        .unwrap_or_else(|| panic!("{label} not listed: {list}"))
}

/// The manifest's entry of `path`, read straight from the repository
/// (from the backup's file list object).
fn manifest_entry(setup: &Setup, label: &str, path: &str) -> serde_json::Value {
    let root = setup.local_repo.as_ref().unwrap();
    let repo = walvault::repo::Repository::new(
        std::sync::Arc::new(walvault::storage::local::LocalStore::new(root.clone()).unwrap()),
        walvault::repo::CompressSettings::default(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let entry = rt.block_on(async {
        let manifest = repo.read_manifest(label).await.unwrap();
        let list = repo.file_list(&manifest).await.unwrap();
        list.iter()
            .map(|f| f.unwrap())
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{path} not in {label}"))
    });
    serde_json::to_value(entry).unwrap()
}

/// Restores `label` as it was (`--target-immediate`) into `name`, starts
/// it, and checks the postgres database's fingerprint.
fn restore_exactly(setup: &Setup, name: &str, label: &str, want: &str) -> PgCluster {
    let r = setup.restore_and_start(
        name,
        &[
            "--backup",
            label,
            "--target-immediate",
            "--archive-mode",
            "off",
        ],
    );
    assert_eq!(fingerprint(&r, "postgres"), want, "restore of {label}");
    r
}

/// Starts the restored data directory `pgdata`, waits for recovery and
/// checks the postgres database's fingerprint.
fn start_and_check(setup: &Setup, name: &str, pgdata: &std::path::Path, want: &str) {
    let mut copy = PgCluster::existing(setup.dir.path(), name, pgdata.to_path_buf());
    copy.start();
    copy.wait_promoted(180);
    assert_eq!(fingerprint(&copy, "postgres"), want);
    copy.stop();
}

fn relpath(cluster: &PgCluster, db: &str, table: &str) -> String {
    sql_in(
        cluster,
        db,
        &format!("SELECT pg_relation_filepath('{table}')"),
    )
}

#[test]
fn chains_of_differential_and_incremental_backups_restore_exactly() {
    let setup = Setup::new("incr-chain", Backend::Local);
    let p = &setup.primary;
    // pgbench at scale 4: ~60 MiB, pgbench_accounts ~52 MiB in one file.
    pgbench_init(p, 4);
    p.sql("CREATE TABLE shrink(id int, pad text) WITH (autovacuum_enabled = off)");
    p.sql("INSERT INTO shrink SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g");
    p.sql("CREATE TABLE hints(id int, pad text) WITH (autovacuum_enabled = off)");
    p.sql("INSERT INTO hints SELECT g, repeat('h', 200) FROM generate_series(1, 19000) g");
    // Hint bits set and flushed on most pages; the last 1000 rows get
    // theirs only after the full backup.
    assert_eq!(p.sql("SELECT count(*) FROM hints"), "19000");
    p.sql("CHECKPOINT");
    p.sql("INSERT INTO hints SELECT g, repeat('h', 200) FROM generate_series(19001, 20000) g");
    p.sql("CREATE DATABASE src");
    sql_in(p, "src", "CREATE TABLE s(id int, note text); INSERT INTO s SELECT g, 'v1' FROM generate_series(1, 5000) g");
    // Flushed before anything reads the new rows, so the hint bits set by
    // the first read later change pages without any WAL.
    p.sql("CHECKPOINT");
    let hints_path = relpath(p, "postgres", "hints");
    let shrink_path = relpath(p, "postgres", "shrink");
    let tellers_path = relpath(p, "postgres", "pgbench_tellers");
    let accounts_path = relpath(p, "postgres", "pgbench_accounts");

    // A differential or incremental with no full backup yet is full.
    let (full, out) = backup_typed(&setup, p, "incr");
    assert!(out.contains("(full)"), "{out}");
    let full_fp = fingerprint(p, "postgres");

    // 1% of accounts, contiguous; hint bits only (checksums are off);
    // `shrink` truncated by VACUUM and extended again to its old length
    // with other rows; a new table; a database copied file by file.
    p.sql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 4000");
    assert_eq!(p.sql("SELECT count(*) FROM hints"), "20000");
    p.sql("DELETE FROM shrink WHERE id > 100");
    p.sql("VACUUM shrink");
    p.sql("INSERT INTO shrink SELECT g, repeat('y', 500) FROM generate_series(1, 19900) g");
    p.sql("CREATE TABLE newer AS SELECT g AS id FROM generate_series(1, 1000) g");
    p.sql("CREATE DATABASE copied TEMPLATE src STRATEGY FILE_COPY");
    p.sql("CHECKPOINT");
    let (incr1, out) = backup_typed(&setup, p, "incr");
    assert!(out.contains(&format!("(incr on {full})")), "{out}");
    // The database copied file by file has no WAL for its blocks: every
    // file is compared by content.
    assert!(
        out.contains("changed files found by comparing contents: the WAL record at")
            && out.contains("database or tablespace"),
        "{out}"
    );
    let incr1_fp = fingerprint(p, "postgres");
    let copied_fp = fingerprint(p, "copied");

    // The hint-bit pages changed without a new page LSN, and were stored.
    let hints = manifest_entry(&setup, &incr1, &hints_path);
    assert_eq!(
        hints["deltas"].as_array().map(|d| d.len()),
        Some(1),
        "{hints}"
    );
    // `shrink` was truncated and filled again with other rows: more than
    // half its blocks changed, so it is copied whole, with a new map.
    let shrink = manifest_entry(&setup, &incr1, &shrink_path);
    assert!(shrink.get("deltas").is_none(), "{shrink}");
    assert!(
        shrink["object"].as_str().unwrap().contains(&incr1),
        "{shrink}"
    );
    assert!(
        shrink["map"]["object"].as_str().unwrap().contains(&incr1),
        "{shrink}"
    );
    // An untouched table refers to the full's object and adds nothing.
    let tellers = manifest_entry(&setup, &incr1, &tellers_path);
    assert!(
        tellers["object"].as_str().unwrap().contains(&full),
        "{tellers}"
    );
    assert_eq!(tellers["stored_size"], 0, "{tellers}");

    p.sql(
        "UPDATE pgbench_accounts SET abalance = abalance - 3 WHERE aid BETWEEN 200000 AND 203000",
    );
    p.sql("DELETE FROM shrink WHERE id < 50");
    let (diff, out) = backup_typed(&setup, p, "diff");
    assert!(out.contains(&format!("(diff on {full})")), "{out}");
    let diff_fp = fingerprint(p, "postgres");

    p.sql("UPDATE pgbench_branches SET bbalance = bbalance + 1");
    p.sql("DROP TABLE newer");
    let (incr2, out) = backup_typed(&setup, p, "incr");
    assert!(out.contains(&format!("(incr on {diff})")), "{out}");
    // Nothing since the differential escapes WAL: only the blocks it
    // names are read.
    assert!(out.contains("changed blocks from WAL"), "{out}");
    let incr2_fp = fingerprint(p, "postgres");

    // The accounts change again: another delta on the differential's,
    // compared with the block hashes the base's map and the first delta
    // give together.
    p.sql(
        "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid BETWEEN 100000 AND 102000",
    );
    let (incr3, out) = backup_typed(&setup, p, "incr");
    assert!(out.contains(&format!("(incr on {incr2})")), "{out}");
    assert!(out.contains("changed blocks from WAL"), "{out}");
    let incr3_fp = fingerprint(p, "postgres");
    let accounts = manifest_entry(&setup, &incr3, &accounts_path);
    // The differential's delta, incr2's if autovacuum touched the table,
    // and this one's.
    assert!(
        accounts["deltas"].as_array().unwrap().len() >= 2,
        "{accounts}"
    );
    assert!(
        accounts["map"]["object"].as_str().unwrap().contains(&full),
        "{accounts}"
    );

    // Sizes: each chained backup adds a small part of the full.
    let list = list_json(&setup);
    let added = |l: &str| row(&list, l)["stored_size_bytes"].as_u64().unwrap();
    for (label, kind, reference) in [
        (&full, "full", None),
        (&incr1, "incr", Some(&full)),
        (&diff, "diff", Some(&full)),
        (&incr2, "incr", Some(&diff)),
    ] {
        let r = row(&list, label);
        assert_eq!(r["backup_type"], kind, "{r}");
        assert_eq!(
            r["reference"].as_str(),
            reference.map(|s| s.as_str()),
            "{r}"
        );
        // The first incremental and the differential also hold the whole
        // copied database.
        let factor = if label == &incr2 { 5 } else { 3 };
        if kind != "full" {
            assert!(
                added(label) * factor < added(&full),
                "{label} ({kind}) added {} bytes, the full {}",
                added(label),
                added(&full)
            );
            assert!(
                r["depends_on"]
                    .as_array()
                    .unwrap()
                    .contains(&full.as_str().into()),
                "{r}"
            );
        }
    }
    let verify = setup.walvault(&["verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);

    // Every backup restores to exactly what it saw.
    for (label, want, name) in [
        (&full, &full_fp, "r-full"),
        (&incr1, &incr1_fp, "r-incr1"),
        (&diff, &diff_fp, "r-diff"),
        (&incr2, &incr2_fp, "r-incr2"),
        (&incr3, &incr3_fp, "r-incr3"),
    ] {
        let mut r = restore_exactly(&setup, name, label, want);
        if label == &incr1 {
            assert_eq!(fingerprint(&r, "copied"), copied_fp);
        }
        // PostgreSQL's own check of every index and heap page it can reach.
        r.sql("CREATE EXTENSION IF NOT EXISTS amcheck");
        r.sql("SELECT bt_index_check(c.oid, true) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
               WHERE c.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') AND c.relnamespace = 'public'::regnamespace");
        r.stop();
    }

    // A second full: keep-full 1 removes the first chain whole, newest
    // first, and keeps the new full.
    let (full2, _) = backup_typed(&setup, p, "full");
    let out = setup.walvault(&["expire", "--keep-full", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list = list_json(&setup);
    let labels: Vec<&str> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, [full2.as_str()]);
}

/// When WAL can name the changed blocks, an incremental reads only those
/// (and blocks past the reference's end) and still restores exactly:
/// - a hint-bit-only change (no WAL with checksums off) is not stored:
///   the restore has the reference's page, which PostgreSQL accepts;
/// - a relation truncated by VACUUM and filled again (WAL says
///   "truncated") is compared whole and copied;
/// - a relation that only grew stores its new blocks.
///
/// When WAL cannot vouch, contents are compared, and the backup says why:
/// here `pg_checksums --enable` rewrote every block without WAL, and the
/// restore of the incremental passes `pg_checksums --check`.
#[test]
fn incrementals_read_what_wal_names_and_compare_contents_when_it_cannot() {
    let mut setup = Setup::new("incr-wal", Backend::Local);
    let p = &setup.primary;
    pgbench_init(p, 4);
    p.sql("CREATE TABLE hints(id int, pad text) WITH (autovacuum_enabled = off)");
    p.sql("INSERT INTO hints SELECT g, repeat('h', 200) FROM generate_series(1, 20000) g");
    p.sql("CREATE TABLE shrink(id int, pad text) WITH (autovacuum_enabled = off)");
    p.sql("INSERT INTO shrink SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g");
    p.sql("CREATE TABLE grow(id int, pad text) WITH (autovacuum_enabled = off)");
    p.sql("INSERT INTO grow SELECT g, repeat('g', 500) FROM generate_series(1, 4000) g");
    // Written out before any read sets the hints' hint bits.
    p.sql("CHECKPOINT");
    let path = |t| relpath(p, "postgres", t);
    let (hints_path, shrink_path, grow_path, accounts_path) = (
        path("hints"),
        path("shrink"),
        path("grow"),
        path("pgbench_accounts"),
    );
    let (full, _) = backup_typed(&setup, p, "full");
    let full_start_wal = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(open_repo(&setup).read_manifest(&full))
        .unwrap()
        .start_wal;

    // Hint bits only: reading every row sets them, without WAL.
    assert_eq!(p.sql("SELECT count(*) FROM hints"), "20000");
    p.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 4000");
    p.sql("DELETE FROM shrink WHERE id > 100");
    p.sql("VACUUM shrink");
    p.sql("INSERT INTO shrink SELECT g, repeat('y', 500) FROM generate_series(1, 19900) g");
    p.sql("INSERT INTO grow SELECT g, repeat('G', 500) FROM generate_series(4001, 6000) g");
    // The WAL since the full backup started leaves pg_wal (archived,
    // then removed or recycled by checkpoints): the incremental reads it
    // back from the repository.
    for _ in 0..3 {
        p.switch_and_wait_archived(120);
        p.sql("CHECKPOINT");
    }
    assert!(
        !p.data.join("pg_wal").join(&full_start_wal).exists(),
        "{full_start_wal} is still in pg_wal"
    );
    let (incr, out) = backup_typed(&setup, p, "incr");
    assert!(out.contains(&format!("(incr on {full})")), "{out}");
    assert!(out.contains("changed blocks from WAL"), "{out}");
    let want = fingerprint(p, "postgres");

    let hints = manifest_entry(&setup, &incr, &hints_path);
    assert_eq!(hints["stored_size"], 0, "{hints}");
    assert!(hints.get("deltas").is_none(), "{hints}");
    let shrink = manifest_entry(&setup, &incr, &shrink_path);
    assert!(
        shrink["object"].as_str().unwrap().contains(&incr),
        "{shrink}"
    );
    for grown in [&grow_path, &accounts_path] {
        let e = manifest_entry(&setup, &incr, grown);
        assert_eq!(e["deltas"].as_array().map(|d| d.len()), Some(1), "{e}");
        assert!(e["map"]["object"].as_str().unwrap().contains(&full), "{e}");
    }
    let verify = setup.walvault(&["verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    // --compare-contents: WAL is not consulted.
    p.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN 8000 AND 9000");
    let (forced, out) = backup_with(&setup, p, &["--type", "incr", "--compare-contents"]);
    assert!(out.contains(&format!("(incr on {incr})")), "{out}");
    assert!(
        out.contains("changed files found by comparing contents: --compare-contents was given"),
        "{out}"
    );
    let want_forced = fingerprint(p, "postgres");
    restore_exactly(&setup, "r-forced", &forced, &want_forced).stop();
    let mut r = restore_exactly(&setup, "r-incr", &incr, &want);
    r.sql("CREATE EXTENSION IF NOT EXISTS amcheck");
    r.sql("SELECT bt_index_check(c.oid, true) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
           WHERE c.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') AND c.relnamespace = 'public'::regnamespace");
    r.stop();

    // Data checksums turned on offline: every block rewritten, no WAL.
    setup.primary.stop();
    run_ok(
        crate::harness::as_postgres(setup.primary.server_bin.join("pg_checksums"))
            .arg("--enable")
            .arg("-D")
            .arg(&setup.primary.data),
    );
    setup.primary.start();
    let p = &setup.primary;
    p.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN 5000 AND 6000");
    let (incr2, out) = backup_typed(&setup, p, "incr");
    assert!(out.contains(&format!("(incr on {forced})")), "{out}");
    assert!(
        out.contains("changed files found by comparing contents: data checksums were turned on"),
        "{out}"
    );
    let want = fingerprint(p, "postgres");
    let mut r = restore_exactly(&setup, "r-incr2", &incr2, &want);
    r.stop();
    run_ok(
        crate::harness::as_postgres(setup.primary.server_bin.join("pg_checksums"))
            .arg("--check")
            .arg("-D")
            .arg(&r.data),
    );
}

#[test]
fn a_chain_without_its_base_is_refused_and_expire_keeps_bases() {
    let setup = Setup::new("incr-base", Backend::Local);
    let p = &setup.primary;
    p.sql("CREATE TABLE t(id int, pad text)");
    p.sql("INSERT INTO t SELECT g, repeat('t', 300) FROM generate_series(1, 20000) g");
    // Hint bits set before the full, so the update below changes few pages.
    p.sql("VACUUM t");
    p.sql("CHECKPOINT");
    let (full, _) = backup_typed(&setup, p, "full");
    p.sql("UPDATE t SET pad = 'changed' WHERE id < 100");
    let (incr, _) = backup_typed(&setup, p, "incr");

    // keep-full 1 with one full keeps both; keep-days 0 keeps the newest
    // and therefore the full it is built on.
    for args in [["--keep-full", "1"], ["--keep-days", "0"]] {
        let out = setup.walvault(&["expire", args[0], args[1]]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let list = list_json(&setup);
        assert_eq!(
            list["backups"].as_array().unwrap().len(),
            2,
            "{args:?}: {list}"
        );
    }

    // The full's manifest gone (damage): restoring the incremental says
    // what it is built on, with the corruption exit code, writing nothing.
    let repo = setup.local_repo.as_ref().unwrap();
    let manifest = repo.join(format!("backup/{full}/manifest"));
    let summary = repo.join(format!("backup/{full}/summary"));
    std::fs::rename(&manifest, repo.join("manifest.aside")).unwrap();
    std::fs::rename(&summary, repo.join("summary.aside")).unwrap();
    let (out, pgdata) = setup.restore("r", &["--backup", &incr]);
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("backup {incr} is built on backup {full}")),
        "{}",
        out.stderr
    );
    assert!(!pgdata.join("global").exists(), "nothing restored");
    let verify = setup.walvault(&["verify"]);
    assert_ne!(verify.code, 0);
    assert!(
        verify.stdout.contains(&format!(
            "backup {incr} is built on backup {full}, which is not a complete backup"
        )),
        "{}{}",
        verify.stdout,
        verify.stderr
    );
    std::fs::rename(repo.join("manifest.aside"), &manifest).unwrap();
    std::fs::rename(repo.join("summary.aside"), &summary).unwrap();

    // A damaged delta is found by the restore's check, never restored.
    let t_path = sql_in(p, "postgres", "SELECT pg_relation_filepath('t')");
    let entry = manifest_entry(&setup, &incr, &t_path);
    let delta = entry["deltas"][0]["object"].as_str().unwrap().to_string();
    let delta_path = repo.join(&delta);
    let mut bytes = std::fs::read(&delta_path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&delta_path, &bytes).unwrap();
    let (out, _) = setup.restore("r2", &["--backup", &incr]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains(&delta), "{}", out.stderr);
}

/// Every path under `dir` with its kind and, for files, a hash of the
/// contents (postgresql.auto.conf without walvault's time-stamped comment).
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
                out.push(format!("{rel}/"));
            } else if meta.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(e.path()).unwrap().display()
                ));
            } else {
                let mut bytes = std::fs::read(e.path()).unwrap();
                if rel == "postgresql.auto.conf" {
                    let text = String::from_utf8(bytes).unwrap();
                    bytes = text
                        .lines()
                        .filter(|l| !l.contains("written by walvault restore at"))
                        .collect::<Vec<_>>()
                        .join("\n")
                        .into_bytes();
                }
                out.push(format!("{rel} {}", walvault::stream::Checksum::of(&bytes)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn delta_restore_rewrites_only_what_differs_and_ends_as_a_fresh_restore() {
    let setup = Setup::new("delta", Backend::Local);
    let p = &setup.primary;
    pgbench_init(p, 2);
    p.sql("CREATE TABLE keep_me(id int)");
    p.sql("INSERT INTO keep_me SELECT generate_series(1, 1000)");
    // Written out, and then quiet: files whose time is in the second the
    // backup starts are compared, not trusted.
    p.sql("CHECKPOINT");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (full, _) = backup_typed(&setup, p, "full");
    let want = fingerprint(p, "postgres");
    let restore_args = [
        "--backup",
        full.as_str(),
        "--target-immediate",
        "--archive-mode",
        "off",
    ];

    // A copy that ran and drifted: rows changed, a table dropped, one
    // created, a stray file.
    let mut copy = setup.restore_and_start("copy", &restore_args);
    copy.sql("UPDATE pgbench_accounts SET abalance = 1 WHERE aid < 50");
    copy.sql("DROP TABLE keep_me");
    copy.sql("CREATE TABLE extra AS SELECT generate_series(1, 5000) AS x");
    copy.sql("CHECKPOINT");

    // Refused while it runs, and nothing is touched.
    let (out, _) = setup.restore("copy", &[&["--delta"][..], &restore_args].concat());
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert!(
        out.stderr.contains("running PostgreSQL server"),
        "{}",
        out.stderr
    );
    assert_ne!(fingerprint(&copy, "postgres"), want);
    copy.stop();
    std::fs::write(copy.data.join("base/stray"), b"not in the backup").unwrap();

    let (out, pgdata) = setup.restore("copy", &[&["--delta"][..], &restore_args].concat());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("delta:"))
        .unwrap()
        .to_string();
    let number = |word: &str| -> usize {
        let before = line.split(word).next().unwrap();
        before
            .split_whitespace()
            .last()
            .unwrap()
            .trim_start_matches('(')
            .parse()
            .unwrap()
    };
    let (kept, written, removed) = (
        number(" files kept"),
        number(" written"),
        number(" removed"),
    );
    assert!(kept > 500, "most files are kept: {line}");
    assert!(written * 5 < kept, "few files written: {line}");
    assert!(removed >= 2, "the stray file and the new table go: {line}");
    // pgbench_accounts changed in a few blocks: patched, not rewritten.
    let (patched, blocks) = (number(" patched"), number(" blocks)"));
    assert!(patched >= 1, "{line}");
    let accounts_blocks = 26 * 1024 / 8;
    assert!(blocks > 0 && blocks * 10 < accounts_blocks, "{line}");

    // The same tree as a fresh restore of the same backup.
    let (fresh_out, fresh) = setup.restore("fresh", &restore_args);
    assert_eq!(fresh_out.code, 0, "{}", fresh_out.stderr);
    assert_eq!(tree(&pgdata), tree(&fresh));

    start_and_check(&setup, "copy", &pgdata, &want);

    // A data directory of another cluster is refused unless forced.
    let other = PgCluster::init(setup.dir.path(), "other", &[]);
    let mut args = vec!["--delta"];
    args.extend_from_slice(&restore_args);
    let out = setup.walvault(
        &[
            &["restore", "--pgdata", other.data.to_str().unwrap()][..],
            &args,
        ]
        .concat(),
    );
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert!(
        out.stderr.contains("holds another cluster"),
        "{}",
        out.stderr
    );
    assert!(
        other.data.join("global/pg_control").exists(),
        "left untouched"
    );
    args.push("--force");
    let restore_other = |args: &[&str]| {
        setup.walvault(
            &[
                &["restore", "--pgdata", other.data.to_str().unwrap()][..],
                args,
            ]
            .concat(),
        )
    };
    let out = restore_other(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(tree(&other.data), tree(&fresh));

    // --delta-force-checksum reads every file, and keeps those equal.
    args.push("--delta-force-checksum");
    let out = restore_other(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("delta: 0 files kept"), "{}", out.stdout);
    assert!(
        !out.stdout.contains(" 0 equal by checksum"),
        "{}",
        out.stdout
    );

    // Killed at some moment: pg_control is either gone (nothing can start
    // the half-written directory) or the restore had finished; running it
    // again ends as a fresh restore, and the cluster starts.
    for delay_ms in [5, 40, 150] {
        let before = tree(&pgdata);
        let mut child = setup
            .command(
                &[
                    &["restore", "--pgdata", pgdata.to_str().unwrap()][..],
                    &args,
                ]
                .concat(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            let after = tree(&pgdata);
            assert!(
                !pgdata.join("global/pg_control").exists()
                    || after == before
                    || after == tree(&fresh),
                "a killed delta restore left a startable, half-written directory"
            );
        }
        let (out, _) = setup.restore("copy", &[&["--delta"][..], &restore_args].concat());
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(tree(&pgdata), tree(&fresh));
    }
    start_and_check(&setup, "copy", &pgdata, &want);
}

#[test]
fn incremental_backups_on_s3_restore_exactly() {
    let setup = Setup::new("incr-s3", Backend::S3);
    let p = &setup.primary;
    pgbench_init(p, 2);
    let (full, _) = backup_typed(&setup, p, "full");
    p.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 2000");
    p.sql("CREATE TABLE added AS SELECT generate_series(1, 3000) AS x");
    let (incr, out) = backup_typed(&setup, p, "incr");
    assert!(out.contains(&format!("(incr on {full})")), "{out}");
    let list = list_json(&setup);
    assert!(
        row(&list, &incr)["stored_size_bytes"].as_u64().unwrap() * 5
            < row(&list, &full)["stored_size_bytes"].as_u64().unwrap(),
        "{list}"
    );
    // --trust-mtime: files whose size and time are the reference's are not
    // read; the changed ones (new times) still are.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    p.sql(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN 100000 AND 101000",
    );
    p.sql("CHECKPOINT");
    let (trusted, out) = backup_with(&setup, p, &["--type", "incr", "--trust-mtime"]);
    assert!(out.contains(&format!("(incr on {incr})")), "{out}");
    let want = fingerprint(p, "postgres");
    let verify = setup.walvault(&["verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    let r = setup.restore_and_start(
        "r",
        &[
            "--backup",
            &trusted,
            "--target-immediate",
            "--archive-mode",
            "off",
        ],
    );
    assert_eq!(fingerprint(&r, "postgres"), want);
}

#[test]
fn delta_restore_with_a_tablespace_patches_it_in_place() {
    let setup = Setup::new("delta-ts", Backend::Local);
    let p = &setup.primary;
    let ts_dir = setup.dir.subdir("ts1");
    p.sql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        ts_dir.display()
    ));
    p.sql("CREATE TABLE big(id int, note text) TABLESPACE ts1");
    p.sql("INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g");
    p.sql("VACUUM big");
    p.sql("CHECKPOINT");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (full, _) = backup_typed(&setup, p, "full");
    let want = fingerprint(p, "postgres");
    let oid = p.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    let location = setup.dir.path().join("ts1-copy");
    let map = format!("{oid}={}", location.display());
    let args = [
        "--backup",
        full.as_str(),
        "--target-immediate",
        "--archive-mode",
        "off",
        "--tablespace-map",
        map.as_str(),
    ];

    // A copy with its tablespace elsewhere, which then drifts.
    let mut copy = setup.restore_and_start("copy", &args);
    copy.sql("UPDATE big SET note = 'changed' WHERE id <= 50");
    copy.sql("CREATE TABLE extra TABLESPACE ts1 AS SELECT generate_series(1, 100) AS x");
    copy.sql("CHECKPOINT");
    copy.stop();
    // Another cluster's directory in the same tablespace location is
    // never touched.
    let foreign = location.join("PG_14_202107181");
    std::fs::create_dir_all(foreign.join("1")).unwrap();
    std::fs::write(foreign.join("1/16384"), b"another cluster").unwrap();

    let (out, pgdata) = setup.restore("copy", &[&["--delta"][..], &args].concat());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(" patched ("), "{}", out.stdout);
    assert_eq!(
        std::fs::read(foreign.join("1/16384")).unwrap(),
        b"another cluster"
    );
    let link = std::fs::read_link(pgdata.join(format!("pg_tblspc/{oid}"))).unwrap();
    assert_eq!(link, location);

    let mut copy = PgCluster::existing(setup.dir.path(), "copy", pgdata);
    copy.start();
    copy.wait_promoted(180);
    assert_eq!(fingerprint(&copy, "postgres"), want);
    assert_eq!(
        copy.sql("SELECT count(*) FROM pg_class WHERE relname = 'extra'"),
        "0"
    );
    copy.stop();
}

/// The repository of a local setup, opened by the library.
fn open_repo(setup: &Setup) -> walvault::repo::Repository {
    let root = setup.local_repo.as_ref().unwrap();
    walvault::repo::Repository::new(
        std::sync::Arc::new(walvault::storage::local::LocalStore::new(root.clone()).unwrap()),
        walvault::repo::CompressSettings::default(),
    )
}

/// Rewrites a backup as an older walvault wrote it: the file list inline
/// in a version-`version` manifest, no file list object, no summary.
fn rewrite_inline(setup: &Setup, label: &str, version: u32) {
    use walvault::repo::layout;
    let repo = open_repo(setup);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut manifest = repo.read_manifest(label).await.unwrap();
        assert_eq!(manifest.manifest_version, 3);
        let list = repo.file_list(&manifest).await.unwrap();
        manifest.files = list.iter().map(|f| f.unwrap()).collect();
        // Older versions wrote the list in plain string order.
        manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
        let list_key =
            walvault::storage::Key::new(manifest.file_list.take().unwrap().object).unwrap();
        manifest.file_count = None;
        manifest.manifest_version = version;
        let store = repo.store();
        store.delete(&layout::summary_key(label)).await.unwrap();
        store.delete(&list_key).await.unwrap();
        replace_manifest(&repo, &manifest).await;
    });
}

/// Writes an object create-only, through the repository's envelope.
async fn put_object(
    repo: &walvault::repo::Repository,
    key: &walvault::storage::Key,
    bytes: &[u8],
) -> walvault::repo::object::ObjectInfo {
    let mut src = bytes;
    walvault::repo::object::write_object(
        repo.store(),
        key,
        walvault::storage::PutMode::Create,
        &mut src,
        repo.compress(),
    )
    .await
    .unwrap()
}

/// Replaces a backup's manifest with `manifest`.
async fn replace_manifest(
    repo: &walvault::repo::Repository,
    manifest: &walvault::repo::manifest::BackupManifest,
) {
    let key = walvault::repo::layout::manifest_key(&manifest.label);
    repo.store().delete(&key).await.unwrap();
    put_object(repo, &key, &serde_json::to_vec_pretty(manifest).unwrap()).await;
}

/// Rewrites a backup's block maps as walvault wrote them before layout 2
/// (BLAKE3 block hashes, layout 1), with its file list inline in a
/// version-1 manifest (as that walvault wrote full backups).
fn rewrite_maps_as_layout_one(setup: &Setup, label: &str) -> usize {
    use walvault::repo::blocks::{BlockMap, HashKind};
    use walvault::repo::{manifest::ObjectRef, object};
    use walvault::storage::Key;
    rewrite_inline(setup, label, 1);
    let repo = open_repo(setup);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = repo.store();
        let mut manifest = repo.read_manifest(label).await.unwrap();
        let block_size = manifest.block_size.unwrap();
        let mut rewritten = 0;
        for f in manifest.files.iter_mut() {
            let Some(map) = f.map.clone() else { continue };
            let (content, _) = object::read_to_vec(store, &Key::new(f.object.clone()).unwrap())
                .await
                .unwrap();
            let old = BlockMap::of(HashKind::Blake3, block_size, &content).encode();
            let key = Key::new(map.object.clone()).unwrap();
            store.delete(&key).await.unwrap();
            let info = put_object(&repo, &key, &old).await;
            f.map = Some(ObjectRef {
                object: map.object,
                raw_size: info.raw_size,
                checksum: info.checksum,
            });
            rewritten += 1;
        }
        replace_manifest(&repo, &manifest).await;
        rewritten
    })
}

/// The layout byte of a stored block map or delta.
fn block_layout(setup: &Setup, object: &str) -> u8 {
    let repo = open_repo(setup);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let key = walvault::storage::Key::new(object.to_string()).unwrap();
        walvault::repo::object::read_to_vec(repo.store(), &key)
            .await
            .unwrap()
            .0[4]
    })
}

/// A repository written before block hashes moved to XXH3 (block maps and
/// deltas of layout 1, BLAKE3) stays usable: an incremental against it
/// continues the chain in layout 1, the chain restores exactly, and a
/// delta restore patches a copy of the full backup into the incremental
/// block by block. A new full backup is layout 3.
#[test]
fn layout_one_block_maps_stay_usable() {
    let setup = Setup::new("layout-one", Backend::Local);
    let p = &setup.primary;
    pgbench_init(p, 2);
    p.sql("CHECKPOINT");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (full, _) = backup_typed(&setup, p, "full");
    assert!(
        rewrite_maps_as_layout_one(&setup, &full) > 0,
        "no block map"
    );
    let accounts = relpath(p, "postgres", "pgbench_accounts");
    let base = manifest_entry(&setup, &full, &accounts);
    assert_eq!(
        block_layout(&setup, base["map"]["object"].as_str().unwrap()),
        1
    );

    p.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 300");
    p.sql("CHECKPOINT");
    let (incr, out) = backup_typed(&setup, p, "incr");
    assert!(out.contains(&format!("(incr on {full})")), "{out}");
    let want = fingerprint(p, "postgres");
    let entry = manifest_entry(&setup, &incr, &accounts);
    let deltas = entry["deltas"].as_array().expect("a block delta");
    assert_eq!(
        block_layout(&setup, deltas[0]["object"].as_str().unwrap()),
        1,
        "the chain goes on in layout 1: {entry}"
    );
    let verify = setup.walvault(&["verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    restore_exactly(&setup, "r-incr", &incr, &want).stop();

    // A copy of the full backup, patched into the incremental.
    let full_args = [
        "--backup",
        full.as_str(),
        "--target-immediate",
        "--archive-mode",
        "off",
    ];
    let (out, _) = setup.restore("copy", &full_args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (out, pgdata) = setup.restore(
        "copy",
        &[
            "--delta",
            "--backup",
            &incr,
            "--target-immediate",
            "--archive-mode",
            "off",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(" patched ("), "{}", out.stdout);
    start_and_check(&setup, "copy", &pgdata, &want);

    let (full2, _) = backup_typed(&setup, p, "full");
    let entry = manifest_entry(&setup, &full2, &accounts);
    assert_eq!(
        block_layout(&setup, entry["map"]["object"].as_str().unwrap()),
        3
    );
}

/// Backups written before the file list became its own object (version 1
/// for full, version 2 for differential and incremental, files inline)
/// still list, verify, serve as references and restore exactly.
#[test]
fn backups_with_inline_file_lists_stay_readable() {
    let setup = Setup::new("inline-lists", Backend::Local);
    let p = &setup.primary;
    pgbench_init(p, 2);
    // Names that string order and path order sort differently.
    for dir in ["base.x", "base-y"] {
        let d = p.data.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), dir).unwrap();
        crate::harness::give_to_postgres(&d);
    }
    let (full, _) = backup_typed(&setup, p, "full");
    p.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 2000");
    let (incr, _) = backup_typed(&setup, p, "incr");
    let incr_fp = fingerprint(p, "postgres");
    rewrite_inline(&setup, &full, 1);
    rewrite_inline(&setup, &incr, 2);

    let list = list_json(&setup);
    assert_eq!(row(&list, &incr)["backup_type"], "incr", "{list}");
    let verify = setup.walvault(&["verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    // A new incremental compares with the inline list of the old one.
    p.sql(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN 100000 AND 101000",
    );
    let (incr2, out) = backup_typed(&setup, p, "incr");
    assert!(out.contains(&format!("(incr on {incr})")), "{out}");
    let incr2_fp = fingerprint(p, "postgres");
    let tellers = manifest_entry(&setup, &incr2, &relpath(p, "postgres", "pgbench_tellers"));
    assert!(
        tellers["object"].as_str().unwrap().contains(&full),
        "{tellers}"
    );

    for (label, want, name) in [(&incr, &incr_fp, "r-incr"), (&incr2, &incr2_fp, "r-incr2")] {
        let mut r = restore_exactly(&setup, name, label, want);
        assert_eq!(
            std::fs::read_to_string(r.data.join("base.x/f")).unwrap(),
            "base.x"
        );
        r.stop();
    }
}

/// Peak resident memory of a command, from GNU time (its `wait4`).
fn peak_rss_kib(cmd: &mut std::process::Command) -> (crate::harness::Ran, u64) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut timed = std::process::Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(out.path())
        .arg(program)
        .args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let ran = crate::harness::run(&mut timed);
    let kib = std::fs::read_to_string(out.path())
        .unwrap()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("GNU time gave no figure: {}", ran.stderr));
    (ran, kib)
}

/// Memory does not grow with the number of files: a backup, an
/// incremental, a listing and a restore of a data directory with 40,000
/// more small files stay within 32 MiB of the same commands on the bare
/// cluster (an in-memory file list costs about 1.5 KiB a file, 60 MiB
/// here). docs/BENCHMARKS.md has the million-file run.
#[test]
fn many_files_back_up_and_restore_in_bounded_memory() {
    let setup = Setup::new("many-files", Backend::Local);
    let p = &setup.primary;
    let conninfo = Setup::conninfo(p);
    let pgdata = p.data.to_str().unwrap().to_string();
    let backup = |kind: &str| {
        let (ran, kib) = peak_rss_kib(&mut setup.command(&[
            "backup",
            "--pgdata",
            &pgdata,
            "--dbname",
            &conninfo,
            "--no-progress",
            "--type",
            kind,
        ]));
        assert_eq!(ran.code, 0, "backup: {}", ran.stderr);
        (
            ran.stdout.split_whitespace().nth(1).unwrap().to_string(),
            kib,
        )
    };
    let restore = |label: &str, name: &str| {
        let target = setup.dir.path().join(name);
        let (ran, kib) = peak_rss_kib(&mut setup.command(&[
            "restore",
            "--pgdata",
            target.to_str().unwrap(),
            "--backup",
            label,
        ]));
        assert_eq!(ran.code, 0, "restore: {}", ran.stderr);
        (target, kib)
    };
    let delta = |label: &str, target: &std::path::Path| {
        let (ran, kib) = peak_rss_kib(&mut setup.command(&[
            "restore",
            "--delta",
            "--pgdata",
            target.to_str().unwrap(),
            "--backup",
            label,
        ]));
        assert_eq!(ran.code, 0, "delta restore: {}", ran.stderr);
        kib
    };
    let list = || {
        let (ran, kib) = peak_rss_kib(&mut setup.command(&["list"]));
        assert_eq!(ran.code, 0, "list: {}", ran.stderr);
        kib
    };
    let (small, small_backup) = backup("full");
    let (small_dir, small_restore) = restore(&small, "r-small");
    let small_list = list();
    let small_delta = delta(&small, &small_dir);
    std::fs::remove_dir_all(&small_dir).unwrap();

    let many = 40_000;
    let dir = p.data.join("many_files");
    for i in 0..many {
        let sub = dir.join(format!("{}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        std::fs::write(sub.join(i.to_string()), format!("file {i}")).unwrap();
    }
    crate::harness::give_to_postgres(&dir);
    let (big, big_backup) = backup("full");
    for i in (0..many).step_by(100) {
        std::fs::write(
            dir.join(format!("{}/{i}", i / 1000)),
            format!("changed {i}"),
        )
        .unwrap();
    }
    let (incr, incr_backup) = backup("incr");
    let big_list = list();
    let (restored, big_restore) = restore(&incr, "r-big");
    // The incremental's directory taken back to the full by a delta
    // restore (restored again below, to the incremental).
    let big_delta = delta(&big, &restored);
    for i in (0..many).step_by(100) {
        let path = restored.join(format!("many_files/{}/{i}", i / 1000));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("file {i}"));
    }
    let big_delta_back = delta(&incr, &restored);
    // Allocator arenas and zstd contexts make a few MiB of noise that
    // does not grow with the file count (a million files peak under 64
    // MiB: docs/BENCHMARKS.md); an in-memory list would add 60 MiB here.
    let limit = 32 * 1024;
    for (what, small, big) in [
        ("full backup", small_backup, big_backup),
        ("incremental backup", small_backup, incr_backup),
        ("restore", small_restore, big_restore),
        ("delta restore", small_delta, big_delta),
        ("delta restore back", small_delta, big_delta_back),
        ("list", small_list, big_list),
    ] {
        eprintln!("{what}: peak RSS {small} KiB bare, {big} KiB with {many} more files");
        assert!(
            big < small + limit,
            "{what} took {big} KiB with {many} more files, {small} KiB without: memory grows with the file count"
        );
    }
    // Every file is back, the changed ones changed.
    for i in (0..many).step_by(7) {
        let want = if i % 100 == 0 {
            format!("changed {i}")
        } else {
            format!("file {i}")
        };
        let path = restored.join(format!("many_files/{}/{i}", i / 1000));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            want,
            "{}",
            path.display()
        );
    }
    let count = walkdir_count(&restored.join("many_files"));
    assert_eq!(count, many, "every file restored");
    let _ = big;
}

fn walkdir_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walkdir_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}
