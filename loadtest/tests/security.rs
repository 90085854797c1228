//! Security acceptance tests of the transport, against the real binaries: a
//! `ferrule-aggregator` (and `ferrule-agent`s) started as processes on loopback,
//! certificates made with the certs library (or, where it rightly refuses, with
//! rcgen and the same issuing CA), real QUIC.
//!
//! What each test holds the product to:
//! - every bad client certificate is refused before a session exists, counted by
//!   reason in `ferrule_aggregator_connections_refused_total`, and commits nothing,
//!   while a good certificate on the same aggregator commits the same messages;
//! - who an agent is, and which site it writes, comes from its certificate;
//! - hostile peers (garbage, a 4 GiB frame header, a trickled frame) are cut off
//!   and counted while honest agents keep their rate and lose nothing;
//! - a peer cannot open more streams than configured, and 0-RTT is off.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

#![allow(clippy::unwrap_used)]

use ferrule_certs::{AgentIdentity, IssueOptions, RevocationReason};
use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use ferrule_transport::quinn;
use ferrule_transport::{
    classify, client_crypto, client_endpoint, close_code, server_crypto, ClientTls, EndpointLimits,
    FrameReceiver, FrameSender, Refusals, ServerTls, ALPN,
};
use ferrule_wire::{
    encode, Batch, Capabilities, Define, Epoch, ErrorCode, ErrorMessage, Hello, Limits, Message,
    Quality, SensorId, SensorKind, SensorName, Seq, Series, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};

const REFUSED: &str = "ferrule_aggregator_connections_refused_total";
const CONNECTIONS: &str = "ferrule_aggregator_connections_total";
const BATCHES_RECEIVED: &str = "ferrule_aggregator_batches_received_total";

// ---------------------------------------------------------------- processes

/// Runs blocking process and HTTP helpers off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Where a running aggregator answers, and where it keeps its data and log.
#[derive(Debug, Clone)]
struct Agg {
    quic: SocketAddr,
    metrics: SocketAddr,
    data: PathBuf,
    log: PathBuf,
}

impl Agg {
    async fn metrics_text(&self) -> String {
        let addr = self.metrics;
        blocking(move || procs::http_get(addr, "/metrics").unwrap()).await
    }

    async fn inspect(&self) -> Value {
        let data = self.data.clone();
        blocking(move || procs::inspect(&data).unwrap()).await
    }

    fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// Polls /metrics until `series` reaches `at_least`; the exposition then.
    async fn wait_metric(&self, series: &str, at_least: f64, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.metrics_text().await;
            if procs::metric(&text, series).unwrap_or(0.0) >= at_least {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{series} did not reach {at_least} within {within:?}; refusals: {:?}\naggregator log:\n{}",
                refusals(&text),
                self.log_text()
            );
            sleep(Duration::from_millis(200)).await;
        }
    }
}

fn read_log(path: &Path) -> String {
    procs::strip_ansi(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The aggregator process (killed on drop) and how to reach it.
struct Aggregator {
    _proc: Proc,
    at: Agg,
}

/// Starts the real aggregator on free ports with the DevPki's TLS files (its CRL
/// included) and `server_keys` added to its `[server]` section; returns once
/// /metrics answers (the QUIC endpoint is bound before the metrics listener).
async fn start_aggregator(dir: &Path, pki: &DevPki, server_keys: &str) -> Aggregator {
    let (dir, pki, server_keys) = (dir.to_path_buf(), pki.clone(), server_keys.to_string());
    blocking(move || {
        let quic = SocketAddr::from(([127, 0, 0, 1], procs::free_udp_port().unwrap()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port().unwrap()));
        let data = dir.join("aggregator-data");
        // aggregator_toml writes a `[server]` table holding only `listen`; our keys
        // join that table rather than open a second one.
        let toml = procs::aggregator_toml(&pki, &data, quic, Some(metrics), "").replacen(
            "[server]\n",
            &format!("[server]\n{server_keys}"),
            1,
        );
        let config = dir.join("aggregator.toml");
        std::fs::write(&config, toml).unwrap();
        let log = dir.join("aggregator.log");
        let bin = procs::bin("ferrule-aggregator").unwrap();
        let mut proc = Proc::start("aggregator", &bin, &config, &log).unwrap();
        let ready = procs::wait_for(Duration::from_secs(20), || {
            if !proc.is_running() {
                return Some(false);
            }
            procs::http_get(metrics, "/metrics").ok().map(|_| true)
        });
        assert_eq!(
            ready,
            Some(true),
            "the aggregator did not come up:\n{}",
            read_log(&log)
        );
        Aggregator {
            _proc: proc,
            at: Agg {
                quic,
                metrics,
                data,
                log,
            },
        }
    })
    .await
}

/// Every `reason` the aggregator counted a refusal for, with its count.
fn refusals(text: &str) -> Vec<(String, f64)> {
    let prefix = format!("{REFUSED}{{reason=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (reason, value) = rest.split_once("\"} ")?;
            let v: f64 = value.trim().parse().ok()?;
            // Every reason is published at 0 from the start; only counted ones matter.
            (v > 0.0).then(|| (reason.to_string(), v))
        })
        .collect()
}

fn refused_series(reason: &str) -> String {
    format!("{REFUSED}{{reason=\"{reason}\"}}")
}

