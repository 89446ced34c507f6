"""A deployment: preflight → waves (switch + bake) → done, or the immune response.

    preflight   `immunity.fleet.preflight`: config valid, every adapter answers, every host
                serves a release (its fallback), the release exists; run with the app's
                lease held (`Run`).
    waves       hosts of a wave are admitted one by one as capacity allows and switch in
                parallel; the bake starts when the wave's first canary is back in the pool
                and judges until a verdict. A host that fails past `max_failed_hosts` (or a
                signal) stops admitting at once: no task waits for a slot that will not come.
    outcome     a `RunOutcome`: deployed | reverted | inconclusive | aborted (`resume
                --abort`) | revert_incomplete | held | interrupted | terminated (see
                engine/run.py for superseded and failed).

Everything is journaled before and after; `resume` continues from the journal.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import anyio

from immunity.analysis import Cohorts
from immunity.analysis.bake import bake
from immunity.analysis.spending import bakes_of
from immunity.domain import CheckResult, HostRef, LbState, Outcome, Verdict
from immunity.engine.immune import immune_response, revert
from immunity.engine.plan import plan_waves, with_holdback
from immunity.engine.result import RunOutcome, RunResult
from immunity.engine.run import Run, StoppedBeforeStart, first_immunity_error
from immunity.errors import (
    CapacityExhausted,
    ImmunityError,
    JournalError,
    LeaseLost,
    StepFailed,
)
from immunity.fleet.context import Fleet
from immunity.fleet.preflight import preflight
from immunity.fleet.state import FleetView, HostPhase, encode
from immunity.impact import ImpactProbe
from immunity.impact import phases as impact_phases
from immunity.journal.base import DeploymentRecord

log = logging.getLogger("immunity.engine")

ABORTED_BY = "aborted with `resume --abort`"
"""How an aborted run's reason begins (the revert's reason, and the run's)."""


async def deploy(
    fleet: Fleet, release: str, *, handle_signals: bool = True, force: bool = False
) -> RunResult:
    """Roll `release` over the fleet. Raises PreflightError / LeaseHeld before anything is
    touched; otherwise returns how the run ended. When every host already serves `release`
    (in the pool) the run ends `unchanged` at once, touching no host; with `force` every
    host is walked again (drain, restart, warm up, enable) and baked on the guard rails
    (there is no other release to compare with)."""

    async def prepare() -> dict[str, object]:
        # `force` is journaled: a resume of an interrupted forced run walks the hosts it had
        # not walked yet (they already serve the release, and would be skipped otherwise)
        return {"fallbacks": await preflight(fleet, release)} | ({"force": True} if force else {})

    try:
        async with Run(fleet, release, prepare=prepare, handle_signals=handle_signals) as run:
            await Rollout(run, force=force).go()
    except StoppedBeforeStart as stopped:  # a signal during preflight: nothing touched
        return stopped.result
    return run.result


async def continue_deployment(
    fleet: Fleet, record: DeploymentRecord, *, abort: bool = False
) -> RunResult:
    """Take an interrupted deployment over (a fresh fencing token) and finish or undo it."""
    async with Run(fleet, record.release, resume=record) as run:
        await Rollout(run, force=bool(record.data.get("force"))).go(abort=abort)
    return run.result


# -- the waves --------------------------------------------------------------------------


