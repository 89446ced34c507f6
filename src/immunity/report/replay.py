"""Re-judge a recorded deployment's evidence with other checks or thresholds.

Every look of every bake is in the journal (`bake.started`, `bake.looked`; docs/journal.md).
`replay` feeds those looks, in order, into a fresh `immunity.analysis.BakeAnalysis` built from
the *new* config, bake by bake, and reports where the new checks would have decided and what,
beside what happened. Rules:

* A bake is replayed with the recorded bake's `relative` flag, purpose and number of bakes
  (the false-alarm budget); latency thresholds carry from one replayed bake to the next as in
  a run. The new config's `checks`, `judge` and `bake` (min, max) apply.
* A wave may pass only once its hosts were all in: here, once the canary cohort reached the
  largest size it had in that bake's recording.
* The evidence ends where the recording ended: a bake the new checks leave undecided at its
  last recorded look is reported as such (it would have needed more traffic than the
  original run gathered), and a wave that never ran has no evidence at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from immunity.analysis import BakeAnalysis, Look, read_looks
from immunity.config.models import Config
from immunity.errors import ConfigError
from immunity.journal.base import DeploymentRecord, JournalEntry


def replay(
    record: DeploymentRecord, entries: Sequence[JournalEntry], config: Config
) -> dict[str, Any]:
    """What `config`'s checks would have decided on `record`'s evidence, bake by bake.

    Returns `{"deployment_id", "release", "original": {outcome, reason}, "bakes": [{wave,
    bake, looks, evidence_s, original: {outcome, t_s, reason}, replayed: {outcome, t_s,
    reason, checks}}], "replayed": {outcome, reason}}`. Raises ConfigError (exit 2) when a
    new check reads a signal the recording has no observation of.
    """
    started: dict[int, dict[str, Any]] = {}
    finished: dict[int, dict[str, Any]] = {}
    verdicts: dict[int, dict[str, Any]] = {}
    for e in entries:
        if e.kind == "bake.started":
            started[int(e.data.get("bake", e.data.get("wave", 0)))] = dict(e.data)
        elif e.kind == "bake.finished":
            finished[int(e.data.get("bake", e.data.get("wave", 0)))] = dict(e.data)
        elif e.kind in ("verdict.reached", "verdict.failed"):
            verdicts[int(e.data.get("wave", 0))] = dict(e.data.get("verdict") or {})
    looks_by: dict[int, list[Look]] = {}
    for look in read_looks(entries):
        looks_by.setdefault(look.bake, []).append(look)
    recorded = {s for ls in looks_by.values() for look in ls for s in look.observations}
    unknown = sorted({c.signal for c in config.checks} - recorded)
    if looks_by and unknown:
        raise ConfigError(
            f"the new checks read signal(s) {', '.join(unknown)} that deployment {record.id} has no "
            f"observation of (recorded: {', '.join(sorted(recorded))})",
            hint="replay re-judges recorded evidence: a check must read a signal that was observed",
        )
    carry: dict[str, list[float]] = {}
    bakes: list[dict[str, Any]] = []
    final: dict[str, Any] | None = None
    for bake_no in sorted(started):
        info = started[bake_no]
        looks = looks_by.get(bake_no, [])
        wave = int(info.get("wave", 0))
        purpose: Literal["wave", "guard"] = "guard" if info.get("purpose") == "guard" else "wave"
        analysis = BakeAnalysis(
            config,
            relative=bool(info.get("relative", True)),
            carry=carry,
            bakes=int(info.get("bakes", 1) or 1),
            purpose=purpose,
            bake_no=bake_no,
        )
        full = max((len(look.canary) for look in looks), default=0)
        # as in the deployment: no pass before every host of the wave has been judged
        # `bake.min` (from the first look that saw the last of them in the canary)
        in_at = next((look.t_s for look in looks if len(look.canary) >= full), 0.0)
        if looks and len(looks[0].canary) >= full:
            in_at = 0.0  # the wave was in when the bake began
        decided: dict[str, Any] | None = None
        last = None
        for look in looks:
            step = analysis.look(
                look.t_s,
                dict(look.observations),
                errored=look.errored,
                may_pass=len(look.canary) >= full and look.t_s - in_at >= config.bake.min,
            )
            carry.update(step.frozen)
            last = step
            if step.decision is not None:
                decided = {
                    "outcome": str(step.decision.outcome),
                    "t_s": look.t_s,
                    "reason": step.decision.reason,
                    "checks": _checks(step.decision),
                }
                break
        if decided is None:
            where = f"{looks[-1].t_s:g} s" if looks else "0 s"
            decided = {
                "outcome": "undecided",
                "t_s": looks[-1].t_s if looks else None,
                "reason": f"no decision within the {len(looks)} recorded look(s) ({where} of "
                "evidence; the recording ends where the original verdict was reached)"
                + (f"; last look: {last.verdict.reason}" if last is not None else ""),
                "checks": _checks(last.verdict) if last is not None else [],
            }
        fin = finished.get(bake_no, {})
        orig_verdict = verdicts.get(wave, {})
        bakes.append(
            {
                "wave": wave,
                "bake": bake_no,
                "purpose": purpose,
                "looks": len(looks),
                "evidence_s": looks[-1].t_s if looks else 0.0,
                "original": {
                    "outcome": fin.get("outcome") or orig_verdict.get("outcome") or "unfinished",
                    "t_s": fin.get("t_s"),
                    "reason": orig_verdict.get("reason") or "",
                },
                "replayed": decided,
            }
        )
        if decided["outcome"] != "pass":
            final = decided
            break
    waves_run = {b["wave"] for b in bakes}
    planned = len(record.data.get("result", {}).get("waves") or []) if record.data else 0
    if final is None:
        missing = planned - len(waves_run) if planned else 0
        if missing > 0:
            final = {
                "outcome": "pass (so far)",
                "reason": f"every recorded bake passes; {missing} later wave(s) never ran in "
                "the recording, so there is no evidence for them",
            }
        else:
            final = {"outcome": "pass", "reason": "every recorded bake passes"}
    result = dict((record.data or {}).get("result") or {})
    return {
        "deployment_id": record.id,
        "release": record.release,
        "original": {"outcome": record.outcome, "reason": result.get("reason") or record.reason},
        "bakes": bakes,
        "replayed": {"outcome": final["outcome"], "reason": final["reason"]},
    }


def _checks(verdict: Any) -> list[dict[str, Any]]:
    return [{"name": c.name, "outcome": str(c.outcome), "reason": c.reason} for c in verdict.checks]
