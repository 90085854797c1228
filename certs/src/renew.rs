//! Renewing a leaf in place: a fresh certificate for the same identity,
//! written over the same file, before the old one expires.
//!
//! A renew hook (the agent's `tls.renew_command`, a cron job, an operator)
//! runs this against the live certificate path; the peer's reload watcher
//! then picks the new file up. So the invariants are about what that watcher
//! sees:
//! - The identity is kept exactly: an agent keeps its URI SAN
//!   `ferrule://site/S/agent/A` and clientAuth, a server its DNS/IP SANs (in
//!   order, first = CN) and serverAuth. The subject is rebuilt the way
//!   `issue-agent` / `issue-server` build it, so a renewed leaf is
//!   indistinguishable from a freshly issued one except for serial, validity
//!   and (with `new_key`) key.
//! - By default the private key is kept and only the certificate file
//!   changes, so a reload never sees a certificate and key from different
//!   pairs. With `new_key` the key is written first, then the certificate,
//!   each atomically (temp file in the same directory, fsync, rename).
//! - Only a leaf this CA issued, whose serial is in the index and not
//!   revoked, is renewed; a given key must be the leaf's. Every refusal
//!   happens before anything is written.
//! - As for issuing, the new serial is recorded in `index.tsv` (Valid)
//!   before the files are written. The old serial stays Valid: it is still in
//!   use by established sessions until it expires or is revoked.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::{check_days, IssuingCa};
use crate::error::{io_err, Error, Result};
use crate::issue::{
    agent_params, server_params, sign_leaf, DEFAULT_AGENT_DAYS, DEFAULT_SERVER_DAYS,
};
use crate::pemfile;
use crate::serial::Serial;
use crate::store::{
    append_index, read_index, read_text, replace_file, Access, CaFiles, CertKind, DirLock,
    IndexEntry, Status,
};
use ferrule_identity::AgentIdentity;

/// Knobs for [`renew`].
///
/// It exists so the safe choices (keep the key, the kind's default lifetime,
/// the key file beside the certificate) apply unless a caller names another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenewOptions {
    /// Lifetime in days; `None` means the kind's default
    /// ([`DEFAULT_AGENT_DAYS`] / [`DEFAULT_SERVER_DAYS`]).
    pub days: Option<u32>,
    /// The leaf's private key; `None` means the certificate path with the
    /// extension `.key` (`agent-s-a.crt` -> `agent-s-a.key`).
    pub key: Option<PathBuf>,
    /// Generate a new key (written over the key file) instead of keeping
    /// the current one. The current key is then not read at all, so this is
    /// also the way out when it is lost.
    pub new_key: bool,
}

/// What [`renew`] did.
///
/// It exists so the CLI can print the files written and a hook's log can name
/// the old and new serial without re-parsing the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The certificate file, rewritten (leaf followed by the issuing CA).
    pub cert: PathBuf,
    /// The key file (rewritten only if `key_replaced`).
    pub key: PathBuf,
    /// Whether a new key was written (`new_key`).
    pub key_replaced: bool,
    /// Agent or server.
    pub kind: CertKind,
    /// The identity kept, as the index records it (agent URI, or the
    /// comma-joined server names).
    pub identity: String,
    /// The serial of the certificate that was replaced.
    pub previous_serial: Serial,
    /// The new serial, recorded Valid in the index.
    pub serial: Serial,
    /// The new expiry.
    pub not_after: OffsetDateTime,
}

impl Renewed {
    /// The files written, certificate first (the key only if replaced).
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = vec![self.cert.as_path()];
        if self.key_replaced {
            out.push(self.key.as_path());
        }
        out
    }
}

/// A leaf as read from disk, checked to be a ferrule agent or server leaf.
struct Leaf {
    kind: CertKind,
    /// For agents, the identity; for servers, the names in SAN order.
    agent: Option<AgentIdentity>,
    names: Vec<String>,
    serial: Serial,
    issuer_raw: Vec<u8>,
    issuer: String,
    public_key: Vec<u8>,
    der: Vec<u8>,
}

