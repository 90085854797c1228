//! The engine: samples and time in, transitions out, like `quinn-proto`. It
//! performs no I/O and reads no clock; every timestamp it uses is one it was given,
//! so the same inputs always give the same transitions (replay is exact, and two
//! aggregators fed the same samples agree).
//!
//! State is kept per series (site, agent, sensor), with one small state machine per
//! rule that matches it. Which rules match is decided once, when a series is first
//! seen. Invariants:
//! - at most `max_series` series are tracked; when a new one arrives at the limit,
//!   the least recently updated eighth is evicted (counted in `series_evicted`), so
//!   eviction costs O(log n) per new series amortized;
//! - a rate window holds at most [`RATE_WINDOW_POINTS`] + 2 points;
//! - per alert (fingerprint) the states go `inactive → pending → firing →
//!   resolved`, where pending may be skipped (`for_ms = 0`) or end in `inactive`
//!   (the breach did not last), and firing always ends in exactly one `resolved`;
//! - a sample older than or as old as the last one of its series is not evaluated
//!   (counted in `samples_out_of_order`): resends after a reconnect cannot reopen or
//!   reorder an episode.

use crate::config::{Condition, Direction, Rule, RuleSet, Severity};
use crate::fingerprint::{fnv, Episode, Fingerprint};
use crate::template::Values;
use ferrule_wire::Quality;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// The most points a rate window keeps beyond its two ends: points closer together
/// than `window / RATE_WINDOW_POINTS` are merged (the newest wins), so the window's
/// memory does not grow with the sampling rate.
pub const RATE_WINDOW_POINTS: usize = 64;

/// One sample, borrowed from wherever the driver decoded it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// When it was taken, ns since the Unix epoch (the agent's clock).
    pub ts_ns: i64,
    /// The site, from the agent's certificate.
    pub site: &'a str,
    /// The agent, from its certificate.
    pub agent: &'a str,
    /// The sensor's name.
    pub sensor: &'a str,
    /// The reading.
    pub value: f64,
    /// The source's verdict on the reading.
    pub quality: Quality,
}

/// The state an alert entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// The condition holds but not yet for `for_ms`.
    Pending,
    /// The condition held long enough: notify (once per episode).
    Firing,
    /// A firing episode is over: the clear condition held for `clear_for_ms`.
    Resolved,
    /// A pending episode ended before it fired; nothing was, or should be, notified.
    Inactive,
}

impl State {
    /// The name as the JSON lines spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
            Self::Inactive => "inactive",
        }
    }
}

/// One change of an alert's state: what a notifier consumes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Transition {
    /// When the change took effect, ns since the Unix epoch: the timestamp of the
    /// sample that caused it, or for `no_data` firing the last sample's plus the
    /// silence (never the time `handle_tick` happened to run). Never before the
    /// episode's start: a `no_data` episode ended by a late-delivered sample taken
    /// before its deadline resolves at its start.
    pub ts_ns: i64,
    /// The rule's name.
    pub rule: String,
    /// The series' site.
    pub site: String,
    /// The series' agent.
    pub agent: String,
    /// The series' sensor.
    pub sensor: String,
    /// The state entered.
    pub state: State,
    /// The value that caused it: the sample's value, for `rate` the rate per second,
    /// for `no_data` firing the last value seen.
    pub value: f64,
    /// Identity of the alert series.
    pub fingerprint: Fingerprint,
    /// Identity of this episode: dedupe notifications on it.
    pub episode: Episode,
    /// From the rule.
    pub severity: Severity,
    /// From the rule.
    pub labels: BTreeMap<String, String>,
    /// The rule's summary, rendered.
    pub annotation: String,
    /// The quality of the sample that caused it (for `no_data` firing, of the last
    /// sample seen).
    pub quality: Quality,
}

