//! Alert notifiers: the rule engine's `firing` and `resolved` transitions go to
//! Prometheus Alertmanagers, PagerDuty, a Redis stream and a Kafka topic
//! (`pending` and `inactive` never notify: a pending alert may end without ever
//! firing, and a stream's readers want incidents, not the rule engine's
//! bookkeeping).
//!
//! ```text
//! engine ──transition──► Notifiers::send ──► Outbox (per output) ──► task ──► output
//!          (never blocks)                 bounded, dedupe, resend     retry, backoff, timeout
//! ```
//!
//! Each output has its own [`notify::Outbox`] (bounded queue, open alerts) and
//! task, so a dead or slow output delays neither evaluation nor the other outputs:
//! [`Notifiers::send`] only takes each outbox's lock for an enqueue and returns.
//! The decisions (what to drop, dedupe, resend, when to retry or give up) are pure
//! code in [`notify`]; the payloads are built in [`alertmanager`],
//! [`pagerduty`] and [`stream`]; this module and the stream drivers read clocks
//! and move bytes.
//!
//! The outputs: every `[[alerts.alertmanager]]`, `[alerts.pagerduty]`, and, when
//! those sections exist, the stream `{redis.stream_prefix}:alerts` (unless
//! `alerts.redis_stream = false`) and the topic `alerts.kafka_topic` (unless
//! `alerts.kafka = false`). Streams get no resends (a reader has the `firing`
//! until the cap or retention removes it) but the same dedupe: a `firing` for an
//! alert already open is not written again.
//!
//! With `[redis]` (and `alerts.page_through_redis`), the Alertmanagers and
//! PagerDuty are not fed by [`Notifiers::send`] but from the alert stream, by a
//! consumer group each shared by every aggregator ([`page_group`]), so an
//! episode seen by several aggregators pages once.
//!
//! Counters (every label value published at 0 from the start):
//! - `ferrule_aggregator_alert_notifications_total{output,result}`: each attempt,
//!   `result` = `ok`, `error` (no answer, timeout, 429, 5xx, Redis or Kafka
//!   failing: retried), `rejected` (other 4xx: not retried);
//! - `ferrule_aggregator_alert_notifications_dropped_total{output,reason}`:
//!   `queue_full`, `gave_up`, `rejected`;
//! - `ferrule_aggregator_alert_notifications_deduped_total{output}`: a `firing`
//!   for an alert already open (another copy of the same incident);
//! - `ferrule_aggregator_alert_notifications_untracked_total{output}`: firing
//!   alerts beyond [`MAX_OPEN_ALERTS`], sent once but never resent;
//! - gauge `ferrule_aggregator_alert_queue{output}`: notifications waiting.
//!
//! An output's `output` label is `alertmanager:<host:port>`, `pagerduty`,
//! `redis:<stream>` or `kafka:<topic>`.
//!
//! A failing output does not make the aggregator unready: its data path works,
//! and agents failing over would not fix a pager; the counters and logs say it.

pub mod alertmanager;
pub mod evaluate;
mod kafka_topic;
pub mod notify;
pub mod page_group;
pub mod pagerduty;
mod redis_stream;
pub mod stream;

use crate::config::{AlertsSection, KafkaSection, RedisSection};
use ferrule_rules::Transition;
use ferrule_telemetry::{Counter, Gauge, Registry};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use notify::{Backoff, DropReason, Notification, Outbox, Retry, Verdict};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// Open alerts tracked per output for dedupe and resend (a few hundred bytes
/// each). Beyond it a firing alert is still sent, once.
pub const MAX_OPEN_ALERTS: usize = 100_000;

/// How long [`Notifiers::stop`] lets its tasks end by themselves once told.
const STOP_LEAVE: Duration = Duration::from_millis(800);

/// Longest [`Notifiers::stop`] waits for queued notifications to go out.
const STOP_DRAIN: Duration = Duration::from_secs(2);

/// Bytes of an answer read (to log why a request was refused); the rest is dropped.
const MAX_ANSWER_BYTES: usize = 4096;

/// An output's URL, checked: `http` or `https`, with a host.
#[derive(Debug, Clone)]
pub struct Endpoint {
    uri: Uri,
}

