#!/usr/bin/env python3
"""Example consumer for ferrule's Kafka topics (the compact record format).

The ferrule aggregator's Kafka sink writes one Kafka record per batch of samples:
key "site/agent" (so each agent's batches stay in order within one partition),
headers ferrule-agent ("site/agent"), ferrule-epoch, ferrule-seq, ferrule-count
and ferrule-encoding, and the record itself as payload, in the encoding that
ferrule_record.py (next to this file) decodes. This script reads a topic in a
consumer group, decodes each record, drops duplicate batches and prints one line
per sample, or one line per batch with --summary. Copy it and replace
handle_batch() with what your system does with the samples.

    pip install confluent-kafka
    python3 wire/python/consume.py --brokers localhost:9092 --topic ferrule.samples \\
        --group my-team-ingest --from-beginning

Sample lines:   site/agent epoch:seq sensor ts_ns value unit quality
Summary lines:  partition:offset site/agent epoch:seq samples=N series=N received_ns=T

Extra librdkafka settings (TLS, SASL) go through -X, for example
-X security.protocol=SASL_SSL -X sasl.mechanism=SCRAM-SHA-512 -X sasl.username=...

Topics the aggregator routes with format = "json" hold one JSON object per sample
instead; read those with any JSON consumer (they carry the same headers).
"""

import argparse
import os
import sys
from collections import OrderedDict

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferrule_record  # noqa: E402  (pure Python, next to this file)


class RecentKeys:
    """Remembers the last `capacity` batch keys seen, to drop duplicates.

    Why duplicates happen: delivery is at-least-once end to end. The aggregator
    acknowledges a batch to the agent only after Kafka confirmed the write; if the
    aggregator restarts, or the connection drops, after the write but before the
    agent received that Ack, the agent still holds the batch and sends it again on
    its next session, and the aggregator (its dedupe ledger is in memory) commits
    it to Kafka a second time. The copy carries the same (agent, epoch, seq), which
    names a batch uniquely: the agent numbers batches from 1 within an epoch and
    picks a new epoch whenever its numbering restarts.

    A re-sent batch lands in the same partition as the original (same key), usually
    soon after it, so a bounded window of recent keys catches it without growing
    forever. It does not survive a restart of this consumer, and after a rebalance
    another member may see the copy: if duplicates must never reach your store,
    make the write idempotent on (agent, epoch, seq) (a unique key or an upsert).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.keys: OrderedDict = OrderedDict()

    def __contains__(self, key) -> bool:
        return key in self.keys

    def add(self, key) -> None:
        self.keys[key] = None
        if len(self.keys) > self.capacity:
            self.keys.popitem(last=False)  # forget the oldest


def kafka_headers(msg) -> dict:
    """The record's Kafka headers as text."""
    out = {}
    for name, value in msg.headers() or []:
        if value is not None:
            out[name] = value.decode("utf-8", "replace")
    return out


def batch_key(msg, payload: bytes):
    """(agent, epoch, seq) from the Kafka headers, without decoding the samples;
    from the record's own header if the Kafka headers are missing."""
    h = kafka_headers(msg)
    try:
        return (h["ferrule-agent"], int(h["ferrule-epoch"]), int(h["ferrule-seq"]))
    except (KeyError, ValueError):
        rh = ferrule_record.decode_record_header(payload)
        return (f"{rh.site}/{rh.agent}", rh.epoch, rh.seq)


def handle_batch(msg, record: ferrule_record.Record, summary: bool) -> None:
    """What to do with a decoded batch: here, print it."""
    h = record.header
    who = f"{h.site}/{h.agent} {h.epoch}:{h.seq}"
    if summary:
        print(
            f"{msg.partition()}:{msg.offset()} {who} samples={h.samples} "
            f"series={len(record.series)} received_ns={h.received_ns}"
        )
        return
    for s in ferrule_record.iter_samples(record):
        # repr() prints the shortest text that reads back as the same double.
        print(f"{who} {s['sensor']} {s['ts_ns']} {s['value']!r} {s['unit'] or '-'} {s['quality']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", required=True, help="bootstrap servers, host:port[,host:port]")
    ap.add_argument("--topic", required=True, help="topic the aggregator writes (compact format)")
    ap.add_argument("--group", required=True, help="consumer group id; offsets are committed under it")
    ap.add_argument("--from-beginning", action="store_true",
                    help="start at the beginning of each partition, ignoring the group's committed offsets")
    ap.add_argument("--summary", action="store_true", help="one line per batch instead of per sample")
    ap.add_argument("--dedupe-window", type=int, default=1_000_000, metavar="N",
                    help="remember the last N batch keys to drop duplicates (default %(default)s)")
    ap.add_argument("--count", type=int, default=0, metavar="N", help="stop after N batches (0: run until Ctrl-C)")
    ap.add_argument("-X", dest="props", action="append", default=[], metavar="KEY=VALUE",
                    help="extra librdkafka property, repeatable")
    args = ap.parse_args()

    conf = {
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        # Where to start when the group has no committed offset yet.
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        # At-least-once: an offset is stored only after its record was handled
        # (store_offsets below) and committed in the background from there.
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
    }
    for p in args.props:
        key, sep, value = p.partition("=")
        if not sep:
            ap.error(f"-X {p}: expected KEY=VALUE")
        conf[key] = value
    consumer = Consumer(conf)

    rewound = set()

    def on_assign(c, partitions):
        # --from-beginning: rewind each partition the first time we get it (not
        # again on later rebalances, which would replay everything).
        if args.from_beginning:
            for tp in partitions:
                if (tp.topic, tp.partition) not in rewound:
                    rewound.add((tp.topic, tp.partition))
                    tp.offset = OFFSET_BEGINNING
            c.assign(partitions)

    consumer.subscribe([args.topic], on_assign=on_assign)
    recent = RecentKeys(args.dedupe_window)
    batches = duplicates = bad = 0
    try:
        while args.count <= 0 or batches < args.count:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().fatal():
                    raise KafkaException(msg.error())
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"consume.py: {msg.error()}", file=sys.stderr)
                continue
            payload = msg.value() or b""
            try:
                key = batch_key(msg, payload)
                if key in recent:
                    duplicates += 1
                else:
                    handle_batch(msg, ferrule_record.decode_record(payload), args.summary)
                    recent.add(key)
                    batches += 1
            except ValueError as e:
                # Not a record this decoder reads: log it and move on (a real
                # consumer might park it in a dead-letter topic instead).
                bad += 1
                hint = " (a JSON-format topic?)" if payload[:1] == b"{" else ""
                print(f"consume.py: {msg.topic()}[{msg.partition()}]@{msg.offset()}: "
                      f"undecodable record{hint}: {e}", file=sys.stderr)
            consumer.store_offsets(message=msg)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # output piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        consumer.close()  # commits the stored offsets, leaves the group
        print(f"consume.py: {batches} batches, {duplicates} duplicates dropped, {bad} undecodable",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
