//! The sink: where batches become durable before they are acknowledged.
//!
//! Ingest sessions submit [`CommitRequest`]s through a bounded queue; one
//! committer owns the durable store and reports each request's outcome on the
//! session's reply channel. This module holds the embedded implementation (the
//! local segmented log, group-committed: append every queued batch, fsync once,
//! then report all of them durable); the Kafka sink plugs into the same requests.
//!
//! The committer also owns the dedupe ledger: every (agent, epoch, seq) it has made
//! durable, rebuilt from the log at start. A retransmit it can see is reported
//! [`CommitOutcome::Duplicate`] (already durable) and never written twice.

use crate::ledger::{Ledger, LedgerKey};
use ferrule_disklog::{FsyncPolicy, Log, Offset, Options};
use ferrule_telemetry::{Buckets, Counter, Gauge, Histogram, Registry};
use ferrule_wire::record::decode_record_header;
use ferrule_wire::{Epoch, Seq};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// A batch to make durable.
#[derive(Debug)]
pub struct CommitRequest {
    /// The dedupe key.
    pub key: LedgerKey,
    /// The encoded record.
    pub record: Vec<u8>,
    /// Samples in the record (for counters).
    pub samples: u32,
    /// Where to report the outcome.
    pub reply: mpsc::UnboundedSender<CommitDone>,
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitDone {
    /// The batch's epoch.
    pub epoch: Epoch,
    /// The batch.
    pub seq: Seq,
    /// What happened.
    pub outcome: CommitOutcome,
    /// Record bytes the request took in the sink's queue.
    pub bytes: u64,
}

/// What the sink did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Durable now.
    Committed,
    /// Was durable already (a retransmit); not written again.
    Duplicate,
    /// Not durable; the agent keeps it and sends it again.
    Failed(String),
}

pub use ferrule_telemetry::Health;

/// The counters every sink keeps, whatever its store.
#[derive(Debug, Clone)]
pub struct SinkCounters {
    /// Batches made durable.
    pub committed_batches: Counter,
    /// Samples made durable.
    pub committed_samples: Counter,
    /// Retransmits recognised as durable already and not written again.
    pub duplicates: Counter,
    /// Bytes submitted and not yet answered.
    pub queued: Gauge,
    /// Ranges the dedupe ledger holds.
    pub ledger_ranges: Gauge,
    /// Ranges the dedupe ledger forgot to stay within its bounds.
    pub ledger_forgotten: Counter,
    registry: Registry,
}

const COMMIT_FAILURES: &str = "ferrule_aggregator_commit_failures_total";
const COMMIT_FAILURES_HELP: &str =
    "Batches the sink failed to make durable (the agent keeps and resends them), by reason";

/// Every reason a commit fails for (the embedded log's, then Kafka's),
/// published at 0 from the start so `rate()` and alerts have a series before
/// the first failure.
pub const COMMIT_FAILURE_REASONS: &[&str] = &[
    "embedded_log",
    "bad_record",
    "authorization",
    "delivery_error",
    "message_timeout",
    "message_too_large",
    "unknown_topic",
];

impl SinkCounters {
    /// Registers the sink counters.
    pub fn new(registry: &Registry) -> Self {
        registry.declare_counters(
            COMMIT_FAILURES,
            COMMIT_FAILURES_HELP,
            &[],
            "reason",
            COMMIT_FAILURE_REASONS,
        );
        Self {
            committed_batches: registry.counter(
                "ferrule_aggregator_committed_batches_total",
                "Batches made durable",
                &[],
            ),
            committed_samples: registry.counter(
                "ferrule_aggregator_committed_samples_total",
                "Samples made durable",
                &[],
            ),
            duplicates: registry.counter(
                "ferrule_aggregator_duplicates_dropped_total",
                "Retransmitted batches already durable, not written again",
                &[],
            ),
            queued: registry.gauge(
                "ferrule_aggregator_sink_queued_bytes",
                "Bytes waiting for the sink",
                &[],
            ),
            ledger_ranges: registry.gauge(
                "ferrule_aggregator_dedupe_ranges",
                "Ranges of (agent, epoch, seq) the dedupe ledger holds (bounded by [dedupe] max_ranges)",
                &[],
            ),
            ledger_forgotten: registry.counter(
                "ferrule_aggregator_dedupe_forgotten_ranges_total",
                "Ranges the dedupe ledger forgot to stay within its bounds (a batch resent from them is written again, a duplicate)",
                &[],
            ),
            registry: registry.clone(),
        }
    }

