//! The CA directory on disk: file names, safe writes, the lock, the
//! certificate index and the CRL counter.
//!
//! Invariants:
//! - Private keys are created with mode 0600 and never replace an existing
//!   file unless the caller passed `force`; forced replacements go through a
//!   temporary file and a rename, so a reader never sees a half-written file.
//! - `index.tsv` and `crlnumber` are only rewritten while [`DirLock`] is held,
//!   and always via temp-file + rename.
//! - Every value written to `index.tsv` is tab- and newline-free (serials are
//!   hex, identities are validated labels/DNS names/IPs).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{io_err, Error, Result};
use crate::serial::Serial;

/// The files a CA directory holds.
///
/// It exists so the CLI, the library and the agent/aggregator demos agree on
/// one layout instead of hard-coding file names in several places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// The CA directory itself.
    pub dir: PathBuf,
    /// Self-signed root CA certificate (PEM).
    pub root_cert: PathBuf,
    /// Root CA private key (PKCS#8 PEM, mode 0600). Keep offline after `init`.
    pub root_key: PathBuf,
    /// Issuing (intermediate) CA certificate (PEM, this certificate only).
    pub issuing_cert: PathBuf,
    /// Issuing CA private key (PKCS#8 PEM, mode 0600).
    pub issuing_key: PathBuf,
    /// Trust bundle to deploy to peers: the root certificate(s).
    pub bundle: PathBuf,
    /// Current CRL signed by the issuing CA (PEM `X509 CRL`).
    pub crl: PathBuf,
    /// Number of the last CRL written (decimal).
    pub crl_number: PathBuf,
    /// One line per issued certificate: serial, kind, identity, expiry, status.
    pub index: PathBuf,
    /// Lock file present while a process modifies the directory.
    pub lock: PathBuf,
}

impl CaFiles {
    /// The layout of the CA directory `dir` (nothing is touched on disk).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            root_cert: dir.join("root-ca.crt"),
            root_key: dir.join("root-ca.key"),
            issuing_cert: dir.join("issuing-ca.crt"),
            issuing_key: dir.join("issuing-ca.key"),
            bundle: dir.join("ca-bundle.crt"),
            crl: dir.join("crl.pem"),
            crl_number: dir.join("crlnumber"),
            index: dir.join("index.tsv"),
            lock: dir.join(".ferrule-certs.lock"),
            dir,
        }
    }

    /// Fails with [`Error::NotInitialized`] unless the files needed to issue
    /// and revoke are present.
    pub(crate) fn require_initialized(&self) -> Result<()> {
        if !self.dir.is_dir() {
            return Err(Error::NoCaDir {
                dir: self.dir.clone(),
            });
        }
        for f in [&self.issuing_cert, &self.issuing_key, &self.index] {
            if !f.exists() {
                return Err(Error::NotInitialized {
                    dir: self.dir.clone(),
                    missing: f.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Who may read a file we write.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access {
    /// Private keys: owner read/write only (0600).
    Secret,
    /// Certificates, CRLs, bundles, the index: world-readable (0644).
    Public,
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Access::Secret => 0o600,
            Access::Public => 0o644,
        }
    }
}

/// Fails with [`Error::AlreadyExists`] for the first path that exists,
/// unless `force`. Called before generating anything so a refused command
/// leaves no partial output.
pub(crate) fn refuse_existing<'a>(
    paths: impl IntoIterator<Item = &'a Path>,
    force: bool,
) -> Result<()> {
    if force {
        return Ok(());
    }
    for p in paths {
        // symlink_metadata: a dangling symlink also counts as "exists".
        if fs::symlink_metadata(p).is_ok() {
            return Err(Error::AlreadyExists { path: p.to_owned() });
        }
    }
    Ok(())
}

/// Writes `contents` to `path` with the permissions of `access`.
///
/// Without `force` the file is created with `create_new`, so an existing
/// file is never touched and [`Error::AlreadyExists`] names it. With `force`
/// the content goes to a fresh temporary file in the same directory which
/// then replaces `path` atomically.
pub(crate) fn write_file(path: &Path, contents: &[u8], access: Access, force: bool) -> Result<()> {
    if force {
        replace_file(path, contents, access)
    } else {
        let mut file = create_new(path, access).map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => Error::AlreadyExists {
                path: path.to_owned(),
            },
            _ => io_err("cannot create", path)(e),
        })?;
        write_all_sync(&mut file, contents, path)
    }
}

