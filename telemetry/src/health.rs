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
    /// Each cause's reason, and whether it was said as a fault (a cause set by
    /// [`Health::starting`] is said again, as an error, once it is one).
    causes: Mutex<BTreeMap<&'static str, (String, bool)>>,
    bad: AtomicBool,
}

impl Health {
    /// Marks it unready for `cause`, with a reason for operators. Logged when the
    /// cause appears, not every time it is seen again.
    pub fn set_unready(&self, cause: &'static str, why: impl Into<String>) {
        let why = why.into();
        let mut c = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        if !c.get(cause).is_some_and(|(_, fault)| *fault) {
            tracing::error!(cause, reason = %why, "unhealthy");
        }
        c.insert(cause, (why, true));
        self.bad.store(true, Ordering::Relaxed);
    }

    /// Marks it not ready yet for `cause` while something is being set up (a
    /// first check of the brokers): said at info, not as a fault.
    pub fn starting(&self, cause: &'static str, why: impl Into<String>) {
        let why = why.into();
        let mut c = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        if !c.contains_key(cause) {
            tracing::info!(cause, reason = %why, "not ready yet");
        }
        c.insert(cause, (why, false));
        self.bad.store(true, Ordering::Relaxed);
    }

    /// `cause` no longer holds; ready once no cause is left.
    pub fn clear(&self, cause: &'static str) {
        let mut c = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((old, _)) = c.remove(cause) {
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
        Err(c
            .values()
            .map(|(why, _)| why.as_str())
            .collect::<Vec<_>>()
            .join("; "))
    }

    /// True when no cause holds (cheap: one atomic load).
    pub fn is_ok(&self) -> bool {
        !self.bad.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not ready while starting, with the reason; a real fault replaces it; a
    /// clear makes it ready.
    #[test]
    fn starting_is_unready_until_cleared_and_a_fault_replaces_it() {
        let h = Health::default();
        h.starting("kafka_topics", "checking the topics");
        assert_eq!(h.check(), Err("checking the topics".to_string()));
        assert!(!h.is_ok());
        h.set_unready("kafka_topics", "topic missing");
        assert_eq!(h.check(), Err("topic missing".to_string()));
        h.clear("kafka_topics");
        assert!(h.check().is_ok() && h.is_ok());
    }
}
