//! The engine, one rule kind at a time, then the lifecycle: hysteresis, for_ms,
//! clear_for_ms, rate windows, no_data through ticks, quality, one firing per
//! episode, episodes equal across two engines, the series limit.
#![allow(clippy::unwrap_used)]

use ferrule_rules::{Engine, Episode, Fingerprint, RuleSet, Sample, State, Transition};
use ferrule_wire::Quality;

const MS: i64 = 1_000_000;
const S: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * S;

fn engine(rule: &str) -> Engine {
    Engine::new(
        RuleSet::from_toml(&format!(
            "[[rule]]\nname = \"r\"\nsensors = \"*\"\nseverity = \"critical\"\n{rule}"
        ))
        .unwrap(),
    )
}

fn sample(ts_ns: i64, value: f64) -> Sample<'static> {
    Sample {
        ts_ns,
        site: "substation-7",
        agent: "rtu-3",
        sensor: "feed/va",
        value,
        quality: Quality::Good,
    }
}

fn drain(e: &mut Engine) -> Vec<Transition> {
    std::iter::from_fn(|| e.poll_transition()).collect()
}

/// Feeds (ms after T0, value) and returns (ms, state) of every transition.
fn run(e: &mut Engine, input: &[(i64, f64)]) -> Vec<(i64, State)> {
    let mut out = Vec::new();
    for &(ms, v) in input {
        e.handle_sample(&sample(T0 + ms * MS, v));
        out.extend(drain(e).into_iter().map(|t| ((t.ts_ns - T0) / MS, t.state)));
    }
    out
}

#[test]
fn below_with_hysteresis() {
    let mut e = engine("kind = \"below\"\nthreshold = 207.0\nclear = 212.0\n");
    let got = run(
        &mut e,
        &[
            (0, 230.0),
            (1, 206.0),
            (2, 209.0),
            (3, 205.0),
            (4, 211.9),
            (5, 212.0),
            (6, 208.0),
            (7, 206.9),
        ],
    );
    // 209 and 211.9 are inside the band: still firing; 212 clears; 208 does not breach.
    assert_eq!(
        got,
        [(1, State::Firing), (5, State::Resolved), (7, State::Firing)]
    );
}

#[test]
fn above_with_hysteresis_and_default_clear() {
    let mut e = engine("kind = \"above\"\nthreshold = 120.0\nclear = 110.0\n");
    let got = run(
        &mut e,
        &[
            (0, 100.0),
            (1, 120.0),
            (2, 120.1),
            (3, 115.0),
            (4, 121.0),
            (5, 110.0),
        ],
    );
    assert_eq!(got, [(2, State::Firing), (5, State::Resolved)]);
    // Without `clear`, the threshold is also the clear level.
    let mut e = engine("kind = \"above\"\nthreshold = 120.0\n");
    let got = run(&mut e, &[(0, 121.0), (1, 120.0), (2, 121.0)]);
    assert_eq!(
        got,
        [(0, State::Firing), (1, State::Resolved), (2, State::Firing)]
    );
}

#[test]
fn for_ms_pends_until_the_breach_held() {
    let mut e = engine("kind = \"below\"\nthreshold = 207.0\nfor_ms = 100\n");
    // A 50 ms dip goes pending and back to inactive, never firing.
    let got = run(&mut e, &[(0, 161.0), (50, 161.0), (60, 230.0)]);
    assert_eq!(got, [(0, State::Pending), (60, State::Inactive)]);
    // A 100 ms dip fires at the first sample 100 ms in; the episode starts at the first.
    let mut e = engine("kind = \"below\"\nthreshold = 207.0\nfor_ms = 100\n");
    e.handle_sample(&sample(T0, 161.0));
    e.handle_sample(&sample(T0 + 99 * MS, 161.0));
    e.handle_sample(&sample(T0 + 100 * MS, 161.0));
    let t = drain(&mut e);
    assert_eq!(
        t.iter().map(|t| t.state).collect::<Vec<_>>(),
        [State::Pending, State::Firing]
    );
    assert_eq!(t[1].ts_ns, T0 + 100 * MS);
    assert_eq!(
        t[1].episode.started_ns, T0,
        "the episode began when the breach did"
    );
    assert_eq!(t[0].episode, t[1].episode);
}

