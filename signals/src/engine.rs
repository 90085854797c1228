//! The signal engine: snapshots in, one [`Signal`] per stage out. Pure and
//! deterministic: no clock (every time is the snapshot's), no I/O, no
//! randomness, so the live sampler and `signals replay` over its stored
//! history produce the same bytes.
//!
//! Per stage it keeps two bounded histories of the stage's cumulative
//! counters: the raw `(ts, head)` table that maps an offset to the time it was
//! appended (seconds behind), and reset-adjusted totals for rates (a counter
//! that goes backwards restarted from zero, as Prometheus reads counters).
//!
//! - **backlog** = head − position (never below 0: a position read after the
//!   head may run ahead of it).
//! - **seconds behind** = the snapshot's time minus the time the head passed
//!   the position (the oldest unconsumed item was appended then), by linear
//!   interpolation in the table; a little extrapolation before its start, never
//!   far ([`Config::max_extrapolation`]); unknown (with a reason) otherwise.
//! - **rates** over the last [`Config::rate_window_s`] seconds of measured
//!   time, **ETA** = backlog / (consume − produce), only while draining.
//! - **trend**: `falling_behind`, `catching_up`, `stable`, `stalled` or
//!   `idle`, from the net rate relative to the flow, with hysteresis (enter at
//!   [`Config::enter_ratio`], leave at [`Config::exit_ratio`]) and a change
//!   only after [`Config::confirm`] snapshots agree, so it does not flap.
//! - A value that cannot be known is `None` with a [`Signal::reason`], never
//!   NaN, infinity or an absurd number.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// One snapshot of the pipeline, as the sampler takes it every period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was read, Unix seconds (one clock for every stage: the
    /// sampler's Redis `TIME`).
    pub ts: f64,
    /// The sampler's fencing token; snapshots with an older one are refused.
    pub fence: u64,
    /// Every stage read.
    pub stages: Vec<StageSample>,
}

/// One stage's cumulative counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSample {
    /// The stage's name (`kafka:audit-logger`, `agents`, ...).
    pub stage: String,
    /// Items appended so far.
    pub head: u64,
    /// Items consumed so far.
    pub position: u64,
}

/// Where a stage is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    /// More arrives than is consumed: the delay grows.
    FallingBehind,
    /// More is consumed than arrives: the backlog shrinks.
    CatchingUp,
    /// Consumed as fast as it arrives (with or without a backlog).
    Stable,
    /// A backlog, and nothing consumed for a while.
    Stalled,
    /// Nothing arrives, nothing waits.
    Idle,
}

impl Trend {
    /// The name in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FallingBehind => "falling_behind",
            Self::CatchingUp => "catching_up",
            Self::Stable => "stable",
            Self::Stalled => "stalled",
            Self::Idle => "idle",
        }
    }
}

/// What the engine says about one stage at one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// The snapshot's time, Unix seconds.
    pub ts: f64,
    /// The stage.
    pub stage: String,
    /// Items waiting.
    pub backlog: u64,
    /// Seconds behind: the age of the oldest item waiting; `None` when it
    /// cannot be known ([`Self::reason`]).
    pub delay_s: Option<f64>,
    /// Seconds until the backlog is gone at today's rates; `None` unless
    /// draining (or 0 with no backlog).
    pub eta_s: Option<f64>,
    /// Where it is going.
    pub trend: Trend,
    /// Why `delay_s` or `eta_s` is `None`.
    pub reason: Option<String>,
    /// One plain sentence for a person.
    pub text: String,
}

/// Why a snapshot was not taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// From a sampler older than one already heard (a paused sampler that
    /// resumed after losing its lease).
    #[error("fence {fence} is older than {newest}, the newest seen")]
    StaleFence {
        /// The snapshot's fence.
        fence: u64,
        /// The newest fence seen.
        newest: u64,
    },
    /// Not a usable snapshot.
    #[error("{0}")]
    Invalid(String),
}

