"""`VirtualClock`: the whole event loop in virtual time.

`clock.run(fn)` runs `fn` under anyio on an asyncio loop whose `time()` is virtual: when no
task is ready and no I/O is pending, the loop jumps straight to its next timer instead of
waiting for it (each turn of the loop takes `TURN_S`, so time always moves on).
`anyio.sleep`, `anyio.fail_after` and `move_on_after` (every deadline the
engine has) therefore work unchanged, and a ten-minute deployment runs in milliseconds.

When every task waits on something no timer will ever wake (a hang in real time too), the
loop waits `hang_after_s` real seconds for I/O or a worker thread and then raises
`VirtualHang` instead of hanging the test. Work in worker threads takes no virtual time (the
clock may jump while a thread runs): use the in-memory adapters, not files or sockets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

TURN_S = 1e-6
"""Virtual time one turn of the event loop takes."""

EPOCH = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


class VirtualHang(RuntimeError):
    """Every task waits and no timer is set: in real time this would hang forever."""


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # every turn of the loop takes a microsecond: code that waits "until the next
        # boundary" computed from the clock always gets there (as it does in real time)
        self._clock.advance(TURN_S)
        self._clock.turns += 1
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # nothing scheduled: only I/O or a thread can wake the loop
            ready = super().select(self._clock.hang_after_s)
            if not ready:
                raise VirtualHang(
                    f"virtual time {self._clock.monotonic():.3f}s: every task waits and no "
                    "timer is set (this would hang in real time)"
                )
            return ready
        self._clock.advance(timeout)
        return []


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(selector=_VirtualSelector(clock))
        self._virtual = clock

    def time(self) -> float:
        return self._virtual.monotonic()


class VirtualClock:
    """A `Clock` whose time moves only when every task waits (see the module docstring).

    `monotonic()` is virtual seconds since the clock was made, `now()` is `start` plus
    that. `sleep` is `asyncio.sleep` (virtual inside `run`). Outside `run` the time stands still.
    """

    def __init__(self, start: dt.datetime = EPOCH, *, hang_after_s: float = 5.0) -> None:
        self.start = start
        self.hang_after_s = hang_after_s
        self._t = 0.0
        self.turns = 0  # turns of the loop so far (each took TURN_S of virtual time)

    def monotonic(self) -> float:
        return self._t

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self._t)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # as `SystemClock.sleep` (virtual inside `run`)

    def advance(self, seconds: float) -> None:
        """Move time forward (the loop does this itself; tests may too, outside `run`)."""
        if seconds > 0:
            self._t += seconds

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return _VirtualLoop(self)

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(*args)` on a virtual-time event loop; return its result."""
        return anyio.run(
            fn, *args, backend="asyncio", backend_options={"loop_factory": self.new_loop}
        )
