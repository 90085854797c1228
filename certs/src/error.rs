//! The one error type every library operation returns.
//!
//! Invariant: each variant's message names the file, value or serial it is
//! about and, where there is one, the fix, so an operator knows what to do
//! without reading code. Underlying causes (OS and rcgen errors) are exposed
//! through `source()` rather than repeated in the message, so print the
//! whole chain (e.g. anyhow's `{:#}`).

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while managing ferrule's PKI.
///
/// It exists so callers (the CLI, the aggregator's dev-cert helper, tests) can
/// tell "refused on purpose" (e.g. [`Error::AlreadyExists`]) apart from
/// "broken input" and "I/O failure" without parsing strings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading, writing or renaming a file failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being attempted ("cannot read", "cannot create", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying OS error.
        source: io::Error,
    },

    /// A target file exists and overwriting was not explicitly requested.
    #[error("refusing to overwrite {}: it already exists (pass --force to replace it)", path.display())]
    AlreadyExists {
        /// The file that would have been overwritten.
        path: PathBuf,
    },

    /// The directory does not hold an initialized CA.
    #[error("{} does not hold a ferrule CA (missing {}); run `ferrule-certs init --dir {}` first", dir.display(), missing.display(), dir.display())]
    NotInitialized {
        /// The directory that was expected to hold the CA.
        dir: PathBuf,
        /// The first expected file that is missing.
        missing: PathBuf,
    },

    /// The CA directory does not exist.
    #[error("CA directory {} does not exist; run `ferrule-certs init --dir {}` first", dir.display(), dir.display())]
    NoCaDir {
        /// The missing directory.
        dir: PathBuf,
    },

    /// Another `ferrule-certs` process holds the CA directory lock.
    #[error("{} exists: another ferrule-certs is working on this CA directory (if none is, delete the lock file)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// A site, agent id or identity URI is not valid (see `ferrule-identity`).
    #[error(transparent)]
    Identity(#[from] ferrule_identity::Error),

    /// A server name is neither an IP address nor a valid DNS name.
    #[error("invalid server name {name:?}: {reason}")]
    InvalidServerName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A server certificate was requested without any name.
    #[error("a server certificate needs at least one name (--name)")]
    NoServerNames,

    /// A lifetime of zero days (or one too large to represent) was requested.
    #[error("invalid lifetime of {days} days: must be between 1 and 36500")]
    InvalidDays {
        /// The rejected number of days.
        days: u32,
    },

    /// The requested certificate would outlive the CA that signs it.
    #[error("a {days}-day certificate would expire after its issuing CA ({ca_not_after}); use fewer --days or rotate the CA")]
    OutlivesIssuer {
        /// The requested lifetime.
        days: u32,
        /// When the issuing CA expires (RFC 3339).
        ca_not_after: String,
    },

    /// A serial number given on the command line could not be parsed.
    #[error("invalid serial {input:?}: {reason} (expected hex, e.g. 3f:a2:... or 0x3fa2...)")]
    InvalidSerial {
        /// The rejected text.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// No certificate with this serial was issued from this CA directory.
    #[error("serial {serial} is not in {}", index.display())]
    UnknownSerial {
        /// The serial (hex).
        serial: String,
        /// The index that was searched.
        index: PathBuf,
    },

    /// The certificate with this serial is already revoked.
    #[error("serial {serial} is already revoked; run `ferrule-certs crl` to re-sign the CRL")]
    AlreadyRevoked {
        /// The serial (hex).
        serial: String,
    },

    /// The serial names a CA certificate, which this CA's own CRL cannot revoke.
    #[error("serial {serial} is the {kind} CA certificate; a CA is retired by rotating it, not by its own CRL")]
    NotRevocable {
        /// The serial (hex).
        serial: String,
        /// The kind of certificate it is.
        kind: String,
    },

    /// An unknown revocation reason name.
    #[error("unknown revocation reason {input:?} (one of: {})", crate::RevocationReason::NAMES.join(", "))]
    InvalidReason {
        /// The rejected text.
        input: String,
    },

    /// A line of `index.tsv` (or the CRL counter) is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    CorruptStore {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// Input that should be PEM (or DER) could not be decoded.
    #[error("not a valid PEM/DER certificate file: {reason}")]
    InvalidPem {
        /// Why decoding failed.
        reason: String,
    },

    /// Input decoded but holds no certificate at all.
    #[error("no certificate found (expected -----BEGIN CERTIFICATE----- blocks)")]
    NoCertificates,

    /// A certificate's DER could not be parsed as X.509.
    #[error("certificate #{index} is not valid X.509: {reason}")]
    InvalidCertificate {
        /// 1-based position of the certificate in its file.
        index: usize,
        /// The parser's complaint.
        reason: String,
    },

    /// A certificate given to `bundle` is not a CA certificate.
    #[error("{}: certificate {subject:?} is not a CA certificate (basicConstraints CA:TRUE is required in a trust bundle)", path.display())]
    NotCa {
        /// The file the certificate came from.
        path: PathBuf,
        /// Its subject.
        subject: String,
    },

    /// A private key file could not be loaded.
    #[error("cannot load private key {}", path.display())]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// rcgen's complaint.
        source: rcgen::Error,
    },

    /// The issuing CA key is not the key of the issuing CA certificate.
    #[error("{} does not belong to the certificate in {}; restore the matching pair", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },

    /// The issuing CA certificate could not be loaded for signing.
    #[error("cannot load CA certificate {}", path.display())]
    InvalidCaCert {
        /// The certificate file.
        path: PathBuf,
        /// rcgen's complaint.
        source: rcgen::Error,
    },

    /// rcgen refused to build or sign a certificate or CRL.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),

    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,

    /// `renew` was given a certificate that is not an agent or server leaf
    /// as `ferrule-certs` issues them.
    #[error("{} is not a ferrule leaf certificate: {reason}; renew only reissues agent and server certificates from `ferrule-certs issue-agent` / `issue-server`", path.display())]
    NotFerruleLeaf {
        /// The certificate file.
        path: PathBuf,
        /// What is missing or extra.
        reason: String,
    },

    /// `renew` was given a leaf that the CA directory's issuing CA did not
    /// sign.
    #[error("{} was not issued by the CA in {} (its issuer is {issuer:?}); renew it with the CA that issued it", path.display(), dir.display())]
    IssuerMismatch {
        /// The certificate file.
        path: PathBuf,
        /// The CA directory given.
        dir: PathBuf,
        /// The leaf's issuer DN.
        issuer: String,
    },

    /// `renew` was given a leaf whose serial is revoked in the index.
    #[error("{} (serial {serial}) is revoked; a revoked certificate is not renewed: issue a new one with issue-agent / issue-server", path.display())]
    RevokedLeaf {
        /// The certificate file.
        path: PathBuf,
        /// The serial (hex).
        serial: String,
    },

    /// `renew` was given a key that is not the leaf's.
    #[error("{} is not the private key of {}; point --key at the certificate's key, or pass --new-key to make a new one", key.display(), cert.display())]
    LeafKeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches an action and path to an `io::Error`; the one way this crate
/// turns OS errors into [`Error::Io`], so every message names its file.
pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
