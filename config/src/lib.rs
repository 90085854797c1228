//! Loads the agent's and the aggregator's TOML config: one file, plus
//! environment overrides, deserialized into the caller's serde type, with
//! errors that point at the file line or the variable to fix.
//!
//! Config types are the callers': serde structs with
//! `#[serde(deny_unknown_fields)]` (so a misspelt key is an error, not a
//! silently ignored line), defaults documented next to each field, and
//! units in key names (`flush_interval_ms`, `max_bytes`, `timeout_secs`).
//! This crate does not interpret units; putting them in the name is the
//! caller's job, and it is what makes an override like
//! `FERRULE_SPOOL__MAX_BYTES=1048576` unambiguous.
//!
//! # Environment overrides
//!
//! For a prefix `FERRULE` (the caller chooses it):
//!
//! | variable                                 | sets                                   |
//! |------------------------------------------|----------------------------------------|
//! | `FERRULE_SPOOL__MAX_BYTES=1048576`       | `[spool] max_bytes = 1048576`          |
//! | `FERRULE_SPOOL__LIMITS__MAX_BYTES=5`     | `[spool.limits] max_bytes = 5`         |
//! | `FERRULE__LOG_LEVEL=debug`               | top-level `log_level = "debug"`        |
//! | `FERRULE__SPOOL='{ dir = "/x" }'`        | the whole `[spool]` table              |
//! | `FERRULE_CONFIG`, `FERRULE_LOG`, `FERRULE_LOG_FORMAT`, `PATH` | nothing: not overrides (see below) |
//!
//! - Only variables starting with `PREFIX_` are looked at. After it, keys
//!   are separated by `__` and lowercased, so `SPOOL__MAX_BYTES` is
//!   `spool.max_bytes`.
//! - A top-level key is written with a double underscore after the prefix
//!   (`FERRULE__LOG_LEVEL`). A name with a single key and a single
//!   underscore (`FERRULE_CONFIG`) is *not* an override. `FERRULE_CONFIG`,
//!   `FERRULE_LOG` and `FERRULE_LOG_FORMAT` are the binaries' own settings
//!   (which file to load, log filters, text or JSON lines) and are left
//!   alone; any other such name is returned in [`Loaded::ignored`] so a
//!   binary can warn about it; that is how a typo
//!   such as `FERRULE_SPOOL_DIR` (for `FERRULE_SPOOL__DIR`) gets noticed.
//!   The project's scripts keep their own variables outside the prefix
//!   (`FERRULEDEV_CACHE`, `FERRULEDEV_FUZZ_SECS`), so they draw no warning.
//! - The value is read as a TOML value if it is one: `5`, `true`,
//!   `["a", "b"]`, `{ a = 1 }`, `"quoted"`. Otherwise it is the literal
//!   string (`/var/lib/ferrule`, `10MB`). If a value read as TOML does not
//!   fit a key that wants a string (`FERRULE_SITE__NAME=123`), the literal
//!   string is used instead; if that does not fit either, the error is the
//!   one for the TOML reading.
//! - Missing tables are created. A key inside an array (of tables) cannot
//!   be set; the array can only be replaced whole.
//! - Overrides pass through the same deserialization as the file, so a key
//!   the config type does not know is rejected, and the error names the
//!   variable: `FERRULE_SPOOL__MAX_BYTE: unknown field ...`. Two variables
//!   that set the same key, or a malformed name (`FERRULE_SPOOL__`), are
//!   errors too.
//!
//! # Errors
//!
//! [`ConfigError`]'s `Display` is what a person at the box needs:
//!
//! ```text
//! deploy/agent.toml: No such file or directory (os error 2)
//! deploy/agent.toml:7:12: invalid basic string, expected `"`
//! deploy/agent.toml:12: spool.max_bytes: invalid type: string "10MB", expected u64
//! deploy/agent.toml:3: spool.max_byte: unknown field `max_byte`, expected `dir` or `max_bytes`
//! FERRULE_SPOOL__MAX_BYTES: invalid type: boolean `true`, expected u64
//! ```
//!
//! Lines come from toml's spans: the error's own span when it points into
//! the file, otherwise the span of the deepest key of the error's path found
//! in the parsed document. An error whose path is at or inside a key set by
//! an override (or inside a table an override created) is attributed to the
//! variable instead of a line of the file.
//!
//! # Validation
//!
//! Checks serde cannot express ("at least 1 MiB") implement [`Validate`];
//! [`load_validated`] runs it and reports each [`Invalid`] at the line of
//! its key (found the same way, through toml's spans) or at the variable
//! that set it. That is what a `check-config` subcommand should call.
//!
//! # Example
//!
//! ```
//! use ferrule_config::{load_str, ConfigError, Loaded};
//! use serde::Deserialize;
//!
//! #[derive(Debug, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct AgentConfig {
//!     spool: Spool,
//! }
//!
//! #[derive(Debug, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Spool {
//!     dir: String,
//!     /// Upper bound on the spool's size on disk. Default: 1 GiB.
//!     #[serde(default = "default_max_bytes")]
//!     max_bytes: u64,
//! }
//!
//! fn default_max_bytes() -> u64 {
//!     1 << 30
//! }
//!
//! let text = "[spool]\ndir = \"/var/lib/ferrule\"\n";
//! let env = [("FERRULE_SPOOL__MAX_BYTES".to_string(), "5000000".to_string())];
//! let loaded: Loaded<AgentConfig> = load_str(text, "agent.toml", env, "FERRULE")?;
//! assert_eq!(loaded.value.spool.max_bytes, 5_000_000);
//! assert_eq!(loaded.overrides, ["FERRULE_SPOOL__MAX_BYTES"]);
//!
//! let typo = "[spool]\ndir = \"/x\"\nmax_byte = 5\n";
//! let err = load_str::<AgentConfig>(typo, "agent.toml", [], "FERRULE").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "agent.toml:3: spool.max_byte: unknown field `max_byte`, expected `dir` or `max_bytes`"
//! );
//! # Ok::<(), ConfigError>(())
//! ```

