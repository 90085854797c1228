//! Kafka acceptance tests: the real `ferrule-agent` and `ferrule-aggregator`
//! binaries on loopback, the aggregator committing to real Apache Kafka brokers
//! started by `scripts/kafka.sh`, and every claim checked by reading the topic back
//! with an independent consumer (`scripts/kafka/consume.py`, confluent-kafka):
//! distinct (ferrule-agent, ferrule-epoch, ferrule-seq) headers, the sum of
//! ferrule-count, partitions and offsets. ferrule's own counters are only used to
//! know when to look, and to show what happened.
//!
//! 1. Basic: one broker, a 3-partition topic, two agents: every generated sample is
//!    in Kafka, sequence numbers 1..=last without a gap, each agent in one
//!    partition in sequence order, `/readyz` ok.
//! 2. The single broker stopped for 10 s mid-stream and restarted: nothing lost, no
//!    process died, nothing dropped.
//! 3. A 3-broker cluster (RF 3, min.insync.replicas 2): the leader of the agents'
//!    partition killed mid-stream loses nothing; a second broker killed (below
//!    min ISR) stops the acks and the agents spool (backpressure, not loss); both
//!    restarted, everything arrives.
//! 4. The aggregator's memory through a 2-minute Kafka outage at 60 000 events/s:
//!    bounded and flat while the agents spool; everything arrives afterwards.
//!
//! Needs Java 17+ (and mvn once, to fetch the Kafka jars into ~/.cache/ferrule: every
//! test runs `scripts/kafka.sh fetch`, which does nothing once they are there) and
//! python3 with confluent-kafka (`pip install confluent-kafka`); a test fails naming
//! what is missing, it never skips. Each test has its own temporary directory, ports,
//! PKI and brokers; the brokers are stopped (`scripts/kafka.sh stop`) before the
//! directory is deleted, pass or fail. They run one at a time (a lock below) and are
//! run by `scripts/test.sh` with `--ignored`. On failure the tail of every
//! process's log (the brokers' too) is printed.
//!
//! Developer shortcut: with `FERRULE_TEST_KAFKA_BOOTSTRAP=host:port[,...]` set, test 1
//! starts no broker and uses that (plaintext) cluster instead: it creates a uniquely
//! named topic there (`ferrule-test-...`, 3 partitions, replication factor
//! `FERRULE_TEST_KAFKA_REPLICATION`, default 1) with `scripts/kafka.sh create-topic`,
//! and deletes it at the end. For example, against `scripts/kafka.sh start-single
//! /tmp/k`:
//!
//! ```text
//! FERRULE_TEST_KAFKA_BOOTSTRAP=127.0.0.1:19092 \
//!   cargo test -p ferrule-loadtest --test kafka basic -- --ignored --nocapture
//! ```
//!
//! The fault tests (2-4) always start their own brokers.

// Plain test threads, never an async executor: blocking sleeps are what we want.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

const SITE: &str = "site-kafka";
/// The synthetic input's sensors per tick.
const SENSORS: u64 = 7;
/// The topic the tests' own brokers hold.
const TOPIC: &str = "ferrule-batches";
/// Long enough for an agent or the aggregator to drain and exit on a loaded machine.
const STOP: Duration = Duration::from_secs(45);

/// One test at a time: brokers, agents and measurements share two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sleep(d: Duration) {
    std::thread::sleep(d);
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        sleep(t - now);
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kafka_script() -> PathBuf {
    repo().join("scripts/kafka.sh")
}

