//! Ingest: one task per agent connection, driving a `wire::session::IngestSession`
//! from the connection's streams.
//!
//! The agent opens one bidirectional control stream (Hello, Define, Heartbeat one
//! way; Welcome, Ack, Credit, GoAway back) and unidirectional lanes for batches
//! (live data at high priority, replayed backlog at low). Readers decode frames
//! and feed one loop that owns the session: frames in, commits out to the sink,
//! outcomes back, acks and credit out on the control stream.
//!
//! Invariants kept here: the agent's identity is the verified certificate's; an
//! Ack follows the sink's report; credit is returned only as the sink absorbs
//! batches, and held back while it is under pressure; a frame that fails to decode
//! or trickles in too slowly ends the connection, counted by reason.

use crate::commit::{CommitDone, CommitOutcome, CommitRequest, Sink};
use crate::credit::CreditGate;
use crate::ledger::LedgerKey;
use crate::metrics::IngestMetrics;
use ferrule_transport::quinn;
use ferrule_transport::{
    classify, close_code, peer_identity, FrameReceiver, FrameSender, StreamError, VerifiedAgent,
};
use ferrule_wire::record::{encode_record, RecordHeader, SensorInfo};
use ferrule_wire::session::{IngestConfig, IngestEvent, IngestSession, PeerIdentity};
use ferrule_wire::{DecodeError, ErrorCode, ErrorMessage, GoAwayReason, Limits, Message, Seq};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// What every connection task shares.
#[derive(Debug)]
pub struct IngestContext {
    /// The session configuration offered to every agent.
    pub session: IngestConfig,
    /// Decoder limits (matching what Welcome announces).
    pub limits: Limits,
    /// Deadline for a frame from its first byte.
    pub frame_timeout: Duration,
    /// Deadline for the control stream and Hello after the handshake.
    pub hello_timeout: Duration,
    /// Where batches are committed.
    pub sink: Sink,
    /// Counters.
    pub metrics: IngestMetrics,
    /// Flips to true on SIGTERM: send GoAway, grant nothing more, drain.
    pub shutdown: watch::Receiver<bool>,
    /// Endpoint suggested in GoAway.
    pub alternate: Option<String>,
}

/// How long a closing session waits for its last Error message to reach the peer.
const ERROR_FLUSH: Duration = Duration::from_millis(500);

/// How long a drained session waits for the agent to close before closing itself.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

enum Inbound {
    Frame(Message, usize),
    Error(StreamError),
    ControlClosed,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Serves one incoming connection to its end.
pub async fn serve(incoming: quinn::Incoming, ctx: Arc<IngestContext>) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            let reason = classify(&e);
            ctx.metrics.refused(reason);
            tracing::warn!(%remote, reason, error = %e, "connection refused before handshake");
            return;
        }
    };
    let conn = match connecting.await {
        Ok(c) => c,
        Err(e) => {
            let reason = classify(&e);
            ctx.metrics.refused(reason);
            tracing::warn!(%remote, reason, error = %e, "agent handshake refused");
            return;
        }
    };
    let agent = match peer_identity(&conn) {
        Ok(a) => a,
        Err(e) => {
            ctx.metrics.refused("bad_identity");
            tracing::warn!(%remote, error = %e, "agent certificate names no usable identity");
            conn.close(
                close_code(ErrorCode::UNAUTHORIZED),
                e.to_string().as_bytes(),
            );
            return;
        }
    };
    ctx.metrics.connections.inc();
    tracing::info!(%remote, agent = %agent.key(), serial = agent.serial(), "agent connected");
    ctx.metrics.sessions.add(1);
    let end = drive(&conn, &agent, &ctx).await;
    ctx.metrics.sessions.add(-1);
    match end {
        Ok(why) => tracing::info!(agent = %agent.key(), why, "session ended"),
        Err((reason, detail)) => {
            ctx.metrics.refused(reason);
            tracing::warn!(agent = %agent.key(), %remote, reason, detail, "session cut off");
        }
    }
}

type End = Result<&'static str, (&'static str, String)>;

fn stream_reason(e: &StreamError) -> (&'static str, ErrorCode) {
    match e {
        StreamError::FrameTimeout(_) => ("frame_timeout", ErrorCode::TIMEOUT),
        StreamError::Decode(DecodeError::FrameTooLarge { .. }) => {
            ("frame_too_large", ErrorCode::LIMIT_EXCEEDED)
        }
        StreamError::Decode(DecodeError::TooManySamples { .. }) => {
            ("too_many_samples", ErrorCode::LIMIT_EXCEEDED)
        }
        StreamError::Decode(_) => ("malformed", ErrorCode::MALFORMED),
        StreamError::Truncated(_) => ("truncated", ErrorCode::MALFORMED),
        _ => ("stream_error", ErrorCode::INTERNAL),
    }
}

