"""Prometheus signal source: per-cohort request, error and latency counts from PromQL.

Speaks the Prometheus HTTP API v1 (2.x): `GET /api/v1/query` (instant queries, evaluated at
`time=end`), and for preflight `GET /-/ready` and `GET /api/v1/status/buildinfo`. An optional
bearer token is sent as `Authorization: Bearer ...` and never logged or put in a message.

Each of the three PromQL templates (`requests`, `errors`, `latency_buckets`) is filled per
cohort and must return a single number (`requests`, `errors`) or one sample per `le` label
(`latency_buckets`, cumulative like a Prometheus histogram). Placeholders:

* `{hosts}` — a regex alternation of the cohort's host label values, escaped for a PromQL
  regex inside a double-quoted string (`127\\\\.0\\\\.0\\\\.1:9001|...`); matchers are anchored.
* `{host_label}` — the label that names a host (`instance` by default).
* `{window}` — the observation window `end - start` as a PromQL duration (`5000ms`), so
  `increase(x[{window}])` counts what happened in [start, end).

The defaults fit an app instrumented with prometheus_client as
`app_requests_total{code,release}` and `app_request_duration_seconds_bucket{release}`,
scraped with `instance="ADDRESS:PORT"` (the `host_value` template, filled from the HostRef).

Assumptions: `increase()` extrapolates, so counts are rounded to whole requests; the window
must span at least two scrapes, otherwise Prometheus has nothing to say and the cohort is
`Observation.missing`. An empty `errors` result while `requests` has data means no error
series exists yet, i.e. zero errors. Freshly started Prometheus servers have no sample for
about 5 s (service discovery throttle).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from immunity.config.types import Duration
from immunity.domain import Cohort, HostRef, Observation
from immunity.errors import PreflightError, SignalError
from immunity.signals._gather import gather

DEFAULT_REQUESTS = 'sum(increase(app_requests_total{{host_label}=~"{hosts}"}[{window}]))'
DEFAULT_ERRORS = 'sum(increase(app_requests_total{{host_label}=~"{hosts}",code=~"5.."}[{window}]))'
DEFAULT_LATENCY = (
    'sum by (le) (increase(app_request_duration_seconds_bucket{{host_label}=~"{hosts}"}[{window}]))'
)

# RE2 metacharacters; everything else in a label value is literal.
_RE2_SPECIAL = set("\\.+*?()|[]{}^$")


class PrometheusSettings(BaseModel):
    """The `kind: prometheus` block of immunity.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "prometheus"
    url: str = Field(min_length=1)
    """Base URL of the Prometheus server, e.g. http://prometheus:9090."""
    bearer_token: SecretStr | None = None
    timeout: Duration = 10.0
    """Per HTTP request."""
    host_label: str = Field(default="instance", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    host_value: str = "{address}:{port}"
    """Label value of one host; placeholders are HostRef fields: name, address, port, lb_id."""
    requests: str = DEFAULT_REQUESTS
    errors: str = DEFAULT_ERRORS
    latency_buckets: str | None = DEFAULT_LATENCY
    """Leave empty (null) when there is no latency histogram."""
    latency_unit: Literal["s", "ms"] = "s"
    """Unit of the `le` label values."""

    @field_validator("host_value")
    @classmethod
    def _host_value(cls, v: str) -> str:
        try:
            v.format(name="h", address="127.0.0.1", port=80, lb_id="h")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"expected a template using {{name}}, {{address}}, {{port}} or {{lb_id}}, got {v!r}"
            ) from exc
        return v


def escape_regex(value: str) -> str:
    """`value` as a literal RE2 regex, written inside a double-quoted PromQL string."""
    regex = "".join("\\" + c if c in _RE2_SPECIAL else c for c in value)
    # PromQL string literal: backslash and double quote need their own escape.
    return regex.replace("\\", "\\\\").replace('"', '\\"')


def fill(template: str, *, hosts: str, host_label: str, window: str) -> str:
    """Replace only our three placeholders, so PromQL's own braces stay as written."""
    return (
        template.replace("{hosts}", hosts)
        .replace("{host_label}", host_label)
        .replace("{window}", window)
    )


