//! The register map: what one configured point is (which table, which address, how
//! many registers, how its bytes are ordered, how it is scaled) and how raw
//! registers or bits become a value. Pure: no I/O, no clock.
//!
//! Invariants:
//! - A [`Point`] covers `address..address + len()` of its table and never reaches
//!   past address 65535 (`Point::new` refuses it).
//! - [`decode`] is exact when no scaling is configured: integers up to 32 bits and
//!   `f64` give the value the device encoded (an `f64` bit for bit, -0.0
//!   included), an `f32` is widened exactly (NaN stays NaN); 64-bit integers
//!   round to the nearest `f64` beyond 2^53.
//! - Scaling by a negative power of ten (`scale = 0.1`, `0.01`, ...) divides by the
//!   exact power of ten, so a raw 2301 at `scale = 0.1` is the `f64` nearest 230.1
//!   (multiplying would give 230.10000000000002).

use serde::Deserialize;
use std::fmt;

/// The four Modbus data tables, each with its own address space and read function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Read-write bits, function 0x01.
    Coil,
    /// Read-only bits, function 0x02.
    Discrete,
    /// Read-write 16-bit registers, function 0x03.
    Holding,
    /// Read-only 16-bit registers, function 0x04.
    Input,
}

impl Kind {
    /// True for the two bit tables (coils and discrete inputs).
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coil | Self::Discrete)
    }

    /// The Modbus function code that reads this table (for logs).
    pub fn function_code(self) -> u8 {
        match self {
            Self::Coil => 0x01,
            Self::Discrete => 0x02,
            Self::Holding => 0x03,
            Self::Input => 0x04,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Coil => "coil",
            Self::Discrete => "discrete",
            Self::Holding => "holding",
            Self::Input => "input",
        })
    }
}

/// How the registers of a point are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Four registers, unsigned (energy counters); exact up to 2^53.
    U64,
    /// Four registers, two's complement; exact up to ±2^53.
    I64,
    /// Two registers, IEEE 754 single precision.
    F32,
    /// Four registers, IEEE 754 double precision.
    F64,
    /// One coil or discrete input: 0 or 1.
    Bool,
}

impl ValueType {
    /// Registers (or bits, for `bool`) the value occupies.
    pub fn width(self) -> u16 {
        match self {
            Self::U16 | Self::I16 | Self::Bool => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
            Self::U64 | Self::I64 | Self::F64 => 4,
        }
    }

    /// Whether a point of this type can live in table `kind`: `bool` only in the
    /// bit tables, everything else only in the register tables.
    pub fn fits(self, kind: Kind) -> bool {
        (self == Self::Bool) == kind.is_bits()
    }

    /// The type a point of table `kind` has when the config names none.
    pub fn default_for(kind: Kind) -> Self {
        if kind.is_bits() {
            Self::Bool
        } else {
            Self::U16
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::Bool => "bool",
        })
    }
}

/// Byte order within a register, or word order across registers.
///
/// Modbus itself sends each register big-endian ("AB"); devices differ in how they
/// split wider values. Naming the bytes of a 32-bit value `ABCD`, most significant
/// first:
///
/// | `byte_order` | `word_order` | registers, in address order |
/// |--------------|--------------|-----------------------------|
/// | big          | big          | `AB CD` (ABCD)              |
/// | big          | little       | `CD AB` (CDAB)              |
/// | little       | big          | `BA DC` (BADC)              |
/// | little       | little       | `DC BA` (DCBA)              |
///
/// 64-bit values follow the same rule over four registers (`GH EF CD AB` for big
/// bytes and little words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Most significant first (the Modbus convention).
    #[default]
    Big,
    /// Least significant first.
    Little,
}

/// `value = raw * scale + offset`, computed so that decimal scales give the
/// nearest double.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scaling {
    /// `scale = 1`, `offset = 0`: the raw value untouched (keeps -0.0 and NaN bits).
    Identity,
    /// `scale = 10^-k` for k in 1..=9: `raw / 10^k + offset`.
    DividePow10 {
        /// `10^k`, exact.
        divisor: f64,
        /// Added after dividing.
        offset: f64,
    },
    /// Any other scale: `raw * scale + offset`.
    Multiply {
        /// The configured factor.
        scale: f64,
        /// Added after multiplying.
        offset: f64,
    },
}

