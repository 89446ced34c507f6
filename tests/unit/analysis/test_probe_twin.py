"""The probe's twins judge the probe's own traffic in its own terms: latency thresholds of the
probe's baseline (never the customers'), and guard rails that the probe's timing (taken in
this process, however busy it is) cannot fail on its own."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtr

from immunity.analysis import BakeAnalysis
from immunity.config.models import Config
from immunity.domain import Cohort, Observation, Outcome
from immunity.judge.sequential import LatencyJudge
from immunity.signals.probe import LATENCY_BOUNDS_MS as PROBE_BOUNDS
from immunity.signals.probe import NAME as PROBE

LB_BOUNDS = (1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, 1000.0)


def config(*checks: dict[str, Any], bake_max: str = "300s") -> Config:
    return Config.model_validate(
        {
            "app": "shop",
            "hosts": [{"name": f"h{i}", "port": 8000 + i} for i in range(5)],
            "balancer": {"kind": "haproxy"},
            "driver": {"kind": "local"},
            "signals": [{"kind": "haproxy", "name": "lb"}],
            "checks": list(checks),
            "bake": {"min": "20s", "max": bake_max, "interval": "1s"},
            "waves": [1, 2, "100%"],
            "probe": {"rate": 40},
        }
    )


LATENCY = {"name": "latency", "signal": "lb", "kind": "latency", "quantiles": [0.5, 0.9]}


def probs(bounds: tuple[float, ...], median: float, sigma: float = 0.5) -> Any:
    """Bucket probabilities of a lognormal latency (ms) over `bounds` plus the overflow."""
    edges = np.log(np.asarray(bounds) / median) / sigma
    return np.diff(np.concatenate([ndtr(edges), [1.0]]), prepend=0.0)


def quiet_look(
    rng: Any, median_c: float = 250.0, median_b: float = 250.0, rate: int = 40
) -> dict[str, dict[Cohort | str, Observation]]:
    """No customers; the probe's requests to 1 canary and 2 baseline hosts, as timed from a
    busy orchestrator (hundreds of ms)."""
    n_c, n_b = int(rng.poisson(rate)), int(rng.poisson(2 * rate))
    return {
        "lb": {
            Cohort.CANARY: Observation(0, 0, hosts=1),
            Cohort.BASELINE: Observation(0, 0, hosts=2),
        },
        PROBE: {
            Cohort.CANARY: Observation(
                n_c,
                0,
                PROBE_BOUNDS,
                tuple(rng.multinomial(n_c, probs(PROBE_BOUNDS, median_c)).tolist()),
                hosts=1,
            ),
            Cohort.BASELINE: Observation(
                n_b,
                0,
                PROBE_BOUNDS,
                tuple(rng.multinomial(n_b, probs(PROBE_BOUNDS, median_b)).tolist()),
                hosts=2,
            ),
        },
    }


def twin(analysis: BakeAnalysis, name: str) -> Any:
    return next(j for n, _, j in analysis.judges if n == name)


def test_the_probe_twin_never_takes_the_customers_carried_thresholds() -> None:
    """Trial 3, finding 1: customers froze p50/p90 at 5/7 ms through the balancer in wave 1,
    then stopped coming in wave 3. The probe's twin judged its 100-500 ms requests against
    5/7 ms called "(configured)": 100% of both cohorts slow, never decided, a good release
    reverted. Now the twin freezes its own thresholds from its own baseline, names them by
    quantile, and the good release passes on the probe."""
    cfg = config(LATENCY)
    wave3 = BakeAnalysis(cfg, relative=True, carry={"latency": [5.0, 7.0]}, bakes=4, bake_no=3)
    judge = twin(wave3, "latency (probe)")
    assert isinstance(judge, LatencyJudge)
    assert judge.fixed is None and judge.labels == ["p50", "p90"]
    rng = np.random.default_rng(7)
    decision = None
    for t in range(1, 301):
        step = wave3.look(float(t), quiet_look(rng))
        if step.decision is not None:
            decision = step.decision
            break
    assert decision is not None and decision.outcome is Outcome.PASS, decision
    assert all(t is not None and t >= 100 for t in judge.thresholds), judge.thresholds
    assert "(configured)" not in decision.reason
    assert "latency (probe)" in wave3.carry  # the twin's own, for the next waves
    assert wave3.carry["latency"] == [5.0, 7.0]  # the customers' stay theirs


def test_the_twin_carries_its_own_thresholds_to_later_waves() -> None:
    """An earlier bake's twin froze 200/500 ms: the next bake's twin starts from them (named
    p50/p90), and the customer check from the customers' 5/7 ms."""
    cfg = config(LATENCY)
    carry = {"latency": [5.0, 7.0], "latency (probe)": [200.0, 500.0]}
    wave2 = BakeAnalysis(cfg, relative=True, carry=carry, bakes=4, bake_no=2)
    mine, theirs = twin(wave2, "latency (probe)"), twin(wave2, "latency")
    assert (mine.labels, theirs.labels) == (["p50", "p90"], ["p50", "p90"])
    checks = {c.name: c for c in wave2.checks}
    assert checks["latency (probe)"].thresholds_ms == [200.0, 500.0]
    assert checks["latency"].thresholds_ms == [5.0, 7.0]


