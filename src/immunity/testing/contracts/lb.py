"""The `LoadBalancer` contract: what the engine relies on from a pool.

* Every configured host is in the pool, serving, by the balancer's own view and the adapter's.
* `drain`: the member takes no new requests and the balancer reports it leaving the pool;
  `wait_drained`: returns once it is out with nothing in flight, waits while a request is
  in flight, and ends at the caller's deadline (`TimeoutError` from `anyio.fail_after`,
  promptly); `enable` + `wait_healthy`: back in the pool, taking requests again; a member
  failing its health checks is not called healthy (`wait_healthy` ends at the deadline).
* `drain` and `enable` are idempotent.
* An unknown member is a clear error: `BalancerError` naming it, nothing else changed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from immunity.domain import HostRef, LbState
from immunity.errors import BalancerError
from immunity.lb.base import LoadBalancer
from immunity.testing.contracts.base import Contract, Stopwatch

SHORT_DEADLINE_S = 0.3
"""A caller's deadline that a request held in flight outlasts."""
PROMPT_S = 1.0
"""How late past the caller's deadline a wait may end."""
LONG_DEADLINE_S = 10.0
"""A deadline long enough for any real balancer on loopback (health checks included)."""
REQUESTS = 12


class BalancerHarness(ABC):
    """The balancer under test and its own view. Every host serving when a case starts."""

    lb: LoadBalancer
    hosts: Sequence[HostRef]
    """Two or more configured hosts."""
    unknown: HostRef
    """A host the balancer does not have."""

    @abstractmethod
    async def state(self, host: HostRef) -> LbState:
        """The balancer's own view of `host`, read without the adapter (HAProxy `show
        servers state`, DescribeTargetHealth through boto3, the in-memory world)."""

    @abstractmethod
    async def route(self, n: int) -> Counter[str]:
        """Send `n` new requests through the balancer; how many each host answered (the
        clients' record). Raises `Unsupported` when the balancer routes no traffic here."""

    @abstractmethod
    def in_flight(self, host: HostRef) -> AbstractAsyncContextManager[None]:
        """Hold one request in flight on `host` for the block; on exit it is answered."""

    @abstractmethod
    def failing_health(self, host: HostRef) -> AbstractAsyncContextManager[None]:
        """`host` fails the balancer's health checks for the block (its app stopped...);
        on exit it passes them again."""