/// The `f64` a config's `scale = 0.1` (etc.) parses to, and the exact divisor it stands for.
const DECIMAL_SCALES: [(f64, f64); 9] = [
    (1e-1, 1e1),
    (1e-2, 1e2),
    (1e-3, 1e3),
    (1e-4, 1e4),
    (1e-5, 1e5),
    (1e-6, 1e6),
    (1e-7, 1e7),
    (1e-8, 1e8),
    (1e-9, 1e9),
];

impl Scaling {
    /// The scaling for a configured `scale` and `offset`.
    ///
    /// ```
    /// use ferrule_agent::inputs::modbus::map::Scaling;
    /// assert_eq!(Scaling::new(0.1, 0.0).apply(2301.0), 230.1);
    /// assert_eq!(Scaling::new(2.0, 1.0).apply(20.0), 41.0);
    /// ```
    pub fn new(scale: f64, offset: f64) -> Self {
        if scale == 1.0 && offset == 0.0 {
            return Self::Identity;
        }
        // Exact comparison on purpose: only the f64 that a decimal literal such as
        // 0.01 parses to stands for the decimal scale.
        if let Some(&(_, divisor)) = DECIMAL_SCALES.iter().find(|(s, _)| *s == scale) {
            return Self::DividePow10 { divisor, offset };
        }
        Self::Multiply { scale, offset }
    }

    /// The scaled value of `raw`.
    pub fn apply(self, raw: f64) -> f64 {
        let (v, offset) = match self {
            Self::Identity => return raw,
            Self::DividePow10 { divisor, offset } => (raw / divisor, offset),
            Self::Multiply { scale, offset } => (raw * scale, offset),
        };
        // Adding 0.0 would turn -0.0 into 0.0; skip it.
        if offset == 0.0 {
            v
        } else {
            v + offset
        }
    }
}

/// One point of the register map, resolved and checked: everything needed to plan
/// its read and decode its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    kind: Kind,
    address: u16,
    ty: ValueType,
    byte_order: Order,
    word_order: Order,
    scaling: Scaling,
}

/// Why a point cannot exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PointError {
    /// `f32` on a coil, `bool` on a holding register, ...
    #[error("type {ty} does not fit a {kind} (bits are bool, registers are not)")]
    TypeDoesNotFit {
        /// The table.
        kind: Kind,
        /// The configured type.
        ty: ValueType,
    },
    /// The point's last register would be past address 65535.
    #[error("{ty} at {address} runs past address 65535")]
    PastEnd {
        /// First address.
        address: u16,
        /// The configured type.
        ty: ValueType,
    },
}

impl Point {
    /// A point of table `kind` at `address`, checked to fit.
    pub fn new(
        kind: Kind,
        address: u16,
        ty: ValueType,
        byte_order: Order,
        word_order: Order,
        scaling: Scaling,
    ) -> Result<Self, PointError> {
        if !ty.fits(kind) {
            return Err(PointError::TypeDoesNotFit { kind, ty });
        }
        if u32::from(address) + u32::from(ty.width()) > 0x1_0000 {
            return Err(PointError::PastEnd { address, ty });
        }
        Ok(Self {
            kind,
            address,
            ty,
            byte_order,
            word_order,
            scaling,
        })
    }

    /// A big-endian, unscaled point (tests and examples).
    pub fn plain(kind: Kind, address: u16, ty: ValueType) -> Result<Self, PointError> {
        Self::new(kind, address, ty, Order::Big, Order::Big, Scaling::Identity)
    }

    /// The table.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// First address.
    pub fn address(&self) -> u16 {
        self.address
    }

    /// The value type.
    pub fn value_type(&self) -> ValueType {
        self.ty
    }

    /// Registers (or bits) covered.
    pub fn width(&self) -> u16 {
        self.ty.width()
    }

    /// One past the last address covered (up to 65536, hence `u32`).
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.ty.width())
    }
}

