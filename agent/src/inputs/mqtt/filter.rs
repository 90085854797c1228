//! MQTT topic filters (MQTT 3.1.1 section 4.7) and matching a topic against
//! one, capturing the topic's levels for the sensor name template.
//!
//! Pure: no I/O. Invariants of a parsed [`TopicFilter`]: it has at least one
//! level, `+` only ever stands alone in a level, and `#` only stands alone in
//! the last level. Matching follows the broker's rules, including that a
//! filter starting with a wildcard does not match a topic starting with `$`
//! (`$SYS/...`), so what the agent accepts is what the broker delivers.

use std::fmt;

/// Longest topic filter accepted: the MQTT string limit.
pub const MAX_FILTER_BYTES: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// A level that must equal this text.
    Literal(String),
    /// `+`: exactly one level, any text.
    Single,
    /// `#`: the rest of the topic, zero or more levels (always last).
    Multi,
}

/// A checked MQTT topic filter such as `plant/+/temp/#`.
///
/// ```
/// use ferrule_agent::inputs::mqtt::filter::TopicFilter;
/// let f = TopicFilter::parse("plant/+/temp/#").unwrap();
/// let m = f.matches("plant/boiler-1/temp/inlet/c").unwrap();
/// assert_eq!(m.level(1), Some("boiler-1"));
/// assert_eq!(m.rest(), Some("inlet/c".to_string()));
/// assert!(f.matches("plant/boiler-1/pressure").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
    levels: Vec<Level>,
}

/// Why a string is not a valid topic filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The filter was empty.
    #[error("topic filter is empty")]
    Empty,
    /// Longer than [`MAX_FILTER_BYTES`].
    #[error("topic filter is {0} bytes, the limit is {MAX_FILTER_BYTES}")]
    TooLong(usize),
    /// A `+` or `#` shared its level with other characters (`a+/b`).
    #[error("level {0:?}: `+` and `#` must stand alone in their level")]
    WildcardInLevel(String),
    /// A `#` that was not the last level (`a/#/b`).
    #[error("`#` must be the last level")]
    MultiNotLast,
    /// A NUL character, which MQTT forbids.
    #[error("topic filter holds a NUL character")]
    Nul,
}

impl TopicFilter {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.is_empty() {
            return Err(FilterError::Empty);
        }
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong(text.len()));
        }
        if text.contains('\0') {
            return Err(FilterError::Nul);
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Single,
                "#" if i + 1 == parts.len() => Level::Multi,
                "#" => return Err(FilterError::MultiNotLast),
                p if p.contains(['+', '#']) => {
                    return Err(FilterError::WildcardInLevel(p.to_string()))
                }
                p => Level::Literal(p.to_string()),
            };
            levels.push(level);
        }
        Ok(Self {
            text: text.to_string(),
            levels,
        })
    }

    /// The filter as written (what the agent subscribes to).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Levels every matching topic has: all of them, or those before a
    /// trailing `#` (which may match nothing).
    pub fn fixed_levels(&self) -> usize {
        if self.ends_with_multi() {
            self.levels.len() - 1
        } else {
            self.levels.len()
        }
    }

    /// True if the filter ends in `#`.
    pub fn ends_with_multi(&self) -> bool {
        matches!(self.levels.last(), Some(Level::Multi))
    }

    /// Matches `topic` (a concrete topic name, as a broker delivers it) and
    /// returns its levels, or `None` if it does not match.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Captures<'t>> {
        // MQTT 3.1.1 4.7.2: wildcards at the first level do not match `$` topics.
        if topic.starts_with('$')
            && matches!(self.levels.first(), Some(Level::Single | Level::Multi))
        {
            return None;
        }
        let levels: Vec<&'t str> = topic.split('/').collect();
        for (i, f) in self.levels.iter().enumerate() {
            match f {
                Level::Multi => {
                    // `a/#` matches `a` itself too (the parent level).
                    return Some(Captures {
                        levels,
                        rest_from: Some(i),
                    });
                }
                Level::Single => {
                    levels.get(i)?;
                }
                Level::Literal(l) => {
                    if levels.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                }
            }
        }
        (levels.len() == self.levels.len()).then_some(Captures {
            levels,
            rest_from: None,
        })
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The levels of a topic that matched a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captures<'t> {
    levels: Vec<&'t str>,
    /// Index of the first level the filter's `#` matched, if it has one.
    rest_from: Option<usize>,
}