/// Atomically replaces (or creates) `path` via a temporary sibling file.
pub(crate) fn replace_file(path: &Path, contents: &[u8], access: Access) -> Result<()> {
    let tmp = temp_sibling(path)?;
    let mut file = create_new(&tmp, access).map_err(io_err("cannot create", &tmp))?;
    let written = write_all_sync(&mut file, contents, &tmp)
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("cannot replace", path)));
    if written.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn create_new(path: &Path, access: Access) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(access.mode())
        .open(path)
}

fn write_all_sync(file: &mut File, contents: &[u8], path: &Path) -> Result<()> {
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_err("cannot write", path))
}

fn temp_sibling(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce = Serial::random()?.to_hex();
    Ok(path.with_file_name(format!(".{name}.{}.tmp", &nonce[..12])))
}

/// Reads a whole file as UTF-8 text, naming the file on failure.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io_err("cannot read", path))
}

/// Exclusive lock on a CA directory, released on drop.
///
/// It exists because issuing and revoking rewrite `index.tsv` and the CRL
/// counter; two concurrent runs would otherwise lose entries.
#[derive(Debug)]
pub(crate) struct DirLock {
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock or fails with [`Error::Locked`] if it is held.
    pub(crate) fn acquire(files: &CaFiles) -> Result<Self> {
        match create_new(&files.lock, Access::Secret) {
            Ok(mut f) => {
                // The pid only helps an operator judge a stale lock.
                let _ = writeln!(f, "{}", std::process::id());
                Ok(Self {
                    path: files.lock.clone(),
                })
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(Error::Locked {
                path: files.lock.clone(),
            }),
            Err(e) => Err(io_err("cannot create lock file", &files.lock)(e)),
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What a certificate in the index is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// Self-signed root CA.
    Root,
    /// Intermediate CA that signs leaves and the CRL.
    Issuing,
    /// Aggregator / server leaf (serverAuth).
    Server,
    /// Agent leaf (clientAuth).
    Agent,
}

impl CertKind {
    /// The word used in `index.tsv`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::Root => "root",
            CertKind::Issuing => "issuing",
            CertKind::Server => "server",
            CertKind::Agent => "agent",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "root" => CertKind::Root,
            "issuing" => CertKind::Issuing,
            "server" => CertKind::Server,
            "agent" => CertKind::Agent,
            _ => return None,
        })
    }
}

/// Whether a certificate has been revoked, and when and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not revoked (it may still have expired; see `not_after`).
    Valid,
    /// Revoked at the given time for the given reason.
    Revoked {
        /// When `revoke` ran.
        at: OffsetDateTime,
        /// Why, as given to `revoke`.
        reason: crate::RevocationReason,
    },
}

/// One line of `index.tsv`.
///
/// It exists so `revoke` can find what a serial is and the CRL can be
/// rebuilt from scratch each time, and so `list` can show what was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The certificate's serial.
    pub serial: Serial,
    /// What the certificate is for.
    pub kind: CertKind,
    /// Agent URI, comma-joined server names, or CA common name.
    pub identity: String,
    /// Expiry of the certificate.
    pub not_after: OffsetDateTime,
    /// Revocation status.
    pub status: Status,
}

const INDEX_HEADER: &str = "# serial\tkind\tidentity\tnot_after\tstatus\trevoked_at\treason\n";

