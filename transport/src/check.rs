//! Checks an agent's or an aggregator's TLS material before it is used, so a
//! `check-config` run (and the start of `run`) says which file is wrong and
//! how, instead of a daemon that starts, answers `/healthz` and uploads nothing.
//!
//! What is checked, for each side's certificate and key: every file reads and
//! holds the PEM it should; the key parses and is the certificate's key; the
//! certificate chains to the configured trust bundle (with rustls's own
//! verifier, so the extended key usage is checked too: a server certificate
//! configured as an agent's is refused here as the aggregator would refuse it);
//! it is valid now; and it names what it must (an agent certificate its
//! `ferrule://site/S/agent/A` URI, matching the config; a server certificate at
//! least one DNS name). The aggregator's CRL must read and parse.
//!
//! Key files readable by group or others are a warning, as with ssh: the
//! daemon works, and the key should not be readable.
//!
//! The only I/O is reading the named files; the time is passed in.

use crate::error::TlsError;
use crate::tls::{certs, key, provider, roots, ClientTls, ServerTls};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use x509_parser::prelude::*;

/// Something in the TLS material that keeps a peer from connecting. Each names
/// the file at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MaterialProblem {
    /// A file could not be read, or holds no PEM item of the kind expected.
    #[error("{0}")]
    Load(#[from] TlsError),
    /// The private key is not the certificate's.
    #[error("{key}: this key does not match the certificate in {cert} (its public key differs)")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The certificate file does not start with the key's certificate: the
    /// key belongs to a later one (the chain is in the wrong order, leaf not
    /// first). rustls presents the first certificate as this side's own.
    #[error("{cert}: the certificate for the key in {key} must come first in this file (it is certificate {position} of {count}); put the leaf first, then its issuing CA")]
    LeafNotFirst {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Where the key's certificate is, counting from 1.
        position: usize,
        /// How many certificates the file holds.
        count: usize,
    },
    /// The private key parsed as PEM but cannot be used.
    #[error("{path}: unusable private key: {what}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        what: String,
    },
    /// The certificate does not parse as X.509.
    #[error("{path}: certificate does not parse: {what}")]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What the parser said.
        what: String,
    },
    /// The certificate expired.
    #[error("{path}: certificate expired on {not_after}")]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Its notAfter.
        not_after: String,
    },
    /// The certificate is not valid yet (a clock behind, or issued in advance).
    #[error(
        "{path}: certificate is not valid until {not_before} (is this machine's clock right?)"
    )]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Its notBefore.
        not_before: String,
    },
    /// The certificate does not chain to the trust bundle, or is not meant for
    /// this use (extended key usage).
    #[error("{path}: certificate is not accepted with the trust bundle {bundle}: {why}")]
    Untrusted {
        /// The certificate file.
        path: PathBuf,
        /// The trust bundle it was checked against.
        bundle: PathBuf,
        /// rustls's verdict.
        why: String,
    },
    /// The certificate does not name what it must.
    #[error("{path}: {what}")]
    Name {
        /// The certificate file (or config key).
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The CRL does not parse or cannot be used.
    #[error("{path}: CRL: {what}")]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

impl MaterialProblem {
    /// Every [`Self::label`], so a reloader's refusal counters can be
    /// published at 0 before the first refusal.
    pub const LABELS: &'static [&'static str] = &[
        "unreadable",
        "key_mismatch",
        "leaf_not_first",
        "bad_key",
        "bad_certificate",
        "expired",
        "not_yet_valid",
        "untrusted",
        "name",
        "crl",
    ];

    /// A short name for metric labels (one per kind, never from the peer or
    /// the file's content).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Load(_) => "unreadable",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::LeafNotFirst { .. } => "leaf_not_first",
            Self::BadKey { .. } => "bad_key",
            Self::BadCertificate { .. } => "bad_certificate",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::Untrusted { .. } => "untrusted",
            Self::Name { .. } => "name",
            Self::Crl { .. } => "crl",
        }
    }
}

/// What a certificate file's first certificate says: for logs (the serial a
/// reload put in service) and for checking that a new certificate keeps the
/// names the old one served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSummary {
    /// Serial number, hex.
    pub serial: String,
    /// Its DNS and IP subject alternative names.
    pub names: Vec<String>,
    /// When it expires, Unix seconds.
    pub not_after_unix: i64,
    /// When it became valid, Unix seconds (a renewal is due at a share of
    /// the lifetime between the two).
    pub not_before_unix: i64,
}

