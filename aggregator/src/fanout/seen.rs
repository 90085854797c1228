//! What the real-time path has already been given, per agent, so a batch the
//! agent resends (after a failed commit, a reconnect, a failover) is published
//! once, not once per attempt.
//!
//! Pure and bounded: at most [`SeenBounds::max_agents`] agents, each with at most
//! [`SeenBounds::epochs_per_agent`] epochs of at most
//! [`SeenBounds::max_ranges_per_epoch`] seq ranges (contiguous seqs take one
//! range however many). Beyond these it forgets the oldest, so forgetting can
//! only make a resend be published again (a duplicate, which consumers drop by
//! (agent, epoch, seq)), never make a batch that was not published look as if
//! it had been.

use ferrule_wire::{Epoch, Seq, SeqSet};
use std::collections::HashMap;

/// How much the recent-seen set may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenBounds {
    /// Agents remembered; the one published to least recently is forgotten first.
    pub max_agents: usize,
    /// Epochs remembered per agent (an agent that lost its spool starts a new one).
    pub epochs_per_agent: usize,
    /// Seq ranges remembered per epoch (gaps come from batches skipped or reordered).
    pub max_ranges_per_epoch: usize,
}

impl Default for SeenBounds {
    fn default() -> Self {
        Self {
            max_agents: 100_000,
            epochs_per_agent: 2,
            max_ranges_per_epoch: 64,
        }
    }
}

#[derive(Debug, Default)]
struct AgentSeen {
    /// (epoch, set), most recently created last.
    epochs: Vec<(Epoch, SeqSet)>,
    last_used: u64,
}

/// The recent-seen set: (agent, epoch, seq) the real-time path was given.
///
/// ```
/// use ferrule_aggregator::fanout::seen::{RecentSeen, SeenBounds};
/// use ferrule_wire::{Epoch, Seq};
/// let mut s = RecentSeen::new(SeenBounds::default());
/// assert!(!s.contains("site/a1", Epoch(1), Seq(1)));
/// s.insert("site/a1", Epoch(1), Seq(1));
/// assert!(s.contains("site/a1", Epoch(1), Seq(1))); // a resend: not published again
/// assert!(!s.contains("site/a2", Epoch(1), Seq(1)));
/// ```
#[derive(Debug)]
pub struct RecentSeen {
    bounds: SeenBounds,
    agents: HashMap<String, AgentSeen>,
    clock: u64,
    forgotten: u64,
}

impl RecentSeen {
    /// An empty set within `bounds` (each bound at least 1).
    pub fn new(bounds: SeenBounds) -> Self {
        Self {
            bounds: SeenBounds {
                max_agents: bounds.max_agents.max(1),
                epochs_per_agent: bounds.epochs_per_agent.max(1),
                max_ranges_per_epoch: bounds.max_ranges_per_epoch.max(1),
            },
            agents: HashMap::new(),
            clock: 0,
            forgotten: 0,
        }
    }

    /// True if (agent, epoch, seq) was seen and not forgotten since.
    pub fn contains(&self, agent: &str, epoch: Epoch, seq: Seq) -> bool {
        self.agents.get(agent).is_some_and(|a| {
            a.epochs
                .iter()
                .any(|(e, set)| *e == epoch && set.contains(seq))
        })
    }

    /// Records (agent, epoch, seq) as seen, forgetting the oldest beyond the bounds.
    pub fn insert(&mut self, agent: &str, epoch: Epoch, seq: Seq) {
        self.clock += 1;
        if !self.agents.contains_key(agent) && self.agents.len() >= self.bounds.max_agents {
            // O(agents), but only when a new agent arrives with the table full.
            if let Some(oldest) = self
                .agents
                .iter()
                .min_by_key(|(_, a)| a.last_used)
                .map(|(k, _)| k.clone())
            {
                self.agents.remove(&oldest);
                self.forgotten += 1;
            }
        }
        let a = self.agents.entry(agent.to_string()).or_default();
        a.last_used = self.clock;
        let i = match a.epochs.iter().position(|(e, _)| *e == epoch) {
            Some(i) => i,
            None => {
                if a.epochs.len() >= self.bounds.epochs_per_agent {
                    a.epochs.remove(0);
                    self.forgotten += 1;
                }
                a.epochs.push((epoch, SeqSet::new()));
                a.epochs.len() - 1
            }
        };
        let set = &mut a.epochs[i].1;
        set.insert(seq);
        self.forgotten += set.forget_oldest(self.bounds.max_ranges_per_epoch) as u64;
    }

