"""Analysis: is the canary worse than the baseline? (apart from the rollout, as in Argo Rollouts)

The engine rolls hosts and asks the analysis for a verdict; the analysis owns everything
between the signals and that verdict:

* `wave.BakeAnalysis`: pure state of one bake: which checks run (guard rails only when no
  baseline is left), latency thresholds carried from earlier bakes, the combination of check
  results, the inconclusive limit, the consecutive-error limit and the final word at
  `bake.max`.
* `bake.bake`: the async loop that observes the signals every interval, feeds the analysis
  and journals every look's evidence before acting on it.
* `evidence`: the journal format of that evidence (`bake.started`, `bake.looked`,
  `bake.finished`; see docs/journal.md), read back by resume, reports and replay.
"""

from __future__ import annotations

from immunity.analysis.bake import BakeResult, Cohorts, Record, bake
from immunity.analysis.evidence import Look, ResumePoint, read_looks, resume_point
from immunity.analysis.wave import GUARD_KINDS, BakeAnalysis, Step

__all__ = [
    "GUARD_KINDS",
    "BakeAnalysis",
    "BakeResult",
    "Cohorts",
    "Look",
    "Record",
    "ResumePoint",
    "Step",
    "bake",
    "read_looks",
    "resume_point",
]
