//! The alert evaluator: the aggregator's own real-time consumer. It reads every
//! batch this aggregator publishes from an in-process subscription (handed over as
//! the batch arrives, before its durable commit and before any Redis write),
//! feeds the samples to the pure rule engine and hands each transition to the
//! notifiers and to whoever watches in this process (the demo, the benchmark).
//!
//! ```text
//! ingest ──publish──► subscription "alerts" ──► decode ──► Engine ──► Notifiers
//!   (never waits)      bounded, drops oldest      record    pure       (never wait)
//!                                                              └──► watchers (broadcast)
//! ```
//!
//! Time: a sample's timestamp is the agent's clock; the record carries the
//! agent's clock offset, so samples are evaluated on the aggregator's clock, the
//! one `no_data` deadlines are checked against ([`TICK`]).
//!
//! Nothing here blocks ingest: when evaluation falls behind, the subscription
//! loses its oldest batches (counted in
//! `ferrule_aggregator_fanout_lagged_total{consumer="alerts"}`). A record that
//! does not decode is counted and skipped.
//!
//! Counters: `ferrule_aggregator_alert_transitions_total{state}`,
//! `ferrule_aggregator_alert_samples_total`,
//! `ferrule_aggregator_alert_records_undecodable_total`,
//! `ferrule_aggregator_alert_samples_skipped_total{reason}` (the engine's own
//! counts: `out_of_order`, `bad_quality`, `not_finite`, `series_evicted`), and the
//! gauge `ferrule_aggregator_alert_series` (series tracked).

use super::Notifiers;
use crate::fanout::embedded::Subscriber;
use ferrule_rules::{Engine, RuleSet, State, Transition};
use ferrule_telemetry::{Counter, Gauge, Registry};
use ferrule_wire::record::decode_record;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// How often `no_data` deadlines are checked against the clock.
pub const TICK: Duration = Duration::from_millis(250);

/// Transitions kept for a slow watcher before it misses the oldest.
pub const WATCH_CAPACITY: usize = 1024;

/// Most samples a record may hold to be evaluated (a record is at most one wire
/// batch; this only bounds the decode of a damaged one).
const MAX_RECORD_SAMPLES: u64 = 1 << 20;

/// One transition as a watcher sees it, with the times that say how fast it was.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The transition (its `ts_ns` is the sample's time on the aggregator's clock).
    pub transition: Transition,
    /// When the batch that caused it reached the aggregator, ns since the Unix
    /// epoch (0 for a `no_data` transition, which no batch caused).
    pub received_ns: i64,
    /// When the evaluator emitted it, ns since the Unix epoch (handed to the
    /// notifiers at the same moment).
    pub emitted_ns: i64,
}

/// The running evaluator.
pub struct Evaluator {
    task: tokio::task::JoinHandle<()>,
    watch: broadcast::Sender<Arc<Evaluated>>,
}

impl Evaluator {
    /// Starts evaluating `rules` over what `sub` receives, sending transitions to
    /// `notifiers` (when given). Stops when the subscription closes (the
    /// aggregator's publishers are gone), then stops the notifiers.
    /// An agent silent here for `forget_after` is forgotten (its series dropped,
    /// its open alerts no longer resent); `None` never.
    pub fn start(
        sub: Subscriber,
        rules: RuleSet,
        notifiers: Option<Notifiers>,
        forget_after: Option<Duration>,
        registry: &Registry,
    ) -> Self {
        let (watch, _) = broadcast::channel(WATCH_CAPACITY);
        let counters = EvalCounters::new(registry);
        let task = tokio::spawn(run(
            sub,
            Engine::new(rules),
            notifiers,
            Quiet::new(forget_after),
            counters,
            watch.clone(),
        ));
        Self { task, watch }
    }

    /// A receiver of every `firing` and `resolved` transition from now on (a
    /// slow one misses the oldest, never slowing evaluation).
    pub fn watch(&self) -> broadcast::Receiver<Arc<Evaluated>> {
        self.watch.subscribe()
    }

    /// The sender watchers subscribe through (cheap to clone).
    pub fn watcher(&self) -> broadcast::Sender<Arc<Evaluated>> {
        self.watch.clone()
    }

