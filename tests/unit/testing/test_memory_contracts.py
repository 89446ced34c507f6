"""`immunity.testing`'s in-memory adapters held to their roles' contract suites (the same
suites the real adapters pass against real servers)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from immunity.domain import HostRef, LbState
from immunity.testing import MemoryBalancer, World
from immunity.testing.contracts import BalancerHarness, LoadBalancerContract

NAMES = ["h1", "h2", "h3"]


def refs() -> list[HostRef]:
    return [HostRef(name=n, port=8000 + i) for i, n in enumerate(NAMES)]


class MemoryBalancerHarness(BalancerHarness):
    """The world is the balancer's own view; `World.route` is its routing."""

    def __init__(self) -> None:
        self.world = World.of(NAMES)
        self.lb = MemoryBalancer(self.world)
        self.hosts = refs()[:2]
        self.unknown = HostRef(name="nope")

    async def state(self, host: HostRef) -> LbState:
        return self.world.hosts[host.name].lb

    async def route(self, n: int) -> Counter[str]:
        return Counter(r.host for r in self.world.route(n))

    @asynccontextmanager
    async def in_flight(self, host: HostRef) -> AsyncIterator[None]:
        self.world.in_flight[host.name] = self.world.in_flight.get(host.name, 0) + 1
        try:
            yield
        finally:
            self.world.in_flight[host.name] -= 1


class TestMemoryBalancer(LoadBalancerContract):
    @pytest.fixture
    def harness(self) -> BalancerHarness:
        return MemoryBalancerHarness()
