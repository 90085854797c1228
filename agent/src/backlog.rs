//! How much of the spool is still waiting for an acknowledgement, in bytes and in
//! time: the direct answer to "is the spool drained, and how far behind is it?".
//! `ferrule_agent_spool_bytes` cannot say it, since segment files stay on disk
//! until a whole segment is released.
//!
//! Sans-IO: the spool reports appends (seq, record bytes, wall time) and the
//! oldest unacknowledged seq; this keeps marks and answers. Memory is bounded
//! whatever the backlog: past [`MAX_MARKS`] marks every other one is dropped,
//! so a long outage costs resolution, never memory. An answer is then
//! conservative: the bytes and age of the oldest mark at or before the oldest
//! unacknowledged batch, so never smaller than the truth (bar clock jumps).

use std::collections::VecDeque;

/// Marks kept at most (each 24 bytes).
pub const MAX_MARKS: usize = 4096;

/// One appended batch (or, after thinning, the first of a run of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    /// Its seq.
    seq: u64,
    /// Bytes appended before it (the running total at its start).
    bytes_before: u64,
    /// When it was appended, wall clock, ns since the Unix epoch.
    time_ns: u64,
}

/// Unacknowledged bytes and age, from appends and the acknowledged prefix.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    marks: VecDeque<Mark>,
    /// Bytes appended in all (the running total after the last append).
    bytes_total: u64,
    /// Least seq distance between marks: 1 until [`MAX_MARKS`] is reached, then
    /// doubled each time the marks fill up, so spacing stays even over the
    /// whole backlog (never coarse at the old end only).
    stride: u64,
}

impl Backlog {
    /// Starts with what an earlier run left: `bytes` unacknowledged from `seq` on,
    /// the oldest appended at `time_ns`. Nothing left: `bytes` 0, no mark.
    pub fn recovered(seq: u64, bytes: u64, time_ns: u64) -> Self {
        let mut b = Self::default();
        if bytes > 0 {
            b.marks.push_back(Mark {
                seq,
                bytes_before: 0,
                time_ns,
            });
            b.bytes_total = bytes;
        }
        b
    }

    /// A batch `seq` of `bytes` (its record on disk) was appended at `time_ns`.
    pub fn appended(&mut self, seq: u64, bytes: u64, time_ns: u64) {
        if self.marks.len() >= MAX_MARKS && self.is_due(seq) {
            // Double the spacing everywhere: keep the oldest, then each mark at
            // least the new stride after the last one kept.
            self.stride = self.stride.max(1).saturating_mul(2);
            let stride = self.stride;
            let mut last: Option<u64> = None;
            self.marks.retain(|m| {
                let keep = last.is_none_or(|l| m.seq.saturating_sub(l) >= stride);
                if keep {
                    last = Some(m.seq);
                }
                keep
            });
        }
        if self.is_due(seq) {
            self.marks.push_back(Mark {
                seq,
                bytes_before: self.bytes_total,
                time_ns,
            });
        }
        self.bytes_total = self.bytes_total.saturating_add(bytes);
    }

    /// True when `seq` is far enough past the newest mark to get its own.
    fn is_due(&self, seq: u64) -> bool {
        self.marks
            .back()
            .is_none_or(|m| seq.saturating_sub(m.seq) >= self.stride.max(1))
    }

    /// Everything below `first_unacked` is acknowledged (or dropped): forget the
    /// marks it covers, keeping the last one at or before it.
    pub fn settled_below(&mut self, first_unacked: u64) {
        while self.marks.len() >= 2 && self.marks[1].seq <= first_unacked {
            self.marks.pop_front();
        }
    }

    /// Bytes not yet acknowledged, given the oldest unacknowledged seq and the next
    /// seq to be given (`first_unacked == next_seq`: drained, 0).
    pub fn unacked_bytes(&self, first_unacked: u64, next_seq: u64) -> u64 {
        if first_unacked >= next_seq {
            return 0;
        }
        match self.front_at_or_before(first_unacked) {
            Some(m) => self.bytes_total.saturating_sub(m.bytes_before),
            None => self.bytes_total,
        }
    }

