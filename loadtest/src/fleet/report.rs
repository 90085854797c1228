//! The fleet run's report: one JSON document for machines, a Markdown summary
//! for people, and SVG plots (throughput and latency over time, the latency
//! distribution), written side by side in one directory.

use super::verify::Verdict;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// What was run, where: the figures mean nothing without it.
#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    /// Simulated agents (each a QUIC connection with its own certificate).
    pub agents: usize,
    /// Samples per second each agent generates (seven sensors).
    pub rate_per_agent: u64,
    /// Offered events per second over the fleet.
    pub offered_events_per_sec: u64,
    /// The agents' batching window, milliseconds.
    pub window_ms: u64,
    /// Samples per batch (on average: batches are cut by time in whole ticks
    /// of the seven sensors).
    pub batch_samples: u64,
    /// Measured seconds.
    pub secs: u64,
    /// Warm-up seconds before the measurement.
    pub warmup_secs: u64,
    /// Whether the aggregator evaluated the three-phase alert rules.
    pub rules: bool,
    /// A voltage sag per agent every this many seconds (0: none).
    pub sag_every_secs: u32,
    /// Where batches were committed.
    pub sink: String,
    /// How batches reached the real-time consumers (the alert evaluator).
    pub fan_out: String,
    /// The file system holding the aggregator's log (`stat -f`).
    pub file_system: String,
    /// Cores this machine offers.
    pub cores: usize,
    /// When the run started, seconds since the Unix epoch.
    pub started_unix: u64,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// 50th percentile.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

/// A latency the aggregator measured itself, read from its Prometheus
/// histogram: each figure is the upper bound of the bucket that holds it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BucketPercentiles {
    /// Observations.
    pub count: u64,
    /// Bucket bound at or below which half of them lie, milliseconds.
    pub p50_le: f64,
    /// Bucket bound for the 99th percentile, milliseconds.
    pub p99_le: f64,
}

/// The sampler at the end of the run (the last aggregator process).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sampler {
    /// 1 while this aggregator holds the sampler lease.
    pub active: u64,
    /// The fence of its current grant (each grant is above every earlier one).
    pub fence: u64,
    /// Snapshots it stored.
    pub snapshots: u64,
    /// Its writes the store refused (a stale fence).
    pub writes_refused: u64,
}

impl Sampler {
    /// From a `/metrics` exposition.
    pub fn from_exposition(text: &str) -> Self {
        let m = |name| crate::procs::metric_sum(text, name);
        Self {
            active: m("ferrule_aggregator_sampler_active"),
            fence: m("ferrule_aggregator_sampler_fence"),
            snapshots: m("ferrule_aggregator_sampler_snapshots_total"),
            writes_refused: m("ferrule_aggregator_sampler_writes_refused_total"),
        }
    }
}

/// What the aggregator's fan-out did, from its counters at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FanOut {
    /// Batches published to the real-time path.
    pub published: u64,
    /// Batches the fan-out skipped (Redis away or slow), every reason.
    pub skipped: u64,
    /// Entries a consumer lost by lagging behind its bounded queue.
    pub lagged: u64,
    /// Entries a Redis consumer group lost to the stream's cap.
    pub group_lost: u64,
}

