"""What only the SQLite journal has (the Journal contract itself: tests/integration/journal)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from immunity.errors import JournalError
from immunity.journal.sqlite import SqliteJournal


@pytest.mark.anyio
async def test_an_unwritable_journal_is_a_journal_error(tmp_path: Path) -> None:
    """A write that fails raises JournalError with the path."""
    j = SqliteJournal(tmp_path / "j.db")
    d = await j.begin("shop", "v2", {})
    other = sqlite3.connect(tmp_path / "j.db")
    other.execute("DROP TABLE entries")
    other.commit()
    other.close()
    with pytest.raises(JournalError) as info:
        await j.append(d.id, "x.happened")
    assert "j.db" in info.value.message


@pytest.mark.anyio
async def test_a_write_waiting_on_the_disk_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    """While another connection holds the write lock, an append waits in a worker thread and
    other tasks keep running; the entry lands once the lock is released."""
    j = SqliteJournal(tmp_path / "j.db")
    d = await j.begin("shop", "v2", {})
    other = sqlite3.connect(tmp_path / "j.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await j.append(d.id, "host.step_started", host="h1", step="drain")
        done.set()
    other.close()
    assert ticks >= 10  # the loop ran while the write waited ~0.5 s for the lock
    assert [e.kind for e in await j.entries(d.id)] == ["host.step_started"]
    await j.close()


@pytest.mark.anyio
async def test_a_write_asked_for_completes_even_when_its_task_is_cancelled(
    tmp_path: Path,
) -> None:
    """Cancelling the caller mid-write neither loses the row nor leaves a half transaction."""
    j = SqliteJournal(tmp_path / "j.db")
    d = await j.begin("shop", "v2", {})
    other = sqlite3.connect(tmp_path / "j.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
    with anyio.move_on_after(0.05):
        await j.append(d.id, "host.step_started", host="h1", step="drain")
    other.close()
    assert [e.kind for e in await j.entries(d.id)] == ["host.step_started"]
    await j.append(d.id, "host.step_finished", host="h1", step="drain")
    assert len(await j.entries(d.id)) == 2
    await j.close()
