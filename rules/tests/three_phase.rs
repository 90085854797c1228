//! The example rules against the feed they are written for: ferrule's synthetic
//! three-phase feed with a sag every 20 s. Each sag pages undervoltage once per
//! phase and resolves; nothing else fires.
#![allow(clippy::unwrap_used)]

use ferrule_rules::{Engine, RuleSet, Sample, State};
use ferrule_wire::example::{FeedOptions, ThreePhaseFeed, SENSORS};
use std::collections::BTreeMap;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * S;

#[test]
fn example_rules_on_the_synthetic_feed() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/three-phase.toml"
    ))
    .unwrap();
    let mut engine = Engine::new(RuleSet::from_toml(&text).unwrap());
    let opts = FeedOptions {
        rate_hz: 1000,
        sag_every_secs: 20,
        ..FeedOptions::default()
    };
    let mut feed = ThreePhaseFeed::new(7, T0, opts);
    let names: Vec<String> = SENSORS.iter().map(|s| format!("feeder-1/{s}")).collect();
    let mut counts: BTreeMap<(String, State), usize> = BTreeMap::new();
    let mut firings = Vec::new();
    // The 25 ms without a high peak starts at the last peak before the sag, so a
    // phase fires 10 to 25 ms into it.
    // 45 s: sags at 20 s and 40 s, in 100 ms batches, ticking as a driver would.
    for _ in 0..450 {
        let batch = feed.next_batch(100 * SENSORS.len());
        let mut samples: Vec<(i64, usize, f64)> = Vec::new();
        for series in &batch {
            let idx = series.sensor().0 as usize;
            samples.extend(series.iter().map(|(t, v, _)| (t, idx, v)));
        }
        samples.sort_by_key(|s| (s.0, s.1));
        for (ts_ns, idx, value) in samples {
            engine.handle_sample(&Sample {
                ts_ns,
                site: "substation-7",
                agent: "rtu-3",
                sensor: &names[idx],
                value,
                quality: Default::default(),
            });
        }
        if let Some(last) = batch.iter().flat_map(|s| s.iter().map(|x| x.0)).max() {
            engine.handle_tick(last);
        }
        while let Some(t) = engine.poll_transition() {
            *counts.entry((t.rule.clone(), t.state)).or_default() += 1;
            if t.state == State::Firing {
                firings.push(t);
            }
        }
    }
    let fired: Vec<(&str, i64)> = firings
        .iter()
        .map(|t| (t.rule.as_str(), (t.ts_ns - T0) / 1_000_000))
        .collect();
    assert_eq!(firings.len(), 6, "{fired:?}");
    for t in &firings {
        assert_eq!(t.rule, "undervoltage");
        let ms = (t.ts_ns - T0) / 1_000_000;
        assert!(
            (20_000..20_060).contains(&ms) || (40_000..40_060).contains(&ms),
            "{fired:?}"
        );
    }
    assert_eq!(
        counts.get(&("undervoltage".into(), State::Resolved)),
        Some(&6),
        "{counts:?}"
    );
    assert!(
        counts.keys().all(|(rule, _)| rule == "undervoltage"),
        "only undervoltage moves: {counts:?}"
    );
    eprintln!("{counts:?}");
}
