"""The silent-signal cross-check's fresh look has a deadline of its own: a signal that
never answers when asked again (a third-party source with no timeout) cannot hang
preflight, and proves nothing (no refusal). Virtual time; the balancer's counters are a
stand-in that keeps serving (the real ones are tested against HAProxy and Prometheus in
tests/integration/prometheus/test_silent_prometheus.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import anyio
import pytest

from immunity.analysis.preflight import FRESH_GRACE_S, FRESH_S, MAX_SETTLE_S, cross_check_traffic
from immunity.domain import Cohort, HostRef, Observation, utcnow
from immunity.lb.base import SessionCounters
from immunity.signals.base import RecentTraffic
from immunity.testing import VirtualClock

pytestmark = pytest.mark.timeout(30)  # without the deadline the fresh look hangs
HOSTS = [HostRef("h1", "127.0.0.1", 8001)]


class Serving:
    """Counters of a balancer that gives h1 a request every call, last one just now."""

    def __init__(self) -> None:
        self.total = 100

    async def recent_sessions(self, hosts: Sequence[HostRef]) -> dict[str, tuple[int, int]]:
        self.total += 10
        return {"h1": (0, self.total)}


class Hanging:
    """A signal that counted nothing at preflight and never answers when asked again."""

    name = "hangs"
    delay = 1.0

    def __init__(self) -> None:
        end = utcnow() - dt.timedelta(seconds=self.delay)
        self.recent_traffic = RecentTraffic(0, end - dt.timedelta(seconds=60), end, settle_s=2.0)
        self.asked = 0

    async def observe(
        self, cohorts: Mapping[Cohort, Sequence[HostRef]], start: dt.datetime, end: dt.datetime
    ) -> dict[Cohort, Observation]:
        self.asked += 1
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


def test_a_signal_that_never_answers_the_fresh_look_ends_it_without_a_refusal() -> None:
    """The fresh look asks the hanging signal once, gives up after FRESH_S + MAX_SETTLE_S +
    FRESH_GRACE_S of (virtual) time, and preflight goes on: no refusal, no hang."""
    clock = VirtualClock()
    lb, src = Serving(), Hanging()
    assert isinstance(lb, SessionCounters)

    async def main() -> float:
        t0 = anyio.current_time()
        await cross_check_traffic(lb, {"hangs": src}, HOSTS)
        return anyio.current_time() - t0

    took = clock.run(main)
    assert src.asked == 1
    assert took == pytest.approx(FRESH_S + MAX_SETTLE_S + FRESH_GRACE_S, abs=0.01)
