//! The agent's configuration: one TOML file, every key overridable by
//! `FERRULE_<SECTION>__<KEY>`. Units are in the key names; `deploy/agent.toml`
//! documents each key with its default.

use ferrule_config::{Invalid, Validate};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this agent is (must match its certificate).
    pub agent: AgentSection,
    /// Where to send.
    pub uplink: UplinkSection,
    /// Certificates.
    pub tls: TlsSection,
    /// The crash-safe disk spool.
    #[serde(default)]
    pub spool: SpoolSection,
    /// How samples are grouped into batches.
    #[serde(default)]
    pub batch: BatchSection,
    /// Sources of samples.
    #[serde(default)]
    pub inputs: InputsSection,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// The crossing fast path (see `crossing`).
    #[serde(default)]
    pub alerts: AlertsSection,
    /// OTLP export of the agent's metrics and its sampled batches' spans (to an
    /// OpenTelemetry Collector). None: no export.
    #[serde(default)]
    pub otlp: Option<ferrule_otlp::OtlpSection>,
}

/// `[alerts]`: the aggregator's alert rules, run here only to send a batch at
/// once when a sample makes an alert fire or resolve (paging is the
/// aggregator's). Without it batches leave when their window closes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// The rules file (the same TOML the aggregator's `alerts.rules` reads; see
    /// rules/README.md). Default none.
    #[serde(default)]
    pub rules: Option<PathBuf>,
}

/// `[agent]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Site, as the certificate's URI SAN names it.
    pub site: String,
    /// Agent id, as the certificate's URI SAN names it.
    pub id: String,
    /// Threads running the agent's tasks. Default 1: at site rates (tens of
    /// thousands of samples/s) one thread keeps up, and a second one mostly
    /// adds cross-thread wake-ups (measured: about a fifth of the agent's CPU
    /// at 10 000 samples/s). Raise it for one agent forwarding far more.
    /// Fsyncs run on separate blocking threads either way.
    #[serde(default = "d_worker_threads")]
    pub worker_threads: usize,
    /// Most sensor names the agent registers over its life (the catalog beside
    /// the spool keeps them across restarts). A new name beyond this is refused
    /// and counted (`ferrule_agent_sensors_refused_total`); keep it at or below
    /// the aggregators' `server.max_sensors_per_agent`. Default 10 000.
    #[serde(default = "d_max_sensors")]
    pub max_sensors: usize,
}

fn d_max_sensors() -> usize {
    crate::catalog::DEFAULT_MAX_SENSORS
}

fn d_worker_threads() -> usize {
    1
}

/// `[uplink]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// Aggregators, `host:port`; a name resolving to several addresses gives each.
    /// Tried in order, failing over on loss.
    pub endpoints: Vec<String>,
    /// The name the aggregator's certificate must carry.
    pub server_name: String,
    /// Give up a connection attempt after this many seconds. Default 5.
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Heartbeat (and clock sample) interval, milliseconds, until the aggregator
    /// announces its own (it does in every Welcome). Default 1000.
    #[serde(default = "d_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// The aggregator is taken for dead after this many seconds without a
    /// message from it (it answers every heartbeat), and the agent fails over.
    /// At least three heartbeat intervals. Default 5.
    #[serde(default = "d_peer_timeout")]
    pub peer_timeout_secs: u64,
    /// A session is taken for stuck, closed and opened again (maybe elsewhere),
    /// after this many seconds with batches in flight or waiting for credit and
    /// neither an ack nor credit arriving. Default 60.
    #[serde(default = "d_stall_timeout")]
    pub stall_timeout_secs: u64,
    /// First reconnect delay, milliseconds; doubles up to the maximum, with jitter. Default 200.
    #[serde(default = "d_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay, milliseconds. Default 5000.
    #[serde(default = "d_backoff_max")]
    pub backoff_max_ms: u64,
    /// While the oldest batch not yet sent has waited this many milliseconds
    /// (a backlog replays after an outage, or credit runs short), each new
    /// batch is also sent at once as a live copy on a stream of its own, for
    /// the aggregator's real-time path (alerts, dashboards); the durable lane
    /// still sends every batch in order. Copies spend no credit and are skipped
    /// (`ferrule_agent_live_skipped_total`) rather than waited for. Needs an
    /// aggregator that offers them. 0 turns them off. Default 1000.
    #[serde(default = "d_live_lag")]
    pub live_lag_ms: u64,
    /// How much of its credit the agent uses is sized from the time its
    /// batches take to be acknowledged: it holds that time within this many
    /// milliseconds of the least it has seen lately (the round trip and the
    /// aggregator's commit), so at saturation batches do not wait behind a
    /// whole credit window (delay-based, as TCP Vegas). 0 sends whatever the
    /// credit allows. Default 3.
    #[serde(default = "d_target_queue_delay")]
    pub target_queue_delay_ms: u64,
    /// `/healthz` answers 503 with the reason while the oldest batch not yet
    /// acknowledged is older than this many seconds (an uplink down, an
    /// aggregator taking nothing): spooling rides it out, but past this a
    /// person should look. Healthy again once that backlog has drained. 0
    /// never. Default 300.
    #[serde(default = "d_unhealthy_after")]
    pub unhealthy_after_secs: u64,
}

