//! Splitting a byte stream into lines with a hard length limit. Pure: bytes in,
//! lines out.
//!
//! Invariant: the splitter never holds more than `max_line_bytes` bytes, whatever
//! the stream sends. A line longer than that is reported once as
//! [`Piece::TooLong`] as soon as it crosses the limit, and its remaining bytes are
//! dropped up to the next newline without being stored.

/// What the splitter found.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A complete line, without its `\n`.
    Line(&'a [u8]),
    /// A line longer than the limit was skipped (reported once per line).
    TooLong,
}

/// A line splitter for one stream.
#[derive(Debug)]
pub struct Splitter {
    max: usize,
    /// The start of the current line when it spans reads; at most `max` bytes.
    partial: Vec<u8>,
    /// True while dropping the rest of an over-long line.
    discarding: bool,
}

impl Splitter {
    /// A splitter allowing lines of up to `max_line_bytes` bytes (newline excluded).
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            max: max_line_bytes,
            partial: Vec::new(),
            discarding: false,
        }
    }

    /// Feeds the next bytes of the stream, calling `out` for each piece found.
    ///
    /// ```
    /// use ferrule_agent::inputs::line::split::{Piece, Splitter};
    /// let mut s = Splitter::new(8);
    /// let mut got = Vec::new();
    /// s.push(b"a v=1\nb v=", |p| got.push(format!("{p:?}")));
    /// s.push(b"2\n", |p| got.push(format!("{p:?}")));
    /// assert_eq!(got.len(), 2);
    /// ```
    pub fn push(&mut self, data: &[u8], mut out: impl FnMut(Piece<'_>)) {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|c| *c == b'\n') {
            let seg = &rest[..nl];
            rest = &rest[nl + 1..];
            if self.discarding {
                self.discarding = false;
            } else if self.partial.is_empty() {
                if seg.len() > self.max {
                    out(Piece::TooLong);
                } else {
                    out(Piece::Line(seg));
                }
            } else if self.partial.len() + seg.len() > self.max {
                self.partial.clear();
                out(Piece::TooLong);
            } else {
                self.partial.extend_from_slice(seg);
                out(Piece::Line(&self.partial));
                self.partial.clear();
            }
        }
        if self.discarding || rest.is_empty() {
            return;
        }
        if self.partial.len() + rest.len() > self.max {
            self.partial.clear();
            self.discarding = true;
            out(Piece::TooLong);
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    /// The stream ended: a last line without a newline is still a line.
    pub fn finish(&mut self, mut out: impl FnMut(Piece<'_>)) {
        if !self.discarding && !self.partial.is_empty() {
            out(Piece::Line(&self.partial));
        }
        self.partial.clear();
        self.discarding = false;
    }

    /// Bytes held for an incomplete line (never more than the limit).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(max: usize, reads: &[&[u8]]) -> (Vec<String>, usize) {
        let mut s = Splitter::new(max);
        let mut lines = Vec::new();
        let mut too_long = 0;
        let mut f = |p: Piece<'_>| match p {
            Piece::Line(l) => lines.push(String::from_utf8_lossy(l).into_owned()),
            Piece::TooLong => too_long += 1,
        };
        for r in reads {
            s.push(r, &mut f);
            assert!(s.buffered() <= max);
        }
        s.finish(&mut f);
        (lines, too_long)
    }

    #[test]
    fn lines_across_reads() {
        assert_eq!(
            run(10, &[b"a\nbb", b"b\n", b"", b"c", b"\n\n", b"tail"]),
            (
                vec![
                    "a".into(),
                    "bbb".into(),
                    "c".into(),
                    "".into(),
                    "tail".into()
                ],
                0
            )
        );
    }

    #[test]
    fn exact_limit_passes_one_more_is_skipped() {
        assert_eq!(
            run(3, &[b"abc\nabcd\nx\n"]),
            (vec!["abc".into(), "x".into()], 1)
        );
        // Split across reads.
        assert_eq!(
            run(3, &[b"ab", b"c\nab", b"cd", b"efgh", b"\nok\n"]),
            (vec!["abc".into(), "ok".into()], 1)
        );
        // Crossing the limit in a partial line, then the newline in a later read.
        assert_eq!(
            run(4, &[b"123", b"45", b"678", b"9\n", b"z\n"]),
            (vec!["z".into()], 1)
        );
        // Crossing the limit exactly when the newline arrives.
        assert_eq!(run(4, &[b"123", b"45\nz"]), (vec!["z".into()], 1));
        // An over-long unterminated tail is not a line at the end.
        assert_eq!(run(2, &[b"ok\nlonger"]), (vec!["ok".into()], 1));
    }

    #[test]
    fn a_huge_line_is_never_stored() {
        let mut s = Splitter::new(16);
        let mut n = 0;
        let chunk = [b'x'; 4096];
        for _ in 0..1000 {
            s.push(&chunk, |_| n += 1);
            assert!(s.buffered() <= 16);
        }
        let mut lines = Vec::new();
        s.push(b"\nnext\n", |p| {
            if let Piece::Line(l) = p {
                lines.push(l.to_vec());
            }
        });
        assert_eq!(n, 1);
        assert_eq!(lines, vec![b"next".to_vec()]);
    }
}
