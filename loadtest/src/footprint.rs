//! The agent footprint benchmark: what one real `ferrule-agent` process costs in
//! CPU and memory while it reads 1 000 sensors at 10 Hz each (10 000 samples/s)
//! from Modbus TCP and MQTT together and forwards them to an aggregator.
//!
//! Everything runs on 127.0.0.1 as real processes: a `ferrule-aggregator`
//! (embedded log, development certificates), a pymodbus device serving holding
//! registers whose values change every period (`peers/modbus_many.py`, embedded
//! in this binary), Debian's Mosquitto, a QoS 1 publisher (in this process,
//! rumqttc, paced in slots of a tenth of a period) and the agent, which polls the
//! registers and subscribes to the topics. After a warm-up, the agent's CPU
//! (`/proc/<pid>/stat`) and RSS (`VmRSS`, sampled every second) are measured
//! over a window, with what it read per input (its own `/metrics`) and what the
//! aggregator committed (`ferrule_aggregator_committed_samples_total`).

use crate::devpki::DevPki;
use crate::procs::{self, Proc};
use anyhow::{bail, ensure, Context as _};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Modbus device the agent polls, written to the scratch directory at run time.
const MODBUS_PEER: &str = include_str!("../peers/modbus_many.py");

/// Registers in one Modbus read (the protocol's limit).
const REGISTERS_PER_READ: usize = 125;

/// Publisher slots per period: each slot publishes a tenth of the topics, so the
/// broker sees a steady stream instead of one burst per period.
const SLOTS: u32 = 10;

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measured seconds, after the warm-up.
    pub secs: u64,
    /// Warm-up seconds (connections, sensor registration, first batches).
    pub warmup_secs: u64,
    /// Holding registers on the Modbus device, one sensor each (0 for no Modbus input).
    pub modbus_registers: usize,
    /// MQTT topics, one sensor each (0 for no MQTT input).
    pub mqtt_topics: usize,
    /// Samples per second of every sensor: the poll rate and the publish rate.
    pub hz: u32,
    /// Mosquitto's `max_inflight_messages`: QoS 1 messages sent to the agent and
    /// not yet acknowledged (0 for no limit). Mosquitto's default, 20, allows 20
    /// messages per ack round trip: on a 2-core machine busy with other work the
    /// agent then read only about 3 000 of the 5 000 messages/s while the rest
    /// piled up at the broker, so the benchmark's default is 100.
    pub broker_max_inflight: u32,
}

/// What the benchmark measured.
#[derive(Debug)]
pub struct Report {
    /// Length of the measured window, seconds.
    pub secs: f64,
    /// Samples per second the agent read from Modbus.
    pub modbus_per_sec: f64,
    /// Samples per second the agent read from MQTT.
    pub mqtt_per_sec: f64,
    /// Samples per second the aggregator committed.
    pub committed_per_sec: f64,
    /// Messages per second the publisher had acknowledged by the broker.
    pub published_per_sec: f64,
    /// Agent CPU, percent of one core, over the whole window.
    pub agent_cpu_pct: f64,
    /// Agent CPU per 5-second slice of the window, percent of one core,
    /// sorted: on a shared machine a neighbour's burst inflates some slices,
    /// and the median slice is the steadier figure.
    pub agent_cpu_slices: Vec<f64>,
    /// Agent RSS, highest per-second sample in the window, MiB.
    pub rss_max_mib: f64,
    /// Agent RSS at the end of the window, MiB.
    pub rss_end_mib: f64,
    /// Input errors the agent counted in the window (timeouts, bad payloads ...).
    pub input_errors: f64,
    /// CPU of the other processes, percent of one core: (name, percent).
    pub others_cpu_pct: Vec<(String, f64)>,
}

