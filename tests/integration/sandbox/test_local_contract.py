"""`LocalDriver` (the sandbox's host driver) held to the HostDriver contract against real
sample-app processes on 127.0.0.1. The host's own view is what answers on its port: the
`X-Immunity-Release` header of `/health`, read without the driver; None when refused."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from immunity.domain import HostRef
from immunity.hosts.local import LocalDriver
from immunity.sandbox.fleet import add_release, free_ports
from immunity.testing.contracts import HostDriverContract, HostHarness

pytestmark = pytest.mark.timeout(90)


@dataclass
class Lab:
    base: Path
    host: HostRef

    def driver(self) -> LocalDriver:
        """A driver of its own for each case (each case runs in its own event loop)."""
        return LocalDriver(LocalDriver.Settings(), base_dir=self.base)


class LocalHarness(HostHarness):
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.driver = lab.driver()
        self.host = lab.host
        self.old, self.new, self.no_package = "r1", "r2", "r9"
        # no folder hosts/h9: the sandbox has no such host (and nothing listens on its port)
        self.unreachable = HostRef(name="h9", address="127.0.0.1", port=free_ports(1)[0])

    async def serving(self) -> str | None:
        """The release the app on the host's port says it is; None when the port refuses."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                r = await client.get(f"{self.host.base_url}/health")
        except httpx.TransportError:
            return None
        assert r.headers["X-Immunity-Host"] == self.host.name
        return r.headers["X-Immunity-Release"]


@pytest.fixture(scope="module")
def module_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One sandbox folder for the module: releases r1 and r2 in the feed, host h1; each case
    gets h1 back serving r1 with r2 not installed (`harness`)."""
    base = tmp_path_factory.mktemp("local-contract")
    add_release(base, "r1")
    add_release(base, "r2")
    (base / "hosts" / "h1").mkdir(parents=True)
    lab = Lab(base, HostRef(name="h1", address="127.0.0.1", port=free_ports(1)[0]))
    yield lab

    async def stop() -> None:
        with anyio.fail_after(30):
            await lab.driver().stop(lab.host)

    anyio.run(stop)


class TestLocalDriver(HostDriverContract):
    @pytest.fixture
    async def harness(self, module_lab: Lab) -> AsyncIterator[HostHarness]:
        lab = module_lab
        h = LocalHarness(lab)
        with anyio.fail_after(30):
            if await h.serving() != "r1":
                await h.driver.install(lab.host, "r1")
                await h.driver.stop(lab.host)
                await h.driver.start(lab.host, "r1")
                assert await h.serving() == "r1"
        shutil.rmtree(lab.base / "hosts" / "h1" / "releases" / "r2", ignore_errors=True)
        try:
            yield h
        finally:
            await h.driver.aclose()
