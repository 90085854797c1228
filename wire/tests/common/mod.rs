//! Helpers shared by the wire integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use ferrule_wire::*;

/// Equality that treats floats bit for bit (so NaN equals the same NaN).
pub fn same(a: &Message, b: &Message) -> bool {
    match (a, b) {
        (Message::Batch(x), Message::Batch(y)) => {
            x.epoch == y.epoch
                && x.seq == y.seq
                && x.clock_offset_ns == y.clock_offset_ns
                && x.series.len() == y.series.len()
                && x.series.iter().zip(&y.series).all(|(s, t)| {
                    s.sensor() == t.sensor()
                        && s.timestamps_ns() == t.timestamps_ns()
                        && s.quality() == t.quality()
                        && s.values().len() == t.values().len()
                        && s.values()
                            .iter()
                            .zip(t.values())
                            .all(|(v, w)| v.to_bits() == w.to_bits())
                })
        }
        _ => a == b,
    }
}

/// Encodes one message as a frame with default limits.
pub fn frame(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(m, &Limits::default(), &mut out).unwrap();
    out
}
