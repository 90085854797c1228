//! The session state machines driven directly, one behaviour per test.
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace

use ferrule_wire::session::*;
use ferrule_wire::*;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A fixed origin for the fake clock, so every test reads the same times.
fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// The fake clock at `ms` milliseconds (both clocks move together).
fn at(ms: u64) -> Now {
    Now {
        mono: t0() + Duration::from_millis(ms),
        wall_ns: 1_700_000_000_000_000_000 + ms as i64 * 1_000_000,
    }
}

fn agent_cfg(site: &str, agent: &str) -> AgentConfig {
    AgentConfig::new(site, agent, "test")
}

const E: Epoch = Epoch(9);

fn limits() -> ServerLimits {
    ServerLimits {
        max_frame_bytes: 1 << 20,
        max_batch_samples: 10_000,
        max_sensors: 4,
        heartbeat_interval_ms: 1000,
    }
}

fn ingest_cfg() -> IngestConfig {
    IngestConfig::new(
        "agg-test",
        limits(),
        Credit {
            bytes: 10_000,
            batches: 3,
        },
    )
}

fn peer() -> PeerIdentity {
    PeerIdentity {
        site: "s1".into(),
        agent: "a1".into(),
    }
}

/// Delivers everything each side has queued to the other until both are quiet.
fn pump(a: &mut AgentSession, i: &mut IngestSession) -> Vec<Result<(), SessionError>> {
    pump_at(a, i, at(0))
}

fn pump_at(a: &mut AgentSession, i: &mut IngestSession, now: Now) -> Vec<Result<(), SessionError>> {
    let mut results = Vec::new();
    loop {
        let mut moved = false;
        while let Some(m) = a.poll_transmit() {
            moved = true;
            results.push(i.handle(m, 100, now));
        }
        while let Some(m) = i.poll_transmit() {
            moved = true;
            results.push(a.handle(m, now));
        }
        if !moved {
            return results;
        }
    }
}

fn define(id: u32, name: &str) -> Define {
    Define {
        sensor: SensorId(id),
        name: SensorName::new(name).unwrap(),
        unit: "V".into(),
        kind: SensorKind::Gauge,
    }
}

fn batch_in(epoch: Epoch, seq: u64, sensor: u32) -> Batch {
    let mut s = Series::new(SensorId(sensor));
    s.push(1, 2.0, Quality::Good);
    Batch {
        epoch,
        seq: Seq(seq),
        clock_offset_ns: 0,
        series: vec![s],
    }
}

fn batch(seq: u64, sensor: u32) -> Batch {
    batch_in(E, seq, sensor)
}

/// Sends batch `seq` (sensor 0) from the agent to the ingest side, as the
/// drivers do: spend on the agent, write the lane's Defines, then the frame.
fn send(a: &mut AgentSession, i: &mut IngestSession, epoch: Epoch, seq: u64) {
    let defines = a.on_send(0, epoch, Seq(seq), 100, at(0).mono).unwrap();
    for d in defines {
        i.handle(Message::Define(d), 20, at(0)).unwrap();
    }
    i.handle(Message::Batch(batch_in(epoch, seq, 0)), 100, at(0))
        .unwrap();
}

fn established_with(cfg: IngestConfig) -> (AgentSession, IngestSession) {
    let mut a = AgentSession::new(agent_cfg("s1", "a1"), (E, Seq(1)), at(0).mono);
    let mut i = IngestSession::new(cfg, peer(), at(0).mono);
    a.define(define(0, "va"));
    assert!(!a.is_established(), "up only after Welcome");
    assert_eq!(
        a.on_send(0, E, Seq(1), 100, at(0).mono),
        Err(SendError::NotEstablished)
    );
    assert!(pump(&mut a, &mut i).iter().all(Result::is_ok));
    assert!(a.is_established());
    assert!(matches!(
        a.poll_event(),
        Some(AgentEvent::Established {
            version: PROTOCOL_VERSION,
            ..
        })
    ));
    assert!(matches!(
        i.poll_event(),
        Some(IngestEvent::Established { epoch: E, .. })
    ));
    (a, i)
}

fn established() -> (AgentSession, IngestSession) {
    established_with(ingest_cfg())
}

fn acked(a: &mut AgentSession) -> Vec<(Epoch, Seq)> {
    let mut out = Vec::new();
    while let Some(e) = a.poll_event() {
        if let AgentEvent::Acked { epoch, seqs, .. } = e {
            out.extend(seqs.into_iter().map(|s| (epoch, s)));
        }
    }
    out.sort();
    out
}

/// Commits every batch the ingest side handed over.
fn commit_all(i: &mut IngestSession) -> Vec<(Epoch, Seq)> {
    let mut done = Vec::new();
    while let Some(e) = i.poll_event() {
        if let IngestEvent::Commit { batch, .. } = e {
            done.push((batch.epoch, batch.seq));
        }
    }
    for (e, s) in &done {
        i.committed(*e, *s, at(0).mono);
    }
    done
}

#[test]
fn handshake_grants_initial_credit() {
    let (a, _) = established();
    assert_eq!(
        a.credit(),
        Credit {
            bytes: 10_000,
            batches: 3
        }
    );
    assert_eq!(a.version(), PROTOCOL_VERSION);
}

#[test]
fn hello_claiming_another_site_is_refused() {
    let mut a = AgentSession::new(agent_cfg("other-site", "a1"), (E, Seq(1)), at(0).mono);
    let mut i = IngestSession::new(ingest_cfg(), peer(), at(0).mono);
    let hello = a.poll_transmit().unwrap();
    let err = i.handle(hello, 50, at(0)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::IDENTITY_MISMATCH);
    match i.poll_transmit() {
        Some(Message::Error(e)) => assert_eq!(e.code, ErrorCode::IDENTITY_MISMATCH),
        other => panic!("expected an Error to the peer, got {other:?}"),
    }
    assert!(!i.is_established());
    assert!(i.is_finished());
}

#[test]
fn define_claiming_another_site_is_refused() {
    let (_, mut i) = established();
    let err = i
        .handle(Message::Define(define(1, "site/s2/feeder/va")), 50, at(0))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::IDENTITY_MISMATCH);
    // The agent's own site is fine.
    let (_, mut i) = established();
    assert!(i
        .handle(Message::Define(define(1, "site/s1/feeder/va")), 50, at(0))
        .is_ok());
}

