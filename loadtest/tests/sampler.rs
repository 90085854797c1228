//! One sampler at a time, with real parts: two real `ferrule-aggregator`
//! processes share a real `redis-server` (started by `scripts/redis.sh`). The
//! store's history (`ferrule:{sampler}:snapshots`) is read back independently.
//!
//! - Exactly one aggregator samples; the other waits.
//! - The sampler SIGKILLed: the other takes over within the lock's TTL plus
//!   one period, under a higher fence.
//! - The sampler SIGSTOPped past its TTL: the other takes over; resumed, the
//!   old one stops sampling, and no snapshot with its old fence is stored after
//!   the new fence's first (no accepted write with an old fence).
//!
//! Run by `scripts/test.sh` with `--ignored` after `cargo build --workspace
//! --bins`.

// Plain test threads: blocking sleeps are what we want.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

mod support;

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, Proc};
use redis::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::redis_server::Redis;

const TTL_MS: u64 = 1500;
const PERIOD_MS: u64 = 250;

struct Agg {
    metrics: SocketAddr,
    cfg: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

struct Rig {
    _tmp: tempfile::TempDir,
    redis_url: String,
    aggs: Vec<Agg>,
}

impl Rig {
    fn new(redis: &Redis) -> Self {
        Self::with(redis, 2)
    }

    fn with(redis: &Redis, n: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let pki = DevPki::ensure(&root.join("pki")).unwrap();
        let mut aggs = Vec::new();
        for i in 0..n {
            let quic: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
            let metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
            let toml = procs::aggregator_toml(
                &pki,
                &root.join(format!("data-{i}")),
                quic,
                Some(metrics),
                &format!(
                    "[redis]\nurl = {:?}\n\n[sampler]\nperiod_ms = {PERIOD_MS}\nlease_ttl_ms = {TTL_MS}\n",
                    redis.url
                ),
            );
            let cfg = root.join(format!("aggregator-{i}.toml"));
            std::fs::write(&cfg, toml).unwrap();
            aggs.push(Agg {
                metrics,
                cfg,
                log: root.join(format!("aggregator-{i}.log")),
                proc: None,
            });
        }
        Self {
            _tmp: tmp,
            redis_url: redis.url.clone(),
            aggs,
        }
    }

    fn start(&mut self, i: usize) {
        let a = &mut self.aggs[i];
        a.proc = Some(
            Proc::start(
                &format!("aggregator-{i}"),
                &procs::bin("ferrule-aggregator").unwrap(),
                &a.cfg,
                &a.log,
            )
            .unwrap(),
        );
        let m = a.metrics;
        procs::wait_for(Duration::from_secs(20), || {
            procs::http_get(m, "/metrics").ok()
        })
        .unwrap_or_else(|| panic!("aggregator {i} never answered:\n{}", self.logs()));
    }

    /// Whether aggregator `i` says it samples (None: it does not answer).
    fn active(&self, i: usize) -> Option<bool> {
        let text = procs::http_get(self.aggs[i].metrics, "/metrics").ok()?;
        procs::metric(&text, "ferrule_aggregator_sampler_active").map(|v| v == 1.0)
    }

    fn pid(&self, i: usize) -> u32 {
        self.aggs[i].proc.as_ref().unwrap().pid()
    }

