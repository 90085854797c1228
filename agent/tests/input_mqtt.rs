//! The MQTT input against a real broker: Debian's Mosquitto, published to with
//! `mosquitto_pub`. Each test starts its own broker on a free port with
//! persistence on, runs `mqtt::run` in-process with a hand-built
//! `InputContext`, and checks exact values, timestamps, sensor names and error
//! counters; then the delivery guarantees: nothing the broker accepted is lost
//! across an agent stop and a broker restart, and a blocked spool stops acks
//! (messages wait at the broker, not in the agent).
//!
//! Needs `mosquitto`, `mosquitto_pub` (Debian: mosquitto, mosquitto-clients)
//! and `openssl`; `scripts/test.sh` installs them. A missing tool fails the
//! test with a message saying so; nothing is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrule_agent::batcher::Chunk;
use ferrule_agent::catalog::Catalog;
use ferrule_agent::inputs::mqtt::{self, MqttConfig};
use ferrule_agent::inputs::InputContext;
use ferrule_telemetry::Registry;
use ferrule_wire::Quality;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Generous: the machine running the tests may be a loaded 2-core box.
const WAIT: Duration = Duration::from_secs(30);

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` not found: the MQTT input tests need Debian's mosquitto, mosquitto-clients \
         and openssl (scripts/test.sh installs them; by hand: \
         apt-get install -y mosquitto mosquitto-clients openssl)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto process with its config and persistence in a temp dir.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    async fn start() -> Self {
        Self::start_with("").await
    }

    /// A broker on a free port; `extra` is appended to its config.
    async fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // Running as root, Mosquitto would switch to the `mosquitto` user and
        // could not write the temp dir; `user` keeps whoever runs the test.
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let conf = format!(
            "user {user}\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}/\n\
             max_queued_messages 100000\n\
             log_dest file {}/mosquitto.log\n\
             log_type all\n\
             {extra}\n",
            dir.path().display(),
            dir.path().display(),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut b = Self {
            dir,
            port,
            child: None,
        };
        b.spawn().await;
        b
    }

    async fn spawn(&mut self) {
        let mut child = Command::new(tool("mosquitto"))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("mosquitto exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
    }

    /// SIGTERM, the clean shutdown in which Mosquitto writes its persistence file.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "mosquitto ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            self.dir.path().join("mosquitto.db").exists(),
            "mosquitto wrote no persistence file:\n{}",
            self.log()
        );
    }

    async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Publishes each payload as its own QoS 1 message (one `mosquitto_pub -l`).
async fn publish(port: u16, topic: &str, payloads: &[&str]) {
    let topic = topic.to_string();
    let input: String = payloads.iter().map(|p| format!("{p}\n")).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(tool("mosquitto_pub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-t",
                &topic,
                "-l",
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "mosquitto_pub -t {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await
    .unwrap();
}

/// Publishes one QoS 1 message (`-m`: the payload may hold anything).
async fn publish_one(port: u16, topic: &str, payload: &str) {
    publish_with(port, topic, payload, &[]).await;
}

/// Publishes one QoS 1 message with extra `mosquitto_pub` flags (`-r`: retain).
async fn publish_with(port: u16, topic: &str, payload: &str, flags: &[&str]) {
    let (topic, payload) = (topic.to_string(), payload.to_string());
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(tool("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", &topic, "-m", &payload])
            .args(&flags)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mosquitto_pub -t {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await
    .unwrap();
}

/// The agent side: catalog, registry and the chunk channel the input feeds.
struct Agent {
    _dir: tempfile::TempDir,
    catalog: Arc<Mutex<Catalog>>,
    registry: Registry,
}

/// A running input.
struct Running {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    rx: mpsc::Receiver<Chunk>,
}

#[derive(Debug, Clone, PartialEq)]
struct Got {
    name: String,
    ts: i64,
    value: f64,
    quality: Quality,
}

impl Agent {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Mutex::new(Catalog::open(dir.path()).unwrap()));
        Self {
            _dir: dir,
            catalog,
            registry: Registry::new(),
        }
    }

    /// Starts the input with a chunk channel of `capacity`. A capacity of 1
    /// stands for a spool that takes nothing (the test reads, or not); any
    /// other, for a spool that takes every chunk at once and makes it durable
    /// (the chunks are then forwarded to the test's receiver).
    fn start(&self, cfg: serde_json::Value, capacity: usize) -> Running {
        let cfg: MqttConfig = serde_json::from_value(cfg).unwrap();
        let mut bad = Vec::new();
        cfg.validate("inputs.mqtt[0]", &mut bad);
        assert!(bad.is_empty(), "{bad:?}");
        let (tx, mut rx) = mpsc::channel::<Chunk>(capacity);
        if capacity > 1 {
            let (fwd, out) = mpsc::channel(100_000);
            tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    if let Some((ticket, n)) = &chunk.durability {
                        ticket.mark_durable(*n);
                    }
                    if fwd.send(chunk).await.is_err() {
                        break;
                    }
                }
            });
            rx = out;
        }
        let (stop, stop_rx) = watch::channel(false);
        let ctx = InputContext::new(
            &cfg.name,
            tx,
            self.catalog.clone(),
            self.registry.clone(),
            stop_rx,
        );
        Running {
            task: tokio::spawn(mqtt::run(cfg, ctx)),
            stop,
            rx,
        }
    }

    fn errors(&self, input: &str, reason: &str) -> u64 {
        self.registry
            .counter_value(
                "ferrule_agent_input_errors_total",
                &[("input", input), ("reason", reason)],
            )
            .unwrap_or(0)
    }

    fn counter(&self, name: &str, input: &str) -> u64 {
        self.registry
            .counter_value(name, &[("input", input)])
            .unwrap_or(0)
    }

    fn gauge(&self, name: &str, input: &str) -> i64 {
        self.registry.gauge(name, "", &[("input", input)]).get()
    }

    /// Waits until `cond` holds, failing with `what` after [`WAIT`].
    async fn until(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn subscribed(&self, input: &str) {
        self.until("the subscriptions to be granted", |a| {
            a.gauge("ferrule_agent_mqtt_subscribed", input) == 1
        })
        .await;
    }

    /// Waits until every message received was acked (good or bad).
    async fn all_acked(&self, input: &str) {
        self.until("every message to be acked", |a| {
            let m = a.counter("ferrule_agent_mqtt_messages_total", input);
            m > 0 && a.counter("ferrule_agent_mqtt_acks_total", input) == m
        })
        .await;
    }

    /// The samples of a chunk taken from the channel. Taking it plays the
    /// spool: its durability ticket fires, as the batcher's would after the
    /// fsync, which lets the input acknowledge its messages.
    fn samples(&self, chunk: Chunk) -> Vec<Got> {
        if let Some((ticket, n)) = &chunk.durability {
            ticket.mark_durable(*n);
        }
        let cat = self.catalog.lock().unwrap();
        let names: HashMap<_, _> = cat
            .defines()
            .iter()
            .map(|d| (d.sensor, d.name.as_str().to_string()))
            .collect();
        let mut out = Vec::new();
        for s in &chunk.series {
            for (ts, value, quality) in s.iter() {
                out.push(Got {
                    name: names[&s.sensor()].clone(),
                    ts,
                    value,
                    quality,
                });
            }
        }
        out
    }

    /// Reads chunks until `done` says the samples so far are enough.
    async fn collect(
        &self,
        rx: &mut mpsc::Receiver<Chunk>,
        done: impl Fn(&[Got]) -> bool,
    ) -> Vec<Got> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&got) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(chunk)) => got.extend(self.samples(chunk)),
                Ok(None) => panic!("the input stopped; got {got:?}"),
                Err(_) => panic!("timed out; got {} samples: {got:?}", got.len()),
            }
        }
        got
    }
}

impl Running {
    /// Asks the input to stop and waits for it.
    async fn stop(self) -> mpsc::Receiver<Chunk> {
        self.stop.send(true).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the input did not stop")
            .unwrap();
        self.rx
    }
}

fn base(name: &str, port: u16, subscriptions: serde_json::Value) -> serde_json::Value {
    json!({
        "name": name,
        "host": "127.0.0.1",
        "port": port,
        "client_id": format!("ferrule-test-{name}"),
        "backoff_initial_ms": 100,
        "backoff_max_ms": 1000,
        "subscriptions": subscriptions,
    })
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_wildcards_and_bad_data() {
    let broker = Broker::start().await;
    let agent = Agent::new();
    let subs = json!([
        {"topic": "plant/+/temp/+", "sensor": "{1}/temp/{3}", "unit": "degC"},
        {"topic": "json/#", "sensor": "j/{#}", "payload": "json", "value_field": "data.v",
         "timestamp_field": "ts", "timestamp_unit": "ms", "quality_field": "q"},
        {"topic": "arr/+", "sensor": "arr/{1}", "payload": "json_array",
         "timestamp_field": "t", "timestamp_unit": "rfc3339"},
    ]);
    // A first run subscribed to one more filter, which stays in the broker's
    // session after the config dropped it: its messages are counted, not lost silently.
    let mut old = subs.as_array().unwrap().clone();
    old.push(json!({"topic": "old/#", "sensor": "old/{#}"}));
    let first = agent.start(base("fmt", broker.port, json!(old)), 64);
    agent.subscribed("fmt").await;
    first.stop().await;
    assert_eq!(agent.gauge("ferrule_agent_mqtt_subscribed", "fmt"), 0);

    let mut run = agent.start(base("fmt", broker.port, subs), 64);
    agent.subscribed("fmt").await;
    let before = now_ns();
    let p = broker.port;
    publish_one(p, "plant/boiler-1/temp/inlet", "21.5").await;
    publish_one(p, "plant/boiler-2/temp/outlet", " -3e1 ").await;
    publish_one(
        p,
        "json/feeder/3/va",
        r#"{"data": {"v": 230.25}, "ts": 1700000000123, "q": "uncertain"}"#,
    )
    .await;
    publish_one(p, "json/feeder/3/vb", r#"{"data": {"v": 229}}"#).await;
    publish_one(
        p,
        "arr/meter-1",
        r#"[{"value": 1, "t": "2023-11-14T22:13:20Z"}, {"value": 2.5, "t": "2023-11-14T23:13:21.5+01:00"}]"#,
    )
    .await;
    // Bad data, one of each reason.
    publish_one(p, "plant/boiler-1/temp/inlet", "abc").await;
    publish_one(p, "json/x", "{not json").await;
    publish_one(p, "json/y", r#"{"data": {}}"#).await;
    publish_one(p, "plant/bad name/temp/x", "1").await;
    publish_one(
        p,
        "arr/meter-1",
        r#"[{"value": 3, "t": "yesterday"}, {"value": 4}]"#,
    )
    .await;
    publish_one(p, "old/thing", "5").await;
    // Messages are handled in order: the sentinel comes last.
    publish_one(p, "plant/end/temp/x", "99").await;
    let got = agent
        .collect(&mut run.rx, |g| g.iter().any(|s| s.name == "end/temp/x"))
        .await;
    let after = now_ns();

    let recv_time = |s: &Got| s.ts >= before && s.ts <= after;
    let by_name: BTreeMap<&str, Vec<&Got>> = got.iter().fold(BTreeMap::new(), |mut m, s| {
        m.entry(s.name.as_str()).or_default().push(s);
        m
    });
    let names: Vec<&str> = by_name.keys().copied().collect();
    assert_eq!(
        names,
        [
            "arr/meter-1",
            "boiler-1/temp/inlet",
            "boiler-2/temp/outlet",
            "end/temp/x",
            "j/feeder/3/va",
            "j/feeder/3/vb"
        ]
    );
    let one = |n: &str| {
        let v = &by_name[n];
        assert_eq!(v.len(), 1, "{n}: {v:?}");
        v[0].clone()
    };
    let s = one("boiler-1/temp/inlet");
    assert_eq!((s.value, s.quality), (21.5, Quality::Good));
    assert!(recv_time(&s), "{s:?}");
    assert_eq!(one("boiler-2/temp/outlet").value, -30.0);
    let s = one("j/feeder/3/va");
    assert_eq!(
        (s.value, s.ts, s.quality),
        (230.25, 1_700_000_000_123_000_000, Quality::Uncertain)
    );
    let s = one("j/feeder/3/vb");
    assert_eq!((s.value, s.quality), (229.0, Quality::Good));
    assert!(
        recv_time(&s),
        "no timestamp in the payload: receive time; {s:?}"
    );
    let arr: Vec<(i64, f64)> = by_name["arr/meter-1"]
        .iter()
        .map(|s| (s.ts, s.value))
        .collect();
    assert_eq!(arr.len(), 3, "{arr:?}");
    assert_eq!(arr[0], (1_700_000_000_000_000_000, 1.0));
    assert_eq!(arr[1], (1_700_000_001_500_000_000, 2.5));
    // The good element of the half-bad array is kept, at the receive time.
    assert_eq!(arr[2].1, 4.0);
    assert!(arr[2].0 >= before && arr[2].0 <= after);
    let units: HashMap<String, String> = agent
        .catalog
        .lock()
        .unwrap()
        .defines()
        .iter()
        .map(|d| (d.name.as_str().to_string(), d.unit.clone()))
        .collect();
    assert_eq!(units["boiler-1/temp/inlet"], "degC");

    for reason in [
        "not_a_number",
        "bad_json",
        "missing_field",
        "bad_sensor_name",
        "bad_timestamp",
        "no_subscription",
    ] {
        assert_eq!(agent.errors("fmt", reason), 1, "{reason}");
    }
    assert_eq!(agent.errors("fmt", "connect"), 0);
    // Bad messages are acked like good ones: they would never get better.
    agent.all_acked("fmt").await;
    let acked = agent.counter("ferrule_agent_mqtt_acks_total", "fmt");
    run.stop().await;

    // So nothing comes back in the next session.
    let mut again = agent.start(
        base(
            "fmt",
            broker.port,
            json!([
                {"topic": "plant/+/temp/+", "sensor": "{1}/temp/{3}"}
            ]),
        ),
        64,
    );
    agent.subscribed("fmt").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        again.rx.try_recv().is_err(),
        "acked messages were redelivered"
    );
    assert_eq!(agent.counter("ferrule_agent_mqtt_acks_total", "fmt"), acked);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing() {
    const N: usize = 300;
    let mut broker = Broker::start().await;
    let agent = Agent::new();
    let port = broker.port;
    let cfg = || base("rs", port, json!([{"topic": "r/+", "sensor": "r/{1}"}]));
    let mut run = agent.start(cfg(), 64);
    agent.subscribed("rs").await;
    publish_one(broker.port, "r/probe", "0").await;
    agent
        .collect(&mut run.rx, |g| g.iter().any(|s| s.name == "r/probe"))
        .await;
    agent.all_acked("rs").await;
    run.stop().await;

    // The agent is away: the broker queues for its session, then restarts.
    let payloads: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(broker.port, "r/n", &refs).await;
    broker.restart().await;

    let mut run = agent.start(cfg(), 64);
    let got = agent
        .collect(&mut run.rx, |g| {
            g.iter().filter(|s| s.name == "r/n").count() >= N
        })
        .await;
    agent.all_acked("rs").await;
    // Anything extra (a duplicate) would show up by now.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut values: Vec<i64> = got
        .iter()
        .filter(|s| s.name == "r/n")
        .map(|s| s.value as i64)
        .collect();
    while let Ok(chunk) = run.rx.try_recv() {
        values.extend(agent.samples(chunk).iter().map(|s| s.value as i64));
    }
    assert_eq!(
        values,
        (0..N as i64).collect::<Vec<_>>(),
        "all, once, in order"
    );
    assert!(agent.counter("ferrule_agent_mqtt_connects_total", "rs") >= 2);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_spool_stops_acks_and_the_broker_keeps_the_rest() {
    const M: usize = 200;
    let mut broker = Broker::start().await;
    let agent = Agent::new();
    let cfg = base(
        "bp",
        broker.port,
        json!([{"topic": "bp/+", "sensor": "bp/{1}"}]),
    );
    // One chunk fits in the channel; nobody reads it: the spool is "full".
    let mut run = agent.start(cfg, 1);
    agent.subscribed("bp").await;
    let payloads: Vec<String> = (0..M).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(broker.port, "bp/n", &refs).await;

    // The input hands over one chunk, blocks on the next, and stops acking.
    let handed = || {
        agent
            .registry
            .counter_value("ferrule_agent_input_samples_total", &[("input", "bp")])
            .unwrap_or(0)
    };
    agent.until("a first chunk", |_| handed() > 0).await;
    let mut last = (
        handed(),
        agent.counter("ferrule_agent_mqtt_acks_total", "bp"),
    );
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = (
            handed(),
            agent.counter("ferrule_agent_mqtt_acks_total", "bp"),
        );
        if now == last {
            break;
        }
        last = now;
    }
    let (handed_over, acked) = last;
    let read = agent.counter("ferrule_agent_mqtt_messages_total", "bp");
    eprintln!("blocked: handed over {handed_over}, acked {acked}, read {read} of {M}");
    // Handed over is not durable: nothing is acked until the spool says so.
    assert!(
        acked == 0 && (handed_over as usize) < M / 2,
        "acked {acked}, handed over {handed_over}, read {read} of {M}"
    );
    // What it read beyond that is bounded by the broker's in-flight window (20).
    assert!((read as usize) < M / 2, "read {read} of {M} while blocked");

    // The broker restarts while the input is stuck; then the spool drains.
    broker.restart().await;
    let got = agent
        .collect(&mut run.rx, |g| {
            let mut seen: Vec<i64> = g.iter().map(|s| s.value as i64).collect();
            seen.sort_unstable();
            seen.dedup();
            seen.len() >= M
        })
        .await;
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for s in &got {
        *counts.entry(s.value as i64).or_default() += 1;
    }
    let repeated: Vec<i64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(v, _)| *v)
        .collect();
    eprintln!(
        "after the restart: {} samples for {M} messages; repeated: {repeated:?}",
        got.len()
    );
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..M as i64).collect::<Vec<_>>(),
        "every message arrives"
    );
    // At least once. Nothing was durable before the block, so nothing was
    // acked: what the broker had in flight when the restart cut the connection
    // (at most its window of 20: the chunks handed over, the one that blocked,
    // what sat in the socket) is redelivered once, and that is all that repeats.
    assert!(
        repeated.len() <= 20,
        "more values repeated than the broker's in-flight window (20) holds: {repeated:?}"
    );
    assert!(counts.values().all(|n| *n <= 2), "{counts:?}");
    assert!(agent.errors("bp", "connection_lost") >= 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    let tls_port = free_port();
    // Certificates first, in a dir the broker config can point at.
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let d = pki.path().display();
    let broker = Broker::start_with(&format!(
        "listener {tls_port} 127.0.0.1\n\
         cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         require_certificate true\n"
    ))
    .await;
    let agent = Agent::new();
    let mut cfg = base(
        "tls",
        tls_port,
        json!([{"topic": "s/+", "sensor": "s/{1}"}]),
    );
    cfg["host"] = json!("localhost");
    cfg["tls"] = json!({
        "ca": pki.path().join("ca.pem"),
        "cert": pki.path().join("client.pem"),
        "key": pki.path().join("client.key"),
    });
    let mut run = agent.start(cfg, 64);
    agent.subscribed("tls").await;
    // Published on the plain listener; delivered over TLS.
    publish_one(broker.port, "s/x", "7.5").await;
    let got = agent.collect(&mut run.rx, |g| !g.is_empty()).await;
    assert_eq!((got[0].name.as_str(), got[0].value), ("s/x", 7.5));
    run.stop().await;

    // Without the client certificate the broker refuses: counted, retried.
    let mut cfg = base(
        "tls-anon",
        tls_port,
        json!([{"topic": "s/+", "sensor": "s/{1}"}]),
    );
    cfg["host"] = json!("localhost");
    cfg["tls"] = json!({"ca": pki.path().join("ca.pem")});
    let run = agent.start(cfg, 64);
    agent
        .until("refused connects", |a| a.errors("tls-anon", "connect") >= 2)
        .await;
    assert_eq!(agent.gauge("ferrule_agent_mqtt_connected", "tls-anon"), 0);
    run.stop().await;
}

/// A CA, a server certificate for localhost and a client certificate, by the
/// `openssl` command (an implementation independent of the rustls under test).
fn make_pki(dir: &Path) {
    let openssl = tool("openssl");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ferrule test ca",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={who}"),
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_the_sensor_cap() {
    let broker = Broker::start().await;
    let agent = Agent::new();
    publish_with(broker.port, "c/old", "1", &["-r"]).await;
    let mut cfg = base(
        "cap",
        broker.port,
        json!([{"topic": "c/+", "sensor": "c/{1}"}]),
    );
    cfg["max_sensors"] = json!(2);
    let mut run = agent.start(cfg, 64);
    agent.subscribed("cap").await;
    // The retained value replayed on subscribing is skipped (and acked).
    agent
        .until("the retained message", |a| {
            a.counter("ferrule_agent_mqtt_retained_ignored_total", "cap") == 1
        })
        .await;
    for (topic, v) in [("c/a", "1"), ("c/b", "2"), ("c/c", "3"), ("c/a", "4")] {
        publish_one(broker.port, topic, v).await;
    }
    let got = agent.collect(&mut run.rx, |g| g.len() >= 3).await;
    let got: Vec<(&str, f64)> = got.iter().map(|s| (s.name.as_str(), s.value)).collect();
    assert_eq!(got, [("c/a", 1.0), ("c/b", 2.0), ("c/a", 4.0)]);
    assert_eq!(agent.errors("cap", "too_many_sensors"), 1);
    agent.all_acked("cap").await;
    run.stop().await;

    // With accept_retained, the replayed value is a sample.
    let mut cfg = base(
        "ret",
        broker.port,
        json!([{"topic": "c/+", "sensor": "c/{1}"}]),
    );
    cfg["accept_retained"] = json!(true);
    let mut run = agent.start(cfg, 64);
    let got = agent.collect(&mut run.rx, |g| !g.is_empty()).await;
    assert_eq!((got[0].name.as_str(), got[0].value), ("c/old", 1.0));
    run.stop().await;
}

/// `agent/examples/mqtt.toml` (merged into `deploy/agent.toml`) loads and
/// passes the input's checks, with its TLS section uncommented too.
#[test]
fn the_example_config_is_valid() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        inputs: Inputs,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inputs {
        mqtt: Vec<MqttConfig>,
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/mqtt.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let load = |text: &str| {
        ferrule_config::load_str::<File>(
            text,
            "mqtt.toml",
            Vec::<(String, String)>::new(),
            "FERRULE",
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .value
    };
    let file = load(&text);
    assert_eq!(file.inputs.mqtt.len(), 1);
    let mut bad = Vec::new();
    file.inputs.mqtt[0].validate("inputs.mqtt[0]", &mut bad);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(file.inputs.mqtt[0].subscriptions.len(), 3);
    // The commented TLS section and credentials parse too (the files need not exist
    // for parsing; validate() then reports them by key).
    let uncommented = text
        .replace("# [inputs.mqtt.tls]", "[inputs.mqtt.tls]")
        .replace("# ca = ", "ca = ")
        .replace("# cert = ", "cert = ")
        .replace("# key = ", "key = ")
        .replace("# username = ", "username = ")
        .replace("# password = ", "password = ");
    let file = load(&uncommented);
    let m = &file.inputs.mqtt[0];
    assert!(m.tls.is_some() && m.username.is_some() && m.password.is_some());
    let mut bad = Vec::new();
    m.validate("inputs.mqtt[0]", &mut bad);
    assert!(
        bad.len() == 1 && bad[0].key == "inputs.mqtt[0].tls",
        "{bad:?}"
    );
}
