//! The fleet workload: many agents, small batches, the whole pipeline on.
//!
//! N simulated agents ([`sim`]), each a real QUIC + mutual TLS client with its
//! own certificate and the real agent session, send their three-phase feed
//! (values that vary, one batch per batching window) at a target rate to a
//! real `ferrule-aggregator` process evaluating the three-phase alert rules.
//! The run measures throughput, ack latency from each batch's due time (HDR
//! histograms: p50 to max), the aggregator's CPU per million events and RSS,
//! the generator's own CPU, and the aggregator's alert and commit latency
//! (its histograms); prints a line a second; then stops the agents, lets
//! them drain, stops the aggregator, and reads its embedded log back with the
//! [`verify`] verifier: any acknowledged batch missing fails the run.
//!
//! Reports ([`report`]): `report.json`, `summary.md` and SVG plots in one
//! directory.

pub mod groups;
pub mod netns;
pub mod real;
pub mod relay;
pub mod report;
pub mod sim;
pub mod soak;
pub mod verify;

use crate::devpki::DevPki;
use crate::procs::{self, Proc};
use anyhow::{bail, Context as _};
use report::{
    bucket_percentiles, Conditions, Cost, FleetReport, Percentiles, Sessions, Throughput, Tick,
};
use sim::{Shared, SimSpec};
use std::io::IsTerminal as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use verify::Verifier;

/// The rules the aggregator evaluates: thresholds on the meter feed's rms readings.
const RULES: &str = include_str!("rules.toml");

/// A fault injected a third of the way into the measured period; the run
/// reports how long the fleet took to recover and the verifier still demands
/// that nothing acknowledged is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault.
    None,
    /// SIGKILL the aggregator, restart it a second later on the same data.
    AggregatorKill,
    /// SIGTERM the aggregator (its drain), restart it at once.
    AggregatorRestart,
    /// SIGKILL the Kafka broker, restart it a second later (needs Kafka).
    KafkaRestart,
    /// SIGKILL Redis, restart it a second later (needs Redis).
    RedisRestart,
    /// SIGKILL the broker leading partition 0 of a three-broker cluster,
    /// restart it 5 s later (needs Kafka with `kafka_cluster`).
    KafkaLeaderLoss,
    /// SIGSTOP the aggregator for [`PAUSE`] (a stalled VM, a process frozen by
    /// its host), then SIGCONT. With Redis its sampler is paused past its
    /// 5 s lease and must come back under a new fence.
    AggregatorPause,
    /// With Redis: two consumer groups read every site stream, and one of
    /// them stops reading (a consumer hung). The agents must not notice, the
    /// other group must get everything, and the stream stays under its cap
    /// (`redis.max_len`, ten seconds of the stream here), the stalled group's
    /// loss to the cap counted.
    RedisGroupStall,
    /// Certificates changed mid-stream: the aggregator's renewed with a new
    /// key (it reloads within `tls.reload_interval_secs`, 5 s), the first
    /// agent's revoked for key compromise (its session closed, its
    /// handshakes refused, what it holds kept), the second agent's renewed in
    /// place and its old serial revoked as superseded (it comes back at once
    /// on the new one). Nothing acknowledged is lost; the others carry on.
    CertRotateRevoke,
    /// The aggregator runs in its own network namespace, joined by a veth
    /// pair; every packet between it and the agents is dropped for
    /// [`NETWORK_FAULT`], longer than the agents' 5 s peer timeout, then the
    /// path heals (needs root; not with Kafka or Redis, which stay outside).
    Partition,
    /// As `partition`, with one packet in ten dropped each way at random for
    /// [`NETWORK_FAULT`].
    PacketLoss,
    /// The agents reach the aggregator through a UDP relay ([`relay`]) that
    /// holds every datagram [`LATENCY`] each way for [`NETWORK_FAULT`] (a
    /// congested or satellite uplink): what `tc netem delay` would do, which
    /// this kernel lacks.
    Latency,
    /// Through the same relay, every datagram held a random 0 to
    /// [`REORDER_JITTER`] for [`NETWORK_FAULT`], so datagrams leave out of
    /// order both ways (netem's reordering).
    Reorder,
    /// SIGKILL the first real `ferrule-agent` ([`Options::real_agents`]) and
    /// restart it a second later on the same spool: what it had acknowledged
    /// is in the sink, what it had spooled gets there after the restart.
    AgentKill,
    /// As `agent-kill`, and before the restart the spool's newest segment is
    /// cut short midway through its last write, as a power cut leaves a
    /// write that had not reached the disk. The agent recovers the spool by
    /// itself and carries on.
    AgentPowerCut,
}

/// The delay `latency` adds to every datagram, each way.
pub const LATENCY: Duration = Duration::from_millis(150);

/// The widest delay `reorder` draws for a datagram.
pub const REORDER_JITTER: Duration = Duration::from_millis(40);

/// How long the `partition` and `packet-loss` faults last.
pub const NETWORK_FAULT: Duration = Duration::from_secs(10);

/// The share of packets `packet-loss` drops each way, percent.
pub const PACKET_LOSS_PERCENT: u32 = 10;

/// How long `aggregator-pause` freezes the aggregator: past the sampler's
/// lease (5 s by default), within the agents' idle timeout (30 s).
pub const PAUSE: Duration = Duration::from_secs(8);

