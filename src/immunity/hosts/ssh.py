"""SSH host driver: releases in folders, a `current` symlink, a service started by command.

Speaks SSH with asyncssh, host keys checked STRICTLY against the `known_hosts` file named in
the config (there is no way to turn the check off), keys from `client_keys` or the agent,
no agent forwarding. Assumes a POSIX shell, coreutils (`ln -sfn`, `mv -T`, `touch`), an
SFTP subsystem, and a `base` folder the SSH user may write; the service itself is run by
the three commands below (systemd by default, through sudo limited to them).

Layout on the host::

    <base>/releases/<name>/      one folder per installed release (mtime = install time)
    <base>/current -> releases/<name>     the active release, switched atomically
    <base>/previous -> releases/<name>    the release that was active before (kept by cleanup)

Installing copies the package into `releases/.<name>.partial-<random>` and renames it into
place, so a half-copied release never looks installed. Switching writes the new link under
a temporary name and renames it over `current` (`ln -sfn` then `mv -T`: rename(2) is atomic).
The active release is `readlink current` when `status_command` exits 0.

Commands are templates. `{service}`, `{base}`, `{current}`, `{release}`, `{release_dir}`,
`{source}`, `{dest}`, `{port}` and `{host}` are replaced by shell-quoted values; any other
text, `${VAR}` included, is passed to the remote shell as written.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import re
import secrets
import shlex
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import anyio
import asyncssh
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from immunity.config import resolve_path
from immunity.config.types import Duration
from immunity.domain import HostRef
from immunity.errors import HostError, PreflightError
from immunity.hosts._preflight import check_hosts

ADAPTER = "ssh"
log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_PLACEHOLDER = re.compile(r"\{(service|base|current|release|release_dir|source|dest|port|host)\}")


class SshSettings(BaseModel):
    """The `driver:` block for `kind: ssh`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str
    """SSH user (a host's `meta.ssh_user` overrides it)."""
    known_hosts: str
    """Path of the known_hosts file that must hold every host's key (required: no TOFU)."""
    base: str
    """Absolute folder of the app on each host, e.g. /srv/shop."""
    package_source: str
    """Where a release comes from; `{release}` is replaced. Without `install_command`, a
    local file or folder on the orchestrator, copied over SFTP into releases/<name>/."""
    service: str = ""
    """The systemd unit (or whatever the commands expect as `{service}`)."""
    port: int = Field(default=22, ge=1, le=65535)
    """SSH port (a host's `meta.ssh_port` overrides it)."""
    client_keys: list[str] = Field(default_factory=list)
    """Private key files; empty means the ssh-agent / default keys."""
    install_command: str | None = None
    """Run on the host to fill `{dest}` from `{source}`, e.g.
    `curl -fsSL {source} | tar -xz -C {dest}`. None: SFTP copy."""
    stop_command: str = "sudo systemctl stop {service}"
    """Stops the running release; placeholders such as `{service}` and `{release}` are filled in."""
    start_command: str = "sudo systemctl start {service}"
    """Starts the installed release; same placeholders as `stop_command`."""
    status_command: str = "systemctl is-active --quiet {service}"
    """Exit 0 when the release behind `current` is running."""
    keep_releases: int = Field(default=3, ge=2)
    """Releases kept installed per host (older ones are removed); at least 2 so a revert needs
    no install."""
    connect_timeout: Duration = 10.0
    """Seconds to open an SSH connection."""

    @field_validator("base")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"expected an absolute path on the host (/srv/app), got {v!r}")
        return v.rstrip("/") or "/"

    @model_validator(mode="after")
    def _service_used(self) -> SshSettings:
        if not self.service:
            for field in ("stop_command", "start_command", "status_command"):
                if "{service}" in getattr(self, field):
                    raise ValueError(f"{field} uses {{service}}: set `service` (the unit name)")
        return self


@dataclass(frozen=True)
class _HostState:
    current: str | None
    previous: str | None
    installed: bool


@dataclass(frozen=True)
class _Target:
    address: str
    port: int
    user: str

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


