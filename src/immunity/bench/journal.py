"""`immunity bench journal`: many orchestrators on one journal, PostgreSQL beside SQLite.

`processes` orchestrator processes start at the same instant and each tries to deploy every
one of `apps` apps at once (one task per app), so every app's lease is raced for by all of
them. The winner of an app runs the journal write pattern of a deployment of a `hosts`-host
fleet (waves 1 / 25% / 100%, `parallel` hosts switched at a time, each host's seven steps
journaled before and after plus its switch, the bake's looks, a heartbeat every 50 writes,
every append carrying the fencing token), then finishes and releases; the others are refused
(LeaseHeld), which is a *correct* refusal.

Measured: writes per second over the whole run, p50/p99 latency of one write (as the
engine awaits it), correct refusals, and **wrong grants**: two holders of one app's lease at
once (overlapping grant intervals, read from every process's clock on this machine), a token
granted twice, or a deployment whose entries in the journal are not exactly the ones its
holder wrote. The same run on the naive lease (read the row, then write it, no row lock)
shows what the check catches.

The hosts are not real: the in-memory fleet (`immunity.testing`) was not on main when this
was written, so the bench drives the journal directly with a deployment's write pattern
(the same calls, kinds and sizes the engine makes). Timed on whatever else the machine runs:
compare the columns of one run, not runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import psycopg
from rich.console import Console
from rich.table import Table

from immunity.errors import LeaseHeld
from immunity.journal import Journal, open_journal

STEPS = ("drain", "stop", "install", "start", "verify", "warmup", "enable")
LOOKS_PER_WAVE = 5


def _waves(hosts: int) -> list[list[str]]:
    names = [f"h{i + 1}" for i in range(hosts)]
    first, quarter = 1, max(2, hosts // 4)
    return [names[:first], names[first : first + quarter], names[first + quarter :]]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _deploy(
    j: Journal, app: str, holder: str, hosts: int, parallel: int, lat: list[float]
) -> dict[str, Any]:
    """One deployment's journal writes, under the lease; returns its grant record."""
    writes = 0

    async def timed(coro: Any) -> Any:
        nonlocal writes
        t0 = time.perf_counter()
        out = await coro
        lat.append(time.perf_counter() - t0)
        writes += 1
        return out

    try:
        t0 = time.perf_counter()
        lease = await j.acquire_lease(app, holder, f"{app}-{holder}", 30.0)
        lat.append(time.perf_counter() - t0)
    except LeaseHeld:
        return {"granted": False}
    granted_at = time.time()
    rec = await timed(j.begin(app, "v2", {"fallbacks": {f"h{i + 1}": "v1" for i in range(hosts)}}))
    tok = lease.token
    await timed(j.append(rec.id, "deployment.started", data={"holder": holder}, token=tok))
    sem = anyio.Semaphore(parallel)

    async def switch(h: str) -> None:
        async with sem:
            for step in STEPS:
                data = {"release": "v2", "purpose": "deploy"}
                await timed(
                    j.append(rec.id, "host.step_started", host=h, step=step, data=data, token=tok)
                )
                await timed(
                    j.append(rec.id, "host.step_finished", host=h, step=step, data=data, token=tok)
                )
            await timed(
                j.append(rec.id, "host.switched", host=h, data={"release": "v2"}, token=tok)
            )

    for w, wave in enumerate(_waves(hosts), start=1):
        await timed(j.append(rec.id, "wave.started", data={"wave": w, "hosts": wave}, token=tok))
        async with anyio.create_task_group() as tg:
            for h in wave:
                tg.start_soon(switch, h)
        await timed(j.append(rec.id, "bake.started", data={"wave": w}, token=tok))
        for look in range(LOOKS_PER_WAVE):
            await timed(
                j.append(
                    rec.id,
                    "verdict.looked",
                    data={"wave": w, "t_s": look, "outcome": "continue", "canary": wave},
                    token=tok,
                )
            )
            if writes % 50 < 5:
                await timed(j.heartbeat(lease))
        await timed(j.append(rec.id, "wave.passed", data={"wave": w}, token=tok))
    await timed(j.finish(rec.id, "deployed", "bench", {"result": {"exit_code": 0}}, token=tok))
    released_at = time.time()
    await timed(j.release_lease(lease))
    return {
        "granted": True,
        "app": app,
        "holder": holder,
        "token": lease.token,
        "deployment_id": rec.id,
        "granted_at": granted_at,
        "released_at": released_at,
        "writes": writes,
    }


