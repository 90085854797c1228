//! Payload formats: how the bytes of one MQTT message become samples.
//!
//! - `number`: the payload is a number as text (`21.5`, ` -3e2 `); surrounding
//!   whitespace is ignored. Timestamp: the receive time.
//! - `json`: one object; the value at `value_field`, the optional source
//!   timestamp at `timestamp_field` (in `timestamp_unit`) and the optional
//!   quality at `quality_field`.
//! - `json_array`: an array of such objects, one sample each. A bad element is
//!   counted and skipped; the good ones are kept.
//!
//! Field paths are dotted: `data.temp` is `{"data": {"temp": 21.5}}`, and a
//! number indexes an array (`readings.0`). A value is a JSON number, a boolean
//! (`true` is 1, `false` is 0) or a string holding a number (`"21.5"`); NaN and
//! infinities are not numbers here. A missing or `null` timestamp means the
//! receive time; a present one that does not parse drops the sample
//! (`bad_timestamp`), because a guess would put it at the wrong time. Quality
//! is `"good"`, `"uncertain"` or `"bad"` (any case) or 0, 1, 2; missing means
//! good, anything else is counted (`bad_quality`) and kept as uncertain.
//!
//! Pure: the receive time is passed in. Every error carries the reason label
//! it is counted under ([`PayloadError::reason`]).

use ferrule_wire::Quality;
use serde::Deserialize;
use serde_json::Value;

/// How a source timestamp is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Seconds since the Unix epoch (a fraction is allowed: `1700000000.25`).
    S,
    /// Milliseconds since the Unix epoch.
    Ms,
    /// Microseconds since the Unix epoch.
    Us,
    /// Nanoseconds since the Unix epoch.
    Ns,
    /// An RFC 3339 string: `2024-05-01T12:00:00.5Z`, `2024-05-01T14:00:00+02:00`.
    Rfc3339,
}

impl TimeUnit {
    fn ns_per_unit(self) -> i64 {
        match self {
            TimeUnit::S => 1_000_000_000,
            TimeUnit::Ms => 1_000_000,
            TimeUnit::Us => 1_000,
            TimeUnit::Ns | TimeUnit::Rfc3339 => 1,
        }
    }
}

/// A dotted path to a field inside a JSON document (`data.temp`, `values.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses a dotted path; every segment must be non-empty.
    pub fn parse(text: &str) -> Result<Self, String> {
        let segments: Vec<String> = text.split('.').map(str::to_string).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!(
                "{text:?} is not a field path (dotted names, none empty: `value`, `data.temp`)"
            ));
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `doc`, if there is one (`null` counts as none).
    fn get<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        let mut v = doc;
        for s in &self.segments {
            v = match v {
                Value::Object(m) => m.get(s)?,
                Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        (!v.is_null()).then_some(v)
    }
}

/// Where the fields of a JSON sample are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonFields {
    /// The value.
    pub value: FieldPath,
    /// The source timestamp and how it is written; none for the receive time.
    pub timestamp: Option<(FieldPath, TimeUnit)>,
    /// The quality flag; none for always good.
    pub quality: Option<FieldPath>,
}

/// A payload format with its field mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// A number as text.
    Number,
    /// One JSON object.
    Json(JsonFields),
    /// A JSON array of objects.
    JsonArray(JsonFields),
}

/// One decoded sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Source timestamp, or the receive time; ns since the Unix epoch.
    pub timestamp_ns: i64,
    /// The value.
    pub value: f64,
    /// The quality flag.
    pub quality: Quality,
}

/// What was wrong with (part of) a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The value is not a finite number.
    #[error("not a number: {0}")]
    NotANumber(String),
    /// The payload is not the JSON the format needs.
    #[error("bad JSON: {0}")]
    BadJson(String),
    /// A configured field is absent.
    #[error("missing field {0}")]
    MissingField(String),
    /// The source timestamp does not parse or is out of range.
    #[error("bad timestamp: {0}")]
    BadTimestamp(String),
    /// The quality field holds something unknown (the sample is kept as uncertain).
    #[error("bad quality: {0}")]
    BadQuality(String),
}

