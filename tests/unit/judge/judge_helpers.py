"""Helpers for the judge tests: synthetic cohorts, one interval at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from immunity.domain import Observation

BOUNDS: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 125, 150, 175, 200, 250, 300, 400, 500, 750, 1000)  # fmt: skip


def histogram(rng: np.random.Generator, n: int, median_ms: float) -> list[int]:
    """Bucket counts of n log-normal latencies (sigma 0.5) around `median_ms`."""
    lat = median_ms * np.exp(0.5 * rng.standard_normal(n))
    idx = np.searchsorted(np.asarray(BOUNDS), lat, side="left")
    return np.bincount(idx, minlength=len(BOUNDS) + 1).tolist()


Stream = Callable[..., Iterator[tuple[float, Observation, Observation]]]


def make_stream() -> Stream:
    """Intervals (t_s, canary, baseline): 1 canary host vs 9 baseline hosts, Poisson traffic."""

    def make(
        seed: int,
        seconds: int = 300,
        rate: float = 50.0,
        canary_error: float = 0.005,
        baseline_error: float = 0.005,
        canary_ms: float = 50.0,
        baseline_ms: float = 50.0,
        canary_share: float = 1.0,
    ) -> Iterator[tuple[float, Observation, Observation]]:
        rng = np.random.default_rng(seed)
        for t in range(1, seconds + 1):
            n_c = int(rng.poisson(rate * canary_share))
            n_b = int(rng.poisson(rate * 9))
            canary = Observation(
                n_c,
                int(rng.binomial(n_c, canary_error)),
                BOUNDS,
                histogram(rng, n_c, canary_ms),
                hosts=1,
            )
            baseline = Observation(
                n_b,
                int(rng.binomial(n_b, baseline_error)),
                BOUNDS,
                histogram(rng, n_b, baseline_ms),
                hosts=9,
            )
            yield float(t), canary, baseline

    return make
