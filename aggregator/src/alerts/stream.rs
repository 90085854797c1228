//! What the stream outputs write, as pure code: the Redis stream entry
//! (`{stream_prefix}:alerts`) and the Kafka record (JSON, keyed by the alert's
//! fingerprint) of one notification, and which records of a batch to send again
//! after some failed. The drivers in `redis_stream.rs` and `kafka_topic.rs` move
//! the bytes.
//!
//! Both carry the same facts under the same names, as text a consumer in any
//! language reads without ferrule's code:
//!
//! | field | meaning |
//! | --- | --- |
//! | `state` | `firing` or `resolved` (`pending` and `inactive` are never written) |
//! | `rule`, `site`, `agent`, `sensor` | the alert series |
//! | `value` | the value that caused it |
//! | `severity` | `info`, `warning` or `critical` |
//! | `fingerprint` | the series' id, 16 hex digits |
//! | `episode` | `<fingerprint>-<start ns>`, the same in its `firing` and `resolved` |
//! | `ts_ns` | when the transition took effect (sample time), ns since the epoch |
//! | `annotation` | the rule's summary, rendered |
//! | `labels` | the rule's labels, a JSON object of strings |
//! | `quality` | the causing sample's quality (`good`, `uncertain`, `bad`) |
//!
//! Redis field values are all strings (`value` as Rust prints an `f64`: `180.5`,
//! `NaN`, `inf`; `labels` as JSON text); in the Kafka record `value` is a JSON
//! number (`null` when not finite) and `labels` an object.
//!
//! Delivery is at least once: a write whose answer was lost is written again,
//! and each aggregator that saw an episode writes its own copy (with a later
//! start if it missed the first). Readers do what rules/README.md asks of a
//! notifier: a `firing` for a fingerprint held open is the same incident, the
//! first `resolved` closes it, a `resolved` already seen (same `episode`) is a
//! repeat.

use super::notify::{Kind, Notification};
use ferrule_rules::Fingerprint;
use serde_json::{json, Value};
use std::sync::Arc;

/// Notifications per attempt (one pipeline, or records awaited together).
pub const MAX_BATCH: usize = 64;

/// The stream's name under `redis.stream_prefix`. Sites' streams are
/// `{prefix}:{site}` with literal braces, so no site's stream can be this one.
pub const REDIS_STREAM: &str = "alerts";

/// The alert stream's key for `prefix` (`ferrule:alerts`). A plain key: one
/// stream lives on one node of a Cluster wherever its slot is.
pub fn redis_stream_key(prefix: &str) -> String {
    format!("{prefix}:{REDIS_STREAM}")
}

/// The `state` field.
pub fn state(kind: Kind) -> &'static str {
    match kind {
        Kind::Firing => "firing",
        Kind::Resolved => "resolved",
    }
}

fn quality(n: &Notification) -> String {
    format!("{:?}", n.quality).to_lowercase()
}

/// The fields of `n`'s Redis stream entry, in the order written.
pub fn redis_fields(n: &Notification) -> Vec<(&'static str, String)> {
    vec![
        ("state", state(n.kind).to_string()),
        ("rule", n.rule.clone()),
        ("site", n.site.clone()),
        ("agent", n.agent.clone()),
        ("sensor", n.sensor.clone()),
        ("value", n.value.to_string()),
        ("severity", n.severity.to_string()),
        ("fingerprint", n.fingerprint.to_string()),
        ("episode", n.dedup_key()),
        ("ts_ns", n.ts_ns.to_string()),
        ("annotation", n.annotation.clone()),
        // A map of strings always serializes; "{}" is only a type-level fallback.
        (
            "labels",
            serde_json::to_string(&n.labels).unwrap_or_else(|_| "{}".into()),
        ),
        ("quality", quality(n)),
    ]
}

/// The Kafka record key of `n`: its fingerprint, so one alert's transitions
/// land in one partition, in order.
pub fn kafka_key(n: &Notification) -> String {
    n.fingerprint.to_string()
}

/// The Kafka record of `n`: one JSON object.
pub fn kafka_record(n: &Notification) -> Vec<u8> {
    let value = if n.value.is_finite() {
        json!(n.value)
    } else {
        Value::Null
    };
    json!({
        "state": state(n.kind),
        "rule": n.rule,
        "site": n.site,
        "agent": n.agent,
        "sensor": n.sensor,
        "value": value,
        "severity": n.severity,
        "fingerprint": n.fingerprint.to_string(),
        "episode": n.dedup_key(),
        "ts_ns": n.ts_ns,
        "annotation": n.annotation,
        "labels": n.labels,
        "quality": quality(n),
    })
    .to_string()
    .into_bytes()
}