/// Runs `scripts/kafka.sh ARGS`: its stdout, or its stderr as the error.
fn try_kafka_sh(args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(kafka_script())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", kafka_script().display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "scripts/kafka.sh {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn kafka_sh(args: &[&str], env: &[(&str, &str)]) -> String {
    try_kafka_sh(args, env).unwrap_or_else(|e| panic!("{e}"))
}

/// Java and the Kafka jars (fetched once), and the Python consumer's library:
/// fails, naming what is missing, rather than skipping.
fn prerequisites() {
    if let Err(e) = try_kafka_sh(&["fetch"], &[]) {
        panic!(
            "the Kafka tests need Java 17+ (and mvn once, to fetch the Kafka jars into ~/.cache/ferrule); `scripts/kafka.sh fetch` failed:\n{e}"
        );
    }
    let py = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .output();
    match py {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the Kafka tests read the topic back with scripts/kafka/consume.py, which needs confluent-kafka: pip install confluent-kafka\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("the Kafka tests need python3 (with confluent-kafka): {e}"),
    }
}

/// A port `p` such that `p + o` is free on 127.0.0.1 for every offset given.
fn free_port_block(offsets: &[u16]) -> u16 {
    procs::free_port_block(offsets).unwrap_or_else(|e| panic!("{e}"))
}

fn read_log(path: &Path) -> String {
    procs::strip_ansi(&String::from_utf8_lossy(
        &std::fs::read(path).unwrap_or_default(),
    ))
}

/// The last `n` lines of a log.
fn tail(path: &Path, n: usize) -> String {
    let text = read_log(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Every series of `name`, as rendered (for messages).
fn metric_lines(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name))
        .map(str::to_string)
        .collect()
}

// ---- brokers -----------------------------------------------------------------------

/// Kafka brokers this test started (stopped when dropped), or an external cluster.
struct Brokers {
    /// Where the brokers this test started live; none for an external cluster.
    dir: Option<PathBuf>,
    cluster: bool,
    bootstrap: String,
    /// A topic to delete when dropped (external cluster).
    cleanup_topic: Option<String>,
}

fn parse_bootstrap(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("bootstrap="))
        .unwrap_or_else(|| panic!("scripts/kafka.sh printed no bootstrap= line: {out:?}"))
        .trim()
        .to_string()
}

impl Brokers {
    /// One broker (`start-single`) in `dir`.
    fn single(dir: &Path) -> Self {
        let mut b = Self {
            dir: Some(dir.to_path_buf()),
            cluster: false,
            bootstrap: String::new(),
            cleanup_topic: None,
        };
        let port = free_port_block(&[0, 100]).to_string();
        let t = Instant::now();
        let out = kafka_sh(&["start-single", dir.to_str().unwrap(), &port], &[]);
        b.bootstrap = parse_bootstrap(&out);
        println!(
            "kafka: single broker at {} up in {:.1} s",
            b.bootstrap,
            t.elapsed().as_secs_f64()
        );
        b
    }

    /// Three brokers (`start-cluster`) in `dir`, `props` appended to their
    /// configuration (`FERRULEDEV_KAFKA_PROPS`).
    fn cluster(dir: &Path, props: &str) -> Self {
        let mut b = Self {
            dir: Some(dir.to_path_buf()),
            cluster: true,
            bootstrap: String::new(),
            cleanup_topic: None,
        };
        let t = Instant::now();
        let attempt = |d: &Path| {
            let port = free_port_block(&[0, 1, 2, 100, 101, 102]).to_string();
            try_kafka_sh(
                &["start-cluster", d.to_str().unwrap(), &port],
                &[("FERRULEDEV_KAFKA_PROPS", props)],
            )
        };
        // A broker can die at start-up on a loaded machine: once more, on other
        // ports, in a fresh directory.
        let out = attempt(dir).unwrap_or_else(|e| {
            eprintln!("kafka: start-up failed, once more on other ports: {e}");
            let _ = try_kafka_sh(&["stop", dir.to_str().unwrap()], &[]);
            let retry = dir.join("retry");
            b.dir = Some(retry.clone());
            attempt(&retry).unwrap_or_else(|e| panic!("{e}"))
        });
        b.bootstrap = parse_bootstrap(&out);
        println!(
            "kafka: 3-broker cluster at {} up in {:.1} s",
            b.bootstrap,
            t.elapsed().as_secs_f64()
        );
        b
    }

    fn external(bootstrap: &str) -> Self {
        println!("kafka: using the cluster at {bootstrap} (FERRULE_TEST_KAFKA_BOOTSTRAP)");
        Self {
            dir: None,
            cluster: false,
            bootstrap: bootstrap.to_string(),
            cleanup_topic: None,
        }
    }

    fn own_dir(&self) -> &Path {
        self.dir
            .as_deref()
            .expect("an external cluster is not ours to stop or restart")
    }

    /// The directory of broker `node` (node ids are 1..=3; a single broker is 1).
    fn broker_dir(&self, node: u32) -> PathBuf {
        let dir = self.own_dir();
        if self.cluster {
            dir.join(format!("broker-{node}"))
        } else {
            assert_eq!(node, 1, "a single broker is node 1");
            dir.to_path_buf()
        }
    }

    fn create_topic(&self, name: &str, partitions: u32, replication: u32) {
        kafka_sh(
            &[
                "create-topic",
                &self.bootstrap,
                name,
                &partitions.to_string(),
                &replication.to_string(),
            ],
            &[],
        );
    }

    /// Stops every broker (SIGTERM, controlled shutdown); how long it took.
    fn stop_all(&self) -> Duration {
        let t = Instant::now();
        kafka_sh(&["stop", self.own_dir().to_str().unwrap()], &[]);
        t.elapsed()
    }

    /// SIGKILLs broker `node`.
    fn kill(&self, node: u32) {
        kafka_sh(&["kill", self.broker_dir(node).to_str().unwrap()], &[]);
    }

    /// Starts broker `node` again and waits until it is registered; how long it took.
    fn restart(&self, node: u32) -> Duration {
        let t = Instant::now();
        kafka_sh(&["restart", self.broker_dir(node).to_str().unwrap()], &[]);
        t.elapsed()
    }

    /// The node id of the leader of `topic`-`partition`.
    fn leader(&self, topic: &str, partition: u64) -> u32 {
        let out = kafka_sh(
            &["leader", &self.bootstrap, topic, &partition.to_string()],
            &[],
        );
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("kafka.sh leader printed {out:?}"))
    }

    /// Waits until no partition of `topic` is under-replicated; how long it took.
    fn wait_isr(&self, topic: &str, secs: u64) -> Duration {
        let t = Instant::now();
        kafka_sh(
            &["wait-isr", &self.bootstrap, topic, &secs.to_string()],
            &[],
        );
        t.elapsed()
    }

    fn print_logs(&self) {
        if self.dir.is_none() {
            return;
        }
        let nodes: Vec<u32> = if self.cluster { vec![1, 2, 3] } else { vec![1] };
        for n in nodes {
            let log = self.broker_dir(n).join("server.log");
            eprintln!(
                "---- kafka broker {n}: last 25 lines of {} ----\n{}",
                log.display(),
                tail(&log, 25)
            );
        }
    }
}

impl Drop for Brokers {
    fn drop(&mut self) {
        if let Some(topic) = &self.cleanup_topic {
            let r = try_kafka_sh(
                &[
                    "run-class",
                    "org.apache.kafka.tools.TopicCommand",
                    "--bootstrap-server",
                    &self.bootstrap,
                    "--delete",
                    "--topic",
                    topic,
                ],
                &[],
            );
            match r {
                Ok(_) => println!("kafka: deleted test topic {topic} on {}", self.bootstrap),
                Err(e) => eprintln!("kafka: could not delete test topic {topic}: {e}"),
            }
        }
        if let Some(dir) = &self.dir {
            if let Err(e) = try_kafka_sh(&["stop", dir.to_str().unwrap_or_default()], &[]) {
                eprintln!(
                    "kafka: stopping the brokers under {} failed: {e}",
                    dir.display()
                );
            }
        }
    }
}

// ---- reading the topic back --------------------------------------------------------

/// One Kafka record as the independent consumer saw it.
#[derive(Debug, Clone)]
struct Rec {
    partition: u64,
    offset: u64,
    /// The record key, as text.
    key: String,
    agent: String,
    epoch: u64,
    seq: u64,
    count: u64,
    encoding: String,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Reads the whole topic with `scripts/kafka/consume.py --to-end`.
fn consume(bootstrap: &str, topic: &str) -> Vec<Rec> {
    let out = Command::new("python3")
        .arg(repo().join("scripts/kafka/consume.py"))
        .args(["--to-end", "--timeout", "300", bootstrap, topic])
        .output()
        .unwrap_or_else(|e| panic!("running scripts/kafka/consume.py: {e}"));
    assert!(
        out.status.success(),
        "scripts/kafka/consume.py {bootstrap} {topic} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(end)"),
        "consume.py did not reach the end of {topic}: {stderr}"
    );
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("consume.py printed a bad line ({e}): {l}"));
            let h = &v["headers"];
            let text = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            let num = |k: &str| {
                h[k].as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("record without a numeric {k} header: {l}"))
            };
            Rec {
                partition: v["partition"].as_u64().unwrap(),
                offset: v["offset"].as_u64().unwrap(),
                key: String::from_utf8_lossy(&unhex(v["key"].as_str().unwrap_or_default()))
                    .into_owned(),
                agent: text("ferrule-agent"),
                epoch: num("ferrule-epoch"),
                seq: num("ferrule-seq"),
                count: num("ferrule-count"),
                encoding: text("ferrule-encoding"),
            }
        })
        .collect()
}

