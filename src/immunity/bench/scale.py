"""`immunity bench scale`: the orchestrator's own cost on a fleet of N in-memory hosts.

Each run deploys a good release over N hosts (waves 1%, 10%, 50%, 100%; `max_unavailable`
10%; an errors check; bake 10 s minimum, one look a second) whose balancer, driver, prober
and signal source are `immunity.testing`'s in-memory ones with realistic latencies (2 s
drain, 0.2 s stop, 0.5 s install, 1 s start, 0.3 s verify, 1 s warm-up, 0.5 s health, 1 ms
per read), journaled in SQLite (the default journal, WAL, synchronous=FULL) in a temp folder,
or in the PostgreSQL database `--journal postgresql://...` names (a deployment of its own;
the bench writes nothing else there).

Figures, per N, each run in a fresh process:
* `cpu_ms_per_switch`: the process's CPU time (all threads) from `deploy` called to
  returned / hosts switched;
* `peak_rss_mb`: the process's peak resident memory;
* `journal_rows_per_s`: journal entries written / wall time;
* `journal_writes_per_switch`: the engine's durable journal writes (each `append` or
  `append_many`: one commit wait) / hosts switched; `journal_commits_per_switch`: the
  journal's transactions / hosts switched (fewer: appends asked for at once share one);
* `wall_s` (from `deploy` called to returned; the bench's own count of the rows comes
  after it) against `configured_wait_s`: the same deployment (same seed, same signal draws)
  run first in virtual time, where the orchestrator's work takes no time, so its duration
  is exactly the sum of the waits the configuration and the judge's decisions impose.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import resource
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from immunity.clock import SYSTEM_CLOCK
from immunity.engine.deployment import deploy
from immunity.journal.sqlite import SqliteJournal
from immunity.testing import Behaviour, Latencies, MemoryJournal, VirtualClock, memory_fleet
from immunity.testing.clock import TURN_S

RELEASES = {"v1": Behaviour(error_rate=0.01), "v2": Behaviour(error_rate=0.01)}


def config(hosts: int) -> dict[str, Any]:
    return {
        "app": "bench-scale",
        "waves": ["1%", "10%", "50%", "100%"],
        "max_unavailable": max(1, hosts // 10),
        "checks": [{"name": "errors", "signal": "lb", "kind": "errors"}],
        "bake": {"min": 10, "max": 300, "interval": 1, "lag": 0},
        "lease_ttl": 30,
        # no guard after the last wave (on by default): it only adds a wait, no switches
        "guard": {"duration": 0},
    }


def _fleet(hosts: int, clock: Any, journal: Any) -> Any:
    fleet, world = memory_fleet(
        hosts,
        clock=clock,
        latencies=Latencies.realistic(),
        releases=RELEASES,
        config=config(hosts),
        journal=journal,
    )
    world.rps_per_host = 100.0
    return fleet, world


def virtual_run(hosts: int) -> dict[str, Any]:
    """The deployment in virtual time: the sum of the configured waits."""
    clock = VirtualClock()
    fleet, world = _fleet(hosts, clock, MemoryJournal(clock=clock, copy_data=False))

    async def main() -> str:
        return str((await deploy(fleet, "v2", handle_signals=False)).outcome)

    outcome = clock.run(main)
    return {
        "outcome": outcome,
        "configured_wait_s": round(clock.monotonic() - clock.turns * TURN_S, 3),
        "switches": world.switches,
    }


def _count_writes(j: Any) -> list[int]:
    """Count `j`'s durable writes (`append`, `append_many`) as the engine makes them."""
    writes = [0]
    for name in ("append", "append_many"):
        inner = getattr(j, name, None)
        if inner is None:
            continue

        def counted(*a: Any, _inner: Any = inner, **kw: Any) -> Any:
            writes[0] += 1
            return _inner(*a, **kw)

        setattr(j, name, counted)
    return writes


def _open(journal: str, folder: str) -> Any:
    if journal == "sqlite":
        return SqliteJournal(Path(folder) / "journal.db")
    if journal.startswith(("postgresql:", "postgres:")):
        from immunity.journal.postgres import PostgresJournal

        return PostgresJournal(journal)
    return MemoryJournal(copy_data=False)


def _commits(j: Any) -> int | None:
    aio = getattr(j, "aio", j)
    commits = getattr(aio, "commits", None)
    return int(commits) if commits is not None else None


