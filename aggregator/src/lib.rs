//! # ferrule-aggregator
//!
//! The central service: accepts agents over mutually authenticated QUIC, commits
//! every batch durably before acknowledging it, and reports on what it holds. The
//! binary is a thin `main` over this library so tests and the demo embed it.
//!
//! Modules: [`config`] (the TOML file), [`ingest`] (one task per agent
//! connection), [`admission`] (how many sessions, in total and per agent),
//! [`commit`] (the sink and its embedded log), [`ledger`] (dedupe), [`fanout`]
//! (the real-time path: in-process or Redis Streams), [`alerts`] (notifiers:
//! Alertmanager, PagerDuty),
//! [`inspect`] (what the log holds), [`server`] (the
//! main job and its shutdown).
#![forbid(unsafe_code)]

pub mod admission;
pub mod agents;
pub mod alerts;
pub mod commit;
pub mod config;
pub mod fanout;
pub mod ingest;
pub mod inspect;
pub mod instance;
pub mod kafka;
pub mod ledger;
pub mod metrics;
pub mod otlp_sensors;
pub mod page;
pub mod sampler;
pub mod server;
pub mod tls_reload;
