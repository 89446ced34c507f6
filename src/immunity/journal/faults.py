"""Fault points for the fault suite: the orchestrator killed or stopped at an exact journal
boundary.

`IMMUNITY_FAULT_KILL_AT="host.step_started:5"` wraps the journal so that the process
SIGKILLs itself right after the 5th entry of that kind is durably appended: the fault suite
kills the orchestrator at an exact step boundary, deterministically.

`IMMUNITY_FAULT_STOP_IN_WRITE="host.step_started:5"` makes the process SIGSTOP itself
*inside* the transaction that writes the 5th entry of that kind, before it commits: the
process then holds whatever that transaction holds (SQLite's write lock, PostgreSQL's row
locks) for as long as it stays stopped, as a process frozen by a debugger, a `kill -STOP`
or a stalled machine would. (Sent SIGCONT, it commits and goes on.)

Without the variables the journal is returned as it is (nothing of this is on a
deployment's path: a journal's `in_write` hook is None).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

from immunity.journal.base import Journal, JournalEntry

ENV = "IMMUNITY_FAULT_KILL_AT"
STOP_ENV = "IMMUNITY_FAULT_STOP_IN_WRITE"


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


def _spec(spec: str) -> tuple[str, int]:
    kind, _, nth = spec.rpartition(":")
    return kind, int(nth)


def stop_in_write(kind: str, nth: int) -> Callable[[str], None]:
    """A journal `in_write` hook: SIGSTOP this process inside the transaction that writes
    the `nth` entry of `kind` (counted over the process's life), before the commit."""
    seen = 0

    def hook(written: str) -> None:
        nonlocal seen
        if written != kind:
            return
        seen += 1
        if seen == nth:  # to this thread: it stops before its next statement (the whole
            # process with it); a signal to the process could let it commit first
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)

    return hook


def with_kill_point(journal: Journal, spec: str | None = None) -> Journal:
    """`journal`, wrapped by a KillPoint when `spec` (default: $IMMUNITY_FAULT_KILL_AT,
    `kind:nth`) is set."""
    spec = os.environ.get(ENV, "") if spec is None else spec
    if not spec:
        return journal
    return cast(Journal, KillPoint(journal, *_spec(spec)))


def with_faults(journal: Journal) -> Journal:
    """`journal` with the fault points the environment asks for: $IMMUNITY_FAULT_STOP_IN_WRITE
    installs a stop inside a write (journals with an `in_write` hook: SQLite, PostgreSQL),
    $IMMUNITY_FAULT_KILL_AT wraps it in a KillPoint."""
    stop = os.environ.get(STOP_ENV, "")
    if stop and hasattr(journal, "in_write"):
        setattr(journal, "in_write", stop_in_write(*_spec(stop)))  # noqa: B010
    return with_kill_point(journal)
