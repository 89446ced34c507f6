"""`immunity sandbox ...`: create, load and remove the local fleet (mounted by the main CLI)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from immunity.errors import ImmunityError
from immunity.files import writable

# `fleet` (HAProxy client, psutil, tenacity) is imported in the commands: `immunity --help`
# mounts this app and should not pay for it.

app = typer.Typer(
    name="sandbox",
    help="A local fleet: HAProxy in front of N local hosts running the sample app.",
    no_args_is_help=True,
)

DirOpt = Annotated[Path, typer.Option("--dir", "-d", help="Sandbox folder.")]


def _fail(exc: ImmunityError) -> typer.Exit:
    typer.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        typer.echo(f"next: {exc.hint}", err=True)
    return typer.Exit(exc.exit_code if exc.exit_code != 1 else 1)


@app.command()
def up(
    dir: DirOpt,
    hosts: Annotated[int, typer.Option("--hosts", "-n", min=1, help="Number of hosts.")] = 3,
    base_port: Annotated[
        int | None,
        typer.Option(
            "--base-port", help="Balancer port; hosts take the next ones. Default: free ports."
        ),
    ] = None,
    app_name: Annotated[str, typer.Option("--app", help="App name in immunity.yaml.")] = "sandbox",
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            help="HAProxy's access-log line: json (its log-format, the default) or httplog "
            "(the standard `option httplog` line); immunity.yaml's haproxy signal reads it.",
        ),
    ] = "json",
    impact: Annotated[
        bool,
        typer.Option(
            "--impact",
            help="Measure what customers saw in every deployment (immunity.yaml's `impact` "
            "block: 5 requests/s through the balancer, which the `lb` signal counts as "
            "customers'). Without it the block is written commented out.",
        ),
    ] = False,
) -> None:
    """Create DIR, install release v1 on N hosts, start them behind HAProxy, write immunity.yaml."""
    from immunity.sandbox import fleet

    try:
        info = fleet.create_sandbox(
            dir, hosts, base_port, app=app_name, log_format=log_format, impact=impact
        )
    except ImmunityError as exc:
        raise _fail(exc) from None
    typer.echo(f"sandbox up in {info.dir}: {len(info.host_ports)} hosts on release v1")
    for name, port in info.host_ports.items():
        typer.echo(f"  {name}  http://127.0.0.1:{port}")
    typer.echo(f"balancer: {info.url}")
    typer.echo(f"config:   {info.config_path}")


@app.command()
def release(
    dir: DirOpt,
    name: Annotated[str, typer.Argument(help="Release name, e.g. v2.")],
    error_rate: Annotated[
        float, typer.Option("--error-rate", min=0.0, max=1.0, help="Fraction answered 500.")
    ] = 0.0,
    latency_ms: Annotated[
        float, typer.Option("--latency-ms", min=0.0, help="Extra latency.")
    ] = 0.0,
    cold_start_s: Annotated[
        float, typer.Option("--cold-start-s", min=0.0, help="First requests wait this long.")
    ] = 0.0,
    errors_after_s: Annotated[
        float,
        typer.Option(
            "--errors-after-s",
            min=0.0,
            help="With --error-rate: its errors begin this many seconds after the host's "
            "process started (late onset).",
        ),
    ] = 0.0,
    errors_from_file: Annotated[
        Path | None,
        typer.Option(
            "--errors-from-file",
            help="With --error-rate: its errors begin only once this file exists (start a "
            "fault with `touch FILE`).",
        ),
    ] = None,
) -> None:
    """Write the release manifest DIR/releases/NAME.json."""
    from immunity.sandbox import fleet

    onset = [
        o
        for o, given in (
            ("--errors-after-s", errors_after_s > 0),
            ("--errors-from-file", errors_from_file is not None),
        )
        if given
    ]
    if onset and error_rate == 0:
        typer.echo(
            f"error: {' and '.join(onset)} say(s) when errors begin, not how many: without "
            "--error-rate the release answers no request with 500, and no fault ever starts",
            err=True,
        )
        typer.echo(
            f"next: add --error-rate, e.g. `immunity sandbox release --dir {dir} {name} "
            "--error-rate 0.05 ...` for 5% of requests answered 500 once the fault starts",
            err=True,
        )
        raise typer.Exit(2)
    if not dir.is_dir():
        typer.echo(f"error: {dir} does not exist", err=True)
        typer.echo("next: create the sandbox with `immunity sandbox up --dir DIR`", err=True)
        raise typer.Exit(2)
    try:
        path = fleet.add_release(
            dir, name, error_rate, latency_ms, cold_start_s, errors_after_s, errors_from_file
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"release {name} written to {path}")


@app.command()
def load(
    dir: Annotated[
        Path | None, typer.Option("--dir", "-d", help="Sandbox folder (its balancer).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Measure this URL instead of a sandbox's balancer."),
    ] = None,
    rps: Annotated[float, typer.Option("--rps", min=0.1, help="Requests per second.")] = 50.0,
    duration: Annotated[float, typer.Option("--duration", min=0.1, help="Seconds.")] = 30.0,
    out: Annotated[
        Path, typer.Option("--out", help="JSON lines, one per request.", callback=writable)
    ] = Path("load.jsonl"),
    path: Annotated[str, typer.Option("--path", help="Request path.")] = "/",
) -> None:
    """Play customers at a constant rate through a sandbox's balancer (or any --url); record
    every response. The same generator measures a deployment's `impact`."""
    import asyncio

    from immunity.sandbox import fleet
    from immunity.sandbox.load import run_load

    if (dir is None) == (url is None):
        typer.echo("error: give either --dir (a sandbox) or --url (any address)", err=True)
        raise typer.Exit(2)
    if url is not None:
        if not url.startswith(("http://", "https://")):
            typer.echo(f"error: --url: expected http://... or https://..., got {url!r}", err=True)
            raise typer.Exit(2)
        target = url.rstrip("/") + path if path != "/" else url
    else:
        assert dir is not None
        try:
            info = fleet.read_info(dir)
        except ImmunityError as exc:
            raise _fail(exc) from None
        if not fleet.is_running(dir):
            typer.echo(f"error: the sandbox in {dir} is not running", err=True)
            typer.echo(f"next: start it with `immunity sandbox up --dir {dir}`", err=True)
            raise typer.Exit(2)
        target = info.url + path

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        summary = await run_load(target, rps, duration, out, stop_event=stop)
        typer.echo(summary.line())

    asyncio.run(main())


@app.command()
def down(dir: DirOpt) -> None:
    """Stop every process the sandbox started (HAProxy and every host's app); keep the files."""
    from immunity.sandbox import fleet

    if not dir.is_dir():
        typer.echo(f"error: {dir} does not exist", err=True)
        raise typer.Exit(2)
    stopped = fleet.teardown(dir)
    typer.echo(f"sandbox down: stopped {len(stopped)} process(es)")
