"""Judges: one per check, built from config, and the rule that combines their results.

`build_judge` maps a check's `kind` to its judge: `errors` and `latency` compare the canary
with the concurrent baseline (`sequential`), `error_rate_max` and `latency_max` are absolute
guard rails on the canary alone (`thresholds`). `combine` turns one look's check results into
the overall verdict; the engine owns how long an inconclusive verdict may last.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from immunity.config.models import CheckConfig, JudgeConfig
from immunity.domain import CheckResult, Outcome, Verdict
from immunity.errors import ConfigError
from immunity.judge.base import Judge
from immunity.judge.sequential import ErrorsJudge, LatencyJudge
from immunity.judge.thresholds import ErrorRateMax, LatencyMax, ProbeGuardRail

__all__ = [
    "ErrorRateMax",
    "ErrorsJudge",
    "Judge",
    "LatencyJudge",
    "LatencyMax",
    "ProbeGuardRail",
    "build_judge",
    "combine",
    "merge_probe",
]


def build_judge(
    check: CheckConfig,
    judge: JudgeConfig,
    min_bake_s: float,
    *,
    carried: bool = False,
    probe: bool = False,
) -> Judge:
    """A fresh judge for one check of one bake (judges keep running statistics).

    `probe`: the check judges probe traffic (a "(probe)" twin): a guard rail is then a
    `ProbeGuardRail`, which the probe's own timing cannot fail (see there).

    `carried`: a latency check's `thresholds_ms` are its quantiles' thresholds as an
    earlier bake left them: its reasons name them by quantile ("p50"), not "configured",
    and they follow the baseline when it drifts, as thresholds frozen in this bake do."""
    if check.kind == "errors":
        return ErrorsJudge(check.name, judge, min_bake_s)
    if check.kind == "latency":
        carry = carried and check.thresholds_ms is not None
        return LatencyJudge(
            check.name,
            judge,
            min_bake_s,
            quantiles=tuple(check.quantiles),
            thresholds_ms=None if carry else check.thresholds_ms,
            carried_ms=check.thresholds_ms if carry else None,
        )
    if check.max is None:
        unit = "a fraction such as 0.02 or 2%" if check.kind == "error_rate_max" else "ms"
        raise ConfigError(
            f"check {check.name!r} of kind {check.kind} needs `max` ({unit})",
            hint="e.g. `max: 2%` for error_rate_max or `max: 500` for latency_max",
        )
    if check.kind == "error_rate_max":
        if not 0.0 < check.max < 1.0:
            raise ConfigError(
                f"check {check.name!r}: error_rate_max `max` must lie between 0 and 1 "
                f"(or 0% and 100%), got {check.max}"
            )
        rate = ErrorRateMax(check.name, check.max, judge, min_bake_s)
        if probe:
            return ProbeGuardRail(rate, ErrorsJudge(check.name, judge, min_bake_s))
        return rate
    if not 0.0 < check.quantile < 1.0:
        raise ConfigError(
            f"check {check.name!r}: `quantile` must lie between 0 and 1, got {check.quantile}"
        )
    if check.max <= 0:
        raise ConfigError(f"check {check.name!r}: latency_max `max` must be > 0 ms")
    rail = LatencyMax(check.name, check.max, check.quantile, judge, min_bake_s)
    if probe:
        beside = LatencyJudge(
            check.name, judge, min_bake_s, thresholds_ms=[check.max], labels=["the bar"]
        )
        return ProbeGuardRail(rail, beside)
    return rail


def combine(
    results: Sequence[CheckResult], t_s: float, decided_at: dt.datetime | None = None
) -> Verdict:
    """One look's verdict: any fail -> fail (its reason leads); any inconclusive ->
    inconclusive; all pass -> pass; otherwise continue.

    The engine decides when an inconclusive verdict has lasted long enough to act on.
    """
    checks = tuple(results)
    failed = [r for r in checks if r.outcome is Outcome.FAIL]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more failing check(s))" if len(failed) > 1 else ""
        return Verdict(Outcome.FAIL, f"{first.name}: {first.reason}{more}", checks, decided_at)
    stuck = [r for r in checks if r.outcome is Outcome.INCONCLUSIVE]
    if stuck:
        first = stuck[0]
        return Verdict(Outcome.INCONCLUSIVE, f"{first.name}: {first.reason}", checks, decided_at)
    if checks and all(r.outcome is Outcome.PASS for r in checks):
        return Verdict(
            Outcome.PASS,
            f"all {len(checks)} check(s) passed after {t_s:.0f} s: "
            + "; ".join(f"{r.name}: {r.reason}" for r in checks),
            checks,
            decided_at,
        )
    waiting = [r for r in checks if r.outcome is not Outcome.PASS]
    if not waiting:
        return Verdict(
            Outcome.CONTINUE, f"no checks to judge after {t_s:.0f} s", checks, decided_at
        )
    first = waiting[0]
    return Verdict(
        Outcome.CONTINUE,
        f"{len(waiting)} of {len(checks)} check(s) still undecided after {t_s:.0f} s; "
        f"{first.name}: {first.reason}",
        checks,
        decided_at,
    )


def _canary_requests(r: CheckResult) -> float:
    """The canary requests a check's result counted (0 when it says none)."""
    return max(
        (float(v) for k, v in r.numbers.items() if k.endswith("canary_requests")), default=0.0
    )


def merge_probe(customers: CheckResult, probe: CheckResult) -> CheckResult:
    """One check judged twice, on customer traffic and on probe traffic, as one result.

    Either fails -> fail. A signal that errored on either side -> error (a broken signal
    is said, not papered over). Either passes -> pass: the probe exists for when customers
    are too few to decide, and customers who suffice decide alone. Otherwise continue while
    either is still gathering evidence (said with the probe's words when customers brought
    the canary nothing and the probe did), and inconclusive only when both are (no traffic
    of either kind is never a pass). The probe's numbers are kept under `probe_*` keys.
    """
    numbers = {**customers.numbers, **{f"probe_{k}": v for k, v in probe.numbers.items()}}
    name = customers.name

    def out(outcome: Outcome, reason: str) -> CheckResult:
        return CheckResult(name, outcome, reason, numbers)

    if customers.outcome is Outcome.FAIL:
        return out(Outcome.FAIL, customers.reason)
    if probe.outcome is Outcome.FAIL:
        return out(Outcome.FAIL, f"on probe traffic: {probe.reason}")
    if customers.outcome is Outcome.ERROR:
        return out(Outcome.ERROR, customers.reason)
    if probe.outcome is Outcome.ERROR:
        return out(Outcome.ERROR, f"probe traffic: {probe.reason}")
    if customers.outcome is Outcome.PASS:
        return out(Outcome.PASS, customers.reason)
    if probe.outcome is Outcome.PASS:
        return out(
            Outcome.PASS, f"on probe traffic: {probe.reason} (customers: {customers.reason})"
        )
    if customers.outcome is Outcome.CONTINUE and not (
        probe.outcome is Outcome.CONTINUE
        and _canary_requests(customers) == 0 < _canary_requests(probe)
    ):
        return out(Outcome.CONTINUE, customers.reason)
    if probe.outcome is Outcome.CONTINUE:  # the probe's, when it is all there is to judge
        return out(
            Outcome.CONTINUE, f"on probe traffic: {probe.reason} (customers: {customers.reason})"
        )
    return out(Outcome.INCONCLUSIVE, f"{customers.reason}; probe traffic: {probe.reason}")
