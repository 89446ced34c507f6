"""Evidence arithmetic shared by the judges: likelihood ratios of counts and e-processes.

Everything here works in natural-log space on small numpy arrays, one interval at a time.

* `fnch_logz` is the log normaliser of Fisher's non-central hypergeometric law: given that
  `E` requests of `n_c + n_b` were "bad" (an error, or slower than a threshold), the number
  `x` of them on the canary has P(x) = C(n_c, x) C(n_b, E - x) psi^x / Z(psi), where psi is
  the odds ratio canary vs baseline. The baseline's own rate, whatever it does from one
  second to the next, does not appear: that is why time of day, load and shared incidents
  cancel. The log-likelihood ratio of psi1 against psi0 is
  `x (log psi1 - log psi0) - (log Z(psi1) - log Z(psi0))`.
* `BinomialRatios` is the same for one cohort against an absolute rate (guard rails, the
  catastrophe tier's "canary alone" detector).
* `CappedMixture` is an average of products of per-interval likelihood ratios, each interval
  capped at `log 3` per second and each 5-second block at `log 10`. Capping a likelihood ratio
  from above keeps E[LR] <= 1 under the null, so the mixture stays a nonnegative
  supermartingale and Ville's inequality bounds P(ever >= 1/a) by a however often one looks;
  the caps make one bad second (a GC pause, a stall on one host) weak evidence, so a FAIL
  needs persistence.
* `Cusum` is max(0, W + l) per alternative, the CUSUM form of an e-detector: it forgets
  healthy periods, so an outage late in the bake or one that comes and goes is seen at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaln

FloatArray = NDArray[np.float64]

LOG_CAP_PER_SECOND = math.log(3.0)
LOG_CAP_PER_BLOCK = math.log(10.0)
BLOCK_S = 5.0

VECTOR_MAX_CELLS = 200_000
"""`fnch_stats` works on every metric at once up to this many (metric, psi, count) cells."""

_logfact: FloatArray = gammaln(np.arange(4097, dtype=np.float64) + 1.0)


def _log_factorials(upto: int) -> FloatArray:
    """log(k!) for k = 0..upto (a growing, shared table)."""
    global _logfact
    if upto >= len(_logfact):
        size = max(upto + 1, 2 * len(_logfact))
        _logfact = gammaln(np.arange(size, dtype=np.float64) + 1.0)
    return _logfact


def logmeanexp(a: FloatArray) -> FloatArray:
    """log(mean(exp(a))) along the last axis; rows may hold -inf but not only -inf."""
    m = a.max(axis=-1)
    s = np.exp(a - m[..., None]).sum(axis=-1)
    return np.asarray(m + np.log(s) - math.log(a.shape[-1]), dtype=np.float64)


def fnch_logz(n_c: int, n_b: int, events: Sequence[int], log_psi: FloatArray) -> FloatArray:
    """log Z(psi) of Fisher's non-central hypergeometric law, shape (len(events), len(log_psi)).

    Up to a constant that does not depend on psi (it cancels in every likelihood ratio).
    `events[k]` is the pooled bad count of metric k; it must be <= n_c + n_b. The support
    of x is the contiguous range max(0, E - n_b) .. min(n_c, E), so every term is a slice
    of one log-factorial table.
    """
    return fnch_stats(n_c, n_b, events, log_psi)[0]


def fnch_stats(
    n_c: int, n_b: int, events: Sequence[int], log_psi: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(log Z, mean, variance) of Fisher's non-central hypergeometric law of the canary's
    count, each of shape (len(events), P) for `log_psi` of shape (P,) (the same odds ratios
    for every metric) or (len(events), P) (each metric its own); see `fnch_logz`. The mean
    and variance are exact sums over the support (they feed the fixed-horizon score test).

    All metrics at once, on the union of their supports (each row's terms outside its own
    support are -inf): one set of array operations per interval instead of one per metric.
    Each row's log Z is up to its own psi-free constant.
    """
    ev = np.asarray(events, dtype=np.int64)
    lo = np.maximum(0, ev - n_b)
    hi = np.minimum(n_c, ev)
    first, last = int(lo.min()), int(hi.max())
    if len(ev) > 1 and len(ev) * len(log_psi) * (last - first + 1) > VECTOR_MAX_CELLS:
        # huge counts: one metric at a time, on its own support (bounded memory)
        parts = [
            fnch_stats(n_c, n_b, [int(e)], log_psi[i : i + 1] if log_psi.ndim == 2 else log_psi)
            for i, e in enumerate(ev)
        ]
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]
    lf = _log_factorials(max(n_c, n_b, int(ev.max()) if len(ev) else 0))
    ui = np.arange(first, last + 1)
    u = _arange(last + 1)[first:]
    # log C(n_c, u) + log C(n_b, e - u) without the constant log n_c! + log n_b!
    lc = -(lf[ui] + lf[n_c - ui])[None, :] - (
        lf[np.maximum(ev[:, None] - ui[None, :], 0)]
        + lf[np.maximum(n_b - ev[:, None] + ui[None, :], 0)]
    )
    outside = (ui[None, :] < lo[:, None]) | (ui[None, :] > hi[:, None])
    lc[outside] = -np.inf
    lp = log_psi if log_psi.ndim == 2 else log_psi[None, :]
    terms = lc[:, None, :] + lp[:, :, None] * u[None, None, :]
    m = terms.max(axis=2)
    w = np.exp(terms - m[..., None])
    total = w.sum(axis=2)
    mu = (w @ u) / total
    var = np.maximum((w @ (u * u)) / total - mu * mu, 0.0)
    return m + np.log(total), mu, var


