//! Deterministic simulation: an agent session and an ingest session, the very
//! state machines production runs, over a simulated QUIC connection (a control
//! stream, two data lanes and a lane of live copies, each in order, with random
//! latency between them),
//! in front of a sink with random commit latency and a dedupe ledger. Seeded, with
//! a fake clock; every timer is the sessions' own.
//!
//! Faults injected: connections dropped, links that go silent without closing
//! (only the sessions' deadlines notice), a sink that stalls for longer than the
//! stall timeout, sink pressure that withholds credit, batches naming a sensor
//! beyond the aggregator's limit (refused), a spool that releases acknowledged
//! batches late (so they are resent, on a new session or the same one), agent
//! restarts that begin a new epoch while the old one's batches are still spooled,
//! and a credit window that the sink's latency resizes as the aggregator's does,
//! and that now and then is set to anything, down to nothing. While older
//! batches wait, each new one is also sent as a live copy ([`Message::Live`]) on
//! its own lane, best-effort (now and then skipped, as a full stream would).
//!
//! Checked for every seed: every generated batch ends up durable in the sink
//! (resent by the spool's late release, it is caught by the sink's ledger), or refused, and refused only if it named the refused sensor; an Ack
//! never precedes durability; the only session errors are deadlines (no credit
//! violation, no unexpected message); and the run finishes, so no fault leaves the
//! pair stuck. Live copies are published with the batch's own content, never
//! committed nor acknowledged, refused only as stale (the batch got there
//! first) or for the refused sensor, and never starve the durable lane (every
//! batch still ends durable, with the same credit). Spool reports ride along
//! with heartbeats and reach the aggregator's driver without ending a session.
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace

use ferrule_wire::session::*;
use ferrule_wire::*;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

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

/// Sensors every batch may use; one more is defined but beyond the limit.
const SENSORS: u32 = 3;
/// Simulated time per tick.
const TICK_MS: u64 = 10;

type Key = (Epoch, Seq);

/// The lane live copies travel on.
const LIVE_LANE: usize = 2;

/// One direction of a QUIC stream: in order, each message with its arrival tick.
#[derive(Default)]
struct Stream {
    q: VecDeque<(u64, Message, u64)>,
    last_at: u64,
}

impl Stream {
    fn push(&mut self, at: u64, m: Message, bytes: u64) {
        let at = at.max(self.last_at);
        self.last_at = at;
        self.q.push_back((at, m, bytes));
    }
    fn due(&mut self, tick: u64) -> Vec<(Message, u64)> {
        let mut out = Vec::new();
        while self.q.front().is_some_and(|(at, _, _)| *at <= tick) {
            if let Some((_, m, b)) = self.q.pop_front() {
                out.push((m, b));
            }
        }
        out
    }
}

/// A live connection: both sessions and the streams between them.
struct Conn {
    id: u64,
    agent: AgentSession,
    ingest: IngestSession,
    control_up: Stream,
    /// Durable lanes 0 (replay) and 1 (new), and [`LIVE_LANE`] for copies.
    lanes: [Stream; 3],
    control_down: Stream,
    /// Batches before this seq go on the replay lane, later ones on the live lane.
    live_from: Seq,
    /// Until this tick nothing gets through either way and nobody is told: QUIC
    /// keeps retransmitting, so what was sent arrives afterwards, in order, unless
    /// a session's deadline closed the connection first.
    silent_until: u64,
}

struct Spooled {
    batch: Batch,
    bytes: u64,
    cost: u64,
    acked: bool,
    /// When it was written (wall clock), for the spool reports.
    written_ns: i64,
}

#[derive(Default)]
struct Totals {
    batches: u64,
    connections: u64,
    timeouts: HashMap<&'static str, u64>,
    rejected: u64,
    resent_acked: u64,
    epochs: u64,
    withheld: u64,
    live_published: u64,
    live_stale: u64,
    live_skipped: u64,
    status_reports: u64,
}

fn icfg() -> IngestConfig {
    let limits = Limits::default();
    let mut c = IngestConfig::new(
        "sim-agg",
        ServerLimits {
            max_frame_bytes: limits.max_frame_bytes,
            max_batch_samples: limits.max_batch_samples,
            max_sensors: SENSORS,
            heartbeat_interval_ms: 500,
        },
        Credit {
            bytes: 16 * 1024,
            batches: 6,
        },
    );
    c.peer_timeout = Duration::from_secs(3);
    c.stall_timeout = Duration::from_secs(10);
    c.drain_grace = Duration::from_secs(1);
    c.max_epochs = 3;
    c
}

