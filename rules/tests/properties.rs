//! Properties over arbitrary sample sequences: per alert the states follow the
//! lifecycle (so at most one firing between resolves), firings of one alert are at
//! least `clear_for_ms` apart, the engine and the replay are deterministic, and the
//! memory limits hold.
#![allow(clippy::unwrap_used)]

use ferrule_rules::{Engine, Fingerprint, RuleSet, Sample, State, Transition, RATE_WINDOW_POINTS};
use ferrule_wire::Quality;
use proptest::prelude::*;
use std::collections::HashMap;

const MS: i64 = 1_000_000;
const T0: i64 = 1_700_000_000_000_000_000;
const CLEAR_FOR_MS: i64 = 50;

fn rules(max_series: usize) -> RuleSet {
    RuleSet::from_toml(&format!(
        r#"
[limits]
max_series = {max_series}

[[rule]]
name = "under"
kind = "below"
sensors = "*"
threshold = 100.0
clear = 120.0
for_ms = 20
clear_for_ms = {CLEAR_FOR_MS}
severity = "critical"

[[rule]]
name = "over"
kind = "above"
sensors = "s?"
threshold = 200.0
severity = "warning"

[[rule]]
name = "slew"
kind = "rate"
sensors = "*"
window_ms = 100
threshold_per_s = 500.0
clear_per_s = 100.0
clear_for_ms = {CLEAR_FOR_MS}
severity = "info"

[[rule]]
name = "silent"
kind = "no_data"
sensors = "*"
silent_for_ms = 150
severity = "warning"

[[rule]]
name = "quality"
kind = "quality"
quality = "uncertain"
sensors = "*"
for_ms = 10
severity = "info"
"#
    ))
    .unwrap()
}

/// Rules for the `s?` sensors only: the `feed/*` series match none.
fn narrow_rules(max_series: usize) -> RuleSet {
    RuleSet::from_toml(&format!(
        r#"
[limits]
max_series = {max_series}

[[rule]]
name = "under"
kind = "below"
sensors = "s?"
threshold = 100.0
clear = 120.0
for_ms = 20
clear_for_ms = {CLEAR_FOR_MS}
severity = "critical"

[[rule]]
name = "silent"
kind = "no_data"
sensors = "s1"
silent_for_ms = 150
severity = "warning"
"#
    ))
    .unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Sample {
        sensor: usize,
        dt_ms: i64,
        value: f64,
        quality: Quality,
    },
    Tick {
        dt_ms: i64,
    },
}

fn op(sensors: usize) -> impl Strategy<Value = Op> {
    let quality = prop_oneof![6 => Just(Quality::Good), 1 => Just(Quality::Uncertain), 1 => Just(Quality::Bad)];
    prop_oneof![
        8 => (0..sensors, -5i64..60, 0.0f64..300.0, quality)
            .prop_map(|(sensor, dt_ms, value, quality)| Op::Sample { sensor, dt_ms, value, quality }),
        1 => (0i64..400).prop_map(|dt_ms| Op::Tick { dt_ms }),
    ]
}

const NAMES: [&str; 8] = [
    "s0", "s1", "s2", "s3", "feed/va", "feed/vb", "feed/vc", "feed/f",
];

/// Runs `ops`; the clock only moves forward, but a sample may be up to 5 ms older
/// than the clock (out of order for its series).
fn run(engine: &mut Engine, ops: &[Op], mut check: impl FnMut(&Engine)) -> Vec<Transition> {
    let mut now = T0;
    let mut out = Vec::new();
    for op in ops {
        match *op {
            Op::Sample {
                sensor,
                dt_ms,
                value,
                quality,
            } => {
                now += dt_ms.max(0) * MS;
                let ts_ns = now + dt_ms.min(0) * MS;
                engine.handle_sample(&Sample {
                    ts_ns,
                    site: "site",
                    agent: "agent",
                    sensor: NAMES[sensor],
                    value,
                    quality,
                });
            }
            Op::Tick { dt_ms } => {
                now += dt_ms * MS;
                engine.handle_tick(now);
            }
        }
        out.extend(std::iter::from_fn(|| engine.poll_transition()));
        check(engine);
    }
    out
}

