#!/usr/bin/env python3
"""Example reader of ferrule's alert stream on Redis.

With [alerts] rules and a [redis] section, the ferrule aggregator adds one entry
per alert notification to the stream "{prefix}:alerts" (default
"ferrule:alerts"): a `firing` when an alert fires and a `resolved` when its
episode ends (`pending` and `inactive` are never written). Each entry's fields
are strings:

    state        firing or resolved
    rule         the rule's name
    site, agent, sensor   the alert series
    value        the value that caused it ("180.5", "NaN", "inf")
    severity     info, warning or critical
    fingerprint  the series' id, 16 hex digits
    episode      "<fingerprint>-<start ns>", the same in its firing and resolved
    ts_ns        when the transition took effect (sample time), ns since the epoch
    annotation   the rule's summary, rendered
    labels       the rule's labels, a JSON object
    quality      the causing sample's quality (good, uncertain, bad)

With [kafka], the same fields arrive as one JSON object per record on the alert
topic (default "<kafka.topic>.alerts"), keyed by fingerprint.

Delivery is at least once: a write whose answer was lost is written again, and
each aggregator that saw an episode writes its own copy (after an agent fails
over mid-episode the new aggregator may have seen a later start, so a different
episode). This reader does what rules/README.md asks of a notifier: a `firing`
for a fingerprint it holds open is the same incident (a repeat), the first
`resolved` for it closes it, and a `resolved` seen before (same episode) is a
repeat. It reads in a consumer group, its own pending entries first after a
crash, prints one line per notification and acknowledges each entry (XACK) once
handled. Copy it and replace handle_alert().

    pip install redis
    python3 wire/python/consume_alerts.py --url redis://localhost:6379 \\
        --group pager-bridge --from-beginning

Lines:  state severity rule site/agent sensor value episode annotation
"""

import argparse
import json
import os
import sys
from collections import OrderedDict


class Recent:
    """The last `capacity` keys seen (oldest forgotten first)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.keys: OrderedDict = OrderedDict()

    def seen(self, key) -> bool:
        """True if `key` was seen; remembers it either way."""
        if key in self.keys:
            return True
        self.keys[key] = None
        if len(self.keys) > self.capacity:
            self.keys.popitem(last=False)
        return False


class Incidents:
    """Which alerts are open, to tell a new notification from a repeat."""

    def __init__(self, capacity: int):
        self.open: OrderedDict = OrderedDict()  # fingerprint -> episode
        self.capacity = capacity
        self.resolved = Recent(capacity)

    def is_new(self, a: dict) -> bool:
        fp = a.get("fingerprint") or a["episode"].split("-")[0]
        if a["state"] == "firing":
            if fp in self.open:
                return False  # the same incident, from another aggregator or a resend
            self.open[fp] = a["episode"]
            if len(self.open) > self.capacity:
                self.open.popitem(last=False)
            return True
        # resolved: closes what is open; a resolved already seen is a repeat
        self.open.pop(fp, None)
        return not self.resolved.seen(a["episode"])


def decode(fields: dict) -> dict:
    """An entry's fields as str, with ts_ns an int, value a float and labels a dict."""
    a = {k.decode() if isinstance(k, bytes) else k: v.decode("utf-8") if isinstance(v, bytes) else v
         for k, v in fields.items()}
    for name in ("state", "rule", "episode", "ts_ns"):
        if name not in a:
            raise ValueError(f"entry has no field {name}")
    a["ts_ns"] = int(a["ts_ns"])
    a["value"] = float(a.get("value", "nan"))
    a["labels"] = json.loads(a.get("labels", "{}"))
    return a


def handle_alert(a: dict, out=sys.stdout) -> None:
    """What to do with one notification: here, print it."""
    print(f"{a['state']} {a.get('severity', '-')} {a['rule']} {a.get('site', '')}/{a.get('agent', '')} "
          f"{a.get('sensor', '')} {a['value']!r} {a['episode']} {a.get('annotation', '')}", file=out)


def ensure_group(r, stream: str, group: str, from_beginning: bool) -> None:
    """Creates the group (and the stream) unless it exists."""
    import redis

    try:
        r.xgroup_create(stream, group, id="0" if from_beginning else "$", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def consume(r, stream: str, group: str, consumer: str, *, block_ms=1000, dedupe_window=100_000,
            out=sys.stdout, idle_rounds=0):
    """Reads `stream` in `group` until `idle_rounds` empty reads in a row (0:
    forever); returns (alerts, repeats, bad)."""
    incidents = Incidents(dedupe_window)
    alerts = repeats = bad = idle = 0
    backlog = True  # first our own pending entries, then new ones
    while True:
        reply = r.xreadgroup(group, consumer, {stream: "0" if backlog else ">"}, count=100,
                             block=None if backlog else block_ms)
        entries = [e for _, es in reply or [] for e in es]
        if backlog and not entries:
            backlog = False
            continue
        if not entries:
            idle += 1
            if idle_rounds and idle >= idle_rounds:
                return alerts, repeats, bad
            continue
        idle = 0
        for entry_id, fields in entries:
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            try:
                a = decode(fields)
                if not incidents.is_new(a):
                    repeats += 1
                else:
                    handle_alert(a, out)
                    alerts += 1
            except (ValueError, KeyError) as e:
                bad += 1
                print(f"consume_alerts.py: {stream} {eid}: unreadable entry: {e}", file=sys.stderr)
            r.xack(stream, group, eid)


def main() -> int:
    import redis

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="redis://host:port or rediss://host:port")
    ap.add_argument("--stream", default="ferrule:alerts", help="the alert stream (default ferrule:alerts)")
    ap.add_argument("--group", required=True, help="consumer group (created if missing)")
    ap.add_argument("--consumer", default="c1", help="this consumer's name within the group")
    ap.add_argument("--from-beginning", action="store_true",
                    help="a new group starts at the stream's first entry (else at new entries)")
    ap.add_argument("--password-env", metavar="NAME", help="read the password from environment variable NAME")
    args = ap.parse_args()

    password = os.environ.get(args.password_env) if args.password_env else None
    r = redis.Redis.from_url(args.url, password=password) if password else redis.Redis.from_url(args.url)
    ensure_group(r, args.stream, args.group, args.from_beginning)
    alerts = repeats = bad = 0
    try:
        alerts, repeats, bad = consume(r, args.stream, args.group, args.consumer)
    except KeyboardInterrupt:
        pass
    print(f"consume_alerts.py: {alerts} alerts, {repeats} repeats dropped, {bad} unreadable", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
