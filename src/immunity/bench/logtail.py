"""`immunity bench logtail`: the haproxy signal's access-log tail against the naive way.

Writes an access log of `seconds` x `rps` requests over `servers` servers in one of the
formats the signal reads (HAProxy's `option httplog` line behind an RFC 3164 syslog prefix,
or the sandbox's JSON), shaped as HAProxy writes them, then measures:

* parse throughput: lines per second through `LogTail.poll` (one worker-thread call);
* a 1 s look at the end of the log: ours (poll what was appended, sum the window's 0.1 s
  bins) against the naive way (read and parse the whole file again, count the window), the
  way a script run per look does;
* memory: what the tail keeps after reading the log (0.1 s bins per server: bounded by
  `retention`, not by traffic) and its peak while reading (one 4 MB chunk and its lines),
  against keeping one record object per request (extrapolated from 200,000 of them).

Timed on whatever else the machine runs: compare the columns of one run, not runs.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from immunity.signals.haproxy import LogParser, LogRecord, LogTail

Format = Literal["httplog", "json"]
_T0 = 1_780_000_000.0


def _line(fmt: Format, t: float, server: str, status: int, ta: int) -> str:
    if fmt == "json":
        return (
            f'{{"ts":{t:.3f},"be":"be_app","srv":"{server}","st":{status},"Th":0,"Ti":0,'
            f'"TR":0,"Tw":0,"Tc":0,"Tr":{ta},"Ta":{ta},"Tt":{ta},"bytes":204,"term":"----"}}\n'
        )
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    date = d.strftime("%d/%b/%Y:%H:%M:%S.") + f"{d.microsecond // 1000:03d}"
    return (
        f"<134>{d:%b %d %H:%M:%S} haproxy[4242]: 10.0.0.7:{40000 + int(t * 1000) % 20000} "
        f"[{date}] fe_web be_app/{server} 0/0/0/{ta}/{ta} {status} 204 - - ---- 4/4/0/0/0 0/0 "
        f'"GET / HTTP/1.1"\n'
    )


def write_log(path: Path, fmt: Format, seconds: int, rps: int, servers: int) -> int:
    """The log of `seconds` x `rps` requests; returns the number of lines."""
    n = 0
    with open(path, "w") as f:
        for s in range(seconds):
            chunk = []
            for i in range(rps):
                t = _T0 + s + i / rps
                chunk.append(_line(fmt, t, f"h{i % servers + 1}", 500 if i % 97 == 0 else 200, 3))
            f.write("".join(chunk))
            n += rps
    return n


def _naive_look(path: Path, parser: LogParser, start: float, end: float) -> tuple[int, int]:
    requests = errors = 0
    with open(path, "rb") as f:
        for raw in f:
            rec = parser.parse(raw)
            if isinstance(rec, LogRecord) and start <= rec.end < end:
                requests += 1
                errors += rec.status >= 500
    return requests, errors


def run_one(fmt: Format, seconds: int, rps: int, servers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="immunity-bench-") as d:
        path = Path(d) / "access.log"
        lines = write_log(path, fmt, seconds, rps, servers)
        size = os.path.getsize(path)
        parser = LogParser("auto", timezone="UTC")
        bounds = [1.0, 5.0, 10.0, 100.0]
        tracemalloc.start()  # memory on one tail, speed on another (tracing slows it down)
        kept = LogTail(path, retention=900.0, parser=parser, bounds=bounds)
        kept.poll()
        tail_kept, tail_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del kept
        tail = LogTail(path, retention=900.0, parser=parser, bounds=bounds)
        t = time.perf_counter()
        stats = tail.poll()
        parse_s = time.perf_counter() - t
        kept_bins = sum(len(b) for b in tail.bins.values())
        start, end = _T0 + seconds - 2.0, _T0 + seconds - 1.0
        # one more second appended, then a look: ours polls it and sums the bins
        with open(path, "a") as f:
            f.write(
                "".join(
                    _line(fmt, _T0 + seconds + i / rps, f"h{i % servers + 1}", 200, 3)
                    for i in range(rps)
                )
            )
        t = time.perf_counter()
        tail.poll()
        ours_counts = tail.window(start, end)
        ours_look_s = time.perf_counter() - t
        t = time.perf_counter()
        naive = _naive_look(path, parser, start, end)
        naive_look_s = time.perf_counter() - t
        # keeping a record per request (what the tail did before bins)
        tracemalloc.start()
        records = [
            LogRecord(_T0 + i / rps, f"h{i % servers + 1}", 200, 3.0)
            for i in range(min(lines, 200_000))
        ]
        _, per_record_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del records
    ours = (
        sum(c.requests for c in ours_counts.values()),
        sum(c.errors for c in ours_counts.values()),
    )
    return {
        "format": fmt,
        "lines": lines,
        "bytes": size,
        "parsed_requests": stats.requests,
        "unparsed": stats.unparsed,
        "parse_lines_per_s": round(lines / parse_s),
        "parse_mb_per_s": round(size / parse_s / 1e6, 1),
        "look_ours_ms": round(ours_look_s * 1000, 2),
        "look_naive_ms": round(naive_look_s * 1000, 1),
        "look_counts_agree": ours == naive,
        "tail_kept_mb": round(tail_kept / 2**20, 2),
        "tail_peak_mb": round(tail_peak / 2**20, 1),
        "tail_bins_server_entries": kept_bins,
        "records_mb_extrapolated": round(per_record_peak / min(lines, 200_000) * lines / 2**20, 1),
    }


def run(seconds: int = 100, rps: int = 2000, servers: int = 6) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "rps": rps,
        "servers": servers,
        "results": [run_one(fmt, seconds, rps, servers) for fmt in ("httplog", "json")],
    }


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"access-log tail: {result['seconds']} s x {result['rps']} req/s over "
        f"{result['servers']} servers"
    )
    for col in (
        "format",
        "lines",
        "parse lines/s",
        "MB/s",
        "1 s look: ours",
        "naive (re-read)",
        "same counts",
        "tail keeps",
        "tail peak",
        "record per request",
    ):
        table.add_column(col)
    for r in result["results"]:
        table.add_row(
            r["format"],
            f"{r['lines']:,}",
            f"{r['parse_lines_per_s']:,}",
            f"{r['parse_mb_per_s']}",
            f"{r['look_ours_ms']} ms",
            f"{r['look_naive_ms']} ms",
            "yes" if r["look_counts_agree"] else "NO",
            f"{r['tail_kept_mb']} MB",
            f"{r['tail_peak_mb']} MB",
            f"{r['records_mb_extrapolated']} MB",
        )
    console.print(table)
