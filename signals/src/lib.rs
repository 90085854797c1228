//! ferrule's signal engine: are we keeping up? Snapshots of the pipeline's
//! stages (cumulative items appended and consumed, with the time read) go in;
//! per stage, the backlog, seconds behind, a catch-up ETA, a trend and one
//! plain sentence come out. Pure and deterministic (no I/O, no clock), so the
//! sampler's live signals and a replay of its stored snapshots are the same.
//!
//! ```
//! use ferrule_signals::{Engine, Snapshot, StageSample, Trend};
//! let mut e = Engine::default();
//! let mut last = None;
//! // Produce 1000/s, consume 800/s from an empty backlog, for a minute.
//! for t in 0..=60u64 {
//!     let snap = Snapshot {
//!         ts: 1_700_000_000.0 + t as f64,
//!         fence: 1,
//!         stages: vec![StageSample { stage: "audit".into(), head: 1000 * t, position: 800 * t }],
//!     };
//!     last = e.handle(&snap).unwrap().pop();
//! }
//! let s = last.unwrap();
//! assert_eq!(s.delay_s, Some(12.0));
//! assert_eq!(s.trend, Trend::FallingBehind);
//! assert_eq!(s.eta_s, None);
//! ```

pub mod engine;
pub mod replay;
pub mod text;

pub use engine::{Config, Engine, Refused, Signal, Snapshot, StageSample, Trend};
pub use replay::{replay, replay_with, ReplayError, Summary};
