//! The registry: families of series keyed by name and labels, kept and exposed
//! by `prometheus-client` (OpenMetrics text), looked up by name so that any part
//! of a process can ask for `name{labels}` without a central list of metrics.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter as PCounter;
use prometheus_client::metrics::family::{Family as PFamily, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge as PGauge;
use prometheus_client::metrics::histogram::Histogram as PHistogram;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(PCounter);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone, Default)]
pub struct Gauge(PGauge);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }

    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.inc_by(d);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// A distribution of observations (latencies, sizes) in fixed buckets: what an
/// operator needs to see a p99, which a counter or an average hides.
#[derive(Debug, Clone)]
pub struct Histogram(PHistogram);

impl Default for Histogram {
    fn default() -> Self {
        Self(PHistogram::new(Buckets::Latency.bounds()))
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }

    /// Records a duration, in seconds (the unit every `_seconds` histogram uses).
    pub fn observe_duration(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// The bucket layouts ferrule's histograms use, so that the same kind of
/// quantity has the same buckets everywhere and dashboards can sum them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buckets {
    /// Seconds, from 100 µs to about 52 s, doubling: ack, commit, fsync and alert
    /// latencies, credit waits.
    Latency,
    /// Counts, from 1 to 65 536, by powers of two: samples per batch.
    Count,
}

impl Buckets {
    fn bounds(self) -> Vec<f64> {
        match self {
            Self::Latency => (0..20).map(|i| 0.0001 * f64::from(1u32 << i)).collect(),
            Self::Count => (0..17).map(|i| f64::from(1u32 << i)).collect(),
        }
    }
}

type Labels = Vec<(String, String)>;

/// Makes each new series of a histogram family with the family's buckets.
#[derive(Debug, Clone)]
struct WithBuckets(Arc<[f64]>);

impl MetricConstructor<PHistogram> for WithBuckets {
    fn new_metric(&self) -> PHistogram {
        PHistogram::new(self.0.iter().copied())
    }
}

#[derive(Debug)]
enum Family {
    Counter {
        family: PFamily<Labels, PCounter>,
        /// Every series, to sum them (the family does not list its members).
        all: Vec<PCounter>,
    },
    Gauge(PFamily<Labels, PGauge>),
    Histogram(PFamily<Labels, PHistogram, WithBuckets>),
}

#[derive(Debug, Default)]
struct Inner {
    exposition: prometheus_client::registry::Registry,
    families: BTreeMap<String, Family>,
}

/// A set of metric families. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

/// The label set as stored: values escaped here, because `prometheus-client`
/// writes them as they are, and a quote or newline in one (a sensor or input
/// name from a config) would otherwise break the whole exposition.
fn labels_of(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), escape_label_value(v)))
        .collect()
}

fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Drops the empty label set `{}` `prometheus-client` writes after the name of a
/// series without labels, so such a line reads `name value`, as every scraper and
/// every `grep` expects.
fn without_empty_label_sets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(line.len());
        match line[name_end..].strip_prefix("{}") {
            Some(rest) if !line.starts_with('#') => {
                out.push_str(&line[..name_end]);
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
    }
    out
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counter `name{labels}`, created at zero on first use. `name` is the
    /// exposed name and ends in `_total`, as OpenMetrics requires of counters.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let mut inner = self.lock();
        let Inner {
            exposition,
            families,
        } = &mut *inner;
        let fam = families.entry(name.to_string()).or_insert_with(|| {
            let family = PFamily::<Labels, PCounter>::default();
            // OpenMetrics adds `_total` to a counter's family name.
            exposition.register(
                name.strip_suffix("_total").unwrap_or(name),
                help,
                family.clone(),
            );
            Family::Counter {
                family,
                all: Vec::new(),
            }
        });
        match fam {
            Family::Counter { family, all } => {
                let labels = labels_of(labels);
                let fresh = family.get(&labels).is_none();
                let c = family.get_or_create_owned(&labels);
                if fresh {
                    all.push(c.clone());
                }
                Counter(c)
            }
            // A name registered as another kind elsewhere: a programming error, but
            // metrics must never take the process down; hand out a detached one.
            _ => Counter::default(),
        }
    }

    /// The gauge `name{labels}`, created at zero on first use.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let mut inner = self.lock();
        let Inner {
            exposition,
            families,
        } = &mut *inner;
        let fam = families.entry(name.to_string()).or_insert_with(|| {
            let family = PFamily::<Labels, PGauge>::default();
            exposition.register(name, help, family.clone());
            Family::Gauge(family)
        });
        match fam {
            Family::Gauge(family) => Gauge(family.get_or_create_owned(&labels_of(labels))),
            _ => Gauge::default(),
        }
    }

    /// The histogram `name{labels}` with `buckets`, created empty on first use. The
    /// first call for a `name` sets the buckets of every series of that name.
    ///
    /// ```
    /// use ferrule_telemetry::{Buckets, Registry};
    /// let reg = Registry::new();
    /// let h = reg.histogram("x_seconds", "X time", &[], Buckets::Latency);
    /// h.observe(0.003);
    /// assert!(reg.render().contains("x_seconds_bucket{le=\"0.0032\"} 1"));
    /// assert!(reg.render().contains("x_seconds_count 1"));
    /// ```
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: Buckets,
    ) -> Histogram {
        let mut inner = self.lock();
        let Inner {
            exposition,
            families,
        } = &mut *inner;
        let fam = families.entry(name.to_string()).or_insert_with(|| {
            let family = PFamily::<Labels, PHistogram, WithBuckets>::new_with_constructor(
                WithBuckets(buckets.bounds().into()),
            );
            exposition.register(name, help, family.clone());
            Family::Histogram(family)
        });
        match fam {
            Family::Histogram(family) => Histogram(family.get_or_create_owned(&labels_of(labels))),
            _ => Histogram::default(),
        }
    }

    /// Publishes `name{labels, key="v"}` at zero for every `v` in `values`
    /// (keeping any that exist). A labelled counter otherwise has no series
    /// until its first event, so `rate()` and alerts on it see nothing, rather
    /// than 0, until the first failure.
    ///
    /// ```
    /// let reg = ferrule_telemetry::Registry::new();
    /// reg.declare_counters("x_total", "X", &[("input", "a")], "reason", &["late", "bad"]);
    /// assert!(reg.render().contains("x_total{input=\"a\",reason=\"late\"} 0"));
    /// ```
    pub fn declare_counters(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        key: &str,
        values: &[&str],
    ) {
        for v in values {
            let mut all: Vec<(&str, &str)> = labels.to_vec();
            all.push((key, v));
            self.counter(name, help, &all);
        }
    }

    /// The value of a counter if it exists (for tests and status output).
    pub fn counter_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        match self.lock().families.get(name)? {
            Family::Counter { family, .. } => family.get(&labels_of(labels)).map(|c| c.get()),
            _ => None,
        }
    }

    /// Sum of a counter family across all label sets.
    pub fn counter_sum(&self, name: &str) -> u64 {
        match self.lock().families.get(name) {
            Some(Family::Counter { all, .. }) => all.iter().map(PCounter::get).sum(),
            _ => 0,
        }
    }

    /// The OpenMetrics text exposition of every family (what `/metrics` serves;
    /// Prometheus reads it, as does any OpenMetrics scraper).
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would mean a bad
        // name, which the tests below would catch.
        let _ = encode(&mut out, &inner.exposition);
        without_empty_label_sets(&out)
    }
}

