//! Trimming Redis streams on Redis 7.0, where `XTRIM` ignores consumer groups:
//! the safe trim point and what a slow group lost to the hard cap, computed from
//! what `XINFO` reports. Pure: the driver reads the positions and applies the
//! answers.
//!
//! A group still needs every entry from its oldest pending one (delivered, not
//! acknowledged), or, with nothing pending, every entry after its last-delivered
//! id. The safe trim point is the minimum of that over the groups; `XTRIM MINID`
//! to it removes only what every group is done with. The hard cap (`MAXLEN ~`)
//! bounds memory whatever the groups do; what it removes before a group read it
//! is that group's loss, counted.

use std::fmt;

/// A stream entry id, `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl StreamId {
    /// `0-0`, before every entry.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// Parses `ms-seq` (or a bare `ms`, seq 0), as Redis prints ids.
    pub fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The smallest id after this one.
    pub fn successor(self) -> StreamId {
        match self.seq.checked_add(1) {
            Some(seq) => StreamId { ms: self.ms, seq },
            None => StreamId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where one consumer group stands, from `XINFO GROUPS` and `XPENDING`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPos {
    /// The group's name.
    pub name: String,
    /// `last-delivered-id`.
    pub last_delivered: StreamId,
    /// The smallest pending id (`XPENDING` summary), if any entry is pending.
    pub oldest_pending: Option<StreamId>,
    /// `entries-read` (Redis 7.0+): entries delivered to the group, counted
    /// from the stream's first entry ever; `None` when Redis reports it unknown.
    pub entries_read: Option<u64>,
}

/// The smallest id any group still needs; `None` without groups (then only the
/// hard cap trims).
///
/// ```
/// use ferrule_aggregator::fanout::trim::{safe_trim_point, GroupPos, StreamId};
/// let id = |ms| StreamId { ms, seq: 0 };
/// let g = |name: &str, last, pending: Option<u64>| GroupPos {
///     name: name.into(), last_delivered: id(last), oldest_pending: pending.map(id), entries_read: None,
/// };
/// // `fast` read up to 90 with nothing pending; `slow` still holds 40 unacknowledged.
/// let groups = [g("fast", 90, None), g("slow", 50, Some(40))];
/// assert_eq!(safe_trim_point(&groups), Some(id(40)));
/// ```
pub fn safe_trim_point(groups: &[GroupPos]) -> Option<StreamId> {
    groups
        .iter()
        .map(|g| {
            g.oldest_pending
                .unwrap_or_else(|| g.last_delivered.successor())
        })
        .min()
}

/// Entries a group never read that are gone from the stream, in total since the
/// stream began: the entries removed (`entries_added - length`) minus those the
/// group had read. `None` when Redis does not know what the group read.
///
/// Redis 7.0's `lag` can stay wrong after a trim; `entries-added` and
/// `entries-read` are counters it keeps exactly (no `XDEL` is ever used on
/// these streams, so there are no tombstones to confuse them).
///
/// ```
/// use ferrule_aggregator::fanout::trim::lost_to_trimming;
/// // 1000 added, 600 left: the first 400 are gone; the group read only 250.
/// assert_eq!(lost_to_trimming(1000, 600, Some(250)), Some(150));
/// assert_eq!(lost_to_trimming(1000, 600, Some(700)), Some(0));
/// ```
pub fn lost_to_trimming(entries_added: u64, length: u64, entries_read: Option<u64>) -> Option<u64> {
    let removed = entries_added.saturating_sub(length);
    entries_read.map(|read| removed.saturating_sub(read))
}

/// Without `entries-read`: whether a group lost entries, judged by ids. The group
/// lost some when the first entry left comes after the one it would read next
/// while entries were removed.
pub fn lost_by_ids(group: &GroupPos, first_entry: Option<StreamId>, removed_any: bool) -> bool {
    removed_any && first_entry.is_some_and(|first| first > group.last_delivered.successor())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    fn g(last: StreamId, pending: Option<StreamId>) -> GroupPos {
        GroupPos {
            name: "g".into(),
            last_delivered: last,
            oldest_pending: pending,
            entries_read: None,
        }
    }

    #[test]
    fn ids_parse_and_order_like_redis() {
        assert_eq!(
            StreamId::parse("1700000000000-3"),
            Some(id(1_700_000_000_000, 3))
        );
        assert_eq!(StreamId::parse("5"), Some(id(5, 0)));
        assert_eq!(StreamId::parse("x-1"), None);
        assert_eq!(StreamId::parse("1-"), None);
        assert!(id(1, 9) < id(2, 0));
        assert_eq!(id(1, u64::MAX).successor(), id(2, 0));
        assert_eq!(id(7, 1).to_string(), "7-1");
    }

    #[test]
    fn the_trim_point_keeps_what_any_group_needs() {
        assert_eq!(safe_trim_point(&[]), None);
        // Nothing pending: everything after last-delivered is kept.
        assert_eq!(safe_trim_point(&[g(id(10, 2), None)]), Some(id(10, 3)));
        // A pending entry holds the point back even behind last-delivered.
        assert_eq!(
            safe_trim_point(&[g(id(10, 2), Some(id(4, 0))), g(id(20, 0), None)]),
            Some(id(4, 0))
        );
        // A group that read nothing keeps everything.
        assert_eq!(
            safe_trim_point(&[g(StreamId::ZERO, None), g(id(20, 0), None)]),
            Some(id(0, 1))
        );
    }

    #[test]
    fn losses_count_only_unread_removed_entries() {
        assert_eq!(lost_to_trimming(100, 100, Some(0)), Some(0));
        assert_eq!(lost_to_trimming(100, 10, Some(0)), Some(90));
        assert_eq!(lost_to_trimming(100, 10, Some(95)), Some(0));
        assert_eq!(lost_to_trimming(100, 10, None), None);
        // A length above entries-added (cannot happen) never underflows.
        assert_eq!(lost_to_trimming(5, 10, Some(0)), Some(0));
    }

    #[test]
    fn id_judgement_without_entries_read() {
        let slow = g(id(10, 0), None);
        assert!(lost_by_ids(&slow, Some(id(50, 0)), true));
        assert!(
            !lost_by_ids(&slow, Some(id(10, 1)), true),
            "next to read is still there"
        );
        assert!(
            !lost_by_ids(&slow, Some(id(50, 0)), false),
            "nothing removed"
        );
        assert!(!lost_by_ids(&slow, None, true));
    }
}
