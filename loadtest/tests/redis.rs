//! The real-time path to Redis Streams, with the real `ferrule-aggregator` and
//! `ferrule-agent` binaries on loopback and a real `redis-server` (Debian's 7.0)
//! started by `scripts/redis.sh` on a free port and stopped when the test ends.
//!
//! 1. Batches a real agent sends arrive in its site's stream (`ferrule:{site}`)
//!    with the fields `agent`, `epoch`, `seq`, `samples`, `record`, each record
//!    decodable and the same set of (agent, epoch, seq) as the durable log.
//! 2. Redis SIGKILLed mid-stream and restarted: the aggregator keeps
//!    acknowledging (nothing missing from the durable log), `/healthz` stays 200
//!    and says degraded, skips are counted, and the fan-out resumes by itself.
//! 3. Two consumer groups, one stalled: the other reads everything; trimming
//!    keeps every entry the stalled group still needs until the hard cap, whose
//!    losses are then counted for that group alone and shown at `/healthz`.
//! 4. Redis frozen (SIGSTOP: connections open, no answers): the same as 2,
//!    through the response timeout instead of a refused connection.
//! 5. The same as 1 against a local 3-master Redis Cluster, and over TLS
//!    (`rediss://`, a private CA, a client certificate).
//! 6. The fan-out's own throughput to one redis-server (printed).
//!
//! Run by `scripts/test.sh` with `--ignored` after `cargo build --workspace
//! --bins`; one at a time (a lock below).

// Plain test threads: blocking sleeps are what we want.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

mod support;

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use ferrule_wire::record::decode_record;
use redis::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use support::redis_server::Redis;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One stream entry as the aggregator wrote it.
#[derive(Debug, Clone)]
struct StreamEntry {
    id: String,
    agent: String,
    epoch: u64,
    seq: u64,
    samples: u64,
    record: Vec<u8>,
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.as_bytes().to_vec(),
        Value::Int(i) => i.to_string().into_bytes(),
        other => panic!("not a string: {other:?}"),
    }
}

fn text(v: &Value) -> String {
    String::from_utf8(bytes(v)).unwrap()
}

fn entries(reply: &Value) -> Vec<StreamEntry> {
    let Value::Array(items) = reply else {
        panic!("not an array: {reply:?}")
    };
    items
        .iter()
        .map(|item| {
            let Value::Array(pair) = item else {
                panic!("{item:?}")
            };
            let Value::Array(fields) = &pair[1] else {
                panic!("{item:?}")
            };
            let get = |k: &str| {
                fields
                    .chunks_exact(2)
                    .find(|c| text(&c[0]) == k)
                    .map(|c| bytes(&c[1]))
                    .unwrap_or_else(|| panic!("entry has no field {k}: {item:?}"))
            };
            let num = |k: &str| String::from_utf8(get(k)).unwrap().parse::<u64>().unwrap();
            StreamEntry {
                id: text(&pair[0]),
                agent: String::from_utf8(get("agent")).unwrap(),
                epoch: num("epoch"),
                seq: num("seq"),
                samples: num("samples"),
                record: get("record"),
            }
        })
        .collect()
}

fn xrange(con: &mut impl redis::ConnectionLike, key: &str) -> Vec<StreamEntry> {
    entries(
        &redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query::<Value>(con)
            .unwrap(),
    )
}

fn xlen(con: &mut impl redis::ConnectionLike, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query::<u64>(con).unwrap_or(0)
}

