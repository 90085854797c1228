//! The Redis Streams fan-out: one stream per site, `{prefix}:{site}`, an entry
//! per batch with the fields `agent`, `epoch`, `seq`, `samples` and `record`
//! (the committed record, the same bytes the Kafka sink writes). Consumers read
//! with consumer groups, each at its own pace, and drop repeats by
//! (agent, epoch, seq).
//!
//! The writer is one task: it takes up to `max_in_flight` queued batches at a
//! time and pipelines their `XADD`s (one pipeline per stream, so a Cluster
//! routes each to its slot's node). A second task, every `trim_interval_ms`,
//! trims each stream written to down to what every consumer group is done with
//! ([`super::trim`]), so trimming many streams never holds up the writes.
//! `XADD ... MAXLEN ~ max_len` caps memory whatever the groups do; entries a
//! slow group loses to the cap are counted per group.
//!
//! Redis down, slow or refusing never reaches the durable path: the driver
//! skips (and counts) what it cannot write, reconnects with jittered
//! exponential backoff, and reports `redis` as a *degraded* cause. What it holds
//! is bounded by the fan-out queue and `max_in_flight`.

use super::backoff::{Backoff, Jitter};
use super::trim::{lost_by_ids, lost_to_trimming, safe_trim_point, GroupPos, StreamId};
use super::Degraded;
use super::{stream_key, Entry, FanoutError, FanoutMetrics, Inbox};
use crate::config::RedisSection;
use redis::{IntoConnectionInfo, RedisError, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Streams the driver remembers writing to (and so trims). Sites are bounded by
/// the certificates issued; this only guards against a surprise.
const MAX_TRACKED_STREAMS: usize = 100_000;
/// First reconnect delay; doubles up to `redis.reconnect_max_ms`.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// How long a group's loss stays a degraded cause after the last one.
const GROUP_LOSS_SHOWN: Duration = Duration::from_secs(300);

/// The running Redis fan-out.
pub struct RedisFanout {
    task: tokio::task::JoinHandle<()>,
    degraded: Arc<Degraded>,
    local: super::embedded::Subscriptions,
}

/// A connection to one Redis or to a cluster. Both are multiplexed and cheap
/// to clone, so pipelines for several streams run at once. Shared with the
/// alert stream output ([`crate::alerts`]), which connects the same way.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    pub(crate) async fn pipe(&mut self, p: &redis::Pipeline) -> Result<Value, RedisError> {
        match self {
            Conn::Single(c) => p.query_async(c).await,
            Conn::Cluster(c) => p.query_async(c).await,
        }
    }

    pub(crate) async fn cmd(&mut self, c: &redis::Cmd) -> Result<Value, RedisError> {
        match self {
            Conn::Single(conn) => c.query_async(conn).await,
            Conn::Cluster(conn) => c.query_async(conn).await,
        }
    }
}

/// Where to connect.
pub(crate) enum Target {
    Single(redis::Client, redis::AsyncConnectionConfig),
    Cluster(redis::cluster::ClusterClient),
}

