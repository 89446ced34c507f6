"""CloudWatchSource against a real moto server over HTTP.

moto generates no ALB metrics, so each test first writes the datapoints an ALB would have
published (PutMetricData into AWS/ApplicationELB), then observes. moto cannot compute
percentile statistics (p99 answers HTTP 500), so these tests read TargetResponseTime with
`latency_statistic: Maximum`; the p99 request shape is covered in tests/unit/aws.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from immunity.domain import Cohort, HostRef, ObservationStatus
from immunity.errors import PreflightError, SignalError
from immunity.signals.base import SignalSource
from immunity.signals.cloudwatch import CloudWatchSource

pytestmark = pytest.mark.anyio

LB = "app/immunity-lb/50dc6c495c0c9188"
TG = "targetgroup/immunity-tg/73e2d6bc24d8a067"
T0 = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.UTC)
COHORTS = {
    Cohort.CANARY: [HostRef(name="web-1", lb_id="i-1")],
    Cohort.BASELINE: [HostRef(name="web-2", lb_id="i-2"), HostRef(name="web-3", lb_id="i-3")],
}


def _source(moto: str, **kw: Any) -> CloudWatchSource:
    fields: dict[str, Any] = {
        "endpoint_url": moto,
        "region": "us-east-1",
        "load_balancer": LB,
        "target_group": TG,
        "latency_statistic": "Maximum",
        "delay": 0,
    }
    settings = CloudWatchSource.Settings(**{**fields, **kw})
    return CloudWatchSource(settings, base_dir=Path("."))


def _publish(cw: Any, minute: int, metric: str, value: float) -> None:
    cw.put_metric_data(
        Namespace="AWS/ApplicationELB",
        MetricData=[
            {
                "MetricName": metric,
                "Dimensions": [
                    {"Name": "LoadBalancer", "Value": LB},
                    {"Name": "TargetGroup", "Value": TG},
                ],
                "Timestamp": T0 + dt.timedelta(minutes=minute, seconds=10),
                "Value": value,
            }
        ],
    )


@pytest.fixture
def published(aws_client: Any) -> Any:
    """Three minutes of an ALB's metrics: 1000 requests, 12 target 5xx, slowing latency."""
    cw = aws_client("cloudwatch")
    for minute, (requests, errors, seconds) in enumerate(
        [(300, 0, 0.040), (300, 2, 0.080), (400, 10, 0.300)]
    ):
        _publish(cw, minute, "RequestCount", requests)
        if errors:
            _publish(cw, minute, "HTTPCode_Target_5XX_Count", errors)
        _publish(cw, minute, "TargetResponseTime", seconds)
    # another target group's traffic must not leak in
    cw.put_metric_data(
        Namespace="AWS/ApplicationELB",
        MetricData=[
            {
                "MetricName": "RequestCount",
                "Dimensions": [
                    {"Name": "LoadBalancer", "Value": LB},
                    {"Name": "TargetGroup", "Value": "targetgroup/other/1111111111111111"},
                ],
                "Timestamp": T0 + dt.timedelta(seconds=30),
                "Value": 5000,
            }
        ],
    )
    return cw


async def test_cloudwatch_source_is_a_signal_source(moto: str) -> None:
    """The adapter satisfies the SignalSource protocol and takes its name from settings."""
    src = _source(moto, name="alb-metrics")
    assert isinstance(src, SignalSource)
    assert src.name == "alb-metrics"
    await src.aclose()


async def test_observe_gives_fleet_numbers_as_canary_and_no_baseline(
    moto: str, published: Any
) -> None:
    """Requests and 5xx of the whole target group come back as the canary; baseline is missing."""
    src = _source(moto)
    obs = await src.observe(COHORTS, T0, T0 + dt.timedelta(minutes=3))
    canary, baseline = obs[Cohort.CANARY], obs[Cohort.BASELINE]
    assert (canary.requests, canary.errors, canary.available) == (1000, 12, True)
    assert canary.hosts == 3
    assert not baseline.available
    assert baseline.detail == "cloudwatch has no per-target split"
    await src.aclose()


async def test_observe_puts_each_periods_requests_in_its_latency_bucket(
    moto: str, published: Any
) -> None:
    """Each minute's requests land in the bucket holding that minute's response time."""
    src = _source(moto, latency_bounds_ms=[50, 100, 250])
    obs = await src.observe(COHORTS, T0, T0 + dt.timedelta(minutes=3))
    canary = obs[Cohort.CANARY]
    assert tuple(canary.latency_bounds_ms) == (50.0, 100.0, 250.0)
    assert tuple(canary.latency_buckets) == (300, 300, 0, 400)
    await src.aclose()