    /// Counts a batch the sink failed to make durable, by reason (one of
    /// [`COMMIT_FAILURE_REASONS`]).
    pub fn failure(&self, reason: &str) {
        self.registry
            .counter(COMMIT_FAILURES, COMMIT_FAILURES_HELP, &[("reason", reason)])
            .inc();
    }

    /// Publishes the ledger's size; `reported` is what was counted as forgotten
    /// so far (updated).
    pub fn ledger(&self, ledger: &Ledger, reported: &mut u64) {
        self.ledger_ranges
            .set(i64::try_from(ledger.ranges()).unwrap_or(i64::MAX));
        let f = ledger.forgotten_ranges();
        self.ledger_forgotten.add(f.saturating_sub(*reported));
        *reported = f;
    }

    /// Counts a durable batch of `samples` samples.
    pub fn committed(&self, samples: u32) {
        self.committed_batches.inc();
        self.committed_samples.add(u64::from(samples));
    }
}

/// The handle sessions submit through. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: mpsc::Sender<CommitRequest>,
    queued_bytes: Arc<AtomicU64>,
    high_water_bytes: u64,
    health: Arc<Health>,
    flow: Arc<std::sync::Mutex<CreditFlow>>,
}

/// Whether credit flows to the agents: since when the sink has held it back
/// (its queue over the high-water mark, or failing) without a break. A sink
/// that is only behind is reachable, yet an aggregator that grants no credit
/// for long takes no work, so a load balancer should send agents elsewhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct CreditFlow {
    since: Option<Instant>,
}

impl CreditFlow {
    /// Takes in whether credit is withheld at `now`.
    pub fn observe(&mut self, now: Instant, withheld: bool) {
        if withheld {
            self.since.get_or_insert(now);
        } else {
            self.since = None;
        }
    }

    /// `Err` with the reason once credit has been withheld for `limit` or more
    /// without a break (never with a zero `limit`).
    pub fn check(&self, now: Instant, limit: Duration) -> Result<(), String> {
        match self.since {
            Some(since) if !limit.is_zero() && now.saturating_duration_since(since) >= limit => {
                Err(format!(
                    "no credit granted for {:.0} s: the sink is behind (its queue is over its high-water mark) or failing",
                    now.saturating_duration_since(since).as_secs_f64()
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Room for one request in a [`Sink`]'s queue (see [`Sink::reserve`]).
pub struct SinkPermit<'a> {
    sink: &'a Sink,
    permit: mpsc::Permit<'a, CommitRequest>,
}

impl SinkPermit<'_> {
    /// Queues the request.
    pub fn send(self, req: CommitRequest) {
        self.sink
            .queued_bytes
            .fetch_add(req.record.len() as u64, Ordering::Relaxed);
        self.permit.send(req);
    }
}

/// The backend's side of a [`Sink`]: requests to commit, and the shared state it
/// keeps current.
#[derive(Debug)]
pub struct SinkBackend {
    /// Requests from the sessions.
    pub rx: mpsc::Receiver<CommitRequest>,
    /// Bytes submitted and not yet answered.
    pub queued_bytes: Arc<AtomicU64>,
    /// Readiness.
    pub health: Arc<Health>,
}

impl SinkBackend {
    /// Records that `bytes` of requests were answered.
    pub fn answered(&self, bytes: u64) -> u64 {
        self.queued_bytes
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes)
    }
}

impl Sink {
    /// A sink whose queue holds `capacity` requests; credit is withheld above
    /// `high_water_bytes` outstanding.
    pub fn new(capacity: usize, high_water_bytes: u64) -> (Sink, SinkBackend) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let health = Arc::new(Health::default());
        (
            Sink {
                tx,
                queued_bytes: queued_bytes.clone(),
                high_water_bytes,
                health: health.clone(),
                flow: Arc::default(),
            },
            SinkBackend {
                rx,
                queued_bytes,
                health,
            },
        )
    }

    /// Waits for room in the queue; the permit then takes one request without
    /// waiting. Lets a session wait for the sink inside its `select!`, its timers
    /// running, instead of blocking on a full queue. `None` once the sink has
    /// stopped.
    pub async fn reserve(&self) -> Option<SinkPermit<'_>> {
        let permit = self.tx.reserve().await.ok()?;
        Some(SinkPermit { sink: self, permit })
    }

    /// True when the sink is behind enough, or failing, that credit should be withheld.
    pub fn under_pressure(&self) -> bool {
        self.queued_bytes.load(Ordering::Relaxed) > self.high_water_bytes || !self.health.is_ok()
    }

    /// Whether the sink is reachable and working (its backend's own causes).
    pub fn health(&self) -> Result<(), String> {
        self.health.check()
    }

    /// Samples whether credit is withheld now, for [`Sink::ready`]; called
    /// periodically.
    pub fn watch_credit(&self, now: Instant) {
        let withheld = self.under_pressure();
        self.flow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(now, withheld);
    }

    /// Readiness, for `/readyz`: the sink is reachable and working, and credit
    /// has not been withheld for `stall` or more.
    pub fn ready(&self, now: Instant, stall: Duration) -> Result<(), String> {
        self.health.check()?;
        self.flow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(now, stall)
    }
}

/// Settings of the embedded committer.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Log directory.
    pub dir: PathBuf,
    /// Segment size, bytes.
    pub segment_bytes: u64,
    /// Retention by total size.
    pub max_total_bytes: Option<u64>,
    /// Retention by age.
    pub max_age: Option<Duration>,
    /// Most requests per group commit.
    pub group_max: usize,
    /// Queue bytes above which credit is withheld.
    pub high_water_bytes: u64,
    /// What the dedupe ledger may remember.
    pub dedupe: crate::ledger::LedgerBounds,
}

