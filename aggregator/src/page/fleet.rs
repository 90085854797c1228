//! One agents table and one alerts list on every aggregator's page: with
//! Redis, each aggregator writes its own local state (its agents, the alerts
//! it evaluated) every second to the hash `{prefix}:{sampler}:pages` (field:
//! its instance, value: `<unix ms> <json>`) and reads everyone's back, so a
//! viewer on any aggregator sees the whole fleet. A report older than
//! [`STALE`] is left out (an aggregator gone), one older than [`GONE`]
//! deleted. Bounded: [`MAX_PEERS`] aggregators, [`MAX_REPORT_BYTES`] each.
//! Redis down: the page shows this aggregator's own state and says so.

use super::Local;
use crate::fanout::redis::{connection_lost, fields, text, timed_out, Conn, Target};
use std::collections::BTreeMap;
use std::time::Duration;

/// A report older than this is not shown.
pub const STALE: Duration = Duration::from_secs(15);
/// A report older than this is deleted.
pub const GONE: Duration = Duration::from_secs(120);
/// Aggregators merged at most.
pub const MAX_PEERS: usize = 64;
/// A report larger than this is skipped.
pub const MAX_REPORT_BYTES: usize = 2 << 20;
/// Agents in the merged table at most.
pub const MAX_AGENTS: usize = 2000;
/// Active alerts in the merged list at most.
pub const MAX_ACTIVE: usize = 1000;
/// Recent transitions in the merged list.
pub const RECENT: usize = 50;

/// The exchange with Redis.
pub struct Fleet {
    target: Target,
    conn: Option<Conn>,
    key: String,
    timeout: Duration,
}

impl Fleet {
    /// For `cfg`'s Redis.
    pub fn new(cfg: &crate::config::RedisSection) -> Result<Self, crate::fanout::FanoutError> {
        Ok(Self {
            target: crate::fanout::redis::target(cfg)?,
            conn: None,
            key: format!("{}:{{sampler}}:pages", cfg.stream_prefix),
            timeout: Duration::from_millis(cfg.response_timeout_ms.max(1)),
        })
    }

    /// Writes `mine` and reads the others' (fresh ones only).
    pub async fn exchange(&mut self, mine: &Local, now_ms: i64) -> redis::RedisResult<Vec<Local>> {
        let mut conn = match &self.conn {
            Some(c) => c.clone(),
            None => {
                let c = tokio::time::timeout(self.timeout * 2, self.target.connect())
                    .await
                    .map_err(|_| timed_out())??;
                self.conn = Some(c.clone());
                c
            }
        };
        let json = serde_json::to_string(mine).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&self.key)
            .arg(&mine.aggregator)
            .arg(format!("{now_ms} {json}"))
            .ignore()
            .cmd("HGETALL")
            .arg(&self.key);
        let r = tokio::time::timeout(self.timeout, conn.pipe(&pipe))
            .await
            .map_err(|_| timed_out())
            .and_then(|r| r);
        let v = match r {
            Ok(v) => v,
            Err(e) => {
                if connection_lost(&e) || e.is_timeout() {
                    self.conn = None;
                }
                if e.code() == Some("WRONGTYPE") {
                    // Not ours: replaced next time.
                    let _ = conn.cmd(redis::cmd("DEL").arg(&self.key)).await;
                }
                return Err(e);
            }
        };
        let all = crate::fanout::redis::items(&v)
            .first()
            .cloned()
            .unwrap_or(redis::Value::Nil);
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (name, value) in fields(&all) {
            if name == mine.aggregator {
                continue;
            }
            let Some(value) = text(value) else {
                gone.push(name);
                continue;
            };
            let Some((ms, body)) = value.split_once(' ') else {
                gone.push(name);
                continue;
            };
            let Ok(ms) = ms.parse::<i64>() else {
                gone.push(name);
                continue;
            };
            let age = now_ms.saturating_sub(ms).unsigned_abs();
            if age > GONE.as_millis() as u64 {
                gone.push(name);
                continue;
            }
            if age > STALE.as_millis() as u64
                || body.len() > MAX_REPORT_BYTES
                || out.len() >= MAX_PEERS
            {
                continue;
            }
            if let Ok(l) = serde_json::from_str::<Local>(body) {
                out.push(l);
            }
        }
        if !gone.is_empty() {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(&self.key);
            for g in gone.iter().take(1000) {
                cmd.arg(g);
            }
            let _ = tokio::time::timeout(self.timeout, conn.cmd(&cmd)).await;
        }
        Ok(out)
    }
}

fn alert_key(a: &super::AlertView) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        a.rule, a.site, a.agent, a.sensor
    )
}

