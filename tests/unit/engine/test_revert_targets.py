"""Revert targets are what each host served when the run started, observed; a deployment is
refused over an unfinished one. In virtual time over the in-memory fleet; the fleet's own
state (`World`) and every release the driver started are read back.

Seen in a new-user trial: a deploy over an interrupted one took the bad release the
interrupted run left on h1 for the fleet's "previous" release, and a later deploy's revert
installed it on hosts the deployment never touched."""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import pytest

from immunity.cli.dryrun import dry_run
from immunity.cli.status import status as cli_status
from immunity.domain import LbState
from immunity.engine import ops
from immunity.engine.deployment import deploy
from immunity.errors import PreflightError
from immunity.testing import Behaviour, Latencies, VirtualClock, World, memory_fleet

LAT = Latencies.realistic()
RELEASES = {
    "v12": Behaviour(error_rate=0.01),
    "v13": Behaviour(error_rate=0.05),
    "v14": Behaviour(error_rate=0.05),
    "v15": Behaviour(error_rate=0.01),
}
CONFIG: dict[str, Any] = {
    "waves": [1, "100%"],
    "max_unavailable": 1,
    "bake": {"min": 20, "max": 300, "interval": 1, "lag": 0},
    "timeouts": {"drain": 30, "revert": 600},
    "guard": {"duration": 0},
}


def fleet_on(
    actives: dict[str, str], clock: VirtualClock
) -> tuple[Any, World, list[tuple[str, str]]]:
    """A fleet whose hosts run `actives`; the list records every (host, release) started."""
    fleet, world = memory_fleet(
        list(actives), clock=clock, latencies=LAT, releases=RELEASES, config=CONFIG
    )
    for name, rel in actives.items():
        world.hosts[name].active = rel
        world.hosts[name].installed = [rel]
    started: list[tuple[str, str]] = []
    start = fleet.driver.start

    async def recording_start(host: Any, release: str) -> None:
        started.append((host.name, release))
        await start(host, release)

    fleet.driver.start = recording_start  # type: ignore[method-assign]
    return fleet, world, started


def on(world: World) -> dict[str, tuple[str | None, LbState]]:
    return {n: (s.active, s.lb) for n, s in world.hosts.items()}


async def interrupted_deploy(fleet: Any, world: World, clock: VirtualClock, release: str) -> Any:
    """Deploy `release` and SIGINT 4 s after its first canary is back in the pool."""

    async def ctrl_c() -> None:
        while not any(
            s.active == release and s.lb is LbState.SERVING for s in world.hosts.values()
        ):
            await clock.sleep(0.5)
        await clock.sleep(4)
        os.kill(os.getpid(), signal.SIGINT)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ctrl_c)
        return await deploy(fleet, release, handle_signals=True)


def test_a_deploy_over_an_interrupted_one_is_refused_and_abort_restores_one_release() -> None:
    """Finding 1/2: v13 interrupted in its wave-1 bake (h1 on v13); `deploy v14` and its
    dry run are refused, nothing touched, naming the run, the fleet and the way out;
    `resume --abort` puts every host back on v12; then a deploy is accepted again."""
    clock = VirtualClock()
    fleet, world, started = fleet_on({f"h{i}": "v12" for i in range(1, 6)}, clock)

    async def main() -> tuple[Any, str, str, dict[str, Any], Any, Any]:
        first = await interrupted_deploy(fleet, world, clock, "v13")
        before = on(world), list(started)
        refusals = []
        for attempt in (deploy(fleet, "v14", handle_signals=False), dry_run(fleet, "v14")):
            with pytest.raises(PreflightError) as exc:
                await attempt
            refusals.append(exc.value)
        assert (on(world), started) == before  # nothing touched
        status = await cli_status(fleet)
        aborted = await ops.resume(fleet, abort=True)
        after = await deploy(fleet, "v12", handle_signals=False)
        return first, refusals[0].message, refusals[0].hint or "", status, aborted, after

    first, message, hint, status, aborted, after = clock.run(main)
    assert first.outcome == "interrupted", first.reason
    assert first.deployment_id in message and "interrupted" in message
    assert "mixed" in message and "h1 on v13" in message and "h2, h3, h4, h5 on v12" in message
    assert "immunity resume" in hint and "--abort" in hint
    assert status["steady"] is False
    assert any("interrupted" in a for a in status["attention"])
    assert any("mixed" in a for a in status["attention"])
    assert aborted.outcome == "aborted", aborted.reason
    assert on(world) == {f"h{i}": ("v12", LbState.SERVING) for i in range(1, 6)}
    assert after.outcome == "unchanged"  # nothing to switch, but no longer refused
    assert ("h2", "v13") not in started and ("h1", "v14") not in started