class LoadBalancerContract(Contract):
    """Subclass with a `harness` fixture returning a `BalancerHarness`."""

    async def test_is_a_load_balancer(self, harness: BalancerHarness) -> None:
        """The adapter satisfies the role's Protocol."""
        assert isinstance(harness.lb, LoadBalancer)

    async def test_every_host_starts_in_the_pool(self, harness: BalancerHarness) -> None:
        """The adapter and the balancer's own view agree: every host serving; `pool_members`
        lists each one by its balancer id."""
        members = await harness.lb.members(harness.hosts)
        assert {h.name: members[h.name].state for h in harness.hosts} == {
            h.name: LbState.SERVING for h in harness.hosts
        }
        for h in harness.hosts:
            assert await harness.state(h) is LbState.SERVING
        pool = await harness.lb.pool_members()
        assert {h.balancer_id for h in harness.hosts} <= set(pool)

    async def test_a_drained_member_leaves_the_pool_by_the_balancers_view(
        self, harness: BalancerHarness
    ) -> None:
        """After `drain`, the balancer itself reports the host leaving or out, the adapter
        says the same, and the other hosts stay serving."""
        h, *others = harness.hosts
        await harness.lb.drain(h)
        assert await harness.state(h) in (LbState.DRAINING, LbState.OUT)
        assert (await harness.lb.members([h]))[h.name].state in (LbState.DRAINING, LbState.OUT)
        for o in others:
            assert await harness.state(o) is LbState.SERVING

    async def test_a_drained_member_takes_no_new_requests(self, harness: BalancerHarness) -> None:
        """Requests sent after `drain` go to the other hosts only."""
        h = harness.hosts[0]
        before = await harness.route(REQUESTS)
        assert before[h.name] > 0  # it did take requests before
        await harness.lb.drain(h)
        after = await harness.route(REQUESTS)
        assert after[h.name] == 0
        assert sum(after.values()) == REQUESTS

    async def test_wait_drained_returns_once_the_member_is_out(
        self, harness: BalancerHarness
    ) -> None:
        """With nothing in flight, `wait_drained` returns and the balancer reports it out."""
        h = harness.hosts[0]
        await harness.lb.drain(h)
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_drained(h)
        assert await harness.state(h) is LbState.OUT
        assert (await harness.lb.members([h]))[h.name].state is LbState.OUT

    async def test_wait_drained_waits_for_a_request_in_flight_until_the_callers_deadline(
        self, harness: BalancerHarness
    ) -> None:
        """A request in flight keeps `wait_drained` waiting; the caller's deadline ends the
        wait promptly with `TimeoutError`, the host still leaving; once the request is
        answered, `wait_drained` returns."""
        h = harness.hosts[0]
        async with harness.in_flight(h):
            await harness.lb.drain(h)
            clock = Stopwatch()
            with pytest.raises(TimeoutError), anyio.fail_after(SHORT_DEADLINE_S):
                await harness.lb.wait_drained(h)
            assert clock.s < SHORT_DEADLINE_S + PROMPT_S
            assert await harness.state(h) is LbState.DRAINING
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_drained(h)
        assert await harness.state(h) is LbState.OUT

    async def test_enable_puts_a_drained_member_back(self, harness: BalancerHarness) -> None:
        """`enable` + `wait_healthy` after a drain: serving by the balancer's view and the
        adapter's."""
        h = harness.hosts[0]
        await harness.lb.drain(h)
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_drained(h)
        await harness.lb.enable(h)
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_healthy(h)
        assert await harness.state(h) is LbState.SERVING
        assert (await harness.lb.members([h]))[h.name].state is LbState.SERVING

    async def test_wait_healthy_waits_for_a_failing_member_until_the_callers_deadline(
        self, harness: BalancerHarness
    ) -> None:
        """A member enabled while it fails its health checks is not called healthy:
        `wait_healthy` ends at the caller's deadline (`TimeoutError`, promptly) with the
        member not serving; once it passes its checks, `wait_healthy` returns."""
        h = harness.hosts[0]
        await harness.lb.drain(h)
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_drained(h)
        async with harness.failing_health(h):
            await harness.lb.enable(h)
            clock = Stopwatch()
            with pytest.raises(TimeoutError), anyio.fail_after(SHORT_DEADLINE_S * 3):
                await harness.lb.wait_healthy(h)
            assert clock.s < SHORT_DEADLINE_S * 3 + PROMPT_S
            assert await harness.state(h) is not LbState.SERVING
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_healthy(h)
        assert await harness.state(h) is LbState.SERVING

    async def test_an_enabled_member_takes_requests_again(self, harness: BalancerHarness) -> None:
        """Once `wait_healthy` returned, new requests reach the host again."""
        h = harness.hosts[0]
        await harness.lb.drain(h)
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_drained(h)
        await harness.lb.enable(h)
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_healthy(h)
        assert (await harness.route(REQUESTS))[h.name] > 0

    async def test_drain_and_enable_are_idempotent(self, harness: BalancerHarness) -> None:
        """A second `drain` of a draining or drained host, and a second `enable` of a serving
        host, succeed and change nothing."""
        h = harness.hosts[0]
        await harness.lb.drain(h)
        await harness.lb.drain(h)
        assert await harness.state(h) in (LbState.DRAINING, LbState.OUT)
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_drained(h)
        await harness.lb.drain(h)
        assert await harness.state(h) is LbState.OUT
        await harness.lb.enable(h)
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_healthy(h)
        await harness.lb.enable(h)
        with anyio.fail_after(LONG_DEADLINE_S):
            await harness.lb.wait_healthy(h)
        assert await harness.state(h) is LbState.SERVING

    async def test_draining_an_unknown_member_is_a_clear_error(
        self, harness: BalancerHarness
    ) -> None:
        """`drain` of a host the balancer does not have raises `BalancerError` naming it, and
        every known host keeps serving."""
        u = harness.unknown
        with pytest.raises(BalancerError) as info:
            await harness.lb.drain(u)
        assert u.name in info.value.message or u.balancer_id in info.value.message
        for h in harness.hosts:
            assert await harness.state(h) is LbState.SERVING

    async def test_enabling_an_unknown_member_is_a_clear_error(
        self, harness: BalancerHarness
    ) -> None:
        """`enable` of a host the balancer does not have raises `BalancerError` naming it."""
        u = harness.unknown
        with pytest.raises(BalancerError) as info:
            await harness.lb.enable(u)
        assert u.name in info.value.message or u.balancer_id in info.value.message
