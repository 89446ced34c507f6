"""Reading every host's active release (preflight, the start's and the end's look at the
fleet) asks up to READ_CONCURRENCY drivers at once, and still reports errors in host order."""

from __future__ import annotations

import pytest

from immunity.engine.context import READ_CONCURRENCY
from immunity.errors import HostError
from immunity.testing import Latencies, VirtualClock, memory_fleet


def test_a_thousand_hosts_are_read_in_about_a_thousand_over_the_concurrency_reads() -> None:
    """1,000 hosts at 1 ms per driver read: about 1000/64 ms of virtual time, not 1 s; every
    host's release is there, keyed in host order."""
    clock = VirtualClock()
    fleet, world = memory_fleet(1000, clock=clock, latencies=Latencies.realistic())

    async def main() -> tuple[dict[str, str | None], float]:
        t0 = clock.monotonic()
        got = await fleet.active_releases()
        return got, clock.monotonic() - t0

    got, took = clock.run(main)
    assert list(got) == [f"h{i}" for i in range(1, 1001)]
    assert set(got.values()) == {"v1"}
    assert took < 2 * 1000 / READ_CONCURRENCY * 0.001 + 0.005, took
    assert world.calls >= 1000


@pytest.mark.parametrize("lenient", [False, True])
def test_errors_come_in_host_order_or_read_as_none_when_lenient(lenient: bool) -> None:
    """h7 and h3 do not answer: the error raised names h3 (the first in the fleet's order);
    with `lenient` both read as None and the others as their release."""
    clock = VirtualClock()
    fleet, world = memory_fleet(10, clock=clock, latencies=Latencies.realistic())
    world.fail[("h7", "read")] = "ssh: connection refused"
    world.fail[("h3", "read")] = "ssh: connection refused"

    async def main() -> dict[str, str | None]:
        return await fleet.active_releases(lenient=lenient)

    if not lenient:
        with pytest.raises(HostError, match="h3"):
            clock.run(main)
        return
    got = clock.run(main)
    assert [n for n, v in got.items() if v is None] == ["h3", "h7"]
    assert sum(v == "v1" for v in got.values()) == 8
