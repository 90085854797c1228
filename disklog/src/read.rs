//! Reading records back, concurrently with appends, through the log's shared view.
//!
//! The writer ([`crate::Log`]) and any number of [`LogReader`]s share one view of the
//! log under a mutex: the segments with their readable byte ends, sparse offset index,
//! known holes, and the floor / flushed / durable offsets. A read copies the few facts
//! it needs under the lock, then does its I/O on its own file handles without it, so
//! reading never blocks appends on disk I/O.
//!
//! Invariants: a reader returns only records below the flushed offset (handed to the
//! OS; they survive a process kill but not necessarily a power loss, see
//! [`LogReader::durable_offset`]) and at or above the floor; every record it returns has
//! passed its header and payload CRC checks, otherwise the read fails with
//! [`Error::Corrupt`]; offsets come back strictly increasing. A segment deleted by
//! release or retention while a read is planned is skipped by re-planning.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{io_err, Error, Result};
use crate::record::{self, HEADER_LEN};
use crate::scan::overlap;
use crate::segment::SEGMENT_HEADER_LEN;
use crate::Offset;

/// One segment as the writer and readers see it.
#[derive(Debug, Clone)]
pub(crate) struct SegMeta {
    pub(crate) base: u64,
    pub(crate) path: PathBuf,
    /// Salt its records were written with.
    pub(crate) salt: u32,
    /// Bytes from the start of the file that hold complete records handed to the OS.
    pub(crate) readable_end: u64,
    /// File size including bytes still in the writer's buffer.
    pub(crate) bytes: u64,
    /// Damaged byte spans found by recovery, each followed by a valid record.
    pub(crate) holes: Vec<Range<u64>>,
    /// Offsets in this segment's range with no valid record.
    pub(crate) missing: Vec<Range<u64>>,
    /// Sparse `(offset, file position)` index, ascending, one entry per
    /// [`INDEX_INTERVAL`] bytes and after each hole.
    pub(crate) index: Vec<(u64, u64)>,
    /// Offset and append time of the last valid record.
    pub(crate) last: Option<(u64, u64)>,
}

/// Bytes between sparse index entries: a read scans at most this much to find its start.
pub(crate) const INDEX_INTERVAL: u64 = 64 * 1024;

impl SegMeta {
    /// Valid records with offsets in `max(floor, base)..hi`, where `hi` is the next
    /// segment's base (or the log's next offset for the active segment).
    pub(crate) fn live_records(&self, floor: u64, hi: u64) -> u64 {
        let lo = floor.max(self.base);
        let lost: u64 = self.missing.iter().map(|m| overlap(m, &(lo..hi))).sum();
        hi.saturating_sub(lo).saturating_sub(lost)
    }

    /// File position to start reading at to find `offset`.
    fn start_pos(&self, offset: u64) -> u64 {
        let i = self.index.partition_point(|&(o, _)| o <= offset);
        match i.checked_sub(1).and_then(|i| self.index.get(i)) {
            Some(&(_, pos)) => pos,
            None => SEGMENT_HEADER_LEN as u64,
        }
    }
}

/// The state shared by the writer and its readers.
#[derive(Debug)]
pub(crate) struct Shared {
    /// First offset not released.
    pub(crate) floor: u64,
    /// Offset the next append gets.
    pub(crate) next: u64,
    /// First offset still in the writer's buffer (everything below is in the OS).
    pub(crate) flushed: u64,
    /// First offset not yet known durable.
    pub(crate) durable: u64,
    /// Segments by ascending base; the last is the active one.
    pub(crate) segments: Vec<SegMeta>,
}

pub(crate) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock cannot leave `Shared` half-updated in a way that
    // breaks reads (each update is a few plain assignments), so a poisoned lock is used.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset.
    pub offset: Offset,
    /// When it was appended, as recorded in its header.
    pub appended_at: SystemTime,
    /// The payload exactly as appended.
    pub payload: Vec<u8>,
}

