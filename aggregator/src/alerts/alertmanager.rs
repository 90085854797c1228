//! Prometheus Alertmanager, API v2: `POST <url>/api/v2/alerts` with a JSON array of
//! alerts. The payload is built here as pure code; the task in `mod.rs` sends it.
//!
//! Alertmanager identifies an alert by its label set, so the labels hold only
//! what names the alert series and is the same from every aggregator: the rule
//! (`alertname`), `severity`, `site`, `agent`, `sensor`, `fingerprint` and the
//! rule's labels; never the aggregator's name, nor the episode (two aggregators
//! that saw an episode start at different samples still make one alert). The
//! episode, the summary and the value are annotations. `startsAt` is the episode's
//! start (sample time), the same on every resend; a firing alert's `endsAt` is
//! four resend intervals ahead, as Prometheus does, so an aggregator that vanishes
//! lets its alerts resolve; a resolved alert's `endsAt` is the time it resolved.

use super::notify::{rfc3339, Kind, Notification};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Alerts per POST (Prometheus sends 64 at most, too).
pub const MAX_BATCH: usize = 64;

/// The path alerts are POSTed to, under the configured base URL.
pub const PATH: &str = "/api/v2/alerts";

/// Prometheus' rule for label names (`[a-zA-Z_][a-zA-Z0-9_]*`): Alertmanager
/// refuses a whole batch for one bad name, so others' characters become `_`.
fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The label set of `n`'s alert: identical for the same series from any
/// aggregator. The series' own labels win over a rule label of the same name;
/// labels with empty values are left out (in Prometheus' model they are absent).
pub fn labels(n: &Notification) -> Map<String, Value> {
    let mut m = Map::new();
    let fingerprint = n.fingerprint.to_string();
    let own = [
        ("alertname", n.rule.as_str()),
        ("severity", n.severity),
        ("site", n.site.as_str()),
        ("agent", n.agent.as_str()),
        ("sensor", n.sensor.as_str()),
        ("fingerprint", fingerprint.as_str()),
    ];
    for (k, v) in &n.labels {
        if !v.is_empty() {
            m.insert(label_name(k), Value::String(v.clone()));
        }
    }
    for (k, v) in own {
        if v.is_empty() {
            m.remove(k);
        } else {
            m.insert(k.to_string(), Value::String(v.to_string()));
        }
    }
    m
}

/// One alert of the v2 API for `n`, sent at wall time `now_ns`.
pub fn alert(n: &Notification, now_ns: i64, resend: Duration) -> Value {
    let starts = n.episode.started_ns;
    let ends = match n.kind {
        Kind::Firing => {
            let ahead = i64::try_from(resend.saturating_mul(4).as_nanos()).unwrap_or(i64::MAX);
            now_ns.saturating_add(ahead)
        }
        Kind::Resolved => n.ts_ns,
    }
    // Alertmanager refuses an alert that ends before it starts (an agent clock
    // ahead of ours could cause that).
    .max(starts);
    json!({
        "labels": labels(n),
        "annotations": {
            "summary": n.annotation,
            "value": n.value.to_string(),
            "episode": n.dedup_key(),
        },
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
    })
}

/// The body of one POST: the alerts of `batch` as a JSON array.
pub fn body(batch: &[std::sync::Arc<Notification>], now_ns: i64, resend: Duration) -> Vec<u8> {
    let v = Value::Array(batch.iter().map(|n| alert(n, now_ns, resend)).collect());
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_rules::{Episode, Fingerprint};
    use std::collections::BTreeMap;

    fn note(kind: Kind) -> Notification {
        let fp = Fingerprint::of("undervoltage", "substation-7", "rtu-3", "feed/va");
        Notification {
            kind,
            ts_ns: 1_700_000_060_000_000_000,
            rule: "undervoltage".into(),
            site: "substation-7".into(),
            agent: "rtu-3".into(),
            sensor: "feed/va".into(),
            value: 180.5,
            fingerprint: fp,
            episode: Episode {
                fingerprint: fp,
                started_ns: 1_700_000_001_000_000_000,
            },
            severity: "critical",
            labels: BTreeMap::from([
                ("team".into(), "grid".into()),
                ("site".into(), "spoofed".into()),
                ("bad-name".into(), "x".into()),
                ("empty".into(), String::new()),
            ]),
            annotation: "feed/va at substation-7: 180.5 V".into(),
            quality: ferrule_wire::Quality::Good,
        }
    }

    #[test]
    fn firing_alert_has_the_v2_field_names_and_stable_labels() {
        // 22:14:30; endsAt four 60 s intervals later.
        let now = 1_700_000_070_000_000_000;
        let v = alert(&note(Kind::Firing), now, Duration::from_secs(60));
        let fp = note(Kind::Firing).fingerprint.to_string();
        assert_eq!(
            v,
            json!({
                "labels": {
                    "alertname": "undervoltage",
                    "severity": "critical",
                    "site": "substation-7",
                    "agent": "rtu-3",
                    "sensor": "feed/va",
                    "fingerprint": fp,
                    "team": "grid",
                    "bad_name": "x",
                },
                "annotations": {
                    "summary": "feed/va at substation-7: 180.5 V",
                    "value": "180.5",
                    "episode": format!("{fp}-1700000001000000000"),
                },
                "startsAt": "2023-11-14T22:13:21.000000000Z",
                "endsAt": "2023-11-14T22:18:30.000000000Z",
            })
        );
    }

    #[test]
    fn resolved_alert_ends_when_it_resolved_with_the_same_start() {
        let v = alert(&note(Kind::Resolved), 0, Duration::from_secs(60));
        assert_eq!(v["startsAt"], "2023-11-14T22:13:21.000000000Z");
        assert_eq!(v["endsAt"], "2023-11-14T22:14:20.000000000Z");
        let mut early = note(Kind::Resolved);
        early.ts_ns = 0;
        let v = alert(&early, 0, Duration::from_secs(60));
        assert_eq!(v["endsAt"], v["startsAt"], "never ends before it starts");
    }

    #[test]
    fn body_is_an_array() {
        let b = body(
            &[note(Kind::Firing).into(), note(Kind::Resolved).into()],
            0,
            Duration::from_secs(1),
        );
        let v: Value = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(v.as_array().map(Vec::len), Some(2));
    }
}