/// The summary of the first certificate in the PEM file at `path`.
pub fn leaf_summary(path: &Path) -> Result<LeafSummary, TlsError> {
    let chain = certs(path)?;
    let (_, cert) = X509Certificate::from_der(chain[0].as_ref()).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("certificate does not parse: {e}"),
    })?;
    Ok(LeafSummary {
        serial: cert.raw_serial_as_string().replace(':', ""),
        names: san_names(&cert),
        not_after_unix: cert.validity().not_after.timestamp(),
        not_before_unix: cert.validity().not_before.timestamp(),
    })
}

/// Something in the TLS material that works but should be fixed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MaterialWarning {
    /// A private key that group or others can read (unix mode `& 0o077`).
    #[error("{path}: private key is readable by group or others (mode {mode:o}); chmod 600 it")]
    KeyReadable {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A relative path: it is resolved against the process's working
    /// directory, not the config file's, so a check run from the config's
    /// directory can pass while the daemon (`WorkingDirectory=/` under
    /// systemd) cannot find the file.
    #[error("{path}: relative path, resolved against the working directory ({cwd}), not the config file's; use an absolute path")]
    RelativePath {
        /// The path as configured.
        path: PathBuf,
        /// The working directory it was resolved against here.
        cwd: String,
    },
    /// The CRL's nextUpdate has passed: revocations made since are not in it.
    #[error("{path}: CRL is stale (next update was due {next_update}); refresh it")]
    CrlStale {
        /// The CRL file.
        path: PathBuf,
        /// Its nextUpdate.
        next_update: String,
    },
}

/// What [`check_client_material`] or [`check_server_material`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct MaterialReport {
    /// What keeps the peer from connecting: `check-config` fails on any.
    pub problems: Vec<MaterialProblem>,
    /// What works but should be fixed.
    pub warnings: Vec<MaterialWarning>,
    /// Facts worth printing (the names a server certificate carries).
    pub notes: Vec<String>,
}

impl MaterialReport {
    /// True when nothing keeps the peer from connecting.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The agent identity (`site`, `agent`) its certificate must name.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedAgent<'a> {
    /// `[agent] site`.
    pub site: &'a str,
    /// `[agent] id`.
    pub agent: &'a str,
}