/// A read handle on a [`crate::Log`]: cheap to clone, `Send + Sync`, usable from other
/// threads while the log keeps appending.
///
/// ```
/// # fn main() -> Result<(), ferrule_disklog::Error> {
/// # let dir = tempfile::tempdir().map_err(|e| ferrule_disklog::Error::Io { op: "tempdir", path: ".".into(), source: e })?;
/// use ferrule_disklog::{Log, Offset, Options};
/// let (mut log, _) = Log::open(dir.path(), Options::default())?;
/// let reader = log.reader();
/// log.append(b"first")?;
/// log.sync()?;
/// let got = std::thread::spawn(move || reader.read_from(Offset(0), 10)).join().map_err(|_| ferrule_disklog::Error::OffsetsExhausted)??;
/// assert_eq!(got, vec![(Offset(0), b"first".to_vec())]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LogReader {
    pub(crate) shared: Arc<Mutex<Shared>>,
}

/// One segment's part of a planned read.
struct SegPlan {
    path: PathBuf,
    salt: u32,
    start_pos: u64,
    end_pos: u64,
    holes: Vec<Range<u64>>,
}

enum SegOutcome {
    /// The limits are reached.
    Full,
    /// The segment is exhausted; go on with the next one.
    More,
    /// The file was deleted after planning: plan again.
    Vanished,
}

struct Limits {
    max_records: usize,
    max_bytes: usize,
}

impl LogReader {
    /// Opens the log in `dir` for reading only, without creating, repairing or
    /// deleting anything: safe while a writer runs in another process. Sees the
    /// records present when called.
    pub fn open_read_only(
        dir: impl AsRef<std::path::Path>,
    ) -> Result<(LogReader, crate::Recovery)> {
        crate::log::open_read_only(dir.as_ref())
    }

    /// Up to `max_records` records with offsets `>= from`, in order, as
    /// `(offset, payload)`. Offsets below [`Self::first_offset`] are skipped, and so are
    /// offsets lost to damage. An empty result means nothing readable at or after `from`.
    pub fn read_from(&self, from: Offset, max_records: usize) -> Result<Vec<(Offset, Vec<u8>)>> {
        Ok(self
            .read_records(from, max_records, usize::MAX)?
            .into_iter()
            .map(|r| (r.offset, r.payload))
            .collect())
    }

    /// Like [`Self::read_from`] with append times, and stopping before the payloads'
    /// total would exceed `max_bytes` (at least one record is returned if any is
    /// readable, so a record larger than `max_bytes` cannot stall a consumer). This is
    /// how a consumer keeps a read within its memory or credit budget.
    pub fn read_records(
        &self,
        from: Offset,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let limits = Limits {
            max_records,
            max_bytes,
        };
        let mut cursor = from.0;
        let mut bytes = 0usize;
        // Each retry happens only because a segment was deleted under us, which moves
        // the floor forward, so a handful of attempts always suffices in practice.
        for _ in 0..16 {
            if out.len() >= max_records {
                break;
            }
            let (plans, start, limit) = self.plan(cursor, max_records - out.len());
            cursor = start;
            let mut vanished = false;
            for p in &plans {
                match read_segment(p, &mut cursor, limit, &limits, &mut bytes, &mut out)? {
                    SegOutcome::Full => return Ok(out),
                    SegOutcome::More => {}
                    SegOutcome::Vanished => {
                        vanished = true;
                        break;
                    }
                }
            }
            if !vanished {
                break;
            }
        }
        Ok(out)
    }

