//! What the committer has made durable, per agent and epoch: the dedupe ledger.
//!
//! Memory grows with gaps in the sequence, not with batches (a [`SeqSet`] per
//! (agent, epoch)), and is bounded whatever agents send: at most
//! [`LedgerBounds::max_ranges_per_epoch`] ranges per (agent, epoch), the lowest
//! forgotten beyond it, and at most [`LedgerBounds::max_ranges`] ranges in all,
//! the least recently used (agent, epoch) forgotten beyond it. Forgetting is
//! safe: a forgotten batch sent again is written again, a duplicate consumers
//! drop by (agent, epoch, seq), never a batch lost. Forgotten ranges are
//! counted. The count of duplicates dropped per agent is saved to a small JSON
//! file so `inspect` can report it and it survives restarts.

use ferrule_wire::{Epoch, Seq, SeqSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The dedupe key of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LedgerKey {
    /// `site/agent` from the certificate.
    pub agent: String,
    /// The agent's epoch.
    pub epoch: Epoch,
    /// The batch's sequence number.
    pub seq: Seq,
}

impl LedgerKey {
    /// The key for a batch of `site/agent`.
    pub fn new(site: &str, agent: &str, epoch: Epoch, seq: Seq) -> Self {
        Self {
            agent: format!("{site}/{agent}"),
            epoch,
            seq,
        }
    }
}

/// Counters saved for `inspect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Duplicates dropped, per `site/agent`.
    pub duplicates_dropped: BTreeMap<String, u64>,
}

/// How much the ledger may remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerBounds {
    /// Ranges kept in all (each about 50 bytes, plus about 100 per agent epoch).
    pub max_ranges: usize,
    /// Ranges kept per (agent, epoch).
    pub max_ranges_per_epoch: usize,
}

