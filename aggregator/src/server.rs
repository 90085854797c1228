//! The aggregator's main job: accept agents, commit their batches, drain on
//! shutdown.
//!
//! Shutdown order (SIGTERM): stop accepting, send GoAway on every session and stop
//! granting credit, let in-flight commits finish and be acknowledged, give agents
//! the drain period to leave, close the endpoint, then let the committer finish
//! its last group. Agents move elsewhere with nothing lost.

use crate::admission::Admission;
use crate::alerts::evaluate::{Evaluated, Evaluator};
use crate::alerts::Notifiers;
use crate::commit::{Embedded, EmbeddedOptions};
use crate::config::Config;
use crate::fanout::Fanout;
use crate::ingest::{self, IngestContext, SharedWindow};
use crate::kafka::Kafka;
use crate::metrics::IngestMetrics;
use anyhow::Context as _;
use ferrule_telemetry::Registry;
use ferrule_transport::{
    accept_validated, server_config, server_crypto, server_endpoint_with, Admitted, EndpointLimits,
    GateFull, HandshakeGate, Refusals, ServerTlsSlot,
};
use ferrule_wire::session::{IngestConfig, WindowConfig, WindowController};
use ferrule_wire::{Credit, Limits, ServerLimits};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

/// The sink behind the ingest path: the embedded log, or Kafka.
enum Committer {
    Embedded(Embedded),
    Kafka(Kafka),
}

impl Committer {
    fn sink(&self) -> crate::commit::Sink {
        match self {
            Committer::Embedded(e) => e.sink(),
            Committer::Kafka(k) => k.sink(),
        }
    }

    /// Lets the committer finish what is queued (every session is gone by now).
    async fn join(self) {
        match self {
            Committer::Embedded(e) => {
                let _ = tokio::task::spawn_blocking(move || e.join()).await;
            }
            Committer::Kafka(k) => k.join().await,
        }
    }
}

/// A started aggregator: where it listens, and its metrics.
#[derive(Debug, Clone)]
pub struct Running {
    /// The QUIC address agents connect to (useful when configured with port 0).
    pub quic_addr: SocketAddr,
    /// The metrics address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The registry (for in-process callers such as the demo).
    pub registry: Registry,
    /// Why the real-time path is degraded, if it is (never affects readiness).
    pub fanout_degraded: Arc<crate::fanout::Degraded>,
    /// Where in-process consumers (the demo, tests) subscribe to the real-time
    /// path: every batch this aggregator publishes (with Redis too, handed over
    /// before the Redis write). Subscribing in `on_ready` sees every batch.
    pub fanout: crate::fanout::embedded::Subscriptions,
    /// Every `firing` and `resolved` alert transition, as it is emitted, when rules are configured
    /// (`[alerts] rules`); subscribe to watch them (the demo prints them).
    pub alerts: Option<broadcast::Sender<Arc<Evaluated>>>,
    /// Where the live page is served (`http://<addr>/`), if `[page] listen` is set.
    pub page_addr: Option<SocketAddr>,
    /// The newest snapshots and signals this aggregator took as the sampler
    /// (oldest first; empty while another aggregator samples).
    pub sampled: Arc<std::sync::Mutex<std::collections::VecDeque<Arc<crate::sampler::Sampled>>>>,
}