def test_a_crashed_run_is_refused_too_until_resumed() -> None:
    """A run whose process died (no outcome, lease expired) refuses the next deploy the
    same way; plain `resume` finishes it (here: v13 found worse, every host back on v12)."""
    clock = VirtualClock()
    fleet, _, started = fleet_on({f"h{i}": "v12" for i in range(1, 4)}, clock)

    async def main() -> tuple[str, Any]:
        rec = await fleet.journal.begin(fleet.app, "v13", {"fallbacks": {"h1": "v12"}})
        del rec  # begun, never finished: the orchestrator died before its first step
        with pytest.raises(PreflightError) as exc:
            await deploy(fleet, "v14", handle_signals=False)
        return exc.value.message, await ops.resume(fleet)

    message, resumed = clock.run(main)
    assert "unfinished" in message
    assert resumed.outcome in ("reverted", "deployed")
    assert ("h1", "v14") not in started


def test_a_revert_puts_each_host_back_on_what_it_served_and_installs_nothing_else() -> None:
    """Finding 1d: h1 on v13, h2..h5 on v12, `deploy v12`. h1's start fails; the revert puts
    h1 back on v13 (what it served) and leaves h2..h5 on v12: v13 is started on no other
    host. The wave had no host left on the old release: reported, guard rails only."""
    clock = VirtualClock()
    fleet, world, started = fleet_on({"h1": "v13", **{f"h{i}": "v12" for i in range(2, 6)}}, clock)
    world.fail_once[("h1", "start")] = "exit 1"

    async def main() -> tuple[Any, list[Any], dict[str, Any]]:
        plan = await dry_run(fleet, "v12")
        result = await deploy(fleet, "v12", handle_signals=False)
        return result, list(await fleet.journal.entries(result.deployment_id)), plan

    result, entries, plan = clock.run(main)
    assert plan["fallbacks"] == {"h1": "v13", **{f"h{i}": "v12" for i in range(2, 6)}}
    assert result.fallbacks == plan["fallbacks"]
    assert result.outcome == "reverted", result.reason
    assert world.hosts["h1"].active == "v13"  # what it served: its revert target, observed
    for i in range(2, 6):
        assert world.hosts[f"h{i}"].active == "v12"
        assert (f"h{i}", "v13") not in started
    wave1 = next(e for e in entries if e.kind == "wave.started")
    assert wave1.data["baseline"] == [] and "guard rails only" in wave1.data["no_baseline"]


def test_a_wave_without_a_baseline_left_judges_guard_rails_only_and_never_compares() -> None:
    """Finding 3: the only host left on the old release is wave 1's. The bake is told so
    (`relative` false) and no comparison check passes against an empty baseline."""
    clock = VirtualClock()
    fleet, world, _ = fleet_on({"h1": "v13", **{f"h{i}": "v12" for i in range(2, 6)}}, clock)

    async def main() -> list[Any]:
        result = await deploy(fleet, "v12", handle_signals=False)
        return list(await fleet.journal.entries(result.deployment_id))

    entries = clock.run(main)
    bake = next(e for e in entries if e.kind == "bake.started")
    assert bake.data["relative"] is False
    for e in entries:
        for c in (e.data.get("verdict") or {}).get("checks", []):
            assert not (c.get("outcome") == "pass" and c.get("name") in ("errors", "latency")), c
    assert on(world) == {f"h{i}": ("v12", LbState.SERVING) for i in range(1, 6)}


