"""IIS host driver: one IIS site and app pool per release, driven with PowerShell over WinRM.

Speaks PSRP (PowerShell Remoting Protocol) over WinRM with `pypsrp`: HTTPS on 5986 with the
server certificate validated by default (or against a CA bundle given as a path), auth
negotiate/kerberos/ntlm/credssp. Assumes Windows Server 2012+ with IIS and its
`Microsoft.Web.Administration` assembly, PowerShell 5.0+ (Expand-Archive), and an account
allowed to manage IIS sites and app pools and to write `sites_root`.

Layout on the host (the story's "multiple IIS sites, only one is running")::

    <sites_root>\\<app>-<release>\\              web root of one release (unpacked package)
    <sites_root>\\.immunity\\<app>\\<release>.json  installed_at / started_at bookkeeping
    IIS site + app pool "<app>-<release>"      binding *:<binding_port>, only one started

The active release is the started `<app>-*` site. `start` stops every other `<app>-*`
site first, because only one of them can bind port 443, and marks only the started one to
auto-start so a reboot brings back the active release.

The PowerShell lives in `iis_scripts/*.ps1` (package data). Values never enter the script
text: each script declares a `param(...)` block and pypsrp sends the values as bound
parameters, serialized as CLIXML `<S>`/`<I32>` elements inside the PSRP message (the remote
equivalent of `PowerShell.AddScript(text).AddParameter(name, value)`), so a release name
or a path is data, never code. Each script writes one JSON line (`{"ok": true, ...}` or
`{"ok": false, "error": ...}`) that this module parses.

pypsrp is synchronous; each call runs in a worker thread, one at a time per host (one
runspace pool per host, reused until `aclose`). Waiting scripts (stop, start) get the
caller's remaining deadline as `-TimeoutSeconds`, so they return by then; the worker
thread is never abandoned, because the runspace pool is not safe to share with a
thread that is still using it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from immunity.config import resolve_path
from immunity.config.types import Duration
from immunity.domain import HostRef
from immunity.errors import HostError, PreflightError
from immunity.hosts._preflight import check_hosts

ADAPTER = "iis"
log = logging.getLogger(__name__)

NAME = r"^[A-Za-z0-9_.\-]+$"
_NAME = re.compile(NAME)
_INCLUDE = re.compile(r"^#include (\S+)\s*$", re.M)


class IisSettings(BaseModel):
    """The `driver:` block for `kind: iis`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app: str = Field(pattern=NAME)
    """Site prefix: the release R of this app is the IIS site and app pool `<app>-R`."""
    package_source: str
    """Where a host finds a release: a zip, a folder or an http(s) URL; `{app}` and
    `{release}` are replaced, e.g. `\\\\share\\builds\\{app}\\{release}.zip`."""
    sites_root: str
    """Folder on the host that holds one folder per release, e.g. `D:\\sites`."""
    username: str | None = None
    """None with kerberos: use the orchestrator's ticket cache."""
    password: SecretStr | None = None
    """WinRM password (from `${ENV}`); never logged."""
    auth: Literal["negotiate", "kerberos", "ntlm", "credssp"] = "negotiate"
    """WinRM authentication: negotiate, kerberos, ntlm or credssp."""
    port: int = Field(default=5986, ge=1, le=65535)
    """WinRM port (5986 for HTTPS, 5985 for HTTP)."""
    ssl: bool = True
    """WinRM over HTTPS."""
    cert_validation: bool | str = True
    """True (system CAs), or the path of a CA bundle (PEM). False only for a lab."""
    configuration_name: str = "Microsoft.PowerShell"
    """PowerShell session configuration (endpoint) to connect to."""
    binding_port: int = Field(default=443, ge=1, le=65535)
    """Port of each release's IIS site binding."""
    binding_protocol: Literal["https", "http"] = "https"
    """Protocol of each release's IIS site binding."""
    binding_hostname: str = ""
    """Host header of the site binding (empty: any)."""
    certificate_thumbprint: str | None = Field(default=None, pattern=r"^[0-9A-Fa-f]{40}$")
    """Bind this certificate (LocalMachine\\<certificate_store>) to new sites; without it
    an https site uses the certificate already bound to 0.0.0.0:<binding_port>."""
    certificate_store: str = "My"
    """LocalMachine certificate store holding `certificate_thumbprint`."""
    managed_runtime_version: str = "v4.0"
    """App pool CLR: "v4.0", or "" for No Managed Code (ASP.NET Core)."""
    keep_releases: int = Field(default=3, ge=2)
    """Releases kept installed per host (older ones are removed); at least 2 so a revert needs
    no install."""
    operation_timeout: Duration = 20.0
    """Seconds one WinRM operation may take."""
    connection_timeout: Duration = 30.0
    """Seconds to open a WinRM connection."""
    wait_timeout: Duration = 120.0
    """Bound of the stop/start waits on the host when the caller set no deadline."""

    @model_validator(mode="after")
    def _credentials(self) -> IisSettings:
        if self.auth in ("ntlm", "credssp") and (self.username is None or self.password is None):
            raise ValueError(f"auth {self.auth} needs username and password")
        if (self.username is None) != (self.password is None) and self.auth != "kerberos":
            raise ValueError("set both username and password, or neither (kerberos)")
        return self


