//! Rigs shared by several test files.

pub mod browser;
pub mod redis_server;
