"""The command line starts light: numeric and HTTP libraries load only in the commands that
use them, so `--help`, `config validate` and the load generator start at once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


def test_importing_the_cli_loads_no_numeric_or_plotting_library() -> None:
    """`import immunity.cli.app` (what every command runs first) imports neither numpy,
    scipy, matplotlib nor httpx."""
    code = (
        "import sys, immunity.cli.app; "
        "print(','.join(sorted(m for m in ('numpy', 'scipy', 'matplotlib', 'httpx') "
        "if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "" == out.stdout.strip()


READ_ONLY_CONFIG = """\
app: shop
hosts:
  - {name: h1, address: 127.0.0.1, port: 18001}
  - {name: h2, address: 127.0.0.1, port: 18002}
balancer: {kind: haproxy, socket: nowhere.sock, backend: be_app}
driver: {kind: local, root: hosts, releases: releases}
signals:
  - {kind: haproxy, name: lb, socket: nowhere.sock, backend: be_app}
checks:
  - {name: errors, signal: lb, kind: errors}
journal: {path: journal.db}
"""

RUN_COMMAND = """\
import sys
from immunity.cli.app import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("LOADED=" + ",".join(sorted(m for m in ("numpy", "scipy", "matplotlib") if m in sys.modules)))
print("EXIT=" + str(code))
"""


def _journal_with_one_deployment(path: Path) -> None:
    import anyio

    from immunity.journal import open_journal

    async def write() -> None:
        j = open_journal(path, None)
        try:
            rec = await j.begin("shop", "v2", {"hosts": ["h1", "h2"]})
            await j.append(rec.id, "deployment.started", data={"release": "v2"})
            await j.finish(rec.id, "deployed", "all 1 check(s) passed", {})
        finally:
            await j.close()

    anyio.run(write)


@pytest.mark.parametrize(
    "command", [["history"], ["history", "--json"], ["show"], ["show", "--json"]]
)
def test_read_only_commands_load_no_numeric_or_plotting_library(
    tmp_path: Path, command: list[str]
) -> None:
    """`history` and `show` read the journal: they run without numpy, scipy (the judges) or
    matplotlib (the report's charts), which took most of their start time."""
    (tmp_path / "c.yaml").write_text(READ_ONLY_CONFIG)
    _journal_with_one_deployment(tmp_path / "journal.db")
    r = subprocess.run(
        [sys.executable, "-c", RUN_COMMAND, *command, "-c", "c.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    lines = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line[:8])
    assert lines["EXIT"] == "0", r.stdout + r.stderr
    assert "v2" in r.stdout
    assert lines["LOADED"] == ""


def test_status_and_the_report_data_load_no_numeric_library() -> None:
    """`status` runs `engine.ops.status` over `engine.context`'s fleet; the report's data
    (`show`, `serve`) decodes the looks with `analysis.evidence`: none of them needs the
    judges (numpy, scipy) or matplotlib, which load only to deploy or to draw charts, nor
    aiohttp (the impact probe's load generator: 0.5 s of imports that the journal fold's
    `immunity.impact` phase boundaries pulled into `status`)."""
    code = (
        "import sys, immunity.engine.ops, immunity.engine.context, immunity.report, "
        "immunity.cli.show, immunity.analysis; "
        "print(','.join(sorted(m for m in ('numpy', 'scipy', 'matplotlib', 'aiohttp') "
        "if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "" == out.stdout.strip()


def test_the_analysis_package_still_gives_the_bake_loop_and_its_types() -> None:
    """The package's lazy names resolve to the same objects as their modules'."""
    import importlib

    import immunity.analysis as analysis
    from immunity.analysis import Cohorts, bake

    bake_module = importlib.import_module("immunity.analysis.bake")
    wave = importlib.import_module("immunity.analysis.wave")
    assert analysis.BakeAnalysis is wave.BakeAnalysis
    assert Cohorts is bake_module.Cohorts
    assert bake is bake_module.bake or bake is bake_module  # the loop, or its module
    assert analysis.GUARD_KINDS == wave.GUARD_KINDS


def test_the_plain_histogram_quantile_is_the_judges_rule() -> None:
    """`domain.histogram_quantile` (no numpy: the live view, `show`, the report) gives the
    judges' `judge.evidence.histogram_quantile` on every histogram and quantile tried."""
    import math
    import random

    from immunity.domain import histogram_quantile as plain
    from immunity.judge.evidence import histogram_quantile as judges

    rng = random.Random(7)
    bounds = [1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0]
    for _ in range(2000):
        buckets = [rng.choice([0, 0, 1, 3, 50, 1000]) for _ in range(len(bounds) + 1)]
        q = rng.choice([0.0, 0.5, 0.9, 0.99, 1.0, rng.random()])
        a, b = plain(bounds, buckets, q), judges(bounds, buckets, q)
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b), (buckets, q)


def test_a_deploy_loads_the_report_renderer_while_its_first_bake_waits() -> None:
    """The report's charts need matplotlib (seconds to import on a busy machine, which the
    user waited through after the fleet was back): the deploy's sink imports it in the
    background once the first bake starts, not before, and not at all without a bake."""
    code = """
import sys, threading
from immunity.cli.app import _ReportPreload
from immunity.domain import Event
sink = _ReportPreload()
sink(Event("deployment.started", "shop", "d1", "v2", ""))
before = "matplotlib" in sys.modules
sink(Event("bake.started", "shop", "d1", "v2", ""))
for t in threading.enumerate():
    if t.name == "report-preload":
        t.join(120)
print(before, "matplotlib" in sys.modules, "immunity.report.html" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr


def test_version_is_answered_without_loading_the_command_line() -> None:
    """`immunity --version` prints the version without importing typer, rich or the config
    models (the whole CLI took 0.5 s of CPU, 2-3 s on a busy machine, to print one line)."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "immunity", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    from immunity import __version__

    assert f"immunity {__version__}" == r.stdout.strip()
    loaded = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()}
    assert set() == loaded & {"typer", "rich", "immunity.cli.app", "immunity.config"}


def test_status_with_the_balancers_socket_missing_shows_the_hosts_and_says_so(
    tmp_path: Path,
) -> None:
    """`status` reads: with the balancer's socket missing it no longer retries it for 10 s
    and fails (exit 1, no host shown); it shows what each host's driver says with the pool
    state `unknown`, names the balancer's cause at once (no such file, the path: it used to
    say only that the balancer did not answer within `STATUS_WAIT_S`) and what to do, and
    `--check` exits 4."""
    (tmp_path / "c.yaml").write_text(READ_ONLY_CONFIG)
    _journal_with_one_deployment(tmp_path / "journal.db")
    r = subprocess.run(
        [sys.executable, "-m", "immunity", "status", "-c", "c.yaml", "--json", "--check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert 4 == r.returncode, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert ["unknown", "unknown"] == [h["lb_state"] for h in data["hosts"]]
    assert f"No such file or directory: {tmp_path}" in data["balancer_error"]
    assert "stats socket" in data["balancer_hint"]
    assert data["steady"] is False
    assert any("balancer unreadable" in a for a in data["attention"]), data["attention"]


def test_history_times_verdict_to_reverted_only_where_the_revert_followed_the_verdict(
    tmp_path: Path,
) -> None:
    """`history`'s median verdict→fleet reverted: a revert that a signal stopped and `resume`
    finished counts its `reverted_after_s` from the resume (`reverted_from: resume`), not
    from the verdict, so it is left out (the median of 1.0 s and 50 s said 25.5 s)."""
    import anyio

    from immunity.journal import open_journal

    async def write() -> None:
        j = open_journal(tmp_path / "journal.db", None)
        try:
            for release, took, since in (("v2", 1.0, "verdict"), ("v3", 50.0, "resume")):
                rec = await j.begin("shop", release, {"hosts": ["h1", "h2"]})
                result = {
                    "verdict": {"outcome": "fail", "reason": "errors: worse"},
                    "reverted_after_s": took,
                    "reverted_from": since,
                }
                await j.finish(rec.id, "reverted", "errors: worse", {"result": result})
        finally:
            await j.close()

    anyio.run(write)
    (tmp_path / "c.yaml").write_text(READ_ONLY_CONFIG)
    r = subprocess.run(
        [sys.executable, "-m", "immunity", "history", "-c", "c.yaml", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    figures = json.loads(r.stdout)["figures"]
    assert (2, 1.0) == (figures["found_worse"], figures["median_verdict_to_reverted_s"])


LOADED_BY = """\
import sys
from immunity.cli import main
sys.argv[0] = "immunity"
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = ("pydantic", "immunity.config.models", "httpx", "psutil", "tenacity", "asyncio")
print("LOADED=" + ",".join(m for m in heavy if m in sys.modules))
print("EXIT=" + str(code))
"""


def _loaded_by(args: list[str], cwd: Path) -> tuple[str, str]:
    r = subprocess.run(
        [sys.executable, "-c", LOADED_BY, *args], capture_output=True, text=True, cwd=cwd
    )
    lines = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line[:8])
    return lines.get("LOADED", "?"), lines.get("EXIT", "?") + r.stderr[-2000:]


def test_help_prints_the_commands_without_the_config_models_http_or_the_sandbox(
    tmp_path: Path,
) -> None:
    """`immunity --help` lists every command (sandbox, demo and bench included) without
    importing pydantic and the config models, httpx, psutil, tenacity or asyncio (the
    commands import them when they run: half of the 0.6-0.8 s of CPU `--help` took)."""
    loaded, code = _loaded_by(["--help"], tmp_path)
    assert (loaded, code) == ("", "0")
    r = subprocess.run(
        [sys.executable, "-c", LOADED_BY, "--help"], capture_output=True, text=True, check=True
    )
    for command in ("deploy", "status", "sandbox", "demo", "bench", "report", "show"):
        assert re.search(rf"│ {command} ", r.stdout), r.stdout


def test_status_reads_the_fleet_without_loading_an_http_client(tmp_path: Path) -> None:
    """`status` with a `probe` block builds the probe's signal and the warm-up prober but
    sends no request: httpx (a tenth of a second of imports) loads only in a command that
    sends one. The balancer's socket is missing here, so status says so and exits non-zero."""
    (tmp_path / "c.yaml").write_text(READ_ONLY_CONFIG + "probe: {paths: [/], rate: 10}\n")
    loaded, code = _loaded_by(["status", "-c", "c.yaml"], tmp_path)
    assert "httpx" not in loaded.split(","), code
    assert "immunity.config.models" in loaded.split(",")  # the config was read


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("sig", "code"), [("SIGHUP", 129), ("SIGINT", 130)])
def test_serve_ends_cleanly_when_its_terminal_goes_away(
    tmp_path: Path, sig: str, code: int
) -> None:
    """`serve` stops gracefully on SIGHUP (the ssh session that started it went away), exit
    129, as it does on Ctrl-C (130); SIGHUP used to kill it at once (exit -1, requests in
    flight cut, the journals not closed). (SIGTERM: uvicorn's own graceful stop, 143.)"""
    import signal
    import socket
    import time

    import httpx

    (tmp_path / "c.yaml").write_text(READ_ONLY_CONFIG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen(
        [sys.executable, "-m", "immunity", "serve", "-c", "c.yaml", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert p.poll() is None, p.communicate()
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "serve never answered"
                time.sleep(0.2)
        p.send_signal(getattr(signal, sig))
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert code == p.returncode, err[-2000:]
