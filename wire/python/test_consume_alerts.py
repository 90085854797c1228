"""consume_alerts.py against a real redis-server started by scripts/redis.sh on
a free port: entries shaped as the aggregator writes them (see
aggregator/src/alerts/stream.rs; aggregator/tests/alert_streams.rs checks the
aggregator's side) are printed once, repeats dropped (a second firing for an
open fingerprint, a resolved written twice), an unreadable entry reported and
skipped, everything acknowledged.
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

import consume_alerts  # noqa: E402

STREAM = "ferrule:alerts"


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


def entry(state, ts_ns, value="180.5"):
    return {"state": state, "rule": "undervoltage", "site": "substation-7", "agent": "rtu-3",
            "sensor": "feed/va", "value": value, "severity": "critical",
            "fingerprint": "00000000000000ab", "episode": "00000000000000ab-1700000001000000000",
            "ts_ns": ts_ns, "annotation": "feed/va at substation-7: 180.5 V",
            "labels": '{"team":"grid"}', "quality": "good"}


def test_prints_each_alert_once_and_acknowledges(server):
    r = server
    consume_alerts.ensure_group(r, STREAM, "g", from_beginning=True)
    r.xadd(STREAM, entry("firing", 1700000001000000000))
    r.xadd(STREAM, entry("firing", 1700000001000000000))  # another aggregator's copy
    later = entry("firing", 1700000002000000000)
    later["episode"] = "00000000000000ab-1700000002000000000"  # a failover saw a later start
    r.xadd(STREAM, later)
    r.xadd(STREAM, {"state": "firing"})  # unreadable
    r.xadd(STREAM, entry("resolved", 1700000060000000000, value="NaN"))
    r.xadd(STREAM, entry("resolved", 1700000060000000000, value="NaN"))  # written again
    out = io.StringIO()
    alerts, repeats, bad = consume_alerts.consume(r, STREAM, "g", "c1", block_ms=100, out=out, idle_rounds=1)
    assert (alerts, repeats, bad) == (2, 3, 1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("firing critical undervoltage substation-7/rtu-3 feed/va 180.5 ")
    assert lines[1].startswith("resolved critical undervoltage substation-7/rtu-3 feed/va nan ")
    assert r.xpending(STREAM, "g")["pending"] == 0


def test_decode_types():
    a = consume_alerts.decode({b"state": b"firing", b"rule": b"r", b"episode": b"e", b"ts_ns": b"5",
                               b"value": b"inf", b"labels": b'{"a":"b"}'})
    assert a["ts_ns"] == 5 and a["value"] == float("inf") and a["labels"] == {"a": "b"}
