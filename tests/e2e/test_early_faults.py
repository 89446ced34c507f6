"""Failure paths at the edges of a run, on a real 3-host sandbox (HAProxy, local hosts)
through the CLI: an interrupted `deploy --force` resumed. Assertions read the fleet's own
view (each host's app process, HAProxy's `show servers state`) and the journal.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from e2e_helpers import FAST, Sandbox

from immunity.sandbox.fleet import read_pid

pytestmark = pytest.mark.slow


def plain(sbx: Sandbox, **overrides: object) -> Path:
    return sbx.write_config("early.yaml", **{**FAST, "checks": [], **overrides})


def app_pids(sbx: Sandbox) -> dict[str, int | None]:
    """Each host's app process id, as the host's own pid file says (a restart changes it)."""
    return {h: read_pid(sbx.dir / "hosts" / h / "app.pid") for h in ("h1", "h2", "h3")}


def ensure_on(sbx: Sandbox, release: str) -> None:
    if sbx.serves(release):
        return
    r = sbx.run("deploy", "-c", str(plain(sbx, bake={"min": "0s"})), "--release", release)
    assert r.returncode == 0, r.stdout + r.stderr[-1500:]


@pytest.mark.timeout(300)
def test_an_interrupted_forced_redeploy_resumed_restarts_the_hosts_it_had_not_walked(
    fleet3: Sandbox,
) -> None:
    """`deploy --force` of the release every host serves, killed right after h1 (wave 1)
    was walked; `resume` restarts h2 and h3 (their app processes change) and not h1 again.
    (`--force` was not journaled: the resume found every host on the release and walked
    none, h2 and h3 never restarted.)"""
    ensure_on(fleet3, "v1")
    cfg = plain(fleet3)
    before = app_pids(fleet3)
    r = fleet3.run(
        "deploy",
        "-c",
        str(cfg),
        "--release",
        "v1",
        "--force",
        env={"IMMUNITY_FAULT_KILL_AT": "host.switched:1"},
    )
    assert -9 == r.returncode, r.stdout + r.stderr[-1500:]
    killed = app_pids(fleet3)
    assert killed["h1"] != before["h1"]  # wave 1 walked h1 (restarted) before the kill
    assert (killed["h2"], killed["h3"]) == (before["h2"], before["h3"])
    r = fleet3.run("resume", "-c", str(cfg))
    assert 0 == r.returncode, r.stdout + r.stderr[-1500:]
    after = app_pids(fleet3)
    assert after["h1"] == killed["h1"], "h1 was restarted again"
    assert after["h2"] != before["h2"] and after["h3"] != before["h3"], (before, after)
    assert fleet3.serves("v1")
    assert not fleet3.lease_held()
    with sqlite3.connect(fleet3.dir / "journal.db") as db:
        outcome = db.execute(
            "SELECT outcome FROM deployments ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
    assert ("deployed",) == outcome
