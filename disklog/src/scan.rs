//! Pure recovery: which bytes of a segment are records, which are damage, where to cut.
//!
//! [`scan`] reads a segment *body* (the bytes after the segment header) and decides,
//! without any I/O:
//! - the valid records, in order, each with an offset inside the allowed range and
//!   strictly greater than the previous valid one;
//! - the holes: damaged spans followed by a valid record, skipped by searching forward
//!   for the next magic whose record validates (a corrupt record in the middle);
//! - the cut: the end of the last valid record. Everything after it (a torn write, a
//!   bad final record, a zero-filled preallocated tail, garbage) is the tail, which
//!   the driver truncates away in the active segment and counts as damage in a sealed
//!   one;
//! - the missing offsets: offsets inside the segment's range with no valid record.
//!
//! Invariants: a byte range is reported as a record only if [`crate::record::decode_at`]
//! accepts it; records, holes and the tail partition the body; offsets strictly
//! increase. [`plan`] then combines the per-segment results with the released floor.

use std::ops::Range;

use crate::record::{self, HEADER_LEN, MAGIC};

/// A valid record found by [`scan`]; positions are relative to the start of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPos {
    /// Byte position of the record's header in the body.
    pub pos: usize,
    /// Header plus payload, in bytes.
    pub frame_len: usize,
    /// The record's offset.
    pub offset: u64,
    /// The record's append time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
}

/// Which offsets a segment may hold: `min..end`, `end` unbounded for the active
/// (last) segment, the next segment's base for a sealed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The segment's base offset.
    pub min: u64,
    /// The next segment's base, or `None` for the last segment.
    pub end: Option<u64>,
}

/// Totals of one [`scan_with`] pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Number of valid records.
    pub records: u64,
    /// Damaged spans each followed by a valid record (`start..end` byte ranges).
    pub holes: Vec<Range<usize>>,
    /// End of the last valid record (0 if none): the body should be cut here.
    pub cut: usize,
    /// Bytes after `cut`.
    pub tail_bytes: usize,
    /// Offsets in the segment's range that have no valid record. For a segment with an
    /// unbounded range only the offsets below its last valid record count.
    pub missing: Vec<Range<u64>>,
    /// The last valid record's offset and time.
    pub last: Option<(u64, u64)>,
}

impl ScanSummary {
    /// Bytes inside holes.
    pub fn hole_bytes(&self) -> usize {
        self.holes.iter().map(|h| h.end - h.start).sum()
    }
}

/// [`scan_with`] collecting every record: convenient for tests and small segments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// Every valid record, in order.
    pub records: Vec<RecordPos>,
    /// Holes, cut, tail and missing offsets.
    pub summary: ScanSummary,
}

/// Scans a segment body; see the module docs for the rules.
///
/// ```
/// use ferrule_disklog::{record, scan::{scan, Bounds}};
/// let mut body = Vec::new();
/// record::encode(&mut body, 9, 0, 0, b"a");
/// record::encode(&mut body, 9, 1, 0, b"b");
/// body.truncate(body.len() - 1); // torn write of the second record
/// let r = scan(&body, 9, Bounds { min: 0, end: None });
/// assert_eq!(r.records.len(), 1);
/// assert_eq!(r.summary.cut, 33);
/// assert_eq!(r.summary.tail_bytes, 32);
/// ```
pub fn scan(body: &[u8], salt: u32, bounds: Bounds) -> ScanResult {
    let mut records = Vec::new();
    let summary = scan_with(body, salt, bounds, |r| records.push(*r));
    ScanResult { records, summary }
}

