//! When the agent's certificate renew hook (`tls.renew_command`) runs.
//!
//! Pure: the driver ([`crate::renew_hook`]) passes in the certificate it read
//! and the time (Unix seconds), and gets back "run now" or "next at T"; no
//! clock, no files, no randomness of its own, so every rule below is tested
//! without waiting.
//!
//! Rules (invariants, checked by the tests and property tests below):
//! - A certificate valid from `not_before` to `not_after` (lifetime `L`) is
//!   due at `not_before + L * (at_fraction + u * jitter_fraction)`, where `u`
//!   in `[-1, 1]` comes from the certificate's serial: picked once per
//!   certificate, stable across restarts, and spread across a fleet because
//!   serials are random. So it is never due before
//!   `L * (at_fraction - jitter_fraction)`, and always strictly before
//!   `not_after` (the config keeps `at ± jitter` inside `(0, 1)`; the offset
//!   is clamped to `L - 1` regardless).
//! - After an attempt ends at `t` (ok or not), the same certificate is not
//!   tried again before `t + retry_secs`: a failing hook retries at that pace,
//!   and a hook that "succeeded" without changing the file does not loop.
//! - A different certificate (another serial or validity, e.g. the renewed
//!   one) gets its own due time. Only if that time is not after the last
//!   attempt (a renewal that produced a certificate already due) does the
//!   `retry_secs` pause still apply, so a misconfigured hook cannot hammer
//!   the CA.

/// The renew knobs of `[tls]`, as the schedule uses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewPolicy {
    /// Fraction of the lifetime, from `not_before`, at which renewal is due.
    pub at_fraction: f64,
    /// Up to this fraction of the lifetime earlier or later, per certificate.
    pub jitter_fraction: f64,
    /// Pause after an attempt before the same certificate is tried again.
    pub retry_secs: u64,
}

/// The certificate the hook would renew: what the schedule needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertLifetime {
    /// Serial (hex); seeds the per-certificate jitter and tells certificates apart.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before_unix: i64,
    /// End of validity, Unix seconds.
    pub not_after_unix: i64,
}

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run the hook now.
    RunNow,
    /// Nothing before this Unix time (the driver still looks at the file
    /// again meanwhile, in case the certificate changes).
    NextAt(i64),
}

/// The renew schedule of one agent.
///
/// It exists so the timing rules (fraction, jitter, retry pause, reset on a
/// new certificate) live in one place that needs no clock to test.
///
/// ```
/// use ferrule_agent::renew_schedule::{CertLifetime, Decision, RenewPolicy, RenewSchedule};
/// let policy = RenewPolicy { at_fraction: 0.5, jitter_fraction: 0.0, retry_secs: 600 };
/// let mut s = RenewSchedule::new(policy);
/// s.observe(CertLifetime { serial: "01".into(), not_before_unix: 0, not_after_unix: 1000 });
/// assert_eq!(s.poll(10), Decision::NextAt(500));
/// assert_eq!(s.poll(500), Decision::RunNow);
/// s.attempted(501);
/// assert_eq!(s.poll(502), Decision::NextAt(1101));
/// ```
#[derive(Debug, Clone)]
pub struct RenewSchedule {
    policy: RenewPolicy,
    cert: Option<CertLifetime>,
    /// Due time of `cert`.
    planned_unix: i64,
    /// When the last attempt ended.
    last_attempt_unix: Option<i64>,
}

impl RenewSchedule {
    /// A schedule that knows no certificate yet.
    pub fn new(policy: RenewPolicy) -> Self {
        Self {
            policy,
            cert: None,
            planned_unix: 0,
            last_attempt_unix: None,
        }
    }

    /// The certificate now in the file. The same one again changes nothing;
    /// a different one gets its own due time.
    pub fn observe(&mut self, cert: CertLifetime) {
        if self.cert.as_ref() == Some(&cert) {
            return;
        }
        self.planned_unix = planned(&self.policy, &cert);
        self.cert = Some(cert);
    }

    /// When the current certificate is due, before any retry pause (Unix
    /// seconds); `None` before the first [`observe`](Self::observe).
    pub fn planned(&self) -> Option<i64> {
        self.cert.as_ref().map(|_| self.planned_unix)
    }

    /// An attempt ended at `now_unix` (whatever its outcome).
    pub fn attempted(&mut self, now_unix: i64) {
        self.last_attempt_unix = Some(now_unix);
    }

