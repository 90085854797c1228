//! An aggregator and agents run inside this process, from their configuration
//! files: what the alert benchmark and the end-to-end alert tests start, so that
//! they can watch the aggregator's alerts (`Running::alerts`) and the agents'
//! counters directly. Each is stopped as its own shutdown signal would.

use anyhow::Context as _;
use ferrule_aggregator::server::Running;
use ferrule_telemetry::Registry;
use std::path::Path;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// An aggregator running on this process's runtime.
pub struct Aggregator {
    /// Where it listens, its registry, its fan-out and alerts.
    pub running: Running,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Aggregator {
    /// Loads `config` (with `FERRULE_*` overrides) and starts it; returns once it
    /// listens, or its error if it stopped before.
    pub async fn start(config: &Path) -> anyhow::Result<Self> {
        let cfg = ferrule_config::load_validated::<ferrule_aggregator::config::Config>(
            config, "FERRULE",
        )?
        .value;
        let (stop, mut stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(ferrule_aggregator::server::run(
            cfg,
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
            move |r| {
                let _ = ready_tx.send(r);
            },
        ));
        match ready_rx.await {
            Ok(running) => Ok(Self {
                running,
                stop,
                task,
            }),
            Err(_) => match task.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => anyhow::bail!("the aggregator stopped before it was ready"),
                Err(e) => anyhow::bail!("the aggregator task failed: {e}"),
            },
        }
    }

    /// Shuts it down (drain included) and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("the aggregator task failed")?
    }
}

/// An agent running on this process's runtime.
pub struct Agent {
    /// Its metrics.
    pub registry: Registry,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    /// Loads `config` (with `FERRULE_*` overrides) and starts it.
    pub fn start(config: &Path) -> anyhow::Result<Self> {
        let cfg =
            ferrule_config::load_validated::<ferrule_agent::config::Config>(config, "FERRULE")?
                .value;
        let (stop, mut stop_rx) = watch::channel(false);
        let registry = Registry::new();
        let task = tokio::spawn(ferrule_agent::run(
            cfg,
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
            registry.clone(),
        ));
        Ok(Self {
            registry,
            stop,
            task,
        })
    }

    /// Stops it as Ctrl-C would (inputs flushed, in-flight batches drained) and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("the agent task failed")?
    }
}
