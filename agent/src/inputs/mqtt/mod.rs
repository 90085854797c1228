//! MQTT subscription: samples from a site broker, forwarded without losing what
//! the broker accepted.
//!
//! The input subscribes to topic filters ([`filter`]), names each message's
//! sensor from its topic ([`template`]), decodes its payload ([`payload`]) and
//! sends the samples to the batcher.
//!
//! # Delivery: QoS 1, persistent session, ack after hand-over
//!
//! - Subscriptions are QoS 1 under a fixed `client_id` with `clean_session =
//!   false`, so the broker keeps the subscriptions and queues messages for the
//!   agent while it is away (agent restart, network loss, broker restart with
//!   persistence on). Every (re)connect subscribes again (so a changed config
//!   takes effect); the retained messages the broker replays for that are
//!   skipped unless `accept_retained`.
//! - Acks are manual: a message's PUBACK is written only once the chunk holding
//!   its samples is durable in the spool (fsynced), which the batcher reports
//!   through a [`Durability`] ticket. Until then the broker holds the message
//!   and redelivers it on the next connection if the agent dies, even by
//!   SIGKILL or a power cut. Delivery is therefore at least once: a message can
//!   arrive twice (after a crash between the fsync and the ack, or a connection
//!   lost while acks were written), never zero times.
//! - So that the broker's in-flight window never waits on the batch window
//!   (`batch.max_delay_ms`), a chunk that brings the messages awaiting
//!   durability to half the window (`broker_max_inflight`) asks the batcher to
//!   cut and fsync at once.
//! - PUBACKs are written straight into the connection's buffer and flushed
//!   together, not queued one by one through rumqttc's request channel (which
//!   costs a `writev` per ack: at 5 000 messages/s that was a fifth of the
//!   agent's CPU). A QoS 1 PUBACK carries no client state, so nothing in
//!   rumqttc's bookkeeping is bypassed; a QoS 2 message (the broker should
//!   never send one on a QoS 1 subscription) still goes through the request
//!   channel.
//! - The acks of everything that became durable at once are written together,
//!   with one flush. Acks of an earlier connection are dropped, never written
//!   on a new one (the broker redelivers those).
//! - A message larger than `max_packet_bytes` is counted (`oversized`), acked
//!   and dropped. The input reads packets up to 16 times that size (MQTT
//!   3.1.1 cannot refuse a single message); a bigger one breaks the
//!   connection, is redelivered on every reconnect and blocks the input: it is
//!   counted as `oversized_blocking` with a line saying what to do (cap it at
//!   the broker with Mosquitto's `message_size_limit`).
//!
//! # Reading in rounds
//!
//! At thousands of messages per second a wake-up per socket read costs more
//! than the messages. After a round (everything readable, decoded, handed
//! over, acks written) the input leaves the socket alone for as long as the
//! broker needs to send about half its window at the current arrival rate, at
//! most `ack_delay_ms`; the next read takes in everything that gathered. The
//! rate is averaged over rounds, so a window-limited burst shortens the pauses
//! instead of stalling. Samples wait at most `ack_delay_ms` longer for it.
//! - A message that is bad data (not a number, bad JSON, a missing field, a
//!   topic that gives no valid sensor name, no matching subscription) is still
//!   acked: redelivering it would never make it better, and an unacked message
//!   holds one of the broker's in-flight slots until the next reconnect.
//!   Every such message is counted per reason via [`InputContext::bad`].
//!
//! # Backpressure
//!
//! One task owns the rumqttc event loop and does everything in sequence: poll
//! for events, collect the messages the last read brought in (at most
//! [`MAX_BATCH_MESSAGES`]), decode them, `ctx.send` them, ack them. While
//! `ctx.send` waits (the spool is full under `full_policy = "block"`) the event
//! loop is not polled: the socket is not read, TCP's window closes, and the
//! broker stops sending once its in-flight window of unacked messages is full.
//! Everything else queues at the broker, which is where it belongs (mind the
//! broker's own limits: Mosquitto's `max_queued_messages`, default 1000 per
//! client, drops QoS 1 messages beyond it; raise it on site brokers).
//!
//! Before a hand-over that would wait (the batcher's queue is full), the acks
//! of what was handed over already are written, so a long block, a crash
//! during it or a broker restart does not redeliver it.
//!
//! Keep-alive: rumqttc pings only from inside `poll`, so a block longer than
//! about 1.5 x `keep_alive_secs` makes the broker drop the connection. That is
//! deliberate and safe: the session stays, and whatever was read on that
//! connection without its ack getting through (the chunk that blocked, what
//! the broker's in-flight window had put in the socket) is redelivered after
//! the reconnect that follows the block, so those messages arrive twice;
//! nothing acked before the block repeats. Polling during the block to keep the connection alive would mean
//! reading (and buffering) messages that cannot be handed over, which is what
//! backpressure must not do.
//!
//! # Invariants
//!
//! - A message is acked only after its samples are durable in the spool, or
//!   after it was found to be bad data (in arrival order, so after every
//!   message before it is durable); shutting down while a chunk waits leaves
//!   that chunk unacked (the broker keeps it).
//! - PUBACKs go out in the order the messages arrived (MQTT 3.1.1 4.6).
//! - Memory is bounded: one batch of messages (at most [`MAX_BATCH_MESSAGES`]
//!   plus what the broker's in-flight window lets in while acks are written),
//!   a sensor cache of at most `max_sensors` names, packets of at most
//!   `max_packet_bytes`.

pub mod filter;
pub mod payload;
mod rawjson;

/// Every reason this input counts in `ferrule_agent_input_errors_total`,
/// published at 0 when it starts so `rate()` and alerts have a series before
/// the first error.
pub const ERROR_REASONS: &[&str] = &[
    "catalog",
    "config",
    "connect",
    "connection_lost",
    "subscribe",
    "too_many_sensors",
    "oversized_blocking",
    "ack",
    "oversized",
    "no_subscription",
    "bad_sensor_name",
    "not_a_number",
    "bad_json",
    "missing_field",
    "bad_timestamp",
    "bad_quality",
];
pub mod template;
pub mod tls;

use super::{now_ns, InputContext};
use crate::backoff::Backoff;
use crate::batcher::Durability;
use ferrule_config::Invalid;
use ferrule_telemetry::{Counter, Gauge};
use ferrule_wire::{SensorId, SensorKind, SensorName, Series, MAX_UNIT_BYTES};
use filter::TopicFilter;
use payload::{FieldPath, Format, JsonFields, TimeUnit};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, Packet,
    PubAck, Publish, QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use template::NameTemplate;
