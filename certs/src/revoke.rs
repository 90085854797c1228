//! Revocation: marking certificates revoked in the index and (re)signing
//! the CRL.
//!
//! Invariants:
//! - The CRL is always rebuilt from `index.tsv` (every revoked entry), so it
//!   can be regenerated at any time and never drifts from the index.
//! - Each CRL written gets a number one higher than the last (`crlnumber`),
//!   `thisUpdate` = now and `nextUpdate` = now + [`CRL_VALIDITY_DAYS`].
//! - Only leaves (server/agent) can be revoked; CAs are retired by rotation.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::{Duration, OffsetDateTime};

use crate::ca::IssuingCa;
use crate::error::{Error, Result};
use crate::pemfile;
use crate::serial::Serial;
use crate::store::{
    next_crl_number, read_index, replace_file, write_index, Access, CaFiles, CertKind, DirLock,
    Status,
};

/// How long a CRL is valid; run `ferrule-certs crl` before it lapses.
pub const CRL_VALIDITY_DAYS: i64 = 7;

/// Why a certificate was revoked (RFC 5280 §5.3.1 reason codes).
///
/// It exists so the CLI accepts the standard names, the index records them
/// readably, and the CRL carries the matching code, without exposing
/// rcgen's type in this crate's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RevocationReason {
    /// No reason given.
    #[default]
    Unspecified,
    /// The private key leaked or may have.
    KeyCompromise,
    /// A CA key leaked or may have.
    CaCompromise,
    /// The subject's affiliation changed.
    AffiliationChanged,
    /// A new certificate replaced this one.
    Superseded,
    /// The subject (e.g. a decommissioned agent) no longer operates.
    CessationOfOperation,
    /// Temporarily on hold.
    CertificateHold,
    /// A privilege the certificate granted was withdrawn.
    PrivilegeWithdrawn,
    /// An attribute authority was compromised.
    AaCompromise,
}

impl RevocationReason {
    /// Every accepted name, in RFC 5280 order, as the CLI spells them.
    pub const NAMES: [&'static str; 9] = [
        "unspecified",
        "keyCompromise",
        "caCompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "certificateHold",
        "privilegeWithdrawn",
        "aaCompromise",
    ];
    const ALL: [RevocationReason; 9] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];

    /// The standard name (e.g. `keyCompromise`).
    pub fn as_str(self) -> &'static str {
        let i = Self::ALL.iter().position(|r| *r == self).unwrap_or(0);
        Self::NAMES[i]
    }

    fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            RevocationReason::Unspecified => R::Unspecified,
            RevocationReason::KeyCompromise => R::KeyCompromise,
            RevocationReason::CaCompromise => R::CaCompromise,
            RevocationReason::AffiliationChanged => R::AffiliationChanged,
            RevocationReason::Superseded => R::Superseded,
            RevocationReason::CessationOfOperation => R::CessationOfOperation,
            RevocationReason::CertificateHold => R::CertificateHold,
            RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            RevocationReason::AaCompromise => R::AaCompromise,
        }
    }
}

impl FromStr for RevocationReason {
    type Err = Error;

    /// Accepts the standard names case-insensitively (`keycompromise` too).
    fn from_str(s: &str) -> Result<Self> {
        Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s))
            .map(|i| Self::ALL[i])
            .ok_or_else(|| Error::InvalidReason {
                input: s.to_owned(),
            })
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Marks the leaf with `serial` revoked in `dir`'s index and rewrites
/// `crl.pem`. Returns the CRL path.
///
/// Fails with [`Error::UnknownSerial`] if this CA never issued it,
/// [`Error::AlreadyRevoked`] if it is already revoked and
/// [`Error::NotRevocable`] for the CA certificates.
pub fn revoke(dir: &Path, serial: &Serial, reason: RevocationReason) -> Result<PathBuf> {
    let files = CaFiles::new(dir);
    files.require_initialized()?;
    let _lock = DirLock::acquire(&files)?;
    let ca = IssuingCa::load(&files)?;
    let now = OffsetDateTime::now_utc();
    let mut entries = read_index(&files)?;
    let entry = entries
        .iter_mut()
        .find(|e| &e.serial == serial)
        .ok_or_else(|| Error::UnknownSerial {
            serial: serial.to_hex(),
            index: files.index.clone(),
        })?;
    match entry.kind {
        CertKind::Server | CertKind::Agent => {}
        kind @ (CertKind::Root | CertKind::Issuing) => {
            return Err(Error::NotRevocable {
                serial: serial.to_hex(),
                kind: kind.as_str().to_owned(),
            })
        }
    }
    if matches!(entry.status, Status::Revoked { .. }) {
        return Err(Error::AlreadyRevoked {
            serial: serial.to_hex(),
        });
    }
    entry.status = Status::Revoked { at: now, reason };
    write_index(&files, &entries)?;
    write_crl_locked(&files, &ca, now)?;
    Ok(files.crl)
}

/// Re-signs `crl.pem` with the current revocations and a fresh
/// `nextUpdate`; run it (e.g. daily from cron) so the CRL never lapses.
/// Returns the CRL path.
pub fn refresh_crl(dir: &Path) -> Result<PathBuf> {
    let files = CaFiles::new(dir);
    files.require_initialized()?;
    let _lock = DirLock::acquire(&files)?;
    let ca = IssuingCa::load(&files)?;
    write_crl_locked(&files, &ca, OffsetDateTime::now_utc())?;
    Ok(files.crl)
}

/// Builds, signs and writes the CRL from the index (caller holds the lock).
pub(crate) fn write_crl_locked(files: &CaFiles, ca: &IssuingCa, now: OffsetDateTime) -> Result<()> {
    let revoked_certs = read_index(files)?
        .into_iter()
        .filter_map(|e| match e.status {
            Status::Revoked { at, reason } => Some(RevokedCertParams {
                serial_number: e.serial.to_rcgen(),
                revocation_time: at,
                reason_code: Some(reason.to_rcgen()),
                invalidity_date: None,
            }),
            Status::Valid => None,
        })
        .collect();
    let number = next_crl_number(files)?;
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(CRL_VALIDITY_DAYS),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        // Same method rcgen used for the issuing CA's subject key id, so the
        // CRL's authority key id matches it.
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.issuer)?;
    let pem = pemfile::encode_crl(crl.der());
    replace_file(&files.crl, pem.as_bytes(), Access::Public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_round_trip() {
        for name in RevocationReason::NAMES {
            let r: RevocationReason = name.parse().unwrap();
            assert_eq!(r.as_str(), name);
        }
        assert_eq!(
            "KEYCOMPROMISE".parse::<RevocationReason>().unwrap(),
            RevocationReason::KeyCompromise
        );
        assert!("stolen".parse::<RevocationReason>().is_err());
    }
}
