//! The batcher: the memory queue between the inputs and the spool.
//!
//! Inputs send chunks of samples through a bounded channel; the batcher groups
//! them per sensor, whatever input they came from, cuts a batch at
//! `batch.max_samples` or when `batch.max_delay_ms` is up, numbers it with the
//! spool's next sequence number and appends it with the samples per input. It
//! fsyncs per the spool's policy and publishes how far the spool is durable,
//! which is what the uplink may send. One batch per window for all inputs:
//! each batch costs an encode, a spool record, a QUIC frame and an ack,
//! whatever its size.
//!
//! Backpressure: when the spool is full under the `block` policy the batcher stops
//! reading the channel, the channel fills, and inputs wait.
//!
//! Durability for inputs: a chunk may carry a [`Durability`] ticket; once the
//! batch holding it is durable in the spool, the ticket's input learns so (the
//! MQTT input acknowledges a message to its broker only then). A chunk may also
//! ask for its window to close at once (an input whose source waits for acks).
//!
//! Failures: a write or fsync that fails (a full disk, an I/O error) is logged once
//! and counted; the batcher then calls [`Spool::recover`] with a backoff until it
//! works, appends again whatever had not been made durable, and logs once more
//! when the spool is writable again. Shutdown is bounded: a batch that cannot get
//! into the spool within [`SHUTDOWN_WAIT`] is dropped and counted.

use crate::config::{BatchSection, FsyncMode};
use crate::spool::{count_dropped, Spool, SpoolError};
use ferrule_disklog::CompletedSync;
use ferrule_telemetry::Registry;
use ferrule_wire::session::SpoolBacklog;
use ferrule_wire::{decode, encode, Batch, Epoch, Limits, Message, SensorId, Seq, Series};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Lets an input learn when what it handed over is durable in the spool.
///
/// The input numbers its chunks (1, 2, ...) and sends each with a
/// [`Chunk::durability`] ticket; [`Durability::durable_through`] rises to the
/// highest number whose samples are all on disk.
#[derive(Debug, Default)]
pub struct Durability {
    done: AtomicU64,
    notify: Notify,
}

impl Durability {
    /// The highest chunk number whose samples are durable.
    pub fn durable_through(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until [`Durability::durable_through`] changes from `seen`.
    pub async fn changed(&self, seen: u64) {
        loop {
            let notified = self.notify.notified();
            if self.durable_through() != seen {
                return;
            }
            notified.await;
        }
    }

    /// Reports chunk `n` (and every one before it) durable: the batcher calls it
    /// after the fsync that covers the chunk's batch; a test standing in for
    /// the spool calls it when it takes the chunk.
    pub fn mark_durable(&self, n: u64) {
        if self.done.fetch_max(n, Ordering::AcqRel) < n {
            self.notify.notify_waiters();
        }
    }
}

/// Durability tickets a batch carries: one per input that asked, at its highest number.
type Marks = Vec<(Arc<Durability>, u64)>;

fn add_mark(marks: &mut Marks, d: &Arc<Durability>, n: u64) {
    match marks.iter_mut().find(|(m, _)| Arc::ptr_eq(m, d)) {
        Some((_, k)) => *k = (*k).max(n),
        None => marks.push((d.clone(), n)),
    }
}

fn fire(marks: &Marks) {
    for (d, n) in marks {
        d.mark_durable(*n);
    }
}

/// Samples from one input.
#[derive(Debug)]
pub struct Chunk {
    /// The input's name.
    pub input: Arc<str>,
    /// One series per sensor.
    pub series: Vec<Series>,
    /// Tell this input when these samples are durable: its ticket and the
    /// chunk's number (increasing per input).
    pub durability: Option<(Arc<Durability>, u64)>,
    /// Close the batch window at once with this chunk in (its source waits for
    /// the acknowledgement that durability brings).
    pub flush: bool,
}

impl Chunk {
    /// A chunk with no durability ticket.
    pub fn new(input: Arc<str>, series: Vec<Series>) -> Self {
        Self {
            input,
            series,
            durability: None,
            flush: false,
        }
    }
}

/// What the uplink reports back about sent batches.
#[derive(Debug)]
pub enum Settle {
    /// Acknowledged as committed: release them (counted in
    /// `ferrule_agent_acked_batches_total`).
    Done(Vec<Seq>),
    /// Refused for good by the aggregator, or dropped unsendable, and counted as
    /// dropped already: release them too, but they were never acknowledged.
    Dropped(Vec<Seq>),
    /// A read found a record corrupt on disk: rescan the spool (the damaged
    /// records are then counted and settled).
    Rescan,
}

/// What the uplink needs to know about the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolState {
    /// The epoch new batches are written in.
    pub epoch: Epoch,
    /// Every seq below this is durable and may be sent.
    pub durable_until: Seq,
    /// The oldest seq not yet acknowledged.
    pub first_unacked: Seq,
}

