//! A UDP relay between the agents and the aggregator that delays datagrams,
//! for the `latency` and `reorder` faults: what `tc netem` would do, which
//! this machine's kernel lacks (no `sch_netem`). The agents dial the relay;
//! it gives each agent address a socket of its own towards the aggregator
//! (as a NAT would), and holds every datagram, either way, for the delay the
//! current [`Shape`] draws for it. A constant delay is latency; a delay drawn
//! at random per datagram sends them out of order. Loopback only.
//!
//! The decisions (how long to hold a datagram, which one is due, what a full
//! line drops) are [`DelayLine`], sans-IO and unit-tested; the tasks around it
//! only read, wait and send.
//!
//! Datagrams the kernel drops before the relay reads them (its socket's
//! receive buffer full) are not counted here; QUIC resends them as it would
//! any loss.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How the relay holds datagrams: each waits `base` plus a delay drawn
/// uniformly from `0..=jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// The delay every datagram gets.
    pub base: Duration,
    /// The most a datagram waits beyond `base`; datagrams closer together
    /// than this leave out of order.
    pub jitter: Duration,
}

/// What the relay did, for the report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RelayStats {
    /// Datagrams passed on, both ways.
    pub relayed: u64,
    /// Datagrams queued with a delay above zero.
    pub delayed: u64,
    /// Datagrams sent after one of the same flow and direction that had
    /// arrived later: each left behind a datagram that overtook it.
    pub reordered: u64,
    /// Dropped because the line was full (bounded memory), both ways.
    pub dropped_full: u64,
    /// Sends and binds that failed.
    pub errors: u64,
}

/// Where a held datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dest {
    /// Towards the aggregator, from the agent at this address.
    Up(SocketAddr),
    /// Back to the agent at this address.
    Down(SocketAddr),
}

/// Held datagrams in the order they fall due: sans-IO, time passed in.
pub struct DelayLine {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    held: HashMap<u64, (Dest, u64, Vec<u8>)>,
    /// Arrival numbers per destination, to count what leaves out of order.
    last_sent: HashMap<Dest, u64>,
    next: u64,
    cap: usize,
    rng: u64,
    stats: RelayStats,
}

impl DelayLine {
    /// A line holding at most `cap` datagrams, drawing delays from `seed`.
    pub fn new(cap: usize, seed: u64) -> Self {
        Self {
            heap: BinaryHeap::new(),
            held: HashMap::new(),
            last_sent: HashMap::new(),
            next: 0,
            cap,
            rng: seed | 1,
            stats: RelayStats::default(),
        }
    }

    /// A datagram arrived at `now` for `dest`: when it is due, or `None` if
    /// the line was full and it was dropped.
    pub fn push(
        &mut self,
        now: Instant,
        shape: Shape,
        dest: Dest,
        bytes: Vec<u8>,
    ) -> Option<Instant> {
        if self.held.len() >= self.cap {
            self.stats.dropped_full += 1;
            return None;
        }
        let extra = if shape.jitter.is_zero() {
            Duration::ZERO
        } else {
            // xorshift64: enough for spreading delays.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let nanos = shape.jitter.as_nanos() as u64;
            Duration::from_nanos(self.rng % (nanos + 1))
        };
        let delay = shape.base + extra;
        if !delay.is_zero() {
            self.stats.delayed += 1;
        }
        let due = now + delay;
        let n = self.next;
        self.next += 1;
        self.heap.push(Reverse((due, n)));
        self.held.insert(n, (dest, n, bytes));
        Some(due)
    }