impl PayloadError {
    /// The `reason` label this error is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            PayloadError::NotANumber(_) => "not_a_number",
            PayloadError::BadJson(_) => "bad_json",
            PayloadError::MissingField(_) => "missing_field",
            PayloadError::BadTimestamp(_) => "bad_timestamp",
            PayloadError::BadQuality(_) => "bad_quality",
        }
    }
}

/// The samples of one payload and what was wrong with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// Good samples, in payload order.
    pub samples: Vec<Sample>,
    /// One entry per problem; an empty `samples` with no errors is an empty array.
    pub errors: Vec<PayloadError>,
}

/// Longest piece of a payload quoted in an error (logs stay readable).
const EXCERPT_CHARS: usize = 60;

fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(EXCERPT_CHARS).collect();
    if s.chars().nth(EXCERPT_CHARS).is_some() {
        out.push_str("...");
    }
    format!("{out:?}")
}

fn excerpt_bytes(b: &[u8]) -> String {
    excerpt(&String::from_utf8_lossy(
        &b[..b.len().min(EXCERPT_CHARS * 4)],
    ))
}

/// Decodes `payload` in `format`; samples without a source timestamp get `now_ns`.
///
/// ```
/// use ferrule_agent::inputs::mqtt::payload::{decode, Format};
/// let d = decode(&Format::Number, b" 21.5\n", 7);
/// assert_eq!((d.samples[0].value, d.samples[0].timestamp_ns), (21.5, 7));
/// assert_eq!(decode(&Format::Number, b"on", 7).errors[0].reason(), "not_a_number");
/// ```
pub fn decode(format: &Format, payload: &[u8], now_ns: i64) -> Decoded {
    let mut out = Decoded::default();
    match format {
        Format::Number => match std::str::from_utf8(payload)
            .ok()
            .and_then(|s| parse_number_text(s.trim()))
        {
            Some(value) => out.samples.push(Sample {
                timestamp_ns: now_ns,
                value,
                quality: Quality::Good,
            }),
            None => out
                .errors
                .push(PayloadError::NotANumber(excerpt_bytes(payload))),
        },
        Format::Json(fields) => match serde_json::from_slice::<Value>(payload) {
            Ok(doc @ Value::Object(_)) => {
                let text = Source {
                    doc: std::str::from_utf8(payload).ok(),
                    element: None,
                };
                json_sample(fields, &doc, text, now_ns, "", &mut out)
            }
            Ok(other) => out.errors.push(PayloadError::BadJson(format!(
                "expected an object, got {}",
                excerpt(&other.to_string())
            ))),
            Err(e) => out.errors.push(PayloadError::BadJson(format!(
                "{e} in {}",
                excerpt_bytes(payload)
            ))),
        },
        Format::JsonArray(fields) => match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("[{i}] ");
                    if item.is_object() {
                        let text = Source {
                            doc: std::str::from_utf8(payload).ok(),
                            element: Some(i),
                        };
                        json_sample(fields, item, text, now_ns, &at, &mut out);
                    } else {
                        out.errors.push(PayloadError::BadJson(format!(
                            "{at}expected an object, got {}",
                            excerpt(&item.to_string())
                        )));
                    }
                }
            }
            Ok(other) => out.errors.push(PayloadError::BadJson(format!(
                "expected an array, got {}",
                excerpt(&other.to_string())
            ))),
            Err(e) => out.errors.push(PayloadError::BadJson(format!(
                "{e} in {}",
                excerpt_bytes(payload)
            ))),
        },
    }
    out
}

/// A finite number written as text; `None` for anything else (NaN, `inf`, words).
fn parse_number_text(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn json_value(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64().filter(|v| v.is_finite()),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => parse_number_text(s.trim()),
        _ => None,
    }
}

/// Where a sample's object is in the payload's text, to read a timestamp's
/// digits exactly ([`rawjson`](super::rawjson)).
#[derive(Clone, Copy)]
struct Source<'a> {
    /// The whole payload (none if not UTF-8, which serde_json would refuse).
    doc: Option<&'a str>,
    /// The element of a top-level array the sample is.
    element: Option<usize>,
}

