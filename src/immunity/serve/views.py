"""What the page shows, as plain dicts: each app's hosts (active release, balancer state,
phase), its deployments, and one deployment's steps and verdict.

The hosts' releases and pool states come from the hosts and the balancer themselves
(`fleet.status`); a host's *phase* is derived from the running deployment's journal
entries: the step it is in (`deploy: install`, `revert: drain`), else `serving` or `out`.
Nothing here writes anything, and nothing from the config is shown but app and host names.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from immunity.domain import HostRef, outcome_words, utcnow
from immunity.errors import ImmunityError
from immunity.fleet import status as read
from immunity.fleet.context import Fleet
from immunity.fleet.state import derive, host_rows
from immunity.journal import holder_alive
from immunity.journal.base import DeploymentRecord, JournalEntry

# entry kinds that say where a running deployment is, in words
_STAGE = {
    "deployment.started": "starting",
    "deployment.resumed": "resumed",
    "wave.started": "switching wave {wave}",
    "bake.started": "baking wave {wave}",
    "verdict.looked": "baking wave {wave}",
    "wave.passed": "wave {wave} passed",
    "verdict.failed": "release failed: reverting",
    "immune.started": "reverting the fleet",
    "immune.waiting": "reverting: waiting for the balancer to answer",
    "rollback.started": "rolling back",
    "deployment.stopping": "stopping (signal)",
}


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds") if t else None


def _ago(t: dt.datetime | None) -> str:
    if t is None:
        return ""
    s = max(0, int((utcnow() - t).total_seconds()))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def stage(entries: Sequence[JournalEntry]) -> str:
    """Where a running deployment is, from its latest telling entry."""
    for e in reversed(entries):
        if e.kind == "wave.started" and e.data.get("holdback"):
            return "switching the holdback"
        if e.kind in _STAGE:
            try:
                return _STAGE[e.kind].format(**{"wave": "?", **dict(e.data)})
            except (KeyError, IndexError, ValueError):
                return _STAGE[e.kind]
    return "starting"


def host_phases(entries: Sequence[JournalEntry], fleet: Fleet) -> dict[str, str]:
    """Per host, the step it is in now (`deploy: install`), for hosts in an open step."""
    out: dict[str, str] = {}
    for name, h in derive(entries, None, fleet.hosts).hosts.items():
        if h.steps and h.steps[-1].finished_at is None:
            out[name] = f"{h.steps[-1].purpose or 'deploy'}: {h.steps[-1].step}"
    return out


async def app_view(fleet: Fleet) -> dict[str, Any]:
    """One app: its hosts as the hosts and balancer report them, and what runs right now."""
    try:
        st = await read.status(fleet)
    except ImmunityError as exc:
        return {"app": fleet.app, "error": exc.message, "hosts": [], "running": None}
    running: dict[str, Any] | None = None
    phases: dict[str, str] = {}
    lease = st.get("lease")
    if lease:
        entries = await fleet.journal.entries(lease["deployment_id"])
        phases = host_phases(entries, fleet)
        rec = next(
            (d for d in reversed(await _deployments(fleet)) if d.id == lease["deployment_id"]),
            None,
        )
        machine, _, pid = str(lease["holder"]).rpartition(":")
        running = {
            "id": lease["deployment_id"],
            "release": rec.release if rec else "?",
            "stage": stage(entries),
            "machine": machine,
            "pid": pid,
            "since": _iso(dt.datetime.fromisoformat(lease["since"])),
            "heartbeat": _ago(dt.datetime.fromisoformat(lease["heartbeat_at"])),
            "holder_alive": lease["holder_alive"],
            "last_event": entries[-1].kind if entries else None,
        }
    hosts = []
    for h in st["hosts"]:
        lb = h["lb_state"]
        phase = phases.get(h["name"]) or ("serving" if lb == "serving" else f"out ({lb})")
        if running and h["name"] not in phases and h["active_release"] == running["release"]:
            phase = f"{phase}, on the new release"
        hosts.append(
            {
                "name": h["name"],
                "active_release": h["active_release"],
                "installed_releases": h["installed_releases"],
                "lb_state": lb,
                "phase": phase,
                "busy": h["name"] in phases,
                "error": h.get("error"),
            }
        )
    return {
        "app": fleet.app,
        "hosts": hosts,
        "running": running,
        "disagreements": st["disagreements"] if not running else [],
        "last_deployment": st["last_deployment"],
        "error": None,
    }


async def _deployments(fleet: Fleet) -> Sequence[DeploymentRecord]:
    return await fleet.journal.deployments(fleet.app)


async def live_runs(fleets: Sequence[Fleet]) -> dict[str, bool | None]:
    """Per app the fleets serve, whether its unfinished deployment runs: the lease holder's
    id -> True (its process runs), False (gone), None (on another machine: cannot tell);
    an app with no lease maps its name -> False (nothing runs it)."""
    out: dict[str, bool | None] = {}
    for fleet in fleets:
        lease = await fleet.journal.current_lease(fleet.app)
        if lease is None:
            out.setdefault(fleet.app, False)
        else:
            out[lease.deployment_id] = holder_alive(lease.holder, lease.acquired_at)
    return out


def _unfinished(d: DeploymentRecord, live: Mapping[str, bool | None]) -> str:
    """What an unfinished deployment is doing: running, interrupted, or (its holder on
    another machine, or an app no fleet here serves) running or interrupted."""
    if d.id in live:
        alive = live[d.id]
        return "running" if alive else "interrupted" if alive is False else "running or interrupted"
    if d.app in live:  # the app's lease is free or held for another deployment
        return "interrupted"
    return "running or interrupted"


def deployment_row(
    d: DeploymentRecord, live: Mapping[str, bool | None] | None = None
) -> dict[str, Any]:
    """One deployment as the API lists it. `live` from `live_runs` says whether an
    unfinished one runs. `verdict` is the judges' last outcome, None when the release was
    not judged to the end (aborted with `resume --abort`)."""
    res = d.data.get("result") or {}
    verdict = res.get("verdict") or {}
    state = _unfinished(d, live or {}) if d.outcome is None else ""
    return {
        "id": d.id,
        "app": d.app,
        "release": d.release,
        "label": d.release_words,  # a rollback's "rollback v5 → v4", not rollback:v5
        "outcome": d.outcome or state,
        "said": outcome_words(d.outcome) if d.outcome else state,
        "finished": d.finished_at is not None,
        "reason": d.reason or verdict.get("reason") or "",
        "started_at": _iso(d.started_at),
        "finished_at": _iso(d.finished_at),
        "duration_s": res.get("duration_s")
        or (round((d.finished_at - d.started_at).total_seconds(), 1) if d.finished_at else None),
        "verdict": None if d.outcome == "aborted" else verdict.get("outcome"),
    }


async def deployments_view(fleets: Sequence[Fleet], limit: int = 50) -> list[dict[str, Any]]:
    """The latest deployments in the fleets' journals, every app's (a shared journal holds
    other teams' too), newest first."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    live = await live_runs(fleets)
    for fleet in fleets:
        for d in await fleet.journal.deployments():
            if d.id not in seen:
                seen.add(d.id)
                rows.append(deployment_row(d, live))
    rows.sort(key=lambda r: (r["started_at"] or "", r["id"]), reverse=True)
    return rows[:limit]


def _summary(e: JournalEntry) -> str:
    d = dict(e.data)
    for k in ("message", "reason", "error"):
        if isinstance(d.get(k), str):
            return str(d[k])[:300]
    keep = {
        k: v for k, v in d.items() if k in ("release", "wave", "purpose", "outcome", "t_s", "hosts")
    }
    return ", ".join(f"{k}={v}" for k, v in keep.items())[:300]


async def deployment_view(fleet: Fleet, deployment_id: str) -> dict[str, Any] | None:
    """One deployment in the fleet's journal (of any app): its row, per-host steps, every
    journal entry, its verdict(s)."""
    rec = next((d for d in await fleet.journal.deployments() if d.id == deployment_id), None)
    if rec is None:
        return None
    entries = await fleet.journal.entries(deployment_id)
    hosts = (
        fleet.hosts
        if rec.app == fleet.app
        else [HostRef(name=n) for n in sorted({e.host for e in entries if e.host})]
    )
    res = rec.data.get("result") or {}
    verdicts = [
        {"at": _iso(e.at), "kind": e.kind, "outcome": e.data.get("outcome"), "text": _summary(e)}
        for e in entries
        if e.kind in ("verdict.reached", "verdict.failed")
    ]
    return {
        "deployment": deployment_row(rec, await live_runs([fleet])),
        "verdict": res.get("verdict"),
        "verdicts": verdicts,
        "detected_after_s": res.get("detected_after_s"),
        "reverted_after_s": res.get("reverted_after_s"),
        "needs_human": res.get("needs_human") or [],
        "hosts": host_rows(derive(entries, None, hosts)),
        "entries": [
            {
                "seq": e.seq,
                "at": _iso(e.at),
                "kind": e.kind,
                "host": e.host or "",
                "step": e.step or "",
                "text": _summary(e),
            }
            for e in entries
        ],
    }
