"""A rejected release on a 3-host sandbox, then what people look at afterwards: the HTML
report rendered by headless Chromium, the customers' view measured by the `impact` probe, and
`replay` re-judging the recorded evidence with other thresholds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from e2e_helpers import FAST, Load, Sandbox
from PIL import Image

pytestmark = pytest.mark.slow

CANARY_RGB = (0xD6, 0x27, 0x28)  # the report's canary colour (charts.CANARY)
BASELINE_RGB = (0x1F, 0x77, 0xB4)


@pytest.fixture(scope="module")
def rejected(fleet3: Sandbox) -> dict[str, Any]:
    """v3 (5% errors) deployed under load with an impact probe: rejected and reverted."""
    cfg = fleet3.write_config(
        "reported.yaml",
        **FAST,
        impact={"url": fleet3.url, "rps": 10, "before": "2s", "after": "2s"},
    )
    load = Load(fleet3, 80)
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v3", "--json", "r.json")
    load.stop()
    assert r.returncode == 3, r.stdout + r.stderr[-3000:]
    result = json.loads((fleet3.dir / "r.json").read_text())
    return {"config": cfg, "result": result}


def _chromium() -> str:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed (make apt-test installs it)"
    return exe


def _render(html: Path, shot: Path) -> str:
    """Render `html` in headless Chromium: a screenshot, and the DOM as Chromium parsed it."""
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    subprocess.run(
        [*args, "--window-size=1400,2400", f"--screenshot={shot}", html.as_uri()],
        capture_output=True,
        timeout=90,
        check=True,
    )
    dom = subprocess.run(
        [*args, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=90, check=True
    )
    return dom.stdout


def _pixels_near(img: Image.Image, rgb: tuple[int, int, int], tol: int = 40) -> int:
    px = np.asarray(img.convert("RGB"), dtype=np.int16)
    return int((np.abs(px - np.array(rgb, dtype=np.int16)) <= tol).all(axis=-1).sum())


def test_the_report_shows_the_verdict_the_canary_above_the_baseline_and_the_revert(
    fleet3: Sandbox, rejected: dict[str, Any], tmp_path: Path, record_property: Any
) -> None:
    """`immunity report` writes one self-contained page that Chromium renders with the
    verdict sentence, a chart per signal with canary and baseline lines and the verdict's
    moment, the timeline, the customers' view and the revert."""
    dep = rejected["result"]["deployment_id"]
    html, data_json = tmp_path / "report.html", tmp_path / "report.json"
    r = fleet3.run(
        "report",
        dep[:18],
        "-c",
        str(rejected["config"]),
        "--html",
        str(html),
        "--json",
        str(data_json),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    page = html.read_text()
    assert not re.findall(r"<(?:script|link|img)[^>]+(?:src|href)=[\"']https?://", page)
    assert "<script" not in page
    record_property("report_bytes", len(page.encode()))
    dom = _render(html, tmp_path / "shot.png")
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "v3 was rejected and the whole fleet reverted" in text
    assert "5xx" in text
    assert len(re.findall(r"<svg", dom)) >= 3  # timeline, signal lb, customers' view
    assert "Signal lb: canary vs baseline" in text
    assert "canary error rate" in text and "baseline error rate" in text
    assert re.search(r"verdict: fail at \d+\.\ds", text)
    assert "What customers saw" in text and "longest stall" in text
    # each check's figures, labelled and with units, not a key=value dump of its numbers
    figures = " ".join(text.split())
    assert "canary_requests=" not in figures and "e_fail_needed" not in figures
    assert re.search(r"errors \d[\d.]*% vs \d[\d.]*% baseline \([\d,]+ of [\d,]+ vs", figures)
    assert re.search(
        r"errors [\d.]+% against a bar of 2\.0% \([\d,]+ of [\d,]+ requests\)", figures
    )
    assert re.search(r"evidence to fail [\d,.]+ of [\d,.]+", figures)
    assert "The immune response began" in text
    data = json.loads(data_json.read_text())
    assert data["looks"] > 0
    lb = data["series"]["lb"]
    canary = [v for v in lb["canary"]["rate"] if v is not None]
    baseline = [v for v in lb["baseline"]["rate"] if v is not None]
    assert max(canary) > max(baseline) + 0.01  # the canary's errors rose above the baseline's
    shot = Image.open(tmp_path / "shot.png")
    assert _pixels_near(shot, CANARY_RGB) > 500  # the canary's lines were drawn
    assert _pixels_near(shot, BASELINE_RGB) > 500
    shutil.copy(tmp_path / "shot.png", fleet3.dir / "report-shot.png")


def test_every_deployment_writes_its_report_next_to_the_journal(
    fleet3: Sandbox, rejected: dict[str, Any]
) -> None:
    """The result names the report written at the end of the deployment, beside the journal."""
    path = Path(rejected["result"]["report_path"])
    assert path.parent == fleet3.dir / "reports"
    assert path.name == rejected["result"]["deployment_id"] + ".html"
    assert "rejected" in path.read_text()
    assert json.loads(path.with_suffix(".json").read_text())["outcome"] == "reverted"


def test_the_impact_probe_reports_what_customers_saw_in_each_phase(
    rejected: dict[str, Any],
) -> None:
    """The probe ran for the whole deployment and its record is cut at the journaled moments."""
    impact = rejected["result"]["impact"]
    phases = [p["phase"] for p in impact["phases"]]
    assert phases == ["before", "wave 1", "bake 1", "revert", "after"]
    before = impact["phases"][0]
    assert before["failed"] == 0
    assert before["end"] - before["start"] == pytest.approx(2.0, abs=0.5)
    total = impact["total"]
    duration = impact["phases"][-1]["end"] - impact["phases"][0]["start"]
    assert total["requests"] == pytest.approx(10 * duration, rel=0.15)
    assert sum(p["requests"] for p in impact["phases"]) == total["requests"]
    for p in impact["phases"]:
        assert p["p50_ms"] <= p["p99_ms"] <= p["max_ms"]
        assert 0 < p["longest_stall_s"] <= p["end"] - p["start"] + 0.001


def test_replay_with_the_same_checks_reaches_the_same_verdict_at_the_same_look(
    fleet3: Sandbox, rejected: dict[str, Any]
) -> None:
    """Re-judging the recorded evidence with the original config reproduces the decision."""
    dep = rejected["result"]["deployment_id"]
    r = fleet3.run("replay", dep, "-c", str(rejected["config"]), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    bake = data["bakes"][0]
    assert bake["original"]["outcome"] == "fail"
    assert bake["replayed"]["outcome"] == "fail", data
    assert bake["replayed"]["t_s"] == pytest.approx(bake["original"]["t_s"], abs=0.01)


def test_replay_with_a_looser_threshold_passes_the_rejected_release(
    fleet3: Sandbox, rejected: dict[str, Any]
) -> None:
    """With a 20% error floor and guard rail the same evidence passes wave 1, and replay says
    so beside what happened (and that later waves have no evidence)."""
    data = yaml.safe_load(Path(rejected["config"]).read_text())
    data["judge"] = {"error_floor": "20%"}
    data["checks"] = [
        {"name": "errors", "signal": "lb", "kind": "errors"},
        {"name": "error-rate-guard", "signal": "lb", "kind": "error_rate_max", "max": "20%"},
    ]
    loose = fleet3.dir / "loose.yaml"
    loose.write_text(yaml.safe_dump(data, sort_keys=False))
    dep = rejected["result"]["deployment_id"]
    r = fleet3.run("replay", dep, "-c", str(loose), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    bake = got["bakes"][0]
    assert bake["original"]["outcome"] == "fail"
    assert bake["replayed"]["outcome"] == "pass"
    assert bake["replayed"]["t_s"] <= bake["evidence_s"]
    assert got["replayed"]["outcome"] == "pass (so far)"
    human = fleet3.run("replay", dep, "-c", str(loose))
    assert "with the new checks: pass (so far)" in human.stdout
    assert "what happened: reverted" in human.stdout


def test_replay_of_a_check_on_an_unrecorded_signal_exits_2(
    fleet3: Sandbox, rejected: dict[str, Any]
) -> None:
    """A new check reading a signal the recording never observed is a clear error."""
    data = yaml.safe_load(Path(rejected["config"]).read_text())
    data["signals"].append(
        {"kind": "haproxy", "name": "other", "socket": "haproxy/admin.sock", "backend": "be_app"}
    )
    data["checks"] = [{"name": "errors", "signal": "other", "kind": "errors"}]
    cfg = fleet3.dir / "other.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    r = fleet3.run("replay", rejected["result"]["deployment_id"], "-c", str(cfg))
    assert r.returncode == 2
    assert "other" in r.stderr and "no observation" in r.stderr


def test_a_report_without_an_impact_block_says_why_and_how_to_measure_it(
    fleet3: Sandbox, tmp_path: Path
) -> None:
    """A deployment whose config has no `impact` block (the sandbox's as `sandbox up` writes
    it): the page's "What customers saw" says it was not measured, why, and the block that
    measures it, rather than standing empty."""
    cfg = fleet3.write_config("no-impact.yaml", **{**FAST, "checks": []})
    r = fleet3.run("deploy", "-c", str(cfg), "--release", "v2", "--json", "plain.json")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    html = Path(json.loads((fleet3.dir / "plain.json").read_text())["report_path"])
    text = " ".join(re.sub(r"<[^>]+>", " ", _render(html, tmp_path / "shot.png")).split())
    section = text.split("What customers saw", 1)[1].split("Revert", 1)[0]
    assert "Not measured: immunity.yaml has no impact block" in section
    assert 'impact: {url: "https://shop.example.com", rps: 5}' in section
    assert "immunity sandbox up --impact" in section
