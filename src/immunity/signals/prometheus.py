"""Prometheus signal source: per-cohort request, error and latency counts from PromQL.

Speaks the Prometheus HTTP API v1 (2.x): `GET /api/v1/query` (instant queries at `time=start`
and `time=end`, see the modes below), and for preflight `GET /-/ready` and `GET /api/v1/status/buildinfo`. An optional
bearer token is sent as `Authorization: Bearer ...` and never logged or put in a message.

Each of the three PromQL templates (`requests`, `errors`, `latency_buckets`) is filled per
cohort. Placeholders:

* `{hosts}` — a regex alternation of the cohort's host label values, escaped for a PromQL
  regex inside a double-quoted string (`127\\\\.0\\\\.0\\\\.1:9001|...`); matchers are anchored.
* `{host_label}` — the label that names a host (`instance` by default).
* `{window}` — `end - start` as a PromQL duration (`5000ms`), for `mode: increase`.

Two modes, both counting what happened in [start, end):

* `delta` (default): the templates select *cumulative* counters (no `[range]`); each is
  evaluated at `start` and at `end` and the per-series differences are summed, with
  Prometheus's counter-reset rule (a drop means a restart: count the new value) and a series
  that is new at `end` counted from zero. Exact whole counts, no extrapolation, and it works
  for windows shorter than the scrape interval (the engine looks every second): consecutive
  windows add up to the whole bake. A window between two scrapes counts 0 requests.
* `increase`: the templates use `increase(x[{window}])`, evaluated once at `end`, as you
  would write them in Grafana. Prometheus extrapolates, so counts are rounded; the window
  must span at least two scrapes, otherwise there is no result and the cohort is missing.

`requests` must return at least one series (otherwise the cohort is `Observation.missing`);
an empty `errors` result means no error series exists yet, i.e. zero errors;
`latency_buckets` returns cumulative histogram buckets labelled `le`.

The defaults fit an app instrumented with prometheus_client as
`app_requests_total{code,release}` and `app_request_duration_seconds_bucket{release}`,
scraped with `instance="ADDRESS:PORT"` (the `host_value` template, filled from the HostRef).
A freshly started Prometheus has no sample for about 5 s (service discovery throttle).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from immunity.config.types import Duration
from immunity.domain import Cohort, HostRef, Observation
from immunity.errors import PreflightError, SignalError
from immunity.signals._gather import gather
from immunity.signals.base import RecentTraffic

Mode = Literal["delta", "increase"]

DEFAULTS: dict[str, dict[str, str]] = {
    "delta": {
        "requests": 'app_requests_total{{host_label}=~"{hosts}"}',
        "errors": 'app_requests_total{{host_label}=~"{hosts}",code=~"5.."}',
        "latency_buckets": 'app_request_duration_seconds_bucket{{host_label}=~"{hosts}"}',
    },
    "increase": {
        "requests": 'sum(increase(app_requests_total{{host_label}=~"{hosts}"}[{window}]))',
        "errors": (
            'sum(increase(app_requests_total{{host_label}=~"{hosts}",code=~"5.."}[{window}]))'
        ),
        "latency_buckets": (
            "sum by (le) (increase("
            'app_request_duration_seconds_bucket{{host_label}=~"{hosts}"}[{window}]))'
        ),
    },
}

RECENT_TRAFFIC_S = 60.0
"""Preflight reports the traffic of this last stretch."""

# RE2 metacharacters; everything else in a label value is literal.
_RE2_SPECIAL = set("\\.+*?()|[]{}^$")


class PrometheusSettings(BaseModel):
    """The `kind: prometheus` block of immunity.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "prometheus"
    """The signal's name, as checks refer to it (`checks[].signal`)."""
    url: str = Field(min_length=1)
    """Base URL of the Prometheus server, e.g. http://prometheus:9090."""
    bearer_token: SecretStr | None = None
    """Sent as `Authorization: Bearer` (from `${ENV}`); never logged."""
    timeout: Duration = 10.0
    """Per HTTP request."""
    host_label: str = Field(default="instance", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Label that tells hosts apart in the app's series."""
    host_value: str = "{address}:{port}"
    """Label value of one host; placeholders are HostRef fields: name, address, port, lb_id."""
    mode: Mode = "delta"
    """delta: counters at start and end, subtracted; increase: increase(x[{window}]) at end."""
    requests: str | None = None
    """PromQL template; the default depends on `mode` (see DEFAULTS)."""
    errors: str | None = None
    """PromQL template for 5xx responses; the default depends on `mode` (see DEFAULTS)."""
    latency_buckets: str | None = None
    """PromQL template for the latency histogram buckets; the default depends on `mode`."""
    latency: bool = True
    """Set false when the app has no latency histogram."""
    latency_unit: Literal["s", "ms"] = "s"
    """Unit of the `le` label values."""
    delay: Duration = 1.0
    """How long after an instant Prometheus holds every sample up to it (scrape and ingest);
    the bake asks for each window that much later."""
    stale_after: Duration = 60.0
    """delta mode: a cohort whose newest request sample at the window's end is older than
    this is stale (Prometheus no longer scrapes it): the look is missing, not zero."""

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

    @model_validator(mode="after")
    def _window_needs_increase(self) -> PrometheusSettings:
        if self.mode == "delta":
            for key in ("requests", "errors", "latency_buckets"):
                template = getattr(self, key)
                if template and "{window}" in template:
                    raise ValueError(
                        f"{key} uses {{window}}, which only `mode: increase` fills; "
                        "set mode: increase, or select the raw counters for mode: delta"
                    )
        return self

    def template(self, key: str) -> str | None:
        """The `requests` / `errors` / `latency_buckets` template in effect."""
        if key == "latency_buckets" and not self.latency:
            return None
        value: str | None = getattr(self, key)
        return value or DEFAULTS[self.mode][key]


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


DEFAULT_SCRAPE_S = 60.0
"""Prometheus's default `scrape_interval`, when the targets do not say theirs."""
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(duration: str) -> float | None:
    """A Prometheus duration (`15s`, `1m30s`, `500ms`) in seconds, or None."""
    parts = _DURATION_PART.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


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


Labels = tuple[tuple[str, str], ...]


def by_series(samples: Sequence[Mapping[str, Any]]) -> dict[Labels, float]:
    """An instant vector as {labels: value}, NaN samples dropped."""
    out: dict[Labels, float] = {}
    for sample in samples:
        value = float(sample["value"][1])
        if not math.isnan(value):
            out[tuple(sorted(sample.get("metric", {}).items()))] = value
    return out


def counter_deltas(
    before: Mapping[Labels, float], after: Mapping[Labels, float]
) -> dict[Labels, float]:
    """What each counter series counted between two instants.

    A series new at `after` counted from zero; a series that went down was reset (the
    process restarted) and counted its new value since. Series gone at `after` count 0.
    """
    out: dict[Labels, float] = {}
    for labels, value in after.items():
        previous = before.get(labels)
        out[labels] = value if previous is None or value < previous else value - previous
    return out


class _Rejected(Exception):
    """The answer is partial, stale or duplicated: not evidence."""


_TWIN_LABELS = ("job", "prometheus", "replica", "prometheus_replica", "__replica__")


def _duplicates(series: Mapping[Labels, float]) -> tuple[Labels, set[str]] | None:
    """Two series equal but for scrape-identity labels (job, replica...): one counter counted
    twice. Returns one of them and the labels they differ in, or None."""
    seen: dict[Labels, Labels] = {}
    for labels in series:
        key = tuple((k, v) for k, v in labels if k not in _TWIN_LABELS)
        other = seen.get(key)
        if other is not None:
            differ = {k for k, _ in set(labels) ^ set(other)}
            return labels, differ
        seen[key] = labels
    return None


def _show(labels: Labels) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


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
        self.delay = settings.delay
        self.recent_traffic: RecentTraffic | None = None
        """What preflight counted of the hosts' last minute (for the cross-check)."""
        self._ends: dict[tuple[str, float], dict[Labels, float]] = {}
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
        out = {}
        for key in ("requests", "errors", "latency_buckets"):
            template = self.settings.template(key)
            if template:
                out[key] = fill(template, **kw)
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
        try:
            series = await self._counts(queries, start, end)
        except _Rejected as exc:
            return Observation.rejected(f"{self.name}: {exc}")
        if not series["requests"]:
            return Observation.missing(
                f"{self.name}: no request data for {len(hosts)} host(s) over "
                f"{window_s:g}s (query: {queries['requests']})"
            )
        if self.settings.mode == "delta":
            problem = await self._stale(queries["requests"], end)
            if problem is not None:
                return Observation.rejected(f"{self.name}: {problem}")
        # no error series yet means nothing has failed
        n_requests = max(0, round(sum(series["requests"].values())))
        n_errors = min(n_requests, max(0, round(sum(series["errors"].values()))))
        bounds: list[float] = []
        buckets: list[int] = []
        if "latency_buckets" in series:
            per_le: dict[float, float] = {}
            for labels, count in series["latency_buckets"].items():
                le = dict(labels).get("le")
                if le is not None:
                    per_le[float(le)] = per_le.get(float(le), 0.0) + count
            scale = 1000.0 if self.settings.latency_unit == "s" else 1.0
            bounds, buckets = buckets_from_cumulative(sorted(per_le.items()), scale=scale)
        return Observation(
            requests=n_requests,
            errors=n_errors,
            latency_bounds_ms=tuple(bounds),
            latency_buckets=tuple(buckets),
            hosts=len(hosts),
        )

    async def _instant(self, promql: str, at: dt.datetime) -> dict[Labels, float]:
        """`promql` at `at`, read once: the answer at a window's end is kept and reused as
        the next window's start, so a sample ingested late (a scrape still in flight at the
        first read) moves to the next window instead of being lost or counted twice."""
        key = (promql, at.timestamp())
        got = self._ends.get(key)
        if got is None:
            got = by_series(await self.query(promql, at))
        return got

    async def _counts(
        self, queries: Mapping[str, str], start: dt.datetime, end: dt.datetime
    ) -> dict[str, dict[Labels, float]]:
        """Per query, per series: the count over [start, end), by the configured mode.

        Raises _Rejected when the answer is partial (a series at the start has no sample
        at the end: its target is down or no longer scraped) or duplicated (the same
        counter scraped by several jobs).
        """
        if self.settings.mode == "increase":
            at_end = await gather({k: self.query(q, end) for k, q in queries.items()})
            return {k: by_series(v) for k, v in at_end.items()}
        both = await gather(
            {
                (k, i): self._instant(q, t)
                for k, q in queries.items()
                for i, t in ((0, start), (1, end))
            }
        )
        for key in [key for key in self._ends if key[1] < start.timestamp()]:
            self._ends.pop(key, None)  # windows only move forward
        for k, q in queries.items():
            self._ends[(q, end.timestamp())] = both[k, 1]
        gone = [labels for labels in both["requests", 0] if labels not in both["requests", 1]]
        if gone:
            raise _Rejected(
                f"partial answer: {len(gone)} request series present at the window's start have "
                f"no sample at its end (target down or not scraped?): {_show(gone[0])}"
            )
        twins = _duplicates(both["requests", 1])
        if twins:
            raise _Rejected(
                "duplicated answer: the same counter comes from several series that differ "
                f"only in {', '.join(sorted(twins[1]))}: {_show(twins[0])} (scraped twice? "
                'narrow the query, e.g. with job="...")'
            )
        return {k: counter_deltas(both[k, 0], both[k, 1]) for k in queries}

    async def _stale(self, requests: str, end: dt.datetime) -> str | None:
        """Why the newest request sample at `end` is too old to describe the window, or None."""
        got = by_series(await self.query(f"max(timestamp({requests}))", end))
        if not got:
            return None
        newest = max(got.values())
        age = end.timestamp() - newest
        if age > self.settings.stale_after:
            return (
                f"stale answer: the newest request sample is {age:.0f} s older than the "
                f"window's end (stale_after {self.settings.stale_after:g}s): Prometheus no "
                "longer scrapes these hosts"
            )
        return None

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

    async def preflight(self, hosts: Sequence[HostRef]) -> str:
        """Prometheus is ready, answers the API, and accepts each query template; returns
        what it sees of the hosts' traffic over the last minute, in one sentence (or says
        plainly that it sees none)."""
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
        return await self._current_traffic(hosts)

    async def _scrape_interval(self, hosts: Sequence[HostRef]) -> float:
        """The longest scrape interval of the active targets that are these hosts
        (`/api/v1/targets`, `scrapeInterval`), of every active target when none is (the
        labels may be wrong), or Prometheus's default of 60 s when it cannot be read: how
        long after a request a scrape surely holds it."""
        values = {
            self.settings.host_value.format(
                name=h.name, address=h.address, port=h.port, lb_id=h.balancer_id
            )
            for h in hosts
        }
        try:
            resp = await self._get("/api/v1/targets", {"state": "active"})
            targets = resp.json()["data"]["activeTargets"]
            every = [(t["labels"], _seconds(str(t["scrapeInterval"]))) for t in targets]
        except (SignalError, ValueError, KeyError, TypeError):
            return DEFAULT_SCRAPE_S
        ours = [s for labels, s in every if s and labels.get(self.settings.host_label) in values]
        known = ours or [s for _, s in every if s]
        return max(known) if known else DEFAULT_SCRAPE_S

    async def _current_traffic(self, hosts: Sequence[HostRef]) -> str:
        end = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.settings.delay)
        start = end - dt.timedelta(seconds=RECENT_TRAFFIC_S)
        obs = await self._observe_one(hosts, start, end)
        self.recent_traffic = RecentTraffic(
            obs.requests if obs.available else None,
            start,
            end,
            settle_s=self.settings.delay + await self._scrape_interval(hosts),
        )
        where = _where(self.settings.url)
        if not obs.available:
            return (
                f"{self.name}: Prometheus at {where} answers, but gives no request count for "
                f"the {len(hosts)} host(s) over the last {RECENT_TRAFFIC_S:g} s ({obs.detail}): "
                "there is no current traffic it can see (check host_label and host_value if "
                "there should be)"
            )
        if obs.requests == 0:
            return (
                f"{self.name}: Prometheus at {where} counts no request on the {len(hosts)} "
                f"host(s) in the last {RECENT_TRAFFIC_S:g} s: there is no current traffic to judge"
            )
        return (
            f"{self.name}: Prometheus at {where} counts {obs.requests} request(s) "
            f"({obs.errors} 5xx) on the {len(hosts)} host(s) in the last {RECENT_TRAFFIC_S:g} s"
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
