"""Absolute guard rails on the canary alone: "5xx rate under 2%", "p99 under 500 ms".

Both are sequential tests of a rate against a bar, so a few early bad requests do not trip
them but a sustained excess does within seconds:

* `ErrorRateMax`: bad = 5xx, bar = `max` (a fraction).
* `LatencyMax`: bad = slower than `max` ms, bar = 1 - quantile ("p99 under 500 ms" means
  at most 1% of requests slower than 500 ms). `max` is snapped *up* to a histogram bound,
  so slow requests are never over-counted.

FAIL: H0 rate <= bar, a mixture of capped binomial likelihood ratios over alternatives
bar x {1.25 .. 10}; FAIL at 1/alpha (Ville: P(false FAIL) <= alpha at any number of looks).
The caps (see `evidence`) make a one-second stall weak evidence.
PASS: H_bad rate >= bar, alternatives below the bar; PASS once t >= min bake at 1/beta.
At max bake without a decision: pass "not certified" when a canary at half the bar would
have been certified with the requests seen, otherwise inconclusive. The baseline is not used
(guard rails also run when there is none); no canary data is never a pass.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from immunity.config.models import JudgeConfig
from immunity.domain import CheckResult, Observation, Outcome
from immunity.judge.evidence import BinomialRatios, CappedMixture, Mixture, histogram_quantile
from immunity.judge.sequential import ErrorsJudge, LatencyJudge, TrafficGuard
from immunity.judge.wording import count, e_number, evalue, ms, pct

OVER_RATIOS = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
UNDER_RATIOS = (0.0, 0.1, 0.3, 0.6)


def _dt(t_s: float, last: float) -> float:
    dt = t_s - last
    return dt if dt > 0 else 1.0


class _RateBar:
    """Sequential FAIL/PASS tests of "bad requests / requests <= bar" on the canary."""

    def __init__(self, bar: float, config: JudgeConfig, min_bake_s: float) -> None:
        if not 0.0 < bar < 1.0:
            raise ValueError(f"a rate bar must lie strictly between 0 and 1, got {bar}")
        self.bar = bar
        self.config = config
        self.min_bake_s = min_bake_s
        over = sorted({min(bar * r, 0.999) for r in OVER_RATIOS} - {bar})
        over = [p for p in over if p > bar] or [(bar + 1.0) / 2]
        self.over = BinomialRatios(over, bar)
        self.under = BinomialRatios([bar * r for r in UNDER_RATIOS], bar)
        self.fail = CappedMixture(1, len(over))
        self.passing = Mixture(1, len(UNDER_RATIOS))
        self.half = Mixture(1, len(UNDER_RATIOS))
        self.n = self.x = 0
        self.fail_log_threshold = math.log(1.0 / config.alpha)
        self.pass_log_threshold = math.log(1.0 / config.beta)

    def add(self, t_s: float, dt: float, n: int, x: int) -> None:
        n = max(n, 0)
        x = min(max(x, 0), n)
        self.n += n
        self.x += x
        if n == 0:
            return
        self.fail.add(t_s, dt, self.over(n, x)[None, :])
        self.passing.add(self.under(n, x)[None, :])
        self.half.add(self.under(n, n * self.bar / 2)[None, :])

    def log_fail(self) -> float:
        return float(self.fail.log_e()[0])

    def log_pass(self) -> float:
        return float(self.passing.log_e()[0])

    def log_half(self) -> float:
        return float(self.half.log_e()[0])

    def numbers(self, t_s: float) -> dict[str, float]:
        return {
            "t_s": float(t_s),
            "canary_requests": float(self.n),
            "canary_bad": float(self.x),
            "canary_rate": self.x / self.n if self.n else 0.0,
            "bar": self.bar,
            "e_fail": e_number(self.log_fail()),
            "e_fail_needed": 1.0 / self.config.alpha,
            "e_pass": e_number(self.log_pass()),
            "e_pass_needed": 1.0 / self.config.beta,
        }


class _GuardRail:
    """Shared look/final flow; subclasses say what a bad request is and how to word it."""

    name: str

    def __init__(self, name: str, bar: float, config: JudgeConfig, min_bake_s: float) -> None:
        self.name = name
        self.rate = _RateBar(bar, config, min_bake_s)
        self.config = config
        self.min_bake_s = min_bake_s
        self.guard = TrafficGuard(config.min_traffic_share, needs_baseline=False)
        self.last_t = 0.0
        self.blocked: str | None = None
        self.failed: CheckResult | None = None
        self.passed = False
        self.certified: tuple[float, float] | None = None
        """(t_s, log pass e-value) when the check was first certified under the bar."""

    def _certified(self, log_pass: float) -> str:
        """ "certified under the bar (pass e-value X ≥ 20)" with the e-value that certified
        it: a pass stays a pass, but its e-value may sink afterwards (more errors later in
        the bake), and a sentence "pass e-value 2.63 ≥ 20" is not true."""
        bar = 1 / self.config.beta
        if self.certified is None or log_pass >= self.rate.pass_log_threshold:
            return f"certified under the bar (pass e-value {evalue(log_pass)} ≥ {bar:g})"
        t0, log0 = self.certified
        return (
            f"certified under the bar at {t0:.0f} s (pass e-value {evalue(log0)} ≥ {bar:g}; "
            f"{evalue(log_pass)} now)"
        )

    def _count(self, canary: Observation) -> tuple[int, int] | str:
        raise NotImplementedError

    def _state(self) -> str:
        raise NotImplementedError

    def _result(self, outcome: Outcome, reason: str, t_s: float) -> CheckResult:
        return CheckResult(self.name, outcome, reason, self._numbers(t_s))

    def _numbers(self, t_s: float) -> dict[str, float]:
        return self.rate.numbers(t_s)

    def look(self, t_s: float, canary: Observation, baseline: Observation) -> CheckResult:
        dt = _dt(t_s, self.last_t)
        self.last_t = t_s
        if self.failed is not None:
            return self.failed
        self.blocked = self.guard.check(t_s, dt, canary, baseline)
        if canary.available:
            counted = self._count(canary)
            if isinstance(counted, str):
                self.blocked = counted
            else:
                self.rate.add(t_s, dt, *counted)
        log_fail = self.rate.log_fail()
        alpha, beta = self.config.alpha, self.config.beta
        if log_fail >= self.rate.fail_log_threshold:
            self.failed = self._result(
                Outcome.FAIL, f"{self._state()} (e-value {evalue(log_fail)} ≥ {1 / alpha:g})", t_s
            )
            return self.failed
        if self.blocked is not None:
            return self._result(Outcome.INCONCLUSIVE, self.blocked, t_s)
        log_pass = self.rate.log_pass()
        if t_s >= self.min_bake_s and (self.passed or log_pass >= self.rate.pass_log_threshold):
            self.passed = True
            if self.certified is None:
                self.certified = (t_s, log_pass)
            return self._result(
                Outcome.PASS, f"{self._state()}: {self._certified(log_pass)} after {t_s:.0f} s", t_s
            )
        return self._result(
            Outcome.CONTINUE,
            f"{self._state()} (fail e-value {evalue(log_fail)} of {1 / alpha:g}, pass e-value "
            f"{evalue(log_pass)} of {1 / beta:g})",
            t_s,
        )

    def final(self, t_s: float) -> CheckResult:
        if self.failed is not None:
            return self.failed
        if self.blocked is not None:
            return self._result(Outcome.INCONCLUSIVE, self.blocked, t_s)
        beta = self.config.beta
        log_pass = self.rate.log_pass()
        if self.passed or log_pass >= self.rate.pass_log_threshold:
            return self._result(Outcome.PASS, f"{self._state()}: {self._certified(log_pass)}", t_s)
        log_half = self.rate.log_half()
        if log_half >= self.rate.pass_log_threshold:
            return self._result(
                Outcome.PASS,
                f"max bake reached, passed but not certified: {self._state()} (pass e-value "
                f"{evalue(log_pass)} < {1 / beta:g})",
                t_s,
            )
        return self._result(
            Outcome.INCONCLUSIVE,
            f"insufficient information at max bake: {self._state()}, too few requests to "
            f"certify even a canary at half the bar (e-value {evalue(log_half)} < {1 / beta:g})",
            t_s,
        )


class ErrorRateMax(_GuardRail):
    """Fail when the canary's 5xx rate is, with confidence, above `max_rate`."""

    def __init__(self, name: str, max_rate: float, config: JudgeConfig, min_bake_s: float) -> None:
        super().__init__(name, max_rate, config, min_bake_s)

    def _count(self, canary: Observation) -> tuple[int, int] | str:
        return canary.requests, canary.errors

    def _state(self) -> str:
        r = self.rate
        return (
            f"canary 5xx {pct(r.x / r.n if r.n else 0.0)} of {count(r.n)} requests against a "
            f"bar of {pct(r.bar)}"
        )