#[test]
fn no_common_version_is_an_error() {
    let mut cfg = agent_cfg("s1", "a1");
    cfg.min_version = 7;
    cfg.max_version = 9;
    let mut a = AgentSession::new(cfg, (E, Seq(1)), at(0).mono);
    let mut i = IngestSession::new(ingest_cfg(), peer(), at(0).mono);
    let err = i.handle(a.poll_transmit().unwrap(), 10, at(0)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNSUPPORTED_VERSION);
}

#[test]
fn batches_beyond_credit_are_refused_on_both_sides() {
    let (mut a, mut i) = established();
    for seq in 1..=3 {
        send(&mut a, &mut i, E, seq);
    }
    assert_eq!(
        a.on_send(0, E, Seq(4), 100, at(0).mono),
        Err(SendError::NoCredit)
    );
    // A misbehaving agent that sends anyway is cut off.
    let err = i
        .handle(Message::Batch(batch(4, 0)), 100, at(0))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::CREDIT_EXCEEDED);
}

#[test]
fn credit_counts_decoded_size_not_just_wire_bytes() {
    // A tiny frame of a constant series decodes to many samples: it costs what
    // it takes in memory once decoded.
    let mut s = Series::new(SensorId(0));
    for k in 0..500 {
        s.push(k, 1.0, Quality::Good);
    }
    let b = Batch {
        epoch: E,
        seq: Seq(1),
        clock_offset_ns: 0,
        series: vec![s],
    };
    let mut frame = Vec::new();
    encode(&Message::Batch(b.clone()), &Limits::default(), &mut frame).unwrap();
    assert!(frame.len() < 200, "{} bytes", frame.len());
    let cost = batch_cost(frame.len() as u64, 500);
    assert_eq!(cost, 500 * u64::from(DECODED_BYTES_PER_SAMPLE));
    // The window is 10 000 bytes: one such batch fits, a second does not.
    let (mut a, mut i) = established();
    i.handle(Message::Define(define(0, "va")), 20, at(0))
        .unwrap();
    assert!(a.can_send(cost));
    a.on_send(0, E, Seq(1), cost, at(0).mono).unwrap();
    i.handle(Message::Batch(b.clone()), frame.len() as u64, at(0))
        .unwrap();
    assert!(!a.can_send(cost));
    let mut again = b;
    again.seq = Seq(2);
    let err = i
        .handle(Message::Batch(again), frame.len() as u64, at(0))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::CREDIT_EXCEEDED);
}

#[test]
fn acks_follow_commits_and_credit_returns_with_them() {
    let (mut a, mut i) = established();
    for seq in 1..=3 {
        send(&mut a, &mut i, E, seq);
    }
    let mut handed = Vec::new();
    while let Some(e) = i.poll_event() {
        if let IngestEvent::Commit { batch, .. } = e {
            handed.push(batch.seq);
        }
    }
    assert_eq!(handed, vec![Seq(1), Seq(2), Seq(3)]);
    // Nothing is acknowledged, and no credit returned, before the sink says durable.
    assert!(i.poll_transmit().is_none());
    i.committed(E, Seq(3), at(0).mono);
    i.committed(E, Seq(1), at(0).mono);
    pump(&mut a, &mut i);
    assert_eq!(acked(&mut a), vec![(E, Seq(1)), (E, Seq(3))]);
    assert_eq!(a.in_flight().collect::<Vec<_>>(), vec![(E, Seq(2))]);
    assert_eq!(a.credit().batches, 2);
    assert_eq!(a.credit().bytes, 10_000 - 100);
}