impl FanOut {
    /// From a `/metrics` exposition.
    pub fn from_exposition(text: &str) -> Self {
        Self {
            published: crate::procs::metric_sum(text, "ferrule_aggregator_fanout_published_total"),
            skipped: crate::procs::metric_sum(text, "ferrule_aggregator_fanout_skipped_total"),
            lagged: crate::procs::metric_sum(text, "ferrule_aggregator_fanout_lagged_total"),
            group_lost: crate::procs::metric_sum(
                text,
                "ferrule_aggregator_fanout_group_lost_total",
            ),
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Seconds since the agents started.
    pub t_secs: f64,
    /// Whether this second counted in the totals.
    pub measured: bool,
    /// Events acknowledged in this second, per second.
    pub events_per_sec: f64,
    /// Ack latency of the batches acknowledged in this second, milliseconds.
    pub ack_p50_ms: f64,
    /// 99th percentile.
    pub ack_p99_ms: f64,
    /// Largest.
    pub ack_max_ms: f64,
    /// Sessions up.
    pub connected: u64,
    /// Batches generated and not yet acknowledged, over the fleet.
    pub backlog_batches: u64,
}

/// Throughput over the measured period.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Events acknowledged (committed) per second.
    pub events_per_sec: f64,
    /// Batches acknowledged per second.
    pub batches_per_sec: f64,
}

/// CPU and memory of one process over the measured period.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    /// CPU seconds used.
    pub cpu_secs: f64,
    /// Cores busy on average.
    pub cores: f64,
    /// CPU seconds per million events acknowledged.
    pub cpu_secs_per_million: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
}

/// Connections and backlog.
#[derive(Debug, Clone, Serialize)]
pub struct Sessions {
    /// Connection attempts that failed before Welcome (each retried).
    pub refused: u64,
    /// Sessions that failed after Welcome (each resumed).
    pub lost: u64,
    /// Sessions the aggregator ended with GoAway (drained, then moved).
    pub moved: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Most batches the fleet held unacknowledged at once.
    pub backlog_peak_batches: u64,
    /// Batches not generated because an agent held its cap (the generator
    /// fell behind: the run's latency figures understate the truth).
    pub not_generated: u64,
}

/// A fault the run injected, and how the fleet came back.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// Which fault.
    pub kind: String,
    /// When, seconds since the agents started.
    pub at_secs: f64,
    /// How long what the fault hit was away: the aggregator (kill or drain,
    /// the pause, until it answers `/healthz`), or the broker or Redis (kill,
    /// the pause, the restart).
    pub down_secs: f64,
    /// From the fault to the first second with every agent connected and the
    /// backlog it built drained; `None` if that never came.
    pub recovered_after_secs: Option<f64>,
}

/// The path a `latency` or `reorder` run shaped, and what its relay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayReport {
    /// The delay every datagram got during the fault, each way, ms.
    pub delay_ms: u64,
    /// The widest random delay added to that, ms.
    pub jitter_ms: u64,
    /// The relay's counts over the whole run.
    pub stats: super::relay::RelayStats,
}

/// The certificates a `cert-rotate-revoke` run changed mid-stream, and what
/// the agents and the aggregator made of it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CertsReport {
    /// The aggregator's serving certificate before and after its renewal
    /// (new key), serials in hex.
    pub server_serials: (String, String),
    /// The agent renewed in place (new key), its old serial then revoked as
    /// superseded so its session moves at once.
    pub renewed_agent: String,
    /// The agent revoked for key compromise.
    pub revoked_agent: String,
    /// `ferrule_aggregator_tls_reloads_total{outcome="applied"}`.
    pub reloads_applied: u64,
    /// `ferrule_aggregator_sessions_revoked_total`: live sessions closed
    /// because their certificate was revoked.
    pub sessions_revoked: u64,
    /// Handshakes refused as revoked, as the agents saw them.
    pub refused_revoked: u64,
    /// Sessions established on a certificate reloaded from disk.
    pub reloaded_sessions: u64,
    /// Distinct server certificates the agents' sessions were established
    /// with (2: the old, then the rotated one).
    pub server_certificates_seen: usize,
}

