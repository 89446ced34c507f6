"""HAProxySource against real traffic through HAProxy: one server on a 30 %-error release."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hx_fleet import Fleet

from immunity.analysis.bake import Cohorts, bake
from immunity.config.models import Config
from immunity.domain import Cohort, utcnow
from immunity.errors import PreflightError
from immunity.hosts.local import LocalDriver
from immunity.sandbox import fleet
from immunity.sandbox.load import read_records, run_load
from immunity.signals.haproxy import HAProxySource, parse_line

pytestmark = pytest.mark.anyio


class Journal:
    """The bake's recorder: keeps (kind, data) of every entry."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    async def record(self, kind: str, message: str = "", **data: Any) -> object:
        self.entries.append((kind, data))
        return None


@pytest.fixture
async def canary_on_h2(hx: Fleet) -> AsyncIterator[Fleet]:
    """h2 runs a release answering 30 % 500s; back on v1 afterwards."""
    fleet.add_release(hx.dir, "bad30", error_rate=0.3)
    driver = LocalDriver(LocalDriver.Settings(), base_dir=hx.dir)
    h2 = hx.hosts[1]
    await driver.install(h2, "bad30")
    await driver.start(h2, "bad30")
    try:
        yield hx
    finally:
        await driver.start(h2, "v1")


async def _traffic(
    hx: Fleet, out: Path
) -> tuple[dt.datetime, dt.datetime, Counter[tuple[str, bool]]]:
    start = utcnow()
    await anyio.sleep(0.15)  # the log is counted in 0.1 s bins: start past one
    summary = await run_load(hx.info.url + "/", 200, 2.5, out)
    await anyio.sleep(0.3)  # the last log lines are written as the answers leave
    end = utcnow()
    assert summary.requests == 500
    seen: Counter[tuple[str, bool]] = Counter(
        (r["host"], r["status"] >= 500) for r in read_records(out)
    )
    return start, end, seen


async def test_access_log_splits_counts_per_cohort(canary_on_h2: Fleet, tmp_path: Path) -> None:
    """Requests and 5xx per cohort equal what the customers saw from each server."""
    hx = canary_on_h2
    src = HAProxySource(
        HAProxySource.Settings(name="lb", access_log="haproxy/access.log"), base_dir=hx.dir
    )
    await src.preflight(hx.hosts)
    start, end, seen = await _traffic(hx, tmp_path / "load.jsonl")
    obs = await src.observe(
        {Cohort.CANARY: [hx.hosts[1]], Cohort.BASELINE: [hx.hosts[0]]}, start, end
    )
    canary, baseline = obs[Cohort.CANARY], obs[Cohort.BASELINE]
    assert (seen[("h2", False)] + seen[("h2", True)], seen[("h2", True)]) == (
        canary.requests,
        canary.errors,
    )
    assert (seen[("h1", False)], 0) == (baseline.requests, baseline.errors)
    assert 0.15 < canary.errors / canary.requests < 0.45
    assert (canary.hosts, baseline.hosts) == (1, 1)
    assert sum(canary.latency_buckets) == canary.requests
    assert len(canary.latency_buckets) == len(canary.latency_bounds_ms) + 1
    # a window before the traffic holds none of it
    early = await src.observe(
        {Cohort.CANARY: [hx.hosts[1]]}, start - dt.timedelta(seconds=5), start
    )
    assert early[Cohort.CANARY].requests == 0


async def test_show_stat_counters_split_counts_per_cohort(
    canary_on_h2: Fleet, tmp_path: Path
) -> None:
    """Without an access log, counter diffs per server give the same per-cohort counts."""
    hx = canary_on_h2
    src = HAProxySource(
        HAProxySource.Settings(name="lb", socket="haproxy/admin.sock"), base_dir=hx.dir
    )
    await src.preflight(hx.hosts)  # first counter snapshot
    start, end, seen = await _traffic(hx, tmp_path / "load.jsonl")
    obs = await src.observe(
        {Cohort.CANARY: [hx.hosts[1]], Cohort.BASELINE: [hx.hosts[0]]}, start, end
    )
    canary, baseline = obs[Cohort.CANARY], obs[Cohort.BASELINE]
    assert (seen[("h2", False)] + seen[("h2", True)], seen[("h2", True)]) == (
        canary.requests,
        canary.errors,
    )
    assert seen[("h1", False)] == baseline.requests