use tokio::sync::watch;
use tokio::time::Instant;

/// Most messages decoded and handed over as one chunk. Messages are taken
/// only as far as the last socket read already brought them in, so a chunk
/// is usually much smaller; this caps the ack queue.
pub const MAX_BATCH_MESSAGES: usize = 256;

/// Room in rumqttc's request channel: subscribe and disconnect requests, and
/// the acks of QoS 2 messages (QoS 1 acks bypass it). If it were ever full, an
/// ack would be counted (`reason = "ack"`) and its message redelivered on the
/// next connection.
const REQUEST_CHANNEL: usize = 4 * MAX_BATCH_MESSAGES;

/// Longest wait for a chunk's acks to reach the socket. A broker that does not
/// read them for that long is treated as gone: the connection is dropped and
/// the messages are redelivered on the next one.
const ACK_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Shorter pauses between read rounds are not worth a timer.
const MIN_READ_PAUSE: Duration = Duration::from_millis(1);

/// Longest wait on shutdown for queued acks and the DISCONNECT to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection that lasted this long resets the reconnect backoff. One that
/// drops sooner (another client took the session over, the broker refuses
/// after CONNACK) keeps backing off instead of flapping at the initial delay.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// Configuration of one MQTT subscription input: `[[inputs.mqtt]]`.
///
/// ```toml
/// [[inputs.mqtt]]
/// name = "site-broker"
/// host = "127.0.0.1"
/// client_id = "ferrule-rtu-3"
///
/// [[inputs.mqtt.subscriptions]]
/// topic = "plant/+/temp/+"
/// sensor = "{1}/temp/{3}"
/// unit = "degC"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Input name, for counters and logs.
    pub name: String,
    /// Broker host name or IP address. With TLS, the name its certificate must carry.
    pub host: String,
    /// Broker port. Default 1883, or 8883 with `tls`.
    #[serde(default)]
    pub port: Option<u16>,
    /// MQTT client id. Required, and must stay the same across restarts and be
    /// unique per broker: the broker keeps this agent's session (subscriptions
    /// and queued messages) under it, and a second client with the same id
    /// takes the session over.
    pub client_id: String,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (needs `username`): literal, `env:VAR` to read it from the
    /// environment variable `VAR`, or `file:/path` to read it from a file
    /// (systemd credentials), keeping it out of the config file.
    #[serde(default)]
    pub password: Option<Password>,
    /// TLS to the broker; none for plain TCP.
    #[serde(default)]
    pub tls: Option<MqttTls>,
    /// MQTT keep-alive, seconds (1..=65535). The broker drops a silent
    /// connection after 1.5 times this. Default 30.
    #[serde(default = "d_keep_alive")]
    pub keep_alive_secs: u64,
    /// Give up a connection attempt (TCP, TLS, CONNACK) after this many seconds. Default 10.
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// First reconnect delay, milliseconds; doubles up to the maximum, with jitter. Default 500.
    #[serde(default = "d_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay, milliseconds. Default 30000.
    #[serde(default = "d_backoff_max")]
    pub backoff_max_ms: u64,
    /// Largest MQTT message accepted, bytes: a bigger one is counted
    /// (`oversized`), acked and dropped. Packets up to 16 times this are read
    /// to do so; a packet bigger still breaks the connection (MQTT 3.1.1
    /// cannot refuse a single message) and blocks the input, counted as
    /// `oversized_blocking`: cap messages at the broker (Mosquitto's
    /// `message_size_limit`). Default 1048576 (1 MiB).
    #[serde(default = "d_max_packet")]
    pub max_packet_bytes: usize,
    /// Most distinct sensor names this input registers; messages for further
    /// names are counted (`too_many_sensors`) and dropped, so a publisher
    /// spraying topics cannot grow the catalog without bound. Default 10000.
    #[serde(default = "d_max_sensors")]
    pub max_sensors: usize,
    /// Take retained messages the broker replays on (re)subscribing. Off by
    /// default: the broker replays them on every reconnect, so a stale value
    /// would be recorded again at the receive time (counted in
    /// `ferrule_agent_mqtt_retained_ignored_total`). Turn on if publishers
    /// send source timestamps and only retain. Default false.
    #[serde(default)]
    pub accept_retained: bool,
    /// The broker's limit of unacknowledged QoS 1 messages in flight to one
    /// client: Mosquitto's `max_inflight_messages` (its default is 20), EMQX's
    /// `max_inflight`. Once half this many wait for the spool, the batch is cut
    /// and fsynced at once so their acks go out, and the broker never stalls on
    /// the agent. Set it to the broker's value. Default 20.
    #[serde(default = "d_broker_max_inflight")]
    pub broker_max_inflight: u16,
    /// Longest the socket is left alone between read rounds, milliseconds (0:
    /// read at every wake-up). Each read costs a system call and a wake-up; at
    /// thousands of messages per second, taking several chunks' worth at once
    /// is most of what the input saves. Acks go out when the spool has made
    /// their messages durable either way. Default 10.
    #[serde(default = "d_ack_delay")]
    pub ack_delay_ms: u64,
    /// What to subscribe to and how to read it. At least one.
    pub subscriptions: Vec<Subscription>,
}

fn d_keep_alive() -> u64 {
    30
}
fn d_connect_timeout() -> u64 {
    10
}
fn d_backoff_initial() -> u64 {
    500
}
fn d_backoff_max() -> u64 {
    30_000
}
fn d_max_packet() -> usize {
    1 << 20
}
fn d_max_sensors() -> usize {
    10_000
}
fn d_broker_max_inflight() -> u16 {
    20
}
fn d_ack_delay() -> u64 {
    10
}

/// A password as configured: never printed by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    /// The password itself: the literal, or the value `env:VAR` or `file:/path` points at.
    pub fn resolve(&self) -> Result<String, String> {
        if let Some(var) = self.0.strip_prefix("env:") {
            std::env::var(var).map_err(|e| format!("password from env:{var}: {e}"))
        } else if let Some(path) = self.0.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("password from file:{path}: {e}"))
        } else {
            Ok(self.0.clone())
        }
    }

    fn check(&self) -> Result<(), &'static str> {
        match (self.0.strip_prefix("env:"), self.0.strip_prefix("file:")) {
            (Some(""), _) => Err("env: needs a variable name (env:MQTT_PASSWORD)"),
            (_, Some("")) => Err("file: needs a path (file:/run/credentials/...)"),
            _ => Ok(()),
        }
    }
}

