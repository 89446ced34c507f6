"""The baseline's host-to-host spread, and the tolerance it gives the canary.

Hosts are never identical: one serves a little more 5xx or a little slower than another on
the same release (hardware, neighbours, cache, placement). The comparison judges the canary
hosts against the baseline's hosts taken together, so a canary host that is merely one of the
fleet's slower hosts differs from the baseline by its own host effect, and on a fleet whose
hosts differ by more than `tolerance` it would be failed although the release changed
nothing. A fixed tolerance cannot know a fleet's spread; the baseline's hosts show it, over
the same seconds, on the old release.

`HostSpread` keeps each baseline host's counts over the bake (requests, and bad requests per
metric: 5xx, or slower than each latency threshold) and estimates the between-host standard
deviation tau of a host's log odds of a bad request with the method-of-moments estimator of
DerSimonian & Laird ("Meta-analysis in clinical trials", *Controlled Clinical Trials* 7,
177-188, 1986; the random-effects estimator of meta-analysis): each host's log odds
y_h = log((x_h + 1/2) / (n_h - x_h + 1/2)) with sampling variance v_h = 1/(x_h + 1/2) +
1/(n_h - x_h + 1/2) (Haldane-Anscombe), weights w_h = 1/v_h, Cochran's
Q = sum w_h (y_h - y_w)^2 and

    tau^2 = max(0, (Q - (H - 1)) / (sum w_h - sum w_h^2 / sum w_h)),

which removes what the hosts' own sampling noise adds to Q (E[Q] = H - 1 when the hosts do
not differ). The judges use it with Q lowered by `NOISE_Z` standard deviations of its null
law (chi-square, H - 1 degrees of freedom) first, so that only a spread shown beyond the
hosts' sampling noise widens the tolerance (thin traffic would otherwise read noise as
spread). The per-interval base rate (load, time of day, a shared incident) is the same for
every baseline host in an interval, so it cancels between hosts summed over the same
intervals, as it does between canary and baseline.

`spread_tolerance` turns tau into the canary's tolerance: the canary cohort's mean host
effect (k hosts) against the baseline's (H hosts) has standard deviation
tau sqrt(1/k + 1/H) when the release changes nothing, so a canary within `SPREAD_Z` of those
standard deviations differs from the baseline no more than the fleet's hosts differ among
themselves. The tolerance is the larger of the configured one and exp(`SPREAD_Z` tau
sqrt(1/k + 1/H)), and never more than halfway to `bad` in log odds (sqrt(tolerance x bad),
`SPREAD_CAP`): a fleet whose hosts differ by as much as a regression worth catching cannot
tell the one from the other by a canary of a few hosts, and `bad` must stay caught. With one
baseline host (or none with requests) there is no spread to measure: the configured tolerance
stands, as before.

Why the false-alarm bound holds: see docs/judging.md ("A fleet's own spread"); in short, the
judges apply the tolerance estimated from the looks *before* an interval to that interval (a
predictable choice) and it is never below the configured one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

SPREAD_Z = 2.5
"""How many standard deviations of the canary-vs-baseline difference that host spread alone
produces count as "no more than the baseline's hosts differ among themselves": 2.5 sqrt(1 +
1/9) = 2.6 tau for one canary host beside nine, near the expected range of nine hosts (2.97
tau, Tippett 1925), and 99.4% of canary hosts on a release that changes nothing."""
NOISE_Z = 2.0
"""Cochran's Q is lowered by this many of its standard deviations under "the hosts do not
differ" (Q then follows chi-square with H - 1 degrees of freedom: mean H - 1, standard
deviation sqrt(2 (H - 1))) before tau is estimated: only the spread shown beyond the hosts'
sampling noise widens the tolerance. With few events per host (thin traffic, rare 5xx) the
plain estimate reads noise as spread half the time; this one about 4% of the time on nine
alike hosts (P(chi-square_8 > 16))."""
SPREAD_CAP = 0.5
"""The spread tolerance goes at most this share of the way from the configured tolerance to
`bad`, in log odds (0.5: the geometric mean, x1.58 for errors at 1.25 and 2, x1.48 for
latency at 1.25 and 1.75)."""
MIN_HOSTS = 2
"""Baseline hosts with requests needed to measure a spread (one host has none)."""
REFRESH_S = 5.0
"""The judges re-estimate the spread tolerance once per this many seconds of looks (the
estimate moves slowly; each interval is still tested at one set from earlier looks)."""


class HostSpread:
    """Each baseline host's counts over a bake, for K count metrics, and their spread.

    `add(n, x)`: one look's requests per host, shape (H,) or (H, K), and bad requests per host
    and metric, shape (H, K). Hosts are matched by position (the order of the cohort's
    hosts); when their number changes, the counts start afresh. `reset(i)` forgets metric
    i's counts (its latency threshold moved). `tau()` is the between-host standard deviation
    of log odds per metric (DerSimonian & Laird), 0 with fewer than `MIN_HOSTS` hosts with
    requests.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.n: NDArray[np.int64] | None = None
        self.x: NDArray[np.int64] | None = None

    def add(self, n: Sequence[int] | NDArray[np.int64], x: NDArray[np.int64]) -> None:
        nn = np.asarray(n, dtype=np.int64)
        if nn.ndim == 1:
            nn = np.repeat(nn[:, None], self.k, axis=1)
        xx = np.asarray(x, dtype=np.int64).reshape(nn.shape)
        if self.n is None or self.x is None or self.n.shape != nn.shape:
            self.n, self.x = nn.copy(), np.minimum(xx, nn)
            return
        self.n += nn
        self.x += np.minimum(xx, nn)

    def reset(self, i: int) -> None:
        if self.n is not None and self.x is not None:
            self.n[:, i] = 0
            self.x[:, i] = 0

    def hosts(self) -> NDArray[np.int64]:
        """Baseline hosts with requests, per metric, shape (K,)."""
        if self.n is None:
            return np.zeros(self.k, dtype=np.int64)
        return np.asarray((self.n > 0).sum(axis=0), dtype=np.int64)

    def tau(self) -> FloatArray:
        """Between-host standard deviation of log odds per metric, shape (K,): every metric
        at once, each on its hosts with requests (`dersimonian_laird`)."""
        if self.n is None or self.x is None:
            return np.zeros(self.k)
        n = self.n.astype(np.float64)
        x = self.x.astype(np.float64)
        seen = n > 0
        h = seen.sum(axis=0)
        y = np.log((x + 0.5) / (n - x + 0.5))
        w = np.where(seen, 1.0 / (1.0 / (x + 0.5) + 1.0 / (n - x + 0.5)), 0.0)
        sw = np.maximum(w.sum(axis=0), 1e-300)
        mean = (w * y).sum(axis=0) / sw
        q = (w * (y - mean) ** 2).sum(axis=0)
        denom = sw - (w * w).sum(axis=0) / sw
        ok = (h >= MIN_HOSTS) & (denom > 0.0)
        excess = q - (h - 1) - NOISE_Z * np.sqrt(2.0 * np.maximum(h - 1, 0))
        tau2 = np.where(ok, excess / np.where(ok, denom, 1.0), 0.0)
        return np.asarray(np.sqrt(np.maximum(tau2, 0.0)), dtype=np.float64)