/// The bug this issue started from: rejected and duplicate batches spent credit
/// that never came back, and after one window the session stalled for good.
#[test]
fn rejected_and_duplicate_batches_return_their_credit() {
    let (mut a, mut i) = established();
    // Many windows' worth of batches that are all refused (unknown sensor 77)...
    for seq in 1..=30u64 {
        assert!(a.can_send(100), "credit ran out at batch {seq}");
        for d in a.on_send(0, E, Seq(seq), 100, at(0).mono).unwrap() {
            i.handle(Message::Define(d), 20, at(0)).unwrap();
        }
        i.handle(Message::Batch(batch(seq, 77)), 100, at(0))
            .unwrap();
        pump(&mut a, &mut i);
    }
    let mut rejected = 0;
    while let Some(e) = a.poll_event() {
        if let AgentEvent::Rejected { seqs, reason, .. } = e {
            assert_eq!(reason, RejectReason::UNKNOWN_SENSOR);
            rejected += seqs.len();
        }
    }
    assert_eq!(rejected, 30);
    // ...and retransmits of acknowledged batches: each is acknowledged again and
    // its credit returned.
    send(&mut a, &mut i, E, 31);
    commit_all(&mut i);
    pump(&mut a, &mut i);
    assert_eq!(acked(&mut a), vec![(E, Seq(31))]);
    for _ in 0..10 {
        assert!(a.can_send(100), "credit leaked on duplicates");
        // A resend of 31 (say, after the agent lost the ack): a misbehaving agent
        // may do this on one session; the aggregator answers and returns credit.
        i.handle(Message::Batch(batch(31, 0)), 100, at(0)).unwrap();
        assert!(matches!(
            i.poll_event(),
            Some(IngestEvent::Duplicate { seq: Seq(31), .. })
        ));
        match i.poll_transmit() {
            Some(Message::Ack(ack)) => {
                assert_eq!(ack.outcome, Outcome::Committed);
                assert!(
                    ack.through >= Some(Seq(31))
                        || ack
                            .ranges
                            .iter()
                            .any(|r| r.first <= Seq(31) && Seq(31) <= r.last)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(i.poll_transmit(), Some(Message::Credit(c)) if c.batches == 1));
    }
    assert_eq!(i.outstanding_credit().batches, 3);
}

#[test]
fn credit_is_owed_under_sink_pressure_and_paid_after() {
    let (mut a, mut i) = established();
    for seq in 1..=3 {
        send(&mut a, &mut i, E, seq);
    }
    i.set_sink_pressure(true);
    commit_all(&mut i);
    let mut withheld = 0;
    while let Some(e) = i.poll_event() {
        if matches!(e, IngestEvent::CreditWithheld { .. }) {
            withheld += 1;
        }
    }
    assert_eq!(withheld, 3);
    pump(&mut a, &mut i);
    assert_eq!(acked(&mut a).len(), 3, "acks are never held back");
    assert_eq!(a.credit().batches, 0, "credit is");
    assert_eq!(i.owed_credit().batches, 3);
    i.set_sink_pressure(false);
    pump(&mut a, &mut i);
    assert_eq!(a.credit().batches, 3);
    assert_eq!(i.owed_credit(), Credit::default());
}

#[test]
fn a_session_starting_under_pressure_is_owed_its_window() {
    let mut a = AgentSession::new(agent_cfg("s1", "a1"), (E, Seq(1)), at(0).mono);
    let mut i = IngestSession::new(ingest_cfg(), peer(), at(0).mono);
    i.set_sink_pressure(true);
    pump(&mut a, &mut i);
    assert!(a.is_established());
    assert_eq!(a.credit(), Credit::default());
    i.set_sink_pressure(false);
    pump(&mut a, &mut i);
    assert_eq!(a.credit().batches, 3);
}

#[test]
fn retransmits_within_a_session_are_not_committed_twice() {
    let (mut a, mut i) = established();
    send(&mut a, &mut i, E, 1);
    i.handle(Message::Batch(batch(1, 0)), 100, at(0)).unwrap();
    assert!(matches!(i.poll_event(), Some(IngestEvent::Defined(_))));
    assert!(matches!(i.poll_event(), Some(IngestEvent::Commit { .. })));
    assert_eq!(
        i.poll_event(),
        Some(IngestEvent::Duplicate {
            epoch: E,
            seq: Seq(1)
        })
    );
    assert_eq!(i.pending_commits(), 1);
}

#[test]
fn one_session_carries_several_epochs_in_order() {
    // A spool holding the tail of an old epoch and the start of a new one (the
    // epoch file was lost, or the tail was damaged): nothing is refused for its
    // epoch, and each epoch is acknowledged on its own.
    let old = Epoch(5);
    let mut a = AgentSession::new(agent_cfg("s1", "a1"), (old, Seq(40)), at(0).mono);
    let mut i = IngestSession::new(ingest_cfg(), peer(), at(0).mono);
    a.define(define(0, "va"));
    pump(&mut a, &mut i);
    send(&mut a, &mut i, old, 40);
    send(&mut a, &mut i, old, 41);
    send(&mut a, &mut i, E, 42);
    let done = commit_all(&mut i);
    assert_eq!(done, vec![(old, Seq(40)), (old, Seq(41)), (E, Seq(42))]);
    pump(&mut a, &mut i);
    assert_eq!(
        acked(&mut a),
        vec![(old, Seq(40)), (old, Seq(41)), (E, Seq(42))]
    );
    assert_eq!(a.in_flight().count(), 0);
    assert_eq!(a.credit().batches, 3);
}

#[test]
fn resumed_session_acks_cumulatively_from_resume_point() {
    let mut a = AgentSession::new(agent_cfg("s1", "a1"), (E, Seq(50)), at(0).mono);
    let mut i = IngestSession::new(ingest_cfg(), peer(), at(0).mono);
    a.define(define(0, "va"));
    pump(&mut a, &mut i);
    // A batch below the resume point was settled earlier: it is a duplicate.
    i.handle(Message::Define(define(0, "va")), 10, at(0))
        .unwrap();
    i.handle(Message::Batch(batch(49, 0)), 10, at(0)).unwrap();
    a.on_send(0, E, Seq(50), 10, at(0).mono).unwrap();
    i.handle(Message::Batch(batch(50, 0)), 10, at(0)).unwrap();
    assert_eq!(commit_all(&mut i), vec![(E, Seq(50))]);
    pump(&mut a, &mut i);
    assert_eq!(a.in_flight().count(), 0);
}

#[test]
fn unknown_sensors_are_rejected_and_reported() {
    let (mut a, mut i) = established();
    a.on_send(0, E, Seq(1), 100, at(0).mono).unwrap();
    i.handle(Message::Batch(batch(1, 77)), 100, at(0)).unwrap();
    assert_eq!(
        i.poll_event(),
        Some(IngestEvent::Rejected {
            epoch: E,
            seq: Seq(1),
            reason: RejectReason::UNKNOWN_SENSOR
        })
    );
    pump(&mut a, &mut i);
    assert_eq!(
        a.poll_event(),
        Some(AgentEvent::Rejected {
            epoch: E,
            seqs: vec![Seq(1)],
            reason: RejectReason::UNKNOWN_SENSOR
        })
    );
}

#[test]
fn defines_beyond_the_limit_are_refused_without_ending_the_session() {
    let (mut a, mut i) = established();
    for id in 0..6 {
        a.define(define(id, &format!("s{id}")));
    }
    // Sent on the lane before the first batch.
    let defines = a.on_send(0, E, Seq(1), 100, at(0).mono).unwrap();
    assert_eq!(defines.len(), 6);
    for d in defines {
        i.handle(Message::Define(d), 20, at(0)).unwrap();
    }
    let refused: Vec<u32> = std::iter::from_fn(|| i.poll_event())
        .filter_map(|e| match e {
            IngestEvent::DefineRefused { define, limit: 4 } => Some(define.sensor.0),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![4, 5]);
    // A batch naming a refused sensor is refused; one within the limit commits.
    i.handle(Message::Batch(batch(1, 5)), 100, at(0)).unwrap();
    a.on_send(0, E, Seq(2), 100, at(0).mono).unwrap();
    i.handle(Message::Batch(batch(2, 3)), 100, at(0)).unwrap();
    assert_eq!(commit_all(&mut i), vec![(E, Seq(2))]);
    assert!(i.is_established());
    // Redefining an id with another meaning is still a protocol error.
    let err = i
        .handle(Message::Define(define(0, "renamed")), 10, at(0))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BAD_DEFINE);
}

#[test]
fn each_lane_carries_every_define_once_before_its_batches() {
    let (mut a, _) = established();
    a.define(define(1, "vb"));
    let d0 = a.on_send(0, E, Seq(1), 10, at(0).mono).unwrap();
    let d1 = a.on_send(1, E, Seq(2), 10, at(0).mono).unwrap();
    assert_eq!(d0.len(), 2);
    assert_eq!(d1.len(), 2);
    a.define(define(2, "vc"));
    a.define(define(1, "vb")); // again: ignored
    let d0 = a.on_send(0, E, Seq(3), 10, at(0).mono).unwrap();
    assert_eq!(d0.iter().map(|d| d.sensor.0).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn go_away_drains_without_new_credit_then_finishes() {
    let (mut a, mut i) = established();
    send(&mut a, &mut i, E, 1);
    i.go_away(
        GoAwayReason::SHUTDOWN,
        Some("agg-2:4433".into()),
        at(0).mono,
    );
    commit_all(&mut i);
    pump(&mut a, &mut i);
    assert!(a.is_draining());
    assert_eq!(
        a.on_send(0, E, Seq(2), 10, at(0).mono),
        Err(SendError::Draining)
    );
    let events: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            AgentEvent::Acked { epoch, seqs, .. } if *epoch == E && seqs == &[Seq(1)]
        )),
        "{events:?}"
    );
    assert!(events.iter().any(
        |e| matches!(e, AgentEvent::GoAway(g) if g.alternate.as_deref() == Some("agg-2:4433"))
    ));
    assert_eq!(a.credit().batches, 2, "no grant after GoAway");
    // Nothing pending: the agent has the grace period to leave, then it is closed.
    assert!(!i.is_finished());
    let deadline = i.poll_timeout().unwrap();
    assert!(deadline <= at(5_000).mono);
    i.handle_timeout(deadline).unwrap();
    assert!(i.is_finished());
}

#[test]
fn heartbeats_are_sent_on_time_and_measure_the_clock_offset() {
    let (mut a, mut i) = established();
    let due = a.poll_timeout().unwrap();
    assert_eq!(due, at(1_000).mono, "heartbeat interval from Welcome");
    let mut later = at(1_000);
    a.handle_timeout(later).unwrap();
    let hb = a.poll_transmit().unwrap();
    assert!(matches!(hb, Message::Heartbeat(_)));
    // Aggregator clock 5 ms ahead; 1 ms each way.
    let mut agg = at(1_001);
    agg.wall_ns += 5_000_000;
    i.handle(hb, 20, agg).unwrap();
    let reply = i.poll_transmit().unwrap();
    later = at(1_002);
    a.handle(reply, later).unwrap();
    match a.poll_event() {
        Some(AgentEvent::Clock(s)) => {
            assert_eq!(s.offset_ns, 5_000_000);
            assert_eq!(s.rtt_ns, 2_000_000);
        }
        other => panic!("{other:?}"),
    }
    // The next one is an interval later.
    assert_eq!(a.poll_timeout(), Some(at(2_000).mono));
}

#[test]
fn a_silent_aggregator_is_noticed_within_the_peer_timeout() {
    let (mut a, _) = established();
    // Heartbeats go out, nothing comes back.
    let mut now;
    let err = loop {
        let due = a.poll_timeout().unwrap();
        now = (due - t0()).as_millis() as u64;
        assert!(now <= 5_000, "not noticed by {now} ms");
        if let Err(e) = a.handle_timeout(at(now)) {
            break e;
        }
        while a.poll_transmit().is_some() {}
    };
    assert_eq!(err.label(), "peer_timeout");
    assert_eq!(now, 5_000);
    assert!(a.is_closed());
}

#[test]
fn a_silent_agent_is_closed_by_the_aggregator() {
    let (_, mut i) = established();
    assert_eq!(i.poll_timeout(), Some(at(10_000).mono));
    i.handle_timeout(at(9_999).mono).unwrap();
    let err = i.handle_timeout(at(10_000).mono).unwrap_err();
    assert_eq!(err.label(), "peer_timeout");
    assert!(matches!(i.poll_transmit(), Some(Message::Error(e)) if e.code == ErrorCode::TIMEOUT));
}

#[test]
fn a_hello_that_never_comes_times_out() {
    let mut i = IngestSession::new(ingest_cfg(), peer(), at(0).mono);
    assert_eq!(i.poll_timeout(), Some(at(10_000).mono));
    assert_eq!(
        i.handle_timeout(at(10_000).mono).unwrap_err().label(),
        "handshake_timeout"
    );
    let mut a = AgentSession::new(agent_cfg("s1", "a1"), (E, Seq(1)), at(0).mono);
    assert_eq!(
        a.handle_timeout(at(5_000)).unwrap_err().label(),
        "handshake_timeout"
    );
}

#[test]
fn batches_stuck_at_the_sink_stall_the_session() {
    let (mut a, mut i) = established();
    send(&mut a, &mut i, E, 1);
    commit_all_but_keep(&mut i);
    // The agent keeps heartbeating (so it is not silent), but nothing settles.
    let mut ms = 0;
    let err = loop {
        ms += 1_000;
        assert!(ms <= 61_000, "no stall noticed");
        i.handle(
            Message::Heartbeat(Heartbeat {
                origin_ns: 0,
                receive_ns: 0,
                transmit_ns: 0,
            }),
            20,
            at(ms),
        )
        .unwrap();
        while i.poll_transmit().is_some() {}
        if let Err(e) = i.handle_timeout(at(ms).mono) {
            break e;
        }
    };
    assert_eq!(err.label(), "stalled");
    assert_eq!(ms, 60_000);
}

/// Takes the Commit events without reporting any outcome.
fn commit_all_but_keep(i: &mut IngestSession) {
    while i.poll_event().is_some() {}
}

#[test]
fn an_agent_without_acks_or_credit_notices_the_stall() {
    let (mut a, mut i) = established();
    send(&mut a, &mut i, E, 1);
    // The aggregator answers heartbeats but never acknowledges.
    let mut ms = 0;
    let err = loop {
        ms += 1_000;
        assert!(ms <= 61_000, "no stall noticed");
        if let Err(e) = a.handle_timeout(at(ms)) {
            break e;
        }
        while let Some(m) = a.poll_transmit() {
            i.handle(m, 20, at(ms)).unwrap();
        }
        while let Some(m) = i.poll_transmit() {
            a.handle(m, at(ms)).unwrap();
        }
    };
    assert_eq!(err.label(), "stalled");

    // Waiting for credit that never comes counts as well; an idle agent does not.
    let (mut a, _) = established();
    a.set_blocked(true, at(0).mono);
    assert_eq!(a.poll_timeout(), Some(at(1_000).mono), "heartbeat first");
    let mut now = at(0);
    let err = loop {
        let due = a.poll_timeout().unwrap();
        now.mono = due;
        // Keep the aggregator "alive" by feeding heartbeat replies.
        if let Err(e) = a.handle_timeout(now) {
            break e;
        }
        while a.poll_transmit().is_some() {}
        a.handle(
            Message::Heartbeat(Heartbeat {
                origin_ns: 0,
                receive_ns: 1,
                transmit_ns: 1,
            }),
            now,
        )
        .unwrap();
    };
    assert_eq!(err.label(), "stalled");
    assert_eq!(now.mono, at(60_000).mono);
}

#[test]
fn messages_out_of_place_close_the_session() {
    let mut i = IngestSession::new(ingest_cfg(), peer(), at(0).mono);
    let err = i
        .handle(Message::Batch(batch(1, 0)), 10, at(0))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNEXPECTED_MESSAGE);
    assert_eq!(
        i.handle(Message::Credit(Credit::default()), 10, at(0)),
        Err(SessionError::Closed)
    );

    let mut a = AgentSession::new(agent_cfg("s1", "a1"), (E, Seq(1)), at(0).mono);
    let err = a
        .handle(Message::Credit(Credit::default()), at(0))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNEXPECTED_MESSAGE);
}