/// Reissues the leaf at `cert` from the CA in `dir`: same identity, new
/// random serial (recorded in the index), a fresh lifetime, the same key
/// unless `opts.new_key`, written over the same file(s) atomically.
///
/// Refuses, before writing anything: a file that is not a ferrule agent or
/// server leaf ([`Error::NotFerruleLeaf`]), a leaf another CA issued
/// ([`Error::IssuerMismatch`]), a serial the index does not know
/// ([`Error::UnknownSerial`]) or holds as revoked ([`Error::RevokedLeaf`]),
/// a key that is not the leaf's ([`Error::LeafKeyMismatch`]).
///
/// ```no_run
/// # fn main() -> ferrule_certs::Result<()> {
/// use std::path::Path;
/// let renewed = ferrule_certs::renew(
///     Path::new("/etc/ferrule/pki"),
///     Path::new("/etc/ferrule/agent.crt"),
///     &ferrule_certs::RenewOptions::default(),
/// )?;
/// println!("{} -> {}", renewed.previous_serial, renewed.serial);
/// # Ok(())
/// # }
/// ```
pub fn renew(dir: &Path, cert: &Path, opts: &RenewOptions) -> Result<Renewed> {
    let files = CaFiles::new(dir);
    files.require_initialized()?;
    let leaf = read_leaf(cert)?;
    let key_path = opts
        .key
        .clone()
        .unwrap_or_else(|| cert.with_extension("key"));
    let key = if opts.new_key {
        KeyPair::generate()?
    } else {
        let text = read_text(&key_path)?;
        let key = KeyPair::from_pem(&text).map_err(|source| Error::InvalidKey {
            path: key_path.clone(),
            source,
        })?;
        if key.public_key_raw() != leaf.public_key.as_slice() {
            return Err(Error::LeafKeyMismatch {
                key: key_path,
                cert: cert.to_owned(),
            });
        }
        key
    };
    let days = opts.days.unwrap_or(match leaf.kind {
        CertKind::Agent => DEFAULT_AGENT_DAYS,
        _ => DEFAULT_SERVER_DAYS,
    });
    check_days(days)?;

    let _lock = DirLock::acquire(&files)?;
    let ca = IssuingCa::load(&files)?;
    check_issuer(&leaf, &ca, cert, dir)?;
    match read_index(&files)?
        .iter()
        .find(|e| e.serial == leaf.serial)
        .map(|e| &e.status)
    {
        None => {
            return Err(Error::UnknownSerial {
                serial: leaf.serial.to_hex(),
                index: files.index.clone(),
            })
        }
        Some(Status::Revoked { .. }) => {
            return Err(Error::RevokedLeaf {
                path: cert.to_owned(),
                serial: leaf.serial.to_hex(),
            })
        }
        Some(Status::Valid) => {}
    }
    let now = OffsetDateTime::now_utc();
    let not_after = ca.check_fits(now, days)?;
    let (mut params, identity) = match &leaf.agent {
        Some(agent) => (agent_params(agent)?, agent.to_uri()),
        None => server_params(&leaf.names)?,
    };
    let serial = Serial::random()?;
    let signed = sign_leaf(&mut params, &serial, now, not_after, &key, &ca)?;

    append_index(
        &files,
        IndexEntry {
            serial: serial.clone(),
            kind: leaf.kind,
            identity: identity.clone(),
            not_after,
            status: Status::Valid,
        },
    )?;
    if opts.new_key {
        replace_file(
            &write_target(&key_path)?,
            key.serialize_pem().as_bytes(),
            Access::Secret,
        )?;
    }
    let chain = format!("{}{}", signed.pem(), ca.cert_pem);
    replace_file(&write_target(cert)?, chain.as_bytes(), Access::Public)?;
    Ok(Renewed {
        cert: cert.to_owned(),
        key: key_path,
        key_replaced: opts.new_key,
        kind: leaf.kind,
        identity,
        previous_serial: leaf.serial,
        serial,
        not_after,
    })
}