_aranged: NDArray[np.float64] = np.arange(4097, dtype=np.float64)


def _arange(n: int) -> FloatArray:
    global _aranged
    if n > len(_aranged):
        _aranged = np.arange(max(n, 2 * len(_aranged)), dtype=np.float64)
    return _aranged[:n]


class OddsRatioGrid:
    """Pairs (alternative, null) of odds ratios whose likelihood ratios are needed each interval.

    `groups` is a list of (alternatives, null); `llr` returns, per group, an array (K, J) of
    l(psi_alt : psi_null) for the observed canary counts and one for the count an identical
    canary would show on average (the central hypergeometric mean E n_c / (n_c + n_b)),
    which tells "not enough information" from "not certified".

    Group `scaled` (if any) can be moved per metric by `shift`: its alternatives and null are
    multiplied by exp(shift[k]) for metric k (the FAIL group when a metric's tolerance
    widens to the baseline's host spread, `judge.spread`); its likelihood ratios' steps
    (alternative over null) do not change.
    """

    def __init__(
        self, groups: Sequence[tuple[Sequence[float], float]], scaled: int | None = None
    ) -> None:
        values: list[float] = []
        alt: list[int] = []
        null: list[int] = []
        mask: list[bool] = []
        self.slices: list[slice] = []
        self.nulls: list[int] = []
        for g, (alts, n) in enumerate(groups):
            start = len(alt)
            for a in alts:
                alt.append(len(values))
                values.append(float(a))
            null += [len(values)] * len(alts)
            self.nulls.append(len(values))
            values.append(float(n))
            mask += [g == scaled] * (len(alts) + 1)
            self.slices.append(slice(start, len(alt)))
        self.base_log_psi = np.log(np.array(values, dtype=np.float64))
        self.log_psi: FloatArray = self.base_log_psi
        self.mask = np.array(mask, dtype=np.float64)
        self.alt = np.array(alt, dtype=np.intp)
        self.null = np.array(null, dtype=np.intp)
        self.step = (self.base_log_psi[self.alt] - self.base_log_psi[self.null])[None, :]
        self.values = values
        self.mean: FloatArray = np.zeros((0, len(values)))
        self.var: FloatArray = np.zeros((0, len(values)))

    def null_of(self, group: int) -> int:
        """Column of group `group`'s null in `mean` and `var`."""
        return self.nulls[group]

    def shift(self, delta: FloatArray) -> None:
        """Move the scaled group by exp(delta[k]) for metric k, shape (K,); all zeros puts
        it back where it was built."""
        d = np.asarray(delta, dtype=np.float64)
        if not d.any():
            self.log_psi = self.base_log_psi
        else:
            self.log_psi = self.base_log_psi[None, :] + d[:, None] * self.mask[None, :]

    def llr(
        self, n_c: int, n_b: int, x_c: Sequence[int], x_b: Sequence[int]
    ) -> tuple[list[FloatArray], list[FloatArray]] | None:
        """None when the interval carries no information (every ratio is 0).

        Also leaves the interval's conditional mean and variance of the canary's count at
        every grid value in `mean` and `var` (K, P)."""
        events = [int(c) + int(b) for c, b in zip(x_c, x_b, strict=True)]
        if n_c == 0 or n_b == 0 or not any(events):
            return None
        logz, self.mean, self.var = fnch_stats(n_c, n_b, events, self.log_psi)
        dz = logz[:, self.alt] - logz[:, self.null]
        observed = np.array(x_c, dtype=np.float64)[:, None] * self.step - dz
        mean = np.array(events, dtype=np.float64)[:, None] * (n_c / (n_c + n_b))
        identical = mean * self.step - dz
        return [observed[:, s] for s in self.slices], [identical[:, s] for s in self.slices]


