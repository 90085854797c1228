//! The agent's side of a session.
//!
//! Invariants:
//! - Nothing but Hello leaves before Welcome; a batch is sent only within credit,
//!   charged [`crate::batch_cost`] as the aggregator charges it.
//! - A batch leaves the in-flight set only on an Ack naming its (epoch, seq); the
//!   driver deletes from its spool exactly what [`AgentEvent::Acked`] and
//!   [`AgentEvent::Rejected`] report. One session carries batches of any epoch, so a
//!   spool holding several drains in order.
//! - Every lane (stream) carries the Define of each sensor before the first batch
//!   that may use it: [`AgentSession::on_send`] hands the driver the Defines a lane
//!   still lacks.
//! - Live copies ([`AgentSession::on_send_live`], only with
//!   [`Capabilities::LIVE`]) spend no credit and change no state but the lane's
//!   Defines: they are never acknowledged, so they never enter the in-flight set,
//!   and a batch in flight or settled is not copied (the aggregator has it).
//! - Deadlines ([`AgentSession::poll_timeout`]): Welcome within the handshake
//!   timeout; a heartbeat every interval (the aggregator answers each); something
//!   from the aggregator at least every `peer_timeout`, or it is dead; and while
//!   batches are in flight or wait for credit, an Ack or a Credit at least every
//!   `stall_timeout`, or the session is stuck. A missed deadline closes the session
//!   with [`SessionError::Timeout`] so the driver reconnects, maybe elsewhere.
//! - A [`Message::Status`] goes out right after each heartbeat, and only then,
//!   when [`Capabilities::STATUS`] was negotiated and the driver has told the
//!   session what its spool holds ([`AgentSession::set_spool`]): never to an
//!   aggregator that did not offer the bit, never numbers the driver did not give.

use super::window::{WindowConfig, WindowController};
use super::{earliest, negotiate, Now, SessionError, TimeoutKind};
use crate::clock::{self, ClockSample};
use crate::ids::{Epoch, SensorId, Seq};
use crate::message::*;
use crate::seqset::SeqSet;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// Ranges of settled seqs an agent session remembers per epoch.
const MAX_SETTLED_RANGES: usize = 1024;
use std::time::{Duration, Instant};

/// Who the agent is, what it speaks, and the deadlines it keeps.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Site the agent's certificate names.
    pub site: String,
    /// Agent id its certificate names.
    pub agent: String,
    /// Software version for the aggregator's logs.
    pub software: String,
    /// Oldest protocol version to offer.
    pub min_version: u16,
    /// Newest protocol version to offer.
    pub max_version: u16,
    /// Features to offer.
    pub capabilities: Capabilities,
    /// Welcome must arrive within this of the session's start.
    pub handshake_timeout: Duration,
    /// Heartbeat interval until the aggregator announces its own in Welcome.
    pub heartbeat_interval: Duration,
    /// The aggregator is dead after this long without a message from it (it
    /// answers every heartbeat); at least three heartbeat intervals.
    pub peer_timeout: Duration,
    /// The session is stuck after this long with batches in flight or waiting for
    /// credit and neither an Ack nor a Credit arriving.
    pub stall_timeout: Duration,
    /// Queueing delay to hold between sending a batch and its Ack, above the
    /// least seen lately (the round trip and the sink's own latency); zero
    /// sends whatever the credit allows. See [`AgentConfig::pacing`].
    pub target_queue_delay: Duration,
    /// Most batches the pacing lets be in flight (the credit still applies).
    pub pacing_max_batches: u32,
}

/// Batches in flight the pacing allows at most, by default.
pub const DEFAULT_PACING_MAX_BATCHES: u32 = 1024;

/// Default queueing delay the pacing holds (see [`AgentConfig::pacing`]).
pub const DEFAULT_TARGET_QUEUE_DELAY: Duration = Duration::from_millis(3);

/// Every agent probes its base ack latency at these marks of the wall clock,
/// so that a fleet drains the shared queue together
/// ([`WindowController::probe_base`]).
const PROBE_PERIOD_NS: i64 = 5_000_000_000;