/// What Kafka holds of one agent.
#[derive(Debug, Default)]
struct InKafka {
    /// (epoch, seq) -> (ferrule-count, partition, offset) of its first copy.
    batches: BTreeMap<(u64, u64), (u64, u64, u64)>,
    records: u64,
    partitions: BTreeSet<u64>,
    /// Records whose key is not their ferrule-agent header.
    bad_keys: u64,
    /// Copies of one (epoch, seq) with different counts.
    inconsistent: u64,
    /// Records without a ferrule-encoding header.
    no_encoding: u64,
}

impl InKafka {
    fn samples(&self) -> u64 {
        self.batches.values().map(|b| b.0).sum()
    }

    fn duplicates(&self) -> u64 {
        self.records - self.batches.len() as u64
    }

    fn epochs(&self) -> BTreeSet<u64> {
        self.batches.keys().map(|k| k.0).collect()
    }

    /// Consecutive batches (by seq) whose first copies are not in offset order.
    fn order_inversions(&self) -> u64 {
        let offsets: Vec<(u64, u64)> = self.batches.values().map(|b| (b.1, b.2)).collect();
        offsets.windows(2).filter(|w| w[1] <= w[0]).count() as u64
    }
}

fn by_agent(recs: &[Rec]) -> BTreeMap<String, InKafka> {
    let mut m: BTreeMap<String, InKafka> = BTreeMap::new();
    for r in recs {
        let a = m.entry(r.agent.clone()).or_default();
        a.records += 1;
        a.partitions.insert(r.partition);
        if r.key != r.agent {
            a.bad_keys += 1;
        }
        if r.encoding.is_empty() {
            a.no_encoding += 1;
        }
        match a.batches.get(&(r.epoch, r.seq)) {
            Some(b) if b.0 != r.count => a.inconsistent += 1,
            Some(_) => {}
            None => {
                a.batches
                    .insert((r.epoch, r.seq), (r.count, r.partition, r.offset));
            }
        }
    }
    m
}

// ---- processes ---------------------------------------------------------------------

struct Aggregator {
    quic: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    metrics: SocketAddr,
    proc: Option<Proc>,
}

impl Aggregator {
    fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    fn metrics(&self) -> String {
        procs::http_get(self.metrics, "/metrics").unwrap_or_default()
    }

    fn metric(&self, name: &str) -> u64 {
        procs::metric_sum(&self.metrics(), name)
    }

    fn readyz(&self) -> String {
        procs::http_get(self.metrics, "/readyz")
            .map_or_else(|e| format!("(no answer: {e})"), |b| b.trim().to_string())
    }

    fn rss_kib(&self) -> u64 {
        self.proc.as_ref().and_then(Proc::rss_kib).unwrap_or(0)
    }
}

struct Agent {
    name: String,
    /// `site/agent`: the record key and the ferrule-agent header.
    key: String,
    total: u64,
    spool: PathBuf,
    config: PathBuf,
    log: PathBuf,
    metrics: SocketAddr,
    proc: Option<Proc>,
}

impl Agent {
    fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    fn metrics(&self) -> String {
        procs::http_get(self.metrics, "/metrics").unwrap_or_default()
    }
}

/// What one test runs. When dropped: every log's tail is printed if the test
/// failed, then the processes are killed, then the brokers stopped, then the
/// directory deleted (fields drop in this order).
struct Rig {
    agg: Aggregator,
    agents: Vec<Agent>,
    brokers: Brokers,
    pki: DevPki,
    dir: PathBuf,
    topic: String,
    _tmp: tempfile::TempDir,
}

/// Which brokers a test uses.
enum Setup {
    /// `FERRULE_TEST_KAFKA_BOOTSTRAP`'s cluster if set, else one broker.
    ExternalOrSingle,
    Single,
    /// Three brokers with these extra properties.
    Cluster(&'static str),
}

impl Rig {
    /// Brokers, a topic with `partitions`, a PKI and an aggregator configuration
    /// (`credit` and `kafka_more` appended to its [credit] and [kafka] sections).
    fn new(setup: Setup, partitions: u32, credit: &str, kafka_more: &str) -> Self {
        prerequisites();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let external = match setup {
            Setup::ExternalOrSingle => std::env::var("FERRULE_TEST_KAFKA_BOOTSTRAP")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            _ => None,
        };
        let (mut brokers, topic) = match (&setup, external) {
            (_, Some(bootstrap)) => {
                let b = Brokers::external(bootstrap.trim());
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                let topic = format!("ferrule-test-{}-{nanos}", std::process::id());
                (b, topic)
            }
            (Setup::Cluster(props), None) => {
                (Brokers::cluster(&dir.join("kafka"), props), TOPIC.into())
            }
            _ => (Brokers::single(&dir.join("kafka")), TOPIC.into()),
        };
        let replication = if brokers.cluster {
            3
        } else if brokers.dir.is_none() {
            std::env::var("FERRULE_TEST_KAFKA_REPLICATION")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1)
        } else {
            1
        };
        let t = Instant::now();
        brokers.create_topic(&topic, partitions, replication);
        println!(
            "kafka: topic {topic} ({partitions} partitions, replication {replication}) created in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        if brokers.dir.is_none() {
            // Deleted when dropped; set only now that it exists.
            brokers.cleanup_topic = Some(topic.clone());
        }
        let pki = DevPki::ensure(&dir.join("pki")).unwrap();
        let quic = SocketAddr::from(([127, 0, 0, 1], procs::free_udp_port().unwrap()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port().unwrap()));
        let extra = format!(
            "[credit]\n{credit}\n\n{}",
            procs::kafka_section(&brokers.bootstrap, &topic, kafka_more)
        );
        let config = dir.join("aggregator.toml");
        std::fs::write(
            &config,
            procs::aggregator_toml(&pki, &dir.join("agg-data"), quic, Some(metrics), &extra),
        )
        .unwrap();
        let agg = Aggregator {
            quic,
            config,
            log: dir.join("aggregator.log"),
            metrics,
            proc: None,
        };
        Self {
            agg,
            agents: Vec::new(),
            brokers,
            pki,
            dir,
            topic,
            _tmp: tmp,
        }
    }

