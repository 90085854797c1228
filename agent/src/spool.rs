//! The spool: every batch the agent builds, on disk until the aggregator
//! acknowledges it.
//!
//! One record per batch in a `ferrule-disklog` log, so a batch's sequence number
//! is its offset + 1 and numbering survives restarts; the epoch is saved beside
//! the log and changes only when the log starts empty. A batch is sent only once
//! durable (fsynced), so a sequence number the aggregator saw is never reused for
//! different data after a crash. Acknowledged batches are released as a prefix;
//! when the byte cap is reached the policy either blocks the inputs or drops the
//! oldest segment, counted per input.

use crate::config::{FsyncMode, FullPolicy, SpoolSection};
use ferrule_disklog::{CompletedSync, FsyncPolicy, Log, LogReader, Offset, Options, PendingSync};
use ferrule_telemetry::{Counter, Gauge, Registry};
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

/// The per-input sample counts and the frame of a spool record.
fn parse_record(payload: &[u8]) -> Result<(InputCounts, &[u8]), postcard::Error> {
    match payload.split_first() {
        Some((&HEAD_V2, rest)) => {
            postcard::take_from_bytes::<RecordHead>(rest).map(|(h, frame)| (h.inputs, frame))
        }
        _ => postcard::take_from_bytes::<RecordHeadV1>(payload)
            .map(|(h, frame)| (vec![(h.input, h.samples)], frame)),
    }
}

/// Samples per input in one batch: the spool records it, the uplink counts
/// sent, acknowledged and dropped batches with it.
pub type InputCounts = Vec<(String, u32)>;

/// A batch read back from the spool.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// Its sequence number.
    pub seq: Seq,
    /// The inputs whose samples it holds, with how many each.
    pub inputs: InputCounts,
    /// The encoded Batch frame, ready to write to a lane.
    pub frame: Vec<u8>,
}

impl Spooled {
    /// Samples in the batch.
    pub fn samples(&self) -> u64 {
        self.inputs.iter().map(|(_, n)| u64::from(*n)).sum()
    }
}

