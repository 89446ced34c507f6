"""What a deployment tells the CD tool it runs in: Octopus Deploy, GitHub Actions, or JSON lines.

Each reporter is an engine event sink plus `begin` (before anything runs) and `finish` (with
the result). Formats, as the tools read them:

* **Octopus** service messages, written to stdout (Calamari's `Bootstrap.sh` and
  `ServiceMessageParser`): `##octopus[NAME attr='BASE64' ...]`, every attribute value base64
  of its UTF-8 text; `setVariable name= value=` for output variables, `createArtifact path=
  name= length=` for files collected after the step, and the log-level switches
  `##octopus[stdout-highlight]` / `##octopus[stdout-warning]` ... `##octopus[stdout-default]`
  around a line. Detected by `OctopusCalamariWorkingDirectory` (set by Calamari).
* **GitHub Actions** (docs.github.com "Workflow commands"): outputs appended to the file named
  by `$GITHUB_OUTPUT` as `name<<DELIMITER` / value lines / `DELIMITER` (multi-line safe, the
  delimiter random so no value can end it); markdown appended to `$GITHUB_STEP_SUMMARY`;
  `::add-mask::VALUE` and `::error title=...::MESSAGE` on stdout, with `%`, CR, LF (and in
  properties `:` and `,`) percent-encoded. Detected by `GITHUB_ACTIONS=true`.
* **JSON lines**: one object per line on stdout, `{"event": kind, "at", "deployment_id",
  "release", "message", "data"}` with `event` the journal's kind (`noun.verb_past`), and a
  last line `{"event": "deployment.result", "data": <the JSON result>}`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from immunity.domain import Event, brief, outcome_words, reason_beside, utcnow

# Environment variables that hold credentials when set (AWS's credential chain, proxies with
# passwords are covered by the config's own ${NAME} references).
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "IMMUNITY_DATABASE_URL")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

# Events worth a line in a CD tool's log (the rest stay in the journal and the report).
HIGHLIGHT = {
    "deployment.started",
    "wave.started",
    "wave.passed",
    "verdict.reached",
    "deployment.succeeded",
    "deployment.resumed",
}
WARNING = {
    "verdict.failed",
    "immune.started",
    "deployment.reverted",
    "deployment.revert_incomplete",
    "deployment.held",
    "deployment.stopping",
    "deployment.interrupted",
    "host.step_failed",
}


def _tenths(v: object) -> str:
    """Seconds as every view shows them: one decimal (`117.802` -> `117.8`)."""
    try:
        return f"{float(v):.1f}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _md(v)


def detect(env: Mapping[str, str]) -> str | None:
    """`octopus` or `github` from the CD tool's own environment variables, else None."""
    if env.get("OctopusCalamariWorkingDirectory") or env.get("TentacleHome"):
        return "octopus"
    if env.get("GITHUB_ACTIONS") == "true":
        return "github"
    return None


def secret_values(config_text: str, env: Mapping[str, str]) -> list[str]:
    """Every value the config reads from the environment (`${NAME}`), plus known credential
    variables, longest first; values shorter than 4 characters are left (masking them would
    blank out ordinary words)."""
    names = {m.group(1) for m in _ENV_REF.finditer(config_text)} | set(SECRET_ENV)
    values = {env[n] for n in names if env.get(n)}
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def octopus_message(message: str, /, **attrs: str) -> str:
    """One Octopus service message, every attribute value base64 (as Calamari encodes it)."""
    body = "".join(f" {k}='{_b64(v)}'" for k, v in attrs.items())
    return f"##octopus[{message}{body}]"


def gh_escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def gh_escape_property(text: str) -> str:
    return gh_escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _one_line(text: str) -> str:
    """One line, and a verdict reason as `domain.brief` gives it (the JSON result keeps it
    whole)."""
    return " ".join(brief(str(text)).split())


