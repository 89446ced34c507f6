"""Several orchestrators on one PostgreSQL journal, each in its own working folder (nothing
shared but the database and the fleet itself), with its own machine name (IMMUNITY_MACHINE):
two apps at once, the same app refused with exit 5, a killed orchestrator resumed from
another machine after lease_ttl, a stale one that wakes changing nothing, and the kill-point
sweep (a subset of its points) against the PostgreSQL journal.

Assertions read the servers' own view: each host's process, HAProxy's admin state, and the
journal's rows as PostgreSQL holds them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from e2e_helpers import FAST, IMMUNITY, Load, Sandbox

from immunity.sandbox import fleet as sandbox
from servers.postgres import PgCluster

pytestmark = pytest.mark.slow

STEPS_PER_HOST = 7
PLAIN = {**FAST, "checks": [], "bake": {"min": "0s", "interval": "200ms"}, "lease_ttl": "4s"}


@pytest.fixture(scope="module")
def loaded(fleet3: Sandbox) -> Iterator[Sandbox]:
    load = Load(fleet3, 40, "pg-load.jsonl")
    try:
        yield fleet3
    finally:
        load.stop()


PATH_KEYS = {"socket", "root", "releases", "access_log"}


def _absolute(value: Any, base: Path) -> Any:
    """The config with the sandbox's paths (socket, hosts root, releases, log) absolute."""
    if isinstance(value, dict):
        return {
            k: str(base / v) if k in PATH_KEYS and isinstance(v, str) else _absolute(v, base)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    return value


class Machine:
    """One orchestrator's working folder and machine name; its config names only the fleet
    (absolute paths, as a remote fleet is named by addresses) and the shared database."""

    def __init__(self, sbx: Sandbox, root: Path, name: str, url: str, **overrides: Any) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        data = _absolute(yaml.safe_load(sbx.config.read_text()), sbx.dir)
        data.update(overrides)
        data["journal"] = {"url": url}
        self.config = self.dir / "immunity.yaml"
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        return {**os.environ, "IMMUNITY_MACHINE": self.name, **(extra or {})}

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*IMMUNITY, *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=self.dir,
            env=self._env(env),
        )

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*IMMUNITY, *args, "-c", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.dir,
            env=self._env(env),
        )


def _rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows as the server holds them (none before the first orchestrator made the schema)."""
    with psycopg.connect(url) as c:
        try:
            return [tuple(r) for r in c.execute(sql, args).fetchall()]
        except psycopg.errors.UndefinedTable:
            return []


def _wait_for(
    pred: Callable[[], bool], what: str, proc: subprocess.Popen[str], timeout: float = 60
) -> None:
    """Wait for `pred` while `proc` runs (its output in the failure if it ended)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"ended ({proc.returncode}) before {what}: {out}{err[-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _held(url: str) -> list[tuple[Any, ...]]:
    return _rows(url, "SELECT app, holder FROM leases WHERE NOT released")


def _current(sbx: Sandbox) -> str:
    served = set(sbx.releases_served().values())
    assert len(served) == 1, served
    return str(served.pop())


def _assert_whole(sbx: Sandbox, release: str, url: str) -> None:
    assert {"h1": release, "h2": release, "h3": release} == sbx.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == sbx.servers_state()
    assert _held(url) == []


