"""HAProxy frozen (SIGSTOP: alive, its socket accepting, never answering: a hung balancer)
while a revert needs it: `resume --abort` of an interrupted deployment.

The revert waits for the balancer saying so ("still waiting for the balancer: N s of M"),
prints no traceback for the balancer's error (one line), ends at once on SIGTERM when no
host is mid-step (exit 143, lease released, the journal saying a revert is to finish), and
once the balancer answers the run ends by what the fleet is (`aborted`), not `failed` with
the reason of a wait that is over. (Found by a new user: tracebacks, SIGTERM ignored for
8 minutes, a completed abort ended `failed` and `status` advised a rollback.)

HAProxy is frozen once the abort has read the fleet and taken the run over: the abort stops
itself inside the write of its `deployment.resumed` (IMMUNITY_FAULT_STOP_IN_WRITE), the test
freezes HAProxy, then lets the abort go on. (Frozen before `resume` starts, the fleet cannot be
read and `resume` refuses at once, nothing touched, the run still resumable: checked too.)
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


def haproxy_pid(sbx: Sandbox) -> int:
    return int((sbx.dir / "pids" / "haproxy.pid").read_text())


@contextmanager
def frozen_haproxy(sbx: Sandbox) -> Iterator[int]:
    pid = haproxy_pid(sbx)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


@contextmanager
def left_clean(sbx: Sandbox, cfg: Path) -> Iterator[None]:
    """On a failure: HAProxy thawed and the interrupted deployment aborted, so that the next
    test on the shared sandbox does not fail in cascade."""
    try:
        yield
    except BaseException:
        with suppress(Exception):
            os.kill(haproxy_pid(sbx), signal.SIGCONT)
            sbx.run("resume", "-c", str(cfg), "--abort")
        raise


def _stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP: state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


# the abort stops itself inside the write of its `deployment.resumed`: the fleet read, the
# run taken over, the revert not begun
STOP_AT_RESUMED = {"IMMUNITY_FAULT_STOP_IN_WRITE": "deployment.resumed:1"}


@contextmanager
def abort_then_freeze(sbx: Sandbox, cfg: Path) -> Iterator[subprocess.Popen[str]]:
    """`resume --abort` started with HAProxy answering (it reads the fleet and takes the run
    over), HAProxy frozen before its revert begins, thawed on leaving (the abort killed
    there if it still runs after an error)."""
    proc = sbx.start("resume", "-c", str(cfg), "--abort", env=STOP_AT_RESUMED)
    try:
        deadline = time.monotonic() + 60
        while not _stopped(proc.pid):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the abort never reached deployment.resumed"
            time.sleep(0.05)
        with frozen_haproxy(sbx):
            os.kill(proc.pid, signal.SIGCONT)
            yield proc
    except BaseException:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        raise


def entries(sbx: Sandbox, kind: str) -> list[dict[str, object]]:
    """The latest deployment's entries of `kind` (their data)."""
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        rows = db.execute(
            "SELECT data FROM entries WHERE kind = ? AND deployment_id = (SELECT id FROM "
            "deployments ORDER BY started_at DESC LIMIT 1) ORDER BY seq",
            (kind,),
        )
        return [json.loads(r[0]) for r in rows.fetchall()]


def leases_of(sbx: Sandbox) -> list[tuple[object, ...]]:
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        return db.execute("SELECT * FROM leases").fetchall()


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
    with left_clean(fleet3, cfg):
        _sigterm_while_waiting(fleet3, cfg)


def _sigterm_while_waiting(fleet3: Sandbox, cfg: Path) -> None:
    interrupted(fleet3, cfg)
    with abort_then_freeze(fleet3, cfg) as proc:
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
    with left_clean(fleet3, cfg):
        _refused_then_aborted(fleet3, cfg)


def _refused_then_aborted(fleet3: Sandbox, cfg: Path) -> None:
    interrupted(fleet3, cfg)
    leases = leases_of(fleet3)  # the killed deploy's, unreleased
    # frozen before `resume` starts: the fleet cannot be read, refused at once, untouched
    with frozen_haproxy(fleet3):
        t0 = time.monotonic()
        r = fleet3.run("resume", "-c", str(cfg), "--abort")
        took = time.monotonic() - t0
    text = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2, text[-3000:]
    assert took < 20, took
    assert "cannot read the fleet, nothing was touched" in text, text[-3000:]
    assert "still resumable" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert fleet3.releases_served()["h1"] == "v2"
    assert leases_of(fleet3) == leases  # the run not taken over
    assert not entries(fleet3, "deployment.resumed")
    # frozen once the abort has read the fleet: it waits, and ends `aborted` once thawed
    with abort_then_freeze(fleet3, cfg) as proc:
        wait_for(fleet3, proc, None, within=30)
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
