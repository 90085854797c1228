//! Ingest: one task per agent connection, driving a `wire::session::IngestSession`
//! from the connection's streams.
//!
//! The agent opens one bidirectional control stream (Hello and Heartbeat one way;
//! Welcome, Ack, Credit, GoAway back) and unidirectional lanes for batches and
//! the Defines they need: the durable lane, in sequence order, and (with the
//! `LIVE` capability) a lane of live copies of the newest batches while the
//! durable one replays a backlog. A live copy is published to the fan-out at
//! once and nothing else (no commit, no ack, no credit): the later batch with
//! the same (epoch, seq) is committed in order and its publish is a repeat.
//! With the `STATUS` capability (offered to every agent) the agent reports its
//! spool backlog with each heartbeat; each report goes to its row of the agents
//! table and nowhere else.
//! Readers decode frames and feed one loop that owns the session: frames in,
//! commits out to the sink, outcomes back, acks and credit out on the control
//! stream, and the session's timers in between.
//!
//! The driver is thin: credit (returned for every batch whatever its fate, held
//! back while the sink is under pressure, within a window one
//! [`WindowController`] sizes for every session from the commit latencies the
//! sessions measure: see [`SharedWindow`]), dedupe, acks and every deadline (Hello,
//! a silent agent, commits that stall, the drain after GoAway) are the session's.
//! What stays here is I/O and its bounds: readers decode at most
//! [`READ_AHEAD_FRAMES`] frames ahead of the session (which then charges each batch
//! its decoded size against the credit), a control stream the agent does not read
//! is given up after `control_send_timeout`, and a frame that fails to decode or
//! trickles in too slowly ends the connection. Every end is counted by reason.

