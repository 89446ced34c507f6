"""Operations beside `deploy`: resume, rollback.

`resume` takes an interrupted deployment over with a fresh fencing token and finishes or
undoes it. `rollback` walks every host back to its previous release. (`status` only reads:
`immunity.fleet.status`, named here too; `history` only reads the journal:
`immunity.report.history`.)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
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
    return _last_change(await changes(fleet))


def _last_change(recs: list[DeploymentRecord]) -> DeploymentRecord | None:
    recs = list(recs)
    while len(recs) > 1 and restart_only(recs[-1]):
        recs.pop()
    return recs[-1] if recs else None


TAKEN_OFF = {
    "reverted": "found worse and reverted",
    "inconclusive": "reverted unjudged (inconclusive)",
    "aborted": "aborted with `resume --abort`",
    "revert_incomplete": "found worse and reverted (its revert did not finish)",
}
"""A deployment's outcomes that took its release off the fleet, in words."""


def taken_away(recs: list[DeploymentRecord]) -> dict[str, DeploymentRecord]:
    """Each release the journal's last word about took off the fleet, with that run: a
    rollback (interrupted or not) takes away the releases it found that are not its
    targets; a deployment whose outcome is in `TAKEN_OFF` its release; a deployment that
    ended `deployed` gives its release back (it was judged again). `recs`: oldest first."""
    gone: dict[str, DeploymentRecord] = {}
    for rec in recs:
        if rec.rollback:
            kept = {str(v) for v in dict(rec.data.get("fallbacks", {})).values()}
            for release in set(ran_before(rec).values()) - kept:
                gone[release] = rec
        elif rec.outcome in TAKEN_OFF:
            gone[rec.release] = rec
        elif rec.outcome == "deployed":
            gone.pop(rec.release, None)
    return gone


def _at(rec: DeploymentRecord) -> str:
    return (rec.finished_at or rec.started_at).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def refuse_taken_away(
    targets: dict[str, str], actives: Mapping[str, str | None], recs: list[DeploymentRecord]
) -> None:
    """NothingToRollBack when a rollback would put a host on a release that a rollback,
    a revert or an abort took off the fleet and no deployment has judged since: rolling
    back twice would roll the fleet forward, unjudged, to the release just taken away."""
    gone = taken_away(recs)
    bad = sorted({r for r in targets.values() if r in gone})
    if not bad:
        return
    release, rec = bad[0], gone[bad[0]]
    on = by_release(actives)
    now = next(iter(on)) if len(on) == 1 else spelled(on)
    if rec.rollback:
        how = f"rolled back from {release} at {_at(rec)} ({rec.id})"
    else:
        how = f"{release} was {TAKEN_OFF[rec.outcome or '']} at {_at(rec)} ({rec.id})"
    stopped = rec.rollback and rec.outcome in (None, "interrupted", "terminated", "superseded")
    raise NothingToRollBack(
        f"the fleet is already on {now}, {how}; rolling back would put "
        f"{', '.join(n for n, r in targets.items() if r == release)} back on {release}, unjudged",
        hint=(
            "that rollback did not finish: `immunity resume -c FILE` finishes it; "
            if stopped
            else ""
        )
        + f"deploy {release} again to go forward: `immunity deploy -c FILE --release "
        f"{release}` (judged wave by wave); to go further back, deploy that release "
        "(`immunity history -c FILE` lists the deployments)",
        context={"release": release, "deployment_id": rec.id},
    )


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
    fallback there). Hosts already on it stay as they are. Without a journal record, the
    host's previously installed release. Raises NothingToRollBack when no host would move;
    after a rollback that found the fleet mixed (it ended an interrupted deployment):
    undoing it would mix it again; and when a host would go to a release a rollback, a
    revert or an abort took off the fleet and no deployment judged since (`taken_away`):
    a second `rollback` right after one would roll the fleet forward, unjudged, to the
    release just rolled back (deploying it again goes forward, judged).
    """
    recs = await changes(fleet)
    record = _last_change(recs)
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
    if record is not None:
        refuse_taken_away(targets, actives, recs)
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
