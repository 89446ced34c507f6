"""The drain's last-serving check asks the balancer about one witness host, not the whole
pool, and falls back to reading the whole pool when the witness no longer serves: the same
answer as reading the pool every time, in virtual time on the in-memory fleet."""

from __future__ import annotations

from typing import Any

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
