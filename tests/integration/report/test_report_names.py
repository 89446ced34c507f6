"""The HTML report of a passed deployment with a guard and a holdback, as headless Chromium
renders it: one name for each part of the rollout, the same the CLI and the events use."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

from immunity.journal.base import DeploymentRecord, JournalEntry
from immunity.report import build
from immunity.report.html import render


def _dom(html: Path) -> str:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed (make apt-test installs it)"
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", html.as_uri()]
    return subprocess.run(args, capture_output=True, text=True, timeout=90, check=True).stdout


def _journal() -> tuple[DeploymentRecord, list[JournalEntry]]:
    """The entry kinds and data the engine records for 3 waves, the guard (h1-h4 on v2, h5
    held back) and the holdback's switch (wave number 4, as the engine numbers it)."""
    t0 = dt.datetime(2026, 11, 30, 10, 30, 2, 322840, tzinfo=dt.UTC)
    out: list[JournalEntry] = []

    def e(
        t: float, kind: str, host: str | None = None, step: str | None = None, **data: object
    ) -> None:
        out.append(
            JournalEntry(len(out) + 1, "d1", t0 + dt.timedelta(seconds=t), kind, host, step, data)
        )

    t = 0.0
    for wave, hosts in ((1, ["h1"]), (2, ["h2", "h3"]), (3, ["h4"])):
        e(t, "wave.started", wave=wave, hosts=hosts)
        for h in hosts:
            e(t + 1, "host.step_started", h, "install", release="v2")
            e(t + 5, "host.step_finished", h, "install")
        e(t + 6, "bake.started", wave=wave)
        verdict = {"outcome": "pass", "reason": "every check passed", "checks": []}
        e(t + 20, "verdict.reached", wave=wave, verdict=verdict)
        e(t + 20, "wave.passed", wave=wave)
        t += 25
    e(t, "guard.started", wave=3, holdback="h5", held_back=["h5"], duration_s=20)
    e(
        t + 20,
        "verdict.reached",
        wave=3,
        guard=True,
        verdict={"outcome": "pass", "reason": "guard passed", "checks": []},
    )
    e(t + 20, "wave.passed", wave=3, guard=True)
    e(t + 21, "wave.started", wave=4, hosts=["h5"], holdback=True)
    e(t + 22, "host.step_started", "h5", "install", release="v2")
    e(t + 27, "host.step_finished", "h5", "install")
    e(t + 28, "deployment.finished")
    record = DeploymentRecord(
        "d1", "shop", "v2", t0, t0 + dt.timedelta(seconds=t + 28), "deployed", "every wave passed"
    )
    return record, out


def test_the_report_names_the_guard_and_the_holdback_as_the_cli_does(tmp_path: Path) -> None:
    """Trial 4 #8/#17: the report called the holdback "wave 4"/"wave 5" (the CLI and the
    events say "holdback"), left the guard's marker unlabelled and out of the wave table, the
    holdback without an end, and showed a raw ISO timestamp in its header."""
    record, entries = _journal()
    page = tmp_path / "report.html"
    page.write_text(render(build(record, entries)))
    dom = _dom(page)
    rows = re.findall(
        r"<tr><td>([^<]*)</td><td>([^<]*)</td><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td></tr>", dom
    )
    named = [(r[0], r[1]) for r in rows if r[0].startswith(("wave", "guard", "holdback"))]
    assert named[:5] == [
        ("wave 1", "h1"),
        ("wave 2", "h2, h3"),
        ("wave 3", "h4"),
        ("guard", "h1, h2, h3, h4"),
        ("holdback", "h5"),
    ], rows
    ended = {r[0]: r[3] for r in rows}
    assert ended["guard"].strip() == "95.0 s" and ended["holdback"].strip() == "102.0 s", rows
    timeline = dom[dom.index('id="timeline"') :]
    timeline = timeline[: timeline.index("</div>")]
    marks = re.findall(r"<text[^>]*>([^<]*)</text>", timeline)
    assert [m for m in marks if m.startswith(("wave", "guard", "holdback"))] == [
        "wave 1",
        "wave 2",
        "wave 3",
        "guard",
        "holdback",
    ], marks
    assert "wave 4" not in dom and "wave 5" not in dom
    # trial 4 #8/#18: times to the tenth, as the header gives the duration, never wrapped
    verdict_at = re.findall(r'<tr><td class="n">([^<]*)</td><td>(?:\d+|guard)</td>', dom)
    assert verdict_at == ["20.0 s", "45.0 s", "70.0 s", "95.0 s"], verdict_at
    assert "white-space:nowrap" in dom[dom.index("td.n{") : dom.index("td.n{") + 120]
    assert "started 2026-11-30 10:30:02 UTC" in dom
    assert "2026-11-30T10:30:02" not in dom
