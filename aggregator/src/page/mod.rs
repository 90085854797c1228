//! The live page and its WebSocket gateway.
//!
//! Every aggregator serves the page (`GET /`, one HTML file with its script
//! and styles inside: nothing for a user to build) and a WebSocket (`GET
//! /ws?since=<seq>`) that pushes to it:
//!
//! - **signal sets**, the sampler's, as the exact bytes the sampler
//!   published (with Redis: the store's script publishes each on the channel
//!   `{prefix}:{sampler}:signals`, and every gateway forwards what it
//!   receives; without: the aggregator's own sampler hands them over). Each
//!   carries its sequence (`seq`, the history stream's entry id) and fence;
//!   the gateway refuses repeats and sets from an older sampler ([`ring`]).
//! - `{"reset":true}` before a full state (the newest [`FULL_STATE`] sets).
//! - `{"local":{...}}` once a second: this aggregator's alerts (active and
//!   recent) and its agents table.
//!
//! A viewer that sends `since` and whose sequence the gateway still holds
//! gets exactly what it missed; otherwise the full state. A viewer too slow to
//! keep up is not waited for: it falls behind the broadcast, and is
//! backfilled from the gateway's copy of the history; one whose socket takes
//! nothing for `page.send_timeout_ms` is disconnected. `GET /state` answers
//! the newest set and the local state as JSON (for `curl`).
//!
//! Metrics: gauge `ferrule_aggregator_page_viewers`; counters
//! `ferrule_aggregator_page_sets_total{outcome}` (new, repeat, old_fence,
//! restart, undecodable), `ferrule_aggregator_page_backfills_total{kind}`
//! (missed, full) and `ferrule_aggregator_page_viewers_refused_total`.

pub mod fleet;
pub mod redis;
pub mod ring;

use crate::agents::{AgentView, Agents};
use crate::alerts::evaluate::Evaluated;
use crate::config::PageSection;
use ferrule_telemetry::{Counter, Gauge, Registry};
use futures_util::{SinkExt, StreamExt};
use ring::{Frame, Offer, Ring, Seq};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// The page itself.
const PAGE: &str = include_str!("page.html");
/// Sets a new viewer (or one that needs the full state) gets.
pub const FULL_STATE: usize = 300;
/// A set larger than this is not a sampler's (1024 stages of short names fit).
const MAX_FRAME_BYTES: usize = 4 << 20;
/// A request head larger than this is refused.
const MAX_REQUEST_BYTES: usize = 8192;
/// Connections reading a request or being answered at once at most (viewers,
/// once upgraded, count against `page.max_viewers` instead); more are closed
/// at once. Each is a socket and a task: unbounded, a flood of idle
/// connections would take every file descriptor the aggregator has, and with
/// them its agents' connections and its files.
const MAX_REQUESTS: usize = 256;
/// A request must arrive, and a plain answer be taken, within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Alerts shown: active at most, and recent transitions.
const MAX_ACTIVE_ALERTS: usize = 1000;
const RECENT_ALERTS: usize = 50;
/// Agents in the table at most.
const MAX_AGENT_ROWS: usize = 500;

/// What the broadcast carries to every viewer's task.
#[derive(Debug, Clone)]
enum Push {
    Frame(Arc<Frame>),
    Restart,
    Local(Utf8Bytes),
}

/// The gateway: the backfill ring, the broadcast, the local state.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Push>,
    local: Mutex<Utf8Bytes>,
    alerts: Mutex<AlertBoard>,
    agents: Agents,
    instance: String,
    metrics: Metrics,
    cfg: PageSection,
}