impl IndexEntry {
    fn to_line(&self) -> String {
        let (status, at, reason) = match &self.status {
            Status::Valid => ("valid", "-".to_owned(), "-"),
            Status::Revoked { at, reason } => ("revoked", rfc3339(*at), reason.as_str()),
        };
        format!(
            "{}\t{}\t{}\t{}\t{status}\t{at}\t{reason}\n",
            self.serial.to_hex(),
            self.kind.as_str(),
            self.identity,
            rfc3339(self.not_after),
        )
    }

    fn from_line(line: &str) -> std::result::Result<Self, String> {
        let fields: Vec<&str> = line.split('\t').collect();
        let [serial, kind, identity, not_after, status, at, reason] = fields[..] else {
            return Err(format!(
                "expected 7 tab-separated fields, found {}",
                fields.len()
            ));
        };
        let serial = Serial::parse(serial).map_err(|e| e.to_string())?;
        let kind = CertKind::parse(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
        let not_after = parse_rfc3339(not_after)?;
        let status = match status {
            "valid" => Status::Valid,
            "revoked" => Status::Revoked {
                at: parse_rfc3339(at)?,
                reason: reason.parse().map_err(|e: Error| e.to_string())?,
            },
            other => return Err(format!("unknown status {other:?}")),
        };
        Ok(Self {
            serial,
            kind,
            identity: identity.to_owned(),
            not_after,
            status,
        })
    }
}

/// Every certificate issued from the CA in `dir`, in issue order, as
/// recorded in its `index.tsv` (what `ferrule-certs list` prints).
pub fn list(dir: &Path) -> Result<Vec<IndexEntry>> {
    let files = CaFiles::new(dir);
    files.require_initialized()?;
    read_index(&files)
}

/// Reads every entry of `index.tsv`.
pub(crate) fn read_index(files: &CaFiles) -> Result<Vec<IndexEntry>> {
    let text = read_text(&files.index)?;
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = IndexEntry::from_line(line).map_err(|reason| Error::CorruptStore {
            path: files.index.clone(),
            line: n + 1,
            reason,
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Rewrites `index.tsv` with `entries` (caller holds the [`DirLock`]).
pub(crate) fn write_index(files: &CaFiles, entries: &[IndexEntry]) -> Result<()> {
    let mut text = String::from(INDEX_HEADER);
    for e in entries {
        text.push_str(&e.to_line());
    }
    replace_file(&files.index, text.as_bytes(), Access::Public)
}

/// Appends one entry to `index.tsv` (caller holds the [`DirLock`]).
pub(crate) fn append_index(files: &CaFiles, entry: IndexEntry) -> Result<()> {
    let mut entries = read_index(files)?;
    entries.push(entry);
    write_index(files, &entries)
}

/// Increments the CRL counter and returns the new number (caller holds the
/// [`DirLock`]). A missing counter file starts at 1.
pub(crate) fn next_crl_number(files: &CaFiles) -> Result<u64> {
    let current = match fs::read_to_string(&files.crl_number) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|e| Error::CorruptStore {
                path: files.crl_number.clone(),
                line: 1,
                reason: format!("not a decimal number: {e}"),
            })?,
        Err(e) if e.kind() == ErrorKind::NotFound => 0,
        Err(e) => return Err(io_err("cannot read", &files.crl_number)(e)),
    };
    let next = current.checked_add(1).ok_or_else(|| Error::CorruptStore {
        path: files.crl_number.clone(),
        line: 1,
        reason: "counter overflow".to_owned(),
    })?;
    replace_file(
        &files.crl_number,
        format!("{next}\n").as_bytes(),
        Access::Public,
    )?;
    Ok(next)
}

/// Formats a timestamp as RFC 3339 in UTC, whole seconds (`2026-05-01T12:00:00Z`).
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    // Formatting a UTC year 0..=9999 as RFC 3339 cannot fail; the fallback
    // only guards against absurd dates.
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn parse_rfc3339(s: &str) -> std::result::Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("bad timestamp {s:?}: {e}"))
}
