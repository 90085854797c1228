//! The registry: families of series keyed by name and labels, kept and exposed
//! by `prometheus-client` (OpenMetrics text), looked up by name so that any part
//! of a process can ask for `name{labels}` without a central list of metrics.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter as PCounter;
use prometheus_client::metrics::family::{Family as PFamily, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge as PGauge;
use prometheus_client::metrics::histogram::Histogram as PHistogram;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
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

/// Where a histogram's observations are copied besides its own buckets (an OTLP
/// exporter's instrument): set once, by [`Registry::mirror_histograms`].
pub type MirrorFn = Box<dyn Fn(f64) + Send + Sync>;

/// Makes the [`MirrorFn`] of one series: given the family's name, help, bucket
/// bounds, and the series' labels.
pub type MirrorMaker = dyn Fn(&str, &str, &[f64], &[(String, String)]) -> MirrorFn + Send + Sync;

type MirrorSlot = Arc<OnceLock<MirrorFn>>;

/// A distribution of observations (latencies, sizes) in fixed buckets: what an
/// operator needs to see a p99, which a counter or an average hides.
#[derive(Clone)]
pub struct Histogram {
    inner: PHistogram,
    mirror: MirrorSlot,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("inner", &self.inner)
            .field("mirrored", &self.mirror.get().is_some())
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            inner: PHistogram::new(Buckets::Latency.bounds()),
            mirror: MirrorSlot::default(),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, v: f64) {
        self.inner.observe(v);
        if let Some(m) = self.mirror.get() {
            m(v);
        }
    }

    /// Records a duration, in seconds (the unit every `_seconds` histogram uses).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
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
    /// The upper bounds of the buckets, ascending (`+Inf` implied).
    pub fn bounds(self) -> Vec<f64> {
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

enum Family {
    Counter {
        family: PFamily<Labels, PCounter>,
        /// Every series with its labels as given (the family does not list its
        /// members, and keeps the values escaped).
        all: Vec<(Labels, PCounter)>,
    },
    Gauge {
        family: PFamily<Labels, PGauge>,
        all: Vec<(Labels, PGauge)>,
    },
    Histogram {
        family: PFamily<Labels, PHistogram, WithBuckets>,
        bounds: Arc<[f64]>,
        all: Vec<(Labels, MirrorSlot)>,
    },
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Counter { .. } => "Counter",
            Family::Gauge { .. } => "Gauge",
            Family::Histogram { .. } => "Histogram",
        })
    }
}

#[derive(Default)]
struct Inner {
    exposition: prometheus_client::registry::Registry,
    families: BTreeMap<String, (String, Family)>,
    mirror: Option<Arc<MirrorMaker>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("families", &self.families)
            .field("mirrored", &self.mirror.is_some())
            .finish_non_exhaustive()
    }
}

/// What kind of metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution in buckets.
    Histogram,
}

/// One family's name, help and kind, as [`Registry::families`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyInfo {
    /// The exposed name (a counter's ends in `_total`).
    pub name: String,
    /// Its help text.
    pub help: String,
    /// Its kind.
    pub kind: Kind,
}

/// A counter's or gauge's series now, as [`Registry::read`] gives them: labels
/// as given (not escaped), value.
pub type SeriesValues = Vec<(Vec<(String, String)>, i64)>;

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

fn raw_labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
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

/// The family name a metric is exposed under: OpenMetrics names a counter's
/// family without its `_total`.
fn family_name(name: &str, kind: Kind) -> &str {
    match kind {
        Kind::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    }
}

impl Family {
    fn kind(&self) -> Kind {
        match self {
            Family::Counter { .. } => Kind::Counter,
            Family::Gauge { .. } => Kind::Gauge,
            Family::Histogram { .. } => Kind::Histogram,
        }
    }
}

