"""Fixtures for the local driver and sandbox tests (real processes on 127.0.0.1)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
