"""The SSH driver against a real sshd on 127.0.0.1.

The "service" is `python3 -m http.server` started in the current release folder with a
pidfile (start_command) and killed by stop_command, so the driver contract is proven without
systemd. Assertions read the host's view: the files and links under `base`, what answers
on the app port, and sshd's own log.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sshd_server import Sshd

from immunity.domain import HostRef
from immunity.errors import HostError, PreflightError
from immunity.hosts.base import HostDriver
from immunity.hosts.ssh import SshDriver, SshSettings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

START = (
    "cd {current} && (setsid python3 -m http.server {port} --bind 127.0.0.1 "
    "</dev/null >>{base}/app.log 2>&1 & echo $! > {base}/app.pid)"
)
# a killed server is reparented to a PID 1 that may never reap it: a zombie counts as gone
_ALIVE = "kill -0 $pid 2>/dev/null && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null"
STOP = (
    "if [ -f {base}/app.pid ]; then pid=$(cat {base}/app.pid); kill $pid 2>/dev/null; "
    f"n=0; while {_ALIVE} && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done; "
    "rm -f {base}/app.pid; fi"
)
STATUS = f"test -f {{base}}/app.pid && pid=$(cat {{base}}/app.pid) && {_ALIVE}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lab:
    """One test's app folder, packages and driver against the module's sshd."""

    def __init__(self, sshd: Sshd, tmp: Path, **overrides: Any) -> None:
        self.sshd = sshd
        self.base = tmp / "app"
        self.base.mkdir()
        self.packages = tmp / "pkgs dir"  # a space: proves the quoting
        self.host = HostRef(name="box1", address="127.0.0.1", port=_free_port())
        fields: dict[str, Any] = {
            "user": sshd.user,
            "port": sshd.port,
            "known_hosts": str(sshd.known_hosts),
            "client_keys": [str(sshd.client_key)],
            "base": str(self.base),
            "package_source": str(self.packages / "{release}"),
            "start_command": START,
            "stop_command": STOP,
            "status_command": STATUS,
        }
        fields.update(overrides)
        self.driver = SshDriver(SshSettings.model_validate(fields), base_dir=tmp)

    def package(self, *releases: str) -> None:
        for r in releases:
            (self.packages / r / "static").mkdir(parents=True)
            (self.packages / r / "index.html").write_text(f"release {r}\n")
            (self.packages / r / "static" / "app.css").write_text("body{}")

    async def serves(self, deadline: float = 10.0) -> str:
        """The body the app port answers with, polled until it answers."""
        url = f"http://127.0.0.1:{self.host.port}/index.html"
        async with httpx.AsyncClient(timeout=1.0) as client:
            with anyio.fail_after(deadline):
                while True:
                    try:
                        return (await client.get(url)).text
                    except httpx.TransportError:
                        await anyio.sleep(0.05)

    async def port_closed(self) -> bool:
        try:
            stream = await anyio.connect_tcp("127.0.0.1", self.host.port)
        except OSError:
            return True
        await stream.aclose()
        return False

    async def link(self, name: str) -> str | None:
        p = anyio.Path(self.base / name)
        return str(await p.readlink()) if await p.is_symlink() else None

    async def read(self, *parts: str) -> str:
        return await anyio.Path(self.base.joinpath(*parts)).read_text()

    async def release_dirs(self) -> list[str]:
        return sorted([p.name async for p in anyio.Path(self.base / "releases").iterdir()])

    async def aclose(self) -> None:
        with anyio.fail_after(30):
            await self.driver.stop(self.host)
            await self.driver.aclose()


@pytest.fixture
async def lab(sshd: Sshd, tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(sshd, tmp_path)
    try:
        yield lab
    finally:
        await lab.aclose()


async def test_driver_satisfies_the_host_driver_protocol(lab: Lab) -> None:
    """SshDriver is a HostDriver (runtime-checkable Protocol)."""
    assert isinstance(lab.driver, HostDriver)


async def test_install_copies_the_package_into_releases_and_lists_it(lab: Lab) -> None:
    """install puts every file of the package under releases/<name>/, with no partial folder left."""
    lab.package("r1")
    await lab.driver.preflight([lab.host])
    await lab.driver.check_release("r1")
    await lab.driver.install(lab.host, "r1")
    assert await lab.read("releases", "r1", "index.html") == "release r1\n"
    assert await lab.read("releases", "r1", "static", "app.css") == "body{}"
    assert await lab.release_dirs() == ["r1"]
    assert await lab.driver.installed_releases(lab.host) == ["r1"]
    assert await lab.driver.active_release(lab.host) is None


async def test_install_twice_is_a_no_op(lab: Lab) -> None:
    """A second install of the same release leaves the installed folder untouched."""
    lab.package("r1")
    await lab.driver.install(lab.host, "r1")
    await anyio.Path(lab.base / "releases" / "r1" / "local-edit").write_text("kept")
    await lab.driver.install(lab.host, "r1")
    assert await lab.read("releases", "r1", "local-edit") == "kept"
    assert await lab.release_dirs() == ["r1"]


async def test_start_serves_the_release_behind_current(lab: Lab) -> None:
    """start points current at the release and the app port serves it; active_release agrees."""
    lab.package("r1")
    await lab.driver.install(lab.host, "r1")
    await lab.driver.start(lab.host, "r1")
    assert await lab.serves() == "release r1\n"
    assert await lab.link("current") == "releases/r1"
    assert await lab.driver.active_release(lab.host) == "r1"


async def test_start_twice_keeps_the_same_process(lab: Lab) -> None:
    """start of the already active release does not restart it."""
    lab.package("r1")
    await lab.driver.install(lab.host, "r1")
    await lab.driver.start(lab.host, "r1")
    pid = await lab.read("app.pid")
    await lab.driver.start(lab.host, "r1")
    assert await lab.read("app.pid") == pid
    assert await lab.serves() == "release r1\n"


async def test_stop_leaves_nothing_serving_and_is_idempotent(lab: Lab) -> None:
    """After stop the app port refuses connections, active_release is None, and a second stop is fine."""
    lab.package("r1")
    await lab.driver.install(lab.host, "r1")
    await lab.driver.start(lab.host, "r1")
    await lab.serves()
    await lab.driver.stop(lab.host)
    assert await lab.port_closed()
    assert await lab.driver.active_release(lab.host) is None
    await lab.driver.stop(lab.host)
    assert await lab.link("current") == "releases/r1"


async def test_switch_between_two_releases_and_back(lab: Lab) -> None:
    """Switching r1 -> r2 -> r1 serves each in turn and keeps `previous` pointing at the fallback."""
    lab.package("r1", "r2")
    for r in ("r1", "r2"):
        await lab.driver.install(lab.host, r)
    await lab.driver.start(lab.host, "r1")
    assert await lab.serves() == "release r1\n"
    await lab.driver.stop(lab.host)
    await lab.driver.start(lab.host, "r2")
    assert await lab.serves() == "release r2\n"
    assert (await lab.link("current"), await lab.link("previous")) == ("releases/r2", "releases/r1")
    # the revert: start the old one while the new one still runs
    await lab.driver.start(lab.host, "r1")
    assert await lab.serves() == "release r1\n"
    assert (await lab.link("current"), await lab.link("previous")) == ("releases/r1", "releases/r2")
    assert await lab.driver.active_release(lab.host) == "r1"
    assert [p async for p in anyio.Path(lab.base).glob(".current.*")] == []


async def test_start_of_a_release_not_installed_is_a_host_error(lab: Lab) -> None:
    """start refuses a release that is not under releases/ and leaves current alone."""
    with pytest.raises(HostError, match="not installed"):
        await lab.driver.start(lab.host, "nope")
    assert await lab.link("current") is None


async def test_cleanup_keeps_current_previous_and_the_new_release(
    sshd: Sshd, tmp_path: Path
) -> None:
    """With keep_releases 3, installing a 4th removes the oldest that is neither current nor previous."""
    lab = Lab(sshd, tmp_path, keep_releases=3)
    lab.package("r1", "r2", "r3", "r4")
    try:
        for i, r in enumerate(("r1", "r2", "r3")):
            await lab.driver.install(lab.host, r)
            # distinct install times, oldest first (mtime is the install order)
            os.utime(lab.base / "releases" / r, (1_700_000_000 + i, 1_700_000_000 + i))
        await lab.driver.start(lab.host, "r1")
        await lab.driver.start(lab.host, "r2")
        await lab.driver.install(lab.host, "r4")
        assert await lab.release_dirs() == ["r1", "r2", "r4"]
    finally:
        await lab.aclose()


async def test_install_command_runs_on_the_host_with_quoted_paths(
    sshd: Sshd, tmp_path: Path
) -> None:
    """A custom install_command gets {source} and {dest} shell-quoted (the package path has a space)."""
    lab = Lab(
        sshd, tmp_path, install_command="cp -R {source}/. {dest}/ && echo {release} > {dest}/NAME"
    )
    lab.package("r1")
    try:
        await lab.driver.install(lab.host, "r1")
        assert await lab.read("releases", "r1", "NAME") == "r1\n"
        assert await lab.read("releases", "r1", "index.html") == "release r1\n"
    finally:
        await lab.aclose()


async def test_failing_command_is_a_host_error_with_its_stderr(sshd: Sshd, tmp_path: Path) -> None:
    """A start_command that exits non-zero raises HostError carrying the exit code and stderr."""
    lab = Lab(
        sshd,
        tmp_path,
        start_command="echo unit {service} not found >&2; exit 5",
        service="shop.service",
    )
    lab.package("r1")
    try:
        await lab.driver.install(lab.host, "r1")
        with pytest.raises(HostError) as info:
            await lab.driver.start(lab.host, "r1")
        assert "exited 5: unit shop.service not found" in info.value.message
    finally:
        await lab.aclose()


async def test_unknown_host_key_is_rejected_naming_known_hosts(sshd: Sshd, tmp_path: Path) -> None:
    """A known_hosts file with another key for the host makes preflight fail, naming the file."""
    other = tmp_path / "known_hosts_other"
    algo, key = (sshd.stranger_key.parent / "stranger_ed25519.pub").read_text().split()[:2]
    other.write_text(f"[127.0.0.1]:{sshd.port} {algo} {key}\n")
    lab = Lab(sshd, tmp_path, known_hosts=str(other))
    with pytest.raises(PreflightError) as info:
        await lab.driver.preflight([lab.host])
    assert f"is not trusted by known_hosts {other}" in info.value.message
    assert info.value.hint is not None and "ssh-keyscan" in info.value.hint
    await lab.driver.aclose()


async def test_host_missing_from_known_hosts_is_rejected(sshd: Sshd, tmp_path: Path) -> None:
    """An empty known_hosts never trusts on first use."""
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    lab = Lab(sshd, tmp_path, known_hosts=str(empty))
    with pytest.raises(HostError, match="not trusted by known_hosts"):
        await lab.driver.installed_releases(lab.host)
    await lab.driver.aclose()


async def test_key_not_authorized_is_a_login_error(sshd: Sshd, tmp_path: Path) -> None:
    """A client key sshd does not accept is reported as a refused login for the user."""
    lab = Lab(sshd, tmp_path, client_keys=[str(sshd.stranger_key)])
    with pytest.raises(PreflightError, match=f"refused the login of {sshd.user}"):
        await lab.driver.preflight([lab.host])
    await lab.driver.aclose()


async def test_missing_base_folder_is_a_preflight_error(sshd: Sshd, tmp_path: Path) -> None:
    """preflight rejects a base folder that does not exist on the host."""
    lab = Lab(sshd, tmp_path, base=str(tmp_path / "nowhere"))
    with pytest.raises(PreflightError, match="missing or not writable"):
        await lab.driver.preflight([lab.host])
    await lab.driver.aclose()


async def test_closed_port_is_a_preflight_error(sshd: Sshd, tmp_path: Path) -> None:
    """Nothing listening on the SSH port: preflight says it cannot reach host:port."""
    port = _free_port()
    lab = Lab(sshd, tmp_path, port=port)
    with pytest.raises(PreflightError, match=f"cannot reach SSH on 127.0.0.1:{port}"):
        await lab.driver.preflight([lab.host])


async def test_one_connection_serves_many_calls(sshd: Sshd, tmp_path: Path) -> None:
    """Calls to one host reuse one SSH connection until aclose (sshd logs one login)."""
    lab = Lab(sshd, tmp_path)
    lab.package("r1")
    before = sshd.log_text().count("Accepted publickey")
    with anyio.fail_after(30):
        await lab.driver.preflight([lab.host])
        await lab.driver.install(lab.host, "r1")
        await lab.driver.start(lab.host, "r1")
        await lab.driver.active_release(lab.host)
        await lab.aclose()
    assert sshd.log_text().count("Accepted publickey") - before == 1
