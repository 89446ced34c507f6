"""AWS CloudWatch metrics of one ALB target group as a signal (`kind: cloudwatch`).

Speaks CloudWatch ``GetMetricData`` (and ``ListMetrics`` at preflight) through boto3 (see
`immunity.clients.aws` for credentials, retries and error mapping). Reads, in namespace
``AWS/ApplicationELB`` with dimensions ``LoadBalancer`` + ``TargetGroup``:

* ``RequestCount`` (Sum) -> requests
* ``HTTPCode_Target_5XX_Count`` (Sum) -> errors (5xx answered by the targets themselves;
  the ALB's own 502/503/504 are ``HTTPCode_ELB_5XX_Count`` and not counted)
* ``TargetResponseTime`` (``latency_statistic``, default ``p99``) -> latency histogram

What it can and cannot say:

* **No per-target split.** ALB metrics exist per load balancer, target group and AZ, never
  per target, so this source cannot tell the canary from the baseline. It returns the
  fleet-wide numbers as the *canary* observation and ``Observation.missing`` for the
  baseline. Use it only with absolute guard rails (``error_rate_max``, ``latency_max``),
  never with the ``errors``/``latency`` comparisons (those come out inconclusive).
* **Latency is approximate.** CloudWatch returns one percentile per period, not a
  distribution. Each period's requests are put in the histogram bucket holding that
  period's ``latency_statistic`` value, so a quantile read back from the histogram is that
  statistic rounded *up* to a bucket bound: conservative for ``latency_max``.
* **Granularity and lag: each period is spread over the looks that cover it.** ALB metrics
  come per 60 s period, a minute or more late, while the bake asks every second for the
  last second. So the source reads the window shifted back by ``delay`` (default 2 min)
  and hands each look the share of each period's counts that its window covers (rounded
  so that consecutive looks add up to the period's exact totals, never counting a period
  twice). The judge sees a steady flow, ``delay`` late: make ``bake.min`` longer than
  ``delay`` plus a few periods, or the guard rail judges the fleet from before the canary.
* **Only final periods count.** CloudWatch keeps adding late counts to a period for a while;
  a period is read only once it ended ``complete_after`` (default 60 s) ago, and a look whose
  window holds a period that is not final yet is missing (rejected) and takes nothing from
  it. A ``GetMetricData`` result that is ``InternalError``, ``Forbidden`` or ``PartialData``
  without a next page is a partial answer: missing too.
* **No data is not zero.** When no period under the shifted window has a ``RequestCount``
  datapoint (no traffic, wrong dimensions, or not yet published: raise ``delay``) the
  canary observation is missing too.
* Costs: one ``GetMetricData`` (three metrics) per look until a period's datapoint is
  cached, so about one call per period once ``delay`` is long enough.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from immunity.clients.aws import AwsAccess, AwsApi
from immunity.config.types import Duration, LatencyBounds
from immunity.domain import Cohort, HostRef, Observation, utcnow
from immunity.errors import PreflightError, SignalError
from immunity.signals.base import RecentTraffic

ADAPTER = "cloudwatch"
NAMESPACE = "AWS/ApplicationELB"
log = logging.getLogger("immunity.signals.cloudwatch")

_NO_SPLIT = "cloudwatch has no per-target split"
_STAT = re.compile(r"^(p\d{1,2}(\.\d+)?|Average|Maximum|Minimum)$")

_CODE_HINTS = {
    "InvalidParameterValue": "check load_balancer, target_group, period and latency_statistic",
    "InvalidParameterCombination": "check period: 1, 5, 10, 30 or a multiple of 60 seconds",
}


class CloudWatchSettings(AwsAccess):
    """A `signals[]` block with `kind: cloudwatch`. Credentials come from the standard AWS chain."""

    name: str = "cloudwatch"
    """The signal's name, as checks refer to it (`checks[].signal`)."""
    load_balancer: str
    """The ALB's ``LoadBalancer`` dimension: ``app/<name>/<id>`` (the end of its ARN)."""
    target_group: str
    """The ``TargetGroup`` dimension: ``targetgroup/<name>/<id>`` (the end of its ARN)."""
    period: Duration = 60.0
    """CloudWatch period: 1s, 5s, 10s, 30s or a multiple of 60s."""
    delay: Duration = 120.0
    """How far back the window is shifted, so CloudWatch has published it."""
    complete_after: Duration = 60.0
    """A period's datapoint is final only this long after the period ends (CloudWatch adds
    late-arriving counts until then); a look over a period that is not final yet is missing,
    and the period is read again later, never handed out half-counted."""
    latency_statistic: str = "p99"
    """TargetResponseTime statistic: a percentile (p99, p95, p99.9), Average or Maximum."""
    latency_bounds_ms: LatencyBounds = Field(
        default_factory=lambda: [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0]
    )
    """Histogram bucket bounds (ms) into which each period's latency statistic is put."""

    @field_validator("load_balancer")
    @classmethod
    def _lb(cls, v: str) -> str:
        v = v.split(":loadbalancer/", 1)[-1]  # accept a whole ARN
        if not re.match(r"^app/[^/]+/\w+$", v):
            raise ValueError("expected the LoadBalancer dimension app/<name>/<id>")
        return v

    @field_validator("target_group")
    @classmethod
    def _tg(cls, v: str) -> str:
        v = v.rsplit(":", 1)[-1]  # accept a whole ARN
        if not re.match(r"^targetgroup/[^/]+/\w+$", v):
            raise ValueError("expected the TargetGroup dimension targetgroup/<name>/<id>")
        return v

    @field_validator("period")
    @classmethod
    def _period(cls, v: float) -> float:
        if v not in (1.0, 5.0, 10.0, 30.0) and (v < 60 or v % 60):
            raise ValueError("expected a CloudWatch period: 1s, 5s, 10s, 30s or a multiple of 60s")
        return v

    @model_validator(mode="after")
    def _final_in_time(self, info: ValidationInfo) -> CloudWatchSettings:
        """From a config file: `delay` at least `period` + `complete_after`. A shorter one
        puts, in every look, a period CloudWatch has not finished: each look is rejected and
        the guard rail never gets evidence (found at the end of the bake, after the canary
        was switched). Built in code (tests reading old datapoints), any delay is allowed."""
        least = self.period + self.complete_after
        if info.context and info.context.get("immunity.yaml") and self.delay < least:
            raise ValueError(
                f"delay: expected at least period + complete_after = {least:g}s (a shorter "
                "delay puts a period CloudWatch has not finished in every look, and each look "
                f"is rejected), got {self.delay:g}s"
            )
        return self

    @field_validator("latency_statistic")
    @classmethod
    def _stat(cls, v: str) -> str:
        if not _STAT.match(v):
            raise ValueError("expected p99 (any pNN), Average, Maximum or Minimum")
        return v


