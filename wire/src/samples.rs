//! Samples and their compact columnar encoding.
//!
//! A batch carries one [`Series`] per sensor: columns of timestamps, values and
//! quality flags. The encoding (version [`SAMPLE_ENCODING_V1`], documented byte for
//! byte in `wire/README.md`) is lossless for every `f64` bit pattern and follows
//! Gorilla (Pelkonen et al., VLDB 2015) where that wins, and beats it where sensor
//! data allows:
//!
//! - **Timestamps** are integers encoded with the cheapest of raw, delta or
//!   delta-of-delta residuals, bit-packed in blocks of 64 with one width per block.
//!   A regular 1 kHz clock costs 0 bits a sample (Gorilla: 1 bit).
//! - **Values** that are decimals at some resolution (a meter reading of 230.17 V,
//!   a Modbus register scaled by 0.1) are turned into exact integers and encoded
//!   like timestamps. Anything else (NaN, -0.0, full-precision noise) falls back to
//!   Gorilla's XOR encoding, which is exact for any bit pattern.
//! - **Quality** costs one bit a series when every sample shares one flag.
//!
//! Invariant: `decode(encode(x)) == x` bit for bit, for every input; decoding never
//! allocates more than the sample limit it is given allows.

use crate::bits::{bit_width, unzigzag, zigzag, BitReader, BitWriter};
use crate::error::DecodeError;
use crate::ids::SensorId;

/// Version byte that starts every sample block; bumped if the layout changes.
pub const SAMPLE_ENCODING_V1: u8 = 1;

/// How far a sample can be trusted, as the source reported it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[repr(u8)]
pub enum Quality {
    /// The source reported a valid reading.
    #[default]
    Good = 0,
    /// The reading may be stale or out of calibration.
    Uncertain = 1,
    /// The source reported a failure; the value is a placeholder.
    Bad = 2,
}

impl Quality {
    fn from_bits(b: u64) -> Result<Self, DecodeError> {
        match b {
            0 => Ok(Self::Good),
            1 => Ok(Self::Uncertain),
            2 => Ok(Self::Bad),
            _ => Err(DecodeError::malformed("quality", format!("flag {b}"))),
        }
    }
}

/// The samples of one sensor within a batch, stored as columns (the way they are
/// encoded), in the order the agent produced them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    sensor: SensorId,
    timestamps_ns: Vec<i64>,
    values: Vec<f64>,
    quality: Vec<Quality>,
}

impl Series {
    /// An empty series for `sensor`.
    pub fn new(sensor: SensorId) -> Self {
        Self {
            sensor,
            ..Self::default()
        }
    }

    /// An empty series with room for `n` samples.
    pub fn with_capacity(sensor: SensorId, n: usize) -> Self {
        Self {
            sensor,
            timestamps_ns: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            quality: Vec::with_capacity(n),
        }
    }

    /// Appends one sample: nanoseconds since the Unix epoch, value, quality.
    pub fn push(&mut self, timestamp_ns: i64, value: f64, quality: Quality) {
        self.timestamps_ns.push(timestamp_ns);
        self.values.push(value);
        self.quality.push(quality);
    }

    /// The sensor these samples belong to.
    pub fn sensor(&self) -> SensorId {
        self.sensor
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.timestamps_ns.len()
    }

    /// True when the series holds no sample.
    pub fn is_empty(&self) -> bool {
        self.timestamps_ns.is_empty()
    }

    /// Sample timestamps, nanoseconds since the Unix epoch.
    pub fn timestamps_ns(&self) -> &[i64] {
        &self.timestamps_ns
    }

    /// Sample values.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Sample quality flags.
    pub fn quality(&self) -> &[Quality] {
        &self.quality
    }

    /// Iterates `(timestamp_ns, value, quality)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, f64, Quality)> + '_ {
        self.timestamps_ns
            .iter()
            .zip(&self.values)
            .zip(&self.quality)
            .map(|((t, v), q)| (*t, *v, *q))
    }
}

