"""Anytime-valid sequential comparison of the canary with the concurrent baseline.

Both judges here turn what they compare into *counts of bad requests* per interval and test
the canary's odds ratio psi of a bad request against the baseline's, conditioning on the
interval's pooled count (Fisher's non-central hypergeometric law, see `evidence`), so the
baseline's own rate, however it moves with load, time of day or a shared incident, drops out.

* `ErrorsJudge`: bad = 5xx.
* `LatencyJudge`: bad = slower than a threshold; thresholds are the bucket bounds closest
  to the baseline's p50, p90 and p99, frozen from the baseline's own histogram early in the
  bake (the median CDF of 5 blocks of >= 3 s, so one stalled baseline host does not move
  them; only intervals after the freeze are tested) and re-set when the baseline drifts
  far from them (the same median over its last 5 blocks; `DRIFT_ODDS`; each interval is
  tested at a threshold chosen from earlier baseline data only, see `_follow`), or
  configured bounds, which never move.

Three tests run on every look (after Lindon & Malek's conditional count tests and Shin,
Ramdas & Rinaldo's e-detectors; see the project's research notes on canary statistics, §5):

* FAIL: H0 psi <= tolerance. A mixture over alternatives tolerance x {1.1 .. 30} of capped
  likelihood-ratio products; FAIL when it reaches K/(alpha (1 - share)) (K = number of
  thresholds; share = `ERRORS_FAIL_FINAL_SHARE`, or `FAIL_FINAL_SHARE` for latency, which
  holds it back unspent: `LATENCY_FIXED_LOOK`; errors also leave `ERRORS_POSTPASS_SHARE`
  of alpha to the post-pass detector, latency pays its own from the held-back half). By Ville's inequality P(false FAIL) <= alpha (1 - share) at any
  number of looks, as long as requests within an interval and cohort are conditionally
  independent with a common rate. The rest of alpha pays for one fixed-horizon FAIL look at
  max bake (`final`: the exact conditional test of a common odds ratio), so over both
  P(false FAIL) <= alpha (a union bound, i.e. alpha spending between the two).
* PASS: H_bad psi >= bad. A mixture over alternatives below `bad`; PASS once t >= min bake
  and every metric reaches 1/beta, so P(PASS | a regression of at least `bad`) <= beta.
  Errors also certify through an absolute route, "canary 5xx rate below `error_floor`",
  averaged with the relative one so beta still holds; it is what lets an app with almost no
  errors pass. After a PASS the catastrophe tier and a post-pass detector of "odds >= `bad`"
  (`PostPass`, its own share of alpha) still watch while another check is still baking: a
  fault that starts then fails the wave, while a host effect in the grey zone between
  tolerance and `bad` does not turn into a FAIL just because another check is baking.
* Catastrophe (errors only): two CUSUM e-detectors at alpha_catastrophe, canary-alone
  "5xx rate > 20%" and relative "odds ratio > 5". FAIL when both alarm within 30 s: gross or
  intermittent outages fail within seconds, while a shared dependency outage (baseline
  failing too) or a small relative blip does not.

Guards: an unavailable signal, no requests in a cohort for 30 s, or a canary getting less
than `min_traffic_share` of its fair share (canary hosts / all hosts) of requests over a
recent window with enough traffic make the look `inconclusive`; none of them is ever a pass.
At max bake without a decision the judge takes one fixed-horizon FAIL look, then one PASS
look (see `ErrorsJudge.final`); still undecided, the check passes "not certified" when a
canary identical to the baseline would have been certified with the data seen, and is
inconclusive otherwise.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri

from immunity.config.models import JudgeConfig
from immunity.domain import CheckResult, HostCounts, Observation, ObservationStatus, Outcome
from immunity.judge.evidence import (
    LOG_CAP_PER_SECOND,
    BinomialRatios,
    CappedMixture,
    Cusum,
    FloatArray,
    Mixture,
    OddsRatioGrid,
    histogram_quantile,
    logmeanexp,
    stratified_upper_tail,
    thin,
)
from immunity.judge.spread import MIN_HOSTS, REFRESH_S, HostSpread, spread_tolerance
from immunity.judge.wording import count, e_number, evalue, ms, pct, quantile_ms, score

FAIL_RATIOS = (1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
"""Alternatives of the FAIL mixture, as multiples of the tolerance."""
PASS_RATIOS = (1.5, 2.0, 3.0)
"""Alternatives of the PASS mixture, as divisors of `bad` (plus psi = 1)."""
FLOOR_RATIOS = (0.0, 0.1, 0.3, 0.6)
"""Alternatives of the absolute PASS route, as fractions of the error floor."""
CATASTROPHE_RATE = 0.2
CATASTROPHE_RATES = (0.3, 0.5, 0.8, 0.95)
CATASTROPHE_ODDS = 5.0
CATASTROPHE_ODDS_ALTS = (10.0, 25.0, 100.0, 500.0)
CATASTROPHE_STARTS = 3600
"""Start times covered by the catastrophe tier's union bound (an hour of 1-s looks)."""
CATASTROPHE_WINDOW_S = 30.0
PASS_FINAL_SHARE = 0.5
"""Share of `beta` spent by the fixed-horizon PASS test at max bake (the sequential PASS
test gets the rest): P(PASS | a regression of at least `bad`) <= beta over both."""
FINAL_FLOOR_SHARE = 0.2
"""Share of the fixed-horizon PASS look's beta that the errors check spends on the absolute
route ("the canary's 5xx rate is below `error_floor`", an exact binomial test); the
relative score test gets the rest (none of it when the floor is off)."""
FAIL_FINAL_SHARE = 0.5
"""Share of `alpha` spent by the latency check's fixed-horizon FAIL test at max bake (the
sequential FAIL e-process gets the rest: its bar is K/(alpha (1 - share))). A union bound
(Bonferroni; the same alpha-spending as over bakes, `analysis.spending`): P(false FAIL) <=
alpha (1 - share) + alpha share = alpha."""
LATENCY_FIXED_LOOK = False
"""Whether the latency check takes its fixed-horizon FAIL look (it keeps its share of alpha
for it either way). Off: without the sequential test's per-second and per-block caps, a
few seconds of stalls on the one canary host (timeouts and +200-1000 ms, which the caps make
weak evidence) fail the look on good releases; on the bench's good_noisy@40rps (stalls every
10 minutes per host) it failed 6% of them at max bake, against 1.2% without. The errors
check's look stays: a stall adds a handful of 5xx against hundreds."""
ERRORS_FAIL_FINAL_SHARE = 0.8
"""The same for the errors check, which keeps most of its alpha for the fixed look: 5xx
are rare, so at thin traffic the errors check is the one starved of counts (the fixed look
is what decides it there), while where traffic is heavy its e-value outgrows the higher
bar within seconds (log(1/(0.2 alpha)) against log(1/(0.5 alpha)): about 1.1 times the
evidence at the default alpha spent over a deployment)."""
POSTPASS = True
"""Whether a check that passed keeps a post-pass detector for the rest of its bake (see
`PostPass`). Off: a pass is final within the bake (only the catastrophe tier watches)."""
ERRORS_POSTPASS_SHARE = 0.04
"""Share of the errors check's alpha for its post-pass detector, taken from the sequential
FAIL test's (0.2 -> 0.16 of alpha, bar 625 instead of 500 at alpha 1%; the fixed look keeps
its 0.8): over the three, P(false FAIL) <= alpha (a union bound). Small on purpose: the
detector's bar grows only with log(1 / share), the sequential test's speed with its share
(at 0.075, bar 800, the sandbox's 5%-errors release was caught in 17-21 s instead of 16)."""
LATENCY_POSTPASS_SHARE = 0.25
"""Share of the latency check's alpha for its post-pass detector, taken from the half held
back for the fixed look it does not take (`LATENCY_FIXED_LOOK`): its sequential bar does
not move."""
POSTPASS_STARTS = 3600
"""Start times covered by the post-pass detector's union bound (an hour of 1-s looks)."""
EXACT_MAX_SUPPORT = 4000
"""The fixed-horizon FAIL test is exact (`evidence.stratified_upper_tail`) while the support
of the canary's summed count stays under this; beyond it (heavy traffic, where the normal
approximation is excellent) it is the conditional score test."""
MIN_SCORE_VARIANCE = 5.0
"""The fixed-horizon tests need this much conditional variance of the canary's count (about
40 pooled bad requests at a 1:9 split) for their normal approximation."""
NO_TRAFFIC_S = 30.0
SHARE_MIN_SPAN_S = 10.0
SHARE_MAX_SPAN_S = 120.0
SHARE_MIN_EXPECTED = 30.0
"""The share guard judges the shortest recent window (>= 10 s, <= 120 s) in which the canary
should have received at least this many requests at its fair share."""
DEFAULT_QUANTILES = (0.5, 0.9, 0.99)
THIN_SEED = 20261130
"""Seed of the judges' thinning draws (see `evidence.thin`), fixed so that replaying the same
looks gives the same verdicts."""
SEPARATES_NOTHING = 0.01
SEPARATES_NOTHING_MIN_REQUESTS = 200
SEPARATES_NOTHING_WORDS = "the threshold separates almost none of the"
DOES_NOT_FIT = "does not fit the latencies this signal measures"
MOVED = "moved away from it after it was set"
"""A latency threshold that, at max bake, had at least 200 requests counted and at most 1%
of them on the minority side of it (slower, or not) separated nothing: the reason says so
and why (a configured threshold that does not fit, or latencies that moved after it was set
from the baseline), in these words, which `cli.output.evidence_step` reads; not "bake
longer"."""
FREEZE_BLOCKS = 5
FREEZE_BLOCK_S = 3.0
FREEZE_BLOCK_MIN_REQUESTS = 100
FREEZE_BLOCK_MIN_EXCEEDING = 5
"""A quantile's threshold is frozen from the element-wise median of the baseline's CDF over
5 blocks of >= 3 s and >= max(100, 5 / (1 - q)) requests each: a stall on one baseline host
or a short shared slowdown in one block does not move it."""
DRIFT_ODDS = 3.0
"""A threshold taken from a quantile is re-set when the baseline has drifted away from it:
the median CDF of the baseline's last `FREEZE_BLOCKS` blocks puts the odds of a request
exceeding it more than this factor from the quantile's (1 - q) : q, in either direction.
Faster baseline, few or no events left to test (a p90 frozen at 7 ms on bounds 5, 7, 10 ms
that 1.8% of requests exceed); slower, nearly every request exceeds it, which informs as
little."""
DRIFT_GAIN = 1.25
"""...and another bound is closer to (1 - q) : q by at least this factor in odds (no
flapping between two bounds about as far)."""
LOG_DRIFT_ODDS = math.log(DRIFT_ODDS)
LOG_DRIFT_GAIN = math.log(DRIFT_GAIN)


