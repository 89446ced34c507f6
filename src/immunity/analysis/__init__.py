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
  `bake.finished`; see docs/journal.md), read back by reports and replay, and folded by
  `BakeLedger` (in the engine's fold of the run) into where a resumed bake continues.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from immunity.analysis.evidence import BakeLedger, Look, ResumePoint, read_looks, resume_point

if TYPE_CHECKING:
    from immunity.analysis.bake import BakeResult, Cohorts, Record, bake
    from immunity.analysis.wave import GUARD_KINDS, BakeAnalysis, Step

# `bake` and `wave` need the judges (numpy, scipy): they load on first use, so that reading
# the journal's evidence (`show`, `history`, the report's data) starts without them. The
# loop itself is best imported as `from immunity.analysis.bake import bake`: once the
# submodule `immunity.analysis.bake` is loaded, the package's attribute `bake` is that module.
_LAZY = {
    "BakeResult": "bake",
    "Cohorts": "bake",
    "Record": "bake",
    "bake": "bake",
    "GUARD_KINDS": "wave",
    "BakeAnalysis": "wave",
    "Step": "wave",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
    for other, where in _LAZY.items():
        if where == _LAZY[name]:
            globals()[other] = getattr(module, other)
    return globals()[name]


__all__ = [
    "GUARD_KINDS",
    "BakeAnalysis",
    "BakeLedger",
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
