//! The aggregator's side of a session.
//!
//! Invariants:
//! - The agent's identity is what the TLS layer verified ([`PeerIdentity`]); a
//!   Hello or Define claiming otherwise ends the session.
//! - Every batch is charged [`batch_cost`] (its frame bytes or its decoded size,
//!   whichever is more) and one batch of credit; a batch beyond the granted credit
//!   ends the session. So what an agent can make us hold is bounded by the window
//!   we granted it, whatever its frames decode to.
//! - Every batch that spent credit gives it back once its fate is known
//!   (committed, refused, a duplicate), and the session grants it again at once
//!   unless the sink is under pressure ([`IngestSession::set_sink_pressure`]): then
//!   it is owed and paid when the pressure is gone. Nothing is granted while
//!   draining. So no sequence of rejects or duplicates can leave an agent without
//!   credit while the sink is fine.
//! - The window can be resized while the session runs
//!   ([`IngestSession::set_window`], from a [`super::WindowController`]): what
//!   the session grants keeps the credit the agent holds plus the batches at the
//!   sink within the window. A smaller window is reached by granting less of
//!   what batches return (never by taking credit back), a larger one by granting
//!   more. It is never less than one batch of a full frame, so an agent always
//!   has room for its next batch once the sink has answered.
//! - A batch is acknowledged as committed only after the driver reports it durable
//!   ([`IngestSession::committed`]); a batch pending or settled in this session is
//!   never handed to the sink twice.
//! - One session carries batches of any of the agent's epochs: each has its own
//!   settled set, and Acks name one epoch each.
//! - Live copies ([`Message::Live`], only with [`Capabilities::LIVE`]) are checked
//!   like batches (defined sensors; their size by the decoder) and handed to the
//!   driver for the real-time path only ([`IngestEvent::Live`]): no commit, no
//!   Ack, no credit spent or returned, no state kept, so they can never starve the
//!   durable lane of credit. What they may make the driver do is bounded by a
//!   token bucket of `live_max_bytes_per_sec` in [`batch_cost`] units (a burst of
//!   one second's worth); beyond it, and for a batch already pending or settled
//!   here (its durable copy arrived first), they are refused
//!   ([`IngestEvent::LiveRefused`]), counted, never fatal.
//! - Status reports ([`Message::Status`], only with [`Capabilities::STATUS`])
//!   are accepted once established and handed to the driver as they are
//!   ([`IngestEvent::Status`]): they change no session state. Before Hello, or
//!   on a session that did not negotiate the bit, one is an unexpected message
//!   and ends the session, like any message out of place.
//! - Memory is bounded: pending commits by the credit, settled ranges per epoch by
//!   `max_seq_ranges`, epochs by `max_epochs` (plus those owed an Ack), sensors by
//!   the announced `max_sensors`.
//! - Deadlines ([`IngestSession::poll_timeout`]): Hello within `hello_timeout`;
//!   then something from the agent at least every `peer_timeout` (it heartbeats);
//!   and while batches are at the sink, one settles at least every
//!   `stall_timeout`. A missed deadline closes the session with
//!   [`SessionError::Timeout`].

use super::{earliest, negotiate, Now, SessionError, TimeoutKind};
use crate::frame::batch_cost;
use crate::ids::{Epoch, SensorId, Seq};
use crate::message::*;
use crate::seqset::SeqSet;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The identity the TLS layer verified from the agent's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// Site named by the certificate.
    pub site: String,
    /// Agent id named by the certificate.
    pub agent: String,
}

