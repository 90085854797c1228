//! One simulated agent of the fleet: a real QUIC client with its own certificate
//! and the real agent session (`AgentSession`), whose three-phase meter feed is cut
//! into a batch every batching window, as `ferrule-agent` does.
//!
//! What it keeps of a real agent: every batch stays held until the aggregator
//! acknowledges it; a lost session is retried after the agent's backoff with
//! the same epoch, resending from the oldest unacknowledged batch; batches go
//! out within credit and pacing. What it leaves out: the disk spool (held
//! batches are in memory, up to a cap) and the inputs.
//!
//! Ack latency counts from the end of the window that formed the batch (when a
//! real agent would have it ready), so time spent waiting for credit, pacing or
//! a reconnection is in it: no coordinated omission.

use super::verify::{AgentLedger, Fate};
use crate::devpki::DevPki;
use anyhow::bail;
use ferrule_agent::backoff::Backoff;
use ferrule_transport::quinn;
use ferrule_transport::session_now as now;
use ferrule_transport::{
    client_config, client_crypto, client_endpoint, ClientTls, EndpointLimits, FrameReceiver,
    FrameSender,
};
use ferrule_wire::example::{SENSORS, UNITS};
use ferrule_wire::session::{AgentConfig, AgentEvent, AgentSession};
use ferrule_wire::*;
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest ack latency the histograms hold, microseconds (longer is clamped).
pub(crate) const MAX_LATENCY_US: u64 = 600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds hdrhistogram accepts")
}

/// Latencies and counts, shared by every agent and read by the run each second.
pub(crate) struct Recorder {
    /// Ack latency of the batches due in the measured period, microseconds.
    pub(crate) total: Histogram<u64>,
    /// Ack latency since the last tick.
    pub(crate) tick: Histogram<u64>,
    /// Events acknowledged since the last tick (measured or not).
    pub(crate) tick_events: u64,
    /// Events acknowledged in the measured period.
    pub(crate) events: u64,
    /// Batches acknowledged in the measured period.
    pub(crate) batches: u64,
}

/// State every simulated agent shares with the run.
pub(crate) struct Shared {
    /// While true, agents generate a batch every window.
    pub(crate) generating: AtomicBool,
    /// Set to end every agent now, drained or not.
    pub(crate) stop: AtomicBool,
    /// The measured period: batches due in it count in the totals.
    pub(crate) measure_from: std::sync::OnceLock<tokio::time::Instant>,
    /// Its end.
    pub(crate) measure_until: std::sync::OnceLock<tokio::time::Instant>,
    pub(crate) rec: Mutex<Recorder>,
    /// Sessions up now.
    pub(crate) connected: AtomicU64,
    /// Sessions established so far.
    pub(crate) established: AtomicU64,
    /// Batches generated and not yet acknowledged, over all agents.
    pub(crate) backlog: AtomicU64,
    /// The most `backlog` has been.
    pub(crate) backlog_peak: AtomicU64,
    /// Connection attempts that failed before Welcome.
    pub(crate) refused: AtomicU64,
    /// Sessions that failed after Welcome.
    pub(crate) lost_sessions: AtomicU64,
    /// Sessions ended by the aggregator's GoAway, drained and moved.
    pub(crate) moved: AtomicU64,
    /// Batches not generated because an agent already held its cap.
    pub(crate) not_generated: AtomicU64,
    /// Handshakes the aggregator refused because the agent's certificate is
    /// revoked.
    pub(crate) refused_revoked: AtomicU64,
    /// Batches held by agents whose certificate was refused as revoked (a
    /// real agent keeps them in its spool until it has a new certificate):
    /// part of `backlog`, and what the drain does not wait for.
    pub(crate) revoked_held: AtomicU64,
    /// Sessions established on a certificate the agent reloaded from disk
    /// after it changed (renewed in place).
    pub(crate) reloaded_sessions: AtomicU64,
    /// The distinct server certificates (leaf DER) sessions were established
    /// with: two after the aggregator's certificate was rotated.
    pub(crate) server_leaves: Mutex<Vec<Vec<u8>>>,
    pub(crate) first_error: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            generating: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            measure_from: std::sync::OnceLock::new(),
            measure_until: std::sync::OnceLock::new(),
            rec: Mutex::new(Recorder {
                total: latency_histogram(),
                tick: latency_histogram(),
                tick_events: 0,
                events: 0,
                batches: 0,
            }),
            connected: AtomicU64::new(0),
            established: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            backlog_peak: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            lost_sessions: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            not_generated: AtomicU64::new(0),
            refused_revoked: AtomicU64::new(0),
            revoked_held: AtomicU64::new(0),
            reloaded_sessions: AtomicU64::new(0),
            server_leaves: Mutex::new(Vec::new()),
            first_error: Mutex::new(None),
        }
    }

    /// Whether a batch due at `due` counts in the totals.
    fn measured(&self, due: tokio::time::Instant) -> bool {
        self.measure_from.get().is_some_and(|f| due >= *f)
            && self.measure_until.get().is_none_or(|u| due < *u)
    }

    pub(crate) fn recorder(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.rec.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, count: &AtomicU64, e: &anyhow::Error) {
        count.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| format!("{e:#}"));
    }
}

