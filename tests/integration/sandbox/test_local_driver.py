"""LocalDriver against real sample-app processes; assertions read the process and its answers.

What every host driver promises (install, switch, stop, idempotence, an unknown host) is
checked by the HostDriver contract in test_local_contract.py; these are the local driver's
own: one process per host, replaced on a switch, refusals and preflight."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import psutil
import pytest

from immunity.domain import HostRef
from immunity.errors import HostError, PreflightError
from immunity.hosts import ReadDeadline
from immunity.hosts.local import LocalDriver, read_pid
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


async def test_a_read_on_a_hung_disk_is_cut_off_by_the_read_deadline(
    local: tuple[LocalDriver, HostRef], tmp_path: Path
) -> None:
    """h1's pid file is a FIFO nobody writes to: opening it blocks, as a read on a hung disk
    or a stalled mount would. Behind the engine's ReadDeadline (1 s here), `active_release`
    and `installed_releases` end at the deadline with a HostError naming h1, and the event
    loop keeps running meanwhile. (The driver read files on the event loop: the deadline
    could not fire and the call returned only when a writer came, here after 8 s.)"""
    driver, host = local
    fifo = tmp_path / "hosts" / "h1" / "app.pid"
    os.mkfifo(fifo)
    stop = threading.Event()

    def writer() -> None:  # unblocks the reader in the end (the old code's call, too)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    bounded = ReadDeadline(driver, adapter="local", limit_s=1)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.05)
            ticks += 1

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            t0 = time.monotonic()
            with pytest.raises(HostError) as info:
                await bounded.active_release(host)
            took = time.monotonic() - t0
            tg.cancel_scope.cancel()
        assert took < 3, f"the read took {took:.1f} s past a 1 s deadline"
        assert "host h1 (127.0.0.1) did not answer within 1 s" in info.value.message
        assert ticks >= 10, "the event loop was blocked during the read"
    finally:
        stop.set()
        t.join(10)
        fifo.unlink()
