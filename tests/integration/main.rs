//! walvault's integration tests, in one binary (each test binary links the
//! whole library, and linking is the slow part of a build here).
//!
//! They run against real servers the harness starts: PostgreSQL 15 from
//! /usr/lib/postgresql/15/bin (as the postgres user when run as root) and
//! s3s-fs for S3. `scripts/test` installs both when missing.

mod harness;

mod archive_cluster;
mod archive_errors;
mod async_archive;
mod contrib;
mod create_only;
mod drills;
mod encryption;
mod extract;
mod faults;
mod incremental;
mod notify;
mod ops;
mod pitr;
mod s3_storage;
mod standby;
mod two_repos;
mod versions;