fn json_sample(
    fields: &JsonFields,
    doc: &Value,
    text: Source<'_>,
    now_ns: i64,
    at: &str,
    out: &mut Decoded,
) {
    let Some(raw) = fields.value.get(doc) else {
        out.errors.push(PayloadError::MissingField(format!(
            "{at}{}",
            fields.value.as_str()
        )));
        return;
    };
    let Some(value) = json_value(raw) else {
        out.errors.push(PayloadError::NotANumber(format!(
            "{at}{} is {}",
            fields.value.as_str(),
            excerpt(&raw.to_string())
        )));
        return;
    };
    let timestamp_ns = match &fields.timestamp {
        None => now_ns,
        Some((path, unit)) => match path.get(doc) {
            None => now_ns,
            Some(t) => match json_timestamp(t, *unit, || {
                super::rawjson::raw_at(text.doc?, text.element, &path.segments)
            }) {
                Ok(ns) => ns,
                Err(e) => {
                    out.errors.push(PayloadError::BadTimestamp(format!(
                        "{at}{}: {e}",
                        path.as_str()
                    )));
                    return;
                }
            },
        },
    };
    let quality = match fields.quality.as_ref().and_then(|p| p.get(doc)) {
        None => Quality::Good,
        Some(q) => match json_quality(q) {
            Some(q) => q,
            None => {
                out.errors.push(PayloadError::BadQuality(format!(
                    "{at}{} (kept as uncertain)",
                    excerpt(&q.to_string())
                )));
                Quality::Uncertain
            }
        },
    };
    out.samples.push(Sample {
        timestamp_ns,
        value,
        quality,
    });
}

fn json_quality(v: &Value) -> Option<Quality> {
    match v {
        Value::String(s) if s.eq_ignore_ascii_case("good") => Some(Quality::Good),
        Value::String(s) if s.eq_ignore_ascii_case("uncertain") => Some(Quality::Uncertain),
        Value::String(s) if s.eq_ignore_ascii_case("bad") => Some(Quality::Bad),
        Value::Number(n) => match n.as_u64()? {
            0 => Some(Quality::Good),
            1 => Some(Quality::Uncertain),
            2 => Some(Quality::Bad),
            _ => None,
        },
        _ => None,
    }
}

/// A JSON timestamp in `unit` as ns since the Unix epoch. A number that is not
/// an `i64` is read from its text in the payload (`raw`), digit by digit:
/// serde_json holds it as an `f64`, which keeps only about 16 significant
/// digits (`1700000000.123456789` s would come out as `...123456700` ns).
fn json_timestamp<'a>(
    v: &Value,
    unit: TimeUnit,
    raw: impl FnOnce() -> Option<&'a str>,
) -> Result<i64, String> {
    match (unit, v) {
        (TimeUnit::Rfc3339, Value::String(s)) => parse_rfc3339(s),
        (TimeUnit::Rfc3339, other) => Err(format!(
            "{} is not an RFC 3339 string",
            excerpt(&other.to_string())
        )),
        (_, Value::Number(n)) => match n.as_i64() {
            Some(i) => scale_int(i, unit),
            // The number as written. Should the text not be found (it always
            // is for a document serde_json parsed), the f64's shortest form is
            // the best there is.
            None => match raw() {
                Some(text) => decimal_to_ns(text, unit),
                None => decimal_to_ns(&n.to_string(), unit),
            },
        },
        (_, Value::String(s)) => decimal_to_ns(s.trim(), unit),
        (_, other) => Err(format!("{} is not a number", excerpt(&other.to_string()))),
    }
}

fn scale_int(i: i64, unit: TimeUnit) -> Result<i64, String> {
    i.checked_mul(unit.ns_per_unit())
        .ok_or_else(|| format!("{i} is out of range (years 1677 to 2262)"))
}

