"""Guard rails: ErrorRateMax and LatencyMax on the canary alone."""

from __future__ import annotations

import math

import pytest
from judge_helpers import BOUNDS, Stream

from immunity.config.models import JudgeConfig
from immunity.domain import Observation, Outcome
from immunity.judge.thresholds import ErrorRateMax, LatencyMax, histogram_quantile


def test_a_few_early_errors_do_not_trip_the_error_rate_bar() -> None:
    """3 errors in the first 20 requests (15%) against a 2% bar is not a FAIL."""
    judge = ErrorRateMax("5xx", 0.02, JudgeConfig(), min_bake_s=60)
    result = judge.look(1.0, Observation(20, 3, hosts=1), Observation(0, 0))
    assert result.outcome is Outcome.CONTINUE


def test_a_sustained_error_rate_above_the_bar_fails_quickly(stream: Stream) -> None:
    """6% 5xx against a 2% bar at 50 rps fails within 20 s, naming rate and bar."""
    judge = ErrorRateMax("5xx", 0.02, JudgeConfig(), min_bake_s=60)
    result, t = None, 0.0
    for t, canary, baseline in stream(20, seconds=60, canary_error=0.06):
        result = judge.look(t, canary, baseline)
        if result.outcome is Outcome.FAIL:
            break
    assert result is not None
    assert (result.outcome, t <= 20) == (Outcome.FAIL, True)
    assert "against a bar of 2.0%" in result.reason


def test_an_error_rate_under_the_bar_passes_after_min_bake(stream: Stream) -> None:
    """0.5% 5xx against a 2% bar passes at min bake."""
    judge = ErrorRateMax("5xx", 0.02, JudgeConfig(), min_bake_s=60)
    outcomes = [judge.look(t, c, b).outcome for t, c, b in stream(21, seconds=60)]
    assert (outcomes[-2], outcomes[-1]) == (Outcome.CONTINUE, Outcome.PASS)


def test_a_slow_canary_fails_the_latency_bar(stream: Stream) -> None:
    """A canary with median 300 ms fails "p99 under 500 ms" with its estimated p99 in the reason."""
    judge = LatencyMax("p99", 500.0, 0.99, JudgeConfig(), min_bake_s=60)
    result = None
    for t, canary, baseline in stream(22, seconds=60, canary_ms=300.0):
        result = judge.look(t, canary, baseline)
        if result.outcome is Outcome.FAIL:
            break
    assert result is not None and result.outcome is Outcome.FAIL
    assert "p99 ≈" in result.reason and "bar of 500 ms" in result.reason


def test_a_one_second_stall_does_not_fail_the_latency_bar(stream: Stream) -> None:
    """Every request of one second above the bar is capped evidence, not a FAIL."""
    judge = LatencyMax("p99", 500.0, 0.99, JudgeConfig(), min_bake_s=60)
    stalled = [0] * len(BOUNDS) + [50]
    outcomes = []
    for t, canary, baseline in stream(23, seconds=30):
        if t == 10:
            canary = Observation(50, 0, BOUNDS, stalled, hosts=1)
        outcomes.append(judge.look(t, canary, baseline).outcome)
    assert Outcome.FAIL not in outcomes


def test_a_latency_bar_above_the_histogram_is_inconclusive(stream: Stream) -> None:
    """A bar beyond the last bucket bound cannot be measured: inconclusive, with the reason."""
    judge = LatencyMax("p99", 5000.0, 0.99, JudgeConfig(), min_bake_s=60)
    t, canary, baseline = next(stream(24))
    result = judge.look(t, canary, baseline)
    assert result.outcome is Outcome.INCONCLUSIVE
    assert "above the histogram's last bound" in result.reason


def test_no_canary_data_is_never_a_pass() -> None:
    """Unavailable canary data is inconclusive, also at final()."""
    judge = ErrorRateMax("5xx", 0.02, JudgeConfig(), min_bake_s=0)
    missing = Observation.missing("no answer")
    assert judge.look(10.0, missing, missing).outcome is Outcome.INCONCLUSIVE
    assert judge.final(10.0).outcome is Outcome.INCONCLUSIVE


def test_histogram_quantile_interpolates_within_a_bucket() -> None:
    """Half-way through the (10, 20] bucket is 15 ms; the overflow is infinite."""
    assert histogram_quantile([10, 20], [10, 10, 0], 0.75) == pytest.approx(15.0)
    assert math.isinf(histogram_quantile([10, 20], [0, 0, 5], 0.5))


def test_a_pass_whose_e_value_sank_later_says_the_value_that_certified_it() -> None:
    """A guard rail certified at 20 s stays passed while later errors (under the bar) pull
    its pass e-value below 20: the reason gives the e-value that certified it and when,
    and today's value apart, never "pass e-value 17.8 ≥ 20"."""
    judge = ErrorRateMax("guard", 0.02, JudgeConfig(), min_bake_s=20.0)
    t, result = 0.0, None
    for _ in range(40):
        t += 1.0
        result = judge.look(t, Observation(50, 0, hosts=1), Observation(0, 0))
    assert result is not None and result.outcome is Outcome.PASS
    while "now" not in result.reason and t < 400:
        t += 1.0
        result = judge.look(t, Observation(50, 2, hosts=1), Observation(0, 0))
    assert result.outcome is Outcome.PASS, result.reason
    assert "certified under the bar at 20 s (pass e-value" in result.reason, result.reason
    now = float(result.reason.split("; ")[1].split(" now")[0])
    assert now < 20 and f"{now:g} now" in result.reason
    final = judge.final(t)
    assert final.outcome is Outcome.PASS and "certified under the bar at 20 s" in final.reason
