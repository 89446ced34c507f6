"""The `HostDriver` contract: what the engine relies on from a host.

* `active_release` is what the host itself serves; `installed_releases` includes it.
* `install` adds a release without touching the one that serves.
* A switched host (stop, start the other release) reports and serves the new release; a
  switch back restores the old one.
* `stop` is done when nothing serves on the host.
* Every step is idempotent.
* `check_release` of a release without a package raises `PreflightError`; a host that
  cannot be reached is a `HostError` naming it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import anyio
import pytest

from immunity.domain import HostRef
from immunity.errors import HostError, PreflightError
from immunity.hosts.base import HostDriver
from immunity.testing.contracts.base import Contract, eventually

START_DEADLINE_S = 10.0
"""How long a started release may take to answer (a process starting on a loaded machine)."""
STEP_DEADLINE_S = 20.0


class HostHarness(ABC):
    """The driver under test and the host's own view. When a case starts, `host` runs
    `old` (installed and serving); `new` has a package and is not installed."""

    driver: HostDriver
    host: HostRef
    old: str
    new: str
    no_package: str
    """A release name with no package anywhere."""
    unreachable: HostRef
    """A host the driver cannot reach (nothing listens, or no such host)."""

    async def prepare(self) -> None:
        """What the engine does before a release is checked (the driver's `preflight`)."""
        preflight = getattr(self.driver, "preflight", None)
        if preflight is not None:
            await preflight([self.host])

    @abstractmethod
    async def serving(self) -> str | None:
        """The release the host itself serves now, read without the driver (what answers on
        its port, the started site, the in-memory world); None when nothing serves."""


class HostDriverContract(Contract):
    """Subclass with a `harness` fixture returning a `HostHarness`."""

    async def _switch(self, h: HostHarness, release: str) -> None:
        with anyio.fail_after(STEP_DEADLINE_S):
            await h.driver.install(h.host, release)
            await h.driver.stop(h.host)
            await h.driver.start(h.host, release)

    async def _serves(self, h: HostHarness, release: str) -> None:
        async def check() -> bool:
            return await h.serving() == release

        await eventually(check, START_DEADLINE_S, f"{h.host.name} serves {release}")

    async def test_is_a_host_driver(self, harness: HostHarness) -> None:
        """The adapter satisfies the role's Protocol."""
        assert isinstance(harness.driver, HostDriver)

    async def test_active_release_is_what_the_host_serves(self, harness: HostHarness) -> None:
        """`active_release` names the release the host serves; it is installed."""
        assert await harness.serving() == harness.old
        assert await harness.driver.active_release(harness.host) == harness.old
        assert harness.old in await harness.driver.installed_releases(harness.host)

    async def test_install_adds_a_release_without_touching_the_active_one(
        self, harness: HostHarness
    ) -> None:
        """After `install`, both releases are installed (oldest first) and the old one still
        serves."""
        with anyio.fail_after(STEP_DEADLINE_S):
            await harness.driver.install(harness.host, harness.new)
        installed = await harness.driver.installed_releases(harness.host)
        assert harness.old in installed and harness.new in installed
        assert installed.index(harness.old) < installed.index(harness.new)
        assert await harness.driver.active_release(harness.host) == harness.old
        assert await harness.serving() == harness.old

    async def test_a_switched_host_reports_and_serves_the_new_release(
        self, harness: HostHarness
    ) -> None:
        """install, stop, start: the host serves the new release and says so; a switch back
        serves the old one again (the revert)."""
        await self._switch(harness, harness.new)
        await self._serves(harness, harness.new)
        assert await harness.driver.active_release(harness.host) == harness.new
        await self._switch(harness, harness.old)
        await self._serves(harness, harness.old)
        assert await harness.driver.active_release(harness.host) == harness.old

    async def test_stop_leaves_nothing_serving(self, harness: HostHarness) -> None:
        """Once `stop` returned, nothing serves on the host and no release is active."""
        with anyio.fail_after(STEP_DEADLINE_S):
            await harness.driver.stop(harness.host)
        assert await harness.serving() is None
        assert await harness.driver.active_release(harness.host) is None

    async def test_every_step_is_idempotent(self, harness: HostHarness) -> None:
        """Each step run twice (as a resumed switch does) ends as if run once."""
        d, host = harness.driver, harness.host
        with anyio.fail_after(STEP_DEADLINE_S):
            await d.install(host, harness.new)
            await d.install(host, harness.new)
            await d.stop(host)
            await d.stop(host)
        assert await harness.serving() is None
        with anyio.fail_after(STEP_DEADLINE_S):
            await d.start(host, harness.new)
            await d.start(host, harness.new)
        await self._serves(harness, harness.new)
        assert await d.active_release(host) == harness.new
        installed = await d.installed_releases(host)
        assert installed.count(harness.new) == 1

    async def test_a_release_without_a_package_fails_check_release(
        self, harness: HostHarness
    ) -> None:
        """`check_release` raises `PreflightError` naming the release; a packaged one passes."""
        await harness.prepare()
        await harness.driver.check_release(harness.new)
        with pytest.raises(PreflightError) as info:
            await harness.driver.check_release(harness.no_package)
        assert harness.no_package in info.value.message

    async def test_an_unreachable_host_is_a_host_error_naming_it(
        self, harness: HostHarness
    ) -> None:
        """Any call on a host the driver cannot reach raises `HostError` naming the host,
        within a short deadline."""
        u = harness.unreachable
        with pytest.raises(HostError) as info, anyio.fail_after(STEP_DEADLINE_S):
            await harness.driver.active_release(u)
        assert u.name in info.value.message or (u.address or "") in info.value.message
        assert info.value.context.get("host") == u.name
