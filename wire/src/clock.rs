//! Clock offset estimation from heartbeat exchanges (the NTP on-wire calculation).
//!
//! An agent whose clock is off gives confident wrong answers downstream, so the
//! agent measures its offset to the aggregator and carries it with every batch.
//! Pure arithmetic: the caller supplies all four timestamps.

use crate::message::Heartbeat;

/// One clock measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// Aggregator clock minus agent clock, nanoseconds.
    pub offset_ns: i64,
    /// Round trip time excluding the aggregator's processing, nanoseconds.
    pub rtt_ns: i64,
}

/// Computes offset and round trip from a heartbeat reply received at `arrival_ns`
/// (agent clock). `None` if the timestamps are inconsistent (negative round trip),
/// which happens when a clock steps mid-exchange.
///
/// ```
/// use ferrule_wire::{clock::sample, Heartbeat};
/// // Agent clock 5 ms behind; 2 ms each way; 1 ms processing.
/// let hb = Heartbeat { origin_ns: 100_000_000, receive_ns: 107_000_000, transmit_ns: 108_000_000 };
/// let s = sample(&hb, 105_000_000).unwrap();
/// assert_eq!(s.offset_ns, 5_000_000);
/// assert_eq!(s.rtt_ns, 4_000_000);
/// ```
pub fn sample(reply: &Heartbeat, arrival_ns: i64) -> Option<ClockSample> {
    let (t0, t1, t2, t3) = (
        i128::from(reply.origin_ns),
        i128::from(reply.receive_ns),
        i128::from(reply.transmit_ns),
        i128::from(arrival_ns),
    );
    let rtt = (t3 - t0) - (t2 - t1);
    if rtt < 0 || t2 < t1 {
        return None;
    }
    let offset = ((t1 - t0) + (t2 - t3)) / 2;
    Some(ClockSample {
        offset_ns: i64::try_from(offset).ok()?,
        rtt_ns: i64::try_from(rtt).ok()?,
    })
}

/// Keeps the best of recent samples: the one with the smallest round trip is the
/// least distorted by queueing, as NTP's clock filter does.
#[derive(Debug, Clone, Default)]
pub struct ClockFilter {
    recent: Vec<ClockSample>,
}

/// Samples the filter keeps.
const FILTER_SIZE: usize = 8;

impl ClockFilter {
    /// Adds a sample, forgetting the oldest beyond the window.
    pub fn add(&mut self, s: ClockSample) {
        if self.recent.len() == FILTER_SIZE {
            self.recent.remove(0);
        }
        self.recent.push(s);
    }

    /// The current estimate: the sample with the smallest round trip.
    pub fn estimate(&self) -> Option<ClockSample> {
        self.recent.iter().min_by_key(|s| s.rtt_ns).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inconsistent_replies_are_ignored() {
        let hb = Heartbeat {
            origin_ns: 100,
            receive_ns: 50,
            transmit_ns: 40,
        };
        assert_eq!(sample(&hb, 200), None);
        let hb = Heartbeat {
            origin_ns: 100,
            receive_ns: 0,
            transmit_ns: 1_000,
        };
        assert_eq!(sample(&hb, 150), None);
    }

    #[test]
    fn filter_prefers_the_shortest_round_trip() {
        let mut f = ClockFilter::default();
        f.add(ClockSample {
            offset_ns: 900,
            rtt_ns: 50,
        });
        f.add(ClockSample {
            offset_ns: 10,
            rtt_ns: 2,
        });
        f.add(ClockSample {
            offset_ns: -400,
            rtt_ns: 30,
        });
        assert_eq!(f.estimate().map(|s| s.offset_ns), Some(10));
        for _ in 0..FILTER_SIZE {
            f.add(ClockSample {
                offset_ns: 7,
                rtt_ns: 9,
            });
        }
        assert_eq!(f.estimate().map(|s| s.offset_ns), Some(7));
    }
}
