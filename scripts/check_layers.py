"""Import layering check: arrows point down only.

cli -> engine -> report -> fleet -> analysis -> roles (lb, hosts, signals, judge, notify, journal, probe)
-> clients -> config -> domain, clock -> errors. Adapters never import the engine or the analysis; neither of those names a
concrete adapter (they go through plugins and the roles' `base` Protocols). The fleet (the
adapters built from the config, what they report, the preflight checks) sits below the engine:
`status`, the dry-run and `serve` read it without the engine's run. The analysis sits
between the engine (which asks it for a verdict) and the roles it uses (signals, judge). The report
reads the journal through the fleet's fold (and re-judges with the analysis); the engine and
the CLI write it.
The one built-in source they name is `signals.probe`: it is configured by the top-level `probe`
block, not chosen by `kind`, and the bake steers the traffic it sends.
sandbox and bench sit beside cli (they drive the engine like a user would).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "immunity"
RANK = {
    "errors": 0,
    "domain": 1,
    "clock": 1,
    "files": 1,
    "config": 2,
    "plugins": 2,
    "clients": 3,
    "lb": 4,
    "hosts": 4,
    "signals": 4,
    "judge": 4,
    "notify": 4,
    "journal": 4,
    "impact": 4,
    "probe": 4,
    "analysis": 5,
    "fleet": 6,
    "report": 7,
    "engine": 8,
    "sandbox": 9,
    "testing": 9,
    "bench": 10,
    "cli": 11,
    "serve": 11,
    "__main__": 12,
    "__init__": 0,
}
ROLES = {"lb", "hosts", "signals", "judge", "notify", "journal", "probe"}


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def main() -> int:
    problems = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        me = ".".join(rel.parts)
        mine = layer(me)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if not name.startswith("immunity."):
                    continue
                theirs = layer(name)
                if theirs == mine or theirs == "__init__":
                    continue
                if (
                    mine in ROLES
                    and theirs in ROLES
                    and not (mine != "judge" and theirs == "judge")
                ):
                    # roles do not import each other (judge is pure math anyone may use)
                    problems.append(f"{path}:{node.lineno}: role {mine} imports role {theirs}")
                    continue
                if RANK.get(theirs, 99) > RANK.get(mine, 99):
                    problems.append(
                        f"{path}:{node.lineno}: {mine} (layer {RANK.get(mine)}) imports {name} (layer {RANK.get(theirs)})"
                    )
                if (
                    mine in ("engine", "fleet", "analysis")
                    and theirs in ROLES
                    and name.split(".")[-1] not in ("base", theirs)
                    and name != "immunity.signals.probe"
                    and theirs != "judge"
                ):
                    problems.append(f"{path}:{node.lineno}: engine names a concrete adapter {name}")
    for p in problems:
        print(p)
    print(f"layering: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
