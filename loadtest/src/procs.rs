//! Real processes on loopback: configuration files for the real binaries, starting,
//! stopping and killing them, and reading what they report (the aggregator's
//! `inspect`, `/metrics`, `/proc` for CPU and memory).

// These helpers run on plain test threads, never on an async executor.
#![allow(clippy::disallowed_methods)]

use crate::devpki::DevPki;
use anyhow::{bail, Context as _};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds a workspace binary (`ferrule-agent`, `ferrule-aggregator`) next to the
/// running executable (tests run from `target/<profile>/deps`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found near {}: build it first (cargo build --workspace --bins)",
        exe.display()
    )
}

/// Ports [`free_udp_port`] and [`free_tcp_port`] handed out in this process.
/// The kernel may give a port that was free a moment ago to the next bind
/// too: an aggregator's and an agent's metrics listeners were handed one
/// port before either bound it, and the agent failed to start.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A port from `bind` that this process has not handed out before.
fn fresh_port(bind: impl Fn() -> std::io::Result<u16>) -> anyhow::Result<u16> {
    let mut seen = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..100 {
        let p = bind()?;
        if !seen.contains(&p) {
            seen.push(p);
            return Ok(p);
        }
    }
    bail!("no fresh port in 100 binds")
}

/// A free UDP port on 127.0.0.1 (for the aggregator's QUIC listener), never
/// one handed out before in this process.
pub fn free_udp_port() -> anyhow::Result<u16> {
    fresh_port(|| {
        UdpSocket::bind("127.0.0.1:0")?
            .local_addr()
            .map(|a| a.port())
    })
}

/// A free TCP port on 127.0.0.1 (for metrics listeners), never one handed
/// out before in this process.
pub fn free_tcp_port() -> anyhow::Result<u16> {
    fresh_port(|| {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()
            .map(|a| a.port())
    })
}

/// A port `p` such that `p + o` is free on 127.0.0.1 for every offset given,
/// for servers a script starts later (Kafka brokers and controllers).
///
/// Picked below Linux's ephemeral range (32768 and up): a port the kernel hands
/// out with `bind(0)` can be taken by any test's outgoing connection between
/// this pick and the server's bind, which made brokers exit at start-up when
/// the suite ran in parallel.
pub fn free_port_block(offsets: &[u16]) -> anyhow::Result<u16> {
    let span = offsets.iter().copied().max().unwrap_or(0);
    anyhow::ensure!(span < 11_000, "port offsets up to {span} are too wide");
    // Spread the picks of concurrent tests: pid and clock, no RNG needed.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let (lo, hi) = (20_000u32, 32_000u32 - u32::from(span));
    for i in 0..500u32 {
        let p = lo + (seed.wrapping_add(i.wrapping_mul(7_919)) % (hi - lo));
        let p = u16::try_from(p)?;
        if offsets
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", p + o)).is_ok())
        {
            return Ok(p);
        }
    }
    anyhow::bail!("no block of free TCP ports found on 127.0.0.1 below 32000")
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// An aggregator configuration file's text.
pub fn aggregator_toml(
    pki: &DevPki,
    data: &Path,
    quic: SocketAddr,
    metrics: Option<SocketAddr>,
    extra: &str,
) -> String {
    let metrics = metrics.map_or(String::new(), |m| format!("[metrics]\nlisten = \"{m}\"\n"));
    format!(
        "[server]\nlisten = \"{quic}\"\n\n[tls]\ncert = {}\nkey = {}\nclient_ca = {}\ncrl = {}\n\n[log]\ndir = {}\n\n{metrics}{extra}\n",
        q(&pki.server_cert()),
        q(&pki.server_key()),
        q(&pki.ca_bundle()),
        q(&pki.crl()),
        q(data),
    )
}

/// What an agent configuration needs.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Site (as in its certificate).
    pub site: String,
    /// Agent id (as in its certificate).
    pub id: String,
    /// Spool directory.
    pub spool: PathBuf,
    /// Aggregator endpoints.
    pub endpoints: Vec<String>,
    /// Samples per second per sensor of its synthetic input (7 sensors).
    pub rate_hz: u32,
    /// Stop after this many samples.
    pub total_samples: Option<u64>,
    /// `always` or `interval`.
    pub fsync: &'static str,
    /// Metrics listener.
    pub metrics: Option<SocketAddr>,
    /// More TOML appended verbatim.
    pub extra: String,
}

