"""Numbers as they appear in verdict sentences: "4.8%", "1,204", "e-value 312".

Large and small numbers are written out in plain notation, never as "3.7e+25".
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pct(rate: float) -> str:
    """A fraction as a percentage with sensible precision: 0.048 -> "4.8%", 0.00031 -> "0.031%"."""
    if not math.isfinite(rate):
        return "n/a"
    p = 100.0 * rate
    if p == 0:
        return "0%"
    if p >= 10:
        return f"{p:.0f}%"
    if p >= 1:
        return f"{p:.1f}%"
    return f"{p:.2g}%"


def count(n: float) -> str:
    return f"{round(n):,}"


_LARGE = ((1e12, "trillion"), (1e9, "billion"), (1e6, "million"))


def evalue(log_e: float) -> str:
    """An e-value from its log, in plain notation: "312", "4.1", "1.2 million",
    "3.4 billion", "over a quadrillion", "below 0.01" (never "1.2e+09")."""
    if log_e >= math.log(1e15):
        return "over a quadrillion"
    e = math.exp(log_e)
    for size, word in _LARGE:
        if e >= size:
            return f"{e / size:.3g} {word}"
    if e >= 100:
        return f"{e:,.0f}"
    if e >= 0.01:
        return f"{e:.3g}"
    return "below 0.01"


def ms(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.3g} ms"


def quantile_ms(value: float, bounds: Sequence[float]) -> str:
    """A quantile read off a histogram: `12 ms`, `over 1,000 ms` (overflow bucket), `n/a`."""
    if math.isinf(value) and bounds:
        return f"over {ms(float(bounds[-1]))}"
    return ms(value)


def seconds(value: float) -> str:
    return f"{value:.0f} s"


def e_number(log_e: float) -> float:
    """The e-value as a float for `numbers` (capped so it stays finite)."""
    return math.exp(min(log_e, 700.0))


def score(z: float, relation: str, bar: float) -> str:
    """A score test's statistic against its bar, "score z -1.20 > -2.05"; in words when the
    test has too little variance to weigh (fewer events, 5xx or slow requests, in the two
    cohorts than `MIN_SCORE_VARIANCE` needs, so z is infinite): "no score: too few events in
    the two cohorts to weigh (the bar is z ≤ -2.05)", never "score z inf" and never "no
    event" when the canary had a few."""
    if math.isfinite(z):
        return f"score z {z:.2f} {relation} {bar:.2f}"
    return f"no score: too few events in the two cohorts to weigh (the bar is z ≤ {bar:.2f})"
