//! The raw text of one value in a JSON document, found by field path.
//!
//! serde_json's `Value` (without its `arbitrary_precision` feature, which would
//! change number handling for the whole workspace) keeps a number that is not
//! an integer as an `f64` only, so `1700000000.123456789` seconds or
//! `1700000000123456789.0` nanoseconds lose their last digits. Timestamps need
//! every digit: the decoder reads them from the text this module finds.
//!
//! Invariants: it only ever returns a sub-slice of its input; on text that is
//! not well-formed JSON (callers parse the document with serde_json first) it
//! returns `None` or some sub-slice, never panics and always ends (every step
//! moves forward).

/// The text of the value at `segments` in `doc`, after first stepping into
/// array element `element` if given. Object keys match after JSON unescaping;
/// of duplicate keys the last wins, as in serde_json's `Value`. Array steps
/// take a decimal index.
pub(crate) fn raw_at<'a>(
    doc: &'a str,
    element: Option<usize>,
    segments: &[String],
) -> Option<&'a str> {
    let mut s = Scanner {
        b: doc.as_bytes(),
        pos: 0,
    };
    s.ws();
    let steps = element
        .map(Step::Index)
        .into_iter()
        .chain(segments.iter().map(|seg| Step::Name(seg)));
    for step in steps {
        let found = match (s.peek()?, step) {
            (b'{', Step::Name(name)) => s.member(name)?,
            (b'[', Step::Index(i)) => s.element(i)?,
            (b'[', Step::Name(name)) => s.element(name.parse().ok()?)?,
            _ => return None,
        };
        s.pos = found;
    }
    let start = s.pos;
    s.skip_value()?;
    doc.get(start..s.pos)
}

#[derive(Clone, Copy)]
enum Step<'p> {
    Index(usize),
    Name(&'p str),
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Expects `c` (after whitespace) and steps over it.
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.pos += 1)
    }

    /// Steps over a string starting at `pos`; returns its raw text with quotes.
    fn string(&mut self) -> Option<&str> {
        let start = self.pos;
        if self.peek()? != b'"' {
            return None;
        }
        self.pos += 1;
        loop {
            match self.peek()? {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return std::str::from_utf8(self.b.get(start..self.pos)?).ok();
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Steps over one value (after whitespace); `pos` ends right after it.
    fn skip_value(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                self.pos += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            _ => {
                let start = self.pos;
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.pos += 1;
                }
                (self.pos > start).then_some(())
            }
        }
    }

    /// At `{`: the position of the last member named `name`.
    fn member(&mut self, name: &str) -> Option<usize> {
        self.eat(b'{')?;
        let mut found = None;
        self.ws();
        if self.peek()? == b'}' {
            return None;
        }
        loop {
            self.ws();
            let key = self.string()?;
            let matches = serde_json::from_str::<String>(key).ok()? == name;
            self.eat(b':')?;
            self.ws();
            if matches {
                found = Some(self.pos);
            }
            self.skip_value()?;
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => return found,
                _ => return None,
            }
        }
    }

    /// At `[`: the position of element `i`.
    fn element(&mut self, i: usize) -> Option<usize> {
        self.eat(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            return None;
        }
        let mut n = 0;
        loop {
            self.ws();
            if n == i {
                return Some(self.pos);
            }
            self.skip_value()?;
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                _ => return None,
            }
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::raw_at;

    fn at<'a>(doc: &'a str, element: Option<usize>, path: &str) -> Option<&'a str> {
        let segs: Vec<String> = path.split('.').map(str::to_string).collect();
        raw_at(doc, element, &segs)
    }

    #[test]
    fn finds_the_text_of_nested_values() {
        let doc = r#" { "a" : {"b": [1, {"c": 1700000000.123456789}]}, "t": 1.50e3 ,
            "s": "x,}]\"y", "k\u0041": -0.5, "d": 1, "d": 2 } "#;
        assert_eq!(at(doc, None, "a.b.1.c"), Some("1700000000.123456789"));
        assert_eq!(at(doc, None, "a.b.0"), Some("1"));
        assert_eq!(at(doc, None, "t"), Some("1.50e3"));
        assert_eq!(at(doc, None, "s"), Some(r#""x,}]\"y""#));
        assert_eq!(at(doc, None, "kA"), Some("-0.5"), "keys match unescaped");
        assert_eq!(at(doc, None, "d"), Some("2"), "the last duplicate wins");
        assert_eq!(
            at(doc, None, "a.b"),
            Some(r#"[1, {"c": 1700000000.123456789}]"#)
        );
        for missing in ["x", "a.x", "a.b.2", "t.x", "a.b.z"] {
            assert_eq!(at(doc, None, missing), None, "{missing}");
        }
        let arr = r#"[{"ts": 1.25}, {"ts": 2.5e-1}]"#;
        assert_eq!(at(arr, Some(1), "ts"), Some("2.5e-1"));
        assert_eq!(at(arr, Some(2), "ts"), None);
    }

    #[test]
    fn malformed_text_never_panics() {
        for doc in [
            "",
            "{",
            "[",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\" 1}",
            "[1,",
            "\"\\",
            "{\"a\":\"\\",
            "]]]",
            "}",
            "{\"a\":[}",
            "{,}",
            "[,]",
            "{\"\\u00\":1}",
            "\u{0}",
        ] {
            for element in [None, Some(0), Some(3)] {
                let _ = at(doc, element, "a");
                let _ = at(doc, element, "a.0.b");
            }
        }
    }
}