    /// Agents held.
    pub fn agents(&self) -> usize {
        self.agents.len()
    }

    /// Agents, epochs and ranges forgotten so far to stay within the bounds (a
    /// batch resent from them is published again: a duplicate, not a loss).
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(agents: usize, epochs: usize, ranges: usize) -> SeenBounds {
        SeenBounds {
            max_agents: agents,
            epochs_per_agent: epochs,
            max_ranges_per_epoch: ranges,
        }
    }

    fn first_time(s: &mut RecentSeen, agent: &str, e: u64, q: u64) -> bool {
        if s.contains(agent, Epoch(e), Seq(q)) {
            return false;
        }
        s.insert(agent, Epoch(e), Seq(q));
        true
    }

    #[test]
    fn contiguous_seqs_take_one_range_and_resends_are_seen() {
        let mut s = RecentSeen::new(bounds(4, 2, 1));
        for q in 1..=10_000 {
            assert!(first_time(&mut s, "s/a", 1, q));
        }
        assert_eq!(s.forgotten(), 0);
        for q in [1, 5_000, 10_000] {
            assert!(!first_time(&mut s, "s/a", 1, q));
        }
        assert!(first_time(&mut s, "s/a", 1, 10_001));
    }

    #[test]
    fn a_gap_left_by_a_skipped_batch_is_still_publishable() {
        let mut s = RecentSeen::new(SeenBounds::default());
        for q in [1, 2, 4, 5] {
            assert!(first_time(&mut s, "s/a", 1, q));
        }
        // Seq 3 was skipped (queue full): its resend must go out.
        assert!(first_time(&mut s, "s/a", 1, 3));
    }

    #[test]
    fn forgetting_only_ever_republishes() {
        // One range per epoch: a gap makes the older range forgotten.
        let mut s = RecentSeen::new(bounds(1, 1, 1));
        assert!(first_time(&mut s, "s/a", 1, 1));
        assert!(first_time(&mut s, "s/a", 1, 3));
        assert!(s.forgotten() >= 1);
        assert!(
            !s.contains("s/a", Epoch(1), Seq(2)),
            "never marks the unseen as seen"
        );
        assert!(
            first_time(&mut s, "s/a", 1, 1),
            "forgotten: published again"
        );
        // A new epoch pushes the old one out (one epoch per agent here).
        assert!(first_time(&mut s, "s/a", 2, 1));
        assert!(first_time(&mut s, "s/a", 1, 3));
        // A second agent pushes the first out (one agent here).
        assert!(first_time(&mut s, "s/b", 1, 1));
        assert_eq!(s.agents(), 1);
        assert!(!s.contains("s/a", Epoch(1), Seq(3)));
    }

    #[test]
    fn the_least_recently_used_agent_goes_first() {
        let mut s = RecentSeen::new(bounds(2, 2, 8));
        s.insert("s/a", Epoch(1), Seq(1));
        s.insert("s/b", Epoch(1), Seq(1));
        s.insert("s/a", Epoch(1), Seq(2));
        s.insert("s/c", Epoch(1), Seq(1));
        assert!(s.contains("s/a", Epoch(1), Seq(2)));
        assert!(!s.contains("s/b", Epoch(1), Seq(1)));
        assert!(s.contains("s/c", Epoch(1), Seq(1)));
    }
}