async def test_consecutive_short_looks_share_a_period_exactly_once(
    moto: str, published: Any
) -> None:
    """Three 20-second looks over minute 1 get a third each and add up to that minute."""
    src = _source(moto)
    looks = []
    for i in range(3):
        start = T0 + dt.timedelta(minutes=1, seconds=20 * i)
        obs = await src.observe(COHORTS, start, start + dt.timedelta(seconds=20))
        looks.append((obs[Cohort.CANARY].requests, obs[Cohort.CANARY].errors))
    assert looks == [(100, 1), (100, 0), (100, 1)]
    again = await src.observe(COHORTS, T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=2))
    assert again[Cohort.CANARY].requests == 0
    await src.aclose()


async def test_delay_shifts_the_window_back(moto: str, published: Any) -> None:
    """With delay 2m, a look over minute 2 reads what the ALB published for minute 0."""
    src = _source(moto, delay="2m")
    obs = await src.observe(COHORTS, T0 + dt.timedelta(minutes=2), T0 + dt.timedelta(minutes=3))
    assert (obs[Cohort.CANARY].requests, obs[Cohort.CANARY].errors) == (300, 0)
    await src.aclose()


async def test_observe_without_datapoints_is_missing_not_zero(moto: str, published: Any) -> None:
    """A window with no RequestCount datapoint is missing for the canary too: never a pass."""
    src = _source(moto)
    later = T0 + dt.timedelta(hours=2)
    obs = await src.observe(COHORTS, later, later + dt.timedelta(minutes=5))
    assert not obs[Cohort.CANARY].available
    assert "no RequestCount datapoint" in obs[Cohort.CANARY].detail
    await src.aclose()


async def test_preflight_accepts_dimensions_with_metrics(moto: str, published: Any) -> None:
    """Preflight passes when CloudWatch lists RequestCount for the configured dimensions."""
    src = _source(moto)
    said = await src.preflight([])
    await src.aclose()
    assert "no current traffic to judge" in said  # the datapoints are days old


async def test_preflight_rejects_dimensions_without_metrics(moto: str, published: Any) -> None:
    """A target group dimension CloudWatch never saw fails preflight naming both settings."""
    src = _source(moto, target_group="targetgroup/typo/73e2d6bc24d8a067")
    with pytest.raises(PreflightError) as err:
        await src.preflight([])
    assert "targetgroup/typo/73e2d6bc24d8a067" in err.value.message
    assert err.value.hint is not None and "target_group" in err.value.hint
    await src.aclose()


async def test_unreachable_endpoint_is_a_signal_error(moto: str) -> None:
    """A dead endpoint maps to SignalError naming GetMetricData, with a network hint."""
    src = _source("http://127.0.0.1:9", max_attempts=1, connect_timeout=1)
    with pytest.raises(SignalError) as err:
        await src.observe(COHORTS, T0, T0 + dt.timedelta(minutes=1))
    assert err.value.adapter == "cloudwatch"
    assert "GetMetricData" in err.value.message
    assert err.value.hint is not None and "endpoint" in err.value.hint
    await src.aclose()


async def test_a_period_still_being_published_is_never_handed_out_half_counted(
    moto: str, aws_client: Any
) -> None:
    """A look over a period CloudWatch is still adding to is missing and takes nothing; once
    the period is final the look gets all of it (here 100 + 200 published apart)."""
    import anyio

    cw = aws_client("cloudwatch")
    now = dt.datetime.now(dt.UTC)
    # a 1 s period 3 s ahead: not final (it ends, plus complete_after) for 5 s, so still
    # open when the first look comes, however slow the server
    period_start = now.replace(microsecond=0) + dt.timedelta(seconds=3)

    def publish(value: float) -> None:
        cw.put_metric_data(
            Namespace="AWS/ApplicationELB",
            MetricData=[
                {
                    "MetricName": "RequestCount",
                    "Dimensions": [
                        {"Name": "LoadBalancer", "Value": LB},
                        {"Name": "TargetGroup", "Value": TG},
                    ],
                    "Timestamp": period_start + dt.timedelta(milliseconds=500),
                    "Value": value,
                    "StorageResolution": 1,
                }
            ],
        )

    src = _source(moto, period="1s", complete_after="1s")
    window = (period_start, period_start + dt.timedelta(seconds=1))
    publish(100)
    early = await src.observe(COHORTS, *window)
    assert early[Cohort.CANARY].status is ObservationStatus.REJECTED
    assert "not final" in early[Cohort.CANARY].detail
    publish(200)
    await anyio.sleep(max(0.0, (window[1] - dt.datetime.now(dt.UTC)).total_seconds()) + 1.5)
    late = await src.observe(COHORTS, *window)
    assert (late[Cohort.CANARY].requests, late[Cohort.CANARY].available) == (300, True)
    await src.aclose()
