"""The `Notifier` role: telling the team and emitting deployment metrics.

A notifier that fails raises `NotifyError`; the engine journals it and the outcome
of the deployment never changes because of it. Secrets (webhook URLs, keys) are never
put in the error message.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from immunity.domain import Event


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