/// Why registers could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The response held fewer registers or bits than the point needs.
    #[error("{ty} needs {needed} registers or bits, got {got}")]
    Length {
        /// The point's type.
        ty: ValueType,
        /// What it needs.
        needed: u16,
        /// What was there.
        got: usize,
    },
    /// Registers given for a bit point, or bits for a register point.
    #[error("{ty} cannot be decoded from {given}")]
    WrongTable {
        /// The point's type.
        ty: ValueType,
        /// "registers" or "bits".
        given: &'static str,
    },
}

/// The scaled value of register `point` from `words`, the registers starting at the
/// point's address (extra registers after it are ignored).
///
/// ```
/// use ferrule_agent::inputs::modbus::map::{decode, Kind, Order, Point, Scaling, ValueType};
/// // 123.456f32 is 0x42F6E979; a "CDAB" device sends the low word first.
/// let p = Point::new(Kind::Holding, 0, ValueType::F32, Order::Big, Order::Little, Scaling::Identity)?;
/// assert_eq!(decode(&[0xE979, 0x42F6], &p)?, f64::from(123.456f32));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode(words: &[u16], point: &Point) -> Result<f64, DecodeError> {
    let raw = raw_value(words, point)?;
    Ok(point.scaling.apply(raw))
}

/// The scaled value of bit `point` (0 or 1 before scaling).
pub fn decode_bit(bit: bool, point: &Point) -> Result<f64, DecodeError> {
    if point.ty != ValueType::Bool {
        return Err(DecodeError::WrongTable {
            ty: point.ty,
            given: "bits",
        });
    }
    Ok(point.scaling.apply(if bit { 1.0 } else { 0.0 }))
}

