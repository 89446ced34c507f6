"""Command signal source: any executable, in any language, measures a cohort.

Runs `command` once per cohort per look (cohorts in parallel), in the config file's folder,
with the cohort on stdin as JSON

    {"signal": "orders", "cohort": "canary", "start": "2026-05-04T12:30:00.000Z",
     "end": "2026-05-04T12:30:05.000Z", "start_epoch": 1777897800.0, "end_epoch": ...,
     "hosts": [{"name": "web1", "address": "10.0.0.5", "port": 80, "lb_id": "i-0abc",
                "scheme": "http", "meta": {...}}]}

and in the environment (inherited environment plus `env`):

    IMMUNITY_SIGNAL, IMMUNITY_COHORT        signal name, canary | baseline
    IMMUNITY_HOSTS                          host names, comma-separated
    IMMUNITY_ADDRESSES                      address:port of each host, comma-separated
    IMMUNITY_START, IMMUNITY_END            ISO 8601 UTC with a Z (always .000)
    IMMUNITY_START_EPOCH, IMMUNITY_END_EPOCH  unix seconds (integers)

Windows are whole seconds: the engine's window [start, end) is run as [floor(start),
floor(end)), so every form of the window above (ISO, epoch integers, the stdin floats) names
the same half-open interval, and consecutive looks partition time exactly: a script that
counts `start <= t < end` counts each request once, whatever precision it reads. The source
declares `resolution = 1`, so the bake asks it only once a new whole second is complete;
asked anyway about a window holding no whole second, it answers an empty window without
running the command.

It must print ONE JSON object on stdout and exit 0:

    {"requests": 1200, "errors": 3}                          # counts over [start, end)
    {"requests": 1200, "errors": 3, "latency_bounds_ms": [50, 100, 250],
     "latency_buckets": [900, 250, 40, 10]}                  # one more bucket: overflow
    {"available": false, "detail": "no data yet"}            # cannot tell: missing

A non-zero exit, a timeout (the process group is killed), output that is not one JSON
object, or numbers that make no sense raise SignalError carrying the tail of stderr. A
`null`/NaN count means "cannot tell" and yields `Observation.missing`, never a pass.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import math
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from pydantic import BaseModel, ConfigDict, Field

from immunity.config import resolve_path
from immunity.config.types import Duration
from immunity.domain import Cohort, HostRef, Observation
from immunity.errors import PreflightError, SignalError
from immunity.signals._gather import gather
from immunity.signals.base import RecentTraffic

_TAIL = 600  # characters of stderr kept in an error
RECENT_TRAFFIC_S = 60.0
"""Preflight runs the command once over this last stretch."""


class CommandSettings(BaseModel):
    """The `kind: command` block of immunity.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "command"
    """The signal's name, as checks refer to it (`checks[].signal`)."""
    command: list[str] = Field(min_length=1)
    """argv; a first element with a slash is relative to the config file's folder."""
    timeout: Duration = 10.0
    """Per run; past it the process group is killed and the look raises SignalError."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for the command (secrets via `${ENV}` interpolation)."""
    delay: Duration = 0.0
    """How long after a window its data is complete where the command reads it (a metrics
    store's scrape or ingest lag); the bake asks for each window that much later."""


def whole_seconds(t: dt.datetime) -> dt.datetime:
    """`t` rounded down to its whole second (UTC): every window edge the command sees."""
    return dt.datetime.fromtimestamp(math.floor(t.timestamp()), dt.UTC)


def iso_z(t: dt.datetime) -> str:
    """`2026-05-04T12:30:05.000Z`: aware UTC, milliseconds, a Z."""
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cohort_input(
    signal_name: str, cohort: Cohort, hosts: Sequence[HostRef], start: dt.datetime, end: dt.datetime
) -> tuple[bytes, dict[str, str]]:
    """What the command receives: the stdin JSON and the IMMUNITY_* variables."""
    payload = {
        "signal": signal_name,
        "cohort": str(cohort),
        "start": iso_z(start),
        "end": iso_z(end),
        "start_epoch": start.timestamp(),
        "end_epoch": end.timestamp(),
        "hosts": [
            {
                "name": h.name,
                "address": h.address,
                "port": h.port,
                "lb_id": h.balancer_id,
                "scheme": h.scheme,
                "meta": dict(h.meta),
            }
            for h in hosts
        ],
    }
    env = {
        "IMMUNITY_SIGNAL": signal_name,
        "IMMUNITY_COHORT": str(cohort),
        "IMMUNITY_HOSTS": ",".join(h.name for h in hosts),
        "IMMUNITY_ADDRESSES": ",".join(f"{h.address}:{h.port}" for h in hosts),
        "IMMUNITY_START": iso_z(start),
        "IMMUNITY_END": iso_z(end),
        "IMMUNITY_START_EPOCH": str(round(start.timestamp())),
        "IMMUNITY_END_EPOCH": str(round(end.timestamp())),
    }
    return json.dumps(payload, default=str).encode(), env


