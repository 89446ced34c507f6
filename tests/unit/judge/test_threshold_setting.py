"""While latency thresholds are being set from the baseline, the reason says what setting
them takes (blocks of time and requests), not "waiting for enough requests" after thousands;
`deploy --dry-run` quotes the same rule."""

from __future__ import annotations

from immunity.config.models import JudgeConfig
from immunity.domain import Observation, Outcome
from immunity.judge.sequential import (
    FREEZE_BLOCK_S,
    FREEZE_BLOCKS,
    LatencyJudge,
    freeze_needs,
)

BOUNDS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def obs(n: int, hosts: int) -> Observation:
    # half of the requests under 5 ms, 40% under 10 ms, 10% under 20 ms
    buckets = (0, 0, n // 2, 2 * n // 5, n - n // 2 - 2 * n // 5, 0, 0, 0)
    return Observation(n, 0, BOUNDS, buckets, hosts=hosts)


def test_the_reason_counts_blocks_not_requests_while_thresholds_are_set() -> None:
    """Trial 3, finding 8: at 150 requests/s the baseline had 3,456 requests and the reason
    said "waiting for enough baseline requests ... (3,456 so far)", while the thresholds were
    waiting for 5 blocks of 3 s. Now it says how many blocks are done, of what."""
    judge = LatencyJudge("latency", JudgeConfig(), 20.0, quantiles=(0.5, 0.9))
    reasons = []
    for t in range(1, 16):
        r = judge.look(float(t), obs(100, 1), obs(300, 2))
        if judge.active.any():
            break
        assert r.outcome is Outcome.CONTINUE
        reasons.append(r.reason)
    assert judge.active.all()  # the fifth block closed at 15 s
    assert "waiting for enough baseline requests" not in " ".join(reasons)
    assert reasons[0].startswith(
        f"setting the p50 latency threshold from the baseline: 0 of {FREEZE_BLOCKS} blocks of "
        f"≥ {FREEZE_BLOCK_S:g} s and ≥ 100 baseline requests so far (300 baseline requests seen"
    ), reasons[0]
    assert "4 of 5 blocks" in reasons[-1] and "(4,200 baseline requests seen" in reasons[-1]


def test_the_dry_run_quotes_the_judges_rule() -> None:
    assert freeze_needs(0.5) == (500, 15.0)
    assert freeze_needs(0.9) == (500, 15.0)
    assert freeze_needs(0.99) == (2500, 15.0)
    from immunity.cli.dryrun import _baseline_requests_for

    assert _baseline_requests_for(0.9) == "500 baseline requests over 15 s"  # it said ~250
