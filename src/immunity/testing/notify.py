"""`MemoryNotifier`: the `Notifier` role in memory, a receiver that records what it is sent.

It filters by `events` exactly as the real notifiers do (`notify.common.wants`), records
every event it is sent (`sent`) and those it accepted (`delivered`), in order, and can be
told to behave as a receiver that answers, refuses (`NotifyError`, as a 5xx or an
unreachable host is) or accepts and never answers. Its waits are anyio sleeps, so the
caller's deadline ends them as it ends an HTTP request (under `VirtualClock`, in virtual
time); `timeout_s` is its own per-call bound, as a real notifier's per-attempt timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import anyio

from immunity.domain import Event
from immunity.errors import NotifyError
from immunity.notify.common import DEFAULT_EVENTS, wants

Behaviour = Literal["answers", "refuses", "hangs"]


class MemoryNotifier:
    """A `Notifier` whose receiver is two lists.

    `how`: "answers" (after `latency_s`, the event is delivered), "refuses" (after
    `latency_s`, `NotifyError` naming `refusal`), "hangs" (never answers: `notify` returns
    only by the caller's deadline, or raises `NotifyError` after `timeout_s` when set).
    `sent`: every event `notify` was called with; `delivered`: those the receiver accepted.
    Both in order of the calls. Changing `how` between calls changes the next call.
    """

    def __init__(
        self,
        name: str = "memory",
        *,
        events: Sequence[str] = DEFAULT_EVENTS,
        how: Behaviour = "answers",
        latency_s: float = 0.0,
        timeout_s: float | None = None,
        refusal: str = "the receiver answered HTTP 500",
    ) -> None:
        self.name = name
        self.events = list(events)
        self.how: Behaviour = how
        self.latency_s = latency_s
        self.timeout_s = timeout_s
        self.refusal = refusal
        self.sent: list[Event] = []
        self.delivered: list[Event] = []
        self.closed = False

    def wants(self, event: Event) -> bool:
        return wants(self.events, event.kind)

    async def notify(self, event: Event) -> None:
        """Deliver `event` as `how` says. Caller owns the deadline. Raises NotifyError."""
        self.sent.append(event)
        with anyio.move_on_after(self.timeout_s if self.timeout_s is not None else float("inf")):
            if self.latency_s > 0:
                await anyio.sleep(self.latency_s)
            if self.how == "hangs":
                await anyio.sleep_forever()
            if self.how == "refuses":
                raise NotifyError(f"{self.name}: {self.refusal}", adapter=self.name)
            self.delivered.append(event)
            return
        raise NotifyError(
            f"{self.name}: the receiver did not answer within {self.timeout_s:g} s",
            adapter=self.name,
        )

    async def aclose(self) -> None:
        self.closed = True
