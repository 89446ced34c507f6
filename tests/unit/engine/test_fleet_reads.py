"""`Fleet.observe`, the one read of the whole fleet (status, preflight, the run's start, the
immune response, rollback), asks up to READ_CONCURRENCY drivers at once, and still reports
errors in host order."""

from __future__ import annotations

from typing import Any

import pytest

from immunity.domain import LbState
from immunity.engine import ops
from immunity.engine.context import READ_CONCURRENCY, Sighting
from immunity.errors import HostError
from immunity.testing import Latencies, VirtualClock, memory_fleet


def test_a_thousand_hosts_are_read_in_about_a_thousand_over_the_concurrency_reads() -> None:
    """1,000 hosts at 1 ms per driver read: about 1000/64 ms of virtual time, not 1 s; every
    host's release is there, keyed in host order."""
    clock = VirtualClock()
    fleet, world = memory_fleet(1000, clock=clock, latencies=Latencies.realistic())

    async def main() -> tuple[dict[str, str | None], float]:
        t0 = clock.monotonic()
        got = (await fleet.observe()).actives
        return dict(got), clock.monotonic() - t0

    got, took = clock.run(main)
    assert list(got) == [f"h{i}" for i in range(1, 1001)]
    assert set(got.values()) == {"v1"}
    assert took < 2 * 1000 / READ_CONCURRENCY * 0.001 + 0.005, took
    assert world.calls >= 1000


@pytest.mark.parametrize("lenient", [False, True])
def test_errors_come_in_host_order_or_read_as_none_when_lenient(lenient: bool) -> None:
    """h7 and h3 do not answer: the error raised names h3 (the first in the fleet's order);
    with `lenient` both read as None with nothing installed and their error kept, and the
    others as their release, installed releases and pool state."""
    clock = VirtualClock()
    fleet, world = memory_fleet(10, clock=clock, latencies=Latencies.realistic())
    world.fail[("h7", "read")] = "ssh: connection refused"
    world.fail[("h3", "read")] = "ssh: connection refused"

    async def main() -> Sighting:
        return await fleet.observe(lenient=lenient, installed=True)

    if not lenient:
        with pytest.raises(HostError, match="h3"):
            clock.run(main)
        return
    seen = clock.run(main)
    assert [n for n, v in seen.actives.items() if v is None] == ["h3", "h7"]
    assert sum(v == "v1" for v in seen.actives.values()) == 8
    assert ["h3", "h7"] == sorted(seen.errors)
    assert "connection refused" in seen.errors["h3"]
    assert ([], ["v1"]) == (seen.installed["h3"], seen.installed["h1"])
    assert (LbState.SERVING, None) == seen.states["h7"]


def test_status_reads_the_fleet_concurrently_through_observe() -> None:
    """`status` on 1,000 hosts at 1 ms per driver read (active and installed releases) takes
    about 2 × 1000/64 ms of virtual time, not 2 s, and reports a host whose driver does not
    answer as running nothing, with its error."""
    clock = VirtualClock()
    fleet, world = memory_fleet(1000, clock=clock, latencies=Latencies.realistic())
    world.fail[("h5", "read")] = "ssh: connection refused"

    async def main() -> tuple[dict[str, Any], float]:
        t0 = clock.monotonic()
        got = await ops.status(fleet)
        return got, clock.monotonic() - t0

    got, took = clock.run(main)
    assert took < 3 * 2 * 1000 / READ_CONCURRENCY * 0.001 + 0.05, took
    row = got["hosts"][4]
    assert ("h5", None, []) == (row["name"], row["active_release"], row["installed_releases"])
    assert "connection refused" in row["error"]
    assert {"v1"} == {r["active_release"] for r in got["hosts"] if r["name"] != "h5"}
