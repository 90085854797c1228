//! Modbus TCP polling: one task per configured device reads its register map every
//! `poll_interval_ms` and sends one sample per point.
//!
//! The pure parts are [`map`] (points, byte and word orders, scaling, decoding) and
//! [`plan`] (merging the map into as few read requests as the protocol allows);
//! this module is the driver around them: connection, timeouts, counters.
//!
//! Behaviour and invariants:
//! - Sensors are registered once, before the first poll, and the map is merged
//!   into reads ([`plan::plan_reads`]); `ferrule_agent_modbus_planned_reads{input}`
//!   shows how many, and every poll sends those reads
//!   (`ferrule_agent_modbus_requests_total{input}`) unless the device is
//!   unreachable, in which case the poll stops early.
//! - A merged read the device refuses with exception 0x02 (illegal data
//!   address, typically for an unmapped address the merge bridged) is split in
//!   the same poll until the good points are read
//!   ([`plan::AdaptivePlan`], `ferrule_agent_modbus_split_reads_total{input}`);
//!   the split plan is kept, and the merged one probed again every
//!   [`plan::REPROBE_EVERY`]. A point whose own address is refused is counted
//!   once (reason `exception`) and not read until a re-probe finds it answers.
//! - Modbus carries no timestamps: every sample of one poll carries the agent's
//!   clock at the arrival of that poll's first successful response, so the points
//!   of a device line up in time. A successful read gives quality `Good`; a float
//!   register holding NaN or an infinity (how many meters say "not available") is
//!   sent as read, with quality `Bad`.
//! - Failures never invent values: the points of a read that failed get no sample
//!   for that poll, and the failure is counted once per read in
//!   `ferrule_agent_input_errors_total{input, reason}` with reason `exception`
//!   (the detail names the exception code), `timeout`, `connect` (unreachable, or
//!   the connection dropped), `protocol` (a malformed or mismatched answer) or
//!   `decode` (fewer registers than asked). Not sending NaN/`Bad` placeholders
//!   is deliberate: a device down for hours would otherwise fill the spool and
//!   the uplink with one placeholder per point per poll, and a gap plus a counter
//!   says the same thing.
//! - Each read has its own `timeout_ms`. After a timeout or a lost connection the
//!   connection is dropped (a late answer would otherwise be taken for the next
//!   read's) and made again once in the same poll, so one read a device ignores
//!   costs that read only; a second such failure, or a failed connect, ends the
//!   poll. A poll that got nothing and lost its connection delays the next
//!   connection attempt with exponential backoff (0.5 s doubling to 30 s, with
//!   jitter); any successful read resets it.
//! - A device only ever delays its own task: every device is its own task and
//!   every wait is bounded by `timeout_ms`.
//! - Backpressure: a poll's samples are sent before the next poll starts, and the
//!   poll interval skips the ticks missed while waiting, so a blocked spool slows
//!   polling down instead of queueing polls.

pub mod map;
pub mod plan;

/// Every reason this input counts in `ferrule_agent_input_errors_total`,
/// published at 0 when it starts so `rate()` and alerts have a series before
/// the first error.
pub const ERROR_REASONS: &[&str] = &[
    "exception",
    "timeout",
    "connect",
    "protocol",
    "decode",
    "config",
    "sensor",
];

