//! The plain sentence of a signal, for a person under pressure: "audit-logger
//! is 2 min 10 s behind, catching up, about 40 s to go."

use crate::engine::{Signal, Trend};

/// A duration as people say it: `0.4 s`, `12 s`, `2 min 10 s`, `1 h 5 min`,
/// `3 d 4 h`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "an unknown time".into();
    }
    if secs < 10.0 {
        let tenths = (secs * 10.0).round() / 10.0;
        if tenths == tenths.trunc() {
            return format!("{tenths:.0} s");
        }
        return format!("{tenths:.1} s");
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => {
            let (m, r) = (s / 60, s % 60);
            if r == 0 {
                format!("{m} min")
            } else {
                format!("{m} min {r} s")
            }
        }
        3600..=172_799 => {
            let (h, m) = (s / 3600, s % 3600 / 60);
            if m == 0 {
                format!("{h} h")
            } else {
                format!("{h} h {m} min")
            }
        }
        _ => {
            let (d, h) = (s / 86_400, s % 86_400 / 3600);
            if h == 0 {
                format!("{d} d")
            } else {
                format!("{d} d {h} h")
            }
        }
    }
}

/// A count of items: `1 item`, `12 500 items`.
pub fn items(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    if n == 1 {
        format!("{out} item")
    } else {
        format!("{out} items")
    }
}

/// The sentence for `s`, given the stage's rates (produce, consume) if known
/// and how long its position has not moved.
pub fn sentence(s: &Signal, rates: Option<(f64, f64)>, stalled_for: f64) -> String {
    let name = &s.stage;
    let behind = match s.delay_s {
        Some(d) => format!("{} behind", duration(d)),
        None => format!("{} waiting", items(s.backlog)),
    };
    match s.trend {
        Trend::Idle => format!("{name} is idle: nothing arrives, nothing waits."),
        Trend::Stalled => format!(
            "{name} has stalled: {}, nothing consumed for {}.",
            behind,
            duration(stalled_for)
        ),
        Trend::FallingBehind => {
            let more = rates
                .map(|(p, c)| format!(" ({:.0}/s more in than out)", p - c))
                .unwrap_or_default();
            format!("{name} is {behind} and falling further behind{more}.")
        }
        Trend::CatchingUp => match s.eta_s {
            Some(eta) if s.backlog > 0 => {
                format!(
                    "{name} is {behind}, catching up, about {} to go.",
                    duration(eta)
                )
            }
            _ if s.backlog == 0 => format!("{name} has caught up."),
            _ => format!("{name} is {behind}, catching up."),
        },
        Trend::Stable => {
            if s.backlog == 0 {
                format!("{name} is keeping up.")
            } else {
                format!("{name} is {behind}, holding steady.")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(0.0), "0 s");
        assert_eq!(duration(0.44), "0.4 s");
        assert_eq!(duration(12.0), "12 s");
        assert_eq!(duration(130.0), "2 min 10 s");
        assert_eq!(duration(120.0), "2 min");
        assert_eq!(duration(3900.0), "1 h 5 min");
        assert_eq!(duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3 d 4 h");
        assert_eq!(duration(f64::NAN), "an unknown time");
        assert_eq!(items(1), "1 item");
        assert_eq!(items(12_500), "12 500 items");
        assert_eq!(items(1_234_567), "1 234 567 items");
    }
}
