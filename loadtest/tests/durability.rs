//! Durability acceptance tests of the transport: the real `ferrule-agent` and
//! `ferrule-aggregator` binaries on loopback, killed and stopped in the ways that
//! lose data when an invariant is broken (ARCHITECTURE.md: ack after durable,
//! delete after ack, credit bounds memory).
//!
//! 1. The aggregator killed with SIGKILL twice under load: nothing lost, nothing
//!    written twice.
//! 2. The aggregator stopped for 60 s: the agents spool to disk with bounded
//!    memory, and everything drains afterwards.
//! 3. An agent killed with SIGKILL mid-send (`fsync = "always"`): same epoch after
//!    restart, every spooled batch arrives, few duplicates.
//! 4. GoAway: the first aggregator stops cleanly, the agents move to the second,
//!    and the two logs together hold every sample.
//!
//! Each test runs in its own temporary directory with its own ports and PKI. They
//! take tens of seconds each and are run by `scripts/test.sh` with `--ignored`;
//! they run one at a time (a lock below) so that the heavy one does not share the
//! two cores with another of them. On failure the tail of every process's log is
//! printed.

// Plain test threads, never an async executor: blocking sleeps are what we want.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

use ferrule_agent::config::{FsyncMode, SpoolSection};
use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

const SITE: &str = "site-dur";
/// The synthetic input's sensors per tick.
const SENSORS: u64 = 7;
/// The aggregator's default `server.drain_timeout_secs`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for an agent to drain (5 s) and close (1 s) on a loaded machine.
const AGENT_STOP: Duration = Duration::from_secs(30);
/// Long enough for an aggregator to drain and close on a loaded machine.
const AGGREGATOR_STOP: Duration = Duration::from_secs(30);

/// One test at a time: they measure and kill processes on two shared cores.
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