def outputs(result: Mapping[str, Any], report_path: str | None) -> dict[str, str]:
    """The values a CD tool gets: outcome, release, reason, detected/reverted times, report.

    `detected_at` is when the failing verdict was reached; `reverted_at` that moment plus
    `reverted_after_s` (ISO 8601, UTC), or the run's end when the revert was finished by a
    resume (`reverted_from: resume`: it counts from the resume); empty when they did not
    happen.
    """
    import datetime as dt

    verdict = result.get("verdict") or {}
    decided = verdict.get("decided_at") if result.get("detected_after_s") is not None else None
    reverted_at = ""
    if decided and result.get("reverted_after_s") is not None:
        if result.get("reverted_from") in (None, "verdict"):
            reverted_at = (
                dt.datetime.fromisoformat(decided)
                + dt.timedelta(seconds=float(result["reverted_after_s"]))
            ).isoformat()
        else:
            reverted_at = str(result.get("finished_at") or "")

    def num(key: str) -> str:
        return "" if result.get(key) is None else str(result[key])

    return {
        "outcome": str(result.get("outcome", "")),
        "exit_code": num("exit_code"),
        "release": str(result.get("release", "")),
        "deployment_id": str(result.get("deployment_id", "")),
        "reason": brief(str(result.get("reason") or "")),  # whole in the JSON result
        "detected_after_s": num("detected_after_s"),
        "detected_at": str(decided or ""),
        "reverted_after_s": num("reverted_after_s"),
        "reverted_at": reverted_at,
        "report_path": report_path or "",
    }


