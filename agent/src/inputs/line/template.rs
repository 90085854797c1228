//! Sensor name templates: how a line's measurement, tags and field key become a
//! sensor name. Pure: no I/O.
//!
//! A template is literal text with placeholders:
//!
//! | placeholder     | becomes                                  |
//! |-----------------|------------------------------------------|
//! | `{measurement}` | the measurement                          |
//! | `{field}`       | the field key                            |
//! | `{tag:KEY}`     | the value of tag `KEY` (line must have it) |
//!
//! Only the tags a template names take part in the name; every other tag is
//! ignored. The literal text must itself be valid in a sensor name (ASCII
//! letters, digits and `_ . : / -`), which [`Template::parse`] checks, so a
//! rendered name can only be invalid because of what the line carried.

use std::fmt;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Measurement,
    Field,
    Tag(String),
}

/// A parsed sensor name template, e.g. `site-a/{measurement}/{tag:bay}/{field}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template string is not a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("'{{' at byte {0} is not closed")]
    Unclosed(usize),
    /// A `}` without its `{`.
    #[error("'}}' at byte {0} has no opening '{{'")]
    StrayClose(usize),
    /// A placeholder other than `{measurement}`, `{field}`, `{tag:KEY}`.
    #[error("unknown placeholder {{{0}}}; use {{measurement}}, {{field}} or {{tag:KEY}}")]
    Unknown(String),
    /// Literal text holding a character sensor names do not allow.
    #[error("literal {0:?} is not allowed in sensor names (ASCII letters, digits and _ . : / -)")]
    BadLiteral(char),
    /// The template is empty.
    #[error("template is empty")]
    Empty,
}

/// A placeholder the line could not fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingTag<'t>(pub &'t str);

impl fmt::Display for MissingTag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line has no tag {:?}", self.0)
    }
}

impl Template {
    /// Parses a template.
    ///
    /// ```
    /// use ferrule_agent::inputs::line::template::Template;
    /// let t = Template::parse("{measurement}/{tag:host}/{field}").unwrap();
    /// let mut name = String::new();
    /// t.render("cpu", "usage", |k| (k == "host").then_some("box-1"), &mut name)
    ///     .unwrap();
    /// assert_eq!(name, "cpu/box-1/usage");
    /// ```
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        if s.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        let mut offset = 0;
        while let Some(c) = rest.chars().next() {
            match c {
                '{' => {
                    let close = rest.find('}').ok_or(TemplateError::Unclosed(offset))?;
                    let inner = &rest[1..close];
                    if inner.contains('{') {
                        return Err(TemplateError::Unclosed(offset));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(match inner {
                        "measurement" => Part::Measurement,
                        "field" => Part::Field,
                        _ => match inner.strip_prefix("tag:") {
                            Some(k) if !k.is_empty() => Part::Tag(k.to_string()),
                            _ => return Err(TemplateError::Unknown(inner.to_string())),
                        },
                    });
                    offset += close + 1;
                    rest = &rest[close + 1..];
                }
                '}' => return Err(TemplateError::StrayClose(offset)),
                c if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-') => {
                    lit.push(c);
                    offset += 1;
                    rest = &rest[1..];
                }
                c => return Err(TemplateError::BadLiteral(c)),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Self { parts })
    }

    /// True if the template names the field key (otherwise every field of a line
    /// maps to the same sensor).
    pub fn uses_field(&self) -> bool {
        self.parts.contains(&Part::Field)
    }

    /// Writes the name for one field into `out` (cleared first). `tag` looks up a
    /// tag's value by key.
    pub fn render<'t, 'v>(
        &'t self,
        measurement: &str,
        field: &str,
        tag: impl Fn(&str) -> Option<&'v str>,
        out: &mut String,
    ) -> Result<(), MissingTag<'t>> {
        out.clear();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Measurement => out.push_str(measurement),
                Part::Field => out.push_str(field),
                Part::Tag(k) => out.push_str(tag(k).ok_or(MissingTag(k))?),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, tags: &[(&str, &str)]) -> Result<String, String> {
        let t = Template::parse(t).unwrap();
        let mut out = String::new();
        t.render(
            "meas",
            "fld",
            |k| tags.iter().find(|(tk, _)| *tk == k).map(|(_, v)| *v),
            &mut out,
        )
        .map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn placeholders_fill_in() {
        assert_eq!(render("{measurement}/{field}", &[]).unwrap(), "meas/fld");
        assert_eq!(
            render("site:{tag:host}/{measurement}.{field}", &[("host", "h1")]).unwrap(),
            "site:h1/meas.fld"
        );
        assert_eq!(render("fixed", &[]).unwrap(), "fixed");
        assert_eq!(
            render("{tag:a}{tag:b}", &[("b", "2"), ("a", "1")]).unwrap(),
            "12"
        );
        assert_eq!(
            render("{tag:host}/{field}", &[]).unwrap_err(),
            "line has no tag \"host\""
        );
        assert!(Template::parse("{measurement}/{field}")
            .unwrap()
            .uses_field());
        assert!(!Template::parse("{measurement}").unwrap().uses_field());
    }

    #[test]
    fn bad_templates_are_rejected() {
        assert_eq!(Template::parse(""), Err(TemplateError::Empty));
        assert_eq!(Template::parse("a/{field"), Err(TemplateError::Unclosed(2)));
        assert_eq!(Template::parse("a{b{c}"), Err(TemplateError::Unclosed(1)));
        assert_eq!(Template::parse("a}"), Err(TemplateError::StrayClose(1)));
        assert_eq!(
            Template::parse("{host}"),
            Err(TemplateError::Unknown("host".into()))
        );
        assert_eq!(
            Template::parse("{tag:}"),
            Err(TemplateError::Unknown("tag:".into()))
        );
        assert_eq!(
            Template::parse("a b/{field}"),
            Err(TemplateError::BadLiteral(' '))
        );
        assert_eq!(
            Template::parse("é{field}"),
            Err(TemplateError::BadLiteral('é'))
        );
    }
}
