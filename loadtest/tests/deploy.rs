//! What deploy/ ships works with the real tools and the real binaries:
//! `scripts/deploy-check.sh` runs systemd-analyze (verify, and security with
//! a maximum exposure), promtool (check and unit-test the alerting rules,
//! parse every dashboard query), docker-compose config and JSON checks; then
//! every metric the alerting rules and the dashboard name is scraped from a
//! running aggregator (with Redis, alerts and its sampler) and a running
//! agent: a panel or an alert on a name the binaries do not export would
//! show nothing, or never fire.
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace

mod support;

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::redis_server::Redis;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Names a Prometheus exposition defines (from its samples and its TYPE lines).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        let name = if let Some(rest) = line.strip_prefix("# TYPE ") {
            rest.split_whitespace().next()
        } else if line.starts_with('#') {
            None
        } else {
            line.split(['{', ' ']).next()
        };
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            names.insert(n.to_string());
        }
    }
    names
}

#[test]
fn deploy_files_pass_their_checks_and_name_only_exported_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let names_file = root.join("names.txt");
    let out = Command::new("bash")
        .arg(repo().join("scripts/deploy-check.sh"))
        .arg("--names-out")
        .arg(&names_file)
        .current_dir(repo())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(out.status.success(), "scripts/deploy-check.sh failed");
    let wanted: BTreeSet<String> = std::fs::read_to_string(&names_file)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    assert!(
        wanted.len() >= 20,
        "the rules and dashboard name only {} metrics: {wanted:?}",
        wanted.len()
    );

    // The real processes, configured as the compose file's central side is
    // (Redis, alert rules with an Alertmanager output, the sampler).
    let pki = DevPki::ensure(&root.join("pki")).unwrap();
    let redis = Redis::start(&root.join("redis"));
    // A real-time consumer's group on the site's stream, as a dashboard
    // reading it would have: its losses are a metric the rules watch.
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("ferrule:{plant-1}")
        .arg("dashboards")
        .arg("$")
        .arg("MKSTREAM")
        .query::<()>(&mut redis.conn())
        .unwrap();
    let quic: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
    let agg_metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
    let rules = repo().join("rules/examples/three-phase.toml");
    std::fs::write(
        root.join("aggregator.toml"),
        procs::aggregator_toml(
            &pki,
            &root.join("data"),
            quic,
            Some(agg_metrics),
            &format!(
                "[redis]\nurl = {:?}\ntrim_interval_ms = 200\n\n[alerts]\nrules = {:?}\n\n[[alerts.alertmanager]]\nurl = \"http://127.0.0.1:9\"\n",
                redis.url,
                rules.display().to_string()
            ),
        ),
    )
    .unwrap();
    let agg_log = root.join("aggregator.log");
    let _agg = Proc::start(
        "aggregator",
        &procs::bin("ferrule-aggregator").unwrap(),
        &root.join("aggregator.toml"),
        &agg_log,
    )
    .unwrap();
    let metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
    let spec = AgentSpec {
        site: "plant-1".into(),
        id: "deploy".into(),
        spool: root.join("spool"),
        endpoints: vec![quic.to_string()],
        rate_hz: 10,
        total_samples: None,
        fsync: "interval",
        metrics: Some(metrics),
        // A line protocol input too: its metrics are in the exposition checked
        // below (a gauge and a counter of its once shared a family name).
        extra: format!(
            "[[inputs.line]]\nname = \"lp\"\nlisten_tcp = \"127.0.0.1:{}\"\n",
            procs::free_tcp_port().unwrap()
        ),
    };
    std::fs::write(
        root.join("agent.toml"),
        procs::agent_toml(&pki, &spec).unwrap(),
    )
    .unwrap();
    let _agent = Proc::start(
        "agent",
        &procs::bin("ferrule-agent").unwrap(),
        &root.join("agent.toml"),
        &root.join("agent.log"),
    )
    .unwrap();

    // Scraped while data flows (the agent up, its batches committed, the
    // Redis trimmer round done), so series made on first sight exist too;
    // whatever is still missing after 30 s is missing.
    let mut missing: Vec<String> = wanted.iter().cloned().collect();
    let mut committed = false;
    procs::wait_for(Duration::from_secs(30), || {
        let agg = procs::http_get(agg_metrics, "/metrics").ok()?;
        let agent = procs::http_get(metrics, "/metrics").ok()?;
        committed =
            procs::metric(&agg, "ferrule_aggregator_committed_batches_total").unwrap_or(0.0) > 0.0;
        let have: BTreeSet<String> = exported(&agg).union(&exported(&agent)).cloned().collect();
        missing = wanted
            .iter()
            .filter(|n| !have.contains(*n))
            .cloned()
            .collect();
        (committed && missing.is_empty()).then_some(())
    });
    assert!(
        committed,
        "nothing committed within 30 s:\n{}",
        std::fs::read_to_string(&agg_log).unwrap_or_default()
    );
    assert!(
        missing.is_empty(),
        "the dashboard or the alerting rules name metrics no binary exports: {missing:?}"
    );
    // Both expositions are valid OpenMetrics as a scraper reads them: one TYPE
    // per family name (a gauge `x` beside a counter `x_total` would be two),
    // ending in `# EOF`.
    for (who, addr) in [("aggregator", agg_metrics), ("agent", metrics)] {
        let text = procs::http_get(addr, "/metrics").unwrap();
        assert!(text.ends_with("# EOF\n"), "{who}: no # EOF");
        let mut seen = BTreeSet::new();
        for fam in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = fam.split_whitespace().next().unwrap_or("");
            assert!(
                seen.insert(name.to_string()),
                "{who}: family {name} typed twice"
            );
        }
    }
}
