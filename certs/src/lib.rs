//! ferrule's PKI: the root and issuing CAs, server and agent certificates,
//! inspection, CRL-based revocation and trust bundles for CA rotation.
//!
//! ferrule's edge agents and the aggregator authenticate each other with
//! mutual TLS over QUIC. This crate is the one place that decides what those
//! certificates look like; the `ferrule-certs` binary is a thin CLI over it,
//! and the agent/aggregator use it for dev certificates and for parsing the
//! agent identity out of a peer certificate ([`AgentIdentity::from_uri`]).
//!
//! Invariants kept across the crate:
//! - Keys are ECDSA P-256, written with mode 0600, never overwritten
//!   without an explicit `force`.
//! - Leaves are short-lived (agents [`DEFAULT_AGENT_DAYS`], servers
//!   [`DEFAULT_SERVER_DAYS`]) and never outlive the issuing CA.
//! - Every issued certificate has a random 16-byte serial recorded in the CA
//!   directory's `index.tsv` before its files are written, so it can always
//!   be revoked; the CRL is rebuilt from that index.
//!
//! The layout of a CA directory is described by [`CaFiles`].

mod bundle;
mod ca;
mod error;
mod inspect;
mod issue;
mod pemfile;
mod renew;
mod revoke;
mod serial;
mod store;

pub use bundle::{bundle, BundleReport};
pub use ca::{init, InitOptions, DEFAULT_ISSUING_DAYS, DEFAULT_ROOT_DAYS};
pub use error::{Error, Result};
pub use ferrule_identity::{validate_label, AgentIdentity, MAX_LABEL_LEN};
pub use inspect::{inspect, to_json, CertInfo};
pub use issue::{
    issue_agent, issue_server, IssueOptions, Issued, DEFAULT_AGENT_DAYS, DEFAULT_SERVER_DAYS,
};
pub use renew::{renew, RenewOptions, Renewed};
pub use revoke::{refresh_crl, revoke, RevocationReason, CRL_VALIDITY_DAYS};
pub use serial::Serial;
pub use store::{list, rfc3339, CaFiles, CertKind, IndexEntry, Status};