use super::{now_ns, InputContext};
use crate::backoff::Backoff;
use ferrule_config::Invalid;
use ferrule_telemetry::Counter;
use ferrule_wire::{Quality, SensorId, SensorKind, SensorName, Series, MAX_UNIT_BYTES};
use map::{Kind, Order, Point, Scaling, ValueType};
use plan::{AdaptivePlan, Limits, Read, Refusal, MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_modbus::client::{self, Client as _};
use tokio_modbus::{ExceptionCode, Slave};

/// First delay before reconnecting to a device that stopped answering.
const RECONNECT_INITIAL: Duration = Duration::from_millis(500);
/// Longest delay between connection attempts to an unreachable device.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Connection-level failures (timeouts, lost connections) after which a poll gives up.
const FAILURES_PER_POLL: u32 = 2;
/// Sensor names listed in one error detail before "and N more".
const NAMES_IN_DETAIL: usize = 4;

/// `[[inputs.modbus]]`: one Modbus TCP device (or one unit behind a gateway) and
/// its register map.
///
/// ```toml
/// [[inputs.modbus]]
/// name = "meter-1"
/// host = "192.168.10.21"
/// poll_interval_ms = 1000
/// [[inputs.modbus.registers]]
/// sensor = "feeder-1/meter/va"
/// kind = "input"
/// address = 0
/// type = "f32"
/// unit = "V"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// Input name, for counters and logs.
    pub name: String,
    /// Device (or gateway) host name or IP address.
    pub host: String,
    /// TCP port. Default 502.
    #[serde(default = "d_port")]
    pub port: u16,
    /// Modbus unit id (slave id): the device behind a gateway, often ignored by
    /// devices that speak TCP themselves. Default 1.
    #[serde(default = "d_unit_id")]
    pub unit_id: u8,
    /// Time between polls, milliseconds. Default 1000.
    #[serde(default = "d_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Longest wait for a connection or for the answer to one read, milliseconds.
    /// Default 1000.
    #[serde(default = "d_timeout_ms")]
    pub timeout_ms: u64,
    /// Byte order within each register for this device's points that set none:
    /// `"big"` or `"little"`. Default `"big"` (the Modbus convention).
    #[serde(default)]
    pub byte_order: Order,
    /// Register order of multi-register values for points that set none: `"big"`
    /// (most significant register first, "ABCD") or `"little"` ("CDAB").
    /// Default `"big"`.
    #[serde(default)]
    pub word_order: Order,
    /// Most consecutive unused addresses a read may span to merge neighbouring
    /// points into one request; 0 merges only adjacent points. A device that
    /// refuses a merged read for an unmapped address in it (exception 0x02) gets
    /// smaller reads automatically, so lowering this is only needed to save the
    /// split's few extra requests at start and at each re-probe. Default 8.
    #[serde(default = "d_max_gap_addresses")]
    pub max_gap_addresses: u16,
    /// Most registers in one read, 4 to 125. Default 125 (the protocol limit);
    /// lower it for devices that accept less.
    #[serde(default = "d_max_registers_per_read")]
    pub max_registers_per_read: u16,
    /// Most coils or discrete inputs in one read, 1 to 2000. Default 2000 (the
    /// protocol limit).
    #[serde(default = "d_max_bits_per_read")]
    pub max_bits_per_read: u16,
    /// The register map: one entry per sensor. At least one.
    #[serde(default)]
    pub registers: Vec<RegisterConfig>,
}

fn d_port() -> u16 {
    502
}
fn d_unit_id() -> u8 {
    1
}
fn d_poll_interval_ms() -> u64 {
    1000
}
fn d_timeout_ms() -> u64 {
    1000
}
fn d_max_gap_addresses() -> u16 {
    8
}
fn d_max_registers_per_read() -> u16 {
    MAX_REGISTERS_PER_READ
}
fn d_max_bits_per_read() -> u16 {
    MAX_BITS_PER_READ
}
fn d_scale() -> f64 {
    1.0
}

/// `[[inputs.modbus.registers]]`: one point of the register map, read as one sensor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// The sensor's full name (ASCII letters, digits and `_ . : / -`).
    pub sensor: SensorName,
    /// Which table: `"holding"`, `"input"`, `"coil"` or `"discrete"`.
    pub kind: Kind,
    /// Protocol address, counted from 0. A manual's "40001" (Modicon numbering) is
    /// holding register 0, "30001" input register 0.
    pub address: u16,
    /// `"u16"`, `"i16"`, `"u32"`, `"i32"`, `"u64"`, `"i64"`, `"f32"`, `"f64"` for
    /// registers, `"bool"` for coils and discrete inputs. Default `"u16"` for
    /// registers, `"bool"` for bits.
    #[serde(rename = "type", default)]
    pub ty: Option<ValueType>,
    /// Byte order within each register. Default: the device's `byte_order`.
    #[serde(default)]
    pub byte_order: Option<Order>,
    /// Register order of a 32- or 64-bit value (ignored for 16-bit ones). Default:
    /// the device's `word_order`.
    #[serde(default)]
    pub word_order: Option<Order>,
    /// The value is `raw * scale + offset`. Default 1. Decimal scales (`0.1`,
    /// `0.01`, ...) divide by the power of ten, giving the nearest double.
    #[serde(default = "d_scale")]
    pub scale: f64,
    /// Added after scaling. Default 0.
    #[serde(default)]
    pub offset: f64,
    /// Unit of the scaled value (`V`, `kWh`), at most 32 bytes. Default none.
    #[serde(default)]
    pub unit: String,
    /// `"gauge"`, `"counter"` (monotonic totals such as energy) or `"state"`.
    /// Default `"gauge"` for registers, `"state"` for coils and discrete inputs.
    #[serde(default)]
    pub sensor_kind: Option<SensorKindConfig>,
}

