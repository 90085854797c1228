//! Issuing leaf certificates: servers (aggregators) and agents.
//!
//! Invariants:
//! - Every leaf is ECDSA P-256, `CA:FALSE`, digitalSignature, with exactly
//!   one EKU: serverAuth for servers, clientAuth for agents.
//! - An agent's identity is carried only in its URI SAN
//!   `ferrule://site/SITE/agent/AGENT` (CN = AGENT is informational).
//! - A leaf never outlives the issuing CA.
//! - The index entry is written before the certificate and key, so every
//!   certificate that exists on disk can be revoked by serial.
//! - The certificate file holds the leaf followed by the issuing CA.

use std::fs::DirBuilder;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::ca::{check_days, IssuingCa, CLOCK_SKEW, ORG};
use crate::error::{io_err, Error, Result};
use crate::serial::Serial;
use crate::store::{
    append_index, refuse_existing, write_file, Access, CaFiles, CertKind, DirLock, IndexEntry,
    Status,
};
use ferrule_identity::AgentIdentity;

/// Default server certificate lifetime in days.
pub const DEFAULT_SERVER_DAYS: u32 = 90;
/// Default agent certificate lifetime in days.
pub const DEFAULT_AGENT_DAYS: u32 = 30;

/// Knobs shared by [`issue_server`] and [`issue_agent`].
///
/// It exists so the short default lifetimes and the never-overwrite rule
/// apply unless a caller explicitly asks otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueOptions {
    /// Lifetime in days; `None` means the kind's default (90 / 30).
    pub days: Option<u32>,
    /// Where to write the leaf files; `None` means the CA directory.
    pub out_dir: Option<PathBuf>,
    /// Replace existing certificate/key files of the same name.
    pub force: bool,
}

/// What an issue operation produced.
///
/// It exists so callers (CLI, demos, tests) learn the file names, the
/// serial to revoke later and the expiry without re-parsing the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Leaf certificate followed by the issuing CA (PEM).
    pub cert: PathBuf,
    /// Leaf private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
    /// The leaf's serial, as recorded in the index.
    pub serial: Serial,
    /// The leaf's expiry.
    pub not_after: OffsetDateTime,
}

impl Issued {
    /// The files written, certificate first.
    pub fn paths(&self) -> [&Path; 2] {
        [&self.cert, &self.key]
    }
}

/// Issues a serverAuth certificate for `names` (DNS names, or IP addresses
/// which become IP SANs) from the CA in `dir`. The first name is the CN and
/// names the files `server-<name>.crt/.key`.
pub fn issue_server(dir: &Path, names: &[String], opts: &IssueOptions) -> Result<Issued> {
    let first = names.first().ok_or(Error::NoServerNames)?;
    let (params, identity) = server_params(names)?;
    let stem = format!("server-{}", sanitize(first));
    issue(
        dir,
        &stem,
        params,
        CertKind::Server,
        identity,
        opts.days.unwrap_or(DEFAULT_SERVER_DAYS),
        opts,
    )
}

/// The subject, SANs and EKU of a server leaf for `names` (the first is the
/// CN), and its index identity (the lowercased names, deduplicated, joined
/// by commas). Shared by issuing and renewing, so a renewed server
/// certificate names exactly what a freshly issued one would.
pub(crate) fn server_params(names: &[String]) -> Result<(CertificateParams, String)> {
    let first = names.first().ok_or(Error::NoServerNames)?;
    let mut sans: Vec<SanType> = Vec::with_capacity(names.len());
    let mut seen: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let san = server_san(name)?;
        let canonical = name.to_ascii_lowercase();
        if !seen.contains(&canonical) {
            seen.push(canonical);
            sans.push(san);
        }
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORG);
    params
        .distinguished_name
        .push(DnType::CommonName, first.as_str());
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok((params, seen.join(",")))
}

/// Issues a clientAuth certificate for the agent `identity` from the CA in
/// `dir`, with URI SAN `ferrule://site/SITE/agent/AGENT` and CN = agent id,
/// written as `agent-<site>-<id>.crt/.key`.
pub fn issue_agent(dir: &Path, identity: &AgentIdentity, opts: &IssueOptions) -> Result<Issued> {
    let stem = format!("agent-{}-{}", identity.site(), identity.agent());
    issue(
        dir,
        &stem,
        agent_params(identity)?,
        CertKind::Agent,
        identity.to_uri(),
        opts.days.unwrap_or(DEFAULT_AGENT_DAYS),
        opts,
    )
}

