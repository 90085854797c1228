//! The session state machines driven directly, one behaviour per test.
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace

use ferrule_wire::session::*;
use ferrule_wire::*;

fn agent_cfg(site: &str, agent: &str) -> AgentConfig {
    AgentConfig {
        site: site.into(),
        agent: agent.into(),
        software: "test".into(),
        epoch: Epoch(9),
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities: Capabilities::ALL,
    }
}

fn ingest_cfg() -> IngestConfig {
    IngestConfig {
        server: "agg-test".into(),
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities: Capabilities::ALL,
        limits: ServerLimits {
            max_frame_bytes: 1 << 20,
            max_batch_samples: 10_000,
            max_sensors: 4,
            heartbeat_interval_ms: 1000,
        },
        initial_credit: Credit {
            bytes: 10_000,
            batches: 3,
        },
    }
}

fn peer() -> PeerIdentity {
    PeerIdentity {
        site: "s1".into(),
        agent: "a1".into(),
    }
}

/// Delivers everything each side has queued to the other until both are quiet.
fn pump(a: &mut AgentSession, i: &mut IngestSession) -> Vec<Result<(), SessionError>> {
    let mut results = Vec::new();
    loop {
        let mut moved = false;
        while let Some(m) = a.poll_transmit() {
            moved = true;
            results.push(i.handle(m, 100, 1_000));
        }
        while let Some(m) = i.poll_transmit() {
            moved = true;
            results.push(a.handle(m, 2_000));
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

fn batch(seq: u64, sensor: u32) -> Batch {
    let mut s = Series::new(SensorId(sensor));
    s.push(1, 2.0, Quality::Good);
    Batch {
        epoch: Epoch(9),
        seq: Seq(seq),
        clock_offset_ns: 0,
        series: vec![s],
    }
}

fn established() -> (AgentSession, IngestSession) {
    let mut a = AgentSession::new(agent_cfg("s1", "a1"), Seq(1));
    let mut i = IngestSession::new(ingest_cfg(), peer());
    a.define(define(0, "va"));
    assert!(!a.is_established(), "up only after Welcome");
    assert_eq!(a.on_send(Seq(1), 100), Err(SendError::NotEstablished));
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
        Some(IngestEvent::Established {
            epoch: Epoch(9),
            ..
        })
    ));
    assert!(matches!(i.poll_event(), Some(IngestEvent::Defined(_))));
    (a, i)
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
    let mut a = AgentSession::new(agent_cfg("other-site", "a1"), Seq(1));
    let mut i = IngestSession::new(ingest_cfg(), peer());
    let hello = a.poll_transmit().unwrap();
    let err = i.handle(hello, 50, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::IDENTITY_MISMATCH);
    match i.poll_transmit() {
        Some(Message::Error(e)) => assert_eq!(e.code, ErrorCode::IDENTITY_MISMATCH),
        other => panic!("expected an Error to the peer, got {other:?}"),
    }
    assert!(!i.is_established());
}

#[test]
fn define_claiming_another_site_is_refused() {
    let (mut a, mut i) = established();
    a.define(define(1, "site/s2/feeder/va"));
    let m = a.poll_transmit().unwrap();
    assert_eq!(
        i.handle(m, 50, 0).unwrap_err().code(),
        ErrorCode::IDENTITY_MISMATCH
    );
    // The agent's own site is fine.
    let (mut a, mut i) = established();
    a.define(define(1, "site/s1/feeder/va"));
    let m = a.poll_transmit().unwrap();
    assert!(i.handle(m, 50, 0).is_ok());
}

#[test]
fn no_common_version_is_an_error() {
    let mut cfg = agent_cfg("s1", "a1");
    cfg.min_version = 7;
    cfg.max_version = 9;
    let mut a = AgentSession::new(cfg, Seq(1));
    let mut i = IngestSession::new(ingest_cfg(), peer());
    let err = i.handle(a.poll_transmit().unwrap(), 10, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNSUPPORTED_VERSION);
}

#[test]
fn batches_beyond_credit_are_refused_on_both_sides() {
    let (mut a, mut i) = established();
    for seq in 1..=3 {
        a.on_send(Seq(seq), 100).unwrap();
        i.handle(Message::Batch(batch(seq, 0)), 100, 0).unwrap();
    }
    assert_eq!(a.on_send(Seq(4), 100), Err(SendError::NoCredit));
    // A misbehaving agent that sends anyway is cut off.
    let err = i.handle(Message::Batch(batch(4, 0)), 100, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CREDIT_EXCEEDED);
}

#[test]
fn acks_follow_commits_and_credit_follows_grants() {
    let (mut a, mut i) = established();
    for seq in 1..=3 {
        a.on_send(Seq(seq), 100).unwrap();
        i.handle(Message::Batch(batch(seq, 0)), 100, 0).unwrap();
    }
    for seq in 1..=3 {
        assert!(
            matches!(i.poll_event(), Some(IngestEvent::Commit { batch, .. }) if batch.seq == Seq(seq))
        );
    }
    // Nothing is acknowledged before the sink says durable.
    assert!(i.poll_transmit().is_none());
    i.committed(Seq(3));
    i.committed(Seq(1));
    i.grant(Credit {
        bytes: 200,
        batches: 2,
    });
    pump(&mut a, &mut i);
    let mut acked = Vec::new();
    while let Some(e) = a.poll_event() {
        if let AgentEvent::Acked(s) = e {
            acked.extend(s);
        }
    }
    acked.sort();
    assert_eq!(acked, vec![Seq(1), Seq(3)]);
    assert_eq!(a.in_flight().collect::<Vec<_>>(), vec![Seq(2)]);
    assert_eq!(a.credit().batches, 2);
}

#[test]
fn retransmits_are_not_committed_twice() {
    let (mut a, mut i) = established();
    a.on_send(Seq(1), 100).unwrap();
    i.handle(Message::Batch(batch(1, 0)), 100, 0).unwrap();
    i.handle(Message::Batch(batch(1, 0)), 100, 0).unwrap();
    assert!(matches!(i.poll_event(), Some(IngestEvent::Commit { .. })));
    assert_eq!(i.poll_event(), Some(IngestEvent::Duplicate(Seq(1))));
    i.committed(Seq(1));
    i.handle(Message::Batch(batch(1, 0)), 100, 0).unwrap();
    assert_eq!(i.poll_event(), Some(IngestEvent::Duplicate(Seq(1))));
    // The duplicate of a committed batch is acknowledged again.
    match i.poll_transmit() {
        Some(Message::Ack(ack)) => {
            assert_eq!(ack.outcome, Outcome::Committed);
            assert_eq!(ack.through, Some(Seq(1)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn resumed_session_acks_cumulatively_from_resume_point() {
    let mut a = AgentSession::new(agent_cfg("s1", "a1"), Seq(50));
    let mut i = IngestSession::new(ingest_cfg(), peer());
    a.define(define(0, "va"));
    pump(&mut a, &mut i);
    // A batch below the resume point was settled earlier: it is a duplicate.
    a.on_send(Seq(50), 100).unwrap();
    i.handle(Message::Batch(batch(49, 0)), 10, 0).unwrap();
    i.handle(Message::Batch(batch(50, 0)), 10, 0).unwrap();
    while let Some(e) = i.poll_event() {
        if let IngestEvent::Commit { batch, .. } = e {
            assert_eq!(batch.seq, Seq(50));
            i.committed(batch.seq);
        }
    }
    pump(&mut a, &mut i);
    assert_eq!(a.in_flight().count(), 0);
}

#[test]
fn unknown_sensors_are_rejected_and_reported() {
    let (mut a, mut i) = established();
    a.on_send(Seq(1), 100).unwrap();
    i.handle(Message::Batch(batch(1, 77)), 100, 0).unwrap();
    assert_eq!(
        i.poll_event(),
        Some(IngestEvent::Rejected {
            seq: Seq(1),
            reason: RejectReason::UNKNOWN_SENSOR
        })
    );
    pump(&mut a, &mut i);
    assert_eq!(
        a.poll_event(),
        Some(AgentEvent::Rejected {
            seqs: vec![Seq(1)],
            reason: RejectReason::UNKNOWN_SENSOR
        })
    );
}

#[test]
fn too_many_sensors_and_redefinitions_are_bad_defines() {
    let (mut a, mut i) = established();
    a.define(define(0, "va"));
    for id in 1..4 {
        a.define(define(id, &format!("s{id}")));
    }
    assert!(pump(&mut a, &mut i).iter().all(Result::is_ok));
    let err = i
        .handle(Message::Define(define(9, "one-too-many")), 10, 0)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BAD_DEFINE);

    let (_, mut i) = established();
    let err = i
        .handle(Message::Define(define(0, "renamed")), 10, 0)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BAD_DEFINE);
}

#[test]
fn go_away_drains_without_new_credit() {
    let (mut a, mut i) = established();
    a.on_send(Seq(1), 100).unwrap();
    i.handle(Message::Batch(batch(1, 0)), 100, 0).unwrap();
    i.go_away(GoAwayReason::SHUTDOWN, Some("agg-2:4433".into()));
    i.grant(Credit {
        bytes: 1000,
        batches: 10,
    });
    i.committed(Seq(1));
    pump(&mut a, &mut i);
    assert!(a.is_draining());
    assert_eq!(a.on_send(Seq(2), 10), Err(SendError::Draining));
    let events: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        events.contains(&AgentEvent::Acked(vec![Seq(1)])),
        "{events:?}"
    );
    assert!(events.iter().any(
        |e| matches!(e, AgentEvent::GoAway(g) if g.alternate.as_deref() == Some("agg-2:4433"))
    ));
    assert_eq!(a.credit().batches, 2, "no grant after GoAway");
}

#[test]
fn heartbeats_measure_the_clock_offset() {
    let (mut a, mut i) = established();
    a.heartbeat(1_000_000);
    let hb = a.poll_transmit().unwrap();
    // Aggregator clock 5 ms ahead; 1 ms each way.
    i.handle(hb, 20, 7_000_000).unwrap();
    let reply = i.poll_transmit().unwrap();
    a.handle(reply, 3_000_000).unwrap();
    match a.poll_event() {
        Some(AgentEvent::Clock(s)) => {
            assert_eq!(s.offset_ns, 5_000_000);
            assert_eq!(s.rtt_ns, 2_000_000);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn messages_out_of_place_close_the_session() {
    let mut i = IngestSession::new(ingest_cfg(), peer());
    let err = i.handle(Message::Batch(batch(1, 0)), 10, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNEXPECTED_MESSAGE);
    assert_eq!(
        i.handle(Message::Credit(Credit::default()), 10, 0),
        Err(SessionError::Closed)
    );

    let mut a = AgentSession::new(agent_cfg("s1", "a1"), Seq(1));
    let err = a.handle(Message::Credit(Credit::default()), 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNEXPECTED_MESSAGE);
}