/// Who one simulated agent is and what it sends.
pub(crate) struct SimSpec {
    pub(crate) addr: SocketAddr,
    pub(crate) site: String,
    pub(crate) id: String,
    pub(crate) seed: u64,
    /// Samples per second over its seven sensors.
    pub(crate) rate: u64,
    /// The batching window.
    pub(crate) window: Duration,
    /// When its first window ends (agents' windows are spread over one window).
    pub(crate) first_due: tokio::time::Instant,
    /// A voltage sag every this many seconds (0: never).
    pub(crate) sag_every_secs: u32,
    /// Most batches held unacknowledged before generation is skipped (counted).
    pub(crate) max_held: usize,
}

/// A three-phase meter's rms readings, the fleet's feed: 230 V and 100 A with
/// noise at the meter's resolution, 50 Hz wandering slowly, and a sag to 70 %
/// for 100 ms every `sag_every_secs`. (The example feed's instantaneous
/// waveform needs 1 kHz per sensor; a fleet agent's few hundred samples a
/// second over seven sensors would alias it, and the waveform rules would
/// fire all the time.)
pub struct MeterFeed {
    rng: u64,
    tick: u64,
    start_ns: i64,
    period_ns: i64,
    rate_hz: f64,
    sag_every_secs: u32,
}

impl MeterFeed {
    /// A feed starting at `start_ns`, `rate_hz` readings a second per sensor.
    pub fn new(seed: u64, start_ns: i64, rate_hz: f64, sag_every_secs: u32) -> Self {
        let rate_hz = rate_hz.max(0.001);
        Self {
            rng: seed,
            tick: 0,
            start_ns,
            period_ns: (1e9 / rate_hz) as i64,
            rate_hz,
            sag_every_secs,
        }
    }

    /// Ticks (readings of all seven sensors) generated so far.
    pub fn ticks(&self) -> u64 {
        self.tick
    }

    /// Readings per second per sensor.
    pub fn rate_hz(&self) -> f64 {
        self.rate_hz
    }

