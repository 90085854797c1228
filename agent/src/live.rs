//! Live copies: when the uplink also sends new batches for the aggregator's
//! real-time path, and how they get to it.
//!
//! The durable lane sends the spool in sequence order, so after an outage the
//! newest batches wait behind the backlog while it replays. While that lane is
//! *behind* ([`LiveGate`]: its oldest unsent batch has been durable for at least
//! the lag, `uplink.live_lag_ms`), the uplink asks the batcher for its new
//! batches through a [`LiveTap`], and sends each as a live copy the moment it is
//! cut, before the spool's fsync: the copy is for the real-time path only,
//! never acknowledged, so it needs no durability (the batch itself goes on the
//! durable lane once durable, as always). While the lane keeps up, the tap is
//! off: the batcher's cost is one atomic load per batch.
//!
//! Bounded: the gate keeps at most [`MAX_MARKS`] marks of when seqs became
//! durable (beyond that the newest mark is widened, which can only make batches
//! look older, so copies start sooner, never later); the tap holds at most
//! [`TAP_BATCHES`] batches, and one offered beyond that is skipped and counted.

use ferrule_telemetry::{Counter, Registry};
use ferrule_wire::{Epoch, Seq};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most marks of when seqs became durable kept at once.
pub const MAX_MARKS: usize = 4096;

/// Most new batches the tap holds for the uplink.
pub const TAP_BATCHES: usize = 64;

/// Whether the durable lane is behind, from when its batches became durable.
///
/// ```
/// use ferrule_agent::live::LiveGate;
/// use ferrule_wire::Seq;
/// use std::time::{Duration, Instant};
/// let t0 = Instant::now();
/// // A session starts with seqs 1..100 in the spool, unsent: a backlog.
/// let mut gate = LiveGate::new(Duration::from_secs(1), Seq(100), t0);
/// assert!(gate.behind(Seq(101), Seq(5), t0));
/// // The durable lane caught up: not behind.
/// assert!(!gate.behind(Seq(102), Seq(101), t0 + Duration::from_millis(10)));
/// ```
#[derive(Debug)]
pub struct LiveGate {
    lag: Duration,
    /// (end, at), ascending: every seq below `end` was durable by `at`.
    marks: VecDeque<(Seq, Instant)>,
}

impl LiveGate {
    /// A gate for a session starting at `now` with everything below
    /// `durable_until` durable. What the spool holds unsent then is a backlog,
    /// taken for old (durable for the lag already): with one, the lane is
    /// behind from the start.
    pub fn new(lag: Duration, durable_until: Seq, now: Instant) -> Self {
        let mut marks = VecDeque::new();
        if durable_until > Seq(0) {
            marks.push_back((durable_until, now.checked_sub(lag).unwrap_or(now)));
        }
        Self { lag, marks }
    }

    /// Takes in that everything below `durable_until` is durable at `now` and
    /// that the durable lane has sent everything below `unsent_from`; true if
    /// the oldest batch it has not sent has been durable for the lag or more.
    pub fn behind(&mut self, durable_until: Seq, unsent_from: Seq, now: Instant) -> bool {
        if self
            .marks
            .back()
            .is_none_or(|(end, _)| *end < durable_until)
        {
            if self.marks.len() >= MAX_MARKS {
                if let Some(last) = self.marks.back_mut() {
                    last.0 = durable_until;
                }
            } else {
                self.marks.push_back((durable_until, now));
            }
        }
        while self
            .marks
            .front()
            .is_some_and(|(end, _)| *end <= unsent_from)
        {
            self.marks.pop_front();
        }
        unsent_from < durable_until
            && self
                .marks
                .iter()
                .find(|(end, _)| *end > unsent_from)
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= self.lag)
    }

    /// Marks held now (bounded by [`MAX_MARKS`]).
    pub fn marks(&self) -> usize {
        self.marks.len()
    }
}

/// A batch just cut, as the batcher spooled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fresh {
    /// Its epoch.
    pub epoch: Epoch,
    /// Its seq.
    pub seq: Seq,
    /// Its encoded Batch frame.
    pub frame: Vec<u8>,
}

/// The batcher's end of the tap: it offers every batch it spools, and the
/// offer costs an atomic load unless the uplink wants copies.
#[derive(Debug, Clone)]
pub struct LiveTap {
    wanted: Arc<AtomicBool>,
    tx: mpsc::Sender<Fresh>,
    full: Counter,
}

/// The uplink's end of the tap.
#[derive(Debug)]
pub struct LiveTapRx {
    wanted: Arc<AtomicBool>,
    rx: mpsc::Receiver<Fresh>,
}

