"""HAProxy runtime API client (the "stats socket"), over a unix stream socket.

Speaks the plain-text runtime API of HAProxy 2.4+ in non-interactive mode: one connection per
command, the command line plus ``\\n``, then the answer read to EOF. Commands used:
``show stat <proxy> 4 -1`` (CSV), ``show servers state <backend>``, ``set server B/S state
drain|maint|ready``, ``show info``.

Transient socket errors (refused, reset, timeout) are retried a few times with backoff and
jitter; but until the socket has answered once, a socket that is not there (no such file,
nothing listening, not allowed) is named at once: a wrong path or a stopped HAProxy is not
a blip to ride out, and `status` or a preflight should say so, not wait. A retried ``set`` may have worked although its answer was lost: every ``set`` is
idempotent, and callers read the state back instead of trusting the answer. Every foreign
error leaves this module as `BalancerError(adapter="haproxy")`.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from immunity.errors import BalancerError

ADAPTER = "haproxy"

AdminState = Literal["drain", "maint", "ready"]

# Answers that mean "the command was refused"; HAProxy answers an accepted `set` with "".
_REFUSALS = (
    "No such server",
    "No such backend",
    "No such proxy",
    "Unknown command",
    "Permission denied",
    "Require 'backend/server'",
    "Unknown",
)


@dataclass(frozen=True)
class ServerStat:
    """One server's row of ``show stat``: the fields immunity reads, plus the raw row."""

    backend: str
    name: str
    status: str  # "UP", "DOWN", "DRAIN", "MAINT", "UP 1/2", "no check", ...
    scur: int
    qcur: int
    req_tot: int
    hrsp_5xx: int
    eresp: int
    check_status: str
    raw: dict[str, str]


@dataclass(frozen=True)
class ServerState:
    """One server's row of ``show servers state``.

    `op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    `admin_state` is a bit field: 0x01 forced maint, 0x08 forced drain (others: inherited).
    """

    backend: str
    name: str
    op_state: int
    admin_state: int
    raw: dict[str, str]

    @property
    def in_maint(self) -> bool:
        """Forced, inherited, config, resolution or hostname maintenance."""
        return bool(self.admin_state & 0x67)

    @property
    def in_drain(self) -> bool:
        """Forced or inherited drain."""
        return bool(self.admin_state & 0x18)


class _Transient(Exception):
    """A socket-level failure worth retrying; carries the original error."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


class _Unreachable(Exception):
    """The socket is not there (never answered yet): not retried."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.exc = exc


UNREACHABLE_HINTS: dict[type[OSError], str] = {
    FileNotFoundError: "no socket at that path: is HAProxy running, with `stats socket <path> "
    "level admin` in its config, and is the path in immunity.yaml right (relative to its "
    "folder)?",
    ConnectionRefusedError: "nothing listens on that socket (a file left by an HAProxy that "
    "stopped): start HAProxy, or fix the path in immunity.yaml",
    PermissionError: "this user may not open the socket: give it access (the socket's `mode`, "
    "`user` or `group` in HAProxy's `stats socket` line)",
    NotADirectoryError: "a part of the socket's path is not a folder: fix the path in "
    "immunity.yaml",
}
"""A socket that cannot be reached at all, and what to do about it."""


