//! The aggregator's configuration: one TOML file, every key overridable by
//! `FERRULE_<SECTION>__<KEY>`. Units are in the key names. Defaults are what the
//! embedded, single-machine setup needs; `deploy/aggregator.toml` documents each key.

use ferrule_config::{Invalid, Validate};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how agents connect.
    #[serde(default)]
    pub server: ServerSection,
    /// Certificates.
    pub tls: TlsSection,
    /// How much agents may send ahead of commits.
    #[serde(default)]
    pub credit: CreditSection,
    /// The embedded durable log (used when no Kafka is configured).
    #[serde(default)]
    pub log: LogSection,
    /// Kafka: when present, batches are committed to Kafka instead of the
    /// embedded log.
    #[serde(default)]
    pub kafka: Option<KafkaSection>,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// What the dedupe ledger may remember.
    #[serde(default)]
    pub dedupe: DedupeSection,
    /// Alert rules and where their notifications go; none: no alerting.
    #[serde(default)]
    pub alerts: Option<AlertsSection>,
    /// The real-time path's queue and memory of what it published.
    #[serde(default)]
    pub fanout: FanoutSection,
    /// Redis Streams: when present, the real-time path publishes to Redis
    /// instead of in-process consumers.
    #[serde(default)]
    pub redis: Option<RedisSection>,
    /// The sampler: snapshots of every stage and the signals made of them.
    #[serde(default)]
    pub sampler: SamplerSection,
    /// The live page and its WebSocket gateway.
    #[serde(default)]
    pub page: PageSection,
    /// OTLP export of the aggregator's metrics, batch traces and selected
    /// sensors (to an OpenTelemetry Collector). None: no export.
    #[serde(default)]
    pub otlp: Option<ferrule_otlp::OtlpSection>,
}

/// `[page]`: the live web page (stages in plain words, sparklines, alerts,
/// agents) and the WebSocket gateway that pushes the sampler's signal sets to
/// it. See [`crate::page`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PageSection {
    /// Where to serve it (`http://<listen>/`); none by default (the demo
    /// serves it on 127.0.0.1:9480). Plain HTTP: keep it on loopback or
    /// behind a reverse proxy with TLS and authentication.
    pub listen: Option<SocketAddr>,
    /// Viewers connected at once at most; more are answered 503. Default 64.
    pub max_viewers: usize,
    /// Signal sets kept for backfill (a viewer that falls behind or
    /// reconnects gets what it missed from here, or the full state).
    /// Default 3600 (an hour at one a second).
    pub backfill_max_len: usize,
    /// A viewer whose socket takes no data for this long is disconnected,
    /// milliseconds. Default 10 000.
    pub send_timeout_ms: u64,
}

impl Default for PageSection {
    fn default() -> Self {
        Self {
            listen: None,
            max_viewers: 64,
            backfill_max_len: 3600,
            send_timeout_ms: 10_000,
        }
    }
}

/// `[sampler]`: every period one aggregator (with `[redis]`, the holder of a
/// fenced Redis lock; else this one) reads every pipeline stage's counters,
/// turns them into signals (are we keeping up?) and stores both. See
/// [`crate::sampler`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerSection {
    /// Sample at all. Default true.
    pub enabled: bool,
    /// How often, milliseconds. At least 100. Default 1000.
    pub period_ms: u64,
    /// The sampler lock's time to live, milliseconds: a dead sampler is
    /// replaced within about this plus one period. At least 300. Default 5000.
    pub lease_ttl_ms: u64,
    /// Snapshots kept in the history (the Redis stream
    /// `{redis.stream_prefix}:{sampler}:snapshots`, `MAXLEN ~`; without Redis,
    /// the newest in memory and a file under `log.dir`). Default 86 400 (a day
    /// at one a second).
    pub history_max_len: u64,
    /// Kafka consumer groups to watch as stages (`kafka:<group>`: the
    /// topics' high watermarks against the group's committed offsets). Needs
    /// `[kafka]`. Default none.
    pub kafka_groups: Vec<String>,
    /// With `[kafka]`: the topic the sampler also writes each signal set to
    /// (the page's JSON, keyed by fence), the durable history beside the
    /// capped Redis stream. Empty: none. Default `ferrule-signals`.
    pub kafka_history_topic: String,
}

impl Default for SamplerSection {
    fn default() -> Self {
        Self {
            enabled: true,
            period_ms: 1000,
            lease_ttl_ms: 5000,
            history_max_len: 86_400,
            kafka_groups: Vec::new(),
            kafka_history_topic: "ferrule-signals".into(),
        }
    }
}

