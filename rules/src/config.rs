//! The rules file: TOML, parsed into raw structs (every key known, nothing
//! interpreted) and then validated into a [`RuleSet`], whose rules can only exist
//! once every check has passed. Errors name the rule and the line it starts on.

use crate::glob::Glob;
use crate::template::Template;
use ferrule_wire::Quality;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The default for `[limits] max_series`.
pub const DEFAULT_MAX_SERIES: usize = 100_000;

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// Not TOML, or a key that does not exist, or a value of the wrong type. The
    /// message carries the line and column.
    #[error("rules file: {message}")]
    Parse {
        /// The parser's message, with the line and column.
        message: String,
    },
    /// A rule that parsed but makes no sense.
    #[error("rule {rule:?} (line {line}): {problem}")]
    Invalid {
        /// The rule's name (empty if the name itself is the problem).
        rule: String,
        /// The line its `[[rule]]` table starts on, 1-based.
        line: usize,
        /// What is wrong, as a sentence.
        problem: String,
    },
    /// Two rules with one name: the name is part of every alert's fingerprint.
    #[error("rule {name:?} is defined twice (lines {first_line} and {line})")]
    Duplicate {
        /// The name.
        name: String,
        /// Where it was first defined.
        first_line: usize,
        /// Where it was defined again.
        line: usize,
    },
    /// A bad `[limits]` value.
    #[error("[limits]: {problem}")]
    Limits {
        /// What is wrong.
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_series: Option<i64>,
}

/// Every key a rule may have; which ones apply depends on `kind`. Durations are
/// signed here so a negative one gets a clear message rather than a type error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    kind: Kind,
    sensors: String,
    sites: Option<String>,
    agents: Option<String>,
    severity: Severity,
    summary: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    threshold: Option<f64>,
    clear: Option<f64>,
    threshold_per_s: Option<f64>,
    clear_per_s: Option<f64>,
    window_ms: Option<i64>,
    direction: Option<Direction>,
    silent_for_ms: Option<i64>,
    quality: Option<QualityLevel>,
    for_ms: Option<i64>,
    clear_for_ms: Option<i64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Above,
    Below,
    Rate,
    NoData,
    Quality,
}

/// Which way a `rate` rule looks.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Direction {
    /// Fires when the value rises faster than the threshold.
    Rising,
    /// Fires when the value falls faster than the threshold.
    Falling,
    /// Fires when the value moves faster than the threshold either way.
    Either,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum QualityLevel {
    Uncertain,
    Bad,
}

/// How urgent an alert is; carried on every transition for the notifier to route.
#[derive(Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Severity {
    /// Worth a look.
    Info,
    /// Needs attention soon.
    Warning,
    /// Pages someone now.
    Critical,
}

impl Severity {
    /// The name as the rules file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// What a rule tests, with its thresholds; durations in nanoseconds.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Condition {
    /// Breached while `value > threshold`; clear once `value <= clear`
    /// (`clear <= threshold`; between the two the state holds: hysteresis).
    Above {
        /// The breach level.
        threshold: f64,
        /// The clear level.
        clear: f64,
    },
    /// Breached while `value < threshold`; clear once `value >= clear`
    /// (`clear >= threshold`).
    Below {
        /// The breach level.
        threshold: f64,
        /// The clear level.
        clear: f64,
    },
    /// Breached while the rate of change over the window, per second, exceeds
    /// `threshold_per_s` in `direction`; clear once it is at most `clear_per_s`.
    Rate {
        /// The window the rate is measured over, ns.
        window_ns: i64,
        /// The breach rate, units per second (positive).
        threshold_per_s: f64,
        /// The clear rate, units per second (`0 <= clear <= threshold`).
        clear_per_s: f64,
        /// Which way counts.
        direction: Direction,
    },
    /// Fires when a series sent nothing for `silent_ns` (seen by `handle_tick`).
    NoData {
        /// The silence that fires, ns.
        silent_ns: i64,
    },
    /// Breached while samples carry a quality at least this bad.
    Quality {
        /// `Uncertain` (uncertain or bad) or `Bad`.
        at_least: Quality,
    },
}