class Reporter:
    """Base: a sink for engine events, told the result at the end. Writes to `stream`."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def begin(self, secrets: Iterable[str]) -> None:
        """Before anything runs (masks secrets where the tool can)."""

    def __call__(self, event: Event) -> None: ...

    def finish(
        self, result: Mapping[str, Any], report_path: str | None, json_path: str | None
    ) -> None: ...

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


class OctopusReporter(Reporter):
    """Octopus Deploy service messages (see the module docstring)."""

    PREFIX = "Immunity."

    def _level(self, level: str, line: str) -> None:
        self._print(f"##octopus[stdout-{level}]")
        self._print(line)
        self._print("##octopus[stdout-default]")

    def __call__(self, event: Event) -> None:
        line = f"{event.kind}: {_one_line(event.message)}"
        if event.kind in WARNING:
            self._level("warning", line)
        elif event.kind in HIGHLIGHT:
            self._level("highlight", line)
        elif event.kind not in ("verdict.looked", "host.step_finished"):
            self._print(f"{event.at:%H:%M:%S} {line}")

    def finish(
        self, result: Mapping[str, Any], report_path: str | None, json_path: str | None
    ) -> None:
        names = {
            "outcome": "Outcome",
            "exit_code": "ExitCode",
            "release": "Release",
            "deployment_id": "DeploymentId",
            "reason": "VerdictReason",
            "detected_after_s": "DetectedAfterSeconds",
            "detected_at": "DetectedAt",
            "reverted_after_s": "RevertedAfterSeconds",
            "reverted_at": "RevertedAt",
            "report_path": "ReportPath",
        }
        for key, value in outputs(result, report_path).items():
            self._print(octopus_message("setVariable", name=self.PREFIX + names[key], value=value))
        for path, label in ((json_path, "result"), (report_path, "report")):
            if path and Path(path).is_file():
                p = Path(path).resolve()
                self._print(
                    octopus_message(
                        "createArtifact",
                        path=str(p),
                        name=f"immunity-{result.get('deployment_id', label)}{p.suffix}",
                        length=str(p.stat().st_size),
                    )
                )


class GithubReporter(Reporter):
    """GitHub Actions workflow commands, outputs and step summary (module docstring)."""

    def __init__(self, env: Mapping[str, str], stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.output_file = env.get("GITHUB_OUTPUT")
        self.summary_file = env.get("GITHUB_STEP_SUMMARY")
        self.echo_events = True
        """Print the key events (`deployment.started: ...`); False when the live view
        already prints every event to the same runner log (each would show twice)."""

    def begin(self, secrets: Iterable[str]) -> None:
        for value in secrets:
            for line in value.splitlines() or [value]:
                if line.strip():
                    self._print(f"::add-mask::{gh_escape_data(line)}")

    def __call__(self, event: Event) -> None:
        if self.echo_events and (event.kind in HIGHLIGHT or event.kind in WARNING):
            self._print(f"{event.kind}: {_one_line(event.message)}")

    def finish(
        self, result: Mapping[str, Any], report_path: str | None, json_path: str | None
    ) -> None:
        values = outputs(result, report_path)
        if json_path:
            values["result_path"] = str(Path(json_path).resolve())
        from immunity.cli.paths import wrote  # a late failure: one line, the same exit

        if self.output_file:
            text = "".join(
                f"{key}<<{delim}\n{value}\n{delim}\n"
                for key, value in values.items()
                for delim in (f"ghadelimiter_{uuid.uuid4()}",)
            )
            wrote("the GitHub outputs", self.output_file, lambda: _append(self.output_file, text))
        if self.summary_file:
            summary = summary_markdown(result, report_path)
            wrote(
                "the step summary", self.summary_file, lambda: _append(self.summary_file, summary)
            )
        if result.get("outcome") in ("reverted", "revert_incomplete", "held", "inconclusive"):
            title = f"immunity: {result.get('release')} {result.get('outcome')}"
            # not judged for lack of evidence is a warning, not a release found worse
            level = "warning" if result.get("outcome") == "inconclusive" else "error"
            self._print(
                f"::{level} title={gh_escape_property(title)}::"
                f"{gh_escape_data(brief(str(result.get('reason') or result.get('outcome'))))}"
            )


def _append(path: str | None, text: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)


def _md(text: Any) -> str:
    return _one_line(str(text)).replace("|", "\\|")


def summary_markdown(result: Mapping[str, Any], report_path: str | None) -> str:
    """A markdown verdict table per check and the customers' view per phase."""
    icon = {
        "deployed": "✅",
        "reverted": "🛑",
        "inconclusive": "❔",
        "aborted": "↩️",
        "revert_incomplete": "🚨",
        "held": "⏸️",
    }
    outcome = str(result.get("outcome"))
    said = outcome_words(outcome)  # "rolled back"; the value itself beside it in the table
    lines = [
        f"## {icon.get(outcome, 'ℹ️')} immunity: {_md(result.get('release'))} {said}",
        "",
        f"{_md(reason_beside(outcome, str(result.get('reason') or '')))}",
        "",
        "| | |",
        "| --- | --- |",
        f"| deployment | `{_md(result.get('deployment_id'))}` |",
        f"| outcome | **{said}** (`{outcome}`, exit {_md(result.get('exit_code'))}) |",
        f"| duration | {_tenths(result.get('duration_s'))} s |",
    ]
    if result.get("detected_after_s") is not None:
        lines.append(
            f"| detected after the first canary entered the pool | "
            f"{_tenths(result['detected_after_s'])} s |"
        )
    if result.get("reverted_after_s") is not None:
        from immunity.report.data import reverted_from

        since = f" ({reverted_from(result)})" if reverted_from(result) else ""
        lines.append(f"| fleet reverted in | {_tenths(result['reverted_after_s'])} s{since} |")
    if report_path:
        lines.append(f"| report | `{_md(report_path)}` |")
    verdict = result.get("verdict") or {}
    checks = verdict.get("checks") or []
    if checks:
        lines += [
            "",
            "### Verdict per check",
            "",
            "| check | verdict | why |",
            "| --- | --- | --- |",
        ]
        for c in checks:
            lines.append(f"| {_md(c['name'])} | {_md(c['outcome'])} | {_md(c['reason'])} |")
    impact = result.get("impact") or {}
    phases = impact.get("phases") or []
    if phases:
        lines += [
            "",
            f"### What customers saw ({_md(impact.get('url', ''))})",
            "",
            "| phase | requests | failed | p50 ms | p99 ms | max ms | longest stall s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for p in phases:
            lines.append(
                f"| {_md(p['phase'])} | {p['requests']} | {p['failed']} | {p['p50_ms']:.1f} | "
                f"{p['p99_ms']:.1f} | {p['max_ms']:.1f} | {p['longest_stall_s']:.2f} |"
            )
    return "\n".join(lines) + "\n\n"


class JsonLinesReporter(Reporter):
    """One JSON event per line on stdout (module docstring)."""

    def __call__(self, event: Event) -> None:
        self._print(
            json.dumps(
                {
                    "event": event.kind,
                    "at": event.at.isoformat(),
                    "deployment_id": event.deployment_id,
                    "release": event.release,
                    "message": event.message,
                    "data": dict(event.data),
                },
                default=str,
            )
        )

    def finish(
        self, result: Mapping[str, Any], report_path: str | None, json_path: str | None
    ) -> None:
        self._print(
            json.dumps(
                {
                    "event": "deployment.result",
                    "at": result.get("finished_at") or utcnow().isoformat(),
                    "deployment_id": result.get("deployment_id"),
                    "release": result.get("release"),
                    "message": _result_words(result),
                    "data": {**result, "report_path": report_path},
                },
                default=str,
            )
        )


def _result_words(result: Mapping[str, Any]) -> str:
    """The result in one line: "reverted: errors: canary 5xx 5.5% vs ..."."""
    outcome = str(result.get("outcome"))
    reason = " ".join(reason_beside(outcome, str(result.get("reason") or "")).split())
    said = f"{result.get('release')} {outcome_words(outcome)}"
    return f"{said}: {reason}" if reason else said


class Both(Reporter):
    """Several reporters fed the same events and result, in order."""

    def __init__(self, *reporters: Reporter) -> None:
        super().__init__()
        self.reporters = reporters

    def begin(self, secrets: Iterable[str]) -> None:
        values = list(secrets)
        for r in self.reporters:
            r.begin(values)

    def __call__(self, event: Event) -> None:
        for r in self.reporters:
            r(event)

    def finish(
        self, result: Mapping[str, Any], report_path: str | None, json_path: str | None
    ) -> None:
        for r in self.reporters:
            r.finish(result, report_path, json_path)


class CannotCombine(ValueError):
    """`--output jsonl` with a CD tool that reads its own messages from stdout."""


def reporter(
    kind: str | None, env: Mapping[str, str] | None = None, *, jsonl: bool = False
) -> Reporter | None:
    """The reporter for `--ci KIND` (`auto` detects), or None; with `jsonl`, JSON lines on
    stdout as well. GitHub's outputs and step summary are files, and the runner reads
    workflow commands (`::add-mask::`, `::error`) from stderr too, so with JSON lines on
    stdout GitHub's commands go to stderr. Octopus reads service messages from stdout only:
    raises CannotCombine (the caller refuses before anything runs)."""
    env = os.environ if env is None else env
    if kind == "auto":
        kind = detect(env)
    if kind == "jsonl":  # the old spelling of `--output jsonl` alone
        kind, jsonl = None, True
    if jsonl:
        if kind == "octopus":
            raise CannotCombine(
                "--output jsonl writes JSON lines on stdout, where Octopus reads its service "
                "messages (output variables, artifacts): use one of them (`--ci none` keeps "
                "the JSON lines; dropping `--output jsonl` keeps Octopus's)"
            )
        if kind == "github":
            return Both(JsonLinesReporter(), GithubReporter(env, stream=sys.stderr))
        return JsonLinesReporter()
    if kind == "octopus":
        return OctopusReporter()
    if kind == "github":
        return GithubReporter(env)
    return None
