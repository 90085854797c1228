//! `ferrule-loadtest`: load scenarios that print their figures.
//!
//! - `codec`: how many synthetic three-phase samples per second encode and decode
//!   on this machine, which bounds every hop after it.
//! - `transport`: events per second one aggregator process commits durably, ack
//!   latency, aggregator CPU per million events and agent memory (see `bench`).
//! - `footprint`: one real agent's CPU and RSS while it reads 1 000 sensors at
//!   10 Hz from Modbus TCP and MQTT together (see `footprint`).

use anyhow::{ensure, Result};
use clap::{Parser, Subcommand};
use ferrule_wire::example::{FeedOptions, ThreePhaseFeed};
use ferrule_wire::{decode, encode, Batch, Epoch, Limits, Message, Seq};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "ferrule-loadtest",
    version,
    about = "Load scenarios that print their figures"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Encode + decode synthetic three-phase batches on every core and print samples/s.
    Codec {
        /// How long to run, seconds.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Samples per batch.
        #[arg(long, default_value_t = 1000)]
        batch_samples: usize,
    },
    /// Blast one aggregator process over QUIC and print events/s, ack latency,
    /// CPU per million events and agent RSS. Build the release binaries first.
    Transport {
        /// Measured seconds (after 3 s of warm-up).
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Concurrent agent connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Samples per batch.
        #[arg(long, default_value_t = 4096)]
        batch_samples: usize,
        /// Skip the real agent whose memory is measured.
        #[arg(long)]
        no_agent: bool,
        /// Offered events per second over all connections; 0 for as fast as credit allows.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Credit window per agent, in batches (the ceiling of the window the
        /// aggregator sizes from its sink's latency).
        #[arg(long, default_value_t = 256)]
        window_batches: u32,
        /// The aggregator's `credit.target_queue_delay_ms` (its default if not
        /// given); 0 for a fixed window of `--window-batches`.
        #[arg(long)]
        target_queue_delay_ms: Option<u64>,
        /// The agents' `uplink.target_queue_delay_ms`, how much of their credit
        /// they use (their default if not given); 0 to use all of it.
        #[arg(long)]
        agent_queue_delay_ms: Option<u64>,
        /// Commit to a real Kafka broker (started with scripts/kafka.sh on this port,
        /// e.g. 39092) instead of the embedded log. Run from the repository root.
        #[arg(long)]
        kafka_port: Option<u16>,
    },
    /// Alert latency under load: an in-process aggregator evaluating the
    /// three-phase rules, real agents whose feed sags once a second, and blast
    /// clients for load; prints latency from arrival and from the agent's read.
    Alerts {
        /// Measured seconds (after 3 s of warm-up).
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Real agents, each with a sag a second.
        #[arg(long, default_value_t = 2)]
        agents: usize,
        /// Samples per second per sensor of each agent's feed (7 sensors).
        #[arg(long, default_value_t = 1000)]
        agent_rate_hz: u32,
        /// Blast connections for load.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Samples per blast batch.
        #[arg(long, default_value_t = 4096)]
        batch_samples: usize,
        /// Offered blast load, events/s; 0 for as fast as credit allows.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Evaluate no rules: the baseline throughput.
        #[arg(long)]
        no_rules: bool,
        /// Agents without the crossing fast path.
        #[arg(long)]
        no_fast_path: bool,
    },
    /// The fleet workload: many simulated agents (real QUIC + mutual TLS, the
    /// real agent session, varied values, one batch per batching window) into
    /// one aggregator with the alert rules on; prints a line a second, writes
    /// report.json, summary.md and SVG plots, and verifies the aggregator's
    /// log: exits non-zero if any acknowledged batch is missing. Build the
    /// release binaries first.
    Fleet {
        /// Simulated agents (the reference fleet is 2000).
        #[arg(long, default_value_t = 2000)]
        agents: usize,
        /// Samples per second per agent, over its seven sensors.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// The agents' batching window, milliseconds (the agent's default).
        #[arg(long, default_value_t = 50)]
        window_ms: u64,
        /// Measured seconds.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// Warm-up seconds before the measurement.
        #[arg(long, default_value_t = 5)]
        warmup_secs: u64,
        /// Agents start evenly over this many seconds (default: one per 500
        /// agents); keep it under the warm-up.
        #[arg(long)]
        ramp_secs: Option<u64>,
        /// A voltage sag on each agent's feed every this many seconds (0: none);
        /// each fires and resolves the undervoltage alert.
        #[arg(long, default_value_t = 10)]
        sag_every_secs: u32,
        /// Evaluate no alert rules.
        #[arg(long)]
        no_rules: bool,
        /// Where the aggregator's log and the certificates go (its file system
        /// is reported); default the system's temp directory.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Where the reports go.
        #[arg(long, default_value = "fleet-report")]
        out: std::path::PathBuf,
        /// A fault a third of the way into the measured period: none,
        /// aggregator-kill (SIGKILL, restart after 1 s), aggregator-restart
        /// (SIGTERM, restart), aggregator-pause (SIGSTOP 8 s, SIGCONT),
        /// kafka-restart, kafka-leader-loss, redis-restart, redis-group-stall
        /// (two consumer groups read the streams; one stops reading),
        /// cert-rotate-revoke (the aggregator's certificate renewed, one
        /// agent's revoked, one renewed in place), partition and packet-loss
        /// (the aggregator in its own network namespace: every packet, or
        /// one in ten, dropped for 10 s; needs root), latency and reorder
        /// (the agents dial a relay that holds every datagram 150 ms each
        /// way, or a random 0-40 ms, for 10 s), agent-kill (SIGKILL the first
        /// real agent, restart it after 1 s on its spool) and agent-power-cut
        /// (the same, its spool's last write torn before the restart).
        #[arg(long, default_value = "none")]
        fault: ferrule_loadtest::fleet::Fault,
        /// Commit to a Kafka broker the run starts on this port (e.g. 39092;
        /// scripts/kafka.sh, run from the repository root) instead of the
        /// embedded log; the verifier reads the topic back. With it,
        /// `--fault kafka-restart` kills and restarts the broker.
        #[arg(long)]
        kafka_port: Option<u16>,
        /// With --kafka-port: three brokers on it and the next two ports
        /// (controllers 100 above), the topic replicated three times,
        /// min.insync.replicas 2; `--fault kafka-leader-loss` kills the
        /// leader of partition 0 and restarts it 5 s later.
        #[arg(long)]
        kafka_cluster: bool,
        /// Fan out through a redis-server the run starts on this port (e.g.
        /// 36379; scripts/redis.sh) instead of in-process; with it,
        /// `--fault redis-restart` kills and restarts Redis, and
        /// `--fault redis-group-stall` stalls one of two consumer groups.
        #[arg(long)]
        redis_port: Option<u16>,
        /// A soak: the run fails if the aggregator's RSS, file descriptors or
        /// threads, or the backlog, kept growing (the last third of the
        /// measured period against the middle third). Give it hours:
        /// `--secs 14400`. Every run reports and plots them (resources.svg).
        #[arg(long)]
        soak: bool,
        /// Real ferrule-agent processes beside the simulated agents (built
        /// binaries; synthetic feeds at about a simulated agent's rate, own
        /// spools), checked for continuity in the sink: every (epoch, seq)
        /// once, no hole in a feed but where an agent was down. Needed by
        /// `--fault agent-kill` and `--fault agent-power-cut`. Embedded log only.
        #[arg(long, default_value_t = 0)]
        real_agents: usize,
    },
    /// One real agent reading Modbus (pymodbus) and MQTT (Mosquitto) sensors and
    /// forwarding to an aggregator: print its CPU and RSS. Build the release
    /// binaries first; needs python3 with pymodbus and Debian's mosquitto.
    Footprint {
        /// Measured seconds (after the warm-up).
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// Warm-up seconds.
        #[arg(long, default_value_t = 10)]
        warmup_secs: u64,
        /// Holding registers polled on one Modbus device, one sensor each; 0 for none.
        #[arg(long, default_value_t = 500)]
        modbus_registers: usize,
        /// MQTT topics published, one sensor each; 0 for none.
        #[arg(long, default_value_t = 500)]
        mqtt_topics: usize,
        /// Samples per second of every sensor.
        #[arg(long, default_value_t = 10)]
        hz: u32,
        /// Mosquitto's max_inflight_messages towards the agent (0 for no limit).
        /// Mosquitto's own default, 20, can hold the agent below 5 000 messages/s
        /// on a busy 2-core machine (the rest queues at the broker).
        #[arg(long, default_value_t = 100)]
        broker_max_inflight: u32,
    },
}