/// Samples per bit-packing block; each block spends 7 bits on its width.
const BLOCK: usize = 64;
/// Largest decimal exponent tried (values up to 2^53 / 10^9 stay exact).
const MAX_DECIMAL_EXPONENT: usize = 9;
/// Powers of ten, all exactly representable in an f64.
const POW10: [f64; MAX_DECIMAL_EXPONENT + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// The f64 nearest each negative power of ten: what a config's `scale = 0.1` holds.
const NEG_POW10: [f64; MAX_DECIMAL_EXPONENT + 1] =
    [1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9];
/// Integers beyond this lose exactness as f64.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

/// How decimal integers turn back into values.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DecimalMode {
    /// `i / 10^e`: the nearest f64 to the decimal (what parsing "230.17" gives).
    Divide = 0,
    /// `i * 10^-e`: what scaling a raw register by `0.01` gives.
    Multiply = 1,
}

#[inline]
fn from_decimal(i: i64, e: usize, mode: DecimalMode) -> f64 {
    match mode {
        DecimalMode::Divide => i as f64 / POW10[e],
        DecimalMode::Multiply => i as f64 * NEG_POW10[e],
    }
}

/// Converts `v` to an integer at exponent `e` if that is exact under `mode`.
#[inline]
fn to_decimal(v: f64, e: usize, mode: DecimalMode) -> Option<i64> {
    let scaled = (v * POW10[e]).round();
    // Also rejects NaN and infinities.
    if !scaled.is_finite() || scaled.abs() >= MAX_EXACT {
        return None;
    }
    let i = scaled as i64;
    (from_decimal(i, e, mode).to_bits() == v.to_bits()).then_some(i)
}

/// Finds the smallest exponent and a mode under which every value is an exact
/// decimal, leaving the integers in `ints`.
fn decimal_form(values: &[f64], ints: &mut Vec<i64>) -> Option<(usize, DecimalMode)> {
    let first = *values.first()?;
    for e in 0..=MAX_DECIMAL_EXPONENT {
        for mode in [DecimalMode::Divide, DecimalMode::Multiply] {
            // Cheap rejection on the first value before scanning the rest.
            if to_decimal(first, e, mode).is_none() {
                continue;
            }
            ints.clear();
            let all = values.iter().all(|v| match to_decimal(*v, e, mode) {
                Some(i) => {
                    ints.push(i);
                    true
                }
                None => false,
            });
            if all {
                return Some((e, mode));
            }
        }
    }
    None
}

/// Buffers reused across the series of one block.
#[derive(Default)]
struct Scratch {
    ints: Vec<i64>,
    residuals: Vec<u64>,
}

/// Appends the sample block for `series` to `out`.
pub(crate) fn encode_block(series: &[Series], out: &mut Vec<u8>) {
    out.push(SAMPLE_ENCODING_V1);
    let mut w = BitWriter::new(out);
    w.write_varint(series.len() as u64);
    let mut scratch = Scratch::default();
    for s in series {
        w.write_varint(u64::from(s.sensor.0));
        w.write_varint(s.len() as u64);
        if s.is_empty() {
            continue;
        }
        encode_ints(&mut w, &s.timestamps_ns, &mut scratch.residuals);
        encode_values(&mut w, &s.values, &mut scratch);
        encode_quality(&mut w, &s.quality);
    }
    w.finish();
}

/// Decodes a sample block, allowing at most `max_samples` samples in total.
pub(crate) fn decode_block(data: &[u8], max_samples: u64) -> Result<Vec<Series>, DecodeError> {
    let mut out = Vec::new();
    let mut ints = Vec::new();
    decode_block_with(data, max_samples, |r, sensor, n| {
        let mut s = Series::new(sensor);
        if n > 0 {
            s.timestamps_ns.resize(n, 0);
            s.values.resize(n, 0.0);
            s.quality.resize(n, Quality::Good);
            decode_ints(r, &mut s.timestamps_ns)?;
            decode_values(r, &mut s.values, &mut ints)?;
            decode_quality(r, &mut s.quality)?;
        }
        out.push(s);
        Ok(())
    })?;
    Ok(out)
}