impl std::str::FromStr for Fault {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "none" => Self::None,
            "aggregator-kill" => Self::AggregatorKill,
            "aggregator-restart" => Self::AggregatorRestart,
            "kafka-restart" => Self::KafkaRestart,
            "redis-restart" => Self::RedisRestart,
            "kafka-leader-loss" => Self::KafkaLeaderLoss,
            "aggregator-pause" => Self::AggregatorPause,
            "redis-group-stall" => Self::RedisGroupStall,
            "cert-rotate-revoke" => Self::CertRotateRevoke,
            "partition" => Self::Partition,
            "packet-loss" => Self::PacketLoss,
            "latency" => Self::Latency,
            "reorder" => Self::Reorder,
            "agent-kill" => Self::AgentKill,
            "agent-power-cut" => Self::AgentPowerCut,
            _ => bail!(
                "unknown fault {s:?}: none, aggregator-kill, aggregator-restart, aggregator-pause, kafka-restart, kafka-leader-loss, redis-restart, redis-group-stall, cert-rotate-revoke, partition, packet-loss, latency, reorder, agent-kill or agent-power-cut"
            ),
        })
    }
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::AggregatorKill => "aggregator-kill",
            Self::AggregatorRestart => "aggregator-restart",
            Self::KafkaRestart => "kafka-restart",
            Self::RedisRestart => "redis-restart",
            Self::KafkaLeaderLoss => "kafka-leader-loss",
            Self::AggregatorPause => "aggregator-pause",
            Self::RedisGroupStall => "redis-group-stall",
            Self::CertRotateRevoke => "cert-rotate-revoke",
            Self::Partition => "partition",
            Self::PacketLoss => "packet-loss",
            Self::Latency => "latency",
            Self::Reorder => "reorder",
            Self::AgentKill => "agent-kill",
            Self::AgentPowerCut => "agent-power-cut",
        }
    }
}

/// The topic a fleet run commits to with Kafka.
const KAFKA_TOPIC: &str = "ferrule.fleet";

/// Settings of a fleet run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated agents.
    pub agents: usize,
    /// Samples per second per agent (over seven sensors).
    pub rate_per_agent: u64,
    /// The agents' batching window, milliseconds (the agent's default is 50).
    pub window_ms: u64,
    /// Measured seconds.
    pub secs: u64,
    /// Seconds before the measurement: connections, handshakes, warm caches.
    pub warmup_secs: u64,
    /// Agents start over this many seconds, evenly (a fleet does not boot in
    /// one instant); `None` for one second per 500 agents.
    pub ramp_secs: Option<u64>,
    /// A voltage sag every this many seconds on each agent's feed (0: none):
    /// it fires the undervoltage alert, whose latency the aggregator measures.
    pub sag_every_secs: u32,
    /// Evaluate no alert rules.
    pub no_rules: bool,
    /// Where the aggregator's data (and the certificates) go: its file system
    /// is the log's.
    pub data_dir: PathBuf,
    /// Where the reports go.
    pub out: PathBuf,
    /// Print a progress line every second.
    pub progress: bool,
    /// A fault to inject.
    pub fault: Fault,
    /// Commit to a Kafka broker started on this port (`scripts/kafka.sh`;
    /// topic `ferrule.fleet`, 4 partitions) instead of the embedded log; the
    /// verifier then reads the topic back with an independent consumer
    /// (`scripts/kafka/consume.py`, librdkafka through Python).
    pub kafka_port: Option<u16>,
    /// With `kafka_port`: three brokers on it and the next two ports
    /// (controllers 100 above), the topic replicated three times with
    /// min.insync.replicas 2.
    pub kafka_cluster: bool,
    /// Fan out through a `redis-server` started on this port
    /// (`scripts/redis.sh`) instead of in-process.
    pub redis_port: Option<u16>,
    /// A soak: fail the run if the aggregator's RSS, descriptors or threads,
    /// or the backlog, kept growing (`soak::Resources::growth`).
    pub soak: bool,
    /// Real `ferrule-agent` processes beside the simulated agents (site
    /// [`real::SITE`], synthetic feeds at about the same rate), checked by
    /// [`real::Continuity`]; the `agent-*` faults need at least one. Embedded
    /// log only.
    pub real_agents: usize,
}

/// A throwaway `redis-server` (`scripts/redis.sh`), stopped on drop.
struct Redis {
    dir: PathBuf,
    url: String,
}