def promql_duration(seconds: float) -> str:
    """A PromQL duration for `seconds`, at millisecond precision (`5000ms`), at least 1ms."""
    return f"{max(1, round(seconds * 1000))}ms"


def buckets_from_cumulative(
    samples: Sequence[tuple[float, float]], *, scale: float = 1.0
) -> tuple[list[float], list[int]]:
    """Cumulative `(le, count)` pairs -> (finite bounds * scale, per-bucket counts + overflow).

    Counts are rounded and forced monotonic first (`increase()` extrapolates each bucket on its
    own, so a bucket can come out a hair under the one before it).
    """
    ordered = sorted((le, c) for le, c in samples if not math.isnan(c))
    bounds: list[float] = []
    buckets: list[int] = []
    previous = 0
    total: int | None = None
    for le, count in ordered:
        cumulative = max(previous, round(count))
        if math.isinf(le):
            total = cumulative
            break
        bounds.append(le * scale)
        buckets.append(cumulative - previous)
        previous = cumulative
    buckets.append((total - previous) if total is not None else 0)
    if not bounds:
        return [], []
    return bounds, buckets


def _where(url: str) -> str:
    """host:port of the server, without any credentials that may be in the URL."""
    parts = urlsplit(url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "?"


class PrometheusSource:
    """Per-cohort observations from PromQL instant queries."""

    Settings = PrometheusSettings

    def __init__(self, settings: PrometheusSettings, *, base_dir: Path | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        self._client: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncBaseTransport | None = None  # tests may swap it

    # -- HTTP ---------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Accept": "application/json"}
            if self.settings.bearer_token is not None:
                headers["Authorization"] = f"Bearer {self.settings.bearer_token.get_secret_value()}"
            self._client = httpx.AsyncClient(
                base_url=self.settings.url.rstrip("/"),
                headers=headers,
                timeout=self.settings.timeout,
                transport=self._transport,
            )
        return self._client

    def _error(self, what: str) -> SignalError:
        return SignalError(
            f"{self.name}: {what} (prometheus at {_where(self.settings.url)})",
            adapter="prometheus",
            context={"signal": self.name},
        )

    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        try:
            return await self._http().get(path, params=params)
        except httpx.TimeoutException as exc:
            raise self._error(f"no answer within {self.settings.timeout:g}s to {path}") from exc
        except httpx.HTTPError as exc:
            raise self._error(f"cannot reach {path}: {type(exc).__name__}: {exc}") from exc

    async def query(self, promql: str, at: dt.datetime) -> list[dict[str, Any]]:
        """Run one instant query at `at`; the vector's samples (`metric`, `value`)."""
        resp = await self._get("/api/v1/query", {"query": promql, "time": f"{at.timestamp():.3f}"})
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            detail = ""
            if isinstance(body, dict):
                detail = f"{body.get('errorType', '')}: {body.get('error', '')}"
            else:
                detail = resp.text[:200]
            raise self._error(
                f"query failed with HTTP {resp.status_code} {detail} — query: {promql}"
            )
        data = body.get("data") or {}
        result_type = data.get("resultType")
        result = data.get("result")
        if result_type == "scalar" and isinstance(result, list):
            return [{"metric": {}, "value": result}]
        if result_type != "vector" or not isinstance(result, list):
            raise self._error(f"expected an instant vector, got {result_type!r} — query: {promql}")
        return result

    # -- the role -----------------------------------------------------------------------------

    def _hosts_regex(self, hosts: Sequence[HostRef]) -> str:
        values = []
        for h in hosts:
            value = self.settings.host_value.format(
                name=h.name, address=h.address, port=h.port, lb_id=h.balancer_id
            )
            values.append(escape_regex(value))
        return "|".join(values)

    def _queries(self, hosts: Sequence[HostRef], window_s: float) -> dict[str, str]:
        kw = {
            "hosts": self._hosts_regex(hosts),
            "host_label": self.settings.host_label,
            "window": promql_duration(window_s),
        }
        out = {
            "requests": fill(self.settings.requests, **kw),
            "errors": fill(self.settings.errors, **kw),
        }
        if self.settings.latency_buckets:
            out["latency"] = fill(self.settings.latency_buckets, **kw)
        return out

    async def _observe_one(
        self, hosts: Sequence[HostRef], start: dt.datetime, end: dt.datetime
    ) -> Observation:
        if not hosts:
            return Observation.missing("no hosts in this cohort")
        window_s = (end - start).total_seconds()
        if window_s <= 0:
            return Observation.missing(f"empty window {start.isoformat()}..{end.isoformat()}")
        queries = self._queries(hosts, window_s)
        results = await gather({key: self.query(promql, end) for key, promql in queries.items()})

        requests = _single(results["requests"])
        if requests is None or math.isnan(requests):
            return Observation.missing(
                f"{self.name}: no request data for {len(hosts)} host(s) over "
                f"{window_s:g}s (query: {queries['requests']})"
            )
        errors = _single(results["errors"])
        if errors is None:
            errors = 0.0  # no error series yet: nothing has failed
        if math.isnan(errors):
            return Observation.missing(f"{self.name}: error count is NaN over {window_s:g}s")
        n_requests = max(0, round(requests))
        n_errors = min(n_requests, max(0, round(errors)))
        bounds: list[float] = []
        buckets: list[int] = []
        if "latency" in results:
            pairs = []
            for sample in results["latency"]:
                le = sample.get("metric", {}).get("le")
                if le is None:
                    continue
                pairs.append((float(le), float(sample["value"][1])))
            scale = 1000.0 if self.settings.latency_unit == "s" else 1.0
            bounds, buckets = buckets_from_cumulative(pairs, scale=scale)
        return Observation(
            requests=n_requests,
            errors=n_errors,
            latency_bounds_ms=tuple(bounds),
            latency_buckets=tuple(buckets),
            hosts=len(hosts),
        )

    async def observe(
        self,
        cohorts: Mapping[Cohort, Sequence[HostRef]],
        start: dt.datetime,
        end: dt.datetime,
    ) -> dict[Cohort, Observation]:
        """Observations for each cohort over [start, end). Caller owns the deadline."""
        return await gather(
            {cohort: self._observe_one(hosts, start, end) for cohort, hosts in cohorts.items()}
        )

    async def preflight(self, hosts: Sequence[HostRef]) -> None:
        """Prometheus is ready, answers the API, and accepts each query template."""
        where = _where(self.settings.url)
        try:
            ready = await self._get("/-/ready")
        except SignalError as exc:
            raise PreflightError(
                f"{self.name}: Prometheus at {where} is unreachable: {exc.message}",
                hint="check the signal's url and that Prometheus is running",
            ) from exc
        if ready.status_code != 200:
            raise PreflightError(
                f"{self.name}: Prometheus at {where} is not ready (HTTP {ready.status_code})",
                hint="wait for Prometheus to finish starting (WAL replay) or check the url",
            )
        info = await self._get("/api/v1/status/buildinfo")
        if info.status_code in (401, 403):
            raise PreflightError(
                f"{self.name}: Prometheus at {where} refused the API (HTTP {info.status_code})",
                hint="set bearer_token (e.g. bearer_token: ${PROMETHEUS_TOKEN})",
            )
        if info.status_code != 200:
            raise PreflightError(
                f"{self.name}: {where} does not answer /api/v1/status/buildinfo "
                f"(HTTP {info.status_code})",
                hint="url must be the Prometheus server's base URL, without /api/v1",
            )
        # A syntax error in a template shows now, before any host is touched; an empty
        # result is fine (the app may have had no traffic yet).
        for key, promql in self._queries(hosts, 60.0).items():
            try:
                await self.query(promql, dt.datetime.now(dt.UTC))
            except SignalError as exc:
                raise PreflightError(
                    f"{self.name}: the {key} query is rejected: {exc.message}",
                    hint="check the PromQL template; placeholders are {hosts}, {host_label}, {window}",
                ) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _single(samples: list[dict[str, Any]]) -> float | None:
    """The one number of a query result (summed when several series came back); None when empty."""
    if not samples:
        return None
    total = 0.0
    for sample in samples:
        total += float(sample["value"][1])
    return total
