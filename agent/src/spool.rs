//! The spool: every batch the agent builds, on disk until the aggregator
//! acknowledges it.
//!
//! One record per batch in a `ferrule-disklog` log, so a batch's sequence number
//! is its offset + 1 and numbering survives restarts. A batch is sent only once
//! durable (fsynced). Acknowledged batches are released as a prefix; when the byte
//! cap is reached the policy either blocks the inputs or drops the oldest segment,
//! counted per input.
//!
//! Epochs: every record carries the epoch it was written in (and its frame says
//! it too), so a spool may hold several and the uplink sends each batch under its
//! own. Every start begins a new epoch, because recovery may number an offset
//! again and cannot always tell (see [`choose_epoch`]); so does a rescan while
//! running that finds records gone which had been durable. A new epoch is always above every epoch the spool holds
//! or the epoch file names, with random low bits, so a clock that jumps back
//! cannot repeat one.
//!
//! Self-healing: records lost to damage are counted and settled (or the spool
//! would wait for their acknowledgement for ever); a write or fsync that fails
//! (a full disk, an I/O error) marks the spool broken, and [`Spool::recover`]
//! (released space first, then a rescan of the disk) brings it back without a
//! restart. The log's directory lock keeps a second agent out of the directory.

use crate::backlog::Backlog;
use crate::config::{FsyncMode, FullPolicy, SpoolSection};
use ferrule_disklog::{CompletedSync, FsyncPolicy, Log, LogReader, Offset, Options, PendingSync};
use ferrule_telemetry::{Counter, Gauge, Registry};
use ferrule_wire::session::SpoolBacklog;
use ferrule_wire::{Epoch, Seq, SeqSet};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

/// How often settled batches are released from disk at most: a release costs
/// fsyncs, so acks are coalesced; a crash resends at most this much of what
/// was acked (the aggregator drops it as duplicates).
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// What precedes the batch frame in a spool record written before batches
/// held several inputs: still read, so an upgrade sends what an older agent
/// spooled. Its postcard starts with the name's length, never 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordHeadV1 {
    input: String,
    samples: u32,
}

/// What precedes the batch frame in a spool record, after the byte
/// [`HEAD_V2`]: the samples of each input in the batch, for counting per
/// input what is sent, acknowledged or dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordHead {
    inputs: Vec<(String, u32)>,
}

/// First byte of a record with a [`RecordHead`].
const HEAD_V2: u8 = 0;

/// What precedes the batch frame in a spool record, after the byte
/// [`HEAD_V3`]: the epoch the batch was written in, and its samples per input.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordHeadV3 {
    epoch: u64,
    inputs: Vec<(String, u32)>,
}

/// First byte of a record with a [`RecordHeadV3`]. A [`RecordHeadV1`] starts
/// with its input name's length, which is never 255 for a valid input name.
const HEAD_V3: u8 = 0xFF;

/// The epoch (when the record names it), the per-input sample counts and the
/// frame of a spool record.
fn parse_record(payload: &[u8]) -> Result<(Option<Epoch>, InputCounts, &[u8]), postcard::Error> {
    match payload.split_first() {
        Some((&HEAD_V3, rest)) => postcard::take_from_bytes::<RecordHeadV3>(rest)
            .map(|(h, frame)| (Some(Epoch(h.epoch)), h.inputs, frame)),
        Some((&HEAD_V2, rest)) => {
            postcard::take_from_bytes::<RecordHead>(rest).map(|(h, frame)| (None, h.inputs, frame))
        }
        _ => postcard::take_from_bytes::<RecordHeadV1>(payload)
            .map(|(h, frame)| (None, vec![(h.input, h.samples)], frame)),
    }
}

/// A record's epoch: from its head, or (records of older agents) from its frame.
fn record_epoch(payload: &[u8]) -> Option<Epoch> {
    let (epoch, _, frame) = parse_record(payload).ok()?;
    epoch.or_else(|| ferrule_wire::peek_batch(frame).ok().map(|(e, _)| e))
}

/// Samples per input in one batch: the spool records it, the uplink counts
/// sent, acknowledged and dropped batches with it.
pub type InputCounts = Vec<(String, u32)>;

/// A batch read back from the spool.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// Its epoch, as its frame says (a spool may hold batches of several).
    pub epoch: Epoch,
    /// Its sequence number.
    pub seq: Seq,
    /// The inputs whose samples it holds, with how many each.
    pub inputs: InputCounts,
    /// The encoded Batch frame, ready to write to a lane.
    pub frame: Vec<u8>,
    /// The record passed its checksums but does not parse: count it as dropped
    /// and settle it; never send it.
    pub unreadable: bool,
}

