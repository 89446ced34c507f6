"""The `LoadBalancer` role: the pool in front of the fleet.

Every method is async; the caller owns the deadline (wrap `wait_*` in `anyio.fail_after`).
Adapters map their foreign errors into `BalancerError` naming the adapter and host.
"""

from __future__ import annotations

import datetime as dt
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


@runtime_checkable
class SessionCounters(Protocol):
    """A balancer that keeps per-server counters of its own (HAProxy's ``show stat``).

    Optional: preflight uses it to check a signal that saw no traffic against what the
    balancer itself served (`analysis.preflight.cross_check_traffic`)."""

    async def recent_sessions(self, hosts: Sequence[HostRef]) -> dict[str, tuple[int, int]]:
        """Each host's (whole seconds since it was last given a session, requests given in
        all); a host never given one is left out. Raises BalancerError."""
        ...


@runtime_checkable
class TrafficHistory(Protocol):
    """A balancer whose own request counts can be read for past windows (an ALB's
    ``RequestCount`` in CloudWatch).

    Optional: preflight uses it as `SessionCounters` (`cross_check_traffic`)."""

    async def requests_between(
        self, hosts: Sequence[HostRef], start: dt.datetime, end: dt.datetime
    ) -> int | None:
        """Requests the balancer gave `hosts` (or the whole pool, when it counts no finer)
        over [start, end) by its own count; None when it has no count for that window (not
        published yet, or no datapoint). Raises BalancerError."""
        ...