/// What the engine did not evaluate, and why; every skip is counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Samples handled.
    pub samples: u64,
    /// Samples not evaluated because their series already had one as new or newer.
    pub samples_out_of_order: u64,
    /// (sample, rule) evaluations skipped because a value rule (above, below, rate)
    /// got a `bad` sample, whose value is a placeholder.
    pub evaluations_skipped_bad_quality: u64,
    /// (sample, rule) evaluations skipped because the value was NaN or infinite.
    pub evaluations_skipped_not_finite: u64,
    /// Series dropped to stay within `max_series`; their open alerts are forgotten
    /// without a transition.
    pub series_evicted: u64,
    /// Transitions emitted.
    pub transitions: u64,
    /// Series dropped by [`Engine::forget_agent`] (an agent that went quiet
    /// here, most likely sending to another aggregator now).
    pub series_forgotten: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Inactive,
    Pending {
        since_ns: i64,
    },
    Firing {
        started_ns: i64,
        clearing_since_ns: Option<i64>,
    },
}

/// Points of one rate window, oldest first. All gaps but the last are at least
/// `window / RATE_WINDOW_POINTS`, and all points lie within the window, which
/// bounds the length.
#[derive(Debug, Clone, Default)]
struct RateWindow {
    points: VecDeque<(i64, f64)>,
}

impl RateWindow {
    /// Adds a point and returns the rate per second over the window, once the
    /// points span at least half of it (before that, a rate over two close,
    /// noisy samples would fire on noise).
    fn push(&mut self, ts_ns: i64, value: f64, window_ns: i64) -> Option<f64> {
        let step = (window_ns / RATE_WINDOW_POINTS as i64).max(1);
        let n = self.points.len();
        let merge = n >= 2 && self.points[n - 1].0.saturating_sub(self.points[n - 2].0) < step;
        if merge {
            self.points.pop_back();
        }
        self.points.push_back((ts_ns, value));
        let start = ts_ns.saturating_sub(window_ns);
        while self.points.front().is_some_and(|p| p.0 < start) {
            self.points.pop_front();
        }
        let (t0, v0) = *self.points.front()?;
        let span = ts_ns.saturating_sub(t0);
        if span <= 0 || span < window_ns / 2 {
            return None;
        }
        Some((value - v0) / (span as f64 / 1e9))
    }
}

#[derive(Debug, Clone)]
struct RuleState {
    rule: usize,
    fingerprint: Fingerprint,
    phase: Phase,
    window: Option<RateWindow>,
}

#[derive(Debug, Clone)]
struct Series {
    site: Box<str>,
    agent: Box<str>,
    sensor: Box<str>,
    last_ts_ns: i64,
    last_value: f64,
    last_quality: Quality,
    states: Vec<RuleState>,
}

impl Series {
    fn is(&self, site: &str, agent: &str, sensor: &str) -> bool {
        &*self.site == site && &*self.agent == agent && &*self.sensor == sensor
    }
}

/// What a sample means for one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Breach,
    /// Neither breach nor clear: between the thresholds (hysteresis), the state holds.
    Band,
    Clear,
    Skip,
}

/// The rule engine for one rules file.
///
/// ```
/// use ferrule_rules::{Engine, RuleSet, Sample, State};
/// let rules = RuleSet::from_toml(r#"
/// [[rule]]
/// name = "undervoltage"
/// kind = "below"
/// sensors = "*/v?"
/// threshold = 207.0
/// clear = 212.0
/// severity = "critical"
/// "#).unwrap();
/// let mut engine = Engine::new(rules);
/// let s = |ts_ns, value| Sample { ts_ns, site: "s7", agent: "rtu-3", sensor: "feed/va",
///                               value, quality: Default::default() };
/// engine.handle_sample(&s(0, 230.0));
/// engine.handle_sample(&s(1, 161.0));
/// assert_eq!(engine.poll_transition().unwrap().state, State::Firing);
/// engine.handle_sample(&s(2, 210.0)); // between the thresholds: still firing
/// assert!(engine.poll_transition().is_none());
/// engine.handle_sample(&s(3, 229.0));
/// assert_eq!(engine.poll_transition().unwrap().state, State::Resolved);
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    rules: RuleSet,
    has_no_data: bool,
    series: HashMap<u64, Vec<Series>>,
    tracked: usize,
    out: VecDeque<Transition>,
    /// Firing alerts whose series were dropped without a transition (evicted or
    /// forgotten): notifiers stop resending them.
    forgotten: VecDeque<Fingerprint>,
    counters: Counters,
}