#[test]
fn scattered_seqs_do_not_grow_the_session_without_bound() {
    let mut cfg = ingest_cfg();
    cfg.max_seq_ranges = 8;
    cfg.initial_credit = Credit {
        bytes: u64::MAX / 2,
        batches: 100_000,
    };
    let (mut a, mut i) = established_with(cfg);
    i.handle(Message::Define(define(0, "va")), 20, at(0))
        .unwrap();
    // Every other seq, committed: each one its own range.
    for k in 0..2000u64 {
        let seq = 2 * k + 1;
        a.on_send(0, E, Seq(seq), 100, at(0).mono).unwrap();
        i.handle(Message::Batch(batch(seq, 0)), 100, at(0)).unwrap();
        commit_all(&mut i);
        pump(&mut a, &mut i);
    }
    assert_eq!(acked(&mut a).len(), 2000);
    assert!(
        i.tracked_ranges() <= 2 * 8 + 1,
        "{} ranges kept",
        i.tracked_ranges()
    );
    // A retransmit of an old, forgotten seq is handed to the sink again (whose
    // ledger catches it), never refused or lost.
    i.handle(Message::Batch(batch(1, 0)), 100, at(0)).unwrap();
    assert!(matches!(i.poll_event(), Some(IngestEvent::Commit { .. })));
}