use crate::admission::{Admission, Ticket};
use crate::commit::{CommitDone, CommitOutcome, CommitRequest, Sink};
use crate::fanout::Publisher;
use crate::ledger::LedgerKey;
use crate::metrics::IngestMetrics;
use ferrule_transport::quinn;
use ferrule_transport::{
    classify, classify_server, close_code, peer_identity, refused_by_verifier, FrameReceiver,
    FrameSender, HandshakePermit, StreamError, VerifiedAgent, PEER_REFUSED_SERVER_CERTIFICATE,
};
use ferrule_wire::record::{encode_record, RecordHeader, SensorInfo};
use ferrule_wire::session::{
    IngestConfig, IngestEvent, IngestSession, PeerIdentity, WindowController,
};
use ferrule_wire::{
    Batch, Credit, DecodeError, Epoch, ErrorCode, ErrorMessage, GoAwayReason, Limits, Message,
    Outcome, Seq, Status,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What every connection task shares.
#[derive(Debug)]
pub struct IngestContext {
    /// The session configuration (limits, window, deadlines) for every agent.
    pub session: IngestConfig,
    /// Decoder limits (matching what Welcome announces).
    pub limits: Limits,
    /// Deadline for a frame from its first byte.
    pub frame_timeout: Duration,
    /// Give up on an agent whose control stream takes no data for this long.
    pub control_send_timeout: Duration,
    /// Where batches are committed.
    pub sink: Sink,
    /// Counters.
    pub metrics: IngestMetrics,
    /// Flips to true on SIGTERM: send GoAway, grant nothing more, drain.
    pub shutdown: watch::Receiver<bool>,
    /// Endpoint suggested in GoAway.
    pub alternate: Option<String>,
    /// Sessions held, bounded in total and per agent.
    pub admission: Arc<Admission<quinn::Connection>>,
    /// The real-time path: each batch is published here as it arrives, in
    /// parallel with its commit, never waited for.
    pub fanout: Publisher,
    /// The credit window every session grants, sized from the sink's latency.
    pub window: SharedWindow,
    /// Every agent seen (the live page's agents table).
    pub agents: crate::agents::Agents,
    /// The TLS configuration a handshake starting now takes (reloaded while
    /// running).
    pub tls: ferrule_transport::ServerTlsSlot,
    /// The certificates the newest CRL revokes: a session whose certificate
    /// it lists closes.
    pub revoked: watch::Receiver<Arc<ferrule_transport::Revoked>>,
    /// Spans of sampled batches' commits (OTLP); disabled without `[otlp]`.
    pub traces: ferrule_otlp::BatchTracer,
}

/// Records the commit span of a sampled batch: from its arrival (`latency`
/// ago) to now, when it is durable and acknowledged.
fn trace_commit(
    ctx: &IngestContext,
    agent: &VerifiedAgent,
    epoch: Epoch,
    seq: Seq,
    latency: Duration,
) {
    let key = ferrule_otlp::BatchKey {
        site: agent.site(),
        agent: agent.agent(),
        epoch: epoch.0,
        seq: seq.0,
    };
    if !ctx.traces.sampled(&key) {
        return;
    }
    let end = std::time::SystemTime::now();
    ctx.traces.record(
        &key,
        "ferrule.aggregator.commit",
        ferrule_otlp::SpanKind::Server,
        end.checked_sub(latency).unwrap_or(end),
        end,
        vec![ferrule_otlp::KeyValue::new(
            "ferrule.server",
            ctx.session.server.clone(),
        )],
    );
}

/// One [`WindowController`] for all the sessions: they share the sink, so its
/// queue is theirs together. Each session reports the commit latency of its
/// batches and takes the window it returns; the gauges show it.
///
/// A lock held for a few arithmetic operations per commit: tens of thousands a
/// second at saturation, far below what it would take to contend.
#[derive(Debug)]
pub struct SharedWindow {
    controller: Mutex<WindowController>,
    metrics: IngestMetrics,
}

impl SharedWindow {
    /// Shares `controller`, publishing its window in `metrics`.
    pub fn new(controller: WindowController, metrics: IngestMetrics) -> Self {
        let w = Self {
            controller: Mutex::new(controller),
            metrics,
        };
        w.publish(&w.lock());
        w
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowController> {
        // Nothing in the controller can be left half-updated by a panic that
        // matters more than stopping ingest would: take it as it is.
        self.controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, c: &WindowController) {
        let w = c.window();
        self.metrics.credit_window_batches.set(i64::from(w.batches));
        self.metrics
            .credit_window_bytes
            .set(i64::try_from(w.bytes).unwrap_or(i64::MAX));
        self.metrics
            .sink_queue_delay_us
            .set(i64::try_from(c.stats().queue_delay.as_micros()).unwrap_or(i64::MAX));
    }

    /// The window now.
    pub fn current(&self) -> Credit {
        self.lock().window()
    }

    /// A batch was durable `latency` after it arrived from an agent `rtt`
    /// away; the window now.
    pub fn on_commit(&self, now: Instant, latency: Duration, rtt: Duration) -> Credit {
        let mut c = self.lock();
        if c.on_commit(now, latency, rtt) {
            self.publish(&c);
        }
        c.window()
    }
}

/// Frames decoded ahead of the session per connection. With the credit (which
/// charges decoded size) this bounds what one connection can make us hold: a
/// decoded frame is at most about `server.max_frame_bytes`.
pub const READ_AHEAD_FRAMES: usize = 8;

/// How long a closing session waits for its last Error message to reach the peer.
const ERROR_FLUSH: Duration = Duration::from_millis(500);

/// How often a session owed credit looks at the sink's pressure.
const PRESSURE_POLL: Duration = Duration::from_millis(20);

enum Inbound {
    Frame(Message, usize),
    Error(StreamError),
    ControlClosed,
}

use ferrule_transport::session_now as now;

/// Serves one incoming connection to its end.
///
/// `handshake` holds one of the server's handshake slots until the QUIC and
/// TLS handshake is over; a handshake not over within the hello timeout is
/// given up (an agent that vanished mid-handshake must not keep its slot for
/// the whole idle timeout).
pub async fn serve(
    incoming: quinn::Incoming,
    mut handshake: HandshakePermit,
    ctx: Arc<IngestContext>,
) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept_with(ctx.tls.current()) {
        Ok(c) => c,
        Err(e) => {
            let reason = classify(&e);
            ctx.metrics.refused(reason);
            tracing::warn!(%remote, reason, error = %e, "connection refused before handshake");
            return;
        }
    };
    let mut shutdown = ctx.shutdown.clone();
    // Dropping the attempt (any branch but the first) closes it.
    let handshaken = tokio::select! {
        r = tokio::time::timeout(ctx.session.hello_timeout, connecting) => r,
        () = handshake.evicted() => {
            tracing::debug!(%remote, "QUIC handshake abandoned: its slot went to another address");
            return;
        }
        _ = shutdown.wait_for(|s| *s) => return,
    };
    drop(handshake);
    let Ok(handshaken) = handshaken else {
        ctx.metrics.refused("handshake_timeout");
        tracing::debug!(%remote, "QUIC handshake not over within the hello timeout; given up");
        return;
    };
    let conn = match handshaken {
        Ok(c) => c,
        Err(e) => {
            // The agent refusing our certificate is told apart from us
            // refusing its certificate (both say `unknown_ca` on the wire).
            // Ours the verifier has counted already, by rustls's typed error.
            let reason = classify_server(&e);
            if !refused_by_verifier(&e) {
                ctx.metrics.refused(reason);
            }
            if reason == PEER_REFUSED_SERVER_CERTIFICATE {
                tracing::warn!(%remote, reason, error = %e, "agent refused this aggregator's certificate (check the agent's uplink.server_name and trust bundle)");
            } else {
                tracing::warn!(%remote, reason, error = %e, "agent handshake refused");
            }
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
    let _ticket: Ticket<quinn::Connection> = match ctx.admission.admit(&agent.key(), conn.clone()) {
        Ok((ticket, superseded)) => {
            for old in superseded {
                ctx.metrics.refused("superseded");
                tracing::info!(agent = %agent.key(), old = %old.remote_address(), "a newer session of this agent supersedes an older one");
                old.close(
                    close_code(ErrorCode::LIMIT_EXCEEDED),
                    b"superseded by a newer session of this agent",
                );
            }
            ticket
        }
        Err(e) => {
            ctx.metrics.refused("too_many_sessions");
            tracing::warn!(%remote, agent = %agent.key(), error = %e, "session refused");
            conn.close(
                close_code(ErrorCode::LIMIT_EXCEEDED),
                e.to_string().as_bytes(),
            );
            return;
        }
    };
    ctx.metrics.connections.inc();
    tracing::info!(%remote, agent = %agent.key(), serial = agent.serial(), "agent connected");
    ctx.metrics.sessions.add(1);
    let row = ctx.agents.connected(
        agent.site(),
        agent.agent(),
        &remote.to_string(),
        agent.serial(),
        agent.not_after_unix(),
    );
    let end = drive(&conn, &agent, &row, &ctx).await;
    drop(row);
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

/// Why the loop stops: a graceful end, or an error to count (and tell the agent).
enum Stop {
    Done(&'static str),
    Cut(&'static str, String, ErrorCode),
}

async fn drive(
    conn: &quinn::Connection,
    agent: &VerifiedAgent,
    row: &crate::agents::Session,
    ctx: &IngestContext,
) -> End {
    let hello_timeout = ctx.session.hello_timeout;
    let (send, recv) = match tokio::time::timeout(hello_timeout, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err((classify(&e), e.to_string())),
        Err(_) => {
            conn.close(close_code(ErrorCode::TIMEOUT), b"no control stream");
            return Err(("handshake_timeout", "no control stream opened".into()));
        }
    };
    if *ctx.shutdown.borrow() {
        conn.close(close_code(ErrorCode::INTERNAL), b"shutting down");
        return Ok("refused while shutting down");
    }
    let mut ctl = FrameSender::new(send, ctx.limits);
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(READ_AHEAD_FRAMES);
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
    let mut session = IngestSession::new(
        ctx.session.clone(),
        PeerIdentity {
            site: agent.site().to_string(),
            agent: agent.agent().to_string(),
        },
        Instant::now(),
    );
    session.set_sink_pressure(ctx.sink.under_pressure());
    session.set_window(ctx.window.current());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<CommitDone>();
    let mut shutdown = ctx.shutdown.clone();
    let mut revoked = ctx.revoked.clone();
    let mut revocations_open = true;
    // A CRL taken between this agent's handshake and now.
    revoked.mark_changed();
    let mut draining = false;
    let mut pressure_poll = tokio::time::interval(PRESSURE_POLL);
    pressure_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut record = Vec::new();
    let mut refused_defines_logged = false;
    // Commits waiting for room in the sink's queue, bounded by the credit: the
    // loop waits for room inside its select, so timers, heartbeats and acks go
    // on while the sink is full.
    let mut outbox: VecDeque<CommitRequest> = VecDeque::new();

    let stop = loop {
        let deadline = session.poll_timeout();
        // Owed credit is paid only while established (not draining): poll for it
        // only then.
        let owed = !draining && session.owed_credit() != Credit::default();
        tokio::select! {
            inbound = in_rx.recv() => match inbound {
                Some(Inbound::Frame(msg, n)) => {
                    if let Message::Batch(b) = &msg {
                        ctx.metrics.batches_received.inc();
                        ctx.metrics.samples_received.add(b.sample_count() as u64);
                        ctx.metrics.batch_samples.observe(b.sample_count() as f64);
                    }
                    session.set_sink_pressure(ctx.sink.under_pressure());
                    if let Err(e) = session.handle(msg, n as u64, now()) {
                        break Stop::Cut(e.label(), e.to_string(), e.code());
                    }
                }
                Some(Inbound::Error(e)) => {
                    // A lane's read fails when the connection closes: that is the
                    // connection's end, counted (or not) by its own reason.
                    if let Some(closed) = conn.close_reason() {
                        break match closed {
                            quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed => Stop::Done("closed"),
                            other => Stop::Cut(classify(&other), other.to_string(), ErrorCode(0)),
                        };
                    }
                    let (reason, code) = stream_reason(&e);
                    let msg = Message::Error(ErrorMessage { code, message: e.to_string() });
                    let _ = tokio::time::timeout(ERROR_FLUSH, ctl.send(&msg)).await;
                    break Stop::Cut(reason, e.to_string(), code);
                }
                Some(Inbound::ControlClosed) | None => {
                    break Stop::Done("agent closed the control stream");
                }
            },
            Some(done) = done_rx.recv() => {
                match done.outcome {
                    CommitOutcome::Committed | CommitOutcome::Duplicate => {
                        // A resend of what was committed before is acked, not
                        // committed again: its commit span was recorded then.
                        let first_commit = matches!(done.outcome, CommitOutcome::Committed);
                        ctx.metrics.acked_batches.inc();
                        session.set_sink_pressure(ctx.sink.under_pressure());
                        let at = Instant::now();
                        match session.committed(done.epoch, done.seq, at) {
                            Some(latency) => {
                                ctx.metrics.commit_latency.observe_duration(latency);
                                if first_commit {
                                    trace_commit(ctx, agent, done.epoch, done.seq, latency);
                                }
                                session.set_window(ctx.window.on_commit(at, latency, conn.rtt()));
                            }
                            None => session.set_window(ctx.window.current()),
                        }
                    }
                    CommitOutcome::Failed(why) => {
                        // Not durable: end the session so the agent resends it
                        // elsewhere or later.
                        let e = session.sink_failed(why);
                        break Stop::Cut(e.label(), e.to_string(), e.code());
                    }
                }
            },
            changed = revoked.changed(), if revocations_open => {
                if changed.is_err() {
                    revocations_open = false;
                } else if agent.revoked_by(&revoked.borrow_and_update()) {
                    ctx.metrics.sessions_revoked.inc();
                    let msg = Message::Error(ErrorMessage {
                        code: ErrorCode::CERTIFICATE_REVOKED,
                        message: "this agent's certificate was revoked (the aggregator's CRL lists it)".into(),
                    });
                    let _ = tokio::time::timeout(ERROR_FLUSH, ctl.send(&msg)).await;
                    break Stop::Cut("certificate_revoked", format!("certificate {} revoked by a new CRL", agent.serial()), ErrorCode::CERTIFICATE_REVOKED);
                }
            },
            changed = shutdown.changed(), if !draining => {
                if changed.is_err() || *shutdown.borrow() {
                    draining = true;
                    session.go_away(GoAwayReason::SHUTDOWN, ctx.alternate.clone(), Instant::now());
                }
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                if let Err(e) = session.handle_timeout(Instant::now()) {
                    break Stop::Cut(e.label(), e.to_string(), e.code());
                }
            },
            _ = pressure_poll.tick(), if owed => {
                session.set_sink_pressure(ctx.sink.under_pressure());
                session.set_window(ctx.window.current());
            },
            permit = ctx.sink.reserve(), if !outbox.is_empty() => match (permit, outbox.pop_front()) {
                (Some(p), Some(req)) => p.send(req),
                (None, _) => break Stop::Cut("sink_closed", "the committer has stopped".into(), ErrorCode::INTERNAL),
                (Some(_), None) => {}
            },
            e = conn.closed() => {
                break match e {
                    quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed => Stop::Done("closed"),
                    other => Stop::Cut(classify(&other), other.to_string(), ErrorCode(0)),
                };
            }
        }

        // New batches go to the sink's queue, or wait in the outbox for room.
        if let Err(stop) = take_events(
            &mut session,
            agent,
            row,
            &agent_key,
            ctx,
            &done_tx,
            &mut record,
            &mut refused_defines_logged,
            &mut outbox,
        ) {
            break stop;
        }
        if !send_queued(&mut session, &mut ctl, ctx).await {
            break Stop::Cut(
                "control_not_read",
                format!(
                    "the agent took no control data for {:?}",
                    ctx.control_send_timeout
                ),
                ErrorCode::TIMEOUT,
            );
        }
        if session.is_finished() {
            break Stop::Done("drained");
        }
    };
    match stop {
        Stop::Done(why) => {
            conn.close(close_code(ErrorCode(0)), why.as_bytes());
            Ok(why)
        }
        Stop::Cut(reason, detail, code) => {
            // Deliver the Error the session queued (if the agent reads), then close.
            let _ = tokio::time::timeout(ERROR_FLUSH, async {
                while let Some(m) = session.poll_transmit() {
                    if ctl.send(&m).await.is_err() {
                        break;
                    }
                }
                ctl.finish_and_wait(ERROR_FLUSH).await;
            })
            .await;
            conn.close(close_code(code), reason.as_bytes());
            Err((reason, detail))
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
    }
}

/// Acts on the session's events: commits go to the outbox, the rest are counted
/// and logged.
#[allow(clippy::too_many_arguments)] // the loop's state, passed by piece to keep borrows apart
fn take_events(
    session: &mut IngestSession,
    agent: &VerifiedAgent,
    row: &crate::agents::Session,
    agent_key: &str,
    ctx: &IngestContext,
    done_tx: &mpsc::UnboundedSender<CommitDone>,
    record: &mut Vec<u8>,
    refused_defines_logged: &mut bool,
    outbox: &mut VecDeque<CommitRequest>,
) -> Result<(), Stop> {
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
            IngestEvent::DefineRefused { define, limit } => {
                ctx.metrics.defines_refused.inc();
                if !std::mem::replace(refused_defines_logged, true) {
                    tracing::warn!(agent = %agent_key, sensor = %define.name, limit, "agent defines more sensors than server.max_sensors_per_agent; batches naming the extra ones are refused");
                }
            }
            IngestEvent::Commit { batch, .. } => {
                let samples = to_record(session, agent, &batch, record)?;
                ctx.metrics.clock_offset(agent_key, batch.clock_offset_ns);
                row.batch(batch.clock_offset_ns);
                // The real-time path gets it now, in parallel with the commit:
                // never waits, skips (counted) when its queue is full, and drops
                // a resend it already had.
                ctx.fanout.publish(
                    agent.site(),
                    agent.agent(),
                    batch.epoch,
                    batch.seq,
                    samples,
                    record,
                );
                let req = CommitRequest {
                    key: LedgerKey::new(agent.site(), agent.agent(), batch.epoch, batch.seq),
                    record: std::mem::take(record),
                    samples,
                    reply: done_tx.clone(),
                };
                outbox.push_back(req);
            }
            IngestEvent::Duplicate { epoch, seq } => {
                ctx.metrics.session_duplicates.inc();
                tracing::debug!(agent = %agent_key, %epoch, %seq, "retransmit within session")
            }
            IngestEvent::Rejected { epoch, seq, reason } => {
                ctx.metrics.rejected(reason.name());
                tracing::warn!(agent = %agent_key, %epoch, %seq, reason = reason.name(), "batch rejected");
            }
            IngestEvent::CreditWithheld { .. } => ctx.metrics.credit_withheld.inc(),
            IngestEvent::Live { batch, .. } => {
                // The same record bytes the batch will be committed as (but for
                // the receive time), to the real-time path only: the batch
                // itself follows on the durable lane, its publish a repeat.
                let samples = to_record(session, agent, &batch, record)?;
                ctx.metrics.live_batches.inc();
                ctx.fanout.publish(
                    agent.site(),
                    agent.agent(),
                    batch.epoch,
                    batch.seq,
                    samples,
                    record,
                );
            }
            IngestEvent::LiveRefused { epoch, seq, reason } => {
                ctx.metrics.live_refused(reason);
                tracing::debug!(agent = %agent_key, %epoch, %seq, reason = reason.name(), "live copy refused");
            }
            IngestEvent::Status(st) => row.spool(spool_report(st)),
            _ => {}
        }
    }
    Ok(())
}

/// What an agent's spool report shows in its row of the agents table.
fn spool_report(st: Status) -> crate::agents::SpoolReport {
    crate::agents::SpoolReport {
        batches: st.spool_batches,
        bytes: st.spool_bytes,
        oldest_unacked_ms: st.oldest_unacked_ms,
    }
}

/// Encodes `batch` as the record the sink and the fan-out take, into `record`;
/// returns its sample count.
fn to_record(
    session: &IngestSession,
    agent: &VerifiedAgent,
    batch: &Batch,
    record: &mut Vec<u8>,
) -> Result<u32, Stop> {
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
        received_ns: now().wall_ns,
        samples,
        sensors,
    };
    record.clear();
    encode_record(&header, &batch.series, record)
        .map_err(|e| Stop::Cut("encode_failed", e.to_string(), ErrorCode::INTERNAL))?;
    Ok(samples)
}

/// Sends everything the session queued; false if the agent took none of it for
/// `control_send_timeout` (it does not read) or the stream is gone.
async fn send_queued(
    session: &mut IngestSession,
    ctl: &mut FrameSender,
    ctx: &IngestContext,
) -> bool {
    while let Some(m) = session.poll_transmit() {
        match &m {
            // A rejecting Ack is a refusal, counted per batch when the session
            // rejected it.
            Message::Ack(a) if a.outcome == Outcome::Committed => ctx.metrics.acks.inc(),
            Message::Credit(_) => ctx.metrics.credit_grants.inc(),
            _ => {}
        }
        match tokio::time::timeout(ctx.control_send_timeout, ctl.send(&m)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_wire::session::Now;
    use ferrule_wire::{Capabilities, Epoch, Hello, Seq, ServerLimits};

    /// A session configured as the server configures it (`IngestConfig::new`)
    /// offers spool reports, and a report lands in the agent's row.
    #[test]
    fn a_spool_report_reaches_the_agents_table() {
        let cfg = IngestConfig::new(
            "agg",
            ServerLimits {
                max_frame_bytes: 1 << 20,
                max_batch_samples: 1000,
                max_sensors: 10,
                heartbeat_interval_ms: 1000,
            },
            Credit {
                bytes: 1 << 20,
                batches: 8,
            },
        );
        let t = Instant::now();
        let now = Now {
            mono: t,
            wall_ns: 1_700_000_000_000_000_000,
        };
        let mut session = IngestSession::new(
            cfg,
            PeerIdentity {
                site: "plant-a".into(),
                agent: "a1".into(),
            },
            t,
        );
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            epoch: Epoch(1),
            resume_from: Seq(1),
            capabilities: Capabilities::ALL,
            site: "plant-a".into(),
            agent: "a1".into(),
            software: "test".into(),
        };
        assert!(session.handle(Message::Hello(hello), 50, now).is_ok());
        match session.poll_transmit() {
            Some(Message::Welcome(w)) => {
                assert!(w.capabilities.contains(Capabilities::STATUS), "{w:?}")
            }
            other => panic!("no Welcome: {other:?}"),
        }
        let st = Status {
            spool_batches: 40,
            spool_bytes: 123_456,
            oldest_unacked_ms: 90_000,
        };
        assert!(session.handle(Message::Status(st), 10, now).is_ok());

        let agents = crate::agents::Agents::new();
        let row = agents.connected("plant-a", "a1", "127.0.0.1:1", "0a", 0);
        assert_eq!(
            agents.view(1)[0].spool_batches,
            None,
            "nothing reported yet"
        );
        while let Some(ev) = session.poll_event() {
            if let IngestEvent::Status(st) = ev {
                row.spool(spool_report(st));
            }
        }
        let v = &agents.view(1)[0];
        assert_eq!(v.spool_batches, Some(40));
        assert_eq!(v.spool_bytes, Some(123_456));
        assert_eq!(v.oldest_unacked_s, Some(90.0));
    }
}
