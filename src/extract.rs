//! `walvault extract`: one database, or some of its tables, back from a
//! moment in the past into a running cluster, without rolling anything
//! else back.
//!
//! The backup the target needs is restored into a scratch directory and
//! recovered there on a private socket with archiving off (the scratch
//! server of `verify --restore`); `pg_dump` of the backup's major dumps
//! the database or tables; `pg_restore` loads them into the target
//! cluster under a new database name, so nothing existing is touched
//! unless `--replace` is given. The scratch directory goes in the end,
//! whatever happened.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::repo::Repository;
use crate::verify::restore::{
    start_scratch, wait_recovered, RestoreVerifyError, RestoreVerifyOptions,
};

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub db: String,
    /// Only these tables (pg_dump `-t` patterns); all of `db` when empty.
    pub tables: Vec<String>,
    /// Where to load: a libpq connection string or URI of the target.
    pub into: String,
    /// The database to load into; `None`: `<db>_at_<target>`.
    pub new_name: Option<String>,
    /// Load into `db` itself on the target, replacing the dumped objects.
    pub replace: bool,
    /// The scratch restore (its target is the moment to go back to).
    pub scratch: RestoreVerifyOptions,
}

#[derive(Debug)]
pub struct ExtractReport {
    pub backup_label: String,
    /// The database on the target the dump went into.
    pub database: String,
    pub duration_secs: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("database \"{name}\" already exists on the target\nHINT: choose another name with --as NAME, or pass --replace to load into \"{db}\" itself")]
    Exists { name: String, db: String },
    #[error("--replace loads into database \"{0}\" on the target, which does not exist\nHINT: leave out --replace to load into a new database")]
    NoTarget(String),
    #[error("the target ({into}): {reason}\nHINT: --into takes a connection string, e.g. 'host=/var/run/postgresql dbname=postgres'")]
    Target { into: String, reason: String },
    #[error("not enough space in \"{dir}\" for the scratch restore: it needs about {need}, {free} is free\nHINT: free some space, or pass --work-dir on a larger file system")]
    Space {
        dir: PathBuf,
        need: String,
        free: String,
    },
    #[error(transparent)]
    Scratch(#[from] RestoreVerifyError),
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
}

/// The default name: `<db>_at_<YYYYMMDDTHHMMSS>` of the target time (UTC),
/// within PostgreSQL's 63 bytes.
pub fn plan_new_name(db: &str, at: Option<jiff::Timestamp>) -> String {
    let when = at
        .map(|t| t.strftime("%Y%m%dT%H%M%S").to_string())
        .unwrap_or_else(|| "backup".to_string());
    let suffix = format!("_at_{when}");
    let mut base = db.to_string();
    while base.len() + suffix.len() > 63 {
        base.pop();
    }
    format!("{base}{suffix}")
}

/// Room for a restore of `data_bytes`: the data, a tenth more for the WAL
/// replayed and the dump, and 64 MiB.
pub fn plan_space(data_bytes: u64, free_bytes: u64) -> Result<(), (u64, u64)> {
    let need = data_bytes + data_bytes / 10 + (64 << 20);
    if free_bytes < need {
        Err((need, free_bytes))
    } else {
        Ok(())
    }
}