# -- the PSRP seam --------------------------------------------------------------------------


@dataclass(frozen=True)
class PsReply:
    """What one script run returned: its output objects and its error-stream records."""

    output: Sequence[Any]
    errors: Sequence[str] = ()


class PsSession(Protocol):
    """One host's PowerShell endpoint. Blocking; called from a worker thread.

    Implementations raise the library's own errors (pypsrp, requests, OSError); the driver
    maps them. The transcript tests replace this with a recorder.
    """

    def invoke(self, script_name: str, script: str, parameters: Mapping[str, Any]) -> PsReply: ...

    def close(self) -> None: ...


SessionFactory = Callable[[str], PsSession]
"""WinRM host name -> a session for it (opened lazily on first invoke)."""


class PypsrpSession:
    """A pypsrp runspace pool on one host, opened on first use."""

    def __init__(self, server: str, settings: IisSettings, cert_validation: bool | str) -> None:
        self._server = server
        self._settings = settings
        self._cert_validation = cert_validation
        self._wsman: Any = None
        self._pool: Any = None

    def _open(self) -> Any:
        from pypsrp.powershell import RunspacePool
        from pypsrp.wsman import WSMan

        s = self._settings
        operation = max(1, math.ceil(s.operation_timeout))
        self._wsman = WSMan(
            self._server,
            port=s.port,
            ssl=s.ssl,
            auth=s.auth,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            # a str is a CA bundle path: pypsrp hands it to requests' `verify` (typed bool only)
            cert_validation=self._cert_validation,  # type: ignore[arg-type]
            operation_timeout=operation,
            read_timeout=operation + 10,
            connection_timeout=max(1, math.ceil(s.connection_timeout)),
            encryption="auto",
        )
        pool = RunspacePool(self._wsman, configuration_name=s.configuration_name)
        pool.open()
        self._pool = pool
        return pool

    def invoke(self, script_name: str, script: str, parameters: Mapping[str, Any]) -> PsReply:
        from pypsrp.powershell import PowerShell

        pool = self._pool or self._open()
        ps = PowerShell(pool)
        ps.add_script(script)
        ps.add_parameters(dict(parameters))
        output = ps.invoke()
        return PsReply(output=list(output), errors=[str(e) for e in ps.streams.error])

    def close(self) -> None:
        pool, self._pool = self._pool, None
        wsman, self._wsman = self._wsman, None
        try:
            if pool is not None:
                pool.close()
        except Exception as exc:  # closing a broken pool: nothing more to do
            log.debug("iis %s: closing the runspace pool failed: %s", self._server, exc)
        finally:
            if wsman is not None:
                wsman.close()


# -- scripts --------------------------------------------------------------------------------


