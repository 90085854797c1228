//! Creating a CA directory (root + issuing CA) and loading the issuing CA
//! back for signing.
//!
//! Invariants:
//! - The root is self-signed, `CA:TRUE, pathlen:1`, keyCertSign + cRLSign.
//! - The issuing CA is signed by the root, `CA:TRUE, pathlen:0`,
//!   keyCertSign + cRLSign, and never outlives the root.
//! - Each CA's common name carries its creation date and serial prefix, so
//!   old and new roots in a rotation bundle are told apart by name.
//! - Loading refuses an issuing key that does not match the issuing
//!   certificate, so a mixed-up directory cannot mint unverifiable leaves.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};

use crate::error::{io_err, Error, Result};
use crate::pemfile;
use crate::revoke::write_crl_locked;
use crate::serial::Serial;
use crate::store::{
    self, read_text, refuse_existing, rfc3339, write_file, Access, CaFiles, CertKind, DirLock,
    IndexEntry, Status,
};

/// Default root CA lifetime: about ten years.
pub const DEFAULT_ROOT_DAYS: u32 = 3650;
/// Default issuing CA lifetime: one year, so the online key rotates yearly.
pub const DEFAULT_ISSUING_DAYS: u32 = 365;
/// Longest lifetime accepted for anything (100 years).
pub(crate) const MAX_DAYS: u32 = 36500;
/// How far `not_before` is backdated to tolerate peers with slow clocks.
pub(crate) const CLOCK_SKEW: Duration = Duration::minutes(5);
/// Organization name placed in every subject.
pub(crate) const ORG: &str = "ferrule";

/// Knobs for [`init`].
///
/// It exists so the defaults (10-year root, 1-year issuing CA, never
/// overwrite) live in one place and callers only name what they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Replace an existing CA in the directory. Destroys the old keys.
    pub force: bool,
    /// Root CA lifetime in days.
    pub root_days: u32,
    /// Issuing CA lifetime in days (capped to the root's lifetime).
    pub issuing_days: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            force: false,
            root_days: DEFAULT_ROOT_DAYS,
            issuing_days: DEFAULT_ISSUING_DAYS,
        }
    }
}

/// Creates a new root CA, an issuing CA signed by it, the trust bundle, the
/// index and an initial empty CRL in `dir` (created with mode 0700 if
/// missing). Returns the paths written, in order.
///
/// Refuses with [`Error::AlreadyExists`] if any of those files exists,
/// unless `opts.force`.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<Vec<PathBuf>> {
    for days in [opts.root_days, opts.issuing_days] {
        check_days(days)?;
    }
    let files = CaFiles::new(dir);
    let outputs = [
        &files.root_cert,
        &files.root_key,
        &files.issuing_cert,
        &files.issuing_key,
        &files.bundle,
        &files.index,
        &files.crl_number,
        &files.crl,
    ];
    refuse_existing(outputs.iter().map(|p| p.as_path()), opts.force)?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("cannot create directory", dir))?;
    let _lock = DirLock::acquire(&files)?;

    let now = OffsetDateTime::now_utc();
    let date = now.date();

    let root_serial = Serial::random()?;
    let root_key = KeyPair::generate()?;
    let mut root = CertificateParams::default();
    root.serial_number = Some(root_serial.to_rcgen());
    root.distinguished_name = rcgen::DistinguishedName::new();
    root.distinguished_name.push(DnType::OrganizationName, ORG);
    let root_cn = format!("ferrule root CA {date} {}", &root_serial.to_hex()[..8]);
    root.distinguished_name
        .push(DnType::CommonName, root_cn.as_str());
    root.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    root.not_before = now - CLOCK_SKEW;
    root.not_after = now + Duration::days(i64::from(opts.root_days));
    let root_cert = root.self_signed(&root_key)?;
    let root_not_after = root.not_after;
    let root_issuer = Issuer::new(root, &root_key);

    let issuing_serial = Serial::random()?;
    let issuing_key = KeyPair::generate()?;
    let mut issuing = CertificateParams::default();
    issuing.serial_number = Some(issuing_serial.to_rcgen());
    issuing.distinguished_name = rcgen::DistinguishedName::new();
    issuing
        .distinguished_name
        .push(DnType::OrganizationName, ORG);
    let issuing_cn = format!(
        "ferrule issuing CA {date} {}",
        &issuing_serial.to_hex()[..8]
    );
    issuing
        .distinguished_name
        .push(DnType::CommonName, issuing_cn.as_str());
    issuing.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    issuing.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    issuing.use_authority_key_identifier_extension = true;
    issuing.not_before = now - CLOCK_SKEW;
    issuing.not_after = (now + Duration::days(i64::from(opts.issuing_days))).min(root_not_after);
    let issuing_cert = issuing.signed_by(&issuing_key, &root_issuer)?;
    let issuing_not_after = issuing.not_after;

    let force = opts.force;
    write_file(
        &files.root_key,
        root_key.serialize_pem().as_bytes(),
        Access::Secret,
        force,
    )?;
    write_file(
        &files.root_cert,
        root_cert.pem().as_bytes(),
        Access::Public,
        force,
    )?;
    write_file(
        &files.issuing_key,
        issuing_key.serialize_pem().as_bytes(),
        Access::Secret,
        force,
    )?;
    write_file(
        &files.issuing_cert,
        issuing_cert.pem().as_bytes(),
        Access::Public,
        force,
    )?;
    write_file(
        &files.bundle,
        root_cert.pem().as_bytes(),
        Access::Public,
        force,
    )?;

    let entries = [
        IndexEntry {
            serial: root_serial,
            kind: CertKind::Root,
            identity: root_cn,
            not_after: root_not_after,
            status: Status::Valid,
        },
        IndexEntry {
            serial: issuing_serial,
            kind: CertKind::Issuing,
            identity: issuing_cn,
            not_after: issuing_not_after,
            status: Status::Valid,
        },
    ];
    // Claim the index and counter files with the usual no-overwrite rule,
    // then fill them through the locked rewrite path.
    write_file(&files.index, b"", Access::Public, force)?;
    store::write_index(&files, &entries)?;
    write_file(&files.crl_number, b"0\n", Access::Public, force)?;
    let issuer = IssuingCa::load(&files)?;
    write_crl_locked(&files, &issuer, now)?;

    Ok(outputs.iter().map(|p| p.to_path_buf()).collect())
}

