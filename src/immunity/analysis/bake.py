"""The bake loop: every interval, ask each signal about the two cohorts, judge, journal the look.

The bake starts when the first canary of a wave is back in the pool. Each look asks every
signal what the two cohorts did over the last interval (ending `bake.lag` before now so late
log lines count), feeds `BakeAnalysis`, and journals the look's whole evidence
(`bake.looked`, see `evidence`) before acting on it. Cohorts are recomputed at every look by
the caller's `cohorts()`: *canary* = in-pool hosts on the new release, *baseline* = in-pool
hosts on the old one.

A resumed bake (`evidence=` the journaled looks of the bake that was interrupted) replays them
into fresh judges and continues: its bake time goes on from the last recorded look (the time
the orchestrator was down is not bake time), its evidence is whatever the judges had.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio

from immunity.analysis.evidence import (
    BAKE_LOOKED,
    BAKE_STARTED,
    FORMAT,
    Look,
    LookWriter,
    check_started_data,
)
from immunity.analysis.wave import BakeAnalysis, Step
from immunity.clock import SYSTEM_CLOCK, Clock
from immunity.config.models import Config
from immunity.domain import Cohort, HostRef, Observation, ObservationStatus, Verdict
from immunity.errors import ImmunityError
from immunity.signals.base import SignalSource, begin, delay_of, resolution_of, vet
from immunity.signals.probe import NAME as PROBE
from immunity.signals.probe import ProbeSource, customer_traffic

log = logging.getLogger("immunity.analysis")

BAKE_RESUMED = "bake.resumed"
BAKE_FINISHED = "bake.finished"


class Record(Protocol):
    """Where the bake journals (the engine's `Recorder`): durable before it returns."""

    async def record(
        self,
        kind: str,
        message: str = "",
        *,
        host: str | None = None,
        step: str | None = None,
        **data: Any,
    ) -> object: ...


@dataclass(frozen=True)
class Cohorts:
    canary: Sequence[HostRef]
    baseline: Sequence[HostRef]


@dataclass
class BakeResult:
    verdict: Verdict
    started_at: dt.datetime
    seconds: float
    looks: int = 0
    frozen: dict[str, list[float]] = field(default_factory=dict)


async def bake(
    signals: Mapping[str, SignalSource],
    config: Config,
    rec: Record,
    cohorts: Callable[[], Cohorts],
    **kw: Any,
) -> BakeResult:
    """Judge until a verdict (see `_bake` for the arguments).

    With a `probe` configured, probe traffic goes to both cohorts for the whole bake, steered
    after every look by the customers' traffic (see `immunity.signals.probe`); every check
    also judges it as a "(probe)" twin (see `BakeAnalysis`).
    """
    probe = signals.get(PROBE)
    if not isinstance(probe, ProbeSource):
        return await _bake(signals, config, rec, cohorts, None, **kw)

    def probed() -> dict[Cohort, Sequence[HostRef]]:
        now = cohorts()
        return {Cohort.CANARY: now.canary, Cohort.BASELINE: now.baseline}

    async with probe.sending(probed):
        return await _bake(signals, config, rec, cohorts, probe, **kw)


async def _bake(
    signals: Mapping[str, SignalSource],
    config: Config,
    rec: Record,
    cohorts: Callable[[], Cohorts],
    probe: ProbeSource | None,
    *,
    wave: int,
    bake_no: int,
    relative: bool,
    may_pass: Callable[[], bool] = lambda: True,
    thresholds: dict[str, list[float]] | None = None,
    evidence: Sequence[Look] = (),
    purpose: Literal["wave", "guard"] = "wave",
    bakes: int = 1,
    clock: Clock = SYSTEM_CLOCK,
) -> BakeResult:
    """Judge until a verdict. `relative=False` keeps only the absolute guard rails (no baseline).

    `thresholds` carries latency thresholds between the bakes of one deployment (see
    `BakeAnalysis`); filled in place when this bake freezes them. `evidence` is the journaled
    looks of this bake when it is resumed. `bakes` is how many bakes watch the deployment
    (they share the false-alarm bound, see `spending`); `purpose="guard"` is the watch after
    the last wave (ends on a fail, or passes after `guard.duration`). Raises only what the journal raises
    (`JournalError`, `LeaseLost`); a failing signal is evidence (`error`), not an exception.
    """
    b = config.bake
    carry = thresholds if thresholds is not None else {}
    analysis = BakeAnalysis(
        config, relative=relative, carry=carry, bakes=bakes, purpose=purpose, bake_no=bake_no
    )
    writer = LookWriter(wave=wave, bake=bake_no)
    started_at = clock.now()
    last_t = 0.0
    step: Step | None = None
    if evidence:
        step = analysis.replay(
            (lk.t_s, lk.observations, lk.errored) for lk in evidence if lk.bake == bake_no
        )
        for lk in evidence:
            writer.looks = max(writer.looks, lk.look)
            writer.canary = set(lk.canary)
            writer.baseline = set(lk.baseline)
            last_t = max(last_t, lk.t_s)
        # the next look's deltas start from what was journaled last
        writer.outcomes = {n: c.outcome for lk in evidence for n, c in lk.checks.items()}
        writer.last_outcome = evidence[-1].outcome
        await rec.record(
            BAKE_RESUMED,
            f"wave {wave}: continuing the bake from {len(evidence)} recorded look(s) at "
            f"{last_t:.0f} s",
            wave=wave,
            bake=bake_no,
            looks=len(evidence),
            t_s=last_t,
        )
        writer.bounds = {}  # bounds are repeated once after a resume: a reader may start here
    else:
        bars = check_started_data([j.final(0.0) for _, _, j in analysis.judges])  # no state
        await rec.record(
            BAKE_STARTED,
            f"{'guard' if purpose == 'guard' else f'wave {wave}'}: {analysis.judging()}",
            wave=wave,
            bake=bake_no,
            purpose=purpose,
            evidence=FORMAT,
            checks=analysis.names,
            kinds={c.name: c.kind for c in analysis.checks},
            signals={c.name: c.signal for c in analysis.checks},
            needed=bars,
            relative=relative,
            bakes=bakes,
            alpha=analysis.judge_config.alpha,
            alpha_catastrophe=analysis.judge_config.alpha_catastrophe,
            carried={k: v for k, v in carry.items()},
            interval_s=b.interval,
            min_s=b.min,
            max_s=config.guard.duration if purpose == "guard" else b.max,
        )
    if step is not None and step.decision is not None:
        return await _finish(
            rec, wave, bake_no, step.decision, started_at, last_t, writer.looks, carry, clock
        )
    t0 = clock.monotonic() - last_t
    if b.settle and not evidence:
        await clock.sleep(b.settle)
    # Each signal's windows end its own delay before now (at least `bake.lag`): an access
    # log is complete at once, a metrics store only after its scrape or ingest lag. A fresh
    # bake's first window starts when the bake does (earlier data is not the canary's); a
    # signal looks as soon as its delay allows, and is asked nothing until then.
    delays = {n: max(b.lag, delay_of(signals[n])) for n in analysis.signals}
    # sources that diff cumulative counters take the reading that opens the first window
    # now, so the first look counts (a reading from before the bake would be stale)
    await _begin_all(signals, analysis.signals, clock.now(), b.interval)
    began = clock.now()
    starts = {
        n: began if not evidence else began - dt.timedelta(seconds=d) for n, d in delays.items()
    }
    window_start = began if not evidence else began - dt.timedelta(seconds=b.lag)
    asked = dict(starts)  # each signal's last window end asked for, read or errored
    while True:
        await clock.sleep(max(0.0, b.interval - ((clock.monotonic() - t0) % b.interval)))
        # bake time is kept to the millisecond, as journaled, so a replay is exact
        t_s = round(clock.monotonic() - t0, 3)
        wall = clock.now()
        end = wall - dt.timedelta(seconds=b.lag)
        windows = {}
        for n, d in delays.items():
            hi = _align(wall - dt.timedelta(seconds=d), resolution_of(signals[n]))
            # due once its end passed the last end it was asked for (a whole step of its
            # resolution later); not due: a window that ends before it starts
            windows[n] = (starts[n] if hi > asked[n] else asked[n], hi)
        now = cohorts()
        observations, errored = await _observe_all(
            signals, analysis.signals, now, windows, b.interval
        )
        for n, (lo, hi) in windows.items():
            if hi <= lo:
                continue  # not due: not asked
            asked[n] = hi
            # a read that errored (raised, timed out, or answered `failed`) fed the judge
            # nothing: the next look asks again from the same start, so that window's
            # requests reach the judge once (never lost, never counted twice)
            if n in errored or any(
                o.status is ObservationStatus.FAILED for o in observations.get(n, {}).values()
            ):
                continue
            starts[n] = max(lo, hi)
        if probe is not None:
            need = analysis.need(observations, len(now.canary), len(now.baseline))
            probe.steer(t_s - last_t, customer_traffic(observations, len(now.canary)), need)
        step = analysis.look(t_s, observations, errored=errored, may_pass=may_pass())
        await rec.record(
            BAKE_LOOKED,
            step.verdict.reason,
            **writer.encode(
                t_s=t_s,
                window=(window_start.timestamp(), end.timestamp()),
                canary=[h.name for h in now.canary],
                baseline=[h.name for h in now.baseline],
                observations=observations,
                verdict=step.verdict,
                frozen=step.frozen,
                errored=errored,
                windows={n: (lo.timestamp(), hi.timestamp()) for n, (lo, hi) in windows.items()},
            ),
            **({"probe": probe.state} if probe is not None else {}),
        )
        window_start = end
        last_t = t_s
        if step.decision is not None:
            return await _finish(
                rec, wave, bake_no, step.decision, started_at, t_s, writer.looks, carry, clock
            )


def _align(t: dt.datetime, resolution: float) -> dt.datetime:
    """`t` rounded down to a multiple of `resolution` seconds (unchanged when 0)."""
    if resolution <= 0:
        return t
    ts = t.timestamp()
    return dt.datetime.fromtimestamp(ts - (ts % resolution), dt.UTC)


async def _finish(
    rec: Record,
    wave: int,
    bake_no: int,
    verdict: Verdict,
    started_at: dt.datetime,
    t_s: float,
    looks: int,
    carry: dict[str, list[float]],
    clock: Clock,
) -> BakeResult:
    decided = Verdict(verdict.outcome, verdict.reason, verdict.checks, clock.now())
    await rec.record(
        BAKE_FINISHED,
        decided.reason,
        wave=wave,
        bake=bake_no,
        outcome=str(decided.outcome),
        t_s=t_s,
        looks=looks,
    )
    return BakeResult(decided, started_at, t_s, looks, dict(carry))


async def _begin_all(
    signals: Mapping[str, SignalSource], names: set[str], at: dt.datetime, interval: float
) -> None:
    """Every source's `begin(at)` at once, each within the look's deadline. A source that
    fails or does not answer is only logged: its first look says what is wrong with it."""
    timeout = max(2.0, interval * 3)

    async def one(name: str) -> None:
        try:
            with anyio.fail_after(timeout):
                await begin(signals[name], at)
        except TimeoutError:
            log.warning("signal %s: no first reading within %gs", name, timeout)
        except ImmunityError as exc:
            log.warning("signal %s: no first reading: %s", name, exc)
        except Exception:  # a third-party source's bug: its looks will say so
            log.exception("signal %s raised an unexpected error at the bake's start", name)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)


