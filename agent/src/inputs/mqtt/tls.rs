//! TLS to the broker: a rustls client config built with the ring provider
//! (the workspace never links aws-lc), trusting only the configured CA, with
//! an optional client certificate for brokers that require one.
//!
//! Files are read when the input starts (and by `check-config`), so a broken
//! file is reported at its key rather than on the first connect.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

/// Why a TLS client config could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file held no certificate, or no private key.
    #[error("{path}: no {what} in PEM form")]
    Empty {
        /// The file.
        path: String,
        /// `certificate` or `private key`.
        what: &'static str,
    },
    /// rustls refused a certificate or key.
    #[error("{path}: {source}")]
    Rustls {
        /// The file.
        path: String,
        /// rustls's reason.
        source: rustls::Error,
    },
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| TlsError::Read {
        path: shown.clone(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: shown.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: shown,
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let shown = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| TlsError::Read {
        path: shown.clone(),
        source,
    })?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|source| TlsError::Read {
            path: shown.clone(),
            source,
        })?
        .ok_or(TlsError::Empty {
            path: shown,
            what: "private key",
        })
}

/// A client config trusting the certificates in `ca`, presenting `client`
/// (certificate chain file, key file) if given.
pub fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            path: ca.display().to_string(),
            source,
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            path: ca.display().to_string(),
            source,
        })?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|source| TlsError::Rustls {
                path: key.display().to_string(),
                source,
            })?,
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("nope.pem");
        let e = client_config(&missing, None).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("nope.pem")),
            "{e:?}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap_or_else(|e| panic!("{e}"));
        let e = client_config(&empty, None).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("no certificate")),
            "{e:?}"
        );
    }
}
