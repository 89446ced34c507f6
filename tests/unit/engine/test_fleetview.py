"""derive(): each host's phase and the run's state from the journal and the fleet's view."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any, ClassVar

import pytest
from test_virtual_engine import _run_with_crash

from immunity.domain import HostRef, LbState, Member
from immunity.engine import run as run_module
from immunity.engine.deployment import deploy
from immunity.engine.fleetview import FleetState, HostPhase, derive
from immunity.engine.host import STEPS
from immunity.fleet.state import Sighting
from immunity.journal.base import JournalEntry
from immunity.testing import Behaviour, Latencies, VirtualClock, memory_fleet

HOSTS = [HostRef(name=n, address="127.0.0.1", port=8000 + i) for i, n in enumerate("abc")]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def journal(*rows: tuple[str, str | None, str | None, dict[str, Any]]) -> list[JournalEntry]:
    return [
        JournalEntry(i, "d1", T0 + dt.timedelta(seconds=i), kind, host, step, data)
        for i, (kind, host, step, data) in enumerate(rows)
    ]


def members(**states: LbState) -> dict[str, Member]:
    return {n: Member(n, states.get(n, LbState.SERVING)) for n in "abc"}


def test_a_step_started_and_never_finished_is_that_step_in_flight() -> None:
    """a switched to v2; b's stop started and never finished; c untouched."""
    entries = journal(
        ("host.switched", "a", None, {"release": "v2"}),
        ("wave.passed", None, None, {"wave": 1}),
        ("host.step_started", "b", "drain", {"purpose": "deploy"}),
        ("host.step_finished", "b", "drain", {"purpose": "deploy"}),
        ("host.step_started", "b", "stop", {"purpose": "deploy"}),
    )
    view = derive(
        entries,
        Sighting(members(b=LbState.OUT), {"a": "v2", "b": "v1", "c": "v1"}),
        HOSTS,
        release="v2",
        fallbacks={"a": "v1", "b": "v1", "c": "v1"},
    )
    assert [HostPhase.SERVING, HostPhase.STOPPED, HostPhase.SERVING] == [
        view.hosts[n].phase for n in "abc"
    ]
    assert ["v2", "v1", "v1"] == [view.hosts[n].expected for n in "abc"]
    assert frozenset({1}) == view.passed_waves
    assert frozenset({"b"}) == view.out
    assert frozenset({"a"}) == view.canary
    assert frozenset({"c"}) == view.baseline
    assert not view.reverting
    assert ("b: balancer reports out, expected serving",) == view.disagreements


def test_a_failed_step_and_a_failed_verdict_say_failed_host_and_revert_in_progress() -> None:
    """b's warm-up failed, the verdict failed: b is failed and the revert has begun."""
    entries = journal(
        ("host.step_started", "b", "warmup", {}),
        ("host.step_failed", "b", "warmup", {}),
        ("verdict.failed", None, None, {}),
    )
    view = derive(
        entries, Sighting(members(b=LbState.OUT), {"a": "v1", "b": "v2", "c": "v1"}), HOSTS
    )
    assert HostPhase.FAILED == view.hosts["b"].phase
    assert frozenset({"b"}) == view.failed
    assert view.reverting


def test_the_journal_disagreeing_with_a_host_is_named() -> None:
    """The journal says c serves v2; c's driver says it runs v1."""
    entries = journal(("host.switched", "c", None, {"release": "v2"}))
    view = derive(entries, Sighting(members(), {"a": "v1", "b": "v1", "c": "v1"}), HOSTS)
    assert ("c: journal says v2, host runs v1",) == view.disagreements


# -- the fold a run keeps equals derive() over the same entries -----------------------------


class Checked(FleetState):
    """The run's FleetState, checked at every entry it folds: the sets it keeps (out,
    canary, baseline, failed) equal those the frozen view computes from scratch."""

    made: ClassVar[list[Checked]] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        self.folded = 0
        Checked.made.append(self)

    def apply(self, e: JournalEntry) -> None:
        super().apply(e)
        self.folded += 1
        v = self.view()
        assert (v.out, v.canary, v.baseline, v.failed) == (
            self.out,
            self.canary,
            self.baseline,
            self.failed,
        ), f"after {e.kind} {e.host or ''} {e.step or ''}"


LAT = Latencies.realistic()
RELEASES = {
    "good": {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)},
    "bad": {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.08)},
}
CONFIG: dict[str, Any] = {
    "waves": [1, "50%", "100%"],
    "bake": {"min": 10, "max": 120, "interval": 1, "lag": 0},
    "timeouts": {"drain": 30, "revert": 600},
    "guard": {"duration": 15},
}


def scenarios() -> list[tuple[str, str, dict[str, Any], dict[tuple[str, str], str]]]:
    """Recorded runs: good and bad releases, and seeded random faults (a step of a host that
    fails once, fails always or hangs), with max_unavailable 1..3 and a failure budget."""
    rng = random.Random(10)
    out: list[tuple[str, str, dict[str, Any], dict[tuple[str, str], str]]] = [
        ("good", "good", {"max_unavailable": 2}, {}),
        ("bad", "bad", {"max_unavailable": 2}, {}),
    ]
    for i in range(10):
        host, step = f"h{rng.randint(1, 5)}", rng.choice(STEPS)
        mode = rng.choice(("fail_once", "fail", "hang"))
        cfg = {"max_unavailable": rng.randint(1, 3), "max_failed_hosts": rng.randint(0, 1)}
        out.append((f"seed{i}-{host}-{step}-{mode}", "good", cfg, {(host, step): mode}))
    return out


