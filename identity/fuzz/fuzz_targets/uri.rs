//! The agent identity parser (a client certificate's URI SAN, untrusted until
//! parsed) on arbitrary text: an identity or a typed error, never a panic.
//!
//! Invariants checked: what parses renders back to exactly the input (the
//! format has one spelling), re-parses to the same identity, and its labels
//! pass `validate_label` and a reference check of the label rules; building
//! the identity from two labels (the input split at its first `|`) agrees
//! with that reference check and with parsing its URI.
#![no_main]

use ferrule_identity::{validate_label, AgentIdentity, MAX_LABEL_LEN};
use libfuzzer_sys::fuzz_target;

/// The label rules, written out independently.
fn valid(label: &str) -> bool {
    (1..=MAX_LABEL_LEN).contains(&label.len())
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = AgentIdentity::from_uri(&text) {
        assert_eq!(id.to_uri(), text, "an identity has one spelling");
        assert_eq!(id.to_string(), id.to_uri());
        assert_eq!(AgentIdentity::from_uri(&id.to_uri()).as_ref(), Ok(&id));
        assert!(valid(id.site()) && valid(id.agent()));
        assert!(validate_label("site", id.site()).is_ok());
        assert!(validate_label("agent id", id.agent()).is_ok());
        assert_eq!(AgentIdentity::new(id.site(), id.agent()).as_ref(), Ok(&id));
    }
    let (site, agent) = text.split_once('|').unwrap_or((&text, "a"));
    assert_eq!(
        validate_label("site", site).is_ok(),
        valid(site),
        "{site:?}"
    );
    match AgentIdentity::new(site, agent) {
        Ok(id) => {
            assert!(valid(site) && valid(agent));
            assert_eq!((id.site(), id.agent()), (site, agent));
            assert_eq!(AgentIdentity::from_uri(&id.to_uri()).as_ref(), Ok(&id));
        }
        Err(_) => assert!(!(valid(site) && valid(agent))),
    }
});
