//! The protocol's messages.
//!
//! Every message but [`Batch`] (and its live copy, [`Message::Live`]) is a plain
//! postcard-encoded struct. A batch is a postcard header followed by the compact
//! sample block of [`crate::samples`], so the bulk of the traffic never goes through
//! serde's per-field machinery.
//!
//! Codes that may grow ([`ErrorCode`], [`RejectReason`], [`GoAwayReason`],
//! [`Capabilities`]) are open newtypes over integers, so an older peer decodes a
//! newer code instead of failing.

use crate::ids::{Epoch, SensorId, SensorName, Seq};
use crate::samples::Series;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks best.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// One protocol message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Message {
    /// Agent -> aggregator: opens a session.
    Hello(Hello),
    /// Aggregator -> agent: accepts a session; only now is the session up.
    Welcome(Welcome),
    /// Agent -> aggregator: interns a sensor name as a numeric id.
    Define(Define),
    /// Agent -> aggregator: samples to commit.
    Batch(Batch),
    /// Agent -> aggregator, only with [`Capabilities::LIVE`]: a copy of a batch
    /// whose durable send waits behind a backlog, for the real-time path only.
    /// The aggregator publishes it and does nothing else: no commit, no Ack, no
    /// credit spent. The same (epoch, seq) still arrives later as a [`Batch`],
    /// which is what gets committed and acknowledged.
    Live(Batch),
    /// Aggregator -> agent: which batches are durable, or refused.
    Ack(Ack),
    /// Aggregator -> agent: more room to send.
    Credit(Credit),
    /// Either way: liveness and a clock sample.
    Heartbeat(Heartbeat),
    /// Aggregator -> agent: drain and move elsewhere.
    GoAway(GoAway),
    /// Either way: a fatal problem; the sender closes after it.
    Error(ErrorMessage),
    /// Agent -> aggregator, only with [`Capabilities::STATUS`]: what the agent's
    /// spool holds unacknowledged, so the aggregator can show how far behind
    /// each agent is. Informational only: it changes no session state.
    Status(Status),
}

impl Message {
    /// The type byte in the frame header.
    pub fn type_byte(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::Welcome(_) => 2,
            Message::Define(_) => 3,
            Message::Batch(_) => 4,
            Message::Ack(_) => 5,
            Message::Credit(_) => 6,
            Message::Heartbeat(_) => 7,
            Message::GoAway(_) => 8,
            Message::Error(_) => 9,
            Message::Live(_) => 10,
            Message::Status(_) => 11,
        }
    }

    /// A short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Define(_) => "define",
            Message::Batch(_) => "batch",
            Message::Ack(_) => "ack",
            Message::Credit(_) => "credit",
            Message::Heartbeat(_) => "heartbeat",
            Message::GoAway(_) => "goaway",
            Message::Error(_) => "error",
            Message::Live(_) => "live",
            Message::Status(_) => "status",
        }
    }
}

/// Optional features a peer supports; the session uses the intersection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// Batches travel on unidirectional streams ("lanes"), each carrying the
    /// Defines its batches need; the aggregator reads any number of them (the
    /// agent uses one, in sequence order, which keeps its batches in order).
    pub const LANES: Capabilities = Capabilities(1);
    /// Batches carry the agent's estimated clock offset.
    pub const CLOCK_OFFSET: Capabilities = Capabilities(1 << 1);
    /// The agent may send [`Message::Live`] copies of its newest batches on a lane
    /// of their own while its durable lane replays a backlog, so the real-time path
    /// sees fresh data at once while the durable log still takes every batch in
    /// order. Offered by an aggregator only while it accepts them
    /// (`IngestConfig::live_max_bytes_per_sec` above zero).
    pub const LIVE: Capabilities = Capabilities(1 << 2);
    /// The agent reports its spool backlog in a [`Message::Status`] with each
    /// heartbeat. Negotiated so that an aggregator from before it never
    /// receives a message type it does not know (which it would take for a
    /// protocol error and close the session).
    pub const STATUS: Capabilities = Capabilities(1 << 3);
    /// Everything this build supports.
    pub const ALL: Capabilities =
        Capabilities(Self::LANES.0 | Self::CLOCK_OFFSET.0 | Self::LIVE.0 | Self::STATUS.0);

    /// True when every bit of `other` is set here.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// Features both sides support.
    pub fn intersect(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }

    /// These features without those of `other`.
    pub fn without(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & !other.0)
    }
}