impl Engine {
    /// An engine with no state.
    pub fn new(rules: RuleSet) -> Self {
        let has_no_data = rules
            .rules
            .iter()
            .any(|r| matches!(r.condition, Condition::NoData { .. }));
        Self {
            rules,
            has_no_data,
            series: HashMap::new(),
            tracked: 0,
            out: VecDeque::new(),
            forgotten: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// The rules it runs.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// What it skipped and dropped so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// How many series it tracks now (at most `max_series`).
    pub fn tracked_series(&self) -> usize {
        self.tracked
    }

    /// How many rate-window points it holds now, over all series (at most
    /// `RATE_WINDOW_POINTS + 2` per rate rule per series).
    pub fn retained_rate_points(&self) -> usize {
        self.series
            .values()
            .flatten()
            .flat_map(|s| &s.states)
            .filter_map(|st| st.window.as_ref())
            .map(|w| w.points.len())
            .sum()
    }

    /// The next alert that was firing when its series was dropped without a
    /// transition (evicted at `max_series`, or by [`Engine::forget_agent`]): no
    /// `resolved` will come for it from here, so a notifier should stop
    /// resending it and let its receiver expire it.
    pub fn poll_forgotten(&mut self) -> Option<Fingerprint> {
        self.forgotten.pop_front()
    }

    /// Drops every series of `agent` at `site` without a transition; their firing
    /// alerts come out of [`Engine::poll_forgotten`]. For an agent that stopped
    /// sending here: after a failover another aggregator evaluates its samples,
    /// and a `resolved` can only come from there. Returns the series dropped.
    pub fn forget_agent(&mut self, site: &str, agent: &str) -> usize {
        let mut n = 0;
        let forgotten = &mut self.forgotten;
        self.series.retain(|_, bucket| {
            bucket.retain(|s| {
                if &*s.site == site && &*s.agent == agent {
                    forgotten.extend(
                        s.states
                            .iter()
                            .filter(|st| matches!(st.phase, Phase::Firing { .. }))
                            .map(|st| st.fingerprint),
                    );
                    n += 1;
                    false
                } else {
                    true
                }
            });
            !bucket.is_empty()
        });
        self.tracked -= n;
        self.counters.series_forgotten += n as u64;
        n
    }

    /// The next transition, if any. Call until `None` after each `handle_*`; the
    /// queue holds at most one transition per (series, rule) per call.
    pub fn poll_transition(&mut self) -> Option<Transition> {
        self.out.pop_front()
    }

    /// Evaluates one sample against every rule matching its series.
    pub fn handle_sample(&mut self, sample: &Sample<'_>) {
        self.counters.samples += 1;
        let key = fnv(&[
            sample.site.as_bytes(),
            sample.agent.as_bytes(),
            sample.sensor.as_bytes(),
        ]);
        let known = self.series.get(&key).and_then(|b| {
            b.iter()
                .position(|s| s.is(sample.site, sample.agent, sample.sensor))
        });
        let idx = match known {
            Some(i) => i,
            None => self.insert(key, sample),
        };
        let Self {
            rules,
            series,
            out,
            counters,
            ..
        } = self;
        // `insert` put the series in this bucket, or `known` found it there.
        let Some(s) = series.get_mut(&key).and_then(|b| b.get_mut(idx)) else {
            return;
        };
        if known.is_some() {
            if sample.ts_ns <= s.last_ts_ns {
                counters.samples_out_of_order += 1;
                return;
            }
            s.last_ts_ns = sample.ts_ns;
            s.last_value = sample.value;
            s.last_quality = sample.quality;
        }
        evaluate(rules, s, out, counters, sample);
    }

    /// Evaluates a run of samples of one series, oldest first: the same as
    /// [`Engine::handle_sample`] for each, with the series looked up once (a
    /// batch carries hundreds of samples per sensor, and the lookup hashes three
    /// names).
    pub fn handle_series(
        &mut self,
        site: &str,
        agent: &str,
        sensor: &str,
        samples: impl IntoIterator<Item = (i64, f64, Quality)>,
    ) {
        let mut samples = samples.into_iter();
        let key = fnv(&[site.as_bytes(), agent.as_bytes(), sensor.as_bytes()]);
        let find = |e: &Self| {
            e.series
                .get(&key)
                .and_then(|b| b.iter().position(|s| s.is(site, agent, sensor)))
        };
        let idx = match find(self) {
            Some(i) => i,
            None => {
                // A new series: the first sample makes it, as handle_sample does.
                let Some((ts_ns, value, quality)) = samples.next() else {
                    return;
                };
                self.handle_sample(&Sample {
                    ts_ns,
                    site,
                    agent,
                    sensor,
                    value,
                    quality,
                });
                match find(self) {
                    Some(i) => i,
                    None => return,
                }
            }
        };
        let Self {
            rules,
            series,
            out,
            counters,
            ..
        } = self;
        let Some(s) = series.get_mut(&key).and_then(|b| b.get_mut(idx)) else {
            return;
        };
        for (ts_ns, value, quality) in samples {
            counters.samples += 1;
            if ts_ns <= s.last_ts_ns {
                counters.samples_out_of_order += 1;
                continue;
            }
            s.last_ts_ns = ts_ns;
            s.last_value = value;
            s.last_quality = quality;
            if s.states.is_empty() {
                continue;
            }
            let sample = Sample {
                ts_ns,
                site,
                agent,
                sensor,
                value,
                quality,
            };
            evaluate(rules, s, out, counters, &sample);
        }
    }

    /// Whether [`Engine::handle_series`] would look at the values of a run of
    /// samples of this series whose newest is `newest_ns`: false when the series
    /// is tracked and either no rule matches it or the run holds nothing newer
    /// than its last sample (a resend). Then [`Engine::handle_times`] does the
    /// same with the timestamps alone, and a driver need not decode the values.
    pub fn values_needed(&self, site: &str, agent: &str, sensor: &str, newest_ns: i64) -> bool {
        match self.find(site, agent, sensor) {
            Some(s) => !s.states.is_empty() && newest_ns > s.last_ts_ns,
            None => true,
        }
    }

    /// A run of samples of one series, oldest first, by their timestamps alone
    /// (each `timestamps_ns[i].saturating_add(offset_ns)`: a record's times are
    /// the agent's clock, and the offset takes them to the engine's): exactly
    /// what [`Engine::handle_series`] does with them, whatever their values,
    /// when [`Engine::values_needed`] says it would not look at those (the
    /// samples are counted, those out of order as such, and a series no rule
    /// matches keeps its newest time). Returns false and does nothing when the
    /// values are needed after all (the series is no longer tracked, or a
    /// sample is newer than its last and a rule matches it): then call
    /// [`Engine::handle_series`].
    pub fn handle_times(
        &mut self,
        site: &str,
        agent: &str,
        sensor: &str,
        timestamps_ns: &[i64],
        offset_ns: i64,
    ) -> bool {
        let key = fnv(&[site.as_bytes(), agent.as_bytes(), sensor.as_bytes()]);
        let Self {
            series, counters, ..
        } = self;
        let Some(s) = series
            .get_mut(&key)
            .and_then(|b| b.iter_mut().find(|s| s.is(site, agent, sensor)))
        else {
            return false;
        };
        if s.states.is_empty() {
            // No rule looks at this series: only its newest time matters (for
            // ordering and eviction), and the counts. Its last value and quality
            // are left as they were: only a rule's transition reads them.
            for t in timestamps_ns.iter().map(|t| t.saturating_add(offset_ns)) {
                counters.samples += 1;
                if t <= s.last_ts_ns {
                    counters.samples_out_of_order += 1;
                } else {
                    s.last_ts_ns = t;
                }
            }
            return true;
        }
        // The offset is added after the maximum: adding saturates, so it keeps
        // the order, and the loop stays a plain maximum.
        if let Some(newest) = timestamps_ns.iter().max() {
            if newest.saturating_add(offset_ns) > s.last_ts_ns {
                return false;
            }
        }
        let n = timestamps_ns.len() as u64;
        counters.samples += n;
        counters.samples_out_of_order += n;
        true
    }

    fn find(&self, site: &str, agent: &str, sensor: &str) -> Option<&Series> {
        let key = fnv(&[site.as_bytes(), agent.as_bytes(), sensor.as_bytes()]);
        self.series
            .get(&key)
            .and_then(|b| b.iter().find(|s| s.is(site, agent, sensor)))
    }

    /// Advances time to `now_ns` (same clock as the samples): fires `no_data`
    /// rules for series silent for their `silent_for_ms`. Transitions come out in
    /// (time, rule, site, agent, sensor) order, whatever the table's order.
    pub fn handle_tick(&mut self, now_ns: i64) {
        if !self.has_no_data {
            return;
        }
        let Self {
            rules,
            series,
            out,
            counters,
            ..
        } = self;
        let mut fired = Vec::new();
        for s in series.values_mut().flatten() {
            for st in &mut s.states {
                let rule = &rules.rules[st.rule];
                let Condition::NoData { silent_ns } = rule.condition else {
                    continue;
                };
                let deadline = s.last_ts_ns.saturating_add(silent_ns);
                if st.phase == Phase::Inactive && now_ns >= deadline {
                    st.phase = Phase::Firing {
                        started_ns: deadline,
                        clearing_since_ns: None,
                    };
                    let at = At {
                        site: &s.site,
                        agent: &s.agent,
                        sensor: &s.sensor,
                        quality: s.last_quality,
                    };
                    let t = transition(
                        rule,
                        at,
                        st.fingerprint,
                        State::Firing,
                        deadline,
                        s.last_value,
                        deadline,
                    );
                    fired.push((st.rule, t));
                }
            }
        }
        fired.sort_by(|(ra, a), (rb, b)| {
            (a.ts_ns, ra, &a.site, &a.agent, &a.sensor)
                .cmp(&(b.ts_ns, rb, &b.site, &b.agent, &b.sensor))
        });
        counters.transitions += fired.len() as u64;
        out.extend(fired.into_iter().map(|(_, t)| t));
    }

    /// Adds a series for `sample` (evicting first if at the limit); returns its
    /// index in the bucket of `key`.
    fn insert(&mut self, key: u64, sample: &Sample<'_>) -> usize {
        if self.tracked >= self.rules.max_series {
            self.evict();
        }
        let states = self
            .rules
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.matches(sample.site, sample.agent, sample.sensor))
            .map(|(i, r)| RuleState {
                rule: i,
                fingerprint: Fingerprint::of(&r.name, sample.site, sample.agent, sample.sensor),
                phase: Phase::Inactive,
                window: matches!(r.condition, Condition::Rate { .. }).then(RateWindow::default),
            })
            .collect();
        // Almost every bucket holds one series (they share a 64-bit hash
        // only by accident): room for one, not Vec's first four.
        let bucket = self
            .series
            .entry(key)
            .or_insert_with(|| Vec::with_capacity(1));
        bucket.push(Series {
            site: sample.site.into(),
            agent: sample.agent.into(),
            sensor: sample.sensor.into(),
            last_ts_ns: sample.ts_ns,
            last_value: sample.value,
            last_quality: sample.quality,
            states,
        });
        self.tracked += 1;
        bucket.len() - 1
    }

    /// Drops the least recently updated eighth of the series (at least one), ties
    /// broken by name so eviction is deterministic.
    fn evict(&mut self) {
        let mut all: Vec<(i64, &str, &str, &str, u64)> = self
            .series
            .iter()
            .flat_map(|(k, b)| {
                b.iter()
                    .map(move |s| (s.last_ts_ns, &*s.site, &*s.agent, &*s.sensor, *k))
            })
            .collect();
        all.sort_unstable();
        let n = (self.rules.max_series / 8).max(1).min(all.len());
        let victims: Vec<(u64, String, String, String)> = all[..n]
            .iter()
            .map(|v| (v.4, v.1.to_owned(), v.2.to_owned(), v.3.to_owned()))
            .collect();
        for (key, site, agent, sensor) in victims {
            if let Some(bucket) = self.series.get_mut(&key) {
                for s in bucket.iter().filter(|s| s.is(&site, &agent, &sensor)) {
                    self.forgotten.extend(
                        s.states
                            .iter()
                            .filter(|st| matches!(st.phase, Phase::Firing { .. }))
                            .map(|st| st.fingerprint),
                    );
                }
                bucket.retain(|s| !s.is(&site, &agent, &sensor));
                if bucket.is_empty() {
                    self.series.remove(&key);
                }
            }
        }
        self.counters.series_evicted += n as u64;
        self.tracked -= n;
    }
}

/// What `sample` means for `rule`, and the value to report with it.
fn verdict(
    rule: &Rule,
    st: &mut RuleState,
    sample: &Sample<'_>,
    counters: &mut Counters,
) -> (Verdict, f64) {
    let v = sample.value;
    let value_rule = matches!(
        rule.condition,
        Condition::Above { .. } | Condition::Below { .. } | Condition::Rate { .. }
    );
    if value_rule {
        if sample.quality == Quality::Bad {
            counters.evaluations_skipped_bad_quality += 1;
            return (Verdict::Skip, v);
        }
        if !v.is_finite() {
            counters.evaluations_skipped_not_finite += 1;
            return (Verdict::Skip, v);
        }
    }
    let levels = |x: f64, breach: bool, clear: bool| {
        let verdict = if breach {
            Verdict::Breach
        } else if clear {
            Verdict::Clear
        } else {
            Verdict::Band
        };
        (verdict, x)
    };
    match rule.condition {
        Condition::Above { threshold, clear } => levels(v, v > threshold, v <= clear),
        Condition::Below { threshold, clear } => levels(v, v < threshold, v >= clear),
        Condition::Rate {
            window_ns,
            threshold_per_s,
            clear_per_s,
            direction,
        } => {
            let Some(rate) =
                st.window
                    .get_or_insert_with(RateWindow::default)
                    .push(sample.ts_ns, v, window_ns)
            else {
                return (Verdict::Skip, v);
            };
            let signed = match direction {
                Direction::Rising => rate,
                Direction::Falling => -rate,
                Direction::Either => rate.abs(),
            };
            levels(rate, signed > threshold_per_s, signed <= clear_per_s)
        }
        // Any sample, whatever its quality, shows the sensor is not silent.
        Condition::NoData { .. } => (Verdict::Clear, v),
        Condition::Quality { at_least } => {
            let bad = (sample.quality as u8) >= (at_least as u8);
            (if bad { Verdict::Breach } else { Verdict::Clear }, v)
        }
    }
}

/// The lifecycle: moves `phase` on `verdict` at `ts` and returns the state to
/// announce with its episode's start, if any. Starting or abandoning the clear
/// timer of a firing alert changes the phase without announcing anything.
fn step(rule: &Rule, phase: &mut Phase, verdict: Verdict, ts: i64) -> Option<(State, i64)> {
    match (*phase, verdict) {
        (_, Verdict::Skip) | (Phase::Inactive, Verdict::Band | Verdict::Clear) => None,
        (Phase::Inactive, Verdict::Breach) if rule.for_ns == 0 => {
            *phase = Phase::Firing {
                started_ns: ts,
                clearing_since_ns: None,
            };
            Some((State::Firing, ts))
        }
        (Phase::Inactive, Verdict::Breach) => {
            *phase = Phase::Pending { since_ns: ts };
            Some((State::Pending, ts))
        }
        (Phase::Pending { since_ns }, Verdict::Breach) => {
            if ts.saturating_sub(since_ns) < rule.for_ns {
                return None;
            }
            *phase = Phase::Firing {
                started_ns: since_ns,
                clearing_since_ns: None,
            };
            Some((State::Firing, since_ns))
        }
        // The breach must hold without a break: anything else ends the pending episode.
        (Phase::Pending { since_ns }, Verdict::Band | Verdict::Clear) => {
            *phase = Phase::Inactive;
            Some((State::Inactive, since_ns))
        }
        (
            Phase::Firing {
                started_ns,
                clearing_since_ns,
            },
            Verdict::Clear,
        ) => {
            let since = clearing_since_ns.unwrap_or(ts);
            if ts.saturating_sub(since) >= rule.clear_for_ns {
                *phase = Phase::Inactive;
                Some((State::Resolved, started_ns))
            } else {
                *phase = Phase::Firing {
                    started_ns,
                    clearing_since_ns: Some(since),
                };
                None
            }
        }
        // Not clear (breach, or between the thresholds): the clear timer restarts.
        (Phase::Firing { started_ns, .. }, Verdict::Breach | Verdict::Band) => {
            *phase = Phase::Firing {
                started_ns,
                clearing_since_ns: None,
            };
            None
        }
    }
}

/// Where a transition happened: the series' names and the quality of the sample.
struct At<'a> {
    site: &'a str,
    agent: &'a str,
    sensor: &'a str,
    quality: Quality,
}