class LatencyMax(_GuardRail):
    """Fail when the canary's `quantile` latency is, with confidence, above `max_ms`."""

    def __init__(
        self,
        name: str,
        max_ms: float,
        quantile: float,
        config: JudgeConfig,
        min_bake_s: float,
    ) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must lie strictly between 0 and 1, got {quantile}")
        super().__init__(name, 1.0 - quantile, config, min_bake_s)
        self.max_ms = max_ms
        self.quantile = quantile
        self.snapped: float | None = None
        self.bounds: tuple[float, ...] = ()
        self.index = 0
        self.hist: NDArray[np.int64] | None = None

    def _count(self, canary: Observation) -> tuple[int, int] | str:
        if canary.requests > 0 and not canary.latency_buckets:
            return "the signal has no latency histogram"
        if not canary.latency_buckets:
            return 0, 0
        bounds = tuple(float(b) for b in canary.latency_bounds_ms)
        if bounds != self.bounds:
            snapped = next((b for b in bounds if b >= self.max_ms), None)
            if snapped is None:
                return (
                    f"the latency bar {ms(self.max_ms)} is above the histogram's last bound "
                    f"{ms(bounds[-1]) if bounds else 'n/a'}"
                )
            self.bounds, self.snapped, self.index = bounds, snapped, bounds.index(snapped)
            self.hist = None
        buckets = np.asarray(canary.latency_buckets, dtype=np.int64)
        if len(buckets) != len(bounds) + 1:
            return "latency buckets do not match their bounds (one overflow bucket expected)"
        self.hist = buckets if self.hist is None else self.hist + buckets
        return int(buckets.sum()), int(buckets[self.index + 1 :].sum())

    def _estimate(self) -> float:
        if self.hist is None:
            return math.nan
        return histogram_quantile(self.bounds, self.hist.tolist(), self.quantile)

    def _state(self) -> str:
        r = self.rate
        label = f"p{self.quantile * 100:g}"
        bar = self.snapped if self.snapped is not None else self.max_ms
        return (
            f"canary {label} ≈ {ms(self._estimate())} against a bar of {ms(self.max_ms)}: "
            f"{pct(r.x / r.n if r.n else 0.0)} of {count(r.n)} requests slower than {ms(bar)} "
            f"vs {pct(r.bar)} allowed"
        )

    def _numbers(self, t_s: float) -> dict[str, float]:
        out = self.rate.numbers(t_s)
        estimate = self._estimate()
        if math.isfinite(estimate):
            out["canary_quantile_ms"] = estimate
        out["max_ms"] = float(self.max_ms)
        return out


