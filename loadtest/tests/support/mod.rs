//! Rigs shared by several test files.

pub mod browser;
pub mod otelcol;
pub mod redis_server;