def test_configured_thresholds_are_the_customers_signals_the_twin_uses_its_quantiles() -> None:
    """`thresholds_ms: [5, 7]` is set for the balancer's timing; the probe's twin compares at
    its own baseline's quantiles (the check's `quantiles`)."""
    cfg = config({**LATENCY, "thresholds_ms": [5.0, 7.0]})
    analysis = BakeAnalysis(cfg, relative=True, bakes=4, bake_no=1)
    assert twin(analysis, "latency").labels == ["configured", "configured"]
    mine = twin(analysis, "latency (probe)")
    assert mine.fixed is None and mine.labels == ["p50", "p90"]


def test_a_threshold_that_separates_nothing_is_said_and_not_called_too_little_traffic() -> None:
    """Trial 3, finding 1's advice: a check that counted thousands of requests, every one
    slower than its threshold on both cohorts, is not "too little traffic": its reason says
    the threshold separates nothing, and `next:` says to fix the threshold, not to raise
    `probe.rate`."""
    from immunity.cli.output import next_step

    cfg = config({**LATENCY, "thresholds_ms": [5.0, 7.0]}, bake_max="60s")
    analysis = BakeAnalysis(cfg, relative=True, bakes=4, bake_no=3)
    rng = np.random.default_rng(3)
    decision = None
    for t in range(1, 120):
        looked = quiet_look(rng)
        # customers at 250 ms too (a configured 5 ms bar below all of them); the probe has
        # the same bar through no fault of its own: here it is the customers' check that
        # cannot decide
        looked["lb"] = looked[PROBE]
        looked[PROBE] = {
            Cohort.CANARY: Observation(0, 0, hosts=1),
            Cohort.BASELINE: Observation(0, 0, hosts=2),
        }
        step = analysis.look(float(t), looked)
        if step.decision is not None:
            decision = step.decision
            break
    assert decision is not None and decision.outcome is Outcome.INCONCLUSIVE, decision
    assert "the threshold separates almost none of the" in decision.reason, decision.reason
    assert "bake longer" not in decision.reason
    step_text = next_step("inconclusive", "c.yaml", reason=decision.reason, probe=cfg.probe)
    assert "thresholds_ms" in step_text and "probe.rate" not in step_text, step_text
    # a threshold set from the baseline that its latencies left: not traffic, not thresholds_ms
    moved = next_step(
        "inconclusive",
        "c.yaml",
        reason="latency (probe): insufficient information at max bake: canary 0.21% vs "
        "baseline 0.21% of requests slower than 75 ms (p90) over 1,430 vs 2,860 requests: the "
        "threshold separates almost none of the 4,290 requests (...): the latency of both "
        "cohorts moved away from it after it was set from the baseline's p90",
        probe=cfg.probe,
    )
    assert "moved" in moved and "probe.rate" not in moved and "thresholds_ms" not in moved
    # too little traffic is still advised as such
    thin = next_step(
        "inconclusive",
        "c.yaml",
        reason="latency: insufficient information at max bake: canary 50% vs baseline 50% of "
        "requests slower than 250 ms (p50) over 30 vs 60 requests, and even a canary like the "
        "baseline would not have been certified",
        probe=cfg.probe,
    )
    assert "raise `probe.rate`" in thin


