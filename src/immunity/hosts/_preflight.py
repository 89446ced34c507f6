"""Preflight of many hosts at once, for the remote host drivers (iis, ssh)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio

from immunity.domain import HostRef
from immunity.errors import HostError, PreflightError

CONCURRENCY = 16
"""Hosts checked at the same time: a 1000-host fleet is not checked one by one, and the
orchestrator does not open 1000 connections at once either."""


async def check_hosts(
    hosts: Sequence[HostRef],
    check: Callable[[HostRef], Awaitable[None]],
    *,
    limit: int = CONCURRENCY,
) -> None:
    """Run `check` on every host; raise one PreflightError naming every host that failed.

    `check` raises HostError or PreflightError; the first failing host (in config order)
    gives the message and hint, the others are listed after it.
    """
    failures: dict[str, HostError | PreflightError] = {}
    limiter = anyio.CapacityLimiter(max(1, limit))

    async def one(host: HostRef) -> None:
        async with limiter:
            try:
                await check(host)
            except (HostError, PreflightError) as exc:
                failures[host.name] = exc

    async with anyio.create_task_group() as tg:
        for host in hosts:
            tg.start_soon(one, host)
    if not failures:
        return
    failed = [h.name for h in hosts if h.name in failures]
    first = failures[failed[0]]
    message = first.message
    if len(failed) > 1:
        message += f" (and {len(failed) - 1} more host(s) failing: {', '.join(failed[1:])})"
    raise PreflightError(message, hint=first.hint, context=first.context) from first