fn metric0(text: &str, series: &str) -> f64 {
    procs::metric(text, series).unwrap_or(0.0)
}

/// The agent keys (`site/agent`) an `inspect` report holds.
fn agent_keys(report: &Value) -> Vec<String> {
    report["agents"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

// ---------------------------------------------------------------- certificates

/// Leaf parameters as the certs library makes them for an agent: URI SAN
/// `ferrule://site/SITE/agent/AGENT`, clientAuth, not a CA.
fn agent_params(site: &str, agent: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "ferrule");
    p.distinguished_name.push(DnType::CommonName, agent);
    let uri = format!("ferrule://site/{site}/agent/{agent}");
    p.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri).unwrap())];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    p
}

/// Signs an agent certificate with the PKI's real issuing CA, valid from
/// `not_before` to `not_after`, and writes it (leaf then issuing CA) and its key
/// where `DevPki::agent_paths` puts agent files. The certs library refuses to make
/// such certificates; an attacker with a stolen old one, or a clock-skewed CA, has one.
fn issue_with_validity(
    pki: &DevPki,
    site: &str,
    agent: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> (PathBuf, PathBuf) {
    let ca_pem = std::fs::read_to_string(pki.issuing_ca()).unwrap();
    let ca_key = std::fs::read_to_string(pki.dir.join("issuing-ca.key")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key).unwrap()).unwrap();
    let mut params = agent_params(site, agent);
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = pki.agent_paths(site, agent);
    std::fs::write(&cert_path, format!("{}\n{ca_pem}", cert.pem())).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// TLS for an agent presenting `cert`/`key` and trusting the PKI's bundle, exactly
/// as the agent builds it.
fn agent_tls(pki: &DevPki, cert: &Path, key: &Path) -> rustls::ClientConfig {
    agent_tls_reporting(pki, cert, key, &Refusals::new())
}

/// [`agent_tls`] whose verifier reports the server certificates it refuses
/// to `refusals`.
fn agent_tls_reporting(
    pki: &DevPki,
    cert: &Path,
    key: &Path,
    refusals: &Arc<Refusals>,
) -> rustls::ClientConfig {
    client_crypto(
        &ClientTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            server_ca: pki.ca_bundle(),
        },
        refusals,
    )
    .unwrap()
}

/// TLS for a valid agent `site/agent` of `pki` (issued on first use).
fn valid_tls(pki: &DevPki, site: &str, agent: &str) -> rustls::ClientConfig {
    let (cert, key) = pki.agent(site, agent).unwrap();
    agent_tls(pki, &cert, &key)
}

/// A client endpoint on loopback with the product's limits.
fn endpoint(tls: rustls::ClientConfig) -> quinn::Endpoint {
    client_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
        &EndpointLimits::default(),
    )
    .unwrap()
}

// ---------------------------------------------------------------- protocol

fn hello(site: &str, agent: &str) -> Message {
    Message::Hello(Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        epoch: Epoch(1),
        resume_from: Seq(1),
        capabilities: Capabilities::ALL,
        site: site.to_string(),
        agent: agent.to_string(),
        software: "security-test".to_string(),
    })
}

fn define(sensor: u32, name: &str) -> Message {
    Message::Define(Define {
        sensor: SensorId(sensor),
        name: SensorName::new(name).unwrap(),
        unit: "V".to_string(),
        kind: SensorKind::Gauge,
    })
}

/// A batch of 10 samples of `sensor` in epoch 1.
fn batch(seq: u64, sensor: u32) -> Message {
    let mut s = Series::new(SensorId(sensor));
    for i in 0..10 {
        s.push(
            1_767_225_600_000_000_000 + i * 1_000_000,
            230.0,
            Quality::Good,
        );
    }
    Message::Batch(Batch {
        epoch: Epoch(1),
        seq: Seq(seq),
        clock_offset_ns: 0,
        series: vec![s],
    })
}

fn frame(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(msg, &Limits::default(), &mut out).unwrap();
    out
}

/// What a client saw of one attempt at a session.
#[derive(Debug)]
enum Attempt {
    /// The QUIC/TLS handshake failed on the client's side.
    Handshake(quinn::ConnectionError),
    /// The handshake completed here but no Welcome came: the server's Error
    /// message if one arrived first, and how the connection ended.
    Refused {
        error: Option<ErrorMessage>,
        closed: quinn::ConnectionError,
    },
    /// A Welcome arrived: the session is up. The streams are kept (dropping the
    /// sender would finish the control stream and end the session).
    Welcomed(quinn::Connection, FrameSender, FrameReceiver),
}

impl Attempt {
    /// How the connection ended, for a refused attempt.
    fn failure(&self) -> &quinn::ConnectionError {
        match self {
            Attempt::Handshake(e) | Attempt::Refused { closed: e, .. } => e,
            Attempt::Welcomed(..) => panic!("the session came up (Welcome received)"),
        }
    }
}

