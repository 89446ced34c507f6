"""A comparison never passes without baseline data ("no data is never a pass").

Seen on a real fleet: a wave whose only host left the old release baked against an empty
baseline; the errors check passed on its error-floor route alone ("canary 5xx 0% vs baseline
0% over 1,180 vs 0 requests ... pass e-value 23,629 >= 40")."""

from __future__ import annotations

from judge_helpers import BOUNDS

from immunity.config.models import JudgeConfig
from immunity.domain import Observation, Outcome
from immunity.judge.sequential import ErrorsJudge, LatencyJudge

NOTHING = Observation(0, 0, hosts=0)  # a baseline cohort with no host left: available, empty


def test_the_errors_check_does_not_pass_a_clean_canary_against_an_empty_baseline() -> None:
    judge = ErrorsJudge("errors", JudgeConfig(error_floor=0.01), min_bake_s=10.0)
    outcomes = set()
    for t in range(1, 29):  # under the 30 s after which silence itself blocks the look
        r = judge.look(float(t), Observation(60, 0, hosts=1), NOTHING)
        outcomes.add(r.outcome)
    assert Outcome.PASS not in outcomes
    assert "no baseline requests" in r.reason
    final = judge.final(28.0)
    assert final.outcome is Outcome.INCONCLUSIVE, final.reason
    assert "no baseline requests in the whole bake" in final.reason


def test_the_same_canary_passes_once_the_baseline_has_requests() -> None:
    """The guard above is not a blanket refusal: with a baseline, the same canary passes."""
    judge = ErrorsJudge("errors", JudgeConfig(error_floor=0.01), min_bake_s=10.0)
    seen = []
    for t in range(1, 29):
        seen.append(judge.look(float(t), Observation(60, 0, hosts=1), Observation(240, 0, hosts=4)))
    assert Outcome.PASS in {r.outcome for r in seen}


def test_latency_with_thresholds_carried_in_does_not_pass_without_a_baseline() -> None:
    """Thresholds set in advance (configured, or carried from an earlier bake) make the
    check active at once; with no
    baseline request in this bake it still never passes."""
    cfg = JudgeConfig()
    judge = LatencyJudge("latency", cfg, min_bake_s=10.0, thresholds_ms=[50.0, 100.0])
    hist = [0] * (len(BOUNDS) + 1)
    hist[3] = 60  # every canary request at 40 ms
    canary = Observation(60, 0, BOUNDS, hist, hosts=1)
    empty = Observation(0, 0, BOUNDS, [0] * (len(BOUNDS) + 1), hosts=0)
    outcomes = {judge.look(float(t), canary, empty).outcome for t in range(1, 29)}
    assert Outcome.PASS not in outcomes
    assert judge.final(28.0).outcome is Outcome.INCONCLUSIVE
