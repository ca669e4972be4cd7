//! Connections to PostgreSQL: a libpq-style conninfo string or URL
//! (`--dbname`), completed from the usual `PG*` environment variables
//! (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD) and libpq's defaults
//! (the Unix socket directory /var/run/postgresql, port 5432, the OS user).
//! Plain connections only for now: backups run on the database host, over
//! the local socket.

use std::str::FromStr;

use tokio_postgres::{Client, Config, NoTls};

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("invalid connection string: {0}")]
    Invalid(String),
    #[error("connect to PostgreSQL ({target}): {source}\nHINT: pass --dbname 'host=... port=... user=...' or set PGHOST, PGPORT and PGUSER")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Builds the connection configuration.
pub fn config(dbname: Option<&str>) -> Result<Config, ConnError> {
    let mut config = match dbname {
        Some(s) => Config::from_str(s).map_err(|e| ConnError::Invalid(e.to_string()))?,
        None => Config::new(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if config.get_hosts().is_empty() {
        let hosts = env("PGHOST").unwrap_or_else(|| {
            if std::path::Path::new("/var/run/postgresql").is_dir() {
                "/var/run/postgresql".to_string()
            } else {
                "localhost".to_string()
            }
        });
        for host in hosts.split(',') {
            if host.starts_with('/') {
                config.host_path(host);
            } else {
                config.host(host);
            }
        }
    }
    if config.get_ports().is_empty() {
        let port = env("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432);
        config.port(port);
    }
    if config.get_user().is_none() {
        let user = env("PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".to_string());
        config.user(&user);
    }
    if config.get_dbname().is_none() {
        let db = env("PGDATABASE")
            .unwrap_or_else(|| config.get_user().unwrap_or("postgres").to_string());
        config.dbname(&db);
    }
    if config.get_password().is_none() {
        if let Some(pw) = env("PGPASSWORD") {
            config.password(pw);
        }
    }
    if config.get_application_name().is_none() {
        config.application_name("walvault");
    }
    Ok(config)
}

/// A short description of where a config connects, for messages.
pub fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "default".to_string(),
    };
    format!(
        "host={host} port={} user={} dbname={}",
        config.get_ports().first().copied().unwrap_or(5432),
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// Connects; the connection runs on a background task until the client is
/// dropped.
pub async fn connect(dbname: Option<&str>) -> Result<Client, ConnError> {
    let config = config(dbname)?;
    let target = describe(&config);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|source| ConnError::Connect { target, source })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_is_completed_but_not_overridden() {
        let c = config(Some("host=/tmp/sock port=5999 user=alice dbname=app")).unwrap();
        assert_eq!(
            describe(&c),
            "host=/tmp/sock port=5999 user=alice dbname=app"
        );
        let c = config(Some("postgresql://bob@db.example:6000/shop")).unwrap();
        assert_eq!(
            describe(&c),
            "host=db.example port=6000 user=bob dbname=shop"
        );
        assert!(config(Some("host='unterminated")).is_err());
    }
}
