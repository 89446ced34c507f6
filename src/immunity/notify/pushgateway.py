"""Prometheus Pushgateway notifier: a small, bounded set of deployment metrics per app.

Speaks the Pushgateway HTTP API through prometheus_client (`pushadd_to_gateway`, i.e.
`POST /metrics/job/<job>/app/<app>`, in a worker thread) and reads the current counters
back with `GET /metrics` (text exposition) so they keep counting across runs. The grouping
key is `job` + `app`; no per-host or per-deployment labels (the Pushgateway never forgets a
series). POST replaces only the metric names it carries, so the last success and the last
failure timestamps survive each other.

Metrics, pushed for each final outcome (`deployment.<outcome>`):

    immunity_deployments_total                          counter, +1 per outcome
    immunity_deployment_failures_total                  counter, +1 for reverted,
                                                        revert_incomplete, failed
    immunity_deployment_last_outcome{outcome,release}   1 (only the last one is kept)
    immunity_deployment_last_timestamp_seconds          when the last outcome happened
    immunity_deployment_last_success_timestamp_seconds  on success only
    immunity_deployment_last_failure_timestamp_seconds  on failure only
    immunity_deployment_<timing>_seconds                each numeric `*_s` of the event data
                                                        (detected_after, reverted_after, duration)

Assumes one deployment per app at a time (immunity's lease), so the read-then-push of the
counters does not race with itself.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import basic_auth_handler, default_handler, pushadd_to_gateway
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field, SecretStr, field_validator

from immunity.config.types import Duration
from immunity.domain import Event
from immunity.errors import NotifyError
from immunity.notify.common import NotifierSettings, timings, wants

SUCCESS = {"deployment.succeeded", "deployment.rolled_back"}
FAILURE = {"deployment.reverted", "deployment.revert_incomplete", "deployment.failed"}

_METRIC_BAD = re.compile(r"[^a-zA-Z0-9_]")


class PushgatewaySettings(NotifierSettings):
    """The `kind: pushgateway` block of immunity.yaml."""

    url: str = Field(min_length=1)
    """Base URL of the Pushgateway, e.g. http://pushgateway:9091."""
    job: str = Field(default="immunity", pattern=r"^[A-Za-z0-9_.\-]+$")
    """Pushgateway job name the metrics are pushed under."""
    timeout: Duration = 5.0
    """Seconds one push may take."""
    username: str | None = None
    """Basic-auth user, when the Pushgateway sits behind it."""
    password: SecretStr | None = None
    """Basic auth, when the Pushgateway sits behind it."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v.rstrip("/")


def _outcome(kind: str) -> str:
    return kind.split(".", 1)[1] if kind.startswith("deployment.") else kind


def current_counters(text: str, job: str, app: str) -> dict[str, float]:
    """Our counters' values in a Pushgateway's `/metrics` text, for one job and app."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("immunity_"):
            continue
        for sample in family.samples:
            if (
                sample.name.endswith("_total")
                and sample.labels.get("job") == job
                and sample.labels.get("app") == app
            ):
                out[sample.name] = float(sample.value)
    return out


def build_registry(event: Event, previous: dict[str, float]) -> CollectorRegistry:
    """The metrics to push for `event`, counters continuing from `previous`."""
    reg = CollectorRegistry()
    deployments = Counter(
        "immunity_deployments", "Deployments that reached an outcome.", registry=reg
    )
    failures = Counter(
        "immunity_deployment_failures",
        "Deployments whose release was rejected or could not be deployed.",
        registry=reg,
    )
    deployments.inc(previous.get("immunity_deployments_total", 0.0) + 1)
    failures.inc(previous.get("immunity_deployment_failures_total", 0.0) + (event.kind in FAILURE))
    at = event.at.timestamp()
    Gauge(
        "immunity_deployment_last_outcome",
        "1 for the last deployment's outcome and release.",
        ["outcome", "release"],
        registry=reg,
    ).labels(_outcome(event.kind), event.release).set(1)
    Gauge(
        "immunity_deployment_last_timestamp_seconds",
        "When the last deployment reached its outcome.",
        registry=reg,
    ).set(at)
    if event.kind in SUCCESS:
        Gauge(
            "immunity_deployment_last_success_timestamp_seconds",
            "When the last successful deployment finished.",
            registry=reg,
        ).set(at)
    if event.kind in FAILURE:
        Gauge(
            "immunity_deployment_last_failure_timestamp_seconds",
            "When the last failed deployment finished.",
            registry=reg,
        ).set(at)
    for key, seconds in sorted(timings(event.data).items()):
        Gauge(
            f"immunity_deployment_{_METRIC_BAD.sub('_', key)}_seconds",
            f"{key.replace('_', ' ')} of the last deployment, in seconds.",
            registry=reg,
        ).set(seconds)
    return reg


class PushgatewayNotifier:
    """Pushes deployment counters and last-outcome gauges to a Prometheus Pushgateway."""

    Settings = PushgatewaySettings

    def __init__(self, settings: PushgatewaySettings, *, base_dir: Path | None = None) -> None:
        self.settings = settings
        self.name = settings.name or "pushgateway"

    def wants(self, event: Event) -> bool:
        return wants(self.settings.events, event.kind)

    def _handler(self, **kw: Any) -> Any:
        s = self.settings
        if s.username is not None:
            password = s.password.get_secret_value() if s.password else ""
            return basic_auth_handler(username=s.username, password=password, **kw)
        return default_handler(**kw)

    def _push(self, event: Event) -> None:
        """Read the counters, then push; runs in a worker thread."""
        s = self.settings
        auth = None
        if s.username is not None:
            auth = (s.username, s.password.get_secret_value() if s.password else "")
        try:
            resp = httpx.get(f"{s.url}/metrics", timeout=s.timeout, auth=auth)
        except httpx.HTTPError as exc:
            raise self._error(f"cannot read counters ({type(exc).__name__})") from exc
        if resp.status_code != 200:
            raise self._error(f"GET /metrics answered HTTP {resp.status_code}")
        try:
            previous = current_counters(resp.text, s.job, event.app)
        except ValueError as exc:
            raise self._error("its /metrics is not Prometheus text format") from exc
        registry = build_registry(event, previous)
        try:
            pushadd_to_gateway(
                s.url,
                job=s.job,
                registry=registry,
                grouping_key={"app": event.app},
                timeout=s.timeout,
                handler=self._handler,
            )
        except OSError as exc:
            raise self._error(f"push failed: {_reason(exc)}") from exc

    def _error(self, what: str) -> NotifyError:
        return NotifyError(
            f"{self.name}: Pushgateway {what}",
            adapter=self.name,
            hint="check the url (base URL, without /metrics) and that the Pushgateway runs",
        )

    async def notify(self, event: Event) -> None:
        """Send `event`. Caller owns the deadline. Raises NotifyError.

        The read and the push run in a worker thread (prometheus_client is synchronous), which
        the caller's deadline abandons: it ends there, not after up to two `timeout`s (the
        engine's 10 s notification deadline waited for a Pushgateway that never answered).
        An abandoned push may still land; it carries only this event's metrics."""
        await anyio.to_thread.run_sync(partial(self._push, event), abandon_on_cancel=True)

    async def aclose(self) -> None:
        pass


def _reason(exc: OSError) -> str:
    """urllib's errors without the URL: a status line or the socket error."""
    code = getattr(exc, "code", None)
    if code is not None:
        return f"HTTP {code}"
    inner = getattr(exc, "reason", None)
    if isinstance(inner, OSError):
        return inner.strerror or type(inner).__name__
    return str(exc)
