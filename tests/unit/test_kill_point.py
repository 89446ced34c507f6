"""The fault suite's kill point: SIGKILL right after the nth durable entry of a kind."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import anyio, sys
from pathlib import Path
from immunity.journal import open_journal

async def main():
    j = open_journal(Path(sys.argv[1]))
    d = await j.begin("shop", "v2", {})
    for i in range(5):
        await j.append(d.id, "host.step_started", data={"i": i})
        await j.append(d.id, "host.step_finished", data={"i": i})

anyio.run(main)
"""


def test_the_process_dies_right_after_the_nth_entry_of_the_kind_is_durable(
    tmp_path: Path,
) -> None:
    """IMMUNITY_FAULT_KILL_AT=host.step_started:3 → killed after that third entry, not before."""
    db = tmp_path / "journal.db"
    env = {**os.environ, "IMMUNITY_FAULT_KILL_AT": "host.step_started:3"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(db)], env=env, timeout=60)
    assert -9 == r.returncode
    with sqlite3.connect(db) as c:
        kinds = [k for (k,) in c.execute("SELECT kind FROM entries ORDER BY seq")]
    assert ["host.step_started", "host.step_finished"] * 2 + ["host.step_started"] == kinds


def test_without_the_variable_nothing_is_killed(tmp_path: Path) -> None:
    """No IMMUNITY_FAULT_KILL_AT: every entry is written and the process ends normally."""
    env = {k: v for k, v in os.environ.items() if k != "IMMUNITY_FAULT_KILL_AT"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "j.db")], env=env, timeout=60)
    assert 0 == r.returncode
