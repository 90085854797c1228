//! Read planning: turns a register map into as few read requests as the Modbus
//! limits allow. Pure: no I/O, no clock.
//!
//! Every request round trip costs a device (often a small PLC or a meter behind a
//! serial gateway) far more than a few extra registers do, so points of the same
//! table are merged into one read when they are adjacent, overlap, or are
//! separated by at most [`Limits::max_gap`] unused addresses.
//!
//! Invariants of [`plan_reads`]:
//! - every point lies entirely inside exactly one read, of its own table, and the
//!   read lists it;
//! - no read is longer than [`Limits::max_registers`] (register tables) or
//!   [`Limits::max_bits`] (bit tables), and none runs past address 65535;
//! - inside a read, no run of addresses that no point covers is longer than
//!   [`Limits::max_gap`];
//! - reads come out ordered by table (coils, discrete inputs, holding, input
//!   registers), then by address, so a plan is deterministic.
//!
//! Merging is greedy in address order, which gives the fewest reads when the
//! points do not overlap (the usual map); overlapping points of different sizes
//! are allowed and still covered.

use super::map::{Kind, Point};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The Modbus protocol limit on registers per read (functions 0x03 and 0x04).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// The Modbus protocol limit on bits per read (functions 0x01 and 0x02).
pub const MAX_BITS_PER_READ: u16 = 2000;

/// Bounds on the reads the planner makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most registers in one read; some devices accept fewer than the protocol's 125.
    pub max_registers: u16,
    /// Most coils or discrete inputs in one read; protocol limit 2000.
    pub max_bits: u16,
    /// Most consecutive unused addresses a read may span to merge two points.
    pub max_gap: u16,
}

impl Default for Limits {
    /// The protocol limits and a gap of 8.
    fn default() -> Self {
        Self {
            max_registers: MAX_REGISTERS_PER_READ,
            max_bits: MAX_BITS_PER_READ,
            max_gap: 8,
        }
    }
}

impl Limits {
    /// The most addresses one read of table `kind` may cover (never below 4, the
    /// widest point, so every point fits in a read).
    pub fn max_len(&self, kind: Kind) -> u16 {
        let configured = if kind.is_bits() {
            self.max_bits.min(MAX_BITS_PER_READ)
        } else {
            self.max_registers.min(MAX_REGISTERS_PER_READ)
        };
        configured.max(4)
    }
}

/// One planned read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The table read.
    pub kind: Kind,
    /// First address.
    pub start: u16,
    /// Number of registers or bits.
    pub count: u16,
    /// Indices (into the planned slice) of the points this read covers, in address order.
    pub points: Vec<usize>,
}

impl Read {
    /// One past the last address read.
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// The reads that cover every point of `points` in as few requests as `limits`
/// allow (see the module doc for the guarantees).
///
/// ```
/// use ferrule_agent::inputs::modbus::map::{Kind, Point, ValueType};
/// use ferrule_agent::inputs::modbus::plan::{plan_reads, Limits};
/// let points = [
///     Point::plain(Kind::Holding, 0, ValueType::U16)?,
///     Point::plain(Kind::Holding, 1, ValueType::F32)?,
///     Point::plain(Kind::Holding, 8, ValueType::U16)?,   // a gap of 5: merged
///     Point::plain(Kind::Holding, 500, ValueType::U16)?, // far: its own read
///     Point::plain(Kind::Coil, 0, ValueType::Bool)?,
/// ];
/// let plan = plan_reads(&points, Limits::default());
/// let spans: Vec<_> = plan.iter().map(|r| (r.kind, r.start, r.count)).collect();
/// assert_eq!(spans, [(Kind::Coil, 0, 1), (Kind::Holding, 0, 9), (Kind::Holding, 500, 1)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn plan_reads(points: &[Point], limits: Limits) -> Vec<Read> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    // Table, then address, then the longer point first so the read's end is known
    // as early as possible.
    order.sort_by_key(|&i| {
        let p = &points[i];
        (p.kind(), p.address(), std::cmp::Reverse(p.width()), i)
    });
    let mut reads: Vec<Read> = Vec::new();
    for i in order {
        let p = &points[i];
        let max_len = u32::from(limits.max_len(p.kind()));
        if let Some(last) = reads.last_mut() {
            let same_table = last.kind == p.kind();
            let gap = u32::from(p.address()).saturating_sub(last.end());
            let new_end = last.end().max(p.end());
            if same_table
                && gap <= u32::from(limits.max_gap)
                && new_end - u32::from(last.start) <= max_len
            {
                // Fits in u16: bounded by max_len above.
                last.count = u16::try_from(new_end - u32::from(last.start)).unwrap_or(last.count);
                last.points.push(i);
                continue;
            }
        }
        reads.push(Read {
            kind: p.kind(),
            start: p.address(),
            count: p.width(),
            points: vec![i],
        });
    }
    reads
}

