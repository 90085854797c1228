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
use ferrule_telemetry::{Counter, Gauge, Registry};
use ferrule_wire::record::decode_record_header;
use ferrule_wire::{Epoch, Seq};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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

/// Whether the sink can make batches durable right now, and if not, why
/// (served at `/healthz`; while unready, credit is withheld).
#[derive(Debug, Default)]
pub struct Health {
    unready: Mutex<Option<String>>,
    bad: AtomicBool,
}

impl Health {
    /// Marks the sink unable to commit, with a reason for operators.
    pub fn set_unready(&self, why: impl Into<String>) {
        let why = why.into();
        let mut u = self.unready.lock().unwrap_or_else(PoisonError::into_inner);
        if u.as_deref() != Some(why.as_str()) {
            tracing::error!(reason = %why, "sink unready");
        }
        *u = Some(why);
        self.bad.store(true, Ordering::Relaxed);
    }

    /// Marks the sink working again.
    pub fn set_ready(&self) {
        let mut u = self.unready.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = u.take() {
            tracing::info!(was = %old, "sink ready again");
        }
        self.bad.store(false, Ordering::Relaxed);
    }

    /// `Ok` when ready, else the reason.
    pub fn check(&self) -> Result<(), String> {
        if !self.bad.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self
            .unready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn is_ok(&self) -> bool {
        !self.bad.load(Ordering::Relaxed)
    }
}

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
    registry: Registry,
}

impl SinkCounters {
    /// Registers the sink counters.
    pub fn new(registry: &Registry) -> Self {
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
            registry: registry.clone(),
        }
    }

    /// Counts a batch the sink failed to make durable, by reason.
    pub fn failure(&self, reason: &str) {
        self.registry
            .counter(
                "ferrule_aggregator_commit_failures_total",
                "Batches the sink failed to make durable (the agent keeps and resends them), by reason",
                &[("reason", reason)],
            )
            .inc();
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
            },
            SinkBackend {
                rx,
                queued_bytes,
                health,
            },
        )
    }

    /// Submits a request, waiting while the queue is full (backpressure).
    pub async fn submit(&self, req: CommitRequest) -> Result<(), CommitRequest> {
        let bytes = req.record.len() as u64;
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.tx.send(req).await.map_err(|e| {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            e.0
        })
    }

    /// True when the sink is behind enough, or failing, that credit should be withheld.
    pub fn under_pressure(&self) -> bool {
        self.queued_bytes.load(Ordering::Relaxed) > self.high_water_bytes || !self.health.is_ok()
    }

    /// Readiness, for `/healthz`.
    pub fn health(&self) -> Result<(), String> {
        self.health.check()
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
    log_bytes: Gauge,
    retention_deleted: Counter,
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
        let mut ledger = Ledger::load_stats(&opts.dir.join(STATS_FILE));
        let rebuilt = rebuild_ledger(&log, &mut ledger)?;
        tracing::info!(
            records = rebuilt,
            agents = ledger.agent_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            dir = %log_dir.display(),
            "embedded log open"
        );
        let counters = Counters {
            sink: SinkCounters::new(registry),
            group_commits: registry.counter(
                "ferrule_aggregator_group_commits_total",
                "fsyncs of the embedded log",
                &[],
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
        };
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
    let reader = log.reader();
    let mut from = Offset(0);
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

fn run(
    mut log: Log,
    mut ledger: Ledger,
    mut backend: SinkBackend,
    group_max: usize,
    c: Counters,
    stats_path: PathBuf,
) {
    let mut last_housekeeping = Instant::now();
    let mut group: Vec<CommitRequest> = Vec::with_capacity(group_max);
    while let Some(first) = backend.rx.blocking_recv() {
        group.push(first);
        while group.len() < group_max {
            match backend.rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let mut written = Vec::with_capacity(group.len());
        let mut dups = Vec::new();
        let mut error: Option<String> = None;
        for (i, req) in group.iter().enumerate() {
            if ledger.contains(&req.key) || written.iter().any(|j: &usize| group[*j].key == req.key)
            {
                dups.push(i);
                continue;
            }
            if error.is_none() {
                match log.append(&req.record) {
                    Ok(_) => written.push(i),
                    Err(e) => error = Some(format!("append: {e}")),
                }
            }
        }
        if error.is_none() && !written.is_empty() {
            match log.sync() {
                Ok(_) => c.group_commits.inc(),
                Err(e) => error = Some(format!("fsync: {e}")),
            }
        }
        match &error {
            None => backend.health.set_ready(),
            Some(e) => backend.health.set_unready(format!("embedded log: {e}")),
        }
        let mut bytes_done = 0u64;
        for (i, req) in group.drain(..).enumerate() {
            let bytes = req.record.len() as u64;
            bytes_done += bytes;
            let outcome = if dups.contains(&i) {
                c.sink.duplicates.inc();
                ledger.count_duplicate(&req.key);
                CommitOutcome::Duplicate
            } else if let (true, None) = (written.contains(&i), &error) {
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
        if error.is_some() {
            // Give a failing disk a moment instead of spinning on it.
            std::thread::park_timeout(Duration::from_millis(100));
        }
        let left = backend.answered(bytes_done);
        c.sink.queued.set(i64::try_from(left).unwrap_or(i64::MAX));
        if last_housekeeping.elapsed() >= Duration::from_secs(1) {
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
