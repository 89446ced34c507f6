"""Failure paths that must end: a host failing inside a multi-host wave, signals inside a
wave and during `rollback`, a rollback outliving `lease_ttl`, a process that lost its lease.

Each runs on a real 3-host sandbox (HAProxy, local hosts) through the CLI; assertions read
the servers' own view (HAProxy's `show servers state`, each host's process) and the journal.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from e2e_helpers import FAST, Sandbox

from immunity.sandbox import fleet as sandbox

pytestmark = pytest.mark.slow

SLOW = "cold3"  # a release with a 3 s cold start: a rollback to it outlives lease_ttl


@pytest.fixture(scope="module")
def sbx(fleet3: Sandbox) -> Sandbox:
    sandbox.add_release(fleet3.dir, SLOW, cold_start_s=3.0)
    return fleet3


def plain(sbx: Sandbox, **overrides: object) -> Path:
    return sbx.write_config("lifecycle.yaml", **{**FAST, "checks": [], **overrides})


def ensure_on(sbx: Sandbox, release: str) -> None:
    served = sbx.releases_served()
    if set(served.values()) == {release} and {0} == set(sbx.servers_state().values()):
        return
    quick = sbx.write_config(
        "lifecycle-quick.yaml",
        **{**FAST, "checks": [], "waves": ["100%"], "max_unavailable": 2, "bake": {"min": "0s"}},
    )
    r = sbx.run("deploy", "-c", str(quick), "--release", release)
    assert r.returncode == 0, r.stdout + r.stderr[-1500:]


def on_v2_from_v1(sbx: Sandbox) -> None:
    """The fleet on v2 by a deployment from v1, so that `rollback` goes back to v1. The test
    before may have left it so (a deployment of v2 finished, resumed or not): then no
    deployment is spent on it."""
    last = None
    if (sbx.dir / "journal.db").exists():  # none before the first deployment
        with sqlite3.connect(sbx.dir / "journal.db") as db:
            last = db.execute(
                "SELECT release, outcome, data FROM deployments ORDER BY started_at DESC LIMIT 1"
            ).fetchone()
    from_v1 = last is not None and set(json.loads(last[2]).get("fallbacks", {}).values()) == {"v1"}
    if sbx.serves("v2") and last is not None and last[:2] == ("v2", "deployed") and from_v1:
        return
    ensure_on(sbx, "v1")
    ensure_on(sbx, "v2")


def assert_whole(sbx: Sandbox, release: str) -> None:
    """One release on every host, every host in the pool, the journal agreeing, no lease."""
    assert {"h1": release, "h2": release, "h3": release} == sbx.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == sbx.servers_state()
    st = sbx.status(plain(sbx))
    assert [] == st["disagreements"]
    assert st["lease"] is None


def wait_for(
    cond: Callable[[], bool],
    what: str,
    proc: subprocess.Popen[str] | None = None,
    limit_s: float = 60,
) -> None:
    """Poll `cond` until true; fail naming `what` (with `proc`'s output if it ended)."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"{what}: exited {proc.returncode}: {out}{err[-2000:]}")
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def holds_lease(sbx: Sandbox, pid: int) -> bool:
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        rows = db.execute("SELECT holder FROM leases WHERE released=0").fetchall()
    return any(str(r[0]).endswith(f":{pid}") for r in rows)


@pytest.mark.timeout(300)
def test_a_drain_that_fails_inside_a_multi_host_wave_reverts_the_fleet_instead_of_hanging(
    sbx: Sandbox,
) -> None:
    """waves ["100%"], max_unavailable 1: h2's drain held by slow requests fails; the wave
    stops (h3 is never taken), h2 is put back, the fleet is reverted: exit 3, within seconds."""
    ensure_on(sbx, "v1")
    cfg = plain(sbx, waves=["100%"], timeouts={"drain": "2s"})
    p = sbx.start("deploy", "-c", str(cfg), "--release", "v2")
    wait_for(lambda: sbx.servers_state()["h1"] != 0, "h1 never left the pool", p)
    codes: list[int] = []

    def slow() -> None:  # through the balancer while h1 is out: they land on h2 and h3
        codes.append(httpx.get(f"{sbx.url}/slow?ms=8000", timeout=30).status_code)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    failed_at: float | None = None
    deadline = time.monotonic() + 120
    while p.poll() is None:
        assert time.monotonic() < deadline, "the deployment hangs"
        if failed_at is None and sbx.servers_state()["h2"] != 0:
            failed_at = time.monotonic()
        time.sleep(0.05)
    out, err = p.communicate()
    for t in threads:
        t.join(30)
    assert 3 == p.returncode, out + err[-2000:]
    assert "drain did not finish" in out
    assert [200] * 4 == codes  # no customer's request was cut
    assert failed_at is not None and time.monotonic() - failed_at < 40
    assert_whole(sbx, "v1")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_inside_a_multi_host_wave_ends_with_143_once_the_host_in_flight_is_back(
    sbx: Sandbox, sig: signal.Signals
) -> None:
    """A signal while hosts wait for a capacity slot starts no new host: exit 143, every
    host in the pool, and `resume` finishes the deployment. SIGHUP is what an operator's
    dropped ssh session sends, with nobody left to read the output: both pipes are closed
    before it (it used to kill the run mid-step, exit 129, h1 left out of the pool)."""
    ensure_on(sbx, "v1")
    cfg = plain(sbx, waves=["100%"])
    p = sbx.start("deploy", "-c", str(cfg), "--release", "v2")
    wait_for(lambda: sbx.servers_state()["h1"] != 0, "h1 never left the pool", p)
    if sig == signal.SIGHUP:
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()
        p.stderr.close()
        p.send_signal(sig)
        out, err = "", ""
        p.wait(timeout=60)
    else:
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    assert 143 == p.returncode, out + err[-2000:]
    assert {"h1": 0, "h2": 0, "h3": 0} == sbx.servers_state()
    assert "v1" == sbx.releases_served()["h3"]  # never started
    r = sbx.run("resume", "-c", str(cfg))
    assert 0 == r.returncode, r.stdout + r.stderr[-2000:]
    assert_whole(sbx, "v2")


@pytest.mark.timeout(300)
def test_a_deploy_whose_output_reader_went_away_still_finishes_with_exit_0(sbx: Sandbox) -> None:
    """`immunity deploy ... | head -3`: the reader exits after the first lines. The deployment
    goes on to the end (every host on the release, in the pool) and exits 0, the outcome's
    code; it used to stop at its next line of output with exit 1, h1 out of the pool."""
    ensure_on(sbx, "v1")
    cfg = plain(sbx)
    p = sbx.start("deploy", "-c", str(cfg), "--release", "v2")
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.readline()
    assert first, "deploy printed nothing"
    p.stdout.close()
    p.stderr.close()
    p.wait(timeout=120)
    assert 0 == p.returncode
    assert_whole(sbx, "v2")
    r = sbx.run("history", "-c", str(cfg), "--json")
    assert json.loads(r.stdout)["deployments"][-1]["outcome"] == "deployed"


@pytest.mark.timeout(300)
def test_a_rollback_that_lost_its_lease_exits_5_at_once_and_resume_finishes_every_host(
    sbx: Sandbox,
) -> None:
    """The lease taken over mid-rollback (as by a `resume` on another machine): the rollback
    stops at once with exit 5; `resume` then moves every host, not only the one in flight."""
    on_v2_from_v1(sbx)
    cfg = plain(sbx, lease_ttl="2s")
    rb = sbx.start("rollback", "-c", str(cfg))
    wait_for(lambda: holds_lease(sbx, rb.pid), "the rollback never took the lease", rb)
    wait_for(lambda: 0 != sbx.servers_state()["h1"], "the rollback never drained h1", rb)
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        db.execute("UPDATE leases SET holder='elsewhere:1', token=token+1 WHERE released=0")
    t0 = time.monotonic()
    out, err = rb.communicate(timeout=60)
    took = time.monotonic() - t0
    time.sleep(max(0.0, 2.5 - took))  # the other holder's lease_ttl passes without a heartbeat
    r = sbx.run("resume", "-c", str(cfg))
    assert 0 == r.returncode, r.stdout + r.stderr[-2000:]
    assert "rolled back" in r.stdout
    assert_whole(sbx, "v1")
    assert 5 == rb.returncode, out + err[-2000:]
    assert "superseded" in out
    assert took < 5


@pytest.mark.timeout(300)
def test_a_rollback_frozen_inside_a_journal_write_blocks_no_command_for_good(
    sbx: Sandbox,
) -> None:
    """A rollback stopped (SIGSTOP) inside a journal write, holding SQLite's write lock
    (IMMUNITY_FAULT_STOP_IN_WRITE: inside the transaction of its 2nd step's entry), past
    lease_ttl: `status` and `history` answer at once (exit 0, the lease named); `deploy` and
    `resume` exit 5 at once with the hint to stop that process, never exit 4 "database is
    locked"; once it is gone, `resume` finishes the rollback. (Before the fix, once in two
    runs of a randomly timed SIGSTOP, deploy waited 10 s and exited 4.)"""
    on_v2_from_v1(sbx)
    cfg = plain(sbx, lease_ttl="2s")
    rb = sbx.start(
        "rollback", "-c", str(cfg), env={"IMMUNITY_FAULT_STOP_IN_WRITE": "host.step_started:2"}
    )
    try:
        proc = psutil.Process(rb.pid)
        wait_for(lambda: proc.status() == psutil.STATUS_STOPPED, "the rollback never stopped", rb)
        assert holds_lease(sbx, rb.pid)
        time.sleep(2.5)  # past lease_ttl, without a heartbeat
        for args in (("status", "--json"), ("history",)):
            t0 = time.monotonic()
            r = sbx.run(args[0], "-c", str(cfg), *args[1:])
            assert 0 == r.returncode, r.stdout + r.stderr[-2000:]
            assert time.monotonic() - t0 < 10, f"{args[0]} waited for the stopped writer"
        st = json.loads(sbx.run("status", "-c", str(cfg), "--json").stdout)
        assert st["lease"]["holder"].endswith(f":{rb.pid}"), st["lease"]
        assert any(  # not "a run is in progress": stopped, and the way past it
            f"pid {rb.pid} on this machine, is stopped" in a and f"kill -CONT {rb.pid}" in a
            for a in st["attention"]
        ), st["attention"]
        for args in (("deploy", "--release", "v2"), ("resume",)):
            t0 = time.monotonic()
            r = sbx.run(args[0], "-c", str(cfg), *args[1:])
            assert 5 == r.returncode, r.stdout + r.stderr[-2000:]
            assert f"kill {rb.pid}" in r.stderr, r.stderr
            assert "database is locked" not in r.stderr
            assert time.monotonic() - t0 < 10, f"{args[0]} waited for the stopped writer"
    finally:  # never leave a stopped process (and what it holds) to the next tests
        rb.kill()
        rb.wait(30)
    r = sbx.run("resume", "-c", str(cfg))
    assert 0 == r.returncode, r.stdout + r.stderr[-2000:]
    assert_whole(sbx, "v1")


# SIGKILL during a rollback, then `resume`: tests/e2e/test_rollback_faults.py kills the
# rollback after a step of each host on this sandbox (IMMUNITY_FULL_SWEEP=1: all 21).
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_during_rollback_ends_it_and_resume_finishes_the_rollback(
    sbx: Sandbox, sig: signal.Signals, code: int
) -> None:
    """SIGINT/SIGTERM end a rollback with 130/143 once the host in flight is back; `resume`
    walks the hosts left and the journal agrees with the fleet."""
    on_v2_from_v1(sbx)
    cfg = plain(sbx)
    rb = sbx.start("rollback", "-c", str(cfg))
    wait_for(lambda: 0 != sbx.servers_state()["h1"], "the rollback never drained h1", rb)
    rb.send_signal(sig)
    out, err = rb.communicate(timeout=60)
    assert code == rb.returncode, out + err[-2000:]
    assert {"h1": 0, "h2": 0, "h3": 0} == sbx.servers_state()
    assert "v2" == sbx.releases_served()["h3"]  # never started
    r = sbx.run("resume", "-c", str(cfg))
    assert 0 == r.returncode, r.stdout + r.stderr[-2000:]
    assert_whole(sbx, "v1")


@pytest.mark.timeout(300)
def test_a_rollback_longer_than_the_lease_ttl_keeps_its_lease(sbx: Sandbox) -> None:
    """`resume` started while a live rollback runs past lease_ttl exits 5 saying to wait;
    the rollback finishes every host. (Last in this module: it leaves the fleet on SLOW.)"""
    ensure_on(sbx, SLOW)
    ensure_on(sbx, "v2")
    cfg = plain(sbx, lease_ttl="2s")
    rb = sbx.start("rollback", "-c", str(cfg))
    wait_for(lambda: holds_lease(sbx, rb.pid), "the rollback never took the lease", rb)
    time.sleep(3.0)  # well past lease_ttl
    assert rb.poll() is None, "the rollback ended too early for this test"
    r = sbx.run("resume", "-c", str(cfg))
    assert 5 == r.returncode, r.stdout + r.stderr[-2000:]
    assert "alive and heart-beating" in r.stderr and "wait for it" in r.stderr
    out, err = rb.communicate(timeout=120)
    assert 0 == rb.returncode, out + err[-2000:]
    assert_whole(sbx, SLOW)
