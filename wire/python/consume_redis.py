#!/usr/bin/env python3
"""Example consumer for ferrule's real-time path on Redis Streams.

With a [redis] section, the ferrule aggregator adds one entry per batch of
samples, as each batch arrives (in parallel with its durable commit), to its
site's stream "{prefix}:{site}" (default prefix "ferrule"; the braces are a Redis
Cluster hash tag). Each entry has the fields:

    agent    the agent's name (the site is in the stream's name)
    epoch    the agent's epoch
    seq      the batch's sequence number
    samples  samples in the batch
    record   the committed record, the same bytes as the Kafka sink's payload,
             decoded by ferrule_record.py (next to this file)

This script reads one or more streams in a consumer group, decodes each record,
drops repeats by (agent, epoch, seq), prints one line per sample (or per batch
with --summary) and acknowledges each entry (XACK) once handled. Copy it and
replace handle_batch() with what your system does with the samples.

    pip install redis
    python3 wire/python/consume_redis.py --url redis://localhost:6379 \\
        --stream 'ferrule:{plant-1}' --group alerts --consumer alerts-1

The real-time path is best effort: while Redis is down, or a group is far
behind, batches are skipped (the aggregator counts them) and the durable sink
(Kafka or the embedded log) still has every one. The aggregator trims each
stream to what every group has acknowledged, and caps it at redis.max_len
entries; a group that falls behind the cap loses its oldest unread entries
(counted per group by the aggregator).

Sample lines:   site/agent epoch:seq sensor ts_ns value unit quality
Summary lines:  stream id site/agent epoch:seq samples=N series=N
"""

import argparse
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferrule_record  # noqa: E402  (pure Python, next to this file)


class RecentKeys:
    """Remembers the last `capacity` batch keys, to drop repeats.

    Why repeats happen: an agent resends a batch whose commit failed or whose Ack
    it never received. The aggregator publishes a resend only if its real-time
    path has not seen that (agent, epoch, seq), but it remembers a bounded number
    of keys and forgets them on restart, so a repeat is possible, never likely.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.keys: OrderedDict = OrderedDict()

    def __contains__(self, key) -> bool:
        return key in self.keys

    def add(self, key) -> None:
        self.keys[key] = None
        if len(self.keys) > self.capacity:
            self.keys.popitem(last=False)


def text(fields: dict, name: bytes) -> str:
    value = fields.get(name)
    if value is None:
        raise ValueError(f"entry has no field {name.decode()}")
    return value.decode("utf-8")


def batch_key(stream: str, fields: dict):
    """(site/agent, epoch, seq) from the entry's fields (the site is the stream's hash tag)."""
    site = stream[stream.find("{") + 1 : stream.rfind("}")] if "{" in stream else stream
    return (f"{site}/{text(fields, b'agent')}", int(text(fields, b"epoch")), int(text(fields, b"seq")))


def handle_batch(stream: str, entry_id: str, record: ferrule_record.Record, summary: bool, out=sys.stdout) -> None:
    """What to do with a decoded batch: here, print it."""
    h = record.header
    who = f"{h.site}/{h.agent} {h.epoch}:{h.seq}"
    if summary:
        print(f"{stream} {entry_id} {who} samples={h.samples} series={len(record.series)}", file=out)
        return
    for s in ferrule_record.iter_samples(record):
        print(f"{who} {s['sensor']} {s['ts_ns']} {s['value']!r} {s['unit'] or '-'} {s['quality']}", file=out)


def ensure_group(r, stream: str, group: str, from_beginning: bool) -> None:
    """Creates the group (and the stream) unless it exists."""
    import redis

    try:
        r.xgroup_create(stream, group, id="0" if from_beginning else "$", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def consume(r, streams, group: str, consumer: str, *, summary=False, count=0, block_ms=1000,
            dedupe_window=1_000_000, out=sys.stdout, idle_rounds=0):
    """Reads `streams` in `group` until `count` batches (0: forever) or
    `idle_rounds` empty reads in a row (0: never); returns (batches, repeats, bad).

    Entries this consumer was given before and did not acknowledge (it crashed)
    are read first (id "0"), then new ones (">").
    """
    recent = RecentKeys(dedupe_window)
    batches = repeats = bad = idle = 0
    backlog = True  # first our own pending entries, then new ones
    while count <= 0 or batches < count:
        ids = {s: ("0" if backlog else ">") for s in streams}
        reply = r.xreadgroup(group, consumer, ids, count=100, block=None if backlog else block_ms)
        got = sum(len(entries) for _, entries in reply or [])
        if backlog and got == 0:
            backlog = False
            continue
        if got == 0:
            idle += 1
            if idle_rounds and idle >= idle_rounds:
                break
            continue
        idle = 0
        for stream_name, entries in reply:
            stream = stream_name.decode() if isinstance(stream_name, bytes) else stream_name
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                try:
                    key = batch_key(stream, fields)
                    if key in recent:
                        repeats += 1
                    else:
                        handle_batch(stream, eid, ferrule_record.decode_record(fields[b"record"]), summary, out)
                        recent.add(key)
                        batches += 1
                except (ValueError, KeyError) as e:
                    bad += 1
                    print(f"consume_redis.py: {stream} {eid}: undecodable entry: {e}", file=sys.stderr)
                # Acknowledged once handled (at least once): the aggregator's
                # trimming keeps what any group has not acknowledged yet.
                r.xack(stream, group, eid)
    return batches, repeats, bad


def main() -> int:
    import redis

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="redis://host:port or rediss://host:port")
    ap.add_argument("--stream", action="append", required=True,
                    help="stream to read, e.g. 'ferrule:{plant-1}' (repeatable)")
    ap.add_argument("--group", required=True, help="consumer group (created if missing)")
    ap.add_argument("--consumer", default="c1", help="this consumer's name within the group")
    ap.add_argument("--from-beginning", action="store_true",
                    help="a new group starts at the stream's first entry (else at new entries)")
    ap.add_argument("--summary", action="store_true", help="one line per batch instead of per sample")
    ap.add_argument("--count", type=int, default=0, metavar="N", help="stop after N batches (0: run until Ctrl-C)")
    ap.add_argument("--password-env", metavar="NAME", help="read the password from environment variable NAME")
    args = ap.parse_args()

    password = os.environ.get(args.password_env) if args.password_env else None
    r = redis.Redis.from_url(args.url, password=password) if password else redis.Redis.from_url(args.url)
    for s in args.stream:
        ensure_group(r, s, args.group, args.from_beginning)
    batches = repeats = bad = 0
    try:
        batches, repeats, bad = consume(r, args.stream, args.group, args.consumer,
                                        summary=args.summary, count=args.count)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    print(f"consume_redis.py: {batches} batches, {repeats} repeats dropped, {bad} undecodable", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
