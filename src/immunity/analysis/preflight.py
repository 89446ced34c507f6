"""Before a deployment: does every signal see the fleet's traffic?

A judge that never sees the customers' requests judges the probe alone. Asked at preflight
(the engine's `preflight` calls it), before any host is touched.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio

from immunity.domain import Cohort, HostRef, utcnow
from immunity.errors import ImmunityError, PreflightError
from immunity.lb.base import SessionCounters, TrafficHistory
from immunity.signals.base import RecentTraffic, delay_of, recent_traffic, resolution_of

RECENT_S = 60.0  # the signals' "current traffic" window at preflight
LATE_S = 5.0
"""A session the balancer gave this long before a window's end, plus the signal's
`settle_s` (a scrape interval...), was answered and counted in it (or is a request slower
than that): a last session later than that proves nothing of the window."""
FRESH_S = 3.0
"""The fresh look: seconds over which the balancer's counters are read twice."""
MAX_SETTLE_S = 75.0
"""The longest a fresh look waits for a signal to count what the balancer served (a
Prometheus scraping every minute, its default); a source that needs longer (CloudWatch)
is not asked for one, and its word stands unless the balancer can count its window."""

FRESH_GRACE_S = 30.0
"""Beyond `FRESH_S` + `MAX_SETTLE_S`, how long the fresh look's own calls (the balancer's
counters, the signal's answers) may take before it gives up and proves nothing."""


@dataclass(frozen=True)
class _Contradiction:
    signal: str
    balancer: str  # what the balancer's own counters say, in words
    served: Mapping[str, object]


async def cross_check_traffic(
    lb: object, signals: Mapping[str, object], hosts: Sequence[HostRef]
) -> None:
    """PreflightError when a signal counted no request of the hosts at preflight (zero, or
    no count at all) while the balancer's own counters say it gave them requests: the
    signal is not looking at this fleet's traffic (an empty or wrong access log, a wrong
    label, index, command or target group) and the judge would see only the probe.

    Asked of every signal that says what it counted (`signals.base.RecentTraffic`: the
    HAProxy access log, Prometheus, Elasticsearch, the command source, CloudWatch) and of
    balancers that keep their own counts:

    * one that can count a past window (`TrafficHistory`, an ALB's CloudWatch
      ``RequestCount``) is asked for the signal's own window: a count above zero refuses;
    * one that keeps per-server counters (`SessionCounters`, HAProxy's ``show stat``): a
      last session inside the signal's window (at least `LATE_S` plus the signal's
      `settle_s` before its end) refuses; a
      last session only after it (the signal reads `delay` back, or traffic just began) is
      checked by a fresh look: the counters read twice `FRESH_S` apart, and the signal
      asked again over its window extended past that, until it counts a request or its
      `settle_s` has passed (at most `MAX_SETTLE_S`). Requests given meanwhile and none
      counted refuse.

    A balancer that cannot answer, a window it has no count for, a signal that cannot be
    asked again in time, or a balancer that served nothing meanwhile leave the signal's word
    standing: the check never refuses on a guess.
    """
    silent = [
        (name, src, seen)
        for name, src in signals.items()
        if (seen := recent_traffic(src)) is not None and seen.silent
    ]
    if not silent:
        return
    found: list[_Contradiction] = []
    for name, src, seen in silent:
        try:
            said = await _contradiction(lb, hosts, name, src, seen)
        except ImmunityError:
            continue  # the balancer (or the signal asked again) cannot answer: no proof
        if said is not None:
            found.append(said)
    if not found:
        return
    names = ", ".join(repr(c.signal) for c in found)
    raise PreflightError(
        f"preflight failed, nothing was touched: signal {names} saw no request of the hosts "
        f"in the last {RECENT_S:g} s, but the balancer gave them requests meanwhile (its own "
        f"counters: {'; '.join(c.balancer for c in found)}); the judge would never see the "
        "customers",
        hint="point the signal at this fleet's traffic (an access log: the file the "
        "balancer writes this backend's requests to; Prometheus: host_label and host_value; "
        "Elasticsearch: index, host_field and host_names; CloudWatch: load_balancer and "
        "target_group; a command: what it counts)",
        context={
            "signals": [c.signal for c in found],
            "served": {c.signal: c.served for c in found},
        },
    )


