//! The Kafka sink: every batch becomes one Kafka record (or, for topics in JSON
//! format, one record per sample), acknowledged to the agent only after Kafka's
//! delivery report with `acks=all` and an idempotent producer.
//!
//! Invariants: a batch is reported committed only once every record it produced is
//! delivered; a delivery failure (including librdkafka's local
//! `message.timeout.ms`) is reported failed and counted, never acknowledged, so the
//! agent keeps the batch and sends it again; while Kafka is unreachable or slow,
//! what is outstanding grows to the high-water mark and credit is withheld (agents
//! spool) instead of the aggregator buffering without bound. Fatal errors
//! (authorization, a missing topic) make the aggregator unready with the reason.
//!
//! The record key is `site/agent`, so an agent's batches, and each sensor's
//! samples, stay in order within one partition. Headers carry the agent, epoch,
//! sequence number, sample count and the record encoding version.

use crate::commit::{
    CommitDone, CommitOutcome, CommitRequest, Health, Sink, SinkBackend, SinkCounters,
};
use crate::config::{KafkaSection, RecordFormat};
use crate::ledger::{Ledger, LedgerBounds};
use ferrule_telemetry::{Counter, Registry};
use ferrule_wire::record::{decode_record, decode_record_header, RecordHeader, RECORD_VERSION};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Outstanding batches with no delivery report for this long make the sink unready.
const STALL: Duration = Duration::from_secs(10);

/// The running Kafka sink.
pub struct Kafka {
    sink: Sink,
    task: tokio::task::JoinHandle<()>,
}

struct Counters {
    sink: SinkCounters,
    records: Counter,
}

/// Where a batch goes and in what form.
fn route<'a>(cfg: &'a KafkaSection, header: &RecordHeader) -> (&'a str, RecordFormat) {
    for r in &cfg.routes {
        let site_ok = r.site.as_deref().is_none_or(|p| glob(p, &header.site));
        let sensor_ok = r.sensor_prefix.as_deref().is_none_or(|p| {
            header
                .sensors
                .iter()
                .any(|s| s.name.as_str().starts_with(p))
        });
        if site_ok && sensor_ok {
            return (&r.topic, r.format.unwrap_or(cfg.format));
        }
    }
    (&cfg.topic, cfg.format)
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first)
        || !s[first.len()..].ends_with(last)
        || s.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// Builds the producer: idempotent, `acks=all`, compression and batching from
/// config, then the pass-through properties (TLS, SASL) on top.
fn producer(cfg: &KafkaSection) -> anyhow::Result<FutureProducer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("compression.type", &cfg.compression)
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("batch.size", cfg.batch_bytes.to_string())
        .set("message.timeout.ms", cfg.message_timeout_ms.to_string())
        .set(
            "queue.buffering.max.kbytes",
            cfg.queue_max_kbytes.to_string(),
        )
        .set("client.id", &cfg.client_id);
    pass_through(&mut c, cfg)?;
    Ok(c.create()?)
}

/// Sets `kafka.properties` (TLS, SASL: what any client of these brokers needs)
/// on `c`, secrets read from the environment; refuses the ones ferrule always
/// sets. Shared with the alert producer ([`crate::alerts`]).
pub(crate) fn pass_through(c: &mut ClientConfig, cfg: &KafkaSection) -> anyhow::Result<()> {
    for (k, v) in &cfg.properties {
        if matches!(k.as_str(), "enable.idempotence" | "acks") {
            anyhow::bail!(
                "kafka.properties may not weaken durability: {k} is always set by ferrule"
            );
        }
        // Secrets stay out of the file: `"sasl.password" = "env:KAFKA_PASSWORD"`.
        let value = crate::config::resolve_secret(v)
            .map_err(|e| anyhow::anyhow!("kafka.properties.{k} {e}"))?;
        c.set(k, value);
    }
    Ok(())
}