/// `[alerts]`: the rules file and the notifiers fed by its `firing` and
/// `resolved` transitions (`pending` and `inactive` never notify). Each output has
/// its own bounded queue and task, so a dead pager delays nothing else; see
/// [`crate::alerts`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// The rules file (TOML, see rules/README.md), checked by `check-config`.
    /// Optional: without it nothing is evaluated, but the outputs still start.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// Notifications queued per output before the oldest is dropped (a `resolved`
    /// before any `firing`), counted in
    /// `ferrule_aggregator_alert_notifications_dropped_total{reason="queue_full"}`.
    /// Default 10 000.
    #[serde(default = "d_alert_queue")]
    pub queue_capacity: usize,
    /// Batches waiting for the evaluator before the oldest is dropped (it never
    /// holds up ingest), counted in
    /// `ferrule_aggregator_fanout_lagged_total{consumer="alerts"}`. Default 1024.
    #[serde(default = "d_evaluate_queue")]
    pub evaluate_queue_batches: usize,
    /// Record bytes waiting for the evaluator before the oldest batch is dropped
    /// (counted as above). Default 67 108 864 (64 MiB).
    #[serde(default = "d_evaluate_queue_bytes")]
    pub evaluate_queue_max_bytes: u64,
    /// An agent that sent this aggregator nothing for this long is forgotten:
    /// its series are dropped and its open alerts no longer resent, so after a
    /// failover the aggregator that receives the agent now speaks for them
    /// (Alertmanager expires what nobody resends at its `endsAt`, four resend
    /// intervals on). Its `no_data` alerts go with it. Counted in
    /// `ferrule_aggregator_alert_agents_forgotten_total`. Default 300; 0 never.
    #[serde(default = "d_forget_agent")]
    pub forget_agent_after_secs: u64,
    /// Alertmanagers: every one gets every notification, as Prometheus does.
    #[serde(default)]
    pub alertmanager: Vec<AlertmanagerOutput>,
    /// PagerDuty (Events API v2), if any.
    #[serde(default)]
    pub pagerduty: Option<PagerDutyOutput>,
    /// With a `[redis]` section: every notification is also added to the stream
    /// `{redis.stream_prefix}:alerts` (one stream, one entry per notification,
    /// fields in [`crate::alerts::stream`]), for consumers in any language.
    /// `false` leaves Redis to the real-time path alone. Default true.
    #[serde(default = "d_true")]
    pub redis_stream: bool,
    /// That stream's cap, entries (`XADD ... MAXLEN ~`): it is a feed to read,
    /// not an archive, and nothing trims it otherwise. Default 100 000.
    #[serde(default = "d_alert_stream_len")]
    pub redis_stream_max_len: u64,
    /// A notification Redis does not take (down, refusing, unanswered within
    /// `redis.response_timeout_ms`) is retried with jittered exponential backoff
    /// (0.5 s doubling to `redis.reconnect_max_ms`) for this long, then dropped
    /// and counted (`gave_up`). Default 3600.
    #[serde(default = "d_stream_retry")]
    pub redis_retry_for_secs: u64,
    /// With a `[redis]` section and `redis_stream` on: Alertmanagers and
    /// PagerDuty are paged from the alert stream through one Redis consumer
    /// group per output, shared by every aggregator, instead of by each
    /// aggregator directly. One aggregator at a time (the holder of a Redis
    /// lease) delivers for an output, XACKs what it delivered, and on taking
    /// over reclaims (XAUTOCLAIM) what a dead holder had read but not
    /// delivered; what is open is kept in Redis, so an episode seen by two
    /// aggregators (an agent failing over) pages once and is resolved once.
    /// The price: pages need Redis. `false`: each aggregator pages what it
    /// evaluates itself. Default true.
    #[serde(default = "d_true")]
    pub page_through_redis: bool,
    /// The paging lease's time to live, milliseconds: how long a dead holder
    /// keeps another aggregator from taking over its outputs. Renewed every
    /// third of it. At least 300. Default 5000.
    #[serde(default = "d_page_lease")]
    pub page_lease_ms: u64,
    /// With a `[kafka]` section: every notification is also one JSON record on
    /// [`Self::kafka_topic`], keyed by the alert's fingerprint. `false` turns that
    /// off. Default true.
    #[serde(default = "d_true")]
    pub kafka: bool,
    /// The topic alert records go to. Default `<kafka.topic>.alerts` (beside the
    /// batches of the same deployment). Like every topic, it must exist where
    /// auto-create is off; until it does, records are retried and counted.
    #[serde(default)]
    pub kafka_topic: Option<String>,
    /// librdkafka gives up on one attempt at a record after this long
    /// (`message.timeout.ms` of the alert producer), milliseconds; it is then
    /// retried (below). At least 1000. Default 30 000.
    #[serde(default = "d_alert_kafka_timeout")]
    pub kafka_timeout_ms: u64,
    /// A record that keeps failing (brokers down, topic missing) is retried with
    /// jittered exponential backoff (0.5 s doubling to 30 s) for this long, then
    /// dropped and counted (`gave_up`). Default 3600.
    #[serde(default = "d_stream_retry")]
    pub kafka_retry_for_secs: u64,
}

impl AlertsSection {
    /// The topic alert records go to with Kafka section `kafka`:
    /// [`Self::kafka_topic`], else `<kafka.topic>.alerts`.
    pub fn kafka_topic_for(&self, kafka: &KafkaSection) -> String {
        match &self.kafka_topic {
            Some(t) => t.clone(),
            None => format!("{}.alerts", kafka.topic),
        }
    }
}