/// How long a plan split around refused addresses is kept before the merged
/// reads are tried again (a device's map may have been fixed or extended).
pub const REPROBE_EVERY: Duration = Duration::from_secs(600);

/// What [`AdaptivePlan::refused`] did with a read the device answered with
/// `IllegalDataAddress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The read covered several points: it was replaced, at the same index, by
    /// two reads over halves of its points, to be tried in the same poll.
    Split,
    /// The read covered one point (or points that all cover the same
    /// addresses): those addresses themselves are refused. The read is gone from the plan until the
    /// next re-probe; `newly_bad` lists the points not already known to be bad
    /// (to count and log once).
    Dropped {
        /// Points refused for the first time since they last answered.
        newly_bad: Vec<usize>,
    },
}

/// A read plan that learns which addresses a device refuses. Pure: time is
/// passed in.
///
/// Merging bridges unused addresses, and some devices refuse a whole read with
/// exception 0x02 (`IllegalDataAddress`) when it covers one they do not map.
/// Without a fallback every point of such a read would get no value on every
/// poll. Instead the driver reports the refusal with [`AdaptivePlan::refused`]:
/// the read is split in two (halves of its points) and the halves are read in
/// the same poll, recursively, until the refused address is isolated; a point
/// whose own address is refused is dropped from the plan and reported once.
/// The split plan is kept, so later polls send only the reads that work, and
/// every [`REPROBE_EVERY`] the merged plan is restored and probed again (the
/// same poll splits it again if the device still refuses, so no value is lost).
///
/// ```
/// use ferrule_agent::inputs::modbus::map::{Kind, Point, ValueType};
/// use ferrule_agent::inputs::modbus::plan::{AdaptivePlan, Limits, Refusal};
/// let points = [
///     Point::plain(Kind::Holding, 96, ValueType::U16)?,
///     Point::plain(Kind::Holding, 100, ValueType::U16)?,
/// ];
/// let now = std::time::Instant::now();
/// let mut plan = AdaptivePlan::new(&points, Limits::default());
/// assert_eq!(plan.reads().len(), 1); // 96..101, over the hole 97..99
/// assert_eq!(plan.refused(0, &points, now), Refusal::Split);
/// let spans: Vec<_> = plan.reads().iter().map(|r| (r.start, r.count)).collect();
/// assert_eq!(spans, [(96, 1), (100, 1)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct AdaptivePlan {
    /// The merged plan, restored at each re-probe.
    merged: Vec<Read>,
    /// The reads polled now.
    reads: Vec<Read>,
    /// Points whose own address was refused and has not answered since.
    bad: BTreeSet<usize>,
    /// When the merged plan is restored, once a read was split or dropped.
    reprobe_at: Option<Instant>,
}

impl AdaptivePlan {
    /// The merged plan of `points` ([`plan_reads`]).
    pub fn new(points: &[Point], limits: Limits) -> Self {
        let merged = plan_reads(points, limits);
        Self {
            reads: merged.clone(),
            merged,
            bad: BTreeSet::new(),
            reprobe_at: None,
        }
    }

    /// The reads to send this poll, in order.
    pub fn reads(&self) -> &[Read] {
        &self.reads
    }