PROBE_TIMING = (
    "the probe times requests from immunity's own process (network, event loop and a busy "
    "machine included), so its figures bound the host's own from above"
)


class ProbeGuardRail:
    """A guard rail judged on probe traffic: passes on the bar, fails only beside the baseline.

    The probe's requests are timed (and timed out) in immunity's process: on a busy machine
    its p99 is 50-100 times what customers see through the balancer (trial 3: 1,467 ms
    against 15-20 ms), and a request it gives up on counts as an error. Those figures bound
    the host's own from above, so:

    * PASS when the rail on the canary's probe requests passes (`rail`): under the bar as
      timed here, the host was under it too. Also PASS when the canary's probe requests are
      certified no worse than the probe's baseline at the bar (`relative` passes): the probe
      cannot show the host's own figure against an absolute bar, only what the release adds.
    * FAIL only when both fail: the canary's probe requests are over the bar (`rail`) *and*
      worse than the baseline's at the bar (`relative`: the same conditional count test as the
      `errors` and `latency` checks, at that bar, tolerance and all). The comparison fails a
      release no worse than tolerated with probability at most alpha whatever the probe's
      timing adds to both cohorts, so the pair does too (the bar alone does not). A canary
      over the bar only because the probe is slow shows the baseline just as slow, and does
      not fail; with no probe baseline (no host left on the old release) the probe cannot fail
      a guard rail at all, and one over the bar as timed here is inconclusive.
    * Otherwise CONTINUE (or INCONCLUSIVE when the rail cannot be judged).
    """

    def __init__(
        self, rail: ErrorRateMax | LatencyMax, relative: ErrorsJudge | LatencyJudge
    ) -> None:
        self.name = rail.name
        self.rail = rail
        self.relative = relative

    def look(self, t_s: float, canary: Observation, baseline: Observation) -> CheckResult:
        return self._both(
            self.rail.look(t_s, canary, baseline), self.relative.look(t_s, canary, baseline)
        )

    def final(self, t_s: float) -> CheckResult:
        return self._both(self.rail.final(t_s), self.relative.final(t_s), final=True)

    def _both(self, rail: CheckResult, rel: CheckResult, final: bool = False) -> CheckResult:
        numbers = {**rail.numbers, **{f"vs_baseline_{k}": v for k, v in rel.numbers.items()}}

        def out(outcome: Outcome, reason: str) -> CheckResult:
            return CheckResult(self.name, outcome, reason, numbers)

        if rail.outcome is Outcome.FAIL and rel.outcome is Outcome.FAIL:
            return out(
                Outcome.FAIL,
                f"{rail.reason}; and worse than the probe's own baseline at the bar: {rel.reason}",
            )
        if rail.outcome is Outcome.PASS:
            return out(Outcome.PASS, rail.reason)
        if rel.outcome is Outcome.PASS:
            over = "over the bar" if rail.outcome is Outcome.FAIL else "not certified under it"
            return out(
                Outcome.PASS,
                f"no worse than the probe's own baseline at the bar ({rel.reason}); on the "
                f"probe's timing the canary is {over} ({rail.reason}), but {PROBE_TIMING}: "
                "it cannot show the host's own figure against an absolute bar",
            )
        if rail.outcome is Outcome.FAIL:
            if rel.outcome in (Outcome.INCONCLUSIVE, Outcome.ERROR) or final:
                return out(
                    Outcome.INCONCLUSIVE,
                    f"over the bar on the probe's timing ({rail.reason}), but {PROBE_TIMING}, "
                    f"and the comparison with the probe's baseline that could tell the two "
                    f"apart did not decide: {rel.reason}",
                )
            return out(
                Outcome.CONTINUE,
                f"over the bar on the probe's timing ({rail.reason}); not a fail unless the "
                f"canary is also worse than the probe's own baseline ({PROBE_TIMING}): "
                f"{rel.reason}",
            )
        return out(rail.outcome, rail.reason)
