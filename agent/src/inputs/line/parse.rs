//! A pure parser for one line of Influx line protocol: no I/O, no clock.
//!
//! ```text
//! measurement[,tag_key=tag_value...] field_key=field_value[,field_key=field_value...] [timestamp]
//! ```
//!
//! Escapes, as InfluxDB documents them: in the measurement `\,` and `\ `; in tag
//! keys, tag values and field keys `\,` `\=` and `\ `; everywhere `\\` is one
//! backslash; any other backslash is literal. In string field values `\"` and `\\`.
//! Field values are floats (`1`, `-1.5e3`), integers (`1i`), unsigned integers
//! (`1u`), booleans (`t` `T` `true` `True` `TRUE` and the same for false) or
//! double-quoted strings. The timestamp is an integer in the configured
//! [`Precision`], converted to nanoseconds exactly (`i64` all the way, no float).
//!
//! Invariants: [`parse_line`] never panics on any input; a line either parses
//! completely or yields one [`LineError`] whose [`LineError::reason`] names the
//! part at fault. Empty lines and `#` comments are `Ok(None)`.

use serde::Deserialize;
use std::borrow::Cow;

/// The unit of the timestamps a sender writes (Telegraf's `precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Nanoseconds (the protocol's default).
    #[default]
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl Precision {
    /// Nanoseconds per unit.
    pub fn nanos(self) -> i64 {
        match self {
            Self::Ns => 1,
            Self::Us => 1_000,
            Self::Ms => 1_000_000,
            Self::S => 1_000_000_000,
        }
    }
}

/// One field value, as typed on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    /// A float (`1.5`, `2`, `-3e4`); never NaN or infinite.
    Float(f64),
    /// A signed integer (`12i`).
    Int(i64),
    /// An unsigned integer (`12u`).
    UInt(u64),
    /// A boolean (`t`, `false`, ...).
    Bool(bool),
    /// A string (`"on"`), unescaped. Not a number: inputs count and skip it.
    Str(Cow<'a, str>),
}

impl FieldValue<'_> {
    /// The value as a sample, or `None` for a string. Integers beyond 2^53 round
    /// to the nearest `f64` (samples are `f64` on the wire).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Float(v) => Some(*v),
            Self::Int(v) => Some(*v as f64),
            Self::UInt(v) => Some(*v as f64),
            Self::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Self::Str(_) => None,
        }
    }
}

/// One parsed line, borrowing from it where no unescaping was needed.
#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    /// The measurement, unescaped.
    pub measurement: Cow<'a, str>,
    /// Tags in line order, unescaped.
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Fields in line order (at least one), keys unescaped.
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    /// The timestamp in nanoseconds since the Unix epoch, if the line had one.
    pub timestamp_ns: Option<i64>,
}

impl Point<'_> {
    /// The value of tag `key`, if the line has it.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }
}

/// Why a line was rejected. Each kind is a distinct counter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// The structure is wrong: no measurement, a tag without `=` or value, no
    /// field set, invalid UTF-8.
    #[error("malformed line: {0}")]
    BadLine(String),
    /// A field has no `=`, an empty key, an unterminated string or a value that
    /// is none of the field types.
    #[error("malformed field: {0}")]
    BadField(String),
    /// The timestamp is not an integer, overflows `i64` nanoseconds, or is
    /// followed by more text.
    #[error("malformed timestamp: {0}")]
    BadTimestamp(String),
}

impl LineError {
    /// The counter reason: `bad_line`, `bad_field` or `bad_timestamp`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadLine(_) => "bad_line",
            Self::BadField(_) => "bad_field",
            Self::BadTimestamp(_) => "bad_timestamp",
        }
    }
}

/// Characters a backslash escapes in the measurement.
const MEASUREMENT_ESCAPES: &[u8] = b", \\";
/// Characters a backslash escapes in tag keys, tag values and field keys.
const KEY_ESCAPES: &[u8] = b",= \\";
/// Characters a backslash escapes in string field values.
const STRING_ESCAPES: &[u8] = b"\"\\";