/// What the aggregator offers every session, and the deadlines it keeps.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Name announced in Welcome.
    pub server: String,
    /// Oldest protocol version accepted.
    pub min_version: u16,
    /// Newest protocol version accepted.
    pub max_version: u16,
    /// Features offered.
    pub capabilities: Capabilities,
    /// Limits announced and enforced (the heartbeat interval asked of agents
    /// among them).
    pub limits: ServerLimits,
    /// The window: credit granted with Welcome, and the most an agent can have
    /// outstanding (bytes in [`batch_cost`] units), until the driver resizes it
    /// with [`IngestSession::set_window`].
    pub initial_credit: Credit,
    /// Hello must arrive within this of the session's start.
    pub hello_timeout: Duration,
    /// Close a session whose agent has sent nothing for this long.
    pub peer_timeout: Duration,
    /// Close a session whose batches at the sink have not moved for this long.
    pub stall_timeout: Duration,
    /// After a GoAway, once nothing is pending, wait this long for the agent to
    /// leave before closing.
    pub drain_grace: Duration,
    /// Epochs whose settled sets are kept at once; the least recently used beyond
    /// this is forgotten (a forgotten batch resent is caught by the sink's ledger).
    pub max_epochs: usize,
    /// Ranges kept per epoch's settled set; the lowest beyond this are forgotten.
    pub max_seq_ranges: usize,
    /// Live copies accepted per session, in [`batch_cost`] bytes per second
    /// (with a burst of one second's worth); beyond it they are refused. Zero
    /// turns them off: [`Capabilities::LIVE`] is not offered.
    pub live_max_bytes_per_sec: u64,
}

impl IngestConfig {
    /// A configuration with the given name, limits and window, and default
    /// deadlines and bounds: Hello within 10 s, agent silence up to 10 s, stalls
    /// up to 60 s, 5 s drain grace, 16 epochs, 1024 ranges per epoch, live copies
    /// up to 4 MiB a second.
    pub fn new(server: impl Into<String>, limits: ServerLimits, initial_credit: Credit) -> Self {
        Self {
            server: server.into(),
            min_version: crate::MIN_PROTOCOL_VERSION,
            max_version: crate::PROTOCOL_VERSION,
            capabilities: Capabilities::ALL,
            limits,
            initial_credit,
            hello_timeout: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            drain_grace: Duration::from_secs(5),
            max_epochs: 16,
            max_seq_ranges: 1024,
            live_max_bytes_per_sec: 4 << 20,
        }
    }
}

/// Something the aggregator's driver must act on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum IngestEvent {
    /// The session is up.
    Established {
        /// The epoch of the agent's oldest unacknowledged batch.
        epoch: Epoch,
        /// Negotiated version.
        version: u16,
        /// The agent's oldest unacknowledged seq in that epoch.
        resume_from: Seq,
        /// The agent's software version.
        software: String,
    },
    /// A sensor was defined.
    Defined(Define),
    /// A Define beyond the session's sensor limit was refused (not fatal: batches
    /// naming that sensor are refused as unknown, counted by the agent).
    DefineRefused {
        /// The refused definition.
        define: Define,
        /// The limit it exceeded.
        limit: u32,
    },
    /// A new batch to commit; report its fate with `committed`, `rejected` or
    /// `sink_failed`.
    Commit {
        /// The batch.
        batch: Batch,
        /// Its frame size.
        frame_bytes: u64,
    },
    /// A batch seen before in this session (a retransmit); not committed again,
    /// its credit already returned.
    Duplicate {
        /// Its epoch.
        epoch: Epoch,
        /// Its seq.
        seq: Seq,
    },
    /// A batch refused without reaching the sink; its credit already returned.
    Rejected {
        /// Its epoch.
        epoch: Epoch,
        /// Its seq.
        seq: Seq,
        /// Why.
        reason: RejectReason,
    },
    /// Credit a settled batch returned is held back: the sink is under pressure.
    CreditWithheld {
        /// All that is owed to the agent now.
        owed: Credit,
    },
    /// A live copy to publish to the real-time path only (never to the sink):
    /// nothing is owed for it, and the batch itself arrives later to commit.
    Live {
        /// The batch.
        batch: Batch,
        /// Its frame size.
        frame_bytes: u64,
    },
    /// A live copy refused (nothing to send the agent: live copies are never
    /// acknowledged).
    LiveRefused {
        /// Its epoch.
        epoch: Epoch,
        /// Its seq.
        seq: Seq,
        /// Why.
        reason: LiveRefusal,
    },
    /// The agent reported its spool backlog (only with
    /// [`Capabilities::STATUS`]): for display; nothing is owed for it.
    Status(Status),
}

/// Why a live copy was not handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LiveRefusal {
    /// The batch itself is pending or settled in this session already: the
    /// real-time path has it, or has it on its way.
    Stale,
    /// It names a sensor this session has not defined.
    UnknownSensor,
    /// The session's live budget (`live_max_bytes_per_sec`) is spent.
    OverBudget,
}

