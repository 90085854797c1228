//! The Kafka output: each notification is one JSON record
//! ([`super::stream::kafka_record`]) on `alerts.kafka_topic`, keyed by the
//! alert's fingerprint so one alert's `firing` and `resolved` stay in one
//! partition, in order.
//!
//! It has a producer of its own rather than the sink's. The sink's producer is
//! tuned for the durable path (a 256 MiB queue, a 300 s `message.timeout.ms`,
//! the credit and readiness logic watching what is outstanding): alert records
//! stuck there for a missing topic would hold its queue and, for librdkafka,
//! count as the sink's outstanding records. Its own producer (the same brokers
//! and `[kafka.properties]`, so the same TLS and SASL) keeps the two apart at
//! the cost of a second set of broker connections. It is idempotent with
//! `acks=all` too, so librdkafka's own retries neither lose nor reorder a key's
//! records.

use super::notify::Notification;
use super::stream::{kafka_key, kafka_record, retry_after};
use super::Outcome;
use crate::config::KafkaSection;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;

/// Extra time, beyond `message.timeout.ms`, to wait for librdkafka's verdict
/// before calling an attempt failed.
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// One alert topic and its producer.
pub(super) struct KafkaTopic {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaTopic {
    /// The output writing to `topic` on `cfg`'s brokers, each attempt given up
    /// by librdkafka after `timeout_ms`. Creating the producer contacts no
    /// broker: brokers down at start are attempts that fail later.
    pub(super) fn new(cfg: &KafkaSection, topic: String, timeout_ms: u64) -> anyhow::Result<Self> {
        let timeout_ms = timeout_ms.max(1000);
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &cfg.compression)
            .set("linger.ms", "5")
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("client.id", format!("{}-alerts", cfg.client_id));
        crate::kafka::pass_through(&mut c, cfg)?;
        Ok(Self {
            producer: c.create()?,
            topic,
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    /// The topic.
    pub(super) fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces every record of `batch`, then waits for each delivery report.
    /// What failed (and, per alert, what followed it) is to be sent again.
    pub(super) async fn attempt(&self, batch: &[Arc<Notification>]) -> Outcome {
        let mut reports = Vec::with_capacity(batch.len());
        for n in batch {
            let key = kafka_key(n);
            let payload = kafka_record(n);
            let rec = FutureRecord::to(&self.topic)
                .key(key.as_bytes())
                .payload(payload.as_slice());
            // Not waiting on a full librdkafka queue: a failure, retried later.
            reports.push(self.producer.send_result(rec).map_err(|(e, _)| e));
        }
        let deadline = tokio::time::Instant::now() + self.timeout + REPORT_GRACE;
        let mut failed = Vec::with_capacity(batch.len());
        let mut why: Option<KafkaError> = None;
        let mut unanswered = false;
        for r in reports {
            let ok = match r {
                Ok(f) => match tokio::time::timeout_at(deadline, f).await {
                    Ok(Ok(Ok(_))) => true,
                    Ok(Ok(Err((e, _)))) => {
                        why.get_or_insert(e);
                        false
                    }
                    // The producer went away (shutdown) or never reported.
                    Ok(Err(_)) | Err(_) => {
                        unanswered = true;
                        false
                    }
                },
                Err(e) => {
                    why.get_or_insert(e);
                    false
                }
            };
            failed.push(!ok);
        }
        if !failed.contains(&true) {
            return Outcome::Delivered;
        }
        let why = match why {
            Some(e) => format!("topic {:?}: {e}", self.topic),
            None if unanswered => format!(
                "topic {:?}: no delivery report within {} ms",
                self.topic,
                (self.timeout + REPORT_GRACE).as_millis()
            ),
            None => format!("topic {:?}: not delivered", self.topic),
        };
        Outcome::Retry {
            why,
            again: retry_after(batch, &failed),
        }
    }
}
