"""Tell the team: every notifier in parallel, each with a deadline.

A notifier that fails is journaled (`notify.failed`) and never changes the outcome.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import anyio

from immunity.engine.context import Fleet
from immunity.engine.record import Recorder
from immunity.engine.result import RunOutcome
from immunity.errors import ImmunityError

log = logging.getLogger("immunity.engine")

NOTIFY_TIMEOUT_S = 10.0


async def notify_all(
    fleet: Fleet, rec: Recorder, outcome: RunOutcome, reason: str, result: Mapping[str, Any]
) -> None:
    kind = f"deployment.{outcome.past}"
    data = {
        k: result.get(k)
        for k in (
            "outcome",
            "release",
            "detected_after_s",
            "reverted_after_s",
            "needs_human",
            "duration_s",
            "fallbacks",
        )
    }
    if result.get("verdict"):
        data["verdict"] = result["verdict"]
    event = rec.event(kind, reason or outcome, data)

    async def one(n: Any) -> None:
        try:
            if not n.wants(event):
                return
            with anyio.fail_after(NOTIFY_TIMEOUT_S):
                await n.notify(event)
            await rec.record("notify.sent", f"{n.name}: {kind}", notifier=n.name, event=kind)
        except (ImmunityError, TimeoutError, OSError) as exc:
            msg = exc.message if isinstance(exc, ImmunityError) else type(exc).__name__
            log.warning("notifier %s failed: %s", n.name, msg)
            with contextlib.suppress(ImmunityError):  # the journal is failing too: keep going
                await rec.record(
                    "notify.failed", f"{n.name}: {msg}", notifier=n.name, event=kind, error=msg
                )

    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            for n in fleet.notifiers:
                tg.start_soon(one, n)