/// Parses one line (without its newline; a trailing `\r` is ignored).
///
/// ```
/// use ferrule_agent::inputs::line::parse::{parse_line, FieldValue, Precision};
/// let p = parse_line(b"cpu,host=a usage=1.5,n=3i 1700000000", Precision::S)
///     .unwrap()
///     .unwrap();
/// assert_eq!(p.measurement, "cpu");
/// assert_eq!(p.tag("host"), Some("a"));
/// assert_eq!(p.fields[1].1, FieldValue::Int(3));
/// assert_eq!(p.timestamp_ns, Some(1_700_000_000_000_000_000));
/// ```
pub fn parse_line(line: &[u8], precision: Precision) -> Result<Option<Point<'_>>, LineError> {
    let line =
        std::str::from_utf8(line).map_err(|e| LineError::BadLine(format!("not UTF-8 ({e})")))?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let line = line.trim_start_matches([' ', '\t']);
    if line.trim_end_matches([' ', '\t']).is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let b = line.as_bytes();

    // Series key: up to the first unescaped space.
    let key_end = find_unescaped(b, 0, |c| c == b' ').unwrap_or(b.len());
    let meas_end = find_unescaped(&b[..key_end], 0, |c| c == b',').unwrap_or(key_end);
    if meas_end == 0 {
        return Err(LineError::BadLine("no measurement".into()));
    }
    let measurement = unescape(&line[..meas_end], MEASUREMENT_ESCAPES);
    let mut tags = Vec::new();
    let mut pos = meas_end;
    while pos < key_end {
        // b[pos] is the ',' before a tag.
        let start = pos + 1;
        let end = find_unescaped(&b[..key_end], start, |c| c == b',').unwrap_or(key_end);
        let tag = &line[start..end];
        let eq = find_unescaped(tag.as_bytes(), 0, |c| c == b'=')
            .ok_or_else(|| LineError::BadLine(format!("tag {:?} has no '='", clip(tag))))?;
        let (k, v) = (&tag[..eq], &tag[eq + 1..]);
        if k.is_empty() || v.is_empty() {
            return Err(LineError::BadLine(format!(
                "tag {:?} has an empty key or value",
                clip(tag)
            )));
        }
        tags.push((unescape(k, KEY_ESCAPES), unescape(v, KEY_ESCAPES)));
        pos = end;
    }

    // Field set: after the space(s) following the series key.
    let mut pos = skip_spaces(b, key_end);
    if pos >= b.len() {
        return Err(LineError::BadLine("no field set".into()));
    }
    let mut fields = Vec::new();
    loop {
        let (field, next) = parse_field(line, pos)?;
        fields.push(field);
        pos = next;
        match b.get(pos) {
            Some(b',') => pos += 1,
            _ => break,
        }
    }

    // Optional timestamp, then nothing but whitespace.
    let pos = skip_spaces(b, pos);
    let timestamp_ns = if pos >= b.len() {
        None
    } else {
        let end = b[pos..]
            .iter()
            .position(|c| *c == b' ' || *c == b'\t')
            .map_or(b.len(), |i| pos + i);
        if skip_spaces(b, end) < b.len() {
            return Err(LineError::BadTimestamp(format!(
                "text after the timestamp: {:?}",
                clip(&line[pos..])
            )));
        }
        Some(parse_timestamp(&line[pos..end], precision)?)
    };
    Ok(Some(Point {
        measurement,
        tags,
        fields,
        timestamp_ns,
    }))
}

/// Parses `key=value` starting at `pos`; returns it and the index after the value.
fn parse_field(
    line: &str,
    pos: usize,
) -> Result<((Cow<'_, str>, FieldValue<'_>), usize), LineError> {
    let b = line.as_bytes();
    let eq = find_unescaped(b, pos, |c| matches!(c, b'=' | b',' | b' '));
    let eq = match eq {
        Some(i) if b[i] == b'=' => i,
        _ => {
            let end = eq.unwrap_or(b.len());
            return Err(LineError::BadField(format!(
                "field {:?} has no '='",
                clip(&line[pos..end])
            )));
        }
    };
    if eq == pos {
        return Err(LineError::BadField("empty field key".into()));
    }
    let key = unescape(&line[pos..eq], KEY_ESCAPES);
    let vstart = eq + 1;
    if b.get(vstart) == Some(&b'"') {
        // A string: up to the next unescaped quote.
        let close = find_unescaped(b, vstart + 1, |c| c == b'"').ok_or_else(|| {
            LineError::BadField(format!("string field {:?} is not terminated", clip(&key)))
        })?;
        let value = unescape(&line[vstart + 1..close], STRING_ESCAPES);
        let next = close + 1;
        if !matches!(b.get(next), None | Some(b',' | b' ' | b'\t')) {
            return Err(LineError::BadField(format!(
                "text after the closing quote of string field {:?}",
                clip(&key)
            )));
        }
        return Ok(((key, FieldValue::Str(value)), next));
    }
    let vend = b[vstart..]
        .iter()
        .position(|c| matches!(c, b',' | b' ' | b'\t'))
        .map_or(b.len(), |i| vstart + i);
    let raw = &line[vstart..vend];
    let value = parse_value(raw).ok_or_else(|| {
        LineError::BadField(format!("field {:?} has value {:?}", clip(&key), clip(raw)))
    })?;
    Ok(((key, value), vend))
}