    /// A uniform value in [-1, 1) (SplitMix64).
    fn noise(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// The next `samples` readings (whole ticks of seven, the last cut short).
    pub fn next_batch(&mut self, samples: usize) -> Vec<Series> {
        let ticks = samples.div_ceil(SENSORS.len());
        let mut out: Vec<Series> = (0..SENSORS.len() as u32)
            .map(|i| Series::with_capacity(SensorId(i), ticks))
            .collect();
        let mut left = samples;
        while left > 0 {
            let ts = self.start_ns + self.tick as i64 * self.period_ns;
            let t = self.tick as f64 / self.rate_hz;
            let sag =
                self.sag_every_secs > 0 && t >= 1.0 && t % f64::from(self.sag_every_secs) < 0.1;
            let v = if sag { 161.0 } else { 230.0 };
            let mut values = [0.0; 7];
            for p in 0..3 {
                values[p] = ((v + self.noise() * 0.8) * 10.0).round() / 10.0;
                values[3 + p] = ((100.0 + self.noise() * 2.0) * 100.0).round() / 100.0;
            }
            values[6] =
                ((50.0 + 0.02 * (t * 0.1).sin() + self.noise() * 0.003) * 1000.0).round() / 1000.0;
            for (series, value) in out.iter_mut().zip(values) {
                if left == 0 {
                    break;
                }
                series.push(ts, value, Quality::Good);
                left -= 1;
            }
            self.tick += 1;
        }
        out
    }
}

/// A batch held until its ack.
struct Held {
    frame: Vec<u8>,
    samples: u64,
    /// When it was due (its window's end).
    due: tokio::time::Instant,
}

/// The agent's batches: generated, held, settled.
struct Book {
    epoch: Epoch,
    feed: MeterFeed,
    /// Windows generated (or skipped) so far: the feed's clock.
    windows: u64,
    next_seq: u64,
    due: tokio::time::Instant,
    held: BTreeMap<u64, Held>,
    fates: Vec<Fate>,
    /// Samples in each generated batch.
    samples: Vec<u32>,
    /// Batches this agent counts in `Shared::revoked_held`: its handshake was
    /// refused as revoked and no session has been established since.
    revoked_held: Option<u64>,
}

impl Book {
    /// Generates every batch whose window has ended; returns their seqs.
    fn generate_due(
        &mut self,
        spec: &SimSpec,
        shared: &Shared,
        fresh: &mut VecDeque<u64>,
    ) -> anyhow::Result<()> {
        let t = tokio::time::Instant::now();
        while shared.generating.load(Ordering::Relaxed) && self.due <= t {
            let due = self.due;
            self.due += spec.window;
            self.windows += 1;
            // Whole ticks, cut by time: the data's clock keeps the wall's.
            let target = (self.windows as f64 * spec.window.as_secs_f64() * self.feed.rate_hz())
                .floor() as u64;
            let ticks = target.saturating_sub(self.feed.ticks());
            if self.held.len() >= spec.max_held {
                // Memory stays bounded; the report says the generator fell
                // behind, and the run fails.
                shared.not_generated.fetch_add(1, Ordering::Relaxed);
                let _ = self.feed.next_batch(ticks as usize * SENSORS.len());
                continue;
            }
            if ticks == 0 {
                continue;
            }
            let n = ticks as usize * SENSORS.len();
            let seq = self.next_seq;
            self.next_seq += 1;
            let series = self.feed.next_batch(n);
            let mut frame = Vec::new();
            encode(
                &Message::Batch(Batch {
                    epoch: self.epoch,
                    seq: Seq(seq),
                    clock_offset_ns: 0,
                    series,
                }),
                &Limits::default(),
                &mut frame,
            )?;
            self.held.insert(
                seq,
                Held {
                    frame,
                    samples: n as u64,
                    due,
                },
            );
            self.fates.push(Fate::Pending);
            self.samples.push(u32::try_from(n).unwrap_or(u32::MAX));
            let before = shared.backlog.fetch_add(1, Ordering::Relaxed);
            shared.backlog_peak.fetch_max(before + 1, Ordering::Relaxed);
            if let Some(n) = self.revoked_held.as_mut() {
                *n += 1;
                shared.revoked_held.fetch_add(1, Ordering::Relaxed);
            }
            fresh.push_back(seq);
        }
        Ok(())
    }

    fn settle(&mut self, seqs: &[Seq], fate: Fate, shared: &Shared) {
        let t = tokio::time::Instant::now();
        let mut rec = None;
        for q in seqs {
            let Some(h) = self.held.remove(&q.0) else {
                continue;
            };
            shared.backlog.fetch_sub(1, Ordering::Relaxed);
            if let Some(f) =
                q.0.checked_sub(1)
                    .and_then(|i| self.fates.get_mut(i as usize))
            {
                *f = fate;
            }
            if fate != Fate::Acked {
                continue;
            }
            let r = rec.get_or_insert_with(|| shared.recorder());
            let us = t
                .duration_since(h.due)
                .as_micros()
                .clamp(1, u128::from(MAX_LATENCY_US));
            let us = u64::try_from(us).unwrap_or(MAX_LATENCY_US);
            r.tick_events += h.samples;
            let _ = r.tick.record(us);
            // Latency: of every batch due in the measured period, whenever
            // its ack came. Throughput: acks that came in it.
            if shared.measured(h.due) {
                let _ = r.total.record(us);
            }
            if shared.measured(t) {
                r.events += h.samples;
                r.batches += 1;
            }
        }
    }

