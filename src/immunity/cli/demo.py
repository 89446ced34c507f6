"""`immunity demo`: the main job on the embedded defaults, start to finish.

A 5-host sandbox behind a real HAProxy, steady customer load from a separate process, a
rolling deploy of a good release with a 3 s cold start, then a bad release (5% errors) that
the immune system catches and reverts; the customers' view of each phase; the sandbox
torn down. Exit 0 when the good release landed and the bad one was reverted.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from immunity.cli.output import live_view, out, show_error
from immunity.errors import ImmunityError

if TYPE_CHECKING:
    from immunity.engine.result import RunResult


def _said(r: RunResult) -> str:
    """ "reverted: errors: canary 5xx …", the reason as the result line gives it (short, the
    outcome not said twice)."""
    from immunity.domain import brief, outcome_words, reason_beside

    return f"{outcome_words(str(r.outcome))}: {brief(reason_beside(str(r.outcome), r.reason))}"


def _deploy(config: Path, release: str) -> RunResult:
    import anyio

    from immunity import config as cfgmod
    from immunity.engine.deployment import deploy
    from immunity.fleet.context import build_fleet

    loaded = cfgmod.load(config)
    fl = build_fleet(loaded)

    async def main() -> RunResult:
        table = live_view([h.name for h in fl.hosts], f"deploying {release}")
        fl.sinks.append(table)
        try:
            with table:
                return await deploy(fl, release)
        finally:
            await fl.aclose()
            await fl.journal.close()

    result = anyio.run(main)
    try:  # the report every CLI deployment writes beside the journal (reports/<id>.html)
        from immunity.report import write_default

        anyio.run(write_default, loaded, result.deployment_id)
    except Exception as exc:  # a report never changes a deployment's outcome
        logging.getLogger("immunity").warning("the report could not be written: %s", exc)
    return result


def demo(
    hosts: Annotated[int, typer.Option(help="Hosts in the sandbox.")] = 5,
    rps: Annotated[float, typer.Option(help="Customer requests per second.")] = 100.0,
    cold_start_s: Annotated[float, typer.Option(help="Cold start of the good release.")] = 3.0,
    bad: Annotated[bool, typer.Option(help="Also deploy a bad release (5% errors).")] = True,
    keep: Annotated[bool, typer.Option(help="Leave the sandbox running afterwards.")] = False,
) -> None:
    """Deploy a good release and a bad one on a local fleet under load; show what customers saw."""
    from immunity.sandbox import fleet as sandbox
    from immunity.sandbox.scenario import LoadProcess, phase

    d = Path(tempfile.mkdtemp(prefix="immunity-demo-"))
    out.print(
        f"[bold]immunity demo[/]: {hosts} hosts behind HAProxy in {d}, {rps:g} customer req/s"
    )
    try:
        info = sandbox.create_sandbox(d, hosts, impact=True)  # reports show what customers saw
    except ImmunityError as exc:
        raise typer.Exit(show_error(exc)) from None
    sandbox.add_release(d, "v2", cold_start_s=cold_start_s)
    sandbox.add_release(d, "v3", error_rate=0.05, cold_start_s=1.0)
    load = LoadProcess(d, rps, d / "load.jsonl")
    ok = True
    marks: list[tuple[str, float, float]] = []
    results: list[RunResult] = []
    try:
        load.wait_started()
        out.print(f"balancer {info.url}; customers arriving; 5 s of steady traffic first")
        t_start = time.time()
        time.sleep(5)
        marks.append(("before (all on v1)", t_start, time.time()))
        out.print(f"\n[bold]1. good release v2[/] (cold start {cold_start_s:g}s)")
        t0 = time.time()
        r = _deploy(info.config_path, "v2")
        marks.append(("during v2 rollout", t0, time.time()))
        results.append(r)
        out.print(f"   → {_said(r)}", markup=False)
        ok &= r.outcome == "deployed"
        t1 = time.time()
        time.sleep(5)
        marks.append(("after (all on v2)", t1, time.time()))
        if bad:
            out.print("\n[bold]2. bad release v3[/] (5% of requests fail)")
            t2 = time.time()
            r = _deploy(info.config_path, "v3")
            marks.append(("during v3 canary + revert", t2, time.time()))
            results.append(r)
            out.print(f"   → {_said(r)}", markup=False)
            if r.detected_after_s is not None and r.reverted_after_s is not None:
                out.print(
                    f"   detected {r.detected_after_s:.1f}s after the first canary took traffic; "
                    f"whole fleet back on v2 {r.reverted_after_s:.1f}s later",
                    highlight=False,
                )
            ok &= r.outcome == "reverted"
            t3 = time.time()
            time.sleep(5)
            marks.append(("after revert (all on v2)", t3, time.time()))
    finally:
        load.stop()
        rows = load.records() if load.out.exists() else []
        if not keep:
            sandbox.teardown(d)
    t = Table(title="what the customers saw")
    for col in ("phase", "requests", "failed", "p50 ms", "p99 ms", "max ms"):
        t.add_column(col, justify="right" if col != "phase" else "left")
    for name, a, b in marks:
        s = phase(name, rows, a, b)
        t.add_row(
            name,
            str(s.requests),
            str(s.failed),
            f"{s.p50_ms:.1f}",
            f"{s.p99_ms:.1f}",
            f"{s.max_ms:.0f}",
        )
    out.print(t)
    if keep:
        out.print(
            f"sandbox left running in {d}: `immunity sandbox down --dir {d}` stops it",
            markup=False,
        )
    else:
        reports = sorted((d / "reports").glob("*.html")) if (d / "reports").is_dir() else []
        out.print(
            f"servers stopped; the journal, the customers' record and "
            f"{len(reports)} HTML report(s) are kept in {d} "
            f"(`immunity show -c {d / 'immunity.yaml'}`; `rm -rf {d}` removes them)",
            markup=False,
            highlight=False,
        )
    out.print("[bold green]demo passed[/]" if ok else "[bold red]demo did not go as expected[/]")
    raise typer.Exit(0 if ok else 1)