/// A log file's text from byte `from` on, without colours.
fn read_log(path: &Path, from: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    procs::strip_ansi(&String::from_utf8_lossy(&bytes[from..]))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The last `n` lines of a log.
fn tail(path: &Path, n: usize) -> String {
    let text = read_log(path, 0);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The integer value of `key=` in a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let pat = format!(" {key}=");
    let at = line.find(&pat)? + pat.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One agent's line of an `inspect` report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Stats {
    events: u64,
    batches: u64,
    last_seq: u64,
    epoch: u64,
    epochs: u64,
    seq_gaps: u64,
    seqs_missing: u64,
    duplicates_in_log: u64,
    duplicates_dropped: u64,
}

impl Stats {
    fn of(report: &Value, agent_key: &str) -> Self {
        let a = &report["agents"][agent_key];
        let n = |k: &str| a[k].as_u64().unwrap_or(0);
        Self {
            events: n("events"),
            batches: n("batches"),
            last_seq: n("last_seq"),
            epoch: n("epoch"),
            epochs: n("epochs"),
            seq_gaps: n("seq_gaps"),
            seqs_missing: n("seqs_missing"),
            duplicates_in_log: n("duplicates_in_log"),
            duplicates_dropped: n("duplicates_dropped"),
        }
    }
}

/// `inspect` of a data directory; `None` until the log exists.
fn inspect(data: &Path) -> Option<Value> {
    procs::inspect(data).ok()
}

struct Aggregator {
    name: String,
    data: PathBuf,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    /// Where this start's output begins in the log.
    mark: u64,
    proc: Option<Proc>,
}

impl Aggregator {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it (same config, same data directory every time) and waits until it
    /// listens.
    fn start(&mut self) {
        self.mark = file_len(&self.log);
        let bin = procs::bin("ferrule-aggregator").unwrap();
        self.proc = Some(Proc::start(&self.name, &bin, &self.config, &self.log).unwrap());
        let up = procs::wait_for(Duration::from_secs(60), || {
            if !self.proc.as_mut().is_some_and(Proc::is_running) {
                return Some(false);
            }
            read_log(&self.log, self.mark)
                .contains("aggregator listening")
                .then_some(true)
        });
        assert_eq!(
            up,
            Some(true),
            "{} did not start listening within 60 s (see its log below)",
            self.name
        );
    }

    fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// SIGTERM; whether it exited successfully within `timeout`, and how long it took.
    fn term(&mut self, timeout: Duration) -> (bool, Duration) {
        let t = Instant::now();
        let ok = self.proc.take().is_some_and(|mut p| p.term(timeout));
        (ok, t.elapsed())
    }

    /// Agent sessions established since the last start.
    fn sessions_since_start(&self) -> usize {
        read_log(&self.log, self.mark)
            .matches("session established")
            .count()
    }

    /// Waits until `n` sessions were established since the last start; how long
    /// that took from now.
    fn wait_sessions(&self, n: usize, timeout: Duration) -> Duration {
        let t = Instant::now();
        let ok = procs::wait_for(timeout, || (self.sessions_since_start() >= n).then_some(()));
        assert!(
            ok.is_some(),
            "{}: only {} of {n} agent sessions established within {timeout:?}",
            self.name,
            self.sessions_since_start()
        );
        t.elapsed()
    }
}

struct Agent {
    name: String,
    /// `site/agent`, as `inspect` names it.
    key: String,
    spec: AgentSpec,
    config: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Agent {
    fn start(&mut self) {
        let bin = procs::bin("ferrule-agent").unwrap();
        self.proc = Some(Proc::start(&self.name, &bin, &self.config, &self.log).unwrap());
    }

    fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    fn term(&mut self, timeout: Duration) -> bool {
        self.proc.take().is_some_and(|mut p| p.term(timeout))
    }

    fn rss_kib(&self) -> Option<u64> {
        self.proc.as_ref().and_then(Proc::rss_kib)
    }

    /// `(epoch, first_unacked, next)` of every "spool open" line in its log, one
    /// per start.
    fn spool_opens(&self) -> Vec<(u64, u64, u64)> {
        read_log(&self.log, 0)
            .lines()
            .filter(|l| l.contains("spool open"))
            .map(|l| {
                (
                    field(l, "epoch").unwrap_or(0),
                    field(l, "first_unacked").unwrap_or(0),
                    field(l, "next").unwrap_or(0),
                )
            })
            .collect()
    }

    /// `(first_unacked, next)` of its spool, opened after the agent exited.
    fn spool_state(&self) -> (u64, u64) {
        let cfg = SpoolSection {
            dir: self.spec.spool.clone(),
            fsync: match self.spec.fsync {
                "always" => FsyncMode::Always,
                _ => FsyncMode::Interval,
            },
            ..SpoolSection::default()
        };
        let (spool, _) =
            ferrule_agent::spool::Spool::open(&cfg, &ferrule_telemetry::Registry::new()).unwrap();
        (spool.first_unacked().0, spool.next_seq().0)
    }
}

/// Everything one test runs: removed (processes killed, directory deleted) when
/// dropped; prints every log's tail first if the test failed.
struct Cluster {
    aggs: Vec<Aggregator>,
    agents: Vec<Agent>,
    pki: DevPki,
    dir: PathBuf,
    // Last: deleted after the processes above are gone.
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// A temporary directory, a PKI and the named aggregators (not started).
    fn new(aggregators: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let pki = DevPki::ensure(&dir.join("pki")).unwrap();
        let aggs = aggregators
            .iter()
            .map(|name| {
                let port = procs::free_udp_port().unwrap();
                let data = dir.join(format!("{name}-data"));
                let quic = SocketAddr::from(([127, 0, 0, 1], port));
                let config = dir.join(format!("{name}.toml"));
                std::fs::write(&config, procs::aggregator_toml(&pki, &data, quic, None, ""))
                    .unwrap();
                Aggregator {
                    name: (*name).to_string(),
                    data,
                    config,
                    log: dir.join(format!("{name}.log")),
                    port,
                    mark: 0,
                    proc: None,
                }
            })
            .collect();
        Self {
            aggs,
            agents: Vec::new(),
            pki,
            dir,
            _tmp: tmp,
        }
    }

    /// Adds an agent (not started) sending to `endpoints`, in order; `extra` is
    /// appended to its configuration.
    fn add_agent(
        &mut self,
        id: &str,
        endpoints: Vec<String>,
        rate_hz: u32,
        total_samples: Option<u64>,
        fsync: &'static str,
        extra: &str,
    ) {
        let spec = AgentSpec {
            site: SITE.to_string(),
            id: id.to_string(),
            spool: self.dir.join(format!("{id}-spool")),
            endpoints,
            rate_hz,
            total_samples,
            fsync,
            metrics: None,
            extra: extra.to_string(),
        };
        let config = self.dir.join(format!("{id}.toml"));
        std::fs::write(&config, procs::agent_toml(&self.pki, &spec).unwrap()).unwrap();
        self.agents.push(Agent {
            name: format!("agent {id}"),
            key: format!("{SITE}/{id}"),
            spec,
            config,
            log: self.dir.join(format!("{id}.log")),
            proc: None,
        });
    }

    /// Panics naming every agent that is not running.
    fn assert_agents_alive(&mut self, when: &str) {
        let dead: Vec<String> = self
            .agents
            .iter_mut()
            .filter_map(|a| (!a.running()).then(|| a.name.clone()))
            .collect();
        assert!(dead.is_empty(), "{when}: agents died: {dead:?}");
    }

    /// SIGTERMs every agent and asserts each exits successfully.
    fn stop_agents(&mut self) {
        for a in &mut self.agents {
            assert!(a.running(), "{} died before the end of the run", a.name);
            assert!(
                a.term(AGENT_STOP),
                "{} did not exit cleanly within {AGENT_STOP:?} of SIGTERM",
                a.name
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let logs = self
            .aggs
            .iter()
            .map(|a| (&a.name, &a.log))
            .chain(self.agents.iter().map(|a| (&a.name, &a.log)));
        for (name, log) in logs {
            eprintln!(
                "---- {name}: last 40 lines of {} ----\n{}",
                log.display(),
                tail(log, 40)
            );
        }
    }
}

/// Polls `inspect` of `data` until `done` holds, checking that every agent still
/// runs; panics with the last report after `timeout`. Returns the report.
fn wait_inspect(
    c: &mut Cluster,
    datas: &[PathBuf],
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let start = Instant::now();
    let mut last_print = Instant::now();
    let mut last: Vec<Value> = Vec::new();
    loop {
        c.assert_agents_alive(what);
        if let Some(reports) = datas.iter().map(|d| inspect(d)).collect::<Option<Vec<_>>>() {
            if done(&reports) {
                return reports;
            }
            last = reports;
        }
        if start.elapsed() > timeout {
            panic!(
                "{what}: not done within {timeout:?}; last inspect reports: {}",
                serde_json::to_string_pretty(&last).unwrap_or_default()
            );
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            last_print = Instant::now();
            let events: Vec<Vec<u64>> = last
                .iter()
                .map(|r| {
                    c.agents
                        .iter()
                        .map(|a| Stats::of(r, &a.key).events)
                        .collect()
                })
                .collect();
            println!(
                "  ... {what}: {:.0} s, events per log per agent {events:?}",
                start.elapsed().as_secs_f64()
            );
        }
        sleep(Duration::from_secs(2));
    }
}

/// Polls until two reports 2 s apart agree (nothing more is arriving).
fn wait_stable(data: &Path, timeout: Duration) -> Value {
    let mut prev: Option<Value> = None;
    let r = procs::wait_for(timeout, || {
        let now = inspect(data)?;
        let same = prev
            .as_ref()
            .is_some_and(|p| p["total_batches"] == now["total_batches"]);
        prev = Some(now.clone());
        if same {
            return Some(now);
        }
        sleep(Duration::from_secs(2));
        None
    });
    r.unwrap_or_else(|| panic!("the log under {} kept changing", data.display()))
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn aggregator_sigkill_twice_under_load_loses_and_duplicates_nothing() {
    let _serial = serial();
    const AGENTS: usize = 5;
    const RATE_HZ: u32 = 2857; // x 7 sensors = 19 999 events/s per agent
    const TOTAL: u64 = 2857 * SENSORS * 30; // 30 s of generation
    let mut c = Cluster::new(&["agg"]);
    let endpoint = c.aggs[0].endpoint();
    for i in 1..=AGENTS {
        c.add_agent(
            &format!("a{i}"),
            vec![endpoint.clone()],
            RATE_HZ,
            Some(TOTAL),
            "interval",
            "",
        );
    }
    c.aggs[0].start();
    let t0 = Instant::now();
    for a in &mut c.agents {
        a.start();
    }
    c.aggs[0].wait_sessions(AGENTS, Duration::from_secs(60));

    let mut reconnects = Vec::new();
    for (kill_no, at) in [(1, Duration::from_secs(8)), (2, Duration::from_secs(18))] {
        sleep_until(t0 + at);
        c.assert_agents_alive(&format!("before kill {kill_no}"));
        let killed_at = t0.elapsed();
        c.aggs[0].kill9();
        sleep(Duration::from_secs(1));
        c.aggs[0].start();
        // The next kill should hit live sessions: wait for every agent to be back.
        let back = c.aggs[0].wait_sessions(AGENTS, Duration::from_secs(120));
        println!(
            "kill {kill_no}: SIGKILL at {:.1} s, restarted after 1 s, all {AGENTS} agents back {:.1} s after the restart",
            killed_at.as_secs_f64(),
            back.as_secs_f64()
        );
        reconnects.push(back);
    }

    let datas = vec![c.aggs[0].data.clone()];
    let keys: Vec<String> = c.agents.iter().map(|a| a.key.clone()).collect();
    wait_inspect(
        &mut c,
        &datas,
        Duration::from_secs(900),
        "waiting for every generated event in the log",
        |r| keys.iter().all(|k| Stats::of(&r[0], k).events >= TOTAL),
    );
    let run_time = t0.elapsed();
    assert!(c.aggs[0].running(), "the aggregator died");
    c.stop_agents();
    let (ok, took) = c.aggs[0].term(AGGREGATOR_STOP);
    assert!(
        ok,
        "the aggregator did not exit cleanly on SIGTERM ({took:?})"
    );

    let report = inspect(&c.aggs[0].data).unwrap();
    println!(
        "run time {:.1} s (agents start to every event in the log)",
        run_time.as_secs_f64()
    );
    for a in &c.agents {
        let s = Stats::of(&report, &a.key);
        println!(
            "  {}: events {} batches {} last_seq {} epochs {} seq_gaps {} duplicates_in_log {} duplicates_dropped {}",
            a.key, s.events, s.batches, s.last_seq, s.epochs, s.seq_gaps, s.duplicates_in_log, s.duplicates_dropped
        );
    }
    for a in &c.agents {
        let s = Stats::of(&report, &a.key);
        assert_eq!(s.events, TOTAL, "{}: events in the log", a.key);
        assert_eq!(s.duplicates_in_log, 0, "{}: duplicates in the log", a.key);
        assert_eq!(s.seq_gaps, 0, "{}: sequence gaps", a.key);
        assert_eq!(s.epochs, 1, "{}: epochs", a.key);
        assert_eq!(
            s.batches, s.last_seq,
            "{}: batches 1..=last_seq all present",
            a.key
        );
    }
    let dropped: u64 = c
        .agents
        .iter()
        .map(|a| Stats::of(&report, &a.key).duplicates_dropped)
        .sum();
    println!("duplicates dropped by the committer, all agents: {dropped}");
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn aggregator_down_60s_agents_spool_with_bounded_memory_then_drain() {
    let _serial = serial();
    const RATE_HZ: u32 = 1000; // 7 000 events/s per agent
    const OUTAGE: Duration = Duration::from_secs(60);
    // Generation ends about when the outage does (5 s + 60 s), so the time to
    // the last event after the restart is the time to drain the backlog.
    const TOTAL: u64 = 1000 * SENSORS * 64;
    const RSS_CAP_KIB: u64 = 64 * 1024;
    const RSS_GROWTH_KIB: u64 = 4 * 1024;
    let mut c = Cluster::new(&["agg"]);
    let endpoint = c.aggs[0].endpoint();
    for id in ["b1", "b2"] {
        c.add_agent(
            id,
            vec![endpoint.clone()],
            RATE_HZ,
            Some(TOTAL),
            "interval",
            "",
        );
    }
    c.aggs[0].start();
    let t0 = Instant::now();
    for a in &mut c.agents {
        a.start();
    }
    c.aggs[0].wait_sessions(2, Duration::from_secs(60));
    sleep_until(t0 + Duration::from_secs(5));
    c.assert_agents_alive("before the outage");
    let rss_before: Vec<Option<u64>> = c.agents.iter().map(Agent::rss_kib).collect();

    let (ok, took) = c.aggs[0].term(AGGREGATOR_STOP);
    assert!(
        ok,
        "the aggregator did not stop cleanly on SIGTERM ({took:?})"
    );
    let outage_start = Instant::now();
    let spool_start: Vec<u64> = c
        .agents
        .iter()
        .map(|a| procs::dir_bytes(&a.spec.spool))
        .collect();
    let n = c.agents.len();
    let mut rss_max = vec![0u64; n];
    let mut rss_10s = vec![0u64; n];
    let mut rss_end = vec![0u64; n];
    let mut spool_end = spool_start.clone();
    let mut second = 1;
    while outage_start.elapsed() < OUTAGE {
        sleep_until(outage_start + Duration::from_secs(second));
        second += 1;
        c.assert_agents_alive("during the outage");
        for (i, a) in c.agents.iter().enumerate() {
            let rss = a.rss_kib().unwrap_or(0);
            rss_max[i] = rss_max[i].max(rss);
            if outage_start.elapsed() <= Duration::from_secs(10) {
                rss_10s[i] = rss;
            }
            rss_end[i] = rss;
            spool_end[i] = procs::dir_bytes(&a.spec.spool);
        }
    }
    c.aggs[0].start();
    let restarted = Instant::now();
    let datas = vec![c.aggs[0].data.clone()];
    let keys: Vec<String> = c.agents.iter().map(|a| a.key.clone()).collect();
    wait_inspect(
        &mut c,
        &datas,
        Duration::from_secs(600),
        "waiting for the backlog to drain",
        |r| keys.iter().all(|k| Stats::of(&r[0], k).events >= TOTAL),
    );
    let drain = restarted.elapsed();
    c.stop_agents();
    let (ok, took) = c.aggs[0].term(AGGREGATOR_STOP);
    assert!(
        ok,
        "the aggregator did not exit cleanly on SIGTERM ({took:?})"
    );
    let report = inspect(&c.aggs[0].data).unwrap();

    println!(
        "outage {:.0} s; backlog drained (every event in the log) {:.1} s after the restart",
        OUTAGE.as_secs_f64(),
        drain.as_secs_f64()
    );
    for (i, a) in c.agents.iter().enumerate() {
        let s = Stats::of(&report, &a.key);
        println!(
            "  {}: RSS before {:.1} MiB, at 10 s {:.1} MiB, at 60 s {:.1} MiB, max {:.1} MiB; spool {:.2} -> {:.2} MiB; events {} batches {} seq_gaps {} duplicates_in_log {} duplicates_dropped {}",
            a.key,
            mib(rss_before[i].unwrap_or(0)),
            mib(rss_10s[i]),
            mib(rss_end[i]),
            mib(rss_max[i]),
            mib(spool_start[i] / 1024),
            mib(spool_end[i] / 1024),
            s.events,
            s.batches,
            s.seq_gaps,
            s.duplicates_in_log,
            s.duplicates_dropped
        );
    }
    for (i, a) in c.agents.iter().enumerate() {
        assert!(
            spool_end[i] > spool_start[i] + (256 << 10),
            "{}: the spool did not grow on disk during the outage ({} -> {} bytes)",
            a.key,
            spool_start[i],
            spool_end[i]
        );
        assert!(
            rss_max[i] > 0 && rss_max[i] < RSS_CAP_KIB,
            "{}: RSS during the outage reached {:.1} MiB (cap {} MiB)",
            a.key,
            mib(rss_max[i]),
            RSS_CAP_KIB / 1024
        );
        assert!(
            rss_end[i] <= rss_10s[i] + RSS_GROWTH_KIB,
            "{}: RSS grew with the backlog: {:.1} MiB at 10 s, {:.1} MiB at 60 s",
            a.key,
            mib(rss_10s[i]),
            mib(rss_end[i])
        );
        let s = Stats::of(&report, &a.key);
        assert_eq!(s.events, TOTAL, "{}: events in the log", a.key);
        assert_eq!(s.seq_gaps, 0, "{}: sequence gaps", a.key);
        assert_eq!(s.duplicates_in_log, 0, "{}: duplicates in the log", a.key);
        assert_eq!(s.batches, s.last_seq, "{}: batches 1..=last_seq", a.key);
    }
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn agent_sigkill_mid_send_with_fsync_always_resends_everything() {
    let _serial = serial();
    let mut c = Cluster::new(&["agg"]);
    let endpoint = c.aggs[0].endpoint();
    // Small batches (70 a second, each fsynced) so that batches are in flight at
    // any moment and the kill lands mid-send.
    c.add_agent(
        "k1",
        vec![endpoint],
        1000,
        None,
        "always",
        "[batch]\nmax_samples = 100\nmax_delay_ms = 10\n",
    );
    c.aggs[0].start();
    c.agents[0].start();
    c.aggs[0].wait_sessions(1, Duration::from_secs(60));
    sleep(Duration::from_secs(4));
    assert!(c.agents[0].running(), "the agent died before the kill");
    c.agents[0].kill9();
    c.agents[0].start();
    c.aggs[0].wait_sessions(2, Duration::from_secs(60));
    sleep(Duration::from_secs(4));
    c.stop_agents();
    wait_stable(&c.aggs[0].data, Duration::from_secs(60));
    // The committer saves its duplicate counter on exit.
    let (ok, took) = c.aggs[0].term(AGGREGATOR_STOP);
    assert!(
        ok,
        "the aggregator did not exit cleanly on SIGTERM ({took:?})"
    );
    let report = inspect(&c.aggs[0].data).unwrap();
    let a = &c.agents[0];
    let s = Stats::of(&report, &a.key);
    let opens = a.spool_opens();
    let (first_unacked, next) = a.spool_state();
    println!(
        "agent {}: spool at each start (epoch, first_unacked, next) {opens:?}; after the last stop first_unacked {first_unacked} next {next}",
        a.key
    );
    println!(
        "log: events {} batches {} last_seq {} epochs {} seq_gaps {} duplicates_in_log {} duplicates_dropped {}",
        s.events,
        s.batches,
        s.last_seq,
        s.epochs,
        s.seq_gaps,
        s.duplicates_in_log,
        s.duplicates_dropped
    );
    assert_eq!(opens.len(), 2, "two starts of the agent in its log");
    // Every start begins a new epoch (so no seq is ever used twice); the batches
    // spooled before the kill keep theirs and are resent under it.
    assert!(
        opens[1].0 > opens[0].0,
        "the restart did not begin a higher epoch: {opens:?}"
    );
    assert_eq!(s.epochs, 2, "epochs in the log");
    assert_eq!(s.epoch, opens[1].0, "the log's newest epoch is the spool's");
    let spooled_before_kill = opens[1].2 - 1;
    println!(
        "at the kill: {spooled_before_kill} batches spooled, {} of them not yet released (unacknowledged, or acknowledged less than a second before: the spool coalesces releases)",
        opens[1].2 - opens[1].1
    );
    assert!(
        spooled_before_kill > 0,
        "nothing was spooled before the kill"
    );
    assert!(
        s.last_seq >= spooled_before_kill,
        "batches spooled before the kill are missing: last_seq {} < {spooled_before_kill}",
        s.last_seq
    );
    assert!(
        s.last_seq >= first_unacked - 1,
        "the agent released batches the log does not hold: released through {}, last_seq {}",
        first_unacked - 1,
        s.last_seq
    );
    assert_eq!(s.seq_gaps, 0, "sequence gaps");
    assert_eq!(
        s.seqs_missing, 0,
        "sequence numbers missing across the epochs"
    );
    assert_eq!(s.batches, s.last_seq, "batches 1..=last_seq all present");
    assert_eq!(s.duplicates_in_log, 0, "duplicates in the log");
    assert!(
        s.duplicates_dropped < 300,
        "{} duplicates dropped: more than the credit window (256 batches) could have had in flight",
        s.duplicates_dropped
    );
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn goaway_moves_agents_to_the_second_aggregator_losing_nothing() {
    let _serial = serial();
    const RATE_HZ: u32 = 1000;
    const TOTAL: u64 = 1000 * SENSORS * 20;
    let mut c = Cluster::new(&["agg-a", "agg-b"]);
    let endpoints = vec![c.aggs[0].endpoint(), c.aggs[1].endpoint()];
    for id in ["g1", "g2"] {
        c.add_agent(id, endpoints.clone(), RATE_HZ, Some(TOTAL), "interval", "");
    }
    c.aggs[0].start();
    c.aggs[1].start();
    let t0 = Instant::now();
    for a in &mut c.agents {
        a.start();
    }
    c.aggs[0].wait_sessions(2, Duration::from_secs(60));
    assert_eq!(
        c.aggs[1].sessions_since_start(),
        0,
        "agents connected to the second aggregator before the first stopped"
    );
    sleep_until(t0 + Duration::from_secs(5));
    c.assert_agents_alive("before GoAway");
    let (ok, took) = c.aggs[0].term(DRAIN_TIMEOUT + Duration::from_secs(15));
    println!(
        "first aggregator stopped (SIGTERM, GoAway) in {:.1} s, clean exit: {ok}",
        took.as_secs_f64()
    );
    assert!(
        ok,
        "the first aggregator did not exit successfully on SIGTERM ({took:?})"
    );
    // Drain timeout, then up to 2 s for the endpoint to go idle, and a margin.
    assert!(
        took <= DRAIN_TIMEOUT + Duration::from_secs(5),
        "the first aggregator took {took:?} to stop, beyond its drain timeout ({DRAIN_TIMEOUT:?})"
    );
    let moved = c.aggs[1].wait_sessions(2, Duration::from_secs(60));
    println!(
        "both agents on the second aggregator {:.1} s after the first exited",
        moved.as_secs_f64()
    );

    let datas = vec![c.aggs[0].data.clone(), c.aggs[1].data.clone()];
    let keys: Vec<String> = c.agents.iter().map(|a| a.key.clone()).collect();
    wait_inspect(
        &mut c,
        &datas,
        Duration::from_secs(600),
        "waiting for every sample in one of the logs",
        |r| {
            keys.iter()
                .all(|k| Stats::of(&r[0], k).events + Stats::of(&r[1], k).events >= TOTAL)
        },
    );
    c.stop_agents();
    let (ok, took) = c.aggs[1].term(AGGREGATOR_STOP);
    assert!(
        ok,
        "the second aggregator did not exit cleanly on SIGTERM ({took:?})"
    );
    let ra = inspect(&c.aggs[0].data).unwrap();
    let rb = inspect(&c.aggs[1].data).unwrap();
    for a in &c.agents {
        let sa = Stats::of(&ra, &a.key);
        let sb = Stats::of(&rb, &a.key);
        println!("  {}: first log {sa:?}", a.key);
        println!("  {}: second log {sb:?}", a.key);
        for (which, s) in [("first", sa), ("second", sb)] {
            assert_eq!(s.seq_gaps, 0, "{}: sequence gaps in the {which} log", a.key);
            assert_eq!(
                s.duplicates_in_log, 0,
                "{}: duplicates in the {which} log",
                a.key
            );
            assert!(s.epochs <= 1, "{}: epochs in the {which} log", a.key);
        }
        assert!(sa.batches > 0, "{}: nothing reached the first log", a.key);
        assert!(sb.batches > 0, "{}: nothing reached the second log", a.key);
        assert_eq!(sa.epoch, sb.epoch, "{}: the epoch changed", a.key);
        // Without gaps each log holds one contiguous run of sequence numbers.
        let run = |s: Stats| (s.last_seq + 1 - s.batches, s.last_seq);
        let (mut lo, mut hi) = (run(sa), run(sb));
        if hi.0 < lo.0 {
            std::mem::swap(&mut lo, &mut hi);
        }
        assert_eq!(lo.0, 1, "{}: the union does not start at seq 1", a.key);
        assert!(
            hi.0 <= lo.1 + 1,
            "{}: seqs {}..={} are in neither log",
            a.key,
            lo.1 + 1,
            hi.0 - 1
        );
        let last = lo.1.max(hi.1);
        let overlap = (lo.1.min(hi.1) + 1).saturating_sub(hi.0);
        assert_eq!(
            sa.batches + sb.batches - overlap,
            last,
            "{}: distinct batches across both logs == last_seq",
            a.key
        );
        println!(
            "  {}: union of the logs 1..={last}, {overlap} batch(es) in both (committed by the first, Ack lost)",
            a.key
        );
        if overlap == 0 {
            assert_eq!(
                sa.events + sb.events,
                TOTAL,
                "{}: samples across both logs",
                a.key
            );
        } else {
            // Batches in both logs are counted twice; each holds at most 4096 samples.
            let extra = (sa.events + sb.events).saturating_sub(TOTAL);
            assert!(
                sa.events + sb.events >= TOTAL && extra <= overlap * 4096,
                "{}: samples across both logs {} for {TOTAL} generated and {overlap} overlapping batches",
                a.key,
                sa.events + sb.events
            );
        }
    }
}
