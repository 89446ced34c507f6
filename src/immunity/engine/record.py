"""One place that records what happens: journal first (durable), then logs and sinks.

Journal kinds, log events and notifications share names (`noun.verb_past`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from immunity.domain import Event
from immunity.errors import LeaseLost
from immunity.fleet.context import Fleet
from immunity.fleet.state import FleetState
from immunity.journal.base import append_all

log = logging.getLogger("immunity.engine")


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry for `Recorder.record_all`: what `record` takes."""

    kind: str
    message: str = ""
    host: str | None = None
    step: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


class Recorder:
    def __init__(
        self,
        fleet: Fleet,
        deployment_id: str,
        release: str,
        token: int | None,
        *,
        on_lost: Callable[[], None] | None = None,
        view: FleetState | None = None,
    ) -> None:
        self.fleet = fleet
        self.view = view
        self.on_lost = on_lost
        self.deployment_id = deployment_id
        self.release = release
        self.token = token

    async def record(
        self,
        kind: str,
        message: str = "",
        *,
        host: str | None = None,
        step: str | None = None,
        **data: Any,
    ) -> None:
        """Journal `kind` durably (raises JournalError/LeaseLost), fold it into the run's
        `FleetState`, then tell the sinks."""
        await self.record_all([Entry(kind, message, host, step, data)])

    async def record_all(self, entries: Sequence[Entry]) -> None:
        """`record` each of `entries` in order, with one durable write for them all where
        the journal can (`append_all`: one commit and one wake-up instead of one each);
        returns once every one is on disk, then folds and tells the sinks in order."""
        items = [(e.kind, e.host, e.step, e.data) for e in entries]
        try:
            written = await append_all(
                self.fleet.journal, self.deployment_id, items, token=self.token
            )
        except LeaseLost:
            if self.on_lost is not None:
                self.on_lost()
            raise
        for e, entry in zip(entries, written, strict=True):
            if self.view is not None:
                self.view.apply(entry)
            self._tell(e)

    def _tell(self, e: Entry) -> None:
        host, step = e.host, e.step
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s", e.kind, e.message, extra={"event": e.kind, "host": host, "step": step}
            )
        if not self.fleet.sinks:  # the event is built only for someone to tell
            return
        extra = {**({"host": host} if host else {}), **({"step": step} if step else {})}
        event = self.event(e.kind, e.message, {**extra, **e.data})
        for sink in self.fleet.sinks:
            try:
                sink(event)
            except Exception:  # a display problem never changes a deployment
                log.debug("event sink failed", exc_info=True)

    def event(self, kind: str, message: str, data: Mapping[str, Any]) -> Event:
        return Event(
            kind=kind,
            app=self.fleet.app,
            deployment_id=self.deployment_id,
            release=self.release,
            message=message,
            data=dict(data),
        )
