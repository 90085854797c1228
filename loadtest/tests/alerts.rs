//! Alerts end to end, with real parts: an agent's synthetic voltage sag travels
//! over mutually authenticated QUIC to the aggregator, whose evaluator fires the
//! undervoltage rule of `rules/examples/three-phase.toml`; a real Prometheus
//! Alertmanager gets it and pages a webhook. What the operator's pager sees is
//! counted at the webhook: one `firing` and one `resolved` per episode.

use ferrule_aggregator::alerts::evaluate::Evaluated;
use ferrule_loadtest::alertmanager::Alertmanager;
use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::inproc;
use ferrule_loadtest::procs::{agent_toml, aggregator_toml, free_udp_port, AgentSpec};
use ferrule_rules::State;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RULES: &str = include_str!("../../rules/examples/three-phase.toml");

/// Sensors of one phase voltage each: the sag fires each once per episode.
const PHASES: [&str; 3] = ["feeder-1/va", "feeder-1/vb", "feeder-1/vc"];

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sag_pages_a_real_alertmanager_once_per_episode() {
    let am = Alertmanager::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let quic: std::net::SocketAddr = ([127, 0, 0, 1], free_udp_port().unwrap()).into();
    let agg_path = dir.path().join("aggregator.toml");
    std::fs::write(
        &agg_path,
        aggregator_toml(
            &pki,
            &dir.path().join("agg"),
            quic,
            None,
            &format!(
                "[alerts]\nrules = {:?}\n\n[[alerts.alertmanager]]\nurl = {:?}\nresend_interval_secs = 60\n",
                rules.display().to_string(),
                am.url()
            ),
        ),
    )
    .unwrap();
    let aggregator = inproc::Aggregator::start(&agg_path).await.unwrap();
    let mut transitions = aggregator
        .running
        .alerts
        .as_ref()
        .expect("rules are configured")
        .subscribe();

    let spec = AgentSpec {
        site: "substation-1".into(),
        id: "rtu-1".into(),
        spool: dir.path().join("spool"),
        endpoints: vec![quic.to_string()],
        rate_hz: 1000,
        total_samples: None,
        fsync: "interval",
        metrics: None,
        // The crossing fast path on: a firing or resolve leaves at once.
        extra: format!(
            "sag_every_secs = 5\n\n[alerts]\nrules = {:?}\n",
            rules.display().to_string()
        ),
    };
    let agent_path = dir.path().join("agent.toml");
    std::fs::write(&agent_path, agent_toml(&pki, &spec).unwrap()).unwrap();
    let agent = inproc::Agent::start(&agent_path).unwrap();
    let agent_registry = agent.registry.clone();

    // The first sag (within 5 s): each phase fires and resolves once.
    let mut seen: Vec<Arc<Evaluated>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = |seen: &[Arc<Evaluated>]| {
        PHASES.iter().all(|p| {
            seen.iter().any(|e| {
                e.transition.rule == "undervoltage"
                    && e.transition.sensor == *p
                    && e.transition.state == State::Resolved
            })
        })
    };
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, transitions.recv()).await {
            Ok(Ok(e)) => seen.push(e),
            Ok(Err(e)) => panic!("transitions: {e}"),
            Err(_) => panic!(
                "no undervoltage episode fired and resolved for every phase in 30 s: {:?}",
                seen.iter()
                    .map(|e| (&e.transition.rule, &e.transition.sensor, e.transition.state))
                    .collect::<Vec<_>>()
            ),
        }
    }
    // Stop the feed before the next sag: one episode per phase.
    agent.stop().await.unwrap();
    assert!(
        agent_registry.counter_sum("ferrule_agent_alert_flushes_total") >= 1,
        "the agent's own rules cut the crossing's batch short"
    );

    let under: Vec<&Arc<Evaluated>> = seen
        .iter()
        .filter(|e| e.transition.rule == "undervoltage")
        .collect();
    let mut lat_ms: Vec<f64> = under
        .iter()
        .filter(|e| matches!(e.transition.state, State::Firing | State::Resolved))
        .map(|e| (e.emitted_ns - e.received_ns) as f64 / 1e6)
        .collect();
    lat_ms.sort_by(f64::total_cmp);
    println!(
        "undervoltage transitions: {}; from the batch's arrival to emitted: p50 {:.3} ms, max {:.3} ms (debug build)",
        under.len(),
        quantile(&lat_ms, 0.5),
        quantile(&lat_ms, 1.0)
    );
    let mut episodes: BTreeMap<&str, String> = BTreeMap::new();
    for p in PHASES {
        let firing: Vec<_> = under
            .iter()
            .filter(|e| e.transition.sensor == p && e.transition.state == State::Firing)
            .collect();
        assert_eq!(firing.len(), 1, "{p}: one firing per episode");
        episodes.insert(p, firing[0].transition.episode.to_string());
    }

    // The pager: Alertmanager's webhook gets each episode's firing and its
    // resolve, once each.
    let hook_deadline = Instant::now() + Duration::from_secs(20);
    let of = |status: &str, sensor: &str| -> Vec<serde_json::Value> {
        am.notifications()
            .into_iter()
            .filter(|n| {
                n.body["status"] == status
                    && n.body["groupLabels"]["alertname"] == "undervoltage"
                    && n.body["groupLabels"]["sensor"] == sensor
            })
            .map(|n| n.body)
            .collect()
    };
    while PHASES.iter().any(|p| of("resolved", p).is_empty()) {
        assert!(
            Instant::now() < hook_deadline,
            "Alertmanager did not page every phase's firing and resolve within 20 s: {:?}",
            am.notifications()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another group interval for anything late or repeated to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for p in PHASES {
        for status in ["firing", "resolved"] {
            let got = of(status, p);
            assert_eq!(got.len(), 1, "{p}: one {status} page: {got:?}");
            let alerts = got[0]["alerts"].as_array().unwrap();
            assert_eq!(alerts.len(), 1, "{got:?}");
            let a = &alerts[0];
            assert_eq!(a["labels"]["site"], "substation-1");
            assert_eq!(a["labels"]["agent"], "rtu-1");
            assert_eq!(a["labels"]["severity"], "critical");
            assert_eq!(a["annotations"]["episode"], episodes[p].as_str(), "{a}");
        }
    }
    aggregator.stop().await.unwrap();
}