#[derive(Clone)]
struct Metrics {
    viewers: Gauge,
    refused: Counter,
    sets: Registry,
    backfills: Registry,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        for outcome in ["new", "repeat", "old_fence", "restart", "undecodable"] {
            let _ = r.counter(
                "ferrule_aggregator_page_sets_total",
                "Signal sets offered to the page gateway, by what became of them.",
                &[("outcome", outcome)],
            );
        }
        for kind in ["missed", "full"] {
            let _ = r.counter(
                "ferrule_aggregator_page_backfills_total",
                "Viewers backfilled: with what they missed, or with the full state.",
                &[("kind", kind)],
            );
        }
        Self {
            viewers: r.gauge(
                "ferrule_aggregator_page_viewers",
                "Viewers connected to the live page's WebSocket.",
                &[],
            ),
            refused: r.counter(
                "ferrule_aggregator_page_viewers_refused_total",
                "Viewers refused (page.max_viewers reached, or a bad request).",
                &[],
            ),
            sets: r.clone(),
            backfills: r.clone(),
        }
    }

    fn set(&self, outcome: &str) {
        self.sets
            .counter(
                "ferrule_aggregator_page_sets_total",
                "Signal sets offered to the page gateway, by what became of them.",
                &[("outcome", outcome)],
            )
            .inc();
    }

    fn backfill(&self, kind: &str) {
        self.backfills
            .counter(
                "ferrule_aggregator_page_backfills_total",
                "Viewers backfilled: with what they missed, or with the full state.",
                &[("kind", kind)],
            )
            .inc();
    }
}

/// One alert as the page lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AlertView {
    rule: String,
    site: String,
    agent: String,
    sensor: String,
    state: String,
    severity: String,
    value: f64,
    annotation: String,
    ts_ms: i64,
}

#[derive(Default)]
struct AlertBoard {
    active: BTreeMap<String, AlertView>,
    recent: VecDeque<AlertView>,
}

impl AlertBoard {
    fn take(&mut self, e: &Evaluated) {
        let t = &e.transition;
        let state = match t.state {
            ferrule_rules::State::Firing => "firing",
            ferrule_rules::State::Resolved => "resolved",
            _ => return,
        };
        let view = AlertView {
            rule: t.rule.clone(),
            site: t.site.clone(),
            agent: t.agent.clone(),
            sensor: t.sensor.clone(),
            state: state.to_string(),
            severity: t.severity.as_str().to_string(),
            value: if t.value.is_finite() { t.value } else { 0.0 },
            annotation: t.annotation.clone(),
            ts_ms: t.ts_ns / 1_000_000,
        };
        let key = format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            t.rule, t.site, t.agent, t.sensor
        );
        if state == "firing" {
            if self.active.len() < MAX_ACTIVE_ALERTS || self.active.contains_key(&key) {
                self.active.insert(key, view.clone());
            }
        } else {
            self.active.remove(&key);
        }
        if self.recent.len() >= RECENT_ALERTS {
            self.recent.pop_back();
        }
        self.recent.push_front(view);
    }
}

/// What the page shows besides the signals: agents and alerts, this
/// aggregator's own, or with Redis the fleet's ([`fleet`]).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Local {
    aggregator: String,
    ts_ms: i64,
    alerts_active: Vec<AlertView>,
    alerts_recent: Vec<AlertView>,
    agents: Vec<AgentView>,
    agents_connected: usize,
    /// The aggregators merged (with Redis), this one first.
    #[serde(default)]
    aggregators: Vec<String>,
    /// Why the fleet's state is missing, if it is.
    #[serde(default)]
    fleet_error: Option<String>,
}

/// Completes once `stop` says so (the guard `wait_for` returns is not `Send`).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads `seq` and `fence` from a set's text; `None` if it is not one.
fn head(text: &str) -> Option<(Seq, u64)> {
    #[derive(serde::Deserialize)]
    struct Head {
        seq: String,
        fence: u64,
    }
    if text.len() > MAX_FRAME_BYTES {
        return None;
    }
    let h: Head = serde_json::from_str(text).ok()?;
    Some((Seq::parse(&h.seq)?, h.fence))
}

