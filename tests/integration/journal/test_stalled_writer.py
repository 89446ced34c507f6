"""A journal writer that stalls inside a write must block nobody for good: another process
stopped (SIGSTOP) inside an append's transaction, on a real SQLite file and a real
PostgreSQL server. Reads still answer at once; a lease it holds is refused at once, naming
it; a write that needs what it holds gets a deadline and a message naming it (SQLite), or
gets through once the server ends the stopped session's transaction (PostgreSQL); nothing
it was told is written is lost.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest

from immunity.errors import JournalLocked, LeaseHeld
from immunity.journal import open_journal
from immunity.journal.sqlite import SqliteJournal
from servers.postgres import PgCluster

WRITER = """
import anyio, os, sys
from pathlib import Path
from immunity.journal import open_journal

async def main():
    j = open_journal(Path("unused.db"), sys.argv[1])
    d = await j.begin("shop", "v2", {})
    lease = await j.acquire_lease("shop", f"runner-a:{os.getpid()}", d.id, float(sys.argv[2]))
    print(d.id, lease.token, flush=True)
    for i in range(5):
        e = await j.append(d.id, "host.step_started", host=f"h{i}", token=lease.token)
        print("acked", e.seq, flush=True)
    await j.close()

anyio.run(main)
"""


@pytest.fixture
def stopped_writer() -> Iterator[list[subprocess.Popen[str]]]:
    """The processes a test starts with `start_stopped`; killed at the end whatever happened."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait(30)