/// `[inputs.mqtt.tls]`: the broker's CA and an optional client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// The CA bundle the broker's certificate must chain to (PEM). Required.
    pub ca: PathBuf,
    /// Client certificate chain (PEM), for brokers that require one; needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM); needs `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// What a sensor measures, as written in the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An instantaneous reading. The default.
    #[default]
    Gauge,
    /// A monotonically increasing total.
    Counter,
    /// A discrete state.
    State,
}

impl From<Kind> for SensorKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Gauge => SensorKind::Gauge,
            Kind::Counter => SensorKind::Counter,
            Kind::State => SensorKind::State,
        }
    }
}

/// How a payload is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A number as text. The default.
    #[default]
    Number,
    /// A JSON object.
    Json,
    /// A JSON array of objects, one sample each.
    JsonArray,
}

/// `[[inputs.mqtt.subscriptions]]`: one topic filter and how its messages
/// become samples.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// MQTT topic filter; `+` matches one level, a trailing `#` the rest.
    pub topic: String,
    /// Sensor name template: `{0}`, `{1}`, ... are topic levels (from 0), `{#}`
    /// the levels the filter's `#` matched, joined with `/`. See [`template`].
    pub sensor: String,
    /// Unit of the values (`V`, `degC`). Default empty.
    #[serde(default)]
    pub unit: String,
    /// `gauge`, `counter` or `state`. Default `gauge`.
    #[serde(default)]
    pub kind: Kind,
    /// `number`, `json` or `json_array`. Default `number`.
    #[serde(default)]
    pub payload: PayloadFormat,
    /// JSON formats: dotted path of the value. Default `value`.
    #[serde(default)]
    pub value_field: Option<String>,
    /// JSON formats: dotted path of the source timestamp; none for the receive time.
    #[serde(default)]
    pub timestamp_field: Option<String>,
    /// How the timestamp is written: `s`, `ms`, `us`, `ns` (since the Unix
    /// epoch) or `rfc3339`. Required with `timestamp_field`: a guessed unit
    /// would silently put samples in the wrong decade.
    #[serde(default)]
    pub timestamp_unit: Option<TimeUnit>,
    /// JSON formats: dotted path of a quality flag (`good`, `uncertain`, `bad`
    /// or 0, 1, 2); none for always good.
    #[serde(default)]
    pub quality_field: Option<String>,
}

/// A subscription checked and compiled: what the input routes messages with.
#[derive(Debug, Clone)]
pub struct Route {
    /// The topic filter.
    pub filter: TopicFilter,
    /// The sensor name template.
    pub template: NameTemplate,
    /// The payload format.
    pub format: Format,
    /// Unit of the sensors.
    pub unit: String,
    /// Kind of the sensors.
    pub kind: SensorKind,
}

impl Subscription {
    /// Checks the subscription and compiles it. An error names the offending
    /// key (relative to the subscription) and what is wrong.
    pub fn compile(&self) -> Result<Route, (&'static str, String)> {
        let filter = TopicFilter::parse(&self.topic).map_err(|e| ("topic", e.to_string()))?;
        let template = NameTemplate::parse(&self.sensor).map_err(|e| ("sensor", e.to_string()))?;
        template
            .check_against(&filter)
            .map_err(|e| ("sensor", e.to_string()))?;
        if self.unit.len() > MAX_UNIT_BYTES {
            return Err(("unit", format!("at most {MAX_UNIT_BYTES} bytes")));
        }
        let field = |key: &'static str, v: &str| FieldPath::parse(v).map_err(|e| (key, e));
        let json = match self.payload {
            PayloadFormat::Number => {
                for (key, set) in [
                    ("value_field", self.value_field.is_some()),
                    ("timestamp_field", self.timestamp_field.is_some()),
                    ("timestamp_unit", self.timestamp_unit.is_some()),
                    ("quality_field", self.quality_field.is_some()),
                ] {
                    if set {
                        return Err((key, "only for payload = \"json\" or \"json_array\"".into()));
                    }
                }
                None
            }
            PayloadFormat::Json | PayloadFormat::JsonArray => {
                let timestamp = match (&self.timestamp_field, self.timestamp_unit) {
                    (Some(f), Some(u)) => Some((field("timestamp_field", f)?, u)),
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err((
                            "timestamp_field",
                            "needs timestamp_unit (s, ms, us, ns or rfc3339)".into(),
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(("timestamp_unit", "needs timestamp_field".into()))
                    }
                };
                Some(JsonFields {
                    value: field(
                        "value_field",
                        self.value_field.as_deref().unwrap_or("value"),
                    )?,
                    timestamp,
                    quality: self
                        .quality_field
                        .as_deref()
                        .map(|q| field("quality_field", q))
                        .transpose()?,
                })
            }
        };
        let format = match (self.payload, json) {
            (PayloadFormat::Json, Some(f)) => Format::Json(f),
            (PayloadFormat::JsonArray, Some(f)) => Format::JsonArray(f),
            _ => Format::Number,
        };
        Ok(Route {
            filter,
            template,
            format,
            unit: self.unit.clone(),
            kind: self.kind.into(),
        })
    }
}

impl MqttConfig {
    /// Semantic checks `check-config` reports with the line of `key` (this
    /// input's key, e.g. `inputs.mqtt[0]`). Reads the TLS files, so a broken
    /// certificate is reported before the agent starts.
    pub fn validate(&self, key: &str, bad: &mut Vec<Invalid>) {
        let mut err = |k: &str, m: &str| bad.push(Invalid::new(format!("{key}.{k}"), m));
        if self.name.is_empty() {
            err("name", "must not be empty");
        }
        if self.host.is_empty() {
            err("host", "must not be empty");
        }
        if self.port == Some(0) {
            err("port", "must be 1..=65535");
        }
        if self.client_id.is_empty() || self.client_id.len() > 256 {
            err(
                "client_id",
                "must be 1 to 256 bytes, stable and unique per broker",
            );
        }
        match (&self.username, &self.password) {
            (None, Some(_)) => err("password", "needs username"),
            (_, Some(p)) => {
                if let Err(m) = p.check() {
                    err("password", m);
                }
            }
            _ => {}
        }
        if !(1..=65_535).contains(&self.keep_alive_secs) {
            err("keep_alive_secs", "must be 1..=65535");
        }
        if self.connect_timeout_secs == 0 {
            err("connect_timeout_secs", "must be at least 1");
        }
        if self.backoff_initial_ms == 0 || self.backoff_initial_ms > self.backoff_max_ms {
            err(
                "backoff_initial_ms",
                "must be at least 1 and at most backoff_max_ms",
            );
        }
        if !(1024..=268_435_455).contains(&self.max_packet_bytes) {
            err("max_packet_bytes", "must be 1024..=268435455");
        }
        if self.max_sensors == 0 {
            err("max_sensors", "must be at least 1");
        }
        if self.broker_max_inflight == 0 {
            err(
                "broker_max_inflight",
                "must be 1..=65535 (the broker's max_inflight_messages)",
            );
        }
        if self.ack_delay_ms > 1000 {
            err("ack_delay_ms", "must be 0..=1000");
        }
        if let Some(t) = &self.tls {
            match (&t.cert, &t.key) {
                (Some(_), None) => err("tls.key", "needed with tls.cert"),
                (None, Some(_)) => err("tls.cert", "needed with tls.key"),
                _ => {}
            }
            let client = t.cert.as_deref().zip(t.key.as_deref());
            if let Err(e) = tls::client_config(&t.ca, client) {
                err("tls", &e.to_string());
            }
        }
        if self.subscriptions.is_empty() {
            err(
                "subscriptions",
                "needs at least one [[inputs.mqtt.subscriptions]]",
            );
        }
        let mut seen = HashMap::new();
        for (i, s) in self.subscriptions.iter().enumerate() {
            if let Err((k, m)) = s.compile() {
                err(&format!("subscriptions[{i}].{k}"), &m);
            }
            if let Some(first) = seen.insert(s.topic.as_str(), i) {
                err(
                    &format!("subscriptions[{i}].topic"),
                    &format!("same filter as subscriptions[{first}]: only the first would be used"),
                );
            }
        }
    }