/// Decodes a sample block into `out` (cleared first), allowing at most
/// `max_samples` samples in total. After each series' timestamps, `keep(index,
/// sensor, timestamps)` says whether its values and quality are wanted: when
/// not, they are checked as strictly as a decode checks them but not stored
/// (and, for the common decimal columns, not unpacked). On error `out` holds
/// some prefix of the block: use it only after `Ok`.
pub(crate) fn decode_block_into(
    data: &[u8],
    max_samples: u64,
    out: &mut SampleColumns,
    mut keep: impl FnMut(usize, SensorId, &[i64]) -> bool,
) -> Result<(), DecodeError> {
    out.clear();
    let mut index = 0;
    decode_block_with(data, max_samples, |r, sensor, n| {
        let ts = out.timestamps_ns.len();
        let values = out.values.len();
        let mut decoded = true;
        if n > 0 {
            // n is within the caller's sample limit (checked before this call).
            out.timestamps_ns.resize(ts + n, 0);
            decode_ints(r, &mut out.timestamps_ns[ts..])?;
            if keep(index, sensor, &out.timestamps_ns[ts..]) {
                out.values.resize(values + n, 0.0);
                out.quality.resize(values + n, Quality::Good);
                decode_values(r, &mut out.values[values..], &mut out.ints)?;
                decode_quality(r, &mut out.quality[values..])?;
            } else {
                skip_values(r, n, &mut out.values)?;
                skip_quality(r, n)?;
                decoded = false;
            }
        }
        out.runs.push(Run {
            sensor,
            ts,
            len: n,
            values: decoded.then_some(values),
        });
        index += 1;
        Ok(())
    })
}