@pytest.mark.timeout(300)
def test_the_same_app_is_refused_with_exit_5_naming_the_holder_machine_and_since(
    loaded: Sandbox, pg_url: str, tmp_path: Path
) -> None:
    """While runner-a holds the lease (held still with SIGSTOP, so that runner-b's start,
    however slow, meets it), runner-b's deploy of the same app exits 5 naming pid, machine
    and since; runner-a, let go, finishes untouched."""
    a = Machine(loaded, tmp_path, "runner-a", pg_url, **PLAIN)
    b = Machine(loaded, tmp_path, "runner-b", pg_url, **PLAIN)
    new = "v2" if _current(loaded) != "v2" else "v1"
    first = a.start("deploy", "--release", new, "--no-live")
    try:
        _wait_for(lambda: bool(_held(pg_url)), "runner-a's lease", first)
        os.kill(first.pid, signal.SIGSTOP)
        since = _rows(pg_url, "SELECT acquired_at FROM leases")[0][0]
        r = b.run("deploy", "--release", new)
        os.kill(first.pid, signal.SIGCONT)
        assert r.returncode == 5, r.stdout + r.stderr
        text = " ".join((r.stdout + r.stderr).split())
        assert f"pid {first.pid} on machine runner-a" in text, text
        assert since.strftime("%Y-%m-%d %H:%M:%S") in text, (since, text)
    finally:
        os.kill(first.pid, signal.SIGCONT)
        err = first.communicate(timeout=180)[1]
    assert first.returncode == 0, err[-2000:]
    _assert_whole(loaded, new, pg_url)
    holders = _rows(pg_url, "SELECT data->>'holder' FROM entries WHERE kind='deployment.started'")
    assert holders == [(f"runner-a:{first.pid}",)]


@pytest.mark.timeout(300)
def test_a_killed_orchestrator_is_resumed_from_another_machine_after_lease_ttl(
    loaded: Sandbox, pg_url: str, tmp_path: Path
) -> None:
    """runner-a is SIGKILLed mid-deployment; runner-b (other folder, no shared disk) is
    refused while the lease is young (if it gets there that soon), takes it over only once
    lease_ttl has passed since the last heartbeat (by the server's clock), finishes."""
    ttl = {**PLAIN, "lease_ttl": "24s"}  # well beyond a CLI's start on a loaded machine
    a = Machine(loaded, tmp_path, "runner-a", pg_url, **ttl)
    b = Machine(loaded, tmp_path, "runner-b", pg_url, **ttl)
    new = "v2" if _current(loaded) != "v2" else "v1"
    r = a.run("deploy", "--release", new, env={"IMMUNITY_FAULT_KILL_AT": "host.step_started:9"})
    assert r.returncode == -9, r.stderr[-1500:]
    last_beat = _rows(pg_url, "SELECT heartbeat_at FROM leases")[0][0]
    killed_at = time.monotonic()
    refusals = 0
    while True:
        r = b.run("resume")
        if r.returncode != 5:
            break
        refusals += 1
        assert "runner-a" in r.stdout + r.stderr and "heart-beating" in r.stdout + r.stderr
        assert time.monotonic() - killed_at < 120, r.stderr[-1500:]
        time.sleep(4)  # the next attempt a while later (each is a whole CLI start)
    assert r.returncode == 0, r.stdout + r.stderr[-1500:]
    # by the server's clock, the takeover came no sooner than lease_ttl after the last
    # heartbeat (on a loaded machine the first attempt may already be that late)
    taken = _rows(pg_url, "SELECT at FROM entries WHERE kind='deployment.resumed'")[0][0]
    assert (taken - last_beat).total_seconds() >= 24, (taken, last_beat, refusals)
    _assert_whole(loaded, new, pg_url)
    resumed = _rows(pg_url, "SELECT data->>'holder' FROM entries WHERE kind='deployment.resumed'")
    assert len(resumed) == 1 and resumed[0][0].startswith("runner-b:")
    assert _rows(pg_url, "SELECT outcome FROM deployments") == [("deployed",)]