impl Report {
    /// The report's lines, as printed.
    pub fn render(&self, opts: &Options) -> String {
        let mut out = String::new();
        let reads = opts.modbus_registers.div_ceil(REGISTERS_PER_READ);
        let period_ms = 1000 / opts.hz.max(1);
        let _ = writeln!(
            out,
            "footprint: {} sensors at {} Hz ({} Modbus registers polled every {period_ms} ms in {reads} reads, {} MQTT topics at {} Hz QoS 1, broker max_inflight_messages {}), {:.0} s measured after {} s warm-up",
            opts.modbus_registers + opts.mqtt_topics,
            opts.hz,
            opts.modbus_registers,
            opts.mqtt_topics,
            opts.hz,
            opts.broker_max_inflight,
            self.secs,
            opts.warmup_secs,
        );
        let _ = writeln!(
            out,
            "  samples/s read: modbus {:.0}, mqtt {:.0} (published {:.0}); committed by the aggregator {:.0}",
            self.modbus_per_sec, self.mqtt_per_sec, self.published_per_sec, self.committed_per_sec
        );
        let _ = writeln!(
            out,
            "  agent CPU: {:.2} % of one core; RSS max {:.1} MiB (end {:.1} MiB)",
            self.agent_cpu_pct, self.rss_max_mib, self.rss_end_mib
        );
        if let (Some(lo), Some(hi)) = (self.agent_cpu_slices.first(), self.agent_cpu_slices.last())
        {
            let _ = writeln!(
                out,
                "  agent CPU per {SLICE_SECS} s slice: median {:.2} %, min {lo:.2} %, max {hi:.2} % ({} slices)",
                median(&self.agent_cpu_slices),
                self.agent_cpu_slices.len()
            );
        }
        let others: Vec<String> = self
            .others_cpu_pct
            .iter()
            .map(|(n, p)| format!("{n} {p:.1} %"))
            .collect();
        let _ = writeln!(out, "  others (CPU, % of one core): {}", others.join(", "));
        if self.input_errors > 0.0 {
            let _ = writeln!(
                out,
                "  WARNING: the agent counted {:.0} input errors in the window (see ferrule_agent_input_errors_total)",
                self.input_errors
            );
        }
        let expected = (opts.modbus_registers + opts.mqtt_topics) as f64 * f64::from(opts.hz);
        if self.committed_per_sec < 0.9 * expected {
            let _ = writeln!(
                out,
                "  WARNING: {:.0} samples/s committed, under 90 % of the {expected:.0} offered: the figures above are not at full load",
                self.committed_per_sec
            );
        }
        out
    }
}

/// Length of the slices the agent's CPU is also reported in.
const SLICE_SECS: u64 = 5;

