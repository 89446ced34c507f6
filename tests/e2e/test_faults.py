"""Fault injection: the orchestrator killed at every step boundary, outside systems failing.

After every fault the fleet must serve one release with every host in the pool, `status`
must agree with the journal, and no lease may be left held.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from e2e_helpers import FAST, Load, Sandbox

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def loaded(fleet3: Sandbox) -> Iterator[Sandbox]:
    """The fleet under steady customer load for the whole module (judges need traffic)."""
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


@pytest.mark.timeout(900)
def test_sigkill_at_every_step_of_a_deployment_then_resume_finishes_it(
    loaded: Sandbox, record_property: Callable[[str, object], None]
) -> None:
    """Killed right after a step start of a 3-host deploy (each step kind once; all 21 with
    IMMUNITY_FULL_SWEEP=1), `resume` completes it."""
    cfg = loaded.write_config(
        "faults-sweep.yaml", **{**FAST, "checks": [], "bake": {"min": "0s", "interval": "200ms"}}
    )
    covered = 0
    release = current(loaded, cfg)
    for k in DEPLOY_KILL_POINTS:
        new = "v2" if release != "v2" else "v1"
        r = loaded.run(
            "deploy",
            "-c",
            str(cfg),
            "--release",
            new,
            env={"IMMUNITY_FAULT_KILL_AT": f"host.step_started:{k}"},
        )
        assert r.returncode == -9, (k, r.stdout, r.stderr[-1500:])
        r = loaded.run("resume", "-c", str(cfg))
        assert r.returncode == 0, (k, r.stdout, r.stderr[-1500:])
        # the servers' own view: each host's process, HAProxy's admin state, the lease row
        assert {"h1": new, "h2": new, "h3": new} == loaded.releases_served(), k
        assert {"h1": 0, "h2": 0, "h3": 0} == loaded.servers_state(), k
        assert not loaded.lease_held(), k
        release = new
        covered += 1
    assert_whole(loaded, cfg, release)  # and `status` agrees with the journal
    record_property("kill points covered (deployment)", covered)
    assert covered == len(DEPLOY_KILL_POINTS)
    assert {(k - 1) % STEPS_PER_HOST for k in DEPLOY_KILL_POINTS} == set(range(STEPS_PER_HOST))


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
    """The journal's table vanishes mid-bake: immunity changes nothing more and exits 4."""
    cfg = loaded.write_config(
        "faults-journal.yaml",
        **{**FAST, "checks": [], "bake": {"min": "6s"}, "journal": {"path": "journal-broken.db"}},
    )
    old = current(loaded, cfg)
    new = "v2" if old != "v2" else "v1"
    p = loaded.start("deploy", "-c", str(cfg), "--release", new)
    deadline = time.monotonic() + 60
    while loaded.releases_served()["h1"] != new or loaded.servers_state()["h1"] != 0:
        assert time.monotonic() < deadline, "h1 never served the new release"
        time.sleep(0.05)
    with sqlite3.connect(loaded.dir / "journal-broken.db") as db:
        db.execute("DROP TABLE entries")
    out, err = p.communicate(timeout=120)
    assert 4 == p.returncode, out + err[-1500:]
    assert "journal" in err
    # nothing more was changed: h1 on the new release, the others untouched, all serving
    assert {"h1": new, "h2": old, "h3": old} == loaded.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == loaded.servers_state()
    r = loaded.run("deploy", "-c", str(plain(loaded)), "--release", old)
    assert 0 == r.returncode, r.stdout + r.stderr[-1500:]
