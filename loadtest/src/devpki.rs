//! Development certificates: a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and agent certificates, made with `ferrule-certs` on first use and
//! reused after. For the demo and the tests; production CAs are run with the
//! `ferrule-certs` command (see certs/README.md).

use anyhow::Context as _;
use ferrule_certs::{AgentIdentity, InitOptions, IssueOptions};
use std::path::{Path, PathBuf};

/// Paths of a development PKI.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The CA directory.
    pub dir: PathBuf,
}

impl DevPki {
    /// Creates the CA and the server certificate in `dir` unless they exist.
    pub fn ensure(dir: &Path) -> anyhow::Result<Self> {
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        if !pki.ca_bundle().exists() {
            ferrule_certs::init(dir, &InitOptions::default())
                .with_context(|| format!("creating a CA in {}", dir.display()))?;
        }
        if !pki.server_cert().exists() {
            ferrule_certs::issue_server(
                dir,
                &["localhost".to_string(), "127.0.0.1".to_string()],
                &IssueOptions::default(),
            )
            .context("issuing the server certificate")?;
        }
        Ok(pki)
    }

    /// Issues an agent certificate unless it exists; returns (cert, key).
    pub fn agent(&self, site: &str, id: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (cert, key) = self.agent_paths(site, id);
        if !cert.exists() {
            let identity = AgentIdentity::new(site, id)?;
            ferrule_certs::issue_agent(&self.dir, &identity, &IssueOptions::default())
                .with_context(|| format!("issuing the certificate of agent {site}/{id}"))?;
        }
        Ok((cert, key))
    }

    /// Where an agent's files are.
    pub fn agent_paths(&self, site: &str, id: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("agent-{site}-{id}.crt")),
            self.dir.join(format!("agent-{site}-{id}.key")),
        )
    }

    /// The trust bundle (the root).
    pub fn ca_bundle(&self) -> PathBuf {
        self.dir.join("ca-bundle.crt")
    }

    /// The issuing CA certificate.
    pub fn issuing_ca(&self) -> PathBuf {
        self.dir.join("issuing-ca.crt")
    }

    /// The CRL.
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    /// The server certificate chain.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server-localhost.crt")
    }

    /// The server key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-localhost.key")
    }
}
