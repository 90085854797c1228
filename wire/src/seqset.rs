//! A compact set of sequence numbers: a cumulative floor plus disjoint ranges above it.
//!
//! Acks name batches this way (everything through N, plus ranges), and both session
//! sides use it to track what is settled. Memory grows with the number of gaps, not
//! with the number of batches.

use crate::ids::Seq;
use crate::message::SeqRange;
use std::collections::BTreeMap;

/// A set of [`Seq`] values stored as `through` (every seq up to it) plus ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    through: Option<u64>,
    /// Disjoint, non-adjacent ranges above `through + 1`: start -> end (inclusive).
    ranges: BTreeMap<u64, u64>,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding every seq up to and including `through`.
    pub fn with_floor(through: Option<Seq>) -> Self {
        Self {
            through: through.map(|s| s.0),
            ranges: BTreeMap::new(),
        }
    }

    /// The cumulative floor: every seq `<=` it is in the set.
    pub fn through(&self) -> Option<Seq> {
        self.through.map(Seq)
    }

    /// The ranges above the floor, ascending.
    pub fn ranges(&self) -> Vec<SeqRange> {
        self.ranges
            .iter()
            .map(|(a, b)| SeqRange {
                first: Seq(*a),
                last: Seq(*b),
            })
            .collect()
    }

    /// Number of ranges above the floor (a measure of how fragmented the set is).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// True if `seq` is in the set.
    pub fn contains(&self, seq: Seq) -> bool {
        let s = seq.0;
        if self.through.is_some_and(|t| s <= t) {
            return true;
        }
        self.ranges
            .range(..=s)
            .next_back()
            .is_some_and(|(_, end)| s <= *end)
    }

    /// Adds `seq`; returns false if it was already there.
    pub fn insert(&mut self, seq: Seq) -> bool {
        self.insert_range(seq, seq) > 0
    }

    /// Adds every seq in `first..=last`; returns how many were new.
    pub fn insert_range(&mut self, first: Seq, last: Seq) -> u64 {
        let (mut a, mut b) = (first.0, last.0);
        if a > b {
            return 0;
        }
        if let Some(t) = self.through {
            if b <= t {
                return 0;
            }
            a = a.max(t + 1);
        }
        let (a0, b0) = (a, b);
        // Merge with any range that overlaps or touches [a, b].
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=b.saturating_add(1))
            .rev()
            .take_while(|(_, end)| end.saturating_add(1) >= a)
            .map(|(s, e)| (*s, *e))
            .collect();
        let mut overlap = 0u64;
        for (s, e) in touching {
            self.ranges.remove(&s);
            if s <= b0 && e >= a0 {
                overlap += e.min(b0) - s.max(a0) + 1;
            }
            a = a.min(s);
            b = b.max(e);
        }
        self.ranges.insert(a, b);
        self.compact();
        (b0 - a0).saturating_add(1) - overlap
    }

    /// Forgets the lowest seqs (the floor first, then the lowest ranges) until at
    /// most `max_ranges` ranges remain; returns how many ranges were forgotten
    /// (the floor counts as one).
    ///
    /// For bookkeeping where forgetting is safe because a forgotten seq seen again
    /// is merely handled again (a duplicate written, never a batch lost): it keeps
    /// a peer that settles scattered seqs from growing the set without bound.
    ///
    /// ```
    /// use ferrule_wire::{Seq, SeqSet};
    /// let mut s = SeqSet::with_floor(Some(Seq(3)));
    /// for q in [10, 20, 30] { s.insert(Seq(q)); }
    /// assert_eq!(s.forget_oldest(2), 2);
    /// assert!(!s.contains(Seq(1)) && !s.contains(Seq(10)));
    /// assert!(s.contains(Seq(20)) && s.contains(Seq(30)));
    /// ```
    pub fn forget_oldest(&mut self, max_ranges: usize) -> usize {
        if self.ranges.len() <= max_ranges {
            return 0;
        }
        let mut forgotten = usize::from(self.through.take().is_some());
        while self.ranges.len() > max_ranges {
            self.ranges.pop_first();
            forgotten += 1;
        }
        forgotten
    }

    /// Folds a range that starts right after the floor into the floor.
    fn compact(&mut self) {
        let next = self.through.map_or(0, |t| t + 1);
        if let Some(end) = self.ranges.remove(&next) {
            self.through = Some(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn floor_advances_over_contiguous_inserts() {
        let mut s = SeqSet::with_floor(Some(Seq(4)));
        assert!(s.contains(Seq(0)) && s.contains(Seq(4)) && !s.contains(Seq(5)));
        assert!(s.insert(Seq(7)));
        assert!(!s.insert(Seq(7)));
        assert!(!s.insert(Seq(3)));
        assert_eq!(s.through(), Some(Seq(4)));
        assert!(s.insert(Seq(5)));
        assert!(s.insert(Seq(6)));
        assert_eq!(s.through(), Some(Seq(7)));
        assert_eq!(s.range_count(), 0);
    }

    proptest! {
        #[test]
        fn matches_a_plain_set(ops in proptest::collection::vec((0u64..200, 0u64..5), 0..200)) {
            let mut s = SeqSet::new();
            let mut model = BTreeSet::new();
            for (a, w) in ops {
                let added = s.insert_range(Seq(a), Seq(a + w));
                let mut n = 0;
                for x in a..=a + w {
                    if model.insert(x) { n += 1; }
                }
                prop_assert_eq!(added, n);
            }
            for x in 0..210 {
                prop_assert_eq!(s.contains(Seq(x)), model.contains(&x));
            }
            // Ranges are disjoint, non-adjacent and above the floor.
            let floor = s.through().map_or(0, |t| t.0 + 1);
            let mut last_end: Option<u64> = None;
            for r in s.ranges() {
                prop_assert!(r.first.0 > floor);
                if let Some(e) = last_end { prop_assert!(r.first.0 > e + 1); }
                last_end = Some(r.last.0);
            }
        }
    }
}
