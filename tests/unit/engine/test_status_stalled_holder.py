"""`status` over a lease whose holder went silent: a run that is stopped is not simply "in
progress"; the line says it is stopped and how to get past it. The holder is a real process
of this machine, stopped with SIGSTOP; the fleet is immunity.testing's in-memory one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import anyio
import psutil

from immunity.cli.status import status
from immunity.journal.holder import machine_name
from immunity.testing import memory_fleet


def test_status_names_a_stopped_silent_lease_holder_and_the_way_past_it() -> None:
    """The lease is held by a process stopped past lease_ttl (2 s): status's attention line
    names its pid, that it is stopped, `kill -CONT` / `kill` and `immunity resume`; the
    JSON says `holder_stopped` and `silent`. Before lease_ttl it is "in progress"."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        fleet, _ = memory_fleet(3, config={"lease_ttl": 2})

        async def main() -> tuple[dict[str, Any], dict[str, Any]]:
            d = await fleet.journal.begin(fleet.app, "v2", {})
            await fleet.journal.acquire_lease(fleet.app, f"{machine_name()}:{proc.pid}", d.id, 2)
            fresh = await status(fleet)
            await anyio.sleep(2.2)
            return fresh, await status(fleet)

        fresh, silent = anyio.run(main)
    finally:
        proc.kill()
        proc.wait(30)
    assert any(a.startswith("a run is in progress") for a in fresh["attention"])
    (line,) = [a for a in silent["attention"] if "heart-beaten" in a]
    assert f"pid {proc.pid} on this machine, is stopped (SIGSTOP)" in line, line
    assert f"`kill -CONT {proc.pid}`" in line and f"`kill {proc.pid}`" in line, line
    assert "`immunity resume -c" in line, line
    assert silent["lease"]["holder_stopped"] and silent["lease"]["silent"]
