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

use crate::config::{BatchSection, FsyncMode};
use crate::spool::{count_dropped, Spool, SpoolError};
use ferrule_disklog::CompletedSync;
use ferrule_telemetry::Registry;
use ferrule_wire::{encode, Batch, Epoch, Limits, Message, SensorId, Seq, Series};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Samples from one input.
#[derive(Debug)]
pub struct Chunk {
    /// The input's name.
    pub input: Arc<str>,
    /// One series per sensor.
    pub series: Vec<Series>,
}

/// What the uplink reports back about sent batches.
#[derive(Debug)]
pub enum Settle {
    /// Acknowledged or refused for good: either way, release them.
    Done(Vec<Seq>),
}

/// What the uplink needs to know about the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolState {
    /// The epoch of every batch.
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
}

/// A batch's samples per input.
type Inputs = Vec<(Arc<str>, u32)>;

/// Channels and shared state around the batcher.
pub struct BatcherIo {
    /// Chunks from the inputs.
    pub chunks: mpsc::Receiver<Chunk>,
    /// Settled seqs from the uplink.
    pub settles: mpsc::UnboundedReceiver<Settle>,
    /// Where the spool's state is published.
    pub state: watch::Sender<SpoolState>,
    /// The clock offset estimate, nanoseconds, kept by the uplink.
    pub clock_offset_ns: Arc<AtomicI64>,
    /// Flips to true on shutdown: flush, sync, stop.
    pub shutdown: watch::Receiver<bool>,
}

fn publish(spool: &Spool, tx: &watch::Sender<SpoolState>) {
    let s = SpoolState {
        epoch: spool.epoch(),
        durable_until: spool.durable_until(),
        first_unacked: spool.first_unacked(),
    };
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

/// Runs `f` off the async worker if the runtime can hand the worker over
/// (multi-threaded), else inline. For work that fsyncs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

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
    builder: Builder,
    /// A cut batch waiting for room (block policy).
    pending: Option<(Inputs, Vec<Series>)>,
    /// When the current window closes: the batch is cut then. Set by the
    /// first sample after a cut, so an idle agent arms no timer.
    cut_at: Option<Instant>,
    /// When batches appended outside a window's close (cut by size) are synced.
    sync_at: Option<Instant>,
    /// When `pending` is tried again.
    retry_at: Option<Instant>,
    /// The fsync running on a blocking thread.
    syncing: Option<JoinHandle<CompletedSync>>,
    /// Another sync was asked for while one ran.
    sync_again: bool,
    /// Chunks still come in.
    open: bool,
    frame: Vec<u8>,
}

impl Batcher {
    /// Adds a chunk to the batch; cuts it at `max_samples`.
    fn take(&mut self, c: Chunk) {
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
        if n == 0 {
            return;
        }
        b.samples += n;
        let per_input = b.inputs.entry(c.input).or_default();
        *per_input = per_input.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        let full = b.samples >= self.cfg.max_samples;
        if self.cut_at.is_none() {
            self.cut_at = Some(Instant::now() + Duration::from_millis(self.cfg.max_delay_ms));
        }
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

    /// Cuts the batch and appends it; false if the spool is full (the batch
    /// waits in `pending`).
    fn cut(&mut self) -> bool {
        if self.builder.samples == 0 {
            return true;
        }
        let b = std::mem::take(&mut self.builder);
        let series: Vec<Series> = b.series.into_values().collect();
        let inputs: Inputs = b.inputs.into_iter().collect();
        match self.append(&inputs, series) {
            Ok(()) => true,
            Err(series) => {
                self.blocked_total.inc();
                self.pending = Some((inputs, series));
                self.retry_at = Some(Instant::now() + RETRY_FULL);
                false
            }
        }
    }

    /// Closes the window: cuts the batch and syncs (under `fsync =
    /// "interval"`, one fsync for the window). With a batch waiting for room,
    /// the window closes once it got in.
    fn close_window(&mut self) {
        if self.pending.is_some() || !self.cut() {
            return;
        }
        self.cut_at = None;
        self.sync();
    }

    /// Appends a batch; gives the series back if it must wait (spool full or
    /// a write error).
    fn append(
        &mut self,
        inputs: &[(Arc<str>, u32)],
        series: Vec<Series>,
    ) -> Result<(), Vec<Series>> {
        let batch = Message::Batch(Batch {
            epoch: self.spool.epoch(),
            seq: self.spool.next_seq(),
            clock_offset_ns: self.io.clock_offset_ns.load(Ordering::Relaxed),
            series,
        });
        let give_back = |m: Message| match m {
            Message::Batch(b) => b.series,
            _ => Vec::new(),
        };
        self.frame.clear();
        if let Err(e) = encode(&batch, &self.limits, &mut self.frame) {
            // Cannot happen below the batch size limit checked in config; count it.
            tracing::error!(error = %e, "batch does not encode; dropped");
            let inputs: Vec<(String, u32)> =
                inputs.iter().map(|(i, n)| (i.to_string(), *n)).collect();
            count_dropped(&self.registry, "encode_failed", &inputs);
            return Ok(());
        }
        // Under `fsync = "interval"` an append only fills a memory buffer (or
        // writes it to the page cache): inline. Under "always" it fsyncs.
        let (spool, frame) = (&mut self.spool, &self.frame);
        let result = if self.fsync == FsyncMode::Always {
            blocking(|| spool.append(inputs, frame))
        } else {
            spool.append(inputs, frame)
        };
        match result {
            Ok(_) => Ok(()),
            Err(SpoolError::Full) => Err(give_back(batch)),
            Err(e) => {
                self.write_errors.inc();
                tracing::error!(error = %e, "spool write failed; retrying");
                Err(give_back(batch))
            }
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
                self.syncing = Some(tokio::task::spawn_blocking(move || job.run()));
            }
            Ok(None) => {}
            Err(e) => {
                self.write_errors.inc();
                tracing::error!(error = %e, "spool fsync failed");
            }
        }
    }

