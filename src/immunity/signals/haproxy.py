"""Per-cohort request, 5xx and latency counts from HAProxy (2.4+): its access log or its counters.

**Access log** (best: exact per-request counts and latency). Read from a file that HAProxy
(``log stdout format raw`` with ``-db``) or a syslog daemon (rsyslog, syslog-ng, socat)
writes, one line per request. Three line formats (``log_format``, ``auto`` by default tells
them apart line by line):

* ``httplog``: HAProxy's standard ``option httplog`` line (configuration manual §8.2.3),
  with or without a syslog prefix (RFC 3164 ``<134>Nov 26 09:49:23 haproxy[6579]:``, a
  file written by rsyslog, or RFC 5424)::

    10.0.1.2:33317 [06/Feb/2009:12:14:14.655] http-in static/srv1 10/0/30/69/109 200 2750 ...

  i.e. ``%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B ...``. The date is HAProxy's
  local time without an offset: ``timezone`` says which (the machine's by default). A request
  completes at ``%tr + %Ta``; its latency is ``%Ta``. HAProxy 1.x lines (``[%t]`` and
  ``%Tq/%Tw/%Tc/%Tr/%Tt``) have the same shape and read the same way.
* ``json``: one JSON object per line (anything before the first ``{``, such as a syslog
  prefix, is skipped). The keys are named by ``fields``; the defaults are the sandbox's
  ``log-format``::

    {"ts":%Ts.%ms,"be":"%b","srv":"%s","st":%ST,"Ta":%Ta,"Tt":%Tt,...}

  ``fields.timestamp`` may hold epoch seconds (a number or a numeric string; values above
  1e11 are read as milliseconds), HAProxy's date (``%t``/``%tr``:
  ``06/Feb/2009:12:14:14.655``, optionally followed by `` +0100`` as ``%trl`` writes it)
  or ISO 8601. A request completes at timestamp + ``fields.duration`` (ms; default the
  latency field), and its latency is ``fields.latency`` (ms).

A request counts in the window holding its *completion* time: windows that follow each
other count each request once. An httplog line seen twice (client ip:port, date to the
millisecond and timers all equal: HAProxy logging to the file through two `log` targets)
is one request: the copy is dropped, not counted again. Every status >= 500 on a server counts as an error,
including the 502/503/504 that HAProxy answers for that server. Requests with no server
(``<NOSRV>``), no status (``-1``: the client left) or another backend (when the line names
its backend and ``backend`` is set) are not counted. HAProxy's own notices (``Server
be_app/h1 is DOWN``, ``[NOTICE]``...) are skipped; any other line that does not parse is
reported: at preflight when recent lines do not parse (exit 2 naming the file, the line
and the fields expected), during the bake as a look with a partial answer (missing).

The file is tailed incrementally in a worker thread and kept open like `tail -F`: after a
rotation the old file's last lines are read first; a truncation in place loses what was
written since the last read, and windows before it are partial (missing). Requests are aggregated per server into 0.1 s bins kept for
`retention` seconds, so memory does not grow with traffic; windows are partitioned by bin:
the source declares `resolution` 0.1 s (the bake asks for windows whose edges are bin
edges) and `delay` 0.25 s (a request's line is in the file by then), so consecutive looks
count each request once.

**Counters** (no access log): ``show stat`` per server, counted as the access log counts:
requests ``req_tot`` + (``eresp`` - ``srv_abrt``) and errors ``hrsp_5xx`` + (``eresp`` -
``srv_abrt``). A 502 or 504 HAProxy answers for a server (broken connection, server
timeout) is an ``eresp`` with neither a ``req_tot`` nor an ``hrsp_5xx``; a transfer the
server aborted after sending its status is in ``srv_abrt`` (part of ``eresp``) and already
in ``req_tot``. Each look diffs a snapshot against the
previous one. A bake takes the snapshot that opens its first window when it starts
(`begin`), so its first look counts; a previous snapshot that does not reach back to the
window's start (a look skipped, a `begin` that failed) is stale, and that look is rejected.
No latency.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import json
import logging
import math
import os
import re
import time
import zoneinfo
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, field_validator

from immunity.clients.haproxy import HAProxyClient
from immunity.config import resolve_path
from immunity.config.types import Duration, LatencyBounds
from immunity.domain import Cohort, HostCounts, HostRef, Observation
from immunity.errors import BalancerError, PreflightError, SignalError
from immunity.signals.base import RecentTraffic

ADAPTER = "haproxy"
log = logging.getLogger("immunity.signals.haproxy")

# On first open of a large log, read only its tail: older lines are past any window we keep.
_MAX_BACKLOG_BYTES = 64 * 1024 * 1024
_CHUNK = 4 * 1024 * 1024
_BIN_S = 0.1
_LOG_DELAY_S = 0.25
"""How long after a request completes its log line is surely in the file (HAProxy writes it
as the answer leaves; the write and our read of it take a few ms, more on a busy machine)."""
_EDGE_SLACK_BINS = 1e-4
"""A window edge within this share of a bin (10 µs) of a bin's start is that start: edges
aligned to bins come back from epoch floats a few µs off."""
_DEDUP_LINES = 100_000
"""httplog lines remembered to drop a request logged twice (bounded memory)."""
_RECENT_BYTES = 256 * 1024
_RECENT_LINES = 200
RECENT_TRAFFIC_S = 60.0
"""Preflight calls traffic older than this "no current traffic"."""
MAX_SKEW_S = 300.0
"""A request dated this far from the time its line was written: the wrong timezone or clock."""
MAX_UNPARSED_SHARE = 0.01
"""A look whose new lines hold more unparsed request lines than this share is partial."""

LogFormat = Literal["auto", "httplog", "json"]

_loads = json.JSONDecoder().decode
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}
_HTTPLOG = re.compile(
    r"(?P<client>\S+):\d+ \[(?P<date>\d{1,2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2}(?:\.\d+)?)\] "
    r"\S+ (?P<be>[^\s/]+)/(?P<srv>\S+) "
    r"-?\d+/-?\d+/-?\d+/-?\d+/\+?(?P<ta>-?\d+) (?P<st>-?\d+) "
)
_HAPROXY_DATE = re.compile(
    r"^(\d{1,2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?: ([+-])(\d{2}):?(\d{2}))?$"
)
# HAProxy's own lines on stdout/syslog: state changes and startup messages, not requests.
# HAProxy's own messages (server and proxy state changes, health checks) land in the same
# log as the requests: "Server be_app/h1 is DOWN, ...", "... enters drain state", "... leaves
# drain state", "... was DOWN and now enters maintenance", "... is going DOWN for maintenance".
_NOTICE = re.compile(
    r"\[(NOTICE|WARNING|ALERT)\]|\b(Server|Proxy|[Bb]ackend|(Health|Agent) check for server) "
    r"\S+ (is|has|was|enters|leaves|started|stopped|paused|resumed|succeeded|failed|going)\b|"
    r"\bProxy \S+ started|Connect from |haproxy\[\d+\]: *$"
)
HTTPLOG_EXPECTED = (
    "HAProxy's `option httplog` line: CLIENT:PORT [DATE] FRONTEND BACKEND/SERVER "
    "TR/Tw/Tc/Tr/Ta STATUS BYTES ... (log-format %ci:%cp [%tr] %ft %b/%s "
    "%TR/%Tw/%Tc/%Tr/%Ta %ST %B ...)"
)


class LogFields(BaseModel):
    """JSON access-log keys (`log_format: json`); defaults are the sandbox's log-format."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    server: str = "srv"
    """HAProxy server name (%s); "backend/server" (%b/%s) also works."""
    status: str = "st"
    """HTTP status (%ST)."""
    timestamp: str = "ts"
    """When the request started: epoch seconds (%Ts.%ms), HAProxy's date (%tr, %t) or ISO 8601."""
    latency: str = "Ta"
    """Latency in ms (%Ta, or %Tt / %Tr as you prefer)."""
    duration: str | None = "Tt"
    """ms from `timestamp` to the request's completion; the latency field when absent."""
    backend: str | None = "be"
    """Backend name (%b), used to keep only `backend`'s requests when present in a line."""

    def expected(self) -> str:
        return (
            f"a JSON object with server {self.server!r}, status {self.status!r}, timestamp "
            f"{self.timestamp!r} (epoch seconds, HAProxy's dd/Mon/yyyy:HH:MM:SS.mmm or ISO "
            f"8601) and latency {self.latency!r} (ms)"
        )


