//! The fan-out: the real-time path. Every batch is published here as it
//! arrives, in parallel with its durable commit, for consumers (alerts,
//! exporters, dashboards) that read at their own pace.
//!
//! Invariants (ARCHITECTURE.md, invariant 5):
//! - **Neither path waits for the other.** [`Publisher::publish`] never waits: a
//!   bounded queue ([`FanoutSection::queue_batches`] and `queue_max_bytes`) sits
//!   between ingest and the fan-out; when it is full the batch is skipped for the real-time path and
//!   counted (`ferrule_aggregator_fanout_skipped_total{stream,reason}`). Commits
//!   and acks never look at the fan-out, and the fan-out never waits for a commit.
//! - **Published once per (agent, epoch, seq) if it can be.** A bounded
//!   recent-seen set ([`seen`]) drops a batch the agent resends after a failed
//!   commit when the real-time path already had it. Forgetting (to stay bounded)
//!   only ever republishes; consumers drop repeats by that key.
//! - **Every skip is counted with its reason**, per stream: `queue_full`,
//!   `redis_down` (no connection), `redis_error` (the command failed or timed
//!   out), `redis_refused` (Redis answered with an error, e.g. OOM), `closed`.
//! - **Bounded memory**: the queue, the in-flight commands
//!   (`redis.max_in_flight`), each embedded consumer's queue and the seen set
//!   all have limits.
//!
//! Two implementations behind [`Fanout`]: [`embedded`] (in-process, the default:
//! [`Fanout::subscribe`] gives a consumer its own bounded queue that drops its
//! oldest entries when it falls behind) and [`redis`] (Redis Streams, one stream
//! per site, trimmed by what consumer groups still need; see [`trim`]).
//!
//! Problems of the real-time path never make the aggregator unready: they are
//! *degraded* causes ([`Fanout::degraded`]), shown in the `/healthz` body and the
//! `ferrule_aggregator_fanout_degraded` gauge, while `/healthz` answers by the
//! durable path alone.

pub mod backoff;
pub mod embedded;
pub mod redis;
pub mod seen;
pub mod trim;

use crate::config::{FanoutSection, RedisSection};
use embedded::Subscriptions;
use ferrule_telemetry::{Counter, Registry};
use ferrule_wire::{Epoch, Seq};
use seen::{RecentSeen, SeenBounds};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;

/// The fan-out's end of the queue between ingest and the fan-out: taking an
/// entry releases its bytes, so the publisher's byte bound holds.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Entry>,
    bytes: Arc<AtomicU64>,
}

impl Inbox {
    /// The next entry; `None` once every publisher is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Entry> {
        let e = self.rx.recv().await?;
        self.bytes
            .fetch_sub(e.record.len() as u64, Ordering::Relaxed);
        Some(e)
    }

    /// Up to `limit` entries into `buf` (at least one unless closed); how many.
    pub async fn recv_many(&mut self, buf: &mut Vec<Entry>, limit: usize) -> usize {
        let start = buf.len();
        let n = self.rx.recv_many(buf, limit).await;
        let taken: u64 = buf[start..].iter().map(|e| e.record.len() as u64).sum();
        self.bytes.fetch_sub(taken, Ordering::Relaxed);
        n
    }
}

/// Why the real-time path is degraded, by cause: what `/healthz` shows beside
/// the durable path's readiness, never instead of it. Unlike
/// [`ferrule_telemetry::Health`] nothing here makes the process unready, and a
/// cause appearing is logged as a warning, not as the process being unhealthy.
///
/// ```
/// let d = ferrule_aggregator::fanout::Degraded::default();
/// d.set("redis", "redis (real-time path only): connection refused");
/// assert!(d.check().is_some());
/// d.clear("redis");
/// assert_eq!(d.check(), None);
/// ```
#[derive(Debug, Default)]
pub struct Degraded {
    causes: Mutex<BTreeMap<&'static str, String>>,
}

impl Degraded {
    /// `cause` degrades the real-time path, for this reason.
    pub fn set(&self, cause: &'static str, why: impl Into<String>) {
        let why = why.into();
        let mut c = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        if !c.contains_key(cause) {
            tracing::warn!(cause, reason = %why, "real-time path degraded (the durable path is not affected)");
        }
        c.insert(cause, why);
    }

