"""Refusals and output paths on the real sandbox (trial 4 findings 5, 7, 11, 13): a second
`rollback` never rolls the fleet forward; a dead orchestrator's deployment is unfinished
(exit 2, `resume`), a live one is held (exit 5, also for `--dry-run`); an output file that
cannot be written is refused before anything runs, and one that breaks afterwards costs one
line, not the deployment's exit code. Read back: each host's own release header, HAProxy's
`show servers state`, the journal file.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from e2e_helpers import FAST, Sandbox

pytestmark = pytest.mark.slow

ALL_V1 = {"h1": "v1", "h2": "v1", "h3": "v1"}
READY = {"h1": 0, "h2": 0, "h3": 0}


def quick(sbx: Sandbox, bake_min: str = "0s") -> Path:
    bake = {**FAST["bake"], "min": bake_min}
    return sbx.write_config(
        f"refusals-{bake_min}.yaml",
        **{**FAST, "checks": [], "waves": ["100%"], "max_unavailable": 2, "bake": bake},
    )


def runs(sbx: Sandbox) -> int:
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        return int(db.execute("SELECT count(*) FROM deployments").fetchone()[0])


def wait_for_lease(sbx: Sandbox, pid: int, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        with sqlite3.connect(sbx.dir / "journal.db") as db:
            rows = db.execute("SELECT holder FROM leases WHERE released=0").fetchall()
        if any(str(r[0]).endswith(f":{pid}") for r in rows):
            return
        assert time.monotonic() < deadline, "the deploy never took the lease"
        time.sleep(0.05)


@pytest.mark.timeout(600)
def test_a_second_rollback_and_unwritable_outputs_are_refused_touching_nothing(
    fleet3: Sandbox, tmp_path: Path
) -> None:
    """v2 deployed, rolled back to v1; a second `rollback` is refused (exit 2) naming v2 and
    the way forward, and the fleet stays on v1 in the pool (it rolled forward to v2 before).
    `deploy --json` into a path through a file, `report --html` there or into a missing
    directory: exit 2 at once, no run journaled, no directory created (a traceback, exit 1,
    after the whole deployment before)."""
    cfg = quick(fleet3)
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2")
    assert 0 == r.returncode, r.stderr[-2000:]
    r = fleet3.run("rollback", "-c", str(cfg))
    assert 0 == r.returncode, r.stderr[-2000:]
    first = r.stdout
    assert ALL_V1 == fleet3.releases_served()
    before = runs(fleet3)
    r = fleet3.run("rollback", "-c", str(cfg))
    assert 2 == r.returncode, (r.stdout, r.stderr[-2000:])
    assert "the fleet is already on v1, rolled back from v2 at " in r.stderr, r.stderr
    assert "would put h1, h2, h3 back on v2, unjudged" in r.stderr
    assert f"deploy v2 again to go forward: `immunity deploy -c {cfg} --release v2`" in r.stderr
    assert (ALL_V1, READY) == (fleet3.releases_served(), fleet3.servers_state())
    assert before == runs(fleet3) and "rolled back" in first

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = fleet3.run("deploy", "-c", str(cfg), "-r", "v2", "--json", str(blocker / "x.json"))
    assert 2 == r.returncode, (r.stdout, r.stderr[-2000:])
    assert f"--json {blocker}/x.json: {blocker} is a file, not a directory" in r.stderr
    assert "Traceback" not in r.stderr and before == runs(fleet3)
    assert (ALL_V1, READY) == (fleet3.releases_served(), fleet3.servers_state())
    missing = tmp_path / "no" / "such"
    for dest, said in (
        (blocker / "x.html", "is a file, not a directory"),
        (missing / "x.html", f"directory {missing} does not exist"),
        (Path("/proc/x.html"), "it cannot be written: No such file or directory"),
    ):
        r = fleet3.run("report", "-c", str(cfg), "--html", str(dest), "20")
        assert 2 == r.returncode, (dest, r.stdout, r.stderr[-2000:])
        assert said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.timeout(600)
def test_a_dead_orchestrators_run_is_unfinished_and_a_live_one_is_held(
    fleet3: Sandbox, tmp_path: Path
) -> None:
    """While a deploy runs, `deploy --dry-run` says its lease is held (exit 5), not that the
    run "ended without an outcome"; the deploy's --json directory replaced by a file
    meanwhile costs one line, exit 0 kept. Then a deploy SIGKILLed mid-walk: deploy, dry run
    and rollback say the deployment is unfinished (exit 2, `resume` with the real config),
    not exit 5 "being deployed by another orchestrator ... its process is gone"."""
    slow = quick(fleet3, "15s")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = fleet3.start(
        "deploy", "-c", str(slow), "-r", "v2", "--no-live", "--json", f"{out_dir}/r.json"
    )
    try:
        wait_for_lease(fleet3, p.pid)
        r = fleet3.run("deploy", "-c", str(slow), "-r", "v2", "--dry-run")
        assert 5 == r.returncode, (r.stdout, r.stderr[-2000:])
        assert "alive and heart-beating" in r.stderr and "unfinished" not in r.stderr, r.stderr
        shutil.rmtree(out_dir)
        out_dir.write_text("")  # the --json destination is gone by the end
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert 0 == p.returncode, err[-2000:]
    assert f"could not write the JSON result to {out_dir}/r.json" in err, err[-2000:]
    assert "Traceback" not in err and "deployed" in out
    assert {"h1": "v2", "h2": "v2", "h3": "v2"} == fleet3.releases_served()

    cfg = quick(fleet3)
    r = fleet3.run(
        "deploy", "-c", str(cfg), "-r", "v1", env={"IMMUNITY_FAULT_KILL_AT": "host.step_started:3"}
    )
    assert -9 == r.returncode, r.stderr[-2000:]
    for args in (("deploy", "-r", "v1"), ("deploy", "-r", "v1", "--dry-run"), ("rollback",)):
        r = fleet3.run(*args[:1], "-c", str(cfg), *args[1:])
        assert 2 == r.returncode, (args, r.stdout, r.stderr[-2000:])
        assert "is unfinished (its orchestrator ended without an outcome)" in r.stderr, r.stderr
        assert f"finish it with `immunity resume -c {cfg}`" in r.stderr
        assert "another orchestrator" not in r.stderr and "-c FILE" not in r.stderr
    r = fleet3.run("resume", "-c", str(cfg))
    assert 0 == r.returncode, r.stderr[-2000:]
    assert (ALL_V1, READY) == (fleet3.releases_served(), fleet3.servers_state())