    fn signal(&self, i: usize, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid(i).to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// The stored history: (fence, ts) in stream order.
    fn history(&self) -> Vec<(u64, f64)> {
        let mut con = redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap();
        let v: Value = redis::cmd("XRANGE")
            .arg("ferrule:{sampler}:snapshots")
            .arg("-")
            .arg("+")
            .query(&mut con)
            .unwrap();
        let Value::Array(entries) = v else {
            panic!("XRANGE: {v:?}")
        };
        entries
            .iter()
            .map(|e| {
                let Value::Array(parts) = e else {
                    panic!("entry {e:?}")
                };
                let Value::Array(fields) = &parts[1] else {
                    panic!("fields {e:?}")
                };
                let mut f = HashMap::new();
                for kv in fields.chunks_exact(2) {
                    let s = |v: &Value| match v {
                        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        other => panic!("{other:?}"),
                    };
                    f.insert(s(&kv[0]), s(&kv[1]));
                }
                let snap: serde_json::Value = serde_json::from_str(&f["snapshot"]).unwrap();
                assert_eq!(snap["fence"].as_u64(), f["fence"].parse().ok());
                (f["fence"].parse().unwrap(), f["ts"].parse().unwrap())
            })
            .collect()
    }

    /// Snapshots aggregator `i` has stored (0 when it does not answer).
    fn stored(&self, i: usize) -> u64 {
        procs::http_get(self.aggs[i].metrics, "/metrics")
            .ok()
            .and_then(|t| procs::metric(&t, "ferrule_aggregator_sampler_snapshots_total"))
            .unwrap_or(0.0) as u64
    }

    /// Waits until aggregator `i` has stored `n` more snapshots.
    fn wait_stored(&self, i: usize, n: u64, limit: Duration, what: &str) {
        let before = self.stored(i);
        procs::wait_for(limit, || (self.stored(i) >= before + n).then_some(()))
            .unwrap_or_else(|| panic!("{what}: sampling stopped:\n{}", self.logs()));
    }

    fn con(&self) -> redis::Connection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    /// Waits until exactly `i` samples (and no other does).
    fn wait_sampler(&self, i: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        procs::wait_for(limit, || {
            (self.active(i) == Some(true)
                && (0..self.aggs.len()).all(|j| j == i || self.active(j) != Some(true)))
            .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "aggregator {i} never became the only sampler:\n{}",
                self.logs()
            )
        });
        start.elapsed()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for a in &self.aggs {
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            out.push_str(&format!(
                "--- {}\n{}\n",
                a.log.display(),
                procs::strip_ansi(&tail)
            ));
        }
        out
    }
}

/// Fences never go back in the store, and each fence's snapshots are one
/// sampler's: a period apart, not two samplers interleaved.
fn check_history(h: &[(u64, f64)]) {
    for w in h.windows(2) {
        assert!(
            w[1].0 >= w[0].0,
            "a write with an old fence was stored: {w:?}"
        );
        if w[1].0 == w[0].0 {
            assert!(
                w[1].1 - w[0].1 >= PERIOD_MS as f64 / 1000.0 * 0.5,
                "two snapshots under one fence closer than a period: {w:?}"
            );
        }
    }
}

/// The largest gap in stored snapshot times between fence `old` and the next.
fn takeover_gap(h: &[(u64, f64)], old: u64) -> f64 {
    let last_old = h
        .iter()
        .rev()
        .find(|(f, _)| *f == old)
        .map(|x| x.1)
        .unwrap();
    let first_new = h.iter().find(|(f, _)| *f > old).map(|x| x.1).unwrap();
    first_new - last_old
}

/// One aggregator sampling alone on a fresh Redis, two snapshots stored
/// (dropped in order: the aggregator, Redis, then its directory).
fn sampling_alone() -> (Rig, Redis, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let mut rig = Rig::with(&redis, 1);
    rig.start(0);
    rig.wait_stored(0, 2, Duration::from_secs(10), "at the start");
    (rig, redis, dir)
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn one_sampler_at_a_time_taken_over_after_kill_and_after_a_pause() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let mut rig = Rig::new(&redis);
    rig.start(0);
    rig.wait_sampler(0, Duration::from_secs(10));
    rig.start(1);
    // Two seconds with both up: only 0 samples.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_ne!(rig.active(1), Some(true), "two samplers at once");
        std::thread::sleep(Duration::from_millis(100));
    }
    let h = rig.history();
    assert!(h.len() >= 6, "{h:?}");
    let first_fence = h.last().unwrap().0;

    // kill -9 the sampler: 1 takes over within the TTL plus a period.
    rig.aggs[0].proc.as_mut().unwrap().kill9();
    rig.wait_sampler(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(3 * PERIOD_MS));
    let h = rig.history();
    check_history(&h);
    let gap = takeover_gap(&h, first_fence);
    let limit = (TTL_MS + PERIOD_MS) as f64 / 1000.0 + 0.5;
    println!("takeover after kill -9: {gap:.3} s without a snapshot (limit {limit:.3} s)");
    assert!(gap <= limit, "took {gap:.3} s");
    let second_fence = h.last().unwrap().0;
    assert!(second_fence > first_fence);

