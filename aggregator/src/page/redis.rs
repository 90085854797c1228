//! Follows the sampler's broadcast in Redis for the gateway: subscribes to
//! `{prefix}:{sampler}:signals` (classic pub/sub, which a cluster relays to
//! every node, so one connection to the configured node is enough), and on
//! every (re)subscription reads what it missed from the history stream
//! `{prefix}:{sampler}:snapshots`, rebuilding each set's text with the same
//! template the store's script publishes ([`super::ring::frame_text`]).
//! Redis down: retried with backoff; the page shows its newest sets and says
//! how old they are.

use super::ring::frame_text;
use super::{stopped, Gateway};
use crate::config::RedisSection;
use crate::fanout::redis::{fields, items, text, timed_out, Target};
use crate::sampler::Keys;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::watch;

/// Nothing received for this long: subscribe again (and backfill), in case
/// the connection died quietly.
const QUIET: Duration = Duration::from_secs(10);
/// Sets read back per (re)subscription at most.
const BACKFILL: usize = super::FULL_STATE;

/// The subscriber.
pub struct Follower {
    client: redis::Client,
    target: Target,
    keys: Keys,
    channel: String,
    timeout: Duration,
    gateway: Gateway,
}

/// The channel the sampler publishes each signal set on.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:{{sampler}}:signals")
}

impl Follower {
    /// A subscriber for `cfg`'s Redis feeding `gateway`.
    pub fn new(cfg: &RedisSection, gateway: Gateway) -> Result<Self, crate::fanout::FanoutError> {
        Ok(Self {
            client: crate::fanout::redis::single_client(cfg)?,
            target: crate::fanout::redis::target(cfg)?,
            keys: Keys::new(&cfg.stream_prefix),
            channel: channel(&cfg.stream_prefix),
            timeout: Duration::from_millis(cfg.response_timeout_ms.max(1)),
            gateway,
        })
    }

    /// Runs until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let r = tokio::select! {
                r = self.follow() => r,
                () = stopped(&mut stop) => return,
            };
            match r {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::debug!(error = %e, "page: following the sampler in Redis failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())) => {}
                () = stopped(&mut stop) => return,
            }
        }
    }

    /// One subscription: subscribe, backfill, forward until quiet or gone.
    async fn follow(&self) -> redis::RedisResult<()> {
        let to = |_| timed_out();
        let mut ps = tokio::time::timeout(self.timeout * 2, self.client.get_async_pubsub())
            .await
            .map_err(to)??;
        tokio::time::timeout(self.timeout, ps.subscribe(&self.channel))
            .await
            .map_err(to)??;
        // Subscribed first, then read back: nothing falls between the two
        // (a set in both is a repeat the ring drops).
        self.backfill().await?;
        let mut messages = ps.on_message();
        loop {
            match tokio::time::timeout(QUIET, messages.next()).await {
                Ok(Some(m)) => match String::from_utf8(m.get_payload_bytes().to_vec()) {
                    Ok(t) => {
                        self.gateway.offer(t);
                    }
                    Err(_) => {
                        self.gateway.offer(String::new());
                    }
                },
                Ok(None) => return Ok(()),
                // Quiet: no sampler, or a dead connection. Start over.
                Err(_) => return Ok(()),
            }
        }
    }

    /// Reads the sets after the newest held (or the newest [`BACKFILL`]). If
    /// it missed [`BACKFILL`] or more, the gateway starts over from the newest
    /// [`BACKFILL`]: read in pages instead, a long gap would cost a long read,
    /// and read only in part it would leave a hole in the gateway's copy (a
    /// reconnecting viewer would get a jump for "exactly what it missed").
    async fn backfill(&self) -> redis::RedisResult<()> {
        let mut conn = tokio::time::timeout(self.timeout * 2, self.target.connect())
            .await
            .map_err(|_| timed_out())??;
        if let Some(last) = self.gateway.last() {
            let mut c = redis::cmd("XRANGE");
            c.arg(&self.keys.snapshots)
                .arg(format!("({last}"))
                .arg("+")
                .arg("COUNT")
                .arg(BACKFILL);
            let entries = self.read(&mut conn, &c).await?;
            if entries.len() < BACKFILL {
                for t in entries {
                    self.gateway.offer(t);
                }
                return Ok(());
            }
            tracing::warn!(
                since = %last,
                "page: missed {BACKFILL} or more sets (cut off from Redis); viewers start over from the newest"
            );
            self.gateway.start_over();
        }
        let mut c = redis::cmd("XREVRANGE");
        c.arg(&self.keys.snapshots)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(BACKFILL);
        let mut entries = self.read(&mut conn, &c).await?;
        entries.reverse();
        for t in entries {
            self.gateway.offer(t);
        }
        Ok(())
    }

    /// The sets an `XRANGE`/`XREVRANGE` answers, as their text (an entry
    /// without the fields: empty, which the gateway counts as undecodable).
    async fn read(
        &self,
        conn: &mut crate::fanout::redis::Conn,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<Vec<String>> {
        let v = match tokio::time::timeout(self.timeout, conn.cmd(cmd)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) if e.code() == Some("WRONGTYPE") => return Ok(Vec::new()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(timed_out()),
        };
        let mut entries: Vec<String> = Vec::new();
        for e in items(&v) {
            let parts = items(e);
            let (Some(id), Some(body)) = (parts.first().and_then(text), parts.get(1)) else {
                continue;
            };
            let f: std::collections::HashMap<String, &redis::Value> =
                fields(body).into_iter().collect();
            let get = |k: &str| f.get(k).and_then(|v| text(v));
            match (get("fence"), get("ts"), get("snapshot"), get("signals")) {
                (Some(fence), Some(ts), Some(snapshot), Some(signals)) => {
                    entries.push(frame_text(&id, &fence, &ts, &snapshot, &signals));
                }
                _ => entries.push(String::new()),
            }
        }
        Ok(entries)
    }
}
