//! Certificate refusals counted by what rustls found, not by what anybody wrote.
//!
//! quinn hands a failed handshake back as text: the `Display` of rustls's
//! error on the side that refused, the peer's own words on the side that was
//! refused. Labels read out of that text can be chosen by a peer (a reason
//! phrase in its CONNECTION_CLOSE, a name in its certificate quoted in the
//! error). So the verifiers here wrap rustls's and, when one refuses a
//! certificate, take the label from the typed [`CertificateError`]
//! ([`certificate_label`]), hand it to [`Refusals`] (which counts it and keeps
//! the last one), and pass on a context-free error of the same kind: the TLS
//! alert the peer gets is unchanged, and nothing the peer put in its
//! certificate travels in the close reason. A peer that presents a
//! certificate without its key (its handshake signature does not verify) is
//! refused and recorded the same way.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// A callback told the label of every certificate this side refused.
type OnRefusal = Box<dyn Fn(&'static str) + Send + Sync>;

/// Where a verifier reports the certificates it refused.
///
/// One per endpoint: the aggregator counts into its refusal metric as each
/// refusal happens (handshakes run concurrently, so there is no "last" to
/// ask for afterwards); the agent, one connection attempt at a time, asks
/// [`Refusals::take_last`] why its attempt failed.
pub struct Refusals {
    on_refusal: Option<OnRefusal>,
    last: Mutex<Option<&'static str>>,
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals")
            .field("last", &self.last.lock().ok().and_then(|l| *l))
            .finish_non_exhaustive()
    }
}

impl Refusals {
    /// Keeps only the last refusal (for a client making one attempt at a time).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            on_refusal: None,
            last: Mutex::new(None),
        })
    }

    /// Also calls `on_refusal` with each refusal's label as it happens.
    pub fn counting(on_refusal: impl Fn(&'static str) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            on_refusal: Some(Box::new(on_refusal)),
            last: Mutex::new(None),
        })
    }

    /// Records a refusal of a certificate (or of a signature made with its
    /// key); returns its label. Other errors (a CRL that does not verify)
    /// are not a verdict on the peer's certificate: not recorded here, they
    /// are counted by their alert where the handshake fails.
    pub fn record(&self, err: &Error) -> &'static str {
        if !matches!(
            err,
            Error::InvalidCertificate(_) | Error::NoCertificatesPresented
        ) {
            return certificate_label(err);
        }
        let label = certificate_label(err);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(label);
        }
        if let Some(f) = &self.on_refusal {
            f(label);
        }
        label
    }

    /// Passes `result` on; an error is recorded and passed on without the
    /// details a peer could have put in it ([`without_context`]). What every
    /// method of the recording verifiers does with the inner verifier's answer.
    fn verdict<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|e| {
            self.record(&e);
            without_context(e)
        })
    }

    /// The label of the last refusal since the last call, if any.
    pub fn take_last(&self) -> Option<&'static str> {
        self.last.lock().ok().and_then(|mut l| l.take())
    }
}

/// The label for a certificate error, one of [`crate::CERTIFICATE_REASONS`],
/// decided by its type alone.
pub fn certificate_label(err: &Error) -> &'static str {
    match err {
        Error::InvalidCertificate(c) => {
            match c {
                CertificateError::Revoked => "revoked",
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "not_yet_valid"
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => "wrong_server_name",
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => "bad_key_usage",
                CertificateError::UnknownIssuer
                | CertificateError::UnknownRevocationStatus
                | CertificateError::ExpiredRevocationList
                | CertificateError::ExpiredRevocationListContext { .. } => "unknown_ca",
                _ => "bad_certificate",
            }
        }
        Error::NoCertificatesPresented => "no_client_certificate",
        _ => "bad_certificate",
    }
}

/// The same kind of error without the details a peer could have put in it
/// (names, times, purposes from its certificate): same alert, fixed text.
fn without_context(err: Error) -> Error {
    let Error::InvalidCertificate(c) = err else {
        return err;
    };
    Error::InvalidCertificate(match c {
        CertificateError::ExpiredContext { .. } => CertificateError::Expired,
        CertificateError::NotValidYetContext { .. } => CertificateError::NotValidYet,
        CertificateError::NotValidForNameContext { .. } => CertificateError::NotValidForName,
        CertificateError::InvalidPurposeContext { .. } => CertificateError::InvalidPurpose,
        CertificateError::ExpiredRevocationListContext { .. } => {
            CertificateError::ExpiredRevocationList
        }
        other => other,
    })
}

