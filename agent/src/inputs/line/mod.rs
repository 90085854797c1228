//! Influx line protocol over TCP and UDP: what Telegraf's `outputs.socket_writer`
//! and `outputs.influxdb` (UDP) and many site scripts speak.
//!
//! Each field of a line becomes one sample of the sensor the configured
//! [`template`] names (default `{measurement}/{field}`), stamped with the line's
//! timestamp (exact nanoseconds in the configured precision) or, without one, the
//! time the bytes were received; quality is always good. Floats, integers (`i`),
//! unsigned integers (`u`) and booleans (1.0 / 0.0) are numbers; string fields are
//! not, and are counted as `string_field` and skipped.
//!
//! Bad data is counted per reason and never stops the input: a malformed line
//! (`bad_line`, `bad_field`, `bad_timestamp`, `line_too_long`) is skipped and the
//! other lines of the same read or datagram are kept; a field whose name is
//! unusable (`bad_sensor_name`, `missing_tag`, `too_many_sensors`) is skipped and
//! the other fields of its line are kept.
//!
//! Invariants (memory stays bounded whatever the senders do):
//! - TCP: at most `max_connections` connections (more are closed at once and
//!   counted as `too_many_connections`); each holds one 8 KiB read buffer, at most
//!   `max_line_bytes` of an incomplete line, and the samples of one read.
//! - Backpressure: a connection awaits the send of the samples of one read before
//!   it reads again, so when the spool blocks, the kernel's socket buffers fill and
//!   TCP flow control slows the sender; nothing queues in the agent.
//! - UDP has no flow control: while a send waits, the socket is not read and the
//!   kernel drops datagrams beyond its receive buffer (visible in
//!   `/proc/net/udp` drops and `netstat -su`, not in this input's counters). Use
//!   TCP where loss matters.
//! - At most `max_sensors` distinct sensors are created by one input, so a sender
//!   putting a counter in a tag cannot grow the catalog without bound.

pub mod parse;
pub mod split;
pub mod template;

use super::{now_ns, InputContext};
use ferrule_config::Invalid;
use ferrule_telemetry::Gauge;
use ferrule_wire::{Quality, SensorId, SensorKind, SensorName, Series, MAX_UNIT_BYTES};
use parse::{parse_line, Precision};
use serde::Deserialize;
use split::{Piece, Splitter};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use template::{MissingTag, Template};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Every reason this input counts in `ferrule_agent_input_errors_total`,
/// published at 0 when it starts so `rate()` and alerts have a series before
/// the first error.
pub const ERROR_REASONS: &[&str] = &[
    "accept_failed",
    "bad_config",
    "bind_failed",
    "catalog_error",
    "connection_error",
    "too_many_connections",
    "line_too_long",
    "string_field",
    "missing_tag",
    "bad_sensor_name",
    "too_many_sensors",
    "bad_line",
    "bad_field",
    "bad_timestamp",
];

/// Bytes read from a TCP connection at a time: also bounds the samples one send
/// carries (every field takes at least 4 bytes: `a=1,`).
const READ_BYTES: usize = 8 * 1024;
/// Largest UDP datagram (65 507 bytes of IPv4 payload) fits.
const DATAGRAM_BYTES: usize = 64 * 1024;
/// Wait between attempts to bind a listen address that is taken.
const REBIND_EVERY: Duration = Duration::from_secs(5);

/// `[[inputs.line]]`: one listener for Influx line protocol, on TCP, UDP or both.
///
/// ```toml
/// [[inputs.line]]
/// name = "telegraf"
/// listen_tcp = "127.0.0.1:8094"
/// listen_udp = "127.0.0.1:8089"
/// precision = "ns"
/// sensor_name = "{tag:host}/{measurement}/{field}"
/// units = { usage_idle = "%", "mem/used" = "B" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    /// Input name, for counters and logs.
    pub name: String,
    /// TCP address to listen on (newline-separated lines, any number per
    /// connection). At least one of `listen_tcp` and `listen_udp` is required.
    #[serde(default)]
    pub listen_tcp: Option<SocketAddr>,
    /// UDP address to listen on (one or more newline-separated lines per datagram).
    #[serde(default)]
    pub listen_udp: Option<SocketAddr>,
    /// Unit of the timestamps senders write: `ns`, `us`, `ms` or `s`. Default `ns`.
    #[serde(default)]
    pub precision: Precision,
    /// Sensor name template; see [`template`]: `{measurement}`, `{field}` and
    /// `{tag:KEY}` between literal text. Default `{measurement}/{field}`.
    #[serde(default = "d_sensor_name")]
    pub sensor_name: String,
    /// Unit of sensors `units` does not name. Default none (`""`).
    #[serde(default)]
    pub unit: String,
    /// Units by `"measurement/field"` or by field key alone (the first match in
    /// that order wins). Applies when the sensor is first created. Default empty.
    #[serde(default)]
    pub units: BTreeMap<String, String>,
    /// Longest line accepted, bytes (newline excluded); longer lines are counted as
    /// `line_too_long` and skipped. Default 65536.
    #[serde(default = "d_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Most TCP connections at once; more are closed and counted. Default 64.
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    /// Most distinct sensors this input creates; fields of further sensors are
    /// counted as `too_many_sensors` and skipped. Default 10000.
    #[serde(default = "d_max_sensors")]
    pub max_sensors: usize,
}

