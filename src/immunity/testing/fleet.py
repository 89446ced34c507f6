"""An in-memory fleet: balancer, host driver, prober and signal source over one `World`.

The world holds each host's installed and active release and its state in the pool, and
each release's behaviour (error rate, latency, whether it becomes healthy and warms up).
Every call waits its configured latency on the injected clock, so a fleet runs in real time
(`bench scale`) or in virtual time (`VirtualClock`, the engine's unit tests) alike. Faults
are set per host and step: `world.fail[("h2", "start")] = "no disk"` makes that step raise
(the role's own error: `BalancerError` from the balancer, `HostError` from the driver),
`fail_once` the same, the first time only; `world.hang.add(("h2", "drain"))` makes it wait
until the caller's deadline, every time, `hang_once` the first time only.

Steps: the balancer's `drain_request` (`drain`), `drain` (`wait_drained`),
`enable_request` (`enable`), `health` (`wait_healthy`), `members`; the driver's `read`,
`install`, `stop`, `start`; the prober's `verify`, `warmup`; the signals' `observe`
(host `*`).

`memory_fleet(...)` builds an engine `Fleet` over a new world from a config dict.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from pydantic import BaseModel

from immunity.clock import SYSTEM_CLOCK, Clock
from immunity.config import LoadedConfig
from immunity.config.models import Config
from immunity.domain import Cohort, HostRef, LbState, Member, Observation
from immunity.errors import BalancerError, HostError, PreflightError, SignalError, StepFailed
from immunity.fleet.context import Fleet
from immunity.journal.base import Journal
from immunity.testing.journal import MemoryJournal


class NoSettings(BaseModel):
    """The in-memory adapters' (empty) settings."""


LATENCY_BOUNDS_MS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)


@dataclass(frozen=True)
class Latencies:
    """Seconds each call takes (the orchestrator waits them); all 0 by default.

    `drain` is `wait_drained` (in-flight requests finishing), `health` is `wait_healthy`
    (the balancer's health checks passing), `warmup` the whole warm-up.
    """

    drain: float = 0.0
    stop: float = 0.0
    install: float = 0.0
    start: float = 0.0
    verify: float = 0.0
    warmup: float = 0.0
    health: float = 0.0
    call: float = 0.0  # every other call (reads, drain and enable requests)
    observe: float = 0.0

    @classmethod
    def realistic(cls) -> Latencies:
        """A web app behind a balancer: 2 s drain, 1 s start, 1 s warm-up, 0.5 s health."""
        return cls(
            drain=2.0,
            stop=0.2,
            install=0.5,
            start=1.0,
            verify=0.3,
            warmup=1.0,
            health=0.5,
            call=0.002,
            observe=0.01,
        )

    def switch_s(self) -> float:
        """One host's whole switch, step after step."""
        return (
            self.call  # active_release
            + self.call
            + self.drain
            + self.stop
            + self.install
            + self.start
            + self.verify
            + self.warmup
            + self.call
            + self.health
        )


@dataclass(frozen=True)
class Behaviour:
    """How a release serves: `error_rate` (0..1), median latency (ms), and whether it ever
    passes its health check (`healthy`) and warms up (`warms`)."""

    error_rate: float = 0.001
    latency_ms: float = 30.0
    healthy: bool = True
    warms: bool = True


@dataclass
class HostState:
    installed: list[str]
    active: str | None
    lb: LbState = LbState.SERVING
    name: str = ""


@dataclass(frozen=True)
class Served:
    """One request a host answered: when (epoch seconds), status, latency (ms)."""

    at: float
    host: str
    status: int
    latency_ms: float


