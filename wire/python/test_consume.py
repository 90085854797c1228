"""consume.py against a fake Kafka consumer (no broker needed): duplicates are
dropped, undecodable records are reported and skipped, every offset is stored."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import consume  # noqa: E402
from test_ferrule_record import GOLDEN  # noqa: E402


class FakeMessage:
    def __init__(self, offset, value, headers):
        self._offset, self._value, self._headers = offset, value, headers

    def error(self):
        return None

    def value(self):
        return self._value

    def headers(self):
        return self._headers

    def topic(self):
        return "t"

    def partition(self):
        return 0

    def offset(self):
        return self._offset


HEADERS = [("ferrule-agent", b"substation-7/rtu-3"), ("ferrule-epoch", b"1767225600"),
           ("ferrule-seq", b"42"), ("ferrule-count", b"75"), ("ferrule-encoding", b"1")]


class FakeConsumer:
    def __init__(self, conf):
        assert conf["enable.auto.offset.store"] is False
        self.queue = [
            FakeMessage(0, GOLDEN, HEADERS),
            FakeMessage(1, GOLDEN, HEADERS),  # the same batch committed twice
            FakeMessage(2, b'{"site":"substation-7"}', HEADERS[:2] + [("ferrule-seq", b"43")]),  # JSON format
            FakeMessage(3, GOLDEN, None),  # no Kafka headers: key from the record
            FakeMessage(4, b"\x01garbage", [("ferrule-agent", b"x/y"), ("ferrule-epoch", b"1"), ("ferrule-seq", b"2")]),
        ]
        self.stored = []
        FakeConsumer.last = self

    def subscribe(self, topics, on_assign=None):
        pass

    def poll(self, timeout):
        if not self.queue:
            raise KeyboardInterrupt
        return self.queue.pop(0)

    def store_offsets(self, message):
        self.stored.append(message.offset())

    def close(self):
        pass


@pytest.mark.parametrize("summary", [False, True])
def test_consume_drops_duplicates_and_skips_bad_records(monkeypatch, capsys, summary):
    monkeypatch.setattr(consume, "Consumer", FakeConsumer)
    argv = ["consume.py", "--brokers", "b:9092", "--topic", "t", "--group", "g"]
    monkeypatch.setattr(sys, "argv", argv + (["--summary"] if summary else []))
    assert consume.main() == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    if summary:
        assert lines == ["0:0 substation-7/rtu-3 1767225600:42 samples=75 series=8 received_ns=1767225600500000000"]
    else:
        assert len(lines) == 75
        assert lines[0] == "substation-7/rtu-3 1767225600:42 feeder-1/va 1767225600000000000 -0.47 V good"
        assert lines[-4] == "substation-7/rtu-3 1767225600:42 breaker-3/state 1767225600000999937 -0.0 - uncertain"
        assert lines[-3].endswith(" nan - bad")
    assert "1 batches, 2 duplicates dropped, 2 undecodable" in err
    assert "JSON-format topic" in err
    assert FakeConsumer.last.stored == [0, 1, 2, 3, 4]
