"""The kill-point sweep over a deployment: the orchestrator SIGKILLed right after a step
start, then `resume` finishes the deployment (see fault_helpers for what is checked).

Apart from test_faults.py so that `--dist loadfile` can run the sweeps on both workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from e2e_helpers import FAST, Sandbox
from fault_helpers import (
    DEPLOY_KILL_POINTS,
    STEPS_PER_HOST,
    assert_whole,
    current,
    under_load,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(fleet3: Sandbox) -> Iterator[Sandbox]:
    yield from under_load(fleet3)


@pytest.mark.timeout(900)
def test_sigkill_at_every_step_of_a_deployment_then_resume_finishes_it(
    loaded: Sandbox, record_property: Callable[[str, object], None]
) -> None:
    """Killed right after a step start of a 3-host deploy (each step kind once; all 21 with
    IMMUNITY_FULL_SWEEP=1), `resume` completes it."""
    cfg = loaded.write_config(
        "faults-sweep.yaml", **{**FAST, "checks": [], "bake": {"min": "0s", "interval": "200ms"}}
    )
    covered = 0
    release = current(loaded, cfg)
    for k in DEPLOY_KILL_POINTS:
        new = "v2" if release != "v2" else "v1"
        r = loaded.run(
            "deploy",
            "-c",
            str(cfg),
            "--release",
            new,
            env={"IMMUNITY_FAULT_KILL_AT": f"host.step_started:{k}"},
        )
        assert r.returncode == -9, (k, r.stdout, r.stderr[-1500:])
        r = loaded.run("resume", "-c", str(cfg))
        assert r.returncode == 0, (k, r.stdout, r.stderr[-1500:])
        # the servers' own view: each host's process, HAProxy's admin state, the lease row
        assert {"h1": new, "h2": new, "h3": new} == loaded.releases_served(), k
        assert {"h1": 0, "h2": 0, "h3": 0} == loaded.servers_state(), k
        assert not loaded.lease_held(), k
        release = new
        covered += 1
    assert_whole(loaded, cfg, release)  # and `status` agrees with the journal
    record_property("kill points covered (deployment)", covered)
    assert covered == len(DEPLOY_KILL_POINTS)
    assert {(k - 1) % STEPS_PER_HOST for k in DEPLOY_KILL_POINTS} == set(range(STEPS_PER_HOST))
