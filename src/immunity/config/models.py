"""Frozen, strict pydantic models of immunity.yaml.

Adapter blocks (`balancer`, `driver`, `signals[]`, `notify[]`) are validated here only for
their `kind`; the rest is validated by the adapter's own `Settings` model in `config.load`,
so that a new adapter brings its own fields without touching this file.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, field_validator, model_validator

from immunity.config.types import Duration, Fraction


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    address: str = "127.0.0.1"
    port: int = Field(default=80, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    lb_id: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)


class WarmupConfig(Strict):
    path: str = "/"
    consecutive: int = Field(default=5, ge=1)
    latency_bar: Duration = 0.1
    timeout: Duration = 120.0
    request_timeout: Duration = 30.0
    pause: Duration = 0.05


class VerifyConfig(Strict):
    path: str = "/health"
    expect_status: int = 200
    tls_verify: bool = True
    """Check the host's certificate on direct https requests (verify and warm-up)."""


class Timeouts(Strict):
    drain: Duration = 60.0
    stop: Duration = 60.0
    install: Duration = 300.0
    start: Duration = 60.0
    verify: Duration = 60.0
    enable: Duration = 60.0
    revert: Duration = 600.0
    """Deadline of the whole immune response."""


class BakeConfig(Strict):
    min: Duration = 30.0
    max: Duration = 300.0
    interval: Duration = 1.0
    settle: Duration = 0.0
    """Seconds after the canaries are back in the pool before judging starts."""
    lag: Duration = 0.5
    """How far behind now each look's window ends, so late log lines are counted."""

    @model_validator(mode="after")
    def _order(self) -> BakeConfig:
        if self.max < self.min:
            raise ValueError(f"bake.max ({self.max}s) must be >= bake.min ({self.min}s)")
        return self


class CheckConfig(Strict):
    name: str
    signal: str
    kind: Literal["errors", "latency", "error_rate_max", "latency_max"] = "errors"
    max: float | None = None
    """For guard rails: error_rate_max takes a fraction, latency_max a p99 bound in ms."""
    quantile: float = 0.99
    thresholds_ms: list[float] | None = None
    quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.9, 0.99], min_length=1)
    """For `latency`: the baseline quantiles whose thresholds the canary is compared at.
    Low-traffic apps drop 0.99: it needs about 2,500 baseline requests to be set."""
    """For latency checks: fixed thresholds (ms) instead of the baseline's p50/p90/p99."""

    @field_validator("max", mode="before")
    @classmethod
    def _pct(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().endswith("%"):
            return float(v.strip()[:-1]) / 100.0
        return v


class JudgeConfig(Strict):
    alpha: float = Field(default=0.01, gt=0, lt=1)
    beta: float = Field(default=0.05, gt=0, lt=1)
    alpha_catastrophe: float = Field(default=0.001, gt=0, lt=1)
    error_tolerance: float = Field(default=1.25, ge=1.0)
    error_bad: float = Field(default=2.0, gt=1.0)
    latency_tolerance: float = Field(default=1.25, ge=1.0)
    latency_bad: float = Field(default=1.75, gt=1.0)
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


class JournalConfig(Strict):
    path: str = "immunity-journal.db"
    url: str | None = None
    """postgresql://... for a shared journal (optional)."""


class Config(Strict):
    """The whole of immunity.yaml."""

    app: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    hosts: list[HostConfig] = Field(min_length=1)
    balancer: AdapterBlock
    driver: AdapterBlock
    waves: list[Wave] = Field(default_factory=lambda: _default_waves(), min_length=1)
    max_unavailable: int = Field(default=1, ge=1)
    max_failed_hosts: int = Field(default=0, ge=0)
    warmup: WarmupConfig = WarmupConfig()
    verify: VerifyConfig = VerifyConfig()
    timeouts: Timeouts = Timeouts()
    bake: BakeConfig = BakeConfig()
    signals: list[AdapterBlock] = Field(default_factory=list)
    checks: list[CheckConfig] = Field(default_factory=list)
    judge: JudgeConfig = JudgeConfig()
    notify: list[AdapterBlock] = Field(default_factory=list)
    journal: JournalConfig = JournalConfig()
    lease_ttl: Duration = 30.0

    @model_validator(mode="after")
    def _cross(self) -> Config:
        names = [h.name for h in self.hosts]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"host names must be unique, got duplicates {sorted(dup)}")
        sig_names = [s.settings_dict().get("name", s.kind) for s in self.signals]
        for c in self.checks:
            if c.signal not in sig_names:
                raise ValueError(
                    f"check {c.name!r} names signal {c.signal!r}, expected one of {sig_names}"
                )
        return self