    /// Age of the oldest unacknowledged batch at `now_ns` (0 when drained).
    pub fn oldest_age_ns(&self, first_unacked: u64, next_seq: u64, now_ns: u64) -> u64 {
        self.oldest_time_ns(first_unacked, next_seq)
            .map_or(0, |t| now_ns.saturating_sub(t))
    }

    /// When the oldest unacknowledged batch was appended, wall clock, ns since
    /// the Unix epoch (`None` when drained): what the uplink reports, so the
    /// age is taken when the report leaves rather than when it was read.
    pub fn oldest_time_ns(&self, first_unacked: u64, next_seq: u64) -> Option<u64> {
        if first_unacked >= next_seq {
            return None;
        }
        self.front_at_or_before(first_unacked)
            .or_else(|| self.marks.front().copied())
            .map(|m| m.time_ns)
    }

    /// The newest mark at or before `first_unacked`: the start of the run of
    /// batches the oldest unacknowledged one belongs to.
    fn front_at_or_before(&self, first_unacked: u64) -> Option<Mark> {
        let i = self.marks.partition_point(|m| m.seq <= first_unacked);
        i.checked_sub(1).and_then(|i| self.marks.get(i)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_is_zero_and_a_backlog_counts_from_the_oldest_unacked() {
        let mut b = Backlog::default();
        assert_eq!(b.unacked_bytes(1, 1), 0);
        for seq in 1..=5 {
            b.appended(seq, 100, seq * 1_000_000_000);
        }
        assert_eq!(b.unacked_bytes(1, 6), 500);
        assert_eq!(b.oldest_age_ns(1, 6, 10_000_000_000), 9_000_000_000);
        assert_eq!(b.oldest_time_ns(1, 6), Some(1_000_000_000));
        b.settled_below(3);
        assert_eq!(b.unacked_bytes(3, 6), 300);
        assert_eq!(b.oldest_age_ns(3, 6, 10_000_000_000), 7_000_000_000);
        b.settled_below(6);
        assert_eq!(b.unacked_bytes(6, 6), 0);
        assert_eq!(b.oldest_age_ns(6, 6, 10_000_000_000), 0);
        assert_eq!(b.oldest_time_ns(6, 6), None, "drained: no oldest");
        assert_eq!(b.marks.len(), 1, "one mark kept once drained");
        b.appended(6, 50, 11_000_000_000);
        assert_eq!(b.unacked_bytes(6, 7), 50, "counted from its own mark");
        assert_eq!(b.oldest_age_ns(6, 7, 12_000_000_000), 1_000_000_000);
    }

    #[test]
    fn what_an_earlier_run_left_is_counted_until_acknowledged() {
        let mut b = Backlog::recovered(40, 4_000, 1_000);
        assert_eq!(b.unacked_bytes(40, 50), 4_000);
        b.appended(50, 100, 2_000);
        assert_eq!(b.unacked_bytes(40, 51), 4_100);
        assert_eq!(b.oldest_age_ns(40, 51, 3_000), 2_000);
        b.settled_below(50);
        assert_eq!(b.unacked_bytes(50, 51), 100);
        assert_eq!(Backlog::recovered(1, 0, 0).unacked_bytes(1, 1), 0);
    }

    #[test]
    fn memory_is_bounded_and_answers_stay_conservative() {
        let mut b = Backlog::default();
        let n = 100_000u64;
        for seq in 1..=n {
            b.appended(seq, 10, seq);
        }
        assert!(b.marks.len() <= MAX_MARKS);
        for first in [1, 2, 777, 50_001, n] {
            b.settled_below(first);
            let truth = (n + 1 - first) * 10;
            let got = b.unacked_bytes(first, n + 1);
            assert!(got >= truth, "never less than the truth: {got} < {truth}");
            assert!(
                got <= truth + 10 * 4 * (n / MAX_MARKS as u64 + 1),
                "within the resolution: {got} for {truth}"
            );
            let age = b.oldest_age_ns(first, n + 1, n + 10);
            assert!(age >= n + 10 - first, "age never less than the truth");
        }
    }

    #[test]
    fn a_clock_that_jumps_back_gives_zero_not_a_huge_age() {
        let mut b = Backlog::default();
        b.appended(1, 10, 5_000);
        assert_eq!(b.oldest_age_ns(1, 2, 1_000), 0);
    }
}
