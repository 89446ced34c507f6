"""The kill-point sweep over the immune response's revert: the orchestrator SIGKILLed right
after a step of the revert walk starts, then `resume` still reverts (see fault_helpers).

Apart from test_faults.py so that `--dist loadfile` can run the sweeps on both workers.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_helpers import Sandbox
from fault_helpers import (
    REVERT_KILL_POINTS,
    assert_whole,
    current,
    judged,
    under_load,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(fleet3: Sandbox) -> Iterator[Sandbox]:
    yield from under_load(fleet3)


def test_sigkill_at_every_step_of_a_revert_then_resume_finishes_the_revert(
    loaded: Sandbox, record_property: Callable[[str, object], None]
) -> None:
    """Killed at a step of the immune response's revert walk (drain, install, enable; all 7
    with IMMUNITY_FULL_SWEEP=1), `resume` still reverts."""
    cfg = judged(loaded)
    covered = 0
    old = current(loaded, cfg)
    for k in REVERT_KILL_POINTS:
        r = loaded.run(
            "deploy",
            "-c",
            str(cfg),
            "--release",
            "bad",
            env={"IMMUNITY_FAULT_KILL_AT": f"host.step_started:{k}"},
        )
        assert r.returncode == -9, (k, r.stdout, r.stderr[-1500:])
        r = loaded.run("resume", "-c", str(cfg))
        assert r.returncode == 3, (k, r.stdout, r.stderr[-1500:])
        assert {"h1": old, "h2": old, "h3": old} == loaded.releases_served(), k
        assert {"h1": 0, "h2": 0, "h3": 0} == loaded.servers_state(), k
        assert not loaded.lease_held(), k
        if k == REVERT_KILL_POINTS[0]:
            _show_says_when_the_revert_began(loaded, cfg)
        covered += 1
    assert_whole(loaded, cfg, old)  # and `status` agrees with the journal
    record_property("kill points covered (revert)", covered)
    assert covered == len(REVERT_KILL_POINTS)


def _show_says_when_the_revert_began(sbx: Sandbox, cfg: Path) -> None:
    """`show` of a revert killed mid-way and finished by `resume`: it began at the first
    `immune.started` (show said the resume's), was resumed at the second, and the fleet
    was back counted from that resume (show said "after the verdict")."""
    data = json.loads(sbx.run("show", "-c", str(cfg), "--json").stdout)
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        began = [
            row[0]
            for row in db.execute(
                "SELECT at FROM entries WHERE deployment_id=? AND kind='immune.started' "
                "ORDER BY seq",
                (data["deployment_id"],),
            )
        ]
    assert 2 == len(began)
    t0 = dt.datetime.fromisoformat(data["started_at"])
    at = [round((dt.datetime.fromisoformat(b) - t0).total_seconds(), 3) for b in began]
    revert = data["revert"]
    assert (at[0], [at[1]]) == (revert["start"], revert["resumed"])
    assert ["h1"] == [h["host"] for h in revert["hosts"]]
    text = sbx.run("show", "-c", str(cfg)).stdout
    assert f"revert: started at {at[0]:.1f}s, resumed at {at[1]:.1f}s" in text, text
    assert "after the resume that finished the revert" in text, text
    assert "after the verdict" not in text, text
    # the verdict came before the kill: detected after is still from the first canary in
    # to the failing verdict (the resumed revert's result had none)
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        kinds = db.execute(
            "SELECT at, kind, data FROM entries WHERE deployment_id=? AND kind IN "
            "('host.switched', 'verdict.failed') ORDER BY seq",
            (data["deployment_id"],),
        ).fetchall()
    first_in = next(dt.datetime.fromisoformat(a) for a, k, d in kinds if k == "host.switched")
    failed = next(json.loads(d) for a, k, d in kinds if k == "verdict.failed")
    decided = dt.datetime.fromisoformat(failed["verdict"]["decided_at"])
    expected = round((decided - first_in).total_seconds(), 3)
    assert expected == pytest.approx(data["detected_after_s"], abs=0.01), data
