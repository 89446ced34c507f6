"""The customers' view: a probe through the public address, cut into the deployment's phases.

`ImpactProbe` plays the `impact` block's customers with the same open-loop generator as
`immunity sandbox load` (`impact.load`) for the whole deployment. `phases` cuts its records at
the deployment's journaled moments and summarizes each phase:

    before     probe start -> first `wave.started`
    wave N     `wave.started` -> `bake.started` of that wave (its first hosts switching)
    bake N     `bake.started` -> the next moment (the wave's verdict, the next wave...)
    revert     `immune.started` -> `deployment.reverted` / `inconclusive` / `aborted` /
               `revert_incomplete`
    after      the run's last entry (`deployment.succeeded`, `.reverted`, ...) -> probe stop

Per phase: requests, failed (no answer, or a status `impact.expect_status` does not allow),
p50/p99/max latency (ms, nearest rank), and the **longest stall**: the longest time during
which no request was answered successfully (between consecutive successful answers, the
phase's edges included), in seconds. Per second: requests, failed, p99 and max, for charts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from immunity.config.models import ImpactConfig
from immunity.impact.load import percentile, run_load

BOUNDARY_KINDS = {
    "wave.started": "wave",
    "bake.started": "bake",
    "immune.started": "revert",
    "deployment.succeeded": "after",
    "deployment.reverted": "after",
    "deployment.inconclusive": "after",
    "deployment.aborted": "after",
    "deployment.revert_incomplete": "after",
    "deployment.held": "after",
    "deployment.interrupted": "after",
}


def public_url(url: str) -> str:
    """`url` without user:password (it is journaled and shown in reports)."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return scheme + sep + host.rpartition("@")[2] + slash + path


def status_ok(cfg: ImpactConfig) -> Any:
    """The served-or-not rule of `cfg.expect_status` (empty: 1xx-4xx)."""
    allowed = frozenset(cfg.expect_status)
    if allowed:
        return lambda s: s in allowed
    return lambda s: 0 < s < 500


class ImpactProbe:
    """Customers through `cfg.url` from `run()` until `stop()`; `records` fill as they come."""

    def __init__(self, cfg: ImpactConfig) -> None:
        self.cfg = cfg
        self.records: list[dict[str, Any]] = []
        self.started_at: float | None = None  # unix seconds
        self.stopped_at: float | None = None
        self._stop = asyncio.Event()
        self._done = anyio.Event()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Probe until `stop()` (at most a day); reports started once it can send."""
        import time

        # the generator's HTTP client (aiohttp, half a second of imports and more under
        # load, on the event loop) is loaded before the clock starts: loaded inside
        # `run_load`, it was counted in the `before` phase (2.6-3.1 s for `before: 2s`)
        import aiohttp  # noqa: F401

        self.started_at = time.time()
        task_status.started()
        try:
            await run_load(
                self.cfg.url,
                self.cfg.rps,
                86400.0,
                None,
                self._stop,
                request_timeout=self.cfg.request_timeout,
                max_in_flight=max(50, int(self.cfg.rps * self.cfg.request_timeout) + 10),
                grace=self.cfg.request_timeout,
                paths=self.cfg.paths,
                headers=dict(self.cfg.headers),
                ok=status_ok(self.cfg),
                records=self.records,
            )
        finally:
            self.stopped_at = time.time()
            self._done.set()

    async def stop(self) -> None:
        """Stop sending; wait (within the request timeout plus a second) for answers in flight."""
        self._stop.set()
        with anyio.move_on_after(self.cfg.request_timeout + 1.0):
            await self._done.wait()


def _summary(
    rows: Sequence[Mapping[str, Any]], start: float, end: float, ok: Any
) -> dict[str, Any]:
    lat = sorted(float(r["latency_ms"]) for r in rows)
    good = sorted(
        float(r["at"]) + float(r["latency_ms"]) / 1000.0 for r in rows if ok(int(r["status"]))
    )
    edges = [start, *[g for g in good if start <= g <= end], end]
    stall = max((b - a for a, b in itertools.pairwise(edges)), default=0.0)
    return {
        "requests": len(rows),
        "failed": sum(1 for r in rows if not ok(int(r["status"]))),
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": lat[-1] if lat else 0.0,
        "longest_stall_s": round(max(0.0, stall), 3),
    }


def phases(
    records: Sequence[Mapping[str, Any]],
    moments: Sequence[tuple[dt.datetime, str, Mapping[str, Any]]],
    probe_start: float,
    probe_end: float,
    t0: dt.datetime,
    cfg: ImpactConfig,
) -> dict[str, Any]:
    """The customers' view per phase and per second (see the module docstring).

    `moments` are the deployment's journal entries as (at, kind, data), in order; times in
    the result are seconds since `t0` (the deployment's start).
    """
    ok = status_ok(cfg)
    cuts: list[tuple[float, str]] = [(probe_start, "before")]
    for at, kind, data in moments:
        label = BOUNDARY_KINDS.get(kind)
        if label is None:
            continue
        if label in ("wave", "bake"):
            label = f"{label} {data.get('wave', '?')}"
        ts = at.timestamp()
        if cuts and cuts[-1][1] == label:
            continue
        if label == "after" and cuts[-1][1] == "after":
            continue
        cuts.append((ts, label))
    base = t0.timestamp()
    out_phases = []
    for i, (start, label) in enumerate(cuts):
        end = cuts[i + 1][0] if i + 1 < len(cuts) else probe_end
        if end <= start:
            continue
        rows = [r for r in records if start <= float(r["at"]) < end]
        out_phases.append(
            {
                "phase": label,
                "start": round(start - base, 3),
                "end": round(end - base, 3),
                **_summary(rows, start, end, ok),
            }
        )
    seconds: dict[str, list[Any]] = {
        "t": [],
        "requests": [],
        "failed": [],
        "p99_ms": [],
        "max_ms": [],
    }
    by_sec: dict[int, list[Mapping[str, Any]]] = {}
    for r in records:
        by_sec.setdefault(math.floor(float(r["at"]) - base), []).append(r)
    for sec in sorted(by_sec):
        rows = by_sec[sec]
        lat = sorted(float(r["latency_ms"]) for r in rows)
        seconds["t"].append(sec + 0.5)
        seconds["requests"].append(len(rows))
        seconds["failed"].append(sum(1 for r in rows if not ok(int(r["status"]))))
        seconds["p99_ms"].append(round(percentile(lat, 0.99), 2))
        seconds["max_ms"].append(round(lat[-1], 2) if lat else 0.0)
    total = _summary(records, probe_start, probe_end, ok)
    return {
        "url": public_url(cfg.url),
        "rps": cfg.rps,
        "paths": list(cfg.paths),
        "expect_status": list(cfg.expect_status) or ["1xx-4xx"],
        "total": total,
        "phases": out_phases,
        "seconds": seconds,
    }
