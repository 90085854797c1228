//! The line protocol input on arbitrary bytes from a socket: the splitter cuts
//! the stream (fed in pieces of a fuzzer-chosen size) into lines under a length
//! limit, and each line goes through the parser: a point or a typed error,
//! never a panic.
//!
//! Input: a byte choosing the precision and the piece size, a byte choosing the
//! line limit, then the stream.
//!
//! Invariants checked: the splitter yields the same lines whatever the piece
//! size (those of the whole stream split at `\n`, an over-long one as a single
//! `TooLong`) and never buffers more than the limit; a parsed point has a
//! measurement and at least one field, finite floats, and rendered back to
//! line protocol (escaping as documented) parses to the same point; an error's
//! reason is one of the input's counter reasons.
#![no_main]

use ferrule_agent::inputs::line::parse::{parse_line, FieldValue, Point, Precision};
use ferrule_agent::inputs::line::split::{Piece, Splitter};
use ferrule_agent::inputs::line::ERROR_REASONS;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Got {
    Line(Vec<u8>),
    TooLong,
}

fn got(p: Piece<'_>) -> Got {
    match p {
        Piece::Line(l) => Got::Line(l.to_vec()),
        Piece::TooLong => Got::TooLong,
    }
}

/// What the splitter must produce for `stream`, computed on the whole of it.
fn reference(stream: &[u8], max: usize) -> Vec<Got> {
    let mut parts: Vec<&[u8]> = stream.split(|c| *c == b'\n').collect();
    if parts.last().is_some_and(|l| l.is_empty()) {
        parts.pop();
    }
    parts
        .into_iter()
        .map(|l| {
            if l.len() > max {
                Got::TooLong
            } else {
                Got::Line(l.to_vec())
            }
        })
        .collect()
}

fn escape(out: &mut String, s: &str, special: &[char]) {
    for c in s.chars() {
        if c == '\\' || special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// The point as line protocol, in nanoseconds.
fn render(p: &Point<'_>) -> String {
    let mut out = String::new();
    escape(&mut out, &p.measurement, &[',', ' ']);
    for (k, v) in &p.tags {
        out.push(',');
        escape(&mut out, k, &[',', '=', ' ']);
        out.push('=');
        escape(&mut out, v, &[',', '=', ' ']);
    }
    for (i, (k, v)) in p.fields.iter().enumerate() {
        out.push(if i == 0 { ' ' } else { ',' });
        escape(&mut out, k, &[',', '=', ' ']);
        out.push('=');
        match v {
            FieldValue::Float(f) => out.push_str(&f.to_string()),
            FieldValue::Int(i) => out.push_str(&format!("{i}i")),
            FieldValue::UInt(u) => out.push_str(&format!("{u}u")),
            FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            FieldValue::Str(s) => {
                out.push('"');
                escape(&mut out, s, &['"']);
                out.push('"');
            }
        }
    }
    if let Some(t) = p.timestamp_ns {
        out.push_str(&format!(" {t}"));
    }
    out
}

/// Field values compared with floats bit for bit.
fn same_value(a: &FieldValue<'_>, b: &FieldValue<'_>) -> bool {
    match (a, b) {
        (FieldValue::Float(x), FieldValue::Float(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// Points compared with floats bit for bit.
fn same(a: &Point<'_>, b: &Point<'_>) -> bool {
    a.measurement == b.measurement
        && a.tags == b.tags
        && a.timestamp_ns == b.timestamp_ns
        && a.fields.len() == b.fields.len()
        && a.fields
            .iter()
            .zip(&b.fields)
            .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

fn check_line(line: &[u8], precision: Precision) {
    match parse_line(line, precision) {
        Ok(None) => {}
        Ok(Some(p)) => {
            assert!(!p.measurement.is_empty() && !p.fields.is_empty());
            for (k, v) in &p.fields {
                assert!(!k.is_empty());
                if let FieldValue::Float(f) = v {
                    assert!(f.is_finite());
                }
            }
            for (k, v) in &p.tags {
                assert!(!k.is_empty() && !v.is_empty());
            }
            let text = render(&p);
            match parse_line(text.as_bytes(), Precision::Ns) {
                Ok(Some(back)) => {
                    assert!(same(&p, &back), "{p:?}\nrendered {text:?}\nparsed {back:?}")
                }
                other => panic!("{p:?}\nrendered {text:?}\nparsed {other:?}"),
            }
        }
        Err(e) => assert!(ERROR_REASONS.contains(&e.reason()), "{e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, limit, stream @ ..] = data else {
        return;
    };
    let precision =
        [Precision::Ns, Precision::Us, Precision::Ms, Precision::S][usize::from(mode & 3)];
    let step = usize::from(mode >> 2) + 1;
    let max = usize::from(*limit) * 16 + 16;
    let mut splitter = Splitter::new(max);
    let mut pieces = Vec::new();
    for chunk in stream.chunks(step) {
        splitter.push(chunk, |p| pieces.push(got(p)));
        assert!(splitter.buffered() <= max);
    }
    splitter.finish(|p| pieces.push(got(p)));
    assert_eq!(splitter.buffered(), 0);
    assert_eq!(pieces, reference(stream, max));
    for p in &pieces {
        if let Got::Line(l) = p {
            assert!(l.len() <= max);
            check_line(l, precision);
        }
    }
});
