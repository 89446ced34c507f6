"""A check that passed stays watched for the rest of its bake: the post-pass detector."""

from __future__ import annotations

import numpy as np
import pytest
from judge_helpers import BOUNDS, histogram

from immunity.config.models import JudgeConfig
from immunity.domain import Observation, Outcome
from immunity.judge.sequential import ErrorsJudge, LatencyJudge


def _look(
    rng: np.random.Generator, err_c: float, ms_c: float, rate: float = 50.0
) -> tuple[Observation, Observation]:
    n_c, n_b = int(rng.poisson(rate)), int(rng.poisson(rate * 9))
    return (
        Observation(n_c, int(rng.binomial(n_c, err_c)), BOUNDS, histogram(rng, n_c, ms_c), hosts=1),
        Observation(n_b, int(rng.binomial(n_b, 0.005)), BOUNDS, histogram(rng, n_b, 50.0), hosts=9),
    )


def _after_pass(judge: ErrorsJudge | LatencyJudge, seed: int, **fault: float) -> tuple[float, str]:
    """Good looks until the check passes, then the fault from 20 s after the pass: (seconds
    from the onset to a fail, or inf; the last reason)."""
    rng = np.random.default_rng(seed)
    passed_at = onset = None
    r = None
    for t in range(1, 600):
        faulty = onset is not None and t >= onset
        c, b = _look(
            rng,
            fault.get("err", 0.005) if faulty else 0.005,
            fault.get("ms", 50.0) if faulty else 50.0,
        )
        r = judge.look(float(t), c, b)
        if r.outcome is Outcome.PASS and passed_at is None:
            passed_at, onset = t, t + 20
        if r.outcome is Outcome.FAIL:
            assert passed_at is not None and onset is not None, r.reason
            return t - onset, r.reason
    assert r is not None and passed_at is not None
    return float("inf"), r.reason


def test_errors_that_start_after_the_errors_check_passed_fail_it() -> None:
    """x5 errors 20 s after the errors check passed (another check still baking): a fail
    within a minute, saying since when; before, the pass was final until the next bake."""
    for seed in range(3):
        judge = ErrorsJudge("errors", JudgeConfig(alpha=0.005), min_bake_s=60)
        after, reason = _after_pass(judge, seed, err=0.025)
        assert after <= 60, reason
        assert "since the check passed at" in reason and "post-pass detector" in reason


def test_latency_that_regresses_after_the_latency_check_passed_fails_it() -> None:
    judge = LatencyJudge("latency", JudgeConfig(alpha=0.005), min_bake_s=60)
    after, reason = _after_pass(judge, 4, ms=75.0)
    assert after <= 60, reason
    assert "since the check passed at" in reason


def test_a_passed_check_on_a_healthy_canary_stays_passed() -> None:
    """No fault after the pass: 10 minutes of looks, still a pass (both kinds)."""
    for judge in (
        ErrorsJudge("errors", JudgeConfig(alpha=0.005), min_bake_s=60),
        LatencyJudge("latency", JudgeConfig(alpha=0.005), min_bake_s=60),
    ):
        after, reason = _after_pass(judge, 5)
        assert after == float("inf"), reason


def test_the_post_pass_detector_is_paid_for_and_the_guard_has_none() -> None:
    """Its share comes out of the errors check's sequential alpha (bar 1/(0.16 alpha)), and
    out of the latency check's held-back half (bar unchanged); a judge that never certifies
    (the guard) keeps its whole alpha."""
    cfg = JudgeConfig(alpha=0.01)
    assert ErrorsJudge("e", cfg, 60).fail_needed == pytest.approx(625.0)
    assert LatencyJudge("l", cfg, 60).fail_needed == pytest.approx(3 / (0.01 * 0.5))
    assert ErrorsJudge("e", cfg, float("inf")).postpass_alpha == 0.0
    assert LatencyJudge("l", cfg, float("inf")).postpass_alpha == 0.0
