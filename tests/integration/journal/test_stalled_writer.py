"""A journal writer that stalls inside a write must block nobody for good: another process
stopped (SIGSTOP) inside an append's transaction, on a real SQLite file and a real
PostgreSQL server. Reads still answer at once; a lease it holds is refused at once, naming
it; a write that needs what it holds gets a deadline and a message naming it (SQLite), or
gets through once the server ends the stopped session's transaction (PostgreSQL); nothing
it was told is written is lost.
"""

from __future__ import annotations

import contextlib
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


HALF_OPEN = """
import os, signal, sys, psycopg
c = psycopg.connect(sys.argv[1], application_name=sys.argv[2])
c.execute("SELECT token FROM leases WHERE app='shop' FOR SHARE")
# a result far larger than the socket buffers, never read: the server blocks sending it
c.pgconn.send_query(b"SELECT repeat('x', 1000000) FROM generate_series(1, 500)")
c.pgconn.flush()
os.kill(os.getpid(), signal.SIGSTOP)
"""


def _session(url: str, application: str) -> tuple[int, str, str | None] | None:
    import psycopg

    with psycopg.connect(url) as c:
        row = c.execute(
            "SELECT pid, state, wait_event FROM pg_stat_activity WHERE application_name=%s",
            (application,),
        ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), row[2])


def wait_sleeping(url: str, applications: list[str]) -> list[int]:
    """The backend pids of the sessions of `applications`, once each is in its pg_sleep."""
    deadline = time.monotonic() + 30
    while True:
        seen = [_session(url, a) for a in applications]
        if all(s is not None and s[2] == "PgSleep" for s in seen):
            return [s[0] for s in seen if s is not None]
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


