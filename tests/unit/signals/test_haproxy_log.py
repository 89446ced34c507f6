"""The HAProxy access-log tail: incremental reads, partial lines, rotation, retention, parsing.

Real HAProxy output in every format is parsed in tests/integration/haproxy/test_log_formats.py;
these lines exercise the tail's bookkeeping only.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from immunity.signals.haproxy import LogParser, LogTail, Unparsed


def _line(ts: float, srv: str = "h1", st: int = 200, tt: int = 10) -> str:
    return json.dumps({"ts": ts, "srv": srv, "st": st, "Ta": tt, "Tt": tt}) + "\n"


def _requests(tail: LogTail, start: float, end: float) -> int:
    return sum(c.requests for c in tail.window(start, end).values())


def test_tail_reads_only_what_was_appended(tmp_path: Path) -> None:
    """A second poll adds only the new lines, and a half-written line waits for its end."""
    log = tmp_path / "access.log"
    log.write_text(_line(100.0) + _line(101.0) + '{"ts":102.0,"srv"')
    tail = LogTail(log, retention=900)
    assert tail.poll().requests == 2
    with log.open("a") as f:
        f.write(':"h2","st":500,"Ta":5,"Tt":5}\n')
    stats = tail.poll()
    assert (stats.requests, stats.unparsed) == (1, 0)
    assert tail.window(102.0, 102.1)["h2"].errors == 1
    assert _requests(tail, 100.0, 102.1) == 3
    assert _requests(tail, 101.0, 102.0) == 1


def test_consecutive_windows_count_each_request_once(tmp_path: Path) -> None:
    """Windows that follow each other, at any edges, partition the requests."""
    log = tmp_path / "access.log"
    log.write_text("".join(_line(100.0 + i * 0.0137, tt=3) for i in range(1000)))
    tail = LogTail(log, retention=900)
    tail.poll()
    edges = [99.0, 100.333, 101.07, 104.4449, 105.0, 120.0]
    counts = [_requests(tail, a, b) for a, b in itertools.pairwise(edges)]
    assert sum(counts) == 1000


def test_tail_starts_over_when_the_file_is_replaced(tmp_path: Path) -> None:
    """A truncated or rotated log is read again from its start."""
    log = tmp_path / "access.log"
    log.write_text(_line(100.0) + _line(101.0))
    tail = LogTail(log, retention=900)
    tail.poll()
    log.write_text(_line(200.0))
    tail.poll()
    assert tail.newest_end == 200.01


def test_tail_forgets_counts_older_than_retention(tmp_path: Path) -> None:
    """Bins more than `retention` seconds older than the newest are dropped."""
    log = tmp_path / "access.log"
    log.write_text("".join(_line(float(t), tt=0) for t in range(100, 200)))
    tail = LogTail(log, retention=10)
    tail.poll()
    assert _requests(tail, 0, 1000) == 11


def test_unparsed_lines_are_counted_with_the_first_one_kept(tmp_path: Path) -> None:
    """A line that is neither a request nor an HAProxy notice is reported, not skipped."""
    log = tmp_path / "access.log"
    log.write_text(
        "[NOTICE]   (1) : haproxy version is 2.6.12\n"
        "Server be_app/h1 is DOWN, reason: Layer4 connection problem\n"
        + _line(100.0)
        + "GET / 200 12ms\n"
        + '{"time": 1, "server": "h1"}\n'
    )
    tail = LogTail(log, retention=900)
    stats = tail.poll()
    assert (stats.requests, stats.skipped, stats.unparsed) == (1, 2, 2)
    assert stats.first_unparsed is not None
    assert stats.first_unparsed[1] == "GET / 200 12ms"


def test_json_fields_and_dates() -> None:
    """User-named keys, epoch milliseconds, HAProxy dates with an offset, backend/server."""
    from immunity.signals.haproxy import LogFields, LogRecord

    p = LogParser(
        "json",
        LogFields(server="s", status="code", timestamp="t", latency="lat", duration=None),
        "UTC",
    )
    rec = p.parse('{"t": 1700000000123, "s": "be/h1", "code": "503", "lat": 20}')
    assert isinstance(rec, LogRecord)
    assert (rec.server, rec.backend, rec.status, rec.end) == ("h1", "be", 503, 1700000000.143)
    rec = p.parse('{"t": "14/Nov/2023:22:13:20.500 +0100", "s": "h1", "code": 200, "lat": 0}')
    assert isinstance(rec, LogRecord) and rec.end == 1700000000.5 - 3600
    assert isinstance(p.parse('{"t": "yesterday", "s": "h1", "code": 200, "lat": 0}'), Unparsed)
    assert p.parse('{"t": 1, "s": "<NOSRV>", "code": 503, "lat": 0}') is None


def test_haproxy_server_state_messages_in_the_log_are_not_requests_nor_unparsed() -> None:
    """Every server state change HAProxy writes beside the requests (drain, maintenance, health
    checks) is skipped, so a log with them still passes preflight (as written by HAProxy 2.6)."""
    from immunity.signals.haproxy import LogParser

    messages = [
        'Server be_app/h1 is DOWN, reason: Layer4 connection problem, info: "Connection '
        'refused", check duration: 0ms. 2 active and 0 backup servers left.',
        "Server be_app/h2 is UP, reason: Layer7 check passed, code: 200, check duration: 5ms.",
        "Server be_app/h1 enters drain state. 2 active and 0 backup servers online.",
        "Server be_app/h1 leaves drain state.",
        "Server be_app/h1 is going DOWN for maintenance. 2 active and 0 backup servers left.",
        "Server be_app/h1 is UP/READY (leaving forced maintenance).",
        "Server be_app/h1 was DOWN and now enters maintenance.",
        "Server be_app/h1 is UP (leaving forced drain).",
        "Nov 30 02:10:01 lb1 haproxy[812]: Server be_app/h1 enters drain state.",
    ]
    parser = LogParser()
    assert [None] * len(messages) == [parser.parse(m) for m in messages]


def test_a_rotated_log_is_read_to_its_end_before_the_new_one(tmp_path: Path) -> None:
    """Renamed away (logrotate's default) while HAProxy still writes a last line to it: that
    line is counted, then the new file from its start."""
    log = tmp_path / "access.log"
    log.write_text(_line(100.0))
    tail = LogTail(log, retention=900)
    tail.poll()
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)
    with rotated.open("a") as f:
        f.write(_line(101.0))  # written through HAProxy's still-open descriptor
    log.write_text(_line(102.0))
    tail.poll()
    assert _requests(tail, 0, 1000) == 3
    assert tail.complete_from is None  # nothing was lost
    tail.close()


def test_a_log_truncated_in_place_makes_earlier_windows_partial(tmp_path: Path) -> None:
    """copytruncate: lines written between the last read and the truncation are lost, so the
    tail says from when it holds every request."""
    import time

    log = tmp_path / "access.log"
    log.write_text(_line(100.0) + _line(101.0))
    tail = LogTail(log, retention=900)
    tail.poll()
    before = time.time()
    log.write_text(_line(200.0))  # truncated, then a new line
    tail.poll()
    assert tail.complete_from is not None and tail.complete_from >= before
    tail.close()


@pytest.mark.anyio
async def test_a_window_before_what_the_log_still_holds_is_rejected(tmp_path: Path) -> None:
    """After a truncation in place, a look over the time before it is partial: rejected."""
    import datetime as dt
    import time

    from immunity.domain import Cohort, HostRef, ObservationStatus
    from immunity.signals.haproxy import HAProxySource

    now = time.time()
    log = tmp_path / "access.log"
    log.write_text(_line(now - 4) + _line(now - 3))
    src = HAProxySource(HAProxySource.Settings(access_log=str(log)), base_dir=tmp_path)
    await src.preflight([HostRef("h1")])
    log.write_text(_line(now))  # truncated in place
    start = dt.datetime.fromtimestamp(now - 5, dt.UTC)
    obs = await src.observe(
        {Cohort.CANARY: [HostRef("h1")]}, start, start + dt.timedelta(seconds=6)
    )
    assert obs[Cohort.CANARY].status is ObservationStatus.REJECTED
    assert "partial answer" in obs[Cohort.CANARY].detail
    await src.aclose()


def test_an_idle_log_kept_fresh_by_haproxy_messages_is_not_taken_for_clock_skew(
    tmp_path: Path,
) -> None:
    """Requests ten minutes old, then a server state message written just now: the log is
    idle, not misdated; the same request as the file's last line written now is misdated."""
    import time

    from immunity.signals.haproxy import HAProxySource, sample_recent

    old = time.time() - 600
    log = tmp_path / "access.log"
    log.write_text(_line(old) + "Server be_app/h1 enters drain state.\n")
    sample = sample_recent(log, LogParser())
    written = log.stat().st_mtime
    assert sample.last_is_request is False
    assert None is HAProxySource._skew(sample.records, written, sample.last_is_request)
    log.write_text(_line(old))
    sample = sample_recent(log, LogParser())
    assert sample.last_is_request is True
    assert "wrong zone" in str(HAProxySource._skew(sample.records, written, True))
