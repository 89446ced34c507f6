"""A quiet hour: no customer load at all. Probe traffic decides (issue 9, item 3)."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from e2e_helpers import FAST, Load, Sandbox

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROBE = {"paths": ["/"], "rate": 20, "timeout": "2s"}
# Long enough for 40 baseline probe requests/s to set the p50/p90 thresholds and certify.
BAKE = {**FAST["bake"], "max": "90s"}


def _render(html: Path) -> str:
    """The page's text as headless Chromium parsed it (`--dump-dom`, tags removed)."""
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed (make apt-test installs it)"
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", html.as_uri()]
    dom = subprocess.run(args, capture_output=True, text=True, timeout=90, check=True).stdout
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def quiet(sbx: Sandbox, name: str) -> Path:
    return sbx.write_config(name, **{**FAST, "bake": BAKE, "probe": PROBE})


def ensure_on_v1(sbx: Sandbox) -> None:
    if sbx.serves("v1"):
        return
    r = sbx.run("deploy", "-c", str(sbx.write_config("plain.yaml", **{**FAST, "checks": []})),
                "--release", "v1")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def probe_looks(sbx: Sandbox, deployment_id: str) -> list[dict[str, object]]:
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        rows = db.execute(
            "SELECT data FROM entries WHERE kind = 'bake.looked' AND deployment_id = ?",
            (deployment_id,),
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


def test_with_no_customers_a_good_release_deploys_on_probe_traffic(fleet3: Sandbox) -> None:
    """No load at all: exit 0, every host on v2 and serving, the verdict decided by the probe.
    What people read (the terminal, GitHub's outputs and step summary, the HTML report as
    Chromium renders it) gives the probe's reasons without what customer traffic said beside
    them, "(customers: the signal sees no traffic …)"; the JSON result and `show` keep it."""
    ensure_on_v1(fleet3)
    gh_out, gh_sum = fleet3.dir / "gh-output", fleet3.dir / "gh-summary.md"
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(gh_out),
        "GITHUB_STEP_SUMMARY": str(gh_sum),
    }
    r = fleet3.run("deploy", "-c", str(quiet(fleet3, "quiet.yaml")), "--release", "v2",
                   "--json", "quiet-good.json", env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    terminal = r.stdout + r.stderr
    assert "on probe traffic" in terminal and "(customers:" not in terminal
    assert "wave 1 passed: all 3 check(s) passed after " in terminal  # not every reason again
    assert "(customers:" not in gh_out.read_text() + gh_sum.read_text()
    report = _render(Path(json.loads((fleet3.dir / "quiet-good.json").read_text())["report_path"]))
    assert "on probe traffic" in report and "(customers:" not in report
    full = fleet3.run("show", "-c", str(quiet(fleet3, "quiet.yaml")))
    assert full.returncode == 0 and "(customers: " in " ".join(full.stdout.split())
    hosts = fleet3.status()["hosts"]
    assert [h["active_release"] for h in hosts] == ["v2"] * 3
    assert fleet3.servers_state() == {"h1": 0, "h2": 0, "h3": 0}
    result = json.loads((fleet3.dir / "quiet-good.json").read_text())
    assert result["outcome"] == "deployed"
    looks = probe_looks(fleet3, result["deployment_id"])
    assert looks and all(str(look.get("probe", "")).startswith("on ") for look in looks)
    # why it runs: the customers' rate against what the checks need, derived from them (the
    # latency check's quantiles: errors need the baseline's 5xx rate, which no customer shows)
    derived = [str(look["probe"]) for look in looks if "what the checks need" in str(look["probe"])]
    assert derived and all("customers bring 0.0 requests/s" in p for p in derived), looks[-1]
    assert all("canary requests by bake.max" in p and "latency: p" in p for p in derived)


def test_with_no_customers_a_release_with_5pct_errors_is_reverted_within_30_s(
    fleet3: Sandbox,
) -> None:
    """No load at all: exit 3 within 30 s of the first canary entering the pool, the fleet
    back on the release it ran (v2 after the test above: no deployment spent to go back to
    v1), the failing check judged on probe traffic."""
    served = set(fleet3.releases_served().values())
    assert len(served) == 1, served
    old = served.pop()
    r = fleet3.run("deploy", "-c", str(quiet(fleet3, "quiet.yaml")), "--release", "v3",
                   "--json", "quiet-bad.json")  # fmt: skip
    assert r.returncode == 3, r.stdout + r.stderr[-2000:]
    result = json.loads((fleet3.dir / "quiet-bad.json").read_text())
    assert result["verdict"]["outcome"] == "fail"
    assert "on probe traffic" in result["verdict"]["reason"]
    assert result["detected_after_s"] is not None and result["detected_after_s"] <= 30
    assert [h["active_release"] for h in fleet3.status()["hosts"]] == [old] * 3
    assert fleet3.servers_state() == {"h1": 0, "h2": 0, "h3": 0}


def test_customers_who_leave_after_wave_1_leave_the_probe_its_own_thresholds(
    fleet3: Sandbox,
) -> None:
    """Trial 3, finding 1: customers froze the latency thresholds through the balancer in
    wave 1 (a few ms), then stopped coming. Wave 2's probe twin judged the probe's requests,
    timed from immunity's process (tens to hundreds of ms), against those, "(configured)":
    every request "slow" on both cohorts, never decided, a good release reverted with exit 7.
    Now the twin compares at the probe's own thresholds and the release deploys (exit 0)."""
    r = fleet3.run("sandbox", "release", "--dir", str(fleet3.dir), "v4")
    assert r.returncode == 0, r.stderr
    cfg = fleet3.write_config(
        "leave.yaml",
        **{**FAST, "bake": BAKE, "probe": PROBE, "waves": [1, 2, "100%"], "guard": {"duration": 0}},
    )
    after = last_seq(fleet3)
    load = Load(fleet3, rps=60, name="leave-load.jsonl")
    deploy = fleet3.start("deploy", "-c", str(cfg), "--release", "v4", "--json", "leave.json")
    try:
        deadline = time.monotonic() + 120
        while not any(e["wave"] == 1 for e in entries(fleet3, "wave.passed", after)):
            assert deploy.poll() is None, deploy.communicate()
            assert time.monotonic() < deadline, "wave 1 did not pass within 120 s"
            time.sleep(0.2)
    finally:
        load.stop()  # the customers go home
    out, err = deploy.communicate(timeout=300)
    assert deploy.returncode == 0, out + err[-2000:]
    assert json.loads((fleet3.dir / "leave.json").read_text())["outcome"] == "deployed"
    (wave2,) = [b for b in entries(fleet3, "bake.started", after) if b["wave"] == 2]
    carried = dict(wave2["carried"])  # type: ignore[call-overload]
    if "latency" in carried and "latency (probe)" in carried:  # each its own
        assert carried["latency"] != carried["latency (probe)"], carried
    (reached,) = [e for e in entries(fleet3, "verdict.reached", after) if e["wave"] == 2]
    assert "(configured)" not in json.dumps(reached), reached


def last_seq(sbx: Sandbox) -> int:
    """The journal's last entry (0 before the sandbox's first deployment made it)."""
    if not (sbx.dir / "journal.db").exists():
        return 0
    with sqlite3.connect(sbx.dir / "journal.db") as db:
        return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()[0])


def entries(sbx: Sandbox, kind: str, after: int) -> list[dict[str, object]]:
    """The data of every `kind` entry journaled after entry `after`, in order (none while
    the deployment has not created the journal yet; read-only, so this never creates it)."""
    try:
        with sqlite3.connect(f"file:{sbx.dir / 'journal.db'}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT data FROM entries WHERE kind = ? AND seq > ? ORDER BY seq", (kind, after)
            ).fetchall()
    except sqlite3.OperationalError:
        return []
    return [json.loads(r[0]) for r in rows]