fn d_connect_timeout() -> u64 {
    5
}
fn d_heartbeat() -> u64 {
    1000
}
fn d_peer_timeout() -> u64 {
    5
}
fn d_stall_timeout() -> u64 {
    60
}
fn d_backoff_initial() -> u64 {
    200
}
fn d_live_lag() -> u64 {
    1_000
}
fn d_unhealthy_after() -> u64 {
    300
}
fn d_target_queue_delay() -> u64 {
    u64::try_from(ferrule_wire::session::DEFAULT_TARGET_QUEUE_DELAY.as_millis()).unwrap_or(2)
}
fn d_backoff_max() -> u64 {
    5_000
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Agent certificate followed by its issuing CA (PEM).
    pub cert: PathBuf,
    /// Agent private key (PEM).
    pub key: PathBuf,
    /// Trust bundle the aggregator's certificate must chain to (PEM).
    pub server_ca: PathBuf,
    /// Warn (hourly, and in `/metrics` as
    /// `ferrule_agent_tls_cert_not_after_seconds`) when the certificate
    /// expires within this many days. The files are looked at again before
    /// every connection attempt: a renewed certificate is used without a
    /// restart. Default 14.
    #[serde(default = "default_expiry_warn_days")]
    pub expiry_warn_days: u64,
    /// The renew hook: a command run when the certificate is due for
    /// renewal, as an argv array (no shell), e.g.
    /// `["/usr/bin/ferrule-certs", "renew", "--dir", "/etc/ferrule/pki",
    /// "--cert", "/etc/ferrule/pki/agent.crt"]`. It must write the renewed
    /// certificate over `cert` (and `key`, if it makes a new one); the files
    /// are then checked and used for new connections as any renewal is. It
    /// runs with stdin closed; its output is logged when it fails. Default
    /// none: the hook is off.
    #[serde(default)]
    pub renew_command: Option<Vec<String>>,
    /// When the hook runs, as a fraction of the certificate's lifetime from
    /// its `not_before` (0.66 of a 30-day certificate: about day 20).
    /// Between 0 and 1, exclusive. Default 0.66.
    #[serde(default = "default_renew_at_fraction")]
    pub renew_at_fraction: f64,
    /// Up to this fraction of the lifetime earlier or later, drawn once per
    /// certificate (from its serial), so a fleet issued the same day does
    /// not renew in the same minute. `renew_at_fraction` plus or minus it
    /// stays within (0, 1). Default 0.05.
    #[serde(default = "default_renew_jitter_fraction")]
    pub renew_jitter_fraction: f64,
    /// The hook is killed after this many seconds (counted as a timeout).
    /// Default 60.
    #[serde(default = "default_renew_timeout_secs")]
    pub renew_timeout_secs: u64,
    /// After a run that did not produce a new certificate (failed, timed
    /// out, or exited 0 leaving the file as it was), the next run waits this
    /// many seconds. Default 600.
    #[serde(default = "default_renew_retry_secs")]
    pub renew_retry_secs: u64,
}

fn default_expiry_warn_days() -> u64 {
    14
}
fn default_renew_at_fraction() -> f64 {
    0.66
}
fn default_renew_jitter_fraction() -> f64 {
    0.05
}
fn default_renew_timeout_secs() -> u64 {
    60
}
fn default_renew_retry_secs() -> u64 {
    600
}

impl TlsSection {
    /// The renew hook's keys: a command with a program, fractions that keep
    /// the due time inside the certificate's lifetime, non-zero durations.
    fn validate_renew(&self, bad: &mut Vec<Invalid>) {
        if let Some(argv) = &self.renew_command {
            if argv.first().is_none_or(|p| p.trim().is_empty()) {
                bad.push(Invalid::new(
                    "tls.renew_command",
                    "needs at least the program to run (an argv array, e.g. [\"/usr/bin/ferrule-certs\", \"renew\", ...]); leave the key out to turn the hook off",
                ));
            }
        }
        let at = self.renew_at_fraction;
        let at_ok = at.is_finite() && at > 0.0 && at < 1.0;
        if !at_ok {
            bad.push(Invalid::new(
                "tls.renew_at_fraction",
                format!("{at} is not between 0 and 1 (exclusive): it is the fraction of the certificate's lifetime at which the renew hook runs, e.g. 0.66"),
            ));
        }
        let j = self.renew_jitter_fraction;
        if !(j.is_finite() && j >= 0.0) {
            bad.push(Invalid::new(
                "tls.renew_jitter_fraction",
                format!("{j} must be 0 or more"),
            ));
        } else if at_ok && (at - j <= 0.0 || at + j >= 1.0) {
            bad.push(Invalid::new(
                "tls.renew_jitter_fraction",
                format!("{j} takes tls.renew_at_fraction ({at}) plus or minus it outside (0, 1): the hook could run at issue or after expiry"),
            ));
        }
        if self.renew_timeout_secs == 0 {
            bad.push(Invalid::new("tls.renew_timeout_secs", "must be at least 1"));
        }
        if self.renew_retry_secs == 0 {
            bad.push(Invalid::new("tls.renew_retry_secs", "must be at least 1"));
        }
    }
}

