//! The session state machines both sides run, with no I/O and no clock.
//!
//! Modelled on `quinn-proto`: inputs go in through `handle` (messages),
//! `handle_timeout` (time) and a few commands; outputs come out through
//! `poll_transmit` (messages to send), `poll_event` (things the driver must act
//! on) and `poll_timeout` (when to call `handle_timeout` next). Time is always an
//! argument ([`Now`]), so the deterministic simulation in `wire/tests/` drives the
//! very code the agent and the aggregator run, timers included.
//!
//! - [`AgentSession`]: handshake, credit spending, in-flight tracking over several
//!   epochs, Defines per lane, heartbeats (and the spool reports that ride along
//!   with them), and the deadlines that notice a dead or stuck aggregator.
//! - [`IngestSession`]: handshake, identity and credit enforcement, dedupe, ack
//!   coalescing per epoch, credit returned for every batch whatever its fate
//!   (withheld while the sink is under pressure), and the deadlines that notice a
//!   silent or stuck agent.
//! - [`WindowController`]: the window those sessions grant, sized from the
//!   sink's commit latency so its queue stays near a target delay.

mod agent;
mod ingest;
mod window;

pub use agent::{
    AgentConfig, AgentEvent, AgentSession, SendError, SpoolBacklog, DEFAULT_PACING_MAX_BATCHES,
    DEFAULT_TARGET_QUEUE_DELAY,
};
pub use ingest::{IngestConfig, IngestEvent, IngestSession, LiveRefusal, PeerIdentity};
pub use window::{WindowConfig, WindowController, WindowStats};

use crate::message::{ErrorCode, ErrorMessage};
use std::time::Instant;
use thiserror::Error;

/// The time of an input, as both clocks see it: `mono` for every timer (it never
/// jumps), `wall_ns` (nanoseconds since the Unix epoch) only where the protocol
/// carries wall-clock time (heartbeat stamps for the clock offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// A monotonic instant: deadlines are measured on it.
    pub mono: Instant,
    /// The wall clock, nanoseconds since the Unix epoch.
    pub wall_ns: i64,
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// The peer did not complete the handshake (Hello or Welcome) in time.
    Handshake,
    /// Nothing arrived from the peer for longer than its heartbeats allow: it is
    /// dead or cut off, although the connection may still look open.
    PeerSilent,
    /// Work was outstanding (batches in flight or waiting for credit, commits at
    /// the sink) and nothing moved for the configured stall time.
    Stalled,
}

impl TimeoutKind {
    /// A short name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Handshake => "handshake_timeout",
            Self::PeerSilent => "peer_timeout",
            Self::Stalled => "stalled",
        }
    }
}

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
    /// A deadline passed.
    #[error("{}: {detail}", .kind.name())]
    Timeout {
        /// Which deadline.
        kind: TimeoutKind,
        /// What was outstanding, for the log.
        detail: String,
    },
    /// The sink could not make a batch durable; the agent keeps it and resends it
    /// on its next session.
    #[error("sink failed: {0}")]
    SinkFailed(String),
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
            Self::Timeout { .. } => ErrorCode::TIMEOUT,
            Self::SinkFailed(_) => ErrorCode::INTERNAL,
            Self::Peer(e) => e.code,
        }
    }

    /// A short, bounded label for metrics: the timeout's kind, `sink_failed`, or
    /// the error code's name. A peer's own error is labelled by its code only, so
    /// a peer cannot choose a label of its own.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout { kind, .. } => kind.name(),
            Self::SinkFailed(_) => "sink_failed",
            Self::Peer(e) => match e.code.name() {
                "unknown" => "peer_error",
                n => n,
            },
            other => other.code().name(),
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

/// The earliest of some optional deadlines.
pub(crate) fn earliest(deadlines: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    deadlines.into_iter().flatten().min()
}