def _tz(name: str) -> dt.tzinfo | None:
    """None means the machine's local time (what HAProxy writes unless told otherwise)."""
    if name == "local":
        return None
    m = re.fullmatch(r"(?:UTC)?([+-])(\d{1,2}):?(\d{2})", name)
    if m:
        sign = 1 if m.group(1) == "+" else -1
        return dt.timezone(sign * dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
    if name.upper() in ("UTC", "Z", "GMT"):
        return dt.UTC
    return zoneinfo.ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class LogRecord:
    end: float  # unix seconds of completion
    server: str
    status: int
    latency_ms: float
    backend: str | None = None
    key: str | None = None
    """httplog: the line from the client's ip:port on, unique per request (the same key
    twice is one request logged twice)."""


class Unparsed(str):
    """Why a line did not parse (a str, so `parse` can return it without raising)."""

    __slots__ = ()


class LogParser:
    """One access-log line -> LogRecord (counted), None (not a request) or Unparsed."""

    def __init__(
        self, fmt: LogFormat = "auto", fields: LogFields | None = None, timezone: str = "local"
    ) -> None:
        self.fmt = fmt
        self.fields = fields or LogFields()
        self.tz = _tz(timezone)
        self._minutes: dict[str, float] = {}
        f = self.fields
        self._keys = (f.server, f.status, f.timestamp, f.latency, f.duration, f.backend)

    def expected(self) -> str:
        if self.fmt == "httplog":
            return HTTPLOG_EXPECTED
        if self.fmt == "json":
            return self.fields.expected()
        return f"{HTTPLOG_EXPECTED}, or {self.fields.expected()}"

    # -- dates --

    def haproxy_date(self, text: str) -> float | None:
        """`06/Feb/2009:12:14:14.655` (+ optional ` +0100`) -> unix seconds, or None."""
        m = _HAPROXY_DATE.match(text)
        if m is None:
            return None
        day, mon, year, hh, mm, ss, frac, sign, oh, om = m.groups()
        month = _MONTHS.get(mon)
        if month is None:
            return None
        fraction = float("0." + frac) if frac else 0.0
        if sign is not None:
            offset = (int(oh) * 60 + int(om)) * 60 * (1 if sign == "+" else -1)
            base = calendar.timegm((int(year), month, int(day), int(hh), int(mm), 0)) - offset
            return base + int(ss) + fraction
        key = text[:17]
        base_m = self._minutes.get(key)
        if base_m is None:
            naive = dt.datetime(int(year), month, int(day), int(hh), int(mm))
            base_m = (
                naive.timestamp() if self.tz is None else naive.replace(tzinfo=self.tz).timestamp()
            )
            if len(self._minutes) > 4096:
                self._minutes.clear()
            self._minutes[key] = base_m
        return base_m + int(ss) + fraction

    def timestamp(self, value: object) -> float | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            t = float(value)
        elif isinstance(value, str):
            try:
                t = float(value)
            except ValueError:
                got = self.haproxy_date(value)
                if got is not None:
                    return got
                try:
                    d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    return None
                if d.tzinfo is None:
                    d = d.replace(tzinfo=self.tz) if self.tz is not None else d.astimezone()
                return d.timestamp()
        else:
            return None
        if not math.isfinite(t) or t <= 0:
            return None
        return t / 1000.0 if t > 1e11 else t  # epoch milliseconds

    # -- lines --

    def parse(self, line: str | bytes) -> LogRecord | Unparsed | None:
        if isinstance(line, bytes):
            line = line.decode(errors="replace")
        line = line.strip()
        if not line:
            return None
        brace = line.find("{") if self.fmt != "httplog" else -1
        if brace >= 0:
            return self._json(line[brace:])
        if self.fmt != "json":
            m = _HTTPLOG.search(line)
            if m is not None:
                return self._httplog(m)
        if _NOTICE.search(line):
            return None
        return Unparsed("no JSON object in the line" if self.fmt == "json" else "unknown line")

    def _httplog(self, m: re.Match[str]) -> LogRecord | Unparsed | None:
        server, status = m.group("srv"), int(m.group("st"))
        if status < 100 or server.startswith("<"):
            return None
        start = self.haproxy_date(m.group("date"))
        if start is None:
            return Unparsed(f"bad date {m.group('date')!r}")
        ta = max(int(m.group("ta")), 0)
        return LogRecord(
            start + ta / 1000.0, server, status, float(ta), m.group("be"), m.string[m.start() :]
        )

    def _json(self, text: str) -> LogRecord | Unparsed | None:
        k_server, k_status, k_ts, k_latency, k_duration, k_backend = self._keys
        try:
            obj = _loads(text)
        except ValueError as exc:
            return Unparsed(f"not JSON ({exc})")
        if type(obj) is not dict:
            return Unparsed("not a JSON object")
        try:
            server = obj[k_server]
            raw_status = obj[k_status]
            raw_ts = obj[k_ts]
            raw_latency = obj[k_latency]
        except KeyError:
            missing = [k for k in (k_server, k_status, k_ts, k_latency) if k not in obj]
            return Unparsed(f"no {', '.join(repr(k) for k in missing)} key")
        server = str(server) if server else ""
        backend = obj.get(k_backend) if k_backend else None
        if "/" in server:
            backend, server = server.split("/", 1)
        try:
            status = int(raw_status)
        except (TypeError, ValueError):
            return Unparsed(f"status {raw_status!r} is not a number")
        if status < 100 or not server or server[0] == "<" or server == "-":
            return None
        start = raw_ts if type(raw_ts) is float and raw_ts > 0 else self.timestamp(raw_ts)
        if start is None:
            return Unparsed(f"timestamp {raw_ts!r} is not a date")
        if start > 1e11:
            start /= 1000.0  # epoch milliseconds
        try:
            latency = float(raw_latency)
            duration = float(obj.get(k_duration, latency)) if k_duration else latency
        except (TypeError, ValueError):
            return Unparsed(f"latency {raw_latency!r} is not a number of ms")
        if not (math.isfinite(latency) and math.isfinite(duration)):
            return Unparsed(f"latency {raw_latency!r} is not a number of ms")
        return LogRecord(
            start + (duration if duration > 0.0 else 0.0) / 1000.0,
            server,
            status,
            latency if latency > 0.0 else 0.0,
            None if backend is None else str(backend),
        )


def parse_line(line: str | bytes) -> LogRecord | None:
    """One line in any of the default formats -> LogRecord, or None when it is not counted."""
    got = LogParser().parse(line)
    return got if isinstance(got, LogRecord) else None


@dataclass
class Counts:
    """One server's counts: requests, 5xx, and the latency histogram (bounds + overflow)."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=list)


@dataclass
class PollStats:
    lines: int = 0
    requests: int = 0
    skipped: int = 0
    unparsed: int = 0
    duplicated: int = 0
    first_unparsed: tuple[int, str, str] | None = None  # (byte offset, line, why)


class LogTail:
    """Incremental reader of a growing log file, aggregating per server into 0.1 s bins.

    Synchronous (file reads): call `poll` from a worker thread.
    """

    def __init__(
        self,
        path: Path,
        retention: float,
        *,
        parser: LogParser | None = None,
        bounds: Sequence[float] = (),
        backend: str | None = None,
    ) -> None:
        self.path = path
        self.retention = retention
        self.parser = parser or LogParser()
        self.bounds = list(bounds)
        self.backend = backend
        self.offset: int | None = None
        self.fh: BinaryIO | None = None
        self.opened = False
        self.skip_first = False
        self.cut_backlog = False
        self.complete_from: float | None = None
        """Requests completed before this (unix s) may be missing (backlog not read,
        retention, a truncation): a window starting earlier is partial."""
        self.partial = b""
        self.keys: list[int] = []  # sorted bin indexes
        self.bins: dict[int, dict[str, Counts]] = {}
        self.newest_end: float | None = None
        self.other_backends: set[str] = set()
        self.recent_keys: set[str] = set()
        self.recent_order: deque[str] = deque()
        self.duplicated = 0

    def poll(self) -> PollStats:
        """Read what was appended since the last poll. Raises OSError when unreadable.

        The file stays open between polls, as `tail -F` does: when it is rotated (renamed
        and a new one created), the old file's last lines are read before the new file from
        its start. When it is truncated in place (copytruncate), lines written between the
        last read and the truncation are lost: windows before now are then partial
        (`complete_from`).
        """
        stats = PollStats()
        st = os.stat(self.path)
        if self.fh is not None:
            cur = os.fstat(self.fh.fileno())
            if (cur.st_ino, cur.st_dev) != (st.st_ino, st.st_dev):
                self._read(stats)  # the rotated file's last lines
                self.close()
            elif cur.st_size < (self.offset or 0):
                self.fh.seek(0)
                self.offset = 0
                self.partial = b""
                self._lost_until(time.time())
        if self.fh is None:
            self.fh = open(self.path, "rb")  # noqa: SIM115 - kept open across polls
            size = os.fstat(self.fh.fileno()).st_size
            begin = max(0, size - _MAX_BACKLOG_BYTES) if not self.opened else 0
            self.opened = True
            self.fh.seek(begin)
            self.offset = begin
            self.partial = b""
            self.skip_first = begin > 0  # we start mid-line
            self.cut_backlog = begin > 0
        self._read(stats)
        return stats

    def _read(self, stats: PollStats) -> None:
        assert self.fh is not None
        while chunk := self.fh.read(_CHUNK):
            offset = self.offset or 0
            base = offset - len(self.partial)
            self.offset = offset + len(chunk)
            data = self.partial + chunk
            lines = data.split(b"\n")
            self.partial = lines.pop()
            if self.skip_first and lines:
                base += len(lines[0]) + 1
                lines = lines[1:]
                self.skip_first = False
            for raw in lines:
                self._line(raw, base, stats)
                base += len(raw) + 1

    def _lost_until(self, t: float) -> None:
        """Requests completed before `t` may be missing from the counts."""
        self.complete_from = t if self.complete_from is None else max(self.complete_from, t)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def _line(self, raw: bytes, at: int, stats: PollStats) -> None:
        stats.lines += 1
        got = self.parser.parse(raw)
        if isinstance(got, LogRecord):
            if self.backend is not None and got.backend is not None and got.backend != self.backend:
                self.other_backends.add(got.backend)
                stats.skipped += 1
                return
            if got.key is not None:
                if got.key in self.recent_keys:
                    stats.duplicated += 1  # one request logged twice (two `log` targets)
                    self.duplicated += 1
                    return
                self.recent_keys.add(got.key)
                self.recent_order.append(got.key)
                if len(self.recent_order) > _DEDUP_LINES:
                    self.recent_keys.discard(self.recent_order.popleft())
            stats.requests += 1
            if self.cut_backlog:
                self.cut_backlog = False
                self._lost_until(got.end)  # older lines were not read
            self.add(got)
        elif got is None:
            stats.skipped += 1
        else:
            stats.unparsed += 1
            if stats.first_unparsed is None:
                stats.first_unparsed = (at, raw.decode(errors="replace").strip(), str(got))

    def add(self, r: LogRecord) -> None:
        key = math.floor(r.end / _BIN_S)
        per = self.bins.get(key)
        if per is None:
            per = self.bins[key] = {}
            if not self.keys or key > self.keys[-1]:
                self.keys.append(key)
            else:
                bisect.insort(self.keys, key)
            self._prune()
        c = per.get(r.server)
        if c is None:
            c = per[r.server] = Counts(buckets=[0] * (len(self.bounds) + 1))
        c.requests += 1
        if r.status >= 500:
            c.errors += 1
        c.buckets[bisect.bisect_left(self.bounds, r.latency_ms)] += 1
        if self.newest_end is None or r.end > self.newest_end:
            self.newest_end = r.end

    def _prune(self) -> None:
        horizon = self.keys[-1] - math.ceil(self.retention / _BIN_S)
        cut = bisect.bisect_left(self.keys, horizon)
        if cut:
            for k in self.keys[:cut]:
                del self.bins[k]
            del self.keys[:cut]
            self._lost_until(horizon * _BIN_S)

    def window(self, start: float, end: float) -> dict[str, Counts]:
        """Per server, requests completed in the bins starting in [start, end)."""
        lo = bisect.bisect_left(self.keys, math.ceil(start / _BIN_S - _EDGE_SLACK_BINS))
        hi = bisect.bisect_left(self.keys, math.ceil(end / _BIN_S - _EDGE_SLACK_BINS))
        out: dict[str, Counts] = {}
        for k in self.keys[lo:hi]:
            for server, c in self.bins[k].items():
                acc = out.get(server)
                if acc is None:
                    acc = out[server] = Counts(buckets=[0] * len(c.buckets))
                acc.requests += c.requests
                acc.errors += c.errors
                acc.buckets = [a + b for a, b in zip(acc.buckets, c.buckets, strict=True)]
        return out


@dataclass
class RecentSample:
    """The last lines of a log, classified (preflight)."""

    records: list[LogRecord] = field(default_factory=list)
    unparsed: list[tuple[int, str, str]] = field(default_factory=list)  # (line no, text, why)
    lines: int = 0
    last_is_request: bool = False
    """The file's last line is a request (not one of HAProxy's own messages written later)."""
    capped: bool = False
    """Lines before the first one kept were not read (the read stops at `lines` lines or
    `_RECENT_BYTES`), so counts over a time span are lower bounds."""


def sample_recent(path: Path, parser: LogParser, lines: int = _RECENT_LINES) -> RecentSample:
    """Parse the last `lines` lines of `path` (sync). Line numbers count from 1."""
    size = os.path.getsize(path)
    start = max(0, size - _RECENT_BYTES)
    with open(path, "rb") as f:
        before = 0
        if start:
            remaining = start
            while remaining:
                block = f.read(min(_CHUNK, remaining))
                if not block:
                    break
                before += block.count(b"\n")
                remaining -= len(block)
        f.seek(start)
        data = f.read()
    raw = data.split(b"\n")
    if start:
        raw = raw[1:]  # a partial first line
        before += 1
    if raw and raw[-1] == b"":
        raw.pop()
    first_no = before + 1
    keep = raw[-lines:]
    first_no += len(raw) - len(keep)
    out = RecentSample(lines=len(keep), capped=bool(start) or len(raw) > len(keep))
    for i, line in enumerate(keep):
        got = parser.parse(line)
        if isinstance(got, LogRecord):
            out.records.append(got)
        elif got is not None:
            out.unparsed.append((first_no + i, line.decode(errors="replace").strip(), str(got)))
        if line.strip():
            out.last_is_request = isinstance(got, LogRecord)
    return out


class HAProxySource:
    """`SignalSource` over HAProxy's access log, or its ``show stat`` counters."""

    class Settings(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        name: str = "haproxy"
        """The signal's name, as checks refer to it (`checks[].signal`)."""
        socket: str | None = None
        """Runtime API socket; needed when `access_log` is not set (counter mode)."""
        backend: str = "be_app"
        """The backend whose servers are the fleet; its requests are the ones counted."""
        access_log: str | None = None
        """Access log file written by HAProxy (`log stdout format raw` with `-db`) or a syslog
        daemon, one line per request, as `log_format` says. `httplog`: HAProxy's `option
        httplog` line, `%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B ...`, a syslog
        prefix allowed, dates in `timezone`. `json`: one object per line whose keys `fields`
        names; by default the sandbox's `log-format
        '{"ts":%Ts.%ms,"be":"%b","srv":"%s","st":%ST,"Ta":%Ta,"Tt":%Tt,...}'` (ts in epoch
        seconds; also HAProxy's date or ISO 8601). A request counts when it completes (its
        date + `%Ta`), with latency `%Ta` ms; a status of 500 or more is an error; `<NOSRV>`,
        status -1 and other backends are not counted. `immunity sandbox up --log-format
        httplog` (or `json`, the default) writes either. Unset: counter mode (`socket`)."""
        log_format: LogFormat = "auto"
        """httplog (`option httplog` lines), json, or auto (either, line by line)."""
        fields: LogFields = Field(default_factory=LogFields)
        """JSON keys for server, status, timestamp, latency (and duration, backend)."""
        timezone: str = "local"
        """Zone of HAProxy dates without an offset (%tr, %t): local, UTC, +05:30, Europe/Paris."""
        latency_bounds_ms: LatencyBounds = Field(
            # Fine at the low end: a fast app's p50 and p90 must fall in different buckets
            # or a latency threshold snapped to a bound says nothing.
            default_factory=lambda: [
                1.0,
                2.0,
                3.0,
                4.0,
                5.0,
                7.0,
                10.0,
                15.0,
                20.0,
                30.0,
                50.0,
                75.0,
                100.0,
                150.0,
                250.0,
                500.0,
                1000.0,
                2500.0,
                5000.0,
                10000.0,
            ]
        )
        """Histogram bucket bounds (ms) for the latency checks."""
        retention: Duration = 900.0
        """How long log counts are kept in memory (the longest window asked for)."""

        @field_validator("timezone")
        @classmethod
        def _timezone(cls, v: str) -> str:
            try:
                _tz(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(
                    f'expected local, UTC, an offset such as "+05:30" or a zone name such as '
                    f'"Europe/Paris", got {v!r}'
                ) from exc
            return v

    def __init__(self, settings: HAProxySource.Settings, *, base_dir: Path) -> None:
        self.settings = settings
        self.name = settings.name
        self.bounds = list(settings.latency_bounds_ms)  # sorted by LatencyBounds
        self.parser = LogParser(settings.log_format, settings.fields, settings.timezone)
        # The backend filter applies only when it was set: a log's backend names are the
        # user's, and the default `be_app` is the sandbox's.
        backend = settings.backend if "backend" in settings.model_fields_set else None
        self.tail = (
            LogTail(
                resolve_path(base_dir, settings.access_log),
                settings.retention,
                parser=self.parser,
                bounds=self.bounds,
                backend=backend,
            )
            if settings.access_log
            else None
        )
        self.client = (
            HAProxyClient(resolve_path(base_dir, settings.socket)) if settings.socket else None
        )
        self.delay = _LOG_DELAY_S if self.tail is not None else 0.0
        """Seconds after which a window's data is complete: a log line is written just
        after its answer leaves (`_LOG_DELAY_S` covers that), counters count at once."""
        self.resolution = _BIN_S if self.tail is not None else 0.0
        """The access log counts in 0.1 s bins: window edges on bin edges, so a bin is
        never split between two windows (its later requests would be lost to both)."""
        self._lock = anyio.Lock()
        self.recent_traffic: RecentTraffic | None = None
        """The hosts' requests the access log showed from the last `RECENT_TRAFFIC_S` at
        preflight (None: not read, or counter mode: the counters are the balancer's own
        view); preflight cross-checks a 0 with the balancer's counters."""
        # counter mode: (unix time, {server: (requests, errors)})
        self.snapshots: list[tuple[float, dict[str, tuple[int, int]]]] = []
        if self.tail is None and self.client is None:
            raise SignalError(f"signal {self.name!r}: set access_log or socket", adapter=ADAPTER)

    # -- preflight --

    async def preflight(self, hosts: Sequence[HostRef]) -> str:
        """The log reads and its recent lines parse (or the counters answer); returns what
        the source sees of the hosts' current traffic, in one sentence.

        Raises PreflightError naming the file, the first line that did not parse and the
        fields expected, or the servers the log names when none is a configured host.
        """
        if self.tail is None:
            try:
                snap = await self._snapshot()
            except SignalError as exc:
                raise PreflightError(f"signal {self.name!r}: {exc.message}", hint=exc.hint) from exc
            names = [h.balancer_id for h in hosts]
            absent = [n for n in names if n not in snap]
            if absent:
                raise PreflightError(
                    f"signal {self.name!r}: backend {self.settings.backend} has no server "
                    f"{', '.join(absent)} (it has {', '.join(sorted(snap)) or 'none'})",
                    hint="set backend, or each host's lb_id to its HAProxy server name",
                )
            total = sum(snap[n][0] for n in names)
            return (
                f"{self.name}: show stat counters of {len(names)} server(s) answer "
                f"({total} requests so far); no latency without an access log"
            )
        tail = self.tail
        read_at = dt.datetime.now(dt.UTC)
        async with self._lock:
            try:
                sample = await anyio.to_thread.run_sync(sample_recent, tail.path, self.parser)
                await anyio.to_thread.run_sync(tail.poll)
            except OSError as exc:
                raise PreflightError(
                    f"signal {self.name!r}: cannot read HAProxy access log {tail.path}: "
                    f"{exc.strerror or exc}",
                    hint="check signals[].access_log and that HAProxy logs there",
                ) from exc
        said, recent = self._judge_sample(sample, hosts)
        end = read_at - dt.timedelta(seconds=self.delay)  # lines written by the read
        self.recent_traffic = RecentTraffic(
            recent,
            end - dt.timedelta(seconds=RECENT_TRAFFIC_S),
            end,
            settle_s=self.delay + self.resolution + 0.5,
        )
        if recent == 0 and self.client is not None:
            await self._cross_check(hosts)
        return said

    async def _cross_check(self, hosts: Sequence[HostRef]) -> None:
        """The access log saw no request of the hosts in the last `RECENT_TRAFFIC_S`: ask
        HAProxy's own counters (``show stat``: `lastsess`, seconds since the server was last
        given a session, and `req_tot`). When the balancer did serve the hosts meanwhile, the
        log is not this backend's (or HAProxy does not log there): PreflightError naming the
        file and the counts, else the judge would see only its own probe, never customers.
        A socket that does not answer proves nothing either way: the log's word stands."""
        assert self.tail is not None and self.client is not None
        try:
            stats = await self.client.show_stat(self.settings.backend)
        except BalancerError:
            return
        served: list[str] = []
        for h in hosts:
            st = stats.get(h.balancer_id)
            if st is None:
                continue
            try:
                last = int(st.raw.get("lastsess") or -1)
            except ValueError:
                continue
            if 0 <= last < RECENT_TRAFFIC_S:
                served.append(f"{h.name} {last} s ago ({st.req_tot} requests in all)")
        if served:
            raise PreflightError(
                f"signal {self.name!r}: {self.tail.path} shows no request in the last "
                f"{RECENT_TRAFFIC_S:g} s, but HAProxy's counters (show stat, backend "
                f"{self.settings.backend}) say it gave the hosts requests meanwhile: last "
                f"session {', '.join(served)}; the judge would never see the customers",
                hint="point access_log at the file HAProxy writes this backend's requests to "
                "(its `log` target, or the syslog file behind it) with `option httplog` or a "
                "log-format; or drop access_log to judge from the counters",
                context={"adapter": ADAPTER, "file": str(self.tail.path)},
            )

    def _judge_sample(self, sample: RecentSample, hosts: Sequence[HostRef]) -> tuple[str, int]:
        """What the log shows of current traffic, and how many of the hosts' requests it
        holds from the last `RECENT_TRAFFIC_S`; PreflightError when it cannot be read right."""
        assert self.tail is not None
        path = self.tail.path
        considered = len(sample.records) + len(sample.unparsed)
        if sample.unparsed and (
            not sample.records or len(sample.unparsed) > MAX_UNPARSED_SHARE * considered
        ):
            no, text, why = sample.unparsed[0]
            raise PreflightError(
                f"signal {self.name!r}: {path}:{no}: the access log's line does not parse "
                f"({why}): {text[:200]!r}; {len(sample.unparsed)} of the last "
                f"{sample.lines} lines do not parse",
                hint=f"expected {self.parser.expected()}; set log_format, fields and "
                "timezone to match HAProxy's log-format",
                context={"adapter": ADAPTER, "file": str(path), "line": no},
            )
        skew = self._skew(sample.records, os.path.getmtime(path), sample.last_is_request)
        if skew is not None:
            raise PreflightError(
                f"signal {self.name!r}: {path}: {skew}",
                hint="set the signal's timezone to HAProxy's (local, UTC, +05:30, "
                "Europe/Paris) for %tr/%t dates; check both machines' clocks",
                context={"adapter": ADAPTER, "file": str(path)},
            )
        names = {h.balancer_id for h in hosts}
        backend = self.tail.backend
        ours = [
            r
            for r in sample.records
            if r.server in names and (backend is None or r.backend in (None, backend))
        ]
        if sample.records and not ours:
            servers = sorted({r.server for r in sample.records})
            backends = sorted({r.backend for r in sample.records if r.backend})
            raise PreflightError(
                f"signal {self.name!r}: {path}: the last {len(sample.records)} requests "
                f"were answered by server(s) {', '.join(servers[:10])}"
                + (f" of backend(s) {', '.join(backends[:5])}" if backends else "")
                + f", none of them a configured host ({', '.join(sorted(names))}"
                + (f" in backend {backend}" if backend else "")
                + ")",
                hint="set each host's lb_id to its HAProxy server name"
                + (", and the signal's backend" if backend else ""),
                context={"adapter": ADAPTER, "file": str(path)},
            )
        now = time.time()
        recent = [r for r in ours if r.end >= now - RECENT_TRAFFIC_S]
        if recent:
            seen = sorted({r.server for r in recent})
            # the read stops at the last `_RECENT_LINES` lines: when even the oldest one read
            # is inside the span, older lines may be too, and the count is only a lower bound
            bound = sample.capped and min(r.end for r in sample.records) >= now - RECENT_TRAFFIC_S
            count = f"at least {len(recent):,}" if bound else f"{len(recent):,}"
            return (
                f"{self.name}: {path.name} shows {count} request(s) in the last "
                f"{RECENT_TRAFFIC_S:g} s on {', '.join(seen)}"
            ), len(recent)
        if ours:
            age = now - max(r.end for r in ours)
            return (
                f"{self.name}: {path.name} reads, but no configured host served a request in "
                f"the last {RECENT_TRAFFIC_S:g} s (the newest is {age:.0f} s old): there is no "
                "current traffic to judge"
            ), 0
        return (
            f"{self.name}: {path.name} reads, but holds no request yet: there is no current "
            "traffic to judge"
        ), 0

    @staticmethod
    def _skew(
        records: Sequence[LogRecord], written_at: float, last_is_request: bool = True
    ) -> str | None:
        """Why the newest request's time cannot be right for a file just written, or None.

        A request dated after the file was written is always wrong. One dated long before is
        wrong only when it is the file's last line: HAProxy's own messages (a server going
        down, entering drain) keep an idle log's modification time fresh.
        """
        if not records or time.time() - written_at > RECENT_TRAFFIC_S:
            return None  # an idle log: its newest line may well be old
        newest = max(r.end for r in records)
        off = newest - written_at
        if abs(off) <= MAX_SKEW_S or (off < 0 and not last_is_request):
            return None
        return (
            f"the log was written {time.time() - written_at:.0f} s ago but its newest request "
            f"is dated {abs(off):.0f} s {'after' if off > 0 else 'before'} that "
            f"({off / 3600:+.2f} h): the dates are read in the wrong zone, or a clock is off"
        )

    # -- looks --

    async def observe(
        self,
        cohorts: Mapping[Cohort, Sequence[HostRef]],
        start: dt.datetime,
        end: dt.datetime,
    ) -> dict[Cohort, Observation]:
        if self.tail is not None:
            return await self._observe_log(cohorts, start.timestamp(), end.timestamp())
        return await self._observe_counters(cohorts, start.timestamp(), end.timestamp())

    async def _observe_log(
        self, cohorts: Mapping[Cohort, Sequence[HostRef]], start: float, end: float
    ) -> dict[Cohort, Observation]:
        tail = self.tail
        assert tail is not None
        async with self._lock:
            try:
                stats = await anyio.to_thread.run_sync(tail.poll)
            except OSError as exc:
                detail = f"access log {tail.path} unreadable: {exc.strerror or exc}"
                return {c: Observation.failed(detail) for c in cohorts}
            if stats.unparsed and stats.unparsed > MAX_UNPARSED_SHARE * (
                stats.requests + stats.unparsed
            ):
                assert stats.first_unparsed is not None
                _, text, why = stats.first_unparsed
                detail = (
                    f"partial answer: {stats.unparsed} of {stats.lines} new line(s) of "
                    f"{tail.path} do not parse ({why}: {text[:120]!r})"
                )
                return {c: Observation.rejected(detail) for c in cohorts}
            if stats.requests and tail.newest_end is not None:
                off = tail.newest_end - time.time()
                if abs(off) > MAX_SKEW_S:
                    detail = (
                        f"implausible answer: the newest request in {tail.path} is dated "
                        f"{off:+.0f} s from now (timezone {self.settings.timezone!r} wrong, "
                        "or a clock off)"
                    )
                    return {c: Observation.rejected(detail) for c in cohorts}
            if tail.complete_from is not None and start < tail.complete_from - _BIN_S:
                detail = (
                    f"partial answer: {tail.path} holds every request only from "
                    f"{dt.datetime.fromtimestamp(tail.complete_from, dt.UTC):%H:%M:%S} UTC "
                    "(not read that far back, past retention, or truncated in place), the "
                    "window starts earlier"
                )
                return {c: Observation.rejected(detail) for c in cohorts}
            counts = tail.window(start, end)
        out: dict[Cohort, Observation] = {}
        total = sum(c.requests for c in counts.values())
        for cohort, hosts in cohorts.items():
            buckets = [0] * (len(self.bounds) + 1)
            requests = errors = 0
            by_host: list[HostCounts] = []
            for h in hosts:
                c = counts.get(h.balancer_id)
                if c is None:
                    by_host.append(HostCounts(0, 0, (0,) * len(buckets)))
                    continue
                requests += c.requests
                errors += c.errors
                buckets = [a + b for a, b in zip(buckets, c.buckets, strict=True)]
                by_host.append(HostCounts(c.requests, c.errors, tuple(c.buckets)))
            out[cohort] = Observation(
                requests=requests,
                errors=errors,
                latency_bounds_ms=tuple(self.bounds),
                latency_buckets=tuple(buckets),
                hosts=len(hosts),
                by_host=tuple(by_host),
                detail=f"access log, {total} requests in window"
                + (
                    f" ({tail.duplicated} duplicate lines dropped so far)"
                    if tail.duplicated
                    else ""
                ),
            )
        return out

    # -- show stat counters --

    async def begin(self, at: dt.datetime) -> None:
        """A bake's first window opens at `at` (now): in counter mode, take the snapshot it
        is counted from. Without it the last snapshot is from preflight or the previous
        bake, before the hosts were switched, and the first look would be stale. Nothing
        to do with an access log (its windows are cut by each request's time).

        Raises SignalError when the runtime API does not answer."""
        if self.tail is None:
            async with self._lock:
                await self._snapshot()

    async def _snapshot(self) -> dict[str, tuple[int, int]]:
        assert self.client is not None
        try:
            stats = await self.client.show_stat(self.settings.backend)
        except BalancerError as exc:
            raise SignalError(
                f"signal {self.name!r}: {exc.message}", adapter=ADAPTER, hint=exc.hint
            ) from exc
        snap: dict[str, tuple[int, int]] = {}
        for name, s in stats.items():
            # The access log's view: a request HAProxy answered itself for this server (502
            # on a broken connection, 504 on a server timeout) is an `eresp` without a
            # `req_tot`; a transfer the server aborted after its status (`srv_abrt`, part of
            # `eresp`) is already in `req_tot` and `hrsp_*` and is not an error in the log.
            try:
                aborted = int(s.raw.get("srv_abrt") or 0)
            except ValueError:
                aborted = 0
            haproxy_answered = max(0, s.eresp - aborted)
            snap[name] = (s.req_tot + haproxy_answered, s.hrsp_5xx + haproxy_answered)
        now = time.time()
        self.snapshots.append((now, snap))
        horizon = now - self.settings.retention
        self.snapshots = [s for s in self.snapshots if s[0] >= horizon] or self.snapshots[-1:]
        return snap

    async def _observe_counters(
        self, cohorts: Mapping[Cohort, Sequence[HostRef]], start: float, end: float
    ) -> dict[Cohort, Observation]:
        # The window [start, end) is read as (previous snapshot, this snapshot]: windows
        # follow each other, so do the snapshots, and each request counts once. A previous
        # snapshot from well before `start` would count requests of earlier windows again
        # (or, after preflight, of the old release on today's canary): stale.
        tolerance = max(1.0, 0.5 * (end - start))
        base = self.snapshots[-1] if self.snapshots else None
        try:
            now = await self._snapshot()
        except SignalError as exc:
            return {c: Observation.failed(exc.message) for c in cohorts}
        if base is None or base[0] < start - tolerance:
            age = f"{start - base[0]:.1f} s before the window" if base else "none"
            detail = (
                f"stale counters: the previous show-stat snapshot ({age}) does not start this "
                "window; counting starts now"
            )
            return {c: Observation.rejected(detail) for c in cohorts}
        out: dict[Cohort, Observation] = {}
        for cohort, hosts in cohorts.items():
            requests = errors = 0
            by_host: list[HostCounts] = []
            for h in hosts:
                cur = now.get(h.balancer_id)
                old = base[1].get(h.balancer_id, (0, 0))
                if cur is None:
                    by_host.append(HostCounts(0, 0))
                    continue
                # Counters reset when a server is re-added: count from zero then.
                dr, de = cur[0] - old[0], cur[1] - old[1]
                n, x = (cur[0] if dr < 0 else dr), (cur[1] if de < 0 else de)
                requests += n
                errors += x
                by_host.append(HostCounts(n, min(x, n)))
            out[cohort] = Observation(
                requests=requests,
                errors=min(errors, requests) if requests else errors,
                hosts=len(hosts),
                by_host=tuple(by_host),
                detail="show stat counters",
            )
        return out

    async def aclose(self) -> None:
        if self.tail is not None:
            self.tail.close()
