//! Selected sensors sent as OTLP gauges: a consumer of the real-time path of
//! its own (its own bounded queue, its drops counted apart, like every
//! consumer), so a slow or dead collector never holds up the alerts, the
//! durable path or any other consumer.

// A record's samples at most: the alert evaluator's bound.
use crate::alerts::evaluate::MAX_RECORD_SAMPLES;
use crate::fanout::embedded::Subscriber;
use ferrule_otlp::SensorGauges;
use ferrule_rules::Glob;
use ferrule_telemetry::{Counter, Registry};
use ferrule_wire::record::decode_record_filtered;
use ferrule_wire::{Quality, SampleColumns};

/// Which sensors go out: globs over `site/agent/sensor`.
#[derive(Debug, Clone)]
pub struct Selection(Vec<Glob>);

impl Selection {
    /// The globs of `otlp.sensors`; `None` when there are none.
    pub fn new(patterns: &[String]) -> Option<Self> {
        let globs: Vec<Glob> = patterns.iter().filter_map(|p| Glob::new(p)).collect();
        (!globs.is_empty()).then_some(Self(globs))
    }

    /// Whether `site/agent/sensor` is selected.
    pub fn matches(&self, site: &str, agent: &str, sensor: &str) -> bool {
        let path = format!("{site}/{agent}/{sensor}");
        self.0.iter().any(|g| g.matches(&path))
    }
}

fn quality_name(q: Quality) -> &'static str {
    match q {
        Quality::Good => "good",
        Quality::Uncertain => "uncertain",
        Quality::Bad => "bad",
    }
}

/// Records the newest sample of every selected series of each record `sub`
/// receives, until the fan-out closes.
pub async fn run(
    mut sub: Subscriber,
    selection: Selection,
    gauges: SensorGauges,
    registry: Registry,
) {
    let exported: Counter = registry.counter(
        "ferrule_aggregator_otlp_sensor_samples_total",
        "Sensor samples recorded as OTLP gauges (the newest of each selected series per batch)",
        &[],
    );
    let undecodable: Counter = registry.counter(
        "ferrule_aggregator_otlp_records_undecodable_total",
        "Records the OTLP sensor exporter could not decode (skipped)",
        &[],
    );
    let mut columns = SampleColumns::default();
    let mut logged = false;
    while let Some(e) = sub.recv().await {
        tokio::task::consume_budget().await;
        let decoded = decode_record_filtered(
            &e.record,
            MAX_RECORD_SAMPLES,
            &mut columns,
            |h, i, id, _ts| {
                h.sensor(i, id)
                    .is_some_and(|s| selection.matches(&h.site, &h.agent, s.name.as_str()))
            },
        );
        let h = match decoded {
            Ok(h) => h,
            Err(err) => {
                undecodable.inc();
                if !logged {
                    logged = true;
                    tracing::warn!(site = %e.site, agent = %e.agent, seq = e.seq.0, error = %err, "OTLP sensor export: a record does not decode; skipped");
                }
                continue;
            }
        };
        for (i, series) in columns.series().enumerate() {
            if !series.has_values() {
                continue;
            }
            let Some(info) = h.sensor(i, series.sensor()) else {
                continue;
            };
            // The newest sample of the series in this batch.
            let newest = series.iter().max_by_key(|(ts, _, _)| *ts);
            if let Some((_, v, q)) = newest {
                gauges.record(
                    &h.site,
                    &h.agent,
                    info.name.as_str(),
                    &info.unit,
                    quality_name(q),
                    v,
                );
                exported.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_matches_site_agent_sensor_paths() {
        let s = Selection::new(&["site-a/*/voltage_*".into(), "*/agent-9/freq".into()])
            .unwrap_or_else(|| panic!("two globs"));
        assert!(s.matches("site-a", "agent-1", "voltage_l1"));
        assert!(!s.matches("site-b", "agent-1", "voltage_l1"));
        assert!(s.matches("site-b", "agent-9", "freq"));
        assert!(!s.matches("site-b", "agent-9", "freq2"));
        assert!(Selection::new(&[]).is_none());
    }
}
