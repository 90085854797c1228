//! A tiny glob matcher for sensor, site and agent names: `*` matches any run of
//! characters (including none, and including `/`), `?` matches exactly one
//! character, everything else matches itself. There is no escape and no `[...]`
//! class: sensor names do not contain `*` or `?`, and keeping the language this
//! small keeps every pattern's meaning obvious.
//!
//! Matching is the classic two-pointer algorithm with one backtrack point (the last
//! `*`), O(pattern × name) in the worst case and linear in practice, with no
//! allocation; patterns are checked once when the rules file is loaded.

/// A validated, non-empty glob pattern.
///
/// ```
/// use ferrule_rules::Glob;
/// let g = Glob::new("*/v?").unwrap();
/// assert!(g.matches("feeder-1/va"));
/// assert!(!g.matches("feeder-1/ia"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<str>,
    /// `*` alone: skips the matcher on the common "every site" pattern.
    any: bool,
}

impl Glob {
    /// Builds a glob; `None` when the pattern is empty (an empty pattern would
    /// match nothing, which is always a mistake in a rules file).
    pub fn new(pattern: &str) -> Option<Self> {
        if pattern.is_empty() {
            return None;
        }
        Some(Self {
            any: pattern.chars().all(|c| c == '*'),
            pattern: pattern.into(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        self.any || matches(self.pattern.as_bytes(), name)
    }
}

/// Matches over characters (not bytes), so `?` consumes one whole UTF-8 character.
fn matches(pattern: &[u8], name: &str) -> bool {
    let p = pattern;
    let n = name.as_bytes();
    let (mut pi, mut ni) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, name index).
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi + 1, ni));
            pi += 1;
            continue;
        }
        if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            ni += char_len(n[ni]);
            continue;
        }
        if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
            continue;
        }
        match star {
            // Let the last `*` swallow one more character and try again.
            Some((sp, sn)) => {
                let next = sn + char_len(n[sn]);
                star = Some((sp, next));
                pi = sp;
                ni = next;
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The length of the UTF-8 character that starts with `lead` (1 for a
/// continuation byte, which cannot start a character of a `&str` anyway).
fn char_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, n: &str) -> bool {
        Glob::new(p).is_some_and(|g| g.matches(n))
    }

    #[test]
    fn literals_stars_and_questions() {
        assert!(m("va", "va"));
        assert!(!m("va", "vab"));
        assert!(!m("vab", "va"));
        assert!(m("*", ""));
        assert!(m("*", "a/b/c"));
        assert!(m("*/v?", "feed/va"));
        assert!(m("*/v?", "a/b/vc"));
        assert!(!m("*/v?", "feed/ia"));
        assert!(!m("*/v?", "feed/vab"));
        assert!(m("*/voltage_*", "grid/voltage_l1"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("a**c", "abc"));
        assert!(m("?", "é"), "? is one character, not one byte");
        assert!(m("?/v?", "é/va"));
        assert!(!m("??", "é"));
        assert!(m("substation-*", "substation-7"));
        assert!(Glob::new("").is_none());
    }

    /// A straightforward recursive matcher over characters, as the model.
    fn model(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| model(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && model(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && model(rest, &n[1..]),
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_model(p in "[ab*?é/]{1,8}", n in "[abé/]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let nc: Vec<char> = n.chars().collect();
            prop_assert_eq!(m(&p, &n), model(&pc, &nc));
        }
    }
}
