"""In-memory fleets for tests and benchmarks: every role without a server, in virtual time.

* `VirtualClock`: runs the event loop in virtual time (`clock.run(main)`).
* `World`, `Latencies`, `Behaviour`: the state the in-memory adapters share.
* `MemoryBalancer`, `MemoryDriver`, `MemoryProber`, `MemorySignals`, `MemoryJournal`,
  `MemoryNotifier`: one adapter per role, each passing its role's contract suite
  (`immunity.testing.contracts`).
* `memory_fleet(...)`: an engine `Fleet` over a new world.
"""

from __future__ import annotations

from immunity.testing.clock import VirtualClock, VirtualHang
from immunity.testing.fleet import (
    Behaviour,
    Latencies,
    MemoryBalancer,
    MemoryDriver,
    MemoryProber,
    MemorySignals,
    World,
    config_for,
    memory_fleet,
)
from immunity.testing.journal import MemoryJournal, MemoryStore
from immunity.testing.notify import MemoryNotifier

__all__ = [
    "Behaviour",
    "Latencies",
    "MemoryBalancer",
    "MemoryDriver",
    "MemoryJournal",
    "MemoryNotifier",
    "MemoryProber",
    "MemorySignals",
    "MemoryStore",
    "VirtualClock",
    "VirtualHang",
    "World",
    "config_for",
    "memory_fleet",
]
