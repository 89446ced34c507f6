"""The immune response: revert every host that took the new release, fast, shielded.

Every host whose active release is the new one — or that is out of the pool, or runs
nothing — walks back to its fallback (the release it ran at preflight) by the same switch,
in parallel within `max_unavailable`. The whole response is shielded from Ctrl-C and from
failing siblings and has its own deadline (`timeouts.revert`); hosts it could not bring
back are returned so that the run ends `revert_incomplete` and a human is told which.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from immunity.domain import HostRef, LbState, Verdict
from immunity.engine.host import HostSwitcher
from immunity.engine.record import Recorder
from immunity.engine.result import RunOutcome
from immunity.engine.run import Run
from immunity.errors import CapacityExhausted, ImmunityError, JournalError, LeaseLost
from immunity.fleet.context import Fleet
from immunity.fleet.state import Observed, encode

log = logging.getLogger("immunity.engine")


@dataclass(frozen=True)
class RevertReport:
    failed: list[str]  # could not be reverted: a human is needed
    not_started: list[str] = field(default_factory=list)  # a signal stopped the admission
    stopped_waiting: str | None = None
    """Set when a signal stopped the response while it waited for the fleet to be read
    (the balancer not answering), before any host was touched: what it waited for."""


def hosts_to_revert(
    fleet: Fleet,
    observed: Observed,
    release: str,
    fallbacks: Mapping[str, str],
    *,
    all_hosts: bool = False,
) -> list[HostRef]:
    """Hosts not serving their fallback: on `release`, out of the pool, or running nothing
    (with `all_hosts`, every host not on its fallback), from an observation of the fleet.

    Hosts out of the pool come first: they already hold a capacity slot.
    """
    out: list[HostRef] = []
    first: list[HostRef] = []
    for h in fleet.hosts:
        if h.name not in fallbacks:
            continue
        state, active = observed[h.name]
        serving = state is LbState.SERVING
        back = active == fallbacks[h.name] and serving
        if not back and (all_hosts or active in (release, None) or not serving):
            (out if serving else first).append(h)
    return first + out


async def immune_response(
    fleet: Fleet,
    rec: Recorder,
    switcher: HostSwitcher,
    release: str,
    fallbacks: Mapping[str, str],
    reason: str,
    *,
    all_hosts: bool = False,
    admit: anyio.CancelScope | None = None,
    waiting: anyio.CancelScope | None = None,
) -> RevertReport:
    """Revert the fleet; report the hosts that could not be reverted and those not started.

    Hosts are admitted in order (those already out of the pool first) as capacity allows; a
    host whose revert fails stays out (parked), and hosts that could then only leave the pool
    past `max_unavailable` are reported at once instead of waiting for the deadline. Raises
    LeaseLost / JournalError (change nothing more), which stop every walk at once.
    Cancelling `admit` (a signal) starts no more hosts; hosts in flight finish.

    Before any host is touched the fleet is read (the balancer's view); while it cannot be
    (a balancer down or frozen) the response waits, journaling `immune.waiting` at once and
    then "still waiting for the balancer: N s of M" every `waiting_every(M)` seconds, M
    being `timeouts.revert`. Cancelling `waiting` (a signal) ends that wait: the response
    touched no host, the report's `stopped_waiting` says what it waited for (`resume` finishes
    the revert: the journal says a revert began). The first read is not cut short by a
    signal: it is bounded by the balancer client's own deadline (`retry_for`). When the
    deadline passes before the fleet could be read, the hosts the run's journal says are
    not back on their fallback are reported (every host when it says none: nothing was
    seen back).
    """
    failed: list[str] = []
    admitted: set[str] = set()
    not_started: list[str] = []
    deadline = fleet.config.timeouts.revert
    capacity = switcher.capacity
    with switcher.shielded():
        pending = set(fallbacks)  # unknown until the hosts and the balancer have answered
        last: list[str] = []  # the balancer's last error while the fleet could not be read
        read = False
        with anyio.move_on_after(deadline) as scope:
            # observe → derive → act: the observation is journaled, and folded into the
            # run's view (hosts the balancer reports serving again free their slot)
            seen = await _observe(fleet, rec, reason, deadline, waiting, last)
            if seen is None:  # a signal during the wait
                return RevertReport([], [], stopped_waiting=last[0])
            observed, read = seen, True
            targets = hosts_to_revert(fleet, observed, release, fallbacks, all_hosts=all_hosts)
            pending = {h.name for h in targets}
            await rec.record(
                "immune.started",
                f"reverting {len(targets)} host(s): {reason}",
                hosts=[h.name for h in targets],
                reason=reason,
                observed=encode(observed),
            )

            async def revert_one(h: HostRef) -> None:
                try:
                    await switcher.switch(h, fallbacks[h.name], purpose="revert", shield=False)
                except (LeaseLost, JournalError):
                    raise
                except ImmunityError as exc:
                    log.error("revert of %s failed: %s", h.name, exc)
                    failed.append(h.name)
                    await capacity.give_back(h.name, parked=True)
                pending.discard(h.name)

            async with anyio.create_task_group() as tg:
                with admit or anyio.CancelScope():
                    for h in targets:
                        try:
                            await capacity.take(h.name)
                        except CapacityExhausted as exc:
                            await rec.record("immune.host_skipped", exc.message, host=h.name)
                            failed.append(h.name)
                            pending.discard(h.name)
                            continue
                        admitted.add(h.name)
                        tg.start_soon(revert_one, h)
            not_started = sorted(pending - admitted)
            pending -= set(not_started)
        if scope.cancelled_caught and not read:
            believed = rec.view.believed() if rec.view is not None else {}
            names = [h.name for h in hosts_to_revert(fleet, believed, release, fallbacks)]
            pending = set(names or fallbacks)
            failed.extend(sorted(pending))
            await rec.record(
                "immune.timed_out",
                f"revert deadline {deadline:g}s passed waiting for the balancer "
                f"({last[0] if last else 'no answer'}): {', '.join(sorted(pending))} not "
                "reverted",
                hosts=sorted(pending),
            )
        elif scope.cancelled_caught:
            failed.extend(sorted(pending))
            await rec.record(
                "immune.timed_out",
                f"revert deadline {deadline:g}s passed with {', '.join(sorted(pending))} unfinished",
                hosts=sorted(pending),
            )
    return RevertReport(sorted(failed), not_started)


def waiting_every(deadline: float) -> float:
    """Seconds between two "still waiting for the balancer" lines of a revert whose
    deadline is `deadline` s: a tenth of it, within 1 and 30 s."""
    return max(1.0, min(30.0, deadline / 10))


async def _observe(
    fleet: Fleet,
    rec: Recorder,
    reason: str,
    deadline: float,
    waiting: anyio.CancelScope | None,
    last: list[str],
) -> Observed | None:
    """`Fleet.observe`, asked again with backoff while the balancer does not answer: the
    revert must not give up on a blip (the caller's deadline bounds it). Says so at once
    and then every `waiting_every(deadline)` s (`immune.waiting`, with the revert's
    `reason`: the run's fold takes it for a revert begun); a cancelled `waiting` scope (a
    signal) ends the wait after the first read: None. `last` gets the last error."""
    clock = fleet.clock
    t0 = clock.monotonic()
    every = waiting_every(deadline)

    async def tell() -> None:
        while True:
            await clock.sleep(every)
            waited = clock.monotonic() - t0
            said = f" (last try: {last[0]})" if last else " (no answer yet)"
            await rec.record(
                "immune.waiting",
                f"still waiting for the balancer: {waited:.0f} s of {deadline:g} s{said}",
                reason=reason,
                waited_s=round(waited, 3),
                deadline_s=deadline,
            )

    async def read() -> Observed:
        return (await fleet.observe(lenient=True)).states

    async with anyio.create_task_group() as tg:
        tg.start_soon(tell)
        try:
            found = await read()
            tg.cancel_scope.cancel()
            return found
        except ImmunityError as exc:
            last[:] = [exc.message]
        await rec.record(
            "immune.waiting",
            f"cannot read the fleet yet: {last[0]}; waiting up to {deadline:g} s for the "
            "balancer (a signal stops the wait: the revert has touched no host yet)",
            reason=reason,
            deadline_s=deadline,
        )
        delay = 0.2
        with waiting or anyio.CancelScope():
            while True:
                await clock.sleep(delay)
                delay = min(2.0, delay * 2)
                try:
                    found = await read()
                    tg.cancel_scope.cancel()
                    return found
                except ImmunityError as exc:
                    last[:] = [exc.message]
        tg.cancel_scope.cancel()
    return None


async def revert(
    run: Run,
    reason: str,
    fallbacks: Mapping[str, str],
    *,
    done: RunOutcome = RunOutcome.REVERTED,
    all_hosts: bool = False,
    detected_after_s: float | None = None,
    verdict: Verdict | None = None,
) -> None:
    """The immune response as the rest of a run (a failed verdict, an abort, a rollback),
    then how the run ends: `done` (REVERTED: found worse; INCONCLUSIVE: reverted for lack
    of evidence; ABORTED: `resume --abort`; ROLLED_BACK), `revert_incomplete` naming the
    hosts a human must mend, or interrupted / terminated by a signal with the hosts not
    reverted yet. `reverted_after_s` counts from this call, which `reverted_from` names."""
    t0 = run.fleet.clock.monotonic()
    admit = run.on_stop(anyio.CancelScope())
    waiting = run.on_stop(anyio.CancelScope())
    try:
        report = await immune_response(
            run.fleet,
            run.rec,
            run.switcher,
            run.release,
            fallbacks,
            reason,
            all_hosts=all_hosts,
            admit=admit,
            waiting=waiting,
        )
    finally:
        run.forget_stop(admit)
        run.forget_stop(waiting)
    extra: dict[str, Any] = {"verdict": verdict.to_dict()} if verdict is not None else {}
    if verdict is not None:
        since = "verdict"
    elif done is RunOutcome.ABORTED:
        since = "abort"
    elif done is RunOutcome.ROLLED_BACK and not run.resumed:
        since = "request"
    else:
        since = "resume"
    if report.failed:
        await run.conclude(
            RunOutcome.REVERT_INCOMPLETE,
            reason,
            message=f"could not revert {', '.join(report.failed)}: a human is needed",
            needs_human=report.failed,
            detected_after_s=detected_after_s,
            **extra,
        )
    elif report.stopped_waiting is not None and run.stopping:
        # hosts out of the pool stay out until the balancer answers, whoever waits: the
        # revert cannot put them back before, so the run ends and names them
        left = sorted(run.view.out)
        out = f" (the journal last had {', '.join(left)} out of the pool)" if left else ""
        await run.conclude(
            run.stopping,
            f"{run.stopped_by} received during the revert ({reason}) while waiting for the "
            f"balancer ({report.stopped_waiting}); the revert touched no host{out}: "
            "`immunity resume` finishes the revert",
            waited_for=report.stopped_waiting,
            detected_after_s=detected_after_s,
            **extra,
        )
    elif report.not_started and run.stopping:
        await run.conclude(
            run.stopping,
            f"{run.stopped_by} received during the revert ({reason}); hosts in flight finished, "
            f"{', '.join(report.not_started)} not reverted yet: `immunity resume` finishes the "
            "revert",
            not_started=report.not_started,
            detected_after_s=detected_after_s,
            **extra,
        )
    else:
        await run.conclude(
            done,
            reason,
            message=f"fleet back on its previous release: {reason}",
            detected_after_s=detected_after_s,
            reverted_after_s=round(run.fleet.clock.monotonic() - t0, 3),
            reverted_from=since,
            **extra,
        )
