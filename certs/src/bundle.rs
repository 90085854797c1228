//! Trust bundles for CA rotation: several roots in one PEM file.
//!
//! Invariants: a bundle holds only CA certificates (`CA:TRUE`), each at most
//! once (compared by DER bytes), in the order first seen; an existing output
//! file is only replaced with `force`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{io_err, Error, Result};
use crate::inspect::CertInfo;
use crate::pemfile;
use crate::store::{write_file, Access};

/// What [`bundle`] wrote.
///
/// It exists so the CLI can tell the operator which roots ended up in the
/// bundle and which inputs were duplicates, which is what they check before
/// deploying a rotation bundle.
#[derive(Debug, Clone)]
pub struct BundleReport {
    /// The bundle file.
    pub path: PathBuf,
    /// The certificates written, in order.
    pub included: Vec<CertInfo>,
    /// Number of input certificates dropped as duplicates.
    pub duplicates: usize,
}

/// Writes the CA certificates from `inputs` (PEM files, each with one or
/// more certificates) to `out`, deduplicated.
///
/// Fails with [`Error::NotCa`] naming the file if any certificate is not a
/// CA, and with [`Error::AlreadyExists`] if `out` exists and not `force`.
pub fn bundle<P: AsRef<Path>>(out: &Path, inputs: &[P], force: bool) -> Result<BundleReport> {
    if inputs.is_empty() {
        return Err(Error::NoCertificates);
    }
    let mut included: Vec<CertInfo> = Vec::new();
    let mut duplicates = 0;
    for path in inputs {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(io_err("cannot read", path))?;
        let ders = pemfile::certs_der(&bytes).map_err(|e| match e {
            Error::NoCertificates | Error::InvalidPem { .. } => Error::InvalidPem {
                reason: format!("{}: {e}", path.display()),
            },
            other => other,
        })?;
        for (i, der) in ders.iter().enumerate() {
            let info = CertInfo::from_der(der, i + 1)?;
            if !info.is_ca {
                return Err(Error::NotCa {
                    path: path.to_owned(),
                    subject: info.subject,
                });
            }
            if included.iter().any(|c| c.der == info.der) {
                duplicates += 1;
            } else {
                included.push(info);
            }
        }
    }
    let text: String = included
        .iter()
        .map(|c| pemfile::encode_cert(&c.der))
        .collect();
    write_file(out, text.as_bytes(), Access::Public, force)?;
    Ok(BundleReport {
        path: out.to_owned(),
        included,
        duplicates,
    })
}
