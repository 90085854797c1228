//! Health: why a process is not ready, by cause, for `/healthz`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// Whether a process (or a part of it) does its job right now, and if not, why:
/// what `/healthz` serves.
///
/// Several causes can hold it unready at once (a missing topic, and deliveries
/// stalled; a spool that cannot write, and an uplink that stalled); each is set
/// and cleared by what observes it, and it is ready only when none is left. So a
/// check that sees one cause gone (topic metadata answers) cannot declare it
/// ready while another (no delivery for a minute) still holds.
///
/// ```
/// let h = ferrule_telemetry::Health::default();
/// h.set_unready("disk", "spool writes fail: No space left on device");
/// h.set_unready("uplink", "no ack for 60 s");
/// h.clear("disk");
/// assert_eq!(h.check(), Err("no ack for 60 s".to_string()));
/// h.clear("uplink");
/// assert!(h.check().is_ok());
/// ```
#[derive(Debug, Default)]
pub struct Health {
    causes: Mutex<BTreeMap<&'static str, String>>,
    bad: AtomicBool,
}

impl Health {
    /// Marks it unready for `cause`, with a reason for operators. Logged when the
    /// cause appears, not every time it is seen again.
    pub fn set_unready(&self, cause: &'static str, why: impl Into<String>) {
        let why = why.into();
        let mut c = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        if !c.contains_key(cause) {
            tracing::error!(cause, reason = %why, "unhealthy");
        }
        c.insert(cause, why);
        self.bad.store(true, Ordering::Relaxed);
    }

    /// `cause` no longer holds; ready once no cause is left.
    pub fn clear(&self, cause: &'static str) {
        let mut c = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = c.remove(cause) {
            tracing::info!(cause, was = %old, "problem cleared");
            if c.is_empty() {
                tracing::info!("healthy again");
            }
        }
        self.bad.store(!c.is_empty(), Ordering::Relaxed);
    }

    /// `Ok` when ready, else the reasons.
    pub fn check(&self) -> Result<(), String> {
        if !self.bad.load(Ordering::Relaxed) {
            return Ok(());
        }
        let c = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        if c.is_empty() {
            return Ok(());
        }
        Err(c.values().cloned().collect::<Vec<_>>().join("; "))
    }

    /// True when no cause holds (cheap: one atomic load).
    pub fn is_ok(&self) -> bool {
        !self.bad.load(Ordering::Relaxed)
    }
}