/// How consumers aggregate a sensor (`ferrule_wire::SensorKind`, spelled for TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorKindConfig {
    /// An instantaneous reading.
    Gauge,
    /// A monotonically increasing total.
    Counter,
    /// A discrete state.
    State,
}

impl RegisterConfig {
    /// The checked point this entry describes, with the device's default orders.
    pub fn point(&self, device: &ModbusConfig) -> Result<Point, map::PointError> {
        Point::new(
            self.kind,
            self.address,
            self.ty.unwrap_or(ValueType::default_for(self.kind)),
            self.byte_order.unwrap_or(device.byte_order),
            self.word_order.unwrap_or(device.word_order),
            Scaling::new(self.scale, self.offset),
        )
    }

    /// The sensor kind registered in the catalog.
    pub fn sensor_kind(&self) -> SensorKind {
        match self.sensor_kind {
            Some(SensorKindConfig::Gauge) => SensorKind::Gauge,
            Some(SensorKindConfig::Counter) => SensorKind::Counter,
            Some(SensorKindConfig::State) => SensorKind::State,
            None if self.kind.is_bits() => SensorKind::State,
            None => SensorKind::Gauge,
        }
    }
}

impl ModbusConfig {
    /// Semantic checks `check-config` reports with the line of `key` (this
    /// device's key, e.g. `inputs.modbus[0]`).
    pub fn validate(&self, key: &str, bad: &mut Vec<Invalid>) {
        let mut err =
            |field: &str, msg: String| bad.push(Invalid::new(format!("{key}.{field}"), msg));
        if self.name.is_empty() {
            err("name", "must not be empty".into());
        }
        if self.host.is_empty() {
            err("host", "must name the device, e.g. \"192.168.1.20\"".into());
        }
        if self.port == 0 {
            err("port", "must be 1..=65535".into());
        }
        if self.poll_interval_ms == 0 {
            err("poll_interval_ms", "must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            err("timeout_ms", "must be at least 1".into());
        }
        if !(4..=MAX_REGISTERS_PER_READ).contains(&self.max_registers_per_read) {
            err(
                "max_registers_per_read",
                format!("must be 4..={MAX_REGISTERS_PER_READ} (an f64 needs 4)"),
            );
        }
        if !(1..=MAX_BITS_PER_READ).contains(&self.max_bits_per_read) {
            err(
                "max_bits_per_read",
                format!("must be 1..={MAX_BITS_PER_READ}"),
            );
        }
        if self.registers.is_empty() {
            err(
                "registers",
                "needs at least one [[inputs.modbus.registers]] entry".into(),
            );
        }
        let mut names = HashSet::new();
        for (i, r) in self.registers.iter().enumerate() {
            let mut err = |field: &str, msg: String| err(&format!("registers[{i}].{field}"), msg);
            match r.point(self) {
                Ok(_) => {}
                Err(e @ map::PointError::TypeDoesNotFit { .. }) => err("type", e.to_string()),
                Err(e) => err("address", e.to_string()),
            }
            if !r.scale.is_finite() || r.scale == 0.0 {
                err("scale", "must be a finite number other than 0".into());
            }
            if !r.offset.is_finite() {
                err("offset", "must be a finite number".into());
            }
            if r.unit.len() > MAX_UNIT_BYTES {
                err("unit", format!("must be at most {MAX_UNIT_BYTES} bytes"));
            }
            if !names.insert(r.sensor.as_str()) {
                err(
                    "sensor",
                    format!("{} is already read from this device", r.sensor),
                );
            }
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_registers: self.max_registers_per_read,
            max_bits: self.max_bits_per_read,
            max_gap: self.max_gap_addresses,
        }
    }
}

/// Runs the input until shutdown: registers the map's sensors, then polls the
/// device. A config that fails [`ModbusConfig::validate`] is counted (reason
/// `config`) and the input does not start; other inputs are unaffected.
pub async fn run(cfg: ModbusConfig, ctx: InputContext) {
    let mut invalid = Vec::new();
    cfg.validate(
        &format!("inputs.modbus[name = {:?}]", cfg.name),
        &mut invalid,
    );
    if !invalid.is_empty() {
        for i in &invalid {
            ctx.bad("config", format!("{}: {}", i.key, i.message));
        }
        tracing::error!(
            input = ctx.name(),
            "modbus input not started: invalid config"
        );
        return;
    }
    let device = Device::new(cfg, &ctx);
    device.run(&ctx).await;
}

/// What a successful read returned.
enum Data {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// Why a read or connection attempt failed; `reason()` is the counter label.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("exception 0x{:02X} ({code})", u8::from(*code))]
    Exception { code: ExceptionCode },
    #[error("connection lost: {0}")]
    Lost(io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("asked for {asked}, got {got}")]
    Short { asked: u16, got: usize },
}

impl PollError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Connect(_) | Self::Lost(_) => "connect",
            Self::Timeout(_) => "timeout",
            Self::Exception { .. } => "exception",
            Self::Protocol(_) => "protocol",
            Self::Short { .. } => "decode",
        }
    }

    /// True when the connection can no longer be trusted and must be made again.
    fn drops_connection(&self) -> bool {
        !matches!(self, Self::Exception { .. } | Self::Short { .. })
    }
}