impl Spooled {
    /// Samples in the batch.
    pub fn samples(&self) -> u64 {
        self.inputs.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// What the batch costs of the session's credit: the batcher records every
    /// sample it puts in a batch per input, so this is the aggregator's count too.
    pub fn cost(&self) -> u64 {
        ferrule_wire::batch_cost(self.frame.len() as u64, self.samples())
    }
}

const DROPPED_BATCHES: &str = "ferrule_agent_dropped_batches_total";
const DROPPED_BATCHES_HELP: &str =
    "Batches dropped unacknowledged, by reason and input (a batch counts for each input in it)";
const DROPPED_SAMPLES: &str = "ferrule_agent_dropped_samples_total";
const DROPPED_SAMPLES_HELP: &str = "Samples dropped unacknowledged, by reason and input";

/// Every reason a batch is dropped for ([`count_dropped`]): the spool's, the
/// uplink's, and the aggregator's rejections (`rejected_<reason>`).
pub const DROP_REASONS: &[&str] = &[
    "spool_full",
    "spool_corrupt",
    "spool_unreadable",
    "frame_too_large",
    "encode_failed",
    "shutdown_spool_unavailable",
    "rejected_unknown_sensor",
    "rejected_wrong_epoch",
    "rejected_sink_refused",
    "rejected_forbidden",
    "rejected_unknown",
];

/// Publishes the dropped counters of `input` at 0 for every [`DROP_REASONS`],
/// so `rate()` and alerts have series before the first drop.
pub fn declare_dropped(registry: &Registry, input: &str) {
    // `reason` first, as `count_dropped` orders the labels (a series' identity).
    for reason in DROP_REASONS {
        let labels = [("reason", *reason), ("input", input)];
        registry.counter(DROPPED_BATCHES, DROPPED_BATCHES_HELP, &labels);
        registry.counter(DROPPED_SAMPLES, DROPPED_SAMPLES_HELP, &labels);
    }
}

/// Counts batches dropped unacknowledged for `reason`, per input: a batch
/// counts once for every input with samples in it.
pub fn count_dropped(registry: &Registry, reason: &str, inputs: &[(String, u32)]) {
    for (input, samples) in inputs {
        let labels = [("reason", reason), ("input", input.as_str())];
        registry
            .counter(DROPPED_BATCHES, DROPPED_BATCHES_HELP, &labels)
            .inc();
        registry
            .counter(DROPPED_SAMPLES, DROPPED_SAMPLES_HELP, &labels)
            .add(u64::from(*samples));
    }
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The spool is at its cap and the policy is to block.
    #[error("spool full")]
    Full,
    /// An earlier write failed and [`Spool::recover`] has not succeeded since.
    #[error("spool unusable until it recovers: {0}")]
    Broken(String),
    /// The disk failed (the spool is broken from now on).
    #[error(transparent)]
    Log(#[from] ferrule_disklog::Error),
}

/// What [`Spool::recover`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// The sequence number the next append gets: batches appended at or after it
    /// and not durable before the failure are gone from the disk.
    pub next_seq: Seq,
    /// The epoch from now on (new if the tail was cut).
    pub epoch: Epoch,
}

struct Counters {
    spooled_batches: Counter,
    spooled_samples: Counter,
    acked_batches: Counter,
    corrupt_records: Counter,
    recoveries: Counter,
    bytes: Gauge,
    unacked: Gauge,
    last_seq: Gauge,
    unacked_bytes: Gauge,
    oldest_age: Gauge,
    writable: Gauge,
    registry: Registry,
}

/// The writing side, owned by one task.
pub struct Spool {
    log: Log,
    dir: std::path::PathBuf,
    epoch: Epoch,
    /// Why writes fail, while they do.
    broken: Option<String>,
    max_bytes: u64,
    segment_bytes: u64,
    policy: FullPolicy,
    fsync: FsyncMode,
    /// Settled seqs; its floor is everything released.
    settled: SeqSet,
    released_through: u64,
    /// When settled batches were last released from disk (release costs fsyncs,
    /// so it is coalesced).
    last_release: std::time::Instant,
    /// Unacknowledged bytes and age, for the gauges.
    backlog: Backlog,
    c: Counters,
}

/// The reading side: cheap to clone, used by the uplink.
#[derive(Clone, Debug)]
pub struct SpoolReader {
    reader: LogReader,
}

fn seq_of(o: Offset) -> Seq {
    Seq(o.0 + 1)
}

impl Spool {
    /// Opens (recovering) the spool in `cfg.dir`. Fails if another process holds
    /// the directory.
    pub fn open(cfg: &SpoolSection, registry: &Registry) -> anyhow::Result<(Spool, SpoolReader)> {
        std::fs::create_dir_all(&cfg.dir)?;
        let mut opts = Options::default();
        opts.segment_bytes = cfg.segment_bytes;
        opts.fsync = match cfg.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => FsyncPolicy::Batch,
        };
        let (log, recovery) = Log::open(cfg.dir.join("log"), opts)?;
        let c = Counters {
            spooled_batches: registry.counter(
                "ferrule_agent_spooled_batches_total",
                "Batches written to the spool",
                &[],
            ),
            spooled_samples: registry.counter(
                "ferrule_agent_spooled_samples_total",
                "Samples written to the spool",
                &[],
            ),
            acked_batches: registry.counter(
                "ferrule_agent_acked_batches_total",
                "Batches acknowledged as committed by an aggregator (refused or dropped ones are in ferrule_agent_dropped_batches_total)",
                &[],
            ),
            corrupt_records: registry.counter(
                "ferrule_agent_spool_corrupt_records_total",
                "Spool records found corrupt (at start or on a rescan) and skipped; each also counts as a dropped batch",
                &[],
            ),
            recoveries: registry.counter(
                "ferrule_agent_spool_recoveries_total",
                "Times the spool recovered by itself after writes failed",
                &[],
            ),
            bytes: registry.gauge("ferrule_agent_spool_bytes", "Bytes in the spool", &[]),
            unacked: registry.gauge(
                "ferrule_agent_spool_unacked_batches",
                "Batches in the spool not yet acknowledged",
                &[],
            ),
            last_seq: registry.gauge(
                "ferrule_agent_spool_last_seq",
                "The last sequence number given to a batch (0 before the first); with ferrule_agent_spool_unacked_batches it tells whether the spool has drained",
                &[],
            ),
            unacked_bytes: registry.gauge(
                "ferrule_agent_spool_unacked_bytes",
                "Bytes of spooled batches not yet acknowledged (0: drained), unlike ferrule_agent_spool_bytes, which counts segment files kept until a whole segment is released",
                &[],
            ),
            oldest_age: registry.gauge(
                "ferrule_agent_spool_oldest_unacked_age_seconds",
                "Age of the oldest batch not yet acknowledged, by the wall clock (0: drained): how far behind the uplink is",
                &[],
            ),
            writable: registry.gauge(
                "ferrule_agent_spool_writable",
                "1 while the spool takes writes, 0 while it recovers from a failed write",
                &[],
            ),
            registry: registry.clone(),
        };
        let first = log.first_offset().0;
        let reader = SpoolReader {
            reader: log.reader(),
        };
        let mut spool = Spool {
            epoch: Epoch(0),
            dir: cfg.dir.clone(),
            broken: None,
            max_bytes: cfg.max_bytes,
            segment_bytes: cfg.segment_bytes,
            policy: cfg.full_policy,
            fsync: cfg.fsync,
            settled: SeqSet::with_floor(Some(Seq(first))),
            released_through: first,
            last_release: std::time::Instant::now(),
            backlog: Backlog::default(),
            log,
            c,
        };
        let fresh = spool.log.next_offset().0 == 0 && first == 0;
        spool.after_recovery(&recovery, fresh, true, false)?;
        spool.backlog = spool.recovered_backlog();
        tracing::info!(epoch = %spool.epoch, first_unacked = %spool.first_unacked(), next = %spool.next_seq(), "spool open");
        spool.c.writable.set(1);
        spool.update_gauges();
        Ok((spool, reader))
    }

