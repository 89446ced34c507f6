"""A host's walk journals each step's start in the same durable write as the previous step's
finish (and its last finish with `host.switched`): 8 writes per switch instead of 15 on a
journal that can (SQLite), the same entries in the same order, folded alike. Real time, a
real SQLite file, the in-memory fleet with no latencies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from immunity.domain import LbState
from immunity.engine.capacity import CapacityGuard
from immunity.engine.fleetview import FleetState, derive
from immunity.engine.host import STEPS, HostSwitcher
from immunity.engine.record import Recorder
from immunity.journal.base import EntryItem, JournalEntry
from immunity.journal.sqlite import SqliteJournal
from immunity.testing import Behaviour, memory_fleet

GOOD = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)}


class CountingJournal(SqliteJournal):
    """Counts durable writes (each `append` or `append_many` is one commit wait)."""

    writes = 0

    async def append(self, deployment_id: str, kind: str, **kw: Any) -> JournalEntry:
        self.writes += 1
        return await super().append(deployment_id, kind, **kw)

    async def append_many(
        self, deployment_id: str, items: Sequence[EntryItem], **kw: Any
    ) -> list[JournalEntry]:
        self.writes += 1
        return await super().append_many(deployment_id, items, **kw)


def test_a_switch_is_one_write_per_step_and_the_journal_says_the_same(tmp_path: Path) -> None:
    journal = CountingJournal(tmp_path / "j.db")
    fleet, world = memory_fleet(3, releases=GOOD, journal=journal)
    fallbacks: Mapping[str, str] = {h.name: "v1" for h in fleet.hosts}

    async def main() -> tuple[FleetState, list[JournalEntry]]:
        record = await journal.begin(fleet.app, "v2", {"fallbacks": dict(fallbacks)})
        lease = await journal.acquire_lease(fleet.app, "t:1", record.id, 30)
        view = FleetState(fleet.hosts, release="v2", fallbacks=fallbacks)
        rec = Recorder(fleet, record.id, "v2", lease.token, view=view)
        switcher = HostSwitcher(fleet, rec, CapacityGuard(3, view.out))
        async with anyio.create_task_group() as tg:
            for h in fleet.hosts:
                tg.start_soon(switcher.switch, h, "v2")
        entries = list(await journal.entries(record.id))
        await journal.close()
        return view, entries

    view, entries = anyio.run(main)
    assert {(s.active, s.lb) for s in world.hosts.values()} == {("v2", LbState.SERVING)}
    assert journal.writes == 3 * (len(STEPS) + 1), journal.writes  # 15 each, one at a time
    want = [(k, s) for s in STEPS for k in ("host.step_started", "host.step_finished")]
    for h in fleet.hosts:
        mine = [(e.kind, e.step) for e in entries if e.host == h.name]
        assert mine == [*want, ("host.switched", None)], h.name
        finished = [e for e in entries if e.host == h.name and e.kind == "host.step_finished"]
        assert all(e.data["release"] == "v2" and e.data["seconds"] >= 0 for e in finished)
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    # what the run folded as it wrote equals the fold of what is on disk
    assert view.view() == derive(entries, None, fleet.hosts, release="v2", fallbacks=fallbacks)
