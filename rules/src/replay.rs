//! Replay: samples as JSON lines in, transitions as JSON lines out, through one
//! [`Engine`]; what `ferrule-aggregator alerts test` runs, like `promtool test
//! rules`.
//!
//! Input, one object a line (blank lines are skipped):
//! `{"ts": 1700000000.25, "sensor": "feed/va", "site": "substation-7", "value": 161.0}`
//! with optional `"agent"` (default `""`) and `"quality"` (`"good"`, the default,
//! `"uncertain"` or `"bad"`). `ts` is Unix seconds, read to the microsecond (an f64
//! holds today's times to about a quarter of a microsecond, no finer).
//!
//! Time advances with the input: before each sample the engine ticks to that
//! sample's `ts`, so `no_data` rules fire as the file's clock passes their
//! deadline; nothing fires after the last line.

use crate::engine::{Counters, Engine, Sample, State, Transition};
use crate::template::quality_name;
use crate::RuleSet;
use ferrule_wire::Quality;
use serde::Deserialize;
use std::io::{BufRead, Read as _, Write};

/// The longest input line read, bytes: a bound on memory for a file without
/// newlines.
pub const MAX_LINE_BYTES: u64 = 64 * 1024;

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// A line that is not a valid sample.
    #[error("input line {line}: {problem}")]
    Input {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        problem: String,
    },
    /// Reading the input failed.
    #[error("reading input line {line}: {source}")]
    Read {
        /// 1-based line number being read.
        line: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing a transition failed.
    #[error("writing output: {0}")]
    Write(#[source] std::io::Error),
}

/// What a replay saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// Samples read.
    pub samples: u64,
    /// Transitions written, of each kind.
    pub pending: u64,
    /// Firing transitions written.
    pub firing: u64,
    /// Resolved transitions written.
    pub resolved: u64,
    /// Inactive transitions written.
    pub inactive: u64,
    /// Samples not evaluated because they were not newer than their series' last.
    pub samples_out_of_order: u64,
    /// Series evicted to stay within `max_series`.
    pub series_evicted: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSample {
    ts: f64,
    sensor: String,
    site: String,
    value: f64,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    quality: Option<QualityName>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum QualityName {
    Good,
    Uncertain,
    Bad,
}

#[derive(serde::Serialize)]
struct OutputLine<'a> {
    ts: f64,
    rule: &'a str,
    sensor: &'a str,
    site: &'a str,
    agent: &'a str,
    state: State,
    value: f64,
    fingerprint: String,
    episode: String,
    severity: &'a str,
    labels: &'a std::collections::BTreeMap<String, String>,
    annotation: &'a str,
    quality: &'a str,
}

/// Unix seconds to ns, through whole microseconds (see the module doc).
fn ts_ns(ts: f64) -> Option<i64> {
    let us = (ts * 1e6).round();
    // i64::MAX ns is about 9.2e18; stay well inside it.
    if !us.is_finite() || us.abs() > 9.0e15 {
        return None;
    }
    (us as i64).checked_mul(1000)
}

/// ns to Unix seconds, through whole microseconds, so what was read prints back
/// the same.
fn ts_secs(ns: i64) -> f64 {
    ns.div_euclid(1000) as f64 / 1e6
}

/// Replays `input` through an engine for `rules`, writing each transition to
/// `out` as one JSON object a line:
/// `{"ts", "rule", "sensor", "site", "agent", "state", "value", "fingerprint",
/// "episode", "severity", "labels", "annotation", "quality"}`.
///
/// ```
/// let rules = ferrule_rules::RuleSet::from_toml(r#"
/// [[rule]]
/// name = "undervoltage"
/// kind = "below"
/// sensors = "*/v?"
/// threshold = 207.0
/// severity = "critical"
/// "#).unwrap();
/// let input = br#"{"ts": 1.0, "sensor": "feed/va", "site": "s7", "value": 161.0}"#;
/// let mut out = Vec::new();
/// let summary = ferrule_rules::replay(&rules, &input[..], &mut out).unwrap();
/// assert_eq!(summary.firing, 1);
/// assert!(String::from_utf8(out).unwrap().contains(r#""state":"firing""#));
/// ```
pub fn replay(
    rules: &RuleSet,
    mut input: impl BufRead,
    mut out: impl Write,
) -> Result<Summary, ReplayError> {
    let mut engine = Engine::new(rules.clone());
    let mut summary = Summary::default();
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        line += 1;
        buf.clear();
        let n = (&mut input)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| ReplayError::Read { line, source })?;
        if n == 0 {
            break;
        }
        if buf.len() as u64 > MAX_LINE_BYTES {
            return Err(ReplayError::Input {
                line,
                problem: format!("longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let s: InputSample = serde_json::from_slice(&buf).map_err(|e| ReplayError::Input {
            line,
            problem: e.to_string(),
        })?;
        let ts = ts_ns(s.ts).ok_or_else(|| ReplayError::Input {
            line,
            problem: format!("ts {:?} is not a usable Unix time", s.ts),
        })?;
        let quality = match s.quality {
            None | Some(QualityName::Good) => Quality::Good,
            Some(QualityName::Uncertain) => Quality::Uncertain,
            Some(QualityName::Bad) => Quality::Bad,
        };
        summary.samples += 1;
        engine.handle_tick(ts);
        write_all(&mut engine, &mut summary, &mut out)?;
        engine.handle_sample(&Sample {
            ts_ns: ts,
            site: &s.site,
            agent: &s.agent,
            sensor: &s.sensor,
            value: s.value,
            quality,
        });
        write_all(&mut engine, &mut summary, &mut out)?;
    }
    out.flush().map_err(ReplayError::Write)?;
    let Counters {
        samples_out_of_order,
        series_evicted,
        ..
    } = engine.counters().clone();
    summary.samples_out_of_order = samples_out_of_order;
    summary.series_evicted = series_evicted;
    Ok(summary)
}

fn write_all(
    engine: &mut Engine,
    summary: &mut Summary,
    out: &mut impl Write,
) -> Result<(), ReplayError> {
    // No notifier here: nothing to stop resending.
    while engine.poll_forgotten().is_some() {}
    while let Some(t) = engine.poll_transition() {
        match t.state {
            State::Pending => summary.pending += 1,
            State::Firing => summary.firing += 1,
            State::Resolved => summary.resolved += 1,
            State::Inactive => summary.inactive += 1,
        }
        write_line(&t, out)?;
    }
    Ok(())
}

fn write_line(t: &Transition, out: &mut impl Write) -> Result<(), ReplayError> {
    let line = OutputLine {
        ts: ts_secs(t.ts_ns),
        rule: &t.rule,
        sensor: &t.sensor,
        site: &t.site,
        agent: &t.agent,
        state: t.state,
        value: t.value,
        fingerprint: t.fingerprint.to_string(),
        episode: t.episode.to_string(),
        severity: t.severity.as_str(),
        labels: &t.labels,
        annotation: &t.annotation,
        quality: quality_name(t.quality),
    };
    // Serializing these types to a Vec cannot fail (string keys, plain values).
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    out.write_all(&bytes).map_err(ReplayError::Write)
}