/// Free bytes for an unprivileged user in the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A key=value connection string for pg_restore: the target's hosts,
/// ports, user and TLS mode, database `db`, and never the password (it
/// goes in `PGPASSWORD`, out of process listings).
pub fn plan_conninfo(config: &tokio_postgres::Config, db: &str) -> String {
    let mut parts = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", conninfo_value(&hosts.join(","))));
    }
    let ports: Vec<String> = config.get_ports().iter().map(|p| p.to_string()).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", conninfo_value(&ports.join(","))));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", conninfo_value(user)));
    }
    let sslmode = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => "disable",
        tokio_postgres::config::SslMode::Require => "require",
        _ => "prefer",
    };
    parts.push(format!("sslmode={sslmode}"));
    parts.push(format!("dbname={}", conninfo_value(db)));
    parts.join(" ")
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn run_step(step: &'static str, cmd: &mut std::process::Command) -> Result<(), ExtractError> {
    let out = cmd.output().map_err(|e| ExtractError::Step {
        step,
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ExtractError::Step {
            step,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Extracts, reporting each step to `progress`.
pub async fn run_extract(
    repo: &Repository,
    opts: &ExtractOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<ExtractReport, ExtractError> {
    let started = Instant::now();
    let target_err = |reason: String| ExtractError::Target {
        into: crate::notify::redact(&opts.into).replace("(an invalid URL)", "--into"),
        reason,
    };
    let at = match &opts.scratch.target {
        crate::restore::target::RecoveryTarget::Time(t) => Some(*t),
        _ => None,
    };
    let name = if opts.replace {
        opts.db.clone()
    } else {
        opts.new_name
            .clone()
            .unwrap_or_else(|| plan_new_name(&opts.db, at))
    };

    // The target first: nothing is restored for a load that cannot happen.
    progress(&format!("checking the target for database \"{name}\""));
    let config: tokio_postgres::Config = opts
        .into
        .parse()
        .map_err(|e: tokio_postgres::Error| target_err(e.to_string()))?;
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| target_err(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| target_err(e.to_string()))?
        .is_some();
    match (exists, opts.replace) {
        (true, false) => {
            return Err(ExtractError::Exists {
                name,
                db: opts.db.clone(),
            })
        }
        (false, true) => return Err(ExtractError::NoTarget(name)),
        _ => {}
    }
    drop(client);

    progress("restoring the backup into a scratch directory");
    let mut space: Option<ExtractError> = None;
    let scratch = start_scratch(repo, &opts.scratch, |plan, dir| {
        if let Some(free) = free_bytes(dir) {
            if let Err((need, free)) = plan_space(plan.backup.data_size_bytes, free) {
                space = Some(ExtractError::Space {
                    dir: dir.parent().unwrap_or(dir).to_path_buf(),
                    need: crate::cli::human_bytes(need),
                    free: crate::cli::human_bytes(free),
                });
                return Err(RestoreVerifyError::Setup("not enough space".to_string()));
            }
        }
        Ok(())
    })
    .await;
    let scratch = match scratch {
        Ok(s) => s,
        Err(e) => return Err(space.take().unwrap_or(ExtractError::Scratch(e))),
    };
    progress(&format!(
        "recovering backup {} to {}",
        scratch.label,
        crate::verify::restore::describe_target(&opts.scratch.target)
    ));
    let source = wait_recovered(&scratch, "postgres", opts.scratch.timeout).await?;
    let there = source
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&opts.db])
        .await
        .map_err(|e| ExtractError::Step {
            step: "connect to the recovered server",
            detail: e.to_string(),
        })?
        .is_some();
    if !there {
        return Err(ExtractError::Step {
            step: "find the database",
            detail: format!(
                "database \"{}\" did not exist at {}",
                opts.db,
                crate::verify::restore::describe_target(&opts.scratch.target)
            ),
        });
    }
    let role: String = source
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| ExtractError::Step {
            step: "connect to the recovered server",
            detail: e.to_string(),
        })?
        .get(0);

    progress(&format!(
        "dumping {}",
        if opts.tables.is_empty() {
            format!("database \"{}\"", opts.db)
        } else {
            format!("table(s) {} of \"{}\"", opts.tables.join(", "), opts.db)
        }
    ));
    let dump = scratch.dir().join("extract.dump");
    let mut cmd = scratch.pg_command("pg_dump");
    cmd.arg("-h")
        .arg(&scratch.socket_dir)
        .args(["-p", "5432", "-U", &role, "-d", &opts.db, "-Fc", "-f"])
        .arg(&dump);
    for t in &opts.tables {
        cmd.arg("-t").arg(t);
    }
    run_step("pg_dump", &mut cmd)?;
    scratch.give(&dump);

    // A fresh connection: the first may have idled through a long restore.
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| target_err(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    if !opts.replace {
        progress(&format!("creating database \"{name}\" on the target"));
        // The source database's encoding and locale, from template0.
        let row = source
            .query_one(
                "SELECT pg_encoding_to_char(encoding), datcollate::text, datctype::text FROM pg_database WHERE datname = $1",
                &[&opts.db],
            )
            .await
            .map_err(|e| ExtractError::Step {
                step: "read the database's encoding",
                detail: e.to_string(),
            })?;
        let (encoding, collate, ctype): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let literal = |v: &str| format!("'{}'", v.replace('\'', "''"));
        client
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
                quote_ident(&name),
                literal(&encoding),
                literal(&collate),
                literal(&ctype)
            ))
            .await
            .map_err(|e| target_err(format!("create database \"{name}\": {e}")))?;
    }
    progress(&format!("loading into \"{name}\" on the target"));
    let mut cmd = scratch.pg_command("pg_restore");
    cmd.args(["--no-owner", "--no-privileges", "--exit-on-error"]);
    if opts.replace {
        cmd.args(["--clean", "--if-exists"]);
    }
    if let Some(password) = config.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(password).into_owned());
    }
    cmd.arg("-d").arg(plan_conninfo(&config, &name)).arg(&dump);
    if let Err(e) = run_step("pg_restore", &mut cmd) {
        // A half-loaded new database goes, so that a second try can use
        // the name.
        if !opts.replace {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(&name)))
                .await;
        }
        return Err(e);
    }

    progress("removing the scratch directory");
    let label = scratch.label.clone();
    drop(source);
    drop(scratch);
    Ok(ExtractReport {
        backup_label: label,
        database: name,
        duration_secs: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_space_and_connection_strings() {
        let t: jiff::Timestamp = "2026-12-01T03:04:05.6Z".parse().unwrap();
        assert_eq!(plan_new_name("shop", Some(t)), "shop_at_20261201T030405");
        assert_eq!(plan_new_name(&"x".repeat(70), Some(t)).len(), 63);
        assert_eq!(plan_space(1 << 30, 2 << 30), Ok(()));
        let need = (1u64 << 30) + (1u64 << 30) / 10 + (64 << 20);
        assert_eq!(plan_space(1 << 30, 1 << 30), Err((need, 1 << 30)));
        let c: tokio_postgres::Config =
            "host=/tmp port=5432 user=me password=s3cret dbname=postgres"
                .parse()
                .unwrap();
        assert_eq!(
            plan_conninfo(&c, "shop_at_x"),
            "host='/tmp' port='5432' user='me' sslmode=prefer dbname='shop_at_x'"
        );
        let c: tokio_postgres::Config = "postgresql://u:pw@db:5432/postgres?sslmode=require"
            .parse()
            .unwrap();
        let s = plan_conninfo(&c, "o'k");
        assert_eq!(
            s,
            r"host='db' port='5432' user='u' sslmode=require dbname='o\'k'"
        );
        assert!(!s.contains("pw"));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
