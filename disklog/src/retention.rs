//! Retention for the aggregator's embedded log: which oldest segments to delete so the
//! log stays within [`crate::Options::max_total_bytes`] and [`crate::Options::max_age`].
//!
//! [`plan`] is pure: it takes the segments' sizes and last-record times and `now`, and
//! returns how many segments, counted from the oldest, to delete and why. Invariants:
//! only a prefix of the log is ever deleted (the log stays contiguous); the active
//! (last) segment is never deleted; a segment's age is `now` minus the append time of
//! its last valid record (stored in every record header), so a segment is old only
//! when everything in it is old. A segment with no valid record has no age and counts
//! as expired once `max_age` is set: it holds nothing worth keeping.

use std::time::Duration;

/// Why retention deleted a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The log was larger than `max_total_bytes`.
    TotalBytes,
    /// The segment's last record was older than `max_age`.
    Age,
}

/// The size and age of one segment, oldest first, as [`plan`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStat {
    /// Bytes the segment file occupies.
    pub bytes: u64,
    /// Append time of its last valid record, nanoseconds since the Unix epoch.
    pub last_time_ns: Option<u64>,
}

/// Decides which of `segments` (oldest first, the last one active) to delete: returns
/// one reason per deleted segment, for the first `n` segments.
///
/// ```
/// use ferrule_disklog::retention::{plan, Reason, SegmentStat};
/// let s = |bytes| SegmentStat { bytes, last_time_ns: Some(0) };
/// // 30 bytes, limit 15: the two oldest go; the active one always stays.
/// assert_eq!(plan(&[s(10), s(10), s(10)], Some(15), None, 0), vec![Reason::TotalBytes; 2]);
/// ```
pub fn plan(
    segments: &[SegmentStat],
    max_total_bytes: Option<u64>,
    max_age: Option<Duration>,
    now_ns: u64,
) -> Vec<Reason> {
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let max_age_ns = max_age.map(|a| u64::try_from(a.as_nanos()).unwrap_or(u64::MAX));
    let mut out = Vec::new();
    // Never the last (active) segment.
    for seg in segments.iter().take(segments.len().saturating_sub(1)) {
        let reason = if max_total_bytes.is_some_and(|max| total > max) {
            Reason::TotalBytes
        } else if let Some(max) = max_age_ns {
            match seg.last_time_ns {
                Some(t) if now_ns.saturating_sub(t) <= max => break,
                _ => Reason::Age,
            }
        } else {
            break;
        };
        total -= seg.bytes;
        out.push(reason);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(bytes: u64, t: u64) -> SegmentStat {
        SegmentStat {
            bytes,
            last_time_ns: Some(t),
        }
    }

    #[test]
    fn no_limits_deletes_nothing() {
        assert!(plan(&[s(1, 0), s(1, 0)], None, None, 1_000).is_empty());
    }

    #[test]
    fn size_limit_deletes_oldest_until_under() {
        let segs = [s(100, 0), s(100, 0), s(100, 0), s(50, 0)];
        assert_eq!(
            plan(&segs, Some(200), None, 0),
            vec![Reason::TotalBytes, Reason::TotalBytes]
        );
        assert!(plan(&segs, Some(350), None, 0).is_empty());
    }

    #[test]
    fn never_deletes_active_segment() {
        assert!(plan(&[s(1_000, 0)], Some(1), Some(Duration::ZERO), 10).is_empty());
        assert_eq!(plan(&[s(1_000, 0), s(1_000, 0)], Some(1), None, 0).len(), 1);
    }

    #[test]
    fn age_judged_by_last_record_and_stops_at_first_young() {
        let segs = [s(1, 10), s(1, 50), s(1, 20), s(1, 100)];
        // now 100, max age 60: segment 0 (age 90) goes; segment 1 (age 50) stays, and
        // segment 2 stays too because only a prefix is deleted.
        assert_eq!(
            plan(&segs, None, Some(Duration::from_nanos(60)), 100),
            vec![Reason::Age]
        );
        let empty = SegmentStat {
            bytes: 32,
            last_time_ns: None,
        };
        assert_eq!(
            plan(&[empty, s(1, 100)], None, Some(Duration::from_secs(1)), 100),
            vec![Reason::Age]
        );
    }

    #[test]
    fn clock_behind_record_time_is_not_old() {
        assert!(plan(
            &[s(1, 500), s(1, 500)],
            None,
            Some(Duration::from_nanos(1)),
            100
        )
        .is_empty());
    }
}
