"""The `SignalSource` contract: what the bake relies on from a signal.

* Per-cohort counts of a window equal the traffic the cohort's hosts answered in it
  (requests and 5xx), and a latency histogram, when given, counts every request. A source
  whose counts are extrapolated by design states its tolerance (`SignalHarness.bounds`).
* Consecutive windows partition time: traffic running across their edge is counted once,
  in one window or the other, never twice, never lost.
* A window without traffic counts none (no invented requests).
* A source that cannot read its data says so (missing, or `SignalError`): never zeros that
  look like a pass.
* A source with no per-host split (CloudWatch's target-group metrics: `split = False` in its
  harness) answers the canary with the whole fleet's traffic and the baseline as missing,
  never as zeros: a comparison on it can never pass.

Windows are looked at as the bake looks at them: the source's `begin` hook called when the
first one opens, edges on multiples of its `resolution`, each window once its end plus its
declared `delay` has passed. A source that reads every window back in time by itself
(CloudWatch's `delay`: the harness's `shift`) is asked for the traffic of [start, end) as
the bake would ask it then, as [start + shift, end + shift), once that end has passed.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence

import anyio

from immunity.domain import Cohort, HostRef, Observation, utcnow
from immunity.errors import SignalError
from immunity.signals.base import SignalSource, begin, delay_of, resolution_of, vet
from immunity.testing.contracts.base import Contract

Sent = Counter[tuple[str, bool]]
"""(host name, answered 5xx) -> requests, as the clients recorded them."""


class SignalHarness(ABC):
    """The source under test and a way to send its hosts real traffic. No other traffic
    reaches `canary` and `baseline` while a case runs."""

    source: SignalSource
    canary: Sequence[HostRef]
    baseline: Sequence[HostRef]
    settle_s: float = 0.3
    """After a request is answered, how long until the source's data holds it (a log line
    written, a scrape); the cases leave that much quiet before a window ends."""
    requests: int = 40
    """Requests per burst (spread over both cohorts; some of the canary's answer 5xx)."""
    split: bool = True
    """False for a source with no per-host split: it counts every host's traffic as the
    canary's and answers the baseline as missing."""
    shift: float = 0.0
    """Seconds by which the source itself reads each window back in time: asked for
    [start, end), it answers for the traffic of [start - shift, end - shift)."""

    @abstractmethod
    async def send(self, n: int) -> Sent:
        """Send `n` requests to the cohorts' hosts, the canary's answering some 5xx; return
        who answered what, from the clients' record. Returns once every one is answered."""

    async def quiet(self) -> None:
        """Before a case's window starts: nothing else reaches the hosts from now on, and
        what did before is in the source's data (default: nothing to do)."""
        return None

    @abstractmethod
    async def broken(self) -> SignalSource:
        """The same kind of source pointed at data it cannot read (no server, no file)."""

    def now(self) -> dt.datetime:
        return utcnow()

    def edge(self) -> dt.datetime:
        """Now, as a window edge the bake would ask the source for: rounded down to its
        `resolution` (analysis/bake.py aligns every window end the same way)."""
        t = self.now()
        res = resolution_of(self.source)
        if res <= 0:
            return t
        ts = t.timestamp()
        return dt.datetime.fromtimestamp(ts - (ts % res), dt.UTC)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def bounds(self, sent: int, window_s: float) -> tuple[int, int]:
        """The counts the source may give for `sent` requests answered well inside one
        window of `window_s` seconds (at least `settle_s` of quiet at both edges): exactly
        `sent` by default. A source whose counts are extrapolated by design (Prometheus's
        `increase()`) states its tolerance here and says why in the docstring."""
        return sent, sent


def _cohorts(h: SignalHarness) -> dict[Cohort, Sequence[HostRef]]:
    return {Cohort.CANARY: h.canary, Cohort.BASELINE: h.baseline}


def _expected(h: SignalHarness, sent: Sent) -> dict[Cohort, tuple[int, int]]:
    """What each cohort must count; without a split, the canary counts every host's."""
    out = {}
    for cohort, hosts in _cohorts(h).items():
        if not h.split and cohort is not Cohort.CANARY:
            continue
        names = {x.name for x in hosts} if h.split else {x.name for x, _ in _all(h)}
        out[cohort] = (
            sum(n for (host, _), n in sent.items() if host in names),
            sum(n for (host, err), n in sent.items() if host in names and err),
        )
    return out


def _asked(h: SignalHarness, t: dt.datetime) -> dt.datetime:
    """The bake's time at which the source reads the traffic of `t` (see `shift`)."""
    return t + dt.timedelta(seconds=h.shift)


def _all(h: SignalHarness) -> list[tuple[HostRef, Cohort]]:
    return [(x, c) for c, hosts in _cohorts(h).items() for x in hosts]


def _counts(h: SignalHarness, obs: dict[Cohort, Observation]) -> dict[Cohort, tuple[int, int]]:
    """Each cohort's (requests, 5xx); a cohort a source without a split cannot answer must be
    missing with a reason (never zeros), and is left out."""
    out = {}
    for cohort, o in obs.items():
        if not h.split and cohort is not Cohort.CANARY:
            assert not o.available and o.detail, f"{cohort} without a split: {o}"
            continue
        assert o.available, f"{cohort}: {o.status}: {o.detail}"
        out[cohort] = (o.requests, o.errors)
    return out


class SignalSourceContract(Contract):
    """Subclass with a `harness` fixture returning a `SignalHarness`."""

    async def _look(
        self, h: SignalHarness, start: dt.datetime, end: dt.datetime
    ) -> dict[Cohort, Observation]:
        """Look at the traffic of [start, end) as the bake does: once end + the source's
        delay has passed (a source that shifts windows itself is asked shifted)."""
        start, end = _asked(h, start), _asked(h, end)
        wait = (end - h.now()).total_seconds() + delay_of(h.source)
        if wait > 0:
            await h.sleep(wait)
        with anyio.fail_after(30):
            obs = await h.source.observe(_cohorts(h), start, end)
        seconds = (end - start).total_seconds()
        return {c: vet(o, seconds, len(_cohorts(h)[c])) for c, o in obs.items()}

    async def test_is_a_signal_source(self, harness: SignalHarness) -> None:
        """The adapter satisfies the role's Protocol and has a name."""
        assert isinstance(harness.source, SignalSource)
        assert harness.source.name

    async def test_per_cohort_counts_equal_the_traffic_sent(self, harness: SignalHarness) -> None:
        """One window around a burst: each cohort's requests and 5xx are exactly what its
        hosts answered; a latency histogram counts every request."""
        await harness.quiet()
        start = harness.edge()
        await begin(harness.source, _asked(harness, start))  # as the bake does, first
        await harness.sleep(harness.settle_s)
        sent = await harness.send(harness.requests)
        await harness.sleep(harness.settle_s)
        end = harness.edge()
        obs = await self._look(harness, start, end)
        expected = _expected(harness, sent)
        canary = {x.name for x in harness.canary}
        assert any(err and host in canary for host, err in sent)
        assert any(host not in canary for host, _ in sent)
        window_s = (end - start).total_seconds()
        got = _counts(harness, obs)
        assert set(got) == set(expected)
        for cohort, counts in got.items():
            for what, n, want in zip(("requests", "5xx"), counts, expected[cohort], strict=True):
                lo, hi = harness.bounds(want, window_s)
                assert lo <= n <= hi, (
                    f"{cohort} {what}: counted {n}, the hosts answered {want} "
                    f"(allowed {lo}..{hi} over {window_s:.2f} s)"
                )
        for cohort, o in obs.items():
            if not o.available:
                continue  # the baseline of a source without a split (checked by _counts)
            hosts = len(_cohorts(harness)[cohort]) if harness.split else len(_all(harness))
            assert o.hosts == hosts
            if o.latency_buckets:
                lo, hi = harness.bounds(expected[cohort][0], window_s)
                assert abs(sum(o.latency_buckets) - o.requests) <= hi - lo, (
                    f"{cohort}: the histogram counts {sum(o.latency_buckets)}, "
                    f"requests {o.requests}"
                )

    async def test_consecutive_windows_count_each_request_once(
        self, harness: SignalHarness
    ) -> None:
        """Traffic runs across the edge of two consecutive windows, each looked at when the
        bake would: together they count every request once per cohort."""
        await harness.quiet()
        start = harness.edge()
        await begin(harness.source, _asked(harness, start))  # as the bake does, first
        await harness.sleep(harness.settle_s)
        sent: Sent = Counter()
        looks: list[dict[Cohort, Observation]] = []

        async def traffic() -> None:
            for _ in range(4):
                sent.update(await harness.send(harness.requests // 4))
                await harness.sleep(0.1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(traffic)
            await harness.sleep(0.25)  # the edge falls inside the traffic
            edge = harness.edge()
            looks.append(await self._look(harness, start, edge))
        await harness.sleep(harness.settle_s)
        end = harness.edge()
        looks.append(await self._look(harness, edge, end))
        first, second = (_counts(harness, o) for o in looks)
        together = {c: (first[c][0] + second[c][0], first[c][1] + second[c][1]) for c in first}
        expected = _expected(harness, sent)
        assert together == expected, (
            f"windows [{start:%H:%M:%S.%f}, {edge:%H:%M:%S.%f}) and [{edge:%H:%M:%S.%f}, "
            f"{end:%H:%M:%S.%f}) counted {first} + {second}, the hosts answered {expected}"
        )

    async def test_a_window_without_traffic_counts_none(self, harness: SignalHarness) -> None:
        """A quiet window: no requests (or no data), never invented ones."""
        await harness.quiet()
        start = harness.edge()
        await begin(harness.source, _asked(harness, start))  # as the bake does, first
        await harness.sleep(harness.settle_s)
        obs = await self._look(harness, start, harness.edge())
        for o in obs.values():
            assert (o.requests, o.errors) == (0, 0)

    async def test_a_source_that_cannot_read_says_so(self, harness: SignalHarness) -> None:
        """Data it cannot read: `SignalError` or every cohort missing, never a zero count."""
        source = await harness.broken()
        end = harness.edge()
        try:
            with anyio.fail_after(30):
                obs = await source.observe(_cohorts(harness), end - dt.timedelta(seconds=2), end)
        except SignalError as exc:
            assert exc.message
            return
        finally:
            await source.aclose()
        for cohort, o in obs.items():
            assert not o.available, f"{cohort}: {o}"
            assert o.detail

    async def test_only_the_cohorts_asked_for_are_answered(self, harness: SignalHarness) -> None:
        """Every cohort asked for is answered, and only those."""
        end = harness.edge()
        obs = await harness.source.observe(
            {Cohort.CANARY: harness.canary}, end - dt.timedelta(seconds=1), end
        )
        assert set(obs) == {Cohort.CANARY}