/// The subject (O=ferrule, OU=site, CN=agent), URI SAN and EKU of an agent
/// leaf. Shared by issuing and renewing, so a renewed agent certificate
/// carries exactly the identity a freshly issued one would.
pub(crate) fn agent_params(identity: &AgentIdentity) -> Result<CertificateParams> {
    let uri = identity.to_uri();
    let uri_san = Ia5String::try_from(uri.as_str())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORG);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, identity.site());
    params
        .distinguished_name
        .push(DnType::CommonName, identity.agent());
    params.subject_alt_names = vec![SanType::URI(uri_san)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// The shared path: checks, lock, sign, index, write.
fn issue(
    dir: &Path,
    stem: &str,
    mut params: CertificateParams,
    kind: CertKind,
    identity: String,
    days: u32,
    opts: &IssueOptions,
) -> Result<Issued> {
    check_days(days)?;
    let files = CaFiles::new(dir);
    files.require_initialized()?;
    let out_dir = opts.out_dir.as_deref().unwrap_or(dir);
    let cert_path = out_dir.join(format!("{stem}.crt"));
    let key_path = out_dir.join(format!("{stem}.key"));
    refuse_existing([cert_path.as_path(), key_path.as_path()], opts.force)?;

    let _lock = DirLock::acquire(&files)?;
    let ca = IssuingCa::load(&files)?;
    let now = OffsetDateTime::now_utc();
    let not_after = ca.check_fits(now, days)?;

    let serial = Serial::random()?;
    let key = KeyPair::generate()?;
    let cert = sign_leaf(&mut params, &serial, now, not_after, &key, &ca)?;

    append_index(
        &files,
        IndexEntry {
            serial: serial.clone(),
            kind,
            identity,
            not_after,
            status: Status::Valid,
        },
    )?;
    if !out_dir.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out_dir)
            .map_err(io_err("cannot create directory", out_dir))?;
    }
    write_file(
        &key_path,
        key.serialize_pem().as_bytes(),
        Access::Secret,
        opts.force,
    )?;
    let chain = format!("{}{}", cert.pem(), ca.cert_pem);
    write_file(&cert_path, chain.as_bytes(), Access::Public, opts.force)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        serial,
        not_after,
    })
}

/// Completes `params` with what every leaf shares (serial, validity from
/// `now` minus the clock skew to `not_after`, `CA:FALSE`, digitalSignature,
/// the authority key id) and signs it with the issuing CA.
pub(crate) fn sign_leaf(
    params: &mut CertificateParams,
    serial: &Serial,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
    key: &KeyPair,
    ca: &IssuingCa,
) -> Result<rcgen::Certificate> {
    params.serial_number = Some(serial.to_rcgen());
    params.not_before = now - CLOCK_SKEW;
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params.signed_by(key, &ca.issuer)?)
}

/// Turns a `--name` into a SAN: an IP SAN if it parses as an address,
/// otherwise a validated DNS SAN (letters, digits, hyphens; dot-separated
/// labels of at most 63 characters; an optional leading `*.` wildcard).
fn server_san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = |reason| Error::InvalidServerName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("must not be empty"));
    }
    if name.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    for label in host.split('.') {
        if label.is_empty() {
            return Err(bad("has an empty label (leading, trailing or double dot)"));
        }
        if label.len() > 63 {
            return Err(bad("has a label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "contains a character outside A-Z a-z 0-9 - . (and not an IP address)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a label starting or ending with '-'"));
        }
    }
    Ok(SanType::DnsName(Ia5String::try_from(name)?))
}

/// Makes a name safe as part of a file name: anything outside
/// `[A-Za-z0-9._-]` (e.g. `*` or `:`) becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(matches!(
            server_san("10.0.0.1").unwrap(),
            SanType::IpAddress(_)
        ));
        assert!(matches!(server_san("::1").unwrap(), SanType::IpAddress(_)));
        assert!(matches!(
            server_san("agg-1.example.com").unwrap(),
            SanType::DnsName(_)
        ));
        assert!(server_san("*.example.com").is_ok());
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "a b",
            "-a.com",
            "a/b",
            "ex*ample.com",
        ] {
            assert!(server_san(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sanitized_file_names() {
        assert_eq!(sanitize("*.example.com"), "_.example.com");
        assert_eq!(sanitize("::1"), "__1");
        assert_eq!(sanitize("agg-1.example.com"), "agg-1.example.com");
    }
}
