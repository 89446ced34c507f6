"""Before a deployment: does every signal see the fleet's traffic?

A judge that never sees the customers' requests judges the probe alone. Asked at preflight
(the engine's `preflight` calls it), before any host is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from immunity.domain import HostRef
from immunity.errors import ImmunityError, PreflightError

RECENT_S = 60.0  # the signals' "current traffic" window at preflight


async def cross_check_traffic(
    lb: object, signals: Mapping[str, object], hosts: Sequence[HostRef]
) -> None:
    """PreflightError when a signal saw no request of the hosts in the last minute while
    the balancer's own counters say it gave them sessions meanwhile: the signal is not
    looking at this fleet's traffic (an empty or wrong access log) and the judge would see
    only the probe. Asked only of signals that say how many requests they saw
    (`recent_requests`) and balancers that keep per-server counters (`recent_sessions`);
    a balancer that cannot answer leaves the signal's word standing."""
    ask = getattr(lb, "recent_sessions", None)
    silent = [
        (name, src) for name, src in signals.items() if getattr(src, "recent_requests", None) == 0
    ]
    if ask is None or not silent:
        return
    try:
        seen: Mapping[str, tuple[int, int]] = await ask(hosts)
    except ImmunityError:
        return
    served = {h: v for h, v in seen.items() if v[0] < RECENT_S}
    if not served:
        return
    counts = ", ".join(
        f"{h} {last} s ago ({total} requests in all)" for h, (last, total) in served.items()
    )
    names = ", ".join(repr(n) for n, _ in silent)
    raise PreflightError(
        f"preflight failed, nothing was touched: signal {names} saw no request of the hosts "
        f"in the last {RECENT_S:g} s, but the balancer gave them requests meanwhile (its own "
        f"counters: last session {counts}); the judge would never see the customers",
        hint="point the signal at this fleet's traffic (for an access log: the file the "
        "balancer writes this backend's requests to)",
        context={"signals": [n for n, _ in silent], "served": dict(served)},
    )
