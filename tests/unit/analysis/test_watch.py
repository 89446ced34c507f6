"""The watch: the guard after the last wave, and one false-alarm bound over every bake."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from immunity.analysis import BakeAnalysis
from immunity.analysis.spending import bakes_of, fail_tests_per_check, judge_for, spent
from immunity.config.models import Config, JudgeConfig
from immunity.domain import Cohort, Observation, Outcome


def config(guard: str = "120s", **judge: Any) -> Config:
    return Config.model_validate(
        {
            "app": "shop",
            "hosts": [{"name": f"h{i}", "port": 8000 + i} for i in range(4)],
            "balancer": {"kind": "haproxy"},
            "driver": {"kind": "local"},
            "signals": [{"kind": "haproxy", "name": "lb"}],
            "checks": [{"name": "errors", "signal": "lb", "kind": "errors"}],
            "bake": {"min": "30s", "max": "120s", "interval": "1s"},
            "guard": {"duration": guard},
            "waves": [1, 2, "100%"],
            "judge": judge,
        }
    )


def look(n_c: int, x_c: int, n_b: int, x_b: int) -> dict[str, dict[Cohort | str, Observation]]:
    return {
        "lb": {
            Cohort.CANARY: Observation(n_c, x_c, hosts=1),
            Cohort.BASELINE: Observation(n_b, x_b, hosts=3),
        }
    }


def test_alpha_is_spent_evenly_over_the_waves_and_the_guard() -> None:
    """Three waves and a guard are four bakes, each at a quarter of alpha."""
    cfg = config()
    assert bakes_of(cfg, 3) == 4
    assert bakes_of(config(guard="0s"), 3) == 3
    each = spent(JudgeConfig(alpha=0.01, alpha_catastrophe=0.001), 4)
    assert (each.alpha, each.alpha_catastrophe) == (0.0025, 0.00025)
    assert BakeAnalysis(cfg, relative=True, bakes=4).judge_config.alpha == 0.0025
    assert fail_tests_per_check(cfg) == 1 and judge_for(cfg, 4).alpha == 0.0025


def test_the_guard_is_on_by_default_tied_to_the_bake_and_0_turns_it_off() -> None:
    """Unset, `guard.duration` is half of `bake.max`, at least `bake.min`; the default config's
    watch is four bakes (three waves and the guard), each at a quarter of alpha; 0 is off."""
    base = config().model_dump(exclude={"guard", "bake"})
    default = Config.model_validate(base)
    assert (default.guard.duration, default.guard.holdback) == (150.0, True)
    assert "duration" not in default.guard.model_fields_set
    assert (
        Config.model_validate({**base, "bake": {"min": "20s", "max": "90s"}}).guard.duration == 45
    )
    assert (
        Config.model_validate({**base, "bake": {"min": "50s", "max": "60s"}}).guard.duration == 50
    )
    kept = Config.model_validate({**base, "guard": {"holdback": False}}).guard
    assert (kept.duration, kept.holdback) == (150.0, False)
    assert bakes_of(default, 3) == 4
    assert BakeAnalysis(default, relative=True, bakes=4).judge_config.alpha == 0.0025
    off = Config.model_validate({**base, "guard": {"duration": 0}})
    assert off.guard.duration == 0 and bakes_of(off, 3) == 3


def test_the_guard_watches_until_its_end_and_never_certifies() -> None:
    """A healthy guard passes only when its duration is over, however strong the evidence."""
    cfg = config(guard="60s")
    guard = BakeAnalysis(cfg, relative=True, bakes=4, purpose="guard")
    decided = None
    for t in range(1, 200):
        step = guard.look(float(t), look(200, 0, 600, 0))
        assert step.verdict.outcome is not Outcome.PASS
        if step.decision is not None:
            decided = (t, step.decision)
            break
    assert decided is not None
    assert decided[0] == 60
    assert decided[1].outcome is Outcome.PASS
    assert "guard: watched 60 s after the last wave" in decided[1].reason
    # each check passed as watched (trial 3, finding 9: every check said "continue" under a
    # passing guard, with evidence far past the bar); `--json` and `show` print these
    (errors,) = decided[1].checks
    assert errors.outcome is Outcome.PASS
    assert errors.reason.startswith("watched 60 s, no regression found: canary 5xx 0%")
    assert decided[1].to_dict()["checks"][0]["outcome"] == "pass"


def test_a_fault_that_starts_late_in_the_guard_fails_it() -> None:
    """Healthy for 100 s, then the canary's errors go from 1% to 5%: the guard fails."""
    cfg = config(guard="600s")
    rng = np.random.default_rng(5)
    guard = BakeAnalysis(cfg, relative=True, bakes=4, purpose="guard")
    failed_at = None
    for t in range(1, 600):
        rate = 0.01 if t <= 100 else 0.05
        step = guard.look(
            float(t),
            look(40, int(rng.binomial(40, rate)), 120, int(rng.binomial(120, 0.01))),
        )
        if step.decision is not None:
            assert step.decision.outcome is Outcome.FAIL
            failed_at = t
            break
    assert failed_at is not None and 100 < failed_at < 200


