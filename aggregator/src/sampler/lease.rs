//! Whether this aggregator is the sampler, as pure code: time in (every `now`
//! is an argument), decisions out. The driver ([`super`]) runs the Redis
//! commands it asks for and reports their answers.
//!
//! Safety comes from counting from when a command was *sent*: a grant or a
//! renewal sent at `t` keeps the lock in Redis until at least `t + ttl`, so
//! this side believes it holds the lock only until `t + ttl × HOLD_SHARE`,
//! before any other aggregator can take it. A sampler paused (SIGSTOP) past
//! that finds on waking that it no longer holds, before it writes anything;
//! writes it had in flight are refused by the store's fence check.

use std::time::{Duration, Instant};

/// The share of the TTL a grant or renewal is trusted for.
const HOLD_SHARE: f64 = 2.0 / 3.0;

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try to take the lock (`SET NX PX` and a new fence, in one script).
    Acquire,
    /// Renew it (the token must still be ours).
    Renew,
    /// Nothing until then.
    WaitUntil(Instant),
}

/// The lock as this aggregator sees it.
#[derive(Debug, Clone)]
pub struct Lease {
    ttl: Duration,
    held: Option<Held>,
    next_try: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    fence: u64,
    /// When the last successful grant or renewal was sent.
    sent: Instant,
}

impl Lease {
    /// A lease of `ttl`, not held.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl: ttl.max(Duration::from_millis(30)),
            held: None,
            next_try: None,
        }
    }

    /// How often to renew (and to retry taking it): a third of the TTL.
    pub fn period(&self) -> Duration {
        self.ttl / 3
    }

    /// The fence this aggregator samples under at `now`, if it holds the lock.
    pub fn holds(&self, now: Instant) -> Option<u64> {
        let h = self.held?;
        (now < h.sent + self.ttl.mul_f64(HOLD_SHARE)).then_some(h.fence)
    }

    /// What to do at `now`.
    pub fn next(&self, now: Instant) -> Action {
        match (self.holds(now), self.next_try) {
            (_, Some(at)) if now < at => Action::WaitUntil(at),
            (Some(_), _) => Action::Renew,
            (None, _) => Action::Acquire,
        }
    }

    /// A grant sent at `sent`, under `fence`.
    pub fn acquired(&mut self, fence: u64, sent: Instant) {
        self.held = Some(Held { fence, sent });
        self.next_try = Some(sent + self.period());
    }

    /// A renewal sent at `sent` succeeded.
    pub fn renewed(&mut self, sent: Instant) {
        if let Some(h) = &mut self.held {
            h.sent = h.sent.max(sent);
        }
        self.next_try = Some(sent + self.period());
    }

    /// The lock is someone else's (a refused grant or renewal, a store that
    /// refused our fence): not held; try again in a period.
    pub fn lost(&mut self, now: Instant) {
        self.held = None;
        self.next_try = Some(now + self.period());
    }

    /// A command failed (Redis down, no answer): what is held stays trusted
    /// until it runs out; try again soon.
    pub fn failed(&mut self, now: Instant) {
        self.next_try = Some(now + (self.period() / 4).max(Duration::from_millis(10)));
    }

    /// Gives it up (shutdown: the driver deletes it if still ours).
    pub fn release(&mut self) -> Option<u64> {
        self.held.take().map(|h| h.fence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_only_while_a_grant_or_renewal_is_fresh() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Lease::new(ms(3000));
        assert_eq!(l.next(t0), Action::Acquire);
        l.acquired(7, t0);
        assert_eq!(l.holds(t0 + ms(1999)), Some(7));
        assert_eq!(
            l.holds(t0 + ms(2000)),
            None,
            "stops before the TTL runs out"
        );
        assert_eq!(l.next(t0 + ms(500)), Action::WaitUntil(t0 + ms(1000)));
        assert_eq!(l.next(t0 + ms(1000)), Action::Renew);
        l.renewed(t0 + ms(1000));
        assert_eq!(l.holds(t0 + ms(2999)), Some(7));
        // Paused (SIGSTOP) for 10 s: on waking it holds nothing and tries anew.
        let woke = t0 + ms(13_000);
        assert_eq!(l.holds(woke), None);
        assert_eq!(l.next(woke), Action::Acquire);
    }

    #[test]
    fn redis_failing_keeps_the_grant_until_it_runs_out_then_not() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Lease::new(ms(3000));
        l.acquired(1, t0);
        l.failed(t0 + ms(1000));
        assert_eq!(l.holds(t0 + ms(1500)), Some(1));
        assert_eq!(l.next(t0 + ms(1300)), Action::Renew);
        assert_eq!(l.holds(t0 + ms(2100)), None);
        l.lost(t0 + ms(2100));
        assert_eq!(l.release(), None);
    }
}
