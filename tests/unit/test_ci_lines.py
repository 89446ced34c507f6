"""The lines a CD tool reads: `--output jsonl` (new-user trial 4 finding 20)."""

from __future__ import annotations

import datetime as dt
import io
import json

from immunity.cli import ci
from immunity.domain import Event


def test_every_jsonl_line_has_the_six_keys_the_result_line_too() -> None:
    """docs/report.md: each line is `{"event", "at", "deployment_id", "release", "message",
    "data"}`; the last, `deployment.result`, lacked `at` and `message`."""
    stream = io.StringIO()
    rep = ci.JsonLinesReporter(stream=stream)
    at = dt.datetime(2026, 11, 30, 10, 34, 26, tzinfo=dt.UTC)
    rep(Event("deployment.started", "shop", "d1", "v3", "deploying v3 to 5 host(s)", at))
    result = {
        "outcome": "reverted",
        "release": "v3",
        "deployment_id": "d1",
        "finished_at": (at + dt.timedelta(seconds=40)).isoformat(),
        "reason": "errors: canary 5xx 5.5% vs baseline 0%",
    }
    rep.finish(result, None, None)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    keys = {"event", "at", "deployment_id", "release", "message", "data"}
    assert [set(line) for line in lines] == [keys, keys], lines
    last = lines[-1]
    assert last["event"] == "deployment.result"
    assert last["at"] == "2026-11-30T10:35:06+00:00"
    assert last["message"] == "v3 reverted: errors: canary 5xx 5.5% vs baseline 0%"
    assert last["data"]["outcome"] == "reverted"
