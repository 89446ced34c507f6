"""How a run ended: the outcome enum and the frozen result, built from the run's fold.

Only `cli/` maps outcomes to exit codes. The result is what the run's `FleetView` says when
it ends (the concluding `deployment.<outcome>` entry, the last verdict, each host's steps),
never assembled by mutation along the way nor read back from the journal by hand.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from immunity.fleet.state import FleetView, host_rows
from immunity.journal.base import DeploymentRecord

NOTIFIED = (
    "outcome",
    "release",
    "detected_after_s",
    "reverted_after_s",
    "needs_human",
    "duration_s",
    "fallbacks",
)
"""The result's keys every notifier gets in a run's last event (with the verdict, if any)."""


class RunOutcome(StrEnum):
    DEPLOYED = "deployed"
    ROLLED_BACK = "rolled_back"
    REVERTED = "reverted"  # found worse (a check, a host step) or asked to: fleet reverted
    INCONCLUSIVE = "inconclusive"  # not enough evidence to judge: fleet reverted
    ABORTED = "aborted"  # `resume --abort`: fleet reverted as asked, the release not judged
    UNCHANGED = "unchanged"  # every host already served the release: nothing done (a no-op)
    REVERT_INCOMPLETE = "revert_incomplete"
    HELD = "held"
    INTERRUPTED = "interrupted"  # SIGINT, after the hosts in flight finished
    TERMINATED = "terminated"  # SIGTERM or SIGHUP (the terminal went away), likewise
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
    reverted_from: str | None = None
    """What `reverted_after_s` counts from: `verdict` (the failing or inconclusive verdict
    of this process), `abort` (`resume --abort`), `resume` (a revert taken over by
    `resume`) or `request` (a rollback)."""
    needs_human: tuple[str, ...] = ()
    fallbacks: Mapping[str, str] = field(default_factory=dict)
    waves: tuple[tuple[str, ...], ...] = ()
    hosts: tuple[Mapping[str, Any], ...] = ()
    impact: Mapping[str, Any] | None = None
    """What customers saw per phase (the `impact` block's probe), see `immunity.impact`."""
    stopped_in: str | None = None
    """`preflight` when a signal ended the run before it touched any host, else None."""

    @classmethod
    def of(
        cls,
        view: FleetView,
        record: DeploymentRecord,
        *,
        release: str,
        default: tuple[RunOutcome, str],
        now: dt.datetime,
        final: bool = False,
    ) -> RunResult:
        """The result the run's view says. `default` is the outcome and reason when no
        entry concluded the run; with `final` it is the outcome whatever was concluded (a
        lost lease: the run's word no longer stands)."""
        concluded = {} if final else view.concluded
        outcome, reason = default
        if concluded:
            outcome = RunOutcome(concluded["outcome"])
            reason = str(concluded.get("reason") or reason)
        return cls(
            outcome=outcome,
            release=release,
            deployment_id=record.id,
            started_at=record.started_at,
            finished_at=now,
            reason=reason,
            verdict=concluded.get("verdict", view.last_verdict or None),
            detected_after_s=concluded.get("detected_after_s"),
            reverted_after_s=concluded.get("reverted_after_s"),
            reverted_from=concluded.get("reverted_from"),
            needs_human=tuple(concluded.get("needs_human") or ()),
            fallbacks={str(k): str(v) for k, v in dict(record.data.get("fallbacks", {})).items()},
            waves=view.waves,
            hosts=tuple(host_rows(view)),
            impact=view.impact,
            stopped_in=concluded.get("stopped_in"),
        )

    def to_dict(self, *, hosts: bool = True) -> dict[str, Any]:
        """The result as JSON-ready data; without `hosts`, no "waves" and no "hosts" (every
        host's steps: 70,000 rows at 10,000 hosts), e.g. for a notification."""
        impact = dict(self.impact) if self.impact is not None else None
        if not hosts:
            return {**self._head(), "impact": impact, "stopped_in": self.stopped_in}
        return {
            **self._head(),
            "waves": [list(w) for w in self.waves],
            "hosts": [dict(h) for h in self.hosts],
            "impact": impact,
            "stopped_in": self.stopped_in,
        }

    def _head(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "release": self.release,
            "deployment_id": self.deployment_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            # to the tenth every view shows (show, report, serve, history read this number)
            "duration_s": round((self.finished_at - self.started_at).total_seconds(), 1),
            "reason": self.reason,
            "verdict": dict(self.verdict) if self.verdict else None,
            "detected_after_s": self.detected_after_s,
            "reverted_after_s": self.reverted_after_s,
            "reverted_from": self.reverted_from,
            "needs_human": list(self.needs_human),
            "fallbacks": dict(self.fallbacks),
        }
