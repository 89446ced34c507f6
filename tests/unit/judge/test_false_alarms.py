"""ErrorsJudge and LatencyJudge on identical cohorts: hundreds of simulated A/A bakes at the
null's edge fail at most alpha plus slack (validity of the sequential FAIL tests).

Apart from test_sequential.py so that the two xdist workers (`--dist loadfile`) can run these
simulations and the fixed-horizon ones (test_fixed_look_error_rates.py) side by side.
"""

from __future__ import annotations

import numpy as np
import pytest
from judge_helpers import BOUNDS
from scipy.special import ndtr

from immunity.config.models import JudgeConfig
from immunity.domain import Observation, Outcome
from immunity.judge.sequential import ErrorsJudge, LatencyJudge

# Hundreds of simulated bakes: tens of seconds each (`-m 'not slow'` leaves them out).
pytestmark = pytest.mark.slow


def test_false_alarms_on_identical_cohorts_stay_under_alpha() -> None:
    """300 A/A bakes at the null's edge (tolerance 1, alpha 5%) fail at most alpha plus slack."""
    config = JudgeConfig(alpha=0.05, error_tolerance=1.0)
    rng = np.random.default_rng(7)
    runs, seconds = 300, 200
    n_c = rng.poisson(50, (runs, seconds))
    n_b = rng.poisson(450, (runs, seconds))
    rate = rng.uniform(0.01, 0.05, (runs, 1)) * rng.uniform(0.5, 1.5, (runs, seconds))
    x_c = rng.binomial(n_c, rate)
    x_b = rng.binomial(n_b, rate)
    fails = 0
    for r in range(runs):
        judge = ErrorsJudge("errors", config, min_bake_s=1e9)
        for t in range(seconds):
            out = judge.look(
                t + 1.0,
                Observation(int(n_c[r, t]), int(x_c[r, t]), hosts=1),
                Observation(int(n_b[r, t]), int(x_b[r, t]), hosts=9),
            )
            if out.outcome is Outcome.FAIL:
                fails += 1
                break
    assert fails / runs <= 0.05 + 0.02


def test_latency_false_alarms_on_identical_cohorts_stay_under_alpha() -> None:
    """100 A/A bakes of the latency judge (tolerance 1, alpha 5%) fail at most alpha plus slack."""
    config = JudgeConfig(alpha=0.05, latency_tolerance=1.0)
    rng = np.random.default_rng(11)
    edges = np.log(np.asarray(BOUNDS) / 50.0) / 0.5
    cdf = np.concatenate([ndtr(edges), [1.0]])
    probs = np.diff(cdf, prepend=0.0)
    runs, seconds, fails = 100, 120, 0
    for _ in range(runs):
        judge = LatencyJudge("latency", config, min_bake_s=1e9)
        n_c = rng.poisson(50, seconds)
        n_b = rng.poisson(450, seconds)
        h_c = rng.multinomial(n_c, probs)
        h_b = rng.multinomial(n_b, probs)
        for t in range(seconds):
            out = judge.look(
                t + 1.0,
                Observation(int(n_c[t]), 0, BOUNDS, h_c[t].tolist(), hosts=1),
                Observation(int(n_b[t]), 0, BOUNDS, h_b[t].tolist(), hosts=9),
            )
            if out.outcome is Outcome.FAIL:
                fails += 1
                break
    assert fails / runs <= 0.05 + 0.04
