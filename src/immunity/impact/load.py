"""Open-loop load generator: customers arriving at a constant rate, every response recorded.

Request i is sent at ``t0 + i / rps`` whatever happened to the earlier ones (open loop: a
slow server does not slow the customers down, so its slowness shows). Each request becomes
one JSON line ``{"t": <seconds since the start>, "at": <unix send time>, "status": <int, 0 = no answer>, "latency_ms": <float>,
"host": <X-Immunity-Host or null>}`` (plus ``"path"`` when several paths are cycled) — the
*release impact* record. Only talks to the URL given. Used by `immunity sandbox load` and by
a deployment's `impact` probe (`immunity.impact.probe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp


@dataclass(frozen=True)
class LoadSummary:
    requests: int
    failed: int
    """Status 0 (no answer) or >= 500."""
    p50_ms: float
    p99_ms: float
    max_ms: float
    duration_s: float
    by_host: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)
    stopped_early: bool = False

    def line(self) -> str:
        hosts = ", ".join(f"{h}={n}" for h, n in sorted(self.by_host.items()))
        return (
            f"requests={self.requests} failed={self.failed} p50={self.p50_ms:.1f}ms "
            f"p99={self.p99_ms:.1f}ms max={self.max_ms:.1f}ms over {self.duration_s:.1f}s"
            + (" (stopped early)" if self.stopped_early else "")
            + (f" hosts: {hosts}" if hosts else "")
        )


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


def server_ok(status: int) -> bool:
    """The default: a request failed when it got no answer or a 5xx."""
    return 0 < status < 500


def summarize(
    records: list[dict[str, Any]],
    duration_s: float,
    stopped_early: bool,
    ok: Callable[[int], bool] = server_ok,
) -> LoadSummary:
    lat = sorted(float(r["latency_ms"]) for r in records)
    statuses = Counter(int(r["status"]) for r in records)
    hosts = Counter(str(r["host"]) for r in records if r.get("host"))
    failed = sum(n for s, n in statuses.items() if not ok(s))
    return LoadSummary(
        requests=len(records),
        failed=failed,
        p50_ms=percentile(lat, 0.50),
        p99_ms=percentile(lat, 0.99),
        max_ms=lat[-1] if lat else 0.0,
        duration_s=duration_s,
        by_host=dict(hosts),
        by_status=dict(statuses),
        stopped_early=stopped_early,
    )


async def run_load(
    url: str,
    rps: float,
    duration: float,
    out_path: str | os.PathLike[str] | None,
    stop_event: asyncio.Event | None = None,
    *,
    request_timeout: float = 60.0,
    max_in_flight: int = 2000,
    grace: float = 5.0,
    paths: Sequence[str] = ("",),
    headers: Mapping[str, str] | None = None,
    ok: Callable[[int], bool] = server_ok,
    records: list[dict[str, Any]] | None = None,
) -> LoadSummary:
    """Send `rps` requests per second to `url` for `duration` seconds; write one line each.

    Request i goes to `url + paths[i % len(paths)]` with `headers`. Stops scheduling when
    `stop_event` is set; requests in flight then get `grace` seconds to finish, after which
    they are cancelled and not recorded. Beyond `max_in_flight` outstanding requests a request
    is recorded as status 0 without being sent. `ok(status)` says which answers count as
    served (default: any but 5xx); every record is also appended to `records` when given.
    """
    # imported here: `immunity.impact` (the journal fold's phase boundaries, `status`,
    # `history`) must not pay aiohttp's half a second of imports for the generator
    import aiohttp

    if rps <= 0 or duration <= 0:
        raise ValueError("rps and duration must be > 0")
    stop = stop_event or asyncio.Event()
    records = records if records is not None else []
    urls = [url + p for p in paths] or [url]
    out: IO[str] | None = None
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        out = open(out_path, "w")  # noqa: SIM115, ASYNC230 - one small open, lines written as they come
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    connector = aiohttp.TCPConnector(limit=max_in_flight, force_close=False)
    in_flight: set[asyncio.Task[None]] = set()
    t0_wall = time.time()
    t0 = time.monotonic()
    total = int(rps * duration)
    stopped_early = False

    def record(rec: dict[str, Any]) -> None:
        records.append(rec)
        if out is not None:
            out.write(json.dumps(rec) + "\n")

    async def one(session: aiohttp.ClientSession, sent_wall: float, i: int) -> None:
        began = time.monotonic()
        status, host = 0, None
        target = urls[i % len(urls)]
        try:
            async with session.get(target, allow_redirects=False, headers=headers) as resp:
                await resp.read()
                status = resp.status
                host = resp.headers.get("X-Immunity-Host")
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = 0
        record(
            {
                "t": round(sent_wall - t0_wall, 6),
                "at": round(sent_wall, 6),
                "status": status,
                "latency_ms": round((time.monotonic() - began) * 1000.0, 3),
                "host": host,
                **({"path": paths[i % len(paths)]} if len(urls) > 1 else {}),
            }
        )

    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            # A task group would cancel siblings on one failure; `one` never raises, and the
            # set below is awaited (or cancelled) before leaving this block: no stray tasks.
            try:
                for i in range(total):
                    due = t0 + i / rps
                    delay = due - time.monotonic()
                    if delay > 0 and not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(delay):
                                await stop.wait()
                    if stop.is_set():
                        stopped_early = True
                        break
                    sent_wall = t0_wall + (time.monotonic() - t0)
                    if len(in_flight) >= max_in_flight:
                        record(
                            {
                                "t": round(sent_wall - t0_wall, 6),
                                "at": round(sent_wall, 6),
                                "status": 0,
                                "latency_ms": 0.0,
                                "host": None,
                            }
                        )
                        continue
                    task = asyncio.create_task(one(session, sent_wall, i))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if in_flight:
                    wait_for = grace if stopped_early else request_timeout + grace
                    await asyncio.wait(set(in_flight), timeout=wait_for)
            finally:
                for task in list(in_flight):
                    task.cancel()
                if in_flight:
                    await asyncio.gather(*in_flight, return_exceptions=True)
    finally:
        if out is not None:
            out.close()
    elapsed = time.monotonic() - t0
    return summarize(records, elapsed, stopped_early, ok)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines written by `run_load`."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