/// Opens a session. What the agent claims here is checked against its
/// certificate by the aggregator and never trusted on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Oldest protocol version the agent speaks.
    pub min_version: u16,
    /// Newest protocol version the agent speaks.
    pub max_version: u16,
    /// The agent's boot epoch for the batches of this session.
    pub epoch: Epoch,
    /// The oldest sequence number the agent still holds unacknowledged; everything
    /// below it was settled earlier, so the aggregator can ack cumulatively.
    pub resume_from: Seq,
    /// What the agent supports.
    pub capabilities: Capabilities,
    /// The site the agent believes it belongs to (checked against its certificate).
    pub site: String,
    /// The agent id it believes it has (checked against its certificate).
    pub agent: String,
    /// The agent's software version, for logs.
    pub software: String,
}

/// Limits the aggregator enforces on this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLimits {
    /// Largest frame the aggregator accepts, header included.
    pub max_frame_bytes: u32,
    /// Most samples in one batch.
    pub max_batch_samples: u32,
    /// Most sensors one session may define.
    pub max_sensors: u32,
    /// How often the agent should send a heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u32,
}

/// Accepts a session. The agent treats the session as up only once this arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version both sides now speak.
    pub version: u16,
    /// Features both sides support.
    pub capabilities: Capabilities,
    /// Limits in force for the session.
    pub limits: ServerLimits,
    /// What the agent may send before the next [`Credit`].
    pub credit: Credit,
    /// The aggregator's name, for logs.
    pub server: String,
}

/// What kind of quantity a sensor measures, which decides how consumers aggregate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SensorKind {
    /// An instantaneous reading (voltage, temperature).
    Gauge,
    /// A monotonically increasing total (energy, packets).
    Counter,
    /// A discrete state (breaker open/closed, alarm code).
    State,
}

/// Longest unit string accepted, in bytes.
pub const MAX_UNIT_BYTES: usize = 32;

/// Interns a sensor name as a numeric id for the rest of the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Define {
    /// The id batches will use.
    pub sensor: SensorId,
    /// The sensor's full name.
    pub name: SensorName,
    /// Unit of its values (`V`, `A`, `Hz`); at most [`MAX_UNIT_BYTES`].
    pub unit: String,
    /// What it measures.
    pub kind: SensorKind,
}

/// Samples to commit, named by (epoch, seq) so every hop can drop duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The agent's boot epoch.
    pub epoch: Epoch,
    /// The batch's sequence number within the epoch.
    pub seq: Seq,
    /// The agent's estimate of (aggregator clock - agent clock), nanoseconds.
    pub clock_offset_ns: i64,
    /// The samples, one series per sensor.
    pub series: Vec<Series>,
}

impl Batch {
    /// Total samples across all series.
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(Series::len).sum()
    }
}

/// The fixed part of a batch, postcard-encoded before the sample block.
#[derive(Serialize, Deserialize)]
pub(crate) struct BatchHeader {
    pub(crate) epoch: Epoch,
    pub(crate) seq: Seq,
    pub(crate) clock_offset_ns: i64,
}

/// An inclusive range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// First sequence number in the range.
    pub first: Seq,
    /// Last sequence number in the range (inclusive).
    pub last: Seq,
}

/// Why the aggregator refused a batch for good (the agent counts and drops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RejectReason(pub u16);

impl RejectReason {
    /// A series used a sensor id with no [`Define`] in this session.
    pub const UNKNOWN_SENSOR: RejectReason = RejectReason(1);
    /// The batch's epoch is not the session's. No longer sent: one session carries
    /// batches of any epoch. Kept so the code keeps its meaning.
    pub const WRONG_EPOCH: RejectReason = RejectReason(2);
    /// The sink refused the batch permanently (too large for the topic, say).
    pub const SINK_REFUSED: RejectReason = RejectReason(3);
    /// A sensor belongs to a site the agent's certificate does not name.
    pub const FORBIDDEN: RejectReason = RejectReason(4);

    /// A short name for logs and metric labels (`unknown` for codes this build
    /// does not know, so a peer cannot create new labels).
    pub fn name(self) -> &'static str {
        match self {
            Self::UNKNOWN_SENSOR => "unknown_sensor",
            Self::WRONG_EPOCH => "wrong_epoch",
            Self::SINK_REFUSED => "sink_refused",
            Self::FORBIDDEN => "forbidden",
            _ => "unknown",
        }
    }
}

/// The fate of the batches an [`Ack`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Durable in the sink; the agent may delete them.
    Committed,
    /// Refused for good; the agent counts them as dropped with this reason.
    Rejected(RejectReason),
}

/// Acknowledges batches: everything up to `through` plus each range in `ranges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The epoch the sequence numbers belong to.
    pub epoch: Epoch,
    /// What happened to the named batches.
    pub outcome: Outcome,
    /// Every batch with `seq <= through` is settled: committed, or refused in an
    /// earlier rejecting Ack (which the aggregator always sends first). Only set on
    /// [`Outcome::Committed`] acks.
    pub through: Option<Seq>,
    /// Further batches beyond `through`, as disjoint ascending ranges.
    pub ranges: Vec<SeqRange>,
}

