"""Fixtures for the end-to-end tests (see e2e_helpers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from e2e_helpers import fleet3  # noqa: F401


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