@cache
def load_script(name: str) -> str:
    """The text of `iis_scripts/<name>.ps1`, with `#include` lines replaced (static code)."""
    folder = resources.files("immunity.hosts").joinpath("iis_scripts")

    def include(m: re.Match[str]) -> str:
        return folder.joinpath(m.group(1)).read_text(encoding="utf-8")

    return _INCLUDE.sub(include, folder.joinpath(f"{name}.ps1").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class IisRelease:
    """One `<app>-<release>` site as `list.ps1` reports it."""

    release: str
    site_state: str
    pool_state: str = ""
    installed_at: dt.datetime | None = None
    started_at: dt.datetime | None = None

    @property
    def started(self) -> bool:
        return self.site_state in ("Started", "Starting")


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def releases_to_remove(releases: Sequence[IisRelease], keep: int, protect: set[str]) -> list[str]:
    """Releases beyond the `keep` most recent, never the active or the previous one.

    Protected releases (active, previous, `protect`) count towards `keep` even when not
    installed yet, so that after installing the new release `keep` releases remain.

    "Recent" is the last time a release was started or installed; the previous release is
    the most recently started one that is not active (the immune response's fallback).
    """
    protected = set(protect)
    protected.update(r.release for r in releases if r.started)
    stopped = sorted(
        (r for r in releases if not r.started and r.started_at),
        key=lambda r: r.started_at or _EPOCH,
    )
    if stopped:
        protected.add(stopped[-1].release)

    def recency(r: IisRelease) -> tuple[dt.datetime, str]:
        return (max(r.started_at or _EPOCH, r.installed_at or _EPOCH), r.release)

    newest_first = sorted(releases, key=recency, reverse=True)
    kept = set(protected)  # a protected release not yet installed (the new one) takes a slot
    out = []
    for r in newest_first:
        if r.release in kept:
            continue
        if len(kept) < keep:
            kept.add(r.release)
        else:
            out.append(r.release)
    return sorted(out)


# -- the driver -----------------------------------------------------------------------------


READ_SCRIPTS = frozenset({"list", "check_package"})
"""Scripts that change nothing on the host. The caller's deadline abandons their worker
thread (a WinRM host that accepts and never answers held a read for up to
`operation_timeout` + 10 s past any deadline); a script that changes the host is waited for,
so the host's lock is held until it is done and the next step never overlaps it."""


class IisDriver:
    """`HostDriver` for IIS over WinRM; see the module docstring."""

    Settings = IisSettings
    META_KEYS: ClassVar[frozenset[str]] = frozenset({"winrm_host"})
    """`hosts[].meta` keys this driver reads (any other is a config error)."""

    def __init__(
        self,
        settings: IisSettings,
        *,
        base_dir: Path,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.settings = settings
        cv = settings.cert_validation
        self._cert_validation: bool | str = (
            str(resolve_path(base_dir, cv)) if isinstance(cv, str) else cv
        )
        self._factory = session_factory or self._pypsrp_session
        self._sessions: dict[str, PsSession] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._probe_host: HostRef | None = None
        if not settings.ssl:
            log.warning(
                "iis: WinRM over plain HTTP (ssl: false); messages are encrypted by %s only",
                settings.auth,
            )
        if settings.cert_validation is False:
            log.warning("iis: WinRM server certificates are NOT validated (cert_validation: false)")

    def _pypsrp_session(self, server: str) -> PsSession:
        return PypsrpSession(server, self.settings, self._cert_validation)

    # ---- plumbing

    @staticmethod
    def winrm_host(host: HostRef) -> str:
        return str(host.meta.get("winrm_host") or host.address)

    def _where(self, host: HostRef) -> str:
        return f"{self.winrm_host(host)}:{self.settings.port}"

    def _check_name(self, release: str, host: HostRef | None = None) -> None:
        if not _NAME.fullmatch(release):
            raise HostError(
                f"iis: release name {release!r} is not usable as an IIS site name",
                adapter=ADAPTER,
                host=host.name if host else None,
                hint="use letters, digits, '_', '.' and '-' only",
            )

    def _package(self, release: str) -> str:
        return self.settings.package_source.replace("{app}", self.settings.app).replace(
            "{release}", release
        )

    def _wait_seconds(self) -> float:
        """What is left of the caller's deadline (less a margin to report back), or the bound."""
        left = anyio.current_effective_deadline() - anyio.current_time()
        if math.isinf(left):
            return self.settings.wait_timeout
        return max(1.0, left - 2.0)

    async def _run(self, host: HostRef, name: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Run `iis_scripts/<name>.ps1` on `host`; return its JSON reply. Maps every error."""
        server = self.winrm_host(host)
        script = load_script(name)
        lock = self._locks.setdefault(server, anyio.Lock())
        async with lock:
            session = self._sessions.get(server)
            if session is None:
                session = self._sessions[server] = self._factory(server)
            log.debug("iis %s: %s %s", server, name, dict(parameters))
            read = name in READ_SCRIPTS
            try:
                reply = await anyio.to_thread.run_sync(
                    session.invoke, name, script, parameters, abandon_on_cancel=read
                )
            except anyio.get_cancelled_exc_class():
                if read:  # its thread still uses the session: never hand it out again
                    self._sessions.pop(server, None)
                raise
            except Exception as exc:
                # a broken session is not reused: the next call reconnects
                self._sessions.pop(server, None)
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(session.close)
                raise self._map(exc, host, name) from exc
        return self._parse(reply, host, name)

    def _parse(self, reply: PsReply, host: HostRef, name: str) -> dict[str, Any]:
        lines = [str(o) for o in reply.output if o is not None and str(o).strip()]
        data: Any = None
        if lines:
            try:
                data = json.loads(lines[-1])
            except ValueError:
                data = None
        if not isinstance(data, dict):
            detail = "; ".join(reply.errors) or (lines[-1][:200] if lines else "no output")
            raise HostError(
                f"iis: {name}.ps1 on {host.name} did not answer with JSON: {detail}",
                adapter=ADAPTER,
                host=host.name,
                hint="run the script by hand on the host (see docs/adapters/iis.md)",
            )
        if not data.get("ok"):
            raise HostError(
                f"iis: {name} failed on {host.name}: {data.get('error') or 'no reason given'}",
                adapter=ADAPTER,
                host=host.name,
                context={"script": f"{name}.ps1"},
            )
        return data

    def _map(self, exc: Exception, host: HostRef, name: str) -> HostError:
        """pypsrp / requests / socket errors -> HostError naming the host and the cause."""
        import requests
        from pypsrp.exceptions import (
            AuthenticationError,
            WinRMError,
            WinRMTransportError,
            WSManFaultError,
        )

        where = self._where(host)
        user = self.settings.username or "(kerberos ticket)"
        message: str
        hint: str
        if isinstance(exc, requests.exceptions.SSLError):
            message = f"TLS handshake with WinRM on {where} failed: {_short(exc)}"
            hint = (
                "the listener's certificate must be trusted and match the host name; "
                "set cert_validation to the path of your CA bundle"
            )
        elif isinstance(exc, requests.exceptions.Timeout):
            message = f"WinRM on {where} did not answer in time: {_short(exc)}"
            hint = f"check the host is up and port {self.settings.port} is open (firewall, security group)"
        elif isinstance(exc, requests.exceptions.ConnectionError | OSError):
            message = f"cannot reach WinRM on {where}: {_short(exc)}"
            hint = (
                f"check the host is up, an HTTPS WinRM listener runs on port {self.settings.port} "
                "(winrm enumerate winrm/config/listener) and the firewall / security group allows it"
            )
        elif isinstance(exc, AuthenticationError) or (
            isinstance(exc, WinRMTransportError) and exc.code == 401
        ):
            message = f"WinRM on {where} rejected the credentials of {user} ({self.settings.auth})"
            hint = "check username/password (${ENV} in immunity.yaml) and the auth method the host allows"
        elif isinstance(exc, WinRMTransportError):
            message = f"WinRM on {where} answered HTTP {exc.code}"
            hint = "check the WinRM listener and the account's remoting rights"
        elif isinstance(exc, WSManFaultError):
            message = f"WinRM on {where} refused {name}: {exc.reason or exc.code}"
            hint = "the account needs PowerShell remoting rights (Remote Management Users)"
        elif isinstance(exc, ImportError):
            message = f"auth {self.settings.auth} is not available here: {_short(exc)}"
            hint = (
                "install the extra: pip install 'pypsrp[credssp]' for credssp, "
                "'pypsrp[kerberos]' (plus the system krb5 libraries) for kerberos"
            )
        elif isinstance(exc, WinRMError):
            message = f"PowerShell remoting on {where} failed during {name}: {_short(exc)}"
            hint = "see the host's Windows Remote Management event log"
        else:
            message = f"WinRM call {name} on {where} failed: {type(exc).__name__}: {_short(exc)}"
            hint = "see docs/adapters/iis.md"
        return HostError(f"iis: {message}", adapter=ADAPTER, host=host.name, hint=hint)

    async def _releases(self, host: HostRef) -> list[IisRelease]:
        data = await self._run(
            host, "list", {"App": self.settings.app, "SitesRoot": self.settings.sites_root}
        )
        items = data.get("releases") or []
        if isinstance(items, dict):  # PowerShell unwraps one-element arrays now and then
            items = [items]
        out = [
            IisRelease(
                release=str(i.get("release")),
                site_state=str(i.get("site_state") or ""),
                pool_state=str(i.get("pool_state") or ""),
                installed_at=_time(i.get("installed_at")),
                started_at=_time(i.get("started_at")),
            )
            for i in items
            if isinstance(i, dict) and i.get("release")
        ]
        out.sort(key=lambda r: (r.installed_at or _EPOCH, r.release))
        return out

    # ---- HostDriver

    async def preflight(self, hosts: Sequence[HostRef]) -> None:
        """Each host answers `list.ps1` over WinRM (reachable, credentials, IIS present)."""

        async def check(host: HostRef) -> None:
            await self._releases(host)

        await check_hosts(hosts, check)
        if hosts:
            self._probe_host = hosts[0]

    async def check_release(self, release: str) -> None:
        """The name is valid and (after preflight) the first host can read the package."""
        try:
            self._check_name(release)
        except HostError as exc:
            raise PreflightError(exc.message, hint=exc.hint) from exc
        host = self._probe_host
        if host is None:
            return
        source = self._package(release)
        try:
            data = await self._run(host, "check_package", {"PackageSource": source})
        except HostError as exc:
            raise PreflightError(exc.message, hint=exc.hint, context=exc.context) from exc
        if not data.get("found"):
            raise PreflightError(
                f"iis: package of release {release!r} not found: {source} (seen from {host.name})",
                hint="check package_source in the driver block and that the host's account can read the share",
                context={"adapter": ADAPTER, "host": host.name},
            )

    async def installed_releases(self, host: HostRef) -> list[str]:
        return [r.release for r in await self._releases(host)]

    async def active_release(self, host: HostRef) -> str | None:
        started = [r.release for r in await self._releases(host) if r.started]
        if len(started) > 1:
            raise HostError(
                f"iis: {host.name} has several started sites for {self.settings.app}: "
                + ", ".join(f"{self.settings.app}-{r}" for r in started),
                adapter=ADAPTER,
                host=host.name,
                hint="only one can own the binding; stop the extra ones in IIS Manager",
            )
        return started[0] if started else None

    async def install(self, host: HostRef, release: str) -> None:
        """Clean up old releases, then unpack and create the stopped site. Idempotent."""
        self._check_name(release, host)
        await self.cleanup(host, keep=release)
        s = self.settings
        await self._run(
            host,
            "install",
            {
                "App": s.app,
                "Release": release,
                "PackageSource": self._package(release),
                "SitesRoot": s.sites_root,
                "BindingPort": s.binding_port,
                "BindingProtocol": s.binding_protocol,
                "BindingHostname": s.binding_hostname,
                "CertificateThumbprint": s.certificate_thumbprint or "",
                "CertificateStore": s.certificate_store,
                "ManagedRuntimeVersion": s.managed_runtime_version,
            },
        )

    async def stop(self, host: HostRef) -> None:
        await self._run(
            host, "stop", {"App": self.settings.app, "TimeoutSeconds": self._wait_seconds()}
        )

    async def start(self, host: HostRef, release: str) -> None:
        self._check_name(release, host)
        await self._run(
            host,
            "start",
            {
                "App": self.settings.app,
                "Release": release,
                "SitesRoot": self.settings.sites_root,
                "TimeoutSeconds": self._wait_seconds(),
            },
        )

    async def cleanup(self, host: HostRef, *, keep: str | None = None) -> list[str]:
        """Remove releases beyond `keep_releases` (never the active, the previous or `keep`)."""
        releases = await self._releases(host)
        remove = releases_to_remove(
            releases, self.settings.keep_releases, {keep} if keep else set()
        )
        if not remove:
            return []
        data = await self._run(
            host,
            "cleanup",
            {"App": self.settings.app, "SitesRoot": self.settings.sites_root, "Remove": remove},
        )
        removed = data.get("removed") or []
        return [str(r) for r in (removed if isinstance(removed, list) else [removed])]

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(session.close)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