#[test]
fn clear_for_ms_damps_the_resolve() {
    let mut e = engine("kind = \"above\"\nthreshold = 10.0\nclear_for_ms = 1000\n");
    let got = run(
        &mut e,
        &[
            (0, 11.0),
            (100, 5.0),
            (900, 5.0),
            (1000, 11.0),
            (1100, 5.0),
            (2099, 5.0),
            (2100, 5.0),
        ],
    );
    // The breach at 1000 ms restarted the clear timer.
    assert_eq!(got, [(0, State::Firing), (2100, State::Resolved)]);
}

#[test]
fn rate_over_a_window() {
    let rule = "kind = \"rate\"\nwindow_ms = 1000\nthreshold_per_s = 0.5\nclear_per_s = 0.1\ndirection = \"falling\"\n";
    let mut e = engine(rule);
    // 50 Hz steady, sampled every 100 ms, then falling 1 Hz/s, then steady again.
    let mut input: Vec<(i64, f64)> = (0..20).map(|i| (i * 100, 50.0)).collect();
    input.extend((1..=10).map(|i| (2000 + i * 100, 50.0 - 0.1 * i as f64)));
    input.extend((1..=20).map(|i| (3000 + i * 100, 49.0)));
    let got = run(&mut e, &input);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].1, State::Firing);
    assert!((2500..=2800).contains(&got[0].0), "{got:?}");
    assert_eq!(got[1].1, State::Resolved);
    assert!((3500..=4000).contains(&got[1].0), "{got:?}");
    // A rise of the same size does not fire a falling rule.
    let mut e = engine(rule);
    let rise: Vec<(i64, f64)> = (0..40).map(|i| (i * 100, 50.0 + 0.1 * i as f64)).collect();
    assert!(run(&mut e, &rise).is_empty());
}

#[test]
fn rate_value_is_per_second_and_waits_for_half_a_window() {
    let mut e = engine("kind = \"rate\"\nwindow_ms = 1000\nthreshold_per_s = 5.0\n");
    // Two samples 10 ms apart with a jump of 1 would be 100/s: too early to say.
    assert!(run(&mut e, &[(0, 0.0), (10, 1.0)]).is_empty());
    e.handle_sample(&sample(T0 + 600 * MS, 7.0));
    let t = drain(&mut e);
    assert_eq!(t[0].state, State::Firing);
    assert!((t[0].value - 7.0 / 0.6).abs() < 1e-9, "{}", t[0].value);
}

#[test]
fn rate_window_memory_is_bounded() {
    let mut e = engine("kind = \"rate\"\nwindow_ms = 1000\nthreshold_per_s = 1000.0\n");
    for i in 0..100_000 {
        e.handle_sample(&sample(T0 + i * 100_000, (i % 7) as f64)); // 10 kHz
    }
    assert!(
        e.retained_rate_points() <= ferrule_rules::RATE_WINDOW_POINTS + 2,
        "{}",
        e.retained_rate_points()
    );
}

#[test]
fn no_data_fires_on_tick_and_resolves_on_a_sample() {
    let mut e = engine("kind = \"no_data\"\nsilent_for_ms = 5000\n");
    e.handle_sample(&sample(T0, 230.0));
    e.handle_tick(T0 + 4999 * MS);
    assert!(drain(&mut e).is_empty());
    e.handle_tick(T0 + 7000 * MS);
    let t = drain(&mut e);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].state, State::Firing);
    // The transition is timed by the data (last sample + silence), not the tick.
    assert_eq!(t[0].ts_ns, T0 + 5000 * MS);
    assert_eq!(t[0].value, 230.0);
    e.handle_tick(T0 + 60 * S);
    assert!(drain(&mut e).is_empty(), "fires once per silence");
    e.handle_sample(&sample(T0 + 61 * S, 229.0));
    let t = drain(&mut e);
    assert_eq!(
        (t.len(), t[0].state, t[0].ts_ns),
        (1, State::Resolved, T0 + 61 * S)
    );
}

