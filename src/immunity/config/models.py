"""Frozen, strict pydantic models of immunity.yaml.

Adapter blocks (`balancer`, `driver`, `signals[]`, `notify[]`) are validated here only for
their `kind`; the rest is validated by the adapter's own `Settings` model in `config.load`,
so that a new adapter brings its own fields without touching this file.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from immunity.config.types import (
    LOADER_CONTEXT,
    Duration,
    Fraction,
    PositiveDuration,
    StatusCodes,
)

__all__ = ["LOADER_CONTEXT", "AdapterBlock", "CheckConfig", "Config", "Strict"]

Loc = tuple[int | str, ...]


RESERVED_SIGNAL_NAMES = frozenset({"bounds", "windows"})
"""Names a signal may not take: they are keys beside the signals in a look's evidence
(`bake.looked`'s `obs`, docs/journal.md)."""


class Strict(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_stray_booleans(cls, v: Any, info: ValidationInfo) -> Any:
        """A YAML boolean (`yes`, `on`, `true`...) only where a boolean is meant: pydantic
        would read `max_unavailable: yes` as 1."""
        if isinstance(v, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if not _allows_bool(annotation):
                raise ValueError(
                    f"got {str(v).lower()}, a YAML boolean (unquoted yes/no/on/off/true/false); "
                    "write the value meant, quoted if it is text"
                )
        return v


def _allows_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_allows_bool(a) for a in typing.get_args(annotation))


class AdapterBlock(BaseModel):
    """`kind:` plus the adapter's own fields (validated by the adapter's Settings)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    kind: str

    def settings_dict(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


_WAVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _wave(w: Any) -> int | str:
    if isinstance(w, int) and not isinstance(w, bool):
        if w < 1:
            raise ValueError(f"expected a count >= 1, got {w}")
        return w
    if isinstance(w, str):
        m = _WAVE.match(w)
        if m and 0 < float(m.group(1)) <= 100:
            return w
    raise ValueError(f'expected a count (3) or a percentage ("25%"), got {w!r}')


Wave = Annotated[int | str, PlainValidator(_wave)]


def _default_waves() -> list[int | str]:
    return [1, "25%", "100%"]


class HostConfig(Strict):
    """One server of the fleet."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    """The host's name in immunity's output and journal; unique."""
    address: str = Field(default="127.0.0.1", min_length=1)
    """Where the app answers directly (verify and warm-up requests bypass the balancer):
    a host name or an IP address, without scheme, port or path."""

    @field_validator("address")
    @classmethod
    def _bare_address(cls, v: str) -> str:
        if "://" in v or "/" in v or any(c.isspace() for c in v):
            raise ValueError(
                f"expected a host name or IP address, got {v!r}: put the scheme in `scheme` "
                "and the port in `port`"
            )
        return v

    port: int = Field(default=80, ge=1, le=65535)
    """The app's port at `address`; `address:port` is unique across hosts."""
    scheme: Literal["http", "https"] = "http"
    """`http` or `https` for the direct requests."""
    lb_id: str = ""
    """The host's name in the balancer (HAProxy server name, EC2 instance id or IP);
    default: `name`. Unique across hosts."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Driver-specific fields: `folder` (local), `ssh_host`, `ssh_port`, `ssh_user` (ssh),
    `winrm_host` (iis)."""


class WarmupConfig(Strict):
    """Requests straight to a switched host until it answers fast, before it rejoins the pool."""

    path: str = Field(default="/", pattern=r"^/")
    """The page requested (starting with /); pick one that exercises the app's cold paths."""
    expect_status: StatusCodes = ("2xx",)
    """Statuses that count toward warm (200, "2xx", or a list). A redirect or 404 from
    `path` is a warm-up failure, not a warm host."""
    consecutive: int = Field(default=5, ge=1)
    """Answers in a row, each expected and under `latency_bar`, that make a host warm."""
    latency_bar: PositiveDuration = 0.1
    """How fast a warm answer is."""
    timeout: PositiveDuration = 120.0
    """Deadline of the whole warm-up of one host; past it the switch fails."""
    request_timeout: PositiveDuration = 30.0
    """Deadline of one warm-up request."""
    pause: Duration = 0.05
    """Wait between two warm-up requests."""


class VerifyConfig(Strict):
    """The direct health request that proves a started host serves its release."""

    path: str = Field(default="/health", pattern=r"^/")
    """The health page requested on the host, starting with / (retried until
    `timeouts.verify`)."""
    expect_status: StatusCodes = ("200",)
    """Statuses that prove the host serves (200, "2xx", or a list)."""
    tls_verify: bool = True
    """Check the host's certificate on direct https requests (verify and warm-up)."""


class Timeouts(Strict):
    """Deadline of each step of a host's switch; a step past its deadline fails the switch."""

    drain: PositiveDuration = 60.0
    """Until the balancer has the host out of the pool with nothing in flight (set it above
    an ALB's deregistration delay)."""
    stop: PositiveDuration = 60.0
    """Until the old release has stopped."""
    install: PositiveDuration = 300.0
    """Until the release is installed on the host."""
    start: PositiveDuration = 60.0
    """Until the release's process has started."""
    verify: PositiveDuration = 60.0
    """Until the host answers `verify.path` with an expected status."""
    enable: PositiveDuration = 60.0
    """Until the balancer calls the host healthy and sends it traffic again."""
    revert: PositiveDuration = 600.0
    """Deadline of the whole immune response."""


class BakeConfig(Strict):
    """How long each wave's canaries are judged against the baseline."""

    min: Duration = 30.0
    """No pass before every host of the wave has been judged this long: the bake passes at
    the earliest this long after the wave's last host is back in the pool (a fail may come
    sooner)."""
    max: PositiveDuration = 300.0
    """Judging stops here; what is still undecided is inconclusive. A wave whose last host
    came back in the pool later than `max - min` into the bake is judged until that host
    has had `min`."""
    interval: PositiveDuration = 1.0
    """Time between two looks at the signals."""
    settle: Duration = 0.0
    """Seconds after the canaries are back in the pool before judging starts."""
    lag: Duration = 0.5
    """How far behind now each look's window ends, so late log lines are counted."""

    @model_validator(mode="after")
    def _order(self) -> BakeConfig:
        if self.max < self.min:
            raise ValueError(f"bake.max ({self.max:g}s) must be >= bake.min ({self.min:g}s)")
        if self.interval > self.max:
            raise ValueError(
                f"bake.interval ({self.interval:g}s) is longer than bake.max ({self.max:g}s): "
                "the bake would end before its first look"
            )
        return self


GUARD_KINDS = ("error_rate_max", "latency_max")
"""Check kinds that are absolute guard rails on the canary alone (no baseline needed)."""


LATENCY_MAX_CEILING_MS = 60_000.0
"""The highest `latency_max` bar accepted: 60 s. Requests end before that (HAProxy's
`timeout server`, load balancers' idle timeouts and most clients' are at or under a minute),
so a higher bar (`1000s` meant as `1000ms`) can never be crossed."""


def _latency_ms(v: Any) -> Any:
    """A latency bound in ms from 250, "250ms" or "1.5s"."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*", v)
        if m:
            return float(m.group(1)) * (1000.0 if m.group(2) == "s" else 1.0)
    return v


_MAX_SCHEMA = {
    "anyOf": [
        {"type": "number"},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(%|ms|s)\s*$"},
        {"type": "null"},
    ],
    "description": 'error_rate_max: "2%" or 0.02; latency_max: ms (500, "500ms", "1.5s").',
}


class CheckConfig(Strict):
    """One check the judge runs at every look of a bake.

    `errors` and `latency` compare the canary with the concurrent baseline; the guard rails
    `error_rate_max` and `latency_max` bound the canary alone and need `max`. Everything the
    judge would refuse is refused here, so `config validate` rejects what `deploy` would.
    """

    name: str = Field(min_length=1)
    """The check's name in reasons and the journal; unique."""
    signal: str
    """The `name` of the signal it reads (one of `signals`)."""
    kind: Literal["errors", "latency", "error_rate_max", "latency_max"] = "errors"
    """`errors` / `latency` compare canary and baseline; `error_rate_max` / `latency_max`
    are guard rails on the canary alone."""
    max: Annotated[float | None, WithJsonSchema(_MAX_SCHEMA, mode="validation")] = None
    """Guard rails only: error_rate_max takes a fraction ("2%" or 0.02, above 0 and below
    100%); latency_max a bound in ms (500, "500ms" or "1.5s") on the canary's `quantile`,
    at most 60 s (no request waits longer: `1000s` meant as ms is rejected) and, with a
    `probe`, below `probe.timeout` (the probe's requests end there, as errors)."""
    quantile: float = Field(default=0.99, gt=0, lt=1)
    """latency_max only: the canary quantile bounded by `max` (0.99 = p99)."""
    thresholds_ms: list[float] | None = None
    """latency only: fixed thresholds (ms) instead of the baseline's quantiles."""
    quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.9, 0.99], min_length=1)
    """latency only: the baseline quantiles whose thresholds the canary is compared at.
    Low-traffic apps drop 0.99: it needs about 2,500 baseline requests to be set."""

    @field_validator("max", mode="before")
    @classmethod
    def _max(cls, v: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("kind")
        if v is None:
            return v
        if kind == "latency_max":
            if isinstance(v, str) and v.strip().endswith("%"):
                raise ValueError(f'latency_max takes a bound in ms (500 or "500ms"), got {v!r}')
            ms = _latency_ms(v)
            if isinstance(ms, int | float) and ms > LATENCY_MAX_CEILING_MS:
                said = f"{v!r} ({ms / 1000:,g} s)" if isinstance(v, str) else f"{ms:,g} ms"
                mean = (
                    f'; did you mean "{v.strip()[:-1].strip()}ms"?'
                    if isinstance(v, str)
                    and v.strip().endswith("s")
                    and not v.strip().endswith("ms")
                    else ""
                )
                raise ValueError(
                    f"latency_max takes a bar requests can reach, at most "
                    f"{LATENCY_MAX_CEILING_MS / 1000:g} s, got {said}: past any request "
                    f"timeout, it would guard nothing{mean}"
                )
            return ms
        if isinstance(v, str) and v.strip().endswith("%"):
            try:
                return float(v.strip()[:-1]) / 100.0
            except ValueError:
                raise ValueError(f'expected a percentage such as "2%", got {v!r}') from None
        return v

    @field_validator("max")
    @classmethod
    def _max_range(cls, v: float | None, info: ValidationInfo) -> float | None:
        kind = info.data.get("kind")
        if v is None:
            return v
        if kind == "error_rate_max" and not 0.0 < v < 1.0:
            raise ValueError(
                f'error_rate_max takes a rate above 0 and below 100% ("2%" or 0.02), got '
                f"{v * 100:g}%"
            )
        if kind == "latency_max" and v <= 0:
            raise ValueError(f"latency_max takes a bound in ms above 0, got {v:g}")
        return v

    @field_validator("quantiles", "thresholds_ms")
    @classmethod
    def _ordered(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if v is None:
            return v
        if info.field_name == "quantiles" and any(not 0.0 < q < 1.0 for q in v):
            raise ValueError(f"expected quantiles between 0 and 1 (0.9 = p90), got {v}")
        if info.field_name == "thresholds_ms" and any(t <= 0 for t in v):
            raise ValueError(f"expected thresholds above 0 ms, got {v}")
        if sorted(set(v)) != list(v):
            raise ValueError(f"expected increasing values without repeats, got {v}")
        return v

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> CheckConfig:
        given = self.model_fields_set
        if self.kind in GUARD_KINDS and self.max is None:
            unit = '"2%" or 0.02' if self.kind == "error_rate_max" else "a bound in ms such as 500"
            article = "an" if self.kind[0] in "aeiou" else "a"
            raise ValueError(f"{article} {self.kind} check needs `max` ({unit})")
        only = {
            "max": GUARD_KINDS,
            "quantile": ("latency_max",),
            "thresholds_ms": ("latency",),
            "quantiles": ("latency",),
        }
        for name, kinds in only.items():
            default = type(self).model_fields[name].get_default(call_default_factory=True)
            if name in given and self.kind not in kinds and getattr(self, name) != default:
                raise ValueError(
                    f"`{name}` applies only to {' and '.join(kinds)} checks and would be "
                    f"ignored by this {self.kind} check; remove it or change `kind`"
                )
        return self


class JudgeConfig(Strict):
    """The judge's error bounds and what counts as a regression (docs/judging.md)."""

    alpha: float = Field(default=0.01, gt=0, lt=1)
    """Each check's false-alarm bound over the *whole* deployment (every wave's bake and the
    guard): half of it goes to the first wave's bake, the other half is split evenly over
    the later bakes (alpha/(2(N-1)) each; `deploy --dry-run` prints them), so a release that
    is no worse fails a check with probability at most `alpha` however many waves watch it."""
    beta: float = Field(default=0.05, gt=0, lt=1)
    """Chance of missing a release that is `error_bad`/`latency_bad` worse: sets the
    evidence needed to pass (1/beta)."""
    alpha_catastrophe: float = Field(default=0.001, gt=0, lt=1)
    """Like `alpha`, for the seconds-level catastrophe tier (also spent over the bakes)."""
    error_tolerance: float = Field(default=1.25, ge=1.0)
    """A canary error rate up to this many times the baseline's is no regression. The least:
    where the signal tells the baseline's hosts apart, the judge widens it to their own
    spread, at most halfway to `error_bad` (judging.md, "A fleet's own spread")."""
    error_bad: float = Field(default=2.0, gt=1.0)
    """An error rate this many times the baseline's is a regression to catch (sets power)."""
    latency_tolerance: float = Field(default=1.25, ge=1.0)
    """Odds of a canary request being slower than a baseline quantile, up to this many times
    the baseline's, are no regression. The least, as for `error_tolerance` (at most halfway
    to `latency_bad`)."""
    latency_bad: float = Field(default=1.75, gt=1.0)
    """Odds this many times the baseline's are a latency regression to catch."""
    error_floor: Fraction = 0.001
    """A canary 5xx rate certified below this is no regression, whatever the baseline's."""
    min_traffic_share: Fraction = 0.3
    """A canary getting less than this fraction of its fair share of traffic is inconclusive."""
    inconclusive_limit: Duration = 60.0
    """Seconds of inconclusive looks (too little traffic, missing data) that end a bake."""
    consecutive_error_limit: int = Field(default=10, ge=1)
    """Looks in a row on which a signal failed (raised, timed out) that end a bake with
    `error`; fewer are waited out (like Argo Rollouts' `consecutiveErrorLimit`)."""
    on_inconclusive: Literal["revert", "hold"] = "revert"
    """What a deployment ended for lack of evidence does: `revert` puts the fleet back on
    the old release (safe; a good release may be turned away when traffic is thin), `hold`
    stops with the fleet as it is, mixed releases in the pool, until a human resumes,
    rolls back or aborts (no good release lost; the fleet runs two releases meanwhile)."""

    @model_validator(mode="after")
    def _tolerance_below_bad(self) -> JudgeConfig:
        for kind in ("error", "latency"):
            tol, bad = getattr(self, f"{kind}_tolerance"), getattr(self, f"{kind}_bad")
            if tol >= bad:
                raise ValueError(
                    f"judge.{kind}_tolerance (×{tol:g}) must be below judge.{kind}_bad "
                    f"(×{bad:g}): a regression to catch cannot be within what is tolerated"
                )
        return self


class GuardConfig(Strict):
    """The watch after the last wave: the release keeps being judged before the run ends."""

    duration: Duration = 150.0
    """How long to keep watching after the last wave passed; `0` turns the guard off.
    Default when not set: half of `bake.max`, at least `bake.min` (150 s with the default
    bake). The absolute guard rails judge all along; with a holdback the comparisons too. A
    fail reverts the whole fleet. Costs this long on every deployment, plus the holdback's
    switch after it; catches faults that start late (a leak, a cache that fills, a cron-like
    job), which the waves' bakes, each passing after `bake.min`, would let through."""
    holdback: bool = True
    """Keep one host (the last of the last wave) on the old release until the guard ends, as
    the baseline the comparisons need, and switch it last. Only where the fleet allows it:
    two hosts or more. Costs one host switched on its own after the guard (drain, install,
    warm-up), and one host fewer on the new release in the last wave; gains the comparison
    with the old release in the last wave's bake and in the guard, which otherwise have only
    the absolute guard rails."""


def default_guard_s(bake: BakeConfig) -> float:
    """The guard period when `guard.duration` is not set: half of `bake.max`, at least
    `bake.min`, in seconds (150 s with the default bake of 30 s to 300 s).

    A fault that starts late is looked for as long as a typical wave is judged: a good
    release passes its bake between `bake.min` and `bake.max`, so half of `bake.max` is
    about the time a wave's canary was trusted on before the next wave, and the last wave
    gets no less watch than that. Scales with the bake: a short sandbox bake keeps a short
    guard, a low-traffic app with a long `bake.max` gets a longer one."""
    return max(bake.min, bake.max / 2.0)


class ImpactConfig(Strict):
    """A small customer probe through the public address for the whole deployment: what
    customers saw, per phase (before, each wave, its bake, the revert, after)."""

    url: str = Field(pattern=r"^https?://")
    """The public address customers use (the balancer), e.g. `https://shop.example.com`."""
    rps: float = Field(default=5.0, gt=0, le=1000)
    """Probe requests per second, sent open-loop (a slow answer does not slow the probe)."""
    paths: list[str] = Field(default_factory=lambda: ["/"], min_length=1)
    """Paths appended to `url`, cycled request by request."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Headers sent with every probe request (e.g. Host, or a synthetic-traffic marker)."""
    expect_status: list[int] = Field(default_factory=list)
    """Statuses that count as served; empty: any 1xx-4xx (a 5xx or no answer fails)."""
    request_timeout: Duration = 10.0
    """A request unanswered after this long counts as failed."""
    before: Duration = 5.0
    """Probe this long before the first wave starts: the customers' view before the change."""
    after: Duration = 5.0
    """Probe this long after the last step: the customers' view after the change."""


class ProbeConfig(Strict):
    """Probe traffic: identical requests straight to canary and baseline hosts during a bake,
    judged by the same checks as customer traffic (see `immunity.signals.probe`), in the probe's
    own terms: latency thresholds from the probe's baseline, and guard rails that the probe's
    own timing cannot fail without its baseline (docs/judging.md, "Probe traffic when
    customers are few")."""

    paths: list[str] = Field(default_factory=lambda: ["/"], min_length=1)
    """Request paths (with any query), sent in turn, the same ones to every host."""
    rate: float = Field(default=10.0, gt=0, le=1000)
    """Requests/s sent to each canary and baseline host while the probe runs."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Headers sent with every probe request (e.g. Host, or a synthetic-traffic marker)."""
    timeout: Duration = 2.0
    """A probe request not answered within this is an error. A `latency_max` bar must be
    below it."""
    max_share: Fraction = 1.0
    """The probe's requests never exceed this share of all the requests the fleet serves
    (customers' and the probe's). Below 100%, no customers means no probe traffic."""
    when: Literal["auto", "always"] = "auto"
    """auto: only while customers bring a canary host fewer requests/s than the checks need
    to decide by `bake.max` (derived from the checks, see `judge.need`; `rate` until it can
    be derived); always: for the whole bake."""
    tls_verify: bool = True
    """Check the hosts' certificates on https probe requests."""

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not p.startswith("/")]
        if bad:
            raise ValueError(f"probe paths must start with '/', got {bad}")
        return v


class JournalConfig(Strict):
    """Where every step, look and verdict is recorded."""

    path: str = "immunity-journal.db"
    """SQLite file, relative to the config's folder."""
    url: str | None = None
    """postgresql://... for a shared journal (optional)."""


class Config(Strict):
    """The whole of immunity.yaml."""

    app: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    """The application's name: one lease and one journal history per app."""
    hosts: list[HostConfig] = Field(min_length=1)
    """The servers behind the balancer, in rollout order."""
    balancer: AdapterBlock
    """The load balancer pool: `kind` (haproxy, alb) and that adapter's fields."""
    driver: AdapterBlock
    """How releases are switched on a host: `kind` (local, ssh, iis) and its fields."""
    unmanaged_members: list[str] = Field(default_factory=list)
    """Balancer pool members that are not among `hosts` and that immunity may leave alone
    (by their balancer id). Any other unknown member makes preflight refuse: it would keep
    serving the old release unseen."""
    waves: list[Wave] = Field(default_factory=lambda: _default_waves(), min_length=1)
    """Cumulative hosts on the new release after each wave: a count (3) or a percentage
    ("25%"). Each wave adds hosts; the last one always reaches the whole fleet."""
    max_unavailable: int = Field(default=1, ge=1)
    """Most hosts out of the pool at once, rollout and revert alike. Must be below the
    number of hosts, so at least one host always serves."""
    max_failed_hosts: int = Field(default=0, ge=0)
    """Host switches that may fail (the host is put back on its old release) before the
    deployment is reverted."""
    warmup: WarmupConfig = WarmupConfig()
    """Warm-up of each switched host before it rejoins the pool."""
    verify: VerifyConfig = VerifyConfig()
    """The health request that proves a started host serves."""
    timeouts: Timeouts = Timeouts()
    """Deadline of each step of a host's switch, and of the whole revert."""
    bake: BakeConfig = BakeConfig()
    """How long each wave is judged."""
    guard: GuardConfig = Field(default_factory=GuardConfig)
    """The watch after the last wave (on by default; `guard: {duration: 0}` turns it off)."""
    signals: list[AdapterBlock] = Field(default_factory=list)
    """Where measurements come from: `kind`, `name` and that source's fields."""
    checks: list[CheckConfig] = Field(default_factory=list)
    """What the judge checks at every look; see docs/judging.md."""
    judge: JudgeConfig = JudgeConfig()
    """How strict the judge is; see docs/judging.md."""
    probe: ProbeConfig | None = None
    """Probe traffic for quiet hours (off when absent)."""
    notify: list[AdapterBlock] = Field(default_factory=list)
    """Who is told about outcomes: `kind` (slack, teams, webhook, statsd, pushgateway) and its fields."""
    impact: ImpactConfig | None = None
    """Measure what customers see through the public address during every deployment
    (optional; see docs/report.md)."""
    journal: JournalConfig = JournalConfig()
    """Where the journal is kept."""
    lease_ttl: PositiveDuration = 30.0
    """A lease not heart-beaten for this long counts as abandoned."""

    def cross_problems(self) -> list[tuple[Loc, str]]:
        """Every problem that involves more than one field, each at its own location.

        Unique identities (host names, balancer ids, endpoints, signal and check names),
        checks naming configured signals, waves that fit the fleet, and `max_unavailable`
        leaving at least one host serving.
        """
        out: list[tuple[Loc, str]] = []
        n = len(self.hosts)

        def unique(what: str, field: str, values: list[tuple[int, Any]], base: str) -> None:
            first: dict[Any, int] = {}
            for i, value in values:
                if value in first:
                    j = first[value]
                    out.append(
                        (
                            (base, i, field),
                            f"{what} {_shown(value)} is also {base}[{j}]'s; each must be unique",
                        )
                    )
                else:
                    first[value] = i

        unique("host name", "name", [(i, h.name) for i, h in enumerate(self.hosts)], "hosts")
        unique(
            "balancer id (lb_id, else the name)",
            "lb_id",
            [(i, h.lb_id or h.name) for i, h in enumerate(self.hosts)],
            "hosts",
        )
        unique(
            "endpoint",
            "port",
            [(i, f"{h.address}:{h.port}") for i, h in enumerate(self.hosts)],
            "hosts",
        )
        for key in ("folder", "ssh_host", "winrm_host"):
            vals = [(i, h.meta[key]) for i, h in enumerate(self.hosts) if h.meta.get(key)]
            if key == "ssh_host":  # one machine may run several app instances on other ports
                vals = [(i, f"{v}:{self.hosts[i].port}") for i, v in vals]
            unique(f"meta.{key}", "meta", vals, "hosts")
        for name in self.unmanaged_members:
            clash = [h.name for h in self.hosts if (h.lb_id or h.name) == name]
            if clash:
                out.append(
                    (
                        ("unmanaged_members",),
                        f"{name!r} is host {clash[0]}'s balancer id: a host immunity deploys "
                        "cannot be left alone too",
                    )
                )
        sig_names = [str(s.settings_dict().get("name", s.kind)) for s in self.signals]
        unique("signal name", "name", list(enumerate(sig_names)), "signals")
        for i, name in enumerate(sig_names):
            if name in RESERVED_SIGNAL_NAMES:  # keys of a look's evidence in the journal
                out.append(
                    (
                        ("signals", i, "name"),
                        f"signal name {name!r} is reserved (the journal's evidence uses it); "
                        "expected another name, e.g. 'lb' or 'metrics'",
                    )
                )
        unique("check name", "name", [(i, c.name) for i, c in enumerate(self.checks)], "checks")
        if self.probe is not None and "probe" in sig_names:
            out.append(
                (
                    ("signals", sig_names.index("probe"), "name"),
                    "a signal is named 'probe', the name the probe's own observations take "
                    "when a `probe` block is configured: rename that signal",
                )
            )
        for i, c in enumerate(self.checks):
            if c.signal not in sig_names:
                close = difflib.get_close_matches(c.signal, sig_names, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(sig_names) or "none configured"
                out.append(
                    (
                        ("checks", i, "signal"),
                        f"check {c.name!r} names signal {c.signal!r}, expected one of the "
                        f"configured signals ({known}){hint}",
                    )
                )
        if self.max_unavailable >= n:
            given = "max_unavailable" in self.model_fields_set
            out.append(
                (
                    ("max_unavailable",) if given else ("hosts",),
                    ("" if given else "max_unavailable (default 1): ")
                    + f"expected fewer than the {n} host(s), got {self.max_unavailable}: at "
                    "least one host must keep serving during a switch or a revert"
                    + ("; add a host" if n == 1 else f"; use at most {n - 1}"),
                )
            )
        if self.max_failed_hosts >= n:
            out.append(
                (
                    ("max_failed_hosts",),
                    f"expected fewer than the {n} host(s), got {self.max_failed_hosts}: a "
                    "deployment whose every switch may fail could end without any host on "
                    "the release",
                )
            )
        if self.lease_ttl < 2.0:
            out.append(
                (
                    ("lease_ttl",),
                    f"expected at least 2s, got {self.lease_ttl:g}s: the lease is heart-beaten "
                    "every third of it and at most every 0.5s, so a shorter one lapses while "
                    "its holder runs",
                )
            )
        if self.probe is not None:
            for i, c in enumerate(self.checks):
                if (
                    c.kind == "latency_max"
                    and c.max is not None
                    and c.max >= self.probe.timeout * 1000
                ):
                    out.append(
                        (
                            ("checks", i, "max"),
                            f"check {c.name!r}: its bar {c.max:,g} ms is at or above "
                            f"probe.timeout ({self.probe.timeout:g}s): the probe gives up on a "
                            "request then (an error), so on probe traffic this check never sees "
                            "a request over its bar; lower max or raise probe.timeout",
                        )
                    )
        prev = 0
        for i, w in enumerate(self.waves):
            if isinstance(w, int):
                size = w
                if w > n:
                    out.append(
                        (
                            ("waves", i),
                            f"wave of {w} host(s) is more than the {n} configured; "
                            'use a count up to the fleet or a percentage ("100%")',
                        )
                    )
                    continue
            else:
                size = max(1, math.ceil(float(w.strip().rstrip("%")) / 100.0 * n))
            if size < prev:
                out.append(
                    (
                        ("waves", i),
                        f"waves count hosts on the new release so far and must not shrink: "
                        f"{_shown(w)} is {size} host(s) after {prev}",
                    )
                )
            prev = max(prev, size)
        return out

    @model_validator(mode="after")
    def _guard_default(self) -> Config:
        """`guard.duration` not set: derived from this config's bake (`default_guard_s`).
        The field stays unset (`model_fields_set`), so the value is recomputed, never copied,
        when the config is validated again."""
        if "duration" not in self.guard.model_fields_set:
            resolved = GuardConfig.model_construct(
                _fields_set=set(self.guard.model_fields_set),
                duration=default_guard_s(self.bake),
                holdback=self.guard.holdback,
            )
            object.__setattr__(self, "guard", resolved)  # frozen: set once, while validating
        return self

    @model_validator(mode="after")
    def _cross(self, info: ValidationInfo) -> Config:
        if info.context and info.context.get("immunity.yaml"):
            return self  # the loader reports them, each at its own line
        problems = self.cross_problems()
        if problems:
            raise ValueError("; ".join(f"{_loc_text(loc)}: {msg}" for loc, msg in problems))
        return self


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _loc_text(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out