impl AgentConfig {
    /// A configuration for `site`/`agent` with default versions and deadlines:
    /// Welcome within 5 s, a heartbeat every second, the aggregator dead after 5 s
    /// of silence, stuck after 60 s without progress.
    pub fn new(
        site: impl Into<String>,
        agent: impl Into<String>,
        software: impl Into<String>,
    ) -> Self {
        Self {
            site: site.into(),
            agent: agent.into(),
            software: software.into(),
            min_version: crate::MIN_PROTOCOL_VERSION,
            max_version: crate::PROTOCOL_VERSION,
            capabilities: Capabilities::ALL,
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(60),
            target_queue_delay: DEFAULT_TARGET_QUEUE_DELAY,
            pacing_max_batches: DEFAULT_PACING_MAX_BATCHES,
        }
    }

    /// The controller that paces sends, `None` when pacing is off.
    ///
    /// Credit bounds what an agent may have in flight; at saturation every
    /// agent keeps all of it in flight, and a batch waits behind the lot
    /// (Little's law: 256 batches a session gave 200 ms ack p99). The
    /// aggregator can size the credit from its commit latency, but the queue
    /// also forms where it cannot see it: in QUIC buffers in front of a busy
    /// session. The agent sees all of it, in the time from sending a batch to
    /// its Ack: it sizes how much of its credit it uses from that, as
    /// delay-based congestion control does (TCP Vegas, Swift), with the same
    /// [`WindowController`] the aggregator uses. The path's round trip, as
    /// the transport measures it ([`AgentSession::set_path_rtt`]), is taken
    /// out of each Ack's latency and given as the loop's round trip: a
    /// round trip that grows (a route change, a backup link, a satellite
    /// hop) is not queue, and must not shrink the window to one batch a
    /// round trip until the old base is forgotten (a fleet test found 300 ms
    /// more of path cut an agent to a sixth of its rate for the 5-10 s the
    /// base is kept). An Ack quicker than the smoothed round trip (it lags a
    /// path that got faster) is not fed to the controller. Without a path
    /// round trip it is inside the latency, and a steady long one is part
    /// of the base.
    pub fn pacing(&self) -> Option<WindowController> {
        if self.target_queue_delay.is_zero() {
            return None;
        }
        let n = u64::from(self.pacing_max_batches.max(1));
        let mut cfg = WindowConfig::new(
            self.target_queue_delay,
            Credit {
                bytes: n,
                batches: self.pacing_max_batches.max(1),
            },
            1,
        );
        // Longer than the probe period: the wall clock's marks, shared by
        // the fleet, start the probes, not each controller's own timer.
        cfg.base_memory = Duration::from_secs(12);
        // A far agent's jitter is not queue: hold at least a quarter of the
        // base and the round trip (25 ms at a 100 ms round trip).
        cfg.target_base_share_percent = 25;
        // Until it sees a queue an agent uses its credit as it always has.
        Some(WindowController::new(cfg).starting_at_ceiling())
    }
}

/// What the agent's spool holds unacknowledged, as the driver last saw it
/// ([`AgentSession::set_spool`]); the session turns it into a [`Status`] at
/// each heartbeat.
///
/// The oldest batch is given by when it was written, not by its age, so the
/// age the aggregator sees is measured when the report leaves, however long
/// ago the driver looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolBacklog {
    /// Batches not yet acknowledged.
    pub batches: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// When the oldest of them was written, wall clock, nanoseconds since the
    /// Unix epoch (`None` when there is none).
    pub oldest_unacked_wall_ns: Option<i64>,
}

impl SpoolBacklog {
    /// The report to send at `wall_ns`: the oldest batch's age from its write
    /// time, 0 if the clock reads earlier than that (it jumped back).
    pub fn status_at(&self, wall_ns: i64) -> Status {
        let age_ns = self
            .oldest_unacked_wall_ns
            .map_or(0, |t| wall_ns.saturating_sub(t).max(0));
        Status {
            spool_batches: self.batches,
            spool_bytes: self.bytes,
            // age_ns >= 0, checked just above.
            oldest_unacked_ms: age_ns as u64 / 1_000_000,
        }
    }
}

