//! The alert notifiers against real peers: PagerDuty's Events API v2 schema and
//! its retries against a local receiver that fails or never answers, a dead output
//! that must never block `send`, and a real Prometheus Alertmanager (Debian's
//! `prometheus-alertmanager`, started on a free port with no cluster gossip) that
//! must show one alert for an episode two aggregators send.
#![allow(clippy::unwrap_used)]

use ferrule_aggregator::alerts::Notifiers;
use ferrule_aggregator::config::{AlertmanagerOutput, AlertsSection, PagerDutyOutput};
use ferrule_rules::{Episode, Fingerprint, Severity, State, Transition};
use ferrule_telemetry::Registry;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn transition(state: State, sensor: &str, started_ns: i64, ts_ns: i64) -> Transition {
    let fingerprint = Fingerprint::of("undervoltage", "substation-7", "rtu-3", sensor);
    Transition {
        ts_ns,
        rule: "undervoltage".into(),
        site: "substation-7".into(),
        agent: "rtu-3".into(),
        sensor: sensor.into(),
        state,
        value: 180.5,
        fingerprint,
        episode: Episode {
            fingerprint,
            started_ns,
        },
        severity: Severity::Critical,
        labels: BTreeMap::from([("team".to_string(), "grid".to_string())]),
        annotation: format!("{sensor} at substation-7: 180.5 V below 207"),
        quality: ferrule_wire::Quality::Good,
    }
}

fn pagerduty(url: &str, timeout_ms: u64, retry_for_secs: u64) -> PagerDutyOutput {
    PagerDutyOutput {
        url: url.into(),
        routing_key: "env:FERRULE_TEST_PD_KEY".into(),
        timeout_ms,
        retry_for_secs,
    }
}

fn alertmanager(url: &str) -> AlertmanagerOutput {
    AlertmanagerOutput {
        url: url.into(),
        resend_interval_secs: 60,
        timeout_ms: 2000,
        retry_for_secs: 30,
    }
}

fn section(
    am: Vec<AlertmanagerOutput>,
    pd: Option<PagerDutyOutput>,
    queue: usize,
) -> AlertsSection {
    AlertsSection {
        rules: None,
        queue_capacity: queue,
        evaluate_queue_batches: 1024,
        evaluate_queue_max_bytes: 64 << 20,
        forget_agent_after_secs: 300,
        alertmanager: am,
        pagerduty: pd,
        redis_stream: true,
        redis_stream_max_len: 100_000,
        page_through_redis: true,
        page_lease_ms: 5000,
        redis_retry_for_secs: 3600,
        kafka: true,
        kafka_topic: None,
        kafka_timeout_ms: 30_000,
        kafka_retry_for_secs: 3600,
    }
}

fn count(registry: &Registry, name: &str, output: &str, key: &str, value: &str) -> u64 {
    registry
        .counter_value(name, &[("output", output), (key, value)])
        .unwrap_or(0)
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A local HTTP/1.1 receiver: records each request's JSON body; answers the
/// first `fail_first` with `fail_status` (alternating with 429), then 202; or,
/// with `answer = false`, reads nothing and never answers.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
}

