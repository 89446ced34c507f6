"""`CloudWatchSource` held to the SignalSource contract against a real moto server (server
mode, over HTTP).

moto routes no traffic and generates no ALB metrics, so the harness plays the ALB's part:
each request it "sends" is published the way an ALB publishes one answered request, at the
time it is answered (RequestCount 1, TargetResponseTime, and HTTPCode_Target_5XX_Count 1
when it answered 5xx), through a plain boto3 client into AWS/ApplicationELB at 1 s
resolution. What each case must count is that record. Each case has a target group of its
own (a fresh TargetGroup dimension), so nothing published by another case is in its windows.

CloudWatch has no per-target split (`split = False`): the canary counts the whole target
group and the baseline must be missing. It reads every window back by its `delay` (the
harness's `shift`). moto computes no percentile statistics, so latency is read as Maximum.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import boto3
import pytest

from immunity.domain import HostRef, utcnow
from immunity.sandbox.fleet import free_ports
from immunity.signals.base import SignalSource
from immunity.signals.cloudwatch import NAMESPACE, CloudWatchSource
from immunity.testing.contracts import SignalHarness, SignalSourceContract
from immunity.testing.contracts.signals import Sent

pytestmark = pytest.mark.timeout(90)

LB = "app/immunity-lb/50dc6c495c0c9188"
REGION = "us-east-1"
PERIOD_S = 1.0
COMPLETE_AFTER_S = 0.5  # the harness publishes a burst once it is sent: up to ~0.5 s late
DELAY_S = PERIOD_S + COMPLETE_AFTER_S  # the least delay the source accepts as final


class CloudWatchHarness(SignalHarness):
    split = False
    shift = DELAY_S
    # With 1 s periods a look covering part of a period gets that share of its counts: a
    # window's first and last requests are at least one period inside it.
    settle_s = PERIOD_S + 0.2

    def __init__(self, moto: str) -> None:
        self.moto = moto
        self.target_group = f"targetgroup/contract/{secrets.token_hex(8)}"
        self.source = self._source(moto)
        self.canary = [HostRef(name="web-1", lb_id="i-1")]
        self.baseline = [HostRef(name="web-2", lb_id="i-2")]
        self.cw: Any = boto3.client("cloudwatch", endpoint_url=moto, region_name=REGION)

    def _source(self, endpoint: str, **kw: Any) -> CloudWatchSource:
        settings = CloudWatchSource.Settings(
            endpoint_url=endpoint,
            region=REGION,
            load_balancer=LB,
            target_group=self.target_group,
            period=PERIOD_S,
            complete_after=COMPLETE_AFTER_S,
            delay=DELAY_S,
            latency_statistic="Maximum",
            **kw,
        )
        return CloudWatchSource(settings, base_dir=Path("."))

    def _datum(self, metric: str, at: dt.datetime, value: float) -> dict[str, Any]:
        return {
            "MetricName": metric,
            "Dimensions": [
                {"Name": "LoadBalancer", "Value": LB},
                {"Name": "TargetGroup", "Value": self.target_group},
            ],
            "Timestamp": at,
            "Value": value,
            "StorageResolution": 1,
        }

    async def send(self, n: int) -> Sent:
        """`n` requests, every other one to the canary, a third of the canary's answered 500,
        each published as the ALB would at the moment it is answered (2 ms apart)."""
        sent: Sent = Counter()
        data: list[dict[str, Any]] = []
        for i in range(n):
            host = (self.canary if i % 2 else self.baseline)[0]
            error = host in self.canary and i % 3 == 1
            at = utcnow()
            data.append(self._datum("RequestCount", at, 1))
            data.append(self._datum("TargetResponseTime", at, 0.004 + 0.001 * (i % 5)))
            if error:
                data.append(self._datum("HTTPCode_Target_5XX_Count", at, 1))
            sent[(host.name, error)] += 1
            await anyio.sleep(0.002)
        await anyio.to_thread.run_sync(
            lambda: self.cw.put_metric_data(Namespace=NAMESPACE, MetricData=data)
        )
        return sent

    async def broken(self) -> SignalSource:
        """Pointed at a port where no CloudWatch answers."""
        return self._source(
            f"http://127.0.0.1:{free_ports(1)[0]}", max_attempts=1, connect_timeout=1
        )


class TestCloudWatchSource(SignalSourceContract):
    @pytest.fixture
    async def harness(self, aws_module: str) -> AsyncIterator[SignalHarness]:
        h = CloudWatchHarness(aws_module)
        try:
            yield h
        finally:
            await h.source.aclose()