@dataclass
class _Freezer:
    size: int
    hist: NDArray[np.int64] | None = None
    span: float = 0.0
    cdfs: deque[FloatArray] = field(default_factory=lambda: deque(maxlen=FREEZE_BLOCKS))


def _logit_distance(exceed: FloatArray, quantiles: Sequence[float]) -> FloatArray:
    """|log odds(exceed) - log odds(1 - q)|, shape (quantiles, bounds): how far each bound's
    share of slower requests is from each quantile's 1 - q. A bound that no request (or
    every request) exceeds is as far as can be, except that when no bound is exceeded at all
    the last is the closest."""
    if exceed.max() <= 0.0:
        exceed = np.zeros_like(exceed)
        exceed[-1] = 0.5
    e = np.clip(exceed, 1e-12, 1.0 - 1e-12)
    lo = np.log(e / (1.0 - e))
    q = np.asarray(quantiles, dtype=np.float64)
    return np.asarray(np.abs(lo[None, :] - np.log((1.0 - q) / q)[:, None]), dtype=np.float64)


def _dt(t_s: float, last: float) -> float:
    dt = t_s - last
    return dt if dt > 0 else 1.0


class TrafficGuard:
    """Missing data, silent cohorts and a canary starved of its traffic share."""

    def __init__(self, min_share: float, *, needs_baseline: bool = True) -> None:
        self.min_share = min_share
        self.needs_baseline = needs_baseline
        self.recent: deque[tuple[float, float, int, int, int, int]] = deque()
        self.canary_seen_at = 0.0
        self.baseline_seen_at = 0.0
        self.baseline_while_canary_silent = 0

    def check(
        self, t_s: float, dt: float, canary: Observation, baseline: Observation
    ) -> str | None:
        """The reason this look cannot be judged, or None. Unavailable data is not recorded.

        Three different reasons, never confused: the signal could not give evidence (failed,
        no data, or an answer rejected as partial/stale/implausible), the signal sees no
        traffic on either cohort, and the canary gets too little of the traffic.
        """
        for who, obs in (("canary", canary), ("baseline", baseline)):
            if obs.available or (who == "baseline" and not self.needs_baseline):
                continue
            detail = obs.detail or "no detail"
            if obs.status is ObservationStatus.FAILED:
                return f"the signal failed for the {who} at {t_s:.0f} s: {detail}"
            if obs.status is ObservationStatus.REJECTED:
                return f"the signal's answer for the {who} is not evidence at {t_s:.0f} s: {detail}"
            return f"the signal has no data for the {who} at {t_s:.0f} s: {detail}"
        if canary.requests > 0:
            self.canary_seen_at = t_s
        if baseline.requests > 0:
            self.baseline_seen_at = t_s
        if canary.requests == 0:
            self.baseline_while_canary_silent += baseline.requests
        else:
            self.baseline_while_canary_silent = 0
        canary_silent = t_s - self.canary_seen_at
        baseline_silent = t_s - self.baseline_seen_at
        if canary_silent >= NO_TRAFFIC_S and (
            not self.needs_baseline or baseline_silent >= NO_TRAFFIC_S
        ):
            quiet = min(canary_silent, baseline_silent) if self.needs_baseline else canary_silent
            either = " on either cohort" if self.needs_baseline else " on the canary"
            return (
                f"the signal sees no traffic{either} for {quiet:.0f} s (no customer traffic, "
                "or the signal cannot see it)"
            )
        if canary_silent >= NO_TRAFFIC_S:
            return (
                f"the canary gets too little of the traffic: none of the "
                f"{count(self.baseline_while_canary_silent)} requests of the last "
                f"{canary_silent:.0f} s (the baseline served them all)"
            )
        if self.needs_baseline and baseline_silent >= NO_TRAFFIC_S:
            return (
                f"the baseline gets none of the traffic for {baseline_silent:.0f} s while the "
                "canary serves: nothing to compare the canary with"
            )
        if not self.needs_baseline:
            return None
        self.recent.append(
            (t_s, dt, canary.requests, baseline.requests, canary.hosts, baseline.hosts)
        )
        while self.recent and self.recent[0][0] <= t_s - SHARE_MAX_SPAN_S:
            self.recent.popleft()
        return self._share(t_s)

    def _share(self, t_s: float) -> str | None:
        span = expected = 0.0
        got = total = 0
        for _, dt, n_c, n_b, h_c, h_b in reversed(self.recent):
            if h_c <= 0 or h_b <= 0:
                return None  # the source does not say how many hosts: no fair share to compare
            span += dt
            got += n_c
            total += n_c + n_b
            expected += (n_c + n_b) * h_c / (h_c + h_b)
            if span >= SHARE_MIN_SPAN_S and expected >= SHARE_MIN_EXPECTED:
                break
        else:
            return None
        if got < self.min_share * expected:
            return (
                f"the canary gets too little of the traffic: {pct(got / total)} of "
                f"{count(total)} requests over the last "
                f"{span:.0f} s against a fair share of {pct(expected / total)} "
                f"(below {self.min_share:.0%} of it)"
            )
        return None