    /// Adds an agent (not started) generating `total` samples at `rate_hz` per
    /// sensor (7 sensors).
    fn add_agent(&mut self, id: &str, rate_hz: u32, total: u64) {
        let metrics = SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port().unwrap()));
        let spec = AgentSpec {
            site: SITE.to_string(),
            id: id.to_string(),
            spool: self.dir.join(format!("{id}-spool")),
            endpoints: vec![self.agg.quic.to_string()],
            rate_hz,
            total_samples: Some(total),
            fsync: "interval",
            metrics: Some(metrics),
            extra: String::new(),
        };
        let config = self.dir.join(format!("{id}.toml"));
        std::fs::write(&config, procs::agent_toml(&self.pki, &spec).unwrap()).unwrap();
        self.agents.push(Agent {
            name: format!("agent {id}"),
            key: format!("{SITE}/{id}"),
            total,
            spool: spec.spool,
            config,
            log: self.dir.join(format!("{id}.log")),
            metrics,
            proc: None,
        });
    }

    /// Starts the aggregator and waits until it listens.
    fn start_aggregator(&mut self) {
        let bin = procs::bin("ferrule-aggregator").unwrap();
        self.agg.proc =
            Some(Proc::start("aggregator", &bin, &self.agg.config, &self.agg.log).unwrap());
        let up = procs::wait_for(Duration::from_secs(60), || {
            if !self.agg.running() {
                return Some(false);
            }
            read_log(&self.agg.log)
                .contains("aggregator listening")
                .then_some(true)
        });
        match up {
            Some(true) => {}
            Some(false) => panic!("the aggregator exited at start (see its log below)"),
            None => {
                panic!("the aggregator did not start listening within 60 s (see its log below)")
            }
        }
    }

    /// Starts every agent and waits until each has a session; the start time.
    fn start_agents(&mut self) -> Instant {
        let bin = procs::bin("ferrule-agent").unwrap();
        let t0 = Instant::now();
        for a in &mut self.agents {
            a.proc = Some(Proc::start(&a.name, &bin, &a.config, &a.log).unwrap());
        }
        let n = self.agents.len();
        let ok = procs::wait_for(Duration::from_secs(60), || {
            (read_log(&self.agg.log)
                .matches("session established")
                .count()
                >= n)
                .then_some(())
        });
        assert!(
            ok.is_some(),
            "not every agent established a session within 60 s"
        );
        t0
    }

    /// Panics naming every process that is not running.
    fn assert_alive(&mut self, when: &str) {
        assert!(self.agg.running(), "{when}: the aggregator died");
        let dead: Vec<String> = self
            .agents
            .iter_mut()
            .filter_map(|a| (!a.running()).then(|| a.name.clone()))
            .collect();
        assert!(dead.is_empty(), "{when}: agents died: {dead:?}");
    }

    fn grand_total(&self) -> u64 {
        self.agents.iter().map(|a| a.total).sum()
    }

    /// Polls until the topic holds every sample each agent generated (checking
    /// that every process runs); the consumer's view then. Reads the topic when the
    /// aggregator reports enough committed, and every 30 s regardless.
    fn wait_in_kafka(&mut self, timeout: Duration, what: &str) -> BTreeMap<String, InKafka> {
        let start = Instant::now();
        let grand = self.grand_total();
        let mut last_read = Instant::now();
        let mut last_print = Instant::now();
        loop {
            self.assert_alive(what);
            let committed = self
                .agg
                .metric("ferrule_aggregator_committed_samples_total");
            let timed_out = start.elapsed() > timeout;
            if committed >= grand || last_read.elapsed() > Duration::from_secs(30) || timed_out {
                last_read = Instant::now();
                let k = by_agent(&consume(&self.brokers.bootstrap, &self.topic));
                let have = |a: &Agent| k.get(&a.key).map_or(0, InKafka::samples);
                if self.agents.iter().all(|a| have(a) >= a.total) {
                    return k;
                }
                let counts: Vec<(String, u64, u64)> = self
                    .agents
                    .iter()
                    .map(|a| (a.key.clone(), have(a), a.total))
                    .collect();
                assert!(
                    !timed_out,
                    "{what}: not done within {timeout:?}: (agent, samples in Kafka, generated) {counts:?}; aggregator committed {committed}; aggregator metrics:\n{}",
                    self.agg.metrics()
                );
                println!(
                    "  ... {what}: {:.0} s, (agent, samples in Kafka, generated) {counts:?}, aggregator committed {committed}",
                    start.elapsed().as_secs_f64()
                );
            } else if last_print.elapsed() > Duration::from_secs(15) {
                last_print = Instant::now();
                println!(
                    "  ... {what}: {:.0} s, aggregator committed {committed} of {grand} samples",
                    start.elapsed().as_secs_f64()
                );
            }
            sleep(Duration::from_secs(2));
        }
    }

    /// A sample of what every process reports.
    fn snap(&self, since: Instant) -> Snap {
        let am = self.agg.metrics();
        let ag: Vec<String> = self.agents.iter().map(Agent::metrics).collect();
        let sum = |name: &str| ag.iter().map(|m| procs::metric_sum(m, name)).sum::<u64>();
        Snap {
            t: since.elapsed().as_secs_f64(),
            acks: procs::metric_sum(&am, "ferrule_aggregator_acks_total"),
            committed: procs::metric_sum(&am, "ferrule_aggregator_committed_samples_total"),
            withheld: procs::metric_sum(&am, "ferrule_aggregator_credit_withheld_total"),
            queued: procs::metric_sum(&am, "ferrule_aggregator_sink_queued_bytes"),
            failures: procs::metric_sum(&am, "ferrule_aggregator_commit_failures_total"),
            sent: sum("ferrule_agent_sent_batches_total"),
            acked: sum("ferrule_agent_acked_batches_total"),
            unacked: sum("ferrule_agent_spool_unacked_batches"),
            spool_bytes: self.agents.iter().map(|a| procs::dir_bytes(&a.spool)).sum(),
            rss_kib: self.agg.rss_kib(),
            health: self.agg.readyz(),
        }
    }

    /// SIGTERMs the agents, then the aggregator; asserts each exits successfully.
    fn stop_all(&mut self) {
        for a in &mut self.agents {
            assert!(a.running(), "{} died before the end of the run", a.name);
            let ok = a.proc.take().is_some_and(|mut p| p.term(STOP));
            assert!(
                ok,
                "{} did not exit cleanly within {STOP:?} of SIGTERM",
                a.name
            );
        }
        assert!(self.agg.running(), "the aggregator died before the end");
        let t = Instant::now();
        let ok = self.agg.proc.take().is_some_and(|mut p| p.term(STOP));
        assert!(
            ok,
            "the aggregator did not exit cleanly on SIGTERM ({:?})",
            t.elapsed()
        );
    }

    /// Loss counters of every process: (aggregator batches rejected for good,
    /// agents' dropped samples), with the series for messages.
    fn losses(&self) -> (u64, u64, String) {
        let am = self.agg.metrics();
        let rejected = procs::metric_sum(&am, "ferrule_aggregator_batches_rejected_total");
        let mut lines = metric_lines(&am, "ferrule_aggregator_batches_rejected_total");
        let mut dropped = 0;
        for a in &self.agents {
            let m = a.metrics();
            dropped += procs::metric_sum(&m, "ferrule_agent_dropped_samples_total");
            lines.extend(
                metric_lines(&m, "ferrule_agent_dropped_")
                    .into_iter()
                    .map(|l| format!("{}: {l}", a.key)),
            );
        }
        (rejected, dropped, lines.join("\n"))
    }

    /// The aggregator's commit failures, by reason, as rendered.
    fn failures(&self) -> String {
        metric_lines(
            &self.agg.metrics(),
            "ferrule_aggregator_commit_failures_total",
        )
        .join(", ")
    }

    /// Asserts that Kafka holds exactly what every agent generated: the sum of
    /// ferrule-count over distinct (agent, epoch, seq) equals the agent's total, one
    /// epoch, seqs 1..=last without a gap, one partition per agent with offsets
    /// rising with seq (first copies), keys equal to the agent, no records of other
    /// agents. Prints one line per agent; returns the duplicates (records beyond
    /// the first copy of a batch), all agents.
    fn assert_complete(&self, k: &BTreeMap<String, InKafka>) -> u64 {
        let ours: BTreeSet<&str> = self.agents.iter().map(|a| a.key.as_str()).collect();
        let others: Vec<&String> = k.keys().filter(|a| !ours.contains(a.as_str())).collect();
        assert!(
            others.is_empty(),
            "records of agents that are not in this test: {others:?}"
        );
        let mut dups = 0;
        for a in &self.agents {
            let v = k
                .get(&a.key)
                .unwrap_or_else(|| panic!("{}: no record in Kafka", a.key));
            let last = v.batches.keys().map(|b| b.1).max().unwrap_or(0);
            println!(
                "  {}: {} samples in {} batches (seq 1..={last}), {} records, {} duplicate(s), partition(s) {:?}, epoch(s) {:?}",
                a.key,
                v.samples(),
                v.batches.len(),
                v.records,
                v.duplicates(),
                v.partitions,
                v.epochs()
            );
            assert_eq!(
                v.samples(),
                a.total,
                "{}: samples in Kafka (sum of ferrule-count over distinct batches) vs generated",
                a.key
            );
            assert_eq!(v.epochs().len(), 1, "{}: epochs in Kafka", a.key);
            let first = v.batches.keys().map(|b| b.1).min().unwrap_or(0);
            assert_eq!(first, 1, "{}: the first seq in Kafka", a.key);
            assert_eq!(
                v.batches.len() as u64,
                last,
                "{}: seqs 1..={last} with gaps (only {} distinct)",
                a.key,
                v.batches.len()
            );
            assert_eq!(
                v.partitions.len(),
                1,
                "{}: records spread over partitions {:?}",
                a.key,
                v.partitions
            );
            assert_eq!(
                v.order_inversions(),
                0,
                "{}: batches out of seq order within the partition",
                a.key
            );
            assert_eq!(v.bad_keys, 0, "{}: records keyed otherwise", a.key);
            assert_eq!(
                v.inconsistent, 0,
                "{}: copies of a batch with different ferrule-count",
                a.key
            );
            assert_eq!(
                v.no_encoding, 0,
                "{}: records without ferrule-encoding",
                a.key
            );
            dups += v.duplicates();
        }
        dups
    }

    /// Asserts that no process counted a loss.
    fn assert_no_losses(&self) {
        let (rejected, dropped, lines) = self.losses();
        assert_eq!(
            rejected + dropped,
            0,
            "losses counted (aggregator rejected batches, agents' dropped samples):\n{lines}"
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!(
            "---- aggregator: last 40 lines of {} ----\n{}",
            self.agg.log.display(),
            tail(&self.agg.log, 40)
        );
        for a in &self.agents {
            eprintln!(
                "---- {}: last 25 lines of {} ----\n{}",
                a.name,
                a.log.display(),
                tail(&a.log, 25)
            );
        }
        self.brokers.print_logs();
    }
}

