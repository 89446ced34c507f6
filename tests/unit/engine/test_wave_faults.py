"""A failure at every step of every host of one 3-host wave, max_unavailable 1 and 2.

Each case must end (no hang), revert the fleet (exit 3's outcome), leave every host on the
old release and in the pool, never take more than max_unavailable hosts out at once, and
release the lease. Driven in memory (see memory_fleet); the same fault end to end on the
real sandbox HAProxy is `tests/e2e/test_lifecycle.py`.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from memory_fleet import memory_fleet

from immunity.domain import LbState
from immunity.engine.deployment import deploy
from immunity.engine.result import RunOutcome

STEPS = ("drain", "stop", "install", "start", "verify", "warmup", "enable")
CASES = [
    (maxu, host, step, mode)
    for maxu in (1, 2)
    for host in ("h1", "h2", "h3")
    for step in STEPS
    for mode in ("fail", "hang")
]


@pytest.mark.parametrize(
    ("max_unavailable", "host", "step", "mode"),
    CASES,
    ids=[f"maxu{m}-{h}-{s}-{mode}" for m, h, s, mode in CASES],
)
def test_a_failure_inside_a_multi_host_wave_reverts_the_whole_fleet_and_ends(
    tmp_path: Path, max_unavailable: int, host: str, step: str, mode: str
) -> None:
    """The host's step fails (or never returns): reverted, every host on v1 and serving."""
    fleet, lb, driver = memory_fleet(
        tmp_path, {(host, step): mode}, max_unavailable=max_unavailable
    )

    async def main() -> RunOutcome:
        with anyio.fail_after(30):  # a hang fails the test instead of the suite
            result = await deploy(fleet, "v2", handle_signals=False)
        lease = await fleet.journal.current_lease(fleet.app)
        assert lease is None
        await fleet.journal.close()
        return result.outcome

    assert RunOutcome.REVERTED == anyio.run(main)
    assert {"h1": "v1", "h2": "v1", "h3": "v1"} == driver.active
    assert {"h1", "h2", "h3"} == {n for n, s in lb.state.items() if s is LbState.SERVING}
    assert lb.peak_out <= max_unavailable


def test_without_a_fault_the_wave_deploys_within_capacity(tmp_path: Path) -> None:
    """The same wave with nothing failing: deployed, every host on v2, never 2 out at once."""
    fleet, lb, driver = memory_fleet(tmp_path, {}, max_unavailable=1)

    async def main() -> RunOutcome:
        result = await deploy(fleet, "v2", handle_signals=False)
        await fleet.journal.close()
        return result.outcome

    assert RunOutcome.DEPLOYED == anyio.run(main)
    assert {"h1": "v2", "h2": "v2", "h3": "v2"} == driver.active
    assert 1 == lb.peak_out