async def test_unreadable_access_log_is_missing_not_zero(hx: Fleet) -> None:
    """A log that cannot be read yields unavailable observations."""
    src = HAProxySource(HAProxySource.Settings(access_log="haproxy/nope.log"), base_dir=hx.dir)
    now = utcnow()
    obs = await src.observe({Cohort.CANARY: hx.hosts[:1]}, now - dt.timedelta(seconds=1), now)
    assert not obs[Cohort.CANARY].available


def test_log_lines_that_are_not_requests_are_skipped() -> None:
    """HAProxy notices, syslog prefixes, <NOSRV> and aborted requests parse as expected."""
    assert parse_line("Server be_app/h1 is DOWN, reason: Layer4 connection problem") is None
    assert parse_line('{"ts":1.5,"srv":"<NOSRV>","st":503,"Ta":0,"Tt":0}') is None
    rec = parse_line('<134>Nov 26 haproxy[1]: {"ts":100.250,"srv":"h1","st":502,"Ta":40,"Tt":50}')
    assert rec is not None
    assert (rec.server, rec.status, rec.latency_ms, rec.end) == ("h1", 502, 40.0, 100.3)


async def test_counter_mode_counts_the_first_look_of_a_bake(
    canary_on_h2: Fleet, tmp_path: Path
) -> None:
    """Counter mode in a real bake: the preflight's snapshot is seconds old when the bake
    starts (hosts were switched meanwhile), yet the first look counts, from a snapshot the
    bake takes as it starts; every look's requests add up to what the customers sent."""
    hx = canary_on_h2
    src = HAProxySource(
        HAProxySource.Settings(name="lb", socket="haproxy/admin.sock"), base_dir=hx.dir
    )
    config = Config.model_validate(
        {
            "app": "shop",
            "hosts": [{"name": h.name, "port": h.port} for h in hx.hosts],
            "balancer": {"kind": "haproxy"},
            "driver": {"kind": "local"},
            "signals": [{"kind": "haproxy", "name": "lb", "socket": "haproxy/admin.sock"}],
            "checks": [{"name": "errors", "signal": "lb", "kind": "errors"}],
            "bake": {"min": "1s", "max": "3s", "interval": "500ms"},
        }
    )
    journal = Journal()
    await src.preflight(hx.hosts)  # the last snapshot before the bake
    out = tmp_path / "load.jsonl"
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_load, hx.info.url + "/", 100, 6.0, out)
        await anyio.sleep(2.5)  # the switch of a host: the preflight's snapshot grows old
        began = utcnow()
        await bake(
            {"lb": src},
            config,
            journal,
            lambda: Cohorts([hx.hosts[1]], [hx.hosts[0]]),
            wave=1,
            bake_no=1,
            relative=True,
        )
    # the looks that asked the source (the first may come before `bake.lag` allows a window)
    looks = [d for k, d in journal.entries if k == "bake.looked" and "lb" in d["obs"]]
    first = looks[0]["obs"]["lb"]
    assert first["canary"].get("n", 0) > 0 and first["baseline"].get("n", 0) > 0, first
    for look in looks:  # no look was stale
        assert "stale" not in json.dumps(look["obs"]), look
    counted = sum(lk["obs"]["lb"][c].get("n", 0) for lk in looks for c in ("canary", "baseline"))
    # counted from the bake's start to the last reading (taken `bake.lag` after its window)
    window = (began.timestamp(), looks[-1]["window"][1] + config.bake.lag)
    sent = [r for r in read_records(out) if window[0] <= r["at"] <= window[1] and r["status"] > 0]
    assert abs(counted - len(sent)) <= 0.1 * len(sent), (counted, len(sent))