class _Period:
    """One period's datapoints and how much of them the looks have taken so far."""

    def __init__(self, requests: float, errors: float, latency_s: float | None) -> None:
        self.requests = requests
        self.errors = errors
        self.latency_s = latency_s
        self.taken = 0.0  # fraction of the period covered by past looks
        self.requests_given = 0
        self.errors_given = 0

    def take(self, fraction: float) -> tuple[int, int]:
        """Counts for `fraction` more of the period; the running totals are rounded, so the
        looks that cover the whole period add up to its exact counts."""
        self.taken = min(1.0, self.taken + max(0.0, fraction))
        n = max(0, round(self.requests * self.taken) - self.requests_given)
        x = max(
            0, min(round(self.errors * self.taken), self.requests_given + n) - self.errors_given
        )
        self.requests_given += n
        self.errors_given += x
        return n, x


class _Partial(Exception):
    """GetMetricData answered with part of the data."""


def _floor(t: dt.datetime, period: float) -> dt.datetime:
    ts = t.timestamp()
    return dt.datetime.fromtimestamp(math.floor(ts / period) * period, dt.UTC)


def _ceil(t: dt.datetime, period: float) -> dt.datetime:
    ts = t.timestamp()
    return dt.datetime.fromtimestamp(math.ceil(ts / period) * period, dt.UTC)


