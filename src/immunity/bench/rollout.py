"""`immunity bench rollout`: the same release rolled three ways under the same load.

    immunity    drain → stop → install → start → verify → warm up → enable (the engine's switch)
    naive       stop and start in place, no drain, no warm-up (what most deploy scripts do)
    drain_only  drain → switch → enable, no warm-up

Each way gets a fresh sandbox with the same hosts, the same release (with a cold start) and
the same open-loop customer load from a separate process; hosts switch one at a time. The
customers' record gives requests, failures and latency percentiles before and during the
rollout; the orchestrator's peak RSS is reported too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from immunity import config as cfgmod
from immunity.engine.capacity import CapacityGuard
from immunity.engine.host import HostSwitcher
from immunity.engine.record import Recorder
from immunity.fleet.context import build_fleet
from immunity.sandbox import fleet as sandbox
from immunity.sandbox.scenario import LoadProcess, peak_rss_mb, phase

WAYS = {
    "immunity": {"drain": True, "warmup": True},
    "naive": {"drain": False, "warmup": False},
    "drain_only": {"drain": True, "warmup": False},
}
STEADY_S = 6.0
TAIL_S = 2.0


def _one_way(way: str, hosts: int, rps: float, cold_start_s: float) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix=f"immunity-bench-{way}-"))
    info = sandbox.create_sandbox(d, hosts)
    try:
        sandbox.add_release(d, "v2", cold_start_s=cold_start_s)
        loaded = cfgmod.load(info.config_path)
        fl = build_fleet(loaded)
        load = LoadProcess(d, rps, d / "load.jsonl")
        try:
            load.wait_started()
            t_steady = time.time()
            time.sleep(STEADY_S)
            t0 = time.time()

            async def roll() -> None:
                try:
                    deployment = await fl.journal.begin(fl.app, "v2", {"bench": way})
                    rec = Recorder(fl, deployment.id, "v2", None)
                    sw = HostSwitcher(fl, rec, CapacityGuard(1), **WAYS[way])
                    for h in fl.hosts:
                        await sw.switch(h, "v2")
                finally:
                    await fl.aclose()
                    await fl.journal.close()

            anyio.run(roll)
            t1 = time.time()
            time.sleep(TAIL_S)
            t2 = time.time()
        finally:
            load.stop()
        rows = load.records()
    finally:
        sandbox.teardown(d)
    steady = phase("steady", rows, t_steady, t0)
    during = phase("rollout", rows, t0, t2)
    return {
        "requests": during.requests,
        "failed": during.failed,
        "p50_ms": round(during.p50_ms, 2),
        "p99_ms": round(during.p99_ms, 2),
        "max_ms": round(during.max_ms, 2),
        "steady_p99_ms": round(steady.p99_ms, 2),
        "duration_s": round(t1 - t0, 2),
    }


def run(hosts: int = 6, rps: float = 200.0, cold_start_s: float = 3.0) -> dict[str, Any]:
    ways = {way: _one_way(way, hosts, rps, cold_start_s) for way in WAYS}
    return {
        "hosts": hosts,
        "rps": rps,
        "cold_start_s": cold_start_s,
        "ways": ways,
        "orchestrator_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def render(result: dict[str, Any], console: Console) -> None:
    t = Table(
        title=f"rollout of a release with a {result['cold_start_s']:g}s cold start over "
        f"{result['hosts']} hosts at {result['rps']:g} req/s"
    )
    for col in (
        "way",
        "requests",
        "failed",
        "p50 ms",
        "p99 ms",
        "max ms",
        "steady p99 ms",
        "p99/steady",
        "duration s",
    ):
        t.add_column(col, justify="left" if col == "way" else "right")
    for way, w in result["ways"].items():
        ratio = w["p99_ms"] / w["steady_p99_ms"] if w["steady_p99_ms"] else float("nan")
        t.add_row(
            way,
            str(w["requests"]),
            str(w["failed"]),
            f"{w['p50_ms']:.1f}",
            f"{w['p99_ms']:.1f}",
            f"{w['max_ms']:.0f}",
            f"{w['steady_p99_ms']:.1f}",
            f"{ratio:.2f}×",
            f"{w['duration_s']:.1f}",
        )
    console.print(t)
    console.print(f"orchestrator peak memory: {result['orchestrator_peak_rss_mb']:.0f} MB")
