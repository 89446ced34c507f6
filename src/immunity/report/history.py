"""`immunity history`: every deployment of an app and the deploy figures, from the journal.

Read-only: each run's journal is read through the same fold as the engine's
(`immunity.fleet.state`: its passing verdicts, whether a signal stopped it, its resumes).
The change-failure rate counts releases found worse out of the releases judged
(deployed or found worse); a run stopped and not taken up again counts as interrupted.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence
from typing import Any

from immunity.fleet.state import FleetView, derive
from immunity.journal import Journal
from immunity.journal.base import DeploymentRecord, JournalEntry

STOPPED = ("interrupted", "unfinished")
"""Categories of a run stopped and not taken up again (by `resume`, or ended by a rollback)."""


def category(outcome: str | None, verdict: str | None) -> str:
    """What a deployment says about its release, for `history`: `deployed`, `worse` (found
    worse: a failing check or host step; a change failure), `inconclusive` (ended for lack
    of evidence: reverted or held, the release was not found worse), `aborted` (reverted by
    `resume --abort`: not judged), `unchanged` (every host already served it: a no-op, not
    a deployment), `interrupted`, `rollback`, `unfinished`, or `other`. `history` files a
    run stopped then undone by a rollback as `ended_by_rollback`, and one stopped by a signal
    in its preflight as `before_start` (no host touched: not a deployment)."""
    if outcome is None:
        return "unfinished"
    if outcome in ("deployed", "aborted", "unchanged"):
        return outcome
    if outcome == "rolled_back":
        return "rollback"
    if outcome in ("interrupted", "terminated", "superseded"):
        return "interrupted"
    if outcome in ("inconclusive", "held") or verdict in ("inconclusive", "error"):
        return "inconclusive"
    if outcome in ("reverted", "revert_incomplete") and verdict == "fail":
        return "worse"
    return "other"  # e.g. reverted after an error: not a verdict


def _whole_reason(record: DeploymentRecord, run: FleetView | Sequence[JournalEntry]) -> str | None:
    """A deployed release's reason over every wave, not only the last bake's (whose checks
    may be the guard rails alone): which checks passed in each wave (the `passes` of the
    run's fold, given or folded from its entries), then the last verdict's sentence; None
    for other outcomes (their reason is the deciding verdict's)."""
    if record.outcome != "deployed":
        return None
    view = run if isinstance(run, FleetView) else derive(run, None, ())
    parts = []
    for p in view.passes:
        names = ", ".join(p.checks)
        where = "guard" if p.guard else f"wave {p.wave}"
        parts.append(f"{where}: {names} passed" if names else f"{where} passed")
    if len(parts) < 2:
        return None
    last = (record.reason or "").strip()
    return "; ".join(parts) + (f". Last verdict: {last}" if last else "")


async def history(journal: Journal, app: str, now: dt.datetime) -> dict[str, Any]:
    """Every deployment of `app` with its outcome, category and reason, and the deploy
    figures from the first deployment to `now` (see `category` for what counts)."""
    recs: Sequence[DeploymentRecord] = await journal.deployments(app)
    rows: list[dict[str, Any]] = []
    for d in recs:
        res = d.data.get("result", {}) if isinstance(d.data, dict) else {}
        verdict = res.get("verdict") or {}
        # the run's journal as the engine folds it (immunity.fleet.state), hosts aside
        view = derive(await journal.entries(d.id), None, ())
        rows.append(
            {
                "id": d.id,
                "release": d.release,
                "rollback": d.rollback,
                # the release as people read it: a rollback's "rollback v5 → v4", not its
                # record's label `rollback:v5`
                "label": d.release_words,
                "outcome": d.outcome or "unfinished",
                "category": "before_start"
                if d.data.get("stopped_in") == "preflight"
                else category(d.outcome, verdict.get("outcome")),
                "changed_nothing": d.changed_nothing,
                "started_at": d.started_at.isoformat(),
                "finished_at": d.finished_at.isoformat() if d.finished_at else None,
                "duration_s": res.get("duration_s")
                or (
                    round((d.finished_at - d.started_at).total_seconds(), 1)
                    if d.finished_at
                    else None
                ),
                "reason": _whole_reason(d, view) or d.reason or verdict.get("reason"),
                "detected_after_s": res.get("detected_after_s"),
                "reverted_after_s": res.get("reverted_after_s"),
                "reverted_from": res.get("reverted_from"),
                # a run that was stopped (signal, dead orchestrator) and taken up again
                "interrupted": view.stopped or view.resumes > 0,
                "resumed": view.resumes,
            }
        )
    # a run left stopped (interrupted, or with no outcome) and then rolled back is ended by
    # that rollback: nothing else can follow it (a deploy is refused over it), so the run
    # before a rollback is the one it undid
    before: dict[str, Any] | None = None
    for r in rows:
        if r["changed_nothing"]:
            continue
        if r["rollback"] and before is not None and before["category"] in STOPPED:
            before["ended_by"] = r["id"]
            before["category"] = "ended_by_rollback"
            r["ended"] = before["id"]
        before = r
    # a no-op (every host already on the release) is listed but is no deployment: it
    # changes neither the frequency nor the change-failure rate; nor is a rollback
    real = [r for r in rows if not r["rollback"] and not r["changed_nothing"]]
    rollbacks = [r for r in rows if r["rollback"]]
    finished = [r for r in real if r["finished_at"]]
    # a change failure is a release found worse, out of the releases judged (deployed or
    # found worse): one that could not be judged, was aborted (`resume --abort`) or was
    # reverted without a verdict (an error) is in neither count
    failures = [r for r in finished if r["category"] == "worse"]
    judged = [r for r in finished if r["category"] in ("deployed", "worse")]
    # still stopped: a run taken up again by `resume` and finished is counted as resumed
    stopped = [r for r in real if r["category"] in STOPPED]
    # verdict -> fleet reverted: a revert finished by `resume` counted from the resume
    revert_times = [
        r["reverted_after_s"]
        for r in failures
        if r["reverted_after_s"] is not None and r["reverted_from"] in (None, "verdict")
    ]
    # the period is from the first deployment to now; a daily rate over less than a day
    # says nothing (two deployments two minutes apart are not "2 a day")
    period_s = 0.0
    per_day: float | None = None
    if real:
        first = dt.datetime.fromisoformat(real[0]["started_at"])
        period_s = (now - first).total_seconds()
        if period_s >= 86400.0:
            per_day = round(len(real) / (period_s / 86400.0), 2)
    return {
        "app": app,
        "deployments": rows,
        "figures": {
            "deployments": len(real),
            "period_s": round(period_s, 1),
            "period_from": real[0]["started_at"] if real else None,
            "deployments_per_day": per_day,
            "finished": len(finished),
            "interrupted": len(stopped),
            "ended_by_rollback": len([r for r in real if r["category"] == "ended_by_rollback"]),
            "rollbacks": len(rollbacks),
            # `resume --abort` ends a run as `aborted`, counted apart: not "resumed and finished"
            "resumed": len(
                [
                    r
                    for r in finished
                    if r["resumed"] and r not in stopped and r["category"] != "aborted"
                ]
            ),
            "judged": len(judged),
            "change_failure_rate": round(len(failures) / len(judged), 4) if judged else None,
            "found_worse": len(failures),
            "not_judged": len([r for r in finished if r["category"] == "inconclusive"]),
            "no_verdict": len([r for r in finished if r["category"] == "other"]),
            "aborted": len([r for r in finished if r["category"] == "aborted"]),
            "unchanged": len([r for r in rows if r["outcome"] == "unchanged"]),
            "median_verdict_to_reverted_s": statistics.median(revert_times)
            if revert_times
            else None,
        },
    }
