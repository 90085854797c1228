//! The agents this aggregator has seen, for the live page's agents table:
//! connected or not and since when, the address, the certificate's serial and
//! expiry, the clock offset its batches carry and what its spool holds (from
//! its `Status` reports, when it sends them).
//!
//! Bounded: at most [`MAX_ROWS`] agents; an agent gone for [`FORGET_AFTER`]
//! is forgotten, and past the bound the longest-gone one makes room. The hot
//! path (one batch) touches only atomics of its own row.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Agents remembered at most.
pub const MAX_ROWS: usize = 10_000;
/// A disconnected agent is forgotten after this long.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Every agent seen, shared by the sessions and the page.
#[derive(Clone, Default, Debug)]
pub struct Agents {
    rows: Arc<Mutex<BTreeMap<String, Arc<Row>>>>,
}

/// One agent's live state (atomics: sessions update it without a lock).
#[derive(Debug)]
pub struct Row {
    site: String,
    agent: String,
    remote: Mutex<String>,
    serial: Mutex<String>,
    cert_not_after_unix: AtomicI64,
    sessions: AtomicU32,
    connected_since_ms: AtomicI64,
    last_seen_ms: AtomicI64,
    clock_offset_ns: AtomicI64,
    batches: AtomicU64,
    spool_batches: AtomicI64,
    spool_bytes: AtomicI64,
    oldest_unacked_ms: AtomicI64,
    status_at_ms: AtomicI64,
}

/// What the agent reports of its spool (`Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolReport {
    /// Batches waiting for an acknowledgement.
    pub batches: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Age of the oldest of them, milliseconds (0 when none).
    pub oldest_unacked_ms: u64,
}

/// A connected session's handle on its row; dropping it marks the session gone.
pub struct Session {
    row: Arc<Row>,
}

/// One row of the agents table, as the page shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AgentView {
    /// `site/agent`.
    pub key: String,
    /// The site.
    pub site: String,
    /// The agent id.
    pub agent: String,
    /// Whether a session is up now.
    pub connected: bool,
    /// Since when (connected) or when it left (not), Unix ms.
    pub since_ms: i64,
    /// The last address it connected from.
    pub remote: String,
    /// Its certificate's serial (hex).
    pub serial: String,
    /// Days until its certificate expires (negative: expired), to the tenth.
    pub cert_days_left: f64,
    /// The clock offset its last batch carried (aggregator minus agent), ms.
    pub clock_offset_ms: Option<f64>,
    /// Batches received from it since this aggregator started.
    pub batches: u64,
    /// Its spool backlog, batches (`None` until it reports).
    pub spool_batches: Option<u64>,
    /// Its spool backlog, bytes.
    pub spool_bytes: Option<u64>,
    /// Age of its oldest unacknowledged batch, seconds.
    pub oldest_unacked_s: Option<f64>,
    /// The aggregator it is (or was last) connected to, on a page that shows
    /// the fleet's agents; empty in this aggregator's own table.
    #[serde(default)]
    pub via: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Agents {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A session of `site/agent` came up from `remote` with a certificate of
    /// `serial` valid until `not_after_unix`.
    pub fn connected(
        &self,
        site: &str,
        agent: &str,
        remote: &str,
        serial: &str,
        not_after_unix: i64,
    ) -> Session {
        let now = now_ms();
        let key = format!("{site}/{agent}");
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        let row = match rows.get(&key) {
            Some(r) => r.clone(),
            None => {
                if rows.len() >= MAX_ROWS {
                    Self::make_room(&mut rows, now);
                }
                let r = Arc::new(Row {
                    site: site.to_string(),
                    agent: agent.to_string(),
                    remote: Mutex::default(),
                    serial: Mutex::default(),
                    cert_not_after_unix: AtomicI64::new(not_after_unix),
                    sessions: AtomicU32::new(0),
                    connected_since_ms: AtomicI64::new(now),
                    last_seen_ms: AtomicI64::new(now),
                    clock_offset_ns: AtomicI64::new(i64::MIN),
                    batches: AtomicU64::new(0),
                    spool_batches: AtomicI64::new(-1),
                    spool_bytes: AtomicI64::new(-1),
                    oldest_unacked_ms: AtomicI64::new(-1),
                    status_at_ms: AtomicI64::new(0),
                });
                rows.insert(key, r.clone());
                r
            }
        };
        drop(rows);
        *row.remote.lock().unwrap_or_else(PoisonError::into_inner) = remote.to_string();
        *row.serial.lock().unwrap_or_else(PoisonError::into_inner) = serial.to_string();
        row.cert_not_after_unix
            .store(not_after_unix, Ordering::Relaxed);
        if row.sessions.fetch_add(1, Ordering::Relaxed) == 0 {
            row.connected_since_ms.store(now, Ordering::Relaxed);
        }
        row.last_seen_ms.store(now, Ordering::Relaxed);
        Session { row }
    }

    /// Forgets agents gone too long and, at the bound, the longest-gone one.
    fn make_room(rows: &mut BTreeMap<String, Arc<Row>>, now: i64) {
        let forget = i64::try_from(FORGET_AFTER.as_millis()).unwrap_or(i64::MAX);
        rows.retain(|_, r| {
            r.sessions.load(Ordering::Relaxed) > 0
                || now.saturating_sub(r.last_seen_ms.load(Ordering::Relaxed)) < forget
        });
        if rows.len() >= MAX_ROWS {
            let oldest = rows
                .iter()
                .filter(|(_, r)| r.sessions.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, r)| r.last_seen_ms.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                rows.remove(&k);
            }
        }
    }

    /// The table now, connected agents first, then by key; at most `limit` rows.
    pub fn view(&self, limit: usize) -> Vec<AgentView> {
        let now = now_ms();
        let rows: Vec<Arc<Row>> = {
            let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
            let forget = i64::try_from(FORGET_AFTER.as_millis()).unwrap_or(i64::MAX);
            rows.retain(|_, r| {
                r.sessions.load(Ordering::Relaxed) > 0
                    || now.saturating_sub(r.last_seen_ms.load(Ordering::Relaxed)) < forget
            });
            rows.values().cloned().collect()
        };
        let mut out: Vec<AgentView> = rows.iter().map(|r| r.view(now)).collect();
        out.sort_by(|a, b| b.connected.cmp(&a.connected).then(a.key.cmp(&b.key)));
        out.truncate(limit);
        out
    }

    /// The spool backlog the agents last reported, batches, summed (a
    /// disconnected agent's last report counts: its spool is still there);
    /// `None` while no agent has reported.
    pub fn spool_backlog(&self) -> Option<u64> {
        let rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sum: Option<u64> = None;
        for r in rows.values() {
            if let Ok(b) = u64::try_from(r.spool_batches.load(Ordering::Relaxed)) {
                sum = Some(sum.unwrap_or(0).saturating_add(b));
            }
        }
        sum
    }

    /// Agents connected now.
    pub fn connected_count(&self) -> usize {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|r| r.sessions.load(Ordering::Relaxed) > 0)
            .count()
    }
}