/// The samples since the last batch.
#[derive(Default)]
struct Builder {
    series: BTreeMap<SensorId, Series>,
    samples: usize,
    /// Samples per input, for the spool record.
    inputs: BTreeMap<Arc<str>, u32>,
    marks: Marks,
    /// When its first sample came (the start of a traced batch's life).
    opened: Option<SystemTime>,
}

/// A batch's samples per input.
type Inputs = Vec<(Arc<str>, u32)>;

/// A cut batch that is not in the spool yet.
struct Cut {
    inputs: Inputs,
    series: Vec<Series>,
    marks: Marks,
    opened: Option<SystemTime>,
}

/// A batch in the spool that is not durable yet: kept to tell its inputs when it
/// is, and to append it again if a failed write takes it off the disk.
struct Unsynced {
    seq: Seq,
    inputs: Inputs,
    frame: Vec<u8>,
    marks: Marks,
    opened: Option<SystemTime>,
}

/// Channels and shared state around the batcher.
pub struct BatcherIo {
    /// Chunks from the inputs.
    pub chunks: mpsc::Receiver<Chunk>,
    /// Settled seqs from the uplink.
    pub settles: mpsc::UnboundedReceiver<Settle>,
    /// Where the spool's state is published.
    pub state: watch::Sender<SpoolState>,
    /// Where what the spool holds unacknowledged is published, for the
    /// uplink's spool reports. Apart from `state` because nobody waits on it:
    /// the uplink reads it when a report is due, and a new append must not
    /// wake it.
    pub backlog: watch::Sender<SpoolBacklog>,
    /// The clock offset estimate, nanoseconds, kept by the uplink.
    pub clock_offset_ns: Arc<AtomicI64>,
    /// Flips to true on shutdown: flush, sync, stop.
    pub shutdown: watch::Receiver<bool>,
    /// The agent's health: the spool says here why it takes no writes, while it
    /// does not (cause `spool`).
    pub health: Arc<ferrule_telemetry::Health>,
    /// The alert rules that cut a batch short when one fires or resolves
    /// (`[alerts] rules`), if any.
    pub crossings: Option<crate::crossing::Crossings>,
    /// Where the uplink takes new batches as they are cut, for live copies
    /// while its durable lane is behind (an atomic load per batch otherwise).
    pub live: Option<crate::live::LiveTap>,
    /// Unhealthy (cause `unacked`) while the oldest batch not acknowledged
    /// is older than this (`uplink.unhealthy_after_secs`; `None`: never).
    pub unhealthy_after: Option<Duration>,
    /// Spans of sampled batches (OTLP).
    pub traces: crate::trace::Traces,
}

fn publish(spool: &Spool, tx: &watch::Sender<SpoolState>) {
    let s = initial_state(spool);
    tx.send_if_modified(|old| {
        let changed = *old != s;
        *old = s;
        changed
    });
}

/// The state to seed the watch channel with.
pub fn initial_state(spool: &Spool) -> SpoolState {
    SpoolState {
        epoch: spool.epoch(),
        durable_until: spool.durable_until(),
        first_unacked: spool.first_unacked(),
    }
}

use crate::blocking::run as blocking;

