"""`ProbeSource` (the built-in probe traffic signal) held to the SignalSource contract against
two real sample-app processes: the baseline on r1, the canary on r2 answering 30 % 500s.

The probe generates the traffic it observes, so the harness's `send` is the probe itself
sending (`sending`, `when: always`) until it has sent `n` requests; what each cohort must
count is what the apps themselves say they answered (`app_requests_total` by status code on
their `/metrics`), never the probe's record."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import anyio
import httpx
import pytest

from immunity.config.models import ProbeConfig
from immunity.domain import Cohort, HostRef
from immunity.hosts.local import LocalDriver
from immunity.sandbox.fleet import add_release, free_ports
from immunity.signals.base import SignalSource
from immunity.signals.probe import ProbeSource
from immunity.testing.contracts import SignalHarness, SignalSourceContract, Unsupported
from immunity.testing.contracts.signals import Sent

pytestmark = pytest.mark.timeout(90)

_COUNT = re.compile(r'^app_requests_total\{code="(\d+)",release="[^"]*"\} ([0-9.e+]+)$', re.M)
NOTHING_TO_READ = (
    "the probe reads only its own record of the requests it sent: there is no store it could "
    "fail to read. A host that does not answer is counted as errors, by design (a host in the "
    "pool that does not answer is failing)"
)


def _driver(base: Path) -> LocalDriver:
    return LocalDriver(LocalDriver.Settings(), base_dir=base)


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Cohort, HostRef]]:
    """The baseline host on r1 and the canary host on r2 (30 % 500s), real processes."""
    base = tmp_path_factory.mktemp("probe-contract")
    add_release(base, "r1")
    add_release(base, "r2", error_rate=0.3)
    ports = free_ports(2)
    hosts = {
        Cohort.BASELINE: HostRef(name="h1", address="127.0.0.1", port=ports[0]),
        Cohort.CANARY: HostRef(name="h2", address="127.0.0.1", port=ports[1]),
    }
    releases = {Cohort.BASELINE: "r1", Cohort.CANARY: "r2"}

    async def start() -> None:
        driver = _driver(base)

        async def one(cohort: Cohort, host: HostRef) -> None:
            (base / "hosts" / host.name).mkdir(parents=True)
            await driver.install(host, releases[cohort])
            await driver.start(host, releases[cohort])

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:  # both processes start together
                for cohort, host in hosts.items():
                    tg.start_soon(one, cohort, host)

    async def stop() -> None:
        driver = _driver(base)
        with anyio.fail_after(30):
            for host in hosts.values():
                await driver.stop(host)

    anyio.run(start)
    try:
        yield hosts
    finally:
        anyio.run(stop)


async def answered(client: httpx.AsyncClient, host: HostRef) -> Counter[bool]:
    """The app's own count of requests it answered, by answered-5xx."""
    text = (await client.get(f"{host.base_url}/metrics")).text
    out: Counter[bool] = Counter()
    for code, value in _COUNT.findall(text):
        out[int(code) >= 500] += int(float(value))
    return out


class ProbeHarness(SignalHarness):
    settle_s = 0.05  # a probe request is in the probe's record once it is answered

    def __init__(self, hosts: Mapping[Cohort, HostRef]) -> None:
        self.canary, self.baseline = [hosts[Cohort.CANARY]], [hosts[Cohort.BASELINE]]
        # 200 requests/s per host: a burst of 40 takes about 0.1 s
        self.probe = ProbeSource(ProbeConfig(rate=200, when="always"))
        self.probe.active = False  # sends only within `send`
        self.source = self.probe
        self.client = httpx.AsyncClient(timeout=5)

    def cohorts(self) -> Mapping[Cohort, Sequence[HostRef]]:
        return {Cohort.CANARY: self.canary, Cohort.BASELINE: self.baseline}

    async def _answered(self) -> dict[str, Counter[bool]]:
        return {h.name: await answered(self.client, h) for h in [*self.canary, *self.baseline]}

    async def send(self, n: int) -> Sent:
        """The probe sends until it has sent `n` requests (a round goes to both hosts, so
        one more may go), then stops; returns once every one is answered."""
        before = await self._answered()
        target = sum(self.probe.sent.values()) + n
        with anyio.fail_after(20):
            async with self.probe.sending(self.cohorts):
                self.probe.active = True
                while sum(self.probe.sent.values()) < target:  # noqa: ASYNC110 - no event to wait on
                    await anyio.sleep(0.005)
                self.probe.active = False
                while any(self.probe.in_flight.values()):  # noqa: ASYNC110
                    await anyio.sleep(0.005)
        after = await self._answered()
        sent: Sent = Counter()
        for host, counts in after.items():
            for err in (False, True):
                if counts[err] - before[host][err]:
                    sent[(host, err)] = counts[err] - before[host][err]
        return sent

    async def broken(self) -> SignalSource:
        raise Unsupported(NOTHING_TO_READ)

    async def aclose(self) -> None:
        await self.probe.aclose()
        await self.client.aclose()


class TestProbeSource(SignalSourceContract):
    XFAIL: ClassVar[dict[str, str]] = {"test_a_source_that_cannot_read_says_so": NOTHING_TO_READ}

    @pytest.fixture
    async def harness(self, apps: dict[Cohort, HostRef]) -> AsyncIterator[SignalHarness]:
        h = ProbeHarness(apps)
        try:
            yield h
        finally:
            await h.aclose()
