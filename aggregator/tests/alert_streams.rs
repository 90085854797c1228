//! The stream outputs of the alert notifiers against the real things, started by
//! the project's scripts and read back by independent clients:
//!
//! 1. A real `redis-server` (Debian's 7.0, `scripts/redis.sh`): a `firing` and its
//!    `resolved` (a `pending` before them is not written) read back with `XRANGE`
//!    from `ferrule:alerts`, every field as documented; the `MAXLEN ~` cap holds.
//! 2. Redis SIGKILLed, then restarted: notifications sent meanwhile return at
//!    at once, wait in the queue (the gauge says so), the failures are counted
//!    `error`, and they arrive once Redis is back, nothing dropped.
//! 3. `#[ignore]`d (a JVM broker, some 20 s to start; `scripts/test.sh` runs it
//!    with `--ignored`): one Kafka broker (`scripts/kafka.sh start-single`); the
//!    alert topic missing at first (auto-create is off): counted as errors and
//!    retried; once created, every record arrives, read back with `kcat`: one
//!    JSON object each, keyed by fingerprint, one alert's records in one
//!    partition with its `firing` before its `resolved`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrule_aggregator::alerts::Notifiers;
use ferrule_aggregator::config::{AlertsSection, KafkaSection, RecordFormat, RedisSection};
use ferrule_rules::{Episode, Fingerprint, Severity, State, Transition};
use ferrule_telemetry::Registry;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

