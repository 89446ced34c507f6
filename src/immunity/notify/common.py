"""What every notifier shares: the `events` filter, a summary of an event, and one HTTP POST
with bounded retries whose errors never carry the URL (webhook URLs are secrets).

Events that reach notifiers are the deployment's final outcome, `deployment.<outcome>`:
`succeeded`, `reverted` (the release was found worse), `inconclusive` (not enough evidence to
judge it: the fleet was reverted, but the release was not found worse), `aborted` (undone by
`resume --abort`: the fleet was reverted as asked, the release not judged), `unchanged`
(every host already served the release: nothing was done),
`revert_incomplete`, `held`, `interrupted`, `rolled_back`, `failed`.
Their `data` may hold `verdict` (`{"outcome", "reason", "checks": [...]}`), `fallbacks`
(host -> previous release), `needs_human` (hosts), `hosts`, and timings ending in `_s`
(`detected_after_s`, `reverted_after_s`, `duration_s`). Every key is optional.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from immunity.config.types import Duration
from immunity.domain import Event, brief, reason_beside
from immunity.errors import NotifyError

DEFAULT_EVENTS = ("deployment.*",)
"""Every final outcome of a deployment (see the module docstring)."""

USER_AGENT = "immunity-notify/0.1"


class NotifierSettings(BaseModel):
    """Fields every notifier block has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    """Shown in the journal and logs; defaults to the kind (set it to tell two apart)."""
    events: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENTS), min_length=1)
    """Event kinds to send; shell-style patterns (`deployment.*`, `*`). `!kind` excludes."""


class HttpNotifierSettings(NotifierSettings):
    """Fields of notifiers that POST over HTTP."""

    timeout: Duration = 5.0
    """Per attempt."""
    retries: int = Field(default=2, ge=0, le=5)
    """Extra attempts after a 429, a 5xx or a connection error (bounded, with backoff)."""


