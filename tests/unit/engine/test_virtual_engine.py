"""The engine over an in-memory fleet in virtual time: waves, capacity, bake, the immune
response and resume after a crash at every step. Minutes of deployment run in milliseconds;
every deadline is still enforced (in virtual seconds). The fleet's own state is read back
(`World`), never the engine's return value alone."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from immunity.domain import LbState
from immunity.engine import ops
from immunity.engine.deployment import deploy as run_deploy
from immunity.engine.result import RunResult
from immunity.journal.base import JournalEntry
from immunity.journal.holder import machine_name
from immunity.testing import (
    Behaviour,
    Latencies,
    MemoryJournal,
    MemoryStore,
    VirtualClock,
    World,
    memory_fleet,
)

LAT = Latencies.realistic()
GOOD = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)}
BAD = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.08)}
CONFIG: dict[str, Any] = {
    "waves": [1, "50%", "100%"],
    "max_unavailable": 2,
    "bake": {"min": 20, "max": 300, "interval": 1, "lag": 0},
    "timeouts": {"drain": 30, "revert": 600},
    "lease_ttl": 30,
    "guard": {"duration": 0},  # the watch after the last wave is tested in tests/unit/analysis
}


class Crash(BaseException):
    """The orchestrator process dies (SIGKILL): nothing after this runs or is journaled."""


class CrashingJournal(MemoryJournal):
    """Dies right after the `at`-th entry of `kind` is durable; every later write dies too."""

    def __init__(self, store: MemoryStore, clock: VirtualClock, kind: str, at: int) -> None:
        super().__init__(store, clock=clock)
        self.kind, self.at, self.seen, self.dead = kind, at, 0, False

    async def append(self, deployment_id: str, kind: str, **kw: Any) -> JournalEntry:
        if self.dead:
            raise Crash
        entry = await super().append(deployment_id, kind, **kw)
        if kind == self.kind:
            self.seen += 1
            if self.seen == self.at:
                self.dead = True
                raise Crash
        return entry

    async def finish(self, *args: Any, **kw: Any) -> None:
        if self.dead:
            raise Crash
        await super().finish(*args, **kw)

    async def heartbeat(self, lease: Any) -> None:
        if self.dead:
            raise Crash
        await super().heartbeat(lease)

    async def acquire_lease(self, app: str, holder: str, *args: Any, **kw: Any) -> Any:
        # the run that crashes is another process, gone by the time resume looks: its
        # holder is a PID that has exited (this test's process is alive all along)
        return await super().acquire_lease(app, f"{machine_name()}:{DEAD_PID}", *args, **kw)


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


DEAD_PID = _exited_pid()


def deploy(
    releases: Mapping[str, Behaviour] = GOOD,
    hosts: int = 5,
    config: Mapping[str, Any] | None = None,
    world_setup: Any = None,
) -> tuple[RunResult, World, VirtualClock, list[JournalEntry]]:
    clock = VirtualClock()
    fleet, world = memory_fleet(
        hosts, clock=clock, latencies=LAT, releases=releases, config={**CONFIG, **(config or {})}
    )
    if world_setup:
        world_setup(world)

    async def main() -> tuple[RunResult, list[JournalEntry]]:
        result = await run_deploy(fleet, "v2", handle_signals=False)
        return result, list(await fleet.journal.entries(result.deployment_id))

    result, entries = clock.run(main)
    return result, world, clock, entries


def serving(world: World) -> dict[str, tuple[str | None, LbState]]:
    return {n: (s.active, s.lb) for n, s in world.hosts.items()}


def kinds(entries: Sequence[JournalEntry], kind: str) -> list[JournalEntry]:
    return [e for e in entries if e.kind == kind]


def test_a_good_release_rolls_wave_by_wave_within_capacity() -> None:
    """Waves 1, 50%, 100% of 5 hosts; never more than max_unavailable hosts out at once; each
    wave passes its bake before the next starts; every host ends on v2, serving."""
    result, world, clock, entries = deploy()
    assert result.outcome == "deployed", result.reason
    assert serving(world) == {f"h{i}": ("v2", LbState.SERVING) for i in range(1, 6)}
    assert world.peak_out == 2  # max_unavailable, reached in the 2-host waves
    assert [e.data["hosts"] for e in kinds(entries, "wave.started")] == [
        ["h1"],
        ["h2", "h3"],
        ["h4", "h5"],
    ]
    order = [(e.kind, e.data.get("wave")) for e in entries if e.kind.startswith("wave.")]
    assert order == [(k, w) for w in (1, 2, 3) for k in ("wave.started", "wave.passed")]
    for bake in kinds(entries, "bake.finished"):
        assert bake.data["t_s"] >= 20  # bake.min, in virtual seconds
    assert clock.monotonic() > 60  # minutes of deployment, run in virtual time


def test_capacity_one_switches_hosts_one_at_a_time() -> None:
    """max_unavailable 1: at no moment are two hosts out of the pool."""
    result, world, _, entries = deploy(config={"max_unavailable": 1})
    assert result.outcome == "deployed"
    assert world.peak_out == 1
    drained = [e.host for e in entries if e.kind == "host.step_started" and e.step == "drain"]
    assert sorted(drained) == [f"h{i}" for i in range(1, 6)]


def test_a_bad_release_is_found_in_the_bake_and_the_fleet_reverted() -> None:
    """8% errors against 1%: the first wave's bake fails, every host is back on v1 serving."""
    result, world, _, entries = deploy(BAD)
    assert result.outcome == "reverted", result.reason
    assert "errors" in result.reason
    assert serving(world) == {f"h{i}": ("v1", LbState.SERVING) for i in range(1, 6)}
    assert [e.data["wave"] for e in kinds(entries, "verdict.failed")] == [1]
    assert len(kinds(entries, "wave.started")) == 1  # wave 2 never started
    assert world.switches == 2  # h1 to v2 and back
    assert result.detected_after_s is not None and result.reverted_after_s is not None


