//! Certificate serial numbers: generation, parsing and canonical hex form.
//!
//! Invariant: generated serials are 16 random bytes whose first byte is in
//! `0x01..=0x7f`, so the DER INTEGER is positive, exactly 16 bytes long and
//! has a single canonical hex spelling. The canonical text form is lowercase
//! hex without separators or leading zero bytes; it is what `index.tsv`
//! stores and what `inspect` prints, so an operator can copy one into
//! `revoke --serial`.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// Length in bytes of the serials this crate generates.
const SERIAL_LEN: usize = 16;
/// RFC 5280 caps serials at 20 octets.
const MAX_SERIAL_LEN: usize = 20;

/// A certificate serial number.
///
/// It exists so revocation, the index and `inspect` compare serials by value
/// (`3F:A2`, `0x3fa2` and `00:3f:a2` are the same serial) rather than by
/// whichever spelling a tool printed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// Draws a fresh random positive 16-byte serial from the OS CSPRNG.
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; SERIAL_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::Random)?;
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 1;
        }
        Ok(Self(bytes.to_vec()))
    }

    /// Builds a serial from big-endian bytes as found in a certificate
    /// (leading zero bytes, e.g. DER's sign padding, are ignored).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let start = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len().saturating_sub(1));
        Self(bytes[start..].to_vec())
    }

    /// Parses hex as operators paste it: optional `0x`, optional `:` or
    /// whitespace between bytes, any case.
    pub fn parse(input: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidSerial {
            input: input.to_owned(),
            reason,
        };
        let trimmed = input.trim();
        let body = trimmed
            .strip_prefix("0x")
            .or_else(|| trimmed.strip_prefix("0X"))
            .unwrap_or(trimmed);
        let digits: Vec<u8> = body
            .bytes()
            .filter(|b| *b != b':' && !b.is_ascii_whitespace())
            .collect();
        if digits.is_empty() {
            return Err(bad("empty"));
        }
        let mut nibbles = Vec::with_capacity(digits.len() + 1);
        if digits.len() % 2 == 1 {
            nibbles.push(0);
        }
        for d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| bad("contains a non-hex character"))?;
            // to_digit(16) is < 16, so this never truncates.
            nibbles.push(v as u8);
        }
        let bytes: Vec<u8> = nibbles.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
        let serial = Self::from_bytes(&bytes);
        if serial.0.len() > MAX_SERIAL_LEN {
            return Err(bad("longer than 20 bytes"));
        }
        Ok(serial)
    }

    /// The big-endian magnitude bytes (no sign padding).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Canonical lowercase hex, no separators.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Colon-separated hex, the way `openssl x509 -text` prints serials.
    pub fn to_colon_hex(&self) -> String {
        self.0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The rcgen form, for putting the serial into a certificate or CRL.
    pub(crate) fn to_rcgen(&self) -> rcgen::SerialNumber {
        rcgen::SerialNumber::from_slice(&self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_serials_are_positive_and_sixteen_bytes() {
        for _ in 0..64 {
            let s = Serial::random().unwrap();
            assert_eq!(s.as_bytes().len(), 16);
            assert!(s.as_bytes()[0] >= 1 && s.as_bytes()[0] <= 0x7f);
        }
    }

    #[test]
    fn spellings_parse_to_the_same_serial() {
        let a = Serial::parse("3f:A2:01").unwrap();
        for s in [
            "0x3fa201",
            "3FA201",
            "00:3f:a2:01",
            " 3f a2 01 ",
            "0X3fa201",
        ] {
            assert_eq!(Serial::parse(s).unwrap(), a, "{s}");
        }
        assert_eq!(a.to_hex(), "3fa201");
        assert_eq!(a.to_colon_hex(), "3f:a2:01");
        assert_eq!(Serial::parse("abc").unwrap().to_hex(), "0abc");
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "0x", "zz", "12:3g", &"ab".repeat(21)] {
            assert!(Serial::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn zero_is_kept() {
        assert_eq!(Serial::parse("00").unwrap().to_hex(), "00");
    }
}
