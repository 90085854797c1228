//! PagerDuty Events API v2: one `POST` per event, `trigger` on firing and
//! `resolve` on resolved, both with the same `dedup_key` (the episode,
//! `<fingerprint>-<start ns>`), which any aggregator that saw the episode begin
//! computes identically, so PagerDuty opens one incident for it. The event is
//! built here as pure code; the task in `mod.rs` sends it.

use super::notify::{rfc3339, Kind, Notification};
use serde_json::{json, Value};

/// PagerDuty's Events API v2 endpoint (`alerts.pagerduty.url`'s default).
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// PagerDuty refuses summaries longer than this many characters.
pub const MAX_SUMMARY: usize = 1024;

/// The rule's severity as PagerDuty spells it (`critical`, `error`, `warning`,
/// `info`); ferrule's rules have no `error`, and anything unknown pages as
/// `critical` rather than be refused.
pub fn severity(s: &str) -> &'static str {
    match s {
        "info" => "info",
        "warning" => "warning",
        _ => "critical",
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => s[..at].to_string(),
        None => s.to_string(),
    }
}

/// The event for `n`. A `resolve` carries only what the API reads from one
/// (routing key, action, dedup key); a `trigger` carries the payload.
pub fn event(n: &Notification, routing_key: &str) -> Value {
    match n.kind {
        Kind::Resolved => json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": n.dedup_key(),
        }),
        Kind::Firing => {
            let source = if n.agent.is_empty() {
                n.site.clone()
            } else {
                format!("{}/{}", n.site, n.agent)
            };
            json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": n.dedup_key(),
                "payload": {
                    "summary": truncate(&n.annotation, MAX_SUMMARY),
                    "source": source,
                    "severity": severity(n.severity),
                    "timestamp": rfc3339(n.ts_ns),
                    "component": n.sensor,
                    "group": n.site,
                    "class": n.rule,
                    "custom_details": {
                        "rule": n.rule,
                        "site": n.site,
                        "agent": n.agent,
                        "sensor": n.sensor,
                        "value": n.value.to_string(),
                        "quality": format!("{:?}", n.quality).to_lowercase(),
                        "fingerprint": n.fingerprint.to_string(),
                        "episode": n.dedup_key(),
                        "labels": n.labels,
                    },
                },
                "client": "ferrule",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_rules::{Episode, Fingerprint};

    fn note(kind: Kind) -> Notification {
        Notification {
            kind,
            ts_ns: 1_700_000_001_100_000_000,
            rule: "undervoltage".into(),
            site: "substation-7".into(),
            agent: "rtu-3".into(),
            sensor: "feed/va".into(),
            value: 180.0,
            fingerprint: Fingerprint(0xab),
            episode: Episode {
                fingerprint: Fingerprint(0xab),
                started_ns: 1_700_000_001_000_000_000,
            },
            severity: "warning",
            labels: [("team".to_string(), "grid".to_string())].into(),
            annotation: "é".repeat(2000),
            quality: ferrule_wire::Quality::Uncertain,
        }
    }

    #[test]
    fn trigger_has_the_events_v2_fields() {
        let v = event(&note(Kind::Firing), "KEY");
        assert_eq!(v["routing_key"], "KEY");
        assert_eq!(v["event_action"], "trigger");
        assert_eq!(v["dedup_key"], "00000000000000ab-1700000001000000000");
        let p = &v["payload"];
        assert_eq!(p["summary"].as_str().map(|s| s.chars().count()), Some(1024));
        assert_eq!(p["source"], "substation-7/rtu-3");
        assert_eq!(p["severity"], "warning");
        assert_eq!(p["timestamp"], "2023-11-14T22:13:21.100000000Z");
        assert_eq!(p["custom_details"]["labels"]["team"], "grid");
        assert_eq!(p["custom_details"]["quality"], "uncertain");
    }

    #[test]
    fn resolve_has_the_same_dedup_key_and_nothing_else() {
        let t = event(&note(Kind::Firing), "KEY");
        let r = event(&note(Kind::Resolved), "KEY");
        assert_eq!(
            r,
            json!({"routing_key": "KEY", "event_action": "resolve", "dedup_key": t["dedup_key"]})
        );
    }

    #[test]
    fn severities_map_into_the_allowed_set() {
        assert_eq!(severity("info"), "info");
        assert_eq!(severity("warning"), "warning");
        assert_eq!(severity("critical"), "critical");
        assert_eq!(severity("whatever"), "critical");
    }
}
