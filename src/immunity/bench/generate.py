"""A labelled set of synthetic releases: one canary host beside nine baseline hosts, per second.

Each scenario lasts 30 s of warm-up, a bake of up to 600 s (`bake.max` = 10 min) and 300 s
more, so that what happens after a pass (the watch: the rest of the deployment and its
guard period) is part of the scenario. Good releases carry the noise a real fleet has
(research notes §6.1):

* traffic: per-host rate 40, 8 or 2 requests/s (`no_traffic`: none at all), a diurnal ramp of ±30% over the run,
  spikes of ×1.5 for 10-40 s (about one per 10 min), the balancer giving the canary
  ×U(0.9, 1.1) of its share; requests are Poisson;
* errors: a base 5xx rate LogUniform(0.1%, 1%) scaled by load, shared dependency bursts
  (+1-10% for 5-20 s, about one per 15 min, every host), host-to-host spread (log-normal,
  sd 0.1; 0.2 for `good_noisy`);
* latency: log-normal, median 50 ms, sigma 0.5, with a 1% slow path at ×6 (healthy p50/p90/
  p99 ≈ 50/97/206 ms), the median scaling with load; shared slowdowns ×1.2-2 for 5-30 s
  (about one per 10 min); host spread sd 0.02 (0.04 for `good_noisy`);
* host-local stalls: one per 30 min per host (one per 10 min for `good_noisy`), 1-3 s long,
  +200-1000 ms, 5% of requests time out;
* the new process's warm-up: canary latency ×(1 + e^(-t/8)) and +3% e^(-t/4) errors.

`good_incident` adds one shared incident that hits every host alike (both cohorts): for
30-90 s, +5-30% errors and latency ×2-4, starting anywhere in the scenario.

Bad releases add one regression to the canary from t = 0: error rate ×1.5, ×2, ×3, ×5, +2
percentage points, 3-s total outages every minute, 50% failures, latency +10% and +50%,
a tail-only regression (slow path 1% -> 4% at ×10), or a slow leak (median ×2 at 10 min).
Late-onset faults start 200 s after the canary took traffic (a leak, a cache that fills, a
cron-like job): errors ×5 (`late_err_x5`) or latency +50% (`late_lat_+50%`).
`incident_err_x5` is errors ×5 with a shared incident as in `good_incident` on top.

`good_drift` is a good release while the whole fleet's latency drifts for good, on *both*
cohorts: from 30-150 s after warm-up, over a ramp of 10-60 s, every host's median moves by
×0.5-0.7 (faster: a cache that warmed, load that moved away; two releases in three) or
×1.5-2 (slower), and stays there. Latency thresholds frozen from the baseline early in the
bake are then far from the baseline's quantiles (faster: almost no request exceeds them).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri

from immunity.bench.scenarios import Header, Scenario, Series, parse_scenario

BOUNDS_MS: tuple[float, ...] = (
    10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 125, 150, 175, 200, 250, 300, 400, 500, 750,
    1000, 1500, 2000, 3000, 5000, 10000,
)  # fmt: skip
HEADER = Header(interval_s=1.0, bounds_ms=BOUNDS_MS)
WARMUP_S = 30
BAKE_S = 600
"""`bake.max`: the bake ends here (after warm-up) with each judge's final verdict."""
WATCH_S = 300
"""Data after the end of the bake: a release that passed stays watched until the end."""
LATE_ONSET_S = 200
"""Late-onset faults start this many seconds after the canary took traffic."""
DRIFT_COUNT = 100
"""`good_drift` releases per rate (the other good kinds have 250 at 40 requests/s)."""
CANARY_HOSTS = 1
BASELINE_HOSTS = 9
RATES = (40.0, 8.0, 2.0)

GOOD_KINDS = ("good", "good_noisy", "good_incident", "good_drift", "no_traffic")
BAD_KINDS = (
    "err_x1.5",
    "err_x2",
    "err_x3",
    "err_x5",
    "err_+2pp",
    "intermittent",
    "err_gross",
    "lat_+10%",
    "lat_+50%",
    "lat_tail",
    "lat_leak",
    "late_err_x5",
    "late_lat_+50%",
    "incident_err_x5",
)
KINDS = GOOD_KINDS + BAD_KINDS


def rate_label(rate: float) -> str:
    return f"{rate:g}rps"


def class_name(kind: str, rate: float) -> str:
    return f"{kind}@{rate_label(rate)}"


@dataclass(frozen=True)
class ClassSpec:
    kind: str
    rate: float
    count: int

    @property
    def name(self) -> str:
        return class_name(self.kind, self.rate)

    @property
    def label(self) -> str:
        return "good" if self.kind in GOOD_KINDS else "bad"


