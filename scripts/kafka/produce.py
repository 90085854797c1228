#!/usr/bin/env python3
"""Tiny independent producer for ferrule's tests (confluent-kafka, acks=all, idempotent).

Sends one record per stdin line (the line without its newline is the value; with
--key-sep C the part before the first C is the key) to TOPIC, waits for every ack, and
prints the JSON {"sent": N, "failed": N} on stdout. Exits 1 if any record failed.
Usage: scripts/kafka/produce.py BOOTSTRAP TOPIC [--key-sep C] [--header NAME=VALUE ...]
         [--partition P] [--timeout-ms MS]  < lines
"""
import argparse
import json
import sys

from confluent_kafka import Producer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("--key-sep")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--partition", type=int)
    ap.add_argument("--timeout-ms", type=int, default=60000, help="delivery.timeout.ms")
    args = ap.parse_args()
    headers = [tuple(h.split("=", 1)) for h in args.header]
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": args.timeout_ms,
    })
    result = {"sent": 0, "failed": 0}

    def on_delivery(err, _msg):
        if err is None:
            result["sent"] += 1
        else:
            result["failed"] += 1
            print(f"produce.py: {err}", file=sys.stderr)

    for line in sys.stdin:
        line = line.rstrip("\n")
        key = None
        if args.key_sep and args.key_sep in line:
            key, line = line.split(args.key_sep, 1)
        kw = {"key": key, "value": line, "headers": headers, "on_delivery": on_delivery}
        if args.partition is not None:
            kw["partition"] = args.partition
        producer.produce(args.topic, **kw)
        producer.poll(0)
    remaining = producer.flush(args.timeout_ms / 1000 + 5)
    result["failed"] += remaining
    print(json.dumps(result))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
