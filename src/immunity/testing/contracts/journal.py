"""The `Journal` contract: what the engine, `resume`, `status` and history rely on.

* What one process appended another reads back, in order (`seq` grows), `data` intact
  (JSON types, non-ASCII keys), timestamps aware.
* `deployments(app)` filters by app, in start order; `finish` sets outcome and reason and
  merges `data` into the record's.
* One lease per app with a fencing token that grows by one at every grant: a live holder
  refuses a second one (`LeaseHeld`, exit 5, naming pid, machine, deployment and since);
  an expired lease needs `takeover`; a live holder's lease is taken over only when the
  caller proved it dead; a released lease is free; leases of two apps are independent;
  racing acquirers get exactly one grant.
* A stale token changes nothing: its `append`, `heartbeat` and `finish` raise `LeaseLost`
  and leave the journal as it was; its `release_lease` frees nothing.
* Appends asked for at once (a group commit, where the journal groups them) are each
  readable by another process when their `append` returns, in the order asked for; a
  stale token in such a batch refuses only its own appends; a lease write is never
  batched with the appends around it.
* Entries written together (`append_all`: a step's finish with the next step's start) come
  back in the order given, all or none under a stale token; where the journal has
  `append_many` they are one transaction, next to each other.
* `import_deployment` (optional: `immunity journal copy` needs it) stores a deployment
  once and adds the entries appended since, keeping their times.

Two journal objects on one store stand for two orchestrator processes: the harness opens
as many as a case asks for, each a new connection (a new `MemoryJournal` on one
`MemoryStore`, a new `SqliteJournal` on one file, a new `PostgresJournal` on one database).
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

import anyio
import pytest

from immunity.errors import LeaseHeld, LeaseLost
from immunity.journal.base import DeploymentRecord, EntryItem, Journal, append_all
from immunity.testing.contracts.base import Contract
from immunity.testing.journal import MemoryJournal


class JournalHarness(ABC):
    """Opens journal objects on one shared store; closes them all at the end."""

    def __init__(self) -> None:
        self.opened: list[Journal] = []

    @abstractmethod
    def connect(self) -> Journal:
        """A new journal object (another 'process') on the harness's one store."""

    def open(self) -> Journal:
        j = self.connect()
        self.opened.append(j)
        return j

    async def aclose(self) -> None:
        """Close every journal `open` returned (each `close` once)."""
        opened, self.opened = self.opened, []
        for j in opened:
            await j.close()


