//! Reloads the aggregator's TLS material while it runs: the certificate and
//! key, the agents' trust bundle and the CRL. Looked at every
//! `tls.reload_interval_secs` and at once on SIGHUP; a file counts as changed
//! when its [`FileStamp`] does (an edit, a rename over it, a symlink swap as
//! Kubernetes and cert-manager make them).
//!
//! New material is checked as `check-config` checks it (readable, the key is
//! the certificate's, chains to the trust bundle, valid now, carries a DNS
//! name, the CRL parses), and must keep every name the serving certificate
//! has (agents ask for one of them). Refused: the current material keeps
//! serving; a warning names each problem, and
//! `ferrule_aggregator_tls_reloads_total{outcome="refused"}` and
//! `ferrule_aggregator_tls_reload_refused_total{reason}` count it (once per
//! bad version of the files). Taken: new handshakes use it at once
//! ([`ServerTlsSlot`]); established sessions carry on, except those a new
//! CRL revokes: each session checks itself against it and closes with
//! `certificate_revoked` ([`Revoked`], `ferrule_aggregator_sessions_revoked_total`).
//! The serving certificate's expiry is the gauge
//! `ferrule_aggregator_tls_cert_not_after_seconds`.

use ferrule_telemetry::{Counter, Gauge, Registry};
use ferrule_transport::{
    check_server_material, leaf_summary, server_crypto, stamp, FileStamp, Refusals, Revoked,
    ServerTls, ServerTlsSlot,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// The running reloader: where sessions hear of a new CRL, and how to ask
/// for a look now (SIGHUP).
pub struct TlsReload {
    /// The revoked certificates as of the newest CRL taken.
    pub revoked: watch::Receiver<Arc<Revoked>>,
    /// Send to look at the files now.
    pub look_now: mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Metrics {
    applied: Counter,
    refused: Counter,
    registry: Registry,
    not_after: Gauge,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        let reloads = |outcome| {
            r.counter(
                "ferrule_aggregator_tls_reloads_total",
                "TLS material looked at after a change: taken into service, or refused (the old keeps serving).",
                &[("outcome", outcome)],
            )
        };
        for reason in ferrule_transport::MaterialProblem::LABELS
            .iter()
            .chain(&["names_dropped"])
        {
            let _ = Self::refusal(r, reason);
        }
        Self {
            applied: reloads("applied"),
            refused: reloads("refused"),
            registry: r.clone(),
            not_after: r.gauge(
                "ferrule_aggregator_tls_cert_not_after_seconds",
                "When the serving certificate expires, Unix seconds.",
                &[],
            ),
        }
    }

    fn refusal(r: &Registry, reason: &str) -> Counter {
        r.counter(
            "ferrule_aggregator_tls_reload_refused_total",
            "New TLS material refused, by the problem found (the old material keeps serving).",
            &[("reason", reason)],
        )
    }
}

/// What was taken, in the blocking check.
struct Taken {
    crypto: rustls::ServerConfig,
    revoked: Revoked,
    serial: String,
    names: Vec<String>,
    not_after_unix: i64,
}

/// Checks the files as they are now; what to serve, or the problems.
fn check(
    files: &ServerTls,
    serving_names: &[String],
    refusals: &Arc<Refusals>,
) -> Result<Taken, Vec<(&'static str, String)>> {
    let report = check_server_material(files, SystemTime::now());
    if !report.is_ok() {
        return Err(report
            .problems
            .iter()
            .map(|p| (p.label(), p.to_string()))
            .collect());
    }
    let leaf = leaf_summary(&files.cert).map_err(|e| vec![("unreadable", e.to_string())])?;
    let dropped: Vec<&String> = serving_names
        .iter()
        .filter(|n| !leaf.names.contains(n))
        .collect();
    if !dropped.is_empty() {
        return Err(vec![(
            "names_dropped",
            format!(
                "{}: the new certificate drops names agents may ask for ({}); a certificate for other names needs a restart",
                files.cert.display(),
                dropped.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )]);
    }
    let crypto = server_crypto(files, refusals).map_err(|e| vec![("unreadable", e.to_string())])?;
    let revoked = match &files.crl {
        Some(p) => Revoked::from_file(p).map_err(|e| vec![("crl", e.to_string())])?,
        None => Revoked::default(),
    };
    Ok(Taken {
        crypto,
        revoked,
        serial: leaf.serial,
        names: leaf.names,
        not_after_unix: leaf.not_after_unix,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn stamps(files: &ServerTls) -> Vec<Option<FileStamp>> {
    [&files.cert, &files.key, &files.client_ca]
        .into_iter()
        .chain(files.crl.as_ref())
        .map(|p| stamp(p))
        .collect()
}

impl TlsReload {
    /// Starts watching `files` (serving now what `slot` holds, which was
    /// built from them) every `interval` (`None`: only when asked).
    pub fn start(
        files: ServerTls,
        interval: Option<Duration>,
        warn_within: Duration,
        slot: ServerTlsSlot,
        refusals: Arc<Refusals>,
        registry: &Registry,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let metrics = Metrics::new(registry);
        let first = leaf_summary(&files.cert)?;
        metrics.not_after.set(first.not_after_unix);
        let revoked_now = match &files.crl {
            Some(p) => Revoked::from_file(p)?,
            None => Revoked::default(),
        };
        let (revoked_tx, revoked) = watch::channel(Arc::new(revoked_now));
        let (look_now, mut asked) = mpsc::channel::<()>(4);
        let mut serving = stamps(&files);
        let mut serving_names = first.names;
        let mut refused: Option<Vec<Option<FileStamp>>> = None;
        let mut not_after_unix = first.not_after_unix;
        let mut last_warned: Option<std::time::Instant> = None;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let forced = tokio::select! {
                    _ = tick.tick(), if interval.is_some() => false,
                    r = asked.recv() => r.is_some(),
                    _ = stop.changed() => return,
                };
                let left = not_after_unix.saturating_sub(unix_now());
                if left < i64::try_from(warn_within.as_secs()).unwrap_or(i64::MAX)
                    && last_warned.is_none_or(|w| w.elapsed() > Duration::from_secs(3600))
                {
                    last_warned = Some(std::time::Instant::now());
                    tracing::warn!(days_left = left / 86_400, cert = %files.cert.display(), "the aggregator's certificate expires soon: rotate it (see the README's runbook)");
                }
                let now = stamps(&files);
                if now == serving && !forced {
                    continue;
                }
                if refused.as_ref() == Some(&now) && !forced {
                    continue; // this bad version was said already
                }
                let f = files.clone();
                let names = serving_names.clone();
                let r = refusals.clone();
                let Ok(outcome) = tokio::task::spawn_blocking(move || check(&f, &names, &r)).await
                else {
                    continue;
                };
                match outcome {
                    Ok(t) => {
                        if now == serving {
                            continue; // asked, nothing changed
                        }
                        if let Err(e) = slot.install(t.crypto) {
                            tracing::warn!(error = %e, "TLS reload: the new material could not be installed; the old keeps serving");
                            metrics.refused.inc();
                            continue;
                        }
                        metrics.applied.inc();
                        metrics.not_after.set(t.not_after_unix);
                        not_after_unix = t.not_after_unix;
                        last_warned = None;
                        tracing::info!(
                            serial = %t.serial,
                            names = ?t.names,
                            revoked = t.revoked.len(),
                            "TLS material reloaded: new handshakes use it"
                        );
                        if **revoked_tx.borrow() != t.revoked {
                            let _ = revoked_tx.send(Arc::new(t.revoked));
                        }
                        serving_names = t.names;
                        serving = now;
                        refused = None;
                    }
                    Err(problems) => {
                        metrics.refused.inc();
                        for (label, text) in &problems {
                            Metrics::refusal(&metrics.registry, label).inc();
                            tracing::warn!(
                                reason = label,
                                "TLS reload refused, the current certificate keeps serving: {text}"
                            );
                        }
                        refused = Some(now);
                    }
                }
            }
        });
        Ok(Self {
            revoked,
            look_now,
            task,
        })
    }

    /// Stops watching.
    pub fn stop(self) {
        self.task.abort();
    }
}
