"""`deploy --dry-run` on a 3-host sandbox: the plan is printed, nothing is touched."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
import yaml
from e2e_helpers import FAST, Sandbox


def test_dry_run_prints_every_wave_and_leaves_the_balancer_and_journal_as_they_were(
    fleet3: Sandbox,
) -> None:
    """Exit 0 with waves, capacity and checks; HAProxy's view, the hosts and the journal unchanged."""
    cfg = fleet3.write_config("dry.yaml", **{**FAST, "waves": [1, 2, "100%"]})
    before = (fleet3.servers_state(), fleet3.releases_served())
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2", "--dry-run", "--json", "plan.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert before == (fleet3.servers_state(), fleet3.releases_served())
    with sqlite3.connect(fleet3.dir / "journal.db") as db:
        assert db.execute("SELECT count(*) FROM deployments").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM leases").fetchone() == (0,)
    plan = json.loads((fleet3.dir / "plan.json").read_text())
    assert [w["hosts"] for w in plan["waves"]] == [["h1"], ["h2"], ["h3"]]
    # one host out at a time: two hosts keep serving at every moment
    assert [m["in_pool"] for w in plan["waves"] for m in w["moments"]] == [2, 2, 2]
    assert [m["canary"] for w in plan["waves"] for m in w["moments"]] == [0, 1, 2]
    assert [w["relative"] for w in plan["waves"]] == [True, True, False]
    assert plan["waves"][2]["checks"] == ["error-rate-guard"]
    for word in ("wave 1", "wave 3", "error-rate-guard", "never fewer than 2 of 3 serving"):
        assert word in r.stdout


def test_dry_run_of_an_unknown_release_exits_2(fleet3: Sandbox) -> None:
    """The preflight of a dry run rejects what the deployment would reject, with exit 2."""
    r = fleet3.run("deploy", "-c", str(fleet3.config), "--release", "v9", "--dry-run")
    assert r.returncode == 2
    assert "v9" in r.stderr


def test_dry_run_shows_the_guard_its_holdback_and_the_alpha_of_each_bake(fleet3: Sandbox) -> None:
    """With a guard period the plan holds h3 back (judged against in the last wave and the
    guard, switched last) and spends alpha over the two waves and the guard."""
    cfg = fleet3.write_config("dry-guard.yaml", **{**FAST, "guard": {"duration": "2m"}})
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2", "--dry-run", "--json", "g.json")
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads((fleet3.dir / "g.json").read_text())
    assert [w["hosts"] for w in plan["waves"]] == [["h1"], ["h2"], ["h3"]]
    assert [w["relative"] for w in plan["waves"][:2]] == [True, True]
    assert plan["waves"][2].get("holdback") is True
    assert plan["guard"]["holdback"] == "h3" and plan["guard"]["relative"] is True
    # alpha is shared by the 3 bakes (half to the first wave's, the rest evenly) and, with
    # probe traffic, by each check and its probe twin
    twins = 2 if "probe" in yaml.safe_load(cfg.read_text()) else 1
    want = [0.01 / 2 / twins, 0.01 / 4 / twins, 0.01 / 4 / twins]
    assert plan["bakes"] == 3 and plan["alpha_per_bake"] == pytest.approx(want, rel=1e-12)
    assert f"{want[0]:.4g} for the first wave's, {want[1]:.4g} each after it" in r.stdout
    assert "against the holdback h3" in r.stdout
    assert "switched after the guard" in r.stdout
    # trial 4 #17: the holdback was "wave 3" here ("wave 4"/"wave 5" elsewhere), the guard had
    # no row, and the checks said "(not judged on the last wave)" though it is, against h3
    assert re.search(r"│\s*holdback\s*│\s*h3\s*│", r.stdout), r.stdout
    assert re.search(r"│\s*guard\s*│\s*every host but h3", r.stdout), r.stdout
    assert not re.search(r"│\s*wave 3\s*│", r.stdout), r.stdout
    assert "not judged on the last wave" not in r.stdout
    assert "(on the last wave and in the guard: the holdback)" in r.stdout


def test_the_guard_is_on_by_default_and_in_the_sandbox_config(fleet3: Sandbox) -> None:
    """Without a `guard` block the watch after the last wave lasts half of `bake.max` (at
    least `bake.min`) with h3 held back; the sandbox's own config sets a short one; and
    `guard.duration: 0` turns it off (three waves, no holdback, alpha over three bakes)."""
    plans = {}
    for name, guard, bake in (
        ("default", None, {**FAST["bake"], "max": "40s"}),  # type: ignore[dict-item]
        ("off", {"duration": 0}, FAST["bake"]),
    ):
        cfg = fleet3.write_config(f"dry-{name}.yaml", **{**FAST, "guard": guard, "bake": bake})
        r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2", "--dry-run", "--json", "-")
        assert r.returncode == 0, r.stdout + r.stderr
        plans[name] = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    r = fleet3.run("deploy", "-c", str(fleet3.config), "--release", "v2", "--dry-run",
                   "--json", "-")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    plans["sandbox"] = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    assert "guard after the last wave: 20s" in r.stdout
    default, off, sbx = plans["default"], plans["off"], plans["sandbox"]
    assert default["guard"] == {
        "duration_s": 20.0,  # max(bake.min 2 s, bake.max 40 s / 2)
        "holdback": "h3",
        "relative": True,
        "checks": ["errors", "latency", "error-rate-guard"],
    }
    assert [w["hosts"] for w in default["waves"]] == [["h1"], ["h2"], ["h3"]]
    assert default["waves"][-1].get("holdback") is True and default["bakes"] == 3
    assert (sbx["guard"]["duration_s"], sbx["guard"]["holdback"]) == (20.0, "h3")
    twins = 2  # the sandbox's config has probe traffic: each check and its probe twin
    want = [0.01 / 2 / twins, 0.01 / 4 / twins, 0.01 / 4 / twins]
    assert sbx["bakes"] == 3 and sbx["alpha_per_bake"] == pytest.approx(want, rel=1e-12)
    assert off["guard"] is None
    assert [w.get("holdback") for w in off["waves"]] == [None, None]
    assert off["bakes"] == 2