/// Connects, opens the control stream, sends `first` at once (a hostile client
/// does not wait for Welcome) and reads what comes back.
async fn attempt(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    first: &[Message],
) -> Attempt {
    let connecting = ep.connect(addr, server_name).unwrap();
    let conn = match timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Attempt::Handshake(e),
        Err(_) => panic!("the handshake neither completed nor failed within 10 s"),
    };
    let closed = |conn: quinn::Connection| async move {
        timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("no Welcome, and the connection is still open 5 s later")
    };
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            return Attempt::Refused {
                error: None,
                closed: e,
            }
        }
    };
    let mut tx = FrameSender::new(send, Limits::default());
    let mut rx = FrameReceiver::new(recv, Limits::default(), Duration::from_secs(10));
    for m in first {
        // A refused peer's writes may fail: the read below tells what happened.
        if tx.send(m).await.is_err() {
            break;
        }
    }
    match timeout(Duration::from_secs(10), rx.next()).await {
        Ok(Ok(Some((Message::Welcome(_), _)))) => Attempt::Welcomed(conn, tx, rx),
        Ok(Ok(Some((Message::Error(e), _)))) => Attempt::Refused {
            error: Some(e),
            closed: closed(conn).await,
        },
        Ok(Ok(Some((other, _)))) => panic!("{} before any Welcome", other.kind()),
        Ok(Ok(None) | Err(_)) => Attempt::Refused {
            error: None,
            closed: closed(conn).await,
        },
        Err(_) => panic!("no Welcome, no Error and no close within 10 s"),
    }
}

/// Asserts the server cut the connection off with `code` and `reason`.
fn assert_cut_off(e: &quinn::ConnectionError, code: ErrorCode, reason: &str) {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                (
                    c.error_code,
                    String::from_utf8_lossy(&c.reason).into_owned()
                ),
                (close_code(code), reason.to_string()),
                "close code and reason"
            );
        }
        other => panic!("expected the server to close with {code:?} {reason:?}, got {other}"),
    }
}

/// Asserts the server closed the connection with `code` (whatever the text).
fn assert_closed_with(e: &quinn::ConnectionError, code: ErrorCode) {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, close_code(code), "{e}")
        }
        other => panic!("expected the server to close with {code:?}, got {other}"),
    }
}

// ---------------------------------------------------------------- 1. bad certificates

/// The messages every bad client sends at once; if the server let it in, the batch
/// would be committed (the good control below shows it is).
fn bad_first(site: &str, agent: &str, seq: u64) -> Vec<Message> {
    vec![hello(site, agent), define(1, "feeder-1/va"), batch(seq, 1)]
}

