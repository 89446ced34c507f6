"""The `Notifier` role: telling the team and emitting deployment metrics.

A notifier that fails raises `NotifyError`; `notify_all` journals it and the outcome
of the deployment never changes because of it. Secrets (webhook URLs, keys) are never
put in the error message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import anyio

from immunity.domain import Event
from immunity.errors import ImmunityError

log = logging.getLogger("immunity.notify")

NOTIFY_TIMEOUT_S = 10.0


@runtime_checkable
class Notifier(Protocol):
    name: str

    def wants(self, event: Event) -> bool:
        """Whether this notifier sends `event` (filters by kind)."""
        ...

    async def notify(self, event: Event) -> None:
        """Send `event`. Caller owns the deadline. Raises NotifyError."""
        ...

    async def aclose(self) -> None: ...


async def notify_all(
    notifiers: Sequence[Notifier], event: Event, record: Callable[..., Awaitable[object]]
) -> None:
    """Tell every notifier that wants `event`, all in parallel, each within
    `NOTIFY_TIMEOUT_S`, shielded from cancellation; `record(kind, message, **data)` journals
    each one sent (`notify.sent`) or failed (`notify.failed`, never raised: a failing
    notifier, or a journal failing too, never changes the outcome)."""
    kind = event.kind

    async def one(n: Any) -> None:
        try:
            if not n.wants(event):
                return
            with anyio.fail_after(NOTIFY_TIMEOUT_S):
                await n.notify(event)
            await record("notify.sent", f"{n.name}: {kind}", notifier=n.name, event=kind)
        except (ImmunityError, TimeoutError, OSError) as exc:
            msg = exc.message if isinstance(exc, ImmunityError) else type(exc).__name__
            # the notifier's own errors start with its name ("slack: cannot reach ...")
            said = msg if msg.startswith(f"{n.name}: ") else f"{n.name}: {msg}"
            try:  # the journaled event is what the user sees: once, not also as a log line
                await record("notify.failed", said, notifier=n.name, event=kind, error=msg)
            except ImmunityError:  # the journal is failing too: say it here, and keep going
                log.warning("notifier %s failed: %s", n.name, msg)

    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            for n in notifiers:
                tg.start_soon(one, n)
