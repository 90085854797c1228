//! The aggregator's named counters, created once and shared by every task.

use ferrule_telemetry::{Buckets, Counter, Gauge, Histogram, Registry};
use ferrule_wire::session::LiveRefusal;
use ferrule_wire::RejectReason;

const REJECTED: &str = "ferrule_aggregator_batches_rejected_total";
const REJECTED_HELP: &str = "Batches refused for good, by reason (never counted as acknowledged)";
const REFUSED: &str = "ferrule_aggregator_connections_refused_total";
const REFUSED_HELP: &str = "Connections refused or cut off, by reason";

/// Every reason a batch is rejected for (`unknown` for codes this build does
/// not know), published at 0 from the start so `rate()` and alerts have a
/// series before the first rejection.
pub fn reject_reasons() -> [&'static str; 5] {
    [
        RejectReason::UNKNOWN_SENSOR.name(),
        RejectReason::WRONG_EPOCH.name(),
        RejectReason::SINK_REFUSED.name(),
        RejectReason::FORBIDDEN.name(),
        RejectReason(0).name(),
    ]
}

/// Handles for the ingest path's hot counters; labelled ones are looked up on the
/// (rare) paths that need them.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    /// The registry, for labelled series.
    pub registry: Registry,
    /// Connections whose handshake completed.
    pub connections: Counter,
    /// Sessions up right now.
    pub sessions: Gauge,
    /// Batches received (before dedupe).
    pub batches_received: Counter,
    /// Samples received (before dedupe).
    pub samples_received: Counter,
    /// Ack messages sent that acknowledge committed batches (rejections are
    /// counted per batch by [`IngestMetrics::rejected`], not here).
    pub acks: Counter,
    /// Batches acknowledged as durable (committed now or before): never the
    /// rejected ones.
    pub acked_batches: Counter,
    /// Live sessions closed because a new CRL revoked their certificate.
    pub sessions_revoked: Counter,
    /// Credit grants sent.
    pub credit_grants: Counter,
    /// Credit withheld because the sink was under pressure (each time it happens).
    pub credit_withheld: Counter,
    /// Defines refused beyond `server.max_sensors_per_agent`.
    pub defines_refused: Counter,
    /// Batches an agent sent twice on one session (acknowledged again, not committed).
    pub session_duplicates: Counter,
    /// The credit window every session grants now, batches.
    pub credit_window_batches: Gauge,
    /// The credit window every session grants now, bytes.
    pub credit_window_bytes: Gauge,
    /// Mean commit latency above the sink's base over the last interval, what
    /// the window is sized to keep near `credit.target_queue_delay_ms`.
    pub sink_queue_delay_us: Gauge,
    /// Live copies handed to the real-time path (never committed: their
    /// batches arrive on the durable lane).
    pub live_batches: Counter,
    /// From a batch's arrival to its commit (durable, and acknowledged at once).
    pub commit_latency: Histogram,
    /// Samples per batch received.
    pub batch_samples: Histogram,
}

const LIVE_REFUSED: &str = "ferrule_aggregator_live_refused_total";
const LIVE_REFUSED_HELP: &str = "Live copies not handed to the real-time path, by reason (stale: the batch itself got here first; unknown_sensor; over_budget: beyond server.live_max_bytes_per_sec)";

/// Every reason `ferrule_aggregator_connections_refused_total` counts, each
/// published at 0 from the start so `rate()` and alerts work before the first
/// refusal: the transport's connection labels (certificate problems of the
/// agent's certificate, TLS alerts, wire error codes, ...),
/// `peer_refused_server_certificate` (the agent refused *our* certificate), and
/// the ingest path's own.
pub fn refusal_reasons() -> impl Iterator<Item = &'static str> {
    ferrule_transport::CONNECTION_REASONS
        .iter()
        .copied()
        .chain([
            ferrule_transport::PEER_REFUSED_SERVER_CERTIFICATE,
            // ingest: identity, admission, streams, session timers, sink.
            "bad_identity",
            "superseded",
            "handshake_evicted",
            "too_many_sessions",
            "handshake_timeout",
            "peer_timeout",
            "stalled",
            "frame_timeout",
            "frame_too_large",
            "too_many_samples",
            "truncated",
            "stream_error",
            "control_not_read",
            "sink_failed",
            "sink_closed",
            "encode_failed",
            "peer_error",
        ])
}