impl Default for LedgerBounds {
    /// A million ranges (about 50-150 MB at worst), 4096 per agent epoch.
    fn default() -> Self {
        Self {
            max_ranges: 1_000_000,
            max_ranges_per_epoch: 4096,
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    seen: SeqSet,
    /// For least-recently-used eviction.
    used: u64,
}

impl Entry {
    fn weight(&self) -> usize {
        self.seen.range_count() + 1
    }
}

/// Durable batches per agent and epoch, bounded.
#[derive(Debug, Default)]
pub struct Ledger {
    bounds: LedgerBounds,
    seen: HashMap<(String, Epoch), Entry>,
    /// `used` tick -> key, for eviction in order of last use.
    by_use: BTreeMap<u64, (String, Epoch)>,
    tick: u64,
    weight: usize,
    forgotten: u64,
    stats: Stats,
    dirty: bool,
}

impl Ledger {
    /// An empty ledger with `bounds`, carrying the saved counters from `path`
    /// (if readable).
    pub fn load_stats(path: &Path, bounds: LedgerBounds) -> Self {
        let stats = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            bounds,
            stats,
            ..Self::default()
        }
    }

    /// An empty ledger with `bounds` and no saved counters.
    pub fn with_bounds(bounds: LedgerBounds) -> Self {
        Self {
            bounds,
            ..Self::default()
        }
    }

    /// True if the batch is durable already (as far as the ledger remembers).
    pub fn contains(&self, k: &LedgerKey) -> bool {
        self.seen
            .get(&(k.agent.clone(), k.epoch))
            .is_some_and(|e| e.seen.contains(k.seq))
    }

    /// Records the batch as durable.
    pub fn insert(&mut self, k: &LedgerKey) {
        self.tick += 1;
        let tick = self.tick;
        let key = (k.agent.clone(), k.epoch);
        let max_per = self.bounds.max_ranges_per_epoch;
        let e = self.seen.entry(key.clone()).or_default();
        let before = if e.used == 0 { 0 } else { e.weight() };
        if e.used != 0 {
            self.by_use.remove(&e.used);
        }
        e.used = tick;
        e.seen.insert(k.seq);
        let forgotten = e.seen.forget_oldest(max_per) as u64;
        let after = e.weight();
        self.by_use.insert(tick, key.clone());
        self.weight = self.weight + after - before;
        self.forgotten += forgotten;
        while self.weight > self.bounds.max_ranges {
            let Some((_, old)) = self.by_use.pop_first() else {
                break;
            };
            if old == key && self.seen.len() == 1 {
                // Never forget the entry just written while it is the only one.
                self.by_use.insert(tick, old);
                break;
            }
            if let Some(gone) = self.seen.remove(&old) {
                self.weight -= gone.weight();
                self.forgotten += gone.weight() as u64;
            }
        }
    }

    /// Ranges forgotten so far to stay within the bounds.
    pub fn forgotten_ranges(&self) -> u64 {
        self.forgotten
    }

    /// Ranges held now (the measure the bounds apply to).
    pub fn ranges(&self) -> usize {
        self.weight
    }

    /// Counts a dropped duplicate for the batch's agent.
    pub fn count_duplicate(&mut self, k: &LedgerKey) {
        *self
            .stats
            .duplicates_dropped
            .entry(k.agent.clone())
            .or_default() += 1;
        self.dirty = true;
    }

    /// Agents with at least one durable batch remembered.
    pub fn agent_count(&self) -> usize {
        let mut agents: Vec<&String> = self.seen.keys().map(|(a, _)| a).collect();
        agents.sort();
        agents.dedup();
        agents.len()
    }

    /// The saved counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Writes the counters atomically (temp file, rename) if they changed.
    pub fn save_stats(&mut self, path: &Path) -> std::io::Result<()> {
        if !self.dirty && path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&self.stats).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, path)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_seqs_and_many_epochs_stay_within_the_bounds() {
        let mut l = Ledger::with_bounds(LedgerBounds {
            max_ranges: 100,
            max_ranges_per_epoch: 10,
        });
        // Every other seq: each its own range. The lowest are forgotten.
        for q in (1..1000).step_by(2) {
            l.insert(&LedgerKey::new("s", "a", Epoch(1), Seq(q)));
        }
        assert!(l.ranges() <= 11, "{}", l.ranges());
        assert!(l.contains(&LedgerKey::new("s", "a", Epoch(1), Seq(999))));
        assert!(!l.contains(&LedgerKey::new("s", "a", Epoch(1), Seq(1))));
        // Many agent epochs: the least recently used are forgotten.
        for e in 0..500 {
            l.insert(&LedgerKey::new("s", "b", Epoch(e), Seq(1)));
        }
        assert!(l.ranges() <= 100, "{}", l.ranges());
        assert!(l.contains(&LedgerKey::new("s", "b", Epoch(499), Seq(1))));
        assert!(!l.contains(&LedgerKey::new("s", "b", Epoch(0), Seq(1))));
        assert!(l.forgotten_ranges() > 0);
        // Contiguous seqs cost one range however many.
        let mut c = Ledger::with_bounds(LedgerBounds {
            max_ranges: 10,
            max_ranges_per_epoch: 2,
        });
        for q in 1..10_000 {
            c.insert(&LedgerKey::new("s", "c", Epoch(1), Seq(q)));
        }
        assert!(c.contains(&LedgerKey::new("s", "c", Epoch(1), Seq(1))));
        assert_eq!(c.forgotten_ranges(), 0);
    }

    #[test]
    fn ledger_dedupes_per_agent_and_epoch() {
        let mut l = Ledger::default();
        let k = LedgerKey::new("s", "a", Epoch(1), Seq(5));
        assert!(!l.contains(&k));
        l.insert(&k);
        assert!(l.contains(&k));
        assert!(!l.contains(&LedgerKey::new("s", "a", Epoch(2), Seq(5))));
        assert!(!l.contains(&LedgerKey::new("s", "b", Epoch(1), Seq(5))));
        l.count_duplicate(&k);
        assert_eq!(l.stats().duplicates_dropped.get("s/a"), Some(&1));
    }
}
