//! Segment files: their names and their 32-byte header.
//!
//! A segment is one file `<base offset, 20 decimal digits>.seg` holding a header and
//! then records with offsets `>= base` and below the next segment's base. Names sort
//! lexically in offset order. The header carries the log's salt (see [`crate::record`])
//! so that records can be validated; a damaged header is not fatal because the salt is
//! also kept in the `floor` file and in every other segment's header.
//!
//! Header layout (little-endian):
//!
//! | bytes  | field      | meaning                                      |
//! |--------|------------|----------------------------------------------|
//! | 0..8   | magic      | [`SEGMENT_MAGIC`] (`FRLSEG\r\n`)             |
//! | 8..12  | version    | [`FORMAT_VERSION`]                           |
//! | 12..16 | salt       | the log's random salt                        |
//! | 16..24 | base       | base offset, equal to the one in the name    |
//! | 24..28 | crc        | CRC32C of bytes 0..24                        |
//! | 28..32 | reserved   | zero                                         |

use std::path::{Path, PathBuf};

/// First eight bytes of a segment file. The `\r\n` catches newline translation.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FRLSEG\r\n";
/// The only on-disk format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header in bytes; records start here.
pub const SEGMENT_HEADER_LEN: usize = 32;
const SUFFIX: &str = ".seg";
const DIGITS: usize = 20;

/// A validated segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The log's salt, mixed into every record's header CRC.
    pub salt: u32,
    /// The first offset this segment may hold.
    pub base: u64,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.salt.to_le_bytes());
        b[16..24].copy_from_slice(&self.base.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses the first bytes of a segment file. `None` if they are short, damaged, or
    /// of another format version.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..SEGMENT_HEADER_LEN)?;
        let u32_at = |at: usize| {
            b.get(at..at + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let base = b
            .get(16..24)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)?;
        if b[0..8] != SEGMENT_MAGIC
            || u32_at(8)? != FORMAT_VERSION
            || u32_at(24)? != crc32c::crc32c(&b[0..24])
        {
            return None;
        }
        Some(Self {
            salt: u32_at(12)?,
            base,
        })
    }
}

/// The file name of the segment whose base offset is `base`.
///
/// ```
/// assert_eq!(ferrule_disklog::segment::file_name(42), "00000000000000000042.seg");
/// ```
pub fn file_name(base: u64) -> String {
    format!("{base:0DIGITS$}{SUFFIX}")
}

/// The base offset encoded in a segment file name, or `None` if `name` is not one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The path of segment `base` in `dir`.
pub fn path(dir: &Path, base: u64) -> PathBuf {
    dir.join(file_name(base))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
        assert_eq!(parse_file_name("0000000000000000001.seg"), None);
        assert_eq!(parse_file_name("0000000000000000000a.seg"), None);
        assert_eq!(parse_file_name("00000000000000000001.seg.tmp"), None);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader {
            salt: 0xABCD,
            base: 77,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::parse(&b), Some(h));
        assert_eq!(SegmentHeader::parse(&b[..31]), None);
        for i in 0..28 {
            let mut c = b;
            c[i] ^= 0x10;
            assert_eq!(SegmentHeader::parse(&c), None, "byte {i}");
        }
        assert_eq!(SegmentHeader::parse(&[0u8; 32]), None);
    }
}
