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
//! `ferrule_aggregator_alert_samples_undecoded_total` (of those, samples the
//! engine would not look at, handled by their timestamps alone: resends of
//! what it has, or series no rule matches; their values are checked, not
//! decoded),
//! `ferrule_aggregator_alert_records_undecodable_total`,
//! `ferrule_aggregator_alert_samples_skipped_total{reason}` (the engine's own
//! counts: `out_of_order`, `bad_quality`, `not_finite`, `series_evicted`), and the
//! gauge `ferrule_aggregator_alert_series` (series tracked).

use super::Notifiers;
use crate::fanout::embedded::Subscriber;
use ferrule_rules::{Engine, RuleSet, State, Transition};
use ferrule_telemetry::{Buckets, Counter, Gauge, Histogram, Registry};
use ferrule_wire::record::{decode_record_filtered, decode_record_into};
use ferrule_wire::SampleColumns;
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
pub(crate) const MAX_RECORD_SAMPLES: u64 = 1 << 20;

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
    done: Done,
    watch: broadcast::Sender<Arc<Evaluated>>,
}

/// How to wait for the evaluator's end.
enum Done {
    /// It runs on its own thread, which says so when it ends.
    Thread(tokio::sync::oneshot::Receiver<()>),
    /// It runs as a task of the caller's runtime (no thread could be started).
    Task(tokio::task::JoinHandle<()>),
}

impl Evaluator {
    /// Starts evaluating `rules` over what `sub` receives, sending transitions to
    /// `notifiers` (when given). Stops when the subscription closes (the
    /// aggregator's publishers are gone), then stops the notifiers.
    /// An agent silent here for `forget_after` is forgotten (its series dropped,
    /// its open alerts no longer resent); `None` never.
    ///
    /// It runs on its own thread (`ferrule-alerts`, with a runtime of its own),
    /// like the committer: as a task among ingest's on a saturated runtime it
    /// was polled too seldom to keep up however cheap each record was, and its
    /// subscription lost batches. The operating system shares the cores
    /// between threads by the work each has, so it now gets what it needs and
    /// costs ingest exactly that. Must be called within a Tokio runtime.
    pub fn start(
        sub: Subscriber,
        rules: RuleSet,
        notifiers: Option<Notifiers>,
        forget_after: Option<Duration>,
        registry: &Registry,
    ) -> Self {
        let (watch, _) = broadcast::channel(WATCH_CAPACITY);
        let counters = EvalCounters::new(registry);
        let evaluate = run(
            sub,
            Engine::new(rules),
            notifiers,
            Quiet::new(forget_after),
            counters,
            watch.clone(),
        );
        let done = match on_own_thread(evaluate) {
            Ok(done) => Done::Thread(done),
            Err((evaluate, e)) => {
                tracing::warn!(error = %e, "alert evaluator: no thread of its own; it runs among the other tasks and may fall behind at saturation");
                Done::Task(tokio::spawn(evaluate))
            }
        };
        Self { done, watch }
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
        match self.done {
            Done::Thread(done) => {
                let _ = done.await;
            }
            Done::Task(task) => {
                let _ = task.await;
            }
        }
    }
}

/// Runs `evaluate` to its end on a new thread with a single-threaded runtime;
/// the receiver hears when it has ended. Gives `evaluate` back if the thread
/// or its runtime cannot be made.
fn on_own_thread<F>(evaluate: F) -> Result<tokio::sync::oneshot::Receiver<()>, (F, std::io::Error)>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Err((evaluate, e)),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The future moves into the thread only once the thread exists, so a
    // failed spawn can hand it back.
    let slot = Arc::new(std::sync::Mutex::new(Some(evaluate)));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("ferrule-alerts".into())
        .spawn(move || {
            let evaluate = theirs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(evaluate) = evaluate {
                rt.block_on(evaluate);
            }
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => Ok(rx),
        Err(e) => {
            let evaluate = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            match evaluate {
                Some(evaluate) => Err((evaluate, e)),
                // The thread took it: it runs after all.
                None => Ok(rx),
            }
        }
    }
}

