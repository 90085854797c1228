//! rustls configurations for both sides, built by hand so that 0-RTT stays off
//! (quinn's `with_single_cert` convenience would enable it, and 0-RTT data is
//! replayable) and only TLS 1.3 is offered.
//!
//! The server requires a client certificate chained to its trust bundle and, when
//! a CRL is configured, not revoked; the client verifies the server's name against
//! its own trust bundle and presents its certificate.

use crate::error::TlsError;
use crate::refusal::{RecordingClientVerifier, RecordingServerVerifier, Refusals};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ALPN protocol id: a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"ferrule/1";

/// Files the aggregator's TLS needs.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server certificate followed by its issuing CA (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// Trust bundle for agent certificates (PEM, one or more CA certificates).
    pub client_ca: PathBuf,
    /// Certificate revocation list for agent certificates (PEM), if any.
    pub crl: Option<PathBuf>,
}

/// Files the agent's TLS needs.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The agent certificate followed by its issuing CA (PEM).
    pub cert: PathBuf,
    /// The agent's private key (PEM).
    pub key: PathBuf,
    /// Trust bundle for the aggregator's certificate (PEM).
    pub server_ca: PathBuf,
}

/// The most bytes read from a certificate, key or trust bundle file. The
/// largest public trust bundles are under 1 MiB; this leaves room for any real
/// one and keeps a wrong path (`/var/log/syslog`, `/dev/zero`) from being read
/// into memory whole.
pub(crate) const MAX_PEM_BYTES: u64 = 16 << 20;

/// The most bytes read from a CRL file: a large CA's CRL runs to tens of MiB.
pub(crate) const MAX_CRL_BYTES: u64 = 256 << 20;

/// Reads a whole file of at most `limit` bytes. Bounded by reading, not by the
/// file's size in its metadata, so a device or a file still growing is
/// bounded too.
fn read(path: &Path, limit: u64) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let io = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > limit) {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
            limit_bytes: limit,
        });
    }
    Ok(bytes)
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, MAX_PEM_BYTES)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("bad PEM: {e}"),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE found".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, MAX_PEM_BYTES)?;
    let pem = |what: String| TlsError::Pem {
        path: path.to_path_buf(),
        what,
    };
    match rustls_pemfile::private_key(&mut bytes.as_slice()) {
        Ok(Some(key)) => Ok(key),
        // rustls reads no encrypted key, and rustls-pemfile skips one as an
        // unknown section (PKCS#8) or fails on its headers (traditional): "no
        // key found" or "bad PEM" would send the operator after the wrong fault.
        _ if is_encrypted_key(&bytes) => Err(pem(ENCRYPTED_KEY.into())),
        Ok(None) => Err(pem("no PRIVATE KEY found".into())),
        Err(e) => Err(pem(format!("bad PEM: {e}"))),
    }
}

/// What an encrypted key file is told.
const ENCRYPTED_KEY: &str = "the private key is encrypted (passphrase-protected); ferrule reads \
     unencrypted keys only (mode 0600): decrypt it, e.g. `openssl pkey -in KEY -out KEY.plain`";

/// True for a PEM private key protected by a passphrase: PKCS#8
/// `ENCRYPTED PRIVATE KEY`, or a traditional (PKCS#1, SEC1) key with an
/// OpenSSL `Proc-Type: 4,ENCRYPTED` header. Looks at the armour only; the key
/// bytes are never printed.
fn is_encrypted_key(bytes: &[u8]) -> bool {
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || has(b"Proc-Type: 4,ENCRYPTED")
}

pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("unusable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

pub(crate) fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read(path, MAX_CRL_BYTES)?;
    let crls: Result<Vec<_>, _> = rustls_pemfile::crls(&mut bytes.as_slice()).collect();
    crls.map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("bad CRL PEM: {e}"),
    })
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the aggregator's TLS configuration: TLS 1.3 only, client certificates
/// required and checked against the bundle and CRL, no 0-RTT.
///
/// Each client certificate refused is reported to `refusals` with the label
/// of rustls's typed error (see [`crate::Refusals`]).
pub fn server_crypto(
    files: &ServerTls,
    refusals: &Arc<Refusals>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&files.client_ca)?),
        provider.clone(),
    );
    if let Some(crl) = &files.crl {
        // Our CRLs are issued by the issuing CA and cover leaves; intermediates are
        // handled by CA rotation (see certs/README.md).
        verifier = verifier
            .with_crls(crls(crl)?)
            .only_check_end_entity_revocation();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(RecordingClientVerifier {
            inner: verifier,
            refusals: refusals.clone(),
        }))
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", files.key.display())))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    // 0 is the default; stated so nobody turns it on by accident. 0-RTT is replayable.
    cfg.max_early_data_size = 0;
    // No resumption: a resumed TLS 1.3 session skips the client certificate's
    // verification, so an agent revoked (or expired) since its last full
    // handshake would get back in. Every handshake checks the certificate
    // against the trust bundle and CRL loaded now.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// Builds the agent's TLS configuration: TLS 1.3 only, the aggregator verified
/// against the bundle (name checked by the caller's `connect`), our certificate
/// presented, no 0-RTT.
///
/// A server certificate refused is reported to `refusals` with the label of
/// rustls's typed error (see [`crate::Refusals`]).
pub fn client_crypto(
    files: &ClientTls,
    refusals: &Arc<Refusals>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(&files.server_ca)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordingServerVerifier {
            inner: verifier,
            refusals: refusals.clone(),
        }))
        .with_client_auth_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", files.key.display())))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = false;
    Ok(cfg)
}
