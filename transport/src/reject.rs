//! Turns connection failures into the short reasons operators see in logs and
//! metric labels, and maps protocol errors to QUIC application close codes.
//!
//! Every label [`classify`] can return is in [`CONNECTION_REASONS`], so a
//! caller can publish each at 0 from the start (`rate()` needs the series to
//! exist before the first failure).
//!
//! Who refused matters: quinn reports a failure *this* side detected as
//! [`ConnectionError::TransportError`] and one the peer reported (its TLS alert,
//! with its rustls error text) as [`ConnectionError::ConnectionClosed`]. The
//! aggregator refusing an agent's certificate and an agent refusing the
//! aggregator's certificate both read "unknown_ca" on the wire; only the side
//! tells them apart ([`refused_by_peer`], [`classify_server`]).

use ferrule_wire::ErrorCode;
use quinn::ConnectionError;

/// A QUIC application close code carrying a wire [`ErrorCode`].
pub type CloseCode = quinn::VarInt;

/// The close code for a protocol error: the wire error code itself.
pub fn close_code(code: ErrorCode) -> CloseCode {
    quinn::VarInt::from_u32(u32::from(code.0))
}

/// Labels that name a certificate problem: the peer's certificate when this
/// side detected it, this side's certificate when the peer reported it.
pub const CERTIFICATE_REASONS: &[&str] = &[
    "revoked",
    "not_yet_valid",
    "expired",
    "wrong_server_name",
    "unknown_ca",
    "bad_key_usage",
    "bad_certificate",
    "no_client_certificate",
];

/// Every label [`classify`] returns (wire error code names included), so
/// counters can be published at 0 before the first failure.
pub const CONNECTION_REASONS: &[&str] = &[
    "revoked",
    "not_yet_valid",
    "expired",
    "wrong_server_name",
    "unknown_ca",
    "bad_key_usage",
    "bad_certificate",
    "no_client_certificate",
    "alpn_mismatch",
    "tls_alert",
    "transport_error",
    "application_closed",
    "malformed",
    "unsupported_version",
    "unexpected_message",
    "credit_exceeded",
    "identity_mismatch",
    "limit_exceeded",
    "bad_define",
    "unauthorized",
    "internal",
    "timeout",
    "certificate_revoked",
    "reset",
    "timed_out",
    "locally_closed",
    "version_mismatch",
    "cids_exhausted",
];

/// The label the aggregator counts when the *agent* refused the aggregator's
/// certificate (its alert reached us): distinct from `unknown_ca` & co., which
/// mean the aggregator refused the agent's certificate.
pub const PEER_REFUSED_SERVER_CERTIFICATE: &str = "peer_refused_server_certificate";

/// True when the peer ended the handshake because of a certificate: it refused
/// *our* certificate (its TLS alert or its rustls error text says so).
pub fn refused_by_peer(err: &ConnectionError) -> bool {
    matches!(err, ConnectionError::ConnectionClosed(_))
        && CERTIFICATE_REASONS.contains(&classify(err))
}

/// [`classify`] as the server counts refusals: a certificate problem the peer
/// reported is [`PEER_REFUSED_SERVER_CERTIFICATE`], never the label of the
/// same problem with the peer's own certificate.
pub fn classify_server(err: &ConnectionError) -> &'static str {
    if refused_by_peer(err) {
        PEER_REFUSED_SERVER_CERTIFICATE
    } else {
        classify(err)
    }
}

/// A short, stable reason for a failed or closed connection, for metric labels.
///
/// Certificate problems are recognised from rustls's error text as it travels in
/// the QUIC transport error, on whichever side detected it, or from the TLS alert
/// the other side sent. The text is the `Display` of rustls's typed
/// `CertificateError` (quinn carries nothing else); the tests below build those
/// typed errors and check their labels, so a rustls release that rewords one
/// fails a test rather than relabelling a refusal `tls_alert`.
pub fn classify(err: &ConnectionError) -> &'static str {
    match err {
        ConnectionError::TransportError(t) => classify_text(&t.reason, u64::from(t.code)),
        ConnectionError::ConnectionClosed(c) => {
            classify_text(&String::from_utf8_lossy(&c.reason), u64::from(c.error_code))
        }
        ConnectionError::ApplicationClosed(c) => match u16::try_from(c.error_code.into_inner()) {
            // Our close codes are wire error codes; 0 is a normal close.
            Ok(0) | Err(_) => "application_closed",
            Ok(code) => match ErrorCode(code).name() {
                "unknown" => "application_closed",
                name => name,
            },
        },
        ConnectionError::Reset => "reset",
        ConnectionError::TimedOut => "timed_out",
        ConnectionError::LocallyClosed => "locally_closed",
        ConnectionError::VersionMismatch => "version_mismatch",
        ConnectionError::CidsExhausted => "cids_exhausted",
    }
}