async def _worker(
    location: str, apps: int, hosts: int, parallel: int, start_at: float
) -> dict[str, Any]:
    holder = f"bench-{os.getpid()}"
    j = open_journal(
        Path(location[7:]) if location.startswith("sqlite:") else Path("unused"), location
    )
    lat: list[float] = []
    grants: list[dict[str, Any]] = []
    refused = 0
    await anyio.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()

    async def one(app: str) -> None:
        nonlocal refused
        await anyio.sleep(random.uniform(0, 0.02))
        got = await _deploy(j, app, holder, hosts, parallel, lat)
        if got["granted"]:
            grants.append(got)
        else:
            refused += 1

    try:
        async with anyio.create_task_group() as tg:
            for a in range(apps):
                tg.start_soon(one, f"app{a:02d}")
    finally:
        await j.close()
    return {
        "holder": holder,
        "grants": grants,
        "refused": refused,
        "lat": lat,
        "wall_s": time.perf_counter() - t0,
    }


def _worker_sync(
    location: str, apps: int, hosts: int, parallel: int, start_at: float
) -> dict[str, Any]:
    return anyio.run(_worker, location, apps, hosts, parallel, start_at)


def _wrong_grants(grants: list[dict[str, Any]]) -> list[str]:
    """Two holders of one app at once, or one token granted twice."""
    problems = []
    by_app: dict[str, list[dict[str, Any]]] = {}
    for g in grants:
        by_app.setdefault(g["app"], []).append(g)
    for app, gs in by_app.items():
        gs.sort(key=lambda g: g["granted_at"])
        tokens = [g["token"] for g in gs]
        if len(set(tokens)) != len(tokens):
            problems.append(f"{app}: token granted twice {tokens}")
        for a, b in itertools.pairwise(gs):
            if b["granted_at"] < a["released_at"]:
                problems.append(f"{app}: {b['holder']} granted while {a['holder']} held it")
    return problems


async def _entries_intact(location: str, grants: list[dict[str, Any]]) -> list[str]:
    """Each granted deployment holds exactly its holder's entries (read back afterwards)."""
    j = open_journal(
        Path(location[7:]) if location.startswith("sqlite:") else Path("unused"), location
    )
    problems = []
    try:
        for g in grants:
            entries = await j.entries(g["deployment_id"])
            holders = {e.data.get("holder") for e in entries if e.kind == "deployment.started"}
            if holders != {g["holder"]}:
                problems.append(f"{g['app']}: deployment.started by {holders}")
    finally:
        await j.close()
    return problems


def run_journal(
    location: str, *, apps: int, processes: int, hosts: int, parallel: int
) -> dict[str, Any]:
    """One backend: `processes` processes racing for `apps` apps; figures as a dict."""
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # every process has imported and connected by then
    with cf.ProcessPoolExecutor(processes, mp_context=ctx) as ex:
        futs = [
            ex.submit(_worker_sync, location, apps, hosts, parallel, start_at)
            for _ in range(processes)
        ]
        results = [f.result(timeout=900) for f in futs]
    grants = [g for r in results for g in r["grants"]]
    lat = [x for r in results for x in r["lat"]]
    writes = len(lat)  # every timed call is a write transaction (acquire attempts included)
    wall = max(r["wall_s"] for r in results)
    problems = _wrong_grants(grants) + anyio.run(_entries_intact, location, grants)
    return {
        "journal": "postgresql" if location.startswith("postgres") else "sqlite",
        "processes": processes,
        "apps": apps,
        "hosts_per_app": hosts,
        "deployments": len(grants),
        "apps_deployed": len({g["app"] for g in grants}),
        "refused_correctly": sum(r["refused"] for r in results),
        "wrong_grants": len(problems),
        "problems": problems[:10],
        "writes": writes,
        "wall_s": round(wall, 2),
        "writes_per_s": round(writes / wall, 1) if wall else 0.0,
        "p50_ms": round(_pct(lat, 0.50) * 1000, 2),
        "p99_ms": round(_pct(lat, 0.99) * 1000, 2),
        "max_ms": round(max(lat) * 1000, 2) if lat else 0.0,
        "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else 0.0,
    }