/// Scans a segment body, calling `visit` for each valid record in order, without
/// collecting them (a 64 MiB segment of small records would be a large vector).
pub fn scan_with(
    body: &[u8],
    salt: u32,
    bounds: Bounds,
    mut visit: impl FnMut(&RecordPos),
) -> ScanSummary {
    let mut s = ScanSummary::default();
    // The smallest offset the next valid record may have.
    let mut next_min = bounds.min;
    let accept = |pos: usize, next_min: u64| -> Option<record::RecordHeader> {
        let h = record::decode_at(body, pos, salt)?;
        let in_range = h.offset >= next_min && bounds.end.is_none_or(|end| h.offset < end);
        in_range.then_some(h)
    };
    let mut pos = 0;
    while pos < body.len() {
        let found = match accept(pos, next_min) {
            Some(h) => Some((pos, h)),
            None => resync(body, pos + 1, |p| accept(p, next_min))
                .inspect(|&(p, _)| s.holes.push(pos..p)),
        };
        let Some((at, h)) = found else { break };
        if h.offset > next_min {
            s.missing.push(next_min..h.offset);
        }
        let rec = RecordPos {
            pos: at,
            frame_len: h.frame_len(),
            offset: h.offset,
            time_ns: h.time_ns,
        };
        visit(&rec);
        s.records += 1;
        s.last = Some((h.offset, h.time_ns));
        pos = at + rec.frame_len;
        s.cut = pos;
        // `h.offset < u64::MAX` unless the range is unbounded and a record claims the
        // last offset; saturating keeps later records from being accepted twice.
        next_min = h.offset.saturating_add(1);
    }
    s.tail_bytes = body.len() - s.cut;
    if let Some(end) = bounds.end {
        if end > next_min {
            s.missing.push(next_min..end);
        }
    }
    s
}

/// The first position at or after `from` holding the magic and a record `accept` takes.
fn resync(
    body: &[u8],
    from: usize,
    accept: impl Fn(usize) -> Option<record::RecordHeader>,
) -> Option<(usize, record::RecordHeader)> {
    let magic = MAGIC.to_le_bytes();
    let last_start = body.len().checked_sub(HEADER_LEN)?;
    let mut p = from;
    while p <= last_start {
        // Find the magic's first byte quickly, then confirm the rest.
        let step = body[p..=last_start].iter().position(|&b| b == magic[0])?;
        p += step;
        if body[p..p + 4] == magic {
            if let Some(h) = accept(p) {
                return Some((p, h));
            }
        }
        p += 1;
    }
    None
}

/// What recovery concludes for a whole log from its segments' scans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The offset the next append gets.
    pub next_offset: u64,
    /// The first offset still needed (the released floor, raised to the first segment).
    pub first_offset: u64,
    /// Offsets in `first_offset..next_offset` lost to damage.
    pub corrupt_records: u64,
    /// Valid records in `first_offset..next_offset`.
    pub records: u64,
}

/// Per-segment input to [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// The segment's base offset.
    pub base: u64,
    /// Its scan summary (with bounds `base..next base`, unbounded for the last).
    pub summary: ScanSummary,
}

/// Combines segment scans (in base order) with the persisted floor (the first offset
/// not released; `None` if the floor file was missing or damaged).
pub fn plan(segments: &[SegmentScan], floor: Option<u64>) -> Plan {
    let first_base = segments.first().map(|s| s.base);
    let first_offset = match (floor, first_base) {
        (Some(f), Some(b)) => f.max(b),
        (Some(f), None) => f,
        (None, Some(b)) => b,
        (None, None) => 0,
    };
    let last_end = segments
        .last()
        .map(|s| {
            s.summary
                .last
                .map_or(s.base, |(o, _)| o.saturating_add(1).max(s.base))
        })
        .unwrap_or(0);
    let next_offset = last_end.max(first_offset);
    let corrupt_records = segments
        .iter()
        .flat_map(|s| s.summary.missing.iter())
        .map(|m| overlap(m, &(first_offset..next_offset)))
        .sum();
    let records = (next_offset - first_offset).saturating_sub(corrupt_records);
    Plan {
        next_offset,
        first_offset,
        corrupt_records,
        records,
    }
}

