//! The driver: opening (recovery), appending, syncing, releasing and deleting segments.
//!
//! [`Log`] owns the active segment's file handle and a write buffer; everything readers
//! need lives in the shared view (see [`crate::read`]). Decisions are made by the pure
//! modules ([`crate::scan`] for recovery, [`crate::retention`] for retention); this
//! module does the file system calls they imply, in an order that is crash safe:
//!
//! - A segment is fsynced before the next one is created, and a new segment's header is
//!   fsynced and its directory entry made durable before records go into it. So only
//!   the last segment can have a torn tail, and every sealed segment is complete.
//! - Recovery truncates the torn tail and fsyncs the last segment *before* reporting
//!   anything durable: records a killed predecessor left only in the page cache become
//!   durable before this process acknowledges them.
//! - After any failed write or fsync the log is poisoned ([`Error::Poisoned`]): what is
//!   on disk is unknown, so only a reopen may continue. A reopen of a poisoned log
//!   first cuts everything past the last successful fsync ([`Log::truncate_to_durable`]):
//!   after a failed fsync the page cache may show records the disk does not hold (and a
//!   retried fsync can falsely succeed), so they are never trusted, and since they were
//!   never reported durable the caller writes them again, exactly once.
//! - The floor file is replaced atomically before the segments it frees are deleted.

use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{io_err, Error, Result};
use crate::floor::{self, Floor, FloorState};
use crate::read::{lock, LogReader, Record, SegMeta, Shared, INDEX_INTERVAL};
use crate::record::{self, HEADER_LEN};
use crate::retention::{self, Reason, SegmentStat};
use crate::scan::{self, Bounds, SegmentScan};
use crate::segment::{self, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::{FsyncPolicy, Offset, Options};

const SEG_HEADER: u64 = SEGMENT_HEADER_LEN as u64;

/// What [`Log::open`] found and repaired. Every field that is not zero is damage that
/// was repaired by itself; the caller should count it (our rule: every loss is counted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Valid records available, from `first_offset` to `next_offset`.
    pub records: u64,
    /// First offset still held (not released).
    pub first_offset: Offset,
    /// Offset the next append gets.
    pub next_offset: Offset,
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Unreleased records lost to damage in the middle of the log (or at the end of a
    /// sealed segment): skipped, never returned.
    pub corrupt_records: u64,
    /// Bytes in damaged spans that were skipped (holes, damaged sealed-segment tails,
    /// damaged segment headers).
    pub corrupt_bytes: u64,
    /// Bytes cut from the end of the last segment: a torn write, a bad final record, a
    /// zero-filled tail. After a crash these are normally records that were never
    /// reported durable.
    pub truncated_tail_bytes: u64,
    /// Segment files removed because they lay entirely below the released floor (a
    /// crash came between writing the floor and deleting them).
    pub released_segments_removed: u64,
    /// Records appended after the last successful sync that
    /// [`Log::truncate_to_durable`] (or a reopen after a failure) cut: never reported
    /// durable, so the caller writes them again. Not damage: [`Recovery::is_clean`]
    /// ignores it.
    pub cut_records: u64,
    /// Bytes those records (including a part of one a failed write left) took on disk,
    /// with any segment file created after the last durable one.
    pub cut_bytes: u64,
    /// The floor file was missing or damaged and was rebuilt from the segments; some
    /// released records may be read again.
    pub floor_rebuilt: bool,
}

impl Recovery {
    /// Whether recovery found nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.corrupt_records == 0
            && self.corrupt_bytes == 0
            && self.truncated_tail_bytes == 0
            && self.released_segments_removed == 0
            && !self.floor_rebuilt
    }
}

/// A segment deleted by [`Log::drop_oldest_segment`] or [`Log::enforce_retention`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeletedSegment {
    /// Its base offset.
    pub base: Offset,
    /// One past its last offset: the log's first offset afterwards.
    pub end: Offset,
    /// Unreleased records it held, now dropped: count them.
    pub records: u64,
    /// Bytes freed.
    pub bytes: u64,
}

/// What [`Log::enforce_retention`] deleted, oldest first, with the reason for each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionReport {
    /// The deleted segments and why each went.
    pub deleted: Vec<(DeletedSegment, Reason)>,
}

impl RetentionReport {
    /// Unreleased records deleted.
    pub fn records(&self) -> u64 {
        self.deleted.iter().map(|(d, _)| d.records).sum()
    }

    /// Bytes freed.
    pub fn bytes(&self) -> u64 {
        self.deleted.iter().map(|(d, _)| d.bytes).sum()
    }
}

/// The active segment's writer side.
#[derive(Debug)]
struct Active {
    /// Shared with [`PendingSync`]s, which fsync it off the writer's thread.
    file: Arc<File>,
    path: PathBuf,
    base: u64,
    /// Bytes of the file handed to the OS.
    written: u64,
    /// Bytes of the file known on stable storage (a successful fsync covered them):
    /// where [`Log::truncate_to_durable`] cuts. Always the durable offset's position,
    /// because a roll makes everything durable before it replaces the active segment.
    durable_len: u64,
    /// Framed records not yet written.
    pending: Vec<u8>,
}

/// An fsync of the active segment taken out of the log by [`Log::begin_sync`].
#[derive(Debug)]
pub struct PendingSync {
    file: Arc<File>,
    path: PathBuf,
    next: u64,
    /// The segment's base and length written when the sync began.
    base: u64,
    len: u64,
    /// The log's generation then (see [`Log::finish_sync`]).
    generation: u64,
    /// An injected failure (tests).
    fail: bool,
}

impl PendingSync {
    /// Fsyncs the segment (blocking: run it on a thread that may block).
    pub fn run(self) -> CompletedSync {
        let result = if self.fail {
            Err(injected_error())
        } else {
            self.file.sync_data()
        }
        .map_err(io_err("fsync segment", &self.path));
        CompletedSync {
            next: self.next,
            base: self.base,
            len: self.len,
            generation: self.generation,
            result,
        }
    }
}