    // A new 0 waits; then SIGSTOP the sampler (1) past its TTL.
    rig.start(0);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(rig.active(0), Some(false));
    rig.signal(1, "STOP");
    let took = Instant::now();
    procs::wait_for(Duration::from_secs(10), || {
        (rig.active(0) == Some(true)).then_some(())
    })
    .unwrap_or_else(|| panic!("0 never took over from the paused sampler:\n{}", rig.logs()));
    println!("takeover from a paused sampler: {:?}", took.elapsed());
    std::thread::sleep(Duration::from_millis(3 * TTL_MS));
    rig.signal(1, "CONT");
    // Resumed: it notices and stops; 0 goes on.
    rig.wait_sampler(0, Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        rig.active(1),
        Some(false),
        "the resumed sampler stepped down"
    );
    assert_eq!(rig.active(0), Some(true));
    let h = rig.history();
    check_history(&h);
    let third_fence = h.last().unwrap().0;
    assert!(third_fence > second_fence);
    let gap = takeover_gap(&h, second_fence);
    println!("takeover after SIGSTOP: {gap:.3} s without a snapshot (limit {limit:.3} s)");
    assert!(gap <= limit, "took {gap:.3} s");
}

/// The store's own check, whatever the lock says: a snapshot with a fence older
/// than the newest stored is refused (a sampler paused between its lock check
/// and its write), one with the same or a newer fence is stored.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn the_store_refuses_a_fence_older_than_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let mut con = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let keys = ferrule_aggregator::sampler::Keys::new("ferrule");
    let mut store = |fence: u64| -> i64 {
        redis::cmd("EVAL")
            .arg(ferrule_aggregator::sampler::STORE)
            .arg(2)
            .arg(&keys.newest)
            .arg(&keys.snapshots)
            .arg(fence)
            .arg(100)
            .arg(1.5)
            .arg("{}")
            .arg("[]")
            .query(&mut con)
            .unwrap()
    };
    assert_eq!(store(5), 1);
    assert_eq!(store(5), 1);
    assert_eq!(store(4), 0, "an old fence is refused");
    assert_eq!(store(6), 1);
    assert_eq!(store(5), 0);
    let fences: Vec<u64> = {
        let rig_url = redis.url.clone();
        let mut con = redis::Client::open(rig_url.as_str())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap();
        let v: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(&keys.snapshots)
            .arg("-")
            .arg("+")
            .query(&mut con)
            .unwrap();
        v.iter().map(|(_, f)| f["fence"].parse().unwrap()).collect()
    };
    assert_eq!(fences, [5, 5, 6]);
}

/// Without Redis the aggregator samples itself; replaying the history file it
/// wrote gives, byte for byte, the signals it computed live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/test.sh with --ignored"]
async fn the_embedded_history_replays_to_the_live_signals() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let quic: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
    let data = dir.path().join("data");
    let cfg = dir.path().join("aggregator.toml");
    std::fs::write(
        &cfg,
        procs::aggregator_toml(&pki, &data, quic, None, "[sampler]\nperiod_ms = 100\n"),
    )
    .unwrap();
    let agg = ferrule_loadtest::inproc::Aggregator::start(&cfg)
        .await
        .unwrap();
    let spec = procs::AgentSpec {
        site: "s1".into(),
        id: "a1".into(),
        spool: dir.path().join("spool"),
        endpoints: vec![quic.to_string()],
        rate_hz: 200,
        total_samples: None,
        fsync: "interval",
        metrics: None,
        extra: String::new(),
    };
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(&agent_cfg, procs::agent_toml(&pki, &spec).unwrap()).unwrap();
    let agent = ferrule_loadtest::inproc::Agent::start(&agent_cfg).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.stop().await.unwrap();
    let sampled = agg.running.sampled.clone();
    agg.stop().await.unwrap();
    let live: String = sampled
        .lock()
        .unwrap()
        .iter()
        .flat_map(|s| s.signals.iter())
        .map(|s| serde_json::to_string(s).unwrap() + "\n")
        .collect();
    assert!(
        live.contains(r#""stage":"aggregator""#) && live.contains(r#""trend":"stable""#),
        "{live}"
    );
    let file = std::fs::read(data.join("signals/snapshots.jsonl")).unwrap();
    let mut out = Vec::new();
    ferrule_signals::replay(&file[..], &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), live);
}

const K_LOCK: &str = "ferrule:{sampler}:lock";
const K_FENCE: &str = "ferrule:{sampler}:fence";
const K_NEWEST: &str = "ferrule:{sampler}:newest";
const K_SNAPSHOTS: &str = "ferrule:{sampler}:snapshots";
const K_AGGREGATORS: &str = "ferrule:{sampler}:aggregators";
const K_STREAMS: &str = "ferrule:{sampler}:streams";

