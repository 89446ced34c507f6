"""Who holds an app's lease, and whether that process still runs.

A holder is `machine:pid` (`holder_name`), so a human can find it and, on the same machine,
the journal's users can prove it dead by its PID (`holder_alive`); `explain_lease_held`
turns the journal's LeaseHeld into a message and hint that match the holder.
"""

from __future__ import annotations

import datetime as dt
import os
import socket

import psutil

from immunity.domain import utcnow
from immunity.errors import LeaseHeld
from immunity.journal.base import Journal


def machine_name() -> str:
    """This machine's name in leases: $IMMUNITY_MACHINE, else the host name.

    Set IMMUNITY_MACHINE where host names say nothing (containers, CI runners with random
    names) so that `exit 5` messages and `serve` name a machine people recognise. Only a
    holder on *this* machine can be proven dead by its PID; any other waits for lease_ttl.
    """
    return os.environ.get("IMMUNITY_MACHINE") or socket.gethostname()


def holder_name() -> str:
    """Who holds a lease: machine name and PID (`machine:pid`), so a human can find it."""
    return f"{machine_name()}:{os.getpid()}"


def holder_alive(
    holder: str, since: dt.datetime | None = None, now: dt.datetime | None = None
) -> bool | None:
    """Whether a lease holder's process runs: True / False when it ran on this machine (its
    PID is / is not alive, and started before `since`, the lease's acquisition: a recycled
    PID is not the holder), None when it ran elsewhere (only its heartbeat can tell).
    `now` is the time on the clock `since` was read from (a virtual clock's in tests and
    the bench), to place `since` on the machine's clock; the machine's by default."""
    host, _, pid = holder.rpartition(":")
    if host != machine_name() or not pid.isdigit():
        return None
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    if since is not None and now is not None:
        since += utcnow() - now
    return since is None or started <= since.timestamp() + 1.0


def holder_stopped(holder: str) -> bool:
    """Whether a lease holder's process runs on this machine but is stopped (SIGSTOP, a
    debugger): alive, yet it will neither heart-beat nor finish until woken or killed."""
    host, _, pid = holder.rpartition(":")
    if host != machine_name() or not pid.isdigit():
        return False
    try:
        status = psutil.Process(int(pid)).status()
    except (psutil.Error, OSError):
        return False
    return status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


async def explain_lease_held(
    journal: Journal,
    app: str,
    lease_ttl: float,
    exc: LeaseHeld,
    now: dt.datetime | None = None,
) -> LeaseHeld:
    """The journal's LeaseHeld with a state and hint that match the holder: alive and
    heart-beating → wait; its process gone → resume; alive on this machine but silent past
    `lease_ttl` → stop that process, then resume; silent on another machine → resume.
    Its context's `running` says whether a process still runs the deployment (alive, or
    heart-beating): when not, the deployment is unfinished rather than held (see
    `fleet.preflight.refuse_over_unfinished`). `now` is the fleet clock's time (the lease's
    times come from it; the machine's UTC time by default)."""
    lease = await journal.current_lease(app)
    if lease is None:
        return exc
    machine, _, pid = lease.holder.rpartition(":")
    who = f"pid {pid} on machine {machine}" if machine else f"holder {lease.holder}"
    since = lease.acquired_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    beat = lease.heartbeat_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    silent = ((now or utcnow()) - lease.heartbeat_at).total_seconds() >= lease_ttl
    alive = holder_alive(lease.holder, lease.acquired_at, now)
    if alive is False:
        state = "and its process is gone"
        hint = "run `immunity resume -c FILE` to finish or undo it (`--abort` reverts)"
    elif not silent:
        state = "and it is alive and heart-beating"
        hint = "wait for it to finish (`immunity status -c FILE` shows its progress)"
    elif alive:
        state = f"and its process is running but has not heart-beaten since {beat}"
        hint = f"it may be stuck: stop it (kill {pid}), then run `immunity resume -c FILE`"
    else:
        state = f"and it has not heart-beaten since {beat}"
        hint = "run `immunity resume -c FILE` to take it over and finish or undo it"
    return LeaseHeld(
        f"{app} is being deployed by another orchestrator: {who} holds the lease since "
        f"{since} (deployment {lease.deployment_id}), {state}",
        hint=hint,
        context={
            **exc.context,
            "holder": lease.holder,
            "alive": alive,
            "running": bool(alive) or (alive is None and not silent),
        },
    )