impl Row {
    fn view(&self, now: i64) -> AgentView {
        let connected = self.sessions.load(Ordering::Relaxed) > 0;
        let offset = self.clock_offset_ns.load(Ordering::Relaxed);
        let known = |v: i64| u64::try_from(v).ok();
        let not_after = self.cert_not_after_unix.load(Ordering::Relaxed);
        let days = (not_after as f64 - now as f64 / 1000.0) / 86_400.0;
        AgentView {
            key: format!("{}/{}", self.site, self.agent),
            site: self.site.clone(),
            agent: self.agent.clone(),
            connected,
            since_ms: if connected {
                self.connected_since_ms.load(Ordering::Relaxed)
            } else {
                self.last_seen_ms.load(Ordering::Relaxed)
            },
            remote: self
                .remote
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            serial: self
                .serial
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            cert_days_left: (days * 10.0).round() / 10.0,
            clock_offset_ms: (offset != i64::MIN).then(|| offset as f64 / 1e6),
            batches: self.batches.load(Ordering::Relaxed),
            spool_batches: known(self.spool_batches.load(Ordering::Relaxed)),
            spool_bytes: known(self.spool_bytes.load(Ordering::Relaxed)),
            oldest_unacked_s: known(self.oldest_unacked_ms.load(Ordering::Relaxed))
                .map(|ms| ms as f64 / 1000.0),
            via: String::new(),
        }
    }
}

impl Session {
    /// A batch arrived carrying `clock_offset_ns`.
    pub fn batch(&self, clock_offset_ns: i64) {
        let r = &self.row;
        r.batches.fetch_add(1, Ordering::Relaxed);
        // i64::MIN means "not known yet"; an agent cannot make it mean that.
        r.clock_offset_ns
            .store(clock_offset_ns.max(i64::MIN + 1), Ordering::Relaxed);
    }

    /// The agent reported its spool.
    pub fn spool(&self, s: SpoolReport) {
        let r = &self.row;
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        r.spool_batches.store(clamp(s.batches), Ordering::Relaxed);
        r.spool_bytes.store(clamp(s.bytes), Ordering::Relaxed);
        r.oldest_unacked_ms
            .store(clamp(s.oldest_unacked_ms), Ordering::Relaxed);
        r.status_at_ms.store(now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.row.last_seen_ms.store(now_ms(), Ordering::Relaxed);
        self.row.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_sessions_and_reports() {
        let a = Agents::new();
        let s = a.connected("plant-a", "a1", "127.0.0.1:5000", "0a", 0);
        let v = a.view(10);
        assert_eq!(v.len(), 1);
        assert!(v[0].connected);
        assert_eq!(v[0].clock_offset_ms, None);
        assert_eq!(v[0].spool_batches, None);
        assert_eq!(a.spool_backlog(), None, "nothing reported yet");
        assert!(v[0].cert_days_left < 0.0, "expired at the epoch");
        s.batch(-2_500_000);
        s.spool(SpoolReport {
            batches: 7,
            bytes: 7000,
            oldest_unacked_ms: 1500,
        });
        assert_eq!(a.spool_backlog(), Some(7));
        let v = a.view(10);
        assert_eq!(v[0].clock_offset_ms, Some(-2.5));
        assert_eq!(v[0].batches, 1);
        assert_eq!(v[0].spool_batches, Some(7));
        assert_eq!(v[0].oldest_unacked_s, Some(1.5));
        // A second session of the same agent, then both gone.
        let s2 = a.connected("plant-a", "a1", "127.0.0.1:5001", "0b", 0);
        drop(s);
        assert!(a.view(10)[0].connected, "one session is still up");
        assert_eq!(a.view(10)[0].serial, "0b");
        drop(s2);
        assert!(!a.view(10)[0].connected);
        assert_eq!(a.connected_count(), 0);
    }

    #[test]
    fn bounded_whatever_connects() {
        let a = Agents::new();
        for i in 0..(MAX_ROWS + 50) {
            drop(a.connected("s", &format!("a{i}"), "r", "1", 0));
        }
        let held = a.connected("s", "live", "r", "1", 0);
        assert!(a.rows.lock().map(|r| r.len()).unwrap_or(0) <= MAX_ROWS);
        assert!(a.view(1)[0].connected, "connected agents come first");
        drop(held);
    }
}