fn run(con: &mut redis::Connection, args: &[&str]) -> Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The newest stored snapshot, as JSON.
fn last_snapshot(con: &mut redis::Connection) -> serde_json::Value {
    let v: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
        .arg(K_SNAPSHOTS)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)
        .unwrap();
    serde_json::from_str(&v[0].1["snapshot"]).unwrap()
}

/// Redis restarted without persistence (fence counter, newest fence and
/// history all gone) under a sampler that had a fence above 1: the grant after
/// the restart is fence 1 again, and the sampler must go on under it.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn sampling_goes_on_after_redis_restarts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let mut rig = Rig::with(&redis, 1);
    // Forty grants happened before this run.
    run(&mut rig.con(), &["SET", K_FENCE, "40"]);
    rig.start(0);
    rig.wait_stored(0, 3, Duration::from_secs(10), "before the restart");
    assert_eq!(rig.history().last().unwrap().0, 41);
    redis.kill();
    redis.restart();
    rig.wait_stored(0, 4, Duration::from_secs(8), "after Redis restarted empty");
    let h = rig.history();
    check_history(&h);
    assert!(!h.is_empty());
}

/// Only the fence counter is lost (an operator's DEL, an `allkeys-*`
/// eviction) while the newest stored fence survives: a new grant must not be
/// below it, or every write is refused until the counter climbs back.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn sampling_goes_on_when_the_fence_counter_is_lost_but_newest_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let mut rig = Rig::with(&redis, 1);
    run(&mut rig.con(), &["SET", K_FENCE, "40"]);
    rig.start(0);
    rig.wait_stored(0, 3, Duration::from_secs(10), "before");
    let mut con = rig.con();
    run(&mut con, &["DEL", K_FENCE, K_LOCK]);
    rig.wait_stored(
        0,
        4,
        Duration::from_secs(8),
        "after the fence counter was lost",
    );
    let h = rig.history();
    check_history(&h);
    assert!(h.last().unwrap().0 > 41, "{:?}", h.last());
    // And with the history's newest key gone too (only the stream is left).
    run(&mut con, &["DEL", K_FENCE, K_LOCK, K_NEWEST]);
    rig.wait_stored(
        0,
        4,
        Duration::from_secs(8),
        "after fence and newest were lost",
    );
    let h = rig.history();
    check_history(&h);
}

/// A key of another type (or a string that is not a number) in place of each
/// sampler key: WRONGTYPE for every command on it must not stop sampling.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn a_key_of_the_wrong_type_does_not_stop_sampling() {
    let (rig, _redis, _dir) = sampling_alone();
    let mut con = rig.con();
    for key in [
        K_LOCK,
        K_FENCE,
        K_NEWEST,
        K_SNAPSHOTS,
        K_AGGREGATORS,
        K_STREAMS,
    ] {
        run(&mut con, &["DEL", key]);
        run(&mut con, &["RPUSH", key, "junk"]);
        rig.wait_stored(0, 8, Duration::from_secs(8), &format!("a list at {key}"));
    }
    for key in [K_FENCE, K_NEWEST] {
        run(&mut con, &["SET", key, "not-a-number"]);
        rig.wait_stored(0, 3, Duration::from_secs(8), &format!("a word at {key}"));
    }
    check_history(&rig.history());
}

/// Junk in what the sampler reads: names too long for a stage, reports
/// dated far in the future (never "gone"), thousands of them, streams that do
/// not exist. Sampling goes on, and a snapshot stays a bounded size.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn junk_aggregators_and_streams_do_not_stop_sampling() {
    let (rig, _redis, _dir) = sampling_alone();
    let mut con = rig.con();
    let long = "x".repeat(300);
    // A stage name too long for the engine, from a report and from a group.
    run(&mut con, &["HSET", K_AGGREGATORS, &long, "9000000000 1 1"]);
    run(&mut con, &["XADD", "site-long", "*", "f", "v"]);
    run(&mut con, &["XGROUP", "CREATE", "site-long", &long, "0"]);
    run(&mut con, &["SADD", K_STREAMS, "site-long"]);
    rig.wait_stored(0, 3, Duration::from_secs(8), "a 300-byte stage name");
    // Two thousand reports from the future.
    let mut cmd = redis::cmd("HSET");
    cmd.arg(K_AGGREGATORS);
    for i in 0..2000 {
        cmd.arg(format!("ghost-{i}")).arg("9000000000 5 3");
    }
    let _: Value = cmd.query(&mut con).unwrap();
    rig.wait_stored(0, 3, Duration::from_secs(8), "2000 reports from the future");
    let snap = last_snapshot(&mut con);
    let n = snap["stages"].as_array().unwrap().len();
    assert!(n <= 1024, "{n} stages in one snapshot");
    // Twenty thousand streams in the set that do not exist.
    for chunk in 0..20 {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(K_STREAMS);
        for i in 0..1000 {
            cmd.arg(format!("gone-{chunk}-{i}"));
        }
        let _: Value = cmd.query(&mut con).unwrap();
    }
    rig.wait_stored(0, 4, Duration::from_secs(8), "20 000 streams in the set");
    check_history(&rig.history());
}