def test_a_failing_start_reverts_the_fleet_naming_the_host_and_step() -> None:
    """A host whose start fails once (max_failed_hosts 0): the whole fleet goes back to v1."""

    def setup(world: World) -> None:
        world.fail_once[("h3", "start")] = "no disk space"

    result, world, _, entries = deploy(world_setup=setup)
    assert result.outcome == "reverted"
    assert "h3" in result.reason and "start" in result.reason
    assert all(a == "v1" and lb is LbState.SERVING for a, lb in serving(world).values())
    failed = kinds(entries, "host.step_failed")
    assert [(e.host, e.step) for e in failed] == [("h3", "start")]


def test_a_host_that_cannot_start_either_release_is_named_for_a_human() -> None:
    """h3 cannot start anything: the revert ends revert_incomplete naming h3, and
    every other host is back on v1, serving."""

    def setup(world: World) -> None:
        world.fail[("h3", "start")] = "no disk space"

    result, world, _, _ = deploy(world_setup=setup)
    assert (result.outcome, tuple(result.needs_human)) == ("revert_incomplete", ("h3",))
    rest = {n: v for n, v in serving(world).items() if n != "h3"}
    assert rest == {n: ("v1", LbState.SERVING) for n in ("h1", "h2", "h4", "h5")}
    assert world.hosts["h3"].lb is not LbState.SERVING  # never put back half-started


def test_a_drain_that_never_ends_meets_its_deadline_and_the_fleet_is_reverted() -> None:
    """h2's drain hangs: the drain step fails at timeouts.drain (virtual seconds), h2 is put
    back and the fleet reverted: no hang, one release everywhere, every host serving."""

    def setup(world: World) -> None:
        world.hang.add(("h2", "drain"))

    result, world, _, entries = deploy(world_setup=setup)
    assert result.outcome == "reverted"
    failed = kinds(entries, "host.step_failed")
    assert [(e.host, e.step) for e in failed][:1] == [("h2", "drain")]
    assert "within 30s" in failed[0].data["error"]
    assert all(a == "v1" and lb is LbState.SERVING for a, lb in serving(world).values())


def test_a_release_that_never_warms_up_fails_its_warmup_step_at_the_deadline() -> None:
    """v2 never warms: the canary's warm-up fails at warmup.timeout, the fleet reverts."""
    releases = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01, warms=False)}
    result, world, _, entries = deploy(releases, config={"warmup": {"timeout": 45}})
    assert result.outcome == "reverted"
    failed = kinds(entries, "host.step_failed")
    assert [(e.host, e.step) for e in failed] == [("h1", "warmup")]
    assert "45s" in failed[0].data["error"] and "HTTP 503" in failed[0].data["error"]
    assert all(a == "v1" and lb is LbState.SERVING for a, lb in serving(world).values())


