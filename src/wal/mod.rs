//! PostgreSQL write-ahead log vocabulary: positions, file names, the first
//! page header of a segment, and the history files archived beside segments.
//!
//! - [`lsn`]: [`Lsn`] (`%X/%X` positions), [`TimelineId`], [`WalSegmentSize`]
//!   (a power of two from 1 MiB to 1 GiB) and [`SegmentNo`], with the
//!   segment arithmetic of PostgreSQL's `xlog_internal.h`.
//! - [`name`]: [`WalFileName`], parsing and printing the exact names
//!   PostgreSQL uses for segments, `.partial` segments, `.backup` and
//!   `.history` files.
//! - [`page`]: [`LongPageHeader`], the 40-byte header opening every segment,
//!   and [`pg_major_for_wal_magic`].
//! - [`history`]: [`TimelineHistory`] (which timeline owns which LSN) and
//!   [`BackupHistory`].
//!
//! This module is pure: it does no I/O at all and knows nothing of storage,
//! repositories, compression or PostgreSQL connections. Callers pass it
//! names, bytes and text they already hold.

pub mod history;
pub mod lsn;
pub mod name;
pub mod page;
pub mod records;

pub use history::{
    parse_backup_history, BackupHistory, HistoryEntry, HistoryError, TimelineHistory,
};
pub use lsn::{
    Lsn, LsnParseError, SegmentNo, SegmentSizeError, TimelineId, TimelineParseError, WalSegmentSize,
};
pub use name::{NameError, WalFileKind, WalFileName};
pub use page::{
    pg_major_for_wal_magic, LongPageHeader, PageHeaderError, LONG_HEADER_LEN, MAX_WAL_BLOCK_SIZE,
    MIN_WAL_BLOCK_SIZE, WAL_PAGE_MAGICS, XLP_ALL_FLAGS, XLP_LONG_HEADER,
};