impl LiveRefusal {
    /// Every reason, for publishing counters at zero.
    pub const ALL: [LiveRefusal; 3] = [Self::Stale, Self::UnknownSensor, Self::OverBudget];

    /// A short name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stale => "stale",
            Self::UnknownSensor => "unknown_sensor",
            Self::OverBudget => "over_budget",
        }
    }
}

/// A token bucket in [`batch_cost`] bytes, refilled at `rate` a second up to
/// one second's worth; time comes from the caller.
#[derive(Debug)]
struct LiveBudget {
    rate: u64,
    tokens: u64,
    at: Option<Instant>,
}

impl LiveBudget {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            tokens: rate,
            at: None,
        }
    }

    /// Takes `cost` if the bucket holds it at `now`.
    fn take(&mut self, cost: u64, now: Instant) -> bool {
        if let Some(at) = self.at {
            let dt = now.saturating_duration_since(at);
            let add =
                (u128::from(self.rate) * dt.as_nanos() / 1_000_000_000).min(u128::from(self.rate));
            // add <= rate, a u64.
            self.tokens = self.tokens.saturating_add(add as u64).min(self.rate);
        }
        self.at = Some(now);
        if cost <= self.tokens {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    Established,
    Draining,
    Closed,
}

/// What one epoch's batches came to in this session.
#[derive(Debug, Default)]
struct EpochBook {
    /// Committed or refused; the floor is what Acks report cumulatively.
    settled: SeqSet,
    /// Committed since the last Ack went out (or resent and to be acknowledged again).
    unacked: SeqSet,
    ack_due: bool,
    /// Refused since the last refusal Ack, by reason.
    rejects: Vec<(Seq, RejectReason)>,
    /// Every refused seq (also in `settled`), by reason: a refused batch sent
    /// again is refused again, never acknowledged as committed.
    refused: Vec<(RejectReason, SeqSet)>,
    /// For least-recently-used eviction.
    used: u64,
}

impl EpochBook {
    fn owes_messages(&self) -> bool {
        self.ack_due || !self.rejects.is_empty()
    }
}

/// The aggregator's side of one session.
#[derive(Debug)]
pub struct IngestSession {
    cfg: IngestConfig,
    peer: PeerIdentity,
    state: State,
    epoch: Epoch,
    /// What both sides support (from Hello; empty before).
    capabilities: Capabilities,
    live_budget: LiveBudget,
    sensors: HashMap<SensorId, Define>,
    /// Credit granted in total and spent in total (cost bytes, batches).
    granted: (u64, u64),
    spent: (u64, u64),
    /// Most credit the agent may hold plus what is at the sink. What it holds,
    /// what is pending and what it is owed add up to this.
    window: Credit,
    /// Cost of the pending batches, summed.
    pending_cost: u64,
    pressure: bool,
    books: HashMap<Epoch, EpochBook>,
    use_tick: u64,
    /// Handed to the sink, fate not yet known, with the cost each spent and
    /// when it arrived.
    pending: BTreeMap<(Epoch, Seq), (u64, Instant)>,
    last_clock_offset_ns: Option<i64>,
    hello_deadline: Option<Instant>,
    last_rx: Instant,
    /// While batches are pending: when one last settled (or the first went in).
    progress_at: Option<Instant>,
    drain_until: Option<Instant>,
    finished: bool,
    transmit: VecDeque<Message>,
    events: VecDeque<IngestEvent>,
}

impl IngestSession {
    /// A session for a peer whose certificate names `peer`, starting at `now`.
    pub fn new(cfg: IngestConfig, peer: PeerIdentity, now: Instant) -> Self {
        let hello_deadline = Some(now + cfg.hello_timeout);
        let window = cfg.initial_credit;
        let live_budget = LiveBudget::new(cfg.live_max_bytes_per_sec);
        Self {
            cfg,
            peer,
            state: State::AwaitHello,
            epoch: Epoch(0),
            capabilities: Capabilities::default(),
            live_budget,
            sensors: HashMap::new(),
            granted: (0, 0),
            spent: (0, 0),
            window,
            pending_cost: 0,
            pressure: false,
            books: HashMap::new(),
            use_tick: 0,
            pending: BTreeMap::new(),
            last_clock_offset_ns: None,
            hello_deadline,
            last_rx: now,
            progress_at: None,
            drain_until: None,
            finished: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The verified peer.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The epoch the agent's Hello named, once established.
    pub fn epoch(&self) -> Option<Epoch> {
        (self.state != State::AwaitHello).then_some(self.epoch)
    }

    /// True between Welcome and close, draining included.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established | State::Draining)
    }

    /// True once the session is over: closed by an error, or drained and its
    /// grace period passed. The driver closes the connection.
    pub fn is_finished(&self) -> bool {
        self.finished || self.state == State::Closed
    }

    /// Features both sides support (empty before Hello).
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// The defined sensor behind an id.
    pub fn sensor(&self, id: SensorId) -> Option<&Define> {
        self.sensors.get(&id)
    }

    /// Credit granted and not yet spent: what the agent may still send.
    pub fn outstanding_credit(&self) -> Credit {
        Credit {
            bytes: self.granted.0 - self.spent.0,
            batches: u32::try_from(self.granted.1 - self.spent.1).unwrap_or(u32::MAX),
        }
    }

    /// Credit returned by settled batches and held back (sink under pressure),
    /// or not yet sent: the window less what the agent holds and what is at
    /// the sink. Zero while those exceed a window that shrank.
    pub fn owed_credit(&self) -> Credit {
        if self.state == State::AwaitHello {
            return Credit::default();
        }
        let held_bytes = (self.granted.0 - self.spent.0).saturating_add(self.pending_cost);
        let held_batches =
            (self.granted.1 - self.spent.1).saturating_add(self.pending.len() as u64);
        Credit {
            bytes: self.window.bytes.saturating_sub(held_bytes),
            batches: u32::try_from(u64::from(self.window.batches).saturating_sub(held_batches))
                .unwrap_or(u32::MAX),
        }
    }

    /// The window this session grants up to now.
    pub fn window(&self) -> Credit {
        self.window
    }

    /// Resizes the window (see the module's invariants). Raised to one batch
    /// of `max_frame_bytes` if lower (or to the configured window, if that is
    /// smaller): an agent must always have room for a whole batch, or it could
    /// hold credit it can never spend.
    pub fn set_window(&mut self, window: Credit) {
        let floor_bytes = u64::from(self.cfg.limits.max_frame_bytes)
            .min(self.cfg.initial_credit.bytes)
            .max(1);
        self.window = Credit {
            bytes: window.bytes.max(floor_bytes),
            batches: window.batches.max(1),
        };
    }

    /// Batches handed to the sink whose fate is not known yet.
    pub fn pending_commits(&self) -> usize {
        self.pending.len()
    }

    /// Ranges the session keeps in its settled and unacknowledged sets, over all
    /// epochs: bounded by `max_epochs` x `max_seq_ranges` x 2 whatever the agent
    /// sends.
    pub fn tracked_ranges(&self) -> usize {
        self.books
            .values()
            .map(|b| {
                b.settled.range_count()
                    + b.unacked.range_count()
                    + b.refused
                        .iter()
                        .map(|(_, s)| s.range_count())
                        .sum::<usize>()
                    + 1
            })
            .sum()
    }

    /// The agent's last reported clock offset (aggregator - agent), nanoseconds.
    pub fn clock_offset_ns(&self) -> Option<i64> {
        self.last_clock_offset_ns
    }

    /// Tells the session whether the sink is under pressure. While it is, credit
    /// returned by settled batches is owed instead of granted; when it clears,
    /// everything owed is granted. A session that says Hello under pressure is
    /// welcomed with no credit and owed its window.
    pub fn set_sink_pressure(&mut self, pressure: bool) {
        self.pressure = pressure;
    }

    /// Handles a message received at `now` in a frame of `frame_bytes`. On error the
    /// session is closed and an Error is queued for the peer; send it, then close
    /// the connection.
    pub fn handle(&mut self, msg: Message, frame_bytes: u64, now: Now) -> Result<(), SessionError> {
        let res = self.handle_inner(msg, frame_bytes, now);
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
            State::AwaitHello => "awaiting hello",
            State::Established => "established",
            State::Draining => "draining",
            State::Closed => "closed",
        }
    }

    fn handle_inner(
        &mut self,
        msg: Message,
        frame_bytes: u64,
        now: Now,
    ) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        self.last_rx = self.last_rx.max(now.mono);
        match (self.state, msg) {
            (_, Message::Error(e)) => Err(SessionError::Peer(e)),
            (State::AwaitHello, Message::Hello(h)) => self.on_hello(h),
            (State::Established | State::Draining, Message::Define(d)) => self.on_define(d),
            (State::Established | State::Draining, Message::Batch(b)) => {
                self.on_batch(b, frame_bytes, now.mono)
            }
            (State::Established | State::Draining, Message::Live(b))
                if self.capabilities.contains(Capabilities::LIVE) =>
            {
                self.on_live(b, frame_bytes, now.mono);
                Ok(())
            }
            (State::Established | State::Draining, Message::Status(st))
                if self.capabilities.contains(Capabilities::STATUS) =>
            {
                self.events.push_back(IngestEvent::Status(st));
                Ok(())
            }
            (State::Established | State::Draining, Message::Heartbeat(hb)) => {
                self.transmit.push_back(Message::Heartbeat(Heartbeat {
                    origin_ns: hb.origin_ns,
                    receive_ns: now.wall_ns,
                    transmit_ns: now.wall_ns,
                }));
                Ok(())
            }
            (_, other) => Err(SessionError::Unexpected {
                message: other.kind(),
                state: self.state_name(),
            }),
        }
    }

    fn on_hello(&mut self, h: Hello) -> Result<(), SessionError> {
        if h.site != self.peer.site || h.agent != self.peer.agent {
            return Err(SessionError::IdentityMismatch(format!(
                "hello claims site {:?} agent {:?}, certificate names site {:?} agent {:?}",
                h.site, h.agent, self.peer.site, self.peer.agent
            )));
        }
        let version = negotiate(
            h.min_version,
            h.max_version,
            self.cfg.min_version,
            self.cfg.max_version,
        )?;
        self.epoch = h.epoch;
        // Everything below resume_from in that epoch was settled in an earlier session.
        let book = self.book(h.epoch);
        book.settled = SeqSet::with_floor(h.resume_from.0.checked_sub(1).map(Seq));
        self.state = State::Established;
        self.hello_deadline = None;
        let window = self.window;
        let credit = if self.pressure {
            // Owed, and paid once the sink can take it: a new session must not add
            // to a backlog the sink cannot absorb.
            self.events
                .push_back(IngestEvent::CreditWithheld { owed: window });
            Credit::default()
        } else {
            window
        };
        self.granted = (credit.bytes, u64::from(credit.batches));
        let mut offered = self.cfg.capabilities;
        if self.cfg.live_max_bytes_per_sec == 0 {
            offered = offered.without(Capabilities::LIVE);
        }
        self.capabilities = offered.intersect(h.capabilities);
        self.transmit.push_back(Message::Welcome(Welcome {
            version,
            capabilities: self.capabilities,
            limits: self.cfg.limits,
            credit,
            server: self.cfg.server.clone(),
        }));
        self.events.push_back(IngestEvent::Established {
            epoch: h.epoch,
            version,
            resume_from: h.resume_from,
            software: h.software,
        });
        Ok(())
    }

    fn on_define(&mut self, d: Define) -> Result<(), SessionError> {
        // A name may pin a site explicitly as `site/<SITE>/...`; it must be the peer's.
        if let Some(rest) = d.name.as_str().strip_prefix("site/") {
            let site = rest.split('/').next().unwrap_or_default();
            if site != self.peer.site {
                return Err(SessionError::IdentityMismatch(format!(
                    "sensor {} claims site {site:?}, certificate names site {:?}",
                    d.name, self.peer.site
                )));
            }
        }
        if d.unit.len() > MAX_UNIT_BYTES || !d.unit.chars().all(|c| c.is_ascii_graphic()) {
            return Err(SessionError::BadDefine(format!(
                "unit {:?} for sensor {}",
                d.unit, d.name
            )));
        }
        if let Some(old) = self.sensors.get(&d.sensor) {
            if *old != d {
                return Err(SessionError::BadDefine(format!(
                    "sensor id {} redefined from {} to {}",
                    d.sensor, old.name, d.name
                )));
            }
            return Ok(());
        }
        let limit = self.cfg.limits.max_sensors;
        if self.sensors.len() >= limit as usize {
            // Not fatal: ending the session would end it again on every reconnect.
            self.events
                .push_back(IngestEvent::DefineRefused { define: d, limit });
            return Ok(());
        }
        self.sensors.insert(d.sensor, d.clone());
        self.events.push_back(IngestEvent::Defined(d));
        Ok(())
    }

    fn book(&mut self, epoch: Epoch) -> &mut EpochBook {
        self.use_tick += 1;
        let tick = self.use_tick;
        if !self.books.contains_key(&epoch) && self.books.len() >= self.cfg.max_epochs {
            // Forget the least recently used epoch that owes no message.
            let victim = self
                .books
                .iter()
                .filter(|(_, b)| !b.owes_messages())
                .min_by_key(|(_, b)| b.used)
                .map(|(e, _)| *e);
            if let Some(v) = victim {
                self.books.remove(&v);
            }
        }
        let book = self.books.entry(epoch).or_default();
        book.used = tick;
        book
    }

    fn on_batch(&mut self, b: Batch, frame_bytes: u64, now: Instant) -> Result<(), SessionError> {
        // Credit first: a retransmit spends credit on the agent's side too.
        let cost = batch_cost(frame_bytes, b.sample_count() as u64);
        if self.spent.0 + cost > self.granted.0 || self.spent.1 + 1 > self.granted.1 {
            return Err(SessionError::CreditExceeded {
                detail: format!(
                    "batch {}/{} costing {cost} with {} and {} batches left",
                    b.epoch,
                    b.seq,
                    self.granted.0 - self.spent.0,
                    self.granted.1 - self.spent.1
                ),
            });
        }
        self.spent.0 += cost;
        self.spent.1 += 1;
        let (epoch, seq) = (b.epoch, b.seq);
        if self.pending.contains_key(&(epoch, seq)) {
            self.events.push_back(IngestEvent::Duplicate { epoch, seq });
            self.give_back();
            return Ok(());
        }
        let max_ranges = self.cfg.max_seq_ranges;
        let book = self.book(epoch);
        if let Some(reason) = book
            .refused
            .iter()
            .find(|(_, set)| set.contains(seq))
            .map(|(r, _)| *r)
        {
            // Refused before: refused again (the refusal Ack goes out first, so a
            // later cumulative Ack cannot settle it as committed).
            book.rejects.push((seq, reason));
            self.events
                .push_back(IngestEvent::Rejected { epoch, seq, reason });
            self.give_back();
            return Ok(());
        }
        if book.settled.contains(seq) {
            // Already durable: say so again so the agent can let go.
            book.unacked.insert(seq);
            book.unacked.forget_oldest(max_ranges);
            book.ack_due = true;
            self.events.push_back(IngestEvent::Duplicate { epoch, seq });
            self.give_back();
            return Ok(());
        }
        if b.series
            .iter()
            .any(|s| !self.sensors.contains_key(&s.sensor()))
        {
            self.settle_rejected(epoch, seq, RejectReason::UNKNOWN_SENSOR);
            self.events.push_back(IngestEvent::Rejected {
                epoch,
                seq,
                reason: RejectReason::UNKNOWN_SENSOR,
            });
            self.give_back();
            return Ok(());
        }
        self.last_clock_offset_ns = Some(b.clock_offset_ns);
        if self.pending.is_empty() {
            self.progress_at = Some(now);
        }
        self.pending.insert((epoch, seq), (cost, now));
        self.pending_cost += cost;
        self.drain_until = None;
        self.events.push_back(IngestEvent::Commit {
            batch: b,
            frame_bytes,
        });
        Ok(())
    }

    fn on_live(&mut self, b: Batch, frame_bytes: u64, now: Instant) {
        let (epoch, seq) = (b.epoch, b.seq);
        let refuse = if self.pending.contains_key(&(epoch, seq))
            || self
                .books
                .get(&epoch)
                .is_some_and(|book| book.settled.contains(seq))
        {
            Some(LiveRefusal::Stale)
        } else if b
            .series
            .iter()
            .any(|s| !self.sensors.contains_key(&s.sensor()))
        {
            Some(LiveRefusal::UnknownSensor)
        } else if !self
            .live_budget
            .take(batch_cost(frame_bytes, b.sample_count() as u64), now)
        {
            Some(LiveRefusal::OverBudget)
        } else {
            None
        };
        self.events.push_back(match refuse {
            Some(reason) => IngestEvent::LiveRefused { epoch, seq, reason },
            None => IngestEvent::Live {
                batch: b,
                frame_bytes,
            },
        });
    }

    fn settle_rejected(&mut self, epoch: Epoch, seq: Seq, reason: RejectReason) {
        let max_ranges = self.cfg.max_seq_ranges;
        let book = self.book(epoch);
        book.settled.insert(seq);
        book.settled.forget_oldest(max_ranges);
        book.rejects.push((seq, reason));
        match book.refused.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, set)) => {
                set.insert(seq);
                set.forget_oldest(max_ranges);
            }
            None => {
                let mut set = SeqSet::new();
                set.insert(seq);
                book.refused.push((reason, set));
            }
        }
    }

    /// A settled batch's credit comes back (its cost is no longer spent nor
    /// pending, so the window has room for it): granted again at once, or owed
    /// while the sink is under pressure.
    fn give_back(&mut self) {
        if self.pressure && self.state == State::Established {
            self.events.push_back(IngestEvent::CreditWithheld {
                owed: self.owed_credit(),
            });
        }
    }

    /// Removes a pending batch; its cost and arrival, if it was pending.
    fn take_pending(&mut self, epoch: Epoch, seq: Seq, now: Instant) -> Option<(u64, Instant)> {
        let (cost, arrived) = self.pending.remove(&(epoch, seq))?;
        self.pending_cost -= cost;
        self.progress_at = (!self.pending.is_empty()).then_some(now);
        if self.state == State::Draining && self.pending.is_empty() {
            self.drain_until = Some(now + self.cfg.drain_grace);
        }
        Some((cost, arrived))
    }

    /// The sink made batch (epoch, seq) durable at `now`: it will be acknowledged,
    /// and its credit returned. Returns its commit latency (from its arrival in
    /// this session to now), what a [`super::WindowController`] sizes the window
    /// from; `None` if the batch was not pending.
    pub fn committed(&mut self, epoch: Epoch, seq: Seq, now: Instant) -> Option<Duration> {
        let (_, arrived) = self.take_pending(epoch, seq, now)?;
        let max_ranges = self.cfg.max_seq_ranges;
        let book = self.book(epoch);
        book.settled.insert(seq);
        book.settled.forget_oldest(max_ranges);
        book.unacked.insert(seq);
        book.unacked.forget_oldest(max_ranges);
        book.ack_due = true;
        self.give_back();
        Some(now.saturating_duration_since(arrived))
    }

    /// The sink refused batch (epoch, seq) for good at `now`: the agent will be
    /// told to drop it, and its credit is returned.
    pub fn rejected(&mut self, epoch: Epoch, seq: Seq, reason: RejectReason, now: Instant) {
        if self.take_pending(epoch, seq, now).is_some() {
            self.settle_rejected(epoch, seq, reason);
            self.give_back();
        }
    }

    /// The sink could not make a batch durable: the session ends (with an Error
    /// queued for the agent) so the agent resends it, here later or elsewhere.
    /// Returns the error to log and count.
    pub fn sink_failed(&mut self, why: impl Into<String>) -> SessionError {
        let e = SessionError::SinkFailed(why.into());
        self.close_with(&e);
        e
    }

    /// Asks the agent to drain and move (SIGTERM). No more credit is granted;
    /// batches already in flight are still committed and acknowledged; once none
    /// is pending, the agent has `drain_grace` to leave.
    pub fn go_away(&mut self, reason: GoAwayReason, alternate: Option<String>, now: Instant) {
        if self.state == State::Established {
            self.state = State::Draining;
            self.transmit
                .push_back(Message::GoAway(GoAway { reason, alternate }));
            if self.pending.is_empty() {
                self.drain_until = Some(now + self.cfg.drain_grace);
            }
        } else if self.state == State::AwaitHello {
            self.finished = true;
        }
    }

    /// When [`IngestSession::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::AwaitHello => self.hello_deadline,
            State::Established | State::Draining => earliest([
                Some(self.last_rx + self.cfg.peer_timeout),
                self.progress_at.map(|t| t + self.cfg.stall_timeout),
                self.drain_until,
            ]),
        }
    }

    /// Runs the timers due at `now`. A missed deadline closes the session with an
    /// Error queued for the agent; a drained session is then [`finished`](Self::is_finished).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        let res = self.timeout_inner(now);
        if let Err(e) = &res {
            self.close_with(e);
        }
        res
    }

    fn timeout_inner(&mut self, now: Instant) -> Result<(), SessionError> {
        match self.state {
            State::Closed => return Ok(()),
            State::AwaitHello => {
                if self.hello_deadline.is_some_and(|d| now >= d) {
                    return Err(SessionError::Timeout {
                        kind: TimeoutKind::Handshake,
                        detail: format!("no Hello within {:?}", self.cfg.hello_timeout),
                    });
                }
                return Ok(());
            }
            State::Established | State::Draining => {}
        }
        if now >= self.last_rx + self.cfg.peer_timeout {
            return Err(SessionError::Timeout {
                kind: TimeoutKind::PeerSilent,
                detail: format!(
                    "nothing from the agent for {:?}",
                    now.saturating_duration_since(self.last_rx)
                ),
            });
        }
        if let Some(t) = self.progress_at {
            if now >= t + self.cfg.stall_timeout {
                return Err(SessionError::Timeout {
                    kind: TimeoutKind::Stalled,
                    detail: format!(
                        "{} batches at the sink, none settled for {:?}",
                        self.pending.len(),
                        now.saturating_duration_since(t)
                    ),
                });
            }
        }
        if self.state == State::Draining {
            match self.drain_until {
                Some(d) if now >= d => self.finished = true,
                None if self.pending.is_empty() => {
                    self.drain_until = Some(now + self.cfg.drain_grace);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The next message to send: control messages first, then refusals, then one
    /// coalesced Ack per epoch for everything committed since the last, then the
    /// credit returned meanwhile (unless the sink is under pressure).
    pub fn poll_transmit(&mut self) -> Option<Message> {
        if let Some(m) = self.transmit.pop_front() {
            return Some(m);
        }
        if self.state == State::Closed {
            return None;
        }
        if let Some(m) = self.next_reject_ack() {
            return Some(m);
        }
        if let Some(m) = self.next_commit_ack() {
            return Some(m);
        }
        if self.state == State::Established && !self.pressure {
            let c = self.owed_credit();
            if c == Credit::default() {
                return None;
            }
            self.granted.0 += c.bytes;
            self.granted.1 += u64::from(c.batches);
            return Some(Message::Credit(c));
        }
        None
    }

    fn next_reject_ack(&mut self) -> Option<Message> {
        let (&epoch, book) = self.books.iter_mut().find(|(_, b)| !b.rejects.is_empty())?;
        let reason = book.rejects.first()?.1;
        // Group every pending refusal with the same reason into one Ack.
        let mut set = SeqSet::new();
        book.rejects.retain(|(s, r)| {
            if *r == reason {
                set.insert(*s);
                false
            } else {
                true
            }
        });
        let mut ranges = set.ranges();
        if let Some(t) = set.through() {
            ranges.insert(
                0,
                SeqRange {
                    first: Seq(0),
                    last: t,
                },
            );
        }
        Some(Message::Ack(Ack {
            epoch,
            outcome: Outcome::Rejected(reason),
            through: None,
            ranges,
        }))
    }

    fn next_commit_ack(&mut self) -> Option<Message> {
        let (&epoch, book) = self.books.iter_mut().find(|(_, b)| b.ack_due)?;
        book.ack_due = false;
        let through = book.settled.through();
        let unacked = std::mem::take(&mut book.unacked);
        let ranges = unacked
            .ranges()
            .into_iter()
            .chain(unacked.through().map(|t| SeqRange {
                first: Seq(0),
                last: t,
            }))
            .filter(|r| through.is_none_or(|t| r.last > t))
            .collect();
        Some(Message::Ack(Ack {
            epoch,
            outcome: Outcome::Committed,
            through,
            ranges,
        }))
    }

    /// The next event for the driver, if any.
    pub fn poll_event(&mut self) -> Option<IngestEvent> {
        self.events.pop_front()
    }
}