class _Bad(ValueError):
    """The command's answer does not make sense."""


def _count(doc: Mapping[str, Any], key: str) -> int | None:
    v = doc.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isinf(v) or v < 0:
        raise _Bad(f"{key!r} must be a count >= 0, got {v!r}")
    if isinstance(v, float) and not v.is_integer():
        # rates or extrapolated counts: round, as the Prometheus source does
        return round(v)
    return int(v)


def parse_output(stdout: bytes, hosts: int) -> Observation:
    """The command's stdout -> an Observation; raises _Bad when it is not a valid answer."""
    text = stdout.decode(errors="replace").strip()
    if not text:
        raise _Bad("printed nothing on stdout (expected one JSON object)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(
            f"stdout is not one JSON object ({exc.msg} at char {exc.pos}): {text[:120]!r}"
        ) from None
    if not isinstance(doc, dict):
        raise _Bad(f"stdout must be a JSON object, got {type(doc).__name__}")
    detail = str(doc.get("detail") or "")
    if doc.get("available", True) is False:
        return Observation.missing(detail or "the command could not tell")
    requests, errors = _count(doc, "requests"), _count(doc, "errors")
    if requests is None or errors is None:
        return Observation.missing(detail or "the command reported no request or error count")
    if errors > requests:
        raise _Bad(f"errors ({errors}) > requests ({requests})")
    bounds = doc.get("latency_bounds_ms") or []
    raw_buckets = doc.get("latency_buckets") or []
    buckets: list[int] = []
    if bounds or raw_buckets:
        if not isinstance(bounds, list) or not all(
            isinstance(b, int | float) and not isinstance(b, bool) for b in bounds
        ):
            raise _Bad("latency_bounds_ms must be numbers")
        if any(b2 <= b1 for b1, b2 in itertools.pairwise(bounds)):
            raise _Bad("latency_bounds_ms must increase")
        if not isinstance(raw_buckets, list) or len(raw_buckets) != len(bounds) + 1:
            raise _Bad(
                f"latency_buckets needs len(latency_bounds_ms) + 1 = {len(bounds) + 1} counts "
                f"(the last is the overflow), got {raw_buckets!r}"
            )
        for b in raw_buckets:
            c = _count({"bucket": b}, "bucket")
            if c is None:
                return Observation.missing(detail or "a latency bucket is null/NaN")
            buckets.append(c)
    return Observation(
        requests=requests,
        errors=errors,
        latency_bounds_ms=tuple(float(b) for b in bounds),
        latency_buckets=tuple(buckets),
        hosts=hosts,
        detail=detail,
    )


