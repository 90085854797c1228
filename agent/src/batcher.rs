//! The batcher: the memory queue between the inputs and the spool.
//!
//! Inputs send chunks of samples through a bounded channel; the batcher groups
//! them per input and sensor, cuts a batch at `batch.max_samples` or after
//! `batch.max_delay_ms`, numbers it with the spool's next sequence number and
//! appends it. It fsyncs per the spool's policy and publishes how far the spool is
//! durable, which is what the uplink may send.
//!
//! Backpressure: when the spool is full under the `block` policy the batcher stops
//! reading the channel, the channel fills, and inputs wait.

use crate::config::{BatchSection, FsyncMode};
use crate::spool::{Spool, SpoolError};
use ferrule_telemetry::Registry;
use ferrule_wire::{encode, Batch, Epoch, Limits, Message, SensorId, Seq, Series};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
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

struct Builder {
    series: BTreeMap<SensorId, Series>,
    samples: usize,
    since: Instant,
}

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

/// Runs the batcher until the chunk channel closes or shutdown.
pub async fn run(
    mut spool: Spool,
    mut io: BatcherIo,
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
    let mut builders: HashMap<Arc<str>, Builder> = HashMap::new();
    // A cut batch waiting for room (block policy).
    let mut pending: Option<(Arc<str>, Vec<Series>)> = None;
    let mut flush_tick = tokio::time::interval(Duration::from_millis(
        cfg.max_delay_ms.clamp(1, 1000) / 2 + 1,
    ));
    let mut sync_tick = tokio::time::interval(fsync_interval.max(Duration::from_millis(1)));
    let limits = Limits::default();
    let mut frame = Vec::new();
    let mut open = true;

    // Appends a batch; false if it must wait (spool full).
    let append =
        |spool: &mut Spool, input: &Arc<str>, series: &[Series], frame: &mut Vec<u8>| -> bool {
            let samples: usize = series.iter().map(Series::len).sum();
            let batch = Message::Batch(Batch {
                epoch: spool.epoch(),
                seq: spool.next_seq(),
                clock_offset_ns: io.clock_offset_ns.load(Ordering::Relaxed),
                series: series.to_vec(),
            });
            frame.clear();
            if let Err(e) = encode(&batch, &limits, frame) {
                // Cannot happen below the batch size limit checked in config; count it.
                tracing::error!(error = %e, input = %input, "batch does not encode; dropped");
                registry
                    .counter(
                        "ferrule_agent_dropped_samples_total",
                        "Samples dropped unacknowledged, by reason and input",
                        &[("reason", "encode_failed"), ("input", input)],
                    )
                    .add(samples as u64);
                return true;
            }
            match tokio::task::block_in_place(|| spool.append(input, samples as u32, frame)) {
                Ok(_) => true,
                Err(SpoolError::Full) => false,
                Err(e) => {
                    write_errors.inc();
                    tracing::error!(error = %e, "spool write failed; retrying");
                    false
                }
            }
        };

    loop {
        tokio::select! {
            chunk = io.chunks.recv(), if pending.is_none() && open => match chunk {
                Some(c) => {
                    let b = builders.entry(c.input.clone()).or_insert_with(|| Builder {
                        series: BTreeMap::new(),
                        samples: 0,
                        since: Instant::now(),
                    });
                    if b.samples == 0 {
                        b.since = Instant::now();
                    }
                    for s in c.series {
                        b.samples += s.len();
                        let into = b.series.entry(s.sensor()).or_insert_with(|| Series::new(s.sensor()));
                        for (t, v, q) in s.iter() {
                            into.push(t, v, q);
                        }
                    }
                    if b.samples >= cfg.max_samples {
                        let series: Vec<Series> = std::mem::take(&mut b.series).into_values().collect();
                        b.samples = 0;
                        if !append(&mut spool, &c.input, &series, &mut frame) {
                            blocked_total.inc();
                            pending = Some((c.input.clone(), series));
                        }
                    }
                }
                None => open = false,
            },
            settle = io.settles.recv() => {
                if let Some(Settle::Done(seqs)) = settle {
                    if let Err(e) = tokio::task::block_in_place(|| spool.settle(&seqs)) {
                        tracing::error!(error = %e, "releasing acknowledged batches failed");
                    }
                    if let Some((input, series)) = pending.take() {
                        if !append(&mut spool, &input, &series, &mut frame) {
                            pending = Some((input, series));
                        }
                    }
                }
            },
            _ = flush_tick.tick() => {
                // Settled batches free their space here at the latest (a blocked
                // spool waits for this).
                if pending.is_some() {
                    let _ = tokio::task::block_in_place(|| spool.release());
                }
                if let Some((input, series)) = pending.take() {
                    if !append(&mut spool, &input, &series, &mut frame) {
                        pending = Some((input, series));
                    }
                }
                let max_delay = Duration::from_millis(cfg.max_delay_ms);
                let due: Vec<Arc<str>> = builders
                    .iter()
                    .filter(|(_, b)| b.samples > 0 && (b.since.elapsed() >= max_delay || !open))
                    .map(|(k, _)| k.clone())
                    .collect();
                for input in due {
                    if pending.is_some() {
                        break;
                    }
                    if let Some(b) = builders.get_mut(&input) {
                        let series: Vec<Series> = std::mem::take(&mut b.series).into_values().collect();
                        b.samples = 0;
                        if !append(&mut spool, &input, &series, &mut frame) {
                            pending = Some((input.clone(), series));
                        }
                    }
                }
            },
            _ = sync_tick.tick(), if fsync == FsyncMode::Interval => {
                if let Err(e) = tokio::task::block_in_place(|| spool.sync()) {
                    write_errors.inc();
                    tracing::error!(error = %e, "spool fsync failed");
                }
            },
            _ = io.shutdown.changed() => {
                if *io.shutdown.borrow() {
                    open = false;
                    io.chunks.close();
                }
            },
        }
        publish(&spool, &io.state);
        if !open && pending.is_none() && builders.values().all(|b| b.samples == 0) {
            // Everything cut and appended: make it durable and stop.
            if let Err(e) = tokio::task::block_in_place(|| spool.sync()) {
                tracing::error!(error = %e, "final spool fsync failed");
            }
            publish(&spool, &io.state);
            // Keep settling acks while the uplink drains, until it lets go.
            while let Some(Settle::Done(seqs)) = io.settles.recv().await {
                let _ = tokio::task::block_in_place(|| spool.settle(&seqs));
                publish(&spool, &io.state);
            }
            if let Err(e) = tokio::task::block_in_place(|| spool.release()) {
                tracing::warn!(error = %e, "releasing acknowledged batches at shutdown failed");
            }
            return;
        }
    }
}
