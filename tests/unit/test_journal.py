"""What only the SQLite journal has (the Journal contract itself: tests/integration/journal)."""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest

from immunity.errors import JournalError, LeaseHeld
from immunity.journal.base import check_grant
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


@pytest.mark.anyio
async def test_appends_made_at_once_share_a_commit_and_each_is_on_disk_when_it_returns(
    tmp_path: Path,
) -> None:
    """Group commit: 300 appends asked for at once take far fewer transactions than entries,
    and each entry is already readable from another connection (committed) the moment its
    `append` returns; seq follows the order the appends were asked for."""
    j = SqliteJournal(tmp_path / "j.db")
    d = await j.begin("shop", "v2", {})
    lease = await j.acquire_lease("shop", "a:1", d.id, 30)
    other = sqlite3.connect(tmp_path / "j.db")
    seen_at_return: list[bool] = []
    seqs: dict[int, int] = {}

    async def one(i: int) -> None:
        e = await j.append(
            d.id, "host.step_started", host=f"h{i}", data={"i": i}, token=lease.token
        )
        row = other.execute("SELECT data FROM entries WHERE seq=?", (e.seq,)).fetchone()
        seen_at_return.append(row is not None and f'"i": {i}' in row[0])
        seqs[i] = e.seq

    commits0 = j.commits
    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(one, i)
    other.close()
    assert seen_at_return == [True] * 300
    assert [seqs[i] for i in range(300)] == sorted(seqs.values())
    assert j.appended >= 300 and j.commits - commits0 < 300 // 4, (j.commits, j.appended)
    assert len(await j.entries(d.id)) == 300
    await j.close()


@pytest.mark.anyio
async def test_a_batch_larger_than_one_insert_with_stale_writers_in_it_keeps_each_entry_its_row(
    tmp_path: Path,
) -> None:
    """A group commit writes its rows as several multi-row INSERTs: every returned entry's
    seq is the row that holds exactly its data (host, kind, step, data), across statement
    boundaries and with stale-token appends (refused, no row) interleaved in the batch."""
    from immunity.errors import LeaseLost
    from immunity.journal.sqlite import INSERT_ROWS

    j = SqliteJournal(tmp_path / "j.db")
    d = await j.begin("shop", "v2", {})
    lease = await j.acquire_lease("shop", "a:1", d.id, 30)
    n = 3 * INSERT_ROWS + 7
    got: dict[int, object] = {}
    refused: list[int] = []

    async def one(i: int) -> None:
        token = lease.token + 1 if i % 5 == 0 else lease.token
        try:
            got[i] = await j.append(
                d.id, "host.step_started", host=f"h{i}", step=f"s{i}", data={"i": i}, token=token
            )
        except LeaseLost:
            refused.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    assert sorted(refused) == [i for i in range(n) if i % 5 == 0]
    with sqlite3.connect(tmp_path / "j.db") as c:
        rows = {
            seq: (h, s, data)
            for seq, h, s, data in c.execute("SELECT seq, host, step, data FROM entries")
        }
    assert len(rows) == len(got) and j.commits < len(got) // 4, (j.commits, len(got))
    for i, e in got.items():
        assert (e.host, e.step, e.data) == (f"h{i}", f"s{i}", {"i": i})  # type: ignore[attr-defined]
        assert rows[e.seq] == (f"h{i}", f"s{i}", f'{{"i": {i}}}'), (i, e.seq)  # type: ignore[attr-defined]
    await j.close()


KILL_SCRIPT = """
import anyio, os, signal, sys
from immunity.journal.sqlite import SqliteJournal

async def main():
    j = SqliteJournal(sys.argv[1])
    d = await j.begin("shop", "v2", {})
    lease = await j.acquire_lease("shop", "a:1", d.id, 30)
    acked = 0

    async def walk(h):
        nonlocal acked
        for i in range(10_000):
            e = await j.append(d.id, "host.step_started", host=f"h{h}", data={"i": i},
                               token=lease.token)
            print(e.seq, j.commits, j.appended, flush=True)
            acked += 1
            if acked == int(sys.argv[2]):  # the writer is mid-batch for the other tasks
                os.kill(os.getpid(), signal.SIGKILL)

    async with anyio.create_task_group() as tg:
        for h in range(64):
            tg.start_soon(walk, h)

anyio.run(main)
"""


def test_sigkill_during_group_commits_loses_no_entry_whose_append_returned(
    tmp_path: Path,
) -> None:
    """64 tasks append as fast as the disk allows (batches of many entries per commit); the
    process SIGKILLs itself right after its 2,000th append returned, while the writer is
    busy with the other tasks' batch. Every entry whose `append` returned (printed before
    the kill) is in the journal, and the batches really held several entries each."""
    db = tmp_path / "j.db"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(db), "2000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    acked: list[int] = []
    commits = appended = 0
    for line in proc.stdout.splitlines():
        seq, commits, appended = (int(x) for x in line.split())
        acked.append(seq)
    assert len(acked) == 2000
    assert appended > 2 * commits > 0, (commits, appended)  # grouped, not one per entry
    with sqlite3.connect(db) as c:
        stored = {seq for (seq,) in c.execute("SELECT seq FROM entries")}
        (check,) = c.execute("PRAGMA integrity_check").fetchone()
    assert check == "ok"
    assert set(acked) <= stored, sorted(set(acked) - stored)[:10]


