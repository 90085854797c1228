//! The alert latency benchmark: how long a threshold crossing takes to become an
//! alert, under the transport benchmark's load.
//!
//! One process holds the aggregator (embedded log, the rules of
//! `rules/examples/three-phase.toml`), real agents (`ferrule_agent::run`) whose
//! synthetic feed sags once a second (each sag fires and resolves the
//! undervoltage alert on three phases), and the transport benchmark's blast
//! clients for load. For each `firing` the evaluator emits, two latencies:
//! - **from arrival**: from the moment the batch holding the crossing sample
//!   reached the aggregator (the record's receive time) to the transition's
//!   emission, which is when it is handed to the notifiers;
//! - **from the read**: from the crossing sample's timestamp (taken when the
//!   agent's input read it, moved onto the aggregator's clock with the agent's
//!   offset estimate; one machine here) to the same moment.
//!
//! Run it again with `--no-rules` for the throughput without alerts, and with
//! `--no-fast-path` to see the agent's batching window in the second figure.

use crate::bench::{blast, percentile, BlastSpec, Tally};
use crate::devpki::DevPki;
use crate::inproc;
use crate::procs::{self, AgentSpec};
use anyhow::Context as _;
use ferrule_rules::State;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The rules evaluated: the three-phase example the demo uses.
const RULES: &str = include_str!("../../rules/examples/three-phase.toml");

/// Settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measured seconds (after 3 s of warm-up).
    pub secs: u64,
    /// Real agents with a sag a second.
    pub agents: usize,
    /// Samples per second per sensor of each agent's feed (7 sensors).
    pub agent_rate_hz: u32,
    /// Blast connections for load (0: none).
    pub connections: usize,
    /// Samples per blast batch.
    pub batch_samples: usize,
    /// Offered blast load, events/s over all connections; 0: as fast as credit allows.
    pub rate: u64,
    /// Evaluate no rules (the baseline throughput).
    pub no_rules: bool,
    /// Agents without the crossing fast path (`[alerts] rules` unset).
    pub no_fast_path: bool,
}

/// What it measured.
#[derive(Debug)]
pub struct Report {
    /// Events per second committed and acknowledged to the blast clients.
    pub blast_events_per_sec: f64,
    /// Events per second committed in all (blast and agents).
    pub committed_events_per_sec: f64,
    /// Firing transitions seen while measuring, and how many sags should have fired.
    pub firing: usize,
    /// Expected: agents x 3 phases x seconds.
    pub expected_firing: usize,
    /// Latency from arrival, ms: p50, p99, max.
    pub from_arrival_ms: [f64; 3],
    /// Latency from the read, ms: p50, p99, max.
    pub from_read_ms: [f64; 3],
    /// Batches the evaluator lost by falling behind.
    pub evaluator_lagged: u64,
    /// Process CPU, cores.
    pub cores: f64,
    /// Process RSS at the end, MiB.
    pub rss_mib: f64,
}