/// An agent configuration file's text.
pub fn agent_toml(pki: &DevPki, a: &AgentSpec) -> anyhow::Result<String> {
    let (cert, key) = pki.agent(&a.site, &a.id)?;
    let endpoints: Vec<String> = a.endpoints.iter().map(|e| format!("{e:?}")).collect();
    let total = a
        .total_samples
        .map_or(String::new(), |t| format!("total_samples = {t}\n"));
    let metrics = a
        .metrics
        .map_or(String::new(), |m| format!("[metrics]\nlisten = \"{m}\"\n"));
    Ok(format!(
        "[agent]\nsite = \"{}\"\nid = \"{}\"\n\n[uplink]\nendpoints = [{}]\nserver_name = \"localhost\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 2000\n\n[tls]\ncert = {}\nkey = {}\nserver_ca = {}\n\n[spool]\ndir = {}\nfsync = \"{}\"\n\n{metrics}\n[[inputs.synthetic]]\nname = \"synthetic\"\nprefix = \"feeder-1\"\nrate_hz = {}\nseed = 7\n{total}\n{}\n",
        a.site,
        a.id,
        endpoints.join(", "),
        q(&cert),
        q(&key),
        q(&pki.ca_bundle()),
        q(&a.spool),
        a.fsync,
        a.rate_hz,
        a.extra,
    ))
}

/// A child process we started.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `binary run --config config`, stderr to `log`.
    pub fn start(name: &str, binary: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        Self::start_with_env(name, binary, config, log, &[])
    }

    /// [`Proc::start`] inside a network namespace (`ip netns exec NS`, which
    /// execs the binary: the pid is the binary's), or here with `None`.
    pub fn start_in(
        name: &str,
        netns: Option<&str>,
        binary: &Path,
        config: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let Some(ns) = netns else {
            return Self::start(name, binary, config, log);
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(binary);
        Self::spawn(name, cmd, config, log, &[])
    }

    /// [`Proc::start`] with more environment variables (systemd's
    /// `NOTIFY_SOCKET`, ...; a `FERRULE_LOG` among them replaces `info`).
    pub fn start_with_env(
        name: &str,
        binary: &Path,
        config: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn(name, Command::new(binary), config, log, env)
    }

    fn spawn(
        name: &str,
        mut cmd: Command,
        config: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let what = format!("{cmd:?}");
        let child = cmd
            .args(["run", "--config"])
            .arg(config)
            .env("FERRULE_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns whether it
    /// exited successfully in time.
    pub fn term(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        false
    }

    /// Resident memory in KiB (VmRSS), if readable.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// CPU seconds used so far (user + system), if readable.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds (user + system) of a process.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Runs `ferrule-aggregator inspect --data DIR` and parses its JSON.
pub fn inspect(data: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(bin("ferrule-aggregator")?)
        .args(["inspect", "--data"])
        .arg(data)
        .output()?;
    if !out.status.success() {
        bail!("inspect failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `GET path` over plain HTTP/1.1; the body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string()))
}

/// The value of one series in a Prometheus text exposition (`name` or
/// `name{labels}` exactly as rendered).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every series of the metric family `name` (any labels) whose
/// labels contain `with` (`""`: all), in a Prometheus text exposition.
pub fn metric_sum_with(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
                let (labels, v) = r.split_once("} ")?;
                (labels, v)
            } else {
                ("", rest.strip_prefix(' ')?)
            };
            labels
                .contains(with)
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The sum of every series of `name` in an exposition (counters over their
/// labels), 0 if it has none.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            rest.rsplit(' ').next()?.trim().parse::<f64>().ok()
        })
        .map(|v| v as u64)
        .sum()
}

/// Polls `f` every 200 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `[kafka]` section for an aggregator configuration (append it to
/// [`aggregator_toml`]'s `extra`, after any other section): batches go to `topic`
/// on `brokers`; `more` holds further keys of the section, one per line
/// (`message_timeout_ms = 60000`), and may end with `[kafka.properties]`.
pub fn kafka_section(brokers: &str, topic: &str, more: &str) -> String {
    format!("[kafka]\nbrokers = {brokers:?}\ntopic = {topic:?}\n{more}\n")
}

/// Removes ANSI escape sequences, for logs written by older builds or by a
/// process whose stderr was a terminal.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) {
                    break;
                }
            }
        }
    }
    out
}

/// Bytes of every file under `dir`, recursively (0 if it cannot be read): how big
/// a spool or a log directory has grown.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_handed_out_are_never_handed_out_again() {
        let mut got: Vec<u16> = (0..50).map(|_| free_tcp_port().unwrap()).collect();
        got.extend((0..50).map(|_| free_udp_port().unwrap()));
        let n = got.len();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), n);
    }
}
