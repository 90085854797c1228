//! Handshake admission: how many QUIC + TLS handshakes the server works on at
//! once.
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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts handshakes in progress against a limit. Cheap to clone: clones
/// share the count.
#[derive(Debug, Clone)]
pub struct HandshakeGate {
    in_progress: Arc<AtomicUsize>,
    limit: usize,
}

/// One handshake in progress; dropping it (handshake done, failed or given
/// up) lets the next one in.
#[derive(Debug)]
pub struct HandshakePermit(Arc<AtomicUsize>);

impl HandshakeGate {
    /// A gate admitting at most `limit` handshakes at once (at least one).
    pub fn new(limit: usize) -> Self {
        Self {
            in_progress: Arc::new(AtomicUsize::new(0)),
            limit: limit.max(1),
        }
    }

    /// A permit when fewer than the limit are in progress; `None` means
    /// refuse this one.
    pub fn try_enter(&self) -> Option<HandshakePermit> {
        self.in_progress
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| HandshakePermit(self.in_progress.clone()))
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Acquire)
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_again_after_a_release() {
        let gate = HandshakeGate::new(2);
        let a = gate.try_enter().expect("first");
        let b = gate.try_enter().expect("second");
        assert!(gate.try_enter().is_none(), "a third is refused");
        assert_eq!(gate.in_progress(), 2);
        drop(a);
        let c = gate.try_enter().expect("a slot freed");
        assert!(gate.try_enter().is_none());
        drop((b, c));
        assert_eq!(gate.in_progress(), 0);
    }

    #[test]
    fn a_zero_limit_still_admits_one() {
        let gate = HandshakeGate::new(0);
        let _p = gate.try_enter().expect("one");
        assert!(gate.try_enter().is_none());
    }
}
