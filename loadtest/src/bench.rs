//! The transport benchmark: how many events per second one aggregator process
//! commits durably, how fast it acknowledges, what it costs in CPU, and what an
//! agent costs in memory.
//!
//! In-process "blast" clients with real agent certificates speak the real protocol
//! over QUIC to a real `ferrule-aggregator` process (embedded log, group-committed
//! fsync), each sending realistic three-phase batches as fast as the aggregator's
//! credit allows. Ack latency is measured per batch from the write of its frame to
//! the Ack naming it; CPU comes from the aggregator's `/proc/<pid>/stat`.
//!
//! A client whose connection is refused or lost does what an agent does: it
//! counts the failure, backs off (the agent's defaults: 200 ms doubling to 5 s,
//! with jitter) and connects again with a fresh epoch, so one failed handshake
//! among hundreds is a number in the report, not the end of the run.

use crate::devpki::DevPki;
use crate::procs::{self, AgentSpec, Proc};
use anyhow::{bail, Context as _};
use ferrule_agent::backoff::Backoff;
use ferrule_transport::quinn;
use ferrule_transport::{
    client_crypto, client_endpoint, ClientTls, EndpointLimits, FrameReceiver, FrameSender,
};
use ferrule_wire::example::{FeedOptions, ThreePhaseFeed, SENSORS, UNITS};
use ferrule_wire::session::{AgentConfig, AgentEvent, AgentSession};
use ferrule_wire::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferrule_transport::session_now as now;

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measured seconds (after a warm-up of 3 s).
    pub secs: u64,
    /// Concurrent agent connections.
    pub connections: usize,
    /// Samples per batch.
    pub batch_samples: usize,
    /// Also run one real agent at 20 000 events/s and report its RSS.
    pub agent_rss: bool,
    /// Offered load in events per second over all connections; 0 sends as fast as
    /// credit allows (throughput at saturation, where latency is the queue).
    pub rate: u64,
    /// Per-agent credit window in batches the aggregator grants (its
    /// `credit.session_window_batches`): the ceiling when the window is sized
    /// from the sink's latency.
    pub window_batches: u32,
    /// The aggregator's `credit.target_queue_delay_ms`; `None` for its default,
    /// 0 for a fixed window.
    pub target_queue_delay_ms: Option<u64>,
    /// The agents' `uplink.target_queue_delay_ms` (their pacing); `None` for
    /// their default, 0 for none.
    pub agent_queue_delay_ms: Option<u64>,
    /// Commit to a real Kafka broker started with `scripts/kafka.sh` (on this
    /// port) instead of the embedded log.
    pub kafka_port: Option<u16>,
}

/// What the benchmark measured.
#[derive(Debug)]
pub struct Report {
    /// Committed (acknowledged) events per second.
    pub events_per_sec: f64,
    /// Acknowledged batches per second.
    pub batches_per_sec: f64,
    /// Ack latency percentiles, milliseconds.
    pub ack_p50_ms: f64,
    /// 99th percentile.
    pub ack_p99_ms: f64,
    /// Aggregator CPU seconds per million events.
    pub cpu_secs_per_million: f64,
    /// Aggregator CPU use, cores.
    pub aggregator_cores: f64,
    /// Aggregator RSS at the end, MiB.
    pub aggregator_rss_mib: f64,
    /// A real agent's RSS at 20 000 events/s, MiB.
    pub agent_rss_mib: Option<f64>,
    /// Connection attempts that failed before their session was up (handshake
    /// refused or timed out, no Welcome); each client retried after a backoff.
    pub refused_connections: u64,
    /// Sessions that were up and then failed; each client reconnected.
    pub lost_sessions: u64,
    /// The first refusal's error, to say why.
    pub first_refusal: Option<String>,
    /// The first lost session's error.
    pub first_loss: Option<String>,
}

