//! The aggregator's side of a session.
//!
//! Invariants: the agent's identity is what the TLS layer verified
//! ([`PeerIdentity`]), and a Hello or Define claiming otherwise ends the session; a
//! batch beyond the granted credit ends the session; a batch is acknowledged as
//! committed only after the driver reports it durable ([`IngestSession::committed`]);
//! a batch seen before in this session is never handed to the sink twice.

use super::{negotiate, SessionError};
use crate::ids::{Epoch, SensorId, Seq};
use crate::message::*;
use crate::seqset::SeqSet;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// The identity the TLS layer verified from the agent's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// Site named by the certificate.
    pub site: String,
    /// Agent id named by the certificate.
    pub agent: String,
}

/// What the aggregator offers every session.
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
    /// Limits announced and enforced.
    pub limits: ServerLimits,
    /// Credit granted with Welcome.
    pub initial_credit: Credit,
}

/// Something the aggregator's driver must act on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum IngestEvent {
    /// The session is up.
    Established {
        /// The agent's epoch.
        epoch: Epoch,
        /// Negotiated version.
        version: u16,
        /// The agent's oldest unacknowledged seq.
        resume_from: Seq,
        /// The agent's software version.
        software: String,
    },
    /// A sensor was defined.
    Defined(Define),
    /// A new batch to commit; report the outcome with `committed` or `rejected`.
    Commit {
        /// The batch.
        batch: Batch,
        /// Its frame size, which it spent of the credit.
        frame_bytes: u64,
    },
    /// A batch seen before in this session (a retransmit); not committed again.
    Duplicate(Seq),
    /// A batch refused without reaching the sink.
    Rejected {
        /// The batch.
        seq: Seq,
        /// Why.
        reason: RejectReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    Established,
    Draining,
    Closed,
}

/// The aggregator's side of one session.
#[derive(Debug)]
pub struct IngestSession {
    cfg: IngestConfig,
    peer: PeerIdentity,
    state: State,
    epoch: Epoch,
    sensors: HashMap<SensorId, Define>,
    /// Credit granted in total and spent in total; spent never exceeds granted.
    granted: (u64, u64),
    spent: (u64, u64),
    /// Batches committed or refused; the floor is what Acks report cumulatively.
    settled: SeqSet,
    /// Handed to the sink, outcome not yet known (at most the credit's batches).
    pending: BTreeSet<Seq>,
    /// Committed since the last Ack went out.
    unacked_commits: SeqSet,
    ack_due: bool,
    rejects: Vec<(Seq, RejectReason)>,
    last_clock_offset_ns: Option<i64>,
    transmit: VecDeque<Message>,
    events: VecDeque<IngestEvent>,
}