impl Kafka {
    /// Connects the producer, checks the topics, and starts the sink task.
    pub fn start(
        cfg: KafkaSection,
        high_water_bytes: u64,
        dedupe: LedgerBounds,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let producer = producer(&cfg)?;
        let (sink, backend) = Sink::new(1024, high_water_bytes);
        let c = Counters {
            sink: SinkCounters::new(registry),
            records: registry.counter(
                "ferrule_aggregator_kafka_records_total",
                "Kafka records delivered",
                &[],
            ),
        };
        let cfg = Arc::new(cfg);
        // Unready until the topics are checked, which happens in the background
        // (and again while unready): the aggregator opens its ports at once and
        // says why it is not ready, instead of waiting on the brokers.
        backend.health.starting(
            "kafka_topics",
            "kafka: checking the topics (brokers not answered yet)",
        );
        let task = tokio::spawn(run(producer, cfg, backend, c, dedupe));
        Ok(Self { sink, task })
    }

    /// The handle sessions submit through.
    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    /// Waits for outstanding deliveries after every [`Sink`] clone is dropped.
    pub async fn join(self) {
        drop(self.sink);
        let _ = self.task.await;
    }
}

fn topics(cfg: &KafkaSection) -> Vec<&str> {
    let mut t: Vec<&str> = std::iter::once(cfg.topic.as_str())
        .chain(cfg.routes.iter().map(|r| r.topic.as_str()))
        .collect();
    t.sort_unstable();
    t.dedup();
    t
}

fn check_topics(producer: &FutureProducer, cfg: &KafkaSection, health: &Health) {
    for t in topics(cfg) {
        match producer
            .client()
            .fetch_metadata(Some(t), Duration::from_secs(5))
        {
            Ok(md) => {
                let missing = md
                    .topics()
                    .iter()
                    .find(|m| m.name() == t)
                    .is_none_or(|m| m.error().is_some());
                if missing {
                    health.set_unready("kafka_topics", format!(
                        "kafka topic {t:?} does not exist or is not readable (auto-create is off in production clusters: create it)"
                    ));
                    return;
                }
            }
            Err(e) => {
                health.set_unready("kafka_topics", format!("kafka metadata for {t:?}: {e}"));
                return;
            }
        }
    }
    // Only the topics' cause: whether deliveries flow is for deliveries to say.
    health.clear("kafka_topics");
}

fn headers(h: &RecordHeader) -> OwnedHeaders {
    let agent = format!("{}/{}", h.site, h.agent);
    let epoch = h.epoch.0.to_string();
    let seq = h.seq.0.to_string();
    let count = h.samples.to_string();
    let version = RECORD_VERSION.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "ferrule-agent",
            value: Some(agent.as_str()),
        })
        .insert(Header {
            key: "ferrule-epoch",
            value: Some(epoch.as_str()),
        })
        .insert(Header {
            key: "ferrule-seq",
            value: Some(seq.as_str()),
        })
        .insert(Header {
            key: "ferrule-count",
            value: Some(count.as_str()),
        })
        .insert(Header {
            key: "ferrule-encoding",
            value: Some(version.as_str()),
        })
}

/// One JSON object per sample, for topics configured `format = "json"`.
fn json_samples(record: &[u8]) -> Result<Vec<String>, String> {
    let rec = decode_record(record, u64::MAX).map_err(|e| e.to_string())?;
    let h = &rec.header;
    let mut out = Vec::with_capacity(h.samples as usize);
    for s in &rec.series {
        let info = h.sensors.iter().find(|i| i.id == s.sensor());
        let (name, unit) = info.map_or(("", ""), |i| (i.name.as_str(), i.unit.as_str()));
        for (t, v, q) in s.iter() {
            let value = if v.is_finite() {
                serde_json::json!(v)
            } else {
                serde_json::Value::Null
            };
            out.push(
                serde_json::json!({
                    "site": h.site, "agent": h.agent, "epoch": h.epoch.0, "seq": h.seq.0,
                    "sensor": name, "unit": unit, "ts_ns": t, "value": value,
                    "quality": format!("{q:?}").to_lowercase(),
                })
                .to_string(),
            );
        }
    }
    Ok(out)
}