/// How long a client waits for its handshake and Welcome before it counts the
/// attempt as refused and retries (the agent's `uplink.connect_timeout_secs`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the frame of batch `seq` from a constant sample block: the header is the
/// only part that changes, so clients spend their CPU on sending, not encoding.
struct FrameMaker {
    block: Vec<u8>,
    epoch: Epoch,
    samples: usize,
}

impl FrameMaker {
    fn new(epoch: Epoch, samples: usize, seed: u64) -> anyhow::Result<Self> {
        let series = ThreePhaseFeed::new(seed, 1_767_225_600_000_000_000, FeedOptions::default())
            .next_batch(samples);
        let mut frame = Vec::new();
        encode(
            &Message::Batch(Batch {
                epoch,
                seq: Seq(1),
                clock_offset_ns: 0,
                series,
            }),
            &Limits::default(),
            &mut frame,
        )?;
        let header = postcard::to_stdvec(&(epoch.0, 1u64, 0i64))?;
        let block = frame[5 + header.len()..].to_vec();
        let maker = Self {
            block,
            epoch,
            samples,
        };
        // The splice must give exactly what the encoder gives.
        let mut check = Vec::new();
        maker.make(Seq(1), &mut check)?;
        if check != frame {
            bail!("batch frame splice does not match the encoder");
        }
        Ok(maker)
    }

    fn make(&self, seq: Seq, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let header = postcard::to_stdvec(&(self.epoch.0, seq.0, 0i64))?;
        out.clear();
        let len = u32::try_from(1 + header.len() + self.block.len())?;
        out.extend_from_slice(&len.to_le_bytes());
        out.push(4);
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.block);
        Ok(())
    }
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) acked_batches: AtomicU64,
    pub(crate) acked_samples: AtomicU64,
    refused_connections: AtomicU64,
    lost_sessions: AtomicU64,
    first_refusal: Mutex<Option<String>>,
    first_loss: Mutex<Option<String>>,
}

impl Tally {
    /// Counts a failure and keeps the first message of its kind.
    fn fail(count: &AtomicU64, first: &Mutex<Option<String>>, e: &anyhow::Error) {
        count.fetch_add(1, Ordering::Relaxed);
        first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| format!("{e:#}"));
    }
}

/// What one blast client sends and to whom.
pub(crate) struct BlastSpec {
    pub(crate) addr: SocketAddr,
    pub(crate) site: String,
    pub(crate) id: String,
    pub(crate) samples: usize,
    pub(crate) seed: u64,
    pub(crate) rate: u64,
    /// The agent session's `target_queue_delay` (its pacing); `None` for the
    /// agent's default, zero for none.
    pub(crate) agent_queue_delay: Option<Duration>,
}

/// How one session of a blast client ended.
enum SessionEnd {
    /// `stop` was set.
    Stopped,
    /// The connection or its session failed before Welcome.
    Refused(anyhow::Error),
    /// The session was up, then failed.
    Lost(anyhow::Error),
}

/// One blast client: connects as `site/id` and sends until `stop`, recording ack
/// latencies; reconnects after a backoff whenever a connection is refused or
/// lost (counted in `tally`).
pub(crate) async fn blast(
    pki: DevPki,
    spec: BlastSpec,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<Vec<u32>> {
    let (cert, key) = pki.agent(&spec.site, &spec.id)?;
    let crypto = client_crypto(
        &ClientTls {
            cert,
            key,
            server_ca: pki.ca_bundle(),
        },
        &ferrule_transport::Refusals::new(),
    )?;
    let ep = client_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        crypto,
        &EndpointLimits::default(),
    )?;
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(5),
        spec.seed,
    );
    let mut latencies_us: Vec<u32> = Vec::new();
    let mut attempt = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // A fresh epoch per session: what a previous one sent is not this one's.
        let epoch = Epoch(spec.seed + (attempt << 32));
        attempt += 1;
        let end = session(
            &ep,
            &spec,
            epoch,
            &stop,
            &measuring,
            &tally,
            &mut latencies_us,
            &mut backoff,
        )
        .await;
        match end {
            SessionEnd::Stopped => break,
            SessionEnd::Refused(e) => {
                Tally::fail(&tally.refused_connections, &tally.first_refusal, &e)
            }
            SessionEnd::Lost(e) => Tally::fail(&tally.lost_sessions, &tally.first_loss, &e),
        }
        let delay = backoff.next_delay();
        let until = tokio::time::Instant::now() + delay;
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50).min(delay)).await;
        }
    }
    ep.wait_idle().await;
    Ok(latencies_us)
}