    /// What every recovery (at open, or by [`Spool::recover`]) is followed by:
    /// counting and settling what damage took, and choosing the epoch.
    fn after_recovery(
        &mut self,
        recovery: &ferrule_disklog::Recovery,
        fresh: bool,
        at_open: bool,
        durable_lost: bool,
    ) -> anyhow::Result<()> {
        if !recovery.is_clean() {
            tracing::warn!(
                ?recovery,
                "spool recovered from damage (torn tail cut, corrupt records skipped and counted)"
            );
        }
        // Offsets lost to damage will never be acknowledged: settle them, counted.
        for r in self.log.missing() {
            let (a, b) = (r.start.0, r.end.0);
            if b <= a {
                continue;
            }
            let newly = self.settled.insert_range(Seq(a + 1), Seq(b));
            self.c.corrupt_records.add(newly);
            for _ in 0..newly {
                count_dropped(&self.c.registry, "spool_corrupt", &[("unknown".into(), 0)]);
            }
        }
        if !at_open && !durable_lost {
            // Only records never reported durable (so never sent) were lost: their
            // seqs may be numbered again under the same epoch.
            return Ok(());
        }
        let saved = read_epoch_file(&self.dir);
        let last = self.last_epoch_in_log();
        let choice = choose_epoch(
            if at_open {
                saved
            } else {
                Ok(Some(self.epoch.0))
            },
            fresh,
            recovery.truncated_tail_bytes > 0 || durable_lost,
            last,
            now_ns(),
            random_u64(),
        );
        if let Some(why) = choice.why_new {
            tracing::warn!(epoch = %choice.epoch, reason = why, "spool starts a new epoch; batches already spooled keep theirs, and no sequence number is reused");
        }
        if let Err(e) = write_epoch_file(&self.dir, choice.epoch) {
            // Not fatal: records carry their epoch, and the next start stays above
            // the newest one in the log anyway. A full disk must not stop a start.
            tracing::warn!(error = %format!("{e:#}"), "could not save the epoch file");
        }
        self.epoch = choice.epoch;
        Ok(())
    }

    /// The epoch of the newest record, if it can be read.
    fn last_epoch_in_log(&self) -> Option<Epoch> {
        let next = self.log.next_offset().0;
        let first = self.log.first_offset().0;
        if next == 0 || next <= first {
            return None;
        }
        let recs = self
            .log
            .read_records(Offset(next - 1), 1, usize::MAX)
            .ok()?;
        recs.first().and_then(|r| record_epoch(&r.payload))
    }

    /// True while writes fail and [`Spool::recover`] has not succeeded since.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Brings a broken spool back: releases what was acknowledged (freeing space
    /// on a full disk), drops the oldest segment if the disk is full and the
    /// policy allows, then rescans the disk. Records appended but not durable
    /// before the failure may be gone ([`Recovered::next_seq`] says from where);
    /// the caller appends them again.
    pub fn recover(&mut self) -> Result<Recovered, SpoolError> {
        let _ = self.release();
        let full = self
            .broken
            .as_deref()
            .is_some_and(|b| b.contains("No space left") || b.contains("quota"));
        if full && self.policy == FullPolicy::DropOldest {
            // Only if releasing freed nothing that a rescan could use; cheap to try.
            let _ = self.drop_oldest();
        }
        let durable_before = self.log.durable_offset();
        let recovery = self.log.reopen()?;
        let next = self.log.next_offset();
        let durable_lost = next < durable_before;
        if durable_lost {
            // Records that were durable are gone (media damage found while
            // running): count them, and forget what was settled at or above the
            // cut, or the new records numbered there would count as settled and
            // be released unsent. (Settled below it and not yet released are
            // forgotten too: sent again, duplicates the aggregator drops.)
            let lost = durable_before.0 - next.0;
            self.c.corrupt_records.add(lost);
            for _ in 0..lost {
                count_dropped(
                    &self.c.registry,
                    "spool_tail_lost",
                    &[("unknown".into(), 0)],
                );
            }
            self.settled = SeqSet::with_floor(Some(Seq(self.released_through.min(next.0))));
            tracing::warn!(
                lost,
                "the spool lost records that were durable (damage found while running); counted"
            );
        }
        self.after_recovery(&recovery, false, false, durable_lost)
            .map_err(|e| SpoolError::Broken(format!("{e:#}")))?;
        if self.broken.take().is_some() {
            self.c.recoveries.inc();
        }
        self.c.writable.set(1);
        self.update_gauges();
        Ok(Recovered {
            next_seq: self.next_seq(),
            epoch: self.epoch,
        })
    }

