//! The synthetic input: a deterministic three-phase electrical feed paced in real
//! time (see `ferrule_wire::example`), for the demo and the load tests.

use super::{now_ns, InputContext};
use crate::config::SyntheticInput;
use ferrule_wire::example::{FeedOptions, ThreePhaseFeed, SENSORS, UNITS};
use ferrule_wire::{SensorKind, Series};
use std::time::Duration;

/// A configured synthetic input, with its sensors registered.
pub struct Synthetic {
    cfg: SyntheticInput,
    ids: Vec<ferrule_wire::SensorId>,
}

impl Synthetic {
    /// Registers the feed's seven sensors (`<prefix>/va` ... `<prefix>/f`).
    pub fn new(cfg: SyntheticInput, ctx: &InputContext) -> anyhow::Result<Self> {
        let mut ids = Vec::new();
        for (name, unit) in SENSORS.iter().zip(UNITS) {
            ids.push(ctx.sensor(&format!("{}/{name}", cfg.prefix), unit, SensorKind::Gauge)?);
        }
        Ok(Self { cfg, ids })
    }

    /// Produces samples until shutdown or `total_samples`.
    pub async fn run(self, ctx: InputContext) {
        let mut shutdown = ctx.shutdown();
        let mut feed = ThreePhaseFeed::new(
            self.cfg.seed,
            now_ns(),
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
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.tick_ms.max(1)));
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
                    // The feed numbers its seven series 0..7; map them to catalog ids.
                    let id = self.ids[s.sensor().0 as usize];
                    let mut out = Series::with_capacity(id, s.len());
                    for (t, v, q) in s.iter() {
                        out.push(t, v, q);
                    }
                    out
                })
                .collect();
            if !ctx.send(series).await {
                return;
            }
            total += samples;
            if total >= limit {
                tracing::info!(
                    input = ctx.name(),
                    samples = total,
                    "synthetic input reached total_samples; stopping"
                );
                return;
            }
        }
    }
}
