"""The `LoadBalancer` role: the pool in front of the fleet.

Every method is async; the caller owns the deadline (wrap `wait_*` in `anyio.fail_after`).
Adapters map their foreign errors into `BalancerError` naming the adapter and host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from immunity.domain import HostRef, Member


@runtime_checkable
class LoadBalancer(Protocol):
    async def members(self, hosts: Sequence[HostRef]) -> dict[str, Member]:
        """The balancer's view of each host, keyed by host name. Read-only."""
        ...

    async def pool_members(self) -> dict[str, Member]:
        """Every member the balancer has in the pool, configured or not, keyed by its
        balancer id (HAProxy server name, EC2 instance id or IP). Read-only.

        Preflight compares it with the config: a member immunity does not know would keep
        serving the old release unseen.
        """
        ...

    async def drain(self, host: HostRef) -> None:
        """Stop sending new requests to `host`; in-flight ones go on. Idempotent."""
        ...

    async def wait_drained(self, host: HostRef) -> None:
        """Return once `host` has no request in flight and is out of the pool.

        Waits as long as it is allowed: the caller owns the deadline.
        """
        ...

    async def enable(self, host: HostRef) -> None:
        """Put `host` back into the pool. Idempotent."""
        ...

    async def wait_healthy(self, host: HostRef) -> None:
        """Return once the balancer calls `host` healthy and sends it traffic. Caller owns the deadline."""
        ...

    async def aclose(self) -> None:
        """Release connections. Idempotent."""
        ...