/// Drains the ingest side's events.
fn events(i: &mut IngestSession) -> Vec<IngestEvent> {
    std::iter::from_fn(|| i.poll_event()).collect()
}

/// The live lane of these tests (the durable one is 0).
const LIVE_LANE: usize = 1;

/// Sends a live copy of batch `seq` (sensor 0) as the agent's driver does:
/// the lane's Defines, then the copy.
fn send_live(a: &mut AgentSession, i: &mut IngestSession, seq: u64, now: Now) {
    let defines = a.on_send_live(LIVE_LANE, E, Seq(seq)).unwrap();
    for d in defines {
        i.handle(Message::Define(d), 20, now).unwrap();
    }
    i.handle(Message::Live(batch(seq, 0)), 100, now).unwrap();
}

#[test]
fn a_live_copy_is_published_not_committed_and_costs_no_credit() {
    let (mut a, mut i) = established();
    assert!(a.live_enabled());
    assert!(i.capabilities().contains(Capabilities::LIVE));
    let (agent_credit, granted) = (a.credit(), i.outstanding_credit());
    // Its lane gets the Defines it lacks, like a durable lane.
    assert_eq!(
        a.on_send_live(LIVE_LANE, E, Seq(5)).unwrap(),
        vec![define(0, "va")]
    );
    assert!(a.on_send_live(LIVE_LANE, E, Seq(6)).unwrap().is_empty());
    i.handle(Message::Define(define(0, "va")), 20, at(0))
        .unwrap();
    i.handle(Message::Live(batch(5, 0)), 100, at(0)).unwrap();
    let evs = events(&mut i);
    assert!(
        evs.iter().any(
            |e| matches!(e, IngestEvent::Live { batch, frame_bytes: 100 } if batch.seq == Seq(5))
        ),
        "{evs:?}"
    );
    assert!(!evs.iter().any(|e| matches!(e, IngestEvent::Commit { .. })));
    // Nothing spent either side, nothing pending, nothing to say to the agent.
    assert_eq!(a.credit(), agent_credit);
    assert_eq!(i.outstanding_credit(), granted);
    assert_eq!(i.pending_commits(), 0);
    assert_eq!(a.in_flight().count(), 0);
    assert_eq!(i.poll_transmit(), None);
    // The batch itself still commits, on its own lane, in order.
    send(&mut a, &mut i, E, 1);
    assert_eq!(commit_all(&mut i), vec![(E, Seq(1))]);
    send(&mut a, &mut i, E, 5);
    assert_eq!(commit_all(&mut i), vec![(E, Seq(5))]);
}

#[test]
fn a_live_copy_of_a_batch_the_aggregator_has_is_stale() {
    let (mut a, mut i) = established();
    send(&mut a, &mut i, E, 1);
    // In flight: the agent does not copy it ...
    assert_eq!(
        a.on_send_live(LIVE_LANE, E, Seq(1)),
        Err(SendError::AlreadyInFlight)
    );
    // ... and a copy that crossed it is refused as stale, pending or settled.
    i.handle(Message::Define(define(0, "va")), 20, at(0))
        .unwrap();
    i.handle(Message::Live(batch(1, 0)), 100, at(0)).unwrap();
    commit_all(&mut i);
    i.handle(Message::Live(batch(1, 0)), 100, at(0)).unwrap();
    let stale = events(&mut i)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                IngestEvent::LiveRefused {
                    reason: LiveRefusal::Stale,
                    ..
                }
            )
        })
        .count();
    assert_eq!(stale, 1, "the pending one was handed to commit_all's drain");
    pump(&mut a, &mut i);
    assert_eq!(acked(&mut a), vec![(E, Seq(1))]);
    assert_eq!(
        a.on_send_live(LIVE_LANE, E, Seq(1)),
        Err(SendError::AlreadySettled)
    );
}

