//! The fleet run's verifier: what every simulated agent generated, what the
//! aggregator acknowledged, and what the sink holds, compared batch by batch.
//!
//! Pure bookkeeping (no I/O): the run feeds it the ledger of what was generated
//! and acknowledged, then every committed record in sink order; it answers with
//! counts a user checks. An acknowledged batch missing from the sink is **lost**
//! and fails the run; a batch the sink holds twice is a **duplicate**; a record
//! whose samples start before the end of the same sensor's previous record is
//! **out of order** (the README promises order per agent).

use ferrule_wire::record::RecordHeader;
use ferrule_wire::{Epoch, Seq};
use serde::Serialize;
use std::collections::HashMap;

/// What happened to one generated batch, as the generator saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Generated and not (yet) settled by the aggregator.
    Pending,
    /// Acknowledged: it must be in the sink.
    Acked,
    /// Refused for good by the aggregator (dropped by policy, counted).
    Rejected,
}

/// The generator's side of one agent: its epoch and each seq's fate (seqs
/// start at 1 and are contiguous).
#[derive(Debug, Clone)]
pub struct AgentLedger {
    /// The agent's id (its certificate's).
    pub agent: String,
    /// The epoch of every batch it generated.
    pub epoch: Epoch,
    /// Fate of seq `i + 1`.
    pub fates: Vec<Fate>,
    /// Samples generated in seq `i + 1`.
    pub samples: Vec<u32>,
}

/// The verdict, as the report prints it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// Batches generated.
    pub generated: u64,
    /// Batches acknowledged.
    pub acked: u64,
    /// Batches refused by the aggregator (counted, not lost).
    pub rejected: u64,
    /// Records read from the sink that belong to this run.
    pub records: u64,
    /// Acknowledged batches the sink does not hold: must be 0.
    pub lost: u64,
    /// Records holding a batch the sink already held.
    pub duplicates: u64,
    /// Duplicates are what the sink promises here, so they do not fail the
    /// run: Kafka after an aggregator crash (the producer's idempotence
    /// covers one process; batches committed but not yet acknowledged when
    /// it died are resent and committed again, and consumers drop them by
    /// (agent, epoch, seq), as the README says). The embedded log drops
    /// them across restarts, so there they fail.
    pub duplicates_expected: bool,
    /// Records whose samples go back in time against the same sensor's last
    /// record from the same agent.
    pub out_of_order: u64,
    /// Generated, never acknowledged, and not in the sink: still in flight when
    /// the run stopped (a real agent keeps these in its spool).
    pub unsettled: u64,
    /// Committed but the generator never saw the ack (it stopped first).
    pub committed_unacked: u64,
    /// Records naming an (agent, epoch, seq) this run never generated.
    pub unknown: u64,
    /// Records holding a different number of samples than were generated.
    pub wrong_samples: u64,
    /// A few examples of lost batches, `agent epoch seq`, to start looking.
    pub lost_examples: Vec<String>,
}

impl Verdict {
    /// True when something was acknowledged, everything generated was
    /// acknowledged (the fleet's batches are all valid and the run drains
    /// before it stops), and the sink holds each once, whole and in order.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// Why the run fails, one phrase per reason; empty if it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let mut check = |bad: bool, what: String| {
            if bad {
                f.push(what);
            }
        };
        check(self.acked == 0, "nothing was acknowledged".into());
        check(
            self.lost > 0,
            format!("{} acknowledged batches lost", self.lost),
        );
        check(
            self.duplicates > 0 && !self.duplicates_expected,
            format!("{} duplicates", self.duplicates),
        );
        check(
            self.out_of_order > 0,
            format!("{} out of order", self.out_of_order),
        );
        check(
            self.unknown > 0,
            format!("{} unknown records", self.unknown),
        );
        check(
            self.wrong_samples > 0,
            format!("{} records with the wrong sample count", self.wrong_samples),
        );
        check(
            self.rejected > 0,
            format!("{} batches rejected", self.rejected),
        );
        check(
            self.unsettled > 0,
            format!(
                "{} batches never acknowledged (the drain ran out)",
                self.unsettled
            ),
        );
        f
    }
}

