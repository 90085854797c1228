//! What a long run's resources did: the aggregator's RSS, open file
//! descriptors and threads, the size of its log, and the fleet's backlog,
//! sampled every second; and, for a soak (`--soak`), the verdict a person
//! would reach looking at the plot: did anything keep growing?
//!
//! A leak shows as growth that does not level off, so the verdict compares
//! the last third of the measured period with the middle third (the first
//! third is left for caches, pools and allocator arenas to reach their
//! size): the last third's peak may not exceed the middle third's by more
//! than a tolerance. The log is the durable store and grows by design; its
//! rate is reported, not judged.

use serde::Serialize;
use std::path::Path;

/// One second's resources.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Seconds since the agents started.
    pub t_secs: f64,
    /// Whether this second counted in the totals (after the warm-up).
    pub measured: bool,
    /// The aggregator's resident memory, MiB.
    pub agg_rss_mib: f64,
    /// Its open file descriptors.
    pub agg_fds: f64,
    /// Its threads.
    pub agg_threads: f64,
    /// The load generator's resident memory, MiB.
    pub gen_rss_mib: f64,
    /// The aggregator's data directory (the embedded log), MiB.
    pub log_mib: f64,
    /// Batches generated and not yet acknowledged over the fleet.
    pub backlog_batches: f64,
}

/// Reads `/proc/PID/status` for `VmRSS` (MiB) and `Threads`.
fn status(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field("VmRSS:") / 1024.0, field("Threads:"))
}

/// Bytes under `dir`, recursively (the log holds a few directories of
/// segment files; symlinks are not followed).
fn dir_bytes(dir: &Path, depth: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() && depth < 4 => dir_bytes(&e.path(), depth + 1),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Samples the aggregator `agg_pid` (its data in `data`) and this process.
pub fn sample(t_secs: f64, measured: bool, agg_pid: u32, data: &Path, backlog: u64) -> Sample {
    let (agg_rss_mib, agg_threads) = status(agg_pid);
    let agg_fds = std::fs::read_dir(format!("/proc/{agg_pid}/fd")).map_or(0, |d| d.count()) as f64;
    let (gen_rss_mib, _) = status(std::process::id());
    Sample {
        t_secs,
        measured,
        agg_rss_mib,
        agg_fds,
        agg_threads,
        gen_rss_mib,
        log_mib: dir_bytes(data, 0) as f64 / (1024.0 * 1024.0),
        backlog_batches: backlog as f64,
    }
}

/// How one quantity went over the measured period.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Trend {
    /// At the start of the measured period.
    pub first: f64,
    /// At its end.
    pub last: f64,
    /// The most it was.
    pub max: f64,
    /// Least-squares slope, per hour.
    pub per_hour: f64,
    /// The middle third's peak.
    pub middle_max: f64,
    /// The last third's peak.
    pub last_third_max: f64,
    /// The middle third's mean.
    pub middle_mean: f64,
    /// The last third's mean.
    pub last_third_mean: f64,
}

/// The trend of `(t_secs, value)` points; all zero without points.
pub fn trend(points: &[(f64, f64)]) -> Trend {
    let (Some(&(_, first)), Some(&(_, last))) = (points.first(), points.last()) else {
        return Trend::default();
    };
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(sxy, sxx), &(x, y)| {
        (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx))
    });
    let third = points.len() / 3;
    let peak = |s: &[(f64, f64)]| s.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let mean = |s: &[(f64, f64)]| {
        if s.is_empty() {
            0.0
        } else {
            s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64
        }
    };
    let (middle, end) = (
        &points[third..points.len() - third],
        &points[points.len() - third..],
    );
    Trend {
        first,
        last,
        max: peak(points),
        per_hour: if sxx > 0.0 { sxy / sxx * 3600.0 } else { 0.0 },
        middle_max: peak(middle),
        last_third_max: peak(end),
        middle_mean: mean(middle),
        last_third_mean: mean(end),
    }
}

/// The resources of a run, over its measured seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    /// The aggregator's RSS, MiB.
    pub agg_rss_mib: Trend,
    /// Its open file descriptors.
    pub agg_fds: Trend,
    /// Its threads.
    pub agg_threads: Trend,
    /// The load generator's RSS, MiB.
    pub gen_rss_mib: Trend,
    /// The log's size, MiB (grows by design: reported, not judged).
    pub log_mib: Trend,
    /// The fleet's backlog, batches.
    pub backlog_batches: Trend,
}

