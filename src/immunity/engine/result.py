"""How a run ended: the outcome enum and the frozen result, built from the journal.

Only `cli/` maps outcomes to exit codes. The result is read back from the journal entries
of the run when it ends (the concluding `deployment.<outcome>` entry, the last verdict, each
host's steps), never assembled by mutation along the way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from immunity.domain import HostRef
from immunity.journal.base import DeploymentRecord, JournalEntry


class RunOutcome(StrEnum):
    DEPLOYED = "deployed"
    ROLLED_BACK = "rolled_back"
    REVERTED = "reverted"  # found worse (a check, a host step) or asked to: fleet reverted
    INCONCLUSIVE = "inconclusive"  # not enough evidence to judge: fleet reverted
    REVERT_INCOMPLETE = "revert_incomplete"
    HELD = "held"
    INTERRUPTED = "interrupted"  # SIGINT, after the hosts in flight finished
    TERMINATED = "terminated"  # SIGTERM, likewise
    SUPERSEDED = "superseded"  # the lease was lost to another process
    FAILED = "failed"  # stopped by an unexpected error (a bug)

    @property
    def past(self) -> str:
        """The verb of its journal kind and notification: `deployment.<past>`."""
        return {
            RunOutcome.DEPLOYED: "succeeded",
            RunOutcome.TERMINATED: "interrupted",
        }.get(self, self.value)


@dataclass(frozen=True)
class RunResult:
    outcome: RunOutcome
    release: str
    deployment_id: str
    started_at: dt.datetime
    finished_at: dt.datetime
    reason: str = ""
    verdict: Mapping[str, Any] | None = None
    detected_after_s: float | None = None
    reverted_after_s: float | None = None
    needs_human: tuple[str, ...] = ()
    fallbacks: Mapping[str, str] = field(default_factory=dict)
    waves: tuple[tuple[str, ...], ...] = ()
    hosts: tuple[Mapping[str, Any], ...] = ()
    impact: Mapping[str, Any] | None = None
    """What customers saw per phase (the `impact` block's probe), see `immunity.impact`."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "release": self.release,
            "deployment_id": self.deployment_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_s": round((self.finished_at - self.started_at).total_seconds(), 3),
            "reason": self.reason,
            "verdict": dict(self.verdict) if self.verdict else None,
            "detected_after_s": self.detected_after_s,
            "reverted_after_s": self.reverted_after_s,
            "needs_human": list(self.needs_human),
            "fallbacks": dict(self.fallbacks),
            "waves": [list(w) for w in self.waves],
            "hosts": [dict(h) for h in self.hosts],
            "impact": dict(self.impact) if self.impact is not None else None,
        }


def result_from_journal(
    record: DeploymentRecord,
    entries: Sequence[JournalEntry],
    hosts: Sequence[HostRef],
    *,
    release: str,
    default: tuple[RunOutcome, str],
    now: dt.datetime,
    final: bool = False,
) -> RunResult:
    """The run's result from its journal entries. `default` is the outcome and reason when
    no entry concludes the run; with `final` it is the outcome whatever the entries say (a
    lost lease: the entries after the takeover are another process's)."""
    outcome, reason = default
    concluded: Mapping[str, Any] = {}
    verdict: Mapping[str, Any] | None = None
    waves: tuple[tuple[str, ...], ...] = ()
    impact: Mapping[str, Any] | None = None
    for e in entries:
        if e.kind == "impact.measured":
            impact = e.data
        if e.kind.startswith("deployment.") and "outcome" in e.data:
            concluded = e.data
        if e.kind in ("verdict.reached", "verdict.failed") and e.data.get("verdict"):
            verdict = e.data["verdict"]
        if "waves" in e.data and e.kind in ("deployment.started", "deployment.resumed"):
            waves = tuple(tuple(w) for w in e.data["waves"])
    if final:
        concluded = {}
    elif concluded:
        outcome = RunOutcome(concluded["outcome"])
        reason = str(concluded.get("reason") or reason)
    return RunResult(
        outcome=outcome,
        release=release,
        deployment_id=record.id,
        started_at=record.started_at,
        finished_at=now,
        reason=reason,
        verdict=concluded.get("verdict", verdict),
        detected_after_s=concluded.get("detected_after_s"),
        reverted_after_s=concluded.get("reverted_after_s"),
        needs_human=tuple(concluded.get("needs_human") or ()),
        fallbacks={str(k): str(v) for k, v in dict(record.data.get("fallbacks", {})).items()},
        waves=waves,
        hosts=tuple(host_steps(entries, hosts)),
        impact=impact,
    )


def host_steps(entries: Sequence[JournalEntry], hosts: Sequence[HostRef]) -> list[dict[str, Any]]:
    """Per host: its last release reached and every step with its times, from the journal."""
    out: dict[str, dict[str, Any]] = {
        h.name: {"name": h.name, "release": None, "steps": []} for h in hosts
    }
    open_steps: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        if e.host not in out:
            continue
        if e.kind == "host.step_started" and e.step:
            row = {
                "step": e.step,
                "purpose": e.data.get("purpose"),
                "release": e.data.get("release"),
                "started_at": e.at.isoformat(),
                "finished_at": None,
                "ok": None,
            }
            out[e.host]["steps"].append(row)
            open_steps[(e.host, e.step)] = row
        elif e.kind in ("host.step_finished", "host.step_failed") and e.step:
            row2 = open_steps.pop((e.host, e.step), None)
            if row2 is not None:
                row2["finished_at"] = e.at.isoformat()
                row2["ok"] = e.kind == "host.step_finished"
                if e.kind == "host.step_failed":
                    row2["error"] = e.data.get("error")
        elif e.kind == "host.switched":
            out[e.host]["release"] = e.data.get("release")
    return list(out.values())
