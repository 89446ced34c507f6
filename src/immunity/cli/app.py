"""The `immunity` command line: the only place that prints and maps errors to exit codes.

Exit codes: 0 deployed (also rolled back, and aborted by `resume --abort`); 2 config or preflight rejected, nothing touched; 3 release rejected,
fleet reverted, team told; 4 revert incomplete, a human is needed; 5 another deployment holds
the lease; 6 held (inconclusive, `hold` policy); 7 inconclusive, fleet reverted (`revert`
policy); 130/143 interrupted after the shielded cleanup; 1 a bug (traceback kept).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperOption

from immunity.cli import output
from immunity.cli.output import err, escape, out, plain, show_error, write_json
from immunity.cli.paths import cannot_write, writable, wrote
from immunity.domain import brief, outcome_words, reason_beside
from immunity.errors import ConfigError, ImmunityError

if TYPE_CHECKING:
    from immunity.cli import ci
    from immunity.config import LoadedConfig
    from immunity.domain import Event
    from immunity.engine.result import RunResult
    from immunity.fleet.context import Fleet

# The engine (numpy, scipy, httpx), the config models (pydantic: a quarter of a second),
# anyio, the CD reporters and the sandbox are imported inside the commands that need them,
# so that `--help` and `--version` start fast (scripts/bench_startup.py measures it).


def _load(path: str) -> LoadedConfig:
    """`immunity.config.load(path)`, the config models imported on first use."""
    from immunity.config import load

    return load(path)


def _run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`anyio.run(fn, *args)`, anyio imported on first use."""
    import anyio

    return anyio.run(fn, *args)


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """A flag takes no value: `--help`, `--version`, `--dry-run` show no `<bool>` type
    (typer 0.29 shows one for every option)."""
    return None if self.is_flag else _option_type(self, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

app = typer.Typer(
    name="immunity",
    help="Canary deployments for server fleets with a cluster immune system.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Check immunity.yaml.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        from immunity import __version__

        out.print(f"immunity {__version__}", markup=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Canary deployments for server fleets with a cluster immune system."""


def _check_release(release: str) -> None:
    """Exit 2 before anything is touched when `release` is not a valid release name."""
    from immunity.config.types import check_release_name

    try:
        check_release_name(release)
    except ValueError as exc:
        raise typer.Exit(
            show_error(
                ConfigError(
                    f"--release: {exc}",
                    hint="pass a release name such as v42 or 2024.06.1-rc2 (nothing was touched)",
                )
            )
        ) from None


T = TypeVar("T")

ConfigOpt = Annotated[str, typer.Option("-c", "--config", help="Path of immunity.yaml.")]
JsonOpt = Annotated[
    str | None,
    typer.Option(
        "--json", help="Write the JSON result to FILE ('-' for stdout).", callback=writable
    ),
]
CiOpt = Annotated[
    str,
    typer.Option(
        "--ci",
        help="CD tool to report to: octopus, github, none, or auto (detected from its "
        "environment variables).",
    ),
]
OutputOpt = Annotated[
    str,
    typer.Option(
        "--output",
        help="text (human, default) or jsonl (one JSON event per line on stdout, human "
        "output on stderr).",
    ),
]


def _setup_logging() -> None:
    level = os.environ.get("IMMUNITY_LOG", "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # HTTP client libraries log every request's full URL at INFO/DEBUG, and a webhook URL
    # (Slack, Teams) or an Elasticsearch URL with credentials is a secret: keep them quiet.
    for name in ("httpx", "httpcore", "urllib3", "elastic_transport", "requests_credssp"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def _with_fleet(path: str, fn: Callable[[Fleet], Awaitable[T]]) -> T:
    """Load the config, build the fleet, run `fn`, close everything; map errors to exits."""

    from immunity.fleet.context import build_fleet

    try:
        loaded = _load(path)
        fleet = build_fleet(loaded)
    except ImmunityError as exc:
        raise typer.Exit(show_error(exc, config=path)) from None

    async def main() -> T:
        try:
            return await fn(fleet)
        finally:
            await fleet.aclose()
            await fleet.journal.close()

    try:
        return _run(main)
    except ImmunityError as exc:
        raise typer.Exit(show_error(exc, config=path)) from None
    except KeyboardInterrupt:
        err.print(
            "interrupted before anything was changed; run the same command again when ready",
            markup=False,
        )
        raise typer.Exit(130) from None


EXIT_CODES = {
    "deployed": 0,
    "rolled_back": 0,
    "aborted": 0,  # `resume --abort` did what was asked, as `rollback` does: not a rejection
    "unchanged": 0,  # every host already served the release: nothing to do
    "reverted": 3,
    "revert_incomplete": 4,
    "superseded": 5,
    "held": 6,
    "inconclusive": 7,
    "interrupted": 130,
    "terminated": 143,
    "failed": 1,
}
"""`RunOutcome` → exit code (the only place that maps them; see docs/errors.md)."""


def exit_code(result: RunResult) -> int:
    return EXIT_CODES.get(str(result.outcome), 1)


def _finish(
    result: RunResult,
    json_dest: str | None,
    reporter: ci.Reporter | None = None,
    config: str | None = None,
    to_stderr: bool = False,
) -> None:
    code = exit_code(result)
    data = {**result.to_dict(), "exit_code": code}
    said = outcome_words(str(result.outcome))  # "rolled back", not the enum's rolled_back
    moved = result.release
    if result.outcome == "rolled_back" and result.fallbacks:  # from the release it left
        moved += " → " + ", ".join(sorted(set(result.fallbacks.values())))
    # a run that lost its lease writes nothing more, its report neither: the new holder's is;
    # a no-op has nothing to report (and would wait seconds for the charts' imports)
    report_path = None
    if config and str(result.outcome) not in ("superseded", "unchanged") and not result.stopped_in:
        # drawing the charts takes seconds on a busy machine: say so rather than sit silent
        # (on stderr: stdout may be the JSON result)
        err.print(f"{said}: writing the report (charts) ...", style="dim", highlight=False)
        from immunity.report.stopping import received, stop_on_signals

        # the run has ended: a signal now stops the drawing only, never the result line and
        # the outcome's exit code
        with stop_on_signals():
            report_path = _write_report(config, result.deployment_id)
        if received() and report_path is None:  # arrived after the last chart: written
            err.print(
                f"report not written: {received()} received; "
                f"`immunity report -c {config} {result.deployment_id}` writes it",
                markup=False,
                highlight=False,
            )
    data["report_path"] = report_path
    json_file = json_dest
    if json_dest is None and report_path:  # the CD tool gets the JSON result as an artifact
        json_file = report_path.removesuffix(".html") + ".result.json"
    write_json(data, json_file)
    if reporter is not None:
        reporter.finish(data, report_path, json_file if json_file != "-" else None)
    con = err if to_stderr else out
    style = {0: "green", 3: "yellow", 6: "yellow", 7: "yellow"}.get(code, "red")
    con.print(
        f"[bold {style}]{escape(said)}[/] " + escape(f"{moved} ({result.deployment_id})"),
        highlight=False,
    )
    if result.reason:  # whole in the JSON result, the journal and `show`
        said_why = brief(
            reason_beside(str(result.outcome), result.reason)
        )  # not "interrupted" twice
        con.print(f"  {said_why}", markup=False, highlight=False)
    if result.outcome != "rolled_back":  # a rollback judges nothing: no "no verdict" line
        _print_waves(con, report_path)
    if result.detected_after_s is not None:
        con.print(
            f"  detected {result.detected_after_s:.1f} s after the first canary entered the pool",
            highlight=False,
        )
    if result.reverted_after_s is not None:
        from immunity.report.data import REVERTED_FROM

        since = REVERTED_FROM.get(result.reverted_from or "", "")
        con.print(
            f"  fleet reverted in {result.reverted_after_s:.1f}s" + (f" {since}" if since else ""),
            highlight=False,
        )
    if result.needs_human:
        con.print(
            "  [bold red]a human is needed for[/] " + escape(", ".join(result.needs_human)),
            highlight=False,
        )
    if report_path:
        con.print("  report: " + escape(report_path), highlight=False)
    step = output.next_step(
        result.outcome,
        config or "immunity.yaml",
        list(result.needs_human),
        reason=result.reason,
        probe=_probe_of(config) if str(result.outcome) in ("inconclusive", "held") else None,
        deployment_id=result.deployment_id,
    )
    if result.stopped_in:  # nothing to resume: no host was touched
        step = (
            "nothing was touched and the lease is released: run the same command again when ready"
        )
    if step:
        con.print("[yellow]next[/]: " + escape(step), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _probe_of(config: str | None) -> Any:
    """The config's `probe` block (None when absent or the config cannot be read now)."""
    if not config:
        return None
    try:
        return _load(config).config.probe
    except ImmunityError:
        return None


def _print_waves(con: Any, report_path: str | None) -> None:
    """Every wave's verdict with each check's numbers, from the report's data."""
    if not report_path:
        return
    try:
        data = json.loads(Path(report_path).with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    from immunity.cli.show import print_waves

    print_waves(con, data, short=True)


def _write_report(config: str, deployment_id: str) -> str | None:
    """Write the HTML and JSON report next to the journal; a report problem is only logged."""
    try:
        from immunity.report import write_default

        loaded = _load(config)
        return str(_run(write_default, loaded, deployment_id))
    except Exception as exc:  # a report never changes a deployment's outcome
        from immunity.report.stopping import ReportStopped

        if isinstance(exc, ReportStopped):  # said by the caller, in one line
            return None
        logging.getLogger("immunity").warning("the report could not be written: %s", exc)
        return None


def _reporting(ci_kind: str, output_fmt: str, config: str) -> ci.Reporter | None:
    """The CD reporter for --ci/--output, told the secrets to mask before anything runs."""
    from immunity.cli import ci

    if output_fmt not in ("text", "jsonl"):
        err.print(f"--output: expected text or jsonl, got {output_fmt!r}", markup=False)
        raise typer.Exit(2)
    if ci_kind not in ("auto", "octopus", "github", "none"):
        err.print(f"--ci: expected octopus, github, none or auto, got {ci_kind!r}", markup=False)
        raise typer.Exit(2)
    try:
        rep = ci.reporter(ci_kind, jsonl=output_fmt == "jsonl")
    except ci.CannotCombine as exc:
        err.print(f"error (usage): {exc}", markup=False)
        err.print("next: run the same command with one of the two", markup=False)
        raise typer.Exit(2) from None
    if isinstance(rep, ci.GithubReporter):  # the runner's files, checked before anything runs
        for env, dest in (
            ("GITHUB_OUTPUT", rep.output_file),
            ("GITHUB_STEP_SUMMARY", rep.summary_file),
        ):
            problem = cannot_write(Path(dest)) if dest else None
            if problem:
                err.print(
                    f"error (usage): ${env} {dest}: {problem}; nothing was touched", markup=False
                )
                err.print(
                    f"next: run in a GitHub Actions job whose ${env} can be written, or pass "
                    "`--ci none`",
                    markup=False,
                )
                raise typer.Exit(2)
    if rep is not None:
        try:
            text = Path(config).read_text(encoding="utf-8")
        except OSError:
            text = ""
        rep.begin(ci.secret_values(text, os.environ))
    return rep


def _run_reported(
    config: str,
    title: str,
    json_out: str | None,
    ci_kind: str,
    output_fmt: str,
    live: bool,
    go: Callable[[Fleet], Awaitable[RunResult]],
) -> None:
    """Run a deployment-like command with the live table, the CD reporter and the report."""
    from immunity.cli import ci

    rep = _reporting(ci_kind, output_fmt, config)
    # with a CD tool the log is the output: no live table; with jsonl stdout is the events'
    jsonl = output_fmt == "jsonl"
    show_table = not jsonl and (rep is None or isinstance(rep, ci.GithubReporter))

    async def run(fleet: Fleet) -> RunResult:
        from immunity.engine.plan import plan_waves

        rolling_back = title == "rolling back"
        table = output.live_view(
            [h.name for h in fleet.hosts],
            title,
            waves=0 if rolling_back else len(plan_waves(fleet.hosts, fleet.config.waves)),
            releases=None if title.startswith("deploying") else await _actives(fleet),
            quantiles=_quantiles(fleet),
            live=live and rep is None,
        )
        if title in ("resuming", "reverting"):
            await _replay_journal(fleet, table)
        if show_table:
            fleet.sinks.append(table)
        fleet.sinks.append(_ReportPreload())
        if rep is not None:
            if show_table and isinstance(rep, ci.GithubReporter):
                rep.echo_events = False  # the view prints every event to the runner's log
            fleet.sinks.append(rep)
        with table:
            return await go(fleet)

    _finish(
        _with_fleet(config, run),
        json_out,
        rep,
        config,
        to_stderr=jsonl,
    )


async def _replay_journal(fleet: Fleet, table: Any) -> None:
    """Show the interrupted deployment's state so far (hosts, the bake's checks and evidence)
    before `resume` goes on; a journal that cannot be read here is read again by the run."""
    from immunity.domain import Event

    try:
        record = await fleet.journal.deployments(fleet.app)
        unfinished = [r for r in record if not r.changed_nothing]
        if not unfinished:
            return
        last = unfinished[-1]
        entries = await fleet.journal.entries(last.id)
    except ImmunityError:
        return
    table.replay(
        [
            Event(
                kind=e.kind,
                app=fleet.app,
                deployment_id=last.id,
                release=last.release,
                message="",
                at=e.at,
                data={
                    **dict(e.data),
                    **({"host": e.host} if e.host else {}),
                    **({"step": e.step} if e.step else {}),
                },
            )
            for e in entries
        ]
    )


class _ReportPreload:
    """An event sink that imports the report's renderer (matplotlib, jinja2: seconds on a
    busy machine) in a background thread once the first bake starts, while the deployment
    waits on its canaries, so the report is drawn without that wait when the run ends."""

    def __init__(self) -> None:
        self.started = False

    def __call__(self, event: Event) -> None:
        if self.started or event.kind != "bake.started":
            return
        self.started = True
        import threading

        threading.Thread(target=_import_renderer, name="report-preload", daemon=True).start()


def _import_renderer() -> None:
    try:
        import immunity.report.html  # noqa: F401  (matplotlib, jinja2)
    except Exception as exc:  # the report is written (or its failure logged) at the end
        logging.getLogger("immunity").debug("report preload: %s", exc)


def _quantiles(fleet: Fleet) -> dict[str, list[float]]:
    """Per latency check, the quantiles the live view shows for each cohort."""
    return {
        c.name: list(c.quantiles) if c.kind == "latency" else [c.quantile]
        for c in fleet.config.checks
        if c.kind in ("latency", "latency_max")
    }


async def _actives(fleet: Fleet) -> dict[str, str | None]:
    """Each host's active release as its driver reports it (None when it cannot say)."""
    out: dict[str, str | None] = {}
    for h in fleet.hosts:
        try:
            out[h.name] = await fleet.driver.active_release(h)
        except ImmunityError:
            out[h.name] = None
    return out


@config_app.command("validate")
def config_validate(file: Annotated[str, typer.Argument(help="immunity.yaml to check.")]) -> None:
    """Exit 0 when FILE is valid, else 2 with every problem as file:line:col field: message."""
    try:
        loaded = _load(file)
    except ImmunityError as exc:
        if "config validate" not in (exc.hint or ""):  # the loader's words are for `-c FILE`
            exists = Path(file).is_file()
            exc.hint = (
                f"fix the lines above, then check again: immunity config validate {file}"
                if exists
                else "pass the path of an existing immunity.yaml: immunity config validate PATH"
            )
        raise typer.Exit(show_error(exc)) from None
    c = loaded.config
    out.print(
        f"{file}: valid ({len(c.hosts)} hosts, balancer {c.balancer.kind}, driver {c.driver.kind}, "
        f"{len(c.signals)} signal(s), {len(c.checks)} check(s))",
        markup=False,
        highlight=False,
    )


@config_app.command("docs")
def config_docs(
    output_file: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write to FILE instead of stdout.", callback=writable),
    ] = None,
) -> None:
    """Print the immunity.yaml reference (docs/config.md), generated from the config models."""
    from immunity.config.reference import markdown

    text = markdown()
    if output_file:
        from pathlib import Path

        wrote("the reference", output_file, lambda: Path(output_file).write_text(text))
    else:
        out.print(text, markup=False, highlight=False, soft_wrap=True, end="")


@config_app.command("schema")
def config_schema(
    output_file: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write to FILE instead of stdout.", callback=writable),
    ] = None,
) -> None:
    """Print the JSON Schema of immunity.yaml (for editors: completion and checking)."""
    from immunity.config.schema import json_schema

    write_json(json_schema(), output_file or "-")


@app.command()
def deploy(
    config: ConfigOpt,
    release: Annotated[str, typer.Option("--release", "-r", help="Release to roll out.")],
    json_out: JsonOpt = None,
    live: Annotated[bool, typer.Option(help="Show the live host table.")] = True,
    ci_kind: CiOpt = "auto",
    output_fmt: OutputOpt = "text",
    resume_unfinished: Annotated[
        bool,
        typer.Option(
            "--resume-unfinished",
            help="When the app's last deployment of this release never finished (its "
            "orchestrator died, a CD tool retries the step), resume it instead.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Preflight and print the whole plan; touch nothing (exit 0 or 2)."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Redeploy when every host already serves RELEASE: walk each host again "
            "(drain, restart, warm up, enable), baked on the guard rails. Without it such a "
            "deploy touches no host and ends `unchanged` (exit 0).",
        ),
    ] = False,
) -> None:
    """Roll RELEASE over the fleet, wave by wave; revert the whole fleet when it is worse."""
    _check_release(release)
    _setup_logging()
    if dry_run:
        from immunity.cli.dryrun import dry_run as _dry_run

        async def plan(fleet: Fleet) -> dict[str, Any]:
            return await _dry_run(fleet, release, force=force)

        data = _with_fleet(config, plan)
        write_json(data, json_out)
        output.print_plan(data)
        return

    from immunity.engine.deployment import deploy as run_deploy

    async def go(fleet: Fleet) -> RunResult:
        if resume_unfinished:
            from immunity.engine import ops
            from immunity.fleet.context import last_deployment

            record = await last_deployment(fleet)
            if (
                record is not None
                and record.release == release
                and (record.finished_at is None or record.outcome in ("interrupted", "terminated"))
            ):
                return await ops.resume(fleet)
        return await run_deploy(fleet, release, force=force)

    _run_reported(config, f"deploying {release}", json_out, ci_kind, output_fmt, live, go)


@app.command()
def resume(
    config: ConfigOpt,
    abort: Annotated[bool, typer.Option(help="Revert the fleet instead of continuing.")] = False,
    json_out: JsonOpt = None,
    live: Annotated[bool, typer.Option(help="Show the live host table.")] = True,
    ci_kind: CiOpt = "auto",
    output_fmt: OutputOpt = "text",
) -> None:
    """Finish (or with --abort undo) a deployment whose orchestrator died."""
    _setup_logging()
    from immunity.engine import ops

    async def go(fleet: Fleet) -> RunResult:
        return await ops.resume(fleet, abort=abort)

    title = "reverting" if abort else "resuming"
    _run_reported(config, title, json_out, ci_kind, output_fmt, live, go)


@app.command()
def rollback(
    config: ConfigOpt,
    json_out: JsonOpt = None,
    live: Annotated[bool, typer.Option(help="Show the live host table.")] = True,
    ci_kind: CiOpt = "auto",
    output_fmt: OutputOpt = "text",
) -> None:
    """Walk every host back to its previous release, by the same drain/switch/warm-up."""
    _setup_logging()
    from immunity.engine import ops

    async def go(fleet: Fleet) -> RunResult:
        return await ops.rollback(fleet)

    _run_reported(config, "rolling back", json_out, ci_kind, output_fmt, live, go)


@app.command()
def status(
    config: ConfigOpt,
    json_flag: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 4 when the fleet is not steady (mixed releases, a host out of the pool, "
            "the last run unfinished, a disagreement) and no run is in progress.",
        ),
    ] = False,
) -> None:
    """Ask the hosts and the balancer (not only the journal) what each host serves.

    Exits 0 once it could read the fleet, steady or not (its last line says which); with
    `--check`, 4 when the fleet needs attention and no run is in progress."""
    from immunity.cli.status import status as read_status

    data: dict[str, Any] = _with_fleet(config, read_status)
    needs_human = check and not data["steady"] and not data["running"]
    if json_flag:
        write_json(data, "-")
        if needs_human:
            raise typer.Exit(4)
        return
    from rich.table import Table

    t = Table(title=plain(data["app"]))
    for col in ("host", "active", "installed", "balancer", "journal says"):
        t.add_column(col)
    for h in data["hosts"]:
        state = h["lb_state"]
        t.add_row(
            plain(h["name"]),
            plain(h["active_release"]) if h["active_release"] else plain("none", "red"),
            plain(", ".join(h["installed_releases"])),
            plain(state, "green" if state == "serving" else "red"),
            plain(h["journal_release"] or ""),
        )
    out.print(t)
    for name, step in data["steps"].items():  # a live run's host mid-step
        out.print(f"{name}: {step}", markup=False, highlight=False)
    for d in data["disagreements"]:
        out.print("[red]disagreement[/]: " + escape(str(d)), highlight=False)
    if data["lease"]:
        from immunity.cli.status import when

        lease = data["lease"]
        out.print(f"lease held by {lease['holder']} since {when(lease['since'])}", markup=False)
    if data["last_deployment"]:
        d = data["last_deployment"]
        what = "run" if d.get("rollback") else "deployment"  # words: "rollback v5 → v4"
        words = d.get("words") or f"{d['release']} {d['outcome']}"
        out.print(f"last {what}: {words} ({d['id']})", markup=False)
    if data["steady"]:
        out.print("fleet: steady (one release, every host serving, the last run finished)")
    else:
        out.print("[red]fleet: not steady[/]", highlight=False)
        for line in data["attention"]:
            if not line.startswith("disagreement: "):  # printed above
                out.print("  " + escape(line), highlight=False)
    if data["balancer_error"]:  # the cause is in the disagreement line above; the way out:
        step = data.get("balancer_hint") or (
            f"check that the balancer answers (`balancer:` in {config}); the hosts' own view "
            "is above"
        )
        out.print("[yellow]next[/]: " + escape(step), highlight=False, soft_wrap=True)
    if needs_human:
        raise typer.Exit(4)


@app.command()
def history(
    config: ConfigOpt,
    json_flag: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every deployment with its outcome and reason, and the deploy figures over time."""
    from immunity.report.history import history as read_history

    async def run(fleet: Fleet) -> dict[str, Any]:
        return await read_history(fleet.journal, fleet.app, fleet.clock.now())

    data = _with_fleet(config, run)
    if json_flag:
        write_json(data, "-")
        return
    from immunity.cli.show import print_history

    print_history(out, data, config)


journal_app = typer.Typer(
    help="The journal itself: copy history between journals.", no_args_is_help=True
)
app.add_typer(journal_app, name="journal")


@journal_app.command("copy")
def journal_copy(
    source: Annotated[
        str, typer.Option("--from", help="sqlite:PATH (or PATH) or postgresql://...")
    ],
    target: Annotated[str, typer.Option("--to", help="postgresql://... (or sqlite:PATH)")],
    only_app: Annotated[str | None, typer.Option("--app", help="Copy only this app.")] = None,
    json_out: JsonOpt = None,
) -> None:
    """Copy every deployment and its entries into another journal; running it again adds
    only what is new. Give the password by PGPASSWORD or ~/.pgpass, not in the URL."""
    from immunity.journal.copy import copy_journal, open_location

    async def main() -> dict[str, int]:
        src = open_location(source, must_exist=True)
        try:
            dst = open_location(target)
            try:
                return (await copy_journal(src, dst, app=only_app)).to_dict()
            finally:
                await dst.close()
        finally:
            await src.close()

    try:
        data = _run(main)
    except ImmunityError as exc:
        raise typer.Exit(show_error(exc)) from None
    write_json(data, json_out)
    out.print(
        f"copied {data['new_deployments']} new deployment(s) of {data['deployments']} and "
        f"{data['new_entries']} new entries of {data['entries']} "
        f"({data['entries'] - data['new_entries']} were already there)",
        highlight=False,
    )


@app.command()
def serve(
    config: Annotated[
        list[str], typer.Option("-c", "--config", help="immunity.yaml of an app (repeatable).")
    ],
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs a token.")
    ] = "127.0.0.1",
    token_env: Annotated[
        str, typer.Option(help="Environment variable holding the bearer token.")
    ] = "IMMUNITY_SERVE_TOKEN",
) -> None:
    """Serve a read-only page and JSON API: every app's hosts, releases, phases and deployments."""
    _setup_logging()
    import uvicorn

    from immunity.fleet.context import build_fleet
    from immunity.serve import create_app, is_loopback, same_app

    token = os.environ.get(token_env) or None
    if not is_loopback(host) and not token:
        err.print(
            f"error: binding {host} (not loopback) needs a bearer token: set {token_env}",
            highlight=False,
        )
        raise typer.Exit(2)
    fleets: list[Fleet] = []

    async def close_all() -> None:
        for f in fleets:
            await f.journal.close()

    try:
        for path in config:
            fleets.append(build_fleet(_load(path)))
    except ImmunityError as exc:
        _run(close_all)
        raise typer.Exit(show_error(exc)) from None
    clash = same_app(fleets)
    if clash:
        _run(close_all)
        err.print(
            f"error: cannot serve these together: {clash}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        err.print(
            "next: give each fleet its own `app:` name (an app is one lease and one deployment "
            "history), or serve them one at a time",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(2)
    server = uvicorn.Server(
        uvicorn.Config(create_app(fleets, token=token), host=host, port=port, log_level="warning")
    )

    hung_up: list[bool] = []

    async def main() -> None:
        import signal

        import anyio

        async def hang_up() -> None:
            # uvicorn shuts down gracefully on SIGINT and SIGTERM (then exits 130/143);
            # SIGHUP (the terminal or ssh session went away) killed the process with
            # requests in flight: it stops the same way, then exits 129
            with anyio.open_signal_receiver(signal.SIGHUP) as signals:
                async for _ in signals:
                    hung_up.append(True)
                    server.should_exit = True
                    return

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(hang_up)
                await server.serve()
                tg.cancel_scope.cancel()
        finally:
            for f in fleets:
                await f.aclose()
                await f.journal.close()

    err.print(
        f"serving {', '.join(f.app for f in fleets)} on http://{host}:{port}/ (read-only"
        f"{', bearer token required' if token else ''}); Ctrl-C to stop",
        highlight=False,
    )
    _run(main)
    if hung_up:
        raise typer.Exit(129)
    if not server.started:
        raise typer.Exit(2)


@app.command()
def show(
    config: ConfigOpt,
    deployment: Annotated[
        str | None,
        typer.Argument(help="Deployment id (a unique prefix will do); the latest when left out."),
    ] = None,
    json_flag: Annotated[bool, typer.Option("--json", help="Print the data as JSON.")] = False,
) -> None:
    """One deployment in full: every wave's verdict with each check's numbers, the hosts'
    steps, the customers' view where it was measured, and what was reverted and when."""
    from immunity import report as rpt
    from immunity.cli.show import print_deployment

    try:
        loaded = _load(config)
        from immunity.fleet.context import open_journal

        async def read() -> dict[str, Any]:
            journal = open_journal(loaded)
            try:
                wanted = deployment
                if wanted is None:
                    records = list(await journal.deployments(loaded.config.app))
                    if not records:
                        raise rpt.UnknownDeployment(
                            f"the journal holds no deployment of {loaded.config.app} yet",
                            hint=f"deploy one with `immunity deploy -c {config} --release NAME`",
                        )
                    wanted = records[-1].id
                return await rpt.load(journal, wanted)
            finally:
                await journal.close()

        data = _run(read)
    except ImmunityError as exc:
        raise typer.Exit(show_error(exc, config=config)) from None
    if json_flag:
        write_json(data, "-")
        return
    print_deployment(out, data)


@app.command()
def report(
    deployment: Annotated[str, typer.Argument(help="Deployment id (a unique prefix will do).")],
    config: ConfigOpt,
    html: Annotated[
        str | None,
        typer.Option("--html", help="Write the HTML report to FILE.", callback=writable),
    ] = None,
    json_file: Annotated[
        str | None,
        typer.Option("--json", help="Write the report's data as JSON to FILE.", callback=writable),
    ] = None,
) -> None:
    """Write DEPLOYMENT's report: one self-contained HTML file (and its data as JSON).

    Without --html/--json both go next to the journal, in reports/<id>.html and .json.
    """
    from immunity import report as rpt

    try:
        loaded = _load(config)
        from immunity.fleet.context import open_journal

        async def read() -> dict[str, Any]:
            journal = open_journal(loaded)
            try:
                return await rpt.load(journal, deployment)
            finally:
                await journal.close()

        data = _run(read)
        if html is None and json_file is None:
            h = rpt.default_path(loaded, data["deployment_id"])
            if not wrote(
                "the report", h, lambda: rpt.write(data, h, h.with_suffix(".json")), late=False
            ):
                raise typer.Exit(2)
            out.print(f"report: {h} (and {h.with_suffix('.json').name})", markup=False)
            return
        html_path, json_path = Path(html) if html else None, Path(json_file) if json_file else None
        if not wrote(
            "the report",
            html or json_file,
            lambda: rpt.write(data, html_path, json_path),
            late=False,
        ):
            raise typer.Exit(2)
    except ImmunityError as exc:
        raise typer.Exit(show_error(exc, config=config)) from None
    for f in (html, json_file):
        if f:
            out.print(f"wrote {f} ({Path(f).stat().st_size} bytes)", markup=False)
    out.print(data["sentence"], markup=False, highlight=False)


@app.command()
def replay(
    deployment: Annotated[str, typer.Argument(help="Deployment id (a unique prefix will do).")],
    config: Annotated[
        str, typer.Option("-c", "--config", help="immunity.yaml with the checks to try.")
    ],
    journal_config: Annotated[
        str | None,
        typer.Option(
            "--journal-from", help="immunity.yaml whose journal holds DEPLOYMENT (default: -c)."
        ),
    ] = None,
    json_flag: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-judge DEPLOYMENT's recorded evidence with the checks and thresholds of -c, and show
    what they would have decided and when, beside what happened. Touches no host."""
    from immunity import report as rpt
    from immunity.fleet.context import open_journal
    from immunity.report.replay import replay as _replay

    try:
        loaded = _load(config)
        source = _load(journal_config) if journal_config else loaded

        async def read() -> dict[str, Any]:
            journal = open_journal(source)
            try:
                record, entries = await rpt.find(journal, deployment)
            finally:
                await journal.close()
            return _replay(record, entries, loaded.config)

        data = _run(read)
    except ImmunityError as exc:
        raise typer.Exit(show_error(exc, config=config)) from None
    if json_flag:
        write_json(data, "-")
        return
    output.print_replay(data, config)


def _mount() -> None:
    from immunity.sandbox.cli import app as sandbox_app

    app.add_typer(sandbox_app, name="sandbox", help="The local fleet: HAProxy and local hosts.")
    from immunity.cli.demo import demo

    app.command()(demo)
    from immunity.cli.bench import bench_app

    app.add_typer(bench_app, name="bench", help="Benchmarks: our way against the naive way.")


_mount()


def main() -> None:
    app()