    /// `cause` no longer holds.
    pub fn clear(&self, cause: &'static str) {
        let mut c = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = c.remove(cause) {
            tracing::info!(cause, was = %old, "real-time path no longer degraded by this cause");
        }
    }

    /// The reasons, joined, if any cause holds.
    pub fn check(&self) -> Option<String> {
        let c = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        (!c.is_empty()).then(|| c.values().cloned().collect::<Vec<_>>().join("; "))
    }
}

/// One batch on the real-time path: the committed record (the same bytes the
/// durable sink gets, see `wire/README.md`) with its key.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The agent's site (from its certificate).
    pub site: Arc<str>,
    /// The agent's name (from its certificate).
    pub agent: Arc<str>,
    /// The agent's epoch.
    pub epoch: Epoch,
    /// The batch's sequence number.
    pub seq: Seq,
    /// Samples in the record.
    pub samples: u32,
    /// The committed record bytes.
    pub record: Arc<[u8]>,
}

/// Why a batch did not reach the real-time path.
pub const SKIP_REASONS: &[&str] = &[
    "queue_full",
    "redis_down",
    "redis_error",
    "redis_refused",
    "closed",
];

const SKIPPED: &str = "ferrule_aggregator_fanout_skipped_total";
const SKIPPED_HELP: &str =
    "Batches the real-time path skipped (the durable path still has them), by stream and reason";
const LAGGED: &str = "ferrule_aggregator_fanout_lagged_total";
const LAGGED_HELP: &str =
    "Entries an embedded fan-out consumer lost because it fell behind its queue capacity (oldest first)";
const GROUP_LOST: &str = "ferrule_aggregator_fanout_group_lost_total";
const GROUP_LOST_HELP: &str =
    "Entries a Redis consumer group never read that the max_len cap trimmed away";
const DEGRADED: &str = "ferrule_aggregator_fanout_degraded";
const DEGRADED_HELP: &str =
    "1 while the real-time path is degraded for this cause (the durable path and readiness are not affected)";

/// The fan-out's counters.
#[derive(Debug, Clone)]
pub struct FanoutMetrics {
    registry: Registry,
    /// Batches handed to the fan-out.
    pub published: Counter,
    /// Batches delivered by the backend (added to a stream, or pushed to the
    /// embedded consumers).
    pub delivered: Counter,
    /// Resent batches the real-time path already had, not published again.
    pub repeats: Counter,
    /// Agents, epochs and ranges the seen set forgot to stay bounded.
    pub seen_forgotten: Counter,
}

impl FanoutMetrics {
    /// Registers the fan-out's counters.
    pub fn new(registry: &Registry) -> Self {
        Self {
            registry: registry.clone(),
            published: registry.counter(
                "ferrule_aggregator_fanout_published_total",
                "Batches queued for the real-time path",
                &[],
            ),
            delivered: registry.counter(
                "ferrule_aggregator_fanout_delivered_total",
                "Batches the real-time path delivered (added to a Redis stream, or given to the embedded consumers)",
                &[],
            ),
            repeats: registry.counter(
                "ferrule_aggregator_fanout_repeats_total",
                "Resent batches the real-time path already had, not published again",
                &[],
            ),
            seen_forgotten: registry.counter(
                "ferrule_aggregator_fanout_seen_forgotten_total",
                "Agents, epochs or seq ranges the recent-seen set forgot to stay bounded (a resend from them is published again: a duplicate, never a loss)",
                &[],
            ),
        }
    }

    /// Counts `n` batches skipped for `stream`, by `reason` (one of [`SKIP_REASONS`]).
    pub fn skipped(&self, stream: &str, reason: &str, n: u64) {
        self.registry
            .counter(
                SKIPPED,
                SKIPPED_HELP,
                &[("stream", stream), ("reason", reason)],
            )
            .add(n);
    }

