"""A run raises the cyclic collector's thresholds and freezes the objects alive when it began
(`run_collector`); the process's own settings come back when the last run ends, also when a
run raises, and with two runs at once."""

from __future__ import annotations

import gc

import anyio
import pytest

from immunity.engine.deployment import deploy
from immunity.engine.run import RUN_GC_THRESHOLD, run_collector
from immunity.testing import Behaviour, VirtualClock, memory_fleet

GOOD = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)}


def test_a_deployment_runs_with_the_run_thresholds_and_restores_the_process_settings() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    clock = VirtualClock()
    fleet, _ = memory_fleet(3, clock=clock, releases=GOOD, config={"bake": {"min": 5}})
    seen: list[tuple[int, int, int]] = []

    async def watch() -> None:
        while True:
            seen.append(gc.get_threshold())
            await anyio.sleep(1)

    async def main() -> str:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            result = await deploy(fleet, "v2", handle_signals=False)
            tg.cancel_scope.cancel()
        return str(result.outcome)

    assert clock.run(main) == "deployed"
    assert RUN_GC_THRESHOLD in seen[1:]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_nested_and_failing_runs_restore_once_the_last_ends() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), run_collector():
        with run_collector():
            assert gc.get_threshold() == RUN_GC_THRESHOLD
        assert gc.get_threshold() == RUN_GC_THRESHOLD  # the outer run still goes on
        raise RuntimeError("a run that raised")
    assert gc.get_threshold() == before
