//! ferrule's crash-safe segmented disk log.
//!
//! One log is a directory of segment files holding records: opaque byte payloads
//! addressed by a monotonically increasing [`Offset`]. The agent's spool and the
//! aggregator's embedded durable log both use it. What it promises (details in the
//! crate's README):
//!
//! - **Ack only what is durable.** [`Log::sync`] returns the offset below which every
//!   record is on stable storage; callers acknowledge only those. With
//!   [`FsyncPolicy::Batch`] many appends share one fsync (group commit).
//! - **Recovery by itself.** [`Log::open`] scans every segment, truncates a torn tail,
//!   skips and counts damaged records ([`Recovery`]), and never returns garbage. No
//!   failure mode needs a person to delete files. After a failed write or fsync,
//!   [`Log::reopen`] cuts what was never reported durable
//!   ([`Log::truncate_to_durable`]), so a caller's resend is stored exactly once.
//! - **Bounded.** [`Log::release_through`] frees what has been acknowledged,
//!   [`Log::drop_oldest_segment`] implements a spool's drop-oldest policy and
//!   [`Log::enforce_retention`] the embedded log's size and age limits.
//!
//! ```
//! # fn main() -> Result<(), ferrule_disklog::Error> {
//! # let dir = tempfile::tempdir().map_err(|e| ferrule_disklog::Error::Io { op: "tempdir", path: ".".into(), source: e })?;
//! use ferrule_disklog::{Log, Offset, Options};
//! let (mut log, recovery) = Log::open(dir.path(), Options::default())?;
//! assert!(recovery.is_clean());
//! let a = log.append(b"batch 1")?;
//! let b = log.append(b"batch 2")?;
//! let durable = log.sync()?; // one fsync for both
//! assert!(a < durable && b < durable);
//! assert_eq!(log.read_from(a, 10)?.len(), 2);
//! log.release_through(a)?; // batch 1 was acknowledged downstream
//! assert_eq!(log.first_offset(), b);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod error;
mod floor;
mod log;
mod read;
pub mod record;
pub mod retention;
pub mod scan;
pub mod segment;

use std::fmt;
use std::time::Duration;

pub use error::{Error, Result};
#[cfg(any(test, feature = "fault-injection"))]
pub use log::Fault;
pub use log::{CompletedSync, DeletedSegment, Log, PendingSync, Recovery, RetentionReport};
pub use read::{LogReader, Record};

/// A record's position in the log: its index, counting from 0 over the log's lifetime.
/// Offsets are never reused for different data once durable, and increase by one per
/// append.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset as an integer.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Offset {
    fn from(v: u64) -> Self {
        Self(v)
    }
}

impl From<Offset> for u64 {
    fn from(o: Offset) -> Self {
        o.0
    }
}

/// When appended records are fsynced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsyncPolicy {
    /// Every [`Log::append`] fsyncs before returning: the returned offset is durable.
    /// Simple and slow (one fsync per record).
    Always,
    /// Appends are buffered; the caller calls [`Log::sync`] every few milliseconds or
    /// after a batch, then acknowledges everything below the offset it returns (group
    /// commit). The buffer is also written out (not fsynced) when it fills.
    #[default]
    Batch,
}

/// How a log is opened. Construct with [`Options::default`] and set fields.
///
/// ```
/// let mut o = ferrule_disklog::Options::default();
/// o.segment_bytes = 8 << 20;
/// o.fsync = ferrule_disklog::FsyncPolicy::Always;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Start a new segment when the active one would grow past this many bytes (a
    /// single larger record gets a segment of its own). Release, drop-oldest and
    /// retention free space in whole segments, so keep this well below any byte cap
    /// (e.g. a cap / 16). Default 64 MiB.
    pub segment_bytes: u64,
    /// When appends are fsynced. Default [`FsyncPolicy::Batch`].
    pub fsync: FsyncPolicy,
    /// Largest payload [`Log::append`] accepts. Default 16 MiB.
    pub max_record_bytes: u32,
    /// Appends are buffered in memory up to this many bytes before being written to
    /// the OS (readers see only written records). Default 256 KiB.
    pub write_buffer_bytes: usize,
    /// [`Log::enforce_retention`] deletes oldest segments while the log is larger than
    /// this. Default `None` (no limit).
    pub max_total_bytes: Option<u64>,
    /// [`Log::enforce_retention`] deletes oldest segments whose last record is older
    /// than this. Default `None` (no limit).
    pub max_age: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Batch,
            max_record_bytes: 16 << 20,
            write_buffer_bytes: 256 << 10,
            max_total_bytes: None,
            max_age: None,
        }
    }
}