#[test]
fn no_data_tick_order_is_deterministic() {
    let rules = "[[rule]]\nname = \"a\"\nkind = \"no_data\"\nsensors = \"*\"\nsilent_for_ms = 10\nseverity = \"warning\"\n\
                 [[rule]]\nname = \"b\"\nkind = \"no_data\"\nsensors = \"*\"\nsilent_for_ms = 10\nseverity = \"warning\"\n";
    let mut e = Engine::new(RuleSet::from_toml(rules).unwrap());
    for name in ["z", "m", "a", "q"] {
        e.handle_sample(&Sample {
            sensor: name,
            ..sample(T0, 1.0)
        });
    }
    e.handle_sample(&Sample {
        sensor: "early",
        ..sample(T0 - S, 1.0)
    });
    e.handle_tick(T0 + S);
    let got: Vec<(String, String)> = drain(&mut e)
        .into_iter()
        .map(|t| (t.rule, t.sensor))
        .collect();
    let want: Vec<(String, String)> = [
        ("a", "early"),
        ("b", "early"),
        ("a", "a"),
        ("a", "m"),
        ("a", "q"),
        ("a", "z"),
        ("b", "a"),
        ("b", "m"),
        ("b", "q"),
        ("b", "z"),
    ]
    .iter()
    .map(|(r, s)| (r.to_string(), s.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn quality_rule_and_value_rules_skip_bad_samples() {
    let mut e = engine("kind = \"quality\"\nfor_ms = 10\n");
    let q = |ms: i64, quality| Sample {
        quality,
        ..sample(T0 + ms * MS, 0.0)
    };
    let mut states = Vec::new();
    for s in [
        q(0, Quality::Uncertain),
        q(1, Quality::Bad),
        q(11, Quality::Bad),
        q(12, Quality::Good),
    ] {
        e.handle_sample(&s);
        states.extend(drain(&mut e).into_iter().map(|t| (t.state, t.quality)));
    }
    assert_eq!(
        states,
        [
            (State::Pending, Quality::Bad),
            (State::Firing, Quality::Bad),
            (State::Resolved, Quality::Good)
        ]
    );
    let mut e = engine("kind = \"quality\"\nquality = \"uncertain\"\n");
    e.handle_sample(&q(0, Quality::Uncertain));
    assert_eq!(drain(&mut e)[0].state, State::Firing);

    // A bad sample's value is a placeholder: a threshold rule neither fires nor
    // clears on it, and counts the skip.
    let mut e = engine("kind = \"below\"\nthreshold = 207.0\n");
    e.handle_sample(&Sample {
        quality: Quality::Bad,
        ..sample(T0, 0.0)
    });
    assert!(drain(&mut e).is_empty());
    e.handle_sample(&sample(T0 + 1, 100.0));
    assert_eq!(drain(&mut e)[0].state, State::Firing);
    e.handle_sample(&Sample {
        quality: Quality::Bad,
        ..sample(T0 + 2, 230.0)
    });
    assert!(drain(&mut e).is_empty());
    e.handle_sample(&sample(T0 + 3, f64::NAN));
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.counters().evaluations_skipped_bad_quality, 2);
    assert_eq!(e.counters().evaluations_skipped_not_finite, 1);
}

#[test]
fn out_of_order_and_repeated_samples_are_not_evaluated() {
    let mut e = engine("kind = \"below\"\nthreshold = 207.0\n");
    e.handle_sample(&sample(T0 + 10, 230.0));
    e.handle_sample(&sample(T0 + 5, 100.0));
    e.handle_sample(&sample(T0 + 10, 100.0));
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.counters().samples_out_of_order, 2);
}

#[test]
fn one_firing_per_episode_and_one_resolve() {
    let mut e = engine("kind = \"below\"\nthreshold = 207.0\nclear = 212.0\n");
    let mut input = vec![(0, 230.0)];
    input.extend((1..1000).map(|i| (i, 150.0 + (i % 50) as f64))); // always below 207
    input.extend((1000..1010).map(|i| (i, 230.0)));
    let got = run(&mut e, &input);
    assert_eq!(got, [(1, State::Firing), (1000, State::Resolved)]);
}

#[test]
fn flapping_input_gives_bounded_notifications() {
    // A value flapping across both thresholds every 10 ms for 10 s: with
    // clear_for_ms = 1000 an episode needs a second of calm to end, so it pages once.
    let mut e = engine("kind = \"below\"\nthreshold = 207.0\nclear = 212.0\nclear_for_ms = 1000\n");
    let input: Vec<(i64, f64)> = (0..1000)
        .map(|i| (i * 10, if i % 2 == 0 { 200.0 } else { 220.0 }))
        .collect();
    let got = run(&mut e, &input);
    assert_eq!(got, [(0, State::Firing)]);
    // Flapping with 1.5 s periods pages at most once per clear_for_ms.
    let mut e = engine("kind = \"below\"\nthreshold = 207.0\nclear = 212.0\nclear_for_ms = 1000\n");
    let input: Vec<(i64, f64)> = (0..2000)
        .map(|i| (i * 10, if (i / 150) % 2 == 0 { 200.0 } else { 220.0 }))
        .collect();
    let firings = run(&mut e, &input)
        .iter()
        .filter(|t| t.1 == State::Firing)
        .count();
    assert!(firings <= 20_000 / 1000 + 1, "{firings}");
}

#[test]
fn transitions_carry_identity_severity_labels_and_annotation() {
    let rules = RuleSet::from_toml(
        r#"
[[rule]]
name = "undervoltage"
kind = "below"
sensors = "*/v?"
sites = "substation-*"
threshold = 207.0
clear = 212.0
severity = "critical"
summary = "{sensor} at {site}: {value:.1} V below {threshold}"
labels = { team = "grid" }
"#,
    )
    .unwrap();
    let mut e = Engine::new(rules);
    e.handle_sample(&sample(T0, 161.04));
    e.handle_sample(&Sample {
        sensor: "feed/ia",
        ..sample(T0, 1.0)
    }); // no rule matches
    e.handle_sample(&Sample {
        site: "lab",
        ..sample(T0, 1.0)
    });
    let t = drain(&mut e);
    assert_eq!(t.len(), 1);
    let t = &t[0];
    let fp = Fingerprint::of("undervoltage", "substation-7", "rtu-3", "feed/va");
    assert_eq!(t.fingerprint, fp);
    assert_eq!(
        t.episode,
        Episode {
            fingerprint: fp,
            started_ns: T0
        }
    );
    assert_eq!(t.severity.as_str(), "critical");
    assert_eq!(t.labels["team"], "grid");
    assert_eq!(t.annotation, "feed/va at substation-7: 161.0 V below 207");
    assert_eq!(
        (t.rule.as_str(), t.site.as_str(), t.agent.as_str()),
        ("undervoltage", "substation-7", "rtu-3")
    );
}

/// Two aggregators, the agent failing over from one to the other mid-episode,
/// with its unacknowledged batches resent: both name the episode the same when
/// both saw its first sample, so the notifier pages once.
#[test]
fn two_engines_agree_on_the_episode() {
    let rule = "kind = \"below\"\nthreshold = 207.0\nclear = 212.0\nfor_ms = 100\n";
    let feed: Vec<(i64, f64)> = (0..100)
        .map(|i| (i * 10, if (30..70).contains(&i) { 161.0 } else { 230.0 }))
        .collect();
    let (mut a, mut b) = (engine(rule), engine(rule));
    let mut episodes = std::collections::BTreeSet::new();
    for (i, &(ms, v)) in feed.iter().enumerate() {
        // A sees everything up to 450 ms; B from 250 ms on (the resent, unacked tail and after).
        if i < 45 {
            a.handle_sample(&sample(T0 + ms * MS, v));
        }
        if i >= 25 {
            b.handle_sample(&sample(T0 + ms * MS, v));
        }
    }
    for t in drain(&mut a).into_iter().chain(drain(&mut b)) {
        if t.state == State::Firing {
            episodes.insert(t.episode);
        }
    }
    assert_eq!(episodes.len(), 1, "{episodes:?}");
}

#[test]
fn the_series_limit_holds_and_evictions_are_counted() {
    let mut e = Engine::new(
        RuleSet::from_toml("[limits]\nmax_series = 16\n[[rule]]\nname = \"r\"\nkind = \"below\"\nsensors = \"*\"\nthreshold = 1.0\nseverity = \"info\"\n")
            .unwrap(),
    );
    let names: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        e.handle_sample(&Sample {
            sensor: n,
            ..sample(T0 + i as i64, 5.0)
        });
        assert!(e.tracked_series() <= 16);
    }
    assert_eq!(
        e.counters().series_evicted,
        1000 - e.tracked_series() as u64
    );
}

