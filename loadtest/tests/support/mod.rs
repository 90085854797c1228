//! Rigs shared by several test files.

pub mod redis_server;
