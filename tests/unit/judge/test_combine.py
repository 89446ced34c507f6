"""build_judge maps check kinds to judges; combine turns check results into one verdict."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from immunity.config.models import CheckConfig, JudgeConfig
from immunity.domain import CheckResult, Outcome
from immunity.errors import ConfigError
from immunity.judge import (
    ErrorRateMax,
    ErrorsJudge,
    Judge,
    LatencyJudge,
    LatencyMax,
    build_judge,
    combine,
    merge_probe,
)


@pytest.mark.parametrize(
    ("kind", "extra", "cls"),
    [
        ("errors", {}, ErrorsJudge),
        ("latency", {}, LatencyJudge),
        ("error_rate_max", {"max": "2%"}, ErrorRateMax),
        ("latency_max", {"max": 500}, LatencyMax),
    ],
)
def test_build_judge_maps_each_kind_to_its_judge(kind: str, extra: dict, cls: type) -> None:
    """Each check kind gets its judge, which satisfies the Judge protocol."""
    check = CheckConfig(name="c", signal="s", kind=kind, **extra)  # type: ignore[arg-type]
    judge = build_judge(check, JudgeConfig(), 30.0)
    assert isinstance(judge, cls) and isinstance(judge, Judge)
    assert judge.name == "c"


def test_a_guard_rail_without_max_is_a_config_error() -> None:
    """error_rate_max without `max` is rejected by the model, and by build_judge for a
    check built without validation."""
    with pytest.raises(ValidationError, match="error_rate_max check needs `max`"):
        CheckConfig(name="c", signal="s", kind="error_rate_max")
    unchecked = CheckConfig.model_construct(name="c", signal="s", kind="error_rate_max", max=None)
    with pytest.raises(ConfigError, match="'c' of kind error_rate_max needs `max`"):
        build_judge(unchecked, JudgeConfig(), 30)


def _r(name: str, outcome: Outcome) -> CheckResult:
    return CheckResult(name, outcome, f"{name} says {outcome}")


def test_any_fail_fails_with_the_failing_checks_reason() -> None:
    """A fail among passes fails the look, and its reason leads."""
    v = combine([_r("a", Outcome.PASS), _r("b", Outcome.FAIL)], 12.0)
    assert (v.outcome, v.reason) == (Outcome.FAIL, "b: b says fail")


def test_all_pass_passes() -> None:
    """Every check passing passes the look."""
    assert combine([_r("a", Outcome.PASS), _r("b", Outcome.PASS)], 12.0).outcome is Outcome.PASS


def test_inconclusive_beats_continue_and_pass() -> None:
    """An inconclusive check makes the look inconclusive (the engine applies its limit)."""
    v = combine(
        [_r("a", Outcome.PASS), _r("b", Outcome.INCONCLUSIVE), _r("c", Outcome.CONTINUE)], 5
    )
    assert (v.outcome, v.reason) == (Outcome.INCONCLUSIVE, "b: b says inconclusive")


def test_undecided_checks_continue() -> None:
    """A pass beside a continue is still continue."""
    assert (
        combine([_r("a", Outcome.PASS), _r("b", Outcome.CONTINUE)], 5).outcome is Outcome.CONTINUE
    )


def _one(outcome: Outcome, reason: str = "r", **numbers: float) -> CheckResult:
    return CheckResult("errors", outcome, reason, numbers)


@pytest.mark.parametrize(
    ("customers", "probe", "merged"),
    [
        (Outcome.FAIL, Outcome.PASS, Outcome.FAIL),
        (Outcome.PASS, Outcome.FAIL, Outcome.FAIL),
        (Outcome.INCONCLUSIVE, Outcome.PASS, Outcome.PASS),
        (Outcome.CONTINUE, Outcome.PASS, Outcome.PASS),
        (Outcome.PASS, Outcome.INCONCLUSIVE, Outcome.PASS),
        (Outcome.INCONCLUSIVE, Outcome.CONTINUE, Outcome.CONTINUE),
        (Outcome.CONTINUE, Outcome.INCONCLUSIVE, Outcome.CONTINUE),
        (Outcome.INCONCLUSIVE, Outcome.INCONCLUSIVE, Outcome.INCONCLUSIVE),
    ],
)
def test_a_check_judged_on_customers_and_probe_traffic_is_one_result(
    customers: Outcome, probe: Outcome, merged: Outcome
) -> None:
    """Either fails -> fail; either passes -> pass; no traffic of either kind is never a pass."""
    out = merge_probe(_one(customers, "customers", t_s=1.0), _one(probe, "probe", t_s=2.0))
    assert out.outcome is merged
    assert out.name == "errors"
    assert out.numbers == {"t_s": 1.0, "probe_t_s": 2.0}
    if probe is Outcome.FAIL or (merged is Outcome.PASS and customers is not Outcome.PASS):
        assert out.reason.startswith("on probe traffic: probe")


def test_a_check_still_gathering_evidence_says_the_probe_s_words_when_customers_are_none() -> None:
    """Both still gathering (the guard never certifies): with no customer requests on the
    canary and probe requests, the result reads the probe's numbers, not "0 vs 0 requests"."""
    quiet = _one(Outcome.CONTINUE, "customers 0 vs 0", canary_requests=0.0)
    probed = _one(Outcome.CONTINUE, "probe 480 vs 240", canary_requests=480.0)
    out = merge_probe(quiet, probed)
    assert out.outcome is Outcome.CONTINUE
    assert out.reason == "on probe traffic: probe 480 vs 240 (customers: customers 0 vs 0)"
    busy = _one(Outcome.CONTINUE, "customers 900 vs 1800", canary_requests=900.0)
    assert merge_probe(busy, probed).reason == "customers 900 vs 1800"