class CloudWatchSource:
    """Fleet-wide ALB target-group metrics; canary only, for absolute guard rails."""

    Settings = CloudWatchSettings

    def __init__(
        self, settings: CloudWatchSettings, *, base_dir: Path | None = None, client: Any = None
    ) -> None:
        """`client` injects a cloudwatch client (tests)."""
        self._s = settings
        self.name = settings.name
        self.recent_traffic: RecentTraffic | None = None
        """What preflight counted of the target group's last ten minutes (cross-check)."""
        self._api = AwsApi(
            settings,
            adapter=ADAPTER,
            error_cls=SignalError,
            code_hints=_CODE_HINTS,
            clients={"cloudwatch": client} if client is not None else None,
        )
        self._periods: dict[dt.datetime, _Period] = {}
        self._dims = [
            {"Name": "LoadBalancer", "Value": settings.load_balancer},
            {"Name": "TargetGroup", "Value": settings.target_group},
        ]

    def _query(self, qid: str, metric: str, stat: str) -> dict[str, Any]:
        return {
            "Id": qid,
            "MetricStat": {
                "Metric": {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": self._dims},
                "Period": int(self._s.period),
                "Stat": stat,
            },
            "ReturnData": True,
        }

    async def _fetch(self, lo: dt.datetime, hi: dt.datetime) -> None:
        """Cache every period in [lo, hi) that has a RequestCount datapoint (all pages)."""
        queries = [
            self._query("requests", "RequestCount", "Sum"),
            self._query("errors", "HTTPCode_Target_5XX_Count", "Sum"),
            self._query("latency", "TargetResponseTime", self._s.latency_statistic),
        ]
        series: dict[str, dict[dt.datetime, float]] = {q["Id"]: {} for q in queries}
        params: dict[str, Any] = {
            "MetricDataQueries": queries,
            "StartTime": lo,
            "EndTime": hi,
            "ScanBy": "TimestampAscending",
        }
        resource = f"{self._s.load_balancer} {self._s.target_group}"
        final_before = utcnow() - dt.timedelta(seconds=self._s.complete_after + self._s.period)
        for _ in range(100):  # pages; a handful of periods of three series fit in one
            reply = await self._api.call("cloudwatch", "GetMetricData", resource=resource, **params)
            for r in reply.get("MetricDataResults", []):
                status = r.get("StatusCode", "Complete")
                if status in ("InternalError", "Forbidden") or (
                    status == "PartialData" and not reply.get("NextToken")
                ):
                    why = (
                        "; ".join(str(m.get("Value", m)) for m in r.get("Messages", []) if m)
                        or "no message"
                    )
                    raise _Partial(
                        f"partial answer: GetMetricData {r.get('Id')} is {status} ({why})"
                    )
                got = series.setdefault(r["Id"], {})
                for t, v in zip(r.get("Timestamps", []), r.get("Values", []), strict=False):
                    if v is not None and math.isfinite(v):
                        got[t.astimezone(dt.UTC)] = float(v)
            token = reply.get("NextToken")
            if not token:
                break
            params["NextToken"] = token
        for t, n in series["requests"].items():
            if t > final_before:
                continue  # not final yet: CloudWatch may still add to it; read it again later
            # HTTPCode_Target_5XX_Count is only published for periods that had a 5xx
            self._periods[t] = _Period(n, series["errors"].get(t, 0.0), series["latency"].get(t))

    async def observe(
        self,
        cohorts: Mapping[Cohort, Sequence[HostRef]],
        start: dt.datetime,
        end: dt.datetime,
    ) -> dict[Cohort, Observation]:
        """Fleet-wide numbers as the canary; the baseline is always missing (no split).

        Reads [start, end) shifted back by `delay`; each period's counts are handed out in
        proportion to the part of it the window covers, once.
        """
        out: dict[Cohort, Observation] = {
            c: Observation.missing(_NO_SPLIT) for c in cohorts if c is not Cohort.CANARY
        }
        if Cohort.CANARY not in cohorts:
            return out
        period = self._s.period
        shift = dt.timedelta(seconds=self._s.delay)
        lo, hi = start - shift, end - shift
        if hi <= lo:
            out[Cohort.CANARY] = Observation.missing("cloudwatch: empty window")
            return out
        first, last = _floor(lo, period), _ceil(hi, period)
        step = dt.timedelta(seconds=period)
        under = [first + i * step for i in range(round((last - first) / step))]
        if any(p not in self._periods for p in under):
            try:
                await self._fetch(first, last)
            except _Partial as exc:
                out[Cohort.CANARY] = Observation.rejected(f"cloudwatch: {exc}")
                return out
        final_before = utcnow() - dt.timedelta(seconds=self._s.complete_after + period)
        pending = [p for p in under if p not in self._periods and p > final_before]
        if pending:
            # Take nothing from the window now: its periods are handed out once, whole.
            out[Cohort.CANARY] = Observation.rejected(
                f"cloudwatch: partial answer: the period at {pending[0]:%H:%M:%S} UTC is not "
                f"final until {self._s.complete_after:g}s after it ends (raise delay to at "
                f"least period + complete_after = {period + self._s.complete_after:g}s)"
            )
            return out
        bounds = tuple(self._s.latency_bounds_ms)
        buckets = [0] * (len(bounds) + 1)
        requests = errors = 0
        with_data = 0
        for p in under:
            got = self._periods.get(p)
            if got is None:
                continue
            with_data += 1
            overlap = (min(hi, p + step) - max(lo, p)).total_seconds()
            n, x = got.take(overlap / period)
            requests += n
            errors += x
            if got.latency_s is not None:
                buckets[_bucket(bounds, got.latency_s * 1000.0)] += n
        self._forget(first)
        if not with_data:
            out[Cohort.CANARY] = Observation.missing(
                f"cloudwatch: no RequestCount datapoint yet for {self._s.target_group} "
                f"between {lo:%H:%M:%S} and {hi:%H:%M:%S} UTC (delay {self._s.delay:g}s)"
            )
            return out
        out[Cohort.CANARY] = Observation(
            requests=requests,
            errors=errors,
            latency_bounds_ms=bounds if any(buckets) else (),
            latency_buckets=tuple(buckets) if any(buckets) else (),
            hosts=sum(len(h) for h in cohorts.values()),
            detail=f"cloudwatch: whole target group {self._s.target_group}, "
            f"{lo:%H:%M:%S}-{hi:%H:%M:%S} UTC ({self._s.delay:g}s late); "
            f"latency is the per-period {self._s.latency_statistic}",
        )
        return out

    def _forget(self, before: dt.datetime) -> None:
        """Drop periods well behind the window (windows only move forward)."""
        horizon = before - dt.timedelta(seconds=10 * self._s.period)
        for p in [p for p in self._periods if p < horizon]:
            del self._periods[p]

    async def preflight(self, hosts: Sequence[HostRef]) -> str:
        """Credentials resolve and CloudWatch knows RequestCount for these dimensions; returns
        what it shows of the target group's traffic in the last ten minutes (or that it shows
        none)."""
        await self._api.check_credentials()
        reply = await self._api.call(
            "cloudwatch",
            "ListMetrics",
            preflight=True,
            resource=self._s.target_group,
            Namespace=NAMESPACE,
            MetricName="RequestCount",
            Dimensions=self._dims,
        )
        if not reply.get("Metrics"):
            raise PreflightError(
                f"signal {self.name!r}: CloudWatch has no {NAMESPACE} RequestCount for "
                f"LoadBalancer={self._s.load_balancer} TargetGroup={self._s.target_group} "
                "(none in the last two weeks)",
                hint="check load_balancer (app/<name>/<id>) and target_group "
                "(targetgroup/<name>/<id>) and region; the ALB must have had traffic",
                context={"adapter": ADAPTER},
            )
        return await self._current_traffic()

    async def _current_traffic(self) -> str:
        """RequestCount of the last ten minutes before `delay`: the traffic CloudWatch shows
        now (fleet-wide), or plainly that it shows none. Nothing is cached for the bake."""
        hi = _floor(utcnow() - dt.timedelta(seconds=self._s.delay), self._s.period)
        lo = hi - dt.timedelta(minutes=10)
        reply = await self._api.call(
            "cloudwatch",
            "GetMetricData",
            preflight=True,
            resource=self._s.target_group,
            MetricDataQueries=[self._query("requests", "RequestCount", "Sum")],
            StartTime=lo,
            EndTime=hi,
        )
        values = [
            float(v)
            for r in reply.get("MetricDataResults", [])
            for v in r.get("Values", [])
            if v is not None and math.isfinite(v)
        ]
        # the window it read: minutes back, so a fresh look cannot be waited for
        self.recent_traffic = RecentTraffic(
            round(sum(values)) if values else None, lo, hi, settle_s=None
        )
        if not values or sum(values) <= 0:
            return (
                f"{self.name}: CloudWatch shows no request for {self._s.target_group} between "
                f"{lo:%H:%M} and {hi:%H:%M} UTC ({self._s.delay:g}s delay): there is no "
                "current traffic to judge"
            )
        return (
            f"{self.name}: CloudWatch shows {sum(values):.0f} request(s) for the whole "
            f"{self._s.target_group} between {lo:%H:%M} and {hi:%H:%M} UTC"
        )

    async def aclose(self) -> None:
        await self._api.aclose()


def _bucket(bounds: Sequence[float], value_ms: float) -> int:
    """Index of the first bucket whose upper bound holds `value_ms` (last = overflow)."""
    for i, b in enumerate(bounds):
        if value_ms <= b:
            return i
    return len(bounds)
