//! The registry: families of series keyed by name and labels, each an atomic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
enum Value {
    Counter(Counter),
    Gauge(Gauge),
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: &'static str,
    series: BTreeMap<String, Value>,
}

/// A set of metric families. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

fn label_key(labels: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn get_or_insert(
        &self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        make: fn() -> Value,
    ) -> Value {
        let mut fams = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let fam = fams.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            series: BTreeMap::new(),
        });
        fam.series
            .entry(label_key(labels))
            .or_insert_with(make)
            .clone()
    }

    /// The counter `name{labels}`, created at zero on first use.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.get_or_insert(name, help, "counter", labels, || {
            Value::Counter(Counter::default())
        }) {
            Value::Counter(c) => c,
            // A name registered as a gauge elsewhere: a programming error, but
            // metrics must never take the process down; hand out a detached one.
            Value::Gauge(_) => Counter::default(),
        }
    }

    /// The gauge `name{labels}`, created at zero on first use.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.get_or_insert(name, help, "gauge", labels, || {
            Value::Gauge(Gauge::default())
        }) {
            Value::Gauge(g) => g,
            Value::Counter(_) => Gauge::default(),
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
        let fams = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        match fams.get(name)?.series.get(&label_key(labels))? {
            Value::Counter(c) => Some(c.get()),
            Value::Gauge(_) => None,
        }
    }

    /// Sum of a counter family across all label sets.
    pub fn counter_sum(&self, name: &str) -> u64 {
        let fams = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        fams.get(name).map_or(0, |f| {
            f.series
                .values()
                .map(|v| match v {
                    Value::Counter(c) => c.get(),
                    Value::Gauge(_) => 0,
                })
                .sum()
        })
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let fams = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for (name, fam) in fams.iter() {
            let _ = writeln!(out, "# HELP {name} {}", fam.help);
            let _ = writeln!(out, "# TYPE {name} {}", fam.kind);
            for (labels, v) in &fam.series {
                let value = match v {
                    Value::Counter(c) => c.get().to_string(),
                    Value::Gauge(g) => g.get().to_string(),
                };
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

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
        assert!(text.contains("# TYPE x_total counter"));
        assert!(text.contains("x_total{reason=\"a\\\"b\"} 3"));
        assert!(text.contains("y -2"));
        assert_eq!(r.counter_sum("x_total"), 4);
        assert_eq!(r.counter_value("x_total", &[("reason", "c")]), Some(1));
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
    }
}
