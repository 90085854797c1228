//! Reading certificates out of PEM (or raw DER) bytes and writing PEM back.
//!
//! Invariant: output always uses `\n` line endings and the standard
//! `CERTIFICATE` / `X509 CRL` labels, so files we write are byte-stable and
//! readable by OpenSSL, rustls and this crate alike.

use crate::error::{Error, Result};

const CERT_TAG: &str = "CERTIFICATE";

/// Extracts the DER of every `CERTIFICATE` block in `input`, in order.
///
/// Other PEM blocks (keys, CRLs) are skipped. Input without any PEM
/// armor is taken to be a single DER certificate if it starts like an
/// ASN.1 SEQUENCE. Fails with [`Error::NoCertificates`] if nothing is found.
pub(crate) fn certs_der(input: &[u8]) -> Result<Vec<Vec<u8>>> {
    if !contains(input, b"-----BEGIN") {
        return match input.first() {
            Some(0x30) => Ok(vec![input.to_vec()]),
            _ => Err(Error::NoCertificates),
        };
    }
    let blocks = pem::parse_many(input).map_err(|e| Error::InvalidPem {
        reason: e.to_string(),
    })?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == CERT_TAG)
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(Error::NoCertificates);
    }
    Ok(certs)
}

/// PEM-encodes one DER certificate.
pub(crate) fn encode_cert(der: &[u8]) -> String {
    encode(CERT_TAG, der)
}

/// PEM-encodes one DER CRL with the `X509 CRL` label OpenSSL expects.
pub(crate) fn encode_crl(der: &[u8]) -> String {
    encode("X509 CRL", der)
}

fn encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
