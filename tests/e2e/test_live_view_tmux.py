"""The live view as a person sees it: `immunity deploy` inside a real terminal (tmux).

The screen is read with `tmux capture-pane`, as it is drawn, at 80×24 and 160×48.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from e2e_helpers import FAST, Load, Sandbox

pytestmark = pytest.mark.slow


@pytest.fixture
def tmux() -> Iterator[Callable[[str, int, int, str], str]]:
    """Start a command in a detached tmux session of a given size; kill it afterwards."""
    assert shutil.which("tmux"), "tmux is not installed (make setup-test installs it)"
    sessions: list[str] = []

    def start(command: str, width: int, height: int, cwd: str) -> str:
        name = f"imm-{uuid.uuid4().hex[:8]}"
        # the terminal's own size, not one inherited from the environment
        shell = f"unset COLUMNS LINES; {command}; echo EXIT=$?; sleep 300"
        subprocess.run(
            [
                "tmux",
                "-L",
                name,  # a server of its own: no size or lifetime shared with another session
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                str(width),
                "-y",
                str(height),
                "-c",
                cwd,
                shell,
            ],
            check=True,
        )
        sessions.append(name)
        return name

    yield start
    for name in sessions:
        subprocess.run(["tmux", "-L", name, "kill-server"], check=False)


def capture(session: str) -> list[str]:
    text = subprocess.run(
        ["tmux", "-L", session, "capture-pane", "-p", "-t", session],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return text.rstrip("\n").splitlines()


def wait_screen(session: str, want: Callable[[list[str]], bool], limit_s: float) -> list[str]:
    deadline = time.monotonic() + limit_s
    while True:
        lines = capture(session)
        if want(lines):
            return lines
        assert time.monotonic() < deadline, "screen never showed it:\n" + "\n".join(lines)
        time.sleep(0.3)


def deploy_cmd(cfg: str, release: str) -> str:
    return " ".join(
        shlex.quote(a)
        for a in [sys.executable, "-m", "immunity", "deploy", "-c", cfg, "-r", release]
    )


def test_at_80x24_the_view_shows_wave_clock_and_checks_and_ends_on_the_revert(
    fleet3: Sandbox, tmux: Callable[[str, int, int, str], str]
) -> None:
    """A bad release at 80×24: wave counter, bake clock, both cohorts' error rates, then
    the revert and the next step, with no line wider than the terminal."""
    cfg = fleet3.write_config("live80.yaml", **{**FAST, "bake": {**FAST["bake"], "min": "20s"}})
    load = Load(fleet3, 60)
    try:
        s = tmux(deploy_cmd(str(cfg), "v3"), 80, 24, str(fleet3.dir))
        # 80 columns: compact values ("4.55%/352"), whose traffic in the "from" column
        mid = wait_screen(
            s, lambda ls: any(" errors " in f" {ln} " and "%/" in ln for ln in ls), 90
        )
        header = mid[0]
        assert "deploying v3" in header and "wave 1/2" in header
        assert "bake" in header and "min 0:20" in header
        assert all(len(line) <= 80 for line in mid)
        row = next(ln for ln in mid if ln.lstrip().startswith("errors"))
        canary, baseline = [c for c in row.split() if "%/" in c][:2]
        assert canary.strip() and baseline.strip()
        assert row.split()[1] in ("customers", "probe"), row  # whose numbers they are
        assert any(ln.lstrip().startswith("h1 ") for ln in mid)
        end = wait_screen(s, lambda ls: any(ln.startswith("EXIT=") for ln in ls), 120)
        assert "EXIT=3" in end
        text = "\n".join(end)
        assert "reverted v3" in text
        assert "immunity show" in text  # the next step (trial 4 #3: not `history`)
    finally:
        load.stop()
    assert {"h1": "v1", "h2": "v1", "h3": "v1"} == fleet3.releases_served()
    # `show` (the latest deployment): the wave's verdict with each check, steps, the revert
    shown = fleet3.run("show", "-c", str(cfg))
    assert 0 == shown.returncode, shown.stderr
    assert "wave 1 (h1)  fail" in shown.stdout
    # caught on the customers' traffic or on the sandbox's probe traffic, whichever is first
    assert re.search(r"errors: fail — (on probe traffic: )?canary 5xx", shown.stdout)
    assert "revert: started at" in shown.stdout and "h1→v1" in shown.stdout
    data = json.loads(fleet3.run("show", "-c", str(cfg), "--json").stdout)
    assert "reverted" == data["outcome"]
    assert "fail" == data["verdicts"][0]["checks"][0]["outcome"]


def test_at_160x48_every_host_and_latency_quantiles_of_both_cohorts_are_shown(
    fleet3: Sandbox, tmux: Callable[[str, int, int, str], str]
) -> None:
    """A good release at 160×48: a row per host with its release, p50 and p90 of both
    cohorts in the latency row, evidence bars, and the deployed outcome."""
    cfg = fleet3.write_config(
        "live160.yaml", **{**FAST, "bake": {**FAST["bake"], "min": "8s", "max": "90s"}}
    )
    load = Load(fleet3, 60)
    try:
        s = tmux(deploy_cmd(str(cfg), "v2"), 160, 48, str(fleet3.dir))
        mid = wait_screen(
            s,
            lambda ls: any(ln.lstrip().startswith("latency") and ln.count("p90") == 2 for ln in ls),
            90,
        )
        for h in ("h1", "h2", "h3"):
            assert any(ln.lstrip().startswith(h + " ") for ln in mid), h
        lat = next(ln for ln in mid if ln.lstrip().startswith("latency"))
        assert lat.count("p50") == 2 and lat.count("p90") == 2
        assert any("▮" in ln or "▯" in ln for ln in mid)
        end = wait_screen(s, lambda ls: any(ln.startswith("EXIT=") for ln in ls), 240)
        assert "EXIT=0" in end
        assert any("deployed v2" in ln for ln in end)
    finally:
        load.stop()
    assert {"h1": "v2", "h2": "v2", "h3": "v2"} == fleet3.releases_served()
