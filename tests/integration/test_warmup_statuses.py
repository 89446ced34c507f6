"""Warm-up and verify count only the statuses the config expects, against a real HTTP server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
import pytest

from immunity.config import parse
from immunity.domain import HostRef
from immunity.errors import StepFailed
from immunity.probe import HttpProber

pytestmark = pytest.mark.anyio

CONFIG = """\
app: shop
hosts:
  - {name: h1, port: 18001}
  - {name: h2, port: 18002}
balancer: {kind: haproxy, socket: x.sock}
driver: {kind: local, root: hosts, releases: releases}
warmup: {path: PATH, consecutive: 3, latency_bar: 1s, pause: 10ms}
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        status = {"/ok": 200, "/moved": 301, "/missing": 404, "/busy": 503}.get(self.path, 404)
        self.send_response(status)
        if status == 301:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _warm(port: int, path: str, limit_s: float = 5.0) -> None:
    cfg = parse(CONFIG.replace("PATH", path), "c.yaml").config
    host = HostRef(name="h1", address="127.0.0.1", port=port)
    prober = HttpProber(cfg.verify, cfg.warmup)
    try:
        with anyio.fail_after(limit_s):
            await prober.warm_up(host)
    finally:
        await prober.aclose()


async def test_a_2xx_path_warms(server: int) -> None:
    """Three 200s in a row under the bar: warm."""
    await _warm(server, "/ok")


@pytest.mark.parametrize("path,status", [("/missing", 404), ("/moved", 301)])
async def test_a_404_or_a_redirect_fails_the_warmup_at_once(
    server: int, path: str, status: int
) -> None:
    """`consecutive` answers of 404 (or 301) fail the step with that status, not "warm"."""
    _Handler.hits.pop(path, None)
    with pytest.raises(StepFailed, match=f"answered HTTP {status} 3 times in a row, expected 2xx"):
        await _warm(server, path)
    assert 3 == _Handler.hits[path]  # the server's own count: no more than needed


async def test_a_503_is_waited_out_as_a_cold_start(server: int) -> None:
    """503 is what a cold host may say: not warm, and waited on until the deadline."""
    with pytest.raises(TimeoutError):
        await _warm(server, "/busy", limit_s=0.5)


async def test_a_latency_bar_no_warm_host_meets_is_found_at_preflight(server: int) -> None:
    """`latency_bar: 0.01ms` (10 µs) over real HTTP: warm hosts never answer that fast, so
    preflight says no warm-up (nor a revert's) could pass; a 1 s bar passes."""
    from immunity.probe.http import HttpProber

    host = HostRef(name="h1", address="127.0.0.1", port=server)
    for bar, found in (("0.01ms", True), ("1s", False)):
        cfg = parse(
            CONFIG.replace("PATH", "/ok").replace("latency_bar: 1s", f"latency_bar: {bar}"),
            "c.yaml",
        ).config
        prober = HttpProber(cfg.verify.model_copy(update={"path": "/ok"}), cfg.warmup)
        try:
            problems = await prober.check_paths([host])
        finally:
            await prober.aclose()
        assert found == any("warmup.latency_bar 0.01 ms" in p for p in problems), problems