    /// When the next datagram falls due, if one is held.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((due, _))| *due)
    }

    /// The datagrams due at `now`, in due order.
    pub fn pop_due(&mut self, now: Instant) -> Vec<(Dest, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(Reverse((due, n))) = self.heap.peek().copied() {
            if due > now {
                break;
            }
            self.heap.pop();
            if let Some((dest, arrival, bytes)) = self.held.remove(&n) {
                let last = self.last_sent.entry(dest).or_insert(0);
                if arrival < *last {
                    self.stats.reordered += 1;
                } else {
                    *last = arrival;
                }
                self.stats.relayed += 1;
                out.push((dest, bytes));
            }
        }
        out
    }

    /// What it did so far.
    pub fn stats(&self) -> RelayStats {
        self.stats
    }
}

/// Datagrams held at most (bounded memory whatever the agents send): a few
/// seconds of a small fleet's packets.
const CAP: usize = 50_000;

struct Inner {
    line: Mutex<DelayLine>,
    shape: Mutex<Shape>,
    wake: Notify,
    up_socks: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    /// The readers bringing each agent's replies back, stopped on drop.
    readers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    errors: AtomicU64,
}

/// The running relay: dial [`Relay::addr`] instead of the aggregator.
pub struct Relay {
    addr: SocketAddr,
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// Listens on a free loopback port and relays to `target`, delaying
    /// nothing until [`Relay::set_shape`].
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = listen.local_addr()?;
        let inner = Arc::new(Inner {
            line: Mutex::new(DelayLine::new(CAP, 0x9e37_79b9_7f4a_7c15)),
            shape: Mutex::new(Shape::default()),
            wake: Notify::new(),
            up_socks: Mutex::new(HashMap::new()),
            readers: Mutex::new(Vec::new()),
            errors: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        // Agents to the aggregator.
        {
            let (inner, listen) = (inner.clone(), listen.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((n, from)) = listen.recv_from(&mut buf).await else {
                        inner.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    let known = lock(&inner.up_socks).contains_key(&from);
                    if !known {
                        // A socket of its own towards the aggregator, and a
                        // reader bringing the replies back.
                        let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                            inner.errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        if up.connect(target).await.is_err() {
                            inner.errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let up = Arc::new(up);
                        lock(&inner.up_socks).insert(from, up.clone());
                        let inner2 = inner.clone();
                        let reader = tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            loop {
                                match up.recv(&mut buf).await {
                                    Ok(n) => inner2.hold(Dest::Down(from), buf[..n].to_vec()),
                                    // ICMP unreachable while the aggregator
                                    // is away: counted, and it goes on.
                                    Err(_) => {
                                        inner2.errors.fetch_add(1, Ordering::Relaxed);
                                        tokio::time::sleep(Duration::from_millis(1)).await;
                                    }
                                }
                            }
                        });
                        lock(&inner.readers).push(reader);
                    }
                    inner.hold(Dest::Up(from), buf[..n].to_vec());
                }
            }));
        }
        // Whatever falls due, sent on.
        {
            let inner = inner.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = lock(&inner.line).next_due();
                    match next {
                        Some(due) => {
                            tokio::select! {
                                _ = tokio::time::sleep_until(due) => {}
                                _ = inner.wake.notified() => {}
                            }
                        }
                        None => inner.wake.notified().await,
                    }
                    let due = lock(&inner.line).pop_due(Instant::now());
                    for (dest, bytes) in due {
                        let r = match dest {
                            Dest::Up(from) => {
                                let up = lock(&inner.up_socks).get(&from).cloned();
                                match up {
                                    Some(s) => s.send(&bytes).await.map(|_| ()),
                                    None => Ok(()),
                                }
                            }
                            Dest::Down(to) => listen.send_to(&bytes, to).await.map(|_| ()),
                        };
                        if r.is_err() {
                            inner.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        Ok(Self { addr, inner, tasks })
    }

    /// The address the agents dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, datagrams are held as `shape` says.
    pub fn set_shape(&self, shape: Shape) {
        *lock(&self.inner.shape) = shape;
    }

    /// What it did so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            errors: self.inner.errors.load(Ordering::Relaxed),
            ..lock(&self.inner.line).stats()
        }
    }
}

