"""Fault injection: the orchestrator killed and resumed or aborted, outside systems failing.

After every fault the fleet must serve one release with every host in the pool, `status`
must agree with the journal, and no lease may be left held. The kill-point sweeps are in
test_deploy_kill_sweep.py and test_revert_kill_sweep.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from e2e_helpers import FAST, Sandbox
from fault_helpers import STEPS_PER_HOST, assert_whole, current, plain, under_load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(fleet3: Sandbox) -> Iterator[Sandbox]:
    yield from under_load(fleet3)


def test_resume_abort_reverts_an_interrupted_deployment(loaded: Sandbox) -> None:
    """`resume --abort` after a kill puts every host back on the old release (exit 0: the
    outcome `aborted`, what was asked, not a release rejected)."""
    cfg = plain(loaded)
    old = current(loaded, cfg)
    new = "v2" if old != "v2" else "v1"
    r = loaded.run(
        "deploy",
        "-c",
        str(cfg),
        "--release",
        new,
        env={"IMMUNITY_FAULT_KILL_AT": f"host.step_started:{STEPS_PER_HOST + 3}"},
    )
    assert r.returncode == -9
    r = loaded.run("resume", "-c", str(cfg), "--abort")
    assert r.returncode == 0, r.stdout + r.stderr[-1500:]
    assert_whole(loaded, cfg, old)


# A signal that answers preflight (it runs the command once) and fails at every look after:
# a metrics backend that goes away mid-deployment. Runs in the config file's folder.
BREAKS_AFTER_PREFLIGHT = [
    "sh",
    "-c",
    'm="broken-signal.$PPID"; [ -e "$m" ] && exit 1; touch "$m"; '
    'echo \'{"requests": 0, "errors": 0}\'',
]


def test_a_signal_that_cannot_run_is_refused_at_preflight(loaded: Sandbox) -> None:
    """A command signal that fails when preflight runs it: exit 2, nothing touched."""
    broken = {
        "signals": [{"kind": "command", "name": "broken", "command": ["false"]}],
        "checks": [{"name": "errors", "signal": "broken", "kind": "errors"}],
    }
    cfg = loaded.write_config("faults-false.yaml", **{**FAST, **broken})
    old = current(loaded, cfg)
    new = "v2" if old != "v2" else "v1"
    r = loaded.run("deploy", "-c", str(cfg), "--release", new)
    assert r.returncode == 2, r.stdout + r.stderr[-1500:]
    assert "exited with status 1" in r.stdout + r.stderr
    assert_whole(loaded, cfg, old)


def test_an_access_log_in_another_format_is_refused_at_preflight(loaded: Sandbox) -> None:
    """The sandbox's JSON log read as `option httplog`: exit 2 naming the file, the line and
    the fields expected; nothing touched."""
    signals = yaml.safe_load(loaded.config.read_text())["signals"]
    signals[0]["log_format"] = "httplog"
    cfg = loaded.write_config("faults-format.yaml", **{**FAST, "signals": signals})
    old = current(loaded, cfg)
    new = "v2" if old != "v2" else "v1"
    r = loaded.run("deploy", "-c", str(cfg), "--release", new)
    said = r.stdout + r.stderr
    assert r.returncode == 2, said[-1500:]
    assert "haproxy/access.log:" in said and "does not parse" in said, said[-1500:]
    assert "TR/Tw/Tc/Tr/Ta" in said  # the fields expected
    assert_whole(loaded, cfg, old)


def test_a_signal_source_that_errors_is_inconclusive_and_the_fleet_is_reverted(
    loaded: Sandbox,
) -> None:
    """A failing command signal never passes: after the consecutive-error limit the fleet is
    reverted for lack of evidence (exit 7, not a release found worse)."""
    broken = {
        "signals": [{"kind": "command", "name": "broken", "command": BREAKS_AFTER_PREFLIGHT}],
        "checks": [{"name": "errors", "signal": "broken", "kind": "errors"}],
        "judge": {"inconclusive_limit": "2s"},
    }
    cfg = loaded.write_config("faults-broken.yaml", **{**FAST, **broken})
    old = current(loaded, cfg)
    new = "v2" if old != "v2" else "v1"
    r = loaded.run("deploy", "-c", str(cfg), "--release", new, "--json", "-")
    assert r.returncode == 7, r.stdout + r.stderr[-1500:]
    result = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    assert "inconclusive" in result["reason"]
    assert result["outcome"] == "inconclusive"
    assert result["verdict"]["outcome"] == "error", result["reason"]  # failed, not thin traffic
    assert "signal broken failed" in result["reason"]
    assert_whole(loaded, cfg, old)


def test_the_hold_policy_pauses_with_the_fleet_serving(loaded: Sandbox) -> None:
    """With on_inconclusive: hold the deployment stops with exit 6 and every host in the pool."""
    broken = {
        "signals": [{"kind": "command", "name": "broken", "command": BREAKS_AFTER_PREFLIGHT}],
        "checks": [{"name": "errors", "signal": "broken", "kind": "errors"}],
        "judge": {"inconclusive_limit": "1s", "on_inconclusive": "hold"},
    }
    cfg = loaded.write_config("faults-hold.yaml", **{**FAST, **broken})
    old = current(loaded, cfg)
    new = "v2" if old != "v2" else "v1"
    r = loaded.run("deploy", "-c", str(cfg), "--release", new)
    assert r.returncode == 6, r.stdout + r.stderr[-1500:]
    st = loaded.status(cfg)
    assert [h["lb_state"] for h in st["hosts"]] == ["serving"] * 3
    assert st["lease"] is None
    r = loaded.run("rollback", "-c", str(plain(loaded)))
    assert r.returncode == 0, r.stdout + r.stderr[-1500:]


def test_the_runtime_socket_gone_for_seconds_mid_deploy_is_survived(loaded: Sandbox) -> None:
    """HAProxy's runtime socket made unreachable for 2 s mid-deploy: the fleet ends whole."""
    cfg = plain(loaded)
    old = current(loaded, cfg)
    new = "v2" if old != "v2" else "v1"
    sock = loaded.dir / "haproxy" / "admin.sock"
    hidden = sock.with_name("admin.sock.hidden")
    p = loaded.start("deploy", "-c", str(cfg), "--release", new)
    deadline = time.monotonic() + 30
    while {0} == set(loaded.servers_state().values()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.rename(sock, hidden)
    time.sleep(2.0)
    os.rename(hidden, sock)
    out, err = p.communicate(timeout=240)
    assert p.returncode in (0, 3), out + err[-1500:]
    assert_whole(loaded, cfg, new if p.returncode == 0 else old)


def test_a_drain_that_never_finishes_puts_the_host_back_and_reverts(loaded: Sandbox) -> None:
    """Slow requests keep h1 busy past timeouts.drain: h1 goes back in the pool, exit 3, none killed."""
    cfg = loaded.write_config(
        "faults-drain.yaml", **{**FAST, "checks": [], "timeouts": {"drain": "1s"}}
    )
    old = current(loaded, cfg)
    new = "v2" if old != "v2" else "v1"
    codes: list[int] = []

    def slow() -> None:
        r = httpx.get(f"{loaded.url}/slow?ms=8000", timeout=30)
        codes.append(r.status_code)

    threads = [threading.Thread(target=slow) for _ in range(9)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # every server now has slow requests in flight
    r = loaded.run("deploy", "-c", str(cfg), "--release", new, "--json", "-")
    for t in threads:
        t.join(30)
    assert 3 == r.returncode, r.stdout + r.stderr[-1500:]
    result = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    assert "drain did not finish" in result["reason"]
    assert [200] * 9 == codes  # draining never cut a customer's request
    assert_whole(loaded, cfg, old)


def test_a_journal_that_cannot_be_written_stops_the_deployment_with_exit_4(loaded: Sandbox) -> None:
    """The journal refuses the very write that records h1's completed switch (a real SQLite
    trigger aborts its `host.switched` insert): immunity changes nothing more and exits 4.
    h1 finished its walk (serving the new release in the pool), so it is left there, not put
    back on the old release (the old code did: `_restore` undid a completed switch)."""
    db_path = loaded.dir / "journal-broken.db"
    cfg = loaded.write_config(
        "faults-journal.yaml",
        **{**FAST, "checks": [], "bake": {"min": "6s"}, "journal": {"path": str(db_path)}},
    )
    old = current(loaded, cfg)
    new = "v2" if old != "v2" else "v1"
    p = loaded.start("deploy", "-c", str(cfg), "--release", new)
    deadline = time.monotonic() + 60
    while True:  # the run's first entries are in: arm the fault before h1's switch ends
        assert time.monotonic() < deadline, "the deployment never journaled"
        if not db_path.exists():  # the run creates it; an empty file of ours would not do
            time.sleep(0.01)
            continue
        with contextlib.suppress(sqlite3.Error), sqlite3.connect(db_path, timeout=10) as db:
            if db.execute("SELECT count(*) FROM entries").fetchone()[0]:
                assert not db.execute(
                    "SELECT count(*) FROM entries WHERE kind = 'host.switched'"
                ).fetchone()[0], "h1 switched before the fault was armed"
                db.execute(
                    "CREATE TRIGGER refuse_switched BEFORE INSERT ON entries "
                    "WHEN NEW.kind = 'host.switched' AND NEW.host = 'h1' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
                break
        time.sleep(0.01)
    out, err = p.communicate(timeout=120)
    assert 4 == p.returncode, out + err[-1500:]
    assert "journal" in err
    assert f"h1 switched to {new} and serves it in the pool" in err, err[-2000:]
    assert "put back" not in err, err[-2000:]
    # nothing more was changed: h1 on the new release, the others untouched, all serving
    # (each host's own release; HAProxy's `show servers state`: admin state 0, ready)
    assert {"h1": new, "h2": old, "h3": old} == loaded.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == loaded.servers_state()
    r = loaded.run("deploy", "-c", str(plain(loaded)), "--release", old)
    assert 0 == r.returncode, r.stdout + r.stderr[-1500:]


def _stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP: state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


@pytest.fixture
def small_disk(loaded: Sandbox) -> Iterator[Path]:
    """A 4 MiB file system of its own (tmpfs) for a journal to fill up; skipped where this
    process may not mount one (not root, no CAP_SYS_ADMIN)."""
    where = loaded.dir / "small-disk"
    where.mkdir(exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_sqlite_journal_whose_disk_fills_mid_switch_leaves_the_host_serving(
    loaded: Sandbox, small_disk: Path
) -> None:
    """The SQLite journal's disk fills in the middle of h1's switch (the orchestrator held
    inside the write of h1's `start` step: drained, stopped, the new release installed; the
    disk filled; let go, its commit fails with SQLite's "database or disk is full"). The run
    exits 4, and after it HAProxy has every host in the pool and every host's own process
    serves the release it served before, h1 included (the old code left h1 stopped and out
    of the pool); the output names h1. With room again, `resume` finishes the deployment."""
    db = small_disk / "journal.db"
    cfg = loaded.write_config(
        "faults-full-disk.yaml", **{**FAST, "checks": [], "journal": {"path": str(db)}}
    )
    old = current(loaded, cfg)
    new = "v2" if old != "v2" else "v1"
    p = loaded.start(
        "deploy",
        "-c",
        str(cfg),
        "--release",
        new,
        env={"IMMUNITY_FAULT_STOP_IN_WRITE": "host.step_started:4"},
    )
    filler = small_disk / "filler"
    try:
        deadline = time.monotonic() + 90
        while not _stopped(p.pid):
            assert p.poll() is None, p.communicate()[1][-1500:]
            assert time.monotonic() < deadline, "never reached the write of h1's start"
            time.sleep(0.1)
        assert loaded.releases_served()["h1"] is None  # mid-switch: h1 stopped, out
        assert loaded.servers_state()["h1"] != 0
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk to its last byte
        try:
            for size in (65536, 1):
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * size):
                        pass
        finally:
            os.close(fd)
        os.kill(p.pid, signal.SIGCONT)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait(10)
    text = " ".join((out + err).split())
    assert 4 == p.returncode, text[-2000:]
    assert {"h1": old, "h2": old, "h3": old} == loaded.releases_served(), text[-2000:]
    assert {"h1": 0, "h2": 0, "h3": 0} == loaded.servers_state(), text[-2000:]
    assert f"h1 put back serving {old} and in the pool, unjournaled" in text, text[-2000:]
    filler.unlink()
    # `status` shows the fleet as it is (h1 serving the old release, in the pool) beside the
    # journal (h1 mid-walk), and says `resume` finishes the run
    st = loaded.status(cfg)
    h1 = next(h for h in st["hosts"] if h["name"] == "h1")
    assert (h1["active_release"], h1["lb_state"]) == (old, "serving"), st
    assert st["lease"]["holder_alive"] is False, st
    assert any(
        a.startswith(f"h1 serves {old} in the pool though the journal") for a in st["attention"]
    ), st
    assert any("is unfinished: `immunity resume" in a for a in st["attention"]), st
    r = loaded.run("resume", "-c", str(cfg))
    assert 0 == r.returncode, r.stdout + r.stderr[-1500:]
    assert_whole(loaded, cfg, new)
    with sqlite3.connect(db) as c:
        rows = c.execute(
            "SELECT json_extract(data, '$.put_back') FROM entries WHERE kind='deployment.resumed'"
        ).fetchall()
    assert [(json.dumps({"h1": old}, separators=(",", ":")),)] == rows, rows
