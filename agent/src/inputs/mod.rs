//! Inputs: every source of samples on the agent.
//!
//! One interface for all of them: an input gets an [`InputContext`], registers its
//! sensors in the catalog through it, sends chunks of samples into the batcher's
//! bounded channel (waiting when it is full: that wait is the spool's
//! backpressure, so polling inputs poll later and push inputs stop reading their
//! sockets), and reports bad data with [`InputContext::bad`], which counts every
//! occurrence by input and reason and logs at most once per reason every
//! [`LOG_EVERY`]. Bad data never stops another input or the agent.

pub mod host;
pub mod line;
pub mod modbus;
pub mod mqtt;
pub mod synthetic;

use crate::batcher::{Chunk, Durability};
use crate::catalog::Catalog;
use crate::config::InputsSection;
use ferrule_telemetry::Registry;
use ferrule_wire::{SensorId, SensorKind, SensorName, Series};
use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Longest silence between two log lines about the same kind of bad data.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

const SENSORS_REFUSED: &str = "ferrule_agent_sensors_refused_total";
const SENSORS_REFUSED_HELP: &str =
    "New sensor names refused because the catalog holds agent.max_sensors already, by input";

/// What an input is given.
#[derive(Clone)]
pub struct InputContext {
    name: Arc<str>,
    tx: mpsc::Sender<Chunk>,
    catalog: Arc<Mutex<Catalog>>,
    registry: Registry,
    shutdown: watch::Receiver<bool>,
    last_log: Arc<Mutex<HashMap<&'static str, (Instant, u64)>>>,
    /// Looked up once: `send` runs for every chunk.
    samples: ferrule_telemetry::Counter,
}

impl InputContext {
    /// A context for the input called `name`.
    pub fn new(
        name: &str,
        tx: mpsc::Sender<Chunk>,
        catalog: Arc<Mutex<Catalog>>,
        registry: Registry,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let samples = registry.counter(
            "ferrule_agent_input_samples_total",
            "Samples read from each input",
            &[("input", name)],
        );
        // Published at 0 from the start, so an alert on it works before
        // the first refusal.
        let _ = registry.counter(SENSORS_REFUSED, SENSORS_REFUSED_HELP, &[("input", name)]);
        Self {
            name: Arc::from(name),
            tx,
            catalog,
            registry,
            shutdown,
            last_log: Arc::default(),
            samples,
        }
    }

    /// The input's name (counter label, log field).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The metrics registry, for input-specific series.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A receiver that turns true when the agent stops.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// True once the agent is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The id of sensor `name`, registering it (and saving the catalog) on first
    /// use. A name that is not a valid sensor name, or a new sensor beyond the
    /// catalog's cap (`agent.max_sensors`), is an error to count as bad data. The
    /// save (an fsync) runs off the async worker.
    pub fn sensor(&self, name: &str, unit: &str, kind: SensorKind) -> anyhow::Result<SensorId> {
        let name = SensorName::new(name)?;
        let result = crate::blocking::run(|| {
            let mut cat = self.catalog.lock().unwrap_or_else(PoisonError::into_inner);
            cat.intern(name, unit, kind)
        });
        if let Err(crate::catalog::CatalogError::Full { .. }) = &result {
            self.registry
                .counter(
                    SENSORS_REFUSED,
                    SENSORS_REFUSED_HELP,
                    &[("input", &self.name)],
                )
                .inc();
        }
        Ok(result?)
    }

    /// True if [`InputContext::send`] would wait now (the batcher's queue is
    /// full): an input that holds something back until a hand-over (acks)
    /// settles it first.
    pub fn would_block(&self) -> bool {
        self.tx.capacity() == 0
    }

    /// Sends samples to the batcher, waiting while its queue is full. Returns false
    /// once the agent is stopping (the input should return).
    pub async fn send(&self, series: Vec<Series>) -> bool {
        let samples: usize = series.iter().map(Series::len).sum();
        if samples == 0 {
            return true;
        }
        self.send_chunk(Chunk::new(self.name.clone(), series), samples)
            .await
    }

    /// Like [`InputContext::send`], with a durability ticket: `ticket` learns
    /// through [`Durability::durable_through`] when chunk number `n` (numbers
    /// rise per input) is durable in the spool. With `flush` the batch window
    /// closes at once, for a source that waits for acknowledgements. An empty
    /// chunk is sent too: its ticket fires once everything before it is durable.
    pub async fn send_durable(
        &self,
        series: Vec<Series>,
        ticket: &Arc<Durability>,
        n: u64,
        flush: bool,
    ) -> bool {
        let samples: usize = series.iter().map(Series::len).sum();
        let mut chunk = Chunk::new(self.name.clone(), series);
        chunk.durability = Some((ticket.clone(), n));
        chunk.flush = flush;
        self.send_chunk(chunk, samples).await
    }

    async fn send_chunk(&self, chunk: Chunk, samples: usize) -> bool {
        if self.tx.send(chunk).await.is_err() {
            return false;
        }
        self.samples.add(samples as u64);
        true
    }