class HAProxyClient:
    """Async client of one HAProxy runtime API socket."""

    def __init__(
        self,
        socket_path: str | Path,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        retry_for: float = 0.0,
    ) -> None:
        """`attempts` bounds the retries of one command; with `retry_for` > 0 they go on
        instead until that many seconds have passed (a balancer restarting, a socket briefly
        gone), so one blip does not fail a deployment step."""
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self.attempts = attempts
        self.retry_for = retry_for
        self.answered = False  # the socket answered once: from then on a missing one is a blip

    async def command(self, line: str, *, host: str | None = None) -> str:
        """Send one command and return its whole answer. Retries transient socket errors."""
        try:
            async for attempt in AsyncRetrying(
                stop=(
                    stop_after_delay(self.retry_for)
                    if self.retry_for > 0
                    else stop_after_attempt(self.attempts)
                ),
                wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.1),
                retry=retry_if_exception_type(_Transient),
                reraise=True,
            ):
                with attempt:
                    answer = await self._once(line)
                    self.answered = True
                    return answer
        except _Unreachable as exc:
            gone = exc.exc
            raise BalancerError(
                f"HAProxy runtime API unreachable: {gone.strerror or type(gone).__name__}: "
                f"{self.socket_path}",
                adapter=ADAPTER,
                host=host,
                hint=UNREACHABLE_HINTS.get(type(gone), UNREACHABLE_HINTS[FileNotFoundError]),
                context={"socket": self.socket_path, "command": line},
            ) from gone
        except _Transient as exc:
            cause = exc.exc
            what = type(cause).__name__
            if isinstance(cause, OSError) and cause.strerror:
                what = cause.strerror
            raise BalancerError(
                f"HAProxy runtime API at {self.socket_path} did not answer {line.split()[0]!r}"
                + (
                    f" for {self.retry_for:g}s"
                    if self.retry_for > 0
                    else f" after {self.attempts} attempts"
                )
                + f": {what}",
                adapter=ADAPTER,
                host=host,
                hint="is HAProxy running with `stats socket ... level admin` at that path?",
                context={"socket": self.socket_path, "command": line},
            ) from cause
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, line: str) -> str:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
                writer.write(line.encode() + b"\n")
                await writer.drain()
                data = await reader.read()  # to EOF: HAProxy closes after one command
            return data.decode(errors="replace")
        except tuple(UNREACHABLE_HINTS) as exc:
            if not self.answered:  # never reached: a wrong path or no HAProxy, not a blip
                raise _Unreachable(exc) from exc
            raise _Transient(exc) from exc
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise _Transient(exc) from exc
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _set(self, line: str, *, host: str | None) -> None:
        answer = (await self.command(line, host=host)).strip()
        if answer:
            raise BalancerError(
                f"HAProxy refused {line!r}: {answer.splitlines()[0]}",
                adapter=ADAPTER,
                host=host,
                context={"socket": self.socket_path, "command": line},
            )

    # -- commands ---------------------------------------------------------------------------

    async def set_state(
        self, backend: str, server: str, state: AdminState, *, host: str | None = None
    ) -> None:
        """``set server B/S state drain|maint|ready``. Idempotent on HAProxy's side."""
        await self._set(f"set server {backend}/{server} state {state}", host=host)

    async def show_stat(self, backend: str, *, host: str | None = None) -> dict[str, ServerStat]:
        """Server rows of ``show stat`` for one backend, keyed by server name."""
        text = await self.command(f"show stat {backend} 4 -1", host=host)
        rows = parse_stat_csv(text)
        if not rows and not text.lstrip().startswith("#"):
            _refused(text, f"show stat {backend}", self.socket_path, host)
        return {r.name: r for r in rows if r.backend == backend}

    async def show_servers_state(
        self, backend: str, *, host: str | None = None
    ) -> dict[str, ServerState]:
        """Rows of ``show servers state <backend>``, keyed by server name."""
        text = await self.command(f"show servers state {backend}", host=host)
        if any(text.lstrip().startswith(r) for r in _REFUSALS) or "Can't find backend" in text:
            _refused(text, f"show servers state {backend}", self.socket_path, host)
        return {s.name: s for s in parse_servers_state(text) if s.backend == backend}

    async def show_info(self) -> dict[str, str]:
        """``show info`` as a dict (Version, Uptime_sec, CurrConns...)."""
        text = await self.command("show info")
        out: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        if "Version" not in out:
            _refused(text, "show info", self.socket_path, None)
        return out


def _refused(text: str, what: str, socket_path: str, host: str | None) -> None:
    first = text.strip().splitlines()[0] if text.strip() else "(empty answer)"
    raise BalancerError(
        f"HAProxy refused {what!r}: {first}",
        adapter=ADAPTER,
        host=host,
        context={"socket": socket_path, "command": what},
    )


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def parse_stat_csv(text: str) -> list[ServerStat]:
    """Parse ``show stat`` CSV (header ``# pxname,svname,...``); skips FRONTEND/BACKEND rows."""
    text = text.lstrip()
    if not text.startswith("#"):
        return []
    reader = csv.DictReader(io.StringIO(text[1:].lstrip()))
    out = []
    for row in reader:
        name = row.get("svname") or ""
        if not name or name in ("FRONTEND", "BACKEND"):
            continue
        out.append(
            ServerStat(
                backend=row.get("pxname") or "",
                name=name,
                status=row.get("status") or "",
                scur=_int(row.get("scur")),
                qcur=_int(row.get("qcur")),
                req_tot=_int(row.get("req_tot")),
                hrsp_5xx=_int(row.get("hrsp_5xx")),
                eresp=_int(row.get("eresp")),
                check_status=row.get("check_status") or "",
                raw={k: v for k, v in row.items() if k},
            )
        )
    return out


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse ``show servers state`` (a version line, ``# col col ...``, space-separated rows)."""
    columns: Sequence[str] = ()
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            columns = line[1:].split()
            continue
        if not columns:
            continue  # the format version line ("1")
        values = line.split()
        row = dict(zip(columns, values, strict=False))
        out.append(
            ServerState(
                backend=row.get("be_name", ""),
                name=row.get("srv_name", ""),
                op_state=_int(row.get("srv_op_state")),
                admin_state=_int(row.get("srv_admin_state")),
                raw=row,
            )
        )
    return out
