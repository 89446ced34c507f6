"""The checks before a deployment touches anything, and the refusals they give.

    preflight(fleet, release) -> each host's fallback (the release it serves now)

in order: the app's last run ended (`refuse_over_unfinished`), every check builds a judge,
every adapter answers its own preflight (a signal says what it sees of the traffic), every
signal sees the balancer's traffic (`analysis.preflight`), the release exists, every host is
in the pool, serving and running a release (`pool_problems`), the hosts not on the release
run one release (`mixed_baseline`), and each host's verify and warm-up paths answer. Raises
PreflightError naming everything to fix; nothing is touched either way. The engine runs it
inside the run's lease (`engine.deployment.deploy`); `deploy --dry-run` runs it alone.

Before a resume or a rollback: `resumable` (the run `resume` takes over, or
NothingToResume) and `rollback_preflight` (where each host goes, or NothingToRollBack: no
host would move, undoing the last rollback would leave the fleet mixed, or a host would go
back to a release taken off the fleet and not judged since).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from immunity.analysis.preflight import cross_check_traffic
from immunity.domain import LbState, Member
from immunity.errors import LeaseHeld, NothingToResume, NothingToRollBack, PreflightError
from immunity.fleet.context import (
    Fleet,
    by_release,
    changes,
    last_change_in,
    last_deployment,
    ran_before,
    spelled,
    unknown_members,
)
from immunity.journal import explain_lease_held
from immunity.journal.base import DeploymentRecord


async def preflight(fleet: Fleet, release: str) -> dict[str, str]:
    """Check everything before touching anything; return each host's current release.

    Raises PreflightError naming what to fix.
    """
    from immunity.judge import build_judge  # numpy, scipy: only a deploy needs them, not status

    cfg = fleet.config
    await refuse_over_unfinished(fleet)
    for check in cfg.checks:  # a check the judge cannot build is a config error, found now
        build_judge(check, cfg.judge, cfg.bake.min)
    for adapter in (fleet.lb, fleet.driver, *fleet.signals.values(), *fleet.notifiers):
        check = getattr(adapter, "preflight", None)
        if check is not None:
            seen = await check(fleet.hosts)
            if isinstance(seen, str) and adapter in fleet.signals.values():
                # a signal says what it sees of the traffic now (or plainly that it sees none)
                fleet.signal_views[str(getattr(adapter, "name", "signal"))] = seen
    await cross_check_traffic(fleet.lb, fleet.signals, fleet.hosts)
    await fleet.driver.check_release(release)
    now = await fleet.observe()
    members, actives = now.members, now.actives
    problems = pool_problems(fleet, members, await fleet.lb.pool_members())
    for h in fleet.hosts:
        m = members.get(h.name)
        if m is None:
            problems.append(f"{h.name} is not in the balancer's pool")
        if actives[h.name] is None:
            problems.append(f"{h.name} runs no release")
    problems += mixed_baseline(fleet, release, actives)
    if not problems:  # each host's verify and warm-up paths, on the release it runs now
        problems += await fleet.prober.check_paths(fleet.hosts)
    if problems:
        raise PreflightError(
            "preflight failed, nothing was touched: " + "; ".join(problems),
            hint=f"fix what is named, then run `immunity deploy -c {fleet.loaded.path} "
            f"--release {release}` again; if a deployment was interrupted, "
            f"`immunity resume -c {fleet.loaded.path}` finishes it first",
        )
    # each host's fallback: the release it serves now, as it reports it, hosts already on
    # `release` included (their revert leaves them there); never one inferred from the fleet
    # or an earlier installed one (a revert to those put hosts on releases nobody judged)
    return {name: active for name, active in actives.items() if active}


def mixed_baseline(fleet: Fleet, release: str, actives: Mapping[str, str | None]) -> list[str]:
    """A problem when the hosts not on `release` run more than one release: the baseline
    would mix them (a comparison against "the old release" that is two releases), and a
    revert would leave the fleet mixed. Deploying one of them first (it switches only the
    hosts on the others) brings the fleet to one release."""
    on = by_release({h.name: a for h in fleet.hosts if (a := actives.get(h.name)) and a != release})
    if len(on) <= 1:
        return []
    common = max(on, key=lambda r: len(on[r]))
    return [
        f"the fleet is mixed ({spelled(on)}): the baseline would mix {len(on)} releases; bring "
        f"it to one first, e.g. `immunity deploy -c {fleet.loaded.path} --release {common}`"
    ]


UNFINISHED = (None, "interrupted", "terminated", "superseded", "held")


async def refuse_over_unfinished(fleet: Fleet) -> None:
    """PreflightError when the app's last run (a deployment or a rollback) did not end: no
    outcome (its process died), stopped by a signal, or held (`judge.on_inconclusive: hold`
    paused it with the fleet mixed on purpose). A new deployment on top of it would
    take the hosts it left on its release for the fleet's "previous" release, and the
    interrupted run could no longer be resumed or aborted.

    A run whose lease is still held by a live holder (heart-beating, or its process
    running on this machine) is not unfinished but running: LeaseHeld (exit 5) naming it,
    as `deploy` says. `deploy --dry-run` takes no lease and learns it here; a `deploy`
    whose lease was refused because the holder's process is gone is told the run is
    unfinished (exit 2), not that another orchestrator deploys.
    """
    last = await last_deployment(fleet)
    if last is None or last.outcome not in UNFINISHED:
        return
    lease = await fleet.journal.current_lease(fleet.app)
    if lease is not None and lease.deployment_id == last.id:
        held = LeaseHeld(f"{fleet.app}'s lease is held by {lease.holder}")
        explained = await explain_lease_held(
            fleet.journal, fleet.app, fleet.config.lease_ttl, held, fleet.clock.now()
        )
        if explained.context.get("running", True):
            raise explained
    what = "rollback" if last.data.get("rollback") else "deployment"
    state = last.outcome or "unfinished (its orchestrator ended without an outcome)"
    seen = await fleet.observe(lenient=True)
    on = by_release(
        {
            name: f"unknown ({seen.errors[name]})" if seen.errors.get(name) else active
            for name, active in seen.actives.items()
        }
    )
    mixed = "mixed: " if len(on) > 1 else ""
    cfg = fleet.loaded.path
    raise PreflightError(
        f"preflight failed, nothing was touched: the last {what} of {fleet.app}, "
        f"{last.id} ({last.release}), is {state}; the fleet is {mixed}{spelled(on)}",
        hint=f"finish it with `immunity resume -c {cfg}`, or undo it with `immunity resume "
        f"-c {cfg} --abort` (every host back on the release it ran before it); then deploy",
        context={"deployment_id": last.id, "outcome": last.outcome, "fleet": on},
    )


def pool_problems(
    fleet: Fleet, members: Mapping[str, Member], pool: Mapping[str, Member]
) -> list[str]:
    """What in the balancer's pool makes a deployment unsafe or dishonest, one line each.

    * a member the config does not know: it would keep serving the old release while
      immunity reports every host on the new one;
    * a host the balancer reports unhealthy (DOWN): it serves nobody, so draining another
      host could take the last serving one, and its drain has no DRAIN state to wait for;
    * a host already out of the pool or draining: it already uses capacity that
      `max_unavailable` would hand out again (and a wave waiting for that capacity would
      wait for a host of a later wave). An interrupted deployment is finished by `resume`.
    """
    out = []
    for name in unknown_members(fleet, pool):
        member = pool[name]
        out.append(
            f"pool member {name} ({member.detail or member.state}) is not in the config's hosts: it "
            "would keep serving its release unseen; add it to hosts, or to "
            "unmanaged_members to leave it alone"
        )
    for h in fleet.hosts:
        mine = members.get(h.name)
        if mine is not None and mine.state is LbState.UNHEALTHY:
            out.append(
                f"{h.name} is unhealthy in the balancer ({mine.detail or mine.state}): bring it "
                "back up (or take it out of hosts) before deploying"
            )
        elif mine is not None and mine.state in (LbState.OUT, LbState.DRAINING):
            cfg = fleet.loaded.path
            out.append(
                f"{h.name} is out of the pool ({mine.detail or mine.state}): finish an "
                f"interrupted deployment with `immunity resume -c {cfg}`, put the fleet back "
                f"with `immunity rollback -c {cfg}`, or return the host to the pool"
            )
    return out


# -- before a resume or a rollback --------------------------------------------------------


async def resumable(fleet: Fleet) -> DeploymentRecord:
    """The run `resume` takes over: the app's last one, unfinished, interrupted or held.
    Raises NothingToResume otherwise."""
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


async def rollback_preflight(fleet: Fleet) -> tuple[dict[str, str], dict[str, str | None]]:
    """Where `rollback` takes each host, before anything is touched: each host's target (the
    release it ran before the last change, `last_change`; without a record, the one
    installed before its active one) and each host's active release now. Raises
    NothingToRollBack when no host would move, after a rollback that found the fleet mixed
    (undoing it would mix it again), and when a host would go to a release taken off the
    fleet and not judged since (`refuse_taken_away`)."""
    recs = await changes(fleet)
    record = last_change_in(recs)
    seen = await fleet.observe(installed=record is None)
    observed, actives = seen.states, dict(seen.actives)
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
            f"the fleet mixed ({spelled(by_release(targets))}); rolling it back would leave "
            "the fleet mixed again",
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
    return targets, actives


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
