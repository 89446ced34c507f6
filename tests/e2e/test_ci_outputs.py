"""Deployments under a CD tool: what Octopus, GitHub Actions and a JSON-lines reader get.

Each test runs `immunity deploy` in the tool's environment (detected from its variables) and
parses the output the way that tool parses it (`cd_parsers`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cd_parsers import (
    github_step,
    octopus_step_script,
    parse_github_output,
    parse_octopus,
    parse_workflow_commands,
)
from e2e_helpers import FAST, IMMUNITY, Load, Sandbox

pytestmark = pytest.mark.slow

# Good releases: no latency check, whose thresholds need more baseline traffic than a short
# bake gathers (it would hold every wave to bake.max); the 5xx checks pass at bake.min.
GOOD = {
    **FAST,
    "checks": [c for c in FAST["checks"] if c["kind"] != "latency"],
}
EXE = str(Path(sys.executable).parent / "immunity")
OCTOPUS_ENV = {"OctopusCalamariWorkingDirectory": "/tmp/octopus-work"}


def _clean_env() -> dict[str, str]:
    """The test's own environment without any CD tool's variables (CI may run this suite)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("GITHUB_ACTIONS", "OctopusCalamariWorkingDirectory", "TentacleHome")
    }


def run(sbx: Sandbox, *args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run immunity with customers arriving through the balancer (the checks need traffic)."""
    return run_cmd(sbx, [*IMMUNITY, *args], env)


def run_cmd(sbx: Sandbox, cmd: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    load = Load(sbx, 120)
    try:
        r = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=240,
            env={**_clean_env(), **env},
            cwd=sbx.dir,
        )
    finally:
        load.stop()
    return r.returncode, r.stdout, r.stderr


def ensure_on_v1(sbx: Sandbox) -> None:
    if sbx.serves("v1"):
        return
    cfg = sbx.write_config("plain.yaml", **{**FAST, "checks": []})
    r = sbx.run("deploy", "-c", str(cfg), "--release", "v1", "--ci", "none")
    assert r.returncode == 0, r.stdout + r.stderr


def test_octopus_gets_base64_output_variables_artifacts_and_wave_events(fleet3: Sandbox) -> None:
    """Under Octopus (auto-detected) a rejected release sets the documented output variables,
    collects the result and the report as artifacts and highlights/warns the wave events."""
    ensure_on_v1(fleet3)
    cfg = fleet3.write_config("octo.yaml", **FAST)
    script = octopus_step_script(
        {"Immunity.Config": str(cfg), "Immunity.Release": "bad", "Immunity.Executable": EXE}
    )
    rc, stdout, stderr = run_cmd(fleet3, ["bash", "-c", script], OCTOPUS_ENV)
    assert rc == 1, stdout + stderr  # the step template fails the step with a message
    log = parse_octopus(stdout)
    assert "rejected bad" in dict(log.messages)["resultMessage"]["message"]
    v = log.variables()
    assert v["Immunity.Outcome"] == "reverted"
    assert v["Immunity.Release"] == "bad"
    assert v["Immunity.ExitCode"] == "3"
    assert "5xx" in v["Immunity.VerdictReason"]
    detected = dt.datetime.fromisoformat(v["Immunity.DetectedAt"])
    reverted = dt.datetime.fromisoformat(v["Immunity.RevertedAt"])
    assert detected < reverted
    assert float(v["Immunity.RevertedAfterSeconds"]) == pytest.approx(
        (reverted - detected).total_seconds(), abs=0.01
    )
    report = Path(v["Immunity.ReportPath"])
    assert report.is_file() and report.suffix == ".html"
    arts = log.artifacts()
    assert sorted(Path(a["path"]).suffix for a in arts) == [".html", ".json"]
    for a in arts:
        assert int(a["length"]) == Path(a["path"]).stat().st_size
        assert a["name"].startswith("immunity-" + v["Immunity.DeploymentId"])
    result = json.loads(
        next(Path(a["path"]) for a in arts if a["path"].endswith(".json")).read_text()
    )
    assert result["outcome"] == "reverted"
    warnings = [text for level, text in log.lines if level == "warning"]
    highlights = [text for level, text in log.lines if level == "highlight"]
    assert any(t.startswith("verdict.failed") for t in warnings)
    assert any(t.startswith("deployment.reverted") for t in warnings)
    assert any(t.startswith("wave.started") for t in highlights)
    assert [h["active_release"] for h in fleet3.status()["hosts"]] == ["v1"] * 3


def test_github_gets_outputs_a_summary_one_error_and_masks_secrets(
    fleet3: Sandbox, tmp_path: Path
) -> None:
    """Under GitHub Actions (auto-detected): $GITHUB_OUTPUT and the step summary are written,
    one ::error:: names the rejection, and the secret the config reads is masked first and
    never printed otherwise."""
    ensure_on_v1(fleet3)
    secret = "s3cr3t-e2e-token-Zq9"
    data = yaml.safe_load(fleet3.config.read_text())
    data.update(FAST)
    # a secret the config reads from the environment: the probe's Authorization header
    data["impact"] = {
        "url": fleet3.url,
        "rps": 5,
        "before": "1s",
        "after": "1s",
        "headers": {"Authorization": "Bearer ${IMMUNITY_E2E_TOKEN}"},
    }
    cfg = fleet3.dir / "gh.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    gh_out, gh_sum = tmp_path / "out", tmp_path / "summary.md"
    gh_out.write_text("")
    gh_sum.write_text("")
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(gh_out),
        "GITHUB_STEP_SUMMARY": str(gh_sum),
        "IMMUNITY_E2E_TOKEN": secret,
    }
    script, step_env = github_step(
        "deploy", {"config": str(cfg), "release": "bad", "immunity": EXE}
    )
    rc, stdout, stderr = run_cmd(fleet3, ["bash", "-e", "-c", script], {**env, **step_env})
    assert rc == 3, stdout + stderr
    outputs = parse_github_output(gh_out.read_text())
    assert outputs["outcome"] == "reverted"
    assert outputs["release"] == "bad"
    assert outputs["exit_code"] == "3"
    assert Path(outputs["report_path"]).is_file()
    assert json.loads(Path(outputs["result_path"]).read_text())["outcome"] == "reverted"
    assert dt.datetime.fromisoformat(outputs["detected_at"])
    commands = parse_workflow_commands(stdout)
    masks = [data for cmd, _, data in commands if cmd == "add-mask"]
    errors = [(props, data) for cmd, props, data in commands if cmd == "error"]
    assert secret in masks
    assert stdout.index(f"::add-mask::{secret}") < stdout.index("::error")
    # the runner's log holds both streams: each key event once (trial 4 #20: stdout and
    # stderr both carried `deployment.started`, `verdict.failed`, ...)
    for kind in ("deployment.started", "deployment.reverted"):
        assert 1 == sum(kind in line for line in (stdout + stderr).splitlines()), kind
    assert len(errors) == 1
    assert errors[0][0]["title"] == "immunity: bad reverted"
    assert errors[0][1] == outputs["reason"]
    assert (stdout + stderr).count(secret) == 1  # the mask line only
    summary = gh_sum.read_text()
    assert "| check | verdict | why |" in summary
    assert re.search(r"^\| [\w-]+ \| fail \| .*5xx", summary, re.M)
    assert secret not in summary and secret not in gh_out.read_text()
    assert secret not in Path(outputs["report_path"]).read_text()
    assert secret.encode() not in (fleet3.dir / "journal.db").read_bytes()


def test_jsonl_prints_one_event_per_line_with_the_journal_names(
    fleet3: Sandbox, tmp_path: Path
) -> None:
    """`--output jsonl`: stdout is JSON lines only (journal kinds, the result last), the
    human output goes to stderr. Under GitHub Actions the outputs and the step summary are
    written too (they were silently dropped); with Octopus, whose service messages need
    stdout, the pair is refused before anything is touched."""
    ensure_on_v1(fleet3)
    cfg = fleet3.write_config("jsonl.yaml", **GOOD)
    rc, stdout, stderr = run(
        fleet3, "deploy", "-c", str(cfg), "--release", "v1", "--output", "jsonl",
        env=OCTOPUS_ENV,
    )  # fmt: skip
    assert rc == 2, stdout + stderr
    assert "Octopus" in stderr and stdout == ""
    gh_out, gh_sum = tmp_path / "out", tmp_path / "summary.md"
    gh = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(gh_out),
        "GITHUB_STEP_SUMMARY": str(gh_sum),
    }
    rc, stdout, stderr = run(
        fleet3, "deploy", "-c", str(cfg), "--release", "v2", "--output", "jsonl", env=gh
    )
    assert rc == 0, stdout + stderr
    assert parse_github_output(gh_out.read_text())["outcome"] == "deployed"
    assert "| check | verdict | why |" in gh_sum.read_text()
    events = [json.loads(line) for line in stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "deployment.started"
    assert kinds[-1] == "deployment.result"
    assert events[-1]["data"]["outcome"] == "deployed"
    for kind in ("wave.started", "host.step_started", "host.switched", "deployment.succeeded"):
        assert kind in kinds
    with sqlite3.connect(fleet3.dir / "journal.db") as db:
        rows = db.execute(
            "SELECT kind FROM entries WHERE deployment_id=?", (events[-1]["deployment_id"],)
        ).fetchall()
    journal_kinds = {r[0] for r in rows}
    assert set(kinds[:-1]) <= journal_kinds
    assert "deployed v2" in stderr


def test_a_retried_octopus_step_resumes_the_deployment_from_the_journal(fleet3: Sandbox) -> None:
    """Guided failure's Retry runs the step again: with --resume-unfinished the orchestrator
    that died mid-deployment is taken over and the same deployment finishes. (It deploys the
    release the fleet does not run: v1 after the JSON-lines test above left v2.)"""
    hosts = fleet3.status()["hosts"]
    old = hosts[0]["active_release"]
    assert [h["active_release"] for h in hosts] == [old] * 3 and old in ("v1", "v2"), hosts
    new = "v1" if old == "v2" else "v2"
    cfg = fleet3.write_config("retry.yaml", **GOOD)
    script = octopus_step_script(
        {"Immunity.Config": str(cfg), "Immunity.Release": new, "Immunity.Executable": EXE}
    )
    kill = {"IMMUNITY_FAULT_KILL_AT": "host.step_started:3"}
    rc, stdout, stderr = run_cmd(fleet3, ["bash", "-c", script], {**OCTOPUS_ENV, **kill})
    assert rc == 1
    message = dict(parse_octopus(stdout).messages)["resultMessage"]["message"]
    assert "exited 137" in message, stdout + stderr
    rc, stdout, stderr = run_cmd(fleet3, ["bash", "-c", script], OCTOPUS_ENV)  # Retry
    assert rc == 0, stdout + stderr
    log = parse_octopus(stdout)
    v = log.variables()
    assert v["Immunity.Outcome"] == "deployed"
    assert any(t.startswith("deployment.resumed") for _, t in log.lines)
    history = fleet3.run("history", "-c", str(cfg), "--json")
    deployments = json.loads(history.stdout)["deployments"]
    assert deployments[-1]["id"] == v["Immunity.DeploymentId"]
    assert deployments[-1]["outcome"] == "deployed"
    assert [h["active_release"] for h in fleet3.status()["hosts"]] == [new] * 3


def test_a_cancelled_github_workflow_leaves_the_fleet_on_one_release(fleet3: Sandbox) -> None:
    """GitHub cancels a job with SIGINT: the deploy step finishes the host in flight and exits
    130; the action's `if: cancelled()` step then aborts the deployment (on-cancel: abort) and
    every host is back on the old release and serving."""
    ensure_on_v1(fleet3)
    cfg = fleet3.write_config("cancel.yaml", **GOOD)
    inputs = {"config": str(cfg), "release": "v2", "immunity": EXE}
    script, step_env = github_step("deploy", inputs)
    env = {**_clean_env(), "GITHUB_ACTIONS": "true", **step_env}
    load = Load(fleet3, 120)
    try:
        proc = subprocess.Popen(
            ["bash", "-e", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=fleet3.dir,
            start_new_session=True,  # the runner signals the step's whole process group
        )
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("host.") or "h1 serves v2" in line or "bake.started" in line:
                break
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=180)
        assert proc.returncode == 130, "".join(seen) + rest
        script, step_env = github_step("on-cancel", inputs)
        r = subprocess.run(
            ["bash", "-e", "-c", script],
            capture_output=True,
            text=True,
            timeout=240,
            env={**env, **step_env},
            cwd=fleet3.dir,
        )
    finally:
        load.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    hosts = fleet3.status()["hosts"]
    assert [h["active_release"] for h in hosts] == ["v1"] * 3
    assert [h["lb_state"] for h in hosts] == ["serving"] * 3
