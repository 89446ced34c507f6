"""The immune response: revert every host that took the new release, fast, shielded.

Every host whose active release is the new one — or that is out of the pool, or runs
nothing — walks back to its fallback (the release it ran at preflight) by the same switch,
in parallel within `max_unavailable`. The whole response is shielded from Ctrl-C and from
failing siblings and has its own deadline (`timeouts.revert`); hosts it could not bring
back are returned so that the caller raises `RevertIncomplete` and a human is told which.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anyio

from immunity.domain import HostRef, LbState
from immunity.engine.context import Fleet
from immunity.engine.host import HostSwitcher
from immunity.engine.record import Recorder
from immunity.errors import ImmunityError

log = logging.getLogger("immunity.engine")


async def hosts_to_revert(
    fleet: Fleet, release: str, fallbacks: Mapping[str, str], *, all_hosts: bool = False
) -> list[HostRef]:
    """Hosts not serving their fallback: on `release`, out of the pool, or running nothing.

    Hosts out of the pool come first: they already hold a capacity slot.
    """
    members = await fleet.lb.members(fleet.hosts)
    out: list[HostRef] = []
    first: list[HostRef] = []
    for h in fleet.hosts:
        if h.name not in fallbacks:
            continue
        try:
            active = await fleet.driver.active_release(h)
        except ImmunityError:
            active = None
        m = members.get(h.name)
        serving = m is not None and m.state is LbState.SERVING
        if all_hosts and active != fallbacks[h.name]:
            (out if serving else first).append(h)
        elif active == release or active is None or not serving:
            if active == fallbacks[h.name] and serving:
                continue
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
) -> list[str]:
    """Revert the fleet; return the names of the hosts that could not be reverted."""
    failed: list[str] = []
    deadline = fleet.config.timeouts.revert
    with anyio.CancelScope(shield=True):
        pending = set(fallbacks)  # unknown until the hosts and the balancer have answered
        with anyio.move_on_after(deadline) as scope:
            targets = await _targets(fleet, rec, release, fallbacks, all_hosts=all_hosts)
            pending = {h.name for h in targets}
            await rec.record(
                "immune.started",
                f"reverting {len(targets)} host(s): {reason}",
                hosts=[h.name for h in targets],
                reason=reason,
            )

            async def revert_one(h: HostRef) -> None:
                try:
                    await switcher.switch(h, fallbacks[h.name], purpose="revert", shield=False)
                    pending.discard(h.name)
                except ImmunityError as exc:
                    log.error("revert of %s failed: %s", h.name, exc)
                    failed.append(h.name)
                    pending.discard(h.name)

            async with anyio.create_task_group() as tg:
                for h in targets:
                    tg.start_soon(revert_one, h)
        if scope.cancelled_caught:
            failed.extend(sorted(pending))
            await rec.record(
                "immune.timed_out",
                f"revert deadline {deadline:g}s passed with {sorted(pending)} unfinished",
                hosts=sorted(pending),
            )
    return failed


async def _targets(
    fleet: Fleet, rec: Recorder, release: str, fallbacks: Mapping[str, str], *, all_hosts: bool
) -> list[HostRef]:
    """`hosts_to_revert`, asked again with backoff while the hosts or the balancer do not
    answer: the revert must not give up on a blip (the caller's deadline bounds it)."""
    delay = 0.2
    told = False
    while True:
        try:
            return await hosts_to_revert(fleet, release, fallbacks, all_hosts=all_hosts)
        except ImmunityError as exc:
            if not told:
                await rec.record("immune.waiting", f"cannot read the fleet yet: {exc.message}")
                told = True
            await fleet.clock.sleep(delay)
            delay = min(2.0, delay * 2)
