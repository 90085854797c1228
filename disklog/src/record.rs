//! Record framing: how one record is laid out in a segment, and the checks that decide
//! whether bytes at a position are a record this log wrote.
//!
//! Layout (all integers little-endian), 32-byte header then payload:
//!
//! | bytes  | field         | meaning                                                  |
//! |--------|---------------|----------------------------------------------------------|
//! | 0..4   | magic         | [`MAGIC`], lets recovery resynchronize after damage       |
//! | 4..8   | length        | payload length in bytes                                  |
//! | 8..16  | offset        | the record's offset (index in the log, not a byte count) |
//! | 16..24 | time_ns       | append time, nanoseconds since the Unix epoch            |
//! | 24..28 | payload_crc   | CRC32C of the payload                                    |
//! | 28..32 | header_crc    | CRC32C of the log's salt (4 bytes) then bytes 4..28      |
//!
//! Invariants: a record is accepted only if the magic matches, the header CRC matches
//! under the log's salt, the whole payload is present and its CRC matches. The header
//! CRC is checked before the length is trusted, so a damaged length never makes us read
//! or checksum a bogus span. The salt is random per log and never written into records,
//! so a payload that embeds a well-formed record (payloads come from remote agents) can
//! never validate if recovery resynchronizes into the middle of it.

/// First four bytes of every record.
pub const MAGIC: u32 = 0xD15C_106F;
/// Size of a record header in bytes.
pub const HEADER_LEN: usize = 32;

/// A validated record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// The record's offset.
    pub offset: u64,
    /// Append time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// CRC32C of the payload.
    pub payload_crc: u32,
}

impl RecordHeader {
    /// Total bytes the record occupies: header plus payload.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

fn header_crc(salt: u32, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), body)
}

/// Appends the framed record to `out`. `payload.len()` must fit in a u32; the caller
/// (the log) checks its configured maximum first.
pub fn encode(out: &mut Vec<u8>, salt: u32, offset: u64, time_ns: u64, payload: &[u8]) {
    // The log rejects payloads above `max_record_bytes: u32` before calling us, so the
    // length always fits; saturate rather than wrap if that ever changes.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&time_ns.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let crc = header_crc(salt, &out[start + 4..start + 28]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks magic and header CRC of a 32-byte header. `None` means these bytes are not a
/// header this log wrote.
pub fn decode_header(h: &[u8; HEADER_LEN], salt: u32) -> Option<RecordHeader> {
    if u32_at(h, 0) != MAGIC || u32_at(h, 28) != header_crc(salt, &h[4..28]) {
        return None;
    }
    Some(RecordHeader {
        len: u32_at(h, 4),
        offset: u64_at(h, 8),
        time_ns: u64_at(h, 16),
        payload_crc: u32_at(h, 24),
    })
}

/// Whether `payload` is the one `header` describes.
pub fn payload_ok(header: &RecordHeader, payload: &[u8]) -> bool {
    payload.len() == header.len as usize && crc32c::crc32c(payload) == header.payload_crc
}

/// Decodes and fully validates the record starting at `pos` in `bytes`. `None` if the
/// bytes there are not a complete, intact record.
pub fn decode_at(bytes: &[u8], pos: usize, salt: u32) -> Option<RecordHeader> {
    let head: &[u8; HEADER_LEN] = bytes
        .get(pos..pos.checked_add(HEADER_LEN)?)?
        .try_into()
        .ok()?;
    let header = decode_header(head, salt)?;
    let start = pos + HEADER_LEN;
    let payload = bytes.get(start..start.checked_add(header.len as usize)?)?;
    payload_ok(&header, payload).then_some(header)
}

/// Solves for the salt that makes the record at the start of `bytes` valid, for the
/// rare recovery where the floor file and every segment header are damaged.
///
/// The header CRC is an affine function of the 32 salt bits over GF(2) and, for a
/// fixed header, a bijection, so exactly one salt satisfies it: we find it by Gaussian
/// elimination over 32 CRC evaluations. That says nothing by itself; the answer is
/// accepted only if the magic matches and the (unsalted) payload CRC matches too, which
/// random bytes do with probability 2^-32.
pub fn recover_salt(bytes: &[u8]) -> Option<u32> {
    let head: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    if u32_at(head, 0) != MAGIC {
        return None;
    }
    let f = |salt: u32| header_crc(salt, &head[4..28]);
    let c = f(0);
    // basis[bit] = (vector with highest set bit `bit`, salt bits combining to it)
    let mut basis: [Option<(u32, u32)>; 32] = [None; 32];
    for i in 0..32 {
        let (mut v, mut combo) = (f(1 << i) ^ c, 1u32 << i);
        while v != 0 {
            let top = 31 - v.leading_zeros() as usize;
            match basis[top] {
                Some((bv, bc)) => {
                    v ^= bv;
                    combo ^= bc;
                }
                None => {
                    basis[top] = Some((v, combo));
                    break;
                }
            }
        }
    }
    let (mut target, mut salt) = (u32_at(head, 28) ^ c, 0u32);
    while target != 0 {
        let top = 31 - target.leading_zeros() as usize;
        let (bv, bc) = basis[top]?;
        target ^= bv;
        salt ^= bc;
    }
    decode_at(bytes, 0, salt).map(|_| salt)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = Vec::new();
        encode(&mut b, 7, 42, 1_000, b"hello");
        assert_eq!(b.len(), HEADER_LEN + 5);
        let h = decode_at(&b, 0, 7).unwrap();
        assert_eq!((h.len, h.offset, h.time_ns), (5, 42, 1_000));
        assert_eq!(&b[HEADER_LEN..], b"hello");
    }

    #[test]
    fn wrong_salt_rejects() {
        let mut b = Vec::new();
        encode(&mut b, 7, 42, 1_000, b"hello");
        assert!(decode_at(&b, 0, 8).is_none());
    }

    #[test]
    fn salt_is_recovered_from_one_record() {
        for salt in [0, 1, 0xDEAD_BEEF, u32::MAX] {
            let mut b = Vec::new();
            encode(&mut b, salt, 9, 9, b"some payload");
            assert_eq!(recover_salt(&b), Some(salt));
            b[40] ^= 1;
            assert_eq!(recover_salt(&b), None);
        }
        assert_eq!(recover_salt(&[0u8; 64]), None);
    }

    #[test]
    fn every_single_bit_flip_rejects() {
        let mut b = Vec::new();
        encode(&mut b, 1, 3, 4, b"payload");
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(decode_at(&c, 0, 1).is_none(), "bit {i}");
        }
    }
}
