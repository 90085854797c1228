//! # ferrule-telemetry
//!
//! The metrics every ferrule process keeps about itself: a registry of named,
//! labelled counters and gauges whose handles are plain atomics (cheap on hot
//! paths), rendered in the Prometheus text format and served at `/metrics`.
//!
//! Every drop, retry, rejection and ack has a counter here; none is rate-limited.
//!
//! ```
//! use ferrule_telemetry::Registry;
//! let reg = Registry::new();
//! let acks = reg.counter("ferrule_acks_total", "Batches acknowledged", &[("outcome", "committed")]);
//! acks.inc();
//! assert!(reg.render().contains("ferrule_acks_total{outcome=\"committed\"} 1"));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod http;
mod registry;

pub use http::serve;
pub use registry::{Counter, Gauge, Registry};
