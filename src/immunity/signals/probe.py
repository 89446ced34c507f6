"""Probe traffic: identical requests sent straight to canary and baseline hosts during a bake.

When customers are few (a quiet hour, a sandbox with no load) the checks cannot decide by
`bake.max` on customer traffic. The probe sends the same requests — the configured `paths`
in turn, with the configured `headers` — to every host of both cohorts at the same rate
(`rate` requests/s per host), bypassing the balancer, and reports what the hosts answered
as its own per-cohort observations. The bake judges them with the same checks as customer
traffic (each check gets a "(probe)" twin on this source).

A probe request is an *error* when it is answered with a 5xx, times out (`timeout`) or fails
to connect: a host in the pool that does not answer is failing. Its latency is measured
from sending the request to reading the whole response. A request counts in the window that
holds its completion time, under the cohort the host belonged to when it was sent; an
answer from a host that has changed cohort or left the pool since is dropped.

Steering (`steer`, called by the bake after every look with the customers' rates):

* `when: auto` (default): the probe runs only while customers bring a canary host fewer
  requests/s (over the last `STEER_WINDOW_S` seconds of looks) than the checks need to
  decide by `bake.max` (`judge.need`: derived from the checks' tolerances, alpha, beta, the
  cohorts' sizes and the baseline's own 5xx rate); it stops when customers come back, and
  starts again when they leave. Until the need can be derived (too few baseline requests
  yet to know their 5xx rate, or no comparison check), the threshold is `rate`. The state
  (journaled with every look) gives the figure and the check it comes from. `when: always`
  keeps it running.
* `max_share`: the probe's requests never exceed this share of all the requests the fleet
  serves (customers' plus the probe's): its rate is capped at
  `customers × max_share / (1 - max_share)`. At 100% (the default) only `rate` bounds it;
  below 100% a fleet with no customers gets no probe traffic at all.

The probe sends during each bake (`sending`), from its start; it keeps its steering between
bakes, so a bake starts with the probe on (the first bake always does) unless the last looks
showed enough customers. A host with `MAX_IN_FLIGHT_PER_HOST` probe requests
unanswered gets no more until it answers (skipped, not queued).
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from immunity.config.models import ProbeConfig
from immunity.domain import PROBE_SIGNAL, Cohort, HostRef, Observation

if TYPE_CHECKING:
    import httpx  # imported where requests are sent: `status` builds this source, sends none

    from immunity.judge.need import Need  # scipy: only the bake, which has it, passes one

log = logging.getLogger("immunity.signals.probe")

NAME = PROBE_SIGNAL
"""The probe's signal name (reserved: no configured signal may use it)."""
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000,
    3000, 5000, 10000, 30000,
)  # fmt: skip
TICK_S = 0.02
MAX_IN_FLIGHT = 256
MAX_IN_FLIGHT_PER_HOST = 4
"""A host (or this process) that falls behind gets no more probe requests until it catches
up: the probe never piles load on a slow host, nor timeouts of its own making."""
RETENTION_S = 600.0
STEER_WINDOW_S = 10.0

CohortsFn = Callable[[], Mapping[Cohort, Sequence[HostRef]]]


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    end: float  # unix seconds of completion
    host: str
    cohort: Cohort
    error: bool
    latency_ms: float


