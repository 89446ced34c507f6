"""Operations beside `deploy`: resume, rollback.

`resume` takes an interrupted deployment over with a fresh fencing token and finishes or
undoes it. `rollback` walks every host back to its previous release. (`status` only reads:
`immunity.fleet.status`, named here too; `history` only reads the journal:
`immunity.report.history`.)
"""

from __future__ import annotations

from typing import Any

from immunity.domain import LbState
from immunity.engine.immune import revert
from immunity.engine.result import RunOutcome, RunResult
from immunity.engine.run import Run, StoppedBeforeStart
from immunity.errors import ImmunityError
from immunity.fleet.context import (
    Fleet,
    by_release,
    changes,
    last_deployment,
    ran_before,
    spelled,
)
from immunity.fleet.status import status as status
from immunity.journal.base import DeploymentRecord


class NothingToResume(ImmunityError):
    reference = "nothing-to-resume"
    exit_code = 2
    label = "nothing to do"


class NothingToRollBack(NothingToResume):
    """`rollback` found no host to move: each already serves the release it ran before the
    last change (e.g. after a revert), or no host has a previous release."""

    reference = "nothing-to-roll-back"
    label = "nothing to roll back"  # what the CLI prints first: the messages do not repeat it


def restart_only(record: DeploymentRecord) -> bool:
    """A finished deployment that moved no host to another release: every host already ran
    it (`deploy --force` walks them again; its revert targets are the release itself)."""
    before = set(ran_before(record).values())
    return (
        record.finished_at is not None
        and not record.data.get("rollback")
        and before == {record.release}
    )


async def last_change(fleet: Fleet) -> DeploymentRecord | None:
    """The run `rollback` undoes: the last one that changed a host's release, past no-ops
    (`unchanged`) and finished restarts of the running release (`deploy --force`), so a
    redeploy never takes the release before it out of reach."""
    recs = await changes(fleet)
    while len(recs) > 1 and restart_only(recs[-1]):
        recs.pop()
    return recs[-1] if recs else None


async def resumable(fleet: Fleet) -> DeploymentRecord:
    record = await last_deployment(fleet)
    if record is None or (
        record.finished_at is not None
        and record.outcome not in ("interrupted", "terminated", "held")
    ):
        raise NothingToResume(
            f"no interrupted or held deployment of {fleet.app} to resume",
            hint="`immunity status` shows the fleet; `immunity deploy` starts a new deployment",
        )
    return record


async def resume(fleet: Fleet, *, abort: bool = False) -> RunResult:
    """Take the last interrupted run over and finish it: a deployment continues (or, with
    `abort`, is reverted); a rollback walks every host it had not moved yet."""
    record = await resumable(fleet)
    if record.data.get("rollback"):
        async with Run(fleet, record.release.removeprefix("rollback:"), resume=record) as run:
            await _rollback_body(run)
        return run.result
    from immunity.engine.deployment import continue_deployment  # the judges: numpy, scipy

    return await continue_deployment(fleet, record, abort=abort)


async def rollback(fleet: Fleet, *, handle_signals: bool = True) -> RunResult:
    """Walk every host back to its previous release, by the same switch.

    A host's previous release is the one it ran before the last change (`last_change`: its
    fallback there; after a rollback, the release it ran before that rollback). Hosts already
    on it stay as they are. Without a journal record, the host's previously installed
    release. Raises NothingToRollBack when no host would move, and after a rollback that
    found the fleet mixed (it ended an interrupted deployment): undoing it would mix it again.
    """
    record = await last_change(fleet)
    seen = await fleet.observe(installed=record is None)
    observed, actives = seen.states, seen.actives
    targets = ran_before(record) if record is not None else {}
    for name, installed in seen.installed.items():  # no record: the one installed before
        before = [r for r in installed if r != actives[name]]
        if before:
            targets[name] = before[-1]
    if not targets:
        raise NothingToRollBack("no host has a previous release")
    if record is not None and record.rollback and len(set(targets.values())) > 1:
        # a rollback that ended an interrupted deployment found the fleet mixed: undoing it
        # would put the fleet back half on the interrupted release, never a release state
        raise NothingToRollBack(
            f"the last run, {record.id} ({record.release_words}), found "
            f"the fleet mixed ({spelled(by_release(targets))}); rolling it back would leave the fleet mixed again",
            hint="to go on to another release, deploy it: `immunity deploy -c FILE --release "
            "NAME` (`immunity history -c FILE` lists the deployments)",
        )
    if record is not None and all(
        observed.get(name) == (LbState.SERVING, release) for name, release in targets.items()
    ):
        # e.g. after a reverted deployment: the fleet already serves what it ran before it
        on = by_release(targets)
        where = next(iter(on)) if len(on) == 1 else spelled(on)
        what = "rollback" if record.data.get("rollback") else "deployment"
        raise NothingToRollBack(
            f"every host already serves {where}, as before the last "
            f"{what} ({record.words}, {record.id})",
            hint="`immunity history -c FILE` lists the deployments; to go further back, deploy "
            "that release: `immunity deploy -c FILE --release NAME`",
        )
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
            "rollback.resumed", f"resuming the rollback to {targets}", targets=targets
        )
    else:
        await run.rec.record(
            "rollback.started", f"rolling back to {sorted(set(targets.values()))}", targets=targets
        )
    await revert(run, "rollback requested", targets, done=RunOutcome.ROLLED_BACK, all_hosts=True)