/// The block's framing: version, series count, each series' sensor and length
/// (within the sample budget), handed to `series` to decode its columns, then
/// the padding check.
fn decode_block_with(
    data: &[u8],
    max_samples: u64,
    mut series: impl FnMut(&mut BitReader<'_>, SensorId, usize) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let (&version, rest) = data.split_first().ok_or(DecodeError::Truncated)?;
    if version != SAMPLE_ENCODING_V1 {
        return Err(DecodeError::UnknownEncoding(version));
    }
    let mut r = BitReader::new(rest);
    let count = r.read_varint()?;
    // Each series costs at least two bytes (sensor id and length), so this bounds
    // the allocation by the input size as well.
    if count > (rest.len() as u64) / 2 {
        return Err(DecodeError::malformed(
            "sample block",
            format!("{count} series"),
        ));
    }
    let mut budget = max_samples;
    for _ in 0..count {
        let sensor = r.read_varint()?;
        let sensor = u32::try_from(sensor)
            .map_err(|_| DecodeError::malformed("sample block", format!("sensor id {sensor}")))?;
        let n = r.read_varint()?;
        if n > budget {
            return Err(DecodeError::TooManySamples {
                declared: (max_samples - budget).saturating_add(n),
                limit: max_samples,
            });
        }
        budget -= n;
        // n <= max_samples, which the caller sized from the frame limit.
        series(&mut r, SensorId(sensor), n as usize)?;
    }
    // Only the zero padding of the last byte may remain.
    if r.remaining() >= 8 {
        return Err(DecodeError::TrailingBytes(r.remaining() / 8));
    }
    if r.read(r.remaining() as u32)? != 0 {
        return Err(DecodeError::malformed("sample block", "non-zero padding"));
    }
    Ok(())
}

/// The samples of a whole block as columns reused from one block to the next:
/// a consumer that decodes every record (the alert evaluator) allocates nothing
/// per record once they have grown to its largest block (at most one batch).
/// Filled by [`crate::record::decode_record_into`] and
/// [`crate::record::decode_record_filtered`].
///
/// ```
/// use ferrule_wire::record::decode_record_into;
/// use ferrule_wire::SampleColumns;
/// # fn f(records: &[Vec<u8>]) -> Result<(), ferrule_wire::DecodeError> {
/// let mut columns = SampleColumns::default();
/// for record in records {
///     let header = decode_record_into(record, 1 << 20, &mut columns)?;
///     for series in columns.series() {
///         for (ts_ns, value, quality) in series.iter() {
///             // ...
/// #           let _ = (&header, ts_ns, value, quality);
///         }
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct SampleColumns {
    timestamps_ns: Vec<i64>,
    /// Values and quality of the series whose values were decoded.
    values: Vec<f64>,
    quality: Vec<Quality>,
    runs: Vec<Run>,
    /// Scratch for decimal value columns.
    ints: Vec<i64>,
}

/// Where one series lies in the columns.
#[derive(Debug, Clone, Copy)]
struct Run {
    sensor: SensorId,
    /// Its first timestamp's index.
    ts: usize,
    len: usize,
    /// Its first value's index, if its values were decoded.
    values: Option<usize>,
}

impl SampleColumns {
    /// Empties it, keeping the memory.
    pub fn clear(&mut self) {
        self.timestamps_ns.clear();
        self.values.clear();
        self.quality.clear();
        self.runs.clear();
    }

    /// Samples in all series (whether or not their values were decoded).
    pub fn samples(&self) -> usize {
        self.timestamps_ns.len()
    }

    /// The series, in block order.
    pub fn series(&self) -> impl ExactSizeIterator<Item = SeriesRef<'_>> + '_ {
        self.runs.iter().map(|r| {
            // The ranges were pushed with the columns they index.
            let (values, quality): (&[f64], &[Quality]) = match r.values {
                Some(v) => (&self.values[v..v + r.len], &self.quality[v..v + r.len]),
                None => (&[], &[]),
            };
            SeriesRef {
                sensor: r.sensor,
                timestamps_ns: &self.timestamps_ns[r.ts..r.ts + r.len],
                values,
                quality,
                decoded: r.values.is_some(),
            }
        })
    }
}

/// One series of a [`SampleColumns`], borrowed. A series whose values were
/// not wanted ([`crate::record::decode_record_filtered`]) has its timestamps
/// only: its values and quality are empty, and [`SeriesRef::iter`] yields
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesRef<'a> {
    sensor: SensorId,
    timestamps_ns: &'a [i64],
    values: &'a [f64],
    quality: &'a [Quality],
    decoded: bool,
}

impl<'a> SeriesRef<'a> {
    /// The sensor these samples belong to.
    pub fn sensor(&self) -> SensorId {
        self.sensor
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.timestamps_ns.len()
    }

    /// True when the series holds no sample.
    pub fn is_empty(&self) -> bool {
        self.timestamps_ns.is_empty()
    }

    /// False when its values and quality were not wanted, so not decoded.
    pub fn has_values(&self) -> bool {
        self.decoded
    }

    /// Sample timestamps, nanoseconds since the Unix epoch.
    pub fn timestamps_ns(&self) -> &'a [i64] {
        self.timestamps_ns
    }

    /// Sample values (empty unless [`SeriesRef::has_values`]).
    pub fn values(&self) -> &'a [f64] {
        self.values
    }

    /// Sample quality flags (empty unless [`SeriesRef::has_values`]).
    pub fn quality(&self) -> &'a [Quality] {
        self.quality
    }

    /// Iterates `(timestamp_ns, value, quality)` in order (nothing unless
    /// [`SeriesRef::has_values`]).
    pub fn iter(&self) -> impl Iterator<Item = (i64, f64, Quality)> + 'a {
        self.timestamps_ns
            .iter()
            .zip(self.values)
            .zip(self.quality)
            .map(|((t, v), q)| (*t, *v, *q))
    }
}

