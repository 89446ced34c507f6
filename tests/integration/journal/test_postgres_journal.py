"""What only the PostgreSQL journal has: a versioned schema upgraded in place, errors that
name the server but never the password, a connection that comes back after a restart."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import anyio
import psycopg
import pytest

from immunity.errors import ConfigError, JournalError, JournalUnavailable
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
async def test_a_journal_that_cannot_be_opened_says_why_and_how_to_check_without_the_secret(
    pg_cluster: PgCluster, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At start, each way the journal cannot be opened is JournalUnavailable (exit 4,
    "nothing was touched"), at once, naming host:port/db and the user, saying why in words
    and giving the command that checks it: a password the server refuses (in the URL or
    PGPASSWORD), a database that does not exist, nothing listening. The password is never
    in the message, hint or context; the right one opens it."""
    import time

    from servers.postgres import ROLE_PASSWORD

    db = pg_url.rsplit("/", 1)[1]
    as_alice = pg_cluster.password_role(db)
    where = f"127.0.0.1:{pg_cluster.port}/{db}"
    cases = {
        "password in the URL": (as_alice.replace("alice@", "alice:wrong-pw-in-url@"), None),
        "PGPASSWORD": (as_alice, "wrong-pw-in-env"),
        "no such database": (as_alice.replace(f"/{db}", "/nodb"), ROLE_PASSWORD),
        "nothing listening": (pg_url.replace(str(pg_cluster.port), str(pg_cluster.port + 1)), None),
    }
    said: dict[str, JournalUnavailable] = {}
    for name, (url, env) in cases.items():
        if env is None:
            monkeypatch.delenv("PGPASSWORD", raising=False)
        else:
            monkeypatch.setenv("PGPASSWORD", env)
        t0 = time.monotonic()
        with pytest.raises(JournalUnavailable) as info:
            PostgresJournal(url, timeout_s=5)
        assert time.monotonic() - t0 < 3, name
        said[name] = info.value
        text = info.value.message + (info.value.hint or "") + repr(info.value.context)
        assert "wrong-pw" not in text and ROLE_PASSWORD not in text, text
        assert info.value.exit_code == 4 and info.value.reference == "journal-unavailable"
    for name in ("password in the URL", "PGPASSWORD"):
        assert f"the journal at {where} could not be opened: the server refused the " in (
            said[name].message
        )
        assert "password of user alice" in said[name].message
        assert f'psql "postgresql://alice@{where}" -c "SELECT 1"' in (said[name].hint or "")
    assert "has no database nodb" in said["no such database"].message
    assert f"createdb -h 127.0.0.1 -p {pg_cluster.port} -U alice nodb" in (
        said["no such database"].hint or ""
    )
    assert f"nothing accepts connections at 127.0.0.1:{pg_cluster.port + 1}" in (
        said["nothing listening"].message
    )
    assert f"pg_isready -h 127.0.0.1 -p {pg_cluster.port + 1}" in (
        said["nothing listening"].hint or ""
    )
    monkeypatch.setenv("PGPASSWORD", ROLE_PASSWORD)
    j = PostgresJournal(as_alice)
    await j.close()


@pytest.mark.anyio
async def test_a_url_of_another_scheme_is_a_config_error(tmp_path: Path) -> None:
    """journal.url: mysql://... is rejected as config, not tried."""
    with pytest.raises(ConfigError) as info:
        open_journal(tmp_path / "j.db", "mysql://u:pw@db/x")
    assert "postgresql://" in info.value.message and "pw" not in info.value.message


@pytest.mark.anyio
async def test_a_session_the_server_ended_while_idle_is_replaced_before_the_next_call(
    pg_url: str,
) -> None:
    """The server ends the journal's session between two calls (`pg_terminate_backend`, as
    an administrator or a failover would): the next call sees it before sending anything
    and runs on a new session, so no call fails and every entry is written once (the old
    journal failed that call with JournalError)."""
    j = PostgresJournal(pg_url)
    try:
        d = await j.begin("shop", "v2", {})
        with psycopg.connect(pg_url, autocommit=True) as c:
            (before,) = c.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'immunity %'"
            ).fetchone()  # type: ignore[misc]
            c.execute("SELECT pg_terminate_backend(%s, 5000)", (before,))
        await j.append(d.id, "written.after.the.kill")
        await j.append(d.id, "and.the.next")
        assert [e.kind for e in await j.entries(d.id)] == ["written.after.the.kill", "and.the.next"]
        with psycopg.connect(pg_url, autocommit=True) as c:
            now = c.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'immunity %'"
            ).fetchall()
        assert len(now) == 1 and now[0][0] != before
    finally:
        await j.close()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_server_restarted_mid_run_costs_no_call(pg_cluster: PgCluster, pg_url: str) -> None:
    """The server restarted between two appends (down 2 s: connections refused meanwhile),
    as in a minor upgrade or a failover: the next append waits for it within `timeout_s`
    and is written; a server that stays down longer than `timeout_s` is a JournalError
    naming it, not a hang (and a journal that never connected fails at once: see
    `test_an_unreachable_server_is_a_journal_error_without_the_password`)."""
    import time

    j = PostgresJournal(pg_url, timeout_s=5)
    try:
        d = await j.begin("shop", "v2", {})
        await j.append(d.id, "before.restart")
        await anyio.to_thread.run_sync(pg_cluster.restart, 2.0)
        await j.append(d.id, "after.restart")
        assert [e.kind for e in await j.entries(d.id)] == ["before.restart", "after.restart"]
        stopped = threading.Thread(target=pg_cluster.restart, args=(9.0,))
        stopped.start()
        try:
            await anyio.sleep(1.0)
            t0 = time.monotonic()
            with pytest.raises(JournalError) as down:
                await j.append(d.id, "while.down")
            assert 4 < time.monotonic() - t0 < 8, time.monotonic() - t0
            assert f"127.0.0.1:{pg_cluster.port}" in down.value.message
            assert "went away and did not come back within 5s" in down.value.message
            assert not isinstance(down.value, JournalUnavailable)  # things may have changed
            assert f"pg_isready -h 127.0.0.1 -p {pg_cluster.port}" in (down.value.hint or "")
        finally:
            await anyio.to_thread.run_sync(stopped.join, 60)
        await j.append(d.id, "after.the.long.one")
        assert [e.kind for e in await j.entries(d.id)][-1] == "after.the.long.one"
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
