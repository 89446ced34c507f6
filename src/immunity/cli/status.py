"""What `immunity status` tells the user: what `immunity.fleet.status` reads, and what keeps the fleet
from being steady, each with the command that mends it (`attention`, `steady`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from immunity.domain import outcome_words
from immunity.fleet import status as read
from immunity.fleet.context import Fleet, by_release, spelled


async def status(fleet: Fleet) -> dict[str, Any]:
    """`fleet.status.status` with `attention` (one line each, empty when steady) and `steady`."""
    data = await read.status(fleet)
    data["attention"] = attention(data, fleet.loaded.path)
    data["steady"] = not data["attention"]
    return data


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
    for h in hosts:
        if h["lb_state"] not in ("serving", "unknown"):  # unknown: the balancer is named
            out.append(f"{h['name']} is not serving ({h['lb_state']})")
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
        f"{lease['heartbeat_at']}: {way}then `immunity resume -c {cfg}` finishes it"
    )
