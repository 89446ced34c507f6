"""The errors check's fixed-horizon looks at max bake, over hundreds of simulated
thin-traffic bakes: the PASS look certifies a canary exactly `bad` at most its share of beta,
the FAIL look fails a canary exactly at the tolerance at most its share of alpha.

Apart from test_sequential.py so that the two xdist workers (`--dist loadfile`) can run these
simulations and the A/A ones (test_false_alarms.py) side by side.
"""

from __future__ import annotations

import numpy as np
import pytest

from immunity.config.models import JudgeConfig
from immunity.domain import CheckResult, Observation, Outcome
from immunity.judge.sequential import ErrorsJudge

# Hundreds of simulated bakes: tens of seconds each (`-m 'not slow'` leaves them out).
pytestmark = pytest.mark.slow


def _thin_bake(
    config: JudgeConfig, rng: np.random.Generator, p_b: float, odds: float, seconds: int
) -> CheckResult:
    """One bake of `seconds` 1-s looks at 8 canary and 72 baseline requests/s (Poisson), the
    baseline's 5xx rate `p_b` and the canary's at odds ratio `odds` to it; the verdict at
    max bake."""
    judge = ErrorsJudge("errors", config, min_bake_s=1e9)
    p_c = odds * p_b / (1 - p_b + odds * p_b)
    n_c = rng.poisson(8, seconds)
    n_b = rng.poisson(72, seconds)
    x_c = rng.binomial(n_c, p_c)
    x_b = rng.binomial(n_b, p_b)
    for t in range(seconds):
        judge.look(
            t + 1.0,
            Observation(int(n_c[t]), int(x_c[t]), hosts=1),
            Observation(int(n_b[t]), int(x_b[t]), hosts=9),
        )
    return judge.final(float(seconds))


def test_the_fixed_horizon_pass_certifies_a_regression_of_bad_at_most_its_share_of_beta() -> None:
    """300 thin-traffic bakes whose canary is exactly x2 worse (odds ratio = `bad`): the look
    at max bake certifies at most beta x PASS_FINAL_SHARE (2.5%) of them, plus slack."""
    from immunity.judge.sequential import PASS_FINAL_SHARE

    config = JudgeConfig()
    rng = np.random.default_rng(31)
    runs, seconds, certified = 300, 300, 0
    for _ in range(runs):
        result = _thin_bake(config, rng, rng.uniform(0.002, 0.01), 2.0, seconds)
        certified += result.outcome is Outcome.PASS and "at max bake (score z" in result.reason
    assert certified / runs <= config.beta * PASS_FINAL_SHARE + 0.02


def test_the_fixed_horizon_fail_look_fails_a_canary_at_tolerance_at_most_its_share_of_alpha() -> (
    None
):
    """400 thin-traffic bakes whose canary is exactly at the tolerance (odds ratio 1.25, the
    null's edge): the look at max bake fails at most alpha x ERRORS_FAIL_FINAL_SHARE of them (at
    alpha 0.1 here so the bound is measurable), plus binomial slack."""
    from immunity.judge.sequential import ERRORS_FAIL_FINAL_SHARE

    config = JudgeConfig(alpha=0.1)
    rng = np.random.default_rng(47)
    runs, seconds, failed = 400, 200, 0
    for _ in range(runs):
        result = _thin_bake(config, rng, rng.uniform(0.002, 0.02), 1.25, seconds)
        failed += result.outcome is Outcome.FAIL and "at max bake (one-sided p" in result.reason
    assert failed / runs <= config.alpha * ERRORS_FAIL_FINAL_SHARE + 0.03
