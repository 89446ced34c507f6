"""Frozen value types that cross layers."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


def utcnow() -> dt.datetime:
    """Aware UTC now; every `*_at` in immunity comes from here."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class HostRef:
    """One server of the fleet, as configured.

    `address`/`port` are where the app answers directly (used by verify and warm-up);
    `lb_id` is the host's name in the balancer (HAProxy server name, EC2 instance id).
    `meta` holds adapter-specific fields from the config (folder, ssh user, winrm host...).
    """

    name: str
    address: str = "127.0.0.1"
    port: int = 80
    lb_id: str = ""
    scheme: str = "http"
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def balancer_id(self) -> str:
        return self.lb_id or self.name

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.address}:{self.port}"


class LbState(StrEnum):
    """A host's state as the balancer reports it."""

    SERVING = "serving"  # in the pool and healthy
    DRAINING = "draining"  # leaving the pool, in-flight requests finishing
    OUT = "out"  # not in the pool (maint / deregistered)
    UNHEALTHY = "unhealthy"  # in the pool but failing health checks


@dataclass(frozen=True)
class Member:
    """A balancer's view of one host."""

    name: str
    state: LbState
    in_flight: int = 0
    detail: str = ""


class Cohort(StrEnum):
    CANARY = "canary"
    BASELINE = "baseline"


class ObservationStatus(StrEnum):
    """Whether an observation is evidence, and if not, why not (each worded differently).

    * ``ok``: counts the judge may use.
    * ``no_data``: the source answered and has nothing for this window (no series yet, no
      datapoint published, an empty cohort).
    * ``failed``: the source could not be read (error, timeout, unreadable file).
    * ``rejected``: the source answered, but the answer is partial, stale, duplicated or
      implausible for the window (shards failed, a counter older than the window, more
      requests than a host can serve): never evidence.
    """

    OK = "ok"
    NO_DATA = "no_data"
    FAILED = "failed"
    REJECTED = "rejected"


PROBE_SIGNAL = "probe"
"""The built-in synthetic probe's signal name (`signals.probe.NAME`): what the live view,
`show` and the report use to tell its rows from the customers'."""


def histogram_quantile(bounds: Sequence[float], buckets: Sequence[int], q: float) -> float:
    """The q-quantile (ms) of a latency histogram, linear within a bucket; `inf` in the
    overflow bucket (`buckets` has one more count than `bounds`), `nan` when empty.

    The rule of `judge.evidence.histogram_quantile` in plain Python, for the read-only
    commands and the live view, which must not import numpy (a test keeps the two equal).
    """
    total = float(sum(buckets))
    if total <= 0:
        return math.nan
    target = q * total
    cum = 0.0
    for i, n in enumerate(buckets):
        if cum + n >= target:
            if i >= len(bounds):
                return math.inf
            lo = float(bounds[i - 1]) if i > 0 else 0.0
            hi = float(bounds[i])
            frac = (target - cum) / n if n > 0 else 1.0
            return lo + (hi - lo) * min(max(frac, 0.0), 1.0)
        cum += n
    return math.inf


@dataclass(frozen=True)
class HostCounts:
    """What one host of a cohort did over a window: `requests`, `errors` (5xx) and, when the
    source has latency, `latency_buckets` on the cohort's bounds (one overflow bucket)."""

    requests: int
    errors: int
    latency_buckets: Sequence[int] = ()


@dataclass(frozen=True)
class Observation:
    """What one cohort did over one window.

    `latency_buckets` counts requests per bucket whose upper bounds (ms) are `latency_bounds_ms`,
    with one more bucket at the end for the overflow. Empty when the source has no latency.
    `requests == 0` with `available=False` means the source could not say (never a pass);
    `status` says why (`available` is False exactly when `status` is not ``ok``).
    `by_host`: the same counts host by host, in the order of the cohort's hosts, when the
    source can tell the hosts apart (empty otherwise); the judge measures the baseline's
    host-to-host spread from it (`judge.spread`).
    """

    requests: int
    errors: int
    latency_bounds_ms: Sequence[float] = ()
    latency_buckets: Sequence[int] = ()
    available: bool = True
    hosts: int = 0
    detail: str = ""
    status: ObservationStatus = ObservationStatus.OK
    by_host: Sequence[HostCounts] = ()

    def __post_init__(self) -> None:
        if not self.available and self.status is ObservationStatus.OK:
            object.__setattr__(self, "status", ObservationStatus.NO_DATA)
        elif self.status is not ObservationStatus.OK and self.available:
            object.__setattr__(self, "available", False)

    @staticmethod
    def missing(detail: str, status: ObservationStatus = ObservationStatus.NO_DATA) -> Observation:
        """No evidence for this window; `detail` says why in words, `status` in kind."""
        return Observation(requests=0, errors=0, available=False, detail=detail, status=status)

    @staticmethod
    def failed(detail: str) -> Observation:
        """The source could not be read."""
        return Observation.missing(detail, ObservationStatus.FAILED)

    @staticmethod
    def rejected(detail: str) -> Observation:
        """The source answered something partial, stale or implausible: not evidence."""
        return Observation.missing(detail, ObservationStatus.REJECTED)


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    CONTINUE = "continue"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"
    """A signal could not be read (raised, timed out): no evidence, kept apart from too little
    traffic (`inconclusive`). A bake ends `error` after `judge.consecutive_error_limit` looks."""


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict with the numbers that decided it."""

    name: str
    outcome: Outcome
    reason: str
    numbers: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The overall verdict of one look; `reason` is one sentence carrying the numbers."""

    outcome: Outcome
    reason: str
    checks: Sequence[CheckResult] = ()
    decided_at: dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "reason": self.reason,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "checks": [
                {
                    "name": c.name,
                    "outcome": str(c.outcome),
                    "reason": c.reason,
                    "numbers": dict(c.numbers),
                }
                for c in self.checks
            ],
        }


