"""Latency thresholds follow the baseline when the whole fleet's latency drifts mid-bake.

The case from CI: on the probe's bounds (1, 2, 3, 4, 5, 7, 10 ms...) a p90 frozen at 7 ms
while the fleet was still warming up; then both cohorts got faster and only ~2% of requests
exceeded 7 ms, too few to certify anything by `bake.max`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from scipy.special import ndtr

from immunity.config.models import CheckConfig, JudgeConfig
from immunity.domain import Observation, Outcome
from immunity.judge import build_judge
from immunity.judge.sequential import LatencyJudge
from immunity.signals.probe import LATENCY_BOUNDS_MS

BOUNDS = LATENCY_BOUNDS_MS
SIGMA = 0.25


def _probs(median_ms: float) -> np.ndarray:
    edges = np.log(np.asarray(BOUNDS) / median_ms) / SIGMA
    return np.diff(np.concatenate([ndtr(edges), [1.0]]), prepend=0.0)


def _stream(
    seed: int,
    seconds: int,
    *,
    before_ms: float = 5.5,
    after_ms: float = 4.2,
    drift_at: int = 20,
    canary_after_ms: float | None = None,
    canary_rps: float = 10.0,
    baseline_rps: float = 20.0,
) -> Iterator[tuple[float, Observation, Observation]]:
    """1 canary host vs 2 baseline hosts; every host's median moves at `drift_at` s
    (the canary's to `canary_after_ms` when given, else with the baseline's)."""
    rng = np.random.default_rng(seed)
    for t in range(1, seconds + 1):
        b_ms = before_ms if t <= drift_at else after_ms
        c_ms = b_ms if canary_after_ms is None or t <= drift_at else canary_after_ms
        n_c, n_b = int(rng.poisson(canary_rps)), int(rng.poisson(baseline_rps))
        yield (
            float(t),
            Observation(n_c, 0, BOUNDS, rng.multinomial(n_c, _probs(c_ms)).tolist(), hosts=1),
            Observation(n_b, 0, BOUNDS, rng.multinomial(n_b, _probs(b_ms)).tolist(), hosts=2),
        )


def _judge(**kw: object) -> LatencyJudge:
    return LatencyJudge("latency", JudgeConfig(), min_bake_s=30.0, quantiles=(0.9,), **kw)  # type: ignore[arg-type]


def _bake(judge: LatencyJudge, intervals: Iterator[tuple[float, Observation, Observation]]) -> str:
    """Looks until a decision, else the final word at the last interval: 'outcome: reason'."""
    t = 0.0
    for t, canary, baseline in intervals:
        r = judge.look(t, canary, baseline)
        if r.outcome in (Outcome.FAIL, Outcome.PASS):
            return f"{r.outcome}: {r.reason}"
    r = judge.final(t)
    return f"{r.outcome}: {r.reason}"


def test_a_good_release_passes_when_the_fleet_gets_faster_after_the_freeze() -> None:
    """p90 frozen at 7 ms (17% of requests above it), then both cohorts faster (2% above):
    the threshold is re-set to 5 ms from the baseline's blocks and the release passes by
    max bake. Before, it ended inconclusive: too few slower requests to certify."""
    judge = _judge()
    passed = 0
    for seed in range(5):
        judge = _judge()
        got = _bake(judge, _stream(seed, 90))
        passed += got.startswith("pass")
        assert not got.startswith("fail"), got
    assert passed == 5, got
    assert judge.thresholds == [5.0]
    assert judge.since[0] is not None and judge.since[0] > 20
    assert "re-set at" in got and "from 7 ms" in got


def test_the_threshold_follows_the_baseline_only() -> None:
    """A canary that alone gets faster (or slower) does not move the threshold: it is
    chosen from the baseline's requests, never the canary's."""
    for canary_ms in (3.0, 8.0):
        judge = _judge()
        for t, canary, baseline in _stream(3, 90, after_ms=5.5, canary_after_ms=canary_ms):
            judge.look(t, canary, baseline)
        assert judge.thresholds == [7.0]
        assert judge.since == [None]


def test_a_steady_fleet_keeps_its_threshold() -> None:
    """No drift, no re-set: the frozen bound stays for the whole bake."""
    judge = _judge()
    for t, canary, baseline in _stream(4, 120, after_ms=5.5):
        judge.look(t, canary, baseline)
    assert judge.thresholds == [7.0]
    assert judge.since == [None]


def test_a_regression_is_still_caught_after_a_re_set() -> None:
    """The fleet gets faster, the canary twice as slow as the baseline after it: a fail,
    on the re-set threshold."""
    judge = _judge()
    got = _bake(judge, _stream(5, 120, canary_after_ms=6.5, canary_rps=20, baseline_rps=60))
    assert got.startswith("fail"), got


def test_carried_thresholds_start_the_bake_and_still_follow_the_baseline() -> None:
    """A later bake starts from the thresholds an earlier one left (reasons say p90, not
    'configured'), and re-sets them when this bake's baseline has drifted away."""
    check = CheckConfig(
        name="latency", signal="s", kind="latency", quantiles=[0.9], thresholds_ms=[7.0]
    )
    judge = build_judge(check, JudgeConfig(), 30.0, carried=True)
    assert isinstance(judge, LatencyJudge)
    intervals = _stream(6, 90, before_ms=4.2, drift_at=0)
    t, canary, baseline = next(intervals)
    first = judge.look(t, canary, baseline)
    assert judge.thresholds == [7.0]
    assert "waiting for enough baseline" not in first.reason
    for t, canary, baseline in intervals:
        judge.look(t, canary, baseline)
    assert judge.thresholds == [5.0]
    assert "(p90)" in judge.final(t).reason


def test_configured_thresholds_never_move() -> None:
    """Thresholds the user configured are kept whatever the baseline does."""
    check = CheckConfig(name="latency", signal="s", kind="latency", thresholds_ms=[7.0])
    judge = build_judge(check, JudgeConfig(), 30.0)
    assert isinstance(judge, LatencyJudge)
    for t, canary, baseline in _stream(7, 90, before_ms=4.2, drift_at=0):
        judge.look(t, canary, baseline)
    assert judge.thresholds == [7.0]


@pytest.mark.slow
def test_re_set_thresholds_keep_false_alarms_under_alpha() -> None:
    """A/A bakes (tolerance 1, alpha 5%) whose fleet drifts back and forth, faster and
    slower, so thresholds are re-set several times each: at most alpha plus slack fail."""
    config = JudgeConfig(alpha=0.05, latency_tolerance=1.0)
    rng = np.random.default_rng(17)
    runs, seconds, fails, resets = 100, 150, 0, 0
    for _ in range(runs):
        judge = LatencyJudge("latency", config, min_bake_s=1e9, quantiles=(0.5, 0.9))
        medians = np.where((np.arange(seconds) // 30) % 2 == 0, 5.5, 3.8)
        for t in range(seconds):
            p = _probs(float(medians[t]))
            n_c, n_b = int(rng.poisson(30)), int(rng.poisson(60))
            out = judge.look(
                t + 1.0,
                Observation(n_c, 0, BOUNDS, rng.multinomial(n_c, p).tolist(), hosts=1),
                Observation(n_b, 0, BOUNDS, rng.multinomial(n_b, p).tolist(), hosts=2),
            )
            if out.outcome is Outcome.FAIL:
                fails += 1
                break
        resets += sum(s is not None for s in judge.since)
    assert resets >= runs  # the drift did move thresholds
    assert fails / runs <= 0.05 + 0.04
