//! `walvault restore`: choosing a backup, checking the target against the
//! repository, and writing a data directory that PostgreSQL recovers to the
//! target.
//!
//! - [`target`]: recovery targets and how they are parsed and written.
//! - [`plan`]: pure decisions: which backup, which timeline, which WAL, and
//!   whether the target is reachable at all.
//! - [`recovery_conf`]: the recovery settings and the rewrite of
//!   postgresql.auto.conf.
//! - [`apply`]: the side effects, in an order that never leaves a
//!   startable half-restored cluster.
//! - [`delta`]: `--delta`, into an existing data directory: what to keep,
//!   check, rewrite and remove.

pub mod apply;
pub mod delta;
pub mod plan;
pub mod recovery_conf;
pub mod target;