def _tail(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return ("\u2026" + text[-_TAIL:]) if len(text) > _TAIL else text


class CommandSource:
    """Per-cohort observations from an external command."""

    Settings = CommandSettings

    def __init__(self, settings: CommandSettings, *, base_dir: Path | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        self.delay = settings.delay
        self.resolution = 1.0
        """Windows are whole seconds (see the module docstring)."""
        self.recent_traffic: RecentTraffic | None = None
        """What preflight counted of the hosts' last minute (for the cross-check)."""
        self.base_dir = base_dir or Path.cwd()
        argv = list(settings.command)
        if "/" in argv[0] and not os.path.isabs(argv[0]):
            argv[0] = str(resolve_path(self.base_dir, argv[0]))
        self.argv = argv

    def _error(self, what: str, stderr: bytes = b"") -> SignalError:
        tail = _tail(stderr)
        return SignalError(
            f"{self.name}: command {self.argv[0]} {what}" + (f"; stderr: {tail}" if tail else ""),
            adapter="command",
            context={"signal": self.name},
        )

    async def _run(self, stdin: bytes, env: Mapping[str, str]) -> tuple[int, bytes, bytes]:
        """Run once; kill the whole process group on timeout or cancellation."""
        stdout = bytearray()
        stderr = bytearray()
        try:
            process = await anyio.open_process(
                self.argv,
                cwd=self.base_dir,
                env={**os.environ, **self.settings.env, **env},
                start_new_session=True,  # its own process group: a timeout kills children too
            )
        except OSError as exc:
            raise self._error(f"cannot be started: {exc.strerror or exc}") from exc

        async def drain(stream: Any, into: bytearray) -> None:
            async for chunk in stream:
                into.extend(chunk)

        async def feed() -> None:
            assert process.stdin is not None
            try:
                await process.stdin.send(stdin)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the command did not read its stdin: fine
            finally:
                await process.stdin.aclose()

        finished = False
        try:
            with anyio.fail_after(self.settings.timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(feed)
                    tg.start_soon(drain, process.stdout, stdout)
                    tg.start_soon(drain, process.stderr, stderr)
                    await process.wait()
            finished = True
        except TimeoutError:
            raise self._error(
                f"did not finish within {self.settings.timeout:g}s and was killed", bytes(stderr)
            ) from None
        finally:
            await _reap(process, kill=not finished)
        return int(process.returncode or 0), bytes(stdout), bytes(stderr)

    async def _observe_one(
        self, cohort: Cohort, hosts: Sequence[HostRef], start: dt.datetime, end: dt.datetime
    ) -> Observation:
        if not hosts:
            return Observation.missing("no hosts in this cohort")
        start, end = whole_seconds(start), whole_seconds(end)
        if end <= start:
            return Observation(0, 0, hosts=len(hosts), detail="no whole second in this window yet")
        stdin, env = cohort_input(self.name, cohort, hosts, start, end)
        code, out, err = await self._run(stdin, env)
        if code != 0:
            raise self._error(f"exited with status {code} for the {cohort} cohort", err)
        try:
            return parse_output(out, len(hosts))
        except _Bad as exc:
            raise self._error(
                f"gave an invalid answer for the {cohort} cohort: {exc}", err
            ) from None

    async def observe(
        self,
        cohorts: Mapping[Cohort, Sequence[HostRef]],
        start: dt.datetime,
        end: dt.datetime,
    ) -> dict[Cohort, Observation]:
        """Observations for each cohort over [start, end). Caller owns the deadline."""
        return await gather(
            {c: self._observe_one(c, hosts, start, end) for c, hosts in cohorts.items()}
        )

    async def preflight(self, hosts: Sequence[HostRef]) -> str:
        """The command exists, is executable, and answers once for every host (as the
        baseline cohort) over the last minute before its delay; returns what it saw, in one
        sentence, or plainly that it sees no traffic or cannot tell.

        Raises PreflightError when it is missing, fails, or answers something invalid.
        """
        problem = self._missing_executable()
        if problem is not None:
            message, hint = problem
            raise PreflightError(f"{self.name}: {message}", hint=hint)
        end = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.settings.delay)
        end = end.replace(microsecond=0)  # windows are whole seconds
        start = end - dt.timedelta(seconds=RECENT_TRAFFIC_S)
        try:
            obs = await self._observe_one(Cohort.BASELINE, hosts, start, end)
        except SignalError as exc:
            raise PreflightError(
                f"{exc.message} (run once at preflight, for all {len(hosts)} host(s) over the "
                f"last {RECENT_TRAFFIC_S:g} s)",
                hint="run it by hand as docs/adapters/command.md shows ('Try it by hand')",
            ) from exc
        self.recent_traffic = RecentTraffic(
            obs.requests if obs.available else None,
            start,
            end,
            settle_s=self.settings.delay + self.resolution + 1.0,
        )
        if not obs.available:
            return f"{self.name}: the command cannot tell what the hosts serve now: {obs.detail}"
        if obs.requests == 0:
            return (
                f"{self.name}: the command counts no request on the {len(hosts)} host(s) in "
                f"the last {RECENT_TRAFFIC_S:g} s: there is no current traffic to judge"
            )
        return (
            f"{self.name}: the command counts {obs.requests} request(s) ({obs.errors} errors) "
            f"on the {len(hosts)} host(s) in the last {RECENT_TRAFFIC_S:g} s"
        )

    def _missing_executable(self) -> tuple[str, str] | None:
        exe = self.argv[0]
        if "/" not in exe:
            search = self.settings.env.get("PATH") or os.environ.get("PATH")
            if shutil.which(exe, path=search) is None:
                return (
                    f"command {exe!r} is not on PATH",
                    "give an absolute path, or a path relative to immunity.yaml",
                )
            return None
        if not os.path.isfile(exe):
            return (
                f"command {exe} does not exist",
                "paths in `command` are relative to the folder of immunity.yaml",
            )
        if not os.access(exe, os.X_OK):
            return (
                f"command {exe} is not executable",
                f"chmod +x {exe}, or put the interpreter first: [python3, {exe}]",
            )
        return None

    async def aclose(self) -> None:
        pass


async def _reap(process: Process, *, kill: bool) -> None:
    """Reap the command; when it did not finish, kill its whole process group first.

    The group also holds children that outlived the command and keep its pipes open. Its id
    cannot be reused by the kernel while any member lives. Shielded: runs when cancelled too.
    """
    with anyio.CancelScope(shield=True):
        if kill:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if hasattr(os, "killpg"):
                    os.killpg(process.pid, signal.SIGKILL)
                else:  # Windows: no process groups to signal; the command itself
                    process.kill()
        await process.aclose()
