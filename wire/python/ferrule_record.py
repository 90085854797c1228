"""Decoder for ferrule's committed records (record version 1, sample encoding v1).

The ferrule aggregator writes one record per batch of samples: to its embedded log,
or to Kafka (one Kafka record per batch, key ``site/agent``, headers
``ferrule-agent``, ``ferrule-epoch``, ``ferrule-seq``, ``ferrule-count``,
``ferrule-encoding``). A record is self-describing, so a consumer can start at any
offset. This module is a pure-Python (3.11+, standard library only) decoder for it,
written to be read as documentation of the format; the authoritative description,
byte by byte, is ``wire/README.md`` ("Sample block (encoding v1)" and "Committed
records"), and the reference implementation is ``wire/src/record.rs``,
``wire/src/samples.rs`` and ``wire/src/bits.rs``.

Layout in brief::

    u8        record version (1)
    postcard  header: site (string), agent (string), epoch (varint), seq (varint),
              clock_offset_ns (zigzag varint), received_ns (zigzag varint),
              samples (varint), sensors: varint count, then per sensor
              id (varint), name (string), unit (string), kind (varint: 0 gauge,
              1 counter, 2 state)
    bytes     sample block, to the end of the record:
                u8 sample encoding version (1), then a bit stream, most significant
                bit first, zero-padded to a whole byte:
                varint series count; per series: varint sensor id, varint sample
                count n and, if n > 0, an int column of timestamps, a value column,
                a quality column.

postcard (the header) writes unsigned integers as LEB128 varints (7 bits per byte,
low group first, high bit set on every byte but the last), signed integers
zigzagged first, strings as a varint byte length then UTF-8. Inside the bit stream
varints are the same LEB128 groups, written as 8-bit fields at whatever bit
position the stream is at (they are not byte-aligned).

Usage::

    from ferrule_record import decode_record, iter_samples
    rec = decode_record(payload)            # raises ValueError on malformed input
    print(rec.header.agent, rec.header.epoch, rec.header.seq)
    for row in iter_samples(rec):           # flat dicts, one per sample
        print(row["sensor"], row["ts_ns"], row["value"], row["quality"])

Values come back exactly as the agent produced them, bit for bit (NaN payloads,
-0.0 and infinities included). Decoding is pure Python: expect on the order of a
microsecond per sample.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Iterator

__all__ = [
    "DecodeError",
    "Header",
    "Record",
    "RECORD_VERSION",
    "SAMPLE_ENCODING_V1",
    "Sensor",
    "Series",
    "decode_record",
    "decode_record_header",
    "iter_samples",
]

#: Version byte that starts every record.
RECORD_VERSION = 1
#: Version byte that starts every sample block.
SAMPLE_ENCODING_V1 = 1

#: Quality flags, by their 2-bit code.
QUALITY = ("good", "uncertain", "bad")
#: Sensor kinds, by their postcard variant index.
KIND = ("gauge", "counter", "state")

#: Integer columns are bit-packed in blocks aligned to sample indexes that are
#: multiples of 64; each block starts with a 7-bit width.
BLOCK = 64
MAX_DECIMAL_EXPONENT = 9
#: 10**e as floats (all exact), for decimal mode 0: value = i / 10**e.
POW10 = tuple(float(10**e) for e in range(MAX_DECIMAL_EXPONENT + 1))
#: The doubles nearest 10**-e, for decimal mode 1: value = i * 10**-e. Python float
#: literals round to nearest exactly like Rust's, so these are the same doubles as
#: the Rust encoder's NEG_POW10.
NEG_POW10 = (1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)

_MASK64 = (1 << 64) - 1
#: Sensor names are 1 to 200 bytes of ASCII letters, digits and _ . : / -
_SENSOR_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")


class DecodeError(ValueError):
    """A record that is not a well-formed ferrule record (truncated, unknown
    version, inconsistent counts, ...). A subclass of ValueError."""


@dataclass(frozen=True)
class Sensor:
    """A sensor the record's series use, as the header describes it."""

    id: int
    name: str
    unit: str
    kind: str  # "gauge", "counter" or "state"


@dataclass(frozen=True)
class Header:
    """The record header: who sent the batch, which batch, and its sensors."""

    site: str  # from the agent's certificate
    agent: str  # from the agent's certificate
    epoch: int  # the agent's boot epoch
    seq: int  # batch sequence number within the epoch
    clock_offset_ns: int  # agent's clock offset estimate (aggregator - agent)
    received_ns: int  # aggregator receive time, ns since the Unix epoch
    samples: int  # total samples in the record
    sensors: tuple[Sensor, ...]

    @property
    def dedupe_key(self) -> tuple[str, str, int, int]:
        """(site, agent, epoch, seq): names the batch everywhere downstream."""
        return (self.site, self.agent, self.epoch, self.seq)


