"""One place that records what happens: journal first (durable), then logs and sinks.

Journal kinds, log events and notifications share names (`noun.verb_past`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from immunity.domain import Event
from immunity.engine.context import Fleet
from immunity.engine.fleetview import FleetState
from immunity.errors import LeaseLost

log = logging.getLogger("immunity.engine")


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
    ) -> Event:
        """Journal `kind` durably (raises JournalError/LeaseLost), fold it into the run's
        `FleetState`, then tell the sinks."""
        try:
            entry = await self.fleet.journal.append(
                self.deployment_id, kind, host=host, step=step, data=data, token=self.token
            )
        except LeaseLost:
            if self.on_lost is not None:
                self.on_lost()
            raise
        if self.view is not None:
            self.view.apply(entry)
        extra = {**({"host": host} if host else {}), **({"step": step} if step else {})}
        event = self.event(kind, message, {**extra, **data})
        log.info("%s %s", kind, message, extra={"event": kind, "host": host, "step": step})
        for sink in self.fleet.sinks:
            try:
                sink(event)
            except Exception:  # a display problem never changes a deployment
                log.debug("event sink failed", exc_info=True)
        return event

    def event(self, kind: str, message: str, data: Mapping[str, Any]) -> Event:
        return Event(
            kind=kind,
            app=self.fleet.app,
            deployment_id=self.deployment_id,
            release=self.release,
            message=message,
            data=dict(data),
        )