/// One device's polling state.
struct Device {
    cfg: ModbusConfig,
    points: Vec<Point>,
    sensors: Vec<(SensorId, SensorName)>,
    plan: AdaptivePlan,
    timeout: Duration,
    requests: Counter,
    splits: Counter,
    planned_reads: ferrule_telemetry::Gauge,
    polls: Counter,
    backoff: Backoff,
    /// No connection attempt before this (backing off from an unreachable device).
    retry_at: Option<Instant>,
    conn: Option<client::Context>,
}

impl Device {
    /// Registers the sensors and plans the reads.
    fn new(cfg: ModbusConfig, ctx: &InputContext) -> Self {
        let mut points = Vec::with_capacity(cfg.registers.len());
        let mut sensors = Vec::with_capacity(cfg.registers.len());
        for r in &cfg.registers {
            // Validated by `run`; a failure here (the catalog cannot be saved) costs
            // this point only.
            let point = match r.point(&cfg) {
                Ok(p) => p,
                Err(e) => {
                    ctx.bad("config", format!("{}: {e}", r.sensor));
                    continue;
                }
            };
            match ctx.sensor(r.sensor.as_str(), &r.unit, r.sensor_kind()) {
                Ok(id) => {
                    points.push(point);
                    sensors.push((id, r.sensor.clone()));
                }
                Err(e) => ctx.bad("sensor", format!("{}: {e:#}", r.sensor)),
            }
        }
        let plan = AdaptivePlan::new(&points, cfg.limits());
        let labels = [("input", ctx.name())];
        let registry = ctx.registry();
        let planned_reads = registry.gauge(
            "ferrule_agent_modbus_planned_reads",
            "Read requests per Modbus poll, as planned from the register map (less the addresses the device refuses)",
            &labels,
        );
        planned_reads.set(i64::try_from(plan.reads().len()).unwrap_or(i64::MAX));
        let splits = registry.counter(
            "ferrule_agent_modbus_split_reads_total",
            "Merged Modbus reads the device refused with IllegalDataAddress, split to read the good points",
            &labels,
        );
        let requests = registry.counter(
            "ferrule_agent_modbus_requests_total",
            "Modbus read requests sent",
            &labels,
        );
        let polls = registry.counter(
            "ferrule_agent_modbus_polls_total",
            "Modbus polls started",
            &labels,
        );
        let seed = ctx
            .name()
            .bytes()
            .fold(now_ns() as u64, |h, b| h.rotate_left(5) ^ u64::from(b));
        tracing::info!(
            input = ctx.name(),
            host = %cfg.host,
            port = cfg.port,
            unit_id = cfg.unit_id,
            points = points.len(),
            reads = plan.reads().len(),
            "modbus input polling"
        );
        Self {
            timeout: Duration::from_millis(cfg.timeout_ms),
            cfg,
            points,
            sensors,
            plan,
            requests,
            splits,
            planned_reads,
            polls,
            backoff: Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX, seed),
            retry_at: None,
            conn: None,
        }
    }

    async fn run(mut self, ctx: &InputContext) {
        let mut shutdown = ctx.shutdown();
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.poll_interval_ms));
        // After a slow poll or a wait on the spool, carry on at the interval
        // instead of catching up with a burst.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = shutdown.changed() => {
                    // A dropped sender means the agent is gone too.
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            }
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            let series = self.poll(ctx).await;
            if !ctx.send(series).await {
                break;
            }
        }
        if let Some(mut conn) = self.conn.take() {
            let _ = timeout(self.timeout, conn.disconnect()).await;
        }
    }

    /// One poll: every planned read, in order. Returns one series per point read.
    async fn poll(&mut self, ctx: &InputContext) -> Vec<Series> {
        self.polls.inc();
        let mut stamp: Option<i64> = None;
        let mut series = Vec::with_capacity(self.points.len());
        let mut failures = 0;
        let mut any_ok = false;
        if self.plan.start_poll(Instant::now().into_std()) {
            tracing::debug!(input = ctx.name(), "modbus: probing the merged reads again");
        }
        // Reads refused for an illegal address are split or dropped in place
        // (the plan tells how), so the index advances only past a read that is
        // still in the plan.
        let mut r = 0;
        while r < self.plan.reads().len() {
            let result = match self.conn.as_mut() {
                Some(conn) => {
                    self.requests.inc();
                    read(conn, &self.plan.reads()[r], self.timeout).await
                }
                // Owned arguments: the future must not borrow `self`, whose client
                // is `Send` but not `Sync`.
                None => match connect(
                    self.cfg.host.clone(),
                    self.cfg.port,
                    self.cfg.unit_id,
                    self.timeout,
                )
                .await
                {
                    Ok(mut conn) => {
                        self.requests.inc();
                        let res = read(&mut conn, &self.plan.reads()[r], self.timeout).await;
                        self.conn = Some(conn);
                        res
                    }
                    Err(e) => {
                        self.report(ctx, &e, r);
                        break;
                    }
                },
            };
            match result {
                Ok(data) => {
                    any_ok = true;
                    let t = *stamp.get_or_insert_with(now_ns);
                    self.decode(ctx, r, &data, t, &mut series);
                    self.plan.answered(r);
                }
                Err(PollError::Exception {
                    code: ExceptionCode::IllegalDataAddress,
                }) => {
                    // The device answers, so the connection is fine.
                    any_ok = true;
                    self.refused(ctx, r);
                    continue;
                }
                Err(e) => {
                    self.report(ctx, &e, r);
                    if e.drops_connection() {
                        self.conn = None;
                        failures += 1;
                        if failures >= FAILURES_PER_POLL {
                            break;
                        }
                    }
                }
            }
            r += 1;
        }
        self.planned_reads
            .set(i64::try_from(self.plan.reads().len()).unwrap_or(i64::MAX));
        if any_ok {
            if self.retry_at.take().is_some() {
                tracing::info!(input = ctx.name(), host = %self.cfg.host, "modbus device answers again");
            }
            self.backoff.reset();
        } else if self.conn.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        }
        series
    }

    /// Read `r` was refused with `IllegalDataAddress`: splits it to read its
    /// points apart, or drops a point whose own address is refused (counted
    /// once, reason `exception`, until it answers again after a re-probe).
    fn refused(&mut self, ctx: &InputContext, r: usize) {
        let what = self.describe(r);
        match self
            .plan
            .refused(r, &self.points, Instant::now().into_std())
        {
            Refusal::Split => {
                self.splits.inc();
                tracing::debug!(input = ctx.name(), read = %what, "modbus device refused a merged read (illegal address): reading its points in smaller reads");
            }
            Refusal::Dropped { newly_bad } => {
                for i in newly_bad {
                    let name = self.sensors.get(i).map_or("?", |(_, n)| n.as_str());
                    ctx.bad(
                        "exception",
                        format!(
                            "{what}: exception 0x02 (illegal data address) for {name}'s own address; \
                             it is not read again until a re-probe in {:?}",
                            plan::REPROBE_EVERY
                        ),
                    );
                }
            }
        }
    }

    /// Appends one sample per point of read `r`.
    fn decode(&self, ctx: &InputContext, r: usize, data: &Data, t: i64, out: &mut Vec<Series>) {
        let read = &self.plan.reads()[r];
        for &i in &read.points {
            let point = &self.points[i];
            // The planner puts every point of a read inside it, so this cannot underflow.
            let offset = usize::from(point.address().saturating_sub(read.start));
            let value = match data {
                Data::Registers(words) => words
                    .get(offset..)
                    .ok_or(map::DecodeError::Length {
                        ty: point.value_type(),
                        needed: point.width(),
                        got: 0,
                    })
                    .and_then(|w| map::decode(w, point)),
                Data::Bits(bits) => match bits.get(offset) {
                    Some(b) => map::decode_bit(*b, point),
                    None => Err(map::DecodeError::Length {
                        ty: point.value_type(),
                        needed: 1,
                        got: 0,
                    }),
                },
            };
            let (id, name) = &self.sensors[i];
            match value {
                Ok(v) => {
                    let quality = if v.is_finite() {
                        Quality::Good
                    } else {
                        Quality::Bad
                    };
                    let mut s = Series::with_capacity(*id, 1);
                    s.push(t, v, quality);
                    out.push(s);
                }
                // Unreachable after the read's length check; counted if it ever is.
                Err(e) => ctx.bad("decode", format!("{}: {name}: {e}", self.describe(r))),
            }
        }
    }

    fn report(&self, ctx: &InputContext, e: &PollError, r: usize) {
        let read = &self.plan.reads()[r];
        let mut detail = format!("{}: {e}; no value this poll for ", self.describe(r));
        for (n, &i) in read.points.iter().enumerate() {
            if n == NAMES_IN_DETAIL {
                let _ = write!(detail, " and {} more", read.points.len() - n);
                break;
            }
            if n > 0 {
                detail.push_str(", ");
            }
            detail.push_str(self.sensors[i].1.as_str());
        }
        ctx.bad(e.reason(), detail);
    }

    /// `host:port unit 1 holding 0..31 (fn 0x03)`
    fn describe(&self, r: usize) -> String {
        let read = &self.plan.reads()[r];
        format!(
            "{}:{} unit {} {} {}..{} (fn 0x{:02X})",
            self.cfg.host,
            self.cfg.port,
            self.cfg.unit_id,
            read.kind,
            read.start,
            read.end(),
            read.kind.function_code()
        )
    }
}

