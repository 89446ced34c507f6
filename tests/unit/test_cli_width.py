"""What the read-only commands print at a given width (new-user trial 4 finding 16)."""

from __future__ import annotations

import os
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
