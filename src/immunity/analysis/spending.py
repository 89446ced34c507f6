"""Alpha spending over the whole watch: every wave's bake and the guard share one bound.

Each bake starts fresh judges: its FAIL e-process starts at 1, and by Ville's inequality a
release that is no worse crosses the bar 1/a of that bake with probability at most `a`,
however often it is looked at. A deployment is watched by several bakes (one per wave, the
hosts already switched included, then the guard period), so its false-alarm probability is
at most the sum of the bakes' levels (a union bound). Restarting at a few known times is the
e-detector construction of Shin, Ramdas & Rinaldo (a union over start times); it keeps the
later bakes as sensitive to a fault that starts late as the first one was to a fault present
from the start, which one e-process carried over the whole deployment would not be (its
healthy past would weigh against a late fault).

So `judge.alpha` (and `judge.alpha_catastrophe`) are the bounds for the whole deployment,
spent evenly: each of the N bakes runs at alpha / N (and, with probe traffic, where a check
fails when either its customers' test or its probe twin does, each of the two at half that). Three waves and a guard run each bake
at 0.25 %: a FAIL needs an e-value of 400 instead of 100, that is log(400)/log(100) ≈ 1.3
times the evidence of an unwatched single bake.
"""

from __future__ import annotations

from immunity.config.models import Config, JudgeConfig


def bakes_of(config: Config, waves: int) -> int:
    """How many bakes watch a deployment of `waves` waves: one per wave, plus the guard."""
    return max(1, waves) + (1 if config.guard.duration > 0 else 0)


def fail_tests_per_check(config: Config) -> int:
    """Fail tests behind one check at each look: two with probe traffic (the check on the
    customers' traffic and its "(probe)" twin, either of which fails it), else one."""
    return 2 if getattr(config, "probe", None) is not None else 1


def judge_for(config: Config, bakes: int) -> JudgeConfig:
    """The judge settings of each bake: `judge.alpha` shared by the `bakes` bakes and by the
    fail tests behind each check (a union bound over both)."""
    return spent(config.judge, bakes * fail_tests_per_check(config))


def spent(judge: JudgeConfig, bakes: int) -> JudgeConfig:
    """The judge settings of one of `bakes` bakes sharing `judge`'s false-alarm bounds."""
    if bakes <= 1:
        return judge
    return judge.model_copy(
        update={"alpha": judge.alpha / bakes, "alpha_catastrophe": judge.alpha_catastrophe / bakes}
    )