fn d_sensor_name() -> String {
    "{measurement}/{field}".into()
}
fn d_max_line_bytes() -> usize {
    64 * 1024
}
fn d_max_connections() -> usize {
    64
}
fn d_max_sensors() -> usize {
    10_000
}

impl LineConfig {
    /// Semantic checks `check-config` reports with the line of `key`.
    pub fn validate(&self, key: &str, bad: &mut Vec<Invalid>) {
        if self.name.is_empty() {
            bad.push(Invalid::new(format!("{key}.name"), "must not be empty"));
        }
        if self.listen_tcp.is_none() && self.listen_udp.is_none() {
            bad.push(Invalid::new(
                format!("{key}.listen_tcp"),
                "set listen_tcp, listen_udp or both",
            ));
        }
        if let Err(e) = Template::parse(&self.sensor_name) {
            bad.push(Invalid::new(format!("{key}.sensor_name"), e.to_string()));
        }
        if !(64..=16 << 20).contains(&self.max_line_bytes) {
            bad.push(Invalid::new(
                format!("{key}.max_line_bytes"),
                "must be 64..=16777216",
            ));
        }
        if !(1..=10_000).contains(&self.max_connections) {
            bad.push(Invalid::new(
                format!("{key}.max_connections"),
                "must be 1..=10000",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_sensors) {
            bad.push(Invalid::new(
                format!("{key}.max_sensors"),
                "must be 1..=1000000",
            ));
        }
        if self.unit.len() > MAX_UNIT_BYTES {
            bad.push(Invalid::new(
                format!("{key}.unit"),
                format!("at most {MAX_UNIT_BYTES} bytes"),
            ));
        }
        for (field, unit) in &self.units {
            if unit.len() > MAX_UNIT_BYTES {
                bad.push(Invalid::new(
                    format!("{key}.units.{field}"),
                    format!("at most {MAX_UNIT_BYTES} bytes"),
                ));
            }
        }
    }
}

/// What every task of one input shares.
struct Shared {
    cfg: LineConfig,
    template: Template,
    /// Every sensor this input created, by name: bounds `max_sensors`.
    sensors: Mutex<HashMap<String, SensorId>>,
}

/// Runs the input until shutdown: binds the configured addresses (retrying every
/// few seconds while one is taken, counted as `bind_failed`; UDP first, so once
/// TCP accepts, both are up), then serves them.
pub async fn run(cfg: LineConfig, ctx: InputContext) {
    let template = match Template::parse(&cfg.sensor_name) {
        Ok(t) => t,
        Err(e) => {
            // check-config rejects this; a config built in code may not have run it.
            ctx.bad("bad_config", format!("sensor_name: {e}"));
            return;
        }
    };
    let shared = Arc::new(Shared {
        cfg,
        template,
        sensors: Mutex::default(),
    });
    let mut tasks = JoinSet::new();
    if let Some(addr) = shared.cfg.listen_udp {
        let Some(sock) = bind(&ctx, addr, UdpSocket::bind).await else {
            return;
        };
        tracing::info!(input = ctx.name(), %addr, "line protocol: listening on UDP");
        tasks.spawn(serve_udp(sock, shared.clone(), ctx.clone()));
    }
    if let Some(addr) = shared.cfg.listen_tcp {
        let Some(listener) = bind(&ctx, addr, TcpListener::bind).await else {
            tasks.shutdown().await;
            return;
        };
        tracing::info!(input = ctx.name(), %addr, "line protocol: listening on TCP");
        tasks.spawn(serve_tcp(listener, shared.clone(), ctx.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

/// Binds `addr` with `f`, retrying until it works; `None` once the agent stops.
async fn bind<T, F, Fut>(ctx: &InputContext, addr: SocketAddr, f: F) -> Option<T>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    let mut stop = ctx.shutdown();
    loop {
        match f(addr).await {
            Ok(s) => return Some(s),
            Err(e) => ctx.bad("bind_failed", format!("binding {addr}: {e}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(REBIND_EVERY) => {}
            _ = stopped(&mut stop) => return None,
        }
    }
}

/// Completes once the agent stops (or nobody can tell us to stop any more).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts connections until shutdown, then waits for their tasks.
async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, ctx: InputContext) {
    let permits = Arc::new(Semaphore::new(shared.cfg.max_connections));
    let open = ctx.registry().gauge(
        "ferrule_agent_line_connections_open",
        "Open TCP connections of each line protocol input",
        &[("input", ctx.name())],
    );
    let accepted_total = ctx.registry().counter(
        "ferrule_agent_line_connections_total",
        "TCP connections accepted by each line protocol input (refused ones are errors)",
        &[("input", ctx.name())],
    );
    let mut stop = ctx.shutdown();
    let mut conns = JoinSet::new();
    loop {
        // Reap finished connection tasks so the set stays small.
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => break,
        };
        match accepted {
            Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let conn = Conn {
                        _permit: permit,
                        open: open.clone(),
                    };
                    open.add(1);
                    accepted_total.inc();
                    conns.spawn(serve_conn(stream, peer, conn, shared.clone(), ctx.clone()));
                }
                Err(_) => {
                    // Dropping the stream closes it: the sender sees the refusal.
                    ctx.bad(
                        "too_many_connections",
                        format!(
                            "closed the connection from {peer}: max_connections = {} reached",
                            shared.cfg.max_connections
                        ),
                    );
                }
            },
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                ctx.bad("accept_failed", e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    while conns.join_next().await.is_some() {}
}

/// A connection's slot: gives the permit back and counts the connection closed
/// when the task ends, however it ends.
struct Conn {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.add(-1);
    }
}

/// Reads one connection line by line until it closes or the agent stops.
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    _conn: Conn,
    shared: Arc<Shared>,
    ctx: InputContext,
) {
    let mut stop = ctx.shutdown();
    let mut buf = vec![0u8; READ_BYTES];
    let mut split = Splitter::new(shared.cfg.max_line_bytes);
    let mut col = Collector::new(shared, peer);
    loop {
        tokio::select! {
            r = stream.readable() => if let Err(e) = r {
                ctx.bad("connection_error", format!("{peer}: {e}"));
                break;
            },
            _ = stopped(&mut stop) => break,
        }
        let n = match stream.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                ctx.bad("connection_error", format!("{peer}: {e}"));
                break;
            }
        };
        let now = now_ns();
        if n == 0 {
            split.finish(|p| col.piece(p, now, &ctx));
            col.flush(&ctx, &mut stop).await;
            break;
        }
        split.push(&buf[..n], |p| col.piece(p, now, &ctx));
        // Backpressure: nothing more is read until these samples are taken.
        if !col.flush(&ctx, &mut stop).await {
            break;
        }
    }
}

/// Reads datagrams until shutdown; each holds whole lines.
async fn serve_udp(sock: UdpSocket, shared: Arc<Shared>, ctx: InputContext) {
    let mut stop = ctx.shutdown();
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    let max = shared.cfg.max_line_bytes;
    let mut col = Collector::new(shared, SocketAddr::from(([0, 0, 0, 0], 0)));
    loop {
        let received = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            _ = stopped(&mut stop) => break,
        };
        let (n, peer) = match received {
            Ok(r) => r,
            Err(e) => {
                ctx.bad("connection_error", format!("UDP receive: {e}"));
                continue;
            }
        };
        col.peer = peer;
        let now = now_ns();
        for line in buf[..n].split(|c| *c == b'\n') {
            if line.len() > max {
                col.piece(Piece::TooLong, now, &ctx);
            } else {
                col.piece(Piece::Line(line), now, &ctx);
            }
        }
        // While this waits the socket is not read: the kernel drops what overflows.
        if !col.flush(&ctx, &mut stop).await {
            break;
        }
    }
}

/// Turns the lines of one connection (or of the UDP socket) into series.
struct Collector {
    shared: Arc<Shared>,
    /// Who sent the lines being collected (for log details).
    peer: SocketAddr,
    /// This task's view of `shared.sensors`, read without a lock.
    ids: HashMap<String, SensorId>,
    /// Scratch buffer for rendered names.
    name: String,
    out: Vec<Series>,
    index: HashMap<SensorId, usize>,
}

impl Collector {
    fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
        Self {
            shared,
            peer,
            ids: HashMap::new(),
            name: String::new(),
            out: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Adds the samples of one piece of input received at `recv_ns`.
    fn piece(&mut self, piece: Piece<'_>, recv_ns: i64, ctx: &InputContext) {
        let line = match piece {
            Piece::Line(l) => l,
            Piece::TooLong => {
                ctx.bad(
                    "line_too_long",
                    format!(
                        "{}: skipped a line over max_line_bytes = {}",
                        self.peer, self.shared.cfg.max_line_bytes
                    ),
                );
                return;
            }
        };
        let point = match parse_line(line, self.shared.cfg.precision) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                ctx.bad(e.reason(), format!("{}: {e}", self.peer));
                return;
            }
        };
        let ts = point.timestamp_ns.unwrap_or(recv_ns);
        for (key, value) in &point.fields {
            let Some(v) = value.as_f64() else {
                ctx.bad(
                    "string_field",
                    format!(
                        "{}: {}: field {key:?} is a string, not a number; skipped",
                        self.peer, point.measurement
                    ),
                );
                continue;
            };
            let shared = &self.shared;
            if let Err(MissingTag(t)) =
                shared
                    .template
                    .render(&point.measurement, key, |k| point.tag(k), &mut self.name)
            {
                ctx.bad(
                    "missing_tag",
                    format!(
                        "{}: {}: no tag {t:?} for sensor_name {:?}; field {key:?} skipped",
                        self.peer, point.measurement, shared.cfg.sensor_name
                    ),
                );
                continue;
            }
            let Some(id) = self.sensor(&point.measurement, key, ctx) else {
                continue;
            };
            let slot = *self.index.entry(id).or_insert_with(|| {
                self.out.push(Series::new(id));
                self.out.len() - 1
            });
            self.out[slot].push(ts, v, Quality::Good);
        }
    }