#[test]
fn a_live_copy_naming_an_undefined_sensor_is_refused_not_fatal() {
    let (_, mut i) = established();
    i.handle(Message::Live(batch(3, 7)), 100, at(0)).unwrap();
    assert_eq!(
        events(&mut i),
        vec![IngestEvent::LiveRefused {
            epoch: E,
            seq: Seq(3),
            reason: LiveRefusal::UnknownSensor
        }]
    );
    assert!(i.is_established());
    assert_eq!(
        i.poll_transmit(),
        None,
        "live copies are never acknowledged"
    );
}

#[test]
fn live_copies_are_bounded_by_the_budget() {
    let mut cfg = ingest_cfg();
    cfg.live_max_bytes_per_sec = 250;
    let (mut a, mut i) = established_with(cfg);
    let count = |i: &mut IngestSession| {
        let evs = events(i);
        let live = evs
            .iter()
            .filter(|e| matches!(e, IngestEvent::Live { .. }))
            .count();
        let over = evs
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    IngestEvent::LiveRefused {
                        reason: LiveRefusal::OverBudget,
                        ..
                    }
                )
            })
            .count();
        (live, over)
    };
    // A burst of one second's worth (each costs 100), then refusals.
    for seq in 1..=5 {
        send_live(&mut a, &mut i, seq, at(0));
    }
    assert_eq!(count(&mut i), (2, 3));
    // Refilled at 250 a second.
    send_live(&mut a, &mut i, 6, at(400));
    send_live(&mut a, &mut i, 7, at(400));
    assert_eq!(count(&mut i), (1, 1));
    send_live(&mut a, &mut i, 8, at(10_000));
    send_live(&mut a, &mut i, 9, at(10_000));
    send_live(&mut a, &mut i, 10, at(10_000));
    assert_eq!(
        count(&mut i),
        (2, 1),
        "a long pause refills one second only"
    );
    assert!(i.is_established());
}

#[test]
fn live_copies_need_the_capability_both_ways() {
    // An aggregator that turns them off does not offer them ...
    let mut cfg = ingest_cfg();
    cfg.live_max_bytes_per_sec = 0;
    let (mut a, mut i) = established_with(cfg);
    assert!(!a.live_enabled());
    assert_eq!(
        a.on_send_live(LIVE_LANE, E, Seq(1)),
        Err(SendError::LiveNotNegotiated)
    );
    // ... and one that did not offer them takes one for a protocol error.
    let err = i
        .handle(Message::Live(batch(1, 0)), 100, at(0))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNEXPECTED_MESSAGE);

    // An older agent (no LIVE bit) gets none, whatever the aggregator offers.
    let mut old = agent_cfg("s1", "a1");
    old.capabilities = Capabilities::ALL.without(Capabilities::LIVE);
    let mut a = AgentSession::new(old, (E, Seq(1)), at(0).mono);
    let mut i = IngestSession::new(ingest_cfg(), peer(), at(0).mono);
    pump(&mut a, &mut i);
    assert!(a.is_established());
    assert!(!a.live_enabled());
    assert!(!i.capabilities().contains(Capabilities::LIVE));
}

#[test]
fn no_live_copy_while_draining() {
    let (mut a, mut i) = established();
    i.go_away(GoAwayReason::SHUTDOWN, None, at(0).mono);
    pump(&mut a, &mut i);
    assert!(a.is_draining());
    assert!(!a.live_enabled());
    assert_eq!(
        a.on_send_live(LIVE_LANE, E, Seq(1)),
        Err(SendError::Draining)
    );
}

#[test]
fn a_spooled_batch_frame_becomes_its_live_copy() {
    let limits = Limits::default();
    let b = batch(4, 0);
    let mut frame = Vec::new();
    encode(&Message::Batch(b.clone()), &limits, &mut frame).unwrap();
    batch_frame_to_live(&mut frame).unwrap();
    assert_eq!(
        decode(&frame, &limits).unwrap().unwrap().0,
        Message::Live(b)
    );
    // Only a batch frame is rewritten.
    assert_eq!(
        batch_frame_to_live(&mut frame),
        Err(DecodeError::UnknownType(10))
    );
    assert_eq!(
        batch_frame_to_live(&mut [1, 0]),
        Err(DecodeError::Truncated)
    );
}

/// The messages the agent queued, in order.
fn sent(a: &mut AgentSession) -> Vec<Message> {
    std::iter::from_fn(|| a.poll_transmit()).collect()
}

fn backlog() -> SpoolBacklog {
    SpoolBacklog {
        batches: 3,
        bytes: 3_000,
        // Written 2.5 s before the session started.
        oldest_unacked_wall_ns: Some(at(0).wall_ns - 2_500_000_000),
    }
}

#[test]
fn spool_reports_ride_with_heartbeats_and_reach_the_driver() {
    let (mut a, mut i) = established();
    assert!(a.status_enabled());
    assert!(i.capabilities().contains(Capabilities::STATUS));
    // Nothing measured yet: a heartbeat alone, no invented numbers.
    a.handle_timeout(at(1_000)).unwrap();
    assert!(matches!(sent(&mut a)[..], [Message::Heartbeat(_)]));

    a.set_spool(backlog());
    a.handle_timeout(at(2_000)).unwrap();
    let out = sent(&mut a);
    let want = Status {
        spool_batches: 3,
        spool_bytes: 3_000,
        // Aged at the moment it leaves: 2.5 s before t0, sent at t0 + 2 s.
        oldest_unacked_ms: 4_500,
    };
    assert!(matches!(out[0], Message::Heartbeat(_)));
    assert_eq!(out[1..], [Message::Status(want)]);
    // Not between heartbeats.
    a.handle_timeout(at(2_500)).unwrap();
    assert!(sent(&mut a).is_empty());

    let credit = i.outstanding_credit();
    for m in out {
        i.handle(m, 20, at(2_001)).unwrap();
    }
    assert!(events(&mut i).contains(&IngestEvent::Status(want)));
    assert_eq!(i.outstanding_credit(), credit, "a report changes no credit");
    assert!(i.is_established());

    // A drained spool says so.
    a.set_spool(SpoolBacklog::default());
    a.handle_timeout(at(3_000)).unwrap();
    assert_eq!(
        sent(&mut a)[1..],
        [Message::Status(Status::default())],
        "zeros once drained"
    );
}

