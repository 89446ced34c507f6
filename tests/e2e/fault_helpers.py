"""Shared by the fault-injection files (test_faults, test_deploy_kill_sweep,
test_revert_kill_sweep): the kill points, the loaded fleet and what a whole fleet is.

After every fault the fleet must serve one release with every host in the pool, `status`
must agree with the journal, and no lease may be left held.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from e2e_helpers import FAST, Load, Sandbox

STEPS_PER_HOST = 7
FULL_SWEEP = bool(os.environ.get("IMMUNITY_FULL_SWEEP"))
# host.step_started ordinals of a 3-host deploy (waves [1, "100%"], one host at a time):
# host i's step j (drain, stop, install, start, verify, warmup, enable) is 7*i + j + 1.
# On the real sandbox the suite kills after each step kind once, spread over the 3 hosts and
# both waves; every one of the 21 points (and 28 of a 4-host fleet, plus points inside the
# bakes) is swept in virtual time by tests/unit/engine/test_virtual_engine.py
# (test_a_crash_at_every_step_of_a_deployment_is_resumed_to_the_end).
# IMMUNITY_FULL_SWEEP=1 kills after all 21 here too.
DEPLOY_KILL_POINTS = (
    list(range(1, 3 * STEPS_PER_HOST + 1)) if FULL_SWEEP else [1, 4, 7, 9, 12, 17, 20]
)
# The revert is h1's walk back: ordinals 8 (drain) to 14 (enable). The suite kills at its
# drain, install and enable; test_a_crash_at_every_step_of_a_revert_is_resumed_and_the_revert_
# finished sweeps all of them in virtual time; IMMUNITY_FULL_SWEEP=1 runs all 7 here.
REVERT_KILL_POINTS = (
    list(range(STEPS_PER_HOST + 1, 2 * STEPS_PER_HOST + 1)) if FULL_SWEEP else [8, 10, 14]
)


def under_load(fleet3: Sandbox) -> Iterator[Sandbox]:
    """The fleet under steady customer load (judges need traffic): each file's module-scoped
    `loaded` fixture yields from it, for the whole module."""
    load = Load(fleet3, 40, "faults-load.jsonl")
    try:
        yield fleet3
    finally:
        load.stop()


def plain(sbx: Sandbox) -> Path:
    return sbx.write_config("faults-plain.yaml", **{**FAST, "checks": []})


def judged(sbx: Sandbox) -> Path:
    return sbx.write_config("faults-judged.yaml", **FAST)


def current(sbx: Sandbox, cfg: Path) -> str:
    """The one release every host's own process runs (`assert_whole` also asks `status`)."""
    served = sbx.releases_served()
    assert len(set(served.values())) == 1, served
    return str(next(iter(served.values())))


def assert_whole(sbx: Sandbox, cfg: Path, release: str) -> None:
    """One release everywhere, every host serving, the journal agreeing, no lease held."""
    st = sbx.status(cfg)
    assert [release] * 3 == [h["active_release"] for h in st["hosts"]], st
    assert [h["lb_state"] for h in st["hosts"]] == ["serving"] * 3, st
    assert st["disagreements"] == []
    assert st["lease"] is None
    assert {0} == set(sbx.servers_state().values())
