//! MQTT payload decoding on arbitrary bytes from a broker: samples and typed
//! errors, never a panic.
//!
//! Input: a byte choosing the format and the timestamp unit, a byte choosing
//! the field paths, then the payload.
//!
//! Invariants checked: every sample's value is finite; each message (number or
//! object) or array element yields exactly one sample or one dropping error
//! (a bad quality is counted and its sample kept); without a timestamp field
//! every sample has the receive time; a numeric timestamp comes out as the
//! number the document holds, in nanoseconds (to the precision of an `f64`,
//! so the exact-digit reader must find the same value serde_json parsed); an
//! RFC 3339 string that parses, re-parses to the same instant with `Z` spelled
//! `z` and `T` spelled as a space.
#![no_main]

use ferrule_agent::inputs::mqtt::payload::{
    decode, parse_rfc3339, FieldPath, Format, JsonFields, PayloadError, TimeUnit,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const NOW: i64 = 7;

/// The value at a dotted path, as the decoder documents it (`null` is none).
fn lookup<'v>(doc: &'v Value, path: &str) -> Option<&'v Value> {
    let mut v = doc;
    for s in path.split('.') {
        v = match v {
            Value::Object(m) => m.get(s)?,
            Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!v.is_null()).then_some(v)
}

fn path(p: &str) -> FieldPath {
    FieldPath::parse(p).expect("a valid path")
}

/// Whether `ns` is `x` units within an `f64`'s precision (and a nanosecond).
fn close(ns: i64, x: f64, unit: TimeUnit) -> bool {
    let scale = match unit {
        TimeUnit::S => 1e9,
        TimeUnit::Ms => 1e6,
        TimeUnit::Us => 1e3,
        TimeUnit::Ns | TimeUnit::Rfc3339 => 1.0,
    };
    let want = x * scale;
    (ns as f64 - want).abs() <= want.abs() * 1e-12 + 1.0
}

fn check_timestamp(ns: i64, raw: Option<&Value>, unit: TimeUnit) {
    match (raw, unit) {
        (None, _) => assert_eq!(ns, NOW),
        (Some(_), TimeUnit::Rfc3339) => {}
        (Some(Value::Number(n)), _) => {
            let x = n.as_f64().expect("a JSON number is an f64");
            assert!(close(ns, x, unit), "{ns} for {n} ({unit:?})");
        }
        (Some(Value::String(s)), _) => {
            if let Ok(x) = s.trim().parse::<f64>() {
                assert!(close(ns, x, unit), "{ns} for {s:?} ({unit:?})");
            }
        }
        (Some(other), _) => panic!("timestamp {ns} from {other}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, paths, payload @ ..] = data else {
        return;
    };
    let unit = [
        TimeUnit::S,
        TimeUnit::Ms,
        TimeUnit::Us,
        TimeUnit::Ns,
        TimeUnit::Rfc3339,
    ][usize::from(mode / 3 % 5)];
    let value = ["value", "data.temp", "v.1"][usize::from(paths % 3)];
    let ts = [None, Some("ts"), Some("data.time")][usize::from(paths / 3 % 3)];
    let quality = [None, Some("q")][usize::from(paths / 9 % 2)];
    let fields = JsonFields {
        value: path(value),
        timestamp: ts.map(|t| (path(t), unit)),
        quality: quality.map(path),
    };
    let format = match mode % 3 {
        0 => Format::Number,
        1 => Format::Json(fields),
        _ => Format::JsonArray(fields),
    };
    let d = decode(&format, payload, NOW);
    for s in &d.samples {
        assert!(s.value.is_finite());
    }
    for e in &d.errors {
        assert!(!e.reason().is_empty());
    }
    let dropped = d
        .errors
        .iter()
        .filter(|e| !matches!(e, PayloadError::BadQuality(_)))
        .count();
    assert!(d.errors.len() - dropped <= d.samples.len());
    let doc = serde_json::from_slice::<Value>(payload).ok();
    // The objects the samples come from, when each can be told.
    let objects: Vec<&Value> = match (&format, &doc) {
        (Format::Number, _) => {
            assert_eq!(d.samples.len() + dropped, 1);
            if let Some(s) = d.samples.first() {
                assert_eq!(s.timestamp_ns, NOW);
            }
            Vec::new()
        }
        (Format::Json(_), Some(o @ Value::Object(_))) => {
            assert_eq!(d.samples.len() + dropped, 1);
            d.samples.iter().map(|_| o).collect()
        }
        (Format::JsonArray(_), Some(Value::Array(items))) => {
            assert_eq!(d.samples.len() + dropped, items.len());
            if dropped == 0 {
                items.iter().collect()
            } else {
                Vec::new()
            }
        }
        _ => {
            assert!(d.samples.is_empty() && d.errors.len() == 1);
            Vec::new()
        }
    };
    for (s, o) in d.samples.iter().zip(objects) {
        assert!(lookup(o, value).is_some());
        match ts {
            None => assert_eq!(s.timestamp_ns, NOW),
            Some(t) => check_timestamp(s.timestamp_ns, lookup(o, t), unit),
        }
    }

    if let Ok(text) = std::str::from_utf8(payload) {
        if let Ok(ns) = parse_rfc3339(text) {
            let alt = text.replacen('T', " ", 1).replacen('Z', "z", 1);
            assert_eq!(parse_rfc3339(&alt), Ok(ns), "{text:?} vs {alt:?}");
        }
    }
});
