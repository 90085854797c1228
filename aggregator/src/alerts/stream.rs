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
//! A Redis entry also names the aggregator that wrote it (`aggregator`, see
//! [`super::page_group`]).
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
use ferrule_wire::Quality;
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

/// Why a Redis alert entry could not be read back into a [`Notification`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alert entry field {field}: {why}")]
pub struct FieldError {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: String,
}

/// Reads back an entry written with [`redis_fields`] (a delivering consumer
/// group reads the stream it feeds). Unknown fields are ignored, so a newer
/// writer's additions do not stop an older reader.
pub fn from_redis_fields<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Notification, FieldError> {
    let map: std::collections::HashMap<&str, &str> = fields.into_iter().collect();
    let get = |field: &'static str| -> Result<&str, FieldError> {
        map.get(field).copied().ok_or(FieldError {
            field,
            why: "missing".into(),
        })
    };
    let bad = |field: &'static str, why: String| FieldError { field, why };
    let kind = match get("state")? {
        "firing" => Kind::Firing,
        "resolved" => Kind::Resolved,
        other => {
            return Err(bad(
                "state",
                format!("{other:?} is neither firing nor resolved"),
            ))
        }
    };
    let fp_text = get("fingerprint")?;
    let fingerprint = u64::from_str_radix(fp_text, 16)
        .ok()
        .filter(|_| fp_text.len() == 16)
        .map(Fingerprint)
        .ok_or_else(|| bad("fingerprint", format!("{fp_text:?} is not 16 hex digits")))?;
    let episode_text = get("episode")?;
    let started_ns = episode_text
        .strip_prefix(fp_text)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|n| n.parse::<i64>().ok())
        .ok_or_else(|| {
            bad(
                "episode",
                format!("{episode_text:?} is not <fingerprint>-<start ns>"),
            )
        })?;
    let severity = match get("severity")? {
        "info" => "info",
        "warning" => "warning",
        "critical" => "critical",
        other => {
            return Err(bad(
                "severity",
                format!("{other:?} is not info, warning or critical"),
            ))
        }
    };
    let quality = match get("quality")? {
        "good" => Quality::Good,
        "uncertain" => Quality::Uncertain,
        "bad" => Quality::Bad,
        other => {
            return Err(bad(
                "quality",
                format!("{other:?} is not good, uncertain or bad"),
            ))
        }
    };
    let value_text = get("value")?;
    let value = value_text
        .parse::<f64>()
        .map_err(|e| bad("value", format!("{value_text:?}: {e}")))?;
    let ts_text = get("ts_ns")?;
    let ts_ns = ts_text
        .parse::<i64>()
        .map_err(|e| bad("ts_ns", format!("{ts_text:?}: {e}")))?;
    let labels = serde_json::from_str(get("labels")?).map_err(|e| bad("labels", e.to_string()))?;
    Ok(Notification {
        kind,
        ts_ns,
        rule: get("rule")?.to_string(),
        site: get("site")?.to_string(),
        agent: get("agent")?.to_string(),
        sensor: get("sensor")?.to_string(),
        value,
        fingerprint,
        episode: ferrule_rules::Episode {
            fingerprint,
            started_ns,
        },
        severity,
        labels,
        annotation: get("annotation")?.to_string(),
        quality,
    })
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
    fn redis_fields_read_back_into_the_same_notification() {
        for kind in [Kind::Firing, Kind::Resolved] {
            let n = note(kind, 0xab);
            let fields = redis_fields(&n);
            let back = from_redis_fields(fields.iter().map(|(k, v)| (*k, v.as_str())))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, n);
        }
        let n = note(Kind::Firing, 0xab);
        let mut fields = redis_fields(&n);
        fields.retain(|(k, _)| *k != "episode");
        let e = from_redis_fields(fields.iter().map(|(k, v)| (*k, v.as_str())));
        assert_eq!(e.map_err(|e| e.field), Err("episode"));
        let mut fields = redis_fields(&n);
        for f in &mut fields {
            if f.0 == "episode" {
                f.1 = "00000000000000ff-12".into();
            }
        }
        let e = from_redis_fields(fields.iter().map(|(k, v)| (*k, v.as_str())));
        assert_eq!(
            e.map_err(|e| e.field),
            Err("episode"),
            "another alert's episode"
        );
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