/// The outcome of a [`PendingSync`], for [`Log::finish_sync`].
#[derive(Debug)]
pub struct CompletedSync {
    next: u64,
    base: u64,
    len: u64,
    generation: u64,
    result: Result<()>,
}

/// A write-path failure a test makes the log meet, so that recovery from a failed
/// write or fsync is tested without a full disk (feature `fault-injection`, which
/// only tests enable). The failures leave the file as the real ones do: what was
/// written stays in the file (the page cache), exactly what the log must not trust.
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The segment fsync after `after` successful ones fails with ENOSPC (the
    /// group commit's, a roll's, or a [`PendingSync`]'s).
    Fsync {
        /// Segment fsyncs that still succeed first.
        after: u32,
    },
    /// The next write of buffered records hands only their first `bytes` bytes to
    /// the OS, then fails with ENOSPC: a record torn in the middle.
    ShortWrite {
        /// Bytes written before the failure.
        bytes: usize,
    },
}

/// The error an injected [`Fault`] fails with: the full disk the aggregator meets.
fn injected_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "No space left on device (injected)",
    )
}

/// A crash-safe segmented log in one directory. One `Log` per directory: it holds
/// an advisory lock on `LOCK` in the directory while it lives, and a second
/// [`Log::open`] of the directory, in this process or another, fails with
/// [`Error::Locked`].
///
/// Dropping a `Log` does no I/O: records still in the write buffer (not yet returned
/// by [`Log::flush`] or [`Log::sync`]) are lost, as they would be in a crash.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    opts: Options,
    salt: u32,
    shared: Arc<Mutex<Shared>>,
    active: Active,
    poisoned: Option<String>,
    /// Counts recoveries in place, so that a [`PendingSync`] begun before one cannot
    /// report records appended after it durable.
    generation: u64,
    /// A failure to inject (tests).
    #[cfg(any(test, feature = "fault-injection"))]
    fault: Option<Fault>,
    /// Holds the directory's lock for as long as the log lives.
    _lock: File,
}

/// What recovery builds: everything a `Log` holds but its directory and options.
struct Recovered {
    salt: u32,
    shared: Shared,
    active: Active,
}

/// Name of the lock file inside the log directory.
const LOCK_FILE: &str = "LOCK";

/// Takes the directory's lock (an advisory `flock` on `LOCK`, released by the OS
/// when the process dies, so a crash never leaves it stuck).
fn take_lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("lock", &path)(e)),
    }
}

fn time_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A salt nobody outside this process can predict: `RandomState` is seeded from the
/// OS's randomness; the clock and pid only add variety.
fn random_salt() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(time_ns(SystemTime::now()));
    h.write_u32(std::process::id());
    (h.finish() >> 16) as u32
}

