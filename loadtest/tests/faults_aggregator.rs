//! Field faults on the aggregator side, reproduced with the real
//! `ferrule-aggregator` and `ferrule-agent` binaries on loopback, hostile peers
//! written here with a legitimate certificate (ferrule_transport, the wire
//! protocol by hand), real tmpfs mounts and real Kafka brokers. Each test checks
//! what an operator or an agent would see.
//!
//! 1. Refused batches (an undefined sensor) and re-sent, already acknowledged
//!    seqs, for many windows: credit keeps coming back, the session stays up,
//!    and a real agent keeps delivering.
//! 2. A peer that never reads its control stream and floods tiny frames that
//!    decode to the most samples a batch may hold, over 40 connections with one
//!    certificate: the aggregator's memory stays bounded, every such connection
//!    is closed, a real agent keeps delivering.
//! 3. 30 connections each defining 100 000 sensors: memory stays bounded, the
//!    Defines beyond `server.max_sensors_per_agent` are refused and counted
//!    without ending the sessions.
//! 4. The embedded log's disk full: nothing acknowledged that is not in the log,
//!    `/readyz` 503 with a reason; once space is freed the aggregator is ready
//!    again by itself and every sample arrives.
//! 5. The dedupe ledger under scattered seqs (every other one): the aggregator's
//!    memory stays flat, also after a restart rebuilds the ledger from the log.
//! 6. A SIGKILLed aggregator is noticed by the agent within 8 s, its successor
//!    on the same port is used within 8 s of listening, nothing is lost.
//! 7. Kafka (3 brokers, RF 3, min.insync.replicas 2) with two brokers stopped,
//!    killed (the third answers metadata alone) or frozen with SIGSTOP:
//!    `/readyz` answers 503 on every probe once the stall is noticed, 200 again
//!    after the brokers return, and nothing is lost.
//! 8. Kafka unreachable at start: the metrics port answers within 1 s (503 with
//!    a reason) and the QUIC port accepts an agent, which spools.
//!
//! Each test runs in its own temporary directory with its own ports and PKI, one
//! at a time (a lock below), and prints the tail of every process's log on
//! failure. Where a test checks several things it checks them all and fails
//! listing every one that did not hold. They are run by `scripts/test.sh` with
//! `--ignored`, after `cargo build --workspace --bins`. Test 4 needs root (a
//! tmpfs mount); tests 7 and 8 need Java 17+, the Kafka jars
//! (`scripts/kafka.sh fetch`) and python3 with confluent-kafka, like
//! tests/kafka.rs.

// Plain test threads (the hostile peers run on a runtime of their own): blocking
// sleeps are what we want.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec};
use ferrule_transport::quinn;
use ferrule_transport::{
    client_crypto, client_endpoint, ClientTls, EndpointLimits, FrameReceiver, FrameSender,
};
use ferrule_wire::{
    batch_cost, encode, peek_batch, Batch, Capabilities, Define, Epoch, Heartbeat, Hello, Limits,
    Message, Outcome, Quality, RejectReason, SensorId, SensorKind, SensorName, Seq, Series,
    Welcome, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

const SITE: &str = "site-aggfaults";
/// The synthetic input's sensors per tick.
const SENSORS: u64 = 7;
/// Long enough for an agent to drain (5 s) and close on a loaded machine.
const AGENT_STOP: Duration = Duration::from_secs(30);
/// The first timestamp of the batches the hostile peers build (2026-01-01).
const T0_NS: i64 = 1_767_225_600_000_000_000;

/// One test at a time: they measure and kill processes on two shared cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sleep(d: Duration) {
    std::thread::sleep(d);
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
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

/// Every series of `name`, as rendered (for messages).
fn metric_lines(text: &str, name: &str) -> Vec<String> {
    // Known reasons are published at 0 from the start: only what counted something.
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name))
        .filter(|l| l.rsplit(' ').next().is_some_and(|v| v.trim() != "0"))
        .map(str::to_string)
        .collect()
}