/// The engine's knobs; [`Config::default`] is what the sampler uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Rates are measured over this much of the newest history, seconds.
    pub rate_window_s: f64,
    /// How much offset-to-time history each stage keeps, seconds.
    pub history_s: f64,
    /// At most this many points per stage (older ones thinned).
    pub max_points: usize,
    /// At most this many stages: when a snapshot brings new ones past it, the
    /// stages seen least recently (and absent from it) are forgotten; a
    /// snapshot with more than this many stages of its own is refused.
    pub max_stages: usize,
    /// A stage absent from the snapshots for this long is forgotten (its
    /// history starts over if it comes back), seconds. Stages come and go:
    /// an aggregator's name is new after every restart.
    pub forget_after_s: f64,
    /// A backlog with no progress for this long is `stalled`, seconds.
    pub stall_after_s: f64,
    /// The net rate, as a share of the flow, that enters `falling_behind` or
    /// `catching_up`.
    pub enter_ratio: f64,
    /// The share below which it leaves them.
    pub exit_ratio: f64,
    /// Snapshots in a row a new trend must hold before it is reported.
    pub confirm: u32,
    /// Seconds behind may be extrapolated before the table's start by at most
    /// this share of the table's span.
    pub max_extrapolation: f64,
    /// An ETA beyond this many seconds is reported as unknown.
    pub max_eta_s: f64,
    /// Rates below this many items a second count as zero.
    pub min_rate: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rate_window_s: 10.0,
            history_s: 6.0 * 3600.0,
            max_points: 8192,
            max_stages: 1024,
            forget_after_s: 3600.0,
            stall_after_s: 10.0,
            enter_ratio: 0.05,
            exit_ratio: 0.02,
            confirm: 3,
            max_extrapolation: 0.1,
            max_eta_s: 7.0 * 86_400.0,
            min_rate: 1e-3,
        }
    }
}

/// Longest stage name accepted, bytes.
pub const MAX_STAGE_NAME: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Point {
    ts: f64,
    head: u64,
}

#[derive(Debug, Clone, Copy)]
struct Totals {
    ts: f64,
    head: f64,
    position: f64,
}

#[derive(Debug, Clone)]
struct Stage {
    /// Raw (ts, head), heads non-decreasing: the offset-to-time table.
    table: VecDeque<Point>,
    /// Reset-adjusted totals, for rates.
    totals: VecDeque<Totals>,
    last_head: u64,
    last_position: u64,
    last_ts: f64,
    adj_head: f64,
    adj_position: f64,
    /// When the position last moved (or the stage was first seen).
    progress_ts: f64,
    trend: Option<Trend>,
    candidate: Option<(Trend, u32)>,
    /// The newest snapshot time it was in.
    seen_ts: f64,
}

/// The engine: feed it snapshots in order with [`Engine::handle`].
#[derive(Debug, Clone, Default)]
pub struct Engine {
    cfg: Config,
    stages: BTreeMap<String, Stage>,
    newest_fence: Option<u64>,
}

impl Engine {
    /// An engine with `cfg`.
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            stages: BTreeMap::new(),
            newest_fence: None,
        }
    }

    /// How many stages the engine keeps history for.
    pub fn stages(&self) -> usize {
        self.stages.len()
    }

    /// The newest fence taken.
    pub fn newest_fence(&self) -> Option<u64> {
        self.newest_fence
    }

    /// Takes one snapshot and returns a signal per stage in it, in its order.
    /// A stage missing from a snapshot keeps its history; a stage whose time
    /// did not move forward (a clock stepped back) is reported from what was
    /// known, its sample not taken.
    pub fn handle(&mut self, snap: &Snapshot) -> Result<Vec<Signal>, Refused> {
        if let Some(newest) = self.newest_fence {
            if snap.fence < newest {
                return Err(Refused::StaleFence {
                    fence: snap.fence,
                    newest,
                });
            }
        }
        if !snap.ts.is_finite() || snap.ts < 0.0 {
            return Err(Refused::Invalid(format!(
                "ts {} is not a Unix time",
                snap.ts
            )));
        }
        for (i, s) in snap.stages.iter().enumerate() {
            if s.stage.is_empty() || s.stage.len() > MAX_STAGE_NAME {
                return Err(Refused::Invalid(format!(
                    "stage name must be 1 to {MAX_STAGE_NAME} bytes"
                )));
            }
            if snap.stages[..i].iter().any(|o| o.stage == s.stage) {
                return Err(Refused::Invalid(format!("stage {:?} twice", s.stage)));
            }
        }
        if snap.stages.len() > self.cfg.max_stages {
            return Err(Refused::Invalid(format!(
                "more than {} stages",
                self.cfg.max_stages
            )));
        }
        self.forget(snap);
        self.newest_fence = Some(snap.fence);
        let cfg = self.cfg.clone();
        Ok(snap
            .stages
            .iter()
            .map(|s| {
                let stage = self
                    .stages
                    .entry(s.stage.clone())
                    .or_insert_with(|| Stage::new(snap.ts, s));
                stage.seen_ts = stage.seen_ts.max(snap.ts);
                stage.take(&cfg, snap.ts, s);
                stage.signal(&cfg, snap.ts, s)
            })
            .collect())
    }
}

