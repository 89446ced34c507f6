"""Local host driver: each host is a folder on this machine running one sample-app process.

Shape (the same as an IIS box with one site per release, one started)::

    <root>/<host>/releases/<name>/release.json   installed releases (a copy of the manifest)
    <root>/<host>/active                          name of the active release
    <root>/<host>/app.pid                         pid of the running app process
    <root>/<host>/app.log                         the app's stdout/stderr
    <releases>/<name>.json                        release manifests ("the package feed")

Running means one process of ``python -m immunity.sandbox.app`` listening on the host's
``address:port``. The process is started detached (own session, output to app.log) so it
outlives the orchestrator; it is identified by pid *and* command line, so a recycled pid is
never signalled. Assumes POSIX signals and that the host's port is free for the app.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import anyio
import psutil
from pydantic import BaseModel, ConfigDict

from immunity.config import resolve_path
from immunity.domain import HostRef
from immunity.errors import HostError, PreflightError
from immunity.hosts.deadline import off_loop

ADAPTER = "local"
APP_MODULE = "immunity.sandbox.app"


# -- process helpers, shared with the sandbox ------------------------------------------------


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def process_matches(pid: int, marker: str | Sequence[str]) -> bool:
    """True when `pid` is alive (not a zombie) and its command line contains every marker."""
    markers = [marker] if isinstance(marker, str) else list(marker)
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return False
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return all(m in cmdline for m in markers)


def _reap(pid: int) -> None:
    """Collect `pid` if it is our own child (else it is init's business)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def send_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def terminate_sync(pid: int, marker: str | Sequence[str], grace: float = 3.0) -> None:
    """SIGTERM `pid` if it is ours (per `marker`), SIGKILL after `grace` s, wait until gone."""
    if not process_matches(pid, marker):
        return
    try:
        # Held from here on: psutil checks the process's start time before signalling, so a
        # reused pid is never hit; and a process that is exiting (its command line already
        # gone) is still waited for until it has really ended.
        proc = psutil.Process(pid)
        proc.terminate()
    except psutil.NoSuchProcess:
        return
    deadline = time.monotonic() + grace
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                _reap(pid)
                return
            if time.monotonic() > deadline:
                proc.kill()
                deadline = time.monotonic() + 30.0
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)


