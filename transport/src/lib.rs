//! # ferrule-transport
//!
//! The QUIC and mutual-TLS plumbing both ferrule binaries share: endpoint
//! configuration with the limits that bound what one peer can cost, the verified
//! agent identity taken from the client certificate, frames over QUIC streams with
//! a deadline per frame, and the classification of handshake failures into the
//! reasons operators see in logs and metrics, and the checks of TLS material
//! that `check-config` runs.
//!
//! Protocol logic stays in `ferrule-wire`; this crate only moves its frames.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod check;
mod endpoint;
mod error;
mod framed;
mod gate;
mod identity;
mod refusal;
mod reject;
mod reload;
mod tls;

pub use check::{
    check_client_material, check_server_material, key_permission_warning, leaf_summary,
    ExpectedAgent, LeafSummary, MaterialProblem, MaterialReport, MaterialWarning,
};
pub use endpoint::{
    accept_validated, client_config, client_endpoint, server_config, server_endpoint,
    server_endpoint_with, EndpointLimits,
};
pub use error::{StreamError, TlsError};
pub use framed::{FrameReceiver, FrameSender};
pub use gate::{Admitted, GateFull, HandshakeGate, HandshakePermit};
pub use identity::{peer_identity, IdentityError, VerifiedAgent};
pub use refusal::{certificate_label, Refusals};
pub use reject::{
    classify, classify_server, close_code, refused_by_peer, refused_by_verifier, CloseCode,
    CERTIFICATE_REASONS, CONNECTION_REASONS, PEER_REFUSED_SERVER_CERTIFICATE,
};
pub use reload::{stamp, FileStamp, Revoked, ServerTlsSlot};
pub use tls::{client_crypto, server_crypto, ClientTls, ServerTls, ALPN};

/// Re-exported so drivers name the same quinn the endpoints were built with.
pub use quinn;

/// The time for a session input: the monotonic clock for its timers and the
/// wall clock for the stamps it carries. Drivers read clocks; sessions do not.
pub fn session_now() -> ferrule_wire::session::Now {
    ferrule_wire::session::Now {
        mono: std::time::Instant::now(),
        wall_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
    }
}
