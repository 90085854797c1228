//! A burst of handshakes against a real aggregator configured as in production
//! (Retry on, the default pending-handshake limit, admission, the embedded log):
//! what a few hundred agents reconnecting at once after an aggregator restart
//! look like. Real QUIC, real certificates from the dev PKI, loopback.
//!
//! What each test holds the product to:
//! - every client of a burst of 300 handshakes gets a session (Welcome), round
//!   after round, and none is refused with INVALID_TOKEN;
//! - a client whose Initial carrying its Retry token reaches the aggregator late
//!   (an aggregator too busy to read its socket, lost packets and the client's
//!   backed-off retransmissions) is still let in: the token outlives the client's
//!   handshake. With quinn's default 15 s token lifetime these clients were
//!   refused with "received an invalid Retry Token in a client Initial" (issue 10).
//!
//! - a burst larger than `server.max_pending_handshakes` is refused at once
//!   beyond the limit (`server_busy`, no handshake work), those clients back off
//!   and come back, and every one gets a session; none waits out a timeout.
//!   Before the handshake gate, quinn dropped the Initials beyond its queue
//!   without a word and every handshake in progress shared the CPU, so in a
//!   large storm handshakes timed out instead.
//!
//! The first two take tens of seconds on two cores and are `#[ignore]`d:
//! `cargo test -p ferrule-loadtest --test handshake_burst -- --ignored`.

#![allow(clippy::unwrap_used)]

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::aggregator_toml;
use ferrule_transport::quinn::{self, AsyncUdpSocket, Runtime as _, UdpPoller};
use ferrule_transport::{
    client_crypto, client_endpoint, ClientTls, EndpointLimits, FrameReceiver, FrameSender,
};
use ferrule_wire::session::{AgentConfig, AgentSession};
use ferrule_wire::{Epoch, Limits, Seq};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const CLIENTS: usize = 300;

/// Longer than quinn's default Retry token lifetime (15 s), shorter than a
/// client's handshake (its 30 s idle timeout).
const LATE_BY: Duration = Duration::from_secs(16);

/// A client socket on which the Initials that carry a Retry token reach the
/// server `delay` late, until the client hears from the server after the Retry:
/// the path of a client whose first answers to the Retry are lost at an
/// overloaded aggregator, and whose retransmissions (1, 2, 4, 8 s apart) get
/// through only later. Everything else passes untouched.
#[derive(Debug)]
struct LateRetriedInitials {
    inner: Arc<dyn AsyncUdpSocket>,
    delay: Duration,
    heard_after_retry: AtomicBool,
}

/// Whether `d` starts with a QUIC v1 Initial whose token is not empty (a client
/// Initial answering a Retry).
fn carries_retry_token(d: &[u8]) -> bool {
    let long_initial = matches!(d.first(), Some(b) if b & 0x80 != 0 && (b >> 4) & 0x03 == 0);
    if !long_initial {
        return false;
    }
    // Flags, version, DCID length and DCID, SCID length and SCID, token length.
    let mut i = 5;
    for _ in 0..2 {
        let Some(&len) = d.get(i) else { return false };
        i += 1 + usize::from(len);
    }
    let Some(&first) = d.get(i) else { return false };
    let width = 1usize << (first >> 6);
    let Some(bytes) = d.get(i..i + width) else {
        return false;
    };
    let mut len = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        len = (len << 8) | u64::from(*b);
    }
    len > 0
}

/// Whether `d` is a Retry packet.
fn is_retry(d: &[u8]) -> bool {
    matches!(d.first(), Some(b) if b & 0x80 != 0 && (b >> 4) & 0x03 == 3)
}

