//! The Redis stream output: each notification is one `XADD` to
//! `{redis.stream_prefix}:alerts`, capped with `MAXLEN ~`, the fields of
//! [`super::stream::redis_fields`]. A batch is one pipeline to one key, so in a
//! Cluster it goes to one node.
//!
//! It connects as the real-time path does (the `[redis]` section: URL, cluster,
//! TLS, credentials, `response_timeout_ms`), but on a connection of its own,
//! made when first needed and remade after one fails, so a Redis that is down at
//! start is an attempt that fails and is retried, not a failure to start. The
//! retries and their counting are the task's in `mod.rs`; this module makes one
//! attempt.

use super::notify::Notification;
use super::stream::{redis_fields, redis_stream_key};
use super::Outcome;
use crate::config::RedisSection;
use crate::fanout::redis::{connection_lost, target, Conn, Target};
use crate::fanout::FanoutError;
use std::sync::Arc;
use std::time::Duration;

/// One alert stream: where, its cap, and the connection while it works.
pub(super) struct RedisStream {
    target: Target,
    conn: Option<Conn>,
    stream: String,
    max_len: u64,
    timeout: Duration,
    /// This aggregator, written in each entry's `aggregator` field.
    writer: String,
}

impl RedisStream {
    /// The output for `cfg`, capped at `max_len` entries. Fails only on what
    /// retrying cannot fix: a bad URL, a TLS file, an unset `env:` secret.
    pub(super) fn new(cfg: &RedisSection, max_len: u64, writer: &str) -> Result<Self, FanoutError> {
        Ok(Self {
            target: target(cfg)?,
            conn: None,
            stream: redis_stream_key(&cfg.stream_prefix),
            max_len: max_len.max(1),
            timeout: Duration::from_millis(cfg.response_timeout_ms.max(1)),
            writer: writer.to_string(),
        })
    }

    /// The stream's key.
    pub(super) fn stream(&self) -> &str {
        &self.stream
    }

    /// Connects if needed, then adds `batch` in one pipeline within the
    /// response timeout. Every failure is retried: Redis's refusals of a
    /// well-formed `XADD` (OOM, LOADING, a failover's MASTERDOWN, CLUSTERDOWN,
    /// and WRONGTYPE or NOPERM, which an operator fixes) are all worth another try.
    pub(super) async fn attempt(&mut self, batch: &[Arc<Notification>]) -> Outcome {
        let retry = |why: String| Outcome::Retry {
            why,
            again: batch.to_vec(),
        };
        let mut conn = match &self.conn {
            Some(c) => c.clone(),
            None => match tokio::time::timeout(self.timeout * 2, self.target.connect()).await {
                Ok(Ok(c)) => {
                    self.conn = Some(c.clone());
                    c
                }
                Ok(Err(e)) => return retry(format!("connecting: {e}")),
                Err(_) => {
                    return retry(format!(
                        "connecting: no answer within {} ms",
                        (self.timeout * 2).as_millis()
                    ))
                }
            },
        };
        let mut p = redis::pipe();
        for n in batch {
            let cmd = p
                .cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
                .arg("*");
            for (k, v) in redis_fields(n) {
                cmd.arg(k).arg(v);
            }
            cmd.arg("aggregator").arg(&self.writer);
            // The replies (entry ids) are not needed.
            cmd.ignore();
        }
        match tokio::time::timeout(self.timeout, conn.pipe(&p)).await {
            Ok(Ok(_)) => Outcome::Delivered,
            Ok(Err(e)) => {
                if connection_lost(&e) {
                    self.conn = None;
                }
                retry(e.to_string())
            }
            Err(_) => {
                // An unanswered connection may be a frozen Redis: make a new one.
                self.conn = None;
                retry(format!("no answer within {} ms", self.timeout.as_millis()))
            }
        }
    }
}