#![forbid(unsafe_code)]

mod env;
mod error;
mod locate;
mod validate;

use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::de::DeTable;
use toml::Spanned;

pub use error::{ConfigError, Origin, Problem};
pub use validate::{Invalid, Validate};

use env::Override;
use locate::Seg;

/// A deserialized config and the environment overrides that went into it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Loaded<T> {
    /// The config.
    pub value: T,
    /// Names of the variables applied as overrides, in the order applied
    /// (parents first, then by name), for the binary to log at startup.
    pub overrides: Vec<String>,
    /// Names of variables that start with the prefix but are not overrides
    /// and are not the binaries' own (`FERRULE_CONFIG`, `FERRULE_LOG`,
    /// `FERRULE_LOG_FORMAT`): a typo like `FERRULE_SPOOL_DIR`, sorted.
    pub ignored: Vec<String>,
}

impl<T> Loaded<T> {
    /// Logs what the environment changed, and warns about variables that
    /// look like overrides and are not (a typo would otherwise be silently
    /// ignored); then gives the config. Both binaries start this way.
    pub fn logged(self) -> T {
        for var in &self.overrides {
            tracing::info!(var, "configuration override from the environment");
        }
        for var in &self.ignored {
            tracing::warn!(
                var,
                "environment variable looks like an override but is not one (overrides are <PREFIX>_<SECTION>__<KEY>)"
            );
        }
        self.value
    }
}

/// Reads the TOML file at `path`, applies the overrides found in the
/// process environment under `env_prefix` (e.g. `"FERRULE"`; see the crate
/// docs for the naming rules) and deserializes the result into `T`.
///
/// Errors name `path` as given (so pass the path the operator typed).
pub fn load<T: DeserializeOwned>(path: &Path, env_prefix: &str) -> Result<Loaded<T>, ConfigError> {
    let text = read(path)?;
    load_str(
        &text,
        &path.display().to_string(),
        process_env(env_prefix)?,
        env_prefix,
    )
}

/// [`load`], then [`Validate::validate`]: what a `check-config` subcommand
/// and a binary's startup should call.
pub fn load_validated<T: DeserializeOwned + Validate>(
    path: &Path,
    env_prefix: &str,
) -> Result<Loaded<T>, ConfigError> {
    let text = read(path)?;
    load_str_validated(
        &text,
        &path.display().to_string(),
        process_env(env_prefix)?,
        env_prefix,
    )
}

/// [`load`] from a string, with the environment given explicitly (the
/// process environment is not read), for tests and embedding. `origin` is
/// the name errors use for the text, typically its file name.
pub fn load_str<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
    env_prefix: &str,
) -> Result<Loaded<T>, ConfigError> {
    let doc = Document::parse(text, origin, env, env_prefix)?;
    let (value, _) = doc.deserialize()?;
    Ok(doc.loaded(value))
}

