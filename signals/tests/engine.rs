//! The signal engine against what an operator would check: constant-rate cases
//! worked out by hand, resets, failovers, stalls, noise, and no absurd number
//! whatever comes in.

use ferrule_signals::{Engine, Refused, Signal, Snapshot, StageSample, Trend};
use proptest::prelude::*;

const T0: f64 = 1_700_000_000.0;

fn snap(t: f64, fence: u64, head: u64, position: u64) -> Snapshot {
    Snapshot {
        ts: T0 + t,
        fence,
        stages: vec![StageSample {
            stage: "audit-logger".into(),
            head,
            position,
        }],
    }
}

fn one(e: &mut Engine, s: &Snapshot) -> Signal {
    e.handle(s)
        .unwrap_or_else(|r| panic!("{r}"))
        .pop()
        .unwrap_or_else(|| panic!("no signal"))
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-6)
}

#[test]
fn falling_behind_at_constant_rates_grows_a_fifth_of_a_second_each_second() {
    let mut e = Engine::default();
    let mut at = Vec::new();
    for t in 0..=70u64 {
        at.push(one(&mut e, &snap(t as f64, 1, 1000 * t, 800 * t)));
    }
    let s = &at[60];
    assert_eq!(s.backlog, 12_000);
    assert!(close(s.delay_s, 12.0), "{s:?}");
    assert_eq!(s.eta_s, None, "no ETA while falling behind");
    assert!(s
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("not draining")));
    assert_eq!(s.trend, Trend::FallingBehind);
    assert!(s.text.contains("12 s behind"), "{}", s.text);
    assert!(s.text.contains("falling further behind"), "{}", s.text);
    for t in 61..=70 {
        let grew = at[t].delay_s.unwrap_or(0.0) - at[t - 1].delay_s.unwrap_or(0.0);
        assert!((grew - 0.2).abs() < 1e-6, "t={t}: grew {grew}");
    }
}

#[test]
fn catching_up_gives_the_eta_and_a_minute_later_half_of_it() {
    let mut e = Engine::default();
    // 1000/s arrive from t=0; nothing is consumed until t=70, then 1500/s.
    let position = |t: u64| 1500 * t.saturating_sub(70);
    let mut at = Vec::new();
    for t in 0..=150u64 {
        at.push(one(&mut e, &snap(t as f64, 1, 1000 * t, position(t))));
    }
    let s = &at[90];
    assert_eq!(s.backlog, 60_000);
    assert!(close(s.eta_s, 120.0), "{s:?}");
    assert!(close(s.delay_s, 60.0), "{s:?}");
    assert_eq!(s.trend, Trend::CatchingUp);
    assert_eq!(
        s.text,
        "audit-logger is 1 min behind, catching up, about 2 min to go."
    );
    let s = &at[150];
    assert_eq!(s.backlog, 30_000);
    assert!(close(s.delay_s, 30.0), "{s:?}");
    assert!(close(s.eta_s, 60.0), "{s:?}");
    assert_eq!(s.reason, None);
    // Before consuming started it was stalled, with no ETA and a reason.
    let s = &at[60];
    assert_eq!(s.trend, Trend::Stalled);
    assert_eq!(s.eta_s, None);
    assert!(s
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("nothing consumed")));
}

