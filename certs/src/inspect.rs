//! Reading certificates back for humans and scripts: subject, issuer,
//! SANs, serial, validity and the ferrule agent identity.
//!
//! Invariant: inspection never fails on a well-formed certificate that is
//! merely unusual (foreign SAN types, a non-ferrule URI, expired): those show
//! up as data (`agent: None`, negative `days_left`), and only undecodable
//! input is an error.

use std::fmt::Write as _;
use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::error::{Error, Result};
use crate::pemfile;
use crate::serial::Serial;
use crate::store::rfc3339;
use ferrule_identity::AgentIdentity;

/// The facts about one certificate that operators and the aggregator need.
///
/// It exists so `inspect` (text and JSON), `bundle` and tests read
/// certificates one way, through one parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject DN, OpenSSL-style (`O=ferrule, CN=pump-3`).
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// URI SANs.
    pub uris: Vec<String>,
    /// Serial number.
    pub serial: Serial,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// `basicConstraints CA:TRUE`.
    pub is_ca: bool,
    /// Subject equals issuer (a root, for our purposes).
    pub self_issued: bool,
    /// The agent identity, if a URI SAN is a valid ferrule agent URI.
    pub agent: Option<AgentIdentity>,
    /// The DER encoding, for re-encoding (e.g. into a bundle).
    pub der: Vec<u8>,
}

impl CertInfo {
    /// Whole days from `now` until expiry, rounded down; negative once
    /// expired (e.g. -1 during the first day after expiry).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_seconds().div_euclid(86_400)
    }

    /// Parses one DER certificate; `index` (1-based) only labels errors.
    pub fn from_der(der: &[u8], index: usize) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidCertificate { index, reason };
        let (rest, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| invalid(e.to_string()))?;
        if !rest.is_empty() {
            return Err(invalid(format!("{} trailing bytes", rest.len())));
        }
        let mut info = CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            uris: Vec::new(),
            serial: Serial::from_bytes(cert.raw_serial()),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca: cert.is_ca(),
            self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
            agent: None,
            der: der.to_vec(),
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|e| invalid(format!("bad subjectAltName: {e}")))?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::DNSName(d) => info.dns_names.push((*d).to_owned()),
                GeneralName::URI(u) => info.uris.push((*u).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        info.ip_addresses.push(ip);
                    }
                }
                _ => {}
            }
        }
        info.agent = info
            .uris
            .iter()
            .find_map(|u| AgentIdentity::from_uri(u).ok());
        Ok(info)
    }

    /// Multi-line human-readable description, as `ferrule-certs inspect`
    /// prints it.
    pub fn to_text(&self, now: OffsetDateTime) -> String {
        let mut out = String::new();
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "subject:     {}", self.subject);
        let _ = writeln!(out, "issuer:      {}", self.issuer);
        let _ = writeln!(out, "serial:      {}", self.serial.to_colon_hex());
        let _ = writeln!(out, "ca:          {}", self.is_ca);
        let _ = writeln!(out, "dns sans:    {}", list(self.dns_names.clone()));
        let _ = writeln!(
            out,
            "ip sans:     {}",
            list(self.ip_addresses.iter().map(ToString::to_string).collect())
        );
        let _ = writeln!(out, "uri sans:    {}", list(self.uris.clone()));
        let _ = writeln!(out, "not before:  {}", rfc3339(self.not_before));
        let _ = writeln!(out, "not after:   {}", rfc3339(self.not_after));
        let _ = writeln!(out, "days left:   {}", self.days_left(now));
        if let Some(agent) = &self.agent {
            let _ = writeln!(out, "site:        {}", agent.site());
            let _ = writeln!(out, "agent:       {}", agent.agent());
        }
        out
    }

    /// One JSON object (no trailing newline), as `inspect --json` prints
    /// inside its array.
    pub fn to_json(&self, now: OffsetDateTime) -> String {
        let strings = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|s| json_string(s)).collect();
            format!("[{}]", items.join(","))
        };
        let ips: Vec<String> = self.ip_addresses.iter().map(ToString::to_string).collect();
        let (site, agent) = match &self.agent {
            Some(a) => (json_string(a.site()), json_string(a.agent())),
            None => ("null".to_owned(), "null".to_owned()),
        };
        format!(
            concat!(
                "{{\"subject\":{},\"issuer\":{},\"serial\":{},\"is_ca\":{},",
                "\"dns_names\":{},\"ip_addresses\":{},\"uris\":{},",
                "\"not_before\":{},\"not_after\":{},\"days_left\":{},",
                "\"site\":{},\"agent\":{}}}"
            ),
            json_string(&self.subject),
            json_string(&self.issuer),
            json_string(&self.serial.to_hex()),
            self.is_ca,
            strings(&self.dns_names),
            strings(&ips),
            strings(&self.uris),
            json_string(&rfc3339(self.not_before)),
            json_string(&rfc3339(self.not_after)),
            self.days_left(now),
            site,
            agent,
        )
    }
}

/// Parses every certificate in `input` (PEM with one or more `CERTIFICATE`
/// blocks, or a single DER certificate), in file order.
pub fn inspect(input: &[u8]) -> Result<Vec<CertInfo>> {
    pemfile::certs_der(input)?
        .iter()
        .enumerate()
        .map(|(i, der)| CertInfo::from_der(der, i + 1))
        .collect()
}

/// A JSON array of [`CertInfo::to_json`] objects, one per line.
pub fn to_json(infos: &[CertInfo], now: OffsetDateTime) -> String {
    let items: Vec<String> = infos
        .iter()
        .map(|i| format!("  {}", i.to_json(now)))
        .collect();
    format!("[\n{}\n]", items.join(",\n"))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Encodes `s` as a JSON string literal (RFC 8259 escaping).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escaping() {
        assert_eq!(json_string("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(inspect(b"hello"), Err(Error::NoCertificates)));
        assert!(inspect(b"").is_err());
        assert!(inspect(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        assert!(
            inspect(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
        assert!(inspect(&[0x30, 0x03, 0x01, 0x01, 0xff]).is_err());
    }
}