@dataclass
class World:
    """Everything the in-memory adapters share. Mutate it in tests; read it to check."""

    hosts: dict[str, HostState]
    releases: dict[str, Behaviour]
    latencies: Latencies = Latencies()
    clock: Clock = SYSTEM_CLOCK
    rps_per_host: float = 50.0
    seed: int = 1
    fail: dict[tuple[str, str], str] = field(default_factory=dict)
    fail_once: dict[tuple[str, str], str] = field(default_factory=dict)
    hang: set[tuple[str, str]] = field(default_factory=set)
    hang_once: set[tuple[str, str]] = field(default_factory=set)
    in_flight: dict[str, int] = field(default_factory=dict)
    """Requests in flight per host: `wait_drained` waits until its host has none."""
    probed: dict[str, int] = field(default_factory=dict)
    """Probes (verify, warm-up) each host answered."""
    served: list[Served] = field(default_factory=list)
    """Requests sent one by one (`serve`, `route`), counted by `MemorySignals` beside the
    `rps_per_host` traffic."""
    calls: int = 0
    switches: int = 0  # hosts that became active on another release
    out: int = 0  # hosts not serving now
    peak_out: int = 0  # the most hosts ever not serving at once
    _members: dict[str, Member] = field(default_factory=dict, repr=False)
    _next: int = field(default=0, repr=False)
    _answered: dict[str, int] = field(default_factory=dict, repr=False)

    def member(self, name: str) -> Member:
        """The balancer's view of `name` (cached until its state changes)."""
        m = self._members.get(name)
        state = self.hosts[name].lb
        if m is None or m.state is not state:
            m = self._members[name] = Member(name, state)
        return m

    def set_lb(self, st: HostState, state: LbState) -> None:
        """Change a host's pool state, counting hosts out of service (for capacity checks)."""
        was_out = st.lb is not LbState.SERVING
        st.lb = state
        self._members.pop(st.name, None)
        self.out += (state is not LbState.SERVING) - was_out
        self.peak_out = max(self.peak_out, self.out)

    @classmethod
    def of(
        cls,
        names: Sequence[str],
        release: str = "v1",
        releases: Mapping[str, Behaviour] | None = None,
        **kw: Any,
    ) -> World:
        rel = dict(releases or {"v1": Behaviour(), "v2": Behaviour()})
        rel.setdefault(release, Behaviour())
        return cls({n: HostState([release], release, name=n) for n in names}, rel, **kw)

    def serve(self, host: str, status: int = 200, latency_ms: float | None = None) -> Served:
        """`host` answers one request now with `status` (latency: its release's median)."""
        st = self.hosts[host]
        if latency_ms is None:
            latency_ms = self.releases[st.active].latency_ms if st.active else 0.0
        done = Served(self.clock.now().timestamp(), host, status, latency_ms)
        self.served.append(done)
        return done

    def route(self, n: int) -> list[Served]:
        """`n` new requests through the balancer: round robin over the hosts in the pool
        (`SERVING`), each answered as its active release answers (5xx at its error rate,
        every 1/error_rate-th request)."""
        pool = [name for name, st in self.hosts.items() if st.lb is LbState.SERVING]
        if not pool:
            raise BalancerError("no host in the pool answers", adapter="memory")
        out = []
        for i in range(n):
            name = pool[(self._next + i) % len(pool)]
            active = self.hosts[name].active
            rate = self.releases[active].error_rate if active else 1.0
            nth = self._answered[name] = self._answered.get(name, 0) + 1
            failing = rate > 0 and int(nth * rate) > int((nth - 1) * rate)
            out.append(self.serve(name, 500 if failing else 200))
        self._next += n
        return out

    async def wait(
        self,
        host: str,
        step: str,
        seconds: float,
        error: type[HostError] | type[BalancerError] = HostError,
    ) -> None:
        """Take `seconds`; raise `error` or hang as `fail`/`hang` (and their `_once`) say for
        (host, step)."""
        self.calls += 1
        if seconds > 0:
            await self.clock.sleep(seconds)
        key = (host, step)
        if key in self.hang or key in self.hang_once:
            self.hang_once.discard(key)
            await anyio.sleep_forever()
        why = self.fail.get(key) or self.fail_once.pop(key, None)
        if why is not None:
            raise error(f"{host}: {step}: {why}", adapter="memory", host=host)

    def state(
        self, host: HostRef, error: type[HostError] | type[BalancerError] = HostError
    ) -> HostState:
        """`host`'s state; `error` naming it when the fleet has no such host."""
        try:
            return self.hosts[host.name]
        except KeyError:
            raise error(
                f"{host.name}: no such host in the in-memory fleet",
                adapter="memory",
                host=host.name,
            ) from None


