//! A real PostgreSQL cluster in a test directory: initdb with `--no-sync`,
//! a Unix socket in its own directory (no TCP port to collide on), started
//! and stopped with pg_ctl, queried with psql. Drop stops the server.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{as_postgres, give_to_postgres, pg_bin, run_ok};

pub struct PgCluster {
    /// Where this cluster's server programs (initdb, pg_ctl, postgres) are;
    /// clients (psql, pgbench) are always PostgreSQL 15's from apt, which
    /// work against every server from 12 to 18.
    pub server_bin: PathBuf,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    running: bool,
}

static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

fn socket_port() -> u16 {
    // Each cluster has its own socket directory, so the port only names the
    // socket file; still keep them distinct for readable logs.
    50000 + NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10000
}

impl PgCluster {
    /// initdb a new cluster in `<base>/<name>`; `initdb_args` e.g. `--wal-segsize=1`.
    pub fn init(base: &Path, name: &str, initdb_args: &[&str]) -> PgCluster {
        PgCluster::init_with(base, name, &pg_bin(""), initdb_args)
    }

    /// initdb with the server programs in `server_bin`.
    pub fn init_with(
        base: &Path,
        name: &str,
        server_bin: &Path,
        initdb_args: &[&str],
    ) -> PgCluster {
        let data = base.join(name);
        let mut cmd = as_postgres(server_bin.join("initdb"));
        cmd.args([
            "--no-sync",
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .args(initdb_args)
        .arg("-D")
        .arg(&data);
        run_ok(&mut cmd);
        PgCluster::existing_with(base, name, data, server_bin)
    }

    /// A cluster around a data directory made some other way (a restore).
    pub fn existing(base: &Path, name: &str, data: PathBuf) -> PgCluster {
        PgCluster::existing_with(base, name, data, &pg_bin(""))
    }

    /// The same, run with the server programs in `server_bin`.
    pub fn existing_with(base: &Path, name: &str, data: PathBuf, server_bin: &Path) -> PgCluster {
        let socket_dir = base.join(format!("{name}-socket"));
        std::fs::create_dir_all(&socket_dir).expect("socket dir");
        give_to_postgres(&socket_dir);
        let port = socket_port();
        let log = base.join(format!("{name}.log"));
        let cluster = PgCluster {
            server_bin: server_bin.to_path_buf(),
            data,
            socket_dir,
            port,
            log,
            running: false,
        };
        cluster.append_conf(&format!(
            "\n# test harness\nlisten_addresses = ''\nunix_socket_directories = '{}'\nport = {}\nfsync = off\nlogging_collector = off\n",
            cluster.socket_dir.display(),
            cluster.port
        ));
        cluster
    }

    /// Appends settings to postgresql.conf.
    pub fn append_conf(&self, text: &str) {
        use std::io::Write;
        let path = self.data.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open postgresql.conf");
        f.write_all(text.as_bytes()).expect("write postgresql.conf");
    }

    pub fn start(&mut self) {
        give_to_postgres(&self.data);
        let out = as_postgres(self.server_bin.join("pg_ctl"))
            .args(["-w", "-t", "120", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .arg("start")
            .output()
            .expect("run pg_ctl");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = as_postgres(self.server_bin.join("pg_ctl"))
                .args(["-w", "-t", "60", "-m", "fast", "-D"])
                .arg(&self.data)
                .arg("stop")
                .output();
            self.running = false;
        }
    }

    /// A psql command connected to this cluster.
    pub fn psql_cmd(&self) -> Command {
        let mut cmd = as_postgres(pg_bin("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ]);
        cmd
    }

    /// Runs SQL and returns the trimmed output.
    pub fn sql(&self, sql: &str) -> String {
        let out = run_ok(self.psql_cmd().arg("-c").arg(sql));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a PostgreSQL client program (pgbench, pg_basebackup) against this cluster.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = as_postgres(pg_bin(program));
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        cmd
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Forces a WAL switch and waits until PostgreSQL reports the finished
    /// segment archived; returns its name.
    pub fn switch_and_wait_archived(&self, secs: u64) -> String {
        // Make sure the switch has something to close.
        self.sql("CREATE TABLE IF NOT EXISTS harness_switch(x int); INSERT INTO harness_switch VALUES (1)");
        let segment = self.sql("SELECT pg_walfile_name(pg_switch_wal())");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let row = self.sql("SELECT coalesce(last_archived_wal, '') || '|' || failed_count || '|' || coalesce(last_failed_wal, '') FROM pg_stat_archiver");
            let last = row.split('|').next().unwrap_or("").to_string();
            if !last.is_empty() && last.len() == 24 && last.as_str() >= segment.as_str() {
                return segment;
            }
            if std::time::Instant::now() > deadline {
                panic!("segment {segment} not archived within {secs}s (pg_stat_archiver: {row})\nserver log:\n{}", self.server_log());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Waits until the server is out of recovery (promoted).
    pub fn wait_promoted(&self, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let out = self
                .psql_cmd()
                .arg("-c")
                .arg("SELECT pg_is_in_recovery()")
                .output()
                .expect("psql");
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "f" {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "server did not finish recovery within {secs}s\nserver log:\n{}",
                    self.server_log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = as_postgres(self.server_bin.join("pg_ctl"))
                .args(["-w", "-t", "30", "-m", "immediate", "-D"])
                .arg(&self.data)
                .arg("stop")
                .output();
        }
    }
}
