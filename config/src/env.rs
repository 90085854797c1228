//! Environment overrides: which variables are overrides, how their values
//! are read, and how they are written into the parsed document.
//!
//! The naming rules are documented at the crate root. Invariants:
//! - A variable that does not start with `PREFIX_` is never looked at.
//! - `PREFIX_NAME` with no `__` is not an override. The binaries' own names
//!   ([`OWN_NAMES`]: `FERRULE_CONFIG`, `FERRULE_LOG`, `FERRULE_LOG_FORMAT`)
//!   are left alone; any other is reported back as "ignored" so a binary can
//!   warn about it and a typo such as `FERRULE_SPOOL_DIR` (for
//!   `FERRULE_SPOOL__DIR`) does not go unnoticed. (The project's scripts
//!   name their own variables `FERRULEDEV_*`, outside the prefix, so they
//!   never draw that warning.)
//! - Overrides are applied shortest path first, so a variable replacing a
//!   whole table (`FERRULE__SPOOL='{ dir = "/x" }'`) is applied before one
//!   setting a key inside it; two variables setting the same key is an error
//!   rather than a silent choice.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::map::Entry;
use toml::Spanned;

use crate::locate::{dotted, Seg};
use crate::ConfigError;

/// What a variable's name means to the loader.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Name {
    /// Does not start with `PREFIX_`.
    NotOurs,
    /// `PREFIX_NAME` without `__`: the binary's own variable.
    Reserved,
    /// An override of the key at this (lowercased) path.
    Key(Vec<String>),
    /// Meant as an override but malformed; the reason.
    Malformed(String),
}

/// The names after `PREFIX_` that the binaries read themselves (the config
/// path, the log filter and the log format): not overrides, and not worth a
/// warning either.
pub(crate) const OWN_NAMES: &[&str] = &["CONFIG", "LOG", "LOG_FORMAT"];

/// Classifies `var` for the given prefix (`"FERRULE"`; a trailing `_` is
/// accepted too).
pub(crate) fn classify(var: &str, prefix: &str) -> Name {
    let prefix = prefix.trim_end_matches('_');
    let Some(rest) = var.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return Name::NotOurs;
    };
    // `PREFIX__KEY` is a top-level key; `PREFIX_SECTION__KEY...` a nested one.
    let (rest, top_level) = match rest.strip_prefix('_') {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    let segments: Vec<&str> = rest.split("__").collect();
    if !top_level && segments.len() == 1 {
        if OWN_NAMES.contains(&rest) {
            return Name::NotOurs;
        }
        return Name::Reserved;
    }
    if segments
        .iter()
        .any(|s| s.is_empty() || s.starts_with('_') || s.ends_with('_'))
    {
        return Name::Malformed(format!(
            "not a valid override name: keys are separated by `__` and \
             cannot be empty or start or end with `_` (write \
             {prefix}_SECTION__KEY, or {prefix}__KEY for a top-level key)"
        ));
    }
    Name::Key(segments.iter().map(|s| s.to_lowercase()).collect())
}

/// One environment override to apply.
#[derive(Debug, Clone)]
pub(crate) struct Override {
    /// The variable's name.
    pub(crate) var: String,
    /// The key it sets.
    pub(crate) path: Vec<Seg>,
    /// Its value, unparsed.
    pub(crate) raw: String,
}

/// The overrides among a set of variables, in the order to apply them, and
/// the names of the prefixed variables that are not overrides.
pub(crate) fn collect(
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
) -> Result<(Vec<Override>, Vec<String>), ConfigError> {
    let mut overrides = Vec::new();
    let mut ignored = Vec::new();
    for (var, raw) in env {
        match classify(&var, prefix) {
            Name::NotOurs => {}
            Name::Reserved => ignored.push(var),
            Name::Malformed(message) => return Err(ConfigError::Env { var, message }),
            Name::Key(keys) => overrides.push(Override {
                var,
                path: keys.into_iter().map(Seg::Key).collect(),
                raw,
            }),
        }
    }
    // Parents before children; ties by name so the order (and so
    // `Loaded::overrides`) does not depend on the environment's order.
    overrides.sort_by(|a, b| (a.path.len(), &a.var).cmp(&(b.path.len(), &b.var)));
    ignored.sort();
    let mut seen: BTreeMap<&[Seg], &str> = BTreeMap::new();
    for o in &overrides {
        if let Some(first) = seen.insert(&o.path, &o.var) {
            return Err(ConfigError::Env {
                var: o.var.clone(),
                message: format!("sets `{}`, which {first} also sets", dotted(&o.path)),
            });
        }
    }
    Ok((overrides, ignored))
}

/// Reads an override's value: as a TOML value if it is one (`5`, `true`,
/// `["a", "b"]`, `{ a = 1 }`, `"quoted"`), else as the literal string.
/// `as_string` forces the literal string. Also returns whether the value
/// was read as something other than a string, i.e. whether falling back to
/// the literal string could help if the config type wanted a string.
pub(crate) fn value_of(raw: &str, as_string: bool) -> (DeValue<'_>, bool) {
    if !as_string {
        // Surrounding whitespace (a trailing newline from `$(cat file)`) is
        // not part of a TOML value; it stays in a literal string.
        if let Ok(value) = DeValue::parse(raw.trim()) {
            let value = value.into_inner();
            let not_string = !matches!(value, DeValue::String(_));
            return (value, not_string);
        }
    }
    (DeValue::String(Cow::Borrowed(raw)), false)
}

