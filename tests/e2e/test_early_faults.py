"""Failure paths at the edges of a run, on a real 3-host sandbox (HAProxy, local hosts)
through the CLI: a signal during preflight, an interrupted `deploy --force` resumed.
Assertions read the fleet's own view (each host's app process, HAProxy's `show servers
state`) and the journal.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import psutil
import pytest
import yaml
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


SLOW_SIGNAL = """#!/bin/sh
# a command signal whose every run takes 60 s: preflight runs it once, and waits
echo $$ > "$MARK"
sleep 60
echo '{"requests": 0, "errors": 0}'
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("sig", "code", "outcome"),
    [
        (signal.SIGTERM, 143, "terminated"),
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGHUP, 143, "terminated"),
    ],
    ids=["SIGTERM", "SIGINT", "SIGHUP"],
)
def test_a_signal_during_preflight_ends_the_run_with_the_lease_released_and_journaled(
    fleet3: Sandbox, sig: signal.Signals, code: int, outcome: str
) -> None:
    """A signal while preflight waits on a slow signal source (the lease already taken):
    the run ends at once with the interruption's exit code, the lease released, the journal
    saying it stopped before any host was touched, the source's command killed; no host was
    touched and the next deploy is not refused over it. (SIGTERM and SIGHUP used to kill the
    process, its lease left to a dead pid; SIGINT left no word in the journal.)"""
    ensure_on(fleet3, "v1")
    script = fleet3.dir / "slow-signal.sh"
    script.write_text(SLOW_SIGNAL)
    script.chmod(0o755)
    mark = fleet3.dir / f"slow-signal-{sig.name}.started"
    mark.unlink(missing_ok=True)
    base = plain(fleet3)
    cfg = fleet3.write_config(
        "early-slow.yaml",
        **{
            **FAST,
            "checks": [],
            "signals": [
                *yaml.safe_load(base.read_text())["signals"],
                {
                    "kind": "command",
                    "name": "slow",
                    "command": [str(script)],
                    "timeout": "120s",
                    "env": {"MARK": str(mark)},
                },
            ],
        },
    )
    p = fleet3.start("deploy", "-c", str(cfg), "--release", "v2")
    deadline = time.monotonic() + 60
    while not (mark.exists() and mark.read_text().strip()):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "preflight never ran the slow signal"
        time.sleep(0.05)
    sleeper = int(mark.read_text())
    assert fleet3.lease_held()
    t0 = time.monotonic()
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert code == p.returncode, out + err[-2000:]
    assert time.monotonic() - t0 < 15
    assert "before any host was touched" in out, out
    assert "resume" not in out.split("next")[-1], out  # nothing to resume
    assert not fleet3.lease_held()
    assert not psutil.pid_exists(sleeper) or psutil.Process(sleeper).status() == "zombie"
    assert fleet3.serves("v1")  # no host touched: every one on v1, in the pool
    with sqlite3.connect(fleet3.dir / "journal.db") as db:
        rec_id, got, data = db.execute(
            "SELECT id, outcome, data FROM deployments ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        kinds = [
            k
            for (k,) in db.execute(
                "SELECT kind FROM entries WHERE deployment_id=? ORDER BY seq", (rec_id,)
            )
        ]
    assert outcome == got
    assert "preflight" == json.loads(data)["stopped_in"]
    assert ["deployment.stopping", "deployment.interrupted"] == kinds
    st = fleet3.status(base)  # the stopped run is no unfinished deployment
    assert st["steady"], st["attention"]


@pytest.mark.timeout(300)
def test_a_missing_haproxy_socket_is_named_at_once_with_the_way_out(fleet3: Sandbox) -> None:
    """The balancer's socket path holds no socket (moved away): `status` names the cause
    ("No such file or directory: <path>") with a next: line and the hosts' own view; `deploy`
    is refused at preflight naming it (exit 2, nothing touched, no lease left). (status said
    only "did not answer within 2 s"; deploy waited out 10 s of retries first.)"""
    ensure_on(fleet3, "v1")
    cfg = plain(fleet3)
    sock = fleet3.dir / "haproxy" / "admin.sock"
    away = sock.with_name("admin.sock.away")
    sock.rename(away)  # HAProxy keeps listening on it: renamed back below
    try:
        r = fleet3.run("status", "-c", str(cfg))
        assert 0 == r.returncode, r.stdout + r.stderr[-1500:]
        assert f"No such file or directory: {sock}" in r.stdout, r.stdout
        nxt = [line for line in r.stdout.splitlines() if line.startswith("next: ")]
        assert nxt and "stats socket" in nxt[0], r.stdout
        assert "did not answer within" not in r.stdout
        r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2")
        assert 2 == r.returncode, r.stdout + r.stderr[-1500:]
        assert f"unreachable: No such file or directory: {sock}" in r.stderr, r.stderr
        assert "for 10s" not in r.stderr
        assert not fleet3.lease_held()
    finally:
        away.rename(sock)
    assert fleet3.serves("v1")


@pytest.mark.timeout(300)
def test_resume_with_the_balancer_unreachable_is_refused_at_once_and_stays_resumable(
    fleet3: Sandbox,
) -> None:
    """A deployment stopped by SIGTERM; `resume` while HAProxy's socket is missing names it
    at once (exit 2, nothing touched) and leaves the deployment resumable; with the socket
    back, `resume` finishes it. (resume began the run, then its safety revert waited 600 s
    for a fleet it could not read and ended the deployment `failed`, no longer resumable.)"""
    ensure_on(fleet3, "v1")
    cfg = plain(fleet3, waves=["100%"])
    p = fleet3.start("deploy", "-c", str(cfg), "--release", "v2")
    deadline = time.monotonic() + 60
    while fleet3.servers_state()["h1"] == 0:
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "h1 never left the pool"
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert 143 == p.returncode, out + err[-2000:]
    sock = fleet3.dir / "haproxy" / "admin.sock"
    away = sock.with_name("admin.sock.away")
    sock.rename(away)
    try:
        r = fleet3.run("resume", "-c", str(cfg), timeout=60)
    finally:
        away.rename(sock)
    assert 2 == r.returncode, r.stdout + r.stderr[-2000:]
    assert f"No such file or directory: {sock}" in r.stderr
    assert not fleet3.lease_held()
    with sqlite3.connect(fleet3.dir / "journal.db") as db:
        (outcome,) = db.execute(
            "SELECT outcome FROM deployments ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
    assert "terminated" == outcome
    r = fleet3.run("resume", "-c", str(cfg))
    assert 0 == r.returncode, r.stdout + r.stderr[-2000:]
    assert fleet3.serves("v2")
