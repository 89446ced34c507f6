"""SQLite journal: the embedded default.

WAL mode and `synchronous=FULL`; every write is a `BEGIN IMMEDIATE` transaction, committed
(fsync'd) before the call that asked for it returns, so a SIGKILL never loses an
acknowledged step.

**Group commit.** One writer thread per journal owns the connection and takes calls from a
queue, in order. Appends that arrive while a commit is on its way queue up; the writer then
writes every queued append in ONE transaction and commits once, and each `append` returns
only after the commit that holds its entry (so "an entry returned is on disk" still holds;
a failed commit fails every append of the batch, none of which is on disk). At 1,000 hosts
switching at once, one fsync serves hundreds of entries instead of one. Everything else
(`begin`, `finish`, the lease calls, reads) runs alone, in queue order: a lease write is
never batched, and an append's fencing token is checked inside the batch's transaction,
which holds the database's write lock, so no grant can slip between check and write.

Nothing of this runs on the event loop: the caller's task waits on a future the writer
settles (`call_soon_threadsafe`), shielded from cancellation once asked for (a write either
happens whole or raises). Leases live in the same file: one row per app, with a fencing
token that grows at every acquisition; `append(..., token=t)` checks the token inside the
write's transaction, so a process that lost its lease can change nothing more.

**A writer that stalls.** A process stopped (SIGSTOP, a debugger) or stuck on its disk
inside a write transaction keeps SQLite's write lock for as long as it stays so. WAL readers
are never blocked by it (`status`, `history`, `show` and every read here work). Writers wait
`lock_timeout_s` and then raise `JournalLocked` (exit 5) naming the process that holds the
lock (from /proc/locks), its state (e.g. stopped) and the lease it holds, with the way out;
never SQLite's bare "database is locked". `acquire_lease` reads the lease first and refuses a
held lease without waiting for the write lock at all. Every call has a deadline
(`call_timeout_s`): a writer thread stuck on a hung disk or file system makes calls raise
`JournalError` instead of hanging, and `close` does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import queue
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import psutil

from immunity.domain import utcnow
from immunity.errors import JournalError, JournalLocked
from immunity.journal.base import (
    DeploymentRecord,
    EntryItem,
    JournalEntry,
    Lease,
    check_grant,
    lease_taken_over,
    stale_token,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    release TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT,
    reason TEXT,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS deployments_app ON deployments(app, started_at);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    host TEXT,
    step TEXT,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS entries_deployment ON entries(deployment_id, seq);
CREATE TABLE IF NOT EXISTS leases (
    app TEXT PRIMARY KEY,
    holder TEXT,
    deployment_id TEXT,
    token INTEGER NOT NULL,
    ttl_s REAL NOT NULL,
    acquired_at TEXT,
    heartbeat_at TEXT,
    released INTEGER NOT NULL DEFAULT 0
);
"""


T = TypeVar("T")


def new_deployment_id() -> str:
    return utcnow().strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat()