fn failure_reason(e: &KafkaError) -> &'static str {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => "message_timeout",
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::UnknownTopic) => {
            "unknown_topic"
        }
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
        | Some(RDKafkaErrorCode::ClusterAuthorizationFailed) => "authorization",
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => "message_too_large",
        _ => "delivery_error",
    }
}

async fn run(
    producer: FutureProducer,
    cfg: Arc<KafkaSection>,
    mut backend: SinkBackend,
    c: Counters,
    dedupe: LedgerBounds,
) {
    let ledger = Arc::new(Mutex::new(Ledger::with_bounds(dedupe)));
    let mut forgotten = 0u64;
    let backend_shared = Arc::new(SharedBackend {
        queued_bytes: backend.queued_bytes.clone(),
        health: backend.health.clone(),
    });
    let c = Arc::new(c);
    let mut deliveries = tokio::task::JoinSet::new();
    let mut recheck = tokio::time::interval(Duration::from_secs(5));
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The topic check blocks on the brokers (up to its metadata timeout): it runs
    // on its own, one at a time, never awaited here, so the loop keeps taking
    // batches and sees the sender close at shutdown while brokers are away.
    let mut checking = {
        let (p, cfg, h) = (producer.clone(), cfg.clone(), backend_shared.health.clone());
        tokio::task::spawn_blocking(move || check_topics(&p, &cfg, &h))
    };
    let last_delivery = Arc::new(Mutex::new(std::time::Instant::now()));
    loop {
        let req = tokio::select! {
            r = backend.rx.recv() => match r {
                Some(r) => r,
                None => break,
            },
            _ = recheck.tick() => {
                // Batches outstanding and no delivery report for a while: the brokers
                // are unreachable or below min.insync.replicas. Say so at /healthz;
                // the next delivery makes the sink ready again.
                let outstanding = backend_shared.queued_bytes.load(std::sync::atomic::Ordering::Relaxed);
                if outstanding == 0 {
                    // Nothing waits for a delivery report: no stall to speak of (after
                    // librdkafka gave up on everything, credit must flow again so new
                    // batches can find out whether the brokers are back), and the next
                    // batch's wait starts now, not at the last delivery.
                    *last_delivery.lock().unwrap_or_else(PoisonError::into_inner) = std::time::Instant::now();
                    backend_shared.health.clear("kafka_deliveries");
                    backend_shared.health.clear("kafka_produce");
                }
                let quiet = last_delivery.lock().unwrap_or_else(PoisonError::into_inner).elapsed();
                if outstanding > 0 && quiet >= STALL {
                    backend_shared.health.set_unready("kafka_deliveries", format!(
                        "kafka: no delivery report for {} s with {outstanding} bytes outstanding (brokers down or below min.insync.replicas?)",
                        quiet.as_secs()
                    ));
                }
                c.sink.ledger(&ledger.lock().unwrap_or_else(PoisonError::into_inner), &mut forgotten);
                // While unready, look again: a created topic or granted ACL heals it.
                if backend_shared.health.check().is_err() && checking.is_finished() {
                    let (p, cfg, h) = (producer.clone(), cfg.clone(), backend_shared.health.clone());
                    checking = tokio::task::spawn_blocking(move || check_topics(&p, &cfg, &h));
                }
                continue;
            }
        };
        // Reap finished deliveries so the set does not grow.
        while deliveries.try_join_next().is_some() {}
        // The queue grew by this request; `reply` lowers the gauge on answers. Without
        // this the gauge stayed at its last answered value (0) through an outage.
        let queued = backend_shared
            .queued_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        c.sink.queued.set(i64::try_from(queued).unwrap_or(i64::MAX));
        let header = match decode_record_header(&req.record) {
            Ok(h) => h,
            Err(e) => {
                reply(
                    &backend_shared,
                    &c,
                    req,
                    CommitOutcome::Failed(format!("undecodable record: {e}")),
                    "bad_record",
                );
                continue;
            }
        };
        if ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&req.key)
        {
            c.sink.duplicates.inc();
            reply(&backend_shared, &c, req, CommitOutcome::Duplicate, "");
            continue;
        }
        let (topic, format) = route(&cfg, &header);
        let key = format!("{}/{}", header.site, header.agent);
        let payloads: Vec<Vec<u8>> = match format {
            RecordFormat::Compact => vec![req.record.clone()],
            RecordFormat::Json => match json_samples(&req.record) {
                Ok(v) => v.into_iter().map(String::into_bytes).collect(),
                Err(e) => {
                    reply(
                        &backend_shared,
                        &c,
                        req,
                        CommitOutcome::Failed(e),
                        "bad_record",
                    );
                    continue;
                }
            },
        };
        let mut futures = Vec::with_capacity(payloads.len());
        let hdrs = headers(&header);
        let mut refused: Option<KafkaError> = None;
        'records: for p in &payloads {
            // librdkafka's queue is full: wait for deliveries to drain it.
            loop {
                let rec = FutureRecord::to(topic)
                    .key(key.as_bytes())
                    .payload(p.as_slice())
                    .headers(hdrs.clone());
                match producer.send_result(rec) {
                    Ok(f) => {
                        futures.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        refused = Some(e);
                        break 'records;
                    }
                }
            }
        }
        if let Some(e) = refused {
            // Records already queued for this batch may still be delivered; the batch
            // is not acknowledged, so the agent resends it and consumers dedupe.
            let why = e.to_string();
            backend_shared.health.set_unready(
                "kafka_produce",
                format!("kafka produce to {topic:?}: {why}"),
            );
            reply(
                &backend_shared,
                &c,
                req,
                CommitOutcome::Failed(why),
                failure_reason(&e),
            );
            continue;
        }
        let (shared, counters, ledger) = (backend_shared.clone(), c.clone(), ledger.clone());
        let last_delivery = last_delivery.clone();
        let n = futures.len() as u64;
        deliveries.spawn(async move {
            let mut failed: Option<(String, &'static str)> = None;
            for f in futures {
                match f.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => failed = Some((e.to_string(), failure_reason(&e))),
                    Err(_) => {
                        failed = Some(("producer dropped the delivery".into(), "delivery_error"))
                    }
                }
            }
            match failed {
                None => {
                    ledger
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(&req.key);
                    *last_delivery.lock().unwrap_or_else(PoisonError::into_inner) =
                        std::time::Instant::now();
                    counters.records.add(n);
                    counters.sink.committed(req.samples);
                    shared.health.clear("kafka_deliveries");
                    shared.health.clear("kafka_produce");
                    reply(&shared, &counters, req, CommitOutcome::Committed, "");
                }
                Some((why, reason)) => {
                    if matches!(reason, "unknown_topic" | "authorization") {
                        shared
                            .health
                            .set_unready("kafka_topics", format!("kafka: {why}"));
                    }
                    reply(&shared, &counters, req, CommitOutcome::Failed(why), reason);
                }
            }
        });
    }
    // Queue closed: wait for what is in flight, then flush librdkafka.
    while deliveries.join_next().await.is_some() {}
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
}