impl AsyncUdpSocket for LateRetriedInitials {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &quinn::udp::Transmit) -> io::Result<()> {
        if self.heard_after_retry.load(Ordering::Relaxed) || !carries_retry_token(t.contents) {
            return self.inner.try_send(t);
        }
        let inner = self.inner.clone();
        let delay = self.delay;
        let (destination, ecn, segment_size, src_ip) =
            (t.destination, t.ecn, t.segment_size, t.src_ip);
        let contents = t.contents.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inner.try_send(&quinn::udp::Transmit {
                destination,
                ecn,
                contents: &contents,
                segment_size,
                src_ip,
            });
        });
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &polled {
            for (buf, m) in bufs.iter().zip(meta.iter()).take(*n) {
                if m.len > 0 && !is_retry(&buf[..m.len]) {
                    self.heard_after_retry.store(true, Ordering::Relaxed);
                }
            }
        }
        polled
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A running in-process aggregator with the production defaults.
struct Aggregator {
    quic: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_aggregator(dir: &Path, pki: &DevPki, server: &str) -> Aggregator {
    let path = dir.join("aggregator.toml");
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let toml = aggregator_toml(pki, &dir.join("aggregator"), any_port, None, "").replacen(
        "[server]\n",
        &format!("[server]\n{server}"),
        1,
    );
    std::fs::write(&path, toml).unwrap();
    let cfg =
        ferrule_config::load_validated::<ferrule_aggregator::config::Config>(&path, "FERRULE")
            .unwrap()
            .value;
    assert!(cfg.server.retry, "production default: Retry on");
    let (stop, mut stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(ferrule_aggregator::server::run(
        cfg,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
        move |r| {
            let _ = ready_tx.send(r);
        },
    ));
    let running = ready_rx.await.unwrap();
    Aggregator {
        quic: running.quic_addr,
        stop,
        task,
    }
}

/// How a burst went.
#[derive(Debug, Default)]
struct Tally {
    connected: AtomicUsize,
    invalid_token: AtomicUsize,
    /// Attempts refused at once by the handshake gate.
    busy: AtomicUsize,
    /// The longest a refused-as-busy attempt took, milliseconds.
    busy_slowest_ms: AtomicUsize,
    other_failures: AtomicUsize,
}

/// One client: a handshake and Hello until Welcome, retried (like an agent)
/// after any failure but INVALID_TOKEN, which is what the tests look for.
async fn client(
    pki: DevPki,
    addr: SocketAddr,
    id: String,
    late: Option<Duration>,
    tally: Arc<Tally>,
    give_up: Instant,
) -> Option<quinn::Connection> {
    let (cert, key) = pki.agent_paths("burst", &id);
    let crypto = client_crypto(
        &ClientTls {
            cert,
            key,
            server_ca: pki.ca_bundle(),
        },
        &ferrule_transport::Refusals::new(),
    )
    .unwrap();
    let limits = EndpointLimits::default();
    let ep = client_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), crypto, &limits).unwrap();
    if let Some(delay) = late {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket).unwrap();
        ep.rebind_abstract(Arc::new(LateRetriedInitials {
            inner,
            delay,
            heard_after_retry: AtomicBool::new(false),
        }))
        .unwrap();
    }
    let mut backoff = Duration::from_millis(100);
    while Instant::now() < give_up {
        let attempt = Instant::now();
        match session(&ep, addr, &id).await {
            Ok(conn) => {
                tally.connected.fetch_add(1, Ordering::Relaxed);
                return Some(conn);
            }
            Err(Failure::InvalidToken) => {
                tally.invalid_token.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(Failure::Busy) => {
                tally.busy.fetch_add(1, Ordering::Relaxed);
                let took = usize::try_from(attempt.elapsed().as_millis()).unwrap_or(usize::MAX);
                tally.busy_slowest_ms.fetch_max(took, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(Failure::Other(e)) => {
                tally.other_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("{id}: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    None
}

enum Failure {
    InvalidToken,
    /// The aggregator's handshake gate was full (CONNECTION_REFUSED).
    Busy,
    Other(String),
}

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure::Other(e.to_string())
}

async fn session(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    id: &str,
) -> Result<quinn::Connection, Failure> {
    let conn = match ep.connect(addr, "localhost").map_err(failure)?.await {
        Ok(c) => c,
        Err(quinn::ConnectionError::ConnectionClosed(c))
            if c.error_code == quinn::TransportErrorCode::INVALID_TOKEN =>
        {
            return Err(Failure::InvalidToken)
        }
        Err(e) if ferrule_transport::classify(&e) == "server_busy" => return Err(Failure::Busy),
        Err(e) => return Err(failure(e)),
    };
    let (send, recv) = conn.open_bi().await.map_err(failure)?;
    let limits = Limits::default();
    let mut ctl = FrameSender::new(send, limits);
    let mut ctl_rx = FrameReceiver::new(recv, limits, Duration::from_secs(30));
    let mut s = AgentSession::new(
        AgentConfig::new("burst", id, "test"),
        (Epoch(1), Seq(1)),
        Instant::now(),
    );
    while let Some(m) = s.poll_transmit() {
        ctl.send(&m).await.map_err(failure)?;
    }
    while !s.is_established() {
        match ctl_rx.next().await.map_err(failure)? {
            Some((m, _)) => s
                .handle(m, ferrule_transport::session_now())
                .map_err(failure)?,
            None => return Err(failure("aggregator closed before Welcome")),
        }
    }
    Ok(conn)
}

/// One burst at a time: two at once would be 600 clients on two cores, and
/// `cargo test` runs a file's tests in parallel.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn bursts(rounds: usize, late: Option<Duration>) {
    bursts_of(CLIENTS, rounds, late, "").await;
}

/// Runs `rounds` bursts of `clients` against an aggregator with `server`
/// settings added; every client must get a session in every round.
async fn bursts_of(
    clients: usize,
    rounds: usize,
    late: Option<Duration>,
    server: &str,
) -> Vec<Arc<Tally>> {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let issue = pki.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..clients {
            issue.agent("burst", &format!("a{i}")).unwrap();
        }
    })
    .await
    .unwrap();
    let agg = start_aggregator(dir.path(), &pki, server).await;
    let mut tallies = Vec::new();
    for round in 0..rounds {
        let tally = Arc::new(Tally::default());
        let started = Instant::now();
        let give_up = started + Duration::from_secs(60);
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                tokio::spawn(client(
                    pki.clone(),
                    agg.quic,
                    format!("a{i}"),
                    late,
                    tally.clone(),
                    give_up,
                ))
            })
            .collect();
        let mut conns = Vec::new();
        for c in tasks {
            conns.extend(c.await.unwrap());
        }
        let connected = tally.connected.load(Ordering::Relaxed);
        let invalid = tally.invalid_token.load(Ordering::Relaxed);
        let other = tally.other_failures.load(Ordering::Relaxed);
        let busy = tally.busy.load(Ordering::Relaxed);
        eprintln!(
            "round {round}: {connected}/{clients} connected in {:.1} s; {invalid} refused with INVALID_TOKEN; {busy} refused as busy (slowest refusal {} ms); {other} other failed attempts (retried)",
            started.elapsed().as_secs_f64(),
            tally.busy_slowest_ms.load(Ordering::Relaxed),
        );
        assert_eq!(invalid, 0, "clients refused with an invalid Retry token");
        assert_eq!(connected, clients, "every client gets a session");
        tallies.push(tally);
        for c in &conns {
            c.close(0u32.into(), b"done");
        }
        drop(conns);
        // Let the aggregator see the sessions go before the next burst.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = agg.stop.send(true);
    agg.task.await.unwrap().unwrap();
    tallies
}

/// A storm beyond the handshake limit: the excess is told `server_busy` at
/// once and comes back; everyone gets in, and no attempt fails any other way
/// (none waited out a timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_beyond_the_handshake_limit_is_refused_at_once_and_everyone_gets_in() {
    let tallies = bursts_of(120, 1, None, "max_pending_handshakes = 4\n").await;
    let t = &tallies[0];
    let busy = t.busy.load(Ordering::Relaxed);
    assert!(
        busy > 0,
        "120 clients at once against a limit of 4: some refused as busy"
    );
    let slowest = t.busy_slowest_ms.load(Ordering::Relaxed);
    assert!(
        slowest < 5_000,
        "a refusal comes at once, not after a handshake timeout: slowest {slowest} ms"
    );
    assert_eq!(
        t.other_failures.load(Ordering::Relaxed),
        0,
        "no attempt failed other than busy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "300 handshakes x 3 rounds: tens of seconds on two cores"]
async fn a_burst_of_300_handshakes_all_get_sessions_round_after_round() {
    bursts(3, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "waits out a Retry token's old 15 s lifetime"]
async fn a_burst_whose_retried_initials_arrive_late_is_still_let_in() {
    bursts(1, Some(LATE_BY)).await;
}

#[test]
fn the_impairment_recognises_retried_initials() {
    // Long header Initial (0xc0), version 1, DCID of 8, SCID of 8, token of 2.
    let mut d = vec![0xc0, 0, 0, 0, 1, 8];
    d.extend([0; 8]);
    d.push(8);
    d.extend([0; 8]);
    let mut with_token = d.clone();
    with_token.extend([2, 0xaa, 0xbb]);
    d.push(0);
    assert!(carries_retry_token(&with_token));
    assert!(!carries_retry_token(&d));
    // A two-byte varint token length.
    let mut long = d.clone();
    long.pop();
    long.extend([0x40, 0x30]);
    assert!(carries_retry_token(&long));
    // A Handshake packet (type 2) and a short header are not Initials.
    let mut hs = with_token.clone();
    hs[0] = 0xe0;
    assert!(!carries_retry_token(&hs));
    assert!(!carries_retry_token(&[0x40, 1, 2, 3]));
    assert!(is_retry(&[0xf0, 0, 0, 0, 1]));
    assert!(!is_retry(&with_token));
}

/// A client socket that goes silent once it has sent its Initial answering
/// the Retry: the server starts the handshake (a slot of the gate taken) and
/// never hears the client's Finished. A host doing this on purpose tries to
/// hold every handshake slot.
#[derive(Debug)]
struct SilentAfterRetry {
    inner: Arc<dyn AsyncUdpSocket>,
    answered_retry: AtomicBool,
}

impl AsyncUdpSocket for SilentAfterRetry {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &quinn::udp::Transmit) -> io::Result<()> {
        if self.answered_retry.load(Ordering::Relaxed) {
            return Ok(());
        }
        if carries_retry_token(t.contents) {
            self.answered_retry.store(true, Ordering::Relaxed);
        }
        self.inner.try_send(t)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Hosts starting handshakes they never finish hold only their share: each
/// address at most its per-address slots, and when two of them fill every
/// slot between them, an agent from a third address takes a slot back from
/// the biggest holder and gets in at once. Without the per-address share one
/// silent host took every slot; with the share but no taking back, a few
/// addresses did (a hostile review locked the defaults, 256 slots, with 8),
/// for as long as they kept going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_that_never_finish_their_handshakes_hold_only_their_share() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let issue = pki.clone();
    tokio::task::spawn_blocking(move || {
        issue.agent("burst", "silent").unwrap();
        issue.agent("burst", "good").unwrap();
    })
    .await
    .unwrap();
    let agg = start_aggregator(
        dir.path(),
        &pki,
        "max_pending_handshakes = 8\nmax_pending_handshakes_per_address = 4\n",
    )
    .await;
    let crypto_for = |id: &str| {
        let (cert, key) = pki.agent_paths("burst", id);
        client_crypto(
            &ClientTls {
                cert,
                key,
                server_ca: pki.ca_bundle(),
            },
            &ferrule_transport::Refusals::new(),
        )
        .unwrap()
    };
    // Twelve silent handshakes from 127.0.0.1 and 127.0.0.3: their shares
    // (4 each) fill all 8 slots.
    let mut silent = Vec::new();
    for n in 0..12u8 {
        let from = [127, 0, 0, 1 + 2 * (n % 2)];
        let ep = client_endpoint(
            SocketAddr::from((from, 0)),
            crypto_for("silent"),
            &EndpointLimits::default(),
        )
        .unwrap();
        let socket = std::net::UdpSocket::bind(SocketAddr::from((from, 0))).unwrap();
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket).unwrap();
        ep.rebind_abstract(Arc::new(SilentAfterRetry {
            inner,
            answered_retry: AtomicBool::new(false),
        }))
        .unwrap();
        let connecting = ep.connect(agg.quic, "localhost").unwrap();
        silent.push((ep, tokio::spawn(async move { connecting.await.is_ok() })));
    }
    // Let them take what they can.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // An agent from another address: in at the first attempt.
    let ep = client_endpoint(
        SocketAddr::from(([127, 0, 0, 2], 0)),
        crypto_for("good"),
        &EndpointLimits::default(),
    )
    .unwrap();
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), session(&ep, agg.quic, "good")).await;
    match got {
        Ok(Ok(conn)) => conn.close(0u32.into(), b"done"),
        Ok(Err(Failure::Busy)) => panic!("refused as busy: the silent hosts hold every slot"),
        Ok(Err(Failure::InvalidToken)) => panic!("refused with INVALID_TOKEN"),
        Ok(Err(Failure::Other(e))) => panic!("the agent from another address failed: {e}"),
        Err(_) => panic!("no session within 5 s"),
    }
    eprintln!("the other agent got in after {:?}", started.elapsed());
    for (ep, t) in silent {
        t.abort();
        ep.close(0u32.into(), b"done");
    }
    let _ = agg.stop.send(true);
    agg.task.await.unwrap().unwrap();
}