/// Something the agent's driver must act on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AgentEvent {
    /// Welcome arrived: the session is up and batches may flow within credit.
    Established {
        /// Negotiated version.
        version: u16,
        /// The aggregator's limits.
        limits: ServerLimits,
        /// The aggregator's name.
        server: String,
    },
    /// These batches are durable: delete them from the spool.
    Acked {
        /// Their epoch.
        epoch: Epoch,
        /// Their seqs, ascending.
        seqs: Vec<Seq>,
        /// From each one's send on this session to this ack (for the ones sent
        /// on this session): the ack latency operators chart, and the span of
        /// a traced batch's send.
        latencies: Vec<(Seq, Duration)>,
    },
    /// These batches were refused for good: count them as dropped and delete them.
    Rejected {
        /// Their epoch.
        epoch: Epoch,
        /// Their seqs, ascending.
        seqs: Vec<Seq>,
        /// Why.
        reason: RejectReason,
    },
    /// A new clock measurement.
    Clock(ClockSample),
    /// The aggregator asks us to drain and move.
    GoAway(GoAway),
}

/// Why a batch cannot be sent now. None of these is fatal: keep it spooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No Welcome yet.
    #[error("session not established")]
    NotEstablished,
    /// The aggregator asked us to go; send elsewhere.
    #[error("session draining")]
    Draining,
    /// Not enough credit; wait for a Credit message.
    #[error("insufficient credit")]
    NoCredit,
    /// The batch is already in flight on this session.
    #[error("batch already in flight")]
    AlreadyInFlight,
    /// The batch was acknowledged or refused on this session already: its Ack
    /// stands (a refused batch sent again could otherwise be covered by a later
    /// cumulative Ack and taken for committed).
    #[error("batch already settled on this session")]
    AlreadySettled,
    /// A live copy on a session whose aggregator did not accept
    /// [`Capabilities::LIVE`] (an older one, or one that turned them off).
    #[error("live copies not negotiated")]
    LiveNotNegotiated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitWelcome,
    Established,
    Draining,
    Closed,
}

/// The agent's side of one session.
#[derive(Debug)]
pub struct AgentSession {
    cfg: AgentConfig,
    state: State,
    version: u16,
    /// What both sides support (from Welcome; empty before).
    capabilities: Capabilities,
    limits: Option<ServerLimits>,
    credit: Credit,
    /// Each batch in flight: its cost and when it was sent.
    in_flight: BTreeMap<(Epoch, Seq), (u64, Instant)>,
    /// Sizes how many batches are in flight from their ack latency.
    pacing: Option<WindowController>,
    /// The wall clock's last probe mark seen (`PROBE_PERIOD_NS`).
    probe_mark: Option<i64>,
    /// The path's round trip as the driver last gave it (zero: unknown).
    path_rtt: Duration,
    /// Acknowledged or refused on this session, per epoch (bounded: the lowest
    /// ranges are forgotten beyond [`MAX_SETTLED_RANGES`]).
    settled: HashMap<Epoch, SeqSet>,
    /// Every Define to carry, in the order given; `lanes[i]` of them went on lane i.
    defines: Vec<Define>,
    define_ids: HashSet<SensorId>,
    lanes: Vec<usize>,
    handshake_deadline: Option<Instant>,
    last_rx: Instant,
    next_heartbeat: Option<Instant>,
    heartbeat: Duration,
    /// While work is outstanding: when something last moved.
    progress_at: Option<Instant>,
    blocked: bool,
    /// What the driver last said its spool holds (reported with heartbeats).
    spool: Option<SpoolBacklog>,
    transmit: VecDeque<Message>,
    events: VecDeque<AgentEvent>,
}