fn acfg() -> AgentConfig {
    let mut c = AgentConfig::new("s", "a", "sim");
    c.peer_timeout = Duration::from_secs(2);
    c.stall_timeout = Duration::from_secs(15);
    c
}

fn run(seed: u64, batches: u64) -> Totals {
    let mut rng = Rng(seed);
    let limits = Limits::default();
    let t0 = Instant::now();
    let now = |tick: u64| Now {
        mono: t0 + Duration::from_millis(tick * TICK_MS),
        wall_ns: 1_700_000_000_000_000_000 + (tick * TICK_MS * 1_000_000) as i64,
    };
    let ms = |d: Duration| d.as_millis() as u64 / TICK_MS;
    let mut t = Totals::default();

    // Agent state: the spool holds every generated batch until it is acknowledged
    // (or refused) and then released, which happens late now and then.
    let mut spool: BTreeMap<Seq, Spooled> = BTreeMap::new();
    let mut next_seq = Seq(1);
    let mut epoch = Epoch(seed * 1000 + 1);
    let mut poisoned: HashSet<Key> = HashSet::new();
    let mut refused: HashSet<Key> = HashSet::new();
    // Every batch generated, to check what a live copy publishes.
    let mut generated: HashMap<Key, Batch> = HashMap::new();
    let mut fresh: Option<Seq> = None;
    // Aggregator state: the sink's queue (due tick, connection, key) and its ledger.
    let mut sink: VecDeque<(u64, u64, Key)> = VecDeque::new();
    // The sink's dedupe ledger: what is durable (a batch durable already is
    // reported committed and not written again, as both real sinks do).
    let mut durable: HashSet<Key> = HashSet::new();
    let mut sink_stalled_until = 0u64;
    let mut pressure_until = 0u64;
    // The window, sized from the sink's latency as the aggregator does (a
    // target of one tick against commits taking up to fifteen, so it moves).
    let mut window = WindowController::new(WindowConfig::new(
        Duration::from_millis(TICK_MS),
        icfg().initial_credit,
        u64::from(limits.max_frame_bytes),
    ));

    let mut conn: Option<Conn> = None;
    let mut tick = 0u64;
    while next_seq.0 <= batches || spool.values().any(|s| !s.acked) {
        tick += 1;
        assert!(
            tick < 3_000_000,
            "seed {seed}: no progress; {} left in the spool",
            spool.len()
        );
        let n = now(tick);

        // Inputs produce a batch now and then; a few name the sensor beyond the limit.
        if next_seq.0 <= batches && rng.chance(300) {
            let bad = rng.chance(20);
            let mut series = Vec::new();
            for s in 0..SENSORS + u32::from(bad) {
                let mut ser = Series::new(SensorId(s));
                for k in 0..rng.below(20) + 1 {
                    ser.push(
                        n.wall_ns + k as i64,
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
            if bad {
                poisoned.insert((epoch, next_seq));
            }
            generated.insert((epoch, next_seq), b.clone());
            fresh = Some(next_seq);
            let mut buf = Vec::new();
            encode(&Message::Batch(b.clone()), &limits, &mut buf).unwrap();
            let cost = batch_cost(buf.len() as u64, b.sample_count() as u64);
            spool.insert(
                next_seq,
                Spooled {
                    batch: b,
                    bytes: buf.len() as u64,
                    cost,
                    acked: false,
                    written_ns: n.wall_ns,
                },
            );
            next_seq = next_seq.next();
            t.batches += 1;
        }
        // The spool releases acknowledged batches late, now and then.
        if rng.chance(50) {
            spool.retain(|_, s| !s.acked);
        }

        // Connect if down; sometimes the agent restarted meanwhile, in a new epoch.
        if conn.is_none() && rng.chance(100) {
            if rng.chance(150) {
                // A restart: acknowledgements the spool had not yet released are
                // forgotten, so those batches are sent again.
                epoch = Epoch(epoch.0 + 1);
                t.epochs += 1;
                for s in spool.values_mut() {
                    t.resent_acked += u64::from(s.acked);
                    s.acked = false;
                }
            }
            t.connections += 1;
            let resume = spool
                .values()
                .next()
                .map_or((epoch, next_seq), |s| (s.batch.epoch, s.batch.seq));
            let mut agent = AgentSession::new(acfg(), resume, n.mono);
            for s in 0..=SENSORS {
                agent.define(Define {
                    sensor: SensorId(s),
                    name: SensorName::new(format!("sensor-{s}")).unwrap(),
                    unit: "V".into(),
                    kind: SensorKind::Gauge,
                });
            }
            let mut ingest = IngestSession::new(
                icfg(),
                PeerIdentity {
                    site: "s".into(),
                    agent: "a".into(),
                },
                n.mono,
            );
            ingest.set_sink_pressure(tick < pressure_until);
            conn = Some(Conn {
                id: t.connections,
                agent,
                ingest,
                control_up: Stream::default(),
                lanes: [Stream::default(), Stream::default(), Stream::default()],
                control_down: Stream::default(),
                live_from: next_seq,
                silent_until: 0,
            });
        }

        let mut close = false;
        if let Some(c) = conn.as_mut() {
            let silent_until = c.silent_until;
            let delay = |rng: &mut Rng| (tick + 1 + rng.below(30)).max(silent_until);
            // Agent timers (a heartbeat carries what the spool holds, told to
            // the session as the driver does), then it sends what its credit
            // allows, oldest first.
            if c.agent.poll_timeout().is_some_and(|d| d <= n.mono) {
                let unacked = spool.values().filter(|s| !s.acked);
                c.agent.set_spool(SpoolBacklog {
                    batches: unacked.clone().count() as u64,
                    bytes: unacked.clone().map(|s| s.bytes).sum(),
                    oldest_unacked_wall_ns: unacked.map(|s| s.written_ns).min(),
                });
            }
            if let Err(e) = c.agent.handle_timeout(n) {
                assert!(
                    matches!(e, SessionError::Timeout { .. }),
                    "seed {seed}: agent {e}"
                );
                *t.timeouts.entry(e.label()).or_default() += 1;
                close = true;
            }
            if c.agent.is_established() {
                let mut blocked = false;
                let mut resend_acked = rng.chance(5);
                for (seq, s) in spool.iter() {
                    let key = (s.batch.epoch, *seq);
                    if c.agent.is_in_flight(key.0, key.1) {
                        continue;
                    }
                    if s.acked {
                        // Acknowledged but not yet released: a driver may send it again.
                        if !resend_acked {
                            continue;
                        }
                        resend_acked = false;
                    }
                    if !c.agent.can_send(s.cost) {
                        blocked = true;
                        break;
                    }
                    let lane = usize::from(*seq >= c.live_from);
                    let defines = match c.agent.on_send(lane, key.0, key.1, s.cost, n.mono) {
                        Ok(d) => d,
                        // Settled on this very session: its Ack stands.
                        Err(SendError::AlreadySettled) => continue,
                        Err(e) => panic!("seed {seed}: {e}"),
                    };
                    let at = delay(&mut rng);
                    for d in defines {
                        c.lanes[lane].push(at, Message::Define(d), 30);
                    }
                    c.lanes[lane].push(at, Message::Batch(s.batch.clone()), s.bytes);
                }
                c.agent.set_blocked(blocked, n.mono);
                // The batch made this tick goes out as a live copy too if an
                // older one still waits for its durable send.
                let behind = |seq: Seq| {
                    spool
                        .range(..seq)
                        .any(|(q, s)| !s.acked && !c.agent.is_in_flight(s.batch.epoch, *q))
                };
                if let Some(seq) = fresh.filter(|q| behind(*q)) {
                    if let Some(s) = spool.get(&seq) {
                        if !c.agent.live_enabled() || rng.chance(100) {
                            // No room on the stream now: skipped, never waited for.
                            t.live_skipped += 1;
                        } else {
                            match c.agent.on_send_live(LIVE_LANE, s.batch.epoch, seq) {
                                Ok(defines) => {
                                    // Now and then the copy lags (its stream is
                                    // slower): the batch may overtake it.
                                    let lag = if rng.chance(200) { rng.below(300) } else { 0 };
                                    let at = delay(&mut rng) + lag;
                                    for d in defines {
                                        c.lanes[LIVE_LANE].push(at, Message::Define(d), 30);
                                    }
                                    c.lanes[LIVE_LANE].push(
                                        at,
                                        Message::Live(s.batch.clone()),
                                        s.bytes,
                                    );
                                }
                                Err(SendError::AlreadyInFlight) => {}
                                Err(e) => panic!("seed {seed}: live copy: {e}"),
                            }
                        }
                    }
                }
            }
            fresh = None;
            while let Some(m) = c.agent.poll_transmit() {
                let at = delay(&mut rng);
                c.control_up.push(at, m, 64);
            }

            // The aggregator takes in what arrived, in stream order per stream.
            let mut arrived = c.control_up.due(tick);
            for lane in c.lanes.iter_mut() {
                arrived.extend(lane.due(tick));
            }
            for (m, bytes) in arrived {
                if let Err(e) = c.ingest.handle(m, bytes, n) {
                    assert!(
                        matches!(e, SessionError::Peer(_) | SessionError::Closed),
                        "seed {seed}: ingest error {e}"
                    );
                    close = true;
                }
            }
            if let Err(e) = c.ingest.handle_timeout(n.mono) {
                assert!(
                    matches!(e, SessionError::Timeout { .. }),
                    "seed {seed}: ingest {e}"
                );
                *t.timeouts.entry(e.label()).or_default() += 1;
                close = true;
            }
            c.ingest.set_sink_pressure(tick < pressure_until);
            // Now and then a window out of nowhere, down to nothing (the session
            // keeps one batch): shrinking or growing must never strand the agent.
            if rng.chance(5) {
                c.ingest.set_window(Credit {
                    bytes: rng.below(20_000),
                    batches: rng.below(9) as u32,
                });
            }
            while let Some(ev) = c.ingest.poll_event() {
                match ev {
                    IngestEvent::Commit { batch, .. } => {
                        sink.push_back((tick + 1 + rng.below(15), c.id, (batch.epoch, batch.seq)));
                    }
                    IngestEvent::Rejected { epoch, seq, reason } => {
                        assert_eq!(reason, RejectReason::UNKNOWN_SENSOR);
                        assert!(
                            poisoned.contains(&(epoch, seq)),
                            "seed {seed}: {epoch}/{seq} refused"
                        );
                    }
                    IngestEvent::CreditWithheld { .. } => t.withheld += 1,
                    IngestEvent::Live { batch, .. } => {
                        let key = (batch.epoch, batch.seq);
                        assert_eq!(
                            generated.get(&key),
                            Some(&batch),
                            "seed {seed}: a live copy of {}/{} differs from the batch",
                            key.0,
                            key.1
                        );
                        assert!(
                            !poisoned.contains(&key),
                            "seed {seed}: a bad copy published"
                        );
                        t.live_published += 1;
                    }
                    IngestEvent::LiveRefused { epoch, seq, reason } => match reason {
                        LiveRefusal::Stale => t.live_stale += 1,
                        LiveRefusal::UnknownSensor => assert!(
                            poisoned.contains(&(epoch, seq)),
                            "seed {seed}: live copy {epoch}/{seq} refused"
                        ),
                        other => panic!("seed {seed}: live copy {epoch}/{seq} refused: {other:?}"),
                    },
                    IngestEvent::Status(st) => {
                        // Measured at some earlier tick: within what was made by now.
                        assert!(st.spool_batches <= t.batches, "seed {seed}: {st:?}");
                        assert!(
                            st.oldest_unacked_ms <= tick * TICK_MS,
                            "seed {seed}: {st:?}"
                        );
                        assert_eq!(
                            st.spool_batches == 0,
                            st.spool_bytes == 0,
                            "seed {seed}: {st:?}"
                        );
                        t.status_reports += 1;
                    }
                    _ => {}
                }
            }
            // Now and then the aggregator is told to shut down, or the link goes silent.
            if rng.chance(1) {
                c.ingest.go_away(GoAwayReason::SHUTDOWN, None, n.mono);
            }
            if rng.chance(1) {
                c.silent_until = tick + ms(Duration::from_secs(1)) + rng.below(600);
            }
            if c.ingest.is_finished() {
                close = true;
            }
        }

        // The sink makes batches durable (unless stalled); a batch durable already
        // is not written again. The session that handed one over, if still there,
        // acknowledges it.
        if rng.chance(1) {
            sink_stalled_until = tick + ms(Duration::from_secs(12));
        }
        if rng.chance(3) {
            pressure_until = tick + rng.below(500);
        }
        while tick >= sink_stalled_until && sink.front().is_some_and(|(at, _, _)| *at <= tick) {
            let Some((_, cid, key)) = sink.pop_front() else {
                break;
            };
            durable.insert(key);
            if let Some(c) = conn.as_mut().filter(|c| c.id == cid) {
                if let Some(latency) = c.ingest.committed(key.0, key.1, n.mono) {
                    // The link's round trip is up to 60 ticks.
                    window.on_commit(n.mono, latency, Duration::from_millis(60 * TICK_MS));
                    c.ingest.set_window(window.window());
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            while let Some(m) = c.ingest.poll_transmit() {
                let at = (tick + 1 + rng.below(30)).max(c.silent_until);
                c.control_down.push(at, m, 64);
            }
            // The agent takes in replies; it deletes only what was acknowledged.
            for (m, _) in c.control_down.due(tick) {
                if let Err(e) = c.agent.handle(m, n) {
                    assert!(
                        matches!(e, SessionError::Peer(_) | SessionError::Closed),
                        "seed {seed}: agent error {e}"
                    );
                    close = true;
                }
            }
            while let Some(ev) = c.agent.poll_event() {
                match ev {
                    AgentEvent::Acked { epoch, seqs, .. } => {
                        for s in seqs {
                            assert!(
                                durable.contains(&(epoch, s)),
                                "seed {seed}: {epoch}/{s} acked before durable"
                            );
                            if let Some(sp) = spool.get_mut(&s) {
                                assert_eq!(sp.batch.epoch, epoch);
                                sp.acked = true;
                            }
                        }
                    }
                    AgentEvent::Rejected {
                        epoch,
                        seqs,
                        reason,
                    } => {
                        assert_eq!(reason, RejectReason::UNKNOWN_SENSOR);
                        for s in seqs {
                            assert!(
                                poisoned.contains(&(epoch, s)),
                                "seed {seed}: {epoch}/{s} refused"
                            );
                            if refused.insert((epoch, s)) {
                                t.rejected += 1;
                            }
                            if let Some(sp) = spool.get_mut(&s) {
                                sp.acked = true;
                            }
                        }
                    }
                    _ => {}
                }
            }
            // A draining agent leaves once nothing is in flight.
            if c.agent.is_draining() && c.agent.in_flight().next().is_none() {
                close = true;
            }
            // The connection drops now and then, losing whatever was on the wire.
            if rng.chance(2) {
                close = true;
            }
        }
        if close {
            conn = None;
        }
    }
    // Every batch is durable or refused, and refused only if it named the
    // sensor beyond the limit.
    for key in &poisoned {
        assert!(
            refused.contains(key),
            "seed {seed}: {}/{} neither refused nor durable",
            key.0,
            key.1
        );
        assert!(
            !durable.contains(key),
            "seed {seed}: a refused batch reached the sink"
        );
    }
    assert_eq!(
        durable.len() as u64 + poisoned.len() as u64,
        t.batches,
        "seed {seed}: batches missing"
    );
    t
}

#[test]
fn nothing_is_lost_or_stuck_under_faults() {
    let mut sum = Totals::default();
    for seed in 0..30 {
        let o = run(seed, 300);
        sum.batches += o.batches;
        sum.connections += o.connections;
        sum.rejected += o.rejected;
        sum.resent_acked += o.resent_acked;
        sum.epochs += o.epochs;
        sum.withheld += o.withheld;
        sum.live_published += o.live_published;
        sum.live_stale += o.live_stale;
        sum.live_skipped += o.live_skipped;
        sum.status_reports += o.status_reports;
        for (k, v) in o.timeouts {
            *sum.timeouts.entry(k).or_default() += v;
        }
    }
    // The scenario must actually exercise every fault it claims to.
    assert!(
        sum.connections > 30 * 5,
        "only {} connections",
        sum.connections
    );
    assert!(sum.rejected > 0, "no refusal exercised");
    assert!(sum.resent_acked > 0, "no resend of acknowledged batches");
    assert!(sum.epochs > 0, "no second epoch");
    assert!(sum.withheld > 0, "no credit withheld");
    assert!(sum.live_published > 0, "no live copy published");
    assert!(sum.live_stale > 0, "no live copy crossed its batch");
    assert!(sum.live_skipped > 0, "no live copy skipped");
    assert!(sum.status_reports > 0, "no spool report delivered");
    for kind in ["peer_timeout", "stalled"] {
        assert!(
            sum.timeouts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} exercised: {:?}",
            sum.timeouts
        );
    }
    println!(
        "{} batches, {} connections, {} refused, {} acknowledged resent, {} new epochs, {} withheld, live copies {} published / {} stale / {} skipped, {} spool reports, timeouts {:?}",
        sum.batches, sum.connections, sum.rejected, sum.resent_acked, sum.epochs, sum.withheld,
        sum.live_published, sum.live_stale, sum.live_skipped, sum.status_reports, sum.timeouts
    );
}

#[test]
#[ignore = "long randomized run; the test script runs it with --ignored"]
fn nothing_is_lost_or_stuck_long_run() {
    for seed in 1000..1100 {
        run(seed, 2000);
    }
}