def dead_pid() -> int:
    """The PID of a process that ran on this machine and is gone."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(30)
    return p.pid


def start_half_open(url: str, application: str, procs: list[subprocess.Popen[str]]) -> int:
    """A client that holds the `shop` lease row FOR SHARE, asks for a large result and is
    SIGSTOPped before reading it (as a machine that dropped off the network mid-answer):
    its server session stays "active", blocked sending (ClientWrite), holding the row, and
    no timeout of the server's ends it. Returns the session's backend pid."""
    p = subprocess.Popen(
        [sys.executable, "-c", HALF_OPEN, url, application],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(p)
    deadline = time.monotonic() + 30
    while True:
        seen = _session(url, application)
        if seen and seen[1] == "active" and seen[2] == "ClientWrite":
            assert psutil.Process(p.pid).status() == psutil.STATUS_STOPPED
            return seen[0]
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, f"no half-open session: {seen}"
        time.sleep(0.05)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_postgres_a_half_open_session_of_an_expired_holder_is_ended_and_journaled(
    pg_url: str, stopped_writer: list[subprocess.Popen[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """The lease's holder on another machine (`far-away:4242`) dropped off mid-answer: its
    session is "active" (the server blocked sending to it) holding the lease row FOR SHARE,
    which no server timeout ends. Once its lease has expired, a takeover (resume) ends that
    session with pg_terminate_backend in about a second, not after timeout_s; the journal
    (`journal.session_ended`, written with the grant) and the log say which session and
    why; the server no longer has it."""
    from immunity.journal.postgres import PostgresJournal

    j = PostgresJournal(pg_url, timeout_s=6)
    try:
        d = await j.begin("shop", "v2", {})
        await j.acquire_lease("shop", "far-away:4242", d.id, 1.0)
        pid = start_half_open(pg_url, "immunity far-away:4242", stopped_writer)
        await anyio.sleep(1.2)  # past its lease_ttl
        t0 = time.monotonic()
        with caplog.at_level("WARNING", logger="immunity.journal.postgres"):
            got = await j.acquire_lease("shop", "here:1", d.id, 30, takeover=True)
        assert got.token == 2 and time.monotonic() - t0 < 4
        assert _session(pg_url, "immunity far-away:4242") is None
        (ended,) = [e for e in await j.entries(d.id) if e.kind == "journal.session_ended"]
        assert ended.data["backend_pid"] == pid and ended.data["state"] == "active"
        assert "far-away:4242, whose lease has expired" in ended.data["why"]
        assert f"ended PostgreSQL session backend pid {pid}" in caplog.text
        await j.append(d.id, "deployment.resumed", token=got.token)
    finally:
        await j.close()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_postgres_a_session_of_a_gone_immunity_process_is_ended(pg_url: str) -> None:
    """An immunity session whose process on this machine is gone (its PID not alive) but
    which the server still runs, in a statement holding the lease row: a grant ends it
    (its client can never read the answer) and goes on; the lease it blocked was released."""
    import threading

    import psycopg

    from immunity.journal.holder import machine_name
    from immunity.journal.postgres import PostgresJournal

    application = f"immunity {machine_name()}:{dead_pid()}"
    j = PostgresJournal(pg_url, timeout_s=6)
    errors: list[BaseException] = []
    try:
        d = await j.begin("shop", "v2", {})
        await j.release_lease(await j.acquire_lease("shop", "gone:1", d.id, 30))

        def hold() -> None:
            try:
                with psycopg.connect(pg_url, application_name=application) as c:
                    c.execute("SELECT token FROM leases WHERE app='shop' FOR SHARE")
                    c.execute("SELECT pg_sleep(60)")
            except psycopg.Error as exc:
                errors.append(exc)

        t = threading.Thread(target=hold, daemon=True)
        t.start()
        (blocker,) = wait_sleeping(pg_url, [application])
        t0 = time.monotonic()
        got = await j.acquire_lease("shop", "here:1", d.id, 30)
        assert time.monotonic() - t0 < 4
        t.join(10)
        assert _session(pg_url, application) is None
        assert errors and "terminat" in str(errors[0]).lower()
        (ended,) = [e for e in await j.entries(d.id) if e.kind == "journal.session_ended"]
        assert ended.data["backend_pid"] == blocker and "is gone" in ended.data["why"]
        assert got.token == 2
    finally:
        await j.close()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_postgres_a_stuck_session_not_ours_to_end_is_named_with_the_command(
    pg_url: str, pg_cluster: PgCluster
) -> None:
    """Sessions stuck "active" holding the lease row that we may not end: another tool's
    (`dba-console`), and an immunity session of a process that is not the lease's holder
    and not provably gone. A takeover waits `timeout_s`, then JournalLocked (exit 5) names
    them and gives the exact command that ends the first (the URL without its password);
    both sessions still run."""
    import threading

    import psycopg

    from immunity.journal.postgres import PostgresJournal

    j = PostgresJournal(pg_url.replace("postgres@", "postgres:s3cret-pw@"), timeout_s=3)
    try:
        d = await j.begin("shop", "v2", {})
        await j.acquire_lease("shop", "far-away:4242", d.id, 0.5)

        def hold(application: str) -> None:
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(pg_url, application_name=application) as c,
            ):
                c.execute("SELECT token FROM leases WHERE app='shop' FOR SHARE")
                c.execute("SELECT pg_sleep(30)")

        apps = ["dba-console", "immunity elsewhere:77"]
        threads = [threading.Thread(target=hold, args=(a,), daemon=True) for a in apps]
        for t in threads:
            t.start()
        pids = wait_sleeping(pg_url, apps)
        await anyio.sleep(0.6)  # the holder's lease has expired: a takeover may go ahead
        t0 = time.monotonic()
        with pytest.raises(JournalLocked) as locked:
            await j.acquire_lease("shop", "here:1", d.id, 30, takeover=True)
        assert 2.5 < time.monotonic() - t0 < 7
        msg, hint = locked.value.message, locked.value.hint or ""
        for pid, app in zip(pids, apps, strict=True):
            assert f"backend pid {pid} ({app}, client 127.0.0.1), active" in msg, msg
        first = min(pids, key=lambda p: msg.index(f"backend pid {p} "))
        want = (
            f'psql "postgresql://postgres@127.0.0.1:{pg_cluster.port}/{pg_url.rsplit("/", 1)[1]}" '
            f'-c "SELECT pg_terminate_backend({first})"'
        )
        assert want in hint, hint
        assert "s3cret-pw" not in msg + hint + repr(locked.value.context)
        assert locked.value.exit_code == 5
        assert all(_session(pg_url, a) is not None for a in apps)
        assert [e.kind for e in await j.entries(d.id)] == []
    finally:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = ANY(%s)",
                (["dba-console", "immunity elsewhere:77"],),
            )
        await j.close()