P99_GUARD = {"name": "p99-guard", "signal": "lb", "kind": "latency_max", "max": 1000}
ERRORS_GUARD = {"name": "error-rate-guard", "signal": "lb", "kind": "error_rate_max", "max": 0.02}


def run(analysis: BakeAnalysis, looks: Any, until: int = 300) -> Any:
    for t in range(1, until + 1):
        step = analysis.look(float(t), looks())
        if step.decision is not None:
            return step.decision
    return None


def test_a_guard_rail_is_not_failed_by_the_probes_own_slowness() -> None:
    """Trial 3, finding 4: on a CPU-starved orchestrator the probe timed p99 at ~1,500 ms
    on both cohorts while customers saw 15-20 ms, over the sandbox's 1 s `latency_max`. The
    probe twin failed the check on that alone (either twin failing fails it). Now it fails
    only when the canary is also worse than the probe's own baseline; here it is not, and
    the good release passes."""
    cfg = config(P99_GUARD)
    rng = np.random.default_rng(11)
    analysis = BakeAnalysis(cfg, relative=True, bakes=4, bake_no=2)
    decision = run(analysis, lambda: quiet_look(rng, 600.0, 600.0))
    assert decision is not None and decision.outcome is Outcome.PASS, decision
    (check,) = decision.checks
    assert check.numbers["probe_canary_quantile_ms"] > 1000  # over the bar as timed here
    assert "no worse than the probe's own baseline at the bar" in check.reason


def test_a_release_that_is_slow_over_the_bar_still_fails_on_the_probe() -> None:
    """The canary's probe requests over the bar and far slower than the baseline's: fail."""
    cfg = config(P99_GUARD)
    rng = np.random.default_rng(12)
    analysis = BakeAnalysis(cfg, relative=True, bakes=4, bake_no=2)
    decision = run(analysis, lambda: quiet_look(rng, 900.0, 250.0))
    assert decision is not None and decision.outcome is Outcome.FAIL, decision
    assert "worse than the probe's own baseline at the bar" in decision.reason


def test_without_a_probe_baseline_the_probe_can_pass_a_guard_rail_but_not_fail_it() -> None:
    """No host left on the old release (guard rails only): a canary under the bar on the
    probe's timing passes (the host's own time is less); one over it cannot be told from a
    slow probe, so it is not failed (inconclusive, never a pass)."""
    cfg = config(P99_GUARD, ERRORS_GUARD)

    def alone(median: float) -> Any:
        rng = np.random.default_rng(13)

        def looks() -> Any:
            got = quiet_look(rng, median, median)
            for signal in got.values():
                signal[Cohort.BASELINE] = Observation(0, 0, hosts=0)
            return got

        return looks

    fast = run(BakeAnalysis(cfg, relative=False, bakes=4, bake_no=4), alone(100.0))
    assert fast is not None and fast.outcome is Outcome.PASS, fast
    slow = run(BakeAnalysis(cfg, relative=False, bakes=4, bake_no=4), alone(600.0))
    assert slow is not None and slow.outcome is Outcome.INCONCLUSIVE, slow
    assert "over the bar on the probe's timing" in slow.reason


def test_a_check_and_its_twin_are_counted_once_as_the_verdicts_count_them() -> None:
    """Trial 3, finding 11: "judging 8 check(s)" then "all 4 check(s) passed"."""
    cfg = config(LATENCY, P99_GUARD)
    analysis = BakeAnalysis(cfg, relative=True, bakes=4, bake_no=1)
    assert len(analysis.judges) == 4
    assert analysis.judging() == "judging 2 check(s) on customer and probe traffic"
    plain = Config.model_validate({**cfg.model_dump(exclude={"probe", "guard"}), "probe": None})
    assert BakeAnalysis(plain, relative=True).judging() == "judging 2 check(s)"
