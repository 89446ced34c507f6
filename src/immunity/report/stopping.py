"""Stopping the report's drawing when the process is told to stop (SIGINT/SIGTERM/SIGHUP).

The CLI draws the report after a run has ended: a signal then must not cost the run's result
line and exit code, only the report. `stop_on_signals()` installs handlers that set `STOP`;
`checkpoint()` (called before each chart) raises `ReportStopped` once it is set, so nothing
is written (the HTML and JSON are written only after every chart is drawn).

Fault hook for tests: `$IMMUNITY_FAULT_SLOW_REPORT=<seconds>` makes each checkpoint wait that
long (returning early when a signal arrives), so a test can send a signal mid-drawing.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["SLOW_ENV", "STOP", "ReportStopped", "checkpoint", "received", "stop_on_signals"]

SLOW_ENV = "IMMUNITY_FAULT_SLOW_REPORT"
STOP = threading.Event()
_received: list[str] = []


class ReportStopped(Exception):
    """A signal stopped the drawing; `signal_name` is the first one received (e.g. SIGTERM)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"{signal_name} received")
        self.signal_name = signal_name


def checkpoint() -> None:
    """Raise ReportStopped when a signal asked to stop (waiting $IMMUNITY_FAULT_SLOW_REPORT s
    first when set)."""
    slow = os.environ.get(SLOW_ENV, "")
    if slow:
        STOP.wait(float(slow))
    if STOP.is_set():
        raise ReportStopped(_received[0] if _received else "a signal")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGINT, SIGTERM and SIGHUP set `STOP` instead of ending the process;
    the previous handlers are put back on exit. Main thread only (as `signal.signal`)."""
    STOP.clear()
    _received.clear()

    def handler(signum: int, _frame: Any) -> None:
        _received.append(signal.Signals(signum).name)
        STOP.set()

    kinds = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    before = {k: signal.signal(k, handler) for k in kinds}
    try:
        yield
    finally:
        for k, h in before.items():
            signal.signal(k, h)


def received() -> str | None:
    """The first signal received inside the last `stop_on_signals()`, or None."""
    return _received[0] if _received else None
