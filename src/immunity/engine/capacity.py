"""The capacity guard: never more than `max_unavailable` hosts out of the pool.

A host holds a slot from the moment it is drained until it is serving again. A host whose
switch failed keeps its slot (it *is* out of the pool) until its revert puts it back, so the
guard counts what the balancer sees, not what tasks are running.
"""

from __future__ import annotations

import anyio


class CapacityGuard:
    def __init__(self, max_unavailable: int) -> None:
        self.max_unavailable = max_unavailable
        self._out: set[str] = set()
        self._changed = anyio.Condition()

    @property
    def out(self) -> frozenset[str]:
        return frozenset(self._out)

    async def take(self, host: str) -> None:
        """Wait for a slot for `host`; a host that already holds one keeps it."""
        async with self._changed:
            while host not in self._out and len(self._out) >= self.max_unavailable:
                await self._changed.wait()
            self._out.add(host)

    def mark_out(self, host: str) -> None:
        """Count a host found out of the pool (at resume), even past the limit."""
        self._out.add(host)

    async def give_back(self, host: str) -> None:
        async with self._changed:
            self._out.discard(host)
            self._changed.notify_all()
