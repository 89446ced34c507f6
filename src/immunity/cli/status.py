"""What `immunity status` tells the user: what `immunity.fleet.status` reads, and what keeps the fleet
from being steady, each with the command that mends it (`attention`, `steady`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from immunity.domain import outcome_words
from immunity.fleet import status as read
from immunity.fleet.context import Fleet, by_release, spelled
from immunity.fleet.state import derive
from immunity.journal.base import JournalEntry


async def status(fleet: Fleet) -> dict[str, Any]:
    """`fleet.status.status` with `attention` (one line each, empty when steady), `steady`,
    and `steps`: while a live run holds the lease, each host in an open step with that step
    (`{"h1": "deploy: warmup"}`); the journal and the balancer are expected to lag such a
    host, so its disagreements are left out (the step says what is going on)."""
    data = await read.status(fleet)
    data["steps"] = {}
    lease = data.get("lease")
    if data["running"] and lease and not lease.get("silent"):
        steps = host_steps(await fleet.journal.entries(lease["deployment_id"]), fleet)
        data["steps"] = steps
        data["disagreements"] = [
            d for d in data["disagreements"] if d.partition(": ")[0] not in steps
        ]
    data["attention"] = attention(data, fleet.loaded.path)
    data["steady"] = not data["attention"]
    return data


def when(iso: str) -> str:
    """An ISO timestamp as people read it: `2026-11-30 10:34:26 UTC`."""
    return dt.datetime.fromisoformat(iso).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def host_steps(entries: Sequence[JournalEntry], fleet: Fleet) -> dict[str, str]:
    """Per host in an open step of the run `entries` record, that step (`deploy: warmup`)."""
    out: dict[str, str] = {}
    for name, h in derive(entries, None, fleet.hosts).hosts.items():
        if h.steps and h.steps[-1].finished_at is None:
            out[name] = f"{h.steps[-1].purpose or 'deploy'}: {h.steps[-1].step}"
    return out


_MID_WALK = frozenset(
    ("draining", "stopped", "installed", "started", "verified", "warming", "enabling")
)
"""`HostPhase`s of a walk in flight (a step started, the walk not ended)."""


def attention(data: Mapping[str, Any], cfg: object) -> list[str]:
    """What keeps the fleet from being steady (one release, every host serving, the last
    run finished), one line each with the way out; empty when steady. `data` is
    `fleet.status.status`'s; `cfg` the config's path, for the commands named."""
    hosts: Sequence[dict[str, Any]] = data["hosts"]
    running = bool(data["running"])
    last = data["last_deployment"]
    out: list[str] = []
    on = by_release({h["name"]: h["active_release"] for h in hosts})
    if len(on) > 1:
        out.append(f"the fleet is mixed: {spelled(on)}")
    steps: Mapping[str, str] = data.get("steps") or {}
    for h in hosts:
        if h["name"] in steps:  # mid-step in a live run: out of the pool on purpose
            continue
        if h["lb_state"] not in ("serving", "unknown"):  # unknown: the balancer is named
            out.append(f"{h['name']} is not serving ({h['lb_state']})")
    for h in hosts if not running else ():
        if h.get("phase") in _MID_WALK and h["lb_state"] == "serving":
            out.append(
                f"{h['name']} serves {h['active_release'] or 'nothing'} in the pool though the "
                f"journal has its walk stopped mid-step ({h['phase']}): its run ended first (a "
                "run whose journal failed puts its hosts in flight back unjournaled); "
                "`immunity resume` journals what it finds and walks it again"
            )
    if last is not None and not running:
        what = "rollback" if last["release"].startswith("rollback:") else "deployment"
        words = last.get("label") or last["release"]
        if last["outcome"] in ("unfinished", "interrupted", "terminated", "held"):
            out.append(
                f"the last {what}, {last['id']} ({words}), is "
                f"{last['outcome']}: `immunity resume -c {cfg}` finishes it, "
                f"`immunity resume -c {cfg} --abort` undoes it; a new deploy is refused until then"
            )
        elif last["outcome"] in ("revert_incomplete", "failed"):
            out.append(
                f"the last {what}, {last['id']} ({words}), ended "
                f"{outcome_words(last['outcome'])}: "
                f"`immunity show -c {cfg} {last['id']}` says what is left; `immunity rollback "
                f"-c {cfg}` puts every host back on the release it ran before it"
            )
    if running:
        out.append(_running(data.get("lease"), last, cfg))
    out.extend(f"disagreement: {d}" for d in data["disagreements"])
    return out


def _running(lease: Mapping[str, Any] | None, last: Mapping[str, Any] | None, cfg: object) -> str:
    """The line for a run holding the lease: "in progress" while it heart-beats; silent past
    `lease_ttl`, whether its process is stopped (SIGSTOP) and how to get past it."""
    run = last["id"] if last else "lease held"
    if not lease or not lease.get("silent"):
        return f"a run is in progress ({run})"
    pid = str(lease["holder"]).rpartition(":")[2]
    if lease.get("holder_stopped"):
        where = f"its process, pid {pid} on this machine, is stopped (SIGSTOP) and"
        way = f"`kill -CONT {pid}` lets it go on; if it is stuck, stop it (`kill {pid}`), "
    elif lease.get("holder_alive"):
        where = f"its process, pid {pid} on this machine, runs but"
        way = f"if it is stuck, stop it (`kill {pid}`), "
    else:
        where, way = f"its holder {lease['holder']}", ""
    return (
        f"a run holds the lease ({run}) and {where} has not heart-beaten since "
        f"{when(lease['heartbeat_at'])}: {way}then `immunity resume -c {cfg}` finishes it"
    )
