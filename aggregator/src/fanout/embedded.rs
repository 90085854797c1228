//! The in-process fan-out, used when no `[redis]` section is configured.
//!
//! One task takes batches off the fan-out queue and hands each to every
//! subscriber's own bounded queue. A subscriber that falls behind loses its
//! oldest entries (counted in `ferrule_aggregator_fanout_lagged_total{consumer}`
//! and in [`Subscriber::lagged`]); nothing it does slows the others or the
//! ingest path. Entries are shared (`Arc`), so a slow subscriber holds at most
//! its capacity in entries.

use super::Degraded;
use super::{Entry, FanoutMetrics, Inbox};
use ferrule_telemetry::Counter;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

#[derive(Debug)]
struct Queue {
    name: String,
    capacity: usize,
    /// Record bytes it may hold (entries share their records, but a consumer's
    /// backlog pins them after everyone else let go).
    max_bytes: u64,
    bytes: AtomicU64,
    entries: Mutex<VecDeque<Entry>>,
    notify: Notify,
    closed: AtomicBool,
    dropped: AtomicBool,
    lagged: AtomicU64,
    lagged_counter: Counter,
    /// Entries handed to it so far.
    pushed: AtomicU64,
    /// Entries it took so far.
    taken: AtomicU64,
}

impl Queue {
    fn push(&self, e: Entry) {
        self.pushed.fetch_add(1, Ordering::Relaxed);
        let mut q = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let len = e.record.len() as u64;
        let mut bytes = self.bytes.load(Ordering::Relaxed);
        while !q.is_empty()
            && (q.len() >= self.capacity || bytes.saturating_add(len) > self.max_bytes)
        {
            if let Some(old) = q.pop_front() {
                bytes = bytes.saturating_sub(old.record.len() as u64);
            }
            self.lagged.fetch_add(1, Ordering::Relaxed);
            self.lagged_counter.inc();
        }
        self.bytes
            .store(bytes.saturating_add(len), Ordering::Relaxed);
        q.push_back(e);
        drop(q);
        self.notify.notify_one();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// A consumer of the in-process fan-out (see [`super::Fanout::subscribe`]).
///
/// ```no_run
/// # async fn f(fanout: ferrule_aggregator::fanout::Fanout) {
/// let mut alerts = fanout.subscribe("alerts", 4096);
/// while let Some(entry) = alerts.recv().await {
///     // decode entry.record with ferrule_wire::record::decode_record ...
/// #   let _ = entry;
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Subscriber {
    queue: Arc<Queue>,
}

impl Subscriber {
    /// The next entry, in publication order; `None` once the fan-out has stopped
    /// and everything queued was read.
    pub async fn recv(&mut self) -> Option<Entry> {
        loop {
            if let Some(e) = self.try_recv() {
                return Some(e);
            }
            if self.queue.closed.load(Ordering::Acquire) {
                return self.try_recv();
            }
            self.queue.notify.notified().await;
        }
    }

    /// The next entry if one is queued.
    pub fn try_recv(&mut self) -> Option<Entry> {
        let mut q = self
            .queue
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let e = q.pop_front()?;
        let left = self
            .queue
            .bytes
            .load(Ordering::Relaxed)
            .saturating_sub(e.record.len() as u64);
        self.queue.bytes.store(left, Ordering::Relaxed);
        self.queue.taken.fetch_add(1, Ordering::Relaxed);
        Some(e)
    }

    /// Entries this subscriber lost by falling behind, so far.
    pub fn lagged(&self) -> u64 {
        self.queue.lagged.load(Ordering::Relaxed)
    }

    /// The name it was subscribed with.
    pub fn name(&self) -> &str {
        &self.queue.name
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // The hub forgets it at the next entry.
        self.queue.dropped.store(true, Ordering::Release);
    }
}

/// Where in-process consumers subscribe: cheap to clone, so the aggregator
/// can hand it to whatever runs beside it (the alert evaluator, the demo).
#[derive(Debug, Clone)]
pub struct Subscriptions {
    /// The subscribers, and whether the hub has stopped (set under the lock,
    /// so a late subscriber is closed at once, never left waiting).
    subscribers: Arc<Mutex<(Vec<Arc<Queue>>, bool)>>,
    metrics: FanoutMetrics,
}

impl Subscriptions {
    /// No subscribers yet.
    pub(crate) fn new(metrics: FanoutMetrics) -> Self {
        Self {
            subscribers: Arc::default(),
            metrics,
        }
    }

    /// Hands `e` to every subscriber's queue (each drops its oldest when full);
    /// never waits on a consumer.
    pub(crate) fn deliver(&self, e: &Entry) {
        let mut s = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.0.retain(|q| !q.dropped.load(Ordering::Acquire));
        for q in s.0.iter() {
            q.push(e.clone());
        }
    }

    /// Each live subscriber's counters: (name, entries handed to it, entries
    /// it is done with: taken or lost by falling behind), for the sampler.
    pub fn progress(&self) -> Vec<(String, u64, u64)> {
        let s = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.0.iter()
            .filter(|q| !q.dropped.load(Ordering::Acquire))
            .map(|q| {
                let pushed = q.pushed.load(Ordering::Relaxed);
                let done = q
                    .taken
                    .load(Ordering::Relaxed)
                    .saturating_add(q.lagged.load(Ordering::Relaxed));
                (q.name.clone(), pushed, done.min(pushed))
            })
            .collect()
    }

    /// Ends every subscription once its queue is read; later subscribers start
    /// closed.
    pub(crate) fn close(&self) {
        let mut s = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.1 = true;
        for q in s.0.iter() {
            q.close();
        }
    }

    /// A new consumer with a queue of `capacity` entries (at least 1). It sees
    /// what is published from now on; when it falls behind it loses its oldest
    /// entries, counted, and nobody else notices.
    pub fn subscribe(&self, name: &str, capacity: usize) -> Subscriber {
        self.subscribe_bounded(name, capacity, u64::MAX)
    }

    /// Like [`Subscriptions::subscribe`], also holding at most `max_bytes` of
    /// records (one larger record is still taken when the queue is empty).
    pub fn subscribe_bounded(&self, name: &str, capacity: usize, max_bytes: u64) -> Subscriber {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let queue = Arc::new(Queue {
            name: name.to_string(),
            capacity: capacity.max(1),
            max_bytes,
            bytes: AtomicU64::new(0),
            entries: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            closed: AtomicBool::new(subs.1),
            dropped: AtomicBool::new(false),
            lagged: AtomicU64::new(0),
            lagged_counter: self.metrics.lagged(name),
            pushed: AtomicU64::new(0),
            taken: AtomicU64::new(0),
        });
        subs.0.push(queue.clone());
        Subscriber { queue }
    }
}

/// Most entries the hub takes off the queue at once.
const HUB_BATCH: usize = 256;

/// The running in-process fan-out.
pub struct Hub {
    subscriptions: Subscriptions,
    degraded: Arc<Degraded>,
    task: tokio::task::JoinHandle<()>,
}

impl Hub {
    /// Starts the task that hands queued batches to the subscribers.
    pub fn start(mut rx: Inbox, metrics: FanoutMetrics) -> Hub {
        let subscriptions = Subscriptions::new(metrics.clone());
        let subs = subscriptions.clone();
        let delivered = metrics.delivered.clone();
        let task = tokio::spawn(async move {
            // Whatever is queued at once: one receive per entry spends the
            // task's scheduling budget per entry, and on a busy runtime a task
            // is polled only so often, which capped delivery below what ingest
            // publishes (the publisher's queue filled and skipped batches).
            let mut batch = Vec::with_capacity(HUB_BATCH);
            while rx.recv_many(&mut batch, HUB_BATCH).await > 0 {
                for e in batch.drain(..) {
                    subs.deliver(&e);
                    delivered.inc();
                }
            }
            subs.close();
        });
        Hub {
            subscriptions,
            degraded: Arc::default(),
            task,
        }
    }

    /// A new consumer (see [`Subscriptions::subscribe`]).
    pub fn subscribe(&self, name: &str, capacity: usize) -> Subscriber {
        self.subscriptions.subscribe(name, capacity)
    }

    /// Where consumers subscribe, to hand to whatever runs beside the aggregator.
    pub fn subscriptions(&self) -> Subscriptions {
        self.subscriptions.clone()
    }

    /// Always healthy: nothing outside the process can fail here.
    pub fn degraded(&self) -> Arc<Degraded> {
        self.degraded.clone()
    }

    /// Waits for the task to hand out what is queued (every publisher dropped).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Fanout, Published};
    use crate::config::FanoutSection;
    use ferrule_telemetry::Registry;
    use ferrule_wire::{Epoch, Seq};
    use std::time::Duration;

    /// A slow subscriber loses its oldest entries, counted; a fast one sees
    /// everything, in order; ingest never waits.
    #[tokio::test]
    async fn a_slow_subscriber_loses_its_oldest_and_a_fast_one_sees_everything() {
        let registry = Registry::new();
        let cfg = FanoutSection {
            queue_batches: 64,
            ..FanoutSection::default()
        };
        let (fanout, publisher) =
            Fanout::start(&cfg, None, &registry).unwrap_or_else(|e| panic!("{e}"));
        let mut fast = fanout.subscribe("fast", 1000);
        let mut slow = fanout.subscribe("slow", 10);
        let reader = tokio::spawn(async move {
            let mut seqs = Vec::new();
            while let Some(e) = fast.recv().await {
                seqs.push(e.seq.0);
            }
            seqs
        });
        let n = 500u64;
        for q in 1..=n {
            // The queue between ingest and fan-out is small: yield now and then so
            // the hub keeps up (a full queue would skip, counted, not block).
            while publisher.publish("s1", "a1", Epoch(1), Seq(q), 1, &q.to_le_bytes())
                == Published::Skipped("queue_full")
            {
                tokio::task::yield_now().await;
            }
        }
        drop(publisher);
        fanout.join().await;
        let seen = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen, (1..=n).collect::<Vec<_>>());
        // The slow one never read: it holds the newest 10, lost the rest.
        let mut kept = Vec::new();
        while let Some(e) = slow.recv().await {
            kept.push(e.seq.0);
        }
        assert_eq!(kept, (n - 9..=n).collect::<Vec<_>>());
        assert_eq!(slow.lagged(), n - 10);
        assert_eq!(
            registry.counter_value(
                "ferrule_aggregator_fanout_lagged_total",
                &[("consumer", "slow")]
            ),
            Some(n - 10)
        );
        assert_eq!(
            registry.counter_value(
                "ferrule_aggregator_fanout_lagged_total",
                &[("consumer", "fast")]
            ),
            Some(0)
        );
    }

    /// A consumer that subscribes after the fan-out stopped is told at once.
    #[tokio::test]
    async fn a_late_subscriber_is_closed_not_left_waiting() {
        let registry = Registry::new();
        let (fanout, publisher) = Fanout::start(&FanoutSection::default(), None, &registry)
            .unwrap_or_else(|e| panic!("{e}"));
        let subs = fanout.subscriptions();
        drop(publisher);
        fanout.join().await;
        let mut late = subs.subscribe("late", 4);
        let got = tokio::time::timeout(Duration::from_secs(2), late.recv())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(got.is_none());
    }
}
