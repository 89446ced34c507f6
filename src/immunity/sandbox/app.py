"""The sandbox's sample web app: one process per local host, behaviour read from a release manifest.

Run as ``python -m immunity.sandbox.app --host-name h1 --port 9001 --manifest PATH``.
The manifest is JSON: ``{"name": "v2", "error_rate": 0.3, "latency_ms": 50, "cold_start_s": 25,
"errors_after_s": 0, "errors_from_file": null}``.

Routes:
  ``/``            the app: answers 500 with probability `error_rate`, after ~2-5 ms of base
                   latency plus `latency_ms` (±20 %). With `errors_after_s` the errors begin
                   only that many seconds after the process started (a late-onset fault: a
                   leak, a cache that fills, a cron-like job). With `errors_from_file` (a
                   path) they begin only once that file exists: a fault started by hand or
                   by a test at the moment it chooses (``touch PATH``).
  ``/slow?ms=N``   like ``/`` but takes N ms (drain tests).
  ``/health``      always 200 at once, even during the cold start: like an IIS site whose
                   health page is static while the app pool warms on the first real request.
                   This is why immunity warms a host up with real requests before enabling it.
  ``/metrics``     prometheus_client text: ``app_requests_total{code,release}``,
                   ``app_request_duration_seconds{release}``.

Cold start: the first request to ``/`` or ``/slow`` starts the warm-up; every app request
arriving before ``cold_start_s`` has elapsed since that first one waits until then.
Every response carries ``X-Immunity-Host`` and ``X-Immunity-Release``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SampleApp:
    def __init__(self, host_name: str, manifest: dict[str, Any]) -> None:
        self.host_name = host_name
        self.release = str(manifest.get("name", "unknown"))
        self.error_rate = float(manifest.get("error_rate", 0.0))
        self.latency_ms = float(manifest.get("latency_ms", 0.0))
        self.cold_start_s = float(manifest.get("cold_start_s", 0.0))
        self.errors_after_s = float(manifest.get("errors_after_s", 0.0))
        trigger = manifest.get("errors_from_file")
        self.errors_from_file = Path(trigger) if trigger else None
        self.started = time.monotonic()
        self.warm_at: float | None = None if self.cold_start_s > 0 else 0.0
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "app_requests",
            "App requests by status code",
            ["code", "release"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "app_request_duration_seconds",
            "App request duration",
            ["release"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def headers(self) -> dict[str, str]:
        return {"X-Immunity-Host": self.host_name, "X-Immunity-Release": self.release}

    async def _cold_start(self) -> None:
        now = time.monotonic()
        if self.warm_at is None:
            self.warm_at = now + self.cold_start_s
        if now < self.warm_at:
            await asyncio.sleep(self.warm_at - now)

    async def _serve(self, extra_s: float) -> web.Response:
        began = time.monotonic()
        await self._cold_start()
        await asyncio.sleep(random.uniform(0.002, 0.005) + extra_s)
        failing = (
            self.error_rate > 0
            and time.monotonic() - self.started >= self.errors_after_s
            and self._triggered()
        )
        if failing and random.random() < self.error_rate:
            status, text = 500, f"{self.host_name} {self.release} error\n"
        else:
            status, text = 200, f"{self.host_name} {self.release} ok\n"
        self.requests.labels(code=str(status), release=self.release).inc()
        self.duration.labels(release=self.release).observe(time.monotonic() - began)
        return web.Response(status=status, text=text, headers=self.headers())

    def _triggered(self) -> bool:
        """Whether `errors_from_file` exists (always, without one); once seen, for good."""
        if self.errors_from_file is not None and self.errors_from_file.exists():
            self.errors_from_file = None
        return self.errors_from_file is None

    async def index(self, request: web.Request) -> web.Response:
        extra = self.latency_ms * random.uniform(0.8, 1.2) / 1000.0 if self.latency_ms else 0.0
        return await self._serve(extra)

    async def slow(self, request: web.Request) -> web.Response:
        try:
            ms = float(request.query.get("ms", "1000"))
        except ValueError:
            ms = 1000.0
        return await self._serve(ms / 1000.0)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers=self.headers())

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        resp = web.Response(body=body, headers=self.headers())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app


async def _main(host_name: str, address: str, port: int, manifest: dict[str, Any]) -> None:
    sample = SampleApp(host_name, manifest)
    runner = web.AppRunner(
        sample.web_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0
    )
    await runner.setup()
    site = web.TCPSite(runner, address, port, reuse_address=True, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{host_name} serving release {sample.release} on {address}:{port}", flush=True)
    await stop.wait()
    # Shut down promptly: in-flight requests were drained by the balancer beforehand.
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m immunity.sandbox.app")
    parser.add_argument("--host-name", required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--manifest", required=True, type=Path)
    args = parser.parse_args(argv)
    manifest = json.loads(args.manifest.read_text())
    asyncio.run(_main(args.host_name, args.address, args.port, manifest))


if __name__ == "__main__":
    main()
