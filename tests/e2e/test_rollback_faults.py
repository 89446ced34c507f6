"""The kill-point sweep over `rollback`: the orchestrator SIGKILLed right after a step of
the rollback's walk starts (by default once, mid-walk: h1 rolled back, h2 in flight, h3 not
started; all 21 points with IMMUNITY_FULL_SWEEP=1), then `resume` finishes the rollback:
every host on its previous release and in the pool, the journal agreeing, no lease left.
Every one of the 21 points is swept in virtual time by
tests/unit/engine/test_virtual_rollback.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_helpers import FAST, Sandbox

pytestmark = pytest.mark.slow

# host.step_started ordinals: host i's step j is 7*i + j + 1 (hosts walk one at a time).
# The suite kills at h2's install (each iteration is a deploy, a killed rollback and a
# resume: ~35 s on a quiet 2-core machine); IMMUNITY_FULL_SWEEP=1 kills after every one of
# the 21 step starts.
KILL_POINTS = list(range(1, 22)) if os.environ.get("IMMUNITY_FULL_SWEEP") else [11]


def quick(sbx: Sandbox) -> Path:
    return sbx.write_config(
        "rb-quick.yaml",
        **{**FAST, "checks": [], "waves": ["100%"], "max_unavailable": 2, "bake": {"min": "0s"}},
    )


@pytest.mark.timeout(900)
def test_sigkill_at_every_step_of_a_rollback_then_resume_finishes_it(
    fleet3: Sandbox, record_property: Callable[[str, object], None]
) -> None:
    """Killed after each step kind of the rollback's walk, `resume` rolls every host back."""
    cfg = sbx_cfg = fleet3.write_config("rb.yaml", **{**FAST, "checks": []})
    covered = 0
    for k in KILL_POINTS:
        r = fleet3.run("deploy", "-c", str(quick(fleet3)), "--release", "v2")
        assert 0 == r.returncode, (k, r.stdout, r.stderr[-1500:])
        r = fleet3.run(
            "rollback", "-c", str(cfg), env={"IMMUNITY_FAULT_KILL_AT": f"host.step_started:{k}"}
        )
        assert -9 == r.returncode, (k, r.stdout, r.stderr[-1500:])
        r = fleet3.run("resume", "-c", str(sbx_cfg))
        assert 0 == r.returncode, (k, r.stdout, r.stderr[-1500:])
        assert "rolled back" in r.stdout
        assert {"h1": "v1", "h2": "v1", "h3": "v1"} == fleet3.releases_served(), k
        assert {"h1": 0, "h2": 0, "h3": 0} == fleet3.servers_state(), k
        assert not fleet3.lease_held(), k
        st = fleet3.status(cfg)
        assert [] == st["disagreements"], k
        covered += 1
    record_property("kill points covered (rollback)", covered)
    assert covered == len(KILL_POINTS)
