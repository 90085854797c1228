//! A deterministic three-phase electrical feed: the workload the sample codec is
//! tuned and benchmarked on, and a source of realistic batches for tests and load
//! generators.
//!
//! Seven series sampled together: phase voltages `va vb vc` (230 V rms, 0.01 V
//! resolution), phase currents `ia ib ic` (100 A rms lagging 20 degrees, 1 mA
//! resolution) and frequency `f` (50 Hz with a slow drift, 1 mHz resolution), each
//! with Gaussian noise. Values are rounded to the instrument's resolution, as a
//! meter reports them; [`FeedOptions::full_precision`] turns that off to show the
//! codec's worst case.

use crate::ids::SensorId;
use crate::samples::{Quality, Series};

/// Names of the seven series, in sensor id order starting at 0.
pub const SENSORS: [&str; 7] = ["va", "vb", "vc", "ia", "ib", "ic", "f"];
/// Units of the seven series.
pub const UNITS: [&str; 7] = ["V", "V", "V", "A", "A", "A", "Hz"];

/// How the feed behaves.
#[derive(Debug, Clone, Copy)]
pub struct FeedOptions {
    /// Sampling rate of every series, hertz.
    pub rate_hz: u32,
    /// Timestamp jitter (uniform, +/-), nanoseconds; 0 for an exact sampling clock.
    pub jitter_ns: u32,
    /// Keep the noise's full f64 precision instead of the instrument's resolution.
    pub full_precision: bool,
    /// A voltage sag to 70 % for 100 ms starts every this many seconds (0: never).
    pub sag_every_secs: u32,
}

impl Default for FeedOptions {
    fn default() -> Self {
        Self {
            rate_hz: 1000,
            jitter_ns: 0,
            full_precision: false,
            sag_every_secs: 0,
        }
    }
}

/// The feed's state: a seeded generator and the next tick.
#[derive(Debug, Clone)]
pub struct ThreePhaseFeed {
    rng: SplitMix64,
    opts: FeedOptions,
    tick: u64,
    start_ns: i64,
}

impl ThreePhaseFeed {
    /// A feed starting at `start_ns`, identical for identical seeds and options.
    pub fn new(seed: u64, start_ns: i64, opts: FeedOptions) -> Self {
        Self {
            rng: SplitMix64(seed),
            opts,
            tick: 0,
            start_ns,
        }
    }

    /// Generates the next `samples` samples (whole ticks of seven series, the
    /// last tick cut short if needed) as one series per sensor.
    pub fn next_batch(&mut self, samples: usize) -> Vec<Series> {
        let ticks = samples.div_ceil(SENSORS.len());
        let mut out: Vec<Series> = (0..SENSORS.len() as u32)
            .map(|i| Series::with_capacity(SensorId(i), ticks))
            .collect();
        let period_ns = 1_000_000_000 / i64::from(self.opts.rate_hz.max(1));
        let mut left = samples;
        while left > 0 {
            let base = self.start_ns + self.tick as i64 * period_ns;
            let t_secs = self.tick as f64 / f64::from(self.opts.rate_hz.max(1));
            let freq = 50.0 + 0.02 * (t_secs * 0.1).sin() + self.rng.gauss() * 0.002;
            let sag = self.opts.sag_every_secs > 0
                && (t_secs % f64::from(self.opts.sag_every_secs)) < 0.1
                && t_secs >= 1.0;
            let v_rms = if sag { 161.0 } else { 230.0 };
            let angle = 2.0 * std::f64::consts::PI * 50.0 * t_secs;
            let mut values = [0.0; 7];
            for p in 0..3 {
                let shift = p as f64 * 2.0 * std::f64::consts::PI / 3.0;
                values[p] = v_rms * std::f64::consts::SQRT_2 * (angle - shift).sin()
                    + self.rng.gauss() * 0.5;
                values[3 + p] = 100.0 * std::f64::consts::SQRT_2 * (angle - shift - 0.35).sin()
                    + self.rng.gauss() * 0.05;
            }
            values[6] = freq;
            if !self.opts.full_precision {
                for (i, v) in values.iter_mut().enumerate() {
                    let scale = match i {
                        0..=2 => 100.0,
                        3..=5 => 1000.0,
                        _ => 1000.0,
                    };
                    *v = (*v * scale).round() / scale;
                }
            }
            for (i, v) in values.iter().enumerate() {
                if left == 0 {
                    break;
                }
                let jitter = if self.opts.jitter_ns > 0 {
                    let span = u64::from(self.opts.jitter_ns) * 2 + 1;
                    (self.rng.next() % span) as i64 - i64::from(self.opts.jitter_ns)
                } else {
                    0
                };
                out[i].push(base + jitter, *v, Quality::Good);
                left -= 1;
            }
            self.tick += 1;
        }
        out
    }
}

/// SplitMix64: tiny, fast and good enough for test signals (not for cryptography).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal, by Box-Muller.
    fn gauss(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_is_deterministic_and_sized() {
        let a = ThreePhaseFeed::new(42, 0, FeedOptions::default()).next_batch(1000);
        let b = ThreePhaseFeed::new(42, 0, FeedOptions::default()).next_batch(1000);
        assert_eq!(a, b);
        assert_eq!(a.iter().map(Series::len).sum::<usize>(), 1000);
        // 143 ticks: the first six series get 143 samples, frequency 142.
        assert_eq!(a[0].len(), 143);
        assert_eq!(a[6].len(), 142);
        let peak = a[0].values().iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!((300.0..350.0).contains(&peak), "peak {peak}");
    }
}
