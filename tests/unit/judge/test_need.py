"""The traffic the checks need to decide by bake.max (`judge.need`) and the probe's use of it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from immunity.config.models import CheckConfig, JudgeConfig, ProbeConfig
from immunity.domain import Observation, Outcome
from immunity.judge.need import MIN_BASELINE_REQUESTS, Need, check_need, log_odds_n, needed_rate
from immunity.judge.sequential import ErrorsJudge
from immunity.signals.probe import ProbeSource

ERRORS = CheckConfig(name="errors", signal="lb", kind="errors")
LATENCY = CheckConfig(name="latency", signal="lb", kind="latency")


def test_log_odds_sample_size_is_the_textbook_formula() -> None:
    """n = ((z_a + z_b) / ln OR)^2 (1/(p(1-p)) + 1/(k p(1-p))), worked by hand: p 10%, k 9,
    OR 2 at z 1.645 + 1.645 -> 10.82 / 0.4805 x (11.11 + 1.235) = 278.1 canary requests."""
    n = log_odds_n(0.1, 9.0, math.log(2.0), 2 * 1.645)
    assert n == pytest.approx(278.1, rel=1e-3)
    assert math.isinf(log_odds_n(0.0, 9.0, math.log(2.0), 3.0))


def test_the_errors_need_grows_as_the_baseline_error_rate_falls_and_needs_a_rate() -> None:
    judge = JudgeConfig(error_floor=0.0)
    kw = {"canary_hosts": 1, "baseline_hosts": 9, "bake_max_s": 600.0}
    assert check_need(ERRORS, judge, **kw, baseline_requests=MIN_BASELINE_REQUESTS - 1) is None
    rates = [
        check_need(ERRORS, judge, **kw, baseline_requests=100_000, baseline_errors=x)
        for x in (2_000, 500, 100)
    ]
    assert all(r is not None for r in rates)
    assert rates[0].rate < rates[1].rate < rates[2].rate  # type: ignore[union-attr]
    assert "baseline 5xx 0.10% over 100,000 requests" in rates[2].why  # type: ignore[union-attr]


def test_an_app_without_errors_needs_only_what_the_floor_route_needs() -> None:
    """No baseline 5xx at all: no failure can be shown relative to it, and a canary with
    none passes through the floor once (1 - floor)^n <= its share of beta."""
    judge = JudgeConfig(error_floor=0.01)
    need = check_need(
        ERRORS, judge, canary_hosts=1, baseline_hosts=2, bake_max_s=100.0,
        baseline_requests=5_000, baseline_errors=0,
    )  # fmt: skip
    beta_floor = judge.beta * 0.5 * 0.2
    assert need is not None
    assert need.rate == pytest.approx(math.log(beta_floor) / math.log(0.99) / 100.0, rel=1e-9)


def test_the_latency_need_is_its_most_demanding_quantile_and_shrinks_with_bigger_waves() -> None:
    judge = JudgeConfig()
    p99 = check_need(LATENCY, judge, canary_hosts=1, baseline_hosts=9, bake_max_s=600.0)
    p90 = check_need(
        LATENCY.model_copy(update={"quantiles": [0.5, 0.9]}),
        judge, canary_hosts=1, baseline_hosts=9, bake_max_s=600.0,
    )  # fmt: skip
    wide = check_need(LATENCY, judge, canary_hosts=3, baseline_hosts=7, bake_max_s=600.0)
    assert p99 is not None and p90 is not None and wide is not None
    assert "p99" in p99.why and "p90" in p90.why and p90.rate < p99.rate / 5
    assert wide.rate < p99.rate  # per canary host: more canaries share the requests needed
    configured = LATENCY.model_copy(update={"thresholds_ms": [200.0]})
    assert check_need(configured, judge, canary_hosts=1, baseline_hosts=9, bake_max_s=60) is None
    guard = CheckConfig(name="g", signal="lb", kind="error_rate_max", max=0.02)
    assert check_need(guard, judge, canary_hosts=1, baseline_hosts=9, bake_max_s=60) is None
    most = needed_rate([ERRORS, LATENCY], judge, canary_hosts=1, baseline_hosts=9, bake_max_s=600)
    assert most is not None and most.check == "latency"  # errors: baseline rate unknown yet


def _fails_at_max_bake(rng: np.random.Generator, per_look: float, p_b: float, odds: float) -> bool:
    judge = ErrorsJudge("errors", JudgeConfig(error_floor=0.0), min_bake_s=1e9)
    p_c = odds * p_b / (1 - p_b + odds * p_b)
    for t in range(1, 101):
        n_c, n_b = int(rng.poisson(per_look)), int(rng.poisson(9 * per_look))
        result = judge.look(
            float(t),
            Observation(n_c, int(rng.binomial(n_c, p_c)), hosts=1),
            Observation(n_b, int(rng.binomial(n_b, p_b)), hosts=9),
        )
        if result.outcome is Outcome.FAIL:
            return True
    return judge.final(100.0).outcome is Outcome.FAIL


def test_at_the_derived_traffic_a_release_worse_by_bad_is_failed_with_the_configured_power() -> (
    None
):
    """The derivation is the judge's: 120 bakes of 100 looks at the rate the errors check
    needs, the canary exactly `error_bad` worse: at least 1 - beta of them fail (less slack
    for the normal approximation); at a quarter of that traffic clearly fewer do."""
    judge = JudgeConfig(error_floor=0.0)
    p_b = 0.02
    need = check_need(
        ERRORS, judge, canary_hosts=1, baseline_hosts=9, bake_max_s=100.0,
        baseline_requests=100_000, baseline_errors=round(p_b * 100_000),
    )  # fmt: skip
    assert need is not None
    rng = np.random.default_rng(5)
    runs = 120
    enough = sum(_fails_at_max_bake(rng, need.rate, p_b, judge.error_bad) for _ in range(runs))
    thin = sum(_fails_at_max_bake(rng, need.rate / 4, p_b, judge.error_bad) for _ in range(runs))
    assert enough / runs >= 1 - judge.beta - 0.07, (enough, need)
    assert thin / runs <= 0.75, thin


def _steered(probe: ProbeSource, per_host: float, need: Need | None) -> None:
    for _ in range(12):  # a full steering window of 1-s looks
        probe.steer(1.0, (per_host, per_host * 3, 1), need)


def test_the_probe_runs_while_customers_bring_less_than_the_checks_need() -> None:
    """With a derived need of 30/s per canary host, customers at 20/s keep the probe on (at
    its own rate) and at 40/s turn it off; the state names the figure and the check."""
    need = Need(30.0, "latency", "latency: p99, 18,000 canary requests by bake.max")
    probe = ProbeSource(ProbeConfig(rate=12))
    _steered(probe, 20.0, need)
    assert probe.active and probe.rate == 12
    assert "(< 30, what the checks need to decide by bake.max (latency: p99" in probe.state
    _steered(probe, 40.0, need)
    assert not probe.active
    assert "(>= 30, what the checks need" in probe.state


def test_without_a_derived_need_the_threshold_is_the_probe_rate_and_max_share_still_caps() -> None:
    probe = ProbeSource(ProbeConfig(rate=12, max_share=0.1))
    _steered(probe, 20.0, None)
    assert not probe.active and "the checks' need is not known yet" in probe.state
    _steered(probe, 5.0, Need(30.0, "errors", "errors: …"))
    # 5/s per canary host, 15/s over 3 hosts: 10% of the fleet's requests is 15 x 0.1 / 0.9
    # over the 1 host probed (the probe's `hosts` is 1 until it sends).
    assert probe.active and probe.rate == pytest.approx(15 * 0.1 / 0.9)
    assert "capped at 10% of the fleet's requests" in probe.state
