//! The notifiers' decisions, with no I/O and no clock (every `now` is an
//! argument): which transitions notify, which are duplicates, what a full queue
//! drops, when a firing alert is sent again, how long to wait before a retry and
//! when to give up. The drivers (`alertmanager`, `pagerduty` and the task in
//! `mod.rs`) only move bytes and read clocks.
//!
//! Invariants of an [`Outbox`] (one per output):
//! - only `firing` and `resolved` enter it; `pending` and `inactive` never notify;
//! - at most `capacity` notifications wait; when full, the oldest `resolved` is
//!   dropped, else the oldest `firing` (see [`Outbox::offer`] for why);
//! - a fingerprint is open from its first `firing` to its first `resolved`: a
//!   second `firing` while open is the same incident (another aggregator's copy,
//!   or an episode re-detected after a failover) and is not sent again; the
//!   `resolved` is sent with the identity (episode, start) of the open one, so
//!   the output closes what it opened;
//! - while open, a firing alert is due again every resend interval (Alertmanager
//!   resolves alerts not heard of for `resolve_timeout`); at most `max_open`
//!   fingerprints are tracked.

use ferrule_rules::{Episode, Fingerprint, State, Transition};
use ferrule_wire::Quality;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Whether a notification opens or closes an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The alert fired: page.
    Firing,
    /// The episode is over: close what was opened.
    Resolved,
}

/// What an output is told: a `firing` or `resolved` transition, owned, shared by
/// every output's queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Opens or closes.
    pub kind: Kind,
    /// When the transition took effect (sample time), ns since the epoch.
    pub ts_ns: i64,
    /// The rule's name.
    pub rule: String,
    /// The series' site.
    pub site: String,
    /// The series' agent.
    pub agent: String,
    /// The series' sensor.
    pub sensor: String,
    /// The value that caused it.
    pub value: f64,
    /// The alert series.
    pub fingerprint: Fingerprint,
    /// The episode; for a `resolved`, the one the output was told opened.
    pub episode: Episode,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    /// The rule's labels.
    pub labels: BTreeMap<String, String>,
    /// The rule's summary, rendered.
    pub annotation: String,
    /// The quality of the sample that caused it.
    pub quality: Quality,
}

impl Notification {
    /// The notification for `t`, or `None` for `pending` and `inactive`, which
    /// never notify (a pending alert may still end without ever firing).
    pub fn from_transition(t: &Transition) -> Option<Self> {
        let kind = match t.state {
            State::Firing => Kind::Firing,
            State::Resolved => Kind::Resolved,
            _ => return None,
        };
        Some(Self {
            kind,
            ts_ns: t.ts_ns,
            rule: t.rule.clone(),
            site: t.site.clone(),
            agent: t.agent.clone(),
            sensor: t.sensor.clone(),
            value: t.value,
            fingerprint: t.fingerprint,
            episode: t.episode,
            severity: t.severity.as_str(),
            labels: t.labels.clone(),
            annotation: t.annotation.clone(),
            quality: t.quality,
        })
    }

    /// The key an output dedupes one episode on, the same from every aggregator
    /// that saw the episode begin: `<fingerprint>-<start ns>`.
    pub fn dedup_key(&self) -> String {
        self.episode.to_string()
    }
}

/// Why a notification was not delivered (the `reason` label of
/// `ferrule_aggregator_alert_notifications_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The output's queue was full.
    QueueFull,
    /// Retried for `retry_for_secs` without success.
    GaveUp,
    /// The output refused it for good (a 4xx other than 429).
    Rejected,
}

impl DropReason {
    /// Every reason, for publishing each at 0 from the start.
    pub const ALL: [DropReason; 3] = [Self::QueueFull, Self::GaveUp, Self::Rejected];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::GaveUp => "gave_up",
            Self::Rejected => "rejected",
        }
    }
}

/// What [`Outbox::offer`] did with a notification.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offered {
    /// Queued for delivery.
    pub queued: bool,
    /// A `firing` for a fingerprint already open: the same incident, not sent.
    pub duplicate: bool,
    /// Opened, but beyond `max_open`: sent once, never resent nor deduplicated.
    pub untracked: bool,
    /// What the full queue dropped to make room (possibly an older entry).
    pub dropped: Option<Arc<Notification>>,
}

