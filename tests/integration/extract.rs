//! `walvault extract` against real PostgreSQL 15 clusters: a table dropped
//! at T+1 comes back as of T into a new database of the running cluster,
//! row for row, with nothing existing touched; a name already taken and a
//! scratch file system too small are refused before anything is loaded.

use std::process::Command;
use std::time::Duration;

use crate::harness::{give_to_postgres, run, Ran};
use crate::pitr::{server_now, Backend, Setup};

fn extract(setup: &Setup, args: &[&str]) -> Ran {
    // The test's own copy of the binaries: the scratch server's
    // restore_command must be reachable by the postgres user.
    let mut cmd = Command::new(setup.dir.path().join("bin/walvault"));
    cmd.args(&setup.repo_args).arg("extract").args(args);
    run(&mut cmd)
}

fn scratch_dirs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("walvault-verify-")
        })
        .count()
}

#[test]
fn a_dropped_table_comes_back_from_before_the_drop() {
    let setup = Setup::new("extract", Backend::Local);
    let p = &setup.primary;
    p.sql("CREATE TABLE docs(id int primary key, note text)");
    p.sql("INSERT INTO docs SELECT g, md5(g::text) FROM generate_series(1, 500) g");
    p.sql("CREATE TABLE other(i int)");
    setup.backup(p);
    p.sql("INSERT INTO docs SELECT g, md5(g::text) FROM generate_series(501, 700) g");
    let want = p.sql("SELECT count(*) || ':' || sum(id) || ':' || md5(string_agg(note, ',' ORDER BY id)) FROM docs");
    std::thread::sleep(Duration::from_millis(1100));
    let target = server_now(p);
    std::thread::sleep(Duration::from_millis(1100));
    p.sql("DROP TABLE docs");
    p.sql("INSERT INTO other VALUES (1)");
    p.switch_and_wait_archived(120);

    let work = setup.dir.subdir("work");
    give_to_postgres(&work);
    let into = Setup::conninfo(p);
    let args = [
        "--db",
        "postgres",
        "--table",
        "docs",
        "--target-time",
        &target,
        "--into",
        &into,
        "--work-dir",
        work.to_str().unwrap(),
    ];
    let out = extract(&setup, &args);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("[1] ") && out.stdout.contains("dumping table(s) docs"),
        "{}",
        out.stdout
    );
    let name = out
        .stdout
        .split("into database \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert!(name.starts_with("postgres_at_"), "{name}");
    let in_new = Command::new(crate::harness::pg_bin("psql"))
        .args(["-X", "-A", "-t", "-h"])
        .arg(&p.socket_dir)
        .args(["-p", &p.port.to_string(), "-U", "postgres", "-d", &name, "-c"])
        .arg("SELECT count(*) || ':' || sum(id) || ':' || md5(string_agg(note, ',' ORDER BY id)) FROM docs")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&in_new.stdout).trim(),
        want,
        "{}",
        String::from_utf8_lossy(&in_new.stderr)
    );
    // Nothing existing was touched: docs is still gone from postgres, and
    // other kept its row.
    assert_eq!(
        p.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'docs'"),
        "0"
    );
    assert_eq!(p.sql("SELECT count(*) FROM other"), "1");
    assert_eq!(scratch_dirs(&work), 0, "the scratch restore was removed");

    // The same name again: refused before restoring anything.
    let out = extract(&setup, &args);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("already exists on the target") && out.stderr.contains("--as"),
        "{}",
        out.stderr
    );

    // A scratch file system too small: refused, saying how much it needs.
    let tiny = setup.dir.subdir("tiny");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&tiny)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mount a 2 MiB tmpfs (the tests run as root)");
    give_to_postgres(&tiny);
    let mut small = args.to_vec();
    let tiny_s = tiny.to_str().unwrap().to_string();
    small[9] = &tiny_s;
    small.extend(["--as", "docs_back"]);
    let out = extract(&setup, &small);
    let _ = Command::new("umount").arg(&tiny).status();
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert!(
        out.stderr.contains("not enough space") && out.stderr.contains("needs about"),
        "{}",
        out.stderr
    );
    assert_eq!(
        p.sql("SELECT count(*) FROM pg_database WHERE datname = 'docs_back'"),
        "0"
    );

    // --replace: into postgres itself, where docs was dropped; the other
    // table there stays as it is.
    let mut replace = args.to_vec();
    replace.push("--replace");
    let out = extract(&setup, &replace);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        p.sql("SELECT count(*) || ':' || sum(id) || ':' || md5(string_agg(note, ',' ORDER BY id)) FROM docs"),
        want
    );
    assert_eq!(p.sql("SELECT count(*) FROM other"), "1");
    // --replace of a database the target lacks is refused.
    let mut missing = replace.clone();
    missing[1] = "no_such_db";
    let out = extract(&setup, &missing);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
}