def real_run(hosts: int, journal: str) -> dict[str, Any]:
    """The deployment in real time, measured."""
    with tempfile.TemporaryDirectory(prefix="immunity-bench-scale-") as d:
        j: Any = _open(journal, d)
        writes = _count_writes(j)
        fleet, world = _fleet(hosts, SYSTEM_CLOCK, j)
        import anyio

        rows: list[int] = []
        ended: list[float] = []
        commits: list[int | None] = []

        async def main() -> str:
            result = await deploy(fleet, "v2", handle_signals=False)
            # the deployment ends when `deploy` returns; counting its rows (reading back
            # every entry: 150,000 at 10,000 hosts, seconds of CPU) is the bench's own work
            ended.extend((time.monotonic(), time.process_time()))
            commits.append(_commits(j))
            if isinstance(j, SqliteJournal):
                await j.close()  # counted in SQL below: no 150,000 entries held in memory
            elif journal.startswith("postgres"):
                await j.close()
                rows.append(_pg_rows(journal, result.deployment_id))
            else:
                rows.append(len(await j.entries(result.deployment_id)))
            return str(result.outcome)

        cpu0, t0 = time.process_time(), time.monotonic()
        outcome = anyio.run(main)
        wall = ended[0] - t0
        cpu = ended[1] - cpu0
        if not rows:
            with contextlib.closing(sqlite3.connect(Path(d) / "journal.db")) as db:
                rows.append(int(db.execute("SELECT count(*) FROM entries").fetchone()[0]))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "outcome": outcome,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "switches": world.switches,
        "journal_rows": rows[0],
        "journal_writes": writes[0],
        "journal_commits": commits[0],
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }


def _pg_rows(url: str, deployment_id: str) -> int:
    import psycopg

    with psycopg.connect(url) as c:
        row = c.execute(
            "SELECT count(*) FROM entries WHERE deployment_id=%s", (deployment_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def _in_fresh_process(fn: Any, *args: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        out: dict[str, Any] = pool.submit(fn, *args).result()
    return out


def journal_name(journal: str) -> str:
    """`journal` as a report may show it: a PostgreSQL URL without its password."""
    if journal.startswith("postgres"):
        from immunity.journal.postgres import redact

        return f"postgresql {redact(journal)}"
    if ":" in journal or "@" in journal:  # a URL of another kind: no password shown
        return journal.split(":", 1)[0] + " URL"
    return journal


def run(hosts: list[int], journal: str = "sqlite") -> dict[str, Any]:
    """One run per fleet size; see the module docstring for the figures."""
    runs = []
    for n in hosts:
        twin = _in_fresh_process(virtual_run, n)
        real = _in_fresh_process(real_run, n, journal)
        switches = max(1, real["switches"])
        runs.append(
            {
                "hosts": n,
                "outcome": real["outcome"],
                "switches": real["switches"],
                "cpu_ms_per_switch": round(real["cpu_s"] * 1000 / switches, 3),
                "peak_rss_mb": real["peak_rss_mb"],
                "journal_rows": real["journal_rows"],
                "journal_rows_per_s": round(real["journal_rows"] / max(real["wall_s"], 1e-9), 1),
                "journal_writes_per_switch": round(real["journal_writes"] / switches, 2),
                "journal_commits_per_switch": (
                    None
                    if real["journal_commits"] is None
                    else round(real["journal_commits"] / switches, 2)
                ),
                "wall_s": real["wall_s"],
                "configured_wait_s": twin["configured_wait_s"],
                "overhead_pct": round(
                    100 * (real["wall_s"] / max(twin["configured_wait_s"], 1e-9) - 1), 2
                ),
                "journal": journal_name(journal),
            }
        )
    return {
        "runs": runs,
        "targets": {"cpu_ms_per_switch": 10, "peak_rss_mb_at_1000": 200, "overhead_pct": 5},
    }


def render(result: dict[str, Any], out: Console) -> None:
    t = Table(title="orchestrator cost on an in-memory fleet (realistic latencies)")
    for col in (
        "hosts",
        "outcome",
        "CPU ms/switch",
        "peak RSS MB",
        "journal rows/s",
        "writes/switch",
        "wall s",
        "configured waits s",
        "overhead",
    ):
        t.add_column(col, justify="right")
    for r in result["runs"]:
        t.add_row(
            f"{r['hosts']:,}",
            r["outcome"],
            f"{r['cpu_ms_per_switch']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['journal_rows_per_s']:.0f}",
            f"{r['journal_writes_per_switch']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{r['configured_wait_s']:.1f}",
            f"{r['overhead_pct']:+.1f}%",
        )
    out.print(t)