def test_signal_checked_journals_what_the_signal_saw() -> None:
    """Finding 4: the journal's `signal.checked` held only `{"signal": "lb"}`; the sentence
    the signal's preflight returned (what it sees of current traffic) is journaled now."""
    clock = VirtualClock()
    fleet, _, _ = fleet_on({f"h{i}": "v12" for i in range(1, 4)}, clock)
    said = "lb: access.log shows 412 request(s) in the last 60 s on h1, h2, h3"

    async def preflight(hosts: Any) -> str:
        return said

    fleet.signals["lb"].preflight = preflight  # type: ignore[attr-defined]

    async def main() -> list[Any]:
        result = await deploy(fleet, "v13", handle_signals=False)
        return list(await fleet.journal.entries(result.deployment_id))

    checked = [e for e in clock.run(main) if e.kind == "signal.checked"]
    assert [dict(e.data) for e in checked] == [{"signal": "lb", "seen": said}]


def test_a_held_deployment_blocks_the_next_and_resume_judges_it_again() -> None:
    """Another member of the kind: `judge.on_inconclusive: hold` ends with h1 on the new
    release and says "continue with `immunity resume`", but `resume` refused it ("no
    interrupted deployment") and a new deploy was accepted over the mixed fleet. Now the
    deploy is refused and `resume` judges the held wave again (traffic is back: deployed)."""
    clock = VirtualClock()
    fleet, world = memory_fleet(
        3,
        clock=clock,
        latencies=LAT,
        releases={"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)},
        config={
            **CONFIG,
            "judge": {"on_inconclusive": "hold", "inconclusive_limit": "5s"},
        },
    )
    world.rps_per_host = 0.0  # a quiet hour: nothing to judge, the rollout holds

    async def main() -> tuple[Any, str, Any]:
        held = await deploy(fleet, "v2", handle_signals=False)
        with pytest.raises(PreflightError) as exc:
            await deploy(fleet, "v3", handle_signals=False)
        world.rps_per_host = 50.0
        return held, exc.value.message, await ops.resume(fleet)

    held, refused, resumed = clock.run(main)
    assert held.outcome == "held", held.reason
    assert "is held" in refused and "h1 on v2" in refused, refused
    assert resumed.outcome == "deployed", resumed.reason
    assert on(world) == {f"h{i}": ("v2", LbState.SERVING) for i in range(1, 4)}


def test_a_fleet_on_two_old_releases_is_refused_and_one_of_them_is_accepted() -> None:
    """The baseline would mix v12 and v13 (and a revert would leave the fleet mixed): exit 2
    naming the hosts and the way out; deploying v12, which only h1 lacks, is accepted."""
    clock = VirtualClock()
    fleet, world, started = fleet_on({"h1": "v13", "h2": "v12", "h3": "v12"}, clock)

    async def main() -> tuple[str, Any]:
        with pytest.raises(PreflightError) as exc:
            await deploy(fleet, "v14", handle_signals=False)
        assert started == []
        return exc.value.message, await deploy(fleet, "v12", handle_signals=False)

    refused, repaired = clock.run(main)
    assert "the fleet is mixed (h1 on v13; h2, h3 on v12)" in refused, refused
    assert "--release v12" in refused
    assert repaired.outcome == "deployed", repaired.reason
    assert on(world) == {f"h{i}": ("v12", LbState.SERVING) for i in range(1, 4)}


def test_a_no_op_deploy_touches_no_host_and_rollback_goes_back_past_it() -> None:
    """v15 deployed over v12, then `deploy v15` again: the second run ends `unchanged` with
    no host started and no bake; `rollback` still takes every host back to v12 (the no-op's
    record, whose fallbacks are v15, is not the deployment to roll back). Then `deploy v12
    --force` walks every host again (each one restarted on v12) and ends deployed."""
    clock = VirtualClock()
    fleet, world, started = fleet_on({f"h{i}": "v12" for i in range(1, 4)}, clock)

    async def main() -> tuple[Any, Any, list[tuple[str, str]], Any, Any, list[tuple[str, str]]]:
        first = await deploy(fleet, "v15", handle_signals=False)
        before = list(started)
        again = await deploy(fleet, "v15", handle_signals=False)
        touched = started[len(before) :]
        entries = await fleet.journal.entries(again.deployment_id)
        assert [] == [e.kind for e in entries if e.kind.startswith(("host.", "bake."))]
        back = await ops.rollback(fleet, handle_signals=False)
        before = list(started)
        forced = await deploy(fleet, "v12", handle_signals=False, force=True)
        return first, again, touched, back, forced, started[len(before) :]

    first, again, touched, back, forced, restarted = clock.run(main)
    assert (first.outcome, again.outcome) == ("deployed", "unchanged"), first.reason
    assert [] == touched
    assert back.outcome == "rolled_back", back.reason
    assert forced.outcome == "deployed", forced.reason
    assert [("h1", "v12"), ("h2", "v12"), ("h3", "v12")] == sorted(restarted)
    assert on(world) == {f"h{i}": ("v12", LbState.SERVING) for i in range(1, 4)}


def test_a_forced_redeploy_keeps_the_rollback_target_and_a_no_op_dry_run_plans_nothing() -> None:
    """Trial 3 finding 3: v15 over v12, then `deploy v15 --dry-run` plans no wave, bake or
    guard (deploy would end `unchanged`); `--dry-run --force` walks every host on guard rails
    only; `deploy v15 --force` restarts every host on v15, and `rollback` still goes back to
    v12 (the restart moved no host to another release), not "nothing to roll back"."""
    clock = VirtualClock()
    fleet, world, _ = fleet_on({f"h{i}": "v12" for i in range(1, 4)}, clock)

    async def main() -> tuple[Any, ...]:
        first = await deploy(fleet, "v15", handle_signals=False)
        noop_plan = await dry_run(fleet, "v15")
        forced_plan = await dry_run(fleet, "v15", force=True)
        forced = await deploy(fleet, "v15", handle_signals=False, force=True)
        back = await ops.rollback(fleet, handle_signals=False)
        return first, noop_plan, forced_plan, forced, back

    first, noop_plan, forced_plan, forced, back = clock.run(main)
    assert first.outcome == "deployed", first.reason
    assert noop_plan["unchanged"] is True
    assert (noop_plan["waves"], noop_plan["guard"], noop_plan["bakes"]) == ([], None, 0)
    assert forced_plan["unchanged"] is False
    walked = [h for w in forced_plan["waves"] for m in w["moments"] for h in m["out"]]
    assert sorted(walked) == ["h1", "h2", "h3"]
    assert not any(w["relative"] for w in forced_plan["waves"])  # v15 vs v15: guard rails
    assert forced.outcome == "deployed", forced.reason
    assert back.outcome == "rolled_back", back.reason
    assert on(world) == {f"h{i}": ("v12", LbState.SERVING) for i in range(1, 4)}


def test_an_interrupted_deploy_then_rollback_reads_as_ended_by_it_in_history_and_status() -> None:
    """Trial 3 finding 7: v13 interrupted in its bake, then `rollback`. History files v13 as
    interrupted then rolled back (not "interrupted (not finished)"), counts 2 deployments and
    1 rollback for 3 rows, and names the rollback by the releases it moved, not
    `rollback:v13`; status says it so. After a reverted v14, `rollback` has nothing to do
    and says so in words (finding 13), not `error (nothing-to-resume)`."""
    from immunity.report import load as report_load
    from immunity.report.history import history

    clock = VirtualClock()
    fleet, world, _ = fleet_on({f"h{i}": "v12" for i in range(1, 4)}, clock)

    async def main() -> tuple[Any, ...]:
        done = await deploy(fleet, "v15", handle_signals=False)
        cut = await interrupted_deploy(fleet, world, clock, "v13")
        back = await ops.rollback(fleet, handle_signals=False)
        status = await ops.status(fleet)
        hist = await history(fleet.journal, fleet.app, clock.now())
        shown = await report_load(fleet.journal, cut.deployment_id)  # what `show` prints
        assert shown["ended_by"] == {"id": back.deployment_id, "label": "rollback v13 → v15"}
        assert shown["sentence"].endswith(
            f"Then ended by rollback v13 → v15 ({back.deployment_id})."
        )
        with pytest.raises(ops.NothingToResume) as mixed:  # it would put h1 back on v13
            await ops.rollback(fleet, handle_signals=False)
        assert "mixed" in mixed.value.message and on(world)["h1"] == ("v15", LbState.SERVING)
        bad = await deploy(fleet, "v14", handle_signals=False)  # found worse: reverted
        with pytest.raises(ops.NothingToResume) as again:
            await ops.rollback(fleet, handle_signals=False)
        return done, cut, back, (bad, again.value), status, hist

    done, cut, back, again, status, hist = clock.run(main)
    assert (done.outcome, cut.outcome, back.outcome) == ("deployed", "interrupted", "rolled_back")
    assert on(world) == {f"h{i}": ("v15", LbState.SERVING) for i in range(1, 4)}
    rows = {r["id"]: r for r in hist["deployments"]}
    assert rows[cut.deployment_id]["category"] == "ended_by_rollback"
    assert rows[cut.deployment_id]["ended_by"] == back.deployment_id
    assert rows[back.deployment_id]["label"] == "rollback v13 → v15"
    f = hist["figures"]
    assert (f["deployments"], f["rollbacks"], f["interrupted"]) == (2, 1, 0)
    assert f["ended_by_rollback"] == 1
    assert status["last_deployment"]["words"] == "rollback v13 → v15"
    bad, refused = again
    assert bad.outcome == "reverted", bad.reason
    assert refused.reference == "nothing-to-roll-back" and refused.label == "nothing to roll back"
    assert (
        f"every host already serves v15, as before the last deployment (v14 reverted, "
        f"{bad.deployment_id})" in refused.message
    )


def test_a_second_rollback_refuses_to_put_back_the_release_just_rolled_back() -> None:
    """Trial 4 finding 7: v15 deployed over v12, `rollback` (v15 → v12), then `rollback`
    again rolled the fleet forward to v15, unjudged, exit 0. Now the second one, and one
    after `deploy v12 --force` (a restart moves no host), are refused naming the release and
    the way forward, no host started; deploying v15 again (judged) makes it rollbackable."""
    clock = VirtualClock()
    fleet, world, started = fleet_on({f"h{i}": "v12" for i in range(1, 4)}, clock)

    async def main() -> tuple[Any, ...]:
        await deploy(fleet, "v15", handle_signals=False)
        back = await ops.rollback(fleet, handle_signals=False)
        before = list(started)
        with pytest.raises(ops.NothingToRollBack) as twice:
            await ops.rollback(fleet, handle_signals=False)
        assert started == before and on(world)["h1"] == ("v12", LbState.SERVING)
        forced = await deploy(fleet, "v12", handle_signals=False, force=True)
        with pytest.raises(ops.NothingToRollBack) as after_force:
            await ops.rollback(fleet, handle_signals=False)
        again = await deploy(fleet, "v15", handle_signals=False)
        last = await ops.rollback(fleet, handle_signals=False)
        return back, twice.value, forced, after_force.value, again, last

    back, twice, forced, after_force, again, last = clock.run(main)
    assert back.outcome == "rolled_back", back.reason
    assert twice.exit_code == 2 and twice.reference == "nothing-to-roll-back"
    assert "the fleet is already on v12, rolled back from v15 at " in twice.message
    assert f"({back.deployment_id})" in twice.message
    assert "would put h1, h2, h3 back on v15, unjudged" in twice.message
    assert "deploy v15 again to go forward" in (twice.hint or "")
    assert forced.outcome == "deployed", forced.reason
    assert "rolled back from v15" in after_force.message
    assert (again.outcome, last.outcome) == ("deployed", "rolled_back"), last.reason
    assert on(world) == {f"h{i}": ("v12", LbState.SERVING) for i in range(1, 4)}


def test_a_rollback_never_puts_a_host_back_on_a_reverted_release() -> None:
    """Another member of finding 7's kind: v13 reverted with its revert incomplete leaves h1
    on v13; `deploy v12` mends h1 (its fallback v13); `rollback` would put h1 back on the
    release the revert took off the fleet. Refused, naming v13 as reverted."""
    clock = VirtualClock()
    fleet, world, _ = fleet_on({"h1": "v13", "h2": "v12", "h3": "v12"}, clock)

    async def main() -> tuple[Any, Any]:
        bad = await fleet.journal.begin(fleet.app, "v13", {"fallbacks": {"h1": "v12"}})
        await fleet.journal.finish(bad.id, "revert_incomplete", "h1: revert failed", {})
        mended = await deploy(fleet, "v12", handle_signals=False)
        with pytest.raises(ops.NothingToRollBack) as refused:
            await ops.rollback(fleet, handle_signals=False)
        return mended, refused.value

    mended, refused = clock.run(main)
    assert mended.outcome == "deployed", mended.reason
    assert "v13 was found worse and reverted (its revert did not finish) at " in refused.message
    assert "would put h1 back on v13, unjudged" in refused.message, refused.message
    assert on(world) == {f"h{i}": ("v12", LbState.SERVING) for i in range(1, 4)}


def test_a_lease_left_by_a_run_killed_in_its_preflight_does_not_block_the_app() -> None:
    """Another member of trial 4 finding 11's kind: an orchestrator SIGKILLed in its
    preflight leaves the lease (its holder's process gone) on a run it never journaled.
    `deploy` answered exit 5 "its process is gone; run `immunity resume`", and `resume`
    "nothing to resume", for good. Now the next deploy takes the lease over and deploys."""
    import subprocess
    import sys

    from immunity.journal import holder_name

    clock = VirtualClock()
    fleet, world, _ = fleet_on({f"h{i}": "v12" for i in range(1, 4)}, clock)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    machine = holder_name().rpartition(":")[0]

    async def main() -> Any:
        await fleet.journal.acquire_lease(fleet.app, f"{machine}:{gone.pid}", "never-begun", 30)
        return await deploy(fleet, "v15", handle_signals=False)

    done = clock.run(main)
    assert done.outcome == "deployed", done.reason
    assert on(world) == {f"h{i}": ("v15", LbState.SERVING) for i in range(1, 4)}


def test_a_rollback_over_a_stopped_rollback_is_refused_and_points_to_resume() -> None:
    """Finding 7's kind: a rollback of v15 stopped by a signal with h1 back on v12 and h2,
    h3 still on v15; `rollback` again took the stopped one's "previous" (v15) for where to
    go and moved h1 forward to v15. Refused now: `resume` finishes the stopped rollback."""
    clock = VirtualClock()
    fleet, world, started = fleet_on({"h1": "v12", "h2": "v15", "h3": "v15"}, clock)

    async def main() -> Any:
        rec = await fleet.journal.begin(
            fleet.app,
            "rollback:v15",
            {
                "rollback": True,
                "previous": {f"h{i}": "v15" for i in range(1, 4)},
                "fallbacks": {f"h{i}": "v12" for i in range(1, 4)},
            },
        )
        await fleet.journal.finish(rec.id, "interrupted", "SIGINT received during the revert", {})
        with pytest.raises(ops.NothingToRollBack) as refused:
            await ops.rollback(fleet, handle_signals=False)
        return refused.value

    refused = clock.run(main)
    assert "the fleet is already on h1 on v12; h2, h3 on v15, rolled back from v15" in (
        refused.message
    ), refused.message
    assert (refused.hint or "").startswith("that rollback did not finish: `immunity resume")
    assert started == [] and on(world)["h1"] == ("v12", LbState.SERVING)
