"""Shared pytest settings: anyio runs on asyncio only."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