impl Engine {
    /// Forgets stages absent from `snap` for longer than `forget_after_s`,
    /// then, if its new stages would pass `max_stages`, the absent ones seen
    /// least recently (by time, then name: deterministic for replay). The
    /// caller checked that `snap` alone fits.
    fn forget(&mut self, snap: &Snapshot) {
        let present = |name: &str| snap.stages.iter().any(|s| s.stage == name);
        let keep_for = self.cfg.forget_after_s;
        self.stages
            .retain(|name, st| snap.ts - st.seen_ts <= keep_for || present(name));
        let new = snap
            .stages
            .iter()
            .filter(|s| !self.stages.contains_key(&s.stage))
            .count();
        let over = (self.stages.len() + new).saturating_sub(self.cfg.max_stages);
        if over == 0 {
            return;
        }
        let mut absent: Vec<(f64, String)> = self
            .stages
            .iter()
            .filter(|(name, _)| !present(name))
            .map(|(name, st)| (st.seen_ts, name.clone()))
            .collect();
        absent.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (_, name) in absent.into_iter().take(over) {
            self.stages.remove(&name);
        }
    }
}

impl Stage {
    fn new(ts: f64, s: &StageSample) -> Self {
        Self {
            table: VecDeque::new(),
            totals: VecDeque::new(),
            last_head: s.head,
            last_position: s.position,
            last_ts: f64::NEG_INFINITY,
            adj_head: 0.0,
            adj_position: 0.0,
            progress_ts: ts,
            trend: None,
            candidate: None,
            seen_ts: ts,
        }
    }

    /// Adds the sample to the histories (not if time did not move forward).
    fn take(&mut self, cfg: &Config, ts: f64, s: &StageSample) {
        if ts <= self.last_ts {
            return;
        }
        let first = self.last_ts == f64::NEG_INFINITY;
        if !first {
            // A counter that went backwards restarted from zero.
            let dh = if s.head >= self.last_head {
                s.head - self.last_head
            } else {
                s.head
            };
            let dp = if s.position >= self.last_position {
                s.position - self.last_position
            } else {
                s.position
            };
            if s.head < self.last_head {
                // Offsets before the reset mean nothing now.
                self.table.clear();
            }
            if dp > 0 {
                self.progress_ts = ts;
            }
            self.adj_head += dh as f64;
            self.adj_position += dp as f64;
        }
        self.last_head = s.head;
        self.last_position = s.position;
        self.last_ts = ts;
        self.table.push_back(Point { ts, head: s.head });
        self.totals.push_back(Totals {
            ts,
            head: self.adj_head,
            position: self.adj_position,
        });
        // Bounded: old points go by age, then the table is thinned (every
        // other point of its older half) rather than cut.
        while self
            .table
            .front()
            .is_some_and(|p| ts - p.ts > cfg.history_s)
            && self.table.len() > 2
        {
            self.table.pop_front();
        }
        if self.table.len() > cfg.max_points.max(4) {
            let half = self.table.len() / 2;
            let mut kept = VecDeque::with_capacity(self.table.len());
            for (i, p) in self.table.iter().enumerate() {
                if i >= half || i % 2 == 0 {
                    kept.push_back(*p);
                }
            }
            self.table = kept;
        }
        // Rates need the window and one point before it.
        while self.totals.len() > 2
            && self
                .totals
                .get(1)
                .is_some_and(|t| ts - t.ts >= cfg.rate_window_s)
        {
            self.totals.pop_front();
        }
        if self.totals.len() > cfg.max_points.max(4) {
            self.totals.pop_front();
        }
    }

    /// Produce and consume rates, items a second, over the rate window.
    fn rates(&self) -> Option<(f64, f64)> {
        let last = self.totals.back()?;
        let first = self.totals.front()?;
        let dt = last.ts - first.ts;
        if dt <= 0.0 {
            return None;
        }
        Some((
            (last.head - first.head) / dt,
            (last.position - first.position) / dt,
        ))
    }

