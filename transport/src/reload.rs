//! What reloading TLS material on a live server needs from the transport:
//!
//! - [`ServerTlsSlot`]: the QUIC server configuration new handshakes take
//!   (`Incoming::accept_with`), swapped whole when the certificate, key, trust
//!   bundle or CRL change. Established connections keep what they were
//!   accepted with; the retry token key stays (a clone with new crypto).
//! - [`FileStamp`]: what a file looks like without reading it (device,
//!   inode, size, modification and change times, through symlinks), so a
//!   periodic check notices an edit, a rename over the file and a symlink swap
//!   (Kubernetes' `..data`, cert-manager) without reading a 256 MiB CRL every
//!   few seconds.
//! - [`Revoked`]: the (issuer, serial) pairs a CRL file lists, so each live
//!   session can tell whether a new CRL revokes it.

use crate::error::TlsError;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use x509_parser::prelude::*;

/// The server configuration new handshakes take.
#[derive(Clone)]
pub struct ServerTlsSlot {
    current: Arc<Mutex<Arc<quinn::ServerConfig>>>,
}

impl std::fmt::Debug for ServerTlsSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTlsSlot")
    }
}

impl ServerTlsSlot {
    /// A slot holding `base` (made by [`crate::server_config`]).
    pub fn new(base: quinn::ServerConfig) -> Self {
        Self {
            current: Arc::new(Mutex::new(Arc::new(base))),
        }
    }

    /// What a handshake starting now is accepted with.
    pub fn current(&self) -> Arc<quinn::ServerConfig> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From now on, handshakes use `crypto` (everything else unchanged).
    pub fn install(&self, crypto: rustls::ServerConfig) -> Result<(), TlsError> {
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let mut guard = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = (**guard).clone();
        next.crypto = Arc::new(quic);
        *guard = Arc::new(next);
        Ok(())
    }
}

/// What a file looks like, without reading it; `None` if it cannot be
/// looked at (missing, unreadable directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// The stamp of `path`, through symlinks (a swapped link shows as another
/// inode).
pub fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

/// The certificates a CRL file revokes: (issuer name DER, serial bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    set: HashSet<(Vec<u8>, Vec<u8>)>,
}

/// A serial's bytes as compared: without leading zero bytes (DER keeps one
/// before a high bit; a CRL and a certificate may differ in that).
pub(crate) fn serial_key(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[start..].to_vec()
}

impl Revoked {
    /// Reads every CRL in the PEM file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, TlsError> {
        let mut set = HashSet::new();
        for crl in crate::tls::crls(path)? {
            let (_, parsed) = parse_x509_crl(crl.as_ref()).map_err(|e| TlsError::Pem {
                path: path.to_path_buf(),
                what: format!("CRL does not parse: {e}"),
            })?;
            let issuer = parsed.issuer().as_raw().to_vec();
            for r in parsed.iter_revoked_certificates() {
                set.insert((issuer.clone(), serial_key(r.raw_serial())));
            }
        }
        Ok(Self { set })
    }

    /// Whether the certificate of `serial` (raw bytes) from `issuer` (name
    /// DER) is listed.
    pub fn contains(&self, issuer: &[u8], serial: &[u8]) -> bool {
        self.set.contains(&(issuer.to_vec(), serial_key(serial)))
    }

    /// Certificates listed.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Nothing listed.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_without_leading_zeros() {
        assert_eq!(serial_key(&[0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(serial_key(&[0x7f]), vec![0x7f]);
        assert_eq!(serial_key(&[0, 0]), Vec::<u8>::new());
    }

    #[test]
    fn stamps_see_a_rename_over_the_file_and_a_symlink_swap() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("cert.pem");
        std::fs::write(&f, "a").unwrap_or_else(|e| panic!("{e}"));
        let s1 = stamp(&f);
        assert!(s1.is_some());
        assert_eq!(stamp(&f), s1, "unchanged");
        // Same size, renamed over: another inode.
        let tmp = dir.path().join("cert.pem.new");
        std::fs::write(&tmp, "b").unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &f).unwrap_or_else(|e| panic!("{e}"));
        let s2 = stamp(&f);
        assert_ne!(s2, s1);
        // A link swapped to another target.
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&b, "x").unwrap_or_else(|e| panic!("{e}"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link).unwrap_or_else(|e| panic!("{e}"));
        let l1 = stamp(&link);
        let tmp = dir.path().join("link.new");
        std::os::unix::fs::symlink(&b, &tmp).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &link).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(stamp(&link), l1);
        assert_eq!(stamp(&dir.path().join("missing")), None);
    }
}