class BinomialRatios:
    """log-likelihood ratios of `x` bad of `n` Bernoulli requests, rates p1[j] against p0.

    p1 may be 0 (the ratio is then 0 unless x == 0); p0 must lie in (0, 1).
    """

    def __init__(self, p1: Sequence[float], p0: float) -> None:
        alt = np.asarray(p1, dtype=np.float64)
        with np.errstate(divide="ignore"):
            self.bad = np.log(alt) - math.log(p0)
        self.good = np.log1p(-alt) - math.log1p(-p0)

    def __call__(self, n: int, x: float) -> FloatArray:
        if x > 0:
            return np.asarray(x * self.bad + (n - x) * self.good, dtype=np.float64)
        return np.asarray(n * self.good, dtype=np.float64)


class CappedMixture:
    """Average over alternatives of capped products of likelihood ratios (shape (K, J)).

    `add(t_s, dt, llr)` adds one interval ending at `t_s` that lasted `dt` seconds. Intervals
    are grouped into blocks of `BLOCK_S` seconds of bake time; an interval's evidence is
    capped at `LOG_CAP_PER_SECOND * dt`, a block's at `LOG_CAP_PER_BLOCK`, scaled up when the
    interval opening the block is longer than a block. The block's cap is fixed when the block
    opens (a cap that grew inside a block could lift the value without evidence).
    """

    def __init__(self, k: int, j: int) -> None:
        self.closed = np.zeros((k, j))
        self.block = np.zeros((k, j))
        self.zero = np.zeros((k, j))
        self.block_cap = LOG_CAP_PER_BLOCK
        self.block_index: int | None = None

    def add(self, t_s: float, dt: float, llr: FloatArray) -> None:
        index = math.floor((t_s - 1e-9) / BLOCK_S)
        if index != self.block_index:
            if self.block_index is not None:
                self.closed += np.minimum(self.block, self.block_cap)
                self.block = np.zeros_like(self.block)
            self.block_index = index
            self.block_cap = LOG_CAP_PER_BLOCK * max(1.0, dt / BLOCK_S)
        self.block += np.minimum(llr, LOG_CAP_PER_SECOND * dt)

    def log_e(self) -> FloatArray:
        """log of the mixture e-value per metric, shape (K,)."""
        return logmeanexp(self.closed + np.minimum(self.block, self.block_cap))


class Mixture:
    """Average over alternatives of uncapped products of likelihood ratios (shape (K, J))."""

    def __init__(self, k: int, j: int) -> None:
        self.total = np.zeros((k, j))

    def add(self, llr: FloatArray) -> None:
        self.total += llr

    def log_e(self) -> FloatArray:
        return logmeanexp(self.total)


class Cusum:
    """CUSUM e-detector over J alternatives: W = max(0, W + l); alarm at log(S J / alpha).

    The union bound over S start times and J alternatives keeps the false-alarm probability
    at or under `alpha` for bakes of up to S intervals.
    """

    def __init__(self, j: int, alpha: float, starts: int) -> None:
        self.w = np.zeros(j)
        self.threshold = math.log(starts * j / alpha)

    def add(self, llr: FloatArray) -> bool:
        self.w = np.maximum(0.0, self.w + llr)
        return bool(self.w.max() >= self.threshold)

    @property
    def level(self) -> float:
        return float(self.w.max())


