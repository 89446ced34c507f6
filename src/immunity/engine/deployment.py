"""A deployment: preflight → waves (switch + bake) → done, or the immune response.

    preflight   config valid, every adapter answers, every host serves a release (its
                fallback), the release exists; then the app's lease is taken.
    waves       hosts of a wave switch in parallel within `max_unavailable`; the bake starts
                when the wave's first canary is back in the pool and judges until a verdict.
    outcome     deployed (0) | reverted (3) | inconclusive (7) | revert_incomplete (4) | held (6) |
                interrupted (130 SIGINT / 143 SIGTERM). Preflight and lease errors raise.

Everything is journaled before and after; `resume` continues from the journal.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from immunity.analysis import Cohorts, bake, resume_point
from immunity.analysis.spending import bakes_of
from immunity.domain import CheckResult, HostRef, LbState, Member, Outcome, Verdict
from immunity.engine.capacity import CapacityGuard
from immunity.engine.context import Fleet, holder_name
from immunity.engine.host import HostSwitcher
from immunity.engine.immune import immune_response
from immunity.engine.notifying import notify_all
from immunity.engine.plan import plan_waves, with_holdback
from immunity.engine.record import Recorder
from immunity.errors import ImmunityError, JournalError, LeaseLost, PreflightError, StepFailed
from immunity.impact import ImpactProbe
from immunity.impact import phases as impact_phases
from immunity.journal import new_deployment_id
from immunity.journal.base import DeploymentRecord, Lease
from immunity.judge import build_judge

log = logging.getLogger("immunity.engine")

EXIT = {
    "deployed": 0,
    "rolled_back": 0,
    "reverted": 3,
    "inconclusive": 7,
    "revert_incomplete": 4,
    "held": 6,
    "interrupted": 130,
    "terminated": 143,
    "superseded": 5,
    "failed": 1,
}


@dataclass
class DeployResult:
    outcome: str
    release: str
    deployment_id: str
    started_at: dt.datetime
    finished_at: dt.datetime
    verdict: Verdict | None = None
    reason: str = ""
    detected_after_s: float | None = None
    reverted_after_s: float | None = None
    needs_human: list[str] = field(default_factory=list)
    fallbacks: dict[str, str] = field(default_factory=dict)
    hosts: list[dict[str, Any]] = field(default_factory=list)
    waves: list[list[str]] = field(default_factory=list)
    impact: dict[str, Any] | None = None
    """What customers saw per phase (the `impact` block's probe), see `immunity.impact`."""

    @property
    def exit_code(self) -> int:
        return EXIT.get(self.outcome, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "release": self.release,
            "deployment_id": self.deployment_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_s": round((self.finished_at - self.started_at).total_seconds(), 3),
            "reason": self.reason,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "detected_after_s": self.detected_after_s,
            "reverted_after_s": self.reverted_after_s,
            "needs_human": self.needs_human,
            "fallbacks": self.fallbacks,
            "waves": self.waves,
            "hosts": self.hosts,
            "impact": self.impact,
        }


class Stop(Exception):
    """Raised inside the wave loop when a signal asked us to stop."""


# -- preflight ---------------------------------------------------------------------------


async def preflight(fleet: Fleet, release: str) -> dict[str, str]:
    """Check everything before touching anything; return each host's current release.

    Raises PreflightError naming what to fix.
    """
    cfg = fleet.config
    for check in cfg.checks:  # a check the judge cannot build is a config error, found now
        build_judge(check, cfg.judge, cfg.bake.min)
    for adapter in (fleet.lb, fleet.driver, *fleet.signals.values(), *fleet.notifiers):
        check = getattr(adapter, "preflight", None)
        if check is not None:
            seen = await check(fleet.hosts)
            if isinstance(seen, str) and adapter in fleet.signals.values():
                # a signal says what it sees of the traffic now (or plainly that it sees none)
                fleet.signal_views[str(getattr(adapter, "name", "signal"))] = seen
    await fleet.driver.check_release(release)
    members = await fleet.lb.members(fleet.hosts)
    actives: dict[str, str | None] = {}
    problems = pool_problems(fleet, members, await fleet.lb.pool_members())
    for h in fleet.hosts:
        m = members.get(h.name)
        if m is None:
            problems.append(f"{h.name} is not in the balancer's pool")
        actives[h.name] = await fleet.driver.active_release(h)
        if actives[h.name] is None:
            problems.append(f"{h.name} runs no release")
    if not problems:
        problems += await probe_paths(fleet)
    if problems:
        raise PreflightError(
            "preflight failed, nothing was touched: " + "; ".join(problems),
            hint=f"fix what is named, then run `immunity deploy -c {fleet.loaded.path} "
            f"--release {release}` again; if a deployment was interrupted, "
            f"`immunity resume -c {fleet.loaded.path}` finishes it first",
        )
    return await fallbacks_for(fleet, release, {k: v for k, v in actives.items() if v})


async def probe_paths(fleet: Fleet) -> list[str]:
    """Each host's verify and warm-up paths, asked once on the release it runs now (see
    `Prober.check_paths`): a path that answers an unexpected status is a config problem."""
    return list(await fleet.prober.check_paths(fleet.hosts))


def unknown_members(fleet: Fleet, pool: Mapping[str, Member]) -> list[str]:
    """Balancer ids of pool members that are neither hosts nor `unmanaged_members`."""
    known = {h.balancer_id for h in fleet.hosts} | set(fleet.config.unmanaged_members)
    return sorted(set(pool) - known)


def pool_problems(
    fleet: Fleet, members: Mapping[str, Member], pool: Mapping[str, Member]
) -> list[str]:
    """What in the balancer's pool makes a deployment unsafe or dishonest, one line each.

    * a member the config does not know: it would keep serving the old release while
      immunity reports every host on the new one;
    * a host the balancer reports unhealthy (DOWN): it serves nobody, so draining another
      host could take the last serving one, and its drain has no DRAIN state to wait for;
    * a host already out of the pool or draining: it already uses capacity that
      `max_unavailable` would hand out again (and a wave waiting for that capacity would
      wait for a host of a later wave). An interrupted deployment is finished by `resume`.
    """
    out = []
    for name in unknown_members(fleet, pool):
        member = pool[name]
        out.append(
            f"pool member {name} ({member.detail or member.state}) is not in the config's hosts: it "
            "would keep serving its release unseen; add it to hosts, or to "
            "unmanaged_members to leave it alone"
        )
    for h in fleet.hosts:
        mine = members.get(h.name)
        if mine is not None and mine.state is LbState.UNHEALTHY:
            out.append(
                f"{h.name} is unhealthy in the balancer ({mine.detail or mine.state}): bring it "
                "back up (or take it out of hosts) before deploying"
            )
        elif mine is not None and mine.state in (LbState.OUT, LbState.DRAINING):
            cfg = fleet.loaded.path
            out.append(
                f"{h.name} is out of the pool ({mine.detail or mine.state}): finish an "
                f"interrupted deployment with `immunity resume -c {cfg}`, put the fleet back "
                f"with `immunity rollback -c {cfg}`, or return the host to the pool"
            )
    return out


async def fallbacks_for(fleet: Fleet, release: str, actives: Mapping[str, str]) -> dict[str, str]:
    """Each host's fallback: its active release, or, for hosts already on `release`, the
    fleet's most common other release (else the host's previous installed release)."""
    others = Counter(r for r in actives.values() if r != release)
    common = others.most_common(1)[0][0] if others else None
    out: dict[str, str] = {}
    for h in fleet.hosts:
        active = actives.get(h.name)
        if active and active != release:
            out[h.name] = active
            continue
        if common:
            out[h.name] = common
            continue
        installed = [r for r in await fleet.driver.installed_releases(h) if r != release]
        if installed:
            out[h.name] = installed[-1]
    return out


# -- the run -----------------------------------------------------------------------------


class Deployment:
    """One run of the engine over a fleet; see the module docstring."""

    def __init__(self, fleet: Fleet, release: str, *, handle_signals: bool = True) -> None:
        self.fleet = fleet
        self.release = release
        self.handle_signals = handle_signals
        self.stopping: str | None = None  # "interrupted" | "terminated"
        self.serving_new: set[str] = set()
        self.failed_hosts: set[str] = set()
        self.first_canary_in: float | None = None
        self._bake_scope: anyio.CancelScope | None = None
        self.holder_dead = False  # set by resume when the old holder's PID is gone
        self.holdback: HostRef | None = None  # kept on the old release through the guard
        self.bakes = 1  # bakes watching this deployment (they share the false-alarm bound)

    # the cohorts as they are now, from what the engine has put in the pool
    def cohorts(self) -> Cohorts:
        canary = [h for h in self.fleet.hosts if h.name in self.serving_new]
        baseline = [
            h
            for h in self.fleet.hosts
            if h.name not in self.serving_new
            and h.name not in self.failed_hosts
            and h.name not in self.capacity.out
        ]
        return Cohorts(canary, baseline)

    async def run(
        self, *, resume: DeploymentRecord | None = None, abort: bool = False
    ) -> DeployResult:
        fleet = self.fleet
        cfg = fleet.config
        journal = fleet.journal
        self.capacity = CapacityGuard(cfg.max_unavailable)
        if resume is None:
            deployment_id = new_deployment_id()
            lease = await self._lease(deployment_id, takeover=False)
            try:
                fallbacks = await preflight(fleet, self.release)
            except BaseException:
                await journal.release_lease(lease)
                raise
            record = await journal.begin(
                fleet.app, self.release, {"fallbacks": fallbacks}, deployment_id=deployment_id
            )
            token: int | None = lease.token
        else:
            record = resume
            fallbacks = dict(resume.data.get("fallbacks", {}))
            lease = await self._lease(record.id, takeover=True)
            token = lease.token
        rec = Recorder(fleet, record.id, self.release, token)
        started = fleet.clock.monotonic()
        if resume is None:
            await rec.record(
                "deployment.started",
                f"deploying {self.release} to {len(fleet.hosts)} host(s)",
                release=self.release,
                fallbacks=fallbacks,
                holder=lease.holder,
                hosts=[h.name for h in fleet.hosts],
            )
            for name, seen in fleet.signal_views.items():
                await rec.record("signal.checked", seen, signal=name)
        else:
            await rec.record(
                "deployment.resumed",
                f"resuming {self.release}" + (" to abort it" if abort else ""),
                holder=lease.holder,
                token=lease.token,
                abort=abort,
            )
        result = DeployResult(
            outcome="failed",
            release=self.release,
            deployment_id=record.id,
            started_at=record.started_at,
            finished_at=self.fleet.clock.now(),
            fallbacks=fallbacks,
        )
        probe = ImpactProbe(cfg.impact) if cfg.impact is not None else None
        try:
            try:
                switcher = HostSwitcher(fleet, rec, self.capacity)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._heartbeat, lease)
                    if self.handle_signals:
                        tg.start_soon(self._signals, rec)
                    try:
                        if probe is not None:  # the customers' view before the change
                            await tg.start(probe.run)
                            await self.fleet.clock.sleep(cfg.impact.before)
                        await self._body(rec, switcher, fallbacks, result, resume, abort, started)
                        if probe is not None:  # ... and after it
                            await self.fleet.clock.sleep(cfg.impact.after)
                            await probe.stop()
                    except (JournalError, LeaseLost):
                        raise  # change nothing more
                    except Exception as exc:
                        # Could not go on (a bug, an adapter failing outside a step):
                        # still leave the fleet on one release, then report the error.
                        await self._safety_revert(rec, switcher, fallbacks, result, exc)
                        raise
                    finally:
                        tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                # A task group wraps what its tasks raised; surface our own error as itself.
                raise _first_immunity_error(group) from group
        except LeaseLost as exc:
            # Someone took over (resume with a newer token): change nothing more.
            result.outcome = "superseded"
            result.reason = exc.message
            result.finished_at = self.fleet.clock.now()
            return result
        except JournalError:
            raise
        result.finished_at = self.fleet.clock.now()
        entries = await fleet.journal.entries(record.id)
        if probe is not None and probe.started_at is not None:
            await self._record_impact(rec, probe, entries, record.started_at, result)
        result.hosts = host_steps(entries, fleet.hosts)
        await journal.finish(
            record.id, result.outcome, result.reason, {"result": result.to_dict()}, token=token
        )
        await notify_all(fleet, rec, result.outcome, result.reason, result.to_dict())
        await journal.release_lease(lease)
        return result

    async def _record_impact(
        self,
        rec: Recorder,
        probe: ImpactProbe,
        entries: Sequence[Any],
        t0: dt.datetime,
        result: DeployResult,
    ) -> None:
        """Cut the probe's record into phases; journal them (`impact.measured`) and keep
        them (with the per-second series) in the result."""
        cfg = self.fleet.config.impact
        assert cfg is not None and probe.started_at is not None
        result.impact = impact_phases(
            probe.records,
            [(e.at, e.kind, e.data) for e in entries],
            probe.started_at,
            probe.stopped_at or self.fleet.clock.now().timestamp(),
            t0,
            cfg,
        )
        total = result.impact["total"]
        await rec.record(
            "impact.measured",
            f"customers: {total['failed']} of {total['requests']} probe request(s) failed, "
            f"p99 {total['p99_ms']:.0f} ms, longest stall {total['longest_stall_s']:.1f} s",
            **{k: v for k, v in result.impact.items() if k != "seconds"},
        )

    async def _lease(self, deployment_id: str, *, takeover: bool) -> Lease:
        cfg = self.fleet.config
        return await self.fleet.journal.acquire_lease(
            self.fleet.app,
            holder_name(),
            deployment_id,
            cfg.lease_ttl,
            takeover=takeover,
            holder_dead=self.holder_dead,
        )

    async def _heartbeat(self, lease: Lease) -> None:
        every = max(0.5, self.fleet.config.lease_ttl / 3)
        while True:
            await self.fleet.clock.sleep(every)
            await self.fleet.journal.heartbeat(lease)

    async def _signals(self, rec: Recorder) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                kind = "interrupted" if signum == signal.SIGINT else "terminated"
                if self.stopping:
                    await rec.record(
                        "deployment.signal_repeated",
                        f"{signal.Signals(signum).name} again: still finishing the hosts in flight",
                    )
                    continue
                self.stopping = kind
                await rec.record(
                    "deployment.stopping",
                    f"{signal.Signals(signum).name}: starting no new work, finishing hosts in flight",
                    signal=signal.Signals(signum).name,
                )
                if self._bake_scope is not None:
                    self._bake_scope.cancel()

    async def _body(
        self,
        rec: Recorder,
        switcher: HostSwitcher,
        fallbacks: dict[str, str],
        result: DeployResult,
        resume: DeploymentRecord | None,
        abort: bool,
        started: float,
    ) -> None:
        fleet = self.fleet
        cfg = fleet.config
        entries = await fleet.journal.entries(result.deployment_id) if resume else []
        kinds = {e.kind for e in entries}
        if resume and (abort or "immune.started" in kinds or "verdict.failed" in kinds):
            reason = "resume --abort" if abort else _last_reason(entries) or "interrupted revert"
            outcome = "reverted" if abort else _revert_outcome(entries)
            await self._revert(
                rec,
                switcher,
                fallbacks,
                result,
                reason,
                self.fleet.clock.monotonic(),
                None,
                outcome=outcome,
            )
            return
        passed_waves = {int(e.data.get("wave", -1)) for e in entries if e.kind == "wave.passed"}
        # hosts already serving the new release count as canaries (resume, re-run)
        members = await fleet.lb.members(fleet.hosts)
        for h in fleet.hosts:
            m = members.get(h.name)
            active = await fleet.driver.active_release(h)
            if active == self.release and m is not None and m.state is LbState.SERVING:
                self.serving_new.add(h.name)
            elif m is None or m.state is not LbState.SERVING:
                self.capacity.mark_out(h.name)
        waves, self.holdback = with_holdback(
            plan_waves(fleet.hosts, cfg.waves),
            guard_s=cfg.guard.duration,
            holdback=cfg.guard.holdback,
        )
        self.bakes = bakes_of(cfg, len(waves))
        result.waves = [[h.name for h in w] for w in waves]
        if self.holdback is not None:
            result.waves.append([self.holdback.name])
        for i, wave in enumerate(waves, start=1):
            todo = [h for h in wave if h.name not in self.serving_new]
            if self.stopping:
                break
            if i in passed_waves and not todo:
                continue
            await rec.record(
                "wave.started",
                f"wave {i}: {[h.name for h in todo]}",
                wave=i,
                hosts=[h.name for h in todo],
            )
            last = i == len(waves)
            verdict, switch_error = await self._wave(rec, switcher, fallbacks, i, todo, last)
            if (
                self.stopping
                and (verdict is None or verdict.outcome is not Outcome.FAIL)
                and switch_error is None
            ):
                break
            if switch_error is not None and len(self.failed_hosts) > cfg.max_failed_hosts:
                reason = f"host step failed: {switch_error.message}"
                step_verdict = Verdict(
                    Outcome.FAIL,
                    reason,
                    (
                        CheckResult(
                            "host-steps",
                            Outcome.FAIL,
                            reason,
                            {
                                "failed_hosts": float(len(self.failed_hosts)),
                                "max_failed_hosts": float(cfg.max_failed_hosts),
                            },
                        ),
                    ),
                    self.fleet.clock.now(),
                )
                await rec.record("verdict.failed", reason, wave=i, verdict=step_verdict.to_dict())
                result.detected_after_s = round(self.fleet.clock.monotonic() - started, 3)
                await self._revert(
                    rec,
                    switcher,
                    fallbacks,
                    result,
                    reason,
                    self.fleet.clock.monotonic(),
                    step_verdict,
                )
                return
            assert verdict is not None
            await rec.record(
                "verdict.reached" if verdict.outcome is not Outcome.FAIL else "verdict.failed",
                verdict.reason,
                wave=i,
                verdict=verdict.to_dict(),
            )
            if verdict.outcome is Outcome.FAIL:
                detected = self.fleet.clock.monotonic() - (self.first_canary_in or started)
                result.verdict = verdict
                result.detected_after_s = round(detected, 3)
                await self._revert(
                    rec,
                    switcher,
                    fallbacks,
                    result,
                    verdict.reason,
                    self.fleet.clock.monotonic(),
                    verdict,
                )
                return
            if verdict.outcome in (Outcome.INCONCLUSIVE, Outcome.ERROR):
                result.verdict = verdict
                if cfg.judge.on_inconclusive == "hold":
                    result.outcome = "held"
                    result.reason = f"held: {verdict.reason}"
                    await rec.record("deployment.held", result.reason, wave=i)
                    return
                # not a release found worse: its own outcome, wording and history category
                await self._revert(
                    rec,
                    switcher,
                    fallbacks,
                    result,
                    f"inconclusive: not enough evidence to judge {self.release}: {verdict.reason}",
                    self.fleet.clock.monotonic(),
                    verdict,
                    outcome="inconclusive",
                )
                return
            result.verdict = verdict
            await rec.record("wave.passed", f"wave {i} passed: {verdict.reason}", wave=i)
        if not self.stopping and not await self._watch(
            rec, switcher, fallbacks, result, len(waves) + 1, passed_waves, started
        ):
            return
        if self.stopping:
            result.outcome = self.stopping
            result.reason = (
                f"{self.stopping} by signal; hosts in flight finished, fleet in the pool"
            )
            await rec.record(
                "deployment.interrupted", result.reason, serving_new=sorted(self.serving_new)
            )
            return
        result.outcome = "deployed"
        result.reason = result.verdict.reason if result.verdict else "every host serves the release"
        await rec.record("deployment.succeeded", f"every host serves {self.release}")

    async def _wave(
        self,
        rec: Recorder,
        switcher: HostSwitcher,
        fallbacks: Mapping[str, str],
        i: int,
        hosts: Sequence[HostRef],
        last: bool,
    ) -> tuple[Verdict | None, StepFailed | None]:
        """Switch `hosts` (within capacity) while the bake judges from the first canary in.

        Hosts already on the release (earlier waves) stay under the checks: when there are
        some, the bake starts with the wave instead of waiting for its first new canary, so
        no stretch of the deployment goes unwatched. Either way the bake may pass only once
        every host of the wave is in and the wave's first canary has baked `bake.min`.
        """
        first_in = anyio.Event()
        switched = anyio.Event()
        first_in_at: list[float] = []
        min_s = self.fleet.config.bake.min

        def may_pass() -> bool:
            # no new canary at all (every switch of the wave put back within the budget, or
            # a resume with the wave already in): the bake's own `bake.min` is enough
            return switched.is_set() and (
                not first_in_at or self.fleet.clock.monotonic() - first_in_at[0] >= min_s
            )

        errors: list[StepFailed] = []
        verdict: Verdict | None = None
        halt = anyio.Event()

        async def switch_one(h: HostRef) -> None:
            if self.stopping or halt.is_set():
                return
            try:
                await switcher.switch(h, self.release)
            except StepFailed as exc:
                errors.append(exc)
                self.failed_hosts.add(h.name)
                if len(self.failed_hosts) > self.fleet.config.max_failed_hosts:
                    halt.set()
                else:  # within the budget: put this host back on its fallback, go on
                    try:
                        await switcher.switch(h, fallbacks[h.name], purpose="revert")
                        self.failed_hosts.discard(h.name)
                    except StepFailed as exc2:
                        errors.append(exc2)
                        halt.set()
                return
            self.serving_new.add(h.name)
            if self.first_canary_in is None:
                self.first_canary_in = self.fleet.clock.monotonic()
            if not first_in_at:
                first_in_at.append(self.fleet.clock.monotonic())
            first_in.set()

        async def switch_all() -> None:
            async with anyio.create_task_group() as tg:
                for h in hosts:
                    tg.start_soon(switch_one, h)
            switched.set()
            first_in.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(switch_all)
            if not self.serving_new:  # nothing on the release yet: judge from the first canary
                await first_in.wait()
            if not self.serving_new or halt.is_set() or self.stopping:
                await switched.wait()
                if errors and len(self.failed_hosts) > self.fleet.config.max_failed_hosts:
                    return None, errors[0]
                if self.stopping:
                    return None, None
            with anyio.CancelScope() as scope:
                self._bake_scope = scope
                # the last wave has a baseline only when a holdback stays on the old release
                relative = (not last or self.holdback is not None) and bool(self.cohorts().baseline)
                # the journal says which bake this is, and, after a resume, its evidence so far
                point = resume_point(await self.fleet.journal.entries(rec.deployment_id), i)
                res = await bake(
                    self.fleet.signals,
                    self.fleet.config,
                    rec,
                    self.cohorts,
                    wave=i,
                    bake_no=point.bake_no,
                    relative=relative,
                    may_pass=may_pass,
                    thresholds=dict(point.carry),
                    evidence=point.looks,
                    bakes=self.bakes,
                    clock=self.fleet.clock,
                )
                verdict = res.verdict
            self._bake_scope = None
            if verdict is None or verdict.outcome is Outcome.FAIL:
                halt.set()  # start no more hosts of this wave
            await switched.wait()
        if errors and len(self.failed_hosts) > self.fleet.config.max_failed_hosts:
            return verdict, errors[0]
        return verdict, None

    async def _watch(
        self,
        rec: Recorder,
        switcher: HostSwitcher,
        fallbacks: dict[str, str],
        result: DeployResult,
        i: int,
        passed: set[int],
        started: float,
    ) -> bool:
        """The guard period after the last wave, then the holdback's switch. False when the
        run ended here (reverted, held, a host failed); True to conclude as deployed (or
        interrupted: `self.stopping` says so)."""
        cfg = self.fleet.config
        if cfg.guard.duration > 0 and i not in passed:
            held_name = self.holdback.name if self.holdback else None
            baseline = held_name is not None and bool(self.cohorts().baseline)
            await rec.record(
                "guard.started",
                f"guard: watching every host on {self.release} for {cfg.guard.duration:g}s"
                + (f", {held_name} held back on the old release" if baseline else "")
                + ("" if baseline else " (absolute guard rails only)"),
                wave=i,
                holdback=held_name,
                duration_s=cfg.guard.duration,
            )
            verdict: Verdict | None = None
            with anyio.CancelScope() as scope:
                self._bake_scope = scope
                point = resume_point(await self.fleet.journal.entries(rec.deployment_id), i)
                res = await bake(
                    self.fleet.signals,
                    cfg,
                    rec,
                    self.cohorts,
                    wave=i,
                    bake_no=point.bake_no,
                    relative=baseline,
                    thresholds=dict(point.carry),
                    evidence=point.looks,
                    purpose="guard",
                    bakes=self.bakes,
                    clock=self.fleet.clock,
                )
                verdict = res.verdict
            self._bake_scope = None
            if verdict is None:  # stopped by a signal: the hosts stay as they are
                return True
            await rec.record(
                "verdict.reached" if verdict.outcome is not Outcome.FAIL else "verdict.failed",
                verdict.reason,
                wave=i,
                guard=True,
                verdict=verdict.to_dict(),
            )
            if verdict.outcome is Outcome.FAIL:  # a late fault: the whole fleet goes back
                detected = self.fleet.clock.monotonic() - (self.first_canary_in or started)
                result.verdict = verdict
                result.detected_after_s = round(detected, 3)
                await self._revert(
                    rec,
                    switcher,
                    fallbacks,
                    result,
                    f"guard: {verdict.reason}",
                    self.fleet.clock.monotonic(),
                    verdict,
                )
                return False
            result.verdict = verdict
            await rec.record("wave.passed", f"guard passed: {verdict.reason}", wave=i, guard=True)
        held = self.holdback
        if held is None or self.stopping or held.name in self.serving_new:
            return True
        await rec.record("wave.started", f"holdback: {[held.name]}", wave=i + 1, hosts=[held.name])
        error: StepFailed | None = None
        try:
            await switcher.switch(held, self.release)
        except StepFailed as exc:
            error = exc
            self.failed_hosts.add(held.name)
        if error is not None and len(self.failed_hosts) <= cfg.max_failed_hosts:
            try:  # within the budget: back on its fallback, the rest stays
                await switcher.switch(held, fallbacks[held.name], purpose="revert")
                self.failed_hosts.discard(held.name)
                return True
            except StepFailed as exc2:
                error = exc2
        if error is not None:
            reason = f"host step failed: {error.message}"
            step_verdict = Verdict(
                Outcome.FAIL,
                reason,
                (CheckResult("host-steps", Outcome.FAIL, reason, {}),),
                self.fleet.clock.now(),
            )
            await rec.record("verdict.failed", reason, wave=i + 1, verdict=step_verdict.to_dict())
            await self._revert(
                rec, switcher, fallbacks, result, reason, self.fleet.clock.monotonic(), step_verdict
            )
            return False
        self.serving_new.add(held.name)
        return True

    async def _safety_revert(
        self,
        rec: Recorder,
        switcher: HostSwitcher,
        fallbacks: dict[str, str],
        result: DeployResult,
        exc: Exception,
    ) -> None:
        log.error("deployment stopped by an error; reverting the fleet", exc_info=exc)
        try:
            await self._revert(
                rec,
                switcher,
                fallbacks,
                result,
                f"stopped by an error: {exc}",
                self.fleet.clock.monotonic(),
                None,
            )
        except Exception:
            log.exception("the safety revert failed too")

    async def _revert(
        self,
        rec: Recorder,
        switcher: HostSwitcher,
        fallbacks: dict[str, str],
        result: DeployResult,
        reason: str,
        t_verdict: float,
        verdict: Verdict | None,
        *,
        outcome: str = "reverted",
    ) -> None:
        """The immune response; `outcome` is `reverted` (found worse, or asked to) or
        `inconclusive` (reverted for lack of evidence, `judge.on_inconclusive: revert`)."""
        failed = await immune_response(
            fleet=self.fleet,
            rec=rec,
            switcher=switcher,
            release=self.release,
            fallbacks=fallbacks,
            reason=reason,
        )
        result.reason = reason
        if verdict is not None:
            result.verdict = verdict
        if failed:
            result.outcome = "revert_incomplete"
            result.needs_human = failed
            await rec.record(
                "deployment.revert_incomplete",
                f"could not revert {failed}: a human is needed",
                hosts=failed,
                reason=reason,
            )
            return
        result.outcome = outcome
        result.reverted_after_s = round(self.fleet.clock.monotonic() - t_verdict, 3)
        await rec.record(
            f"deployment.{outcome}",
            f"fleet back on its previous release: {reason}",
            reason=reason,
            detected_after_s=result.detected_after_s,
            reverted_after_s=result.reverted_after_s,
        )


