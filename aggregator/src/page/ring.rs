//! The gateway's backfill: the newest signal sets in sequence order, and the
//! decisions about each one offered (new, a repeat, from an old sampler).
//! Pure: time is an argument, so the rules are tested without a clock.
//!
//! - A set is identified by its sequence, the history stream's entry id
//!   (`<ms>-<n>`, rising); one at or below the newest kept is a repeat (the
//!   same set from pub/sub and from a backfill read).
//! - A set carries its sampler's fence; one with a fence older than the newest
//!   seen is refused, as the store refuses it. Unless the newest fence has been
//!   silent for [`FENCE_GRACE`]: then Redis lost its keys and the sampler's
//!   fences started over, and the older fence is the truth now (the ring
//!   starts over, and viewers get the full state).
//! - Likewise a set of the newest fence whose sequence goes back (one the ring
//!   does not hold) once the newest set kept has been silent for
//!   [`FENCE_GRACE`]: the history's ids went back (the stream was deleted
//!   or replaced under a clock that stepped back, or a set from the future
//!   was published), and without this the newest set would shadow every later
//!   one for good.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The sets' text kept at most, bytes: a ring of `page.backfill_max_len`
/// sets stays within this whatever their size (junk published on the
/// channel included).
pub const MAX_BYTES: usize = 64 << 20;

/// How long the newest fence must be silent before an older one is taken.
pub const FENCE_GRACE: Duration = Duration::from_secs(15);

/// A history entry id: milliseconds and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq {
    /// Milliseconds part.
    pub ms: u64,
    /// Counter within the millisecond.
    pub n: u64,
}

impl Seq {
    /// Parses `<ms>-<n>` (a stream entry id); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, n) = s.split_once('-')?;
        let digits =
            |x: &str| !x.is_empty() && x.len() <= 20 && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(n) {
            return None;
        }
        Some(Self {
            ms: ms.parse().ok()?,
            n: n.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.n)
    }
}

/// One signal set as viewers receive it: the exact bytes, with what the
/// gateway reads from them.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Its sequence.
    pub seq: Seq,
    /// Its sampler's fence.
    pub fence: u64,
    /// The JSON text, forwarded as is.
    pub text: Utf8Bytes,
}

/// The text of a signal set: the same template in the store's script
/// ([`crate::sampler::STORE`]), for the embedded sampler and for sets read
/// back from the history, so every path gives the same bytes.
pub fn frame_text(seq: &str, fence: &str, ts: &str, snapshot: &str, signals: &str) -> String {
    format!(
        r#"{{"seq":"{seq}","fence":{fence},"ts":{ts},"snapshot":{snapshot},"signals":{signals}}}"#
    )
}

/// What became of an offered set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Kept and to be sent to viewers.
    New,
    /// Kept, but the ring started over (a new fence era): viewers reset.
    Restart,
    /// Already had it (or an older one of the same era).
    Repeat,
    /// From a sampler older than the newest seen.
    OldFence,
}

/// The newest sets, oldest first.
#[derive(Debug)]
pub struct Ring {
    frames: VecDeque<Arc<Frame>>,
    cap: usize,
    /// The text bytes kept, bounded by [`MAX_BYTES`] whatever arrives.
    bytes: usize,
    newest_fence: Option<(u64, Instant)>,
    /// When the newest set kept arrived.
    newest_at: Option<Instant>,
}