    /// Waits until the evaluator has read what was published and stopped.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

struct EvalCounters {
    transitions: HashMap<&'static str, Counter>,
    samples: Counter,
    undecodable: Counter,
    agents_forgotten: Counter,
    skipped: [(Counter, u64); 4],
    series: Gauge,
}

impl EvalCounters {
    fn new(r: &Registry) -> Self {
        let transitions = ["pending", "firing", "resolved", "inactive"]
            .into_iter()
            .map(|s| {
                (
                    s,
                    r.counter(
                        "ferrule_aggregator_alert_transitions_total",
                        "Alert state changes the evaluator emitted, by state entered",
                        &[("state", s)],
                    ),
                )
            })
            .collect();
        let skip = |reason: &str| {
            (
                r.counter(
                    "ferrule_aggregator_alert_samples_skipped_total",
                    "Samples or evaluations the alert engine skipped, by reason",
                    &[("reason", reason)],
                ),
                0,
            )
        };
        Self {
            transitions,
            samples: r.counter(
                "ferrule_aggregator_alert_samples_total",
                "Samples the alert evaluator handled",
                &[],
            ),
            undecodable: r.counter(
                "ferrule_aggregator_alert_records_undecodable_total",
                "Records the alert evaluator could not decode (skipped)",
                &[],
            ),
            agents_forgotten: r.counter(
                "ferrule_aggregator_alert_agents_forgotten_total",
                "Agents silent here for alerts.forget_agent_after_secs whose series and open alerts were dropped",
                &[],
            ),
            skipped: [
                skip("out_of_order"),
                skip("bad_quality"),
                skip("not_finite"),
                skip("series_evicted"),
            ],
            series: r.gauge(
                "ferrule_aggregator_alert_series",
                "Series (site, agent, sensor) the alert engine tracks",
                &[],
            ),
        }
    }

    /// Publishes the engine's own counts (it keeps totals; counters add deltas).
    fn sync(&mut self, engine: &Engine) {
        let c = engine.counters();
        let now = [
            c.samples_out_of_order,
            c.evaluations_skipped_bad_quality,
            c.evaluations_skipped_not_finite,
            c.series_evicted,
        ];
        for ((counter, seen), n) in self.skipped.iter_mut().zip(now) {
            counter.add(n.saturating_sub(*seen));
            *seen = n;
        }
        self.series
            .set(i64::try_from(engine.tracked_series()).unwrap_or(i64::MAX));
    }
}

fn wall_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Feeds one record's samples to the engine: the batch's arrival time and the
/// samples fed, or why the record does not decode.
fn feed(engine: &mut Engine, record: &[u8]) -> Result<(i64, u64), ferrule_wire::DecodeError> {
    let r = decode_record(record, MAX_RECORD_SAMPLES)?;
    let h = &r.header;
    let mut n = 0u64;
    for (i, series) in r.series.iter().enumerate() {
        // Ingest lists the sensors in series order: the same index first, a
        // search only for a record built otherwise. A series naming a sensor
        // the header does not list is skipped (damage, not data).
        let id = series.sensor();
        let info = match h.sensors.get(i) {
            Some(s) if s.id == id => s,
            _ => match h.sensors.iter().find(|s| s.id == id) {
                Some(s) => s,
                None => continue,
            },
        };
        let offset = h.clock_offset_ns;
        engine.handle_series(
            &h.site,
            &h.agent,
            info.name.as_str(),
            series
                .iter()
                .map(|(ts, v, q)| (ts.saturating_add(offset), v, q)),
        );
        n += series.len() as u64;
    }
    Ok((h.received_ns, n))
}

/// When each agent last sent a batch here, to forget those gone quiet (most
/// likely sending to another aggregator after a failover, which now evaluates
/// and resolves their alerts).
struct Quiet {
    after: Option<Duration>,
    last: HashMap<(Arc<str>, Arc<str>), Instant>,
    next_scan: Instant,
}

impl Quiet {
    fn new(after: Option<Duration>) -> Self {
        Self {
            after,
            last: HashMap::new(),
            next_scan: Instant::now(),
        }
    }