/// Residual of order `k` at index `i` (`i >= k`), zigzagged.
#[inline]
fn residual(v: &[i64], i: usize, k: usize) -> u64 {
    match k {
        0 => zigzag(v[i]),
        1 => zigzag(v[i].wrapping_sub(v[i - 1])),
        _ => zigzag(
            v[i].wrapping_sub(v[i - 1])
                .wrapping_sub(v[i - 1].wrapping_sub(v[i - 2])),
        ),
    }
}

fn varint_bits(v: u64) -> u64 {
    8 * u64::from(bit_width(v).max(1).div_ceil(7))
}

/// Encodes integers with the cheapest of order 0, 1 or 2 differences.
fn encode_ints(w: &mut BitWriter<'_>, v: &[i64], residuals: &mut Vec<u64>) {
    let n = v.len();
    // Cost every order in one pass; blocks are aligned to sample indexes so all
    // orders share boundaries.
    let mut cost = [0u64; 3];
    let mut acc = [0u64; 3];
    let mut in_block = [0u64; 3];
    for (k, c) in cost.iter_mut().enumerate() {
        *c = (0..k.min(n))
            .map(|i| varint_bits(residual_first(v, i)))
            .sum();
    }
    for i in 0..n {
        if i % BLOCK == 0 && i > 0 {
            for k in 0..3 {
                if in_block[k] > 0 {
                    cost[k] += 7 + u64::from(bit_width(acc[k])) * in_block[k];
                }
                acc[k] = 0;
                in_block[k] = 0;
            }
        }
        for k in 0..3 {
            if i >= k {
                acc[k] |= residual(v, i, k);
                in_block[k] += 1;
            }
        }
    }
    for k in 0..3 {
        if in_block[k] > 0 {
            cost[k] += 7 + u64::from(bit_width(acc[k])) * in_block[k];
        }
    }
    let order = (0..3).min_by_key(|k| cost[*k]).unwrap_or(0);
    w.write(order as u64, 2);
    for i in 0..order.min(n) {
        w.write_varint(residual_first(v, i));
    }
    if n <= order {
        return;
    }
    residuals.clear();
    match order {
        0 => residuals.extend(v.iter().map(|x| zigzag(*x))),
        1 => residuals.extend(v.windows(2).map(|p| zigzag(p[1].wrapping_sub(p[0])))),
        _ => residuals.extend(v.windows(3).map(|p| {
            zigzag(
                p[2].wrapping_sub(p[1])
                    .wrapping_sub(p[1].wrapping_sub(p[0])),
            )
        })),
    }
    // residuals[j] belongs to sample order + j; blocks align to sample indexes.
    let mut i = order;
    while i < n {
        let end = (i / BLOCK + 1) * BLOCK;
        let end = end.min(n);
        let block = &residuals[i - order..end - order];
        let width = bit_width(block.iter().fold(0, |a, r| a | r));
        w.write(u64::from(width), 7);
        if width > 0 {
            for r in block {
                w.write(*r, width);
            }
        }
        i = end;
    }
}

/// The stored leading values: `v0`, then `v1 - v0`, zigzagged.
fn residual_first(v: &[i64], i: usize) -> u64 {
    if i == 0 {
        zigzag(v[0])
    } else {
        zigzag(v[1].wrapping_sub(v[0]))
    }
}

