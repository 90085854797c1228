"""consume_redis.py against a real redis-server started by scripts/redis.sh on a
free port: entries shaped as the aggregator writes them are decoded, repeats
dropped, undecodable entries reported and skipped, everything acknowledged, and
entries left pending by a crashed consumer are read again first.
(Skipped without redis-py or redis-server.)"""

import io
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

redis = pytest.importorskip("redis")
if shutil.which("redis-server") is None:
    pytest.skip("redis-server not installed (scripts/test.sh installs it)", allow_module_level=True)

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parents[1] / "scripts" / "redis.sh"
sys.path.insert(0, str(HERE))

import consume_redis  # noqa: E402
import ferrule_record  # noqa: E402
from test_ferrule_record import GOLDEN  # noqa: E402

STREAM = "ferrule:{site-a}"


@pytest.fixture
def server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([str(SCRIPT), "start", str(tmp_path / "redis"), str(port)],
                         check=True, capture_output=True, text=True).stdout
    url = next(line[4:] for line in out.splitlines() if line.startswith("url="))
    try:
        yield redis.Redis.from_url(url)
    finally:
        subprocess.run([str(SCRIPT), "stop", str(tmp_path / "redis")], capture_output=True)


def add(r, record: bytes):
    h = ferrule_record.decode_record_header(record)
    return r.xadd(STREAM, {"agent": h.agent, "epoch": h.epoch, "seq": h.seq,
                           "samples": h.samples, "record": record})


def test_reads_decodes_drops_repeats_and_acknowledges(server):
    r = server
    consume_redis.ensure_group(r, STREAM, "g", from_beginning=True)
    consume_redis.ensure_group(r, STREAM, "g", from_beginning=True)  # exists: fine
    add(r, GOLDEN)
    add(r, GOLDEN)  # a resend: same (agent, epoch, seq)
    r.xadd(STREAM, {"agent": "x", "epoch": 1, "seq": 9, "samples": 1, "record": b"\x01junk"})
    out = io.StringIO()
    batches, repeats, bad = consume_redis.consume(r, [STREAM], "g", "c1", summary=True,
                                                  block_ms=100, out=out, idle_rounds=1)
    assert (batches, repeats, bad) == (1, 1, 1)
    h = ferrule_record.decode_record_header(GOLDEN)
    assert f"{h.site}/{h.agent} {h.epoch}:{h.seq} samples={h.samples}" in out.getvalue()
    assert r.xpending(STREAM, "g")["pending"] == 0


def test_a_crashed_consumers_pending_entries_are_read_first(server):
    r = server
    consume_redis.ensure_group(r, STREAM, "g", from_beginning=True)
    add(r, GOLDEN)
    # Delivered to c1, which dies before acknowledging.
    r.xreadgroup("g", "c1", {STREAM: ">"}, count=10)
    assert r.xpending(STREAM, "g")["pending"] == 1
    out = io.StringIO()
    batches, _, _ = consume_redis.consume(r, [STREAM], "g", "c1", block_ms=100, out=out, idle_rounds=1)
    assert batches == 1
    assert len(out.getvalue().splitlines()) == ferrule_record.decode_record_header(GOLDEN).samples
    assert r.xpending(STREAM, "g")["pending"] == 0