    /// When the next attempt is, Unix seconds: the planned time, or the end
    /// of the retry pause if the planned time is not after the last attempt.
    /// Without a certificate, one retry pause from `now_unix`.
    pub fn next_at(&self, now_unix: i64) -> i64 {
        let retry = i64::try_from(self.policy.retry_secs).unwrap_or(i64::MAX);
        if self.cert.is_none() {
            return now_unix.saturating_add(retry);
        }
        match self.last_attempt_unix {
            Some(last) if self.planned_unix <= last => {
                self.planned_unix.max(last.saturating_add(retry))
            }
            _ => self.planned_unix,
        }
    }

    /// What to do at `now_unix`.
    pub fn poll(&self, now_unix: i64) -> Decision {
        let next = self.next_at(now_unix);
        if self.cert.is_some() && now_unix >= next {
            Decision::RunNow
        } else {
            Decision::NextAt(next)
        }
    }
}

/// The due time of `cert` under `policy`.
fn planned(policy: &RenewPolicy, cert: &CertLifetime) -> i64 {
    let lifetime = cert.not_after_unix.saturating_sub(cert.not_before_unix);
    if lifetime <= 1 {
        return cert.not_before_unix;
    }
    let fraction = policy.at_fraction + jitter_unit(&cert.serial) * policy.jitter_fraction;
    // Float to int saturates (NaN gives 0); the clamp keeps the due time in
    // [not_before, not_after) whatever the knobs.
    let offset = ((lifetime as f64) * fraction).floor() as i64;
    cert.not_before_unix
        .saturating_add(offset.clamp(0, lifetime - 1))
}

