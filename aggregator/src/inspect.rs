//! `inspect`: what an embedded log holds, per agent, as JSON.
//!
//! Reads the log without modifying it (safe while the aggregator runs): record
//! headers only, never the samples. Reports totals, and per agent the events,
//! batches, last sequence number, gaps in the sequence, duplicates found in the
//! log (should be 0: the committer drops the ones it can see) and duplicates the
//! committer dropped (from its saved counters).

use crate::commit::{LOG_SUBDIR, STATS_FILE};
use crate::ledger::Ledger;
use ferrule_disklog::Offset;
use ferrule_wire::record::decode_record_header;
use ferrule_wire::{Epoch, Seq, SeqSet};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One agent's part of the report.
#[derive(Debug, Default, Serialize)]
pub struct AgentReport {
    /// Samples in the log.
    pub events: u64,
    /// Batches in the log.
    pub batches: u64,
    /// Highest sequence number of the newest epoch.
    pub last_seq: u64,
    /// The newest epoch seen.
    pub epoch: u64,
    /// Epochs seen.
    pub epochs: usize,
    /// Sequence numbers missing between the lowest and highest of each epoch.
    pub seq_gaps: u64,
    /// Sequence numbers missing between the lowest and highest over all epochs.
    /// An agent's spool numbers its batches on across its epochs (every start
    /// begins one), so this is 0 when nothing it spooled is missing; it is
    /// meaningless only for an agent whose spool directory was lost and started
    /// over at 1.
    pub seqs_missing: u64,
    /// Batches present more than once in the log.
    pub duplicates_in_log: u64,
    /// Retransmits the committer recognised and did not write.
    pub duplicates_dropped: u64,
    /// The agent's last reported clock offset, nanoseconds.
    pub clock_offset_ns: i64,
}

/// The whole report.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Samples in the log.
    pub total_events: u64,
    /// Batches in the log.
    pub total_batches: u64,
    /// Batches present more than once.
    pub duplicates_in_log: u64,
    /// Retransmits dropped by the committer, all agents.
    pub duplicates_dropped: u64,
    /// Records that did not decode.
    pub undecodable_records: u64,
    /// Per agent (`site/agent`).
    pub agents: BTreeMap<String, AgentReport>,
}

impl Report {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// Reads the log under `data` (the aggregator's `log.dir`).
pub fn inspect(data: &Path) -> anyhow::Result<Report> {
    let log_dir = data.join(LOG_SUBDIR);
    anyhow::ensure!(log_dir.is_dir(), "no embedded log at {}", log_dir.display());
    let (reader, _) = ferrule_disklog::LogReader::open_read_only(&log_dir)?;
    let mut report = Report::default();
    let mut seen: BTreeMap<(String, Epoch), SeqSet> = BTreeMap::new();
    let mut union: BTreeMap<String, SeqSet> = BTreeMap::new();
    let mut from = Offset(0);
    loop {
        let recs = reader.read_records(from, 4096, 64 << 20)?;
        let Some(last) = recs.last() else { break };
        from = Offset(last.offset.0 + 1);
        for r in recs {
            let h = match decode_record_header(&r.payload) {
                Ok(h) => h,
                Err(_) => {
                    report.undecodable_records += 1;
                    continue;
                }
            };
            let key = format!("{}/{}", h.site, h.agent);
            union.entry(key.clone()).or_default().insert(h.seq);
            let set = seen.entry((key.clone(), h.epoch)).or_default();
            let a = report.agents.entry(key).or_default();
            if !set.insert(h.seq) {
                a.duplicates_in_log += 1;
                report.duplicates_in_log += 1;
                continue;
            }
            a.events += u64::from(h.samples);
            a.batches += 1;
            report.total_events += u64::from(h.samples);
            report.total_batches += 1;
            if h.epoch.0 > a.epoch || (h.epoch.0 == a.epoch && h.seq.0 >= a.last_seq) {
                a.epoch = h.epoch.0;
                a.last_seq = h.seq.0;
                a.clock_offset_ns = h.clock_offset_ns;
            }
        }
    }
    for ((agent, _), set) in &seen {
        let a = report.agents.entry(agent.clone()).or_default();
        a.epochs += 1;
        a.seq_gaps += gaps(set);
    }
    for (agent, set) in &union {
        report.agents.entry(agent.clone()).or_default().seqs_missing = gaps(set);
    }
    let ledger = Ledger::load_stats(&data.join(STATS_FILE), Default::default());
    for (agent, n) in &ledger.stats().duplicates_dropped {
        report
            .agents
            .entry(agent.clone())
            .or_default()
            .duplicates_dropped = *n;
        report.duplicates_dropped += n;
    }
    Ok(report)
}

/// Missing sequence numbers between the lowest and highest present.
fn gaps(set: &SeqSet) -> u64 {
    let ranges = set.ranges();
    let Some(last) = ranges.last().map(|r| r.last).or(set.through()) else {
        return 0;
    };
    // Sequence numbers start at 1; a floor means 0..=through are all present.
    let first = match set.through() {
        Some(_) => Seq(0),
        None => ranges.first().map_or(Seq(1), |r| r.first),
    };
    let present: u64 = ranges.iter().map(|r| r.last.0 - r.first.0 + 1).sum::<u64>()
        + set.through().map_or(0, |t| t.0 + 1);
    (last.0 - first.0 + 1).saturating_sub(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_missing_sequence_numbers() {
        let mut s = SeqSet::new();
        for q in [1, 2, 3, 5, 9] {
            s.insert(Seq(q));
        }
        assert_eq!(gaps(&s), 4);
        let mut s = SeqSet::new();
        for q in 10..20 {
            s.insert(Seq(q));
        }
        assert_eq!(gaps(&s), 0);
    }
}