/// Connects to `addr` as `acfg` says, says Hello resuming at `resume` (the
/// oldest unacknowledged batch, or the next to be written) and waits for
/// Welcome within [`CONNECT_TIMEOUT`]. Shared by the blast clients and the
/// fleet's simulated agents.
pub(crate) async fn establish(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    acfg: AgentConfig,
    resume: (Epoch, Seq),
) -> anyhow::Result<(quinn::Connection, AgentSession, FrameSender, FrameReceiver)> {
    let connecting = ep.connect(addr, "localhost")?;
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let conn = connecting.await?;
        let (send, recv) = conn.open_bi().await?;
        let limits = Limits::default();
        let mut ctl = FrameSender::new(send, limits);
        let mut ctl_rx = FrameReceiver::new(recv, limits, Duration::from_secs(30));
        let mut s = AgentSession::new(acfg, resume, Instant::now());
        while let Some(m) = s.poll_transmit() {
            ctl.send(&m).await?;
        }
        while !s.is_established() {
            match ctl_rx.next().await? {
                Some((m, _)) => s.handle(m, now())?,
                None => bail!("aggregator closed before Welcome"),
            }
        }
        Ok((conn, s, ctl, ctl_rx))
    })
    .await
    .map_err(|_| anyhow::anyhow!("no session within {CONNECT_TIMEOUT:?}"))?
}

/// One session of a blast client, from connecting to its end.
#[allow(clippy::too_many_arguments)]
async fn session(
    ep: &quinn::Endpoint,
    spec: &BlastSpec,
    epoch: Epoch,
    stop: &AtomicBool,
    measuring: &AtomicBool,
    tally: &Tally,
    latencies_us: &mut Vec<u32>,
    backoff: &mut Backoff,
) -> SessionEnd {
    let mut acfg = AgentConfig::new(spec.site.clone(), spec.id.clone(), "bench");
    if let Some(d) = spec.agent_queue_delay {
        acfg.target_queue_delay = d;
    }
    let (conn, mut s, mut ctl, mut ctl_rx) =
        match establish(ep, spec.addr, acfg, (epoch, Seq(1))).await {
            Ok(up) => up,
            Err(e) => return SessionEnd::Refused(e),
        };
    backoff.reset();
    let result = send_until_stopped(
        &conn,
        spec,
        epoch,
        (&mut s, &mut ctl, &mut ctl_rx),
        stop,
        measuring,
        tally,
        latencies_us,
    )
    .await;
    match result {
        Ok(()) => {
            conn.close(0u32.into(), b"done");
            SessionEnd::Stopped
        }
        Err(e) => {
            conn.close(1u32.into(), b"client error");
            SessionEnd::Lost(e)
        }
    }
}

