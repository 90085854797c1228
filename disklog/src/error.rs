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
    /// The log refuses further writes; [`crate::Log::reopen`] it (or drop it and
    /// [`crate::Log::open`] again), which recovers from what actually reached the disk.
    #[error("log in {dir} is unusable after an earlier write failure ({cause}); reopen it")]
    Poisoned {
        /// The log directory.
        dir: PathBuf,
        /// The first failure, as text.
        cause: String,
    },
    /// Another `Log` (in this process or another) holds the directory: two writers
    /// would interleave records in one segment.
    #[error("log directory {dir} is in use by another process (lock file {dir}/LOCK); stop it or point this one at another directory")]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
    /// The u64 offset space is exhausted (2^64 records); cannot happen in practice.
    #[error("offset space exhausted")]
    OffsetsExhausted,
}

impl Error {
    /// True if the error is the file system being full (ENOSPC or a quota): space
    /// freed by releasing acknowledged records lets the log go on.
    pub fn is_storage_full(&self) -> bool {
        let io = match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        };
        io.is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            )
        }) || matches!(self, Error::Poisoned { cause, .. } if cause.contains("No space left") || cause.contains("quota"))
    }
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
