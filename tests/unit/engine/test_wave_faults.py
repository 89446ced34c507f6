"""A failure at every step of every host of one 3-host wave, max_unavailable 1 and 2.

Each case must end (no hang), revert the fleet (exit 3's outcome), leave every host on the
old release and in the pool, never take more than max_unavailable hosts out at once, and
release the lease. Driven on `immunity.testing`'s in-memory fleet in virtual time (a hang
ends at the step's deadline, in virtual seconds); the same fault end to end on the real
sandbox HAProxy is `tests/e2e/test_lifecycle.py`.
"""

from __future__ import annotations

from typing import Any

import pytest

from immunity.domain import LbState
from immunity.engine.deployment import deploy
from immunity.engine.result import RunOutcome
from immunity.testing import VirtualClock, World, memory_fleet

STEPS = ("drain", "stop", "install", "start", "verify", "warmup", "enable")
# the engine's step -> the in-memory fleet's call that fails or hangs in it
CALL = {"drain": "drain_request", "enable": "enable_request"}
CONFIG: dict[str, Any] = {
    "waves": ["100%"],
    "signals": [],
    "checks": [],
    "bake": {"min": 0, "max": 5, "interval": 0.05, "lag": 0},
    "warmup": {"timeout": 0.3},
    "timeouts": {**{step: 0.3 for step in STEPS if step != "warmup"}, "revert": 20},
    "lease_ttl": 5,
}
CASES = [
    (maxu, host, step, mode)
    for maxu in (1, 2)
    for host in ("h1", "h2", "h3")
    for step in STEPS
    for mode in ("fail", "hang")
]


def run_deploy(max_unavailable: int, fault: tuple[str, str, str] | None) -> tuple[Any, World]:
    """Deploy v2 over 3 in-memory hosts on v1, with one fault that strikes once."""
    clock = VirtualClock()
    fleet, world = memory_fleet(
        3, clock=clock, config={**CONFIG, "max_unavailable": max_unavailable}
    )
    if fault is not None:
        host, step, mode = fault
        key = (host, CALL.get(step, step))
        if mode == "fail":
            world.fail_once[key] = "failed on cue"
        else:
            world.hang_once.add(key)

    async def main() -> tuple[RunOutcome, object]:
        result = await deploy(fleet, "v2", handle_signals=False)
        return result.outcome, await fleet.journal.current_lease(fleet.app)

    outcome, lease = clock.run(main)
    return (outcome, lease), world


@pytest.mark.parametrize(
    ("max_unavailable", "host", "step", "mode"),
    CASES,
    ids=[f"maxu{m}-{h}-{s}-{mode}" for m, h, s, mode in CASES],
)
def test_a_failure_inside_a_multi_host_wave_reverts_the_whole_fleet_and_ends(
    max_unavailable: int, host: str, step: str, mode: str
) -> None:
    """The host's step fails (or never returns): reverted, every host on v1 and serving."""
    (outcome, lease), world = run_deploy(max_unavailable, (host, step, mode))
    assert RunOutcome.REVERTED == outcome
    assert lease is None
    assert {"h1": "v1", "h2": "v1", "h3": "v1"} == {n: s.active for n, s in world.hosts.items()}
    assert {"h1", "h2", "h3"} == {n for n, s in world.hosts.items() if s.lb is LbState.SERVING}
    assert world.peak_out <= max_unavailable
    assert not world.fail_once and not world.hang_once  # the fault did strike


def test_without_a_fault_the_wave_deploys_within_capacity() -> None:
    """The same wave with nothing failing: deployed, every host on v2, never 2 out at once."""
    (outcome, lease), world = run_deploy(1, None)
    assert RunOutcome.DEPLOYED == outcome
    assert lease is None
    assert {"h1": "v2", "h2": "v2", "h3": "v2"} == {n: s.active for n, s in world.hosts.items()}
    assert 1 == world.peak_out
