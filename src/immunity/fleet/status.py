"""`immunity status`: each host as the hosts, the balancer and the last run's journal say.

It only reads: the fleet (`Fleet.observe`, a `Sighting`), the last run's journal folded with
that sighting (`derive`: a `FleetView`), the balancer's whole pool and the app's lease. What
the user is told to do about it is the CLI's (`cli.status`).
"""

from __future__ import annotations

from typing import Any

import anyio

from immunity.errors import ImmunityError
from immunity.fleet.context import Fleet, last_deployment, ran_before, unknown_members
from immunity.fleet.state import derive
from immunity.journal import holder_alive, holder_stopped

STATUS_WAIT_S = 2.0
"""How long `status` waits for the balancer: it only reads, so it does not ride out a long
blip the way a deployment's steps do (the HAProxy adapter retries a socket for 10 s); a
balancer that does not answer is said so, beside what the hosts report."""


async def status(fleet: Fleet) -> dict[str, Any]:
    """Each host as the hosts, the balancer and the last run's journal say (a `FleetView`),
    every disagreement between them, the lease, the last deployment and whether a run is in
    progress. A balancer that does not answer within `STATUS_WAIT_S` leaves each host's pool
    state `unknown` and is named in `balancer_error` (what the user is told to do about any
    of it is the CLI's: `cli.status`)."""
    seen = await fleet.observe(lenient=True, installed=True, balancer_wait=STATUS_WAIT_S)
    lb_error = seen.balancer_error
    record = await last_deployment(fleet)
    view = derive(
        await fleet.journal.entries(record.id) if record else [],
        seen,
        fleet.hosts,
        fallbacks=ran_before(record) if record else None,
    )
    hosts = []
    for h in fleet.hosts:
        v = view.hosts[h.name]
        lb_state = str(v.lb_state) if v.lb_state is not None else "out"
        row: dict[str, Any] = {
            "name": h.name,
            "active_release": v.active,
            "installed_releases": seen.installed[h.name],
            "lb_state": "unknown" if lb_error else lb_state,
            "journal_release": v.expected,
            "phase": str(v.phase),
        }
        if h.name in seen.errors:
            row["error"] = seen.errors[h.name]
        hosts.append(row)
    # with no word from the balancer, "balancer reports out" would be the view's guess
    disagreements = [d for d in view.disagreements if not (lb_error and ": balancer reports" in d)]
    try:
        if lb_error:
            raise ImmunityError(lb_error)
        with anyio.fail_after(STATUS_WAIT_S):
            pool = await fleet.lb.pool_members()
        for name in unknown_members(fleet, pool):
            disagreements.append(
                f"pool member {name} ({pool[name].detail or pool[name].state}) is not in the "
                "config's hosts: it serves unseen by immunity"
            )
    except ImmunityError as exc:
        disagreements.append(f"balancer unreadable: {exc.message}")
    except TimeoutError:
        disagreements.append(f"balancer unreadable: no answer within {STATUS_WAIT_S:g} s")
    lease = await fleet.journal.current_lease(fleet.app)
    out: dict[str, Any] = {
        "app": fleet.app,
        "hosts": hosts,
        "balancer_error": lb_error,
        "balancer_hint": seen.balancer_hint,
        "disagreements": disagreements,
        "lease": None,
        "last_deployment": None,
    }
    if lease:
        out["lease"] = {
            "holder": lease.holder,
            "deployment_id": lease.deployment_id,
            "since": lease.acquired_at.isoformat(),
            "heartbeat_at": lease.heartbeat_at.isoformat(),
            "holder_alive": holder_alive(lease.holder, lease.acquired_at, fleet.clock.now()),
            "holder_stopped": holder_stopped(lease.holder),
            "silent": (fleet.clock.now() - lease.heartbeat_at).total_seconds()
            >= fleet.config.lease_ttl,
        }
    if record:
        out["last_deployment"] = {
            "id": record.id,
            "release": record.release,
            "rollback": record.rollback,
            "label": record.release_words,  # a rollback's "rollback v5 → v4"
            "words": record.words,  # with the outcome: "v5 reverted"
            "outcome": record.outcome or "unfinished",
            "started_at": record.started_at.isoformat(),
            "finished_at": record.finished_at.isoformat() if record.finished_at else None,
            "reason": record.reason,
        }
    out["running"] = out["lease"] is not None and out["lease"]["holder_alive"] is not False
    return out