def render(template: str, values: Mapping[str, object]) -> str:
    """Replace the known `{placeholders}` by shell-quoted values; leave everything else."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        return shlex.quote(str(values[key])) if key in values else m.group(0)

    return _PLACEHOLDER.sub(sub, template)


class SshDriver:
    """`HostDriver` over SSH; see the module docstring."""

    Settings = SshSettings
    META_KEYS: ClassVar[frozenset[str]] = frozenset({"ssh_host", "ssh_port", "ssh_user"})
    """`hosts[].meta` keys this driver reads (any other is a config error)."""

    def __init__(self, settings: SshSettings, *, base_dir: Path) -> None:
        self.settings = settings
        self.known_hosts = resolve_path(base_dir, settings.known_hosts)
        self.client_keys = [str(resolve_path(base_dir, k)) for k in settings.client_keys]
        self._base_dir = base_dir
        self._conns: dict[_Target, asyncssh.SSHClientConnection] = {}
        self._locks: dict[_Target, anyio.Lock] = {}

    # ---- paths and templates

    @property
    def releases_dir(self) -> str:
        return posixpath.join(self.settings.base, "releases")

    @property
    def current(self) -> str:
        return posixpath.join(self.settings.base, "current")

    @property
    def previous(self) -> str:
        return posixpath.join(self.settings.base, "previous")

    def release_dir(self, release: str) -> str:
        return posixpath.join(self.releases_dir, release)

    def _source(self, release: str) -> str:
        return self.settings.package_source.replace("{release}", release)

    def _values(self, host: HostRef, release: str | None) -> dict[str, object]:
        values: dict[str, object] = {
            "service": self.settings.service,
            "base": self.settings.base,
            "current": self.current,
            "port": host.port,
            "host": host.name,
        }
        if release:
            values.update(release=release, release_dir=self.release_dir(release))
        else:
            values.update(release="", release_dir="")
        return values

    def _target(self, host: HostRef) -> _Target:
        return _Target(
            address=str(host.meta.get("ssh_host") or host.address),
            port=int(host.meta.get("ssh_port") or self.settings.port),
            user=str(host.meta.get("ssh_user") or self.settings.user),
        )

    def _check_name(self, release: str, host: HostRef | None = None) -> None:
        if not _NAME.fullmatch(release) or release in (".", ".."):
            raise HostError(
                f"ssh: release name {release!r} is not usable as a folder name",
                adapter=ADAPTER,
                host=host.name if host else None,
                hint="use letters, digits, '_', '.' and '-' only",
            )

    # ---- connections

    async def _conn(self, host: HostRef) -> asyncssh.SSHClientConnection:
        target = self._target(host)
        lock = self._locks.setdefault(target, anyio.Lock())
        async with lock:
            conn = self._conns.get(target)
            if conn is not None and not conn.is_closed():
                return conn
            # no client_keys given: asyncssh's defaults (the agent, ~/.ssh/id_*)
            keys = {"client_keys": self.client_keys} if self.client_keys else {}
            try:
                conn = await asyncssh.connect(
                    target.address,
                    port=target.port,
                    username=target.user,
                    known_hosts=str(self.known_hosts),
                    agent_forwarding=False,
                    connect_timeout=self.settings.connect_timeout,
                    # never read ~/.ssh/config: what is checked is what immunity.yaml says
                    config=None,
                    **keys,
                )
            except (TimeoutError, asyncssh.Error, OSError) as exc:
                raise self._map(exc, host, "connect") from exc
            self._conns[target] = conn
            return conn

    def _drop(self, host: HostRef) -> None:
        conn = self._conns.pop(self._target(host), None)
        if conn is not None:
            conn.close()

    def _map(self, exc: BaseException, host: HostRef, action: str) -> HostError:
        """asyncssh / socket errors -> HostError naming host:port and what to check."""
        target = self._target(host)
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            message = (
                f"host key of {target} is not trusted by known_hosts {self.known_hosts}: "
                f"{exc.reason}"
            )
            hint = (
                "a changed key can mean a rebuilt host or an attack: compare the fingerprint "
                "with the host's owner, then update known_hosts "
                f"(ssh-keyscan -p {target.port} {target.address})"
            )
        elif isinstance(exc, asyncssh.PermissionDenied):
            message = f"{target} refused the login of {target.user}: {exc.reason}"
            hint = "check client_keys and the user's authorized_keys on the host"
        elif isinstance(exc, TimeoutError):
            message = f"{target} did not answer in time ({action})"
            hint = "check the host is up and the SSH port is open (firewall, security group)"
        elif isinstance(exc, asyncssh.SFTPError):
            message = f"SFTP on {target} failed during {action}: {exc.reason}"
            hint = "check that the SSH user can write the base folder and SFTP is enabled"
        elif isinstance(exc, asyncssh.Error):
            message = f"SSH to {target} failed during {action}: {exc.reason}"
            hint = "see the host's sshd log"
        elif isinstance(exc, OSError):
            message = f"cannot reach SSH on {target}: {exc.strerror or exc}"
            hint = "check the host is up, sshd listens on that port and the firewall allows it"
        else:
            message = f"{action} on {target} failed: {type(exc).__name__}: {exc}"
            hint = "see docs/adapters/ssh.md"
        return HostError(f"ssh: {message}", adapter=ADAPTER, host=host.name, hint=hint)

    async def _exec(self, host: HostRef, command: str, action: str) -> asyncssh.SSHCompletedProcess:
        """Run `command` on `host` (check=False); transport errors become HostError."""
        conn = await self._conn(host)
        log.debug("ssh %s: %s: %s", host.name, action, command)
        try:
            return await conn.run(command, check=False, stdin=asyncssh.DEVNULL)
        except (asyncssh.Error, OSError) as exc:
            self._drop(host)
            raise self._map(exc, host, action) from exc

    async def _must(self, host: HostRef, command: str, action: str) -> str:
        """Run `command`; a non-zero exit is a HostError carrying the end of stderr."""
        result = await self._exec(host, command, action)
        if result.exit_status != 0:
            err = str(result.stderr or result.stdout or "").strip()
            raise HostError(
                f"ssh: {action} on {host.name} exited {result.exit_status}: {err[-400:] or '(no output)'}",
                adapter=ADAPTER,
                host=host.name,
                context={"command": command},
                hint="run the command by hand as the SSH user to see why",
            )
        return str(result.stdout or "")

    @contextlib.asynccontextmanager
    async def _sftp(self, host: HostRef, action: str) -> AsyncIterator[asyncssh.SFTPClient]:
        """An SFTP session on the host's connection; its errors become HostError.

        Reads and file moves go through SFTP rather than a shell: no login shell runs (its
        profile can cost more than the operation), and nothing needs quoting.
        """
        conn = await self._conn(host)
        try:
            async with conn.start_sftp_client() as sftp:
                yield sftp
        except (asyncssh.Error, OSError) as exc:
            if isinstance(exc, asyncssh.DisconnectError | asyncssh.ConnectionLost):
                self._drop(host)
            raise self._map(exc, host, action) from exc

    @staticmethod
    async def _readlink(sftp: asyncssh.SFTPClient, link: str) -> str | None:
        """Basename of the release a symlink points to, or None when there is no link."""
        try:
            target = str(await sftp.readlink(link))
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath, asyncssh.SFTPFailure):
            return None  # no link (or not a link: OpenSSH answers "Failure")
        return posixpath.basename(target.rstrip("/")) or None

    async def _state(self, host: HostRef, release: str | None = None) -> _HostState:
        """What `current` and `previous` point to, and whether `release` is installed."""
        async with self._sftp(host, "read state") as sftp:
            current = await self._readlink(sftp, self.current)
            previous = await self._readlink(sftp, self.previous)
            installed = bool(release) and await sftp.isdir(self.release_dir(release or ""))
        return _HostState(current=current, previous=previous, installed=installed)

    async def _running(self, host: HostRef, current: str | None) -> bool:
        if current is None:
            return False
        status = render(self.settings.status_command, self._values(host, current))
        return (await self._exec(host, status, "status")).exit_status == 0

    def _link_command(self, link: str, release: str) -> str:
        """Point `link` at releases/<release> atomically: a new link renamed over the old."""
        tmp = posixpath.join(
            self.settings.base, f".{posixpath.basename(link)}.{secrets.token_hex(4)}"
        )
        target = posixpath.join("releases", release)  # relative: the base folder may move
        q = shlex.quote
        return f"ln -sfn -- {q(target)} {q(tmp)} && mv -T -- {q(tmp)} {q(link)}"

    async def _listing(self, host: HostRef) -> list[tuple[float, str]]:
        """(mtime, name) of each installed release folder, oldest first."""
        async with self._sftp(host, "list releases") as sftp:
            if not await sftp.isdir(self.releases_dir):
                return []
            entries = await sftp.readdir(self.releases_dir)
        out = []
        for e in entries:
            name = str(e.filename)
            if name.startswith(".") or not _NAME.fullmatch(name):
                continue  # partial installs
            if e.attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY:
                continue
            out.append((float(e.attrs.mtime or 0), name))
        out.sort()
        return out

    # ---- HostDriver

    async def preflight(self, hosts: Sequence[HostRef]) -> None:
        """known_hosts exists; each host accepts our key and host key, and `base` is writable."""
        if not await anyio.Path(self.known_hosts).is_file():
            raise PreflightError(
                f"ssh: known_hosts file {self.known_hosts} does not exist",
                hint="write the hosts' keys there (verified, e.g. from your config management)",
                context={"adapter": ADAPTER},
            )
        for key in self.client_keys:
            if not await anyio.Path(key).is_file():
                raise PreflightError(
                    f"ssh: client key {key} does not exist",
                    hint="fix client_keys in the driver block",
                    context={"adapter": ADAPTER},
                )
        base = shlex.quote(self.settings.base)

        async def check(host: HostRef) -> None:
            result = await self._exec(host, f"test -d {base} && test -w {base}", "preflight")
            if result.exit_status != 0:
                raise PreflightError(
                    f"ssh: {self.settings.base} on {host.name} is missing or not writable by "
                    f"{self._target(host).user}",
                    hint=f"create it on the host: install -d -o {self._target(host).user} {self.settings.base}",
                    context={"adapter": ADAPTER, "host": host.name},
                )

        await check_hosts(hosts, check)

    async def check_release(self, release: str) -> None:
        """The name is valid and, for SFTP installs, the local package exists."""
        try:
            self._check_name(release)
        except HostError as exc:
            raise PreflightError(exc.message, hint=exc.hint) from exc
        if self.settings.install_command is None:
            source = resolve_path(self._base_dir, self._source(release))
            if not await anyio.Path(source).exists():
                raise PreflightError(
                    f"ssh: package of release {release!r} not found: {source}",
                    hint="check package_source in the driver block",
                    context={"adapter": ADAPTER},
                )

    async def installed_releases(self, host: HostRef) -> list[str]:
        return [name for _, name in await self._listing(host)]

    async def active_release(self, host: HostRef) -> str | None:
        current = (await self._state(host)).current
        return current if await self._running(host, current) else None

    async def install(self, host: HostRef, release: str) -> None:
        """Clean up old releases, then copy the release into place. Idempotent."""
        self._check_name(release, host)
        await self.cleanup(host, keep=release)
        final = self.release_dir(release)
        partial = f".{release}.partial-"
        dest = posixpath.join(self.releases_dir, partial + secrets.token_hex(4))
        source = self._source(release)
        async with self._sftp(host, "install (prepare)") as sftp:
            if await sftp.isdir(final):
                return
            await sftp.makedirs(self.releases_dir, exist_ok=True)
            for entry in await sftp.readdir(self.releases_dir):
                if str(entry.filename).startswith(partial):  # an interrupted install
                    await sftp.rmtree(posixpath.join(self.releases_dir, str(entry.filename)))
            await sftp.mkdir(dest)
            if self.settings.install_command is None:
                await self._put(host, sftp, resolve_path(self._base_dir, source), dest)
        if self.settings.install_command is not None:
            values = self._values(host, release) | {"source": source, "dest": dest}
            await self._must(host, render(self.settings.install_command, values), "install")
        async with self._sftp(host, "install (rename)") as sftp:
            await sftp.posix_rename(dest, final)  # rename(2): the release appears whole
            await sftp.utime(final)  # mtime = install time, the order cleanup goes by

    async def _put(self, host: HostRef, sftp: asyncssh.SFTPClient, source: Path, dest: str) -> None:
        src = anyio.Path(source)
        if not await src.exists():
            raise HostError(
                f"ssh: package {source} not found on the orchestrator",
                adapter=ADAPTER,
                host=host.name,
                hint="check package_source",
            )
        local = sorted([p async for p in src.iterdir()]) if await src.is_dir() else [src]
        if local:
            await sftp.put([str(p) for p in local], dest, recurse=True, preserve=False)

    async def stop(self, host: HostRef) -> None:
        """Run `stop_command` (it must be idempotent: systemctl stop is)."""
        current = (await self._state(host)).current
        await self._must(
            host, render(self.settings.stop_command, self._values(host, current)), "stop"
        )

    async def start(self, host: HostRef, release: str) -> None:
        """Stop whatever runs, point `current` at `release` atomically, run `start_command`."""
        self._check_name(release, host)
        state = await self._state(host, release)
        if not state.installed:
            raise HostError(
                f"ssh: release {release!r} is not installed on {host.name}",
                adapter=ADAPTER,
                host=host.name,
                hint="install it first",
            )
        running = await self._running(host, state.current)
        if state.current == release and running:
            return
        if running:
            await self._must(
                host, render(self.settings.stop_command, self._values(host, state.current)), "stop"
            )
        if state.current != release:
            switch = self._link_command(self.current, release)
            if state.current is not None:  # remember the fallback first
                switch = f"{self._link_command(self.previous, state.current)} && {switch}"
            await self._must(host, switch, "switch current")
        await self._must(
            host, render(self.settings.start_command, self._values(host, release)), "start"
        )

    async def cleanup(self, host: HostRef, *, keep: str | None = None) -> list[str]:
        """Remove releases beyond `keep_releases`: never `current`, `previous` or `keep`.

        Returns the removed releases.
        """
        listing = await self._listing(host)
        state = await self._state(host)
        protected = {n for n in (keep, state.current, state.previous) if n}
        kept = set(protected)  # protected ones take a slot even before they are installed
        remove = []
        for _, name in reversed(listing):  # newest first
            if name in kept:
                continue
            if len(kept) < self.settings.keep_releases:
                kept.add(name)
            else:
                remove.append(name)
        if remove:
            log.info("ssh %s: removing old releases %s", host.name, ", ".join(sorted(remove)))
            paths = " ".join(shlex.quote(self.release_dir(n)) for n in remove)
            await self._must(host, f"rm -rf -- {paths}", "cleanup")
        return sorted(remove)

    async def aclose(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.wait_closed()