/// The unscaled value: registers reordered to big-endian bytes, then read as the type.
fn raw_value(words: &[u16], point: &Point) -> Result<f64, DecodeError> {
    let n = usize::from(point.ty.width());
    if point.ty == ValueType::Bool {
        return Err(DecodeError::WrongTable {
            ty: point.ty,
            given: "registers",
        });
    }
    let words = words.get(..n).ok_or(DecodeError::Length {
        ty: point.ty,
        needed: point.ty.width(),
        got: words.len(),
    })?;
    // Most significant byte first, at most 8 bytes.
    let mut bytes = [0u8; 8];
    for (i, w) in words.iter().enumerate() {
        let w = match point.byte_order {
            Order::Big => *w,
            Order::Little => w.swap_bytes(),
        };
        // Word order only matters across registers; a 16-bit value has one.
        let slot = match point.word_order {
            Order::Big => i,
            Order::Little => n - 1 - i,
        };
        bytes[slot * 2..slot * 2 + 2].copy_from_slice(&w.to_be_bytes());
    }
    let [b0, b1, b2, b3, ..] = bytes;
    Ok(match point.ty {
        ValueType::U16 => f64::from(u16::from_be_bytes([b0, b1])),
        ValueType::I16 => f64::from(i16::from_be_bytes([b0, b1])),
        ValueType::U32 => f64::from(u32::from_be_bytes([b0, b1, b2, b3])),
        ValueType::I32 => f64::from(i32::from_be_bytes([b0, b1, b2, b3])),
        ValueType::F32 => f64::from(f32::from_be_bytes([b0, b1, b2, b3])),
        // Nearest f64 beyond 2^53, which is what a counter that large can carry.
        ValueType::U64 => u64::from_be_bytes(bytes) as f64,
        ValueType::I64 => i64::from_be_bytes(bytes) as f64,
        ValueType::F64 => f64::from_be_bytes(bytes),
        // Refused above.
        ValueType::Bool => 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Order::{Big, Little};

    fn point(ty: ValueType, byte: Order, word: Order) -> Point {
        Point::new(Kind::Holding, 10, ty, byte, word, Scaling::Identity).unwrap()
    }

    fn dec(words: &[u16], ty: ValueType, byte: Order, word: Order) -> f64 {
        decode(words, &point(ty, byte, word)).unwrap()
    }

    #[test]
    fn sixteen_bit_types() {
        assert_eq!(dec(&[0xC822], ValueType::U16, Big, Big), 51234.0);
        assert_eq!(dec(&[0xFB2E], ValueType::I16, Big, Big), -1234.0);
        assert_eq!(dec(&[0x8000], ValueType::I16, Big, Big), -32768.0);
        assert_eq!(dec(&[0x7FFF], ValueType::I16, Big, Big), 32767.0);
        assert_eq!(dec(&[0xFFFF], ValueType::U16, Big, Big), 65535.0);
        // Little byte order swaps the register's bytes; word order has nothing to do.
        assert_eq!(dec(&[0x3412], ValueType::U16, Little, Big), 4660.0);
        assert_eq!(dec(&[0x3412], ValueType::U16, Little, Little), 4660.0);
        assert_eq!(dec(&[0x2EFB], ValueType::I16, Little, Big), -1234.0);
        assert_eq!(dec(&[0x1234], ValueType::U16, Big, Little), 4660.0);
    }

    /// Bytes ABCD of a 32-bit pattern in each of the four register layouts.
    fn layouts32(x: u32) -> [(Order, Order, [u16; 2]); 4] {
        let [a, b, c, d] = x.to_be_bytes();
        let w = |h: u8, l: u8| u16::from_be_bytes([h, l]);
        [
            (Big, Big, [w(a, b), w(c, d)]),       // ABCD
            (Big, Little, [w(c, d), w(a, b)]),    // CDAB
            (Little, Big, [w(b, a), w(d, c)]),    // BADC
            (Little, Little, [w(d, c), w(b, a)]), // DCBA
        ]
    }

    #[test]
    fn thirty_two_bit_types_in_every_order() {
        // 123.456f32 = 0x42F6E979, spelled out once to pin the table itself.
        assert_eq!(
            layouts32(0x42F6_E979).map(|(_, _, w)| w),
            [
                [0x42F6, 0xE979],
                [0xE979, 0x42F6],
                [0xF642, 0x79E9],
                [0x79E9, 0xF642]
            ]
        );
        for (byte, word, w) in layouts32(123.456f32.to_bits()) {
            assert_eq!(
                dec(&w, ValueType::F32, byte, word),
                f64::from(123.456f32),
                "{byte:?}/{word:?}"
            );
        }
        for (byte, word, w) in layouts32(3_000_000_123) {
            assert_eq!(dec(&w, ValueType::U32, byte, word), 3_000_000_123.0);
        }
        for (byte, word, w) in layouts32((-2_000_000_123i32) as u32) {
            assert_eq!(dec(&w, ValueType::I32, byte, word), -2_000_000_123.0);
        }
        for (byte, word, w) in layouts32(u32::MAX) {
            assert_eq!(dec(&w, ValueType::I32, byte, word), -1.0);
            assert_eq!(dec(&w, ValueType::U32, byte, word), 4_294_967_295.0);
        }
    }

    fn layouts64(x: u64) -> [(Order, Order, [u16; 4]); 4] {
        let b = x.to_be_bytes();
        let w = |i: usize| u16::from_be_bytes([b[2 * i], b[2 * i + 1]]);
        let sw = |i: usize| w(i).swap_bytes();
        [
            (Big, Big, [w(0), w(1), w(2), w(3)]),
            (Big, Little, [w(3), w(2), w(1), w(0)]),
            (Little, Big, [sw(0), sw(1), sw(2), sw(3)]),
            (Little, Little, [sw(3), sw(2), sw(1), sw(0)]),
        ]
    }

    #[test]
    fn sixty_four_bit_types_in_every_order() {
        // e = 0x4005BF0A8B145769.
        assert_eq!(
            layouts64(std::f64::consts::E.to_bits()).map(|(_, _, w)| w),
            [
                [0x4005, 0xBF0A, 0x8B14, 0x5769],
                [0x5769, 0x8B14, 0xBF0A, 0x4005],
                [0x0540, 0x0ABF, 0x148B, 0x6957],
                [0x6957, 0x148B, 0x0ABF, 0x0540],
            ]
        );
        for (byte, word, w) in layouts64(std::f64::consts::E.to_bits()) {
            assert_eq!(dec(&w, ValueType::F64, byte, word), std::f64::consts::E);
        }
        for (byte, word, w) in layouts64(9_007_199_254_740_993) {
            // 2^53 + 1 has no f64; the nearest is 2^53.
            assert_eq!(dec(&w, ValueType::U64, byte, word), 9_007_199_254_740_992.0);
        }
        for (byte, word, w) in layouts64((-5_000_000_000i64) as u64) {
            assert_eq!(dec(&w, ValueType::I64, byte, word), -5_000_000_000.0);
        }
    }

    #[test]
    fn float_bit_patterns_survive_unscaled() {
        for bits in [0x8000_0000u32, 0x7FC0_0001, 0x7F80_0000, 0x0000_0001] {
            let v = dec(
                &[(bits >> 16) as u16, bits as u16],
                ValueType::F32,
                Big,
                Big,
            );
            assert_eq!(v.to_bits(), f64::from(f32::from_bits(bits)).to_bits());
        }
        let neg_zero = (-0.0f64).to_bits();
        let w = [
            (neg_zero >> 48) as u16,
            (neg_zero >> 32) as u16,
            (neg_zero >> 16) as u16,
            neg_zero as u16,
        ];
        assert_eq!(dec(&w, ValueType::F64, Big, Big).to_bits(), neg_zero);
    }

    #[test]
    fn scaling_gives_the_nearest_decimal() {
        let p = |scale, offset| {
            Point::new(
                Kind::Input,
                0,
                ValueType::I16,
                Big,
                Big,
                Scaling::new(scale, offset),
            )
            .unwrap()
        };
        assert_eq!(decode(&[2301], &p(0.1, 0.0)).unwrap(), 230.1);
        assert_ne!(2301.0 * 0.1, 230.1, "the reason DividePow10 exists");
        assert_eq!(decode(&[0xFE0C], &p(0.01, 1.0)).unwrap(), -4.0);
        assert_eq!(decode(&[12345], &p(0.001, 0.0)).unwrap(), 12.345);
        assert_eq!(decode(&[7], &p(2.5, -1.0)).unwrap(), 16.5);
        assert_eq!(decode(&[7], &p(10.0, 0.0)).unwrap(), 70.0);
        assert_eq!(
            Scaling::new(0.1, 0.0),
            Scaling::DividePow10 {
                divisor: 10.0,
                offset: 0.0
            }
        );
        assert_eq!(
            Scaling::new(0.5, 0.0),
            Scaling::Multiply {
                scale: 0.5,
                offset: 0.0
            }
        );
        assert_eq!(Scaling::new(1.0, 0.0), Scaling::Identity);
    }

    #[test]
    fn bits() {
        let coil = Point::plain(Kind::Coil, 3, ValueType::Bool).unwrap();
        assert_eq!(decode_bit(true, &coil).unwrap(), 1.0);
        assert_eq!(decode_bit(false, &coil).unwrap(), 0.0);
        assert!(decode(&[1], &coil).is_err());
        let reg = Point::plain(Kind::Holding, 3, ValueType::U16).unwrap();
        assert!(decode_bit(true, &reg).is_err());
    }

    #[test]
    fn short_responses_and_bad_points_are_errors() {
        assert_eq!(
            decode(&[1], &point(ValueType::U32, Big, Big)),
            Err(DecodeError::Length {
                ty: ValueType::U32,
                needed: 2,
                got: 1
            })
        );
        assert!(matches!(
            Point::plain(Kind::Coil, 0, ValueType::F32),
            Err(PointError::TypeDoesNotFit { .. })
        ));
        assert!(matches!(
            Point::plain(Kind::Holding, 0, ValueType::Bool),
            Err(PointError::TypeDoesNotFit { .. })
        ));
        assert!(Point::plain(Kind::Holding, 65534, ValueType::U32).is_ok());
        assert!(matches!(
            Point::plain(Kind::Holding, 65535, ValueType::U32),
            Err(PointError::PastEnd { .. })
        ));
    }
}
