//! The agent's renew hook with real parts: the real `ferrule-aggregator`,
//! `ferrule-agent` and `ferrule-certs` binaries, the dev CA on disk.
//!
//! Two agents stream to one aggregator, each with a certificate issued for
//! one day and `tls.renew_at_fraction` so small that it is due at start:
//! - r1's hook is `ferrule-certs renew` against the dev CA (30 days): it runs
//!   once (`ok` = 1, not again: the renewed certificate is due in weeks), the
//!   certificate file holds a new serial that `list` shows valid, with the
//!   same identity and the same key; after the aggregator restarts, the new
//!   connection presents the new serial.
//! - r2's hook exits 1: counted `failed`, the certificate file unchanged,
//!   the old serial still what its connections present.
//!
//! Both stream throughout and nothing is lost: every generated sample is in
//! the aggregator's log once.
//!
//! Needs the binaries built (`cargo build -p ferrule-agent -p
//! ferrule-aggregator -p ferrule-certs`).

#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Samples each agent generates: 7 sensors at 100 Hz, about 20 s.
const TOTAL: u64 = 14_000;

fn serial_of(path: &Path) -> String {
    ferrule_transport::leaf_summary(path)
        .unwrap()
        .serial
        .to_lowercase()
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

fn metric(addr: SocketAddr, series: &str) -> f64 {
    let t = procs::http_get(addr, "/metrics").unwrap_or_default();
    procs::metric(&t, series).unwrap_or(-1.0)
}

fn read(root: &Path, name: &str) -> String {
    procs::strip_ansi(&std::fs::read_to_string(root.join(name)).unwrap_or_default())
}

fn tail(root: &Path, name: &str) -> String {
    let t = read(root, name);
    let lines: Vec<&str> = t.lines().rev().take(30).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Whether `log` has the aggregator's "agent connected" line for `agent`
/// presenting `serial`.
fn connected_with(log: &str, agent: &str, serial: &str) -> bool {
    log.lines().any(|l| {
        l.contains("agent connected") && l.contains(agent) && l.to_lowercase().contains(serial)
    })
}

#[test]
fn the_renew_hook_renews_in_place_and_a_failing_one_changes_nothing() {
    let certs_bin = procs::bin("ferrule-certs").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let pki = DevPki::ensure(&root.join("pki")).unwrap();
    let quic: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
    let agg_metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
    let data = root.join("data");
    std::fs::write(
        root.join("aggregator.toml"),
        procs::aggregator_toml(&pki, &data, quic, Some(agg_metrics), ""),
    )
    .unwrap();
    let mut agg = Proc::start(
        "aggregator",
        &procs::bin("ferrule-aggregator").unwrap(),
        &root.join("aggregator.toml"),
        &root.join("aggregator.log"),
    )
    .unwrap();
    procs::wait_for(Duration::from_secs(20), || {
        procs::http_get(agg_metrics, "/metrics").ok()
    })
    .unwrap_or_else(|| panic!("no aggregator:\n{}", tail(&root, "aggregator.log")));

    // One-day certificates: with renew_at_fraction = 0.001 they are due
    // about 86 s after not_before, which is backdated 5 minutes: at once.
    let mut agents = Vec::new();
    let mut olds = Vec::new();
    for (id, hook) in [
        (
            "r1",
            format!(
                "[{}, \"renew\", \"--dir\", {}, \"--cert\", {}, \"--days\", \"30\"]",
                q(&certs_bin.display().to_string()),
                q(&pki.dir.display().to_string()),
                q(&pki.agent_paths("plant-1", "r1").0.display().to_string()),
            ),
        ),
        (
            "r2",
            "[\"sh\", \"-c\", \"echo cannot reach the CA >&2; exit 1\"]".to_string(),
        ),
    ] {
        let identity = ferrule_certs::AgentIdentity::new("plant-1", id).unwrap();
        ferrule_certs::issue_agent(
            &pki.dir,
            &identity,
            &ferrule_certs::IssueOptions {
                days: Some(1),
                out_dir: None,
                force: true,
            },
        )
        .unwrap();
        let (cert, key) = pki.agent_paths("plant-1", id);
        olds.push((serial_of(&cert), std::fs::read(&key).unwrap()));
        let metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
        let spec = AgentSpec {
            site: "plant-1".into(),
            id: id.into(),
            spool: root.join(format!("spool-{id}")),
            endpoints: vec![quic.to_string()],
            rate_hz: 100,
            total_samples: Some(TOTAL),
            fsync: "interval",
            metrics: Some(metrics),
            extra: String::new(),
        };
        let toml = procs::agent_toml(&pki, &spec).unwrap().replace(
            "[tls]\n",
            &format!(
                "[tls]\nrenew_command = {hook}\nrenew_at_fraction = 0.001\nrenew_jitter_fraction = 0.0\nrenew_timeout_secs = 20\n"
            ),
        );
        let path = root.join(format!("agent-{id}.toml"));
        std::fs::write(&path, toml).unwrap();
        let p = Proc::start(
            id,
            &procs::bin("ferrule-agent").unwrap(),
            &path,
            &root.join(format!("agent-{id}.log")),
        )
        .unwrap();
        agents.push((id, metrics, p));
    }
    let (r1, r2) = (agents[0].1, agents[1].1);
    let ok = "ferrule_agent_tls_renew_total{outcome=\"ok\"}";
    let failed = "ferrule_agent_tls_renew_total{outcome=\"failed\"}";
    let timeout = "ferrule_agent_tls_renew_total{outcome=\"timeout\"}";

    // r1's hook ran once and succeeded; r2's failed.
    procs::wait_for(Duration::from_secs(20), || {
        (metric(r1, ok) == 1.0 && metric(r2, failed) == 1.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "hooks did not run:\n{}\n{}",
            tail(&root, "agent-r1.log"),
            tail(&root, "agent-r2.log")
        )
    });
    for (addr, series, want) in [
        (r1, failed, 0.0),
        (r1, timeout, 0.0),
        (r2, ok, 0.0),
        (r2, timeout, 0.0),
    ] {
        assert_eq!(metric(addr, series), want, "{series}");
    }

    // r1: a new serial in the file, listed valid, the same identity and key.
    let (r1_cert, r1_key) = pki.agent_paths("plant-1", "r1");
    let new = serial_of(&r1_cert);
    assert_ne!(new, olds[0].0);
    let entry = ferrule_certs::list(&pki.dir)
        .unwrap()
        .into_iter()
        .find(|e| e.serial.to_hex() == new)
        .unwrap_or_else(|| panic!("{new} not in the index"));
    assert_eq!(entry.status, ferrule_certs::Status::Valid);
    assert_eq!(entry.identity, "ferrule://site/plant-1/agent/r1");
    let info = ferrule_certs::inspect(&std::fs::read(&r1_cert).unwrap())
        .unwrap()
        .remove(0);
    assert_eq!(info.uris, vec!["ferrule://site/plant-1/agent/r1"]);
    assert_eq!(std::fs::read(&r1_key).unwrap(), olds[0].1, "key changed");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    // The renewed 30-day certificate is due in about 40 minutes, not now.
    let next = metric(r1, "ferrule_agent_tls_renew_next_seconds");
    assert!(next > now + 600.0, "next {next}, now {now}");
    // r2: the file untouched, the next try after the retry pause.
    let (r2_cert, r2_key) = pki.agent_paths("plant-1", "r2");
    assert_eq!(serial_of(&r2_cert), olds[1].0);
    assert_eq!(std::fs::read(&r2_key).unwrap(), olds[1].1);
    let next = metric(r2, "ferrule_agent_tls_renew_next_seconds");
    assert!(next > now + 500.0, "next {next}, now {now}");
    let r2_log = read(&root, "agent-r2.log");
    assert!(
        r2_log.contains("renew hook failed") && r2_log.contains("cannot reach the CA"),
        "{r2_log}"
    );

    // A new connection presents the new serial (r1) and the old one (r2).
    std::thread::sleep(Duration::from_secs(1));
    agg.kill9();
    let _agg2 = Proc::start(
        "aggregator",
        &procs::bin("ferrule-aggregator").unwrap(),
        &root.join("aggregator.toml"),
        &root.join("aggregator-2.log"),
    )
    .unwrap();
    procs::wait_for(Duration::from_secs(20), || {
        let log = read(&root, "aggregator-2.log");
        (connected_with(&log, "plant-1/r1", &new) && connected_with(&log, "plant-1/r2", &olds[1].0))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "agents did not come back with serials {new} / {}:\n{}\n{}\n{}",
            olds[1].0,
            tail(&root, "aggregator-2.log"),
            tail(&root, "agent-r1.log"),
            tail(&root, "agent-r2.log")
        )
    });

    // Both streamed throughout: every sample in the log, once.
    let done = procs::wait_for(Duration::from_secs(40), || {
        let report = procs::inspect(&data).ok()?;
        let events = |id: &str| report["agents"][format!("plant-1/{id}")]["events"].as_u64();
        (events("r1")? >= TOTAL && events("r2")? >= TOTAL).then_some(report)
    });
    let report = done.unwrap_or_else(|| {
        panic!(
            "not every sample arrived: {:?}",
            procs::inspect(&data).ok().map(|r| r["agents"].clone())
        )
    });
    for id in ["r1", "r2"] {
        let a = &report["agents"][format!("plant-1/{id}")];
        assert_eq!(a["events"].as_u64(), Some(TOTAL), "{id}: {a}");
        assert_eq!(a["duplicates_in_log"].as_u64(), Some(0), "{id}: {a}");
        assert_eq!(a["seqs_missing"].as_u64(), Some(0), "{id}: {a}");
    }
    // Still exactly one run each: the renewed certificate is not renewed
    // again, the failed one waits renew_retry_secs.
    assert_eq!(metric(r1, ok), 1.0);
    assert_eq!(metric(r2, failed), 1.0);
    drop(agents);
}
