//! Which batches the uplink also sends as live copies, and when.
//!
//! The durable lane sends the spool in sequence order, so after an outage the
//! newest batches wait behind the backlog while it replays. While that lane is
//! *behind* (its oldest unsent batch has been durable for at least the lag,
//! `uplink.live_lag_ms`), every batch that becomes durable is also offered as a
//! live copy for the aggregator's real-time path. While it keeps up, nothing is
//! offered: the steady state costs nothing.
//!
//! Pure: the uplink tells it what became durable and what the durable lane has
//! not sent yet, with the time; it answers with the seqs to copy. Bounded: at
//! most [`MAX_MARKS`] marks of when seqs became durable (beyond that the newest
//! mark is widened, which can only make batches look older, so copies start
//! sooner, never later), and at most [`MAX_COPIES_PER_POLL`] copies at a time
//! (the newest; older ones are counted as skipped).

use ferrule_wire::Seq;
use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Most marks of when seqs became durable kept at once.
pub const MAX_MARKS: usize = 4096;

/// Most copies offered by one [`LiveGate::poll`]; the batcher writes a few a
/// second, so more at once means the uplink was held up and the older ones are
/// no longer news.
pub const MAX_COPIES_PER_POLL: u64 = 16;

/// What [`LiveGate::poll`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copies {
    /// Seqs to send as live copies now, ascending.
    pub send: Range<Seq>,
    /// Seqs that would have been copied but are beyond [`MAX_COPIES_PER_POLL`].
    pub skipped: u64,
}

/// Decides the live copies for one session.
///
/// ```
/// use ferrule_agent::live::LiveGate;
/// use ferrule_wire::Seq;
/// use std::time::{Duration, Instant};
/// let t0 = Instant::now();
/// // A session starts with seqs 1..100 in the spool, unsent: a backlog.
/// let mut gate = LiveGate::new(Duration::from_secs(1), Seq(100), t0);
/// // Seq 100 becomes durable while the durable lane is still at seq 5: copy it.
/// let c = gate.poll(Seq(101), Seq(5), t0);
/// assert_eq!(c.send, Seq(100)..Seq(101));
/// // The durable lane caught up: no more copies.
/// let c = gate.poll(Seq(102), Seq(101), t0 + Duration::from_millis(10));
/// assert!(c.send.is_empty());
/// ```
#[derive(Debug)]
pub struct LiveGate {
    lag: Duration,
    /// (end, at), ascending: every seq below `end` was durable by `at`.
    marks: VecDeque<(Seq, Instant)>,
    /// The next seq not yet considered for a copy.
    next: Seq,
}

impl LiveGate {
    /// A gate for a session starting at `now` with everything below
    /// `durable_until` durable. What the spool holds unsent then is a backlog,
    /// taken for old (durable for the lag already): if there is one, new
    /// batches are copied from the start. Only seqs from `durable_until` on are
    /// ever copied.
    pub fn new(lag: Duration, durable_until: Seq, now: Instant) -> Self {
        let mut marks = VecDeque::new();
        if durable_until > Seq(0) {
            marks.push_back((durable_until, now.checked_sub(lag).unwrap_or(now)));
        }
        Self {
            lag,
            marks,
            next: durable_until,
        }
    }

    /// When `seq` became durable, as far as the marks tell.
    fn durable_since(&self, seq: Seq) -> Option<Instant> {
        self.marks.iter().find(|(end, _)| *end > seq).map(|m| m.1)
    }

    /// Takes in that everything below `durable_until` is durable at `now` and
    /// that the durable lane has sent everything below `unsent_from`; returns
    /// the seqs to copy now (each seq is offered at most once).
    pub fn poll(&mut self, durable_until: Seq, unsent_from: Seq, now: Instant) -> Copies {
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
        let from = self.next.max(unsent_from);
        self.next = self.next.max(durable_until);
        if from >= durable_until {
            return Copies {
                send: durable_until..durable_until,
                skipped: 0,
            };
        }
        let behind = self
            .durable_since(unsent_from)
            .is_some_and(|at| now.saturating_duration_since(at) >= self.lag);
        if !behind {
            return Copies {
                send: durable_until..durable_until,
                skipped: 0,
            };
        }
        let n = durable_until.0 - from.0;
        let keep = n.min(MAX_COPIES_PER_POLL);
        Copies {
            send: Seq(durable_until.0 - keep)..durable_until,
            skipped: n - keep,
        }
    }