class MemoryBalancer:
    """`LoadBalancer` over the world: drain → draining, `wait_drained` → out after the drain
    latency; enable → in the pool, `wait_healthy` → serving once its release is healthy."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def members(self, hosts: Sequence[HostRef]) -> dict[str, Member]:
        await self.world.wait("*", "members", self.world.latencies.call, BalancerError)
        return {h.name: self.world.member(h.name) for h in hosts if h.name in self.world.hosts}

    async def pool_members(self) -> dict[str, Member]:
        await self.world.wait("*", "members", self.world.latencies.call, BalancerError)
        return {n: self.world.member(n) for n in self.world.hosts}

    async def drain(self, host: HostRef) -> None:
        await self.world.wait(host.name, "drain_request", self.world.latencies.call, BalancerError)
        st = self.world.state(host, BalancerError)
        if st.lb is not LbState.OUT:
            self.world.set_lb(st, LbState.DRAINING)

    async def wait_drained(self, host: HostRef) -> None:
        st = self.world.state(host, BalancerError)
        if st.lb is not LbState.OUT:
            await self.world.wait(host.name, "drain", self.world.latencies.drain, BalancerError)
            while self.world.in_flight.get(host.name, 0) > 0:
                await self.world.clock.sleep(0.01)
            self.world.set_lb(st, LbState.OUT)

    async def enable(self, host: HostRef) -> None:
        await self.world.wait(host.name, "enable_request", self.world.latencies.call, BalancerError)
        st = self.world.state(host, BalancerError)
        if st.lb is not LbState.SERVING:
            self.world.set_lb(st, LbState.UNHEALTHY)

    async def wait_healthy(self, host: HostRef) -> None:
        st = self.world.state(host, BalancerError)
        await self.world.wait(host.name, "health", self.world.latencies.health, BalancerError)
        while not (st.active and self.world.releases[st.active].healthy):
            await self.world.clock.sleep(1.0)  # health checks go on failing
        if st.lb is LbState.UNHEALTHY:
            self.world.set_lb(st, LbState.SERVING)
        if st.lb is not LbState.SERVING:
            raise BalancerError(
                f"{host.name} is {st.lb}, not in the pool", adapter="memory", host=host.name
            )

    async def aclose(self) -> None:
        return None


class MemoryDriver:
    """`HostDriver` over the world; the releases it knows are `world.releases`."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def installed_releases(self, host: HostRef) -> list[str]:
        await self.world.wait(host.name, "read", self.world.latencies.call)
        return list(self.world.state(host).installed)

    async def active_release(self, host: HostRef) -> str | None:
        await self.world.wait(host.name, "read", self.world.latencies.call)
        return self.world.state(host).active

    async def install(self, host: HostRef, release: str) -> None:
        st = self.world.state(host)
        if release in st.installed:
            return
        await self.world.wait(host.name, "install", self.world.latencies.install)
        if release not in self.world.releases:
            raise HostError(
                f"{host.name}: no package for release {release}", adapter="memory", host=host.name
            )
        st.installed.append(release)

    async def stop(self, host: HostRef) -> None:
        await self.world.wait(host.name, "stop", self.world.latencies.stop)
        self.world.state(host).active = None

    async def start(self, host: HostRef, release: str) -> None:
        st = self.world.state(host)
        if release not in st.installed:
            raise HostError(
                f"{host.name}: {release} is not installed", adapter="memory", host=host.name
            )
        await self.world.wait(host.name, "start", self.world.latencies.start)
        if st.active != release:
            self.world.switches += 1
        st.active = release

    async def check_release(self, release: str) -> None:
        if release not in self.world.releases:
            raise PreflightError(
                f"release {release} has no package",
                hint=f"known releases: {', '.join(sorted(self.world.releases))}",
            )

    async def aclose(self) -> None:
        return None


