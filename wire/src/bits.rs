//! Bit-level writer and reader for the sample codec.
//!
//! The writer appends bits most-significant first into a byte vector; the reader
//! pulls them back out and returns [`DecodeError::Truncated`] instead of reading past
//! the end, so a hostile length can never make it loop or read out of bounds.

use crate::error::DecodeError;

/// Appends bit fields to a byte buffer, most significant bit first.
pub(crate) struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Bits not yet flushed: the low `fill` bits (fewer than 32).
    acc: u64,
    fill: u32,
}

impl<'a> BitWriter<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            acc: 0,
            fill: 0,
        }
    }

    /// Writes the low `n` bits of `value` (`n` at most 64).
    #[inline]
    pub(crate) fn write(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        if n > 32 {
            self.write_small(value >> 32, n - 32);
            self.write_small(value & 0xffff_ffff, 32);
        } else if n > 0 {
            self.write_small(value & (u64::MAX >> (64 - n)), n);
        }
    }

    #[inline]
    fn write_small(&mut self, value: u64, n: u32) {
        // The accumulator holds fewer than 32 pending bits and n <= 32, so the
        // shifted accumulator holds at most 63 bits.
        self.acc = (self.acc << n) | value;
        self.fill += n;
        if self.fill >= 32 {
            self.fill -= 32;
            self.out
                .extend_from_slice(&((self.acc >> self.fill) as u32).to_be_bytes());
            self.acc &= (1u64 << self.fill) - 1;
        }
    }

    /// Writes an unsigned LEB128-style varint as whole groups of 8 bits.
    pub(crate) fn write_varint(&mut self, mut value: u64) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.write(u64::from(byte), 8);
                return;
            }
            self.write(u64::from(byte | 0x80), 8);
        }
    }

    /// Flushes pending bits, padding the last partial byte with zero bits.
    pub(crate) fn finish(self) {
        let mut fill = self.fill;
        while fill >= 8 {
            fill -= 8;
            self.out.push((self.acc >> fill) as u8);
        }
        if fill > 0 {
            self.out.push((self.acc << (8 - fill)) as u8);
        }
    }
}

/// Reads bit fields written by [`BitWriter`].
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Bits left to read.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.data.len() * 8 - self.pos
    }

    /// Reads `n` bits (`n` at most 64) as an unsigned value.
    #[inline]
    pub(crate) fn read(&mut self, n: u32) -> Result<u64, DecodeError> {
        if n == 0 {
            return Ok(0);
        }
        if n as usize > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        if n > 32 {
            let hi = self.read_small(n - 32);
            let lo = self.read_small(32);
            return Ok((hi << 32) | lo);
        }
        Ok(self.read_small(n))
    }

    /// Reads at most 32 bits; the caller has checked they are there.
    #[inline]
    fn read_small(&mut self, n: u32) -> u64 {
        let byte = self.pos / 8;
        let shift = (self.pos % 8) as u32;
        // Load up to 8 bytes big-endian; missing bytes past the end read as zero,
        // which is harmless because only `n` checked bits are kept.
        let word = match self.data.get(byte..byte + 8) {
            Some(w) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(w);
                u64::from_be_bytes(a)
            }
            None => {
                let mut a = [0u8; 8];
                let end = (byte + 8).min(self.data.len());
                a[..end - byte].copy_from_slice(&self.data[byte..end]);
                u64::from_be_bytes(a)
            }
        };
        self.pos += n as usize;
        // shift <= 7 and n <= 32, so shift + n <= 39 < 64.
        (word << shift) >> (64 - n)
    }

    /// Passes over `bits` bits.
    #[inline]
    pub(crate) fn skip(&mut self, bits: usize) -> Result<(), DecodeError> {
        if bits > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        self.pos += bits;
        Ok(())
    }

    /// Fills `out` with fields of `width` bits each (`width` at most 64): the
    /// same as one [`BitReader::read`] per field, but checked once and, away from
    /// the end of the data, one unaligned load per field (the codec's columns are
    /// runs of equal-width fields, where a per-field bounds check and call cost
    /// more than the unpacking itself).
    #[inline]
    pub(crate) fn read_run(&mut self, width: u32, out: &mut [u64]) -> Result<(), DecodeError> {
        if width == 0 {
            out.fill(0);
            return Ok(());
        }
        if width > 64 || (width as usize).saturating_mul(out.len()) > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let mut done = 0;
        if width <= 57 {
            // While 8 bytes remain from a field's first byte, one load holds it
            // whole: shift <= 7 and width <= 57, so shift + width <= 64.
            for x in out.iter_mut() {
                let byte = self.pos / 8;
                let Some(w) = self.data.get(byte..byte + 8) else {
                    break;
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(w);
                let shift = (self.pos % 8) as u32;
                *x = (u64::from_be_bytes(a) << shift) >> (64 - width);
                self.pos += width as usize;
                done += 1;
            }
        }
        // Wider fields, and the last few bytes: the plain read (checked above, so
        // it cannot fail).
        for x in &mut out[done..] {
            *x = self.read(width)?;
        }
        Ok(())
    }

    /// Reads a varint written by [`BitWriter::write_varint`]; at most ten groups.
    pub(crate) fn read_varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.read(8)?;
            let part = byte & 0x7f;
            if i == 9 && part > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            value |= part << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow)
    }
}