impl Gateway {
    /// A gateway for this aggregator (`instance`), showing `agents`.
    pub fn new(cfg: &PageSection, agents: Agents, registry: &Registry) -> Self {
        let (tx, _) = broadcast::channel(64);
        Self {
            inner: Arc::new(Inner {
                ring: Mutex::new(Ring::new(cfg.backfill_max_len.max(FULL_STATE))),
                tx,
                local: Mutex::new(Utf8Bytes::from_static("{\"local\":null}")),
                alerts: Mutex::default(),
                agents,
                instance: crate::instance::name().to_string(),
                metrics: Metrics::new(registry),
                cfg: cfg.clone(),
            }),
        }
    }

    /// Offers one signal set (its JSON text); forwarded to viewers if new.
    pub fn offer(&self, text: String) -> Option<Offer> {
        let Some((seq, fence)) = head(&text) else {
            self.inner.metrics.set("undecodable");
            return None;
        };
        let frame = Arc::new(Frame {
            seq,
            fence,
            text: text.into(),
        });
        let outcome = self
            .inner
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .offer(frame.clone(), Instant::now());
        match outcome {
            Offer::New => {
                self.inner.metrics.set("new");
                let _ = self.inner.tx.send(Push::Frame(frame));
            }
            Offer::Restart => {
                self.inner.metrics.set("restart");
                tracing::warn!(fence, %seq, "page: the sampler's fence or sequence went back after a silence (Redis lost its keys, or its ids went back); viewers start over");
                let _ = self.inner.tx.send(Push::Restart);
            }
            Offer::Repeat => self.inner.metrics.set("repeat"),
            Offer::OldFence => {
                self.inner.metrics.set("old_fence");
                tracing::debug!(fence, %seq, "page: a set from an older sampler refused");
            }
        }
        Some(outcome)
    }

    /// Forgets the sets held and tells viewers to start over: the follower
    /// missed more than it reads back, and the copy would have a hole.
    pub fn start_over(&self) {
        let mut ring = self
            .inner
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ring.clear();
        // Sent under the lock: a viewer catching up sees either the cleared
        // ring or this.
        let _ = self.inner.tx.send(Push::Restart);
    }

    /// The newest sequence held (where a Redis backfill read starts).
    pub fn last(&self) -> Option<Seq> {
        self.inner
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
    }

    /// This aggregator's own agents and alerts.
    fn own_state(&self) -> Local {
        let agents = self.inner.agents.view(MAX_AGENT_ROWS);
        let connected = agents.iter().filter(|a| a.connected).count();
        let board = self
            .inner
            .alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Local {
            aggregator: self.inner.instance.clone(),
            ts_ms: now_ms(),
            alerts_active: board.active.values().cloned().collect(),
            alerts_recent: board.recent.iter().cloned().collect(),
            agents,
            agents_connected: connected,
            aggregators: vec![self.inner.instance.clone()],
            fleet_error: None,
        }
    }

    /// Pushes `state` to every viewer (and keeps it for new ones).
    fn set_local(&self, state: &Local) {
        let text = format!(
            "{{\"local\":{}}}",
            serde_json::to_string(state).unwrap_or_else(|_| "null".into())
        );
        let text = Utf8Bytes::from(text);
        *self
            .inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = text.clone();
        let _ = self.inner.tx.send(Push::Local(text));
    }

    /// `GET /state`: the newest set and the local state.
    fn state_json(&self) -> String {
        let newest = self
            .inner
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .newest(1);
        let local = self
            .inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let set = newest.first().map_or("null", |f| f.text.as_str());
        let local = local.as_str();
        let local = local
            .strip_prefix("{\"local\":")
            .and_then(|l| l.strip_suffix('}'))
            .unwrap_or("null");
        format!("{{\"signals\":{set},\"local\":{local}}}")
    }
}