    /// Records a failed write: the spool is broken until [`Spool::recover`].
    fn fail(&mut self, e: ferrule_disklog::Error) -> SpoolError {
        if self.broken.is_none() {
            self.broken = Some(e.to_string());
            self.c.writable.set(0);
        }
        SpoolError::Log(e)
    }

    /// The epoch batches are numbered in.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> Seq {
        seq_of(self.log.next_offset())
    }

    /// Every seq below this is durable (may be sent).
    pub fn durable_until(&self) -> Seq {
        seq_of(self.log.durable_offset())
    }

    /// The oldest seq not yet acknowledged.
    pub fn first_unacked(&self) -> Seq {
        self.settled.through().map_or(Seq(1), Seq::next)
    }

    /// True if `seq` was acknowledged (or rejected) already.
    pub fn is_settled(&self, seq: Seq) -> bool {
        self.settled.contains(seq)
    }

    /// True when another append would exceed the cap.
    pub fn is_full(&self) -> bool {
        self.log.total_bytes() >= self.max_bytes
    }

    /// Appends a batch frame built for `self.next_seq()`; the caller encodes the
    /// frame with that seq. With `fsync = "always"` it is durable on return.
    pub fn append<S: AsRef<str>>(
        &mut self,
        inputs: &[(S, u32)],
        frame: &[u8],
    ) -> Result<Seq, SpoolError> {
        if let Some(cause) = &self.broken {
            return Err(SpoolError::Broken(cause.clone()));
        }
        while self.is_full() {
            match self.policy {
                FullPolicy::Block => return Err(SpoolError::Full),
                FullPolicy::DropOldest => {
                    if !self.drop_oldest()? {
                        break;
                    }
                }
            }
        }
        let head = RecordHeadV3 {
            epoch: self.epoch.0,
            inputs: inputs
                .iter()
                .map(|(i, n)| (i.as_ref().to_string(), *n))
                .collect(),
        };
        let samples: u64 = inputs.iter().map(|(_, n)| u64::from(*n)).sum();
        let mut payload = Vec::with_capacity(frame.len() + 64);
        payload.push(HEAD_V3);
        // Postcard of strings and integers into a Vec cannot fail.
        if let Ok(head) = postcard::to_stdvec(&head) {
            payload.extend_from_slice(&head);
        }
        payload.extend_from_slice(frame);
        let off = match self.log.append(&payload) {
            Ok(o) => o,
            Err(ferrule_disklog::Error::RecordTooLarge { len, max }) => {
                // Not a disk failure: the log goes on. Cannot happen below the batch limits.
                return Err(SpoolError::Log(ferrule_disklog::Error::RecordTooLarge {
                    len,
                    max,
                }));
            }
            Err(e) => return Err(self.fail(e)),
        };
        self.c.spooled_batches.inc();
        self.c.spooled_samples.add(samples);
        self.backlog
            .appended(seq_of(off).0, payload.len() as u64, now_ns());
        self.update_gauges();
        Ok(seq_of(off))
    }

    /// Makes every append so far durable; returns the new `durable_until`.
    pub fn sync(&mut self) -> Result<Seq, SpoolError> {
        if let Some(cause) = &self.broken {
            return Err(SpoolError::Broken(cause.clone()));
        }
        if self.fsync == FsyncMode::Interval && self.log.durable_offset() < self.log.next_offset() {
            if let Err(e) = self.log.sync() {
                return Err(self.fail(e));
            }
        }
        Ok(self.durable_until())
    }

    /// Starts a group commit whose fsync runs elsewhere (see
    /// [`ferrule_disklog::Log::begin_sync`]): `None` if nothing needs it.
    pub fn begin_sync(&mut self) -> Result<Option<PendingSync>, SpoolError> {
        if let Some(cause) = &self.broken {
            return Err(SpoolError::Broken(cause.clone()));
        }
        if self.fsync != FsyncMode::Interval || self.log.durable_offset() >= self.log.next_offset()
        {
            return Ok(None);
        }
        self.log.begin_sync().map_err(|e| self.fail(e))
    }

    /// Completes a [`Spool::begin_sync`]; returns the new `durable_until`.
    pub fn finish_sync(&mut self, done: CompletedSync) -> Result<Seq, SpoolError> {
        if let Err(e) = self.log.finish_sync(done) {
            return Err(self.fail(e));
        }
        Ok(self.durable_until())
    }

    /// Deletes the oldest segment, counting its unacknowledged batches as dropped
    /// per input. False if there was nothing to drop.
    fn drop_oldest(&mut self) -> Result<bool, SpoolError> {
        // Read what is about to go (about one segment), to count it per input.
        let preview = self.log.read_records(
            self.log.first_offset(),
            usize::MAX,
            (self.segment_bytes as usize).saturating_mul(2),
        )?;
        let Some(seg) = self.log.drop_oldest_segment()? else {
            return Ok(false);
        };
        for r in preview {
            if r.offset < seg.base || r.offset >= seg.end || self.settled.contains(seq_of(r.offset))
            {
                continue;
            }
            let inputs = match parse_record(&r.payload) {
                Ok((_, inputs, _)) => inputs,
                Err(_) => vec![("unknown".to_string(), 0)],
            };
            count_dropped(&self.c.registry, "spool_full", &inputs);
        }
        tracing::warn!(
            records = seg.records,
            bytes = seg.bytes,
            "spool full: dropped the oldest segment"
        );
        // Dropped batches count as settled so they are never waited for.
        if seg.end.0 > 0 {
            self.settled.insert_range(Seq(1), Seq(seg.end.0));
            self.released_through = self.released_through.max(seg.end.0);
        }
        self.update_gauges();
        Ok(true)
    }

    /// Marks batches acknowledged (or refused for good). The settled prefix is
    /// released from disk at most once a second (each release costs fsyncs); a
    /// batch settled but not yet released is resent after a crash, and dropped as
    /// a duplicate by the aggregator.
    pub fn settle(&mut self, seqs: &[Seq]) -> Result<(), SpoolError> {
        self.settle_as(seqs, true)
    }

    /// Like [`Spool::settle`]; `acked` false for batches refused for good or
    /// dropped (counted as dropped elsewhere), which are released all the same
    /// but not counted in `ferrule_agent_acked_batches_total`.
    pub fn settle_as(&mut self, seqs: &[Seq], acked: bool) -> Result<(), SpoolError> {
        for s in seqs {
            if self.settled.insert(*s) && acked {
                self.c.acked_batches.inc();
            }
        }
        if self.release_due() {
            self.release()?;
        }
        self.update_gauges();
        Ok(())
    }

    /// True if the next [`Spool::settle`] releases from disk (and so fsyncs).
    pub fn release_due(&self) -> bool {
        self.last_release.elapsed() >= RELEASE_EVERY
    }

    /// Releases the settled prefix from disk now.
    pub fn release(&mut self) -> Result<(), SpoolError> {
        self.last_release = std::time::Instant::now();
        if let Some(t) = self.settled.through() {
            if t.0 > self.released_through {
                // seq t is offset t - 1: release offsets up to it.
                self.log.release_through(Offset(t.0 - 1))?;
                self.released_through = t.0;
                self.update_gauges();
            }
        }
        Ok(())
    }

    /// What an earlier run left unacknowledged: the spool's bytes (an upper
    /// bound: the first segment may hold acknowledged records not yet released)
    /// from the oldest unacknowledged batch, timed by its record.
    fn recovered_backlog(&self) -> Backlog {
        let (first, next) = (self.first_unacked(), self.next_seq());
        if first >= next {
            return Backlog::default();
        }
        let time_ns = self
            .log
            .read_records(Offset(first.0.saturating_sub(1)), 1, 1 << 20)
            .ok()
            .and_then(|r| r.first().map(|r| r.appended_at))
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(now_ns, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Backlog::recovered(first.0, self.log.total_bytes(), time_ns)
    }

    /// What the spool holds unacknowledged, for the uplink's spool reports
    /// (wire `Status`); the same figures as the `ferrule_agent_spool_unacked_*`
    /// and oldest-age gauges, so the aggregator's agents table and the agent's
    /// metrics agree:
    /// - batches: from the oldest unacknowledged to the newest appended (a batch
    ///   acknowledged out of order among them still counts until the gap closes);
    /// - bytes: their records' bytes, never less than the truth (see
    ///   [`Backlog`]: a long backlog, or one an earlier run left, is counted
    ///   from a mark at or before the oldest);
    /// - the oldest's append time (read back from its record after a restart).
    pub fn backlog(&self) -> SpoolBacklog {
        let (first, next) = (self.first_unacked().0, self.next_seq().0);
        SpoolBacklog {
            batches: next.saturating_sub(first),
            bytes: self.backlog.unacked_bytes(first, next),
            oldest_unacked_wall_ns: self
                .backlog
                .oldest_time_ns(first, next)
                .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
        }
    }

    /// Sets the gauges again; the batcher calls it every second so the oldest
    /// unacknowledged batch's age keeps rising while nothing else happens.
    pub fn refresh_gauges(&mut self) {
        self.update_gauges();
    }

    fn update_gauges(&mut self) {
        let (first, next) = (self.first_unacked().0, self.next_seq().0);
        self.backlog.settled_below(first);
        self.c
            .unacked_bytes
            .set(i64::try_from(self.backlog.unacked_bytes(first, next)).unwrap_or(i64::MAX));
        let age_ns = self.backlog.oldest_age_ns(first, next, now_ns());
        self.c
            .oldest_age
            .set(i64::try_from(age_ns / 1_000_000_000).unwrap_or(i64::MAX));
        self.c
            .bytes
            .set(i64::try_from(self.log.total_bytes()).unwrap_or(i64::MAX));
        let unacked = self.next_seq().0.saturating_sub(self.first_unacked().0);
        self.c
            .unacked
            .set(i64::try_from(unacked).unwrap_or(i64::MAX));
        self.c
            .last_seq
            .set(i64::try_from(self.next_seq().0.saturating_sub(1)).unwrap_or(i64::MAX));
    }
}

