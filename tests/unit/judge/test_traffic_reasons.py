"""Why a look cannot be judged: the signal's failure, no traffic anywhere, a starved canary.

Three different situations, three different reasons; "the canary served no requests" is never
said of a canary that served requests the signal could not see.
"""

from __future__ import annotations

from immunity.config.models import JudgeConfig
from immunity.domain import Observation, ObservationStatus, Outcome
from immunity.judge.sequential import ErrorsJudge


def _last(canary: Observation, baseline: Observation, seconds: int = 40) -> str:
    judge = ErrorsJudge("errors", JudgeConfig(), min_bake_s=1e9)
    r = None
    for t in range(1, seconds + 1):
        r = judge.look(float(t), canary, baseline)
    assert r is not None and r.outcome is Outcome.INCONCLUSIVE
    return r.reason


def test_no_traffic_on_either_cohort_is_said_as_such() -> None:
    """Zero requests on both cohorts: the signal sees no traffic, not 'the canary served none'."""
    reason = _last(Observation(0, 0, hosts=1), Observation(0, 0, hosts=2))
    assert reason.startswith("the signal sees no traffic on either cohort for 40 s")
    assert "canary served" not in reason


def test_a_canary_without_traffic_beside_a_busy_baseline_gets_too_little() -> None:
    """The baseline serves everything: the canary gets too little of the traffic."""
    reason = _last(Observation(0, 0, hosts=1), Observation(40, 0, hosts=2))
    assert reason.startswith("the canary gets too little of the traffic: none of the ")


def test_a_failed_signal_is_named_as_failed() -> None:
    """A source that could not be read says so, with its detail."""
    reason = _last(Observation.failed("access log unreadable"), Observation(40, 0, hosts=2), 1)
    assert reason == "the signal failed for the canary at 1 s: access log unreadable"


def test_a_rejected_answer_is_not_evidence() -> None:
    """A partial, stale or implausible answer is named as such."""
    obs = Observation.rejected("stale counters")
    assert obs.status is ObservationStatus.REJECTED and not obs.available
    reason = _last(Observation(40, 0, hosts=1), obs, 1)
    assert "answer for the baseline is not evidence" in reason
