//! PostgreSQL facts read from a data directory (control file, WAL headers)
//! and, later, connections for backups and checks. Nothing here writes to a
//! data directory.

pub mod conn;
pub mod control;