/// When the spool fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// After every batch: nothing generated and spooled is lost on power loss.
    Always,
    /// Group commit: one fsync for all the batches cut when a batch window
    /// closes (every `batch.max_delay_ms` while samples flow), and batches cut
    /// early by size are synced within `fsync_interval_ms`.
    Interval,
}

/// What the spool does when it reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Stop taking samples: polling inputs slow down, push inputs stop reading.
    Block,
    /// Delete the oldest unacknowledged data, counted per input as dropped.
    DropOldest,
}

/// `[spool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Directory of the spool. Default `ferrule-data/agent`.
    pub dir: PathBuf,
    /// Most bytes on disk. Default 1 GiB.
    pub max_bytes: u64,
    /// What to do when full. Default `block`.
    pub full_policy: FullPolicy,
    /// When to fsync. Default `interval`.
    pub fsync: FsyncMode,
    /// Group commit interval for `fsync = "interval"`, milliseconds. Default 20.
    pub fsync_interval_ms: u64,
    /// Segment file size, bytes. Default 8 MiB (keep below max_bytes / 8).
    pub segment_bytes: u64,
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("ferrule-data/agent"),
            max_bytes: 1 << 30,
            full_policy: FullPolicy::Block,
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 20,
            segment_bytes: 8 << 20,
        }
    }
}

/// `[batch]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSection {
    /// Most samples in a batch. Default 4096.
    pub max_samples: usize,
    /// Longest a sample waits for its batch, milliseconds: the first sample
    /// after a cut opens a window this long, and when it closes every input's
    /// batch is cut (and synced together). Default 50.
    pub max_delay_ms: u64,
}

impl Default for BatchSection {
    fn default() -> Self {
        Self {
            max_samples: 4096,
            max_delay_ms: 50,
        }
    }
}

/// `[inputs]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputsSection {
    /// Synthetic three-phase feeds.
    pub synthetic: Vec<SyntheticInput>,
    /// Modbus TCP devices to poll.
    pub modbus: Vec<crate::inputs::modbus::ModbusConfig>,
    /// MQTT subscriptions.
    pub mqtt: Vec<crate::inputs::mqtt::MqttConfig>,
    /// Influx line protocol listeners (TCP and UDP).
    pub line: Vec<crate::inputs::line::LineConfig>,
    /// The box's own health.
    pub host: Option<crate::inputs::host::HostConfig>,
}

/// `[[inputs.synthetic]]`: a deterministic three-phase feed (voltage, current,
/// frequency, with noise and scheduled sags).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticInput {
    /// Input name, for counters and logs.
    pub name: String,
    /// Sensor names are `<prefix>/va` ... `<prefix>/f`.
    pub prefix: String,
    /// Samples per second of each of the seven sensors. Default 100.
    #[serde(default = "d_rate")]
    pub rate_hz: u32,
    /// Seed; equal seeds give equal feeds. Default 1.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// A 100 ms voltage sag to 70 % every this many seconds; 0 for none. Default 0.
    #[serde(default)]
    pub sag_every_secs: u32,
    /// Stop after this many samples (load tests); none to run forever.
    #[serde(default)]
    pub total_samples: Option<u64>,
    /// How often the feed hands what is due to the batcher, milliseconds: the
    /// feed's read cadence, so a sample waits up to this long before the agent
    /// has it (a latency benchmark sets 1). Default 10.
    #[serde(default = "d_tick")]
    pub tick_ms: u64,
}

fn d_tick() -> u64 {
    10
}