def default_classes(quick: bool = False) -> list[ClassSpec]:
    """The default labelled set: 1,750 good releases (850 at 40 requests/s, 400 at 8, 400 at
    2, 100 without traffic) and 60-100 of each bad kind at each rate."""
    if quick:
        return [
            ClassSpec("good", 40.0, 6),
            ClassSpec("good_noisy", 40.0, 4),
            ClassSpec("no_traffic", 0.0, 2),
            ClassSpec("err_gross", 40.0, 3),
            ClassSpec("err_x5", 40.0, 3),
            ClassSpec("lat_+50%", 40.0, 3),
            ClassSpec("intermittent", 40.0, 2),
            ClassSpec("late_err_x5", 40.0, 2),
        ]
    out: list[ClassSpec] = []
    for rate in RATES:
        good = 250 if rate == RATES[0] else 100
        out += [
            ClassSpec(kind, rate, DRIFT_COUNT if kind == "good_drift" else good)
            for kind in GOOD_KINDS
            if kind != "no_traffic"
        ]
        bad = 100 if rate == RATES[0] else 60
        out += [ClassSpec(kind, rate, bad) for kind in BAD_KINDS]
    out.append(ClassSpec("no_traffic", 0.0, 100))
    return out


def _events(
    rng: np.random.Generator, t_len: int, per_s: float, dur: tuple[float, float]
) -> list[tuple[int, int]]:
    """Random (start, end) intervals: Poisson count at `per_s`, uniform start and length."""
    out = []
    for _ in range(rng.poisson(per_s * t_len)):
        start = int(rng.integers(0, t_len))
        out.append((start, min(t_len, start + round(rng.uniform(*dur)))))
    return out


