//! `ferrule-certs`: the command-line front end to the `ferrule_certs` library.
//!
//! Contract: stdout carries only results (paths written, one per line, or
//! the `inspect` / `list` output), so scripts can consume it; progress and
//! errors go to stderr; any failure exits non-zero with a one-line reason.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferrule_certs::{
    AgentIdentity, InitOptions, IssueOptions, Issued, RevocationReason, Serial, Status,
};
use time::OffsetDateTime;

/// Issue, inspect, rotate and revoke ferrule's mTLS certificates.
#[derive(Debug, Parser)]
#[command(name = "ferrule-certs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a root CA, an issuing CA, the trust bundle and an empty CRL in DIR.
    Init {
        /// CA directory (created with mode 0700 if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA in DIR (destroys its keys).
        #[arg(long)]
        force: bool,
        /// Root CA lifetime in days.
        #[arg(long, default_value_t = ferrule_certs::DEFAULT_ROOT_DAYS)]
        root_days: u32,
        /// Issuing CA lifetime in days.
        #[arg(long, default_value_t = ferrule_certs::DEFAULT_ISSUING_DAYS)]
        issuing_days: u32,
    },
    /// Issue a server (aggregator) certificate with serverAuth.
    IssueServer {
        /// CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// DNS name or IP address; repeat for more SANs. The first names the files.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[command(flatten)]
        common: IssueArgs,
    },
    /// Issue an agent certificate with clientAuth and URI SAN ferrule://site/SITE/agent/ID.
    IssueAgent {
        /// CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// Site label (1-64 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        site: String,
        /// Agent id label (1-64 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        common: IssueArgs,
    },
    /// Reissue the leaf at CERT from the CA in DIR before it expires: same identity,
    /// new serial, the same key unless --new-key, written over the same file(s).
    Renew {
        /// CA directory (the CA that issued CERT).
        #[arg(long)]
        dir: PathBuf,
        /// The agent or server certificate to renew, rewritten in place.
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (default: CERT with the extension .key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Lifetime in days (default: 90 for servers, 30 for agents).
        #[arg(long)]
        days: Option<u32>,
        /// Generate a new key too, written over KEY before the certificate.
        #[arg(long)]
        new_key: bool,
    },
    /// Print subject, issuer, SANs, serial, validity and agent identity of each certificate in FILE.
    Inspect {
        /// PEM (or DER) certificate file.
        file: PathBuf,
        /// Print a JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a certificate by serial and re-sign DIR/crl.pem.
    Revoke {
        /// CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// Serial in hex (colons and 0x prefix allowed).
        #[arg(long)]
        serial: String,
        /// RFC 5280 reason, e.g. keyCompromise, superseded, cessationOfOperation.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Re-sign DIR/crl.pem with a fresh nextUpdate (no new revocations).
    Crl {
        /// CA directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// List every certificate issued from DIR (from index.tsv).
    List {
        /// CA directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write a trust bundle holding the CA certificates from several files (for rotation).
    Bundle {
        /// Bundle file to write.
        #[arg(long)]
        out: PathBuf,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
        /// CA certificate files (e.g. old and new root-ca.crt).
        #[arg(required = true)]
        certs: Vec<PathBuf>,
    },
}

/// Options shared by the issue commands.
#[derive(Debug, clap::Args)]
struct IssueArgs {
    /// Lifetime in days (default: 90 for servers, 30 for agents).
    #[arg(long)]
    days: Option<u32>,
    /// Directory for the certificate and key (default: the CA directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace existing certificate/key files of the same name.
    #[arg(long)]
    force: bool,
}

impl IssueArgs {
    fn options(self) -> IssueOptions {
        IssueOptions {
            days: self.days,
            out_dir: self.out,
            force: self.force,
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferrule-certs: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    match cli.command {
        Command::Init {
            dir,
            force,
            root_days,
            issuing_days,
        } => {
            let opts = InitOptions {
                force,
                root_days,
                issuing_days,
            };
            let written = ferrule_certs::init(&dir, &opts)
                .with_context(|| format!("cannot initialize CA in {}", dir.display()))?;
            eprintln!("initialized CA in {}", dir.display());
            print_paths(written.iter().map(|p| p.as_path()))
        }
        Command::IssueServer { dir, names, common } => {
            let issued = ferrule_certs::issue_server(&dir, &names, &common.options())
                .context("cannot issue server certificate")?;
            report_issued("server", &issued)
        }
        Command::IssueAgent {
            dir,
            site,
            id,
            common,
        } => {
            let identity =
                AgentIdentity::new(&site, &id).context("cannot issue agent certificate")?;
            let issued = ferrule_certs::issue_agent(&dir, &identity, &common.options())
                .context("cannot issue agent certificate")?;
            report_issued(&identity.to_uri(), &issued)
        }
        Command::Renew {
            dir,
            cert,
            key,
            days,
            new_key,
        } => {
            let opts = ferrule_certs::RenewOptions { days, key, new_key };
            let renewed = ferrule_certs::renew(&dir, &cert, &opts)
                .with_context(|| format!("cannot renew {}", cert.display()))?;
            eprintln!(
                "renewed {} {}: serial {} -> {}, expires {}{}",
                renewed.kind.as_str(),
                renewed.identity,
                renewed.previous_serial,
                renewed.serial,
                ferrule_certs::rfc3339(renewed.not_after),
                if renewed.key_replaced {
                    ", new key"
                } else {
                    ", key kept"
                }
            );
            print_paths(renewed.paths())
        }
        Command::Inspect { file, json } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let infos = ferrule_certs::inspect(&bytes)
                .with_context(|| format!("cannot inspect {}", file.display()))?;
            let text = if json {
                format!("{}\n", ferrule_certs::to_json(&infos, now))
            } else {
                let blocks: Vec<String> = infos.iter().map(|i| i.to_text(now)).collect();
                blocks.join("\n")
            };
            write_stdout(&text)
        }
        Command::Revoke {
            dir,
            serial,
            reason,
        } => {
            let serial = Serial::parse(&serial)?;
            let reason: RevocationReason = reason.parse()?;
            let crl = ferrule_certs::revoke(&dir, &serial, reason)
                .with_context(|| format!("cannot revoke serial {serial}"))?;
            eprintln!("revoked {serial} ({reason}); distribute the new CRL");
            print_paths([crl.as_path()])
        }
        Command::Crl { dir } => {
            let crl = ferrule_certs::refresh_crl(&dir).context("cannot re-sign the CRL")?;
            eprintln!(
                "CRL re-signed; valid for {} days",
                ferrule_certs::CRL_VALIDITY_DAYS
            );
            print_paths([crl.as_path()])
        }
        Command::List { dir } => {
            let entries = ferrule_certs::list(&dir)?;
            let mut text = String::new();
            for e in entries {
                let status = match e.status {
                    Status::Valid if e.not_after < now => "expired".to_owned(),
                    Status::Valid => "valid".to_owned(),
                    Status::Revoked { reason, .. } => format!("revoked({reason})"),
                };
                text.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    e.serial,
                    e.kind.as_str(),
                    ferrule_certs::rfc3339(e.not_after),
                    status,
                    e.identity
                ));
            }
            write_stdout(&text)
        }
        Command::Bundle { out, force, certs } => {
            let report = ferrule_certs::bundle(&out, &certs, force)
                .with_context(|| format!("cannot write bundle {}", out.display()))?;
            for c in &report.included {
                eprintln!(
                    "included {} (serial {}, expires {})",
                    c.subject,
                    c.serial,
                    ferrule_certs::rfc3339(c.not_after)
                );
            }
            if report.duplicates > 0 {
                eprintln!("skipped {} duplicate certificate(s)", report.duplicates);
            }
            print_paths([report.path.as_path()])
        }
    }
}

fn report_issued(what: &str, issued: &Issued) -> Result<()> {
    eprintln!(
        "issued {what}: serial {} expires {}",
        issued.serial,
        ferrule_certs::rfc3339(issued.not_after)
    );
    print_paths(issued.paths())
}

fn print_paths<'a>(paths: impl IntoIterator<Item = &'a std::path::Path>) -> Result<()> {
    let text: String = paths
        .into_iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    write_stdout(&text)
}

fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}
