"""`immunity journal copy --from sqlite:PATH --to postgresql://...`, run as a user would:
the PostgreSQL server's own tables hold the history afterwards, and a second run adds
nothing but what is new."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import psycopg

from immunity.journal import SqliteJournal

IMMUNITY = [sys.executable, "-m", "immunity"]


async def _history(path: Path, n: int, start: int = 0) -> list[str]:
    j = SqliteJournal(path)
    ids = []
    try:
        for i in range(start, start + n):
            d = await j.begin(f"app{i % 2}", f"v{i}", {"fallbacks": {"h1": "v0"}})
            await j.append(d.id, "deployment.started", data={"i": i})
            await j.append(d.id, "host.step_started", host="h1", step="drain")
            await j.finish(d.id, "deployed", f"ok {i}", {"result": {"exit_code": 0}})
            ids.append(d.id)
    finally:
        await j.close()
    return ids


def _copy(src: str, dst: str, tmp: Path) -> tuple[int, dict[str, int], str]:
    r = subprocess.run(
        [*IMMUNITY, "journal", "copy", "--from", src, "--to", dst, "--json", str(tmp / "c.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    data = json.loads((tmp / "c.json").read_text()) if r.returncode == 0 else {}
    return r.returncode, data, r.stdout + r.stderr


def _server_view(url: str) -> tuple[list[tuple[str, str, str]], int]:
    with psycopg.connect(url) as c:
        deps = c.execute("SELECT id, outcome, reason FROM deployments ORDER BY id").fetchall()
        n = c.execute("SELECT count(*) FROM entries").fetchone()
    return [tuple(r) for r in deps], int(n[0]) if n else 0  # type: ignore[misc]


def test_copy_moves_the_history_and_is_idempotent(pg_url: str, tmp_path: Path) -> None:
    """3 deployments copied; the same copy again adds nothing; 1 more adds only it."""
    db = tmp_path / "team.db"
    ids = anyio.run(_history, db, 3)
    rc, data, text = _copy(f"sqlite:{db}", pg_url, tmp_path)
    assert rc == 0, text
    assert data == {"deployments": 3, "new_deployments": 3, "entries": 6, "new_entries": 6}
    deps, n = _server_view(pg_url)
    assert [d[0] for d in deps] == sorted(ids) and n == 6
    assert {d[1] for d in deps} == {"deployed"}
    rc, data, text = _copy(f"sqlite:{db}", pg_url, tmp_path)
    assert rc == 0 and data["new_deployments"] == 0 and data["new_entries"] == 0, text
    assert _server_view(pg_url) == (deps, 6)
    more = anyio.run(_history, db, 1, 3)
    rc, data, text = _copy(str(db), pg_url, tmp_path)
    assert rc == 0 and (data["new_deployments"], data["new_entries"]) == (1, 2), text
    deps2, n2 = _server_view(pg_url)
    assert [d[0] for d in deps2] == sorted(ids + more) and n2 == 8


def test_a_missing_source_is_exit_2_and_the_target_untouched(pg_url: str, tmp_path: Path) -> None:
    """A --from file that does not exist is refused (no empty journal made, nothing copied)."""
    rc, _, text = _copy(f"sqlite:{tmp_path / 'nope.db'}", pg_url, tmp_path)
    assert rc == 2 and "no such journal file" in text
    assert not (tmp_path / "nope.db").exists()