def _parse(s: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(s) if s else None


SQLITE_BUSY = 5  # primary result code of "database is locked" (extended codes: BUSY | n << 8)
WAL_WRITE_LOCK_BYTE = 120
"""The byte of the `-shm` file a WAL writer locks (SQLite's os_unix.c: UNIX_SHM_BASE =
(22 + SQLITE_SHM_NLOCK) * 4, WAL_WRITE_LOCK = 0): who holds it is who holds the write lock."""


def write_lock_holders(path: Path) -> list[int]:
    """PIDs holding the WAL write lock of the SQLite file `path` (a POSIX write lock on
    WAL_WRITE_LOCK_BYTE of `path`-shm), from Linux's /proc/locks; [] when none or when this
    system cannot tell (not Linux, or the holder is on another machine of a shared file
    system, whose locks /proc/locks does not list)."""
    try:
        st = os.stat(f"{path}-shm")
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found: list[int] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8 or "->" in f or f[1] != "POSIX" or f[3] != "WRITE" or f[5] != where:
            continue  # "->": a process waiting for the lock, not holding it
        end = f[7]
        try:
            start, pid = int(f[6]), int(f[4])
        except ValueError:
            continue
        if start <= WAL_WRITE_LOCK_BYTE and (end == "EOF" or WAL_WRITE_LOCK_BYTE <= int(end)):
            found.append(pid)
    return found


def process_state(pid: int) -> str:
    """`pid`'s state in words for an error message ("" when it cannot be read)."""
    try:
        status = psutil.Process(pid).status()
    except (psutil.Error, OSError):
        return ""
    return {
        psutil.STATUS_STOPPED: "is stopped (SIGSTOP or a debugger)",
        psutil.STATUS_TRACING_STOP: "is stopped by a debugger",
        psutil.STATUS_DISK_SLEEP: "is waiting on its disk",
        psutil.STATUS_ZOMBIE: "has ended",
    }.get(status, f"is {status}")


MAX_BATCH = 4096
"""Most appends one transaction holds (a bound on one commit's size, not a wait)."""

INSERT_ROWS = 128
"""Most rows one INSERT statement writes (6 parameters each: 768, under any SQLite's limit)."""


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _read_back(data: Mapping[str, Any] | None, payload: str) -> dict[str, Any]:
    """The data a read of `payload` (`data` as JSON) gives back: a copy of `data` when it is
    flat (str keys; str, int, float, bool or None values: JSON gives exactly those back),
    else `json.loads(payload)`. A step's entry is flat; decoding it took most of the writer
    thread's time holding the GIL (150,000 entries at 10,000 hosts)."""
    if data is None:
        return {}
    if all(type(k) is str and type(v) in _PLAIN for k, v in data.items()):
        return dict(data)
    out: dict[str, Any] = json.loads(payload)
    return out


@functools.cache
def _insert_sql(rows: int) -> str:
    return "INSERT INTO entries(deployment_id, at, kind, host, step, data) VALUES " + ",".join(
        ["(?,?,?,?,?,?)"] * rows
    )


@dataclass(eq=False, slots=True)
class _Call:
    """One journal call queued for the writer thread.

    `appends` calls (one `append`, or one `append_many`: entries written in order, in one
    transaction, all or none) are grouped; `fn` calls run alone. The writer sets `result`
    (the list of entries, for appends) or `error` and then settles `future` on the caller's
    `loop`.
    """

    fn: Callable[[], Any] | None = None
    appends: tuple[_Append, ...] = ()
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[Any] | None = None
    result: Any = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Append:
    deployment_id: str
    kind: str
    host: str | None
    step: str | None
    data: Mapping[str, Any] | None
    token: int | None
    app: str | None


_CLOSE = _Call()


def _busy(exc: sqlite3.Error) -> bool:
    """Whether `exc` is SQLite's "database is locked" (SQLITE_BUSY and its extended codes)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_BUSY


def _settle(calls: Sequence[_Call]) -> None:
    """On the caller's loop: hand each call its result (a caller gone away is skipped)."""
    for c in calls:
        fut = c.future
        if fut is None or fut.done():
            continue
        if c.error is not None:
            fut.set_exception(c.error)
        else:
            fut.set_result(c.result)


class SqliteJournal:
    """`Journal` over one SQLite file. Safe to share between tasks, event loops and threads
    of one process.

    The connection is opened here (errors are `JournalError` at once) and then used only by
    the journal's writer thread (started at the first call, ended by `close`), which runs
    the calls one at a time in the order they were made and groups queued appends into one
    transaction (see the module docstring).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_timeout_s: float = 10.0,
        call_timeout_s: float | None = None,
    ) -> None:
        """`lock_timeout_s`: how long a write waits for another process's write lock before
        `JournalLocked`; `call_timeout_s` (default `lock_timeout_s` + 20): how long any call
        waits for the writer thread before `JournalError` (a stalled disk)."""
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.call_timeout_s = lock_timeout_s + 20.0 if call_timeout_s is None else call_timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=lock_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(lock_timeout_s * 1000)}")
            have = {
                n for (n,) in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not {"deployments", "entries", "leases"} <= have:  # else no write lock needed
                self._db.executescript(SCHEMA)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == SQLITE_BUSY:
                raise self._locked_error("opening it", exc) from exc
            raise JournalError(
                f"cannot open the journal {self.path}: {exc}",
                hint="check journal.path in immunity.yaml and that its folder is writable",
            ) from exc
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(
                f"cannot open the journal {self.path}: {exc}",
                hint="check journal.path in immunity.yaml and that its folder is writable",
            ) from exc
        self._queue: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._stuck: str | None = None  # why the writer thread is known stuck (a call timed out)
        self.commits = 0  # transactions committed by appends (for tests and benchmarks)
        self.appended = 0  # entries those transactions held
        self.in_write: Callable[[str], None] | None = None
        """The fault suite's hook (`journal.faults`): called on the writer thread with each
        appended entry's kind, inside its transaction, before the commit. None otherwise."""

    # -- the writer thread -------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run `fn()` alone on the writer thread, in order with every other call; shielded."""
        out: T = await self._submit(_Call(fn=fn))
        return out

    async def _submit(self, call: _Call) -> Any:
        if self._closed:
            raise JournalError(f"the journal {self.path} is closed")
        if self._stuck is not None:  # fail at once: the calls before it are still waiting
            raise self._stuck_error()
        self._start()
        call.loop = asyncio.get_running_loop()  # anyio on asyncio, as the engine runs
        call.future = call.loop.create_future()
        self._queue.put(call)
        # asked for: it happens whole or raises (shielded), within the call's deadline (one
        # scope for both: a shield around a `move_on_after` was two per call)
        with anyio.move_on_after(self.call_timeout_s, shield=True):
            return await call.future
        # The writer thread is stuck (a write that never returns: a hung disk or network
        # file system). The call stays queued and may still happen; the caller is told it
        # did not, and changes nothing more (JournalError).
        self._stuck = f"no call finished within {self.call_timeout_s:.0f}s"
        raise self._stuck_error()

    def _stuck_error(self) -> JournalError:
        return JournalError(
            f"the journal {self.path} did not answer: {self._stuck} (its writer waits on the "
            "disk or file system that holds it)",
            hint=f"check the disk or mount of {self.path.parent} (a hung NFS mount, a full or "
            "failing disk)",
        )

    def _start(self) -> None:
        if self._writer is not None:
            return
        with self._start_lock:
            if self._writer is None:
                t = threading.Thread(
                    target=self._write_loop, name=f"immunity-journal {self.path.name}", daemon=True
                )
                t.start()
                self._writer = t

    def _write_loop(self) -> None:
        held: _Call | None = None
        while True:
            call = held if held is not None else self._queue.get()
            held = None
            if call is _CLOSE:
                self._close_db()
                return
            if not call.appends:
                assert call.fn is not None
                try:
                    call.result = call.fn()
                except BaseException as exc:  # handed to the caller, who raises it
                    call.error = exc
                self._stuck = None  # the writer moves again
                self._wake([call])
                continue
            batch = [call]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not nxt.appends:  # runs alone, after this batch has committed
                    held = nxt
                    break
                batch.append(nxt)
            self._commit_appends(batch)
            self._stuck = None
            self._wake(batch)

    @staticmethod
    def _wake(calls: Sequence[_Call]) -> None:
        """Wake every caller of `calls`: one hop per event loop, not one per call."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        for c in calls:
            if c.loop is not None:
                by_loop.setdefault(c.loop, []).append(c)
        for loop, cs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, cs)

    def _close_db(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if _busy(exc):
                raise self._locked_error("writing", exc) from exc
            raise JournalError(f"journal write failed ({self.path}): {exc}") from exc

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            if _busy(exc):
                raise self._locked_error("reading", exc) from exc
            raise JournalError(f"journal read failed ({self.path}): {exc}") from exc

    def _locked_error(self, doing: str, exc: sqlite3.Error) -> JournalLocked:
        """What a write (or a read in WAL recovery) that waited `lock_timeout_s` for another
        process's lock says: who holds it, in what state, and which lease it holds."""
        pids = write_lock_holders(self.path)
        waited = f"{self.lock_timeout_s:g}s"
        if not pids:
            return JournalLocked(
                f"the journal {self.path} stayed locked by another process for {waited} while "
                f"{doing} it ({exc}); this system cannot tell which process holds the lock",
                hint=f"find the process using it (`fuser {self.path}`): if it is stuck, stop it "
                "(a write it had not committed is rolled back; nothing it was told is written "
                "is lost), then run the command again",
                context={"journal": str(self.path)},
            )
        pid = pids[0]
        state = process_state(pid)
        me = " (this process)" if pid == os.getpid() else ""
        lease = ""
        with contextlib.suppress(sqlite3.Error):  # reads never wait for the write lock
            for app, deployment_id, acquired_at in self._db.execute(
                "SELECT app, deployment_id, acquired_at FROM leases "
                "WHERE released=0 AND holder LIKE ?",
                (f"%:{pid}",),
            ):
                lease = f"; it holds the lease of {app} since {acquired_at} (deployment {deployment_id})"
        wake = f"resume it (`kill -CONT {pid}`) or stop it (`kill {pid}`)"
        return JournalLocked(
            f"the journal {self.path} stayed locked for {waited} while {doing} it: pid {pid}"
            f"{me} holds its write lock{' and ' + state if state else ''}{lease}",
            hint=(
                wake
                if "stopped" in state
                else f"wait for it, or stop it if it is stuck (`kill {pid}`)"
            )
            + "; a write it had not committed is rolled back, nothing it was told is written is "
            "lost; `immunity resume -c FILE` then finishes its run",
            context={"journal": str(self.path), "pid": pid, "state": state},
        )

    # -- deployments -------------------------------------------------------------------

    def _begin_sync(
        self, app: str, release: str, data: Mapping[str, Any], *, deployment_id: str | None = None
    ) -> DeploymentRecord:
        rec = DeploymentRecord(
            id=deployment_id or new_deployment_id(),
            app=app,
            release=release,
            started_at=utcnow(),
            finished_at=None,
            outcome=None,
            reason=None,
            data=dict(data),
        )
        with self._tx() as db:
            db.execute(
                "INSERT INTO deployments(id, app, release, started_at, data) VALUES (?,?,?,?,?)",
                (rec.id, app, release, _ts(rec.started_at), json.dumps(rec.data, default=str)),
            )
        return rec

    def _finish_sync(
        self,
        deployment_id: str,
        outcome: str,
        reason: str,
        data: Mapping[str, Any],
        *,
        token: int | None = None,
    ) -> None:
        with self._tx() as db:
            if token is not None:
                self._check_token(db, deployment_id, token, None)
            row = db.execute("SELECT data FROM deployments WHERE id=?", (deployment_id,)).fetchone()
            merged = {**json.loads(row[0] if row else "{}"), **dict(data)}
            db.execute(
                "UPDATE deployments SET finished_at=?, outcome=?, reason=?, data=? WHERE id=?",
                (_ts(utcnow()), outcome, reason, json.dumps(merged, default=str), deployment_id),
            )

    def _deployments_sync(self, app: str | None = None) -> Sequence[DeploymentRecord]:
        sql = "SELECT id, app, release, started_at, finished_at, outcome, reason, data FROM deployments"
        rows = self._read(
            sql + (" WHERE app=?" if app else "") + " ORDER BY started_at", (app,) if app else ()
        )
        return [self._record(r) for r in rows]

    @staticmethod
    def _record(r: tuple[Any, ...]) -> DeploymentRecord:
        started = _parse(r[3])
        assert started is not None
        return DeploymentRecord(
            r[0], r[1], r[2], started, _parse(r[4]), r[5], r[6], json.loads(r[7])
        )

    # -- entries -----------------------------------------------------------------------

    def _commit_appends(self, batch: Sequence[_Call]) -> None:
        """Write every append of `batch` in one transaction, commit once, and set each
        call's entry (or its LeaseLost). Each call's token is checked inside the transaction,
        which holds the write lock: no lease can change between the check and the commit.
        A failed transaction sets every call's error: none of them is on disk.

        The rows go in as multi-row INSERTs of up to `INSERT_ROWS` rows each, not one INSERT
        per row: SQLite releases the GIL around every statement, and while the event loop is
        busy (1,000 walks waking at one step boundary) each release costs this thread up to
        the interpreter's switch interval (5 ms) to get it back; 800 rows one statement each
        took 60-80 ms against a busy thread, one statement 1-2 ms. Holding the write lock,
        one statement's rows take consecutive `seq` values ending at its `lastrowid`."""
        written: list[tuple[_Call, list[JournalEntry]]] = []
        try:
            with self._tx() as db:
                current: dict[tuple[str, str | None], int | None] = {}
                rows: list[tuple[_Append, dt.datetime, str]] = []
                for call in batch:
                    a = call.appends[0]
                    if a.token is not None:
                        key = (a.deployment_id, a.app)
                        if key not in current:
                            current[key] = self._current_token(db, a.deployment_id, a.app)
                        if current[key] != a.token:
                            call.error = stale_token(a.token, current[key])
                            continue
                    written.append((call, []))
                    for a in call.appends:
                        rows.append((a, utcnow(), json.dumps(dict(a.data or {}), default=str)))
                entries: list[JournalEntry] = []
                for k in range(0, len(rows), INSERT_ROWS):
                    chunk = rows[k : k + INSERT_ROWS]
                    params: list[Any] = []
                    for a, at, payload in chunk:
                        params += (a.deployment_id, _ts(at), a.kind, a.host, a.step, payload)
                    cur = db.execute(_insert_sql(len(chunk)), params)
                    seq = int(cur.lastrowid or 0) - len(chunk)
                    for a, at, payload in chunk:
                        seq += 1
                        if self.in_write is not None:
                            self.in_write(a.kind)
                        entries.append(
                            JournalEntry(
                                seq,
                                a.deployment_id,
                                at,
                                a.kind,
                                a.host,
                                a.step,
                                _read_back(a.data, payload),
                            )
                        )
        except BaseException as exc:
            for call in batch:
                call.error = exc
            return
        self.commits += 1
        self.appended += len(entries)
        it = iter(entries)
        for call, mine in written:
            mine.extend(next(it) for _ in call.appends)
            call.result = mine

    @staticmethod
    def _current_token(db: sqlite3.Connection, deployment_id: str, app: str | None) -> int | None:
        """The current lease token of the deployment's app (None when it has no lease)."""
        row = db.execute(
            "SELECT token FROM leases WHERE deployment_id=? OR app=? "
            "OR app=(SELECT app FROM deployments WHERE id=?) ORDER BY token DESC LIMIT 1",
            (deployment_id, app or "", deployment_id),
        ).fetchone()
        return None if row is None else int(row[0])

    @classmethod
    def _check_token(
        cls, db: sqlite3.Connection, deployment_id: str, token: int, app: str | None
    ) -> None:
        current = cls._current_token(db, deployment_id, app)
        if current != token:
            raise stale_token(token, current)

    def _entries_sync(self, deployment_id: str) -> Sequence[JournalEntry]:
        rows = self._read(
            "SELECT seq, deployment_id, at, kind, host, step, data FROM entries "
            "WHERE deployment_id=? ORDER BY seq",
            (deployment_id,),
        )
        out = []
        for r in rows:
            at = _parse(r[2])
            assert at is not None
            out.append(JournalEntry(r[0], r[1], at, r[3], r[4], r[5], json.loads(r[6])))
        return out

    # -- leases ------------------------------------------------------------------------

    def _acquire_lease_sync(
        self,
        app: str,
        holder: str,
        deployment_id: str,
        ttl_s: float,
        *,
        takeover: bool = False,
        holder_dead: bool = False,
    ) -> Lease:
        sql = (
            "SELECT holder, deployment_id, token, ttl_s, acquired_at, heartbeat_at, released "
            "FROM leases WHERE app=?"
        )

        def check(row: tuple[Any, ...] | None, now: dt.datetime) -> int:
            if row is None:
                return 1
            check_grant(
                app,
                row[0],
                row[1],
                _parse(row[4]),
                _parse(row[5]),
                released=bool(row[6]),
                fresh=(now - dt.datetime.fromisoformat(row[5])).total_seconds() < row[3],
                takeover=takeover,
                holder_dead=holder_dead,
            )
            return int(row[2]) + 1

        # A read first: a lease that is held is refused at once, without waiting for the
        # write lock (which its holder, stopped inside a write, may keep for good).
        rows = self._read(sql, (app,))
        check(rows[0] if rows else None, utcnow())
        now = utcnow()
        with self._tx() as db:  # and again where it counts, under the write lock
            token = check(db.execute(sql, (app,)).fetchone(), now)
            db.execute(
                "INSERT INTO leases(app, holder, deployment_id, token, ttl_s, acquired_at, heartbeat_at, released) "
                "VALUES (?,?,?,?,?,?,?,0) ON CONFLICT(app) DO UPDATE SET holder=excluded.holder, "
                "deployment_id=excluded.deployment_id, token=excluded.token, ttl_s=excluded.ttl_s, "
                "acquired_at=excluded.acquired_at, heartbeat_at=excluded.heartbeat_at, released=0",
                (app, holder, deployment_id, token, ttl_s, _ts(now), _ts(now)),
            )
        return Lease(app, holder, deployment_id, token, now, now)

    def _heartbeat_sync(self, lease: Lease) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE leases SET heartbeat_at=? WHERE app=? AND token=? AND released=0",
                (_ts(utcnow()), lease.app, lease.token),
            )
            if cur.rowcount != 1:
                raise lease_taken_over(lease)

    def _release_lease_sync(self, lease: Lease) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE leases SET released=1 WHERE app=? AND token=?", (lease.app, lease.token)
            )

    def _current_lease_sync(self, app: str) -> Lease | None:
        rows = self._read(
            "SELECT holder, deployment_id, token, acquired_at, heartbeat_at FROM leases "
            "WHERE app=? AND released=0",
            (app,),
        )
        if not rows:
            return None
        r = rows[0]
        acq, hb = _parse(r[3]), _parse(r[4])
        assert acq is not None and hb is not None
        return Lease(app, r[0], r[1], int(r[2]), acq, hb)

    def _lease_ttl_sync(self, app: str) -> float | None:
        rows = self._read("SELECT ttl_s FROM leases WHERE app=?", (app,))
        return float(rows[0][0]) if rows else None

    def _import_deployment_sync(
        self, record: DeploymentRecord, entries: Sequence[JournalEntry]
    ) -> int:
        with self._tx() as db:
            db.execute(
                "INSERT INTO deployments(id, app, release, started_at, finished_at, outcome, "
                "reason, data) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "finished_at=excluded.finished_at, outcome=excluded.outcome, "
                "reason=excluded.reason, data=excluded.data",
                (
                    record.id,
                    record.app,
                    record.release,
                    _ts(record.started_at),
                    _ts(record.finished_at) if record.finished_at else None,
                    record.outcome,
                    record.reason,
                    json.dumps(dict(record.data), default=str),
                ),
            )
            have = int(
                db.execute(
                    "SELECT count(*) FROM entries WHERE deployment_id=?", (record.id,)
                ).fetchone()[0]
            )
            new = list(entries)[have:]
            db.executemany(
                "INSERT INTO entries(deployment_id, at, kind, host, step, data) VALUES (?,?,?,?,?,?)",
                [
                    (
                        record.id,
                        _ts(e.at),
                        e.kind,
                        e.host,
                        e.step,
                        json.dumps(dict(e.data), default=str),
                    )
                    for e in new
                ],
            )
        return len(new)

    # -- the async `Journal` role: each call runs the method above in the worker thread --

    async def begin(
        self, app: str, release: str, data: Mapping[str, Any], *, deployment_id: str | None = None
    ) -> DeploymentRecord:
        return await self._run(
            functools.partial(self._begin_sync, app, release, data, deployment_id=deployment_id)
        )

    async def finish(
        self,
        deployment_id: str,
        outcome: str,
        reason: str,
        data: Mapping[str, Any],
        *,
        token: int | None = None,
    ) -> None:
        await self._run(
            functools.partial(self._finish_sync, deployment_id, outcome, reason, data, token=token)
        )

    async def deployments(self, app: str | None = None) -> Sequence[DeploymentRecord]:
        return await self._run(functools.partial(self._deployments_sync, app))

    async def append(
        self,
        deployment_id: str,
        kind: str,
        *,
        host: str | None = None,
        step: str | None = None,
        data: Mapping[str, Any] | None = None,
        token: int | None = None,
        app: str | None = None,
    ) -> JournalEntry:
        """Durably append one entry (see `Journal.append`); returns once the transaction
        holding it (with the other appends queued beside it) has committed."""
        entries: list[JournalEntry] = await self._submit(
            _Call(appends=(_Append(deployment_id, kind, host, step, data, token, app),))
        )
        return entries[0]

    async def append_many(
        self,
        deployment_id: str,
        items: Sequence[EntryItem],
        *,
        token: int | None = None,
        app: str | None = None,
    ) -> list[JournalEntry]:
        """Durably append `items` (kind, host, step, data) in order, in one transaction (all
        or none; LeaseLost for all when the token is stale), grouped with the appends queued
        beside them: one commit and one wake-up for what `append` would take one each.
        Returns once that transaction has committed."""
        if not items:
            return []
        entries: list[JournalEntry] = await self._submit(
            _Call(
                appends=tuple(
                    _Append(deployment_id, kind, host, step, data, token, app)
                    for kind, host, step, data in items
                )
            )
        )
        return entries

    async def entries(self, deployment_id: str) -> Sequence[JournalEntry]:
        return await self._run(functools.partial(self._entries_sync, deployment_id))

    async def acquire_lease(
        self,
        app: str,
        holder: str,
        deployment_id: str,
        ttl_s: float,
        *,
        takeover: bool = False,
        holder_dead: bool = False,
    ) -> Lease:
        """Take the app's lease (see `Journal.acquire_lease`).

        `holder_dead` says the caller proved the holder's process is gone (same machine, PID
        not alive), so `takeover` need not wait for `lease_ttl`.
        """
        return await self._run(
            functools.partial(
                self._acquire_lease_sync,
                app,
                holder,
                deployment_id,
                ttl_s,
                takeover=takeover,
                holder_dead=holder_dead,
            )
        )

    async def heartbeat(self, lease: Lease) -> None:
        await self._run(functools.partial(self._heartbeat_sync, lease))

    async def release_lease(self, lease: Lease) -> None:
        await self._run(functools.partial(self._release_lease_sync, lease))

    async def current_lease(self, app: str) -> Lease | None:
        return await self._run(functools.partial(self._current_lease_sync, app))

    async def lease_ttl(self, app: str) -> float | None:
        return await self._run(functools.partial(self._lease_ttl_sync, app))

    async def import_deployment(
        self, record: DeploymentRecord, entries: Sequence[JournalEntry]
    ) -> int:
        """Store `record` and those of its `entries` not stored yet; return how many were new.

        Idempotent: the deployment row is upserted by id; entries (append-only, in order)
        are copied from the first one this journal does not have yet.
        """
        return await self._run(functools.partial(self._import_deployment_sync, record, entries))

    async def close(self) -> None:
        """Finish every call asked for so far, close the file and end the writer thread."""
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is None:
            self._close_db()
            return
        self._queue.put(_CLOSE)
        if self._stuck is not None:  # the writer waits on a stalled disk: do not wait for it
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.join, self.call_timeout_s)