class JournalContract(Contract):
    """Subclass with a `harness` fixture returning a `JournalHarness`."""

    @pytest.fixture
    async def journals(self, harness: JournalHarness) -> AsyncIterator[JournalHarness]:
        try:
            yield harness
        finally:
            await harness.aclose()

    async def test_is_a_journal(self, journals: JournalHarness) -> None:
        """The adapter satisfies the role's Protocol."""
        assert isinstance(journals.open(), Journal)

    async def test_entries_come_back_in_order_from_another_connection(
        self, journals: JournalHarness
    ) -> None:
        """What one journal object appended, a second one reads back, in order, data intact."""
        a, b = journals.open(), journals.open()
        d = await a.begin("shop", "v2", {"fallbacks": {"h1": "v1"}})
        await a.append(
            d.id, "host.step_started", host="h1", step="drain", data={"n": 1, "é": [1.5, None]}
        )
        await a.append(d.id, "host.step_finished", host="h1", step="drain")
        got = list(await b.entries(d.id))
        assert [(e.kind, e.host, e.step) for e in got] == [
            ("host.step_started", "h1", "drain"),
            ("host.step_finished", "h1", "drain"),
        ]
        assert got[0].seq < got[1].seq
        assert got[0].data == {"n": 1, "é": [1.5, None]}
        assert got[0].at.tzinfo is not None
        assert (await b.deployments("shop"))[0].data["fallbacks"] == {"h1": "v1"}

    async def test_deployments_are_per_app_in_start_order_and_finish_merges_data(
        self, journals: JournalHarness
    ) -> None:
        """deployments(app) filters and orders; finish sets outcome/reason and merges data."""
        j = journals.open()
        d1 = await j.begin("shop", "v2", {"fallbacks": {"h1": "v1"}})
        await j.begin("blog", "v9", {})
        d3 = await j.begin("shop", "v3", {})
        await j.finish(d1.id, "deployed", "all waves passed", {"result": {"exit": 0}})
        shop = list(await j.deployments("shop"))
        assert [d.id for d in shop] == [d1.id, d3.id]
        assert {d.app for d in await j.deployments()} == {"shop", "blog"}
        done = shop[0]
        assert (done.outcome, done.reason) == ("deployed", "all waves passed")
        assert done.data == {"fallbacks": {"h1": "v1"}, "result": {"exit": 0}}
        assert done.finished_at is not None and done.finished_at >= done.started_at
        assert shop[1].outcome is None and shop[1].finished_at is None

    async def test_a_second_holder_is_refused_naming_holder_machine_and_since(
        self, journals: JournalHarness
    ) -> None:
        """While the holder heart-beats, another process's acquire raises LeaseHeld (exit 5)."""
        a, b = journals.open(), journals.open()
        lease = await a.acquire_lease("shop", "runner-1:4242", "d1", 30)
        with pytest.raises(LeaseHeld) as info:
            await b.acquire_lease("shop", "runner-2:77", "d2", 30)
        msg = info.value.message
        assert "pid 4242" in msg and "machine runner-1" in msg and "d1" in msg
        assert lease.acquired_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") in msg
        assert info.value.exit_code == 5
        current = await b.current_lease("shop")
        assert current is not None and current.holder == "runner-1:4242"
        assert current.token == lease.token

    async def test_an_expired_lease_needs_takeover_and_gets_a_newer_token(
        self, journals: JournalHarness
    ) -> None:
        """A holder that stopped heart-beating: refused without takeover, granted with it."""
        a, b = journals.open(), journals.open()
        first = await a.acquire_lease("shop", "a:1", "d1", 0.0)
        with pytest.raises(LeaseHeld) as info:
            await b.acquire_lease("shop", "b:2", "d2", 30)
        assert "resume" in (info.value.hint or "")
        second = await b.acquire_lease("shop", "b:2", "d1", 30, takeover=True)
        assert second.token == first.token + 1

    async def test_takeover_of_a_live_holder_is_refused_unless_it_is_proven_dead(
        self, journals: JournalHarness
    ) -> None:
        """takeover waits for lease_ttl, unless the caller proved the holder's PID is gone."""
        a, b = journals.open(), journals.open()
        first = await a.acquire_lease("shop", "a:1", "d1", 30)
        with pytest.raises(LeaseHeld):
            await b.acquire_lease("shop", "b:2", "d1", 30, takeover=True)
        taken = await b.acquire_lease("shop", "b:2", "d1", 30, takeover=True, holder_dead=True)
        assert taken.token == first.token + 1

    async def test_a_stale_token_can_change_nothing(self, journals: JournalHarness) -> None:
        """After a takeover, the old holder's append, heartbeat and finish raise LeaseLost and
        leave the journal as it was."""
        old_proc, new_proc = journals.open(), journals.open()
        d = await old_proc.begin("shop", "v2", {})
        old = await old_proc.acquire_lease("shop", "a:1", d.id, 0.0)
        await old_proc.append(d.id, "deployment.started", token=old.token)
        new = await new_proc.acquire_lease("shop", "b:2", d.id, 30, takeover=True)
        with pytest.raises(LeaseLost):
            await old_proc.append(
                d.id, "host.step_started", host="h1", step="drain", token=old.token
            )
        with pytest.raises(LeaseLost):
            await old_proc.heartbeat(old)
        with pytest.raises(LeaseLost):
            await old_proc.finish(d.id, "deployed", "stale", {}, token=old.token)
        await old_proc.release_lease(old)  # a stale release frees nothing
        assert [e.kind for e in await new_proc.entries(d.id)] == ["deployment.started"]
        rec = (await new_proc.deployments("shop"))[0]
        assert rec.outcome is None
        cur = await new_proc.current_lease("shop")
        assert cur is not None and cur.token == new.token
        await new_proc.append(d.id, "deployment.resumed", token=new.token)
        await new_proc.heartbeat(new)
        await new_proc.finish(d.id, "deployed", "resumed", {}, token=new.token)
        assert (await new_proc.deployments("shop"))[0].outcome == "deployed"

    async def test_a_released_lease_is_free(self, journals: JournalHarness) -> None:
        """After release_lease a new deployment takes the lease at once, with a newer token."""
        a, b = journals.open(), journals.open()
        lease = await a.acquire_lease("shop", "a:1", "d1", 30)
        await a.release_lease(lease)
        assert await b.current_lease("shop") is None
        assert (await b.acquire_lease("shop", "b:2", "d2", 30)).token == lease.token + 1

    async def test_leases_of_different_apps_are_independent(self, journals: JournalHarness) -> None:
        """Two apps are leased at once by two processes."""
        a, b = journals.open(), journals.open()
        await a.acquire_lease("shop", "a:1", "d1", 30)
        await b.acquire_lease("blog", "b:2", "d2", 30)
        holders = set()
        for app in ("shop", "blog"):
            cur = await a.current_lease(app)
            assert cur is not None, app
            holders.add(cur.holder)
        assert holders == {"a:1", "b:2"}

    async def test_racing_acquirers_get_exactly_one_grant(self, journals: JournalHarness) -> None:
        """Eight processes racing for one free lease: exactly one is granted, seven refused."""
        racers = [journals.open() for _ in range(8)]
        granted: list[int] = []
        refused: list[str] = []

        async def race(i: int) -> None:
            try:
                lease = await racers[i].acquire_lease("shop", f"m{i}:{i}", f"d{i}", 30)
                granted.append(lease.token)
            except LeaseHeld as exc:
                refused.append(exc.message)

        with anyio.fail_after(60):  # a journal doing I/O in worker threads races for real
            async with anyio.create_task_group() as tg:
                for i in range(len(racers)):
                    tg.start_soon(race, i)
        assert len(granted) == 1 and len(refused) == 7
        cur = await racers[0].current_lease("shop")
        assert cur is not None and cur.token == granted[0]

    async def test_import_deployment_is_idempotent_and_incremental(
        self, journals: JournalHarness
    ) -> None:
        """Copying a deployment twice stores it once; entries appended since are added, with
        their times. Skipped for a journal without `import_deployment` (it is optional: only
        `immunity journal copy` needs it)."""
        dst = journals.open()
        copy = getattr(dst, "import_deployment", None)
        if copy is None:
            pytest.skip("no import_deployment: `immunity journal copy` cannot write to it")
        src = MemoryJournal()
        d = await src.begin("shop", "v2", {"fallbacks": {"h1": "v1"}})
        await src.append(d.id, "deployment.started")
        rec = (await src.deployments("shop"))[0]
        assert await copy(rec, await src.entries(d.id)) == 1
        await src.append(d.id, "host.step_started", host="h1", step="drain")
        await src.finish(d.id, "deployed", "ok", {"result": {"exit": 0}})
        rec = (await src.deployments("shop"))[0]
        assert await copy(rec, await src.entries(d.id)) == 1
        assert await copy(rec, await src.entries(d.id)) == 0
        got: DeploymentRecord = (await dst.deployments("shop"))[0]
        assert (got.id, got.outcome, got.started_at) == (d.id, "deployed", rec.started_at)
        assert [e.kind for e in await dst.entries(d.id)] == [
            "deployment.started",
            "host.step_started",
        ]
        assert [e.at for e in await dst.entries(d.id)] == [e.at for e in await src.entries(d.id)]

    async def test_appends_asked_for_at_once_are_each_stored_when_they_return(
        self, journals: JournalHarness
    ) -> None:
        """100 appends at once (a group commit where the journal groups them): each entry is
        readable by another process the moment its append returns, in the order asked for."""
        a, b = journals.open(), journals.open()
        d = await a.begin("shop", "v2", {})
        lease = await a.acquire_lease("shop", "a:1", d.id, 30)
        seqs: dict[int, int] = {}
        missing: list[int] = []

        async def one(i: int) -> None:
            e = await a.append(d.id, "host.step_started", data={"i": i}, token=lease.token)
            seqs[i] = e.seq
            if e.seq not in {x.seq for x in await b.entries(d.id)}:
                missing.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(one, i)
        assert missing == []
        assert [seqs[i] for i in range(100)] == sorted(seqs.values())
        assert [e.data["i"] for e in await b.entries(d.id)] == list(range(100))

    async def test_in_a_batch_a_stale_token_refuses_only_its_own_appends(
        self, journals: JournalHarness
    ) -> None:
        """Appends of two apps asked for at once (one group commit where the journal groups):
        those whose lease was taken over raise LeaseLost and leave no row; the others are
        written."""
        j = journals.open()
        shop, blog = await j.begin("shop", "v2", {}), await j.begin("blog", "v9", {})
        ok = await j.acquire_lease("shop", "a:1", shop.id, 30)
        stale = await j.acquire_lease("blog", "a:1", blog.id, 30)
        await j.acquire_lease("blog", "b:2", blog.id, 30, takeover=True, holder_dead=True)
        lost: list[int] = []

        async def one(i: int) -> None:
            d, lease = (shop, ok) if i % 2 else (blog, stale)
            try:
                await j.append(d.id, "host.step_started", data={"i": i}, token=lease.token)
            except LeaseLost:
                lost.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(one, i)
        assert sorted(lost) == list(range(0, 100, 2))
        assert [e.data["i"] for e in await j.entries(shop.id)] == list(range(1, 100, 2))
        assert await j.entries(blog.id) == []

    async def test_a_lease_write_is_never_batched_with_the_appends_around_it(
        self, journals: JournalHarness
    ) -> None:
        """Appends asked for before a takeover are written under the old holder's token;
        those asked for after it are refused, though all were queued together: the takeover
        runs alone, in order, between two batches."""
        j = journals.open()
        d = await j.begin("shop", "v2", {})
        old = await j.acquire_lease("shop", "a:1", d.id, 30)
        outcome: dict[str, str] = {}

        async def append(name: str) -> None:
            try:
                await j.append(d.id, "host.step_started", data={"name": name}, token=old.token)
                outcome[name] = "written"
            except LeaseLost:
                outcome[name] = "refused"

        async def takeover() -> None:
            await j.acquire_lease("shop", "b:2", d.id, 30, takeover=True, holder_dead=True)

        async with anyio.create_task_group() as tg:  # tasks start (and queue) in order
            for i in range(50):
                tg.start_soon(append, f"before{i}")
            tg.start_soon(takeover)
            for i in range(50):
                tg.start_soon(append, f"after{i}")
        written = {n for n, o in outcome.items() if o == "written"}
        refused = {n for n, o in outcome.items() if o == "refused"}
        assert written == {f"before{i}" for i in range(50)}
        assert refused == {f"after{i}" for i in range(50)}
        assert len(await j.entries(d.id)) == 50

    async def test_entries_written_together_come_back_in_order_all_or_none(
        self, journals: JournalHarness
    ) -> None:
        """`append_all` as the engine writes a step's finish with the next step's start
        (`append_many` on the journals that have it, one `append` after another on the
        others): 40 hosts' batches at once, beside single appends and beside batches of an
        app whose lease was taken over. Each batch is readable by another process when it
        returns, its entries in the order given with their own data (next to each other
        where the journal has `append_many`: one transaction); a stale token's batch raises
        LeaseLost and leaves none of its entries."""
        a, b = journals.open(), journals.open()
        shop, blog = await a.begin("shop", "v2", {}), await a.begin("blog", "v9", {})
        ok = await a.acquire_lease("shop", "a:1", shop.id, 30)
        stale = await a.acquire_lease("blog", "a:1", blog.id, 30)
        await a.acquire_lease("blog", "b:2", blog.id, 30, takeover=True, holder_dead=True)
        batches: dict[str, list[int]] = {}
        unread: list[str] = []
        lost: list[str] = []

        async def walk(i: int) -> None:
            host = f"h{i}"
            items: list[EntryItem] = [
                ("host.step_finished", host, "drain", {"i": i, "seconds": 2.0}),
                ("host.step_started", host, "stop", {"i": i, "release": "v2"}),
                ("host.step_finished", host, "stop", {"i": i, "seconds": 0.2}),
            ]
            d, lease = (blog, stale) if i % 4 == 3 else (shop, ok)
            try:
                got = await append_all(a, d.id, items, token=lease.token)
            except LeaseLost:
                lost.append(host)
                return
            assert [(e.kind, e.host, e.step, dict(e.data)) for e in got] == list(items)
            batches[host] = [e.seq for e in got]
            if not {e.seq for e in got} <= {e.seq for e in await b.entries(d.id)}:
                unread.append(host)

        async def single(i: int) -> None:
            await a.append(shop.id, "verdict.looked", data={"look": i}, token=ok.token)

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(walk, i)
                tg.start_soon(single, i)
        assert unread == []
        assert sorted(lost) == sorted(f"h{i}" for i in range(3, 40, 4))
        assert await b.entries(blog.id) == []
        stored = list(await b.entries(shop.id))
        assert len(stored) == 30 * 3 + 40
        assert [e.seq for e in stored] == sorted(e.seq for e in stored)
        by_host: dict[str, list[int]] = {}
        for e in stored:
            if e.host:
                by_host.setdefault(e.host, []).append(e.seq)
        assert by_host == batches
        if getattr(type(a), "append_many", None) is not None:  # one transaction per batch
            position = {e.seq: n for n, e in enumerate(stored)}
            for host, seqs in batches.items():
                at = [position[s] for s in seqs]
                assert at == list(range(at[0], at[0] + 3)), (host, at)
