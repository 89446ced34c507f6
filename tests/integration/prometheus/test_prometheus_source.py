"""PrometheusSource against a real Prometheus scraping a 30 %-error canary and a clean baseline."""

from __future__ import annotations

import datetime as dt
import itertools
import re

import anyio
import pytest
from prom_fleet import Fleet, free_port

from immunity.domain import Cohort, HostRef
from immunity.errors import PreflightError, SignalError
from immunity.signals.prometheus import PrometheusSource

pytestmark = pytest.mark.anyio


def source(fleet_url: str, **kw: object) -> PrometheusSource:
    return PrometheusSource(PrometheusSource.Settings(url=fleet_url, **kw), base_dir=None)


@pytest.fixture(autouse=True)
def _steady_load(prometheus_with_data: Fleet) -> None:
    """These tests read the last 5 s of the fleet's load: wait until it has run unpaused
    that long plus a scrape (the contract cases, run first in the same process, pause it)."""
    prometheus_with_data.wait_steady(6.0)


def last(seconds: float) -> tuple[dt.datetime, dt.datetime]:
    end = dt.datetime.now(dt.UTC)
    return end - dt.timedelta(seconds=seconds), end


async def test_observe_splits_canary_and_baseline(prometheus_with_data: Fleet) -> None:
    """The canary's 30 % errors and extra latency show in its cohort only."""
    fleet = prometheus_with_data
    src = source(fleet.url)
    try:
        start, end = last(5)
        obs = await src.observe(
            {Cohort.CANARY: [fleet.canary.host], Cohort.BASELINE: [fleet.baseline.host]}, start, end
        )
    finally:
        await src.aclose()
    canary, baseline = obs[Cohort.CANARY], obs[Cohort.BASELINE]
    assert canary.available and baseline.available
    assert canary.requests > 20 and baseline.requests > 20
    assert 0.2 < canary.errors / canary.requests < 0.4
    assert baseline.errors == 0
    assert (canary.hosts, baseline.hosts) == (1, 1)
    # bounds in ms from the apps' histogram buckets; the canary sleeps 20 ms per request
    assert list(canary.latency_bounds_ms) == [5.0, 10.0, 25.0, 50.0, 100.0, 250.0]
    assert len(canary.latency_buckets) == 7
    assert sum(canary.latency_buckets[2:]) > 0.9 * sum(canary.latency_buckets)
    assert sum(baseline.latency_buckets[:1]) > 0.9 * sum(baseline.latency_buckets)


async def test_one_cohort_may_hold_several_hosts(prometheus_with_data: Fleet) -> None:
    """Both apps in one cohort sum to what each reports alone, within extrapolation noise."""
    fleet = prometheus_with_data
    src = source(fleet.url)
    try:
        start, end = last(5)
        both = await src.observe(
            {
                Cohort.BASELINE: [fleet.baseline.host, fleet.canary.host],
                Cohort.CANARY: [fleet.canary.host],
            },
            start,
            end,
        )
        alone = await src.observe({Cohort.BASELINE: [fleet.baseline.host]}, start, end)
    finally:
        await src.aclose()
    assert both[Cohort.BASELINE].hosts == 2
    expected = alone[Cohort.BASELINE].requests + both[Cohort.CANARY].requests
    assert abs(both[Cohort.BASELINE].requests - expected) <= 2
    assert both[Cohort.BASELINE].errors == both[Cohort.CANARY].errors


async def test_counts_match_what_the_apps_served(prometheus_with_data: Fleet) -> None:
    """Requests counted over a window are what the canary served in it, give or take one scrape."""
    fleet = prometheus_with_data
    src = source(fleet.url)
    try:
        start, served_before = dt.datetime.now(dt.UTC), fleet.canary.served
        await anyio.sleep(3.0)  # the window being measured
        end, served_after = dt.datetime.now(dt.UTC), fleet.canary.served
        await wait_scraped_after(src, fleet.canary.host, end)
        obs = await src.observe({Cohort.CANARY: [fleet.canary.host]}, start, end)
    finally:
        await src.aclose()
    served = served_after - served_before
    # counters are read at the last scrape before each edge: the window shifts by < 1 scrape
    per_scrape = served / 3.0
    assert abs(obs[Cohort.CANARY].requests - served) <= 1.2 * per_scrape + 2


async def test_one_second_looks_add_up_to_the_whole_window(prometheus_with_data: Fleet) -> None:
    """The engine's 1 s looks are never missing and sum exactly to one look over their span."""
    fleet = prometheus_with_data
    src = source(fleet.url)
    end = dt.datetime.now(dt.UTC)
    edges = [end - dt.timedelta(seconds=s) for s in (6, 5, 4, 3, 2, 1, 0)]
    cohorts = {Cohort.CANARY: [fleet.canary.host], Cohort.BASELINE: [fleet.baseline.host]}
    try:
        looks = [await src.observe(cohorts, a, b) for a, b in itertools.pairwise(edges)]
        whole = await src.observe(cohorts, edges[0], edges[-1])
    finally:
        await src.aclose()
    for cohort in cohorts:
        assert all(look[cohort].available for look in looks)
        assert sum(look[cohort].requests for look in looks) == whole[cohort].requests
        assert sum(look[cohort].errors for look in looks) == whole[cohort].errors
        per_look = [look[cohort].latency_buckets for look in looks]
        summed = [sum(b) for b in zip(*per_look, strict=True)]
        assert summed == list(whole[cohort].latency_buckets)


