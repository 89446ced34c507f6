"""`immunity bench judge`: the typer command (mounted under `immunity bench` by the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from immunity.bench import DEFAULT_SEED
from immunity.errors import ImmunityError
from immunity.files import writable

app = typer.Typer(no_args_is_help=True)


@app.command("judge")
def judge(
    scenarios: Annotated[
        Path | None,
        typer.Option(
            "--scenarios",
            help="Labelled scenarios (JSON Lines, immunity-judge-scenarios/1). "
            "Default: generate the built-in set.",
            dir_okay=False,
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Write the JSON result to FILE.", dir_okay=False, callback=writable
        ),
    ] = None,
    write_scenarios: Annotated[
        Path | None,
        typer.Option(
            "--write-scenarios",
            help="Also write the generated scenarios to FILE (same format as --scenarios).",
            dir_okay=False,
            callback=writable,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated set.")] = DEFAULT_SEED,
    quick: Annotated[
        bool, typer.Option("--quick", help="A small generated set (seconds).")
    ] = False,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: one per CPU).")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help="Judge only the classes matching these comma-separated globs, e.g. "
            "'err_x3@8rps,good*' (default: all). Targets are computed on what ran.",
        ),
    ] = None,
) -> None:
    """Replay labelled releases through immunity's judge and two reference judges."""
    from immunity.bench.judge import render, run  # numpy and scipy load only when asked

    console = Console()
    if scenarios is not None and write_scenarios is not None:
        console.print("[red]error[/]: --write-scenarios writes the generated set; drop --scenarios")
        raise typer.Exit(2)
    try:
        result = run(
            scenarios,
            json_out,
            seed=seed,
            quick=quick,
            write_scenarios_to=write_scenarios,
            workers=workers,
            only=classes,
        )
    except ImmunityError as exc:
        err = Console(stderr=True)
        err.print(f"[bold red]error[/] ({exc.reference}): ", end="")
        err.print(exc.message, markup=False, highlight=False)
        if exc.hint:
            err.print("[yellow]next[/]: ", end="")
            err.print(exc.hint, markup=False, highlight=False)
        raise typer.Exit(exc.exit_code) from None
    render(result, console)
    if json_out is not None:
        console.print(f"[dim]JSON written to {json_out}[/]")