async def test_an_access_log_that_sees_none_of_the_traffic_haproxy_serves_is_refused(
    hx: Fleet, tmp_path: Path
) -> None:
    """New-user trial: access_log pointed at an empty file while HAProxy served the pool;
    preflight passed and the judge never saw a customer. HAProxy's own counters (show stat
    `lastsess`) now contradict the log: PreflightError naming the file and the counts. The
    real log, read after the same traffic, passes and says what it saw."""
    empty = hx.dir / "haproxy" / "empty.log"
    empty.write_text("")
    summary = await run_load(hx.info.url + "/", 100, 1.0, tmp_path / "load.jsonl")
    assert summary.requests == 100
    await anyio.sleep(0.3)  # the last log lines are written as the answers leave
    wrong = HAProxySource(
        HAProxySource.Settings(
            name="lb", access_log="haproxy/empty.log", socket="haproxy/admin.sock"
        ),
        base_dir=hx.dir,
    )
    with pytest.raises(PreflightError) as exc:
        await wrong.preflight(hx.hosts)
    assert str(empty) in exc.value.message and "last session" in exc.value.message
    assert "h1 " in exc.value.message and "requests in all" in exc.value.message
    right = HAProxySource(
        HAProxySource.Settings(
            name="lb", access_log="haproxy/access.log", socket="haproxy/admin.sock"
        ),
        base_dir=hx.dir,
    )
    said = await right.preflight(hx.hosts)
    assert "request(s) in the last 60 s" in said


async def test_preflight_does_not_print_its_read_cap_as_the_request_count(
    hx: Fleet, tmp_path: Path
) -> None:
    """Trial 4 #9: preflight said "shows 200 request(s) in the last 60 s" whatever the
    traffic (200 is how many lines it reads). After 300 real requests through HAProxy it
    says "at least 200"; the number it gives is never more than HAProxy served."""
    summary = await run_load(hx.info.url + "/", 300, 1.0, tmp_path / "load.jsonl")
    assert summary.requests == 300
    await anyio.sleep(0.3)
    source = HAProxySource(
        HAProxySource.Settings(name="lb", access_log="haproxy/access.log"), base_dir=hx.dir
    )
    said = await source.preflight(hx.hosts)
    logged = sum(1 for line in (hx.dir / "haproxy" / "access.log").read_text().splitlines() if line)
    assert logged >= 300, logged
    assert "shows at least 200 request(s) in the last 60 s" in said, said


@pytest.mark.parametrize("mode", ["access_log", "socket"])
async def test_each_host_of_a_cohort_is_counted_on_its_own(
    canary_on_h2: Fleet, tmp_path: Path, mode: str
) -> None:
    """`by_host` holds each server's own requests and 5xx, in the cohort's order, as the
    customers saw them (what the judge measures the baseline's host spread from), and they
    add up to the cohort's counts; in the access log with each server's latency histogram."""
    hx = canary_on_h2
    settings = (
        HAProxySource.Settings(name="lb", access_log="haproxy/access.log")
        if mode == "access_log"
        else HAProxySource.Settings(name="lb", socket="haproxy/admin.sock")
    )
    src = HAProxySource(settings, base_dir=hx.dir)
    await src.preflight(hx.hosts)
    start, end, seen = await _traffic(hx, tmp_path / "load.jsonl")
    obs = await src.observe({Cohort.BASELINE: [hx.hosts[1], hx.hosts[0]]}, start, end)
    cohort = obs[Cohort.BASELINE]
    got = [(h.requests, h.errors) for h in cohort.by_host]
    assert got == [
        (seen[("h2", False)] + seen[("h2", True)], seen[("h2", True)]),
        (seen[("h1", False)], 0),
    ]
    assert sum(n for n, _ in got) == cohort.requests
    assert sum(x for _, x in got) == cohort.errors
    if mode == "access_log":
        assert [sum(h.latency_buckets) for h in cohort.by_host] == [n for n, _ in got]
