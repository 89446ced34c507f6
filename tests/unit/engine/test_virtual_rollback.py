"""`rollback` killed after every step of its walk, then `resume`, on the in-memory fleet in
virtual time: every host back on its previous release and serving, the record rolled back.

The real-sandbox counterpart (a real HAProxy, host processes, the orchestrator SIGKILLed)
is tests/e2e/test_rollback_faults.py, which kills at a step of each host; this sweep covers
every point of every host."""

from __future__ import annotations

from typing import Any

import anyio
from test_virtual_engine import CONFIG, GOOD, LAT, Crash, CrashingJournal, kinds, serving

from immunity.domain import LbState
from immunity.engine import ops
from immunity.engine.deployment import deploy as run_deploy
from immunity.engine.result import RunResult
from immunity.journal.base import JournalEntry
from immunity.testing import MemoryJournal, MemoryStore, VirtualClock, World, memory_fleet

HOSTS = 3
STEPS_PER_HOST = 7


def _rollback_with_crash(at: int | None) -> tuple[RunResult, World, list[JournalEntry]]:
    """Deploy v2 on 3 hosts, roll back with the journal dying after the rollback's `at`-th
    host.step_started (never when None), then `resume` once the dead holder's lease expired."""
    clock = VirtualClock()
    store = MemoryStore()
    config = {**CONFIG, "waves": [1, "100%"], "max_unavailable": 1}
    fleet, world = memory_fleet(
        HOSTS,
        clock=clock,
        latencies=LAT,
        releases=GOOD,
        config=config,
        journal=MemoryJournal(store, clock=clock),
    )

    async def deployed() -> None:
        assert (await run_deploy(fleet, "v2", handle_signals=False)).outcome == "deployed"

    clock.run(deployed)
    assert serving(world) == {f"h{i}": ("v2", LbState.SERVING) for i in range(1, HOSTS + 1)}
    if at is None:

        async def whole() -> tuple[RunResult, list[JournalEntry]]:
            result = await ops.rollback(fleet, handle_signals=False)
            return result, list(await fleet.journal.entries(result.deployment_id))

        result, entries = clock.run(whole)
        return result, world, entries
    fleet.journal = CrashingJournal(store, clock, "host.step_started", at)

    async def killed() -> None:
        try:
            await ops.rollback(fleet, handle_signals=False)
        except Crash:
            return
        except BaseExceptionGroup as group:
            assert group.subgroup(Crash) is not None, group
            return
        raise AssertionError(f"no crash at the rollback's host.step_started #{at}")

    clock.run(killed)
    clock.advance(CONFIG["lease_ttl"] + 1)  # the dead holder's lease expires
    fleet.journal = MemoryJournal(store, clock=clock)

    async def resumed() -> tuple[RunResult, list[JournalEntry]]:
        with anyio.fail_after(3600):  # virtual seconds: a resume that never ends fails here
            result = await ops.resume(fleet)
        return result, list(await fleet.journal.entries(result.deployment_id))

    result, entries = clock.run(resumed)
    return result, world, entries


def test_a_rollback_walks_every_host_back_one_step_kind_after_another() -> None:
    """Without a crash: 7 steps per host, host after host, every host back on v1."""
    result, world, entries = _rollback_with_crash(None)
    assert result.outcome == "rolled_back", result.reason
    assert serving(world) == {f"h{i}": ("v1", LbState.SERVING) for i in range(1, HOSTS + 1)}
    assert len(kinds(entries, "host.step_started")) == HOSTS * STEPS_PER_HOST


def test_a_rollback_killed_after_any_step_is_finished_by_resume(record_property: Any) -> None:
    """Killed right after each of the rollback's 21 host.step_started, `resume` finishes the
    rollback: every host on v1 and serving, the outcome rolled back, the resume journaled."""
    points = range(1, HOSTS * STEPS_PER_HOST + 1)
    for at in points:
        result, world, entries = _rollback_with_crash(at)
        where = f"crash after the rollback's host.step_started #{at}"
        assert result.outcome == "rolled_back", (where, result.reason)
        assert serving(world) == {f"h{i}": ("v1", LbState.SERVING) for i in range(1, HOSTS + 1)}, (
            where
        )
        assert kinds(entries, "deployment.resumed") or kinds(entries, "rollback.resumed"), where
        assert world.peak_out <= 1, where  # max_unavailable, the resume's walk included
    record_property("kill points covered (virtual rollback)", len(points))
