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
    "server_busy",
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
/// *our* certificate (its TLS alert says so).
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
/// Decided by numbers alone, never by text: the QUIC error code, which for a
/// TLS alert is 0x100 + the alert (RFC 9001, 20.1), and our own close codes.
/// The reason phrase a peer sends, and rustls's text (which can quote the
/// peer's certificate), stay in the logs. TLS has one alert for several
/// certificate problems (expired and not yet valid are both
/// `certificate_expired`); the side that refused knows the exact one from
/// rustls's typed error, through [`crate::Refusals`].
pub fn classify(err: &ConnectionError) -> &'static str {
    match err {
        ConnectionError::TransportError(t) => by_code(u64::from(t.code)),
        ConnectionError::ConnectionClosed(c) => by_code(u64::from(c.error_code)),
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

/// TLS alerts a certificate verifier's error turns into (rustls maps each
/// `CertificateError` to one of these).
const VERIFIER_ALERTS: &[u64] = &[42, 43, 44, 45, 46, 48, 49, 51, 113];

/// True when this side refused the peer's certificate in the handshake: its
/// verifier did, and so already reported the exact reason to its
/// [`crate::Refusals`]. (No certificate at all is refused by rustls before
/// any verifier runs: not this.)
pub fn refused_by_verifier(err: &ConnectionError) -> bool {
    match err {
        ConnectionError::TransportError(t) => u64::from(t.code)
            .checked_sub(0x100)
            .is_some_and(|a| VERIFIER_ALERTS.contains(&a)),
        _ => false,
    }
}

fn by_code(code: u64) -> &'static str {
    match code.checked_sub(0x100) {
        Some(42) | Some(46) => "bad_certificate",
        Some(43) => "bad_key_usage",
        Some(44) => "revoked",
        Some(45) => "expired",
        Some(48) => "unknown_ca",
        Some(116) => "no_client_certificate",
        Some(120) => "alpn_mismatch",
        Some(a) if a < 256 => "tls_alert",
        // CONNECTION_REFUSED: the server's handshake gate was full.
        None if code == 0x2 => "server_busy",
        _ => "transport_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(alert: u64, reason: &str) -> ConnectionError {
        ConnectionError::ConnectionClosed(quinn_proto::ConnectionClose {
            error_code: quinn_proto::TransportErrorCode::crypto(
                u8::try_from(alert).expect("an alert"),
            ),
            frame_type: None,
            reason: reason.as_bytes().to_vec().into(),
        })
    }

    #[test]
    fn alerts_name_their_reasons() {
        for (alert, want) in [
            (42, "bad_certificate"),
            (43, "bad_key_usage"),
            (44, "revoked"),
            (45, "expired"),
            (48, "unknown_ca"),
            (116, "no_client_certificate"),
            (120, "alpn_mismatch"),
            (40, "tls_alert"),
        ] {
            assert_eq!(classify(&closed(alert, "")), want, "alert {alert}");
        }
    }

    /// What a peer writes in its close reason is not its label: a handshake
    /// failure with alert `bad_certificate` and a reason phrase reading
    /// "revoked" is `bad_certificate`.
    #[test]
    fn a_peer_cannot_choose_its_label_by_text() {
        for text in ["revoked", "certificate_revoked", "Expired", "unknown_ca"] {
            assert_eq!(classify(&closed(42, text)), "bad_certificate", "{text}");
        }
        assert_eq!(classify(&closed(40, "revoked")), "tls_alert");
    }

    /// Each typed certificate error's alert gives a certificate label, and a
    /// local refusal of one is the verifier's to count.
    #[test]
    fn verifier_refusals_are_told_apart_by_their_alert() {
        use rustls::CertificateError as C;
        for typed in [
            C::Expired,
            C::NotValidYet,
            C::Revoked,
            C::UnknownIssuer,
            C::BadSignature,
            C::NotValidForName,
            C::InvalidPurpose,
            C::BadEncoding,
            C::ApplicationVerificationFailure,
            C::InvalidOcspResponse,
        ] {
            let alert = u8::from(rustls::AlertDescription::from(typed.clone()));
            let local = ConnectionError::TransportError(quinn_proto::TransportError {
                code: quinn_proto::TransportErrorCode::crypto(alert),
                frame: None,
                reason: String::new(),
            });
            assert!(refused_by_verifier(&local), "{typed:?}");
            assert!(!refused_by_peer(&local), "{typed:?}");
        }
        let none = ConnectionError::TransportError(quinn_proto::TransportError {
            code: quinn_proto::TransportErrorCode::crypto(116),
            frame: None,
            reason: String::new(),
        });
        assert!(!refused_by_verifier(&none));
        assert_eq!(classify(&none), "no_client_certificate");
    }

    #[test]
    fn every_label_is_published() {
        for code in [0x100 + 99, 7, 0x100 + 46, 0x100 + 42] {
            assert!(CONNECTION_REASONS.contains(&by_code(code)));
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
        assert!(refused_by_peer(&closed(48, "")));
        assert_eq!(
            classify_server(&closed(48, "")),
            PEER_REFUSED_SERVER_CERTIFICATE
        );
    }
}