/// Connects to `host:port` (every address it resolves to, in turn) within `limit`.
async fn connect(
    host: String,
    port: u16,
    unit_id: u8,
    limit: Duration,
) -> Result<client::Context, PollError> {
    let attempt = async {
        let mut last = None;
        for a in tokio::net::lookup_host((host.as_str(), port)).await? {
            match TcpStream::connect(a).await {
                Ok(stream) => {
                    // Requests are small and answered one at a time: do not let
                    // Nagle hold them back.
                    let _ = stream.set_nodelay(true);
                    return Ok(client::tcp::attach_slave(stream, Slave(unit_id)));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host name has no address")))
    };
    match timeout(limit, attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(PollError::Connect(e)),
        Err(_) => Err(PollError::Connect(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection within {limit:?}"),
        ))),
    }
}

/// Sends one planned read and waits at most `limit` for its answer.
async fn read(conn: &mut client::Context, r: &Read, limit: Duration) -> Result<Data, PollError> {
    use tokio_modbus::{Request, Response};
    let request = match r.kind {
        Kind::Coil => Request::ReadCoils(r.start, r.count),
        Kind::Discrete => Request::ReadDiscreteInputs(r.start, r.count),
        Kind::Holding => Request::ReadHoldingRegisters(r.start, r.count),
        Kind::Input => Request::ReadInputRegisters(r.start, r.count),
    };
    // `call` rather than `read_holding_registers` and friends: those assert on the
    // answer's length, and a device's answer is outside data.
    let answer = match timeout(limit, conn.call(request)).await {
        Err(_) => return Err(PollError::Timeout(limit)),
        Ok(Err(tokio_modbus::Error::Transport(e))) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(PollError::Protocol(e.to_string()))
        }
        Ok(Err(tokio_modbus::Error::Transport(e))) => return Err(PollError::Lost(e)),
        Ok(Err(tokio_modbus::Error::Protocol(e))) => {
            return Err(PollError::Protocol(e.to_string()))
        }
        Ok(Ok(Err(code))) => return Err(PollError::Exception { code }),
        Ok(Ok(Ok(answer))) => answer,
    };
    let data = match (r.kind, answer) {
        (Kind::Coil, Response::ReadCoils(bits))
        | (Kind::Discrete, Response::ReadDiscreteInputs(bits)) => Data::Bits(bits),
        (Kind::Holding, Response::ReadHoldingRegisters(words))
        | (Kind::Input, Response::ReadInputRegisters(words)) => Data::Registers(words),
        (_, other) => {
            return Err(PollError::Protocol(format!(
                "answer {other:?} does not match the request"
            )))
        }
    };
    // Coils come padded to whole bytes, so more is fine; fewer is not.
    let got = match &data {
        Data::Registers(w) => w.len(),
        Data::Bits(b) => b.len(),
    };
    if got < usize::from(r.count) {
        return Err(PollError::Short {
            asked: r.count,
            got,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<ModbusConfig, String> {
        #[derive(Deserialize)]
        struct Wrap {
            inputs: Inputs,
        }
        #[derive(Deserialize)]
        struct Inputs {
            modbus: Vec<ModbusConfig>,
        }
        let loaded: ferrule_config::Loaded<Wrap> =
            ferrule_config::load_str(toml_text, "test.toml", std::iter::empty(), "FERRULE")
                .map_err(|e| e.to_string())?;
        loaded
            .value
            .inputs
            .modbus
            .into_iter()
            .next()
            .ok_or_else(|| "no device".to_string())
    }

    fn problems(cfg: &ModbusConfig) -> Vec<String> {
        let mut bad = Vec::new();
        cfg.validate("inputs.modbus[0]", &mut bad);
        bad.into_iter()
            .map(|i| format!("{}: {}", i.key, i.message))
            .collect()
    }

    #[test]
    fn defaults() {
        let cfg = parse(
            r#"
            [[inputs.modbus]]
            name = "m"
            host = "10.0.0.2"
            [[inputs.modbus.registers]]
            sensor = "a/b"
            kind = "holding"
            address = 3
            "#,
        )
        .unwrap();
        assert_eq!(cfg.port, 502);
        assert_eq!(cfg.unit_id, 1);
        assert_eq!(cfg.poll_interval_ms, 1000);
        assert_eq!(cfg.timeout_ms, 1000);
        assert_eq!(cfg.limits(), Limits::default());
        let p = cfg.registers[0].point(&cfg).unwrap();
        assert_eq!(p, Point::plain(Kind::Holding, 3, ValueType::U16).unwrap());
        assert_eq!(cfg.registers[0].sensor_kind(), SensorKind::Gauge);
        assert!(problems(&cfg).is_empty());
    }

    #[test]
    fn device_orders_apply_unless_a_point_overrides_them() {
        let cfg = parse(
            r#"
            [[inputs.modbus]]
            name = "m"
            host = "h"
            word_order = "little"
            [[inputs.modbus.registers]]
            sensor = "a"
            kind = "holding"
            address = 0
            type = "f32"
            [[inputs.modbus.registers]]
            sensor = "b"
            kind = "holding"
            address = 2
            type = "f32"
            word_order = "big"
            byte_order = "little"
            [[inputs.modbus.registers]]
            sensor = "c"
            kind = "coil"
            address = 0
            "#,
        )
        .unwrap();
        let f = 123.456f32.to_bits();
        let (hi, lo) = ((f >> 16) as u16, f as u16);
        let a = cfg.registers[0].point(&cfg).unwrap();
        assert_eq!(map::decode(&[lo, hi], &a).unwrap(), f64::from(123.456f32));
        let b = cfg.registers[1].point(&cfg).unwrap();
        assert_eq!(
            map::decode(&[hi.swap_bytes(), lo.swap_bytes()], &b).unwrap(),
            f64::from(123.456f32)
        );
        assert_eq!(cfg.registers[2].sensor_kind(), SensorKind::State);
        assert_eq!(
            cfg.registers[2].point(&cfg).unwrap().value_type(),
            ValueType::Bool
        );
    }

    #[test]
    fn validation_names_each_bad_key() {
        let cfg = parse(
            r#"
            [[inputs.modbus]]
            name = "m"
            host = "h"
            poll_interval_ms = 0
            max_registers_per_read = 2
            [[inputs.modbus.registers]]
            sensor = "a"
            kind = "coil"
            address = 0
            type = "f32"
            [[inputs.modbus.registers]]
            sensor = "a"
            kind = "holding"
            address = 65534
            type = "f64"
            scale = 0.0
            [[inputs.modbus.registers]]
            sensor = "c"
            kind = "holding"
            address = 0
            type = "u32"
            [[inputs.modbus.registers]]
            sensor = "d"
            kind = "holding"
            address = 1
            type = "f64"
            "#,
        )
        .unwrap();
        let got = problems(&cfg);
        let want = [
            "inputs.modbus[0].poll_interval_ms: must be at least 1",
            "inputs.modbus[0].max_registers_per_read: must be 4..=125 (an f64 needs 4)",
            "inputs.modbus[0].registers[0].type: type f32 does not fit a coil (bits are bool, registers are not)",
            "inputs.modbus[0].registers[1].address: f64 at 65534 runs past address 65535",
            "inputs.modbus[0].registers[1].scale: must be a finite number other than 0",
            "inputs.modbus[0].registers[1].sensor: a is already read from this device",
        ];
        // Overlapping points of different sizes (c and d) are fine.
        assert_eq!(got, want);
        let empty = parse("[[inputs.modbus]]\nname = \"m\"\nhost = \"h\"\n").unwrap();
        assert_eq!(
            problems(&empty),
            ["inputs.modbus[0].registers: needs at least one [[inputs.modbus.registers]] entry"]
        );
    }

    #[test]
    fn parse_errors_name_the_line() {
        for (text, want) in [
            (
                "sensor = \"bad name\"\nkind = \"coil\"\naddress = 0",
                "test.toml:5",
            ),
            (
                "sensor = \"a\"\nkind = \"coils\"\naddress = 0",
                "test.toml:6",
            ),
            (
                "sensor = \"a\"\nkind = \"coil\"\naddress = 70000",
                "test.toml:7",
            ),
            (
                "sensor = \"a\"\nkind = \"coil\"\naddress = 0\nbyte_order = \"middle\"",
                "test.toml:8",
            ),
            (
                "sensor = \"a\"\nkind = \"coil\"\naddress = 0\nscal = 2",
                "test.toml:8",
            ),
        ] {
            let doc = format!(
                "[[inputs.modbus]]\nname = \"m\"\nhost = \"h\"\n[[inputs.modbus.registers]]\n{text}\n"
            );
            let err = parse(&doc).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
