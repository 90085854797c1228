//! # ferrule-agent
//!
//! The site daemon: inputs produce samples, the batcher cuts them into batches and
//! appends them to a crash-safe spool, and the uplink forwards durable batches to
//! an aggregator over mutually authenticated QUIC within the credit it grants,
//! deleting each only once acknowledged. The binary is a thin `main` over
//! [`run`], so tests and the demo embed it.
//!
//! Meant for a multi-threaded tokio runtime (one worker is enough). The spool's
//! group-commit fsyncs run on the blocking pool while the batcher goes on;
//! other fsyncing steps (releases, `fsync = "always"` appends, replay reads,
//! catalog saves) go through [`blocking::run`], which hands the worker over
//! with `block_in_place` there and runs them inline on a current-thread
//! runtime (where `block_in_place` would panic). Buffered appends and reads of just-written
//! batches run inline, since handing the worker over to another thread costs
//! more than they do.
#![forbid(unsafe_code)]

pub mod backlog;
pub mod backoff;
pub mod batcher;
pub mod blocking;
pub mod catalog;
pub mod config;
pub mod crossing;
pub mod failure;
pub mod inputs;
pub mod live;
pub mod renew_hook;
pub mod renew_schedule;
pub mod spool;
pub mod tls_reload;
pub mod trace;
pub mod uplink;

use anyhow::Context as _;
use config::Config;
use ferrule_telemetry::Registry;
use std::future::Future;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Runs the agent until `shutdown` completes: then inputs stop, what they produced
/// is spooled and synced, and the uplink gets a few seconds to have in-flight
/// batches acknowledged. Whatever is left stays in the spool for next time.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    registry: Registry,
) -> anyhow::Result<()> {
    // Named now, with the file at fault, rather than as session failures later.
    let tls = cfg.check_tls(std::time::SystemTime::now());
    for w in &tls.warnings {
        tracing::warn!("{w}");
    }
    for p in &tls.problems {
        tracing::error!("{p}; no session can open until this is fixed");
    }
    let (spool, reader) = spool::Spool::open(&cfg.spool, &registry)
        .with_context(|| format!("opening the spool in {}", cfg.spool.dir.display()))?;
    let catalog = Arc::new(Mutex::new(catalog::Catalog::open_with(
        &cfg.spool.dir,
        cfg.agent.max_sensors,
    )?));
    // The rules only pick when a batch leaves: a file this agent cannot read or
    // does not understand (a newer rule kind) costs latency, not the data.
    let crossings = cfg.alerts.rules.as_ref().and_then(|path| {
        let rules = std::fs::read_to_string(path)
            .map_err(anyhow::Error::from)
            .and_then(|text| Ok(ferrule_rules::RuleSet::from_toml(&text)?));
        match rules {
            Ok(rules) => {
                tracing::info!(rules = rules.rules().len(), file = %path.display(), "alerts: a batch leaves at once when one of these rules fires or resolves");
                Some(crossing::Crossings::new(
                    rules,
                    &cfg.agent.site,
                    &cfg.agent.id,
                    catalog.clone(),
                    &registry,
                ))
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "alerts.rules: not used (batches leave when their window closes)");
                None
            }
        }
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (chunk_tx, chunk_rx) = mpsc::channel(64);
    // Inputs register their sensors before anything runs, so a bad name fails the start.
    let input_tasks = inputs::start_all(&cfg.inputs, |name| {
        inputs::InputContext::new(
            name,
            chunk_tx.clone(),
            catalog.clone(),
            registry.clone(),
            stop_rx.clone(),
        )
    })?;
    drop(chunk_tx);
    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(batcher::initial_state(&spool));
    let (backlog_tx, backlog_rx) = watch::channel(spool.backlog());
    let clock_offset = Arc::new(AtomicI64::new(0));

    let health: Arc<ferrule_telemetry::Health> = Arc::default();
    if let Some(addr) = cfg.metrics.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        let mut stop = stop_rx.clone();
        let health = health.clone();
        tokio::spawn(ferrule_telemetry::serve(
            listener,
            registry.clone(),
            move || health.check(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }

    let otlp = match &cfg.otlp {
        Some(o) => Some(
            ferrule_otlp::Otlp::start(
                o,
                "ferrule-agent",
                vec![
                    ferrule_otlp::KeyValue::new("ferrule.site", cfg.agent.site.clone()),
                    ferrule_otlp::KeyValue::new("ferrule.agent", cfg.agent.id.clone()),
                    ferrule_otlp::KeyValue::new(
                        "service.instance.id",
                        format!("{}/{}", cfg.agent.site, cfg.agent.id),
                    ),
                ],
                &registry,
            )
            .context("starting the OTLP export")?,
        ),
        None => None,
    };
    let traces = match &otlp {
        Some(o) => trace::Traces::new(o.batches(), &cfg.agent.site, &cfg.agent.id),
        None => trace::Traces::disabled(),
    };

    let (live_tap, live_rx) = live::tap(&registry);
    let batcher = tokio::spawn(batcher::run(
        spool,
        batcher::BatcherIo {
            chunks: chunk_rx,
            settles: settle_rx,
            state: state_tx,
            backlog: backlog_tx,
            clock_offset_ns: clock_offset.clone(),
            shutdown: stop_rx.clone(),
            health: health.clone(),
            crossings,
            live: Some(live_tap),
            unhealthy_after: (cfg.uplink.unhealthy_after_secs > 0)
                .then(|| Duration::from_secs(cfg.uplink.unhealthy_after_secs)),
            traces: traces.clone(),
        },
        cfg.batch.clone(),
        cfg.spool.fsync,
        Duration::from_millis(cfg.spool.fsync_interval_ms),
        registry.clone(),
    ));
    let uplink = tokio::spawn(uplink::run(uplink::UplinkDeps {
        cfg: cfg.clone(),
        reader,
        state: state_rx,
        backlog: backlog_rx,
        settles: settle_tx,
        catalog,
        clock_offset_ns: clock_offset,
        registry: registry.clone(),
        shutdown: stop_rx.clone(),
        health,
        live: tokio::sync::Mutex::new(live_rx),
        traces,
    }));
    // Its own task: a slow or hanging renew hook never holds the uplink.
    let renew = tokio::spawn(renew_hook::run(
        cfg.clone(),
        registry.clone(),
        stop_rx.clone(),
    ));
    tracing::info!(site = %cfg.agent.site, agent = %cfg.agent.id, endpoints = ?cfg.uplink.endpoints, "agent running");
    // Under systemd (Type=notify): ready once the spool is open and the
    // inputs and uplink run; the watchdog pinged from the runtime from then on.
    ferrule_telemetry::notify::ready(&format!(
        "spooling, forwarding to {}",
        cfg.uplink.endpoints.join(", ")
    ));

    shutdown.await;
    tracing::info!("agent stopping: flushing inputs to the spool, draining in-flight batches");
    let _ = stop_tx.send(true);
    for t in input_tasks {
        let _ = t.await;
    }
    let up = uplink.await;
    let _ = renew.await;
    // The uplink dropped its settle sender: the batcher finishes.
    let _ = batcher.await;
    if let Some(o) = otlp {
        // The last export, for 2 s at most (the unit's stop timeout is 15 s,
        // the uplink's drain 5 s).
        o.shutdown(Duration::from_secs(2)).await;
    }
    match up {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("uplink task failed: {e}")),
    }
}