/// Why a URL is not usable as an output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Not a URL at all.
    #[error("not a URL: {0}")]
    Invalid(String),
    /// Not `http://` or `https://`.
    #[error("must start with http:// or https://")]
    Scheme,
    /// No host.
    #[error("has no host")]
    NoHost,
}

impl Endpoint {
    /// Parses and checks `url`.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| EndpointError::Invalid(e.to_string()))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(EndpointError::Scheme),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(EndpointError::NoHost);
        }
        Ok(Self { uri })
    }

    /// The same endpoint with `path` appended to its path (trailing `/` trimmed).
    fn join(&self, path: &str) -> Result<Uri, EndpointError> {
        let base = self.uri.to_string();
        let joined = format!("{}{path}", base.trim_end_matches('/'));
        joined
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| EndpointError::Invalid(e.to_string()))
    }

    /// `host:port` (or `host`), for the `output` label: no credentials nor path.
    fn authority(&self) -> String {
        match (self.uri.host(), self.uri.port_u16()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        }
    }
}

/// Why the notifiers could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// An output's URL is unusable.
    #[error("{key}: {source}")]
    Endpoint {
        /// The config key.
        key: String,
        /// What is wrong.
        source: EndpointError,
    },
    /// The PagerDuty routing key names an unset environment variable.
    #[error("alerts.pagerduty.routing_key {0}")]
    Secret(#[from] crate::config::SecretError),
    /// TLS could not be set up.
    #[error("TLS for alert outputs: {0}")]
    Tls(String),
    /// The `[redis]` section cannot make a client for the alert stream.
    #[error("alert stream: {0}")]
    Redis(#[from] crate::fanout::FanoutError),
    /// The `[kafka]` section cannot make the alert producer.
    #[error("alert topic: {0}")]
    Kafka(String),
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client every output shares: HTTP/1.1, http or https (rustls with ring and
/// the platform's roots), connect timeout `connect`.
fn http_client(connect: Duration) -> Result<HttpClient, StartError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "reading the platform's CA certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        // Outputs over plain http (tests, a local Alertmanager) still work;
        // https ones fail their handshakes, counted and logged.
        tracing::warn!("no platform CA certificates found: https alert outputs will fail");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}

/// The counters of one output.
#[derive(Debug, Clone)]
struct OutputCounters {
    ok: Counter,
    error: Counter,
    rejected: Counter,
    dropped_queue_full: Counter,
    dropped_gave_up: Counter,
    dropped_rejected: Counter,
    deduped: Counter,
    untracked: Counter,
    queued: Gauge,
}

const SENT: &str = "ferrule_aggregator_alert_notifications_total";
const SENT_HELP: &str =
    "Alert notification attempts by output and result (ok, error: retried, rejected: not retried)";
const DROPPED: &str = "ferrule_aggregator_alert_notifications_dropped_total";
const DROPPED_HELP: &str =
    "Alert notifications never delivered, by output and reason (queue_full, gave_up, rejected)";

impl OutputCounters {
    fn new(registry: &Registry, output: &str) -> Self {
        let sent =
            |result| registry.counter(SENT, SENT_HELP, &[("output", output), ("result", result)]);
        let dropped = |reason: DropReason| {
            registry.counter(
                DROPPED,
                DROPPED_HELP,
                &[("output", output), ("reason", reason.as_str())],
            )
        };
        Self {
            ok: sent("ok"),
            error: sent("error"),
            rejected: sent("rejected"),
            dropped_queue_full: dropped(DropReason::QueueFull),
            dropped_gave_up: dropped(DropReason::GaveUp),
            dropped_rejected: dropped(DropReason::Rejected),
            deduped: registry.counter(
                "ferrule_aggregator_alert_notifications_deduped_total",
                "Firing notifications not sent because the alert was already open (the same incident)",
                &[("output", output)],
            ),
            untracked: registry.counter(
                "ferrule_aggregator_alert_notifications_untracked_total",
                "Firing alerts beyond the open-alert limit: sent once, never resent nor deduplicated",
                &[("output", output)],
            ),
            queued: registry.gauge(
                "ferrule_aggregator_alert_queue",
                "Alert notifications waiting to be sent",
                &[("output", output)],
            ),
        }
    }

    fn dropped(&self, reason: DropReason, n: u64) {
        match reason {
            DropReason::QueueFull => self.dropped_queue_full.add(n),
            DropReason::GaveUp => self.dropped_gave_up.add(n),
            DropReason::Rejected => self.dropped_rejected.add(n),
        }
    }
}

/// Where and how an HTTP output sends.
#[derive(Debug, Clone)]
enum HttpTarget {
    Alertmanager { uri: Uri, resend: Duration },
    PagerDuty { uri: Uri, routing_key: String },
}

/// How one output's task makes an attempt.
// One per output, moved once into its task: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Sender {
    Http {
        client: HttpClient,
        target: HttpTarget,
        timeout: Duration,
    },
    Redis(redis_stream::RedisStream),
    Kafka(kafka_topic::KafkaTopic),
}

/// What one attempt at a batch ended in.
enum Outcome {
    /// All of it was taken.
    Delivered,
    /// Refused for good, all of it: dropped and counted, not retried.
    Reject(String),
    /// Failed: `again` (all of the batch, or what a partial failure left) is
    /// tried again after a backoff.
    Retry {
        why: String,
        again: Vec<Arc<Notification>>,
    },
}

/// What `send` and an output's task share.
#[derive(Debug)]
struct Output {
    name: String,
    outbox: Mutex<Outbox>,
    wake: Notify,
    counters: OutputCounters,
    /// Fed by [`Notifiers::send`]; false for a pager fed from the alert stream
    /// ([`page_group`]).
    direct: bool,
    /// Alerts forgotten, for a [`page_group`] task to drop from Redis.
    forgets: Mutex<Vec<ferrule_rules::Fingerprint>>,
}

/// What every task shares.
#[derive(Debug, Default)]
struct Shutdown {
    closed: std::sync::atomic::AtomicBool,
    wake: Notify,
}

/// The running notifiers: feed it transitions with [`Notifiers::send`]. Dropping
/// it stops the output tasks (what is queued is not sent).
///
/// ```no_run
/// # async fn f(cfg: ferrule_aggregator::config::Config, t: ferrule_rules::Transition) -> anyhow::Result<()> {
/// # let Some(alerts) = &cfg.alerts else { return Ok(()) };
/// let registry = ferrule_telemetry::Registry::new();
/// let notifiers = ferrule_aggregator::alerts::Notifiers::start(
///     alerts,
///     cfg.redis.as_ref(),
///     cfg.kafka.as_ref(),
///     &registry,
/// )?;
/// notifiers.send(&t); // returns at once, whatever the outputs do
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Notifiers {
    outputs: Vec<Arc<Output>>,
    shutdown: Arc<Shutdown>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Notifiers {
    /// Starts one task per configured output, on the current tokio runtime:
    /// `cfg`'s Alertmanagers and PagerDuty, the alert stream when `redis` is
    /// given (and `cfg.redis_stream`), the alert topic when `kafka` is given
    /// (and `cfg.kafka`). Fails on an unusable URL, an unset `env:` secret, an
    /// unreadable TLS file or a TLS or producer setup error; never on an
    /// output being unreachable (that is retried and counted).
    pub fn start(
        cfg: &AlertsSection,
        redis: Option<&RedisSection>,
        kafka: Option<&KafkaSection>,
        registry: &Registry,
    ) -> Result<Self, StartError> {
        let mut http = Vec::new();
        for (i, am) in cfg.alertmanager.iter().enumerate() {
            let key = format!("alerts.alertmanager[{i}].url");
            let ep = Endpoint::parse(&am.url).map_err(|source| StartError::Endpoint {
                key: key.clone(),
                source,
            })?;
            let uri = ep
                .join(alertmanager::PATH)
                .map_err(|source| StartError::Endpoint { key, source })?;
            http.push((
                format!("alertmanager:{}", ep.authority()),
                HttpTarget::Alertmanager {
                    uri,
                    resend: Duration::from_secs(am.resend_interval_secs.max(1)),
                },
                Duration::from_millis(am.timeout_ms.max(1)),
                Duration::from_secs(am.retry_for_secs),
            ));
        }
        if let Some(pd) = &cfg.pagerduty {
            let ep = Endpoint::parse(&pd.url).map_err(|source| StartError::Endpoint {
                key: "alerts.pagerduty.url".into(),
                source,
            })?;
            http.push((
                "pagerduty".to_string(),
                HttpTarget::PagerDuty {
                    uri: ep.uri.clone(),
                    routing_key: crate::config::resolve_secret(&pd.routing_key)?,
                },
                Duration::from_millis(pd.timeout_ms.max(1)),
                Duration::from_secs(pd.retry_for_secs),
            ));
        }
        // Pagers fed from the alert stream through a consumer group: the
        // stream must be written, and by this aggregator too.
        let paged = match redis {
            Some(r) if cfg.redis_stream && cfg.page_through_redis => Some(r),
            _ => None,
        };
        let instance = crate::instance::name().to_string();
        // (output label, sender, backoff, resend interval, fed from the stream)
        let mut senders: Vec<(String, Sender, Backoff, Option<Duration>, bool)> = Vec::new();
        if !http.is_empty() {
            let connect = http
                .iter()
                .map(|t| t.2)
                .max()
                .unwrap_or(Duration::from_secs(10));
            let client = http_client(connect)?;
            for (name, target, timeout, retry_for) in http {
                let resend = match &target {
                    HttpTarget::Alertmanager { resend, .. } => Some(*resend),
                    HttpTarget::PagerDuty { .. } => None,
                };
                let sender = Sender::Http {
                    client: client.clone(),
                    target,
                    timeout,
                };
                senders.push((
                    name,
                    sender,
                    Backoff::new(retry_for),
                    resend,
                    paged.is_some(),
                ));
            }
        }
        if let (Some(r), true) = (redis, cfg.redis_stream) {
            let out = redis_stream::RedisStream::new(r, cfg.redis_stream_max_len, &instance)?;
            // Redis comes back by itself after a restart or failover: wait no
            // longer between tries than the real-time path does to reconnect.
            let backoff = Backoff {
                max: Duration::from_millis(r.reconnect_max_ms.max(1)),
                ..Backoff::new(Duration::from_secs(cfg.redis_retry_for_secs))
            };
            senders.push((
                format!("redis:{}", out.stream()),
                Sender::Redis(out),
                backoff,
                None,
                false,
            ));
        }
        if let (Some(k), true) = (kafka, cfg.kafka) {
            let out = kafka_topic::KafkaTopic::new(k, cfg.kafka_topic_for(k), cfg.kafka_timeout_ms)
                .map_err(|e| StartError::Kafka(format!("{e:#}")))?;
            senders.push((
                format!("kafka:{}", out.topic()),
                Sender::Kafka(out),
                Backoff::new(Duration::from_secs(cfg.kafka_retry_for_secs)),
                None,
                false,
            ));
        }
        let shutdown = Arc::new(Shutdown::default());
        let mut outputs = Vec::new();
        let mut tasks = Vec::new();
        for (name, sender, backoff, resend, from_stream) in senders {
            let output = Arc::new(Output {
                counters: OutputCounters::new(registry, &name),
                outbox: Mutex::new(Outbox::new(cfg.queue_capacity, MAX_OPEN_ALERTS, resend)),
                wake: Notify::new(),
                direct: !from_stream,
                forgets: Mutex::new(Vec::new()),
                name,
            });
            let driver = Driver {
                output: output.clone(),
                sender,
                backoff,
                shutdown: shutdown.clone(),
            };
            match (paged, from_stream) {
                (Some(r), true) => {
                    let max_batch = driver.max_batch();
                    let group = page_group::PageGroup::new(
                        driver,
                        crate::fanout::redis::target(r)?,
                        &r.stream_prefix,
                        instance.clone(),
                        Duration::from_millis(cfg.page_lease_ms.max(300)),
                        resend,
                        max_batch,
                        Duration::from_millis(r.response_timeout_ms.max(1)),
                        registry,
                    );
                    tasks.push(tokio::spawn(group.run()));
                }
                _ => tasks.push(tokio::spawn(driver.run())),
            }
            outputs.push(output);
        }
        Ok(Self {
            outputs,
            shutdown,
            tasks,
        })
    }

    /// Hands a transition to every output and returns at once: `pending` and
    /// `inactive` are ignored; a full queue drops (and counts) rather than wait.
    pub fn send(&self, t: &Transition) {
        let Some(n) = Notification::from_transition(t) else {
            return;
        };
        let now = wall_ns();
        for o in self.outputs.iter().filter(|o| o.direct) {
            let (offered, len) = {
                let mut outbox = o.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                let offered = outbox.offer(n.clone(), now);
                (offered, outbox.len())
            };
            let c = &o.counters;
            c.queued.set(i64::try_from(len).unwrap_or(i64::MAX));
            if offered.duplicate {
                c.deduped.inc();
            }
            if offered.untracked {
                c.untracked.inc();
            }
            if let Some(d) = offered.dropped {
                c.dropped(DropReason::QueueFull, 1);
                // Not rate-limited as a counter; the log may be noisy in a storm,
                // so it is at debug.
                tracing::debug!(output = %o.name, episode = %d.dedup_key(), "alert queue full: dropped the oldest");
            }
            if offered.queued {
                o.wake.notify_one();
            }
        }
    }

    /// Stops resending alert `fp` on every output (see [`Outbox::forget`]).
    pub fn forget(&self, fp: ferrule_rules::Fingerprint) {
        for o in &self.outputs {
            if o.direct {
                o.outbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget(fp);
            } else {
                page_group::queue_forget(o, fp);
            }
        }
    }

    /// The `output` label of each output: Alertmanagers in config order, then
    /// PagerDuty, the Redis stream, the Kafka topic.
    pub fn outputs(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.name.clone()).collect()
    }

    /// Gives queued notifications up to 2 s to go out, then stops the tasks and
    /// waits for them (what is still queued then is not sent).
    pub async fn stop(mut self) {
        // What the last batches produced (often a `resolved`) gets a moment to
        // go out; a dead output cannot hold the shutdown longer than this.
        let until = Instant::now() + STOP_DRAIN;
        while Instant::now() < until
            && self.outputs.iter().any(|o| {
                !o.outbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_empty()
            })
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.signal_stop();
        // A paging group gives its lease back as it ends (so another aggregator
        // takes over at once): a moment for that, then a task still in a
        // retry's wait or an HTTP request is ended there.
        let until = tokio::time::Instant::now() + STOP_LEAVE;
        for mut t in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout_at(until, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
    }

    fn signal_stop(&self) {
        self.shutdown
            .closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.shutdown.wake.notify_waiters();
    }
}

impl Drop for Notifiers {
    fn drop(&mut self) {
        self.signal_stop();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Wall time, ns since the epoch (for resend schedules and `endsAt`).
fn wall_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What one HTTP attempt ended in.
enum Attempt {
    Status(u16, String),
    Failed(String),
}

/// One output's task.
struct Driver {
    output: Arc<Output>,
    sender: Sender,
    backoff: Backoff,
    shutdown: Arc<Shutdown>,
}

impl Driver {
    fn closed(&self) -> bool {
        self.shutdown
            .closed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notifications per request for this output.
    fn max_batch(&self) -> usize {
        match &self.sender {
            Sender::Http {
                target: HttpTarget::Alertmanager { .. },
                ..
            } => alertmanager::MAX_BATCH,
            Sender::Http {
                target: HttpTarget::PagerDuty { .. },
                ..
            } => 1,
            Sender::Redis(_) | Sender::Kafka(_) => stream::MAX_BATCH,
        }
    }

    async fn run(mut self) {
        let max = self.max_batch();
        while !self.closed() {
            let now = wall_ns();
            let (batch, next_resend, len) = {
                let mut o = self
                    .output
                    .outbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let batch = o.pop_batch(max, now);
                (batch, o.next_resend_ns(), o.len())
            };
            self.output
                .counters
                .queued
                .set(i64::try_from(len).unwrap_or(i64::MAX));
            if batch.is_empty() {
                let wait = next_resend
                    .map(|due| {
                        Duration::from_nanos(u64::try_from(due.saturating_sub(now)).unwrap_or(0))
                    })
                    .unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    () = self.output.wake.notified() => {}
                    () = self.shutdown.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            self.deliver(batch).await;
        }
    }

    /// Sends `batch` until it is delivered, refused, or retried for too long
    /// (true), or the notifiers stop (false).
    async fn deliver(&mut self, batch: Vec<Arc<Notification>>) -> bool {
        self.deliver_while(batch, &|| true).await
    }

    /// [`Self::deliver`], making each attempt only while `may()` holds (a
    /// paging group's lease): false, not delivered, once it does not.
    async fn deliver_while(
        &mut self,
        batch: Vec<Arc<Notification>>,
        may: &(dyn Fn() -> bool + Sync),
    ) -> bool {
        let first = Instant::now();
        let c = self.output.counters.clone();
        let mut pending = batch;
        for attempt in 1u32.. {
            if self.closed() {
                return false;
            }
            if !may() {
                tracing::info!(output = %self.output.name, notifications = pending.len(), "no longer allowed to deliver (paging lease lost): left to the next holder");
                return false;
            }
            let why = match self.attempt(&pending).await {
                Outcome::Delivered => {
                    c.ok.inc();
                    if attempt > 1 {
                        tracing::info!(output = %self.output.name, attempt, notifications = pending.len(), "alert notifications delivered after retrying");
                    } else {
                        tracing::debug!(output = %self.output.name, notifications = pending.len(), "alert notifications delivered");
                    }
                    return true;
                }
                Outcome::Reject(why) => {
                    c.rejected.inc();
                    c.dropped(DropReason::Rejected, pending.len() as u64);
                    tracing::warn!(output = %self.output.name, answer = %why, notifications = pending.len(), "alert output refused notifications; not retried");
                    return true;
                }
                Outcome::Retry { why, again } => {
                    pending = again;
                    why
                }
            };
            c.error.inc();
            if pending.is_empty() {
                return true;
            }
            match self.backoff.next(attempt, first.elapsed(), fastrand::f64()) {
                Retry::After(wait) => {
                    tracing::warn!(output = %self.output.name, attempt, error = %why, retry_in_ms = wait.as_millis() as u64, "alert notification failed");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.shutdown.wake.notified() => return false,
                    }
                }
                Retry::GiveUp => {
                    c.dropped(DropReason::GaveUp, pending.len() as u64);
                    tracing::error!(output = %self.output.name, attempt, error = %why, notifications = pending.len(), "alert notification failed; giving up");
                    return true;
                }
            }
        }
        // u32 attempts run out only after decades of backoff.
        true
    }

    async fn attempt(&mut self, batch: &[Arc<Notification>]) -> Outcome {
        match &mut self.sender {
            Sender::Http {
                client,
                target,
                timeout,
            } => match http_attempt(client, target, *timeout, batch).await {
                Attempt::Status(status, answer) => match Verdict::of_status(status) {
                    Verdict::Delivered => Outcome::Delivered,
                    Verdict::Reject => Outcome::Reject(format!("HTTP {status}: {answer}")),
                    Verdict::Retry => Outcome::Retry {
                        why: format!("HTTP {status}: {answer}"),
                        again: batch.to_vec(),
                    },
                },
                Attempt::Failed(why) => Outcome::Retry {
                    why,
                    again: batch.to_vec(),
                },
            },
            Sender::Redis(r) => r.attempt(batch).await,
            Sender::Kafka(k) => k.attempt(batch).await,
        }
    }
}

/// One POST with the request timeout over connect, send and the answer.
async fn http_attempt(
    client: &HttpClient,
    target: &HttpTarget,
    timeout: Duration,
    batch: &[Arc<Notification>],
) -> Attempt {
    let (uri, body) = match target {
        HttpTarget::Alertmanager { uri, resend } => {
            (uri.clone(), alertmanager::body(batch, wall_ns(), *resend))
        }
        HttpTarget::PagerDuty { uri, routing_key } => {
            let body = batch
                .first()
                .map(|n| pagerduty::event(n, routing_key).to_string().into_bytes())
                .unwrap_or_default();
            (uri.clone(), body)
        }
    };
    let req = match hyper::Request::post(uri)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("ferrule-aggregator/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
    {
        Ok(r) => r,
        Err(e) => return Attempt::Failed(format!("building the request: {e}")),
    };
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            // hyper-util's error says "client error (Connect)"; the cause says why.
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(cause) = src {
                s.push_str(": ");
                s.push_str(&cause.to_string());
                src = cause.source();
            }
            s
        })?;
        let status = resp.status().as_u16();
        let mut answer = Vec::new();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
            if let Some(data) = frame.data_ref() {
                let room = MAX_ANSWER_BYTES.saturating_sub(answer.len());
                answer.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        Ok::<_, String>((status, String::from_utf8_lossy(&answer).into_owned()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((status, answer))) => Attempt::Status(status, answer),
        Ok(Err(why)) => Attempt::Failed(why),
        Err(_) => Attempt::Failed(format!("no answer within {} ms", timeout.as_millis())),
    }
}
