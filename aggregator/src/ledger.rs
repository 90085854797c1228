//! What the committer has made durable, per agent and epoch: the dedupe ledger.
//!
//! Memory grows with gaps in the sequence, not with batches (a [`SeqSet`] per
//! (agent, epoch)). The count of duplicates dropped per agent is saved to a small
//! JSON file so `inspect` can report it and it survives restarts.

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

/// Durable batches per agent and epoch.
#[derive(Debug, Default)]
pub struct Ledger {
    seen: HashMap<(String, Epoch), SeqSet>,
    stats: Stats,
    dirty: bool,
}

impl Ledger {
    /// An empty ledger carrying the saved counters from `path` (if readable).
    pub fn load_stats(path: &Path) -> Self {
        let stats = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            seen: HashMap::new(),
            stats,
            dirty: false,
        }
    }

    /// True if the batch is durable already.
    pub fn contains(&self, k: &LedgerKey) -> bool {
        self.seen
            .get(&(k.agent.clone(), k.epoch))
            .is_some_and(|s| s.contains(k.seq))
    }

    /// Records the batch as durable.
    pub fn insert(&mut self, k: &LedgerKey) {
        self.seen
            .entry((k.agent.clone(), k.epoch))
            .or_default()
            .insert(k.seq);
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

    /// Agents with at least one durable batch.
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
