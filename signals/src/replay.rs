//! Replay: snapshots as JSON lines in, signals as JSON lines out, through one
//! [`Engine`]; what `ferrule-aggregator signals replay` runs, to backtest an
//! incident or check the engine against stored history.
//!
//! Input, one object a line (blank lines are skipped):
//! `{"ts": 1700000000.0, "fence": 3, "stages": [{"stage": "kafka:audit", "head": 120000, "position": 98000}]}`.
//! Output, one line per stage per input line:
//! `{"ts":1700000000.0,"stage":"kafka:audit","backlog":22000,"delay_s":21.5,"eta_s":null,"trend":"falling_behind","reason":"…","text":"…"}`.
//! A line whose fence is older than the newest seen is skipped (counted in
//! the summary), as the live store does.

use crate::engine::{Config, Engine, Refused, Snapshot};
use std::io::{BufRead, Read as _, Write};

/// The longest input line read, bytes: a bound on memory for a file without
/// newlines (a snapshot of every stage of a large deployment fits).
pub const MAX_LINE_BYTES: u64 = 4 << 20;

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// A line that is not a valid snapshot.
    #[error("input line {line}: {problem}")]
    Input {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        problem: String,
    },
    /// Reading the input failed.
    #[error("reading input line {line}: {source}")]
    Read {
        /// 1-based line number being read.
        line: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing a signal failed.
    #[error("writing output: {0}")]
    Write(#[source] std::io::Error),
}

/// What a replay saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// Snapshot lines read.
    pub snapshots: u64,
    /// Signal lines written.
    pub signals: u64,
    /// Lines skipped for an older fence.
    pub stale_fence: u64,
}

/// Replays `input` through a fresh engine with the default [`Config`],
/// writing each signal as one JSON line to `out`. Stops at the first line
/// that is not a snapshot, naming it.
///
/// ```
/// let input = br#"{"ts": 0, "fence": 1, "stages": [{"stage": "s", "head": 0, "position": 0}]}
/// {"ts": 1, "fence": 1, "stages": [{"stage": "s", "head": 100, "position": 100}]}
/// "#;
/// let mut out = Vec::new();
/// let summary = ferrule_signals::replay(&input[..], &mut out).unwrap();
/// assert_eq!(summary.signals, 2);
/// assert!(String::from_utf8(out).unwrap().contains(r#""trend":"stable""#));
/// ```
pub fn replay(input: impl BufRead, out: impl Write) -> Result<Summary, ReplayError> {
    replay_with(Config::default(), input, out)
}

/// [`replay`] with an engine configured by `cfg`.
pub fn replay_with(
    cfg: Config,
    mut input: impl BufRead,
    mut out: impl Write,
) -> Result<Summary, ReplayError> {
    let mut engine = Engine::new(cfg);
    let mut summary = Summary::default();
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        line += 1;
        buf.clear();
        let n = (&mut input)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| ReplayError::Read { line, source })?;
        if n == 0 {
            break;
        }
        if buf.len() as u64 > MAX_LINE_BYTES {
            return Err(ReplayError::Input {
                line,
                problem: format!("longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let snap: Snapshot = serde_json::from_slice(&buf).map_err(|e| ReplayError::Input {
            line,
            problem: e.to_string(),
        })?;
        summary.snapshots += 1;
        let signals = match engine.handle(&snap) {
            Ok(s) => s,
            Err(Refused::StaleFence { .. }) => {
                summary.stale_fence += 1;
                continue;
            }
            Err(e) => {
                return Err(ReplayError::Input {
                    line,
                    problem: e.to_string(),
                })
            }
        };
        for s in &signals {
            serde_json::to_writer(&mut out, s).map_err(|e| ReplayError::Write(e.into()))?;
            out.write_all(b"\n").map_err(ReplayError::Write)?;
            summary.signals += 1;
        }
    }
    out.flush().map_err(ReplayError::Write)?;
    Ok(summary)
}