class ProbeSource:
    """A `SignalSource` that also generates the traffic it observes (see the module doc).

    `steer` sets how fast it sends; `sending(cohorts)` is the async context during which it
    sends (the bake's duration). `sent` counts requests sent per host name (for reports).
    """

    name = NAME

    def __init__(self, config: ProbeConfig) -> None:
        self.config = config
        self.records: deque[ProbeRecord] = deque()
        self.sent: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}
        self.skipped = 0
        self.active = True
        self.rate = config.rate
        self.reason = "starting with the bake"
        self.hosts = 1
        self.window: deque[tuple[float, float, float, int]] = deque()
        self._client: httpx.AsyncClient | None = None
        self._order = random.Random()  # the order of each round of probe requests

    # -- steering ---------------------------------------------------------------------------

    def steer(
        self, dt_s: float, customers: tuple[float, float, int] | None, need: Need | None = None
    ) -> None:
        """Decide the probe's rate from the customers' traffic over the last look.

        `customers` is (customers' requests on the canary hosts, on both cohorts, number of
        canary hosts) over the last `dt_s` seconds, or None when no customer signal could say
        (the probe then keeps its current state). Rates are judged over the last
        `STEER_WINDOW_S` seconds of looks. `need` is what the checks need per canary host
        (`judge.need.needed_rate`); without it the threshold is the configured `rate`.
        """
        cfg = self.config
        if customers is None or dt_s <= 0:
            return
        self.window.append((dt_s, *customers))
        span = sum(w[0] for w in self.window)
        while len(self.window) > 1 and span - self.window[0][0] >= STEER_WINDOW_S:
            span -= self.window.popleft()[0]
        per_host = sum(w[1] / max(w[3], 1) for w in self.window) / span
        total = sum(w[2] for w in self.window) / span
        if need is not None:
            threshold = need.rate
            what = f"what the checks need to decide by bake.max ({need.why})"
        else:
            threshold = cfg.rate
            what = "the probe's rate: the checks' need is not known yet"
        if cfg.when == "auto" and per_host >= threshold:
            self._set(
                False,
                0.0,
                f"customers bring {per_host:.1f} requests/s per canary host "
                f"(>= {threshold:.3g}, {what})",
            )
            return
        rate = cfg.rate
        reason = (
            f"customers bring {per_host:.1f} requests/s per canary host (< {threshold:.3g}, {what})"
            if cfg.when == "auto"
            else "always on"
        )
        if cfg.max_share < 1.0:
            cap = total * cfg.max_share / (1.0 - cfg.max_share) / max(self.hosts, 1)
            if cap < rate:
                rate = cap
                reason += f"; capped at {cfg.max_share:.0%} of the fleet's requests"
        self._set(rate > 0.0, rate, reason)

    @property
    def state(self) -> str:
        """On or off, at what rate and why, as the bake journals it."""
        return f"{'on' if self.active else 'off'} at {self.rate:g}/s: {self.reason}"

    def _set(self, active: bool, rate: float, reason: str) -> None:
        if active != self.active:
            log.info("probe %s: %s", "on" if active else "off", reason)
        self.active, self.rate, self.reason = active, rate, reason

    # -- sending ----------------------------------------------------------------------------

    @asynccontextmanager
    async def sending(self, cohorts: CohortsFn) -> AsyncIterator[None]:
        """Send probe requests to the hosts `cohorts()` names until the context exits."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run, cohorts)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    def _http(self) -> httpx.AsyncClient:
        import httpx

        if self._client is None:
            cfg = self.config
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(cfg.timeout),
                headers=dict(cfg.headers),
                verify=cfg.tls_verify,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64),
            )
        return self._client

    async def _run(self, cohorts: CohortsFn) -> None:
        client = self._http()
        limiter = anyio.CapacityLimiter(MAX_IN_FLIGHT)
        due = 0.0  # requests owed to every host since the last tick (fractional)
        index = 0
        last = time.monotonic()
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.sleep(self._tick())
                now = time.monotonic()
                elapsed, last = now - last, now
                groups = cohorts()
                members = [(c, h) for c, hosts in groups.items() for h in hosts]
                self.hosts = max(len(members), 1)
                if not self.active or not members:
                    due = 0.0
                    continue
                due += elapsed * self.rate
                while due >= 1.0:
                    due -= 1.0
                    path = self.config.paths[index % len(self.config.paths)]
                    index += 1
                    # A round's requests start one after another on this event loop, and each
                    # one's clock starts when it is issued: the first waits while the others
                    # are sent. In a fixed order that wait is always the canary's (~0.8 ms on
                    # a 7 ms app: enough to fail a good release's p50 on 40 req/s). A random
                    # order per round gives every host the same wait in expectation.
                    self._order.shuffle(members)
                    for cohort, host in members:
                        if (
                            limiter.borrowed_tokens >= MAX_IN_FLIGHT
                            or self.in_flight.get(host.name, 0) >= MAX_IN_FLIGHT_PER_HOST
                        ):
                            self.skipped += 1
                            continue  # not keeping up: never queue, skip this one
                        self.in_flight[host.name] = self.in_flight.get(host.name, 0) + 1
                        tg.start_soon(self._one, client, limiter, cohorts, cohort, host, path)

    def _tick(self) -> float:
        """Seconds until the next round is due: `TICK_S`, or one round's interval at rates
        above 1/`TICK_S`. Every request due since the last wake-up starts at once, so at 20 ms
        a rate of 400/s sent each host 8 at the same instant: they queued at the host, and
        past `MAX_IN_FLIGHT_PER_HOST` were skipped (no rate above 200/s per host was sent)."""
        if not self.active or self.rate <= 0:
            return TICK_S
        return min(TICK_S, 1.0 / self.rate)

    async def _one(
        self,
        client: httpx.AsyncClient,
        limiter: anyio.CapacityLimiter,
        cohorts: CohortsFn,
        cohort: Cohort,
        host: HostRef,
        path: str,
    ) -> None:
        import httpx

        try:
            async with limiter:
                self.sent[host.name] = self.sent.get(host.name, 0) + 1
                began = time.monotonic()
                try:
                    response = await client.get(host.base_url + path)
                    await response.aread()
                    error = response.status_code >= 500
                except httpx.HTTPError:
                    error = True
                latency_ms = (time.monotonic() - began) * 1000.0
        finally:
            self.in_flight[host.name] -= 1
        if host.name not in {h.name for h in cohorts().get(cohort, ())}:
            return  # the host changed cohort or left the pool meanwhile
        self.records.append(ProbeRecord(time.time(), host.name, cohort, error, latency_ms))

    # -- observing --------------------------------------------------------------------------

    async def observe(
        self,
        cohorts: Mapping[Cohort, Sequence[HostRef]],
        start: dt.datetime,
        end: dt.datetime,
    ) -> dict[Cohort, Observation]:
        t0, t1 = start.timestamp(), end.timestamp()
        while self.records and self.records[0].end < t1 - RETENTION_S:
            self.records.popleft()
        bounds = LATENCY_BOUNDS_MS
        out: dict[Cohort, Observation] = {}
        for cohort, hosts in cohorts.items():
            buckets = [0] * (len(bounds) + 1)
            requests = errors = 0
            for r in self.records:
                if r.cohort is not cohort or not t0 <= r.end < t1:
                    continue
                requests += 1
                errors += r.error
                buckets[bisect.bisect_left(bounds, r.latency_ms)] += 1
            out[cohort] = Observation(
                requests=requests,
                errors=errors,
                latency_bounds_ms=bounds,
                latency_buckets=tuple(buckets),
                hosts=len(hosts),
                detail=f"probe ({'on' if self.active else 'off'}: {self.reason})",
            )
        return out

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def customer_traffic(
    observations: Mapping[str, Mapping[Cohort | str, Observation]], canary_hosts: int
) -> tuple[float, float, int] | None:
    """(requests on the canary hosts, requests on both cohorts, canary hosts) that customers
    brought over one look, as the busiest customer signal saw them; None when none could say."""
    best: tuple[float, float, int] | None = None
    for name, per in observations.items():
        canary, baseline = per.get(Cohort.CANARY), per.get(Cohort.BASELINE)
        if name == NAME or canary is None or baseline is None:
            continue
        if not canary.available or not baseline.available:
            continue
        total = float(canary.requests + baseline.requests)
        if best is None or total > best[1]:
            best = (float(canary.requests), total, canary.hosts or canary_hosts)
    return best