/// A moment of the run, from every process's metrics.
#[derive(Debug, Clone)]
struct Snap {
    t: f64,
    acks: u64,
    committed: u64,
    withheld: u64,
    queued: u64,
    failures: u64,
    /// Batches sent (retransmits included), all agents.
    sent: u64,
    /// Batches acknowledged, all agents.
    acked: u64,
    /// Batches in the spools not yet acknowledged, all agents.
    unacked: u64,
    /// Bytes of the spool directories, all agents.
    spool_bytes: u64,
    rss_kib: u64,
    health: String,
}

impl Snap {
    fn line(&self) -> String {
        format!(
            "t={:5.1}s sent={} acked={} unacked={} spool={:.1}MiB committed={} acks={} withheld={} queued={:.1}MiB failures={} rss={:.1}MiB readyz={:?}",
            self.t,
            self.sent,
            self.acked,
            self.unacked,
            mib(self.spool_bytes),
            self.committed,
            self.acks,
            self.withheld,
            mib(self.queued),
            self.failures,
            self.rss_kib as f64 / 1024.0,
            self.health
        )
    }
}

/// The longest time in `snaps` during which the agents' acknowledged batches did
/// not move, in seconds, and when it started.
fn longest_ack_stall(snaps: &[Snap]) -> (f64, f64) {
    let mut best = (0.0, 0.0);
    let mut since: Option<(f64, u64)> = None;
    for s in snaps {
        match since {
            Some((t, n)) if n == s.acked => {
                if s.t - t > best.0 {
                    best = (s.t - t, t);
                }
            }
            _ => since = Some((s.t, s.acked)),
        }
    }
    best
}