impl SpoolReader {
    /// Up to `max` durable batches with seq `>= from`, in order.
    pub fn read(&self, from: Seq, max: usize) -> Result<Vec<Spooled>, ferrule_disklog::Error> {
        let from = Offset(from.0.saturating_sub(1));
        let recs = self.reader.read_records(from, max, 8 << 20)?;
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            if r.offset >= self.reader.durable_offset() {
                break;
            }
            let parsed = parse_record(&r.payload)
                .ok()
                .and_then(|(epoch, inputs, frame)| {
                    let epoch =
                        epoch.or_else(|| ferrule_wire::peek_batch(frame).ok().map(|(e, _)| e))?;
                    Some((epoch, inputs, frame))
                });
            match parsed {
                Some((epoch, inputs, frame)) => out.push(Spooled {
                    epoch,
                    seq: seq_of(r.offset),
                    inputs,
                    frame: frame.to_vec(),
                    unreadable: false,
                }),
                // A CRC-checked record that does not parse would be a bug of ours:
                // never send garbage; the uplink counts it as dropped and settles it
                // (or the spool would wait for its acknowledgement for ever).
                None => out.push(Spooled {
                    epoch: Epoch(0),
                    seq: seq_of(r.offset),
                    inputs: vec![("unknown".into(), 0)],
                    frame: Vec::new(),
                    unreadable: true,
                }),
            }
        }
        Ok(out)
    }
}

