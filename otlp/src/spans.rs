//! Spans of a batch's life, with trace and span ids derived from the batch's
//! (agent, epoch, seq): the agent's and the aggregator's spans of one batch land
//! in one trace, and both sides sample the same batches, with nothing added to
//! the wire protocol.

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use std::cell::Cell;
use std::time::SystemTime;

thread_local! {
    /// The ids the next span started on this thread takes (set by
    /// [`BatchTracer::record`] around one synchronous span start).
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// The SDK asks its id generator for a span's ids (the API has no way to give
/// them): this one hands out the ids [`BatchTracer::record`] derived, random
/// ones for any other span.
#[derive(Debug, Default)]
pub(crate) struct KeyedIds(RandomIdGenerator);

impl IdGenerator for KeyedIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS
            .with(Cell::get)
            .map_or_else(|| self.0.new_trace_id(), |(t, _)| t)
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS
            .with(Cell::get)
            .map_or_else(|| self.0.new_span_id(), |(_, s)| s)
    }
}

/// Names one batch: the trace of its life is derived from these alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchKey<'a> {
    /// The agent's site.
    pub site: &'a str,
    /// The agent's id.
    pub agent: &'a str,
    /// The agent's spool epoch.
    pub epoch: u64,
    /// The batch's seq.
    pub seq: u64,
}

/// FNV-1a, 64 bits: the same on every build and platform (unlike std's
/// hasher), so agent and aggregator derive the same ids.
fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = seed;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// splitmix64's finalizer: FNV's high bits vary little between neighbouring
/// seqs, and sampling compares the whole value with a bound.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl BatchKey<'_> {
    fn hash(&self, salt: u64) -> u64 {
        mix(fnv(
            BASIS ^ salt,
            &[
                self.site.as_bytes(),
                self.agent.as_bytes(),
                &self.epoch.to_be_bytes(),
                &self.seq.to_be_bytes(),
            ],
        ))
    }

    /// The batch's trace id.
    pub fn trace_id(&self) -> TraceId {
        let hi = u128::from(self.hash(1));
        let lo = u128::from(self.hash(2));
        TraceId::from((hi << 64) | lo.max(1))
    }

    /// The id of the batch's root span (`ferrule.batch`) and of each step's span.
    pub fn span_id(&self, step: &str) -> SpanId {
        SpanId::from(fnv(self.hash(3), &[step.as_bytes()]).max(1))
    }
}

/// Records the spans of sampled batches. Cheap to clone; disabled, it records
/// nothing and samples nothing.
#[derive(Clone, Debug)]
pub struct BatchTracer {
    tracer: Option<SdkTracer>,
    /// A batch is sampled when its key's hash is below this.
    bound: u64,
}

/// The root span every step hangs under.
pub const ROOT: &str = "ferrule.batch";

impl BatchTracer {
    /// A tracer sampling `ratio` of batches (0 to 1).
    pub fn new(provider: &SdkTracerProvider, ratio: f64) -> Self {
        let ratio = ratio.clamp(0.0, 1.0);
        Self {
            tracer: (ratio > 0.0).then(|| provider.tracer("ferrule")),
            // Saturating float-to-int: 1.0 maps to u64::MAX (every batch).
            bound: (ratio * u64::MAX as f64) as u64,
        }
    }

    /// Records nothing.
    pub fn disabled() -> Self {
        Self {
            tracer: None,
            bound: 0,
        }
    }

    /// Whether this batch's life is traced (the same answer on every process).
    pub fn sampled(&self, key: &BatchKey<'_>) -> bool {
        self.tracer.is_some() && (self.bound == u64::MAX || key.hash(4) < self.bound)
    }

    /// Records the step `name` of a sampled batch, from `start` to `end`, with
    /// `attributes` besides the batch's own; `name` [`ROOT`] is the root span,
    /// any other hangs under it. Nothing for a batch not sampled.
    pub fn record(
        &self,
        key: &BatchKey<'_>,
        name: &'static str,
        kind: SpanKind,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
    ) {
        let Some(tracer) = self.tracer.as_ref().filter(|_| self.sampled(key)) else {
            return;
        };
        let trace_id = key.trace_id();
        let parent = if name == ROOT {
            Context::new()
        } else {
            Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                key.span_id(ROOT),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ))
        };
        let mut all = vec![
            KeyValue::new("ferrule.site", key.site.to_string()),
            KeyValue::new("ferrule.agent", key.agent.to_string()),
            KeyValue::new(
                "ferrule.epoch",
                i64::try_from(key.epoch).unwrap_or(i64::MAX),
            ),
            KeyValue::new("ferrule.seq", i64::try_from(key.seq).unwrap_or(i64::MAX)),
        ];
        all.extend(attributes);
        NEXT_IDS.with(|n| n.set(Some((trace_id, key.span_id(name)))));
        let mut span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(all)
            .start_with_context(tracer, &parent);
        NEXT_IDS.with(|n| n.set(None));
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end.max(start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u64) -> BatchKey<'static> {
        BatchKey {
            site: "site-a",
            agent: "agent-1",
            epoch: 7,
            seq,
        }
    }

    #[test]
    fn ids_depend_on_the_batch_alone_and_differ_between_batches() {
        assert_eq!(key(1).trace_id(), key(1).trace_id());
        assert_ne!(key(1).trace_id(), key(2).trace_id());
        assert_ne!(key(1).span_id(ROOT), key(1).span_id("ferrule.agent.send"));
        // Fixed: another build or platform must derive the same ids.
        assert_eq!(fnv(BASIS, &[b"a"]), fnv(BASIS, &[b"a"]),);
        assert_ne!(fnv(BASIS, &[b"ab", b"c"]), fnv(BASIS, &[b"a", b"bc"]));
    }

    #[test]
    fn sampling_keeps_about_the_ratio_and_the_same_batches() {
        let provider = SdkTracerProvider::builder().build();
        let t = BatchTracer::new(&provider, 0.1);
        let n = (0..20_000).filter(|s| t.sampled(&key(*s))).count();
        assert!((1_600..2_400).contains(&n), "{n} of 20000 at 0.1");
        let again = BatchTracer::new(&provider, 0.1);
        assert!((0..1000).all(|s| t.sampled(&key(s)) == again.sampled(&key(s))));
        assert!((0..1000).all(|s| BatchTracer::new(&provider, 1.0).sampled(&key(s))));
        assert!(!(0..1000).any(|s| BatchTracer::new(&provider, 0.0).sampled(&key(s))));
        assert!(!BatchTracer::disabled().sampled(&key(1)));
    }
}
