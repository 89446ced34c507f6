"""Prometheus answers that are partial, stale or duplicated are never evidence (issue 8, kind 3).

A second real Prometheus scrapes one app twice (jobs `app` and `app-copy`: one counter, two
series) and another app that the test stops (its series end with staleness markers).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import pytest
from prom_fleet import PROMETHEUS, Fleet, MetricsApp, _load, _scrapes_each, _wait_ready, free_port

from immunity.domain import Cohort, HostRef, ObservationStatus
from immunity.signals.prometheus import PrometheusSource

pytestmark = pytest.mark.anyio


DOOMED = """
import sys, time
from prometheus_client import Counter, start_http_server
requests = Counter("app_requests_total", "requests", ["code", "release"])
start_http_server(int(sys.argv[1]), addr="127.0.0.1")
while True:
    requests.labels("200", "v3").inc(10)
    time.sleep(0.1)
"""


@dataclass
class Twice:
    url: str
    doubled: MetricsApp
    doomed: HostRef
    doomed_process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twice]:
    doubled = MetricsApp("v1", error_rate=0.0, delay_s=0.0)
    doubled.start()
    stop = threading.Event()
    loader = threading.Thread(target=_load, args=([doubled], stop, threading.Event()), daemon=True)
    loader.start()
    doomed_port = free_port()
    doomed_process = subprocess.Popen([sys.executable, "-c", DOOMED, str(doomed_port)])
    doomed = HostRef("doomed", "127.0.0.1", doomed_port)
    d = tmp_path_factory.mktemp("prometheus-twice")
    port = free_port()
    (d / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: app\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{doubled.port}', '127.0.0.1:{doomed_port}']\n"
        "  - job_name: app-copy\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{doubled.port}']\n"
    )
    log = d / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={d / 'prometheus.yml'}",
                f"--storage.tsdb.path={d / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log, 15.0)
        deadline = time.monotonic() + 30
        while not _scrapes_each(url, [doubled.port, doomed_port], at_least=3):
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield Twice(url, doubled, doomed, doomed_process)
    finally:
        stop.set()
        proc.terminate()
        proc.wait(10)
        loader.join(5)
        doubled.stop()
        doomed_process.kill()
        doomed_process.wait(10)


def source(url: str, **kw: object) -> PrometheusSource:
    return PrometheusSource(PrometheusSource.Settings(url=url, **kw), base_dir=None)


async def test_a_counter_scraped_by_two_jobs_is_a_duplicated_answer(twice: Twice) -> None:
    """Two series of one counter (jobs app and app-copy): rejected, not counted twice."""
    src = source(twice.url)
    try:
        end = dt.datetime.now(dt.UTC)
        obs = await src.observe(
            {Cohort.CANARY: [twice.doubled.host], Cohort.BASELINE: [twice.doomed]},
            end - dt.timedelta(seconds=4),
            end,
        )
    finally:
        await src.aclose()
    canary, baseline = obs[Cohort.CANARY], obs[Cohort.BASELINE]
    assert canary.status is ObservationStatus.REJECTED
    assert "duplicated answer" in canary.detail and "job" in canary.detail
    assert baseline.available and baseline.requests > 10


async def test_a_window_ending_past_the_newest_scrape_is_stale(prometheus_with_data: Fleet) -> None:
    """A clock ahead of Prometheus's: the window ends 10 s after the newest sample: stale."""
    src = source(prometheus_with_data.url, stale_after="3s")
    try:
        end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
        obs = await src.observe(
            {Cohort.CANARY: [prometheus_with_data.canary.host]}, end - dt.timedelta(seconds=5), end
        )
    finally:
        await src.aclose()
    assert obs[Cohort.CANARY].status is ObservationStatus.REJECTED
    assert "stale answer" in obs[Cohort.CANARY].detail


async def test_a_target_that_went_down_in_the_window_is_a_partial_answer(twice: Twice) -> None:
    """The app stops mid-window: its series ends (staleness marker), the look is missing."""
    src = source(twice.url)
    try:
        start = dt.datetime.now(dt.UTC)
        await anyio.sleep(1.5)
        twice.doomed_process.kill()  # its connections go with it: scrapes fail
        await anyio.sleep(3.0)  # failed scrapes write staleness markers
        obs = await src.observe({Cohort.BASELINE: [twice.doomed]}, start, dt.datetime.now(dt.UTC))
    finally:
        await src.aclose()
    assert obs[Cohort.BASELINE].status is ObservationStatus.REJECTED
    assert "partial answer" in obs[Cohort.BASELINE].detail
