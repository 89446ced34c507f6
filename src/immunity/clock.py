"""The `Clock` seam: where the engine and the analysis read time and wait.

`SystemClock` is the real one (`time.monotonic`, UTC now, `asyncio.sleep`). Tests and
benchmarks inject another: `immunity.testing.VirtualClock` runs the whole event loop in
virtual time, so a ten-minute deployment is judged in milliseconds with every deadline
(`anyio.fail_after`) still enforced.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol, runtime_checkable

from immunity.domain import utcnow


@runtime_checkable
class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes back (for durations)."""
        ...

    def now(self) -> dt.datetime:
        """Aware UTC wall-clock time (for timestamps and signal windows)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (cancellable)."""
        ...


class SystemClock:
    """The machine's clocks: `time.monotonic()`, `datetime.now(UTC)`, `asyncio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        return utcnow()

    async def sleep(self, seconds: float) -> None:
        # what `anyio.sleep` does on asyncio (the engine's only backend: the journals hand
        # results to `asyncio` loops), without asking sniffio which library runs: at 10,000
        # hosts a run sleeps ~100,000 times, most in bursts of 1,000 walks at a step boundary
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
