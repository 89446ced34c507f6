#!/usr/bin/env python3
"""immunity `command` signal: checkout requests, failures and latency of one cohort.

Reads the cohort from stdin (JSON: hosts, start, end) and a JSON-lines access log
({"ts": "2026-05-04T12:30:01.250Z", "host": "web1", "path": "/checkout",
"status": 200, "latency_ms": 84.0}); prints one JSON object on stdout.
"""

import bisect
import datetime as dt
import json
import os
import sys

BOUNDS_MS = [25, 50, 100, 250, 500, 1000]


def parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def main() -> None:
    cohort = json.load(sys.stdin)
    hosts = {h["name"] for h in cohort["hosts"]}
    start, end = parse(cohort["start"]), parse(cohort["end"])
    requests = errors = 0
    buckets = [0] * (len(BOUNDS_MS) + 1)  # the last one counts everything over 1 s
    path = os.environ.get("CHECKOUT_LOG", "/var/log/shop/access.jsonl")
    try:
        with open(path) as log:
            for line in log:
                r = json.loads(line)
                if r["host"] not in hosts or r["path"] != "/checkout":
                    continue
                if not start <= parse(r["ts"]) < end:
                    continue
                requests += 1
                errors += r["status"] >= 500
                buckets[bisect.bisect_left(BOUNDS_MS, r["latency_ms"])] += 1
    except OSError as exc:
        print(f"cannot read the access log: {exc}", file=sys.stderr)
        sys.exit(1)  # immunity reports this as a SignalError with our stderr
    print(
        json.dumps(
            {
                "requests": requests,
                "errors": errors,
                "latency_bounds_ms": BOUNDS_MS,
                "latency_buckets": buckets,
            }
        )
    )


if __name__ == "__main__":
    main()