impl Resources {
    /// From the samples of the measured period.
    pub fn of(samples: &[Sample]) -> Self {
        let m: Vec<&Sample> = samples.iter().filter(|s| s.measured).collect();
        let t =
            |f: fn(&Sample) -> f64| trend(&m.iter().map(|s| (s.t_secs, f(s))).collect::<Vec<_>>());
        Self {
            agg_rss_mib: t(|s| s.agg_rss_mib),
            agg_fds: t(|s| s.agg_fds),
            agg_threads: t(|s| s.agg_threads),
            gen_rss_mib: t(|s| s.gen_rss_mib),
            log_mib: t(|s| s.log_mib),
            backlog_batches: t(|s| s.backlog_batches),
        }
    }

    /// What kept growing, one phrase each (empty: flat). A quantity grew when
    /// the last third's peak is above the middle third's by more than its
    /// tolerance: RSS 10 % and 8 MiB, descriptors 4, threads 2. The backlog
    /// jumps from second to second, so its means are compared: the last
    /// third's may exceed the middle third's by half and `agents` batches
    /// (one each).
    pub fn growth(&self, agents: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, t: &Trend, allowed: f64| {
            if t.last_third_max > t.middle_max + allowed {
                out.push(format!(
                    "{name} kept growing: the last third's peak {:.1} against the middle third's {:.1} ({:+.1} an hour)",
                    t.last_third_max, t.middle_max, t.per_hour
                ));
            }
        };
        check(
            "aggregator RSS (MiB)",
            &self.agg_rss_mib,
            (self.agg_rss_mib.middle_max * 0.10).max(8.0),
        );
        check("aggregator file descriptors", &self.agg_fds, 4.0);
        check("aggregator threads", &self.agg_threads, 2.0);
        let b = &self.backlog_batches;
        if b.last_third_mean > b.middle_mean * 1.5 + agents as f64 {
            out.push(format!(
                "the backlog kept growing: {:.0} batches on average in the last third against {:.0} in the middle third",
                b.last_third_mean, b.middle_mean
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(f: impl Fn(f64) -> f64) -> Vec<Sample> {
        (0..600)
            .map(|i| {
                let t = f64::from(i);
                Sample {
                    t_secs: t,
                    measured: true,
                    agg_rss_mib: f(t),
                    agg_fds: 40.0,
                    agg_threads: 8.0,
                    backlog_batches: 5.0,
                    ..Sample::default()
                }
            })
            .collect()
    }

    #[test]
    fn memory_that_levels_off_is_flat_and_memory_that_climbs_is_not() {
        // Grows in the first minutes, then stays, with a little jitter.
        let flat = Resources::of(&samples(|t| {
            30.0 + 20.0 * (t / 120.0).min(1.0) + (t % 7.0) * 0.3
        }));
        assert_eq!(flat.growth(10), Vec::<String>::new());
        // 6 MiB a minute, never stopping: 60 MiB over 10 minutes.
        let leak = Resources::of(&samples(|t| 30.0 + t / 10.0));
        let why = leak.growth(10);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("RSS"), "{why:?}");
        assert!((leak.agg_rss_mib.per_hour - 360.0).abs() < 1.0);
    }

    #[test]
    fn a_descriptor_leak_and_a_growing_backlog_are_named() {
        let mut s = samples(|_| 30.0);
        for (i, x) in s.iter_mut().enumerate() {
            x.agg_fds = 40.0 + (i / 30) as f64; // one more every 30 s
            x.backlog_batches = i as f64; // never drained
        }
        let why = Resources::of(&s).growth(10);
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].contains("descriptors") && why[1].contains("backlog"));
    }

    #[test]
    fn unmeasured_seconds_and_no_samples_are_left_out() {
        let mut s = samples(|t| 30.0 + t);
        for x in &mut s {
            x.measured = false;
        }
        let r = Resources::of(&s);
        assert_eq!(r.agg_rss_mib, Trend::default());
        assert!(r.growth(1).is_empty());
    }
}
