//! The agent's side of a session.
//!
//! Invariants: nothing but Hello and Define leaves before Welcome; a batch is
//! sent only within credit; a batch leaves the in-flight set only on an Ack naming
//! it. The driver deletes from its spool exactly the seqs reported in
//! [`AgentEvent::Acked`] and [`AgentEvent::Rejected`].

use super::{negotiate, SessionError};
use crate::clock::{self, ClockSample};
use crate::ids::{Epoch, SensorId, Seq};
use crate::message::*;
use std::collections::{BTreeMap, HashSet, VecDeque};

/// Who the agent is and what it speaks.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Site the agent's certificate names.
    pub site: String,
    /// Agent id its certificate names.
    pub agent: String,
    /// Software version for the aggregator's logs.
    pub software: String,
    /// The boot epoch of the batches it sends.
    pub epoch: Epoch,
    /// Oldest protocol version to offer.
    pub min_version: u16,
    /// Newest protocol version to offer.
    pub max_version: u16,
    /// Features to offer.
    pub capabilities: Capabilities,
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
    Acked(Vec<Seq>),
    /// These batches were refused for good: count them as dropped and delete them.
    Rejected {
        /// The refused batches.
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
    /// The seq is already in flight on this session.
    #[error("batch already in flight")]
    AlreadyInFlight,
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
    limits: Option<ServerLimits>,
    credit: Credit,
    in_flight: BTreeMap<Seq, u64>,
    defined: HashSet<SensorId>,
    transmit: VecDeque<Message>,
    events: VecDeque<AgentEvent>,
}

impl AgentSession {
    /// A session that will resume sending at `resume_from` (the oldest unacked seq).
    pub fn new(cfg: AgentConfig, resume_from: Seq) -> Self {
        let hello = Hello {
            min_version: cfg.min_version,
            max_version: cfg.max_version,
            epoch: cfg.epoch,
            resume_from,
            capabilities: cfg.capabilities,
            site: cfg.site.clone(),
            agent: cfg.agent.clone(),
            software: cfg.software.clone(),
        };
        Self {
            cfg,
            state: State::AwaitWelcome,
            version: 0,
            limits: None,
            credit: Credit::default(),
            in_flight: BTreeMap::new(),
            defined: HashSet::new(),
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

    /// The limits the aggregator announced, once established.
    pub fn limits(&self) -> Option<ServerLimits> {
        self.limits
    }

    /// Negotiated protocol version (0 before Welcome).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Credit left to spend.
    pub fn credit(&self) -> Credit {
        self.credit
    }

    /// Batches sent and not yet acknowledged, ascending.
    pub fn in_flight(&self) -> impl Iterator<Item = Seq> + '_ {
        self.in_flight.keys().copied()
    }

    /// Queues a Define unless this session has already sent one for the id.
    pub fn define(&mut self, d: Define) {
        if self.defined.insert(d.sensor) {
            self.transmit.push_back(Message::Define(d));
        }
    }

    /// True if the sensor id has been defined on this session.
    pub fn is_defined(&self, sensor: SensorId) -> bool {
        self.defined.contains(&sensor)
    }

    /// True if a batch frame of `frame_bytes` fits the credit now.
    pub fn can_send(&self, frame_bytes: u64) -> bool {
        self.state == State::Established
            && self.credit.batches >= 1
            && self.credit.bytes >= frame_bytes
    }

    /// Records that the driver sends batch `seq` as a frame of `frame_bytes`,
    /// spending credit. Call before writing it to the stream.
    pub fn on_send(&mut self, seq: Seq, frame_bytes: u64) -> Result<(), SendError> {
        match self.state {
            State::AwaitWelcome | State::Closed => return Err(SendError::NotEstablished),
            State::Draining => return Err(SendError::Draining),
            State::Established => {}
        }
        if self.in_flight.contains_key(&seq) {
            return Err(SendError::AlreadyInFlight);
        }
        if !self.can_send(frame_bytes) {
            return Err(SendError::NoCredit);
        }
        self.credit.bytes -= frame_bytes;
        self.credit.batches -= 1;
        self.in_flight.insert(seq, frame_bytes);
        Ok(())
    }

    /// Queues a heartbeat request stamped with the agent's clock.
    pub fn heartbeat(&mut self, now_ns: i64) {
        if self.state != State::Closed {
            self.transmit.push_back(Message::Heartbeat(Heartbeat {
                origin_ns: now_ns,
                receive_ns: 0,
                transmit_ns: 0,
            }));
        }
    }

    /// Handles a message from the aggregator received at `now_ns` (agent clock).
    /// On error the session is closed and an Error message is queued for the peer
    /// (except when the peer itself sent the error).
    pub fn handle(&mut self, msg: Message, now_ns: i64) -> Result<(), SessionError> {
        let res = self.handle_inner(msg, now_ns);
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
            State::AwaitWelcome => "awaiting welcome",
            State::Established => "established",
            State::Draining => "draining",
            State::Closed => "closed",
        }
    }

    fn handle_inner(&mut self, msg: Message, now_ns: i64) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
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
                self.limits = Some(w.limits);
                self.credit = w.credit;
                self.state = State::Established;
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
                Ok(())
            }
            (State::Established | State::Draining, Message::Ack(a)) => {
                self.on_ack(a);
                Ok(())
            }
            (State::Established | State::Draining, Message::Heartbeat(hb)) => {
                if let Some(s) = clock::sample(&hb, now_ns) {
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

    fn on_ack(&mut self, a: Ack) {
        if a.epoch != self.cfg.epoch {
            return;
        }
        let mut settled = Vec::new();
        if let Some(t) = a.through {
            settled.extend(self.in_flight.range(..=t).map(|(s, _)| *s));
        }
        for r in &a.ranges {
            if r.first <= r.last {
                settled.extend(self.in_flight.range(r.first..=r.last).map(|(s, _)| *s));
            }
        }
        settled.sort_unstable();
        settled.dedup();
        for s in &settled {
            self.in_flight.remove(s);
        }
        if settled.is_empty() {
            return;
        }
        self.events.push_back(match a.outcome {
            Outcome::Committed => AgentEvent::Acked(settled),
            Outcome::Rejected(reason) => AgentEvent::Rejected {
                seqs: settled,
                reason,
            },
        });
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// The next event for the driver, if any.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }
}
