//! Handshake admission: how many QUIC + TLS handshakes the server works on at
//! once, in all and per source address.
//!
//! quinn bounds only the queue of connection attempts nobody has looked at yet
//! (`max_incoming`), and drops the Initials beyond it without a word: in a
//! reconnect storm (a fleet coming back after an aggregator restart) every
//! accepted handshake shares the CPU with every other, all of them slow down
//! past the agents' connect timeout, the agents give up and try again, and
//! nobody gets in. The gate keeps the handshakes in progress to a number the
//! server finishes quickly and refuses the rest at once (QUIC's
//! CONNECTION_REFUSED, a packet without any cryptographic work), so those
//! agents back off and come back instead of timing out.
//!
//! A slot is held until the handshake ends or times out, so hosts that start
//! handshakes and never finish them could hold every slot and lock the fleet
//! out. Two rules keep them to their share:
//! - one source address (an IPv6 /64) holds at most `per_address` slots;
//! - when every slot is taken, an attempt from an address holding fewer
//!   slots than the biggest holder evicts that holder's oldest handshake
//!   (the evicted attempt is abandoned; a real agent retries). A storm of
//!   agents from many addresses holds about one slot each, so nobody is
//!   evicted and the excess is refused; a few addresses hoarding slots lose
//!   them to everyone else. Locking the gate takes as many hosts as it has
//!   slots.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;

/// A handshake holding a slot.
#[derive(Debug)]
struct Slot {
    id: u64,
    /// Fired when the slot is taken from it.
    evict: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    next_id: u64,
    /// Oldest first.
    by_address: HashMap<IpAddr, VecDeque<Slot>>,
}

#[derive(Debug)]
struct Inner {
    counts: Mutex<Counts>,
    limit: usize,
    per_address: usize,
}

impl Inner {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counts are updated whole under the lock; a panic elsewhere leaves
        // them consistent.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts handshakes in progress against a limit in all and one per source
/// address. Cheap to clone: clones share the counts.
#[derive(Debug, Clone)]
pub struct HandshakeGate(Arc<Inner>);

/// One handshake in progress; dropping it (handshake done, failed or given
/// up) lets the next one in. [`HandshakePermit::evicted`] resolves if the
/// gate gave the slot to someone else: abandon the handshake then.
#[derive(Debug)]
pub struct HandshakePermit {
    gate: Arc<Inner>,
    key: IpAddr,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

/// Why the gate refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateFull {
    /// The server has its limit of handshakes in progress, none to take back.
    Total,
    /// This source address has its share in progress.
    Address,
}

/// What the gate did for an admitted handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// A free slot.
    Free,
    /// The oldest handshake of the address holding the most slots was
    /// evicted to make room.
    Evicted(IpAddr),
}

/// The key an address is counted under: IPv4 (and IPv4-mapped IPv6) as is,
/// IPv6 by its /64 (one host commonly owns a whole /64).
fn key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl HandshakeGate {
    /// A gate admitting at most `limit` handshakes at once, at most
    /// `per_address` of them from one source address (each at least one).
    pub fn new(limit: usize, per_address: usize) -> Self {
        Self(Arc::new(Inner {
            counts: Mutex::new(Counts::default()),
            limit: limit.max(1),
            per_address: per_address.max(1),
        }))
    }

    /// A permit for a handshake from `address`, or why it must be refused.
    pub fn try_enter(&self, address: IpAddr) -> Result<(HandshakePermit, Admitted), GateFull> {
        let k = key(address);
        let mut c = self.0.counts();
        let mine = c.by_address.get(&k).map_or(0, VecDeque::len);
        if mine >= self.0.per_address {
            return Err(GateFull::Address);
        }
        let mut admitted = Admitted::Free;
        if c.total >= self.0.limit {
            // Take a slot back from the biggest holder, if it holds more
            // than this address would after admission.
            let biggest = c
                .by_address
                .iter()
                .max_by_key(|(_, slots)| slots.len())
                .map(|(a, slots)| (*a, slots.len()));
            match biggest {
                Some((victim, held)) if held > mine + 1 => {
                    let slots = c.by_address.get_mut(&victim);
                    if let Some(slot) = slots.and_then(VecDeque::pop_front) {
                        let _ = slot.evict.send(());
                        c.total -= 1;
                    }
                    if c.by_address.get(&victim).is_some_and(VecDeque::is_empty) {
                        c.by_address.remove(&victim);
                    }
                    admitted = Admitted::Evicted(victim);
                }
                _ => return Err(GateFull::Total),
            }
        }
        let id = c.next_id;
        c.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        c.by_address
            .entry(k)
            .or_default()
            .push_back(Slot { id, evict });
        c.total += 1;
        Ok((
            HandshakePermit {
                gate: self.0.clone(),
                key: k,
                id,
                evicted,
            },
            admitted,
        ))
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        self.0.counts().total
    }
}

