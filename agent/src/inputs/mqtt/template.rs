//! Sensor name templates: how a topic becomes a sensor name.
//!
//! Syntax: literal text with placeholders in braces.
//!
//! | placeholder | becomes                                                        |
//! |-------------|----------------------------------------------------------------|
//! | `{0}`, `{1}`, ... | that level of the topic, counted from 0 (`{1}` of `plant/boiler/temp` is `boiler`) |
//! | `{#}`       | the levels the filter's trailing `#` matched, joined with `/` (empty if none) |
//!
//! With the filter `plant/+/temp/+`, the template `{1}/{3}` turns the topic
//! `plant/boiler/temp/inlet` into the sensor `boiler/inlet`; with `site/#`,
//! `site-7/{#}` turns `site/feeder/3/va` into `site-7/feeder/3/va`.
//!
//! Invariants: a parsed [`NameTemplate`] has well-formed placeholders and its
//! literal text holds only characters a sensor name allows, so a rendered name
//! can only be invalid because of what the topic put in it (a space, a `+`, too
//! long), which is counted as bad data by the caller. Pure: no I/O.

use super::filter::{Captures, TopicFilter};
use ferrule_wire::MAX_SENSOR_NAME_BYTES;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Level(usize),
    Rest,
}

/// A parsed sensor name template such as `{1}/{3}` or `site-7/{#}`.
///
/// ```
/// use ferrule_agent::inputs::mqtt::filter::TopicFilter;
/// use ferrule_agent::inputs::mqtt::template::NameTemplate;
/// let filter = TopicFilter::parse("plant/+/temp/#").unwrap();
/// let t = NameTemplate::parse("{1}/t/{#}").unwrap();
/// t.check_against(&filter).unwrap();
/// let m = filter.matches("plant/boiler/temp/in/c").unwrap();
/// assert_eq!(t.render(&m).unwrap(), "boiler/t/in/c");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    parts: Vec<Part>,
}

/// Why a template does not parse, or does not fit its filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The template was empty.
    #[error("sensor name template is empty")]
    Empty,
    /// A `{` without its `}`, or a `}` without its `{`.
    #[error("unbalanced brace at byte {0}")]
    Unbalanced(usize),
    /// Something in braces that is neither a level number nor `#`.
    #[error(
        "unknown placeholder {{{0}}}: use {{0}}, {{1}}, ... for topic levels or {{#}} for the rest"
    )]
    UnknownPlaceholder(String),
    /// Literal text a sensor name cannot hold.
    #[error(
        "{0:?} cannot be part of a sensor name (allowed: ASCII letters, digits and _ . : / -)"
    )]
    BadChar(char),
    /// Literal text alone is already longer than a sensor name may be.
    #[error("the template's literal text is longer than {MAX_SENSOR_NAME_BYTES} bytes")]
    TooLong,
    /// `{N}` where no matching topic can have level N.
    #[error("{{{level}}} is past the {levels} levels topics matching {filter:?} have (levels count from 0)")]
    NoSuchLevel {
        /// The placeholder's level.
        level: usize,
        /// How many levels a matching topic has.
        levels: usize,
        /// The filter.
        filter: String,
    },
    /// `{#}` with a filter that does not end in `#`.
    #[error("{{#}} needs a filter ending in `#`, and {0:?} does not")]
    NoRest(String),
}

/// Why a template could not be filled in for one topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The topic has fewer levels than the template uses (possible only with `#`).
    #[error("the topic has no level {0}")]
    MissingLevel(usize),
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-')
}