/// Runs the aggregator until `shutdown` completes, then drains. `on_ready` is
/// called once listening.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(Running),
) -> anyhow::Result<()> {
    let registry = Registry::new();
    let committer = match &cfg.kafka {
        Some(k) => {
            tracing::info!(brokers = %k.brokers, topic = %k.topic, "committing to Kafka");
            Committer::Kafka(
                Kafka::start(
                    k.clone(),
                    cfg.credit.sink_high_water_bytes,
                    cfg.dedupe.bounds(),
                    &registry,
                )
                .context("starting the Kafka producer")?,
            )
        }
        None => Committer::Embedded(
            Embedded::start(
                EmbeddedOptions {
                    dir: cfg.log.dir.clone(),
                    segment_bytes: cfg.log.segment_bytes,
                    max_total_bytes: cfg.log.max_total_bytes,
                    max_age: cfg.log.max_age_secs.map(Duration::from_secs),
                    group_max: cfg.log.group_commit_max_batches,
                    high_water_bytes: cfg.credit.sink_high_water_bytes,
                    dedupe: cfg.dedupe.bounds(),
                },
                &registry,
            )
            .with_context(|| format!("opening the embedded log in {}", cfg.log.dir.display()))?,
        ),
    };
    let sink = committer.sink();
    // The real-time path, beside the durable one: Redis Streams when `[redis]`
    // is configured, else in-process. Neither waits for the other.
    let (fanout, publisher) = Fanout::start(&cfg.fanout, cfg.redis.as_ref(), &registry)
        .context("starting the real-time fan-out")?;
    match &cfg.redis {
        Some(r) => {
            tracing::info!(stream_prefix = %r.stream_prefix, cluster = r.cluster, "real-time path: Redis Streams")
        }
        None => tracing::info!("real-time path: in-process"),
    }
    let degraded = fanout.degraded();
    // The alert evaluator subscribes before any agent can connect, so it sees
    // every batch.
    let evaluator = match &cfg.alerts {
        Some(a) => start_alerts(
            a,
            cfg.redis.as_ref(),
            cfg.kafka.as_ref(),
            &fanout,
            &registry,
        )?,
        None => None,
    };
    // OTLP export (metrics, batch traces, selected sensors), subscribed before
    // any agent can connect, like the evaluator.
    let otlp = match &cfg.otlp {
        Some(o) => {
            let otlp = ferrule_otlp::Otlp::start(
                o,
                "ferrule-aggregator",
                vec![ferrule_otlp::KeyValue::new(
                    "service.instance.id",
                    cfg.server.name.clone(),
                )],
                &registry,
            )
            .context("starting the OTLP export")?;
            if let Some(selection) = crate::otlp_sensors::Selection::new(&o.sensors) {
                let sub = fanout.subscribe_bounded("otlp", 1024, 64 << 20);
                tokio::spawn(crate::otlp_sensors::run(
                    sub,
                    selection,
                    ferrule_otlp::SensorGauges::new(&otlp, &registry),
                    registry.clone(),
                ));
            }
            Some(otlp)
        }
        None => None,
    };
    let traces = otlp.as_ref().map_or_else(
        ferrule_otlp::BatchTracer::disabled,
        ferrule_otlp::Otlp::batches,
    );

    // Named now, with the file at fault; what rustls refuses below stops the
    // start, the rest (an expired certificate, one agents cannot verify) would
    // only show as refused handshakes.
    let tls = cfg.check_tls(std::time::SystemTime::now());
    for w in &tls.warnings {
        tracing::warn!("{w}");
    }
    for p in &tls.problems {
        tracing::error!("{p}");
    }
    let ingest_metrics = IngestMetrics::new(&registry);
    // Client certificates refused are counted by the verifier, with the
    // reason rustls's typed error gives (not text a peer could choose).
    let refusals = {
        let m = ingest_metrics.clone();
        Refusals::counting(move |reason| m.refused(reason))
    };
    let crypto = server_crypto(&cfg.server_tls(), &refusals).context("loading TLS material")?;
    let limits = EndpointLimits {
        idle_timeout: Duration::from_secs(cfg.server.idle_timeout_secs),
        max_pending_handshakes: cfg.server.max_pending_handshakes,
        ..EndpointLimits::default()
    };
    let reset_secret = std::fs::read(&cfg.tls.key)
        .with_context(|| format!("reading {}", cfg.tls.key.display()))?;
    let base = server_config(crypto, &limits).context("loading TLS material")?;
    let tls_slot = ServerTlsSlot::new(base.clone());
    let endpoint = server_endpoint_with(cfg.server.listen, base, &limits, &reset_secret)
        .context("starting the QUIC endpoint")?;
    let quic_addr = endpoint.local_addr().context("reading the QUIC address")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // New certificates, bundles and CRLs are taken while running: on a
    // change seen every tls.reload_interval_secs, and on SIGHUP.
    let tls_reload = crate::tls_reload::TlsReload::start(
        cfg.server_tls(),
        (cfg.tls.reload_interval_secs > 0)
            .then(|| Duration::from_secs(cfg.tls.reload_interval_secs)),
        Duration::from_secs(cfg.tls.expiry_warn_days.saturating_mul(86_400)),
        tls_slot.clone(),
        refusals,
        &registry,
        stop_rx.clone(),
    )
    .context("loading TLS material")?;
    {
        let look_now = tls_reload.look_now.clone();
        let mut stop = stop_rx.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            s = hup.recv() => {
                                if s.is_none() { return; }
                                tracing::info!("SIGHUP: looking at the TLS files now");
                                let _ = look_now.try_send(());
                            }
                            _ = stop.changed() => return,
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP cannot be caught; TLS files are still looked at every tls.reload_interval_secs")
            }
        }
    }
    let metrics_addr = match cfg.metrics.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener {addr}"))?;
            let bound = listener.local_addr()?;
            let health_sink = sink.clone();
            let mut stop = stop_rx.clone();
            let degraded = degraded.clone();
            let stall = Duration::from_secs(cfg.metrics.unready_without_credit_secs);
            // Whether credit flows, sampled twice a second for /readyz.
            let watched = sink.clone();
            let mut watch_stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tokio::select! {
                        _ = tick.tick() => watched.watch_credit(Instant::now()),
                        _ = watch_stop.wait_for(|s| *s) => return,
                    }
                }
            });
            // /healthz: alive whenever it answers. /readyz: the durable path's
            // alone (sink reachable, credit flowing); a Redis that is down
            // shows as degraded in both bodies (and the fan-out's gauges), still 200.
            let probes = ferrule_telemetry::Probes::ready_by(move || {
                health_sink.ready(Instant::now(), stall)
            })
            .with_degraded(move || degraded.check());
            tokio::spawn(ferrule_telemetry::serve_probes(
                listener,
                registry.clone(),
                probes,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ));
            Some(bound)
        }
        None => None,
    };

    let wire_limits = Limits {
        max_frame_bytes: cfg.server.max_frame_bytes,
        max_batch_samples: Limits::for_frame_bytes(cfg.server.max_frame_bytes).max_batch_samples,
    };
    let mut session = IngestConfig::new(
        cfg.server.name.clone(),
        ServerLimits {
            max_frame_bytes: wire_limits.max_frame_bytes,
            max_batch_samples: wire_limits.max_batch_samples,
            max_sensors: cfg.server.max_sensors_per_agent,
            heartbeat_interval_ms: cfg.server.heartbeat_interval_ms,
        },
        Credit {
            bytes: cfg.credit.session_window_bytes,
            batches: cfg.credit.session_window_batches,
        },
    );
    session.hello_timeout = Duration::from_secs(cfg.server.hello_timeout_secs);
    session.peer_timeout = Duration::from_secs(cfg.server.peer_timeout_secs);
    session.stall_timeout = Duration::from_secs(cfg.server.stall_timeout_secs);
    session.live_max_bytes_per_sec = cfg.server.live_max_bytes_per_sec;
    let agents = crate::agents::Agents::new();
    let gateway = crate::page::Gateway::new(&cfg.page, agents.clone(), &registry);
    let sampler = crate::sampler::Sampler::start(
        &cfg.sampler,
        cfg.redis.as_ref(),
        cfg.log.dir.clone(),
        ingest_metrics.clone(),
        fanout.subscriptions(),
        gateway.clone(),
        agents.clone(),
        cfg.kafka.as_ref(),
        &registry,
    )
    .context("starting the sampler")?;
    let page = crate::page::Page::start(
        gateway,
        cfg.redis.as_ref(),
        evaluator.as_ref().map(|e| e.watcher().subscribe()),
        stop_rx.clone(),
    )
    .await
    .context("starting the live page")?;
    if let Some(addr) = page.addr {
        tracing::info!("live page: http://{addr}/");
    }
    let window = SharedWindow::new(
        WindowController::new(WindowConfig::new(
            Duration::from_millis(cfg.credit.target_queue_delay_ms),
            session.initial_credit,
            u64::from(cfg.server.max_frame_bytes),
        )),
        ingest_metrics.clone(),
    );
    let ctx = Arc::new(IngestContext {
        session,
        limits: wire_limits,
        frame_timeout: cfg.server.frame_timeout(),
        control_send_timeout: Duration::from_secs(cfg.server.control_send_timeout_secs),
        sink: sink.clone(),
        metrics: ingest_metrics,
        shutdown: stop_rx.clone(),
        alternate: cfg.server.alternate.clone(),
        admission: Admission::new(cfg.server.max_sessions, cfg.server.max_sessions_per_agent),
        fanout: publisher,
        window,
        agents: agents.clone(),
        tls: tls_slot,
        revoked: tls_reload.revoked.clone(),
        traces,
    });
    drop(sink);
    tracing::info!(%quic_addr, metrics = ?metrics_addr, data = %cfg.log.dir.display(), "aggregator listening");
    on_ready(Running {
        quic_addr,
        metrics_addr,
        registry: registry.clone(),
        fanout_degraded: fanout.degraded(),
        fanout: fanout.subscriptions(),
        alerts: evaluator.as_ref().map(Evaluator::watcher),
        sampled: sampler.recent.clone(),
        page_addr: page.addr,
    });

    let mut sessions = JoinSet::new();
    let handshakes = HandshakeGate::new(
        cfg.server.max_pending_handshakes,
        cfg.server.max_pending_handshakes_per_address,
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = accept_validated(&endpoint, cfg.server.retry) => match incoming {
                Some(i) => match handshakes.try_enter(i.remote_address().ip()) {
                    Ok((permit, admitted)) => {
                        if let Admitted::Evicted(from) = admitted {
                            // Hoarded slots (handshakes started and never
                            // finished): counted, the address in the log.
                            ctx.metrics.refused("handshake_evicted");
                            tracing::debug!(%from, "handshake slot taken back from the address holding the most");
                        }
                        sessions.spawn(ingest::serve(i, permit, ctx.clone()));
                    }
                    Err(full) => {
                        // A storm, or one host holding its share: refused at
                        // once (no crypto), the agent backs off, instead of
                        // every handshake slowing past the agents' connect
                        // timeout.
                        ctx.metrics.refused("server_busy");
                        let limit = match full {
                            GateFull::Total => "server.max_pending_handshakes",
                            GateFull::Address => "server.max_pending_handshakes_per_address",
                        };
                        tracing::debug!(remote = %i.remote_address(), in_progress = handshakes.in_progress(), limit, "handshake refused: its limit of handshakes in progress");
                        i.refuse();
                    }
                },
                None => break,
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }

    tracing::info!(
        sessions = sessions.len(),
        "shutting down: GoAway to every agent, draining"
    );
    endpoint.set_server_config(None);
    let _ = stop_tx.send(true);
    let drain = Duration::from_secs(cfg.server.drain_timeout_secs);
    if tokio::time::timeout(drain, async {
        while sessions.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            left = sessions.len(),
            "drain period over; closing remaining sessions"
        );
        sessions.abort_all();
        while sessions.join_next().await.is_some() {}
    }
    // Another aggregator takes the sampling over at once.
    sampler.stop().await;
    page.stop();
    tls_reload.stop();
    endpoint.close(0u32.into(), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    drop(ctx);
    committer.join().await;
    // What the real-time path still holds gets a moment; a dead Redis must not
    // hold the shutdown (what is left is skipped, as while it runs).
    if tokio::time::timeout(Duration::from_secs(5), fanout.join())
        .await
        .is_err()
    {
        tracing::warn!("real-time fan-out did not finish within 5 s; leaving it");
    }
    if let Some(e) = evaluator {
        if tokio::time::timeout(Duration::from_secs(5), e.join())
            .await
            .is_err()
        {
            tracing::warn!("alert evaluator did not finish within 5 s; leaving it");
        }
    }
    if let Some(o) = otlp {
        // The last export, for 3 s at most (systemd's stop timeout is 30 s).
        o.shutdown(Duration::from_secs(3)).await;
    }
    tracing::info!("aggregator stopped");
    Ok(())
}

/// Loads the rules and starts the notifiers and the evaluator on an in-process
/// subscription; `None` without a rules file (nothing would produce alerts).
fn start_alerts(
    a: &crate::config::AlertsSection,
    redis: Option<&crate::config::RedisSection>,
    kafka: Option<&crate::config::KafkaSection>,
    fanout: &Fanout,
    registry: &Registry,
) -> anyhow::Result<Option<Evaluator>> {
    let Some(path) = &a.rules else {
        tracing::info!("alerts: no rules file (alerts.rules); nothing is evaluated");
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the alert rules {}", path.display()))?;
    let rules = ferrule_rules::RuleSet::from_toml(&text)
        .with_context(|| format!("alert rules {}", path.display()))?;
    let notifiers =
        Notifiers::start(a, redis, kafka, registry).context("starting the alert outputs")?;
    tracing::info!(rules = rules.rules().len(), file = %path.display(), outputs = ?notifiers.outputs(), "alerts: evaluating");
    let sub = fanout.subscribe_bounded(
        "alerts",
        a.evaluate_queue_batches.max(1),
        a.evaluate_queue_max_bytes.max(1),
    );
    let forget_after =
        (a.forget_agent_after_secs > 0).then(|| Duration::from_secs(a.forget_agent_after_secs));
    Ok(Some(Evaluator::start(
        sub,
        rules,
        Some(notifiers),
        forget_after,
        registry,
    )))
}