/// Everything one fleet run measured and found.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// What was run, where.
    pub conditions: Conditions,
    /// What got through.
    pub throughput: Throughput,
    /// From a batch's due time (its window's end) to its ack.
    pub ack_latency_ms: Percentiles,
    /// The aggregator's own alert latency histogram (from a batch's arrival to
    /// the alert's emission), when any alert fired.
    pub alert_latency_ms: Option<BucketPercentiles>,
    /// The aggregator's commit latency histogram.
    pub commit_latency_ms: Option<BucketPercentiles>,
    /// The fan-out's counters (from the last aggregator process).
    pub fan_out: FanOut,
    /// The sampler's lease and writes.
    pub sampler: Sampler,
    /// The two consumer groups of a `redis-group-stall` run.
    pub groups: Option<super::groups::GroupsReport>,
    /// What a `cert-rotate-revoke` run changed and what the fleet saw.
    pub certs: Option<CertsReport>,
    /// What the delaying relay of a `latency` or `reorder` run did.
    pub relay: Option<RelayReport>,
    /// The real agents' records in the sink, checked for continuity.
    pub real: Option<super::real::RealVerdict>,
    /// The aggregator process.
    pub aggregator: Cost,
    /// The load generator (this process: every simulated agent).
    pub generator: Cost,
    /// Connections and backlog.
    pub sessions: Sessions,
    /// The fault injected, if any.
    pub fault: Option<FaultReport>,
    /// What the sink holds against what was generated and acknowledged.
    pub verdict: Verdict,
    /// Why the run fails (the verifier's reasons, and the harness's: the
    /// aggregator died, the generator fell behind); empty if it passed.
    pub problems: Vec<String>,
    /// Second by second.
    pub timeline: Vec<Tick>,
    /// The aggregator's and the generator's resources, second by second.
    pub resource_timeline: Vec<super::soak::Sample>,
    /// How they went over the measured period.
    pub resources: super::soak::Resources,
    /// (percentile, milliseconds) of the measured ack latency.
    pub latency_distribution: Vec<(f64, f64)>,
}

/// Percentiles from 0 to 99.999 spaced evenly on a "nines" scale.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    (0..=50)
        .map(|k| {
            let p = 1.0 - 10f64.powf(-f64::from(k) / 10.0);
            (p * 100.0, h.value_at_quantile(p) as f64 / 1000.0)
        })
        .collect()
}

