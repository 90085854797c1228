//! Turns connection failures into the short reasons operators see in logs and
//! metric labels, and maps protocol errors to QUIC application close codes.

use ferrule_wire::ErrorCode;
use quinn::ConnectionError;

/// A QUIC application close code carrying a wire [`ErrorCode`].
pub type CloseCode = quinn::VarInt;

/// The close code for a protocol error: the wire error code itself.
pub fn close_code(code: ErrorCode) -> CloseCode {
    quinn::VarInt::from_u32(u32::from(code.0))
}

/// A short, stable reason for a failed or closed connection, for metric labels.
///
/// Certificate problems are recognised from rustls's error text as it travels in
/// the QUIC transport error, on whichever side detected it, or from the TLS alert
/// the other side sent.
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
        ("not valid for name", "wrong_server_name"),
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
    }
}