@dataclass(frozen=True)
class Event:
    """Something worth telling: logs, journal kinds and notifications share `kind` (`noun.verb_past`)."""

    kind: str
    app: str
    deployment_id: str
    release: str
    message: str
    at: dt.datetime = field(default_factory=utcnow)
    data: Mapping[str, Any] = field(default_factory=dict)


NOT_A_CHANGE = ("rejected", "unchanged")
"""Outcomes of records that changed nothing (a no-op deploy; `rejected`, older journals'
refusals): `deploy`'s refusal, `status`, `resume`, `rollback` and `history` look past them to
the last run that did change the fleet."""


OUTCOME_WORDS = {
    "deployed": "deployed",
    "rolled_back": "rolled back",
    "revert_incomplete": "revert incomplete",
}
"""A run's outcome (`RunOutcome`'s value, a journal record's `outcome`) as people read it;
the value itself stays in JSON, the journal and CD outputs."""


def outcome_words(outcome: str | None) -> str:
    """`rolled_back` → "rolled back"; None (no outcome journaled) → "unfinished"."""
    if not outcome:
        return "unfinished"
    return OUTCOME_WORDS.get(str(outcome), str(outcome).replace("_", " "))


_PASSED_ALL = re.compile(r"all \d+ check\(s\) passed after \d+ s(?=: )")


def brief(reason: str) -> str:
    """A verdict reason as the terminal, the report, notifications and CD outputs show it.

    What goes: a check judged on probe traffic carries what customer traffic said beside it,
    "on probe traffic: canary 5xx 0% … (customers: the signal sees no traffic on either
    cohort for 32 s (…))" (`judge.merge_probe`): every "(customers: …)" aside is dropped, to
    its matching parenthesis; and a pass of every check, "all 4 check(s) passed after 32 s:
    errors: …; latency: …" (`judge.combine`), keeps its head (each check's own reason is
    shown beside it). The journal, `show` and the JSON result keep the whole reason.
    """
    text = str(reason)
    passed = _PASSED_ALL.search(text)
    if passed:  # "wave 1 passed: all 4 check(s) passed after 32 s: errors: …; …"
        return text[: passed.end()]
    out = []
    i = 0
    while True:
        start = text.find(" (customers: ", i)
        if start < 0:
            out.append(text[i:])
            break
        out.append(text[i:start])
        depth, j = 0, start + 1
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        i = j
    return "".join(out)


def reason_beside(outcome: str | None, reason: str) -> str:
    """`reason` as shown right after its outcome's words ("interrupted v4", a history row's
    outcome column, a report's "… was held"): an opening that says the outcome again, as
    journals write some reasons ("held: …", "inconclusive: …", "aborted with `resume
    --abort`; …", "interrupted by signal; …" before the signal was named), is left out, so no
    line says it twice."""
    text = str(reason).strip()
    for word in {outcome_words(outcome), str(outcome or "")}:
        if not word:
            continue
        if text.lower().startswith(f"{word}: "):
            return text[len(word) + 2 :]
        if text.lower().startswith(f"{word} with "):  # "aborted with `resume --abort`; …"
            return text[len(word) + 1 :]
        if text.lower().startswith(f"{word} by signal"):  # now "SIGINT received; …"
            return "a signal received" + text[len(word) + len(" by signal") :]
        if text.lower().startswith(f"{word} by "):  # "interrupted by SIGINT during preflight"
            return text[len(word) + len(" by ") :]
    return text