/// Reads the first certificate of `path` and checks it is a ferrule leaf.
fn read_leaf(path: &Path) -> Result<Leaf> {
    let bytes = fs::read(path).map_err(io_err("cannot read", path))?;
    let der = pemfile::certs_der(&bytes)?
        .into_iter()
        .next()
        .ok_or(Error::NoCertificates)?;
    let not_leaf = |reason: &str| Error::NotFerruleLeaf {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let (_, x) = X509Certificate::from_der(&der).map_err(|e| Error::InvalidCertificate {
        index: 1,
        reason: e.to_string(),
    })?;
    if x.is_ca() {
        return Err(not_leaf("it is a CA certificate"));
    }
    let eku = x
        .extended_key_usage()
        .map_err(|e| not_leaf(&format!("bad extendedKeyUsage: {e}")))?
        .ok_or_else(|| not_leaf("it has no extendedKeyUsage"))?
        .value;
    let mut names = Vec::new();
    let mut uris = Vec::new();
    let san = x
        .subject_alternative_name()
        .map_err(|e| not_leaf(&format!("bad subjectAltName: {e}")))?;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(d) => names.push((*d).to_owned()),
            GeneralName::IPAddress(b) => match ip_from_bytes(b) {
                Some(ip) => names.push(ip.to_string()),
                None => return Err(not_leaf("it has a malformed IP SAN")),
            },
            GeneralName::URI(u) => uris.push((*u).to_owned()),
            _ => return Err(not_leaf("it has a SAN of a kind ferrule does not issue")),
        }
    }
    let (kind, agent) = match (eku.client_auth, eku.server_auth) {
        (true, false) => {
            let [uri] = uris.as_slice() else {
                return Err(not_leaf("a clientAuth leaf needs exactly one URI SAN"));
            };
            if !names.is_empty() {
                return Err(not_leaf("an agent leaf carries no DNS or IP SANs"));
            }
            let agent = AgentIdentity::from_uri(uri).map_err(|e| not_leaf(&e.to_string()))?;
            (CertKind::Agent, Some(agent))
        }
        (false, true) => {
            if names.is_empty() || !uris.is_empty() {
                return Err(not_leaf(
                    "a serverAuth leaf needs DNS or IP SANs and no URI SAN",
                ));
            }
            (CertKind::Server, None)
        }
        _ => {
            return Err(not_leaf(
                "it must have exactly one of clientAuth (agent) or serverAuth (server)",
            ))
        }
    };
    Ok(Leaf {
        kind,
        agent,
        names,
        serial: Serial::from_bytes(x.raw_serial()),
        issuer_raw: x.issuer().as_raw().to_vec(),
        issuer: x.issuer().to_string(),
        public_key: x.public_key().subject_public_key.data.to_vec(),
        der: der.clone(),
    })
}

/// The leaf names this CA as issuer and carries its signature.
fn check_issuer(leaf: &Leaf, ca: &IssuingCa, path: &Path, dir: &Path) -> Result<()> {
    let mismatch = || Error::IssuerMismatch {
        path: path.to_owned(),
        dir: dir.to_owned(),
        issuer: leaf.issuer.clone(),
    };
    let (_, ca_cert) =
        X509Certificate::from_der(&ca.cert_der).map_err(|e| Error::InvalidCertificate {
            index: 1,
            reason: e.to_string(),
        })?;
    if ca_cert.subject().as_raw() != leaf.issuer_raw.as_slice() {
        return Err(mismatch());
    }
    // Same name is not enough (two CAs made the same day could share a CN
    // prefix in theory): the signature must verify with this CA's key.
    let (_, x) = X509Certificate::from_der(&leaf.der).map_err(|e| Error::InvalidCertificate {
        index: 1,
        reason: e.to_string(),
    })?;
    x.verify_signature(Some(ca_cert.public_key()))
        .map_err(|_| mismatch())
}

/// Where to write `path`: through a symlink to its target, so a layout of
/// links (e.g. `/etc/ferrule/agent.crt -> pki/agent-s-a.crt`) survives the
/// renewal; otherwise `path` itself.
fn write_target(path: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(io_err("cannot resolve", path))
        }
        _ => Ok(path.to_owned()),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(Into::into),
        16 => <[u8; 16]>::try_from(bytes).ok().map(Into::into),
        _ => None,
    }
}
