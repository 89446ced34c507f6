"""PostgreSQL journal: one shared journal for many apps, teams and orchestrator machines.

`AsyncPostgresJournal` speaks to the server through psycopg 3's `AsyncConnection`; every
write is committed (`synchronous_commit=on`, the server default) before the call returns.
Calls take the connection one at a time, in the order they were asked for. Appends use
**group commit**: the appends asked for since the last other call form a group, the first
of them to get the connection writes the whole group in one transaction (one
`INSERT … SELECT FROM unnest` statement, one WAL flush), and each returns once that commit
is done. `append_many` joins a group with several entries at once, next to each other and
in order (the engine writes a step's finish with the next step's start that way: one commit
wait per step).
`PostgresJournal` is the `Journal` the engine uses: it runs the async journal on an event
loop of its own thread (so one connection serves every event loop of the process); the
engine's loop awaits each call's future there without tying up a worker thread.

Leases are rows of `leases`, one per app, with a fencing token that grows by one at every
grant and a heartbeat stamped by the *server's* clock (`clock_timestamp()`), so orchestrators
on machines whose clocks disagree still agree on who is live. Every write made with a token
(`append`, `finish`, `heartbeat`) locks the app's lease row `FOR SHARE` and checks the token
inside its own transaction: a grant to another process either commits before the write (the
write is refused with `LeaseLost`) or waits until the write has committed.

The schema is versioned (`immunity_schema`) and upgraded in place on open, under a
transaction-level advisory lock so that orchestrators starting at once upgrade it once; see
docs/journal.md.

**A session that stalls.** A process stopped (SIGSTOP) or stuck inside one of its
transactions keeps that transaction's locks (the lease row `FOR SHARE` of an append). Reads
never wait for it (MVCC). Our sessions set `idle_in_transaction_session_timeout`
(`idle_s`): a transaction left idle that long (its process stopped between two statements)
is ended by the server, which releases its locks; the stopped process's uncommitted write
is rolled back and was never acknowledged. `acquire_lease` reads the lease first and
refuses a held lease without waiting for any lock. A wait past `lock_timeout` (e.g. behind
another tool's session, which our idle timeout does not cover) raises `JournalLocked`
(exit 5) naming the session in the way (application, client, backend pid, state, since);
a server that does not answer at all is a `JournalError` past the call's deadline.

**A half-open session** (its client's machine gone mid-answer: the server keeps it
"active", blocked sending, holding the lease row; no server timeout ends it): a lease grant
waiting for the row looks at who holds it every second and ends (`pg_terminate_backend`) a
session that is ours and `orphaned` (its holder's lease expired, or its
process on this machine is gone), journaling `journal.session_ended` in the grant's
transaction; any other session is named, with the command that ends it.

**A server restarted mid-run** (upgrade, failover, a session terminated): a session the
server ended while idle is noticed before a call sends anything (`_ended`) and the call runs
on a new connection, tried for up to `timeout_s` while the server refuses connections. The
first connection is not tried again: a wrong URL, port, password or database is
`JournalUnavailable` at once, saying which.

Errors: every psycopg error becomes `JournalError` naming the server (never the password);
`LeaseHeld` / `LeaseLost` as in `Journal`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import logging
import select
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from immunity.errors import JournalError, JournalLocked, JournalUnavailable
from immunity.journal.base import (
    DeploymentRecord,
    EntryItem,
    JournalEntry,
    Lease,
    check_grant,
    lease_taken_over,
    stale_token,
)
from immunity.journal.holder import holder_alive, holder_name
from immunity.journal.sqlite import new_deployment_id

T = TypeVar("T")
log = logging.getLogger(__name__)

# Each migration takes the schema from version i to i+1; never edit one that has shipped,
# add the next. The newest version is len(MIGRATIONS).
MIGRATIONS: list[str] = [
    # 1: deployments, entries, leases
    """
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        release TEXT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        finished_at TIMESTAMPTZ,
        outcome TEXT,
        reason TEXT,
        data JSONB NOT NULL DEFAULT '{}'
    );
    CREATE INDEX deployments_app ON deployments(app, started_at);
    CREATE TABLE entries (
        seq BIGSERIAL PRIMARY KEY,
        deployment_id TEXT NOT NULL REFERENCES deployments(id),
        at TIMESTAMPTZ NOT NULL,
        kind TEXT NOT NULL,
        host TEXT,
        step TEXT,
        data JSONB NOT NULL DEFAULT '{}'
    );
    CREATE INDEX entries_deployment ON entries(deployment_id, seq);
    CREATE TABLE leases (
        app TEXT PRIMARY KEY,
        holder TEXT,
        deployment_id TEXT,
        token BIGINT NOT NULL,
        ttl_s DOUBLE PRECISION NOT NULL DEFAULT 0,
        acquired_at TIMESTAMPTZ,
        heartbeat_at TIMESTAMPTZ,
        released BOOLEAN NOT NULL DEFAULT TRUE
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
_SCHEMA_LOCK = 0x1A3E_7A11  # advisory lock key of schema upgrades
_LOOK_S = 1.0  # a lease grant waiting for the lease row looks at who holds it this often

_DEPLOYMENT_COLS = "id, app, release, started_at, finished_at, outcome, reason, data"


def redact(url: str) -> str:
    """`host:port/dbname` of a libpq URL or conninfo: what an error may show (no password)."""
    try:
        p = conninfo_to_dict(url)
    except psycopg.Error:
        return "the PostgreSQL journal"
    host = p.get("host") or "localhost"
    port = p.get("port") or "5432"
    return f"{host}:{port}/{p.get('dbname') or p.get('user') or ''}"


APP_PREFIX = "immunity "


def application_name() -> str:
    """Our sessions' `application_name`: `immunity machine:pid`, the lease holder's name
    (`journal.holder.holder_name`), so a session can be tied to the lease it writes under.
    PostgreSQL keeps 63 bytes of it."""
    return (APP_PREFIX + holder_name()).encode()[:63].decode(errors="ignore")


@dataclass(frozen=True, slots=True)
class Session:
    """A server session that holds a lock we wait for, as `pg_stat_activity` shows it."""

    pid: int
    application: str
    client: str | None
    state: str | None
    since: dt.datetime | None
    backend_start: dt.datetime | None

    def words(self) -> str:
        when = f" since {self.since:%Y-%m-%d %H:%M:%S %Z}" if self.since else ""
        client = f", client {self.client}" if self.client else ""
        return (
            f"backend pid {self.pid} ({self.application or 'no application name'}{client}), "
            f"{self.state or 'state unknown'}{when}"
        )

    @property
    def holder(self) -> str | None:
        """The lease holder (`machine:pid`) whose immunity process opened it; None for a
        session of another tool."""
        if not self.application.startswith(APP_PREFIX):
            return None
        return self.application[len(APP_PREFIX) :] or None


def orphaned(session: Session, lease: Sequence[Any] | None) -> str | None:
    """Why `session` may be ended without asking anyone, or None when it may not.

    Only an immunity session qualifies, and only when the process it serves can no longer
    use it: that process ran on this machine and is gone (`holder_alive` False: its client
    end is dead, the server has not noticed yet), or it holds the lease we are granted over
    and has stopped heart-beating past `lease_ttl` (`lease`: holder, ..., released at 5,
    fresh at 6, as `acquire_lease` reads it). A released lease's holder may be starting its
    next run: only its death counts then. Whatever it was writing was
    never acknowledged; had it gone on, its fencing token would be refused anyway. A session
    of another tool, or of a live holder, is never ended by us."""
    holder = session.holder
    if holder is None:
        return None
    if holder_alive(holder, session.backend_start) is False:
        return f"its immunity process ({holder}) is gone"
    if lease is not None and lease[0] == holder and not lease[5] and not lease[6]:
        return f"it belongs to {holder}, whose lease has expired (no heartbeat within lease_ttl)"
    return None


@dataclass(eq=False, slots=True)
class _Append:
    """One append waiting for its group's commit."""

    deployment_id: str
    kind: str
    host: str | None
    step: str | None
    data: dict[str, Any]
    token: int | None
    done: bool = False
    entry: JournalEntry | None = None
    error: BaseException | None = None


def _copy_outcome(src: concurrent.futures.Future[T], dst: asyncio.Future[T]) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.set_exception(JournalError("the journal call was cancelled"))
    elif (exc := src.exception()) is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


def _ended(conn: psycopg.AsyncConnection[TupleRow]) -> bool:
    """Whether the server ended `conn` while it sat idle between our calls.

    A server that restarts, fails over or terminates the session sends its FATAL message
    and closes the socket, which the client reads only at its next statement: that
    statement would fail although nothing of it reached the server. Between our calls the
    socket has nothing to read, so anything readable (that message, or the end of the
    stream) means the session is over, and the call may safely run on a new connection.
    One `select` with no wait: a few microseconds a call."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


def retry_if_exception_cause_type(
    types: tuple[type[BaseException], ...],
) -> retry_if_exception:
    """tenacity: retry a `JournalError` whose cause is one of `types`."""
    return retry_if_exception(lambda exc: isinstance(exc.__cause__, types))


def _json(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """`data` as JSON would give it back (what a reader of the entry gets)."""
    out: dict[str, Any] = json.loads(json.dumps(dict(data or {}), default=str))
    return out


def _record(r: Sequence[Any]) -> DeploymentRecord:
    return DeploymentRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], dict(r[7] or {}))


class AsyncPostgresJournal:
    """The journal over one PostgreSQL database; methods as in `Journal`, but awaitable.

    Connects on first use (so it may be built outside any event loop) and again after the
    connection broke; all calls share one connection, one transaction at a time.
    `timeout_s` bounds connecting and every statement (lock waits included); `idle_s` is how
    long the server lets one of our transactions sit idle (its process stalled) before it
    ends it and releases its locks (below `timeout_s`, so a writer waiting on those locks
    gets through).
    """

    def __init__(self, url: str, *, timeout_s: float = 15.0, idle_s: float = 5.0) -> None:
        self.url = url
        self.where = redact(url)
        self.timeout_s = timeout_s
        self.idle_s = idle_s
        self.in_write: Callable[[str], None] | None = None
        """The fault suite's hook (`journal.faults`): called with each appended entry's
        kind inside its transaction, before the commit. None otherwise."""
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self._connected_once = False
        self._lock: asyncio.Lock | None = None
        self._group: list[_Append] = []  # appends asked for since the last call that wrote
        self.commits = 0  # transactions committed by appends (for tests and benchmarks)
        self.appended = 0  # entries those transactions held

    # -- connection --------------------------------------------------------------------

    def _parts(self) -> dict[str, Any]:
        """The URL's connection parameters (`host`, `port`, `user`, `dbname`...); {} when
        it cannot be read."""
        try:
            return dict(conninfo_to_dict(self.url))
        except psycopg.Error:
            return {}

    def _error(self, what: str, exc: BaseException) -> JournalError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = detail.removeprefix("connection failed: ")
        if what == "connection" and not self._connected_once:
            return self._unavailable(detail)
        if what == "connection":  # lost mid-run, and not back within timeout_s
            p = self._parts()
            host, port = p.get("host") or "localhost", p.get("port") or "5432"
            return JournalError(
                f"the journal at {self.where} went away and did not come back within "
                f"{self.timeout_s:g}s: {detail}",
                hint=f"start the PostgreSQL server again (`pg_isready -h {host} -p {port}` "
                "says when it answers)",
                context={"journal": self.where},
            )
        return JournalError(
            f"journal {what} failed ({self.where}): {detail}",
            hint="check journal.url (the server must be reachable; the password comes from "
            "${ENV} in the URL, PGPASSWORD or ~/.pgpass)",
        )

    def _unavailable(self, detail: str) -> JournalUnavailable:
        """Why the first connection failed, in words, with the command that checks it."""
        p = self._parts()
        host, port = str(p.get("host") or "localhost"), str(p.get("port") or "5432")
        user = str(p.get("user") or "")
        target = f"postgresql://{user + '@' if user else ''}{self.where}"
        check = f'`psql "{target}" -c "SELECT 1"`'
        low = detail.lower()
        if "password" in low or "authentication failed" in low:
            what = f"the server refused the password of user {user or '(default)'}"
            hint = (
                "set the right password (from ${ENV} in journal.url, PGPASSWORD or ~/.pgpass) "
                f"and check it with {check}"
            )
        elif "does not exist" in low and "database" in low:
            what = f"the server has no database {p.get('dbname') or ''}".rstrip()
            hint = (
                f"create it (`createdb -h {host} -p {port}"
                f"{' -U ' + user if user else ''} {p.get('dbname') or ''}`) or fix journal.url"
            )
        elif "refused" in low or "no such file" in low:
            what = f"nothing accepts connections at {host}:{port}"
            hint = (
                "start the PostgreSQL server or fix the host and port in journal.url; "
                f"`pg_isready -h {host} -p {port}` says when it answers"
            )
        elif "timeout" in low or "timed out" in low:
            what = f"the server at {host}:{port} did not answer within {self.timeout_s:g}s"
            hint = (
                f"check the network and firewall to {host}:{port} "
                f"(`pg_isready -h {host} -p {port}`)"
            )
        else:
            what = "the connection failed"
            hint = f"check journal.url and the server with {check}"
        return JournalUnavailable(
            f"the journal at {self.where} could not be opened: {what} ({detail})",
            hint=hint,
            context={"journal": self.where},
        )

    async def _connect(self) -> psycopg.AsyncConnection[TupleRow]:
        """The connection, (re)opened when there is none, it broke, or the server ended it
        while it was idle (a restart, a failover, `pg_terminate_backend`: see `_ended`).

        The first connection fails at once (a wrong URL, port or password is said at
        start). A reconnection is tried again for up to `timeout_s` (a server restarting
        refuses connections for a few seconds), then `JournalError`."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken and not _ended(conn):
            return conn
        if conn is not None:
            self._conn = None
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
        if not self._connected_once:
            conn = await self._open()
        else:
            retrying = AsyncRetrying(
                stop=stop_after_delay(self.timeout_s),
                wait=wait_exponential(multiplier=0.1, max=1.0),
                retry=retry_if_exception_cause_type((psycopg.OperationalError, OSError)),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    conn = await self._open()
        assert conn is not None
        try:
            await self._upgrade(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._connected_once = True
        return conn

    async def _open(self) -> psycopg.AsyncConnection[TupleRow]:
        ms = int(self.timeout_s * 1000)  # a lock wait ends first (JournalLocked names who)
        idle_ms = int(self.idle_s * 1000)
        try:
            return await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self.timeout_s)),
                application_name=application_name(),
                options=f"-c statement_timeout={ms + 2000} -c lock_timeout={ms} "
                f"-c idle_in_transaction_session_timeout={idle_ms}",
            )
        except (psycopg.Error, OSError) as exc:
            if self._connected_once:
                log.info("journal reconnection failed (%s), trying again: %s", self.where, exc)
            raise self._error("connection", exc) from exc

    async def _upgrade(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """Bring the schema to SCHEMA_VERSION, one migration per transaction.

        A schema already current is only read: no lock is taken, so a process stalled while
        it opens the journal blocks no other from opening it."""
        try:
            cur = await conn.execute("SELECT to_regclass('immunity_schema') IS NOT NULL")
            row = await cur.fetchone()
            if row and row[0]:
                cur = await conn.execute("SELECT max(version) FROM immunity_schema")
                row = await cur.fetchone()
                if row and row[0] is not None and int(row[0]) == SCHEMA_VERSION:
                    return
        except psycopg.Error as exc:
            raise self._error("schema upgrade", exc) from exc
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS immunity_schema ("
                    "version INT NOT NULL, upgraded_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                cur = await conn.execute("SELECT max(version) FROM immunity_schema")
                row = await cur.fetchone()
                have = int(row[0]) if row and row[0] is not None else 0
                if have > SCHEMA_VERSION:
                    raise JournalError(
                        f"the journal at {self.where} has schema version {have}, newer than "
                        f"this immunity knows ({SCHEMA_VERSION})",
                        hint="upgrade immunity on this machine to the version the others run",
                    )
                for version in range(have + 1, SCHEMA_VERSION + 1):
                    await conn.execute(MIGRATIONS[version - 1])
                    await conn.execute(
                        "INSERT INTO immunity_schema(version) VALUES (%s)", (version,)
                    )
        except psycopg.errors.LockNotAvailable as exc:  # another process stalled mid-upgrade
            raise await self._locked_error(conn, "schema upgrade") from exc
        except psycopg.Error as exc:
            raise self._error("schema upgrade", exc) from exc

    @asynccontextmanager
    async def _tx(self, what: str = "write") -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        """One transaction, alone, after every append asked for before this call."""
        async with self._alone(what) as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def _alone(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        """The connection, alone (autocommit), after every append asked for before this
        call; psycopg errors mapped."""
        self._group = []  # appends asked for from now on commit after this call
        async with self._locked() as conn:
            try:
                yield conn
            except psycopg.errors.LockNotAvailable as exc:
                raise await self._locked_error(conn, what) from exc
            except psycopg.Error as exc:
                raise self._error(what, exc) from exc

    async def _lockers(self, conn: psycopg.AsyncConnection[TupleRow]) -> list[Session]:
        """The sessions that may hold what we wait for: those with a row lock (or stronger)
        on `leases`, or the schema's advisory lock, in an open transaction, oldest first, as
        far as the server lets us see them (a plain reader's lock blocks nobody: left out)."""
        with contextlib.suppress(psycopg.Error):
            cur = await conn.execute(
                "SELECT DISTINCT a.pid, a.application_name, host(a.client_addr), a.state, "
                "a.state_change, a.xact_start, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.granted AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL "
                "AND ((l.relation = to_regclass('leases') AND l.mode <> 'AccessShareLock') "
                "OR (l.locktype = 'advisory' AND l.objid = %s)) ORDER BY a.xact_start LIMIT 5",
                (_SCHEMA_LOCK,),
            )
            return [
                Session(int(pid), app or "", client, state, since, started)
                for pid, app, client, state, since, _, started in await cur.fetchall()
            ]
        return []

    def terminate_command(self, pid: int | str) -> str:
        """The command that ends backend `pid` on this journal's server (no password)."""
        p = self._parts()
        user = f"{p['user']}@" if p.get("user") else ""
        target = f"postgresql://{user}{self.where}"
        return f'psql "{target}" -c "SELECT pg_terminate_backend({pid})"'

    async def _locked_error(
        self,
        conn: psycopg.AsyncConnection[TupleRow],
        what: str,
        sessions: list[Session] | None = None,
    ) -> JournalLocked:
        """What a statement that waited `lock_timeout` says: the sessions holding locks on
        the lease rows (or the schema's advisory lock) in an open transaction, and the
        command that ends the first (none of them is one we may end ourselves)."""
        if sessions is None:
            sessions = await self._lockers(conn)
        who = "; ".join(x.words() for x in sessions) or "a session this user cannot see"
        first: int | str = sessions[0].pid if sessions else "PID"
        return JournalLocked(
            f"journal {what} waited {self.timeout_s:g}s for a lock at {self.where}: held by {who}",
            hint="if that session is stuck, end it as a database superuser or its owner: "
            f"`{self.terminate_command(first)}` (pg_terminate_backend({first})); its "
            "uncommitted write is rolled back; then run the command again",
            context={"journal": self.where, "backend_pids": [x.pid for x in sessions]},
        )

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # FIFO: calls run in the order they were asked for
            yield await self._connect()

    async def schema_version(self) -> int:
        async with self._tx("read") as c:
            row = await (await c.execute("SELECT max(version) FROM immunity_schema")).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # -- deployments -------------------------------------------------------------------

    async def begin(
        self, app: str, release: str, data: Mapping[str, Any], *, deployment_id: str | None = None
    ) -> DeploymentRecord:
        did = deployment_id or new_deployment_id()
        payload = json.loads(json.dumps(dict(data), default=str))
        async with self._tx() as c:
            cur = await c.execute(
                "INSERT INTO deployments(id, app, release, started_at, data) "
                "VALUES (%s, %s, %s, clock_timestamp(), %s) RETURNING started_at",
                (did, app, release, Jsonb(payload)),
            )
            row = await cur.fetchone()
        assert row is not None
        return DeploymentRecord(did, app, release, row[0], None, None, None, payload)

    async def finish(
        self,
        deployment_id: str,
        outcome: str,
        reason: str,
        data: Mapping[str, Any],
        *,
        token: int | None = None,
    ) -> None:
        payload = json.loads(json.dumps(dict(data), default=str))
        async with self._tx() as c:
            if token is not None:
                await self._check_token(c, deployment_id, token)
            await c.execute(
                "UPDATE deployments SET finished_at=clock_timestamp(), outcome=%s, reason=%s, "
                "data = data || %s WHERE id=%s",
                (outcome, reason, Jsonb(payload), deployment_id),
            )

    async def deployments(self, app: str | None = None) -> Sequence[DeploymentRecord]:
        sql = f"SELECT {_DEPLOYMENT_COLS} FROM deployments"
        async with self._tx("read") as c:
            if app:
                cur = await c.execute(sql + " WHERE app=%s ORDER BY started_at, id", (app,))
            else:
                cur = await c.execute(sql + " ORDER BY started_at, id")
            rows = await cur.fetchall()
        return [_record(r) for r in rows]

    # -- entries -----------------------------------------------------------------------

    @staticmethod
    async def _current_token(
        c: psycopg.AsyncConnection[TupleRow], deployment_id: str
    ) -> int | None:
        """The current lease token of the deployment's app (None: no lease).

        `FOR SHARE` keeps the lease row from being granted anew until this transaction ends.
        """
        cur = await c.execute(
            "SELECT l.token FROM leases l WHERE l.app = "
            "(SELECT app FROM deployments WHERE id=%s) OR l.deployment_id=%s "
            "ORDER BY l.token DESC LIMIT 1 FOR SHARE",
            (deployment_id, deployment_id),
        )
        row = await cur.fetchone()
        return None if row is None else int(row[0])

    @classmethod
    async def _check_token(
        cls, c: psycopg.AsyncConnection[TupleRow], deployment_id: str, token: int
    ) -> None:
        """Refuse (LeaseLost) unless `token` is the current one of the deployment's app."""
        current = await cls._current_token(c, deployment_id)
        if current != token:
            raise stale_token(token, current)

    async def append(
        self,
        deployment_id: str,
        kind: str,
        *,
        host: str | None = None,
        step: str | None = None,
        data: Mapping[str, Any] | None = None,
        token: int | None = None,
    ) -> JournalEntry:
        """Durably append one entry, by group commit: the append joins the group of appends
        asked for since the last other call; the first of the group to get the connection
        writes the whole group in one transaction, and every append of the group returns
        once that transaction has committed (or raises what it raised: none of the group
        is then written)."""
        (entry,) = await self._join([_Append(deployment_id, kind, host, step, _json(data), token)])
        return entry

    async def append_many(
        self,
        deployment_id: str,
        items: Sequence[EntryItem],
        *,
        token: int | None = None,
    ) -> list[JournalEntry]:
        """Durably append `items` (kind, host, step, data) in order, in one transaction and
        one round trip, all or none (with a stale `token`, LeaseLost and none written),
        grouped with the appends asked for beside them: one commit wait for what `append`
        would take one each. Their seqs increase in the order given (consecutive unless
        another process appends to the same database at that instant). Returns once that
        transaction has committed."""
        if not items:
            return []
        return await self._join(
            [_Append(deployment_id, k, h, s, _json(d), token) for k, h, s, d in items]
        )

    async def _join(self, mine: list[_Append]) -> list[JournalEntry]:
        """Add `mine` (next to each other, in order) to the group being formed and wait for
        its commit: the first of the group to get the connection writes the whole group."""
        group = self._group
        group.extend(mine)
        async with self._locked() as conn:
            if not mine[0].done:
                if self._group is group:
                    self._group = []  # later appends form the next group
                await self._commit_group(conn, group)
        entries: list[JournalEntry] = []
        for a in mine:
            if a.error is not None:
                raise a.error
            assert a.entry is not None
            entries.append(a.entry)
        return entries

    async def _commit_group(
        self, c: psycopg.AsyncConnection[TupleRow], group: list[_Append]
    ) -> None:
        """Write `group` in one transaction (each token checked inside it, the lease row
        held `FOR SHARE` until the commit) and mark each append done."""
        written: list[_Append] = []
        rows: list[tuple[int, Any]] = []
        try:
            try:
                async with c.transaction():
                    current: dict[str, int | None] = {}
                    for a in group:
                        if a.token is not None:
                            if a.deployment_id not in current:
                                current[a.deployment_id] = await self._current_token(
                                    c, a.deployment_id
                                )
                            if current[a.deployment_id] != a.token:
                                a.error = stale_token(a.token, current[a.deployment_id])
                                continue
                        written.append(a)
                    if written:
                        # One statement, not `executemany`: a pipeline left between its
                        # Sync and the COMMIT (the process stalled there) is a transaction
                        # the server's idle_in_transaction_session_timeout never ends.
                        cur = await c.execute(
                            "INSERT INTO entries(deployment_id, at, kind, host, step, data) "
                            "SELECT d, clock_timestamp(), k, h, s, x FROM unnest("
                            "%s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[]) "
                            "WITH ORDINALITY AS u(d, k, h, s, x, n) ORDER BY n "
                            "RETURNING seq, at",
                            (
                                [a.deployment_id for a in written],
                                [a.kind for a in written],
                                [a.host for a in written],
                                [a.step for a in written],
                                [Jsonb(a.data) for a in written],
                            ),
                        )
                        # seq is drawn in insert order (ORDER BY n): sorted, rows follow `written`
                        rows = sorted((int(r[0]), r[1]) for r in await cur.fetchall())
                        if self.in_write is not None:
                            for a in written:
                                self.in_write(a.kind)
            except psycopg.errors.LockNotAvailable as exc:
                raise await self._locked_error(c, "write") from exc
            except psycopg.Error as exc:
                raise self._error("write", exc) from exc
        except BaseException as exc:
            err = (
                exc
                if isinstance(exc, Exception)
                else JournalError(f"journal write interrupted ({self.where}): {exc!r}")
            )
            for a in group:
                a.error, a.done = err, True
            raise
        self.commits += 1
        self.appended += len(written)
        for a, (seq, at) in zip(written, rows, strict=True):
            a.entry = JournalEntry(seq, a.deployment_id, at, a.kind, a.host, a.step, a.data)
        for a in group:
            a.done = True

    async def entries(self, deployment_id: str) -> Sequence[JournalEntry]:
        async with self._tx("read") as c:
            cur = await c.execute(
                "SELECT seq, deployment_id, at, kind, host, step, data FROM entries "
                "WHERE deployment_id=%s ORDER BY seq",
                (deployment_id,),
            )
            rows = await cur.fetchall()
        return [JournalEntry(int(r[0]), r[1], r[2], r[3], r[4], r[5], dict(r[6])) for r in rows]

    # -- leases ------------------------------------------------------------------------

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
        """Take the app's lease (see `Journal.acquire_lease`); liveness by the server's clock.

        The lease is read first, without a lock: a lease that is held is refused at once,
        whatever locks its holder keeps (stopped inside a write), then checked again under
        `FOR UPDATE` where it counts."""
        sql = (
            "SELECT holder, deployment_id, token, acquired_at, heartbeat_at, released, "
            "clock_timestamp() - heartbeat_at < make_interval(secs => ttl_s) "
            "FROM leases WHERE app=%s"
        )

        def check(row: Sequence[Any]) -> None:
            check_grant(
                app,
                row[0],
                row[1],
                row[3],
                row[4],
                released=bool(row[5]),
                fresh=bool(row[6]),
                takeover=takeover,
                holder_dead=holder_dead,
            )

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        ended: list[dict[str, Any]] = []
        async with self._alone("write") as c:  # one turn: no append slips in between
            while True:
                seen = await (await c.execute(sql, (app,))).fetchone()
                if seen is not None:
                    check(seen)
                wait_ms = max(1, int(min(_LOOK_S, deadline - loop.time()) * 1000))
                try:
                    got = await self._grant(
                        c, sql, check, app, holder, deployment_id, ttl_s, wait_ms, ended
                    )
                    break
                except psycopg.errors.LockNotAvailable:
                    sessions = await self._lockers(c)
                    ended_one = await self._end_orphans(c, sessions, seen, ended)
                    if not ended_one and loop.time() >= deadline:
                        raise await self._locked_error(c, "write", sessions) from None
        assert got is not None
        return Lease(app, holder, deployment_id, int(got[0]), got[1], got[1])

    async def _grant(
        self,
        c: psycopg.AsyncConnection[TupleRow],
        sql: str,
        check: Callable[[Sequence[Any]], None],
        app: str,
        holder: str,
        deployment_id: str,
        ttl_s: float,
        wait_ms: int,
        ended: list[dict[str, Any]],
    ) -> Sequence[Any] | None:
        """The granting transaction: the lease row `FOR UPDATE` (waiting at most `wait_ms`
        for it: LockNotAvailable), checked again, granted; the sessions `ended` to get it
        journaled in the same transaction under the deployment (when it exists)."""
        async with c.transaction():
            await c.execute("SELECT set_config('lock_timeout', %s, true)", (f"{wait_ms}ms",))
            await c.execute(
                "INSERT INTO leases(app, token, released) VALUES (%s, 0, TRUE) "
                "ON CONFLICT (app) DO NOTHING",
                (app,),
            )
            row = await (await c.execute(sql + " FOR UPDATE", (app,))).fetchone()
            assert row is not None
            check(row)
            for x in ended:
                await c.execute(
                    "INSERT INTO entries(deployment_id, at, kind, data) "
                    "SELECT %s, clock_timestamp(), 'journal.session_ended', %s "
                    "WHERE EXISTS (SELECT 1 FROM deployments WHERE id=%s)",
                    (deployment_id, Jsonb(x), deployment_id),
                )
            cur = await c.execute(
                "UPDATE leases SET holder=%s, deployment_id=%s, token=token+1, ttl_s=%s, "
                "acquired_at=clock_timestamp(), heartbeat_at=clock_timestamp(), "
                "released=FALSE WHERE app=%s RETURNING token, acquired_at",
                (holder, deployment_id, float(ttl_s), app),
            )
            return await cur.fetchone()

    async def _end_orphans(
        self,
        c: psycopg.AsyncConnection[TupleRow],
        sessions: list[Session],
        lease: Sequence[Any] | None,
        ended: list[dict[str, Any]],
    ) -> bool:
        """End (`pg_terminate_backend`) those of `sessions` that are `orphaned`; say so in
        the log (the terminal) and in `ended` (the journal). Whether any was ended."""
        any_ended = False
        for x in sessions:
            why = orphaned(x, lease)
            if why is None or any(e["backend_pid"] == x.pid for e in ended):
                continue
            try:
                cur = await c.execute("SELECT pg_terminate_backend(%s)", (x.pid,))
                row = await cur.fetchone()
                done = bool(row and row[0])
            except psycopg.Error as exc:  # not allowed (another role): named instead
                log.warning("could not end PostgreSQL session %s: %s", x.words(), exc)
                continue
            if not done:
                continue
            any_ended = True
            ended.append(
                {
                    "backend_pid": x.pid,
                    "application": x.application,
                    "client": x.client,
                    "state": x.state,
                    "since": x.since.isoformat() if x.since else None,
                    "why": why,
                }
            )
            log.warning(
                "ended PostgreSQL session %s at %s, which held the lease row: %s; "
                "its uncommitted write is rolled back",
                x.words(),
                self.where,
                why,
            )
        return any_ended

    async def heartbeat(self, lease: Lease) -> None:
        async with self._tx() as c:
            cur = await c.execute(
                "UPDATE leases SET heartbeat_at=clock_timestamp() "
                "WHERE app=%s AND token=%s AND NOT released",
                (lease.app, lease.token),
            )
            if cur.rowcount != 1:
                raise lease_taken_over(lease)

    async def release_lease(self, lease: Lease) -> None:
        async with self._tx() as c:
            await c.execute(
                "UPDATE leases SET released=TRUE WHERE app=%s AND token=%s",
                (lease.app, lease.token),
            )

    async def current_lease(self, app: str) -> Lease | None:
        async with self._tx("read") as c:
            cur = await c.execute(
                "SELECT holder, deployment_id, token, acquired_at, heartbeat_at FROM leases "
                "WHERE app=%s AND NOT released",
                (app,),
            )
            r = await cur.fetchone()
        return Lease(app, r[0], r[1], int(r[2]), r[3], r[4]) if r else None

    async def lease_ttl(self, app: str) -> float | None:
        async with self._tx("read") as c:
            r = await (await c.execute("SELECT ttl_s FROM leases WHERE app=%s", (app,))).fetchone()
        return float(r[0]) if r else None

    # -- copy (immunity journal copy) ------------------------------------------------------

    async def import_deployment(
        self, record: DeploymentRecord, entries: Sequence[JournalEntry]
    ) -> int:
        """Store `record` and those of its `entries` not stored yet; return how many were new.

        Idempotent: the deployment row is upserted by id, and entries (append-only, in
        order) are copied from the first one the target does not have yet.
        """
        data = json.loads(json.dumps(dict(record.data), default=str))
        async with self._tx() as c:
            await c.execute(
                f"INSERT INTO deployments({_DEPLOYMENT_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (id) DO UPDATE SET finished_at=excluded.finished_at, "
                "outcome=excluded.outcome, reason=excluded.reason, data=excluded.data",
                (
                    record.id,
                    record.app,
                    record.release,
                    record.started_at,
                    record.finished_at,
                    record.outcome,
                    record.reason,
                    Jsonb(data),
                ),
            )
            cur = await c.execute(
                "SELECT count(*) FROM entries WHERE deployment_id=%s", (record.id,)
            )
            row = await cur.fetchone()
            have = int(row[0]) if row else 0
            new = list(entries)[have:]
            if new:
                async with c.cursor() as cur2:
                    await cur2.executemany(
                        "INSERT INTO entries(deployment_id, at, kind, host, step, data) "
                        "VALUES (%s, %s, %s, %s, %s, %s)",
                        [
                            (
                                record.id,
                                e.at,
                                e.kind,
                                e.host,
                                e.step,
                                Jsonb(json.loads(json.dumps(dict(e.data), default=str))),
                            )
                            for e in new
                        ],
                    )
        return len(new)


async def _again_if_ended_idle(fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
    """`fn(*args, **kw)`, once more on a new connection when the server ended the session
    because this process stood still inside a transaction past `idle_s` (stopped, stalled):
    the server rolled that transaction back, so nothing of the call happened and running it
    again is running it once (tokens are checked again: a process whose lease was taken over
    meanwhile gets LeaseLost, not a broken connection)."""
    try:
        return await fn(*args, **kw)
    except JournalError as exc:
        if not isinstance(exc.__cause__, psycopg.errors.IdleInTransactionSessionTimeout):
            raise
    return await fn(*args, **kw)


class PostgresJournal:
    """The `Journal` over `AsyncPostgresJournal`, run on a loop of its own thread.

    Each call waits at most `timeout_s` * 2 (the statement timeout plus connecting) and
    raises `JournalError` past it. The engine's loop awaits the call in a worker thread
    (shielded, like every `Journal` call), so the database is never waited for on it.
    """

    def __init__(self, url: str, *, timeout_s: float = 15.0, idle_s: float = 5.0) -> None:
        self.aio = AsyncPostgresJournal(url, timeout_s=timeout_s, idle_s=idle_s)
        self.url = url
        self.where = self.aio.where
        self._deadline = timeout_s * 2 + 5
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="immunity-journal", daemon=True
        )
        self._thread.start()
        try:
            self._call(
                self.aio.schema_version
            )  # connect (and upgrade) now: a bad URL is an error at once
        except BaseException:
            self.close_now()
            raise

    async def _acall(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        """`fn(*args, **kw)` run on the journal's loop, awaited from the engine's loop without
        tying up a worker thread (so appends of many hosts reach the journal at once and
        share commits); shielded, and `JournalError` past the deadline."""
        caller = asyncio.get_running_loop()  # anyio on asyncio, as the engine runs
        done: asyncio.Future[T] = caller.create_future()

        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            _again_if_ended_idle(fn, *args, **kw), self._loop
        )

        def relay(f: concurrent.futures.Future[T]) -> None:  # on the journal's thread
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed
                caller.call_soon_threadsafe(_copy_outcome, f, done)

        fut.add_done_callback(relay)
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._deadline):
                return await done
        fut.cancel()
        raise self._no_answer()

    def _no_answer(self) -> JournalError:
        return JournalError(
            f"the journal at {self.where} did not answer within {self._deadline:.0f}s",
            hint="check that the PostgreSQL server answers (`pg_isready`, its load, its disk) "
            "and the network to it; nothing more was changed",
        )

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        fut = asyncio.run_coroutine_threadsafe(_again_if_ended_idle(fn, *args, **kw), self._loop)
        try:
            return fut.result(timeout=self._deadline)
        except TimeoutError as exc:
            fut.cancel()
            raise self._no_answer() from exc

    @property
    def in_write(self) -> Callable[[str], None] | None:
        """The fault suite's hook (see `AsyncPostgresJournal.in_write`)."""
        return self.aio.in_write

    @in_write.setter
    def in_write(self, hook: Callable[[str], None] | None) -> None:
        self.aio.in_write = hook

    async def schema_version(self) -> int:
        return await self._acall(self.aio.schema_version)

    async def begin(
        self, app: str, release: str, data: Mapping[str, Any], *, deployment_id: str | None = None
    ) -> DeploymentRecord:
        return await self._acall(self.aio.begin, app, release, data, deployment_id=deployment_id)

    async def finish(
        self,
        deployment_id: str,
        outcome: str,
        reason: str,
        data: Mapping[str, Any],
        *,
        token: int | None = None,
    ) -> None:
        await self._acall(self.aio.finish, deployment_id, outcome, reason, data, token=token)

    async def deployments(self, app: str | None = None) -> Sequence[DeploymentRecord]:
        return await self._acall(self.aio.deployments, app)

    async def append(
        self,
        deployment_id: str,
        kind: str,
        *,
        host: str | None = None,
        step: str | None = None,
        data: Mapping[str, Any] | None = None,
        token: int | None = None,
    ) -> JournalEntry:
        return await self._acall(
            self.aio.append, deployment_id, kind, host=host, step=step, data=data, token=token
        )

    async def append_many(
        self,
        deployment_id: str,
        items: Sequence[EntryItem],
        *,
        token: int | None = None,
    ) -> list[JournalEntry]:
        """See `AsyncPostgresJournal.append_many`: one transaction, one commit wait."""
        return await self._acall(self.aio.append_many, deployment_id, items, token=token)

    async def entries(self, deployment_id: str) -> Sequence[JournalEntry]:
        return await self._acall(self.aio.entries, deployment_id)

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
        return await self._acall(
            self.aio.acquire_lease,
            app,
            holder,
            deployment_id,
            ttl_s,
            takeover=takeover,
            holder_dead=holder_dead,
        )

    async def heartbeat(self, lease: Lease) -> None:
        await self._acall(self.aio.heartbeat, lease)

    async def release_lease(self, lease: Lease) -> None:
        await self._acall(self.aio.release_lease, lease)

    async def current_lease(self, app: str) -> Lease | None:
        return await self._acall(self.aio.current_lease, app)

    async def lease_ttl(self, app: str) -> float | None:
        return await self._acall(self.aio.lease_ttl, app)

    async def import_deployment(
        self, record: DeploymentRecord, entries: Sequence[JournalEntry]
    ) -> int:
        return await self._acall(self.aio.import_deployment, record, entries)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close_now)

    def close_now(self) -> None:
        """Close the connection and stop the journal's thread (callable outside any loop)."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            with contextlib.suppress(Exception):  # closing must not hide the outcome
                self._call(self.aio.aclose)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