@pytest.mark.parametrize(
    ("released", "fresh", "takeover", "holder_dead", "granted", "live"),
    [
        (True, True, False, False, True, None),  # a released lease is free
        (False, True, False, False, False, True),  # a live holder: wait for it
        (False, True, True, False, False, True),  # ... even with takeover
        (False, False, False, False, False, False),  # silent: only resume takes it over
        (False, False, True, False, True, None),
        (False, True, True, True, True, None),  # proven dead: taken over at once
        (False, True, False, True, False, False),  # ... but only by resume
    ],
)
def test_the_lease_rule_every_journal_applies(
    released: bool, fresh: bool, takeover: bool, holder_dead: bool, granted: bool, live: bool
) -> None:
    """`check_grant` (journal/base.py), the one copy of the takeover rule the SQLite,
    PostgreSQL and in-memory journals apply; the refusal says whether to wait or resume."""
    since = dt.datetime(2026, 11, 30, 4, 0, tzinfo=dt.UTC)
    args = ("shop", "runner-1:4242", "d1", since, since)
    flags = {
        "released": released,
        "fresh": fresh,
        "takeover": takeover,
        "holder_dead": holder_dead,
    }
    if granted:
        check_grant(*args, **flags)
        return
    with pytest.raises(LeaseHeld) as info:
        check_grant(*args, **flags)
    assert "pid 4242 on machine runner-1" in info.value.message
    assert info.value.hint == (
        "wait for it to finish" if live else "run `immunity resume -c FILE` to finish or undo it"
    )


@pytest.mark.anyio
async def test_a_closed_journal_refuses_calls_and_closing_twice_is_harmless(
    tmp_path: Path,
) -> None:
    """close() finishes what was asked, ends the writer thread; later calls raise
    JournalError instead of waiting for a writer that is gone."""
    j = SqliteJournal(tmp_path / "j.db")
    d = await j.begin("shop", "v2", {})
    await j.append(d.id, "deployment.started")
    writer = j._writer
    await j.close()
    await j.close()
    assert writer is not None and not writer.is_alive()
    with pytest.raises(JournalError, match="closed"):
        await j.append(d.id, "host.step_started")
    with sqlite3.connect(tmp_path / "j.db") as c:
        assert [k for (k,) in c.execute("SELECT kind FROM entries")] == ["deployment.started"]


@pytest.mark.anyio
async def test_append_many_writes_in_order_all_or_none(tmp_path: Path) -> None:
    """`append_many`: its entries get consecutive seqs in the order given, each row holding
    its own data; with a stale token none is written (LeaseLost), as one transaction."""
    from immunity.errors import LeaseLost

    j = SqliteJournal(tmp_path / "j.db")
    d = await j.begin("shop", "v2", {})
    lease = await j.acquire_lease("shop", "a:1", d.id, 30)
    items = [
        ("host.step_finished", "h1", "drain", {"seconds": 2.0}),
        ("host.step_started", "h1", "stop", {"release": "v2"}),
    ]
    got = await j.append_many(d.id, items, token=lease.token)
    assert [(e.kind, e.host, e.step, e.data) for e in got] == [tuple(i) for i in items]
    assert got[1].seq == got[0].seq + 1
    with pytest.raises(LeaseLost):
        await j.append_many(d.id, items, token=lease.token + 1)
    assert [(e.seq, e.kind, e.step) for e in await j.entries(d.id)] == [
        (e.seq, e.kind, e.step) for e in got
    ]
    await j.close()


@pytest.mark.anyio
async def test_append_all_through_a_wrapper_is_one_append_at_a_time(tmp_path: Path) -> None:
    """The fault suite's kill point forwards other attributes to the journal it wraps;
    `append_all` must not reach the inner `append_many` through it (the kill point counts
    single appends), so each item goes through the wrapper's own `append`."""
    from immunity.journal.base import append_all
    from immunity.journal.faults import KillPoint

    inner = SqliteJournal(tmp_path / "j.db")
    d = await inner.begin("shop", "v2", {})
    wrapped = KillPoint(inner, "host.step_started", 10**9)
    items = [("host.step_started", f"h{i}", "drain", {}) for i in range(3)]
    entries = await append_all(wrapped, d.id, items)
    assert wrapped._seen == 3
    assert [e.host for e in entries] == ["h0", "h1", "h2"]
    await inner.close()