/// The content type of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_and_escapes_labels() {
        let r = Registry::new();
        r.counter("x_total", "X things", &[("reason", "a\"b")])
            .add(3);
        r.counter("x_total", "X things", &[("reason", "c")]).inc();
        r.gauge("y", "Y level", &[]).set(-2);
        let text = r.render();
        assert!(text.contains("# TYPE x counter"), "{text}");
        assert!(text.contains("\ny -2\n"), "{text}");
        assert!(text.contains("x_total{reason=\"a\\\"b\"} 3"), "{text}");
        assert!(text.contains("y -2"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(r.counter_sum("x_total"), 4);
        assert_eq!(r.counter_value("x_total", &[("reason", "c")]), Some(1));
        assert_eq!(r.counter_value("x_total", &[("reason", "d")]), None);
    }

    #[test]
    fn declared_counters_render_at_zero_and_keep_counts() {
        let r = Registry::new();
        r.counter("x_total", "X things", &[("input", "i"), ("reason", "b")])
            .add(2);
        r.declare_counters(
            "x_total",
            "X things",
            &[("input", "i")],
            "reason",
            &["a", "b"],
        );
        let text = r.render();
        assert!(
            text.contains("x_total{input=\"i\",reason=\"a\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("x_total{input=\"i\",reason=\"b\"} 2"),
            "{text}"
        );
        assert_eq!(r.counter_sum("x_total"), 2);
    }

    #[test]
    fn histograms_count_into_cumulative_buckets() {
        let r = Registry::new();
        let h = r.histogram("b_samples", "Batch size", &[("k", "v")], Buckets::Count);
        for v in [1.0, 3.0, 3.0, 100_000.0] {
            h.observe(v);
        }
        let text = r.render();
        assert!(text.contains("# TYPE b_samples histogram"), "{text}");
        assert!(
            text.contains("b_samples_bucket{le=\"1.0\",k=\"v\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("b_samples_bucket{le=\"4.0\",k=\"v\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("b_samples_bucket{le=\"+Inf\",k=\"v\"} 4"),
            "{text}"
        );
        assert!(text.contains("b_samples_count{k=\"v\"} 4"), "{text}");
        // Another series of the family shares its buckets.
        let h2 = r.histogram("b_samples", "Batch size", &[("k", "w")], Buckets::Latency);
        h2.observe(2.0);
        assert!(r
            .render()
            .contains("b_samples_bucket{le=\"2.0\",k=\"w\"} 1"));
    }

    #[test]
    fn a_name_of_another_kind_gets_a_detached_handle() {
        let r = Registry::new();
        r.gauge("z", "Z", &[]).set(7);
        let c = r.counter("z", "Z", &[]);
        c.add(5);
        assert!(r.render().contains("z 7"));
        assert_eq!(r.counter_value("z", &[]), None);
    }
}
