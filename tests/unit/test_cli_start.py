"""The command line starts light: numeric and HTTP libraries load only in the commands that
use them, so `--help`, `config validate` and the load generator start at once."""

from __future__ import annotations

import subprocess
import sys


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