@dataclass
class Series:
    """The samples of one sensor: (ts_ns, value, quality) tuples in order.

    ``name``, ``unit`` and ``kind`` come from the header's sensor list; they are
    empty strings if the header does not describe ``sensor_id`` (the aggregator's
    JSON output does the same)."""

    sensor_id: int
    name: str
    unit: str
    kind: str
    samples: list[tuple[int, float, str]] = field(default_factory=list)


@dataclass
class Record:
    """A decoded record: the header and one series per sensor."""

    header: Header
    series: list[Series]


# ---------------------------------------------------------------------------
# Header: postcard, byte oriented.
# ---------------------------------------------------------------------------


class _Bytes:
    """Reads postcard fields from a byte string."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data = data
        self.pos = pos

    def varint(self, bits: int, what: str) -> int:
        """An unsigned LEB128 varint of at most `bits` bits (32 or 64), as postcard
        reads it: at most ceil(bits / 7) bytes, the last holding only the bits left."""
        max_bytes = -(-bits // 7)
        value = 0
        for i in range(max_bytes):
            if self.pos >= len(self.data):
                raise DecodeError(f"record truncated in {what}")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if i == max_bytes - 1 and byte >= 1 << (bits - 7 * i):
                    raise DecodeError(f"varint overflows {bits} bits in {what}")
                return value
        raise DecodeError(f"varint overflows {bits} bits in {what}")

    def zigzag(self, what: str) -> int:
        return _unzigzag(self.varint(64, what))

    def string(self, what: str) -> str:
        n = self.varint(64, what + " length")
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError(f"record truncated in {what}")
        raw = self.data[self.pos : end]
        self.pos = end
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"{what} is not UTF-8: {e}") from None


def _split_header(data: bytes) -> tuple[Header, int]:
    """Decodes the version byte and header; returns them and where the block starts."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise DecodeError("record truncated: empty")
    if data[0] != RECORD_VERSION:
        raise DecodeError(f"unknown record version {data[0]} (this decoder reads {RECORD_VERSION})")
    b = _Bytes(data, 1)
    site = b.string("site")
    agent = b.string("agent")
    epoch = b.varint(64, "epoch")
    seq = b.varint(64, "seq")
    clock_offset_ns = b.zigzag("clock_offset_ns")
    received_ns = b.zigzag("received_ns")
    samples = b.varint(32, "samples")
    sensors = []
    for _ in range(b.varint(64, "sensor count")):  # each sensor consumes input: bounded
        sid = b.varint(32, "sensor id")
        name = b.string("sensor name")
        if not _SENSOR_NAME.fullmatch(name):
            raise DecodeError(f"invalid sensor name {name!r}")
        unit = b.string("sensor unit")
        kind = b.varint(32, "sensor kind")
        if kind >= len(KIND):
            raise DecodeError(f"unknown sensor kind {kind}")
        sensors.append(Sensor(sid, name, unit, KIND[kind]))
    header = Header(site, agent, epoch, seq, clock_offset_ns, received_ns, samples, tuple(sensors))
    return header, b.pos


def decode_record_header(data: bytes) -> Header:
    """Decodes only the header (cheap: enough for routing and dedupe)."""
    return _split_header(data)[0]


# ---------------------------------------------------------------------------
# Sample block: a bit stream, most significant bit first.
# ---------------------------------------------------------------------------


def _unzigzag(z: int) -> int:
    """0, 1, 2, 3, 4 ... -> 0, -1, 1, -2, 2 ... (z is an unsigned 64-bit value)."""
    return (z >> 1) ^ -(z & 1)


class _Bits:
    """Reads bit fields, most significant bit first, never past the end."""

    def __init__(self, data: bytes, start: int):
        self.data = data
        self.pos = start * 8  # in bits
        self.end = len(data) * 8
        self.padded = data + bytes(16)  # for readers that load whole words

    def remaining(self) -> int:
        return self.end - self.pos

    def read(self, n: int, what: str = "sample block") -> int:
        """Reads `n` bits (any n >= 0) as an unsigned integer."""
        if n == 0:
            return 0
        pos, end = self.pos, self.pos + n
        if end > self.end:
            raise DecodeError(f"record truncated in {what}")
        self.pos = end
        first, last = pos >> 3, (end + 7) >> 3
        chunk = int.from_bytes(self.data[first:last], "big")
        return (chunk >> ((last << 3) - end)) & ((1 << n) - 1)

    def varint(self, what: str) -> int:
        """A LEB128 varint written as 8-bit groups; at most ten groups (64 bits)."""
        value = 0
        for i in range(10):
            group = self.read(8, what)
            part = group & 0x7F
            if i == 9 and part > 1:
                break
            value |= part << (7 * i)
            if not group & 0x80:
                return value
        raise DecodeError(f"varint overflows 64 bits in {what}")


