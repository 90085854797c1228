//! # ferrule-loadtest
//!
//! What proves ferrule's numbers and promises: development certificates, the demo,
//! and helpers that start the real `ferrule-agent` and `ferrule-aggregator`
//! binaries as processes on loopback, kill them, and read what they hold.
#![forbid(unsafe_code)]

pub mod alertbench;
pub mod alertmanager;
pub mod bench;
pub mod devpki;
pub mod fleet;
pub mod footprint;
pub mod inproc;
pub mod procs;