/// A non-string field value, or `None` if it is none of the types.
fn parse_value(raw: &str) -> Option<FieldValue<'static>> {
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Some(FieldValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Some(FieldValue::Bool(false)),
        _ => {}
    }
    if let Some(digits) = raw.strip_suffix('i') {
        return is_integer(digits, true)
            .then(|| digits.parse().ok().map(FieldValue::Int))
            .flatten();
    }
    if let Some(digits) = raw.strip_suffix('u') {
        return is_integer(digits, false)
            .then(|| digits.parse().ok().map(FieldValue::UInt))
            .flatten();
    }
    // Rust's float parser also takes "inf", "NaN" and "infinity", which line
    // protocol does not: allow only digits, a point, an exponent and signs.
    let digits = raw.bytes().filter(u8::is_ascii_digit).count();
    if digits == 0
        || !raw
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    let v: f64 = raw.parse().ok()?;
    v.is_finite().then_some(FieldValue::Float(v))
}

/// True if `s` is an optional `-` (when `signed`) followed by one or more digits.
fn is_integer(s: &str, signed: bool) -> bool {
    let digits = if signed {
        s.strip_prefix('-').unwrap_or(s)
    } else {
        s
    };
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())
}

fn parse_timestamp(raw: &str, precision: Precision) -> Result<i64, LineError> {
    if !is_integer(raw, true) {
        return Err(LineError::BadTimestamp(format!(
            "{:?} is not an integer",
            clip(raw)
        )));
    }
    raw.parse::<i64>()
        .ok()
        .and_then(|t| t.checked_mul(precision.nanos()))
        .ok_or_else(|| {
            LineError::BadTimestamp(format!(
                "{:?} does not fit in 64-bit nanoseconds",
                clip(raw)
            ))
        })
}

/// The index of the first byte at or after `from` matching `stop` that is not
/// escaped by a backslash.
fn find_unescaped(b: &[u8], from: usize, stop: impl Fn(u8) -> bool) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if stop(c) => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// At most the first 64 bytes of `s` (on a char boundary): error details quote
/// the offending text, and a 64 KiB line must not become a 64 KiB log line.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    i
}