/// Checks an agent's TLS files as of `now`: readable, the key is the
/// certificate's, the certificate chains to `server_ca` (ferrule deploys one
/// trust bundle to every peer, so a certificate the agent's own bundle does not
/// accept is one the aggregator refuses too) for client authentication, is
/// valid, and names `expect`. `server_name` is checked for being a name a TLS
/// client can ask for.
///
/// ```no_run
/// use ferrule_transport::{check_client_material, ClientTls, ExpectedAgent};
/// let files = ClientTls {
///     cert: "agent.crt".into(),
///     key: "agent.key".into(),
///     server_ca: "ca-bundle.crt".into(),
/// };
/// let expect = ExpectedAgent { site: "plant-7", agent: "pump-03" };
/// let report = check_client_material(&files, expect, "agg.example", std::time::SystemTime::now());
/// for p in &report.problems {
///     eprintln!("{p}");
/// }
/// ```
pub fn check_client_material(
    files: &ClientTls,
    expect: ExpectedAgent<'_>,
    server_name: &str,
    now: SystemTime,
) -> MaterialReport {
    let mut r = MaterialReport::default();
    warn_relative(&mut r, [&files.cert, &files.key, &files.server_ca]);
    let roots = note_err(&mut r, roots(&files.server_ca));
    let chain = pair(&mut r, &files.cert, &files.key);
    if let Some(chain) = &chain {
        if let Some(leaf) = leaf_dates(&mut r, &files.cert, chain, now) {
            if let Some(roots) = roots {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build();
                let verdict = verifier.map_err(|e| e.to_string()).and_then(|v| {
                    v.verify_client_cert(&chain[0], &chain[1..], leaf.check_time)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
                if let Err(why) = verdict {
                    r.problems.push(MaterialProblem::Untrusted {
                        path: files.cert.clone(),
                        bundle: files.server_ca.clone(),
                        why,
                    });
                }
            }
        }
        match crate::identity::identity_of(chain[0].as_ref()) {
            Ok(id) => {
                if id.site() != expect.site || id.agent() != expect.agent {
                    r.problems.push(MaterialProblem::Name {
                        path: files.cert.clone(),
                        what: format!(
                            "certificate names agent {}/{}, but the config's [agent] site/id is {}/{} (the aggregator will refuse the Hello)",
                            id.site(),
                            id.agent(),
                            expect.site,
                            expect.agent
                        ),
                    });
                } else {
                    r.notes.push(format!(
                        "{}: agent {}/{}",
                        files.cert.display(),
                        id.site(),
                        id.agent()
                    ));
                }
            }
            Err(e) => r.problems.push(MaterialProblem::Name {
                path: files.cert.clone(),
                what: format!("no usable agent identity: {e}"),
            }),
        }
    }
    if ServerName::try_from(server_name.to_string()).is_err() {
        r.problems.push(MaterialProblem::Name {
            path: PathBuf::from("uplink.server_name"),
            what: format!("{server_name:?} is not a DNS name or IP address"),
        });
    } else {
        r.notes.push(format!(
            "uplink.server_name = {server_name:?}: the aggregator's certificate must carry it (checked when connecting)"
        ));
    }
    r
}

/// Checks an aggregator's TLS files as of `now`: readable, the key is the
/// certificate's, the certificate chains to `client_ca` for server
/// authentication under a name it carries, carries at least one DNS name, and
/// is valid; the CRL, if any, reads and parses.
pub fn check_server_material(files: &ServerTls, now: SystemTime) -> MaterialReport {
    let mut r = MaterialReport::default();
    warn_relative(
        &mut r,
        [&files.cert, &files.key, &files.client_ca]
            .into_iter()
            .chain(files.crl.as_ref()),
    );
    let roots = note_err(&mut r, roots(&files.client_ca));
    let chain = pair(&mut r, &files.cert, &files.key);
    if let Some(chain) = &chain {
        let leaf = leaf_dates(&mut r, &files.cert, chain, now);
        let names = match X509Certificate::from_der(chain[0].as_ref()) {
            Ok((_, cert)) => san_names(&cert),
            Err(_) => Vec::new(), // reported by leaf_dates
        };
        let dns: Vec<&String> = names.iter().filter(|n| !is_ip(n)).collect();
        if dns.is_empty() {
            r.problems.push(MaterialProblem::Name {
                path: files.cert.clone(),
                what: "certificate carries no DNS name (subjectAltName): agents verify uplink.server_name against it".into(),
            });
        }
        if !names.is_empty() {
            r.notes.push(format!(
                "{}: names {} (agents' uplink.server_name must be one of them)",
                files.cert.display(),
                names.join(", ")
            ));
        }
        if let (Some(leaf), Some(roots), Some(name)) = (leaf, roots.clone(), names.first()) {
            let verdict = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let sn = ServerName::try_from(name.clone()).map_err(|e| e.to_string())?;
                    v.verify_server_cert(&chain[0], &chain[1..], &sn, &[], leaf.check_time)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
            if let Err(why) = verdict {
                r.problems.push(MaterialProblem::Untrusted {
                    path: files.cert.clone(),
                    bundle: files.client_ca.clone(),
                    why,
                });
            }
        }
    }
    if let Some(crl) = &files.crl {
        check_crl(&mut r, crl, roots, now);
    }
    r
}

/// The warning for a key file group or others can read, if it is one.
/// Always `None` off unix.
pub fn key_permission_warning(path: &Path) -> Option<MaterialWarning> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| MaterialWarning::KeyReadable {
            path: path.to_path_buf(),
            mode,
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

fn warn_relative<'a>(r: &mut MaterialReport, paths: impl IntoIterator<Item = &'a PathBuf>) {
    for p in paths {
        if p.is_relative() {
            r.warnings.push(MaterialWarning::RelativePath {
                path: p.clone(),
                cwd: std::env::current_dir()
                    .map_or_else(|_| "unknown".into(), |d| d.display().to_string()),
            });
        }
    }
}

fn note_err<T>(r: &mut MaterialReport, res: Result<T, TlsError>) -> Option<T> {
    res.map_err(|e| r.problems.push(e.into())).ok()
}

/// Loads a certificate chain and its key, and checks that they belong together.
fn pair(
    r: &mut MaterialReport,
    cert: &Path,
    key_path: &Path,
) -> Option<Vec<CertificateDer<'static>>> {
    let chain = note_err(r, certs(cert));
    let k: Option<PrivateKeyDer<'static>> = note_err(r, key(key_path));
    if k.is_some() {
        if let Some(w) = key_permission_warning(key_path) {
            r.warnings.push(w);
        }
    }
    if let (Some(chain), Some(k)) = (&chain, k) {
        let k_again = k.clone_key();
        match CertifiedKey::from_der(chain.clone(), k, &provider()) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                r.problems.push(match key_cert_position(chain, &k_again) {
                    Some(i) => MaterialProblem::LeafNotFirst {
                        cert: cert.to_path_buf(),
                        key: key_path.to_path_buf(),
                        position: i + 1,
                        count: chain.len(),
                    },
                    None => MaterialProblem::KeyMismatch {
                        key: key_path.to_path_buf(),
                        cert: cert.to_path_buf(),
                    },
                })
            }
            Err(e) => r.problems.push(MaterialProblem::BadKey {
                path: key_path.to_path_buf(),
                what: e.to_string(),
            }),
        }
    }
    chain
}

