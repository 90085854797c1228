//! Kafka consumer groups as stages (`kafka:<group>`), for the sampler: for
//! each group in `sampler.kafka_groups`, the topics' high watermarks summed
//! (items appended) against the group's committed offsets summed (items
//! consumed), over the topics the aggregator writes (`kafka.topic` and the
//! routes' topics) on which the group has committed anything. A group that
//! has committed nothing yet is read on `kafka.topic` from its low watermark
//! (what retention still holds is what it would read).
//!
//! Blocking (librdkafka's metadata, watermark and committed-offset requests,
//! each bounded by a timeout): the sampler runs it on a blocking thread.

use crate::config::KafkaSection;
use ferrule_signals::StageSample;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

/// Partitions read per topic at most (a bound on the requests per period).
const MAX_PARTITIONS: usize = 1024;

/// One consumer per watched group (committed offsets are asked as the group).
pub struct KafkaStages {
    groups: Vec<(String, BaseConsumer)>,
    topics: Vec<String>,
    timeout: Duration,
}

impl KafkaStages {
    /// Clients for `groups` on `cfg`'s brokers (the same TLS and SASL
    /// properties as the producer). Connects lazily: nothing is asked here.
    pub fn new(cfg: &KafkaSection, groups: &[String], timeout: Duration) -> anyhow::Result<Self> {
        let mut topics = vec![cfg.topic.clone()];
        for r in &cfg.routes {
            if !topics.contains(&r.topic) {
                topics.push(r.topic.clone());
            }
        }
        let mut out = Vec::new();
        for g in groups {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", &cfg.brokers)
                .set("group.id", g)
                .set("enable.auto.commit", "false")
                .set("client.id", format!("{}-sampler", cfg.client_id));
            crate::kafka::pass_through(&mut c, cfg)?;
            out.push((g.clone(), c.create()?));
        }
        Ok(Self {
            groups: out,
            topics,
            timeout,
        })
    }

    /// Whether any group is watched.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every watched group's stage now; a group Kafka does not answer for is
    /// left out (and named in the error list).
    pub fn read(&self) -> (Vec<StageSample>, Vec<String>) {
        let mut errors = Vec::new();
        let Some((_, meta_client)) = self.groups.first() else {
            return (Vec::new(), errors);
        };
        // Watermarks per (topic, partition), once for every group.
        let mut marks: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
        for t in &self.topics {
            let md = match meta_client.fetch_metadata(Some(t), self.timeout) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(format!("metadata of {t}: {e}"));
                    continue;
                }
            };
            for mt in md.topics() {
                for p in mt.partitions().iter().take(MAX_PARTITIONS) {
                    match meta_client.fetch_watermarks(t, p.id(), self.timeout) {
                        Ok((lo, hi)) => {
                            marks.insert((t.clone(), p.id()), (lo.max(0), hi.max(0)));
                        }
                        Err(e) => errors.push(format!("watermarks of {t}/{}: {e}", p.id())),
                    }
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in marks.keys() {
            tpl.add_partition(t, *p);
        }
        let mut out = Vec::new();
        for (group, c) in &self.groups {
            let committed = match c.committed_offsets(tpl.clone(), self.timeout) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(format!("committed offsets of {group}: {e}"));
                    continue;
                }
            };
            let mut per_topic: BTreeMap<&str, (u64, u64, bool)> = BTreeMap::new();
            for e in committed.elements() {
                let Some(&(lo, hi)) = marks.get(&(e.topic().to_string(), e.partition())) else {
                    continue;
                };
                let (pos, known) = match e.offset() {
                    // A committed offset beyond the head (a topic recreated)
                    // counts as caught up; below the low watermark, as the
                    // low watermark (deleted by retention: not waiting).
                    Offset::Offset(o) => (o.clamp(lo, hi), true),
                    _ => (lo, false),
                };
                let t = per_topic
                    .entry(self.topic_name(e.topic()))
                    .or_insert((0, 0, false));
                t.0 = t.0.saturating_add(u64::try_from(hi).unwrap_or(0));
                t.1 = t.1.saturating_add(u64::try_from(pos).unwrap_or(0));
                t.2 |= known;
            }
            let any_known = per_topic.values().any(|t| t.2);
            let (mut head, mut position) = (0u64, 0u64);
            for (t, (h, p, known)) in &per_topic {
                if *known || (!any_known && *t == self.topics[0].as_str()) {
                    head = head.saturating_add(*h);
                    position = position.saturating_add(*p);
                }
            }
            if per_topic.is_empty() {
                continue;
            }
            out.push(StageSample {
                stage: format!("kafka:{group}"),
                head,
                position,
            });
        }
        (out, errors)
    }

    fn topic_name<'a>(&'a self, t: &str) -> &'a str {
        self.topics
            .iter()
            .find(|x| x.as_str() == t)
            .map_or("", String::as_str)
    }
}