/// Sends batches on an established session until `stop`.
#[allow(clippy::too_many_arguments)]
async fn send_until_stopped(
    conn: &quinn::Connection,
    spec: &BlastSpec,
    epoch: Epoch,
    (s, ctl, ctl_rx): (&mut AgentSession, &mut FrameSender, &mut FrameReceiver),
    stop: &AtomicBool,
    measuring: &AtomicBool,
    tally: &Tally,
    latencies_us: &mut Vec<u32>,
) -> anyhow::Result<()> {
    let (samples, seed, rate) = (spec.samples, spec.seed, spec.rate);
    let limits = Limits::default();
    let mut lane = FrameSender::new(conn.open_uni().await?, limits);
    for (i, (name, unit)) in SENSORS.iter().zip(UNITS).enumerate() {
        s.define(Define {
            sensor: SensorId(i as u32),
            name: SensorName::new(format!("bench/{name}"))?,
            unit: unit.into(),
            kind: SensorKind::Gauge,
        });
    }
    let maker = FrameMaker::new(epoch, samples, seed)?;
    let mut frame = Vec::new();
    let mut next = Seq(1);
    let mut sent_at: HashMap<Seq, Instant> = HashMap::new();
    // Open-loop pacing: one batch every `interval` when a rate is set.
    let interval = (rate > 0).then(|| Duration::from_secs_f64(samples as f64 / rate as f64));
    let mut due = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Send while credit lasts (and the pace allows).
        loop {
            if interval.is_some() && tokio::time::Instant::now() < due {
                break;
            }
            maker.make(next, &mut frame)?;
            let cost = batch_cost(frame.len() as u64, maker.samples as u64);
            if !s.can_send(cost) {
                break;
            }
            for d in s.on_send(0, epoch, next, cost, Instant::now())? {
                lane.send(&Message::Define(d)).await?;
            }
            lane.send_frame(&frame).await?;
            // At a set rate, latency counts from when the batch was due, so
            // time it waited for credit or pacing is in it (no coordinated
            // omission); a batch held back is sent late, never skipped.
            let since = match interval {
                Some(iv) => {
                    let was_due = due.into_std();
                    due += iv;
                    was_due
                }
                None => Instant::now(),
            };
            sent_at.insert(next, since);
            next = next.next();
        }
        s.handle_timeout(now())?;
        while let Some(m) = s.poll_transmit() {
            ctl.send(&m).await?;
        }
        // Then wait for acks and credit, the next batch's turn, or a heartbeat.
        let wait_until = match interval {
            Some(_) => due,
            None => tokio::time::Instant::now() + Duration::from_secs(10),
        };
        let wait_until = match s.poll_timeout() {
            Some(t) => wait_until.min(tokio::time::Instant::from_std(t)),
            None => wait_until,
        };
        let msg = match tokio::time::timeout_at(wait_until, ctl_rx.next()).await {
            Ok(m) => m?,
            // The session's own deadlines say when the aggregator is dead or stuck.
            Err(_) => continue,
        };
        let Some((m, _)) = msg else {
            bail!("aggregator closed the control stream")
        };
        s.set_path_rtt(conn.rtt());
        s.handle(m, now())?;
        while let Some(ev) = s.poll_event() {
            if let AgentEvent::Acked { seqs, .. } = ev {
                let now = Instant::now();
                for q in seqs {
                    if let Some(t) = sent_at.remove(&q) {
                        if measuring.load(Ordering::Relaxed) {
                            latencies_us.push(
                                u32::try_from(now.duration_since(t).as_micros())
                                    .unwrap_or(u32::MAX),
                            );
                            tally.acked_batches.fetch_add(1, Ordering::Relaxed);
                            tally
                                .acked_samples
                                .fetch_add(maker.samples as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Kafka for the benchmarks (`scripts/kafka.sh`, run from the repository
/// root): one broker, or a three-broker cluster; stopped on drop.
pub(crate) struct Broker {
    dir: std::path::PathBuf,
    /// Its bootstrap address.
    pub(crate) bootstrap: String,
}

/// `scripts/NAME` from the repository root, or from a crate directory in it
/// (where `cargo test` runs).
pub(crate) fn repo_script(name: &str) -> anyhow::Result<std::path::PathBuf> {
    for base in [".", ".."] {
        let p = std::path::Path::new(base).join("scripts").join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("scripts/{name} not found: run the benchmark from the repository root")
}

fn kafka_script() -> anyhow::Result<std::path::PathBuf> {
    repo_script("kafka.sh")
}

/// Runs `scripts/kafka.sh ARGS` and returns what it printed on stdout (its
/// stderr passed through).
pub(crate) fn kafka_sh_output(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("bash")
        .arg(kafka_script()?)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("scripts/kafka.sh {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The directory of the broker leading `partition` of `topic` now, in the
/// cluster under `cluster_dir` (its `broker-N`).
pub(crate) fn leader_dir(
    cluster_dir: &Path,
    bootstrap: &str,
    topic: &str,
    partition: u32,
) -> anyhow::Result<std::path::PathBuf> {
    let out = kafka_sh_output(&["leader", bootstrap, topic, &partition.to_string()])?;
    let id: u32 = out
        .trim()
        .parse()
        .with_context(|| format!("kafka.sh leader printed {out:?}"))?;
    Ok(cluster_dir.join(format!("broker-{id}")))
}

/// Runs `scripts/kafka.sh ARGS`, its output passed through.
pub(crate) fn kafka_sh(args: &[&str]) -> anyhow::Result<()> {
    let st = std::process::Command::new("bash")
        .arg(kafka_script()?)
        .args(args)
        .status()?;
    if !st.success() {
        bail!("scripts/kafka.sh {} failed", args.join(" "));
    }
    Ok(())
}

impl Broker {
    /// Starts one broker on `port` with `topic` (`partitions`, replication 1).
    pub(crate) fn start(
        dir: &Path,
        port: u16,
        topic: &str,
        partitions: u32,
    ) -> anyhow::Result<Self> {
        kafka_sh(&["fetch"])?;
        let d = dir.display().to_string();
        kafka_sh(&["start-single", &d, &port.to_string()])?;
        let broker = Broker {
            dir: dir.to_path_buf(),
            bootstrap: format!("127.0.0.1:{port}"),
        };
        kafka_sh(&[
            "create-topic",
            &broker.bootstrap,
            topic,
            &partitions.to_string(),
            "1",
        ])?;
        Ok(broker)
    }

    /// Starts three brokers on `base_port`..+2 (controllers on +100..+102)
    /// with `topic` (`partitions`, replication 3, min.insync.replicas 2: a
    /// write is acknowledged by two brokers, and one may die).
    pub(crate) fn start_cluster(
        dir: &Path,
        base_port: u16,
        topic: &str,
        partitions: u32,
    ) -> anyhow::Result<Self> {
        kafka_sh(&["fetch"])?;
        let d = dir.display().to_string();
        let out = kafka_sh_output(&["start-cluster", &d, &base_port.to_string()])?;
        let bootstrap = out
            .lines()
            .find_map(|l| l.strip_prefix("bootstrap="))
            .context("scripts/kafka.sh start-cluster printed no bootstrap= line")?
            .trim()
            .to_string();
        let broker = Broker {
            dir: dir.to_path_buf(),
            bootstrap,
        };
        kafka_sh(&[
            "create-topic",
            &broker.bootstrap,
            topic,
            &partitions.to_string(),
            "3",
        ])?;
        Ok(broker)
    }

    /// The broker's directory (for `kafka.sh kill` and `restart`).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = kafka_sh(&["stop", &self.dir.display().to_string()]);
    }
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// Runs the benchmark in a scratch directory under the system temp dir.
pub async fn transport(opts: Options) -> anyhow::Result<Report> {
    let dir = std::env::temp_dir().join(format!("ferrule-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, &opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(dir: &Path, opts: &Options) -> anyhow::Result<Report> {
    let pki = DevPki::ensure(&dir.join("pki"))?;
    let port = procs::free_udp_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg_path = dir.join("aggregator.toml");
    let mut extra = format!(
        "[credit]\nsession_window_batches = {}\n",
        opts.window_batches.max(1)
    );
    if let Some(ms) = opts.target_queue_delay_ms {
        extra.push_str(&format!("target_queue_delay_ms = {ms}\n"));
    }
    let _broker = match opts.kafka_port {
        Some(port) => {
            let broker = Broker::start(&dir.join("kafka"), port, "ferrule.bench", 4)?;
            extra.push_str(&format!(
                "[kafka]\nbrokers = \"127.0.0.1:{port}\"\ntopic = \"ferrule.bench\"\n"
            ));
            Some(broker)
        }
        None => None,
    };
    std::fs::write(
        &cfg_path,
        procs::aggregator_toml(&pki, &dir.join("aggregator"), addr, None, &extra),
    )?;
    let agg_bin = procs::bin("ferrule-aggregator")?;
    let mut agg = Proc::start(
        "aggregator",
        &agg_bin,
        &cfg_path,
        &dir.join("aggregator.log"),
    )?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    if !agg.is_running() {
        bail!("aggregator did not start: see its log");
    }

    let mut agent = None;
    if opts.agent_rss {
        let spec = AgentSpec {
            site: "bench".into(),
            id: "agent-rss".into(),
            spool: dir.join("agent"),
            endpoints: vec![addr.to_string()],
            rate_hz: 2857,
            total_samples: None,
            fsync: "interval",
            metrics: None,
            extra: String::new(),
        };
        let p = dir.join("agent.toml");
        std::fs::write(&p, procs::agent_toml(&pki, &spec)?)?;
        agent = Some(Proc::start(
            "agent",
            &procs::bin("ferrule-agent")?,
            &p,
            &dir.join("agent.log"),
        )?);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    // Issue certificates one at a time (the CA directory takes one writer).
    for i in 0..opts.connections {
        pki.agent("bench", &format!("blast-{i}"))?;
    }
    let mut clients = Vec::new();
    for i in 0..opts.connections {
        clients.push(tokio::spawn(blast(
            pki.clone(),
            BlastSpec {
                addr,
                site: "bench".into(),
                id: format!("blast-{i}"),
                samples: opts.batch_samples,
                seed: 1000 + i as u64,
                rate: opts.rate / opts.connections.max(1) as u64,
                agent_queue_delay: opts.agent_queue_delay_ms.map(Duration::from_millis),
            },
            stop.clone(),
            measuring.clone(),
            tally.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu0 = agg.cpu_secs().unwrap_or(0.0);
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(opts.secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = agg.cpu_secs().unwrap_or(0.0);
    let rss = agg.rss_kib().unwrap_or(0) as f64 / 1024.0;
    let agent_rss = agent
        .as_ref()
        .and_then(Proc::rss_kib)
        .map(|k| k as f64 / 1024.0);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.await.context("blast client panicked")??);
    }
    if let Some(mut a) = agent {
        a.term(Duration::from_secs(10));
    }
    agg.term(Duration::from_secs(15));
    latencies.sort_unstable();
    let samples = tally.acked_samples.load(Ordering::Relaxed) as f64;
    let batches = tally.acked_batches.load(Ordering::Relaxed) as f64;
    let cpu = cpu1 - cpu0;
    Ok(Report {
        events_per_sec: samples / elapsed,
        batches_per_sec: batches / elapsed,
        ack_p50_ms: percentile(&latencies, 0.50),
        ack_p99_ms: percentile(&latencies, 0.99),
        cpu_secs_per_million: if samples > 0.0 {
            cpu / (samples / 1e6)
        } else {
            f64::NAN
        },
        aggregator_cores: cpu / elapsed,
        aggregator_rss_mib: rss,
        agent_rss_mib: agent_rss,
        refused_connections: tally.refused_connections.load(Ordering::Relaxed),
        lost_sessions: tally.lost_sessions.load(Ordering::Relaxed),
        first_refusal: take(&tally.first_refusal),
        first_loss: take(&tally.first_loss),
    })
}

fn take(first: &Mutex<Option<String>>) -> Option<String> {
    first.lock().unwrap_or_else(PoisonError::into_inner).take()
}