fn d_alert_queue() -> usize {
    10_000
}
fn d_evaluate_queue() -> usize {
    1024
}
fn d_evaluate_queue_bytes() -> u64 {
    64 << 20
}
fn d_forget_agent() -> u64 {
    300
}
fn d_true() -> bool {
    true
}
fn d_alert_stream_len() -> u64 {
    100_000
}
fn d_stream_retry() -> u64 {
    3600
}
fn d_page_lease() -> u64 {
    5000
}
fn d_alert_kafka_timeout() -> u64 {
    30_000
}
fn d_resend() -> u64 {
    60
}
fn d_http_timeout() -> u64 {
    10_000
}
fn d_am_retry() -> u64 {
    300
}
fn d_pd_retry() -> u64 {
    3600
}
fn d_pd_url() -> String {
    crate::alerts::pagerduty::DEFAULT_URL.into()
}

/// `[[alerts.alertmanager]]`: one Prometheus Alertmanager (v2 API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerOutput {
    /// Base URL, `http://host:9093` (alerts are POSTed to `<url>/api/v2/alerts`).
    /// Required.
    pub url: String,
    /// Firing alerts are sent again this often, so Alertmanager does not resolve
    /// them by itself; their `endsAt` is four intervals ahead, so if this
    /// aggregator vanishes they resolve after that. Default 60.
    #[serde(default = "d_resend")]
    pub resend_interval_secs: u64,
    /// Each request (connect, send, answer) must finish within this. Default 10 000.
    #[serde(default = "d_http_timeout")]
    pub timeout_ms: u64,
    /// A notification that keeps failing is retried (jittered exponential backoff,
    /// 0.5 s doubling to 30 s) for this long, then dropped and counted (`gave_up`);
    /// a firing alert is still resent at its next interval. Default 300.
    #[serde(default = "d_am_retry")]
    pub retry_for_secs: u64,
}

/// `[alerts.pagerduty]`: PagerDuty's Events API v2.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyOutput {
    /// Where events are POSTed. Default `https://events.pagerduty.com/v2/enqueue`.
    #[serde(default = "d_pd_url")]
    pub url: String,
    /// The integration's routing key; `env:NAME` reads the environment variable
    /// NAME when the aggregator starts (keep it out of files). Required.
    pub routing_key: String,
    /// Each request (connect, send, answer) must finish within this. Default 10 000.
    #[serde(default = "d_http_timeout")]
    pub timeout_ms: u64,
    /// A notification that keeps failing (network, 429, 5xx) is retried with
    /// jittered exponential backoff (0.5 s doubling to 30 s) for this long, then
    /// dropped and counted (`gave_up`). A 4xx other than 429 is not retried.
    /// Default 3600.
    #[serde(default = "d_pd_retry")]
    pub retry_for_secs: u64,
}

/// A config value that names a secret: `env:NAME` is read from the environment
/// variable NAME (so secrets stay out of files), anything else is the value itself.
/// Shared by the Kafka properties and the alert outputs.
pub fn resolve_secret(value: &str) -> Result<String, SecretError> {
    match value.strip_prefix("env:") {
        Some(var) => std::env::var(var).map_err(|_| SecretError::Unset(var.to_string())),
        None => Ok(value.to_string()),
    }
}

/// Why [`resolve_secret`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// `env:NAME` names a variable that is not set (or not UTF-8).
    #[error("names environment variable {0}, which is not set")]
    Unset(String),
}

/// `[fanout]`: the real-time path, whichever its backend. Every batch is
/// published as it arrives, in parallel with its commit; nothing here can delay
/// a commit or an ack.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutSection {
    /// Batches queued between ingest and the fan-out; when full, a batch is
    /// skipped for the real-time path (counted in
    /// `ferrule_aggregator_fanout_skipped_total{reason="queue_full"}`), never
    /// waited for. Each holds one record (about the batch's frame size).
    /// Default 4096.
    pub queue_batches: usize,
    /// Record bytes queued there at most (batches beyond it are skipped the
    /// same way): with large batches this, not the count, bounds the memory.
    /// Default 64 MiB.
    pub queue_max_bytes: u64,
    /// Agents whose published (epoch, seq) are remembered, so a batch resent
    /// after a failed commit is not published twice. Default 100 000.
    pub seen_max_agents: usize,
    /// Epochs remembered per agent. Default 2.
    pub seen_epochs_per_agent: usize,
    /// Seq ranges remembered per agent epoch (contiguous seqs take one). Default 64.
    pub seen_max_ranges_per_epoch: usize,
}

impl Default for FanoutSection {
    fn default() -> Self {
        let b = crate::fanout::seen::SeenBounds::default();
        Self {
            queue_batches: 4096,
            queue_max_bytes: 64 << 20,
            seen_max_agents: b.max_agents,
            seen_epochs_per_agent: b.epochs_per_agent,
            seen_max_ranges_per_epoch: b.max_ranges_per_epoch,
        }
    }
}