impl<'t> Captures<'t> {
    /// Topic level `i` (0-based), if the topic has that many levels.
    pub fn level(&self, i: usize) -> Option<&'t str> {
        self.levels.get(i).copied()
    }

    /// The levels the filter's `#` matched, joined with `/` (empty if it matched
    /// none); `None` if the filter has no `#`.
    pub fn rest(&self) -> Option<String> {
        let from = self.rest_from?;
        Some(self.levels.get(from..).unwrap_or_default().join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn filters_are_checked() {
        assert_eq!(TopicFilter::parse(""), Err(FilterError::Empty));
        assert_eq!(TopicFilter::parse("a/#/b"), Err(FilterError::MultiNotLast));
        assert_eq!(
            TopicFilter::parse("a/b+"),
            Err(FilterError::WildcardInLevel("b+".into()))
        );
        assert_eq!(
            TopicFilter::parse("a#"),
            Err(FilterError::WildcardInLevel("a#".into()))
        );
        assert_eq!(TopicFilter::parse("a/\0"), Err(FilterError::Nul));
        for ok in ["#", "+", "/", "a//b", "+/+/#", "$SYS/#", "a/b c/d"] {
            assert_eq!(f(ok).as_str(), ok);
        }
        assert_eq!(f("a/+/#").fixed_levels(), 2);
        assert_eq!(f("a/+/b").fixed_levels(), 3);
    }

    #[test]
    fn literal_and_single_level_matching() {
        let x = f("plant/+/temp/+");
        let m = x.matches("plant/boiler/temp/3").unwrap();
        assert_eq!(m.level(0), Some("plant"));
        assert_eq!(m.level(1), Some("boiler"));
        assert_eq!(m.level(3), Some("3"));
        assert_eq!(m.level(4), None);
        assert_eq!(m.rest(), None);
        assert!(x.matches("plant/boiler/temp").is_none());
        assert!(x.matches("plant/boiler/temp/3/4").is_none());
        assert!(x.matches("plant/boiler/pressure/3").is_none());
        // `+` matches an empty level.
        assert_eq!(x.matches("plant//temp/").unwrap().level(1), Some(""));
        assert!(f("a/b").matches("a/b").is_some());
        assert!(f("a/b").matches("a/b/").is_none());
        assert!(f("a/b").matches("A/b").is_none());
    }

    #[test]
    fn multi_level_matches_the_rest_including_nothing() {
        let x = f("site/#");
        assert_eq!(
            x.matches("site/a/b/c").unwrap().rest(),
            Some("a/b/c".into())
        );
        assert_eq!(x.matches("site/a").unwrap().rest(), Some("a".into()));
        assert_eq!(x.matches("site").unwrap().rest(), Some(String::new()));
        assert!(x.matches("other/a").is_none());
        assert_eq!(f("#").matches("a/b").unwrap().rest(), Some("a/b".into()));
        let y = f("+/x/#");
        let m = y.matches("k/x/1/2").unwrap();
        assert_eq!((m.level(0), m.rest()), (Some("k"), Some("1/2".into())));
    }

    #[test]
    fn wildcards_do_not_match_dollar_topics() {
        assert!(f("#").matches("$SYS/broker/uptime").is_none());
        assert!(f("+/broker/uptime").matches("$SYS/broker/uptime").is_none());
        assert!(f("$SYS/#").matches("$SYS/broker/uptime").is_some());
        assert!(f("$SYS/+/uptime").matches("$SYS/broker/uptime").is_some());
    }
}