/// [`load_validated`] from a string; see [`load_str`].
pub fn load_str_validated<T: DeserializeOwned + Validate>(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
    env_prefix: &str,
) -> Result<Loaded<T>, ConfigError> {
    let doc = Document::parse(text, origin, env, env_prefix)?;
    let (value, owned) = doc.deserialize::<T>()?;
    let problems: Vec<Problem> = match value.validate() {
        Ok(()) => Vec::new(),
        Err(invalid) => invalid
            .into_iter()
            .map(|invalid| Problem {
                origin: doc.origin_of(&locate::parse_dotted(&invalid.key), &owned),
                key: invalid.key,
                message: invalid.message,
            })
            .collect(),
    };
    if problems.is_empty() {
        Ok(doc.loaded(value))
    } else {
        Err(ConfigError::Validation(problems))
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The process environment's variables that start with the prefix.
fn process_env(prefix: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        // A name that is not UTF-8 cannot be one of ours.
        let Some(name) = name.to_str() else { continue };
        match env::classify(name, prefix) {
            env::Name::NotOurs => continue,
            env::Name::Reserved => {
                vars.push((name.to_string(), value.to_string_lossy().into_owned()));
            }
            env::Name::Key(_) | env::Name::Malformed(_) => match value.into_string() {
                Ok(value) => vars.push((name.to_string(), value)),
                Err(_) => {
                    return Err(ConfigError::Env {
                        var: name.to_string(),
                        message: "value is not valid UTF-8".to_string(),
                    })
                }
            },
        }
    }
    Ok(vars)
}

/// The parser's message, with the key named when the parser only says
/// "duplicate key": a `[spool]` table written twice is then
/// "duplicate key `spool`: defined twice; merge the two into one" instead of a
/// bare position the operator has to look up.
fn syntax_message(text: &str, message: &str, span: Option<Range<usize>>) -> String {
    let message = message.trim_end();
    if !message.contains("duplicate") {
        return message.to_string();
    }
    let key = span
        .and_then(|span| text.get(span))
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 200 && !k.contains('\n'));
    match key {
        Some(key) if !message.contains(key) => {
            format!("{message} `{key}`: defined twice; merge the two into one")
        }
        _ => message.to_string(),
    }
}

/// A parsed file and the overrides to apply to it: everything needed to
/// deserialize, and to say where any key came from.
struct Document<'a> {
    text: &'a str,
    file: &'a str,
    /// The file alone; its spans locate keys.
    base: Spanned<DeTable<'a>>,
    overrides: Vec<Override>,
    ignored: Vec<String>,
}

impl<'a> Document<'a> {
    fn parse(
        text: &'a str,
        file: &'a str,
        env: impl IntoIterator<Item = (String, String)>,
        prefix: &str,
    ) -> Result<Self, ConfigError> {
        let base = DeTable::parse(text).map_err(|err| {
            let offset = err.span().map_or(text.len(), |span| span.start);
            // `line_col` only fails past the end, which a parser span is not.
            let (line, column) = locate::line_col(text, offset.min(text.len())).unwrap_or((1, 1));
            ConfigError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: syntax_message(text, err.message(), err.span()),
            }
        })?;
        let (overrides, ignored) = env::collect(env, prefix)?;
        Ok(Self {
            text,
            file,
            base,
            overrides,
            ignored,
        })
    }

    /// Deserializes the file with the overrides applied. Also returns, for
    /// each override, the length of the path prefix it owns (see
    /// [`env::apply`]).
    fn deserialize<T: DeserializeOwned>(&self) -> Result<(T, Vec<usize>), ConfigError> {
        // Outside the file, so never taken for a line of it.
        let placeholder: Range<usize> = self.text.len() + 1..self.text.len() + 1;
        let n = self.overrides.len();
        let mut as_string = vec![false; n];
        let mut first_error: Vec<Option<Problem>> = vec![None; n];
        // Each round either succeeds, fails for good, or turns one more
        // override into a literal string: at most n + 1 rounds.
        loop {
            let mut merged = self.base.clone();
            let mut owned = Vec::with_capacity(n);
            let mut retryable = Vec::with_capacity(n);
            for (o, &as_string) in self.overrides.iter().zip(&as_string) {
                let (value, could_be_string) = env::value_of(&o.raw, as_string);
                retryable.push(could_be_string);
                let len = env::apply(merged.get_mut(), &o.path, value, &placeholder).map_err(
                    |message| ConfigError::Env {
                        var: o.var.clone(),
                        message,
                    },
                )?;
                owned.push(len);
            }
            let err = match serde_path_to_error::deserialize(toml::Deserializer::from(merged)) {
                Ok(value) => return Ok((value, owned)),
                Err(err) => err,
            };
            let path = locate::from_serde_path(err.path());
            let err = err.into_inner();
            let problem = Problem {
                origin: self.origin_of_error(&path, err.span(), &owned),
                key: locate::dotted(&path),
                message: err.message().to_string(),
            };
            let Some(i) = self.override_at(&path, &owned) else {
                return Err(ConfigError::Invalid(problem));
            };
            if retryable[i] && !as_string[i] {
                as_string[i] = true;
                first_error[i] = Some(problem);
                continue;
            }
            return Err(ConfigError::Invalid(
                first_error[i].take().unwrap_or(problem),
            ));
        }
    }

    fn loaded<T>(&self, value: T) -> Loaded<T> {
        Loaded {
            value,
            overrides: self.overrides.iter().map(|o| o.var.clone()).collect(),
            ignored: self.ignored.clone(),
        }
    }

    /// The override responsible for the value at `path`: the one owning the
    /// longest prefix of it (the later one on a tie, as it was applied last).
    fn override_at(&self, path: &[Seg], owned: &[usize]) -> Option<usize> {
        self.overrides
            .iter()
            .zip(owned)
            .enumerate()
            .filter(|(_, (o, &len))| locate::starts_with(path, &o.path[..len]))
            .max_by_key(|&(i, (_, &len))| (len, i))
            .map(|(i, _)| i)
    }

    /// Where the value at `path` came from.
    fn origin_of(&self, path: &[Seg], owned: &[usize]) -> Origin {
        self.origin_of_error(path, None, owned)
    }

    /// Where the value at `path` came from, preferring the span a parser
    /// error carries (it may point at an array element or a value rather
    /// than its key) when that span is inside the file.
    fn origin_of_error(&self, path: &[Seg], span: Option<Range<usize>>, owned: &[usize]) -> Origin {
        if let Some(i) = self.override_at(path, owned) {
            let o = &self.overrides[i];
            return Origin::Env {
                var: o.var.clone(),
                key: locate::dotted(&o.path),
            };
        }
        if path.is_empty() {
            // The document as a whole (a missing top-level key): toml's span
            // is the whole file, and "line 1" would send the reader astray.
            return Origin::File {
                file: self.file.to_string(),
                line: None,
            };
        }
        let offset = span
            .filter(|span| span.start < self.text.len())
            .or_else(|| locate::span_of(self.base.get_ref(), path))
            .map(|span| span.start);
        Origin::File {
            file: self.file.to_string(),
            line: offset
                .and_then(|offset| locate::line_col(self.text, offset))
                .map(|(line, _)| line),
        }
    }
}

