"""Bake: judge the canary against the live baseline, every interval, and stop early either way.

The bake starts when the first canary of a wave is back in the pool. Each look asks every
signal what the two cohorts did over the last interval (ending `bake.lag` before now so
late log lines count), feeds each check's judge, and combines the results. Cohorts are
recomputed at every look from what is serving: *canary* = in-pool hosts on the new release,
*baseline* = in-pool hosts on the old one.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio

from immunity.domain import CheckResult, Cohort, HostRef, Observation, Outcome, Verdict, utcnow
from immunity.engine.context import Fleet
from immunity.engine.record import Recorder
from immunity.errors import ImmunityError
from immunity.judge import build_judge, combine
from immunity.judge.base import Judge

log = logging.getLogger("immunity.engine")

GUARD_KINDS = ("error_rate_max", "latency_max")


@dataclass(frozen=True)
class Cohorts:
    canary: Sequence[HostRef]
    baseline: Sequence[HostRef]


@dataclass
class BakeResult:
    verdict: Verdict
    started_at: dt.datetime
    seconds: float


async def bake(
    fleet: Fleet,
    rec: Recorder,
    cohorts: Callable[[], Cohorts],
    *,
    wave: int,
    relative: bool,
    may_pass: Callable[[], bool] = lambda: True,
    thresholds: dict[str, list[float]] | None = None,
) -> BakeResult:
    """Judge until a verdict. `relative=False` keeps only the absolute guard rails (no baseline).

    `thresholds` carries latency thresholds between the waves of one deployment: the old
    release's latency does not change from wave to wave, so the thresholds frozen from the
    baseline in the first bake are reused, and later waves (with a smaller baseline) need not
    freeze them again. Filled in place when a bake freezes them.
    """
    cfg = fleet.config
    b = cfg.bake
    carry = thresholds if thresholds is not None else {}
    checks = [c for c in cfg.checks if relative or c.kind in GUARD_KINDS]
    for i, c in enumerate(checks):
        if c.kind == "latency" and c.thresholds_ms is None and c.name in carry:
            checks[i] = c.model_copy(update={"thresholds_ms": carry[c.name]})
    judges: list[tuple[str, str, Judge]] = [
        (c.name, c.signal, build_judge(c, cfg.judge, b.min)) for c in checks
    ]

    def keep_thresholds() -> None:
        for name, _, judge in judges:
            frozen = getattr(judge, "thresholds", None)
            if frozen and all(t is not None for t in frozen) and name not in carry:
                carry[name] = [float(t) for t in frozen]

    started_at = utcnow()
    t0 = time.monotonic()
    rec.record(
        "bake.started",
        f"wave {wave}: judging {len(judges)} check(s)",
        wave=wave,
        checks=[name for name, _, _ in judges],
        relative=relative,
    )
    if b.settle:
        await anyio.sleep(b.settle)
    window_start = utcnow() - dt.timedelta(seconds=b.lag)
    inconclusive_since: float | None = None
    looks = 0
    while True:
        await anyio.sleep(max(0.0, b.interval - ((time.monotonic() - t0) % b.interval)))
        t_s = time.monotonic() - t0
        end = utcnow() - dt.timedelta(seconds=b.lag)
        now_cohorts = cohorts()
        observations = await _observe_all(
            fleet, {s for _, s, _ in judges}, now_cohorts, window_start, end
        )
        window_start = end
        looks += 1
        results: list[CheckResult] = []
        for name, signal, judge in judges:
            canary, baseline = observations[signal]
            results.append(_named(name, judge.look(t_s, canary, baseline)))
        verdict = combine(results, t_s, utcnow()) if results else _no_checks(t_s, b.min)
        if looks == 1 or looks % 10 == 0 or verdict.outcome is not Outcome.CONTINUE:
            rec.record(
                "verdict.looked",
                verdict.reason,
                wave=wave,
                t_s=round(t_s, 2),
                outcome=str(verdict.outcome),
                canary=[h.name for h in now_cohorts.canary],
                baseline=[h.name for h in now_cohorts.baseline],
            )
        keep_thresholds()
        if verdict.outcome is Outcome.FAIL:
            return BakeResult(verdict, started_at, t_s)
        if verdict.outcome is Outcome.PASS and t_s >= b.min and may_pass():
            return BakeResult(verdict, started_at, t_s)
        if verdict.outcome is Outcome.INCONCLUSIVE:
            inconclusive_since = inconclusive_since if inconclusive_since is not None else t_s
            if t_s - inconclusive_since >= cfg.judge.inconclusive_limit:
                return BakeResult(verdict, started_at, t_s)
        else:
            inconclusive_since = None
        if t_s >= b.max and may_pass():
            finals = [_named(name, judge.final(t_s)) for name, _, judge in judges]
            final = combine(finals, t_s, utcnow()) if finals else _no_checks(t_s, b.min)
            if final.outcome is Outcome.CONTINUE:
                final = Verdict(
                    Outcome.INCONCLUSIVE,
                    f"max bake {b.max:g}s reached: {final.reason}",
                    final.checks,
                    utcnow(),
                )
            return BakeResult(final, started_at, t_s)


def _named(name: str, r: CheckResult) -> CheckResult:
    return r if r.name == name else CheckResult(name, r.outcome, r.reason, r.numbers)


def _no_checks(t_s: float, min_bake: float) -> Verdict:
    outcome = Outcome.PASS if t_s >= min_bake else Outcome.CONTINUE
    return Verdict(outcome, f"no checks configured; baked {t_s:.0f}s", (), utcnow())


async def _observe_all(
    fleet: Fleet,
    names: set[str],
    cohorts: Cohorts,
    start: dt.datetime,
    end: dt.datetime,
) -> dict[str, tuple[Observation, Observation]]:
    out: dict[str, tuple[Observation, Observation]] = {}
    timeout = max(2.0, fleet.config.bake.interval * 3)

    async def one(name: str) -> None:
        src = fleet.signals[name]
        try:
            with anyio.fail_after(timeout):
                obs = await src.observe(
                    {Cohort.CANARY: cohorts.canary, Cohort.BASELINE: cohorts.baseline}, start, end
                )
            out[name] = (
                obs.get(Cohort.CANARY, Observation.missing("no canary observation")),
                obs.get(Cohort.BASELINE, Observation.missing("no baseline observation")),
            )
        except TimeoutError:
            miss = Observation.missing(f"signal {name} did not answer within {timeout:g}s")
            out[name] = (miss, miss)
        except ImmunityError as exc:
            log.warning("signal %s failed: %s", name, exc)
            miss = Observation.missing(f"signal {name} failed: {exc.message}")
            out[name] = (miss, miss)
        except Exception as exc:  # a third-party source's bug: no data, never a pass
            log.exception("signal %s raised an unexpected error", name)
            miss = Observation.missing(f"signal {name} failed: {type(exc).__name__}: {exc}")
            out[name] = (miss, miss)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)
    return out
