"""The capacity guard: never more than `max_unavailable` hosts out of the pool.

A host holds a slot from the moment it is taken for a walk until it is serving again. A
host whose walk failed keeps its slot (it *is* out of the pool): its owner either walks it
back (the slot is reused) or *parks* it (it stays out and no walk of this run will bring it
back). The guard counts what the balancer sees, not what tasks are running.

No wait here is unbounded: `take` waits only while some host out of the pool is being
walked (and every walk's steps have deadlines); when every slot is held by a parked host,
no slot can ever come free and `take` raises `CapacityExhausted` at once.
"""

from __future__ import annotations

import anyio

from immunity.errors import CapacityExhausted


class CapacityGuard:
    def __init__(self, max_unavailable: int) -> None:
        self.max_unavailable = max_unavailable
        self._out: set[str] = set()
        self._walking: set[str] = set()
        self._changed = anyio.Condition()

    @property
    def out(self) -> frozenset[str]:
        return frozenset(self._out)

    async def take(self, host: str) -> None:
        """Wait for a slot for `host` and mark it as being walked; a host that already holds
        a slot keeps it. Raises CapacityExhausted when no slot can come free."""
        async with self._changed:
            while host not in self._out and len(self._out) >= self.max_unavailable:
                if not self._walking:
                    raise CapacityExhausted(
                        f"cannot take {host} out of the pool: {sorted(self._out)} "
                        f"already out and not coming back in this run "
                        f"(max_unavailable {self.max_unavailable})",
                        hint="put those hosts back in the pool (or `immunity rollback`), then retry",
                        context={"host": host, "out": ",".join(sorted(self._out))},
                    )
                try:
                    await self._changed.wait()
                except BaseException:
                    self._changed.notify(1)  # pass on a wake-up this waiter may have taken
                    raise
            self._out.add(host)
            self._walking.add(host)
            if len(self._out) < self.max_unavailable:
                self._changed.notify(1)  # room for one more: wake the next waiter

    def mark_out(self, host: str) -> None:
        """Count a host found out of the pool (at resume), even past the limit; parked
        until a walk takes it."""
        self._out.add(host)

    async def park(self, host: str) -> None:
        """`host` stays out of the pool and no walk of this run will bring it back."""
        async with self._changed:
            self._walking.discard(host)
            self._changed.notify_all()

    async def reconcile(self, serving: set[str]) -> None:
        """Give back the slots of hosts no walk holds that the balancer reports serving (a
        walk that failed before its host left the pool): they are not out."""
        async with self._changed:
            back = {h for h in self._out - self._walking if h in serving}
            if back:
                self._out -= back
                self._changed.notify_all()

    async def give_back(self, host: str) -> None:
        """Free `host`'s slot and wake one waiter (not all: with thousands of hosts waiting
        for a slot, waking every one of them at every give-back is quadratic)."""
        async with self._changed:
            self._out.discard(host)
            self._walking.discard(host)
            self._changed.notify(1)
