"""The watch after a pass, on by default: the engine over an in-memory fleet in virtual time.

With no `guard` block, a release that passes every wave is still watched for half of
`bake.max` after the last wave, against a holdback host kept on the old release; a fault
that starts in that time reverts the whole fleet, and the holdback is never switched."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from immunity.domain import LbState
from immunity.engine.deployment import deploy as run_deploy
from immunity.testing import Behaviour, Latencies, VirtualClock, memory_fleet

CONFIG: dict[str, Any] = {
    "waves": [1, "50%", "100%"],
    "max_unavailable": 1,
    "checks": [{"name": "errors", "signal": "lb", "kind": "errors"}],
    "bake": {"min": 20, "max": 120, "interval": 1, "lag": 0},
    "lease_ttl": 30,
}
RELEASES = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)}


def run(late_fault: bool) -> tuple[Any, Any, list[Any]]:
    clock = VirtualClock()
    fleet, world = memory_fleet(
        4, clock=clock, latencies=Latencies.realistic(), releases=RELEASES, config=CONFIG
    )
    assert fleet.config.guard.duration == 60  # unset: max(bake.min, bake.max / 2)

    async def main() -> tuple[Any, list[Any]]:
        async def fault_in_the_guard() -> None:
            while True:  # the waves passed, the guard watches: the new release goes bad
                await clock.sleep(1)
                guarding = False
                for d in await fleet.journal.deployments(fleet.app):
                    entries = await fleet.journal.entries(d.id)
                    guarding |= any(e.kind == "guard.started" for e in entries)
                if guarding:
                    await clock.sleep(10)
                    world.releases["v2"] = Behaviour(error_rate=0.2)
                    return

        async with anyio.create_task_group() as tg:
            if late_fault:
                tg.start_soon(fault_in_the_guard)
            result = await run_deploy(fleet, "v2", handle_signals=False)
            tg.cancel_scope.cancel()
        return result, list(await fleet.journal.entries(result.deployment_id))

    result, entries = clock.run(main)
    return result, world, entries


def test_a_good_release_is_watched_after_its_waves_and_the_holdback_switched_last() -> None:
    result, world, entries = run(late_fault=False)
    assert result.outcome == "deployed", result.reason
    assert {n: (s.active, s.lb) for n, s in world.hosts.items()} == {
        f"h{i}": ("v2", LbState.SERVING) for i in range(1, 5)
    }
    kinds = [e.kind for e in entries]
    assert [e.data["hosts"] for e in entries if e.kind == "wave.started"] == [
        ["h1"], ["h2"], ["h3"], ["h4"],  # h4 is the holdback, switched after the guard
    ]  # fmt: skip
    started = [e.data for e in entries if e.kind == "bake.started"]
    assert [(d["purpose"], d["relative"]) for d in started] == [
        ("wave", True), ("wave", True), ("wave", True), ("guard", True),
    ]  # fmt: skip
    assert {d["bakes"] for d in started} == {4}  # alpha shared by 3 waves and the guard
    # half of alpha to the first wave's bake, the rest evenly over the later ones
    assert [d["alpha"] for d in started] == pytest.approx([0.01 / 2] + [0.01 / 6] * 3)
    guard_passed = next(
        i for i, e in enumerate(entries) if e.kind == "wave.passed" and e.data.get("guard")
    )
    h4 = next(i for i, e in enumerate(entries) if e.kind == "host.switched" and e.host == "h4")
    assert kinds.index("guard.started") < guard_passed < h4
    guard_bake = next(e.data for e in entries if e.kind == "bake.finished" and e.data["bake"] == 4)
    assert guard_bake["t_s"] >= 60


def test_a_fault_that_starts_after_the_waves_passed_is_caught_by_the_default_guard() -> None:
    result, world, entries = run(late_fault=True)
    assert result.outcome == "reverted", result.reason
    assert result.reason.startswith("guard: errors")
    assert {n: (s.active, s.lb) for n, s in world.hosts.items()} == {
        f"h{i}": ("v1", LbState.SERVING) for i in range(1, 5)
    }
    assert [e.data["wave"] for e in entries if e.kind == "wave.passed"] == [1, 2, 3]
    assert not [e for e in entries if e.host == "h4"]  # the holdback never left v1