#[test]
fn spool_reports_go_only_where_the_capability_was_negotiated() {
    // An aggregator from before spool reports does not offer the bit: the agent
    // never sends one, whatever it knows ...
    let mut cfg = ingest_cfg();
    cfg.capabilities = Capabilities::ALL.without(Capabilities::STATUS);
    let (mut a, mut i) = established_with(cfg);
    assert!(!a.status_enabled());
    a.set_spool(backlog());
    a.handle_timeout(at(1_000)).unwrap();
    assert!(matches!(sent(&mut a)[..], [Message::Heartbeat(_)]));
    // ... and one sent anyway is a protocol error, as any message out of place.
    let err = i
        .handle(Message::Status(Status::default()), 10, at(1_000))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNEXPECTED_MESSAGE);
    assert!(i.is_finished());

    // An older agent (no STATUS bit) sends none, and the aggregator expects none.
    let mut old = agent_cfg("s1", "a1");
    old.capabilities = Capabilities::ALL.without(Capabilities::STATUS);
    let mut a = AgentSession::new(old, (E, Seq(1)), at(0).mono);
    let mut i = IngestSession::new(ingest_cfg(), peer(), at(0).mono);
    assert!(pump(&mut a, &mut i).iter().all(Result::is_ok));
    assert!(a.is_established());
    assert!(!a.status_enabled());
    assert!(!i.capabilities().contains(Capabilities::STATUS));
    a.set_spool(backlog());
    a.handle_timeout(at(1_000)).unwrap();
    assert!(matches!(sent(&mut a)[..], [Message::Heartbeat(_)]));
}

#[test]
fn a_spool_report_before_hello_is_a_protocol_error() {
    let mut i = IngestSession::new(ingest_cfg(), peer(), at(0).mono);
    let err = i
        .handle(Message::Status(Status::default()), 10, at(0))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNEXPECTED_MESSAGE);
    assert!(
        matches!(i.poll_transmit(), Some(Message::Error(e)) if e.code == ErrorCode::UNEXPECTED_MESSAGE)
    );
    assert!(i.poll_event().is_none());
    // Nor does an agent send one before Welcome (it sends no heartbeat then).
    let mut a = AgentSession::new(agent_cfg("s1", "a1"), (E, Seq(1)), at(0).mono);
    a.set_spool(backlog());
    assert!(!a.status_enabled());
    assert!(matches!(sent(&mut a)[..], [Message::Hello(_)]));
    a.handle_timeout(at(1_000)).unwrap();
    assert!(sent(&mut a).is_empty());
}

#[test]
fn spool_reports_continue_while_draining() {
    let (mut a, mut i) = established();
    i.go_away(GoAwayReason::SHUTDOWN, None, at(0).mono);
    pump(&mut a, &mut i);
    assert!(a.is_draining());
    a.set_spool(backlog());
    a.handle_timeout(at(1_000)).unwrap();
    for m in sent(&mut a) {
        i.handle(m, 20, at(1_000)).unwrap();
    }
    assert!(events(&mut i)
        .iter()
        .any(|e| matches!(e, IngestEvent::Status(s) if s.spool_batches == 3)));
}

#[test]
fn a_report_ages_from_the_write_time_and_never_below_zero() {
    let b = SpoolBacklog {
        batches: 1,
        bytes: 10,
        oldest_unacked_wall_ns: Some(5_000_000_000),
    };
    assert_eq!(b.status_at(7_999_999_999).oldest_unacked_ms, 2_999);
    // The clock jumped back past the write: 0, not a huge age.
    assert_eq!(b.status_at(1_000).oldest_unacked_ms, 0);
    assert_eq!(b.status_at(i64::MIN).oldest_unacked_ms, 0);
    let none = SpoolBacklog::default().status_at(i64::MAX);
    assert_eq!(none, Status::default());
}

#[test]
fn a_damaged_status_is_a_typed_error() {
    let limits = Limits::default();
    let mut full = Vec::new();
    let st = Status {
        spool_batches: u64::MAX,
        spool_bytes: 300,
        oldest_unacked_ms: 1,
    };
    encode(&Message::Status(st), &limits, &mut full).unwrap();
    // Every cut of the payload (the length rewritten to match) is Truncated.
    for cut in 5..full.len() {
        let mut f = full[..cut].to_vec();
        f[..4].copy_from_slice(&((cut - 4) as u32).to_le_bytes());
        assert_eq!(
            decode(&f, &limits),
            Err(DecodeError::Truncated),
            "cut at {cut}"
        );
    }
    // Any byte of the payload damaged: a message or a typed error, never a panic.
    for i in 5..full.len() {
        for v in [0x00, 0x7f, 0x80, 0xff] {
            let mut f = full.clone();
            f[i] = v;
            let _ = decode(&f, &limits);
        }
    }
}

/// Acks every batch in flight on `a` at `now`, as the aggregator would after
/// committing it.
fn ack_all_at(a: &mut AgentSession, i: &mut IngestSession, now: Now) {
    commit_all_at(i, now);
    pump_at(a, i, now);
}

fn commit_all_at(i: &mut IngestSession, now: Now) {
    let mut done = Vec::new();
    while let Some(e) = i.poll_event() {
        if let IngestEvent::Commit { batch, .. } = e {
            done.push((batch.epoch, batch.seq));
        }
    }
    for (e, s) in &done {
        i.committed(*e, *s, now.mono);
    }
}

/// Sends batches while the session lets it (up to `most`), at `now`.
fn send_while_allowed(
    a: &mut AgentSession,
    i: &mut IngestSession,
    next: &mut u64,
    most: u64,
    now: Now,
) -> u64 {
    let mut sent = 0;
    while sent < most && a.can_send(100) {
        let defines = a.on_send(0, E, Seq(*next), 100, now.mono).unwrap();
        for d in defines {
            i.handle(Message::Define(d), 20, now).unwrap();
        }
        i.handle(Message::Batch(batch_in(E, *next, 0)), 100, now)
            .unwrap();
        *next += 1;
        sent += 1;
    }
    sent
}

fn wide_credit() -> IngestConfig {
    IngestConfig::new(
        "agg-test",
        limits(),
        Credit {
            bytes: 1 << 30,
            batches: 512,
        },
    )
}

