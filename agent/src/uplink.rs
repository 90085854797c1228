//! The uplink: one QUIC session at a time to one of the configured aggregators,
//! driving a `wire::session::AgentSession`.
//!
//! Per session: a control stream (Hello and Heartbeat out; Welcome, Ack, Credit,
//! GoAway in) and one lane (a unidirectional stream) for batches, which carries
//! the Defines a batch needs before it and sends the spool in sequence order,
//! oldest first: the backlog left by an outage, then what is being written. One
//! ordered lane is what keeps an agent's batches in order in Kafka and the
//! embedded log; control traffic never waits behind it. While that lane is behind
//! (see [`crate::live`]), each new batch is also copied as the batcher cuts it,
//! best-effort, onto a second lane of live copies the aggregator only publishes
//! to its real-time path, so alerts see fresh data at once while the backlog
//! replays. Copies spend no credit and never hold up the durable lane or the
//! batcher: a copy the live stream cannot take at once is skipped and counted.
//!
//! With each heartbeat the session also reports what the spool holds
//! unacknowledged (batches, bytes, the oldest one's age), to an aggregator that
//! offered spool reports: the batcher publishes the figures, the uplink hands
//! them to the session just before its timers run.
//!
//! Invariants kept here: the session is up only on Welcome; a batch is sent only
//! when durable in the spool and within credit; the spool releases a batch only on
//! its Ack; whatever was in flight when a session ends is sent again on the next,
//! to whichever aggregator answers.

use crate::backoff::Backoff;
use crate::batcher::{Settle, SpoolState};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::failure::{self, FailureReason};
use crate::live::{Fresh, LiveGate, LiveTapRx};
use crate::spool::{count_dropped, InputCounts, SpoolReader, Spooled};
use ferrule_telemetry::{Buckets, Counter, Gauge, Histogram, Registry};
use ferrule_transport::quinn;
use ferrule_transport::{
    classify, client_crypto, client_endpoint, refused_by_verifier, EndpointLimits, FrameReceiver,
    FrameSender, Refusals,
};
use ferrule_wire::clock::ClockFilter;
use ferrule_wire::session::{AgentConfig, AgentEvent, AgentSession, SendError, SpoolBacklog};
use ferrule_wire::{batch_frame_to_live, encode, Limits, Message, Seq, SeqSet};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// What the uplink needs.
pub struct UplinkDeps {
    /// The configuration.
    pub cfg: Config,
    /// Spans of sampled batches (OTLP).
    pub traces: crate::trace::Traces,
    /// Reads batches back from the spool.
    pub reader: SpoolReader,
    /// How far the spool is durable and acknowledged.
    pub state: watch::Receiver<SpoolState>,
    /// What the spool holds unacknowledged: reported to an aggregator that
    /// takes spool reports (`Status`, with each heartbeat).
    pub backlog: watch::Receiver<SpoolBacklog>,
    /// Tells the batcher what to release.
    pub settles: mpsc::UnboundedSender<Settle>,
    /// Sensor definitions to send.
    pub catalog: Arc<Mutex<Catalog>>,
    /// Where the clock offset estimate goes.
    pub clock_offset_ns: Arc<AtomicI64>,
    /// Counters.
    pub registry: Registry,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// The agent's health: a session that stalled says so here (cause
    /// `uplink`) until the next one is up.
    pub health: Arc<ferrule_telemetry::Health>,
    /// New batches from the batcher, for live copies while the durable lane
    /// is behind (one session at a time takes them).
    pub live: tokio::sync::Mutex<LiveTapRx>,
}

struct Metrics {
    registry: Registry,
    up: Gauge,
    /// When `up` last changed, Unix seconds: down (or up) since when.
    up_since: Gauge,
    sessions: Counter,
    sent_batches: Counter,
    sent_bytes: Counter,
    acked: Counter,
    clock_offset: Gauge,
    live_sent: Counter,
    /// From each batch's send to its ack.
    ack_latency: Histogram,
    /// How long a ready batch waited for credit or the pacing window.
    credit_wait: Histogram,
    /// By reason: the live stream had no room (`stream_full`), or it is gone
    /// (`lane_closed`); the tap counts its own (`tap_full`).
    live_skipped: [Counter; 2],
}

impl Metrics {
    /// The uplink is up or down now; the time it changed is kept.
    fn set_up(&self, up: bool) {
        let v = i64::from(up);
        if self.up.get() != v || self.up_since.get() == 0 {
            self.up.set(v);
            self.up_since.set(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            );
        }
    }
}

const STREAM_FULL: usize = 0;
const LANE_CLOSED: usize = 1;