class RelativeEvidence:
    """FAIL, PASS and (optionally) catastrophe evidence on K count metrics at once, plus the
    running sums of the fixed-horizon PASS score test (see `z_pass`)."""

    def __init__(
        self,
        k: int,
        tolerance: float,
        bad: float,
        *,
        catastrophe_alpha: float | None = None,
    ) -> None:
        self.k = k
        self.tolerance, self.bad = tolerance, bad
        self.tolerances: FloatArray = np.full(k, tolerance)
        """Each metric's tolerance now: `tolerance`, or wider on a fleet whose baseline hosts
        spread more (`set_tolerances`, `judge.spread`)."""
        fail_alts = [tolerance * r for r in FAIL_RATIOS]
        pass_alts = sorted({bad / q for q in PASS_RATIOS} | ({1.0} if bad > 1.0 else set()))
        groups: list[tuple[Sequence[float], float]] = [(fail_alts, tolerance), (pass_alts, bad)]
        if catastrophe_alpha is not None:
            groups.append((CATASTROPHE_ODDS_ALTS, CATASTROPHE_ODDS))
        self.grid = OddsRatioGrid(groups, scaled=0)
        self.fail = CappedMixture(k, len(fail_alts))
        self.passing = Mixture(k, len(pass_alts))
        self.identical = Mixture(k, len(pass_alts))
        self.cusum = (
            Cusum(len(CATASTROPHE_ODDS_ALTS), catastrophe_alpha, CATASTROPHE_STARTS)
            if catastrophe_alpha is not None
            else None
        )
        self.cusum_alarm_at: float | None = None
        self.fail_alts = fail_alts
        self.last_fail_llr: FloatArray | None = None
        """The last interval's log-likelihood ratios of the FAIL alternatives against the
        tolerance, shape (K, J), or None when it carried no information."""
        self.log_fail: FloatArray = np.zeros(k)
        self.log_pass: FloatArray = np.zeros(k)
        self._bad = self.grid.null_of(1)
        # Fixed-horizon score-test sums: observed canary count, its conditional mean and
        # variance at `bad`, and an identical canary's mean.
        self.x = np.zeros(k)
        self.mean_bad = np.zeros(k)
        self.var_bad = np.zeros(k)
        self.mean_identical = np.zeros(k)
        # Fixed-horizon FAIL test at `tolerance`: the score sums, and the strata (n_c, n_b,
        # events per metric) for the exact test while their summed support stays small.
        self._tol = self.grid.null_of(0)
        self.mean_tol = np.zeros(k)
        self.var_tol = np.zeros(k)
        self.strata: list[tuple[int, int, tuple[int, ...]]] | None = []
        self.shifts: list[FloatArray] = []
        """Per stratum, each metric's log(tolerance / `tolerance`) it was tested at."""
        self.support = [0] * k

    def set_tolerances(self, tolerances: FloatArray) -> None:
        """Test the next intervals at these tolerances, one per metric (>= `tolerance`):
        the FAIL alternatives and the fixed look's null move with them. Call it before
        `add`, with what was known before the interval (a predictable choice)."""
        tol = np.maximum(np.asarray(tolerances, dtype=np.float64), self.tolerance)
        if np.array_equal(tol, self.tolerances):
            return
        self.tolerances = tol
        self.grid.shift(np.log(tol / self.tolerance))

    def widened(self) -> bool:
        """Whether any metric is tested at more than the configured tolerance now."""
        return bool((self.tolerances > self.tolerance * (1.0 + 1e-9)).any())

    def add(
        self,
        t_s: float,
        dt: float,
        n_c: int,
        x_c: Sequence[int],
        n_b: int,
        x_b: Sequence[int],
    ) -> None:
        got = self.grid.llr(n_c, n_b, x_c, x_b)
        self.last_fail_llr = None if got is None else got[0][0]
        if got is None:
            self.fail.add(t_s, dt, self.fail.zero)
        else:
            observed, identical = got
            self.fail.add(t_s, dt, observed[0])
            self.passing.add(observed[1])
            self.identical.add(identical[1])
            g = self.grid
            self.x += np.asarray(x_c, dtype=np.float64)
            self.mean_bad += g.mean[:, self._bad]
            self.var_bad += g.var[:, self._bad]
            events = np.asarray(x_c, dtype=np.float64) + np.asarray(x_b, dtype=np.float64)
            self.mean_identical += events * (n_c / (n_c + n_b))
            self.mean_tol += g.mean[:, self._tol]
            self.var_tol += g.var[:, self._tol]
            if self.strata is not None:
                e = tuple(int(c) + int(b) for c, b in zip(x_c, x_b, strict=True))
                support = self.support
                for i, ei in enumerate(e):
                    support[i] += min(n_c, ei) - max(0, ei - n_b)
                if min(support) > EXACT_MAX_SUPPORT:
                    self.strata = None  # every metric is on the normal approximation now
                elif any(e):
                    self.strata.append((n_c, n_b, e))
                    self.shifts.append(np.log(self.tolerances / self.tolerance))
        if got is not None and self.cusum is not None and self.cusum.add(got[0][2][0]):
            self.cusum_alarm_at = t_s
        self.log_fail = self.fail.log_e()
        self.log_pass = self.passing.log_e()

    def z_pass(self, identical: bool = False) -> FloatArray:
        """Score statistic of H_bad psi >= bad (very negative = certified no worse than
        `bad`); with `identical`, what a canary like the baseline would have shown."""
        x = self.mean_identical if identical else self.x
        z = _z(x - self.mean_bad + 0.5, self.var_bad)
        return np.where(np.isneginf(z), np.inf, z)

    def p_fail(self) -> FloatArray:
        """One-sided p-value per metric of H0 psi <= tolerance on all the counts so far, for
        the one fixed-horizon FAIL look at max bake (small = the canary is worse).

        Exact while the metric's summed support is at most `EXACT_MAX_SUPPORT`: the upper
        tail of the canary's summed count under the strata's Fisher non-central
        hypergeometric laws at psi = tolerance (`evidence.stratified_upper_tail`). Beyond it,
        the conditional score test (Mantel-Haenszel under the same laws; normal
        approximation with continuity correction), or 1 without `MIN_SCORE_VARIANCE`.
        Each stratum at the tolerance its interval was tested at (`set_tolerances`).
        """
        out = np.ones(self.k)
        log_tol = math.log(self.tolerance)
        for i in range(self.k):
            if self.strata is not None and int(self.support[i]) <= EXACT_MAX_SUPPORT:
                cells = [(n_c, n_b, e[i]) for n_c, n_b, e in self.strata]
                shifts = [float(d[i]) for d in self.shifts]
                out[i] = stratified_upper_tail(
                    cells, log_tol, round(float(self.x[i])), shifts if any(shifts) else None
                )
            elif self.var_tol[i] >= MIN_SCORE_VARIANCE:
                z = (self.x[i] - self.mean_tol[i] - 0.5) / math.sqrt(float(self.var_tol[i]))
                out[i] = float(ndtr(-z))
        return out


class PostPass:
    """After a check passed, for the rest of its bake: has the canary become worse by `bad`?

    A CUSUM e-detector (Shin, Ramdas & Rinaldo) of H0 "odds ratio <= tolerance" against the
    FAIL alternatives at or above `bad`, on the intervals after the pass only, each
    interval's likelihood ratio capped at `LOG_CAP_PER_SECOND` (a capped ratio keeps its
    mean <= 1 under H0, so one bad second is weak evidence). It alarms at
    log(S J K / alpha): a union bound over `POSTPASS_STARTS` start times and the J K
    (alternative, metric) pairs, so P(false alarm) <= alpha over a bake of up to S looks.
    It starts at the pass (a stopping time), fresh: nothing before the pass counts for or
    against it. A pass is otherwise final: a host effect in the grey zone between tolerance
    and `bad` must persist at `bad` to alarm. Catches a fault that starts after this check
    passed while another check of the wave still bakes.
    """

    def __init__(self, evidence: RelativeEvidence, alpha: float) -> None:
        alts = np.asarray(evidence.fail_alts, dtype=np.float64)
        self.sel = np.flatnonzero(alts >= evidence.bad * (1.0 - 1e-9))
        self.cusum = Cusum(evidence.k * len(self.sel), alpha, POSTPASS_STARTS)

    def add(self, llr: FloatArray) -> bool:
        """One interval after the pass (`RelativeEvidence.last_fail_llr`); True on alarm."""
        return self.cusum.add(np.minimum(llr[:, self.sel], LOG_CAP_PER_SECOND).ravel())


def fixed_fail_share(min_bake_s: float, share: float = FAIL_FINAL_SHARE) -> float:
    """The share of alpha a judge keeps for its fixed-horizon FAIL look: `share`, or none
    for a judge that never certifies (`min_bake_s` infinite: the guard, which ends on a fail
    or when its time is up, never at `bake.max`, so takes no fixed look and runs its
    sequential test at the whole of alpha)."""
    return share if math.isfinite(min_bake_s) else 0.0


def _z(num: FloatArray, var: FloatArray) -> FloatArray:
    ok = var >= MIN_SCORE_VARIANCE
    return np.where(ok, num / np.sqrt(np.where(ok, var, 1.0)), -np.inf)


NO_BASELINE = (
    "no baseline requests yet: a comparison does not pass without its baseline (no data is "
    "never a pass)"
)


def freeze_needs(quantile: float) -> tuple[int, float]:
    """(baseline requests, seconds) at the least before the threshold of `quantile` is set
    from the baseline: `FREEZE_BLOCKS` blocks of >= `FREEZE_BLOCK_S` s and >= max(100,
    5 / (1 - q)) requests each (p50 and p90: 500 requests and 15 s; p99: 2,500)."""
    size = math.ceil(max(FREEZE_BLOCK_MIN_REQUESTS, FREEZE_BLOCK_MIN_EXCEEDING / (1 - quantile)))
    return FREEZE_BLOCKS * size, FREEZE_BLOCKS * FREEZE_BLOCK_S


def no_baseline_at_max(base_requests: int) -> str | None:
    """Why a comparison cannot pass at max bake: no baseline request in the whole bake."""
    if base_requests > 0:
        return None
    return (
        "no baseline requests in the whole bake: nothing to compare the canary with (no host "
        "left on the old release, or the signal does not see it); no data is never a pass"
    )


def tolerance_words(configured: float, tolerance: float) -> str:
    """ "×1.25 odds", or, widened to the baseline hosts' own spread, "×1.41 odds (the
    baseline hosts' own spread; ×1.25 configured)"."""
    if tolerance > configured * (1.0 + 1e-9):
        return f"×{tolerance:.3g} odds (the baseline hosts' own spread; ×{configured:g} configured)"
    return f"×{configured:g} odds"