/// A grant of more room to send; grants add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Credit {
    /// Encoded batch bytes the agent may send.
    pub bytes: u64,
    /// Batches the agent may send.
    pub batches: u32,
}

/// Liveness and a clock sample, NTP-style: the agent sends `origin_ns`; the
/// aggregator echoes it with its receive and transmit times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent's clock when it sent the request.
    pub origin_ns: i64,
    /// The aggregator's clock when it received the request (0 in a request).
    pub receive_ns: i64,
    /// The aggregator's clock when it sent the reply (0 in a request).
    pub transmit_ns: i64,
}

/// What the agent's spool holds that the aggregator has not acknowledged: the
/// backlog an outage left, seen from the aggregator (its agents table) without
/// scraping every agent's metrics. Sent with each heartbeat, only on a session
/// that negotiated [`Capabilities::STATUS`]; every field a varint.
///
/// ```
/// use ferrule_wire::{decode, encode, Limits, Message, Status};
/// let st = Status { spool_batches: 12, spool_bytes: 48_000, oldest_unacked_ms: 9_500 };
/// let mut frame = Vec::new();
/// encode(&Message::Status(st), &Limits::default(), &mut frame).unwrap();
/// assert_eq!(decode(&frame, &Limits::default()).unwrap().unwrap().0, Message::Status(st));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Status {
    /// Batches in the spool not yet acknowledged (0: drained).
    pub spool_batches: u64,
    /// Their bytes on the agent's disk.
    pub spool_bytes: u64,
    /// Age of the oldest of them when the report was sent, milliseconds (0 when
    /// there is none).
    pub oldest_unacked_ms: u64,
}

/// Why the aggregator asks an agent to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoAwayReason(pub u16);

impl GoAwayReason {
    /// The aggregator is shutting down (SIGTERM).
    pub const SHUTDOWN: GoAwayReason = GoAwayReason(1);
    /// The aggregator sheds load.
    pub const OVERLOAD: GoAwayReason = GoAwayReason(2);
    /// The agent's certificate was revoked or expired.
    pub const CREDENTIALS: GoAwayReason = GoAwayReason(3);
}

/// Asks the agent to finish in-flight work and reconnect elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoAway {
    /// Why.
    pub reason: GoAwayReason,
    /// An endpoint the agent may try first (`host:port`), if the sender knows one.
    pub alternate: Option<String>,
}

/// Error codes a peer sees before the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The bytes did not decode.
    pub const MALFORMED: ErrorCode = ErrorCode(1);
    /// No protocol version in common.
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(2);
    /// A message arrived in a state where it makes no sense.
    pub const UNEXPECTED_MESSAGE: ErrorCode = ErrorCode(3);
    /// The peer sent more than its credit allowed.
    pub const CREDIT_EXCEEDED: ErrorCode = ErrorCode(4);
    /// The peer claimed an identity its certificate does not give it.
    pub const IDENTITY_MISMATCH: ErrorCode = ErrorCode(5);
    /// A frame or batch exceeded the announced limits.
    pub const LIMIT_EXCEEDED: ErrorCode = ErrorCode(6);
    /// A Define was invalid (duplicate id, bad unit, too many sensors).
    pub const BAD_DEFINE: ErrorCode = ErrorCode(7);
    /// The peer's credentials are not (or no longer) acceptable.
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(8);
    /// Something broke on the sender's side.
    pub const INTERNAL: ErrorCode = ErrorCode(9);
    /// No message arrived within the idle limit.
    pub const TIMEOUT: ErrorCode = ErrorCode(10);
    /// The peer's certificate was revoked (a new CRL lists it) while its
    /// session was up; its new handshakes fail too.
    pub const CERTIFICATE_REVOKED: ErrorCode = ErrorCode(11);

    /// A short name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::MALFORMED => "malformed",
            Self::UNSUPPORTED_VERSION => "unsupported_version",
            Self::UNEXPECTED_MESSAGE => "unexpected_message",
            Self::CREDIT_EXCEEDED => "credit_exceeded",
            Self::IDENTITY_MISMATCH => "identity_mismatch",
            Self::LIMIT_EXCEEDED => "limit_exceeded",
            Self::BAD_DEFINE => "bad_define",
            Self::UNAUTHORIZED => "unauthorized",
            Self::INTERNAL => "internal",
            Self::TIMEOUT => "timeout",
            Self::CERTIFICATE_REVOKED => "certificate_revoked",
            _ => "unknown",
        }
    }
}

/// A fatal problem, said to the peer before closing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// What kind of problem.
    pub code: ErrorCode,
    /// Human-readable detail (never secrets).
    pub message: String,
}