def dersimonian_laird(
    n: Sequence[int] | NDArray[np.int64],
    x: Sequence[int] | NDArray[np.int64],
    noise_z: float = 0.0,
) -> float:
    """DerSimonian & Laird's estimate of the between-host variance tau^2 of log odds, from
    each host's requests `n` and bad requests `x` (same length, n > 0; see the module's
    docstring for the formula). 0 when the hosts differ no more than their sampling noise.
    `noise_z` > 0 lowers Q by that many of its standard deviations under "no spread"
    (sqrt(2 (H - 1))): the spread shown beyond sampling noise (`NOISE_Z`)."""
    nn = np.asarray(n, dtype=np.float64)
    xx = np.asarray(x, dtype=np.float64)
    if len(nn) < MIN_HOSTS:
        return 0.0
    y = np.log((xx + 0.5) / (nn - xx + 0.5))
    w = 1.0 / (1.0 / (xx + 0.5) + 1.0 / (nn - xx + 0.5))
    sw = float(w.sum())
    mean = float((w * y).sum()) / sw
    q = float((w * (y - mean) ** 2).sum())
    denom = sw - float((w * w).sum()) / sw
    if denom <= 0.0:
        return 0.0
    df = len(nn) - 1
    return max(0.0, (q - df - noise_z * math.sqrt(2.0 * df)) / denom)


def spread_tolerance(
    tolerance: float,
    bad: float,
    tau: FloatArray,
    canary_hosts: int,
    baseline_hosts: NDArray[np.int64],
) -> FloatArray:
    """The tolerance per metric on a fleet whose hosts' log odds spread by `tau` (K,):
    max(`tolerance`, exp(`SPREAD_Z` tau sqrt(1/k + 1/H))), at most
    tolerance^(1 - `SPREAD_CAP`) bad^`SPREAD_CAP`; `tolerance` itself where fewer than
    `MIN_HOSTS` baseline hosts had requests (H per metric, `baseline_hosts`)."""
    k = max(1, int(canary_hosts))
    h = np.maximum(np.asarray(baseline_hosts, dtype=np.float64), 1.0)
    widened = np.exp(SPREAD_Z * np.asarray(tau) * np.sqrt(1.0 / k + 1.0 / h))
    cap = math.exp((1.0 - SPREAD_CAP) * math.log(tolerance) + SPREAD_CAP * math.log(bad))
    out = np.minimum(np.maximum(widened, tolerance), max(cap, tolerance))
    return np.asarray(
        np.where(np.asarray(baseline_hosts) >= MIN_HOSTS, out, tolerance), dtype=np.float64
    )