fn read_header(path: &Path) -> Result<Option<SegmentHeader>> {
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    let mut f = File::open(path).map_err(io_err("open segment", path))?;
    let mut got = 0;
    while got < b.len() {
        match f.read(&mut b[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read segment header", path)(e)),
        }
    }
    Ok(SegmentHeader::parse(&b[..got]))
}

impl Log {
    /// Opens the log in `dir` (creating the directory and an empty log if needed) and
    /// recovers it: see [`Recovery`] and the crate README for the rules. After this
    /// returns, everything in the log is durable.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<(Log, Recovery)> {
        let dir = dir.as_ref().to_path_buf();
        let existed = dir.exists();
        fs::create_dir_all(&dir).map_err(io_err("create log directory", &dir))?;
        if !existed {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            floor::sync_dir(parent)?;
        }
        let lock = take_lock(&dir)?;
        let (r, rec) = Self::recover(&dir)?;
        let log = Log {
            dir,
            opts,
            salt: r.salt,
            shared: Arc::new(Mutex::new(r.shared)),
            active: r.active,
            poisoned: None,
            generation: 0,
            #[cfg(any(test, feature = "fault-injection"))]
            fault: None,
            _lock: lock,
        };
        Ok((log, rec))
    }

    /// Recovers the log from what is on disk, in place: after a write or fsync
    /// failed ([`Error::Poisoned`]), a full disk, or a corrupt record found while
    /// reading, this rescans every segment as [`Log::open`] does and the log (and
    /// every [`LogReader`] of it) goes on from what actually reached the disk.
    ///
    /// If the log is poisoned, everything at or above [`Log::durable_offset`] is
    /// cut first ([`Log::truncate_to_durable`]): after a failed fsync the page cache
    /// can show records the disk does not hold, so keeping them would report data
    /// durable that may not be, and a caller that resends what was never reported
    /// durable would store it twice. Otherwise records handed to the OS are kept
    /// (and made durable); records still buffered are gone either way. Compare
    /// [`Log::next_offset`] before and after: append again from the new one.
    pub fn reopen(&mut self) -> Result<Recovery> {
        if self.poisoned.is_some() {
            return self.truncate_to_durable();
        }
        self.rescan()
    }

    /// Cuts every record at or above [`Log::durable_offset`] from the disk, then
    /// recovers in place as [`Log::reopen`] does: afterwards the log holds exactly
    /// the records a successful [`Log::sync`] reported durable, and the next append
    /// gets the old durable offset.
    ///
    /// Why: records appended after the last successful fsync were never reported
    /// durable, so the caller has not acknowledged them and will write them again
    /// (a group whose fsync failed is resent). Left in the file they would be stored
    /// twice; worse, after a failed fsync Linux may have dropped or marked clean
    /// the pages holding them, so what the page cache shows is not what the disk
    /// holds (a retried fsync can falsely succeed). Cutting them is the only answer
    /// that stays true after a power loss. The cut is crash safe: segment files
    /// created after the durable one (a roll that failed part-way) are deleted
    /// newest first and the directory fsynced, then the active segment is truncated
    /// to its durable length (a record torn by a failed write goes with it) and
    /// fsynced, so a kill at any point leaves a prefix of the log that
    /// [`Log::open`] recovers as usual. What was cut is counted in
    /// [`Recovery::cut_records`] and [`Recovery::cut_bytes`]. Readers (in this
    /// process or [`LogReader::open_read_only`] in another) never see the cut
    /// records again.
    ///
    /// ```
    /// # fn main() -> Result<(), ferrule_disklog::Error> {
    /// # let dir = tempfile::tempdir().map_err(|e| ferrule_disklog::Error::Io { op: "tempdir", path: ".".into(), source: e })?;
    /// use ferrule_disklog::{Log, Offset, Options};
    /// let (mut log, _) = Log::open(dir.path(), Options::default())?;
    /// log.append(b"acknowledged")?;
    /// log.sync()?;
    /// log.append(b"never synced")?;
    /// log.flush()?; // in the file, not durable
    /// let rec = log.truncate_to_durable()?;
    /// assert_eq!(rec.cut_records, 1);
    /// assert_eq!(log.next_offset(), Offset(1));
    /// assert_eq!(log.read_from(Offset(0), 10)?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn truncate_to_durable(&mut self) -> Result<Recovery> {
        let (durable, next) = {
            let s = lock(&self.shared);
            (s.durable, s.next)
        };
        let cut_bytes = self.cut_to_durable()?;
        let mut rec = self.rescan()?;
        rec.cut_records = next.saturating_sub(durable);
        rec.cut_bytes = cut_bytes;
        Ok(rec)
    }

    /// Rescans the disk and replaces the log's state with what it holds.
    fn rescan(&mut self) -> Result<Recovery> {
        let (r, rec) = Self::recover(&self.dir)?;
        *lock(&self.shared) = r.shared;
        self.active = r.active;
        self.salt = r.salt;
        self.poisoned = None;
        self.generation += 1;
        Ok(rec)
    }

    /// The file system half of [`Log::truncate_to_durable`]; returns the bytes cut.
    /// Idempotent, so a failed attempt is simply repeated. Only files are changed:
    /// the in-memory view is rebuilt by the rescan that follows.
    fn cut_to_durable(&mut self) -> Result<u64> {
        let dir = self.dir.clone();
        let (base, keep, path) = (
            self.active.base,
            self.active.durable_len,
            self.active.path.clone(),
        );
        self.active.pending.clear();
        let mut cut = 0u64;
        // Segments created after the active one: a roll that failed after creating
        // the file. Newest first, so a crash part-way leaves a prefix of the log.
        let mut later = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list log directory", &dir))? {
            let entry = entry.map_err(io_err("list log directory", &dir))?;
            if let Some(b) = entry
                .file_name()
                .to_str()
                .and_then(segment::parse_file_name)
                .filter(|&b| b > base)
            {
                later.push(b);
            }
        }
        later.sort_unstable_by(|a, b| b.cmp(a));
        for b in &later {
            let p = segment::path(&dir, *b);
            match fs::metadata(&p) {
                Ok(m) => cut += m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat segment", &p)(e)),
            }
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io_err("delete segment created after the durable one", &p)(
                        e,
                    ))
                }
            }
        }
        if !later.is_empty() {
            floor::sync_dir(&dir)?;
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err("open segment to cut", &path))?;
        let len = f.metadata().map_err(io_err("stat segment", &path))?.len();
        if len > keep {
            f.set_len(keep)
                .map_err(io_err("cut segment to its durable length", &path))?;
            cut += len - keep;
        }
        // Even if nothing was cut now: an earlier attempt may have cut and then
        // failed before this fsync.
        f.sync_all().map_err(io_err("fsync cut segment", &path))?;
        Ok(cut)
    }

    /// Makes the log meet `fault` (tests; see [`Fault`]).
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_fault(&mut self, fault: Fault) {
        self.fault = Some(fault);
    }

    /// Whether an injected fsync failure is due now (counting this fsync).
    #[cfg(any(test, feature = "fault-injection"))]
    fn fsync_fault(&mut self) -> bool {
        match &mut self.fault {
            Some(Fault::Fsync { after: 0 }) => {
                self.fault = None;
                true
            }
            Some(Fault::Fsync { after }) => {
                *after -= 1;
                false
            }
            _ => false,
        }
    }

    #[cfg(not(any(test, feature = "fault-injection")))]
    fn fsync_fault(&mut self) -> bool {
        false
    }

    /// How many bytes of `len` an injected short write lets through, if one is due.
    #[cfg(any(test, feature = "fault-injection"))]
    fn short_write(&mut self, len: usize) -> Option<usize> {
        match self.fault {
            Some(Fault::ShortWrite { bytes }) => {
                self.fault = None;
                Some(bytes.min(len))
            }
            _ => None,
        }
    }

    #[cfg(not(any(test, feature = "fault-injection")))]
    fn short_write(&mut self, _len: usize) -> Option<usize> {
        None
    }

    /// The recovery [`Log::open`] and [`Log::reopen`] share.
    fn recover(dir: &Path) -> Result<(Recovered, Recovery)> {
        let dir = dir.to_path_buf();
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list log directory", &dir))? {
            let entry = entry.map_err(io_err("list log directory", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == floor::FLOOR_TMP {
                let p = entry.path();
                fs::remove_file(&p).map_err(io_err("remove stale floor temp file", &p))?;
            } else if let Some(base) = segment::parse_file_name(name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let mut rec = Recovery::default();

        let floor_state = floor::read(&dir)?;
        let floor_file = match floor_state {
            FloorState::Valid(f) => Some(f),
            FloorState::Missing | FloorState::Damaged => None,
        };
        rec.floor_rebuilt =
            floor_file.is_none() && (!bases.is_empty() || floor_state == FloorState::Damaged);

        // Segments lying wholly below the floor were released; a crash came before they
        // were deleted.
        if let Some(f) = floor_file {
            while bases.len() >= 2 && bases[1] <= f.floor {
                let p = segment::path(&dir, bases[0]);
                fs::remove_file(&p).map_err(io_err("remove released segment", &p))?;
                rec.released_segments_removed += 1;
                bases.remove(0);
            }
        }

        let headers = bases
            .iter()
            .map(|&b| Ok(read_header(&segment::path(&dir, b))?.filter(|h| h.base == b)))
            .collect::<Result<Vec<_>>>()?;
        let salt = match floor_file {
            Some(f) => f.salt,
            None => match headers.iter().flatten().next() {
                Some(h) => h.salt,
                None => Self::salt_from_records(&dir, &bases)?.unwrap_or_else(random_salt),
            },
        };

        let (mut metas, plan, last_cut) = survey(
            &dir,
            &bases,
            &headers,
            salt,
            floor_file.map(|f| f.floor),
            &mut rec,
        )?;

        // Repair or create the active segment and make it durable.
        let active = match metas.last() {
            Some(m) => {
                let needs_header = headers.last().is_some_and(|h| h.is_none());
                Self::repair_last(
                    &m.path,
                    SegmentHeader { salt, base: m.base },
                    needs_header,
                    last_cut,
                )?
            }
            None => {
                let base = plan.next_offset;
                let path = segment::path(&dir, base);
                let active = Self::create_segment(&dir, &path, SegmentHeader { salt, base })?;
                metas.push(SegMeta {
                    base,
                    path,
                    salt,
                    readable_end: SEG_HEADER,
                    bytes: SEG_HEADER,
                    holes: Vec::new(),
                    missing: Vec::new(),
                    index: Vec::new(),
                    last: None,
                });
                active
            }
        };
        if floor_file.is_none() {
            floor::write(
                &dir,
                Floor {
                    salt,
                    floor: plan.first_offset,
                },
            )?;
        }
        floor::sync_dir(&dir)?;
        rec.segments = metas.len();

        let next = plan.next_offset;
        let shared = Shared {
            floor: plan.first_offset,
            next,
            flushed: next,
            durable: next,
            segments: metas,
        };
        let salt = shared.segments.last().map_or(salt, |m| m.salt);
        Ok((
            Recovered {
                salt,
                shared,
                active,
            },
            rec,
        ))
    }

    /// With neither the floor file nor any segment header intact, the salt is solved
    /// from the first record of any segment (see [`record::recover_salt`]).
    fn salt_from_records(dir: &Path, bases: &[u64]) -> Result<Option<u32>> {
        for &b in bases {
            let path = segment::path(dir, b);
            let bytes = fs::read(&path).map_err(io_err("read segment", &path))?;
            if let Some(s) = bytes
                .get(SEGMENT_HEADER_LEN..)
                .and_then(record::recover_salt)
            {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Truncates the last segment to `cut`, rewrites its header if damaged, fsyncs it,
    /// and opens it for appending.
    fn repair_last(
        path: &Path,
        header: SegmentHeader,
        needs_header: bool,
        cut: u64,
    ) -> Result<Active> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open last segment for repair", path))?;
        if needs_header {
            f.seek(SeekFrom::Start(0))
                .map_err(io_err("seek segment", path))?;
            f.write_all(&header.encode())
                .map_err(io_err("rewrite damaged segment header", path))?;
        }
        let len = f.metadata().map_err(io_err("stat segment", path))?.len();
        if len != cut {
            f.set_len(cut)
                .map_err(io_err("truncate torn tail of segment", path))?;
        }
        // Also makes durable what a killed predecessor left in the page cache.
        f.sync_data().map_err(io_err("fsync segment", path))?;
        drop(f);
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err("open segment for appending", path))?;
        Ok(Active {
            file: Arc::new(file),
            path: path.to_path_buf(),
            base: header.base,
            written: cut,
            // Fsynced just above.
            durable_len: cut,
            pending: Vec::new(),
        })
    }

    /// Creates a segment file with its header, durably (file and directory entry).
    fn create_segment(dir: &Path, path: &Path, header: SegmentHeader) -> Result<Active> {
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(io_err("create segment", path))?;
        file.write_all(&header.encode())
            .map_err(io_err("write segment header", path))?;
        file.sync_data()
            .map_err(io_err("fsync new segment", path))?;
        floor::sync_dir(dir)?;
        Ok(Active {
            file: Arc::new(file),
            path: path.to_path_buf(),
            base: header.base,
            written: SEG_HEADER,
            durable_len: SEG_HEADER,
            pending: Vec::new(),
        })
    }

    /// Runs a write-path step; on failure the log is poisoned (see [`Error::Poisoned`]).
    fn guarded<T>(&mut self, step: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if let Some(cause) = &self.poisoned {
            return Err(Error::Poisoned {
                dir: self.dir.clone(),
                cause: cause.clone(),
            });
        }
        let r = step(self);
        if let Err(e) = &r {
            self.poisoned = Some(e.to_string());
        }
        r
    }

    /// Appends a record stamped with the current time; see [`Log::append_at`].
    pub fn append(&mut self, payload: &[u8]) -> Result<Offset> {
        self.append_at(payload, SystemTime::now())
    }

    /// Appends a record stamped with `now` (used for age-based retention) and returns
    /// its offset. With [`FsyncPolicy::Always`] the record is durable on return; with
    /// [`FsyncPolicy::Batch`] it is durable once a later [`Log::sync`] returns an
    /// offset above it. Do not acknowledge it upstream before that.
    pub fn append_at(&mut self, payload: &[u8], now: SystemTime) -> Result<Offset> {
        let max = self.opts.max_record_bytes;
        if u32::try_from(payload.len()).map_or(true, |len| len > max) {
            return Err(Error::RecordTooLarge {
                len: payload.len(),
                max,
            });
        }
        self.guarded(|log| log.append_inner(payload, time_ns(now)))
    }

    fn append_inner(&mut self, payload: &[u8], t: u64) -> Result<Offset> {
        let frame = (HEADER_LEN + payload.len()) as u64;
        let (next, seg_bytes) = {
            let s = lock(&self.shared);
            (s.next, s.segments.last().map_or(SEG_HEADER, |m| m.bytes))
        };
        if next == u64::MAX {
            return Err(Error::OffsetsExhausted);
        }
        if self.active.base < next && seg_bytes.saturating_add(frame) > self.opts.segment_bytes {
            self.roll()?;
        }
        record::encode(&mut self.active.pending, self.salt, next, t, payload);
        {
            let mut s = lock(&self.shared);
            if let Some(m) = s.segments.last_mut() {
                let pos = m.bytes;
                if m.index
                    .last()
                    .is_none_or(|&(_, p)| pos - p >= INDEX_INTERVAL)
                {
                    m.index.push((next, pos));
                }
                m.bytes += frame;
                m.last = Some((next, t));
            }
            s.next = next + 1;
        }
        if self.active.pending.len() >= self.opts.write_buffer_bytes {
            self.write_pending()?;
        }
        if self.opts.fsync == FsyncPolicy::Always {
            self.sync_inner()?;
        }
        Ok(Offset(next))
    }

    /// Hands buffered records to the OS.
    fn write_pending(&mut self) -> Result<()> {
        if self.active.pending.is_empty() {
            return Ok(());
        }
        if let Some(n) = self.short_write(self.active.pending.len()) {
            let a = &self.active;
            (&*a.file)
                .write_all(&a.pending[..n])
                .and(Err(injected_error()))
                .map_err(io_err("write segment", &a.path))?;
        }
        let a = &mut self.active;
        (&*a.file)
            .write_all(&a.pending)
            .map_err(io_err("write segment", &a.path))?;
        a.written += a.pending.len() as u64;
        a.pending.clear();
        // Do not keep a huge buffer around after one huge record.
        a.pending
            .shrink_to(self.opts.write_buffer_bytes.saturating_mul(2));
        let mut s = lock(&self.shared);
        s.flushed = s.next;
        if let Some(m) = s.segments.last_mut() {
            m.readable_end = a.written;
        }
        Ok(())
    }

    /// Starts a group commit that does not hold the log: writes the buffered
    /// records to the active segment and returns the fsync still to do, or
    /// `None` if everything is durable already. Run [`PendingSync::run`]
    /// anywhere (a blocking thread), then hand the result to
    /// [`Log::finish_sync`]; appends may go on meanwhile. Records appended
    /// after this call are not covered by it.
    pub fn begin_sync(&mut self) -> Result<Option<PendingSync>> {
        self.guarded(|log| {
            log.write_pending()?;
            let (next, durable) = {
                let s = lock(&log.shared);
                (s.next, s.durable)
            };
            if durable >= next {
                return Ok(None);
            }
            Ok(Some(PendingSync {
                file: log.active.file.clone(),
                path: log.active.path.clone(),
                next,
                base: log.active.base,
                len: log.active.written,
                generation: log.generation,
                fail: log.fsync_fault(),
            }))
        })
    }

    /// Completes a [`Log::begin_sync`]: on success everything below its
    /// offset is durable and the new durable offset is returned; a failed
    /// fsync poisons the log, since what the OS dropped cannot be known. A sync
    /// begun before a [`Log::reopen`] reports nothing durable (its offsets may
    /// name other records now).
    pub fn finish_sync(&mut self, done: CompletedSync) -> Result<Offset> {
        self.guarded(|log| {
            done.result?;
            let mut s = lock(&log.shared);
            // A roll in between synced this segment already, maybe further.
            if done.generation == log.generation && done.next > s.durable {
                s.durable = done.next;
                // No roll came in between (it would have made `done.next`
                // durable), so this is the active segment.
                if done.base == log.active.base {
                    log.active.durable_len = log.active.durable_len.max(done.len);
                }
            }
            Ok(Offset(s.durable))
        })
    }

    fn sync_inner(&mut self) -> Result<Offset> {
        self.write_pending()?;
        let (next, durable) = {
            let s = lock(&self.shared);
            (s.next, s.durable)
        };
        if durable < next {
            let fail = self.fsync_fault();
            let a = &mut self.active;
            if fail {
                Err(injected_error())
            } else {
                a.file.sync_data()
            }
            .map_err(io_err("fsync segment", &a.path))?;
            a.durable_len = a.written;
            lock(&self.shared).durable = next;
        }
        Ok(Offset(next))
    }

    /// Seals the active segment (durably) and starts a new one at the next offset.
    fn roll(&mut self) -> Result<()> {
        let next = self.sync_inner()?.0;
        let path = segment::path(&self.dir, next);
        let active = Self::create_segment(
            &self.dir,
            &path,
            SegmentHeader {
                salt: self.salt,
                base: next,
            },
        )?;
        self.active = active;
        lock(&self.shared).segments.push(SegMeta {
            base: next,
            path,
            salt: self.salt,
            readable_end: SEG_HEADER,
            bytes: SEG_HEADER,
            holes: Vec::new(),
            missing: Vec::new(),
            index: Vec::new(),
            last: None,
        });
        Ok(())
    }

    /// Writes buffered records to the OS without fsync: readers see them and they
    /// survive a kill of this process, but not a power loss. Returns the first offset
    /// still unwritten (everything below is readable).
    pub fn flush(&mut self) -> Result<Offset> {
        self.guarded(|log| {
            log.write_pending()?;
            Ok(Offset(lock(&log.shared).flushed))
        })
    }

    /// Writes and fsyncs everything appended so far: the group commit. Returns the
    /// durable offset: every record below it survives a crash or power loss, so the
    /// caller may now acknowledge them. Costs nothing if nothing was appended since the
    /// last sync.
    pub fn sync(&mut self) -> Result<Offset> {
        self.guarded(|log| log.sync_inner())
    }

    /// The first offset not yet known durable.
    pub fn durable_offset(&self) -> Offset {
        Offset(lock(&self.shared).durable)
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> Offset {
        Offset(lock(&self.shared).next)
    }

    /// The first offset not released (reads start here at the earliest).
    pub fn first_offset(&self) -> Offset {
        Offset(lock(&self.shared).floor)
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A read handle that can be moved to another thread; see [`LogReader`].
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Up to `max_records` records from `from` on; see [`LogReader::read_from`]. Reads
    /// see records handed to the OS (by a sync, a flush or a full buffer).
    pub fn read_from(&self, from: Offset, max_records: usize) -> Result<Vec<(Offset, Vec<u8>)>> {
        self.reader().read_from(from, max_records)
    }

    /// Records with append times, bounded by count and bytes; see
    /// [`LogReader::read_records`].
    pub fn read_records(
        &self,
        from: Offset,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        self.reader().read_records(from, max_records, max_bytes)
    }

    /// Declares every record up to and including `offset` no longer needed (the
    /// agent's spool calls this with the acknowledged prefix). The new floor is made
    /// durable (atomic replace of the `floor` file, about three fsyncs, so coalesce
    /// calls), then segments lying wholly below it are deleted. Reads, now and after a
    /// restart, start above `offset`. Offsets not yet appended cannot be released; a
    /// lower offset than before is a no-op.
    pub fn release_through(&mut self, offset: Offset) -> Result<()> {
        let (floor, next) = {
            let s = lock(&self.shared);
            (s.floor, s.next)
        };
        let new_floor = offset.0.saturating_add(1).min(next);
        if new_floor <= floor {
            return Ok(());
        }
        floor::write(
            &self.dir,
            Floor {
                salt: self.salt,
                floor: new_floor,
            },
        )?;
        let n = {
            let mut s = lock(&self.shared);
            s.floor = new_floor;
            s.segments
                .windows(2)
                .take_while(|w| w[1].base <= new_floor)
                .count()
        };
        self.delete_oldest(n)?;
        Ok(())
    }

    /// Deletes the oldest segment, for a spool's drop-oldest policy when
    /// [`Log::total_bytes`] exceeds its cap. Returns what was deleted (count its
    /// `records` as dropped) or `None` if the log holds no records at all. If only the
    /// active segment holds records it is sealed first (one fsync), so this always
    /// makes progress.
    pub fn drop_oldest_segment(&mut self) -> Result<Option<DeletedSegment>> {
        let (single, empty) = {
            let s = lock(&self.shared);
            (
                s.segments.len() == 1,
                s.segments.last().is_none_or(|m| m.base == s.next),
            )
        };
        if single {
            if empty {
                return Ok(None);
            }
            self.guarded(|log| log.roll())?;
        }
        Ok(self.delete_oldest(1)?.pop())
    }

    /// Deletes oldest segments beyond [`Options::max_total_bytes`] and
    /// [`Options::max_age`] as of `now` (never the active segment). See
    /// [`crate::retention`] for how age is judged.
    pub fn enforce_retention(&mut self, now: SystemTime) -> Result<RetentionReport> {
        let stats: Vec<SegmentStat> = lock(&self.shared)
            .segments
            .iter()
            .map(|m| SegmentStat {
                bytes: m.bytes,
                last_time_ns: m.last.map(|(_, t)| t),
            })
            .collect();
        let reasons = retention::plan(
            &stats,
            self.opts.max_total_bytes,
            self.opts.max_age,
            time_ns(now),
        );
        let deleted = self.delete_oldest(reasons.len())?;
        Ok(RetentionReport {
            deleted: deleted.into_iter().zip(reasons).collect(),
        })
    }

    /// Deletes the `n` oldest segments (never the active one) and raises the floor to
    /// the first remaining segment. The shared view drops them before their files go,
    /// so a reader planning afterwards never looks for them.
    fn delete_oldest(&mut self, n: usize) -> Result<Vec<DeletedSegment>> {
        let gone: Vec<(PathBuf, DeletedSegment)> = {
            let mut s = lock(&self.shared);
            let n = n.min(s.segments.len().saturating_sub(1));
            let floor = s.floor;
            let gone = s
                .segments
                .windows(2)
                .take(n)
                .map(|w| {
                    let (m, end) = (&w[0], w[1].base);
                    let d = DeletedSegment {
                        base: Offset(m.base),
                        end: Offset(end),
                        records: m.live_records(floor, end),
                        bytes: m.bytes,
                    };
                    (m.path.clone(), d)
                })
                .collect();
            s.segments.drain(..n);
            if let Some(first) = s.segments.first() {
                s.floor = s.floor.max(first.base);
            }
            gone
        };
        for (path, _) in &gone {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("delete segment", path)(e)),
            }
        }
        Ok(gone.into_iter().map(|(_, d)| d).collect())
    }

    /// Bytes the log's segment files occupy, including records still buffered. The
    /// spool compares this with its cap.
    pub fn total_bytes(&self) -> u64 {
        lock(&self.shared).segments.iter().map(|m| m.bytes).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        lock(&self.shared).segments.len()
    }

    /// Offsets at or above the floor that hold no valid record: lost to damage and
    /// counted by recovery ([`Recovery::corrupt_records`]). A consumer that waits
    /// for every offset in turn (the agent's spool waits for acknowledgements)
    /// settles these, or it would wait for ever.
    pub fn missing(&self) -> Vec<std::ops::Range<Offset>> {
        let s = lock(&self.shared);
        s.segments
            .iter()
            .flat_map(|m| m.missing.iter())
            .filter(|r| r.end > s.floor)
            .map(|r| Offset(r.start.max(s.floor))..Offset(r.end))
            .collect()
    }
}

/// Opens a log directory for reading only: nothing is created, repaired, truncated
/// or deleted, so it is safe while the writer runs in another process (`inspect`).
/// Records the writer appends later are not seen; a torn tail is simply not read.
pub(crate) fn open_read_only(dir: &Path) -> Result<(LogReader, Recovery)> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list log directory", dir))? {
        let entry = entry.map_err(io_err("list log directory", dir))?;
        if let Some(base) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_file_name)
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    let floor_file = match floor::read(dir)? {
        FloorState::Valid(f) => Some(f),
        FloorState::Missing | FloorState::Damaged => None,
    };
    // Segments wholly below the floor are released (deleting them is the writer's job).
    if let Some(f) = floor_file {
        while bases.len() >= 2 && bases[1] <= f.floor {
            bases.remove(0);
        }
    }
    let headers = bases
        .iter()
        .map(|&b| Ok(read_header(&segment::path(dir, b))?.filter(|h| h.base == b)))
        .collect::<Result<Vec<_>>>()?;
    let salt = match floor_file {
        Some(f) => f.salt,
        None => match headers.iter().flatten().next() {
            Some(h) => h.salt,
            None => Log::salt_from_records(dir, &bases)?.unwrap_or(0),
        },
    };
    let mut rec = Recovery::default();
    let (metas, plan, _) = survey(
        dir,
        &bases,
        &headers,
        salt,
        floor_file.map(|f| f.floor),
        &mut rec,
    )?;
    rec.segments = metas.len();
    let next = plan.next_offset;
    let shared = Shared {
        floor: plan.first_offset,
        next,
        flushed: next,
        durable: next,
        segments: metas,
    };
    Ok((
        LogReader {
            shared: Arc::new(Mutex::new(shared)),
        },
        rec,
    ))
}

/// Scans every segment without modifying anything: what each holds, where its
/// valid records end, and the plan of offsets. Shared by [`Log::open`] (which then
/// repairs) and [`LogReader::open_read_only`] (which does not).
fn survey(
    dir: &Path,
    bases: &[u64],
    headers: &[Option<SegmentHeader>],
    salt: u32,
    floor: Option<u64>,
    rec: &mut Recovery,
) -> Result<(Vec<SegMeta>, scan::Plan, u64)> {
    let mut metas = Vec::with_capacity(bases.len());
    let mut scans = Vec::with_capacity(bases.len());
    let mut last_cut = SEG_HEADER;
    for (i, (&base, header)) in bases.iter().zip(headers).enumerate() {
        let path = segment::path(dir, base);
        let bytes = fs::read(&path).map_err(io_err("read segment", &path))?;
        let is_last = i + 1 == bases.len();
        let seg_salt = header.map_or(salt, |h| h.salt);
        let body = bytes.get(SEGMENT_HEADER_LEN..).unwrap_or(&[]);
        let bounds = Bounds {
            min: base,
            end: bases.get(i + 1).copied(),
        };
        let mut index: Vec<(u64, u64)> = Vec::new();
        let mut prev_end = 0;
        let summary = scan::scan_with(body, seg_salt, bounds, |r| {
            let pos = SEG_HEADER + r.pos as u64;
            let far = index.last().is_none_or(|&(_, p)| pos - p >= INDEX_INTERVAL);
            if far || r.pos != prev_end {
                index.push((r.offset, pos));
            }
            prev_end = r.pos + r.frame_len;
        });
        let cut = SEG_HEADER + summary.cut as u64;
        rec.corrupt_bytes += summary.hole_bytes() as u64;
        if header.is_none() {
            if is_last && body.is_empty() {
                // A segment created just before a crash: its header never made it.
                rec.truncated_tail_bytes += bytes.len() as u64;
            } else {
                rec.corrupt_bytes += bytes.len().min(SEGMENT_HEADER_LEN) as u64;
            }
        }
        if is_last {
            rec.truncated_tail_bytes += summary.tail_bytes as u64;
            last_cut = cut;
        } else {
            rec.corrupt_bytes += summary.tail_bytes as u64;
        }
        metas.push(SegMeta {
            base,
            path,
            salt: seg_salt,
            readable_end: cut,
            bytes: if is_last { cut } else { bytes.len() as u64 },
            holes: summary
                .holes
                .iter()
                .map(|h| SEG_HEADER + h.start as u64..SEG_HEADER + h.end as u64)
                .collect(),
            missing: summary.missing.clone(),
            index,
            last: summary.last,
        });
        scans.push(SegmentScan { base, summary });
    }

    let plan = scan::plan(&scans, floor);
    rec.records = plan.records;
    rec.corrupt_records = plan.corrupt_records;
    rec.first_offset = Offset(plan.first_offset);
    rec.next_offset = Offset(plan.next_offset);
    Ok((metas, plan, last_cut))
}

#[cfg(test)]
mod tests {
    //! Recovery after a failed write or fsync, with the failures injected ([`Fault`]):
    //! what no successful fsync covered is cut, so a resend is stored exactly once.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn opts() -> Options {
        Options {
            segment_bytes: 4 << 10,
            ..Options::default()
        }
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("record {i} {}", "x".repeat((i % 40) as usize)).into_bytes()
    }

    fn append(log: &mut Log, n: u64) {
        for _ in 0..n {
            let next = log.next_offset().0;
            assert_eq!(log.append(&payload(next)).unwrap().0, next);
        }
    }

    /// Every record `0..n` is there once, with its payload, in the running log, in
    /// a read-only open and after a fresh open.
    fn check_exactly(log: Log, n: u64) {
        let want: Vec<(Offset, Vec<u8>)> = (0..n).map(|i| (Offset(i), payload(i))).collect();
        assert_eq!(log.read_from(Offset(0), 1000).unwrap(), want);
        let (ro, _) = open_read_only(log.dir()).unwrap();
        assert_eq!(ro.read_from(Offset(0), 1000).unwrap(), want);
        let (dir, o) = (log.dir().to_path_buf(), log.opts.clone());
        drop(log);
        let (again, rec) = Log::open(&dir, o).unwrap();
        assert!(rec.is_clean(), "{rec:?}");
        assert_eq!(again.next_offset(), Offset(n));
        assert_eq!(again.read_from(Offset(0), 1000).unwrap(), want);
    }

    #[test]
    fn a_failed_fsync_then_reopen_cuts_what_it_did_not_cover() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), opts()).unwrap();
        append(&mut log, 3);
        assert_eq!(log.sync().unwrap(), Offset(3));
        // A group reaches the file, its fsync fails: not durable, not acknowledged.
        append(&mut log, 2);
        log.inject_fault(Fault::Fsync { after: 0 });
        let err = log.sync().unwrap_err();
        assert!(err.is_storage_full(), "{err}");
        assert_eq!(log.durable_offset(), Offset(3));
        let rec = log.reopen().unwrap();
        assert_eq!(
            (rec.cut_records, rec.next_offset),
            (2, Offset(3)),
            "{rec:?}"
        );
        assert!(rec.cut_bytes > 0 && rec.is_clean(), "{rec:?}");
        assert_eq!(log.next_offset(), Offset(3));
        // The resend gets the cut offsets: each record once.
        append(&mut log, 2);
        assert_eq!(log.sync().unwrap(), Offset(5));
        check_exactly(log, 5);
    }

    #[test]
    fn a_record_torn_by_a_failed_write_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), opts()).unwrap();
        append(&mut log, 2);
        log.sync().unwrap();
        append(&mut log, 2);
        log.inject_fault(Fault::ShortWrite { bytes: 30 });
        assert!(log.sync().is_err());
        let seg = segment::path(dir.path(), 0);
        let torn = fs::metadata(&seg).unwrap().len();
        let rec = log.reopen().unwrap();
        assert_eq!((rec.cut_records, rec.cut_bytes), (2, 30), "{rec:?}");
        assert_eq!(fs::metadata(&seg).unwrap().len(), torn - 30);
        append(&mut log, 2);
        log.sync().unwrap();
        check_exactly(log, 4);
    }

    #[test]
    fn a_failure_spanning_a_roll_keeps_what_the_roll_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), opts()).unwrap();
        append(&mut log, 5);
        log.sync().unwrap();
        // One group: its appends roll the segment (the roll's fsync works), then
        // the group's own fsync fails.
        log.inject_fault(Fault::Fsync { after: 1 });
        let segs = log.segment_count();
        while log.segment_count() == segs {
            append(&mut log, 1);
        }
        let rolled_at = log.durable_offset();
        append(&mut log, 3);
        assert!(log.sync().is_err());
        assert_eq!(log.durable_offset(), rolled_at);
        let rec = log.reopen().unwrap();
        assert_eq!(rec.cut_records, 4, "{rec:?}");
        assert_eq!(log.next_offset(), rolled_at);
        assert_eq!(log.segment_count(), segs + 1);
        append(&mut log, 4);
        log.sync().unwrap();
        check_exactly(log, rolled_at.0 + 4);
    }

    #[test]
    fn a_segment_created_after_the_durable_one_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), opts()).unwrap();
        append(&mut log, 3);
        log.sync().unwrap();
        append(&mut log, 1);
        log.inject_fault(Fault::Fsync { after: 0 });
        assert!(log.sync().is_err());
        // What a roll that failed after creating its file leaves behind.
        let stray = segment::path(dir.path(), 4);
        fs::write(
            &stray,
            SegmentHeader {
                salt: log.salt,
                base: 4,
            }
            .encode(),
        )
        .unwrap();
        let rec = log.reopen().unwrap();
        assert!(!stray.exists());
        assert_eq!((rec.cut_records, rec.segments), (1, 1), "{rec:?}");
        append(&mut log, 2);
        log.sync().unwrap();
        check_exactly(log, 5);
    }

    #[test]
    fn a_kill_before_the_cut_leaves_a_log_open_recovers() {
        // The process dies after the failed fsync, before (or during) the cut: the
        // next open keeps what reached the file (it makes it durable and the
        // aggregator rebuilds its dedupe ledger from it), never a hole.
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), opts()).unwrap();
        append(&mut log, 3);
        log.sync().unwrap();
        append(&mut log, 2);
        log.inject_fault(Fault::Fsync { after: 0 });
        assert!(log.sync().is_err());
        drop(log);
        let (log, rec) = Log::open(dir.path(), opts()).unwrap();
        assert!(rec.is_clean(), "{rec:?}");
        assert_eq!(log.next_offset(), Offset(5));
        assert_eq!(log.read_from(Offset(0), 10).unwrap().len(), 5);
    }

    #[test]
    fn a_failed_pending_sync_is_cut_and_a_stale_one_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), opts()).unwrap();
        append(&mut log, 2);
        let done = log.begin_sync().unwrap().unwrap().run();
        assert_eq!(log.finish_sync(done).unwrap(), Offset(2));
        append(&mut log, 2);
        log.inject_fault(Fault::Fsync { after: 0 });
        let done = log.begin_sync().unwrap().unwrap().run();
        assert!(log.finish_sync(done).is_err());
        assert_eq!(log.reopen().unwrap().cut_records, 2);
        // A sync begun before a reopen must not make the records appended after
        // it at the same offsets durable.
        append(&mut log, 1);
        let stale = log.begin_sync().unwrap().unwrap();
        append(&mut log, 1);
        log.inject_fault(Fault::Fsync { after: 0 });
        assert!(log.sync().is_err());
        assert_eq!(log.reopen().unwrap().cut_records, 2);
        append(&mut log, 3);
        assert_eq!(log.finish_sync(stale.run()).unwrap(), Offset(2));
        assert_eq!(log.sync().unwrap(), Offset(5));
        check_exactly(log, 5);
    }
}