/// The running page: the listener's address and its tasks.
pub struct Page {
    /// Where it listens (`http://<addr>/`), if it does.
    pub addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Page {
    /// Serves the page on `cfg.listen` (if set), keeps the local state fresh
    /// from `alerts`, and with `redis` follows the sampler's broadcast.
    pub async fn start(
        gateway: Gateway,
        redis: Option<&crate::config::RedisSection>,
        alerts: Option<broadcast::Receiver<Arc<Evaluated>>>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut tasks = Vec::new();
        let Some(listen) = gateway.inner.cfg.listen else {
            return Ok(Self { addr: None, tasks });
        };
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the page listener {listen} (page.listen)"))?;
        let addr = listener.local_addr()?;
        if let Some(r) = redis {
            let follower =
                redis::Follower::new(r, gateway.clone()).context("the page's Redis subscriber")?;
            tasks.push(tokio::spawn(follower.run(stop.clone())));
        }
        let fleet = match redis {
            Some(r) => Some(fleet::Fleet::new(r).context("the page's fleet state")?),
            None => None,
        };
        tasks.push(tokio::spawn(local_loop(
            gateway.clone(),
            fleet,
            alerts,
            stop.clone(),
        )));
        tasks.push(tokio::spawn(accept_loop(listener, gateway, stop)));
        Ok(Self {
            addr: Some(addr),
            tasks,
        })
    }

    /// Stops serving.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn local_loop(
    gateway: Gateway,
    mut fleet: Option<fleet::Fleet>,
    mut alerts: Option<broadcast::Receiver<Arc<Evaluated>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let mut mine = gateway.own_state();
                if let Some(f) = &mut fleet {
                    match tokio::time::timeout(Duration::from_secs(2), f.exchange(&mine, mine.ts_ms)).await {
                        Ok(Ok(others)) => mine = fleet::merge(mine, others),
                        Ok(Err(e)) => mine.fleet_error = Some(format!("the other aggregators' state is unavailable (Redis: {e})")),
                        Err(_) => mine.fleet_error = Some("the other aggregators' state is unavailable (Redis did not answer)".into()),
                    }
                }
                gateway.set_local(&mine);
            }
            e = async {
                match &mut alerts {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match e {
                Ok(e) => gateway.inner.alerts.lock().unwrap_or_else(PoisonError::into_inner).take(&e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(n, "page: alert transitions skipped (the page fell behind)");
                }
                Err(broadcast::error::RecvError::Closed) => alerts = None,
            },
            () = stopped(&mut stop) => return,
        }
    }
}

async fn accept_loop(listener: TcpListener, gateway: Gateway, mut stop: watch::Receiver<bool>) {
    let viewers = Arc::new(tokio::sync::Semaphore::new(
        gateway.inner.cfg.max_viewers.max(1),
    ));
    let requests = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS));
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "page listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let Ok(request) = requests.clone().try_acquire_owned() else {
            gateway.inner.metrics.refused.inc();
            tracing::debug!(%peer, "page: too many connections at once; closed");
            drop(sock);
            continue;
        };
        let gateway = gateway.clone();
        let viewers = viewers.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(sock, gateway, viewers, request, stop).await {
                tracing::debug!(%peer, error = %e, "page connection ended");
            }
        });
    }
}

/// A parsed request: method, path, query `since`, whether it asks for a WebSocket.
struct Request {
    path: String,
    since: Option<Seq>,
    ws_key: Option<String>,
}

fn parse_request(buf: &[u8]) -> Result<Option<Request>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad request: {e}")),
    }
    if req.method != Some("GET") {
        return Err("only GET".into());
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let since = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="))
        .and_then(Seq::parse);
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let upgrade = header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let ws_key = if upgrade {
        header("sec-websocket-key").map(str::to_string)
    } else {
        None
    };
    Ok(Some(Request {
        path: path.to_string(),
        since,
        ws_key,
    }))
}