/// Maps signed integers to unsigned so that small magnitudes get few bits.
#[inline]
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Number of bits needed to hold `v` (0 for 0).
#[inline]
pub(crate) fn bit_width(v: u64) -> u32 {
    64 - v.leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_at_every_width() {
        let mut buf = Vec::new();
        let mut w = BitWriter::new(&mut buf);
        for n in 0..=64u32 {
            let v = if n == 0 { 0 } else { u64::MAX >> (64 - n) };
            w.write(v, n);
            w.write(1, 1);
            w.write_varint(u64::from(n) * 1_000_003);
        }
        w.finish();
        let mut r = BitReader::new(&buf);
        for n in 0..=64u32 {
            let v = if n == 0 { 0 } else { u64::MAX >> (64 - n) };
            assert_eq!(r.read(n).unwrap(), v, "width {n}");
            assert_eq!(r.read(1).unwrap(), 1);
            assert_eq!(r.read_varint().unwrap(), u64::from(n) * 1_000_003);
        }
        assert!(r.remaining() < 8);
    }

    #[test]
    fn runs_read_what_single_reads_read() {
        // Every width, at every bit offset, up to and across the end of the data
        // (where the run leaves its one-load path).
        let data: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        for width in 0..=64u32 {
            for start in 0..8u32 {
                let fits = (data.len() * 8 - start as usize) / width.max(1) as usize;
                for count in [0, 1, fits.saturating_sub(1), fits, fits + 1] {
                    let mut one = BitReader::new(&data);
                    one.read(start).unwrap();
                    let expected: Result<Vec<u64>, _> =
                        (0..count).map(|_| one.read(width)).collect();
                    let mut run = BitReader::new(&data);
                    run.read(start).unwrap();
                    let mut got = vec![0; count];
                    let r = run.read_run(width, &mut got);
                    match expected {
                        Ok(v) => {
                            assert_eq!(r, Ok(()), "width {width} start {start} count {count}");
                            assert_eq!(got, v, "width {width} start {start} count {count}");
                            assert_eq!(run.remaining(), one.remaining());
                        }
                        Err(e) if width > 0 => assert_eq!(r, Err(e)),
                        Err(_) => unreachable!("zero-width reads cannot fail"),
                    }
                }
            }
        }
    }

    #[test]
    fn reading_past_the_end_is_an_error() {
        let mut r = BitReader::new(&[0xff]);
        assert_eq!(r.read(5).unwrap(), 0x1f);
        assert_eq!(r.read(4), Err(DecodeError::Truncated));
        let mut r = BitReader::new(&[0xff; 11]);
        assert_eq!(r.read_varint(), Err(DecodeError::VarintOverflow));
    }

    #[test]
    fn zigzag_is_a_bijection_on_edges() {
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }
}