async fn receiver(fail_first: usize, answer: bool) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v2/enqueue", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let (b, r) = (bodies.clone(), requests.clone());
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            if !answer {
                held.push(sock);
                continue;
            }
            let (b, r) = (b.clone(), r.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Headers.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    assert!(head.starts_with("post "), "{head}");
                    assert!(head.contains("content-type: application/json"), "{head}");
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Value =
                        serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
                    buf.drain(..head_end + len);
                    let i = r.fetch_add(1, Ordering::SeqCst);
                    let (status, text) = if i < fail_first {
                        if i % 2 == 0 {
                            ("500 Internal Server Error", "{}".to_string())
                        } else {
                            ("429 Too Many Requests", "{}".to_string())
                        }
                    } else {
                        b.lock().unwrap().push(body.clone());
                        (
                            "202 Accepted",
                            format!(
                                r#"{{"status":"success","message":"Event processed","dedup_key":{}}}"#,
                                body["dedup_key"]
                            ),
                        )
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Receiver {
        url,
        bodies,
        requests,
    }
}

/// Checks one body against the Events API v2: the fields it requires, an allowed
/// action and severity.
fn check_pagerduty_event(e: &Value) {
    assert_eq!(e["routing_key"], "R0UT1NGKEY", "{e}");
    let action = e["event_action"].as_str().unwrap();
    assert!(
        ["trigger", "acknowledge", "resolve"].contains(&action),
        "{e}"
    );
    assert!(
        e["dedup_key"]
            .as_str()
            .is_some_and(|k| !k.is_empty() && k.len() <= 255),
        "{e}"
    );
    if action == "trigger" {
        let p = &e["payload"];
        let summary = p["summary"].as_str().unwrap();
        assert!(
            !summary.is_empty() && summary.chars().count() <= 1024,
            "{e}"
        );
        assert!(p["source"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
        let sev = p["severity"].as_str().unwrap();
        assert!(
            ["critical", "error", "warning", "info"].contains(&sev),
            "{e}"
        );
        // ISO 8601 UTC.
        assert!(
            p["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
            "{e}"
        );
        assert!(p["custom_details"].is_object(), "{e}");
    }
}

/// Trigger and resolve reach PagerDuty with one dedup_key, through a 500 and a
/// 429 that are retried; pending and inactive never reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_events_v2_with_retries() {
    std::env::set_var("FERRULE_TEST_PD_KEY", "R0UT1NGKEY");
    let rx = receiver(2, true).await;
    let registry = Registry::new();
    let n = Notifiers::start(
        &section(vec![], Some(pagerduty(&rx.url, 2000, 60)), 100),
        None,
        None,
        &registry,
    )
    .unwrap();
    let t0 = now_ns();
    n.send(&transition(State::Pending, "feed/va", t0, t0));
    n.send(&transition(State::Firing, "feed/va", t0, t0 + 100_000_000));
    n.send(&transition(State::Pending, "feed/vb", t0, t0));
    n.send(&transition(State::Inactive, "feed/vb", t0, t0 + 1));
    n.send(&transition(
        State::Resolved,
        "feed/va",
        t0,
        t0 + 900_000_000,
    ));
    wait_for("trigger and resolve", Duration::from_secs(20), || {
        rx.bodies.lock().unwrap().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bodies = rx.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    for b in &bodies {
        check_pagerduty_event(b);
    }
    assert_eq!(bodies[0]["event_action"], "trigger");
    assert_eq!(bodies[1]["event_action"], "resolve");
    assert_eq!(bodies[0]["dedup_key"], bodies[1]["dedup_key"]);
    let fp = Fingerprint::of("undervoltage", "substation-7", "rtu-3", "feed/va");
    assert_eq!(bodies[0]["dedup_key"], format!("{fp}-{t0}"));
    assert_eq!(bodies[0]["payload"]["severity"], "critical");
    assert_eq!(
        rx.requests.load(Ordering::SeqCst),
        4,
        "two failures, two deliveries"
    );
    let c = |result| {
        count(
            &registry,
            "ferrule_aggregator_alert_notifications_total",
            "pagerduty",
            "result",
            result,
        )
    };
    assert_eq!((c("error"), c("ok"), c("rejected")), (2, 2, 0));
}

/// A pager that accepts connections and never answers: each request times out
/// and is retried until `retry_for_secs`, then dropped and counted; meanwhile
/// `send` returns at once and an Alertmanager next to it gets its alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_pager_times_out_and_blocks_nothing() {
    std::env::set_var("FERRULE_TEST_PD_KEY", "R0UT1NGKEY");
    let silent = receiver(0, false).await;
    let am = receiver(0, true).await;
    let am_base = am.url.trim_end_matches("/v2/enqueue").to_string();
    let registry = Registry::new();
    let n = Notifiers::start(
        &section(
            vec![alertmanager(&am_base)],
            Some(pagerduty(&silent.url, 300, 2)),
            2000,
        ),
        None,
        None,
        &registry,
    )
    .unwrap();
    let t0 = now_ns();
    let start = Instant::now();
    n.send(&transition(State::Firing, "feed/va", t0, t0));
    let mut slowest = Duration::ZERO;
    for i in 0..1000 {
        let s = Instant::now();
        n.send(&transition(State::Firing, &format!("feed/x{i}"), t0, t0));
        slowest = slowest.max(s.elapsed());
    }
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert!(slowest < Duration::from_millis(50), "{slowest:?}");
    // The Alertmanager is not held up by the pager.
    wait_for("the alertmanager's alerts", Duration::from_secs(5), || {
        am.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.as_array().map_or(0, Vec::len))
            .sum::<usize>()
            >= 1001
    })
    .await;
    let first = am.bodies.lock().unwrap()[0][0].clone();
    assert_eq!(first["labels"]["alertname"], "undervoltage");
    // The pager: timeouts counted as errors, then given up after 2 s.
    wait_for("giving up", Duration::from_secs(10), || {
        count(
            &registry,
            "ferrule_aggregator_alert_notifications_dropped_total",
            "pagerduty",
            "reason",
            "gave_up",
        ) >= 1
    })
    .await;
    let errors = count(
        &registry,
        "ferrule_aggregator_alert_notifications_total",
        "pagerduty",
        "result",
        "error",
    );
    assert!(errors >= 2, "{errors}");
    assert_eq!(
        count(
            &registry,
            "ferrule_aggregator_alert_notifications_total",
            "pagerduty",
            "result",
            "ok"
        ),
        0
    );
    n.stop().await;
}

/// Outputs whose port refuses connections: 10 000 transitions in a burst each
/// return at once; all but what the queue holds (and the batch in flight) are
/// dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_output_never_blocks_and_drops_are_counted() {
    std::env::set_var("FERRULE_TEST_PD_KEY", "R0UT1NGKEY");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let registry = Registry::new();
    let n = Notifiers::start(
        &section(
            vec![alertmanager(&format!("http://{dead}"))],
            Some(pagerduty(&format!("http://{dead}/v2/enqueue"), 1000, 300)),
            100,
        ),
        None,
        None,
        &registry,
    )
    .unwrap();
    let t0 = now_ns();
    let transitions: Vec<Transition> = (0..10_000)
        .map(|i| transition(State::Firing, &format!("feed/s{i}"), t0, t0))
        .collect();
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for t in &transitions {
        let s = Instant::now();
        n.send(t);
        slowest = slowest.max(s.elapsed());
    }
    let total = start.elapsed();
    assert!(total < Duration::from_secs(2), "{total:?}");
    assert!(slowest < Duration::from_millis(50), "{slowest:?}");
    for (output, in_flight) in [
        (format!("alertmanager:{dead}"), 64),
        ("pagerduty".to_string(), 1),
    ] {
        let dropped = count(
            &registry,
            "ferrule_aggregator_alert_notifications_dropped_total",
            &output,
            "reason",
            "queue_full",
        );
        assert!(dropped >= 10_000 - 100 - in_flight, "{output}: {dropped}");
        assert!(dropped <= 10_000 - 100, "{output}: {dropped}");
    }
    wait_for("connection errors counted", Duration::from_secs(5), || {
        count(
            &registry,
            "ferrule_aggregator_alert_notifications_total",
            "pagerduty",
            "result",
            "error",
        ) >= 1
    })
    .await;
    n.stop().await;
}

// ---- A real Alertmanager ----

/// A running `prometheus-alertmanager`, killed on drop.
struct Alertmanager {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_alertmanager() -> Alertmanager {
    let bin =
        std::env::var("FERRULE_ALERTMANAGER").unwrap_or_else(|_| "prometheus-alertmanager".into());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("alertmanager.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n",
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let child = std::process::Command::new(&bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=")
        .arg("--log.level=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "`{bin}` could not start ({e}): this test needs Debian's prometheus-alertmanager \
                 (scripts/test.sh installs it; or apt-get install -y prometheus-alertmanager)"
            )
        });
    let am = Alertmanager {
        child,
        addr,
        _dir: dir,
    };
    let start = Instant::now();
    while get(addr, "/-/ready").0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "alertmanager did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    am
}

/// A blocking GET (HTTP/1.0, so the answer ends with the connection): status
/// and body; 0 when nothing listens yet.
fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    if s.read_to_string(&mut out).is_err() {
        return (0, String::new());
    }
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The alerts Alertmanager lists for `fingerprint` (resolved ones included if
/// it lists them).
fn listed(addr: std::net::SocketAddr, fingerprint: &str) -> Vec<Value> {
    let (status, body) = get(addr, "/api/v2/alerts");
    assert_eq!(status, 200, "{body}");
    let all: Vec<Value> = serde_json::from_str(&body).unwrap();
    all.into_iter()
        .filter(|a| a["labels"]["fingerprint"] == fingerprint)
        .collect()
}

/// One episode sent by two aggregators is one alert in a real Alertmanager, with
/// ferrule's labels and annotations; the resolve ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_shows_one_alert_per_episode_and_its_resolve() {
    let am = start_alertmanager().await;
    let url = format!("http://{}", am.addr);
    let (ra, rb) = (Registry::new(), Registry::new());
    let a = Notifiers::start(
        &section(vec![alertmanager(&url)], None, 100),
        None,
        None,
        &ra,
    )
    .unwrap();
    let b = Notifiers::start(
        &section(vec![alertmanager(&url)], None, 100),
        None,
        None,
        &rb,
    )
    .unwrap();
    let start = now_ns() - 3_000_000_000;
    let fired = start + 1_000_000_000;
    let firing = transition(State::Firing, "feed/va", start, fired);
    a.send(&transition(State::Pending, "feed/va", start, start));
    a.send(&firing);
    b.send(&firing);
    let fp = firing.fingerprint.to_string();
    let output = format!("alertmanager:{}", am.addr);
    wait_for("both deliveries", Duration::from_secs(10), || {
        count(
            &ra,
            "ferrule_aggregator_alert_notifications_total",
            &output,
            "result",
            "ok",
        ) >= 1
            && count(
                &rb,
                "ferrule_aggregator_alert_notifications_total",
                &output,
                "result",
                "ok",
            ) >= 1
    })
    .await;
    let alerts = listed(am.addr, &fp);
    assert_eq!(
        alerts.len(),
        1,
        "one alert for one episode from two aggregators: {alerts:?}"
    );
    let alert = &alerts[0];
    let labels = &alert["labels"];
    for (k, v) in [
        ("alertname", "undervoltage"),
        ("severity", "critical"),
        ("site", "substation-7"),
        ("agent", "rtu-3"),
        ("sensor", "feed/va"),
        ("fingerprint", fp.as_str()),
        ("team", "grid"),
    ] {
        assert_eq!(labels[k], v, "{alert}");
    }
    assert_eq!(
        labels.as_object().unwrap().len(),
        7,
        "no aggregator-specific label: {alert}"
    );
    assert_eq!(alert["annotations"]["summary"], firing.annotation);
    assert_eq!(alert["annotations"]["value"], "180.5");
    assert_eq!(alert["annotations"]["episode"], format!("{fp}-{start}"));
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    let starts = alert["startsAt"].as_str().unwrap().to_string();
    assert!(
        starts.starts_with(&ferrule_rfc3339_prefix(start)),
        "{starts}"
    );

    // Resolve (both aggregators see it).
    let resolved_at = now_ns();
    let resolved = transition(State::Resolved, "feed/va", start, resolved_at);
    a.send(&resolved);
    b.send(&resolved);
    wait_for("the resolve", Duration::from_secs(10), || {
        listed(am.addr, &fp)
            .iter()
            .all(|a| a["status"]["state"] != "active")
    })
    .await;
    for alert in listed(am.addr, &fp) {
        // Listed resolved (this version may or may not list them): it ended when
        // it resolved, and started when the episode did.
        assert_eq!(alert["startsAt"], starts.as_str());
        assert!(
            alert["endsAt"]
                .as_str()
                .unwrap()
                .starts_with(&ferrule_rfc3339_prefix(resolved_at)),
            "{alert}"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// `YYYY-MM-DDTHH:MM:SS` of `ns` (Alertmanager prints fractions its own way);
/// the formatter's known values are pinned by its unit test.
fn ferrule_rfc3339_prefix(ns: i64) -> String {
    ferrule_aggregator::alerts::notify::rfc3339(ns)[..19].to_string()
}