fn main() -> Result<()> {
    match Cli::parse().scenario {
        Scenario::Codec {
            secs,
            threads,
            batch_samples,
        } => codec(secs, threads, batch_samples),
        Scenario::Fleet {
            agents,
            rate,
            window_ms,
            secs,
            warmup_secs,
            ramp_secs,
            sag_every_secs,
            no_rules,
            data_dir,
            out,
            fault,
            kafka_port,
            kafka_cluster,
            redis_port,
            soak,
            real_agents,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let opts = ferrule_loadtest::fleet::Options {
                agents,
                rate_per_agent: rate,
                window_ms,
                secs,
                warmup_secs,
                ramp_secs,
                sag_every_secs,
                no_rules,
                data_dir: data_dir.unwrap_or_else(std::env::temp_dir),
                out: out.clone(),
                progress: true,
                fault,
                kafka_port,
                kafka_cluster,
                redis_port,
                soak,
                real_agents,
            };
            let r = rt.block_on(ferrule_loadtest::fleet::run(&opts))?;
            print!("{}", r.markdown());
            println!("Reports in {}", out.display());
            ensure!(r.passed(), "the run failed: {}", r.problems.join("; "));
            Ok(())
        }
        Scenario::Transport {
            secs,
            connections,
            batch_samples,
            no_agent,
            rate,
            window_batches,
            target_queue_delay_ms,
            agent_queue_delay_ms,
            kafka_port,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let r = rt.block_on(ferrule_loadtest::bench::transport(
                ferrule_loadtest::bench::Options {
                    secs,
                    connections,
                    batch_samples,
                    agent_rss: !no_agent,
                    rate,
                    window_batches,
                    target_queue_delay_ms,
                    agent_queue_delay_ms,
                    kafka_port,
                },
            ))?;
            let offered = if rate == 0 {
                "as fast as credit allows".to_string()
            } else {
                format!("{rate} events/s offered")
            };
            let window = match target_queue_delay_ms {
                Some(0) => format!("fixed window {window_batches} batches"),
                Some(ms) => format!("window up to {window_batches} batches for {ms} ms of queue"),
                None => format!("window up to {window_batches} batches (default queue target)"),
            };
            let pacing = match agent_queue_delay_ms {
                Some(0) => "agents use all their credit".to_string(),
                Some(ms) => format!("agents pace for {ms} ms of queue"),
                None => format!(
                    "agents pace for {} ms of queue (their default)",
                    ferrule_wire::session::DEFAULT_TARGET_QUEUE_DELAY.as_millis()
                ),
            };
            println!(
                "transport: {secs} s measured, {connections} connections, {batch_samples} samples/batch, {offered}, {window}, {pacing}, {}",
                if kafka_port.is_some() { "Kafka (1 broker on this machine, acks=all, idempotent, lz4)" } else { "embedded log (fsync per group commit)" }
            );
            println!(
                "  committed and acknowledged: {:.0} events/s ({:.0} batches/s)",
                r.events_per_sec, r.batches_per_sec
            );
            println!(
                "  ack latency: p50 {:.2} ms, p99 {:.2} ms",
                r.ack_p50_ms, r.ack_p99_ms
            );
            println!(
                "  aggregator: {:.3} CPU-s per million events ({:.2} cores busy), RSS {:.1} MiB",
                r.cpu_secs_per_million, r.aggregator_cores, r.aggregator_rss_mib
            );
            if let Some(rss) = r.agent_rss_mib {
                println!("  agent at 20 000 events/s: RSS {rss:.1} MiB");
            }
            println!(
                "  connections refused (retried after a backoff): {}{}",
                r.refused_connections,
                r.first_refusal
                    .map_or(String::new(), |e| format!(" (first: {e})"))
            );
            println!(
                "  sessions lost (reconnected): {}{}",
                r.lost_sessions,
                r.first_loss
                    .map_or(String::new(), |e| format!(" (first: {e})"))
            );
            Ok(())
        }
        Scenario::Alerts {
            secs,
            agents,
            agent_rate_hz,
            connections,
            batch_samples,
            rate,
            no_rules,
            no_fast_path,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let r = rt.block_on(ferrule_loadtest::alertbench::alerts(
                ferrule_loadtest::alertbench::Options {
                    secs,
                    agents,
                    agent_rate_hz,
                    connections,
                    batch_samples,
                    rate,
                    no_rules,
                    no_fast_path,
                },
            ))?;
            let offered = if rate == 0 {
                "as fast as credit allows".to_string()
            } else {
                format!("{rate} events/s offered")
            };
            println!(
                "alerts: {secs} s measured; {agents} agents at {} samples/s each with a sag a second ({}); {connections} blast connections, {batch_samples} samples/batch, {offered}; {}",
                agent_rate_hz * 7,
                if no_fast_path || no_rules { "no crossing fast path" } else { "crossing fast path on" },
                if no_rules { "no rules evaluated" } else { "rules/examples/three-phase.toml evaluated" }
            );
            println!(
                "  committed: {:.0} events/s in all, {:.0} events/s acknowledged to the blast clients",
                r.committed_events_per_sec, r.blast_events_per_sec
            );
            if !no_rules {
                println!(
                    "  undervoltage firing: {} seen of {} sags expected; evaluator lost {} batches by falling behind",
                    r.firing, r.expected_firing, r.evaluator_lagged
                );
                let [a50, a99, amax] = r.from_arrival_ms;
                let [r50, r99, rmax] = r.from_read_ms;
                println!(
                    "  alert latency from arrival at the aggregator: p50 {a50:.3} ms, p99 {a99:.3} ms, max {amax:.3} ms"
                );
                println!(
                    "  alert latency from the agent's read:          p50 {r50:.3} ms, p99 {r99:.3} ms, max {rmax:.3} ms"
                );
            }
            println!(
                "  process (aggregator, agents and load together): {:.2} cores, RSS {:.1} MiB",
                r.cores, r.rss_mib
            );
            Ok(())
        }
        Scenario::Footprint {
            secs,
            warmup_secs,
            modbus_registers,
            mqtt_topics,
            hz,
            broker_max_inflight,
        } => {
            let opts = ferrule_loadtest::footprint::Options {
                secs,
                warmup_secs,
                modbus_registers,
                mqtt_topics,
                hz,
                broker_max_inflight,
            };
            let r = ferrule_loadtest::footprint::footprint(&opts)?;
            print!("{}", r.render(&opts));
            Ok(())
        }
    }
}

