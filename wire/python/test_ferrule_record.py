"""Tests for ferrule_record: the golden vector shared with the Rust implementation,
hand-built records for paths the vector does not reach, and malformed input.

Run: python3 -m pytest wire/python
"""

import contextlib
import json
import math
import random
import signal
import struct
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ferrule_record as fr  # noqa: E402

VECTORS = HERE.parent / "tests" / "vectors"


def load_hex(path: Path) -> bytes:
    """Reads a .hex vector: `#` comment lines, whitespace ignored."""
    lines = [ln.split("#", 1)[0] for ln in path.read_text().splitlines()]
    return bytes.fromhex("".join("".join(lines).split()))


def bits_hex(v: float) -> str:
    return struct.pack(">d", v).hex()


@contextlib.contextmanager
def deadline(seconds: float):
    """Fails the test instead of hanging if decoding ever loops."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expired(*_):
        raise TimeoutError(f"decoding took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


GOLDEN = load_hex(VECTORS / "record_three_phase.hex")
GOLDEN_JSON = json.loads((VECTORS / "record_three_phase.json").read_text())


# ---------------------------------------------------------------------------
# The golden vector (written by wire/tests/vectors.rs, record_vector()).
# ---------------------------------------------------------------------------


def test_golden_header():
    h = fr.decode_record(GOLDEN).header
    for key in ("site", "agent", "epoch", "seq", "clock_offset_ns", "received_ns"):
        assert getattr(h, key) == GOLDEN_JSON[key], key
    assert h.samples == len(GOLDEN_JSON["samples"])
    # The JSON does not list the sensors; these are the ones record_vector() writes.
    units = ["V", "V", "V", "A", "A", "A", "Hz"]
    want = [fr.Sensor(i, f"feeder-1/{n}", units[i], "gauge") for i, n in enumerate(["va", "vb", "vc", "ia", "ib", "ic", "f"])]
    want.append(fr.Sensor(7, "breaker-3/state", "", "state"))
    assert list(h.sensors) == want
    assert fr.decode_record_header(GOLDEN) == h
    assert h.dedupe_key == ("substation-7", "rtu-3", 1767225600, 42)


def test_golden_samples_bit_for_bit():
    rec = fr.decode_record(GOLDEN)
    got = [
        {"sensor": s.name, "ts_ns": t, "value_bits": bits_hex(v), "quality": q}
        for s in rec.series
        for t, v, q in s.samples
    ]
    want = GOLDEN_JSON["samples"]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"sample {i}"
    # -0.0 and NaN really are in there, and survive exactly.
    assert "8000000000000000" in {w["value_bits"] for w in want}
    assert any(math.isnan(v) for s in rec.series for _, v, _ in s.samples)


def test_golden_iter_samples():
    rec = fr.decode_record(GOLDEN)
    rows = list(fr.iter_samples(rec))
    assert len(rows) == len(GOLDEN_JSON["samples"])
    assert set(rows[0]) == {"site", "agent", "epoch", "seq", "sensor", "unit", "ts_ns", "value", "quality"}
    for row, w in zip(rows, GOLDEN_JSON["samples"]):
        assert (row["sensor"], row["ts_ns"], bits_hex(row["value"]), row["quality"]) == (
            w["sensor"], w["ts_ns"], w["value_bits"], w["quality"])
        assert (row["site"], row["agent"], row["epoch"], row["seq"]) == ("substation-7", "rtu-3", 1767225600, 42)
    assert rows[0]["unit"] == "V" and rows[-1]["unit"] == ""


# ---------------------------------------------------------------------------
# A small encoder, written from wire/README.md and wire/src/samples.rs, to reach
# what the golden vector does not: order 0, several 64-sample blocks, width 64,
# wrapping timestamps, decimal mode 1 and the XOR '10' (reuse window) path.
# ---------------------------------------------------------------------------


class BitWriter:
    def __init__(self):
        self.acc, self.n = 0, 0

    def write(self, v, n):
        self.acc = (self.acc << n) | (v & ((1 << n) - 1))
        self.n += n

    def varint(self, v):
        while True:
            group, v = v & 0x7F, v >> 7
            self.write(group | (0x80 if v else 0), 8)
            if not v:
                return

    def bytes(self):
        pad = -self.n % 8
        return (self.acc << pad).to_bytes((self.n + pad) // 8, "big")


def zz(v):
    return ((v << 1) ^ (v >> 63)) & ((1 << 64) - 1)


def wrap(v):
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def enc_ints(w, v, order):
    w.write(order, 2)
    if order >= 1 and v:
        w.varint(zz(v[0]))
    if order == 2 and len(v) > 1:
        w.varint(zz(wrap(v[1] - v[0])))
    res = {
        0: [zz(x) for x in v],
        1: [zz(wrap(b - a)) for a, b in zip(v, v[1:])],
        2: [zz(wrap(wrap(c - b) - wrap(b - a))) for a, b, c in zip(v, v[1:], v[2:])],
    }[order]
    i = order
    while i < len(v):
        end = min((i // 64 + 1) * 64, len(v))
        block = res[i - order : end - order]
        width = max(block).bit_length()
        w.write(width, 7)
        for r in block:
            w.write(r, width)
        i = end


def enc_xor(w, values):
    prev = struct.unpack(">Q", struct.pack(">d", values[0]))[0]
    w.write(prev, 64)
    lead = length = 0
    for v in values[1:]:
        bits = struct.unpack(">Q", struct.pack(">d", v))[0]
        x, prev = bits ^ prev, bits
        if x == 0:
            w.write(0, 1)
            continue
        lz = min(64 - x.bit_length(), 31)
        tz = (x & -x).bit_length() - 1
        if length and lz >= lead and tz >= 64 - lead - length:
            w.write(0b10, 2)
            w.write(x >> (64 - lead - length), length)
        else:
            lead, length = lz, 64 - lz - tz
            w.write(0b11, 2)
            w.write(lead, 5)
            w.write(length - 1, 6)
            w.write(x >> tz, length)


QCODE = {"good": 0, "uncertain": 1, "bad": 2}


def enc_record(series, header_samples=None, sensors=None, ts_order=2):
    """series: list of (sid, ts, values, quality); values is ("xor", [floats]) or
    ("dec", e, mode, [ints]). Returns (record bytes, number of bits in the block)."""
    total = sum(len(ts) for _, ts, _, _ in series)
    if sensors is None:
        sensors = [(sid, f"s{sid}", "u", 0) for sid, *_ in series]
    head = bytearray([1])

    def pvar(v):
        while True:
            g, v = v & 0x7F, v >> 7
            head.append(g | (0x80 if v else 0))
            if not v:
                return

    def pstr(s):
        b = s.encode()
        pvar(len(b))
        head.extend(b)

    pstr("site")
    pstr("agent")
    pvar(3)
    pvar(9)
    pvar(zz(-5))
    pvar(zz(77))
    pvar(total if header_samples is None else header_samples)
    pvar(len(sensors))
    for sid, name, unit, kind in sensors:
        pvar(sid)
        pstr(name)
        pstr(unit)
        pvar(kind)
    w = BitWriter()
    w.varint(len(series))
    for sid, ts, values, quality in series:
        w.varint(sid)
        w.varint(len(ts))
        if not ts:
            continue
        enc_ints(w, ts, ts_order)
        if values[0] == "xor":
            w.write(1, 1)
            enc_xor(w, values[1])
        else:
            _, e, mode, ints = values
            w.write(0, 1)
            w.write(e, 4)
            w.write(mode, 1)
            enc_ints(w, ints, 1)
        if len(set(quality)) == 1:
            w.write(0, 1)
            w.write(QCODE[quality[0]], 2)
        else:
            w.write(1, 1)
            for q in quality:
                w.write(QCODE[q], 2)
    return bytes(head) + bytes([1]) + w.bytes(), len(head), w.n


def check_round_trip(series, **kw):
    data, _, _ = enc_record(series, **kw)
    rec = fr.decode_record(data)
    assert len(rec.series) == len(series)
    for s, (sid, ts, values, quality) in zip(rec.series, series):
        assert s.sensor_id == sid
        assert [t for t, _, _ in s.samples] == ts
        assert [q for _, _, q in s.samples] == quality
        if values[0] == "xor":
            want = values[1]
        else:
            _, e, mode, ints = values
            want = [i / 10.0**e if mode == 0 else i * fr.NEG_POW10[e] for i in ints]
        assert [bits_hex(v) for _, v, _ in s.samples] == [bits_hex(v) for v in want]
    return rec


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 63, 64, 65, 66, 130, 200])
def test_int_columns_of_every_order_and_block_layout(order, n):
    rng = random.Random(n * 3 + order)
    ts = [1_767_225_600_000_000_000 + i * 1_000_000 + rng.randrange(-20_000, 20_000) for i in range(n)]
    if n > 5:  # extremes force 64-bit widths and wrapping deltas
        ts[3], ts[4], ts[5] = -(2**63), 2**63 - 1, -1
    ints = [rng.randrange(-(2**40), 2**40) for _ in range(n)]
    q = [rng.choice(["good", "uncertain", "bad"]) for _ in range(n)]
    check_round_trip([(5, ts, ("dec", 3, 0, ints), q)], ts_order=order)


def test_decimal_multiply_mode_gives_scaled_register_values():
    regs = list(range(2290, 2310))
    rec = check_round_trip([(1, list(range(20)), ("dec", 1, 1, regs), ["good"] * 20)])
    # 2301 * 0.1 is not the double nearest 230.1: mode 1 must give the former.
    values = [v for _, v, _ in rec.series[0].samples]
    assert bits_hex(values[11]) == bits_hex(2301 * 0.1) != bits_hex(230.1)
    for e in range(10):
        check_round_trip([(1, [0, 1, 2], ("dec", e, 1, [-7, 0, 123456789]), ["bad"] * 3)])
        check_round_trip([(1, [0, 1, 2], ("dec", e, 0, [-7, 0, 123456789]), ["bad"] * 3)])


def test_xor_path_with_window_reuse_and_special_floats():
    values = [1.0, 1.5, 1.25, 1.75, 1.75, float("nan"), -0.0, float("inf"), -float("inf"),
              5e-324, 1.7976931348623157e308, struct.unpack(">d", bytes.fromhex("7ff0000000000001"))[0]]
    rng = random.Random(7)
    values += [struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0] for _ in range(100)]
    n = len(values)
    check_round_trip([(9, list(range(n)), ("xor", values), ["uncertain"] * n),
                      (2**32 - 1, [], ("xor", []), []),
                      (0, [5], ("xor", [2.5]), ["good"])])


# ---------------------------------------------------------------------------
# Malformed input: always a ValueError, never a hang.
# ---------------------------------------------------------------------------


def test_truncation_at_every_length_is_an_error():
    with deadline(30):
        for k in range(len(GOLDEN)):
            with pytest.raises(ValueError):
                fr.decode_record(GOLDEN[:k])


def test_trailing_bytes_and_padding():
    with pytest.raises(ValueError, match="trailing"):
        fr.decode_record(GOLDEN + b"\x00")
    data, _, nbits = enc_record([(1, [1, 2, 3], ("xor", [1.0, 2.0, 3.0]), ["good"] * 3)])
    assert nbits % 8, "this record needs padding"
    with pytest.raises(ValueError, match="padding"):
        fr.decode_record(data[:-1] + bytes([data[-1] | 1]))


def test_versions():
    with pytest.raises(ValueError, match="record version"):
        fr.decode_record(b"\x02" + GOLDEN[1:])
    with pytest.raises(ValueError, match="record version"):
        fr.decode_record_header(b"\x09")
    data, block_start, _ = enc_record([(1, [1], ("xor", [1.0]), ["good"])])
    bad = data[:block_start] + b"\x02" + data[block_start + 1 :]
    with pytest.raises(ValueError, match="sample encoding"):
        fr.decode_record(bad)


def test_corrupted_quality_flag():
    n = 4
    q = ["good", "bad", "uncertain", "good"]
    data, block_start, nbits = enc_record([(1, [1, 2, 3, 4], ("xor", [1.0] * n), q)])
    assert fr.decode_record(data)
    # The per-sample flags are the last 2n bits of the stream; make flag 0 read 3.
    as_int = int.from_bytes(data[block_start + 1 :], "big")
    pad = -nbits % 8
    as_int |= 0b11 << (pad + 2 * (n - 1))
    bad = data[: block_start + 1] + as_int.to_bytes(len(data) - block_start - 1, "big")
    with pytest.raises(ValueError, match="quality"):
        fr.decode_record(bad)
    # The same with one flag for the whole series.
    data, block_start, nbits = enc_record([(1, [1], ("xor", [1.0]), ["good"])])
    as_int = int.from_bytes(data[block_start + 1 :], "big") | (0b11 << (-nbits % 8))
    bad = data[: block_start + 1] + as_int.to_bytes(len(data) - block_start - 1, "big")
    with pytest.raises(ValueError, match="quality"):
        fr.decode_record(bad)


def test_header_sample_count_must_match():
    series = [(1, [1, 2, 3], ("xor", [1.0, 2.0, 3.0]), ["good"] * 3)]
    for lie in (0, 2, 4, 1000):
        data, _, _ = enc_record(series, header_samples=lie)
        with pytest.raises(ValueError, match="samples"):
            fr.decode_record(data)
    data, _, _ = enc_record(series)
    with pytest.raises(ValueError, match="samples"):
        fr.decode_record(data, max_samples=2)


def raw_block(build, header_samples):
    """A record whose bit stream is written by build(BitWriter) after the series count."""
    data, block_start, _ = enc_record([], header_samples=header_samples)
    w = BitWriter()
    build(w)
    return data[: block_start + 1] + w.bytes()


@pytest.mark.parametrize(
    "build, match",
    [
        # one series, 3 samples, timestamp order 3
        (lambda w: (w.varint(1), w.varint(1), w.varint(3), w.write(3, 2)), "order"),
        # order 0, block width 65
        (lambda w: (w.varint(1), w.varint(1), w.varint(3), w.write(0, 2), w.write(65, 7), w.write(0, 200)), "width"),
        # timestamps fine (order 0, width 0), decimal exponent 10
        (lambda w: (w.varint(1), w.varint(1), w.varint(3), w.write(0, 2), w.write(0, 7), w.write(0, 1), w.write(10, 4), w.write(0, 64)), "exponent"),
        # xor: '10' before any window was set
        (lambda w: (w.varint(1), w.varint(1), w.varint(3), w.write(0, 2), w.write(0, 7), w.write(1, 1), w.write(0, 64), w.write(0b10, 2), w.write(0, 64)), "window"),
        # xor: window of 31 leading zeros + 64 bits
        (lambda w: (w.varint(1), w.varint(1), w.varint(3), w.write(0, 2), w.write(0, 7), w.write(1, 1), w.write(0, 64), w.write(0b11, 2), w.write(31, 5), w.write(63, 6), w.write(0, 128)), "window"),
        # a varint of eleven groups
        (lambda w: (w.varint(1), [w.write(0xFF, 8) for _ in range(11)]), "varint"),
        # a million series in a few bytes
        (lambda w: (w.varint(10**6), w.write(0, 32)), "series"),
    ],
)
def test_malformed_blocks(build, match):
    with deadline(5):
        with pytest.raises(ValueError, match=match):
            fr.decode_record(raw_block(build, 3))


def test_malformed_headers():
    good, _, _ = enc_record([], sensors=[(1, "ok/name", "V", 2)])
    assert fr.decode_record(good).header.sensors[0].kind == "state"
    for sensors, match in [([(1, "bad name", "V", 0)], "sensor name"), ([(1, "x", "V", 3)], "kind"),
                           ([(2**32, "x", "V", 0)], "32 bits")]:
        data, _, _ = enc_record([], sensors=sensors)
        with pytest.raises(ValueError, match=match):
            fr.decode_record(data)
    with pytest.raises(ValueError, match="UTF-8"):
        fr.decode_record(b"\x01\x02\xff\xfe" + GOLDEN[15:])
    with pytest.raises(TypeError):
        fr.decode_record("01")


def test_random_corruption_never_hangs_or_raises_anything_else():
    rng = random.Random(1)
    with deadline(60):
        for _ in range(3000):
            data = bytearray(GOLDEN)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            try:
                fr.decode_record(bytes(data))
            except ValueError:
                pass