impl NameTemplate {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut literal_bytes = 0usize;
        let mut rest = text.char_indices();
        while let Some((i, c)) = rest.next() {
            match c {
                '{' => {
                    let inner_start = i + 1;
                    let close = text[inner_start..]
                        .find(['}', '{'])
                        .map(|j| inner_start + j)
                        .filter(|j| text.as_bytes()[*j] == b'}')
                        .ok_or(TemplateError::Unbalanced(i))?;
                    let inner = &text[inner_start..close];
                    let part = match inner {
                        "#" => Part::Rest,
                        n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Part::Level(
                            n.parse()
                                .map_err(|_| TemplateError::UnknownPlaceholder(n.to_string()))?,
                        ),
                        other => return Err(TemplateError::UnknownPlaceholder(other.to_string())),
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    // Skip the placeholder's characters (all ASCII up to `}`).
                    for _ in inner_start..=close {
                        rest.next();
                    }
                }
                '}' => return Err(TemplateError::Unbalanced(i)),
                c if name_char(c) => {
                    literal.push(c);
                    literal_bytes += 1;
                }
                c => return Err(TemplateError::BadChar(c)),
            }
        }
        if literal_bytes > MAX_SENSOR_NAME_BYTES {
            return Err(TemplateError::TooLong);
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// Checks that every placeholder can be filled for topics matching
    /// `filter`: `{N}` must be below the filter's fixed levels unless the
    /// filter ends in `#` (then a topic may or may not have level N), and
    /// `{#}` needs a trailing `#`.
    pub fn check_against(&self, filter: &TopicFilter) -> Result<(), TemplateError> {
        for p in &self.parts {
            match p {
                Part::Level(n) if *n >= filter.fixed_levels() && !filter.ends_with_multi() => {
                    return Err(TemplateError::NoSuchLevel {
                        level: *n,
                        levels: filter.fixed_levels(),
                        filter: filter.as_str().to_string(),
                    })
                }
                Part::Rest if !filter.ends_with_multi() => {
                    return Err(TemplateError::NoRest(filter.as_str().to_string()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The sensor name for a matched topic. Not yet checked as a sensor name:
    /// topic levels may hold anything.
    pub fn render(&self, m: &Captures<'_>) -> Result<String, RenderError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Level(n) => out.push_str(m.level(*n).ok_or(RenderError::MissingLevel(*n))?),
                // check_against guarantees a `#`; an unchecked template renders it empty.
                Part::Rest => out.push_str(&m.rest().unwrap_or_default()),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(filter: &str, template: &str, topic: &str) -> Result<String, RenderError> {
        let f = TopicFilter::parse(filter).unwrap_or_else(|e| panic!("{e}"));
        let t = NameTemplate::parse(template).unwrap_or_else(|e| panic!("{e}"));
        t.check_against(&f).unwrap_or_else(|e| panic!("{e}"));
        let m = f
            .matches(topic)
            .unwrap_or_else(|| panic!("{topic} does not match"));
        t.render(&m)
    }

    #[test]
    fn levels_and_rest_fill_in() {
        assert_eq!(
            render("plant/+/temp/+", "{1}/{3}", "plant/boiler/temp/inlet"),
            Ok("boiler/inlet".into())
        );
        assert_eq!(
            render("site/#", "site-7/{#}", "site/feeder/3/va"),
            Ok("site-7/feeder/3/va".into())
        );
        assert_eq!(render("site/#", "x{#}", "site"), Ok("x".into()));
        assert_eq!(render("a/b", "fixed.name", "a/b"), Ok("fixed.name".into()));
        assert_eq!(render("+/+", "{1}-{0}-{1}", "p/q"), Ok("q-p-q".into()));
        // `{N}` past the fixed levels of a `#` filter may be missing at run time.
        assert_eq!(render("a/#", "{2}", "a/b/c"), Ok("c".into()));
        assert_eq!(
            render("a/#", "{2}", "a/b"),
            Err(RenderError::MissingLevel(2))
        );
        // Rendering does not check the result: the caller counts bad names.
        assert_eq!(render("a/+", "x/{1}", "a/b c"), Ok("x/b c".into()));
    }

    #[test]
    fn syntax_errors_are_reported() {
        use TemplateError as E;
        assert_eq!(NameTemplate::parse(""), Err(E::Empty));
        assert_eq!(NameTemplate::parse("a/{1"), Err(E::Unbalanced(2)));
        assert_eq!(NameTemplate::parse("a/{{1}}"), Err(E::Unbalanced(2)));
        assert_eq!(NameTemplate::parse("a}"), Err(E::Unbalanced(1)));
        assert_eq!(
            NameTemplate::parse("{x}"),
            Err(E::UnknownPlaceholder("x".into()))
        );
        assert_eq!(
            NameTemplate::parse("{}"),
            Err(E::UnknownPlaceholder(String::new()))
        );
        assert_eq!(
            NameTemplate::parse("{-1}"),
            Err(E::UnknownPlaceholder("-1".into()))
        );
        assert!(matches!(
            NameTemplate::parse("{99999999999999999999999}"),
            Err(E::UnknownPlaceholder(_))
        ));
        assert_eq!(NameTemplate::parse("a b/{0}"), Err(E::BadChar(' ')));
        assert_eq!(NameTemplate::parse("é{0}"), Err(E::BadChar('é')));
        assert_eq!(NameTemplate::parse(&"x".repeat(201)), Err(E::TooLong));
    }

    #[test]
    fn placeholders_must_fit_the_filter() {
        let check = |f: &str, t: &str| {
            NameTemplate::parse(t)
                .unwrap_or_else(|e| panic!("{e}"))
                .check_against(&TopicFilter::parse(f).unwrap_or_else(|e| panic!("{e}")))
        };
        assert!(check("a/+/c", "{2}").is_ok());
        assert!(matches!(
            check("a/+/c", "{3}"),
            Err(TemplateError::NoSuchLevel {
                level: 3,
                levels: 3,
                ..
            })
        ));
        assert!(check("a/#", "{5}/{#}").is_ok());
        assert_eq!(
            check("a/+", "{#}"),
            Err(TemplateError::NoRest("a/+".into()))
        );
    }
}
