//! The crate's one error type.
//!
//! Every variant that comes from the file system names the file and the operation, so
//! an operator reading a log line knows which file failed and how without a debugger.
//! Corruption found during recovery is *not* an error: recovery repairs it and counts
//! it in [`crate::Recovery`]. Only corruption that appears while the log is running
//! (a file changed under us) surfaces here, as [`Error::Corrupt`].

use std::io;
use std::path::PathBuf;

/// What went wrong in a disk log operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation that failed, e.g. "fsync segment".
        op: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A record read back while the log was running failed its checks: the file was
    /// changed by something other than this log after it was opened. Reopening the log
    /// repairs and counts it.
    #[error("corrupt record in {path} at byte {pos}: {what}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the record in the file.
        pos: u64,
        /// Which check failed.
        what: &'static str,
    },
    /// The payload is larger than [`crate::Options::max_record_bytes`].
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// The configured limit.
        max: u32,
    },
    /// An earlier write or fsync failed, so what is on disk is unknown (after a failed
    /// fsync Linux may drop the dirty pages and a retried fsync can falsely succeed).
    /// The log refuses further writes; drop it and [`crate::Log::open`] again, which
    /// recovers from what actually reached the disk.
    #[error("log in {dir} is unusable after an earlier write failure ({cause}); reopen it")]
    Poisoned {
        /// The log directory.
        dir: PathBuf,
        /// The first failure, as text.
        cause: String,
    },
    /// The u64 offset space is exhausted (2^64 records); cannot happen in practice.
    #[error("offset space exhausted")]
    OffsetsExhausted,
}

/// Shorthand for `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds a closure that wraps an `io::Error` with the operation and path.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
