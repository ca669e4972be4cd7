//! walvault: PostgreSQL WAL archiving and point-in-time recovery into a
//! repository on S3-compatible object storage or a local directory.
//!
//! # Layout
//!
//! Dependencies point one way: `cli` → commands (`archive`) → `repo` →
//! {`storage`, `stream`, `wal`}; `wal`, `storage` and `stream` know nothing
//! of each other or of PostgreSQL connections.
//!
//! - [`wal`]: LSNs, timelines, segment numbers and sizes, WAL file names,
//!   page headers, history files. Pure, no I/O.
//! - [`storage`]: the object-store trait and its backends (local, S3,
//!   memory, failure-injecting) and their conformance suite.
//! - [`stream`]: compression and checksum layers over byte chunks.
//! - [`repo`]: the repository format: key layout, header and cluster
//!   identity, the stored object envelope.
//! - [`pg`]: facts read from a data directory, and connections.
//! - [`archive`]: push and fetch, behind archive_command and restore_command.
//! - [`backup`]: online base backups through the non-exclusive backup API.
//! - [`restore`]: recovery targets, restore planning (pure), the
//!   postgresql.auto.conf rewrite, and applying a restore.
//! - [`retention`]: what `expire` removes (pure planning) and removing it.
//! - [`status`]: health GOOD/WARNING/CRITICAL (pure) and verification records.
//! - [`verify`]: re-reading every object, backup and WAL continuity checks,
//!   and `verify --restore`.
//! - [`check`]: is the cluster archiving into this repository.
//! - [`metrics`]: Prometheus text format, textfile collector, Pushgateway.
//! - [`pool`]: bounded parallelism over a list (backup, restore, verify).
//! - [`config`]: settings from flags, `WALVAULT_*` variables and the config file.
//! - [`cli`]: clap types, subcommands, exit-status policy.
//! - [`exit`]: the table of exit codes.

pub mod archive;
pub mod backup;
pub mod check;
pub mod cli;
pub mod config;
pub mod exit;
pub mod extract;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod pg;
pub mod pool;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod status;
pub mod storage;
pub mod stream;
pub mod verify;
pub mod wal;
