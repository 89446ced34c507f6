"""The `Judge` role: pure, synchronous math that turns per-interval cohort counts into verdicts.

The bake loop feeds one `Observation` pair (canary, baseline) per interval to every check's
judge, in time order, and asks it for a `CheckResult` after each look. A judge keeps its own
running statistics (e-processes, CUSUMs); it never does I/O and never reads a clock.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from immunity.domain import CheckResult, Observation


@runtime_checkable
class Judge(Protocol):
    name: str

    def look(self, t_s: float, canary: Observation, baseline: Observation) -> CheckResult:
        """Add one interval ending `t_s` seconds after the bake started, and judge.

        Returns `fail` as soon as the evidence allows (bounded false-alarm rate at every look),
        `pass` once the check is certified, `continue` while evidence is short, and
        `inconclusive` when data is missing or the canary gets far less than its traffic share.
        """
        ...

    def final(self, t_s: float) -> CheckResult:
        """The verdict when the bake's time is up (max_bake reached without a decision)."""
        ...