class UrlNotifierSettings(HttpNotifierSettings):
    """HTTP notifiers whose URL is a secret (Slack, Teams, generic webhooks)."""

    url: SecretStr
    """The receiver's URL, a secret: keep it out of the file (`url: ${NAME}`)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("http://", "https://")):
            # "got" keeps the config loader from echoing the (secret) value
            raise ValueError("expected an http:// or https:// URL, got something else")
        return v


class HttpNotifier:
    """Shared lifecycle of the HTTP notifiers: the filter, one client, `aclose`."""

    kind = "http"
    what = "the receiver"
    Settings: type[UrlNotifierSettings] = UrlNotifierSettings

    def __init__(self, settings: UrlNotifierSettings, *, base_dir: Path | None = None) -> None:
        self.settings = settings
        self.name = settings.name or self.kind
        self._client: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncBaseTransport | None = None  # tests may swap it

    def wants(self, event: Event) -> bool:
        return wants(self.settings.events, event.kind)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = http_client(self.settings.timeout, self._transport)
        return self._client

    async def _post(
        self,
        body: bytes,
        headers: Callable[[], Mapping[str, str]] = dict,
        secrets: Sequence[str] = (),
    ) -> httpx.Response:
        return await post(
            self._http(),
            self.settings.url.get_secret_value(),
            body,
            adapter=self.name,
            what=self.what,
            retries=self.settings.retries,
            headers=headers,
            secrets=secrets,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def wants(patterns: Sequence[str], kind: str) -> bool:
    """True when `kind` matches a pattern and no `!pattern` excludes it."""
    excluded = any(p.startswith("!") and fnmatchcase(kind, p[1:]) for p in patterns)
    return not excluded and any(not p.startswith("!") and fnmatchcase(kind, p) for p in patterns)


class Severity(StrEnum):
    GOOD = "good"
    WARNING = "warning"
    DANGER = "danger"
    INFO = "info"


_SEVERITY = {
    "deployment.succeeded": Severity.GOOD,
    "deployment.rolled_back": Severity.GOOD,
    "deployment.reverted": Severity.WARNING,
    "deployment.inconclusive": Severity.WARNING,
    "deployment.aborted": Severity.INFO,
    "deployment.unchanged": Severity.INFO,
    "deployment.held": Severity.WARNING,
    "deployment.interrupted": Severity.WARNING,
    "deployment.revert_incomplete": Severity.DANGER,
    "deployment.failed": Severity.DANGER,
    "verdict.failed": Severity.WARNING,
}

_TITLE = {
    "deployment.succeeded": "{release} deployed to {app}",
    "deployment.rolled_back": "{app} rolled back to {release}",
    "deployment.reverted": "{release} rejected: {app} reverted",
    "deployment.inconclusive": "{release} not judged (too little evidence): {app} reverted",
    # not "rejected": an inconclusive run's, an abort's or a rollback's revert can end so too
    "deployment.revert_incomplete": "{app}: revert of {release} INCOMPLETE, a human is needed",
    "deployment.aborted": "{release} deployment to {app} aborted by `resume --abort`: "
    "{app} back on its previous release (not judged)",
    "deployment.unchanged": "{release} already on every host of {app}: nothing deployed",
    "deployment.held": "{release} held on {app}: not judged (too little evidence)",
    "deployment.interrupted": "{release} deployment to {app} interrupted",
    "deployment.failed": "{release} deployment to {app} failed",
}

_ICON = {
    Severity.GOOD: "\u2705",
    Severity.WARNING: "\u26a0\ufe0f",
    Severity.DANGER: "\U0001f6a8",
    Severity.INFO: "\u2139\ufe0f",
}


@dataclass(frozen=True)
class Summary:
    """An event as people read it: a title, why, and a few facts."""

    title: str
    severity: Severity
    reason: str
    hosts: list[str]
    facts: list[tuple[str, str]]

    @property
    def icon(self) -> str:
        return _ICON[self.severity]


def summarize(event: Event) -> Summary:
    data = event.data
    title = _TITLE.get(event.kind, "{app} {release}: {kind}").format(
        app=event.app, release=event.release, kind=event.kind
    )
    verdict = data.get("verdict")
    reason = ""
    if isinstance(verdict, Mapping):
        reason = str(verdict.get("reason") or "")
    # short (whole in the journal), and not restating the outcome the title gives
    outcome = (
        event.kind.removeprefix("deployment.") if event.kind.startswith("deployment.") else None
    )
    reason = brief(reason_beside(outcome, reason or event.message or event.kind))
    hosts = host_names(data)
    facts: list[tuple[str, str]] = [("App", event.app), ("Release", event.release)]
    previous = sorted(set(_str_values(data.get("fallbacks"))))
    if previous:
        facts.append(("Previous release", ", ".join(previous)))
    if hosts:
        facts.append(("Hosts", _short_list(hosts)))
    needs_human = [str(h) for h in data.get("needs_human") or []]
    if needs_human:
        facts.append(("Needs a human", _short_list(needs_human)))
    for key, label in (
        ("detected_after_s", "Detected after"),
        ("reverted_after_s", "Reverted after"),
        ("duration_s", "Duration"),
    ):
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            facts.append((label, f"{value:.1f} s"))
    facts.append(("Deployment", event.deployment_id))
    return Summary(title, _SEVERITY.get(event.kind, Severity.INFO), reason, hosts, facts)


def host_names(data: Mapping[str, Any]) -> list[str]:
    """Hosts the event is about: `hosts` (names or dicts with `name`), else `fallbacks`' keys."""
    hosts = data.get("hosts")
    out: list[str] = []
    if isinstance(hosts, Sequence) and not isinstance(hosts, str):
        for h in hosts:
            name = h.get("name") if isinstance(h, Mapping) else h
            if name is not None:
                out.append(str(name))
    if not out and isinstance(data.get("fallbacks"), Mapping):
        out = [str(k) for k in data["fallbacks"]]
    return out