/// Decodes an integer column of `out.len()` values into `out`.
fn decode_ints(r: &mut BitReader<'_>, out: &mut [i64]) -> Result<(), DecodeError> {
    let n = out.len();
    let order = r.read(2)? as usize;
    if order > 2 {
        return Err(DecodeError::malformed(
            "integer column",
            format!("order {order}"),
        ));
    }
    let mut prev = 0i64;
    let mut delta = 0i64;
    for (i, o) in out.iter_mut().take(order).enumerate() {
        let x = unzigzag(r.read_varint()?);
        if i == 0 {
            prev = x;
        } else {
            delta = x;
            prev = prev.wrapping_add(x);
        }
        *o = prev;
    }
    let mut raw = [0u64; BLOCK];
    let mut i = order;
    while i < n {
        let end = ((i / BLOCK + 1) * BLOCK).min(n);
        let width = r.read(7)? as u32;
        if width > 64 {
            return Err(DecodeError::malformed(
                "integer column",
                format!("width {width}"),
            ));
        }
        if r.remaining() < width as usize * (end - i) {
            return Err(DecodeError::Truncated);
        }
        // Unpack the block, then one loop per order (the branch stays out of
        // the per-sample path, the running sums in registers).
        let fields = &mut raw[..end - i];
        r.read_run(width, fields)?;
        let out = &mut out[i..end];
        match order {
            0 => {
                for (o, x) in out.iter_mut().zip(fields.iter()) {
                    *o = unzigzag(*x);
                }
            }
            1 => {
                for (o, x) in out.iter_mut().zip(fields.iter()) {
                    prev = prev.wrapping_add(unzigzag(*x));
                    *o = prev;
                }
            }
            _ => {
                for (o, x) in out.iter_mut().zip(fields.iter()) {
                    delta = delta.wrapping_add(unzigzag(*x));
                    prev = prev.wrapping_add(delta);
                    *o = prev;
                }
            }
        }
        i = end;
    }
    Ok(())
}

/// Checks and passes over an integer column of `n` values, as
/// [`decode_ints`] would read it, without unpacking its blocks.
fn skip_ints(r: &mut BitReader<'_>, n: usize) -> Result<(), DecodeError> {
    let order = r.read(2)? as usize;
    if order > 2 {
        return Err(DecodeError::malformed(
            "integer column",
            format!("order {order}"),
        ));
    }
    for _ in 0..order.min(n) {
        r.read_varint()?;
    }
    let mut i = order;
    while i < n {
        let end = ((i / BLOCK + 1) * BLOCK).min(n);
        let width = r.read(7)? as u32;
        if width > 64 {
            return Err(DecodeError::malformed(
                "integer column",
                format!("width {width}"),
            ));
        }
        r.skip(width as usize * (end - i))?;
        i = end;
    }
    Ok(())
}

fn encode_values(w: &mut BitWriter<'_>, values: &[f64], scratch: &mut Scratch) {
    if let Some((e, mode)) = decimal_form(values, &mut scratch.ints) {
        w.write(0, 1);
        w.write(e as u64, 4);
        w.write(mode as u64, 1);
        let ints = std::mem::take(&mut scratch.ints);
        encode_ints(w, &ints, &mut scratch.residuals);
        scratch.ints = ints;
    } else {
        w.write(1, 1);
        encode_xor(w, values);
    }
}

/// Decodes a value column of `out.len()` values into `out`, with `ints` as
/// scratch.
fn decode_values(
    r: &mut BitReader<'_>,
    out: &mut [f64],
    ints: &mut Vec<i64>,
) -> Result<(), DecodeError> {
    if r.read(1)? == 0 {
        let e = r.read(4)? as usize;
        if e > MAX_DECIMAL_EXPONENT {
            return Err(DecodeError::malformed(
                "value column",
                format!("exponent {e}"),
            ));
        }
        let mode = if r.read(1)? == 0 {
            DecimalMode::Divide
        } else {
            DecimalMode::Multiply
        };
        ints.clear();
        ints.resize(out.len(), 0);
        decode_ints(r, ints)?;
        // `from_decimal`, with the mode's branch out of the loop.
        // e <= MAX_DECIMAL_EXPONENT, checked above.
        let pairs = out.iter_mut().zip(ints.iter());
        match mode {
            DecimalMode::Divide => {
                let p = POW10[e];
                pairs.for_each(|(v, i)| *v = *i as f64 / p);
            }
            DecimalMode::Multiply => {
                let p = NEG_POW10[e];
                pairs.for_each(|(v, i)| *v = *i as f64 * p);
            }
        }
        Ok(())
    } else {
        decode_xor(r, out)
    }
}