    /// Marks held now (bounded by [`MAX_MARKS`]).
    pub fn marks(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn steady_state_sends_no_copies() {
        let t0 = Instant::now();
        let mut g = LiveGate::new(Duration::from_secs(1), Seq(1), t0);
        for i in 1..1000u64 {
            // Each batch is sent on the durable lane within a few ms, and a
            // batch or two may wait for credit briefly.
            let c = g.poll(Seq(i + 1), Seq(i.saturating_sub(1).max(1)), ms(t0, i * 5));
            assert!(c.send.is_empty(), "{i}: {c:?}");
        }
        assert!(g.marks() <= 3);
    }

    #[test]
    fn a_backlog_at_the_start_copies_every_new_batch_until_caught_up() {
        let t0 = ms(Instant::now(), 100_000);
        let mut g = LiveGate::new(Duration::from_secs(1), Seq(500), t0);
        // The durable lane replays 1.. while new batches arrive.
        let mut copied = Vec::new();
        let mut unsent = Seq(1);
        for i in 0..100u64 {
            let now = ms(t0, i * 100);
            let c = g.poll(Seq(501 + i), unsent, now);
            copied.extend((c.send.start.0..c.send.end.0).map(Seq));
            unsent = Seq((unsent.0 + 10).min(501 + i));
        }
        // Copies from 500 until the replay caught up, then none.
        assert_eq!(copied.first(), Some(&Seq(500)));
        let last = copied.last().copied().unwrap_or(Seq(0));
        assert!(copied.windows(2).all(|w| w[1] == w[0].next()), "{copied:?}");
        assert!(last < Seq(600), "stopped once caught up: {last}");
        // Never a seq of the backlog.
        assert!(copied.iter().all(|s| *s >= Seq(500)));
    }

    #[test]
    fn a_lane_that_falls_behind_starts_copying_after_the_lag() {
        let t0 = Instant::now();
        let mut g = LiveGate::new(Duration::from_secs(1), Seq(1), t0);
        // The lane stops sending at seq 10 (no credit, say).
        let mut first_copy = None;
        for i in 1..40u64 {
            let c = g.poll(Seq(10 + i), Seq(10), ms(t0, i * 100));
            if !c.send.is_empty() && first_copy.is_none() {
                first_copy = Some((i, c.send.clone()));
            }
        }
        // Seq 10 became durable at 100 ms: behind from 1100 ms on, and only the
        // batch that became durable then is copied (older ones were offered
        // while the lane was not yet behind).
        assert_eq!(first_copy, Some((11, Seq(20)..Seq(21))));
    }

    #[test]
    fn a_burst_is_capped_to_the_newest_copies() {
        let t0 = Instant::now();
        let mut g = LiveGate::new(Duration::ZERO, Seq(10), t0);
        let c = g.poll(Seq(110), Seq(1), ms(t0, 1));
        assert_eq!(c.send, Seq(110 - MAX_COPIES_PER_POLL)..Seq(110));
        assert_eq!(c.skipped, 100 - MAX_COPIES_PER_POLL);
        // Never offered twice.
        assert!(g.poll(Seq(110), Seq(1), ms(t0, 2)).send.is_empty());
    }

    #[test]
    fn marks_stay_bounded_when_the_lane_never_moves() {
        let t0 = Instant::now();
        let mut g = LiveGate::new(Duration::from_secs(1), Seq(1), t0);
        for i in 1..(3 * MAX_MARKS as u64) {
            let c = g.poll(Seq(1 + i), Seq(1), ms(t0, i));
            assert!(c.send.end.0 - c.send.start.0 <= 1);
        }
        assert!(g.marks() <= MAX_MARKS);
    }
}