    /// Which segment parts to read for offsets from `cursor`, where to really start
    /// (not below the floor), and the offset bound.
    fn plan(&self, cursor: u64, want: usize) -> (Vec<SegPlan>, u64, u64) {
        let s = lock(&self.shared);
        let start = cursor.max(s.floor);
        let limit = s.flushed;
        let mut plans = Vec::new();
        if start >= limit {
            return (plans, start, limit);
        }
        let first = s
            .segments
            .partition_point(|m| m.base <= start)
            .saturating_sub(1);
        let mut budget = u64::try_from(want).unwrap_or(u64::MAX);
        for (i, m) in s.segments.iter().enumerate().skip(first) {
            if m.base >= limit {
                break;
            }
            let hi = s.segments.get(i + 1).map_or(limit, |n| n.base).min(limit);
            plans.push(SegPlan {
                path: m.path.clone(),
                salt: m.salt,
                start_pos: if start >= m.base {
                    m.start_pos(start)
                } else {
                    SEGMENT_HEADER_LEN as u64
                },
                end_pos: m.readable_end,
                holes: m.holes.clone(),
            });
            let here = m.live_records(start, hi);
            if here >= budget {
                break;
            }
            budget -= here;
        }
        (plans, start, limit)
    }

    /// The first offset not released: reads start here at the earliest.
    pub fn first_offset(&self) -> Offset {
        Offset(lock(&self.shared).floor)
    }

    /// The first offset not yet known durable. Records below it survive power loss.
    /// Records between it and [`Self::readable_offset`] can be read but may vanish on
    /// power loss, and their offsets then be reused by new records: a consumer that
    /// persists offsets or acknowledges upstream must read only below this.
    pub fn durable_offset(&self) -> Offset {
        Offset(lock(&self.shared).durable)
    }

    /// The first offset not yet readable (still in the writer's buffer).
    pub fn readable_offset(&self) -> Offset {
        Offset(lock(&self.shared).flushed)
    }
}

fn read_segment(
    p: &SegPlan,
    cursor: &mut u64,
    limit: u64,
    limits: &Limits,
    bytes: &mut usize,
    out: &mut Vec<Record>,
) -> Result<SegOutcome> {
    let file = match File::open(&p.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SegOutcome::Vanished),
        Err(e) => return Err(io_err("open segment for reading", &p.path)(e)),
    };
    let corrupt = |pos: u64, what: &'static str| Error::Corrupt {
        path: p.path.clone(),
        pos,
        what,
    };
    let mut r = BufReader::with_capacity(64 * 1024, file);
    r.seek(SeekFrom::Start(p.start_pos))
        .map_err(io_err("seek segment", &p.path))?;
    let mut pos = p.start_pos;
    while pos < p.end_pos {
        if let Some(h) = p.holes.iter().find(|h| h.start == pos) {
            r.seek(SeekFrom::Start(h.end))
                .map_err(io_err("seek segment", &p.path))?;
            pos = h.end;
            continue;
        }
        if pos + HEADER_LEN as u64 > p.end_pos {
            return Err(corrupt(pos, "record header runs past the readable end"));
        }
        let mut head = [0u8; HEADER_LEN];
        r.read_exact(&mut head)
            .map_err(io_err("read segment", &p.path))?;
        let h = record::decode_header(&head, p.salt)
            .ok_or_else(|| corrupt(pos, "record header check failed"))?;
        let frame = h.frame_len() as u64;
        if pos + frame > p.end_pos {
            return Err(corrupt(pos, "record runs past the readable end"));
        }
        if h.offset >= limit {
            return Ok(SegOutcome::Full);
        }
        if h.offset < *cursor {
            r.seek_relative(i64::from(h.len))
                .map_err(io_err("seek segment", &p.path))?;
            pos += frame;
            continue;
        }
        let len = h.len as usize;
        if out.len() >= limits.max_records
            || (!out.is_empty() && bytes.saturating_add(len) > limits.max_bytes)
        {
            return Ok(SegOutcome::Full);
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)
            .map_err(io_err("read segment", &p.path))?;
        if !record::payload_ok(&h, &payload) {
            return Err(corrupt(pos, "payload checksum mismatch"));
        }
        *bytes = bytes.saturating_add(len);
        *cursor = h.offset.saturating_add(1);
        pos += frame;
        out.push(Record {
            offset: Offset(h.offset),
            appended_at: UNIX_EPOCH + Duration::from_nanos(h.time_ns),
            payload,
        });
    }
    Ok(SegOutcome::More)
}