/// Per-thread result: samples round-tripped and bytes they took on the wire.
struct Tally {
    samples: u64,
    bytes: u64,
}

fn codec(secs: u64, threads: Option<usize>, batch_samples: usize) -> Result<()> {
    ensure!(batch_samples > 0, "--batch-samples must be at least 1");
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let limits = Limits::default();
    let deadline = Duration::from_secs(secs.max(1));
    let start = Instant::now();
    let tallies = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Tally> {
                    let mut feed = ThreePhaseFeed::new(
                        t as u64,
                        1_767_225_600_000_000_000,
                        FeedOptions::default(),
                    );
                    let mut tally = Tally {
                        samples: 0,
                        bytes: 0,
                    };
                    let mut buf = Vec::new();
                    let mut seq = Seq(1);
                    while start.elapsed() < deadline {
                        let batch = Message::Batch(Batch {
                            epoch: Epoch(1),
                            seq,
                            clock_offset_ns: 0,
                            series: feed.next_batch(batch_samples),
                        });
                        // Generation is not what we measure: time only the codec.
                        buf.clear();
                        encode(&batch, &limits, &mut buf)?;
                        let decoded = decode(&buf, &limits)?;
                        ensure!(decoded.is_some(), "a whole frame did not decode");
                        tally.samples += batch_samples as u64;
                        tally.bytes += buf.len() as u64;
                        seq = seq.next();
                    }
                    Ok(tally)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let samples: u64 = tallies.iter().map(|t| t.samples).sum();
    let bytes: u64 = tallies.iter().map(|t| t.bytes).sum();
    println!(
        "codec: {threads} threads, {batch_samples} samples/batch, {:.1} s (batch generation included)",
        elapsed
    );
    println!(
        "  {:.2} M samples/s round-tripped",
        samples as f64 / elapsed / 1e6
    );
    println!(
        "  {:.2} bytes/sample on the wire",
        bytes as f64 / samples.max(1) as f64
    );
    Ok(())
}