/// The epoch file, if it is there and says a number; `Err` if it is there but
/// unreadable.
fn read_epoch_file(dir: &Path) -> Result<Option<u64>, ()> {
    match std::fs::read_to_string(dir.join("epoch")) {
        Ok(text) => text.trim().parse::<u64>().map(Some).map_err(|_| ()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    }
}

/// Saves the epoch beside the log, durably: atomically (temp file, fsync,
/// rename, fsync dir) when it can, else in place (the number is written at a
/// fixed width, so overwriting the file needs no new block on a full disk).
fn write_epoch_file(dir: &Path, epoch: Epoch) -> anyhow::Result<()> {
    let path = dir.join("epoch");
    let text = format!("{:020}\n", epoch.0);
    let atomic = || -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    if let Err(first) = atomic() {
        let _ = std::fs::remove_file(path.with_extension("tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|_| first)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    Ok(())
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Bits of the OS's randomness (through `RandomState`'s seed).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.finish()
}

/// The epoch a spool writes in after a recovery, and what was unusual about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochChoice {
    /// The epoch (always a new one).
    pub epoch: Epoch,
    /// Damage or a lost epoch file that made it necessary, for a warning.
    pub why_new: Option<&'static str>,
}

/// Low bits of a new epoch that come from randomness, not the clock.
const RANDOM_EPOCH_BITS: u32 = 20;

/// Decides the epoch after a recovery (at start, or after a rescan). Pure: the
/// caller reads the epoch file (`saved`: `Ok(None)` missing, `Err` unreadable),
/// the newest epoch in the log, the clock and some randomness.
///
/// Every recovery starts a new epoch. A sequence number is the record's offset,
/// and recovery can number an offset again: a fresh log from 1, a torn tail from
/// where it was cut, and media damage or a truncation that ends exactly between
/// two records leaves no trace at all, although the records it took may have
/// been sent and acknowledged. A new epoch makes every (epoch, seq) after a
/// recovery new whatever the disk lost; the batches already spooled keep their
/// own. It is the clock's time with random low bits, raised above the saved
/// epoch and the newest one in the log, so neither a clock that jumps back nor
/// a box that boots with the same time every time can repeat one. `why_new`
/// says what was unusual, for the log.
pub fn choose_epoch(
    saved: Result<Option<u64>, ()>,
    fresh: bool,
    tail_cut: bool,
    last_in_log: Option<Epoch>,
    now_ns: u64,
    random: u64,
) -> EpochChoice {
    let why_new = if fresh {
        None
    } else if tail_cut {
        Some("the spool's tail was cut by recovery")
    } else {
        match saved {
            Ok(Some(_)) => None,
            Ok(None) => Some("the epoch file is missing"),
            Err(()) => Some("the epoch file is unreadable"),
        }
    };
    let mask = (1u64 << RANDOM_EPOCH_BITS) - 1;
    let candidate = ((now_ns & !mask) | (random & mask)).max(1);
    let floor = [saved.ok().flatten(), last_in_log.map(|e| e.0)]
        .into_iter()
        .flatten()
        .max()
        .map_or(0, |e| e.saturating_add(1));
    EpochChoice {
        epoch: Epoch(candidate.max(floor)),
        why_new,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::SpoolSection;

    fn cfg(dir: &Path) -> SpoolSection {
        SpoolSection {
            dir: dir.to_path_buf(),
            fsync: FsyncMode::Interval,
            ..SpoolSection::default()
        }
    }

    fn frame(epoch: u64, seq: u64, samples: usize) -> Vec<u8> {
        let mut series = ferrule_wire::Series::new(ferrule_wire::SensorId(0));
        for i in 0..samples {
            series.push(i as i64, 1.0, ferrule_wire::Quality::Good);
        }
        let mut out = Vec::new();
        ferrule_wire::encode(
            &ferrule_wire::Message::Batch(ferrule_wire::Batch {
                epoch: Epoch(epoch),
                seq: Seq(seq),
                clock_offset_ns: 0,
                series: vec![series],
            }),
            &ferrule_wire::Limits::default(),
            &mut out,
        )
        .unwrap();
        out
    }

    #[test]
    fn records_spooled_by_older_agents_are_still_sent_under_their_epoch() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("epoch"), "5\n").unwrap();
        let (f1, f2) = (frame(5, 1, 7), frame(5, 2, 3));
        {
            let (mut log, _) = Log::open(dir.path().join("log"), Options::default()).unwrap();
            // Before multi-input batches: postcard of the input name and its
            // sample count, then the frame.
            let mut payload = vec![3, b'o', b'l', b'd', 7];
            payload.extend_from_slice(&f1);
            log.append(&payload).unwrap();
            // Before records named their epoch: 0, postcard of the inputs, frame.
            let mut payload = vec![HEAD_V2];
            payload.extend(
                postcard::to_stdvec(&RecordHead {
                    inputs: vec![("mid".into(), 3)],
                })
                .unwrap(),
            );
            payload.extend_from_slice(&f2);
            log.append(&payload).unwrap();
            // A record that passes its checksums but holds no batch.
            let mut payload = vec![HEAD_V2];
            payload.extend(
                postcard::to_stdvec(&RecordHead {
                    inputs: vec![("bad".into(), 1)],
                })
                .unwrap(),
            );
            payload.extend_from_slice(b"not a frame");
            log.append(&payload).unwrap();
            log.sync().unwrap();
        }
        let reg = Registry::new();
        let (mut spool, reader) = Spool::open(&cfg(dir.path()), &reg).unwrap();
        assert!(spool.epoch() > Epoch(5), "every start is a new epoch");
        let f4 = frame(spool.epoch().0, 4, 2);
        spool.append(&[("modbus", 2)], &f4).unwrap();
        spool.sync().unwrap();
        let got = reader.read(Seq(1), 10).unwrap();
        let got: Vec<(u64, u64, InputCounts, bool)> = got
            .iter()
            .map(|b| (b.epoch.0, b.seq.0, b.inputs.clone(), b.unreadable))
            .collect();
        assert_eq!(
            got,
            vec![
                (5, 1, vec![("old".to_string(), 7)], false),
                (5, 2, vec![("mid".to_string(), 3)], false),
                (0, 3, vec![("unknown".to_string(), 0)], true),
                (spool.epoch().0, 4, vec![("modbus".to_string(), 2)], false),
            ]
        );
    }

    #[test]
    fn a_second_agent_cannot_open_the_same_spool() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new();
        let (_spool, _reader) = Spool::open(&cfg(dir.path()), &reg).unwrap();
        let err = Spool::open(&cfg(dir.path()), &reg).err().unwrap();
        assert!(
            format!("{err:#}").contains("in use by another process"),
            "{err:#}"
        );
    }

    /// Appends `n` real batches and syncs; their seqs.
    fn fill(spool: &mut Spool, n: u64) -> Vec<Seq> {
        (0..n)
            .map(|_| {
                let f = frame(spool.epoch().0, spool.next_seq().0, 5);
                let seq = spool.append(&[("in", 5)], &f).unwrap();
                spool.sync().unwrap();
                seq
            })
            .collect()
    }

    #[test]
    fn a_lost_epoch_file_starts_a_higher_epoch_and_keeps_the_old_batches_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new();
        let old = {
            let (mut spool, _) = Spool::open(&cfg(dir.path()), &reg).unwrap();
            fill(&mut spool, 3);
            spool.epoch()
        };
        std::fs::remove_file(dir.path().join("epoch")).unwrap();
        let (mut spool, reader) = Spool::open(&cfg(dir.path()), &reg).unwrap();
        assert!(spool.epoch() > old, "{} after {old}", spool.epoch());
        fill(&mut spool, 1);
        let got: Vec<(Epoch, Seq)> = reader
            .read(Seq(1), 10)
            .unwrap()
            .iter()
            .map(|b| (b.epoch, b.seq))
            .collect();
        assert_eq!(
            got,
            vec![
                (old, Seq(1)),
                (old, Seq(2)),
                (old, Seq(3)),
                (spool.epoch(), Seq(4))
            ]
        );
    }

    #[test]
    fn a_cut_tail_moves_to_a_new_epoch_so_no_seq_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new();
        let old = {
            let (mut spool, _) = Spool::open(&cfg(dir.path()), &reg).unwrap();
            fill(&mut spool, 3);
            spool.epoch()
        };
        // Media damage cuts the last record, acknowledged or not.
        let seg = std::fs::read_dir(dir.path().join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (mut spool, _) = Spool::open(&cfg(dir.path()), &reg).unwrap();
        assert_eq!(spool.next_seq(), Seq(3), "seq 3 is numbered again...");
        assert!(spool.epoch() > old, "...under a new epoch");
        fill(&mut spool, 1);
        // A cut at a record boundary leaves no trace, and still no seq is
        // reused: every start is a new epoch.
        let e = spool.epoch();
        drop(spool);
        let len = std::fs::metadata(&seg).unwrap().len();
        let rec = (len - 32) / 3;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - rec)
            .unwrap();
        let (spool, _) = Spool::open(&cfg(dir.path()), &reg).unwrap();
        assert_eq!(spool.next_seq(), Seq(3));
        assert!(spool.epoch() > e);
    }

    #[test]
    fn gauges_say_whether_the_spool_has_drained() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new();
        let (mut spool, _) = Spool::open(&cfg(dir.path()), &reg).unwrap();
        let gauge = |name: &str| {
            let text = reg.render();
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        assert_eq!(gauge("ferrule_agent_spool_last_seq"), "0");
        assert_eq!(gauge("ferrule_agent_spool_unacked_bytes"), "0");
        assert_eq!(gauge("ferrule_agent_spool_oldest_unacked_age_seconds"), "0");
        assert_eq!(spool.backlog(), SpoolBacklog::default(), "empty: all zero");
        let before = now_ns();
        let seqs = fill(&mut spool, 3);
        assert_eq!(gauge("ferrule_agent_spool_last_seq"), "3");
        assert_eq!(gauge("ferrule_agent_spool_unacked_batches"), "3");
        let unacked: u64 = gauge("ferrule_agent_spool_unacked_bytes").parse().unwrap();
        assert!(unacked > 0);
        // The report the uplink sends says what the gauges say.
        let report = spool.backlog();
        assert_eq!((report.batches, report.bytes), (3, unacked));
        let oldest = report.oldest_unacked_wall_ns.unwrap();
        assert!(oldest >= before as i64 && oldest <= now_ns() as i64);
        spool.settle(&seqs[..1]).unwrap();
        let fewer: u64 = gauge("ferrule_agent_spool_unacked_bytes").parse().unwrap();
        assert!(fewer < unacked && fewer > 0, "{fewer} of {unacked}");
        assert_eq!((spool.backlog().batches, spool.backlog().bytes), (2, fewer));
        spool.settle(&seqs).unwrap();
        assert_eq!(gauge("ferrule_agent_spool_unacked_batches"), "0");
        assert_eq!(gauge("ferrule_agent_spool_unacked_bytes"), "0", "drained");
        assert_eq!(
            spool.backlog(),
            SpoolBacklog::default(),
            "drained: all zero"
        );
        assert_eq!(gauge("ferrule_agent_spool_oldest_unacked_age_seconds"), "0");
        assert_eq!(gauge("ferrule_agent_spool_last_seq"), "3");
        // Refused batches are released but not counted as acknowledged.
        let more = fill(&mut spool, 2);
        spool.settle_as(&more, false).unwrap();
        assert_eq!(gauge("ferrule_agent_spool_unacked_batches"), "0");
        assert_eq!(gauge("ferrule_agent_acked_batches_total"), "3");
    }

    #[test]
    // The record must be a second old by the wall clock the spool reads.
    #[allow(clippy::disallowed_methods)]
    fn a_backlog_left_by_an_earlier_run_is_counted_with_its_age() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(&cfg(dir.path()), &Registry::new()).unwrap();
            fill(&mut spool, 4);
            spool.sync().unwrap();
        }
        std::thread::sleep(Duration::from_millis(1100));
        let reg = Registry::new();
        let (mut spool, _) = Spool::open(&cfg(dir.path()), &reg).unwrap();
        let gauge = |name: &str| -> u64 {
            let text = reg.render();
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .parse()
                .unwrap()
        };
        assert!(gauge("ferrule_agent_spool_unacked_bytes") > 0);
        assert!(
            gauge("ferrule_agent_spool_oldest_unacked_age_seconds") >= 1,
            "timed by its record"
        );
        let report = spool.backlog();
        assert_eq!(report.batches, 4);
        assert_eq!(report.bytes, gauge("ferrule_agent_spool_unacked_bytes"));
        let age_ns = (now_ns() as i64).saturating_sub(report.oldest_unacked_wall_ns.unwrap());
        assert!(age_ns >= 1_000_000_000, "reported from its record's time");
        let all: Vec<Seq> = (1..=4).map(Seq).collect();
        spool.settle(&all).unwrap();
        assert_eq!(gauge("ferrule_agent_spool_unacked_bytes"), 0);
        assert_eq!(gauge("ferrule_agent_spool_oldest_unacked_age_seconds"), 0);
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_counted_and_settled() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new();
        {
            let (mut spool, _) = Spool::open(&cfg(dir.path()), &reg).unwrap();
            fill(&mut spool, 5);
        }
        // Flip a byte in the third record's payload.
        let seg = std::fs::read_dir(dir.path().join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let rec = (bytes.len() - 32) / 5;
        bytes[32 + 2 * rec + 40] ^= 0xFF;
        std::fs::write(&seg, bytes).unwrap();
        let reg = Registry::new();
        let (mut spool, reader) = Spool::open(&cfg(dir.path()), &reg).unwrap();
        let seqs: Vec<Seq> = reader
            .read(Seq(1), 10)
            .unwrap()
            .iter()
            .map(|b| b.seq)
            .collect();
        assert_eq!(seqs, vec![Seq(1), Seq(2), Seq(4), Seq(5)]);
        // Once the others are acknowledged, nothing is left waiting.
        spool.settle(&seqs).unwrap();
        assert_eq!(spool.first_unacked(), Seq(6));
        let text = reg.render();
        assert!(
            text.contains("ferrule_agent_spool_corrupt_records_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferrule_agent_dropped_batches_total{reason=\"spool_corrupt\",input=\"unknown\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn epochs_rise_above_everything_known_whatever_the_clock_says() {
        let e = |saved, fresh, cut, last: Option<u64>, now| {
            choose_epoch(saved, fresh, cut, last.map(Epoch), now, 0xABCDE)
        };
        // Always new; nothing unusual to warn about on a clean start.
        let c = e(Ok(Some(7)), false, false, Some(7), 1 << 40);
        assert_eq!(c.epoch, Epoch((1 << 40) | 0xABCDE));
        assert_eq!(c.why_new, None);
        // From the clock with random low bits...
        let c = e(Ok(None), false, false, Some(7), 5 << 30);
        assert_eq!(c.epoch, Epoch((5 << 30) | 0xABCDE));
        assert!(c.why_new.is_some());
        // ...but above the saved and the logged epochs when the clock is behind.
        let c = e(Ok(Some(9 << 40)), false, true, Some(3 << 40), 5);
        assert_eq!(c.epoch, Epoch((9 << 40) + 1));
        let c = e(Err(()), false, false, Some(u64::MAX - 1), 5);
        assert_eq!(c.epoch, Epoch(u64::MAX));
        assert!(e(Ok(Some(3)), true, false, None, 0).epoch.0 > 3);
    }
}
