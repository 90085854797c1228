//! Reconnect delays: jittered exponential backoff, capped. Pure: the driver
//! passes the jitter (a number in `[0, 1)`) so tests pin it.

use std::time::Duration;

/// Exponential backoff with "full jitter" on the upper half: attempt `n` waits
/// between half and all of `min(cap, first * 2^n)`, so many aggregators that
/// lost one Redis do not reconnect in step, and none waits less than half its
/// step.
///
/// ```
/// use ferrule_aggregator::fanout::backoff::Backoff;
/// use std::time::Duration;
/// let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
/// let second = b.next_delay(0.999);
/// assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(200));
/// b.reset();
/// assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `first`, never above `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap: cap.max(first),
            attempt: 0,
        }
    }

    /// The delay before the next attempt; `jitter` in `[0, 1)` (clamped).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self
            .first
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1).min(31);
        let j = jitter.clamp(0.0, 1.0);
        let d = step.mul_f64(0.5 + 0.5 * j);
        // Rounded to whole milliseconds: the doc example and logs stay readable.
        Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64)
    }

    /// After a success: the next failure starts again from `first`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A small xorshift generator for jitter (no need for a crypto RNG here).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded (a zero seed is replaced: xorshift would stay at zero).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next number in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_the_jitter_band() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let lows: Vec<u64> = (0..8)
            .map(|_| b.next_delay(0.0).as_millis() as u64)
            .collect();
        assert_eq!(lows, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..100 {
            let d = b.next_delay(0.999);
            assert!(d <= Duration::from_secs(2), "{d:?}");
        }
    }

    #[test]
    fn jitter_stays_in_range_and_moves() {
        let mut j = Jitter::new(0);
        let xs: Vec<f64> = (0..1000).map(|_| j.next_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}