/// At saturation an agent used to keep its whole credit in flight, and every
/// batch waited behind the lot. With pacing, acks that come back later and
/// later (a queue building up somewhere it cannot see) make it keep fewer
/// batches in flight, never none; acks as fast as the least seen let it use
/// its credit again.
#[test]
fn pacing_keeps_fewer_batches_in_flight_when_acks_slow_down() {
    let (mut a, mut i) = established_with(wide_credit());
    let full = a.pacing_window().expect("pacing is on by default");
    let mut next = 1;
    // Acks in 1 ms: the base, measured by the probe at the wall clock's
    // 5 s mark.
    let mut t = 0;
    for _ in 0..5_200 {
        send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
        t += 1;
        ack_all_at(&mut a, &mut i, at(t));
    }
    // Then each ack takes 30 ms: a queue of 29 ms, far above the 3 ms target.
    for _ in 0..40 {
        send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
        t += 30;
        ack_all_at(&mut a, &mut i, at(t));
    }
    let slow = a.pacing_window().unwrap();
    assert!(
        slow < full / 4,
        "window {slow} of {full} after a 29 ms queue"
    );
    assert!(slow >= 1);
    // With none in flight an agent can always send one.
    assert!(a.can_send(100));
    // Fast again: it grows back.
    for _ in 0..400 {
        send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
        t += 1;
        ack_all_at(&mut a, &mut i, at(t));
    }
    assert!(
        a.pacing_window().unwrap() > slow * 4,
        "window {} after fast acks, from {slow}",
        a.pacing_window().unwrap()
    );
}

/// The path gets slower (a backup link, 300 ms more round trip) while the
/// aggregator has no queue at all: the transport says so, and the agent keeps
/// its window. Before, the extra round trip read as 300 ms of queue and cut
/// the window to one batch a round trip for the 12 s the old base was
/// remembered (a fleet behind a delaying relay fell to a sixth of its rate).
#[test]
fn a_round_trip_that_grows_is_not_queue() {
    for told in [true, false] {
        let (mut a, mut i) = established_with(wide_credit());
        let full = a.pacing_window().unwrap();
        let mut next = 1;
        let mut t = 0;
        a.set_path_rtt(Duration::from_micros(500));
        for _ in 0..5_200 {
            send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
            t += 1;
            ack_all_at(&mut a, &mut i, at(t));
        }
        if told {
            a.set_path_rtt(Duration::from_millis(300));
        }
        for _ in 0..30 {
            send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
            t += 301;
            ack_all_at(&mut a, &mut i, at(t));
        }
        let w = a.pacing_window().unwrap();
        if told {
            assert!(w >= full / 2, "window {w} of {full} after the path slowed");
        } else {
            // What the pacing made of it without the transport's round trip.
            assert!(w < full / 4, "window {w} of {full}");
        }
    }
}

/// The path gets faster again (the backup link gone) while QUIC's smoothed
/// round trip still says 300 ms: acks quicker than it are not read as a base
/// of zero, which would have made every later commit look like queue for two
/// probe periods.
#[test]
fn a_round_trip_that_falls_does_not_zero_the_base() {
    let (mut a, mut i) = established_with(wide_credit());
    let full = a.pacing_window().unwrap();
    let mut next = 1;
    let mut t = 0;
    a.set_path_rtt(Duration::from_millis(300));
    for _ in 0..100 {
        send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
        t += 305;
        ack_all_at(&mut a, &mut i, at(t));
    }
    // Fast path again; the smoothed round trip lags for a while.
    for _ in 0..20 {
        send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
        t += 6;
        ack_all_at(&mut a, &mut i, at(t));
    }
    // Then it has caught up: a steady 5 ms of commit and 1 ms of path, no queue.
    a.set_path_rtt(Duration::from_millis(1));
    for _ in 0..1_000 {
        send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
        t += 6;
        ack_all_at(&mut a, &mut i, at(t));
    }
    let w = a.pacing_window().unwrap();
    assert!(w >= full / 2, "window {w} of {full}");
}

/// Pacing off (a target of zero): the credit alone decides, as before.
#[test]
fn without_pacing_the_credit_alone_decides() {
    let mut cfg = agent_cfg("s1", "a1");
    cfg.target_queue_delay = Duration::ZERO;
    let mut a = AgentSession::new(cfg, (E, Seq(1)), at(0).mono);
    let mut i = IngestSession::new(wide_credit(), peer(), at(0).mono);
    a.define(define(0, "va"));
    pump(&mut a, &mut i);
    assert!(a.is_established());
    assert_eq!(a.pacing_window(), None);
    let mut next = 1;
    let mut t = 0;
    for _ in 0..20 {
        send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
        t += 50;
        ack_all_at(&mut a, &mut i, at(t));
    }
    assert_eq!(
        send_while_allowed(&mut a, &mut i, &mut next, 1000, at(t)),
        512
    );
}

/// Acks that come back at once (batches the aggregator had already, resent
/// after a reconnect) read as the base for a while, and every real commit as
/// queue: the window shrinks, but the base is a minimum over two probe
/// periods, so the window is whole again by itself after them.
#[test]
fn instant_acks_for_resends_shrink_the_window_only_for_a_while() {
    let (mut a, mut i) = established_with(wide_credit());
    let full = a.pacing_window().unwrap();
    let mut next = 1;
    // The resends: acknowledged at once.
    for _ in 0..20 {
        send_while_allowed(&mut a, &mut i, &mut next, 64, at(0));
        ack_all_at(&mut a, &mut i, at(0));
    }
    // Then every commit takes 5 ms, steadily: no queue at all.
    let mut t = 0;
    let mut least = full;
    for _ in 0..2_800 {
        send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
        t += 5;
        ack_all_at(&mut a, &mut i, at(t));
        least = least.min(a.pacing_window().unwrap());
    }
    assert!(least >= 1);
    assert_eq!(
        a.pacing_window().unwrap(),
        full,
        "a steady 5 ms sink with no queue kept the window shrunk after two probe periods (it fell to {least})"
    );
}

/// A far agent (a 100 ms round trip) whose acks jitter by a few
/// milliseconds keeps its window: jitter is not queue.
#[test]
fn a_far_agents_jitter_is_not_queue() {
    let (mut a, mut i) = established_with(wide_credit());
    let full = a.pacing_window().unwrap();
    let mut next = 1;
    let mut t = 0;
    for k in 0..200u64 {
        send_while_allowed(&mut a, &mut i, &mut next, 64, at(t));
        // 100-108 ms round trips.
        t += 100 + (k * 7) % 9;
        ack_all_at(&mut a, &mut i, at(t));
    }
    assert!(
        a.pacing_window().unwrap() >= full / 2,
        "window {} of {full} for a far agent with 8 ms of jitter",
        a.pacing_window().unwrap()
    );
}
