"""The sandbox fleet: up, load, a bad release, down — real HAProxy and app processes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from typer.testing import CliRunner

from immunity.config import load
from immunity.domain import HostRef
from immunity.hosts.local import LocalDriver, read_pid
from immunity.sandbox import fleet
from immunity.sandbox.cli import app as sandbox_cli
from immunity.sandbox.load import read_records, run_load

pytestmark = pytest.mark.anyio


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pids(d: Path) -> list[int]:
    files = [d / "pids/haproxy.pid", *sorted((d / "hosts").glob("*/app.pid"))]
    return [p for f in files if (p := read_pid(f)) is not None]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fleet.SandboxInfo]:
    d = tmp_path_factory.mktemp("sbx") / "fleet"
    info = fleet.create_sandbox(d, hosts=2)
    try:
        yield info
    finally:
        fleet.teardown(d)


def test_up_then_down_leaves_no_process(tmp_path: Path) -> None:
    """`sandbox up` starts HAProxy and every app; `sandbox down` leaves none of them running."""
    d = tmp_path / "f"
    result = CliRunner().invoke(sandbox_cli, ["up", "--dir", str(d), "--hosts", "2"])
    assert result.exit_code == 0, result.output
    assert "balancer: http://127.0.0.1:" in result.output
    pids = _pids(d)
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    result = CliRunner().invoke(sandbox_cli, ["down", "--dir", str(d)])
    assert result.exit_code == 0, result.output
    assert [p for p in pids if _alive(p)] == []
    assert [p for p in psutil.pids() if _alive(p) and str(d) in " ".join(_cmdline(p))] == []


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def test_up_refuses_a_folder_whose_parent_is_missing(tmp_path: Path) -> None:
    """`sandbox up` exits 2 with a clear message when DIR's parent does not exist."""
    result = CliRunner().invoke(sandbox_cli, ["up", "--dir", str(tmp_path / "no/such")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_written_config_loads(sandbox: fleet.SandboxInfo) -> None:
    """immunity.yaml written by `up` passes the config loader, with the fleet's ports."""
    loaded = load(sandbox.config_path)
    assert {h.name: h.port for h in loaded.config.hosts} == sandbox.host_ports
    assert (loaded.config.balancer.kind, loaded.config.driver.kind) == ("haproxy", "local")
    assert list(loaded.signals) == ["lb"]


async def test_load_records_every_request_with_its_host(
    sandbox: fleet.SandboxInfo, tmp_path: Path
) -> None:
    """The load generator writes one line per request, naming the host that answered."""
    out = tmp_path / "load.jsonl"
    summary = await run_load(sandbox.url + "/", 100, 1.0, out)
    records = read_records(out)
    assert 100 == summary.requests == len(records)
    assert Counter(r["host"] for r in records) == {"h1": 50, "h2": 50}
    assert {200} == {r["status"] for r in records}
    assert summary.failed == 0
    assert 0 < summary.p50_ms <= summary.p99_ms <= summary.max_ms


async def test_release_with_error_rate_one_answers_500(sandbox: fleet.SandboxInfo) -> None:
    """A host switched to a release with error_rate 1.0 answers every request with 500."""
    fleet.add_release(sandbox.dir, "broken", error_rate=1.0)
    driver = LocalDriver(LocalDriver.Settings(), base_dir=sandbox.dir)
    host = HostRef("h1", "127.0.0.1", sandbox.host_ports["h1"])
    await driver.install(host, "broken")
    await driver.start(host, "broken")
    try:
        async with aiohttp.ClientSession() as s:
            statuses = []
            for _ in range(10):
                async with s.get(host.base_url + "/") as resp:
                    statuses.append(resp.status)
                    assert resp.headers["X-Immunity-Release"] == "broken"
        assert statuses == [500] * 10
    finally:
        await driver.start(host, "v1")


async def test_cold_start_blocks_the_first_requests_but_not_health(
    sandbox: fleet.SandboxInfo,
) -> None:
    """With cold_start_s, /health answers at once while the first / waits out the warm-up."""
    import time

    fleet.add_release(sandbox.dir, "cold", cold_start_s=1.0)
    driver = LocalDriver(LocalDriver.Settings(), base_dir=sandbox.dir)
    host = HostRef("h2", "127.0.0.1", sandbox.host_ports["h2"])
    await driver.install(host, "cold")
    await driver.start(host, "cold")
    try:
        async with aiohttp.ClientSession() as s:
            t = time.monotonic()
            async with s.get(host.base_url + "/health") as resp:
                assert resp.status == 200
            assert time.monotonic() - t < 0.5
            t = time.monotonic()
            async with s.get(host.base_url + "/") as resp:
                assert resp.status == 200
            assert time.monotonic() - t >= 0.9
            t = time.monotonic()
            async with s.get(host.base_url + "/") as resp:
                assert resp.status == 200
            assert time.monotonic() - t < 0.5
    finally:
        await driver.start(host, "v1")


async def test_a_late_onset_release_answers_500_only_after_its_delay(
    sandbox: fleet.SandboxInfo,
) -> None:
    """With errors_after_s, a release serves 200 at first and 500 once the delay has passed."""
    import time

    fleet.add_release(sandbox.dir, "late", error_rate=1.0, errors_after_s=1.5)
    driver = LocalDriver(LocalDriver.Settings(), base_dir=sandbox.dir)
    host = HostRef("h1", "127.0.0.1", sandbox.host_ports["h1"])
    await driver.install(host, "late")
    await driver.start(host, "late")
    began = time.monotonic()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(host.base_url + "/") as resp:
                assert resp.status == 200
            assert time.monotonic() - began < 1.0  # the first answer came before the delay
            statuses = []
            deadline = time.monotonic() + 10
            while not statuses or statuses[-1] != 500:
                assert time.monotonic() < deadline, statuses
                async with s.get(host.base_url + "/") as resp:
                    statuses.append(resp.status)
                await asyncio.sleep(0.1)
            assert time.monotonic() - began >= 1.4
    finally:
        await driver.start(host, "v1")