def baseline_hosts(baseline: Observation) -> Sequence[HostCounts] | None:
    """The baseline's hosts one by one when the source told them apart and they add up to
    the cohort's counts (`Observation.by_host`), else None: no spread is measured."""
    hosts = baseline.by_host
    if len(hosts) < MIN_HOSTS:
        return None
    if sum(h.requests for h in hosts) != baseline.requests:
        return None
    if sum(h.errors for h in hosts) != baseline.errors:
        return None
    return hosts


class ErrorsJudge:
    """Canary 5xx vs baseline 5xx: sequential FAIL / PASS tests plus the catastrophe tier."""

    def __init__(self, name: str, config: JudgeConfig, min_bake_s: float) -> None:
        self.name = name
        self.config = config
        self.min_bake_s = min_bake_s
        share = fixed_fail_share(min_bake_s, ERRORS_FAIL_FINAL_SHARE)
        # a judge that never certifies (the guard) has no post-pass phase to pay for
        self.postpass_alpha = (
            config.alpha * ERRORS_POSTPASS_SHARE if POSTPASS and math.isfinite(min_bake_s) else 0.0
        )
        self.fail_needed = 1.0 / (config.alpha * (1.0 - share) - self.postpass_alpha)
        self.fail_log_threshold = math.log(self.fail_needed)
        self.fail_final_alpha = config.alpha * share
        self.pass_log_threshold = math.log(1.0 / (config.beta * (1.0 - PASS_FINAL_SHARE)))
        self.floor = config.error_floor
        floor_on = 0.0 < self.floor < 1.0
        final_beta = config.beta * PASS_FINAL_SHARE
        self.floor_beta = final_beta * FINAL_FLOOR_SHARE if floor_on else 0.0
        self.pass_z = float(ndtri(1.0 - (final_beta - self.floor_beta)))
        self.relative = RelativeEvidence(
            1, config.error_tolerance, config.error_bad, catastrophe_alpha=config.alpha_catastrophe
        )
        # error_floor 0 switches the absolute route off (then only the relative test certifies).
        self.floor_ratios = (
            BinomialRatios([self.floor * r for r in FLOOR_RATIOS], self.floor)
            if 0.0 < self.floor < 1.0
            else None
        )
        self.floor_pass = Mixture(1, len(FLOOR_RATIOS))
        self.floor_identical = Mixture(1, len(FLOOR_RATIOS))
        self.cat_ratios = BinomialRatios(CATASTROPHE_RATES, CATASTROPHE_RATE)
        self.cat_abs = Cusum(len(CATASTROPHE_RATES), config.alpha_catastrophe, CATASTROPHE_STARTS)
        self.log_fail = 0.0
        self.log_pass = 0.0
        self.cat_abs_alarm_at: float | None = None
        self.guard = TrafficGuard(config.min_traffic_share)
        self.rng = np.random.default_rng(THIN_SEED)  # fixed: a replay of the looks is exact
        self.spread = HostSpread(1)
        self.canary_hosts = 1
        self.tolerance_at = -math.inf
        self.postpass: PostPass | None = None
        self.at_pass = (0, 0, 0, 0, 0.0)  # n_c, x_c, n_b, x_b, t_s when it passed
        self.recent: deque[tuple[float, int, int, int, int]] = deque()
        self.n_c = self.x_c = self.n_b = self.x_b = 0
        self.last_t = 0.0
        self.blocked: str | None = None
        self.failed: CheckResult | None = None
        self.passed: CheckResult | None = None

    # -- evidence ---------------------------------------------------------------------------

    def _add(self, t_s: float, dt: float, canary: Observation, baseline: Observation) -> None:
        n_c, n_b = max(canary.requests, 0), max(baseline.requests, 0)
        x_c = min(max(canary.errors, 0), n_c)
        x_b = min(max(baseline.errors, 0), n_b)
        self.n_c += n_c
        self.x_c += x_c
        self.n_b += n_b
        self.x_b += x_b
        self.recent.append((t_s, n_c, x_c, n_b, x_b))
        while self.recent and self.recent[0][0] <= t_s - CATASTROPHE_WINDOW_S:
            self.recent.popleft()
        # memory and time bounded whatever the counts: a random subset beyond MAX_EXACT
        ok_c, bad_c = thin((n_c - x_c, x_c), self.rng)
        ok_b, bad_b = thin((n_b - x_b, x_b), self.rng)
        # the tolerance from the baseline hosts' spread over the looks before this one
        self._retolerate(t_s)
        self.relative.add(t_s, dt, ok_c + bad_c, (bad_c,), ok_b + bad_b, (bad_b,))
        hosts = baseline_hosts(baseline)
        if hosts is not None:
            self.spread.add([h.requests for h in hosts], np.array([[h.errors] for h in hosts]))
        self.canary_hosts = max(1, canary.hosts)
        if n_c > 0:
            if self.floor_ratios is not None:
                self.floor_pass.add(self.floor_ratios(n_c, x_c)[None, :])
                typical = n_c * x_b / n_b if n_b > 0 else 0.0
                self.floor_identical.add(self.floor_ratios(n_c, typical)[None, :])
            if self.cat_abs.add(self.cat_ratios(n_c, x_c)):
                self.cat_abs_alarm_at = t_s
        self.log_fail = float(self.relative.log_fail[0])
        self.log_pass = self._either(self.relative.log_pass[0], self.floor_pass.log_e()[0])

    def _spread_tolerances(self) -> FloatArray:
        c = self.config
        return spread_tolerance(
            c.error_tolerance,
            c.error_bad,
            self.spread.tau(),
            self.canary_hosts,
            self.spread.hosts(),
        )

    def _retolerate(self, t_s: float) -> None:
        """Before an interval's evidence: its tolerance, from the looks before it (once per
        `REFRESH_S` of bake time)."""
        if self.spread.n is not None and t_s >= self.tolerance_at + REFRESH_S:
            self.tolerance_at = t_s
            self.relative.set_tolerances(self._spread_tolerances())

    def _tolerance(self) -> str:
        return tolerance_words(self.config.error_tolerance, float(self.relative.tolerances[0]))

    def _either(self, relative: float, floor: float) -> float:
        """The mean of the relative and the absolute pass e-values (the relative one alone
        when the floor is off): an e-process under "worse by `bad` and above the floor"."""
        if self.floor_ratios is None:
            return float(relative)
        return float(logmeanexp(np.array([relative, floor])))

    def _log_e_fail(self) -> float:
        return self.log_fail

    def _log_e_pass(self) -> float:
        return self.log_pass

    def _log_e_identical(self) -> float:
        return self._either(self.relative.identical.log_e()[0], self.floor_identical.log_e()[0])

    def _catastrophe(self, t_s: float) -> bool:
        a, b = self.cat_abs_alarm_at, self.relative.cusum_alarm_at
        return (
            a is not None
            and b is not None
            and t_s - a < CATASTROPHE_WINDOW_S
            and t_s - b < CATASTROPHE_WINDOW_S
        )

    # -- words ------------------------------------------------------------------------------

    def _numbers(self, t_s: float) -> dict[str, float]:
        cusum = self.relative.cusum
        return {
            "t_s": float(t_s),
            "canary_requests": float(self.n_c),
            "canary_errors": float(self.x_c),
            "baseline_requests": float(self.n_b),
            "baseline_errors": float(self.x_b),
            "canary_rate": self.x_c / self.n_c if self.n_c else 0.0,
            "baseline_rate": self.x_b / self.n_b if self.n_b else 0.0,
            "e_fail": e_number(self._log_e_fail()),
            "e_fail_needed": self.fail_needed,
            "e_pass": e_number(self._log_e_pass()),
            "e_pass_needed": 1.0 / (self.config.beta * (1.0 - PASS_FINAL_SHARE)),
            "catastrophe_abs_log_e": self.cat_abs.level,
            "catastrophe_rel_log_e": cusum.level if cusum else 0.0,
            "catastrophe_log_e_needed": self.cat_abs.threshold,
            **(
                {"tolerance": float(self.relative.tolerances[0])} if self.relative.widened() else {}
            ),
        }

    def _rates(self) -> str:
        return (
            f"canary 5xx {pct(self.x_c / self.n_c if self.n_c else 0.0)} vs baseline "
            f"{pct(self.x_b / self.n_b if self.n_b else 0.0)} over {count(self.n_c)} vs "
            f"{count(self.n_b)} requests"
        )

    def _result(self, outcome: Outcome, reason: str, t_s: float) -> CheckResult:
        return CheckResult(self.name, outcome, reason, self._numbers(t_s))

    # -- the Judge protocol -----------------------------------------------------------------

    def look(self, t_s: float, canary: Observation, baseline: Observation) -> CheckResult:
        dt = _dt(t_s, self.last_t)
        self.last_t = t_s
        if self.failed is not None:
            return self.failed
        self.blocked = self.guard.check(t_s, dt, canary, baseline)
        fed = canary.available and baseline.available
        if fed:
            self._add(t_s, dt, canary, baseline)
        if self._catastrophe(t_s):
            n_c = sum(r[1] for r in self.recent)
            x_c = sum(r[2] for r in self.recent)
            n_b = sum(r[3] for r in self.recent)
            x_b = sum(r[4] for r in self.recent)
            self.failed = self._result(
                Outcome.FAIL,
                f"catastrophic failure: canary 5xx {pct(x_c / n_c if n_c else 0.0)} vs baseline "
                f"{pct(x_b / n_b if n_b else 0.0)} over the last {min(t_s, CATASTROPHE_WINDOW_S):.0f} s "
                f"({count(n_c)} vs {count(n_b)} requests; CUSUM log e-values {self.cat_abs.level:.1f} absolute and "
                f"{self.relative.cusum.level if self.relative.cusum else 0:.1f} relative "
                f"≥ {self.cat_abs.threshold:.1f})",
                t_s,
            )
            return self.failed
        if self.passed is not None:
            # Certified: the catastrophe tier and the post-pass detector still watch (a
            # grey-zone host effect that keeps accumulating is not a regression of the
            # release; one at `bad` that starts after the pass is; later bakes and the
            # guard, with fresh judges, watch for faults that start late too).
            llr = self.relative.last_fail_llr
            if fed and self.postpass is not None and llr is not None and self.postpass.add(llr):
                n_c, x_c, n_b, x_b, at = self.at_pass
                n_c, x_c, n_b, x_b = self.n_c - n_c, self.x_c - x_c, self.n_b - n_b, self.x_b - x_b
                self.failed = self._result(
                    Outcome.FAIL,
                    f"canary 5xx {pct(x_c / n_c if n_c else 0.0)} vs baseline "
                    f"{pct(x_b / n_b if n_b else 0.0)} over {count(n_c)} vs {count(n_b)} "
                    f"requests since the check passed at {at:.0f} s (post-pass detector: odds "
                    f"×{self.config.error_bad:g} or more, log e-value "
                    f"{self.postpass.cusum.level:.1f} ≥ {self.postpass.cusum.threshold:.1f})",
                    t_s,
                )
                return self.failed
            if self.blocked is not None:
                return self._result(Outcome.INCONCLUSIVE, self.blocked, t_s)
            return self.passed
        log_fail = self._log_e_fail()
        if log_fail >= self.fail_log_threshold:
            self.failed = self._result(
                Outcome.FAIL,
                f"{self._rates()} (e-value {evalue(log_fail)} ≥ "
                f"{self.fail_needed:g}, tolerance {self._tolerance()})",
                t_s,
            )
            return self.failed
        if self.blocked is not None:
            return self._result(Outcome.INCONCLUSIVE, self.blocked, t_s)
        log_pass = self._log_e_pass()
        if t_s >= self.min_bake_s and log_pass >= self.pass_log_threshold:
            if self.n_b == 0:  # the floor route alone: no comparison was made
                return self._result(Outcome.CONTINUE, f"{self._rates()}: {NO_BASELINE}", t_s)
            return self._pass(
                f"{self._rates()}: no regression of ×{self.config.error_bad:g} odds or more "
                f"(pass e-value {evalue(log_pass)} ≥ {math.exp(self.pass_log_threshold):g}) "
                f"after {t_s:.0f} s",
                t_s,
            )
        return self._result(
            Outcome.CONTINUE,
            f"{self._rates()} (fail e-value {evalue(log_fail)} of "
            f"{self.fail_needed:g}, pass e-value {evalue(log_pass)} of "
            f"{math.exp(self.pass_log_threshold):g})",
            t_s,
        )

    def _pass(self, reason: str, t_s: float) -> CheckResult:
        self.passed = self._result(Outcome.PASS, reason, t_s)
        if self.postpass_alpha > 0:
            self.postpass = PostPass(self.relative, self.postpass_alpha)
            self.at_pass = (self.n_c, self.x_c, self.n_b, self.x_b, t_s)
        return self.passed

    def final(self, t_s: float) -> CheckResult:
        """The verdict at max bake: one fixed-horizon FAIL look, the sequential PASS test,
        then one fixed-horizon PASS look. Call it once, when `bake.max` is reached (a fixed
        time, not one chosen by the data).

        The FAIL look is the exact conditional test of "psi <= tolerance" on all the bake's
        counts (the canary's summed 5xx given each interval's margins, a convolution of
        Fisher non-central hypergeometric laws at psi = tolerance; Cox 1970, Mehta, Patel &
        Gray 1985; the score test's normal approximation beyond `EXACT_MAX_SUPPORT`). It
        fails when its one-sided p-value is at most alpha x `ERRORS_FAIL_FINAL_SHARE`; the
        sequential e-process runs at the rest of alpha, so P(false FAIL) <= alpha over both
        (a union bound: alpha spending between the anytime-valid test and one fixed look,
        as beta is split for the PASS look). It is what thin traffic lacks: at 8 requests/s
        a canary with x3 the errors shows about 15 of them in 10 minutes, short of the
        e-value bar but a clear tail event for one test at a known time.

        The PASS look is a conditional score test on all the bake's counts (the Mantel-Haenszel
        statistic under Fisher's non-central hypergeometric law at psi = `bad`, normal
        approximation with continuity correction, needing `MIN_SCORE_VARIANCE`): PASS
        (certified) when it rejects "worse by `bad` or more" at beta x `PASS_FINAL_SHARE`.
        A single look at a fixed time needs far less evidence than an anytime-valid test
        (z 2 against an e-value of 40), which is what thin traffic lacks. The errors check also
        certifies at that look through an exact binomial test of "5xx rate below
        `error_floor`" (its share `FINAL_FLOOR_SHARE` of the look's beta). Otherwise pass not
        certified when a canary like the baseline would have been certified, else
        inconclusive.
        """
        if self.failed is not None:
            return self.failed
        if self.passed is not None:
            return self.passed
        if self.blocked is not None:
            return self._result(Outcome.INCONCLUSIVE, self.blocked, t_s)
        rel = self.relative
        p_fail = float(rel.p_fail()[0]) if self.fail_final_alpha > 0 else 1.0
        if p_fail <= self.fail_final_alpha:
            self.failed = self._result(
                Outcome.FAIL,
                f"{self._rates()} at max bake (one-sided p {p_fail:.2g} ≤ "
                f"{self.fail_final_alpha:.2g} that the canary is no worse than "
                f"{self._tolerance()}: exact conditional test on the whole "
                f"bake; fail e-value {evalue(self._log_e_fail())} of "
                f"{self.fail_needed:g})",
                t_s,
            )
            return self.failed
        empty = no_baseline_at_max(self.n_b)
        if empty is not None:
            return self._result(Outcome.INCONCLUSIVE, f"{self._rates()}: {empty}", t_s)
        log_pass = self._log_e_pass()
        if log_pass >= self.pass_log_threshold:
            return self._pass(
                f"{self._rates()}: no regression of ×{self.config.error_bad:g} odds or more "
                f"(pass e-value {evalue(log_pass)} ≥ {math.exp(self.pass_log_threshold):g})",
                t_s,
            )
        z_pass = float(rel.z_pass()[0])
        if z_pass <= -self.pass_z:
            return self._pass(
                f"{self._rates()}: no regression of ×{self.config.error_bad:g} odds or more "
                f"at max bake (score z {z_pass:.2f} ≤ -{self.pass_z:.2f}, one-sided "
                f"{self.config.beta * PASS_FINAL_SHARE - self.floor_beta:.1%})",
                t_s,
            )
        if self.floor_beta > 0.0 and self.n_c > 0:
            # imported here: scipy.stats takes ~1 s of CPU to import, paid otherwise by every
            # CLI command that loads the engine (status, history, rollback...)
            from scipy.stats import binom

            p_floor = float(binom.cdf(self.x_c, self.n_c, self.floor))
            if p_floor <= self.floor_beta:
                return self._pass(
                    f"{self._rates()}: canary 5xx rate below {pct(self.floor)} at max bake "
                    f"(exact binomial p {p_floor:.2g} ≤ {self.floor_beta:.2g})",
                    t_s,
                )
        z_ideal = float(rel.z_pass(identical=True)[0])
        log_ideal = self._log_e_identical()
        if z_ideal <= -self.pass_z or log_ideal >= self.pass_log_threshold:
            return self._pass(
                f"max bake reached, passed but not certified: {self._rates()} (score z "
                f"{z_pass:.2f} > -{self.pass_z:.2f}, where a canary like the baseline would "
                f"have reached {z_ideal:.2f})",
                t_s,
            )
        return self._result(
            Outcome.INCONCLUSIVE,
            f"insufficient information at max bake: {self._rates()}, and even a canary like "
            f"the baseline would not have been certified ({score(z_ideal, '>', -self.pass_z)}; "
            "bake longer or use a bigger wave)",
            t_s,
        )


