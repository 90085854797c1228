#!/usr/bin/env python3
"""A Modbus TCP device with many changing holding registers, for the agent
footprint benchmark (`ferrule-loadtest footprint`), served by pymodbus.

Usage: modbus_many.py PORT [REGISTERS] [PERIOD_MS]

Serves holding registers 0..REGISTERS-1 (default 500), u16 values that change
every PERIOD_MS (default 100): register i holds 10000 + round(5000 * sin(phase))
with a phase that moves with time and i, so every read of a new period sees new
values. Any unit id is answered; anything past the block answers exception 0x02.
"""

import asyncio
import logging
import math
import sys
import time

try:
    import pymodbus
    from pymodbus.server import StartAsyncTcpServer
except ImportError as e:
    sys.exit(f"pymodbus is missing ({e}): python3 -m pip install 'pymodbus>=3.6,<4'")


def values_at(tick, count):
    """Register values of period number `tick`."""
    return [
        10000 + round(5000 * math.sin(0.07 * tick + 0.31 * i)) for i in range(count)
    ]


def current_tick(period):
    return int(time.monotonic() / period)


def sim_device(count, period):
    """pymodbus >= 3.10 (SimDevice): values refreshed from the read action."""
    from pymodbus.simulator import DataType, SimData, SimDevice

    state = {"tick": None}

    async def action(_fc, start, _address, _count, registers, set_values):
        tick = current_tick(period)
        if set_values is None and tick != state["tick"]:
            state["tick"] = tick
            registers[0 - start : count - start] = values_at(tick, count)
        return None

    return SimDevice(
        id=0,
        simdata=[
            SimData(
                address=0,
                count=count,
                values=0,
                datatype=DataType.REGISTERS,
            )
        ],
        action=action,
    )


def legacy_context(count, period):
    """pymodbus 3.6 - 3.9: a datastore block a background task rewrites."""
    from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext

    try:
        from pymodbus.datastore import ModbusSlaveContext as DeviceContext
    except ImportError:
        from pymodbus.datastore import ModbusDeviceContext as DeviceContext

    # A block starting at 1 serves its first value at protocol address 0.
    block = ModbusSequentialDataBlock(1, values_at(current_tick(period), count))
    context = ModbusServerContext(DeviceContext(hr=block), single=True)

    async def refresh():
        while True:
            await asyncio.sleep(period - (time.monotonic() % period))
            block.setValues(1, values_at(current_tick(period), count))

    return context, refresh


async def main(port, count, period):
    print(
        f"modbus_many: pymodbus {pymodbus.__version__} on 127.0.0.1:{port}, "
        f"{count} holding registers changing every {period * 1000:.0f} ms",
        flush=True,
    )
    try:
        context = sim_device(count, period)
        await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))
    except ImportError:
        context, refresh = legacy_context(count, period)
        task = asyncio.create_task(refresh())
        await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))
        task.cancel()


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 4:
        sys.exit("usage: modbus_many.py PORT [REGISTERS] [PERIOD_MS]")
    logging.basicConfig(level=logging.ERROR)
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    ms = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    asyncio.run(main(int(sys.argv[1]), n, ms / 1000.0))
