#!/usr/bin/env python3
"""A Modbus TCP device for ferrule's Modbus input test, served by pymodbus.

Usage: modbus_sim.py PORT

Serves fixed values the test (agent/tests/input_modbus.rs) knows. Every multi-register
value is packed here with Python's struct module, independently of the Rust decoder
under test. Any unit id is answered.

Holding registers (0..199 but for the hole 97..99; a read that covers the hole or
anything at 200 or above answers with exception 0x02 IllegalDataAddress):
    0       u16  51234
    1       i16  -1234
    2-3     u32  3000000123            ABCD (big byte, big word)
    4-5     i32  -2000000123           ABCD
    6-7     f32  123.456               ABCD
    8-9     f32  -7.25                 CDAB (big byte, little word)
    10-11   f32  0.1                   BADC (little byte, big word)
    12-13   f32  6.02214e23            DCBA (little byte, little word)
    14-17   f64  2.718281828459045     ABCDEFGH
    18-21   f64  -1.2345678e-7         HGFEDCBA (little byte, little word)
    22      u16  2301                  (the test scales it by 0.1: 230.1)
    23      i16  -500                  (the test scales by 0.01, offset 1: -4.0)
    24-29   unused (0): a gap the planner bridges
    30      u16  0x1234 stored byte-swapped (0x3412)
    96      u16  9696
    97-99   not mapped (a hole: exception 0x02)
    100-101 u32  4000000001            CDAB
Input registers (block 0..9):
    0       u16  7
    1-2     i32  -42                   CDAB
Coils 0..9:            1 0 1 1 0 0 0 1 0 1
Discrete inputs 0..9:  0 1 1 0 1 0 0 0 0 1
"""

import asyncio
import logging
import struct
import sys

try:
    import pymodbus
    from pymodbus.datastore import (
        ModbusSequentialDataBlock,
        ModbusServerContext,
        ModbusSparseDataBlock,
    )
    from pymodbus.server import StartAsyncTcpServer
except ImportError as e:  # the Rust test checks first; this is for people running it by hand
    sys.exit(f"pymodbus is missing ({e}): python3 -m pip install 'pymodbus>=3.6,<4'")

try:  # pymodbus >= 3.10
    from pymodbus.datastore import ModbusDeviceContext as DeviceContext
except ImportError:  # pymodbus 3.6 - 3.9
    from pymodbus.datastore import ModbusSlaveContext as DeviceContext


def words(fmt, value, byte_little=False, word_little=False):
    """Registers of `value` packed big-endian with `fmt`, then reordered."""
    raw = struct.pack(">" + fmt, value)
    regs = [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
    if byte_little:
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    if word_little:
        regs.reverse()
    return regs


def holding():
    regs = [0] * 200

    def put(addr, values):
        regs[addr : addr + len(values)] = values

    put(0, words("H", 51234))
    put(1, words("h", -1234))
    put(2, words("I", 3000000123))
    put(4, words("i", -2000000123))
    put(6, words("f", 123.456))
    put(8, words("f", -7.25, word_little=True))
    put(10, words("f", 0.1, byte_little=True))
    put(12, words("f", 6.02214e23, byte_little=True, word_little=True))
    put(14, words("d", 2.718281828459045))
    put(18, words("d", -1.2345678e-7, byte_little=True, word_little=True))
    put(22, words("H", 2301))
    put(23, words("h", -500))
    put(30, words("H", 0x1234, byte_little=True))
    put(96, words("H", 9696))
    put(100, words("I", 4000000001, word_little=True))
    return regs


# Unmapped holding registers: a read covering any of them is refused.
HOLE = range(97, 100)

# A sparse block's key for protocol address 0: pymodbus 3.10+ serves key k at
# address k (its blocks are SimData underneath, which the deprecated block
# classes redirect to), older 3.x at address k - 1 (the "zero_mode=False" offset).
SPARSE_BASE = 0 if hasattr(ModbusSparseDataBlock({0: 0}), "simdata") else 1


def holding_block():
    values = {a + SPARSE_BASE: v for a, v in enumerate(holding()) if a not in HOLE}
    return ModbusSparseDataBlock(values)


def inputs():
    regs = [0] * 10
    regs[0:1] = words("H", 7)
    regs[1:3] = words("i", -42, word_little=True)
    return regs


COILS = [bool(int(c)) for c in "1011000101"]
DISCRETE = [bool(int(c)) for c in "0110100001"]


async def main(port):
    # Legacy datastore, deprecated but present in every 3.x: a block starting at 1
    # serves its first value at protocol address 0 in all of them (pymodbus's
    # historical "zero_mode=False" offset), and reads past a block's end answer
    # IllegalDataAddress.
    device = DeviceContext(
        di=ModbusSequentialDataBlock(1, DISCRETE),
        co=ModbusSequentialDataBlock(1, COILS),
        hr=holding_block(),
        ir=ModbusSequentialDataBlock(1, inputs()),
    )
    context = ModbusServerContext(device, single=True)
    print(f"modbus_sim: pymodbus {pymodbus.__version__} on 127.0.0.1:{port}", flush=True)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: modbus_sim.py PORT")
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(int(sys.argv[1])))
