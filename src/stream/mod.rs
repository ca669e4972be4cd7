//! Stream layers: compression and checksums over byte chunks (encryption
//! will be another layer here).
//!
//! Each layer transforms chunks incrementally with bounded memory: nothing
//! here ever holds a whole object. Layers know nothing of storage, WAL or the
//! repository format; `repo` stacks them into the stored object envelope.

pub mod checksum;
pub mod compress;

pub use checksum::{Checksum, Hasher};
pub use compress::{Compressor, Decompressor, InPlaceCompressor, StreamError};