def port_open(address: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on address:port."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def listener_pids(port: int) -> list[int]:
    """Pids listening on TCP `port` (any address)."""
    out: list[int] = []
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return out
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            out.append(c.pid)
    return out


def app_command(host_name: str, address: str, port: int, manifest: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        APP_MODULE,
        "--host-name",
        host_name,
        "--address",
        address,
        "--port",
        str(port),
        "--manifest",
        str(manifest),
    ]


def spawn_detached(
    cmd: list[str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own session with output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=cwd,
        )


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- the driver -----------------------------------------------------------------------------


class LocalDriver:
    """`HostDriver` over local host folders and sample-app processes."""

    META_KEYS: ClassVar[frozenset[str]] = frozenset({"folder"})
    """`hosts[].meta` keys this driver reads (any other is a config error)."""

    class Settings(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        root: str = "hosts"
        """Folder holding one folder per host (relative to the config file)."""
        releases: str = "releases"
        """Folder of release manifests `<name>.json` (relative to the config file)."""
        stop_grace: float = 3.0
        """Seconds between SIGTERM and SIGKILL."""

    def __init__(self, settings: LocalDriver.Settings, *, base_dir: Path) -> None:
        self.settings = settings
        self.root = resolve_path(base_dir, settings.root)
        self.releases = resolve_path(base_dir, settings.releases)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- paths --

    def folder(self, host: HostRef) -> Path:
        custom = host.meta.get("folder") if host.meta else None
        return resolve_path(self.root, str(custom)) if custom else self.root / host.name

    def _manifest(self, release: str) -> Path:
        return self.releases / f"{release}.json"

    def _installed(self, host: HostRef, release: str) -> Path:
        return self.folder(host) / "releases" / release / "release.json"

    def known_releases(self) -> list[str]:
        try:
            return sorted(p.stem for p in self.releases.glob("*.json"))
        except OSError:
            return []

    def _markers(self, host: HostRef) -> list[str]:
        return [APP_MODULE, f"--host-name {host.name} "]

    def _running_pid(self, host: HostRef) -> int | None:
        pid = read_pid(self.folder(host) / "app.pid")
        if pid is not None and process_matches(pid, self._markers(host)):
            return pid
        return None

    # -- HostDriver --

    def _existing(self, host: HostRef) -> Path:
        """The host's folder; `HostError` naming the host when there is none (no such host:
        not "nothing installed, nothing running", which would read as a stopped host)."""
        folder = self.folder(host)
        if not folder.is_dir():
            raise HostError(
                f"no host {host.name}: its folder {folder} does not exist",
                adapter=ADAPTER,
                host=host.name,
                hint="create the fleet with `immunity sandbox up`, or fix the host's meta.folder",
                context={"folder": str(folder)},
            )
        return folder

    # Every file read and write runs off the event loop (`off_loop`): a hung local disk or
    # mount blocks a thread, never the loop, so the engine's read deadline (ReadDeadline)
    # and each step's deadline still end the call.

    async def installed_releases(self, host: HostRef) -> list[str]:
        return await off_loop(self._installed_releases, host)

    def _installed_releases(self, host: HostRef) -> list[str]:
        base = self._existing(host) / "releases"
        try:
            found = [p.parent for p in base.glob("*/release.json")]
            found.sort(key=lambda p: ((p / "release.json").stat().st_mtime, p.name))
        except OSError as exc:
            raise self._error(host, f"cannot list releases in {base}", exc) from exc
        return [p.name for p in found]

    async def active_release(self, host: HostRef) -> str | None:
        return await off_loop(self._active_release, host)

    def _active_release(self, host: HostRef) -> str | None:
        folder = self._existing(host)
        if self._running_pid(host) is None:
            return None
        try:
            name = (folder / "active").read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(host, "cannot read the active release", exc) from exc
        return name or None

    async def install(self, host: HostRef, release: str) -> None:
        await off_loop(self._install, host, release)

    def _install(self, host: HostRef, release: str) -> None:
        target = self._installed(host, release)
        if target.is_file():
            return
        source = self._manifest(release)
        if not source.is_file():
            raise HostError(
                f"cannot install release {release} on {host.name}: no manifest {source}",
                adapter=ADAPTER,
                host=host.name,
                hint=f"known releases: {', '.join(self.known_releases()) or 'none'}",
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, source.read_text())
        except OSError as exc:
            raise self._error(host, f"cannot install release {release}", exc) from exc

    async def stop(self, host: HostRef) -> None:
        pid = await off_loop(self._running_pid, host)
        if pid is not None:
            await self._terminate(pid, self._markers(host))
        # A stray copy of our app still on the port (pid file lost): stop it too.
        for other in listener_pids(host.port):
            if process_matches(other, self._markers(host)):
                await self._terminate(other, self._markers(host))
        while port_open(host.address, host.port):
            if not any(process_matches(p, APP_MODULE) for p in listener_pids(host.port)):
                raise HostError(
                    f"port {host.port} of {host.name} is held by a process that is not the app",
                    adapter=ADAPTER,
                    host=host.name,
                    hint="stop whatever listens on that port, or give the host another port",
                )
            await anyio.sleep(0.05)
        await off_loop(_unlink, self.folder(host) / "app.pid")

    async def start(self, host: HostRef, release: str) -> None:
        manifest = self._installed(host, release)
        if not await off_loop(manifest.is_file):
            raise HostError(
                f"release {release} is not installed on {host.name}",
                adapter=ADAPTER,
                host=host.name,
                hint="install it first",
            )
        if await self.active_release(host) == release:
            return
        await self.stop(host)
        folder = self.folder(host)
        try:
            proc = await off_loop(self._launch, host, release, manifest)
        except OSError as exc:
            raise self._error(host, f"cannot start release {release}", exc) from exc
        self._children[proc.pid] = proc
        # Launched means listening: a process that dies at once (port taken, bad manifest)
        # is an error here rather than a mystery at verify.
        while not port_open(host.address, host.port):
            if proc.poll() is not None:
                self._children.pop(proc.pid, None)
                tail = await off_loop(_tail, folder / "app.log")
                raise HostError(
                    f"release {release} on {host.name} exited with code {proc.returncode} at start: "
                    f"{tail}",
                    adapter=ADAPTER,
                    host=host.name,
                    hint=f"see {folder / 'app.log'}",
                )
            await anyio.sleep(0.05)

    async def check_release(self, release: str) -> None:
        await off_loop(self._check_release, release)

    def _check_release(self, release: str) -> None:
        if not self._manifest(release).is_file():
            known = self.known_releases()
            raise PreflightError(
                f"unknown release {release}, known: {', '.join(known) or 'none'}",
                hint="create it with `immunity sandbox release`",
                context={"releases": str(self.releases)},
            )

    async def preflight(self, hosts: Sequence[HostRef]) -> None:
        missing = await off_loop(lambda: [h.name for h in hosts if not self.folder(h).is_dir()])
        if missing:
            raise PreflightError(
                f"local host folders missing under {self.root}: {', '.join(missing)}",
                hint="create the fleet with `immunity sandbox up`",
            )
        down = [
            f"{h.name} ({h.address}:{h.port})" for h in hosts if not port_open(h.address, h.port)
        ]
        if down:
            raise PreflightError(
                f"app not answering on: {', '.join(down)}",
                hint="start the fleet with `immunity sandbox up`",
            )

    async def aclose(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                self._children.pop(pid, None)

    # -- helpers --

    def _launch(self, host: HostRef, release: str, manifest: Path) -> subprocess.Popen[bytes]:
        """Mark `release` active and spawn its app process (blocking file I/O: off the loop)."""
        folder = self.folder(host)
        write_atomic(folder / "active", release + "\n")
        proc = spawn_detached(
            app_command(host.name, host.address, host.port, manifest.resolve()),
            folder / "app.log",
        )
        write_atomic(folder / "app.pid", f"{proc.pid}\n")
        return proc

    async def _terminate(self, pid: int, markers: list[str]) -> None:
        send_signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_grace
        while process_matches(pid, markers):
            proc = self._children.get(pid)
            if proc is not None and proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                send_signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + 3600.0
            await anyio.sleep(0.02)
        self._children.pop(pid, None)

    def _error(self, host: HostRef, what: str, exc: OSError) -> HostError:
        return HostError(
            f"{what} on {host.name}: {exc.strerror or exc}",
            adapter=ADAPTER,
            host=host.name,
            context={"folder": str(self.folder(host))},
        )


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
