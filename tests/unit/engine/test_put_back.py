"""`put_back`: what `resume` journals of hosts a run put back unjournaled when its journal
failed mid-walk (the journal says a step started, the fleet says serving in the pool)."""

from __future__ import annotations

import datetime as dt

from immunity.domain import HostRef, LbState
from immunity.engine.deployment import put_back
from immunity.fleet.state import FleetState
from immunity.journal.base import JournalEntry

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
WHERE = {"release": "v2", "purpose": "deploy"}


def _state() -> FleetState:
    hosts = [HostRef(name=f"h{i}", address="127.0.0.1", port=i) for i in range(1, 4)]
    state = FleetState(hosts, release="v2")
    state.observe({f"h{i}": (LbState.SERVING, "v1") for i in range(1, 4)})
    return state


def _apply(state: FleetState, kind: str, host: str, step: str | None = None) -> None:
    state.apply(JournalEntry(0, "d", T0, kind, host, step, WHERE))


def test_a_host_mid_walk_found_serving_is_put_back_and_others_are_not() -> None:
    """h1's walk stopped at `start` and the fleet shows it serving v1: put back. h2 switched
    (not mid-walk); h3 mid-walk but out of the pool (not put back: resume walks it)."""
    state = _state()
    for step in ("drain", "stop", "install"):
        _apply(state, "host.step_started", "h1", step)
        _apply(state, "host.step_finished", "h1", step)
    _apply(state, "host.step_started", "h1", "start")
    _apply(state, "host.switched", "h2")
    _apply(state, "host.step_started", "h3", "drain")
    observed = {
        "h1": (LbState.SERVING, "v1"),
        "h2": (LbState.SERVING, "v2"),
        "h3": (LbState.OUT, "v1"),
    }
    assert {"h1": "v1"} == put_back(state.view(), observed)


def test_a_failed_walk_or_a_host_running_nothing_is_not_put_back() -> None:
    """A failed step is the immune response's to walk back; a serving host with no release
    reported is not said to serve one."""
    state = _state()
    _apply(state, "host.step_started", "h1", "verify")
    _apply(state, "host.step_failed", "h1", "verify")
    _apply(state, "host.step_started", "h2", "stop")
    observed = {"h1": (LbState.SERVING, "v1"), "h2": (LbState.SERVING, None)}
    assert {} == put_back(state.view(), observed)