    /// Counts entries an embedded consumer lost by falling behind.
    pub fn lagged(&self, consumer: &str) -> Counter {
        self.registry
            .counter(LAGGED, LAGGED_HELP, &[("consumer", consumer)])
    }

    /// Counts entries a Redis consumer group lost to the hard cap.
    pub fn group_lost(&self, stream: &str, group: &str, n: u64) {
        self.registry
            .counter(
                GROUP_LOST,
                GROUP_LOST_HELP,
                &[("stream", stream), ("group", group)],
            )
            .add(n);
    }

    /// Publishes whether `cause` degrades the real-time path.
    pub fn degraded(&self, cause: &str, on: bool) {
        self.registry
            .gauge(DEGRADED, DEGRADED_HELP, &[("cause", cause)])
            .set(i64::from(on));
    }
}

/// What [`Publisher::publish`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Queued for the real-time path.
    Queued,
    /// The real-time path had it already (a resend).
    Repeat,
    /// Skipped, for this reason (counted).
    Skipped(&'static str),
}

/// The ingest side of the fan-out: cheap to clone, never waits.
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

#[derive(Debug)]
struct PublisherInner {
    tx: mpsc::Sender<Entry>,
    /// Record bytes queued, and the most that may be.
    queued_bytes: Arc<AtomicU64>,
    max_bytes: u64,
    seen: Mutex<RecentSeen>,
    reported_forgotten: std::sync::atomic::AtomicU64,
    metrics: FanoutMetrics,
    stream_prefix: Option<String>,
    /// With Redis: the in-process consumers beside it (the alert evaluator),
    /// fed here directly so they never wait for a Redis round trip.
    local: Option<Subscriptions>,
}

impl Drop for PublisherInner {
    fn drop(&mut self) {
        // The last publisher is gone: local consumers read what is left and stop.
        if let Some(l) = &self.local {
            l.close();
        }
    }
}

/// The stream a site's entries go to: `{prefix}:{site}`, the braces a Redis
/// Cluster hash tag so a stream and any key named after its site share a slot.
///
/// ```
/// assert_eq!(ferrule_aggregator::fanout::stream_key("ferrule", "plant-1"), "ferrule:{plant-1}");
/// ```
pub fn stream_key(prefix: &str, site: &str) -> String {
    format!("{prefix}:{{{site}}}")
}

impl Publisher {
    fn new(
        tx: mpsc::Sender<Entry>,
        queued_bytes: Arc<AtomicU64>,
        max_bytes: u64,
        bounds: SeenBounds,
        metrics: FanoutMetrics,
        stream_prefix: Option<String>,
        local: Option<Subscriptions>,
    ) -> Self {
        Self {
            inner: Arc::new(PublisherInner {
                tx,
                queued_bytes,
                max_bytes,
                seen: Mutex::new(RecentSeen::new(bounds)),
                reported_forgotten: Default::default(),
                metrics,
                stream_prefix,
                local,
            }),
        }
    }

    /// The `stream` label a site's skips are counted under (the Redis stream key,
    /// or the site for the embedded fan-out).
    pub fn stream_label(&self, site: &str) -> String {
        match &self.inner.stream_prefix {
            Some(p) => stream_key(p, site),
            None => site.to_string(),
        }
    }