def _first_immunity_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first_immunity_error(exc)
            if isinstance(found, ImmunityError):
                return found
        elif isinstance(exc, ImmunityError):
            return exc
    return group


def _revert_outcome(entries: Sequence[Any]) -> str:
    """`inconclusive` when the interrupted revert followed a verdict of too little evidence."""
    for e in reversed(entries):
        if e.kind in ("verdict.reached", "verdict.failed"):
            outcome = (e.data.get("verdict") or {}).get("outcome")
            return "inconclusive" if outcome in ("inconclusive", "error") else "reverted"
    return "reverted"


def _last_reason(entries: Sequence[Any]) -> str | None:
    for e in reversed(entries):
        if e.kind in ("immune.started", "verdict.failed"):
            return str(e.data.get("reason") or (e.data.get("verdict") or {}).get("reason") or "")
    return None


def host_steps(entries: Sequence[Any], hosts: Sequence[HostRef]) -> list[dict[str, Any]]:
    """Per host: its last release reached and every step with its times, from the journal."""
    out: dict[str, dict[str, Any]] = {
        h.name: {"name": h.name, "release": None, "steps": []} for h in hosts
    }
    open_steps: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        if e.host not in out:
            continue
        if e.kind == "host.step_started" and e.step:
            row = {
                "step": e.step,
                "purpose": e.data.get("purpose"),
                "release": e.data.get("release"),
                "started_at": e.at.isoformat(),
                "finished_at": None,
                "ok": None,
            }
            out[e.host]["steps"].append(row)
            open_steps[(e.host, e.step)] = row
        elif e.kind in ("host.step_finished", "host.step_failed") and e.step:
            row2 = open_steps.pop((e.host, e.step), None)
            if row2 is not None:
                row2["finished_at"] = e.at.isoformat()
                row2["ok"] = e.kind == "host.step_finished"
                if e.kind == "host.step_failed":
                    row2["error"] = e.data.get("error")
        elif e.kind == "host.switched":
            out[e.host]["release"] = e.data.get("release")
    return list(out.values())
