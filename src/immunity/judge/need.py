"""How much traffic the comparison checks need to decide by `bake.max`.

The probe (`signals.probe`) runs while customers bring the canary less traffic than this; the
figure comes from the checks themselves, not from the probe's own `rate`.

A check decides at the latest at max bake, with its fixed-horizon looks (`sequential`): the
FAIL look rejects "psi <= tolerance" at alpha x its share (errors `ERRORS_FAIL_FINAL_SHARE`;
latency `FAIL_FINAL_SHARE` / K thresholds), the PASS
look rejects "psi >= bad" at beta x `PASS_FINAL_SHARE`. Each is a one-sided test of the log
odds ratio of a "bad" request (a 5xx; slower than a baseline quantile), so the canary
requests it needs follow the usual sample-size formula for a log odds ratio (Wald's variance;
e.g. Fleiss, Levin & Paik, *Statistical Methods for Rates and Proportions*, 3rd ed., §4.2 and
§6.3; Whitehead 1993):

    n_c = ((z_a + z_b) / delta)^2 * (1 / (p (1 - p)) + 1 / (k p (1 - p)))

with p the baseline's share of bad requests (its 5xx rate; 1 - q for quantile q), k the
baseline's requests per canary request (baseline hosts / canary hosts at a fair share), and

* FAIL look: delta = ln(bad / tolerance), z_a = z(1 - alpha_fixed), z_b = z(1 - beta): a
  canary worse by `bad` fails with the configured power 1 - beta;
* PASS look: delta = ln(bad), z_a = z(1 - beta_fixed), z_b = z(1 - beta): a canary like the
  baseline is certified with probability 1 - beta.

The check needs the larger n. (The latency check takes no fixed FAIL look, see
`sequential.LATENCY_FIXED_LOOK`, and fails through its sequential test: sizing it at the
look's level is a lower bound on what it needs.) The errors check can also pass through `error_floor` (an exact
binomial test of "the canary's 5xx rate is below the floor"): with the baseline's rate p
below the floor, its PASS need is the smaller of the two routes. For a quantile threshold
the check needs the most of its thresholds. Per canary host and second: n_c / (canary hosts
x `bake.max`). An estimate for planning traffic, not a guarantee: it assumes the
canary's and the baseline's rates are steady and the canary gets its fair share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.special import ndtri

from immunity.config.models import CheckConfig, JudgeConfig
from immunity.judge.sequential import (
    DEFAULT_QUANTILES,
    ERRORS_FAIL_FINAL_SHARE,
    FAIL_FINAL_SHARE,
    FINAL_FLOOR_SHARE,
    PASS_FINAL_SHARE,
)

MIN_BASELINE_REQUESTS = 200
"""Below this many baseline requests seen, the baseline's 5xx rate is not known well enough
to size the errors check (`need` then says so and returns None for it)."""


@dataclass(frozen=True)
class Need:
    """Requests/s per canary host a check needs to decide by `bake.max`, and why."""

    rate: float
    check: str
    why: str


def _z(p: float) -> float:
    return float(ndtri(1.0 - p))


def log_odds_n(p: float, k: float, delta: float, z: float) -> float:
    """Canary requests for a one-sided test of a log odds ratio `delta` with z_a + z_b = `z`
    when the baseline's share of bad requests is `p` and it serves `k` requests per canary
    request (inf when p is 0 or 1)."""
    v = p * (1.0 - p)
    if v <= 0.0 or delta <= 0.0:
        return math.inf
    return (z / delta) ** 2 * (1.0 / v + 1.0 / (k * v))


def relative_n(
    p: float, k: float, tolerance: float, bad: float, alpha: float, beta_fixed: float, beta: float
) -> float:
    """Canary requests the fixed-horizon FAIL and PASS looks both need (see the module doc);
    `alpha` and `beta_fixed` are the looks' own levels, 1 - `beta` the power wanted."""
    fail = log_odds_n(p, k, math.log(bad / tolerance), _z(alpha) + _z(beta))
    certify = log_odds_n(p, k, math.log(bad), _z(beta_fixed) + _z(beta))
    return max(fail, certify)