    /// The id of the sensor named in `self.name`, creating it if this input may.
    fn sensor(&mut self, measurement: &str, field: &str, ctx: &InputContext) -> Option<SensorId> {
        if let Some(id) = self.ids.get(&self.name) {
            return Some(*id);
        }
        if let Err(e) = SensorName::new(self.name.as_str()) {
            ctx.bad(
                "bad_sensor_name",
                format!("{}: {:?}: {e}", self.peer, self.name),
            );
            return None;
        }
        let cfg = &self.shared.cfg;
        let mut sensors = self
            .shared
            .sensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let id = match sensors.get(&self.name) {
            Some(id) => *id,
            None if sensors.len() >= cfg.max_sensors => {
                drop(sensors);
                ctx.bad(
                    "too_many_sensors",
                    format!(
                        "{}: {:?} would exceed max_sensors = {}; skipped",
                        self.peer, self.name, cfg.max_sensors
                    ),
                );
                return None;
            }
            None => {
                let unit = cfg
                    .units
                    .get(&format!("{measurement}/{field}"))
                    .or_else(|| cfg.units.get(field))
                    .unwrap_or(&cfg.unit);
                // Registering saves the catalog (fsync): `sensor` keeps it off the
                // async worker.
                let id = match ctx.sensor(&self.name, unit, SensorKind::Gauge) {
                    Ok(id) => id,
                    Err(e) => {
                        drop(sensors);
                        ctx.bad("catalog_error", format!("{:?}: {e:#}", self.name));
                        return None;
                    }
                };
                sensors.insert(self.name.clone(), id);
                id
            }
        };
        self.ids.insert(self.name.clone(), id);
        Some(id)
    }

    /// Sends what was collected, waiting while the queue is full. False once the
    /// agent stops.
    async fn flush(&mut self, ctx: &InputContext, stop: &mut watch::Receiver<bool>) -> bool {
        if self.out.is_empty() {
            return !*stop.borrow();
        }
        self.index.clear();
        let series = std::mem::take(&mut self.out);
        tokio::select! {
            biased;
            ok = ctx.send(series) => ok,
            _ = stopped(stop) => false,
        }
    }
}