struct SharedBackend {
    queued_bytes: Arc<std::sync::atomic::AtomicU64>,
    health: Arc<Health>,
}

fn reply(
    b: &SharedBackend,
    c: &Counters,
    req: CommitRequest,
    outcome: CommitOutcome,
    reason: &str,
) {
    let bytes = req.record.len() as u64;
    if let CommitOutcome::Failed(why) = &outcome {
        c.sink.failure(reason);
        tracing::warn!(seq = %req.key.seq, agent = %req.key.agent, reason, error = %why, "kafka did not take a batch; it stays with the agent");
    }
    let left = b
        .queued_bytes
        .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(bytes);
    c.sink.queued.set(i64::try_from(left).unwrap_or(i64::MAX));
    let _ = req.reply.send(CommitDone {
        epoch: req.key.epoch,
        seq: req.key.seq,
        outcome,
        bytes,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_topics_get_one_object_per_sample() {
        use ferrule_wire::record::{encode_record, SensorInfo};
        use ferrule_wire::{Epoch, Quality, SensorId, SensorKind, SensorName, Seq, Series};
        let mut s = Series::new(SensorId(3));
        s.push(1_000, 230.5, Quality::Good);
        s.push(2_000, f64::NAN, Quality::Bad);
        let header = RecordHeader {
            site: "s1".into(),
            agent: "a1".into(),
            epoch: Epoch(7),
            seq: Seq(9),
            clock_offset_ns: 0,
            received_ns: 5,
            samples: 2,
            sensors: vec![SensorInfo {
                id: SensorId(3),
                name: SensorName::new("feeder/va").unwrap_or_else(|e| panic!("{e}")),
                unit: "V".into(),
                kind: SensorKind::Gauge,
            }],
        };
        let mut rec = Vec::new();
        encode_record(&header, &[s], &mut rec).unwrap_or_else(|e| panic!("{e}"));
        let lines = json_samples(&rec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value =
            serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first["sensor"], "feeder/va");
        assert_eq!(first["unit"], "V");
        assert_eq!(first["value"], 230.5);
        assert_eq!(first["ts_ns"], 1_000);
        assert_eq!(first["seq"], 9);
        assert_eq!(first["quality"], "good");
        // JSON has no NaN: a non-finite value becomes null, its quality says why.
        let second: serde_json::Value =
            serde_json::from_str(&lines[1]).unwrap_or_else(|e| panic!("{e}"));
        assert!(second["value"].is_null());
        assert_eq!(second["quality"], "bad");
        assert!(json_samples(&rec[..rec.len() - 1]).is_err());
    }

    #[test]
    fn routes_pick_topic_and_format_by_site_and_sensor_class() {
        use crate::config::KafkaRoute;
        use ferrule_wire::record::SensorInfo;
        use ferrule_wire::{Epoch, SensorId, SensorKind, SensorName, Seq};
        let cfg: KafkaSection = KafkaSection {
            brokers: "b".into(),
            topic: "default".into(),
            format: RecordFormat::Compact,
            compression: "lz4".into(),
            linger_ms: 5,
            batch_bytes: 1,
            message_timeout_ms: 1000,
            queue_max_kbytes: 1,
            client_id: "c".into(),
            routes: vec![
                KafkaRoute {
                    site: None,
                    sensor_prefix: Some("breaker".into()),
                    topic: "breakers".into(),
                    format: Some(RecordFormat::Json),
                },
                KafkaRoute {
                    site: Some("plant-*".into()),
                    sensor_prefix: None,
                    topic: "plants".into(),
                    format: None,
                },
            ],
            properties: Default::default(),
        };
        let header = |site: &str, sensor: &str| RecordHeader {
            site: site.into(),
            agent: "a".into(),
            epoch: Epoch(1),
            seq: Seq(1),
            clock_offset_ns: 0,
            received_ns: 0,
            samples: 0,
            sensors: vec![SensorInfo {
                id: SensorId(0),
                name: SensorName::new(sensor).unwrap_or_else(|e| panic!("{e}")),
                unit: String::new(),
                kind: SensorKind::State,
            }],
        };
        assert_eq!(
            route(&cfg, &header("substation-1", "breaker-3/state")),
            ("breakers", RecordFormat::Json)
        );
        assert_eq!(
            route(&cfg, &header("plant-9", "feeder/va")),
            ("plants", RecordFormat::Compact)
        );
        assert_eq!(
            route(&cfg, &header("substation-1", "feeder/va")),
            ("default", RecordFormat::Compact)
        );
    }

    #[test]
    fn globs_match_like_shells() {
        assert!(glob("substation-*", "substation-7"));
        assert!(!glob("substation-*", "plant-7"));
        assert!(glob("*", "anything"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abde"));
        assert!(glob("exact", "exact"));
        assert!(!glob("ab*ba", "aba"));
    }
}
