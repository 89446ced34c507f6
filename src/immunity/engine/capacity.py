"""The capacity guard: never more than `max_unavailable` hosts out of the pool.

The hosts out of the pool are the run's `FleetState.out` (the journal and what the engine
observed: a host leaves at its drain and is back when `host.switched`), plus the hosts whose
walk holds a slot and has not drained them yet. A host whose walk failed stays out: its owner
either walks it back (the slot is reused) or *parks* it (no walk of this run will bring it
back).

No wait here is unbounded: `take` waits only while some host out of the pool is being
walked (and every walk's steps have deadlines); when every slot is held by a host no walk
holds, no slot can ever come free and `take` raises `CapacityExhausted` at once.
"""

from __future__ import annotations

from collections.abc import Set

import anyio

from immunity.errors import CapacityExhausted


class CapacityGuard:
    def __init__(self, max_unavailable: int, out: Set[str] = frozenset()) -> None:
        """`out`: the live set of hosts out of the pool (read, never changed, here)."""
        self.max_unavailable = max_unavailable
        self._pool_out = out
        self._walking: set[str] = set()
        self._changed = anyio.Condition()

    @property
    def out(self) -> frozenset[str]:
        return frozenset(self._pool_out | self._walking)

    def _n_out(self) -> int:
        # set difference in C: a Python loop over the hosts out of the pool at every `take`
        # cost O(max_unavailable) interpreted steps per host (4 s of CPU at 10,000 hosts)
        return len(self._walking) + len(self._pool_out - self._walking)

    async def take(self, host: str) -> None:
        """Wait for a slot for `host` and mark it as being walked; a host already out of the
        pool takes its own slot. Raises CapacityExhausted when no slot can come free."""
        async with self._changed:
            while (
                host not in self._walking
                and host not in self._pool_out
                and self._n_out() >= self.max_unavailable
            ):
                if not self._walking:
                    raise CapacityExhausted(
                        f"cannot take {host} out of the pool: {', '.join(sorted(self.out))} "
                        f"already out and not coming back in this run "
                        f"(max_unavailable {self.max_unavailable})",
                        hint="put those hosts back in the pool (or `immunity rollback`), then retry",
                        context={"host": host, "out": ",".join(sorted(self.out))},
                    )
                try:
                    await self._changed.wait()
                except BaseException:
                    self._changed.notify(1)  # pass on a wake-up this waiter may have taken
                    raise
            self._walking.add(host)
            if self._n_out() < self.max_unavailable:
                self._changed.notify(1)  # room for one more: wake the next waiter

    async def give_back(self, host: str, *, parked: bool = False) -> None:
        """No walk holds `host` now: it serves again (`host.switched` is journaled) and one
        waiter may take its slot (not all: with thousands of hosts waiting, waking every one
        at every give-back is quadratic), or its walk ended without putting it back
        (`parked`: it stays out; every waiter looks again, and may find no slot can come)."""
        async with self._changed:
            self._walking.discard(host)
            if parked:
                self._changed.notify_all()
            else:
                self._changed.notify(1)
