//! An agent whose uplink is down says so on `/healthz` within the configured
//! time, with the reason, and is healthy again once its backlog has drained:
//! what a liveness or alerting probe on the site box checks. Real processes:
//! the agent first with no aggregator at its endpoint, then one started there.
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[test]
fn an_agent_with_its_uplink_down_is_unhealthy_in_time_and_healthy_after_it_drains() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki = DevPki::ensure(&root.join("pki")).unwrap();
    let quic: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
    let spec = AgentSpec {
        site: "plant-1".into(),
        id: "health".into(),
        spool: root.join("spool"),
        endpoints: vec![quic.to_string()],
        rate_hz: 20,
        total_samples: None,
        fsync: "interval",
        metrics: Some(metrics),
        extra: String::new(),
    };
    let toml = procs::agent_toml(&pki, &spec)
        .unwrap()
        .replace("[uplink]\n", "[uplink]\nunhealthy_after_secs = 3\n");
    assert!(toml.contains("unhealthy_after_secs = 3"));
    std::fs::write(root.join("agent.toml"), toml).unwrap();
    let started = Instant::now();
    let _agent = Proc::start(
        "agent",
        &procs::bin("ferrule-agent").unwrap(),
        &root.join("agent.toml"),
        &root.join("agent.log"),
    )
    .unwrap();

    // Healthy at first: the backlog is younger than 3 s.
    let first = procs::wait_for(Duration::from_secs(20), || {
        procs::http_get(metrics, "/healthz").ok()
    })
    .unwrap();
    assert!(first.starts_with("ok"), "at start: {first}");

    // Down since the start, and unhealthy once the oldest batch is 3 s old.
    let unhealthy = procs::wait_for(Duration::from_secs(15), || {
        let body = procs::http_get(metrics, "/healthz").ok()?;
        body.contains("nothing acknowledged").then_some(body)
    })
    .unwrap_or_else(|| {
        panic!(
            "never unhealthy:\n{}",
            std::fs::read_to_string(root.join("agent.log")).unwrap_or_default()
        )
    });
    let after = started.elapsed();
    eprintln!("unhealthy after {after:?}: {unhealthy}");
    assert!(unhealthy.starts_with("unready:"), "{unhealthy}");
    assert!(
        unhealthy.contains("unhealthy_after_secs 3") && unhealthy.contains("batches"),
        "the reason names the setting and the backlog: {unhealthy}"
    );
    assert!(
        after < Duration::from_secs(3 + 5),
        "unhealthy only after {after:?} for a 3 s setting"
    );
    let m = procs::http_get(metrics, "/metrics").unwrap();
    assert_eq!(procs::metric(&m, "ferrule_agent_uplink_up"), Some(0.0));
    let since = procs::metric(&m, "ferrule_agent_uplink_since_seconds").unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        since > now - 60.0 && since <= now,
        "down since {since}, now {now}"
    );

    // An aggregator comes: the backlog drains, and the agent is healthy again.
    let agg_metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
    std::fs::write(
        root.join("aggregator.toml"),
        procs::aggregator_toml(&pki, &root.join("data"), quic, Some(agg_metrics), ""),
    )
    .unwrap();
    let _agg = Proc::start(
        "aggregator",
        &procs::bin("ferrule-aggregator").unwrap(),
        &root.join("aggregator.toml"),
        &root.join("aggregator.log"),
    )
    .unwrap();
    let healthy = procs::wait_for(Duration::from_secs(30), || {
        let body = procs::http_get(metrics, "/healthz").ok()?;
        body.starts_with("ok").then_some(body)
    });
    assert!(
        healthy.is_some(),
        "not healthy again after the aggregator came:\n{}",
        std::fs::read_to_string(root.join("agent.log")).unwrap_or_default()
    );
    let m = procs::http_get(metrics, "/metrics").unwrap();
    assert_eq!(procs::metric(&m, "ferrule_agent_uplink_up"), Some(1.0));
    let age = procs::metric(&m, "ferrule_agent_spool_oldest_unacked_age_seconds").unwrap();
    assert!(
        age <= 3.0,
        "healthy with a {age} s old batch unacknowledged"
    );
}
