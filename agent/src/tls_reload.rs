//! The agent takes a renewed certificate, key or trust bundle without a
//! restart: before each connection attempt the uplink asks [`ClientTlsReload`]
//! whether the files changed (their [`FileStamp`]s: an edit, a rename over
//! them, a symlink swap); changed, they are checked as `check-config` checks
//! them (readable, the key is the certificate's, chains to the trust bundle,
//! valid now, still names this `[agent]`) and, if good, new connections use
//! them at once; the established one carries on with what it has. Bad: the
//! current material stays, a warning names the problem, and
//! `ferrule_agent_tls_reload_refused_total{reason}` counts it once per bad
//! version. The certificate's expiry is the gauge
//! `ferrule_agent_tls_cert_not_after_seconds`, and a warning says so every
//! hour within `tls.expiry_warn_days` of it.

use crate::config::Config;
use ferrule_telemetry::{Counter, Gauge, Registry};
use ferrule_transport::quinn;
use ferrule_transport::{
    check_client_material, client_config, client_crypto, leaf_summary, stamp, ClientTls,
    EndpointLimits, ExpectedAgent, FileStamp, Refusals,
};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Watches the agent's TLS files between connection attempts.
pub struct ClientTlsReload {
    files: ClientTls,
    site: String,
    agent: String,
    server_name: String,
    warn_days: u64,
    serving: Vec<Option<FileStamp>>,
    refused: Option<Vec<Option<FileStamp>>>,
    not_after_unix: Option<i64>,
    last_warned: Option<Instant>,
    applied: Counter,
    refused_total: Counter,
    not_after: Gauge,
    registry: Registry,
    refusals: Arc<Refusals>,
}

fn stamps(files: &ClientTls) -> Vec<Option<FileStamp>> {
    [&files.cert, &files.key, &files.server_ca]
        .into_iter()
        .map(|p| stamp(p))
        .collect()
}

fn refusal(r: &Registry, reason: &str) -> Counter {
    r.counter(
        "ferrule_agent_tls_reload_refused_total",
        "Renewed TLS material refused, by the problem found (the current material stays in use).",
        &[("reason", reason)],
    )
}

impl ClientTlsReload {
    /// Watches `cfg`'s TLS files, as of the material the uplink started with.
    pub fn new(cfg: &Config, registry: &Registry) -> Self {
        let files = cfg.client_tls();
        let reloads = |outcome| {
            registry.counter(
                "ferrule_agent_tls_reloads_total",
                "TLS material looked at after a change: taken for new connections, or refused.",
                &[("outcome", outcome)],
            )
        };
        for reason in ferrule_transport::MaterialProblem::LABELS {
            let _ = refusal(registry, reason);
        }
        let not_after_unix = leaf_summary(&files.cert).ok().map(|l| l.not_after_unix);
        let not_after = registry.gauge(
            "ferrule_agent_tls_cert_not_after_seconds",
            "When the agent's certificate expires, Unix seconds.",
            &[],
        );
        if let Some(t) = not_after_unix {
            not_after.set(t);
        }
        Self {
            serving: stamps(&files),
            files,
            site: cfg.agent.site.clone(),
            agent: cfg.agent.id.clone(),
            server_name: cfg.uplink.server_name.clone(),
            warn_days: cfg.tls.expiry_warn_days,
            refused: None,
            not_after_unix,
            last_warned: None,
            applied: reloads("applied"),
            refused_total: reloads("refused"),
            not_after,
            registry: registry.clone(),
            refusals: Refusals::new(),
        }
    }

    /// Where the verifier of every configuration built here reports the
    /// aggregator certificates it refused (the uplink asks after a failed
    /// handshake why, by rustls's typed error).
    pub fn refusals(&self) -> &Arc<Refusals> {
        &self.refusals
    }

    /// The configuration new connections should use, if the files changed
    /// and pass; `None` when nothing changed (or the change was refused).
    pub fn check(&mut self) -> Option<quinn::ClientConfig> {
        self.warn_expiry();
        let now = stamps(&self.files);
        if now == self.serving || self.refused.as_ref() == Some(&now) {
            return None;
        }
        let report = check_client_material(
            &self.files,
            ExpectedAgent {
                site: &self.site,
                agent: &self.agent,
            },
            &self.server_name,
            SystemTime::now(),
        );
        let built = if report.is_ok() {
            client_crypto(&self.files, &self.refusals)
                .and_then(|c| client_config(c, &EndpointLimits::default()))
                .map_err(|e| vec![("unreadable", e.to_string())])
        } else {
            Err(report
                .problems
                .iter()
                .map(|p| (p.label(), p.to_string()))
                .collect())
        };
        match built {
            Ok(cfg) => {
                let leaf = leaf_summary(&self.files.cert).ok();
                self.not_after_unix = leaf.as_ref().map(|l| l.not_after_unix);
                if let Some(t) = self.not_after_unix {
                    self.not_after.set(t);
                }
                self.applied.inc();
                tracing::info!(
                    serial = leaf.map(|l| l.serial).unwrap_or_default(),
                    "TLS material reloaded: new connections use it"
                );
                self.serving = now;
                self.refused = None;
                self.last_warned = None;
                Some(cfg)
            }
            Err(problems) => {
                self.refused_total.inc();
                for (label, text) in &problems {
                    refusal(&self.registry, label).inc();
                    tracing::warn!(
                        reason = label,
                        "TLS reload refused, the current certificate stays in use: {text}"
                    );
                }
                self.refused = Some(now);
                None
            }
        }
    }

    /// Warns (hourly) when the certificate in use expires within the
    /// configured days.
    fn warn_expiry(&mut self) {
        let Some(t) = self.not_after_unix else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let left_s = t.saturating_sub(now);
        let warn_s = i64::try_from(self.warn_days.saturating_mul(86_400)).unwrap_or(i64::MAX);
        if left_s < warn_s
            && self
                .last_warned
                .is_none_or(|w| w.elapsed() > Duration::from_secs(3600))
        {
            self.last_warned = Some(Instant::now());
            tracing::warn!(
                days_left = left_s / 86_400,
                cert = %self.files.cert.display(),
                "the agent's certificate expires soon: renew it (ferrule-certs renew, or tls.renew_command)"
            );
        }
    }
}