/// One bad-certificate case against a fresh aggregator: the client claiming
/// `site/agent` with `tls` and `server_name` must see a failure before any Welcome;
/// the aggregator must count it as `server_reason` (when the server is the side
/// that detects it), complete no handshake, and commit nothing; a good agent on the
/// same aggregator, sending the same messages, is welcomed and committed.
/// Returns the client's and the server's labels.
async fn assert_refused(
    dir: &Path,
    pki: &DevPki,
    tls: rustls::ClientConfig,
    server_name: &str,
    (site, agent): (&str, &str),
    server_reason: Option<&str>,
) -> (&'static str, Vec<(String, f64)>) {
    let agg = start_aggregator(dir, pki, "").await;
    let at = &agg.at;

    let bad = endpoint(tls);
    let attempt = attempt(&bad, at.quic, server_name, &bad_first(site, agent, 1)).await;
    let failure = attempt.failure();
    let client_label = classify(failure);
    eprintln!(
        "[{site}/{agent}] client saw: {failure} (classified {client_label:?}); attempt {attempt:?}"
    );

    let text = match server_reason {
        Some(reason) => {
            at.wait_metric(&refused_series(reason), 1.0, Duration::from_secs(5))
                .await
        }
        None => {
            // Detected by the client: give the server a moment to count whatever it saw.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let text = at.metrics_text().await;
                if !refusals(&text).is_empty() || Instant::now() >= deadline {
                    break text;
                }
                sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let server_labels = refusals(&text);
    eprintln!("[{site}/{agent}] aggregator counted {server_labels:?}");
    assert_eq!(
        metric0(&text, CONNECTIONS),
        0.0,
        "a handshake completed on the server for a bad certificate"
    );
    assert_eq!(metric0(&text, BATCHES_RECEIVED), 0.0, "a batch was read");

    // Control: a good certificate sending the same messages is let in and committed,
    // so the refusal above is the certificate's doing and "nothing committed" means
    // something.
    let good = endpoint(valid_tls(pki, "s", "control"));
    let up = attempt_up(&good, at.quic, &bad_first("s", "control", 2)).await;
    let report = wait_committed(at, "s/control", 10).await;
    drop(up);
    assert_eq!(
        agent_keys(&report),
        vec!["s/control".to_string()],
        "only the good agent's data is in the log"
    );
    let text = at.metrics_text().await;
    assert_eq!(
        metric0(&text, CONNECTIONS),
        1.0,
        "only the good agent got in"
    );
    (client_label, server_labels)
}

/// Attempts a session that must come up.
async fn attempt_up(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    first: &[Message],
) -> (quinn::Connection, FrameSender, FrameReceiver) {
    match attempt(ep, addr, "localhost", first).await {
        Attempt::Welcomed(c, tx, rx) => (c, tx, rx),
        other => panic!("a valid agent was refused: {other:?}"),
    }
}

/// Polls `inspect` until `key` has `events` samples committed.
async fn wait_committed(at: &Agg, key: &str, events: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = at.inspect().await;
        if report["agents"][key]["events"].as_u64() == Some(events) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "{key} did not get {events} events committed: {report}\n{}",
            at.log_text()
        );
        sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    // A TLS 1.3 client with the right ALPN and trust, presenting no certificate.
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.ca_bundle()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let (client, _) = assert_refused(
        dir.path(),
        &pki,
        tls,
        "localhost",
        ("s", "anonymous"),
        Some("no_client_certificate"),
    )
    .await;
    assert_eq!(client, "no_client_certificate", "what the client is told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_certificate_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let other = DevPki::ensure(&dir.path().join("other-pki")).unwrap();
    let (cert, key) = other.agent("s", "foreign").unwrap();
    // Trusts the real server; presents a certificate the aggregator's CA never issued.
    let tls = agent_tls(&pki, &cert, &key);
    let (client, _) = assert_refused(
        dir.path(),
        &pki,
        tls,
        "localhost",
        ("s", "foreign"),
        Some("unknown_ca"),
    )
    .await;
    assert_eq!(client, "unknown_ca", "what the client is told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_self_signed_certificate_with_a_valid_looking_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = agent_params("s", "a").self_signed(&key).unwrap();
    let cert_path = dir.path().join("self-signed.crt");
    let key_path = dir.path().join("self-signed.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let tls = agent_tls(&pki, &cert_path, &key_path);
    let (client, _) = assert_refused(
        dir.path(),
        &pki,
        tls,
        "localhost",
        ("s", "a"),
        Some("unknown_ca"),
    )
    .await;
    assert_eq!(client, "unknown_ca", "what the client is told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = issue_with_validity(
        &pki,
        "s",
        "expired",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let tls = agent_tls(&pki, &cert, &key);
    let (client, _) = assert_refused(
        dir.path(),
        &pki,
        tls,
        "localhost",
        ("s", "expired"),
        Some("expired"),
    )
    .await;
    assert_eq!(client, "expired", "what the client is told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_not_yet_valid_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = issue_with_validity(
        &pki,
        "s",
        "early",
        now + time::Duration::days(1),
        now + time::Duration::days(30),
    );
    let tls = agent_tls(&pki, &cert, &key);
    let (client, _) = assert_refused(
        dir.path(),
        &pki,
        tls,
        "localhost",
        ("s", "early"),
        Some("not_yet_valid"),
    )
    .await;
    // TLS has one alert for "expired" and "not yet valid" (RFC 8446,
    // certificate_expired): the client is told that; the aggregator, which
    // refused it, counted the exact reason above from rustls's typed error.
    assert_eq!(client, "expired", "what the client is told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_revoked_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let identity = AgentIdentity::new("s", "revoked").unwrap();
    let issued = ferrule_certs::issue_agent(&pki.dir, &identity, &IssueOptions::default()).unwrap();
    ferrule_certs::revoke(&pki.dir, &issued.serial, RevocationReason::KeyCompromise).unwrap();
    // The aggregator starts after the revocation and loads the CRL (aggregator_toml
    // passes the DevPki's crl.pem).
    let tls = agent_tls(&pki, &issued.cert, &issued.key);
    let (client, _) = assert_refused(
        dir.path(),
        &pki,
        tls,
        "localhost",
        ("s", "revoked"),
        Some("revoked"),
    )
    .await;
    assert_eq!(client, "revoked", "what the client is told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_server_with_the_wrong_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    // A valid agent; the server certificate names localhost and 127.0.0.1 only.
    let (cert, key) = pki.agent("s", "misdirected").unwrap();
    let verdicts = Refusals::new();
    let tls = agent_tls_reporting(&pki, &cert, &key, &verdicts);
    let (client, server) = assert_refused(
        dir.path(),
        &pki,
        tls,
        "wrong.example",
        ("s", "misdirected"),
        None,
    )
    .await;
    // The alert it sends says only bad_certificate; its verifier knew why,
    // from rustls's typed error.
    assert_eq!(client, "bad_certificate", "the alert the client sent");
    assert_eq!(
        verdicts.take_last(),
        Some("wrong_server_name"),
        "the client's own verdict"
    );
    // The client's alert reaches the aggregator, which counts the failed handshake
    // as the agent refusing the aggregator's certificate: not `unknown_ca` &
    // co., which name a problem with the agent's certificate.
    assert_eq!(
        server,
        vec![("peer_refused_server_certificate".to_string(), 1.0)],
        "the aggregator did not count the aborted handshake as refused by the agent"
    );
}

/// Bad cases through the real agent binary: what an operator sees on the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_reports_refusals_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    // Placed where DevPki::agent finds them, so agent_toml uses them as they are.
    issue_with_validity(
        &pki,
        "s",
        "expired",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let agg = start_aggregator(dir.path(), &pki, "").await;
    let at = agg.at.clone();

    // A key that is not the certificate's: the agent must say so at once.
    pki.agent("s", "badkey").unwrap();
    let (_, other_key) = pki.agent("s", "other").unwrap();
    let mut agents = Vec::new();
    for (id, server_name) in [
        ("expired", "localhost"),
        ("misdirected", "wrong.example"),
        ("badkey", "localhost"),
    ] {
        let metrics = SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port().unwrap()));
        let spec = AgentSpec {
            site: "s".into(),
            id: id.into(),
            spool: dir.path().join(format!("spool-{id}")),
            endpoints: vec![at.quic.to_string()],
            rate_hz: 10,
            total_samples: None,
            fsync: "interval",
            metrics: Some(metrics),
            extra: String::new(),
        };
        // agent_toml always names the server `localhost`.
        let mut toml = procs::agent_toml(&pki, &spec).unwrap().replace(
            "server_name = \"localhost\"",
            &format!("server_name = \"{server_name}\""),
        );
        if id == "badkey" {
            let (_, own) = pki.agent_paths("s", "badkey");
            toml = toml.replace(
                &format!("{:?}", own.display().to_string()),
                &format!("{:?}", other_key.display().to_string()),
            );
            assert!(toml.contains("agent-s-other.key"), "{toml}");
        }
        let config = dir.path().join(format!("agent-{id}.toml"));
        std::fs::write(&config, toml).unwrap();
        let log = dir.path().join(format!("agent-{id}.log"));
        let bin = procs::bin("ferrule-agent").unwrap();
        let proc = Proc::start(id, &bin, &config, &log).unwrap();
        agents.push((id, proc, metrics, log));
    }

    // (agent, counted reason, the fine cause in the log line)
    for (id, reason, detail) in [
        ("expired", "refused_by_server", "expired"),
        (
            "misdirected",
            "server_certificate_refused",
            "wrong_server_name",
        ),
        ("badkey", "tls_local_config", "agent-s-other.key"),
    ] {
        let (_, _, metrics, log) = agents.iter().find(|a| a.0 == id).unwrap();
        let (metrics, log) = (*metrics, log.clone());
        let series = format!("ferrule_agent_session_failures_total{{reason=\"{reason}\"}}");
        let text = blocking(move || {
            // Logged and counted at once: the first attempt fails within a
            // second or two, and its failure is not held back.
            procs::wait_for(Duration::from_secs(8), || {
                let text = procs::http_get(metrics, "/metrics").ok()?;
                (metric0(&text, &series) > 0.0).then_some(text)
            })
        })
        .await;
        let log_text = read_log(&log);
        let text = text.unwrap_or_else(|| {
            panic!("agent {id}: no session failure counted as {reason:?}\n{log_text}")
        });
        assert_eq!(
            metric0(&text, "ferrule_agent_sessions_total"),
            0.0,
            "agent {id} had a session up"
        );
        assert_eq!(metric0(&text, "ferrule_agent_uplink_up"), 0.0);
        let line = log_text
            .lines()
            .find(|l| l.contains("uplink session failed"))
            .unwrap_or_else(|| panic!("agent {id}: no failure logged:\n{log_text}"));
        assert!(
            line.contains("ERROR")
                && line.contains(&format!("reason={reason:?}"))
                && line.contains(detail),
            "agent {id}: the failure line names no reason {reason:?} and cause {detail:?}: {line}"
        );
        assert_eq!(
            log_text
                .lines()
                .filter(|l| l.contains("uplink session failed") && !l.contains("failed again"))
                .count(),
            1,
            "agent {id}: a repeated cause is logged once:\n{log_text}"
        );
        let health = blocking(move || procs::http_get(metrics, "/healthz")).await;
        assert!(
            health.as_ref().is_ok_and(|h| h.contains(reason)),
            "agent {id}: /healthz does not give the uplink's reason {reason:?}: {health:?}"
        );
        eprintln!("agent {id} logs: {line}");
    }

    let text = at
        .wait_metric(&refused_series("expired"), 1.0, Duration::from_secs(5))
        .await;
    eprintln!("aggregator counted {:?}", refusals(&text));
    assert_eq!(metric0(&text, CONNECTIONS), 0.0);
    let report = at.inspect().await;
    assert!(agent_keys(&report).is_empty(), "committed: {report}");
}

// ---------------------------------------------------------------- 2. identity

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let agg = start_aggregator(dir.path(), &pki, "").await;
    let at = &agg.at;
    let ep = endpoint(valid_tls(&pki, "s1", "a1"));

    // Each refusal must close with IDENTITY_MISMATCH, and must have told the agent
    // why with an Error message on the control stream first. Missing messages are
    // collected and asserted last, so the other checks still run.
    let mut no_error_message = Vec::new();

    // Hello claiming another site, then another agent id, with a valid s1/a1 certificate.
    for (n, (site, agent)) in [("s2", "a1"), ("s1", "a2")].into_iter().enumerate() {
        let case = format!("Hello as {site}/{agent}");
        let got = attempt(
            &ep,
            at.quic,
            "localhost",
            &bad_first(site, agent, n as u64 + 1),
        )
        .await;
        let Attempt::Refused { error, closed } = &got else {
            panic!("{case}: not refused: {got:?}");
        };
        assert_closed_with(closed, ErrorCode::IDENTITY_MISMATCH);
        match error {
            Some(e) => assert_eq!(e.code, ErrorCode::IDENTITY_MISMATCH, "{case}: {e:?}"),
            None => {
                no_error_message.push(format!("{case}: closed ({closed}) with no Error message"))
            }
        }
    }

    // A valid Hello, then a Define pinning site s2, on a data lane as agents send them.
    let (conn, _tx, mut rx) = attempt_up(&ep, at.quic, &[hello("s1", "a1")]).await;
    let mut lane = conn.open_uni().await.unwrap();
    let mut bytes = frame(&define(1, "site/s2/feeder-1/va"));
    bytes.extend(frame(&batch(3, 1)));
    lane.write_all(&bytes).await.unwrap();
    let read = timeout(Duration::from_secs(5), rx.next())
        .await
        .expect("Define for site s2: no answer and no close within 5 s");
    let closed = timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("Define for site s2: the connection stayed open");
    assert_closed_with(&closed, ErrorCode::IDENTITY_MISMATCH);
    match read {
        Ok(Some((Message::Error(e), _))) => {
            assert_eq!(e.code, ErrorCode::IDENTITY_MISMATCH, "{e:?}")
        }
        Ok(Some((other, _))) => panic!("Define for site s2: got {}", other.kind()),
        Ok(None) | Err(_) => no_error_message.push(format!(
            "Define for site s2: closed ({closed}) with no Error message"
        )),
    }

    let text = at
        .wait_metric(
            &refused_series("identity_mismatch"),
            3.0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(metric0(&text, &refused_series("identity_mismatch")), 3.0);

    // Control: the same certificate pinning its own site is accepted and committed;
    // nothing from the refused sessions (seqs 1-3) is in the log.
    let (conn, _tx, _rx) = attempt_up(&ep, at.quic, &[hello("s1", "a1")]).await;
    let mut lane = conn.open_uni().await.unwrap();
    let mut bytes = frame(&define(1, "site/s1/feeder-1/va"));
    bytes.extend(frame(&batch(10, 1)));
    lane.write_all(&bytes).await.unwrap();
    let report = wait_committed(at, "s1/a1", 10).await;
    assert_eq!(agent_keys(&report), vec!["s1/a1".to_string()], "{report}");
    assert_eq!(report["agents"]["s1/a1"]["batches"], 1, "{report}");
    assert_eq!(report["agents"]["s1/a1"]["last_seq"], 10, "{report}");

    assert!(
        no_error_message.is_empty(),
        "the aggregator closed without delivering its Error message (it closes the \
         connection right after queueing the message, which discards unsent stream \
         data):\n{}",
        no_error_message.join("\n")
    );
}

// ---------------------------------------------------------------- 3. hostile peers

/// Per-sensor rate of each good agent's synthetic input (7 sensors each).
const GOOD_RATE_HZ: u32 = 1000;
const GOOD_SAMPLES_PER_SEC: f64 = 7.0 * GOOD_RATE_HZ as f64;
const FRAME_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends bytes that are no protocol: a plausible length, an undefined type byte,
/// noise. (Fully random bytes almost always declare more than 1 MiB and are
/// refused as `frame_too_large` instead; the next attack covers that.)
async fn garbage_attack(ep: &quinn::Endpoint, addr: SocketAddr, seed: u64) {
    let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let mut junk = vec![0u8; 4 + 64];
    junk[..4].copy_from_slice(&64u32.to_le_bytes());
    let mut x = seed | 1;
    for b in &mut junk[5..] {
        // xorshift64: noise, reproducible from the seed.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let _ = send.write_all(&junk).await;
    let closed = timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("garbage: not cut off within 5 s");
    assert_cut_off(&closed, ErrorCode::MALFORMED, "malformed");
}

/// After Welcome, opens a data lane and declares a frame of 4 GiB.
async fn huge_frame_attack(ep: &quinn::Endpoint, addr: SocketAddr) {
    let (conn, _tx, _rx) = attempt_up(ep, addr, &[hello("plant", "hostile-huge")]).await;
    let mut lane = conn.open_uni().await.unwrap();
    let _ = lane.write_all(&[0xff, 0xff, 0xff, 0xff, 4]).await;
    let closed = timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("4 GiB frame header: not cut off within 5 s");
    assert_cut_off(&closed, ErrorCode::LIMIT_EXCEEDED, "frame_too_large");
}

/// After Welcome, trickles a Batch frame one byte every 300 ms on a data lane;
/// must be cut off about FRAME_TIMEOUT after its first byte.
async fn trickle_attack(ep: &quinn::Endpoint, addr: SocketAddr) {
    let (conn, _tx, _rx) = attempt_up(ep, addr, &[hello("plant", "hostile-trickle")]).await;
    let mut lane = conn.open_uni().await.unwrap();
    lane.write_all(&frame(&define(1, "feeder-1/va")))
        .await
        .unwrap();
    let bytes = frame(&batch(1, 1));
    // Longer than the deadline allows at this pace: it can never complete in time.
    assert!(Duration::from_millis(300) * bytes.len() as u32 > FRAME_TIMEOUT * 2);
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for b in bytes {
            if lane.write_all(&[b]).await.is_err() {
                return;
            }
            sleep(Duration::from_millis(300)).await;
        }
    });
    let closed = timeout(FRAME_TIMEOUT + Duration::from_millis(1500), conn.closed())
        .await
        .expect("trickled frame: not cut off within frame_timeout + 1.5 s");
    let took = start.elapsed();
    writer.abort();
    assert_cut_off(&closed, ErrorCode::TIMEOUT, "frame_timeout");
    assert!(
        took + Duration::from_millis(300) >= FRAME_TIMEOUT,
        "cut off after {took:?}, before the frame deadline"
    );
}

/// Samples per second each good agent committed between two `inspect` reports.
fn rates(a: &Value, b: &Value, secs: f64, keys: &[&str]) -> Vec<f64> {
    keys.iter()
        .map(|k| {
            let e = |r: &Value| r["agents"][*k]["events"].as_u64().unwrap_or(0) as f64;
            (e(b) - e(a)) / secs
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_cut_off_while_agents_keep_their_rate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let agg = start_aggregator(
        dir.path(),
        &pki,
        &format!("frame_timeout_secs = {}\n", FRAME_TIMEOUT.as_secs()),
    )
    .await;
    let at = agg.at.clone();

    let keys = ["plant/good-1", "plant/good-2"];
    let mut agents = Vec::new();
    for id in ["good-1", "good-2"] {
        let spec = AgentSpec {
            site: "plant".into(),
            id: id.into(),
            spool: dir.path().join(format!("spool-{id}")),
            endpoints: vec![at.quic.to_string()],
            rate_hz: GOOD_RATE_HZ,
            total_samples: None,
            fsync: "interval",
            metrics: None,
            // Small batches: commits come often, so rates over a few seconds are exact
            // to within a percent or two.
            extra: "[batch]\nmax_samples = 700\nmax_delay_ms = 50\n".into(),
        };
        let config = dir.path().join(format!("agent-{id}.toml"));
        std::fs::write(&config, procs::agent_toml(&pki, &spec).unwrap()).unwrap();
        let log = dir.path().join(format!("agent-{id}.log"));
        let bin = procs::bin("ferrule-agent").unwrap();
        agents.push(Proc::start(id, &bin, &config, &log).unwrap());
    }

    // Both committing, then a baseline.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = at.inspect().await;
        if keys
            .iter()
            .all(|k| r["agents"][*k]["events"].as_u64() > Some(0))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agents not committing: {r}\n{}",
            at.log_text()
        );
        sleep(Duration::from_millis(300)).await;
    }
    sleep(Duration::from_secs(1)).await;
    let (t0, r0) = (Instant::now(), at.inspect().await);
    sleep(Duration::from_secs(3)).await;
    let (t1, r1) = (Instant::now(), at.inspect().await);
    let baseline = rates(&r0, &r1, (t1 - t0).as_secs_f64(), &keys);
    eprintln!("baseline samples/s per agent: {baseline:?}");

    // Attacks, repeated for six seconds, three kinds at once.
    let garbage_ep = endpoint(valid_tls(&pki, "plant", "hostile-garbage"));
    let huge_ep = endpoint(valid_tls(&pki, "plant", "hostile-huge"));
    let trickle_ep = endpoint(valid_tls(&pki, "plant", "hostile-trickle"));
    let (t2, r2) = (Instant::now(), at.inspect().await);
    let until = Instant::now() + Duration::from_secs(6);
    let addr = at.quic;
    let garbage = tokio::spawn(async move {
        let mut n = 0u64;
        while Instant::now() < until {
            garbage_attack(&garbage_ep, addr, 0x9e37_79b9_7f4a_7c15 ^ n).await;
            n += 1;
            sleep(Duration::from_millis(250)).await;
        }
        n
    });
    let huge = tokio::spawn(async move {
        let mut n = 0u64;
        while Instant::now() < until {
            huge_frame_attack(&huge_ep, addr).await;
            n += 1;
            sleep(Duration::from_millis(250)).await;
        }
        n
    });
    let trickle = tokio::spawn(async move {
        let mut n = 0u64;
        while Instant::now() < until {
            trickle_attack(&trickle_ep, addr).await;
            n += 1;
        }
        n
    });
    let (n_garbage, n_huge, n_trickle) = (
        garbage.await.unwrap(),
        huge.await.unwrap(),
        trickle.await.unwrap(),
    );
    let (t3, r3) = (Instant::now(), at.inspect().await);
    let during = rates(&r2, &r3, (t3 - t2).as_secs_f64(), &keys);
    eprintln!(
        "attacks: {n_garbage} garbage, {n_huge} 4 GiB headers, {n_trickle} trickles over {:.1} s; samples/s per agent meanwhile: {during:?}",
        (t3 - t2).as_secs_f64()
    );

    // Every hostile connection counted, by its reason, and nothing else refused:
    // the good agents' first sessions are the only other connections.
    let text = at.metrics_text().await;
    let counted = refusals(&text);
    eprintln!("aggregator counted {counted:?}");
    for (reason, n) in [
        ("malformed", n_garbage),
        ("frame_too_large", n_huge),
        ("frame_timeout", n_trickle),
    ] {
        assert!(n > 0, "no {reason} attack ran");
        assert_eq!(
            metric0(&text, &refused_series(reason)),
            n as f64,
            "{counted:?}"
        );
    }
    let attacks = n_garbage + n_huge + n_trickle;
    assert_eq!(
        counted.iter().map(|(_, n)| n).sum::<f64>(),
        attacks as f64,
        "other refusals: {counted:?}"
    );
    assert_eq!(
        metric0(&text, CONNECTIONS),
        (2 + attacks) as f64,
        "a good agent had to reconnect"
    );

    for (k, (b, d)) in keys.iter().zip(baseline.iter().zip(&during)) {
        assert!(
            *b >= 0.8 * GOOD_SAMPLES_PER_SEC,
            "{k} does not keep up even without attacks ({b:.0}/s of {GOOD_SAMPLES_PER_SEC}/s): the machine is too slow for this test"
        );
        assert!(
            *d >= 0.8 * GOOD_SAMPLES_PER_SEC,
            "{k} committed {d:.0} samples/s during the attacks, under 80% of the {GOOD_SAMPLES_PER_SEC}/s it generates"
        );
    }

    // Nothing lost or doubled: stop the agents cleanly and read the log.
    for mut a in agents {
        assert!(
            blocking(move || a.term(Duration::from_secs(15))).await,
            "an agent did not stop cleanly"
        );
    }
    let report = at.inspect().await;
    for k in keys {
        let a = &report["agents"][k];
        assert_eq!(a["seq_gaps"], 0, "{k}: {a}");
        assert_eq!(a["duplicates_in_log"], 0, "{k}: {a}");
        assert!(a["events"].as_u64() >= r3["agents"][k]["events"].as_u64());
    }
    assert!(
        agent_keys(&report)
            .iter()
            .all(|k| keys.contains(&k.as_str())),
        "hostile peers committed something: {report}"
    );
}

// ---------------------------------------------------------------- 4. limits

/// Records the TLS 1.3 tickets a client receives, to see what they allow.
#[derive(Debug)]
struct TicketSpy {
    inner: rustls::client::ClientSessionMemoryCache,
    early_data_limits: Mutex<Vec<u32>>,
}

impl rustls::client::ClientSessionStore for TicketSpy {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.early_data_limits
            .lock()
            .unwrap()
            .push(value.max_early_data_size());
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limits_hold_and_zero_rtt_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let agg = start_aggregator(dir.path(), &pki, "").await;
    let at = &agg.at;
    let limits = EndpointLimits::default();
    assert_eq!((limits.max_uni_streams, limits.max_bidi_streams), (4, 1));

    let ep = endpoint(valid_tls(&pki, "s", "greedy"));
    let (conn, _tx, _rx) = attempt_up(&ep, at.quic, &[hello("s", "greedy")]).await;
    let mut lanes = Vec::new();
    for i in 0..limits.max_uni_streams {
        let mut lane = timeout(Duration::from_secs(1), conn.open_uni())
            .await
            .expect("a lane within the limit did not open")
            .unwrap();
        lane.write_all(&frame(&define(i + 1, &format!("feeder-{i}/va"))))
            .await
            .unwrap();
        lanes.push(lane);
    }
    let fifth = conn.open_uni();
    tokio::pin!(fifth);
    assert!(
        timeout(Duration::from_secs(1), &mut fifth).await.is_err(),
        "a 5th unidirectional stream opened while 4 were open"
    );
    assert!(
        timeout(Duration::from_secs(1), conn.open_bi())
            .await
            .is_err(),
        "a 2nd bidirectional stream opened next to the control stream"
    );
    // The limit is on streams open at once: once the server has read one lane to its
    // end, the 5th opens.
    lanes[0].finish().unwrap();
    timeout(Duration::from_secs(5), &mut fifth)
        .await
        .expect("the 5th lane did not open after one was finished")
        .unwrap();

    // 0-RTT: off in both configurations...
    let server = server_crypto(
        &ServerTls {
            cert: pki.server_cert(),
            key: pki.server_key(),
            client_ca: pki.ca_bundle(),
            crl: Some(pki.crl()),
        },
        &ferrule_transport::Refusals::new(),
    )
    .unwrap();
    assert_eq!(server.max_early_data_size, 0, "server accepts early data");
    assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
    let client = valid_tls(&pki, "s", "greedy");
    assert!(!client.enable_early_data, "agent would send early data");
    assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);

    // ...and against the running aggregator: a client that asks for 0-RTT
    // receives no resumption ticket at all (a resumed session would skip the
    // client certificate's check against the CRL loaded now), so it has
    // nothing to send early data with.
    let spy = Arc::new(TicketSpy {
        inner: rustls::client::ClientSessionMemoryCache::new(32),
        early_data_limits: Mutex::new(Vec::new()),
    });
    let mut eager = valid_tls(&pki, "s", "eager");
    eager.enable_early_data = true;
    eager.resumption = rustls::client::Resumption::store(spy.clone());
    let ep = endpoint(eager);
    let (conn, _tx, _rx) = attempt_up(&ep, at.quic, &[hello("s", "eager")]).await;
    sleep(Duration::from_secs(1)).await;
    let tickets = spy.early_data_limits.lock().unwrap().clone();
    assert!(
        tickets.is_empty(),
        "the aggregator sent session tickets: {tickets:?}"
    );
    conn.close(0u32.into(), b"done");
    let connecting = ep.connect(at.quic, "localhost").unwrap();
    match connecting.into_0rtt() {
        Ok(_) => panic!("a 0-RTT connection was possible"),
        Err(connecting) => {
            timeout(Duration::from_secs(5), connecting)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