def start_stopped(location: str, procs: list[subprocess.Popen[str]]) -> psutil.Process:
    """A process that takes the lease of `shop` (lease_ttl 1 s) and stops itself inside the
    transaction of its 3rd append (IMMUNITY_FAULT_STOP_IN_WRITE): the 2 before are committed."""
    env = {**os.environ, "IMMUNITY_FAULT_STOP_IN_WRITE": "host.step_started:3"}
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, location, "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(p)
    proc = psutil.Process(p.pid)
    deadline = time.monotonic() + 60
    while proc.status() != psutil.STATUS_STOPPED:
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the writer never stopped inside its write"
        time.sleep(0.02)
    return proc


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_sqlite_a_writer_stopped_inside_a_write_blocks_no_reader_and_is_named(
    tmp_path: Path, stopped_writer: list[subprocess.Popen[str]]
) -> None:
    """SQLite: with a process stopped holding the write lock, reads answer at once (WAL); a
    deploy's lease request is refused at once with LeaseHeld naming the stopped pid (the
    lease is read before the write lock is asked for); a takeover, which must write, waits
    `lock_timeout_s` and gets JournalLocked (exit 5) naming the pid, that it is stopped and
    the lease it holds, not "database is locked". Once the process is killed, the takeover
    is granted and both acknowledged entries are there."""
    db = tmp_path / "journal.db"
    proc = start_stopped(f"sqlite:{db}", stopped_writer)
    j = SqliteJournal(db, lock_timeout_s=2)
    with anyio.fail_after(5):  # what status, history and show read
        (rec,) = await j.deployments("shop")
        assert [e.kind for e in await j.entries(rec.id)] == ["host.step_started"] * 2
        lease = await j.current_lease("shop")
    assert lease is not None and lease.holder == f"runner-a:{proc.pid}"

    t0 = time.monotonic()
    with pytest.raises(LeaseHeld) as held:  # deploy: refused, not "database is locked"
        await j.acquire_lease("shop", "runner-b:1", "d2", 30)
    assert time.monotonic() - t0 < 1.5, "refused only after waiting for the write lock"
    assert f"pid {proc.pid}" in held.value.message and held.value.exit_code == 5

    await anyio.sleep(1.2)  # past its lease_ttl: a takeover would be granted, if it could write
    t0 = time.monotonic()
    with pytest.raises(JournalLocked) as locked:
        await j.acquire_lease("shop", "runner-b:1", "d2", 30, takeover=True)
    waited = time.monotonic() - t0
    assert 1.5 < waited < 10, waited
    msg = locked.value.message
    assert f"pid {proc.pid} holds its write lock and is stopped" in msg, msg
    assert "holds the lease of shop since" in msg and rec.id in msg, msg
    assert f"kill -CONT {proc.pid}" in (locked.value.hint or "")
    assert locked.value.exit_code == 5 and "database is locked" not in msg

    proc.kill()
    stopped_writer[0].wait(30)
    with anyio.fail_after(5):
        got = await j.acquire_lease("shop", "runner-b:1", "d2", 30, takeover=True)
    assert got.token == 2
    assert [e.kind for e in await j.entries(rec.id)] == ["host.step_started"] * 2
    await j.close()
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_postgres_a_writer_stopped_inside_a_write_blocks_no_reader_and_not_for_good(
    pg_url: str, stopped_writer: list[subprocess.Popen[str]]
) -> None:
    """PostgreSQL: with a process stopped inside an append's transaction (holding the lease
    row FOR SHARE), reads answer at once; a deploy's lease request is refused at once naming
    the stopped pid (not after lock_timeout); a takeover past lease_ttl gets through once the
    server ends the stopped session's idle transaction (`idle_in_transaction_session_timeout`,
    5 s), and the stopped write is not in the journal. Woken, the stopped process writes it
    again on a new connection and is refused: its lease was taken over (LeaseLost)."""
    proc = start_stopped(pg_url, stopped_writer)
    j = open_journal(Path("unused.db"), pg_url)
    try:
        with anyio.fail_after(5):
            (rec,) = await j.deployments("shop")
            assert [e.kind for e in await j.entries(rec.id)] == ["host.step_started"] * 2
            lease = await j.current_lease("shop")
        assert lease is not None and lease.holder == f"runner-a:{proc.pid}"

        t0 = time.monotonic()
        with pytest.raises(LeaseHeld) as held:
            await j.acquire_lease("shop", "runner-b:1", "d2", 30)
        assert time.monotonic() - t0 < 1.5, "refused only after waiting for the lease row"
        assert f"pid {proc.pid}" in held.value.message

        await anyio.sleep(1.2)  # past lease_ttl: another machine's resume takes it over
        t0 = time.monotonic()
        with anyio.fail_after(12):
            got = await j.acquire_lease("shop", "runner-b:1", "d2", 30, takeover=True)
        assert got.token == 2 and time.monotonic() - t0 < 10
        assert [e.kind for e in await j.entries(rec.id)] == ["host.step_started"] * 2

        proc.resume()
        p = stopped_writer[0]
        out, err = p.communicate(timeout=60)
        assert p.returncode != 0 and "LeaseLost: lease token 1 is stale" in err, (out, err)
        assert out.count("acked") == 2
        assert [e.kind for e in await j.entries(rec.id)] == ["host.step_started"] * 2
    finally:
        await j.close()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_postgres_a_writer_stopped_past_the_idle_timeout_goes_on_when_woken(
    pg_url: str, stopped_writer: list[subprocess.Popen[str]]
) -> None:
    """The server ends the stopped writer's transaction after `idle_s`; woken with nobody
    having taken its lease, the writer writes that entry again on a new connection and goes
    on: every append acknowledged, each once, no JournalError for a process that was only
    stopped for a while."""
    proc = start_stopped(pg_url, stopped_writer)
    await anyio.sleep(7)  # > idle_s (5 s): the server has ended its session
    proc.resume()
    p = stopped_writer[0]
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, (out, err)
    assert out.count("acked") == 5
    j = open_journal(Path("unused.db"), pg_url)
    try:
        (rec,) = await j.deployments("shop")
        assert [e.host for e in await j.entries(rec.id)] == [f"h{i}" for i in range(5)]
    finally:
        await j.close()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_postgres_a_foreign_session_holding_the_lease_row_is_named_past_the_deadline(
    pg_url: str,
) -> None:
    """Another tool's session (not ours: no idle timeout of ours applies) sits idle in a
    transaction holding the lease row FOR UPDATE: taking the lease and appending both end
    after the journal's `timeout_s` with JournalLocked (exit 5) naming that session's
    application, client and backend pid, and how to end it; reads still answer."""
    import psycopg

    from immunity.journal.postgres import PostgresJournal

    j = PostgresJournal(pg_url, timeout_s=2)
    try:
        d = await j.begin("shop", "v2", {})
        lease = await j.acquire_lease("shop", "runner-a:1", d.id, 30)
        await j.release_lease(lease)
        with psycopg.connect(pg_url, application_name="dba-console") as dba:
            dba.execute("SELECT * FROM leases WHERE app='shop' FOR UPDATE")  # left open
            (dba_pid,) = dba.execute("SELECT pg_backend_pid()").fetchone()  # type: ignore[misc]
            for call in (
                lambda: j.acquire_lease("shop", "runner-b:2", d.id, 30),
                lambda: j.append(d.id, "host.step_started", token=lease.token),
            ):
                t0 = time.monotonic()
                with pytest.raises(JournalLocked) as locked:
                    await call()
                assert 1.5 < time.monotonic() - t0 < 8
                msg = locked.value.message
                assert f"backend pid {dba_pid} (dba-console, client 127.0.0.1)" in msg, msg
                assert "idle in transaction" in msg, msg
                assert f"pg_terminate_backend({dba_pid})" in (locked.value.hint or "")
                assert locked.value.exit_code == 5
            with anyio.fail_after(3):
                assert len(await j.deployments("shop")) == 1
            dba.rollback()
        with anyio.fail_after(5):
            await j.acquire_lease("shop", "runner-b:2", d.id, 30)
    finally:
        await j.close()


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_sqlite_a_writer_stuck_on_its_disk_makes_calls_fail_not_hang(tmp_path: Path) -> None:
    """The journal's writer thread stuck inside a write (as on a hung disk or NFS mount: the
    fault hook blocks it inside the transaction): the append raises JournalError naming the
    file after `call_timeout_s`, later calls raise at once instead of queueing behind it,
    `close` returns at once, and another connection still reads what was committed."""
    import threading

    from immunity.errors import JournalError

    db = tmp_path / "journal.db"
    j = SqliteJournal(db, lock_timeout_s=1, call_timeout_s=2)
    d = await j.begin("shop", "v2", {})
    await j.append(d.id, "host.step_started")
    disk = threading.Event()
    j.in_write = lambda kind: disk.wait(50) if kind == "stalls" else None
    try:
        t0 = time.monotonic()
        with pytest.raises(JournalError) as stuck:
            await j.append(d.id, "stalls")
        assert 1.5 < time.monotonic() - t0 < 6
        assert str(db) in stuck.value.message and "did not answer" in stuck.value.message
        t0 = time.monotonic()
        with pytest.raises(JournalError, match="did not answer"):
            await j.entries(d.id)
        assert time.monotonic() - t0 < 0.5
        with anyio.fail_after(1):
            await j.close()
        other = SqliteJournal(db)
        with anyio.fail_after(3):
            assert [e.kind for e in await other.entries(d.id)] == ["host.step_started"]
        await other.close()
    finally:
        disk.set()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_postgres_a_server_that_stops_answering_is_a_journal_error_past_the_deadline(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    """The PostgreSQL server stopped (SIGSTOP to the postmaster and every backend of this
    test's cluster): a call ends with JournalError naming the server, with a hint, at the
    journal's deadline (timeout_s * 2 + 5), not never; `close` does not wait for it; once the
    server runs again the journal reconnects and writes."""
    from immunity.errors import JournalError
    from immunity.journal.postgres import PostgresJournal

    j = PostgresJournal(pg_url, timeout_s=2)
    d = await j.begin("shop", "v2", {})
    postmaster = psutil.Process(int((pg_cluster.data / "postmaster.pid").read_text().split()[0]))
    server = [postmaster, *postmaster.children(recursive=True)]
    try:
        for p in server:
            p.suspend()
        t0 = time.monotonic()
        with pytest.raises(JournalError) as silent:
            await j.append(d.id, "host.step_started")
        assert 8 < time.monotonic() - t0 < 15
        assert "did not answer within 9s" in silent.value.message
        assert "pg_isready" in (silent.value.hint or "")
    finally:
        for p in server:
            p.resume()
    with anyio.fail_after(20):
        await j.append(d.id, "host.step_finished")
        assert [e.kind for e in await j.entries(d.id)][-1] == "host.step_finished"
    with anyio.fail_after(5):
        await j.close()


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_postgres_a_session_stalled_inside_the_schema_upgrade_is_named(pg_url: str) -> None:
    """A session holding the schema upgrade's advisory lock, idle in its transaction (a
    process stopped mid-upgrade, or another tool): opening the journal on a fresh database,
    which must upgrade, ends after `timeout_s` with JournalLocked naming that session; once
    it ends, the journal opens."""
    import psycopg

    from immunity.journal.postgres import _SCHEMA_LOCK, PostgresJournal

    with psycopg.connect(pg_url, application_name="stalled-upgrade") as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        (pid,) = other.execute("SELECT pg_backend_pid()").fetchone()  # type: ignore[misc]
        t0 = time.monotonic()
        with pytest.raises(JournalLocked) as locked:
            PostgresJournal(pg_url, timeout_s=2)
        assert 1.5 < time.monotonic() - t0 < 8
        assert f"backend pid {pid} (stalled-upgrade" in locked.value.message
        other.rollback()
    j = PostgresJournal(pg_url, timeout_s=2)
    try:
        assert await j.schema_version() >= 1
    finally:
        await j.close()
