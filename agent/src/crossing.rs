//! The crossing fast path: the agent runs the aggregator's alert rules over what
//! its inputs read, only to decide when a batch must leave at once.
//!
//! A batch waits up to `batch.max_delay_ms` (50 ms by default) for company, which
//! alone is more than the 10 ms operators allow from a sensor's reading to a page.
//! With `[alerts] rules` set, every sample is also fed to the same pure engine the
//! aggregator pages from (`ferrule-rules`); when one makes an alert fire or
//! resolve, the batcher cuts the batch holding it, syncs the spool and the uplink
//! sends it, without waiting for the window. The aggregator evaluates the batch
//! itself and pages: the agent's engine only picks the moment, so a rules file
//! that differs between the two costs latency, never a wrong page.
//!
//! Steady-state cost: one engine step per sample (a hash lookup per series and
//! each matching rule's state machine); no batch is cut early unless an alert
//! fires or resolves. Cuts are counted in
//! `ferrule_agent_alert_flushes_total`.

use crate::catalog::Catalog;
use ferrule_rules::{Engine, RuleSet, State};
use ferrule_telemetry::{Counter, Registry};
use ferrule_wire::{SensorId, SensorName, Series};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The agent's copy of the rules, fed every sample the batcher takes.
pub struct Crossings {
    engine: Engine,
    site: String,
    agent: String,
    names: HashMap<SensorId, SensorName>,
    catalog: Arc<Mutex<Catalog>>,
    flushes: Counter,
}

impl Crossings {
    /// Evaluates `rules` for this agent; sensor names come from `catalog`.
    pub fn new(
        rules: RuleSet,
        site: &str,
        agent: &str,
        catalog: Arc<Mutex<Catalog>>,
        registry: &Registry,
    ) -> Self {
        Self {
            engine: Engine::new(rules),
            site: site.to_string(),
            agent: agent.to_string(),
            names: HashMap::new(),
            catalog,
            flushes: registry.counter(
                "ferrule_agent_alert_flushes_total",
                "Batches cut before their window closed because a sample made an alert rule fire or resolve",
                &[],
            ),
        }
    }

    /// Feeds `series` to the engine; true if any sample made an alert fire or
    /// resolve (the batch holding it should leave now).
    pub fn check(&mut self, series: &[Series]) -> bool {
        let mut crossed = false;
        for s in series {
            let id = s.sensor();
            if !self.names.contains_key(&id) {
                // A sensor registered since the last look: the catalog knows it.
                let cat = self.catalog.lock().unwrap_or_else(PoisonError::into_inner);
                for d in cat.defines() {
                    self.names.entry(d.sensor).or_insert_with(|| d.name.clone());
                }
            }
            let Some(name) = self.names.get(&id) else {
                continue;
            };
            self.engine
                .handle_series(&self.site, &self.agent, name.as_str(), s.iter());
            while let Some(t) = self.engine.poll_transition() {
                crossed |= matches!(t.state, State::Firing | State::Resolved);
            }
        }
        if crossed {
            self.flushes.inc();
        }
        crossed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ferrule_wire::{Quality, SensorKind};

    const RULES: &str = r#"
[[rule]]
name = "undervoltage"
kind = "below"
sensors = "*/va"
threshold = 200.0
for_ms = 10
severity = "critical"
summary = "{sensor} low"
"#;

    fn rig() -> (Crossings, SensorId, SensorId, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(dir.path()).unwrap();
        let va = cat
            .intern(SensorName::new("feed/va").unwrap(), "V", SensorKind::Gauge)
            .unwrap();
        let f = cat
            .intern(SensorName::new("feed/f").unwrap(), "Hz", SensorKind::Gauge)
            .unwrap();
        let c = Crossings::new(
            RuleSet::from_toml(RULES).unwrap(),
            "s",
            "a",
            Arc::new(Mutex::new(cat)),
            &Registry::new(),
        );
        (c, va, f, dir)
    }

    fn series(id: SensorId, from_ms: i64, values: &[f64]) -> Series {
        let mut s = Series::new(id);
        for (i, v) in values.iter().enumerate() {
            s.push((from_ms + i as i64) * 1_000_000, *v, Quality::Good);
        }
        s
    }

    /// Only a firing or a resolve cuts a batch short: normal readings, other
    /// sensors and a breach that has not lasted `for_ms` yet do not.
    #[test]
    fn only_a_firing_or_a_resolve_asks_for_a_cut() {
        let (mut c, va, f, _dir) = rig();
        assert!(!c.check(&[series(va, 0, &[230.0; 20]), series(f, 0, &[10.0; 20])]));
        // Breach starts at 20 ms: pending, not yet firing.
        assert!(!c.check(&[series(va, 20, &[150.0; 5])]));
        // 10 ms into the breach it fires.
        assert!(c.check(&[series(va, 25, &[150.0; 10])]));
        assert!(!c.check(&[series(va, 35, &[150.0; 10])]));
        // Back above: resolved.
        assert!(c.check(&[series(va, 45, &[230.0; 3])]));
        assert!(!c.check(&[series(va, 48, &[230.0; 3])]));
    }

    /// A sensor interned after the engine started is found in the catalog.
    #[test]
    fn sensors_registered_later_are_named_from_the_catalog() {
        let (mut c, _va, _f, _dir) = rig();
        let vb_like = {
            let mut cat = c.catalog.lock().unwrap();
            cat.intern(SensorName::new("other/va").unwrap(), "V", SensorKind::Gauge)
                .unwrap()
        };
        assert!(!c.check(&[series(vb_like, 0, &[150.0; 5])]));
        assert!(c.check(&[series(vb_like, 5, &[150.0; 10])]));
    }
}
