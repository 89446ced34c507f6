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

import anyio

from immunity.domain import HostRef, LbState
from immunity.engine.context import Fleet
from immunity.engine.fleetview import Observed, encode
from immunity.engine.host import HostSwitcher
from immunity.engine.record import Recorder
from immunity.errors import CapacityExhausted, ImmunityError, JournalError, LeaseLost

log = logging.getLogger("immunity.engine")


@dataclass(frozen=True)
class RevertReport:
    failed: list[str]  # could not be reverted: a human is needed
    not_started: list[str] = field(default_factory=list)  # a signal stopped the admission


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
) -> RevertReport:
    """Revert the fleet; report the hosts that could not be reverted and those not started.

    Hosts are admitted in order (those already out of the pool first) as capacity allows; a
    host whose revert fails stays out (parked), and hosts that could then only leave the pool
    past `max_unavailable` are reported at once instead of waiting for the deadline. Raises
    LeaseLost / JournalError (change nothing more), which stop every walk at once.
    Cancelling `admit` (a signal) starts no more hosts; hosts in flight finish.
    """
    failed: list[str] = []
    admitted: set[str] = set()
    not_started: list[str] = []
    deadline = fleet.config.timeouts.revert
    capacity = switcher.capacity
    with switcher.shielded():
        pending = set(fallbacks)  # unknown until the hosts and the balancer have answered
        with anyio.move_on_after(deadline) as scope:
            # observe → derive → act: the observation is journaled, and folded into the
            # run's view (hosts the balancer reports serving again free their slot)
            observed = await _observe(fleet, rec)
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
                    await capacity.park(h.name)
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
        if scope.cancelled_caught:
            failed.extend(sorted(pending))
            await rec.record(
                "immune.timed_out",
                f"revert deadline {deadline:g}s passed with {sorted(pending)} unfinished",
                hosts=sorted(pending),
            )
    return RevertReport(sorted(failed), not_started)


async def _observe(fleet: Fleet, rec: Recorder) -> Observed:
    """`Fleet.observe`, asked again with backoff while the balancer does not answer: the
    revert must not give up on a blip (the caller's deadline bounds it)."""
    delay = 0.2
    told = False
    while True:
        try:
            return await fleet.observe(lenient=True)
        except ImmunityError as exc:
            if not told:
                await rec.record("immune.waiting", f"cannot read the fleet yet: {exc.message}")
                told = True
            await fleet.clock.sleep(delay)
            delay = min(2.0, delay * 2)
