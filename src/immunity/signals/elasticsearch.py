"""Access logs in Elasticsearch as a signal (`kind: elasticsearch`).

Speaks the Elasticsearch REST API through the official async client (`AsyncElasticsearch`,
elasticsearch-py 8.x, which speaks to Elasticsearch 8 and, by REST compatibility, 9). Calls used: ``GET /`` and ``HEAD /<index>`` and
``GET /<index>/_mapping`` at preflight, then one ``POST /<index>/_search`` per look.

Assumes one document per request (IIS, HAProxy, nginx access logs shipped by Filebeat,
Logstash or Elastic Agent), with a timestamp, the answering host, the HTTP status and
the time taken, in the fields named by the settings (ECS names by default).

Each look is ONE search, ``size: 0``, whose query is only a ``bool.filter`` of structured
clauses: a ``range`` on the timestamp [start, end) in ISO-8601 UTC, ``terms`` on the host
field with the cohorts' hosts, and a ``term``/``terms`` per configured filter. Never a
Lucene ``query_string``: host names and filter values are sent as JSON values, so no
quote, colon, space or ``OR`` in them can change the query. Per cohort, a ``filters``
aggregation bucket gives the request count, a ``range`` sub-aggregation the 5xx count and
another ``range`` the latency histogram on the configured bounds (a request of exactly a
bound's latency counts in that bound's bucket).

Preflight checks the cluster answers, the index pattern matches an index, and each field
is mapped with a type the query can use (a ``text`` host field would be analysed and never
match exactly: use its ``.keyword`` sub-field).

Every elasticsearch/elastic-transport error leaves through `_map_error`, once, as
`SignalError` (or `PreflightError` at preflight). Messages show the URL without
credentials and never the api_key or password.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from elastic_transport import ApiError as TransportApiError
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, SerializationError, TlsError, TransportError
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    AuthenticationException,
    AuthorizationException,
    BadRequestError,
    NotFoundError,
    UnsupportedProductError,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from immunity.config import resolve_path
from immunity.config.types import Duration, LatencyBounds
from immunity.domain import Cohort, HostRef, Observation
from immunity.errors import ImmunityError, PreflightError, SignalError
from immunity.signals.base import RecentTraffic

ADAPTER = "elasticsearch"
log = logging.getLogger("immunity.signals.elasticsearch")

RECENT_TRAFFIC_S = 60.0
ES_REFRESH_S = 1.0
"""Elasticsearch's default `index.refresh_interval`: a document is searchable that long
after it is indexed (on top of the shipper's lag, which `delay` covers)."""
"""Preflight reports the traffic of this last stretch."""
# latency_unit -> how many field units make one millisecond
_PER_MS = {"ms": 1.0, "s": 0.001, "us": 1000.0, "ns": 1_000_000.0}
_NUMERIC = {
    "long",
    "integer",
    "short",
    "byte",
    "double",
    "float",
    "half_float",
    "scaled_float",
    "unsigned_long",
}
_EXACT = {"keyword", "constant_keyword", "wildcard", "ip", "boolean", *_NUMERIC}
_DATES = {"date", "date_nanos"}

FilterValue = str | int | bool | list[str | int | bool]


class ElasticsearchSettings(BaseModel):
    """A `signals[]` block with `kind: elasticsearch`. Secrets come in through ${ENV}."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "elasticsearch"
    """The signal's name, as checks refer to it (`checks[].signal`)."""
    url: str
    """https://host:9200 (or a list separated by commas); may be ${ES_URL}."""
    api_key: SecretStr | None = None
    """An encoded API key (the `encoded` value of the create-API-key answer); use ${ENV}."""
    username: str | None = None
    """Basic-auth user (or use an API key)."""
    password: SecretStr | None = None
    """Basic-auth password (from `${ENV}`); never logged."""
    verify_certs: bool = True
    """Check the cluster's TLS certificate."""
    ca_certs: str | None = None
    """PEM bundle of the cluster's CA, relative to the config file's folder."""
    index: str
    """Index name or pattern, e.g. "iis-logs-*" (comma-separated list allowed)."""
    timestamp_field: str = "@timestamp"
    """Field holding each request's time."""
    host_field: str = "host.name"
    """Field naming the host that served the request."""
    status_field: str = "http.response.status_code"
    """Field holding the HTTP status."""
    latency_field: str = "event.duration"
    """Field holding the request's duration (in `latency_unit`)."""
    latency_unit: Literal["ms", "s", "us", "ns"] = "ns"
    """Unit of latency_field; ECS event.duration is in ns, IIS time-taken in ms."""
    filters: dict[str, FilterValue] = Field(default_factory=dict)
    """Exact-match filters, field -> value or list of values (e.g. application_name: shop)."""
    host_names: dict[str, str] = Field(default_factory=dict)
    """Host name in the config -> its value in host_field, when they differ."""
    latency_bounds_ms: LatencyBounds = Field(
        default_factory=lambda: [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0]
    )
    """Histogram bucket bounds (ms) for the latency checks."""
    request_timeout: Duration = 10.0
    """Seconds one search request may take."""
    delay: Duration = 5.0
    """How long after a request its document is searchable (shipper + refresh interval);
    the bake asks for each window that much later."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        for part in v.split(","):
            u = urllib.parse.urlsplit(part.strip())
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError("expected an http(s) URL such as https://es.example:9200")
        return v

    @model_validator(mode="after")
    def _auth(self) -> ElasticsearchSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password, or neither")
        if self.api_key is not None and self.username is not None:
            raise ValueError("set api_key or username/password, not both")
        return self


def _safe_url(url: str) -> str:
    """The URL(s) without user:password."""
    out = []
    for part in url.split(","):
        u = urllib.parse.urlsplit(part.strip())
        netloc = u.hostname or ""
        if u.port:
            netloc += f":{u.port}"
        out.append(urllib.parse.urlunsplit((u.scheme, netloc, u.path, "", "")))
    return ",".join(out)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _field_type(mapping: Mapping[str, Any], path: str) -> str | None:
    """The mapped type of dotted `path` in one index's mappings (multi-fields, aliases and
    runtime fields included), or None when it is not mapped."""
    runtime = mapping.get("runtime", {})
    if path in runtime:
        return str(runtime[path].get("type", "keyword"))
    node: Mapping[str, Any] = mapping
    parts = path.split(".")
    i = 0
    while i < len(parts):
        children = node.get("properties") or node.get("fields") or {}
        # a field may be mapped under a dotted name ("status.code") as well as nested
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in children:
                node, i = children[key], j
                break
        else:
            return None
    if node.get("type") == "alias" and isinstance(node.get("path"), str):
        return _field_type(mapping, node["path"])
    return str(node.get("type", "object"))


class ElasticsearchSource:
    """Per-cohort request, 5xx and latency counts from access-log documents."""

    Settings = ElasticsearchSettings

    def __init__(self, settings: ElasticsearchSettings, *, base_dir: Path) -> None:
        self._s = settings
        self.name = settings.name
        self._base_dir = base_dir
        self._url = _safe_url(settings.url)
        self.delay = settings.delay
        self.recent_traffic: RecentTraffic | None = None
        """What preflight counted of the hosts' last minute (for the cross-check)."""
        self._es: AsyncElasticsearch | None = None
        self._secrets = [
            s.get_secret_value() for s in (settings.api_key, settings.password) if s is not None
        ]
        userinfo = [urllib.parse.urlsplit(p.strip()).password for p in settings.url.split(",")]
        self._secrets += [p for p in userinfo if p]

    def _client(self) -> AsyncElasticsearch:
        if self._es is None:
            s = self._s
            kw: dict[str, Any] = {
                "request_timeout": s.request_timeout,
                "max_retries": 2,
                "retry_on_timeout": True,
            }
            if s.api_key is not None:
                kw["api_key"] = s.api_key.get_secret_value()
            if s.username is not None and s.password is not None:
                kw["basic_auth"] = (s.username, s.password.get_secret_value())
            if any(p.strip().startswith("https:") for p in s.url.split(",")):
                kw["verify_certs"] = s.verify_certs
                if s.ca_certs:
                    kw["ca_certs"] = str(resolve_path(self._base_dir, s.ca_certs))
            hosts = [p.strip() for p in s.url.split(",")]
            self._es = AsyncElasticsearch(hosts, **kw)
        return self._es

    # -- errors -------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _map_error(self, exc: Exception, *, action: str, preflight: bool) -> ImmunityError:
        """The one place an elasticsearch/elastic-transport error becomes immunity's."""
        s = self._s
        where = f"signal {self.name!r}: {action} at {self._url}"
        hint: str | None
        if isinstance(exc, ConnectionTimeout):
            message = f"{where} timed out"
            hint = "check the cluster's health and network; raise request_timeout if it is slow"
        elif isinstance(exc, TlsError):
            message = f"{where}: TLS failed: {exc.message}"
            hint = "set ca_certs to the cluster's CA bundle (or verify_certs: false for a test cluster)"
        elif isinstance(exc, TransportConnectionError):
            message = f"{where}: cannot connect: {exc.message}"
            hint = "check url, that the cluster is up and reachable from here (proxy, firewall)"
        elif isinstance(exc, UnsupportedProductError):
            message = f"{where}: the server is not Elasticsearch"
            hint = (
                "the official client talks to Elasticsearch only (OpenSearch refuses its "
                "product check); point url at an Elasticsearch cluster"
            )
        elif isinstance(exc, AuthenticationException):
            message = f"{where}: authentication failed (401)"
            hint = "check api_key, or username and password (set them through ${ENV})"
        elif isinstance(exc, AuthorizationException):
            message = f"{where}: not allowed (403): {exc.message}"
            hint = f"grant the user read and view_index_metadata on {s.index}"
        elif isinstance(exc, NotFoundError):
            message = f"signal {self.name!r}: index {s.index} does not exist ({exc.message})"
            hint = "check index (a name or a pattern such as iis-logs-*)"
        elif isinstance(exc, BadRequestError):
            message = f"{where}: the cluster rejected the query: {self._reason(exc)}"
            hint = (
                f"check the field settings: {s.status_field} and {s.latency_field} must be "
                f"numeric, {s.timestamp_field} a date, {s.host_field} a keyword"
            )
        elif isinstance(exc, ApiError | TransportApiError):
            message = f"{where}: HTTP {exc.meta.status}: {self._reason(exc)}"
            hint = None
        elif isinstance(exc, SerializationError):
            message = f"{where}: unreadable answer: {exc.message}"
            hint = "check url points at the Elasticsearch REST port (9200)"
        else:
            message = f"{where}: {type(exc).__name__}: {exc}"
            hint = None
        message = self._scrub(message)
        if preflight:
            return PreflightError(message, hint=hint, context={"adapter": ADAPTER})
        return SignalError(message, adapter=ADAPTER, hint=hint)

    @staticmethod
    def _reason(exc: TransportApiError) -> str:
        body = exc.body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            causes = err.get("root_cause") or [err]
            first = causes[0] if isinstance(causes[0], dict) else err
            return f"{first.get('type', err.get('type'))}: {first.get('reason', err.get('reason'))}"
        return str(exc.message)

    async def _call(self, action: str, coro: Any, *, preflight: bool = False) -> Any:
        try:
            return await coro
        except (TransportError, TransportApiError) as exc:
            raise self._map_error(exc, action=action, preflight=preflight) from exc

    # -- the query ------------------------------------------------------------------------

    def _host_value(self, host: HostRef) -> str:
        return self._s.host_names.get(host.name, host.name)

    def _hosts_clause(self, hosts: Sequence[HostRef]) -> dict[str, Any]:
        return {"terms": {self._s.host_field: [self._host_value(h) for h in hosts]}}

    def query(
        self, cohorts: Mapping[Cohort, Sequence[HostRef]], start: dt.datetime, end: dt.datetime
    ) -> dict[str, Any]:
        """The search body of one look (public so that docs and tests can show it)."""
        s = self._s
        everyone = [h for hosts in cohorts.values() for h in hosts]
        clauses: list[dict[str, Any]] = [
            {
                "range": {
                    s.timestamp_field: {
                        "gte": _iso(start),
                        "lt": _iso(end),
                        "format": "strict_date_optional_time",
                    }
                }
            },
            self._hosts_clause(everyone),
        ]
        for fld, value in s.filters.items():
            if isinstance(value, list):
                clauses.append({"terms": {fld: value}})
            else:
                clauses.append({"term": {fld: value}})
        per_ms = _PER_MS[s.latency_unit]
        # range `to` is exclusive; nudging it up one ulp makes each bucket "<= bound"
        edges = [math.nextafter(b * per_ms, math.inf) for b in s.latency_bounds_ms]
        ranges: list[dict[str, Any]] = []
        for i, edge in enumerate(edges):
            r: dict[str, Any] = {"key": str(i), "to": edge}
            if i:
                r["from"] = edges[i - 1]
            ranges.append(r)
        ranges.append({"key": str(len(edges)), "from": edges[-1]})
        return {
            "size": 0,
            "track_total_hits": False,
            "query": {"bool": {"filter": clauses}},
            "aggs": {
                "cohorts": {
                    "filters": {
                        "filters": {
                            str(c): self._hosts_clause(hosts)
                            for c, hosts in cohorts.items()
                            if hosts
                        }
                    },
                    "aggs": {
                        "errors": {
                            "range": {
                                "field": s.status_field,
                                "ranges": [{"key": "5xx", "from": 500, "to": 600}],
                            }
                        },
                        "latency": {"range": {"field": s.latency_field, "ranges": ranges}},
                        "hosts": {"terms": {"field": s.host_field, "size": max(1, len(everyone))}},
                    },
                }
            },
        }

    async def observe(
        self,
        cohorts: Mapping[Cohort, Sequence[HostRef]],
        start: dt.datetime,
        end: dt.datetime,
    ) -> dict[Cohort, Observation]:
        """Counts per cohort over [start, end) from one search request."""
        out: dict[Cohort, Observation] = {
            c: Observation.missing("no hosts in this cohort") for c, h in cohorts.items() if not h
        }
        if len(out) == len(cohorts):
            return out
        body = self.query(cohorts, start, end)
        reply = await self._call("search", self._client().search(index=self._s.index, **body))
        partial = self._partial(reply.body)
        if partial is not None:
            out.update({c: Observation.rejected(partial) for c, h in cohorts.items() if h})
            return out
        try:
            out.update(self._parse(reply.body, cohorts))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SignalError(
                f"signal {self.name!r}: search answer from {self._url} lacks the cohort "
                f"aggregations ({type(exc).__name__}: {exc})",
                adapter=ADAPTER,
                hint="the cluster must support filters and range aggregations",
            ) from exc
        return out

    def _partial(self, body: Mapping[str, Any]) -> str | None:
        """Why a search answer covers only part of the data (failed shards, a timeout)."""
        shards = body.get("_shards") if isinstance(body, Mapping) else None
        failed = int(shards.get("failed", 0) or 0) if isinstance(shards, Mapping) else 0
        if failed:
            total = shards.get("total", "?") if isinstance(shards, Mapping) else "?"
            failures = shards.get("failures") if isinstance(shards, Mapping) else None
            why = ""
            if isinstance(failures, list) and failures and isinstance(failures[0], Mapping):
                first = failures[0]
                reason = first.get("reason")
                text = reason.get("reason") if isinstance(reason, Mapping) else reason
                why = f" (index {first.get('index', '?')}: {text})"
            return (
                f"signal {self.name!r}: partial answer: {failed} of {total} shard(s) of "
                f"{self._s.index} failed{why}"
            )
        if isinstance(body, Mapping) and body.get("timed_out") is True:
            return (
                f"signal {self.name!r}: partial answer: the search of {self._s.index} timed "
                "out and returned what it had collected"
            )
        return None

    def _parse(
        self, body: Mapping[str, Any], cohorts: Mapping[Cohort, Sequence[HostRef]]
    ) -> dict[Cohort, Observation]:
        buckets = body["aggregations"]["cohorts"]["buckets"]
        bounds = tuple(self._s.latency_bounds_ms)
        out: dict[Cohort, Observation] = {}
        for cohort, hosts in cohorts.items():
            if not hosts:
                continue
            b = buckets[str(cohort)]
            lat = {str(x["key"]): int(x["doc_count"]) for x in b["latency"]["buckets"]}
            errors = sum(int(x["doc_count"]) for x in b["errors"]["buckets"])
            seen = len(b["hosts"]["buckets"])
            out[cohort] = Observation(
                requests=int(b["doc_count"]),
                errors=errors,
                latency_bounds_ms=bounds,
                latency_buckets=tuple(lat.get(str(i), 0) for i in range(len(bounds) + 1)),
                hosts=len(hosts),
                detail=f"elasticsearch {self._s.index}: {seen} of {len(hosts)} host(s) logged "
                "requests in the window",
            )
        return out

    # -- preflight --------------------------------------------------------------------------

    async def preflight(self, hosts: Sequence[HostRef]) -> str:
        """The cluster answers, the index pattern matches, and every field is usable; returns
        what the index shows of the hosts' traffic in the last minute (or that it shows none)."""
        s = self._s
        es = self._client()
        await self._call("GET /", es.info(), preflight=True)
        exists = await self._call(
            f"HEAD /{s.index}", es.indices.exists(index=s.index), preflight=True
        )
        if not exists:
            raise PreflightError(
                f"signal {self.name!r}: index {s.index} does not exist at {self._url}",
                hint="check index (a name or a pattern such as iis-logs-*) and that logs arrive",
                context={"adapter": ADAPTER},
            )
        reply = await self._call(
            f"GET /{s.index}/_mapping", es.indices.get_mapping(index=s.index), preflight=True
        )
        mappings = {name: body.get("mappings", {}) for name, body in dict(reply.body).items()}
        wanted: list[tuple[str, str, set[str]]] = [
            ("timestamp_field", s.timestamp_field, _DATES),
            ("host_field", s.host_field, _EXACT),
            ("status_field", s.status_field, _NUMERIC),
            ("latency_field", s.latency_field, _NUMERIC),
            *[(f"filters.{f}", f, _EXACT) for f in s.filters],
        ]
        problems: list[str] = []
        for setting, fld, allowed in wanted:
            types = {idx: _field_type(m, fld) for idx, m in mappings.items()}
            mapped = {idx: t for idx, t in types.items() if t is not None}
            if not mapped:
                problems.append(f"{setting}: field {fld!r} is in no index matching {s.index}")
                continue
            bad = {idx: t for idx, t in mapped.items() if t not in allowed}
            if bad:
                idx, t = sorted(bad.items())[0]
                fix = ""
                if t == "text" and _field_type(mappings[idx], f"{fld}.keyword") == "keyword":
                    fix = f" (use {fld}.keyword)"
                problems.append(
                    f"{setting}: field {fld!r} is mapped as {t} in {idx}, expected one of "
                    f"{', '.join(sorted(allowed))}{fix}"
                )
        if problems:
            raise PreflightError(
                f"signal {self.name!r}: index {s.index} cannot answer the query: "
                + "; ".join(problems),
                hint="fix the field settings of this signal to match the index mapping "
                f"(GET /{s.index}/_mapping)",
                context={"adapter": ADAPTER},
            )
        return await self._current_traffic(hosts)

    async def _current_traffic(self, hosts: Sequence[HostRef]) -> str:
        """One search over the last minute (its delay back): what the index shows of the
        hosts' traffic now, or plainly that it shows none."""
        end = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self._s.delay)
        start = end - dt.timedelta(seconds=RECENT_TRAFFIC_S)
        try:
            got = await self.observe({Cohort.BASELINE: hosts}, start, end)
        except SignalError as exc:
            raise PreflightError(
                f"signal {self.name!r}: the search of {self._s.index} fails: {exc.message}",
                hint=exc.hint,
                context={"adapter": ADAPTER},
            ) from exc
        obs = got[Cohort.BASELINE]
        self.recent_traffic = RecentTraffic(
            obs.requests if obs.available else None,
            start,
            end,
            settle_s=self._s.delay + ES_REFRESH_S,
        )
        if not obs.available:
            return f"{self.name}: {self._s.index} cannot say what the hosts serve now: {obs.detail}"
        if obs.requests == 0:
            return (
                f"{self.name}: {self._s.index} holds no request of the {len(hosts)} host(s) "
                f"in the last {RECENT_TRAFFIC_S:g} s (before the {self._s.delay:g}s delay): "
                "there is no current traffic to judge (check host_field and host_names if "
                "there should be)"
            )
        return (
            f"{self.name}: {self._s.index} holds {obs.requests} request(s) ({obs.errors} 5xx) "
            f"of the {len(hosts)} host(s) in the last {RECENT_TRAFFIC_S:g} s ({obs.detail})"
        )

    async def aclose(self) -> None:
        """Close the client's HTTP connections. Idempotent."""
        es, self._es = self._es, None
        if es is not None:
            await es.close()
