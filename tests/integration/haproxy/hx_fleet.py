"""A real two-host sandbox fleet (HAProxy + two sample-app processes) for the HAProxy tests.

Fails, rather than skips, when haproxy is not installed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from immunity.clients.haproxy import ServerState, parse_servers_state, parse_stat_csv
from immunity.domain import HostRef
from immunity.sandbox import fleet


class Fleet:
    """The sandbox plus raw runtime-API reads of HAProxy's own view (not the adapter's)."""

    def __init__(self, info: fleet.SandboxInfo) -> None:
        self.info = info
        self.dir = info.dir
        self.hosts = [HostRef(n, "127.0.0.1", p) for n, p in info.host_ports.items()]

    def raw(self, line: str) -> str:
        return fleet.haproxy_command(self.dir, line)

    def server_state(self, name: str) -> ServerState:
        rows = {s.name: s for s in parse_servers_state(self.raw("show servers state be_app"))}
        return rows[name]

    def status(self, name: str) -> str:
        rows = {r.name: r for r in parse_stat_csv(self.raw("show stat be_app 4 -1"))}
        return rows[name].status

    def scur(self, name: str) -> int:
        rows = {r.name: r for r in parse_stat_csv(self.raw("show stat be_app 4 -1"))}
        return rows[name].scur

    def reset(self, timeout: float = 10.0) -> None:
        """Every server `ready` and UP again."""
        for h in self.hosts:
            self.raw(f"set server be_app/{h.name} state ready")
        deadline = time.monotonic() + timeout
        while not all(self.status(h.name) == "UP" for h in self.hosts):
            assert time.monotonic() < deadline, {h.name: self.status(h.name) for h in self.hosts}
            time.sleep(0.05)


@pytest.fixture(scope="module")
def sandbox_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    d: Path = tmp_path_factory.mktemp("hx") / "fleet"
    info = fleet.create_sandbox(d, hosts=2)
    try:
        yield Fleet(info)
    finally:
        fleet.teardown(d)


@pytest.fixture
def hx(sandbox_fleet: Fleet) -> Iterator[Fleet]:
    """The module's fleet with every server back in the pool before and after the test."""
    sandbox_fleet.reset()
    yield sandbox_fleet
    sandbox_fleet.reset()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