# -- the naive lease: read the row, then write it (no row lock, no transaction) ------------


def _naive_worker(url: str, apps: int, start_at: float) -> list[tuple[str, float, float, str]]:
    holder = f"naive-{os.getpid()}"
    out = []
    with psycopg.connect(url, autocommit=True) as c:
        time.sleep(max(0.0, start_at - time.time()))
        for a in range(apps):
            app = f"app{a:02d}"
            row = c.execute("SELECT holder FROM bench_naive_leases WHERE app=%s", (app,)).fetchone()
            time.sleep(0.001)  # one network round trip to a database on another machine
            if row is None or row[0] is None:
                c.execute(
                    "INSERT INTO bench_naive_leases(app, holder) VALUES (%s, %s) "
                    "ON CONFLICT (app) DO UPDATE SET holder=excluded.holder",
                    (app, holder),
                )
                t0 = time.time()
                time.sleep(0.002)  # the deployment's first writes
                out.append((app, t0, time.time(), holder))
    return out


def run_naive(url: str, *, apps: int, processes: int) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS bench_naive_leases")
        c.execute("CREATE TABLE bench_naive_leases (app TEXT PRIMARY KEY, holder TEXT)")
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0
    with cf.ProcessPoolExecutor(processes, mp_context=ctx) as ex:
        futs = [ex.submit(_naive_worker, url, apps, start_at) for _ in range(processes)]
        grants = [g for f in futs for g in f.result(timeout=300)]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DROP TABLE bench_naive_leases")
    per_app: dict[str, int] = {}
    for app, *_ in grants:
        per_app[app] = per_app.get(app, 0) + 1
    return {
        "journal": "postgresql, naive lease (read then write)",
        "apps": apps,
        "processes": processes,
        "grants": len(grants),
        "wrong_grants": sum(n - 1 for n in per_app.values()),
    }


def run(
    url: str,
    *,
    sqlite_path: str | None = None,
    apps: int = 20,
    processes: int = 4,
    hosts: int = 50,
    parallel: int = 5,
) -> dict[str, Any]:
    """PostgreSQL at `url`, then SQLite (a temporary file unless `sqlite_path`)."""
    results = [run_journal(url, apps=apps, processes=processes, hosts=hosts, parallel=parallel)]
    with tempfile.TemporaryDirectory(prefix="immunity-bench-") as tmp:
        path = sqlite_path or str(Path(tmp) / "journal.db")
        results.append(
            run_journal(
                f"sqlite:{path}", apps=apps, processes=processes, hosts=hosts, parallel=parallel
            )
        )
    naive = run_naive(url, apps=apps, processes=processes)
    return {
        "bench": "journal",
        "fleet": "journal write pattern of a deployment (no in-memory fleet on main yet)",
        "results": results,
        "naive": naive,
    }


def render(result: dict[str, Any], console: Console) -> None:
    r0 = result["results"][0]
    table = Table(
        title=f"{r0['apps']} apps x {r0['hosts_per_app']} hosts, {r0['processes']} orchestrator "
        "processes racing for every app"
    )
    for col in (
        "journal",
        "deployments",
        "refused (correct)",
        "wrong grants",
        "writes",
        "writes/s",
        "p50 write",
        "p99 write",
        "max",
    ):
        table.add_column(col)
    for r in result["results"]:
        table.add_row(
            r["journal"],
            f"{r['deployments']} ({r['apps_deployed']} apps)",
            str(r["refused_correctly"]),
            f"[{'green' if r['wrong_grants'] == 0 else 'red'}]{r['wrong_grants']}[/]",
            f"{r['writes']:,}",
            f"{r['writes_per_s']:,}",
            f"{r['p50_ms']} ms",
            f"{r['p99_ms']} ms",
            f"{r['max_ms']} ms",
        )
    n = result["naive"]
    table.add_row(
        n["journal"], str(n["grants"]), "", f"[red]{n['wrong_grants']}[/]", "", "", "", "", ""
    )
    console.print(table)
    console.print(f"fleet: {result['fleet']}", highlight=False)
    for r in result["results"]:
        for p in r["problems"]:
            console.print(f"[red]{r['journal']}: {p}[/]", highlight=False)