fn transition(
    rule: &Rule,
    at: At<'_>,
    fingerprint: Fingerprint,
    state: State,
    ts_ns: i64,
    value: f64,
    started_ns: i64,
) -> Transition {
    let (threshold, clear) = rule.condition.levels();
    let annotation = rule.summary.render(&Values {
        rule: &rule.name,
        sensor: at.sensor,
        site: at.site,
        agent: at.agent,
        severity: rule.severity,
        state,
        quality: at.quality,
        value,
        threshold,
        clear,
    });
    Transition {
        ts_ns,
        rule: rule.name.clone(),
        site: at.site.to_owned(),
        agent: at.agent.to_owned(),
        sensor: at.sensor.to_owned(),
        state,
        value,
        fingerprint,
        episode: Episode {
            fingerprint,
            started_ns,
        },
        severity: rule.severity,
        labels: rule.labels.clone(),
        annotation,
        quality: at.quality,
    }
}

/// Steps every rule state of series `s` with `sample` (already in order),
/// queueing transitions.
fn evaluate(
    rules: &RuleSet,
    s: &mut Series,
    out: &mut VecDeque<Transition>,
    counters: &mut Counters,
    sample: &Sample<'_>,
) {
    for st in &mut s.states {
        let rule = &rules.rules[st.rule];
        let (verdict, value) = verdict(rule, st, sample, counters);
        if let Some((state, started_ns)) = step(rule, &mut st.phase, verdict, sample.ts_ns) {
            counters.transitions += 1;
            let at = At {
                site: &s.site,
                agent: &s.agent,
                sensor: &s.sensor,
                quality: sample.quality,
            };
            // Only a no_data episode can start after the sample that ends it: a
            // sample taken before the deadline but delivered after a tick passed
            // it. The silence was in delivery; the episode ends where it began,
            // so no alert's time runs backwards.
            let ts = sample.ts_ns.max(started_ns);
            out.push_back(transition(
                rule,
                at,
                st.fingerprint,
                state,
                ts,
                value,
                started_ns,
            ));
        }
    }
}
