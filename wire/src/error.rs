//! Typed errors for encoding and decoding.
//!
//! Every way hostile or corrupt bytes can fail maps to a variant here; the session
//! layer maps them to an [`ErrorCode`](crate::ErrorCode) the peer sees before the
//! connection is closed.

use thiserror::Error;

/// Why bytes from the network could not be decoded into a [`Message`](crate::Message).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame header declares more bytes than the configured frame limit allows.
    /// Raised before any of the frame is buffered, so a peer cannot make us allocate.
    #[error("frame of {declared} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Length the peer declared.
        declared: u64,
        /// The configured maximum.
        limit: u64,
    },
    /// A frame declared a zero length; every frame has at least a type byte.
    #[error("empty frame")]
    EmptyFrame,
    /// The message type byte is not one this version knows.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The payload ended before the message was complete.
    #[error("message truncated")]
    Truncated,
    /// The payload had bytes left over after the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A variable-length integer ran past 64 bits.
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    /// The payload did not follow the message's layout.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which part of the message was wrong.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A batch declared more samples than the limit allows.
    #[error("batch declares {declared} samples, the limit is {limit}")]
    TooManySamples {
        /// Samples the batch declared (so far).
        declared: u64,
        /// The configured maximum.
        limit: u64,
    },
    /// The sample block uses an encoding version this build does not know.
    #[error("unknown sample encoding {0}")]
    UnknownEncoding(u8),
}

impl DecodeError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Malformed {
            what,
            detail: detail.into(),
        }
    }
}

impl From<postcard::Error> for DecodeError {
    fn from(e: postcard::Error) -> Self {
        match e {
            postcard::Error::DeserializeUnexpectedEnd => Self::Truncated,
            postcard::Error::DeserializeBadVarint => Self::VarintOverflow,
            other => Self::malformed("message", other.to_string()),
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame would exceed the frame limit the peer announced; split the
    /// batch and try again.
    #[error("encoded frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Size the frame would have had.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A batch holds more samples than the limit allows.
    #[error("batch holds {count} samples, the limit is {limit}")]
    TooManySamples {
        /// Samples in the batch.
        count: u64,
        /// The limit in force.
        limit: u64,
    },
    /// Serialization failed (a bug, or a string over the postcard limits).
    #[error("serialization failed: {0}")]
    Serialize(String),
}
