"""Wave planning."""

from __future__ import annotations

from immunity.domain import HostRef
from immunity.engine.plan import plan_waves, wave_sizes, with_holdback


def test_percentage_waves_are_cumulative_and_end_with_the_whole_fleet() -> None:
    """[1, 25%, 100%] on 8 hosts is 1, then up to 2, then all 8."""
    assert wave_sizes([1, "25%", "100%"], 8) == [1, 2, 8]


def test_a_plan_short_of_the_fleet_gets_a_last_wave_of_everything() -> None:
    """[1] on 5 hosts becomes [1, 5]."""
    assert wave_sizes([1], 5) == [1, 5]


def test_waves_that_add_no_host_are_dropped() -> None:
    """On 2 hosts, [1, 10%, 50%, 100%] is [1, 2]."""
    assert wave_sizes([1, "10%", "50%", "100%"], 2) == [1, 2]


def test_plan_assigns_each_host_once_in_fleet_order() -> None:
    """Every host appears in exactly one wave."""
    hosts = [HostRef(name=f"h{i}") for i in range(5)]
    waves = plan_waves(hosts, [1, "50%", "100%"])
    assert [[h.name for h in w] for w in waves] == [["h0"], ["h1", "h2"], ["h3", "h4"]]


def test_the_holdback_is_the_last_host_of_the_last_wave_and_only_with_a_guard() -> None:
    """With a guard period the last host stays back (switched last); an emptied wave goes."""
    hosts = [HostRef(f"h{i}") for i in range(1, 4)]
    waves = plan_waves(hosts, [1, "100%"])
    plan, held = with_holdback(waves, guard_s=60, holdback=True)
    assert ([[h.name for h in w] for w in plan], held) == ([["h1"], ["h2"]], hosts[2])
    plan, held = with_holdback(plan_waves(hosts, [1, 2, "100%"]), guard_s=60, holdback=True)
    assert ([[h.name for h in w] for w in plan], held) == ([["h1"], ["h2"]], hosts[2])
    assert with_holdback(waves, guard_s=0, holdback=True)[1] is None
    assert with_holdback(waves, guard_s=60, holdback=False)[1] is None
    assert with_holdback([[hosts[0]]], guard_s=60, holdback=True) == ([[hosts[0]]], None)
