"""The analysis on a real sandbox: every look journaled, and a resumed bake continues it."""

from __future__ import annotations

import http.server
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from e2e_helpers import FAST, Load, Sandbox

from immunity.sandbox import fleet as sandbox

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(fleet3: Sandbox) -> Iterator[Sandbox]:
    """The fleet under steady customer load for the whole module (judges need traffic)."""
    load = Load(fleet3, 80, "analysis-load.jsonl")
    try:
        yield fleet3
    finally:
        load.stop()


def entries(sbx: Sandbox, deployment: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(kind, data) of the last (or the given) deployment, read straight from the journal."""
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        if deployment is None:
            deployment = db.execute(
                "SELECT id FROM deployments ORDER BY started_at DESC LIMIT 1"
            ).fetchone()[0]
        rows = db.execute(
            "SELECT kind, data FROM entries WHERE deployment_id = ? ORDER BY seq", (deployment,)
        ).fetchall()
    return [(k, json.loads(d)) for k, d in rows]


def guard_starts(sbx: Sandbox) -> int:
    """How many `guard.started` entries the journal holds, over every deployment."""
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        return int(
            db.execute("SELECT count(*) FROM entries WHERE kind = 'guard.started'").fetchone()[0]
        )


def test_a_release_judged_on_no_traffic_is_inconclusive_not_rejected(fleet3: Sandbox) -> None:
    """With no customer traffic at all, the deployment ends for lack of evidence: exit 7 and
    outcome `inconclusive` in the JSON, a `deployment.inconclusive` webhook worded as "not
    judged", and `history` files it apart from releases found worse (no change failure).
    Runs first in this module: the load of the other tests has not started yet."""
    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"event": self.headers["X-Immunity-Event"], **json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    assert not (fleet3.dir / "analysis-load.jsonl").exists(), "needs a fleet without load"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    checks = [c for c in FAST["checks"] if c["kind"] != "latency"]  # type: ignore[union-attr]
    try:
        cfg = fleet3.write_config(
            "analysis-quiet.yaml",
            **{
                **FAST,
                "checks": checks,
                "bake": {**FAST["bake"], "max": "6s"},  # type: ignore[dict-item]
                "notify": [{"kind": "webhook", "url": f"http://127.0.0.1:{server.server_port}/"}],
                "probe": None,  # no probe traffic either: nothing to judge
            },
        )
        before = fleet3.status(cfg)["hosts"]
        old = before[0]["active_release"]
        new = "v2" if old != "v2" else "v1"
        r = fleet3.run("deploy", "-c", str(cfg), "--release", new, "--json", "quiet.json")
    finally:
        server.shutdown()
    assert r.returncode == 7, r.stdout + r.stderr[-1500:]
    result = json.loads((fleet3.dir / "quiet.json").read_text())
    assert result["outcome"] == "inconclusive"
    assert result["exit_code"] == 7
    assert result["verdict"]["outcome"] == "inconclusive"
    assert result["reason"].startswith(f"inconclusive: not enough evidence to judge {new}")
    # said as it is, not "the canary served no requests" nor "bake longer"
    assert "saw no traffic on either cohort" in result["reason"], result["reason"]
    # the next step names the lack of traffic and the probe that would bring some
    step = " ".join(r.stdout[r.stdout.index("next: ") :].split())  # as wrapped to 80 columns
    assert "no traffic to judge" in step and "add a `probe` block" in step, step
    assert [h["active_release"] for h in fleet3.status(cfg)["hosts"]] == [old] * 3
    # the notification, as the receiver got it
    assert [m["event"] for m in received] == ["deployment.inconclusive"]
    assert received[0]["kind"] == "deployment.inconclusive"
    assert received[0]["data"]["outcome"] == "inconclusive"
    assert "not enough evidence" in received[0]["message"]
    # history: its own category, not a change failure
    history = json.loads(fleet3.run("history", "-c", str(cfg), "--json").stdout)
    last = history["deployments"][-1]
    assert (last["outcome"], last["category"]) == ("inconclusive", "inconclusive")
    figures = history["figures"]
    worse = [d for d in history["deployments"] if d["category"] == "worse"]
    assert figures["found_worse"] == len(worse) == 0
    assert figures["not_judged"] >= 1
    # the rate is over the releases judged (deployed or found worse): none worse here
    assert figures["change_failure_rate"] == (0 if figures["judged"] else None)
    shown = fleet3.run("history", "-c", str(cfg))
    assert "1 not judged for lack of evidence" in shown.stdout


def test_a_bake_killed_mid_way_is_resumed_from_its_journaled_evidence(loaded: Sandbox) -> None:
    """SIGKILLed after the 3rd look of wave 1, `resume` replays those looks and goes on: look
    numbers and bake time continue, and the verdict counts the requests seen before the kill."""
    checks = [c for c in FAST["checks"] if c["kind"] != "latency"]  # type: ignore[union-attr]
    cfg = loaded.write_config(
        "analysis-resume.yaml", **{**FAST, "checks": checks, "bake": {**FAST["bake"], "min": "4s"}}
    )
    status = loaded.status(cfg)
    new = "v2" if status["hosts"][0]["active_release"] != "v2" else "v1"
    r = loaded.run(
        "deploy", "-c", str(cfg), "--release", new, env={"IMMUNITY_FAULT_KILL_AT": "bake.looked:3"}
    )
    assert r.returncode == -9, r.stdout + r.stderr[-1500:]
    before = [d for k, d in entries(loaded) if k == "bake.looked"]
    assert [d["look"] for d in before] == [1, 2, 3]
    r = loaded.run("resume", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr[-1500:]
    journal = entries(loaded)
    resumed = [d for k, d in journal if k == "bake.resumed"]
    assert resumed == [{"wave": 1, "bake": 1, "looks": 3, "t_s": before[-1]["t_s"]}]
    wave1 = [d for k, d in journal if k == "bake.looked" and d["bake"] == 1]
    assert [d["look"] for d in wave1] == list(range(1, len(wave1) + 1))
    times = [d["t_s"] for d in wave1]
    assert times == sorted(times) and len(set(times)) == len(times)
    # the errors check's verdict counts every canary request journaled up to its pass,
    # those seen before the kill included
    passed_at = next(i for i, d in enumerate(wave1) if d["checks"]["errors"]["o"] == "pass")
    counted = sum(d["obs"]["lb"]["canary"].get("n", 0) for d in wave1[: passed_at + 1])
    before_kill = sum(d["obs"]["lb"]["canary"].get("n", 0) for d in before)
    assert before_kill > 0
    verdict = next(d["verdict"] for k, d in journal if k == "verdict.reached" and d["wave"] == 1)
    errors = next(c for c in verdict["checks"] if c["name"] == "errors")
    assert errors["numbers"]["canary_requests"] == counted
    assert [k for k, _ in journal].count("bake.started") == 2  # wave 1 once, wave 2


def test_a_fault_that_starts_during_the_guard_reverts_the_whole_fleet(loaded: Sandbox) -> None:
    """A release whose errors start once the guard has started (the test creates the fault's
    file when the journal says `guard.started`) passes both waves, then fails in the guard
    period against the holdback (h3, still on the old release): exit 3, every host back on
    the old release and in the pool, and the holdback never switched. The config has no
    `guard` block: this is the watch a user gets by default (half of `bake.max`, 30 s here)."""
    fault = loaded.dir / "late-fault"
    sandbox.add_release(loaded.dir, "late", error_rate=0.5, errors_from_file=fault)
    checks = [c for c in FAST["checks"] if c["kind"] != "latency"]  # type: ignore[union-attr]
    cfg = loaded.write_config(
        "analysis-guard.yaml",
        **{**FAST, "checks": checks, "guard": None},
    )
    assert "guard" not in yaml.safe_load(cfg.read_text())
    old = loaded.status(cfg)["hosts"][0]["active_release"]
    guards_before = guard_starts(loaded)
    p = loaded.start("deploy", "-c", str(cfg), "--release", "late", "--json", "late.json")
    try:
        deadline = time.monotonic() + 240
        while guard_starts(loaded) == guards_before:
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the guard never started"
            time.sleep(0.1)
        fault.touch()
        out, err = p.communicate(timeout=240)
    finally:
        p.kill()
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    assert r.returncode == 3, r.stdout + r.stderr[-2000:]
    result = json.loads((loaded.dir / "late.json").read_text())
    assert result["outcome"] == "reverted"
    assert result["reason"].startswith("guard: ")
    assert result["waves"] == [["h1"], ["h2"], ["h3"]]  # h3 is the holdback, switched last
    journal = entries(loaded, result["deployment_id"])
    kinds = [k for k, _ in journal]
    # both waves passed before the fault began; the guard caught it against the holdback
    assert [d["wave"] for k, d in journal if k == "wave.passed"] == [1, 2]
    guard = next(d for k, d in journal if k == "guard.started")
    assert (guard["wave"], guard["holdback"], guard["duration_s"]) == (3, "h3", 30)
    started = [d for k, d in journal if k == "bake.started"]
    assert [(d["purpose"], d["relative"]) for d in started] == [
        ("wave", True),
        ("wave", True),  # the last wave compares with the holdback
        ("guard", True),
    ]
    assert {d["bakes"] for d in started} == {3}  # alpha spent over 2 waves and the guard
    failed = next(d for k, d in journal if k == "verdict.failed")
    assert failed["guard"] is True and failed["verdict"]["outcome"] == "fail"
    assert (
        kinds.index("guard.started") < kinds.index("verdict.failed") < kinds.index("immune.started")
    )
    with sqlite3.connect(loaded.dir / "journal.db") as db:
        touched = db.execute(
            "SELECT count(*) FROM entries WHERE deployment_id = ? AND host = 'h3'",
            (result["deployment_id"],),
        ).fetchone()[0]
    assert touched == 0  # the holdback was never drained nor switched
    # the fleet's own view
    assert {"h1": old, "h2": old, "h3": old} == loaded.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == loaded.servers_state()


def test_a_guard_interrupted_is_resumed_and_the_holdback_is_switched_last(loaded: Sandbox) -> None:
    """Killed as the guard starts, `resume` runs the guard and then switches the holdback,
    last: the release lands everywhere (exit 0) and h3 moved only after the guard passed."""
    checks = [c for c in FAST["checks"] if c["kind"] != "latency"]  # type: ignore[union-attr]
    cfg = loaded.write_config(
        "analysis-guard-ok.yaml",
        **{**FAST, "checks": checks, "guard": {"duration": "6s", "holdback": True}},
    )
    old = loaded.status(cfg)["hosts"][0]["active_release"]
    new = "v2" if old != "v2" else "v1"
    r = loaded.run(
        "deploy",
        "-c",
        str(cfg),
        "--release",
        new,
        env={"IMMUNITY_FAULT_KILL_AT": "guard.started:1"},
    )
    assert r.returncode == -9, r.stdout + r.stderr[-1500:]
    assert loaded.releases_served()["h3"] == old  # the holdback waits for the guard
    r = loaded.run("resume", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr[-1500:]
    assert {"h1": new, "h2": new, "h3": new} == loaded.releases_served()
    assert {"h1": 0, "h2": 0, "h3": 0} == loaded.servers_state()
    with sqlite3.connect(loaded.dir / "journal.db") as db:
        deployment = db.execute(
            "SELECT id FROM deployments ORDER BY started_at DESC LIMIT 1"
        ).fetchone()[0]
        rows = db.execute(
            "SELECT kind, host, data FROM entries WHERE deployment_id = ? ORDER BY seq",
            (deployment,),
        ).fetchall()
    order = [(k, h) for k, h, _ in rows if k in ("host.switched", "wave.passed", "guard.started")]
    guard_passed = next(
        i for i, (k, _, d) in enumerate(rows) if k == "wave.passed" and json.loads(d).get("guard")
    )
    h3_switched = next(i for i, (k, h, _) in enumerate(rows) if k == "host.switched" and h == "h3")
    assert guard_passed < h3_switched, order
    assert [k for k, _ in order].count("guard.started") == 2  # killed once, run again