    /// Hands a batch to the real-time path without waiting: queued, recognised as
    /// a repeat, or skipped (counted) when the queue is full. A skipped batch is
    /// not marked seen, so a resend of it may still go out.
    pub fn publish(
        &self,
        site: &str,
        agent: &str,
        epoch: Epoch,
        seq: Seq,
        samples: u32,
        record: &[u8],
    ) -> Published {
        let i = &self.inner;
        let key = format!("{site}/{agent}");
        let mut seen = i.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(&key, epoch, seq) {
            drop(seen);
            i.metrics.repeats.inc();
            return Published::Repeat;
        }
        let entry = Entry {
            site: site.into(),
            agent: agent.into(),
            epoch,
            seq,
            samples,
            record: record.into(),
        };
        // Consumers in this process (the alert evaluator) get it whatever Redis
        // does: a Redis that is slow or down must not cost a page. A resend of a
        // batch skipped below reaches them again; the rule engine ignores samples
        // no newer than those it has.
        if let Some(l) = &i.local {
            l.deliver(&entry);
        }
        let len = record.len() as u64;
        let queued = i.queued_bytes.load(Ordering::Relaxed);
        // An empty queue takes any record, so one larger than the bound still
        // goes out when nothing else waits.
        let room = queued == 0 || queued.saturating_add(len) <= i.max_bytes;
        let permit = match i.tx.try_reserve() {
            Ok(p) if room => p,
            Ok(_) => {
                drop(seen);
                i.metrics.skipped(&self.stream_label(site), "queue_full", 1);
                return Published::Skipped("queue_full");
            }
            Err(e) => {
                drop(seen);
                let reason = match e {
                    mpsc::error::TrySendError::Full(()) => "queue_full",
                    mpsc::error::TrySendError::Closed(()) => "closed",
                };
                i.metrics.skipped(&self.stream_label(site), reason, 1);
                return Published::Skipped(reason);
            }
        };
        seen.insert(&key, epoch, seq);
        let forgotten = seen.forgotten();
        drop(seen);
        let before = i.reported_forgotten.swap(forgotten, Ordering::Relaxed);
        i.metrics
            .seen_forgotten
            .add(forgotten.saturating_sub(before));
        // Counted before it is sent: the fan-out releases it once taken.
        i.queued_bytes.fetch_add(len, Ordering::Relaxed);
        permit.send(entry);
        i.metrics.published.inc();
        Published::Queued
    }
}

/// Why the fan-out could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FanoutError {
    /// `redis.url` is not a Redis URL.
    #[error("redis.url: {0}")]
    BadUrl(String),
    /// A TLS file named in `[redis]` cannot be read.
    #[error("redis.{key} {path}: {source}")]
    TlsFile {
        /// The config key.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A secret names an environment variable that is not set.
    #[error("redis.{key} names environment variable {var}, which is not set")]
    MissingEnv {
        /// The config key.
        key: &'static str,
        /// The variable.
        var: String,
    },
}

/// The running fan-out, one of its two implementations.
pub enum Fanout {
    /// In-process: consumers subscribe in this process.
    Embedded(embedded::Hub),
    /// Redis Streams: consumers read with consumer groups from anywhere.
    Redis(redis::RedisFanout),
}

impl Fanout {
    /// Starts the fan-out: Redis Streams when `redis` is given, else in-process.
    /// Returns it with the publisher ingest hands batches to. Must run inside a
    /// tokio runtime.
    pub fn start(
        cfg: &FanoutSection,
        redis: Option<&RedisSection>,
        registry: &Registry,
    ) -> Result<(Fanout, Publisher), FanoutError> {
        let metrics = FanoutMetrics::new(registry);
        let (tx, rx) = mpsc::channel(cfg.queue_batches.max(1));
        let bytes = Arc::new(AtomicU64::new(0));
        let rx = Inbox {
            rx,
            bytes: bytes.clone(),
        };
        let max_bytes = cfg.queue_max_bytes.max(1);
        let bounds = SeenBounds {
            max_agents: cfg.seen_max_agents,
            epochs_per_agent: cfg.seen_epochs_per_agent,
            max_ranges_per_epoch: cfg.seen_max_ranges_per_epoch,
        };
        match redis {
            Some(r) => {
                let local = Subscriptions::new(metrics.clone());
                let publisher = Publisher::new(
                    tx,
                    bytes,
                    max_bytes,
                    bounds,
                    metrics.clone(),
                    Some(r.stream_prefix.clone()),
                    Some(local.clone()),
                );
                let f = redis::RedisFanout::start(r, rx, metrics, local)?;
                Ok((Fanout::Redis(f), publisher))
            }
            None => {
                let publisher =
                    Publisher::new(tx, bytes, max_bytes, bounds, metrics.clone(), None, None);
                Ok((
                    Fanout::Embedded(embedded::Hub::start(rx, metrics)),
                    publisher,
                ))
            }
        }
    }