def _read_ints(r: _Bits, n: int, what: str) -> list[int]:
    """An int column of `n` signed 64-bit integers.

    2 bits order k (0 raw values, 1 deltas, 2 deltas of deltas); min(k, n) zigzag
    varints (the first value, then for k = 2 the first delta); then the zigzagged
    residuals of samples k..n-1 in blocks that end at sample indexes that are
    multiples of 64 (so the first block holds 64 - k residuals): a 7-bit width w
    (0..64), then w bits per residual. Arithmetic wraps at 64 bits.
    """
    order = r.read(2, what)
    if order > 2:
        raise DecodeError(f"{what}: unknown order {order}")
    out: list[int] = []
    prev = delta = 0  # kept unsigned mod 2**64
    for i in range(min(order, n)):
        x = _unzigzag(r.varint(what))
        if i == 0:
            prev = x & _MASK64
        else:
            delta = x & _MASK64
            prev = (prev + x) & _MASK64
        out.append(prev)
    i = order
    while i < n:
        end = min((i // BLOCK + 1) * BLOCK, n)
        count = end - i
        width = r.read(7, what)
        if width > 64:
            raise DecodeError(f"{what}: block width {width} > 64")
        if width == 0:
            residuals = [0] * count  # e.g. a steady clock under order 2: no bits
        else:
            # Read the whole block as one integer, then cut it into fields.
            packed = r.read(width * count, what)
            mask = (1 << width) - 1
            shift = width * count
            residuals = []
            for _ in range(count):
                shift -= width
                z = (packed >> shift) & mask
                residuals.append((z >> 1) ^ -(z & 1))
        if order == 0:
            out.extend(x & _MASK64 for x in residuals)
        elif order == 1:
            for x in residuals:
                prev = (prev + x) & _MASK64
                out.append(prev)
        else:
            for x in residuals:
                delta = (delta + x) & _MASK64
                prev = (prev + delta) & _MASK64
                out.append(prev)
        i = end
    return [u - (1 << 64) if u >> 63 else u for u in out]


def _read_values(r: _Bits, n: int) -> list[float]:
    """The value column: 1 bit mode, then decimal or Gorilla XOR."""
    if r.read(1, "value column") == 0:
        # Decimal: every value is i / 10**e (mode 0, what parsing "230.17" gives)
        # or i * 10**-e (mode 1, what scaling a register by 0.01 gives), with the
        # integers i in an int column. Python's int -> float conversion and float
        # division/multiplication are IEEE-754 round-to-nearest, like Rust's.
        e = r.read(4, "value column")
        if e > MAX_DECIMAL_EXPONENT:
            raise DecodeError(f"value column: decimal exponent {e} > {MAX_DECIMAL_EXPONENT}")
        mode = r.read(1, "value column")
        ints = _read_ints(r, n, "value column")
        if mode == 0:
            p = POW10[e]
            return [float(i) / p for i in ints]
        p = NEG_POW10[e]
        return [float(i) * p for i in ints]
    return _read_xor(r, n)


def _read_xor(r: _Bits, n: int) -> list[float]:
    """Gorilla XOR, exact for every bit pattern: 64 raw bits, then per value
    '0': same bits as the previous value;
    '10': `length` bits, XORed into the previous value at the current window;
    '11': 5 bits leading zeros, 6 bits (length - 1), `length` bits (a new window).
    """
    prev = r.read(64, "value column")
    bits = [prev]
    lead = length = 0
    # Hot loop: instead of one read() per field, load the next 88 bits at once
    # (enough for the longest case, 2 + 5 + 6 + 64 bits at any bit offset) and cut
    # the fields out of them. The reader's buffer carries zero bytes past the end,
    # so the position is checked against the real end after each value.
    buf, p, end = r.padded, r.pos, r.end
    top = (1 << 88) - 1
    for _ in range(n - 1):
        b = p >> 3
        w = (int.from_bytes(buf[b : b + 11], "big") << (p & 7)) & top
        if not w >> 87:  # '0'
            p += 1
        elif not (w >> 86) & 1:  # '10'
            if length == 0:
                raise DecodeError("value column: xor window reused before set")
            prev ^= ((w >> (86 - length)) & ((1 << length) - 1)) << (64 - lead - length)
            p += 2 + length
        else:  # '11'
            lead = (w >> 81) & 31
            length = ((w >> 75) & 63) + 1
            if p + 13 > end:
                raise DecodeError("record truncated in value column")
            if lead + length > 64:
                raise DecodeError(f"value column: xor window {lead}+{length} bits")
            prev ^= ((w >> (75 - length)) & ((1 << length) - 1)) << (64 - lead - length)
            p += 13 + length
        if p > end:
            raise DecodeError("record truncated in value column")
        bits.append(prev)
    r.pos = p
    # Reinterpret the 64-bit patterns as doubles, all at once.
    return list(struct.unpack(f">{n}d", struct.pack(f">{n}Q", *bits)))


def _read_quality(r: _Bits, n: int) -> list[str]:
    """1 bit: 0 -> one 2-bit flag for every sample, 1 -> a 2-bit flag per sample."""
    if r.read(1, "quality column") == 0:
        q = r.read(2, "quality column")
        if q >= len(QUALITY):
            raise DecodeError(f"quality column: flag {q}")
        return [QUALITY[q]] * n
    packed = r.read(2 * n, "quality column")
    out = []
    for shift in range(2 * (n - 1), -1, -2):
        q = (packed >> shift) & 3
        if q == 3:
            raise DecodeError("quality column: flag 3")
        out.append(QUALITY[q])
    return out


def decode_record(data: bytes, max_samples: int | None = None) -> Record:
    """Decodes a whole record; raises DecodeError (a ValueError) if malformed.

    The block must hold exactly as many samples as the header says; `max_samples`
    additionally caps what is accepted (default: no cap beyond the header's count,
    which is at most 2**32 - 1; the input's length bounds the work in any case).
    """
    header, start = _split_header(data)
    data = bytes(data)
    if start >= len(data):
        raise DecodeError("record truncated: no sample block")
    if data[start] != SAMPLE_ENCODING_V1:
        raise DecodeError(f"unknown sample encoding {data[start]} (this decoder reads {SAMPLE_ENCODING_V1})")
    r = _Bits(data, start + 1)
    count = r.varint("series count")
    # Each series costs at least two bytes (sensor id and sample count).
    if count > (len(data) - start - 1) // 2:
        raise DecodeError(f"sample block claims {count} series in {len(data) - start - 1} bytes")
    budget = header.samples if max_samples is None else min(header.samples, max_samples)
    sensors: dict[int, Sensor] = {}
    for s in header.sensors:
        sensors.setdefault(s.id, s)  # the first description of an id wins
    series = []
    total = 0
    for _ in range(count):
        sid = r.varint("sensor id")
        if sid > 0xFFFF_FFFF:
            raise DecodeError(f"sensor id {sid} exceeds 32 bits")
        n = r.varint("sample count")
        if total + n > budget:
            raise DecodeError(
                f"sample block holds more than {budget} samples "
                f"(header says {header.samples})"
            )
        total += n
        info = sensors.get(sid)
        s = Series(sid, info.name if info else "", info.unit if info else "", info.kind if info else "")
        if n > 0:
            ts = _read_ints(r, n, "timestamp column")
            values = _read_values(r, n)
            quality = _read_quality(r, n)
            s.samples = list(zip(ts, values, quality))
        series.append(s)
    # Only the zero padding of the last byte may remain.
    if r.remaining() >= 8:
        raise DecodeError(f"{r.remaining() // 8} trailing bytes after the sample block")
    if r.read(r.remaining()) != 0:
        raise DecodeError("sample block: non-zero padding")
    if total != header.samples:
        raise DecodeError(f"header says {header.samples} samples, block holds {total}")
    return Record(header, series)


def iter_samples(record: Record) -> Iterator[dict]:
    """Yields one flat dict per sample, series by series, in order:
    site, agent, epoch, seq, sensor, unit, ts_ns, value (float, possibly NaN or
    infinite), quality ("good", "uncertain", "bad"). The keys match the
    aggregator's JSON topic format, except that non-finite values stay floats."""
    h = record.header
    for s in record.series:
        for ts, value, quality in s.samples:
            yield {
                "site": h.site,
                "agent": h.agent,
                "epoch": h.epoch,
                "seq": h.seq,
                "sensor": s.name,
                "unit": s.unit,
                "ts_ns": ts,
                "value": value,
                "quality": quality,
            }
