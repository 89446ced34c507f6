"""Shared pytest settings: anyio runs on asyncio only; under xdist, longest files first."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers.postgres import PgCluster

# pytest-xdist's workers start with COLUMNS=80 and LINES=24 in their environment (a plain
# pytest run has neither), and every `immunity` the tests start inherits them. The CLI
# honours COLUMNS when its output is piped (`COLUMNS=80 immunity history | less`), so under
# xdist every command's tables and sentences wrapped at 80 columns. Tests that want a
# width set COLUMNS themselves.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster per test process (fails when PostgreSQL is missing)."""
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """The URL of a fresh, empty database on the throwaway cluster."""
    return pg_cluster.new_database()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures tests recorded with `record_property` (e.g. kill points covered)."""
    lines = []
    for report in terminalreporter.stats.get("passed", []):
        for name, value in getattr(report, "user_properties", []):
            lines.append(f"{name}: {value}")
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)


DURATIONS = Path(__file__).parent / "durations.json"
"""Seconds each test file took in a whole-suite run (`scripts/suite_durations` writes it)."""


def _estimate_s(path: str, items: int) -> float:
    """A file not in DURATIONS yet: whole deployments take tens of seconds a test."""
    return items * (20.0 if path.startswith("tests/e2e/") else 0.5)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker, put the test files longest first (a stable sort: each file's own
    order is kept). `make test` runs `--dist loadfile --no-loadscope-reorder`, which hands
    whole files to the two workers in this order as each asks for more: the longest files
    start first and the short ones fill the end, so neither worker is left alone with a
    long file (longest-processing-time-first scheduling). Without the sort xdist hands them
    out by number of tests, which put the few-test, minute-long e2e files last."""
    if not hasattr(config, "workerinput"):
        return
    try:
        known: dict[str, float] = json.loads(DURATIONS.read_text())["files"]
    except (OSError, ValueError, KeyError):
        known = {}
    per_file: dict[str, int] = {}
    for item in items:
        per_file[item.nodeid.split("::")[0]] = per_file.get(item.nodeid.split("::")[0], 0) + 1
    cost = {f: known.get(f, _estimate_s(f, n)) for f, n in per_file.items()}
    items.sort(key=lambda item: -cost[item.nodeid.split("::")[0]])