impl Condition {
    /// The breach and clear levels, for the template.
    pub(crate) fn levels(&self) -> (Option<f64>, Option<f64>) {
        match *self {
            Self::Above { threshold, clear } | Self::Below { threshold, clear } => {
                (Some(threshold), Some(clear))
            }
            Self::Rate {
                threshold_per_s,
                clear_per_s,
                ..
            } => (Some(threshold_per_s), Some(clear_per_s)),
            Self::NoData { .. } | Self::Quality { .. } => (None, None),
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) name: String,
    pub(crate) sensors: Glob,
    pub(crate) sites: Glob,
    pub(crate) agents: Glob,
    pub(crate) condition: Condition,
    /// How long the breach must hold before firing, ns (0: fire on the first sample).
    pub(crate) for_ns: i64,
    /// How long the clear condition must hold before resolving, ns.
    pub(crate) clear_for_ns: i64,
    pub(crate) severity: Severity,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) summary: Template,
}

impl Rule {
    /// The rule's name, unique in its file.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What it tests.
    pub fn condition(&self) -> &Condition {
        &self.condition
    }
    /// Whether it applies to this series.
    pub fn matches(&self, site: &str, agent: &str, sensor: &str) -> bool {
        self.sensors.matches(sensor) && self.sites.matches(site) && self.agents.matches(agent)
    }
}

/// A validated rules file: the rules in file order and the engine's limits.
///
/// ```
/// let rules = ferrule_rules::RuleSet::from_toml(r#"
/// [[rule]]
/// name = "undervoltage"
/// kind = "below"
/// sensors = "*/v?"
/// threshold = 207.0
/// clear = 212.0
/// severity = "critical"
/// "#).unwrap();
/// assert_eq!(rules.rules()[0].name(), "undervoltage");
/// ```
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub(crate) rules: Vec<Rule>,
    pub(crate) max_series: usize,
}

