"""A real Prometheus (Debian's /usr/bin/prometheus) scraping two tiny prometheus_client apps.

One Prometheus per test session: it starts on a free 127.0.0.1 port with a 1 s scrape
interval, and its first sample is queryable only ~5.4 s after start (service discovery
throttle), so `prometheus_with_data` polls for data with a deadline.

The apps run in threads of the test process: `baseline` (release v1, no errors, fast) and
`canary` (release v2, exactly 30 % 500s, ~20 ms slower). A load thread sends requests to both
until the session ends.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from immunity.domain import HostRef

PROMETHEUS = "/usr/bin/prometheus"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MetricsApp:
    """A web app on 127.0.0.1 that counts its own requests the way the sample app does."""

    def __init__(self, release: str, error_rate: float, delay_s: float) -> None:
        self.release = release
        self.error_rate = error_rate
        self.delay_s = delay_s
        self.served = 0
        self.failed = 0
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.requests_total = Counter(
            "app_requests_total", "requests", ["code", "release"], registry=self.registry
        )
        self.duration = Histogram(
            "app_request_duration_seconds",
            "latency",
            ["release"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=self.registry,
        )
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(app.registry), CONTENT_TYPE_LATEST)
                    return
                t0 = time.perf_counter()
                code = app.next_code()
                if app.delay_s:
                    time.sleep(app.delay_s)
                app.duration.labels(app.release).observe(time.perf_counter() - t0)
                app.requests_total.labels(str(code), app.release).inc()
                self._send(code, app.release.encode(), "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def next_code(self) -> int:
        """Exactly `error_rate` of the requests fail, spread evenly."""
        with self._lock:
            before = int(self.served * self.error_rate)
            self.served += 1
            fail = int(self.served * self.error_rate) > before
            self.failed += fail
        return 500 if fail else 200

    @property
    def host(self) -> HostRef:
        return HostRef(name=f"app-{self.release}", address="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Fleet:
    url: str
    baseline: MetricsApp
    canary: MetricsApp
    process: subprocess.Popen[bytes]
    log: Path
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)
    """Set: the load thread sends nothing (a test sends its own, counted traffic)."""
    resumed_at: float = 0.0
    """time.monotonic() when the load last resumed after a pause (`resume`)."""

    def resume(self) -> None:
        """The load thread sends again (after `paused` was set)."""
        self.paused.clear()
        self.resumed_at = time.monotonic()

    def wait_steady(self, seconds: float, deadline_s: float = 30.0) -> None:
        """Return once the load has run unpaused for `seconds` (a test reading the last few
        seconds of data after another module's cases paused it); fail after `deadline_s`."""
        deadline = time.monotonic() + deadline_s
        while self.paused.is_set() or time.monotonic() - self.resumed_at < seconds:
            assert time.monotonic() < deadline, "the fleet's load stayed paused"
            time.sleep(0.05)


def _load(apps: list[MetricsApp], stop: threading.Event, paused: threading.Event) -> None:
    while not stop.is_set():
        if paused.is_set():
            stop.wait(0.02)
            continue
        for app in apps:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/", timeout=2) as r:
                    r.read()
            except OSError:
                pass  # the 500s raise HTTPError; they are counted by the app
        stop.wait(0.01)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"prometheus not ready after {deadline_s}s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def prometheus_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A running Prometheus scraping the baseline and canary apps every second."""
    if not (Path(PROMETHEUS).exists() and shutil.which(PROMETHEUS)):
        pytest.fail(f"{PROMETHEUS} is missing: apt-get install prometheus (see the Makefile)")
    baseline = MetricsApp("v1", error_rate=0.0, delay_s=0.0)
    canary = MetricsApp("v2", error_rate=0.3, delay_s=0.02)
    for app in (baseline, canary):
        app.start()
    stop, paused = threading.Event(), threading.Event()
    loader = threading.Thread(target=_load, args=([baseline, canary], stop, paused), daemon=True)
    loader.start()

    d = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    cfg = d / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: app\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{baseline.port}', '127.0.0.1:{canary.port}']\n"
    )
    log = d / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={d / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    fleet = Fleet(url, baseline, canary, proc, log, stop, paused)
    try:
        _wait_ready(url, proc, log, 15.0)
        yield fleet
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        loader.join(5)
        for app in (baseline, canary):
            app.stop()


def _scrapes_each(url: str, ports: list[int], at_least: int) -> bool:
    full = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": "count_over_time(up[1m])"})
    with urllib.request.urlopen(full, timeout=2) as r:
        result = json.load(r)["data"]["result"]
    counts = {s["metric"]["instance"]: float(s["value"][1]) for s in result}
    return all(counts.get(f"127.0.0.1:{p}", 0) >= at_least for p in ports)


@pytest.fixture(scope="session")
def prometheus_with_data(prometheus_fleet: Fleet) -> Fleet:
    """The fleet once Prometheus holds at least three scrapes of each app (~7 s after start)."""
    deadline = time.monotonic() + 30.0
    ports = [prometheus_fleet.baseline.port, prometheus_fleet.canary.port]
    while time.monotonic() < deadline:
        try:
            if _scrapes_each(prometheus_fleet.url, ports, at_least=3):
                return prometheus_fleet
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"no scrapes after 30s: {prometheus_fleet.log.read_text()[-2000:]}")