/// This aggregator's state merged with the others': every agent once (a
/// connected session first, then the newest), each with the aggregator it is
/// on; every firing alert once (the newest); the newest transitions.
pub fn merge(mut mine: Local, others: Vec<Local>) -> Local {
    for a in &mut mine.agents {
        a.via.clone_from(&mine.aggregator);
    }
    let mut agents: BTreeMap<String, crate::agents::AgentView> = BTreeMap::new();
    let mut active: BTreeMap<String, super::AlertView> = BTreeMap::new();
    let mut recent: Vec<super::AlertView> = Vec::new();
    let mut aggregators = vec![mine.aggregator.clone()];
    let all = std::iter::once(std::mem::take(&mut mine.agents)).chain(others.iter().map(|o| {
        o.agents
            .iter()
            .cloned()
            .map(|mut a| {
                a.via.clone_from(&o.aggregator);
                a
            })
            .collect()
    }));
    for list in all {
        for a in list {
            let better = match agents.get(&a.key) {
                None => true,
                Some(b) => (a.connected, a.since_ms) > (b.connected, b.since_ms),
            };
            if better {
                agents.insert(a.key.clone(), a);
            }
        }
    }
    for l in std::iter::once(&mine).chain(others.iter()) {
        for a in &l.alerts_active {
            let k = alert_key(a);
            if active.get(&k).is_none_or(|b| a.ts_ms > b.ts_ms) {
                active.insert(k, a.clone());
            }
        }
        recent.extend(l.alerts_recent.iter().cloned());
    }
    for o in &others {
        if !aggregators.contains(&o.aggregator) {
            aggregators.push(o.aggregator.clone());
        }
    }
    recent.sort_by(|a, b| {
        b.ts_ms
            .cmp(&a.ts_ms)
            .then_with(|| alert_key(a).cmp(&alert_key(b)))
    });
    recent
        .dedup_by(|a, b| a.ts_ms == b.ts_ms && a.state == b.state && alert_key(a) == alert_key(b));
    recent.truncate(RECENT);
    let mut agents: Vec<_> = agents.into_values().collect();
    agents.sort_by(|a, b| b.connected.cmp(&a.connected).then(a.key.cmp(&b.key)));
    agents.truncate(MAX_AGENTS);
    let mut active: Vec<_> = active.into_values().collect();
    active.truncate(MAX_ACTIVE);
    mine.agents_connected = agents.iter().filter(|a| a.connected).count();
    mine.agents = agents;
    mine.alerts_active = active;
    mine.alerts_recent = recent;
    mine.aggregators = aggregators;
    mine
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::AgentView;

    fn agent(key: &str, connected: bool, since_ms: i64) -> AgentView {
        AgentView {
            key: key.into(),
            site: "s".into(),
            agent: key.into(),
            connected,
            since_ms,
            remote: String::new(),
            serial: String::new(),
            cert_days_left: 1.0,
            clock_offset_ms: None,
            batches: 0,
            spool_batches: None,
            spool_bytes: None,
            oldest_unacked_s: None,
            via: String::new(),
        }
    }

    fn alert(sensor: &str, state: &str, ts_ms: i64) -> super::super::AlertView {
        super::super::AlertView {
            rule: "r".into(),
            site: "s".into(),
            agent: "a".into(),
            sensor: sensor.into(),
            state: state.into(),
            severity: "critical".into(),
            value: 1.0,
            annotation: String::new(),
            ts_ms,
        }
    }

    fn local(name: &str, agents: Vec<AgentView>, active: Vec<super::super::AlertView>) -> Local {
        Local {
            aggregator: name.into(),
            ts_ms: 0,
            alerts_recent: active.clone(),
            alerts_active: active,
            agents,
            agents_connected: 0,
            aggregators: Vec::new(),
            fleet_error: None,
        }
    }

    #[test]
    fn every_agent_once_on_the_aggregator_it_is_connected_to() {
        let a = local(
            "agg-a",
            vec![agent("x", false, 50), agent("y", true, 10)],
            vec![],
        );
        let b = local("agg-b", vec![agent("x", true, 40)], vec![]);
        let m = merge(a, vec![b]);
        assert_eq!(m.aggregators, ["agg-a", "agg-b"]);
        assert_eq!(m.agents.len(), 2);
        assert_eq!(m.agents_connected, 2);
        let x = m
            .agents
            .iter()
            .find(|a| a.key == "x")
            .map(|a| a.via.clone());
        assert_eq!(x.as_deref(), Some("agg-b"), "the connected session wins");
    }

    #[test]
    fn every_alert_once_newest_transitions_first() {
        let a = local("agg-a", vec![], vec![alert("v1", "firing", 10)]);
        let b = local(
            "agg-b",
            vec![],
            vec![alert("v1", "firing", 20), alert("v2", "firing", 5)],
        );
        let m = merge(a, vec![b]);
        assert_eq!(m.alerts_active.len(), 2);
        assert_eq!(m.alerts_recent.first().map(|a| a.ts_ms), Some(20));
        assert_eq!(m.alerts_recent.len(), 3);
    }
}