class Rollout:
    """The body of a deployment run: waves, bakes, the guard, and the immune response."""

    def __init__(self, run: Run, *, force: bool = False) -> None:
        self.run = run
        # walk hosts already on the release again (`deploy --force`, journaled in the
        # record's data: a resume honours it, walking each host this run has not switched)
        self.force = force
        self.fleet = run.fleet
        self.release = run.release
        self.view = run.view  # the run's FleetState: every entry folded as it is appended
        self.fallbacks: dict[str, str] = {
            str(k): str(v) for k, v in dict(run.data.get("fallbacks", {})).items()
        }
        self.holdback: HostRef | None = None  # kept on the old release through the guard
        self.bakes = 1  # bakes watching this deployment (they share the false-alarm bound)

    def cohorts(self) -> Cohorts:
        """The cohorts as the run's view says now (see `FleetState`)."""
        v = self.view
        return Cohorts(
            [h for h in self.fleet.hosts if h.name in v.canary],
            [h for h in self.fleet.hosts if h.name in v.baseline],
        )

    def detected_after_s(self, *, since_canary: bool = True) -> float:
        """From the run's first canary in (else its start) to now, in seconds."""
        v = self.view
        since = (
            (v.first_canary_at if since_canary else None) or v.began_at or self.fleet.clock.now()
        )
        return round(max(0.0, (self.fleet.clock.now() - since).total_seconds()), 3)

    def detected_before_resume(self) -> float | None:
        """`detected_after_s` of a failing verdict journaled before this run took the
        revert over: from the first canary in (a host step's failure: from the start) to
        the verdict's `decided_at`, as the journal has them; None without a failing one."""
        v = self.view.last_verdict
        decided = v.get("decided_at")
        if v.get("outcome") != "fail" or not decided:
            return None
        host_steps = any(c.get("name") == "host-steps" for c in v.get("checks") or [])
        since = (None if host_steps else self.view.first_canary_at) or self.view.began_at
        if since is None:
            return None
        at = dt.datetime.fromisoformat(str(decided))
        return round(max(0.0, (at - since).total_seconds()), 3)

    async def go(self, *, abort: bool = False) -> None:
        run, cfg = self.run, self.fleet.config
        waves, self.holdback = with_holdback(
            plan_waves(self.fleet.hosts, cfg.waves),
            guard_s=cfg.guard.duration,
            holdback=cfg.guard.holdback,
        )
        self.bakes = bakes_of(cfg, len(waves))
        plan = [[h.name for h in w] for w in waves]
        if self.holdback is not None:
            plan.append([self.holdback.name])
        try:
            # observe: where the balancer and the hosts are now, journaled (and so folded
            # into the run's view over what the journal said before)
            seen: dict[str, Any] = {"holder": run.lease.holder, "waves": plan}
            observed = (await self.fleet.observe()).states
            seen["observed"] = encode(observed)
            if run.resumed:
                what = f"resuming {self.release}" + (" to abort it" if abort else "")
                back = put_back(run.view.view(), observed)
                if back:  # what a run that lost its journal did unjournaled, said now
                    seen["put_back"] = back
                    what += "; " + "; ".join(
                        f"{h} found serving {r} in the pool though its journaled walk stopped "
                        "mid-step (put back unjournaled by the run whose journal failed)"
                        for h, r in sorted(back.items())
                    )
                await run.rec.record(
                    "deployment.resumed", what, token=run.lease.token, abort=abort, **seen
                )
            else:
                await run.rec.record(
                    "deployment.started",
                    f"deploying {self.release} to {len(self.fleet.hosts)} host(s)",
                    release=self.release,
                    fallbacks=self.fallbacks,
                    hosts=[h.name for h in self.fleet.hosts],
                    **seen,
                )
                for name, said in self.fleet.signal_views.items():
                    # the sentence itself is journaled: the message goes to the sinks only
                    await run.rec.record("signal.checked", said, signal=name, seen=said)
                if not self.force and all(
                    v == (LbState.SERVING, self.release) for v in observed.values()
                ):
                    await run.conclude(
                        RunOutcome.UNCHANGED,
                        f"every host already serves {self.release}: nothing was deployed, no "
                        "host touched (`deploy --force` walks every host again)",
                    )
                    return
            await self._with_impact(self._waves(waves, abort))
        except (JournalError, LeaseLost):
            raise  # change nothing more
        except Exception as exc:
            err = first_immunity_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
            if isinstance(err, JournalError | LeaseLost):
                raise err from exc
            if isinstance(err, ImmunityError):
                # An operational error outside a host's step (the balancer not answering
                # the run's first look, say): one line, no traceback; the fleet is put back
                # on one release and the run ends by what the revert did (`aborted`,
                # `reverted`, `revert_incomplete`, or stopped by a signal), not `failed`
                # with a reason that went stale while the revert waited.
                if run.concluded:  # after the outcome (the impact probe's end): it stands
                    log.error("after the run ended: %s", err.message)
                    return
                log.error("deployment stopped by an error; reverting the fleet: %s", err.message)
                reason, done = self._undoing(abort, error=err)
                await revert(run, reason, self.fallbacks, done=done)
                return
            # A bug: still leave the fleet on one release, then report it (traceback kept,
            # the run ends `failed`, exit 1).
            log.error("deployment stopped by an error; reverting the fleet", exc_info=exc)
            admit = run.on_stop(anyio.CancelScope())
            waiting = run.on_stop(anyio.CancelScope())
            try:
                await immune_response(
                    self.fleet,
                    run.rec,
                    run.switcher,
                    self.release,
                    self.fallbacks,
                    f"stopped by an error: {exc}",
                    admit=admit,
                    waiting=waiting,
                )
            except ImmunityError as again:
                log.error("the safety revert failed too: %s", again.message)
            finally:
                run.forget_stop(admit)
                run.forget_stop(waiting)
            raise

    def _undoing(
        self, abort: bool, *, error: ImmunityError | None = None
    ) -> tuple[str, RunOutcome]:
        """Why a revert is done and how the run ends when it completes: a revert under way
        is finished for its own reason (a verdict stands, even with --abort); `--abort`
        undoes the deployment unjudged (ABORTED); otherwise `error` stopped the run
        (REVERTED, with no verdict: history counts it in neither figure)."""
        view = self.view
        if view.reverting or (self.run.resumed and abort):
            reason = (view.revert_reason or "interrupted revert") if view.reverting else ""
            if not reason or reason.startswith(ABORTED_BY):
                held = (
                    view.last_verdict.get("reason") if self.run.record.outcome == "held" else None
                )
                reason = reason or f"{ABORTED_BY}; {self.release} was not judged" + (
                    f" (it was held: {held})" if held else ""
                )
                return reason, RunOutcome.ABORTED
            unjudged = view.last_verdict.get("outcome") in ("inconclusive", "error")
            return reason, RunOutcome.INCONCLUSIVE if unjudged else RunOutcome.REVERTED
        what = error.message if error is not None else "an error"
        return f"stopped by an error: {what}", RunOutcome.REVERTED

    async def _with_impact(self, body: Awaitable[None]) -> None:
        """Run `body`, with the `impact` block's customer probe around it when configured:
        `impact.before` seconds of the customers' view first, `impact.after` after; the
        probe's record, cut into phases, is journaled (`impact.measured`)."""
        cfg, clock = self.fleet.config, self.fleet.clock
        if cfg.impact is None:
            await body
            return
        probe = ImpactProbe(cfg.impact)
        async with anyio.create_task_group() as tg:
            await tg.start(probe.run)
            await clock.sleep(cfg.impact.before)
            await body
            await clock.sleep(cfg.impact.after)
            await probe.stop()
        if probe.started_at is None:
            return
        impact = impact_phases(
            probe.records,
            self.view.moments,
            probe.started_at,
            probe.stopped_at or clock.now().timestamp(),
            self.run.record.started_at,
            cfg.impact,
        )
        total = impact["total"]
        await self.run.rec.record(
            "impact.measured",
            f"customers: {total['failed']} of {total['requests']} probe request(s) failed, "
            f"p99 {total['p99_ms']:.0f} ms, longest stall {total['longest_stall_s']:.1f} s",
            **impact,
        )

    async def _waves(self, waves: Sequence[Sequence[HostRef]], abort: bool) -> None:
        run, view = self.run, self.view
        # derive → decide: the view says where each host is (hosts already serving the new
        # release are canaries; hosts out of the pool hold capacity until a walk puts them
        # back), which waves passed and whether a revert was under way
        if run.resumed and (abort or view.reverting):
            # a revert under way is finished for its own reason (a verdict stands, even
            # with --abort); otherwise the user asked to undo it: not a verdict on the
            # release, its own outcome (an abort's revert taken up again stays one)
            reason, done = self._undoing(abort)
            detected = self.detected_before_resume() if done is RunOutcome.REVERTED else None
            await revert(run, reason, self.fallbacks, done=done, detected_after_s=detected)
            return
        verdict: Verdict | None = None
        for i, wave in enumerate(waves, start=1):
            todo = [h for h in wave if not self._done(h.name)]
            if run.stopping:
                break
            if i in view.passed_waves and not todo:
                continue
            names = {h.name for h in todo}
            left = [h.name for h in self.cohorts().baseline if h.name not in names]
            alone = (
                ""
                if left or (i == len(waves) and self.holdback is None)
                else " (no host stays on the old release to compare with: the comparisons "
                "are not judged, guard rails only)"
            )
            await run.rec.record(
                "wave.started",
                f"wave {i}: {', '.join(h.name for h in todo)}{alone}",
                wave=i,
                hosts=[h.name for h in todo],
                baseline=left,
                **({"no_baseline": alone.strip(" ()")} if alone else {}),
            )
            last = i == len(waves)
            verdict, switch_error = await self._wave(i, todo, last)
            if switch_error is not None:
                await self._host_failure(i, switch_error)
                return
            if run.stopping and (verdict is None or verdict.outcome is not Outcome.FAIL):
                break
            if verdict is None:  # no host of this wave took the release (within the budget)
                continue
            if not await self._judged(i, verdict):
                return
        if not run.stopping and not await self._watch(len(waves) + 1):
            return
        if run.stopping:
            await run.conclude(
                run.stopping,
                f"{run.stopped_by} received; hosts in flight finished, fleet in the pool",
                serving_new=sorted(view.canary),
            )
            return
        await run.conclude(
            RunOutcome.DEPLOYED,
            view.last_verdict.get("reason") or "every host serves the release",
            message=f"every host serves {self.release}",
        )

    def _done(self, name: str) -> bool:
        """Whether host `name` needs no walk: it serves the release in the pool (with
        `force`: and this run, resumed or not, already switched it there)."""
        if name not in self.view.canary:
            return False
        return not self.force or self.view.reached(name) == self.release

    async def _judged(self, i: int, verdict: Verdict, *, guard: bool = False) -> bool:
        """Journal a bake's verdict and act on it; True when the rollout goes on."""
        run, cfg = self.run, self.fleet.config
        extra: dict[str, Any] = {"guard": True} if guard else {}
        await run.rec.record(
            "verdict.reached" if verdict.outcome is not Outcome.FAIL else "verdict.failed",
            verdict.reason,
            wave=i,
            verdict=verdict.to_dict(),
            **extra,
        )
        if verdict.outcome is Outcome.FAIL:
            reason = f"guard: {verdict.reason}" if guard else verdict.reason
            detected = self.detected_after_s()
            await revert(run, reason, self.fallbacks, verdict=verdict, detected_after_s=detected)
            return False
        if verdict.outcome in (Outcome.INCONCLUSIVE, Outcome.ERROR):
            if cfg.judge.on_inconclusive == "hold":
                await run.conclude(
                    RunOutcome.HELD, f"held: {verdict.reason}", wave=i, verdict=verdict.to_dict()
                )
                return False
            # not a release found worse: its own outcome, wording and history category
            await revert(
                run,
                f"inconclusive: not enough evidence to judge {self.release}: {verdict.reason}",
                self.fallbacks,
                verdict=verdict,
                done=RunOutcome.INCONCLUSIVE,
            )
            return False
        what = "guard" if guard else f"wave {i}"
        await run.rec.record("wave.passed", f"{what} passed: {verdict.reason}", wave=i, **extra)
        return True

    async def _host_failure(self, wave: int, error: ImmunityError) -> None:
        """A host failed past `max_failed_hosts` (or could not get a slot): fail, revert."""
        cfg = self.fleet.config
        reason = f"host step failed: {error.message}"
        step_verdict = Verdict(
            Outcome.FAIL,
            reason,
            (
                CheckResult(
                    "host-steps",
                    Outcome.FAIL,
                    reason,
                    {
                        "failed_hosts": float(len(self.view.failed)),
                        "max_failed_hosts": float(cfg.max_failed_hosts),
                    },
                ),
            ),
            self.fleet.clock.now(),
        )
        await self.run.rec.record(
            "verdict.failed", reason, wave=wave, verdict=step_verdict.to_dict()
        )
        detected = self.detected_after_s(since_canary=False)
        await revert(
            self.run, reason, self.fallbacks, verdict=step_verdict, detected_after_s=detected
        )

    async def _bake(
        self,
        i: int,
        *,
        relative: bool,
        may_pass: Callable[[], bool],
        purpose: Literal["wave", "guard"] = "wave",
    ) -> Verdict:
        run = self.run
        # the run's fold says which bake this is, and, after a resume, its evidence so far
        point = self.view.bakes.point(i)
        res = await bake(
            self.fleet.signals,
            self.fleet.config,
            run.rec,
            self.cohorts,
            wave=i,
            bake_no=point.bake_no,
            relative=relative,
            may_pass=may_pass,
            thresholds=dict(point.carry),
            evidence=point.looks,
            bakes=self.bakes,
            purpose=purpose,
            clock=self.fleet.clock,
        )
        return res.verdict

    async def _wave(
        self, i: int, hosts: Sequence[HostRef], last: bool
    ) -> tuple[Verdict | None, ImmunityError | None]:
        """Switch `hosts` (within capacity) while the bake judges from the first canary in.

        Hosts already on the release (earlier waves) stay under the checks: when there are
        some, the bake starts with the wave instead of waiting for its first new canary, so
        no stretch of the deployment goes unwatched. Either way the bake may pass only once
        every host of the wave is in and the last of them has baked `bake.min`.

        Hosts are admitted one at a time, each once it holds a capacity slot (hosts already
        out of the pool first: they hold one). A host that fails past the budget, or a
        signal, cancels the admission and the bake at once; walks already begun are
        shielded and end within their steps' deadlines, so the wave always ends.
        """
        run, view = self.run, self.view
        cfg = self.fleet.config
        capacity = run.capacity
        first_in = anyio.Event()
        switched = anyio.Event()
        last_in_at: list[float] = []  # when the wave's latest canary came back in the pool
        min_s = cfg.bake.min

        def may_pass() -> bool:
            # every host of the wave is judged `bake.min` at least: the bake passes once
            # the last one in has served that long (no new canary at all, every switch put
            # back within the budget or a resume with the wave already in: the bake's own
            # `bake.min` is enough)
            return switched.is_set() and (
                not last_in_at or self.fleet.clock.monotonic() - last_in_at[0] >= min_s
            )

        names = {h.name for h in hosts}
        baseline_left = [h for h in self.cohorts().baseline if h.name not in names]
        admit = run.on_stop(anyio.CancelScope())
        judging = run.on_stop(anyio.CancelScope())
        errors: list[ImmunityError] = []

        async def switch_one(h: HostRef) -> None:
            error = await self._switch(h)
            if error is not None:
                errors.append(error)
                admit.cancel()
                judging.cancel()
            if h.name not in view.canary:  # failed, or put back on its fallback
                return
            last_in_at[:] = [self.fleet.clock.monotonic()]
            first_in.set()

        async def admit_all() -> None:
            order = sorted(hosts, key=lambda h: h.name not in view.out)
            try:
                async with anyio.create_task_group() as tg:
                    with admit:
                        for h in order:
                            try:
                                await capacity.take(h.name)
                            except CapacityExhausted as exc:
                                errors.append(exc)
                                judging.cancel()
                                break
                            tg.start_soon(switch_one, h)
            finally:
                switched.set()
                first_in.set()

        verdict: Verdict | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(admit_all)
                if not view.canary:  # nothing on the release yet: judge from the first
                    await first_in.wait()  # canary in (or until every admitted walk ended)
                with judging:
                    if view.canary and not errors:
                        # the last wave has a baseline only when a holdback stays on the old
                        # release; a host of this wave is no baseline (it leaves the old
                        # release now), so a wave that leaves none judges on guard rails only
                        relative = (not last or self.holdback is not None) and bool(baseline_left)
                        verdict = await self._bake(i, relative=relative, may_pass=may_pass)
                if verdict is None or verdict.outcome is Outcome.FAIL:
                    admit.cancel()  # start no more hosts of this wave
        finally:
            run.forget_stop(admit)
            run.forget_stop(judging)
        if errors:
            return verdict, errors[0]
        return verdict, None

    async def _watch(self, i: int) -> bool:
        """The guard period after the last wave, then the holdback's switch. False when the
        run ended here (reverted, held, a host failed); True to conclude as deployed (or
        interrupted: `run.stopping` says so)."""
        run = self.run
        cfg = self.fleet.config
        if cfg.guard.duration > 0 and i not in self.view.passed_waves:
            held_name = self.holdback.name if self.holdback else None
            baseline = held_name is not None and bool(self.cohorts().baseline)
            await run.rec.record(
                "guard.started",
                f"guard: watching every host on {self.release} for {cfg.guard.duration:g}s"
                + (f", {held_name} held back on the old release" if baseline else "")
                + ("" if baseline else " (absolute guard rails only)"),
                wave=i,
                holdback=held_name,
                held_back=[held_name] if baseline and held_name else [],
                duration_s=cfg.guard.duration,
            )
            verdict: Verdict | None = None
            with run.on_stop(anyio.CancelScope()) as judging:
                verdict = await self._bake(
                    i, relative=baseline, may_pass=lambda: True, purpose="guard"
                )
            run.forget_stop(judging)
            if verdict is None:  # stopped by a signal: the hosts stay as they are
                return True
            if not await self._judged(i, verdict, guard=True):
                return False
        held = self.holdback
        if held is None or run.stopping or self._done(held.name):
            return True
        await run.rec.record(
            "wave.started",
            f"holdback: {held.name}",
            wave=i + 1,
            hosts=[held.name],
            holdback=True,
        )
        error = await self._switch(held)
        if error is not None:
            await self._host_failure(i + 1, error)
        return error is None

    async def _switch(self, h: HostRef) -> StepFailed | None:
        """Switch `h` to the release. A failure within `max_failed_hosts` walks it back to its
        fallback and the rollout goes on (None); past it, or when the walk back fails too,
        `h` is parked (out of the pool: the immune response takes it) and the error returned."""
        switcher = self.run.switcher
        try:
            await switcher.switch(h, self.release, restart=self.force)
            return None
        except StepFailed as exc:
            error = exc
        if len(self.view.failed) <= self.fleet.config.max_failed_hosts:
            try:
                await switcher.switch(h, self.fallbacks[h.name], purpose="revert")
                return None
            except StepFailed as exc2:
                error = exc2
        await self.run.capacity.give_back(h.name, parked=True)
        return error


_IN_FLIGHT = frozenset(HostPhase) - {HostPhase.SERVING, HostPhase.FAILED, HostPhase.OUT}


def put_back(
    view: FleetView, observed: Mapping[str, tuple[LbState | None, str | None]]
) -> dict[str, str]:
    """Hosts the journal says are mid-walk (a step started, its walk not ended) that the
    fleet reports serving in the pool: host name -> the release each serves. A run whose
    journal failed mid-walk puts its hosts in flight back unjournaled
    (`HostSwitcher._restore`); `resume` journals what it finds with its `deployment.resumed`
    (`put_back`), then walks them again as any host whose walk did not end."""
    out: dict[str, str] = {}
    for name, hv in view.hosts.items():
        state, release = observed.get(name, (None, None))
        if hv.phase in _IN_FLIGHT and state is LbState.SERVING and release is not None:
            out[name] = str(release)
    return out