impl AgentSession {
    /// A session starting at `now` that resumes at `resume` = (epoch, seq) of the
    /// oldest unacknowledged batch (or the next one to be written, if none is).
    pub fn new(cfg: AgentConfig, resume: (Epoch, Seq), now: Instant) -> Self {
        let hello = Hello {
            min_version: cfg.min_version,
            max_version: cfg.max_version,
            epoch: resume.0,
            resume_from: resume.1,
            capabilities: cfg.capabilities,
            site: cfg.site.clone(),
            agent: cfg.agent.clone(),
            software: cfg.software.clone(),
        };
        let handshake_deadline = Some(now + cfg.handshake_timeout);
        let heartbeat = cfg.heartbeat_interval;
        let pacing = cfg.pacing();
        Self {
            cfg,
            pacing,
            probe_mark: None,
            path_rtt: Duration::ZERO,
            state: State::AwaitWelcome,
            version: 0,
            capabilities: Capabilities::default(),
            limits: None,
            credit: Credit::default(),
            in_flight: BTreeMap::new(),
            settled: HashMap::new(),
            defines: Vec::new(),
            define_ids: HashSet::new(),
            lanes: Vec::new(),
            handshake_deadline,
            last_rx: now,
            next_heartbeat: None,
            heartbeat,
            progress_at: None,
            blocked: false,
            spool: None,
            transmit: VecDeque::from([Message::Hello(hello)]),
            events: VecDeque::new(),
        }
    }

    /// True once Welcome arrived and until GoAway or close.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// True after GoAway: finish what is in flight, send nothing new.
    pub fn is_draining(&self) -> bool {
        self.state == State::Draining
    }

    /// True once the session has ended (an error either way, or a deadline).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The limits the aggregator announced, once established.
    pub fn limits(&self) -> Option<ServerLimits> {
        self.limits
    }

    /// Negotiated protocol version (0 before Welcome).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Features both sides support (empty before Welcome).
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// True if live copies may be sent now: established (not draining) with
    /// [`Capabilities::LIVE`] negotiated.
    pub fn live_enabled(&self) -> bool {
        self.state == State::Established && self.capabilities.contains(Capabilities::LIVE)
    }

    /// True if spool reports ([`Message::Status`]) go out with heartbeats:
    /// [`Capabilities::STATUS`] negotiated (an older aggregator never gets one).
    pub fn status_enabled(&self) -> bool {
        matches!(self.state, State::Established | State::Draining)
            && self.capabilities.contains(Capabilities::STATUS)
    }

    /// Tells the session what the spool holds unacknowledged now; the next
    /// heartbeat carries it as a [`Message::Status`] if
    /// [`AgentSession::status_enabled`]. Call it whenever the spool changes (or
    /// simply before [`AgentSession::handle_timeout`]); until it is called no
    /// report is sent, so the aggregator never sees numbers nobody measured.
    pub fn set_spool(&mut self, backlog: SpoolBacklog) {
        self.spool = Some(backlog);
    }

    /// Credit left to spend.
    pub fn credit(&self) -> Credit {
        self.credit
    }

