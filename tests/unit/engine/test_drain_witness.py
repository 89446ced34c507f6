"""The drain's last-serving check asks the balancer about one witness host, not the whole
pool, and falls back to reading the whole pool when the witness no longer serves: the same
answer as reading the pool every time, in virtual time on the in-memory fleet."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from immunity.domain import LbState
from immunity.engine.capacity import CapacityGuard
from immunity.engine.deployment import deploy
from immunity.engine.host import HostSwitcher
from immunity.engine.record import Recorder
from immunity.testing import Behaviour, Latencies, VirtualClock, memory_fleet

GOOD = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)}


def test_a_wave_of_drains_reads_the_whole_pool_about_once() -> None:
    """200 hosts, 20 at a time: every host ends on v2 serving, and the whole pool is read a
    handful of times instead of once per drain (each read is O(pool))."""
    clock = VirtualClock()
    fleet, world = memory_fleet(
        200,
        clock=clock,
        latencies=Latencies.realistic(),
        releases=GOOD,
        config={
            "waves": [1, "100%"],
            "max_unavailable": 20,
            "bake": {"min": 5, "max": 60, "interval": 1, "lag": 0},
        },
    )
    reads = 0
    pool_members = fleet.lb.pool_members

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await pool_members()

    fleet.lb.pool_members = counted  # type: ignore[method-assign]

    async def main() -> str:
        return str((await deploy(fleet, "v2", handle_signals=False)).outcome)

    assert clock.run(main) == "deployed"
    assert {(s.active, s.lb) for s in world.hosts.values()} == {("v2", LbState.SERVING)}
    assert world.switches == 200
    assert reads < 200 // 10, reads


def test_the_witness_is_believed_only_while_it_serves() -> None:
    """h4 (the witness, last in the pool) goes DOWN on its own: the next check reads the
    pool and finds h1; with h1 down too and h3 being drained by us, h2 is the last one
    serving and may not be drained; once h3 is back, it may."""
    clock = VirtualClock()
    fleet, world = memory_fleet(4, clock=clock, releases=GOOD)
    sw = HostSwitcher(fleet, Recorder(fleet, "d", "v2", None), CapacityGuard(1))
    h1, h2, h3, _ = fleet.hosts

    def down(name: str) -> None:
        world.set_lb(world.hosts[name], LbState.UNHEALTHY)

    async def main() -> list[bool]:
        out = [await sw._another_serves(h2)]
        assert sw._witness is not None and sw._witness.name == "h4"
        down("h4")
        out.append(await sw._another_serves(h2))
        assert sw._witness is not None and sw._witness.name in ("h3", "h1")
        sw._leaving["h3"] = h3.balancer_id
        down("h1")
        out.append(await sw._another_serves(h2))
        sw._leaving.pop("h3")
        out.append(await sw._another_serves(h2))
        out.append(await sw._another_serves(h1))  # h1 is not serving: draining takes nothing
        return out

    assert clock.run(main) == [True, True, False, True, True]


@pytest.mark.parametrize("first", range(6))
def test_drains_started_at_once_always_leave_one_host_serving(first: int) -> None:
    """Every host of a 6-host pool asked to drain at the same moment (a witness already
    picked, so most take the quick check), starting with the `first`-th: five are drained,
    one keeps serving and waits; never zero serving."""
    clock = VirtualClock()
    lat = Latencies.realistic()  # every balancer read takes 1 ms: the checks interleave
    fleet, world = memory_fleet(6, clock=clock, releases=GOOD, latencies=lat)
    sw = HostSwitcher(fleet, Recorder(fleet, "d", "v2", None), CapacityGuard(6))
    hosts = list(fleet.hosts)
    order = hosts[first:] + hosts[:first]

    async def main() -> None:
        await sw._another_serves(order[0])  # picks a witness (h6, the end of the pool)
        with anyio.move_on_after(5):
            async with anyio.create_task_group() as tg:
                for h in order:
                    tg.start_soon(sw._drain_keeping_one_serving, h)

    clock.run(main)
    states = [world.hosts[h.name].lb for h in hosts]
    assert states.count(LbState.SERVING) == 1, states
    assert states.count(LbState.DRAINING) == 5, states


def test_a_drain_is_marked_leaving_before_its_check_answers() -> None:
    """h1 and h2 are the last two serving. While h1's drain waits for the balancer's answer
    about its witness h2, h2's whole-pool check must not count h1 as the one left serving
    (else both drain on each other's word and nobody serves)."""
    clock = VirtualClock()
    fleet, world = memory_fleet(4, clock=clock, releases=GOOD)
    sw = HostSwitcher(fleet, Recorder(fleet, "d", "v2", None), CapacityGuard(4))
    h1, h2, h3, h4 = fleet.hosts
    for h in (h3, h4):
        world.set_lb(world.hosts[h.name], LbState.UNHEALTHY)
    answer = anyio.Event()
    members = fleet.lb.members

    async def slow_members(hosts: Any) -> Any:
        await answer.wait()
        return await members(hosts)

    fleet.lb.members = slow_members  # type: ignore[method-assign]
    sw._witness = h2

    async def main() -> tuple[bool, list[LbState]]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sw._drain_keeping_one_serving, h1)
            await anyio.sleep(0.01)  # h1's drain is waiting for members([h2, h1])
            h2_may = await sw._another_serves(h2)
            answer.set()
        return h2_may, [world.hosts[h.name].lb for h in (h1, h2)]

    h2_may, states = clock.run(main)
    assert h2_may is False
    assert states == [LbState.DRAINING, LbState.SERVING]
