"""CPU that `immunity` spends before it does anything: this tree against another commit.

    .venv/bin/python scripts/bench_startup.py [--before REF] [--runs N] [--json FILE]

Each command runs N times in a fresh interpreter (`python -c "from immunity.cli import main;
main()"` with the tree's `src` first on sys.path, the venv's packages after it); the figure is
the median CPU (user + system, from the children's rusage) per run. `status` asks a 3-host
sandbox started for the measurement (a real HAProxy), so its figure includes the fleet read.
Both trees are byte-compiled first, as `make test` does (with PYTHONDONTWRITEBYTECODE set, a
tree without bytecode would be compiled again at every start). `--before` takes the `src/` of a commit (via `git archive`, nothing in the work tree moves):
by default the merge base with main, the code before this branch's changes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
LAUNCH = "import sys; from immunity.cli import main; sys.argv[0] = 'immunity'; main()"


def cpu_of(src: Path, args: list[str], runs: int) -> float:
    """Median CPU seconds (user + system) of `immunity ARGS` run from `src`."""
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "100"}
    took = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [PY, "-c", LAUNCH, *args], env=env, capture_output=True, check=False, timeout=120
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        took.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(took)


def tree_at(ref: str, into: Path) -> Path:
    """`src/` of commit `ref` unpacked under `into`."""
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    return into / "src"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="", help="commit to compare with (default: merge base)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", dest="json_path", default="")
    opts = ap.parse_args()
    ref = (
        opts.before
        or subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        old = tree_at(ref, Path(tmp) / "before")
        for src in (old, ROOT / "src"):  # bytecode ahead, as `make` does (PYTHONDONTWRITEBYTECODE)
            subprocess.run([PY, "-m", "compileall", "-q", "-j", "0", str(src)], check=True)
        fleet = Path(tmp) / "fleet"
        subprocess.run(
            [PY, "-c", LAUNCH, "sandbox", "up", "--dir", str(fleet), "--hosts", "3"],
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            capture_output=True,
            check=True,
        )
        config = str(fleet / "immunity.yaml")
        commands = {
            "--version": ["--version"],
            "--help": ["--help"],
            "status": ["status", "-c", config],
            "config validate": ["config", "validate", config],
        }
        rows = []
        try:
            for name, args in commands.items():
                was = cpu_of(old, args, opts.runs)
                now = cpu_of(ROOT / "src", args, opts.runs)
                rows.append({"command": name, "before_s": round(was, 3), "after_s": round(now, 3)})
        finally:
            subprocess.run(
                [PY, "-c", LAUNCH, "sandbox", "down", "--dir", str(fleet)],
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                capture_output=True,
                check=False,
            )
    print(f"CPU per start, median of {opts.runs} (before = {ref[:10]}, after = this tree)")
    print(f"{'command':<18}{'before':>10}{'after':>10}{'saved':>9}")
    for r in rows:
        saved = 1 - r["after_s"] / r["before_s"] if r["before_s"] else 0.0
        print(f"{r['command']:<18}{r['before_s']:>9.3f}s{r['after_s']:>9.3f}s{saved:>8.0%}")
    if opts.json_path:
        Path(opts.json_path).write_text(
            json.dumps({"before": ref, "runs": opts.runs, "commands": rows}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