fn spawn_reader(mut rx: FrameReceiver, tx: mpsc::Sender<Inbound>, control: bool) {
    tokio::spawn(async move {
        loop {
            match rx.next().await {
                Ok(Some((msg, n))) => {
                    if tx.send(Inbound::Frame(msg, n)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    if control {
                        let _ = tx.send(Inbound::ControlClosed).await;
                    }
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Inbound::Error(e)).await;
                    return;
                }
            }
        }
    });
}

async fn drive(conn: &quinn::Connection, agent: &VerifiedAgent, ctx: &IngestContext) -> End {
    let (send, recv) = match tokio::time::timeout(ctx.hello_timeout, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err((classify(&e), e.to_string())),
        Err(_) => {
            conn.close(close_code(ErrorCode::TIMEOUT), b"no control stream");
            return Err(("hello_timeout", "no control stream opened".into()));
        }
    };
    let mut ctl = FrameSender::new(send, ctx.limits);
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(64);
    spawn_reader(
        FrameReceiver::new(recv, ctx.limits, ctx.frame_timeout),
        in_tx.clone(),
        true,
    );
    {
        let conn = conn.clone();
        let (limits, timeout) = (ctx.limits, ctx.frame_timeout);
        tokio::spawn(async move {
            while let Ok(lane) = conn.accept_uni().await {
                spawn_reader(
                    FrameReceiver::new(lane, limits, timeout),
                    in_tx.clone(),
                    false,
                );
            }
        });
    }

    let agent_key = agent.key();
    // A session starting while the sink is under pressure is welcomed with no
    // credit; its window is owed and paid when the pressure is gone, so new
    // sessions cannot add to a backlog the sink cannot absorb.
    let mut session_cfg = ctx.session.clone();
    let mut gate = CreditGate::default();
    if ctx.sink.under_pressure() {
        gate = CreditGate::owing(session_cfg.initial_credit);
        session_cfg.initial_credit = ferrule_wire::Credit::default();
        ctx.metrics.credit_withheld.inc();
    }
    let mut session = IngestSession::new(
        session_cfg,
        PeerIdentity {
            site: agent.site().to_string(),
            agent: agent.agent().to_string(),
        },
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<CommitDone>();
    let mut frame_bytes: HashMap<Seq, u64> = HashMap::new();
    let mut shutdown = ctx.shutdown.clone();
    let mut draining = *shutdown.borrow();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let hello_deadline = tokio::time::Instant::now() + ctx.hello_timeout;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut record = Vec::new();
    if draining {
        // Shutting down already: accept nothing.
        conn.close(close_code(ErrorCode::INTERNAL), b"shutting down");
        return Ok("refused while shutting down");
    }

    loop {
        tokio::select! {
            inbound = in_rx.recv() => match inbound {
                Some(Inbound::Frame(msg, n)) => {
                    if let Message::Batch(b) = &msg {
                        ctx.metrics.batches_received.inc();
                        ctx.metrics.samples_received.add(b.sample_count() as u64);
                    }
                    if let Err(e) = session.handle(msg, n as u64, now_ns()) {
                        // The session queued an Error for the peer: deliver it, then close.
                        flush(&mut session, &mut ctl, ctx).await;
                        ctl.finish_and_wait(ERROR_FLUSH).await;
                        conn.close(close_code(e.code()), e.to_string().as_bytes());
                        return Err((e.code().name(), e.to_string()));
                    }
                }
                Some(Inbound::Error(e)) => {
                    let (reason, code) = stream_reason(&e);
                    let msg = Message::Error(ErrorMessage { code, message: e.to_string() });
                    let _ = ctl.send(&msg).await;
                    ctl.finish_and_wait(ERROR_FLUSH).await;
                    conn.close(close_code(code), reason.as_bytes());
                    return Err((reason, e.to_string()));
                }
                Some(Inbound::ControlClosed) | None => {
                    return Ok("agent closed the control stream");
                }
            },
            Some(done) = done_rx.recv() => {
                let bytes = frame_bytes.remove(&done.seq).unwrap_or(0);
                match done.outcome {
                    CommitOutcome::Committed | CommitOutcome::Duplicate => session.committed(done.seq),
                    CommitOutcome::Failed(why) => {
                        // Not durable: end the session so the agent resends elsewhere or later.
                        let msg = Message::Error(ErrorMessage { code: ErrorCode::INTERNAL, message: format!("sink failed: {why}") });
                        flush(&mut session, &mut ctl, ctx).await;
                        let _ = ctl.send(&msg).await;
                        ctl.finish_and_wait(ERROR_FLUSH).await;
                        conn.close(close_code(ErrorCode::INTERNAL), b"sink failed");
                        return Err(("sink_failed", why));
                    }
                }
                if !draining {
                    let pressure = ctx.sink.under_pressure();
                    match gate.returned(bytes, pressure) {
                        Some(c) => session.grant(c),
                        None => ctx.metrics.credit_withheld.inc(),
                    }
                }
            },
            changed = shutdown.changed() => {
                if (changed.is_err() || *shutdown.borrow()) && !draining {
                    draining = true;
                    session.go_away(GoAwayReason::SHUTDOWN, ctx.alternate.clone());
                }
            },
            _ = tick.tick() => {
                if !session.is_established() && tokio::time::Instant::now() >= hello_deadline {
                    conn.close(close_code(ErrorCode::TIMEOUT), b"no hello");
                    return Err(("hello_timeout", "no Hello in time".into()));
                }
                if !draining {
                    if let Some(c) = gate.poll(ctx.sink.under_pressure()) {
                        session.grant(c);
                    }
                }
                if drain_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    conn.close(close_code(ErrorCode(0)), b"goaway");
                    return Ok("drained");
                }
            },
            e = conn.closed() => {
                return match e {
                    quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed => Ok("closed"),
                    other => Err((classify(&other), other.to_string())),
                };
            }
        }

        // Hand new batches to the sink (waiting if its queue is full).
        while let Some(ev) = session.poll_event() {
            match ev {
                IngestEvent::Established {
                    epoch,
                    version,
                    resume_from,
                    software,
                } => {
                    tracing::info!(agent = %agent_key, %epoch, version, %resume_from, software, "session established");
                }
                IngestEvent::Defined(d) => {
                    tracing::debug!(agent = %agent_key, sensor = %d.name, id = %d.sensor, "sensor defined")
                }
                IngestEvent::Commit {
                    batch,
                    frame_bytes: n,
                } => {
                    let sensors: Vec<SensorInfo> = batch
                        .series
                        .iter()
                        .filter_map(|s| session.sensor(s.sensor()))
                        .map(|d| SensorInfo {
                            id: d.sensor,
                            name: d.name.clone(),
                            unit: d.unit.clone(),
                            kind: d.kind,
                        })
                        .collect();
                    let samples = u32::try_from(batch.sample_count()).unwrap_or(u32::MAX);
                    let header = RecordHeader {
                        site: agent.site().to_string(),
                        agent: agent.agent().to_string(),
                        epoch: batch.epoch,
                        seq: batch.seq,
                        clock_offset_ns: batch.clock_offset_ns,
                        received_ns: now_ns(),
                        samples,
                        sensors,
                    };
                    record.clear();
                    if let Err(e) = encode_record(&header, &batch.series, &mut record) {
                        return Err(("encode_failed", e.to_string()));
                    }
                    ctx.metrics.clock_offset(&agent_key, batch.clock_offset_ns);
                    frame_bytes.insert(batch.seq, n);
                    let req = CommitRequest {
                        key: LedgerKey::new(agent.site(), agent.agent(), batch.epoch, batch.seq),
                        record: std::mem::take(&mut record),
                        samples,
                        reply: done_tx.clone(),
                    };
                    if ctx.sink.submit(req).await.is_err() {
                        conn.close(close_code(ErrorCode::INTERNAL), b"sink closed");
                        return Err(("sink_closed", "the committer has stopped".into()));
                    }
                }
                IngestEvent::Duplicate(seq) => {
                    tracing::debug!(agent = %agent_key, %seq, "retransmit within session")
                }
                IngestEvent::Rejected { seq, reason } => {
                    ctx.metrics.rejected(&format!("{}", reason.0));
                    tracing::warn!(agent = %agent_key, %seq, reason = reason.0, "batch rejected");
                }
                _ => {}
            }
        }
        if !flush(&mut session, &mut ctl, ctx).await {
            return Err(("control_write_failed", "control stream closed".into()));
        }
        // Once everything handed over is acknowledged, the agent leaves on GoAway;
        // give it a grace period to do so, then close.
        if draining && session.pending_commits() == 0 {
            drain_deadline.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_GRACE);
        } else {
            drain_deadline = None;
        }
    }
}

/// Sends everything the session queued; false if the control stream is gone.
async fn flush(session: &mut IngestSession, ctl: &mut FrameSender, ctx: &IngestContext) -> bool {
    while let Some(m) = session.poll_transmit() {
        match &m {
            Message::Ack(_) => ctx.metrics.acks.inc(),
            Message::Credit(_) => ctx.metrics.credit_grants.inc(),
            _ => {}
        }
        if ctl.send(&m).await.is_err() {
            return false;
        }
    }
    true
}