/// The issuing CA loaded from disk, ready to sign leaves and CRLs.
pub(crate) struct IssuingCa {
    /// Signs certificates and CRLs.
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// The issuing CA certificate in PEM, appended to every leaf file.
    pub(crate) cert_pem: String,
    /// When the issuing CA expires; leaves may not outlive it.
    pub(crate) not_after: OffsetDateTime,
    /// The issuing CA certificate in DER, to check a leaf was signed by it.
    pub(crate) cert_der: Vec<u8>,
}

impl IssuingCa {
    /// Loads `issuing-ca.crt` and `issuing-ca.key`, checking that they match.
    pub(crate) fn load(files: &CaFiles) -> Result<Self> {
        let cert_text = read_text(&files.issuing_cert)?;
        let key_text = read_text(&files.issuing_key)?;
        let key = KeyPair::from_pem(&key_text).map_err(|source| Error::InvalidKey {
            path: files.issuing_key.clone(),
            source,
        })?;
        let der = pemfile::certs_der(cert_text.as_bytes())?
            .into_iter()
            .next()
            .ok_or(Error::NoCertificates)?;
        let (not_after, cert_public_key) = {
            let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
                Error::InvalidCertificate {
                    index: 1,
                    reason: e.to_string(),
                }
            })?;
            (
                cert.validity().not_after.to_datetime(),
                cert.public_key().subject_public_key.data.to_vec(),
            )
        };
        if cert_public_key != key.public_key_raw() {
            return Err(Error::KeyMismatch {
                key: files.issuing_key.clone(),
                cert: files.issuing_cert.clone(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key).map_err(|source| {
            Error::InvalidCaCert {
                path: files.issuing_cert.clone(),
                source,
            }
        })?;
        Ok(Self {
            issuer,
            cert_pem: pemfile::encode_cert(&der),
            not_after,
            cert_der: der,
        })
    }

    /// Fails with [`Error::OutlivesIssuer`] if a `days`-day certificate
    /// starting `now` would expire after this CA.
    pub(crate) fn check_fits(&self, now: OffsetDateTime, days: u32) -> Result<OffsetDateTime> {
        let not_after = now + Duration::days(i64::from(days));
        if not_after > self.not_after {
            return Err(Error::OutlivesIssuer {
                days,
                ca_not_after: rfc3339(self.not_after),
            });
        }
        Ok(not_after)
    }
}

/// Rejects lifetimes of 0 days or more than [`MAX_DAYS`].
pub(crate) fn check_days(days: u32) -> Result<()> {
    if days == 0 || days > MAX_DAYS {
        return Err(Error::InvalidDays { days });
    }
    Ok(())
}