impl FleetReport {
    /// The run passed: the verifier found nothing wrong and neither did the
    /// harness.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// Writes `report.json`, `summary.md`, `throughput.svg`, `latency.svg`,
    /// `latency-distribution.svg` and `resources.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("summary.md"), self.markdown())?;
        let t = |f: fn(&Tick) -> f64| -> Vec<(f64, f64)> {
            self.timeline.iter().map(|k| (k.t_secs, f(k))).collect()
        };
        std::fs::write(
            dir.join("throughput.svg"),
            line_chart(
                "Events acknowledged per second",
                "seconds",
                "events/s",
                &[("acknowledged", "#1f77b4", t(|k| k.events_per_sec))],
            ),
        )?;
        std::fs::write(
            dir.join("latency.svg"),
            line_chart(
                "Ack latency per second",
                "seconds",
                "ms",
                &[
                    ("p50", "#2ca02c", t(|k| k.ack_p50_ms)),
                    ("p99", "#ff7f0e", t(|k| k.ack_p99_ms)),
                    ("max", "#d62728", t(|k| k.ack_max_ms)),
                ],
            ),
        )?;
        let r = |f: fn(&super::soak::Sample) -> f64| -> Vec<(f64, f64)> {
            self.resource_timeline
                .iter()
                .map(|k| (k.t_secs, f(k)))
                .collect()
        };
        std::fs::write(
            dir.join("resources.svg"),
            line_chart(
                "Resources per second",
                "seconds",
                "MiB, descriptors, threads",
                &[
                    ("aggregator RSS (MiB)", "#1f77b4", r(|k| k.agg_rss_mib)),
                    ("generator RSS (MiB)", "#aec7e8", r(|k| k.gen_rss_mib)),
                    ("aggregator file descriptors", "#ff7f0e", r(|k| k.agg_fds)),
                    ("aggregator threads", "#2ca02c", r(|k| k.agg_threads)),
                ],
            ),
        )?;
        let nines: Vec<(f64, f64)> = self
            .latency_distribution
            .iter()
            .map(|&(p, ms)| (-(1.0 - p / 100.0).max(1e-5).log10(), ms))
            .collect();
        std::fs::write(
            dir.join("latency-distribution.svg"),
            line_chart(
                "Ack latency distribution (x: nines, 1 = p90, 2 = p99, 3 = p99.9)",
                "percentile (nines)",
                "ms",
                &[("ack latency", "#9467bd", nines)],
            ),
        )?;
        Ok(())
    }

    /// The summary a person reads first.
    pub fn markdown(&self) -> String {
        let c = &self.conditions;
        let v = &self.verdict;
        let a = &self.ack_latency_ms;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Fleet run: {} agents x {} events/s\n",
            c.agents, c.rate_per_agent
        );
        let _ = writeln!(
            s,
            "{} agents, {} samples/s each ({} events/s offered), batching window {} ms ({} samples a batch), {} s measured after {} s of warm-up, {}, fan-out {}, alert rules {}, log on {}, {} cores.\n",
            c.agents,
            c.rate_per_agent,
            c.offered_events_per_sec,
            c.window_ms,
            c.batch_samples,
            c.secs,
            c.warmup_secs,
            c.sink,
            c.fan_out,
            if c.rules { "on" } else { "off" },
            c.file_system,
            c.cores
        );
        let _ = writeln!(s, "| figure | value |\n|---|---|");
        let _ = writeln!(
            s,
            "| verdict | **{}**: lost {}, duplicates {}{}, out of order {}, unknown {}, wrong sample counts {} |",
            if self.passed() { "PASS" } else { "FAIL" },
            v.lost,
            v.duplicates,
            if v.duplicates > 0 && v.duplicates_expected {
                " (expected: Kafka after an aggregator crash; consumers drop them by (agent, epoch, seq))"
            } else {
                ""
            },
            v.out_of_order,
            v.unknown,
            v.wrong_samples
        );
        let _ = writeln!(
            s,
            "| batches | generated {}, acknowledged {}, rejected {}, in the sink {}, unsettled at stop {}{} |",
            v.generated,
            v.acked,
            v.rejected,
            v.records,
            v.unsettled,
            if v.held_by_revoked > 0 {
                format!(", held by revoked agents {}", v.held_by_revoked)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "| throughput | {:.0} events/s ({:.0} batches/s) |",
            self.throughput.events_per_sec, self.throughput.batches_per_sec
        );
        let _ = writeln!(
            s,
            "| ack latency (from due) | p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2} ({} batches) |",
            a.p50, a.p90, a.p99, a.p999, a.max, a.count
        );
        if let Some(al) = &self.alert_latency_ms {
            let _ = writeln!(
                s,
                "| alert latency (from arrival, bucket bounds) | p50 <= {} ms, p99 <= {} ms ({} alerts) |",
                al.p50_le, al.p99_le, al.count
            );
        }
        if let Some(cl) = &self.commit_latency_ms {
            let _ = writeln!(
                s,
                "| commit latency (bucket bounds) | p50 <= {} ms, p99 <= {} ms |",
                cl.p50_le, cl.p99_le
            );
        }
        let fo = &self.fan_out;
        let _ = writeln!(
            s,
            "| fan-out | published {}, skipped {}, lost by lagging consumers {}, lost by groups to the cap {} |",
            fo.published, fo.skipped, fo.lagged, fo.group_lost
        );
        if let Some(g) = &self.groups {
            let _ = writeln!(
                s,
                "| consumer groups | fast read {} entries ({} batches), lost {} (counted); slow read {} then stalled, lost {} to the cap (counted), {} left unread; longest stream {} entries (cap {}); healthz: {} |",
                g.fast.entries,
                g.fast.distinct,
                g.fast_lost_counted,
                g.slow.entries,
                g.slow_lost_counted,
                g.slow_waiting,
                g.longest_stream,
                g.max_len,
                g.healthz
            );
        }
        if let Some(v) = &self.real {
            let _ = writeln!(
                s,
                "| real agents | {} agents, {} records ({} samples) over {} epochs; {} duplicates, {} seqs missing, {} out of order; holes in a feed: {} at kills (longest {} ms), {} elsewhere; {} batches held in spools at the end; spool: {} bytes torn, {} recoveries from damage logged, {} corrupt records counted |",
                v.agents,
                v.records,
                v.samples,
                v.epochs,
                v.duplicates,
                v.seq_gaps,
                v.out_of_order,
                v.holes_at_kills,
                v.longest_kill_hole_ms,
                v.holes_unexplained,
                v.held_in_spools,
                v.torn_bytes,
                v.spool_damage_recovered,
                v.spool_corrupt_counted
            );
        }
        if let Some(p) = &self.relay {
            let _ = writeln!(
                s,
                "| path | through a relay: {} ms + 0-{} ms each way during the fault; {} datagrams relayed, {} delayed, {} out of order, {} dropped (relay full), {} errors |",
                p.delay_ms,
                p.jitter_ms,
                p.stats.relayed,
                p.stats.delayed,
                p.stats.reordered,
                p.stats.dropped_full,
                p.stats.errors
            );
        }
        if let Some(c) = &self.certs {
            let _ = writeln!(
                s,
                "| certificates | server renewed (serial {} to {}), reloads applied {}, agents saw {} server certificates; {} renewed in place (new key, old serial superseded), {} sessions on reloaded certificates; {} revoked (keyCompromise): sessions closed as revoked {}, handshakes refused as revoked {} |",
                &c.server_serials.0[..c.server_serials.0.len().min(8)],
                &c.server_serials.1[..c.server_serials.1.len().min(8)],
                c.reloads_applied,
                c.server_certificates_seen,
                c.renewed_agent,
                c.reloaded_sessions,
                c.revoked_agent,
                c.sessions_revoked,
                c.refused_revoked
            );
        }
        for (name, k) in [
            ("aggregator", &self.aggregator),
            ("load generator", &self.generator),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {:.3} CPU-s per million events ({:.2} cores), RSS {:.1} MiB |",
                k.cpu_secs_per_million, k.cores, k.rss_mib
            );
        }
        let rs = &self.resources;
        let _ = writeln!(
            s,
            "| resources (measured period) | aggregator RSS {:.1} to {:.1} MiB (peaks: middle third {:.1}, last third {:.1}; {:+.1} MiB an hour), descriptors {:.0} to {:.0} (peak {:.0}), threads {:.0} to {:.0}; log {:.1} to {:.1} MiB ({:+.0} MiB an hour); generator RSS {:.1} to {:.1} MiB |",
            rs.agg_rss_mib.first,
            rs.agg_rss_mib.last,
            rs.agg_rss_mib.middle_max,
            rs.agg_rss_mib.last_third_max,
            rs.agg_rss_mib.per_hour,
            rs.agg_fds.first,
            rs.agg_fds.last,
            rs.agg_fds.max,
            rs.agg_threads.first,
            rs.agg_threads.last,
            rs.log_mib.first,
            rs.log_mib.last,
            rs.log_mib.per_hour,
            rs.gen_rss_mib.first,
            rs.gen_rss_mib.last
        );
        let ss = &self.sessions;
        let _ = writeln!(
            s,
            "| sessions | refused {}, lost {}, moved on GoAway {}, backlog peak {} batches, not generated {} |",
            ss.refused, ss.lost, ss.moved, ss.backlog_peak_batches, ss.not_generated
        );
        let sm = &self.sampler;
        let _ = writeln!(
            s,
            "| sampler | active {}, fence {}, snapshots {}, writes refused {} |",
            sm.active, sm.fence, sm.snapshots, sm.writes_refused
        );
        if let Some(f) = &self.fault {
            let _ = writeln!(
                s,
                "| fault | {} at {:.1} s, down {:.1} s, recovered after {} |",
                f.kind,
                f.at_secs,
                f.down_secs,
                f.recovered_after_secs
                    .map_or("never (within the run)".to_string(), |r| format!(
                        "{r:.1} s"
                    ))
            );
        }
        if let Some(e) = &ss.first_error {
            let _ = writeln!(s, "\nFirst session error: `{e}`");
        }
        for p in &self.problems {
            let _ = writeln!(s, "\nFAIL: {p}");
        }
        if !v.lost_examples.is_empty() {
            let _ = writeln!(s, "\nLost, for example: {}", v.lost_examples.join("; "));
        }
        let _ = writeln!(
            s,
            "\nPlots: throughput.svg, latency.svg, latency-distribution.svg, resources.svg. Data: report.json."
        );
        s
    }
}

