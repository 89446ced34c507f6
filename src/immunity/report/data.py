"""A deployment's report as data, read from the journal alone (JSON-ready, no I/O here).

Inputs: the deployment's record (its stored result) and its journal entries. The per-look
evidence comes from `bake.looked` entries (docs/journal.md), decoded by
`immunity.analysis.read_looks`. Without such entries (journals written before every look was
recorded) the series are empty and the report says so.

Series are smoothed over `SMOOTH_LOOKS` looks (sums of requests, errors and histogram counts),
so a rate is errors/requests over the last few seconds rather than a single second's noise.
Latency quantiles come from the histograms by linear interpolation inside the bucket (the
judges' `histogram_quantile`); the overflow bucket reads as the last bound.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

from immunity.analysis.evidence import read_looks
from immunity.domain import brief, histogram_quantile, outcome_words, reason_beside
from immunity.journal.base import DeploymentRecord, JournalEntry

SMOOTH_LOOKS = 5
QUANTILES = (0.5, 0.99)
STEP_ORDER = ("drain", "stop", "install", "start", "verify", "warmup", "enable")


def quantile_ms(q: float, bounds: Sequence[float], buckets: Sequence[int]) -> float | None:
    """The q-quantile (ms) of a histogram (`judge.evidence.histogram_quantile`, the rule the
    judges use); None when empty, the last bound when it falls in the overflow bucket."""
    if not bounds or sum(buckets) <= 0:
        return None
    v = histogram_quantile(bounds, buckets, q)
    if math.isnan(v):
        return None
    return float(bounds[-1]) if math.isinf(v) else v


def _iso(at: dt.datetime | None) -> str | None:
    return at.isoformat() if at else None


def _secs(at: dt.datetime, t0: dt.datetime) -> float:
    return round((at - t0).total_seconds(), 3)


def looks(entries: Sequence[JournalEntry], t0: dt.datetime) -> list[dict[str, Any]]:
    """Every `bake.looked` entry, decoded by `immunity.analysis.read_looks`, flattened: `t`
    (s since start, the window's end), wave, bake, outcome, per signal and cohort `n`, `x`,
    `lat` (with the bounds in force), per check outcome and statistics."""
    out = []
    for look in read_looks(entries):
        end = dt.datetime.fromtimestamp(look.window[1], dt.UTC) if look.window[1] else t0
        signals: dict[str, dict[str, dict[str, Any]]] = {}
        bounds: dict[str, list[float]] = {}
        for sig, per in look.observations.items():
            signals[sig] = {}
            for c in ("canary", "baseline"):
                o = per.get(c)
                signals[sig][c] = {
                    "n": o.requests if o and o.available else 0,
                    "x": o.errors if o and o.available else 0,
                    "lat": list(o.latency_buckets) if o and o.available else [],
                }
                if o and o.latency_bounds_ms:
                    bounds[sig] = [float(b) for b in o.latency_bounds_ms]
        out.append(
            {
                "t": _secs(end, t0),
                "wave": look.wave,
                "bake": look.bake,
                "outcome": str(look.outcome),
                "signals": signals,
                "bounds": bounds,
                "checks": {
                    name: {"o": str(c.outcome), "s": dict(c.stats)}
                    for name, c in look.checks.items()
                },
            }
        )
    return out


def _add(a: list[int], b: Sequence[int]) -> list[int]:
    if len(b) > len(a):
        a = a + [0] * (len(b) - len(a))
    return [x + (b[i] if i < len(b) else 0) for i, x in enumerate(a)]


def series(look_rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per signal, per cohort: time, smoothed error rate and latency quantiles (ms).

    Smoothing restarts at each bake (a new wave's cohorts are different hosts).
    """
    out: dict[str, dict[str, Any]] = {}
    by_signal: dict[str, list[Mapping[str, Any]]] = {}
    for row in look_rows:
        for sig in row["signals"]:
            by_signal.setdefault(sig, []).append(row)
    for sig, rows in by_signal.items():
        s: dict[str, Any] = {"t": [], "wave": [], "bounds": []}
        for c in ("canary", "baseline"):
            s[c] = {"rate": [], "n": [], **{f"p{int(q * 100)}": [] for q in QUANTILES}}
        for i, row in enumerate(rows):
            s["t"].append(row["t"])
            s["wave"].append(row["wave"])
            bake = row.get("bake", row["wave"])
            window = [
                r
                for r in rows[max(0, i - SMOOTH_LOOKS + 1) : i + 1]
                if r.get("bake", r["wave"]) == bake
            ]
            bounds = row["bounds"].get(sig, [])
            for c in ("canary", "baseline"):
                n = sum(r["signals"][sig][c]["n"] for r in window)
                x = sum(r["signals"][sig][c]["x"] for r in window)
                lat: list[int] = []
                for r in window:
                    lat = _add(lat, r["signals"][sig][c]["lat"])
                s[c]["n"].append(row["signals"][sig][c]["n"])
                s[c]["rate"].append(round(x / n, 5) if n else None)
                for q in QUANTILES:
                    v = quantile_ms(q, bounds, lat)
                    s[c][f"p{int(q * 100)}"].append(round(v, 2) if v is not None else None)
        out[sig] = s
    return out


def timeline(entries: Sequence[JournalEntry], t0: dt.datetime) -> dict[str, Any]:
    """Each host's steps (start/end seconds, ok, purpose), the waves and the bakes."""
    hosts: dict[str, list[dict[str, Any]]] = {}
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    waves: list[dict[str, Any]] = []
    bakes: list[dict[str, Any]] = []
    holdback: str | None = None  # the host guard.started names as held back
    for e in entries:
        t = _secs(e.at, t0)
        if e.kind == "host.step_started" and e.host and e.step:
            row = {
                "step": e.step,
                "purpose": e.data.get("purpose") or "deploy",
                "release": e.data.get("release"),
                "start": t,
                "end": None,
                "ok": None,
            }
            hosts.setdefault(e.host, []).append(row)
            open_[(e.host, e.step)] = row
        elif e.kind in ("host.step_finished", "host.step_failed") and e.host and e.step:
            r = open_.pop((e.host, e.step), None)
            if r is not None:
                r["end"] = t
                r["ok"] = e.kind == "host.step_finished"
        elif e.kind == "wave.started":
            named = list(e.data.get("hosts") or [])
            # journals before `holdback: true` on the entry: the host guard.started held back
            held = bool(e.data.get("holdback")) or (holdback is not None and named == [holdback])
            same = next((w for w in waves if w["wave"] == e.data.get("wave")), None)
            if same is None:
                waves.append(
                    {
                        "wave": e.data.get("wave"),
                        # the host kept on the old release through the guard, switched last:
                        # "holdback" as the CLI and the events call it, not "wave N+1"
                        "label": "holdback" if held else f"wave {e.data.get('wave')}",
                        "start": t,
                        "end": None,
                        "hosts": named,
                    }
                )
            else:  # a resumed wave names only the hosts it has left: the wave is all of them
                same["hosts"] += [h for h in named if h not in same["hosts"]]
                same["end"] = None
                waves.append(waves.pop(waves.index(same)))
        elif e.kind == "guard.started":
            holdback = e.data.get("holdback")
            held_back = [str(h) for h in e.data.get("held_back") or []]
            waves.append(
                {
                    "wave": "guard",  # its verdicts carry the last wave's number and guard
                    "label": "guard",
                    "start": t,
                    "end": None,
                    "hosts": [h for h in hosts if h not in held_back],
                }
            )
        elif e.kind in ("wave.passed", "verdict.failed") and waves:
            waves[-1]["end"] = t
        elif e.kind == "bake.started":
            bakes.append({"wave": e.data.get("wave"), "start": t, "end": None})
        elif e.kind in ("verdict.reached", "verdict.failed", "bake.finished") and bakes:
            bakes[-1]["end"] = bakes[-1]["end"] or t
    for w in waves:  # the holdback ends with its switch (no verdict follows it)
        if w["end"] is None and w["label"] == "holdback":
            steps = [s for h in w["hosts"] for s in hosts.get(h, []) if s["start"] >= w["start"]]
            if steps and all(s["end"] is not None for s in steps):
                w["end"] = max(s["end"] for s in steps)
    return {"hosts": hosts, "waves": waves, "bakes": bakes}


REVERTED_FROM = {
    "verdict": "after the verdict",
    "abort": "after `resume --abort`",
    "resume": "after the resume that finished the revert",
    "request": "after the request",
}
"""What `reverted_after_s` counts from (`RunResult.reverted_from`), in words."""


def reverted_from(result: Mapping[str, Any]) -> str:
    """`REVERTED_FROM`'s words for a result; journals written before `reverted_from` was
    recorded counted from the verdict when the result has one."""
    since = result.get("reverted_from") or ("verdict" if result.get("verdict") else "")
    return REVERTED_FROM.get(str(since), "")


def verdict_sentence(record: DeploymentRecord, result: Mapping[str, Any]) -> str:
    """One sentence: what happened to the release, why (with the numbers), how fast."""
    outcome = record.outcome or "unfinished"
    reason = brief(str(result.get("reason") or record.reason or "")).strip().rstrip(".")
    # a rollback: from the release it found (its record's label `rollback:v5`) to its targets
    targets = sorted({str(v) for v in dict(record.data.get("fallbacks") or {}).values() if v})
    moved = (record.release.removeprefix("rollback:"), ", ".join(targets))
    words = {
        "deployed": f"{record.release} was deployed to every host",
        "reverted": f"{record.release} was rejected and the whole fleet reverted",
        "revert_incomplete": f"{record.release} was rejected but the revert did not finish",
        "held": f"{record.release} was held: the verdict stayed inconclusive",
        "inconclusive": f"{record.release} could not be judged and the fleet was reverted",
        "aborted": f"the deployment of {record.release} was aborted and the fleet reverted; "
        f"{record.release} was not judged",
        "rolled_back": f"the fleet was rolled back from {moved[0]}"
        + (f" to {moved[1]}" if moved[1] else ""),
        "unchanged": f"{record.release} already ran on every host: nothing was deployed",
        # stopped runs: the head says how, the reason what was received and where it stands
        "interrupted": f"the deployment of {record.release} was interrupted",
        "terminated": f"the deployment of {record.release} was terminated",
        "superseded": f"the deployment of {record.release} lost its lease to another run",
        "failed": f"the deployment of {record.release} failed",
        "unfinished": f"the deployment of {record.release} has not finished",
    }
    verdict = result.get("verdict") or {}
    if outcome == "revert_incomplete" and verdict.get("outcome") != "fail":
        # reverted for lack of evidence, by `resume --abort` or by a rollback: not rejected
        words[outcome] = f"the revert of {record.release} did not finish"
    head = words.get(outcome, f"{record.release}: {outcome}")
    # a reason that starts with the outcome ("inconclusive: not enough evidence ...",
    # "interrupted by signal; ...") would say it twice after the head
    reason = reason_beside("inconclusive", reason_beside(outcome, reason))
    if outcome == "unchanged":  # the head says it; the reason only says it again
        head = f"{head}, no host touched (`deploy --force` walks every host again)"
        reason = ""
    if outcome == "aborted":  # the head says it; the reason adds only a held run's why
        reason = reason.partition(" (it was held: ")[2].removesuffix(")")
        reason = f"it was held: {reason}" if reason else ""
    tail = []
    if result.get("detected_after_s") is not None:
        tail.append(f"detected {float(result['detected_after_s']):.1f} s after the first canary")
    if result.get("reverted_after_s") is not None:
        since = reverted_from(result)
        tail.append(f"fleet back in {float(result['reverted_after_s']):.1f} s {since}".strip())
    text = head + (f": {reason}" if reason else "")
    if tail:
        text += " (" + "; ".join(tail) + ")"
    return text + "."


def build(record: DeploymentRecord, entries: Sequence[JournalEntry]) -> dict[str, Any]:
    """The whole report as JSON-ready data (see the module docstring)."""
    t0 = record.started_at
    result: dict[str, Any] = dict((record.data or {}).get("result") or {})
    rows = looks(entries, t0)
    # the hosts the guard compared with (still on the old release), from its guard.started
    # (journals before `held_back` name the holdback; the guard's reason says if it compared)
    started = next((e.data for e in entries if e.kind == "guard.started"), {})
    held_back = list(started.get("held_back") or []) or (
        [str(started["holdback"])]
        if "held_back" not in started
        and started.get("holdback")
        and any(
            "with a holdback" in str((e.data.get("verdict") or {}).get("reason") or "")
            for e in entries
            if e.data.get("guard")
        )
        else []
    )
    verdicts = [
        {
            "t": _secs(e.at, t0),
            "kind": e.kind,
            "wave": e.data.get("wave"),
            "guard": bool(e.data.get("guard")),  # the watch after the last wave
            **({"held_back": held_back} if e.data.get("guard") else {}),
            "outcome": (e.data.get("verdict") or {}).get("outcome"),
            "reason": (e.data.get("verdict") or {}).get("reason") or "",
            "checks": [
                {"name": c.get("name"), "outcome": c.get("outcome"), "reason": c.get("reason")}
                for c in (e.data.get("verdict") or {}).get("checks") or []
            ],
        }
        for e in entries
        if e.kind in ("verdict.reached", "verdict.failed")
    ]
    revert = _revert(entries, t0)
    if revert is not None:
        revert["reverted_after_s"] = result.get("reverted_after_s")
        revert["reverted_from"] = reverted_from(result)
        revert["needs_human"] = result.get("needs_human") or []
    end = record.finished_at or (entries[-1].at if entries else t0)
    return {
        "format": 1,
        "deployment_id": record.id,
        "app": record.app,
        "release": record.release,
        "label": record.release_words,  # a rollback's "rollback v5 → v4"
        "outcome": record.outcome or "unfinished",
        "outcome_words": outcome_words(record.outcome),  # "rolled back", not rolled_back
        "reason": result.get("reason") or record.reason or "",
        "sentence": verdict_sentence(record, result),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        # the result's own figure when it has one: one number in every view (the journal's
        # finished_at is written a moment after the result was made)
        "duration_s": result.get("duration_s") or round(_secs(end, t0), 1),
        "detected_after_s": result.get("detected_after_s"),
        "reverted_after_s": result.get("reverted_after_s"),
        "reverted_from": reverted_from(result),
        "verdict": result.get("verdict"),
        "verdicts": verdicts,
        "timeline": timeline(entries, t0),
        "looks": len(rows),
        "series": series(rows),
        "checks": _check_series(rows),
        "revert": revert,
        "impact": result.get("impact"),
        "fallbacks": result.get("fallbacks") or dict((record.data or {}).get("fallbacks") or {}),
    }


def _revert(entries: Sequence[JournalEntry], t0: dt.datetime) -> dict[str, Any] | None:
    """The immune response: when it began (its first `immune.started`: a revert that a
    signal stopped and `resume` finished began once, and `resumed` says when it was taken
    up again), each host it moved, and when the run it was part of concluded."""
    revert: dict[str, Any] | None = None
    for e in entries:
        if e.kind == "immune.started":
            if revert is None:
                revert = {"start": _secs(e.at, t0), "end": None, "hosts": [], "resumed": []}
                revert["reason"] = str(e.data.get("reason") or "")
            else:
                revert["resumed"].append(_secs(e.at, t0))
                revert["end"] = None
        elif revert is None:
            continue
        elif e.kind == "host.switched" and e.data.get("purpose") == "revert":
            revert["hosts"].append(
                {"host": e.host, "release": e.data.get("release"), "t": _secs(e.at, t0)}
            )
        elif e.kind.startswith("deployment.") and e.data.get("outcome") not in (
            None,
            "interrupted",
            "terminated",
        ):
            revert["end"] = _secs(e.at, t0)
            revert["incomplete"] = e.kind == "deployment.revert_incomplete"
    return revert


def _check_series(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """Per check: time, outcome and each statistic, look by look."""
    out: dict[str, dict[str, list[Any]]] = {}
    for row in rows:
        for name, c in row["checks"].items():
            s = out.setdefault(name, {"t": [], "outcome": [], "stats": []})
            s["t"].append(row["t"])
            s["outcome"].append(c.get("o") if isinstance(c, Mapping) else c)
            s["stats"].append(dict(c.get("s") or {}) if isinstance(c, Mapping) else {})
    return out
