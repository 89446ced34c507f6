"""Receivers on 127.0.0.1 that notifiers talk to: an HTTP recorder (webhooks, Slack, Teams),
a fake Pushgateway that keeps pushed metric families per group, and a UDP socket for StatsD.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every request; answers with the next status of `statuses[path]` (default 200)."""

    seen: list[Seen] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    bodies: dict[int, str] = field(default_factory=dict)
    # fake Pushgateway: (job, app) -> family name -> (type, samples)
    groups: dict[tuple[str, str], dict[str, tuple[str, list[Sample]]]] = field(default_factory=dict)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.headers), body))
        if request.path.startswith("/metrics/"):
            return self._push(request, body)
        if request.path == "/metrics" and request.method == "GET":
            return web.Response(text=self._exposition())
        queue = self.statuses.get(request.path, [])
        status = queue.pop(0) if len(queue) > 1 else (queue[0] if queue else 200)
        return web.Response(status=status, text=self.bodies.get(status, "ok"))

    def _push(self, request: web.Request, body: bytes) -> web.Response:
        parts = request.path.split("/")[2:]  # job/<job>/app/<app>
        key = dict(zip(parts[::2], parts[1::2], strict=True))
        status = self.statuses.get("/metrics/", [202])[0]
        if status >= 400:
            return web.Response(status=status, text="push refused")
        group = self.groups.setdefault((key["job"], key["app"]), {})
        if request.method == "PUT":
            group.clear()
        for fam in text_string_to_metric_families(body.decode()):
            group[fam.name] = (fam.type, list(fam.samples))
        return web.Response(status=200)

    def _exposition(self) -> str:
        lines = []
        for (job, app), families in self.groups.items():
            for name, (typ, samples) in families.items():
                lines.append(f"# TYPE {name} {typ}")
                for s in samples:
                    labels = {**s.labels, "job": job, "app": app}
                    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                    lines.append(f"{s.name}{{{text}}} {s.value}")
        return "\n".join(lines) + "\n"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """An HTTP server on a free 127.0.0.1 port recording what notifiers send."""
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = int(runner.addresses[0][1])
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
def udp_socket() -> Iterator[socket.socket]:
    """A UDP socket bound to a free 127.0.0.1 port, standing in for a StatsD agent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2.0)
    try:
        yield s
    finally:
        s.close()