/// Counts batches dropped unacknowledged for `reason`, per input: a batch
/// counts once for every input with samples in it.
pub fn count_dropped(registry: &Registry, reason: &str, inputs: &[(String, u32)]) {
    for (input, samples) in inputs {
        let labels = [("reason", reason), ("input", input.as_str())];
        registry
            .counter(
                "ferrule_agent_dropped_batches_total",
                "Batches dropped unacknowledged, by reason and input (a batch counts for each input in it)",
                &labels,
            )
            .inc();
        registry
            .counter(
                "ferrule_agent_dropped_samples_total",
                "Samples dropped unacknowledged, by reason and input",
                &labels,
            )
            .add(u64::from(*samples));
    }
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool is at its cap and the policy is to block.
    #[error("spool full")]
    Full,
    /// The disk failed.
    #[error(transparent)]
    Log(#[from] ferrule_disklog::Error),
}

struct Counters {
    spooled_batches: Counter,
    spooled_samples: Counter,
    acked_batches: Counter,
    bytes: Gauge,
    unacked: Gauge,
    registry: Registry,
}

/// The writing side, owned by one task.
pub struct Spool {
    log: Log,
    epoch: Epoch,
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
    /// Opens (recovering) the spool in `cfg.dir`.
    pub fn open(cfg: &SpoolSection, registry: &Registry) -> anyhow::Result<(Spool, SpoolReader)> {
        std::fs::create_dir_all(&cfg.dir)?;
        let mut opts = Options::default();
        opts.segment_bytes = cfg.segment_bytes;
        opts.fsync = match cfg.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => FsyncPolicy::Batch,
        };
        let (log, recovery) = Log::open(cfg.dir.join("log"), opts)?;
        if !recovery.is_clean() {
            tracing::warn!(
                ?recovery,
                "spool recovered from damage (torn tail cut, corrupt records skipped and counted)"
            );
        }
        registry
            .counter(
                "ferrule_agent_spool_corrupt_records_total",
                "Spool records found corrupt at start and skipped",
                &[],
            )
            .add(recovery.corrupt_records);
        let fresh = log.next_offset().0 == 0 && log.first_offset().0 == 0;
        let epoch = load_or_create_epoch(&cfg.dir, fresh)?;
        let first = log.first_offset().0;
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
                "Batches acknowledged by an aggregator",
                &[],
            ),
            bytes: registry.gauge("ferrule_agent_spool_bytes", "Bytes in the spool", &[]),
            unacked: registry.gauge(
                "ferrule_agent_spool_unacked_batches",
                "Batches in the spool not yet acknowledged",
                &[],
            ),
            registry: registry.clone(),
        };
        let reader = SpoolReader {
            reader: log.reader(),
        };
        let spool = Spool {
            epoch,
            max_bytes: cfg.max_bytes,
            segment_bytes: cfg.segment_bytes,
            policy: cfg.full_policy,
            fsync: cfg.fsync,
            settled: SeqSet::with_floor(Some(Seq(first))),
            released_through: first,
            last_release: std::time::Instant::now(),
            log,
            c,
        };
        tracing::info!(%epoch, first_unacked = %spool.first_unacked(), next = %spool.next_seq(), "spool open");
        spool.update_gauges();
        Ok((spool, reader))
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
        let head = RecordHead {
            inputs: inputs
                .iter()
                .map(|(i, n)| (i.as_ref().to_string(), *n))
                .collect(),
        };
        let samples: u64 = inputs.iter().map(|(_, n)| u64::from(*n)).sum();
        let mut payload = Vec::with_capacity(frame.len() + 64);
        payload.push(HEAD_V2);
        // Postcard of strings and integers into a Vec cannot fail.
        if let Ok(head) = postcard::to_stdvec(&head) {
            payload.extend_from_slice(&head);
        }
        payload.extend_from_slice(frame);
        let off = self.log.append(&payload)?;
        self.c.spooled_batches.inc();
        self.c.spooled_samples.add(samples);
        self.update_gauges();
        Ok(seq_of(off))
    }

    /// Makes every append so far durable; returns the new `durable_until`.
    pub fn sync(&mut self) -> Result<Seq, SpoolError> {
        if self.fsync == FsyncMode::Interval && self.log.durable_offset() < self.log.next_offset() {
            self.log.sync()?;
        }
        Ok(self.durable_until())
    }

    /// Starts a group commit whose fsync runs elsewhere (see
    /// [`ferrule_disklog::Log::begin_sync`]): `None` if nothing needs it.
    pub fn begin_sync(&mut self) -> Result<Option<PendingSync>, SpoolError> {
        if self.fsync != FsyncMode::Interval || self.log.durable_offset() >= self.log.next_offset()
        {
            return Ok(None);
        }
        Ok(self.log.begin_sync()?)
    }

    /// Completes a [`Spool::begin_sync`]; returns the new `durable_until`.
    pub fn finish_sync(&mut self, done: CompletedSync) -> Result<Seq, SpoolError> {
        self.log.finish_sync(done)?;
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
                Ok((inputs, _)) => inputs,
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
        for s in seqs {
            if self.settled.insert(*s) {
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

    fn update_gauges(&self) {
        self.c
            .bytes
            .set(i64::try_from(self.log.total_bytes()).unwrap_or(i64::MAX));
        let unacked = self.next_seq().0.saturating_sub(self.first_unacked().0);
        self.c
            .unacked
            .set(i64::try_from(unacked).unwrap_or(i64::MAX));
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
            match parse_record(&r.payload) {
                Ok((inputs, frame)) => out.push(Spooled {
                    seq: seq_of(r.offset),
                    inputs,
                    frame: frame.to_vec(),
                }),
                // CRC-checked records that do not parse would be a bug of ours;
                // skip rather than send garbage.
                Err(e) => {
                    tracing::error!(offset = r.offset.0, error = %e, "unparseable spool record skipped")
                }
            }
        }
        Ok(out)
    }
}

/// Reads the epoch saved beside the log, or creates one when the log is fresh
/// (a fresh log restarts numbering at 1, which needs a new epoch).
fn load_or_create_epoch(dir: &Path, fresh: bool) -> anyhow::Result<Epoch> {
    let path = dir.join("epoch");
    if !fresh {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(e) = text.trim().parse::<u64>() {
                return Ok(Epoch(e));
            }
            tracing::warn!(path = %path.display(), "epoch file unreadable; starting a new epoch");
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{now}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Epoch(now))
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

    #[test]
    fn records_spooled_by_an_older_agent_are_still_sent() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an agent before multi-input batches wrote: postcard of the
            // input name and its sample count, then the frame.
            let (mut log, _) = Log::open(dir.path().join("log"), Options::default()).unwrap();
            let mut payload = vec![3, b'o', b'l', b'd', 7];
            payload.extend_from_slice(b"frame-1");
            log.append(&payload).unwrap();
            log.sync().unwrap();
        }
        let reg = Registry::new();
        let (mut spool, reader) = Spool::open(&cfg(dir.path()), &reg).unwrap();
        spool
            .append(&[("modbus", 2), ("mqtt", 5)], b"frame-2")
            .unwrap();
        spool.sync().unwrap();
        let got = reader.read(Seq(1), 10).unwrap();
        let got: Vec<(u64, InputCounts, &[u8])> = got
            .iter()
            .map(|b| (b.seq.0, b.inputs.clone(), b.frame.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, vec![("old".to_string(), 7)], &b"frame-1"[..]),
                (
                    2,
                    vec![("modbus".to_string(), 2), ("mqtt".to_string(), 5)],
                    &b"frame-2"[..]
                ),
            ]
        );
    }
}