/// `GET path` over HTTP/1.1: (status code, body trimmed), `None` if nothing answers.
fn http(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.trim().to_string()))
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`: the peak).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Polls `f` every 250 ms until it returns `Some` or `timeout` passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(250));
    }
}

/// The checks of one test: each that does not hold is printed at once and the
/// test fails at the end listing all of them.
#[derive(Default)]
struct Verdict(Vec<String>);

impl Verdict {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let m = what();
            eprintln!("CHECK FAILED: {m}");
            self.0.push(m);
        }
    }

    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} check(s) failed:\n- {}",
            self.0.len(),
            self.0.join("\n- ")
        );
    }
}

/// Something measured on a thread of its own, every `every`, until finished.
struct Watch<T> {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(f64, T)>>,
}

impl<T: Send + 'static> Watch<T> {
    fn start(every: Duration, mut f: impl FnMut() -> T + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                out.push((t0.elapsed().as_secs_f64(), f()));
                sleep(every);
            }
            out
        });
        Self { stop, handle }
    }

    /// Stops it: (seconds since its start, value) for every sample.
    fn finish(self) -> Vec<(f64, T)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// The longest time a counter did not move in `samples`, in seconds, and when
/// that began.
fn longest_stall(samples: &[(f64, f64)]) -> (f64, f64) {
    let mut best = (0.0, 0.0);
    let mut since: Option<(f64, f64)> = None;
    for &(t, v) in samples {
        match since {
            Some((t0, v0)) if v0 == v => {
                if t - t0 > best.0 {
                    best = (t - t0, t0);
                }
            }
            _ => since = Some((t, v)),
        }
    }
    best
}

// ---- processes -------------------------------------------------------------------------

/// A process we started, with its exit status when it ends.
struct Daemon {
    child: Child,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `binary run --config config`, stderr appended to `log`.
    fn start(binary: &str, config: &Path, log: &Path) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(procs::bin(binary).unwrap())
            .args(["run", "--config"])
            .arg(config)
            .env("FERRULE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Self {
            child,
            status: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    fn running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// SIGKILL: no chance to flush anything.
    fn kill9(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// SIGTERM, then waits up to `timeout`; the exit status, or `None` if it
    /// was still running (it is SIGKILLed then).
    fn term(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if !self.running() {
            return self.status;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A test's temporary directory and PKI; prints the tail of every log it
/// knows when the test fails.
struct Rig {
    dir: PathBuf,
    pki: DevPki,
    logs: Mutex<Vec<(String, PathBuf)>>,
    // Last: deleted after everything else.
    _tmp: tempfile::TempDir,
}

/// What goes into an aggregator's configuration beyond the defaults.
#[derive(Default)]
struct AggOpts {
    /// Keys for `[server]`.
    server: String,
    /// Keys for `[credit]`.
    credit: String,
    /// Keys for `[log]`.
    log: String,
    /// A `[kafka]` section (procs::kafka_section), if any.
    kafka: Option<String>,
    /// `log.dir`, if not `<name>-data` in the test directory.
    data: Option<PathBuf>,
}

impl Rig {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let pki = DevPki::ensure(&dir.join("pki")).unwrap();
        Self {
            dir,
            pki,
            logs: Mutex::new(Vec::new()),
            _tmp: tmp,
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        let p = self.dir.join(format!("{name}.log"));
        self.add_log(name, &p);
        p
    }

    fn add_log(&self, name: &str, path: &Path) {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.to_string(), path.to_path_buf()));
    }

    /// An aggregator's files (not started).
    fn aggregator(&self, name: &str, o: AggOpts) -> Agg {
        let port = procs::free_udp_port().unwrap();
        let metrics = SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port().unwrap()));
        let data = o
            .data
            .unwrap_or_else(|| self.dir.join(format!("{name}-data")));
        let quic = SocketAddr::from(([127, 0, 0, 1], port));
        let mut extra = String::new();
        if !o.credit.is_empty() {
            extra.push_str(&format!("[credit]\n{}\n\n", o.credit));
        }
        if let Some(k) = &o.kafka {
            extra.push_str(k);
        }
        let text = procs::aggregator_toml(&self.pki, &data, quic, Some(metrics), &extra)
            .replacen("[server]\n", &format!("[server]\n{}\n", o.server), 1)
            .replacen("[log]\n", &format!("[log]\n{}\n", o.log), 1);
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        Agg {
            name: name.to_string(),
            data,
            config,
            log: self.log(name),
            port,
            metrics,
            mark: 0,
            d: None,
        }
    }

    /// An agent's configuration (not started).
    fn agent(&self, a: AgentOpts) -> AgentCfg {
        let metrics = SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port().unwrap()));
        let spool = self.dir.join(format!("{}-spool", a.id));
        let spec = AgentSpec {
            site: SITE.to_string(),
            id: a.id.to_string(),
            spool: spool.clone(),
            endpoints: vec![a.endpoint],
            rate_hz: a.rate_hz,
            total_samples: a.total,
            fsync: "interval",
            metrics: Some(metrics),
            extra: a.extra,
        };
        let text = procs::agent_toml(&self.pki, &spec).unwrap();
        let config = self.dir.join(format!("{}.toml", a.id));
        std::fs::write(&config, text).unwrap();
        AgentCfg {
            id: a.id.to_string(),
            config,
            log: self.log(a.id),
            metrics,
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, log) in logs.iter() {
            eprintln!(
                "---- {name}: last 40 lines of {} ----\n{}",
                log.display(),
                tail(log, 40)
            );
        }
    }
}

/// What an agent's configuration says.
struct AgentOpts {
    id: &'static str,
    endpoint: String,
    rate_hz: u32,
    total: Option<u64>,
    /// More TOML sections.
    extra: String,
}

impl AgentOpts {
    fn new(id: &'static str, endpoint: String) -> Self {
        Self {
            id,
            endpoint,
            rate_hz: 1000,
            total: None,
            extra: String::new(),
        }
    }
}

struct AgentCfg {
    id: String,
    config: PathBuf,
    log: PathBuf,
    metrics: SocketAddr,
}

impl AgentCfg {
    fn start(&self) -> Daemon {
        Daemon::start("ferrule-agent", &self.config, &self.log)
    }

    /// Its `/metrics` text; empty while it does not answer.
    fn metrics(&self) -> String {
        procs::http_get(self.metrics, "/metrics").unwrap_or_default()
    }

    /// One series (exact, as rendered) of its metrics.
    fn metric(&self, series: &str) -> Option<f64> {
        procs::metric(&self.metrics(), series)
    }

    /// Batches the aggregator acknowledged to it so far (0 while it does not answer).
    fn acked(&self) -> f64 {
        self.metric("ferrule_agent_acked_batches_total")
            .unwrap_or(0.0)
    }

    /// Waits until the agent answers on its metrics port.
    fn wait_up(&self, d: &mut Daemon) {
        let up = procs::wait_for(Duration::from_secs(30), || {
            if !d.running() {
                return Some(false);
            }
            (!self.metrics().is_empty()).then_some(true)
        });
        assert_eq!(
            up,
            Some(true),
            "agent {} did not come up (metrics on {}) within 30 s",
            self.id,
            self.metrics
        );
    }
}

struct Agg {
    name: String,
    data: PathBuf,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    metrics: SocketAddr,
    /// Where this start's output begins in the log.
    mark: u64,
    d: Option<Daemon>,
}

impl Agg {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn quic(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts it without waiting for anything.
    fn spawn(&mut self) {
        self.mark = file_len(&self.log);
        self.d = Some(Daemon::start("ferrule-aggregator", &self.config, &self.log));
    }

    /// Starts it and waits until it listens.
    fn start(&mut self) {
        self.spawn();
        let up = procs::wait_for(Duration::from_secs(60), || {
            if !self.running() {
                return Some(false);
            }
            self.said("aggregator listening").then_some(true)
        });
        assert_eq!(
            up,
            Some(true),
            "{} did not start listening within 60 s",
            self.name
        );
    }

    /// True if this start's log holds `text`.
    fn said(&self, text: &str) -> bool {
        read_log(&self.log, self.mark).contains(text)
    }

    fn running(&mut self) -> bool {
        self.d.as_mut().is_some_and(Daemon::running)
    }

    fn pid(&self) -> u32 {
        self.d.as_ref().map_or(0, Daemon::pid)
    }

    /// Resident memory, KiB (0 if it is not running).
    fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:").unwrap_or(0)
    }

    /// Peak resident memory of this process, KiB.
    fn hwm_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:").unwrap_or(0)
    }

    fn kill9(&mut self) {
        if let Some(d) = self.d.as_mut() {
            d.kill9();
        }
    }

    fn term(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.d.as_mut().and_then(|d| d.term(timeout))
    }

    fn metrics(&self) -> String {
        procs::http_get(self.metrics, "/metrics").unwrap_or_default()
    }

    fn metric(&self, name: &str, with: &str) -> f64 {
        procs::metric_sum_with(&self.metrics(), name, with)
    }

    /// `/readyz`: (status, body), `None` while nothing answers.
    fn readyz(&self) -> Option<(u16, String)> {
        http(self.metrics, "/readyz")
    }

    /// `inspect` of its log (an empty report before the log exists).
    fn report(&self) -> Value {
        procs::inspect(&self.data).unwrap_or(Value::Null)
    }

    /// One agent's line of `inspect`.
    fn stats(&self, agent: &str) -> Stats {
        Stats::of(&self.report(), agent)
    }
}

/// One agent's line of an `inspect` report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Stats {
    events: u64,
    batches: u64,
    last_seq: u64,
    epochs: u64,
    seq_gaps: u64,
    duplicates_in_log: u64,
}

impl Stats {
    fn of(report: &Value, agent: &str) -> Self {
        let a = &report["agents"][format!("{SITE}/{agent}")];
        let n = |k: &str| a[k].as_u64().unwrap_or(0);
        Self {
            events: n("events"),
            batches: n("batches"),
            last_seq: n("last_seq"),
            epochs: n("epochs"),
            seq_gaps: n("seq_gaps"),
            duplicates_in_log: n("duplicates_in_log"),
        }
    }
}

// ---- a tmpfs, for a full disk ----------------------------------------------------------

/// A tmpfs mounted on a directory; unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t tmpfs {}: {} (this test needs root)",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Bytes available on it.
    fn avail(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Fills it with `name` until a write fails; the bytes written.
    fn fill(&self, name: &str) -> u64 {
        let mut f = std::fs::File::create(self.dir.join(name)).unwrap();
        let mut n = 0u64;
        for chunk in [1usize << 20, 4096, 512] {
            let buf = vec![0x5Au8; chunk];
            while f.write_all(&buf).is_ok() {
                n += chunk as u64;
            }
        }
        let _ = f.sync_all();
        n
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

// ---- a hostile peer with a legitimate certificate -------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A client endpoint presenting agent `id`'s certificate (issued on first use).
/// Call within the runtime.
fn client_ep(pki: &DevPki, id: &str) -> quinn::Endpoint {
    let (cert, key) = pki.agent(SITE, id).unwrap();
    let tls = client_crypto(
        &ClientTls {
            cert,
            key,
            server_ca: pki.ca_bundle(),
        },
        &ferrule_transport::Refusals::new(),
    )
    .unwrap();
    client_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
        &EndpointLimits::default(),
    )
    .unwrap()
}

fn hello(agent: &str, epoch: u64, resume_from: u64) -> Message {
    Message::Hello(Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        epoch: Epoch(epoch),
        resume_from: Seq(resume_from),
        capabilities: Capabilities::ALL,
        site: SITE.to_string(),
        agent: agent.to_string(),
        software: "faults-aggregator-test".to_string(),
    })
}

fn define(sensor: u32, name: &str) -> Message {
    Message::Define(Define {
        sensor: SensorId(sensor),
        name: SensorName::new(name).unwrap(),
        unit: "V".to_string(),
        kind: SensorKind::Gauge,
    })
}

/// A batch of `n` samples of `sensor`, 1 ms apart, all 230.0.
fn batch(epoch: u64, seq: u64, sensor: u32, n: usize) -> Message {
    let mut s = Series::with_capacity(SensorId(sensor), n);
    for i in 0..n {
        s.push(T0_NS + i as i64 * 1_000_000, 230.0, Quality::Good);
    }
    Message::Batch(Batch {
        epoch: Epoch(epoch),
        seq: Seq(seq),
        clock_offset_ns: 0,
        series: vec![s],
    })
}

fn frame(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(m, &Limits::default(), &mut out).unwrap();
    out
}

/// How a connection ended, as the peer saw it.
fn end_reason(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => format!(
            "closed by the aggregator: {}",
            String::from_utf8_lossy(&c.reason)
        ),
        // The aggregator closed it and forgot it, and its CONNECTION_CLOSE was
        // lost (loopback drops datagrams under a flood): a stateless reset.
        quinn::ConnectionError::Reset => {
            "reset by the aggregator (a stateless reset: it no longer holds the connection)"
                .to_string()
        }
        other => other.to_string(),
    }
}

/// A batch frame of many samples of one constant, evenly spaced series (it
/// encodes to a few bytes), re-headed for each (epoch, seq) without encoding the
/// samples again.
struct BigBatch {
    block: Vec<u8>,
    samples: u64,
}

impl BigBatch {
    fn new(sensor: u32, samples: usize) -> Self {
        let f = frame(&batch(1, 1, sensor, samples));
        let head = postcard::to_allocvec(&(Epoch(1), Seq(1), 0i64)).unwrap();
        assert_eq!(&f[5..5 + head.len()], &head[..], "batch header layout");
        let b = Self {
            block: f[5 + head.len()..].to_vec(),
            samples: samples as u64,
        };
        assert_eq!(b.frame(1, 1), f, "re-headed frame");
        assert_eq!(peek_batch(&b.frame(3, 77)).unwrap(), (Epoch(3), Seq(77)));
        b
    }

    fn frame(&self, epoch: u64, seq: u64) -> Vec<u8> {
        let head = postcard::to_allocvec(&(Epoch(epoch), Seq(seq), 0i64)).unwrap();
        let len = 1 + head.len() + self.block.len();
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.push(4);
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.block);
        out
    }
}

/// One session of a hand-driven peer: the control stream, the credit it was
/// granted, and what the aggregator said about its batches (one epoch).
struct Peer {
    conn: quinn::Connection,
    ctl: FrameSender,
    rx: FrameReceiver,
    welcome: Welcome,
    /// Credit left: (cost bytes, batches).
    credit: (i64, i64),
    /// Every seq up to it is settled (committed, or refused in an earlier Ack).
    through: u64,
    committed: Vec<(u64, u64)>,
    rejected: Vec<(u64, u64, RejectReason)>,
    /// Messages received, by kind.
    received: BTreeMap<&'static str, u64>,
}

impl Peer {
    /// Connects, says Hello, and waits for Welcome (10 s).
    async fn open(
        ep: &quinn::Endpoint,
        addr: SocketAddr,
        agent: &str,
        epoch: u64,
        resume_from: u64,
    ) -> Result<Peer, String> {
        let connecting = ep
            .connect(addr, "localhost")
            .map_err(|e| format!("connect: {e}"))?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "handshake: no answer within 10 s".to_string())?
            .map_err(|e| format!("handshake: {}", end_reason(&e)))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("control stream: {}", end_reason(&e)))?;
        let mut ctl = FrameSender::new(send, Limits::default());
        let mut rx = FrameReceiver::new(recv, Limits::default(), Duration::from_secs(10));
        ctl.send(&hello(agent, epoch, resume_from))
            .await
            .map_err(|e| format!("sending Hello: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
            Ok(Ok(Some((Message::Welcome(w), _)))) => Ok(Peer {
                credit: (w.credit.bytes as i64, i64::from(w.credit.batches)),
                conn,
                ctl,
                rx,
                welcome: w,
                through: 0,
                committed: Vec::new(),
                rejected: Vec::new(),
                received: BTreeMap::new(),
            }),
            Ok(Ok(Some((other, _)))) => Err(format!("{other:?} instead of Welcome")),
            Ok(Ok(None)) => Err(format!(
                "control stream ended before Welcome ({})",
                conn.close_reason()
                    .map_or_else(|| "connection open".to_string(), |e| end_reason(&e))
            )),
            Ok(Err(e)) => Err(format!(
                "reading Welcome: {e} ({})",
                conn.close_reason()
                    .map_or_else(|| "connection open".to_string(), |e| end_reason(&e))
            )),
            Err(_) => Err("no Welcome within 10 s".to_string()),
        }
    }

    /// A data lane.
    async fn lane(&self) -> Result<FrameSender, String> {
        let s = self
            .conn
            .open_uni()
            .await
            .map_err(|e| format!("opening a lane: {}", end_reason(&e)))?;
        Ok(FrameSender::new(s, Limits::default()))
    }

    fn absorb(&mut self, m: Message) -> Result<(), String> {
        *self.received.entry(m.kind()).or_default() += 1;
        match m {
            Message::Credit(c) => {
                self.credit.0 += c.bytes as i64;
                self.credit.1 += i64::from(c.batches);
            }
            Message::Ack(a) => match a.outcome {
                Outcome::Committed => {
                    if let Some(t) = a.through {
                        self.through = self.through.max(t.0);
                    }
                    self.committed
                        .extend(a.ranges.iter().map(|r| (r.first.0, r.last.0)));
                }
                Outcome::Rejected(reason) => self
                    .rejected
                    .extend(a.ranges.iter().map(|r| (r.first.0, r.last.0, reason))),
            },
            Message::Error(e) => {
                return Err(format!(
                    "the aggregator sent Error {} ({}): {}",
                    e.code.0,
                    e.code.name(),
                    e.message
                ))
            }
            Message::GoAway(g) => return Err(format!("the aggregator sent GoAway {g:?}")),
            _ => {}
        }
        Ok(())
    }

    /// Reads one control message if one comes within `wait`; whether one came.
    async fn pump(&mut self, wait: Duration) -> Result<bool, String> {
        match tokio::time::timeout(wait, self.rx.next()).await {
            Ok(Ok(Some((m, _)))) => self.absorb(m).map(|()| true),
            Ok(Ok(None)) => Err(format!("the control stream ended ({})", self.state())),
            Ok(Err(e)) => Err(format!(
                "reading the control stream: {e} ({})",
                self.state()
            )),
            Err(_) => Ok(false),
        }
    }

    /// Reads every control message already there.
    async fn drain(&mut self) -> Result<(), String> {
        while self.pump(Duration::ZERO).await? {}
        Ok(())
    }

    fn state(&self) -> String {
        self.conn
            .close_reason()
            .map_or_else(|| "connection open".to_string(), |e| end_reason(&e))
    }

    fn rejection(&self, seq: u64) -> Option<RejectReason> {
        self.rejected
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&seq))
            .map(|r| r.2)
    }

    fn is_committed(&self, seq: u64) -> bool {
        (seq <= self.through && self.rejection(seq).is_none())
            || self.committed.iter().any(|(a, b)| (*a..=*b).contains(&seq))
    }

    fn is_settled(&self, seq: u64) -> bool {
        seq <= self.through || self.is_committed(seq) || self.rejection(seq).is_some()
    }

    /// Sends a batch frame of `samples` samples on `lane`, within the credit:
    /// waits up to `max_wait` for credit to come back first.
    async fn send(
        &mut self,
        lane: &mut FrameSender,
        f: &[u8],
        samples: u64,
        max_wait: Duration,
    ) -> Result<(), String> {
        let cost = batch_cost(f.len() as u64, samples) as i64;
        let t = Instant::now();
        self.drain().await?;
        while self.credit.1 < 1 || self.credit.0 < cost {
            let left = max_wait.saturating_sub(t.elapsed());
            if left.is_zero() {
                return Err(format!(
                    "no credit for {max_wait:?}: {} bytes and {} batches left, a batch costs {cost} bytes; {} ({:?} received)",
                    self.credit.0,
                    self.credit.1,
                    self.state(),
                    self.received
                ));
            }
            self.pump(left).await?;
        }
        self.credit.0 -= cost;
        self.credit.1 -= 1;
        lane.send_frame(f)
            .await
            .map_err(|e| format!("writing a batch: {e} ({})", self.state()))
    }

    /// Reads control messages until every seq of `seqs` is settled (or `max_wait`).
    async fn settle(&mut self, seqs: &[u64], max_wait: Duration) -> Result<(), String> {
        let t = Instant::now();
        loop {
            let open: Vec<u64> = seqs
                .iter()
                .copied()
                .filter(|s| !self.is_settled(*s))
                .collect();
            if open.is_empty() {
                return Ok(());
            }
            let left = max_wait.saturating_sub(t.elapsed());
            if left.is_zero() {
                return Err(format!(
                    "{} batches not acknowledged within {max_wait:?}, e.g. seqs {:?} ({})",
                    open.len(),
                    &open[..open.len().min(10)],
                    self.state()
                ));
            }
            self.pump(left).await?;
        }
    }
}

// ---- 1. Refused and duplicate batches must not leak credit ----------------------------

#[derive(Debug, Default)]
struct LeakRun {
    good: Vec<u64>,
    refused_sent: u64,
    refused: BTreeSet<u64>,
    dups_in_session: u64,
    resent_next_session: u64,
    batches: u64,
    longest_credit_wait: Duration,
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn refused_and_duplicate_batches_do_not_leak_credit() {
    let _serial = serial();
    const WINDOW: u32 = 8;
    const ROUNDS: usize = 150;
    const CREDIT_WAIT: Duration = Duration::from_secs(5);
    let rig = Rig::new();
    let mut agg = rig.aggregator(
        "agg",
        AggOpts {
            credit: format!("session_window_batches = {WINDOW}"),
            ..AggOpts::default()
        },
    );
    agg.start();
    let good = rig.agent(AgentOpts::new("g1", agg.endpoint()));
    let mut g = good.start();
    good.wait_up(&mut g);
    assert!(
        poll(Duration::from_secs(30), || (agg.stats("g1").events > 0)
            .then_some(()))
        .is_some(),
        "the real agent g1 delivered nothing in 30 s"
    );
    let g_before = agg.stats("g1").events;
    let t0 = Instant::now();
    let rt = runtime();
    let addr = agg.quic();
    let pki = rig.pki.clone();
    let mut run = LeakRun::default();
    let result: Result<(), String> = rt.block_on(async {
        let ep = client_ep(&pki, "h1");
        // Session 1: a window of good batches, then rounds of refusals and
        // re-sends of acknowledged seqs, every batch within the credit.
        let mut p = Peer::open(&ep, addr, "h1", 1, 1).await?;
        if p.welcome.credit.batches != WINDOW {
            return Err(format!(
                "Welcome granted {} batches, the configured window is {WINDOW}",
                p.welcome.credit.batches
            ));
        }
        let mut lane = p.lane().await?;
        lane.send(&define(1, "h1/ok"))
            .await
            .map_err(|e| e.to_string())?;
        let mut next = 1u64;
        for _ in 0..WINDOW {
            let f = frame(&batch(1, next, 1, 10));
            timed_send(&mut p, &mut lane, &f, &mut run, CREDIT_WAIT).await?;
            run.good.push(next);
            next += 1;
        }
        p.settle(&run.good, Duration::from_secs(10)).await?;
        let mut dup_i = 0usize;
        let mut again_i = 0usize;
        for round in 1..=ROUNDS {
            for op in ["good", "refuse", "dup", "refuse", "dup", "refuse-again", "dup", "good"] {
                let (seq, sensor) = match op {
                    "good" => {
                        run.good.push(next);
                        next += 1;
                        (next - 1, 1)
                    }
                    "refuse" => {
                        run.refused.insert(next);
                        run.refused_sent += 1;
                        next += 1;
                        (next - 1, 99)
                    }
                    "refuse-again" => {
                        let done: Vec<u64> = run
                            .refused
                            .iter()
                            .copied()
                            .filter(|s| p.rejection(*s).is_some())
                            .collect();
                        run.refused_sent += 1;
                        if done.is_empty() {
                            run.refused.insert(next);
                            next += 1;
                            (next - 1, 99)
                        } else {
                            again_i += 1;
                            (done[again_i % done.len()], 99)
                        }
                    }
                    _ => {
                        let acked: Vec<u64> = run
                            .good
                            .iter()
                            .copied()
                            .filter(|s| p.is_committed(*s))
                            .collect();
                        dup_i += 1;
                        run.dups_in_session += 1;
                        (acked[dup_i % acked.len()], 1)
                    }
                };
                let f = frame(&batch(1, seq, sensor, 10));
                timed_send(&mut p, &mut lane, &f, &mut run, CREDIT_WAIT)
                    .await
                    .map_err(|e| {
                        format!(
                            "session 1, round {round}, {op} seq {seq}, after {} batches ({} good, {} refused, {} duplicates): {e}",
                            run.batches,
                            run.good.len(),
                            run.refused_sent,
                            run.dups_in_session
                        )
                    })?;
            }
        }
        let all: Vec<u64> = (1..next).collect();
        p.settle(&all, Duration::from_secs(10)).await?;
        let wrong: Vec<u64> = run
            .good
            .iter()
            .copied()
            .filter(|s| !p.is_committed(*s))
            .collect();
        if !wrong.is_empty() {
            return Err(format!("good batches not acknowledged as committed: {wrong:?}"));
        }
        let wrong: Vec<(u64, Option<RejectReason>)> = run
            .refused
            .iter()
            .map(|s| (*s, p.rejection(*s)))
            .filter(|(_, r)| *r != Some(RejectReason::UNKNOWN_SENSOR))
            .collect();
        if !wrong.is_empty() {
            return Err(format!(
                "batches naming an undefined sensor not refused as unknown_sensor: {wrong:?}"
            ));
        }
        if let Some(e) = p.conn.close_reason() {
            return Err(format!("session 1 was closed: {}", end_reason(&e)));
        }
        println!(
            "session 1: {} batches ({} good, {} refused, {} duplicates) with a window of {WINDOW}; control messages {:?}",
            run.batches,
            run.good.len(),
            run.refused_sent,
            run.dups_in_session,
            p.received
        );
        p.conn.close(0u32.into(), b"done");

        // Session 2: everything committed in session 1 sent again (the sink's
        // ledger knows them), and more refusals, several windows' worth.
        let mut p = Peer::open(&ep, addr, "h1", 1, 1).await?;
        let mut lane = p.lane().await?;
        lane.send(&define(1, "h1/ok"))
            .await
            .map_err(|e| e.to_string())?;
        let resend = run.good.clone();
        let mut sent2 = Vec::new();
        for (i, seq) in resend.iter().enumerate() {
            let f = frame(&batch(1, *seq, 1, 10));
            timed_send(&mut p, &mut lane, &f, &mut run, CREDIT_WAIT)
                .await
                .map_err(|e| {
                    format!(
                        "session 2, re-sending seq {seq} ({i} of {} re-sent so far): {e}",
                        resend.len()
                    )
                })?;
            run.resent_next_session += 1;
            sent2.push(*seq);
            if i % 3 == 0 {
                let f = frame(&batch(1, next, 99, 10));
                timed_send(&mut p, &mut lane, &f, &mut run, CREDIT_WAIT)
                    .await
                    .map_err(|e| format!("session 2, refused seq {next}: {e}"))?;
                run.refused.insert(next);
                run.refused_sent += 1;
                sent2.push(next);
                next += 1;
            }
        }
        p.settle(&sent2, Duration::from_secs(10)).await?;
        if let Some(e) = p.conn.close_reason() {
            return Err(format!("session 2 was closed: {}", end_reason(&e)));
        }
        println!(
            "session 2: {} acknowledged batches re-sent, control messages {:?}",
            run.resent_next_session, p.received
        );
        p.conn.close(0u32.into(), b"done");
        Ok(())
    });
    let took = t0.elapsed();
    let g_after = agg.stats("g1").events;
    let m = agg.metrics();
    let rejected = procs::metric_sum_with(
        &m,
        "ferrule_aggregator_batches_rejected_total",
        "reason=\"unknown_sensor\"",
    );
    let session_dups =
        procs::metric_sum_with(&m, "ferrule_aggregator_session_duplicates_total", "");
    let sink_dups = procs::metric_sum_with(&m, "ferrule_aggregator_duplicates_dropped_total", "");
    let refused = metric_lines(&m, "ferrule_aggregator_connections_refused_total");
    let h1 = agg.stats("h1");
    println!(
        "{:.1} s: {} batches, longest wait for credit {:?}; aggregator: rejected unknown_sensor {rejected}, session duplicates {session_dups}, sink duplicates {sink_dups}, refused/cut connections {refused:?}; log h1 {h1:?}; g1 samples {g_before} -> {g_after}",
        took.as_secs_f64(),
        run.batches,
        run.longest_credit_wait
    );
    let mut v = Verdict::default();
    v.check(result.is_ok(), || {
        format!(
            "the hostile client could not keep sending: {}",
            result.clone().unwrap_err()
        )
    });
    v.check(g.running(), || "the real agent g1 died".into());
    v.check(g_after > g_before, || {
        format!("the real agent g1 delivered nothing meanwhile ({g_before} -> {g_after} samples)")
    });
    v.check(refused.is_empty(), || {
        format!("connections were refused or cut off: {refused:?}")
    });
    if result.is_ok() {
        v.check(rejected as u64 == run.refused_sent, || {
            format!(
                "ferrule_aggregator_batches_rejected_total{{reason=\"unknown_sensor\"}} is {rejected}, {} such batches were sent",
                run.refused_sent
            )
        });
        v.check(h1.batches == run.good.len() as u64, || {
            format!(
                "h1's batches in the log: {} (the client committed {})",
                h1.batches,
                run.good.len()
            )
        });
        v.check(h1.duplicates_in_log == 0, || {
            format!("duplicates in the log: {h1:?}")
        });
        v.check(sink_dups as u64 >= run.resent_next_session, || {
            format!(
                "ferrule_aggregator_duplicates_dropped_total is {sink_dups}, {} acknowledged batches were sent again in a new session",
                run.resent_next_session
            )
        });
    }
    v.check(g.term(AGENT_STOP).is_some(), || {
        "the real agent g1 did not exit on SIGTERM".into()
    });
    let s = agg.stats("g1");
    v.check(s.seq_gaps == 0 && s.duplicates_in_log == 0, || {
        format!("the real agent's batches in the log: {s:?}")
    });
    v.finish();
}

/// Sends one batch frame within the credit and keeps the books of the run.
async fn timed_send(
    p: &mut Peer,
    lane: &mut FrameSender,
    f: &[u8],
    run: &mut LeakRun,
    max_wait: Duration,
) -> Result<(), String> {
    let t = Instant::now();
    p.send(lane, f, 10, max_wait).await?;
    run.longest_credit_wait = run.longest_credit_wait.max(t.elapsed());
    run.batches += 1;
    Ok(())
}

// ---- 2. A peer that never reads its control stream, flooding frames of the most samples

/// How one flooding connection went.
#[derive(Debug, Default)]
struct FloodEnd {
    i: usize,
    obeys_credit: bool,
    welcomed: bool,
    batches: u64,
    heartbeats: u64,
    /// Seconds from its start to the end of the connection, if it ended.
    closed_after: Option<f64>,
    how: String,
}

/// One hostile connection: Hello, Welcome, then never reads the control stream
/// again. Four lanes carry frames of `big` (tiny on the wire, the most samples
/// a batch may hold once decoded); if `obeys_credit` it sends only what its
/// first window allows and then floods heartbeats (whose answers pile up
/// unread), else it ignores the credit and sends frames as fast as they go.
async fn flood(
    ep: quinn::Endpoint,
    addr: SocketAddr,
    big: Arc<BigBatch>,
    i: usize,
    obeys_credit: bool,
    limit: Duration,
) -> FloodEnd {
    let t = Instant::now();
    let mut end = FloodEnd {
        i,
        obeys_credit,
        ..FloodEnd::default()
    };
    let p = match Peer::open(&ep, addr, "h2", 1, 1).await {
        Ok(p) => p,
        Err(e) => {
            end.closed_after = Some(t.elapsed().as_secs_f64());
            end.how = format!("before Welcome: {e}");
            return end;
        }
    };
    end.welcomed = true;
    let conn = p.conn.clone();
    let attack = async {
        // Holds the control stream's receiving half, unread, to the end.
        let mut p = p;
        let mut lanes = Vec::new();
        for _ in 0..4 {
            let Ok(mut l) = p.lane().await else { return };
            if l.send(&define(1, "h2/flat")).await.is_err() {
                return;
            }
            lanes.push(l);
        }
        let window = p.welcome.credit;
        let per = batch_cost(big.frame(1, 1).len() as u64, big.samples);
        let mut budget = if obeys_credit {
            (window.bytes / per).min(u64::from(window.batches))
        } else {
            u64::MAX
        };
        let mut seq = 1u64;
        while budget > 0 {
            let f = big.frame(1, seq);
            if lanes[(seq % 4) as usize].send_frame(&f).await.is_err() {
                return;
            }
            end.batches += 1;
            seq += 1;
            budget -= 1;
        }
        let hb = frame(&Message::Heartbeat(Heartbeat {
            origin_ns: T0_NS,
            receive_ns: 0,
            transmit_ns: 0,
        }));
        let burst = hb.repeat(1000);
        while p.ctl.send_frame(&burst).await.is_ok() {
            end.heartbeats += 1000;
        }
    };
    let _ = tokio::time::timeout(limit.saturating_sub(t.elapsed()), attack).await;
    match tokio::time::timeout(Duration::from_secs(5), conn.closed()).await {
        Ok(e) => {
            end.closed_after = Some(t.elapsed().as_secs_f64());
            end.how = end_reason(&e);
        }
        Err(_) => {
            end.how = format!("still open after {:.0} s", t.elapsed().as_secs_f64());
            conn.close(0u32.into(), b"test over");
        }
    }
    end
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn a_peer_that_never_reads_and_floods_max_sample_frames_is_cut_off_with_bounded_memory() {
    let _serial = serial();
    const CONNS: usize = 40;
    const SAMPLES: usize = 60_000;
    const RSS_CAP_KIB: u64 = 400 * 1024;
    const LIMIT: Duration = Duration::from_secs(30);
    // The agent's peer timeout is 5 s: starved by the flood on two cores, one
    // reconnect (a gap of up to about two timeouts) is allowed; a stop is not.
    const STALL_MAX: f64 = 12.0;
    let rig = Rig::new();
    let mut agg = rig.aggregator(
        "agg",
        AggOpts {
            server: "control_send_timeout_secs = 3".into(),
            ..AggOpts::default()
        },
    );
    agg.start();
    let good = rig.agent(AgentOpts::new("g2", agg.endpoint()));
    let mut g = good.start();
    good.wait_up(&mut g);
    assert!(
        poll(Duration::from_secs(30), || (good.acked() > 0.0)
            .then_some(()))
        .is_some(),
        "the real agent g2 had nothing acknowledged in 30 s"
    );
    sleep(Duration::from_secs(1));
    let rss0 = agg.rss_kib();
    let big = Arc::new(BigBatch::new(1, SAMPLES));
    let wire = big.frame(1, 1).len();
    println!(
        "a frame of {SAMPLES} samples is {wire} bytes and costs {} bytes of credit; aggregator RSS before: {:.1} MiB",
        batch_cost(wire as u64, SAMPLES as u64),
        mib(rss0)
    );
    let (pid, gm) = (agg.pid(), good.metrics);
    let watch = Watch::start(Duration::from_millis(200), move || {
        let acked = procs::http_get(gm, "/metrics")
            .ok()
            .and_then(|m| procs::metric(&m, "ferrule_agent_acked_batches_total"))
            .unwrap_or(-1.0);
        (status_kib(pid, "VmRSS:").unwrap_or(0), acked)
    });
    let rt = runtime();
    let (addr, pki) = (agg.quic(), rig.pki.clone());
    let t0 = Instant::now();
    let ends: Vec<FloodEnd> = rt.block_on(async {
        let ep = client_ep(&pki, "h2");
        let mut set = tokio::task::JoinSet::new();
        for i in 0..CONNS {
            set.spawn(flood(ep.clone(), addr, big.clone(), i, i % 2 == 0, LIMIT));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out.sort_by_key(|e| e.i);
        out
    });
    let attack = t0.elapsed();
    sleep(Duration::from_secs(3));
    let samples = watch.finish();
    let hwm = agg.hwm_kib();
    let rss_end = agg.rss_kib();
    let peak = samples.iter().map(|s| s.1 .0).max().unwrap_or(0).max(hwm);
    let acked: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.1 .1)).collect();
    let (stall, stall_at) = longest_stall(&acked);
    let acked_during = acked.last().map_or(0.0, |a| a.1) - acked.first().map_or(0.0, |a| a.1);
    let m = agg.metrics();
    let sessions = procs::metric_sum_with(&m, "ferrule_aggregator_sessions", "");
    let mut hows: BTreeMap<String, usize> = BTreeMap::new();
    for e in &ends {
        let key = e.how.split(" (").next().unwrap_or_default().to_string();
        *hows
            .entry(format!(
                "{}: {key}",
                if e.obeys_credit {
                    "within credit"
                } else {
                    "ignoring credit"
                }
            ))
            .or_default() += 1;
    }
    let batches: u64 = ends.iter().map(|e| e.batches).sum();
    let heartbeats: u64 = ends.iter().map(|e| e.heartbeats).sum();
    let longest = ends
        .iter()
        .filter_map(|e| e.closed_after)
        .fold(0.0, f64::max);
    println!(
        "{CONNS} connections over {:.1} s: {batches} frames of {SAMPLES} samples and {heartbeats} heartbeats sent; the longest lived {longest:.1} s",
        attack.as_secs_f64()
    );
    for (how, n) in &hows {
        println!("  {n:2} x {how}");
    }
    println!(
        "aggregator RSS: before {:.1} MiB, peak {:.1} MiB (VmHWM {:.1}), after {:.1} MiB; sessions now {sessions}; {:?}",
        mib(rss0),
        mib(peak),
        mib(hwm),
        mib(rss_end),
        metric_lines(&m, "ferrule_aggregator_connections_refused_total")
    );
    println!(
        "real agent: {acked_during} batches acknowledged meanwhile, longest stall {stall:.1} s (from {stall_at:.1} s)"
    );
    let mut v = Verdict::default();
    v.check(agg.running(), || "the aggregator died".into());
    v.check(peak < RSS_CAP_KIB, || {
        format!(
            "the aggregator's RSS peaked at {:.1} MiB (cap {} MiB; {:.1} MiB before the flood)",
            mib(peak),
            RSS_CAP_KIB / 1024,
            mib(rss0)
        )
    });
    let open: Vec<String> = ends
        .iter()
        .filter(|e| !e.how.contains("by the aggregator"))
        .map(|e| {
            format!(
                "#{} ({}): {}",
                e.i,
                if e.obeys_credit {
                    "within credit"
                } else {
                    "ignoring credit"
                },
                e.how
            )
        })
        .collect();
    v.check(open.is_empty(), || {
        format!(
            "{} of {CONNS} flooding connections were not closed by the aggregator within {LIMIT:?}: {}",
            open.len(),
            open.join("; ")
        )
    });
    v.check(sessions <= 1.0, || {
        format!("ferrule_aggregator_sessions is {sessions} after the flood (only the real agent is left)")
    });
    v.check(g.running(), || "the real agent g2 died".into());
    v.check(acked_during > 0.0 && stall <= STALL_MAX, || {
        format!(
            "the real agent stopped delivering: no ack for {stall:.1} s from {stall_at:.1} s into the flood ({acked_during} batches acknowledged in all)"
        )
    });
    v.finish();
}

// ---- 3. Defines beyond the sensor limit ------------------------------------------------

/// How one defining connection went; holds it open until dropped.
struct DefineEnd {
    id: String,
    /// Seconds until its 100 000 Defines were written, and until both batches settled.
    written: f64,
    took: f64,
    committed: bool,
    refused: Option<RejectReason>,
    state: String,
    _peer: Peer,
}

/// Defines `defines` (one buffer of frames) on a lane, then sends a batch on
/// sensor 1 (within the limit) and one on sensor `beyond` (refused), and waits
/// for both to be settled.
async fn define_flood(
    ep: quinn::Endpoint,
    addr: SocketAddr,
    id: String,
    defines: Arc<Vec<u8>>,
    beyond: u32,
) -> Result<DefineEnd, String> {
    let t = Instant::now();
    let mut p = Peer::open(&ep, addr, &id, 1, 1).await?;
    let mut lane = p.lane().await?;
    lane.send_frame(&defines)
        .await
        .map_err(|e| format!("{id}: writing the Defines: {e} ({})", p.state()))?;
    let written = t.elapsed().as_secs_f64();
    let wait = Duration::from_secs(60);
    p.send(&mut lane, &frame(&batch(1, 1, 1, 10)), 10, wait)
        .await
        .map_err(|e| format!("{id}: {e}"))?;
    p.send(&mut lane, &frame(&batch(1, 2, beyond, 10)), 10, wait)
        .await
        .map_err(|e| format!("{id}: {e}"))?;
    p.settle(&[1, 2], Duration::from_secs(120))
        .await
        .map_err(|e| format!("{id}: {e}"))?;
    Ok(DefineEnd {
        id,
        written,
        took: t.elapsed().as_secs_f64(),
        committed: p.is_committed(1),
        refused: p.rejection(2),
        state: p.state(),
        _peer: p,
    })
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn defines_beyond_the_sensor_limit_are_refused_with_bounded_memory() {
    let _serial = serial();
    const CONNS: usize = 30;
    const DEFINES: u32 = 100_000;
    /// The aggregator's default server.max_sensors_per_agent.
    const LIMIT: u32 = 10_000;
    const RSS_CAP_KIB: u64 = 400 * 1024;
    const STALL_MAX: f64 = 5.0;
    let rig = Rig::new();
    // The flooding clients send no heartbeats once their Defines are out: a
    // long peer timeout keeps the aggregator from (rightly) closing them as
    // silent, which is not what this test is about.
    let mut agg = rig.aggregator(
        "agg",
        AggOpts {
            server: "peer_timeout_secs = 300".into(),
            ..AggOpts::default()
        },
    );
    agg.start();
    let good = rig.agent(AgentOpts::new("g3", agg.endpoint()));
    let mut g = good.start();
    good.wait_up(&mut g);
    assert!(
        poll(Duration::from_secs(30), || (good.acked() > 0.0)
            .then_some(()))
        .is_some(),
        "the real agent g3 had nothing acknowledged in 30 s"
    );
    let ids: Vec<String> = (0..CONNS).map(|i| format!("h3-{i:02}")).collect();
    for id in &ids {
        rig.pki.agent(SITE, id).unwrap();
    }
    let mut defines = Vec::new();
    for s in 1..=DEFINES {
        encode(
            &define(s, &format!("x/s{s}")),
            &Limits::default(),
            &mut defines,
        )
        .unwrap();
    }
    let defines = Arc::new(defines);
    sleep(Duration::from_secs(1));
    let rss0 = agg.rss_kib();
    println!(
        "{CONNS} connections x {DEFINES} Defines ({:.1} MiB of frames each); aggregator RSS before: {:.1} MiB",
        defines.len() as f64 / (1 << 20) as f64,
        mib(rss0)
    );
    let (pid, gm) = (agg.pid(), good.metrics);
    let watch = Watch::start(Duration::from_millis(200), move || {
        let acked = procs::http_get(gm, "/metrics")
            .ok()
            .and_then(|m| procs::metric(&m, "ferrule_agent_acked_batches_total"))
            .unwrap_or(-1.0);
        (status_kib(pid, "VmRSS:").unwrap_or(0), acked)
    });
    let rt = runtime();
    let (addr, pki) = (agg.quic(), rig.pki.clone());
    let t0 = Instant::now();
    let ends: Vec<Result<DefineEnd, String>> = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for id in &ids {
            let ep = client_ep(&pki, id);
            set.spawn(define_flood(ep, addr, id.clone(), defines.clone(), DEFINES));
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out
    });
    let took = t0.elapsed();
    let m = agg.metrics();
    let refused_defines =
        procs::metric_sum_with(&m, "ferrule_aggregator_defines_refused_total", "");
    let sessions = procs::metric_sum_with(&m, "ferrule_aggregator_sessions", "");
    let samples = watch.finish();
    let hwm = agg.hwm_kib();
    let rss_end = agg.rss_kib();
    let peak = samples.iter().map(|s| s.1 .0).max().unwrap_or(0).max(hwm);
    let acked: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.1 .1)).collect();
    let (stall, stall_at) = longest_stall(&acked);
    let acked_during = acked.last().map_or(0.0, |a| a.1) - acked.first().map_or(0.0, |a| a.1);
    let oks: Vec<&DefineEnd> = ends.iter().filter_map(|e| e.as_ref().ok()).collect();
    let errs: Vec<&String> = ends.iter().filter_map(|e| e.as_ref().err()).collect();
    let slowest = oks.iter().map(|e| e.took).fold(0.0, f64::max);
    let slowest_write = oks.iter().map(|e| e.written).fold(0.0, f64::max);
    println!(
        "{:.1} s: {} of {CONNS} connections through (Defines written after {slowest_write:.1} s at the latest, both batches settled after {slowest:.1} s at the latest); defines refused {refused_defines}; sessions {sessions}",
        took.as_secs_f64(),
        oks.len()
    );
    println!(
        "aggregator RSS: before {:.1} MiB, peak {:.1} MiB (VmHWM {:.1}), after {:.1} MiB",
        mib(rss0),
        mib(peak),
        mib(hwm),
        mib(rss_end)
    );
    println!(
        "real agent: {acked_during} batches acknowledged meanwhile, longest stall {stall:.1} s (from {stall_at:.1} s)"
    );
    let mut v = Verdict::default();
    v.check(agg.running(), || "the aggregator died".into());
    v.check(peak < RSS_CAP_KIB, || {
        format!(
            "the aggregator's RSS peaked at {:.1} MiB (cap {} MiB; {:.1} MiB before)",
            mib(peak),
            RSS_CAP_KIB / 1024,
            mib(rss0)
        )
    });
    v.check(errs.is_empty(), || {
        format!(
            "{} of {CONNS} connections failed: {}",
            errs.len(),
            errs.iter()
                .take(5)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    let wrong: Vec<String> = oks
        .iter()
        .filter(|e| {
            !e.committed
                || e.refused != Some(RejectReason::UNKNOWN_SENSOR)
                || e.state != "connection open"
        })
        .map(|e| {
            format!(
                "{}: batch on sensor 1 committed {}, batch on sensor {DEFINES} refused as {:?}, {}",
                e.id,
                e.committed,
                e.refused.map(RejectReason::name),
                e.state
            )
        })
        .collect();
    v.check(wrong.is_empty(), || {
        format!("sessions that did not keep working: {}", wrong.join("; "))
    });
    let want = (CONNS as u64) * u64::from(DEFINES - LIMIT);
    v.check(refused_defines as u64 == want, || {
        format!(
            "ferrule_aggregator_defines_refused_total is {refused_defines}, expected {want} ({CONNS} x {})",
            DEFINES - LIMIT
        )
    });
    v.check(sessions == (CONNS + 1) as f64, || {
        format!("ferrule_aggregator_sessions is {sessions} with {CONNS} defining sessions and the real agent open")
    });
    v.check(g.running(), || "the real agent g3 died".into());
    v.check(acked_during > 0.0 && stall <= STALL_MAX, || {
        format!(
            "the real agent stopped delivering: no ack for {stall:.1} s from {stall_at:.1} s ({acked_during} batches acknowledged in all)"
        )
    });
    drop(ends);
    v.finish();
}

// ---- 4. The embedded log's disk full ---------------------------------------------------

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn the_aggregator_recovers_from_a_full_log_disk_by_itself() {
    let _serial = serial();
    const RATE_HZ: u32 = 1000;
    const GEN_SECS: u64 = 30;
    const TOTAL: u64 = RATE_HZ as u64 * SENSORS * GEN_SECS;
    const FULL_FOR: Duration = Duration::from_secs(8);
    let rig = Rig::new();
    let fs = Tmpfs::mount(&rig.dir.join("aggfs"), "64m");
    let mut agg = rig.aggregator(
        "agg",
        AggOpts {
            data: Some(fs.dir.join("data")),
            log: "segment_bytes = 1048576".into(),
            ..AggOpts::default()
        },
    );
    agg.start();
    let agents: Vec<AgentCfg> = ["d1", "d2"]
        .into_iter()
        .map(|id| {
            rig.agent(AgentOpts {
                total: Some(TOTAL),
                ..AgentOpts::new(id, agg.endpoint())
            })
        })
        .collect();
    let mut daemons: Vec<Daemon> = agents.iter().map(AgentCfg::start).collect();
    for (a, d) in agents.iter().zip(daemons.iter_mut()) {
        a.wait_up(d);
    }
    let t0 = Instant::now();
    let flowing = poll(Duration::from_secs(20), || {
        let r = agg.report();
        agents
            .iter()
            .all(|a| Stats::of(&r, &a.id).events > 0)
            .then_some(())
    });
    assert!(flowing.is_some(), "the agents delivered nothing in 20 s");
    sleep(Duration::from_secs(2));

    // Something else fills the disk.
    let filled = fs.fill("filler");
    let t_full = Instant::now();
    println!(
        "{:.1} s: filled the log's tmpfs with {:.1} MiB; {} bytes left",
        t0.elapsed().as_secs_f64(),
        filled as f64 / (1 << 20) as f64,
        fs.avail()
    );
    let unready = poll(Duration::from_secs(15), || match agg.readyz() {
        Some((503, body)) => Some((t_full.elapsed().as_secs_f64(), body)),
        _ => None,
    });
    println!("/readyz after the disk filled: {unready:?}");
    // Not ready is not dead: the liveness probe stays 200, so an orchestrator
    // takes it out of rotation without restarting it.
    if unready.is_some() {
        let alive = http(agg.metrics, "/healthz");
        assert!(
            matches!(alive, Some((200, _))),
            "/healthz while not ready: {alive:?}"
        );
    }
    // While full: every probe, and what is acknowledged against what is in the log.
    let acked = |agents: &[AgentCfg]| -> Vec<f64> { agents.iter().map(AgentCfg::acked).collect() };
    let in_log = |agg: &Agg, agents: &[AgentCfg]| -> Vec<u64> {
        let r = agg.report();
        agents
            .iter()
            .map(|a| Stats::of(&r, &a.id).batches)
            .collect()
    };
    let acked_0 = acked(&agents);
    let log_0 = in_log(&agg, &agents);
    let hold = Instant::now();
    let mut probes: Vec<(f64, Option<u16>)> = Vec::new();
    while hold.elapsed() < FULL_FOR {
        probes.push((t_full.elapsed().as_secs_f64(), agg.readyz().map(|h| h.0)));
        sleep(Duration::from_millis(200));
    }
    let acked_1 = acked(&agents);
    let log_1 = in_log(&agg, &agents);
    let not_503: Vec<&(f64, Option<u16>)> = probes.iter().filter(|p| p.1 != Some(503)).collect();
    println!(
        "full for {:.0} s: acked batches {acked_0:?} -> {acked_1:?}, batches in the log {log_0:?} -> {log_1:?}; {} of {} probes not 503",
        FULL_FOR.as_secs_f64(),
        not_503.len(),
        probes.len()
    );

    // Space comes back.
    std::fs::remove_file(fs.dir.join("filler")).unwrap();
    let t_free = Instant::now();
    let freed_at = t0.elapsed().as_secs_f64();
    let (mut ready, mut resumed) = (None, None);
    while t_free.elapsed() < Duration::from_secs(20) && (ready.is_none() || resumed.is_none()) {
        let t = t_free.elapsed().as_secs_f64();
        if ready.is_none() && matches!(agg.readyz(), Some((200, _))) {
            ready = Some(t);
        }
        let now = acked(&agents);
        if resumed.is_none() && now.iter().zip(&acked_1).all(|(n, b)| n > b) {
            resumed = Some(t);
        }
        sleep(Duration::from_millis(200));
    }
    println!(
        "space freed at {freed_at:.1} s: /readyz 200 after {ready:?} s, acks flowing for both agents after {resumed:?} s; now {:?}",
        agg.readyz()
    );
    // Everything generated, in the log.
    let wait = if resumed.is_some() { 45 } else { 3 };
    let done = poll(Duration::from_secs(wait), || {
        let r = agg.report();
        agents
            .iter()
            .all(|a| Stats::of(&r, &a.id).events >= TOTAL)
            .then_some(())
    });
    sleep(Duration::from_secs(1));
    let r = agg.report();
    let m = agg.metrics();
    println!(
        "commit failures {:?}; credit withheld {}; cut off {:?}",
        metric_lines(&m, "ferrule_aggregator_commit_failures_total"),
        procs::metric_sum_with(&m, "ferrule_aggregator_credit_withheld_total", ""),
        metric_lines(&m, "ferrule_aggregator_connections_refused_total")
    );
    let mut v = Verdict::default();
    v.check(agg.running(), || "the aggregator died".into());
    match &unready {
        None => v.check(false, || {
            format!(
                "/readyz did not answer 503 within 15 s of the disk filling (it answered {:?})",
                agg.readyz()
            )
        }),
        Some((_, body)) => v.check(body.len() > "unready:".len() + 3, || {
            format!("/readyz answered 503 without a reason: {body:?}")
        }),
    }
    v.check(not_503.is_empty(), || {
        format!(
            "/readyz did not answer 503 on every probe while the disk was full: {} of {} probes answered otherwise, e.g. {:?}",
            not_503.len(),
            probes.len(),
            &not_503[..not_503.len().min(5)]
        )
    });
    for (i, a) in agents.iter().enumerate() {
        v.check(acked_1[i] <= log_1[i] as f64, || {
            format!(
                "{}: {} batches acknowledged while only {} are in the log",
                a.id, acked_1[i], log_1[i]
            )
        });
    }
    v.check(ready.is_some(), || {
        format!(
            "the aggregator was not ready again within 20 s of the space being freed: /readyz {:?}",
            agg.readyz()
        )
    });
    v.check(resumed.is_some(), || {
        format!(
            "acks did not resume within 20 s of the space being freed: acked batches {acked_1:?} -> {:?}",
            acked(&agents)
        )
    });
    v.check(done.is_some(), || {
        format!("not every generated sample reached the log within {wait} s of the acks resuming")
    });
    for (a, d) in agents.iter().zip(daemons.iter_mut()) {
        let s = Stats::of(&r, &a.id);
        let spooled = a
            .metric("ferrule_agent_spooled_samples_total")
            .unwrap_or(-1.0);
        let dropped =
            procs::metric_sum_with(&a.metrics(), "ferrule_agent_dropped_samples_total", "") + 0.0;
        println!("{}: log {s:?}; spooled {spooled}, dropped {dropped}", a.id);
        v.check(d.running(), || format!("agent {} died", a.id));
        v.check(
            s.events == TOTAL && spooled as u64 == TOTAL && s.seq_gaps == 0 && s.duplicates_in_log == 0,
            || {
                format!(
                    "{}: {} of {TOTAL} samples in the log ({spooled} spooled, {dropped} dropped), {} seq gaps, {} duplicates in the log",
                    a.id, s.events, s.seq_gaps, s.duplicates_in_log
                )
            },
        );
    }
    v.finish();
}

// ---- 5. The dedupe ledger under scattered seqs -----------------------------------------

/// Credit shared between a peer's control reader and its sender.
#[derive(Default)]
struct Pool {
    /// (cost bytes, batches) left.
    credit: Mutex<(i64, i64)>,
    error: Mutex<Option<String>>,
}

impl Pool {
    /// Reads the control stream to its end, adding up the credit.
    async fn read(self: Arc<Self>, mut rx: FrameReceiver) {
        let why = loop {
            match rx.next().await {
                Ok(Some((Message::Credit(c), _))) => {
                    let mut g = self.credit.lock().unwrap();
                    g.0 += c.bytes as i64;
                    g.1 += i64::from(c.batches);
                }
                Ok(Some((Message::Error(e), _))) => {
                    break format!("Error {} ({}): {}", e.code.0, e.code.name(), e.message)
                }
                Ok(Some(_)) => {}
                Ok(None) => break "the control stream ended".to_string(),
                Err(e) => break format!("reading the control stream: {e}"),
            }
        };
        *self.error.lock().unwrap() = Some(why);
    }

    /// Takes `cost` and one batch, waiting up to `max_wait` for them.
    async fn take(&self, cost: i64, max_wait: Duration) -> Result<(), String> {
        let t = Instant::now();
        loop {
            {
                let mut g = self.credit.lock().unwrap();
                if g.0 >= cost && g.1 >= 1 {
                    g.0 -= cost;
                    g.1 -= 1;
                    return Ok(());
                }
            }
            if let Some(e) = self.error.lock().unwrap().clone() {
                return Err(e);
            }
            if t.elapsed() > max_wait {
                return Err(format!("no credit for {max_wait:?}"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn the_dedupe_ledger_stays_bounded_also_after_a_restart() {
    let _serial = serial();
    const N: u64 = 300_000;
    const CHECKPOINTS: u64 = 10;
    /// What the aggregator may grow by between 10 % and 100 % of the batches, and
    /// what a restart may cost over a fresh start on an empty log.
    const GROWTH_MAX_KIB: u64 = 4 * 1024;
    let rig = Rig::new();
    // The [dedupe] defaults bound it: 4096 ranges per agent epoch, the lowest
    // forgotten beyond (counted).
    let mut agg = rig.aggregator(
        "agg",
        AggOpts {
            credit: "session_window_batches = 4096".into(),
            ..AggOpts::default()
        },
    );
    agg.start();
    sleep(Duration::from_secs(2));
    let rss_fresh = agg.rss_kib();
    let rt = runtime();
    let (addr, pki) = (agg.quic(), rig.pki.clone());
    let t0 = Instant::now();
    // (batches sent, batches committed, RSS KiB) at each tenth.
    let mut marks: Vec<(u64, u64, u64)> = Vec::new();
    let sent: Result<(), String> = rt.block_on(async {
        let ep = client_ep(&pki, "h5");
        let p = Peer::open(&ep, addr, "h5", 1, 1).await?;
        let mut lane = p.lane().await?;
        lane.send(&define(1, "h5/x"))
            .await
            .map_err(|e| e.to_string())?;
        let pool = Arc::new(Pool::default());
        *pool.credit.lock().unwrap() = p.credit;
        let Peer { conn, ctl, rx, .. } = p;
        tokio::spawn(pool.clone().read(rx));
        for k in 1..=N {
            // Every other seq: each batch is a range of its own in the ledger.
            let f = frame(&batch(1, 2 * k, 1, 1));
            let cost = batch_cost(f.len() as u64, 1) as i64;
            pool.take(cost, Duration::from_secs(10))
                .await
                .map_err(|e| format!("batch {k} of {N}: {e}"))?;
            lane.send_frame(&f)
                .await
                .map_err(|e| format!("batch {k} of {N}: {e}"))?;
            if k % (N / CHECKPOINTS) == 0 {
                let committed = agg.metric("ferrule_aggregator_committed_batches_total", "");
                marks.push((k, committed as u64, agg.rss_kib()));
            }
        }
        // Wait for the last ones to be committed before letting go of the session.
        let t = Instant::now();
        while (agg.metric("ferrule_aggregator_committed_batches_total", "") as u64) < N {
            if t.elapsed() > Duration::from_secs(60) {
                return Err("the last batches were not committed within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(ctl);
        conn.close(0u32.into(), b"done");
        Ok(())
    });
    let took = t0.elapsed();
    sleep(Duration::from_secs(2));
    let rss_end = agg.rss_kib();
    let hwm_run = agg.hwm_kib();
    let committed = agg.metric("ferrule_aggregator_committed_batches_total", "");
    let forgotten = agg.metric("ferrule_aggregator_dedupe_forgotten_ranges_total", "");
    let ranges = agg.metric("ferrule_aggregator_dedupe_ranges", "");
    let stopped = agg.term(Duration::from_secs(30));
    let t_restart = Instant::now();
    agg.start();
    let open_line = read_log(&agg.log, agg.mark)
        .lines()
        .find(|l| l.contains("embedded log open"))
        .map(str::to_string)
        .unwrap_or_default();
    sleep(Duration::from_secs(3));
    let rss_restart = agg.rss_kib();
    let hwm_restart = agg.hwm_kib();
    let s = agg.stats("h5");
    println!(
        "{N} batches at every other seq in {:.1} s ({committed} committed); a fresh aggregator: {:.1} MiB",
        took.as_secs_f64(),
        mib(rss_fresh)
    );
    for (k, c, rss) in &marks {
        println!("  {k:>7} sent, {c:>7} committed: RSS {:.1} MiB", mib(*rss));
    }
    println!(
        "  after the run: RSS {:.1} MiB (peak {:.1}); stopped {stopped:?}",
        mib(rss_end),
        mib(hwm_run)
    );
    println!(
        "restarted (listening after {:.1} s): RSS {:.1} MiB (peak {:.1}) 3 s later; {open_line}",
        t_restart.elapsed().as_secs_f64() - 3.0,
        mib(rss_restart),
        mib(hwm_restart)
    );
    println!("log: {s:?}");
    let at_10 = marks.first().map_or(0, |m| m.2);
    let mut v = Verdict::default();
    v.check(sent.is_ok(), || {
        format!("the client could not send: {}", sent.clone().unwrap_err())
    });
    v.check(s.batches == N, || {
        format!("batches in the log: {} of {N}", s.batches)
    });
    v.check(rss_end <= at_10 + GROWTH_MAX_KIB, || {
        format!(
            "the aggregator's RSS grew with the ledger: {:.1} MiB after {} batches, {:.1} MiB after {N} (at most {} MiB of growth allowed)",
            mib(at_10),
            N / CHECKPOINTS,
            mib(rss_end),
            GROWTH_MAX_KIB / 1024
        )
    });
    v.check(forgotten > 0.0 && ranges <= 4097.0, || {
        format!(
            "the ledger holds {ranges} ranges and forgot {forgotten}: not bounded by [dedupe] max_ranges_per_epoch (4096)"
        )
    });
    v.check(rss_restart <= rss_fresh + GROWTH_MAX_KIB, || {
        format!(
            "after a restart the rebuilt ledger holds {:.1} MiB more than a fresh aggregator ({:.1} MiB against {:.1} MiB; at most {} MiB allowed)",
            mib(rss_restart.saturating_sub(rss_fresh)),
            mib(rss_restart),
            mib(rss_fresh),
            GROWTH_MAX_KIB / 1024
        )
    });
    v.finish();
}

// ---- 6. A dead aggregator, and its successor -------------------------------------------

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn a_dead_aggregator_is_noticed_and_its_successor_used_within_seconds() {
    let _serial = serial();
    const RATE_HZ: u32 = 1000;
    const TOTAL: u64 = RATE_HZ as u64 * SENSORS * 25;
    const NOTICE: f64 = 8.0;
    let rig = Rig::new();
    let mut agg = rig.aggregator("agg", AggOpts::default());
    agg.start();
    let cfg = rig.agent(AgentOpts {
        total: Some(TOTAL),
        ..AgentOpts::new("k6", agg.endpoint())
    });
    let mut agent = cfg.start();
    cfg.wait_up(&mut agent);
    let up = poll(Duration::from_secs(20), || {
        (cfg.metric("ferrule_agent_uplink_up") == Some(1.0) && cfg.acked() > 0.0).then_some(())
    });
    assert!(up.is_some(), "the agent did not deliver within 20 s");
    sleep(Duration::from_secs(3));
    agg.kill9();
    let t_kill = Instant::now();
    let mut down_after = None;
    while t_kill.elapsed() < Duration::from_secs(20) {
        if cfg.metric("ferrule_agent_uplink_up") == Some(0.0) {
            down_after = Some(t_kill.elapsed().as_secs_f64());
            break;
        }
        sleep(Duration::from_millis(100));
    }
    println!("aggregator SIGKILLed: ferrule_agent_uplink_up 0 after {down_after:?} s");
    // Down a little longer, then a new aggregator on the same port and data.
    sleep(Duration::from_secs(2));
    agg.start();
    let t_listen = Instant::now();
    let mut using_after = None;
    while t_listen.elapsed() < Duration::from_secs(30) {
        if agg.metric("ferrule_aggregator_batches_received_total", "") > 0.0 {
            using_after = Some(t_listen.elapsed().as_secs_f64());
            break;
        }
        sleep(Duration::from_millis(100));
    }
    println!("new aggregator listening: batches arriving {using_after:?} s later");
    let done = poll(Duration::from_secs(60), || {
        (agg.stats("k6").events >= TOTAL).then_some(())
    });
    let s = agg.stats("k6");
    let failures: Vec<String> =
        metric_lines(&cfg.metrics(), "ferrule_agent_session_failures_total");
    println!("log: {s:?}; agent session failures {failures:?}");
    let mut v = Verdict::default();
    v.check(agent.running(), || "the agent died".into());
    v.check(down_after.is_some_and(|t| t <= NOTICE), || {
        format!(
            "ferrule_agent_uplink_up did not drop to 0 within {NOTICE} s of the aggregator's SIGKILL (after {down_after:?} s)"
        )
    });
    v.check(using_after.is_some_and(|t| t <= NOTICE), || {
        format!(
            "the agent was not sending to the new aggregator within {NOTICE} s of it listening (after {using_after:?} s)"
        )
    });
    v.check(
        done.is_some() && s.seq_gaps == 0 && s.duplicates_in_log == 0,
        || {
            format!(
                "not every sample in the log after 60 s: {} of {TOTAL}; {s:?}",
                s.events
            )
        },
    );
    v.finish();
}

// ---- Kafka brokers (scripts/kafka.sh), as tests/kafka.rs starts them ---------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `scripts/kafka.sh ARGS`: its stdout, or its stderr as the error.
fn try_kafka_sh(args: &[&str]) -> Result<String, String> {
    let script = repo().join("scripts/kafka.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", script.display()))?;
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

fn kafka_sh(args: &[&str]) -> String {
    try_kafka_sh(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Java and the Kafka jars (fetched once), and the Python consumer's library:
/// fails, naming what is missing, rather than skipping.
fn kafka_prerequisites() {
    if let Err(e) = try_kafka_sh(&["fetch"]) {
        panic!("this test needs Java 17+ and the Kafka jars (`scripts/kafka.sh fetch`):\n{e}");
    }
    let py = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .output();
    match py {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "this test reads the topic back with scripts/kafka/consume.py, which needs confluent-kafka: pip install confluent-kafka\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("this test needs python3 (with confluent-kafka): {e}"),
    }
}

/// A port `p` such that `p + o` is free on 127.0.0.1 for every offset given.
fn free_port_block(offsets: &[u16]) -> u16 {
    procs::free_port_block(offsets).unwrap_or_else(|e| panic!("{e}"))
}

/// Three brokers (`start-cluster`: RF 3, min.insync.replicas 2); continued and
/// stopped when dropped.
struct Cluster {
    dir: PathBuf,
    bootstrap: String,
    /// Pids we SIGSTOPped and have not continued.
    frozen: Mutex<Vec<u32>>,
}

impl Cluster {
    /// Starts the brokers in `dir`; if a broker dies during start-up (it happens
    /// on a loaded machine), once more on other ports in `dir/retry`. `dir` is
    /// where they are, in the end.
    fn start(dir: &mut PathBuf) -> Self {
        let t = Instant::now();
        let attempt = |d: &Path| {
            let port = free_port_block(&[0, 1, 2, 100, 101, 102]).to_string();
            try_kafka_sh(&["start-cluster", d.to_str().unwrap(), &port])
        };
        let out = match attempt(dir) {
            Ok(out) => out,
            Err(e) => {
                eprintln!("kafka: start-up failed, once more on other ports: {e}");
                let _ = try_kafka_sh(&["stop", dir.to_str().unwrap()]);
                *dir = dir.join("retry");
                attempt(dir).unwrap_or_else(|e| panic!("{e}"))
            }
        };
        let bootstrap = out
            .lines()
            .find_map(|l| l.strip_prefix("bootstrap="))
            .unwrap_or_else(|| panic!("scripts/kafka.sh printed no bootstrap= line: {out:?}"))
            .trim()
            .to_string();
        println!(
            "kafka: 3-broker cluster at {bootstrap} up in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Self {
            dir: dir.to_path_buf(),
            bootstrap,
            frozen: Mutex::new(Vec::new()),
        }
    }

    fn broker_dir(&self, node: u32) -> PathBuf {
        self.dir.join(format!("broker-{node}"))
    }

    fn create_topic(&self, name: &str, partitions: u32) {
        kafka_sh(&[
            "create-topic",
            &self.bootstrap,
            name,
            &partitions.to_string(),
            "3",
        ]);
    }

    fn pid(&self, node: u32) -> u32 {
        std::fs::read_to_string(self.broker_dir(node).join("kafka.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn signal(pid: u32, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// SIGSTOP: the broker neither answers nor closes its connections.
    fn freeze(&self, node: u32) {
        let pid = self.pid(node);
        Self::signal(pid, "-STOP");
        self.frozen.lock().unwrap().push(pid);
    }

    fn thaw(&self, node: u32) {
        let pid = self.pid(node);
        Self::signal(pid, "-CONT");
        self.frozen.lock().unwrap().retain(|p| *p != pid);
    }

    /// SIGKILL: its connections are reset, clients know it is gone.
    fn kill(&self, node: u32) {
        kafka_sh(&["kill", self.broker_dir(node).to_str().unwrap()]);
    }

    /// The node id of the leader of `topic`-`partition`.
    fn leader(&self, topic: &str, partition: u64) -> u32 {
        let out = kafka_sh(&["leader", &self.bootstrap, topic, &partition.to_string()]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("kafka.sh leader printed {out:?}"))
    }

    /// Starts a killed broker again and waits until it is registered.
    fn restart(&self, node: u32) {
        kafka_sh(&["restart", self.broker_dir(node).to_str().unwrap()]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for pid in self
            .frozen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        if let Err(e) = try_kafka_sh(&["stop", self.dir.to_str().unwrap_or_default()]) {
            eprintln!(
                "kafka: stopping the brokers under {} failed: {e}",
                self.dir.display()
            );
        }
    }
}

/// Per `ferrule-agent` header, (epoch, seq) -> ferrule-count of distinct batches.
type InKafka = BTreeMap<String, BTreeMap<(u64, u64), u64>>;

/// What the topic holds, read with `scripts/kafka/consume.py --to-end`: per
/// `ferrule-agent` header, (epoch, seq) -> ferrule-count of distinct batches,
/// and the records read in all.
fn consume(bootstrap: &str, topic: &str) -> (InKafka, u64) {
    let out = Command::new("python3")
        .arg(repo().join("scripts/kafka/consume.py"))
        .args(["--to-end", "--timeout", "120", bootstrap, topic])
        .output()
        .unwrap_or_else(|e| panic!("running scripts/kafka/consume.py: {e}"));
    assert!(
        out.status.success(),
        "scripts/kafka/consume.py {bootstrap} {topic} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut by_agent = InKafka::new();
    let mut records = 0;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if l.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("consume.py printed a bad line ({e}): {l}"));
        let h = &v["headers"];
        let num = |k: &str| {
            h[k].as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("record without a numeric {k} header: {l}"))
        };
        records += 1;
        by_agent
            .entry(h["ferrule-agent"].as_str().unwrap_or_default().to_string())
            .or_default()
            .insert(
                (num("ferrule-epoch"), num("ferrule-seq")),
                num("ferrule-count"),
            );
    }
    (by_agent, records)
}

/// When the given probes were made (seconds, one decimal; the first 10).
fn at_times(probes: &[&(f64, Option<u16>)]) -> String {
    let mut t: Vec<String> = probes
        .iter()
        .take(10)
        .map(|p| format!("{:.1}", p.0))
        .collect();
    if probes.len() > 10 {
        t.push(format!("... ({} more)", probes.len() - 10));
    }
    t.join(", ")
}

/// The partition holding `agent`'s records (the first one read), read with
/// `scripts/kafka/consume.py`.
fn partition_of(bootstrap: &str, topic: &str, agent: &str) -> Option<u64> {
    let out = Command::new("python3")
        .arg(repo().join("scripts/kafka/consume.py"))
        .args(["--to-end", "--timeout", "60", bootstrap, topic])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["headers"]["ferrule-agent"].as_str()? == agent).then(|| v["partition"].as_u64())?
    })
}

// ---- 7. Kafka readiness follows deliveries ---------------------------------------------

/// How two of the three brokers stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// SIGSTOP, later SIGCONT: connections to them stay open and silent.
    Freeze,
    /// SIGKILL, later started again: connections reset, the third broker
    /// answers metadata requests alone.
    Kill,
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn kafka_readiness_follows_deliveries_when_two_brokers_are_killed() {
    let _serial = serial();
    kafka_readiness(Stall::Kill);
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn kafka_readiness_follows_deliveries_when_two_brokers_are_frozen() {
    let _serial = serial();
    kafka_readiness(Stall::Freeze);
}

/// Two agents stream to Kafka; two of three brokers stop (`how`): `/readyz`
/// must answer 503 on every probe (every 200 ms for 20 s) once the stall is
/// noticed, 200 again once the brokers are back, and nothing may be lost.
fn kafka_readiness(how: Stall) {
    kafka_prerequisites();
    const TOPIC: &str = "ferrule-batches";
    const RATE_HZ: u32 = 1000;
    const TOTAL: u64 = RATE_HZ as u64 * SENSORS * 75;
    const PROBE_FOR: Duration = Duration::from_secs(20);
    let rig = Rig::new();
    let mut kafka_dir = rig.dir.join("kafka");
    let cluster = Cluster::start(&mut kafka_dir);
    for n in 1..=3 {
        rig.add_log(
            &format!("kafka broker {n}"),
            &cluster.broker_dir(n).join("server.log"),
        );
    }
    cluster.create_topic(TOPIC, 3);
    let mut agg = rig.aggregator(
        "agg",
        AggOpts {
            kafka: Some(procs::kafka_section(&cluster.bootstrap, TOPIC, "")),
            ..AggOpts::default()
        },
    );
    agg.start();
    let agents: Vec<AgentCfg> = ["k1", "k2"]
        .into_iter()
        .map(|id| {
            rig.agent(AgentOpts {
                total: Some(TOTAL),
                ..AgentOpts::new(id, agg.endpoint())
            })
        })
        .collect();
    let mut daemons: Vec<Daemon> = agents.iter().map(AgentCfg::start).collect();
    for (a, d) in agents.iter().zip(daemons.iter_mut()) {
        a.wait_up(d);
    }
    let flowing = poll(Duration::from_secs(30), || {
        agents.iter().all(|a| a.acked() > 0.0).then_some(())
    });
    assert!(
        flowing.is_some(),
        "the agents had nothing acknowledged in 30 s"
    );
    let before = agg.readyz();
    sleep(Duration::from_secs(3));
    // The broker that stays leads none of the agents' partitions: its
    // connection carries no produce request waiting for replicas, so it answers
    // metadata requests at once (the partitions' leader, whose requests wait
    // on acks=all, would time them out).
    let mut partitions = BTreeSet::new();
    let mut leaders = BTreeSet::new();
    for a in &agents {
        let key = format!("{SITE}/{}", a.id);
        let p = partition_of(&cluster.bootstrap, TOPIC, &key)
            .unwrap_or_else(|| panic!("nothing of {key} in {TOPIC}"));
        partitions.insert(p);
        leaders.insert(cluster.leader(TOPIC, p));
    }
    let survivor = (1..=3u32)
        .find(|n| !leaders.contains(n))
        .unwrap_or_else(|| panic!("brokers {leaders:?} lead partitions {partitions:?}"));
    let stopped: Vec<u32> = (1..=3).filter(|n| *n != survivor).collect();

    // Two of three brokers stop answering: below min.insync.replicas, and the
    // controller quorum is gone; the third still answers metadata requests.
    for &node in &stopped {
        match how {
            Stall::Freeze => cluster.freeze(node),
            Stall::Kill => cluster.kill(node),
        }
    }
    let t_stop = Instant::now();
    let log_mark = file_len(&agg.log);
    // Probes every 200 ms: until the first 503 (at most 40 s), then 20 s more.
    let mut probes: Vec<(f64, Option<u16>)> = Vec::new();
    let mut noticed: Option<(f64, String)> = None;
    // Acknowledged batches, all agents, from 12 s after the stop (nothing can
    // be delivered by then) to the end of the probes.
    let mut acked_0: Option<f64> = None;
    loop {
        let t = t_stop.elapsed();
        if acked_0.is_none() && t >= Duration::from_secs(12) {
            acked_0 = Some(agents.iter().map(AgentCfg::acked).sum());
        }
        let h = agg.readyz();
        if noticed.is_none() {
            if let Some((503, body)) = &h {
                noticed = Some((t.as_secs_f64(), body.clone()));
            }
        }
        if noticed.is_some() {
            probes.push((t.as_secs_f64(), h.map(|h| h.0)));
        }
        let over = match &noticed {
            Some((at, _)) => t.as_secs_f64() >= at + PROBE_FOR.as_secs_f64(),
            None => t >= Duration::from_secs(40),
        };
        if over {
            break;
        }
        sleep(Duration::from_millis(200));
    }
    let stalled_for = t_stop.elapsed().as_secs_f64();
    let said = read_log(&agg.log, log_mark);
    let (unready_lines, ready_lines) = (
        said.matches("sink unready").count(),
        said.matches("sink ready again").count(),
    );
    // Why it said unready, without the numbers that change every time.
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for l in said.lines().filter(|l| l.contains("sink unready")) {
        let why = l.split("reason=").nth(1).unwrap_or(l);
        let why: String = why
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(110)
            .collect();
        *reasons.entry(why).or_default() += 1;
    }
    println!(
        "brokers {stopped:?} stopped ({how:?}), {survivor} left (the agents' partitions {partitions:?} are led by {leaders:?}): /readyz 503 first after {noticed:?}; in {stalled_for:.0} s the aggregator logged \"sink unready\" {unready_lines} times and \"sink ready again\" {ready_lines} times"
    );
    for (why, n) in &reasons {
        println!("  {n:2} x unready: {why}");
    }
    let acked_1: f64 = agents.iter().map(AgentCfg::acked).sum();
    let acked_0 = acked_0.unwrap_or(acked_1);
    let not_503: Vec<&(f64, Option<u16>)> = probes.iter().filter(|p| p.1 != Some(503)).collect();
    println!(
        "{} probes over {:.0} s after the first 503: {} not 503, at [{}] s; acked batches from 12 s on: {acked_0} -> {acked_1}",
        probes.len(),
        PROBE_FOR.as_secs_f64(),
        not_503.len(),
        at_times(&not_503)
    );
    let t_back = Instant::now();
    for &node in &stopped {
        match how {
            Stall::Freeze => cluster.thaw(node),
            Stall::Kill => cluster.restart(node),
        }
    }
    println!(
        "brokers {stopped:?} back ({:.1} s to restart them)",
        t_back.elapsed().as_secs_f64()
    );
    let t_cont = Instant::now();
    let ready = poll(Duration::from_secs(90), || {
        matches!(agg.readyz(), Some((200, _))).then(|| t_cont.elapsed().as_secs_f64())
    });
    println!("brokers back: /readyz 200 after {ready:?} s");
    // Everything in Kafka, as an independent consumer reads it.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (k, records) = loop {
        let committed = agg.metric("ferrule_aggregator_committed_samples_total", "");
        if committed as u64 >= 2 * TOTAL || Instant::now() > deadline {
            let (k, records) = consume(&cluster.bootstrap, TOPIC);
            let have = |a: &AgentCfg| {
                k.get(&format!("{SITE}/{}", a.id))
                    .map_or(0, |b| b.values().sum::<u64>())
            };
            if agents.iter().all(|a| have(a) >= TOTAL) || Instant::now() > deadline {
                break (k, records);
            }
        }
        sleep(Duration::from_secs(3));
    };
    let m = agg.metrics();
    let rejected = procs::metric_sum_with(&m, "ferrule_aggregator_batches_rejected_total", "");
    println!(
        "{records} records in {TOPIC}; commit failures {:?}; /readyz before {before:?}, now {:?}",
        metric_lines(&m, "ferrule_aggregator_commit_failures_total"),
        agg.readyz()
    );
    let mut v = Verdict::default();
    v.check(agg.running(), || "the aggregator died".into());
    v.check(matches!(before, Some((200, _))), || {
        format!("/readyz before the fault: {before:?}")
    });
    v.check(noticed.is_some(), || {
        format!(
            "/readyz never answered 503 in 40 s of probes every 200 ms after two of three brokers stopped ({how:?}), while the aggregator logged \"sink unready\" {unready_lines} times and \"sink ready again\" {ready_lines} times; now {:?}",
            agg.readyz()
        )
    });
    v.check(noticed.is_none() || not_503.is_empty(), || {
        format!(
            "/readyz answered other than 503 on {} of {} probes (every 200 ms for {:.0} s) after the stall was noticed, at [{}] s after the brokers stopped",
            not_503.len(),
            probes.len(),
            PROBE_FOR.as_secs_f64(),
            at_times(&not_503)
        )
    });
    v.check(acked_1 == acked_0, || {
        format!("batches were acknowledged while Kafka could not take them: {acked_0} -> {acked_1}")
    });
    v.check(ready.is_some(), || {
        format!(
            "/readyz did not answer 200 within 90 s of the brokers returning: {:?}",
            agg.readyz()
        )
    });
    v.check(rejected == 0.0, || {
        format!("the aggregator rejected {rejected} batches")
    });
    for (a, d) in agents.iter().zip(daemons.iter_mut()) {
        let b = k
            .get(&format!("{SITE}/{}", a.id))
            .cloned()
            .unwrap_or_default();
        let samples: u64 = b.values().sum();
        let epochs: BTreeSet<u64> = b.keys().map(|x| x.0).collect();
        let last = b.keys().map(|x| x.1).max().unwrap_or(0);
        let dropped =
            procs::metric_sum_with(&a.metrics(), "ferrule_agent_dropped_samples_total", "") + 0.0;
        println!(
            "{}: {samples} of {TOTAL} samples in Kafka in {} batches (seq 1..={last}), epochs {epochs:?}, dropped {dropped}",
            a.id,
            b.len()
        );
        v.check(d.running(), || format!("agent {} died", a.id));
        v.check(
            samples == TOTAL && epochs.len() == 1 && b.len() as u64 == last && dropped == 0.0,
            || {
                format!(
                    "{}: {samples} of {TOTAL} samples in Kafka, {} distinct batches for seqs up to {last} in epochs {epochs:?}, {dropped} dropped",
                    a.id,
                    b.len()
                )
            },
        );
    }
    v.finish();
}

// ---- 8. Kafka unreachable at start -----------------------------------------------------

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn the_aggregator_opens_its_ports_at_once_when_kafka_is_unreachable() {
    let _serial = serial();
    const AT_ONCE: f64 = 1.0;
    let rig = Rig::new();
    // Nothing listens there.
    let closed = procs::free_tcp_port().unwrap();
    let mut agg = rig.aggregator(
        "agg",
        AggOpts {
            kafka: Some(procs::kafka_section(
                &format!("127.0.0.1:{closed}"),
                "ferrule-batches",
                "",
            )),
            ..AggOpts::default()
        },
    );
    let cfg = rig.agent(AgentOpts {
        rate_hz: 100,
        ..AgentOpts::new("u8", agg.endpoint())
    });
    // The aggregator and an agent start together (a site restarting).
    let t0 = Instant::now();
    agg.spawn();
    let mut agent = cfg.start();
    let (mut metrics_at, mut listening_at) = (None, None);
    while t0.elapsed() < Duration::from_secs(30) && (metrics_at.is_none() || listening_at.is_none())
    {
        if metrics_at.is_none() && TcpStream::connect(agg.metrics).is_ok() {
            metrics_at = Some(t0.elapsed().as_secs_f64());
        }
        if listening_at.is_none() && agg.said("aggregator listening") {
            listening_at = Some(t0.elapsed().as_secs_f64());
        }
        if !agg.running() {
            break;
        }
        sleep(Duration::from_millis(20));
    }
    let first = agg.readyz();
    println!(
        "brokers 127.0.0.1:{closed} (closed): metrics port open after {metrics_at:?} s, \"aggregator listening\" after {listening_at:?} s; /readyz {first:?}"
    );
    let established = poll(Duration::from_secs(20), || {
        (agg.said("session established") && cfg.metric("ferrule_agent_uplink_up") == Some(1.0))
            .then(|| t0.elapsed().as_secs_f64())
    });
    sleep(Duration::from_secs(5));
    let acked = cfg.acked();
    let spooled = cfg
        .metric("ferrule_agent_spooled_samples_total")
        .unwrap_or(0.0);
    let committed = agg.metric("ferrule_aggregator_committed_batches_total", "");
    let later = agg.readyz();
    println!(
        "agent started with the aggregator: session up {established:?} s after the start; 5 s later spooled {spooled} samples, {acked} batches acknowledged; aggregator committed {committed}; /readyz {later:?}"
    );
    let mut v = Verdict::default();
    v.check(agg.running(), || {
        format!(
            "the aggregator exited: {:?}",
            agg.d.as_mut().and_then(Daemon::exited)
        )
    });
    v.check(metrics_at.is_some_and(|t| t <= AT_ONCE), || {
        format!(
            "the metrics port answered {metrics_at:?} s after start (at most {AT_ONCE} s; \"aggregator listening\" after {listening_at:?} s)"
        )
    });
    let unready = |h: &Option<(u16, String)>| {
        h.as_ref()
            .is_some_and(|(s, b)| *s == 503 && b.len() > "unready:".len() + 3)
    };
    v.check(unready(&first), || {
        format!("/readyz right after start: {first:?} (503 with a reason expected)")
    });
    v.check(established.is_some(), || {
        "the agent's session was not up within 20 s of the start (the QUIC port must accept agents while Kafka is unreachable)".into()
    });
    v.check(spooled > 0.0 && acked == 0.0 && committed == 0.0, || {
        format!(
            "with Kafka unreachable: {spooled} samples spooled, {acked} batches acknowledged, {committed} committed"
        )
    });
    v.check(unready(&later), || format!("/readyz later: {later:?}"));
    v.check(agent.running(), || "the agent died".into());
    v.finish();
}
