//! ferrule's alert rules: the real-time path's decision logic, with no I/O and no
//! clock (time is an argument), so the aggregator and, later, the agent run the
//! same code, and a replay of recorded samples gives exactly what production did.
//!
//! - [`RuleSet::from_toml`] loads and validates a rules file (see the crate's
//!   README for the syntax);
//! - [`Engine`] takes [`Sample`]s and ticks and yields [`Transition`]s
//!   (pending, firing, resolved, inactive), each with a stable [`Fingerprint`]
//!   and an [`Episode`] a notifier dedupes on;
//! - [`replay`] runs JSON-lines samples through an engine and writes JSON-lines
//!   transitions, for `ferrule-aggregator alerts test`.
#![forbid(unsafe_code)]

mod config;
mod engine;
mod fingerprint;
mod glob;
mod replay;
mod template;

pub use config::{Condition, Direction, Rule, RuleSet, RulesError, Severity, DEFAULT_MAX_SERIES};
pub use engine::{Counters, Engine, Sample, State, Transition, RATE_WINDOW_POINTS};
pub use fingerprint::{Episode, Fingerprint};
pub use glob::Glob;
pub use replay::{replay, ReplayError, Summary};
