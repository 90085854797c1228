//! Agent identities and their URI form `ferrule://site/SITE/agent/AGENT`.
//!
//! A crate of its own so that `ferrule-transport` (which checks identities)
//! carries no CA tooling, and `ferrule-certs` (which issues them) shares the
//! very same type.
//!
//! The aggregator authorizes an agent by the URI SAN of its client
//! certificate, so this module is the single definition of that format for
//! both the issuing side and the checking side.
//!
//! Invariant: an [`AgentIdentity`] only exists with both labels valid
//! (1-64 characters of `[A-Za-z0-9._-]`), so its URI round-trips exactly and
//! can never smuggle `/`, `?`, `#`, `%` or whitespace into a path.

use std::fmt;

/// Why a site, agent id or identity URI was refused.
///
/// Its own type (not the CA tooling's error) so the transport can parse a
/// peer's identity without depending on the certificate-issuing crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A site or agent id is not a valid identity label.
    #[error("invalid {field} {value:?}: {reason} (allowed: 1-64 characters of A-Z a-z 0-9 . _ -)")]
    InvalidLabel {
        /// Which label ("site" or "agent id").
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A URI SAN is not of the form `ferrule://site/SITE/agent/AGENT`.
    #[error(
        "invalid agent identity URI {uri:?}: {reason} (expected ferrule://site/SITE/agent/AGENT)"
    )]
    InvalidAgentUri {
        /// The rejected URI.
        uri: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// Result of identity parsing and validation.
pub type Result<T> = std::result::Result<T, Error>;

/// Scheme and authority every agent identity URI starts with.
const URI_PREFIX: &str = "ferrule://site/";
/// Separator between the site and the agent id in the URI.
const AGENT_SEGMENT: &str = "/agent/";
/// Longest site or agent label accepted.
pub const MAX_LABEL_LEN: usize = 64;

/// Which site an agent belongs to and which agent it is.
///
/// It exists so that issuing (`issue_agent`) and authorizing (the
/// aggregator reading the peer certificate's URI SAN) agree on one validated
/// representation instead of each splitting strings its own way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentIdentity {
    site: String,
    agent: String,
}

impl AgentIdentity {
    /// Builds an identity from a site and agent id, validating both labels.
    pub fn new(site: &str, agent: &str) -> Result<Self> {
        validate_label("site", site)?;
        validate_label("agent id", agent)?;
        Ok(Self {
            site: site.to_owned(),
            agent: agent.to_owned(),
        })
    }

    /// Parses `ferrule://site/SITE/agent/AGENT` (exactly; no trailing slash,
    /// query or fragment), as found in an agent certificate's URI SAN.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidAgentUri {
            uri: uri.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| bad("does not start with ferrule://site/"))?;
        let (site, agent) = rest
            .split_once(AGENT_SEGMENT)
            .ok_or_else(|| bad("missing /agent/ segment"))?;
        Self::new(site, agent).map_err(|e| match e {
            Error::InvalidLabel {
                field,
                value,
                reason,
            } => bad(&format!("{field} {value:?}: {reason}")),
            other => other,
        })
    }

    /// The site label.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The agent id label.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The URI form placed in the certificate's URI SAN.
    pub fn to_uri(&self) -> String {
        format!("{URI_PREFIX}{}{AGENT_SEGMENT}{}", self.site, self.agent)
    }
}

impl fmt::Display for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

/// Checks one site or agent label: non-empty, at most [`MAX_LABEL_LEN`]
/// characters, only `[A-Za-z0-9._-]`.
pub fn validate_label(field: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > MAX_LABEL_LEN {
        Some("longer than 64 characters")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("contains a character outside A-Z a-z 0-9 . _ -")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidLabel {
            field,
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips() {
        let id = AgentIdentity::new("plant-7", "pump_03.a").unwrap();
        assert_eq!(id.to_uri(), "ferrule://site/plant-7/agent/pump_03.a");
        assert_eq!(AgentIdentity::from_uri(&id.to_uri()).unwrap(), id);
    }

    #[test]
    fn rejects_malformed_uris() {
        for uri in [
            "",
            "https://site/a/agent/b",
            "ferrule://site/a/agent/",
            "ferrule://site//agent/b",
            "ferrule://site/a/agent/b/",
            "ferrule://site/a/agent/b?x=1",
            "ferrule://site/a/b/agent/c",
            "ferrule://site/a/agent/b/agent/c",
            "ferrule://site/a%2f/agent/b",
            "ferrule://site/a",
        ] {
            assert!(AgentIdentity::from_uri(uri).is_err(), "{uri} accepted");
        }
    }

    #[test]
    fn label_limits() {
        assert!(validate_label("site", &"a".repeat(64)).is_ok());
        assert!(validate_label("site", &"a".repeat(65)).is_err());
        assert!(validate_label("site", "a b").is_err());
        assert!(validate_label("site", "é").is_err());
    }
}
