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


async def test_a_release_with_a_fault_file_answers_500_only_once_the_file_exists(
    sandbox: fleet.SandboxInfo,
) -> None:
    """With errors_from_file, a release serves 200 until the file is created, then 500."""
    trigger = sandbox.dir / "fault-now"
    fleet.add_release(sandbox.dir, "armed", error_rate=1.0, errors_from_file=trigger)
    driver = LocalDriver(LocalDriver.Settings(), base_dir=sandbox.dir)
    host = HostRef("h1", "127.0.0.1", sandbox.host_ports["h1"])
    await driver.install(host, "armed")
    await driver.start(host, "armed")
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(20):
                async with s.get(host.base_url + "/") as resp:
                    assert resp.status == 200
            trigger.touch()
            async with s.get(host.base_url + "/") as resp:
                assert resp.status == 500
            trigger.unlink()  # once started, the fault stays
            async with s.get(host.base_url + "/") as resp:
                assert resp.status == 500
    finally:
        await driver.start(host, "v1")


@pytest.mark.parametrize("log_format", ["httplog", "json"])
def test_up_log_format_writes_that_access_log_line_and_the_signal_reads_it(
    tmp_path: Path, log_format: str
) -> None:
    """`sandbox up --log-format httplog|json`: the real HAProxy writes every request as that
    line (an httplog line is not JSON and vice versa), the written immunity.yaml names the
    format, and the haproxy signal's parser for that format counts each request with its
    server and status."""
    import json
    import time

    import httpx

    from immunity.signals.haproxy import LogParser, LogRecord

    d = tmp_path / "f"
    result = CliRunner().invoke(
        sandbox_cli, ["up", "--dir", str(d), "--hosts", "2", "--log-format", log_format]
    )
    assert result.exit_code == 0, result.output
    try:
        url = result.output.split("balancer: ", 1)[1].split()[0]
        with httpx.Client(timeout=5.0) as client:
            statuses = [client.get(url + "/").status_code for _ in range(12)]
        assert statuses == [200] * 12
        log = d / "haproxy" / "access.log"
        parser = LogParser(log_format)  # type: ignore[arg-type]
        deadline = time.monotonic() + 10.0
        records: list[LogRecord] = []
        while time.monotonic() < deadline:
            lines = [ln for ln in log.read_text().splitlines() if "be_app" in ln]
            records = [r for ln in lines if isinstance(r := parser.parse(ln), LogRecord)]
            if len(records) >= 12:
                break
            time.sleep(0.2)
        assert len(records) == 12, log.read_text()[-2000:]
        assert {r.server for r in records} == {"h1", "h2"} and {r.status for r in records} == {200}
        line = next(
            ln for ln in log.read_text().splitlines() if isinstance(parser.parse(ln), LogRecord)
        )
        if log_format == "json":
            assert json.loads(line[line.index("{") :])["srv"] in ("h1", "h2")
        else:
            assert not line.lstrip().startswith("{") and " be_app/h" in line, line
        signal = load(str(d / "immunity.yaml")).config.signals[0]
        assert getattr(signal, "log_format", None) == log_format or (
            signal.model_dump().get("log_format") == log_format
        )
    finally:
        fleet.teardown(d)


def test_up_refuses_an_unknown_log_format(tmp_path: Path) -> None:
    """`--log-format xml`: exit 2 naming the formats there are; nothing is started."""
    result = CliRunner().invoke(
        sandbox_cli, ["up", "--dir", str(tmp_path / "f"), "--log-format", "xml"]
    )
    assert result.exit_code == 2, result.output
    assert "httplog" in result.output and "json" in result.output
    assert not (tmp_path / "f" / "pids" / "haproxy.pid").exists()


def test_up_with_impact_measures_customers_through_the_balancer(tmp_path: Path) -> None:
    """`sandbox up --impact` writes an `impact` block aimed at the sandbox's own balancer (a
    request to it is answered by a host); without the flag the block is there commented out,
    saying why it is off and how to turn it on, and the config has no impact."""
    import httpx

    d = tmp_path / "f"
    result = CliRunner().invoke(sandbox_cli, ["up", "--dir", str(d), "--hosts", "2", "--impact"])
    try:
        assert result.exit_code == 0, result.output
        impact = load(d / "immunity.yaml").config.impact
        assert impact is not None and impact.rps == 5
        balancer = result.output.split("balancer: ")[1].split()[0]
        assert impact.url == balancer
        assert httpx.get(impact.url + impact.paths[0], timeout=5).status_code == 200
    finally:
        CliRunner().invoke(sandbox_cli, ["down", "--dir", str(d)])
    plain = tmp_path / "g"
    result = CliRunner().invoke(sandbox_cli, ["up", "--dir", str(plain), "--hosts", "2"])
    try:
        assert result.exit_code == 0, result.output
        assert load(plain / "immunity.yaml").config.impact is None
        text = (plain / "immunity.yaml").read_text()
        assert "# impact:\n#   url: http://127.0.0.1:" in text
        assert "immunity sandbox up --impact" in text
    finally:
        CliRunner().invoke(sandbox_cli, ["down", "--dir", str(plain)])