    /// Points known to be refused by the device (their own address).
    pub fn bad_points(&self) -> impl Iterator<Item = usize> + '_ {
        self.bad.iter().copied()
    }

    /// Call at the start of a poll: restores the merged plan if a split one is
    /// due for a re-probe. True if it did.
    pub fn start_poll(&mut self, now: Instant) -> bool {
        match self.reprobe_at {
            Some(at) if now >= at => {
                self.reads = self.merged.clone();
                self.reprobe_at = None;
                true
            }
            _ => false,
        }
    }

    /// Read `r` answered: its points are good again.
    pub fn answered(&mut self, r: usize) {
        if let Some(read) = self.reads.get(r) {
            for i in &read.points {
                self.bad.remove(i);
            }
        }
    }

    /// Read `r` was refused with `IllegalDataAddress`: splits or drops it (see
    /// [`Refusal`]). The reads after it keep their order; the driver goes on at
    /// index `r`, which is now the first half of a split or the next read.
    /// `points` is the slice the plan was made from. An `r` out of range is
    /// ignored (reported as nothing newly bad).
    pub fn refused(&mut self, r: usize, points: &[Point], now: Instant) -> Refusal {
        if r >= self.reads.len() {
            return Refusal::Dropped { newly_bad: vec![] };
        }
        if self.reprobe_at.is_none() {
            self.reprobe_at = Some(now + REPROBE_EVERY);
        }
        let read = self.reads.remove(r);
        // Points with the same span cannot be told apart by a smaller read.
        let span_of = |i: usize| points.get(i).map(|p| (p.address(), p.width()));
        let first = read.points.first().and_then(|&i| span_of(i));
        let one_span = read.points.iter().all(|&i| span_of(i) == first);
        if read.points.len() < 2 || one_span {
            let newly_bad = read
                .points
                .iter()
                .copied()
                .filter(|&i| self.bad.insert(i))
                .collect();
            return Refusal::Dropped { newly_bad };
        }
        // `read.points` is in address order: the halves cover disjoint ranges
        // (up to points that overlap), each shorter than the read.
        let (left, right) = read.points.split_at(read.points.len() / 2);
        let halves = [left, right].map(|half| span(read.kind, half, points));
        self.reads.splice(r..r, halves.into_iter().flatten());
        Refusal::Split
    }
}