    fn options(&self) -> Result<MqttOptions, String> {
        // validate() refuses what rumqttc would panic on (an empty client id with
        // a persistent session, a keep-alive under a second); re-check here
        // because run() may be handed a config that skipped check-config.
        if self.client_id.is_empty() {
            return Err("client_id is empty".into());
        }
        let port = self
            .port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 });
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), port);
        o.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(self.keep_alive_secs.clamp(1, 65_535)))
            .set_max_packet_size(read_limit(self.max_packet_bytes), 64 * 1024)
            .set_request_channel_capacity(REQUEST_CHANNEL);
        if let Some(user) = &self.username {
            let pass = match &self.password {
                Some(p) => p.resolve()?,
                None => String::new(),
            };
            o.set_credentials(user.clone(), pass);
        }
        if let Some(t) = &self.tls {
            let client = t.cert.as_deref().zip(t.key.as_deref());
            let cfg = tls::client_config(&t.ca, client).map_err(|e| e.to_string())?;
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(cfg)));
        }
        Ok(o)
    }
}

/// Largest packet read from the broker: 16 times `max_packet_bytes`, within
/// MQTT's own maximum, so a message somewhat over the limit is read, counted and
/// acked instead of breaking the connection on every redelivery.
fn read_limit(max_packet_bytes: usize) -> usize {
    max_packet_bytes
        .max(1024)
        .saturating_mul(16)
        .min(MQTT_MAX_PACKET)
}

/// MQTT's largest remaining length (268 435 455 bytes).
const MQTT_MAX_PACKET: usize = 268_435_455;

/// A message that gives no sample, with the reason it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The `reason` label (`no_subscription`, `bad_sensor_name`).
    pub reason: &'static str,
    /// What to log.
    pub detail: String,
}

/// The first route whose filter matches `topic` (config order: first match
/// wins, so list specific filters before general ones) and the sensor name it
/// gives the topic.
///
/// ```
/// use ferrule_agent::inputs::mqtt::{route, Subscription};
/// let sub: Subscription = serde_json::from_str(
///     r#"{"topic": "plant/+/temp/+", "sensor": "{1}/{3}"}"#).unwrap();
/// let routes = vec![sub.compile().unwrap()];
/// let (_, name) = route(&routes, "plant/boiler/temp/inlet").unwrap();
/// assert_eq!(name.as_str(), "boiler/inlet");
/// assert_eq!(route(&routes, "plant/x").unwrap_err().reason, "no_subscription");
/// ```
pub fn route<'r>(routes: &'r [Route], topic: &str) -> Result<(&'r Route, SensorName), Rejected> {
    let (r, m) = routes
        .iter()
        .find_map(|r| r.filter.matches(topic).map(|m| (r, m)))
        .ok_or_else(|| Rejected {
            reason: "no_subscription",
            detail: format!(
                "topic {topic:?} matches no configured subscription (a filter left in the \
                 broker's session by an earlier config?)"
            ),
        })?;
    let bad_name = |e: &dyn fmt::Display| Rejected {
        reason: "bad_sensor_name",
        detail: format!("topic {topic:?} via {:?}: {e}", r.filter.as_str()),
    };
    let name = r.template.render(&m).map_err(|e| bad_name(&e))?;
    let name = SensorName::new(name).map_err(|e| bad_name(&e))?;
    Ok((r, name))
}

/// The input's own series, beside `ferrule_agent_input_*`.
struct Metrics {
    messages: Counter,
    acks: Counter,
    connects: Counter,
    retained: Counter,
    connected: Gauge,
    subscribed: Gauge,
}

impl Metrics {
    fn new(ctx: &InputContext) -> Self {
        let r = ctx.registry();
        let l = [("input", ctx.name())];
        Self {
            messages: r.counter(
                "ferrule_agent_mqtt_messages_total",
                "MQTT messages received (good or bad)",
                &l,
            ),
            acks: r.counter(
                "ferrule_agent_mqtt_acks_total",
                "PUBACKs written to the broker, each after its message was handed over or found bad",
                &l,
            ),
            connects: r.counter(
                "ferrule_agent_mqtt_connects_total",
                "Connections accepted by the broker",
                &l,
            ),
            retained: r.counter(
                "ferrule_agent_mqtt_retained_ignored_total",
                "Retained messages skipped (accept_retained = false); acked",
                &l,
            ),
            connected: r.gauge(
                "ferrule_agent_mqtt_connected",
                "1 while connected to the broker",
                &l,
            ),
            subscribed: r.gauge(
                "ferrule_agent_mqtt_subscribed",
                "1 once the broker granted every subscription on the current connection",
                &l,
            ),
        }
    }
}