fn redis_sh(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("bash")
        .arg(crate::bench::repo_script("redis.sh")?)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("scripts/redis.sh {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Redis {
    fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let d = dir.display().to_string();
        let out = redis_sh(&["start", &d, &port.to_string()])?;
        let url = out
            .lines()
            .find_map(|l| l.strip_prefix("url="))
            .context("scripts/redis.sh printed no url= line")?
            .trim()
            .to_string();
        Ok(Self {
            dir: dir.to_path_buf(),
            url,
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = redis_sh(&["stop", &self.dir.display().to_string()]);
    }
}

/// Runs the fleet and writes its reports into `opts.out`; the report says
/// whether the verifier passed.
pub async fn run(opts: &Options) -> anyhow::Result<FleetReport> {
    if opts.agents == 0 || opts.rate_per_agent == 0 || opts.window_ms == 0 || opts.secs == 0 {
        bail!("agents, rate, window and seconds must all be above zero");
    }
    if opts.fault == Fault::KafkaRestart && opts.kafka_port.is_none() {
        bail!("--fault kafka-restart needs --kafka-port");
    }
    if matches!(opts.fault, Fault::RedisRestart | Fault::RedisGroupStall)
        && opts.redis_port.is_none()
    {
        bail!("--fault {} needs --redis-port", opts.fault.name());
    }
    if opts.fault == Fault::KafkaLeaderLoss && !(opts.kafka_port.is_some() && opts.kafka_cluster) {
        bail!("--fault kafka-leader-loss needs --kafka-port and --kafka-cluster");
    }
    if opts.fault == Fault::CertRotateRevoke && opts.agents < 3 {
        bail!("--fault cert-rotate-revoke needs at least 3 agents (one revoked, one renewed, the rest untouched)");
    }
    if matches!(opts.fault, Fault::AgentKill | Fault::AgentPowerCut) && opts.real_agents == 0 {
        bail!(
            "--fault {} needs --real-agents 1 or more",
            opts.fault.name()
        );
    }
    if opts.real_agents > 0 && opts.kafka_port.is_some() {
        bail!("--real-agents is checked against the embedded log: not with --kafka-port");
    }
    if matches!(opts.fault, Fault::Partition | Fault::PacketLoss)
        && (opts.kafka_port.is_some() || opts.redis_port.is_some())
    {
        bail!(
            "--fault {} runs the aggregator in its own network namespace: not with --kafka-port or --redis-port (they stay outside it)",
            opts.fault.name()
        );
    }
    if opts.kafka_cluster && opts.kafka_port.is_none() {
        bail!("--kafka-cluster needs --kafka-port");
    }
    let dir = opts
        .data_dir
        .join(format!("ferrule-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&dir, opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    report.write(&opts.out)?;
    Ok(report)
}

fn file_system(dir: &Path) -> String {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Sends `kill SIG PID`.
fn signal(sig: &str, pid: &str) -> anyhow::Result<()> {
    let st = std::process::Command::new("kill")
        .args([sig, pid])
        .status()?;
    if !st.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

/// The `cert-rotate-revoke` fault: renews the aggregator's certificate with
/// a new key, renews `ids[1]`'s with a new key and revokes its old serial as
/// superseded, and revokes `ids[0]`'s for key compromise (each CRL write
/// replaces the file in one step, as `ferrule-certs` does).
fn rotate_and_revoke(
    pki: &DevPki,
    ids: &[(String, String)],
) -> anyhow::Result<report::CertsReport> {
    let (Some((rs, ra)), Some((ns, na))) = (ids.first(), ids.get(1)) else {
        bail!("cert-rotate-revoke needs two agents");
    };
    let renew = ferrule_certs::RenewOptions {
        new_key: true,
        ..ferrule_certs::RenewOptions::default()
    };
    let server = ferrule_certs::renew(&pki.dir, &pki.server_cert(), &renew)
        .context("renewing the server certificate")?;
    let (agent_cert, _) = pki.agent_paths(ns, na);
    let agent = ferrule_certs::renew(&pki.dir, &agent_cert, &renew)
        .with_context(|| format!("renewing agent {ns}/{na}"))?;
    ferrule_certs::revoke(
        &pki.dir,
        &agent.previous_serial,
        ferrule_certs::RevocationReason::Superseded,
    )
    .context("revoking the renewed agent's old serial")?;
    let (revoked_cert, _) = pki.agent_paths(rs, ra);
    let pem = std::fs::read(&revoked_cert)?;
    let serial = ferrule_certs::inspect(&pem)?
        .into_iter()
        .next()
        .context("the agent's certificate file holds no certificate")?
        .serial;
    ferrule_certs::revoke(
        &pki.dir,
        &serial,
        ferrule_certs::RevocationReason::KeyCompromise,
    )
    .with_context(|| format!("revoking agent {rs}/{ra}"))?;
    Ok(report::CertsReport {
        server_serials: (server.previous_serial.to_hex(), server.serial.to_hex()),
        renewed_agent: format!("{ns}/{na}"),
        revoked_agent: format!("{rs}/{ra}"),
        ..report::CertsReport::default()
    })
}

/// The last lines of a log, for an error message (the run's directory is
/// removed afterwards).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Sets `stop` when dropped, so simulated agents end with the run however
/// it ends.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

async fn run_in(dir: &Path, opts: &Options) -> anyhow::Result<FleetReport> {
    let t_start = Instant::now();
    let pki = DevPki::ensure(&dir.join("pki"))?;
    let ids: Vec<(String, String)> = (0..opts.agents)
        .map(|i| (format!("site-{:03}", i / 100), format!("a{i:05}")))
        .collect();
    // One writer in the CA directory: issue before anything runs.
    for (n, (site, id)) in ids.iter().enumerate() {
        pki.agent(site, id)?;
        if opts.progress && (n + 1) % 500 == 0 {
            eprintln!("fleet: {} certificates issued", n + 1);
        }
    }
    let real_ids: Vec<String> = (0..opts.real_agents)
        .map(|i| format!("real-{i:02}"))
        .collect();
    // Seven sensors a feed: about a simulated agent's rate.
    let real_hz = (opts.rate_per_agent / 7).clamp(1, u64::from(u32::MAX)) as u32;
    for id in &real_ids {
        pki.agent(real::SITE, id)?;
    }
    // The network faults put the aggregator in a namespace of its own.
    let ns = if matches!(opts.fault, Fault::Partition | Fault::PacketLoss) {
        Some(Arc::new(
            tokio::task::spawn_blocking(netns::Netns::create).await??,
        ))
    } else {
        None
    };
    let (quic, metrics) = match &ns {
        Some(n) => (
            SocketAddr::from((n.inside(), 4433)),
            SocketAddr::from((n.inside(), 9100)),
        ),
        None => (
            SocketAddr::from(([127, 0, 0, 1], procs::free_udp_port()?)),
            SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port()?)),
        ),
    };
    let ns_name = ns.as_ref().map(|n| n.name().to_string());
    // The latency faults put a delaying relay between the agents and it.
    let relay = if matches!(opts.fault, Fault::Latency | Fault::Reorder) {
        Some(relay::Relay::start(quic).await?)
    } else {
        None
    };
    let dial = relay.as_ref().map_or(quic, relay::Relay::addr);
    let mut heal_at = None::<(tokio::time::Instant, Instant)>;
    let data = dir.join("aggregator");
    let mut extra = String::new();
    if !opts.no_rules {
        let rules = dir.join("rules.toml");
        std::fs::write(&rules, RULES)?;
        extra.push_str(&format!(
            "[alerts]\nrules = {:?}\n",
            rules.display().to_string()
        ));
    }
    let broker = match opts.kafka_port {
        Some(port) => {
            let d = dir.join("kafka");
            let cluster = opts.kafka_cluster;
            let b = tokio::task::spawn_blocking(move || {
                if cluster {
                    crate::bench::Broker::start_cluster(&d, port, KAFKA_TOPIC, 4)
                } else {
                    crate::bench::Broker::start(&d, port, KAFKA_TOPIC, 4)
                }
            })
            .await??;
            extra.push_str(&procs::kafka_section(&b.bootstrap, KAFKA_TOPIC, ""));
            Some(b)
        }
        None => None,
    };
    // The broker a leader loss kills, looked up now (the tool takes seconds).
    let leader0 = match (&broker, opts.fault) {
        (Some(b), Fault::KafkaLeaderLoss) => {
            let (d, bootstrap) = (b.dir().to_path_buf(), b.bootstrap.clone());
            Some(
                tokio::task::spawn_blocking(move || {
                    crate::bench::leader_dir(&d, &bootstrap, KAFKA_TOPIC, 0)
                })
                .await??,
            )
        }
        _ => None,
    };
    let broker_back = Arc::new(std::sync::OnceLock::<f64>::new());
    // Ten seconds of the busiest site stream (a site is up to 100 agents).
    let group_stall_max_len = ((opts.agents.min(100) as u64 * 10_000) / opts.window_ms).max(1000);
    let redis = match opts.redis_port {
        Some(port) => {
            let d = dir.join("redis");
            let r = tokio::task::spawn_blocking(move || Redis::start(&d, port)).await??;
            extra.push_str(&format!("[redis]\nurl = {:?}\n", r.url));
            if opts.fault == Fault::RedisGroupStall {
                extra.push_str(&format!(
                    "max_len = {group_stall_max_len}\ntrim_interval_ms = 200\n"
                ));
            }
            Some(r)
        }
        None => None,
    };
    // The two groups exist before anything is published, and read from the
    // first entry.
    let readers = match (&redis, opts.fault) {
        (Some(r), Fault::RedisGroupStall) => {
            let mut streams: Vec<String> = ids
                .iter()
                .map(|(site, _)| format!("ferrule:{{{site}}}"))
                .collect();
            streams.dedup();
            let url = r.url.clone();
            Some(
                tokio::task::spawn_blocking(move || groups::Readers::start(&url, streams))
                    .await??,
            )
        }
        _ => None,
    };
    let cfg = dir.join("aggregator.toml");
    // Every simulated agent comes from 127.0.0.1, standing for as many hosts:
    // the per-address share of the handshake slots is the whole.
    std::fs::write(
        &cfg,
        procs::aggregator_toml(&pki, &data, quic, Some(metrics), &extra).replacen(
            "[server]\n",
            "[server]\nmax_pending_handshakes_per_address = 256\n",
            1,
        ),
    )?;
    let mut agg = Proc::start_in(
        "aggregator",
        ns_name.as_deref(),
        &procs::bin("ferrule-aggregator")?,
        &cfg,
        &dir.join("aggregator.log"),
    )?;
    let up = tokio::task::spawn_blocking(move || {
        procs::wait_for(Duration::from_secs(30), || {
            procs::http_get(metrics, "/healthz").ok()
        })
    })
    .await?;
    if up.is_none() || !agg.is_running() {
        bail!(
            "the aggregator did not come up; the end of its log:\n{}",
            log_tail(&dir.join("aggregator.log"))
        );
    }
    let file_system = file_system(&data);
    let mut real = if opts.real_agents > 0 {
        let (d, pki2, n) = (dir.join("real"), pki.clone(), opts.real_agents);
        std::fs::create_dir_all(&d)?;
        Some(
            tokio::task::spawn_blocking(move || {
                real::RealAgents::start(&d, &pki2, n, real_hz, dial)
            })
            .await??,
        )
    } else {
        None
    };

    let shared = Arc::new(Shared::new());
    // The agents a certificate fault renews and revokes: the second and the first.
    let cert_ids: Vec<(String, String)> = ids.iter().take(2).cloned().collect();
    let mut certs = None::<report::CertsReport>;
    let _stop_agents = StopOnDrop(shared.clone());
    let window = Duration::from_millis(opts.window_ms);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let ramp = opts.ramp_secs.unwrap_or(opts.agents as u64 / 500) as f64;
    let mut tasks = Vec::with_capacity(opts.agents);
    for (i, (site, id)) in ids.into_iter().enumerate() {
        // Windows spread evenly over one window, as independent agents' are,
        // and starts over the ramp.
        let frac = i as f64 / opts.agents as f64;
        let offset = window.mul_f64(frac) + Duration::from_secs_f64(ramp * frac);
        tasks.push(tokio::spawn(sim::run_agent(
            pki.clone(),
            SimSpec {
                addr: dial,
                site,
                id,
                seed: 0x5eed_0000 + i as u64,
                rate: opts.rate_per_agent,
                window,
                first_due: t0 + offset,
                sag_every_secs: opts.sag_every_secs,
                // A minute of batches at most, per agent.
                max_held: (60_000 / opts.window_ms).max(16) as usize,
            },
            shared.clone(),
        )));
    }

    // Second by second: warm-up, then the measured period.
    let mut timeline = Vec::new();
    let mut resources = Vec::new();
    let total = opts.warmup_secs + opts.secs;
    let mut measured_cpu = (0.0, 0.0, 0.0);
    // CPU of aggregator processes that a fault ended, over the measured period.
    let mut agg_cpu_carried = 0.0;
    let fault_sec = opts.warmup_secs + opts.secs / 3;
    let mut fault = None::<report::FaultReport>;
    let mut backlog_before_fault = 0u64;
    let mut measure_t0 = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut tick_at = tokio::time::Instant::now();
    let mut last_tick = Instant::now();
    let mut established_at_fault = 0u64;
    for sec in 0..total {
        if sec == opts.warmup_secs {
            measured_cpu = (
                agg.cpu_secs().unwrap_or(0.0),
                procs::cpu_secs(std::process::id()).unwrap_or(0.0),
                0.0,
            );
            measure_t0 = Instant::now();
            let _ = shared.measure_from.set(tokio::time::Instant::now());
        }
        if sec == fault_sec && opts.fault != Fault::None {
            backlog_before_fault = shared.backlog.load(Ordering::Relaxed);
            established_at_fault = shared.established.load(Ordering::Relaxed);
            let at = t_start.elapsed().as_secs_f64();
            let t_down = Instant::now();
            let kind = opts.fault;
            if kind == Fault::RedisRestart {
                let rdir = redis
                    .as_ref()
                    .map(|r| r.dir.display().to_string())
                    .unwrap_or_default();
                let r2 = rdir.clone();
                tokio::task::spawn_blocking(move || redis_sh(&["kill", &r2])).await??;
                tokio::time::sleep(Duration::from_secs(1)).await;
                tokio::task::spawn_blocking(move || redis_sh(&["restart", &rdir])).await??;
            } else if kind == Fault::KafkaRestart {
                let bdir = broker
                    .as_ref()
                    .map(|b| b.dir().display().to_string())
                    .unwrap_or_default();
                let b2 = bdir.clone();
                tokio::task::spawn_blocking(move || crate::bench::kafka_sh(&["kill", &b2]))
                    .await??;
                tokio::time::sleep(Duration::from_secs(1)).await;
                tokio::task::spawn_blocking(move || crate::bench::kafka_sh(&["restart", &bdir]))
                    .await??;
            } else if kind == Fault::KafkaLeaderLoss {
                let leader = leader0
                    .clone()
                    .context("the leader was looked up at the start")?;
                let (l1, l2) = (leader.display().to_string(), leader.display().to_string());
                tokio::task::spawn_blocking(move || crate::bench::kafka_sh(&["kill", &l1]))
                    .await??;
                if opts.progress {
                    eprintln!("\nfleet: killed the leader of partition 0, {l2}");
                }
                // Back after a while, in the background: the seconds go on
                // being measured, and the fleet must not need it back to
                // recover (another broker leads now).
                let back = broker_back.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let r = tokio::task::spawn_blocking(move || {
                        crate::bench::kafka_sh(&["restart", &l2])
                    })
                    .await;
                    if matches!(r, Ok(Ok(()))) {
                        let _ = back.set(t_down.elapsed().as_secs_f64());
                    }
                });
            } else if kind == Fault::CertRotateRevoke {
                let (pki, ids) = (pki.clone(), cert_ids.clone());
                certs = Some(
                    tokio::task::spawn_blocking(move || rotate_and_revoke(&pki, &ids)).await??,
                );
            } else if matches!(kind, Fault::Partition | Fault::PacketLoss) {
                let pct = if kind == Fault::Partition {
                    100
                } else {
                    PACKET_LOSS_PERCENT
                };
                if let Some(n) = ns.clone() {
                    tokio::task::spawn_blocking(move || n.drop_percent(pct)).await??;
                }
                heal_at = Some((tokio::time::Instant::now() + NETWORK_FAULT, t_down));
            } else if matches!(kind, Fault::Latency | Fault::Reorder) {
                if let Some(r) = &relay {
                    r.set_shape(if kind == Fault::Latency {
                        relay::Shape {
                            base: LATENCY,
                            jitter: Duration::ZERO,
                        }
                    } else {
                        relay::Shape {
                            base: Duration::ZERO,
                            jitter: REORDER_JITTER,
                        }
                    });
                }
                heal_at = Some((tokio::time::Instant::now() + NETWORK_FAULT, t_down));
            } else if matches!(kind, Fault::AgentKill | Fault::AgentPowerCut) {
                if let Some(mut r) = real.take() {
                    let tear = kind == Fault::AgentPowerCut;
                    let (mut r, done) = tokio::task::spawn_blocking(move || {
                        let done = r.kill(0, tear);
                        (r, done)
                    })
                    .await?;
                    done?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let (r, done) = tokio::task::spawn_blocking(move || {
                        let done = r.restart(0);
                        (r, done)
                    })
                    .await?;
                    real = Some(r);
                    done?;
                }
            } else if kind == Fault::RedisGroupStall {
                if let Some(r) = &readers {
                    r.stall_slow();
                }
            } else if kind == Fault::AggregatorPause {
                let pid = agg.pid().to_string();
                let p2 = pid.clone();
                signal("-STOP", &pid)?;
                tokio::time::sleep(PAUSE).await;
                signal("-CONT", &p2)?;
            } else {
                agg_cpu_carried += agg.cpu_secs().unwrap_or(0.0) - measured_cpu.0;
                let mut old = agg;
                tokio::task::spawn_blocking(move || {
                    if kind == Fault::AggregatorKill {
                        old.kill9();
                    } else {
                        old.term(Duration::from_secs(30));
                    }
                })
                .await?;
                if kind == Fault::AggregatorKill {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // Same configuration, same data: what it committed is still there.
                agg = Proc::start_in(
                    "aggregator",
                    ns_name.as_deref(),
                    &procs::bin("ferrule-aggregator")?,
                    &cfg,
                    &dir.join("aggregator.log"),
                )?;
                measured_cpu.0 = 0.0;
                // Away until it answers again.
                tokio::task::spawn_blocking(move || {
                    procs::wait_for(Duration::from_secs(30), || {
                        procs::http_get(metrics, "/healthz").ok()
                    })
                })
                .await?;
            }
            if opts.progress {
                eprintln!("\nfleet: {} at {at:.1} s", kind.name());
            }
            fault = Some(report::FaultReport {
                kind: kind.name().into(),
                at_secs: at,
                down_secs: t_down.elapsed().as_secs_f64(),
                recovered_after_secs: None,
            });
            tick_at = tokio::time::Instant::now();
        }
        if let Some((_, t_down)) = heal_at.filter(|(at, _)| tokio::time::Instant::now() >= *at) {
            if let Some(n) = ns.clone() {
                tokio::task::spawn_blocking(move || n.heal()).await??;
            }
            if let Some(r) = &relay {
                r.set_shape(relay::Shape::default());
            }
            if let Some(f) = fault.as_mut() {
                f.down_secs = t_down.elapsed().as_secs_f64();
            }
            heal_at = None;
            if opts.progress {
                eprintln!("\nfleet: the network healed");
            }
        }
        tick_at += Duration::from_secs(1);
        tokio::time::sleep_until(tick_at).await;
        // A tick after a fault spans the outage too: a rate over its length.
        let interval = last_tick.elapsed().as_secs_f64();
        last_tick = Instant::now();
        let tick = take_tick(
            &shared,
            t_start.elapsed().as_secs_f64(),
            interval,
            sec >= opts.warmup_secs,
        );
        resources.push(soak::sample(
            tick.t_secs,
            tick.measured,
            agg.pid(),
            &data,
            tick.backlog_batches,
        ));
        if let (Some(f), Some(back)) = (fault.as_mut(), broker_back.get()) {
            // The killed leader's outage: until its restart finished.
            f.down_secs = *back;
        }
        if let Some(f) = fault
            .as_mut()
            .filter(|f| f.recovered_after_secs.is_none() && heal_at.is_none())
        {
            // Recovered: every agent back on a new session (when the fault
            // cut them), the backlog the fault built drained.
            let reconnected = matches!(
                opts.fault,
                Fault::KafkaRestart
                    | Fault::RedisRestart
                    | Fault::RedisGroupStall
                    | Fault::CertRotateRevoke
                    | Fault::PacketLoss
                    | Fault::Latency
                    | Fault::Reorder
                    | Fault::AgentKill
                    | Fault::AgentPowerCut
                    | Fault::KafkaLeaderLoss
                    | Fault::AggregatorPause
            ) || shared.established.load(Ordering::Relaxed)
                - established_at_fault
                >= opts.agents as u64;
            // A revoked agent stays away, holding what it has.
            let away = u64::from(opts.fault == Fault::CertRotateRevoke);
            let held = shared.revoked_held.load(Ordering::Relaxed);
            // A real agent's fault: it is back and its spool drained.
            let real_back = !matches!(opts.fault, Fault::AgentKill | Fault::AgentPowerCut)
                || match real.take() {
                    Some(r) => {
                        let (r, back) = tokio::task::spawn_blocking(move || {
                            let back = r.caught_up(0);
                            (r, back)
                        })
                        .await?;
                        real = Some(r);
                        back
                    }
                    None => false,
                };
            if reconnected
                && real_back
                && tick.connected == opts.agents as u64 - away
                && tick.backlog_batches <= backlog_before_fault + held + opts.agents as u64
            {
                f.recovered_after_secs = Some(tick.t_secs - f.at_secs);
            }
        }
        if opts.progress {
            let line = format!(
                "fleet: {:>3}/{total} s {} {:>10.0} events/s  ack p50 {:>7.2} ms p99 {:>8.2} ms  up {:>5}/{}  backlog {:>6} batches",
                sec + 1,
                if sec < opts.warmup_secs { "warm-up " } else { "measured" },
                tick.events_per_sec,
                tick.ack_p50_ms,
                tick.ack_p99_ms,
                tick.connected,
                opts.agents,
                tick.backlog_batches
            );
            if tty {
                eprint!("\r{line}");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
        }
        timeline.push(tick);
        if !agg.is_running() {
            bail!(
                "the aggregator exited during the run; the end of its log:\n{}",
                log_tail(&dir.join("aggregator.log"))
            );
        }
    }
    if opts.progress && tty {
        eprintln!();
    }
    let _ = shared.measure_until.set(tokio::time::Instant::now());
    // A run shorter than the network fault: heal before the drain.
    if let (Some(n), Some(_)) = (ns.clone(), heal_at) {
        tokio::task::spawn_blocking(move || n.heal()).await??;
    }
    if let Some(r) = &relay {
        r.set_shape(relay::Shape::default());
    }
    let elapsed = measure_t0.elapsed().as_secs_f64();
    let agg_cpu = agg_cpu_carried + agg.cpu_secs().unwrap_or(0.0) - measured_cpu.0;
    let gen_cpu = procs::cpu_secs(std::process::id()).unwrap_or(0.0) - measured_cpu.1;
    let agg_rss = agg.rss_kib().unwrap_or(0) as f64 / 1024.0;
    let gen_rss = procs::rss_kib(std::process::id()).unwrap_or(0) as f64 / 1024.0;

    // Stop generating; let every agent drain what it holds (bounded).
    shared.generating.store(false, Ordering::Relaxed);
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while shared.backlog.load(Ordering::Relaxed) > shared.revoked_held.load(Ordering::Relaxed)
        && tokio::time::Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    // An agent stuck in a send the aggregator never reads would hang the run.
    let mut ledgers = Vec::with_capacity(tasks.len());
    let join_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for mut t in tasks {
        match tokio::time::timeout_at(join_deadline, &mut t).await {
            Ok(joined) => ledgers.push(joined.context("a simulated agent panicked")??),
            Err(_) => {
                t.abort();
                bail!("a simulated agent did not stop within 30 s (stuck in a send?)");
            }
        }
    }
    // The real agents: drained as far as a live feed lets them, then stopped.
    let mut real_end = None;
    if let Some(mut r) = real.take() {
        real_end = Some(
            tokio::task::spawn_blocking(move || {
                // Counted by the running processes: read before they stop.
                let corrupt = r.corrupt_counted();
                let stopped = r.stop(Duration::from_secs(30));
                let recovered = r.damage_recovered();
                (stopped, corrupt, recovered, r.downs().to_vec(), r.torn())
            })
            .await?,
        );
    }
    let mut groups = match readers {
        Some(r) => Some(tokio::task::spawn_blocking(move || r.finish(group_stall_max_len)).await??),
        None => None,
    };
    if let (Some(f), true) = (fault.as_mut(), groups.is_some()) {
        // The slow group stayed stalled to the end.
        f.down_secs = t_start.elapsed().as_secs_f64() - f.at_secs;
    }
    // After a trimming pass has seen the end of the streams.
    if groups.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (exposition, healthz) = tokio::task::spawn_blocking(move || {
        (
            procs::http_get(metrics, "/metrics").unwrap_or_default(),
            procs::http_get(metrics, "/healthz").unwrap_or_default(),
        )
    })
    .await?;
    if let Some(c) = certs.as_mut() {
        c.reloads_applied = procs::metric(
            &exposition,
            "ferrule_aggregator_tls_reloads_total{outcome=\"applied\"}",
        )
        .unwrap_or(0.0) as u64;
        c.sessions_revoked =
            procs::metric_sum(&exposition, "ferrule_aggregator_sessions_revoked_total");
        c.refused_revoked = shared.refused_revoked.load(Ordering::Relaxed);
        c.reloaded_sessions = shared.reloaded_sessions.load(Ordering::Relaxed);
        c.server_certificates_seen = shared
            .server_leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
    }
    if let Some(g) = groups.as_mut() {
        g.fast_lost_counted = groups::lost_counted(&exposition, groups::FAST);
        g.slow_lost_counted = groups::lost_counted(&exposition, groups::SLOW);
        g.healthz = healthz
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" / ");
    }
    let mut problems = Vec::new();
    if !agg.is_running() {
        problems.push(format!(
            "the aggregator exited before the end; its log ends:\n{}",
            log_tail(&dir.join("aggregator.log"))
        ));
    } else if !tokio::task::spawn_blocking(move || agg.term(Duration::from_secs(30))).await? {
        problems.push("the aggregator did not stop cleanly within 30 s of SIGTERM (killed)".into());
    }

    // Read the sink back.
    let bootstrap = broker.as_ref().map(|b| b.bootstrap.clone());
    let continuity = real::Continuity::new(&real_ids, real_hz);
    let (verdict, continuity) = tokio::task::spawn_blocking(move || match bootstrap {
        Some(b) => read_back_kafka(&b, ledgers).map(|v| (v, continuity)),
        None => read_back(&data.join("log"), ledgers, continuity),
    })
    .await??;
    let real_verdict = real_end.map(|(stopped, corrupt, recovered, downs, torn)| {
        problems.extend(stopped.problems);
        real::RealVerdict {
            held_in_spools: stopped.held,
            drain_timed_out: !stopped.drained,
            spool_corrupt_counted: corrupt,
            spool_damage_recovered: recovered,
            torn_bytes: torn.0,
            torn_seq: torn.1,
            ..continuity.finish(&downs, stopped.stopped_ns)
        }
    });
    if let Some(rv) = &real_verdict {
        problems.extend(rv.failures());
    }
    let verdict = verify::Verdict {
        duplicates_expected: opts.kafka_port.is_some() && opts.fault == Fault::AggregatorKill,
        ..verdict
    };
    drop(broker);
    drop(redis);

    let r = shared.recorder();
    let events = r.events as f64;
    let per_million = |cpu: f64| {
        if events > 0.0 {
            cpu / (events / 1e6)
        } else {
            f64::NAN
        }
    };
    let sessions = Sessions {
        refused: shared.refused.load(Ordering::Relaxed),
        lost: shared.lost_sessions.load(Ordering::Relaxed),
        moved: shared.moved.load(Ordering::Relaxed),
        first_error: shared
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
        backlog_peak_batches: shared.backlog_peak.load(Ordering::Relaxed),
        not_generated: shared.not_generated.load(Ordering::Relaxed),
    };
    let batch_samples = ((opts.rate_per_agent as f64 * window.as_secs_f64()).round() as u64).max(1);
    Ok(FleetReport {
        conditions: Conditions {
            agents: opts.agents,
            rate_per_agent: opts.rate_per_agent,
            offered_events_per_sec: opts.rate_per_agent * opts.agents as u64,
            window_ms: opts.window_ms,
            batch_samples,
            secs: opts.secs,
            warmup_secs: opts.warmup_secs,
            rules: !opts.no_rules,
            sag_every_secs: opts.sag_every_secs,
            fan_out: if opts.redis_port.is_some() {
                "Redis Streams (1 redis-server on this machine)".into()
            } else {
                "in-process".into()
            },
            sink: if opts.kafka_cluster {
                format!("Kafka (3 brokers on this machine, topic {KAFKA_TOPIC} with 4 partitions, replication 3, min.insync.replicas 2, acks=all)")
            } else if opts.kafka_port.is_some() {
                format!("Kafka (1 broker on this machine, topic {KAFKA_TOPIC} with 4 partitions, acks=all)")
            } else {
                "embedded log (group-commit fsync)".into()
            },
            file_system,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(t_start.elapsed().as_secs()),
        },
        throughput: Throughput {
            events_per_sec: events / elapsed,
            batches_per_sec: r.batches as f64 / elapsed,
        },
        ack_latency_ms: Percentiles::of(&r.total),
        alert_latency_ms: bucket_percentiles(
            &exposition,
            "ferrule_aggregator_alert_latency_seconds",
        ),
        fan_out: report::FanOut::from_exposition(&exposition),
        sampler: report::Sampler::from_exposition(&exposition),
        groups,
        real: real_verdict,
        relay: relay.as_ref().map(|r| report::RelayReport {
            delay_ms: if opts.fault == Fault::Latency {
                LATENCY.as_millis() as u64
            } else {
                0
            },
            jitter_ms: if opts.fault == Fault::Reorder {
                REORDER_JITTER.as_millis() as u64
            } else {
                0
            },
            stats: r.stats(),
        }),
        certs,
        commit_latency_ms: bucket_percentiles(
            &exposition,
            "ferrule_aggregator_commit_latency_seconds",
        ),
        aggregator: Cost {
            cpu_secs: agg_cpu,
            cores: agg_cpu / elapsed,
            cpu_secs_per_million: per_million(agg_cpu),
            rss_mib: agg_rss,
        },
        generator: Cost {
            cpu_secs: gen_cpu,
            cores: gen_cpu / elapsed,
            cpu_secs_per_million: per_million(gen_cpu),
            rss_mib: gen_rss,
        },
        resources: soak::Resources::of(&resources),
        problems: {
            let mut p = verdict.failures();
            if opts.soak {
                p.extend(soak::Resources::of(&resources).growth(opts.agents));
            }
            if sessions.not_generated > 0 {
                p.push(format!(
                    "the generator skipped {} batches (agents held a minute of batches): the latency figures understate",
                    sessions.not_generated
                ));
            }
            p.extend(problems);
            p
        },
        sessions,
        fault,
        verdict,
        timeline,
        resource_timeline: resources,
        latency_distribution: report::distribution(&r.total),
    })
}

/// The second just ended: its rate and latencies, then a fresh tick.
fn take_tick(shared: &Shared, t_secs: f64, interval_secs: f64, measured: bool) -> Tick {
    let mut r = shared.recorder();
    let p = Percentiles::of(&r.tick);
    let events = r.tick_events;
    r.tick.reset();
    r.tick_events = 0;
    drop(r);
    Tick {
        t_secs,
        measured,
        events_per_sec: events as f64 / interval_secs.max(1e-3),
        ack_p50_ms: p.p50,
        ack_p99_ms: p.p99,
        ack_max_ms: p.max,
        connected: shared.connected.load(Ordering::Relaxed),
        backlog_batches: shared.backlog.load(Ordering::Relaxed),
    }
}

/// The record's series as (sensor, first sample time, last sample time).
/// Returns the samples it holds.
fn spans(rec: &ferrule_wire::record::BatchRecord, out: &mut Vec<(u32, i64, i64)>) -> u64 {
    out.clear();
    let mut n = 0u64;
    for s in &rec.series {
        n += s.len() as u64;
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for (t, _, _) in s.iter() {
            lo = lo.min(t);
            hi = hi.max(t);
        }
        if lo <= hi {
            out.push((s.sensor().0, lo, hi));
        }
    }
    n
}

/// Every record of the Kafka topic, read by an independent consumer
/// (`scripts/kafka/consume.py`: librdkafka through Python, from the start of
/// every partition to the end it had), through the verifier.
fn read_back_kafka(
    bootstrap: &str,
    ledgers: Vec<verify::AgentLedger>,
) -> anyhow::Result<verify::Verdict> {
    let script = crate::bench::repo_script("kafka/consume.py")?;
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        // Only the end of every partition ends the read: no idle cut-off.
        .args([
            bootstrap,
            KAFKA_TOPIC,
            "--to-end",
            "--values",
            "--idle",
            "900",
            "--timeout",
            "900",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running python3 {}", script.display()))?;
    let stdout = child.stdout.take().context("the consumer's stdout")?;
    let mut stderr = child.stderr.take().context("the consumer's stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let result = verify_lines(stdout, ledgers);
    if result.is_err() {
        let _ = child.kill();
    }
    let st = child.wait()?;
    let err = err_reader.join().unwrap_or_default();
    let v = result?;
    if !st.success() {
        bail!("scripts/kafka/consume.py failed ({st}): {err}");
    }
    // It says why it stopped; anything but the end means records unread.
    if !err.contains("(end)") {
        bail!("scripts/kafka/consume.py stopped before the end of the topic: {err}");
    }
    Ok(v)
}

/// consume.py's JSON lines through the verifier.
fn verify_lines(
    stdout: std::process::ChildStdout,
    ledgers: Vec<verify::AgentLedger>,
) -> anyhow::Result<verify::Verdict> {
    use std::io::BufRead as _;
    let mut v = Verifier::new(ledgers);
    let mut sp = Vec::new();
    let mut bytes = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let j: serde_json::Value = serde_json::from_str(&line).context("a line of consume.py")?;
        let hex = j["value"].as_str().context("a record without a value")?;
        bytes.clear();
        for pair in hex.as_bytes().chunks(2) {
            let s = std::str::from_utf8(pair)?;
            bytes.push(u8::from_str_radix(s, 16).context("a value that is not hex")?);
        }
        let rec = ferrule_wire::record::decode_record(&bytes, 1 << 24).with_context(|| {
            format!(
                "record at partition {} offset {} does not decode",
                j["partition"], j["offset"]
            )
        })?;
        let n = spans(&rec, &mut sp);
        v.record(&rec.header, &sp, n);
    }
    Ok(v.finish())
}

/// Every record of the embedded log in `log_dir`, through the verifier.
fn read_back(
    log_dir: &Path,
    ledgers: Vec<verify::AgentLedger>,
    mut real: real::Continuity,
) -> anyhow::Result<(verify::Verdict, real::Continuity)> {
    use ferrule_disklog::{LogReader, Offset};
    let (reader, _) = LogReader::open_read_only(log_dir)
        .with_context(|| format!("opening the embedded log in {}", log_dir.display()))?;
    let mut v = Verifier::new(ledgers);
    let mut from = Offset(0);
    let mut spans = Vec::new();
    loop {
        let recs = reader
            .read_records(from, 4096, 64 << 20)
            .with_context(|| format!("reading the embedded log at {}", from.0))?;
        let Some(last) = recs.last() else { break };
        from = Offset(last.offset.0 + 1);
        for r in recs {
            let rec = ferrule_wire::record::decode_record(&r.payload, 1 << 24)
                .with_context(|| format!("record {} does not decode", r.offset.0))?;
            let n = self::spans(&rec, &mut spans);
            v.record(&rec.header, &spans, n);
            if rec.header.site == real::SITE {
                let named: Vec<(String, i64, i64)> = spans
                    .iter()
                    .map(|&(id, lo, hi)| {
                        let name = rec
                            .header
                            .sensors
                            .iter()
                            .find(|s| s.id.0 == id)
                            .map_or_else(|| format!("#{id}"), |s| s.name.to_string());
                        (name, lo, hi)
                    })
                    .collect();
                real.record(
                    &rec.header.agent,
                    rec.header.epoch.0,
                    rec.header.seq.0,
                    &named,
                    n,
                );
            }
        }
    }
    Ok((v.finish(), real))
}

#[cfg(test)]
mod tests {
    use ferrule_wire::example::SENSORS;

    /// The fleet's rules against its own feed: each sag fires the undervoltage
    /// on the three phases and resolves it; nothing else fires.
    #[test]
    fn the_meter_feed_fires_the_fleet_rules_once_per_sag() {
        let set = ferrule_rules::RuleSet::from_toml(super::RULES).expect("fleet rules.toml");
        // 5 s at 100 Hz per sensor, a sag every 2 s: at 2 s and 4 s.
        let mut feed = super::sim::MeterFeed::new(3, 0, 100.0, 2);
        let mut input = String::new();
        for series in feed.next_batch(7 * 500) {
            let name = SENSORS[series.sensor().0 as usize];
            for (ts, v, _) in series.iter() {
                input.push_str(&format!(
                    "{{\"ts\": {}, \"sensor\": \"a1/{name}\", \"site\": \"s\", \"value\": {v}}}\n",
                    ts as f64 / 1e9
                ));
            }
        }
        // The replay wants time order across sensors.
        let mut lines: Vec<&str> = input.lines().collect();
        lines.sort_by(|a, b| {
            let ts = |l: &str| l[7..].split(',').next().unwrap().parse::<f64>().unwrap();
            ts(a).total_cmp(&ts(b))
        });
        let sorted = lines.join("\n");
        let mut out = Vec::new();
        let summary = ferrule_rules::replay(&set, sorted.as_bytes(), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(summary.firing, 6, "{out}");
        let firing: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(r#""state":"firing""#))
            .collect();
        assert!(
            firing
                .iter()
                .all(|l| l.contains(r#""rule":"undervoltage""#)),
            "{out}"
        );
        assert_eq!(out.matches(r#""state":"resolved""#).count(), 6, "{out}");
    }
}
