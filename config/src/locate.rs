//! Key paths and where they are written in the file.
//!
//! A path is a list of [`Seg`]s (`spool`, `limits`, `max_bytes`, or an array
//! index). Errors from serde carry such a path (via `serde_path_to_error`);
//! validators give it as a dotted string. Both are turned into a line of the
//! file by walking toml's spanned document ([`toml::de::DeTable`], which
//! keeps the byte range of every key and value) along the path and taking
//! the span of the deepest key found. So a bad value is reported at the line
//! of its key, and a key that is missing from an existing table at the line
//! of that table's header (or first key).

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seg {
    /// A table key (or an enum variant, which TOML writes as a key).
    Key(String),
    /// An array element.
    Index(usize),
}

/// `spool.limits.max_bytes`, `sensors[2].name`; empty for the root.
pub(crate) fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Index(index) => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// The inverse of [`dotted`] for the keys validators write. Keys that
/// themselves contain `.` or `[` (quoted TOML keys) cannot be expressed;
/// ferrule's snake_case keys never do.
pub(crate) fn parse_dotted(key: &str) -> Vec<Seg> {
    let mut path = Vec::new();
    for part in key.split('.').filter(|part| !part.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                path.push(Seg::Key(rest[..open].to_string()));
            }
            rest = &rest[open..];
            while let Some(inner) = rest.strip_prefix('[') {
                let Some(close) = inner.find(']') else { break };
                match inner[..close].parse() {
                    Ok(index) => path.push(Seg::Index(index)),
                    Err(_) => path.push(Seg::Key(inner[..close].to_string())),
                }
                rest = &inner[close + 1..];
            }
        } else {
            path.push(Seg::Key(rest.to_string()));
        }
    }
    path
}

/// The path of a deserialization error.
pub(crate) fn from_serde_path(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|segment| match segment {
            Segment::Seq { index } => Seg::Index(*index),
            Segment::Map { key } => Seg::Key(key.clone()),
            Segment::Enum { variant } => Seg::Key(variant.clone()),
            // A map key that is not a string; TOML has none, so this is a
            // placeholder that matches nothing.
            Segment::Unknown => Seg::Key("?".to_string()),
        })
        .collect()
}

/// Whether `path` is `prefix` or lies inside it.
pub(crate) fn starts_with(path: &[Seg], prefix: &[Seg]) -> bool {
    path.len() >= prefix.len() && path[..prefix.len()] == *prefix
}

/// 1-based line and column (in characters) of byte `offset` in `text`, or
/// `None` if the offset is past the end (as the placeholder spans of values
/// that came from the environment are).
pub(crate) fn line_col(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.as_bytes().get(..offset)?;
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |nl| nl + 1);
    let column = match text.get(line_start..offset) {
        Some(s) => s.chars().count() + 1,
        // Mid-character offset: count bytes rather than fail.
        None => offset - line_start + 1,
    };
    Some((line, column))
}

/// Byte span of the deepest key (or array element) of `path` present in
/// `root`.
pub(crate) fn span_of(root: &DeTable<'_>, path: &[Seg]) -> Option<Range<usize>> {
    let (Seg::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let (key, mut value) = root.get_key_value(first.as_str())?;
    let mut best = key.span();
    for seg in rest {
        let next = match (seg, value.get_ref()) {
            (Seg::Key(name), DeValue::Table(table)) => table
                .get_key_value(name.as_str())
                .map(|(key, value)| (key.span(), value)),
            (Seg::Index(index), DeValue::Array(array)) => {
                array.get(*index).map(|value| (value.span(), value))
            }
            _ => None,
        };
        let Some((span, next)) = next else { break };
        best = span;
        value = next;
    }
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_round_trips() {
        let path = vec![
            Seg::Key("sensors".into()),
            Seg::Index(2),
            Seg::Key("name".into()),
        ];
        assert_eq!(dotted(&path), "sensors[2].name");
        assert_eq!(parse_dotted("sensors[2].name"), path);
        assert_eq!(parse_dotted("grid[1][0]").len(), 3);
        assert_eq!(parse_dotted(""), vec![]);
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), Some((1, 1)));
        assert_eq!(line_col(text, 6), Some((2, 1)));
        // "bé" is 3 bytes but 2 characters: the space after it is column 3.
        assert_eq!(line_col(text, 9), Some((2, 3)));
        assert_eq!(line_col(text, text.len() + 1), None);
    }
}
