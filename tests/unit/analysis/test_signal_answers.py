"""The bake and what signals answer: vetted answers, declared delays, failures as errors.

The sources here are in-memory `SignalSource`s (the bake's side of the seam is under test);
real sources' answers are tested against their real servers in tests/integration.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from immunity.analysis.bake import Cohorts, bake
from immunity.config.models import Config
from immunity.domain import Cohort, HostRef, Observation, Outcome
from immunity.signals.base import vet

pytestmark = pytest.mark.anyio
HOSTS = [HostRef(f"h{i}", port=8000 + i) for i in range(3)]


def config(**bake_cfg: Any) -> Config:
    return Config.model_validate(
        {
            "app": "shop",
            "hosts": [{"name": h.name, "port": h.port} for h in HOSTS],
            "balancer": {"kind": "haproxy"},
            "driver": {"kind": "local"},
            "signals": [{"kind": "haproxy", "name": "lb"}],
            "checks": [{"name": "errors", "signal": "lb", "kind": "errors"}],
            "bake": {"min": "1s", "max": "2s", "interval": "200ms", **bake_cfg},
            "judge": {"inconclusive_limit": "60s", "consecutive_error_limit": 3},
        }
    )


class Journal:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    async def record(self, kind: str, message: str = "", **data: Any) -> object:
        self.entries.append((kind, message, data))
        return None


class Source:
    """Answers `answer(start, end)` for every cohort; remembers the windows it was asked."""

    def __init__(self, answer: Any, delay: float = 0.0) -> None:
        self.name = "lb"
        self.delay = delay
        self.answer = answer
        self.windows: list[tuple[dt.datetime, dt.datetime, dt.datetime]] = []

    async def observe(
        self, cohorts: Mapping[Cohort, Sequence[HostRef]], start: dt.datetime, end: dt.datetime
    ) -> dict[Cohort, Observation]:
        self.windows.append((start, end, dt.datetime.now(dt.UTC)))
        return {c: self.answer(c, start, end) for c in cohorts}

    async def aclose(self) -> None:
        return None


def cohorts() -> Cohorts:
    return Cohorts(HOSTS[:1], HOSTS[1:])


async def test_cumulative_counts_are_a_rejected_look_never_evidence_nor_a_crash() -> None:
    """A source printing 2e8 requests for a 0.2 s window: every look says why it is not
    evidence, the bake ends inconclusive at max, and the judge never allocates for it."""

    def answer(c: Cohort, start: dt.datetime, end: dt.datetime) -> Observation:
        return Observation(200_000_000, 1_000, hosts=1 if c is Cohort.CANARY else 2)

    journal = Journal()
    result = await bake(
        {"lb": Source(answer)}, config(), journal, cohorts, wave=1, bake_no=1, relative=True
    )
    assert result.verdict.outcome is Outcome.INCONCLUSIVE
    assert "implausible answer: 200000000 requests" in result.verdict.reason
    looked = [m for k, m, _ in journal.entries if k == "bake.looked"]
    # the first looks come before `bake.lag` allows a window; every later one is rejected
    asked = [m for m in looked if "waiting for signal lb's first window" not in m]
    assert asked and all("not evidence" in m for m in asked)


async def test_a_source_is_first_asked_when_its_delay_allows_and_windows_follow_each_other() -> (
    None
):
    """A source declaring a 1 s delay gets its first window [bake start, now - 1 s) no sooner
    than 1 s in, and every next window starts where the last ended."""

    def answer(c: Cohort, start: dt.datetime, end: dt.datetime) -> Observation:
        return Observation(10, 0, hosts=1 if c is Cohort.CANARY else 2)

    src = Source(answer, delay=1.0)
    began = dt.datetime.now(dt.UTC)
    await bake({"lb": src}, config(), Journal(), cohorts, wave=1, bake_no=1, relative=True)
    first_start, first_end, asked_at = src.windows[0]
    assert first_start >= began
    assert (asked_at - began).total_seconds() >= 1.0
    assert (asked_at - first_end).total_seconds() >= 1.0
    assert all(a[1] == b[0] for a, b in zip(src.windows, src.windows[1:], strict=False))


async def test_a_whole_second_source_is_asked_only_for_whole_seconds_and_keeps_its_error_streak() -> (
    None
):
    """With looks every 0.2 s, a source of resolution 1 s is asked for whole-second windows
    only (once a second, a failing one too), and a failing one still reaches the
    consecutive-error limit (looks it was not asked at neither count nor reset the streak)."""

    def answer(c: Cohort, start: dt.datetime, end: dt.datetime) -> Observation:
        return Observation.failed("the metrics API is down")

    src = Source(answer)
    src.resolution = 1.0  # type: ignore[attr-defined]
    result = await bake(
        {"lb": src}, config(max="10s"), Journal(), cohorts, wave=1, bake_no=1, relative=True
    )
    assert result.verdict.outcome is Outcome.ERROR
    # every read failed: each window starts where the bake's first did (the errored windows
    # are asked again), and ends a whole second later than the one before
    first = src.windows[0][0]
    assert all(start == first for start, _, _ in src.windows)
    assert all(end.microsecond == 0 for _, end, _ in src.windows)
    ends = [end for _, end, _ in src.windows]
    assert all((b - a).total_seconds() >= 1.0 for a, b in itertools.pairwise(ends))


async def test_a_source_that_cannot_be_read_is_an_error_not_thin_traffic() -> None:
    """Observation.failed for both cohorts counts toward the consecutive-error limit."""

    def answer(c: Cohort, start: dt.datetime, end: dt.datetime) -> Observation:
        return Observation.failed("access log unreadable: Permission denied")

    result = await bake(
        {"lb": Source(answer)}, config(), Journal(), cohorts, wave=1, bake_no=1, relative=True
    )
    assert result.verdict.outcome is Outcome.ERROR
    assert "access log unreadable" in result.verdict.reason


@pytest.mark.parametrize(
    ("obs", "why"),
    [
        (Observation(-5, 0), "negative count"),
        (Observation(10, 11), "11 errors > 10 requests"),
        (Observation(10, 0, (5.0,), (3, 2, 1)), "3 latency buckets for 1 bounds"),
        (Observation(100, 0, (5.0,), (30, 20)), "histogram counts 50 requests"),
        (Observation(10, 0, (5.0,), (11, -1)), "negative latency bucket"),
    ],
)
def test_vet_rejects_what_cannot_be_a_count_over_the_window(obs: Observation, why: str) -> None:
    """Negative deltas, more errors than requests, histograms that disagree: rejected, named."""
    got = vet(obs, 1.0, 1)
    assert not got.available
    assert why in got.detail


def test_vet_keeps_a_plausible_answer() -> None:
    """A busy but possible window passes unchanged."""
    obs = Observation(40_000, 12, (5.0,), (39_990, 10), hosts=1)
    assert vet(obs, 1.0, 1) is obs


async def test_a_source_is_told_when_the_bake_begins_and_a_failing_begin_only_costs_its_looks() -> (
    None
):
    """`begin(at)` is called once, before the first window, which opens at or after `at`; a
    source whose `begin` raises is still asked at every look (its answers say what is wrong)."""
    from immunity.errors import SignalError

    def answer(c: Cohort, start: dt.datetime, end: dt.datetime) -> Observation:
        return Observation(10, 0, hosts=1 if c is Cohort.CANARY else 2)

    class Counting(Source):
        def __init__(self, fail: bool) -> None:
            super().__init__(answer)
            self.fail = fail
            self.begun: list[dt.datetime] = []

        async def begin(self, at: dt.datetime) -> None:
            self.begun.append(at)
            if self.fail:
                raise SignalError("runtime API down", adapter="test")

    for fail in (False, True):
        src = Counting(fail)
        result = await bake(
            {"lb": src}, config(), Journal(), cohorts, wave=1, bake_no=1, relative=True
        )
        assert len(src.begun) == 1 and src.windows, fail
        assert src.begun[0] <= src.windows[0][0]
        assert result.verdict.outcome is not Outcome.ERROR


async def test_a_look_whose_read_errored_leaves_its_window_to_the_next_look() -> None:
    """The source raises at look 2 and answers `failed` at look 4: the next look that reads
    asks again from where the last read window ended, so the windows the judge was fed tile
    the bake with neither a gap (requests lost) nor an overlap (requests counted twice).
    (The window start moved on past an errored look: its requests never reached the judge.)"""
    from immunity.errors import SignalError

    class Flaky(Source):
        def __init__(self) -> None:
            super().__init__(self.count)
            self.asked = 0
            self.fed: list[tuple[dt.datetime, dt.datetime]] = []

        @staticmethod
        def count(c: Cohort, start: dt.datetime, end: dt.datetime) -> Observation:
            ms = round((end - start).total_seconds() * 1000)
            return Observation(ms, 0, hosts=1 if c is Cohort.CANARY else 2)

        async def observe(
            self, cohorts: Mapping[Cohort, Sequence[HostRef]], start: dt.datetime, end: dt.datetime
        ) -> dict[Cohort, Observation]:
            self.asked += 1
            if self.asked == 2:
                raise SignalError("runtime API down", adapter="test")
            if self.asked == 4:
                return {c: Observation.failed("log unreadable") for c in cohorts}
            self.fed.append((start, end))
            return await super().observe(cohorts, start, end)

    src = Flaky()
    journal = Journal()
    await bake({"lb": src}, config(max="3s"), journal, cohorts, wave=1, bake_no=1, relative=True)
    assert src.asked >= 6, src.asked
    fed = src.fed
    assert len(fed) == src.asked - 2
    for (_, end), (start, _) in itertools.pairwise(fed):
        assert start == end, f"a gap or overlap between {end} and {start}: {fed}"
