//! Reconnect delays: exponential with full jitter, so a fleet that lost its
//! aggregator at the same moment does not come back at the same moment.
//! Pure: the caller supplies the randomness.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Delays start near `initial` and double up to `max`; `seed` drives the jitter.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Self {
            initial: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The next delay: uniform in [cap/2, cap] where cap = min(max, initial * 2^attempt).
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng % 1000) as u32;
        cap / 2 + (cap / 2) * frac / 1000
    }

    /// Back to the initial delay (after a session came up).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 42);
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(2)));
        assert!(d[7] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        // Two agents with different seeds do not retry in lockstep.
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 1);
        let mut c = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2);
        let same = (0..6).filter(|_| a.next_delay() == c.next_delay()).count();
        assert!(same < 6);
    }
}