impl IngestSession {
    /// A session for a peer whose certificate names `peer`.
    pub fn new(cfg: IngestConfig, peer: PeerIdentity) -> Self {
        Self {
            cfg,
            peer,
            state: State::AwaitHello,
            epoch: Epoch(0),
            sensors: HashMap::new(),
            granted: (0, 0),
            spent: (0, 0),
            settled: SeqSet::new(),
            pending: BTreeSet::new(),
            unacked_commits: SeqSet::new(),
            ack_due: false,
            rejects: Vec::new(),
            last_clock_offset_ns: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The verified peer.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The agent's epoch, once established.
    pub fn epoch(&self) -> Option<Epoch> {
        (self.state != State::AwaitHello).then_some(self.epoch)
    }

    /// True between Welcome and close, draining included.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established | State::Draining)
    }

    /// The defined sensor behind an id.
    pub fn sensor(&self, id: SensorId) -> Option<&Define> {
        self.sensors.get(&id)
    }

    /// Credit granted and not yet spent: what the agent may still have in flight
    /// towards us beyond what we hold.
    pub fn outstanding_credit(&self) -> Credit {
        Credit {
            bytes: self.granted.0 - self.spent.0,
            batches: u32::try_from(self.granted.1 - self.spent.1).unwrap_or(u32::MAX),
        }
    }

    /// Batches handed to the sink whose outcome is not known yet.
    pub fn pending_commits(&self) -> usize {
        self.pending.len()
    }

    /// The agent's last reported clock offset (aggregator - agent), nanoseconds.
    pub fn clock_offset_ns(&self) -> Option<i64> {
        self.last_clock_offset_ns
    }

    /// Handles a message received at `now_ns` (aggregator clock) in a frame of
    /// `frame_bytes`. On error the session is closed and an Error is queued for
    /// the peer; send it, then close the connection.
    pub fn handle(
        &mut self,
        msg: Message,
        frame_bytes: u64,
        now_ns: i64,
    ) -> Result<(), SessionError> {
        let res = self.handle_inner(msg, frame_bytes, now_ns);
        if let Err(e) = &res {
            if !matches!(e, SessionError::Peer(_)) && self.state != State::Closed {
                self.transmit.push_back(Message::Error(e.to_message()));
            }
            self.state = State::Closed;
        }
        res
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
        now_ns: i64,
    ) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        match (self.state, msg) {
            (_, Message::Error(e)) => Err(SessionError::Peer(e)),
            (State::AwaitHello, Message::Hello(h)) => self.on_hello(h),
            (State::Established | State::Draining, Message::Define(d)) => self.on_define(d),
            (State::Established | State::Draining, Message::Batch(b)) => {
                self.on_batch(b, frame_bytes)
            }
            (State::Established | State::Draining, Message::Heartbeat(hb)) => {
                self.transmit.push_back(Message::Heartbeat(Heartbeat {
                    origin_ns: hb.origin_ns,
                    receive_ns: now_ns,
                    transmit_ns: now_ns,
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
        // Everything below resume_from was settled in an earlier session.
        self.settled = SeqSet::with_floor(h.resume_from.0.checked_sub(1).map(Seq));
        self.state = State::Established;
        let credit = self.cfg.initial_credit;
        self.granted = (credit.bytes, u64::from(credit.batches));
        self.transmit.push_back(Message::Welcome(Welcome {
            version,
            capabilities: self.cfg.capabilities.intersect(h.capabilities),
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
        if self.sensors.len() >= self.cfg.limits.max_sensors as usize {
            return Err(SessionError::BadDefine(format!(
                "more than {} sensors",
                self.cfg.limits.max_sensors
            )));
        }
        self.sensors.insert(d.sensor, d.clone());
        self.events.push_back(IngestEvent::Defined(d));
        Ok(())
    }

    fn on_batch(&mut self, b: Batch, frame_bytes: u64) -> Result<(), SessionError> {
        // Credit first: a retransmit spends credit on the agent's side too.
        if self.spent.0 + frame_bytes > self.granted.0 || self.spent.1 + 1 > self.granted.1 {
            return Err(SessionError::CreditExceeded {
                detail: format!(
                    "batch {} of {frame_bytes} bytes with {} bytes and {} batches left",
                    b.seq,
                    self.granted.0 - self.spent.0,
                    self.granted.1 - self.spent.1
                ),
            });
        }
        self.spent.0 += frame_bytes;
        self.spent.1 += 1;
        if b.epoch != self.epoch {
            self.reject(b.seq, RejectReason::WRONG_EPOCH);
            return Ok(());
        }
        if self.settled.contains(b.seq) {
            // Already durable (or refused): say so again so the agent can let go.
            self.ack_due = true;
            self.events.push_back(IngestEvent::Duplicate(b.seq));
            return Ok(());
        }
        if self.pending.contains(&b.seq) {
            self.events.push_back(IngestEvent::Duplicate(b.seq));
            return Ok(());
        }
        if b.series
            .iter()
            .any(|s| !self.sensors.contains_key(&s.sensor()))
        {
            self.reject(b.seq, RejectReason::UNKNOWN_SENSOR);
            return Ok(());
        }
        self.last_clock_offset_ns = Some(b.clock_offset_ns);
        self.pending.insert(b.seq);
        self.events.push_back(IngestEvent::Commit {
            batch: b,
            frame_bytes,
        });
        Ok(())
    }

    fn reject(&mut self, seq: Seq, reason: RejectReason) {
        self.settled.insert(seq);
        self.rejects.push((seq, reason));
        self.events.push_back(IngestEvent::Rejected { seq, reason });
    }

    /// The sink made batch `seq` durable: it will be acknowledged.
    pub fn committed(&mut self, seq: Seq) {
        if self.pending_remove(seq) {
            self.settled.insert(seq);
            self.unacked_commits.insert(seq);
            self.ack_due = true;
        }
    }

    /// The sink refused batch `seq` for good: the agent will be told to drop it.
    pub fn rejected(&mut self, seq: Seq, reason: RejectReason) {
        if self.pending_remove(seq) {
            self.settled.insert(seq);
            self.rejects.push((seq, reason));
        }
    }

    fn pending_remove(&mut self, seq: Seq) -> bool {
        self.pending.remove(&seq)
    }

    /// Grants the agent more room; grants add up. Nothing is sent while draining.
    pub fn grant(&mut self, credit: Credit) {
        if self.state != State::Established || (credit.bytes == 0 && credit.batches == 0) {
            return;
        }
        self.granted.0 += credit.bytes;
        self.granted.1 += u64::from(credit.batches);
        self.transmit.push_back(Message::Credit(credit));
    }

    /// Asks the agent to drain and move (SIGTERM). No more credit is granted;
    /// batches already in flight are still committed and acknowledged.
    pub fn go_away(&mut self, reason: GoAwayReason, alternate: Option<String>) {
        if self.state == State::Established {
            self.state = State::Draining;
            self.transmit
                .push_back(Message::GoAway(GoAway { reason, alternate }));
        }
    }

    /// The next message to send: control messages first, then refusals, then one
    /// coalesced Ack for everything committed since the last.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        if let Some(m) = self.transmit.pop_front() {
            return Some(m);
        }
        if let Some((seq, reason)) = self.rejects.first().copied() {
            // Group every pending refusal with the same reason into one Ack.
            let mut set = SeqSet::new();
            self.rejects.retain(|(s, r)| {
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
            debug_assert!(ranges.iter().any(|r| r.first <= seq && seq <= r.last));
            return Some(Message::Ack(Ack {
                epoch: self.epoch,
                outcome: Outcome::Rejected(reason),
                through: None,
                ranges,
            }));
        }
        if self.ack_due {
            self.ack_due = false;
            let through = self.settled.through();
            let ranges = self
                .unacked_commits
                .ranges()
                .into_iter()
                .chain(self.unacked_commits.through().map(|t| SeqRange {
                    first: Seq(0),
                    last: t,
                }))
                .filter(|r| through.is_none_or(|t| r.last > t))
                .collect();
            self.unacked_commits = SeqSet::new();
            return Some(Message::Ack(Ack {
                epoch: self.epoch,
                outcome: Outcome::Committed,
                through,
                ranges,
            }));
        }
        None
    }

    /// The next event for the driver, if any.
    pub fn poll_event(&mut self) -> Option<IngestEvent> {
        self.events.pop_front()
    }
}
