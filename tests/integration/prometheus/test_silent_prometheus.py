"""Preflight's cross-check of a silent signal with the balancer's own counters, for a
Prometheus signal: a real HAProxy sandbox (two sample apps, customers sent through
HAProxy) and a real Prometheus scraping both apps every second. HAProxy's own counters
(`show stat`) are the balancer's view; the load generator's record is what was served."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from prom_fleet import PROMETHEUS, _wait_ready, free_port

from immunity.analysis.preflight import cross_check_traffic
from immunity.domain import HostRef
from immunity.errors import PreflightError
from immunity.sandbox import fleet
from immunity.signals.prometheus import PrometheusSource
from servers.customers import customers, pool, sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


@dataclass
class Stack:
    info: fleet.SandboxInfo
    hosts: list[HostRef]
    prometheus: str

    def source(self, **kw: object) -> PrometheusSource:
        settings = PrometheusSource.Settings(name="prom", url=self.prometheus, **kw)  # type: ignore[arg-type]
        return PrometheusSource(settings, base_dir=None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A two-host HAProxy sandbox with no traffic yet, and a Prometheus scraping its apps."""
    d: Path = tmp_path_factory.mktemp("silent")
    with sandbox(d / "fleet") as (info, hosts):
        port = free_port()
        targets = ", ".join(f"'127.0.0.1:{p}'" for p in info.host_ports.values())
        (d / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
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
            yield Stack(info, hosts, url)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_traffic_prometheus_has_not_scraped_yet_is_not_refused(stack: Stack) -> None:
    """First in the module: the fleet has served nobody. Customers start 0.3 s before
    preflight, so Prometheus counts none in its last minute (its window ends `delay` = 1 s
    ago), while HAProxy's last session is 0 s ago. The fresh look (both asked again) sees
    Prometheus count them within a scrape: no refusal. A check that refused whenever the
    signal's window was empty while the balancer served would refuse here."""
    right, lb = stack.source(), pool(stack.info)
    async with customers(stack.info):
        await anyio.sleep(0.3)
        try:
            await right.preflight(stack.hosts)
            assert right.recent_traffic is not None and right.recent_traffic.silent, (
                right.recent_traffic
            )
            assert await lb.recent_sessions(stack.hosts), "HAProxy served nobody yet"
            with anyio.fail_after(60):
                await cross_check_traffic(lb, {"prom": right}, stack.hosts)
        finally:
            await right.aclose()


async def test_a_prometheus_signal_that_sees_none_of_the_traffic_is_refused(
    stack: Stack,
) -> None:
    """Customers go through HAProxy; the signal's `host_value` names no scraped target (a
    typo in the port), so it counts nothing. Preflight refuses, naming the signal and
    HAProxy's own counts; the same signal pointed right passes."""
    wrong, right = stack.source(host_value="{address}:1{port}"), stack.source()
    lb = pool(stack.info)
    async with customers(stack.info):
        await anyio.sleep(3)
        try:
            await wrong.preflight(stack.hosts)
            assert wrong.recent_traffic is not None and wrong.recent_traffic.requests is None
            with anyio.fail_after(60), pytest.raises(PreflightError) as info:
                await cross_check_traffic(lb, {"prom": wrong}, stack.hosts)
            msg = info.value.message
            assert "signal 'prom' saw no request" in msg, msg
            assert "last session h1" in msg and "none of which the signal counted" in msg, msg
            await right.preflight(stack.hosts)
            assert right.recent_traffic is not None and not right.recent_traffic.silent
            await cross_check_traffic(lb, {"prom": right}, stack.hosts)
        finally:
            await wrong.aclose()
            await right.aclose()