def timings(data: Mapping[str, Any]) -> dict[str, float]:
    """Numeric `*_s` entries of `data`, in seconds, keyed without the `_s` suffix."""
    out = {}
    for key, value in data.items():
        if key.endswith("_s") and isinstance(value, int | float) and not isinstance(value, bool):
            out[key[:-2]] = float(value)
    return out


def _str_values(v: Any) -> list[str]:
    return [str(x) for x in v.values()] if isinstance(v, Mapping) else []


def _short_list(items: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def event_dict(event: Event) -> dict[str, Any]:
    """The event as JSON-ready data (timestamps as ISO 8601 UTC); `message` as people read
    it (`domain.brief`), `data` as journaled (a verdict's reasons whole)."""
    return {
        "kind": event.kind,
        "app": event.app,
        "deployment_id": event.deployment_id,
        "release": event.release,
        "message": brief(event.message),
        "at": event.at.astimezone(dt.UTC).isoformat(),
        "data": _jsonable(event.data),
    }


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, default=_default))


def _default(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, set | frozenset | tuple):
        return list(v)
    return str(v)


def dumps(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False, default=_default).encode()


# -- HTTP ---------------------------------------------------------------------------------------


class _Retryable(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _wait(state: RetryCallState) -> float:
    """Honour Retry-After (capped at 5 s), else 0.25 s, 0.5 s, 1 s, ..."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable):
        after = exc.response.headers.get("retry-after", "")
        try:
            return min(5.0, max(0.0, float(after)))
        except ValueError:
            pass
    return float(min(2.0, 0.25 * 2 ** (state.attempt_number - 1)))


def _snippet(text: str, secrets: Sequence[str]) -> str:
    text = " ".join(text.split())[:200]
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    *,
    adapter: str,
    what: str,
    retries: int,
    headers: Callable[[], Mapping[str, str]] = dict,
    secrets: Sequence[str] = (),
) -> httpx.Response:
    """POST `body` to `url`, retrying 429/5xx/connection errors; raise NotifyError naming `what`.

    `headers()` is called per attempt (a signature carries a fresh timestamp). The URL and
    `secrets` never appear in the error.
    """
    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=_wait,
        retry=retry_if_exception_type(
            (_Retryable, httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
        ),
        reraise=True,
    )
    attempts = 0
    try:
        async for attempt in retrying:
            with attempt:
                attempts += 1
                resp = await client.post(
                    url,
                    content=body,
                    headers={"Content-Type": "application/json", **headers()},
                )
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise _Retryable(resp)
    except httpx.InvalidURL:
        raise NotifyError(
            f"{adapter}: the URL of {what} is not a valid URL", adapter=adapter
        ) from None
    except _Retryable as exc:
        r = exc.response
        raise NotifyError(
            f"{adapter}: {what} answered HTTP {r.status_code} after {attempts} attempt(s): "
            f"{_snippet(r.text, [url, *secrets])}",
            adapter=adapter,
            hint="the receiver is failing or rate-limiting; the deployment's outcome is unchanged",
        ) from None
    except httpx.TimeoutException as exc:
        raise NotifyError(
            f"{adapter}: {what} did not answer within the timeout ({attempts} attempt(s))",
            adapter=adapter,
        ) from exc
    except httpx.TransportError as exc:
        raise NotifyError(
            f"{adapter}: cannot reach {what} ({type(exc).__name__}, {attempts} attempt(s))",
            adapter=adapter,
            hint="check the URL setting and that the host is reachable from here",
        ) from exc
    if not 200 <= resp.status_code < 300:
        raise NotifyError(
            f"{adapter}: {what} refused the message with HTTP {resp.status_code}: "
            f"{_snippet(resp.text, [url, *secrets])}",
            adapter=adapter,
            hint="a 4xx means the URL is wrong, revoked, or the payload was rejected",
        )
    return resp


def http_client(
    timeout: float, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """Redirects are not followed: a webhook that redirects elsewhere is an error, not a hop."""
    return httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        transport=transport,
    )