/// Streams whose counters are huge (XSETID ENTRIESADDED; 6e18 passes
/// through Lua's doubles exactly): their sum over a group must not overflow
/// (a panic ends the sampler's task).
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn huge_stream_counters_do_not_stop_sampling() {
    let (rig, _redis, _dir) = sampling_alone();
    let mut con = rig.con();
    for s in ["big-1", "big-2", "big-3", "big-4"] {
        run(&mut con, &["XADD", s, "1-1", "f", "v"]);
        run(&mut con, &["XGROUP", "CREATE", s, "g", "0"]);
        run(
            &mut con,
            &[
                "XSETID",
                s,
                "1-1",
                "ENTRIESADDED",
                "6000000000000000000",
                "MAXDELETEDID",
                "0-0",
            ],
        );
        run(&mut con, &["SADD", K_STREAMS, s]);
    }
    rig.wait_stored(
        0,
        4,
        Duration::from_secs(8),
        "counters summing past u64::MAX",
    );
    let snap = last_snapshot(&mut con);
    let g = snap["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "redis:g")
        .cloned()
        .unwrap_or_else(|| panic!("{snap}"));
    assert_eq!(g["head"].as_u64(), Some(u64::MAX), "{g}");
}

/// Redis paused (SIGSTOP) well past the lock's TTL with a sampler: sampling
/// resumes by itself after, and the history has no old fence after a new one.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn sampling_resumes_after_redis_is_paused_past_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let mut rig = Rig::with(&redis, 2);
    rig.start(0);
    rig.wait_sampler(0, Duration::from_secs(10));
    rig.start(1);
    rig.wait_stored(0, 2, Duration::from_secs(5), "both up");
    redis.pause();
    std::thread::sleep(Duration::from_millis(3 * TTL_MS));
    redis.resume();
    let resumed = Instant::now();
    procs::wait_for(Duration::from_secs(8), || {
        let n = rig.history().len();
        std::thread::sleep(Duration::from_millis(4 * PERIOD_MS));
        (rig.history().len() >= n + 3).then_some(())
    })
    .unwrap_or_else(|| panic!("sampling never resumed:\n{}", rig.logs()));
    println!("resumed after {:?}", resumed.elapsed());
    let ones = (0..2).filter(|&i| rig.active(i) == Some(true)).count();
    assert_eq!(ones, 1, "{}", rig.logs());
    check_history(&rig.history());
}

/// Three aggregators; the sampler paused or killed in turn, at different
/// moments of its period. Never two samplers in the history, never a stop.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn three_contending_aggregators_take_turns_safely() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let mut rig = Rig::with(&redis, 3);
    for i in 0..3 {
        rig.start(i);
    }
    for round in 0..4u64 {
        let who = procs::wait_for(Duration::from_secs(8), || {
            let on: Vec<usize> = (0..3).filter(|&i| rig.active(i) == Some(true)).collect();
            (on.len() == 1).then(|| on[0])
        })
        .unwrap_or_else(|| panic!("round {round}: not one sampler:\n{}", rig.logs()));
        std::thread::sleep(Duration::from_millis(37 * round + 50));
        if round % 2 == 0 {
            rig.signal(who, "STOP");
            std::thread::sleep(Duration::from_millis(2 * TTL_MS));
            rig.signal(who, "CONT");
        } else {
            rig.aggs[who].proc.as_mut().unwrap().kill9();
            std::thread::sleep(Duration::from_millis(TTL_MS));
            rig.start(who);
        }
    }
    std::thread::sleep(Duration::from_millis(TTL_MS + 2 * PERIOD_MS));
    let on = (0..3).filter(|&i| rig.active(i) == Some(true)).count();
    assert_eq!(on, 1, "{}", rig.logs());
    check_history(&rig.history());
}