    /// A consumer in this process, with its own queue of `capacity` entries (its
    /// oldest are dropped, counted, when it falls behind). With Redis it sees
    /// what this aggregator publishes, handed over before the Redis write;
    /// consumers elsewhere read the streams through consumer groups.
    pub fn subscribe(&self, name: &str, capacity: usize) -> embedded::Subscriber {
        self.subscriptions().subscribe(name, capacity)
    }

    /// Like [`Fanout::subscribe`], the queue also bounded to `max_bytes` of records.
    pub fn subscribe_bounded(
        &self,
        name: &str,
        capacity: usize,
        max_bytes: u64,
    ) -> embedded::Subscriber {
        self.subscriptions()
            .subscribe_bounded(name, capacity, max_bytes)
    }

    /// Where in-process consumers subscribe (cheap to clone).
    pub fn subscriptions(&self) -> embedded::Subscriptions {
        match self {
            Fanout::Embedded(h) => h.subscriptions(),
            Fanout::Redis(r) => r.local(),
        }
    }

    /// Why the real-time path is degraded, if it is: shown at `/healthz`
    /// without making the aggregator unready.
    pub fn degraded(&self) -> Arc<Degraded> {
        match self {
            Fanout::Embedded(h) => h.degraded(),
            Fanout::Redis(r) => r.degraded(),
        }
    }

