//! Semantic checks that serde cannot express ("at least 1 MiB", "one of
//! these must be set"), reported with the location of the key at fault.

/// A check run on a config after it deserialized, by
/// [`load_validated`](crate::load_validated).
///
/// Report each problem with the dotted key it concerns; the loader adds
/// where that key came from (the file's line, or the environment variable
/// that set it).
///
/// ```
/// use ferrule_config::{Invalid, Validate};
///
/// struct Spool {
///     max_bytes: u64,
/// }
///
/// impl Validate for Spool {
///     fn validate(&self) -> Result<(), Vec<Invalid>> {
///         let mut problems = Vec::new();
///         if self.max_bytes < 1 << 20 {
///             problems.push(Invalid::new("spool.max_bytes", "must be at least 1 MiB"));
///         }
///         if problems.is_empty() { Ok(()) } else { Err(problems) }
///     }
/// }
/// assert!(Spool { max_bytes: 10 }.validate().is_err());
/// ```
pub trait Validate {
    /// Returns every problem found, not just the first, so one
    /// `check-config` run shows them all. `Err` with an empty list counts
    /// as success.
    fn validate(&self) -> Result<(), Vec<Invalid>>;
}

/// One semantic problem, as reported by a [`Validate`] implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted key of the offending value as written in the file, e.g.
    /// `spool.max_bytes`; array elements as `sensors[2].name`.
    pub key: String,
    /// What is wrong, phrased for the person editing the file, e.g.
    /// `must be at least 1 MiB`.
    pub message: String,
}

impl Invalid {
    /// A problem with the value at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}
