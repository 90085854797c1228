//! Spans of a sampled batch's life on the agent (OTLP, `[otlp]`): spooled
//! (from its first sample to durable on disk), sent (to its ack), and the root
//! span over the whole (first sample to ack). The aggregator's commit span of the
//! same batch lands in the same trace: both derive it from (site, agent, epoch,
//! seq).

use ferrule_otlp::{BatchKey, BatchTracer, KeyValue, SpanKind, ROOT};
use ferrule_wire::{Epoch, Seq};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// When sampled batches opened, kept from their spooling to their ack: at most
/// this many (a batch never acknowledged must not grow it for ever).
const MAX_OPEN: usize = 4096;

/// The agent's batch tracing; disabled (no `[otlp]`) it does nothing.
#[derive(Clone, Debug)]
pub struct Traces {
    tracer: BatchTracer,
    site: Arc<str>,
    agent: Arc<str>,
    opened: Arc<Mutex<VecDeque<(u64, u64, SystemTime)>>>,
}

impl Traces {
    /// Traces nothing.
    pub fn disabled() -> Self {
        Self::new(BatchTracer::disabled(), "", "")
    }

    /// Traces the batches `tracer` samples, as agent `site`/`agent`.
    pub fn new(tracer: BatchTracer, site: &str, agent: &str) -> Self {
        Self {
            tracer,
            site: site.into(),
            agent: agent.into(),
            opened: Arc::default(),
        }
    }

    fn key(&self, epoch: Epoch, seq: Seq) -> BatchKey<'_> {
        BatchKey {
            site: &self.site,
            agent: &self.agent,
            epoch: epoch.0,
            seq: seq.0,
        }
    }

    /// The batch `seq` is durable in the spool now; its first sample came at
    /// `opened`.
    pub fn spooled(&self, epoch: Epoch, seq: Seq, opened: Option<SystemTime>) {
        let key = self.key(epoch, seq);
        if !self.tracer.sampled(&key) {
            return;
        }
        let now = SystemTime::now();
        let opened = opened.unwrap_or(now);
        self.tracer.record(
            &key,
            "ferrule.agent.spool",
            SpanKind::Internal,
            opened,
            now,
            Vec::new(),
        );
        let mut o = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        if o.len() >= MAX_OPEN {
            o.pop_front();
        }
        o.push_back((epoch.0, seq.0, opened));
    }

    /// The batch `seq`, sent `latency` ago, is acknowledged now.
    pub fn acked(&self, epoch: Epoch, seq: Seq, latency: Duration) {
        let key = self.key(epoch, seq);
        if !self.tracer.sampled(&key) {
            return;
        }
        let now = SystemTime::now();
        let sent = now.checked_sub(latency).unwrap_or(now);
        self.tracer.record(
            &key,
            "ferrule.agent.send",
            SpanKind::Client,
            sent,
            now,
            Vec::new(),
        );
        let opened = {
            let mut o = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
            o.iter()
                .position(|(e, s, _)| *e == epoch.0 && *s == seq.0)
                .and_then(|i| o.remove(i))
                .map(|(_, _, t)| t)
        };
        // Spooled before this process started (a backlog from before a
        // restart): the root starts at its send.
        self.tracer.record(
            &key,
            ROOT,
            SpanKind::Producer,
            opened.unwrap_or(sent).min(sent),
            now,
            vec![KeyValue::new("ferrule.acked", true)],
        );
    }
}