/// The ids of the sensors this input registered, at most `max` of them.
struct Sensors {
    ids: HashMap<SensorName, SensorId>,
    max: usize,
}

impl Sensors {
    /// The id of `name`, registering it in the catalog on first use; `None`
    /// (counted) past `max` sensors or if the catalog cannot be saved.
    fn id(
        &mut self,
        ctx: &InputContext,
        name: SensorName,
        unit: &str,
        kind: SensorKind,
    ) -> Option<SensorId> {
        if let Some(id) = self.ids.get(&name) {
            return Some(*id);
        }
        if self.ids.len() >= self.max {
            ctx.bad(
                "too_many_sensors",
                format!(
                    "{name}: this input already has max_sensors = {} sensors",
                    self.max
                ),
            );
            return None;
        }
        match ctx.sensor(name.as_str(), unit, kind) {
            Ok(id) => {
                self.ids.insert(name, id);
                Some(id)
            }
            Err(e) => {
                ctx.bad("catalog", format!("registering {name}: {e:#}"));
                None
            }
        }
    }
}

/// A message as read, with its receive time.
struct Received {
    publish: Publish,
    at_ns: i64,
}

/// Polls `fut` once: its output if ready now, else `None` (and `fut` is
/// dropped). Dropping a pending `EventLoop::poll` is safe: a socket read that
/// found nothing consumed nothing, and I/O readiness is kept by the reactor,
/// so the next real poll registers its waker and misses nothing.
fn poll_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// The one task that polls the event loop, hands samples over and acks.
struct Driver {
    ctx: InputContext,
    routes: Vec<Route>,
    client: AsyncClient,
    eventloop: EventLoop,
    shutdown: watch::Receiver<bool>,
    backoff: Backoff,
    /// Not before this instant may the event loop try to connect again.
    retry_at: Option<Instant>,
    /// When the current connection was accepted; none while disconnected.
    connected_at: Option<Instant>,
    /// Messages read and not yet handed over.
    batch: Vec<Received>,
    /// Packet ids of QoS 1 messages durable (or found bad) on the current
    /// connection whose PUBACKs are not written yet, in arrival order.
    unacked: Vec<u16>,
    /// Packet ids of QoS 1 messages handed over on the current connection, per
    /// chunk number, waiting for the spool to make the chunk durable.
    awaiting: VecDeque<(u64, Vec<u16>)>,
    awaiting_msgs: usize,
    /// Tells when chunks are durable; chunks sent so far.
    ticket: Arc<Durability>,
    chunks: u64,
    /// What the ticket said when acks were last released.
    released_through: u64,
    max_packet_bytes: usize,
    /// End of the last read round, and the average arrival rate over rounds
    /// (messages/s): they size the pause between rounds.
    last_read: Instant,
    rate: f64,
    /// Write acks once this many wait (half the broker's in-flight window).
    ack_threshold: usize,
    ack_delay: Duration,
    sensors: Sensors,
    /// Topics already routed to a registered sensor: (route index, sensor).
    /// At most twice `max_sensors` entries (cleared when full).
    topics: HashMap<String, (usize, SensorId)>,
    accept_retained: bool,
    metrics: Metrics,
}

/// What the driver waits for next.
enum Wake {
    Event(Result<Event, ConnectionError>),
    Durable,
    Shutdown,
}

/// Runs the input until shutdown. Never returns early on bad data or a broker
/// that is down; a config that cannot be used (a TLS file missing, `env:VAR`
/// unset) is counted as `config` and retried with backoff, since files and
/// credentials may be provisioned after the agent starts.
pub async fn run(cfg: MqttConfig, ctx: InputContext) {
    let mut shutdown = ctx.shutdown();
    let seed = now_ns() as u64
        ^ cfg
            .client_id
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.backoff_initial_ms),
        Duration::from_millis(cfg.backoff_max_ms),
        seed,
    );
    let mut routes = Vec::new();
    for (i, s) in cfg.subscriptions.iter().enumerate() {
        match s.compile() {
            Ok(r) => routes.push(r),
            // check-config reports this at its line; at run time, skip it.
            Err((k, m)) => ctx.bad("config", format!("subscriptions[{i}].{k}: {m}")),
        }
    }
    let options = loop {
        match cfg.options() {
            Ok(o) => break o,
            Err(e) => {
                ctx.bad("config", e);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        }
    };
    backoff.reset();
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CHANNEL);
    let mut net = eventloop.network_options();
    net.set_connection_timeout(cfg.connect_timeout_secs.max(1));
    eventloop.set_network_options(net);
    let metrics = Metrics::new(&ctx);
    tracing::info!(
        input = ctx.name(),
        host = %cfg.host,
        client_id = %cfg.client_id,
        subscriptions = routes.len(),
        "mqtt input starting"
    );
    Driver {
        ctx,
        routes,
        client,
        eventloop,
        shutdown,
        backoff,
        retry_at: None,
        connected_at: None,
        batch: Vec::new(),
        unacked: Vec::new(),
        awaiting: VecDeque::new(),
        awaiting_msgs: 0,
        ticket: Arc::default(),
        chunks: 0,
        released_through: 0,
        max_packet_bytes: cfg.max_packet_bytes,
        last_read: Instant::now(),
        rate: 0.0,
        ack_threshold: usize::from(cfg.broker_max_inflight / 2).max(1),
        ack_delay: Duration::from_millis(cfg.ack_delay_ms),
        sensors: Sensors {
            ids: HashMap::new(),
            max: cfg.max_sensors,
        },
        topics: HashMap::new(),
        accept_retained: cfg.accept_retained,
        metrics,
    }
    .run()
    .await;
}