async fn respond(
    sock: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

/// Serves one connection; `request` (its place among [`MAX_REQUESTS`]) is
/// held until it is answered or becomes a viewer.
async fn handle(
    sock: TcpStream,
    gateway: Gateway,
    viewers: Arc<tokio::sync::Semaphore>,
    request: tokio::sync::OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let upgraded = match tokio::time::timeout_at(deadline, answer(sock, &gateway, &viewers)).await {
        Ok(r) => r?,
        Err(_) => {
            gateway.inner.metrics.refused.inc();
            return Err(std::io::Error::other("request or answer timed out"));
        }
    };
    drop(request);
    let Some((ws, permit, since)) = upgraded else {
        return Ok(());
    };
    gateway.inner.metrics.viewers.add(1);
    let r = view(ws, &gateway, since, stop).await;
    gateway.inner.metrics.viewers.add(-1);
    drop(permit);
    r
}

/// A viewer's socket, its place among `page.max_viewers`, and its `since`.
type Upgraded = (
    WebSocketStream<TcpStream>,
    tokio::sync::OwnedSemaphorePermit,
    Option<Seq>,
);

/// Reads the request and answers it, or upgrades it to a viewer.
async fn answer(
    mut sock: TcpStream,
    gateway: &Gateway,
    viewers: &Arc<tokio::sync::Semaphore>,
) -> std::io::Result<Option<Upgraded>> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut used = 0;
    let req = async {
        loop {
            let n = sock.read(&mut buf[used..]).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(Err("closed before a request".to_string()));
            }
            used += n;
            match parse_request(&buf[..used]) {
                Ok(Some(r)) => return Ok(Ok(r)),
                Ok(None) if used == buf.len() => return Ok(Err("request too large".into())),
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
    }
    .await?;
    let req = match req {
        Ok(r) => r,
        Err(why) => {
            gateway.inner.metrics.refused.inc();
            let why = format!("{why}\n");
            respond(&mut sock, "400 Bad Request", "text/plain", &why).await?;
            return Ok(None);
        }
    };
    let (status, ctype, body) = match (req.path.as_str(), req.ws_key) {
        ("/ws", Some(key)) => match viewers.clone().try_acquire_owned() {
            Ok(permit) => {
                let accept =
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
                );
                sock.write_all(head.as_bytes()).await?;
                let config = WebSocketConfig::default()
                    .max_message_size(Some(64 << 10))
                    .max_frame_size(Some(64 << 10))
                    .max_write_buffer_size(16 << 20);
                let ws = WebSocketStream::from_raw_socket(sock, Role::Server, Some(config)).await;
                return Ok(Some((ws, permit, req.since)));
            }
            Err(_) => {
                gateway.inner.metrics.refused.inc();
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "too many viewers (page.max_viewers)\n".to_string(),
                )
            }
        },
        ("/" | "/index.html", _) => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        ("/state", _) => ("200 OK", "application/json", gateway.state_json()),
        ("/ws", None) => (
            "400 Bad Request",
            "text/plain",
            "a WebSocket upgrade is expected here\n".to_string(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    respond(&mut sock, status, ctype, &body).await?;
    Ok(None)
}

/// Serves one viewer until it leaves, stalls or the aggregator stops.
async fn view(
    ws: WebSocketStream<TcpStream>,
    gateway: &Gateway,
    since: Option<Seq>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (mut tx, mut rx) = ws.split();
    let timeout = Duration::from_millis(gateway.inner.cfg.send_timeout_ms.max(100));
    let mut sub = gateway.inner.tx.subscribe();
    let mut last: Option<Seq> = None;
    // What it missed, or the full state; then the local state.
    let mut pending = catch_up(gateway, since, &mut last);
    pending.push(Message::Text(
        gateway
            .inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    ));
    let io = |e: tokio_tungstenite::tungstenite::Error| std::io::Error::other(e.to_string());
    loop {
        for m in pending.drain(..) {
            match tokio::time::timeout(timeout, tx.feed(m)).await {
                Ok(r) => r.map_err(io)?,
                Err(_) => return Err(std::io::Error::other("viewer takes no data")),
            }
        }
        match tokio::time::timeout(timeout, tx.flush()).await {
            Ok(r) => r.map_err(io)?,
            Err(_) => return Err(std::io::Error::other("viewer takes no data")),
        }
        tokio::select! {
            push = sub.recv() => match push {
                Ok(Push::Frame(f)) => {
                    if forward(&mut last, &f) {
                        pending.push(Message::Text(f.text.clone()));
                    }
                }
                Ok(Push::Local(t)) => pending.push(Message::Text(t)),
                Ok(Push::Restart) => pending = catch_up(gateway, None, &mut last),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the broadcast: from the history instead.
                    pending = catch_up(gateway, last, &mut last);
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            m = rx.next() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
            },
            () = stopped(&mut stop) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(None))).await;
                return Ok(());
            }
        }
    }
}