def floor_n(p: float, floor: float, beta_floor: float, beta: float) -> float:
    """Canary requests for the exact binomial "5xx rate below `floor`" test at level
    `beta_floor` to certify a canary at rate `p` with probability 1 - `beta` (normal
    approximation; with p = 0, the n at which no error at all certifies)."""
    if not 0.0 < floor < 1.0 or p >= floor:
        return math.inf
    if p <= 0.0:
        return math.log(beta_floor) / math.log1p(-floor)
    num = _z(beta_floor) * math.sqrt(floor * (1 - floor)) + _z(beta) * math.sqrt(p * (1 - p))
    return (num / (floor - p)) ** 2


def check_need(
    check: CheckConfig,
    judge: JudgeConfig,
    *,
    canary_hosts: int,
    baseline_hosts: int,
    bake_max_s: float,
    baseline_requests: int = 0,
    baseline_errors: int = 0,
) -> Need | None:
    """What one `errors` or `latency` check needs (None for other kinds, for configured
    latency thresholds, and for errors until `MIN_BASELINE_REQUESTS` baseline requests tell
    its 5xx rate). `judge` is the bake's own (alpha spent over bakes and probe twins)."""
    if bake_max_s <= 0 or canary_hosts <= 0 or baseline_hosts <= 0:
        return None
    k = baseline_hosts / canary_hosts
    beta_fixed = judge.beta * PASS_FINAL_SHARE
    per_host_s = canary_hosts * bake_max_s
    if check.kind == "errors":
        if baseline_requests < MIN_BASELINE_REQUESTS:
            return None
        p = baseline_errors / baseline_requests
        alpha_fixed = judge.alpha * ERRORS_FAIL_FINAL_SHARE
        floor = judge.error_floor
        floor_on = 0.0 < floor < 1.0
        beta_rel = beta_fixed * (1.0 - FINAL_FLOOR_SHARE) if floor_on else beta_fixed
        power = _z(judge.beta)
        fail = log_odds_n(
            p, k, math.log(judge.error_bad / judge.error_tolerance), _z(alpha_fixed) + power
        )
        certify = min(
            log_odds_n(p, k, math.log(judge.error_bad), _z(beta_rel) + power),
            floor_n(p, floor, beta_fixed * FINAL_FLOOR_SHARE, judge.beta) if floor_on else math.inf,
        )
        # A canary worse by `bad` that stays under the floor passes by design (the floor
        # says such a rate is fine), and with no baseline errors at all the relative test
        # can never fail: then only what certifying needs counts.
        n = (
            certify
            if p <= 0.0 or (floor_on and p * judge.error_bad < floor)
            else max(fail, certify)
        )
        if not math.isfinite(n):
            return None
        return Need(
            n / per_host_s,
            check.name,
            f"{check.name}: baseline 5xx {p:.2%} over {baseline_requests:,} requests, "
            f"{math.ceil(n):,} canary requests by bake.max",
        )
    if check.kind == "latency" and not check.thresholds_ms:
        quantiles = tuple(check.quantiles) or DEFAULT_QUANTILES
        alpha_fixed = judge.alpha * FAIL_FINAL_SHARE / len(quantiles)
        best: tuple[float, float] | None = None
        for q in quantiles:
            n = relative_n(
                1.0 - q,
                k,
                judge.latency_tolerance,
                judge.latency_bad,
                alpha_fixed,
                beta_fixed,
                judge.beta,
            )
            if best is None or n > best[0]:
                best = (n, q)
        assert best is not None
        n, q = best
        return Need(
            n / per_host_s,
            check.name,
            f"{check.name}: p{q * 100:g}, {math.ceil(n):,} canary requests by bake.max",
        )
    return None


def needed_rate(
    checks: Sequence[CheckConfig],
    judge: JudgeConfig,
    *,
    canary_hosts: int,
    baseline_hosts: int,
    bake_max_s: float,
    baseline_requests: int = 0,
    baseline_errors: int = 0,
) -> Need | None:
    """The most any of `checks` needs (see `check_need`), or None when none can say."""
    needs = [
        n
        for c in checks
        if (
            n := check_need(
                c,
                judge,
                canary_hosts=canary_hosts,
                baseline_hosts=baseline_hosts,
                bake_max_s=bake_max_s,
                baseline_requests=baseline_requests,
                baseline_errors=baseline_errors,
            )
        )
        is not None
    ]
    return max(needs, key=lambda n: n.rate, default=None)