def _latency_probs(
    median: NDArray[np.float64],
    slow_share: NDArray[np.float64],
    slow_factor: float | NDArray[np.float64],
    added_ms: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Bucket probabilities (..., buckets) of the latency mixture, before timeouts."""
    bounds = np.asarray(BOUNDS_MS)
    shifted = bounds - added_ms[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        logb = np.where(shifted > 0, np.log(np.maximum(shifted, 1e-12)), -np.inf)
    sigma = 0.5
    fast = ndtr((logb - np.log(median)[..., None]) / sigma)
    slow = ndtr((logb - np.log(median * slow_factor)[..., None]) / sigma)
    share = slow_share[..., None]
    cdf = (1 - share) * fast + share * slow
    cdf = np.concatenate([cdf, np.ones((*cdf.shape[:-1], 1))], axis=-1)
    probs = np.diff(cdf, axis=-1, prepend=0.0)
    probs = np.clip(probs, 0.0, None)
    return np.asarray(probs / probs.sum(axis=-1, keepdims=True), dtype=np.float64)


def host_effect(host_err: NDArray[np.float64], host_lat: NDArray[np.float64]) -> dict[str, float]:
    """The canary host's own effect against the baseline's hosts, before any regression: its
    error-rate ratio (host 0 against the mean of hosts 1..) and the largest latency odds
    ratio of exceeding the baseline's p50/p90/p99 that its median's ratio implies (log-normal,
    sigma 0.5). A good release whose canary host is beyond the judge's tolerance (x1.25) is
    one the judge may rightly fail: its canary *is* worse than tolerated, by the host alone."""
    err = float(host_err[0] / host_err[1:].mean())
    shift = math.log(float(host_lat[0] / host_lat[1:].mean())) / 0.5
    odds = 0.0
    for q in (0.5, 0.9, 0.99):
        z = float(ndtri(q))
        p_b, p_c = 1.0 - q, float(ndtr(shift - z))
        odds = max(odds, p_c / (1.0 - p_c) / (p_b / (1.0 - p_b)))
    return {"canary_error_ratio": round(err, 4), "canary_latency_odds": round(odds, 4)}


def generate(spec: ClassSpec, index: int, seed: int) -> dict[str, Any]:
    """One labelled scenario, as the JSON object a scenario file holds on one line.

    The same (class, index, seed) always gives the same scenario.
    """
    key = zlib.crc32(spec.name.encode())
    rng = np.random.default_rng(np.random.SeedSequence([seed, key, index]))
    kind, rate = spec.kind, spec.rate
    rate = 0.0 if kind == "no_traffic" else rate
    t_len = WARMUP_S + BAKE_S + WATCH_S
    t = np.arange(t_len, dtype=np.float64)
    hosts = CANARY_HOSTS + BASELINE_HOSTS  # host 0 is the canary
    noisy = kind == "good_noisy"

    # Traffic, shared by every host.
    drift = 1.0 + rng.uniform(-0.3, 0.3) * t / t_len
    load = drift.copy()
    for a, b in _events(rng, t_len, 1 / 600, (10, 40)):
        load[a:b] *= 1.5
    weight = np.ones(hosts)
    weight[0] = rng.uniform(0.9, 1.1)
    requests = rng.poisson(rate * weight[:, None] * load[None, :])

    # Errors.
    p0 = math.exp(rng.uniform(math.log(0.001), math.log(0.01)))
    host_err = np.exp(rng.normal(0.0, 0.2 if noisy else 0.1, hosts))
    p = p0 * host_err[:, None] * load[None, :]
    for a, b in _events(rng, t_len, 1 / 900, (5, 20)):
        p[:, a:b] += rng.uniform(0.01, 0.10)
    p[0] += 0.03 * np.exp(-t / 4.0)

    # Latency.
    host_lat = np.exp(rng.normal(0.0, 0.04 if noisy else 0.02, hosts))
    median = 50.0 * host_lat[:, None] * np.sqrt(load)[None, :]
    for a, b in _events(rng, t_len, 1 / 600, (5, 30)):
        median[:, a:b] *= rng.uniform(1.2, 2.0)
    median[0] *= 1.0 + np.exp(-t / 8.0)
    slow_share = np.full((hosts, t_len), 0.01)
    slow_factor = np.full((hosts, t_len), 6.0)
    added = np.zeros((hosts, t_len))
    timeout = np.zeros((hosts, t_len))
    stall_rate = 1 / 600 if noisy else 1 / 1800
    for h in range(hosts):
        for a, b in _events(rng, t_len, stall_rate, (1, 3)):
            added[h, a:b] += rng.uniform(200.0, 1000.0)
            timeout[h, a:b] = 0.05

    meta: dict[str, Any] = {"p0": round(p0, 6), **host_effect(host_err, host_lat)}

    # The regression, on the canary only.
    if kind == "incident_err_x5":
        p[0] *= 5.0
    elif kind.startswith("err_x"):
        p[0] *= float(kind.removeprefix("err_x"))
    elif kind == "err_+2pp":
        p[0] += 0.02
    elif kind == "err_gross":
        p[0] = np.maximum(p[0], 0.5)
    elif kind == "intermittent":
        phase = int(rng.integers(0, 60))
        starts = list(range(phase, t_len, 60))
        for s in starts:
            p[0, s : s + 3] = 1.0
        meta["outage_starts_s"] = starts
    elif kind == "lat_+10%":
        median[0] *= 1.1
    elif kind == "lat_+50%":
        median[0] *= 1.5
    elif kind == "lat_tail":
        slow_share[0] = 0.04
        slow_factor[0] = 10.0
    elif kind == "lat_leak":
        median[0] *= 1.0 + t / BAKE_S
    elif kind == "late_err_x5":
        p[0, LATE_ONSET_S:] *= 5.0
        meta["onset_s"] = LATE_ONSET_S
    elif kind == "late_lat_+50%":
        median[0, LATE_ONSET_S:] *= 1.5
        meta["onset_s"] = LATE_ONSET_S
    if kind in ("good_incident", "incident_err_x5"):
        # One shared incident (a dependency down or slow): every host alike, both cohorts.
        a = int(rng.integers(60, t_len - 90))
        b = a + int(rng.integers(30, 91))
        p[:, a:b] += rng.uniform(0.05, 0.30)
        median[:, a:b] *= rng.uniform(2.0, 4.0)
        meta["incident_s"] = [a, b]
    if kind == "good_drift":
        # The whole fleet's latency moves for good (both cohorts alike), mid-bake.
        a = WARMUP_S + int(rng.integers(30, 151))
        ramp = int(rng.integers(10, 61))
        f = rng.uniform(0.5, 0.7) if rng.uniform() < 2 / 3 else rng.uniform(1.5, 2.0)
        shift = np.ones(t_len)
        shift[a : a + ramp] = np.linspace(1.0, f, ramp + 1)[1:][: t_len - a]
        shift[a + ramp :] = f
        median *= shift[None, :]
        meta["drift"] = {"from_s": a, "ramp_s": ramp, "factor": round(float(f), 3)}
    p = np.clip(p, 0.0, 1.0)

    timeouts = rng.binomial(requests, timeout)
    served = requests - timeouts
    errors = rng.binomial(served, p) + timeouts
    probs = _latency_probs(median, slow_share, slow_factor, added)
    latency = rng.multinomial(served, probs)
    latency[..., -1] += timeouts  # a timed-out request is slower than every bound

    canary = Series(requests[0], errors[0], latency[0])
    baseline = Series(requests[1:].sum(axis=0), errors[1:].sum(axis=0), latency[1:].sum(axis=0))
    by_host = tuple(Series(requests[h], errors[h], latency[h]) for h in range(1, hosts))
    scenario = Scenario(
        id=f"{spec.name}#{index}",
        label=spec.label,
        cls=spec.name,
        canary_hosts=CANARY_HOSTS,
        baseline_hosts=BASELINE_HOSTS,
        warmup_s=float(WARMUP_S),
        canary=canary,
        baseline=baseline,
        meta=meta,
        baseline_by_host=by_host,
    )
    return scenario.to_obj()


def build(spec: ClassSpec, index: int, seed: int) -> Scenario:
    """Generate one scenario and read it back through the scenario-file parser."""
    obj = generate(spec, index, seed)
    return parse_scenario(obj, HEADER, f"generated {obj['id']}")
