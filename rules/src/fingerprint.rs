//! Stable identities for alerts: the fingerprint of a (rule, site, agent, sensor)
//! and the episode of one firing of it.
//!
//! The fingerprint is FNV-1a 64 over the UTF-8 bytes of the rule name, site, agent
//! and sensor, each followed by the byte `0xFF` (which never occurs in UTF-8, so
//! `("ab", "c")` and `("a", "bc")` differ). It depends on nothing but those four
//! strings: not on the process, the rules file's order, the hash seed, the
//! aggregator or the release, so two aggregators, or one before and after a
//! restart, give the same alert the same fingerprint. A test pins known values so a
//! change to it cannot go unnoticed.
//!
//! An episode is the fingerprint plus the timestamp (from the samples, not from any
//! clock) at which the episode began: the first sample of the breach (for rules with
//! `for_ms`, when it went pending), or for `no_data` the last sample's time plus the
//! silence. Two aggregators that saw the same samples name the same episode the same
//! way, so a notifier that receives the firing from both pages once.

use std::fmt;

/// The stable identity of one alert series: a rule applied to one sensor of one
/// agent at one site. Printed as 16 lowercase hex digits.
///
/// ```
/// use ferrule_rules::Fingerprint;
/// let a = Fingerprint::of("undervoltage", "substation-7", "rtu-3", "feed/va");
/// assert_eq!(a, Fingerprint::of("undervoltage", "substation-7", "rtu-3", "feed/va"));
/// assert_eq!(a.to_string().len(), 16);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 over `parts`, each followed by `0xFF`.
pub(crate) fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xFF)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    h
}

impl Fingerprint {
    /// The fingerprint of `rule` applied to `sensor` of `agent` at `site`.
    pub fn of(rule: &str, site: &str, agent: &str, sensor: &str) -> Self {
        Self(fnv(&[
            rule.as_bytes(),
            site.as_bytes(),
            agent.as_bytes(),
            sensor.as_bytes(),
        ]))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One episode of an alert: from the moment its condition began (pending, or firing
/// directly) until it resolved. Printed `<fingerprint>-<start, ns since the epoch>`,
/// the key a notifier dedupes on.
///
/// ```
/// use ferrule_rules::{Episode, Fingerprint};
/// let e = Episode { fingerprint: Fingerprint(0xab), started_ns: 1_700_000_000_000_000_000 };
/// assert_eq!(e.to_string(), "00000000000000ab-1700000000000000000");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Episode {
    /// The alert series the episode belongs to.
    pub fingerprint: Fingerprint,
    /// The sample timestamp the episode began at, nanoseconds since the Unix epoch.
    pub started_ns: i64,
}

impl fmt::Display for Episode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.fingerprint, self.started_ns)
    }
}

impl serde::Serialize for Episode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values: changing the hash would split every open alert in two across
    /// an upgrade, so it must not change by accident.
    #[test]
    fn fingerprints_are_pinned() {
        // FNV-1a 64 of the empty input is the offset basis; of one 0xFF byte:
        assert_eq!(fnv(&[]), FNV_OFFSET);
        assert_eq!(fnv(&[b""]), (FNV_OFFSET ^ 0xFF).wrapping_mul(FNV_PRIME));
        assert_eq!(
            Fingerprint::of("undervoltage", "substation-7", "rtu-3", "feed/va").to_string(),
            "970707177f980a06"
        );
    }

    #[test]
    fn fields_are_separated() {
        assert_ne!(
            Fingerprint::of("ab", "c", "", ""),
            Fingerprint::of("a", "bc", "", "")
        );
        assert_ne!(
            Fingerprint::of("r", "s", "a", "x"),
            Fingerprint::of("r", "s", "x", "a")
        );
    }
}