def test_no_evidence_does_not_end_the_guard_but_is_said() -> None:
    """A guard whose signal fails or sees nothing keeps going and says how many looks were blind."""
    cfg = config(guard="40s", consecutive_error_limit=3)
    guard = BakeAnalysis(cfg, relative=True, bakes=4, purpose="guard")
    decision = None
    for t in range(1, 41):
        errored = {"lb": "connection refused"} if t <= 10 else {}
        decision = guard.look(float(t), look(50, 0, 150, 0), errored=errored).decision
        if t < 40:
            assert decision is None, t
    assert decision is not None and decision.outcome is Outcome.PASS
    assert "10 look(s) had no evidence" in decision.reason


def _watch(cfg: Config, rng: np.random.Generator, *, spend: bool) -> bool:
    """One A/A deployment (three wave bakes, then the guard): did any bake fail?"""
    bakes = bakes_of(cfg, 3) if spend else 1
    plans: list[tuple[str, float]] = [("wave", cfg.bake.max)] * 3 + [("guard", cfg.guard.duration)]
    for purpose, length in plans:
        analysis = BakeAnalysis(cfg, relative=True, bakes=bakes, purpose=purpose)  # type: ignore[arg-type]
        rate = rng.uniform(0.01, 0.05)
        for t in range(1, int(length) + 1):
            n_c, n_b = int(rng.poisson(40)), int(rng.poisson(120))
            r = rate * rng.uniform(0.5, 1.5)
            step = analysis.look(
                float(t), look(n_c, int(rng.binomial(n_c, r)), n_b, int(rng.binomial(n_b, r)))
            )
            if step.decision is not None:
                if step.decision.outcome is Outcome.FAIL:
                    return True
                break
    return False


@pytest.mark.slow  # 200 simulated deployments: tens of seconds
def test_false_alarms_over_the_whole_watch_stay_under_alpha(record_property: Any) -> None:
    """Identical cohorts at the null's edge (tolerance 1, alpha 5%), watched by three wave
    bakes and a guard: with alpha spent over the four bakes, at most alpha of the deployments
    ever fail (plus binomial slack)."""
    cfg = config(guard="120s", alpha=0.05, error_tolerance=1.0, error_floor=0)
    runs = 100
    rng = np.random.default_rng(11)
    spent_fails = sum(_watch(cfg, rng, spend=True) for _ in range(runs))
    rng = np.random.default_rng(11)
    unspent_fails = sum(_watch(cfg, rng, spend=False) for _ in range(runs))
    record_property("A/A deployments failed, alpha spent over 4 bakes", f"{spent_fails}/{runs}")
    record_property("A/A deployments failed, each bake at alpha", f"{unspent_fails}/{runs}")
    assert spent_fails <= unspent_fails
    assert spent_fails / runs <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / runs)


def test_a_bake_that_saw_no_traffic_at_all_says_so_when_its_time_is_up() -> None:
    """No requests on either cohort for the whole bake: the final word is inconclusive and
    says first that the signals saw no traffic (a longer bake would not help); with a few
    requests it is the judges' own "insufficient information"."""
    cfg = config()
    quiet = BakeAnalysis(cfg, relative=True, bakes=4)
    thin = BakeAnalysis(cfg, relative=True, bakes=4)
    for t in range(1, 121):
        quiet.look(float(t), look(0, 0, 0, 0))
        thin.look(float(t), look(1 if t % 40 == 0 else 0, 0, 2 if t % 40 == 0 else 0, 0))
    said = quiet.final(120.0)
    assert said.outcome is Outcome.INCONCLUSIVE
    assert said.reason.startswith("the signals saw no traffic on either cohort in 120 s of bake")
    assert "saw no traffic" not in thin.final(120.0).reason


def test_the_first_wave_gets_half_of_alpha_and_the_later_bakes_share_the_rest() -> None:
    """Weighted Bonferroni: shares sum to one over the bakes; the first wave's bake (the
    fewest canary hosts) gets half, the next waves and the guard the rest evenly; one bake
    alone gets all of it; without a bake number the split is even."""
    from immunity.analysis.spending import bake_share

    for bakes in (1, 2, 3, 4, 7):
        assert sum(bake_share(bakes, b) for b in range(1, bakes + 1)) == pytest.approx(1.0)
    assert [bake_share(4, b) for b in (1, 2, 3, 4)] == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])
    assert bake_share(1, 1) == 1.0 and bake_share(4) == 0.25
    cfg = config()  # three waves and a guard: four bakes
    first = BakeAnalysis(cfg, relative=True, bakes=4, bake_no=1)
    later = BakeAnalysis(cfg, relative=True, bakes=4, bake_no=3, purpose="guard")
    assert first.judge_config.alpha == pytest.approx(0.005)
    assert later.judge_config.alpha == pytest.approx(0.01 / 6)
    assert first.judge_config.alpha_catastrophe == pytest.approx(0.0005)
