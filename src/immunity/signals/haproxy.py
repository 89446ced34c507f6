"""Per-cohort request, 5xx and latency counts from HAProxy (2.4+).

Best source: HAProxy's JSON access log, one line per request with at least the server name,
status, accept time and timers, in the sandbox's format::

    {"ts":%Ts.%ms,"srv":"%s","st":%ST,"Ta":%Ta,"Tt":%Tt,...}

Lines that are not JSON objects (HAProxy's own "Server ... is DOWN" notices) are skipped;
syslog prefixes before the ``{`` are tolerated. The file is tailed incrementally (a byte
offset, reset when the file shrinks), and records are kept in memory for `retention` seconds.
A request counts in the window holding its *completion* time (``ts + Tt``): that is when
its answer is known. Latency is ``Ta`` (active time: receive, queue, connect, response).
Every status >= 500 on a server counts as an error, including the 502/503/504 that HAProxy
itself answers for that server. Requests with no server (``<NOSRV>``) or no status
(client aborts, ``st`` -1) are not counted.

Without an access log the source diffs ``show stat`` counters (``req_tot``, ``hrsp_5xx`` +
``eresp``) per server between snapshots, one taken at preflight and one per look; then
windows are "since the snapshot nearest before `start`" and there is no latency.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from immunity.clients.haproxy import HAProxyClient
from immunity.config import resolve_path
from immunity.config.types import Duration, LatencyBounds
from immunity.domain import Cohort, HostRef, Observation
from immunity.errors import BalancerError, PreflightError, SignalError

ADAPTER = "haproxy"
# On first open of a large log, read only its tail: older lines are past any window we keep.
_MAX_BACKLOG_BYTES = 64 * 1024 * 1024
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LogRecord:
    end: float  # unix seconds of completion
    server: str
    status: int
    latency_ms: float


def parse_line(line: str | bytes) -> LogRecord | None:
    """One access-log line -> LogRecord, or None when it is not a request we count."""
    if isinstance(line, bytes):
        line = line.decode(errors="replace")
    brace = line.find("{")
    if brace < 0:
        return None
    try:
        obj = json.loads(line[brace:])
        server = str(obj["srv"])
        status = int(obj["st"])
        ts = float(obj["ts"])
        total = float(obj.get("Tt", obj.get("Ta", 0)) or 0)
        active = float(obj.get("Ta", total) or 0)
    except (ValueError, KeyError, TypeError):
        return None
    if status < 100 or not server or server.startswith("<"):
        return None
    return LogRecord(
        end=ts + max(total, 0.0) / 1000.0, server=server, status=status, latency_ms=max(active, 0.0)
    )


class LogTail:
    """Incremental reader of a growing log file, keeping recent records sorted by end time."""

    def __init__(self, path: Path, retention: float) -> None:
        self.path = path
        self.retention = retention
        self.offset: int | None = None
        self.inode: int | None = None
        self.partial = b""
        self.ends: list[float] = []
        self.records: list[LogRecord] = []

    def poll(self) -> None:
        """Read what was appended since the last poll. Raises OSError when unreadable."""
        st = os.stat(self.path)
        if self.offset is None or st.st_ino != self.inode or st.st_size < self.offset:
            self.inode = st.st_ino
            self.offset = max(0, st.st_size - _MAX_BACKLOG_BYTES) if self.offset is None else 0
            self.partial = b""
            skip_first = self.offset > 0
        else:
            skip_first = False
        if st.st_size == self.offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            new: list[LogRecord] = []
            while chunk := f.read(_CHUNK):
                self.offset += len(chunk)
                data = self.partial + chunk
                lines = data.split(b"\n")
                self.partial = lines.pop()
                if skip_first and lines:
                    lines = lines[1:]  # we started mid-line
                    skip_first = False
                for raw in lines:
                    rec = parse_line(raw)
                    if rec is not None:
                        new.append(rec)
        self._add(new)

    def _add(self, new: list[LogRecord]) -> None:
        if not new:
            return
        # Lines are written at completion, so they arrive almost sorted: sort the batch and
        # merge only when it overlaps the tail.
        new.sort(key=lambda r: r.end)
        if self.records and new[0].end < self.records[-1].end:
            self.records = sorted(self.records + new, key=lambda r: r.end)
            self.ends = [r.end for r in self.records]
        else:
            self.records.extend(new)
            self.ends.extend(r.end for r in new)
        cut = bisect.bisect_left(self.ends, self.ends[-1] - self.retention)
        if cut:
            del self.records[:cut]
            del self.ends[:cut]

    def window(self, start: float, end: float) -> list[LogRecord]:
        lo = bisect.bisect_left(self.ends, start)
        hi = bisect.bisect_left(self.ends, end)
        return self.records[lo:hi]


class HAProxySource:
    """`SignalSource` over HAProxy's access log, or its ``show stat`` counters."""

    class Settings(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        name: str = "haproxy"
        socket: str | None = None
        """Runtime API socket; needed when `access_log` is not set (counter mode)."""
        backend: str = "be_app"
        access_log: str | None = None
        """JSON access log written by HAProxy (see the module docstring for the format)."""
        latency_bounds_ms: LatencyBounds = Field(
            # Fine at the low end: a fast app's p50 and p90 must fall in different buckets
            # or a latency threshold snapped to a bound says nothing.
            default_factory=lambda: [
                1.0,
                2.0,
                3.0,
                4.0,
                5.0,
                7.0,
                10.0,
                15.0,
                20.0,
                30.0,
                50.0,
                75.0,
                100.0,
                150.0,
                250.0,
                500.0,
                1000.0,
                2500.0,
                5000.0,
                10000.0,
            ]
        )
        retention: Duration = 900.0
        """How long log records are kept in memory (the longest window asked for)."""

    def __init__(self, settings: HAProxySource.Settings, *, base_dir: Path) -> None:
        self.settings = settings
        self.name = settings.name
        self.bounds = list(settings.latency_bounds_ms)  # sorted by LatencyBounds
        self.tail = (
            LogTail(resolve_path(base_dir, settings.access_log), settings.retention)
            if settings.access_log
            else None
        )
        self.client = (
            HAProxyClient(resolve_path(base_dir, settings.socket)) if settings.socket else None
        )
        # counter mode: (unix time, {server: (requests, errors)})
        self.snapshots: list[tuple[float, dict[str, tuple[int, int]]]] = []
        if self.tail is None and self.client is None:
            raise SignalError(f"signal {self.name!r}: set access_log or socket", adapter=ADAPTER)

    async def preflight(self, hosts: Sequence[HostRef]) -> None:
        if self.tail is not None:
            try:
                self.tail.poll()
            except OSError as exc:
                raise PreflightError(
                    f"signal {self.name!r}: cannot read HAProxy access log {self.tail.path}: "
                    f"{exc.strerror or exc}",
                    hint="check signals[].access_log and that HAProxy logs there",
                ) from exc
            return
        try:
            await self._snapshot()
        except SignalError as exc:
            raise PreflightError(f"signal {self.name!r}: {exc.message}", hint=exc.hint) from exc

    async def observe(
        self,
        cohorts: Mapping[Cohort, Sequence[HostRef]],
        start: dt.datetime,
        end: dt.datetime,
    ) -> dict[Cohort, Observation]:
        if self.tail is not None:
            return self._observe_log(cohorts, start.timestamp(), end.timestamp())
        return await self._observe_counters(cohorts, start.timestamp())

    # -- access log --

    def _observe_log(
        self, cohorts: Mapping[Cohort, Sequence[HostRef]], start: float, end: float
    ) -> dict[Cohort, Observation]:
        assert self.tail is not None
        try:
            self.tail.poll()
        except OSError as exc:
            detail = f"access log {self.tail.path} unreadable: {exc.strerror or exc}"
            return {c: Observation.missing(detail) for c in cohorts}
        records = self.tail.window(start, end)
        out: dict[Cohort, Observation] = {}
        for cohort, hosts in cohorts.items():
            names = {h.balancer_id for h in hosts}
            buckets = [0] * (len(self.bounds) + 1)
            requests = errors = 0
            for r in records:
                if r.server not in names:
                    continue
                requests += 1
                if r.status >= 500:
                    errors += 1
                buckets[bisect.bisect_left(self.bounds, r.latency_ms)] += 1
            out[cohort] = Observation(
                requests=requests,
                errors=errors,
                latency_bounds_ms=tuple(self.bounds),
                latency_buckets=tuple(buckets),
                hosts=len(hosts),
                detail=f"access log, {len(records)} requests in window",
            )
        return out

    # -- show stat counters --

    async def _snapshot(self) -> dict[str, tuple[int, int]]:
        assert self.client is not None
        try:
            stats = await self.client.show_stat(self.settings.backend)
        except BalancerError as exc:
            raise SignalError(
                f"signal {self.name!r}: {exc.message}", adapter=ADAPTER, hint=exc.hint
            ) from exc
        snap = {name: (s.req_tot, s.hrsp_5xx + s.eresp) for name, s in stats.items()}
        now = time.time()
        self.snapshots.append((now, snap))
        horizon = now - self.settings.retention
        self.snapshots = [s for s in self.snapshots if s[0] >= horizon] or self.snapshots[-1:]
        return snap

    async def _observe_counters(
        self, cohorts: Mapping[Cohort, Sequence[HostRef]], start: float
    ) -> dict[Cohort, Observation]:
        before = [s for s in self.snapshots if s[0] <= start + 0.5]
        base = before[-1] if before else None
        try:
            now = await self._snapshot()
        except SignalError as exc:
            return {c: Observation.missing(exc.message) for c in cohorts}
        if base is None:
            detail = "no show-stat snapshot before the window start yet (counters start now)"
            return {c: Observation.missing(detail) for c in cohorts}
        out: dict[Cohort, Observation] = {}
        for cohort, hosts in cohorts.items():
            requests = errors = 0
            for h in hosts:
                cur = now.get(h.balancer_id)
                old = base[1].get(h.balancer_id, (0, 0))
                if cur is None:
                    continue
                # Counters reset when a server is re-added: count from zero then.
                dr, de = cur[0] - old[0], cur[1] - old[1]
                requests += cur[0] if dr < 0 else dr
                errors += cur[1] if de < 0 else de
            out[cohort] = Observation(
                requests=requests,
                errors=min(errors, requests) if requests else errors,
                hosts=len(hosts),
                detail="show stat counters",
            )
        return out

    async def aclose(self) -> None:
        return None
