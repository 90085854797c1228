//! Admission: how many sessions the aggregator holds, in total and per agent
//! identity.
//!
//! Every session costs memory bounded by its credit window, its reader queue and
//! QUIC's buffers; bounding the number of sessions is what bounds the total,
//! whatever a peer with a valid certificate does. Per identity: an agent that
//! reconnects (a new network path, a restart) may briefly hold a second session
//! while the first is not yet known dead, so the newest is admitted and the
//! oldest beyond the limit is closed ("superseded"). In total: beyond the limit,
//! new sessions are refused and the agent retries elsewhere or later.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

/// Why a session was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} sessions already open (server.max_sessions)")]
pub struct TooMany(pub usize);

/// The sessions held, with their limits. Shared by every connection task.
#[derive(Debug)]
pub struct Admission<C> {
    max_total: usize,
    max_per_agent: usize,
    inner: Mutex<Inner<C>>,
}

#[derive(Debug)]
struct Inner<C> {
    next_id: u64,
    total: usize,
    per_agent: HashMap<String, VecDeque<(u64, C)>>,
}

/// A held session; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket<C> {
    admission: Arc<Admission<C>>,
    agent: String,
    id: u64,
}

impl<C: Clone> Admission<C> {
    /// Limits: `max_total` sessions in all, `max_per_agent` per identity (at least 1).
    pub fn new(max_total: usize, max_per_agent: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_agent: max_per_agent.max(1),
            inner: Mutex::new(Inner {
                next_id: 0,
                total: 0,
                per_agent: HashMap::new(),
            }),
        })
    }

    /// Admits a session of `agent` on connection `conn`. Returns its ticket and the
    /// connections of the same agent it supersedes (close them), or [`TooMany`].
    pub fn admit(self: &Arc<Self>, agent: &str, conn: C) -> Result<(Ticket<C>, Vec<C>), TooMany> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = g.per_agent.get(agent).map_or(0, VecDeque::len);
        // A superseding session takes the place of the one it closes.
        let freed = (mine + 1).saturating_sub(self.max_per_agent);
        if g.total - freed >= self.max_total {
            return Err(TooMany(g.total));
        }
        g.next_id += 1;
        let id = g.next_id;
        let list = g.per_agent.entry(agent.to_string()).or_default();
        let mut superseded = Vec::new();
        while list.len() >= self.max_per_agent {
            if let Some((_, c)) = list.pop_front() {
                superseded.push(c);
            }
        }
        list.push_back((id, conn));
        g.total = g.total + 1 - superseded.len();
        Ok((
            Ticket {
                admission: self.clone(),
                agent: agent.to_string(),
                id,
            },
            superseded,
        ))
    }

    /// Sessions held now.
    pub fn total(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl<C> Drop for Ticket<C> {
    fn drop(&mut self) {
        let mut g = self
            .admission
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(list) = g.per_agent.get_mut(&self.agent) else {
            return;
        };
        // Absent if it was superseded (and counted out) already.
        if let Some(i) = list.iter().position(|(id, _)| *id == self.id) {
            list.remove(i);
            let empty = list.is_empty();
            g.total -= 1;
            if empty {
                g.per_agent.remove(&self.agent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_session_of_an_agent_supersedes_the_oldest() {
        let a = Admission::new(10, 2);
        let (t1, s) = a.admit("s/a", 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.is_empty());
        let (_t2, s) = a.admit("s/a", 2).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.is_empty());
        let (_t3, s) = a.admit("s/a", 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s, vec![1]);
        assert_eq!(a.total(), 2);
        // The superseded session's ticket, dropped when its task ends, frees nothing twice.
        drop(t1);
        assert_eq!(a.total(), 2);
    }

    #[test]
    fn beyond_the_total_new_sessions_are_refused_until_one_leaves() {
        let a = Admission::new(2, 2);
        let (t1, _) = a.admit("s/a", 1).unwrap_or_else(|e| panic!("{e}"));
        let (_t2, _) = a.admit("s/b", 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.admit("s/c", 3).err(), Some(TooMany(2)));
        // An agent at its own limit may still replace its own session.
        let one = Admission::new(2, 1);
        let (_x, _) = one.admit("s/a", 1).unwrap_or_else(|e| panic!("{e}"));
        let (_y, _) = one.admit("s/b", 2).unwrap_or_else(|e| panic!("{e}"));
        let (_z, s) = one.admit("s/a", 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s, vec![1]);
        drop(t1);
        assert!(a.admit("s/c", 4).is_ok());
    }
}