/// Found by the lifecycle property: a tick passes a no_data deadline, then a
/// sample taken before the deadline arrives. The resolve must not precede the
/// firing.
#[test]
fn a_late_sample_resolves_no_data_at_the_episode_start() {
    let mut e = engine("kind = \"no_data\"\nsilent_for_ms = 150\n");
    e.handle_sample(&sample(T0, 1.0));
    e.handle_tick(T0 + 150 * MS);
    e.handle_sample(&sample(T0 + 149 * MS, 0.0));
    let t = drain(&mut e);
    assert_eq!(
        t.iter()
            .map(|t| (t.state, (t.ts_ns - T0) / MS))
            .collect::<Vec<_>>(),
        [(State::Firing, 150), (State::Resolved, 150)]
    );
    assert_eq!(t[0].episode, t[1].episode);
}

/// An agent forgotten (silent here after a failover) takes its series with it
/// without a transition; its firing alerts are reported so notifiers stop
/// resending them, and its next sample starts afresh.
#[test]
fn forgetting_an_agent_reports_its_firing_alerts_and_starts_afresh() {
    let mut e = engine("kind = \"below\"\nthreshold = 200.0");
    let other = |ts_ns, value| Sample {
        agent: "rtu-9",
        ..sample(ts_ns, value)
    };
    e.handle_sample(&sample(T0, 150.0));
    e.handle_sample(&other(T0, 150.0));
    let fired: Vec<Fingerprint> = drain(&mut e).iter().map(|t| t.fingerprint).collect();
    assert_eq!(fired.len(), 2);
    assert_eq!(e.forget_agent("substation-7", "rtu-3"), 1);
    assert_eq!(e.poll_forgotten(), Some(fired[0]));
    assert_eq!(e.poll_forgotten(), None);
    assert!(
        drain(&mut e).is_empty(),
        "no transition for a forgotten series"
    );
    assert_eq!(e.tracked_series(), 1);
    assert_eq!(e.counters().series_forgotten, 1);
    // Its next sample is a new series: the breach fires again (a new episode).
    e.handle_sample(&sample(T0 + S, 150.0));
    let again = drain(&mut e);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].state, State::Firing);
}

/// A firing alert whose series is evicted at the series limit is reported too.
#[test]
fn an_evicted_series_reports_its_firing_alert() {
    let mut e = Engine::new(
        RuleSet::from_toml(
            "[limits]\nmax_series = 1\n\n[[rule]]\nname = \"r\"\nsensors = \"*\"\nseverity = \"critical\"\nkind = \"below\"\nthreshold = 200.0\n",
        )
        .unwrap(),
    );
    e.handle_sample(&sample(T0, 150.0));
    let fp = drain(&mut e)[0].fingerprint;
    e.handle_sample(&Sample {
        sensor: "feed/vb",
        ..sample(T0 + MS, 230.0)
    });
    assert_eq!(e.poll_forgotten(), Some(fp));
}
