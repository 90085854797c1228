//! Typed errors for TLS setup and framed streams.

use std::path::PathBuf;
use thiserror::Error;

/// Why TLS material could not be loaded or a TLS configuration built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is larger than any TLS file of its kind should be (a log, a
    /// disk image or a device named by mistake): refused before it is read
    /// whole, so a wrong path cannot exhaust memory.
    #[error("{path}: larger than {limit_bytes} bytes; is this the right file?")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The most bytes read from a file of this kind.
        limit_bytes: u64,
    },
    /// A file held no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was missing or wrong.
        what: String,
    },
    /// rustls refused the material (key does not match, bad CRL, ...).
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// Why a framed stream failed. Each ends the stream; most end the connection.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The bytes did not decode.
    #[error("decode: {0}")]
    Decode(#[from] ferrule_wire::DecodeError),
    /// A message could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] ferrule_wire::EncodeError),
    /// A frame started but did not complete within the frame deadline: a peer
    /// trickling bytes to hold resources.
    #[error("frame not completed within {0:?}")]
    FrameTimeout(std::time::Duration),
    /// The stream ended in the middle of a frame.
    #[error("stream ended mid-frame with {0} bytes buffered")]
    Truncated(usize),
    /// Reading from the stream failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing to the stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
}
