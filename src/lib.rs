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
//! - [`pg`]: facts read from a PostgreSQL data directory.
//! - [`archive`]: push and fetch, behind archive_command and restore_command.
//! - [`config`]: settings from flags, `WALVAULT_*` variables and the config file.
//! - [`cli`]: clap types, subcommands, exit-status policy.
//! - [`exit`]: the table of exit codes.

pub mod archive;
pub mod backup;
pub mod cli;
pub mod config;
pub mod exit;
pub mod pg;
pub mod repo;
pub mod restore;
pub mod storage;
pub mod stream;
pub mod wal;
