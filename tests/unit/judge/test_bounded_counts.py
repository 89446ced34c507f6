"""Huge counts (a busy fleet, or cumulative counters passed as counts) never make a judge's
memory grow with them; the verdicts still follow the evidence."""

from __future__ import annotations

import tracemalloc

import numpy as np

from immunity.config.models import JudgeConfig
from immunity.domain import Observation, Outcome
from immunity.judge.evidence import MAX_EXACT_REQUESTS, thin
from immunity.judge.sequential import ErrorsJudge, LatencyJudge

BOUNDS = (5.0, 10.0, 50.0)


def test_errors_judge_memory_is_bounded_whatever_the_counts() -> None:
    """2e8 requests a look (what a command printing cumulative counters gives): the judge's
    peak allocation stays far under what a log-factorial table of 2e8 entries needs (1.6 GB)."""
    judge = ErrorsJudge("errors", JudgeConfig(), min_bake_s=1e9)
    tracemalloc.start()
    try:
        for t in range(1, 6):
            judge.look(
                float(t),
                Observation(200_000_000, 20_000, hosts=1),
                Observation(400_000_000, 40_000, hosts=2),
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024


def test_latency_judge_memory_is_bounded_whatever_the_counts() -> None:
    """The same for the latency judge's histogram counts."""
    judge = LatencyJudge("latency", JudgeConfig(), min_bake_s=1e9)
    tracemalloc.start()
    try:
        for t in range(1, 30):
            judge.look(
                float(t),
                Observation(200_000_000, 0, BOUNDS, (50_000_000,) * 4, hosts=1),
                Observation(400_000_000, 0, BOUNDS, (100_000_000,) * 4, hosts=2),
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024


def test_a_regression_is_still_caught_on_huge_counts_and_identical_cohorts_are_not() -> None:
    """On thinned evidence, a canary with 3x the errors fails and an identical one does not."""
    rng = np.random.default_rng(3)
    outcomes = []
    for canary_rate in (0.003, 0.001):
        judge = ErrorsJudge("errors", JudgeConfig(), min_bake_s=1e9)
        r = None
        for t in range(1, 61):
            n_c, n_b = 2_000_000, 4_000_000
            r = judge.look(
                float(t),
                Observation(n_c, int(rng.binomial(n_c, canary_rate)), hosts=1),
                Observation(n_b, int(rng.binomial(n_b, 0.001)), hosts=2),
            )
            if r.outcome is Outcome.FAIL:
                break
        assert r is not None
        outcomes.append(r.outcome)
    assert outcomes == [Outcome.FAIL, Outcome.CONTINUE]


def test_thinning_keeps_small_counts_and_shrinks_big_ones_in_proportion() -> None:
    """Counts under the cap are unchanged; above it the subset is about the cap, same mix."""
    rng = np.random.default_rng(0)
    assert thin([10, 3], rng) == [10, 3]
    ok, bad = thin([190_000_000, 10_000_000], rng)
    assert abs(ok + bad - MAX_EXACT_REQUESTS) < 2_000
    assert abs(bad / (ok + bad) - 0.05) < 0.005