/// Checks and passes over a value column of `n` values, as [`decode_values`]
/// would read it; `scratch` is left as it was.
fn skip_values(r: &mut BitReader<'_>, n: usize, scratch: &mut Vec<f64>) -> Result<(), DecodeError> {
    if r.read(1)? == 0 {
        let e = r.read(4)? as usize;
        if e > MAX_DECIMAL_EXPONENT {
            return Err(DecodeError::malformed(
                "value column",
                format!("exponent {e}"),
            ));
        }
        r.read(1)?;
        skip_ints(r, n)
    } else {
        // Each XOR value's length depends on the one before: decode them
        // (rare: only values no decimal form fits).
        let at = scratch.len();
        scratch.resize(at + n, 0.0);
        let result = decode_xor(r, &mut scratch[at..]);
        scratch.truncate(at);
        result
    }
}

/// Gorilla's XOR float encoding, exact for every bit pattern.
fn encode_xor(w: &mut BitWriter<'_>, values: &[f64]) {
    let mut prev = values[0].to_bits();
    w.write(prev, 64);
    // Window of the previous meaningful bits: (leading zeros, length); length 0 = none.
    let (mut lead, mut len) = (0u32, 0u32);
    for v in &values[1..] {
        let bits = v.to_bits();
        let x = bits ^ prev;
        prev = bits;
        if x == 0 {
            w.write(0, 1);
            continue;
        }
        let lz = x.leading_zeros().min(31);
        let tz = x.trailing_zeros();
        if len > 0 && lz >= lead && tz >= 64 - lead - len {
            w.write(0b10, 2);
            w.write(x >> (64 - lead - len), len);
        } else {
            lead = lz;
            len = 64 - lz - tz;
            w.write(0b11, 2);
            w.write(u64::from(lead), 5);
            w.write(u64::from(len - 1), 6);
            w.write(x >> tz, len);
        }
    }
}

fn decode_xor(r: &mut BitReader<'_>, out: &mut [f64]) -> Result<(), DecodeError> {
    let Some((first, rest)) = out.split_first_mut() else {
        return Ok(());
    };
    let mut prev = r.read(64)?;
    *first = f64::from_bits(prev);
    let (mut lead, mut len) = (0u32, 0u32);
    for o in rest {
        if r.read(1)? == 1 {
            if r.read(1)? == 1 {
                lead = r.read(5)? as u32;
                len = r.read(6)? as u32 + 1;
                if lead + len > 64 {
                    return Err(DecodeError::malformed(
                        "value column",
                        format!("xor window {lead}+{len} bits"),
                    ));
                }
            } else if len == 0 {
                return Err(DecodeError::malformed(
                    "value column",
                    "xor window reused before set",
                ));
            }
            prev ^= r.read(len)? << (64 - lead - len);
        }
        *o = f64::from_bits(prev);
    }
    Ok(())
}

fn encode_quality(w: &mut BitWriter<'_>, q: &[Quality]) {
    let first = q[0];
    if q.iter().all(|x| *x == first) {
        w.write(0, 1);
        w.write(first as u64, 2);
    } else {
        w.write(1, 1);
        for x in q {
            w.write(*x as u64, 2);
        }
    }
}

fn decode_quality(r: &mut BitReader<'_>, out: &mut [Quality]) -> Result<(), DecodeError> {
    if r.read(1)? == 0 {
        let q = Quality::from_bits(r.read(2)?)?;
        out.fill(q);
    } else {
        for o in out {
            *o = Quality::from_bits(r.read(2)?)?;
        }
    }
    Ok(())
}

