"""A real HAProxy sandbox with customers going through it, and shippers that turn what the
customers were answered into what a log pipeline would store (documents, log lines).

For the preflight cross-check of a silent signal: HAProxy's own counters (`show stat`) are
the balancer's view; the load generator's record (who answered, when) is the truth a
shipper forwards, rightly or wrongly labelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

from immunity.domain import HostRef
from immunity.lb.haproxy import HAProxyPool
from immunity.sandbox import fleet
from immunity.sandbox.load import run_load

Shipper = Callable[[list[dict[str, Any]]], None]
"""Called with the load generator's new records (`t`, `at`, `status`, `latency_ms`, `host`)."""


@contextlib.contextmanager
def sandbox(d: Path, hosts: int = 2) -> Iterator[tuple[fleet.SandboxInfo, list[HostRef]]]:
    """A running sandbox (HAProxy + `hosts` sample apps) in `d`, torn down after."""
    info = fleet.create_sandbox(d, hosts=hosts)
    try:
        yield info, [HostRef(n, "127.0.0.1", p) for n, p in info.host_ports.items()]
    finally:
        fleet.teardown(d)


def pool(info: fleet.SandboxInfo) -> HAProxyPool:
    """The sandbox's balancer, as `balancer: {kind: haproxy}` builds it."""
    return HAProxyPool(HAProxyPool.Settings(socket="haproxy/admin.sock"), base_dir=info.dir)


@contextlib.asynccontextmanager
async def customers(
    info: fleet.SandboxInfo, rps: float = 20.0, shippers: tuple[Shipper, ...] = ()
) -> AsyncIterator[list[dict[str, Any]]]:
    """Customers through HAProxy at `rps` until the block ends; every 0.1 s each shipper
    gets the records answered since. Yields the records (growing)."""
    records: list[dict[str, Any]] = []
    stop = asyncio.Event()

    async def ship() -> None:
        done = 0
        while True:
            await anyio.sleep(0.1)
            new, done = records[done:], len(records)
            for s in shippers:
                s(new)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_load(info.url + "/", rps, 600, None, stop, records=records))
        tg.start_soon(ship)
        try:
            yield records
        finally:
            stop.set()
            tg.cancel_scope.cancel()
