"""The two reference judges `immunity bench judge` prints beside immunity's own.

* `fixed-threshold`, the story's rule: wait 2 minutes after warm-up, then fail if the
  canary's error rate over those 2 minutes is above 1% or its p99 above 500 ms.
* `mann-whitney`, Kayenta-style (NetflixACAJudge's MannWhitneyClassifier): 10-second buckets
  of error rate and mean latency over the 2 minutes after warm-up, canary against baseline;
  a metric is "High" when the 98% confidence interval of the Hodges-Lehmann shift lies above
  0.25 × |shift| (equivalently, the one-sided Mann-Whitney test of shift 0.25 × |shift| is
  significant at 1%) and the canary's mean is not below the baseline's; any High fails.
  Error rate of a bucket without requests is 0 (Kayenta's `replace`), mean latency of such a
  bucket is dropped (`remove`).

Both see only the scenario file's numbers and give one verdict at warm-up + 120 s.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import NDArray
from scipy.stats import mannwhitneyu

from immunity.bench.scenarios import Scenario, Series
from immunity.judge.evidence import histogram_quantile

WINDOW_S = 120.0
BUCKET_S = 10.0
FIXED_ERROR_RATE = 0.01
FIXED_P99_MS = 500.0
MW_CONFIDENCE = 0.98
MW_TOLERANCE = 0.25


def _window(s: Scenario, interval_s: float) -> tuple[int, int]:
    start = round(s.warmup_s / interval_s)
    end = min(s.intervals, start + round(WINDOW_S / interval_s))
    return start, max(end, start)


def _verdict_time(s: Scenario, interval_s: float) -> float:
    _start, end = _window(s, interval_s)
    return end * interval_s


def fixed_threshold(s: Scenario, bounds: tuple[float, ...], interval_s: float) -> tuple[str, float]:
    """("fail" | "pass", seconds from scenario start)."""
    a, b = _window(s, interval_s)
    requests = int(s.canary.requests[a:b].sum())
    errors = int(s.canary.errors[a:b].sum())
    hist = s.canary.latency[a:b].sum(axis=0)
    p99 = histogram_quantile(bounds, hist.tolist(), 0.99) if hist.sum() else 0.0
    bad = (requests and errors / requests > FIXED_ERROR_RATE) or p99 > FIXED_P99_MS
    return ("fail" if bad else "pass"), _verdict_time(s, interval_s)


def _centres(bounds: tuple[float, ...]) -> NDArray[np.float64]:
    edges = np.concatenate([[0.0], np.asarray(bounds, dtype=np.float64)])
    mids = (edges[:-1] + edges[1:]) / 2
    return np.concatenate([mids, [bounds[-1] * 1.5]])


def _buckets(
    series: Series, a: int, b: int, per: int, centres: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per 10-s bucket: error rate (0 without requests) and mean latency (NaN without)."""
    edges = list(range(a, b, per))
    req = np.add.reduceat(series.requests[a:b], [e - a for e in edges]).astype(np.float64)
    err = np.add.reduceat(series.errors[a:b], [e - a for e in edges]).astype(np.float64)
    lat = np.add.reduceat(series.latency[a:b], [e - a for e in edges], axis=0).astype(np.float64)
    n_lat = lat.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(req > 0, err / req, 0.0)
        mean = np.where(n_lat > 0, lat @ centres / n_lat, np.nan)
    return rate, mean


def kayenta_high(canary: NDArray[np.float64], baseline: NDArray[np.float64]) -> bool:
    """MannWhitneyClassifier's "High" for direction `increase`, meanRatio effect >= 1."""
    x = canary[~np.isnan(canary)]
    y = baseline[~np.isnan(baseline)]
    if len(x) == 0 or len(y) == 0:
        return False
    if np.array_equal(np.sort(x), np.sort(y)) or len(np.unique(np.concatenate([x, y]))) == 1:
        return False
    shift = float(np.median(x[:, None] - y[None, :]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = mannwhitneyu(
            x - MW_TOLERANCE * abs(shift),
            y,
            alternative="greater",
            method="asymptotic",
            use_continuity=True,
        ).pvalue
    if not math.isfinite(p) or p >= (1 - MW_CONFIDENCE) / 2:
        return False
    mx, my = float(np.mean(x)), float(np.mean(y))
    return mx == 0 or my == 0 or mx / my >= 1.0


def mann_whitney(s: Scenario, bounds: tuple[float, ...], interval_s: float) -> tuple[str, float]:
    """("fail" | "pass", seconds from scenario start)."""
    a, b = _window(s, interval_s)
    if b <= a:
        return "pass", _verdict_time(s, interval_s)
    per = max(1, round(BUCKET_S / interval_s))
    centres = _centres(bounds)
    c_rate, c_mean = _buckets(s.canary, a, b, per, centres)
    b_rate, b_mean = _buckets(s.baseline, a, b, per, centres)
    bad = kayenta_high(c_rate, b_rate) or kayenta_high(c_mean, b_mean)
    return ("fail" if bad else "pass"), _verdict_time(s, interval_s)