/// What a binary's `check-config` subcommand does: load and validate `path`,
/// print `PATH: ok` on success, or each problem (file, line, key or variable) on
/// stderr and fail.
pub fn check_command<T: DeserializeOwned + Validate>(
    path: &Path,
    env_prefix: &str,
) -> std::process::ExitCode {
    check_command_with::<T>(path, env_prefix, |_| Checked::default())
}

/// What a `check-config` found beyond the file itself, in the files the config
/// names (TLS material, say): a file that parses can still name a key that
/// does not exist, and only reading it tells.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checked {
    /// Each fails the check; each names the file at fault and what is wrong.
    pub problems: Vec<String>,
    /// Printed as `warning: ...`; the check still passes.
    pub warnings: Vec<String>,
    /// Printed on success (what was found, e.g. the names a certificate carries).
    pub notes: Vec<String>,
}

/// [`check_command`], then `more` on the loaded config: its problems fail the
/// check (each printed on stderr), its warnings are printed as `warning: ...`
/// on stderr, and on success its notes and `PATH: ok` go to stdout.
pub fn check_command_with<T: DeserializeOwned + Validate>(
    path: &Path,
    env_prefix: &str,
    more: impl FnOnce(&T) -> Checked,
) -> std::process::ExitCode {
    match load_validated::<T>(path, env_prefix) {
        Ok(loaded) => {
            let checked = more(&loaded.value);
            // What `run` would log: overrides applied, and names that look like
            // overrides and are not (a typo is found here, before a deploy).
            for var in &loaded.overrides {
                eprintln!("note: {var} overrides the file");
            }
            for var in &loaded.ignored {
                eprintln!(
                    "warning: {var} looks like an override but is not one (overrides are {}_<SECTION>__<KEY>, or {}__<KEY> for a top-level key)",
                    env_prefix.trim_end_matches('_'),
                    env_prefix.trim_end_matches('_')
                );
            }
            for w in &checked.warnings {
                eprintln!("warning: {w}");
            }
            if checked.problems.is_empty() {
                for n in &checked.notes {
                    println!("{n}");
                }
                println!("{}: ok", path.display());
                std::process::ExitCode::SUCCESS
            } else {
                for p in &checked.problems {
                    eprintln!("{p}");
                }
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
