"""Operations beside `deploy`: resume, rollback.

`resume` takes an interrupted deployment over with a fresh fencing token and finishes or
undoes it. `rollback` walks every host back to its previous release. What each checks
first, touching nothing, is `immunity.fleet.preflight`'s (`resumable`, `rollback_preflight`).
(`status` only reads: `immunity.fleet.status`, named here too; `history` only reads the
journal: `immunity.report.history`.)
"""

from __future__ import annotations

from typing import Any

from immunity.engine.immune import revert
from immunity.engine.result import RunOutcome, RunResult
from immunity.engine.run import Run, StoppedBeforeStart
from immunity.errors import ImmunityError, PreflightError
from immunity.errors import NothingToResume as NothingToResume
from immunity.errors import NothingToRollBack as NothingToRollBack
from immunity.fleet.context import Fleet, by_release, spelled
from immunity.fleet.preflight import resumable, rollback_preflight
from immunity.fleet.status import status as status


async def resume(fleet: Fleet, *, abort: bool = False) -> RunResult:
    """Take the last interrupted run over and finish it: a deployment continues (or, with
    `abort`, is reverted); a rollback walks every host it had not moved yet.

    The fleet is read first, before the run is taken over: a balancer or host that cannot
    be read raises its error at once (nothing touched, the run left resumable). Read inside
    the run, it started the safety revert, which waited `timeouts.revert` (600 s) for a
    fleet it could not read, then ended the run `failed`: no longer resumable."""
    record = await resumable(fleet)
    try:
        await fleet.observe()
    except ImmunityError as exc:
        cfg = fleet.loaded.path
        raise PreflightError(
            f"cannot read the fleet, nothing was touched: {exc.message}",
            hint=(f"{exc.hint}; then " if exc.hint else "")
            + f"run `immunity resume -c {cfg}` again: {record.id} is still resumable",
            context=dict(exc.context),
        ) from exc
    if record.data.get("rollback"):
        async with Run(fleet, record.release.removeprefix("rollback:"), resume=record) as run:
            await _rollback_body(run)
        return run.result
    from immunity.engine.deployment import continue_deployment  # the judges: numpy, scipy

    return await continue_deployment(fleet, record, abort=abort)


async def rollback(fleet: Fleet, *, handle_signals: bool = True) -> RunResult:
    """Walk every host back to its previous release, by the same switch.

    A host's previous release is the one it ran before the last change (`last_change`: its
    fallback there). Hosts already on it stay as they are. Without a journal record, the
    host's previously installed release. Raises NothingToRollBack when no host would move;
    after a rollback that found the fleet mixed (it ended an interrupted deployment):
    undoing it would mix it again; and when a host would go to a release a rollback, a
    revert or an abort took off the fleet and no deployment judged since (`taken_away`):
    a second `rollback` right after one would roll the fleet forward, unjudged, to the
    release just rolled back (deploying it again goes forward, judged). The checks are
    `fleet.preflight.rollback_preflight`'s.
    """
    targets, actives = await rollback_preflight(fleet)
    current = next((r for r in actives.values() if r), "unknown")

    async def prepare() -> dict[str, Any]:
        return {"fallbacks": targets, "rollback": True, "previous": actives}

    try:
        async with Run(
            fleet,
            current,
            label=f"rollback:{current}",
            prepare=prepare,
            handle_signals=handle_signals,
        ) as run:
            await _rollback_body(run)
    except StoppedBeforeStart as stopped:  # a signal before its first step: nothing touched
        return stopped.result
    return run.result


async def _rollback_body(run: Run) -> None:
    targets = {str(k): str(v) for k, v in dict(run.data.get("fallbacks", {})).items()}
    if run.resumed:
        await run.rec.record(
            "rollback.resumed",
            f"resuming the rollback to {spelled(by_release(targets))}",
            targets=targets,
        )
    else:
        await run.rec.record(
            "rollback.started",
            f"rolling back to {', '.join(sorted(set(targets.values())))}",
            targets=targets,
        )
    await revert(run, "rollback requested", targets, done=RunOutcome.ROLLED_BACK, all_hosts=True)