/// A client-certificate verifier (the aggregator's) that reports refusals.
#[derive(Debug)]
pub(crate) struct RecordingClientVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) refusals: Arc<Refusals>,
}

impl ClientCertVerifier for RecordingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.refusals.verdict(
            self.inner
                .verify_client_cert(end_entity, intermediates, now),
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.refusals
            .verdict(self.inner.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.refusals
            .verdict(self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server-certificate verifier (the agent's) that reports refusals.
#[derive(Debug)]
pub(crate) struct RecordingServerVerifier {
    pub(crate) inner: Arc<dyn ServerCertVerifier>,
    pub(crate) refusals: Arc<Refusals>,
}

impl ServerCertVerifier for RecordingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.refusals.verdict(self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.refusals
            .verdict(self.inner.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.refusals
            .verdict(self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::UnixTime;
    use rustls::{ExtendedKeyPurpose as Eku, OtherError};
    use std::time::Duration;

    fn t(s: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(s))
    }

    #[test]
    fn each_typed_error_has_its_label() {
        let cases: Vec<(CertificateError, &str)> = vec![
            (CertificateError::Revoked, "revoked"),
            (CertificateError::Expired, "expired"),
            (
                CertificateError::ExpiredContext {
                    time: t(2),
                    not_after: t(1),
                },
                "expired",
            ),
            (CertificateError::NotValidYet, "not_yet_valid"),
            (
                CertificateError::NotValidYetContext {
                    time: t(1),
                    not_before: t(2),
                },
                "not_yet_valid",
            ),
            (CertificateError::NotValidForName, "wrong_server_name"),
            (CertificateError::InvalidPurpose, "bad_key_usage"),
            (
                CertificateError::InvalidPurposeContext {
                    required: Eku::ClientAuth,
                    presented: vec![Eku::ServerAuth],
                },
                "bad_key_usage",
            ),
            (CertificateError::UnknownIssuer, "unknown_ca"),
            (CertificateError::UnknownRevocationStatus, "unknown_ca"),
            (CertificateError::BadSignature, "bad_certificate"),
            (CertificateError::BadEncoding, "bad_certificate"),
            (
                CertificateError::Other(OtherError(Arc::new(std::io::Error::other("revoked")))),
                "bad_certificate",
            ),
        ];
        for (c, want) in cases {
            let e = Error::InvalidCertificate(c.clone());
            assert_eq!(certificate_label(&e), want, "{c:?}");
            assert!(crate::CERTIFICATE_REASONS.contains(&want));
        }
        assert_eq!(
            certificate_label(&Error::NoCertificatesPresented),
            "no_client_certificate"
        );
    }

    /// A name the peer put in its certificate (here one reading "revoked")
    /// is neither the label nor in the error passed on; the alert is kept.
    #[test]
    fn a_peer_chosen_name_neither_labels_nor_travels() {
        let refusals = Refusals::new();
        let e = Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("agg.example")
                .expect("a valid name")
                .to_owned(),
            presented: vec!["revoked.certificate_revoked.example".into()],
        });
        let alert = rustls::AlertDescription::from(match &e {
            Error::InvalidCertificate(c) => c.clone(),
            _ => unreachable!(),
        });
        assert_eq!(refusals.record(&e), "wrong_server_name");
        let passed = without_context(e);
        assert!(!passed.to_string().contains("revoked"), "{passed}");
        let Error::InvalidCertificate(c) = passed else {
            panic!("kind changed")
        };
        assert_eq!(rustls::AlertDescription::from(c), alert);
        assert_eq!(refusals.take_last(), Some("wrong_server_name"));
        assert_eq!(refusals.take_last(), None);
    }

    #[test]
    fn counting_sees_every_refusal() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let refusals = Refusals::counting(move |l| s.lock().expect("lock").push(l));
        refusals.record(&Error::InvalidCertificate(CertificateError::Revoked));
        refusals.record(&Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert_eq!(*seen.lock().expect("lock"), vec!["revoked", "unknown_ca"]);
    }
}