/// Checks records against the ledgers as they are read.
#[derive(Debug)]
pub struct Verifier {
    ledgers: Vec<AgentLedger>,
    by_agent: HashMap<String, usize>,
    /// Per ledger: how many times each seq was seen in the sink.
    seen: Vec<Vec<u8>>,
    /// Per (ledger, sensor id): the latest sample time seen so far.
    last_ts: HashMap<(usize, u32), i64>,
    verdict: Verdict,
}

impl Verifier {
    /// A verifier for these agents.
    pub fn new(ledgers: Vec<AgentLedger>) -> Self {
        let by_agent = ledgers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.agent.clone(), i))
            .collect();
        let seen = ledgers.iter().map(|l| vec![0u8; l.fates.len()]).collect();
        Self {
            ledgers,
            by_agent,
            seen,
            last_ts: HashMap::new(),
            verdict: Verdict::default(),
        }
    }

    /// One committed record, in sink order, with each series' (sensor id,
    /// first sample time, last sample time) and the samples it decoded to.
    /// Records of other agents (not this run's) are ignored.
    pub fn record(&mut self, header: &RecordHeader, series: &[(u32, i64, i64)], samples: u64) {
        let Some(&i) = self.by_agent.get(&header.agent) else {
            return;
        };
        self.verdict.records += 1;
        let ledger = &self.ledgers[i];
        let idx = header.seq.0.checked_sub(1).map(|s| s as usize);
        let known = header.epoch == ledger.epoch && idx.is_some_and(|s| s < ledger.fates.len());
        let (Some(s), true) = (idx, known) else {
            self.verdict.unknown += 1;
            return;
        };
        if ledger.samples.get(s).map(|&n| u64::from(n)) != Some(samples) {
            self.verdict.wrong_samples += 1;
        }
        let count = &mut self.seen[i][s];
        *count = count.saturating_add(1);
        if *count > 1 {
            self.verdict.duplicates += 1;
            // A repeat is not an order violation of its own.
            return;
        }
        let mut back = false;
        for &(sensor, first, last) in series {
            let prev = self.last_ts.entry((i, sensor)).or_insert(i64::MIN);
            if first < *prev {
                back = true;
            }
            *prev = (*prev).max(last);
        }
        if back {
            self.verdict.out_of_order += 1;
        }
    }

    /// The verdict once every record has been read.
    pub fn finish(mut self) -> Verdict {
        let v = &mut self.verdict;
        for (ledger, seen) in self.ledgers.iter().zip(&self.seen) {
            for (s, (fate, &n)) in ledger.fates.iter().zip(seen).enumerate() {
                v.generated += 1;
                match fate {
                    Fate::Acked => {
                        v.acked += 1;
                        if n == 0 {
                            v.lost += 1;
                            if v.lost_examples.len() < 10 {
                                v.lost_examples.push(format!(
                                    "{} {} {}",
                                    ledger.agent,
                                    ledger.epoch.0,
                                    Seq(s as u64 + 1).0
                                ));
                            }
                        }
                    }
                    Fate::Rejected => v.rejected += 1,
                    Fate::Pending if n == 0 => v.unsettled += 1,
                    Fate::Pending => v.committed_unacked += 1,
                }
            }
        }
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(agent: &str, epoch: u64, seq: u64) -> RecordHeader {
        RecordHeader {
            site: "s".into(),
            agent: agent.into(),
            epoch: Epoch(epoch),
            seq: Seq(seq),
            clock_offset_ns: 0,
            received_ns: 0,
            samples: 1,
            sensors: Vec::new(),
        }
    }

    fn ledger(agent: &str, fates: &[Fate]) -> AgentLedger {
        AgentLedger {
            agent: agent.into(),
            epoch: Epoch(7),
            fates: fates.to_vec(),
            samples: vec![10; fates.len()],
        }
    }

    #[test]
    fn an_acked_batch_missing_from_the_sink_is_lost_and_fails() {
        let mut v = Verifier::new(vec![ledger("a", &[Fate::Acked, Fate::Acked, Fate::Acked])]);
        v.record(&header("a", 7, 1), &[(0, 10, 19)], 10);
        v.record(&header("a", 7, 3), &[(0, 30, 39)], 10);
        let out = v.finish();
        assert_eq!(out.lost, 1);
        assert_eq!(out.lost_examples, vec!["a 7 2".to_string()]);
        assert!(!out.passed());
    }

    #[test]
    fn repeats_backwards_samples_and_strangers_are_counted() {
        let mut v = Verifier::new(vec![
            ledger("a", &[Fate::Acked, Fate::Acked, Fate::Pending]),
            ledger("b", &[Fate::Rejected, Fate::Pending]),
        ]);
        v.record(&header("a", 7, 1), &[(0, 10, 19), (1, 10, 19)], 10);
        v.record(&header("a", 7, 1), &[(0, 10, 19)], 10);
        // Seq 3 committed before seq 2 with earlier samples: out of order.
        v.record(&header("a", 7, 3), &[(1, 30, 39)], 10);
        v.record(&header("a", 7, 2), &[(1, 20, 29)], 10);
        // A record of another run's epoch, and of someone not in this run.
        v.record(&header("b", 8, 1), &[], 10);
        v.record(&header("z", 7, 1), &[], 10);
        let out = v.finish();
        assert_eq!(out.duplicates, 1);
        assert_eq!(out.out_of_order, 1);
        assert_eq!(out.unknown, 1);
        assert_eq!(out.records, 5);
        assert_eq!(out.lost, 0);
        assert_eq!(out.committed_unacked, 1, "a seq 3 was committed, not acked");
        assert_eq!(out.unsettled, 1, "b seq 2 never left");
        assert_eq!(out.rejected, 1);
        assert_eq!((out.generated, out.acked), (5, 2));
        assert!(!out.passed());
    }

    #[test]
    fn short_records_unsettled_and_rejected_batches_and_an_empty_run_fail() {
        let mut v = Verifier::new(vec![ledger("a", &[Fate::Acked, Fate::Acked])]);
        v.record(&header("a", 7, 1), &[(0, 10, 19)], 10);
        v.record(&header("a", 7, 2), &[(0, 20, 29)], 9);
        let out = v.finish();
        assert_eq!(out.wrong_samples, 1);
        assert!(!out.passed());

        let v = Verifier::new(vec![ledger("a", &[Fate::Pending, Fate::Rejected])]);
        let out = v.finish();
        assert_eq!((out.unsettled, out.rejected, out.acked), (1, 1, 0));
        let why = out.failures();
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(!out.passed());
    }

    /// Kafka after an aggregator crash: the resent batches committed twice
    /// are reported, not failed; a loss still fails.
    #[test]
    fn expected_duplicates_are_reported_without_failing_the_run() {
        let mut v = Verifier::new(vec![ledger("a", &[Fate::Acked, Fate::Acked])]);
        v.record(&header("a", 7, 1), &[(0, 10, 19)], 10);
        v.record(&header("a", 7, 2), &[(0, 20, 29)], 10);
        v.record(&header("a", 7, 2), &[(0, 20, 29)], 10);
        let out = Verdict {
            duplicates_expected: true,
            ..v.finish()
        };
        assert_eq!((out.duplicates, out.out_of_order), (1, 0));
        assert!(out.passed(), "{out:?}");
        let lossy = Verdict {
            lost: 1,
            ..out.clone()
        };
        assert!(!lossy.passed());
        let strict = Verdict {
            duplicates_expected: false,
            ..out
        };
        assert!(!strict.passed(), "the embedded log promises no duplicates");
    }

    #[test]
    fn a_clean_run_passes() {
        let mut v = Verifier::new(vec![ledger("a", &[Fate::Acked, Fate::Acked])]);
        v.record(&header("a", 7, 1), &[(0, 10, 19)], 10);
        v.record(&header("a", 7, 2), &[(0, 20, 29)], 10);
        let out = v.finish();
        assert!(out.passed(), "{out:?}");
        assert_eq!(out.records, 2);
    }
}