/// Sets `path` to `value` in `root`, creating missing tables. `span` is the
/// placeholder span given to what is created (it lies outside the file, so
/// it is never mistaken for a line of it).
///
/// Returns how long a prefix of `path` this override owns: the first table
/// it had to create, or the whole path if every table existed. An error
/// inside that prefix is the variable's fault.
pub(crate) fn apply<'a>(
    root: &mut DeTable<'a>,
    path: &[Seg],
    value: DeValue<'a>,
    span: &Range<usize>,
) -> Result<usize, String> {
    let key = |seg: &Seg| -> Spanned<Cow<'a, str>> {
        let name = match seg {
            Seg::Key(key) => key.clone(),
            Seg::Index(index) => index.to_string(),
        };
        Spanned::new(span.clone(), Cow::Owned(name))
    };
    let Some((last, parents)) = path.split_last() else {
        return Err("names no key".to_string());
    };
    let mut table = root;
    let mut created = None;
    for (depth, seg) in parents.iter().enumerate() {
        let slot = match table.entry(key(seg)) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) => {
                created.get_or_insert(depth + 1);
                slot.insert(Spanned::new(span.clone(), DeValue::Table(DeTable::new())))
            }
        };
        match slot.get_mut() {
            DeValue::Table(inner) => table = inner,
            other => {
                return Err(format!(
                    "cannot set a key inside `{}`: it is {} {}, not a table{}",
                    dotted(&path[..=depth]),
                    article(other.type_str()),
                    other.type_str(),
                    if other.is_array() {
                        " (arrays can only be replaced whole)"
                    } else {
                        ""
                    }
                ))
            }
        }
    }
    table.insert(key(last), Spanned::new(span.clone(), value));
    Ok(created.unwrap_or(path.len()))
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keys(path: &[&str]) -> Name {
        Name::Key(path.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn names() {
        assert_eq!(classify("PATH", "FERRULE"), Name::NotOurs);
        assert_eq!(classify("FERRULEX__A", "FERRULE"), Name::NotOurs);
        assert_eq!(classify("FERRULE_CONFIG", "FERRULE"), Name::NotOurs);
        assert_eq!(classify("FERRULE_LOG", "FERRULE"), Name::NotOurs);
        // ferrule_telemetry reads it (`json` for JSON lines): no warning at start.
        assert_eq!(classify("FERRULE_LOG_FORMAT", "FERRULE"), Name::NotOurs);
        assert_eq!(classify("FERRULE_CACHE", "FERRULE"), Name::Reserved);
        assert_eq!(classify("FERRULEDEV_CACHE", "FERRULE"), Name::NotOurs);
        assert_eq!(classify("FERRULE_SPOOL_DIR", "FERRULE"), Name::Reserved);
        assert_eq!(
            classify("FERRULE_SPOOL__MAX_BYTES", "FERRULE"),
            keys(&["spool", "max_bytes"])
        );
        assert_eq!(
            classify("FERRULE_SPOOL__LIMITS__MAX_BYTES", "FERRULE_"),
            keys(&["spool", "limits", "max_bytes"])
        );
        assert_eq!(
            classify("FERRULE__LOG_LEVEL", "FERRULE"),
            keys(&["log_level"])
        );
        for bad in [
            "FERRULE__",
            "FERRULE_SPOOL__",
            "FERRULE_SPOOL____X",
            "FERRULE_SPOOL___X",
            "FERRULE___X",
        ] {
            assert!(
                matches!(classify(bad, "FERRULE"), Name::Malformed(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn values() {
        assert!(matches!(value_of("5", false), (DeValue::Integer(_), true)));
        assert!(matches!(
            value_of(" true ", false),
            (DeValue::Boolean(true), true)
        ));
        assert!(matches!(
            value_of("[\"a\", \"b\"]", false),
            (DeValue::Array(_), true)
        ));
        assert!(matches!(
            value_of("{ a = 1 }", false),
            (DeValue::Table(_), true)
        ));
        for text in ["10MB", "", "a = 1", "/var/lib/ferrule", "1 2"] {
            match value_of(text, false) {
                (DeValue::String(s), false) => assert_eq!(s, text),
                other => panic!("{text:?} read as {other:?}"),
            }
        }
        match value_of("\"quoted\"", false) {
            (DeValue::String(s), false) => assert_eq!(s, "quoted"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(value_of("5", true), (DeValue::String(_), false)));
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let env = [
            ("FERRULE_A__B".to_string(), "1".to_string()),
            ("FERRULE__A__B".to_string(), "2".to_string()),
        ];
        let err = collect(env, "FERRULE").unwrap_err();
        assert!(err.to_string().contains("also sets"), "{err}");
    }
}