const REDIS_OUTPUT: &str = "redis:ferrule:alerts";

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `scripts/NAME ARGS`, returning its stdout; panics with its stderr.
fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo().join("scripts").join(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// Stream outputs only: no Alertmanager, no PagerDuty.
fn section(queue: usize) -> AlertsSection {
    AlertsSection {
        rules: None,
        queue_capacity: queue,
        evaluate_queue_batches: 1024,
        evaluate_queue_max_bytes: 64 << 20,
        forget_agent_after_secs: 300,
        alertmanager: vec![],
        pagerduty: None,
        redis_stream: true,
        redis_stream_max_len: 100_000,
        page_through_redis: true,
        page_lease_ms: 5000,
        redis_retry_for_secs: 600,
        kafka: true,
        kafka_topic: None,
        kafka_timeout_ms: 3000,
        kafka_retry_for_secs: 600,
    }
}

fn redis_section(url: &str) -> RedisSection {
    RedisSection {
        url: url.into(),
        username: None,
        password: None,
        cluster: false,
        tls_ca_file: None,
        tls_cert_file: None,
        tls_key_file: None,
        stream_prefix: "ferrule".into(),
        max_in_flight: 512,
        max_len: 1_000_000,
        trim_interval_ms: 1000,
        response_timeout_ms: 500,
        reconnect_max_ms: 1000,
    }
}

fn count(registry: &Registry, name: &str, output: &str, key: &str, value: &str) -> u64 {
    registry
        .counter_value(name, &[("output", output), (key, value)])
        .unwrap_or(0)
}

fn sent(registry: &Registry, output: &str, result: &str) -> u64 {
    count(
        registry,
        "ferrule_aggregator_alert_notifications_total",
        output,
        "result",
        result,
    )
}

fn dropped(registry: &Registry, output: &str) -> u64 {
    ["queue_full", "gave_up", "rejected"]
        .iter()
        .map(|r| {
            count(
                registry,
                "ferrule_aggregator_alert_notifications_dropped_total",
                output,
                "reason",
                r,
            )
        })
        .sum()
}

/// The alert queue gauge of `output`, from the exposition.
fn queued(registry: &Registry, output: &str) -> i64 {
    let prefix = format!("ferrule_aggregator_alert_queue{{output=\"{output}\"}} ");
    registry
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(-1)
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- Redis ----------------------------------------------------------------------

/// A throwaway redis-server, killed when dropped.
struct Redis {
    dir: tempfile::TempDir,
    url: String,
}

impl Redis {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().to_string();
        let out = script("redis.sh", &["start", dir.path().to_str().unwrap(), &port]);
        let url = out
            .lines()
            .find_map(|l| l.strip_prefix("url="))
            .unwrap_or_else(|| panic!("no url= line: {out:?}"))
            .to_string();
        Self { dir, url }
    }

    fn run(&self, cmd: &str) {
        script("redis.sh", &[cmd, self.dir.path().to_str().unwrap()]);
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Every entry of `stream`, as (id, fields).
    async fn xrange(&self, stream: &str) -> Vec<(String, HashMap<String, String>)> {
        redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }

    /// Every entry of `stream` once there are at least `n`.
    async fn wait_entries(&self, stream: &str, n: usize) -> Vec<(String, HashMap<String, String>)> {
        let start = Instant::now();
        loop {
            let entries = self.xrange(stream).await;
            if entries.len() >= n {
                return entries;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{n} entries in {stream}: {entries:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/redis.sh"))
            .args(["kill", self.dir.path().to_str().unwrap()])
            .output();
    }
}

fn check_entry(f: &HashMap<String, String>, t: &Transition, state: &str) {
    assert_eq!(f["state"], state, "{f:?}");
    assert_eq!(f["rule"], "undervoltage");
    assert_eq!(f["site"], "substation-7");
    assert_eq!(f["agent"], "rtu-3");
    assert_eq!(f["sensor"], t.sensor);
    assert_eq!(f["value"].parse::<f64>().unwrap(), 180.5);
    assert_eq!(f["severity"], "critical");
    assert_eq!(f["fingerprint"], t.fingerprint.to_string());
    assert_eq!(f["fingerprint"].len(), 16);
    assert_eq!(f["episode"], t.episode.to_string());
    assert_eq!(f["ts_ns"].parse::<i64>().unwrap(), t.ts_ns);
    assert_eq!(f["annotation"], t.annotation);
    let labels: Value = serde_json::from_str(&f["labels"]).unwrap();
    assert_eq!(labels, serde_json::json!({"team": "grid"}));
    assert_eq!(f["quality"], "good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firing_and_resolved_are_added_to_the_redis_stream() {
    let redis = Redis::start();
    let registry = Registry::new();
    let mut cfg = section(1000);
    cfg.redis_stream_max_len = 10;
    let n = Notifiers::start(&cfg, Some(&redis_section(&redis.url)), None, &registry).unwrap();
    assert_eq!(n.outputs(), vec![REDIS_OUTPUT.to_string()]);
    let start = now_ns() - 2_000_000_000;
    let firing = transition(State::Firing, "feed/va", start, start + 1_000_000_000);
    let resolved = transition(State::Resolved, "feed/va", start, start + 1_500_000_000);
    n.send(&transition(State::Pending, "feed/va", start, start));
    n.send(&firing);
    n.send(&resolved);
    let entries = redis.wait_entries("ferrule:alerts", 2).await;
    assert_eq!(entries.len(), 2, "pending is not written: {entries:?}");
    check_entry(&entries[0].1, &firing, "firing");
    check_entry(&entries[1].1, &resolved, "resolved");
    // The documented fields, and the aggregator that wrote it.
    assert_eq!(entries[0].1.len(), 14, "{:?}", entries[0].1);
    assert!(!entries[0].1["aggregator"].is_empty());

    // The cap: 500 more alerts leave about `redis_stream_max_len` (Redis trims
    // `~` by whole stream nodes of up to 100 entries).
    for i in 0..500 {
        n.send(&transition(
            State::Firing,
            &format!("feed/{i}"),
            start,
            start,
        ));
    }
    let t = Instant::now();
    loop {
        let last: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
            .arg("ferrule:alerts")
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut redis.conn().await)
            .await
            .unwrap();
        if last.first().is_some_and(|(_, f)| f["sensor"] == "feed/499") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the 500 not written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let len: u64 = redis::cmd("XLEN")
        .arg("ferrule:alerts")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert!((10..=110).contains(&len), "XLEN {len}");
    assert_eq!(sent(&registry, REDIS_OUTPUT, "error"), 0);
    assert_eq!(dropped(&registry, REDIS_OUTPUT), 0);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_gets_what_was_queued() {
    let redis = Redis::start();
    let registry = Registry::new();
    let n = Notifiers::start(
        &section(100),
        Some(&redis_section(&redis.url)),
        None,
        &registry,
    )
    .unwrap();
    let start = now_ns() - 2_000_000_000;
    n.send(&transition(State::Firing, "feed/va", start, start));
    wait_for("the first delivered", Duration::from_secs(10), || {
        sent(&registry, REDIS_OUTPUT, "ok") == 1
    })
    .await;

    redis.run("kill");
    let firing = transition(State::Firing, "feed/vb", start, start + 1);
    let resolved = transition(State::Resolved, "feed/vb", start, start + 2);
    n.send(&firing);
    wait_for("the failure counted", Duration::from_secs(10), || {
        sent(&registry, REDIS_OUTPUT, "error") >= 1
    })
    .await;
    // The task is retrying the firing: the resolved waits in the queue.
    let t = Instant::now();
    n.send(&resolved);
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "send waited for Redis: {:?}",
        t.elapsed()
    );
    assert_eq!(queued(&registry, REDIS_OUTPUT), 1);
    wait_for("retries counted", Duration::from_secs(10), || {
        sent(&registry, REDIS_OUTPUT, "error") >= 3
    })
    .await;
    assert_eq!(sent(&registry, REDIS_OUTPUT, "ok"), 1);

    redis.run("restart");
    // No persistence: the restarted Redis holds only what came after.
    let entries = redis.wait_entries("ferrule:alerts", 2).await;
    let got: Vec<(&str, &str)> = entries
        .iter()
        .map(|(_, f)| (f["state"].as_str(), f["sensor"].as_str()))
        .collect();
    assert_eq!(got, vec![("firing", "feed/vb"), ("resolved", "feed/vb")]);
    check_entry(&entries[0].1, &firing, "firing");
    check_entry(&entries[1].1, &resolved, "resolved");
    assert_eq!(dropped(&registry, REDIS_OUTPUT), 0);
    println!(
        "redis down: {} failed attempts, delivered after restart",
        sent(&registry, REDIS_OUTPUT, "error")
    );
    n.stop().await;
}

// ---- Kafka ----------------------------------------------------------------------

/// One throwaway broker, stopped when dropped.
struct Kafka {
    dir: tempfile::TempDir,
    bootstrap: String,
}

impl Kafka {
    fn start() -> Self {
        if let Err(e) = Command::new("bash")
            .arg(repo().join("scripts/kafka.sh"))
            .arg("fetch")
            .output()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                o.status
                    .success()
                    .then_some(())
                    .ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())
            })
        {
            panic!("this test needs Java 17+ and the Kafka jars (`scripts/kafka.sh fetch`, mvn once): {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        // The broker on PORT, its controller on PORT+100.
        let port = (0..200)
            .map(|_| free_port())
            .find(|p| *p < 65_000 && std::net::TcpListener::bind(("127.0.0.1", *p + 100)).is_ok())
            .expect("free ports");
        let out = script(
            "kafka.sh",
            &[
                "start-single",
                dir.path().to_str().unwrap(),
                &port.to_string(),
            ],
        );
        let bootstrap = out
            .lines()
            .find_map(|l| l.strip_prefix("bootstrap="))
            .unwrap_or_else(|| panic!("no bootstrap= line: {out:?}"))
            .trim()
            .to_string();
        Self { dir, bootstrap }
    }

    /// Every record of `topic` as (partition, key, value), read with kcat.
    fn read(&self, topic: &str) -> Vec<(u32, String, Value)> {
        let out = Command::new("kcat")
            .args(["-b", &self.bootstrap, "-t", topic, "-C", "-e", "-q"])
            .args(["-o", "beginning", "-f", "%p\t%k\t%s\n"])
            .output()
            .expect("kcat (apt-get install kcat)");
        assert!(
            out.status.success(),
            "kcat: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut parts = l.splitn(3, '\t');
                let p = parts.next().unwrap().parse().unwrap();
                let k = parts.next().unwrap().to_string();
                let v = serde_json::from_str(parts.next().unwrap()).unwrap();
                (p, k, v)
            })
            .collect()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/kafka.sh"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}

fn kafka_section(bootstrap: &str) -> KafkaSection {
    KafkaSection {
        brokers: bootstrap.into(),
        topic: "ferrule-batches".into(),
        format: RecordFormat::Compact,
        compression: "lz4".into(),
        linger_ms: 5,
        batch_bytes: 1 << 20,
        message_timeout_ms: 300_000,
        queue_max_kbytes: 262_144,
        client_id: "ferrule-aggregator".into(),
        routes: vec![],
        properties: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts a Kafka broker (JVM); scripts/test.sh runs it with --ignored"]
async fn alert_records_reach_the_kafka_topic_once_it_exists() {
    let kafka = Kafka::start();
    let topic = "ferrule-batches.alerts";
    let output = format!("kafka:{topic}");
    let registry = Registry::new();
    let n = Notifiers::start(
        &section(100),
        None,
        Some(&kafka_section(&kafka.bootstrap)),
        &registry,
    )
    .unwrap();
    assert_eq!(n.outputs(), vec![output.clone()]);
    let start = now_ns() - 2_000_000_000;
    let a_fire = transition(State::Firing, "feed/va", start, start + 1);
    let a_res = transition(State::Resolved, "feed/va", start, start + 2);
    let b_fire = transition(State::Firing, "feed/vb", start, start + 3);
    let b_res = transition(State::Resolved, "feed/vb", start, start + 4);

    // No topic yet (auto-create is off): failures, counted, retried.
    n.send(&transition(State::Pending, "feed/va", start, start));
    n.send(&a_fire);
    wait_for("the missing topic counted", Duration::from_secs(30), || {
        sent(&registry, &output, "error") >= 1
    })
    .await;
    assert_eq!(sent(&registry, &output, "ok"), 0);
    println!(
        "missing topic: {} failed attempts",
        sent(&registry, &output, "error")
    );
    script(
        "kafka.sh",
        &["create-topic", &kafka.bootstrap, topic, "3", "1"],
    );
    n.send(&a_res);
    n.send(&b_fire);
    n.send(&b_res);
    wait_for("all delivered", Duration::from_secs(60), || {
        sent(&registry, &output, "ok") >= 1 && queued(&registry, &output) == 0
    })
    .await;
    // The last batch may still be in flight after the queue emptied.
    let mut records = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        records = kafka.read(topic);
        let states: std::collections::BTreeSet<(String, String)> = records
            .iter()
            .map(|(_, _, v)| {
                (
                    v["episode"].as_str().unwrap().to_string(),
                    v["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if states.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("{} records on {topic}", records.len());
    for (want, state) in [
        (&a_fire, "firing"),
        (&a_res, "resolved"),
        (&b_fire, "firing"),
        (&b_res, "resolved"),
    ] {
        let mine: Vec<&(u32, String, Value)> = records
            .iter()
            .filter(|(_, _, v)| v["sensor"] == want.sensor.as_str() && v["state"] == state)
            .collect();
        assert!(
            !mine.is_empty(),
            "{state} of {} missing: {records:?}",
            want.sensor
        );
        let (_, key, v) = mine[0];
        assert_eq!(key, &want.fingerprint.to_string(), "keyed by fingerprint");
        assert_eq!(v["rule"], "undervoltage");
        assert_eq!(v["site"], "substation-7");
        assert_eq!(v["agent"], "rtu-3");
        assert_eq!(v["value"], 180.5);
        assert_eq!(v["severity"], "critical");
        assert_eq!(v["fingerprint"], want.fingerprint.to_string());
        assert_eq!(v["episode"], want.episode.to_string());
        assert_eq!(v["ts_ns"], want.ts_ns);
        assert_eq!(v["annotation"], want.annotation.as_str());
        assert_eq!(v["labels"], serde_json::json!({"team": "grid"}));
        assert_eq!(v["quality"], "good");
    }
    // One alert's records share a partition, its firing first.
    for sensor in ["feed/va", "feed/vb"] {
        let mine: Vec<&(u32, String, Value)> = records
            .iter()
            .filter(|(_, _, v)| v["sensor"] == sensor)
            .collect();
        assert!(mine.iter().all(|(p, _, _)| *p == mine[0].0), "{mine:?}");
        assert_eq!(mine[0].2["state"], "firing", "{mine:?}");
    }
    assert!(records.iter().all(|(_, _, v)| v["state"] != "pending"));
    assert_eq!(dropped(&registry, &output), 0);
    n.stop().await;
}

// ---- Paging through Redis: the claim script ------------------------------------

/// What the claim script (`page_group::CLAIM`) answers for one entry.
async fn claim(
    con: &mut redis::aio::MultiplexedConnection,
    kind: &str,
    id: &str,
    writer: &str,
    episode: &str,
) -> (String, String) {
    let fields = format!("{{\"episode\":\"{episode}\"}}");
    redis::cmd("EVAL")
        .arg(ferrule_aggregator::alerts::page_group::CLAIM)
        .arg(1)
        .arg("t:open")
        .arg(kind)
        .arg("00000000000000ab")
        .arg(id)
        .arg(writer)
        .arg(fields)
        .arg(1_700_000_000_000u64)
        .arg(episode)
        .query_async(con)
        .await
        .unwrap()
}

/// The claim script, against a real Redis, entry by entry as a paging group
/// meets them: a copy of an open episode is not paged, a resolve closes the
/// episode that was paged, entries read again after a takeover are paged again
/// only if they were the last recorded, a new episode pages, and a damaged
/// record, or a key of the wrong type in place of the hash or the lease, does
/// not stop paging.
#[tokio::test]
async fn the_claim_script_pages_each_episode_once_whatever_is_read_again() {
    let redis = Redis::start();
    let mut con = redis.conn().await;
    let page = |ep: &str| ("page".to_string(), ep.to_string());
    let same = ("same".to_string(), String::new());
    let stale = ("stale".to_string(), String::new());
    let ep1 = "00000000000000ab-100";
    let ep2 = "00000000000000ab-150";
    // A's firing opens; B's copy (a later start, after a failover) does not page.
    assert_eq!(claim(&mut con, "F", "10-0", "A", ep1).await, page(""));
    assert_eq!(claim(&mut con, "F", "11-0", "B", ep2).await, same);
    // A's firing read again (a takeover before its XACK): the last opening, paged again.
    assert_eq!(claim(&mut con, "F", "10-0", "A", ep1).await, page(""));
    // B's resolve closes the episode that was paged, with its identity.
    assert_eq!(claim(&mut con, "R", "12-0", "B", ep2).await, page(ep1));
    // Read again after the resolve: the firing is stale, the resolve pages again
    // with the same identity, another aggregator's resolve is a copy.
    assert_eq!(claim(&mut con, "F", "10-0", "A", ep1).await, stale);
    assert_eq!(claim(&mut con, "R", "12-0", "B", ep2).await, page(ep1));
    assert_eq!(claim(&mut con, "R", "13-0", "A", ep1).await, same);
    // A new episode pages; its resolve closes it.
    let ep3 = "00000000000000ab-900";
    assert_eq!(claim(&mut con, "F", "20-0", "A", ep3).await, page(""));
    assert_eq!(claim(&mut con, "R", "21-0", "A", ep3).await, page(ep3));
    // A damaged record reads as none: the next entry pages and repairs it.
    let _: () = redis::cmd("HSET")
        .arg("t:open")
        .arg("00000000000000ab")
        .arg("F|garbage")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(claim(&mut con, "F", "30-0", "A", ep3).await, page(""));
    // Forgetting: only the aggregator that last reported it drops an open alert.
    let forgetter = con.clone();
    let forget = |who: &'static str| {
        let mut con = forgetter.clone();
        async move {
            let n: i64 = redis::cmd("EVAL")
                .arg(ferrule_aggregator::alerts::page_group::FORGET)
                .arg(1)
                .arg("t:open")
                .arg("00000000000000ab")
                .arg(who)
                .query_async(&mut con)
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(claim(&mut con, "F", "31-0", "B", ep3).await, same);
    assert_eq!(forget("A").await, 0, "B reported it last");
    assert_eq!(forget("B").await, 1);
    // Forgotten: the next firing is a new incident.
    assert_eq!(claim(&mut con, "F", "40-0", "A", ep3).await, page(""));
    // The hash replaced by another type (WRONGTYPE for every claim): forgets
    // pass over it, the next claim replaces it and pages.
    let _: () = redis::cmd("SET")
        .arg("t:open")
        .arg("not a hash")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(forget("A").await, 0);
    assert_eq!(claim(&mut con, "F", "50-0", "A", ep3).await, page(""));
    // The lease key replaced by a hash: the lease script takes it all the same.
    let _: () = redis::cmd("HSET")
        .arg("t:lease")
        .arg("not")
        .arg("a string")
        .query_async(&mut con)
        .await
        .unwrap();
    let took: i64 = redis::cmd("EVAL")
        .arg(ferrule_aggregator::alerts::page_group::LEASE)
        .arg(1)
        .arg("t:lease")
        .arg("token-1")
        .arg(1000)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(took, 1);
}