/// The messages that bring a viewer that saw `since` up to date (exactly
/// what it missed if the ring still holds `since`, else a reset and the full
/// state); `last` moves to the newest sent.
fn catch_up(gateway: &Gateway, since: Option<Seq>, last: &mut Option<Seq>) -> Vec<Message> {
    let ring = gateway
        .inner
        .ring
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let (frames, reset) = match since.and_then(|s| ring.after(s)) {
        Some(missed) => {
            gateway.inner.metrics.backfill("missed");
            // It has `since` (and everything before): a copy of it still on
            // its way through the broadcast is not sent again.
            *last = (*last).max(since);
            (missed, false)
        }
        None => {
            gateway.inner.metrics.backfill("full");
            (ring.newest(FULL_STATE), true)
        }
    };
    drop(ring);
    let mut out = Vec::with_capacity(frames.len() + 1);
    if reset {
        out.push(Message::Text(Utf8Bytes::from_static("{\"reset\":true}")));
        *last = None;
    }
    for f in frames {
        if forward(last, &f) {
            out.push(Message::Text(f.text.clone()));
        }
    }
    out
}

/// Whether a viewer whose newest set is `last` is sent `f` (only sets after
/// it, in order); `last` moves to it if so.
fn forward(last: &mut Option<Seq>, f: &Frame) -> bool {
    if last.is_none_or(|l| f.seq > l) {
        *last = Some(f.seq);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        let r = parse_request(b"GET /ws?since=12-3 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
        let r = r.ok().flatten();
        assert!(r.as_ref().is_some_and(|r| r.path == "/ws"
            && r.since == Some(Seq { ms: 12, n: 3 })
            && r.ws_key.as_deref() == Some("dGhlIHNhbXBsZSBub25jZQ==")));
        assert!(matches!(parse_request(b"GET / HTTP/1.1\r\nHost"), Ok(None)));
        assert!(parse_request(b"POST / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request(b"\x00\x01garbage\r\n\r\n").is_err());
        let r = parse_request(b"GET /ws?since=junk HTTP/1.1\r\n\r\n")
            .ok()
            .flatten();
        assert!(r.is_some_and(|r| r.since.is_none() && r.ws_key.is_none()));
    }

    fn gateway() -> Gateway {
        Gateway::new(&PageSection::default(), Agents::new(), &Registry::new())
    }

    fn frame(ms: u64) -> Arc<Frame> {
        let seq = format!("{ms}-0");
        Arc::new(Frame {
            seq: Seq { ms, n: 0 },
            fence: 1,
            text: ring::frame_text(&seq, "1", "1", "{}", "[]").into(),
        })
    }

    #[test]
    fn a_viewer_back_with_the_newest_set_is_not_sent_it_again() {
        // A set is kept in the ring before it goes through the broadcast: a
        // viewer reconnecting with `since` = that set between the two must
        // not take the broadcast's copy as new.
        let g = gateway();
        let _ = g
            .inner
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .offer(frame(5), Instant::now());
        let mut last = None;
        let sent = catch_up(&g, Some(Seq { ms: 5, n: 0 }), &mut last);
        assert!(sent.is_empty(), "nothing missed, no reset");
        assert!(!forward(&mut last, &frame(5)), "a duplicate");
        assert!(forward(&mut last, &frame(6)));
    }

    #[test]
    fn sets_are_read_or_refused() {
        assert_eq!(
            head(&ring::frame_text("5-1", "2", "1", "{}", "[]")),
            Some((Seq { ms: 5, n: 1 }, 2))
        );
        assert_eq!(head("{}"), None);
        assert_eq!(head("not json"), None);
        assert_eq!(head(r#"{"seq":"x","fence":1}"#), None);
    }
}
