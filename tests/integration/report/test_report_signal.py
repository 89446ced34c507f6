"""A signal while the CLI draws a finished run's report stops the drawing only: the result
line is printed and the exit code is the outcome's own (the run had ended; its journal is
whole), and one line says how to write the report later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from immunity.sandbox.fleet import immunity_yaml

# a deployment journaled as the engine does (one wave, passed), then the CLI's finish path
SCRIPT = """
import datetime as dt, sys
import anyio, typer
from immunity.cli.app import _finish
from immunity.engine.result import RunResult
from immunity.journal import open_journal

config, journal_path = sys.argv[1], sys.argv[2]

async def journaled() -> str:
    j = open_journal(journal_path)
    try:
        d = await j.begin("shop", "v2", {})
        await j.append(d.id, "wave.started", data={"wave": 1, "hosts": ["h1"]})
        await j.append(d.id, "host.step_started", host="h1", step="install", data={"release": "v2"})
        await j.append(d.id, "host.step_finished", host="h1", step="install")
        await j.append(d.id, "wave.passed", data={"wave": 1})
        await j.append(d.id, "deployment.finished")
        await j.finish(d.id, "deployed", "every wave passed", {})
        return d.id
    finally:
        await j.close()

did = anyio.run(journaled)
now = dt.datetime.now(dt.UTC)
try:
    _finish(RunResult(outcome="deployed", release="v2", deployment_id=did, started_at=now,
                      finished_at=now), None, None, config)
except typer.Exit as e:
    sys.exit(e.exit_code)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_while_the_report_is_drawn_keeps_the_result_and_exit_code(
    tmp_path: Path, sig: signal.Signals
) -> None:
    config = tmp_path / "immunity.yaml"
    config.write_text(
        immunity_yaml("shop", {"h1": 18081, "h2": 18082, "h3": 18083}), encoding="utf-8"
    )
    env = {**os.environ, "IMMUNITY_FAULT_SLOW_REPORT": "60", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(config), str(tmp_path / "journal.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    said = ""
    deadline = time.monotonic() + 60
    while "writing the report" not in said:  # the drawing has begun
        assert time.monotonic() < deadline, said
        line = proc.stderr.readline()
        assert line or proc.poll() is None, said
        said += line
    time.sleep(1.5)  # inside the (slowed) drawing: past the journal read, at a chart
    proc.send_signal(sig)
    out, rest = proc.communicate(timeout=30)
    said += rest
    assert proc.returncode == 0, (out, said)  # deployed: 0, whatever stopped the report
    assert "deployed v2 (" in out, out
    assert f"report not written: {sig.name} received; `immunity report -c {config} " in said
    assert "writes it" in said
    assert not list(tmp_path.glob("reports/*.html"))  # skipped, not half written