MAX_EXACT_REQUESTS = 100_000
"""Per cohort and interval, the most requests the conditional tests use exactly; beyond it a
random subset is tested (see `thin`). Bounds the judges' memory and time whatever the counts
(the log-factorial table and the support of the hypergeometric law grow with them)."""


def thin(
    counts: Sequence[int], rng: np.random.Generator, cap: int = MAX_EXACT_REQUESTS
) -> list[int]:
    """Per-category counts of a random subset of about `cap` of the `sum(counts)` requests.

    Each request is kept independently with probability cap / total (binomial thinning).
    Requests that are conditionally independent with a common bad rate within a cohort and
    interval stay so after independent thinning, so the likelihood ratios of the thinned
    counts are those of the model, and every e-process stays valid; only the evidence per
    interval is that of `cap` requests. Counts at or under `cap` come back unchanged.
    """
    total = sum(int(c) for c in counts)
    if total <= cap:
        return [int(c) for c in counts]
    p = cap / total
    return [int(rng.binomial(int(c), p)) for c in counts]


def histogram_quantile(bounds: Sequence[float], buckets: Sequence[int], q: float) -> float:
    """The q-quantile (ms) of a histogram, linear within a bucket; inf in the overflow bucket."""
    counts = np.asarray(buckets, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return math.nan
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, q * total, side="left"))
    if i >= len(bounds):
        return math.inf
    lo = float(bounds[i - 1]) if i > 0 else 0.0
    hi = float(bounds[i])
    below = cum[i - 1] if i > 0 else 0.0
    inside = counts[i]
    frac = (q * total - below) / inside if inside > 0 else 1.0
    return lo + (hi - lo) * min(max(frac, 0.0), 1.0)


def fnch_pmf(n_c: int, n_b: int, events: int, log_psi: float) -> tuple[int, FloatArray]:
    """(lo, pmf): the exact law of the canary's count under Fisher's non-central
    hypergeometric law at odds ratio exp(`log_psi`), on its support lo .. lo + len(pmf) - 1
    (see `fnch_logz`)."""
    lf = _log_factorials(max(n_c, n_b, events))
    lo, hi = max(0, events - n_b), min(n_c, events)
    if hi <= lo:
        return lo, np.ones(1)
    u = _arange(hi + 1)[lo:]
    terms = (
        -(
            lf[lo : hi + 1]
            + lf[n_c - hi : n_c - lo + 1][::-1]
            + lf[events - hi : events - lo + 1][::-1]
            + lf[n_b - events + lo : n_b - events + hi + 1]
        )
        + log_psi * u
    )
    w = np.exp(terms - terms.max())
    return lo, np.asarray(w / w.sum(), dtype=np.float64)


def stratified_upper_tail(
    strata: Sequence[tuple[int, int, int]],
    log_psi: float,
    observed: int,
    shifts: Sequence[float] | None = None,
) -> float:
    """P(S >= observed) for S the sum over `strata` (n_c, n_b, events) of independent
    canary counts, each Fisher non-central hypergeometric at odds ratio exp(`log_psi`)
    (times exp(`shifts[s]`) for stratum s when given: a stratum tested at a wider
    tolerance, `judge.spread`).

    The exact conditional test of a common odds ratio in stratified 2x2 tables (Cox 1970,
    *Analysis of Binary Data* §4; Mehta, Patel & Gray 1985 compute it by the same
    convolution): given every stratum's margins, S is sufficient for log psi, and its law is
    the convolution of the strata's laws. The tail grows with psi (an exponential family in
    log psi), so rejecting "psi <= psi0" when the tail at psi0 is <= a has level a. Cost:
    one convolution per stratum, over the support of S so far.
    """
    lo_total = 0
    pmf = np.ones(1)
    for s, (n_c, n_b, e) in enumerate(strata):
        if n_c <= 0 or n_b <= 0 or e <= 0:
            continue
        lo, p = fnch_pmf(n_c, n_b, e, log_psi + (shifts[s] if shifts is not None else 0.0))
        lo_total += lo
        pmf = np.convolve(pmf, p) if len(p) > 1 else pmf
    k = observed - lo_total
    if k <= 0:
        return 1.0
    if k >= len(pmf):
        return 0.0
    return float(min(1.0, pmf[k:].sum()))
