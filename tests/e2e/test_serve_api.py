"""`immunity serve`'s API and pages over HTTP, on deployments written to the sandbox's
journal: a live run (its lease holder alive) and an aborted, unjudged release."""

from __future__ import annotations

import re
import socket
import subprocess
import time

import anyio
import httpx
import pytest
import yaml
from e2e_helpers import Sandbox

from immunity.journal import SqliteJournal
from immunity.journal.holder import holder_name

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


async def _write(sbx: Sandbox, app: str) -> tuple[str, str]:
    """An aborted v8 (its last verdict, of a wave before the abort, was a pass) and then a v4
    whose lease this test process holds (alive, as a running `deploy` would)."""
    j = SqliteJournal(sbx.dir / "journal.db")
    try:
        aborted = await j.begin(app, "v8", {"fallbacks": {"h1": "v1"}})
        await j.finish(
            aborted.id,
            "aborted",
            "aborted with `resume --abort`; v8 was not judged",
            {"result": {"verdict": {"outcome": "pass", "reason": "wave 1 passed"}}},
        )
        running = await j.begin(app, "v4", {"fallbacks": {"h1": "v1"}})
        await j.acquire_lease(app, holder_name(), running.id, 300.0)
    finally:
        await j.close()
    return aborted.id, running.id


@pytest.mark.timeout(180)
def test_serve_says_running_for_a_live_run_and_no_verdict_for_an_aborted_one(
    fleet3: Sandbox,
) -> None:
    """Trial 4 #19: with the holder alive `/api/deployments` said "running or interrupted",
    gave `"verdict": "pass"` for an aborted release that was not judged, and the pages showed
    raw ISO instants (`since 2026-11-30T10:32:45+00:00`)."""
    app = yaml.safe_load(fleet3.config.read_text())["app"]
    aborted, running = anyio.run(_write, fleet3, app)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    serve = fleet3.start("serve", "-c", str(fleet3.config), "--port", str(port))
    try:
        _wait_http(base + "/api/deployments", serve)
        rows = {r["id"]: r for r in httpx.get(base + "/api/deployments", timeout=30).json()}
        assert (rows[running]["outcome"], rows[running]["said"]) == ("running", "running")
        assert rows[aborted]["outcome"] == "aborted" and rows[aborted]["verdict"] is None
        one = httpx.get(f"{base}/api/deployments/{running}", timeout=30).json()
        assert one["deployment"]["outcome"] == "running"
        apps = httpx.get(base + "/", timeout=30).text
        assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", apps), apps
        page = httpx.get(f"{base}/deployments/{aborted}", timeout=30).text
        assert re.search(r"<dd>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</dd>", page), page
        for body in (apps, page):
            assert not re.search(r"\d\d:\d\d:\d\d(\.\d+)?\+00:00", body), body
    finally:
        serve.terminate()
        serve.communicate(timeout=20)