@pytest.mark.timeout(300)
def test_a_stale_orchestrator_that_wakes_up_changes_nothing(
    loaded: Sandbox, pg_url: str, tmp_path: Path
) -> None:
    """runner-a is frozen (SIGSTOP) while baking; runner-b takes over after lease_ttl and
    finishes; runner-a woken (SIGCONT) is refused at its next write: it exits 5, and neither
    the fleet nor the journal changes."""
    guard = [{"name": "error-rate-guard", "signal": "lb", "kind": "error_rate_max", "max": "2%"}]
    a = Machine(  # a bake that lasts: checks that need 30 s of traffic
        loaded,
        tmp_path,
        "runner-a",
        pg_url,
        **{**PLAIN, "checks": guard, "bake": {"min": "30s", "max": "60s", "interval": "500ms"}},
    )
    b = Machine(loaded, tmp_path, "runner-b", pg_url, **PLAIN)
    new = "v2" if _current(loaded) != "v2" else "v1"
    stale = a.start("deploy", "--release", new, "--no-live")
    try:
        _wait_for(
            lambda: bool(_rows(pg_url, "SELECT 1 FROM entries WHERE kind='bake.started'")),
            "runner-a baking",
            stale,
            timeout=90,
        )
        os.kill(stale.pid, signal.SIGSTOP)
        time.sleep(5)  # > lease_ttl
        r = b.run("resume")
        assert r.returncode == 0, r.stdout + r.stderr[-1500:]
        after_resume = (
            loaded.releases_served(),
            loaded.servers_state(),
            _rows(pg_url, "SELECT seq, kind FROM entries ORDER BY seq"),
            _rows(pg_url, "SELECT id, outcome, reason, finished_at FROM deployments"),
        )
        os.kill(stale.pid, signal.SIGCONT)
        out, err = stale.communicate(timeout=60)
    finally:
        if stale.poll() is None:
            os.kill(stale.pid, signal.SIGCONT)
            stale.kill()
            stale.wait(10)
    assert stale.returncode == 5, out + err[-1500:]
    assert "superseded" in out + err or "stale" in out + err, out + err[-1500:]
    assert after_resume == (
        loaded.releases_served(),
        loaded.servers_state(),
        _rows(pg_url, "SELECT seq, kind FROM entries ORDER BY seq"),
        _rows(pg_url, "SELECT id, outcome, reason, finished_at FROM deployments"),
    )
    _assert_whole(loaded, new, pg_url)


@pytest.mark.timeout(300)
def test_two_apps_deploy_at_the_same_time_on_one_database(
    loaded: Sandbox, pg_url: str, tmp_path: Path
) -> None:
    """Two orchestrators on two machines deploy two apps' fleets at once; both succeed and
    their deployments overlap in time in the shared journal."""
    other = Path(tempfile.mkdtemp(prefix="pg-fleet2-"))  # short: HAProxy's unix socket
    info = sandbox.create_sandbox(other, 2, app="blog")
    try:
        sandbox.add_release(other, "v2", cold_start_s=0.5)
        blog = Sandbox(other, info.url, info.config_path)  # no checks: no customers needed
        a = Machine(loaded, tmp_path, "runner-a", pg_url, **{**PLAIN, "bake": {"min": "2s"}})
        b = Machine(blog, tmp_path, "runner-b", pg_url, **{**PLAIN, "bake": {"min": "2s"}})
        new = "v2" if _current(loaded) != "v2" else "v1"
        pa = a.start("deploy", "--release", new, "--no-live")
        pb = b.start("deploy", "--release", "v2", "--no-live")
        ea, eb = pa.communicate(timeout=200)[1], pb.communicate(timeout=200)[1]
        assert (pa.returncode, pb.returncode) == (0, 0), ea[-1500:] + eb[-1500:]
        rows = _rows(pg_url, "SELECT app, outcome, started_at, finished_at FROM deployments")
        assert sorted((r[0], r[1]) for r in rows) == [("blog", "deployed"), ("sandbox", "deployed")]
        (_, _, s1, f1), (_, _, s2, f2) = rows
        assert s1 < f2 and s2 < f1, rows  # at the same time
        assert {"h1": "v2", "h2": "v2"} == blog.releases_served()
        _assert_whole(loaded, new, pg_url)
    finally:
        sandbox.teardown(other)
        shutil.rmtree(other, ignore_errors=True)


