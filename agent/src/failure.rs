//! Why an uplink session could not be opened, or ended badly, as one of a
//! small fixed set of reasons: the label of
//! `ferrule_agent_session_failures_total{reason}` (every reason published at 0
//! from the start) and the first word of the log line an operator reads.
//!
//! The split follows who has to act: `tls_local_config` (this agent's own key,
//! certificate or trust bundle cannot be loaded: fix the files here),
//! `server_certificate_refused` (this agent refused the aggregator's
//! certificate: wrong `uplink.server_name`, or a trust bundle that does not
//! hold the aggregator's CA), `refused_by_server` (the aggregator refused this
//! agent: its certificate is expired, revoked or from another CA, or its
//! identity or session count is refused), `unreachable` (no QUIC handshake
//! completed within `uplink.connect_timeout_secs`: network, address, firewall,
//! aggregator down), `server_busy` (the aggregator refused the handshake
//! because it had as many in progress as it takes: a reconnect storm; the
//! agent backs off and retries), `handshake_timeout` (QUIC came up, the aggregator did not
//! welcome the agent in time). Sessions that were up and ended badly are
//! `peer_timeout`, `stalled` or `connection_lost`; `protocol` is a peer
//! speaking something else, `spool_read` a local read failure, `other` the
//! rest.
//!
//! Pure: the caller passes in what it observed.

use ferrule_transport::quinn::ConnectionError;
use ferrule_transport::{classify, refused_by_verifier, CERTIFICATE_REASONS};

/// One of the bounded reasons a session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// This agent's own key, certificate or trust bundle is unusable.
    TlsLocalConfig,
    /// This agent refused the aggregator's certificate.
    ServerCertificateRefused,
    /// The aggregator refused this agent (its certificate, identity or session).
    RefusedByServer,
    /// No QUIC handshake completed in time, or the address is unusable.
    Unreachable,
    /// The aggregator had as many handshakes in progress as it takes and
    /// refused this one at once (a reconnect storm): back off and retry.
    ServerBusy,
    /// QUIC came up but the session handshake (Hello/Welcome) did not finish.
    HandshakeTimeout,
    /// An established aggregator went silent (or stopped reading).
    PeerTimeout,
    /// An established session stopped moving.
    Stalled,
    /// An established connection was closed or reset.
    ConnectionLost,
    /// The peer spoke something else, or broke the protocol.
    Protocol,
    /// The spool could not be read.
    SpoolRead,
    /// Anything else.
    Other,
}

impl FailureReason {
    /// Every reason, for publishing each series at 0.
    pub const ALL: [FailureReason; 12] = [
        Self::TlsLocalConfig,
        Self::ServerCertificateRefused,
        Self::RefusedByServer,
        Self::Unreachable,
        Self::ServerBusy,
        Self::HandshakeTimeout,
        Self::PeerTimeout,
        Self::Stalled,
        Self::ConnectionLost,
        Self::Protocol,
        Self::SpoolRead,
        Self::Other,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TlsLocalConfig => "tls_local_config",
            Self::ServerCertificateRefused => "server_certificate_refused",
            Self::RefusedByServer => "refused_by_server",
            Self::Unreachable => "unreachable",
            Self::ServerBusy => "server_busy",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::PeerTimeout => "peer_timeout",
            Self::Stalled => "stalled",
            Self::ConnectionLost => "connection_lost",
            Self::Protocol => "protocol",
            Self::SpoolRead => "spool_read",
            Self::Other => "other",
        }
    }

    /// Failures an operator must fix by hand (logged as errors, not warnings).
    pub fn needs_a_fix(self) -> bool {
        matches!(
            self,
            Self::TlsLocalConfig | Self::ServerCertificateRefused | Self::RefusedByServer
        )
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason for a QUIC connection that failed or ended, with `established`
/// telling whether the QUIC handshake had completed.
pub fn of_connection(err: &ConnectionError, established: bool) -> FailureReason {
    let label = classify(err);
    match err {
        // We detected it: a certificate problem is the aggregator's certificate.
        ConnectionError::TransportError(_) => {
            if refused_by_verifier(err) {
                FailureReason::ServerCertificateRefused
            } else {
                FailureReason::Protocol
            }
        }
        // The aggregator reported it: a certificate problem or any TLS alert
        // during the handshake is it refusing us.
        ConnectionError::ConnectionClosed(_) if label == "server_busy" => FailureReason::ServerBusy,
        ConnectionError::ConnectionClosed(_) => {
            if CERTIFICATE_REASONS.contains(&label) || (!established && label == "tls_alert") {
                FailureReason::RefusedByServer
            } else {
                FailureReason::Protocol
            }
        }
        ConnectionError::ApplicationClosed(_) => of_code_name(label),
        ConnectionError::TimedOut if !established => FailureReason::Unreachable,
        ConnectionError::TimedOut => FailureReason::PeerTimeout,
        ConnectionError::Reset => FailureReason::ConnectionLost,
        ConnectionError::VersionMismatch => FailureReason::Protocol,
        ConnectionError::LocallyClosed | ConnectionError::CidsExhausted => FailureReason::Other,
    }
}

/// The reason for an error the aggregator sent (a wire error code's name).
pub fn of_code_name(name: &str) -> FailureReason {
    match name {
        "identity_mismatch" | "unauthorized" | "limit_exceeded" | "certificate_revoked" => {
            FailureReason::RefusedByServer
        }
        "handshake_timeout" => FailureReason::HandshakeTimeout,
        "peer_timeout" | "timeout" => FailureReason::PeerTimeout,
        "stalled" => FailureReason::Stalled,
        "malformed"
        | "unsupported_version"
        | "unexpected_message"
        | "credit_exceeded"
        | "bad_define" => FailureReason::Protocol,
        "application_closed" => FailureReason::ConnectionLost,
        _ => FailureReason::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_label() {
        let mut labels: Vec<&str> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), FailureReason::ALL.len());
    }

    #[test]
    fn who_refused_decides_the_reason() {
        // Certificate cases need quinn's TransportError, which quinn does not
        // re-export: loadtest/tests/security.rs runs them against real peers.
        assert_eq!(
            of_connection(&ConnectionError::TimedOut, false),
            FailureReason::Unreachable
        );
        assert_eq!(
            of_connection(&ConnectionError::TimedOut, true),
            FailureReason::PeerTimeout
        );
        assert_eq!(
            of_code_name("identity_mismatch"),
            FailureReason::RefusedByServer
        );
        assert_eq!(
            of_code_name("handshake_timeout"),
            FailureReason::HandshakeTimeout
        );
        assert_eq!(of_code_name("stalled"), FailureReason::Stalled);
    }
}