fn d_rate() -> u32 {
    100
}
fn d_seed() -> u64 {
    1
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// TCP address serving `/metrics` and `/healthz`; none to disable.
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// The TLS files, as the transport takes them.
    pub fn client_tls(&self) -> ferrule_transport::ClientTls {
        ferrule_transport::ClientTls {
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
            server_ca: self.tls.server_ca.clone(),
        }
    }

    /// Checks the TLS material as of `now` (readable, key matches, chains to
    /// `tls.server_ca`, valid, names this `[agent]`): what `check-config` and
    /// the start of `run` report, so a bad file is named before any session
    /// fails on it.
    pub fn check_tls(&self, now: std::time::SystemTime) -> ferrule_transport::MaterialReport {
        ferrule_transport::check_client_material(
            &self.client_tls(),
            ferrule_transport::ExpectedAgent {
                site: &self.agent.site,
                agent: &self.agent.id,
            },
            &self.uplink.server_name,
            now,
        )
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Vec<Invalid>> {
        let mut bad = Vec::new();
        if self.agent.max_sensors == 0 || self.agent.max_sensors > u32::MAX as usize {
            bad.push(Invalid::new("agent.max_sensors", "must be 1..=4294967295"));
        }
        if !(1..=64).contains(&self.agent.worker_threads) {
            bad.push(Invalid::new("agent.worker_threads", "must be 1..=64"));
        }
        if self.uplink.endpoints.is_empty() {
            bad.push(Invalid::new(
                "uplink.endpoints",
                "needs at least one host:port",
            ));
        }
        for e in &self.uplink.endpoints {
            if e.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                bad.push(Invalid::new(
                    "uplink.endpoints",
                    format!("{e:?} is not host:port"),
                ));
            }
        }
        if self.uplink.peer_timeout_secs.saturating_mul(1000)
            < self.uplink.heartbeat_interval_ms.saturating_mul(3)
        {
            bad.push(Invalid::new(
                "uplink.peer_timeout_secs",
                "must be at least three heartbeat intervals (uplink.heartbeat_interval_ms)",
            ));
        }
        if self.uplink.stall_timeout_secs == 0 {
            bad.push(Invalid::new(
                "uplink.stall_timeout_secs",
                "must be at least 1",
            ));
        }
        self.tls.validate_renew(&mut bad);
        if self.spool.max_bytes < 4 * self.spool.segment_bytes {
            bad.push(Invalid::new(
                "spool.max_bytes",
                "must be at least 4 x spool.segment_bytes",
            ));
        }
        if self.batch.max_samples == 0 || self.batch.max_samples > 50_000 {
            bad.push(Invalid::new("batch.max_samples", "must be 1..=50000"));
        }
        for (i, s) in self.inputs.synthetic.iter().enumerate() {
            if s.rate_hz == 0 || s.rate_hz > 1_000_000 {
                bad.push(Invalid::new(
                    format!("inputs.synthetic[{i}].rate_hz"),
                    "must be 1..=1000000",
                ));
            }
            if ferrule_wire::SensorName::new(format!("{}/va", s.prefix)).is_err() {
                bad.push(Invalid::new(
                    format!("inputs.synthetic[{i}].prefix"),
                    "sensor names allow ASCII letters, digits and _ . : / -",
                ));
            }
        }
        for (i, m) in self.inputs.modbus.iter().enumerate() {
            m.validate(&format!("inputs.modbus[{i}]"), &mut bad);
        }
        for (i, m) in self.inputs.mqtt.iter().enumerate() {
            m.validate(&format!("inputs.mqtt[{i}]"), &mut bad);
        }
        for (i, l) in self.inputs.line.iter().enumerate() {
            l.validate(&format!("inputs.line[{i}]"), &mut bad);
        }
        if let Some(h) = &self.inputs.host {
            h.validate("inputs.host", &mut bad);
        }
        // Input names label counters and spool records: they must be unique.
        let mut names: Vec<&str> = self
            .inputs
            .synthetic
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.inputs.modbus.iter().map(|m| m.name.as_str()))
            .chain(self.inputs.mqtt.iter().map(|m| m.name.as_str()))
            .chain(self.inputs.line.iter().map(|l| l.name.as_str()))
            .chain(self.inputs.host.iter().map(|h| h.name.as_str()))
            .collect();
        names.sort_unstable();
        for w in names.windows(2) {
            if w[0] == w[1] {
                bad.push(Invalid::new(
                    "inputs",
                    format!("two inputs are named {:?}", w[0]),
                ));
            }
        }
        for (key, v) in [
            ("agent.site", &self.agent.site),
            ("agent.id", &self.agent.id),
        ] {
            if v.is_empty()
                || v.len() > 64
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                bad.push(Invalid::new(key, "1-64 characters of A-Z a-z 0-9 . _ -"));
            }
        }
        if let Some(o) = &self.otlp {
            bad.extend(o.invalid("otlp"));
            if !o.sensors.is_empty() {
                bad.push(Invalid::new(
                    "otlp.sensors",
                    "is the aggregator's (it reads sensors from the real-time path); the agent exports its own telemetry only",
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad)
        }
    }
}
