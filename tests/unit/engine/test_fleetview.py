"""derive(): each host's phase and the run's state from the journal and the fleet's view."""

from __future__ import annotations

import datetime as dt
from typing import Any

from immunity.domain import HostRef, LbState, Member
from immunity.engine.fleetview import HostPhase, derive
from immunity.journal.base import JournalEntry

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
        members(b=LbState.OUT),
        {"a": "v2", "b": "v1", "c": "v1"},
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
    view = derive(entries, members(b=LbState.OUT), {"a": "v1", "b": "v2", "c": "v1"}, HOSTS)
    assert HostPhase.FAILED == view.hosts["b"].phase
    assert frozenset({"b"}) == view.failed
    assert view.reverting


def test_the_journal_disagreeing_with_a_host_is_named() -> None:
    """The journal says c serves v2; c's driver says it runs v1."""
    entries = journal(("host.switched", "c", None, {"release": "v2"}))
    view = derive(entries, members(), {"a": "v1", "b": "v1", "c": "v1"}, HOSTS)
    assert ("c: journal says v2, host runs v1",) == view.disagreements