#[test]
fn idle_and_caught_up_are_zeros_never_nan() {
    let mut e = Engine::default();
    let mut last = None;
    for t in 0..20u64 {
        last = Some(one(&mut e, &snap(t as f64, 1, 5000, 5000)));
    }
    let s = last.take().unwrap_or_else(|| panic!("no signal"));
    assert_eq!(s.trend, Trend::Idle);
    assert_eq!((s.backlog, s.delay_s, s.eta_s), (0, Some(0.0), Some(0.0)));
    assert_eq!(s.reason, None);
    let json = serde_json::to_string(&s).unwrap_or_default();
    assert!(
        json.contains(r#""delay_s":0.0,"eta_s":0.0"#) && !json.contains("NaN"),
        "{json}"
    );
    // Flowing with no backlog: keeping up.
    for t in 20..30u64 {
        last = Some(one(
            &mut e,
            &snap(t as f64, 1, 5000 + 100 * (t - 19), 5000 + 100 * (t - 19)),
        ));
    }
    let s = last.unwrap_or_else(|| panic!("no signal"));
    assert_eq!(s.trend, Trend::Stable);
    assert_eq!(s.text, "audit-logger is keeping up.");
}

#[test]
fn rates_survive_a_counter_reset_and_a_sampler_failover_with_a_gap() {
    let mut e = Engine::default();
    // 1000/s in, 800/s out; at t=40 the stage restarts its counters from 0.
    let mut base = (0u64, 0u64);
    let mut s = None;
    for t in 0..=40u64 {
        base = (1000 * t, 800 * t);
        s = Some(one(&mut e, &snap(t as f64, 1, base.0, base.1)));
    }
    let _ = base;
    for t in 41..=60u64 {
        let k = t - 40;
        s = Some(one(&mut e, &snap(t as f64, 1, 1000 * k, 800 * k)));
    }
    let sig = s.unwrap_or_else(|| panic!("no signal"));
    assert_eq!(sig.trend, Trend::FallingBehind, "{sig:?}");
    // The sampler dies; a new one (fence 2) resumes 4 s later.
    let sig = one(&mut e, &snap(64.0, 2, 24_000, 19_200));
    assert_eq!(sig.trend, Trend::FallingBehind, "{sig:?}");
    // Seconds behind from the counters since the reset: 4.8 s.
    assert!(close(sig.delay_s, 4.8), "{sig:?}");
    // The old sampler, resumed, is refused.
    assert_eq!(
        e.handle(&snap(65.0, 1, 25_000, 20_000)),
        Err(Refused::StaleFence {
            fence: 1,
            newest: 2
        })
    );
}

#[test]
fn a_backlog_older_than_the_history_is_unknown_with_a_reason_not_invented() {
    let mut e = Engine::default();
    // First seen with a million items waiting.
    let mut s = None;
    for t in 0..5u64 {
        s = Some(one(&mut e, &snap(t as f64, 1, 1_000_000 + 10 * t, 10 * t)));
    }
    let s = s.unwrap_or_else(|| panic!("no signal"));
    assert_eq!(s.delay_s, None, "{s:?}");
    assert!(s.reason.is_some());
    assert!(s.text.contains("1 000 000 items waiting"), "{}", s.text);
}

#[test]
fn noise_around_a_balance_does_not_flap_the_trend() {
    let mut e = Engine::default();
    let (mut head, mut position) = (200_000u64, 100_000u64);
    let mut changes = 0;
    let mut last: Option<Trend> = None;
    // Consumption wobbles ±10 % a second around production (deterministic).
    for t in 0..600u64 {
        head += 1000;
        position += if t % 2 == 0 { 1100 } else { 900 };
        if t % 7 == 0 {
            position -= 50;
        }
        let s = one(&mut e, &snap(t as f64, 1, head, position));
        if last.is_some_and(|l| l != s.trend) {
            changes += 1;
        }
        last = Some(s.trend);
    }
    assert!(changes <= 2, "{changes} trend changes in 10 min of noise");
}

#[test]
fn a_clock_stepping_back_is_reported_from_what_was_known() {
    let mut e = Engine::default();
    for t in 0..20u64 {
        one(&mut e, &snap(t as f64, 1, 1000 * t, 800 * t));
    }
    let s = one(&mut e, &snap(5.0, 1, 19_500, 15_600));
    assert_eq!(s.backlog, 3_900);
    assert!(s.delay_s.is_some_and(|d| d.is_finite() && d >= 0.0));
    let s = one(&mut e, &snap(20.0, 1, 20_000, 16_000));
    assert!(close(s.delay_s, 4.0), "{s:?}");
}

#[test]
fn bad_snapshots_are_refused_with_a_reason() {
    let mut e = Engine::default();
    let mut s = snap(0.0, 1, 1, 1);
    s.ts = f64::NAN;
    assert!(matches!(e.handle(&s), Err(Refused::Invalid(_))));
    let mut s = snap(0.0, 1, 1, 1);
    s.stages.push(s.stages[0].clone());
    assert!(matches!(e.handle(&s), Err(Refused::Invalid(_))));
    let mut s = snap(0.0, 1, 1, 1);
    s.stages[0].stage.clear();
    assert!(matches!(e.handle(&s), Err(Refused::Invalid(_))));
}

#[test]
fn replay_writes_the_live_signals_byte_for_byte() {
    let mut input = String::new();
    let mut live = String::new();
    let mut e = Engine::default();
    for t in 0..120u64 {
        let s = Snapshot {
            ts: T0 + t as f64 * 0.5,
            fence: 1 + t / 60,
            stages: vec![
                StageSample {
                    stage: "kafka:audit".into(),
                    head: 1000 * t,
                    position: 700 * t,
                },
                StageSample {
                    stage: "redis:dashboards".into(),
                    head: 1000 * t,
                    position: 1000 * t,
                },
            ],
        };
        input.push_str(&serde_json::to_string(&s).unwrap_or_default());
        input.push('\n');
        for sig in e.handle(&s).unwrap_or_default() {
            live.push_str(&serde_json::to_string(&sig).unwrap_or_default());
            live.push('\n');
        }
    }
    // A stale line in the stored history is skipped, as live.
    input.push_str(r#"{"ts": 1700000100, "fence": 1, "stages": []}"#);
    input.push('\n');
    let mut out = Vec::new();
    let summary =
        ferrule_signals::replay(input.as_bytes(), &mut out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(String::from_utf8(out).unwrap_or_default(), live);
    assert_eq!((summary.signals, summary.stale_fence), (240, 1));
}

#[test]
fn replay_names_the_bad_line() {
    let input = "{\"ts\": 0, \"fence\": 1, \"stages\": []}\n\n{\"ts\": 1, \"fence\": 1}\n";
    let err = ferrule_signals::replay(input.as_bytes(), Vec::new())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.starts_with("input line 3:"), "{err}");
    assert!(err.contains("stages"), "{err}");
}

proptest! {
    /// Whatever the counters and clock do: no NaN, no infinity, no negative
    /// delay or ETA, and the JSON always serializes.
    #[test]
    fn never_an_absurd_number(steps in proptest::collection::vec(
        (-2.0f64..5.0, 0u64..1_000_000, 0u64..1_000_000, any::<bool>()), 1..200)
    ) {
        let mut e = Engine::default();
        let (mut ts, mut head, mut position) = (T0, 0u64, 0u64);
        for (dt, dh, dp, reset) in steps {
            ts += dt;
            if reset { head = dh; position = dp.min(dh); } else { head += dh; position += dp; }
            let sigs = e.handle(&snap(ts - T0, 1, head, position)).unwrap_or_default();
            for s in sigs {
                for v in [s.delay_s, s.eta_s].into_iter().flatten() {
                    prop_assert!(v.is_finite() && v >= 0.0, "{:?}", s);
                }
                prop_assert!(s.delay_s.is_some() || s.reason.is_some());
                prop_assert!(serde_json::to_string(&s).is_ok());
                prop_assert!(!s.text.is_empty());
            }
        }
    }
}

/// Aggregator instance names change on every restart (host, pid, random): a
/// long-lived sampler sees a new stage each time. Stages that stopped
/// appearing are forgotten, so the engine neither refuses every snapshot after
/// `max_stages` restarts nor grows without bound.
#[test]
fn stages_that_stop_appearing_are_forgotten() {
    let mut e = Engine::default();
    // A crash-looping aggregator: a new name every 10 s, for ~14 hours.
    for i in 0..5000u64 {
        let t = i as f64 * 10.0;
        let s = Snapshot {
            ts: T0 + t,
            fence: 1,
            stages: vec![
                StageSample {
                    stage: "aggregator:steady".into(),
                    head: 100 * i,
                    position: 100 * i,
                },
                StageSample {
                    stage: format!("aggregator:restarted-{}", i / 3),
                    head: i % 3,
                    position: i % 3,
                },
            ],
        };
        let out = e
            .handle(&s)
            .unwrap_or_else(|r| panic!("snapshot {i} refused: {r}"));
        assert_eq!(out.len(), 2);
    }
    assert!(e.stages() <= 1024, "{} stages kept", e.stages());
}

/// A snapshot with more stages than `max_stages` all at once is refused, but
/// the next normal one is taken (nothing of it was kept).
#[test]
fn a_flood_of_new_stages_evicts_the_least_recently_seen() {
    let mut e = Engine::new(ferrule_signals::Config {
        max_stages: 4,
        ..Default::default()
    });
    let stage = |n: &str| StageSample {
        stage: n.into(),
        head: 1,
        position: 1,
    };
    for (i, names) in [
        vec!["a", "b"],
        vec!["a", "c"],
        vec!["a", "d"],
        vec!["a", "e"],
        vec!["a", "f", "g"],
    ]
    .iter()
    .enumerate()
    {
        let s = Snapshot {
            ts: T0 + i as f64,
            fence: 1,
            stages: names.iter().map(|n| stage(n)).collect(),
        };
        e.handle(&s).unwrap_or_else(|r| panic!("{i}: {r}"));
        assert!(e.stages() <= 4);
    }
    let too_many = Snapshot {
        ts: T0 + 10.0,
        fence: 1,
        stages: ["p", "q", "r", "s", "t"].iter().map(|n| stage(n)).collect(),
    };
    assert!(matches!(e.handle(&too_many), Err(Refused::Invalid(_))));
    e.handle(&snap(11.0, 1, 1, 1)).unwrap();
}