    /// Delivers what is queued and stops, once every [`Publisher`] is dropped.
    pub async fn join(self) {
        match self {
            Fanout::Embedded(h) => h.join().await,
            Fanout::Redis(r) => r.join().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(capacity: usize) -> (Publisher, Inbox, Registry) {
        publisher_bytes(capacity, u64::MAX)
    }

    fn publisher_bytes(capacity: usize, max_bytes: u64) -> (Publisher, Inbox, Registry) {
        let registry = Registry::new();
        let (tx, rx) = mpsc::channel(capacity);
        let bytes = Arc::new(AtomicU64::new(0));
        let rx = Inbox {
            rx,
            bytes: bytes.clone(),
        };
        let p = Publisher::new(
            tx,
            bytes,
            max_bytes,
            SeenBounds::default(),
            FanoutMetrics::new(&registry),
            Some("ferrule".into()),
            None,
        );
        (p, rx, registry)
    }

    /// With Redis, the consumers in this process (the alert evaluator) get each
    /// batch from the publisher itself, repeats excluded, and end when the last
    /// publisher is gone.
    #[tokio::test]
    async fn local_consumers_beside_redis_get_each_batch_once_and_end_with_the_publishers() {
        let registry = Registry::new();
        let (tx, mut rx) = mpsc::channel(8);
        let local = Subscriptions::new(FanoutMetrics::new(&registry));
        let mut sub = local.subscribe("alerts", 8);
        let p = Publisher::new(
            tx,
            Arc::new(AtomicU64::new(0)),
            u64::MAX,
            SeenBounds::default(),
            FanoutMetrics::new(&registry),
            Some("ferrule".into()),
            Some(local),
        );
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(1), 1, b"r1"),
            Published::Queued
        );
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(1), 1, b"r1"),
            Published::Repeat
        );
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(2), 1, b"r2"),
            Published::Queued
        );
        let clone = p.clone();
        drop(p);
        assert_eq!(sub.try_recv().map(|e| e.seq), Some(Seq(1)));
        drop(clone);
        assert_eq!(sub.recv().await.map(|e| e.seq), Some(Seq(2)));
        assert!(
            sub.recv().await.is_none(),
            "ends once every publisher is gone"
        );
        assert_eq!(
            rx.try_recv().map(|e| e.seq).ok(),
            Some(Seq(1)),
            "Redis still gets it"
        );
    }

    /// A Redis too slow to keep up skips batches (counted), but the consumers
    /// in this process still get them: a slow Redis never costs a page.
    #[test]
    fn local_consumers_get_what_a_full_redis_queue_skips() {
        let registry = Registry::new();
        let (tx, _rx) = mpsc::channel(1);
        let local = Subscriptions::new(FanoutMetrics::new(&registry));
        let mut sub = local.subscribe("alerts", 8);
        let p = Publisher::new(
            tx,
            Arc::new(AtomicU64::new(0)),
            u64::MAX,
            SeenBounds::default(),
            FanoutMetrics::new(&registry),
            Some("ferrule".into()),
            Some(local),
        );
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(1), 1, b"r1"),
            Published::Queued
        );
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(2), 1, b"r2"),
            Published::Skipped("queue_full")
        );
        assert_eq!(sub.try_recv().map(|e| e.seq), Some(Seq(1)));
        assert_eq!(sub.try_recv().map(|e| e.seq), Some(Seq(2)));
    }

    /// A bounded consumer holds at most its bytes of records: a backlog cannot
    /// pin more than that, whatever the batch count allows.
    #[test]
    fn a_consumers_bytes_are_bounded_oldest_dropped_and_counted() {
        let registry = Registry::new();
        let subs = Subscriptions::new(FanoutMetrics::new(&registry));
        let mut sub = subs.subscribe_bounded("alerts", 100, 10);
        let entry = |seq: u64, len: usize| Entry {
            site: "s".into(),
            agent: "a".into(),
            epoch: Epoch(1),
            seq: Seq(seq),
            samples: 1,
            record: vec![0u8; len].into(),
        };
        for q in 1..=4 {
            subs.deliver(&entry(q, 4));
        }
        // 4 + 4 fit in 10 bytes; 1 and 2 were dropped for 3 and 4.
        assert_eq!(sub.lagged(), 2);
        assert_eq!(sub.try_recv().map(|e| e.seq), Some(Seq(3)));
        // One record larger than the bound still goes through alone.
        subs.deliver(&entry(5, 50));
        assert_eq!(sub.try_recv().map(|e| e.seq), Some(Seq(5)));
        assert!(sub.try_recv().is_none());
        assert_eq!(sub.lagged(), 3);
    }

    #[test]
    fn a_full_queue_skips_and_counts_without_waiting_and_a_resend_goes_out_later() {
        let (p, mut rx, registry) = publisher(2);
        let pubs: Vec<Published> = (1..=3)
            .map(|q| p.publish("s1", "a1", Epoch(1), Seq(q), 10, b"rec"))
            .collect();
        assert_eq!(
            pubs,
            [
                Published::Queued,
                Published::Queued,
                Published::Skipped("queue_full")
            ]
        );
        assert_eq!(
            registry.counter_value(
                SKIPPED,
                &[("stream", "ferrule:{s1}"), ("reason", "queue_full")]
            ),
            Some(1)
        );
        // The agent resends 1 (already published) and 3 (skipped before).
        let _ = rx.rx.try_recv();
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(1), 10, b"rec"),
            Published::Repeat
        );
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(3), 10, b"rec"),
            Published::Queued
        );
        let e = rx.rx.try_recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.seq, &*e.agent, &*e.site), (Seq(2), "a1", "s1"));
        let e = rx.rx.try_recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.seq, &*e.record), (Seq(3), &b"rec"[..]));
    }

    /// The queue is bounded in bytes too: large records fill it before its
    /// batch count does; taking entries frees the room; an empty queue takes a
    /// record larger than the bound.
    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes() {
        let (p, mut rx, _registry) = publisher_bytes(100, 1000);
        let big = vec![0u8; 400];
        let pubs: Vec<Published> = (1..=3)
            .map(|q| p.publish("s1", "a1", Epoch(1), Seq(q), 1, &big))
            .collect();
        assert_eq!(
            pubs,
            [
                Published::Queued,
                Published::Queued,
                Published::Skipped("queue_full")
            ]
        );
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 10).await, 2);
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(3), 1, &big),
            Published::Queued
        );
        assert!(rx.recv().await.is_some());
        let huge = vec![0u8; 5000];
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(4), 1, &huge),
            Published::Queued
        );
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(5), 1, &big),
            Published::Skipped("queue_full")
        );
    }

    #[test]
    fn a_closed_fanout_skips_as_closed() {
        let (p, rx, _registry) = publisher(2);
        drop(rx);
        assert_eq!(
            p.publish("s1", "a1", Epoch(1), Seq(1), 1, b"r"),
            Published::Skipped("closed")
        );
    }
}
