"""PrometheusSource's pure helpers: regex escaping, templates, bucket conversion, headers."""

from __future__ import annotations

import datetime as dt
import math
import re

import httpx
import pytest
from pydantic import ValidationError

from immunity.domain import Cohort, HostRef
from immunity.signals.prometheus import (
    PrometheusSource,
    buckets_from_cumulative,
    counter_deltas,
    escape_regex,
    fill,
    promql_duration,
)


def _unquote_promql(s: str) -> str:
    """What Prometheus makes of a double-quoted string literal's body."""
    return re.sub(r"\\(.)", r"\1", s)


def test_escaped_host_value_matches_only_itself() -> None:
    """The escaped value, read back as Prometheus would, is a regex matching the value only."""
    value = "127.0.0.1:9001"
    regex = _unquote_promql(escape_regex(value))
    assert regex == r"127\.0\.0\.1:9001"
    assert re.fullmatch(regex, value)
    assert not re.fullmatch(regex, "127x0x0x1:9001")


def test_quotes_and_backslashes_cannot_break_out_of_the_string() -> None:
    """A label value with `"` and `\\` stays inside the PromQL string literal."""
    escaped = escape_regex('a"b\\c|d')
    assert '"' not in escaped.replace('\\"', "")
    assert re.fullmatch(_unquote_promql(escaped), 'a"b\\c|d')


def test_fill_leaves_promql_braces_alone() -> None:
    """Only {hosts}, {host_label} and {window} are replaced."""
    out = fill(
        'sum(x{{host_label}=~"{hosts}",code=~"5.."}[{window}]) or vector(0)',
        hosts="a|b",
        host_label="instance",
        window="5000ms",
    )
    assert out == 'sum(x{instance=~"a|b",code=~"5.."}[5000ms]) or vector(0)'


def test_window_is_whole_milliseconds_and_never_zero() -> None:
    """Durations are PromQL millisecond literals, at least 1 ms."""
    assert promql_duration(5.0) == "5000ms"
    assert promql_duration(0.0001) == "1ms"


def test_cumulative_buckets_become_per_bucket_counts_with_overflow() -> None:
    """`le` samples turn into per-bucket counts plus the +Inf overflow, bounds in ms."""
    bounds, buckets = buckets_from_cumulative(
        [(math.inf, 100.0), (0.1, 90.0), (0.01, 40.0), (0.05, 70.0)], scale=1000.0
    )
    assert bounds == [10.0, 50.0, 100.0]
    assert buckets == [40, 30, 20, 10]


def test_extrapolation_noise_never_makes_a_negative_bucket() -> None:
    """A bucket that came out under its predecessor counts zero, not minus."""
    _bounds, buckets = buckets_from_cumulative([(1.0, 10.2), (2.0, 9.8), (math.inf, 12.0)])
    assert buckets == [10, 0, 2]


def test_no_buckets_means_no_latency() -> None:
    """An empty or +Inf-only histogram reports no latency at all."""
    assert buckets_from_cumulative([]) == ([], [])
    assert buckets_from_cumulative([(math.inf, 3.0)]) == ([], [])


def test_host_value_template_is_checked_in_config() -> None:
    """An unknown placeholder in host_value is rejected when the config loads."""
    with pytest.raises(ValidationError):
        PrometheusSource.Settings(url="http://p:9090", host_value="{hostname}:{port}")


@pytest.mark.anyio
async def test_bearer_token_goes_in_the_authorization_header() -> None:
    """The token is sent as a bearer header; delta mode evaluates at `start` and `end`."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"status": "success", "data": {"resultType": "vector", "result": []}}
        )

    src = PrometheusSource(
        PrometheusSource.Settings(url="http://prom:9090/", bearer_token="tok", latency=False),
        base_dir=None,
    )
    src._transport = httpx.MockTransport(handler)
    end = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    start = end - dt.timedelta(seconds=5)
    obs = await src.observe({Cohort.CANARY: [HostRef(name="h")]}, start, end)
    await src.aclose()
    assert not obs[Cohort.CANARY].available
    assert {r.headers["authorization"] for r in seen} == {"Bearer tok"}
    assert {r.url.params["time"] for r in seen} == {
        f"{start.timestamp():.3f}",
        f"{end.timestamp():.3f}",
    }
    assert len(seen) == 4


def test_counter_deltas_follow_prometheus_reset_rules() -> None:
    """Growth counts the difference, a drop is a restart, a new series counts from zero."""
    a, b, c, gone = (("s", "a"),), (("s", "b"),), (("s", "c"),), (("s", "gone"),)
    before = {a: 10.0, b: 50.0, gone: 7.0}
    after = {a: 15.0, b: 3.0, c: 4.0}
    assert counter_deltas(before, after) == {a: 5.0, b: 3.0, c: 4.0}


def test_window_placeholder_needs_increase_mode() -> None:
    """A `{window}` template in delta mode is a config error pointing at `mode: increase`."""
    with pytest.raises(ValidationError, match="mode: increase"):
        PrometheusSource.Settings(url="http://p:9090", requests="sum(increase(x[{window}]))")
    PrometheusSource.Settings(
        url="http://p:9090", mode="increase", requests="sum(increase(x[{window}]))"
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
