"""Preflight's cross-check of a silent signal with the balancer's own counters, for a
CloudWatch signal behind an ALB, on a real moto server. moto routes no traffic and makes no
ALB metrics, so the test plays the ALB's part: it publishes the target group's
`RequestCount` per minute into AWS/ApplicationELB as an ALB does. The ALB's own count is
what `AlbTargetGroup.requests_between` reads back for the signal's window."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from immunity.analysis.preflight import cross_check_traffic
from immunity.domain import HostRef, utcnow
from immunity.errors import PreflightError
from immunity.lb.alb import AlbTargetGroup
from immunity.signals.cloudwatch import NAMESPACE, CloudWatchSource

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]
RETIRED = "targetgroup/immunity-tg-old/0123456789abcdef"


def _dims(lb: str, tg: str) -> list[dict[str, str]]:
    return [{"Name": "LoadBalancer", "Value": lb}, {"Name": "TargetGroup", "Value": tg}]


def source(moto: str, lb: str, tg: str) -> CloudWatchSource:
    settings = CloudWatchSource.Settings(
        name="alb", endpoint_url=moto, region="us-east-1", load_balancer=lb, target_group=tg
    )
    return CloudWatchSource(settings, base_dir=Path("."))


async def test_a_cloudwatch_signal_on_another_target_group_is_refused(
    moto: str, alb: Any, aws_client: Any
) -> None:
    """The ALB's target group served 30 requests a minute for the last six minutes; the
    signal names a retired target group (its last datapoint 40 minutes old), so it counts
    none in its window. The ALB's own RequestCount for that window contradicts it:
    preflight refuses, naming the signal and the count. The signal on the ALB's own
    target group counts the requests and preflight passes."""
    lb_dim = alb.load_balancer_arn.split(":loadbalancer/", 1)[1]
    tg_dim = alb.target_group_arn.rsplit(":", 1)[1]
    now = utcnow().replace(second=0, microsecond=0)
    served = [
        {
            "MetricName": "RequestCount",
            "Dimensions": _dims(lb_dim, tg_dim),
            "Timestamp": now - dt.timedelta(minutes=m),
            "Value": 30.0,
        }
        for m in range(1, 7)
    ]
    retired = {
        "MetricName": "RequestCount",
        "Dimensions": _dims(lb_dim, RETIRED),
        "Timestamp": now - dt.timedelta(minutes=40),
        "Value": 5.0,
    }
    aws_client("cloudwatch").put_metric_data(Namespace=NAMESPACE, MetricData=[*served, retired])
    hosts = [HostRef(name=f"web-{n}", lb_id=i) for n, i in enumerate(alb.instance_ids, 1)]
    balancer = AlbTargetGroup(
        AlbTargetGroup.Settings(target_group_arn=alb.target_group_arn, endpoint_url=moto),
        base_dir=Path("."),
    )
    wrong, right = source(moto, lb_dim, RETIRED), source(moto, lb_dim, tg_dim)
    try:
        await wrong.preflight(hosts)
        seen = wrong.recent_traffic
        assert seen is not None and seen.silent, seen
        stamps: list[dt.datetime] = [d["Timestamp"] for d in served]  # type: ignore[misc]
        expected = sum(30 for at in stamps if seen.start <= at < seen.end)
        assert expected > 0
        with pytest.raises(PreflightError) as raised:
            await cross_check_traffic(balancer, {"alb": wrong}, hosts)
        msg = raised.value.message
        assert "signal 'alb' saw no request" in msg, msg
        assert f"{expected} requests between {seen.start:%H:%M:%S}" in msg, msg
        await right.preflight(hosts)
        assert right.recent_traffic is not None and right.recent_traffic.requests == expected
        await cross_check_traffic(balancer, {"alb": right}, hosts)
    finally:
        await wrong.aclose()
        await right.aclose()
        await balancer.aclose()