/// Sum of every series of `name` whose labels contain `with`.
fn metric_sum(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET path`: (status, body).
fn http(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
}

struct Rig {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    pki: DevPki,
    data: PathBuf,
    metrics: SocketAddr,
    quic: SocketAddr,
    agg: Option<Proc>,
    agents: Vec<Proc>,
}

impl Rig {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let pki = DevPki::ensure(&root.join("pki")).unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", procs::free_tcp_port().unwrap())
            .parse()
            .unwrap();
        let quic: SocketAddr = format!("127.0.0.1:{}", procs::free_udp_port().unwrap())
            .parse()
            .unwrap();
        Self {
            data: root.join("data"),
            _tmp: tmp,
            root,
            pki,
            metrics,
            quic,
            agg: None,
            agents: Vec::new(),
        }
    }

    fn start_aggregator(&mut self, redis_section: &str) {
        let toml = procs::aggregator_toml(
            &self.pki,
            &self.data,
            self.quic,
            Some(self.metrics),
            redis_section,
        );
        let cfg = self.root.join("aggregator.toml");
        std::fs::write(&cfg, toml).unwrap();
        self.agg = Some(
            Proc::start(
                "aggregator",
                &procs::bin("ferrule-aggregator").unwrap(),
                &cfg,
                &self.root.join("aggregator.log"),
            )
            .unwrap(),
        );
        procs::wait_for(Duration::from_secs(20), || {
            http(self.metrics, "/metrics").map(|_| ())
        })
        .unwrap_or_else(|| panic!("aggregator metrics never answered:\n{}", self.logs()));
    }

    /// An agent sending `batches * 7` samples at `rate_hz` ticks a second (of 7
    /// samples; the agent cuts its batches, a few ticks each).
    fn start_agent(&mut self, site: &str, id: &str, rate_hz: u32, batches: u64) {
        let spec = AgentSpec {
            site: site.into(),
            id: id.into(),
            spool: self.root.join(format!("spool-{id}")),
            endpoints: vec![self.quic.to_string()],
            rate_hz,
            total_samples: Some(batches * 7),
            fsync: "interval",
            metrics: None,
            extra: "[batch]\nmax_samples = 7\nmax_delay_ms = 1000\n".into(),
        };
        let cfg = self.root.join(format!("agent-{id}.toml"));
        std::fs::write(&cfg, procs::agent_toml(&self.pki, &spec).unwrap()).unwrap();
        self.agents.push(
            Proc::start(
                id,
                &procs::bin("ferrule-agent").unwrap(),
                &cfg,
                &self.root.join(format!("agent-{id}.log")),
            )
            .unwrap(),
        );
    }

    fn metrics_text(&self) -> String {
        http(self.metrics, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    fn durable(&self) -> ferrule_aggregator::inspect::Report {
        ferrule_aggregator::inspect::inspect(&self.data).unwrap()
    }

    /// Waits until the durable log holds `samples` samples.
    fn wait_durable(&self, samples: u64, timeout: Duration) {
        procs::wait_for(timeout, || {
            (self.durable().total_events >= samples).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "the log holds {} of {samples} samples after {timeout:?}:\n{}",
                self.durable().total_events,
                self.logs()
            )
        });
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for f in ["aggregator.log", "agent-a1.log"] {
            let text = std::fs::read_to_string(self.root.join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!("--- {f}\n{}\n", procs::strip_ansi(&tail)));
        }
        out
    }
}

/// The stream's entries are the durable log's batches, decodable, fields right.
fn check_stream_matches_log(rig: &Rig, got: &[StreamEntry], site: &str, batches_at_least: u64) {
    let report = rig.durable();
    let mut keys = BTreeSet::new();
    let mut samples = 0u64;
    for e in got {
        let rec = decode_record(&e.record, u64::MAX)
            .unwrap_or_else(|err| panic!("entry {} undecodable: {err}", e.id));
        let h = &rec.header;
        assert_eq!(h.site, site);
        assert_eq!(
            (h.agent.as_str(), h.epoch.0, h.seq.0, u64::from(h.samples)),
            (e.agent.as_str(), e.epoch, e.seq, e.samples),
            "entry {} fields disagree with its record",
            e.id
        );
        assert!(
            keys.insert((e.agent.clone(), e.epoch, e.seq)),
            "repeat {e:?}"
        );
        samples += e.samples;
    }
    assert!(
        keys.len() as u64 >= batches_at_least,
        "{} entries",
        keys.len()
    );
    assert_eq!(
        samples, report.total_events,
        "samples in the stream vs the log"
    );
    assert_eq!(keys.len() as u64, report.total_batches);
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn batches_reach_the_sites_stream_with_their_fields_and_decode() {
    let _g = serial();
    let mut rig = Rig::new();
    let redis = Redis::start(&rig.root.join("redis"));
    rig.start_aggregator(&format!(
        "[redis]\nurl = {:?}\nmax_len = 100000\n",
        redis.url
    ));
    let batches = 300;
    rig.start_agent("site-rt", "a1", 200, batches);
    rig.wait_durable(batches * 7, Duration::from_secs(60));
    let key = "ferrule:{site-rt}";
    let mut con = redis.conn();
    procs::wait_for(Duration::from_secs(10), || {
        (xlen(&mut con, key) >= rig.durable().total_batches).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "stream has {} entries:\n{}",
            xlen(&mut con, key),
            rig.logs()
        )
    });
    let got = xrange(&mut con, key);
    check_stream_matches_log(&rig, &got, "site-rt", 10);
    let m = rig.metrics_text();
    assert_eq!(
        metric_sum(&m, "ferrule_aggregator_fanout_skipped_total", ""),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "ferrule_aggregator_fanout_delivered_total", "") as usize,
        got.len()
    );
    let (status, body) = http(rig.metrics, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    println!(
        "redis: {} entries, {} samples, stream == durable log",
        got.len(),
        rig.durable().total_events
    );
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn redis_killed_mid_stream_acks_go_on_and_the_fanout_resumes() {
    outage(Outage::Kill);
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn redis_frozen_mid_stream_acks_go_on_and_the_fanout_resumes() {
    outage(Outage::Freeze);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outage {
    /// SIGKILL, then a fresh (empty) server on the same port.
    Kill,
    /// SIGSTOP, then SIGCONT: the stream survives.
    Freeze,
}

fn outage(how: Outage) {
    let _g = serial();
    let mut rig = Rig::new();
    let redis = Redis::start(&rig.root.join("redis"));
    rig.start_aggregator(&format!(
        "[redis]\nurl = {:?}\nresponse_timeout_ms = 500\nreconnect_max_ms = 1000\n",
        redis.url
    ));
    // 700 samples a second for 12 s.
    let batches = 1200;
    rig.start_agent("site-rt", "a1", 100, batches);
    let key = "ferrule:{site-rt}";
    let mut con = redis.conn();
    procs::wait_for(Duration::from_secs(20), || {
        (xlen(&mut con, key) >= 100).then_some(())
    })
    .unwrap_or_else(|| panic!("no entries before the kill:\n{}", rig.logs()));
    match how {
        Outage::Kill => redis.kill(),
        Outage::Freeze => redis.pause(),
    }
    let killed = Instant::now();
    let acked_at_kill = metric_sum(
        &rig.metrics_text(),
        "ferrule_aggregator_acked_batches_total",
        "",
    );
    // While Redis is down: acks go on, /healthz is 200 and says degraded.
    let degraded = procs::wait_for(Duration::from_secs(10), || {
        let (status, body) = http(rig.metrics, "/healthz")?;
        assert_eq!(status, 200, "readiness must not depend on Redis: {body}");
        body.contains("degraded: redis").then_some(body)
    })
    .unwrap_or_else(|| panic!("/healthz never said degraded:\n{}", rig.logs()));
    std::thread::sleep(Duration::from_secs(3));
    let acked_while_down = metric_sum(
        &rig.metrics_text(),
        "ferrule_aggregator_acked_batches_total",
        "",
    );
    assert!(
        acked_while_down >= acked_at_kill + 30.0,
        "acks stalled while Redis was down: {acked_at_kill} -> {acked_while_down}"
    );
    let before = match how {
        Outage::Kill => {
            redis.restart();
            0
        }
        Outage::Freeze => {
            redis.resume();
            xlen(&mut redis.conn(), key)
        }
    };
    let down_for = killed.elapsed();
    let mut con = redis.conn();
    // The fan-out resumes by itself: the stream grows again.
    procs::wait_for(Duration::from_secs(15), || {
        (xlen(&mut con, key) >= before + 50).then_some(())
    })
    .unwrap_or_else(|| panic!("the fan-out did not resume:\n{}", rig.logs()));
    rig.wait_durable(batches * 7, Duration::from_secs(60));
    let report = rig.durable();
    let a = report.agents.values().next().unwrap();
    assert_eq!(a.seqs_missing, 0, "nothing missing from the durable log");
    let m = rig.metrics_text();
    let skipped = metric_sum(
        &m,
        "ferrule_aggregator_fanout_skipped_total",
        "stream=\"ferrule:{site-rt}\"",
    );
    assert!(skipped > 0.0, "skips while down are counted:\n{m}");
    let (status, body) = http(rig.metrics, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"), "degraded cleared");
    let delivered = metric_sum(&m, "ferrule_aggregator_fanout_delivered_total", "");
    println!(
        "redis {how:?} {:.1} s: {skipped} batches skipped, {delivered} delivered, {} durable, healthz while down: {:?}",
        down_for.as_secs_f64(),
        report.total_batches,
        degraded.trim()
    );
    for l in m
        .lines()
        .filter(|l| l.starts_with("ferrule_aggregator_fanout_skipped_total"))
    {
        println!("  {l}");
    }
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn a_stalled_group_holds_trimming_until_the_cap_which_counts_its_losses() {
    let _g = serial();
    let mut rig = Rig::new();
    let redis = Redis::start(&rig.root.join("redis"));
    let key = "ferrule:{site-rt}";
    let mut con = redis.conn();
    for g in ["fast", "slow"] {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(g)
            .arg("0")
            .arg("MKSTREAM")
            .query::<()>(&mut con)
            .unwrap();
    }
    let max_len = 100u64;
    rig.start_aggregator(&format!(
        "[redis]\nurl = {:?}\nmax_len = {max_len}\ntrim_interval_ms = 200\n",
        redis.url
    ));
    // The fast group reads and acknowledges everything as it comes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fast = {
        let stop = stop.clone();
        let mut con = redis.conn();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("fast")
                    .arg("c1")
                    .arg("COUNT")
                    .arg(100)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(">")
                    .query(&mut con)
                    .unwrap();
                let Value::Array(streams) = reply else {
                    continue;
                };
                for s in streams {
                    let Value::Array(kv) = s else { continue };
                    for e in entries(&kv[1]) {
                        redis::cmd("XACK")
                            .arg(key)
                            .arg("fast")
                            .arg(&e.id)
                            .query::<()>(&mut con)
                            .unwrap();
                        seen.push(e);
                    }
                }
            }
            seen
        })
    };
    // Phase 1: fewer entries than the cap. The slow group takes 10 and stalls.
    // 350 samples a second for 12 s (about 20 batches a second): phase 1 is
    // checked within the first few seconds.
    let batches = 600;
    rig.start_agent("site-rt", "a1", 50, batches);
    procs::wait_for(Duration::from_secs(20), || {
        (xlen(&mut con, key) >= 20).then_some(())
    })
    .unwrap();
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("slow")
        .arg("c1")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query(&mut con)
        .unwrap();
    let Value::Array(streams) = reply else {
        panic!("{reply:?}")
    };
    let Value::Array(kv) = &streams[0] else {
        panic!()
    };
    let slow_read = entries(&kv[1]);
    assert_eq!(slow_read.len(), 10);
    let slow_first = slow_read[0].id.clone();
    // Below the cap, trimming keeps everything from the stalled group's oldest
    // pending entry, though the fast group acknowledged far beyond it.
    std::thread::sleep(Duration::from_secs(1));
    let len = xlen(&mut con, key);
    assert!(len < max_len, "phase 1 must stay below the cap ({len})");
    let first = xrange(&mut con, key)[0].id.clone();
    assert_eq!(
        first, slow_first,
        "trimming removed what the stalled group needs"
    );
    // Phase 2: past the cap. The cap trims what the slow group never read.
    rig.wait_durable(batches * 7, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let fast_seen = fast.join().unwrap();
    let total = rig.durable().total_batches;
    assert_eq!(
        fast_seen.len() as u64,
        total,
        "the fast group read every entry"
    );
    let info: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query(&mut con)
        .unwrap();
    let Value::Array(f) = &info else {
        panic!("{info:?}")
    };
    let field = |k: &str| {
        f.chunks_exact(2)
            .find(|c| text(&c[0]) == k)
            .map(|c| text(&c[1]).parse::<u64>().unwrap())
            .unwrap()
    };
    let (length, added) = (field("length"), field("entries-added"));
    assert!(length <= max_len + 100, "the cap holds ({length})");
    let expected_lost = (added - length).saturating_sub(10);
    let counted = procs::wait_for(Duration::from_secs(5), || {
        let m = rig.metrics_text();
        let n = metric_sum(
            &m,
            "ferrule_aggregator_fanout_group_lost_total",
            "group=\"slow\"",
        ) as u64;
        (n == expected_lost).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "slow group's loss not counted as {expected_lost}:\n{}",
            rig.metrics_text()
        )
    });
    assert_eq!(
        metric_sum(
            &counted,
            "ferrule_aggregator_fanout_group_lost_total",
            "group=\"fast\""
        ),
        0.0
    );
    let (status, body) = http(rig.metrics, "/healthz").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("degraded:") && body.contains("\"slow\""),
        "{body}"
    );
    println!(
        "cap {max_len}: {added} added, {length} left, slow group lost {expected_lost} (counted), fast read {}; healthz: {:?}",
        fast_seen.len(),
        body.trim()
    );
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn batches_reach_redis_over_tls_with_a_client_certificate() {
    let _g = serial();
    let mut rig = Rig::new();
    let redis = Redis::start_tls(&rig.root.join("redis"), &rig.pki);
    let (cert, key) = rig.pki.agent("redis-clients", "aggregator").unwrap();
    rig.start_aggregator(&format!(
        "[redis]\nurl = {:?}\ntls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        redis.url,
        rig.pki.ca_bundle(),
        cert,
        key
    ));
    let batches = 100;
    rig.start_agent("site-rt", "a1", 200, batches);
    rig.wait_durable(batches * 7, Duration::from_secs(60));
    let key = "ferrule:{site-rt}";
    let mut con = redis.conn();
    procs::wait_for(Duration::from_secs(10), || {
        (xlen(&mut con, key) >= rig.durable().total_batches).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "stream has {} entries:\n{}",
            xlen(&mut con, key),
            rig.logs()
        )
    });
    check_stream_matches_log(&rig, &xrange(&mut con, key), "site-rt", 10);
    let (status, body) = http(rig.metrics, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // Without its client certificate the aggregator is refused: degraded, still ready.
    drop(rig.agg.take());
    rig.start_aggregator(&format!(
        "[redis]\nurl = {:?}\ntls_ca_file = {:?}\n",
        redis.url,
        rig.pki.ca_bundle(),
    ));
    let body = procs::wait_for(Duration::from_secs(10), || {
        let (status, body) = http(rig.metrics, "/healthz")?;
        assert_eq!(status, 200, "{body}");
        body.contains("degraded: redis").then_some(body)
    })
    .unwrap_or_else(|| panic!("not degraded without a client certificate:\n{}", rig.logs()));
    println!(
        "redis over TLS: ok with a client certificate; without: {:?}",
        body.trim()
    );
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn batches_reach_a_redis_cluster() {
    let _g = serial();
    let mut rig = Rig::new();
    let redis = Redis::cluster(&rig.root.join("redis"));
    rig.start_aggregator(&format!("[redis]\nurl = {:?}\ncluster = true\n", redis.url));
    let batches = 200;
    rig.start_agent("site-rt", "a1", 200, batches);
    rig.wait_durable(batches * 7, Duration::from_secs(60));
    let key = "ferrule:{site-rt}";
    let client = redis::cluster::ClusterClient::new(vec![redis.url.as_str()]).unwrap();
    let mut con = client.get_connection().unwrap();
    procs::wait_for(Duration::from_secs(10), || {
        (xlen(&mut con, key) >= rig.durable().total_batches).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "stream has {} entries:\n{}",
            xlen(&mut con, key),
            rig.logs()
        )
    });
    let got = xrange(&mut con, key);
    check_stream_matches_log(&rig, &got, "site-rt", 10);
    println!("redis cluster: {} entries == durable log", got.len());
}

/// Throughput of the Redis fan-out alone (no agents): batches handed to a
/// `Publisher` as fast as its queue takes them, pipelined XADDs to one local
/// redis-server, until every one is in the stream. Prints the rates and what one
/// `publish` costs the ingest path.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn fanout_throughput_to_one_redis() {
    use ferrule_aggregator::config::{FanoutSection, RedisSection};
    use ferrule_aggregator::fanout::{Fanout, Published};
    use ferrule_wire::{Epoch, Seq};
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(&tmp.path().join("redis"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (record_bytes, n) in [(200usize, 200_000u64), (3000, 50_000)] {
        let registry = ferrule_telemetry::Registry::new();
        let cfg = FanoutSection::default();
        let redis_cfg: RedisSection = toml_redis(&redis.url);
        let record = vec![0x5au8; record_bytes];
        let (rate, publish_ns, skipped) = rt.block_on(async {
            let (fanout, publisher) = Fanout::start(&cfg, Some(&redis_cfg), &registry).unwrap();
            // Connected before the clock starts.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let started = Instant::now();
            let mut publish_time = Duration::ZERO;
            let mut full = 0u64;
            for q in 1..=n {
                loop {
                    let t = Instant::now();
                    let r = publisher.publish("bench", "a1", Epoch(1), Seq(q), 1000, &record);
                    publish_time += t.elapsed();
                    match r {
                        Published::Queued => break,
                        Published::Skipped(_) => {
                            // Queue full: let the fan-out drain it (spinning
                            // here would take one of the two cores from it).
                            full += 1;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Published::Repeat => panic!("repeat"),
                    }
                }
            }
            drop(publisher);
            fanout.join().await;
            let elapsed = started.elapsed();
            (
                n as f64 / elapsed.as_secs_f64(),
                publish_time.as_nanos() as f64 / (n + full) as f64,
                registry.counter_sum("ferrule_aggregator_fanout_skipped_total"),
            )
        });
        let mut con = redis.conn();
        let len = xlen(&mut con, "ferrule:{bench}");
        redis::cmd("DEL")
            .arg("ferrule:{bench}")
            .query::<()>(&mut con)
            .unwrap();
        assert_eq!(len, n, "every batch in the stream");
        println!(
            "fan-out to one redis-server: {record_bytes}-byte records: {rate:.0} entries/s ({:.1} MB/s); publish() {publish_ns:.0} ns a call; {skipped} queue_full retries counted",
            rate * record_bytes as f64 / 1e6
        );
    }
}

fn toml_redis(url: &str) -> ferrule_aggregator::config::RedisSection {
    ferrule_aggregator::config::RedisSection {
        url: url.into(),
        username: None,
        password: None,
        cluster: false,
        tls_ca_file: None,
        tls_cert_file: None,
        tls_key_file: None,
        stream_prefix: "ferrule".into(),
        max_in_flight: 512,
        max_len: 10_000_000,
        trim_interval_ms: 1000,
        response_timeout_ms: 2000,
        reconnect_max_ms: 5000,
    }
}
