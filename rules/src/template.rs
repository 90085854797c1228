//! The annotation template of a rule: text with `{placeholder}`s filled from the
//! transition, checked when the rules file is loaded so a typo is an error there
//! and never a half-rendered page at 3 a.m.
//!
//! Placeholders: `{rule} {sensor} {site} {agent} {severity} {state} {quality}`,
//! and the numbers `{value} {threshold} {clear}`, which take an optional precision
//! (`{value:.1}`). `{threshold}` and `{clear}` exist for the kinds that have them
//! (`above`, `below`, `rate`). `{{` and `}}` are literal braces.

use crate::config::Severity;
use crate::engine::State;
use ferrule_wire::Quality;
use std::fmt::Write as _;

/// What a placeholder refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Rule,
    Sensor,
    Site,
    Agent,
    Severity,
    State,
    Quality,
    Value,
    Threshold,
    Clear,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(Field, Option<usize>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

/// The values a template is rendered with.
pub(crate) struct Values<'a> {
    pub rule: &'a str,
    pub sensor: &'a str,
    pub site: &'a str,
    pub agent: &'a str,
    pub severity: Severity,
    pub state: State,
    pub quality: Quality,
    pub value: f64,
    pub threshold: Option<f64>,
    pub clear: Option<f64>,
}

/// The largest precision a placeholder may ask for (f64 has 17 significant digits).
const MAX_PRECISION: usize = 17;

impl Template {
    /// Parses `text`; `has_thresholds` says whether `{threshold}` and `{clear}` mean
    /// something for the rule's kind. The error is a sentence for the user.
    pub(crate) fn parse(text: &str, has_thresholds: bool) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err("'}' without a '{' (write '}}' for a literal brace)".into()),
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => inner.push(c),
                            None => {
                                return Err(format!(
                                    "unclosed '{{{inner}' (write '{{{{' for a literal brace)"
                                ))
                            }
                        }
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut lit)));
                    }
                    parts.push(field(&inner, has_thresholds)?);
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Self { parts })
    }

    /// Renders the template.
    pub(crate) fn render(&self, v: &Values<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            // Writing to a String cannot fail.
            let _ = match part {
                Part::Text(t) => out.write_str(t),
                Part::Field(f, prec) => match f {
                    Field::Rule => out.write_str(v.rule),
                    Field::Sensor => out.write_str(v.sensor),
                    Field::Site => out.write_str(v.site),
                    Field::Agent => out.write_str(v.agent),
                    Field::Severity => out.write_str(v.severity.as_str()),
                    Field::State => out.write_str(v.state.as_str()),
                    Field::Quality => out.write_str(quality_name(v.quality)),
                    Field::Value => number(&mut out, Some(v.value), *prec),
                    Field::Threshold => number(&mut out, v.threshold, *prec),
                    Field::Clear => number(&mut out, v.clear, *prec),
                },
            };
        }
        out
    }
}

fn number(out: &mut String, n: Option<f64>, prec: Option<usize>) -> std::fmt::Result {
    match (n, prec) {
        (None, _) => Ok(()),
        (Some(n), Some(p)) => write!(out, "{n:.p$}"),
        (Some(n), None) => write!(out, "{n}"),
    }
}

/// The lowercase name of a quality, as the rules file and the JSON lines spell it.
pub(crate) fn quality_name(q: Quality) -> &'static str {
    match q {
        Quality::Good => "good",
        Quality::Uncertain => "uncertain",
        Quality::Bad => "bad",
    }
}

fn field(inner: &str, has_thresholds: bool) -> Result<Part, String> {
    let (name, prec) = match inner.split_once(':') {
        None => (inner, None),
        Some((name, spec)) => {
            let digits = spec.strip_prefix('.').ok_or_else(|| {
                format!(
                    "bad format '{{{inner}}}': only a precision like '{{{name}:.2}}' is allowed"
                )
            })?;
            let p: usize = digits
                .parse()
                .ok()
                .filter(|p| *p <= MAX_PRECISION)
                .ok_or_else(|| {
                    format!("bad precision in '{{{inner}}}': want '.0' to '.{MAX_PRECISION}'")
                })?;
            (name, Some(p))
        }
    };
    let f = match name {
        "rule" => Field::Rule,
        "sensor" => Field::Sensor,
        "site" => Field::Site,
        "agent" => Field::Agent,
        "severity" => Field::Severity,
        "state" => Field::State,
        "quality" => Field::Quality,
        "value" => Field::Value,
        "threshold" | "clear" if !has_thresholds => {
            return Err(format!("'{{{name}}}' is not defined for this rule's kind"))
        }
        "threshold" => Field::Threshold,
        "clear" => Field::Clear,
        _ => {
            return Err(format!(
                "unknown placeholder '{{{name}}}' (known: rule, sensor, site, agent, severity, \
                 state, quality, value, threshold, clear)"
            ))
        }
    };
    if prec.is_some() && !matches!(f, Field::Value | Field::Threshold | Field::Clear) {
        return Err(format!("'{{{name}}}' is text and takes no precision"));
    }
    Ok(Part::Field(f, prec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values<'static> {
        Values {
            rule: "undervoltage",
            sensor: "feed/va",
            site: "substation-7",
            agent: "rtu-3",
            severity: Severity::Critical,
            state: State::Firing,
            quality: Quality::Good,
            value: 161.234,
            threshold: Some(207.0),
            clear: Some(212.0),
        }
    }

    #[test]
    fn renders_placeholders_and_escapes() {
        let t = Template::parse(
            "{sensor} at {site}: {value:.1} V below {threshold} {{ok}}",
            true,
        )
        .unwrap();
        assert_eq!(
            t.render(&values()),
            "feed/va at substation-7: 161.2 V below 207 {ok}"
        );
        let t =
            Template::parse("{rule} {state} {severity} {agent} {quality} {clear}", true).unwrap();
        assert_eq!(
            t.render(&values()),
            "undervoltage firing critical rtu-3 good 212"
        );
    }

    #[test]
    fn rejects_mistakes() {
        for (text, want) in [
            ("{sensr}", "unknown placeholder"),
            ("{value", "unclosed"),
            ("value}", "without a '{'"),
            ("{value:2}", "only a precision"),
            ("{value:.99}", "bad precision"),
            ("{site:.2}", "takes no precision"),
        ] {
            let e = Template::parse(text, true).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = Template::parse("{threshold}", false).unwrap_err();
        assert!(e.contains("not defined"), "{e}");
    }
}
