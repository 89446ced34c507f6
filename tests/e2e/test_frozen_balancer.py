"""HAProxy frozen (SIGSTOP: alive, its socket accepting, never answering: a hung balancer)
while a revert needs it: `resume --abort` of an interrupted deployment.

The revert waits for the balancer saying so ("still waiting for the balancer: N s of M"),
prints no traceback for the balancer's error (one line), ends at once on SIGTERM when no
host is mid-step (exit 143, lease released, the journal saying a revert is to finish), and
once the balancer answers the run ends by what the fleet is (`aborted`), not `failed` with
the reason of a wait that is over. (Found by a new user: tracebacks, SIGTERM ignored for
8 minutes, a completed abort ended `failed` and `status` advised a rollback.)
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from e2e_helpers import FAST, Sandbox

pytestmark = pytest.mark.slow

# h1 switched to v2 in wave 1, killed as h2's walk starts: an interrupted deployment
KILL_IN_WAVE_2 = "host.step_started:8"


def config(sbx: Sandbox) -> Path:
    """No checks (no traffic needed), a balancer that gives up on one command in 2 s, the
    revert's deadline at 60 s (a "still waiting" line every 6 s)."""
    base = yaml.safe_load(sbx.config.read_text())
    balancer = {**base["balancer"], "timeout": "1s", "retry_for": "2s"}
    timeouts = {**(base.get("timeouts") or {}), "revert": "60s"}
    return sbx.write_config(
        "frozen-lb.yaml",
        **{**FAST, "checks": [], "bake": {"min": "0s"}},
        balancer=balancer,
        timeouts=timeouts,
    )


def interrupted(sbx: Sandbox, cfg: Path) -> None:
    """Every host on v1, then a deploy of v2 killed in its second wave (h1 on v2)."""
    r = sbx.run("rollback", "-c", str(cfg)) if not sbx.serves("v1") else None
    if r is not None:
        assert r.returncode == 0, (r.stdout, r.stderr[-1500:])
    assert sbx.serves("v1"), sbx.releases_served()
    r = sbx.run(
        "deploy", "-c", str(cfg), "--release", "v2", env={"IMMUNITY_FAULT_KILL_AT": KILL_IN_WAVE_2}
    )
    assert r.returncode == -9, (r.stdout, r.stderr[-1500:])
    assert sbx.releases_served()["h1"] == "v2"


@contextmanager
def frozen_haproxy(sbx: Sandbox) -> Iterator[int]:
    pid = int((sbx.dir / "pids" / "haproxy.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def entries(sbx: Sandbox, kind: str) -> list[dict[str, object]]:
    """The latest deployment's entries of `kind` (their data)."""
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        rows = db.execute(
            "SELECT data FROM entries WHERE kind = ? AND deployment_id = (SELECT id FROM "
            "deployments ORDER BY started_at DESC LIMIT 1) ORDER BY seq",
            (kind,),
        )
        return [json.loads(r[0]) for r in rows.fetchall()]


def wait_for(sbx: Sandbox, proc: subprocess.Popen[str], what: str | None, within: float) -> None:
    """Until an `immune.waiting` entry holds the key `what` (`waited_s`: a "still waiting"
    line; None: any, the wait began), the process still running."""
    deadline = time.monotonic() + within
    while not any(what is None or what in e for e in entries(sbx, "immune.waiting")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {what!r} in {within:g}s"
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_sigterm_while_an_abort_waits_for_a_frozen_balancer_ends_it_then_resume_finishes(
    fleet3: Sandbox,
) -> None:
    cfg = config(fleet3)
    interrupted(fleet3, cfg)
    with frozen_haproxy(fleet3):
        proc = fleet3.start("resume", "-c", str(cfg), "--abort")
        try:
            wait_for(fleet3, proc, "waited_s", within=40)
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
        # stopped within the balancer client's one command (2 s) and the journal's finish,
        # while the balancer is still frozen (the old code waited for `timeouts.revert`)
        assert proc.returncode == 143, (out, err[-3000:])
        assert took < 10, took
        assert not fleet3.lease_held()
    text = out + err
    assert "Traceback" not in text, text
    assert "still waiting for the balancer" in text, text
    assert "the revert touched no host" in text, text
    assert "`immunity resume -c" in text and "finishes the revert" in text, text
    assert fleet3.releases_served()["h1"] == "v2"  # nothing was touched
    # the journal says a revert began: a plain `resume` finishes it (not the deployment)
    r = fleet3.run("resume", "-c", str(cfg))
    assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
    assert "aborted" in r.stdout, r.stdout
    assert fleet3.serves("v1"), (fleet3.releases_served(), fleet3.servers_state())
    assert not fleet3.lease_held()


@pytest.mark.timeout(300)
def test_an_abort_that_waited_for_a_frozen_balancer_ends_aborted_once_it_answers(
    fleet3: Sandbox,
) -> None:
    cfg = config(fleet3)
    interrupted(fleet3, cfg)
    with frozen_haproxy(fleet3):
        proc = fleet3.start("resume", "-c", str(cfg), "--abort")
        try:
            wait_for(fleet3, proc, None, within=30)
        except BaseException:
            proc.kill()
            raise
    try:  # thawed: the revert goes on and completes
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out + err
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text
    assert "did not answer" in text  # said once, as one line
    st = fleet3.status(cfg)
    assert [h["active_release"] for h in st["hosts"]] == ["v1"] * 3, st
    assert [h["lb_state"] for h in st["hosts"]] == ["serving"] * 3, st
    assert {0} == set(fleet3.servers_state().values())
    with sqlite3.connect(fleet3.dir / "journal.db") as db:
        outcome, reason = db.execute(
            "SELECT outcome, reason FROM deployments ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
    assert outcome == "aborted", (outcome, reason)
    assert "did not answer" not in reason, reason