impl Driver {
    async fn run(mut self) {
        loop {
            let ev = match self.next_event().await {
                Wake::Event(ev) => ev,
                Wake::Durable => {
                    self.release_durable();
                    self.write_acks().await;
                    continue;
                }
                Wake::Shutdown => break,
            };
            self.handle(ev);
            // Take in what is already readable (rumqttc returns at most ten
            // packets per socket read), so one chunk and one ack write serve
            // everything that arrived meanwhile; then hand over.
            while self.batch.len() < MAX_BATCH_MESSAGES && self.eventloop.network.is_some() {
                match poll_now(self.eventloop.poll()) {
                    Some(ev) => self.handle(ev),
                    None => break,
                }
            }
            let read = self.batch.len();
            if !self.batch.is_empty() && !self.flush().await {
                break;
            }
            if let Some(pause) = self.read_pause(read) {
                // Let messages gather: the next read takes them all with one
                // wake-up. The acks go out first, so the broker's whole window
                // is open during the pause.
                self.write_acks().await;
                tokio::select! {
                    biased;
                    _ = self.shutdown.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        self.close().await;
    }

    /// The next event-loop event, or that chunks became durable (their acks are
    /// due), or shutdown. Waits out the reconnect backoff first if the
    /// connection is down.
    async fn next_event(&mut self) -> Wake {
        if self.eventloop.network.is_none() {
            if let Some(at) = self.retry_at.take() {
                tokio::select! {
                    biased;
                    _ = self.shutdown.wait_for(|s| *s) => return Wake::Shutdown,
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
        }
        // Cancelling poll() loses nothing: packets it already parsed stay in
        // rumqttc's state and come out of the next poll, and what was not
        // acked is redelivered by the broker next session.
        // Compared with what the last release saw, so a chunk made durable
        // meanwhile wakes at once.
        let seen = self.released_through;
        let waiting = !self.awaiting.is_empty();
        let ticket = self.ticket.clone();
        tokio::select! {
            biased;
            _ = self.shutdown.wait_for(|s| *s) => Wake::Shutdown,
            _ = ticket.changed(seen), if waiting => Wake::Durable,
            ev = self.eventloop.poll() => Wake::Event(ev),
        }
    }

    fn handle(&mut self, ev: Result<Event, ConnectionError>) {
        match ev {
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                self.metrics.messages.inc();
                self.batch.push(Received {
                    publish,
                    at_ns: now_ns(),
                });
            }
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                // Packet ids of an earlier connection are not acked on this
                // one: the broker redelivers those messages instead.
                self.forget_acks();
                self.connected_at = Some(Instant::now());
                self.metrics.connects.inc();
                self.metrics.connected.set(1);
                tracing::info!(
                    input = self.ctx.name(),
                    session_present = ack.session_present,
                    "connected to the MQTT broker"
                );
                let filters: Vec<SubscribeFilter> = self
                    .routes
                    .iter()
                    .map(|r| SubscribeFilter::new(r.filter.as_str().to_string(), QoS::AtLeastOnce))
                    .collect();
                if let Err(e) = self.client.try_subscribe_many(filters) {
                    self.ctx
                        .bad("subscribe", format!("could not queue SUBSCRIBE: {e}"));
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                let mut all = true;
                for (code, r) in ack.return_codes.iter().zip(&self.routes) {
                    if matches!(code, SubscribeReasonCode::Failure) {
                        all = false;
                        self.ctx.bad(
                            "subscribe",
                            format!(
                                "the broker refused the subscription {:?}",
                                r.filter.as_str()
                            ),
                        );
                    }
                }
                self.metrics.subscribed.set(i64::from(all));
            }
            Ok(Event::Outgoing(Outgoing::PubRec(_))) => self.metrics.acks.inc(),
            Ok(_) => {}
            Err(e) => self.lost(e),
        }
    }

    /// The connection is gone (rumqttc dropped it, or writing acks failed):
    /// count it and schedule the reconnect. Messages whose acks did not get
    /// through are redelivered by the broker on the next connection.
    fn lost(&mut self, e: impl fmt::Display) {
        self.forget_acks();
        let text = e.to_string();
        if text.contains("PayloadSizeLimitExceeded") {
            self.ctx.bad(
                "oversized_blocking",
                format!(
                    "the broker sends a packet over {} bytes (16 x max_packet_bytes), which \
                     MQTT 3.1.1 gives no way to refuse: the broker redelivers it on every \
                     connection and this input gets nothing else. Remove it at the broker, \
                     raise max_packet_bytes, and cap messages there (Mosquitto: \
                     message_size_limit). ({text})",
                    read_limit(self.max_packet_bytes)
                ),
            );
            self.connected_at = None;
            self.metrics.connected.set(0);
            self.metrics.subscribed.set(0);
            self.retry_at = Some(Instant::now() + self.backoff.next_delay());
            return;
        }
        match self.connected_at.take() {
            None => self.ctx.bad("connect", format!("{e}")),
            Some(at) if at.elapsed() < Duration::from_secs(5) => self.ctx.bad(
                "connection_lost",
                format!(
                    "{e} (right after connecting: another client using the same \
                     client_id?)"
                ),
            ),
            Some(at) => {
                if at.elapsed() >= STABLE_CONNECTION {
                    self.backoff.reset();
                }
                self.ctx.bad("connection_lost", format!("{e}"));
            }
        }
        self.metrics.connected.set(0);
        self.metrics.subscribed.set(0);
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
    }

    /// Hands the batch over, its acks waiting for the spool to make it durable.
    /// False once the agent is stopping.
    async fn flush(&mut self) -> bool {
        let batch = std::mem::take(&mut self.batch);
        let series = self.decode(&batch);
        let pkids = self.qos1_ids(&batch);
        if series.is_empty() {
            // Only bad data: acked with what came before it (in arrival
            // order), at once if nothing before it waits for the spool.
            match self.awaiting.back_mut() {
                Some((_, ids)) => {
                    self.awaiting_msgs += pkids.len();
                    ids.extend(pkids);
                }
                None => {
                    self.unacked.extend(pkids);
                    self.write_acks().await;
                }
            }
            return true;
        }
        if self.ctx.would_block() {
            // The hand-over may wait long (spool full): first get the acks of
            // what is durable already out, so a broker restart or a crash
            // meanwhile does not redeliver it.
            self.release_durable();
            self.write_acks().await;
        }
        let n = self.chunks + 1;
        let flush_now = self.awaiting_msgs + pkids.len() >= self.ack_threshold;
        let sent = tokio::select! {
            biased;
            _ = self.shutdown.wait_for(|s| *s) => false,
            ok = self.ctx.send_durable(series, &self.ticket, n, flush_now) => ok,
        };
        if !sent {
            // Not handed over, so not acked: the broker keeps them for the next session.
            return false;
        }
        self.chunks = n;
        if self.eventloop.network.is_some() && !pkids.is_empty() {
            self.awaiting_msgs += pkids.len();
            self.awaiting.push_back((n, pkids));
        }
        self.release_durable();
        self.write_acks().await;
        true
    }

    /// The packet ids of a batch's QoS 1 messages, in arrival order. QoS 2
    /// messages (which a QoS 1 subscription should never bring) are acked
    /// through rumqttc, which keeps their state. Messages read on a connection
    /// that is gone are redelivered on the next one: none.
    fn qos1_ids(&mut self, batch: &[Received]) -> Vec<u16> {
        if self.eventloop.network.is_none() {
            return Vec::new();
        }
        let mut ids = Vec::new();
        for r in batch {
            match r.publish.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => ids.push(r.publish.pkid),
                QoS::ExactlyOnce => {
                    if let Err(e) = self.client.try_ack(&r.publish) {
                        self.ctx.bad(
                            "ack",
                            format!(
                                "could not queue the ack of {:?} (redelivered later): {e}",
                                r.publish.topic
                            ),
                        );
                    }
                }
            }
        }
        ids
    }

    /// Moves the acks of every chunk now durable to the write queue, in order.
    fn release_durable(&mut self) {
        let done = self.ticket.durable_through();
        self.released_through = done;
        while self.awaiting.front().is_some_and(|(n, _)| *n <= done) {
            if let Some((_, ids)) = self.awaiting.pop_front() {
                self.awaiting_msgs -= ids.len();
                self.unacked.extend(ids);
            }
        }
    }

    /// How long to leave the socket alone after a read that brought `read`
    /// messages, if at all. At thousands of messages per second a wake-up per
    /// socket read costs more than the messages themselves, so the input
    /// reads in rounds: the pause lets the broker send about half its
    /// in-flight window (`ack_threshold`) at the current arrival rate, and is
    /// at most `ack_delay_ms`. The rate is an average over rounds, so a burst
    /// the window holds back shortens the next pauses instead of stalling.
    fn read_pause(&mut self, read: usize) -> Option<Duration> {
        let now = Instant::now();
        let dt = now
            .duration_since(self.last_read)
            .as_secs_f64()
            .max(0.000_1);
        self.last_read = now;
        self.rate = 0.7 * self.rate + 0.3 * (read as f64 / dt);
        if read == 0 || self.ack_delay.is_zero() || self.eventloop.network.is_none() {
            return None;
        }
        let pause = Duration::from_secs_f64(self.ack_threshold as f64 / self.rate.max(1.0))
            .min(self.ack_delay);
        (pause >= MIN_READ_PAUSE).then_some(pause)
    }

    /// Drops the queued and awaited acks of a connection that is gone.
    fn forget_acks(&mut self) {
        self.unacked.clear();
        self.awaiting.clear();
        self.awaiting_msgs = 0;
    }

    /// Writes the queued PUBACKs, in arrival order, with one flush.
    async fn write_acks(&mut self) {
        if self.unacked.is_empty() {
            return;
        }
        let Some(network) = self.eventloop.network.as_mut() else {
            self.unacked.clear();
            return;
        };
        let unacked = &self.unacked;
        let write = async {
            for &pkid in unacked {
                network.write(Packet::PubAck(PubAck::new(pkid))).await?;
            }
            network.flush().await
        };
        let failed = match tokio::time::timeout(ACK_WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("writing acks: {e}")),
            Err(_) => Some(format!(
                "writing acks: the broker did not read them within {ACK_WRITE_TIMEOUT:?}"
            )),
        };
        if let Some(e) = failed {
            // As rumqttc does on a failed write: drop the connection, keep the
            // session's pending requests for the next one.
            self.eventloop.clean();
            self.lost(e);
            return;
        }
        self.metrics.acks.add(self.unacked.len() as u64);
        self.unacked.clear();
    }

    /// The samples of a batch, one series per sensor; bad messages are counted.
    fn decode(&mut self, batch: &[Received]) -> Vec<Series> {
        let Driver {
            ctx,
            routes,
            sensors,
            topics,
            metrics,
            accept_retained,
            max_packet_bytes,
            ..
        } = self;
        let mut out: Vec<Series> = Vec::new();
        let mut index: HashMap<SensorId, usize> = HashMap::new();
        for r in batch {
            let p = &r.publish;
            if p.retain && !*accept_retained {
                metrics.retained.inc();
                continue;
            }
            if p.payload.len() > *max_packet_bytes {
                ctx.bad(
                    "oversized",
                    format!(
                        "topic {:?}: a message of {} bytes is over max_packet_bytes = {}; dropped",
                        p.topic,
                        p.payload.len(),
                        max_packet_bytes
                    ),
                );
                continue;
            }
            // A topic seen before: its route and sensor without matching,
            // rendering or validating the name again.
            let cached = topics.get(p.topic.as_str()).copied();
            let (route, name) = match cached {
                Some((i, _)) => (&routes[i], None),
                None => match route(routes, &p.topic) {
                    Ok((r, name)) => (r, Some(name)),
                    Err(rej) => {
                        ctx.bad(rej.reason, rej.detail);
                        continue;
                    }
                },
            };
            let decoded = payload::decode(&route.format, &p.payload, r.at_ns);
            for e in &decoded.errors {
                ctx.bad(e.reason(), format!("topic {:?}: {e}", p.topic));
            }
            if decoded.samples.is_empty() {
                continue;
            }
            let id = match (cached, name) {
                (Some((_, id)), _) => id,
                (None, Some(name)) => {
                    let Some(id) = sensors.id(ctx, name, &route.unit, route.kind) else {
                        continue;
                    };
                    if topics.len() >= 2 * sensors.max {
                        topics.clear();
                    }
                    let i = routes
                        .iter()
                        .position(|x| std::ptr::eq(x, route))
                        .unwrap_or_default();
                    topics.insert(p.topic.clone(), (i, id));
                    id
                }
                (None, None) => continue,
            };
            let i = *index.entry(id).or_insert_with(|| {
                out.push(Series::new(id));
                out.len() - 1
            });
            for s in &decoded.samples {
                out[i].push(s.timestamp_ns, s.value, s.quality);
            }
        }
        out
    }

    /// Writes queued acks and a DISCONNECT (which keeps the session). Messages
    /// read meanwhile are not acked: the broker keeps them for next time.
    async fn close(mut self) {
        // What was handed over is acked before leaving, once durable (the
        // batcher cuts and fsyncs what is left as the agent stops).
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while !self.awaiting.is_empty() && self.eventloop.network.is_some() {
            let seen = self.released_through;
            let ticket = self.ticket.clone();
            if tokio::time::timeout_at(deadline, ticket.changed(seen))
                .await
                .is_err()
            {
                break;
            }
            self.release_durable();
        }
        self.release_durable();
        self.write_acks().await;
        if self.eventloop.network.is_some() {
            let _ = self.client.try_disconnect();
            let deadline = Instant::now() + CLOSE_TIMEOUT;
            loop {
                let ev = tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    ev = self.eventloop.poll() => ev,
                };
                match ev {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(Event::Outgoing(Outgoing::PubAck(_))) => self.metrics.acks.inc(),
                    Ok(_) => {}
                }
            }
        }
        self.metrics.connected.set(0);
        self.metrics.subscribed.set(0);
        tracing::info!(input = self.ctx.name(), "mqtt input stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(json: &str) -> Subscription {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn full(subs: &str) -> MqttConfig {
        let json = format!(
            r#"{{"name": "m", "host": "localhost", "client_id": "c", "subscriptions": [{subs}]}}"#
        );
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn problems(c: &MqttConfig) -> Vec<String> {
        let mut bad = Vec::new();
        c.validate("inputs.mqtt[0]", &mut bad);
        bad.into_iter()
            .map(|i| format!("{}: {}", i.key, i.message))
            .collect()
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = serde_json::from_str::<MqttConfig>(
            r#"{"name": "m", "host": "h", "client_id": "c", "subscriptions": [], "qos": 2}"#,
        );
        assert!(e.is_err());
        let e =
            serde_json::from_str::<Subscription>(r#"{"topic": "a", "sensor": "b", "unitt": "V"}"#);
        assert!(e.is_err());
    }

    #[test]
    fn a_good_config_validates() {
        let c = full(
            r#"{"topic": "plant/+/temp/+", "sensor": "{1}/{3}", "unit": "degC"},
               {"topic": "j/#", "sensor": "j/{#}", "payload": "json", "value_field": "v",
                "timestamp_field": "ts", "timestamp_unit": "ms", "kind": "counter"}"#,
        );
        assert_eq!(problems(&c), Vec::<String>::new());
        assert_eq!(c.keep_alive_secs, 30);
        assert!(c.options().is_ok());
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases = [
            (
                r#"{"topic": "a/#/b", "sensor": "x"}"#,
                "subscriptions[0].topic",
            ),
            (
                r#"{"topic": "a/+", "sensor": "{2}"}"#,
                "subscriptions[0].sensor",
            ),
            (
                r#"{"topic": "a/+", "sensor": "a b"}"#,
                "subscriptions[0].sensor",
            ),
            (
                r#"{"topic": "a", "sensor": "x", "value_field": "v"}"#,
                "subscriptions[0].value_field",
            ),
            (
                r#"{"topic": "a", "sensor": "x", "payload": "json", "timestamp_field": "t"}"#,
                "subscriptions[0].timestamp_field",
            ),
            (
                r#"{"topic": "a", "sensor": "x", "payload": "json", "value_field": "a..b"}"#,
                "subscriptions[0].value_field",
            ),
            (
                r#"{"topic": "a", "sensor": "x"}, {"topic": "a", "sensor": "y"}"#,
                "subscriptions[1].topic",
            ),
        ];
        for (subs, key) in cases {
            let p = problems(&full(subs));
            assert!(
                p.iter()
                    .any(|m| m.starts_with(&format!("inputs.mqtt[0].{key}:"))),
                "{subs}: {p:?}"
            );
        }
        let mut c = full(r#"{"topic": "a", "sensor": "x"}"#);
        c.password = Some(Password("env:".into()));
        c.keep_alive_secs = 0;
        c.client_id.clear();
        c.tls = Some(MqttTls {
            ca: "/nonexistent/ca.pem".into(),
            cert: Some("/x".into()),
            key: None,
        });
        let p = problems(&c).join("\n");
        for key in [
            "password",
            "keep_alive_secs",
            "client_id",
            "tls.key",
            "tls:",
        ] {
            assert!(p.contains(&format!("inputs.mqtt[0].{key}")), "{key}: {p}");
        }
        assert!(c.options().is_err());
        assert!(problems(&full(""))
            .iter()
            .any(|m| m.contains("subscriptions")));
    }

    #[test]
    fn passwords_resolve_and_never_print() {
        let p = Password("hunter2".into());
        assert_eq!(p.resolve(), Ok("hunter2".into()));
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(Password("env:FERRULE_TEST_SURELY_UNSET_VAR".into())
            .resolve()
            .is_err());
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Password(format!("file:{}", f.display())).resolve(),
            Ok("s3cret".into())
        );
    }

    #[test]
    fn routing_picks_the_first_match_and_checks_names() {
        let routes: Vec<Route> = [
            sub(r#"{"topic": "a/special", "sensor": "special"}"#),
            sub(r#"{"topic": "a/+", "sensor": "gen/{1}"}"#),
            sub(r#"{"topic": "deep/#", "sensor": "d/{3}"}"#),
        ]
        .iter()
        .map(|s| s.compile().unwrap_or_else(|e| panic!("{e:?}")))
        .collect();
        let name = |t: &str| route(&routes, t).map(|(_, n)| n.as_str().to_string());
        assert_eq!(name("a/special"), Ok("special".into()));
        assert_eq!(name("a/other"), Ok("gen/other".into()));
        assert_eq!(name("deep/1/2/3"), Ok("d/3".into()));
        let reason = |t: &str| route(&routes, t).err().map(|r| r.reason);
        assert_eq!(reason("b/x"), Some("no_subscription"));
        assert_eq!(reason("a/bad name"), Some("bad_sensor_name"));
        assert_eq!(reason("deep/1"), Some("bad_sensor_name"));
        assert_eq!(
            reason(&format!("a/{}", "x".repeat(300))),
            Some("bad_sensor_name")
        );
    }

    #[test]
    fn kinds_and_formats_compile() {
        let r = sub(r#"{"topic": "a", "sensor": "x", "kind": "state", "payload": "json_array"}"#)
            .compile()
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(r.kind, SensorKind::State);
        assert!(matches!(r.format, Format::JsonArray(ref f) if f.value.as_str() == "value"));
    }
}
