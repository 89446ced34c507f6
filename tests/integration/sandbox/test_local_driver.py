"""LocalDriver against real sample-app processes; assertions read the process and its answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from immunity.domain import HostRef
from immunity.errors import HostError, PreflightError
from immunity.hosts.local import LocalDriver, port_open, read_pid
from immunity.sandbox.fleet import add_release, free_ports

pytestmark = pytest.mark.anyio


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[tuple[LocalDriver, HostRef]]:
    """A host folder h1 with no release installed, releases v1 and v2 in the feed."""
    add_release(tmp_path, "v1")
    add_release(tmp_path, "v2", latency_ms=1)
    (tmp_path / "hosts" / "h1").mkdir(parents=True)
    driver = LocalDriver(LocalDriver.Settings(root="hosts", releases="releases"), base_dir=tmp_path)
    host = HostRef("h1", "127.0.0.1", free_ports(1)[0])
    try:
        yield driver, host
    finally:
        await driver.stop(host)
        await driver.aclose()


async def _release_served(host: HostRef) -> str:
    async with aiohttp.ClientSession() as s, s.get(host.base_url + "/health") as resp:
        assert resp.headers["X-Immunity-Host"] == host.name
        return resp.headers["X-Immunity-Release"]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_install_copies_the_manifest_once(
    local: tuple[LocalDriver, HostRef], tmp_path: Path
) -> None:
    """install() puts the release in the host folder; a second install is a no-op."""
    driver, host = local
    await driver.install(host, "v1")
    await driver.install(host, "v1")
    assert await driver.installed_releases(host) == ["v1"]
    assert (tmp_path / "hosts/h1/releases/v1/release.json").is_file()


async def test_start_serves_the_release_and_active_release_reads_it(
    local: tuple[LocalDriver, HostRef],
) -> None:
    """start() launches the app on the host's port; it answers as that release."""
    driver, host = local
    await driver.install(host, "v1")
    await driver.start(host, "v1")
    assert await _release_served(host) == "v1"
    assert await driver.active_release(host) == "v1"


async def test_start_another_release_replaces_the_process(
    local: tuple[LocalDriver, HostRef], tmp_path: Path
) -> None:
    """Starting v2 stops v1's process and serves v2; starting v2 again keeps the process."""
    driver, host = local
    for r in ("v1", "v2"):
        await driver.install(host, r)
    await driver.start(host, "v1")
    old = read_pid(tmp_path / "hosts/h1/app.pid")
    await driver.start(host, "v2")
    new = read_pid(tmp_path / "hosts/h1/app.pid")
    assert old is not None and new is not None and old != new
    assert _gone(old)
    assert await _release_served(host) == "v2"
    await driver.start(host, "v2")
    assert new == read_pid(tmp_path / "hosts/h1/app.pid")


async def test_stop_closes_the_port_and_is_idempotent(
    local: tuple[LocalDriver, HostRef], tmp_path: Path
) -> None:
    """After stop() nothing listens on the port, the process is gone, no release is active."""
    driver, host = local
    await driver.install(host, "v1")
    await driver.start(host, "v1")
    pid = read_pid(tmp_path / "hosts/h1/app.pid")
    assert pid is not None
    await driver.stop(host)
    await driver.stop(host)
    assert not port_open(host.address, host.port)
    assert _gone(pid)
    assert None is await driver.active_release(host)


async def test_unknown_release_is_refused(local: tuple[LocalDriver, HostRef]) -> None:
    """An unknown release fails install (HostError) and check_release (PreflightError with a hint)."""
    driver, host = local
    with pytest.raises(HostError, match="v9"):
        await driver.install(host, "v9")
    with pytest.raises(PreflightError, match="unknown release v9, known: v1, v2") as info:
        await driver.check_release("v9")
    assert "immunity sandbox release" in (info.value.hint or "")
    await driver.check_release("v2")


async def test_start_of_a_release_not_installed_is_a_host_error(
    local: tuple[LocalDriver, HostRef],
) -> None:
    """start() refuses a release that was never installed on the host."""
    driver, host = local
    with pytest.raises(HostError, match="not installed"):
        await driver.start(host, "v2")


async def test_preflight_names_hosts_not_answering(local: tuple[LocalDriver, HostRef]) -> None:
    """preflight() fails for a stopped host and passes once it runs."""
    driver, host = local
    with pytest.raises(PreflightError, match="h1"):
        await driver.preflight([host])
    await driver.install(host, "v1")
    await driver.start(host, "v1")
    await driver.preflight([host])
