"""The capacity guard."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest

from immunity.domain import HostRef, LbState
from immunity.engine.capacity import CapacityGuard
from immunity.engine.fleetview import FleetState
from immunity.errors import CapacityExhausted
from immunity.journal.base import JournalEntry

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.anyio
async def test_no_more_than_max_unavailable_hosts_are_out_at_once() -> None:
    """With max 2, four hosts taking slots never exceed 2 out at the same moment."""
    guard = CapacityGuard(2)
    peak = 0

    async def one(name: str) -> None:
        nonlocal peak
        await guard.take(name)
        peak = max(peak, len(guard.out))
        await anyio.sleep(0.01)
        await guard.give_back(name)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(one, f"h{i}")
    assert peak == 2
    assert frozenset() == guard.out


@pytest.mark.anyio
async def test_a_host_that_holds_a_slot_takes_it_again_without_waiting() -> None:
    """A failed host keeps its slot and its revert reuses it."""
    guard = CapacityGuard(1)
    await guard.take("h1")
    with anyio.fail_after(1):
        await guard.take("h1")
    assert frozenset({"h1"}) == guard.out


def fleet_state(*out: str) -> FleetState:
    """A run's view of h1..h4, with `out` found out of the pool."""
    state = FleetState([HostRef(name=f"h{i}", address="127.0.0.1", port=i) for i in range(1, 5)])
    state.observe(
        {f"h{i}": (LbState.OUT if f"h{i}" in out else LbState.SERVING, "v1") for i in range(1, 5)}
    )
    return state


def journal(state: FleetState, host: str, kind: str, step: str | None = None) -> None:
    state.apply(JournalEntry(0, "d", T0, kind, host, step, {"release": "v2", "purpose": "deploy"}))


@pytest.mark.anyio
async def test_a_take_that_no_walk_can_free_raises_at_once() -> None:
    """Every slot held by a parked host (its walk failed, it stays out): no wait, an error."""
    state = fleet_state()
    guard = CapacityGuard(1, state.out)
    await guard.take("h2")
    journal(state, "h2", "host.step_started", "drain")
    journal(state, "h2", "host.step_failed", "drain")
    await guard.give_back("h2", parked=True)
    with anyio.fail_after(1), pytest.raises(CapacityExhausted, match="h2"):
        await guard.take("h3")


@pytest.mark.anyio
async def test_a_waiting_take_raises_when_the_walking_host_is_parked() -> None:
    """h3 waits while h2 is walked; when h2's walk fails and it is parked, h3's wait ends."""
    state = fleet_state()
    guard = CapacityGuard(1, state.out)
    await guard.take("h2")
    journal(state, "h2", "host.step_started", "drain")
    raised: list[BaseException] = []

    async def wait_h3() -> None:
        try:
            await guard.take("h3")
        except CapacityExhausted as exc:
            raised.append(exc)

    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_h3)
            await anyio.sleep(0.01)
            assert [] == raised  # still waiting: h2 may come back
            journal(state, "h2", "host.step_failed", "stop")
            await guard.give_back("h2", parked=True)
    assert 1 == len(raised)


@pytest.mark.anyio
async def test_a_host_found_out_of_the_pool_is_taken_by_its_own_walk() -> None:
    """A host the run found out of the pool holds a slot; its own walk takes it without
    waiting, and once the journal says it switched the slot is another host's."""
    state = fleet_state("h1")
    guard = CapacityGuard(1, state.out)
    with anyio.fail_after(1):
        await guard.take("h1")
        journal(state, "h1", "host.switched")
        await guard.give_back("h1")
        await guard.take("h2")
    assert frozenset({"h2"}) == guard.out


@pytest.mark.anyio
async def test_a_host_the_balancer_reports_serving_again_frees_its_slot() -> None:
    """h2's drain failed before it left the pool: once an observation (the immune
    response's) says it serves, its slot is free without a walk."""
    state = fleet_state()
    guard = CapacityGuard(1, state.out)
    await guard.take("h2")
    journal(state, "h2", "host.step_started", "drain")
    journal(state, "h2", "host.step_failed", "drain")
    await guard.give_back("h2", parked=True)
    state.observe({"h2": (LbState.SERVING, "v1")})
    with anyio.fail_after(1):
        await guard.take("h3")
    assert frozenset({"h3"}) == guard.out