/// `[redis]`: publish the real-time path to Redis Streams, one stream per site
/// (`{stream_prefix}:{site}`, the braces a Cluster hash tag). Each entry has the
/// fields `agent`, `epoch`, `seq`, `samples` and `record` (the committed record,
/// the same bytes as the Kafka sink's). Redis being down or slow never delays
/// commits or acks: batches are skipped for the real-time path, counted, and
/// `/healthz` says degraded while the aggregator stays ready.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://host:port` or `rediss://host:port` (TLS). With `cluster = true`,
    /// any node of the cluster (the others are discovered). Required.
    pub url: String,
    /// ACL user name, if any (or in the URL).
    #[serde(default)]
    pub username: Option<String>,
    /// Password; `env:NAME` reads it from environment variable NAME so the
    /// secret stays out of the file.
    #[serde(default)]
    pub password: Option<String>,
    /// The URL names a Redis Cluster node. Default false.
    #[serde(default)]
    pub cluster: bool,
    /// With `rediss://`: the CA bundle (PEM) Redis's certificate must chain
    /// to. Default: the system's trust store.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// With `rediss://` and a Redis that asks for client certificates
    /// (`tls-auth-clients yes`): this certificate (PEM) and the key below.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// The key (PEM) of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Stream names are `{stream_prefix}:{site}`. Default `ferrule`.
    #[serde(default = "d_stream_prefix")]
    pub stream_prefix: String,
    /// XADD commands in flight at once (pipelined). Default 512.
    #[serde(default = "d_max_in_flight")]
    pub max_in_flight: usize,
    /// Hard cap on a stream's length, entries (`XADD ... MAXLEN ~`): bounds
    /// Redis memory whatever the consumer groups do; what a slow group loses to
    /// it is counted in `ferrule_aggregator_fanout_group_lost_total`.
    /// Default 1 000 000.
    #[serde(default = "d_max_len")]
    pub max_len: u64,
    /// How often streams are trimmed to what every consumer group is done with
    /// (`XTRIM MINID`), milliseconds. 0 turns that off (only the cap trims).
    /// Default 1000.
    #[serde(default = "d_trim_interval_ms")]
    pub trim_interval_ms: u64,
    /// A command unanswered this long counts as failed and the connection is
    /// rebuilt, milliseconds. Default 2000.
    #[serde(default = "d_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Longest wait between reconnect attempts (jittered exponential backoff
    /// from 100 ms), milliseconds. Default 5000.
    #[serde(default = "d_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

fn d_stream_prefix() -> String {
    "ferrule".into()
}
fn d_max_in_flight() -> usize {
    512
}
fn d_max_len() -> u64 {
    1_000_000
}
fn d_trim_interval_ms() -> u64 {
    1000
}
fn d_response_timeout_ms() -> u64 {
    2000
}
fn d_reconnect_max_ms() -> u64 {
    5000
}

/// `[dedupe]`: the ledger of (agent, epoch, seq) the sink made durable, which
/// catches batches an agent sends again. Bounded: beyond these, the oldest is
/// forgotten (counted in `ferrule_aggregator_dedupe_forgotten_ranges_total`) and
/// a batch resent from it is written again, a duplicate consumers drop by its
/// key, never a loss. Contiguous seqs take one range however many.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeSection {
    /// Ranges kept in all (about 50 bytes each, plus about 100 per agent epoch).
    /// Default 1 000 000.
    pub max_ranges: usize,
    /// Ranges kept per agent epoch. Default 4096.
    pub max_ranges_per_epoch: usize,
}

impl Default for DedupeSection {
    fn default() -> Self {
        let b = crate::ledger::LedgerBounds::default();
        Self {
            max_ranges: b.max_ranges,
            max_ranges_per_epoch: b.max_ranges_per_epoch,
        }
    }
}