impl Target {
    pub(crate) async fn connect(&self) -> Result<Conn, RedisError> {
        match self {
            Target::Single(client, config) => Ok(Conn::Single(
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await?,
            )),
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}

/// `env:NAME` reads NAME from the environment; anything else is the value.
fn secret(key: &'static str, v: &Option<String>) -> Result<Option<String>, FanoutError> {
    match v {
        None => Ok(None),
        Some(v) => match v.strip_prefix("env:") {
            Some(var) => std::env::var(var)
                .map(Some)
                .map_err(|_| FanoutError::MissingEnv {
                    key,
                    var: var.to_string(),
                }),
            None => Ok(Some(v.clone())),
        },
    }
}

fn read_pem(
    key: &'static str,
    path: &Option<std::path::PathBuf>,
) -> Result<Option<Vec<u8>>, FanoutError> {
    path.as_ref()
        .map(|p| {
            std::fs::read(p).map_err(|source| FanoutError::TlsFile {
                key,
                path: p.clone(),
                source,
            })
        })
        .transpose()
}

/// The CA and client certificate for `rediss://`, when any is configured
/// (else the system trust store and no client certificate).
fn tls_files(cfg: &RedisSection) -> Result<Option<redis::TlsCertificates>, FanoutError> {
    let root_cert = read_pem("tls_ca_file", &cfg.tls_ca_file)?;
    let client_tls = match (
        read_pem("tls_cert_file", &cfg.tls_cert_file)?,
        read_pem("tls_key_file", &cfg.tls_key_file)?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        _ => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// The client for `cfg`: URL, credentials (`env:` read now), TLS files, and
/// the connect and response timeouts.
pub(crate) fn target(cfg: &RedisSection) -> Result<Target, FanoutError> {
    let tls = tls_files(cfg)?;
    let username = secret("username", &cfg.username)?;
    let password = secret("password", &cfg.password)?;
    let timeout = Duration::from_millis(cfg.response_timeout_ms.max(1));
    if cfg.cluster {
        let mut b = redis::cluster::ClusterClientBuilder::new(vec![cfg.url.as_str()])
            .connection_timeout(timeout)
            .response_timeout(timeout)
            // The driver retries by itself, with backoff and counting.
            .retries(1);
        if let Some(u) = username {
            b = b.username(u);
        }
        if let Some(p) = password {
            b = b.password(p);
        }
        if let Some(certs) = tls {
            b = b.certs(certs);
        }
        return Ok(Target::Cluster(
            b.build().map_err(|e| FanoutError::BadUrl(e.to_string()))?,
        ));
    }
    let client = client(cfg, tls, username, password)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    Ok(Target::Single(client, config))
}

/// A client for the one node at `cfg.url` (with a cluster: the node
/// configured, for pub/sub, which a cluster relays to every node).
pub(crate) fn single_client(cfg: &RedisSection) -> Result<redis::Client, FanoutError> {
    let tls = tls_files(cfg)?;
    let username = secret("username", &cfg.username)?;
    let password = secret("password", &cfg.password)?;
    client(cfg, tls, username, password)
}

fn client(
    cfg: &RedisSection,
    tls: Option<redis::TlsCertificates>,
    username: Option<String>,
    password: Option<String>,
) -> Result<redis::Client, FanoutError> {
    let info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| FanoutError::BadUrl(e.to_string()))?;
    let mut settings = info.redis_settings().clone();
    if let Some(u) = username {
        settings = settings.set_username(u);
    }
    if let Some(p) = password {
        settings = settings.set_password(p);
    }
    let info = info.set_redis_settings(settings);
    match tls {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    }
    .map_err(|e| FanoutError::BadUrl(e.to_string()))
}

impl RedisFanout {
    /// Starts the driver on the fan-out queue `rx`. Connects in the background:
    /// an unreachable Redis is a degraded cause, not a failure to start.
    pub fn start(
        cfg: &RedisSection,
        rx: Inbox,
        metrics: FanoutMetrics,
        local: super::embedded::Subscriptions,
    ) -> Result<RedisFanout, FanoutError> {
        let target = target(cfg)?;
        let degraded = Arc::new(Degraded::default());
        metrics.degraded("redis", false);
        metrics.degraded("redis_group_lost", false);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let streams: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let (conn_tx, conn_rx) = watch::channel(None);
        if cfg.trim_interval_ms > 0 {
            // Its own task: trimming many streams (a few round trips each) never
            // holds up the XADDs.
            let trimmer = Trimmer {
                response_timeout: Duration::from_millis(cfg.response_timeout_ms.max(1)),
                conn: conn_rx,
                streams: streams.clone(),
                metrics: metrics.clone(),
                degraded: degraded.clone(),
                group_reported: HashMap::new(),
                removed_before: HashMap::new(),
                last_group_loss: None,
                streams_key: crate::sampler::Keys::new(&cfg.stream_prefix).streams,
                registered: None,
            };
            tokio::spawn(trimmer.run(Duration::from_millis(cfg.trim_interval_ms)));
        }
        let driver = Driver {
            cfg: cfg.clone(),
            target,
            conn: None,
            conn_tx,
            backoff: Backoff::new(
                RECONNECT_FIRST,
                Duration::from_millis(cfg.reconnect_max_ms.max(1)),
            ),
            jitter: Jitter::new(seed),
            next_try: Instant::now(),
            metrics,
            degraded: degraded.clone(),
            streams,
            down: None,
        };
        let task = tokio::spawn(driver.run(rx));
        Ok(RedisFanout {
            task,
            degraded,
            local,
        })
    }

    /// Where consumers in this process subscribe: they get what this
    /// aggregator publishes, before it is written to Redis.
    pub fn local(&self) -> super::embedded::Subscriptions {
        self.local.clone()
    }

    /// Why the real-time path is degraded (`redis`: no connection or failing
    /// commands; `redis_group_lost`: a group lost entries to the cap).
    pub fn degraded(&self) -> Arc<Degraded> {
        self.degraded.clone()
    }

    /// Writes what is queued, then stops (every publisher dropped).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Since when Redis is unusable, and what was skipped meanwhile (for the log
/// line when it comes back).
struct Down {
    since: Instant,
    skipped: u64,
}

struct Driver {
    cfg: RedisSection,
    target: Target,
    conn: Option<Conn>,
    backoff: Backoff,
    jitter: Jitter,
    next_try: Instant,
    metrics: FanoutMetrics,
    degraded: Arc<Degraded>,
    /// The connection, for the trimmer.
    conn_tx: watch::Sender<Option<Conn>>,
    /// Streams written to (so trimmed), shared with the trimmer.
    streams: Arc<Mutex<BTreeSet<String>>>,
    down: Option<Down>,
}

/// The trimming task: every `trim_interval_ms`, each stream written to is
/// trimmed to what its groups are done with, and groups' losses to the cap are
/// counted. Connection problems are the writer's to notice and repair.
struct Trimmer {
    response_timeout: Duration,
    conn: watch::Receiver<Option<Conn>>,
    streams: Arc<Mutex<BTreeSet<String>>>,
    metrics: FanoutMetrics,
    degraded: Arc<Degraded>,
    /// What was counted so far as each (stream, group)'s loss.
    group_reported: HashMap<(String, String), u64>,
    /// Entries removed from each stream at the last trim pass.
    removed_before: HashMap<String, u64>,
    last_group_loss: Option<Instant>,
    /// The sampler's set of streams (see [`crate::sampler`]), and when this
    /// aggregator's streams were last added to it: again every
    /// [`STREAMS_REREGISTER`], so a Redis restarted empty learns them back.
    streams_key: String,
    registered: Option<Instant>,
}

/// How often the streams written are added to the sampler's set again.
const STREAMS_REREGISTER: Duration = Duration::from_secs(30);

/// Whether an error means the connection is unusable (rebuild it) rather
/// than Redis refusing one command.
/// The error for a Redis command or connection that got no answer within
/// its timeout (shared by every caller that wraps one in `tokio::time::timeout`).
pub(crate) fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer from Redis",
    ))
}

pub(crate) fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(crate) fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// A reply's key/value pairs (RESP2 flat arrays or RESP3 maps).
pub(crate) fn fields(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Array(a) => a
            .chunks_exact(2)
            .filter_map(|c| Some((text(&c[0])?, &c[1])))
            .collect(),
        Value::Map(m) => m.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
        _ => Vec::new(),
    }
}