/// Whether a new family `name` of `kind` would be exposed under the name of
/// another (a gauge `x` and a counter `x_total` are both family `x`): an
/// exposition with both is invalid, and scrapers reject it whole. Logged; the
/// caller hands out a detached handle.
fn clashes(families: &BTreeMap<String, (String, Family)>, name: &str, kind: Kind) -> bool {
    if families.contains_key(name) {
        return false;
    }
    let exposed = family_name(name, kind);
    match families
        .iter()
        .find(|(n, (_, f))| family_name(n, f.kind()) == exposed)
    {
        Some((other, _)) => {
            tracing::error!(metric = name, clashes_with = %other, "metric not exported: its family name is another metric's");
            true
        }
        None => false,
    }
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
            ..
        } = &mut *inner;
        if clashes(families, name, Kind::Counter) {
            return Counter::default();
        }
        let (_, fam) = families.entry(name.to_string()).or_insert_with(|| {
            let family = PFamily::<Labels, PCounter>::default();
            // OpenMetrics adds `_total` to a counter's family name.
            exposition.register(
                name.strip_suffix("_total").unwrap_or(name),
                help,
                family.clone(),
            );
            (
                help.to_string(),
                Family::Counter {
                    family,
                    all: Vec::new(),
                },
            )
        });
        match fam {
            Family::Counter { family, all } => {
                let key = labels_of(labels);
                let fresh = family.get(&key).is_none();
                let c = family.get_or_create_owned(&key);
                if fresh {
                    all.push((raw_labels(labels), c.clone()));
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
            ..
        } = &mut *inner;
        if clashes(families, name, Kind::Gauge) {
            return Gauge::default();
        }
        let (_, fam) = families.entry(name.to_string()).or_insert_with(|| {
            let family = PFamily::<Labels, PGauge>::default();
            exposition.register(name, help, family.clone());
            (
                help.to_string(),
                Family::Gauge {
                    family,
                    all: Vec::new(),
                },
            )
        });
        match fam {
            Family::Gauge { family, all } => {
                let key = labels_of(labels);
                let fresh = family.get(&key).is_none();
                let g = family.get_or_create_owned(&key);
                if fresh {
                    all.push((raw_labels(labels), g.clone()));
                }
                Gauge(g)
            }
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
            mirror,
        } = &mut *inner;
        if clashes(families, name, Kind::Histogram) {
            return Histogram::default();
        }
        let (help, fam) = families.entry(name.to_string()).or_insert_with(|| {
            let bounds: Arc<[f64]> = buckets.bounds().into();
            let family = PFamily::<Labels, PHistogram, WithBuckets>::new_with_constructor(
                WithBuckets(bounds.clone()),
            );
            exposition.register(name, help, family.clone());
            (
                help.to_string(),
                Family::Histogram {
                    family,
                    bounds,
                    all: Vec::new(),
                },
            )
        });
        match fam {
            Family::Histogram {
                family,
                bounds,
                all,
            } => {
                let key = labels_of(labels);
                let inner = family.get_or_create_owned(&key);
                let raw = raw_labels(labels);
                let slot = match all.iter().find(|(l, _)| *l == raw) {
                    Some((_, slot)) => slot.clone(),
                    None => {
                        let slot = MirrorSlot::default();
                        if let Some(make) = mirror {
                            let _ = slot.set(make(name, help, bounds, &raw));
                        }
                        all.push((raw, slot.clone()));
                        slot
                    }
                };
                Histogram {
                    inner,
                    mirror: slot,
                }
            }
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
        match &self.lock().families.get(name)?.1 {
            Family::Counter { family, .. } => family.get(&labels_of(labels)).map(|c| c.get()),
            _ => None,
        }
    }

    /// Sum of a counter family across all label sets.
    pub fn counter_sum(&self, name: &str) -> u64 {
        match self.lock().families.get(name) {
            Some((_, Family::Counter { all, .. })) => all.iter().map(|(_, c)| c.get()).sum(),
            _ => 0,
        }
    }

    /// Every family: name, help, kind (for an exporter that mirrors them).
    pub fn families(&self) -> Vec<FamilyInfo> {
        self.lock()
            .families
            .iter()
            .map(|(name, (help, f))| FamilyInfo {
                name: name.clone(),
                help: help.clone(),
                kind: f.kind(),
            })
            .collect()
    }

    /// The series of a counter or gauge family now (empty for a histogram or an
    /// unknown name). Counters beyond `i64::MAX` read as `i64::MAX`.
    pub fn read(&self, name: &str) -> SeriesValues {
        match self.lock().families.get(name) {
            Some((_, Family::Counter { all, .. })) => all
                .iter()
                .map(|(l, c)| (l.clone(), i64::try_from(c.get()).unwrap_or(i64::MAX)))
                .collect(),
            Some((_, Family::Gauge { all, .. })) => {
                all.iter().map(|(l, g)| (l.clone(), g.get())).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Copies every histogram observation from now on through `make`'s
    /// function for its series (existing series and those created later):
    /// how an OTLP exporter gets distributions it cannot read back from the
    /// buckets. Only the first call takes effect.
    pub fn mirror_histograms(&self, make: Arc<MirrorMaker>) {
        let mut inner = self.lock();
        if inner.mirror.is_some() {
            return;
        }
        for (name, (help, f)) in &inner.families {
            if let Family::Histogram { bounds, all, .. } = f {
                for (labels, slot) in all {
                    let _ = slot.set(make(name, help, bounds, labels));
                }
            }
        }
        inner.mirror = Some(make);
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

    #[test]
    fn families_and_series_read_back_with_their_labels_as_given() {
        let r = Registry::new();
        r.counter("c_total", "C", &[("why", "a\"b")]).add(3);
        r.gauge("g", "G", &[]).set(-4);
        r.histogram("h_seconds", "H", &[], Buckets::Latency);
        let kinds: Vec<(String, Kind)> =
            r.families().into_iter().map(|f| (f.name, f.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("c_total".to_string(), Kind::Counter),
                ("g".to_string(), Kind::Gauge),
                ("h_seconds".to_string(), Kind::Histogram),
            ]
        );
        assert_eq!(
            r.read("c_total"),
            vec![(vec![("why".to_string(), "a\"b".to_string())], 3)]
        );
        assert_eq!(r.read("g"), vec![(vec![], -4)]);
        assert!(r.read("h_seconds").is_empty());
    }

    #[test]
    fn mirrors_see_every_observation_of_old_and_new_series() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let r = Registry::new();
        let old = r.histogram("h_seconds", "H", &[("k", "old")], Buckets::Latency);
        old.observe(1.0);
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        r.mirror_histograms(Arc::new(move |name, _help, bounds, labels| {
            assert_eq!(name, "h_seconds");
            assert_eq!(bounds.len(), 20);
            let s = s.clone();
            let tag = if labels[0].1 == "old" { 1 } else { 100 };
            Box::new(move |_v| {
                s.fetch_add(tag, Ordering::Relaxed);
            })
        }));
        old.observe(2.0);
        let new = r.histogram("h_seconds", "H", &[("k", "new")], Buckets::Latency);
        new.observe(3.0);
        // The same series asked for again shares the mirror.
        r.histogram("h_seconds", "H", &[("k", "new")], Buckets::Latency)
            .observe(4.0);
        assert_eq!(seen.load(Ordering::Relaxed), 201);
        assert!(r.render().contains("h_seconds_count{k=\"old\"} 2"));
    }

    /// A gauge `x` and a counter `x_total` would both be family `x`, which
    /// makes the whole exposition invalid: the second is refused, and what is
    /// exposed stays one family per name.
    #[test]
    fn a_family_name_is_never_exposed_twice() {
        let r = Registry::new();
        r.gauge("x", "open", &[]).set(3);
        r.counter("x_total", "accepted", &[]).inc();
        r.counter("y_total", "Y", &[]).inc();
        r.gauge("y", "Y now", &[]).set(1);
        let text = r.render();
        assert_eq!(text.matches("# TYPE x ").count(), 1, "{text}");
        assert_eq!(text.matches("# TYPE y ").count(), 1, "{text}");
        assert!(
            text.contains("\nx 3\n") && text.contains("y_total 1"),
            "{text}"
        );
        assert!(!text.contains("x_total"), "{text}");
    }
}