@pytest.mark.timeout(600)
def test_sigkill_at_step_boundaries_then_resume_finishes_it_on_postgres(
    loaded: Sandbox, pg_url: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """The kill-point sweep against the PostgreSQL journal, at 2 of the 21 step starts of a
    deploy (the first and the last) and 1 of a revert; `resume` completes each. A kill in
    wave 2 (h2's stop, point 9) resumed from another machine is
    test_a_killed_orchestrator_is_resumed_from_another_machine_after_lease_ttl. (The sweeps in
    test_deploy_kill_sweep.py and test_revert_kill_sweep.py kill after each step kind on the
    SQLite journal, test_virtual_engine at every point in virtual time; this subset keeps the
    suite's time in check while every journal write path is crossed on PostgreSQL.)"""
    m = Machine(loaded, tmp_path, "runner-a", pg_url, **PLAIN)
    covered = 0
    release = _current(loaded)
    for k in (1, 21):  # h1 drain (wave 1), h3 enable (wave 2, the deployment's last step)
        new = "v2" if release != "v2" else "v1"
        r = m.run(
            "deploy", "--release", new, env={"IMMUNITY_FAULT_KILL_AT": f"host.step_started:{k}"}
        )
        assert r.returncode == -9, (k, r.stdout, r.stderr[-1500:])
        r = m.run("resume")
        assert r.returncode == 0, (k, r.stdout, r.stderr[-1500:])
        _assert_whole(loaded, new, pg_url)
        release = new
        covered += 1
    judged = Machine(loaded, tmp_path, "runner-j", pg_url, **{**FAST, "lease_ttl": "4s"})
    for k in (STEPS_PER_HOST + 3,):  # the revert's install
        r = judged.run(
            "deploy", "--release", "bad", env={"IMMUNITY_FAULT_KILL_AT": f"host.step_started:{k}"}
        )
        assert r.returncode == -9, (k, r.stdout, r.stderr[-1500:])
        r = judged.run("resume")
        assert r.returncode == 3, (k, r.stdout, r.stderr[-1500:])
        _assert_whole(loaded, release, pg_url)
        covered += 1
    record_property("kill points covered (postgres journal)", covered)
    assert covered == 3


def _stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP: state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


@pytest.mark.timeout(300)
def test_the_journal_lost_mid_switch_puts_the_host_back_serving_and_resume_finishes(
    loaded: Sandbox, pg_cluster: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL stops in the middle of h1's switch (the orchestrator held inside the
    write of h1's `start` step: drained, stopped, the new release installed), and stays
    away past the journal's timeout_s. The run exits 4, and after it HAProxy has every
    host in the pool and every host's own process serves the release it served before,
    h1 included (the old code left h1 stopped and out of the pool); the output names h1 as
    put back unjournaled. With the server back, `resume` journals what it found
    (`put_back`) and finishes the deployment."""
    m = Machine(loaded, tmp_path, "runner-a", pg_url, **PLAIN)
    old = _current(loaded)
    new = "v2" if old != "v2" else "v1"
    proc = m.start(
        "deploy",
        "--release",
        new,
        "--no-live",
        env={"IMMUNITY_FAULT_STOP_IN_WRITE": "host.step_started:4"},
    )
    try:
        _wait_for(lambda: _stopped(proc.pid), "the write of h1's start step", proc)
        # mid-switch: h1 runs nothing and is out of the pool
        assert loaded.releases_served()["h1"] is None
        assert loaded.servers_state()["h1"] != 0
        pg_cluster.halt()
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        pg_cluster.resume()
    text = " ".join((out + err).split())
    assert proc.returncode == 4, text[-2000:]
    # HAProxy's own view and each host's own process: the fleet serves one release, nobody
    # out of the pool (the old code: h1 ran nothing, HAProxy had it in maintenance)
    assert {"h1": old, "h2": old, "h3": old} == loaded.releases_served(), text[-2000:]
    assert {"h1": 0, "h2": 0, "h3": 0} == loaded.servers_state(), text[-2000:]
    assert f"h1 put back serving {old} and in the pool, unjournaled" in text, text[-2000:]
    r = m.run("resume")
    assert r.returncode == 0, r.stdout + r.stderr[-1500:]
    _assert_whole(loaded, new, pg_url)
    found = _rows(pg_url, "SELECT data->'put_back' FROM entries WHERE kind='deployment.resumed'")
    assert found == [({"h1": old},)], found