/// A decimal number (`-12`, `1700000000.25`, `1.7e9`) of `unit`s as exact
/// nanoseconds, rounded half away from zero below a nanosecond. Integer and
/// fraction digits go into an `i128` mantissa with a power of ten (no `f64`);
/// past 30 significant digits (more than any timestamp has) further digits
/// are dropped. Out of the `i64` range (years 1677 to 2262) is an error.
fn decimal_to_ns(s: &str, unit: TimeUnit) -> Result<i64, String> {
    let not_number = || format!("{} is not a number", excerpt(s));
    let out_of_range = || format!("{} is out of range (years 1677 to 2262)", excerpt(s));
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (
            &rest[..i],
            rest[i + 1..].parse::<i32>().map_err(|_| not_number())?,
        ),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(not_number());
    }
    let unit_exp: i64 = match unit {
        TimeUnit::S => 9,
        TimeUnit::Ms => 6,
        TimeUnit::Us => 3,
        TimeUnit::Ns | TimeUnit::Rfc3339 => 0,
    };
    // value = digits * 10^scale; 30 significant digits are more than any
    // timestamp has, and keep the mantissa well inside an i128.
    let mut scale = i64::from(exp) + unit_exp - frac.len() as i64;
    let mut m: i128 = 0;
    let mut significant = 0;
    for d in int.bytes().chain(frac.bytes()) {
        if significant >= 30 {
            scale += 1;
            continue;
        }
        m = m * 10 + i128::from(d - b'0');
        if m != 0 {
            significant += 1;
        }
    }
    let ns = if m == 0 {
        0
    } else if scale >= 0 {
        if scale > 20 {
            return Err(out_of_range());
        }
        m.checked_mul(10i128.pow(scale as u32))
            .ok_or_else(out_of_range)?
    } else if -scale > 38 {
        0
    } else {
        let p = 10i128.pow((-scale) as u32);
        let (q, r) = (m / p, m % p);
        if r * 2 >= p {
            q + 1
        } else {
            q
        }
    };
    let ns = if neg { -ns } else { ns };
    i64::try_from(ns).map_err(|_| out_of_range())
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses an RFC 3339 date-time (`2024-05-01T12:00:00.123456789Z`, `t`/space
/// for `T`, `z` for `Z`, or a `+hh:mm`/`-hh:mm` offset) to ns since the Unix
/// epoch. Digits past nanoseconds are ignored; leap seconds (`:60`) are refused.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = || format!("{} is not an RFC 3339 date-time", excerpt(s));
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = b.get(from..from + len).ok_or_else(bad)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
    };
    let lit = |at: usize, ok: &[u8]| -> Result<(), String> {
        match b.get(at) {
            Some(c) if ok.contains(c) => Ok(()),
            _ => Err(bad()),
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    lit(4, b"-")?;
    lit(7, b"-")?;
    lit(10, b"Tt ")?;
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    lit(13, b":")?;
    lit(16, b":")?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(format!("{} is not a valid date and time", excerpt(s)));
    }
    let mut at = 19;
    let mut frac_ns = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 9 {
                frac_ns = frac_ns * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(bad());
        }
        for _ in (at - start)..9 {
            frac_ns *= 10;
        }
    }
    let offset_secs = match b.get(at) {
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            lit(at + 3, b":")?;
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            at += 6;
            let o = oh * 3600 + om * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return Err(bad()),
    };
    if at != b.len() {
        return Err(bad());
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    secs.checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(frac_ns))
        .ok_or_else(|| format!("{} is out of range (years 1677 to 2262)", excerpt(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000;

    fn fields(value: &str, ts: Option<(&str, TimeUnit)>, quality: Option<&str>) -> JsonFields {
        let p = |s: &str| FieldPath::parse(s).unwrap_or_else(|e| panic!("{e}"));
        JsonFields {
            value: p(value),
            timestamp: ts.map(|(f, u)| (p(f), u)),
            quality: quality.map(p),
        }
    }

    fn one(format: &Format, payload: &str) -> Sample {
        let d = decode(format, payload.as_bytes(), NOW);
        assert_eq!(d.errors, vec![], "{payload}");
        assert_eq!(d.samples.len(), 1, "{payload}");
        d.samples[0]
    }

    fn reasons(format: &Format, payload: &[u8]) -> Vec<&'static str> {
        let d = decode(format, payload, NOW);
        d.errors.iter().map(PayloadError::reason).collect()
    }

    #[test]
    fn plain_numbers() {
        let f = Format::Number;
        assert_eq!(one(&f, "21.5").value, 21.5);
        assert_eq!(one(&f, " -3e2\r\n").value, -300.0);
        assert_eq!(one(&f, "+7").value, 7.0);
        assert_eq!(one(&f, "42").timestamp_ns, NOW);
        assert_eq!(one(&f, "42").quality, Quality::Good);
        for bad in [
            &b""[..],
            b"abc",
            b"1,5",
            b"NaN",
            b"inf",
            b"-infinity",
            b"\xff\xfe",
            b"1 2",
            b"{\"v\":1}",
        ] {
            assert_eq!(reasons(&f, bad), vec!["not_a_number"], "{bad:?}");
        }
    }

    #[test]
    fn json_objects_with_each_timestamp_unit() {
        let f = |u| Format::Json(fields("v", Some(("ts", u)), None));
        let s = one(&f(TimeUnit::S), r#"{"v": 1.5, "ts": 1700000000}"#);
        assert_eq!((s.value, s.timestamp_ns), (1.5, 1_700_000_000_000_000_000));
        assert_eq!(
            one(&f(TimeUnit::S), r#"{"v": 1, "ts": 1700000000.25}"#).timestamp_ns,
            1_700_000_000_250_000_000
        );
        assert_eq!(
            one(&f(TimeUnit::Ms), r#"{"v": 1, "ts": 1700000000123}"#).timestamp_ns,
            1_700_000_000_123_000_000
        );
        assert_eq!(
            one(&f(TimeUnit::Us), r#"{"v": 1, "ts": "1700000000123456"}"#).timestamp_ns,
            1_700_000_000_123_456_000
        );
        assert_eq!(
            one(&f(TimeUnit::Ns), r#"{"v": 1, "ts": 1700000000123456789}"#).timestamp_ns,
            1_700_000_000_123_456_789
        );
        assert_eq!(
            one(
                &f(TimeUnit::Rfc3339),
                r#"{"v": 1, "ts": "2023-11-14T22:13:20.5Z"}"#
            )
            .timestamp_ns,
            1_700_000_000_500_000_000
        );
        // Missing or null timestamp: the receive time.
        assert_eq!(one(&f(TimeUnit::Ms), r#"{"v": 1}"#).timestamp_ns, NOW);
        assert_eq!(
            one(&f(TimeUnit::Ms), r#"{"v": 1, "ts": null}"#).timestamp_ns,
            NOW
        );
        for bad in [
            r#"{"v": 1, "ts": "yesterday"}"#,
            r#"{"v": 1, "ts": true}"#,
            r#"{"v": 1, "ts": 1e300}"#,
            r#"{"v": 1, "ts": 9223372036854775807}"#,
        ] {
            assert_eq!(
                reasons(&f(TimeUnit::Ms), bad.as_bytes()),
                vec!["bad_timestamp"],
                "{bad}"
            );
        }
        assert_eq!(
            reasons(&f(TimeUnit::Rfc3339), br#"{"v": 1, "ts": 1700000000}"#),
            vec!["bad_timestamp"]
        );
    }

    #[test]
    fn json_values_paths_and_quality() {
        let f = Format::Json(fields("data.temp", None, Some("q")));
        assert_eq!(one(&f, r#"{"data": {"temp": -4}}"#).value, -4.0);
        assert_eq!(one(&f, r#"{"data": {"temp": "12.25"}}"#).value, 12.25);
        assert_eq!(one(&f, r#"{"data": {"temp": true}}"#).value, 1.0);
        assert_eq!(
            one(&f, r#"{"data": {"temp": 1}, "q": "BAD"}"#).quality,
            Quality::Bad
        );
        assert_eq!(
            one(&f, r#"{"data": {"temp": 1}, "q": 1}"#).quality,
            Quality::Uncertain
        );
        let d = decode(&f, br#"{"data": {"temp": 1}, "q": "meh"}"#, NOW);
        assert_eq!(d.samples[0].quality, Quality::Uncertain);
        assert_eq!(d.errors[0].reason(), "bad_quality");
        let g = Format::Json(fields("vals.1", None, None));
        assert_eq!(one(&g, r#"{"vals": [5, 6]}"#).value, 6.0);
        assert_eq!(reasons(&f, br#"{"data": {}}"#), vec!["missing_field"]);
        assert_eq!(
            reasons(&f, br#"{"data": {"temp": null}}"#),
            vec!["missing_field"]
        );
        assert_eq!(reasons(&f, br#"{"data": 5}"#), vec!["missing_field"]);
        assert_eq!(
            reasons(&f, br#"{"data": {"temp": "hot"}}"#),
            vec!["not_a_number"]
        );
        assert_eq!(
            reasons(&f, br#"{"data": {"temp": [1]}}"#),
            vec!["not_a_number"]
        );
        assert_eq!(reasons(&f, b"{\"data\": "), vec!["bad_json"]);
        assert_eq!(reasons(&f, b"[1]"), vec!["bad_json"]);
        assert_eq!(reasons(&f, b"21.5"), vec!["bad_json"]);
        assert_eq!(reasons(&f, b""), vec!["bad_json"]);
        assert_eq!(reasons(&f, b"\xff"), vec!["bad_json"]);
    }

    #[test]
    fn json_arrays_keep_good_elements() {
        let f = Format::JsonArray(fields("value", Some(("t", TimeUnit::Ms)), None));
        let d = decode(
            &f,
            br#"[{"value": 1, "t": 5}, {"value": "x", "t": 6}, 7, {"t": 8}, {"value": 2}]"#,
            NOW,
        );
        let got: Vec<(i64, f64)> = d
            .samples
            .iter()
            .map(|s| (s.timestamp_ns, s.value))
            .collect();
        assert_eq!(got, vec![(5_000_000, 1.0), (NOW, 2.0)]);
        let r: Vec<_> = d.errors.iter().map(PayloadError::reason).collect();
        assert_eq!(r, vec!["not_a_number", "bad_json", "missing_field"]);
        assert!(d.errors[2].to_string().contains("[3]"), "{}", d.errors[2]);
        assert_eq!(decode(&f, b"[]", NOW), Decoded::default());
        assert_eq!(reasons(&f, br#"{"value": 1}"#), vec!["bad_json"]);
    }

    #[test]
    fn json_number_timestamps_keep_every_digit() {
        let f = |u| Format::Json(fields("v", Some(("ts", u)), None));
        let ts = |u, t: &str| {
            let d = decode(&f(u), format!(r#"{{"v": 1, "ts": {t}}}"#).as_bytes(), NOW);
            match (d.samples.first(), d.errors.first()) {
                (Some(s), None) => Ok(s.timestamp_ns),
                (_, Some(e)) => Err(e.reason()),
                (None, None) => Err("nothing"),
            }
        };
        // As f64s these come out as ...456700 and ...456800 (the issue's cases).
        assert_eq!(
            ts(TimeUnit::S, "1700000000.123456789"),
            Ok(1_700_000_000_123_456_789)
        );
        assert_eq!(
            ts(TimeUnit::Ns, "1700000000123456789.0"),
            Ok(1_700_000_000_123_456_789)
        );
        assert_eq!(
            ts(TimeUnit::Ms, "1700000000123.456789"),
            Ok(1_700_000_000_123_456_789)
        );
        assert_eq!(
            ts(TimeUnit::Us, "1700000000123456.789"),
            Ok(1_700_000_000_123_456_789)
        );
        // Exponent forms, as JSON allows them.
        assert_eq!(
            ts(TimeUnit::S, "1.700000000123456789e9"),
            Ok(1_700_000_000_123_456_789)
        );
        assert_eq!(
            ts(TimeUnit::Ms, "17000000001234567.89E-4"),
            Ok(1_700_000_000_123_456_789)
        );
        // Before 1970.
        assert_eq!(ts(TimeUnit::S, "-1.000000001"), Ok(-1_000_000_001));
        assert_eq!(ts(TimeUnit::S, "-0.5e-9"), Ok(-1));
        // Digits below a nanosecond round, half away from zero, however many.
        assert_eq!(
            ts(TimeUnit::S, "1700000000.1234567885000000000000000001"),
            Ok(1_700_000_000_123_456_789)
        );
        assert_eq!(ts(TimeUnit::Ns, &format!("12.{}", "4".repeat(200))), Ok(12));
        // Out of range: a bad timestamp, counted, never a panic or a wrap.
        for far in [
            "9223372036.854775808",
            "-9223372036.854775809",
            "18446744073709551615",
            "1e19",
            "1.5e300",
            "-1e308",
        ] {
            assert_eq!(ts(TimeUnit::S, far), Err("bad_timestamp"), "{far}");
        }
        assert_eq!(ts(TimeUnit::Ns, "9223372036854775807"), Ok(i64::MAX));
        assert_eq!(
            ts(TimeUnit::Ns, "9223372036854775808"),
            Err("bad_timestamp")
        );
        assert_eq!(ts(TimeUnit::Ns, "9223372036854775807.4"), Ok(i64::MAX));
        assert_eq!(
            ts(TimeUnit::Ns, "9223372036854775807.5"),
            Err("bad_timestamp")
        );
        // Arrays and nested paths read the element's own digits.
        let arr = Format::JsonArray(fields("v", Some(("m.ts", TimeUnit::S)), None));
        let d = decode(
            &arr,
            br#"[{"v": 1, "m": {"ts": 1.000000001}}, {"m": {"ts": 2.000000002}, "v": 2}]"#,
            NOW,
        );
        let got: Vec<i64> = d.samples.iter().map(|s| s.timestamp_ns).collect();
        assert_eq!(got, [1_000_000_001, 2_000_000_002]);
    }

    #[test]
    fn decimal_timestamps_are_exact() {
        let d = decimal_to_ns;
        assert_eq!(
            d("1700000000.25", TimeUnit::S),
            Ok(1_700_000_000_250_000_000)
        );
        assert_eq!(d("1.7e9", TimeUnit::S), Ok(1_700_000_000_000_000_000));
        assert_eq!(d("-1.5", TimeUnit::Ms), Ok(-1_500_000));
        assert_eq!(d("+.5", TimeUnit::S), Ok(500_000_000));
        assert_eq!(d("5.", TimeUnit::Us), Ok(5_000));
        assert_eq!(d("0.0000000004", TimeUnit::S), Ok(0));
        assert_eq!(d("0.0000000005", TimeUnit::S), Ok(1));
        assert_eq!(d("-0.0000000005", TimeUnit::S), Ok(-1));
        assert_eq!(d("12.7", TimeUnit::Ns), Ok(13));
        assert_eq!(d("1e-400", TimeUnit::S), Ok(0));
        assert_eq!(d("0e400", TimeUnit::S), Ok(0));
        assert_eq!(
            d(&format!("1.{}", "0".repeat(60)), TimeUnit::S),
            Ok(1_000_000_000)
        );
        for bad in ["", ".", "e5", "1e", "--1", "1.2.3", "0x10", "1 000", "NaN"] {
            assert!(d(bad, TimeUnit::S).is_err(), "{bad:?} accepted");
        }
        for far in ["1e300", "9300000000", "-9300000000"] {
            assert!(d(far, TimeUnit::S).is_err(), "{far:?} accepted");
        }
    }

    #[test]
    fn rfc3339_dates() {
        let p = |s: &str| parse_rfc3339(s);
        assert_eq!(p("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(p("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000_000_000));
        assert_eq!(
            p("2023-11-15T00:13:20+02:00"),
            Ok(1_700_000_000_000_000_000)
        );
        assert_eq!(
            p("2023-11-14t20:13:20.000000001-02:00"),
            Ok(1_700_000_000_000_000_001)
        );
        assert_eq!(
            p("2023-11-14 22:13:20.1234567891z"),
            Ok(1_700_000_000_123_456_789)
        );
        assert_eq!(p("1969-12-31T23:59:59.5Z"), Ok(-500_000_000));
        assert_eq!(p("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000_000_000));
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20.Z",
            "2023-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2016-12-31T23:59:60Z",
            "2023-11-14T22:13:20+0200",
            "2023-11-14T22:13:20Zjunk",
            "2023/11/14T22:13:20Z",
            "+2023-11-14T22:13:20Z",
            "2300-01-01T00:00:00Z",
            "2023-11-14T22:13:2\u{e9}Z",
        ] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn field_paths_are_checked() {
        assert!(FieldPath::parse("a.b.0").is_ok());
        assert!(FieldPath::parse("").is_err());
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse(".a").is_err());
    }
}