    fn done(&self, shared: &Shared) -> bool {
        !shared.generating.load(Ordering::Relaxed) && self.held.is_empty()
    }

    /// The aggregator refused this agent's certificate as revoked: what it
    /// holds waits for a new certificate.
    fn mark_revoked(&mut self, shared: &Shared) {
        if self.revoked_held.is_none() {
            let n = self.held.len() as u64;
            self.revoked_held = Some(n);
            shared.revoked_held.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A session is up again (a new certificate): no longer revoked.
    fn unmark_revoked(&mut self, shared: &Shared) {
        if let Some(n) = self.revoked_held.take() {
            shared.revoked_held.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// Whether an error is a handshake the aggregator refused because this
/// agent's certificate is revoked (TLS alert certificate_revoked).
fn refused_as_revoked(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<quinn::ConnectionError>()
            .is_some_and(|ce| ferrule_transport::classify(ce) == "revoked")
    })
}

/// The agent's TLS files as last read: a change (a renewal in place) is
/// taken before the next connection attempt, as the agent does.
struct TlsFiles {
    files: ClientTls,
    cert_pem: Vec<u8>,
}

impl TlsFiles {
    /// Rebuilds the endpoint's client configuration when the certificate
    /// file changed and reads as a good pair with its key; otherwise keeps
    /// the one in use. True when it changed.
    fn reload(&mut self, ep: &mut quinn::Endpoint) -> bool {
        let Ok(pem) = std::fs::read(&self.files.cert) else {
            return false;
        };
        if pem == self.cert_pem {
            return false;
        }
        let cfg = client_crypto(&self.files, &ferrule_transport::Refusals::new())
            .ok()
            .and_then(|c| client_config(c, &EndpointLimits::default()).ok());
        match cfg {
            Some(cfg) => {
                ep.set_default_client_config(cfg);
                self.cert_pem = pem;
                true
            }
            // Mid-write (key first, then certificate): the next attempt.
            None => false,
        }
    }
}

/// Runs one simulated agent until the run stops generating and everything it
/// generated is settled, or the run stops it; returns its ledger.
pub(crate) async fn run_agent(
    pki: DevPki,
    spec: SimSpec,
    shared: Arc<Shared>,
) -> anyhow::Result<AgentLedger> {
    let (cert, key) = pki.agent_paths(&spec.site, &spec.id);
    let files = ClientTls {
        cert,
        key,
        server_ca: pki.ca_bundle(),
    };
    let mut tls = TlsFiles {
        cert_pem: std::fs::read(&files.cert)?,
        files,
    };
    let crypto = client_crypto(&tls.files, &ferrule_transport::Refusals::new())?;
    // Loopback to a local aggregator; any address to one in a namespace.
    let bind: std::net::IpAddr = if spec.addr.ip().is_loopback() {
        [127, 0, 0, 1].into()
    } else {
        [0, 0, 0, 0].into()
    };
    let mut ep = client_endpoint(
        SocketAddr::from((bind, 0)),
        crypto,
        &EndpointLimits::default(),
    )?;
    let mut reloaded = false;
    let start_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let per_sensor_hz = spec.rate as f64 / SENSORS.len() as f64;
    let mut book = Book {
        epoch: Epoch(start_ns.unsigned_abs() ^ spec.seed),
        feed: MeterFeed::new(spec.seed, start_ns, per_sensor_hz, spec.sag_every_secs),
        windows: 0,
        next_seq: 1,
        due: spec.first_due,
        held: BTreeMap::new(),
        fates: Vec::new(),
        samples: Vec::new(),
        revoked_held: None,
    };
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(5),
        spec.seed,
    );
    let mut fresh = VecDeque::new();
    tokio::time::sleep_until(spec.first_due).await;
    while !shared.stop.load(Ordering::Relaxed) && !book.done(&shared) {
        reloaded |= tls.reload(&mut ep);
        match session(&ep, &spec, &mut book, &shared, &mut backoff, reloaded).await {
            Ok(Ended::Moved) => {
                // As the agent does: straight to the next connection (one
                // endpoint here, so the same aggregator, which may be gone:
                // then the backoff applies).
                shared.moved.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(Ended::Done) => {}
            Err(End::Refused(e)) if refused_as_revoked(&e) => {
                shared.refused_revoked.fetch_add(1, Ordering::Relaxed);
                book.mark_revoked(&shared);
            }
            Err(End::Refused(e)) => shared.fail(&shared.refused, &e),
            Err(End::Lost(e)) => shared.fail(&shared.lost_sessions, &e),
        }
        if shared.stop.load(Ordering::Relaxed) || book.done(&shared) {
            break;
        }
        // Spooling while the uplink is down: batches keep coming.
        let until = tokio::time::Instant::now() + backoff.next_delay();
        while tokio::time::Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
            book.generate_due(&spec, &shared, &mut fresh)
                .map_err(|e| anyhow::anyhow!("encoding a batch: {e}"))?;
            // The next session sends everything held, these included.
            fresh.clear();
            tokio::time::sleep_until(
                until.min(
                    book.due
                        .max(tokio::time::Instant::now() + Duration::from_millis(5)),
                ),
            )
            .await;
        }
    }
    ep.close(0u32.into(), b"done");
    shared
        .backlog
        .fetch_sub(book.held.len() as u64, Ordering::Relaxed);
    Ok(AgentLedger {
        agent: spec.id,
        epoch: book.epoch,
        fates: book.fates,
        samples: book.samples,
        revoked: book.revoked_held.is_some(),
    })
}

/// How a session ended well.
enum Ended {
    /// The run is over (stopped, or nothing left to send).
    Done,
    /// The aggregator said GoAway; everything in flight was settled first.
    Moved,
}

enum End {
    Refused(anyhow::Error),
    Lost(anyhow::Error),
}

/// One session: resend what is held, then send each window's batch within
/// credit until the run is over.
async fn session(
    ep: &quinn::Endpoint,
    spec: &SimSpec,
    book: &mut Book,
    shared: &Shared,
    backoff: &mut Backoff,
    reloaded: bool,
) -> Result<Ended, End> {
    // Resume at the oldest held batch, or the next one to be written.
    let resume = book.held.keys().next().copied().unwrap_or(book.next_seq);
    let acfg = AgentConfig::new(spec.site.clone(), spec.id.clone(), "fleet");
    let (conn, mut s, mut ctl, mut ctl_rx) =
        crate::bench::establish(ep, spec.addr, acfg, (book.epoch, Seq(resume)))
            .await
            .map_err(End::Refused)?;
    backoff.reset();
    book.unmark_revoked(shared);
    if reloaded {
        shared.reloaded_sessions.fetch_add(1, Ordering::Relaxed);
    }
    let leaf = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<quinn::rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().map(|c| c.to_vec()));
    if let Some(leaf) = leaf {
        let mut seen = shared
            .server_leaves
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !seen.contains(&leaf) {
            seen.push(leaf);
        }
    }
    shared.connected.fetch_add(1, Ordering::Relaxed);
    shared.established.fetch_add(1, Ordering::Relaxed);
    let r = send_loop(&conn, spec, book, shared, (&mut s, &mut ctl, &mut ctl_rx)).await;
    shared.connected.fetch_sub(1, Ordering::Relaxed);
    match r {
        Ok(ended) => {
            conn.close(0u32.into(), b"done");
            Ok(ended)
        }
        Err(e) => {
            conn.close(1u32.into(), b"client error");
            Err(End::Lost(e))
        }
    }
}

async fn send_loop(
    conn: &quinn::Connection,
    spec: &SimSpec,
    book: &mut Book,
    shared: &Shared,
    (s, ctl, ctl_rx): (&mut AgentSession, &mut FrameSender, &mut FrameReceiver),
) -> anyhow::Result<Ended> {
    let mut lane = FrameSender::new(conn.open_uni().await?, Limits::default());
    for (i, (name, unit)) in SENSORS.iter().zip(UNITS).enumerate() {
        s.define(Define {
            sensor: SensorId(i as u32),
            name: SensorName::new(format!("{}/{name}", spec.id))?,
            unit: unit.into(),
            kind: SensorKind::Gauge,
        });
    }
    // Everything held goes again on a new session, oldest first.
    let mut to_send: VecDeque<u64> = book.held.keys().copied().collect();
    // GoAway: send nothing new, settle what is in flight, then move.
    let mut draining = false;
    loop {
        if shared.stop.load(Ordering::Relaxed) || book.done(shared) {
            return Ok(Ended::Done);
        }
        if draining && s.in_flight().next().is_none() {
            return Ok(Ended::Moved);
        }
        book.generate_due(spec, shared, &mut to_send)?;
        while let Some(&q) = to_send.front().filter(|_| !draining) {
            let Some(h) = book.held.get(&q) else {
                // Settled meanwhile (acked from an earlier session).
                to_send.pop_front();
                continue;
            };
            let cost = batch_cost(h.frame.len() as u64, h.samples);
            if !s.can_send(cost) {
                break;
            }
            for d in s.on_send(0, book.epoch, Seq(q), cost, Instant::now())? {
                lane.send(&Message::Define(d)).await?;
            }
            lane.send_frame(&h.frame).await?;
            to_send.pop_front();
        }
        // Replies already here first, as the agent does: a task the
        // scheduler ran late must not call a live aggregator dead.
        // The path's round trip is not queue (the pacing), as the agent does.
        s.set_path_rtt(conn.rtt());
        while let Ok(msg) = tokio::time::timeout(Duration::ZERO, ctl_rx.next()).await {
            on_message(msg?, s, book, shared, &mut draining)?;
        }
        s.handle_timeout(now())?;
        while let Some(m) = s.poll_transmit() {
            ctl.send(&m).await?;
        }
        let mut wait_until = tokio::time::Instant::now() + Duration::from_secs(1);
        if shared.generating.load(Ordering::Relaxed) {
            wait_until = wait_until.min(book.due);
        }
        if let Some(t) = s.poll_timeout() {
            wait_until = wait_until.min(tokio::time::Instant::from_std(t));
        }
        match tokio::time::timeout_at(wait_until, ctl_rx.next()).await {
            Ok(msg) => {
                s.set_path_rtt(conn.rtt());
                on_message(msg?, s, book, shared, &mut draining)?
            }
            Err(_) => continue,
        }
    }
}

/// One control message from the aggregator: into the session, and what it
/// settles into the book.
fn on_message(
    msg: Option<(Message, usize)>,
    s: &mut AgentSession,
    book: &mut Book,
    shared: &Shared,
    draining: &mut bool,
) -> anyhow::Result<()> {
    let Some((m, _)) = msg else {
        bail!("aggregator closed the control stream")
    };
    s.handle(m, now())?;
    while let Some(ev) = s.poll_event() {
        match ev {
            AgentEvent::Acked { epoch, seqs, .. } if epoch == book.epoch => {
                book.settle(&seqs, Fate::Acked, shared)
            }
            AgentEvent::Rejected { epoch, seqs, .. } if epoch == book.epoch => {
                book.settle(&seqs, Fate::Rejected, shared)
            }
            AgentEvent::GoAway(_) => *draining = true,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_feed_sags_once_per_period_and_is_otherwise_nominal() {
        // 100 Hz per sensor for 3 s, a sag every 2 s: one sag, at t = 2 s.
        let mut feed = MeterFeed::new(1, 0, 100.0, 2);
        let series = feed.next_batch(7 * 300);
        let va: Vec<(i64, f64, Quality)> = series[0].iter().collect();
        assert_eq!(va.len(), 300);
        let low: Vec<i64> = va.iter().filter(|s| s.1 < 207.0).map(|s| s.0).collect();
        assert_eq!(low.len(), 10, "100 ms of sag at 100 Hz");
        assert_eq!(low[0], 2_000_000_000);
        assert!(va.iter().all(|s| s.1 > 150.0 && s.1 < 232.0));
        let f: Vec<f64> = series[6].iter().map(|s| s.1).collect();
        assert!(f.iter().all(|v| (49.9..50.1).contains(v)));
        // Timestamps go forward, tick by tick.
        assert!(va.windows(2).all(|w| w[1].0 - w[0].0 == 10_000_000));
    }
}