impl Inner {
    fn hold(&self, dest: Dest, bytes: Vec<u8>) {
        let shape = *lock(&self.shape);
        let pushed = lock(&self.line).push(Instant::now(), shape, dest, bytes);
        if pushed.is_some() {
            self.wake.notify_one();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(lock(&self.inner.readers).iter()) {
            t.abort();
        }
    }
}

/// A lock whose holder never panics while holding it; poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> SocketAddr {
        "127.0.0.1:1000".parse().unwrap()
    }

    #[test]
    fn no_delay_passes_everything_at_once_in_order() {
        let mut l = DelayLine::new(10, 7);
        let t = Instant::now();
        for i in 0..5u8 {
            assert_eq!(l.push(t, Shape::default(), Dest::Up(a()), vec![i]), Some(t));
        }
        let out: Vec<u8> = l.pop_due(t).into_iter().map(|(_, b)| b[0]).collect();
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
        assert_eq!(l.stats().reordered, 0);
        assert_eq!(l.stats().delayed, 0);
    }

    #[test]
    fn a_constant_delay_holds_each_datagram_that_long_and_keeps_order() {
        let mut l = DelayLine::new(10, 7);
        let shape = Shape {
            base: Duration::from_millis(100),
            jitter: Duration::ZERO,
        };
        let t = Instant::now();
        l.push(t, shape, Dest::Up(a()), vec![1]);
        l.push(
            t + Duration::from_millis(10),
            shape,
            Dest::Down(a()),
            vec![2],
        );
        assert!(l.pop_due(t + Duration::from_millis(99)).is_empty());
        assert_eq!(l.next_due(), Some(t + Duration::from_millis(100)));
        assert_eq!(l.pop_due(t + Duration::from_millis(100)).len(), 1);
        assert_eq!(l.pop_due(t + Duration::from_millis(110)).len(), 1);
        assert_eq!(l.stats().delayed, 2);
        assert_eq!(l.stats().reordered, 0);
    }

    #[test]
    fn jitter_wider_than_the_gap_reorders_and_says_so() {
        let mut l = DelayLine::new(1000, 7);
        let shape = Shape {
            base: Duration::ZERO,
            jitter: Duration::from_millis(20),
        };
        let t = Instant::now();
        for i in 0..200u32 {
            l.push(
                t + Duration::from_millis(u64::from(i)),
                shape,
                Dest::Up(a()),
                i.to_be_bytes().to_vec(),
            );
        }
        let out: Vec<u32> = l
            .pop_due(t + Duration::from_secs(1))
            .into_iter()
            .map(|(_, b)| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(out.len(), 200, "nothing lost");
        let inversions = out.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(inversions > 20, "{inversions} inversions");
        assert!(l.stats().reordered > 20, "{:?}", l.stats());
        let mut sorted = out.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_line_drops_and_counts_instead_of_growing() {
        let mut l = DelayLine::new(3, 7);
        let shape = Shape {
            base: Duration::from_secs(1),
            jitter: Duration::ZERO,
        };
        let t = Instant::now();
        for i in 0..5u8 {
            l.push(t, shape, Dest::Up(a()), vec![i]);
        }
        assert_eq!(l.stats().dropped_full, 2);
        assert_eq!(l.pop_due(t + Duration::from_secs(1)).len(), 3);
        assert!(l.push(t, shape, Dest::Up(a()), vec![9]).is_some());
    }

    #[tokio::test]
    async fn datagrams_cross_the_relay_both_ways() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut b).await {
                let _ = echo.send_to(&b[..n], from).await;
            }
        });
        let relay = Relay::start(echo_addr).await.unwrap();
        relay.set_shape(Shape {
            base: Duration::from_millis(30),
            jitter: Duration::ZERO,
        });
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t = std::time::Instant::now();
        c.send_to(b"ping", relay.addr()).await.unwrap();
        let mut b = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b[..n], b"ping");
        assert_eq!(from, relay.addr());
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(relay.stats().relayed, 2);
    }
}