/// The read covering exactly `idx` (indices into `points`, in address order).
fn span(kind: Kind, idx: &[usize], points: &[Point]) -> Option<Read> {
    let start = idx
        .iter()
        .filter_map(|&i| points.get(i))
        .map(Point::address)
        .min()?;
    let end = idx
        .iter()
        .filter_map(|&i| points.get(i))
        .map(Point::end)
        .max()?;
    Some(Read {
        kind,
        start,
        // A sub-range of a planned read: fits in u16.
        count: u16::try_from(end - u32::from(start)).unwrap_or(u16::MAX),
        points: idx.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::modbus::map::ValueType::{self, *};

    fn p(kind: Kind, address: u16, ty: ValueType) -> Point {
        Point::plain(kind, address, ty).unwrap()
    }

    fn spans(plan: &[Read]) -> Vec<(Kind, u16, u16)> {
        plan.iter().map(|r| (r.kind, r.start, r.count)).collect()
    }

    /// Checks the module's invariants on any plan.
    fn check(points: &[Point], limits: Limits, plan: &[Read]) {
        let mut seen = vec![0; points.len()];
        for r in plan {
            assert!(
                u32::from(r.count) <= u32::from(limits.max_len(r.kind)),
                "{r:?}"
            );
            assert!(r.end() <= 0x1_0000);
            let mut covered = vec![false; usize::from(r.count)];
            for &i in &r.points {
                seen[i] += 1;
                let q = &points[i];
                assert_eq!(q.kind(), r.kind);
                assert!(
                    q.address() >= r.start && q.end() <= r.end(),
                    "{q:?} outside {r:?}"
                );
                for a in q.address()..=(q.end() - 1) as u16 {
                    covered[usize::from(a - r.start)] = true;
                }
            }
            let longest_gap = covered.split(|c| *c).map(<[bool]>::len).max().unwrap_or(0);
            assert!(longest_gap <= usize::from(limits.max_gap), "{r:?}");
        }
        assert!(seen.iter().all(|n| *n == 1), "{seen:?}");
        let keys: Vec<_> = plan.iter().map(|r| (r.kind, r.start)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn contiguous_and_nearly_contiguous_points_share_a_read() {
        let points = [
            p(Kind::Holding, 0, U16),
            p(Kind::Holding, 1, I16),
            p(Kind::Holding, 2, U32),
            p(Kind::Holding, 4, F64),
            // 8 unused (8..16): still merged.
            p(Kind::Holding, 16, F32),
            // 9 unused (18..27): a new read.
            p(Kind::Holding, 27, U16),
            p(Kind::Input, 0, U16),
            p(Kind::Input, 1, U16),
        ];
        let plan = plan_reads(&points, Limits::default());
        check(&points, Limits::default(), &plan);
        assert_eq!(
            spans(&plan),
            [
                (Kind::Holding, 0, 18),
                (Kind::Holding, 27, 1),
                (Kind::Input, 0, 2)
            ]
        );
        assert_eq!(plan[0].points, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn tables_never_share_a_read() {
        let points = [
            p(Kind::Input, 0, U16),
            p(Kind::Holding, 0, U16),
            p(Kind::Discrete, 0, Bool),
            p(Kind::Coil, 0, Bool),
            p(Kind::Coil, 1, Bool),
        ];
        let plan = plan_reads(&points, Limits::default());
        check(&points, Limits::default(), &plan);
        assert_eq!(
            spans(&plan),
            [
                (Kind::Coil, 0, 2),
                (Kind::Discrete, 0, 1),
                (Kind::Holding, 0, 1),
                (Kind::Input, 0, 1)
            ]
        );
        assert_eq!(plan[0].points, [3, 4]);
    }

    #[test]
    fn reads_respect_the_protocol_limits() {
        // 200 consecutive f32s: 400 registers, so 4 reads (124 + 124 + 124 + 28,
        // since a 2-register point cannot straddle two reads).
        let points: Vec<Point> = (0..200).map(|i| p(Kind::Holding, i * 2, F32)).collect();
        let plan = plan_reads(&points, Limits::default());
        check(&points, Limits::default(), &plan);
        assert_eq!(
            spans(&plan),
            [
                (Kind::Holding, 0, 124),
                (Kind::Holding, 124, 124),
                (Kind::Holding, 248, 124),
                (Kind::Holding, 372, 28)
            ]
        );
        // 2500 coils: 2000 + 500.
        let coils: Vec<Point> = (0..2500).map(|i| p(Kind::Coil, i, Bool)).collect();
        let plan = plan_reads(&coils, Limits::default());
        check(&coils, Limits::default(), &plan);
        assert_eq!(
            spans(&plan),
            [(Kind::Coil, 0, 2000), (Kind::Coil, 2000, 500)]
        );
        // A device that takes at most 10 registers per read.
        let small = Limits {
            max_registers: 10,
            ..Limits::default()
        };
        let plan = plan_reads(&points[..10], small);
        check(&points[..10], small, &plan);
        assert_eq!(
            spans(&plan),
            [(Kind::Holding, 0, 10), (Kind::Holding, 10, 10)]
        );
    }

    #[test]
    fn a_gap_of_zero_merges_only_adjacent_points() {
        let limits = Limits {
            max_gap: 0,
            ..Limits::default()
        };
        let points = [
            p(Kind::Holding, 0, U16),
            p(Kind::Holding, 1, U16),
            p(Kind::Holding, 3, U16),
        ];
        let plan = plan_reads(&points, limits);
        check(&points, limits, &plan);
        assert_eq!(spans(&plan), [(Kind::Holding, 0, 2), (Kind::Holding, 3, 1)]);
    }

    #[test]
    fn overlapping_points_of_different_sizes_are_fine() {
        // A float and its two halves, a u64 and its low u32, listed out of order.
        let points = [
            p(Kind::Holding, 11, U16),
            p(Kind::Holding, 10, F32),
            p(Kind::Holding, 10, U16),
            p(Kind::Holding, 20, U64),
            p(Kind::Holding, 22, U32),
        ];
        let plan = plan_reads(&points, Limits::default());
        check(&points, Limits::default(), &plan);
        assert_eq!(spans(&plan), [(Kind::Holding, 10, 14)]);
        assert_eq!(plan[0].points, [1, 2, 0, 3, 4]);
    }

    #[test]
    fn the_end_of_the_address_space() {
        let points = [
            p(Kind::Holding, 65530, F32),
            p(Kind::Holding, 65532, F64),
            p(Kind::Coil, 65535, Bool),
        ];
        let plan = plan_reads(&points, Limits::default());
        check(&points, Limits::default(), &plan);
        assert_eq!(
            spans(&plan),
            [(Kind::Coil, 65535, 1), (Kind::Holding, 65530, 6)]
        );
    }

    #[test]
    fn an_empty_map_plans_nothing() {
        assert!(plan_reads(&[], Limits::default()).is_empty());
    }

    #[test]
    fn invariants_hold_for_scattered_maps() {
        // A deterministic pseudo-random sweep over maps and limits.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let types = [U16, I16, U32, I32, U64, I64, F32, F64];
        for _ in 0..300 {
            let n = next(60) as usize;
            let points: Vec<Point> = (0..n)
                .map(|_| {
                    let kind =
                        [Kind::Coil, Kind::Discrete, Kind::Holding, Kind::Input][next(4) as usize];
                    let ty = if kind.is_bits() {
                        Bool
                    } else {
                        types[next(8) as usize]
                    };
                    p(kind, next(400) as u16, ty)
                })
                .collect();
            let limits = Limits {
                max_registers: next(130) as u16,
                max_bits: next(2100) as u16,
                max_gap: next(20) as u16,
            };
            check(&points, limits, &plan_reads(&points, limits));
        }
    }

    /// Drives a plan through polls against a device that refuses `holes`
    /// (a read is refused if it covers any of them); returns the requests sent
    /// and the points that got a value, per poll.
    fn poll(
        plan: &mut AdaptivePlan,
        points: &[Point],
        holes: &[u16],
        now: Instant,
    ) -> (usize, Vec<usize>, Vec<usize>) {
        plan.start_poll(now);
        let (mut requests, mut got, mut newly_bad) = (0, vec![], vec![]);
        let mut r = 0;
        while r < plan.reads().len() {
            requests += 1;
            let read = &plan.reads()[r];
            if holes
                .iter()
                .any(|h| u32::from(*h) >= u32::from(read.start) && u32::from(*h) < read.end())
            {
                if let Refusal::Dropped { newly_bad: b } = plan.refused(r, points, now) {
                    newly_bad.extend(b);
                }
                continue;
            }
            got.extend(read.points.iter().copied());
            plan.answered(r);
            r += 1;
        }
        got.sort_unstable();
        (requests, got, newly_bad)
    }

    #[test]
    fn a_refused_merged_read_is_split_and_the_good_points_still_read() {
        // 96 and 100 merge over the hole 97..99; 98 sits in the hole itself.
        let points = [
            p(Kind::Holding, 0, U16),
            p(Kind::Holding, 22, U16),
            p(Kind::Holding, 30, U16),
            p(Kind::Holding, 96, U16),
            p(Kind::Holding, 98, U16),
            p(Kind::Holding, 100, U32),
            p(Kind::Holding, 1000, U16),
        ];
        let limits = Limits {
            max_gap: 80,
            ..Limits::default()
        };
        let holes = [97, 98, 99, 1000];
        let t0 = Instant::now();
        let mut plan = AdaptivePlan::new(&points, limits);
        assert_eq!(
            spans(plan.reads()),
            [(Kind::Holding, 0, 102), (Kind::Holding, 1000, 1)]
        );
        // The first poll finds the holes and still reads every good point.
        let (requests, got, bad) = poll(&mut plan, &points, &holes, t0);
        assert_eq!(got, [0, 1, 2, 3, 5]);
        assert_eq!(bad, [4, 6]);
        assert_eq!(requests, 8);
        assert_eq!(
            spans(plan.reads()),
            [
                (Kind::Holding, 0, 31),
                (Kind::Holding, 96, 1),
                (Kind::Holding, 100, 2)
            ]
        );
        check_cover(&points, plan.reads(), &[4, 6]);
        // Later polls send only the reads that work, and report nothing again.
        for s in 1..5 {
            let (requests, got, bad) =
                poll(&mut plan, &points, &holes, t0 + Duration::from_secs(s));
            assert_eq!((requests, got, bad), (3, vec![0, 1, 2, 3, 5], vec![]));
        }
        assert_eq!(plan.bad_points().collect::<Vec<_>>(), [4, 6]);
        // The re-probe restores the merged reads; the same poll splits them
        // again without losing a value, and the known-bad points are not
        // reported twice.
        let later = t0 + REPROBE_EVERY;
        let (requests, got, bad) = poll(&mut plan, &points, &holes, later);
        assert_eq!((requests, got, bad), (8, vec![0, 1, 2, 3, 5], vec![]));
        // The device's map was fixed: the next re-probe keeps the merged plan
        // and the points are good again.
        let fixed = t0 + REPROBE_EVERY * 2;
        let (requests, got, bad) = poll(&mut plan, &points, &[], fixed);
        assert_eq!((requests, got, bad), (2, (0..7).collect(), vec![]));
        assert_eq!(plan.bad_points().count(), 0);
        assert!(
            !plan.start_poll(fixed + REPROBE_EVERY * 5),
            "nothing to re-probe"
        );
    }

    #[test]
    fn points_over_the_same_refused_addresses_are_dropped_together() {
        // The same register read twice (two scalings): no split separates them.
        let points = [p(Kind::Holding, 10, U16), p(Kind::Holding, 10, U16)];
        let mut plan = AdaptivePlan::new(&points, Limits::default());
        let now = Instant::now();
        assert_eq!(
            plan.refused(0, &points, now),
            Refusal::Dropped {
                newly_bad: vec![0, 1]
            }
        );
        assert!(plan.reads().is_empty());
        // Out of range: ignored.
        assert_eq!(
            plan.refused(3, &points, now),
            Refusal::Dropped { newly_bad: vec![] }
        );
    }

    #[test]
    fn splitting_keeps_the_invariants_for_scattered_maps() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let types = [U16, I16, U32, F32, F64];
        for _ in 0..200 {
            let n = 1 + next(40) as usize;
            let points: Vec<Point> = (0..n)
                .map(|_| p(Kind::Holding, next(300) as u16, types[next(5) as usize]))
                .collect();
            let holes: Vec<u16> = (0..next(6)).map(|_| next(300) as u16).collect();
            let limits = Limits {
                max_gap: next(40) as u16,
                ..Limits::default()
            };
            let mut plan = AdaptivePlan::new(&points, limits);
            let (_, got, bad) = poll(&mut plan, &points, &holes, Instant::now());
            // Exactly the points that do not touch a hole are read.
            let clean: Vec<usize> = (0..n)
                .filter(|&i| {
                    !holes.iter().any(|h| {
                        u32::from(*h) >= u32::from(points[i].address())
                            && u32::from(*h) < points[i].end()
                    })
                })
                .collect();
            assert_eq!(got, clean, "{points:?} {holes:?}");
            let mut bad = bad;
            bad.sort_unstable();
            let dirty: Vec<usize> = (0..n).filter(|i| !clean.contains(i)).collect();
            assert_eq!(bad, dirty);
            check_cover(&points, plan.reads(), &dirty);
        }
    }

    /// Every point not in `dropped` is in exactly one read, inside it.
    fn check_cover(points: &[Point], reads: &[Read], dropped: &[usize]) {
        let mut seen = vec![0; points.len()];
        for r in reads {
            for &i in &r.points {
                seen[i] += 1;
                assert!(points[i].address() >= r.start && points[i].end() <= r.end());
            }
        }
        for (i, n) in seen.iter().enumerate() {
            assert_eq!(*n, usize::from(!dropped.contains(&i)), "point {i}");
        }
    }
}