async def _observe_all(
    signals: Mapping[str, SignalSource],
    names: set[str],
    cohorts: Cohorts,
    windows: Mapping[str, tuple[dt.datetime, dt.datetime]],
    interval: float,
) -> tuple[dict[str, dict[Cohort | str, Observation]], dict[str, str]]:
    """Each signal's observation per cohort over its window, and the signals that errored
    (raised, timed out) with why.

    Every answer is vetted (`signals.base.vet`): a partial, stale or implausible one is a
    rejected observation naming why, never evidence. A signal whose window has not opened
    yet (its delay, or not a whole step of its resolution) is not asked and left out.
    """
    out: dict[str, dict[Cohort | str, Observation]] = {}
    errored: dict[str, str] = {}
    timeout = max(2.0, interval * 3)
    members = {Cohort.CANARY: cohorts.canary, Cohort.BASELINE: cohorts.baseline}

    async def one(name: str) -> None:
        src = signals[name]
        start, end = windows[name]
        if end <= start:
            return  # not due yet (its delay or resolution): not asked, not a look for it
        try:
            with anyio.fail_after(timeout):
                obs = await src.observe(members, start, end)
        except TimeoutError:
            errored[name] = f"did not answer within {timeout:g}s"
            return
        except ImmunityError as exc:
            log.warning("signal %s failed: %s", name, exc)
            errored[name] = exc.message
            return
        except Exception as exc:  # a third-party source's bug: no evidence, never a pass
            log.exception("signal %s raised an unexpected error", name)
            errored[name] = f"{type(exc).__name__}: {exc}"
            return
        window_s = (end - start).total_seconds()
        got: dict[Cohort | str, Observation] = {
            c: vet(
                obs.get(c, Observation.missing(f"no {c} observation")), window_s, len(members[c])
            )
            for c in (Cohort.CANARY, Cohort.BASELINE)
        }
        out[name] = got  # a `failed` observation counts as an error (BakeAnalysis.look)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)
    return out, errored