def _run_with_crash(
    releases: Mapping[str, Behaviour], kind: str, at: int
) -> tuple[RunResult, World, list[JournalEntry]]:
    """Deploy until the journal dies after the `at`-th `kind` entry, then resume."""
    clock = VirtualClock()
    store = MemoryStore()
    fleet, world = memory_fleet(
        4,
        clock=clock,
        latencies=LAT,
        releases=releases,
        config={**CONFIG, "waves": [1, "100%"]},
        journal=CrashingJournal(store, clock, kind, at),
    )

    async def first() -> None:
        try:
            await run_deploy(fleet, "v2", handle_signals=False)
        except Crash:
            return
        except BaseExceptionGroup as group:
            assert group.subgroup(Crash) is not None, group
            return
        raise AssertionError(f"no crash at {kind} #{at}")

    clock.run(first)
    clock.advance(CONFIG["lease_ttl"] + 1)  # the dead holder's lease expires
    fleet.journal = MemoryJournal(store, clock=clock)

    async def second() -> tuple[RunResult, list[JournalEntry]]:
        with anyio.fail_after(3600):  # virtual seconds: a resume that never ends fails here
            result = await ops.resume(fleet)
        return result, list(await fleet.journal.entries(result.deployment_id))

    result, entries = clock.run(second)
    return result, world, entries


def _count(releases: Mapping[str, Behaviour], kind: str) -> int:
    clock = VirtualClock()
    fleet, _ = memory_fleet(
        4, clock=clock, latencies=LAT, releases=releases, config={**CONFIG, "waves": [1, "100%"]}
    )

    async def main() -> int:
        result = await run_deploy(fleet, "v2", handle_signals=False)
        return len(kinds(await fleet.journal.entries(result.deployment_id), kind))

    return clock.run(main)


def test_a_crash_at_every_step_of_a_deployment_is_resumed_to_the_end(
    record_property: Any,
) -> None:
    """Kill the orchestrator right after each host.step_started of a good deployment (and
    after each look of its bakes' first seconds); `resume` finishes it: every host on v2,
    serving, the journal saying deployed."""
    steps = _count(GOOD, "host.step_started")
    assert steps == 4 * 7
    points = [("host.step_started", i) for i in range(1, steps + 1)]
    points += [("bake.looked", i) for i in (1, 5, 30)]
    for kind, at in points:
        result, world, entries = _run_with_crash(GOOD, kind, at)
        where = f"crash after {kind} #{at}"
        assert result.outcome == "deployed", (where, result.reason)
        assert serving(world) == {f"h{i}": ("v2", LbState.SERVING) for i in range(1, 5)}, where
        assert kinds(entries, "deployment.resumed"), where
    record_property("kill points covered (virtual deploy)", len(points))


def test_a_crash_at_every_step_of_a_revert_is_resumed_and_the_revert_finished(
    record_property: Any,
) -> None:
    """Kill after each host.step_started of a bad release's deploy and revert; `resume`
    finishes the revert: every host back on v1, serving, the outcome reverted."""
    steps = _count(BAD, "host.step_started")
    assert steps == 2 * 7  # h1 to v2, then h1 back
    for at in range(1, steps + 1):
        result, world, _ = _run_with_crash(BAD, "host.step_started", at)
        where = f"crash after host.step_started #{at}"
        assert result.outcome in ("reverted", "deployed"), (where, result.reason)
        want = "v1" if result.outcome == "reverted" else "v2"
        assert serving(world) == {f"h{i}": (want, LbState.SERVING) for i in range(1, 5)}, where
        if at > 7:  # the revert had begun: resume finishes it, never deploys
            assert result.outcome == "reverted", where
    record_property("kill points covered (virtual revert)", steps)


def test_two_orchestrators_one_lease_the_second_is_refused() -> None:
    """While a deployment holds the app's lease, another on the same journal gets LeaseHeld."""
    from immunity.errors import LeaseHeld

    clock = VirtualClock()
    store = MemoryStore()
    fleet, world = memory_fleet(3, clock=clock, latencies=LAT, releases=GOOD, config=CONFIG)
    fleet.journal = MemoryJournal(store, clock=clock)
    other, _ = memory_fleet(3, clock=clock, world=world, config=CONFIG)
    other.journal = MemoryJournal(store, clock=clock)

    async def main() -> tuple[str, str]:
        refused = ""
        async with anyio.create_task_group() as tg:
            outcome: list[str] = []

            async def first() -> None:
                outcome.append((await run_deploy(fleet, "v2", handle_signals=False)).outcome)

            tg.start_soon(first)
            await anyio.sleep(10)
            try:
                await run_deploy(other, "v2", handle_signals=False)
            except LeaseHeld as exc:
                refused = exc.message
        return outcome[0], refused

    outcome, refused = clock.run(main)
    assert outcome == "deployed"
    assert "holds the lease" in refused