@pytest.mark.parametrize(
    ("name", "releases", "config", "faults"), scenarios(), ids=[s[0] for s in scenarios()]
)
def test_the_view_a_run_folds_entry_by_entry_equals_derive_over_its_journal(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    releases: str,
    config: dict[str, Any],
    faults: dict[tuple[str, str], str],
) -> None:
    """The run folds each entry as it appends it; at every entry its kept sets equal the
    from-scratch view, and at the end its view equals `derive` over the run's journal.
    Where the run ended with the fleet whole, the view also equals what the fleet reports."""
    monkeypatch.setattr(run_module, "FleetState", Checked)
    Checked.made.clear()
    clock = VirtualClock()
    fleet, world = memory_fleet(
        5, clock=clock, latencies=LAT, releases=RELEASES[releases], config={**CONFIG, **config}
    )
    for (host, step), mode in faults.items():
        if mode == "hang":
            world.hang.add((host, step))
        else:
            getattr(world, mode)[(host, step)] = "injected"

    async def main() -> tuple[str, list[JournalEntry]]:
        result = await deploy(fleet, "v2", handle_signals=False)
        return str(result.outcome), list(await fleet.journal.entries(result.deployment_id))

    outcome, entries = clock.run(main)
    [live] = Checked.made
    assert live.folded == len(entries)
    fallbacks = {h.name: "v1" for h in fleet.hosts}
    assert live.view() == derive(entries, None, fleet.hosts, release="v2", fallbacks=fallbacks)
    if outcome in ("deployed", "reverted"):
        members = {n: Member(n, s.lb) for n, s in world.hosts.items()}
        actives = {n: s.active for n, s in world.hosts.items()}
        now = derive(
            entries, Sighting(members, actives), fleet.hosts, release="v2", fallbacks=fallbacks
        )
        assert live.view() == now, outcome
        assert () == now.disagreements


@pytest.mark.parametrize("at", [3, 9, 17])
def test_a_resumed_run_folds_the_journal_once_then_each_entry_and_equals_derive(
    monkeypatch: pytest.MonkeyPatch, at: int
) -> None:
    """Crash after the at-th step started, resume: the resumed run's view (the old entries
    folded once at its start, then its own as appended) equals derive over the journal."""
    monkeypatch.setattr(run_module, "FleetState", Checked)
    Checked.made.clear()
    result, world, entries = _run_with_crash(RELEASES["good"], "host.step_started", at)
    assert "deployed" == result.outcome
    live = Checked.made[-1]
    hosts = [HostRef(name=n, address="127.0.0.1", port=0) for n in sorted(world.hosts)]
    fallbacks = {h.name: "v1" for h in hosts}
    members = {n: Member(n, s.lb) for n, s in world.hosts.items()}
    actives = {n: s.active for n, s in world.hosts.items()}
    assert live.view() == derive(entries, None, hosts, release="v2", fallbacks=fallbacks)
    assert live.view() == derive(
        entries, Sighting(members, actives), hosts, release="v2", fallbacks=fallbacks
    )


@pytest.mark.parametrize(
    ("releases", "faults"),
    [("good", {}), ("bad", {}), ("good", {("h2", "warmup"): "fail"})],
    ids=["good", "bad", "h2-warmup-fails"],
)
def test_the_run_result_is_what_its_journal_says(
    releases: str, faults: dict[tuple[str, str], str]
) -> None:
    """The result built from the run's fold says what its journal entries say, read here
    naively: each host's steps (one row per start, closed by its finish or failure, the
    error of a failed one), the release its last switch reached, the plan, the last verdict
    and the concluding entry's outcome, reason and timings."""
    clock = VirtualClock()
    fleet, world = memory_fleet(
        5, clock=clock, latencies=LAT, releases=RELEASES[releases], config=CONFIG
    )
    for key, mode in faults.items():
        getattr(world, mode)[key] = "injected"

    async def main() -> tuple[Any, list[JournalEntry]]:
        result = await deploy(fleet, "v2", handle_signals=False)
        return result, list(await fleet.journal.entries(result.deployment_id))

    result, entries = clock.run(main)
    for row in result.hosts:
        mine = [e for e in entries if e.host == row["name"]]
        starts = [e for e in mine if e.kind == "host.step_started"]
        ends = [e for e in mine if e.kind in ("host.step_finished", "host.step_failed")]
        assert [(e.step, e.at.isoformat()) for e in starts] == [
            (s["step"], s["started_at"]) for s in row["steps"]
        ]
        assert [(e.at.isoformat(), e.kind == "host.step_finished") for e in ends] == [
            (s["finished_at"], s["ok"]) for s in row["steps"] if s["ok"] is not None
        ]
        assert [e.data.get("error") for e in ends if e.kind == "host.step_failed"] == [
            s["error"] for s in row["steps"] if s["ok"] is False
        ]
        switched = [e.data["release"] for e in mine if e.kind == "host.switched"]
        assert (switched[-1] if switched else None) == row["release"]
    [started] = [e for e in entries if e.kind == "deployment.started"]
    assert tuple(tuple(w) for w in started.data["waves"]) == result.waves
    verdicts = [e for e in entries if e.kind in ("verdict.reached", "verdict.failed")]
    [concluded] = [e for e in entries if e.kind.startswith("deployment.") and "outcome" in e.data]
    assert concluded.data.get("verdict", verdicts[-1].data["verdict"]) == result.verdict
    assert (concluded.data["outcome"], concluded.data["reason"]) == (
        str(result.outcome),
        result.reason,
    )
    assert (concluded.data.get("detected_after_s"), concluded.data.get("reverted_after_s")) == (
        result.detected_after_s,
        result.reverted_after_s,
    )
    if faults:
        assert any(s["ok"] is False for row in result.hosts for s in row["steps"])
