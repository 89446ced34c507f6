"""What only the PostgreSQL journal has: a versioned schema upgraded in place, errors that
name the server but never the password, a connection that comes back after a restart."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import anyio
import psycopg
import pytest

from immunity.errors import ConfigError, JournalError
from immunity.journal import open_journal
from immunity.journal.postgres import SCHEMA_VERSION, PostgresJournal
from servers.postgres import PgCluster


@pytest.mark.anyio
async def test_a_fresh_database_gets_the_schema_once_even_when_opened_at_once(pg_url: str) -> None:
    """Six orchestrators starting together on an empty database: one upgrade, one row."""
    errors: list[BaseException] = []
    opened: list[PostgresJournal] = []

    def start() -> None:
        try:
            opened.append(PostgresJournal(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for j in opened:
        await j.close()
    assert errors == []
    with psycopg.connect(pg_url) as c:
        rows = c.execute("SELECT version FROM immunity_schema ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))


@pytest.mark.anyio
async def test_an_older_schema_is_upgraded_in_place_keeping_its_rows(pg_url: str) -> None:
    """A database left at version 0 (tables from an older immunity, no version table yet)
    is brought up to date; reopening an up-to-date one changes nothing."""
    j = PostgresJournal(pg_url)
    d = await j.begin("shop", "v2", {})
    await j.append(d.id, "deployment.started")
    await j.close()
    with psycopg.connect(pg_url) as c:
        c.execute("DELETE FROM immunity_schema WHERE version = %s", (SCHEMA_VERSION,))
        if SCHEMA_VERSION == 1:  # nothing older to replay: the first migration is re-run
            c.execute("DROP TABLE entries, deployments, leases")
    j = PostgresJournal(pg_url)
    try:
        assert await j.schema_version() == SCHEMA_VERSION
        await j.begin("shop", "v3", {})
        assert [d.release for d in await j.deployments("shop")][-1] == "v3"
    finally:
        await j.close()


@pytest.mark.anyio
async def test_a_newer_schema_is_refused_with_a_hint(pg_url: str) -> None:
    """An immunity older than the journal's schema changes nothing and says to upgrade."""
    await PostgresJournal(pg_url).close()
    with psycopg.connect(pg_url) as c:
        c.execute("INSERT INTO immunity_schema(version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(JournalError) as info:
        PostgresJournal(pg_url)
    assert "newer" in info.value.message and "upgrade immunity" in (info.value.hint or "")


@pytest.mark.anyio
async def test_an_unreachable_server_is_a_journal_error_without_the_password(
    pg_cluster: PgCluster,
) -> None:
    """Wrong port: JournalError naming host:port/db, never the password in the URL."""
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{pg_cluster.port + 1}/shop"
    with pytest.raises(JournalError) as info:
        PostgresJournal(url, timeout_s=2)
    text = info.value.message + (info.value.hint or "")
    assert f"127.0.0.1:{pg_cluster.port + 1}/shop" in text
    assert "s3cret-pw" not in text and "s3cret-pw" not in repr(info.value.context)


@pytest.mark.anyio
async def test_a_url_of_another_scheme_is_a_config_error(tmp_path: Path) -> None:
    """journal.url: mysql://... is rejected as config, not tried."""
    with pytest.raises(ConfigError) as info:
        open_journal(tmp_path / "j.db", "mysql://u:pw@db/x")
    assert "postgresql://" in info.value.message and "pw" not in info.value.message


@pytest.mark.anyio
async def test_the_journal_reconnects_after_its_connection_is_killed(pg_url: str) -> None:
    """A connection the server ended fails one call with JournalError; the next reconnects."""
    j = PostgresJournal(pg_url)
    try:
        d = await j.begin("shop", "v2", {})
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'immunity%'"
            )
        with pytest.raises(JournalError):
            await j.append(d.id, "lost.maybe")
        await j.append(d.id, "written.after")
        assert [e.kind for e in await j.entries(d.id)] == ["written.after"]
    finally:
        await j.close()


@pytest.mark.anyio
async def test_appends_asked_for_at_once_share_commits(pg_url: str) -> None:
    """Group commit: 200 appends asked for at once take far fewer transactions than
    entries (the appends do not each wait in a worker thread of their own)."""
    j = PostgresJournal(pg_url)
    try:
        d = await j.begin("shop", "v2", {})
        lease = await j.acquire_lease("shop", "a:1", d.id, 30)
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(
                    functools.partial(j.append, d.id, "host.step_started", token=lease.token)
                )
        assert (j.aio.appended, len(await j.entries(d.id))) == (200, 200)
        assert j.aio.commits < 200 // 4, j.aio.commits
    finally:
        await j.close()


@pytest.mark.anyio
async def test_a_host_switch_is_one_transaction_per_step_on_the_server(pg_url: str) -> None:
    """Three hosts switched at once over the PostgreSQL journal: each step's start goes in
    the transaction of the previous step's finish (`append_many`), so each host's 15 entries
    are 8 transactions as the server records them (distinct `xmin` of its rows; 15 with one
    append per entry), in walk order, under the lease's token."""
    from immunity.domain import LbState
    from immunity.engine.capacity import CapacityGuard
    from immunity.engine.fleetview import FleetState
    from immunity.engine.host import STEPS, HostSwitcher
    from immunity.engine.record import Recorder
    from immunity.testing import Behaviour, memory_fleet

    j = PostgresJournal(pg_url)
    good = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)}
    fleet, world = memory_fleet(3, releases=good, journal=j)
    fallbacks = {h.name: "v1" for h in fleet.hosts}
    try:
        record = await j.begin(fleet.app, "v2", {"fallbacks": fallbacks})
        lease = await j.acquire_lease(fleet.app, "t:1", record.id, 30)
        view = FleetState(fleet.hosts, release="v2", fallbacks=fallbacks)
        rec = Recorder(fleet, record.id, "v2", lease.token, view=view)
        switcher = HostSwitcher(fleet, rec, CapacityGuard(3, view.out))
        async with anyio.create_task_group() as tg:
            for h in fleet.hosts:
                tg.start_soon(switcher.switch, h, "v2")
    finally:
        await j.close()
    assert {(s.active, s.lb) for s in world.hosts.values()} == {("v2", LbState.SERVING)}
    want = [(k, s) for s in STEPS for k in ("host.step_started", "host.step_finished")]
    with psycopg.connect(pg_url) as c:
        for h in fleet.hosts:
            rows = c.execute(
                "SELECT kind, step, xmin::text FROM entries WHERE deployment_id=%s AND host=%s "
                "ORDER BY seq",
                (record.id, h.name),
            ).fetchall()
            assert [(k, s) for k, s, _ in rows] == [*want, ("host.switched", None)], h.name
            assert len({x for _, _, x in rows}) == len(STEPS) + 1, (h.name, rows)
