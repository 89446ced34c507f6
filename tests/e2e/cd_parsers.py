"""What CD tools read from a step's output, parsed the way those tools parse it.

* Octopus: Calamari's `ServiceMessageParser` (a character state machine: `##octopus`, then
  everything up to `]`; trimmed, a leading `[` dropped, read as the XML element
  `<NAME attr='...'/>`, every attribute value base64-decoded as UTF-8; a message that does not
  parse is ignored). Log levels: a line `##octopus[stdout-LEVEL]` switches the level of the
  lines that follow until `##octopus[stdout-default]`.
* GitHub Actions runner: the `$GITHUB_OUTPUT` file (`name=value` or `name<<DELIM` ... `DELIM`),
  and workflow commands on stdout (`::command key=value,...::data`, `%25`, `%0D`, `%0A` in
  data and also `%3A`, `%2C` in properties decoded).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class OctopusLog:
    messages: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)  # (level, text)

    def variables(self) -> dict[str, str]:
        return {a["name"]: a["value"] for n, a in self.messages if n == "setVariable"}

    def artifacts(self) -> list[dict[str, str]]:
        return [a for n, a in self.messages if n == "createArtifact"]


def parse_octopus(stdout: str) -> OctopusLog:
    log = OctopusLog()
    level = "default"
    for line in stdout.splitlines():
        found = _octopus_messages(line)
        for name, attrs in found:
            log.messages.append((name, attrs))
            if name.startswith("stdout-"):
                level = name.removeprefix("stdout-")
        if not found:
            log.lines.append((level, line))
    return log


def _octopus_messages(line: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    state, buf = "default", ""
    for c in line:
        if state == "default":
            if c == "#":
                state, buf = "possible", "#"
        elif state == "possible":
            buf += c
            if buf == "##octopus":
                state, buf = "in", ""
            elif not "##octopus".startswith(buf):
                state, buf = "default", ""
        elif c == "]":
            msg = buf.strip().lstrip("[").replace("\r", "").replace("\n", "")
            try:
                el = ET.fromstring(f"<{msg}/>")
                attrs = {
                    k.lower(): base64.b64decode(v, validate=True).decode("utf-8")
                    for k, v in el.attrib.items()
                }
                out.append((el.tag, attrs))
            except (ET.ParseError, ValueError):
                pass  # Calamari ignores what it cannot parse
            state, buf = "default", ""
        else:
            buf += c
    return out


def parse_github_output(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            value: list[str] = []
            while True:
                assert i < len(lines), f"no closing delimiter {delim!r} for {name!r}"
                if lines[i] == delim:
                    i += 1
                    break
                value.append(lines[i])
                i += 1
            out[name] = "\n".join(value)
        else:
            name, _, v = line.partition("=")
            out[name] = v
    return out


_CMD = re.compile(r"^::([A-Za-z-]+)(?: ([^:]*))?::(.*)$")


def _unescape(text: str, prop: bool = False) -> str:
    text = text.replace("%0D", "\r").replace("%0A", "\n")
    if prop:
        text = text.replace("%3A", ":").replace("%2C", ",")
    return text.replace("%25", "%")


def parse_workflow_commands(stdout: str) -> list[tuple[str, dict[str, str], str]]:
    out = []
    for line in stdout.splitlines():
        m = _CMD.match(line)
        if not m:
            continue
        props = {}
        for part in (m.group(2) or "").split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                props[k.strip()] = _unescape(v, prop=True)
        out.append((m.group(1), props, _unescape(m.group(3))))
    return out


# -- running the shipped integrations the way their tools run them ---------------------------

ROOT = Path(__file__).resolve().parents[2]


def octopus_step_script(variables: dict[str, str]) -> str:
    """The step template's script body behind Calamari's Bash helpers (`get_octopusvariable`
    answers from `variables`; `fail_step` writes `resultMessage` and exits 1, as Bootstrap.sh)."""
    template = json.loads((ROOT / "integrations/octopus/immunity-deploy.json").read_text())
    assert template["ActionType"] == "Octopus.Script"
    props = template["Properties"]
    assert props["Octopus.Action.Script.Syntax"] == "Bash"
    declared = {p["Name"]: p.get("DefaultValue") or "" for p in template["Parameters"]}
    values = {**declared, **variables}
    cases = "".join(
        f"    {shlex.quote(k)}) printf '%s' {shlex.quote(v)} ;;\n" for k, v in values.items()
    )
    bootstrap = (
        'get_octopusvariable() {\n  case "$1" in\n' + cases + "    *) echo '' ;;\n  esac\n}\n"
        "fail_step() {\n"
        '  [ -n "${1:-}" ] && echo "##octopus[resultMessage message=\'$(printf \'%s\' "$1"'
        " | base64 -w0)']\"\n  exit 1\n}\n"
    )
    return bootstrap + props["Octopus.Action.Script.ScriptBody"]


def github_step(step_id: str, inputs: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A step of the composite action: its `run` script and its `env` with `${{ inputs.X }}`
    resolved from `inputs` and the inputs' defaults (the only expressions the steps use)."""
    action = yaml.safe_load((ROOT / "integrations/github/action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    values = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
    values.update(inputs)
    missing = [k for k, v in action["inputs"].items() if v.get("required") and k not in inputs]
    assert not missing, f"required inputs missing: {missing}"
    step = next(s for s in action["runs"]["steps"] if s.get("id") == step_id)
    assert "${{" not in step["run"], "inputs must reach the script through env"
    env = {
        k: re.sub(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}", lambda m: values[m.group(1)], v)
        for k, v in step.get("env", {}).items()
    }
    return step["run"], env