impl Ring {
    /// An empty ring keeping `cap` sets (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            cap: cap.max(1),
            bytes: 0,
            newest_fence: None,
            newest_at: None,
        }
    }

    /// Offers a set received at `now`.
    pub fn offer(&mut self, f: Arc<Frame>, now: Instant) -> Offer {
        let mut outcome = Offer::New;
        match self.newest_fence {
            Some((newest, _)) if f.fence == newest => {
                self.newest_fence = Some((newest, now));
            }
            Some((newest, _)) if f.fence > newest => {
                self.newest_fence = Some((f.fence, now));
            }
            Some((_, seen)) => {
                if now.saturating_duration_since(seen) < FENCE_GRACE {
                    return Offer::OldFence;
                }
                self.drop_all();
                self.newest_fence = Some((f.fence, now));
                outcome = Offer::Restart;
            }
            None => self.newest_fence = Some((f.fence, now)),
        }
        if outcome == Offer::New && self.frames.back().is_some_and(|b| f.seq <= b.seq) {
            let held = self.frames.iter().any(|x| x.seq == f.seq);
            let silent = self
                .newest_at
                .is_some_and(|at| now.saturating_duration_since(at) >= FENCE_GRACE);
            if held || !silent {
                return Offer::Repeat;
            }
            self.drop_all();
            outcome = Offer::Restart;
        }
        self.newest_at = Some(now);
        while self.frames.len() >= self.cap
            || (!self.frames.is_empty() && self.bytes + f.text.len() > MAX_BYTES)
        {
            if let Some(old) = self.frames.pop_front() {
                self.bytes -= old.text.len();
            }
        }
        self.bytes += f.text.len();
        self.frames.push_back(f);
        outcome
    }

    fn drop_all(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    /// The text bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The sets after `seq`, if `seq` is one kept (or the newest): what a
    /// viewer that saw `seq` missed. `None` when it is older than the ring or
    /// unknown: that viewer needs the full state.
    pub fn after(&self, seq: Seq) -> Option<Vec<Arc<Frame>>> {
        let i = self.frames.iter().position(|f| f.seq == seq)?;
        Some(self.frames.iter().skip(i + 1).cloned().collect())
    }

    /// The newest `n` sets, oldest first.
    pub fn newest(&self, n: usize) -> Vec<Arc<Frame>> {
        let skip = self.frames.len().saturating_sub(n);
        self.frames.iter().skip(skip).cloned().collect()
    }

    /// The newest sequence kept.
    pub fn last(&self) -> Option<Seq> {
        self.frames.back().map(|f| f.seq)
    }

    /// Forgets every set kept (the fence is still known): for a gateway whose
    /// copy would otherwise have a hole.
    pub fn clear(&mut self) {
        self.drop_all();
    }

    /// Sets kept.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Nothing kept.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ms: u64, fence: u64) -> Arc<Frame> {
        let seq = format!("{ms}-0");
        Arc::new(Frame {
            seq: Seq::parse(&seq).unwrap_or(Seq { ms, n: 0 }),
            fence,
            text: frame_text(&seq, &fence.to_string(), "1.5", "{}", "[]").into(),
        })
    }

    #[test]
    fn seq_parses_stream_ids_only() {
        assert_eq!(Seq::parse("17-3"), Some(Seq { ms: 17, n: 3 }));
        for bad in [
            "",
            "-",
            "17",
            "17-",
            "-3",
            "a-1",
            "1-2-3",
            "+1-2",
            "99999999999999999999999-0",
        ] {
            assert_eq!(Seq::parse(bad), None, "{bad}");
        }
        assert!(Seq { ms: 2, n: 0 } > Seq { ms: 1, n: 9 });
    }

    #[test]
    fn frame_text_is_json() {
        let t = frame_text("1-0", "3", "1.25", r#"{"a":1}"#, "[]");
        let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
        assert_eq!(v["seq"], "1-0");
        assert_eq!(v["fence"], 3);
        assert_eq!(v["snapshot"]["a"], 1);
    }

    #[test]
    fn repeats_and_old_fences_are_refused_backfill_is_exact() {
        let t0 = Instant::now();
        let mut r = Ring::new(3);
        assert_eq!(r.offer(frame(10, 2), t0), Offer::New);
        assert_eq!(r.offer(frame(10, 2), t0), Offer::Repeat);
        assert_eq!(r.offer(frame(9, 2), t0), Offer::Repeat);
        assert_eq!(r.offer(frame(11, 1), t0), Offer::OldFence);
        assert_eq!(r.offer(frame(11, 3), t0), Offer::New);
        assert_eq!(r.offer(frame(12, 3), t0), Offer::New);
        assert_eq!(r.offer(frame(13, 3), t0), Offer::New);
        assert_eq!(r.len(), 3, "bounded");
        let after = r.after(Seq { ms: 11, n: 0 }).unwrap_or_default();
        assert_eq!(after.iter().map(|f| f.seq.ms).collect::<Vec<_>>(), [12, 13]);
        assert!(r.after(Seq { ms: 13, n: 0 }).is_some_and(|v| v.is_empty()));
        assert!(
            r.after(Seq { ms: 10, n: 0 }).is_none(),
            "dropped: full state"
        );
        assert!(
            r.after(Seq { ms: 99, n: 0 }).is_none(),
            "unknown: full state"
        );
        assert_eq!(r.newest(2).len(), 2);
    }

    #[test]
    fn bounded_in_bytes_whatever_the_sets_weigh() {
        let t0 = Instant::now();
        let mut r = Ring::new(1000);
        let big = "x".repeat(4 << 20);
        for ms in 1..=40 {
            let seq = format!("{ms}-0");
            let f = Arc::new(Frame {
                seq: Seq { ms, n: 0 },
                fence: 1,
                text: frame_text(&seq, "1", "1", &format!("\"{big}\""), "[]").into(),
            });
            assert_eq!(r.offer(f, t0), Offer::New);
        }
        assert!(r.bytes() <= MAX_BYTES, "{} bytes kept", r.bytes());
        assert!(r.len() < 40 && r.len() >= 10, "{} sets kept", r.len());
        assert_eq!(r.last(), Some(Seq { ms: 40, n: 0 }), "the newest kept");
    }

    #[test]
    fn an_older_fence_is_taken_once_the_newest_went_silent() {
        let t0 = Instant::now();
        let mut r = Ring::new(10);
        assert_eq!(r.offer(frame(10, 7), t0), Offer::New);
        assert_eq!(r.offer(frame(11, 1), t0 + FENCE_GRACE / 2), Offer::OldFence);
        // Redis restarted empty: fences start over, ids may even go back.
        assert_eq!(r.offer(frame(5, 1), t0 + FENCE_GRACE), Offer::Restart);
        assert_eq!(r.len(), 1);
        assert_eq!(r.offer(frame(6, 1), t0 + FENCE_GRACE), Offer::New);
    }

    #[test]
    fn a_set_from_the_future_does_not_shadow_later_ones_for_good() {
        let t0 = Instant::now();
        let mut r = Ring::new(10);
        assert_eq!(r.offer(frame(10, 3), t0), Offer::New);
        // Junk (or a stream whose ids went back): same fence, far ahead.
        assert_eq!(r.offer(frame(u64::MAX / 2, 3), t0), Offer::New);
        assert_eq!(r.offer(frame(11, 3), t0 + FENCE_GRACE / 2), Offer::Repeat);
        // A true repeat stays one, however long the silence.
        assert_eq!(r.offer(frame(10, 3), t0 + FENCE_GRACE * 2), Offer::Repeat);
        assert_eq!(r.offer(frame(12, 3), t0 + FENCE_GRACE), Offer::Restart);
        assert_eq!(r.len(), 1);
        assert_eq!(r.offer(frame(13, 3), t0 + FENCE_GRACE), Offer::New);
        assert_eq!(r.offer(frame(13, 3), t0 + FENCE_GRACE * 3), Offer::Repeat);
    }
}