/// Where in `chain` the certificate for `key` is, if anywhere.
fn key_cert_position(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Option<usize> {
    chain
        .iter()
        .position(|c| CertifiedKey::from_der(vec![c.clone()], key.clone_key(), &provider()).is_ok())
}

/// What the leaf's dates allow: the time to verify its chain at (now, or a
/// time inside its validity when it is not valid now, so a foreign CA is still
/// reported beside an expiry).
struct Leaf {
    check_time: UnixTime,
}

fn leaf_dates(
    r: &mut MaterialReport,
    path: &Path,
    chain: &[CertificateDer<'static>],
    now: SystemTime,
) -> Option<Leaf> {
    let (_, cert) = match X509Certificate::from_der(chain[0].as_ref()) {
        Ok(c) => c,
        Err(e) => {
            r.problems.push(MaterialProblem::BadCertificate {
                path: path.to_path_buf(),
                what: e.to_string(),
            });
            return None;
        }
    };
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let v = cert.validity();
    let (nb, na) = (v.not_before.timestamp(), v.not_after.timestamp());
    let mut at = now_s;
    if now_s > na {
        r.problems.push(MaterialProblem::Expired {
            path: path.to_path_buf(),
            not_after: v.not_after.to_string(),
        });
        at = nb + (na - nb) / 2;
    } else if now_s < nb {
        r.problems.push(MaterialProblem::NotYetValid {
            path: path.to_path_buf(),
            not_before: v.not_before.to_string(),
        });
        at = nb + (na - nb) / 2;
    }
    let at = u64::try_from(at).unwrap_or(0);
    Some(Leaf {
        check_time: UnixTime::since_unix_epoch(Duration::from_secs(at)),
    })
}

fn is_ip(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
}

/// The DNS names and IP addresses in a certificate's subjectAltName.
fn san_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => out.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => {
                        let a: [u8; 4] = [b[0], b[1], b[2], b[3]];
                        out.push(std::net::IpAddr::from(a).to_string());
                    }
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        out.push(std::net::IpAddr::from(a).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    out
}

fn check_crl(
    r: &mut MaterialReport,
    path: &Path,
    roots: Option<rustls::RootCertStore>,
    now: SystemTime,
) {
    let crls = match crate::tls::crls(path) {
        Ok(c) => c,
        Err(e) => {
            r.problems.push(e.into());
            return;
        }
    };
    if crls.is_empty() {
        r.problems.push(MaterialProblem::Crl {
            path: path.to_path_buf(),
            what: "no X509 CRL found".into(),
        });
        return;
    }
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    for crl in &crls {
        match x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref()) {
            Ok((_, parsed)) => {
                if let Some(next) = parsed.next_update() {
                    if next.timestamp() < now_s {
                        r.warnings.push(MaterialWarning::CrlStale {
                            path: path.to_path_buf(),
                            next_update: next.to_string(),
                        });
                    }
                }
            }
            Err(e) => {
                r.problems.push(MaterialProblem::Crl {
                    path: path.to_path_buf(),
                    what: format!("does not parse: {e}"),
                });
                return;
            }
        }
    }
    // The server builds its verifier this way: whatever rustls refuses here
    // would stop it starting.
    if let Some(roots) = roots {
        if let Err(e) = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .build()
        {
            r.problems.push(MaterialProblem::Crl {
                path: path.to_path_buf(),
                what: e.to_string(),
            });
        }
    }
}
