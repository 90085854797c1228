//! Both binaries speak systemd's notify protocol, checked against a real
//! datagram socket as systemd would hold it: `READY=1` only once the service
//! does its job (the aggregator listening, the agent spooling), `WATCHDOG=1`
//! at half the period systemd asks for, `STOPPING=1` on SIGTERM. The units in
//! deploy/systemd are `Type=notify` with `WatchdogSec=`: a binary that never
//! said ready would never start, one that stopped pinging would be killed.
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

/// What the process said, in order, until `until` says stop or `within` passes.
fn listen(
    sock: &UnixDatagram,
    within: Duration,
    mut until: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&said) {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    said
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Checks one binary's conversation with "systemd": ready when `serving`
/// answers, watchdog pings, stopping on SIGTERM.
fn converse(name: &str, mut proc: Proc, sock: &UnixDatagram, metrics: SocketAddr, log: &Path) {
    let said = listen(sock, Duration::from_secs(30), |s| {
        s.iter().any(|m| m.starts_with("READY=1"))
    });
    let ready = said.iter().find(|m| m.starts_with("READY=1"));
    assert!(
        ready.is_some(),
        "{name} never said READY=1 (said {said:?}):\n{}",
        tail(log)
    );
    assert!(
        ready.unwrap().contains("STATUS="),
        "{name}: a status line for systemctl status: {ready:?}"
    );
    // Ready means serving: its metrics answer now, without waiting.
    assert!(
        procs::http_get(metrics, "/metrics").is_ok(),
        "{name} said READY=1 before it served"
    );
    // WATCHDOG_USEC is 400 ms: a ping every 200 ms or so.
    let start = Instant::now();
    let pings = listen(sock, Duration::from_millis(1500), |_| false);
    let n = pings.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
    assert!(
        n >= 4,
        "{name}: {n} watchdog pings in {:?} for a 400 ms watchdog ({pings:?})",
        start.elapsed()
    );
    assert!(proc.term(Duration::from_secs(30)), "{name} did not stop");
    let rest = listen(sock, Duration::from_secs(2), |s| {
        s.iter().any(|m| m == "STOPPING=1")
    });
    assert!(
        rest.iter().any(|m| m == "STOPPING=1"),
        "{name} did not say STOPPING=1 on SIGTERM ({rest:?})"
    );
}

#[test]
fn both_binaries_say_ready_ping_the_watchdog_and_say_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki = DevPki::ensure(&root.join("pki")).unwrap();
    let quic: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
    let agg_metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
    std::fs::write(
        root.join("aggregator.toml"),
        procs::aggregator_toml(&pki, &root.join("data"), quic, Some(agg_metrics), ""),
    )
    .unwrap();
    let agg_sock_path = root.join("aggregator-notify.sock");
    let agg_sock = UnixDatagram::bind(&agg_sock_path).unwrap();
    let agg_log = root.join("aggregator.log");
    let agg = Proc::start_with_env(
        "aggregator",
        &procs::bin("ferrule-aggregator").unwrap(),
        &root.join("aggregator.toml"),
        &agg_log,
        &[
            ("NOTIFY_SOCKET", agg_sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .unwrap();

    let metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
    let spec = AgentSpec {
        site: "plant-1".into(),
        id: "notify".into(),
        spool: root.join("spool"),
        endpoints: vec![quic.to_string()],
        rate_hz: 10,
        total_samples: None,
        fsync: "interval",
        metrics: Some(metrics),
        extra: String::new(),
    };
    std::fs::write(
        root.join("agent.toml"),
        procs::agent_toml(&pki, &spec).unwrap(),
    )
    .unwrap();
    // An abstract socket name, as systemd itself uses.
    let name = format!("ferrule-test-notify-{}", std::process::id());
    let agent_sock = {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        UnixDatagram::bind_addr(&addr).unwrap()
    };
    let agent_log = root.join("agent.log");
    let agent = Proc::start_with_env(
        "agent",
        &procs::bin("ferrule-agent").unwrap(),
        &root.join("agent.toml"),
        &agent_log,
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .unwrap();

    converse("agent", agent, &agent_sock, metrics, &agent_log);
    converse("aggregator", agg, &agg_sock, agg_metrics, &agg_log);
}