    /// Counts one piece of bad data (a malformed line, a non-numeric payload, an
    /// exception response, a timeout, an unreachable device) and logs it, at most
    /// once per reason every [`LOG_EVERY`] with the number suppressed meanwhile.
    pub fn bad(&self, reason: &'static str, detail: impl Display) {
        self.registry
            .counter(
                INPUT_ERRORS,
                INPUT_ERRORS_HELP,
                &[("input", &self.name), ("reason", reason)],
            )
            .inc();
        let mut logs = self.last_log.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = logs
            .entry(reason)
            .or_insert((Instant::now() - LOG_EVERY * 2, 0));
        if entry.0.elapsed() >= LOG_EVERY {
            tracing::warn!(input = %self.name, reason, suppressed = entry.1, "{detail}");
            *entry = (Instant::now(), 0);
        } else {
            entry.1 += 1;
        }
    }
}

const INPUT_ERRORS: &str = "ferrule_agent_input_errors_total";
const INPUT_ERRORS_HELP: &str = "Bad data and failures per input and reason (the input goes on)";

impl InputContext {
    /// Publishes this input's error counter at 0 for each of `reasons` (the
    /// input kind's `ERROR_REASONS`) and its dropped-batch counters for every
    /// [`crate::spool::DROP_REASONS`], so they have series from the start.
    pub fn declare_reasons(&self, reasons: &[&str]) {
        let input = [("input", &*self.name)];
        self.registry
            .declare_counters(INPUT_ERRORS, INPUT_ERRORS_HELP, &input, "reason", reasons);
        crate::spool::declare_dropped(&self.registry, &self.name);
    }
}

/// Nanoseconds since the Unix epoch now: the timestamp of a sample whose source
/// gives none.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Registers every configured input's sensors and starts them. `ctx` makes the
/// context of the input with the given name.
pub fn start_all(
    cfg: &InputsSection,
    ctx: impl Fn(&str) -> InputContext,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for s in &cfg.synthetic {
        let c = ctx(&s.name);
        c.declare_reasons(&[]);
        let input = synthetic::Synthetic::new(s.clone(), &c)?;
        tasks.push(tokio::spawn(input.run(c)));
    }
    let declared = |name: &str, reasons: &[&str]| {
        let c = ctx(name);
        c.declare_reasons(reasons);
        c
    };
    for m in &cfg.modbus {
        let c = declared(&m.name, modbus::ERROR_REASONS);
        tasks.push(tokio::spawn(modbus::run(m.clone(), c)));
    }
    for m in &cfg.mqtt {
        let c = declared(&m.name, mqtt::ERROR_REASONS);
        tasks.push(tokio::spawn(mqtt::run(m.clone(), c)));
    }
    for l in &cfg.line {
        let c = declared(&l.name, line::ERROR_REASONS);
        tasks.push(tokio::spawn(line::run(l.clone(), c)));
    }
    if let Some(h) = &cfg.host {
        let c = declared(&h.name, host::ERROR_REASONS);
        tasks.push(tokio::spawn(host::run(h.clone(), c)));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registering a sensor saves the catalog through `blocking::run`, which
    /// must not panic on a current-thread runtime (as `block_in_place` would).
    #[tokio::test(flavor = "current_thread")]
    async fn sensors_register_on_a_current_thread_runtime() {
        let dir = tempfile::tempdir().expect("temp dir");
        let catalog = Catalog::open(dir.path()).expect("catalog");
        let (tx, _rx) = mpsc::channel(1);
        let (_stop, shutdown) = watch::channel(false);
        let ctx = InputContext::new(
            "t",
            tx,
            Arc::new(Mutex::new(catalog)),
            Registry::new(),
            shutdown,
        );
        let a = ctx
            .sensor("t/a", "V", SensorKind::Gauge)
            .expect("registers");
        assert_eq!(ctx.sensor("t/a", "V", SensorKind::Gauge).ok(), Some(a));
        // The save reached the disk: a reopened catalog knows the sensor.
        let again = Catalog::open(dir.path()).expect("reopen");
        assert!(again.defines().iter().any(|d| d.name.as_str() == "t/a"));
    }

    /// Right after an input starts, its error and drop counters have series
    /// at 0 for every known reason.
    #[test]
    fn reason_series_exist_at_zero_from_the_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let catalog = Catalog::open(dir.path()).expect("catalog");
        let (tx, _rx) = mpsc::channel(1);
        let (_stop, shutdown) = watch::channel(false);
        let registry = Registry::new();
        let ctx = InputContext::new(
            "plc",
            tx,
            Arc::new(Mutex::new(catalog)),
            registry.clone(),
            shutdown,
        );
        ctx.declare_reasons(modbus::ERROR_REASONS);
        ctx.bad("timeout", "one");
        let text = registry.render();
        for r in modbus::ERROR_REASONS {
            let n = u64::from(*r == "timeout");
            let line =
                format!("ferrule_agent_input_errors_total{{input=\"plc\",reason=\"{r}\"}} {n}");
            assert!(text.contains(&line), "{line}\n{text}");
        }
        for r in crate::spool::DROP_REASONS {
            for family in ["batches", "samples"] {
                let line = format!(
                    "ferrule_agent_dropped_{family}_total{{reason=\"{r}\",input=\"plc\"}} 0"
                );
                assert!(text.contains(&line), "{line}\n{text}");
            }
        }
    }
}
