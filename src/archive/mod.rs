//! Push and fetch: the logic behind archive_command and restore_command.
//! Both work file by file against a [`Repository`](crate::repo::Repository);
//! exit-status policy lives in `cli`, which maps these results to codes.

pub mod fetch;
pub mod prefetch;
pub mod push;
pub mod spool;

pub use fetch::{fetch, FetchError, FetchOptions, FetchOutcome};
pub use push::{push, PushError, PushOutcome};