struct EvalCounters {
    transitions: HashMap<&'static str, Counter>,
    samples: Counter,
    times_only: Counter,
    undecodable: Counter,
    agents_forgotten: Counter,
    skipped: [(Counter, u64); 4],
    series: Gauge,
    /// From a batch reaching the aggregator to the transition its samples caused
    /// going to the notifiers: how long a page takes on this side.
    latency: Histogram,
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
            times_only: r.counter(
                "ferrule_aggregator_alert_samples_undecoded_total",
                "Samples the alert evaluator handled by their timestamps alone, their values not decoded: resends of samples the engine has, or samples of series no rule matches (also in ferrule_aggregator_alert_samples_total)",
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
            latency: r.histogram(
                "ferrule_aggregator_alert_latency_seconds",
                "From a batch reaching this aggregator to the firing or resolved transition its samples caused being handed to the notifiers, seconds",
                &[],
                Buckets::Latency,
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

/// What [`feed`] did with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fed {
    /// When the batch reached the aggregator.
    received_ns: i64,
    /// Samples handed to the engine.
    samples: u64,
    /// Of those, samples whose values were not decoded: the engine would not
    /// look at them (resends of what it has, or series no rule matches).
    times_only: u64,
}

/// The newest of `ts` on the aggregator's clock (`ts` is not empty).
fn newest(ts: &[i64], offset_ns: i64) -> i64 {
    ts.iter()
        .copied()
        .max()
        .unwrap_or(i64::MIN)
        .saturating_add(offset_ns)
}

/// Feeds one record's samples to the engine, or says why the record does not
/// decode. `columns` is reused from record to record, so decoding allocates
/// nothing per sample; the values of a series the engine would not look at
/// (a resend, or no rule matches it) are checked but not decoded, and it gets
/// their timestamps alone, which the engine handles exactly as the samples.
fn feed(
    engine: &mut Engine,
    record: &[u8],
    columns: &mut SampleColumns,
) -> Result<Fed, ferrule_wire::DecodeError> {
    let h = decode_record_filtered(record, MAX_RECORD_SAMPLES, columns, |h, i, id, ts| {
        // A series naming a sensor the header does not list is skipped below
        // (damage, not data): its values are not needed either.
        h.sensor(i, id).is_some_and(|info| {
            engine.values_needed(
                &h.site,
                &h.agent,
                info.name.as_str(),
                newest(ts, h.clock_offset_ns),
            )
        })
    })?;
    let offset = h.clock_offset_ns;
    let mut fed = Fed {
        received_ns: h.received_ns,
        samples: 0,
        times_only: 0,
    };
    let mut redo = None;
    for (i, series) in columns.series().enumerate() {
        let Some(info) = h.sensor(i, series.sensor()) else {
            continue;
        };
        let sensor = info.name.as_str();
        if !series.has_values() {
            if !engine.handle_times(&h.site, &h.agent, sensor, series.timestamps_ns(), offset) {
                // The engine changed its mind within this record (an earlier
                // series of it made a new series, which evicted this one):
                // decode the record whole again and go on from this series.
                redo = Some(i);
                break;
            }
            fed.times_only += series.len() as u64;
        } else {
            engine.handle_series(
                &h.site,
                &h.agent,
                sensor,
                series
                    .iter()
                    .map(|(ts, v, q)| (ts.saturating_add(offset), v, q)),
            );
        }
        fed.samples += series.len() as u64;
    }
    match redo {
        Some(from) => refeed(engine, record, columns, from, fed),
        None => Ok(fed),
    }
}

/// The rest of [`feed`] from series `from` on, with every value decoded.
fn refeed(
    engine: &mut Engine,
    record: &[u8],
    columns: &mut SampleColumns,
    from: usize,
    mut fed: Fed,
) -> Result<Fed, ferrule_wire::DecodeError> {
    // It decoded a moment ago: the same bytes decode again.
    let h = decode_record_into(record, MAX_RECORD_SAMPLES, columns)?;
    let offset = h.clock_offset_ns;
    for (i, series) in columns.series().enumerate().skip(from) {
        let Some(info) = h.sensor(i, series.sensor()) else {
            continue;
        };
        engine.handle_series(
            &h.site,
            &h.agent,
            info.name.as_str(),
            series
                .iter()
                .map(|(ts, v, q)| (ts.saturating_add(offset), v, q)),
        );
        fed.samples += series.len() as u64;
    }
    Ok(fed)
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
    let mut columns = SampleColumns::default();
    loop {
        // Not biased: under a backlog the tick still runs (no_data deadlines,
        // counters), and each record yields to the runtime's budget.
        tokio::task::consume_budget().await;
        let received_ns = tokio::select! {
            e = sub.recv() => match e {
                None => break,
                Some(e) => match feed(&mut engine, &e.record, &mut columns) {
                    Ok(fed) => {
                        counters.samples.add(fed.samples);
                        counters.times_only.add(fed.times_only);
                        quiet.heard(&e.site, &e.agent, Instant::now());
                        fed.received_ns
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
                if received_ns > 0 {
                    counters
                        .latency
                        .observe(emitted_ns.saturating_sub(received_ns).max(0) as f64 / 1e9);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_wire::record::{encode_record, RecordHeader, SensorInfo};
    use ferrule_wire::{Epoch, Quality, SensorId, SensorKind, SensorName, Seq, Series};

    const T0: i64 = 1_700_000_000_000_000_000;
    const MS: i64 = 1_000_000;

    /// A record of `feed/va` (an undervoltage rule watches it) and `room/t`
    /// (no rule does), `n` samples each from `start_ms`, both at `value`.
    fn record(seq: u64, start_ms: i64, n: i64, value: f64) -> Vec<u8> {
        record_of(&["feed/va", "room/t"], seq, start_ms, n, value)
    }

    fn record_of(names: &[&str], seq: u64, start_ms: i64, n: i64, value: f64) -> Vec<u8> {
        let series: Vec<Series> = (0..names.len() as u32)
            .map(|id| {
                let mut s = Series::new(SensorId(id));
                for i in 0..n {
                    s.push(T0 + (start_ms + i) * MS, value, Quality::Good);
                }
                s
            })
            .collect();
        let header = RecordHeader {
            site: "s".into(),
            agent: "a".into(),
            epoch: Epoch(1),
            seq: Seq(seq),
            clock_offset_ns: 0,
            received_ns: 7,
            samples: (names.len() as i64 * n) as u32,
            sensors: names
                .iter()
                .enumerate()
                .map(|(i, name)| SensorInfo {
                    id: SensorId(i as u32),
                    name: SensorName::new(*name).unwrap_or_else(|e| panic!("{e}")),
                    unit: "V".into(),
                    kind: SensorKind::Gauge,
                })
                .collect(),
        };
        let mut out = Vec::new();
        encode_record(&header, &series, &mut out).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    fn rules(max_series: usize) -> RuleSet {
        RuleSet::from_toml(&format!(
            r#"
[limits]
max_series = {max_series}

[[rule]]
name = "undervoltage"
kind = "below"
sensors = "feed/v?"
threshold = 207.0
severity = "critical"
"#
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A series judged by its times while decoding, then evicted by a new
    /// series earlier in the same record, is fed its values after all: the
    /// same as decoding everything.
    #[test]
    fn a_series_evicted_within_its_record_is_decoded_after_all() {
        let records = [
            record_of(&["room/t"], 1, 0, 5, 20.0),
            record_of(&["feed/va", "room/t"], 2, 5, 5, 150.0),
            record_of(&["room/t", "feed/va"], 3, 10, 5, 150.0),
        ];
        let mut fast = Engine::new(rules(1));
        let mut slow = Engine::new(rules(1));
        let mut columns = SampleColumns::default();
        let (mut a, mut b, mut times_only) = (Vec::new(), Vec::new(), Vec::new());
        for r in &records {
            let f = feed(&mut fast, r, &mut columns).unwrap_or_else(|e| panic!("{e}"));
            times_only.push(f.times_only);
            let whole = ferrule_wire::record::decode_record(r, MAX_RECORD_SAMPLES)
                .unwrap_or_else(|e| panic!("{e}"));
            for (s, info) in whole.series.iter().zip(&whole.header.sensors) {
                slow.handle_series("s", "a", info.name.as_str(), s.iter());
            }
            a.extend(std::iter::from_fn(|| fast.poll_transition()));
            b.extend(std::iter::from_fn(|| slow.poll_transition()));
        }
        assert_eq!(a, b);
        assert_eq!(fast.counters(), slow.counters());
        // The second record's room/t was judged by its times while decoding,
        // then evicted by feed/va (and, fed its values, evicted feed/va); the
        // third's was still tracked at its turn.
        assert_eq!(times_only, [0, 0, 5]);
        assert_eq!(fast.counters().series_evicted, 3);
        assert_eq!(a.len(), 2, "feed/va fired twice, as a new series each time");
    }

    /// The values of a series no rule matches, and of a resend, are not
    /// decoded, yet every sample is counted and a matching series still fires.
    #[test]
    fn unwatched_series_and_resends_go_by_their_times_and_a_watched_one_still_fires() {
        let mut engine = Engine::new(rules(100));
        let mut columns = SampleColumns::default();
        let fed = |engine: &mut Engine, columns: &mut SampleColumns, r: &[u8]| {
            feed(engine, r, columns).unwrap_or_else(|e| panic!("{e}"))
        };
        // New series: both decoded (the engine learns which rules match).
        let f = fed(&mut engine, &mut columns, &record(1, 0, 10, 230.0));
        assert_eq!((f.received_ns, f.samples, f.times_only), (7, 20, 0));
        assert!(engine.poll_transition().is_none());
        // A sag: the watched series is decoded and fires; the unwatched one
        // goes by its times.
        let sag = record(2, 10, 10, 150.0);
        let f = fed(&mut engine, &mut columns, &sag);
        assert_eq!((f.samples, f.times_only), (20, 10));
        let t = engine
            .poll_transition()
            .unwrap_or_else(|| panic!("no firing"));
        assert_eq!(
            (t.state, &*t.sensor, t.value),
            (State::Firing, "feed/va", 150.0)
        );
        assert_eq!(t.ts_ns, T0 + 10 * MS);
        assert!(engine.poll_transition().is_none());
        // A resend of it: nothing decoded, nothing evaluated, all counted.
        let f = fed(&mut engine, &mut columns, &sag);
        assert_eq!((f.samples, f.times_only), (20, 20));
        assert!(engine.poll_transition().is_none());
        let c = engine.counters();
        assert_eq!((c.samples, c.samples_out_of_order), (60, 20));
        // Recovery resolves: decoded again as soon as it is new.
        let f = fed(&mut engine, &mut columns, &record(3, 20, 10, 230.0));
        assert_eq!((f.samples, f.times_only), (20, 10));
        assert_eq!(
            engine.poll_transition().map(|t| t.state),
            Some(State::Resolved)
        );
        // A record that does not decode is refused whole, as before.
        let mut bad = record(4, 30, 10, 150.0);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        bad.push(0);
        assert!(feed(&mut engine, &bad, &mut columns).is_err());
        assert_eq!(engine.counters().samples, 80);
    }
}