/// A number in `[-1, 1]` fixed by `serial` (FNV-1a, top 53 bits): the
/// certificate's jitter draw. Serials are random, so a fleet's draws spread
/// evenly; the same certificate always draws the same, so a restart does not
/// move its due time.
pub fn jitter_unit(serial: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in serial.to_ascii_lowercase().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cert(serial: &str, nb: i64, na: i64) -> CertLifetime {
        CertLifetime {
            serial: serial.into(),
            not_before_unix: nb,
            not_after_unix: na,
        }
    }

    fn policy(at: f64, jitter: f64, retry: u64) -> RenewPolicy {
        RenewPolicy {
            at_fraction: at,
            jitter_fraction: jitter,
            retry_secs: retry,
        }
    }

    #[test]
    fn due_at_the_fraction_then_retries_after_the_pause() {
        let mut s = RenewSchedule::new(policy(0.66, 0.0, 600));
        assert_eq!(s.poll(0), Decision::NextAt(600));
        assert_eq!(s.planned(), None);
        s.observe(cert("ab", 1_000, 101_000));
        assert_eq!(s.planned(), Some(67_000));
        assert_eq!(s.poll(1_000), Decision::NextAt(67_000));
        assert_eq!(s.poll(66_999), Decision::NextAt(67_000));
        assert_eq!(s.poll(67_000), Decision::RunNow);
        // Failed at 67 010: the same certificate waits the pause.
        s.attempted(67_010);
        assert_eq!(s.poll(67_011), Decision::NextAt(67_610));
        assert_eq!(s.poll(67_610), Decision::RunNow);
        // Observing the same certificate again changes nothing.
        s.observe(cert("ab", 1_000, 101_000));
        assert_eq!(s.poll(67_011), Decision::NextAt(67_610));
        // The renewed certificate: its own schedule.
        s.observe(cert("cd", 67_000, 167_000));
        assert_eq!(s.poll(67_611), Decision::NextAt(133_000));
    }

    #[test]
    fn a_renewal_that_is_due_at_once_still_waits_the_pause() {
        let mut s = RenewSchedule::new(policy(0.5, 0.0, 600));
        s.observe(cert("ab", 0, 100));
        assert_eq!(s.poll(60), Decision::RunNow);
        s.attempted(61);
        // The hook made a certificate as short as the last: due at once, but
        // not before the pause.
        s.observe(cert("cd", 0, 110));
        assert_eq!(s.poll(62), Decision::NextAt(661));
    }

    #[test]
    fn an_expired_or_empty_lifetime_is_due_at_once() {
        let mut s = RenewSchedule::new(policy(0.66, 0.05, 600));
        s.observe(cert("ab", 100, 100));
        assert_eq!(s.poll(100), Decision::RunNow);
        s.observe(cert("cd", 100, 50));
        assert_eq!(s.poll(100), Decision::RunNow);
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        let draws: Vec<f64> = (0..1000u32)
            .map(|i| jitter_unit(&format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15)))
            .collect();
        assert!(draws.iter().all(|u| (-1.0..=1.0).contains(u)));
        let below = draws.iter().filter(|u| **u < 0.0).count();
        assert!((400..600).contains(&below), "{below}");
        let distinct: std::collections::BTreeSet<u64> =
            draws.iter().map(|u| (u * 1e6) as i64 as u64).collect();
        assert!(distinct.len() > 990);
        // The same serial, however spelled, draws the same.
        assert_eq!(jitter_unit("AB12"), jitter_unit("ab12"));
    }

    fn knobs() -> impl Strategy<Value = (f64, f64)> {
        (0.01f64..0.99).prop_flat_map(|at| {
            let max_jitter = at.min(1.0 - at) * 0.999;
            (Just(at), 0.0..max_jitter)
        })
    }

    proptest! {
        #[test]
        fn never_early_always_before_expiry(
            (at, jitter) in knobs(),
            serial in "[0-9a-f]{2,40}",
            nb in -1_000_000_000i64..4_000_000_000,
            lifetime in 2i64..400_000_000,
            retry in 1u64..100_000,
        ) {
            let mut s = RenewSchedule::new(policy(at, jitter, retry));
            s.observe(cert(&serial, nb, nb + lifetime));
            let due = s.planned().unwrap_or(i64::MIN);
            let earliest = nb + ((lifetime as f64) * (at - jitter)).floor() as i64;
            let latest = nb + ((lifetime as f64) * (at + jitter)).ceil() as i64;
            prop_assert!(due >= earliest, "due {due} before {earliest}");
            prop_assert!(due <= latest, "due {due} after {latest}");
            prop_assert!(due < nb + lifetime, "due {due} not before expiry");
            prop_assert_eq!(s.poll(due - 1), Decision::NextAt(due));
            prop_assert_eq!(s.poll(due), Decision::RunNow);
        }

        #[test]
        fn after_a_failure_the_next_try_waits_retry_secs(
            (at, jitter) in knobs(),
            serial in "[0-9a-f]{2,40}",
            lifetime in 2i64..400_000_000,
            retry in 1u64..100_000,
            late in 0i64..1_000_000,
            failures in 1usize..5,
        ) {
            let mut s = RenewSchedule::new(policy(at, jitter, retry));
            s.observe(cert(&serial, 0, lifetime));
            let mut t = s.planned().unwrap_or(0) + late;
            for _ in 0..failures {
                prop_assert_eq!(s.poll(t), Decision::RunNow);
                s.attempted(t);
                let r = i64::try_from(retry).unwrap_or(i64::MAX);
                prop_assert_eq!(s.poll(t + r - 1), Decision::NextAt(t + r));
                t += r;
            }
            prop_assert_eq!(s.poll(t), Decision::RunNow);
        }

        #[test]
        fn a_renewed_certificate_resets_the_schedule(
            (at, jitter) in knobs(),
            old_serial in "[0-9a-f]{2,40}",
            new_serial in "[0-9a-f]{2,40}",
            lifetime in 1_000i64..400_000_000,
            retry in 1u64..100_000,
            failures in 0usize..3,
        ) {
            prop_assume!(old_serial != new_serial);
            let mut s = RenewSchedule::new(policy(at, jitter, retry));
            s.observe(cert(&old_serial, 0, lifetime));
            let mut t = s.planned().unwrap_or(0);
            for _ in 0..failures {
                s.attempted(t);
                t += i64::try_from(retry).unwrap_or(i64::MAX);
            }
            s.attempted(t);
            // Renewed at t: valid from t, a later expiry.
            let renewed = cert(&new_serial, t, t + lifetime);
            s.observe(renewed.clone());
            let mut fresh = RenewSchedule::new(policy(at, jitter, retry));
            fresh.observe(renewed);
            let due = fresh.planned().unwrap_or(0);
            prop_assert!(due > t);
            prop_assert_eq!(s.planned(), Some(due));
            prop_assert_eq!(s.poll(t + 1), Decision::NextAt(due));
            prop_assert_eq!(s.poll(due), Decision::RunNow);
        }
    }
}
