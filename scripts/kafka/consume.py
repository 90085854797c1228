#!/usr/bin/env python3
"""Independent Kafka dumper for ferrule's tests (confluent-kafka / librdkafka).

Reads TOPIC from the beginning of every partition (no consumer group, nothing is
committed) and prints one JSON object per record on stdout:
  {"topic", "partition", "offset", "timestamp" (ms or null), "key" (hex or null),
   "headers" {name: utf-8 text, or null if not utf-8}, "headers_hex" {name: hex},
   "value_len", and "value" (hex) with --values}
Records are printed in arrival order (ordered within a partition). A summary goes to
stderr. Stops when, whichever comes first:
  --count N   N records were printed
  --idle S    no record arrived for S seconds (default 5)
  --to-end    every partition reached the high watermark it had at start
  --timeout S overall limit (default 120)
Isolation defaults to read_committed (librdkafka's default): aborted transactional
records are skipped; --uncommitted shows them.

Usage: scripts/kafka/consume.py BOOTSTRAP TOPIC [--count N] [--idle S] [--to-end]
         [--values] [--uncommitted] [--timeout S]
Needs: pip install confluent-kafka   (wheels bundle librdkafka)
"""
import argparse
import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition


def header_dicts(headers):
    text, raw = {}, {}
    for name, value in headers or []:
        if value is None:
            text[name], raw[name] = None, None
            continue
        raw[name] = value.hex()
        try:
            text[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            text[name] = None
    return text, raw


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("--count", type=int, default=0, help="stop after N records (0: no limit)")
    ap.add_argument("--idle", type=float, default=5.0, help="stop after S seconds without a record")
    ap.add_argument("--to-end", action="store_true", help="stop at the high watermarks seen at start")
    ap.add_argument("--values", action="store_true", help="also print each value in hex")
    ap.add_argument("--uncommitted", action="store_true", help="isolation.level=read_uncommitted")
    ap.add_argument("--timeout", type=float, default=120.0, help="overall limit in seconds")
    args = ap.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "ferrule-consume-py",  # required by the client; never joined (assign only)
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "isolation.level": "read_uncommitted" if args.uncommitted else "read_committed",
        "auto.offset.reset": "earliest",
    })
    md = consumer.list_topics(args.topic, timeout=15)
    tmd = md.topics.get(args.topic)
    if tmd is None or tmd.error is not None:
        print(f"consume.py: topic {args.topic}: {tmd.error if tmd else 'not found'}", file=sys.stderr)
        return 2
    partitions = sorted(tmd.partitions)
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])

    pending = set()
    ends = {}
    if args.to_end:
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=15)
            ends[p] = high
            if high > low:
                pending.add(p)

    count = 0
    start = last = time.monotonic()
    reason = "idle"
    while True:
        if args.count and count >= args.count:
            reason = "count"
            break
        if args.to_end and not pending:
            reason = "end"
            break
        now = time.monotonic()
        if now - start >= args.timeout:
            reason = "timeout"
            break
        if now - last >= args.idle:
            reason = "idle"
            break
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                # With transactions the last offsets are markers, never delivered.
                if msg.partition() in ends and msg.offset() >= ends[msg.partition()]:
                    pending.discard(msg.partition())
                continue
            if msg.error().retriable() or not msg.error().fatal():
                print(f"consume.py: {msg.error()}", file=sys.stderr)
                continue
            raise KafkaException(msg.error())
        last = time.monotonic()
        ts_type, ts = msg.timestamp()
        text, raw = header_dicts(msg.headers())
        key = msg.key()
        value = msg.value()
        rec = {
            "topic": msg.topic(),
            "partition": msg.partition(),
            "offset": msg.offset(),
            "timestamp": ts if ts_type != 0 else None,
            "key": key.hex() if key is not None else None,
            "headers": text,
            "headers_hex": raw,
            "value_len": len(value) if value is not None else None,
        }
        if args.values:
            rec["value"] = value.hex() if value is not None else None
        print(json.dumps(rec, separators=(",", ":")), flush=True)
        count += 1
        if args.to_end and msg.partition() in pending and msg.offset() + 1 >= ends[msg.partition()]:
            pending.discard(msg.partition())
    consumer.close()
    print(f"consume.py: {count} records from {args.topic} ({reason})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