/// How many offsets `a` and `b` share.
pub fn overlap(a: &Range<u64>, b: &Range<u64>) -> u64 {
    a.end.min(b.end).saturating_sub(a.start.max(b.start))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SALT: u32 = 0x5EED;
    const OPEN: Bounds = Bounds { min: 0, end: None };

    fn body(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut b = Vec::new();
        let mut starts = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            starts.push(b.len());
            record::encode(&mut b, SALT, i as u64, 1_000 + i as u64, p);
        }
        (b, starts)
    }

    fn offsets(r: &ScanResult) -> Vec<u64> {
        r.records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn empty_body_is_clean() {
        let r = scan(&[], SALT, OPEN);
        assert!(r.records.is_empty());
        assert_eq!((r.summary.cut, r.summary.tail_bytes), (0, 0));
    }

    #[test]
    fn clean_body_yields_all_records() {
        let (b, starts) = body(&[b"one", b"", b"three"]);
        let r = scan(&b, SALT, OPEN);
        assert_eq!(offsets(&r), vec![0, 1, 2]);
        assert_eq!(r.records.iter().map(|r| r.pos).collect::<Vec<_>>(), starts);
        assert_eq!(r.summary.cut, b.len());
        assert_eq!(r.summary.tail_bytes, 0);
        assert!(r.summary.holes.is_empty() && r.summary.missing.is_empty());
        assert_eq!(r.summary.last, Some((2, 1_002)));
    }

    #[test]
    fn torn_tail_of_every_length_is_cut() {
        let (b, starts) = body(&[b"first", b"second record", b"third!"]);
        let last = starts[2];
        for keep in last + 1..b.len() {
            let r = scan(&b[..keep], SALT, OPEN);
            assert_eq!(offsets(&r), vec![0, 1], "keep {keep}");
            assert_eq!(r.summary.cut, last);
            assert_eq!(r.summary.tail_bytes, keep - last);
            assert!(r.summary.holes.is_empty());
        }
    }

    #[test]
    fn bad_crc_in_final_record_is_tail() {
        let (mut b, starts) = body(&[b"first", b"second"]);
        let n = b.len();
        b[n - 1] ^= 0xFF;
        let r = scan(&b, SALT, OPEN);
        assert_eq!(offsets(&r), vec![0]);
        assert_eq!(r.summary.cut, starts[1]);
        assert!(r.summary.holes.is_empty() && r.summary.missing.is_empty());
    }

    #[test]
    fn flipped_payload_byte_in_middle_is_a_hole() {
        let (mut b, starts) = body(&[b"aaaa", b"bbbb", b"cccc"]);
        b[starts[1] + HEADER_LEN + 2] ^= 0x01;
        let r = scan(&b, SALT, OPEN);
        assert_eq!(offsets(&r), vec![0, 2]);
        assert_eq!(r.summary.holes, vec![starts[1]..starts[2]]);
        assert_eq!(r.summary.missing, vec![1..2]);
        assert_eq!(r.summary.cut, b.len());
    }

    #[test]
    fn flipped_length_byte_in_middle_is_a_hole() {
        for delta in [1u8, 0x40, 0x80] {
            let (mut b, starts) = body(&[b"aaaa", b"bbbb", b"cccc", b"dddd"]);
            b[starts[1] + 4] ^= delta;
            let r = scan(&b, SALT, OPEN);
            assert_eq!(offsets(&r), vec![0, 2, 3], "delta {delta}");
            assert_eq!(r.summary.holes, vec![starts[1]..starts[2]]);
            assert_eq!(r.summary.missing, vec![1..2]);
        }
    }

    #[test]
    fn zero_filled_tail_is_cut() {
        let (mut b, _) = body(&[b"x", b"y"]);
        let clean = b.len();
        b.resize(clean + 4096, 0);
        let r = scan(&b, SALT, OPEN);
        assert_eq!(offsets(&r), vec![0, 1]);
        assert_eq!((r.summary.cut, r.summary.tail_bytes), (clean, 4096));
    }

    #[test]
    fn zeroed_record_followed_by_valid_ones_is_a_hole() {
        let (mut b, starts) = body(&[b"x", b"yy", b"z"]);
        b[starts[1]..starts[2]].fill(0);
        let r = scan(&b, SALT, OPEN);
        assert_eq!(offsets(&r), vec![0, 2]);
        assert_eq!(r.summary.missing, vec![1..2]);
    }

    #[test]
    fn garbage_prefix_is_a_hole() {
        let (b, _) = body(&[b"x", b"y"]);
        let mut g = b"garbage\xD1\x5C\x10\x6F not a record".to_vec();
        let glen = g.len();
        g.extend_from_slice(&b);
        let r = scan(&g, SALT, OPEN);
        assert_eq!(offsets(&r), vec![0, 1]);
        assert_eq!(r.summary.holes, vec![0..glen]);
        assert!(r.summary.missing.is_empty());
    }

    #[test]
    fn only_garbage_is_all_tail() {
        let g = vec![0xD1u8; 1000];
        let r = scan(&g, SALT, OPEN);
        assert!(r.records.is_empty());
        assert_eq!((r.summary.cut, r.summary.tail_bytes), (0, 1000));
    }

    #[test]
    fn embedded_record_in_payload_is_never_resynced_to() {
        // A payload carrying a well-formed record under another salt.
        let mut inner = Vec::new();
        record::encode(&mut inner, SALT ^ 1, 1, 0, b"forged");
        let (mut b, starts) = body(&[b"a", &inner, b"c"]);
        b[starts[1]] ^= 0xFF; // damage the carrier's magic
        let r = scan(&b, SALT, OPEN);
        assert_eq!(offsets(&r), vec![0, 2]);
    }

    #[test]
    fn offsets_must_increase_and_stay_in_bounds() {
        let mut b = Vec::new();
        record::encode(&mut b, SALT, 5, 0, b"a");
        let dup = b.clone();
        b.extend_from_slice(&dup); // offset 5 again: not acceptable after 5
        record::encode(&mut b, SALT, 6, 0, b"b");
        record::encode(&mut b, SALT, 9, 0, b"c"); // beyond the sealed range
        let r = scan(
            &b,
            SALT,
            Bounds {
                min: 5,
                end: Some(8),
            },
        );
        assert_eq!(offsets(&r), vec![5, 6]);
        assert_eq!(r.summary.holes.len(), 1);
        assert_eq!(r.summary.missing, vec![7..8]);
        assert_eq!(r.summary.tail_bytes, HEADER_LEN + 1);
    }

    #[test]
    fn sealed_segment_counts_offsets_missing_at_both_ends() {
        let mut b = Vec::new();
        record::encode(&mut b, SALT, 12, 0, b"a");
        let r = scan(
            &b,
            SALT,
            Bounds {
                min: 10,
                end: Some(15),
            },
        );
        assert_eq!(r.summary.missing, vec![10..12, 13..15]);
    }

    #[test]
    fn plan_counts_only_unreleased_losses() {
        let seg = |base, missing: Vec<Range<u64>>, last| SegmentScan {
            base,
            summary: ScanSummary {
                missing,
                last,
                ..Default::default()
            },
        };
        let segs = [
            seg(0, vec![2..3, 8..10], Some((7, 0))),
            seg(10, vec![], Some((14, 0))),
        ];
        let p = plan(&segs, Some(3));
        assert_eq!(
            p,
            Plan {
                next_offset: 15,
                first_offset: 3,
                corrupt_records: 2,
                records: 10
            }
        );
        let p = plan(&segs, None);
        assert_eq!(p.corrupt_records, 3);
        let p = plan(&[seg(20, vec![], None)], Some(25));
        assert_eq!((p.first_offset, p.next_offset, p.records), (25, 25, 0));
        assert_eq!(plan(&[], None), Plan::default());
    }
}
