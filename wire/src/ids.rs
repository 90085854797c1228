//! Newtypes for the identifiers the protocol carries.
//!
//! Parse, don't validate: a [`SensorName`] can only be built by [`SensorName::new`],
//! which checks it, so code holding one never re-checks. Numeric ids are plain
//! newtypes so a sequence number cannot be passed where an epoch is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Numeric id an agent assigns to a sensor name for the life of one session
/// (interning: batches carry this instead of the name).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct SensorId(pub u32);

/// Per-epoch batch sequence number. The agent numbers batches from 1 upward within
/// one boot epoch; (agent, epoch, seq) names a batch everywhere downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Seq(pub u64);

impl Seq {
    /// The sequence number after this one (saturating; 2^64 batches never happen).
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

/// An agent's boot epoch: chosen anew each time the agent's spool starts a fresh
/// sequence, so sequence numbers never repeat under the same (agent, epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for SensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Longest sensor name accepted, in bytes.
pub const MAX_SENSOR_NAME_BYTES: usize = 200;

/// A checked sensor name: 1 to [`MAX_SENSOR_NAME_BYTES`] bytes of ASCII letters,
/// digits and `_ . : / -`, so it is safe as a Kafka header, a Redis key part, a
/// Prometheus label value and a path-like hierarchy (`site/feeder-3/va`).
///
/// ```
/// use ferrule_wire::SensorName;
/// assert!(SensorName::new("feeder-3/phase_a/voltage").is_ok());
/// assert!(SensorName::new("bad name").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SensorName(String);

/// Why a string is not a valid [`SensorName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name was empty.
    #[error("sensor name is empty")]
    Empty,
    /// The name was longer than [`MAX_SENSOR_NAME_BYTES`].
    #[error("sensor name is {0} bytes, the limit is {MAX_SENSOR_NAME_BYTES}")]
    TooLong(usize),
    /// The name held a character outside the allowed set.
    #[error("sensor name holds {0:?}; allowed are ASCII letters, digits and _ . : / -")]
    BadChar(char),
}

impl SensorName {
    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_SENSOR_NAME_BYTES {
            return Err(NameError::TooLong(name.len()));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-')))
        {
            return Err(NameError::BadChar(c));
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SensorName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SensorName::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(SensorName::new(""), Err(NameError::Empty));
        assert_eq!(SensorName::new("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(SensorName::new("é"), Err(NameError::BadChar('é')));
        let long = "x".repeat(MAX_SENSOR_NAME_BYTES + 1);
        assert_eq!(
            SensorName::new(long),
            Err(NameError::TooLong(MAX_SENSOR_NAME_BYTES + 1))
        );
        assert_eq!(
            SensorName::new("sub-1/bay.2:va").unwrap().as_str(),
            "sub-1/bay.2:va"
        );
    }
}
