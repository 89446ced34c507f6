"""`MemoryJournal`: the `Journal` role in memory, with the SQLite journal's semantics.

Entries in order with growing `seq`, deployments per app in start order, one lease per app
with a fencing token that grows at every grant; a write with a stale token raises
`LeaseLost` and changes nothing. Several `MemoryJournal`s on one `MemoryStore` stand for
several orchestrator processes on one database. Timestamps come from the injected clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from immunity.clock import SYSTEM_CLOCK, Clock
from immunity.journal.base import (
    DeploymentRecord,
    JournalEntry,
    Lease,
    check_grant,
    lease_taken_over,
    stale_token,
)
from immunity.journal.sqlite import new_deployment_id


@dataclass
class _LeaseRow:
    lease: Lease
    ttl_s: float
    released: bool = False


@dataclass
class MemoryStore:
    """What a database would hold; share one between journals to share the journal."""

    deployments: dict[str, DeploymentRecord] = field(default_factory=dict)
    entries: dict[str, list[JournalEntry]] = field(default_factory=dict)
    leases: dict[str, _LeaseRow] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)  # app -> last token granted
    seq: int = 0
    rows: int = 0  # entries appended, for benchmarks


def _plain(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """`data` as the journal gives it back: JSON types only (as a database would store it)."""
    out: dict[str, Any] = json.loads(json.dumps(dict(data or {}), default=str))
    return out


class MemoryJournal:
    """`Journal` in memory (see the module docstring). `copy_data=False` keeps `data` as
    given (no JSON round trip): for benchmarks that must not measure the encoding."""

    def __init__(
        self,
        store: MemoryStore | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        copy_data: bool = True,
    ) -> None:
        self.store = store if store is not None else MemoryStore()
        self.clock = clock
        self.copy_data = copy_data

    def _data(self, data: Mapping[str, Any] | None) -> Mapping[str, Any]:
        return _plain(data) if self.copy_data else dict(data or {})

    def _check_token(self, deployment_id: str, token: int, app: str | None = None) -> None:
        rec = self.store.deployments.get(deployment_id)
        row = self.store.leases.get(app or (rec.app if rec else ""))
        current = row.lease.token if row is not None else None
        if current != token:
            raise stale_token(token, current)

    async def begin(
        self, app: str, release: str, data: Mapping[str, Any], *, deployment_id: str | None = None
    ) -> DeploymentRecord:
        rec = DeploymentRecord(
            id=deployment_id or new_deployment_id(),
            app=app,
            release=release,
            started_at=self.clock.now(),
            finished_at=None,
            outcome=None,
            reason=None,
            data=self._data(data),
        )
        self.store.deployments[rec.id] = rec
        self.store.entries.setdefault(rec.id, [])
        return rec

    async def finish(
        self,
        deployment_id: str,
        outcome: str,
        reason: str,
        data: Mapping[str, Any],
        *,
        token: int | None = None,
    ) -> None:
        if token is not None:
            self._check_token(deployment_id, token)
        rec = self.store.deployments[deployment_id]
        self.store.deployments[deployment_id] = DeploymentRecord(
            rec.id,
            rec.app,
            rec.release,
            rec.started_at,
            self.clock.now(),
            outcome,
            reason,
            {**rec.data, **self._data(data)},
        )

    async def deployment(self, deployment_id: str) -> DeploymentRecord | None:
        return self.store.deployments.get(deployment_id)

    async def deployments(self, app: str | None = None) -> Sequence[DeploymentRecord]:
        recs = [d for d in self.store.deployments.values() if app is None or d.app == app]
        return sorted(recs, key=lambda d: d.started_at)

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
        if token is not None:
            self._check_token(deployment_id, token, app)
        self.store.seq += 1
        self.store.rows += 1
        entry = JournalEntry(
            self.store.seq, deployment_id, self.clock.now(), kind, host, step, self._data(data)
        )
        self.store.entries.setdefault(deployment_id, []).append(entry)
        return entry

    async def entries(self, deployment_id: str) -> Sequence[JournalEntry]:
        return list(self.store.entries.get(deployment_id, ()))

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
        now = self.clock.now()
        row = self.store.leases.get(app)
        if row is not None:
            old = row.lease
            check_grant(
                app,
                old.holder,
                old.deployment_id,
                old.acquired_at,
                old.heartbeat_at,
                released=row.released,
                fresh=(now - old.heartbeat_at).total_seconds() < row.ttl_s,
                takeover=takeover,
                holder_dead=holder_dead,
            )
        token = self.store.tokens.get(app, 0) + 1
        self.store.tokens[app] = token
        lease = Lease(app, holder, deployment_id, token, now, now)
        self.store.leases[app] = _LeaseRow(lease, ttl_s)
        return lease

    async def heartbeat(self, lease: Lease) -> None:
        row = self.store.leases.get(lease.app)
        if row is None or row.released or row.lease.token != lease.token:
            raise lease_taken_over(lease)
        old = row.lease
        row.lease = Lease(
            old.app, old.holder, old.deployment_id, old.token, old.acquired_at, self.clock.now()
        )

    async def release_lease(self, lease: Lease) -> None:
        row = self.store.leases.get(lease.app)
        if row is not None and row.lease.token == lease.token:
            row.released = True

    async def current_lease(self, app: str) -> Lease | None:
        row = self.store.leases.get(app)
        return row.lease if row is not None and not row.released else None

    async def lease_ttl(self, app: str) -> float | None:
        row = self.store.leases.get(app)
        return row.ttl_s if row else None

    async def import_deployment(
        self, record: DeploymentRecord, entries: Sequence[JournalEntry]
    ) -> int:
        """Store `record` and those of its `entries` not stored yet; return how many were new."""
        self.store.deployments[record.id] = record
        have = self.store.entries.setdefault(record.id, [])
        new = list(entries)[len(have) :]
        for e in new:
            self.store.seq += 1
            have.append(
                JournalEntry(self.store.seq, record.id, e.at, e.kind, e.host, e.step, dict(e.data))
            )
        return len(new)

    async def close(self) -> None:
        return None