def _snap_up(bounds: Sequence[float], value: float) -> float | None:
    """The smallest bucket bound >= value, or None when value is above them all."""
    for b in bounds:
        if b >= value:
            return float(b)
    return None


class LatencyJudge:
    """Canary vs baseline share of requests slower than thresholds, as count tests."""

    def __init__(
        self,
        name: str,
        config: JudgeConfig,
        min_bake_s: float,
        *,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        thresholds_ms: Sequence[float] | None = None,
        labels: Sequence[str] | None = None,
        carried_ms: Sequence[float] | None = None,
    ) -> None:
        """`labels` name the thresholds in reasons (one per threshold): by default the
        quantiles' ("p90"), or "configured" for `thresholds_ms`.

        `thresholds_ms` are configured bounds, kept for the whole bake. `carried_ms` (one per
        quantile) are the quantiles' thresholds as an earlier bake of the deployment left
        them: used from the first look, and re-set like frozen ones when the baseline drifts
        away from them (see `DRIFT_ODDS`)."""
        self.name = name
        self.config = config
        self.min_bake_s = min_bake_s
        self.fixed = list(thresholds_ms) if thresholds_ms else None
        self.carried = (
            [float(t) for t in carried_ms]
            if self.fixed is None and carried_ms and len(carried_ms) == len(quantiles)
            else None
        )
        self.quantiles = list(quantiles) if self.fixed is None else [math.nan] * len(self.fixed)
        self.k = len(self.quantiles)
        if self.k == 0:
            raise ValueError("a latency check needs at least one quantile or threshold")
        share = fixed_fail_share(min_bake_s)
        self.fail_needed = self.k / (config.alpha * (1.0 - share))
        self.fail_log_threshold = math.log(self.fail_needed)
        # The latency check takes no fixed-horizon FAIL look: with no per-second cap, one
        # canary host's stalls (seconds of slow requests and timeouts) fail it on good
        # releases (see LATENCY_FIXED_LOOK). Its share is held back, unspent (conservative).
        self.fail_final_alpha = config.alpha * share / self.k if LATENCY_FIXED_LOOK else 0.0
        # the post-pass detector is paid from the held-back half (none for the guard)
        self.postpass_alpha = (
            config.alpha * LATENCY_POSTPASS_SHARE
            if POSTPASS and not LATENCY_FIXED_LOOK and math.isfinite(min_bake_s)
            else 0.0
        )
        self.postpass: PostPass | None = None
        self.passed_at = 0.0
        self.pass_log_threshold = math.log(1.0 / (config.beta * (1.0 - PASS_FINAL_SHARE)))
        self.pass_z = float(ndtri(1.0 - config.beta * PASS_FINAL_SHARE))
        self.evidence = RelativeEvidence(self.k, config.latency_tolerance, config.latency_bad)
        self.guard = TrafficGuard(config.min_traffic_share)
        self.rng = np.random.default_rng(THIN_SEED)
        self.spread = HostSpread(self.k)
        self.canary_hosts = 1
        self.tolerance_at = -math.inf
        self.thresholds: list[float | None] = [None] * self.k
        self.active = np.zeros(self.k, dtype=bool)
        self.labels = (
            list(labels)
            if labels is not None and len(labels) == self.k
            else [f"p{q * 100:g}" if self.fixed is None else "configured" for q in self.quantiles]
        )
        self.freezers = [self._freezer(q) for q in self.quantiles]
        # thresholds taken from the baseline's quantiles follow it when it drifts: one block
        # series for all of them, blocks as large as the most demanding quantile's
        self.tracking = self.fixed is None
        self.drift = _Freezer(size=max(f.size for f in self.freezers))
        self.since: list[float | None] = [None] * self.k
        """When each threshold was last re-set (None: as frozen or carried)."""
        self.moved: list[str] = [""] * self.k
        self.base_total = 0
        self.base_seen = 0  # baseline requests of this bake (thresholds may be carried in)
        self.bounds: tuple[float, ...] = ()
        self.index: NDArray[np.intp] = np.zeros(self.k, dtype=np.intp)
        self.n_c = np.zeros(self.k, dtype=np.int64)
        self.x_c = np.zeros(self.k, dtype=np.int64)
        self.n_b = np.zeros(self.k, dtype=np.int64)
        self.x_b = np.zeros(self.k, dtype=np.int64)
        # each cohort's histogram over the judged looks, for the quantiles named in reasons
        self.hist_c: NDArray[np.int64] | None = None
        self.hist_b: NDArray[np.int64] | None = None
        self.last_t = 0.0
        self.blocked: str | None = None
        self.failed: CheckResult | None = None
        self.passed: CheckResult | None = None

    # -- thresholds -------------------------------------------------------------------------

    def _set_bounds(self, bounds: tuple[float, ...]) -> str | None:
        if bounds == self.bounds:
            return None
        if any(t is not None and t not in bounds for t in self.thresholds):
            return "the latency histogram's bucket bounds changed during the bake"
        self.bounds = bounds
        self.freezers = [self._freezer(q) for q in self.quantiles]
        self.drift = _Freezer(size=max(f.size for f in self.freezers))
        for i, t in enumerate(self.thresholds):
            if t is not None:
                self.index[i] = bounds.index(t)
        if self.fixed is not None:
            for i, want in enumerate(self.fixed):
                snapped = _snap_up(bounds, want)
                if snapped is None:
                    return (
                        f"latency threshold {ms(want)} is above the histogram's last bound "
                        f"{ms(bounds[-1])}"
                    )
                self.thresholds[i] = snapped
                self.index[i] = bounds.index(snapped)
                self.active[i] = True
        if self.carried is not None and not self.active.any():
            for i, want in enumerate(self.carried):
                snapped = _snap_up(bounds, want)
                if snapped is not None:  # else frozen afresh from this bake's baseline
                    self.thresholds[i] = snapped
                    self.index[i] = bounds.index(snapped)
                    self.active[i] = True
        return None

    @staticmethod
    def _freezer(q: float) -> _Freezer:
        size = FREEZE_BLOCK_MIN_REQUESTS if math.isnan(q) else FREEZE_BLOCK_MIN_EXCEEDING / (1 - q)
        return _Freezer(size=math.ceil(max(FREEZE_BLOCK_MIN_REQUESTS, size)))

    @staticmethod
    def _block(f: _Freezer, hist: NDArray[np.int64], dt: float) -> FloatArray | None:
        """Add one look's baseline histogram to `f`'s block. When that completes a block and
        `FREEZE_BLOCKS` are there: each bound's share of slower requests in the median CDF
        of the last `FREEZE_BLOCKS` blocks; else None."""
        if f.hist is None:
            f.hist = hist.copy()
        else:
            f.hist += hist
        f.span += dt
        if f.span < FREEZE_BLOCK_S:
            return None
        total = int(f.hist.sum())
        if total < f.size:
            return None
        f.cdfs.append(np.cumsum(f.hist[:-1]) / total)
        f.hist, f.span = None, 0.0
        if len(f.cdfs) < FREEZE_BLOCKS:
            return None
        return np.asarray(1.0 - np.median(np.stack(f.cdfs), axis=0), dtype=np.float64)

    def _freeze(self, t_s: float, hist: NDArray[np.int64], dt: float) -> None:
        """Fix thresholds for quantiles that now have enough baseline blocks behind them, and
        re-set those the baseline has drifted away from (`_follow`)."""
        self.base_total += int(hist.sum())
        for i, q in enumerate(self.quantiles):
            if self.thresholds[i] is None:
                exceed = self._block(self.freezers[i], hist, dt)
                if exceed is not None:
                    self._set_threshold(i, int(np.argmin(_logit_distance(exceed, [q])[0])))
        if self.tracking and self.active.any():
            exceed = self._block(self.drift, hist, dt)
            if exceed is not None:
                self._follow(t_s, exceed)

    def _follow(self, t_s: float, exceed: FloatArray) -> None:
        """Re-set each threshold the baseline has drifted away from (`DRIFT_ODDS`) to the
        bound now closest to its quantile (`DRIFT_GAIN`).

        Valid: the choice reads only the baseline's blocks up to this look and acts from the
        next interval, so every interval is tested at a threshold fixed before its data (a
        predictable choice). Under "the canary is no worse than tolerated at any threshold",
        each interval's capped likelihood ratio keeps its conditional mean <= 1 whichever
        threshold it uses, so the e-processes stay nonnegative supermartingales and Ville's
        bound holds over the whole bake; the same holds for the PASS side at `bad`. The
        fixed-horizon looks are stratified by interval, each stratum with its own threshold.
        """
        dist = _logit_distance(exceed, self.quantiles)
        best = np.argmin(dist, axis=1)
        for i in np.flatnonzero(self.active):
            cur, j = int(self.index[i]), int(best[i])
            d = float(dist[i, cur])
            if j == cur or d < LOG_DRIFT_ODDS or d - float(dist[i, j]) < LOG_DRIFT_GAIN:
                continue
            share = float(exceed[cur])
            self._set_threshold(int(i), j)
            self.since[i] = t_s
            self.moved[i] = (
                f"re-set at {t_s:.0f} s from {ms(float(self.bounds[cur]))}, which "
                f"{pct(share)} of the baseline's requests exceeded"
            )

    def _set_threshold(self, i: int, j: int) -> None:
        """Test quantile i at bound j from the next interval on (its counts start afresh)."""
        self.thresholds[i] = float(self.bounds[j])
        self.index[i] = j
        self.active[i] = True
        self.n_c[i] = self.x_c[i] = self.n_b[i] = self.x_b[i] = 0
        self.spread.reset(i)  # the hosts' spread at the new threshold starts afresh

    def _spread_tolerances(self) -> FloatArray:
        c = self.config
        return spread_tolerance(
            c.latency_tolerance,
            c.latency_bad,
            self.spread.tau(),
            self.canary_hosts,
            self.spread.hosts(),
        )

    def _measure(self, baseline: Observation) -> None:
        """Add the baseline hosts' counts at the active thresholds to their spread."""
        hosts = baseline_hosts(baseline)
        width = len(self.bounds) + 1
        if hosts is None or any(len(h.latency_buckets) != width for h in hosts):
            return
        hist = np.asarray([list(h.latency_buckets) for h in hosts], dtype=np.int64)
        tail = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]
        on = self.active[None, :]
        x = np.where(on, tail[:, self.index + 1], 0)
        n = np.where(on, tail[:, :1], 0)
        self.spread.add(n, x)

    # -- evidence ---------------------------------------------------------------------------

    def _add(self, t_s: float, dt: float, canary: Observation, baseline: Observation) -> str | None:
        # A cohort without requests may come without a histogram; one with requests may not.
        cohorts = [o for o in (canary, baseline) if o.latency_buckets]
        if any(o.requests > 0 and not o.latency_buckets for o in (canary, baseline)):
            return "the signal has no latency histogram"
        if not cohorts:
            return None
        problem = self._set_bounds(tuple(float(b) for b in cohorts[0].latency_bounds_ms))
        if problem:
            return problem
        if any(tuple(float(b) for b in o.latency_bounds_ms) != self.bounds for o in cohorts):
            return "canary and baseline latency histograms have different bucket bounds"
        empty = [0] * (len(self.bounds) + 1)
        hc = np.asarray(canary.latency_buckets or empty, dtype=np.int64)
        hb = np.asarray(baseline.latency_buckets or empty, dtype=np.int64)
        if len(hc) != len(self.bounds) + 1 or len(hb) != len(self.bounds) + 1:
            return "latency buckets do not match their bounds (one overflow bucket expected)"
        active = self.active
        if active.any():
            tail_c = np.cumsum(hc[::-1])[::-1]
            tail_b = np.cumsum(hb[::-1])[::-1]
            x_c = np.where(active, tail_c[self.index + 1], 0)
            x_b = np.where(active, tail_b[self.index + 1], 0)
            n_c, n_b = int(tail_c[0]), int(tail_b[0])
            # the test sees a random subset when the counts are huge (bounded memory)
            sc = np.cumsum(np.asarray(thin(hc.tolist(), self.rng), dtype=np.int64)[::-1])[::-1]
            sb = np.cumsum(np.asarray(thin(hb.tolist(), self.rng), dtype=np.int64)[::-1])[::-1]
            # each threshold's tolerance from the baseline hosts' spread before this look
            if self.spread.n is not None and t_s >= self.tolerance_at + REFRESH_S:
                self.tolerance_at = t_s
                self.evidence.set_tolerances(self._spread_tolerances())
            self.evidence.add(
                t_s,
                dt,
                int(sc[0]),
                np.where(active, sc[self.index + 1], 0).tolist(),
                int(sb[0]),
                np.where(active, sb[self.index + 1], 0).tolist(),
            )
            self.n_c += np.where(active, n_c, 0)
            self.n_b += np.where(active, n_b, 0)
            self.x_c += x_c
            self.x_b += x_b
            self.hist_c = hc if self.hist_c is None else self.hist_c + hc
            self.hist_b = hb if self.hist_b is None else self.hist_b + hb
            self._measure(baseline)
            self.canary_hosts = max(1, canary.hosts)
        if self.tracking or not active.all():
            self._freeze(t_s, hb, dt)
        return None

    # -- words ------------------------------------------------------------------------------

    def _describe(self, i: int) -> str:
        t = self.thresholds[i]
        n_c, n_b = int(self.n_c[i]), int(self.n_b[i])
        values = ""
        q = self.quantiles[i]
        if not math.isnan(q) and self.hist_c is not None and self.hist_b is not None:
            qc = histogram_quantile(self.bounds, self.hist_c.tolist(), q)
            qb = histogram_quantile(self.bounds, self.hist_b.tolist(), q)
            values = f"{self.labels[i]} canary {quantile_ms(qc, self.bounds)} vs baseline {quantile_ms(qb, self.bounds)}: "
        since = (
            f" since {self.since[i]:.0f} s ({self.moved[i]})" if self.since[i] is not None else ""
        )
        return (
            f"{values}canary {pct(self.x_c[i] / n_c if n_c else 0.0)} vs baseline "
            f"{pct(self.x_b[i] / n_b if n_b else 0.0)} of requests slower than "
            f"{ms(t if t is not None else math.nan)} ({self.labels[i]}) over {count(n_c)} vs "
            f"{count(n_b)} requests{since}"
        )

    def _numbers(self, t_s: float) -> dict[str, float]:
        log_fail = self.evidence.log_fail
        log_pass = self.evidence.log_pass
        out: dict[str, float] = {
            "t_s": float(t_s),
            "e_fail_needed": self.fail_needed,
            "e_pass_needed": 1.0 / (self.config.beta * (1.0 - PASS_FINAL_SHARE)),
        }
        for i, label in enumerate(self.labels):
            key = label if self.fixed is None else f"t{i}"
            t = self.thresholds[i]
            if t is not None:
                out[f"{key}_threshold_ms"] = float(t)
            out[f"{key}_canary_requests"] = float(self.n_c[i])
            out[f"{key}_canary_slow"] = float(self.x_c[i])
            out[f"{key}_baseline_requests"] = float(self.n_b[i])
            out[f"{key}_baseline_slow"] = float(self.x_b[i])
            out[f"{key}_e_fail"] = e_number(float(log_fail[i]))
            out[f"{key}_e_pass"] = e_number(float(log_pass[i]))
            q = self.quantiles[i]
            if not math.isnan(q) and self.hist_c is not None and self.hist_b is not None:
                # the quantile itself, read off each cohort's histogram (as the reason says it),
                # for the report's "p90 212 ms vs 198 ms"; left out when it cannot be read
                for cohort, hist in (("canary", self.hist_c), ("baseline", self.hist_b)):
                    v = histogram_quantile(self.bounds, hist.tolist(), q)
                    if math.isfinite(v):
                        out[f"{key}_{cohort}_ms"] = float(v)
            tol = float(self.evidence.tolerances[i])
            if tol > self.config.latency_tolerance * (1.0 + 1e-9):
                out[f"{key}_tolerance"] = tol
        return out

    def _tolerance(self, i: int) -> str:
        return tolerance_words(self.config.latency_tolerance, float(self.evidence.tolerances[i]))

    def _result(self, outcome: Outcome, reason: str, t_s: float) -> CheckResult:
        return CheckResult(self.name, outcome, reason, self._numbers(t_s))

    def _pass_level(self) -> tuple[float, int]:
        """The smallest pass log e-value over thresholds (-inf while one is not frozen)."""
        log_pass = np.where(self.active, self.evidence.log_pass, -np.inf)
        i = int(np.argmin(log_pass))
        return float(log_pass[i]), i

    # -- the Judge protocol -----------------------------------------------------------------

    def look(self, t_s: float, canary: Observation, baseline: Observation) -> CheckResult:
        dt = _dt(t_s, self.last_t)
        self.last_t = t_s
        if self.failed is not None:
            return self.failed
        self.blocked = self.guard.check(t_s, dt, canary, baseline)
        if self.passed is not None:
            # Certified; see ErrorsJudge.look: only the post-pass detector still watches.
            if self.postpass is not None and canary.available and baseline.available:
                self.evidence.last_fail_llr = None
                self.blocked = self._add(t_s, dt, canary, baseline) or self.blocked
                llr = self.evidence.last_fail_llr
                if llr is not None and self.postpass.add(llr):
                    i = int(np.argmax(self.x_c - self.n_c * (self.x_b / np.maximum(self.n_b, 1))))
                    self.failed = self._result(
                        Outcome.FAIL,
                        f"{self._describe(i)} since the check passed at {self.passed_at:.0f} s "
                        f"(post-pass detector: odds ×{self.config.latency_bad:g} or more, log "
                        f"e-value {self.postpass.cusum.level:.1f} ≥ "
                        f"{self.postpass.cusum.threshold:.1f})",
                        t_s,
                    )
                    return self.failed
            if self.blocked is not None:
                return self._result(Outcome.INCONCLUSIVE, self.blocked, t_s)
            return self.passed
        if canary.available and baseline.available:
            self.base_seen += max(baseline.requests, 0)
            self.blocked = self._add(t_s, dt, canary, baseline) or self.blocked
        log_fail = np.where(self.active, self.evidence.log_fail, -np.inf)
        worst = int(np.argmax(log_fail))
        if log_fail[worst] >= self.fail_log_threshold:
            self.failed = self._result(
                Outcome.FAIL,
                f"{self._describe(worst)} (e-value {evalue(float(log_fail[worst]))} ≥ "
                f"{self.fail_needed:g}, tolerance {self._tolerance(worst)})",
                t_s,
            )
            return self.failed
        if self.blocked is not None:
            return self._result(Outcome.INCONCLUSIVE, self.blocked, t_s)
        log_pass, weakest = self._pass_level()
        if t_s >= self.min_bake_s and log_pass >= self.pass_log_threshold:
            if self.base_seen == 0:  # thresholds carried from an earlier bake, no baseline now
                return self._result(Outcome.CONTINUE, NO_BASELINE, t_s)
            return self._pass(
                f"no latency regression of ×{self.config.latency_bad:g} odds or more at "
                f"{self._thresholds_text()}; closest: {self._describe(weakest)} (pass e-value "
                f"{evalue(log_pass)} ≥ {math.exp(self.pass_log_threshold):g}) after {t_s:.0f} s",
                t_s,
            )
        if not self.active.any():
            return self._result(Outcome.CONTINUE, self._setting(), t_s)
        return self._result(
            Outcome.CONTINUE,
            f"{self._describe(worst)} (fail e-value {evalue(float(log_fail[worst]))} of "
            f"{self.fail_needed:g}; smallest pass e-value {evalue(log_pass)} "
            f"of {math.exp(self.pass_log_threshold):g})",
            t_s,
        )

    def _pass(self, reason: str, t_s: float) -> CheckResult:
        self.passed = self._result(Outcome.PASS, reason, t_s)
        if self.postpass_alpha > 0:
            self.postpass = PostPass(self.evidence, self.postpass_alpha)
            self.passed_at = t_s
            # the reason's counts start at the pass (the detector's evidence does too)
            self.n_c[:] = self.x_c[:] = self.n_b[:] = self.x_b[:] = 0
        return self.passed

    def _setting(self) -> str:
        """Where setting the thresholds stands: the least advanced quantile's blocks."""
        waiting = [i for i, t in enumerate(self.thresholds) if t is None]
        if not waiting:
            return "setting the latency thresholds from the baseline"
        i = min(waiting, key=lambda i: len(self.freezers[i].cdfs))
        f = self.freezers[i]
        return (
            f"setting the {self.labels[i]} latency threshold from the baseline: "
            f"{min(len(f.cdfs), FREEZE_BLOCKS)} of {FREEZE_BLOCKS} blocks of ≥ "
            f"{FREEZE_BLOCK_S:g} s and ≥ {count(f.size)} baseline requests so far "
            f"({count(self._base_total())} baseline requests seen; no request is judged "
            "before the thresholds are set)"
        )

    def _separates_nothing(self, i: int) -> str | None:
        """Why threshold i could not decide though it counted plenty of requests: (nearly)
        all of them, or none, on both cohorts were slower than it, so the comparison had
        nothing to weigh and more of the same traffic would not help (None otherwise)."""
        n = int(self.n_c[i] + self.n_b[i])
        slow = int(self.x_c[i] + self.x_b[i])
        if n < SEPARATES_NOTHING_MIN_REQUESTS or min(slow, n - slow) > SEPARATES_NOTHING * n:
            return None
        side = "slower" if 2 * slow > n else "no slower"
        why = (
            f"the configured threshold {DOES_NOT_FIT}"
            if self.labels[i] == "configured"
            else f"the latency of both cohorts {MOVED} from the baseline's {self.labels[i]}"
        )
        return (
            f"{SEPARATES_NOTHING_WORDS} {count(n)} requests (nearly every one on both cohorts "
            f"was {side} than {ms(float(self.thresholds[i] or math.nan))}), so the comparison "
            f"had almost nothing to weigh: {why}"
        )

    def _base_total(self) -> int:
        return self.base_total

    def _thresholds_text(self) -> str:
        return ", ".join(
            f"{ms(t)} ({label})" for t, label in zip(self.thresholds, self.labels, strict=True) if t
        )

    def final(self, t_s: float) -> CheckResult:
        """The verdict at max bake: see ErrorsJudge.final (per threshold). The FAIL look, at
        alpha x `FAIL_FINAL_SHARE` / K per threshold (Bonferroni), is taken only with
        `LATENCY_FIXED_LOOK` (off: stalls on one canary host fail it on good releases)."""
        if self.failed is not None:
            return self.failed
        if self.passed is not None:
            return self.passed
        if self.blocked is not None:
            return self._result(Outcome.INCONCLUSIVE, self.blocked, t_s)
        active = self.active
        ev = self.evidence
        empty = no_baseline_at_max(self.base_seen)
        if empty is not None:
            return self._result(Outcome.INCONCLUSIVE, empty, t_s)
        if not active.all():
            missing = [lb for lb, a in zip(self.labels, active, strict=True) if not a]
            return self._result(
                Outcome.INCONCLUSIVE,
                f"insufficient information at max bake: {count(self._base_total())} baseline "
                f"requests were too few to set the {'/'.join(missing)} latency threshold(s)",
                t_s,
            )
        p_fail = ev.p_fail() if self.fail_final_alpha > 0 else np.ones(self.k)
        worst = int(np.argmin(p_fail))
        if p_fail[worst] <= self.fail_final_alpha:
            self.failed = self._result(
                Outcome.FAIL,
                f"{self._describe(worst)} at max bake (one-sided p {float(p_fail[worst]):.2g} ≤ "
                f"{self.fail_final_alpha:.2g} that the canary is no worse than "
                f"{self._tolerance(worst)}: conditional test on the whole bake; "
                f"fail e-value {evalue(float(ev.log_fail[worst]))} of "
                f"{self.fail_needed:g})",
                t_s,
            )
            return self.failed
        log_pass, weakest = self._pass_level()
        if log_pass >= self.pass_log_threshold:
            return self._pass(
                f"no latency regression of ×{self.config.latency_bad:g} odds or more; closest: "
                f"{self._describe(weakest)} (pass e-value {evalue(log_pass)} ≥ "
                f"{math.exp(self.pass_log_threshold):g})",
                t_s,
            )
        # Certified per threshold by the sequential test or the fixed-horizon one.
        z_pass = ev.z_pass()
        certified = (ev.log_pass >= self.pass_log_threshold) | (z_pass <= -self.pass_z)
        i = int(np.argmax(np.where(certified, -np.inf, z_pass)))
        if certified.all():
            return self._pass(
                f"no latency regression of ×{self.config.latency_bad:g} odds or more at max "
                f"bake; closest: {self._describe(i)} (score z {float(z_pass.max()):.2f} ≤ "
                f"-{self.pass_z:.2f})",
                t_s,
            )
        ideal: FloatArray = self.evidence.identical.log_e()
        z_ideal = ev.z_pass(identical=True)
        could = (ideal >= self.pass_log_threshold) | (z_ideal <= -self.pass_z)
        if could.all():
            return self._pass(
                f"max bake reached, passed but not certified: {self._describe(i)} (score z "
                f"{float(z_pass[i]):.2f} > -{self.pass_z:.2f}, where a canary like the "
                f"baseline would have reached {float(z_ideal[i]):.2f})",
                t_s,
            )
        j = int(np.argmax(np.where(could, -np.inf, z_ideal)))
        blind = self._separates_nothing(j)
        if blind is not None:
            return self._result(
                Outcome.INCONCLUSIVE,
                f"insufficient information at max bake: {self._describe(j)}: {blind}",
                t_s,
            )
        return self._result(
            Outcome.INCONCLUSIVE,
            f"insufficient information at max bake: {self._describe(j)}, and even a canary "
            f"like the baseline would not have been certified "
            f"({score(float(z_ideal[j]), '>', -self.pass_z)}; bake longer or use a bigger wave)",
            t_s,
        )
