"""The capacity guard."""

from __future__ import annotations

import anyio
import pytest

from immunity.engine.capacity import CapacityGuard


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