impl HandshakePermit {
    /// Resolves when the gate took this slot back for another handshake
    /// (never, while the permit keeps it).
    pub async fn evicted(&mut self) {
        if (&mut self.evicted).await.is_err() {
            // The sender is only dropped when the slot is released through
            // this permit: wait for ever.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut c = self.gate.counts();
        let Some(slots) = c.by_address.get_mut(&self.key) else {
            return;
        };
        let Some(i) = slots.iter().position(|s| s.id == self.id) else {
            // Evicted: already not counted.
            return;
        };
        slots.remove(i);
        if slots.is_empty() {
            c.by_address.remove(&self.key);
        }
        c.total = c.total.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn enter(gate: &HandshakeGate, a: IpAddr) -> HandshakePermit {
        gate.try_enter(a).expect("admitted").0
    }

    #[test]
    fn admits_up_to_the_limit_and_again_after_a_release() {
        let gate = HandshakeGate::new(2, 2);
        let a = enter(&gate, ip(1));
        let b = enter(&gate, ip(2));
        assert_eq!(
            gate.try_enter(ip(3)).unwrap_err(),
            GateFull::Total,
            "one each: nobody to evict"
        );
        assert_eq!(gate.in_progress(), 2);
        drop(a);
        let c = enter(&gate, ip(3));
        assert!(gate.try_enter(ip(4)).is_err());
        drop((b, c));
        assert_eq!(gate.in_progress(), 0);
        assert!(gate.0.counts().by_address.is_empty(), "no address kept");
    }

    /// One host cannot take every slot: its share is full while others
    /// still get in.
    #[test]
    fn one_address_holds_only_its_share() {
        let gate = HandshakeGate::new(10, 3);
        let mine: Vec<_> = (0..3).map(|_| enter(&gate, ip(1))).collect();
        assert_eq!(gate.try_enter(ip(1)).unwrap_err(), GateFull::Address);
        let other = enter(&gate, ip(2));
        drop(mine);
        let _again = enter(&gate, ip(1));
        drop(other);
        assert_eq!(gate.in_progress(), 1);
    }

    /// Hoarders spread over several addresses fill the gate; a newcomer
    /// from another address takes the biggest hoarder's oldest slot, whose
    /// holder learns it was evicted; the hoarder cannot take it back.
    #[tokio::test]
    async fn a_full_gate_takes_back_from_the_biggest_holder() {
        let gate = HandshakeGate::new(4, 2);
        let mut hoard: Vec<_> = [1, 1, 2, 2].iter().map(|&a| enter(&gate, ip(a))).collect();
        let (newcomer, how) = gate.try_enter(ip(9)).expect("evicts one");
        assert!(matches!(how, Admitted::Evicted(_)));
        assert_eq!(gate.in_progress(), 4);
        // The oldest slot of the victim (the first of its two) was told.
        let victim_first = match how {
            Admitted::Evicted(v) if v == ip(1) => 0,
            _ => 2,
        };
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            hoard[victim_first].evicted(),
        )
        .await
        .expect("the evicted handshake is told");
        // A hoarder with one slot left cannot evict the newcomer's.
        let a = if victim_first == 0 { ip(1) } else { ip(2) };
        assert_eq!(gate.try_enter(a).unwrap_err(), GateFull::Total);
        // Dropping the evicted permit does not count it twice.
        hoard.remove(victim_first);
        assert_eq!(gate.in_progress(), 4);
        drop(newcomer);
        drop(hoard);
        assert_eq!(gate.in_progress(), 0);
        assert!(gate.0.counts().by_address.is_empty());
    }

    /// A storm from one address (or a fleet of one address each) is
    /// refused, not churned: nobody holds more than the newcomer would.
    #[test]
    fn a_storm_is_refused_not_evicted() {
        let gate = HandshakeGate::new(3, 3);
        let _same: Vec<_> = (0..3).map(|_| enter(&gate, ip(1))).collect();
        assert_eq!(gate.try_enter(ip(1)).unwrap_err(), GateFull::Address);
        let gate = HandshakeGate::new(3, 3);
        let _each: Vec<_> = (1..=3).map(|a| enter(&gate, ip(a))).collect();
        assert_eq!(gate.try_enter(ip(4)).unwrap_err(), GateFull::Total);
    }

    #[test]
    fn ipv6_is_counted_by_its_slash_64_and_mapped_ipv4_as_ipv4() {
        let gate = HandshakeGate::new(10, 2);
        let a: IpAddr = "2001:db8::1".parse().expect("v6");
        let b: IpAddr = "2001:db8::ffff:1".parse().expect("v6");
        let _p = (enter(&gate, a), enter(&gate, b));
        let c: IpAddr = "2001:db8::2".parse().expect("v6");
        assert_eq!(gate.try_enter(c).unwrap_err(), GateFull::Address);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("mapped");
        let _q = (enter(&gate, ip(1)), enter(&gate, mapped));
        assert_eq!(gate.try_enter(ip(1)).unwrap_err(), GateFull::Address);
    }

    #[test]
    fn zero_limits_still_admit_one() {
        let gate = HandshakeGate::new(0, 0);
        let _p = enter(&gate, ip(1));
        assert!(gate.try_enter(ip(2)).is_err());
    }
}
