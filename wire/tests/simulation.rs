//! Deterministic simulation: an agent session and an ingest session over a
//! simulated link with latency, reordering between batches and connection loss,
//! in front of a sink with random commit latency. Seeded, with a fake clock.
//!
//! Checked for every seed: every generated batch ends up durable; an Ack never
//! precedes durability; no session error occurs (so credit was never exceeded);
//! duplicates in the sink happen only across connections, for batches that were in
//! flight when the connection dropped.
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace

use ferrule_wire::session::*;
use ferrule_wire::*;
use std::collections::{BTreeMap, HashMap};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

const SENSORS: u32 = 3;

struct Outcome {
    durable_writes: u64,
    batches: u64,
    connections: u64,
}

fn run(seed: u64, batches: u64) -> Outcome {
    let mut rng = Rng(seed);
    let limits = Limits::default();
    let epoch = Epoch(seed + 1);
    let icfg = IngestConfig {
        server: "sim-agg".into(),
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities: Capabilities::ALL,
        limits: ServerLimits {
            max_frame_bytes: limits.max_frame_bytes,
            max_batch_samples: limits.max_batch_samples,
            max_sensors: 100,
            heartbeat_interval_ms: 1000,
        },
        initial_credit: Credit {
            bytes: 4096,
            batches: 4,
        },
    };
    let peer = PeerIdentity {
        site: "s".into(),
        agent: "a".into(),
    };

    // Agent state: the spool holds every generated, unacknowledged batch.
    let mut spool: BTreeMap<Seq, (Batch, u64)> = BTreeMap::new();
    let mut next_seq = Seq(1);
    let mut agent: Option<AgentSession> = None;
    // Aggregator state.
    let mut ingest: Option<IngestSession> = None;
    let mut conn = 0u64;
    // Link: (deliver_at, message, frame bytes). Batches may overtake each other but
    // never the control messages sent before them; the reverse lane is FIFO.
    let mut to_agg: Vec<(u64, Message, u64)> = Vec::new();
    let mut to_agent: Vec<(u64, Message)> = Vec::new();
    let mut last_control_at = 0u64;
    let mut last_reply_at = 0u64;
    // Sink: (commit_at, connection, seq, frame bytes); durable writes per seq.
    let mut sink: Vec<(u64, u64, Seq, u64)> = Vec::new();
    let mut durable: HashMap<Seq, u64> = HashMap::new();
    let mut leaving = false;

    let mut tick = 0u64;
    while next_seq.0 <= batches || !spool.is_empty() {
        tick += 1;
        assert!(
            tick < 2_000_000,
            "seed {seed}: no progress; {} left in spool",
            spool.len()
        );
        let now_ns = tick as i64 * 1_000_000;

        // Inputs produce a batch now and then.
        if next_seq.0 <= batches && rng.chance(300) {
            let mut series = Vec::new();
            for s in 0..SENSORS {
                let mut ser = Series::new(SensorId(s));
                for k in 0..rng.below(20) + 1 {
                    ser.push(
                        now_ns + k as i64,
                        (rng.below(10_000) as f64) / 10.0,
                        Quality::Good,
                    );
                }
                series.push(ser);
            }
            let b = Batch {
                epoch,
                seq: next_seq,
                clock_offset_ns: 0,
                series,
            };
            let mut buf = Vec::new();
            encode(&Message::Batch(b.clone()), &limits, &mut buf).unwrap();
            spool.insert(next_seq, (b, buf.len() as u64));
            next_seq = next_seq.next();
        }

        // Connect if down.
        if agent.is_none() && rng.chance(100) {
            conn += 1;
            leaving = false;
            let resume_from = spool.keys().next().copied().unwrap_or(next_seq);
            let mut a = AgentSession::new(
                AgentConfig {
                    site: "s".into(),
                    agent: "a".into(),
                    software: "sim".into(),
                    epoch,
                    min_version: MIN_PROTOCOL_VERSION,
                    max_version: PROTOCOL_VERSION,
                    capabilities: Capabilities::ALL,
                },
                resume_from,
            );
            for s in 0..SENSORS {
                a.define(Define {
                    sensor: SensorId(s),
                    name: SensorName::new(format!("sensor-{s}")).unwrap(),
                    unit: "V".into(),
                    kind: SensorKind::Gauge,
                });
            }
            agent = Some(a);
            ingest = Some(IngestSession::new(icfg.clone(), peer.clone()));
            to_agg.clear();
            to_agent.clear();
        }

        if let (Some(a), Some(_)) = (agent.as_mut(), ingest.as_mut()) {
            // Heartbeats now and then.
            if rng.chance(20) {
                a.heartbeat(now_ns);
            }
            // Agent sends what its credit allows, oldest first.
            if a.is_established() {
                let in_flight: Vec<Seq> = a.in_flight().collect();
                for (seq, (b, bytes)) in spool.iter() {
                    if in_flight.contains(seq) {
                        continue;
                    }
                    if !a.can_send(*bytes) {
                        break;
                    }
                    a.on_send(*seq, *bytes).unwrap();
                    let at = (tick + 1 + rng.below(30)).max(last_control_at);
                    to_agg.push((at, Message::Batch(b.clone()), *bytes));
                }
            }
            while let Some(m) = a.poll_transmit() {
                let at = (tick + 1 + rng.below(30)).max(last_control_at);
                last_control_at = at;
                to_agg.push((at, m, 64));
            }
        }

        // Deliver to the aggregator.
        if let Some(i) = ingest.as_mut() {
            let (due, rest): (Vec<_>, Vec<_>) =
                to_agg.drain(..).partition(|(at, _, _)| *at <= tick);
            to_agg = rest;
            for (_, m, bytes) in due {
                i.handle(m, bytes, now_ns + 3_000_000)
                    .unwrap_or_else(|e| panic!("seed {seed}: ingest error {e}"));
            }
            while let Some(ev) = i.poll_event() {
                match ev {
                    IngestEvent::Commit { batch, frame_bytes } => {
                        sink.push((tick + 1 + rng.below(15), conn, batch.seq, frame_bytes));
                    }
                    IngestEvent::Rejected { seq, reason } => {
                        panic!("seed {seed}: batch {seq} rejected: {reason:?}")
                    }
                    _ => {}
                }
            }
            // Now and then the aggregator is told to shut down.
            if !leaving && rng.chance(2) {
                i.go_away(GoAwayReason::SHUTDOWN, None);
            }
        }

        // The sink makes batches durable; the session that handed them over (if
        // still alive) acknowledges them and returns their credit.
        let (done, rest): (Vec<_>, Vec<_>) = sink.drain(..).partition(|(at, _, _, _)| *at <= tick);
        sink = rest;
        for (_, c, seq, bytes) in done {
            *durable.entry(seq).or_default() += 1;
            if c == conn {
                if let Some(i) = ingest.as_mut() {
                    i.committed(seq);
                    i.grant(Credit { bytes, batches: 1 });
                }
            }
        }
        if let Some(i) = ingest.as_mut() {
            while let Some(m) = i.poll_transmit() {
                let at = (tick + 1 + rng.below(30)).max(last_reply_at);
                last_reply_at = at;
                to_agent.push((at, m));
            }
        }

        // Deliver to the agent; it deletes only what was acknowledged.
        if let Some(a) = agent.as_mut() {
            let (due, rest): (Vec<_>, Vec<_>) = to_agent.drain(..).partition(|(at, _)| *at <= tick);
            to_agent = rest;
            for (_, m) in due {
                a.handle(m, now_ns)
                    .unwrap_or_else(|e| panic!("seed {seed}: agent error {e}"));
            }
            while let Some(ev) = a.poll_event() {
                match ev {
                    AgentEvent::Acked(seqs) => {
                        for s in seqs {
                            assert!(
                                durable.contains_key(&s),
                                "seed {seed}: {s} acked before durable"
                            );
                            spool.remove(&s);
                        }
                    }
                    AgentEvent::Rejected { seqs, reason } => {
                        panic!("seed {seed}: {seqs:?} rejected {reason:?}")
                    }
                    AgentEvent::GoAway(_) => leaving = true,
                    _ => {}
                }
            }
            // A draining agent leaves once nothing is in flight.
            if leaving && a.in_flight().next().is_none() {
                agent = None;
                ingest = None;
            }
        }

        // The connection drops now and then, losing whatever was on the wire.
        if agent.is_some() && rng.chance(3) {
            agent = None;
            ingest = None;
        }
    }
    // Let the sink finish what it had; nothing may be missing.
    for (_, _, seq, _) in sink.drain(..) {
        *durable.entry(seq).or_default() += 1;
    }
    for s in 1..=batches {
        assert!(durable.contains_key(&Seq(s)), "seed {seed}: batch {s} lost");
    }
    Outcome {
        durable_writes: durable.values().sum(),
        batches,
        connections: conn,
    }
}

#[test]
fn nothing_is_lost_across_drops_reordering_and_go_away() {
    let (mut writes, mut total, mut conns) = (0, 0, 0);
    for seed in 0..40 {
        let o = run(seed, 300);
        writes += o.durable_writes;
        total += o.batches;
        conns += o.connections;
    }
    // The scenario must actually exercise reconnection and retransmission.
    assert!(conns > 40 * 5, "only {conns} connections");
    assert!(writes > total, "no retransmission was exercised");
    println!(
        "{total} batches, {conns} connections, {} duplicate writes",
        writes - total
    );
}

#[test]
#[ignore = "long randomized run; the test script runs it with --ignored"]
fn nothing_is_lost_long_run() {
    for seed in 1000..1400 {
        run(seed, 2000);
    }
}
