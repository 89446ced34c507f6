"""The HAProxy access-log tail: incremental reads, partial lines, rotation, retention."""

from __future__ import annotations

import json
from pathlib import Path

from immunity.signals.haproxy import LogTail


def _line(ts: float, srv: str = "h1", st: int = 200, tt: int = 10) -> str:
    return json.dumps({"ts": ts, "srv": srv, "st": st, "Ta": tt, "Tt": tt}) + "\n"


def test_tail_reads_only_what_was_appended(tmp_path: Path) -> None:
    """A second poll adds only the new lines, and a half-written line waits for its end."""
    log = tmp_path / "access.log"
    log.write_text(_line(100.0) + _line(101.0) + '{"ts":102.0,"srv"')
    tail = LogTail(log, retention=900)
    tail.poll()
    assert [r.end for r in tail.records] == [100.01, 101.01]
    with log.open("a") as f:
        f.write(':"h2","st":500,"Ta":5,"Tt":5}\n')
    tail.poll()
    assert [(r.server, r.status) for r in tail.records][-1] == ("h2", 500)
    assert len(tail.window(100.0, 102.1)) == 3
    assert len(tail.window(101.0, 102.0)) == 1


def test_tail_starts_over_when_the_file_is_replaced(tmp_path: Path) -> None:
    """A truncated or rotated log is read again from its start."""
    log = tmp_path / "access.log"
    log.write_text(_line(100.0) + _line(101.0))
    tail = LogTail(log, retention=900)
    tail.poll()
    log.write_text(_line(200.0))
    tail.poll()
    assert tail.records[-1].end == 200.01


def test_tail_forgets_records_older_than_retention(tmp_path: Path) -> None:
    """Records more than `retention` seconds older than the newest are dropped."""
    log = tmp_path / "access.log"
    log.write_text("".join(_line(float(t), tt=0) for t in range(100, 200)))
    tail = LogTail(log, retention=10)
    tail.poll()
    assert tail.records[0].end == 189.0
    assert len(tail.ends) == len(tail.records) == 11