/// The running embedded committer: its handle and its thread.
pub struct Embedded {
    sink: Sink,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Name of the file where the committer keeps counters that outlive restarts.
pub const STATS_FILE: &str = "stats.json";
/// Subdirectory of the data directory holding the log's segments.
pub const LOG_SUBDIR: &str = "log";

struct Counters {
    sink: SinkCounters,
    group_commits: Counter,
    fsync: Histogram,
    log_bytes: Gauge,
    retention_deleted: Counter,
}

impl Counters {
    fn new(registry: &Registry) -> Self {
        Self {
            sink: SinkCounters::new(registry),
            group_commits: registry.counter(
                "ferrule_aggregator_group_commits_total",
                "fsyncs of the embedded log",
                &[],
            ),
            fsync: registry.histogram(
                "ferrule_aggregator_fsync_seconds",
                "Time one fsync of the embedded log took (one per group commit), seconds",
                &[],
                Buckets::Latency,
            ),
            log_bytes: registry.gauge(
                "ferrule_aggregator_log_bytes",
                "Size of the embedded log",
                &[],
            ),
            retention_deleted: registry.counter(
                "ferrule_aggregator_retention_deleted_records_total",
                "Records deleted from the embedded log by retention",
                &[],
            ),
        }
    }
}

impl Embedded {
    /// Opens (recovering) the log under `opts.dir`, rebuilds the dedupe ledger and
    /// starts the committer thread.
    pub fn start(opts: EmbeddedOptions, registry: &Registry) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&opts.dir)?;
        let mut log_opts = Options::default();
        log_opts.segment_bytes = opts.segment_bytes;
        log_opts.fsync = FsyncPolicy::Batch;
        log_opts.max_total_bytes = opts.max_total_bytes;
        log_opts.max_age = opts.max_age;
        let log_dir = opts.dir.join(LOG_SUBDIR);
        let (log, recovery) = Log::open(&log_dir, log_opts)?;
        if !recovery.is_clean() {
            tracing::warn!(?recovery, dir = %log_dir.display(), "embedded log recovered from damage");
        }
        let started = Instant::now();
        let mut ledger = Ledger::load_stats(&opts.dir.join(STATS_FILE), opts.dedupe);
        let rebuilt = rebuild_ledger(&log, &mut ledger)?;
        tracing::info!(
            records = rebuilt,
            agents = ledger.agent_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            dir = %log_dir.display(),
            "embedded log open"
        );
        let counters = Counters::new(registry);
        let (sink, backend) = Sink::new(opts.group_max.max(1) * 4, opts.high_water_bytes);
        let stats_path = opts.dir.join(STATS_FILE);
        let group_max = opts.group_max.max(1);
        let thread = std::thread::Builder::new()
            .name("ferrule-commit".into())
            .spawn(move || run(log, ledger, backend, group_max, counters, stats_path))?;
        Ok(Self {
            sink,
            thread: Some(thread),
        })
    }

    /// The handle sessions submit through.
    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    /// Waits for the committer to finish what was queued. Every [`Sink`] clone must
    /// be dropped first (the queue closing is what stops the thread).
    pub fn join(mut self) {
        drop(self.sink);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rebuild_ledger(log: &Log, ledger: &mut Ledger) -> anyhow::Result<u64> {
    rebuild_ledger_from(log, ledger, Offset(0))
}

/// Adds every record from `from` on to the ledger; how many it read.
fn rebuild_ledger_from(log: &Log, ledger: &mut Ledger, from: Offset) -> anyhow::Result<u64> {
    let reader = log.reader();
    let mut from = from;
    let mut n = 0u64;
    loop {
        let recs = reader.read_records(from, 4096, 64 << 20)?;
        let Some(last) = recs.last() else { break };
        from = Offset(last.offset.0 + 1);
        for r in &recs {
            match decode_record_header(&r.payload) {
                Ok(h) => {
                    ledger.insert(&LedgerKey::new(&h.site, &h.agent, h.epoch, h.seq));
                    n += 1;
                }
                Err(e) => {
                    tracing::warn!(offset = r.offset.0, error = %e, "undecodable record in embedded log")
                }
            }
        }
    }
    Ok(n)
}

/// Why the log takes no writes, and when to try again.
struct Broken {
    since: Instant,
    cause: String,
    next_try: Instant,
    wait: Duration,
}

/// First wait before trying to recover a log whose writes failed; doubles up to
/// [`RECOVER_MAX`].
const RECOVER_FIRST: Duration = Duration::from_millis(250);
const RECOVER_MAX: Duration = Duration::from_secs(5);
/// Bytes written (and removed) to check that the disk takes writes again.
const PROBE_BYTES: usize = 1 << 20;

/// Waits for the next request, at most until `until`. `Err(())` once the queue
/// is closed. (The queue is tokio's; this thread is not async.)
fn recv_until(
    rx: &mut mpsc::Receiver<CommitRequest>,
    until: Instant,
) -> Result<Option<CommitRequest>, ()> {
    loop {
        match rx.try_recv() {
            Ok(r) => return Ok(Some(r)),
            Err(mpsc::error::TryRecvError::Disconnected) => return Err(()),
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        let now = Instant::now();
        if now >= until {
            return Ok(None);
        }
        // The committer's own thread, not an executor's: parking it is fine.
        std::thread::park_timeout((until - now).min(Duration::from_millis(20)));
    }
}

/// Tries to bring the log back after a failed write: retention frees what it
/// may (the log itself may have filled the disk), the disk must take a probe
/// write and fsync, then the log is cut back to what was durable and rescanned.
fn try_recover(log: &mut Log, dir: &Path) -> anyhow::Result<()> {
    if let Err(e) = log.enforce_retention(SystemTime::now()) {
        tracing::debug!(error = %e, "retention while recovering failed");
    }
    let probe = dir.join("probe.tmp");
    let result = (|| -> std::io::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    result?;
    // Records written after the last good fsync were reported failed, so they
    // are not in the ledger and the agents resend them: kept, they would be
    // stored twice. Nor can they be trusted: after a failed fsync they may live
    // only in the page cache (a retried fsync can falsely succeed). So they are
    // cut, and each resend is stored exactly once. (Explicitly, not through
    // `reopen`'s poisoned check: an append can fail without poisoning the log,
    // after earlier batches of its group were written.)
    let rec = log.truncate_to_durable()?;
    if rec.cut_records > 0 {
        tracing::info!(
            records = rec.cut_records,
            bytes = rec.cut_bytes,
            "cut batches written after the last good fsync (never acknowledged; the agents resend them)"
        );
    }
    if !rec.is_clean() {
        tracing::warn!(recovery = ?rec, "embedded log recovered from damage");
    }
    Ok(())
}

fn run(
    mut log: Log,
    mut ledger: Ledger,
    mut backend: SinkBackend,
    group_max: usize,
    c: Counters,
    stats_path: PathBuf,
) {
    let dir = stats_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut last_housekeeping = Instant::now();
    let mut group: Vec<CommitRequest> = Vec::with_capacity(group_max);
    let mut broken: Option<Broken> = None;
    let mut forgotten = 0u64;
    loop {
        // While broken, wake on a timer too: no request may come (credit is
        // withheld while unready), and the log must recover by itself.
        let first = match &broken {
            None => match backend.rx.blocking_recv() {
                Some(r) => Some(r),
                None => break,
            },
            Some(b) => match recv_until(&mut backend.rx, b.next_try) {
                Ok(r) => r,
                Err(()) => break,
            },
        };
        if let Some(b) = &mut broken {
            if Instant::now() >= b.next_try {
                match try_recover(&mut log, &dir) {
                    Ok(()) => {
                        tracing::info!(after = ?b.since.elapsed(), was = %b.cause, "embedded log writable again");
                        broken = None;
                        backend.health.clear("embedded_log");
                    }
                    Err(e) => {
                        b.wait = (b.wait * 2).min(RECOVER_MAX);
                        b.next_try = Instant::now() + b.wait;
                        tracing::debug!(error = %format!("{e:#}"), "embedded log still failing");
                    }
                }
            }
        }
        let Some(first) = first else { continue };
        group.push(first);
        while group.len() < group_max {
            match backend.rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        // (request, offset) of each batch appended.
        let mut written: Vec<(usize, Offset)> = Vec::with_capacity(group.len());
        let mut dups = Vec::new();
        // (copy, original): copies of a batch written earlier in this group share
        // its fate (durable only if its fsync works).
        let mut same_group: Vec<(usize, usize)> = Vec::new();
        let mut error: Option<String> = broken
            .as_ref()
            .map(|b| format!("embedded log unavailable: {}", b.cause));
        for (i, req) in group.iter().enumerate() {
            if ledger.contains(&req.key) {
                dups.push(i);
                continue;
            }
            if let Some(&(j, _)) = written.iter().find(|(j, _)| group[*j].key == req.key) {
                same_group.push((i, j));
                continue;
            }
            if error.is_none() {
                match log.append(&req.record) {
                    Ok(offset) => written.push((i, offset)),
                    Err(e) => error = Some(format!("append: {e}")),
                }
            }
        }
        if error.is_none() && !written.is_empty() {
            let started = Instant::now();
            let synced = log.sync();
            c.fsync.observe_duration(started.elapsed());
            match synced {
                Ok(_) => c.group_commits.inc(),
                Err(e) => error = Some(format!("fsync: {e}")),
            }
        }
        if let (Some(e), None) = (&error, &broken) {
            // Logged once here; the health line says it until the log recovers.
            tracing::error!(error = %e, "embedded log writes fail; agents keep their data until it recovers by itself");
            backend
                .health
                .set_unready("embedded_log", format!("embedded log: {e}"));
            broken = Some(Broken {
                since: Instant::now(),
                cause: e.clone(),
                next_try: Instant::now() + RECOVER_FIRST,
                wait: RECOVER_FIRST,
            });
        }
        // What is durable is decided by the log, not by whether the group failed:
        // a segment roll in the middle of the group fsyncs the batches before it,
        // which then stay in the log through recovery (it cuts only above the
        // durable offset). Reported failed and left out of the ledger, their
        // resends would be stored a second time.
        let durable = log.durable_offset();
        let is_durable = |i: usize| written.iter().any(|&(j, o)| j == i && o < durable);
        let mut bytes_done = 0u64;
        for (i, req) in group.drain(..).enumerate() {
            let bytes = req.record.len() as u64;
            bytes_done += bytes;
            let copy_of_durable = same_group
                .iter()
                .any(|&(copy, original)| copy == i && is_durable(original));
            let outcome = if dups.contains(&i) || copy_of_durable {
                c.sink.duplicates.inc();
                ledger.count_duplicate(&req.key);
                CommitOutcome::Duplicate
            } else if is_durable(i) {
                ledger.insert(&req.key);
                c.sink.committed(req.samples);
                CommitOutcome::Committed
            } else {
                c.sink.failure("embedded_log");
                CommitOutcome::Failed(error.clone().unwrap_or_else(|| "not written".into()))
            };
            // A closed reply channel means the session is gone; the agent will resend.
            let _ = req.reply.send(CommitDone {
                epoch: req.key.epoch,
                seq: req.key.seq,
                outcome,
                bytes,
            });
        }
        let left = backend.answered(bytes_done);
        c.sink.queued.set(i64::try_from(left).unwrap_or(i64::MAX));
        c.sink.ledger(&ledger, &mut forgotten);
        if last_housekeeping.elapsed() >= Duration::from_secs(1) && broken.is_none() {
            last_housekeeping = Instant::now();
            housekeeping(&mut log, &mut ledger, &c, &stats_path);
        }
    }
    // Queue closed: everything written was synced in its group; save the stats.
    housekeeping(&mut log, &mut ledger, &c, &stats_path);
}

fn housekeeping(log: &mut Log, ledger: &mut Ledger, c: &Counters, stats_path: &Path) {
    match log.enforce_retention(SystemTime::now()) {
        Ok(report) => {
            let n = report.records();
            if n > 0 {
                c.retention_deleted.add(n);
                tracing::info!(
                    records = n,
                    bytes = report.bytes(),
                    "retention deleted old segments"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "retention failed"),
    }
    c.log_bytes
        .set(i64::try_from(log.total_bytes()).unwrap_or(i64::MAX));
    if let Err(e) = ledger.save_stats(stats_path) {
        tracing::warn!(error = %e, path = %stats_path.display(), "saving stats failed");
    }
}

#[cfg(test)]
mod tests {
    //! The committer after a failed fsync of the embedded log (injected): every
    //! batch ends up in the log exactly once, however its resend arrives.
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn credit_flow_is_unready_only_after_an_unbroken_stall() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(30);
        let mut f = CreditFlow::default();
        f.observe(t0, true);
        assert!(f.check(t0 + Duration::from_secs(29), limit).is_ok());
        // A moment of credit restarts the count.
        f.observe(t0 + Duration::from_secs(29), false);
        f.observe(t0 + Duration::from_secs(30), true);
        assert!(f.check(t0 + Duration::from_secs(59), limit).is_ok());
        let why = f
            .check(t0 + Duration::from_secs(61), limit)
            .expect_err("31 s without credit");
        assert!(why.contains("no credit granted for 31 s"), "{why}");
        assert!(f
            .check(t0 + Duration::from_secs(61), Duration::ZERO)
            .is_ok());
    }
    use ferrule_disklog::{Fault, LogReader};
    use ferrule_wire::record::{encode_record, RecordHeader};
    use std::collections::BTreeMap;
    use CommitOutcome::{Committed, Duplicate, Failed};

    fn batch(seq: u64) -> (LedgerKey, Vec<u8>) {
        let header = RecordHeader {
            site: "s1".into(),
            agent: "a1".into(),
            epoch: Epoch(1),
            seq: Seq(seq),
            clock_offset_ns: 0,
            received_ns: 0,
            samples: 0,
            sensors: Vec::new(),
        };
        let mut rec = Vec::new();
        encode_record(&header, &[], &mut rec).unwrap();
        (LedgerKey::new("s1", "a1", Epoch(1), Seq(seq)), rec)
    }

    /// Queues batch `seq` as an ingest session would; its reply comes on the
    /// returned channel.
    fn submit(sink: &Sink, seq: u64) -> mpsc::UnboundedReceiver<CommitDone> {
        let (key, record) = batch(seq);
        let (reply, rx) = mpsc::unbounded_channel();
        sink.queued_bytes
            .fetch_add(record.len() as u64, Ordering::Relaxed);
        let req = CommitRequest {
            key,
            record,
            samples: 0,
            reply,
        };
        sink.tx.blocking_send(req).unwrap();
        rx
    }

    /// A committer thread and the replies it owes.
    struct Committer {
        sink: Sink,
        thread: std::thread::JoinHandle<()>,
        replies: Vec<mpsc::UnboundedReceiver<CommitDone>>,
    }

    impl Committer {
        /// Starts one over `log` (data directory `dir`) with `queued` batches
        /// already waiting, so that they form its first group.
        fn start(log: Log, dir: &Path, queued: &[u64]) -> Self {
            let (sink, backend) = Sink::new(64, u64::MAX);
            let replies = queued.iter().map(|&seq| submit(&sink, seq)).collect();
            let counters = Counters::new(&Registry::new());
            let ledger = Ledger::with_bounds(Default::default());
            let stats = dir.join(STATS_FILE);
            let thread = std::thread::spawn(move || run(log, ledger, backend, 16, counters, stats));
            Committer {
                sink,
                thread,
                replies,
            }
        }

        fn send(&mut self, seq: u64) {
            let rx = submit(&self.sink, seq);
            self.replies.push(rx);
        }

        /// The outcomes of everything sent so far, in order.
        fn outcomes(&mut self) -> Vec<(u64, CommitOutcome)> {
            self.replies
                .drain(..)
                .map(|mut rx| {
                    let d = rx.blocking_recv().unwrap();
                    let outcome = match d.outcome {
                        CommitOutcome::Failed(_) => CommitOutcome::Failed(String::new()),
                        o => o,
                    };
                    (d.seq.0, outcome)
                })
                .collect()
        }

        /// Waits until the committer has recovered the log by itself.
        // A plain test thread, no executor: sleeping is what it should do.
        #[allow(clippy::disallowed_methods)]
        fn wait_healthy(&self) {
            let t = Instant::now();
            while self.sink.health().is_err() {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "the log never recovered"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn stop(self) {
            drop(self.sink);
            self.thread.join().unwrap();
        }
    }

    /// How often each seq is in the log, read as `inspect` reads it.
    fn copies(log_dir: &Path) -> BTreeMap<u64, usize> {
        let (reader, _) = LogReader::open_read_only(log_dir).unwrap();
        let mut n = BTreeMap::new();
        for r in reader.read_records(Offset(0), 10_000, usize::MAX).unwrap() {
            *n.entry(decode_record_header(&r.payload).unwrap().seq.0)
                .or_insert(0) += 1;
        }
        n
    }

    /// A failure, whatever its text.
    fn failed() -> CommitOutcome {
        Failed(String::new())
    }

    #[test]
    fn a_batch_whose_fsync_failed_is_stored_once_after_its_resend() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join(LOG_SUBDIR);
        let (mut log, _) = Log::open(&log_dir, Options::default()).unwrap();
        // The group's records reach the file; its fsync fails (a full disk).
        log.inject_fault(Fault::Fsync { after: 0 });
        let mut c = Committer::start(log, dir.path(), &[1]);
        assert_eq!(c.outcomes(), vec![(1, failed())]);
        c.wait_healthy();
        // The agent resends what was not acknowledged.
        c.send(1);
        c.send(2);
        assert_eq!(c.outcomes(), vec![(1, Committed), (2, Committed)]);
        c.send(1);
        assert_eq!(c.outcomes(), vec![(1, Duplicate)]);
        c.stop();
        assert_eq!(copies(&log_dir), BTreeMap::from([(1, 1), (2, 1)]));
    }

    #[test]
    fn batches_a_roll_made_durable_before_the_group_failed_are_not_stored_twice() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join(LOG_SUBDIR);
        // Room for two batches per segment: the third of a group rolls.
        let frame = ferrule_disklog::record::HEADER_LEN + batch(1).1.len();
        let mut o = Options::default();
        o.segment_bytes = (ferrule_disklog::segment::SEGMENT_HEADER_LEN + 2 * frame) as u64;
        let (mut log, _) = Log::open(&log_dir, o).unwrap();
        // The roll's fsync works, the group's own fails.
        log.inject_fault(Fault::Fsync { after: 1 });
        let mut c = Committer::start(log, dir.path(), &[1, 2, 3, 4]);
        assert_eq!(
            c.outcomes(),
            vec![(1, Committed), (2, Committed), (3, failed()), (4, failed())]
        );
        c.wait_healthy();
        // An agent resends everything from its oldest unacknowledged batch on.
        for seq in 1..=4 {
            c.send(seq);
        }
        assert_eq!(
            c.outcomes(),
            vec![
                (1, Duplicate),
                (2, Duplicate),
                (3, Committed),
                (4, Committed)
            ]
        );
        c.stop();
        assert_eq!(
            copies(&log_dir),
            BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1)])
        );
    }
}