// ---- the tests ---------------------------------------------------------------------

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn basic_every_sample_in_kafka_in_order_one_partition_per_agent() {
    let _serial = serial();
    let mut rig = Rig::new(Setup::ExternalOrSingle, 3, "", "");
    // Different totals, so that a count credited to the wrong agent shows.
    rig.add_agent("a1", 1000, 1000 * SENSORS * 8);
    rig.add_agent("a2", 1000, 1000 * SENSORS * 5);
    rig.start_aggregator();
    assert_eq!(
        rig.agg.readyz(),
        "ok",
        "/readyz before any agent, with the topic there"
    );
    let t0 = rig.start_agents();
    let k = rig.wait_in_kafka(
        Duration::from_secs(180),
        "waiting for every sample in Kafka",
    );
    println!(
        "every sample in Kafka {:.1} s after the agents started (generation takes 8 s)",
        t0.elapsed().as_secs_f64()
    );
    let dups = rig.assert_complete(&k);
    assert_eq!(dups, 0, "duplicates in Kafka without any fault");
    let health = rig.agg.readyz();
    assert_eq!(health, "ok", "/readyz after the run");
    let m = rig.agg.metrics();
    let records = procs::metric_sum(&m, "ferrule_aggregator_kafka_records_total");
    let batches: usize = k.values().map(|v| v.batches.len()).sum();
    assert_eq!(
        records, batches as u64,
        "the aggregator's delivered-records counter vs the batches the consumer read"
    );
    rig.assert_no_losses();
    assert_eq!(
        procs::metric_sum(&m, "ferrule_aggregator_commit_failures_total"),
        0,
        "commit failures without any fault: {}",
        rig.failures()
    );
    rig.stop_all();
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn single_broker_stopped_10s_mid_stream_loses_nothing() {
    let _serial = serial();
    const OUTAGE: Duration = Duration::from_secs(10);
    // A tiny high-water mark (1 KiB, about one batch; the default is 256 MiB):
    // credit returned while more than that is outstanding is withheld until
    // the sink drains, then paid. With 64 KiB, whether any was withheld
    // depended on scheduling: when the broker came back, the delivery tasks
    // could drain the whole backlog (~100 KiB) before a session saw its first
    // commit, and there was then nothing to withhold.
    let mut rig = Rig::new(Setup::Single, 3, "sink_high_water_bytes = 1024", "");
    for id in ["r1", "r2"] {
        rig.add_agent(id, 1000, 1000 * SENSORS * 20);
    }
    rig.start_aggregator();
    let t0 = rig.start_agents();
    let mut snaps = Vec::new();
    while t0.elapsed() < Duration::from_secs(5) {
        snaps.push(rig.snap(t0));
        sleep(Duration::from_millis(500));
    }
    rig.assert_alive("before the broker stopped");
    let took = rig.brokers.stop_all();
    let down_at = t0.elapsed().as_secs_f64();
    println!(
        "broker stopped (SIGTERM) at {down_at:.1} s, took {:.1} s",
        took.as_secs_f64()
    );
    let down = Instant::now();
    while down.elapsed() < OUTAGE {
        rig.assert_alive("while the broker was down");
        snaps.push(rig.snap(t0));
        sleep(Duration::from_millis(500));
    }
    let during = snaps.last().unwrap().clone();
    let took = rig.brokers.restart(1);
    let up_at = t0.elapsed().as_secs_f64();
    println!(
        "broker restarted at {up_at:.1} s (took {:.1} s)",
        took.as_secs_f64()
    );
    let k = rig.wait_in_kafka(
        Duration::from_secs(300),
        "waiting for every sample in Kafka",
    );
    snaps.push(rig.snap(t0));
    println!(
        "every sample in Kafka {:.1} s after the agents started, {:.1} s after the restart",
        t0.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64() - up_at
    );
    let (stall, stall_at) = longest_ack_stall(&snaps);
    println!(
        "acks stalled {stall:.1} s from t={stall_at:.1} s; at the end of the outage: {}",
        during.line()
    );
    let end = snaps.last().unwrap().clone();
    println!("at the end: {}", end.line());
    println!("commit failures: [{}]", rig.failures());
    let dups = rig.assert_complete(&k);
    println!("duplicates in Kafka: {dups}");
    assert!(
        stall >= 5.0,
        "acks went on while the broker was down (longest stall {stall:.1} s)"
    );
    assert!(
        during.queued > 0,
        "ferrule_aggregator_sink_queued_bytes showed nothing outstanding during the outage: {}",
        during.line()
    );
    assert!(
        end.withheld > 0,
        "no credit was withheld although more than the high-water mark (1 KiB) was outstanding: {}",
        end.line()
    );
    rig.assert_alive("after the run");
    rig.assert_no_losses();
    rig.stop_all();
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn cluster_leader_killed_then_below_min_isr_backpressure_then_everything_arrives() {
    let _serial = serial();
    let mut rig = Rig::new(Setup::Cluster(""), 3, "", "");
    for id in ["c1", "c2"] {
        rig.add_agent(id, 1000, 1000 * SENSORS * 75);
    }
    rig.start_aggregator();
    let t0 = rig.start_agents();
    let mut snaps = Vec::new();
    while t0.elapsed() < Duration::from_secs(6) {
        snaps.push(rig.snap(t0));
        sleep(Duration::from_millis(500));
    }
    // Which partition the agents' keys go to, as the consumer sees it.
    let seen = by_agent(&consume(&rig.brokers.bootstrap, &rig.topic));
    let parts: Vec<(String, Vec<u64>)> = rig
        .agents
        .iter()
        .map(|a| {
            let p = seen
                .get(&a.key)
                .map_or_else(Vec::new, |v| v.partitions.iter().copied().collect());
            (a.key.clone(), p)
        })
        .collect();
    println!("partitions by agent: {parts:?}");
    let partition = *parts[0]
        .1
        .first()
        .unwrap_or_else(|| panic!("nothing of {} in Kafka after 6 s", parts[0].0));
    let first = rig.brokers.leader(&rig.topic, partition);
    rig.assert_alive("before the first kill");
    rig.brokers.kill(first);
    let kill1 = t0.elapsed().as_secs_f64();
    println!("killed broker {first}, leader of partition {partition}, at {kill1:.1} s");

    // The partition moves to another leader; acks resume.
    let before = rig.snap(t0);
    let resumed = procs::wait_for(Duration::from_secs(90), || {
        rig.assert_alive("after the first kill");
        let s = rig.snap(t0);
        snaps.push(s.clone());
        (s.acked > before.acked + 20).then_some(s.t)
    })
    .unwrap_or_else(|| panic!("acks did not resume within 90 s of killing the leader"));
    let stall1 = longest_ack_stall(&snaps);
    println!(
        "acks resumed by {resumed:.1} s; longest ack stall so far {:.1} s (from t={:.1} s)",
        stall1.0, stall1.1
    );
    let second = rig.brokers.leader(&rig.topic, partition);
    assert_ne!(second, first, "the killed broker is still the leader");
    sleep(Duration::from_secs(3));

    // Below min.insync.replicas (and the controller quorum): nothing can be acked.
    rig.assert_alive("before the second kill");
    rig.brokers.kill(second);
    let killed2 = Instant::now();
    let kill2 = t0.elapsed().as_secs_f64();
    println!("killed broker {second}, new leader of partition {partition}, at {kill2:.1} s: one broker left");
    let at_kill = rig.snap(t0);
    let mut last_change = (at_kill.t, at_kill.acked);
    let mut stopped: Option<Snap> = None;
    while killed2.elapsed() < Duration::from_secs(120) {
        rig.assert_alive("with one broker left");
        sleep(Duration::from_secs(1));
        let s = rig.snap(t0);
        snaps.push(s.clone());
        if s.acked != last_change.1 {
            last_change = (s.t, s.acked);
        }
        // Acks flat for 10 s while the spools grow: backpressure.
        if s.t - last_change.0 >= 10.0 && s.unacked >= at_kill.unacked + 50 {
            stopped = Some(s);
            break;
        }
    }
    let stopped = stopped.unwrap_or_else(|| {
        panic!(
            "no backpressure within 120 s of the second kill (acks flat for 10 s and the spools growing by 50 batches); at the kill: {}; last: {}",
            at_kill.line(),
            snaps.last().unwrap().line()
        )
    });
    println!(
        "backpressure: last ack {:.1} s after the second kill; at the kill: {}",
        last_change.0 - kill2,
        at_kill.line()
    );
    println!("  10 s later: {}", stopped.line());
    assert_eq!(
        stopped.acked, last_change.1,
        "acks moved while Kafka could not acknowledge"
    );
    // Let the spools grow a little more, then heal the cluster.
    sleep(Duration::from_secs(5));
    let held = rig.snap(t0);
    snaps.push(held.clone());
    println!("  at the restart: {}", held.line());
    assert!(
        held.unacked > at_kill.unacked,
        "the agents' spools did not grow while Kafka was below min ISR"
    );
    let r1 = rig.brokers.restart(first);
    let r2 = rig.brokers.restart(second);
    let isr = rig.brokers.wait_isr(&rig.topic, 120);
    let healed = t0.elapsed().as_secs_f64();
    println!(
        "brokers {first} and {second} restarted in {:.1} s and {:.1} s, ISR full {:.1} s later (t={healed:.1} s)",
        r1.as_secs_f64(),
        r2.as_secs_f64(),
        isr.as_secs_f64()
    );
    let k = rig.wait_in_kafka(
        Duration::from_secs(420),
        "waiting for every sample in Kafka",
    );
    let end = rig.snap(t0);
    println!(
        "every sample in Kafka at {:.1} s ({:.1} s after the cluster healed); {}",
        end.t,
        end.t - healed,
        end.line()
    );
    println!("commit failures: [{}]", rig.failures());
    let dups = rig.assert_complete(&k);
    println!("duplicates in Kafka: {dups}");
    rig.assert_alive("after the run");
    rig.assert_no_losses();
    rig.stop_all();
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn aggregator_memory_bounded_through_2_minute_kafka_outage() {
    let _serial = serial();
    const OUTAGE: Duration = Duration::from_secs(120);
    const RATE_HZ: u32 = 2857; // x 7 sensors = 19 999 events/s per agent
    const RSS_CAP_KIB: u64 = 200 * 1024;
    const RSS_GROWTH_KIB: u64 = 20 * 1024;
    let mut rig = Rig::new(Setup::Single, 3, "", "");
    // Generation ends a little after the outage does.
    let total = u64::from(RATE_HZ) * SENSORS * 140;
    for id in ["m1", "m2", "m3"] {
        rig.add_agent(id, RATE_HZ, total);
    }
    rig.start_aggregator();
    let t0 = rig.start_agents();
    let mut snaps = Vec::new();
    while t0.elapsed() < Duration::from_secs(10) {
        snaps.push(rig.snap(t0));
        sleep(Duration::from_secs(1));
    }
    rig.assert_alive("before the outage");
    let before = rig.snap(t0);
    let took = rig.brokers.stop_all();
    let down = Instant::now();
    println!(
        "broker stopped at {:.1} s (took {:.1} s); before: {}",
        t0.elapsed().as_secs_f64(),
        took.as_secs_f64(),
        before.line()
    );
    let mut outage: Vec<Snap> = Vec::new();
    let mut second = 1;
    while down.elapsed() < OUTAGE {
        sleep_until(down + Duration::from_secs(second));
        second += 1;
        rig.assert_alive("during the outage");
        let s = rig.snap(down);
        if second % 15 == 0 {
            println!("  outage {}", s.line());
        }
        outage.push(s);
    }
    let took = rig.brokers.restart(1);
    let up = Instant::now();
    println!("broker restarted (took {:.1} s)", took.as_secs_f64());
    let k = rig.wait_in_kafka(
        Duration::from_secs(900),
        "waiting for the backlog to reach Kafka",
    );
    let drain = up.elapsed();
    let end = rig.snap(t0);

    let rss: Vec<u64> = outage.iter().map(|s| s.rss_kib).collect();
    let at = |secs: f64| {
        outage
            .iter()
            .find(|s| s.t >= secs)
            .unwrap_or_else(|| outage.last().unwrap())
    };
    let (s30, s120) = (at(30.0), outage.last().unwrap());
    let max = rss.iter().copied().max().unwrap_or(0);
    let min = rss.iter().copied().min().unwrap_or(0);
    let mean = rss.iter().sum::<u64>() / rss.len().max(1) as u64;
    println!(
        "aggregator RSS during the {} s outage ({} samples): before {:.1} MiB, min {:.1}, mean {:.1}, max {:.1}, at 30 s {:.1}, at {:.0} s {:.1} MiB",
        OUTAGE.as_secs(),
        rss.len(),
        before.rss_kib as f64 / 1024.0,
        min as f64 / 1024.0,
        mean as f64 / 1024.0,
        max as f64 / 1024.0,
        s30.rss_kib as f64 / 1024.0,
        s120.t,
        s120.rss_kib as f64 / 1024.0
    );
    println!("  at 30 s:  {}", s30.line());
    println!("  at end:   {}", s120.line());
    println!(
        "backlog in Kafka {:.1} s after the restart; {}",
        drain.as_secs_f64(),
        end.line()
    );
    println!("commit failures: [{}]", rig.failures());
    let dups = rig.assert_complete(&k);
    println!("duplicates in Kafka: {dups}");
    assert!(
        max > 0 && max < RSS_CAP_KIB,
        "the aggregator's RSS reached {:.1} MiB during the outage (cap {} MiB)",
        max as f64 / 1024.0,
        RSS_CAP_KIB / 1024
    );
    assert!(
        s120.rss_kib <= s30.rss_kib + RSS_GROWTH_KIB,
        "the aggregator's RSS grew with the outage: {:.1} MiB at 30 s, {:.1} MiB at {:.0} s",
        s30.rss_kib as f64 / 1024.0,
        s120.rss_kib as f64 / 1024.0,
        s120.t
    );
    assert!(
        s120.spool_bytes > before.spool_bytes + (8 << 20),
        "the agents' spools did not grow during the outage ({:.1} -> {:.1} MiB)",
        mib(before.spool_bytes),
        mib(s120.spool_bytes)
    );
    assert!(
        s120.acked == s30.acked,
        "batches were acknowledged while Kafka was down ({} at 30 s, {} at the end)",
        s30.acked,
        s120.acked
    );
    // Backpressure: once their credit is used up the agents send nothing more (the
    // aggregator returns no credit while nothing becomes durable) and spool instead.
    assert!(
        s120.sent == s30.sent,
        "the agents kept sending while Kafka was down ({} batches at 30 s, {} at the end): credit was not withheld",
        s30.sent,
        s120.sent
    );
    assert!(
        s120.unacked > s30.unacked + 1000,
        "the agents' unacknowledged batches did not grow while they could not send ({} at 30 s, {} at the end)",
        s30.unacked,
        s120.unacked
    );
    // Operators see the outage: /readyz turns unready while Kafka answers nothing.
    assert!(
        outage.iter().any(|s| s.health.starts_with("unready")),
        "/readyz never reported the outage: {:?}",
        outage.iter().map(|s| s.health.as_str()).collect::<Vec<_>>()
    );
    rig.assert_alive("after the run");
    rig.assert_no_losses();
    rig.stop_all();
}

/// Runs `script` (Python, confluent-kafka) with `args`; its stdout.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(
        out.status.success(),
        "python3 failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A consumer group of the topic is a stage of the sampler (`kafka:<group>`:
/// high watermarks against committed offsets, as a real confluent-kafka
/// consumer commits them), and every signal set also lands in the history
/// topic, as the page gets it.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn a_consumer_group_is_a_stage_and_the_signal_history_lands_in_kafka() {
    let _serial = serial();
    let mut rig = Rig::new(Setup::Single, 3, "", "");
    rig.brokers.create_topic("ferrule-signals", 1, 1);
    let page = SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port().unwrap()));
    let mut cfg = std::fs::read_to_string(&rig.agg.config).unwrap();
    cfg += &format!(
        "\n[sampler]\nperiod_ms = 500\nkafka_groups = [\"audit\"]\n\n[page]\nlisten = \"{page}\"\n"
    );
    std::fs::write(&rig.agg.config, cfg).unwrap();
    rig.add_agent("a1", 200, 200 * SENSORS * 6);
    rig.start_aggregator();
    rig.start_agents();
    let k = rig.wait_in_kafka(
        Duration::from_secs(120),
        "waiting for every sample in Kafka",
    );
    let records: usize = k.values().map(|v| v.batches.len()).sum();
    assert!(records > 20, "{records} records");
    // The group reads 20 records and commits.
    let consumed = python(
        r#"
import sys
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "audit", "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([sys.argv[2]])
n = 0
for _ in range(600):
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    n += 1
    c.commit(message=m, asynchronous=False)
    if n == 20:
        break
c.close()
print(n)
"#,
        &[&rig.brokers.bootstrap, &rig.topic],
    );
    assert_eq!(consumed.trim(), "20");
    // Committed offsets count per partition: what the group consumed is the
    // sum of its offsets, 20 records (up to each partition's head).
    let stage = procs::wait_for(Duration::from_secs(30), || {
        let body = procs::http_get(page, "/state").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let s = v["signals"]["snapshot"]["stages"]
            .as_array()?
            .iter()
            .find(|s| s["stage"] == "kafka:audit")?
            .clone();
        (s["position"].as_u64() == Some(20) && s["head"].as_u64() == Some(records as u64))
            .then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "the page never showed kafka:audit at 20 of {records}: {}",
            procs::http_get(page, "/state").unwrap_or_default()
        )
    });
    let sig = stage["signals"]["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "kafka:audit")
        .unwrap();
    assert_eq!(sig["backlog"].as_u64(), Some(records as u64 - 20), "{sig}");
    // The history topic holds the sets, as the page gets them.
    let sets = python(
        r#"
import sys
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "history-check", "auto.offset.reset": "earliest"})
c.subscribe(["ferrule-signals"])
n = 0
for _ in range(120):
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    print(m.value().decode())
    n += 1
    if n == 5:
        break
c.close()
"#,
        &[&rig.brokers.bootstrap],
    );
    let lines: Vec<&str> = sets.lines().collect();
    assert_eq!(lines.len(), 5, "{sets}");
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["fence"], 1, "{l}");
        assert!(
            v["seq"].as_str().is_some() && v["signals"].is_array(),
            "{l}"
        );
    }
    rig.stop_all();
}