    /// Takes in a finished fsync.
    fn synced(&mut self, done: Result<CompletedSync, tokio::task::JoinError>) {
        self.syncing = None;
        let result = match done {
            Ok(done) => self.spool.finish_sync(done).map(|_| ()),
            Err(e) => {
                // The thread died before or during the fsync: try again.
                tracing::error!(error = %e, "spool fsync thread failed");
                self.sync_again = true;
                Ok(())
            }
        };
        if let Err(e) = result {
            self.write_errors.inc();
            tracing::error!(error = %e, "spool fsync failed");
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
        if self.fsync == FsyncMode::Interval {
            let spool = &mut self.spool;
            if let Err(e) = blocking(|| spool.sync()) {
                self.write_errors.inc();
                tracing::error!(error = %e, "final spool fsync failed");
            }
        }
    }

    /// Tries the batch that found the spool full again, first releasing what
    /// was acknowledged; then the rest of a window that closed meanwhile.
    fn retry(&mut self, release: bool) {
        let Some((inputs, series)) = self.pending.take() else {
            self.retry_at = None;
            return;
        };
        if release {
            let spool = &mut self.spool;
            let _ = blocking(|| spool.release());
        }
        match self.append(&inputs, series) {
            Ok(()) => {
                self.retry_at = None;
                self.sync_soon();
                if self.cut_at.is_some_and(|at| at <= Instant::now()) {
                    self.close_window();
                }
            }
            Err(series) => {
                self.pending = Some((inputs, series));
                self.retry_at = Some(Instant::now() + RETRY_FULL);
            }
        }
    }

    /// Releases acknowledged batches, then lets a blocked batch try the room.
    fn settle(&mut self, seqs: &[Seq]) {
        // Bookkeeping, unless a release (fsyncs) is due.
        let spool = &mut self.spool;
        let result = if spool.release_due() {
            blocking(|| spool.settle(seqs))
        } else {
            spool.settle(seqs)
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "releasing acknowledged batches failed");
        }
        if self.pending.is_some() {
            self.retry(false);
        }
    }

    /// The next timer to wake for: the window's close, a sync, a retry.
    fn next_wake(&self) -> Option<Instant> {
        // While a batch waits for room, the window cannot close anyway.
        let cut = self.cut_at.filter(|_| self.pending.is_none());
        [cut, self.sync_at, self.retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Does whatever is due at `now`.
    fn wake(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry(true);
        }
        if self.pending.is_none() && self.cut_at.is_some_and(|at| at <= now) {
            self.close_window();
        }
        if self.sync_at.is_some_and(|at| at <= now) {
            self.sync();
        }
    }

    fn publish(&self) {
        publish(&self.spool, &self.io.state);
    }

    /// True once nothing is left to cut or append.
    fn drained(&self) -> bool {
        self.pending.is_none() && self.builder.samples == 0
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
        "Spool writes that failed",
        &[],
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
        builder: Builder::default(),
        pending: None,
        cut_at: None,
        sync_at: None,
        retry_at: None,
        syncing: None,
        sync_again: false,
        open: true,
        frame: Vec::new(),
    };
    loop {
        let wake = b.next_wake();
        tokio::select! {
            chunk = b.io.chunks.recv(), if b.pending.is_none() && b.open => match chunk {
                Some(c) => b.take(c),
                None => {
                    b.open = false;
                    b.cut_at = Some(Instant::now());
                }
            },
            settle = b.io.settles.recv() => {
                if let Some(Settle::Done(seqs)) = settle {
                    b.settle(&seqs);
                }
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                b.wake(Instant::now());
            },
            done = join(&mut b.syncing), if b.syncing.is_some() => b.synced(done),
            _ = b.io.shutdown.changed(), if b.open => {
                if *b.io.shutdown.borrow() {
                    b.open = false;
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
            // Keep settling acks while the uplink drains, until it lets go.
            while let Some(Settle::Done(seqs)) = b.io.settles.recv().await {
                let spool = &mut b.spool;
                let _ = blocking(|| spool.settle(&seqs));
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
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            spool,
            BatcherIo {
                chunks: chunk_rx,
                settles: settle_rx,
                state: state_tx,
                clock_offset_ns: Arc::new(AtomicI64::new(0)),
                shutdown: stop_rx,
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
        Chunk {
            input: Arc::from(input),
            series: vec![s],
        }
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
        // The batcher settles acks until the uplink lets go, releases what was
        // acknowledged from disk, then stops.
        r.settles.send(Settle::Done(vec![Seq(1)])).unwrap();
        drop(r.settles);
        tokio::time::timeout(Duration::from_secs(5), r.task)
            .await
            .unwrap()
            .unwrap();
        assert!(r.reader.read(Seq(1), 10).unwrap().is_empty());
    }
}
