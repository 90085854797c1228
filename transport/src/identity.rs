//! The agent identity the aggregator authorizes on, taken from the verified client
//! certificate's URI SAN (`ferrule://site/SITE/agent/AGENT`), never from what the
//! agent says.
//!
//! [`VerifiedAgent`] can only be built by [`peer_identity`] from a connection whose
//! handshake (and so rustls's chain, validity and CRL checks) has completed.

use ferrule_identity::AgentIdentity;
use rustls::pki_types::CertificateDer;
use thiserror::Error;
use x509_parser::prelude::*;

/// An agent whose certificate the TLS layer verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAgent {
    identity: AgentIdentity,
    serial: String,
    not_after_unix: i64,
    /// The issuer's name (DER) and the serial's bytes: what a CRL names.
    issuer_der: Vec<u8>,
    serial_der: Vec<u8>,
}

impl VerifiedAgent {
    /// The site the certificate names.
    pub fn site(&self) -> &str {
        self.identity.site()
    }

    /// The agent id the certificate names.
    pub fn agent(&self) -> &str {
        self.identity.agent()
    }

    /// `site/agent`, the key everything downstream files the agent's data under.
    pub fn key(&self) -> String {
        format!("{}/{}", self.identity.site(), self.identity.agent())
    }

    /// The certificate's serial number, hex (for logs and revocation).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When the certificate expires, seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after_unix
    }

    /// Whether `crl` revokes this certificate (its issuer and serial are
    /// listed): a live session checks itself when a new CRL is loaded.
    pub fn revoked_by(&self, crl: &crate::reload::Revoked) -> bool {
        crl.contains(&self.issuer_der, &self.serial_der)
    }
}

/// Why a verified connection still has no usable agent identity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The connection has no peer certificate (handshake not complete?).
    #[error("no peer certificate")]
    NoCertificate,
    /// The certificate did not parse.
    #[error("peer certificate does not parse: {0}")]
    Parse(String),
    /// No `ferrule://site/.../agent/...` URI SAN, or more than one.
    #[error("peer certificate has {0} ferrule agent URI SANs, expected exactly one")]
    UriCount(usize),
    /// The URI SAN is not a valid agent identity.
    #[error("peer certificate URI SAN: {0}")]
    BadUri(String),
}

/// The verified agent behind a connection whose handshake completed.
pub fn peer_identity(conn: &quinn::Connection) -> Result<VerifiedAgent, IdentityError> {
    let any = conn.peer_identity().ok_or(IdentityError::NoCertificate)?;
    let chain = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    identity_of(leaf.as_ref())
}

pub(crate) fn identity_of(der: &[u8]) -> Result<VerifiedAgent, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                if u.starts_with("ferrule://") {
                    uris.push(u.to_string());
                }
            }
        }
    }
    if uris.len() != 1 {
        return Err(IdentityError::UriCount(uris.len()));
    }
    let identity =
        AgentIdentity::from_uri(&uris[0]).map_err(|e| IdentityError::BadUri(e.to_string()))?;
    Ok(VerifiedAgent {
        identity,
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_after_unix: cert.validity().not_after.timestamp(),
        issuer_der: cert.issuer().as_raw().to_vec(),
        serial_der: crate::reload::serial_key(cert.raw_serial()),
    })
}