    /// Batches sent and not yet acknowledged, ascending by (epoch, seq).
    pub fn in_flight(&self) -> impl Iterator<Item = (Epoch, Seq)> + '_ {
        self.in_flight.keys().copied()
    }

    /// True if (epoch, seq) is in flight on this session.
    pub fn is_in_flight(&self, epoch: Epoch, seq: Seq) -> bool {
        self.in_flight.contains_key(&(epoch, seq))
    }

    /// Adds a sensor definition to carry; each lane gets it before its next batch.
    /// A second Define for the same id is ignored (ids never change meaning).
    pub fn define(&mut self, d: Define) {
        if self.define_ids.insert(d.sensor) {
            self.defines.push(d);
        }
    }

    /// Number of sensor definitions the session carries.
    pub fn defined_count(&self) -> usize {
        self.defines.len()
    }

    /// True if a batch costing `cost` ([`crate::batch_cost`]) fits the credit now.
    ///
    /// With pacing on, also only while fewer batches are in flight than the
    /// pacing allows (never fewer than one: an agent always progresses).
    pub fn can_send(&self, cost: u64) -> bool {
        self.state == State::Established
            && self.credit.batches >= 1
            && self.credit.bytes >= cost
            && self.pacing.as_ref().is_none_or(|p| {
                u64::try_from(self.in_flight.len()).unwrap_or(u64::MAX)
                    < u64::from(p.window().batches)
            })
    }

    /// The transport's current estimate of the path's round trip (QUIC's
    /// smoothed RTT), for the pacing: the part of an Ack's latency that is
    /// the path, not a queue (see [`AgentConfig::pacing`]). The driver gives
    /// it before handing the session what it received.
    pub fn set_path_rtt(&mut self, rtt: Duration) {
        self.path_rtt = rtt;
    }

    /// How many batches the pacing lets be in flight now (`None`: pacing off).
    pub fn pacing_window(&self) -> Option<u32> {
        self.pacing.as_ref().map(|p| p.window().batches)
    }

    /// Records that the driver sends batch (epoch, seq), costing `cost`, on `lane`,
    /// spending credit. Returns the Defines the driver must write on that lane
    /// first (those it has not carried yet), then the batch's frame.
    pub fn on_send(
        &mut self,
        lane: usize,
        epoch: Epoch,
        seq: Seq,
        cost: u64,
        now: Instant,
    ) -> Result<Vec<Define>, SendError> {
        match self.state {
            State::AwaitWelcome | State::Closed => return Err(SendError::NotEstablished),
            State::Draining => return Err(SendError::Draining),
            State::Established => {}
        }
        if self.in_flight.contains_key(&(epoch, seq)) {
            return Err(SendError::AlreadyInFlight);
        }
        if self.settled.get(&epoch).is_some_and(|s| s.contains(seq)) {
            return Err(SendError::AlreadySettled);
        }
        if !self.can_send(cost) {
            return Err(SendError::NoCredit);
        }
        self.credit.bytes -= cost;
        self.credit.batches -= 1;
        if self.in_flight.is_empty() && !self.blocked {
            self.progress_at = Some(now);
        }
        self.in_flight.insert((epoch, seq), (cost, now));
        Ok(self.lane_defines(lane))
    }

    /// Records that the driver sends a live copy ([`Message::Live`]) of batch
    /// (epoch, seq) on `lane`, which must not be the lane of the durable sends
    /// (lanes are ordered, and the copy must not wait behind the backlog).
    /// Returns the Defines the driver must write on that lane first, then the
    /// copy's frame ([`crate::batch_frame_to_live`] of the spooled one).
    ///
    /// Spends no credit and tracks nothing: the copy is for the real-time path
    /// only, never acknowledged, and the batch itself still goes through
    /// [`AgentSession::on_send`]. A batch in flight or settled is not copied: the
    /// aggregator has it already.
    ///
    /// The driver sends copies best-effort: the caller decides to send before
    /// calling this (the lane has room for the whole frame now), because the
    /// Defines returned count as carried.
    pub fn on_send_live(
        &mut self,
        lane: usize,
        epoch: Epoch,
        seq: Seq,
    ) -> Result<Vec<Define>, SendError> {
        match self.state {
            State::AwaitWelcome | State::Closed => return Err(SendError::NotEstablished),
            State::Draining => return Err(SendError::Draining),
            State::Established => {}
        }
        if !self.capabilities.contains(Capabilities::LIVE) {
            return Err(SendError::LiveNotNegotiated);
        }
        if self.in_flight.contains_key(&(epoch, seq)) {
            return Err(SendError::AlreadyInFlight);
        }
        if self.settled.get(&epoch).is_some_and(|s| s.contains(seq)) {
            return Err(SendError::AlreadySettled);
        }
        Ok(self.lane_defines(lane))
    }

    /// The Defines `lane` has not carried yet, now counted as carried.
    fn lane_defines(&mut self, lane: usize) -> Vec<Define> {
        if self.lanes.len() <= lane {
            self.lanes.resize(lane + 1, 0);
        }
        let from = self.lanes[lane].min(self.defines.len());
        self.lanes[lane] = self.defines.len();
        self.defines[from..].to_vec()
    }

    /// Tells the session whether the driver holds a batch ready to send that the
    /// credit does not cover: waiting for credit counts as work outstanding, so a
    /// session that never grants more is noticed as stuck.
    pub fn set_blocked(&mut self, blocked: bool, now: Instant) {
        if blocked && !self.blocked && self.in_flight.is_empty() {
            self.progress_at = Some(now);
        }
        self.blocked = blocked;
        if !blocked && self.in_flight.is_empty() {
            self.progress_at = None;
        }
    }

    /// Handles a message from the aggregator received at `now`. On error the
    /// session is closed and an Error message is queued for the peer (except when
    /// the peer itself sent the error).
    pub fn handle(&mut self, msg: Message, now: Now) -> Result<(), SessionError> {
        let res = self.handle_inner(msg, now);
        if let Err(e) = &res {
            self.close_with(e);
        }
        res
    }

    fn close_with(&mut self, e: &SessionError) {
        if !matches!(e, SessionError::Peer(_) | SessionError::Closed) && self.state != State::Closed
        {
            self.transmit.push_back(Message::Error(e.to_message()));
        }
        self.state = State::Closed;
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::AwaitWelcome => "awaiting welcome",
            State::Established => "established",
            State::Draining => "draining",
            State::Closed => "closed",
        }
    }

    fn progress(&mut self, now: Instant) {
        if self.progress_at.is_some() {
            self.progress_at = Some(now);
        }
    }

    fn handle_inner(&mut self, msg: Message, now: Now) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        self.last_rx = self.last_rx.max(now.mono);
        match (self.state, msg) {
            (_, Message::Error(e)) => Err(SessionError::Peer(e)),
            (State::AwaitWelcome, Message::Welcome(w)) => {
                let v = negotiate(
                    w.version,
                    w.version,
                    self.cfg.min_version,
                    self.cfg.max_version,
                )?;
                self.version = v;
                // Only what we offered counts, whatever the aggregator says.
                self.capabilities = w.capabilities.intersect(self.cfg.capabilities);
                self.limits = Some(w.limits);
                self.credit = w.credit;
                self.state = State::Established;
                self.handshake_deadline = None;
                if w.limits.heartbeat_interval_ms > 0 {
                    self.heartbeat =
                        Duration::from_millis(u64::from(w.limits.heartbeat_interval_ms.max(100)));
                }
                self.next_heartbeat = Some(now.mono + self.heartbeat);
                self.events.push_back(AgentEvent::Established {
                    version: v,
                    limits: w.limits,
                    server: w.server,
                });
                Ok(())
            }
            (State::Established | State::Draining, Message::Credit(c)) => {
                self.credit.bytes = self.credit.bytes.saturating_add(c.bytes);
                self.credit.batches = self.credit.batches.saturating_add(c.batches);
                self.progress(now.mono);
                Ok(())
            }
            (State::Established | State::Draining, Message::Ack(a)) => {
                self.on_ack(a, now);
                Ok(())
            }
            (State::Established | State::Draining, Message::Heartbeat(hb)) => {
                if let Some(s) = clock::sample(&hb, now.wall_ns) {
                    self.events.push_back(AgentEvent::Clock(s));
                }
                Ok(())
            }
            (State::Established | State::Draining, Message::GoAway(g)) => {
                self.state = State::Draining;
                self.events.push_back(AgentEvent::GoAway(g));
                Ok(())
            }
            (_, other) => Err(SessionError::Unexpected {
                message: other.kind(),
                state: self.state_name(),
            }),
        }
    }

    fn on_ack(&mut self, a: Ack, at: Now) {
        let now = at.mono;
        let epoch = a.epoch;
        let mut settled = Vec::new();
        if let Some(t) = a.through {
            settled.extend(
                self.in_flight
                    .range((epoch, Seq(0))..=(epoch, t))
                    .map(|((_, s), _)| *s),
            );
        }
        for r in &a.ranges {
            if r.first <= r.last {
                settled.extend(
                    self.in_flight
                        .range((epoch, r.first)..=(epoch, r.last))
                        .map(|((_, s), _)| *s),
                );
            }
        }
        settled.sort_unstable();
        settled.dedup();
        if settled.is_empty() {
            return;
        }
        let book = self.settled.entry(epoch).or_default();
        if let Some(p) = self.pacing.as_mut() {
            let mark = at.wall_ns.div_euclid(PROBE_PERIOD_NS);
            if self.probe_mark.is_some_and(|m| m != mark) {
                p.probe_base(now);
            }
            self.probe_mark = Some(mark);
        }
        // A refusal is answered without a commit: its time says nothing of the queue.
        let committed = matches!(a.outcome, Outcome::Committed);
        let mut latencies = Vec::new();
        for s in &settled {
            if let Some((_, sent)) = self.in_flight.remove(&(epoch, *s)) {
                let latency = now.saturating_duration_since(sent);
                if committed {
                    latencies.push((*s, latency));
                }
                // An Ack quicker than the smoothed round trip (which lags a
                // path that got faster) says nothing of the queue, and a
                // zero would stick as the base for two probe periods.
                let rtt = self.path_rtt.min(super::window::MAX_LOOP_RTT);
                if let Some(p) = self.pacing.as_mut().filter(|_| committed && latency > rtt) {
                    p.on_commit(now, latency - rtt, rtt);
                }
            }
            book.insert(*s);
        }
        book.forget_oldest(MAX_SETTLED_RANGES);
        if self.in_flight.is_empty() && !self.blocked {
            self.progress_at = None;
        } else {
            self.progress(now);
        }
        self.events.push_back(match a.outcome {
            Outcome::Committed => AgentEvent::Acked {
                epoch,
                seqs: settled,
                latencies,
            },
            Outcome::Rejected(reason) => AgentEvent::Rejected {
                epoch,
                seqs: settled,
                reason,
            },
        });
    }

    fn peer_timeout(&self) -> Duration {
        self.cfg.peer_timeout.max(self.heartbeat * 3)
    }

    /// When [`AgentSession::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::AwaitWelcome => self.handshake_deadline,
            State::Established | State::Draining => earliest([
                self.next_heartbeat,
                Some(self.last_rx + self.peer_timeout()),
                self.progress_at.map(|t| t + self.cfg.stall_timeout),
            ]),
        }
    }

    /// Runs the timers due at `now`: queues a heartbeat when one is due; a missed
    /// deadline closes the session (with an Error queued for the aggregator).
    pub fn handle_timeout(&mut self, now: Now) -> Result<(), SessionError> {
        let res = self.timeout_inner(now);
        if let Err(e) = &res {
            self.close_with(e);
        }
        res
    }

    fn timeout_inner(&mut self, now: Now) -> Result<(), SessionError> {
        let t = now.mono;
        match self.state {
            State::Closed => Ok(()),
            State::AwaitWelcome => {
                if self.handshake_deadline.is_some_and(|d| t >= d) {
                    return Err(SessionError::Timeout {
                        kind: TimeoutKind::Handshake,
                        detail: format!("no Welcome within {:?}", self.cfg.handshake_timeout),
                    });
                }
                Ok(())
            }
            State::Established | State::Draining => {
                if t >= self.last_rx + self.peer_timeout() {
                    return Err(SessionError::Timeout {
                        kind: TimeoutKind::PeerSilent,
                        detail: format!(
                            "nothing from the aggregator for {:?}",
                            t.saturating_duration_since(self.last_rx)
                        ),
                    });
                }
                if let Some(p) = self.progress_at {
                    if t >= p + self.cfg.stall_timeout {
                        return Err(SessionError::Timeout {
                            kind: TimeoutKind::Stalled,
                            detail: format!(
                                "{} batches in flight{}, no Ack or Credit for {:?}",
                                self.in_flight.len(),
                                if self.blocked {
                                    " and more waiting for credit"
                                } else {
                                    ""
                                },
                                t.saturating_duration_since(p)
                            ),
                        });
                    }
                }
                if let Some(h) = self.next_heartbeat {
                    if t >= h {
                        self.transmit.push_back(Message::Heartbeat(Heartbeat {
                            origin_ns: now.wall_ns,
                            receive_ns: 0,
                            transmit_ns: 0,
                        }));
                        if let Some(b) = self.spool.filter(|_| self.status_enabled()) {
                            self.transmit
                                .push_back(Message::Status(b.status_at(now.wall_ns)));
                        }
                        // From now, not from h: a driver that was late does not
                        // send a burst to catch up.
                        self.next_heartbeat = Some(t + self.heartbeat);
                    }
                }
                Ok(())
            }
        }
    }

    /// The next message to send on the control stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// The next event for the driver, if any.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }
}
