//! What went wrong while loading a config, and where.
//!
//! Every error names the place a person has to go and fix: a file path, a
//! `file:line` (plus the dotted key), or the environment variable that
//! supplied the bad value. The `Display` output is meant to be printed as is
//! by a binary's `check-config` subcommand or at startup.

use std::fmt;
use std::path::PathBuf;

/// Where a configured value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The config file. `line` is 1-based and `None` when the key is not
    /// written in the file (e.g. a required key that is missing from it).
    File {
        /// The file's name as given to the loader (a path or an origin name).
        file: String,
        /// 1-based line of the key or value at fault, when it could be found.
        line: Option<usize>,
    },
    /// An environment override.
    Env {
        /// The variable's name, e.g. `FERRULE_SPOOL__MAX_BYTES`.
        var: String,
        /// The dotted key the variable sets, e.g. `spool.max_bytes`.
        key: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                file,
                line: Some(line),
            } => write!(f, "{file}:{line}"),
            Origin::File { file, line: None } => f.write_str(file),
            Origin::Env { var, .. } => f.write_str(var),
        }
    }
}

/// One problem with one key: a value of the wrong type, an unknown or
/// missing key, or a value that failed [`Validate`](crate::Validate).
///
/// Displays as `origin: key: message`, e.g.
/// `deploy/agent.toml:12: spool.max_bytes: invalid type: string "10MB", expected u64`
/// or `FERRULE_SPOOL__MAX_BYTES: invalid type: ...`. The key is left out when
/// it is empty (the document itself) or when it is exactly the key the
/// environment variable sets, since the variable's name already says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the offending value came from.
    pub origin: Origin,
    /// Dotted key of the value at fault, e.g. `spool.max_bytes` or
    /// `sensors[2].name`; empty for the document itself.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        let key_is_said = match &self.origin {
            Origin::Env { key, .. } => *key == self.key,
            Origin::File { .. } => false,
        };
        if !self.key.is_empty() && !key_is_said {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: {source}", path.display())]
    Io {
        /// The path as given to [`load`](crate::load).
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file's name as given to the loader.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The document (file plus overrides) does not fit the config type:
    /// wrong type, unknown key, missing required key.
    #[error("{0}")]
    Invalid(Problem),
    /// An environment variable with the prefix could not be applied as an
    /// override: its name is malformed, it descends into a value that is not
    /// a table, it sets the same key as another variable, or its value is
    /// not UTF-8.
    #[error("{var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// The config deserialized but [`Validate`](crate::Validate) rejected
    /// it. Displays one problem per line.
    #[error("{}", DisplayLines(.0))]
    Validation(Vec<Problem>),
}

/// Shows problems one per line, in the order the validator gave them.
struct DisplayLines<'a>(&'a [Problem]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