impl RuleSet {
    /// Parses and validates a rules file.
    pub fn from_toml(text: &str) -> Result<Self, RulesError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| RulesError::Parse {
            message: e.to_string().trim_end().to_owned(),
        })?;
        let max_series = match raw.limits.max_series {
            None => DEFAULT_MAX_SERIES,
            Some(n) if n >= 1 => usize::try_from(n).map_err(|_| RulesError::Limits {
                problem: format!("max_series {n} is too large for this machine"),
            })?,
            Some(n) => {
                return Err(RulesError::Limits {
                    problem: format!("max_series must be at least 1 (got {n})"),
                })
            }
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
        let mut lines: Vec<usize> = Vec::with_capacity(raw.rule.len());
        for spanned in raw.rule {
            let line = line_of(text, spanned.span().start);
            let raw = spanned.into_inner();
            let name = raw.name.clone();
            let rule = validate(raw).map_err(|problem| RulesError::Invalid {
                rule: name.clone(),
                line,
                problem,
            })?;
            if let Some(i) = rules.iter().position(|r| r.name == rule.name) {
                return Err(RulesError::Duplicate {
                    name,
                    first_line: lines[i],
                    line,
                });
            }
            rules.push(rule);
            lines.push(line);
        }
        Ok(Self { rules, max_series })
    }

    /// The rules, in file order (the order transitions of one sample come out in).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The most series (site, agent, sensor) the engine tracks at once.
    pub fn max_series(&self) -> usize {
        self.max_series
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn glob(key: &str, pattern: Option<&str>) -> Result<Glob, String> {
    Glob::new(pattern.unwrap_or("*"))
        .ok_or_else(|| format!("{key} is empty (use \"*\" to match everything)"))
}

fn duration_ns(key: &str, ms: Option<i64>) -> Result<Option<i64>, String> {
    match ms {
        None => Ok(None),
        Some(ms) if ms < 0 => Err(format!("{key} must not be negative (got {ms})")),
        Some(ms) => ms
            .checked_mul(1_000_000)
            .map(Some)
            .ok_or_else(|| format!("{key} {ms} is too large")),
    }
}

fn finite(key: &str, v: Option<f64>) -> Result<Option<f64>, String> {
    match v {
        Some(x) if !x.is_finite() => Err(format!("{key} must be a finite number (got {x})")),
        v => Ok(v),
    }
}

fn validate(raw: RawRule) -> Result<Rule, String> {
    if raw.name.trim().is_empty() {
        return Err("name is empty".into());
    }
    let kind_name = match raw.kind {
        Kind::Above => "above",
        Kind::Below => "below",
        Kind::Rate => "rate",
        Kind::NoData => "no_data",
        Kind::Quality => "quality",
    };
    // Keys that exist but mean nothing for this kind are refused, not ignored: a
    // `threshold` on a rate rule would otherwise silently not be the threshold.
    let given: [(&str, bool); 10] = [
        ("threshold", raw.threshold.is_some()),
        ("clear", raw.clear.is_some()),
        ("threshold_per_s", raw.threshold_per_s.is_some()),
        ("clear_per_s", raw.clear_per_s.is_some()),
        ("window_ms", raw.window_ms.is_some()),
        ("direction", raw.direction.is_some()),
        ("silent_for_ms", raw.silent_for_ms.is_some()),
        ("quality", raw.quality.is_some()),
        ("for_ms", raw.for_ms.is_some()),
        ("clear_for_ms", raw.clear_for_ms.is_some()),
    ];
    let allowed: &[&str] = match raw.kind {
        Kind::Above | Kind::Below => &["threshold", "clear", "for_ms", "clear_for_ms"],
        Kind::Rate => &[
            "threshold_per_s",
            "clear_per_s",
            "window_ms",
            "direction",
            "for_ms",
            "clear_for_ms",
        ],
        Kind::NoData => &["silent_for_ms"],
        Kind::Quality => &["quality", "for_ms", "clear_for_ms"],
    };
    if let Some((key, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
        return Err(format!(
            "{key} does not apply to kind {kind_name} (its keys: {})",
            allowed.join(", ")
        ));
    }
    let need = |key: &str| format!("kind {kind_name} needs {key}");
    let condition = match raw.kind {
        Kind::Above | Kind::Below => {
            let threshold = finite("threshold", raw.threshold)?.ok_or_else(|| need("threshold"))?;
            let clear = finite("clear", raw.clear)?.unwrap_or(threshold);
            if raw.kind == Kind::Above {
                if clear > threshold {
                    return Err(format!(
                        "clear {clear} is above threshold {threshold}: an above rule clears at or below its threshold"
                    ));
                }
                Condition::Above { threshold, clear }
            } else {
                if clear < threshold {
                    return Err(format!(
                        "clear {clear} is below threshold {threshold}: a below rule clears at or above its threshold"
                    ));
                }
                Condition::Below { threshold, clear }
            }
        }
        Kind::Rate => {
            let threshold_per_s = finite("threshold_per_s", raw.threshold_per_s)?
                .ok_or_else(|| need("threshold_per_s"))?;
            if threshold_per_s <= 0.0 {
                return Err(format!(
                    "threshold_per_s must be positive (got {threshold_per_s}); use direction = \"falling\" for drops"
                ));
            }
            let clear_per_s = finite("clear_per_s", raw.clear_per_s)?.unwrap_or(threshold_per_s);
            if !(0.0..=threshold_per_s).contains(&clear_per_s) {
                return Err(format!(
                    "clear_per_s {clear_per_s} must be between 0 and threshold_per_s {threshold_per_s}"
                ));
            }
            let window_ns =
                duration_ns("window_ms", raw.window_ms)?.ok_or_else(|| need("window_ms"))?;
            if window_ns == 0 {
                return Err("window_ms must be positive".into());
            }
            Condition::Rate {
                window_ns,
                threshold_per_s,
                clear_per_s,
                direction: raw.direction.unwrap_or(Direction::Either),
            }
        }
        Kind::NoData => {
            let silent_ns = duration_ns("silent_for_ms", raw.silent_for_ms)?
                .ok_or_else(|| need("silent_for_ms"))?;
            if silent_ns == 0 {
                return Err("silent_for_ms must be positive".into());
            }
            Condition::NoData { silent_ns }
        }
        Kind::Quality => Condition::Quality {
            at_least: match raw.quality.unwrap_or(QualityLevel::Bad) {
                QualityLevel::Uncertain => Quality::Uncertain,
                QualityLevel::Bad => Quality::Bad,
            },
        },
    };
    if let Some(k) = raw.labels.keys().find(|k| k.is_empty()) {
        return Err(format!("label name {k:?} is empty"));
    }
    let has_levels = condition.levels().0.is_some();
    let summary = Template::parse(
        raw.summary.as_deref().unwrap_or(DEFAULT_SUMMARY),
        has_levels,
    )
    .map_err(|e| format!("summary: {e}"))?;
    Ok(Rule {
        sensors: glob("sensors", Some(&raw.sensors))?,
        sites: glob("sites", raw.sites.as_deref())?,
        agents: glob("agents", raw.agents.as_deref())?,
        for_ns: duration_ns("for_ms", raw.for_ms)?.unwrap_or(0),
        clear_for_ns: duration_ns("clear_for_ms", raw.clear_for_ms)?.unwrap_or(0),
        name: raw.name,
        condition,
        severity: raw.severity,
        labels: raw.labels,
        summary,
    })
}

/// The annotation when a rule has no `summary`.
const DEFAULT_SUMMARY: &str = "{rule} {state}: {sensor} at {site} is {value}";

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        RuleSet::from_toml(text).unwrap_err().to_string()
    }

    const BASE: &str = "[[rule]]\nname = \"uv\"\nsensors = \"*/v?\"\nseverity = \"critical\"\n";

    #[test]
    fn a_full_rule_parses() {
        let r = RuleSet::from_toml(
            r#"
[limits]
max_series = 10

[[rule]]
name = "undervoltage"
sensors = "*/v?"
sites = "substation-*"
kind = "below"
threshold = 207.0
clear = 212.0
for_ms = 100
clear_for_ms = 1000
severity = "critical"
summary = "{sensor} at {site}: {value:.1} V below {threshold}"
labels = { team = "grid" }
"#,
        )
        .unwrap();
        assert_eq!(r.max_series(), 10);
        let rule = &r.rules()[0];
        assert_eq!(
            rule.condition(),
            &Condition::Below {
                threshold: 207.0,
                clear: 212.0
            }
        );
        assert_eq!(rule.for_ns, 100_000_000);
        assert_eq!(rule.clear_for_ns, 1_000_000_000);
        assert_eq!(rule.labels["team"], "grid");
        assert!(rule.matches("substation-7", "rtu-3", "feed/va"));
        assert!(!rule.matches("lab", "rtu-3", "feed/va"));
        assert!(RuleSet::from_toml("").unwrap().rules().is_empty());
    }

    #[test]
    fn clear_errors() {
        let cases = [
            (
                "kind = \"below\"\nthreshold = 207.0\nclear = 200.0\n",
                "rule \"uv\" (line 1): clear 200 is below threshold 207",
            ),
            (
                "kind = \"above\"\nthreshold = 10.0\nclear = 11.0\n",
                "clear 11 is above threshold 10",
            ),
            (
                "kind = \"below\"\nthreshold = 1.0\nfor_ms = -5\n",
                "for_ms must not be negative (got -5)",
            ),
            (
                "kind = \"below\"\nthreshold = 1.0\nclear_for_ms = -1\n",
                "clear_for_ms must not be negative",
            ),
            ("kind = \"below\"\n", "kind below needs threshold"),
            (
                "kind = \"below\"\nthreshold = nan\n",
                "threshold must be a finite number",
            ),
            (
                "kind = \"below\"\nthreshold = 1.0\nwindow_ms = 10\n",
                "window_ms does not apply to kind below",
            ),
            (
                "kind = \"rate\"\nthreshold = 1.0\n",
                "threshold does not apply to kind rate",
            ),
            (
                "kind = \"rate\"\nthreshold_per_s = 1.0\n",
                "kind rate needs window_ms",
            ),
            (
                "kind = \"rate\"\nthreshold_per_s = -1.0\nwindow_ms = 5\n",
                "threshold_per_s must be positive",
            ),
            (
                "kind = \"rate\"\nthreshold_per_s = 1.0\nclear_per_s = 2.0\nwindow_ms = 5\n",
                "clear_per_s 2 must be between 0",
            ),
            (
                "kind = \"rate\"\nthreshold_per_s = 1.0\nwindow_ms = 0\n",
                "window_ms must be positive",
            ),
            (
                "kind = \"no_data\"\nfor_ms = 5\nsilent_for_ms = 5\n",
                "for_ms does not apply to kind no_data",
            ),
            ("kind = \"no_data\"\n", "kind no_data needs silent_for_ms"),
            (
                "kind = \"quality\"\nsummary = \"{threshold}\"\n",
                "summary: '{threshold}' is not defined",
            ),
            (
                "kind = \"quality\"\nsummary = \"{valu}\"\n",
                "unknown placeholder '{valu}'",
            ),
            ("kind = \"quality\"\nsites = \"\"\n", "sites is empty"),
            (
                "kind = \"quality\"\nlabels = { \"\" = \"x\" }\n",
                "label name \"\" is empty",
            ),
        ];
        for (extra, want) in cases {
            let e = err(&format!("{BASE}{extra}"));
            assert!(e.contains(want), "{extra}: {e}");
        }
    }

    #[test]
    fn parse_errors_name_the_line_and_key() {
        let e = err(&format!(
            "{BASE}kind = \"below\"\nthreshold = 1.0\nthreshhold = 2.0\n"
        ));
        assert!(e.contains("line 7") && e.contains("threshhold"), "{e}");
        let e = err(&format!("{BASE}kind = \"sideways\"\n"));
        assert!(e.contains("sideways") && e.contains("line 5"), "{e}");
        let e = err(
            "[[rule]]\nname = \"a\"\nkind = \"quality\"\nsensors = \"*\"\nseverity = \"page\"\n",
        );
        assert!(e.contains("page") && e.contains("line 5"), "{e}");
        let e = err(
            "[[rule]]\nname = \"a\"\nkind = \"quality\"\nsensors = \"\"\nseverity = \"info\"\n",
        );
        assert!(e.contains("sensors is empty"), "{e}");
        let e = err("[limits]\nmax_series = 0\n");
        assert!(e.contains("max_series must be at least 1"), "{e}");
        let e = err("[limits]\nmax_serie = 5\n");
        assert!(e.contains("max_serie"), "{e}");
    }

    #[test]
    fn duplicate_names_and_rule_lines() {
        let two = format!("{BASE}kind = \"quality\"\n\n{BASE}kind = \"quality\"\n");
        assert_eq!(err(&two), "rule \"uv\" is defined twice (lines 1 and 7)");
        let e = err(&format!(
            "{BASE}kind = \"quality\"\n\n{}",
            BASE.replace("uv", "uv2") + "kind = \"below\"\n"
        ));
        assert!(e.starts_with("rule \"uv2\" (line 7)"), "{e}");
    }
}
