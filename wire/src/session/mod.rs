//! The session state machines both sides run, with no I/O and no clock.
//!
//! Modelled on `quinn-proto`: inputs go in through `handle` and a few commands,
//! outputs come out through `poll_transmit` (messages to send) and `poll_event`
//! (things the driver must act on). Time, where needed, is an argument.
//!
//! - [`AgentSession`]: handshake, credit accounting and in-flight tracking on the agent.
//! - [`IngestSession`]: handshake, identity and credit enforcement, dedupe and ack
//!   coalescing on the aggregator.

mod agent;
mod ingest;

pub use agent::{AgentConfig, AgentEvent, AgentSession, SendError};
pub use ingest::{IngestConfig, IngestEvent, IngestSession, PeerIdentity};

use crate::message::{ErrorCode, ErrorMessage};
use thiserror::Error;

/// Why a session ended. Each maps to the [`ErrorCode`] the peer is told.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// No protocol version in common.
    #[error("no common protocol version: peer speaks {peer_min}..={peer_max}, we speak {our_min}..={our_max}")]
    UnsupportedVersion {
        /// Peer's oldest version.
        peer_min: u16,
        /// Peer's newest version.
        peer_max: u16,
        /// Our oldest version.
        our_min: u16,
        /// Our newest version.
        our_max: u16,
    },
    /// A message arrived that the current state does not allow.
    #[error("unexpected {message} while {state}")]
    Unexpected {
        /// The message kind.
        message: &'static str,
        /// The session state.
        state: &'static str,
    },
    /// The agent sent beyond its credit.
    #[error("credit exceeded: {detail}")]
    CreditExceeded {
        /// What was exceeded.
        detail: String,
    },
    /// The agent claimed a site, agent id or sensor its certificate does not give it.
    #[error("identity mismatch: {0}")]
    IdentityMismatch(String),
    /// A Define was invalid.
    #[error("bad define: {0}")]
    BadDefine(String),
    /// The peer reported an error and is closing.
    #[error("peer error {} ({}): {}", .0.code.0, .0.code.name(), .0.message)]
    Peer(ErrorMessage),
    /// The session is closed; nothing more is accepted.
    #[error("session closed")]
    Closed,
}

impl SessionError {
    /// The code the peer sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
            Self::Unexpected { .. } | Self::Closed => ErrorCode::UNEXPECTED_MESSAGE,
            Self::CreditExceeded { .. } => ErrorCode::CREDIT_EXCEEDED,
            Self::IdentityMismatch(_) => ErrorCode::IDENTITY_MISMATCH,
            Self::BadDefine(_) => ErrorCode::BAD_DEFINE,
            Self::Peer(e) => e.code,
        }
    }

    /// The message to send the peer before closing.
    pub fn to_message(&self) -> ErrorMessage {
        ErrorMessage {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

/// Picks the newest version both ranges hold.
pub(crate) fn negotiate(
    peer_min: u16,
    peer_max: u16,
    our_min: u16,
    our_max: u16,
) -> Result<u16, SessionError> {
    let v = peer_max.min(our_max);
    if v < peer_min.max(our_min) || peer_min > peer_max {
        return Err(SessionError::UnsupportedVersion {
            peer_min,
            peer_max,
            our_min,
            our_max,
        });
    }
    Ok(v)
}