/// One plotted line: its name, its colour and its (x, y) points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A plain SVG line chart: linear axes from zero, a legend, ticks at round values.
fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Line<'_>]) -> String {
    let (w, h, l, r, t, b) = (800.0, 400.0, 80.0, 20.0, 40.0, 50.0);
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let xmax = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|&(x, _)| finite(x)))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let ymax = nice(
        series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|&(_, y)| finite(y)))
            .fold(0.0f64, f64::max),
    );
    let px = |x: f64| l + finite(x) / xmax * (w - l - r);
    let py = |y: f64| h - b - finite(y) / ymax * (h - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let y = ymax * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            x2 = w - r,
            yy = py(y),
            tx = l - 6.0,
            ty = py(y) + 4.0,
            label = short(y)
        );
        let x = xmax * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            h - b + 16.0,
            short(x)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        (l + w - r) / 2.0,
        h - 12.0,
        esc(x_label),
        h / 2.0,
        h / 2.0,
        esc(y_label)
    );
    let _ = writeln!(
        s,
        r#"<line x1="{l}" x2="{l}" y1="{t}" y2="{}" stroke="black"/><line x1="{l}" x2="{}" y1="{}" y2="{}" stroke="black"/>"#,
        h - b,
        w - r,
        h - b,
        h - b
    );
    for (i, (name, color, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
        let ly = t + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            w - r - 140.0,
            ly - 4.0,
            w - r - 122.0,
            ly,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A round axis maximum at or above `v`.
fn nice(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

/// An axis label: 1.5M, 250k, 12, 0.25.
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Percentiles of a Prometheus histogram `name` in an exposition: the upper
/// bound (milliseconds) of the first bucket holding each quantile; `None` if
/// it has no observations.
pub fn bucket_percentiles(text: &str, name: &str) -> Option<BucketPercentiles> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, n))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map_or(f64::INFINITY, |(le, _)| le * 1000.0)
    };
    Some(BucketPercentiles {
        count: total as u64,
        p50_le: at(0.5),
        p99_le: at(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_percentiles_name_the_bucket_holding_each_quantile() {
        let text = "# TYPE x histogram\n\
            x_bucket{le=\"0.001\"} 60\n\
            x_bucket{le=\"0.002\"} 98\n\
            x_bucket{le=\"0.004\"} 100\n\
            x_bucket{le=\"+Inf\"} 100\n\
            x_count 100\n";
        let p = bucket_percentiles(text, "x").unwrap();
        assert_eq!(p.count, 100);
        assert_eq!(p.p50_le, 1.0);
        assert_eq!(p.p99_le, 4.0);
        assert!(bucket_percentiles("x_bucket{le=\"+Inf\"} 0\n", "x").is_none());
    }

    #[test]
    fn counters_sum_over_their_series_only() {
        let text =
            "# TYPE x counter\nx_total{stream=\"a\"} 3\nx_total{stream=\"b\"} 4\nx_total_other 9\n";
        assert_eq!(crate::procs::metric_sum(text, "x_total"), 7);
    }

    #[test]
    fn charts_are_svg_with_every_series() {
        let svg = line_chart(
            "t <1>",
            "s",
            "ms",
            &[
                ("p50", "#000", vec![(0.0, 1.0), (1.0, 2.0)]),
                ("p99", "#111", vec![(0.0, f64::NAN)]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;") && !svg.contains("NaN"));
    }
}