/// The output of the task in `h`; pending forever if there is none.
async fn join<T>(h: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match h {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// How soon a batch that found the spool full (block policy) is tried again,
/// besides right after each ack.
const RETRY_FULL: Duration = Duration::from_millis(50);

/// First wait before trying to recover a spool whose writes failed; doubles up
/// to [`RECOVER_MAX`].
const RECOVER_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between recovery attempts.
const RECOVER_MAX: Duration = Duration::from_secs(5);

/// How long shutdown waits for a batch that cannot get into the spool (full
/// under the block policy, or failing) before dropping it, counted.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The batcher's state, owned by its task.
struct Batcher {
    spool: Spool,
    io: BatcherIo,
    cfg: BatchSection,
    fsync: FsyncMode,
    fsync_interval: Duration,
    limits: Limits,
    registry: Registry,
    blocked_total: ferrule_telemetry::Counter,
    write_errors: ferrule_telemetry::Counter,
    /// How long each group commit's fsync took.
    fsync_time: ferrule_telemetry::Histogram,
    builder: Builder,
    /// A cut batch waiting for room (block policy) or for the spool to recover.
    pending: VecDeque<Cut>,
    /// Appended, not durable yet, oldest first.
    unsynced: VecDeque<Unsynced>,
    /// When the current window closes: the batch is cut then. Set by the
    /// first sample after a cut, so an idle agent arms no timer.
    cut_at: Option<Instant>,
    /// When batches appended outside a window's close (cut by size) are synced.
    sync_at: Option<Instant>,
    /// When `pending` is tried again.
    retry_at: Option<Instant>,
    /// While the spool is broken: since when, and when to try recovering next.
    broken_since: Option<Instant>,
    recover_at: Option<Instant>,
    recover_wait: Duration,
    /// The fsync running on a blocking thread.
    syncing: Option<JoinHandle<CompletedSync>>,
    /// Another sync was asked for while one ran.
    sync_again: bool,
    /// Chunks still come in.
    open: bool,
    /// The uplink still reports settles.
    settles_open: bool,
    /// When shutdown began (bounds the wait for room).
    stopping_since: Option<Instant>,
    frame: Vec<u8>,
    /// When a crossing last cut a batch short (see `crossing`).
    last_alert_cut: Option<Instant>,
}

impl Batcher {
    /// Marks the agent unhealthy while nothing old has been acknowledged
    /// (`uplink.unhealthy_after_secs`): an uplink that is down, or an
    /// aggregator that takes nothing, is ridden out by spooling, but past
    /// that time a person should look. Healthy again once the backlog older
    /// than that has drained.
    fn check_unacked(&mut self) {
        let Some(limit) = self.io.unhealthy_after else {
            return;
        };
        let b = self.spool.backlog();
        let age = b.oldest_unacked_wall_ns.map_or(Duration::ZERO, |t| {
            let now = i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            )
            .unwrap_or(i64::MAX);
            Duration::from_nanos(u64::try_from(now.saturating_sub(t)).unwrap_or(0))
        });
        if age > limit {
            self.io.health.set_unready(
                "unacked",
                format!(
                    "nothing acknowledged for {} s (uplink.unhealthy_after_secs {}): {} batches, {} bytes wait in the spool",
                    age.as_secs(),
                    limit.as_secs(),
                    b.batches,
                    b.bytes
                ),
            );
        } else {
            self.io.health.clear("unacked");
        }
    }

    /// Adds a chunk to the batch; cuts it at `max_samples`.
    fn take(&mut self, mut c: Chunk) {
        // A sample that makes an alert fire or resolve leaves now, not when the
        // window closes (see `crossing`).
        // At most one such cut per tenth of a window, so a rule flapping on a noisy
        // signal cannot turn every chunk into its own batch and fsync.
        // A crossing within that gap of the last cut is cut at the gap's end, not
        // left for the window (three phases cross a few ms apart).
        let mut cut_by = None;
        if let Some(x) = &mut self.io.crossings {
            if x.check(&c.series) {
                let now = Instant::now();
                let gap = Duration::from_millis(self.cfg.max_delay_ms / 10);
                match self.last_alert_cut {
                    Some(t) if now < t + gap => cut_by = Some(t + gap),
                    _ => {
                        self.last_alert_cut = Some(now);
                        c.flush = true;
                    }
                }
            }
        }
        let b = &mut self.builder;
        let mut n = 0usize;
        for s in c.series {
            n += s.len();
            // A sensor's first series in the batch is moved in, not copied.
            match b.series.entry(s.sensor()) {
                Entry::Vacant(v) => {
                    v.insert(s);
                }
                Entry::Occupied(mut o) => {
                    let into = o.get_mut();
                    for (t, v, q) in s.iter() {
                        into.push(t, v, q);
                    }
                }
            }
        }
        if let Some((d, k)) = &c.durability {
            // The ticket fires with the last batch holding anything sent before
            // it: this chunk's own, or the newest one not yet durable.
            if n > 0 || b.samples > 0 {
                add_mark(&mut b.marks, d, *k);
            } else if let Some(p) = self.pending.back_mut() {
                add_mark(&mut p.marks, d, *k);
            } else if let Some(u) = self.unsynced.back_mut() {
                add_mark(&mut u.marks, d, *k);
            } else {
                d.mark_durable(*k);
            }
        }
        if n > 0 {
            b.opened.get_or_insert_with(SystemTime::now);
            b.samples += n;
            let per_input = b.inputs.entry(c.input).or_default();
            *per_input = per_input.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            if self.cut_at.is_none() {
                self.cut_at = Some(Instant::now() + Duration::from_millis(self.cfg.max_delay_ms));
            }
        }
        if c.flush {
            // Cut now, or sync now what is cut and waits for its fsync.
            if self.builder.samples > 0 {
                self.cut_at = Some(Instant::now());
            } else if !self.unsynced.is_empty() {
                self.sync_at = Some(Instant::now());
            }
        }
        if let Some(by) = cut_by {
            if self.builder.samples > 0 && self.cut_at.is_none_or(|at| at > by) {
                self.cut_at = Some(by);
                self.last_alert_cut = Some(by);
            }
        }
        let full = self.builder.samples >= self.cfg.max_samples;
        if full && self.cut() {
            self.sync_soon();
        }
    }

    /// Arms the sync of a batch cut outside a window's close (by size, or
    /// after waiting for room), unless one is armed already.
    fn sync_soon(&mut self) {
        if self.fsync == FsyncMode::Interval && self.sync_at.is_none() {
            self.sync_at = Some(Instant::now() + self.fsync_interval);
        }
    }

    /// Cuts the batch and appends it; false if it must wait (the batch waits
    /// in `pending`).
    fn cut(&mut self) -> bool {
        if self.builder.samples == 0 {
            // Tickets with no samples of their own wait for what is unsynced.
            let marks = std::mem::take(&mut self.builder.marks);
            match self.unsynced.back_mut() {
                Some(u) => u.marks.extend(marks),
                None => fire(&marks),
            }
            return true;
        }
        let b = std::mem::take(&mut self.builder);
        let cut = Cut {
            inputs: b.inputs.into_iter().collect(),
            series: b.series.into_values().collect(),
            marks: b.marks,
            opened: b.opened,
        };
        match self.append(cut) {
            Ok(()) => true,
            Err(cut) => {
                self.pending.push_back(cut);
                false
            }
        }
    }

    /// Closes the window: cuts the batch and syncs (under `fsync =
    /// "interval"`, one fsync for the window). With a batch waiting for room,
    /// the window closes once it got in.
    fn close_window(&mut self) {
        if !self.pending.is_empty() || !self.cut() {
            return;
        }
        self.cut_at = None;
        self.sync();
    }

    /// Encodes a batch for the spool's next seq and epoch into `self.frame`.
    fn encode(&mut self, series: Vec<Series>) -> Result<(), (Vec<Series>, String)> {
        let batch = Message::Batch(Batch {
            epoch: self.spool.epoch(),
            seq: self.spool.next_seq(),
            clock_offset_ns: self.io.clock_offset_ns.load(Ordering::Relaxed),
            series,
        });
        self.frame.clear();
        match encode(&batch, &self.limits, &mut self.frame) {
            Ok(()) => Ok(()),
            Err(e) => match batch {
                Message::Batch(b) => Err((b.series, e.to_string())),
                _ => Err((Vec::new(), e.to_string())),
            },
        }
    }

    /// Appends a batch; gives it back if it must wait (spool full, or failing).
    fn append(&mut self, cut: Cut) -> Result<(), Cut> {
        if self.spool.broken().is_some() {
            return Err(cut);
        }
        let Cut {
            inputs,
            series,
            marks,
            opened,
        } = cut;
        let series = match self.encode(series) {
            Ok(()) => Vec::new(),
            Err((_, e)) => {
                // Cannot happen below the batch size limit checked in config; count it.
                tracing::error!(error = %e, "batch does not encode; dropped");
                let counts: Vec<(String, u32)> =
                    inputs.iter().map(|(i, n)| (i.to_string(), *n)).collect();
                count_dropped(&self.registry, "encode_failed", &counts);
                fire(&marks);
                return Ok(());
            }
        };
        // Under `fsync = "interval"` an append only fills a memory buffer (or
        // writes it to the page cache): inline. Under "always" it fsyncs.
        let (spool, frame) = (&mut self.spool, &self.frame);
        let result = if self.fsync == FsyncMode::Always {
            blocking(|| spool.append(&inputs, frame))
        } else {
            spool.append(&inputs, frame)
        };
        match result {
            Ok(seq) => {
                if let Some(tap) = &self.io.live {
                    tap.offer(self.spool.epoch(), seq, &self.frame);
                }
                if self.fsync == FsyncMode::Always {
                    self.healthy();
                    fire(&marks);
                    self.io.traces.spooled(self.spool.epoch(), seq, opened);
                } else {
                    self.unsynced.push_back(Unsynced {
                        seq,
                        inputs,
                        frame: self.frame.clone(),
                        marks,
                        opened,
                    });
                }
                Ok(())
            }
            Err(e) => {
                // The frame can be decoded back: keep the samples for later.
                let series = match decode(&self.frame, &self.limits) {
                    Ok(Some((Message::Batch(b), _))) => b.series,
                    _ => series,
                };
                let cut = Cut {
                    inputs,
                    series,
                    marks,
                    opened,
                };
                match e {
                    SpoolError::Full => {
                        self.blocked_total.inc();
                        self.retry_at = Some(Instant::now() + RETRY_FULL);
                    }
                    e => self.failed(&e),
                }
                Err(cut)
            }
        }
    }

    /// A write failed: log it once per episode (not once per attempt), count
    /// it, and arm the next recovery, waiting longer each time.
    fn failed(&mut self, e: &SpoolError) {
        self.write_errors.inc();
        if self.broken_since.is_none() {
            tracing::error!(error = %e, "spool writes fail; the agent keeps trying to recover by itself");
            self.broken_since = Some(Instant::now());
            self.recover_wait = RECOVER_FIRST;
            self.io
                .health
                .set_unready("spool", format!("spool writes fail: {e}"));
        } else {
            tracing::debug!(error = %e, "spool writes still fail");
            self.recover_wait = (self.recover_wait * 2).min(RECOVER_MAX);
        }
        if self.recover_at.is_none() {
            self.recover_at = Some(Instant::now() + self.recover_wait);
        }
    }

    /// A write and its fsync worked: an episode of failures, if any, is over.
    fn healthy(&mut self) {
        if let Some(since) = self.broken_since.take() {
            tracing::info!(after = ?since.elapsed(), "spool writable again");
            self.recover_wait = RECOVER_FIRST;
            self.io.health.clear("spool");
        }
    }

    /// Tries to bring a broken spool back; on success appends again what the
    /// failure took off the disk, then lets a waiting batch in.
    fn recover(&mut self) {
        self.recover_at = None;
        // A sync in flight holds the old file; let it finish first.
        if self.syncing.is_some() {
            self.recover_at = Some(Instant::now() + RECOVER_FIRST);
            return;
        }
        let spool = &mut self.spool;
        match blocking(|| spool.recover()) {
            Ok(r) => {
                let lost: Vec<Unsynced> = {
                    let keep = self
                        .unsynced
                        .iter()
                        .take_while(|u| u.seq < r.next_seq)
                        .count();
                    self.unsynced.drain(keep..).collect()
                };
                tracing::debug!(epoch = %r.epoch, rewritten = lost.len(), "spool rescanned");
                // They go first in line, in order, ahead of what waits already.
                for u in lost.into_iter().rev() {
                    let series = match decode(&u.frame, &self.limits) {
                        Ok(Some((Message::Batch(b), _))) => b.series,
                        _ => Vec::new(),
                    };
                    self.pending.push_front(Cut {
                        inputs: u.inputs,
                        series,
                        marks: u.marks,
                        opened: u.opened,
                    });
                }
                self.retry(false);
                self.sync();
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Starts making every append so far durable: the fsync runs on a
    /// blocking thread while the batcher goes on taking chunks, and
    /// [`Batcher::synced`] publishes the result. One at a time: a sync asked
    /// for meanwhile starts when the running one ends.
    fn sync(&mut self) {
        self.sync_at = None;
        if self.fsync != FsyncMode::Interval {
            // "always": every append was synced as it was written.
            return;
        }
        if self.syncing.is_some() {
            self.sync_again = true;
            return;
        }
        match self.spool.begin_sync() {
            Ok(Some(job)) => {
                let took = self.fsync_time.clone();
                self.syncing = Some(tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let done = job.run();
                    took.observe_duration(started.elapsed());
                    done
                }));
            }
            Ok(None) => self.durable(),
            Err(SpoolError::Broken(_)) => {}
            Err(e) => self.failed(&e),
        }
    }

    /// Tells the inputs of every batch now durable; a sync that worked ends an
    /// episode of failures.
    fn durable(&mut self) {
        self.healthy();
        let until = self.spool.durable_until();
        while self.unsynced.front().is_some_and(|u| u.seq < until) {
            if let Some(u) = self.unsynced.pop_front() {
                fire(&u.marks);
                self.io.traces.spooled(self.spool.epoch(), u.seq, u.opened);
            }
        }
    }

    /// Takes in a finished fsync.
    fn synced(&mut self, done: Result<CompletedSync, tokio::task::JoinError>) {
        self.syncing = None;
        match done {
            Ok(done) => match self.spool.finish_sync(done) {
                Ok(_) => self.durable(),
                Err(e) => self.failed(&e),
            },
            Err(e) => {
                // The thread died before or during the fsync: try again.
                tracing::error!(error = %e, "spool fsync thread failed");
                self.sync_again = true;
            }
        }
        if std::mem::take(&mut self.sync_again) {
            self.sync();
        }
    }

    /// Waits for the running fsync, if any, and syncs the rest in place: the
    /// last step before stopping.
    async fn sync_now(&mut self) {
        // `synced` may start the one sync asked for meanwhile: wait for it
        // too (no more: a thread that keeps failing must not hold shutdown).
        for _ in 0..2 {
            let Some(h) = self.syncing.take() else { break };
            let done = h.await;
            self.synced(done);
        }
        if self.fsync == FsyncMode::Interval && self.spool.broken().is_none() {
            let spool = &mut self.spool;
            match blocking(|| spool.sync()) {
                Ok(_) => self.durable(),
                Err(e) => self.failed(&e),
            }
        }
    }

    /// Tries the batches waiting for room (or for the spool to recover) again,
    /// in order, first releasing what was acknowledged; then the rest of a
    /// window that closed meanwhile.
    fn retry(&mut self, release: bool) {
        self.retry_at = None;
        if self.pending.is_empty() {
            return;
        }
        if release {
            let spool = &mut self.spool;
            let _ = blocking(|| spool.release());
        }
        while let Some(cut) = self.pending.pop_front() {
            if let Err(cut) = self.append(cut) {
                self.pending.push_front(cut);
                return;
            }
        }
        self.sync_soon();
        if self.cut_at.is_some_and(|at| at <= Instant::now()) {
            self.close_window();
        }
    }

    /// Releases settled batches (`acked`: acknowledged, else dropped), then
    /// lets a blocked batch try the room.
    fn settle(&mut self, seqs: &[Seq], acked: bool) {
        // Bookkeeping, unless a release (fsyncs) is due.
        let spool = &mut self.spool;
        let result = if spool.release_due() {
            blocking(|| spool.settle_as(seqs, acked))
        } else {
            spool.settle_as(seqs, acked)
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "releasing acknowledged batches failed");
        }
        if !self.pending.is_empty() && self.spool.broken().is_none() {
            self.retry(false);
        }
    }

    /// The next timer to wake for: the window's close, a sync, a retry, a
    /// recovery, the end of the shutdown wait.
    fn next_wake(&self) -> Option<Instant> {
        // While a batch waits for room, the window cannot close anyway.
        let cut = self.cut_at.filter(|_| self.pending.is_empty());
        let give_up = self
            .stopping_since
            .filter(|_| !self.pending.is_empty())
            .map(|t| t + SHUTDOWN_WAIT);
        [cut, self.sync_at, self.retry_at, self.recover_at, give_up]
            .into_iter()
            .flatten()
            .min()
    }

    /// Does whatever is due at `now`.
    fn wake(&mut self, now: Instant) {
        if self.recover_at.is_some_and(|at| at <= now) {
            self.recover();
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry(true);
        }
        if self.pending.is_empty() && self.cut_at.is_some_and(|at| at <= now) {
            self.close_window();
        }
        if self.sync_at.is_some_and(|at| at <= now) {
            self.sync();
        }
        if self
            .stopping_since
            .is_some_and(|t| now >= t + SHUTDOWN_WAIT)
        {
            self.give_up();
        }
    }

    /// Shutdown could not wait longer: what is not in the spool is dropped,
    /// counted per input (an MQTT input's broker keeps those messages: their
    /// tickets never fire).
    fn give_up(&mut self) {
        let mut dropped: Vec<Cut> = self.pending.drain(..).collect();
        if self.builder.samples > 0 {
            let b = std::mem::take(&mut self.builder);
            dropped.push(Cut {
                inputs: b.inputs.into_iter().collect(),
                series: Vec::new(),
                marks: Vec::new(),
                opened: b.opened,
            });
        }
        for cut in dropped {
            let counts: Vec<(String, u32)> = cut
                .inputs
                .iter()
                .map(|(i, n)| (i.to_string(), *n))
                .collect();
            let samples: u64 = counts.iter().map(|(_, n)| u64::from(*n)).sum();
            count_dropped(&self.registry, "shutdown_spool_unavailable", &counts);
            tracing::warn!(
                samples,
                "stopping: the spool took no more; samples dropped and counted"
            );
        }
        self.retry_at = None;
        self.recover_at = None;
    }

    fn publish(&self) {
        publish(&self.spool, &self.io.state);
        let b = self.spool.backlog();
        self.io.backlog.send_if_modified(|old| {
            let changed = *old != b;
            *old = b;
            changed
        });
    }

    /// True once nothing is left to cut or append.
    fn drained(&self) -> bool {
        self.pending.is_empty() && self.builder.samples == 0
    }
}

/// Runs the batcher until the chunk channel closes or shutdown.
///
/// Batches are cut in windows: the first sample after a cut opens a window of
/// `batch.max_delay_ms`, and when it closes every input's builder is cut and
/// the batches are synced with one fsync. An input reaching
/// `batch.max_samples` is cut at once and synced within `fsync_interval_ms`.
/// So no sample waits longer than `max_delay_ms` for its batch, and a steady
/// agent wakes for the window and its fsync once per window, not per input.
pub async fn run(
    spool: Spool,
    io: BatcherIo,
    cfg: BatchSection,
    fsync: FsyncMode,
    fsync_interval: Duration,
    registry: Registry,
) {
    let blocked_total = registry.counter(
        "ferrule_agent_spool_full_blocks_total",
        "Times the spool was full and inputs were blocked",
        &[],
    );
    let write_errors = registry.counter(
        "ferrule_agent_spool_write_errors_total",
        "Spool writes, fsyncs and recovery attempts that failed",
        &[],
    );
    let fsync_time = registry.histogram(
        "ferrule_agent_spool_fsync_seconds",
        "Time one fsync of the spool took (one per group commit), seconds",
        &[],
        ferrule_telemetry::Buckets::Latency,
    );
    let mut b = Batcher {
        spool,
        io,
        cfg,
        fsync,
        fsync_interval: fsync_interval.max(Duration::from_millis(1)),
        limits: Limits::default(),
        registry,
        blocked_total,
        write_errors,
        fsync_time,
        builder: Builder::default(),
        pending: VecDeque::new(),
        unsynced: VecDeque::new(),
        cut_at: None,
        sync_at: None,
        retry_at: None,
        broken_since: None,
        recover_at: None,
        recover_wait: RECOVER_FIRST,
        syncing: None,
        sync_again: false,
        open: true,
        settles_open: true,
        stopping_since: None,
        frame: Vec::new(),
        last_alert_cut: None,
    };
    // The oldest unacknowledged batch ages while nothing happens, too.
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let wake = b.next_wake();
        tokio::select! {
            _ = gauges.tick() => {
                b.spool.refresh_gauges();
                b.check_unacked();
            }
            chunk = b.io.chunks.recv(), if b.pending.is_empty() && b.open => match chunk {
                Some(c) => b.take(c),
                None => {
                    b.open = false;
                    b.stopping_since.get_or_insert_with(Instant::now);
                    b.cut_at = Some(Instant::now());
                }
            },
            settle = b.io.settles.recv(), if b.settles_open => match settle {
                Some(Settle::Done(seqs)) => b.settle(&seqs, true),
                Some(Settle::Dropped(seqs)) => b.settle(&seqs, false),
                Some(Settle::Rescan) => {
                    tracing::warn!("a spool record read back corrupt; rescanning the spool");
                    b.recover();
                }
                None => b.settles_open = false,
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                b.wake(Instant::now());
            },
            done = join(&mut b.syncing), if b.syncing.is_some() => b.synced(done),
            _ = b.io.shutdown.changed(), if b.open => {
                if *b.io.shutdown.borrow() {
                    b.open = false;
                    b.stopping_since.get_or_insert_with(Instant::now);
                    b.io.chunks.close();
                    b.cut_at = Some(Instant::now());
                }
            },
        }
        b.publish();
        if !b.open && b.drained() {
            // Everything cut and appended: make it durable and stop.
            b.sync_now().await;
            b.publish();
            if b.spool.broken().is_some() && !b.unsynced.is_empty() {
                // Appended but never durable, and the spool cannot say more.
                for u in b.unsynced.drain(..) {
                    let counts: Vec<(String, u32)> =
                        u.inputs.iter().map(|(i, n)| (i.to_string(), *n)).collect();
                    count_dropped(&b.registry, "shutdown_spool_unavailable", &counts);
                }
            }
            // Keep settling acks while the uplink drains, until it lets go.
            while let Some(settle) = b.io.settles.recv().await {
                let (seqs, acked) = match settle {
                    Settle::Done(seqs) => (seqs, true),
                    Settle::Dropped(seqs) => (seqs, false),
                    Settle::Rescan => continue,
                };
                let spool = &mut b.spool;
                let _ = blocking(|| spool.settle_as(&seqs, acked));
                b.publish();
            }
            let spool = &mut b.spool;
            if let Err(e) = blocking(|| spool.release()) {
                tracing::warn!(error = %e, "releasing acknowledged batches at shutdown failed");
            }
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{FullPolicy, SpoolSection};
    use crate::spool::SpoolReader;
    use ferrule_wire::Quality;

    struct Rig {
        chunks: mpsc::Sender<Chunk>,
        settles: mpsc::UnboundedSender<Settle>,
        state: watch::Receiver<SpoolState>,
        backlog: watch::Receiver<SpoolBacklog>,
        stop: watch::Sender<bool>,
        reader: SpoolReader,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    fn spool_cfg(dir: &std::path::Path) -> SpoolSection {
        SpoolSection {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 30,
            full_policy: FullPolicy::Block,
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 20,
            segment_bytes: 1 << 20,
        }
    }

    fn rig(max_samples: usize, max_delay_ms: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let (spool, reader) = Spool::open(&spool_cfg(dir.path()), &registry).unwrap();
        let (chunk_tx, chunk_rx) = mpsc::channel(16);
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(initial_state(&spool));
        let (backlog_tx, backlog_rx) = watch::channel(spool.backlog());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            spool,
            BatcherIo {
                chunks: chunk_rx,
                settles: settle_rx,
                state: state_tx,
                backlog: backlog_tx,
                clock_offset_ns: Arc::new(AtomicI64::new(0)),
                shutdown: stop_rx,
                health: Arc::default(),
                crossings: None,
                live: None,
                unhealthy_after: None,
                traces: crate::trace::Traces::disabled(),
            },
            BatchSection {
                max_samples,
                max_delay_ms,
            },
            FsyncMode::Interval,
            Duration::from_millis(20),
            registry,
        ));
        Rig {
            chunks: chunk_tx,
            settles: settle_tx,
            state: state_rx,
            backlog: backlog_rx,
            stop: stop_tx,
            reader,
            task,
            _dir: dir,
        }
    }

    fn chunk(input: &str, sensor: u32, samples: usize) -> Chunk {
        let mut s = Series::new(SensorId(sensor));
        for i in 0..samples {
            s.push(i as i64 * 1_000_000, i as f64, Quality::Good);
        }
        Chunk::new(Arc::from(input), vec![s])
    }

    /// Waits until the spool is durable below `seq`; the elapsed time.
    async fn durable(rig: &mut Rig, seq: u64, within: Duration) -> Duration {
        let t0 = Instant::now();
        tokio::time::timeout(within, rig.state.wait_for(|s| s.durable_until >= Seq(seq)))
            .await
            .unwrap_or_else(|_| panic!("not durable below {seq} within {within:?}"))
            .unwrap();
        t0.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_window_takes_every_input_into_one_batch() {
        let mut r = rig(10_000, 300);
        r.chunks.send(chunk("modbus", 1, 5)).await.unwrap();
        r.chunks.send(chunk("mqtt", 2, 3)).await.unwrap();
        r.chunks.send(chunk("mqtt", 3, 2)).await.unwrap();
        // Nothing is cut before the window closes...
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(r.state.borrow().durable_until, Seq(1));
        // ...then one batch holds both inputs, counted per input.
        durable(&mut r, 2, Duration::from_secs(5)).await;
        let got = r.reader.read(Seq(1), 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].inputs,
            vec![("modbus".to_string(), 5), ("mqtt".to_string(), 5)]
        );
        let Ok(Some((Message::Batch(b), _))) =
            ferrule_wire::decode(&got[0].frame, &Limits::default())
        else {
            panic!("the spooled frame is not a batch");
        };
        let mut sensors: Vec<(u32, usize)> =
            b.series.iter().map(|s| (s.sensor().0, s.len())).collect();
        sensors.sort();
        assert_eq!(sensors, vec![(1, 5), (2, 3), (3, 2)]);
        // An idle batcher keeps nothing pending: a new sample opens a new window.
        r.chunks.send(chunk("mqtt", 2, 1)).await.unwrap();
        let waited = durable(&mut r, 3, Duration::from_secs(5)).await;
        assert!(
            waited >= Duration::from_millis(250),
            "cut after {waited:?}, before the window closed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_full_batch_is_cut_at_once_and_synced_within_the_fsync_interval() {
        let mut r = rig(100, 60_000);
        r.chunks.send(chunk("line", 1, 150)).await.unwrap();
        // The window is a minute long; the size cut does not wait for it.
        durable(&mut r, 2, Duration::from_secs(5)).await;
        let got = r.reader.read(Seq(1), 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].samples(), 150);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn shutdown_cuts_and_syncs_what_is_left() {
        let mut r = rig(10_000, 60_000);
        r.chunks.send(chunk("a", 1, 7)).await.unwrap();
        r.chunks.send(chunk("b", 2, 4)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.stop.send(true).unwrap();
        // The window is a minute long: shutdown cuts it short, and syncs.
        durable(&mut r, 2, Duration::from_secs(5)).await;
        let got = r.reader.read(Seq(1), 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].samples(), 11);
        // What the uplink reports: one batch unacknowledged, then none.
        let b = *r.backlog.borrow();
        assert_eq!(b.batches, 1);
        assert!(b.bytes > 0 && b.oldest_unacked_wall_ns.is_some(), "{b:?}");
        // The batcher settles acks until the uplink lets go, releases what was
        // acknowledged from disk, then stops.
        r.settles.send(Settle::Done(vec![Seq(1)])).unwrap();
        drop(r.settles);
        tokio::time::timeout(Duration::from_secs(5), r.task)
            .await
            .unwrap()
            .unwrap();
        assert!(r.reader.read(Seq(1), 10).unwrap().is_empty());
        assert_eq!(*r.backlog.borrow(), SpoolBacklog::default(), "drained");
    }
}