enum End {
    /// The aggregator asked us to move; try `alternate` first.
    GoAway(Option<String>),
    /// We are shutting down.
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
enum UplinkError {
    /// Our own key, certificate or trust bundle cannot be loaded.
    #[error("TLS material: {0}")]
    LocalTls(#[from] ferrule_transport::TlsError),
    #[error("QUIC endpoint: {0}")]
    Endpoint(ferrule_transport::TlsError),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("{reason}: {source}")]
    Connection {
        reason: &'static str,
        source: quinn::ConnectionError,
        /// Whether the QUIC handshake had completed.
        established: bool,
    },
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("session: {0}")]
    Session(#[from] ferrule_wire::session::SessionError),
    #[error("stream: {0}")]
    Stream(#[from] ferrule_transport::StreamError),
    #[error("spool read: {0}")]
    Spool(#[from] ferrule_disklog::Error),
    #[error("aggregator closed the control stream")]
    Closed,
}

impl UplinkError {
    /// A fine label for the log (`expired`, `wrong_server_name`, ...).
    fn reason(&self) -> &'static str {
        match self {
            Self::LocalTls(_) => "tls_local_config",
            Self::Endpoint(_) => "endpoint",
            Self::Connect(_) => "connect",
            Self::Connection { reason, .. } => reason,
            Self::Timeout(_) => "timeout",
            Self::Session(e) => e.label(),
            Self::Stream(_) => "stream",
            Self::Spool(_) => "spool_read",
            Self::Closed => "closed",
        }
    }

    /// The bounded reason counted in `ferrule_agent_session_failures_total`.
    fn failure(&self) -> FailureReason {
        use ferrule_transport::StreamError;
        match self {
            Self::LocalTls(_) => FailureReason::TlsLocalConfig,
            Self::Endpoint(_) => FailureReason::Other,
            Self::Connect(quinn::ConnectError::InvalidServerName(_)) => {
                FailureReason::TlsLocalConfig
            }
            Self::Connect(quinn::ConnectError::InvalidRemoteAddress(_)) => {
                FailureReason::Unreachable
            }
            Self::Connect(_) => FailureReason::Other,
            Self::Connection {
                source,
                established,
                ..
            } => failure::of_connection(source, *established),
            Self::Timeout(HANDSHAKE) => FailureReason::Unreachable,
            Self::Timeout(_) => FailureReason::PeerTimeout,
            Self::Session(e) => failure::of_code_name(e.label()),
            Self::Stream(StreamError::Read(_) | StreamError::Write(_)) => {
                FailureReason::ConnectionLost
            }
            Self::Stream(StreamError::FrameTimeout(_)) => FailureReason::PeerTimeout,
            Self::Stream(_) => FailureReason::Protocol,
            Self::Spool(_) => FailureReason::SpoolRead,
            Self::Closed => FailureReason::ConnectionLost,
        }
    }
}

/// What a connect attempt that got no QUIC handshake within the timeout says.
const HANDSHAKE: &str = "QUIC handshake";

fn conn_err(e: quinn::ConnectionError) -> UplinkError {
    UplinkError::Connection {
        reason: classify(&e),
        source: e,
        established: true,
    }
}

/// Counts session failures by bounded reason (each published at 0) and logs
/// each at once, but a repeat of the same cause only at debug until a session
/// comes up or the cause changes: an agent retrying every few seconds must
/// not bury the log, and the counter still counts every attempt.
///
/// The last cause is kept per address: with several endpoints failing in
/// different ways (one down, one refusing us), one shared "last cause"
/// changed at every attempt and each round logged every endpoint again.
struct Failures {
    counters: Vec<(FailureReason, Counter)>,
    /// The cause last logged for each address (`None`: before any connect,
    /// loading the TLS material): (reason, fine label).
    last: HashMap<Option<SocketAddr>, (FailureReason, &'static str)>,
}

/// Most addresses [`Failures`] remembers a cause for; beyond it (a DNS name
/// whose addresses keep changing) it forgets them all, and logs each once more.
const MAX_REMEMBERED_CAUSES: usize = 64;

impl Failures {
    fn new(registry: &Registry) -> Self {
        Self {
            counters: FailureReason::ALL
                .iter()
                .map(|r| {
                    (
                        *r,
                        registry.counter(
                            "ferrule_agent_session_failures_total",
                            "Sessions that could not be opened or ended badly, by reason",
                            &[("reason", r.as_str())],
                        ),
                    )
                })
                .collect(),
            last: HashMap::new(),
        }
    }

    /// Counts and (if the cause is new) logs a failure; marks the agent
    /// unready while no session could be opened.
    fn record(
        &mut self,
        e: &UplinkError,
        opened: bool,
        at: Option<(&str, SocketAddr)>,
        health: &ferrule_telemetry::Health,
    ) {
        let reason = e.failure();
        let detail = e.reason();
        if let Some((_, c)) = self.counters.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
        let (endpoint, addr) = match at {
            Some((n, a)) => (n.to_string(), a.to_string()),
            None => (String::new(), String::new()),
        };
        let key = at.map(|(_, a)| a);
        if self.last.get(&key) != Some(&(reason, detail)) {
            if self.last.len() >= MAX_REMEMBERED_CAUSES && !self.last.contains_key(&key) {
                self.last.clear();
            }
            self.last.insert(key, (reason, detail));
            if reason.needs_a_fix() {
                tracing::error!(%endpoint, %addr, reason = reason.as_str(), detail, error = %e, "uplink session failed");
            } else {
                tracing::warn!(%endpoint, %addr, reason = reason.as_str(), detail, error = %e, "uplink session failed");
            }
        } else {
            tracing::debug!(%endpoint, %addr, reason = reason.as_str(), detail, error = %e, "uplink session failed again");
        }
        // Unhealthy only for what a person must fix here (or a stuck session):
        // an aggregator that is down or unreachable is ridden out by spooling,
        // and a liveness probe must not restart agents through its maintenance.
        if reason == FailureReason::Stalled || (!opened && reason.needs_a_fix()) {
            let place = if endpoint.is_empty() {
                String::new()
            } else {
                format!(" to {endpoint}")
            };
            health.set_unready(
                "uplink",
                format!("no uplink session{place}: {}: {e}", reason.as_str()),
            );
        } else if !opened {
            health.clear("uplink");
        }
    }

    /// A session came up: the next failure is news again.
    fn session_up(&mut self) {
        self.last.clear();
    }
}

/// Builds the QUIC endpoint from the TLS files, read afresh each time (so a
/// fixed key is picked up without a restart).
fn open_endpoint(cfg: &Config, refusals: &Arc<Refusals>) -> Result<quinn::Endpoint, UplinkError> {
    let crypto = client_crypto(&cfg.client_tls(), refusals)?;
    client_endpoint(
        SocketAddr::from(([0, 0, 0, 0], 0)),
        crypto,
        &EndpointLimits::default(),
    )
    .map_err(UplinkError::Endpoint)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Resolves every endpoint to its addresses, the preferred one first.
async fn resolve(endpoints: &[String], preferred: Option<&str>) -> Vec<(String, SocketAddr)> {
    let mut names: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    if let Some(p) = preferred {
        names.retain(|n| *n != p);
        names.insert(0, p);
    }
    let mut out = Vec::new();
    for name in names {
        match tokio::net::lookup_host(name).await {
            Ok(addrs) => out.extend(addrs.map(|a| (name.to_string(), a))),
            Err(e) => {
                tracing::warn!(endpoint = name, error = %e, "cannot resolve aggregator endpoint")
            }
        }
    }
    out
}

/// Runs the uplink until shutdown (and the in-flight batches are settled or the
/// drain time is up).
///
/// TLS material that cannot be loaded does not end it: the failure is logged
/// at once, counted (`tls_local_config`), shown on `/healthz`, and the files
/// are read again after each backoff until they load or the agent stops.
pub async fn run(deps: UplinkDeps) -> anyhow::Result<()> {
    let mut failures = Failures::new(&deps.registry);
    let m = Metrics {
        registry: deps.registry.clone(),
        up: deps.registry.gauge(
            "ferrule_agent_uplink_up",
            "1 while a session with an aggregator is up",
            &[],
        ),
        up_since: deps.registry.gauge(
            "ferrule_agent_uplink_since_seconds",
            "When the uplink last went up or down (ferrule_agent_uplink_up), Unix seconds",
            &[],
        ),
        sessions: deps.registry.counter(
            "ferrule_agent_sessions_total",
            "Sessions established",
            &[],
        ),
        sent_batches: deps.registry.counter(
            "ferrule_agent_sent_batches_total",
            "Batches sent (retransmits included)",
            &[],
        ),
        sent_bytes: deps.registry.counter(
            "ferrule_agent_sent_bytes_total",
            "Batch frame bytes sent",
            &[],
        ),
        acked: deps.registry.counter(
            "ferrule_agent_acked_by_uplink_total",
            "Batches acknowledged as committed",
            &[],
        ),
        clock_offset: deps.registry.gauge(
            "ferrule_agent_clock_offset_ns",
            "Estimated clock offset to the aggregator (aggregator minus agent), nanoseconds",
            &[],
        ),
        live_sent: deps.registry.counter(
            "ferrule_agent_live_sent_total",
            "Live copies of new batches sent while the durable lane was behind",
            &[],
        ),
        ack_latency: deps.registry.histogram(
            "ferrule_agent_ack_latency_seconds",
            "From a batch's send to the aggregator's ack saying it is durable, seconds",
            &[],
            Buckets::Latency,
        ),
        credit_wait: deps.registry.histogram(
            "ferrule_agent_credit_wait_seconds",
            "How long a batch ready to send waited for credit or the pacing window, seconds (one observation per wait)",
            &[],
            Buckets::Latency,
        ),
        live_skipped: ["stream_full", "lane_closed"].map(|r| {
            deps.registry.counter(
                crate::live::SKIPPED,
                crate::live::SKIPPED_HELP,
                &[("reason", r)],
            )
        }),
    };
    // Down since the start, until the first session.
    m.set_up(false);
    let seed = now_ns() as u64 ^ u64::from(std::process::id());
    let mut backoff = Backoff::new(
        Duration::from_millis(deps.cfg.uplink.backoff_initial_ms),
        Duration::from_millis(deps.cfg.uplink.backoff_max_ms),
        seed,
    );
    let mut shutdown = deps.shutdown.clone();
    let mut tls_reload = crate::tls_reload::ClientTlsReload::new(&deps.cfg, &deps.registry);
    let mut endpoint = loop {
        match open_endpoint(&deps.cfg, tls_reload.refusals()) {
            Ok(ep) => break ep,
            Err(e) => {
                failures.record(&e, false, None, &deps.health);
                if *shutdown.borrow() {
                    return Ok(());
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    };
    if failures.last.remove(&None).is_some() {
        tracing::info!("TLS material loads now");
        backoff.reset();
    }
    let mut preferred: Option<String> = None;
    // The aggregator that last sent GoAway is tried last, so agents move away.
    let mut avoid: Option<SocketAddr> = None;
    let mut clock = ClockFilter::default();
    'outer: loop {
        if *shutdown.borrow() && nothing_unsent(&deps) {
            break;
        }
        let mut addrs = resolve(&deps.cfg.uplink.endpoints, preferred.as_deref()).await;
        if let Some(a) = avoid.take() {
            if let Some(i) = addrs.iter().position(|(_, x)| *x == a) {
                let moved = addrs.remove(i);
                addrs.push(moved);
            }
        }
        for (name, addr) in addrs {
            // A renewed certificate, key or bundle: new connections use it.
            if let Some(cfg) = tls_reload.check() {
                endpoint.set_default_client_config(cfg);
            }
            let mut opened = false;
            let result = session(
                (&endpoint, tls_reload.refusals()),
                addr,
                &deps,
                &m,
                &mut clock,
                &mut backoff,
                &mut opened,
            )
            .await;
            if opened {
                failures.session_up();
            }
            match result {
                Ok(End::GoAway(alt)) => {
                    tracing::info!(endpoint = %name, %addr, alternate = ?alt, "aggregator sent GoAway; moving");
                    preferred = alt;
                    avoid = Some(addr);
                    continue 'outer;
                }
                Ok(End::Shutdown) => break 'outer,
                Err(e) => {
                    m.set_up(false);
                    failures.record(&e, opened, Some((&name, addr)), &deps.health);
                }
            }
            if *shutdown.borrow() {
                break 'outer;
            }
        }
        let delay = backoff.next_delay();
        tracing::debug!(?delay, "reconnecting after backoff");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }
    m.set_up(false);
    endpoint.close(0u32.into(), b"agent stopping");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(())
}

fn nothing_unsent(deps: &UplinkDeps) -> bool {
    let s = *deps.state.borrow();
    s.first_unacked >= s.durable_until
}

/// What one session keeps about the batches it sends.
struct Sending {
    /// Samples per input of each batch in flight, to count it if refused.
    sent_meta: HashMap<Seq, InputCounts>,
    /// Batches settled on this session: never sent on it again.
    settled: SeqSet,
    /// The aggregator's frame limit.
    max_frame: u32,
    /// A stream write must finish within this (the peer timeout).
    write_within: Duration,
    /// Catalog entries handed to the session so far.
    catalog_seen: usize,
    /// Most batches one [`send_ready`] sends before it returns (so the loop
    /// gets to the live copies between them while a backlog replays).
    budget: usize,
    /// The last [`send_ready`] stopped at its budget with more to send.
    more: bool,
    /// Since when a ready batch has waited for credit (or the pacing window).
    blocked_since: Option<Instant>,
}

/// Batches one [`send_ready`] sends at most while live copies are wanted: a
/// copy waits for at most this many durable writes.
const SEND_BUDGET_LIVE: usize = 8;

/// The lane's id in the session (its Defines are tracked per lane).
const LANE: usize = 0;

/// The live lane's id in the session.
const LIVE_LANE: usize = 1;

/// Live copies queued for the live stream's writer at most, and their bytes
/// (Defines included; a copy larger than that still goes when nothing waits).
/// Beyond either the stream is taken for full and copies are skipped. Deep
/// enough for a burst while the aggregator is busy with the replay: a copy
/// skipped reaches the real-time path only with the replay, and a rule engine
/// that has seen newer samples by then ignores it.
const LIVE_QUEUE: usize = 256;
const LIVE_QUEUE_BYTES: usize = 2 << 20;

/// Batches read ahead from the spool at a time.
const READ_AHEAD: usize = 256;

/// The lane: its id, its stream, where it reads the spool, and prefetched batches.
struct Lane {
    id: usize,
    tx: FrameSender,
    cursor: Seq,
    buf: VecDeque<Spooled>,
}

/// The live lane: which batches to copy, and a writer task that owns the stream
/// (so a stream that flow control holds never holds the uplink's loop).
struct LiveLane {
    gate: LiveGate,
    tx: mpsc::Sender<Vec<u8>>,
    /// Bytes queued for the writer and not yet written.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for LiveLane {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

impl LiveLane {
    fn open(mut stream: FrameSender, gate: LiveGate) -> Self {
        // Ahead of the durable lane when both have data to send.
        stream.set_priority(1);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(LIVE_QUEUE);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let left = queued.clone();
        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                let sent = stream.send_frame(&bytes).await;
                left.fetch_sub(bytes.len(), Ordering::Relaxed);
                if sent.is_err() {
                    // The connection's end is the control stream's to notice.
                    return;
                }
            }
            stream.finish();
        });
        Self {
            gate,
            tx,
            queued,
            writer,
        }
    }
}

/// Sends a live copy of a batch just cut, if the live stream can take it at
/// once; never waits: a copy it cannot take now is skipped and counted.
fn send_copy(
    s: &mut AgentSession,
    live: &mut LiveLane,
    fresh: Fresh,
    deps: &UplinkDeps,
    m: &Metrics,
    out: &mut Sending,
) {
    // Too large for this aggregator: the durable lane drops and counts it.
    if fresh.frame.len() > out.max_frame as usize {
        return;
    }
    let queued = live.queued.load(Ordering::Relaxed);
    if queued > 0 && queued + fresh.frame.len() > LIVE_QUEUE_BYTES {
        m.live_skipped[STREAM_FULL].inc();
        return;
    }
    let permit = match live.tx.try_reserve() {
        Ok(p) => p,
        Err(mpsc::error::TrySendError::Full(())) => {
            m.live_skipped[STREAM_FULL].inc();
            return;
        }
        Err(mpsc::error::TrySendError::Closed(())) => {
            m.live_skipped[LANE_CLOSED].inc();
            return;
        }
    };
    // The batcher registers a sensor in the catalog before it spools a batch
    // naming it: the catalog now covers this batch.
    out.catalog_seen = sync_defines(s, deps, out.catalog_seen);
    // Room is reserved: the Defines the session hands out now are written.
    let Ok(defines) = s.on_send_live(LIVE_LANE, fresh.epoch, fresh.seq) else {
        return;
    };
    let limits = Limits::for_frame_bytes(out.max_frame);
    let mut bytes = Vec::new();
    for d in defines {
        if let Err(e) = encode(&Message::Define(d), &limits, &mut bytes) {
            tracing::warn!(error = %e, "a Define does not encode for the live lane");
        }
    }
    let mut frame = fresh.frame;
    if batch_frame_to_live(&mut frame).is_err() {
        return;
    }
    bytes.extend_from_slice(&frame);
    live.queued.fetch_add(bytes.len(), Ordering::Relaxed);
    permit.send(bytes);
    m.live_sent.inc();
}

/// One session; `opened` is set once the aggregator welcomed us.
async fn session(
    (ep, refusals): (&quinn::Endpoint, &Refusals),
    addr: SocketAddr,
    deps: &UplinkDeps,
    m: &Metrics,
    clock: &mut ClockFilter,
    backoff: &mut Backoff,
    opened: &mut bool,
) -> Result<End, UplinkError> {
    let up = &deps.cfg.uplink;
    let connect_timeout = Duration::from_secs(up.connect_timeout_secs);
    let _stale = refusals.take_last();
    let connecting = ep.connect(addr, &up.server_name)?;
    let conn = match tokio::time::timeout(connect_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            // Our verifier refused the aggregator's certificate: it knows
            // why from rustls's typed error, finer than the TLS alert.
            let verdict = refused_by_verifier(&e)
                .then(|| refusals.take_last())
                .flatten();
            return Err(UplinkError::Connection {
                reason: verdict.unwrap_or_else(|| classify(&e)),
                source: e,
                established: false,
            });
        }
        Err(_) => return Err(UplinkError::Timeout(HANDSHAKE)),
    };
    let result = drive(&conn, deps, m, clock, backoff, opened).await;
    deps.live.lock().await.set_wanted(false);
    match &result {
        Ok(End::Shutdown) | Ok(End::GoAway(_)) => conn.close(0u32.into(), b"bye"),
        Err(e) => conn.close(1u32.into(), e.reason().as_bytes()),
    }
    m.set_up(false);
    result
}

async fn drive(
    conn: &quinn::Connection,
    deps: &UplinkDeps,
    m: &Metrics,
    clock: &mut ClockFilter,
    backoff: &mut Backoff,
    opened: &mut bool,
) -> Result<End, UplinkError> {
    let limits = Limits::default();
    let (send, recv) = conn.open_bi().await.map_err(conn_err)?;
    let mut ctl = FrameSender::new(send, limits);
    let mut ctl_rx = FrameReceiver::new(recv, limits, Duration::from_secs(30));
    let start = *deps.state.borrow();
    let up = &deps.cfg.uplink;
    let mut cfg = AgentConfig::new(
        deps.cfg.agent.site.clone(),
        deps.cfg.agent.id.clone(),
        env!("CARGO_PKG_VERSION"),
    );
    cfg.handshake_timeout = Duration::from_secs(up.connect_timeout_secs);
    cfg.heartbeat_interval = Duration::from_millis(up.heartbeat_interval_ms.max(100));
    cfg.peer_timeout = Duration::from_secs(up.peer_timeout_secs);
    cfg.stall_timeout = Duration::from_secs(up.stall_timeout_secs);
    cfg.target_queue_delay = Duration::from_millis(up.target_queue_delay_ms);
    let mut s = AgentSession::new(cfg, (start.epoch, start.first_unacked), Instant::now());
    let write_within = Duration::from_secs(up.peer_timeout_secs.max(1));
    flush(&mut s, &mut ctl, write_within).await?;
    // Up only on Welcome (or the session's handshake deadline passes).
    while !s.is_established() {
        let deadline = s.poll_timeout();
        tokio::select! {
            biased;
            next = ctl_rx.next() => match next {
                Err(e) => return Err(stream_or_conn(e, conn)),
                Ok(None) => return Err(closed_or_conn(conn)),
                Ok(Some((msg, _))) => s.handle(msg, now())?,
            },
            _ = sleep_until(deadline) => s.handle_timeout(now())?,
        }
    }
    let mut server_name = String::new();
    let mut server_limits = None;
    while let Some(ev) = s.poll_event() {
        if let AgentEvent::Established { server, limits, .. } = ev {
            server_name = server;
            server_limits = Some(limits);
        }
    }
    let max_frame = server_limits.map_or(limits.max_frame_bytes, |l| l.max_frame_bytes);
    *opened = true;
    m.set_up(true);
    m.sessions.inc();
    backoff.reset();
    deps.health.clear("uplink");
    tracing::info!(server = %server_name, version = s.version(), resume_from = %start.first_unacked, "uplink session up");
    if let Some(l) = server_limits {
        let sensors = deps
            .catalog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .defines()
            .len();
        if sensors > l.max_sensors as usize {
            tracing::error!(sensors, server_limit = l.max_sensors, "this agent knows more sensors than the aggregator accepts (server.max_sensors_per_agent): batches naming the extra ones will be refused");
        }
    }

    let mut lane = Lane {
        id: LANE,
        tx: FrameSender::new(conn.open_uni().await.map_err(conn_err)?, limits),
        cursor: start.first_unacked,
        buf: VecDeque::new(),
    };
    let mut tap = deps.live.lock().await;
    tap.set_wanted(false);
    // What an earlier session was offered is no news now.
    while tap.try_recv().is_some() {}
    let mut tap_open = true;
    let mut live = if up.live_lag_ms > 0 && s.live_enabled() {
        let gate = LiveGate::new(
            Duration::from_millis(up.live_lag_ms),
            deps.state.borrow().durable_until,
            Instant::now(),
        );
        let stream = FrameSender::new(conn.open_uni().await.map_err(conn_err)?, limits);
        Some(LiveLane::open(stream, gate))
    } else {
        None
    };

    let mut state = deps.state.clone();
    let mut shutdown = deps.shutdown.clone();
    let mut sending = Sending {
        sent_meta: HashMap::new(),
        settled: SeqSet::new(),
        max_frame,
        write_within,
        catalog_seen: 0,
        budget: usize::MAX,
        more: false,
        blocked_since: None,
    };
    let mut goaway: Option<Option<String>> = None;
    let mut stopping = *shutdown.borrow();
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    loop {
        if goaway.is_none() && !stopping {
            let mut blocked = false;
            sending.budget = if tap.wanted() {
                SEND_BUDGET_LIVE
            } else {
                usize::MAX
            };
            blocked |= send_ready(&mut s, &mut lane, deps, m, &mut sending).await?;
            s.set_blocked(blocked, Instant::now());
            // New batches are copied as they are cut while the durable lane is
            // behind; the batcher is asked for them only then.
            if let Some(live) = live.as_mut() {
                let unsent_from = lane.buf.front().map_or(lane.cursor, |b| b.seq);
                let durable_until = deps.state.borrow().durable_until;
                let behind = live.gate.behind(durable_until, unsent_from, Instant::now());
                if behind != tap.wanted() {
                    tracing::debug!(behind, "live copies");
                }
                tap.set_wanted(behind && s.live_enabled());
            }
        } else {
            tap.set_wanted(false);
            sending.more = false;
        }
        flush(&mut s, &mut ctl, write_within).await?;
        if let Some(alt) = &goaway {
            if s.in_flight().next().is_none() {
                return Ok(End::GoAway(alt.clone()));
            }
        }
        if stopping
            && (s.in_flight().next().is_none()
                || stop_deadline.is_some_and(|d| tokio::time::Instant::now() >= d))
        {
            return Ok(End::Shutdown);
        }
        let deadline = s.poll_timeout();
        tokio::select! {
            // What the aggregator sent first: after a long write its acks may
            // wait beside an expired timer, and they prove it alive.
            biased;
            next = ctl_rx.next() => match next {
                Ok(Some((msg, _))) => {
                    // The path's round trip is not queue (the pacing).
                    s.set_path_rtt(conn.rtt());
                    s.handle(msg, now())?
                }
                Ok(None) => return Err(closed_or_conn(conn)),
                Err(e) => return Err(stream_or_conn(e, conn)),
            },
            fresh = tap.recv(), if tap_open => match (fresh, live.as_mut()) {
                // Offered while the lane was behind; not copied once it is not.
                (Some(f), Some(live)) if tap.wanted() => {
                    send_copy(&mut s, live, f, deps, m, &mut sending)
                }
                (Some(_), _) => {}
                (None, _) => tap_open = false,
            },
            _ = state.changed() => {}
            _ = sleep_until(deadline) => {
                // A heartbeat due now carries the spool as it is now.
                s.set_spool(*deps.backlog.borrow());
                s.handle_timeout(now())?
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() && !stopping {
                    stopping = true;
                    stop_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(100)), if stopping => {},
            // The durable lane stopped at its budget: on with it once nothing
            // above is ready.
            _ = std::future::ready(()), if sending.more => {},
            e = conn.closed() => return Err(conn_err(e)),
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                AgentEvent::Acked {
                    epoch,
                    seqs,
                    latencies,
                } => {
                    m.acked.add(seqs.len() as u64);
                    for (seq, l) in latencies {
                        m.ack_latency.observe_duration(l);
                        deps.traces.acked(epoch, seq, l);
                    }
                    for q in &seqs {
                        sending.sent_meta.remove(q);
                        sending.settled.insert(*q);
                    }
                    let _ = deps.settles.send(Settle::Done(seqs));
                }
                AgentEvent::Rejected {
                    epoch,
                    seqs,
                    reason,
                } => {
                    let r = format!("rejected_{}", reason.name());
                    for q in &seqs {
                        let inputs = sending
                            .sent_meta
                            .remove(q)
                            .unwrap_or_else(|| vec![("unknown".into(), 0)]);
                        count_dropped(&m.registry, &r, &inputs);
                        sending.settled.insert(*q);
                    }
                    tracing::warn!(
                        %epoch,
                        ?seqs,
                        reason = reason.name(),
                        "aggregator refused batches for good; dropped and counted"
                    );
                    let _ = deps.settles.send(Settle::Dropped(seqs));
                }
                AgentEvent::Clock(sample) => {
                    clock.add(sample);
                    if let Some(best) = clock.estimate() {
                        deps.clock_offset_ns
                            .store(best.offset_ns, Ordering::Relaxed);
                        m.clock_offset.set(best.offset_ns);
                    }
                }
                AgentEvent::GoAway(g) => goaway = Some(g.alternate),
                _ => {}
            }
        }
    }
}

/// Hands the session the catalog's Defines it does not carry yet; returns how
/// many the catalog holds now.
fn sync_defines(s: &mut AgentSession, deps: &UplinkDeps, seen: usize) -> usize {
    let cat = deps.catalog.lock().unwrap_or_else(PoisonError::into_inner);
    let all = cat.defines();
    for d in &all[seen.min(all.len())..] {
        s.define(d.clone());
    }
    all.len()
}

use ferrule_transport::session_now as now;

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

fn closed_or_conn(conn: &quinn::Connection) -> UplinkError {
    match conn.close_reason() {
        Some(e) => conn_err(e),
        None => UplinkError::Closed,
    }
}

fn stream_or_conn(e: ferrule_transport::StreamError, conn: &quinn::Connection) -> UplinkError {
    match conn.close_reason() {
        Some(c) => conn_err(c),
        None => UplinkError::Stream(e),
    }
}

/// Sends what the session queued on the control stream. An aggregator that
/// takes none of it for `within` (it does not read) is given up.
async fn flush(
    s: &mut AgentSession,
    ctl: &mut FrameSender,
    within: Duration,
) -> Result<(), UplinkError> {
    while let Some(m) = s.poll_transmit() {
        timed(within, "control write", ctl.send(&m)).await?;
    }
    Ok(())
}

/// A stream write that must finish within `within`: flow control holds a write
/// for as long as the peer does not read, and the session's timers cannot run
/// meanwhile, so a peer that stops reading is a dead peer.
async fn timed<T>(
    within: Duration,
    what: &'static str,
    write: impl std::future::Future<Output = Result<T, ferrule_transport::StreamError>>,
) -> Result<T, UplinkError> {
    match tokio::time::timeout(within, write).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(UplinkError::Timeout(what)),
    }
}

/// Sends durable batches on `lane` while credit allows; true if a batch is ready
/// that the credit does not cover (the session counts that wait towards a stall).
async fn send_ready(
    s: &mut AgentSession,
    lane: &mut Lane,
    deps: &UplinkDeps,
    m: &Metrics,
    out: &mut Sending,
) -> Result<bool, UplinkError> {
    out.more = false;
    let mut sent = 0usize;
    loop {
        if sent >= out.budget {
            out.more = true;
            return Ok(false);
        }
        if lane.buf.is_empty() {
            let st = *deps.state.borrow();
            // Every batch below `durable_until` names only sensors the catalog held
            // before it was spooled: taken after reading the state, the catalog
            // covers every batch the read can return.
            out.catalog_seen = sync_defines(s, deps, out.catalog_seen);
            let end = st.durable_until;
            lane.cursor = lane.cursor.max(st.first_unacked);
            if lane.cursor >= end {
                return Ok(false);
            }
            let reader = deps.reader.clone();
            let from = lane.cursor;
            // What was just written is in the page cache: read it inline. A
            // backlog may come from the disk: hand the worker over meanwhile.
            let read = if end.0.saturating_sub(from.0) <= READ_AHEAD as u64 {
                reader.read(from, READ_AHEAD)
            } else {
                crate::blocking::run(|| reader.read(from, READ_AHEAD))
            };
            let batch = match read {
                Ok(b) => b,
                Err(e) => {
                    if matches!(e, ferrule_disklog::Error::Corrupt { .. }) {
                        // Damaged on disk after the spool opened: a rescan counts
                        // and settles it; the next session reads past it.
                        let _ = deps.settles.send(Settle::Rescan);
                    }
                    return Err(e.into());
                }
            };
            for b in batch {
                if b.seq < end {
                    lane.buf.push_back(b);
                }
            }
            match lane.buf.back() {
                Some(last) => lane.cursor = last.seq.next(),
                None => {
                    // Nothing readable in [cursor, end): released or lost to damage.
                    lane.cursor = end;
                    return Ok(false);
                }
            }
        }
        let Some(front) = lane.buf.front() else {
            return Ok(false);
        };
        if out.settled.contains(front.seq) {
            lane.buf.pop_front();
            continue;
        }
        if front.unreadable {
            // Never sent as garbage; counted, and settled so the spool moves on.
            let b = lane.buf.pop_front().ok_or(UplinkError::Closed)?;
            count_dropped(&m.registry, "spool_unreadable", &b.inputs);
            let _ = deps.settles.send(Settle::Dropped(vec![b.seq]));
            continue;
        }
        let len = front.frame.len() as u64;
        if len > u64::from(out.max_frame) {
            // Can never be accepted by this aggregator: count and release it.
            let b = lane.buf.pop_front().ok_or(UplinkError::Closed)?;
            count_dropped(&m.registry, "frame_too_large", &b.inputs);
            let _ = deps.settles.send(Settle::Dropped(vec![b.seq]));
            continue;
        }
        let cost = front.cost();
        if !s.can_send(cost) {
            out.blocked_since.get_or_insert_with(Instant::now);
            return Ok(true);
        }
        if let Some(since) = out.blocked_since.take() {
            m.credit_wait.observe_duration(since.elapsed());
        }
        let b = lane.buf.pop_front().ok_or(UplinkError::Closed)?;
        let defines = match s.on_send(lane.id, b.epoch, b.seq, cost, Instant::now()) {
            Ok(d) => d,
            // In flight already (read again after a rescan), or settled: skip it.
            Err(SendError::AlreadyInFlight | SendError::AlreadySettled) => continue,
            Err(_) => return Ok(false),
        };
        // Defines first, so the lane never carries a batch naming an unknown sensor.
        for d in defines {
            timed(
                out.write_within,
                "lane write",
                lane.tx.send(&Message::Define(d)),
            )
            .await?;
        }
        timed(out.write_within, "lane write", lane.tx.send_frame(&b.frame)).await?;
        sent += 1;
        m.sent_batches.inc();
        m.sent_bytes.add(len);
        out.sent_meta.insert(b.seq, b.inputs);
    }
}