impl DedupeSection {
    /// The bounds the ledger takes.
    pub fn bounds(&self) -> crate::ledger::LedgerBounds {
        crate::ledger::LedgerBounds {
            max_ranges: self.max_ranges.max(1),
            max_ranges_per_epoch: self.max_ranges_per_epoch.max(1),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// UDP address to listen on. Default `127.0.0.1:4433`.
    pub listen: SocketAddr,
    /// Name announced to agents in Welcome, for their logs. Default `ferrule-aggregator`.
    pub name: String,
    /// Validate client addresses with a QUIC Retry before any handshake work. Default true.
    pub retry: bool,
    /// QUIC + TLS handshakes in progress at once; more are refused at once
    /// (`server_busy`: the agent backs off) so a reconnect storm does not slow
    /// every handshake past the agents' connect timeout. Default 256.
    pub max_pending_handshakes: usize,
    /// Of those, at most this many from one source address (an IPv6 /64), so
    /// a host that starts handshakes and never finishes them cannot hold
    /// every slot (each is held up to `hello_timeout_secs`); and when all are
    /// taken, an address holding fewer takes the biggest holder's oldest
    /// back. Sites behind one NAT address share it. Default 32.
    pub max_pending_handshakes_per_address: usize,
    /// Close a connection silent this long. Default 30.
    pub idle_timeout_secs: u64,
    /// A frame must arrive whole within this many seconds of its first byte. Default 10.
    pub frame_timeout_secs: u64,
    /// The QUIC + TLS handshake must be over within this many seconds, and the
    /// session must then say Hello within as many again. Default 10.
    pub hello_timeout_secs: u64,
    /// Largest frame accepted, bytes. Default 1 MiB.
    pub max_frame_bytes: u32,
    /// Most sensors one agent session may define; Defines beyond it are refused
    /// (counted in `ferrule_aggregator_defines_refused_total`) and batches naming
    /// those sensors refused, without ending the session. Keep agents'
    /// `agent.max_sensors` at or below it. Default 10 000.
    pub max_sensors_per_agent: u32,
    /// Heartbeat interval asked of agents, milliseconds (agents that hear nothing
    /// for about five intervals fail over). Default 1000.
    pub heartbeat_interval_ms: u32,
    /// Close a session whose agent sent nothing (not even a heartbeat) for this
    /// long. Default 10.
    pub peer_timeout_secs: u64,
    /// Close a session whose batches at the sink have not moved for this long, so
    /// its agent reconnects, maybe to an aggregator whose sink works. Counted as
    /// `stalled`. Default 60.
    pub stall_timeout_secs: u64,
    /// Close a session whose agent takes no data on its control stream (acks,
    /// credit) for this long. Default 10.
    pub control_send_timeout_secs: u64,
    /// Sessions held at once; more are refused (`too_many_sessions`). Default 20 000.
    pub max_sessions: usize,
    /// Sessions one agent identity may hold at once; a newer one closes the
    /// oldest beyond this (`superseded`). Default 2.
    pub max_sessions_per_agent: usize,
    /// On SIGTERM, wait this long for in-flight commits and agents to leave. Default 10.
    pub drain_timeout_secs: u64,
    /// Live copies (the newest batches an agent sends for the real-time path
    /// while its durable lane replays a backlog) accepted per session, in
    /// batch-cost bytes a second (a burst of one second's worth). Beyond it they
    /// are refused (`ferrule_aggregator_live_refused_total{reason="over_budget"}`);
    /// the batches themselves still arrive, in order, for the durable log. 0
    /// turns live copies off (not offered to agents); otherwise at least
    /// `max_frame_bytes`. They spend no credit. Default 4 MiB.
    pub live_max_bytes_per_sec: u64,
    /// Endpoint suggested to agents in GoAway (`host:port`), if any.
    pub alternate: Option<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            name: "ferrule-aggregator".into(),
            retry: true,
            max_pending_handshakes: 256,
            max_pending_handshakes_per_address: 32,
            idle_timeout_secs: 30,
            frame_timeout_secs: 10,
            hello_timeout_secs: 10,
            max_frame_bytes: 1 << 20,
            max_sensors_per_agent: 10_000,
            heartbeat_interval_ms: 1000,
            peer_timeout_secs: 10,
            stall_timeout_secs: 60,
            control_send_timeout_secs: 10,
            max_sessions: 20_000,
            max_sessions_per_agent: 2,
            drain_timeout_secs: 10,
            live_max_bytes_per_sec: 4 << 20,
            alternate: None,
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Server certificate followed by its issuing CA (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// Trust bundle agents' certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// CRL of revoked agent certificates (PEM), if any.
    pub crl: Option<PathBuf>,
    /// How often the files above are looked at for a change (a new
    /// certificate, bundle or CRL is used at once, checked first; SIGHUP
    /// looks at once), seconds; 0 only on SIGHUP. A revoked agent's live
    /// session is closed within this. Default 5.
    #[serde(default = "default_reload_interval_secs")]
    pub reload_interval_secs: u64,
    /// Warn (hourly; `ferrule_aggregator_tls_cert_not_after_seconds` says it
    /// always) when the serving certificate expires within this many days.
    /// Default 14.
    #[serde(default = "default_expiry_warn_days")]
    pub expiry_warn_days: u64,
}

fn default_expiry_warn_days() -> u64 {
    14
}

fn default_reload_interval_secs() -> u64 {
    5
}

/// `[credit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreditSection {
    /// The window: bytes one agent may have in flight towards the sink, each batch
    /// counted at its frame size or its decoded size (17 bytes a sample),
    /// whichever is more. With the batch window below and `server.max_sessions`,
    /// it bounds what agents can make the aggregator hold. Default 16 MiB.
    pub session_window_bytes: u64,
    /// Batches one agent may have in flight towards the sink. Default 256.
    pub session_window_batches: u32,
    /// The queueing delay at the sink the window is sized to hold, milliseconds.
    /// The two windows above are then ceilings: every session's window is sized
    /// from the sink's measured commit latency (its base, and the mean above
    /// it) so that the batches all agents have in flight wait about this long,
    /// which keeps acks fast at saturation without starving the sink. A long
    /// round trip still gets its window (up to the ceilings): the delay is
    /// measured from a batch's arrival. 0 for a fixed window at the ceilings.
    /// Default 0 (fixed): the sizing does not meet its goal yet on a CPU-bound
    /// aggregator (README, "Credit window"), and a sink with noisy latency (Kafka)
    /// is not measured with it yet. 2 is the setting measured.
    pub target_queue_delay_ms: u64,
    /// Above this many bytes queued at the sink (or while the sink is unready),
    /// credit that batches return is withheld and owed, so agents spool instead of
    /// adding to the queue (`ferrule_aggregator_credit_withheld_total`). Default 256 MiB.
    pub sink_high_water_bytes: u64,
}

impl Default for CreditSection {
    fn default() -> Self {
        Self {
            session_window_bytes: 16 << 20,
            session_window_batches: 256,
            target_queue_delay_ms: 0,
            sink_high_water_bytes: 256 << 20,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Directory of the embedded log. Default `ferrule-data/aggregator`.
    pub dir: PathBuf,
    /// Segment size, bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// Delete oldest segments beyond this total, bytes. Default none.
    pub max_total_bytes: Option<u64>,
    /// Delete segments older than this, seconds. Default none.
    pub max_age_secs: Option<u64>,
    /// Most batches written per group commit (one fsync). Default 1024.
    pub group_commit_max_batches: usize,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("ferrule-data/aggregator"),
            segment_bytes: 64 << 20,
            max_total_bytes: None,
            max_age_secs: None,
            group_commit_max_batches: 1024,
        }
    }
}

/// How a topic's records are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    /// One record per batch in the compact encoding (`wire/README.md`).
    #[default]
    Compact,
    /// One JSON object per sample, one record each.
    Json,
}

/// `[kafka]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers, `host:port,host:port`. Required.
    pub brokers: String,
    /// Topic for batches no route matches. Required.
    pub topic: String,
    /// Encoding of the default topic. Default `compact`.
    #[serde(default)]
    pub format: RecordFormat,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`. Default `lz4`.
    #[serde(default = "d_compression")]
    pub compression: String,
    /// How long the producer waits to fill a batch, milliseconds. Default 5.
    #[serde(default = "d_linger")]
    pub linger_ms: u64,
    /// Producer batch size, bytes. Default 1 MiB.
    #[serde(default = "d_batch_bytes")]
    pub batch_bytes: u64,
    /// librdkafka gives up on a record after this long, milliseconds; the batch is
    /// then not acknowledged (the agent keeps it) and the failure counted. Default 300000.
    #[serde(default = "d_message_timeout")]
    pub message_timeout_ms: u64,
    /// librdkafka's local queue limit, KiB. Default 262144 (256 MiB).
    #[serde(default = "d_queue_kbytes")]
    pub queue_max_kbytes: u64,
    /// Client id the brokers see. Default `ferrule-aggregator`.
    #[serde(default = "d_client_id")]
    pub client_id: String,
    /// Topic routes, first match wins.
    #[serde(default)]
    pub routes: Vec<KafkaRoute>,
    /// librdkafka properties passed through as is (TLS and SASL for managed
    /// clusters: `security.protocol`, `sasl.mechanism`, `ssl.ca.location`, ...).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

fn d_compression() -> String {
    "lz4".into()
}
fn d_linger() -> u64 {
    5
}
fn d_batch_bytes() -> u64 {
    1 << 20
}
fn d_message_timeout() -> u64 {
    300_000
}
fn d_queue_kbytes() -> u64 {
    262_144
}
fn d_client_id() -> String {
    "ferrule-aggregator".into()
}

/// `[[kafka.routes]]`: batches from matching sites, or using sensors under a
/// prefix, go to `topic`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaRoute {
    /// Site pattern (`*` matches anything), if any.
    pub site: Option<String>,
    /// Sensor name prefix (a sensor class such as `breaker/`), if any.
    pub sensor_prefix: Option<String>,
    /// Destination topic.
    pub topic: String,
    /// Encoding; the section's `format` if absent.
    pub format: Option<RecordFormat>,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// TCP address serving `/metrics`, `/healthz` (alive) and `/readyz` (ready);
    /// none to disable. Default none.
    pub listen: Option<SocketAddr>,
    /// `/readyz` answers 503 once no credit has been granted for this long
    /// without a break (the sink behind or failing); 0 never. Default 30.
    pub unready_without_credit_secs: u64,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: None,
            unready_without_credit_secs: 30,
        }
    }
}

impl ServerSection {
    /// Frame deadline as a duration.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_secs(self.frame_timeout_secs)
    }
}

impl Config {
    /// The TLS files, as the transport takes them.
    pub fn server_tls(&self) -> ferrule_transport::ServerTls {
        ferrule_transport::ServerTls {
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
            client_ca: self.tls.client_ca.clone(),
            crl: self.tls.crl.clone(),
        }
    }

    /// Checks the TLS material as of `now` (readable, key matches, chains to
    /// `tls.client_ca`, valid, carries a DNS name; the CRL parses): what
    /// `check-config` and the start of `run` report.
    pub fn check_tls(&self, now: std::time::SystemTime) -> ferrule_transport::MaterialReport {
        ferrule_transport::check_server_material(&self.server_tls(), now)
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Vec<Invalid>> {
        let mut bad = Vec::new();
        if self.server.max_frame_bytes < 4096 {
            bad.push(Invalid::new(
                "server.max_frame_bytes",
                "must be at least 4096",
            ));
        }
        if self.credit.session_window_bytes < u64::from(self.server.max_frame_bytes) {
            bad.push(Invalid::new(
                "credit.session_window_bytes",
                "must be at least server.max_frame_bytes, or an agent could never send a full batch",
            ));
        }
        if self.server.live_max_bytes_per_sec != 0
            && self.server.live_max_bytes_per_sec < u64::from(self.server.max_frame_bytes)
        {
            bad.push(Invalid::new(
                "server.live_max_bytes_per_sec",
                "must be 0 (off) or at least server.max_frame_bytes, or a full batch could never go live",
            ));
        }
        if self.credit.session_window_batches == 0 {
            bad.push(Invalid::new(
                "credit.session_window_batches",
                "must be at least 1",
            ));
        }
        if self.sampler.period_ms < 100 {
            bad.push(Invalid::new("sampler.period_ms", "must be at least 100"));
        }
        if self.sampler.lease_ttl_ms < 300 {
            bad.push(Invalid::new("sampler.lease_ttl_ms", "must be at least 300"));
        }
        if self.sampler.history_max_len == 0 {
            bad.push(Invalid::new(
                "sampler.history_max_len",
                "must be at least 1",
            ));
        }
        if !self.sampler.kafka_groups.is_empty() && self.kafka.is_none() {
            bad.push(Invalid::new(
                "sampler.kafka_groups",
                "needs a [kafka] section (the groups are read on its brokers)",
            ));
        }
        let max_group = ferrule_signals::engine::MAX_STAGE_NAME - "kafka:".len();
        for g in &self.sampler.kafka_groups {
            if g.is_empty() || g.len() > max_group || g.chars().any(char::is_control) {
                bad.push(Invalid::new(
                    "sampler.kafka_groups",
                    format!("{g:?}: a group id of 1 to {max_group} printable characters"),
                ));
            }
        }
        if self.sampler.kafka_groups.len() > 256 {
            bad.push(Invalid::new("sampler.kafka_groups", "at most 256 groups"));
        }
        for (key, v) in [
            ("server.peer_timeout_secs", self.server.peer_timeout_secs),
            ("server.stall_timeout_secs", self.server.stall_timeout_secs),
            (
                "server.control_send_timeout_secs",
                self.server.control_send_timeout_secs,
            ),
        ] {
            if v == 0 {
                bad.push(Invalid::new(key, "must be at least 1 second"));
            }
        }
        if u64::from(self.server.heartbeat_interval_ms) * 3 > self.server.peer_timeout_secs * 1000 {
            bad.push(Invalid::new(
                "server.peer_timeout_secs",
                "must be at least three heartbeat intervals (server.heartbeat_interval_ms)",
            ));
        }
        if self.server.max_sessions == 0 || self.server.max_sessions_per_agent == 0 {
            bad.push(Invalid::new(
                "server.max_sessions",
                "max_sessions and max_sessions_per_agent must be at least 1",
            ));
        }
        if self.server.max_pending_handshakes == 0
            || self.server.max_pending_handshakes_per_address == 0
        {
            bad.push(Invalid::new(
                "server.max_pending_handshakes",
                "max_pending_handshakes and max_pending_handshakes_per_address must be at least 1 (0 would refuse every agent)",
            ));
        }
        if self.server.idle_timeout_secs == 0 || self.server.frame_timeout_secs == 0 {
            bad.push(Invalid::new(
                "server.idle_timeout_secs",
                "timeouts must be at least 1 second",
            ));
        }
        if let Some(k) = &self.kafka {
            if k.brokers.trim().is_empty() {
                bad.push(Invalid::new(
                    "kafka.brokers",
                    "needs at least one host:port",
                ));
            }
            if !matches!(
                k.compression.as_str(),
                "none" | "gzip" | "snappy" | "lz4" | "zstd"
            ) {
                bad.push(Invalid::new(
                    "kafka.compression",
                    "one of none, gzip, snappy, lz4, zstd",
                ));
            }
            if k.message_timeout_ms < 1000 {
                bad.push(Invalid::new(
                    "kafka.message_timeout_ms",
                    "must be at least 1000",
                ));
            }
            for (i, r) in k.routes.iter().enumerate() {
                if r.site.is_none() && r.sensor_prefix.is_none() {
                    bad.push(Invalid::new(
                        format!("kafka.routes[{i}]"),
                        "needs site or sensor_prefix",
                    ));
                }
            }
        }
        if let Some(a) = &self.alerts {
            a.validate_into(&mut bad);
        }
        if self.fanout.queue_batches == 0 {
            bad.push(Invalid::new("fanout.queue_batches", "must be at least 1"));
        }
        if let Some(r) = &self.redis {
            if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
                bad.push(Invalid::new(
                    "redis.url",
                    "must start with redis:// or rediss:// (TLS)",
                ));
            }
            if r.stream_prefix.is_empty() || r.stream_prefix.contains(['{', '}']) {
                bad.push(Invalid::new(
                    "redis.stream_prefix",
                    "must be non-empty and without braces (the site is the hash tag)",
                ));
            }
            if r.tls_cert_file.is_some() != r.tls_key_file.is_some() {
                bad.push(Invalid::new(
                    "redis.tls_cert_file",
                    "tls_cert_file and tls_key_file go together",
                ));
            }
            if (r.tls_ca_file.is_some() || r.tls_cert_file.is_some())
                && !r.url.starts_with("rediss://")
            {
                bad.push(Invalid::new(
                    "redis.url",
                    "TLS files are set: the URL must be rediss:// (TLS)",
                ));
            }
            if r.max_in_flight == 0 {
                bad.push(Invalid::new("redis.max_in_flight", "must be at least 1"));
            }
            if r.max_len == 0 {
                bad.push(Invalid::new("redis.max_len", "must be at least 1"));
            }
            if r.response_timeout_ms == 0 {
                bad.push(Invalid::new(
                    "redis.response_timeout_ms",
                    "must be at least 1",
                ));
            }
        }
        if self.log.group_commit_max_batches == 0 {
            bad.push(Invalid::new(
                "log.group_commit_max_batches",
                "must be at least 1",
            ));
        }
        if let Some(o) = &self.otlp {
            bad.extend(o.invalid("otlp"));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad)
        }
    }
}

impl AlertsSection {
    fn validate_into(&self, bad: &mut Vec<Invalid>) {
        if self.queue_capacity == 0 {
            bad.push(Invalid::new("alerts.queue_capacity", "must be at least 1"));
        }
        if self.evaluate_queue_batches == 0 {
            bad.push(Invalid::new(
                "alerts.evaluate_queue_batches",
                "must be at least 1",
            ));
        }
        for (i, am) in self.alertmanager.iter().enumerate() {
            let key = |k: &str| format!("alerts.alertmanager[{i}].{k}");
            if let Err(e) = crate::alerts::Endpoint::parse(&am.url) {
                bad.push(Invalid::new(key("url"), e.to_string()));
            }
            if am.resend_interval_secs == 0 {
                bad.push(Invalid::new(
                    key("resend_interval_secs"),
                    "must be at least 1",
                ));
            }
            if am.timeout_ms == 0 {
                bad.push(Invalid::new(key("timeout_ms"), "must be at least 1"));
            }
        }
        if self.redis_stream_max_len == 0 {
            bad.push(Invalid::new(
                "alerts.redis_stream_max_len",
                "must be at least 1",
            ));
        }
        if let Some(t) = &self.kafka_topic {
            // Kafka's own rule for topic names; a bad one would only show as
            // records failing forever.
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if t.is_empty() || t.len() > 249 || !t.chars().all(legal) || t == "." || t == ".." {
                bad.push(Invalid::new(
                    "alerts.kafka_topic",
                    "must be a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -), or be left out for <kafka.topic>.alerts",
                ));
            }
        }
        if self.page_lease_ms < 300 {
            bad.push(Invalid::new("alerts.page_lease_ms", "must be at least 300"));
        }
        if self.kafka_timeout_ms < 1000 {
            // librdkafka reads 0 as "never time out": one attempt could hang forever.
            bad.push(Invalid::new(
                "alerts.kafka_timeout_ms",
                "must be at least 1000",
            ));
        }
        if let Some(pd) = &self.pagerduty {
            if let Err(e) = crate::alerts::Endpoint::parse(&pd.url) {
                bad.push(Invalid::new("alerts.pagerduty.url", e.to_string()));
            }
            if pd.routing_key.trim().is_empty() || pd.routing_key.trim() == "env:" {
                bad.push(Invalid::new(
                    "alerts.pagerduty.routing_key",
                    "needs the integration key, or env:NAME",
                ));
            }
            if pd.timeout_ms == 0 {
                bad.push(Invalid::new(
                    "alerts.pagerduty.timeout_ms",
                    "must be at least 1",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alerts() -> AlertsSection {
        AlertsSection {
            rules: None,
            queue_capacity: 1,
            evaluate_queue_batches: 1,
            evaluate_queue_max_bytes: 1,
            forget_agent_after_secs: 300,
            alertmanager: vec![],
            pagerduty: None,
            redis_stream: true,
            redis_stream_max_len: 100_000,
            page_through_redis: true,
            page_lease_ms: 5000,
            redis_retry_for_secs: 3600,
            kafka: true,
            kafka_topic: None,
            kafka_timeout_ms: 30_000,
            kafka_retry_for_secs: 3600,
        }
    }

    fn bad_keys(a: &AlertsSection) -> Vec<String> {
        let mut bad = Vec::new();
        a.validate_into(&mut bad);
        bad.into_iter().map(|i| i.key).collect()
    }

    #[test]
    fn alert_stream_keys_are_checked() {
        assert!(bad_keys(&alerts()).is_empty());
        for topic in ["", "a b", "x/y", "..", &"t".repeat(250)] {
            let a = AlertsSection {
                kafka_topic: Some(topic.to_string()),
                ..alerts()
            };
            let bad = bad_keys(&a);
            assert!(
                bad.len() == 1 && bad[0].contains("alerts.kafka_topic"),
                "{topic:?}: {bad:?}"
            );
        }
        let a = AlertsSection {
            kafka_topic: Some("ferrule.signals-alerts_1".into()),
            ..alerts()
        };
        assert!(bad_keys(&a).is_empty());
        let a = AlertsSection {
            redis_stream_max_len: 0,
            kafka_timeout_ms: 0,
            ..alerts()
        };
        assert_eq!(bad_keys(&a).len(), 2);
    }

    #[test]
    fn the_alert_topic_defaults_beside_the_batches() {
        let k: KafkaSection = KafkaSection {
            brokers: "b:9092".into(),
            topic: "ferrule.signals".into(),
            format: RecordFormat::Compact,
            compression: "lz4".into(),
            linger_ms: 5,
            batch_bytes: 1,
            message_timeout_ms: 1000,
            queue_max_kbytes: 1,
            client_id: "c".into(),
            routes: vec![],
            properties: Default::default(),
        };
        assert_eq!(alerts().kafka_topic_for(&k), "ferrule.signals.alerts");
        let a = AlertsSection {
            kafka_topic: Some("pages".into()),
            ..alerts()
        };
        assert_eq!(a.kafka_topic_for(&k), "pages");
    }
}