proptest! {
    // Failures are kept beside this file (the default looks for a lib.rs, which an
    // integration test does not have) and replayed first on every run.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("tests/properties.proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn states_follow_the_lifecycle(ops in prop::collection::vec(op(NAMES.len()), 0..400)) {
        let mut engine = Engine::new(rules(1000));
        let transitions = run(&mut engine, &ops, |_| {});
        // Per alert: the open episode (if any) and its phase.
        let mut open: HashMap<Fingerprint, (State, ferrule_rules::Episode)> = HashMap::new();
        let mut last_firing: HashMap<Fingerprint, i64> = HashMap::new();
        let mut last_ts: HashMap<Fingerprint, i64> = HashMap::new();
        for t in &transitions {
            let fp = t.fingerprint;
            prop_assert_eq!(t.episode.fingerprint, fp);
            prop_assert!(t.episode.started_ns <= t.ts_ns, "{:?}", t);
            if let Some(&prev) = last_ts.get(&fp) {
                prop_assert!(t.ts_ns >= prev, "time went back for {:?}", t);
            }
            last_ts.insert(fp, t.ts_ns);
            let prev = open.get(&fp).copied();
            match (prev.map(|p| p.0), t.state) {
                (None, State::Pending | State::Firing) => {}
                (Some(State::Pending), State::Firing | State::Inactive) => {
                    prop_assert_eq!(prev.map(|p| p.1), Some(t.episode), "one episode from pending on");
                }
                (Some(State::Firing), State::Resolved) => {
                    prop_assert_eq!(prev.map(|p| p.1), Some(t.episode));
                }
                (p, s) => prop_assert!(false, "{:?} after {:?} for {:?}", s, p, t),
            }
            match t.state {
                State::Pending | State::Firing => { open.insert(fp, (t.state, t.episode)); }
                _ => { open.remove(&fp); }
            }
            if t.state == State::Firing && t.rule != "silent" && t.rule != "over" && t.rule != "quality" {
                if let Some(prev) = last_firing.insert(fp, t.ts_ns) {
                    prop_assert!(t.ts_ns - prev >= CLEAR_FOR_MS * MS, "firings {} ns apart: {:?}", t.ts_ns - prev, t);
                }
            }
        }
    }

    #[test]
    fn a_series_run_at_once_is_the_same_as_sample_by_sample(
        ops in prop::collection::vec(op(NAMES.len()), 0..300),
        max in 1usize..10,
    ) {
        // Consecutive samples of one sensor go through handle_series as one run.
        let mut one = Engine::new(rules(max));
        let by_sample = run(&mut one, &ops, |_| {});
        let mut two = Engine::new(rules(max));
        let mut now = T0;
        let mut by_series = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            match ops[i] {
                Op::Tick { dt_ms } => {
                    now += dt_ms * MS;
                    two.handle_tick(now);
                    i += 1;
                }
                Op::Sample { sensor, .. } => {
                    let mut run_of = Vec::new();
                    while let Some(Op::Sample { sensor: s, dt_ms, value, quality }) = ops.get(i).cloned() {
                        if s != sensor {
                            break;
                        }
                        now += dt_ms.max(0) * MS;
                        run_of.push((now + dt_ms.min(0) * MS, value, quality));
                        i += 1;
                    }
                    two.handle_series("site", "agent", NAMES[sensor], run_of);
                }
            }
            by_series.extend(std::iter::from_fn(|| two.poll_transition()));
        }
        prop_assert_eq!(by_sample, by_series);
        prop_assert_eq!(one.counters(), two.counters());
    }

    #[test]
    fn a_run_by_its_times_alone_is_the_same_when_its_values_are_not_needed(
        ops in prop::collection::vec(op(NAMES.len()), 0..300),
        resend in prop::collection::vec(any::<bool>(), 1..20),
        max in 1usize..10,
        narrow in any::<bool>(),
        offset in -1_000_000i64..1_000_000,
    ) {
        // The evaluator asks values_needed before decoding a run's values and,
        // when not, hands handle_times the timestamps alone. Every run goes
        // through handle_series on one engine (equal to sample by sample,
        // above) and that way on the other; some runs come twice (resends).
        // With `narrow` rules some series match no rule at all.
        let rules = if narrow { narrow_rules(max) } else { rules(max) };
        let mut one = Engine::new(rules.clone());
        let mut two = Engine::new(rules);
        let (mut now, mut i, mut k) = (T0, 0, 0);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        while i < ops.len() {
            match ops[i] {
                Op::Tick { dt_ms } => {
                    now += dt_ms * MS;
                    one.handle_tick(now);
                    two.handle_tick(now);
                    i += 1;
                }
                Op::Sample { sensor, .. } => {
                    let mut run_of = Vec::new();
                    while let Some(Op::Sample { sensor: s, dt_ms, value, quality }) = ops.get(i).cloned() {
                        if s != sensor {
                            break;
                        }
                        now += dt_ms.max(0) * MS;
                        run_of.push((now + dt_ms.min(0) * MS, value, quality));
                        i += 1;
                    }
                    let times = if resend[k % resend.len()] { 2 } else { 1 };
                    k += 1;
                    for _ in 0..times {
                        one.handle_series("site", "agent", NAMES[sensor], run_of.clone());
                        let newest = run_of.iter().map(|s| s.0).max().unwrap_or(i64::MIN);
                        if two.values_needed("site", "agent", NAMES[sensor], newest) {
                            two.handle_series("site", "agent", NAMES[sensor], run_of.clone());
                        } else {
                            // Times as a record carries them: the agent's clock, and an offset.
                            let times: Vec<i64> = run_of.iter().map(|s| s.0 - offset).collect();
                            prop_assert!(two.handle_times("site", "agent", NAMES[sensor], &times, offset));
                        }
                    }
                }
            }
            a.extend(std::iter::from_fn(|| one.poll_transition()));
            b.extend(std::iter::from_fn(|| two.poll_transition()));
            prop_assert_eq!(one.tracked_series(), two.tracked_series());
        }
        prop_assert_eq!(a, b);
        prop_assert_eq!(one.counters(), two.counters());
    }

    #[test]
    fn the_engine_is_deterministic(ops in prop::collection::vec(op(NAMES.len()), 0..300)) {
        let a = run(&mut Engine::new(rules(1000)), &ops, |_| {});
        let b = run(&mut Engine::new(rules(1000)), &ops, |_| {});
        prop_assert_eq!(a, b);
    }

    #[test]
    fn memory_stays_bounded(ops in prop::collection::vec(op(NAMES.len()), 0..400), max in 1usize..6) {
        let mut engine = Engine::new(rules(max));
        run(&mut engine, &ops, |e| {
            assert!(e.tracked_series() <= max);
            assert!(e.retained_rate_points() <= e.tracked_series() * (RATE_WINDOW_POINTS + 2));
        });
    }

    #[test]
    fn replay_is_deterministic_and_never_panics(lines in prop::collection::vec(line(), 0..100)) {
        let input = lines.join("\n");
        let rules = rules(4);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let ra = ferrule_rules::replay(&rules, input.as_bytes(), &mut a);
        let rb = ferrule_rules::replay(&rules, input.as_bytes(), &mut b);
        prop_assert_eq!(ra.map_err(|e| e.to_string()), rb.map_err(|e| e.to_string()));
        prop_assert_eq!(a, b);
    }
}

/// Mostly valid sample lines, some broken.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u32..100_000, 0usize..NAMES.len(), -10.0f64..300.0, prop::option::of(prop_oneof![Just("good"), Just("bad"), Just("uncertain")]))
            .prop_map(|(ms, s, v, q)| {
                let q = q.map(|q| format!(r#", "quality": "{q}""#)).unwrap_or_default();
                format!(r#"{{"ts": {}, "sensor": "{}", "site": "x", "value": {v}{q}}}"#, 1.7e9 + f64::from(ms) / 1000.0, NAMES[s])
            }),
        1 => "[ -~]{0,40}",
        1 => Just(r#"{"ts": 1e300, "sensor": "a", "site": "b", "value": 1}"#.to_string()),
    ]
}