/// The middle of sorted `v` (the mean of the middle two for an even length).
fn median(v: &[f64]) -> f64 {
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the benchmark in a scratch directory under the system temp dir, removed
/// at the end; every process it starts is stopped, also on error.
pub fn footprint(opts: &Options) -> anyhow::Result<Report> {
    ensure!(opts.hz > 0, "--hz must be at least 1");
    ensure!(
        opts.modbus_registers + opts.mqtt_topics > 0,
        "nothing to read: give --modbus-registers or --mqtt-topics above 0"
    );
    ensure!(
        opts.modbus_registers <= usize::from(u16::MAX),
        "at most 65535 Modbus registers"
    );
    ensure!(opts.secs > 0, "--secs must be at least 1");
    let dir = std::env::temp_dir().join(format!("ferrule-footprint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, opts);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A helper process that is not a ferrule binary (Mosquitto, pymodbus), killed on drop.
struct Peer {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Peer {
    fn start(name: &'static str, cmd: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until it accepts TCP connections on `port`.
    fn wait_listening(&mut self, port: u16) -> anyhow::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let up = procs::wait_for(Duration::from_secs(30), || {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return Some(false);
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| true)
        });
        match up {
            Some(true) => Ok(()),
            Some(false) => bail!("{} exited:\n{}", self.name, self.log_tail()),
            None => bail!(
                "{} does not listen on {port} after 30 s:\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name` on the PATH or in the sbin directories (Debian puts mosquitto in /usr/sbin).
fn tool(name: &str, hint: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` not found: {hint}"))
}

fn start_mosquitto(dir: &Path, port: u16, max_inflight: u32) -> anyhow::Result<Peer> {
    let bin = tool(
        "mosquitto",
        "the footprint benchmark needs Debian's MQTT broker (apt-get install -y mosquitto)",
    )?;
    // Running as root, Mosquitto would switch to the `mosquitto` user; `user`
    // keeps whoever runs the benchmark.
    let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
        .trim()
        .to_string();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user {user}\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nmax_inflight_messages {max_inflight}\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        ),
    )?;
    let mut peer = Peer::start(
        "mosquitto",
        Command::new(bin).arg("-c").arg(&conf),
        dir.join("mosquitto.log"),
    )?;
    peer.wait_listening(port)?;
    Ok(peer)
}

fn start_modbus(dir: &Path, port: u16, registers: usize, hz: u32) -> anyhow::Result<Peer> {
    let hint = "the footprint benchmark needs python3 with pymodbus 3.x \
                (python3 -m pip install 'pymodbus>=3.6,<4')";
    let check = Command::new("python3")
        .args(["-c", "import pymodbus"])
        .output()
        .with_context(|| format!("python3 cannot be run: {hint}"))?;
    if !check.status.success() {
        bail!(
            "pymodbus is missing ({}): {hint}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    let script = dir.join("modbus_many.py");
    std::fs::write(&script, MODBUS_PEER)?;
    let mut peer = Peer::start(
        "pymodbus",
        Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(registers.to_string())
            .arg((1000 / hz).max(1).to_string()),
        dir.join("modbus.log"),
    )?;
    peer.wait_listening(port)?;
    Ok(peer)
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The agent's configuration: a Modbus device and an MQTT subscription, no
/// synthetic input.
fn agent_toml(
    pki: &DevPki,
    dir: &Path,
    aggregator: SocketAddr,
    metrics: SocketAddr,
    modbus: Option<(u16, usize)>,
    mqtt: Option<(u16, u32)>,
    hz: u32,
) -> anyhow::Result<String> {
    let (cert, key) = pki.agent("bench", "footprint")?;
    let mut t = format!(
        "[agent]\nsite = \"bench\"\nid = \"footprint\"\n\n\
         [uplink]\nendpoints = [\"{aggregator}\"]\nserver_name = \"localhost\"\n\n\
         [tls]\ncert = {}\nkey = {}\nserver_ca = {}\n\n\
         [spool]\ndir = {}\nfsync = \"interval\"\n\n\
         [metrics]\nlisten = \"{metrics}\"\n\n",
        q(&cert),
        q(&key),
        q(&pki.ca_bundle()),
        q(&dir.join("spool")),
    );
    if let Some((port, registers)) = modbus {
        let _ = write!(
            t,
            "[[inputs.modbus]]\nname = \"modbus\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             poll_interval_ms = {}\ntimeout_ms = 1000\nmax_registers_per_read = {REGISTERS_PER_READ}\n\n",
            (1000 / hz).max(1)
        );
        for i in 0..registers {
            let _ = write!(
                t,
                "[[inputs.modbus.registers]]\nsensor = \"modbus/reg-{i}\"\nkind = \"holding\"\naddress = {i}\nscale = 0.01\nunit = \"V\"\n\n"
            );
        }
    }
    if let Some((port, max_inflight)) = mqtt {
        // The agent is told the broker's window, as a site operator would
        // (Mosquitto's 0, no limit, is told as the largest value).
        let inflight = if max_inflight == 0 {
            u32::from(u16::MAX)
        } else {
            max_inflight.min(u32::from(u16::MAX))
        };
        let _ = write!(
            t,
            "[[inputs.mqtt]]\nname = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"ferrule-footprint\"\nbroker_max_inflight = {inflight}\n\n\
             [[inputs.mqtt.subscriptions]]\ntopic = \"site/+/value\"\nsensor = \"mqtt/{{1}}\"\nunit = \"A\"\n"
        );
    }
    Ok(t)
}

/// The QoS 1 publisher: its own thread and single-threaded runtime, so its pace
/// does not depend on the measuring thread.
struct Publisher {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Publisher {
    fn start(port: u16, topics: usize, hz: u32) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (s, a) = (stop.clone(), acked.clone());
        let handle = std::thread::Builder::new()
            .name("mqtt-publisher".into())
            .spawn(move || rt.block_on(publish(port, topics, hz, s, a)))?;
        Ok(Self {
            stop,
            acked,
            handle: Some(handle),
        })
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Fails if the publisher stopped on an error.
    fn check(&mut self) -> anyhow::Result<()> {
        if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            return self.join();
        }
        Ok(())
    }

    fn join(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the MQTT publisher panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

async fn publish(
    port: u16,
    topics: usize,
    hz: u32,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut o = MqttOptions::new("ferrule-footprint-publisher", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(1000);
    let (client, mut events) = AsyncClient::new(o, 4 * topics.max(64));
    let pump_stop = stop.clone();
    let pump = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    if pump_stop.load(Ordering::Relaxed) {
                        return;
                    }
                    tracing::warn!("publisher connection: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let names: Vec<String> = (0..topics)
        .map(|i| format!("site/meter-{i}/value"))
        .collect();
    let slots = SLOTS as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(hz) / f64::from(SLOTS),
    ));
    // Catch up after a late tick: the offered rate is what counts.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n: u64 = 0;
    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let slot = (n % u64::from(SLOTS)) as usize;
        let period = n / u64::from(SLOTS);
        for (i, topic) in names.iter().enumerate().skip(slot).step_by(slots) {
            let v = 100.0 + 20.0 * (0.05 * period as f64 + 0.1 * i as f64).sin();
            if let Err(e) = client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, format!("{v:.3}"))
                .await
            {
                result = Err(anyhow::anyhow!("publishing: {e}"));
                break;
            }
        }
        if result.is_err() {
            break;
        }
        n += 1;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    pump.abort();
    result
}

/// What is read at both ends of the window.
struct Snapshot {
    at: Instant,
    agent_cpu: f64,
    modbus: f64,
    mqtt: f64,
    errors: f64,
    committed: f64,
    acked: u64,
    others: Vec<f64>,
}

fn sum_series(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

fn snapshot(
    agent: &Proc,
    agent_metrics: SocketAddr,
    agg_metrics: SocketAddr,
    publisher: Option<&Publisher>,
    others: &[u32],
) -> anyhow::Result<Snapshot> {
    let at = Instant::now();
    let agent_cpu = agent.cpu_secs().context("reading the agent's CPU time")?;
    let a = procs::http_get(agent_metrics, "/metrics").context("agent /metrics")?;
    let g = procs::http_get(agg_metrics, "/metrics").context("aggregator /metrics")?;
    Ok(Snapshot {
        at,
        agent_cpu,
        modbus: procs::metric(&a, "ferrule_agent_input_samples_total{input=\"modbus\"}")
            .unwrap_or(0.0),
        mqtt: procs::metric(&a, "ferrule_agent_input_samples_total{input=\"mqtt\"}").unwrap_or(0.0),
        errors: sum_series(&a, "ferrule_agent_input_errors_total"),
        committed: procs::metric(&g, "ferrule_aggregator_committed_samples_total").unwrap_or(0.0),
        acked: publisher.map_or(0, Publisher::acked),
        others: others
            .iter()
            .map(|&p| procs::cpu_secs(p).unwrap_or(0.0))
            .collect(),
    })
}

// The orchestration runs on the main thread, not on an executor: sleeping is fine.
#[allow(clippy::disallowed_methods)]
fn run(dir: &Path, opts: &Options) -> anyhow::Result<Report> {
    let pki = DevPki::ensure(&dir.join("pki"))?;

    // Aggregator.
    let quic = SocketAddr::from(([127, 0, 0, 1], procs::free_udp_port()?));
    let agg_metrics = SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port()?));
    let agg_cfg = dir.join("aggregator.toml");
    std::fs::write(
        &agg_cfg,
        procs::aggregator_toml(&pki, &dir.join("aggregator"), quic, Some(agg_metrics), ""),
    )?;
    let mut agg = Proc::start(
        "aggregator",
        &procs::bin("ferrule-aggregator")?,
        &agg_cfg,
        &dir.join("aggregator.log"),
    )?;

    // Peers.
    let modbus = if opts.modbus_registers > 0 {
        let port = procs::free_tcp_port()?;
        Some((
            start_modbus(dir, port, opts.modbus_registers, opts.hz)?,
            port,
        ))
    } else {
        None
    };
    let broker = if opts.mqtt_topics > 0 {
        let port = procs::free_tcp_port()?;
        Some((start_mosquitto(dir, port, opts.broker_max_inflight)?, port))
    } else {
        None
    };
    if procs::wait_for(Duration::from_secs(15), || {
        procs::http_get(agg_metrics, "/metrics").ok()
    })
    .is_none()
    {
        bail!(
            "the aggregator does not serve /metrics: see {}",
            dir.join("aggregator.log").display()
        );
    }

    // The agent, then the publisher (the agent's session subscribes first).
    let agent_metrics = SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port()?));
    let agent_cfg = dir.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        agent_toml(
            &pki,
            dir,
            quic,
            agent_metrics,
            modbus.as_ref().map(|(_, p)| (*p, opts.modbus_registers)),
            broker.as_ref().map(|(_, p)| (*p, opts.broker_max_inflight)),
            opts.hz,
        )?,
    )?;
    let agent_log = dir.join("agent.log");
    let mut agent = Proc::start(
        "agent",
        &procs::bin("ferrule-agent")?,
        &agent_cfg,
        &agent_log,
    )?;
    let agent_dead = |agent: &mut Proc| {
        if agent.is_running() {
            None
        } else {
            let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            Some(anyhow::anyhow!(
                "the agent exited:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            ))
        }
    };
    if procs::wait_for(Duration::from_secs(15), || {
        procs::http_get(agent_metrics, "/metrics").ok()
    })
    .is_none()
    {
        if let Some(e) = agent_dead(&mut agent) {
            return Err(e);
        }
        bail!("the agent does not serve /metrics");
    }
    let mut publisher = match &broker {
        Some((_, port)) => Some(Publisher::start(*port, opts.mqtt_topics, opts.hz)?),
        None => None,
    };

    // The other processes whose CPU is reported for context.
    let mut others: Vec<(String, u32)> = vec![("aggregator".into(), agg.pid())];
    if let Some((p, _)) = &modbus {
        others.push((p.name.into(), p.pid()));
    }
    if let Some((p, _)) = &broker {
        others.push((p.name.into(), p.pid()));
    }
    if publisher.is_some() {
        others.push(("publisher (this process)".into(), std::process::id()));
    }
    let other_pids: Vec<u32> = others.iter().map(|(_, p)| *p).collect();

    std::thread::sleep(Duration::from_secs(opts.warmup_secs));
    if let Some(e) = agent_dead(&mut agent) {
        return Err(e);
    }
    let s0 = snapshot(
        &agent,
        agent_metrics,
        agg_metrics,
        publisher.as_ref(),
        &other_pids,
    )?;
    let mut rss_max = agent.rss_kib().unwrap_or(0);
    let mut slices = Vec::new();
    let mut slice_start = (s0.at, s0.agent_cpu);
    let deadline = s0.at + Duration::from_secs(opts.secs);
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_secs(1)));
        if let Some(e) = agent_dead(&mut agent) {
            return Err(e);
        }
        if !agg.is_running() {
            bail!(
                "the aggregator exited: see {}",
                dir.join("aggregator.log").display()
            );
        }
        if let Some(p) = publisher.as_mut() {
            p.check()?;
        }
        rss_max = rss_max.max(agent.rss_kib().unwrap_or(0));
        let now = Instant::now();
        if now.duration_since(slice_start.0) >= Duration::from_secs(SLICE_SECS) {
            if let Some(cpu) = agent.cpu_secs() {
                let dt = now.duration_since(slice_start.0).as_secs_f64();
                slices.push(100.0 * (cpu - slice_start.1) / dt);
                slice_start = (now, cpu);
            }
        }
    }
    slices.sort_by(f64::total_cmp);
    let s1 = snapshot(
        &agent,
        agent_metrics,
        agg_metrics,
        publisher.as_ref(),
        &other_pids,
    )?;
    let rss_end = agent.rss_kib().unwrap_or(0);
    rss_max = rss_max.max(rss_end);

    if let Some(mut p) = publisher.take() {
        p.join()?;
    }
    agent.term(Duration::from_secs(10));
    agg.term(Duration::from_secs(10));
    drop(broker);
    drop(modbus);

    let secs = s1.at.duration_since(s0.at).as_secs_f64();
    let rate = |a: f64, b: f64| (b - a) / secs;
    Ok(Report {
        secs,
        modbus_per_sec: rate(s0.modbus, s1.modbus),
        mqtt_per_sec: rate(s0.mqtt, s1.mqtt),
        committed_per_sec: rate(s0.committed, s1.committed),
        published_per_sec: (s1.acked - s0.acked) as f64 / secs,
        agent_cpu_pct: 100.0 * (s1.agent_cpu - s0.agent_cpu) / secs,
        agent_cpu_slices: slices,
        rss_max_mib: rss_max as f64 / 1024.0,
        rss_end_mib: rss_end as f64 / 1024.0,
        input_errors: s1.errors - s0.errors,
        others_cpu_pct: others
            .iter()
            .zip(s0.others.iter().zip(&s1.others))
            .map(|((name, _), (a, b))| (name.clone(), 100.0 * (b - a) / secs))
            .collect(),
    })
}