async def _contradiction(
    lb: object, hosts: Sequence[HostRef], name: str, src: object, seen: RecentTraffic
) -> _Contradiction | None:
    if isinstance(lb, TrafficHistory):
        # the part of the window the signal surely counted (a scrape interval before its end)
        end = seen.end - dt.timedelta(seconds=seen.settle_s or 0.0)
        n = await lb.requests_between(hosts, seen.start, end)
        if n:
            return _Contradiction(
                name,
                f"{n} requests between {seen.start:%H:%M:%S} and {end:%H:%M:%S} UTC, in the "
                "window the signal counted",
                {"requests": n, "start": seen.start.isoformat(), "end": end.isoformat()},
            )
        if n == 0 or not isinstance(lb, SessionCounters):
            return None
    if not isinstance(lb, SessionCounters):
        return None
    ages = await lb.recent_sessions(hosts)
    now = utcnow()
    last = {h: now - dt.timedelta(seconds=age) for h, (age, _) in ages.items()}
    served = {h: v for h, v in ages.items() if last[h] >= seen.start}
    if not served:
        return None  # no session since the window began: the signal is right, all quiet
    counts = ", ".join(
        f"{h} {age} s ago ({total} requests in all)" for h, (age, total) in served.items()
    )
    late = seen.end - dt.timedelta(seconds=LATE_S + (seen.settle_s or 0.0))
    if any(seen.start <= last[h] <= late for h in served):
        return _Contradiction(name, f"last session {counts}", dict(served))
    # Served only since the window's end: the signal may just not have seen it yet.
    given = None
    with anyio.move_on_after(FRESH_S + MAX_SETTLE_S + FRESH_GRACE_S):
        given = await _fresh_look(lb, hosts, src, seen)
    if not given:
        return None  # it counts them, or could not be asked in time: no proof
    n, t0, t1 = given
    return _Contradiction(
        name,
        f"last session {counts}; then {n} requests between {t0:%H:%M:%S} and "
        f"{t1:%H:%M:%S} UTC, none of which the signal counted",
        {**served, "fresh": n},
    )


async def _fresh_look(
    lb: SessionCounters, hosts: Sequence[HostRef], src: object, seen: RecentTraffic
) -> tuple[int, dt.datetime, dt.datetime] | None:
    """(requests the balancer gave over `FRESH_S`, from, to) when the signal, asked again
    over [its window's start, past that) until `settle_s` after it, still counts none;
    None when it counts some, cannot be asked in time, or the balancer gave none."""
    settle = seen.settle_s
    observe = getattr(src, "observe", None)
    if settle is None or settle > MAX_SETTLE_S or observe is None:
        return None
    # Wall time measured on the event loop's clock from one reading of the wall clock,
    # so the waits and the windows agree (and run in virtual time under a VirtualClock).
    wall0, loop0 = utcnow(), anyio.current_time()

    def now() -> dt.datetime:
        return wall0 + dt.timedelta(seconds=anyio.current_time() - loop0)

    before = await lb.recent_sessions(hosts)
    t0 = now()
    await anyio.sleep(FRESH_S)
    after = await lb.recent_sessions(hosts)
    t1 = now()
    given = sum(total - before.get(h, (0, 0))[1] for h, (_, total) in after.items())
    if given <= 0:
        return None  # nothing given meanwhile either: no proof
    res = resolution_of(src)
    delay = delay_of(src)
    stop_at = t1 + dt.timedelta(seconds=max(settle, delay))
    while True:
        at = now()
        end = at - dt.timedelta(seconds=delay)  # what the source holds by now
        if res > 0:
            end = dt.datetime.fromtimestamp(math.floor(end.timestamp() / res) * res, dt.UTC)
        if end > t1:
            got = await observe({Cohort.BASELINE: list(hosts)}, seen.start, end)
            obs = got[Cohort.BASELINE]
            if obs.available and obs.requests > 0:
                return None  # it sees the traffic now: it had not yet
        if at >= stop_at:
            return given, t0, t1
        await anyio.sleep(min(1.0, max(0.05, (stop_at - at).total_seconds())))
