"""Kill points for the fault suite: the orchestrator killed at an exact journal boundary.

`IMMUNITY_FAULT_KILL_AT="host.step_started:5"` wraps the journal so that the process
SIGKILLs itself right after the 5th entry of that kind is durably appended: the fault suite
kills the orchestrator at an exact step boundary, deterministically. Without the variable
the journal is returned as it is (nothing of this is on a deployment's path).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Any, cast

from immunity.journal.base import Journal, JournalEntry

ENV = "IMMUNITY_FAULT_KILL_AT"


class KillPoint:
    """A `Journal` that SIGKILLs this process after the `nth` durable entry of `kind`."""

    def __init__(self, inner: Journal, kind: str, nth: int) -> None:
        self._inner = inner
        self._kind = kind
        self._nth = nth
        self._seen = 0

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
        entry = await self._inner.append(
            deployment_id, kind, host=host, step=step, data=data, token=token
        )
        if kind == self._kind:
            self._seen += 1
            if self._seen == self._nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return entry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def with_kill_point(journal: Journal, spec: str | None = None) -> Journal:
    """`journal`, wrapped by a KillPoint when `spec` (default: $IMMUNITY_FAULT_KILL_AT,
    `kind:nth`) is set."""
    spec = os.environ.get(ENV, "") if spec is None else spec
    if not spec:
        return journal
    kind, _, nth = spec.rpartition(":")
    return cast(Journal, KillPoint(journal, kind, int(nth)))
