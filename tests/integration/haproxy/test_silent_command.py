"""Preflight's cross-check of a silent signal with the balancer's own counters, for a
`command` signal: customers go through a real HAProxy sandbox, a shipper appends one
JSON line per answered request to an access log, and the documented example command
(docs/adapters/examples/checkout_latency.py) counts that log."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from immunity.analysis.preflight import cross_check_traffic
from immunity.domain import HostRef
from immunity.errors import PreflightError
from immunity.sandbox import fleet
from immunity.signals.command import CommandSource
from servers.customers import Shipper, customers, pool, sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "adapters" / "examples"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[fleet.SandboxInfo, list[HostRef]]]:
    with sandbox(tmp_path_factory.mktemp("silent-cmd") / "fleet") as s:
        yield s


def shipper(log: Path) -> Shipper:
    """Append each answered request as the example's log line (the shop's checkout)."""

    def ship(records: list[dict[str, Any]]) -> None:
        with log.open("a") as out:
            for r in records:
                if not r["host"]:
                    continue
                at = dt.datetime.fromtimestamp(r["at"] + r["latency_ms"] / 1000, dt.UTC)
                line = {
                    "ts": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "host": r["host"],
                    "path": "/checkout",
                    "status": r["status"],
                    "latency_ms": r["latency_ms"],
                }
                out.write(json.dumps(line) + "\n")

    return ship


def source(log: Path) -> CommandSource:
    settings = CommandSource.Settings(
        name="checkout",
        command=[sys.executable, str(EXAMPLE / "checkout_latency.py")],
        env={"CHECKOUT_LOG": str(log)},
        timeout=20,
    )
    return CommandSource(settings, base_dir=EXAMPLE)


async def test_a_command_signal_that_sees_none_of_the_traffic_is_refused(
    stack: tuple[fleet.SandboxInfo, list[HostRef]], tmp_path: Path
) -> None:
    """The command reads yesterday's rotated log (empty) while HAProxy serves the hosts:
    it counts none, and preflight refuses naming the signal and HAProxy's counts. Pointed
    at the log the shipper writes, it counts them and preflight passes."""
    info, hosts = stack
    log, rotated = tmp_path / "access.jsonl", tmp_path / "access.jsonl.1"
    log.write_text("")
    rotated.write_text("")
    wrong, right, lb = source(rotated), source(log), pool(info)
    async with customers(info, shippers=(shipper(log),)):
        await anyio.sleep(3)
        await wrong.preflight(hosts)
        assert wrong.recent_traffic is not None and wrong.recent_traffic.silent
        assert log.read_text(), "the shipper wrote nothing"
        with anyio.fail_after(30), pytest.raises(PreflightError) as raised:
            await cross_check_traffic(lb, {"checkout": wrong}, hosts)
        msg = raised.value.message
        assert "signal 'checkout' saw no request" in msg and "last session h" in msg, msg
        await right.preflight(hosts)
        assert right.recent_traffic is not None and not right.recent_traffic.silent
        await cross_check_traffic(lb, {"checkout": right}, hosts)
