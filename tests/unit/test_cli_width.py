"""What the read-only commands print at a given width (new-user trial 4 finding 16)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anyio

CONFIG = """\
app: shop
hosts:
  - {name: h1, address: 127.0.0.1, port: 18001}
  - {name: h2, address: 127.0.0.1, port: 18002}
balancer: {kind: haproxy, socket: nowhere.sock, backend: be_app}
driver: {kind: local, root: hosts, releases: releases}
signals:
  - {kind: haproxy, name: lb, socket: nowhere.sock, backend: be_app}
checks:
  - {name: errors, signal: lb, kind: errors}
journal: {path: journal.db}
"""

LONG = (
    "errors: canary 5xx 5.5% vs baseline 0% over 308 vs 1,232 requests (e-value 3,385 >= 2,500, "
    "the canary is worse); reverted every host of waves 1 and 2 to v1 in 5.4 s"
)


def _journal(path: Path) -> list[str]:
    from immunity.journal import open_journal

    ids: list[str] = []

    async def write() -> None:
        j = open_journal(path, None)
        try:
            for release, outcome, reason in [
                ("v2", "deployed", "all 1 check(s) passed"),
                ("v3-with-a-rather-long-release-name", "reverted", LONG),
                ("v4", "reverted", LONG),
            ]:
                rec = await j.begin("shop", release, {"hosts": ["h1", "h2"]})
                await j.append(rec.id, "deployment.started", data={"release": release})
                await j.finish(rec.id, outcome, reason, {})
                ids.append(rec.id)
        finally:
            await j.close()

    anyio.run(write)
    return ids


def _history(cwd: Path, **env: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "immunity", "history", "-c", "c.yaml"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**{k: v for k, v in os.environ.items() if k != "COLUMNS"}, **env},
        check=True,
    )
    return r.stdout


def test_history_fits_80_columns_one_line_per_deployment(tmp_path: Path) -> None:
    """At 80 columns (`COLUMNS=80`, piped as here or on a terminal) every line of `history`
    fits, each deployment is one row naming its id (for `show`), and the line under the
    table says how to read a whole reason; the 160-column table (COLUMNS unset when piped)
    still gives the reason whole."""
    (tmp_path / "c.yaml").write_text(CONFIG)
    ids = _journal(tmp_path / "journal.db")
    for width in (80, 100):
        text = _history(tmp_path, COLUMNS=str(width))
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= width, text
        for i in ids:
            assert 1 == sum(i in line for line in lines), text
        row = next(line for line in lines if ids[1] in line)
        assert "v3-with" in row and "reverted" in row and "errors: c" in row, text
        assert "whole reasons: `immunity show -c c.yaml ID`" in text, text
    wide = _history(tmp_path)
    assert max(len(line) for line in wide.splitlines()) > 100
    assert "reverted every host" in wide.replace("\n", " ").replace("│", " "), wide


def test_status_during_a_live_run_names_each_host_step_not_disagreements(tmp_path: Path) -> None:
    """Trial 4 #6: while a live run holds the lease, a host mid-step (out of the pool, the
    journal a step behind) is the run at work: `status` prints "h1: deploy: warmup", not
    "disagreement: h1: ...", and the lease's time as "2026-11-30 10:34:26 UTC"."""
    from immunity.journal import open_journal
    from immunity.journal.holder import holder_name

    (tmp_path / "c.yaml").write_text(CONFIG)

    async def write() -> None:
        j = open_journal(tmp_path / "journal.db", None)
        try:
            rec = await j.begin("shop", "v2", {"hosts": ["h1", "h2"]})
            await j.acquire_lease("shop", holder_name(), rec.id, 600)
            await j.append(rec.id, "deployment.started", data={"release": "v2"})
            for step in ("drain", "stop", "start", "warmup"):
                data = {"purpose": "deploy", "release": "v2"}
                await j.append(rec.id, "host.step_started", host="h1", step=step, data=data)
                if step != "warmup":
                    await j.append(rec.id, "host.step_finished", host="h1", step=step, data=data)
        finally:
            await j.close()

    anyio.run(write)
    r = subprocess.run(
        [sys.executable, "-m", "immunity", "status", "-c", "c.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "h1: deploy: warmup" in lines, r.stdout
    assert not any(line.startswith("disagreement: h1") for line in lines), r.stdout
    lease = next(line for line in lines if line.startswith("lease held by "))
    assert re.fullmatch(r"lease held by \S+ since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", lease), lease


def test_resume_and_rollback_take_no_live_and_an_unknown_id_names_unfinished_runs(
    tmp_path: Path,
) -> None:
    """Trial 4 #21: `resume --no-live` was "No such option" (deploy has it), and `show`'s
    unknown-id hint read "(v4 None)" for a deployment still running."""
    (tmp_path / "c.yaml").write_text(CONFIG)
    from immunity.journal import open_journal

    async def write() -> None:
        j = open_journal(tmp_path / "journal.db", None)
        try:
            await j.begin("shop", "v4", {"hosts": ["h1", "h2"]})
        finally:
            await j.close()

    anyio.run(write)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "immunity", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "COLUMNS": "200"},
        )

    shown = run("show", "-c", "c.yaml", "nosuch")
    assert shown.returncode == 2 and "(v4 unfinished)" in shown.stderr, shown.stderr
    assert "None" not in shown.stderr, shown.stderr
    for command in ("resume", "rollback"):
        assert "--no-live" in run(command, "--help").stdout


def test_config_validate_advises_validate_again_not_status(tmp_path: Path) -> None:
    """Trial 4 #21: a YAML syntax error or an empty file advised `immunity status -c FILE`,
    a missing file "pass -c with the path" (validate takes the file positionally)."""
    (tmp_path / "bad.yaml").write_text("app: [\n")
    (tmp_path / "empty.yaml").write_text("")

    def last(name: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "immunity", "config", "validate", name],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert r.returncode == 2, r.stderr
        return r.stderr.strip().splitlines()[-1]

    for name in ("bad.yaml", "empty.yaml"):
        assert last(name) == (
            f"next: fix the lines above, then check again: immunity config validate {name}"
        )
    assert "-c" not in last("nothere.yaml") and "config validate" in last("nothere.yaml")