class MemoryProber:
    """`Prober` over the world: verify passes once the active release is healthy, warm-up
    once it warms; a release that never does keeps them waiting until the deadline, and
    `last_answer` says what the host answered (connection refused, or HTTP 503: no latency
    is measured). Every probe is counted in `world.probed` (host -> probes)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._last: dict[str, str] = {}

    async def verify(self, host: HostRef) -> None:
        await self._until(host, "verify", self.world.latencies.verify, "healthy")

    async def warm_up(self, host: HostRef) -> None:
        await self._until(host, "warmup", self.world.latencies.warmup, "warms")

    async def _until(self, host: HostRef, step: str, seconds: float, what: str) -> None:
        self._last.pop(host.name, None)
        try:
            await self.world.wait(host.name, step, seconds)
        except HostError as exc:
            raise StepFailed(exc.message, host=host.name, step=step) from exc
        st = self.world.state(host)
        probed = self.world.probed
        while True:
            probed[host.name] = probed.get(host.name, 0) + 1
            b = self.world.releases[st.active] if st.active else None
            if b is not None and getattr(b, what):
                return
            self._last[host.name] = "HTTP 503" if b is not None else "connection refused"
            await self.world.clock.sleep(max(0.05, seconds))

    async def check_paths(self, hosts: Sequence[HostRef]) -> list[str]:
        return []

    def last_answer(self, host: HostRef) -> str | None:
        return self._last.get(host.name)

    async def aclose(self) -> None:
        return None


class MemorySignals:
    """`SignalSource`: the requests of `world.served` completed in the window, exactly; and
    each serving host gets `rps_per_host` requests per second; errors follow
    its active release's `error_rate` with one normal draw of noise per cohort and window
    from a seeded generator, latency buckets its lognormal latency (median `latency_ms`).

    The same world, seed and sequence of windows give the same answers, and windows a few
    milliseconds longer or shorter give nearly the same counts from the same draws, so a run
    in real time and its twin in virtual time judge alike.
    """

    delay = 0.0

    def __init__(self, world: World, name: str = "lb") -> None:
        self.world = world
        self.name = name
        self._rng = np.random.default_rng(world.seed)
        self._cdf: dict[float, list[float]] = {}

    async def observe(
        self,
        cohorts: Mapping[Cohort, Sequence[HostRef]],
        start: dt.datetime,
        end: dt.datetime,
    ) -> dict[Cohort, Observation]:
        await self.world.wait("*", "observe", self.world.latencies.observe)
        if ("*", "signal") in self.world.fail:
            why = self.world.fail[("*", "signal")]
            raise SignalError(f"signal {self.name}: {why}", adapter="memory")
        window = (start.timestamp(), max(start, end).timestamp())
        return {c: self._one(hosts, window) for c, hosts in cohorts.items()}

    def _one(self, hosts: Sequence[HostRef], window: tuple[float, float]) -> Observation:
        by_release: dict[str, int] = {}
        for h in hosts:
            st = self.world.hosts.get(h.name)
            if st is not None and st.active and st.lb is LbState.SERVING:
                by_release[st.active] = by_release.get(st.active, 0) + 1
        # two draws per cohort and window, always: the error noise and the latency rounding
        z = float(self._rng.standard_normal())
        u = float(self._rng.random())
        requests = errors = 0
        buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        for release, n in sorted(by_release.items()):
            b = self.world.releases[release]
            # the requests completed in [start, end): whole requests at every 1/rate
            # seconds, so consecutive windows share them out, none lost or counted twice
            rate = self.world.rps_per_host * n
            k = math.floor(rate * window[1]) - math.floor(rate * window[0])
            p = min(1.0, max(0.0, b.error_rate))
            x = round(k * p + z * math.sqrt(k * p * (1.0 - p)))
            requests += k
            errors += min(k, max(0, x))
            below = 0  # requests at or under the previous bound (rounded at random, unbiased)
            for i, cdf in enumerate(self._latency_cdf(b.latency_ms)):
                upto = min(k, math.floor(k * cdf + u))
                buckets[i] += upto - below
                below = upto
        if self.world.served:  # requests sent one by one, counted where they completed
            names = {h.name for h in hosts}
            for r in self.world.served:
                if r.host in names and window[0] <= r.at < window[1]:
                    requests += 1
                    errors += r.status >= 500
                    buckets[bisect.bisect_left(LATENCY_BOUNDS_MS, r.latency_ms)] += 1
        return Observation(requests, errors, LATENCY_BOUNDS_MS, buckets, True, len(hosts))

    def _latency_cdf(self, median_ms: float) -> list[float]:
        """Share of requests at or under each latency bound, then 1.0 (the overflow bucket's
        upper end), for a lognormal (sigma 0.5) around `median_ms`."""
        if median_ms not in self._cdf:
            self._cdf[median_ms] = [
                0.5 * (1.0 + math.erf((math.log(ub) - math.log(median_ms)) / (0.5 * math.sqrt(2))))
                for ub in LATENCY_BOUNDS_MS
            ] + [1.0]
        return self._cdf[median_ms]

    async def aclose(self) -> None:
        return None


def config_for(names: Sequence[str], overrides: Mapping[str, Any] | None = None) -> Config:
    """A config for an in-memory fleet: one `lb` signal with an errors and a latency check."""
    data: dict[str, Any] = {
        "app": "memory",
        "hosts": [{"name": n, "port": 8000 + i % 50000} for i, n in enumerate(names)],
        "balancer": {"kind": "memory"},
        "driver": {"kind": "memory"},
        "signals": [{"kind": "memory", "name": "lb"}],
        "checks": [
            {"name": "errors", "signal": "lb", "kind": "errors"},
            {"name": "latency", "signal": "lb", "kind": "latency"},
        ],
        "bake": {"min": 30, "max": 300, "interval": 1, "lag": 0},
        "lease_ttl": 30,
    }
    data.update(overrides or {})
    return Config.model_validate(data)


def memory_fleet(
    hosts: int | Sequence[str] = 3,
    *,
    config: Mapping[str, Any] | None = None,
    world: World | None = None,
    clock: Clock = SYSTEM_CLOCK,
    journal: Journal | None = None,
    latencies: Latencies | None = None,
    releases: Mapping[str, Behaviour] | None = None,
) -> tuple[Fleet, World]:
    """An engine `Fleet` whose every adapter is in memory, and the `World` behind it.

    `hosts` is a count (named h1..hN) or the names; `config` overrides fields of
    `config_for`'s config (waves, max_unavailable, bake, checks...). Every host starts on v1.
    """
    names = [f"h{i}" for i in range(1, hosts + 1)] if isinstance(hosts, int) else list(hosts)
    cfg = config_for(names, config)
    if world is None:
        world = World.of(names, releases=releases, clock=clock)
        if latencies is not None:
            world.latencies = latencies
    world.clock = clock
    empty = NoSettings()
    loaded = LoadedConfig(
        Path("/nonexistent/in-memory/immunity.yaml"),
        cfg,
        empty,
        empty,
        {s.settings_dict().get("name", s.kind): (s.kind, empty) for s in cfg.signals},
        [],
    )
    fleet = Fleet(
        loaded=loaded,
        hosts=[HostRef(name=h.name, address=h.address, port=h.port) for h in cfg.hosts],
        lb=MemoryBalancer(world),
        driver=MemoryDriver(world),
        signals={name: MemorySignals(world, name) for name in loaded.signals},
        notifiers=[],
        journal=journal if journal is not None else MemoryJournal(clock=clock),
        prober=MemoryProber(world),
        clock=clock,
    )
    return fleet, world