fn field<'a>(f: &'a [(String, &'a Value)], key: &str) -> Option<&'a Value> {
    f.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

pub(crate) fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

impl Driver {
    async fn run(mut self, mut rx: Inbox) {
        let limit = self.cfg.max_in_flight.max(1);
        let mut buf = Vec::with_capacity(limit);
        loop {
            let reconnect = tokio::time::Instant::from_std(self.next_try);
            tokio::select! {
                n = rx.recv_many(&mut buf, limit) => {
                    if n == 0 {
                        break;
                    }
                    self.write(&mut buf).await;
                }
                _ = tokio::time::sleep_until(reconnect), if self.conn.is_none() => self.connect().await,
            }
        }
        tracing::info!("redis fan-out stopped");
    }

    async fn connect(&mut self) {
        let timeout = Duration::from_millis(self.cfg.response_timeout_ms.max(1));
        let result = match tokio::time::timeout(timeout * 2, self.target.connect()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("connect timed out".into()),
        };
        match result {
            Ok(c) => {
                self.conn_tx.send_replace(Some(c.clone()));
                self.conn = Some(c);
                self.backoff.reset();
                self.degraded.clear("redis");
                self.metrics.degraded("redis", false);
                match self.down.take() {
                    Some(d) => tracing::info!(
                        after_ms = d.since.elapsed().as_millis() as u64,
                        skipped = d.skipped,
                        "redis reachable again; real-time path resumed"
                    ),
                    None => tracing::info!(url = %redact(&self.cfg.url), "redis fan-out connected"),
                }
            }
            Err(e) => self.lost(&e),
        }
    }

    /// The connection is unusable: degrade, and try again after a backoff.
    fn lost(&mut self, why: &str) {
        self.conn = None;
        self.conn_tx.send_replace(None);
        let delay = self.backoff.next_delay(self.jitter.next_unit());
        self.next_try = Instant::now() + delay;
        if self.down.is_none() {
            tracing::warn!(error = %why, "redis unreachable; the real-time path skips batches (counted) until it is back; commits and acks go on");
            self.down = Some(Down {
                since: Instant::now(),
                skipped: 0,
            });
        }
        self.degraded.set(
            "redis",
            format!(
                "redis (real-time path only): {why}; retrying in {} ms",
                delay.as_millis()
            ),
        );
        self.metrics.degraded("redis", true);
    }

    fn skip(&mut self, stream: &str, reason: &str, n: u64) {
        self.metrics.skipped(stream, reason, n);
        if let Some(d) = &mut self.down {
            d.skipped += n;
        }
    }

    async fn write(&mut self, buf: &mut Vec<Entry>) {
        let mut by_stream: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for e in buf.drain(..) {
            by_stream
                .entry(stream_key(&self.cfg.stream_prefix, &e.site))
                .or_default()
                .push(e);
        }
        let Some(conn) = self.conn.clone() else {
            for (stream, entries) in &by_stream {
                self.skip(stream, "redis_down", entries.len() as u64);
            }
            return;
        };
        let timeout = Duration::from_millis(self.cfg.response_timeout_ms.max(1));
        let mut set = tokio::task::JoinSet::new();
        for (stream, entries) in by_stream {
            let mut p = redis::pipe();
            for e in &entries {
                p.cmd("XADD")
                    .arg(&stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.cfg.max_len)
                    .arg("*")
                    .arg("agent")
                    .arg(&*e.agent)
                    .arg("epoch")
                    .arg(e.epoch.0)
                    .arg("seq")
                    .arg(e.seq.0)
                    .arg("samples")
                    .arg(e.samples)
                    .arg("record")
                    .arg(&*e.record);
            }
            let mut conn = conn.clone();
            let n = entries.len() as u64;
            set.spawn(async move {
                let r = match tokio::time::timeout(timeout, conn.pipe(&p)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err((connection_lost(&e), e.to_string())),
                    Err(_) => Err((true, format!("no answer within {} ms", timeout.as_millis()))),
                };
                (stream, n, r)
            });
        }
        let mut lost: Option<String> = None;
        while let Some(joined) = set.join_next().await {
            let Ok((stream, n, r)) = joined else { continue };
            match r {
                Ok(()) => {
                    self.metrics.delivered.add(n);
                    let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
                    if !streams.contains(&stream) && streams.len() < MAX_TRACKED_STREAMS {
                        // A new stream: its skip series exist at 0 from now on,
                        // so rate() and alerts have them before the first skip.
                        for reason in super::SKIP_REASONS {
                            self.metrics.skipped(&stream, reason, 0);
                        }
                        // The sampler reads every stream's groups from this
                        // set (best effort: it is written again after a restart).
                        let mut sadd = redis::cmd("SADD");
                        sadd.arg(crate::sampler::Keys::new(&self.cfg.stream_prefix).streams)
                            .arg(&stream);
                        let mut c = conn.clone();
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(timeout, c.cmd(&sadd)).await;
                        });
                        streams.insert(stream);
                    }
                }
                Err((true, why)) => {
                    // Some of a failed pipeline may have been added: counted as
                    // skipped all the same (consumers drop repeats if resent).
                    self.skip(&stream, "redis_error", n);
                    lost = Some(why);
                }
                Err((false, why)) => {
                    self.skip(&stream, "redis_refused", n);
                    tracing::warn!(stream, error = %why, "redis refused entries (real-time path only)");
                }
            }
        }
        if let Some(why) = lost {
            self.lost(&why);
        }
    }
}

impl Trimmer {
    async fn run(mut self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.trim_all().await,
                changed = self.conn.changed() => if changed.is_err() {
                    // The writer stopped.
                    return;
                },
            }
        }
    }

    async fn trim_all(&mut self) {
        let streams: Vec<String> = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        if self
            .registered
            .is_none_or(|t| t.elapsed() >= STREAMS_REREGISTER)
        {
            let Some(mut conn) = self.conn.borrow().clone() else {
                return;
            };
            let mut ok = true;
            for chunk in streams.chunks(1000) {
                let mut sadd = redis::cmd("SADD");
                sadd.arg(&self.streams_key).arg(chunk);
                let r = tokio::time::timeout(self.response_timeout, conn.cmd(&sadd)).await;
                ok &= matches!(r, Ok(Ok(_)));
            }
            if ok {
                self.registered = Some(Instant::now());
            }
        }
        for s in streams {
            let Some(mut conn) = self.conn.borrow().clone() else {
                return;
            };
            let timeout = self.response_timeout * 4;
            match tokio::time::timeout(timeout, self.trim(&mut conn, &s)).await {
                Ok(Ok(())) => {}
                // The writer notices a lost connection by itself.
                Ok(Err(e)) if connection_lost(&e) => return,
                Ok(Err(e)) => tracing::debug!(stream = s, error = %e, "trimming failed"),
                Err(_) => return,
            }
        }
        if self
            .last_group_loss
            .is_some_and(|t| t.elapsed() >= GROUP_LOSS_SHOWN)
        {
            self.last_group_loss = None;
            self.degraded.clear("redis_group_lost");
            self.metrics.degraded("redis_group_lost", false);
        }
    }

    /// One stream: trim to what every group is done with, then count what
    /// groups lost to the cap.
    async fn trim(&mut self, conn: &mut Conn, stream: &str) -> Result<(), RedisError> {
        let reply = conn
            .cmd(redis::cmd("XINFO").arg("GROUPS").arg(stream))
            .await?;
        let mut groups = Vec::new();
        for g in items(&reply) {
            let f = fields(g);
            let (Some(name), Some(last)) = (
                field(&f, "name").and_then(text),
                field(&f, "last-delivered-id")
                    .and_then(text)
                    .and_then(|s| StreamId::parse(&s)),
            ) else {
                continue;
            };
            let pending = field(&f, "pending").and_then(number).unwrap_or(0);
            let oldest_pending = if pending > 0 {
                let p = conn
                    .cmd(redis::cmd("XPENDING").arg(stream).arg(&name))
                    .await?;
                items(&p)
                    .get(1)
                    .and_then(text)
                    .and_then(|s| StreamId::parse(&s))
            } else {
                None
            };
            groups.push(GroupPos {
                name,
                last_delivered: last,
                oldest_pending,
                entries_read: field(&f, "entries-read").and_then(number),
            });
        }
        if let Some(point) = safe_trim_point(&groups) {
            conn.cmd(
                redis::cmd("XTRIM")
                    .arg(stream)
                    .arg("MINID")
                    .arg(point.to_string()),
            )
            .await?;
        }
        if groups.is_empty() {
            return Ok(());
        }
        let info = conn
            .cmd(redis::cmd("XINFO").arg("STREAM").arg(stream))
            .await?;
        let f = fields(&info);
        let length = field(&f, "length").and_then(number).unwrap_or(0);
        let added = field(&f, "entries-added").and_then(number);
        let first = field(&f, "first-entry")
            .and_then(|e| items(e).first())
            .and_then(text)
            .and_then(|s| StreamId::parse(&s));
        let removed = added.map(|a| a.saturating_sub(length));
        let removed_before = self
            .removed_before
            .insert(stream.to_string(), removed.unwrap_or(0));
        for g in &groups {
            // Cumulative loss, from the exact counters where Redis has them;
            // else, judged by ids, everything removed since the last pass.
            let total = match added.and_then(|a| lost_to_trimming(a, length, g.entries_read)) {
                Some(t) => t,
                None => {
                    let now_removed = removed.unwrap_or(0);
                    let since = now_removed.saturating_sub(removed_before.unwrap_or(now_removed));
                    let key = (stream.to_string(), g.name.clone());
                    let before = self.group_reported.get(&key).copied().unwrap_or(0);
                    if lost_by_ids(g, first, since > 0) {
                        before + since
                    } else {
                        before
                    }
                }
            };
            let key = (stream.to_string(), g.name.clone());
            // First sight of a group: its past is its baseline (what it lost
            // before this process watched is not this process's to count).
            let Some(before) = self.group_reported.get(&key).copied() else {
                self.group_reported.insert(key, total);
                self.metrics.group_lost(stream, &g.name, 0);
                continue;
            };
            if total > before {
                let n = total - before;
                self.metrics.group_lost(stream, &g.name, n);
                self.group_reported.insert(key, total);
                self.last_group_loss = Some(Instant::now());
                tracing::warn!(stream, group = %g.name, lost = n, "consumer group fell behind the max_len cap and lost entries");
                self.degraded.set(
                    "redis_group_lost",
                    format!(
                        "redis (real-time path only): consumer group {:?} on {stream} lost {total} entries to redis.max_len",
                        g.name
                    ),
                );
                self.metrics.degraded("redis_group_lost", true);
            }
        }
        Ok(())
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets_in_logs() {
        assert_eq!(redact("redis://u:pw@h:6379"), "redis://***@h:6379");
        assert_eq!(redact("rediss://h:6380"), "rediss://h:6380");
    }

    #[test]
    fn secrets_come_from_the_environment_when_asked() {
        assert_eq!(secret("password", &None).ok(), Some(None));
        assert_eq!(
            secret("password", &Some("plain".into())).ok(),
            Some(Some("plain".into()))
        );
        let missing = secret(
            "password",
            &Some("env:FERRULE_TEST_SURELY_UNSET_VAR".into()),
        );
        assert!(
            matches!(
                missing,
                Err(FanoutError::MissingEnv {
                    key: "password",
                    ..
                })
            ),
            "{missing:?}"
        );
    }

    #[test]
    fn replies_parse_in_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![
            bulk("name"),
            bulk("g1"),
            bulk("pending"),
            Value::Int(3),
        ]);
        let f = fields(&resp2);
        assert_eq!(field(&f, "name").and_then(text).as_deref(), Some("g1"));
        assert_eq!(field(&f, "pending").and_then(number), Some(3));
        let resp3 = Value::Map(vec![(bulk("entries-read"), Value::Nil)]);
        let f = fields(&resp3);
        assert_eq!(field(&f, "entries-read").and_then(number), None);
        assert!(field(&f, "missing").is_none());
    }
}
