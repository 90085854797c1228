//! The live page, with real parts: two real `ferrule-aggregator` processes
//! share a real `redis-server`; a real `ferrule-agent` streams into the first;
//! the page is served by the second (so what it shows came through the
//! sampler's Redis broadcast), and read by a real headless Chromium and by
//! plain WebSocket clients.
//!
//! - A consumer group `audit`, read by this test at 30 % of the production
//!   rate, then at one and a half times it: the page shows `redis:audit`
//!   falling behind, then catching up; a screenshot is saved to
//!   `target/test-artifacts/live-page.png`.
//! - Both gateways forward the same bytes for the same sequence, equal to the
//!   history entry they came from; a viewer that reconnects with its last
//!   sequence gets exactly what it missed, in order, and no reset.
//! - Without Redis the page shows the aggregator's own stages.
//!
//! Run by `scripts/test.sh` with `--ignored` after `cargo build --workspace
//! --bins`.

#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

mod support;

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use futures_util::StreamExt;
use redis::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::browser::Browser;
use support::redis_server::Redis;
use tokio_tungstenite::tungstenite::Message;

const STREAM: &str = "ferrule:{plant-1}";

struct Agg {
    metrics: SocketAddr,
    page: SocketAddr,
    _proc: Proc,
}

struct Rig {
    tmp: tempfile::TempDir,
    pki: DevPki,
    aggs: Vec<Agg>,
    quic: Vec<SocketAddr>,
    _agent: Option<Proc>,
}

impl Rig {
    /// `n` aggregators, with `redis` when given, each serving the page.
    fn new(redis: Option<&Redis>, n: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let pki = DevPki::ensure(&root.join("pki")).unwrap();
        let mut aggs = Vec::new();
        let mut quic = Vec::new();
        for i in 0..n {
            let q: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
            let metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
            let page: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
            let redis = redis.map_or(String::new(), |r| {
                format!("[redis]\nurl = {:?}\ntrim_interval_ms = 0\n\n", r.url)
            });
            let toml = procs::aggregator_toml(
                &pki,
                &root.join(format!("data-{i}")),
                q,
                Some(metrics),
                &format!(
                    "{redis}[sampler]\nperiod_ms = 500\nlease_ttl_ms = 1500\n\n[page]\nlisten = \"{page}\"\n"
                ),
            );
            let cfg = root.join(format!("aggregator-{i}.toml"));
            std::fs::write(&cfg, toml).unwrap();
            let proc = Proc::start(
                &format!("aggregator-{i}"),
                &procs::bin("ferrule-aggregator").unwrap(),
                &cfg,
                &root.join(format!("aggregator-{i}.log")),
            )
            .unwrap();
            procs::wait_for(Duration::from_secs(20), || {
                procs::http_get(page, "/state").ok()
            })
            .unwrap_or_else(|| panic!("aggregator {i}'s page never answered"));
            aggs.push(Agg {
                metrics,
                page,
                _proc: proc,
            });
            quic.push(q);
        }
        Self {
            tmp,
            pki,
            aggs,
            quic,
            _agent: None,
        }
    }

