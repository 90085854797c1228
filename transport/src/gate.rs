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
//! A slot is held until the handshake ends or times out, so one host that
//! starts handshakes and never finishes them could hold every slot and lock
//! the fleet out: each source address may hold only its own share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
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
/// up) lets the next one in.
#[derive(Debug)]
pub struct HandshakePermit {
    gate: Arc<Inner>,
    address: IpAddr,
}

/// Why the gate refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateFull {
    /// The server has its limit of handshakes in progress.
    Total,
    /// This source address has its share in progress.
    Address,
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
    pub fn try_enter(&self, address: IpAddr) -> Result<HandshakePermit, GateFull> {
        let mut c = self.0.counts();
        if c.total >= self.0.limit {
            return Err(GateFull::Total);
        }
        let mine = c.by_address.entry(address).or_insert(0);
        if *mine >= self.0.per_address {
            return Err(GateFull::Address);
        }
        *mine += 1;
        c.total += 1;
        Ok(HandshakePermit {
            gate: self.0.clone(),
            address,
        })
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        self.0.counts().total
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut c = self.gate.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_address.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn admits_up_to_the_limit_and_again_after_a_release() {
        let gate = HandshakeGate::new(2, 2);
        let a = gate.try_enter(ip(1)).expect("first");
        let b = gate.try_enter(ip(2)).expect("second");
        assert_eq!(gate.try_enter(ip(3)).unwrap_err(), GateFull::Total);
        assert_eq!(gate.in_progress(), 2);
        drop(a);
        let c = gate.try_enter(ip(3)).expect("a slot freed");
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
        let mine: Vec<_> = (0..3)
            .map(|_| gate.try_enter(ip(1)).expect("share"))
            .collect();
        assert_eq!(gate.try_enter(ip(1)).unwrap_err(), GateFull::Address);
        let other = gate.try_enter(ip(2)).expect("another address gets in");
        drop(mine);
        let _again = gate.try_enter(ip(1)).expect("its share back");
        drop(other);
        assert_eq!(gate.in_progress(), 1);
    }

    #[test]
    fn zero_limits_still_admit_one() {
        let gate = HandshakeGate::new(0, 0);
        let _p = gate.try_enter(ip(1)).expect("one");
        assert!(gate.try_enter(ip(2)).is_err());
    }
}