fn classify_text(reason: &str, code: u64) -> &'static str {
    let r = reason.to_ascii_lowercase();
    // Most specific first.
    let by_text = [
        ("revoked", "revoked"),
        ("notvalidyet", "not_yet_valid"),
        ("not valid yet", "not_yet_valid"),
        ("expired", "expired"),
        ("notvalidforname", "wrong_server_name"),
        ("certificate not valid for name", "wrong_server_name"),
        ("not valid for name", "wrong_server_name"),
        // InvalidPurpose(Context): a server certificate presented as a client
        // certificate, or the reverse (wrong extended key usage).
        ("invalidpurpose", "bad_key_usage"),
        ("extended key usage", "bad_key_usage"),
        ("unknownissuer", "unknown_ca"),
        ("unknown issuer", "unknown_ca"),
        ("unknown_ca", "unknown_ca"),
        ("no certificates", "no_client_certificate"),
        ("nocertificatespresented", "no_client_certificate"),
        ("certificate_required", "no_client_certificate"),
        ("certificaterequired", "no_client_certificate"),
        ("unsupportedcertversion", "bad_certificate"),
        ("badsignature", "bad_certificate"),
        ("bad_certificate", "bad_certificate"),
        ("badcertificate", "bad_certificate"),
        ("certificate_revoked", "revoked"),
        ("certificate_expired", "expired"),
        ("no_application_protocol", "alpn_mismatch"),
        ("noapplicationprotocol", "alpn_mismatch"),
    ];
    for (needle, label) in by_text {
        if r.contains(needle) {
            return label;
        }
    }
    // TLS alerts arrive as crypto errors 0x100 + alert number (RFC 9001, 20.1).
    match code.checked_sub(0x100) {
        Some(42) => "bad_certificate",
        Some(44) => "revoked",
        Some(45) => "expired",
        Some(43) => "bad_key_usage",
        Some(48) => "unknown_ca",
        Some(116) => "no_client_certificate",
        Some(120) => "alpn_mismatch",
        Some(a) if a < 256 => "tls_alert",
        _ => "transport_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_recognised() {
        assert_eq!(
            classify_text("invalid peer certificate: Expired", 0x12a),
            "expired"
        );
        assert_eq!(
            classify_text("invalid peer certificate: Revoked", 0),
            "revoked"
        );
        assert_eq!(
            classify_text("peer sent no certificates", 0),
            "no_client_certificate"
        );
        assert_eq!(classify_text("", 0x100 + 48), "unknown_ca");
        assert_eq!(classify_text("", 0x100 + 116), "no_client_certificate");
        assert_eq!(classify_text("", 7), "transport_error");
        assert_eq!(classify_text("", 0x100 + 43), "bad_key_usage");
    }

    /// The text quinn carries for a rustls error is its `Display`
    /// (quinn-proto's `crypto::rustls`); each typed certificate error the
    /// verifiers return must get its own label.
    #[test]
    fn typed_rustls_certificate_errors_get_their_labels() {
        use rustls::pki_types::UnixTime;
        use rustls::{CertificateError as C, Error, ExtendedKeyPurpose as Eku};
        use std::time::Duration;
        let t = |s: u64| UnixTime::since_unix_epoch(Duration::from_secs(s));
        let cases: Vec<(C, &str)> = vec![
            (C::InvalidPurpose, "bad_key_usage"),
            (
                C::InvalidPurposeContext {
                    required: Eku::ClientAuth,
                    presented: vec![Eku::ServerAuth],
                },
                "bad_key_usage",
            ),
            (C::Expired, "expired"),
            (
                C::ExpiredContext {
                    time: t(2000),
                    not_after: t(1000),
                },
                "expired",
            ),
            (C::NotValidYet, "not_yet_valid"),
            (
                C::NotValidYetContext {
                    time: t(1000),
                    not_before: t(2000),
                },
                "not_yet_valid",
            ),
            (C::UnknownIssuer, "unknown_ca"),
            (C::Revoked, "revoked"),
            (C::BadSignature, "bad_certificate"),
            (C::NotValidForName, "wrong_server_name"),
        ];
        for (typed, want) in cases {
            let alert = u64::from(u8::from(rustls::AlertDescription::from(typed.clone())));
            let text = Error::InvalidCertificate(typed.clone()).to_string();
            assert_eq!(
                classify_text(&text, 0x100 + alert),
                want,
                "{typed:?}: {text}"
            );
            // The alert alone (a peer that sends no text) gives the same label
            // where TLS has an alert for it.
            let by_alert = classify_text("", 0x100 + alert);
            if !matches!(
                typed,
                C::NotValidYet
                    | C::NotValidYetContext { .. }
                    | C::BadSignature
                    | C::NotValidForName
            ) {
                assert_eq!(by_alert, want, "{typed:?} by its alert alone");
            }
        }
    }

    #[test]
    fn every_label_is_published() {
        for (text, code) in [("", 0x100 + 99), ("", 7), ("x", 0x100 + 46)] {
            assert!(CONNECTION_REASONS.contains(&classify_text(text, code)));
        }
        for r in CERTIFICATE_REASONS {
            assert!(CONNECTION_REASONS.contains(r), "{r}");
        }
    }

    #[test]
    fn a_local_refusal_is_not_the_peers() {
        let local = ConnectionError::TransportError(quinn_proto::TransportError {
            code: quinn_proto::TransportErrorCode::crypto(48),
            frame: None,
            reason: "invalid peer certificate: UnknownIssuer".into(),
        });
        assert!(!refused_by_peer(&local));
        assert_eq!(classify_server(&local), "unknown_ca");
    }
}
