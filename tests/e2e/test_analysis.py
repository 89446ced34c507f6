"""The analysis on a real sandbox: every look journaled, and a resumed bake continues it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_helpers import FAST, Load, Sandbox

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(fleet3: Sandbox) -> Iterator[Sandbox]:
    """The fleet under steady customer load for the whole module (judges need traffic)."""
    load = Load(fleet3, 40, "analysis-load.jsonl")
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