#[derive(Debug, Clone)]
struct Open {
    firing: Arc<Notification>,
    next_resend_ns: Option<i64>,
}

/// One output's queue and open alerts. See the module's invariants.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Arc<Notification>>,
    queued_resolved: usize,
    capacity: usize,
    open: HashMap<Fingerprint, Open>,
    max_open: usize,
    resend_ns: Option<i64>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` (at least 1) notifications and
    /// tracking at most `max_open` open alerts; firing alerts are due again every
    /// `resend` (none: never resent, as for PagerDuty, which keeps incidents open
    /// until resolved).
    pub fn new(capacity: usize, max_open: usize, resend: Option<Duration>) -> Self {
        Self {
            queue: VecDeque::new(),
            queued_resolved: 0,
            capacity: capacity.max(1),
            open: HashMap::new(),
            max_open,
            resend_ns: resend.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX).max(1)),
        }
    }

    /// Notifications waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Alerts open (tracked for dedupe and resend).
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Takes a notification at wall time `now_ns`.
    ///
    /// When the queue is full, the oldest `resolved` is dropped, else the oldest
    /// `firing`: an incident left open is seen and closed by a person (and an
    /// Alertmanager alert whose resends stop resolves by itself when its
    /// `endsAt` passes), while a page never sent is a fault nobody sees. Among
    /// equals the oldest goes, so the newest state of a storm gets through. The
    /// open-alert bookkeeping is done here, at enqueue, so a `resolved` dropped
    /// later still stops the resends.
    pub fn offer(&mut self, mut n: Notification, now_ns: i64) -> Offered {
        let mut out = Offered::default();
        match n.kind {
            Kind::Firing => {
                if self.open.contains_key(&n.fingerprint) {
                    out.duplicate = true;
                    return out;
                }
                let n = Arc::new(n);
                if self.open.len() < self.max_open {
                    self.open.insert(
                        n.fingerprint,
                        Open {
                            firing: n.clone(),
                            next_resend_ns: self.resend_ns.map(|r| now_ns.saturating_add(r)),
                        },
                    );
                } else {
                    out.untracked = true;
                }
                out.dropped = self.push(n);
            }
            Kind::Resolved => {
                if let Some(open) = self.open.remove(&n.fingerprint) {
                    // Close what the output was told opened (its episode and
                    // start), even if this aggregator saw a later start.
                    n.episode = open.firing.episode;
                }
                out.dropped = self.push(Arc::new(n));
            }
        }
        out.queued = true;
        out
    }

    fn push(&mut self, n: Arc<Notification>) -> Option<Arc<Notification>> {
        let mut dropped = None;
        if self.queue.len() >= self.capacity {
            let at = if self.queued_resolved > 0 {
                self.queue.iter().position(|q| q.kind == Kind::Resolved)
            } else {
                None
            };
            dropped = self.queue.remove(at.unwrap_or(0));
            if dropped.as_ref().is_some_and(|d| d.kind == Kind::Resolved) {
                self.queued_resolved -= 1;
            }
        }
        if n.kind == Kind::Resolved {
            self.queued_resolved += 1;
        }
        self.queue.push_back(n);
        dropped
    }

    /// Up to `max` notifications to send now, at wall time `now_ns`: queued ones
    /// first, oldest first, then firing alerts due for a resend (each due again
    /// one interval later). A resend already in the batch as queued is not added
    /// twice. A notification for an alert already in the batch waits for the
    /// next one: an Alertmanager given an alert's `firing` and `resolved` in one
    /// request keeps only the last, and would never page a short episode.
    pub fn pop_batch(&mut self, max: usize, now_ns: i64) -> Vec<Arc<Notification>> {
        let mut batch: Vec<Arc<Notification>> = Vec::new();
        while batch.len() < max {
            let Some(front) = self.queue.front() else {
                break;
            };
            if batch.iter().any(|b| b.fingerprint == front.fingerprint) {
                break;
            }
            let Some(n) = self.queue.pop_front() else {
                break;
            };
            if n.kind == Kind::Resolved {
                self.queued_resolved -= 1;
            }
            batch.push(n);
        }
        if let Some(interval) = self.resend_ns {
            for open in self.open.values_mut() {
                if batch.len() >= max {
                    break;
                }
                if open.next_resend_ns.is_some_and(|due| due <= now_ns) {
                    open.next_resend_ns = Some(now_ns.saturating_add(interval));
                    if !batch.iter().any(|b| Arc::ptr_eq(b, &open.firing)) {
                        batch.push(open.firing.clone());
                    }
                }
            }
        }
        batch
    }

    /// Stops tracking alert `fp` (no more resends, no dedupe); true if it was
    /// open. For an alert whose series this aggregator no longer evaluates: its
    /// receiver expires it (Alertmanager at its `endsAt`) unless whoever
    /// evaluates it now keeps it firing.
    pub fn forget(&mut self, fp: Fingerprint) -> bool {
        self.open.remove(&fp).is_some()
    }

    /// The earliest wall time a resend is due, if any alert is open.
    pub fn next_resend_ns(&self) -> Option<i64> {
        self.open.values().filter_map(|o| o.next_resend_ns).min()
    }
}

/// Jittered exponential backoff between attempts to deliver one notification,
/// and when to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait (before jitter).
    pub initial: Duration,
    /// The longest wait (before jitter).
    pub max: Duration,
    /// Give up once the next attempt would start this long after the first.
    pub give_up_after: Duration,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Wait this long, then try again.
    After(Duration),
    /// Stop: drop it and count `gave_up`.
    GiveUp,
}

impl Backoff {
    /// 0.5 s doubling to 30 s, giving up after `give_up_after`.
    pub fn new(give_up_after: Duration) -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            give_up_after,
        }
    }

    /// After failed attempt number `attempt` (1 for the first), `elapsed` since
    /// the first began: the wait is `initial * 2^(attempt-1)` capped at `max`,
    /// then "equal jitter": half of it fixed, half scaled by `jitter` in [0, 1),
    /// so outputs (and aggregators) that failed together do not retry in step, and
    /// no wait is under half the schedule's.
    pub fn next(&self, attempt: u32, elapsed: Duration, jitter: f64) -> Retry {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self
            .initial
            .saturating_mul(1u32 << exp)
            .min(self.max)
            .max(Duration::from_millis(1));
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let wait = base / 2 + (base / 2).mul_f64(jitter);
        if elapsed.saturating_add(wait) > self.give_up_after {
            Retry::GiveUp
        } else {
            Retry::After(wait)
        }
    }
}

/// How an HTTP answer (or its absence) is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered (2xx).
    Delivered,
    /// Try again (no answer, timeout, 408, 429, 5xx, and 3xx, which these APIs
    /// never send and a proxy might fix).
    Retry,
    /// Refused for good (other 4xx: the payload or the key is wrong; sending it
    /// again cannot help).
    Reject,
}

impl Verdict {
    /// The verdict on an HTTP status.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Delivered,
            408 | 429 => Self::Retry,
            400..=499 => Self::Reject,
            _ => Self::Retry,
        }
    }
}

/// RFC 3339 in UTC with nanoseconds (`2023-11-14T22:13:20.123456789Z`), as both
/// Alertmanager (Go's time.Time) and PagerDuty (ISO 8601) read it.
pub fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(kind: Kind, fp: u64, start: i64, ts: i64) -> Notification {
        Notification {
            kind,
            ts_ns: ts,
            rule: "undervoltage".into(),
            site: "substation-7".into(),
            agent: "rtu-3".into(),
            sensor: format!("feed/v{fp}"),
            value: 180.0,
            fingerprint: Fingerprint(fp),
            episode: Episode {
                fingerprint: Fingerprint(fp),
                started_ns: start,
            },
            severity: "critical",
            labels: BTreeMap::new(),
            annotation: "low".into(),
            quality: Quality::Good,
        }
    }

    #[test]
    fn only_firing_and_resolved_notify() {
        let mut rules = ferrule_rules::Engine::new(
            ferrule_rules::RuleSet::from_toml(
                "[[rule]]\nname = \"low\"\nkind = \"below\"\nsensors = \"*\"\nthreshold = 10.0\nfor_ms = 10\nseverity = \"critical\"\n",
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let s = |ts_ns, value| ferrule_rules::Sample {
            ts_ns,
            site: "s",
            agent: "a",
            sensor: "x",
            value,
            quality: Quality::Good,
        };
        let mut kinds = Vec::new();
        for (ts, v) in [
            (0, 5.0),
            (1_000_000, 20.0),
            (2_000_000, 5.0),
            (20_000_000, 5.0),
            (30_000_000, 20.0),
        ] {
            rules.handle_sample(&s(ts, v));
            while let Some(t) = rules.poll_transition() {
                kinds.push((t.state, Notification::from_transition(&t).map(|n| n.kind)));
            }
        }
        assert_eq!(
            kinds,
            [
                (State::Pending, None),
                (State::Inactive, None),
                (State::Pending, None),
                (State::Firing, Some(Kind::Firing)),
                (State::Resolved, Some(Kind::Resolved)),
            ]
        );
    }

    #[test]
    fn a_full_queue_drops_the_oldest_resolved_first_then_the_oldest_firing() {
        let mut o = Outbox::new(3, 100, None);
        assert!(o.offer(note(Kind::Firing, 1, 10, 10), 0).dropped.is_none());
        assert!(o
            .offer(note(Kind::Resolved, 1, 10, 20), 0)
            .dropped
            .is_none());
        assert!(o.offer(note(Kind::Firing, 2, 30, 30), 0).dropped.is_none());
        // Full: the resolved of 1 goes, not the older firing of 1.
        let d = o.offer(note(Kind::Firing, 3, 40, 40), 0).dropped;
        assert_eq!(
            d.map(|d| (d.kind, d.fingerprint)),
            Some((Kind::Resolved, Fingerprint(1)))
        );
        // No resolved left: the oldest firing goes.
        let d = o.offer(note(Kind::Firing, 4, 50, 50), 0).dropped;
        assert_eq!(
            d.map(|d| (d.kind, d.fingerprint)),
            Some((Kind::Firing, Fingerprint(1)))
        );
        assert_eq!(o.len(), 3);
        let left: Vec<u64> = o.pop_batch(10, 0).iter().map(|n| n.fingerprint.0).collect();
        assert_eq!(left, [2, 3, 4]);
        assert!(o.is_empty());
    }

    /// A forgotten alert is no longer resent (its receiver expires it).
    #[test]
    fn a_forgotten_alert_is_not_resent() {
        let s = 1_000_000_000i64;
        let mut o = Outbox::new(10, 100, Some(Duration::from_secs(60)));
        assert!(o.offer(note(Kind::Firing, 1, 10, 10), 0).queued);
        assert_eq!(o.pop_batch(64, 0).len(), 1);
        assert_eq!(o.pop_batch(64, 61 * s).len(), 1, "resent while open");
        assert!(o.forget(Fingerprint(1)));
        assert!(
            o.pop_batch(64, 200 * s).is_empty(),
            "not resent once forgotten"
        );
        assert_eq!(o.open_count(), 0);
    }

    /// A short episode's firing and resolve, queued together, go out in two
    /// requests: in one, Alertmanager keeps only the resolve and never pages.
    #[test]
    fn an_alerts_firing_and_resolve_never_share_a_request() {
        let mut o = Outbox::new(10, 100, None);
        assert!(o.offer(note(Kind::Firing, 1, 10, 10), 0).queued);
        assert!(o.offer(note(Kind::Firing, 2, 10, 10), 0).queued);
        assert!(o.offer(note(Kind::Resolved, 1, 10, 20), 0).queued);
        let kinds = |b: Vec<Arc<Notification>>| -> Vec<(Kind, u64)> {
            b.iter().map(|n| (n.kind, n.fingerprint.0)).collect()
        };
        assert_eq!(
            kinds(o.pop_batch(64, 0)),
            [(Kind::Firing, 1), (Kind::Firing, 2)]
        );
        assert_eq!(kinds(o.pop_batch(64, 0)), [(Kind::Resolved, 1)]);
        assert!(o.is_empty());
    }

    #[test]
    fn a_second_firing_while_open_is_the_same_incident_and_resolve_closes_the_first_episode() {
        let mut o = Outbox::new(10, 100, None);
        assert!(o.offer(note(Kind::Firing, 1, 10, 10), 0).queued);
        // Another aggregator's copy, or a later start seen after a failover.
        let again = o.offer(note(Kind::Firing, 1, 15, 16), 0);
        assert!(again.duplicate && !again.queued);
        o.offer(note(Kind::Resolved, 1, 15, 30), 0);
        // The firing and its resolve go out one request after the other.
        let mut b = o.pop_batch(10, 0);
        assert_eq!(b.len(), 1);
        b.extend(o.pop_batch(10, 0));
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].kind, Kind::Resolved);
        assert_eq!(
            b[1].episode.started_ns, 10,
            "resolve closes the episode that was opened"
        );
        assert_eq!(b[0].dedup_key(), b[1].dedup_key());
        assert_eq!(o.open_count(), 0);
        // A new episode after the resolve notifies again.
        assert!(o.offer(note(Kind::Firing, 1, 40, 40), 0).queued);
    }

    #[test]
    fn firing_alerts_are_resent_every_interval_until_resolved() {
        let s = 1_000_000_000;
        let mut o = Outbox::new(10, 100, Some(Duration::from_secs(60)));
        o.offer(note(Kind::Firing, 1, 10, 10), 0);
        assert_eq!(o.pop_batch(64, 0).len(), 1);
        assert_eq!(o.next_resend_ns(), Some(60 * s));
        assert!(o.pop_batch(64, 59 * s).is_empty());
        let b = o.pop_batch(64, 61 * s);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].episode.started_ns, 10, "same startsAt on every resend");
        assert_eq!(o.next_resend_ns(), Some(121 * s));
        // Resolved, even if the resolve is later dropped: no more resends.
        o.offer(note(Kind::Resolved, 1, 10, 70), 70 * s);
        assert_eq!(o.next_resend_ns(), None);
        assert_eq!(o.pop_batch(64, 200 * s).len(), 1);
        assert!(o.pop_batch(64, 300 * s).is_empty());
    }

    #[test]
    fn beyond_max_open_an_alert_is_sent_once_untracked() {
        let mut o = Outbox::new(10, 1, Some(Duration::from_secs(1)));
        assert!(!o.offer(note(Kind::Firing, 1, 1, 1), 0).untracked);
        let r = o.offer(note(Kind::Firing, 2, 1, 1), 0);
        assert!(r.untracked && r.queued);
        assert_eq!(o.open_count(), 1);
    }

    #[test]
    fn backoff_doubles_with_jitter_to_the_cap_and_gives_up() {
        let b = Backoff::new(Duration::from_secs(120));
        let ms = |r: Retry| match r {
            Retry::After(d) => d.as_millis(),
            Retry::GiveUp => u128::MAX,
        };
        assert_eq!(ms(b.next(1, Duration::ZERO, 0.0)), 250);
        assert_eq!(ms(b.next(1, Duration::ZERO, 1.0)), 500);
        assert_eq!(ms(b.next(2, Duration::ZERO, 0.5)), 750);
        assert_eq!(ms(b.next(3, Duration::ZERO, 0.0)), 1000);
        assert_eq!(ms(b.next(20, Duration::ZERO, 1.0)), 30_000);
        assert_eq!(ms(b.next(u32::MAX, Duration::ZERO, 0.0)), 15_000);
        assert_eq!(ms(b.next(1, Duration::ZERO, f64::NAN)), 250);
        // 15 s more would end past 120 s: give up; 5 s earlier it still fits.
        assert_eq!(b.next(10, Duration::from_secs(110), 0.0), Retry::GiveUp);
        assert_eq!(ms(b.next(10, Duration::from_secs(100), 0.0)), 15_000);
    }

    #[test]
    fn statuses() {
        assert_eq!(Verdict::of_status(200), Verdict::Delivered);
        assert_eq!(Verdict::of_status(202), Verdict::Delivered);
        assert_eq!(Verdict::of_status(429), Verdict::Retry);
        assert_eq!(Verdict::of_status(500), Verdict::Retry);
        assert_eq!(Verdict::of_status(503), Verdict::Retry);
        assert_eq!(Verdict::of_status(400), Verdict::Reject);
        assert_eq!(Verdict::of_status(403), Verdict::Reject);
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_700_000_001_100_000_000),
            "2023-11-14T22:13:21.100000000Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
    }
}