impl IngestMetrics {
    /// Registers the ingest metrics in `registry`, every refusal reason at 0.
    pub fn new(registry: &Registry) -> Self {
        let refusals: Vec<&str> = refusal_reasons().collect();
        registry.declare_counters(REFUSED, REFUSED_HELP, &[], "reason", &refusals);
        registry.declare_counters(REJECTED, REJECTED_HELP, &[], "reason", &reject_reasons());
        let live_reasons: Vec<&str> = LiveRefusal::ALL.iter().map(|r| r.name()).collect();
        registry.declare_counters(
            LIVE_REFUSED,
            LIVE_REFUSED_HELP,
            &[],
            "reason",
            &live_reasons,
        );
        Self {
            registry: registry.clone(),
            connections: registry.counter(
                "ferrule_aggregator_connections_total",
                "Agent connections whose handshake completed",
                &[],
            ),
            sessions: registry.gauge("ferrule_aggregator_sessions", "Agent sessions up", &[]),
            batches_received: registry.counter(
                "ferrule_aggregator_batches_received_total",
                "Batches received, before dedupe",
                &[],
            ),
            samples_received: registry.counter(
                "ferrule_aggregator_samples_received_total",
                "Samples received, before dedupe",
                &[],
            ),
            acks: registry.counter(
                "ferrule_aggregator_acks_total",
                "Ack messages sent for committed batches (rejections are counted in ferrule_aggregator_batches_rejected_total)",
                &[],
            ),
            sessions_revoked: registry.counter(
                "ferrule_aggregator_sessions_revoked_total",
                "Live agent sessions closed because a newly loaded CRL revokes their certificate.",
                &[],
            ),
            acked_batches: registry.counter(
                "ferrule_aggregator_acked_batches_total",
                "Batches acknowledged as durable in the sink (rejected batches are counted in ferrule_aggregator_batches_rejected_total, never here)",
                &[],
            ),
            credit_grants: registry.counter(
                "ferrule_aggregator_credit_grants_total",
                "Credit messages sent",
                &[],
            ),
            credit_withheld: registry.counter(
                "ferrule_aggregator_credit_withheld_total",
                "Times returned credit was held back because the sink was under pressure",
                &[],
            ),
            defines_refused: registry.counter(
                "ferrule_aggregator_defines_refused_total",
                "Sensor definitions refused beyond server.max_sensors_per_agent",
                &[],
            ),
            session_duplicates: registry.counter(
                "ferrule_aggregator_session_duplicates_total",
                "Batches sent twice on one session: acknowledged again, not committed again",
                &[],
            ),
            credit_window_batches: registry.gauge(
                "ferrule_aggregator_credit_window_batches",
                "Credit window each session grants now, batches (sized from the sink's commit latency unless credit.target_queue_delay_ms is 0)",
                &[],
            ),
            credit_window_bytes: registry.gauge(
                "ferrule_aggregator_credit_window_bytes",
                "Credit window each session grants now, bytes",
                &[],
            ),
            sink_queue_delay_us: registry.gauge(
                "ferrule_aggregator_sink_queue_delay_microseconds",
                "Mean commit latency above the sink's base latency over the last interval (the queue the credit window is sized to keep near its target)",
                &[],
            ),
            live_batches: registry.counter(
                "ferrule_aggregator_live_batches_total",
                "Live copies of agents' newest batches handed to the real-time path while their durable lanes replay (never committed)",
                &[],
            ),
            commit_latency: registry.histogram(
                "ferrule_aggregator_commit_latency_seconds",
                "From a batch's arrival to its commit in the sink (it is acknowledged right after), seconds",
                &[],
                Buckets::Latency,
            ),
            batch_samples: registry.histogram(
                "ferrule_aggregator_batch_samples",
                "Samples per batch received",
                &[],
                Buckets::Count,
            ),
        }
    }

    /// Counts a refused or failed connection by reason (`expired`, `revoked`,
    /// `unknown_ca`, `bad_key_usage` for the agent's certificate;
    /// `peer_refused_server_certificate` when the agent refused ours;
    /// `no_client_certificate`, `malformed`, `frame_timeout`, ...; see
    /// [`refusal_reasons`]).
    pub fn refused(&self, reason: &str) {
        self.registry
            .counter(REFUSED, REFUSED_HELP, &[("reason", reason)])
            .inc();
    }

    /// Counts a batch refused for good, by reason (one of [`reject_reasons`]).
    pub fn rejected(&self, reason: &str) {
        self.registry
            .counter(REJECTED, REJECTED_HELP, &[("reason", reason)])
            .inc();
    }

    /// Counts a live copy refused, by reason.
    pub fn live_refused(&self, reason: LiveRefusal) {
        self.registry
            .counter(
                LIVE_REFUSED,
                LIVE_REFUSED_HELP,
                &[("reason", reason.name())],
            )
            .inc();
    }

    /// Sets an agent's clock offset gauge.
    pub fn clock_offset(&self, agent: &str, offset_ns: i64) {
        self.registry
            .gauge(
                "ferrule_aggregator_agent_clock_offset_ns",
                "Agent's estimated clock offset (aggregator minus agent), nanoseconds",
                &[("agent", agent)],
            )
            .set(offset_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Right after start, every rejection and commit-failure reason has a
    /// series at 0, and acknowledged batches are a family of their own.
    #[test]
    fn reason_series_exist_at_zero_from_the_start() {
        let registry = Registry::new();
        let m = IngestMetrics::new(&registry);
        let _sink = crate::commit::SinkCounters::new(&registry);
        let text = registry.render();
        for r in reject_reasons() {
            let line = format!("ferrule_aggregator_batches_rejected_total{{reason=\"{r}\"}} 0");
            assert!(text.contains(&line), "{line}\n{text}");
        }
        for r in crate::commit::COMMIT_FAILURE_REASONS {
            let line = format!("ferrule_aggregator_commit_failures_total{{reason=\"{r}\"}} 0");
            assert!(text.contains(&line), "{line}\n{text}");
        }
        assert!(
            text.contains("ferrule_aggregator_acked_batches_total 0"),
            "{text}"
        );
        // A rejection counts as rejected, never as acknowledged.
        m.rejected("unknown_sensor");
        assert_eq!(
            registry.counter_value(
                "ferrule_aggregator_batches_rejected_total",
                &[("reason", "unknown_sensor")]
            ),
            Some(1)
        );
        assert_eq!(m.acked_batches.get(), 0);
    }
}