/// Checks and passes over a quality column of `n` flags.
fn skip_quality(r: &mut BitReader<'_>, n: usize) -> Result<(), DecodeError> {
    if r.read(1)? == 0 {
        Quality::from_bits(r.read(2)?)?;
    } else {
        for _ in 0..n {
            Quality::from_bits(r.read(2)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(series: &[Series]) -> usize {
        let mut buf = Vec::new();
        encode_block(series, &mut buf);
        let back = decode_block(&buf, u64::MAX).unwrap();
        assert_eq!(back.len(), series.len());
        for (a, b) in series.iter().zip(&back) {
            assert_eq!(a.sensor, b.sensor);
            assert_eq!(a.timestamps_ns, b.timestamps_ns);
            assert_eq!(a.quality, b.quality);
            let ab: Vec<u64> = a.values.iter().map(|v| v.to_bits()).collect();
            let bb: Vec<u64> = b.values.iter().map(|v| v.to_bits()).collect();
            assert_eq!(ab, bb);
        }
        buf.len()
    }

    #[test]
    fn regular_clock_and_decimal_values_are_cheap() {
        let mut s = Series::new(SensorId(7));
        for i in 0..1000i64 {
            s.push(
                1_700_000_000_000_000_000 + i * 1_000_000,
                230.0 + (i % 7) as f64 / 100.0,
                Quality::Good,
            );
        }
        let bytes = round_trip(&[s]);
        // 0 bits of timestamp and a few bits of value per sample.
        assert!(bytes < 1000, "{bytes} bytes for 1000 samples");
    }

    #[test]
    fn special_floats_survive_bit_for_bit() {
        let mut s = Series::new(SensorId(1));
        let specials = [
            0.0,
            -0.0,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            5e-324,
        ];
        for (i, v) in specials.iter().enumerate() {
            s.push(i as i64 * 17 - 3, *v, Quality::Bad);
        }
        round_trip(&[s]);
    }

    #[test]
    fn extreme_timestamps_wrap_and_come_back() {
        let mut s = Series::new(SensorId(u32::MAX));
        for t in [i64::MIN, i64::MAX, 0, i64::MIN, -1, i64::MAX] {
            s.push(t, 1.5, Quality::Uncertain);
        }
        round_trip(&[s, Series::new(SensorId(0))]);
    }

    #[test]
    fn scaled_register_values_use_the_decimal_path() {
        // A Modbus register scaled by 0.1 yields 2301 * 0.1, not the f64 nearest 230.1.
        let values: Vec<f64> = (2290..2310).map(|r| f64::from(r) * 0.1).collect();
        let mut ints = Vec::new();
        assert_eq!(
            decimal_form(&values, &mut ints),
            Some((1, DecimalMode::Multiply))
        );
        assert_eq!(ints, (2290..2310).collect::<Vec<i64>>());
        let values: Vec<f64> = ["230.1", "229.95", "231"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            decimal_form(&values, &mut ints),
            Some((2, DecimalMode::Divide))
        );
        assert_eq!(ints, vec![23010, 22995, 23100]);
        assert_eq!(decimal_form(&[f64::NAN], &mut ints), None);
        assert_eq!(decimal_form(&[-0.0], &mut ints), None);
    }

    #[test]
    fn sample_limit_is_enforced_before_allocating() {
        let mut s = Series::new(SensorId(1));
        for i in 0..100 {
            s.push(i, 1.0, Quality::Good);
        }
        let mut buf = Vec::new();
        encode_block(&[s.clone(), s], &mut buf);
        assert!(decode_block(&buf, 200).is_ok());
        assert_eq!(
            decode_block(&buf, 150),
            Err(DecodeError::TooManySamples {
                declared: 200,
                limit: 150
            })
        );
    }

    #[test]
    fn corrupt_blocks_are_errors() {
        assert_eq!(decode_block(&[], 10), Err(DecodeError::Truncated));
        assert_eq!(decode_block(&[9], 10), Err(DecodeError::UnknownEncoding(9)));
        // One series claiming 5 samples, then nothing.
        assert_eq!(decode_block(&[1, 1, 3, 5], 10), Err(DecodeError::Truncated));
    }
}