    /// One agent (plant-1/plc-1) streaming into aggregator `i`.
    fn agent(&mut self, i: usize, rate_hz: u32) {
        let root = self.tmp.path();
        let spec = AgentSpec {
            site: "plant-1".into(),
            id: "plc-1".into(),
            spool: root.join("spool"),
            endpoints: vec![self.quic[i].to_string()],
            rate_hz,
            total_samples: None,
            fsync: "interval",
            metrics: None,
            extra: String::new(),
        };
        let cfg = root.join("agent.toml");
        std::fs::write(&cfg, procs::agent_toml(&self.pki, &spec).unwrap()).unwrap();
        self._agent = Some(
            Proc::start(
                "agent",
                &procs::bin("ferrule-agent").unwrap(),
                &cfg,
                &root.join("agent.log"),
            )
            .unwrap(),
        );
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for f in ["aggregator-0.log", "aggregator-1.log", "agent.log"] {
            let t = std::fs::read_to_string(self.tmp.path().join(f)).unwrap_or_default();
            let tail: Vec<&str> = t.lines().rev().take(15).collect();
            out += &format!(
                "--- {f}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out
    }
}

fn conn(redis: &Redis) -> redis::Connection {
    redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap()
}

/// Entries ever added to the site's stream.
fn entries_added(con: &mut redis::Connection) -> u64 {
    let v: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(STREAM)
        .query(con)
        .unwrap();
    let Value::Array(items) = v else {
        panic!("XINFO: {v:?}")
    };
    for kv in items.chunks(2) {
        if let [Value::BulkString(k), Value::Int(n)] = kv {
            if k == b"entries-added" {
                return *n as u64;
            }
        }
    }
    panic!("XINFO without entries-added")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The headline: a consumer slows down and speeds up again, and the page (a
/// real browser, on the aggregator the agent is not connected to) says so.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn the_page_shows_a_slow_consumer_falling_behind_then_catching_up() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(tmp.path());
    let mut con = conn(&redis);
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg("audit")
        .arg("0")
        .arg("MKSTREAM")
        .query::<()>(&mut con)
        .unwrap();
    let mut rig = Rig::new(Some(&redis), 2);
    rig.agent(0, 100);
    // The production rate, measured.
    procs::wait_for(Duration::from_secs(20), || {
        (entries_added(&mut con) > 0).then_some(())
    })
    .unwrap_or_else(|| panic!("nothing reached the stream:\n{}", rig.logs()));
    let a0 = entries_added(&mut con);
    std::thread::sleep(Duration::from_secs(3));
    let produced = (entries_added(&mut con) - a0) as f64 / 3.0;
    assert!(produced > 1.0, "production {produced}/s");
    // The consumer: a token bucket at a rate the test sets (milli-entries/s).
    let rate = Arc::new(AtomicU64::new((produced * 0.3 * 1000.0) as u64));
    let stop = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (rate, stop, url) = (rate.clone(), stop.clone(), redis.url.clone());
        std::thread::spawn(move || {
            let mut con = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection_with_timeout(Duration::from_secs(2))
                .unwrap();
            let mut allowed = 0.0f64;
            let mut t = Instant::now();
            while stop.load(Ordering::Relaxed) == 0 {
                std::thread::sleep(Duration::from_millis(100));
                let now = Instant::now();
                allowed += rate.load(Ordering::Relaxed) as f64 / 1000.0 * (now - t).as_secs_f64();
                t = now;
                let n = allowed.floor().min(1000.0) as u64;
                if n == 0 {
                    continue;
                }
                let v: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("audit")
                    .arg("test")
                    .arg("COUNT")
                    .arg(n)
                    .arg("STREAMS")
                    .arg(STREAM)
                    .arg(">")
                    .query(&mut con)
                    .unwrap();
                let got = match &v {
                    Value::Array(s) => match s.first() {
                        Some(Value::Array(kv)) => match kv.get(1) {
                            Some(Value::Array(e)) => e.len(),
                            _ => 0,
                        },
                        _ => 0,
                    },
                    _ => 0,
                };
                allowed -= got as f64;
                if got == 0 {
                    allowed = allowed.min(0.0);
                }
            }
        })
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let page = format!("http://{}/", rig.aggs[1].page);
    let shot = repo().join("target/test-artifacts/live-page.png");
    let outcome = rt.block_on(async {
        let mut b = Browser::launch().await;
        b.open(&page).await;
        let trend = r#"(() => { const e = document.querySelector('[data-stage="redis:audit"]'); return e ? e.dataset.trend + "|" + e.querySelector('.text').textContent : null; })()"#;
        let behind = b
            .wait_for(trend, Duration::from_secs(60), |v| {
                v.as_str().is_some_and(|s| s.starts_with("falling_behind|"))
            })
            .await;
        let Some(behind) = behind else {
            let dom = b.eval("document.getElementById('stages').innerText").await;
            return Err(format!("the page never showed redis:audit falling behind; it shows: {dom}"));
        };
        // The same page lists the aggregators' stages too, in words.
        let names = b
            .eval("[...document.querySelectorAll('.stage')].map(e => e.dataset.stage).join(',')")
            .await;
        // A few seconds more behind, then drain at 1.5 times the production
        // rate: a backlog that takes seconds to drain, so "catching up" holds
        // for several snapshots (a drain faster than the trend's confirmation
        // would go from falling behind straight to stable).
        tokio::time::sleep(Duration::from_secs(5)).await;
        rate.store((produced * 1.5 * 1000.0) as u64, Ordering::Relaxed);
        let catching = b
            .wait_for(trend, Duration::from_secs(60), |v| {
                v.as_str().is_some_and(|s| s.starts_with("catching_up|"))
            })
            .await;
        let size = b.screenshot(&shot).await;
        let Some(catching) = catching else {
            let dom = b.eval("document.getElementById('stages').innerText").await;
            return Err(format!("the page never showed redis:audit catching up; it shows: {dom}"));
        };
        let conn_state = b.eval("document.getElementById('conn').dataset.state").await;
        // The agent is connected to the other aggregator; this page shows it
        // too (every aggregator's page shows the fleet's agents).
        let agent = b
            .wait_for(
                r#"(() => { const r = document.querySelector('#agents tr[data-agent="plant-1/plc-1"]'); return r ? r.innerText : null; })()"#,
                Duration::from_secs(20),
                |v| v.as_str().is_some_and(|s| s.contains("yes")),
            )
            .await;
        let Some(agent) = agent else {
            let t = b.eval("document.getElementById('agents').innerText").await;
            return Err(format!("the page never listed the agent on the other aggregator: {t}"));
        };
        Ok((behind, catching, names, size, conn_state, agent))
    });
    stop.store(1, Ordering::Relaxed);
    consumer.join().unwrap();
    let (behind, catching, names, size, conn_state, agent) =
        outcome.unwrap_or_else(|e| panic!("{e}\n{}", rig.logs()));
    println!("agents table: {agent}");
    assert!(
        agent.as_str().unwrap().contains("batches"),
        "the spool backlog it reports: {agent}"
    );
    println!(
        "page: {behind}\npage: {catching}\nstages: {names}\nscreenshot: {} ({size} bytes)",
        shot.display()
    );
    assert!(behind.as_str().unwrap().contains("behind"), "{behind}");
    let c = catching.as_str().unwrap();
    assert!(c.contains("catching up") || c.contains("to go"), "{c}");
    let names = names.as_str().unwrap();
    assert!(
        names.contains("aggregator:"),
        "the aggregators' stages are shown: {names}"
    );
    assert_eq!(conn_state, "live");
    assert!(
        size > 10_000,
        "a screenshot of a rendered page, not a blank one"
    );
    // The sampler's metric says one of the two samples.
    let active: f64 = rig
        .aggs
        .iter()
        .filter_map(|a| {
            procs::metric(
                &procs::http_get(a.metrics, "/metrics").ok()?,
                "ferrule_aggregator_sampler_active",
            )
        })
        .sum();
    assert_eq!(active, 1.0);
}

/// Collects the signal sets a viewer receives for `for_`: (seq, exact text),
/// and whether a reset came first.
async fn collect(url: String, for_: Duration) -> (bool, Vec<(String, String)>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut reset_first = false;
    let mut first = true;
    let deadline = tokio::time::Instant::now() + for_;
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        let Message::Text(t) = m else { continue };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v.get("reset").is_some() {
            reset_first |= first;
        } else if let Some(seq) = v.get("seq").and_then(|s| s.as_str()) {
            out.push((seq.to_string(), t.to_string()));
        }
        if v.get("local").is_none() {
            first = false;
        }
    }
    (reset_first, out)
}

/// Both gateways forward the same bytes, the bytes of the history entry; a
/// reconnecting viewer gets exactly what it missed.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn gateways_agree_byte_for_byte_and_backfill_a_reconnecting_viewer() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(tmp.path());
    let mut rig = Rig::new(Some(&redis), 2);
    rig.agent(0, 50);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (u0, u1) = (
        format!("ws://{}/ws", rig.aggs[0].page),
        format!("ws://{}/ws", rig.aggs[1].page),
    );
    rt.block_on(async {
        // Wait for sets to flow.
        let (_, first) = collect(u1.clone(), Duration::from_secs(3)).await;
        assert!(!first.is_empty(), "no sets:\n{}", rig.logs());
        // Viewer A on aggregator 0 for 3 s, viewer B on aggregator 1 for 9 s.
        let b = tokio::spawn(collect(u1.clone(), Duration::from_secs(9)));
        let (reset_a, a) = collect(u0.clone(), Duration::from_secs(3)).await;
        assert!(
            reset_a,
            "a new viewer starts with a reset and the full state"
        );
        let last = a.last().unwrap().0.clone();
        // A is away for 3 s, then comes back with its last sequence.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (reset_again, again) =
            collect(format!("{u0}?since={last}"), Duration::from_secs(2)).await;
        let (_, b) = b.await.unwrap();
        assert!(
            !reset_again,
            "a viewer whose sequence is held gets no reset"
        );
        let b_after: Vec<&(String, String)> = b
            .iter()
            .filter(|(s, _)| seq(s) > seq(&last) && again.iter().any(|(x, _)| x == s))
            .collect();
        // What A got on reconnecting starts right after `last`, with nothing
        // skipped and nothing repeated: the same sets B saw in that span.
        let missed: Vec<&(String, String)> =
            b.iter().filter(|(s, _)| seq(s) > seq(&last)).collect();
        assert!(again.len() >= 4, "{} sets after reconnecting", again.len());
        assert_eq!(again[0].0, missed[0].0, "the first set after `last`");
        for w in again.windows(2) {
            assert!(
                seq(&w[1].0) > seq(&w[0].0),
                "in order, no repeat: {} then {}",
                w[0].0,
                w[1].0
            );
        }
        assert!(b_after.len() >= 4);
        for (s, text) in &b_after {
            let (_, t) = again.iter().find(|(x, _)| x == s).unwrap();
            assert_eq!(t, text, "the same bytes from both gateways for {s}");
        }
        // Those bytes are the history entry's.
        let mut con = conn(&redis);
        let (s, text) = b_after[0];
        let v: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg("ferrule:{sampler}:snapshots")
            .arg(s)
            .arg(s)
            .query(&mut con)
            .unwrap();
        let f = &v[0].1;
        let rebuilt = format!(
            r#"{{"seq":"{s}","fence":{},"ts":{},"snapshot":{},"signals":{}}}"#,
            f["fence"], f["ts"], f["snapshot"], f["signals"]
        );
        assert_eq!(&rebuilt, text);
    });
}

fn seq(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Without Redis (the embedded default) the page shows the aggregator's own
/// stages, the agent connected to it with the spool backlog it reports, and
/// the stage `agents` made of those reports.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn the_embedded_default_serves_the_page_with_its_own_stages_and_agents() {
    let mut rig = Rig::new(None, 1);
    rig.agent(0, 50);
    let page = rig.aggs[0].page;
    let state = procs::wait_for(Duration::from_secs(30), || {
        let t = procs::http_get(page, "/state").ok()?;
        let body = t.split("\r\n\r\n").nth(1).unwrap_or(&t).to_string();
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let connected = v["local"]["agents"].as_array()?.iter().any(|a| {
            a["key"] == "plant-1/plc-1" && a["connected"] == true && a["batches"].as_u64() > Some(0)
        });
        let stages: Vec<String> = v["signals"]["signals"]
            .as_array()?
            .iter()
            .filter_map(|s| s["stage"].as_str().map(str::to_string))
            .collect();
        // The agent reports its spool with its heartbeats (the wire's
        // Status): the table shows it and the stage `agents` sums it.
        let reported = v["local"]["agents"][0]["spool_batches"].is_u64();
        (connected
            && reported
            && stages.iter().any(|s| s == "aggregator")
            && stages.iter().any(|s| s == "agents"))
        .then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "the page never showed the stage and the agent:\n{}",
            rig.logs()
        )
    });
    let agent = &state["local"]["agents"][0];
    assert!(agent["cert_days_left"].as_f64().unwrap() > 1.0, "{agent}");
    assert!(agent["clock_offset_ms"].is_number(), "{agent}");
    // The page itself is served.
    let html = procs::http_get(page, "/").unwrap();
    assert!(html.contains("are we keeping up?"));
}
