"""`immunity bench journal-writes`: a host switch's journal writes, ours against one append
per entry, on PostgreSQL and SQLite.

Each run is a fresh process that begins a deployment, takes its lease and walks `hosts`
hosts, `parallel` at a time, writing exactly what the engine writes for a switch (each of
the seven steps started and finished, then `host.switched`: 15 entries, with the engine's
data), every write under the lease's fencing token and awaited before the next:

* **ours** (`append_all`, as `engine.record.Recorder.record_all`): a step's finish and the
  next step's start in one durable write (`append_many` where the journal has it): 8 writes
  per switch;
* **naive**: one `append` per entry: 15 writes per switch.

The hosts do no work between writes, so the figures are the journal's own cost: writes and
commits (transactions; group commit puts concurrent writes in one) per switch, rows per
second, the process's CPU per switch (every thread: the journal's own included, not the
database server's), and each write's latency as the walk awaits it (p50, p99). The load
average is read before and after each run: the machine is shared.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from immunity.journal import open_journal
from immunity.journal.base import EntryItem, Journal, append_all

STEPS = ("drain", "stop", "install", "start", "verify", "warmup", "enable")
WAYS = ("ours", "naive")


def _writes(host: str) -> list[list[EntryItem]]:
    """A switch's writes, as the engine groups them: the first step's start alone, then each
    step's finish with the next step's start, the last finish with `host.switched`."""
    started = {"release": "v2", "purpose": "deploy"}
    out: list[list[EntryItem]] = [[("host.step_started", host, STEPS[0], started)]]
    for i, step in enumerate(STEPS):
        finished = {"release": "v2", "seconds": 0.5}
        nxt: EntryItem = (
            ("host.step_started", host, STEPS[i + 1], started)
            if i + 1 < len(STEPS)
            else ("host.switched", host, None, {"release": "v2"})
        )
        out.append([("host.step_finished", host, step, finished), nxt])
    return out


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


async def _walks(location: str, way: str, hosts: int, parallel: int) -> dict[str, Any]:
    j: Journal = open_journal(
        Path(location[7:]) if location.startswith("sqlite:") else Path("unused"), location
    )
    lat: list[float] = []
    writes = 0
    try:
        d = await j.begin("bench-writes", "v2", {"way": way})
        lease = await j.acquire_lease("bench-writes", f"bench:{os.getpid()}", d.id, 300)
        sem = anyio.Semaphore(parallel)

        async def walk(h: str) -> None:
            nonlocal writes
            async with sem:
                for items in _writes(h):
                    if way == "ours":
                        t0 = time.perf_counter()
                        await append_all(j, d.id, items, token=lease.token)
                        lat.append(time.perf_counter() - t0)
                        writes += 1
                        continue
                    for kind, host, step, data in items:
                        t0 = time.perf_counter()
                        await j.append(
                            d.id, kind, host=host, step=step, data=data, token=lease.token
                        )
                        lat.append(time.perf_counter() - t0)
                        writes += 1

        cpu0, t0 = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(hosts):
                tg.start_soon(walk, f"h{i + 1}")
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        aio = getattr(j, "aio", j)
        commits = int(getattr(aio, "commits", 0))
        rows = len(await j.entries(d.id))
        await j.release_lease(lease)
    finally:
        await j.close()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "writes": writes,
        "commits": commits,
        "rows": rows,
        "p50_ms": _pct(lat, 0.5) * 1000,
        "p99_ms": _pct(lat, 0.99) * 1000,
    }


def _run_one(location: str, way: str, hosts: int, parallel: int) -> dict[str, Any]:
    return anyio.run(_walks, location, way, hosts, parallel)


def run(
    url: str, *, hosts: int = 1000, parallel: int = 100, sqlite_path: str | None = None
) -> dict[str, Any]:
    """Both ways on PostgreSQL at `url`, then on SQLite (a temporary file unless
    `sqlite_path`); each run in a fresh process."""
    from immunity.journal.postgres import redact

    runs = []
    with tempfile.TemporaryDirectory(prefix="immunity-bench-writes-") as tmp:
        journals = [
            (f"postgresql {redact(url)}", url),
            ("sqlite", f"sqlite:{sqlite_path or Path(tmp) / 'journal.db'}"),
        ]
        ctx = multiprocessing.get_context("spawn")
        for name, location in journals:
            for way in WAYS:
                load0 = os.getloadavg()[0]
                with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
                    r = ex.submit(_run_one, location, way, hosts, parallel).result(timeout=1800)
                runs.append(
                    {
                        "journal": name,
                        "way": way,
                        "hosts": hosts,
                        "parallel": parallel,
                        "writes_per_switch": round(r["writes"] / hosts, 2),
                        "commits_per_switch": round(r["commits"] / hosts, 2),
                        "rows": r["rows"],
                        "rows_per_s": round(r["rows"] / r["wall_s"], 1),
                        "cpu_ms_per_switch": round(r["cpu_s"] * 1000 / hosts, 3),
                        "p50_ms": round(r["p50_ms"], 2),
                        "p99_ms": round(r["p99_ms"], 2),
                        "wall_s": round(r["wall_s"], 2),
                        "load_before": round(load0, 2),
                        "load_after": round(os.getloadavg()[0], 2),
                    }
                )
    return {"bench": "journal-writes", "runs": runs}


def render(result: dict[str, Any], console: Console) -> None:
    r0 = result["runs"][0]
    t = Table(
        title=f"a host switch's journal writes: {r0['hosts']:,} hosts, {r0['parallel']} at a "
        "time (ours: a step's finish with the next start; naive: one append per entry)"
    )
    cols = (
        "journal",
        "way",
        "writes/switch",
        "commits/switch",
        "rows/s",
        "CPU ms/switch",
        "p50 ms",
        "p99 ms",
        "wall s",
        "load",
    )
    for c in cols:
        t.add_column(c, justify="left" if c in ("journal", "way") else "right")
    for r in result["runs"]:
        t.add_row(
            r["journal"],
            r["way"],
            f"{r['writes_per_switch']:.2f}",
            f"{r['commits_per_switch']:.2f}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['cpu_ms_per_switch']:.2f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{r['load_before']:.1f} → {r['load_after']:.1f}",
        )
    console.print(t)
