"""`SshDriver` held to the HostDriver contract against the module's real sshd. The host's
own view is what answers on the app port (`python3 -m http.server` in the release folder
behind `current`, as in test_ssh_driver.py)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from sshd_server import Sshd
from test_ssh_driver import Lab

from immunity.domain import HostRef
from immunity.hosts.ssh import SshDriver
from immunity.testing.contracts import HostDriverContract, HostHarness

pytestmark = pytest.mark.timeout(90)


class SshHarness(HostHarness):
    def __init__(self, lab: Lab, driver: SshDriver) -> None:
        self.lab = lab
        self.driver = driver
        self.host = lab.host
        self.old, self.new, self.no_package = "r1", "r2", "r9"
        # sshd listens on 127.0.0.1 only: nothing answers SSH on 127.0.0.2
        self.unreachable = HostRef(name="box9", address="127.0.0.2", port=lab.host.port)

    async def serving(self) -> str | None:
        """The release named by the page the app port answers now; None when refused."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                body = (await client.get(f"{self.host.base_url}/index.html")).text
        except httpx.TransportError:
            return None
        return body.removeprefix("release ").strip() or None


def fresh_driver(lab: Lab) -> SshDriver:
    """A driver of its own for each case: asyncssh connections belong to one event loop,
    and each case runs in its own."""
    return SshDriver(lab.driver.settings, base_dir=lab.base.parent)


@pytest.fixture(scope="module")
def module_lab(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One app folder for the module; each case gets it back serving r1 with r2 not
    installed (`harness`)."""
    lab = Lab(sshd, tmp_path_factory.mktemp("ssh-contract"))
    lab.package("r1", "r2")
    yield lab

    async def stop() -> None:
        driver = fresh_driver(lab)
        with anyio.fail_after(30):
            await driver.stop(lab.host)
            await driver.aclose()

    anyio.run(stop)


class TestSshDriver(HostDriverContract):
    @pytest.fixture
    async def harness(self, module_lab: Lab) -> AsyncIterator[HostHarness]:
        lab = module_lab
        h = SshHarness(lab, fresh_driver(lab))
        with anyio.fail_after(30):
            if await h.serving() != "r1":
                await h.driver.install(lab.host, "r1")
                await h.driver.stop(lab.host)
                await h.driver.start(lab.host, "r1")
                assert await lab.serves() == "release r1\n"
        shutil.rmtree(lab.base / "releases" / "r2", ignore_errors=True)
        try:
            yield h
        finally:
            await h.driver.aclose()
