"""The `Journal` role: the durable, append-only record of every step of every deployment.

It is the source of truth for resume, status and history. Every method is a coroutine and
never blocks the event loop (an adapter does its I/O in a worker thread or with an async
driver). Writes are durable before they return (the step they describe may not start until
its `started` row is on disk), and a call, once awaited, is shielded from cancellation: it
either happens whole or raises. A failed write raises `JournalError`; the engine then
changes nothing more.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from immunity.domain import NOT_A_CHANGE, outcome_words
from immunity.errors import LeaseHeld, LeaseLost


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    deployment_id: str
    at: dt.datetime
    kind: str  # noun.verb_past, e.g. host.step_started, verdict.reached
    host: str | None = None
    step: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentRecord:
    id: str
    app: str
    release: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    outcome: str | None  # None while running / interrupted
    reason: str | None
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rollback(self) -> bool:
        """A `rollback` run (its `release` is the label `rollback:<release it left>`)."""
        return bool(self.data.get("rollback"))

    @property
    def changed_nothing(self) -> bool:
        """A record of a run that touched no host: a no-op (`unchanged`, older journals'
        `rejected`) or a run stopped by a signal in its preflight (`stopped_in: preflight`).
        `deploy`'s refusal, `status`, `resume`, `rollback` and `history` look past it."""
        return self.outcome in NOT_A_CHANGE or self.data.get("stopped_in") == "preflight"

    @property
    def release_words(self) -> str:
        """What the run moved, as people read it: a deployment's release; a rollback's
        "rollback v5 → v4" (from the release it found to its targets)."""
        if not self.rollback:
            return self.release
        source = self.release.removeprefix("rollback:")
        to = sorted({str(v) for v in dict(self.data.get("fallbacks", {})).values() if v})
        return f"rollback {source} → {', '.join(to)}" if to else f"rollback of {source}"

    @property
    def words(self) -> str:
        """`release_words` with the outcome in words: "v5 reverted", "rollback v5 → v4"."""
        if self.rollback and self.outcome == "rolled_back":
            return self.release_words
        return f"{self.release_words} {outcome_words(self.outcome)}"


@dataclass(frozen=True)
class Lease:
    app: str
    holder: str
    deployment_id: str
    token: int  # fencing token: grows by one at every acquisition
    acquired_at: dt.datetime
    heartbeat_at: dt.datetime


@runtime_checkable
class Journal(Protocol):
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
        """Durably append one entry. With `token`, refuse (LeaseLost) when the lease moved on."""
        ...

    async def entries(self, deployment_id: str) -> Sequence[JournalEntry]: ...

    async def begin(
        self, app: str, release: str, data: Mapping[str, Any], *, deployment_id: str | None = None
    ) -> DeploymentRecord: ...

    async def finish(
        self,
        deployment_id: str,
        outcome: str,
        reason: str,
        data: Mapping[str, Any],
        *,
        token: int | None = None,
    ) -> None:
        """Set the outcome (data merged into the record's). With `token`, refuse (LeaseLost)
        when the lease moved on, so a stale process cannot rewrite how a deployment ended."""
        ...

    async def deployments(self, app: str | None = None) -> Sequence[DeploymentRecord]: ...

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
        """Take the app's lease. Raises LeaseHeld when someone live holds it (or when a dead
        holder's lease is asked for without `takeover`)."""
        ...

    async def heartbeat(self, lease: Lease) -> None:
        """Refresh the lease; raises LeaseLost when its token is stale."""
        ...

    async def release_lease(self, lease: Lease) -> None: ...

    async def current_lease(self, app: str) -> Lease | None: ...

    async def close(self) -> None: ...


EntryItem = tuple[str, str | None, str | None, Mapping[str, Any] | None]
"""One entry to append: (kind, host, step, data)."""


async def append_all(
    journal: Journal, deployment_id: str, items: Sequence[EntryItem], *, token: int | None = None
) -> list[JournalEntry]:
    """Durably append `items` in order; returns once every one is on disk.

    A journal whose class has `append_many` (SQLite, PostgreSQL) writes two or more in one
    transaction, one commit and one wake-up for all; one item, or any other journal (and any
    wrapper, e.g. the fault suite's kill points, which count single appends) gets one
    `append` after another. The
    class is asked, not the object: a wrapper that forwards attributes to the journal it
    wraps must not be bypassed.
    """
    if len(items) > 1 and getattr(type(journal), "append_many", None) is not None:
        many: list[JournalEntry] = await journal.append_many(  # type: ignore[attr-defined]
            deployment_id, items, token=token
        )
        return many
    return [
        await journal.append(deployment_id, kind, host=host, step=step, data=data, token=token)
        for kind, host, step, data in items
    ]


def lease_held(
    app: str,
    holder: str | None,
    deployment_id: str | None,
    since: dt.datetime | None,
    heartbeat_at: dt.datetime | None,
    *,
    live: bool,
) -> LeaseHeld:
    """The refusal every journal raises: who holds `app`'s lease, on which machine, since when.

    `holder` is `machine:pid` (see `journal.holder.holder_name`).
    """
    machine, _, pid = (holder or "?").rpartition(":")
    who = f"pid {pid} on machine {machine}" if machine else f"holder {holder}"

    def when(t: dt.datetime | None) -> str:
        return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "?"

    state = "and is heart-beating" if live else f"and stopped heart-beating at {when(heartbeat_at)}"
    return LeaseHeld(
        f"{app} is being deployed by another orchestrator: {who} holds the lease since "
        f"{when(since)} (deployment {deployment_id}), {state}",
        hint="wait for it to finish"
        if live
        else "run `immunity resume -c FILE` to finish or undo it",
        context={
            "holder": holder,
            "machine": machine,
            "pid": pid,
            "deployment": deployment_id,
            "since": since.isoformat() if since else None,
        },
    )


# -- the lease rules, one copy for every journal ------------------------------------------


def check_grant(
    app: str,
    holder: str | None,
    deployment_id: str | None,
    since: dt.datetime | None,
    heartbeat_at: dt.datetime | None,
    *,
    released: bool,
    fresh: bool,
    takeover: bool,
    holder_dead: bool,
) -> None:
    """The rule every journal applies, inside the granting transaction, before it grants
    `app`'s lease over the row it holds now (`holder` ... `heartbeat_at`).

    A released lease is free. Otherwise the holder is *live* when it heart-beat within its
    `lease_ttl` (`fresh`, judged on the journal's own clock) and the caller did not prove its
    process gone (`holder_dead`). A live holder is never taken over; a silent one only with
    `takeover` (resume). Raises `LeaseHeld` (exit 5) naming the holder when refused.
    """
    if released:
        return
    live = fresh and not holder_dead
    if live or not takeover:
        raise lease_held(app, holder, deployment_id, since, heartbeat_at, live=live)


def stale_token(token: int, current: int | None) -> LeaseLost:
    """The refusal of a write made with fencing token `token` when the app's lease now
    carries `current` (None: no lease at all)."""
    return LeaseLost(
        f"lease token {token} is stale (current {current if current is not None else 'none'}): "
        "another process took this deployment over; changing nothing more",
    )


def lease_taken_over(lease: Lease) -> LeaseLost:
    """The refusal of a heartbeat on a lease that is no longer `lease` (taken over, or
    released)."""
    return LeaseLost(f"the lease of {lease.app} was taken over (token {lease.token} is stale)")
