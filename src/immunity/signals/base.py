"""The `SignalSource` role: per-cohort observations over a window.

A source is asked, once per bake interval, what each cohort's hosts did between `start`
and `end` (aware UTC). It returns one `Observation` per cohort; when it cannot tell it
returns `Observation.missing(...)` or raises `SignalError` — never zeros that look like a pass.
An answer that is partial, stale or implausible for the window is `Observation.rejected(...)`
naming what is wrong: never evidence. `vet` applies the checks every answer must pass, and
`delay_of` reads a source's declared delay.

A source that reads cumulative counters (the difference of two readings is a window's
count) may define `async def begin(self, at: dt.datetime) -> None`: the bake calls it just
before its first window opens at `at`, so the reading that starts that window is taken then
and the bake's first look counts (see `begin_all`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from immunity.domain import Cohort, HostRef, Observation


@dataclass(frozen=True)
class RecentTraffic:
    """What a source counted of the hosts' current traffic at preflight, kept as the
    source's `recent_traffic` attribute for preflight's cross-check with the balancer's own
    counters (`analysis.preflight.cross_check_traffic`).

    `requests`: the hosts' requests over [`start`, `end`) (aware UTC, the time the requests
    happened: a source that reads windows back in time gives the window it read), None when
    it had no count at all (no series, no documents). `settle_s`: how long after a request
    the source surely counts it, for a fresh look (its delay, bins, scrape interval); None
    when that is longer than a preflight can wait (CloudWatch's publication lag)."""

    requests: int | None
    start: dt.datetime
    end: dt.datetime
    settle_s: float | None

    @property
    def silent(self) -> bool:
        """No request counted (zero, or no count at all)."""
        return not self.requests


def recent_traffic(source: object) -> RecentTraffic | None:
    """A source's `recent_traffic` as its preflight left it, or None (not said)."""
    seen = getattr(source, "recent_traffic", None)
    return seen if isinstance(seen, RecentTraffic) else None


@runtime_checkable
class SignalSource(Protocol):
    name: str

    async def observe(
        self,
        cohorts: Mapping[Cohort, Sequence[HostRef]],
        start: dt.datetime,
        end: dt.datetime,
    ) -> dict[Cohort, Observation]:
        """Observations for each cohort over [start, end). Caller owns the deadline."""
        ...

    async def aclose(self) -> None: ...


MAX_REQUESTS_PER_HOST_S = 500_000.0
"""More requests than this per host and second of window is not a count over the window
(a cumulative counter printed as a count, a unit mistake): the answer is implausible."""
HISTOGRAM_SLACK = 0.1
"""A latency histogram whose total differs from the request count by more than this share
(and more than 5 requests) describes other requests: the answer is partial."""


def delay_of(source: object) -> float:
    """Seconds after which a source's answer for a window is complete (`delay`, default 0).

    A source declares it as a `delay` attribute: an access log has none, a metrics store its
    scrape or ingest lag, CloudWatch its publication lag (it shifts windows itself and so
    declares 0). The bake ends each window that long before now, and looks as soon as that
    allows.
    """
    value = getattr(source, "delay", 0.0)
    try:
        delay = float(value)
    except (TypeError, ValueError):
        return 0.0
    return delay if math.isfinite(delay) and delay > 0 else 0.0


def resolution_of(source: object) -> float:
    """Seconds that a source's window edges must be multiples of (`resolution`, default 0:
    any instant). The `command` source declares 1: its windows are whole seconds, so the
    bake asks it only when a new whole second is complete."""
    value = getattr(source, "resolution", 0.0)
    try:
        res = float(value)
    except (TypeError, ValueError):
        return 0.0
    return res if math.isfinite(res) and res > 0 else 0.0


def vet(obs: Observation, window_s: float, hosts: int) -> Observation:
    """`obs` when it is plausible for a window of `window_s` seconds over `hosts` hosts, else
    `Observation.rejected` naming what is wrong. Applied by the bake to every source's answer.

    Rejected: negative or non-integer counts (a counter that went backwards), more errors
    than requests, more than `MAX_REQUESTS_PER_HOST_S` requests per host-second, a latency
    histogram with negative counts, the wrong number of buckets, or a total that disagrees
    with the request count.
    """
    if not obs.available:
        return obs
    n, x = obs.requests, obs.errors
    if not isinstance(n, int) or not isinstance(x, int) or isinstance(n, bool):
        return Observation.rejected(f"implausible answer: counts {n!r}/{x!r} are not integers")
    if n < 0 or x < 0:
        return Observation.rejected(
            f"implausible answer: negative count ({n} requests, {x} errors): a counter went "
            "backwards"
        )
    if x > n:
        return Observation.rejected(f"implausible answer: {x} errors > {n} requests")
    per = max(1, hosts, obs.hosts)  # a fleet-wide source (CloudWatch) counts every host
    seconds = max(window_s, 1.0)
    if n > MAX_REQUESTS_PER_HOST_S * per * seconds:
        return Observation.rejected(
            f"implausible answer: {n} requests in a {window_s:.3g} s window from {per} host(s) "
            f"(over {MAX_REQUESTS_PER_HOST_S:,.0f} per host and second): a cumulative counter "
            "instead of a count over the window?"
        )
    buckets = obs.latency_buckets
    if buckets:
        if len(buckets) != len(obs.latency_bounds_ms) + 1:
            return Observation.rejected(
                f"partial answer: {len(buckets)} latency buckets for "
                f"{len(obs.latency_bounds_ms)} bounds (one overflow bucket expected)"
            )
        if any(b < 0 for b in buckets):
            return Observation.rejected("implausible answer: a negative latency bucket count")
        total = sum(buckets)
        if abs(total - n) > max(5, HISTOGRAM_SLACK * n):
            return Observation.rejected(
                f"partial answer: the latency histogram counts {total} requests, the request "
                f"count is {n}"
            )
    return obs


async def begin(source: object, at: dt.datetime) -> None:
    """Call `source.begin(at)` when the source defines it (see the module's docstring).

    Raises what the source raises (`SignalError`); the caller decides what it costs."""
    hook = getattr(source, "begin", None)
    if hook is not None and callable(hook):
        await hook(at)