/// A tap, off until the uplink turns it on; batches offered while it is full
/// are counted in `ferrule_agent_live_skipped_total{reason="tap_full"}`.
pub fn tap(registry: &Registry) -> (LiveTap, LiveTapRx) {
    let wanted = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel(TAP_BATCHES);
    let full = registry.counter(SKIPPED, SKIPPED_HELP, &[("reason", "tap_full")]);
    (
        LiveTap {
            wanted: wanted.clone(),
            tx,
            full,
        },
        LiveTapRx { wanted, rx },
    )
}

/// Live copies not sent, by reason.
pub const SKIPPED: &str = "ferrule_agent_live_skipped_total";
/// Its help text.
pub const SKIPPED_HELP: &str =
    "Live copies not sent (the batches still go on the durable lane), by reason";

impl LiveTap {
    /// Offers a batch just spooled; copied and queued only while the uplink
    /// wants copies. Never waits.
    pub fn offer(&self, epoch: Epoch, seq: Seq, frame: &[u8]) {
        if !self.wanted.load(Ordering::Relaxed) {
            return;
        }
        let fresh = Fresh {
            epoch,
            seq,
            frame: frame.to_vec(),
        };
        if self.tx.try_send(fresh).is_err() {
            self.full.inc();
        }
    }
}

impl LiveTapRx {
    /// Turns the batcher's offers on or off.
    pub fn set_wanted(&self, wanted: bool) {
        self.wanted.store(wanted, Ordering::Relaxed);
    }

    /// True while offers are on.
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    /// The next batch offered; `None` once the batcher is gone.
    pub async fn recv(&mut self) -> Option<Fresh> {
        self.rx.recv().await
    }

    /// A batch offered, if one waits.
    pub fn try_recv(&mut self) -> Option<Fresh> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn steady_state_is_never_behind() {
        let t0 = Instant::now();
        let mut g = LiveGate::new(Duration::from_secs(1), Seq(1), t0);
        for i in 1..1000u64 {
            // Each batch is sent on the durable lane within a few ms, and a
            // batch or two may wait for credit briefly.
            assert!(!g.behind(Seq(i + 1), Seq(i.saturating_sub(1).max(1)), ms(t0, i * 5)));
        }
        assert!(g.marks() <= 3);
    }

    #[test]
    fn a_backlog_at_the_start_is_behind_until_caught_up() {
        let t0 = ms(Instant::now(), 100_000);
        let mut g = LiveGate::new(Duration::from_secs(1), Seq(500), t0);
        let mut unsent = Seq(1);
        let mut behind = Vec::new();
        for i in 0..100u64 {
            behind.push(g.behind(Seq(501 + i), unsent, ms(t0, i * 100)));
            unsent = Seq((unsent.0 + 10).min(501 + i));
        }
        // Behind from the start, then caught up (the replay runs 10 a tick
        // against 1 a tick written) and not behind again.
        let first_not = behind.iter().position(|b| !b).unwrap_or(behind.len());
        assert!(first_not > 40, "{behind:?}");
        assert!(behind[first_not..].iter().all(|b| !b), "{behind:?}");
    }

    #[test]
    fn a_lane_that_stops_is_behind_after_the_lag() {
        let t0 = Instant::now();
        let mut g = LiveGate::new(Duration::from_secs(1), Seq(1), t0);
        // The lane stops sending at seq 10 (no credit, say), which became
        // durable at 100 ms.
        let first = (1..40u64).find(|i| g.behind(Seq(10 + i), Seq(10), ms(t0, i * 100)));
        assert_eq!(first, Some(11));
    }

    #[test]
    fn marks_stay_bounded_when_the_lane_never_moves() {
        let t0 = Instant::now();
        let mut g = LiveGate::new(Duration::from_secs(1), Seq(1), t0);
        for i in 1..(3 * MAX_MARKS as u64) {
            g.behind(Seq(1 + i), Seq(1), ms(t0, i));
        }
        assert!(g.marks() <= MAX_MARKS);
        assert!(g.behind(Seq(4 * MAX_MARKS as u64), Seq(1), ms(t0, 10_000_000)));
    }

    #[tokio::test]
    async fn the_tap_is_off_until_wanted_and_counts_what_it_cannot_hold() {
        let registry = Registry::new();
        let (tap, mut rx) = tap(&registry);
        tap.offer(Epoch(1), Seq(1), b"x");
        assert_eq!(rx.try_recv(), None, "off: nothing copied");
        rx.set_wanted(true);
        for s in 0..TAP_BATCHES as u64 + 3 {
            tap.offer(Epoch(1), Seq(s), b"frame");
        }
        assert_eq!(registry.counter_sum(SKIPPED), 3);
        assert_eq!(rx.recv().await.map(|f| f.seq), Some(Seq(0)));
    }
}