    fn heard(&mut self, site: &Arc<str>, agent: &Arc<str>, now: Instant) {
        if self.after.is_none() {
            return;
        }
        match self.last.get_mut(&(site.clone(), agent.clone())) {
            Some(t) => *t = now,
            None => {
                self.last.insert((site.clone(), agent.clone()), now);
            }
        }
    }

    /// The agents silent for longer than `after`, removed from tracking; scans
    /// at most once a second.
    fn gone(&mut self, now: Instant) -> Vec<(Arc<str>, Arc<str>)> {
        let Some(after) = self.after else {
            return Vec::new();
        };
        if now < self.next_scan {
            return Vec::new();
        }
        self.next_scan = now + Duration::from_secs(1);
        let gone: Vec<_> = self
            .last
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= after)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.last.remove(k);
        }
        gone
    }
}

async fn run(
    mut sub: Subscriber,
    mut engine: Engine,
    notifiers: Option<Notifiers>,
    mut quiet: Quiet,
    mut counters: EvalCounters,
    watch: broadcast::Sender<Arc<Evaluated>>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut undecodable_logged = false;
    loop {
        // Not biased: under a backlog the tick still runs (no_data deadlines,
        // counters), and each record yields to the runtime's budget.
        tokio::task::consume_budget().await;
        let received_ns = tokio::select! {
            e = sub.recv() => match e {
                None => break,
                Some(e) => match feed(&mut engine, &e.record) {
                    Ok((received_ns, n)) => {
                        counters.samples.add(n);
                        quiet.heard(&e.site, &e.agent, Instant::now());
                        received_ns
                    }
                    Err(err) => {
                        counters.undecodable.inc();
                        if !undecodable_logged {
                            undecodable_logged = true;
                            tracing::warn!(site = %e.site, agent = %e.agent, seq = e.seq.0, error = %err, "alert evaluator: a record does not decode; skipped (counted in ferrule_aggregator_alert_records_undecodable_total)");
                        }
                        continue;
                    }
                },
            },
            _ = tick.tick() => {
                engine.handle_tick(wall_ns());
                for (site, agent) in quiet.gone(Instant::now()) {
                    let n = engine.forget_agent(&site, &agent);
                    counters.agents_forgotten.inc();
                    tracing::info!(%site, %agent, series = n, "alerts: agent silent here; its series are forgotten and its open alerts no longer resent (whoever receives it now evaluates them)");
                }
                counters.sync(&engine);
                0
            }
        };
        // Alerts whose series were dropped without a transition (evicted, or
        // their agent forgotten): no resolve will come from here.
        while let Some(fp) = engine.poll_forgotten() {
            if let Some(n) = &notifiers {
                n.forget(fp);
            }
        }
        let mut emitted_ns = 0;
        while let Some(t) = engine.poll_transition() {
            if emitted_ns == 0 {
                emitted_ns = wall_ns();
            }
            if let Some(c) = counters.transitions.get(t.state.as_str()) {
                c.inc();
            }
            if let Some(n) = &notifiers {
                n.send(&t);
            }
            // Firing and resolved are what a person acts on; pending and inactive
            // are the engine's bookkeeping.
            if matches!(t.state, State::Firing | State::Resolved) {
                tracing::info!(
                    target: "ferrule_aggregator::alerts",
                    rule = %t.rule,
                    site = %t.site,
                    agent = %t.agent,
                    sensor = %t.sensor,
                    value = t.value,
                    "alert {}: {}",
                    t.state.as_str(),
                    t.annotation
                );
            } else {
                tracing::debug!(
                    target: "ferrule_aggregator::alerts",
                    rule = %t.rule,
                    site = %t.site,
                    agent = %t.agent,
                    sensor = %t.sensor,
                    "alert {}",
                    t.state.as_str()
                );
            }
            // Watchers get what notifiers act on (a waveform rule goes pending and
            // back every cycle). No watcher is fine: the send only fails when
            // nobody listens.
            if matches!(t.state, State::Firing | State::Resolved) {
                let _ = watch.send(Arc::new(Evaluated {
                    transition: t,
                    received_ns,
                    emitted_ns,
                }));
            }
        }
    }
    counters.sync(&engine);
    if let Some(n) = notifiers {
        n.stop().await;
    }
}
