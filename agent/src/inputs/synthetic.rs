//! The synthetic input: a deterministic three-phase electrical feed paced in real
//! time (see `ferrule_wire::example`), for the demo and the load tests.

use crate::batcher::Chunk;
use crate::catalog::Catalog;
use crate::config::SyntheticInput;
use ferrule_telemetry::Registry;
use ferrule_wire::example::{FeedOptions, ThreePhaseFeed, SENSORS, UNITS};
use ferrule_wire::{SensorKind, SensorName, Series};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// A configured synthetic input, with its sensors registered.
pub struct Synthetic {
    cfg: SyntheticInput,
    ids: Vec<ferrule_wire::SensorId>,
}

impl Synthetic {
    /// Registers the feed's seven sensors (`<prefix>/va` ... `<prefix>/f`).
    pub fn new(cfg: SyntheticInput, catalog: &mut Catalog) -> anyhow::Result<Self> {
        let mut ids = Vec::new();
        for (name, unit) in SENSORS.iter().zip(UNITS) {
            let full = SensorName::new(format!("{}/{name}", cfg.prefix))?;
            ids.push(catalog.intern(full, unit, SensorKind::Gauge)?);
        }
        Ok(Self { cfg, ids })
    }

    /// Produces samples until shutdown or `total_samples`.
    pub async fn run(
        self,
        tx: mpsc::Sender<Chunk>,
        mut shutdown: watch::Receiver<bool>,
        registry: Registry,
    ) {
        let input: Arc<str> = Arc::from(self.cfg.name.as_str());
        let produced = registry.counter(
            "ferrule_agent_input_samples_total",
            "Samples read from each input",
            &[("input", &self.cfg.name)],
        );
        let start_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let mut feed = ThreePhaseFeed::new(
            self.cfg.seed,
            start_ns,
            FeedOptions {
                rate_hz: self.cfg.rate_hz,
                sag_every_secs: self.cfg.sag_every_secs,
                ..FeedOptions::default()
            },
        );
        let started = tokio::time::Instant::now();
        let mut ticks_done: u64 = 0;
        let mut total: u64 = 0;
        let limit = self.cfg.total_samples.unwrap_or(u64::MAX);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return; }
                }
            }
            let due = (started.elapsed().as_secs_f64() * f64::from(self.cfg.rate_hz)) as u64;
            // At most a second of ticks per step, so a stall does not make one huge chunk.
            let ticks = due
                .saturating_sub(ticks_done)
                .min(u64::from(self.cfg.rate_hz));
            if ticks == 0 {
                continue;
            }
            let samples = (ticks * SENSORS.len() as u64).min(limit - total);
            let generated = feed.next_batch(samples as usize);
            ticks_done += ticks;
            let series: Vec<Series> = generated
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let id = self.ids[s.sensor().0 as usize];
                    let mut out = Series::with_capacity(id, s.len());
                    for (t, v, q) in s.iter() {
                        out.push(t, v, q);
                    }
                    out
                })
                .collect();
            if tx
                .send(Chunk {
                    input: input.clone(),
                    series,
                })
                .await
                .is_err()
            {
                return;
            }
            produced.add(samples);
            total += samples;
            if total >= limit {
                tracing::info!(input = %input, samples = total, "synthetic input reached total_samples; stopping");
                return;
            }
        }
    }
}