/// Runs the benchmark in a scratch directory under the system temp dir.
pub async fn alerts(opts: Options) -> anyhow::Result<Report> {
    let dir = std::env::temp_dir().join(format!("ferrule-alertbench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, &opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn ms3(mut v: Vec<u32>) -> [f64; 3] {
    v.sort_unstable();
    [
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        percentile(&v, 1.0),
    ]
}

async fn run(dir: &Path, opts: &Options) -> anyhow::Result<Report> {
    let pki = DevPki::ensure(&dir.join("pki"))?;
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, RULES)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], procs::free_udp_port()?));
    let alerts = if opts.no_rules {
        String::new()
    } else {
        format!("[alerts]\nrules = {:?}\n", rules.display().to_string())
    };
    let agg_path = dir.join("aggregator.toml");
    std::fs::write(
        &agg_path,
        procs::aggregator_toml(&pki, &dir.join("aggregator"), addr, None, &alerts),
    )?;
    let aggregator = inproc::Aggregator::start(&agg_path)
        .await
        .context("starting the aggregator")?;
    let running = &aggregator.running;
    let measuring = Arc::new(AtomicBool::new(false));

    // Firing transitions while measuring: (from arrival, from read), in µs.
    let collector = running.alerts.as_ref().map(|tx| {
        let mut rx = tx.subscribe();
        let measuring = measuring.clone();
        tokio::spawn(async move {
            let mut lat: Vec<(u32, u32)> = Vec::new();
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        if e.transition.state != State::Firing
                            || e.transition.rule != "undervoltage"
                            || !measuring.load(Ordering::Relaxed)
                        {
                            continue;
                        }
                        let us = |from: i64| {
                            u32::try_from((e.emitted_ns - from).max(0) / 1000).unwrap_or(u32::MAX)
                        };
                        lat.push((us(e.received_ns), us(e.transition.ts_ns)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
            lat
        })
    });

    let fast_path = if opts.no_fast_path || opts.no_rules {
        String::new()
    } else {
        format!("\n[alerts]\nrules = {:?}\n", rules.display().to_string())
    };
    let mut agents = Vec::new();
    for i in 0..opts.agents {
        let spec = AgentSpec {
            site: "bench".into(),
            id: format!("sag-{i}"),
            spool: dir.join(format!("agent-{i}")),
            endpoints: vec![addr.to_string()],
            rate_hz: opts.agent_rate_hz,
            total_samples: None,
            fsync: "interval",
            metrics: None,
            // A 1 ms read cadence, so the feed itself adds at most 1 ms.
            extra: format!("sag_every_secs = 1\ntick_ms = 1\n{fast_path}"),
        };
        let p = dir.join(format!("agent-{i}.toml"));
        std::fs::write(&p, procs::agent_toml(&pki, &spec)?)?;
        agents.push(inproc::Agent::start(&p)?);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    for i in 0..opts.connections {
        pki.agent("bench", &format!("blast-{i}"))?;
    }
    let mut clients = Vec::new();
    for i in 0..opts.connections {
        clients.push(tokio::spawn(blast(
            pki.clone(),
            BlastSpec {
                addr,
                site: "bench".into(),
                id: format!("blast-{i}"),
                samples: opts.batch_samples,
                seed: 1000 + i as u64,
                rate: opts.rate / opts.connections.max(1) as u64,
                agent_queue_delay: None,
            },
            stop.clone(),
            measuring.clone(),
            tally.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = std::process::id();
    let committed = |r: &ferrule_telemetry::Registry| {
        r.counter_sum("ferrule_aggregator_committed_samples_total")
    };
    let lagged = |r: &ferrule_telemetry::Registry| {
        r.counter_value(
            "ferrule_aggregator_fanout_lagged_total",
            &[("consumer", "alerts")],
        )
        .unwrap_or(0)
    };
    let (cpu0, c0, l0) = (
        procs::cpu_secs(pid).unwrap_or(0.0),
        committed(&running.registry),
        lagged(&running.registry),
    );
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(opts.secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, c1, l1) = (
        procs::cpu_secs(pid).unwrap_or(0.0),
        committed(&running.registry),
        lagged(&running.registry),
    );
    let rss = procs::rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.context("blast client panicked")??;
    }
    for a in agents {
        a.stop().await?;
    }
    // Its `running` holds a copy of the transitions' sender: the collector ends
    // once the aggregator is gone.
    aggregator.stop().await?;
    let lat = match collector {
        Some(c) => c.await.context("collector panicked")?,
        None => Vec::new(),
    };
    let blast_samples = tally.acked_samples.load(Ordering::Relaxed) as f64;
    Ok(Report {
        blast_events_per_sec: blast_samples / elapsed,
        committed_events_per_sec: (c1 - c0) as f64 / elapsed,
        firing: lat.len(),
        expected_firing: if opts.no_rules {
            0
        } else {
            opts.agents * 3 * opts.secs as usize
        },
        from_arrival_ms: ms3(lat.iter().map(|l| l.0).collect()),
        from_read_ms: ms3(lat.iter().map(|l| l.1).collect()),
        evaluator_lagged: l1.saturating_sub(l0),
        cores: (cpu1 - cpu0) / elapsed,
        rss_mib: rss,
    })
}
