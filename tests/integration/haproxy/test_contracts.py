"""The contract suites against the real sandbox (HAProxy + two sample-app hosts), one
sandbox for the module: `HAProxyPool` (LoadBalancer), `HAProxySource` from the access log
and from the `show stat` counters (SignalSource), and `HttpProber` against the sample app
(Prober). The server's own view is read directly: HAProxy's runtime API, the app's own
request counter, and the clients' record of who answered what."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hx_fleet import Fleet
from log_haproxy import LoggingHAProxy, logging_haproxy

from immunity.config.models import VerifyConfig, WarmupConfig
from immunity.domain import HostRef, LbState
from immunity.hosts.local import LocalDriver
from immunity.lb.haproxy import HAProxyPool
from immunity.probe.http import HttpProber
from immunity.sandbox import fleet
from immunity.signals.base import SignalSource
from immunity.signals.haproxy import HAProxySource
from immunity.testing.contracts import (
    BalancerHarness,
    LoadBalancerContract,
    ProberContract,
    ProberHarness,
    SignalHarness,
    SignalSourceContract,
)
from immunity.testing.contracts.signals import Sent

pytestmark = pytest.mark.timeout(120)


def haproxy_state(hx: Fleet, host: HostRef) -> LbState:
    """HAProxy's own view (`show stat` status), in the role's words."""
    status = hx.status(host.name)
    if status.startswith("UP"):
        return LbState.SERVING
    if status.startswith("DRAIN"):
        return LbState.DRAINING
    if status.startswith("MAINT"):
        return LbState.OUT
    return LbState.UNHEALTHY


async def through_haproxy(
    hx: Fleet, n: int, path: str = "/", url: str | None = None
) -> Counter[tuple[str, int]]:
    """`n` requests through HAProxy's frontend (the sandbox's, or the one at `url`);
    (answering host, status) -> count, read from the X-Immunity-Host header the app sets."""
    seen: Counter[tuple[str, int]] = Counter()
    limit = anyio.Semaphore(8)
    async with httpx.AsyncClient(timeout=10) as client:

        async def one() -> None:
            async with limit:
                r = await client.get((url or hx.info.url) + path)
                seen[(r.headers.get("X-Immunity-Host", "?"), r.status_code)] += 1

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
    return seen


# -- LoadBalancer ------------------------------------------------------------------------


class HAProxyBalancerHarness(BalancerHarness):
    def __init__(self, hx: Fleet) -> None:
        self.hx = hx
        settings = HAProxyPool.Settings(
            socket="haproxy/admin.sock", poll_interval=0.05, retry_for=2.0
        )
        self.lb = HAProxyPool(settings, base_dir=hx.dir)
        self.hosts = hx.hosts
        self.unknown = HostRef("ghost", "127.0.0.1", 1)

    async def state(self, host: HostRef) -> LbState:
        return haproxy_state(self.hx, host)

    async def route(self, n: int) -> Counter[str]:
        return Counter({h: c for (h, _), c in (await through_haproxy(self.hx, n)).items()})

    @asynccontextmanager
    async def in_flight(self, host: HostRef) -> AsyncIterator[None]:
        # round robin: one slow request per server puts one in flight on `host`
        async with anyio.create_task_group() as tg:
            for _ in self.hosts:
                tg.start_soon(through_haproxy, self.hx, 1, "/slow?ms=1500")
            with anyio.fail_after(5):
                while self.hx.scur(host.name) < 1:  # noqa: ASYNC110 - HAProxy's own counter
                    await anyio.sleep(0.02)
            yield

    @asynccontextmanager
    async def failing_health(self, host: HostRef) -> AsyncIterator[None]:
        """The host's app is stopped (HAProxy's HTTP checks fail), started again on exit."""
        driver = LocalDriver(LocalDriver.Settings(), base_dir=self.hx.dir)
        release = await driver.active_release(host)
        assert release is not None
        await driver.stop(host)
        try:
            yield
        finally:
            await driver.start(host, release)
            await driver.aclose()


class TestHAProxyPool(LoadBalancerContract):
    @pytest.fixture
    async def harness(self, hx: Fleet) -> AsyncIterator[BalancerHarness]:
        h = HAProxyBalancerHarness(hx)
        yield h
        await h.lb.aclose()


# -- SignalSource ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def canary_release(sandbox_fleet: Fleet) -> Iterator[Fleet]:
    """h2 runs a release answering 30 % 500s for the module's signal cases; back on v1
    afterwards (the balancer and prober cases run on v1 before it)."""
    fleet.add_release(sandbox_fleet.dir, "bad30", error_rate=0.3)
    driver = LocalDriver(LocalDriver.Settings(), base_dir=sandbox_fleet.dir)
    h2 = sandbox_fleet.hosts[1]

    async def switch(release: str) -> None:
        await driver.install(h2, release)
        await driver.start(h2, release)
        async with httpx.AsyncClient(timeout=1) as client:
            with anyio.fail_after(20):
                while True:
                    try:
                        r = await client.get(f"{h2.base_url}/health")
                        if r.headers.get("X-Immunity-Release") == release:
                            return
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.05)

    anyio.run(switch, "bad30")
    sandbox_fleet.reset()
    try:
        yield sandbox_fleet
    finally:
        anyio.run(switch, "v1")
        sandbox_fleet.reset()


class HAProxySignalHarness(SignalHarness):
    def __init__(self, hx: Fleet, **settings: Any) -> None:
        self.hx = hx
        self.settings = settings
        self.source = HAProxySource(HAProxySource.Settings(name="lb", **settings), base_dir=hx.dir)
        self.baseline, self.canary = [hx.hosts[0]], [hx.hosts[1]]

    async def send(self, n: int) -> Sent:
        seen = await through_haproxy(self.hx, n)
        return Counter({(h, status >= 500): c for (h, status), c in seen.items()})

    async def broken(self) -> SignalSource:
        wrong = {k: "haproxy/nope" for k in self.settings}
        return HAProxySource(HAProxySource.Settings(name="lb", **wrong), base_dir=self.hx.dir)


class TestHAProxyLogSource(SignalSourceContract):
    @pytest.fixture
    async def harness(self, canary_release: Fleet) -> AsyncIterator[SignalHarness]:
        h = HAProxySignalHarness(canary_release, access_log="haproxy/access.log")
        await h.source.preflight(canary_release.hosts)  # type: ignore[attr-defined]
        yield h
        await h.source.aclose()


@pytest.fixture(scope="module")
def httplog_haproxy(canary_release: Fleet) -> Iterator[LoggingHAProxy]:
    """A second HAProxy in front of the same hosts writing HAProxy's standard `option
    httplog` lines (accept date to the millisecond, timers) instead of the sandbox's JSON."""
    d = Path(tempfile.mkdtemp(prefix="hxc"))  # short: the stats socket path has a limit
    servers = {h.name: h.port for h in canary_release.hosts}
    try:
        with logging_haproxy(d, servers, log_line="option httplog") as lb:
            yield lb
    finally:
        shutil.rmtree(d, ignore_errors=True)


class HttplogSignalHarness(HAProxySignalHarness):
    """The httplog HAProxy's own access log; requests go through that HAProxy."""

    def __init__(self, hx: Fleet, lb: LoggingHAProxy) -> None:
        super().__init__(hx, access_log=str(lb.log), log_format="httplog")
        self.lb = lb

    async def send(self, n: int) -> Sent:
        seen = await through_haproxy(self.hx, n, url=self.lb.url)
        return Counter({(h, status >= 500): c for (h, status), c in seen.items()})

    async def quiet(self) -> None:
        """The requests sent for preflight end before the case's first window: more than one
        bin (0.1 s) and the source's delay (0.25 s) ago."""
        await anyio.sleep(0.4)

    async def broken(self) -> SignalSource:
        return HAProxySource(
            HAProxySource.Settings(name="lb", access_log=str(self.lb.log) + ".nope"),
            base_dir=self.hx.dir,
        )


class TestHAProxyHttplogSource(SignalSourceContract):
    @pytest.fixture
    async def harness(
        self, canary_release: Fleet, httplog_haproxy: LoggingHAProxy
    ) -> AsyncIterator[SignalHarness]:
        h = HttplogSignalHarness(canary_release, httplog_haproxy)
        await h.send(4)  # preflight reads recent lines: give it some
        await h.source.preflight(canary_release.hosts)  # type: ignore[attr-defined]
        yield h
        await h.source.aclose()


class TestHAProxyCounterSource(SignalSourceContract):
    @pytest.fixture
    async def harness(self, canary_release: Fleet) -> AsyncIterator[SignalHarness]:
        h = HAProxySignalHarness(canary_release, socket="haproxy/admin.sock")
        await h.source.preflight(canary_release.hosts)  # type: ignore[attr-defined]
        yield h
        await h.source.aclose()


# -- Prober ------------------------------------------------------------------------------

_COUNT = re.compile(r'^app_requests_total\{code="(\d+)",release="[^"]*"\} ([0-9.e+]+)$', re.M)


class SampleAppProberHarness(ProberHarness):
    """HttpProber against the sandbox's sample app on h1 (its /, /slow and /health)."""

    def __init__(self, hx: Fleet) -> None:
        self.hx = hx
        self.host = hx.hosts[0]
        self.probers: list[HttpProber] = []

    def prober(self, verify: dict[str, Any], warmup: dict[str, Any]) -> HttpProber:
        w = {
            "consecutive": self.consecutive,
            "latency_bar": 0.5,
            "pause": 0.02,
            "request_timeout": 5,
            **warmup,
        }
        p = HttpProber(VerifyConfig(**verify), WarmupConfig(**w))
        self.probers.append(p)
        return p

    async def ready(self) -> tuple[HttpProber, HostRef]:
        return self.prober({"path": "/"}, {"path": "/"}), self.host

    async def answered(self, host: HostRef) -> int:
        """The app's own count of the requests it answered (its /metrics)."""
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(f"{host.base_url}/metrics")).text
        return int(sum(float(v) for _, v in _COUNT.findall(text)))

    async def down(self) -> tuple[HttpProber, HostRef]:
        return self.prober({}, {}), HostRef("gone", "127.0.0.1", _closed_port())

    async def unhealthy(self) -> tuple[HttpProber, HostRef, str]:
        # the app answers /health 200; a prober that expects 204 is told 200, every time
        return self.prober({"expect_status": [204]}, {}), self.host, "200"

    async def slow(self) -> tuple[HttpProber, HostRef]:
        return self.prober({}, {"path": "/slow?ms=150", "latency_bar": 0.05}), self.host

    async def hung(self) -> tuple[HttpProber, HostRef]:
        p = self.prober({}, {"path": "/slow?ms=2000", "request_timeout": 0.3})
        return p, self.host

    async def wrong_path(self) -> tuple[HttpProber, HostRef]:
        return self.prober({"path": "/nope"}, {"path": "/nope"}), self.host


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestHttpProber(ProberContract):
    @pytest.fixture
    async def harness(self, sandbox_fleet: Fleet) -> AsyncIterator[ProberHarness]:
        h = SampleAppProberHarness(sandbox_fleet)
        yield h
        for p in h.probers:
            await p.aclose()
