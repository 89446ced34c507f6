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

So `judge.alpha` (and `judge.alpha_catastrophe`) are the bounds for the whole deployment.
They are not spent evenly: the first wave's bake gets `FIRST_BAKE_SHARE` (half) and the
later bakes (the next waves and the guard) share the rest evenly; with probe traffic, where
a check fails when either its customers' test or its probe twin does, each of the two gets
half of its bake's share. Any fixed weights summing to one keep the union bound (a weighted
Bonferroni split: Holm 1979; Westfall & Krishen 2001); these put the alpha where evidence is
scarcest. The first bake judges the fewest canary hosts (one, typically), so a stricter bar
costs it the most: it is where thin traffic ends undecided. Later bakes watch every host
already switched (more canary traffic) and the guard the whole fleet; their bar grows only
with log(1/alpha), while their evidence grows with their hosts. Three waves and a guard at
the default 1%: the first bake at 0.5% (e-value 200 before the fixed-look split, see
`judge.sequential.FAIL_FINAL_SHARE`), each later one at 0.17% (600); even spending would be
0.25% (400) each. Without a bake number (`bake_no=None`) the split is even (what a caller
that does not know which bake it is gets).
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


FIRST_BAKE_SHARE = 0.5
"""The first wave's bake's share of the deployment's alpha (when there is more than one
bake); the later bakes share the rest evenly."""


def bake_share(bakes: int, bake_no: int | None = None) -> float:
    """The share of the deployment's alpha that bake `bake_no` (1 = the first wave's) of
    `bakes` spends: all of it alone, `FIRST_BAKE_SHARE` for the first of several, the rest
    evenly over the others; 1/bakes each when `bake_no` is None. Shares sum to 1 over bakes
    1..`bakes`."""
    if bakes <= 1:
        return 1.0
    if bake_no is None:
        return 1.0 / bakes
    if bake_no <= 1:
        return FIRST_BAKE_SHARE
    return (1.0 - FIRST_BAKE_SHARE) / (bakes - 1)


def judge_for(config: Config, bakes: int, bake_no: int | None = None) -> JudgeConfig:
    """The judge settings of bake `bake_no` of `bakes`: its `bake_share` of `judge.alpha`,
    shared by the fail tests behind each check (a union bound over both)."""
    return share_of(config.judge, bake_share(bakes, bake_no) / fail_tests_per_check(config))


def share_of(judge: JudgeConfig, share: float) -> JudgeConfig:
    """`judge` with its false-alarm bounds (`alpha`, `alpha_catastrophe`) times `share`."""
    if share >= 1.0:
        return judge
    return judge.model_copy(
        update={"alpha": judge.alpha * share, "alpha_catastrophe": judge.alpha_catastrophe * share}
    )


def spent(judge: JudgeConfig, bakes: int) -> JudgeConfig:
    """The judge settings of one of `bakes` bakes sharing `judge`'s false-alarm bounds."""
    if bakes <= 1:
        return judge
    return judge.model_copy(
        update={"alpha": judge.alpha / bakes, "alpha_catastrophe": judge.alpha_catastrophe / bakes}
    )