/// After an attempt at `batch` in which the records marked in `failed` were not
/// delivered: what to send again, in order. For each fingerprint, everything
/// from its first failure on goes again, delivered or not, so the consumer
/// never sees a `resolved` before its `firing` is written (a repeat is the
/// price, and consumers drop repeats).
pub fn retry_after(batch: &[Arc<Notification>], failed: &[bool]) -> Vec<Arc<Notification>> {
    let mut broken: Vec<Fingerprint> = Vec::new();
    let mut out = Vec::new();
    for (i, n) in batch.iter().enumerate() {
        let failed_here = failed.get(i).copied().unwrap_or(true);
        if failed_here && !broken.contains(&n.fingerprint) {
            broken.push(n.fingerprint);
        }
        if broken.contains(&n.fingerprint) {
            out.push(n.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_rules::Episode;
    use std::collections::BTreeMap;

    fn note(kind: Kind, fp: u64) -> Notification {
        Notification {
            kind,
            ts_ns: 1_700_000_060_000_000_000,
            rule: "undervoltage".into(),
            site: "substation-7".into(),
            agent: "rtu-3".into(),
            sensor: "feed/va".into(),
            value: 180.5,
            fingerprint: Fingerprint(fp),
            episode: Episode {
                fingerprint: Fingerprint(fp),
                started_ns: 1_700_000_001_000_000_000,
            },
            severity: "critical",
            labels: BTreeMap::from([("team".into(), "grid \"ops\"".into())]),
            annotation: "feed/va at substation-7: 180.5 V".into(),
            quality: ferrule_wire::Quality::Good,
        }
    }

    #[test]
    fn redis_fields_are_text_any_reader_parses() {
        let f: BTreeMap<_, _> = redis_fields(&note(Kind::Firing, 0xab))
            .into_iter()
            .collect();
        assert_eq!(f["state"], "firing");
        assert_eq!(f["value"], "180.5");
        assert_eq!(f["fingerprint"], "00000000000000ab");
        assert_eq!(f["episode"], "00000000000000ab-1700000001000000000");
        assert_eq!(f["ts_ns"], "1700000060000000000");
        assert_eq!(f["quality"], "good");
        let labels: Value = serde_json::from_str(&f["labels"]).unwrap_or_default();
        assert_eq!(labels, json!({"team": "grid \"ops\""}));
        assert_eq!(f.len(), 13);
        let mut nan = note(Kind::Resolved, 1);
        nan.value = f64::NAN;
        let f: BTreeMap<_, _> = redis_fields(&nan).into_iter().collect();
        assert_eq!(
            (f["state"].as_str(), f["value"].as_str()),
            ("resolved", "NaN")
        );
    }

    #[test]
    fn kafka_record_is_one_json_object_keyed_by_fingerprint() {
        let n = note(Kind::Resolved, 0xab);
        assert_eq!(kafka_key(&n), "00000000000000ab");
        let v: Value = serde_json::from_slice(&kafka_record(&n)).unwrap_or_default();
        assert_eq!(
            v,
            json!({
                "state": "resolved",
                "rule": "undervoltage",
                "site": "substation-7",
                "agent": "rtu-3",
                "sensor": "feed/va",
                "value": 180.5,
                "severity": "critical",
                "fingerprint": "00000000000000ab",
                "episode": "00000000000000ab-1700000001000000000",
                "ts_ns": 1_700_000_060_000_000_000_i64,
                "annotation": "feed/va at substation-7: 180.5 V",
                "labels": {"team": "grid \"ops\""},
                "quality": "good",
            })
        );
        let mut inf = n;
        inf.value = f64::INFINITY;
        let v: Value = serde_json::from_slice(&kafka_record(&inf)).unwrap_or_default();
        assert_eq!(v["value"], Value::Null, "JSON has no infinity");
    }

    #[test]
    fn stream_key_cannot_be_a_sites() {
        assert_eq!(redis_stream_key("ferrule"), "ferrule:alerts");
        assert_ne!(
            redis_stream_key("ferrule"),
            crate::fanout::stream_key("ferrule", "alerts")
        );
    }

    #[test]
    fn a_failure_resends_the_rest_of_its_alert_only() {
        let b: Vec<Arc<Notification>> = vec![
            note(Kind::Firing, 1).into(),
            note(Kind::Firing, 2).into(),
            note(Kind::Resolved, 1).into(),
            note(Kind::Resolved, 2).into(),
        ];
        // 1's firing failed, its resolved got through: both go again, in order;
        // 2 is done.
        let r = retry_after(&b, &[true, false, false, false]);
        let got: Vec<(u64, Kind)> = r.iter().map(|n| (n.fingerprint.0, n.kind)).collect();
        assert_eq!(got, vec![(1, Kind::Firing), (1, Kind::Resolved)]);
        // Only 2's resolved failed.
        let r = retry_after(&b, &[false, false, false, true]);
        assert_eq!(r.len(), 1);
        assert!(Arc::ptr_eq(&r[0], &b[3]));
        assert!(retry_after(&b, &[false; 4]).is_empty());
        // A missing verdict counts as failed.
        assert_eq!(retry_after(&b, &[]).len(), 4);
    }
}
