"""CloudWatchSource on recorded GetMetricData replies: p99, pagination, settings.

moto cannot evaluate percentile statistics, so the default `p99` request and its reply are
checked here with a fake cloudwatch client; replies follow the GetMetricData API reference.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from immunity.domain import Cohort, HostRef
from immunity.signals.cloudwatch import CloudWatchSource

pytestmark = pytest.mark.anyio

T0 = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)


class RecordedCloudWatch:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.calls: list[dict[str, Any]] = []

    def get_metric_data(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        return self.pages[len(self.calls) - 1]


def _source(client: RecordedCloudWatch, **kw: Any) -> CloudWatchSource:
    settings = CloudWatchSource.Settings(
        load_balancer="arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
        "loadbalancer/app/web/50dc6c495c0c9188",
        target_group="arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
        "targetgroup/web/73e2d6bc24d8a067",
        region="eu-west-1",
        **{"delay": 0, **kw},
    )
    return CloudWatchSource(settings, base_dir=Path("."), client=client)


def _result(qid: str, values: dict[dt.datetime, float]) -> dict[str, Any]:
    return {
        "Id": qid,
        "Label": qid,
        "Timestamps": list(values),
        "Values": list(values.values()),
        "StatusCode": "Complete",
    }


async def test_default_request_asks_p99_of_target_response_time_per_minute() -> None:
    """One GetMetricData with Sum of requests and 5xx and p99 latency, both dimensions, 60 s."""
    client = RecordedCloudWatch([{"MetricDataResults": []}])
    await _source(client).observe({Cohort.CANARY: []}, T0 + dt.timedelta(seconds=5), T0 + MIN)
    (call,) = client.calls
    stats = {
        q["MetricStat"]["Metric"]["MetricName"]: (
            q["MetricStat"]["Stat"],
            q["MetricStat"]["Period"],
        )
        for q in call["MetricDataQueries"]
    }
    assert stats == {
        "RequestCount": ("Sum", 60),
        "HTTPCode_Target_5XX_Count": ("Sum", 60),
        "TargetResponseTime": ("p99", 60),
    }
    dims = call["MetricDataQueries"][0]["MetricStat"]["Metric"]["Dimensions"]
    assert dims == [
        {"Name": "LoadBalancer", "Value": "app/web/50dc6c495c0c9188"},
        {"Name": "TargetGroup", "Value": "targetgroup/web/73e2d6bc24d8a067"},
    ]
    assert (call["StartTime"], call["EndTime"]) == (T0, T0 + MIN)


async def test_pages_are_followed_and_p99_fills_the_histogram() -> None:
    """Results split over NextToken pages add up; each minute's p99 picks its bucket."""
    pages = [
        {
            "MetricDataResults": [
                _result("requests", {T0: 600.0}),
                _result("latency", {T0: 0.120}),
            ],
            "NextToken": "page-2",
        },
        {
            "MetricDataResults": [
                _result("requests", {T0 + MIN: 400.0}),
                _result("errors", {T0 + MIN: 7.0}),
                _result("latency", {T0 + MIN: 3.2}),
            ]
        },
    ]
    client = RecordedCloudWatch(pages)
    src = _source(client, latency_bounds_ms=[100, 250, 1000])
    obs = await src.observe({Cohort.CANARY: [HostRef(name="a")]}, T0, T0 + 2 * MIN)
    canary = obs[Cohort.CANARY]
    assert (canary.requests, canary.errors) == (1000, 7)
    assert tuple(canary.latency_buckets) == (0, 600, 0, 400)
    assert client.calls[1]["NextToken"] == "page-2"


async def test_fleet_numbers_are_handed_out_once_however_the_looks_fall() -> None:
    """Looks of 7 s over two minutes add up to exactly both minutes' totals."""
    reply = {
        "MetricDataResults": [
            _result("requests", {T0: 1001.0, T0 + MIN: 999.0}),
            _result("errors", {T0: 13.0, T0 + MIN: 1.0}),
        ]
    }
    client = RecordedCloudWatch([reply] * 100)
    src = _source(client)
    requests = errors = 0
    t = T0
    while t < T0 + 2 * MIN:
        end = min(t + dt.timedelta(seconds=7), T0 + 2 * MIN)
        canary = (await src.observe({Cohort.CANARY: []}, t, end))[Cohort.CANARY]
        requests, errors, t = requests + canary.requests, errors + canary.errors, end
    assert (requests, errors) == (2000, 14)
    assert len(client.calls) == 1  # both periods came in the first answer and were cached


def test_settings_reject_a_period_cloudwatch_does_not_have() -> None:
    """A 45-second period is refused with the list of valid periods."""
    with pytest.raises(ValueError, match="multiple of 60s"):
        CloudWatchSource.Settings(
            load_balancer="app/web/1", target_group="targetgroup/web/2", period="45s"
        )
