"""`immunity bench ...`: our way against the naive way, measured in one run."""

from __future__ import annotations

from typing import Annotated

import typer

from immunity.bench.judge_cli import app as judge_app
from immunity.cli.output import out, write_json
from immunity.cli.paths import writable

bench_app = typer.Typer(no_args_is_help=True)


@bench_app.command("rollout")
def rollout(
    hosts: Annotated[int, typer.Option(help="Hosts in the sandbox.")] = 6,
    rps: Annotated[float, typer.Option(help="Customer requests per second.")] = 200.0,
    cold_start_s: Annotated[float, typer.Option(help="Cold start of the new release.")] = 3.0,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write JSON to FILE.", callback=writable)
    ] = None,
) -> None:
    """Roll the same release three ways (immunity, naive, drain_only) under the same load."""
    from immunity.bench.rollout import render, run

    result = run(hosts=hosts, rps=rps, cold_start_s=cold_start_s)
    render(result, out)
    write_json(result, json_out)


@bench_app.command("logtail")
def logtail(
    seconds: Annotated[int, typer.Option(help="Seconds of traffic in the log.")] = 100,
    rps: Annotated[int, typer.Option(help="Requests per second in the log.")] = 2000,
    servers: Annotated[int, typer.Option(help="HAProxy servers answering.")] = 6,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write JSON to FILE.", callback=writable)
    ] = None,
) -> None:
    """Parse throughput and per-look cost of the haproxy signal's access-log tail vs re-reading."""
    from immunity.bench.logtail import render, run

    result = run(seconds=seconds, rps=rps, servers=servers)
    render(result, out)
    write_json(result, json_out)


@bench_app.command("journal")
def journal(
    url: Annotated[str, typer.Option(help="postgresql://... of a database the bench may use.")],
    apps: Annotated[int, typer.Option(help="Apps, each deployed once.")] = 20,
    processes: Annotated[int, typer.Option(help="Orchestrator processes racing.")] = 4,
    hosts: Annotated[int, typer.Option(help="Hosts per app's fleet.")] = 50,
    sqlite: Annotated[
        str | None, typer.Option(help="SQLite file for the comparison (default: a temp file).")
    ] = None,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write JSON to FILE.", callback=writable)
    ] = None,
) -> None:
    """Many orchestrators on one journal: wrong lease grants (must be 0), writes/s, p50/p99
    write latency, PostgreSQL beside SQLite, and the naive lease for contrast."""
    from immunity.bench.journal import render, run

    result = run(url, sqlite_path=sqlite, apps=apps, processes=processes, hosts=hosts)
    render(result, out)
    write_json(result, json_out)
    if any(r["wrong_grants"] for r in result["results"]):
        raise typer.Exit(1)


@bench_app.command("journal-writes")
def journal_writes(
    url: Annotated[str, typer.Option(help="postgresql://... of a database the bench may use.")],
    hosts: Annotated[int, typer.Option(help="Hosts switched.", min=1)] = 1000,
    parallel: Annotated[int, typer.Option(help="Hosts switched at a time.", min=1)] = 100,
    sqlite: Annotated[
        str | None, typer.Option(help="SQLite file for the comparison (default: a temp file).")
    ] = None,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write JSON to FILE.", callback=writable)
    ] = None,
) -> None:
    """A host switch's journal writes, ours (a step's finish with the next start: 8 writes)
    against one append per entry (15), on PostgreSQL and SQLite: writes and commits per
    switch, rows/s, CPU ms per switch, p50/p99 write latency, load average."""
    from immunity.bench.journal_writes import render, run

    result = run(url, hosts=hosts, parallel=parallel, sqlite_path=sqlite)
    render(result, out)
    write_json(result, json_out)


@bench_app.command("scale")
def scale(
    hosts: Annotated[
        str, typer.Option(help="Fleet sizes: one number or a comma list (100,1000,10000).")
    ] = "100,1000",
    journal: Annotated[
        str,
        typer.Option(
            help="sqlite (the default journal, on disk), memory, or a postgresql://... URL "
            "of a database the bench may write a deployment to."
        ),
    ] = "sqlite",
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write JSON to FILE.", callback=writable)
    ] = None,
) -> None:
    """The orchestrator's own cost on N in-memory hosts: CPU per host switch, peak RSS,
    journal rows/s, wall time against the configured waits (the same run in virtual time)."""
    from immunity.bench.scale import render, run

    try:
        sizes = [int(x.replace("_", "")) for x in hosts.split(",") if x.strip()]
    except ValueError:
        sizes = []
    pg = journal.startswith(("postgresql://", "postgres://"))
    if not sizes or any(n < 1 for n in sizes) or not (pg or journal in ("sqlite", "memory")):
        from immunity.bench.scale import journal_name

        out.print(
            f"--hosts {hosts!r} --journal {journal_name(journal)!r}: expected counts >= 1 "
            "like 100,1000 and a journal of sqlite, memory or postgresql://USER@HOST:PORT/DB",
            markup=False,
        )
        raise typer.Exit(2)
    result = run(sizes, journal)
    render(result, out)
    write_json(result, json_out)


bench_app.registered_commands.extend(judge_app.registered_commands)