async def test_increase_mode_splits_the_cohorts_too(prometheus_with_data: Fleet) -> None:
    """`mode: increase` with increase(x[{window}]) templates sees the same 30 % canary errors."""
    fleet = prometheus_with_data
    src = source(fleet.url, mode="increase")
    try:
        obs = await src.observe(
            {Cohort.CANARY: [fleet.canary.host], Cohort.BASELINE: [fleet.baseline.host]},
            *last(5),
        )
    finally:
        await src.aclose()
    canary, baseline = obs[Cohort.CANARY], obs[Cohort.BASELINE]
    assert 0.2 < canary.errors / canary.requests < 0.4
    assert baseline.errors == 0 and baseline.requests > 20
    assert len(canary.latency_buckets) == 7


async def wait_scraped_after(src: PrometheusSource, host: HostRef, at: dt.datetime) -> None:
    """Poll until Prometheus holds a scrape of `host` newer than `at`."""
    promql = f'timestamp(up{{instance="{host.address}:{host.port}"}})'
    with anyio.fail_after(5):
        while True:
            result = await src.query(promql, dt.datetime.now(dt.UTC))
            if result and float(result[0]["value"][1]) > at.timestamp():
                return
            await anyio.sleep(0.1)


async def test_host_without_series_is_missing_not_zero(prometheus_with_data: Fleet) -> None:
    """A host Prometheus never scraped yields a missing observation, never a clean zero."""
    src = source(prometheus_with_data.url)
    ghost = HostRef(name="ghost", address="127.0.0.1", port=1)
    try:
        obs = await src.observe({Cohort.CANARY: [ghost], Cohort.BASELINE: []}, *last(5))
    finally:
        await src.aclose()
    assert not obs[Cohort.CANARY].available
    assert "no request data" in obs[Cohort.CANARY].detail
    assert not obs[Cohort.BASELINE].available


async def test_host_label_and_value_are_configurable(prometheus_with_data: Fleet) -> None:
    """A `host_value` template built from other HostRef fields selects the same series."""
    fleet = prometheus_with_data
    src = source(fleet.url, host_value="{lb_id}")
    host = HostRef(name="c", address="10.0.0.9", port=80, lb_id=f"127.0.0.1:{fleet.canary.port}")
    try:
        obs = await src.observe({Cohort.CANARY: [host]}, *last(5))
    finally:
        await src.aclose()
    assert obs[Cohort.CANARY].requests > 0


async def test_rejected_query_raises_signal_error_without_the_token(
    prometheus_with_data: Fleet,
) -> None:
    """A PromQL syntax error is a SignalError naming the query, never the bearer token."""
    src = source(prometheus_with_data.url, requests="sum(", bearer_token="s3cret-token")
    try:
        with pytest.raises(SignalError) as info:
            await src.observe({Cohort.CANARY: [prometheus_with_data.canary.host]}, *last(5))
    finally:
        await src.aclose()
    assert "bad_data" in info.value.message
    assert "sum(" in info.value.message
    assert "s3cret-token" not in str(info.value.to_dict())


async def test_preflight_accepts_a_ready_prometheus(prometheus_fleet: Fleet) -> None:
    """Preflight passes against a ready server with valid templates."""
    src = source(prometheus_fleet.url)
    try:
        await src.preflight([prometheus_fleet.canary.host])
    finally:
        await src.aclose()


async def test_preflight_says_what_traffic_it_sees_or_plainly_none(
    prometheus_with_data: Fleet,
) -> None:
    """The hosts' last minute of requests, counted; a host Prometheus does not know: none."""
    src = source(prometheus_with_data.url)
    try:
        seen = await src.preflight([prometheus_with_data.baseline.host])
        unknown = await src.preflight([HostRef("ghost", "127.0.0.1", 1)])
    finally:
        await src.aclose()
    assert re.search(r"counts [1-9]\d* request\(s\) \(0 5xx\) on the 1 host\(s\)", seen), seen
    assert "there is no current traffic it can see" in unknown


async def test_preflight_rejects_a_broken_template(prometheus_fleet: Fleet) -> None:
    """A template Prometheus cannot parse is a PreflightError naming the template."""
    src = source(prometheus_fleet.url, errors="rate(app_requests_total[")
    try:
        with pytest.raises(PreflightError) as info:
            await src.preflight([prometheus_fleet.canary.host])
    finally:
        await src.aclose()
    assert "errors query" in info.value.message


async def test_preflight_names_an_unreachable_server() -> None:
    """Nothing listening at the url is a PreflightError with a hint."""
    src = source(f"http://127.0.0.1:{free_port()}", timeout="2s")
    try:
        with pytest.raises(PreflightError) as info:
            await src.preflight([HostRef(name="h")])
    finally:
        await src.aclose()
    assert "unreachable" in info.value.message
    assert info.value.hint


async def test_unreachable_server_during_observe_is_a_signal_error() -> None:
    """A refused connection while observing is a SignalError, not a missing observation."""
    src = source(f"http://127.0.0.1:{free_port()}", timeout="2s")
    try:
        with pytest.raises(SignalError):
            await src.observe({Cohort.CANARY: [HostRef(name="h")]}, *last(5))
    finally:
        await src.aclose()