    /// When the head passed `position`, by the table.
    fn appended_at(&self, cfg: &Config, position: u64) -> Result<f64, String> {
        let (Some(first), Some(last)) = (self.table.front(), self.table.back()) else {
            return Err("no history yet".into());
        };
        if position >= last.head {
            return Ok(last.ts);
        }
        let i = self.table.partition_point(|p| p.head <= position);
        if i == 0 {
            // Older than the table: a little extrapolation, never far.
            let span = last.ts - first.ts;
            let rate = self.table.get(1).and_then(|second| {
                let dt = second.ts - first.ts;
                (dt > 0.0 && second.head > first.head)
                    .then(|| (second.head - first.head) as f64 / dt)
            });
            return match rate {
                Some(r) => {
                    let back = (first.head - position) as f64 / r;
                    if back <= span * cfg.max_extrapolation {
                        Ok(first.ts - back)
                    } else {
                        Err(format!(
                            "the oldest item waiting is older than the {} of history kept",
                            crate::text::duration(span)
                        ))
                    }
                }
                None => Err("history too short".into()),
            };
        }
        let (a, b) = (self.table[i - 1], self.table[i]);
        // a.head <= position < b.head, so b.head > a.head.
        let frac = (position - a.head) as f64 / (b.head - a.head) as f64;
        Ok(a.ts + frac * (b.ts - a.ts))
    }

    fn signal(&mut self, cfg: &Config, ts: f64, s: &StageSample) -> Signal {
        let backlog = s.head.saturating_sub(s.position);
        let rates = self.rates().filter(|_| self.totals.len() >= 2);
        let mut reason: Option<String> = None;
        let delay_s = if backlog == 0 {
            Some(0.0)
        } else {
            match self.appended_at(cfg, s.position) {
                Ok(t) => Some(round_ms((ts - t).max(0.0))),
                Err(why) => {
                    reason = Some(why);
                    None
                }
            }
        };
        let stalled_for = ts - self.progress_ts;
        let raw = match rates {
            None => {
                if backlog == 0 {
                    Trend::Idle
                } else {
                    Trend::Stable
                }
            }
            Some((produce, consume)) => {
                let produce = if produce < cfg.min_rate { 0.0 } else { produce };
                let consume = if consume < cfg.min_rate { 0.0 } else { consume };
                if backlog > 0 && consume == 0.0 && stalled_for >= cfg.stall_after_s {
                    Trend::Stalled
                } else if backlog == 0 && produce == 0.0 && consume == 0.0 {
                    Trend::Idle
                } else if backlog == 0 {
                    Trend::Stable
                } else {
                    let net = produce - consume;
                    let flow = produce.max(consume);
                    let held = |t: Trend| self.trend == Some(t);
                    let ratio = |t: Trend| {
                        if held(t) {
                            cfg.exit_ratio
                        } else {
                            cfg.enter_ratio
                        }
                    };
                    if net > ratio(Trend::FallingBehind) * flow {
                        Trend::FallingBehind
                    } else if -net > ratio(Trend::CatchingUp) * flow {
                        Trend::CatchingUp
                    } else {
                        Trend::Stable
                    }
                }
            }
        };
        // Without rates the trend is a guess: reported, not held.
        let trend = if rates.is_some() {
            self.confirm(cfg, raw)
        } else {
            raw
        };
        let eta_s = if backlog == 0 {
            Some(0.0)
        } else {
            match rates {
                None => {
                    reason.get_or_insert_with(|| "rates need two snapshots".into());
                    None
                }
                Some((produce, consume)) => {
                    let drain = consume - produce;
                    if drain > cfg.min_rate {
                        let eta = backlog as f64 / drain;
                        if eta <= cfg.max_eta_s {
                            Some(round_ms(eta))
                        } else {
                            reason.get_or_insert_with(|| "draining too slowly to estimate".into());
                            None
                        }
                    } else if consume < cfg.min_rate {
                        reason.get_or_insert_with(|| {
                            format!(
                                "nothing consumed for {}",
                                crate::text::duration(stalled_for)
                            )
                        });
                        None
                    } else {
                        reason.get_or_insert_with(|| {
                            "not draining: as much or more arrives than is consumed".into()
                        });
                        None
                    }
                }
            }
        };
        let mut signal = Signal {
            ts,
            stage: s.stage.clone(),
            backlog,
            delay_s,
            eta_s,
            trend,
            reason,
            text: String::new(),
        };
        signal.text = crate::text::sentence(&signal, rates, stalled_for);
        signal
    }

    /// The reported trend: a new one only once `confirm` snapshots agree.
    fn confirm(&mut self, cfg: &Config, raw: Trend) -> Trend {
        let Some(current) = self.trend else {
            self.trend = Some(raw);
            return raw;
        };
        if raw == current {
            self.candidate = None;
            return current;
        }
        let seen = match self.candidate {
            Some((t, n)) if t == raw => n + 1,
            _ => 1,
        };
        if seen >= cfg.confirm.max(1) {
            self.trend = Some(raw);
            self.candidate = None;
            raw
        } else {
            self.candidate = Some((raw, seen));
            current
        }
    }
}

/// Rounded to the millisecond: the output is for people and their tools, and
/// stays the same bytes from one run to the next.
fn round_ms(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