/// Removes the backslash of each `\c` with `c` in `escapes`; other backslashes stay.
fn unescape<'a>(s: &'a str, escapes: &[u8]) -> Cow<'a, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.clone().next() {
            Some(n) if n.is_ascii() && escapes.contains(&(n as u8)) => {
                out.push(n);
                chars.next();
            }
            _ => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Point<'_> {
        parse_line(line.as_bytes(), Precision::Ns)
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
            .unwrap_or_else(|| panic!("{line:?}: skipped"))
    }

    fn err(line: &str) -> &'static str {
        match parse_line(line.as_bytes(), Precision::Ns) {
            Err(e) => e.reason(),
            Ok(p) => panic!("{line:?} parsed: {p:?}"),
        }
    }

    fn num(p: &Point<'_>, i: usize) -> f64 {
        p.fields[i].1.as_f64().unwrap()
    }

    #[test]
    fn minimal_line() {
        let p = ok("m v=1");
        assert_eq!(p.measurement, "m");
        assert!(p.tags.is_empty());
        assert_eq!(p.fields, vec![(Cow::from("v"), FieldValue::Float(1.0))]);
        assert_eq!(p.timestamp_ns, None);
    }

    #[test]
    fn tags_fields_and_timestamp() {
        let p = ok(
            "weather,location=us-midwest,season=summer temperature=82,hum=71.5 1465839830100400200",
        );
        assert_eq!(p.measurement, "weather");
        assert_eq!(p.tag("location"), Some("us-midwest"));
        assert_eq!(p.tag("season"), Some("summer"));
        assert_eq!(p.tag("nope"), None);
        assert_eq!(num(&p, 0), 82.0);
        assert_eq!(num(&p, 1), 71.5);
        assert_eq!(p.timestamp_ns, Some(1_465_839_830_100_400_200));
    }

    #[test]
    fn every_field_type() {
        let p = ok(
            "m f=-1.5e3,g=.5,h=7.,i=-42i,j=0i,u=18446744073709551615u,a=t,b=T,c=true,d=True,e=TRUE,k=f,l=F,n=false,o=False,q=FALSE,s=\"x\"",
        );
        let v: Vec<&FieldValue<'_>> = p.fields.iter().map(|(_, v)| v).collect();
        assert_eq!(v[0], &FieldValue::Float(-1500.0));
        assert_eq!(v[1], &FieldValue::Float(0.5));
        assert_eq!(v[2], &FieldValue::Float(7.0));
        assert_eq!(v[3], &FieldValue::Int(-42));
        assert_eq!(v[4], &FieldValue::Int(0));
        assert_eq!(v[5], &FieldValue::UInt(u64::MAX));
        for b in &v[6..11] {
            assert_eq!(**b, FieldValue::Bool(true));
        }
        for b in &v[11..16] {
            assert_eq!(**b, FieldValue::Bool(false));
        }
        assert_eq!(v[16], &FieldValue::Str(Cow::from("x")));
        assert_eq!(v[16].as_f64(), None);
        assert_eq!(v[6].as_f64(), Some(1.0));
        assert_eq!(v[11].as_f64(), Some(0.0));
        assert_eq!(v[3].as_f64(), Some(-42.0));
        // Integer extremes.
        let p = ok("m a=9223372036854775807i,b=-9223372036854775808i,c=0u");
        assert_eq!(p.fields[0].1, FieldValue::Int(i64::MAX));
        assert_eq!(p.fields[1].1, FieldValue::Int(i64::MIN));
        assert_eq!(p.fields[2].1, FieldValue::UInt(0));
    }

    #[test]
    fn escapes_in_measurement_tags_and_field_keys() {
        let p = ok(r"my\ meas\,ure,t\ k\,\==v\ a\,l\=ue f\ k\,\==1 5");
        assert_eq!(p.measurement, "my meas,ure");
        assert_eq!(p.tags[0], (Cow::from("t k,="), Cow::from("v a,l=ue")));
        assert_eq!(p.fields[0].0, "f k,=");
        assert_eq!(p.timestamp_ns, Some(5));
        // `\=` is not an escape in the measurement; `\\` is one backslash anywhere;
        // any other backslash is literal.
        let p = ok(r"a\=b\\c\d,t=x\\y\z v=1");
        assert_eq!(p.measurement, r"a\=b\c\d");
        assert_eq!(p.tag("t"), Some(r"x\y\z"));
        // Unescaped parts borrow.
        let p = ok("plain,t=v f=1");
        assert!(matches!(p.measurement, Cow::Borrowed(_)));
    }

    #[test]
    fn string_fields_quote_and_escape() {
        let p = ok(r#"m s="a, b=c \"q\" back\\slash \n",v=2i 10"#);
        assert_eq!(
            p.fields[0].1,
            FieldValue::Str(Cow::from(r#"a, b=c "q" back\slash \n"#))
        );
        assert_eq!(p.fields[1].1, FieldValue::Int(2));
        assert_eq!(p.timestamp_ns, Some(10));
        let p = ok(r#"m s="""#);
        assert_eq!(p.fields[0].1, FieldValue::Str(Cow::from("")));
        let p = ok("m s=\"ünïcödé\"");
        assert_eq!(p.fields[0].1, FieldValue::Str(Cow::from("ünïcödé")));
    }

    #[test]
    fn timestamps_are_exact_in_every_precision() {
        let line = b"m v=1 1700000000123456789";
        let p = parse_line(line, Precision::Ns).unwrap().unwrap();
        assert_eq!(p.timestamp_ns, Some(1_700_000_000_123_456_789));
        let p = parse_line(b"m v=1 1700000000123456", Precision::Us)
            .unwrap()
            .unwrap();
        assert_eq!(p.timestamp_ns, Some(1_700_000_000_123_456_000));
        let p = parse_line(b"m v=1 1700000000123", Precision::Ms)
            .unwrap()
            .unwrap();
        assert_eq!(p.timestamp_ns, Some(1_700_000_000_123_000_000));
        let p = parse_line(b"m v=1 1700000000", Precision::S)
            .unwrap()
            .unwrap();
        assert_eq!(p.timestamp_ns, Some(1_700_000_000_000_000_000));
        // Extremes and negatives (before 1970).
        assert_eq!(ok("m v=1 9223372036854775807").timestamp_ns, Some(i64::MAX));
        assert_eq!(
            ok("m v=1 -9223372036854775808").timestamp_ns,
            Some(i64::MIN)
        );
        assert_eq!(ok("m v=1 -1").timestamp_ns, Some(-1));
        assert_eq!(ok("m v=1 0").timestamp_ns, Some(0));
        // Overflow after scaling is an error, not a wrap.
        assert_eq!(
            parse_line(b"m v=1 9223372037", Precision::S).map_err(|e| e.reason()),
            Err("bad_timestamp")
        );
    }

    #[test]
    fn whitespace_comments_and_empty_lines() {
        for skip in [
            "",
            " ",
            "\t",
            "\r",
            "  \t ",
            "# comment",
            "#",
            "   # indented",
        ] {
            assert_eq!(
                parse_line(skip.as_bytes(), Precision::Ns),
                Ok(None),
                "{skip:?}"
            );
        }
        // CRLF endings, leading and trailing blanks, several separating spaces.
        let p = ok("  m,t=a   v=1   12  \r");
        assert_eq!(p.tag("t"), Some("a"));
        assert_eq!(p.timestamp_ns, Some(12));
        assert_eq!(ok("m v=1 ").timestamp_ns, None);
    }

    #[test]
    fn malformed_lines_name_their_reason() {
        let cases = [
            // Structure.
            (",t=a v=1", "bad_line"),
            (" ,t=a v=1", "bad_line"),
            ("m", "bad_line"),
            ("m,t=a", "bad_line"),
            ("m ", "bad_line"),
            ("m,t v=1", "bad_line"),
            ("m,t= v=1", "bad_line"),
            ("m,=a v=1", "bad_line"),
            ("m,t=a, v=1", "bad_line"),
            // Fields.
            ("m v", "bad_field"),
            ("m =1", "bad_field"),
            ("m v=", "bad_field"),
            ("m v=1,", "bad_field"),
            ("m v=1,w", "bad_field"),
            ("m v=abc", "bad_field"),
            ("m v=1.2.3", "bad_field"),
            ("m v=nan", "bad_field"),
            ("m v=NaN", "bad_field"),
            ("m v=inf", "bad_field"),
            ("m v=-Infinity", "bad_field"),
            ("m v=1e999", "bad_field"),
            ("m v=1.5i", "bad_field"),
            ("m v=i", "bad_field"),
            ("m v=-i", "bad_field"),
            ("m v=9223372036854775808i", "bad_field"),
            ("m v=-1u", "bad_field"),
            ("m v=18446744073709551616u", "bad_field"),
            ("m v=yes", "bad_field"),
            ("m v=tru", "bad_field"),
            ("m v=\"open", "bad_field"),
            ("m v=\"a\"b", "bad_field"),
            ("m v=\"a\\\"", "bad_field"),
            ("m v=1x", "bad_field"),
            ("m v=+", "bad_field"),
            // Timestamps.
            ("m v=1 x", "bad_timestamp"),
            ("m v=1 1.5", "bad_timestamp"),
            ("m v=1 12i", "bad_timestamp"),
            ("m v=1 -", "bad_timestamp"),
            ("m v=1 9223372036854775808", "bad_timestamp"),
            ("m v=1 1 2", "bad_timestamp"),
            ("m v=1 +5", "bad_timestamp"),
        ];
        for (line, reason) in cases {
            assert_eq!(err(line), reason, "{line:?}");
        }
        assert_eq!(
            parse_line(b"m v=1 \xff", Precision::Ns).map_err(|e| e.reason()),
            Err("bad_line")
        );
    }

    #[test]
    fn never_panics_on_prefixes_of_a_rich_line() {
        // Every prefix of a line exercising every construct, and every single-byte
        // corruption of it, parses or fails cleanly.
        let line =
            r#"m\ x\,y,t\=k=v\ 1,u=w f\,k=1.5,i=-2i,u=3u,b=t,s="a \"b\" \\ c" 1700000000000000000"#;
        let bytes = line.as_bytes();
        for n in 0..=bytes.len() {
            let _ = parse_line(&bytes[..n], Precision::Ns);
        }
        for i in 0..bytes.len() {
            for c in [b' ', b',', b'=', b'"', b'\\', b'#', b'x', 0xff] {
                let mut b = bytes.to_vec();
                b[i] = c;
                let _ = parse_line(&b, Precision::Ns);
            }
        }
        assert!(parse_line(bytes, Precision::Ns).unwrap().is_some());
    }
}
